//! Image bases: a read-only EROFS filesystem per image, made with
//! `mkfs.erofs`, reproducible (same entries → same bytes → same digest).
//!
//! Choices, each for the guest side (`0006-ainit-shadowfs.patch`):
//! - uncompressed and without tail-packing (`-E noinline_data`): every
//!   regular file is laid out in whole 4 KiB blocks, which EROFS can serve
//!   with DAX — the guest maps the host's page-cache pages of the base file
//!   instead of copying them into its RAM;
//! - no timestamps (`-T 0`), a fixed UUID, every file owned by root, no
//!   xattrs: nothing of the build host leaks in, so the digest depends only
//!   on the entries (paths, modes, contents).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::tools::{self, FSCK_EROFS, MKFS_EROFS};
use crate::Error;

/// EROFS superblock: at byte 1024, little-endian magic.
const SUPERBLOCK_OFFSET: usize = 1024;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const FIXED_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// One entry of a base, at a path relative to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } => path,
        }
    }
}

/// Checks that `path` stays inside the base: relative, plain components.
fn safe(path: &str) -> Result<&Path, Error> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p)
    } else {
        Err(Error::BadEntry(path.to_string()))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the entries into `dir` (parents created 0755 where not listed).
fn stage(entries: &[Entry], dir: &Path) -> Result<(), Error> {
    // Sorted by path: parents before children; the last of duplicates wins.
    let sorted: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.path(), e)).collect();
    for (path, entry) in sorted {
        let target = dir.join(safe(path)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mode = match entry {
            Entry::Dir { mode, .. } => {
                std::fs::create_dir_all(&target).map_err(io(&target))?;
                *mode
            }
            Entry::File { mode, data, .. } => {
                std::fs::write(&target, data).map_err(io(&target))?;
                *mode
            }
        };
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io(&target))?;
    }
    // Directories made implicitly above got the umask; make them 0755.
    normalize_dirs(dir, dir, entries)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io(dir))
}

fn normalize_dirs(root: &Path, dir: &Path, entries: &[Entry]) -> Result<(), Error> {
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let p = e.path();
        if e.file_type().map_err(io(&p))?.is_dir() {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if !entries.iter().any(|x| x.path() == rel) {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&p))?;
            }
            normalize_dirs(root, &p, entries)?;
        }
    }
    Ok(())
}

/// `sha256:<hex>` of a file.
pub fn file_digest(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Builds the base of `entries` into `out` (replaced); returns its digest.
pub fn build(entries: &[Entry], out: &Path) -> Result<String, Error> {
    let mkfs = tools::find_or_install(MKFS_EROFS)?;
    let staging = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
    let root = staging.path().join("root");
    std::fs::create_dir(&root).map_err(io(&root))?;
    stage(entries, &root)?;
    let _ = std::fs::remove_file(out);
    tools::run(
        Command::new(mkfs)
            .args(["--quiet", "-T0", "-U", FIXED_UUID, "--all-root", "-x-1"])
            .arg("-Enoinline_data")
            .arg(out)
            .arg(&root),
        "building the EROFS image base",
    )?;
    file_digest(out)
}

/// Checks that `path` is a whole EROFS image (superblock magic, then
/// `fsck.erofs`); the error says what is wrong.
pub fn check(path: &Path) -> Result<(), Error> {
    let mut head = [0u8; SUPERBLOCK_OFFSET + 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| Error::BadBase {
            path: path.to_path_buf(),
            why: format!("cannot read its superblock ({e}): truncated?"),
        })?;
    let magic = u32::from_le_bytes([head[1024], head[1025], head[1026], head[1027]]);
    if magic != EROFS_MAGIC {
        return Err(Error::BadBase {
            path: path.to_path_buf(),
            why: format!("no EROFS superblock (magic {magic:#x})"),
        });
    }
    let fsck = tools::find_or_install(FSCK_EROFS)?;
    tools::run(Command::new(fsck).arg(path), "checking the image base").map_err(|e| {
        Error::BadBase {
            path: path.to_path_buf(),
            why: e.to_string(),
        }
    })?;
    Ok(())
}
