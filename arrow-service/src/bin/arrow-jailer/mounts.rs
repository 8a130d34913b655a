//! The jail's file system: a fresh tmpfs holding only the given paths, each
//! bind-mounted at its host path (read-only unless writable), the two device
//! nodes the VMM uses, a /proc of its own PID namespace; then `pivot_root`
//! into it, the old root detached, and the tmpfs itself made read-only.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use arrow_service::jail::JailSpec;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// How a path appears in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Read-only, executable (the VMM and its libraries).
    Exec,
    /// Read-only, not executable.
    ReadOnly,
    /// Writable, not executable.
    Writable,
    /// An empty directory.
    EmptyDir,
}

/// Device nodes made in the jail: the path, and the mode (the VMM owns them).
const DEVICES: [(&str, u32); 2] = [("/dev/kvm", 0o600), ("/dev/urandom", 0o666)];

const NONE: Option<&str> = None;

/// Builds the jail's root from `spec` and moves into it (cwd: `/`).
pub fn enter_root(spec: &JailSpec) -> Result<()> {
    let root = &spec.root;
    // Nothing mounted from here on reaches the host.
    nix::mount::mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .context("cannot make the mount namespace private")?;
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .with_context(|| format!("cannot mount the jail's tmpfs on {}", root.display()))?;
    let mut all: Vec<(&PathBuf, Kind)> = Vec::new();
    all.extend(spec.exec.iter().map(|p| (p, Kind::Exec)));
    all.extend(spec.ro.iter().map(|p| (p, Kind::ReadOnly)));
    all.extend(spec.rw.iter().map(|p| (p, Kind::Writable)));
    all.extend(spec.dirs.iter().map(|p| (p, Kind::EmptyDir)));
    // Parents before children: a path inside another is mounted on top of it.
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (path, kind) in all {
        place(root, path, kind)?;
    }
    for (dev, mode) in DEVICES {
        make_device(root, Path::new(dev), mode, spec.uid, spec.gid)?;
    }
    let proc_dir = inside(root, Path::new("/proc"));
    mkdirs(&proc_dir)?;
    nix::mount::mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        NONE,
    )
    .context("cannot mount /proc in the jail")?;
    nix::unistd::chdir(root).with_context(|| format!("cannot enter {}", root.display()))?;
    // The old root ends up under the new one and is detached right away.
    nix::unistd::pivot_root(".", ".").context("pivot_root into the jail failed")?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).context("cannot detach the host's root")?;
    nix::unistd::chdir("/").context("cannot enter the jail's root")?;
    nix::mount::mount(
        NONE,
        "/",
        NONE,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NOEXEC,
        NONE,
    )
    .context("cannot make the jail's root read-only")?;
    Ok(())
}

/// `path` under `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn mkdirs(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create {} in the jail", dir.display()))
}

/// Bind-mounts host `path` at the same path in the jail.
fn place(root: &Path, path: &Path, kind: Kind) -> Result<()> {
    let target = inside(root, path);
    if kind == Kind::EmptyDir {
        return mkdirs(&target);
    }
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{} (to be bound into the jail)", path.display()))?;
    if let Some(parent) = target.parent() {
        mkdirs(parent)?;
    }
    if meta.is_dir() {
        mkdirs(&target)?;
    } else if std::fs::symlink_metadata(&target).is_err() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .with_context(|| format!("cannot create {} in the jail", target.display()))?;
    }
    nix::mount::mount(Some(path), &target, NONE, MsFlags::MS_BIND, NONE)
        .with_context(|| format!("cannot bind {} into the jail", path.display()))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if kind != Kind::Writable {
        flags |= MsFlags::MS_RDONLY;
    }
    if kind != Kind::Exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    nix::mount::mount(NONE, &target, NONE, flags, NONE)
        .with_context(|| format!("cannot restrict {} in the jail", path.display()))?;
    Ok(())
}

/// A character device like the host's `dev`, owned by the VMM's uid.
fn make_device(root: &Path, dev: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    let host =
        nix::sys::stat::stat(dev).with_context(|| format!("{} on the host", dev.display()))?;
    if SFlag::from_bits_truncate(host.st_mode) & SFlag::S_IFMT != SFlag::S_IFCHR {
        anyhow::bail!("{} on the host is not a character device", dev.display());
    }
    let target = inside(root, dev);
    if let Some(parent) = target.parent() {
        mkdirs(parent)?;
    }
    nix::sys::stat::mknod(
        &target,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(mode),
        host.st_rdev,
    )
    .with_context(|| format!("cannot create {} in the jail", dev.display()))?;
    nix::unistd::chown(
        &target,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .with_context(|| format!("cannot give {} to uid {uid}", dev.display()))?;
    Ok(())
}
