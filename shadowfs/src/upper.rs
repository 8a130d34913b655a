//! Per-instance writable layers that persist: an ext4 filesystem in a file
//! the VMM maps as a read-write pmem device. The guest keeps overlayfs's
//! `upper/` and `work/` directories at its root.
//!
//! ext4 rather than ext2: overlayfs renames base files with
//! `RENAME_WHITEOUT`, which ext2 does not support, and the journal keeps a
//! layer consistent when its VM is killed. Made without metadata checksums
//! (crc32c in software is slow where guest kernel code is emulated) and
//! with inode tables and journal initialized here, so that the guest kernel
//! does not zero them in the background.
//!
//! (The default writable layer is a tmpfs in guest RAM: nothing on the
//! host, nothing to create, inspect or delete here.)

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::tools::{self, DEBUGFS, E2FSCK, MKE2FS, RESIZE2FS};
use crate::Error;

/// The VMM rounds pmem windows up to 2 MiB; a layer of whole 2 MiB units
/// has no padding the guest could write and lose.
pub const SIZE_UNIT: u64 = 2 << 20;
/// Smaller is not useful: ext4 metadata and journal take ~2 MiB.
pub const MIN_SIZE: u64 = 16 << 20;

fn rounded(size: u64) -> Result<u64, Error> {
    size.max(MIN_SIZE)
        .checked_add(SIZE_UNIT - 1)
        .map(|s| s & !(SIZE_UNIT - 1))
        .ok_or(Error::BadSize(size))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a writable layer of at least `size` bytes (rounded up to 2 MiB,
/// at least 16 MiB) at `path`, which must not exist. The file is sparse:
/// host disk is used as the instance writes. Returns the size.
pub fn create(path: &Path, size: u64) -> Result<u64, Error> {
    let size = rounded(size)?;
    let mke2fs = tools::find_or_install(MKE2FS)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path))?;
    file.set_len(size).map_err(io(path))?;
    drop(file);
    // No reserved blocks (-m 0): the app gets ENOSPC when the layer is
    // really full, not at 95 %.
    let made = tools::run(
        Command::new(mke2fs)
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .args(["-O", "^metadata_csum,^metadata_csum_seed"])
            .args([
                "-E",
                "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
            ])
            .args(["-L", "arrow-upper"])
            .arg(path),
        "making the writable layer's ext4 filesystem",
    );
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(size)
}

/// Grows a layer (never shrinks it); the instance must be stopped.
pub fn resize(path: &Path, size: u64) -> Result<u64, Error> {
    let size = rounded(size)?;
    let now = std::fs::metadata(path).map_err(io(path))?.len();
    if size <= now {
        return Ok(now);
    }
    check(path)?;
    let resize2fs = tools::find_or_install(RESIZE2FS)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(size))
        .map_err(io(path))?;
    tools::run(
        Command::new(resize2fs).arg("-f").arg(path),
        "growing the writable layer",
    )?;
    Ok(size)
}

