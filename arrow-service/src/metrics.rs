//! Prometheus text-format metrics: instances by state (from the database at scrape time),
//! starts, failures and start latency (spawn → APP_STARTED) as a histogram.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::State;

/// Upper bounds of the start-latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0];

/// Counters kept in memory since arrowd started.
#[derive(Debug, Default)]
pub struct Metrics {
    starts: AtomicU64,
    failures: AtomicU64,
    requests: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
}

impl Metrics {
    /// An instance was started (arrow-vmm spawned).
    pub fn start(&self) {
        self.starts.fetch_add(1, Ordering::Relaxed);
    }

    /// An instance failed: could not start, crashed (exit 122–125) or vanished.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One API request served.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a start latency.
    pub fn start_latency(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The exposition text; `by_state` comes from the database.
    pub fn render(&self, by_state: &[(State, i64)]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP arrow_instances Instances by state.");
        let _ = writeln!(s, "# TYPE arrow_instances gauge");
        for st in State::ALL {
            let n = by_state
                .iter()
                .find(|(x, _)| *x == st)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(s, "arrow_instances{{state=\"{}\"}} {n}", st.as_str());
        }
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {v}");
        };
        counter(
            &mut s,
            "arrow_instance_starts_total",
            "Instances started (arrow-vmm spawned).",
            self.starts.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "arrow_instance_failures_total",
            "Instances that could not start, crashed (exit 122-125) or vanished.",
            self.failures.load(Ordering::Relaxed),
        );
        counter(
            &mut s,
            "arrow_api_requests_total",
            "API requests served.",
            self.requests.load(Ordering::Relaxed),
        );
        let name = "arrow_instance_start_latency_seconds";
        let _ = writeln!(
            s,
            "# HELP {name} Time from spawning arrow-vmm to the app's start (APP_STARTED)."
        );
        let _ = writeln!(s, "# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum {}",
            self.latency_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(s, "{name}_count {count}");
        s
    }
}
