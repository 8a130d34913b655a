//! Named, pinned network namespaces for pod sandboxes, made the way `ip netns add` makes
//! them: a thread unshares `CLONE_NEWNET` and bind-mounts its own `ns/net` onto a file, so
//! the namespace outlives the thread (and arrowd) until the mount is removed. Work inside a
//! namespace (binding a listener) runs on a short-lived thread that `setns`'d into it: a
//! socket keeps the namespace it was created in, so it can be used from anywhere after.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// A network namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Creating, entering or removing the namespace failed.
    #[error("network namespace {path}: cannot {what}: {source}")]
    Os {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The helper thread died.
    #[error("network namespace {0}: the helper thread panicked")]
    Thread(PathBuf),
}

fn os(path: &Path, what: &'static str, source: impl Into<std::io::Error>) -> NetnsError {
    NetnsError::Os {
        path: path.to_owned(),
        what,
        source: source.into(),
    }
}

/// Creates a new network namespace pinned at `path` (its directory is created). An
/// existing pinned namespace at `path` is an error (`AlreadyExists`).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| os(path, "create its directory", e))?;
    }
    // The mount point: an empty file, created exclusively so two sandboxes never share one.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| os(path, "create the mount point", e))?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        // Only this thread changes namespace (unshare affects the calling thread).
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| os(&target, "unshare CLONE_NEWNET", e))?;
        // /proc/thread-self: /proc/self would name the main thread's namespace.
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| os(&target, "bind-mount the namespace", e))
    })
    .join()
    .map_err(|_| NetnsError::Thread(path.to_owned()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Whether `path` is a pinned network namespace (a bind mount of an `nsfs` inode).
pub fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unpins and removes the namespace at `path`; a missing one is fine. The namespace itself
/// ends once no process or socket uses it any more.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    if exists(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|e| os(path, "unmount", e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(os(path, "remove the mount point", e)),
    }
}

/// Runs `f` on a thread inside the namespace at `path` and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = File::open(path).map_err(|e| os(path, "open", e))?;
    if !exists(path) {
        return Err(os(
            path,
            "enter",
            std::io::Error::other("not a network namespace (was it removed?)"),
        ));
    }
    let p = path.to_owned();
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| os(&p, "setns", e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Thread(path.to_owned()))?
}

/// One listener bound in a namespace, or why its address could not be bound.
pub type Bound = Result<std::net::TcpListener, (std::net::SocketAddr, std::io::Error)>;

/// Binds TCP listeners on `addrs` inside the namespace at `path` (non-blocking, ready for
/// `tokio::net::TcpListener::from_std`), one result per address.
pub fn bind_tcp(path: &Path, addrs: Vec<std::net::SocketAddr>) -> Result<Vec<Bound>, NetnsError> {
    run_in(path, move || {
        addrs
            .into_iter()
            .map(|a| {
                std::net::TcpListener::bind(a)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| (a, e))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Needs root (unshare and mount), as arrowd does for pod networks.
    #[test]
    fn create_enter_remove() {
        assert!(is_root(), "network namespaces need root");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns/test");
        create(&path).unwrap();
        assert!(exists(&path));
        assert!(matches!(create(&path), Err(NetnsError::Os { .. })));
        // A fresh namespace has only `lo`, and it is down: binding 127.0.0.1 fails there,
        // while the same bind works in ours (a listener on port 0).
        let inner = run_in(&path, || {
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default()
        })
        .unwrap();
        assert!(inner.contains("lo:"), "{inner}");
        assert_eq!(
            inner.lines().count(),
            3,
            "only lo in a new namespace: {inner}"
        );
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let theirs = run_in(&path, || {
            std::fs::read_link("/proc/thread-self/ns/net").ok()
        })
        .unwrap()
        .unwrap();
        assert_ne!(ours, theirs);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
        assert!(run_in(&path, || ()).is_err());
    }
}
