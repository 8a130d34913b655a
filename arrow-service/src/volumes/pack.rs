//! The per-instance pack: read-only volumes copied into one EROFS image, each as the
//! top-level entry `<i>` (`i` = the volume's index), made with `mkfs.erofs` through the
//! shadowfs crate's tools, with the options of image bases (uncompressed, no inline data:
//! DAX-able; no timestamps, owned by root, no xattrs).
//!
//! Copying never leaves a volume: below the volume's own path every directory is opened
//! with `O_NOFOLLOW` relative to its parent's descriptor, files are opened the same way,
//! and symlinks are copied as symlinks (their target text unchanged: in the guest they
//! resolve inside the guest, never on the host). Devices, FIFOs and sockets are skipped.
//! Sizes are measured while copying (never taken from a first scan that a writer could
//! outrun): each entry costs one 4 KiB block plus its data rounded up to blocks, and the
//! copy stops when the pack would pass [`MAX_BYTES`] or [`MAX_ENTRIES`].

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};

/// Largest pack: the generic template's volume slot holds this much.
pub const MAX_BYTES: u64 = 64 << 20;
/// Most entries (files, directories, symlinks) in a pack.
pub const MAX_ENTRIES: u64 = 10_000;
/// What each entry costs at least (one EROFS block).
const BLOCK: u64 = 4096;
/// Same UUID as image bases: the pack's bytes depend only on its content.
const FIXED_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// Packing failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot copy {path} into the volume pack: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the volume pack: {0}")]
    Mkfs(#[from] shadowfs::Error),
}

/// How much of the pack is used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    /// Bytes charged (blocks).
    pub bytes: u64,
    /// Entries copied.
    pub entries: u64,
    max_bytes: u64,
    max_entries: u64,
}

/// The pack would pass its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Budget {
    /// A budget of `max_bytes` and `max_entries`.
    pub fn new(max_bytes: u64, max_entries: u64) -> Budget {
        Budget {
            max_bytes,
            max_entries,
            ..Budget::default()
        }
    }

    fn entry(&mut self) -> Result<(), Overflow> {
        self.entries += 1;
        self.bytes(BLOCK)?;
        if self.entries > self.max_entries {
            return Err(Overflow);
        }
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<(), Overflow> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            return Err(Overflow);
        }
        Ok(())
    }
}

/// Why one volume was not copied.
#[derive(Debug)]
pub enum CopyError {
    /// It does not fit in what is left of the budget.
    Overflow,
    /// Reading or writing failed.
    Io(PackError),
}

impl From<Overflow> for CopyError {
    fn from(_: Overflow) -> Self {
        CopyError::Overflow
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| {
        CopyError::Io(PackError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn errno_at(path: &Path) -> impl FnOnce(nix::Error) -> CopyError + '_ {
    move |e| io_at(path)(std::io::Error::from(e))
}

/// Copies host `src` (a directory or file; a symlink here is followed, as the user named
/// it) to `dst`, charging `budget`. On any error `dst` may be partly written.
pub fn copy_volume(src: &Path, dst: &Path, budget: &mut Budget) -> Result<(), CopyError> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = nix::fcntl::open(src, flags, Mode::empty()).map_err(errno_at(src))?;
    let st = fstat(&fd).map_err(errno_at(src))?;
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => {
            budget.entry()?;
            std::fs::create_dir(dst).map_err(io_at(dst))?;
            copy_dir(&fd, src, dst, budget)?;
            set_mode(dst, st.st_mode)
        }
        SFlag::S_IFREG => copy_file(fd, src, dst, st.st_mode, budget),
        _ => Err(io_at(src)(std::io::Error::other(
            "not a directory or regular file",
        ))),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CopyError> {
    // Permission bits and the sticky bit; set-id bits mean nothing in a nosuid mount.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o1777))
        .map_err(io_at(path))
}

fn copy_file(
    fd: OwnedFd,
    src: &Path,
    dst: &Path,
    mode: u32,
    budget: &mut Budget,
) -> Result<(), CopyError> {
    budget.entry()?;
    let mut from = std::fs::File::from(fd);
    let mut to = std::fs::File::create(dst).map_err(io_at(dst))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_at(src)(e)),
        };
        // Charged as it is read: a file that grows while copied stops the copy.
        budget.bytes(n as u64)?;
        total += n as u64;
        to.write_all(&buf[..n]).map_err(io_at(dst))?;
    }
    // The rest of the last block.
    budget.bytes(total.next_multiple_of(BLOCK) - total)?;
    drop(to);
    set_mode(dst, mode)
}

fn copy_dir(dir: &OwnedFd, src: &Path, dst: &Path, budget: &mut Budget) -> Result<(), CopyError> {
    // The directory the descriptor holds (procfs's link names that very inode; no path
    // is resolved again).
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let mut names: Vec<Vec<u8>> = Vec::new();
    for e in std::fs::read_dir(&by_fd).map_err(io_at(src))? {
        let e = e.map_err(io_at(src))?;
        names.push(e.file_name().as_bytes().to_vec());
    }
    // Sorted: the same content gives the same pack.
    names.sort();
    for name in names {
        let name = OsStr::from_bytes(&name);
        let (s, t) = (src.join(name), dst.join(name));
        let st =
            fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno_at(&s))?;
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => {
                budget.entry()?;
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let sub = openat(dir, name, flags, Mode::empty()).map_err(errno_at(&s))?;
                std::fs::create_dir(&t).map_err(io_at(&t))?;
                copy_dir(&sub, &s, &t, budget)?;
                set_mode(&t, st.st_mode)?;
            }
            SFlag::S_IFREG => {
                let flags =
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                let fd = openat(dir, name, flags, Mode::empty()).map_err(errno_at(&s))?;
                // Replaced by something else since the stat: skip it.
                let now = fstat(&fd).map_err(errno_at(&s))?;
                if SFlag::from_bits_truncate(now.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    tracing::info!(path = %s.display(), "volume entry changed type while packed; skipped");
                    continue;
                }
                copy_file(fd, &s, &t, now.st_mode, budget)?;
            }
            SFlag::S_IFLNK => {
                budget.entry()?;
                let target = readlinkat(dir, name).map_err(errno_at(&s))?;
                budget.bytes(target.len() as u64)?;
                std::os::unix::fs::symlink(&target, &t).map_err(io_at(&t))?;
            }
            _ => {
                tracing::info!(path = %s.display(), "device, FIFO or socket in a volume: not packed")
            }
        }
    }
    Ok(())
}

