//! The control socket's access control: the socket file is created mode 0600
//! with no window in which another user could connect, and every peer's uid
//! (SO_PEERCRED) is checked against an allow-list.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds `path` (which must not exist) with mode 0600: the socket is bound
/// inside a fresh 0700 directory next to `path`, made 0600, then renamed into
/// place, so no other user can ever connect through a wider mode.
pub fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the socket path has no file name"))?;
    if path.symlink_metadata().is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the socket path exists: remove it or choose another",
        ));
    }
    let tmp = tempdir_in(parent)?;
    let inner = tmp.join(name);
    let result = (|| {
        let (_dir_fd, short) = short_path(&tmp, name)?;
        let listener = UnixListener::bind(short)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&tmp);
    result
}

/// A new directory (mode 0700) in `parent` with an unguessable name.
fn tempdir_in(parent: &Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for _ in 0..16 {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most b.len() bytes into the valid buffer.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
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

/// The uid of the process at the other end of a Unix stream.
pub fn peer_uid(sock: &impl AsRawFd) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Which local users may use the control API: arrow-vmm's own uid and root
/// always, plus any listed with `--api-allow-uid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    allowed: Vec<u32>,
}

impl PeerPolicy {
    pub fn new(extra: &[u32]) -> Self {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let mut allowed = vec![me, 0];
        allowed.extend_from_slice(extra);
        allowed.sort_unstable();
        allowed.dedup();
        Self { allowed }
    }

    pub fn allows(&self, uid: u32) -> bool {
        self.allowed.contains(&uid)
    }
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self::new(&[])
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

    #[test]
    fn socket_is_private_and_peer_is_identified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Nothing left behind but the socket.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(peer_uid(&server).unwrap(), me);
        assert!(bind_private(&path).is_err(), "an existing path is refused");

        // A final path just short enough for sun_path still binds, although
        // the private directory makes the path it is bound at longer.
        let long = dir
            .path()
            .join("d".repeat(99 - dir.path().as_os_str().len()));
        assert_eq!(long.as_os_str().len(), 100);
        let _l = bind_private(&long).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&long).is_ok());

        let policy = PeerPolicy::new(&[4242]);
        assert!(policy.allows(me) && policy.allows(0) && policy.allows(4242));
        let other = if me == 12345 { 12346 } else { 12345 };
        assert!(!policy.allows(other));
    }
}
