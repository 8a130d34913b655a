//! Unix sockets that only the right local users can use, for arrowd's REST
//! socket and the CRI socket alike:
//! - [`bind_private`] creates the socket mode 0600 (0660 with a group), bound
//!   in a fresh 0700 directory and renamed into place, so it is never
//!   reachable through a wider mode, not even for a moment;
//! - [`PeerPolicy`] checks each client's uid/gid (SO_PEERCRED) against an
//!   allow-list; [`CheckedUnixListener`] applies it to every accepted
//!   connection (an axum `Listener`; tonic can use
//!   [`CheckedUnixListener::accept_allowed`] to build its incoming stream).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Who may connect: arrowd's own uid and root always, plus listed uids, plus
/// members (primary or supplementary group) of the socket's group if one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    uids: Vec<u32>,
    group: Option<u32>,
}

impl PeerPolicy {
    pub fn new(extra_uids: &[u32], group: Option<u32>) -> Self {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let mut uids = vec![me, 0];
        uids.extend_from_slice(extra_uids);
        uids.sort_unstable();
        uids.dedup();
        Self { uids, group }
    }

    /// Whether a peer with these credentials may connect.
    pub fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if self.uids.contains(&uid) {
            return true;
        }
        match self.group {
            Some(g) if g == gid => true,
            Some(g) => pid.is_some_and(|p| supplementary_groups(p).contains(&g)),
            None => false,
        }
    }

    /// Whether the peer of `stream` may connect (false when it cannot be told).
    pub fn allows_stream(&self, stream: &UnixStream) -> bool {
        match stream.peer_cred() {
            Ok(c) => self.allows(c.uid(), c.gid(), c.pid()),
            Err(_) => false,
        }
    }
}

/// The supplementary groups of `pid` (from /proc/PID/status).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:").map(|g| {
                    g.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// Binds `path` with mode 0600, or 0660 owned by `group`. A stale socket at
/// `path` must have been removed by the caller.
pub fn bind_private(path: &Path, group: Option<u32>) -> std::io::Result<UnixListener> {
    let std = bind_private_std(path, group)?;
    std.set_nonblocking(true)?;
    UnixListener::from_std(std)
}

/// [`bind_private`] without tokio.
pub fn bind_private_std(
    path: &Path,
    group: Option<u32>,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the socket path has no file name"))?;
    let tmp = private_dir_in(parent)?;
    let inner = tmp.join(name);
    let result = (|| {
        let (_dir_fd, short) = short_path(&tmp, name)?;
        let listener = std::os::unix::net::UnixListener::bind(short)?;
        let mode = if let Some(gid) = group {
            std::os::unix::fs::chown(&inner, None, Some(gid))?;
            0o660
        } else {
            0o600
        };
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&tmp);
    result
}

/// A new 0700 directory in `parent` with an unguessable name.
fn private_dir_in(parent: &Path) -> std::io::Result<PathBuf> {
    use std::io::Read;
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    for _ in 0..16 {
        let mut b = [0u8; 8];
        urandom.read_exact(&mut b)?;
        let dir = parent.join(format!(".sock-{:016x}", u64::from_ne_bytes(b)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "cannot create a private directory for the socket",
    ))
}

/// A group given by name or number (`--socket-group`).
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to look up group {name:?}: {e}"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name))
                .then(|| f.nth(1).and_then(|g| g.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| {
            format!("no group {name:?} in /etc/group: give an existing group name or a number")
        })
}

/// A listener that closes connections from peers the policy refuses.
pub struct CheckedUnixListener {
    inner: UnixListener,
    policy: PeerPolicy,
    what: &'static str,
}

impl CheckedUnixListener {
    /// `what` names the socket in warnings ("REST API", "CRI").
    pub fn new(inner: UnixListener, policy: PeerPolicy, what: &'static str) -> Self {
        Self {
            inner,
            policy,
            what,
        }
    }

    /// The next connection from an allowed peer.
    pub async fn accept_allowed(
        &self,
    ) -> std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
        loop {
            let (stream, addr) = self.inner.accept().await?;
            if self.policy.allows_stream(&stream) {
                return Ok((stream, addr));
            }
            let cred = stream.peer_cred().ok();
            tracing::warn!(
                socket = self.what,
                uid = cred.map(|c| c.uid()),
                pid = cred.and_then(|c| c.pid()),
                "connection from a user that may not use this socket; closed (see --allow-uid / --socket-group)"
            );
        }
    }
}

impl axum::serve::Listener for CheckedUnixListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.accept_allowed().await {
                Ok(conn) => return conn,
                Err(e) => {
                    // As axum does for its own listeners: EMFILE and the like
                    // are transient; do not spin on them.
                    tracing::error!(socket = self.what, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// `dir/name` as a path short enough for `sun_path` (108 bytes): the private
/// directory adds to the final path's length, so the socket is bound through
/// `/proc/self/fd/N/name`, N an `O_PATH` descriptor of `dir` (kept open in
/// the returned `File` until the bind is done).
fn short_path(
    dir: &Path,
    name: &std::ffi::OsStr,
) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let p = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&d).to_string())
        .join(name);
    Ok((d, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[tokio::test]
    async fn socket_is_private_and_only_allowed_peers_get_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arrowd.sock");
        let l = bind_private(&path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // SAFETY: geteuid/getegid have no preconditions.
        let (me, my_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let other = if me == 12345 { 12346 } else { 12345 };
        let p = PeerPolicy::new(&[], None);
        assert!(p.allows(me, 1, None) && p.allows(0, 1, None));
        assert!(!p.allows(other, 1, None));
        assert!(PeerPolicy::new(&[other], None).allows(other, 1, None));
        assert!(PeerPolicy::new(&[], Some(777)).allows(other, 777, None));
        // Supplementary groups of a live process are read from /proc.
        let mine = supplementary_groups(std::process::id() as i32);
        if let Some(g) = mine.first() {
            assert!(PeerPolicy::new(&[], Some(*g)).allows(
                other,
                my_gid ^ 1,
                Some(std::process::id() as i32)
            ));
        }

        // Our own connection passes the checked listener.
        let checked = CheckedUnixListener::new(l, p, "test");
        let client = tokio::spawn({
            let path = path.clone();
            async move { UnixStream::connect(path).await.unwrap() }
        });
        let (_s, _) = checked.accept_allowed().await.unwrap();
        client.await.unwrap();

        // A final path just short enough for sun_path still binds.
        let long = dir
            .path()
            .join("d".repeat(99 - dir.path().as_os_str().len()));
        let _l = bind_private(&long, None).unwrap();
        assert!(UnixStream::connect(&long).await.is_ok());

        // A group socket is 0660.
        let gpath = dir.path().join("g.sock");
        let _g = bind_private(&gpath, Some(my_gid)).unwrap();
        assert_eq!(
            std::fs::metadata(&gpath).unwrap().permissions().mode() & 0o777,
            0o660
        );
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(resolve_group("no-such-group-here").is_err());
    }
}
