//! The shared "is this VM still running" state: the first stop request wins,
//! every thread sees it, and the event loop is woken by an eventfd.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::exit::StopReason;

/// Lifecycle events and the stop request of one VM.
pub struct Lifecycle {
    start: Instant,
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    stop_evt: EventFd,
    app_started: OnceLock<Duration>,
    app_ready: OnceLock<(Duration, u32)>,
    kernel_ready: OnceLock<(Duration, u32)>,
    first_run: OnceLock<(Duration, Duration)>,
    /// Bit n: vCPU n is halted with interrupts off.
    halted: AtomicU64,
}

impl Lifecycle {
    /// `start` is when the process started, for boot-time marks.
    pub fn new(start: Instant) -> std::io::Result<Self> {
        Ok(Self {
            start,
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            stop_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            app_started: OnceLock::new(),
            app_ready: OnceLock::new(),
            kernel_ready: OnceLock::new(),
            first_run: OnceLock::new(),
            halted: AtomicU64::new(0),
        })
    }

    /// Asks every thread to stop; only the first reason is kept.
    pub fn request_stop(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::debug!(%reason, "stop requested");
            *r = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // Failing to wake the loop only delays the stop to its next event.
        let _ = self.stop_evt.write(1);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stop_evt(&self) -> &EventFd {
        &self.stop_evt
    }

    /// Records APP_STARTED (first one counts); returns time since start.
    pub fn mark_app_started(&self) -> Duration {
        *self.app_started.get_or_init(|| self.start.elapsed())
    }

    /// Records APP_READY with the port the app serves.
    pub fn mark_app_ready(&self, port: u32) -> Duration {
        self.app_ready
            .get_or_init(|| (self.start.elapsed(), port))
            .0
    }

    /// Records KERNEL_READY (generic-template wait point) with the ABI version.
    pub fn mark_kernel_ready(&self, abi: u32) -> Duration {
        self.kernel_ready
            .get_or_init(|| (self.start.elapsed(), abi))
            .0
    }

    pub fn kernel_ready(&self) -> Option<(Duration, u32)> {
        self.kernel_ready.get().copied()
    }

    pub fn app_started(&self) -> Option<Duration> {
        self.app_started.get().copied()
    }

    pub fn app_ready(&self) -> Option<(Duration, u32)> {
        self.app_ready.get().copied()
    }

    /// Records the first KVM_RUN: wall time since start and process CPU time.
    pub fn mark_first_run(&self) {
        self.first_run
            .get_or_init(|| (self.start.elapsed(), process_cpu_time()));
    }

    /// (wall, CPU) time at the first KVM_RUN.
    pub fn first_run(&self) -> Option<(Duration, Duration)> {
        self.first_run.get().copied()
    }

    /// Records whether vCPU `cpu` is halted with interrupts off; when all
    /// `cpus` are, nothing can wake the guest and the VM stops.
    pub fn set_halted(&self, cpu: u8, halted: bool, cpus: u8) {
        let bit = 1u64 << (cpu % 64);
        let mask = if halted {
            self.halted.fetch_or(bit, Ordering::SeqCst) | bit
        } else {
            self.halted.fetch_and(!bit, Ordering::SeqCst) & !bit
        };
        let all = if cpus >= 64 {
            u64::MAX
        } else {
            (1u64 << cpus) - 1
        };
        if halted && mask & all == all {
            self.request_stop(StopReason::Halted { cpu });
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// CPU time this process has used so far (all threads).
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_reason_wins_and_wakes_the_loop() {
        let l = Lifecycle::new(Instant::now()).unwrap();
        assert!(!l.stopping());
        l.request_stop(StopReason::GuestPanic);
        l.request_stop(StopReason::GuestReset);
        assert!(l.stopping());
        assert_eq!(l.reason(), Some(StopReason::GuestPanic));
        assert_eq!(l.stop_evt().read().unwrap(), 2);
        let t = l.mark_app_started();
        let h = Lifecycle::new(Instant::now()).unwrap();
        h.set_halted(0, true, 2);
        h.set_halted(1, true, 2);
        h.set_halted(0, false, 2);
        assert!(h.stopping(), "both halted at once stops the VM");
        assert_eq!(h.reason(), Some(StopReason::Halted { cpu: 1 }));
        assert_eq!(l.mark_app_started(), t);
    }
}
