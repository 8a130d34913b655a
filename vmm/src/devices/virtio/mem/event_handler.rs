//! The virtio-mem device on the event loop: its one queue eventfd.

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;
use vmm_sys_util::epoll::EventSet;

use super::VirtioMem;

impl MutEventSubscriber for VirtioMem {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            error!("virtio-mem: cannot register the queue eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // EAGAIN just means a spurious wakeup.
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }
}
