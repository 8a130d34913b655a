//! One virtiofsd per fs volume, started by arrowd before the VMM connects.
//!
//! arrowd binds the vhost-user socket itself (`fs-<tag>.sock` in the run directory, mode
//! 0600, owned by the jailed VMM's uid when the jail is on) and hands the listening socket
//! to virtiofsd as `--fd 3`: the socket exists and accepts as soon as the spawn returns,
//! and virtiofsd needs no say over its permissions. virtiofsd runs as root (it must create
//! files with the guest's uids) in its own sandbox: `--sandbox namespace` (new mount, PID
//! and network namespaces, `pivot_root` into the shared directory, so no symlink or `..`
//! leads out of it), `--seccomp kill`, capabilities dropped to what file serving needs.
//! It is not put behind arrow-jailer: the jailer drops to an unprivileged uid and builds a
//! root of bind mounts, which is what virtiofsd's own sandbox does for it with the
//! privileges it needs. It serves one connection and exits when the VMM hangs up.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::plan::Placed;

/// virtiofsd's log (all of an instance's virtiofsd processes append to it).
pub const LOG: &str = "virtiofsd.log";

/// The vhost-user socket of fs volume `tag` in a run directory.
pub fn socket_name(tag: &str) -> String {
    format!("fs-{tag}.sock")
}

/// The virtiofsd program: `configured` (arrowd's `--virtiofsd`), else the project's
/// (`shadowfs::tools::find_or_install_virtiofsd`: `~/.cache/arrow/tools`, then PATH;
/// built from crates.io on first use, which takes minutes).
pub fn program(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    shadowfs::tools::find_or_install_virtiofsd().map_err(|e| {
        format!("virtiofsd is needed for writable volumes (and read-only ones too large to pack): {e}; or give arrowd --virtiofsd PATH")
    })
}

/// virtiofsd's arguments for `volume` (its listening socket is fd 3). Writable volumes
/// are not cached in the guest (`--cache never`): another instance or the host may
/// change them at any time; read-only ones use `--cache auto`.
pub fn args(volume: &Placed) -> Vec<OsString> {
    let v = &volume.volume;
    let mut a: Vec<OsString> = vec![
        "--fd".into(),
        "3".into(),
        "--shared-dir".into(),
        v.host_path.clone().into(),
        "--sandbox".into(),
        "namespace".into(),
        "--seccomp".into(),
        "kill".into(),
        "--cache".into(),
        if v.read_only { "auto" } else { "never" }.into(),
        "--log-level".into(),
        "warn".into(),
    ];
    if v.read_only {
        a.push("--readonly".into());
    }
    a
}

/// A running virtiofsd.
#[derive(Debug)]
pub struct Backend {
    /// The volume's tag.
    pub tag: String,
    /// Its host directory.
    pub host_path: String,
    /// The socket the VMM connects to.
    pub socket: PathBuf,
    /// The process.
    pub child: tokio::process::Child,
}

/// Binds `fs-<tag>.sock` in `run_dir` (replacing a stale one), owned by `owner` (the
/// jailed VMM's uid and gid) when given.
pub fn bind(
    run_dir: &Path,
    tag: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<(PathBuf, OwnedFd)> {
    let path = run_dir.join(socket_name(tag));
    let _ = std::fs::remove_file(&path);
    let listener = crate::unix_socket::bind_private_std(&path, None)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
    }
    Ok((path, OwnedFd::from(listener)))
}

/// Starts virtiofsd for fs volume `volume` of the instance in `run_dir`.
pub fn spawn(
    program: &Path,
    volume: &Placed,
    run_dir: &Path,
    owner: Option<(u32, u32)>,
) -> std::io::Result<Backend> {
    let (socket, listener) = bind(run_dir, &volume.id, owner)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(LOG))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args(volume))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Like the VMMs: signals to arrowd's process group do not reach it.
        .process_group(0)
        .kill_on_drop(false);
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl, which are
    // async-signal-safe; `fd` stays open in the parent until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(listener);
    Ok(Backend {
        tag: volume.id.clone(),
        host_path: volume.volume.host_path.clone(),
        socket,
        child,
    })
}

/// The last lines of virtiofsd's log, for a failure reason.
pub fn log_tail(run_dir: &Path) -> String {
    let text = std::fs::read_to_string(run_dir.join(LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::{Kind, Volume};

    fn placed(ro: bool) -> Placed {
        Placed {
            volume: Volume {
                host_path: "/srv/data".into(),
                guest_path: "/data".into(),
                read_only: ro,
            },
            kind: Kind::Fs,
            id: "vol0".into(),
        }
    }

    #[test]
    fn arguments_sandbox_and_cache() {
        let a: Vec<String> = args(&placed(false))
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a.join(" "),
            "--fd 3 --shared-dir /srv/data --sandbox namespace --seccomp kill --cache never --log-level warn"
        );
        let a: Vec<String> = args(&placed(true))
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert!(a.ends_with(&["--readonly".to_owned()]) && a.contains(&"auto".to_owned()));
    }

    #[test]
    fn the_socket_listens_before_virtiofsd_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (path, fd) = bind(dir.path(), "vol3", None).unwrap();
        assert_eq!(path, dir.path().join("fs-vol3.sock"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A client connects (queued in the backlog) before anyone accepts.
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(fd);
        // Binding again replaces the stale socket.
        bind(dir.path(), "vol3", None).unwrap();
    }
}
