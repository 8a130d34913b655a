//! Figures from one run, for `--report` (benchmarks and tests read them).

use std::time::Duration;

use serde::Serialize;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::exit::StopReason;
use crate::lifecycle::{process_cpu_time, Lifecycle};
use crate::GuestMemoryMmap;

/// What happened in one run, in microseconds and KiB.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub exit_code: i32,
    pub reason: String,
    /// Wall time from process start to the first KVM_RUN.
    pub first_kvm_run_wall_us: Option<u64>,
    /// Process CPU time (all threads) spent before the first KVM_RUN.
    pub first_kvm_run_cpu_us: Option<u64>,
    pub app_started_us: Option<u64>,
    pub app_ready_us: Option<u64>,
    pub total_wall_us: u64,
    pub total_cpu_us: u64,
    /// Resident memory of the process outside guest memory, at the end.
    pub vmm_rss_kib: Option<u64>,
    /// Resident guest memory at the end.
    pub guest_rss_kib: Option<u64>,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl RunReport {
    pub fn collect(lifecycle: &Lifecycle, reason: &StopReason, mem: &GuestMemoryMmap) -> Self {
        let guest: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
            .collect();
        let rss = std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .map(|s| split_rss(&s, &guest));
        Self {
            exit_code: reason.exit_code(),
            reason: reason.to_string(),
            first_kvm_run_wall_us: lifecycle.first_run().map(|(w, _)| us(w)),
            first_kvm_run_cpu_us: lifecycle.first_run().map(|(_, c)| us(c)),
            app_started_us: lifecycle.app_started().map(us),
            app_ready_us: lifecycle.app_ready().map(|(d, _)| us(d)),
            total_wall_us: us(lifecycle.elapsed()),
            total_cpu_us: us(process_cpu_time()),
            vmm_rss_kib: rss.map(|(vmm, _)| vmm),
            guest_rss_kib: rss.map(|(_, g)| g),
        }
    }
}

/// Splits the `Rss:` of /proc/PID/smaps into (outside guest, inside guest) KiB.
fn split_rss(smaps: &str, guest: &[(u64, u64)]) -> (u64, u64) {
    let (mut vmm, mut in_guest) = (0, 0);
    let mut current_is_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                current_is_guest = guest.iter().any(|&(gs, ge)| start < ge && end > gs);
                continue;
            }
        }
        if let Some(v) = line.strip_prefix("Rss:") {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if current_is_guest {
                in_guest += kib;
            } else {
                vmm += kib;
            }
        }
    }
    (vmm, in_guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_rss_by_mapping() {
        let smaps = "1000-2000 rw-p 00000000 00:00 0\nRss:                 8 kB\nPss: 8 kB\n\
                     7f00-8f00 rw-p 00000000 00:00 0 [heap]\nRss:                 4 kB\n";
        assert_eq!(split_rss(smaps, &[(0x1000, 0x2000)]), (4, 8));
        assert_eq!(split_rss(smaps, &[]), (12, 0));
    }
}