/// Checks a layer before the instance starts (`e2fsck -p`: replays the
/// journal of a VM that was killed, repairs what it can). Returns true when
/// something was repaired.
pub fn check(path: &Path) -> Result<bool, Error> {
    let e2fsck = tools::find_or_install(E2FSCK)?;
    let out = Command::new(&e2fsck)
        .args(["-p", "-f"])
        .arg(path)
        .output()
        .map_err(|source| Error::Spawn {
            program: e2fsck.display().to_string(),
            source,
        })?;
    // e2fsck: 0 clean, 1 errors corrected, 2 corrected (reboot advised);
    // anything else means the layer cannot be used as it is.
    match out.status.code() {
        Some(0) => Ok(false),
        Some(1 | 2) => {
            tracing::warn!(path = %path.display(), "writable layer repaired by e2fsck");
            Ok(true)
        }
        _ => Err(Error::BadUpper {
            path: path.to_path_buf(),
            why: format!(
                "e2fsck -p: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        }),
    }
}

/// Deletes a layer (the instance's writes are gone).
pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// What an instance changed relative to its image, as overlayfs recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A directory that exists in the layer (new, or holding changes).
    Dir,
    /// A directory that replaces the base's (its base content is hidden).
    OpaqueDir,
    /// A file or symlink written by the instance (new, or copied up).
    Written,
    /// A base entry the instance deleted (whiteout).
    Deleted,
}

/// One path the instance changed, as the app sees it (`/etc/app.conf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
    /// Bytes, for written files.
    pub size: Option<u64>,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;

/// One `ls -p` line: `/ino/mode/uid/gid/name/size/`.
fn parse_ls_line(line: &str) -> Option<(String, u32, Option<u64>)> {
    let rest = line.strip_prefix('/')?.strip_suffix('/')?;
    let mut parts = rest.splitn(5, '/');
    let _ino = parts.next()?;
    let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
    let _uid = parts.next()?;
    let _gid = parts.next()?;
    let tail = parts.next()?;
    // name/size: the name cannot contain '/', the size can be empty.
    let (name, size) = tail.rsplit_once('/')?;
    Some((name.to_string(), mode, size.parse().ok()))
}

/// debugfs commands take paths in double quotes; names that cannot be
/// quoted are reported, not followed.
fn quotable(path: &str) -> bool {
    !path.contains(['"', '\n', '\r'])
}

/// Runs debugfs (read-only) with `commands`; returns each command's output.
fn debugfs(layer: &Path, commands: &[String]) -> Result<Vec<String>, Error> {
    let debugfs = tools::find_or_install(DEBUGFS)?;
    let dir = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
    let script = dir.path().join("cmds");
    std::fs::write(&script, commands.join("\n") + "\n").map_err(io(&script))?;
    let out = tools::run(
        Command::new(debugfs).arg("-f").arg(&script).arg(layer),
        "reading the writable layer",
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // debugfs echoes each command as "debugfs: <command>" before its output.
    let mut sections: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("debugfs: ") {
            sections.push(String::new());
        } else if let Some(s) = sections.last_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    sections.resize(commands.len(), String::new());
    Ok(sections)
}

/// Lists what the instance changed: walks `upper/` of a (stopped)
/// instance's layer. Sorted by path.
pub fn changes(layer: &Path) -> Result<Vec<Change>, Error> {
    let mut out = Vec::new();
    let mut level = vec![String::new()]; // paths below upper/, "" = its root
    while !level.is_empty() {
        let commands: Vec<String> = level
            .iter()
            .flat_map(|d| {
                [
                    format!("ls -p \"/upper{d}\""),
                    format!("ea_list \"/upper{d}\""),
                ]
            })
            .collect();
        let sections = debugfs(layer, &commands)?;
        let mut next = Vec::new();
        for (i, dir) in level.iter().enumerate() {
            let listing = &sections[2 * i];
            if !dir.is_empty() {
                let opaque = sections[2 * i + 1].contains("trusted.overlay.opaque");
                out.push(Change {
                    path: dir.clone(),
                    kind: if opaque {
                        ChangeKind::OpaqueDir
                    } else {
                        ChangeKind::Dir
                    },
                    size: None,
                });
            }
            for line in listing.lines() {
                let Some((name, mode, size)) = parse_ls_line(line.trim()) else {
                    continue;
                };
                if name == "." || name == ".." || name.is_empty() {
                    continue;
                }
                let path = format!("{dir}/{name}");
                match mode & S_IFMT {
                    S_IFDIR if quotable(&path) => next.push(path),
                    S_IFDIR => out.push(Change {
                        path,
                        kind: ChangeKind::Dir,
                        size: None,
                    }),
                    S_IFCHR => out.push(Change {
                        path,
                        kind: ChangeKind::Deleted,
                        size: None,
                    }),
                    _ => out.push(Change {
                        path,
                        kind: ChangeKind::Written,
                        size,
                    }),
                }
            }
        }
        level = next;
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_lines_parse() {
        assert_eq!(
            parse_ls_line("/13/0100644/0/0/app.conf/2/"),
            Some(("app.conf".into(), 0o100644, Some(2)))
        );
        assert_eq!(
            parse_ls_line("/12/040755/0/0/dir with space//"),
            Some(("dir with space".into(), 0o40755, None))
        );
        assert_eq!(parse_ls_line("garbage"), None);
        assert_eq!(parse_ls_line("/x/zz/0/0/a/1/"), None);
    }

    #[test]
    fn sizes_round_to_2mib() {
        assert_eq!(rounded(1).unwrap(), MIN_SIZE);
        assert_eq!(rounded(17 << 20).unwrap(), 18 << 20);
        assert_eq!(rounded(32 << 20).unwrap(), 32 << 20);
        assert!(rounded(u64::MAX).is_err());
    }
}
