//! The file system device on the event loop: the backend's call eventfds
//! (used buffers -> guest interrupt) and a hang-up of its socket (-> the
//! VM stops with the reason).

use crate::limited_warn as warn;
use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;
use vmm_sys_util::epoll::EventSet;

use super::{VhostUserFs, NUM_QUEUES};

const TOKEN_CONNECTED: u32 = NUM_QUEUES as u32;
const TOKEN_SOCKET: u32 = NUM_QUEUES as u32 + 1;

impl VhostUserFs {
    /// Watches the backend's socket for a hang-up only: the replies to our
    /// requests are read by whoever sent them.
    fn watch_backend(&self, ops: &mut EventOps) {
        if let Some(fd) = self.backend_fd() {
            let set = EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR;
            if let Err(e) = ops.add(Events::with_data_raw(fd, TOKEN_SOCKET, set)) {
                error!(tag = %self.tag, "vhost-user-fs: cannot watch the backend socket: {e:?}");
            }
        }
    }
}

impl MutEventSubscriber for VhostUserFs {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.call_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                error!(tag = %self.tag, "vhost-user-fs: cannot register call event {i}: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.connected_evt,
            TOKEN_CONNECTED,
            EventSet::IN,
        )) {
            error!(tag = %self.tag, "vhost-user-fs: cannot register connect event: {e:?}");
        }
        // Connected before the loop started: drop that notice, watch now.
        let _ = self.connected_evt.read();
        self.watch_backend(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            i if (i as usize) < NUM_QUEUES => self.signal_used(i as usize),
            TOKEN_CONNECTED => {
                if self.connected_evt.read().is_ok() {
                    self.watch_backend(ops);
                }
            }
            TOKEN_SOCKET => {
                if let Err(e) = ops.remove(events) {
                    warn!(tag = %self.tag, "vhost-user-fs: cannot unwatch the backend socket: {e:?}");
                }
                self.backend_gone();
            }
            other => warn!(tag = %self.tag, "vhost-user-fs: unknown event {other}"),
        }
    }
}
