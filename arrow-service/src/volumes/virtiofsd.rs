//! One virtiofsd per fs volume, started by arrowd before the VMM connects.
//!
//! arrowd binds the vhost-user socket itself (`fs-<tag>.sock` in the run directory, mode
//! 0600, owned by the jailed VMM's uid when the jail is on) and hands the listening socket
//! to virtiofsd as `--fd 3`: the socket exists and accepts as soon as the spawn returns,
//! and virtiofsd needs no say over its permissions. virtiofsd runs as root (it must create
//! files with the guest's uids) in its own sandbox: `--sandbox namespace` (new mount, PID
//! and network namespaces, `pivot_root` into the shared directory, so no symlink or `..`
//! leads out of it), `--seccomp kill`, capabilities dropped to what file serving needs.
//! arrowd adds the rest of what the VMM's jail gives ([`super::jail`]): the instance's
//! cgroup, new IPC, UTS and cgroup namespaces, `no_new_privs`, RLIMIT_NOFILE, no core
//! dumps. It is not put behind arrow-jailer: the jailer drops to an unprivileged uid and
//! builds a root of bind mounts, which is what virtiofsd's own sandbox does for it with
//! the privileges it needs. It serves one connection and exits when the VMM hangs up.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::jail::VfsJail;
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

/// virtiofsd's arguments for `volume` (its listening socket is fd 3), with `max_files`
/// open files (the RLIMIT_NOFILE arrowd sets). Writable volumes are not cached in the
/// guest (`--cache never`): another instance or the host may change them at any time;
/// read-only ones use `--cache auto`.
pub fn args(volume: &Placed, max_files: u64) -> Vec<OsString> {
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
        "--rlimit-nofile".into(),
        max_files.to_string().into(),
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
    /// The token in its environment (for re-adoption: [`super::record`]).
    pub token: String,
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

/// How a virtiofsd is started.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The virtiofsd program.
    pub program: &'a Path,
    /// The instance's run directory.
    pub run_dir: &'a Path,
    /// The jailed VMM's uid and gid (the socket's owner), when the jail is on.
    pub owner: Option<(u32, u32)>,
    /// What arrowd puts around it.
    pub jail: &'a VfsJail,
    /// The instance's `cgroup.procs`, when it has a cgroup.
    pub cgroup_procs: Option<&'a CString>,
}

/// Starts virtiofsd for fs volume `volume` of the instance in `l.run_dir`, with a
/// fresh random `token` in its environment (`ARROW_SPAWN_TOKEN`).
pub fn spawn(l: Launch<'_>, volume: &Placed, token: &str) -> std::io::Result<Backend> {
    let (program, run_dir) = (l.program, l.run_dir);
    let (socket, listener) = bind(run_dir, &volume.id, l.owner)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(LOG))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args(volume, l.jail.max_files()))
        .current_dir("/")
        .env(crate::procfs::SPAWN_TOKEN_ENV, token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Like the VMMs: signals to arrowd's process group do not reach it.
        .process_group(0)
        .kill_on_drop(false);
    let fd = listener.as_raw_fd();
    let jail = l.jail.clone();
    let procs = l.cgroup_procs.cloned();
    // SAFETY: between fork and exec the closure only calls dup2 and fcntl, which are
    // async-signal-safe, and VfsJail::enter_in_child (plain system calls on values
    // prepared before the fork); `fd` stays open in the parent until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            jail.enter_in_child(procs.as_ref())?;
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
        token: token.to_owned(),
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
        let a: Vec<String> = args(&placed(false), 4096)
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            a.join(" "),
            "--fd 3 --shared-dir /srv/data --sandbox namespace --seccomp kill --cache never --rlimit-nofile 4096 --log-level warn"
        );
        let a: Vec<String> = args(&placed(true), 4096)
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
