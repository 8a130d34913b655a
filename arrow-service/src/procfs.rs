//! Process identity through /proc: a PID plus its start time names one process for good,
//! so arrowd never signals a recycled PID. Also finds arrow-vmm processes of this arrowd.

use std::path::{Path, PathBuf};

/// State letter and start time (clock ticks after boot) of `pid`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Start time of a live (non-zombie) process.
pub fn start_time(pid: i32) -> Option<u64> {
    match stat(pid)? {
        ('Z' | 'X', _) => None,
        (_, start) => Some(start),
    }
}

/// Start time of `pid`, zombie or not (right after spawn the child may already have exited).
pub fn raw_start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether the process `pid` that started at `start` still runs (zombies count as gone).
pub fn is_alive(pid: i32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Sends `sig` to `pid` if it is still the process that started at `start`.
/// Returns false when that process is gone.
pub fn signal(pid: i32, start: u64, sig: i32) -> bool {
    if !is_alive(pid, start) {
        return false;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the PID was just checked to be
    // the process we spawned (same start time).
    unsafe { libc::kill(pid, sig) == 0 }
}

/// An arrow-vmm process found in /proc that belongs to an instance under `run_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVmm {
    /// Instance ID (the run directory's name).
    pub id: String,
    /// PID.
    pub pid: i32,
    /// Start time.
    pub start: u64,
}

/// Every live arrow-vmm whose `--report` file lies in a run directory under `run_root`.
pub fn scan_vmms(run_root: &Path) -> Vec<FoundVmm> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_vmm = args
            .first()
            .and_then(|a0| Path::new(a0).file_name())
            .is_some_and(|n| n == "arrow-vmm");
        if !is_vmm {
            continue;
        }
        let report = args
            .windows(2)
            .find(|w| w[0] == "--report")
            .map(|w| PathBuf::from(&w[1]));
        let Some(run_dir) = report.as_deref().and_then(Path::parent) else {
            continue;
        };
        if run_dir.parent() != Some(run_root) {
            continue;
        }
        let (Some(id), Some(start)) = (
            run_dir.file_name().and_then(|n| n.to_str()),
            start_time(pid),
        ) else {
            continue;
        };
        out.push(FoundVmm {
            id: id.to_owned(),
            pid,
            start,
        });
    }
    out
}

/// Signal number for a name such as `KILL`, `SIGTERM` or `9`.
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        other => match other.parse::<i32>() {
            Ok(v) if (1..=64).contains(&v) => v,
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert_eq!(signal_number("sigkill"), Some(9));
        assert_eq!(signal_number("15"), Some(15));
        assert_eq!(signal_number("BOGUS"), None);
    }
}
