//! Process identity through /proc: a PID plus its start time names one process for good,
//! so arrowd never signals a recycled PID. Also finds arrow-vmm processes of this arrowd.

use std::os::unix::ffi::OsStrExt;
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

/// The environment variable through which arrowd hands each arrow-vmm it
/// spawns a random token; the same token is kept in the run directory
/// ([`SPAWN_TOKEN_FILE`], mode 0600). Another local user can neither read a
/// process's environment nor the file, so a process carrying the token was
/// spawned by this arrowd for that run directory.
pub const SPAWN_TOKEN_ENV: &str = "ARROW_SPAWN_TOKEN";
/// The token's file in the run directory.
pub const SPAWN_TOKEN_FILE: &str = "spawn.token";

/// An arrow-vmm process found in /proc that belongs to an instance under `run_root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVmm {
    /// Instance ID (the run directory's name).
    pub id: String,
    /// PID.
    pub pid: i32,
    /// Start time.
    pub start: u64,
    /// Real and effective uid.
    pub uids: (u32, u32),
    /// Its ARROW_SPAWN_TOKEN (readable only for our own processes).
    pub token: Option<String>,
}

impl FoundVmm {
    /// Whether this process was spawned by this arrowd for the run directory
    /// `run_dir`: it runs as arrowd's user and carries the token that arrowd
    /// wrote into `run_dir` when it spawned it.
    pub fn is_ours(&self, run_dir: &Path) -> bool {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let expected = std::fs::read_to_string(run_dir.join(SPAWN_TOKEN_FILE)).ok();
        self.uids == (me, me)
            && matches!((&self.token, expected), (Some(t), Some(e)) if !t.is_empty() && *t == e.trim())
    }

    /// Whether it runs as arrowd's user (only those may be signalled).
    pub fn same_user(&self) -> bool {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        self.uids.1 == me
    }
}

/// Real and effective uid of `pid`.
pub(crate) fn uids(pid: i32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut f = line.split_whitespace().map(|x| x.parse::<u32>().ok());
    Some((f.next()??, f.next()??))
}

/// The value of `key` in `pid`'s initial environment.
pub(crate) fn environ_var(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let rest = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(rest.to_vec()).ok()
    })
}

/// Parent PID of `pid`.
pub fn parent(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The live children of `pid`, each with its start time.
pub fn children(pid: i32) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&c| parent(c) == Some(pid))
        .filter_map(|c| Some((c, start_time(c)?)))
        .collect()
}

/// The arrow-vmm a jailer (`jailer_pid`) started: its only child.
pub fn jailed_vmm(jailer_pid: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| parent(pid) == Some(jailer_pid) && start_time(pid).is_some())
}

/// The process that runs the VM for the tracked process `pid`: the arrow-vmm
/// inside when `pid` is its arrow-jailer, else `pid` itself. For what is
/// measured (memory, CPU), not signalled: signals go to the jailer, which relays them.
pub fn vmm_process(pid: i32) -> i32 {
    let argv0 = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default();
    let is_jailer = Path::new(std::ffi::OsStr::from_bytes(argv0))
        .file_name()
        .is_some_and(|n| n == JAILER_NAME);
    if is_jailer {
        jailed_vmm(pid).unwrap_or(pid)
    } else {
        pid
    }
}

/// The name of the jailer binary arrowd puts in front of arrow-vmm.
pub const JAILER_NAME: &str = "arrow-jailer";

/// Every live arrow-vmm whose `--report` file lies in a run directory under
/// `run_root`. For a jailed VMM this is its arrow-jailer (the process arrowd
/// spawned and tracks; the VMM's own arguments follow the jailer's): the VMM
/// inside is not listed separately.
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
        let name = args.first().and_then(|a0| Path::new(a0).file_name());
        let is_jailer = name.is_some_and(|n| n == JAILER_NAME);
        if !(is_jailer || name.is_some_and(|n| n == "arrow-vmm")) {
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
        let Some(uids) = uids(pid) else {
            continue;
        };
        let found = FoundVmm {
            id: id.to_owned(),
            pid,
            start,
            uids,
            token: environ_var(pid, SPAWN_TOKEN_ENV),
        };
        out.push((found, is_jailer, parent(pid)));
    }
    let jailers: Vec<i32> = out
        .iter()
        .filter(|(_, jailer, _)| *jailer)
        .map(|(f, _, _)| f.pid)
        .collect();
    out.into_iter()
        .filter(|(_, jailer, ppid)| *jailer || !ppid.is_some_and(|p| jailers.contains(&p)))
        .map(|(f, _, _)| f)
        .collect()
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
    fn only_processes_with_the_spawn_token_are_ours() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let run_root = dir.path().join("instances");
        let run_dir = run_root.join("abc");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join(SPAWN_TOKEN_FILE), "secret\n").unwrap();
        let report = run_dir.join("report.json");
        // Looks like arrow-vmm (argv[0] and --report); `sleep; true` keeps
        // the shell itself alive.
        let spawn = |token: Option<&str>| {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg0("arrow-vmm")
                .args(["-c", "sleep 30; true", "--report"])
                .arg(&report)
                .env_remove(SPAWN_TOKEN_ENV);
            if let Some(t) = token {
                c.env(SPAWN_TOKEN_ENV, t);
            }
            c.spawn().unwrap()
        };
        for (token, ours) in [
            (Some("secret"), true),
            (Some("guess"), false),
            (None, false),
        ] {
            let mut child = spawn(token);
            let pid = child.id() as i32;
            let mut found = None;
            for _ in 0..200 {
                found = scan_vmms(&run_root).into_iter().find(|f| f.pid == pid);
                if found.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let f = found.expect("the fake arrow-vmm is found");
            assert_eq!(f.id, "abc");
            assert!(f.same_user());
            assert_eq!(f.is_ours(&run_dir), ours, "token {token:?}");
            let _ = child.kill();
            let _ = child.wait();
        }
        // No token file in the run directory: nothing is ours.
        std::fs::remove_file(run_dir.join(SPAWN_TOKEN_FILE)).unwrap();
        let f = FoundVmm {
            id: "abc".into(),
            pid: 1,
            start: 1,
            // SAFETY: geteuid has no preconditions.
            uids: unsafe { (libc::geteuid(), libc::geteuid()) },
            token: Some("secret".into()),
        };
        assert!(!f.is_ours(&run_dir));
    }

    #[test]
    fn children_are_found() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mine = children(std::process::id() as i32);
        assert!(
            mine.iter().any(|&(p, s)| p == pid && is_alive(p, s)),
            "{mine:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(children(pid).is_empty());
    }

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
