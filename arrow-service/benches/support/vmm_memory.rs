//! Memory of an arrow-vmm process, for the arrow-service benches.

/// `key`'s value in KiB from a /proc file of `Key:   N kB` lines (0 when absent).
pub fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (Pss, Rss, Private_Clean + Private_Dirty) of `pid` in KiB, from smaps_rollup.
pub fn rollup_kib(pid: i32) -> (u64, u64, u64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (
        kib(&t, "Pss:"),
        kib(&t, "Rss:"),
        kib(&t, "Private_Clean:") + kib(&t, "Private_Dirty:"),
    )
}

/// The arrow-vmm process of what arrowd tracks as `pid`: `pid` itself when it is
/// arrow-vmm, else (a jailed VMM, where `pid` is its arrow-jailer) the jailer's
/// arrow-vmm child. Measuring the jailer instead would report ~2 MiB for any VM.
pub fn vmm_pid(pid: i32) -> i32 {
    let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    if comm(pid).trim() == "arrow-vmm" {
        return pid;
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| comm(c).trim() == "arrow-vmm")
        .unwrap_or_else(|| panic!("process {pid} is neither arrow-vmm nor its jailer"))
}
