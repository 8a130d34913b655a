//! What arrowd records about the virtiofsd processes it started for an instance
//! (`virtiofsd.json` in the run directory, mode 0600, kept arrowd's like the
//! spawn token), so that an arrowd restarted after a crash can watch them again,
//! or kill them when their instance is gone.
//!
//! A recorded process is arrowd's only if it still has the recorded start time,
//! runs as arrowd's user, and carries the recorded random token in its
//! environment (`ARROW_SPAWN_TOKEN`, readable only by its own user and root).
//! A file someone else wrote can therefore name no process arrowd would signal
//! but its own virtiofsd; argv is never trusted.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The record's file in the run directory.
pub const FILE: &str = "virtiofsd.json";

/// Larger records are not read (a real one is a few hundred bytes per volume).
const MAX_BYTES: u64 = 64 * 1024;

/// One virtiofsd arrowd started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The volume's tag (`vol0`, …).
    pub tag: String,
    /// The volume's host directory.
    pub host_path: String,
    /// The process arrowd spawned (virtiofsd's sandbox parent).
    pub pid: i32,
    /// Its start time (clock ticks after boot, /proc/PID/stat field 22).
    pub start: u64,
    /// The token in its environment.
    pub token: String,
}

/// Writes the record of `run_dir` (replacing the previous one at once).
pub fn write(run_dir: &Path, entries: &[Entry]) -> std::io::Result<()> {
    let tmp = run_dir.join(format!("{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(entries).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, run_dir.join(FILE))
}

/// The record of `run_dir`; empty when there is none. One that is not a regular file
/// owned by arrowd's user (a jailed VMM may create files in its run directory), too
/// large or damaged is an error.
pub fn read(run_dir: &Path) -> Result<Vec<Entry>, String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let path = run_dir.join(FILE);
    let shown = path.display();
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{shown} is not a file arrowd wrote (owner uid {})",
            meta.uid()
        ));
    }
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "{shown} is {} bytes, more than a record can be",
            meta.len()
        ));
    }
    let mut text = Vec::new();
    f.take(MAX_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("{shown} is damaged: {e}"))
}

/// Removes the record of `run_dir`.
pub fn remove(run_dir: &Path) {
    let _ = std::fs::remove_file(run_dir.join(FILE));
}

/// What /proc shows for a recorded PID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Start time of a live (non-zombie) process with that PID.
    pub start: Option<u64>,
    /// Its effective uid.
    pub euid: Option<u32>,
    /// Its `ARROW_SPAWN_TOKEN`.
    pub token: Option<String>,
}

impl Seen {
    /// Looks at `pid` in /proc.
    pub fn look(pid: i32) -> Seen {
        Seen {
            start: crate::procfs::start_time(pid),
            euid: crate::procfs::uids(pid).map(|(_, e)| e),
            token: crate::procfs::environ_var(pid, crate::procfs::SPAWN_TOKEN_ENV),
        }
    }
}

/// What to make of a recorded virtiofsd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The process arrowd started: watch it, or kill it.
    Ours,
    /// It ended.
    Gone,
    /// Another process has that PID now, or the record is not arrowd's: leave it alone.
    NotOurs,
}

/// Whether `seen` (a look at `entry.pid`) is the virtiofsd of `entry`, for an arrowd
/// running as `euid`.
pub fn verdict(entry: &Entry, seen: &Seen, euid: u32) -> Verdict {
    match seen.start {
        None => Verdict::Gone,
        Some(s) if s != entry.start => Verdict::Gone,
        Some(_) => {
            let token_ok = !entry.token.is_empty() && seen.token.as_deref() == Some(&entry.token);
            if token_ok && seen.euid == Some(euid) && entry.pid > 1 {
                Verdict::Ours
            } else {
                Verdict::NotOurs
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            tag: "vol0".into(),
            host_path: "/srv/data".into(),
            pid: 4242,
            start: 1000,
            token: "0123abcd".into(),
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Vec::new());
        let e = vec![
            entry(),
            Entry {
                tag: "vol1".into(),
                pid: 4243,
                ..entry()
            },
        ];
        write(dir.path(), &e).unwrap();
        assert_eq!(read(dir.path()).unwrap(), e);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(FILE), "[{\"tag\": 1}]").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("damaged"));
        std::fs::write(dir.path().join(FILE), vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("more than"));
        remove(dir.path());
        assert_eq!(read(dir.path()).unwrap(), Vec::new());
        // A symlink (or a file of another user) is not arrowd's record.
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join(FILE)).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("cannot read"));
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        if nix::unistd::geteuid().is_root() {
            write(dir.path(), &e).unwrap();
            std::os::unix::fs::chown(dir.path().join(FILE), Some(4321), None).unwrap();
            let err = read(dir.path()).unwrap_err();
            assert!(err.contains("not a file arrowd wrote"), "{err}");
        }
    }

    #[test]
    fn only_the_recorded_process_with_its_token_is_ours() {
        let e = entry();
        let ours = Seen {
            start: Some(1000),
            euid: Some(0),
            token: Some("0123abcd".into()),
        };
        assert_eq!(verdict(&e, &ours, 0), Verdict::Ours);
        // Gone, or the PID was reused (another start time).
        assert_eq!(verdict(&e, &Seen::default(), 0), Verdict::Gone);
        let reused = Seen {
            start: Some(2000),
            ..ours.clone()
        };
        assert_eq!(verdict(&e, &reused, 0), Verdict::Gone);
        // Same PID and start but no or another token, or another user: never signalled.
        for seen in [
            Seen {
                token: None,
                ..ours.clone()
            },
            Seen {
                token: Some("guess".into()),
                ..ours.clone()
            },
            Seen {
                euid: Some(1000),
                ..ours.clone()
            },
        ] {
            assert_eq!(verdict(&e, &seen, 0), Verdict::NotOurs, "{seen:?}");
        }
        // An empty recorded token matches nothing.
        let blank = Entry {
            token: String::new(),
            ..entry()
        };
        let seen = Seen {
            token: Some(String::new()),
            ..ours
        };
        assert_eq!(verdict(&blank, &seen, 0), Verdict::NotOurs);
    }

    #[test]
    fn a_real_process_is_looked_at() {
        let token = "t0k3n-for-this-test";
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .env(crate::procfs::SPAWN_TOKEN_ENV, token)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Until the exec, /proc shows the forked copy of this process's environment.
        let mut seen = Seen::look(pid);
        for _ in 0..500 {
            if seen.token.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            seen = Seen::look(pid);
        }
        let e = Entry {
            pid,
            start: seen.start.unwrap(),
            token: token.into(),
            ..entry()
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(verdict(&e, &seen, me), Verdict::Ours);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(verdict(&e, &Seen::look(pid), me), Verdict::Gone);
    }
}
