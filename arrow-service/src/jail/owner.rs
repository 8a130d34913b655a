//! File ownership for a jailed VMM. Its run directory stays arrowd's, with the
//! jail's group allowed to create files and the sticky bit set (mode 1770): the
//! VMM makes its sockets, logs and report, but cannot remove or replace what
//! arrowd keeps there (the spawn token that re-adoption trusts, vmm.log).
//! Everything else already in it (console.log from a previous run, upper.img)
//! becomes the VMM's, so it can write, rotate and replace it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Prepares `run_dir` for a VMM running as `uid`:`gid`; `keep` names files that stay arrowd's.
pub fn prepare_run_dir(run_dir: &Path, uid: u32, gid: u32, keep: &[&str]) -> std::io::Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    std::os::unix::fs::chown(run_dir, Some(me), Some(gid))?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o1770))?;
    for entry in std::fs::read_dir(run_dir)? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Gives `path` (a writable file or directory outside the run directory) to the VMM.
pub fn give(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn run_dir_is_sticky_and_kept_files_stay_ours() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spawn.token"), "t").unwrap();
        std::fs::write(dir.path().join("console.log"), "old").unwrap();
        prepare_run_dir(dir.path(), 4321, 4322, &["spawn.token"]).unwrap();
        let m = std::fs::metadata(dir.path()).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 4322, 0o1770));
        assert_eq!(
            std::fs::metadata(dir.path().join("spawn.token"))
                .unwrap()
                .uid(),
            0
        );
        let c = std::fs::metadata(dir.path().join("console.log")).unwrap();
        assert_eq!((c.uid(), c.gid()), (4321, 4322));
    }
}
