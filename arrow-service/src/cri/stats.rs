//! ContainerStats: CPU time and memory of the instance's arrow-vmm process (the whole
//! microVM), from its cgroup when arrowd uses cgroups, else from /proc.

use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, ContainerStatsFilter, CpuUsage, MemoryUsage, UInt64Value,
};
use tonic::Status;

use super::store::ContainerRecord;
use super::{labels_match, now_ns, status, Cri};

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

/// `key value` lines (cgroup `cpu.stat`, `memory.stat`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// (CPU ns, memory bytes, working set bytes) from a cgroup v2 directory.
fn from_cgroup(dir: &std::path::Path) -> Option<(u64, u64, u64)> {
    let cpu = field(
        &std::fs::read_to_string(dir.join("cpu.stat")).ok()?,
        "usage_usec",
    )?;
    let mem: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let inactive = std::fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|t| field(&t, "inactive_file"))
        .unwrap_or(0);
    Some((cpu * 1000, mem, mem.saturating_sub(inactive)))
}

/// (CPU ns, RSS bytes, RSS bytes) of a process.
fn from_proc(pid: i32) -> Option<(u64, u64, u64)> {
    let pid = crate::procfs::vmm_process(pid);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks * 1_000_000_000 / hz, rss_kb * 1024, rss_kb * 1024))
}

impl Cri {
    pub(super) fn stats_of(&self, c: &ContainerRecord) -> Result<ContainerStats, Status> {
        let rec = self.sup.record(&c.instance_id).map_err(status)?;
        let now = now_ns();
        let usage = rec.as_ref().filter(|r| r.state.is_active()).and_then(|r| {
            r.cgroup
                .as_deref()
                .and_then(|d| from_cgroup(std::path::Path::new(d)))
                .or_else(|| from_proc(r.pid?))
        });
        let attributes = Some(ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        });
        let (cpu, memory) = match usage {
            Some((cpu_ns, mem, ws)) => {
                let limit = rec
                    .as_ref()
                    .map(|r| u64::from(r.spec.memory_mib) << 20)
                    .unwrap_or(0);
                (
                    Some(CpuUsage {
                        timestamp: now,
                        usage_core_nano_seconds: value(cpu_ns),
                        usage_nano_cores: None,
                    }),
                    Some(MemoryUsage {
                        timestamp: now,
                        working_set_bytes: value(ws),
                        available_bytes: value(limit.saturating_sub(ws)),
                        usage_bytes: value(mem),
                        rss_bytes: value(ws),
                        page_faults: None,
                        major_page_faults: None,
                    }),
                )
            }
            None => (None, None),
        };
        Ok(ContainerStats {
            attributes,
            cpu,
            memory,
            writable_layer: None,
            swap: None,
        })
    }

    pub(super) fn container_stats(&self, reference: &str) -> Result<ContainerStats, Status> {
        let c = self.store.container(reference).map_err(status)?;
        self.stats_of(&c)
    }

    pub(super) fn list_stats(
        &self,
        filter: Option<ContainerStatsFilter>,
    ) -> Result<Vec<ContainerStats>, Status> {
        let f = filter.unwrap_or_default();
        self.store
            .containers()
            .map_err(status)?
            .iter()
            .filter(|c| {
                c.id.starts_with(&f.id)
                    && c.sandbox_id.starts_with(&f.pod_sandbox_id)
                    && labels_match(&c.config.labels, &f.label_selector)
            })
            .map(|c| self.stats_of(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_has_cpu_and_memory() {
        let (cpu, rss, _) = super::from_proc(std::process::id() as i32).unwrap();
        assert!(rss > 0);
        let _ = cpu;
        assert_eq!(
            super::field("usage_usec 12\nuser_usec 3", "usage_usec"),
            Some(12)
        );
        assert_eq!(super::field("usage_usec_x 12", "usage_usec"), None);
    }
}
