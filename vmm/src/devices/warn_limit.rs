//! A budget for the warnings devices log. Most of them are caused by the
//! guest (a bad register write, an inconsistent ring), and arrow-vmm's log is
//! a file on the host (arrowd's `vmm.log`): without a budget a hostile driver
//! writes thousands of lines a second into it. At most [`PER_WINDOW`]
//! warnings are logged per [`WINDOW`]; the rest are counted and the count is
//! logged when the next window opens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(10);
pub const PER_WINDOW: u32 = 50;

/// The state behind [`allow`] (a type so tests can drive the clock).
#[derive(Debug, Default)]
pub struct Budget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Budget {
    /// Whether one more warning may be logged at `now`; the second value is
    /// how many the previous window suppressed, when a new window opens.
    pub fn take(&mut self, now: Instant) -> (bool, u64) {
        let mut dropped = 0;
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            dropped = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < PER_WINDOW {
            self.logged += 1;
            (true, dropped)
        } else {
            self.suppressed += 1;
            (false, dropped)
        }
    }
}

static BUDGET: Mutex<Budget> = Mutex::new(Budget {
    window_start: None,
    logged: 0,
    suppressed: 0,
});

/// Whether a device warning may be logged now (the process-wide budget).
pub fn allow() -> bool {
    let (ok, dropped) = BUDGET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(Instant::now());
    if dropped > 0 {
        tracing::warn!("{dropped} more device warnings (most caused by the guest) were not logged in the last {} s", WINDOW.as_secs());
    }
    ok
}

/// `tracing::warn!` within the device warning budget.
#[macro_export]
macro_rules! limited_warn {
    ($($arg:tt)*) => {
        if $crate::devices::warn_limit::allow() {
            ::tracing::warn!($($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_counted() {
        let mut b = Budget::default();
        let t0 = Instant::now();
        let logged = (0..1000).filter(|_| b.take(t0).0).count();
        assert_eq!(logged, PER_WINDOW as usize);
        // The next window logs again and reports what the last one dropped.
        let (ok, dropped) = b.take(t0 + WINDOW);
        assert!(ok);
        assert_eq!(dropped, 1000 - u64::from(PER_WINDOW));
        let (_, dropped) = b.take(t0 + WINDOW * 2);
        assert_eq!(dropped, 0);
    }
}
