//! The vsock device on the event loop: a `MutEventSubscriber` for the queue
//! notification eventfds, the control eventfd, the host listener, the
//! connection-setup timer and every host stream.
//!
//! Host streams are registered edge-triggered (IN | OUT | RDHUP): the device
//! reads a socket only when the guest has RX buffers and credit, so with
//! level triggering an unread socket would wake the loop forever. The
//! connection remembers "readable" until a read returns `EAGAIN`.

use std::time::{Duration, Instant};

use crate::limited_warn as warn;
use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;
use vmm_sys_util::epoll::EventSet;

use super::muxer::{EpollChange, FIRST_STREAM_TOKEN};
use super::{Vsock, EVQ, RXQ, TXQ};

const TOKEN_RXQ: u32 = RXQ as u32;
const TOKEN_TXQ: u32 = TXQ as u32;
const TOKEN_EVQ: u32 = EVQ as u32;
const TOKEN_CTL: u32 = 3;
const TOKEN_LISTENER: u32 = 4;
const TOKEN_TIMER: u32 = 5;
const _: () = assert!(TOKEN_LISTENER < FIRST_STREAM_TOKEN && TOKEN_TIMER < FIRST_STREAM_TOKEN);

impl Vsock {
    /// Registers and unregisters host streams as the muxer asked.
    fn apply_changes(&mut self, ops: &mut EventOps) {
        for change in std::mem::take(&mut self.muxer.changes) {
            match change {
                EpollChange::Add { fd, token } => {
                    let set = EventSet::IN
                        | EventSet::OUT
                        | EventSet::READ_HANG_UP
                        | EventSet::EDGE_TRIGGERED;
                    if let Err(e) = ops.add(Events::with_data_raw(fd, token, set)) {
                        // Without registration the stream would hang; the
                        // next muxer step finds it unreadable. Log loudly.
                        error!("vsock: cannot register host stream: {e:?}");
                    }
                }
                EpollChange::Remove(stream) => {
                    if let Err(e) = ops.remove(Events::empty(&stream)) {
                        warn!("vsock: cannot unregister host stream: {e:?}");
                    }
                    drop(stream);
                }
            }
        }
    }

    /// Handles one ready event source (also used by tests without epoll).
    pub(crate) fn handle_event(&mut self, token: u32, set: EventSet) {
        let drain = |evt: &vmm_sys_util::eventfd::EventFd| {
            // EAGAIN just means a spurious wakeup.
            let _ = evt.read();
        };
        let now = Instant::now();
        let mut fired = false;
        match token {
            TOKEN_RXQ | TOKEN_TXQ | TOKEN_EVQ => drain(&self.queue_evts[token as usize]),
            TOKEN_CTL => drain(&self.ctl_evt),
            TOKEN_LISTENER => {
                let active = self.active.is_some();
                self.muxer.on_listener_readable(active, now);
            }
            TOKEN_TIMER => {
                fired = true;
                self.muxer.expire(now);
            }
            t if t >= FIRST_STREAM_TOKEN => self.muxer.on_stream_event(t, set, now),
            t => warn!("vsock: event for unknown token {t}"),
        }
        self.pump();
        self.update_timer(now, fired);
    }

    /// Arms the timer for the muxer's earliest setup deadline, or disarms
    /// it when none is pending; a syscall only when that deadline changed.
    /// The timerfd is never read (it is blocking, and a read after a
    /// re-arm in the same epoll round would block): after it `fired` it is
    /// always set again, which also clears its expiration count.
    fn update_timer(&mut self, now: Instant, fired: bool) {
        let next = self.muxer.next_deadline();
        if next == self.timer_deadline && !fired {
            return;
        }
        let result = match next {
            // A zero duration would disarm it: an overdue deadline fires at once.
            Some(d) => self.timer.reset(
                d.saturating_duration_since(now)
                    .max(Duration::from_nanos(1)),
                None,
            ),
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_deadline = next,
            Err(e) => {
                // Retried on the next event; setup timeouts are late meanwhile.
                error!("vsock: cannot set the connection timer: {e}");
                self.timer_deadline = None;
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |fd: &dyn std::os::fd::AsRawFd, token: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), token, EventSet::IN)) {
                error!("vsock: cannot register event source {token}: {e:?}");
            }
        };
        add(&self.queue_evts[RXQ], TOKEN_RXQ);
        add(&self.queue_evts[TXQ], TOKEN_TXQ);
        add(&self.queue_evts[EVQ], TOKEN_EVQ);
        add(&self.ctl_evt, TOKEN_CTL);
        add(self.muxer.listener(), TOKEN_LISTENER);
        add(&self.timer, TOKEN_TIMER);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.handle_event(events.data(), events.event_set());
        self.apply_changes(ops);
    }
}