/// Makes the EROFS image `out` (replaced) of the tree in `staging`; returns its size.
pub fn mkfs(staging: &Path, out: &Path) -> Result<u64, PackError> {
    let mkfs = shadowfs::tools::find_or_install(shadowfs::tools::MKFS_EROFS)?;
    let _ = std::fs::remove_file(out);
    shadowfs::tools::run(
        Command::new(mkfs)
            .args(["--quiet", "-T0", "-U", FIXED_UUID, "--all-root", "-x-1"])
            .arg("-Enoinline_data")
            .arg(out)
            .arg(staging),
        "building the volume pack",
    )?;
    let meta = std::fs::metadata(out).map_err(|source| PackError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("a.txt"), "hello").unwrap();
        std::fs::write(root.join("sub/deeper/b"), vec![7u8; 5000]).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../a.txt", root.join("sub/rel")).unwrap();
        std::fs::set_permissions(root.join("a.txt"), std::fs::Permissions::from_mode(0o4640))
            .unwrap();
    }

    #[test]
    fn copies_without_following_symlinks_and_charges_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let dst = dir.path().join("dst");
        let mut b = Budget::new(MAX_BYTES, MAX_ENTRIES);
        copy_volume(&src, &dst, &mut b).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("a.txt")).unwrap(), "hello");
        assert_eq!(std::fs::read(dst.join("sub/deeper/b")).unwrap().len(), 5000);
        // Symlinks stay symlinks with their text: nothing of the host's /etc is copied.
        let l = std::fs::symlink_metadata(dst.join("etc-link")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(dst.join("etc-link")).unwrap(),
            Path::new("/etc")
        );
        assert_eq!(
            std::fs::read_link(dst.join("sub/rel")).unwrap(),
            Path::new("../a.txt")
        );
        // The set-uid bit is dropped, the permission bits kept.
        let m = std::fs::metadata(dst.join("a.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o7777, 0o640);
        // 3 dirs + 2 files + 2 symlinks; data: 1 block + 2 blocks; symlink texts.
        assert_eq!(b.entries, 7);
        assert_eq!(b.bytes, 7 * BLOCK + 3 * BLOCK + 4 + 8);
    }

    #[test]
    fn a_volume_over_the_limits_overflows() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let mut b = Budget::new(4 * BLOCK, MAX_ENTRIES);
        assert!(matches!(
            copy_volume(&src, &dir.path().join("d1"), &mut b),
            Err(CopyError::Overflow)
        ));
        let mut b = Budget::new(MAX_BYTES, 3);
        assert!(matches!(
            copy_volume(&src, &dir.path().join("d2"), &mut b),
            Err(CopyError::Overflow)
        ));
        // A single file larger than the budget.
        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; 3 * BLOCK as usize]).unwrap();
        let mut b = Budget::new(3 * BLOCK, MAX_ENTRIES);
        assert!(matches!(
            copy_volume(&big, &dir.path().join("d3"), &mut b),
            Err(CopyError::Overflow)
        ));
    }

    #[test]
    fn the_top_level_path_may_be_a_symlink_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        let mut b = Budget::new(MAX_BYTES, MAX_ENTRIES);
        copy_volume(&link, &dir.path().join("d"), &mut b).unwrap();
        assert!(dir.path().join("d/a.txt").is_file());
        copy_volume(&src.join("a.txt"), &dir.path().join("f"), &mut b).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "hello"
        );
    }

    #[test]
    fn mkfs_makes_an_erofs_image_holding_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let mut b = Budget::new(MAX_BYTES, MAX_ENTRIES);
        let src = dir.path().join("src");
        tree(&src);
        copy_volume(&src, &staging.join("0"), &mut b).unwrap();
        copy_volume(&src.join("a.txt"), &staging.join("1"), &mut b).unwrap();
        let out = dir.path().join("volumes.erofs");
        let size = mkfs(&staging, &out).unwrap();
        assert!(size > 0 && size <= MAX_BYTES, "{size}");
        shadowfs::base::check(&out).unwrap();
        // The same content gives the same bytes.
        let again = dir.path().join("again.erofs");
        mkfs(&staging, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        // fsck.erofs extracts what was packed.
        let fsck = shadowfs::tools::find_or_install(shadowfs::tools::FSCK_EROFS).unwrap();
        let x = dir.path().join("x");
        let st = Command::new(fsck)
            .arg(format!("--extract={}", x.display()))
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read_to_string(x.join("0/a.txt")).unwrap(), "hello");
        assert_eq!(std::fs::read_to_string(x.join("1")).unwrap(), "hello");
        assert_eq!(
            std::fs::read_link(x.join("0/etc-link")).unwrap(),
            Path::new("/etc")
        );
    }
}
