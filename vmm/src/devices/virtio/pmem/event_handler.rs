//! The pmem device on the event loop: its one queue's notifications.

use crate::limited_warn as warn;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::error;

use super::Pmem;

impl MutEventSubscriber for Pmem {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            error!("pmem: cannot register the queue event: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        if let Err(e) = self.queue_evts[0].read() {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                warn!("pmem: queue event: {e}");
            }
        }
        self.process_queue();
    }
}
