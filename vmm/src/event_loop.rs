//! The VMM's single event-loop thread (event-manager): host signals, console
//! input, the stop event, and (later) device backends.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::devices::legacy::SerialDevice;
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;

/// What the event manager holds.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
pub type EventManager = event_manager::EventManager<Subscriber>;

/// Signals that stop the VM (as `docker run` stops its container on them).
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the stop signals in the calling thread (and the threads it spawns
/// later), so that they are only seen through the signalfd.
pub fn block_stop_signals() -> std::io::Result<()> {
    let set = stop_sigset();
    // SAFETY: `set` is a valid, initialised sigset; no old set is requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Turns SIGTERM/SIGINT/SIGHUP into a VM stop.
pub struct SignalWatcher {
    fd: OwnedFd,
    lifecycle: Arc<Lifecycle>,
}

impl SignalWatcher {
    pub fn new(lifecycle: Arc<Lifecycle>) -> std::io::Result<Self> {
        let set = stop_sigset();
        // SAFETY: `set` is initialised; -1 asks for a new fd, which we own.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, lifecycle })
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch signals");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        loop {
            // SAFETY: reading into a buffer of exactly the given length from our own fd.
            let n =
                unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            if n < info.len() as isize {
                break;
            }
            // ssi_signo is the first u32 of signalfd_siginfo.
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32;
            tracing::info!(signal = signo, "stop signal received");
            self.lifecycle.request_stop(StopReason::Signal(signo));
        }
    }
}

/// Wakes the loop when a stop is requested (the loop checks `stopping()`).
pub struct StopWatcher(pub Arc<Lifecycle>);

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.stop_evt(), EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the stop event");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.stop_evt().read();
    }
}

/// Feeds host stdin to the guest's serial port.
pub struct ConsoleInput {
    fd: RawFd,
    serial: Arc<Mutex<SerialDevice>>,
}

impl ConsoleInput {
    /// Uses stdin when it is a terminal (piped input is not a console).
    pub fn from_tty_stdin(serial: Arc<Mutex<SerialDevice>>) -> Option<Self> {
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
        tty.then(|| Self {
            fd: stdin.as_raw_fd(),
            serial,
        })
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            tracing::debug!(error = ?e, "stdin not watched");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 || events.event_set().contains(EventSet::HANG_UP) {
            // EOF or error: stop watching instead of spinning.
            let _ = ops.remove(Events::new_raw(self.fd, EventSet::IN));
            return;
        }
        let mut s = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        s.enqueue_input(&buf[..n as usize]);
    }
}

/// Runs the loop on the calling thread until a stop is requested, calling
/// `tick` about once a second.
pub fn run_until_stopped(em: &mut EventManager, lifecycle: &Lifecycle, mut tick: impl FnMut()) {
    let mut last_tick = std::time::Instant::now();
    while !lifecycle.stopping() {
        if let Err(e) = em.run_with_timeout(250) {
            lifecycle.request_stop(StopReason::VmmError(format!("event loop failed: {e:?}")));
        }
        if last_tick.elapsed() >= std::time::Duration::from_secs(1) {
            last_tick = std::time::Instant::now();
            tick();
        }
    }
}
