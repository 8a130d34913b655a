//! Where `PUT /vm/snapshot` may write.
//!
//! With `--snapshot-dir DIR` (what arrowd passes), a snapshot goes only to a
//! new directory under DIR: a relative `dir` is taken relative to DIR, an
//! absolute one must lie under it, `..` is refused, and the deepest existing
//! ancestor must resolve (symlinks followed) inside DIR. Without the flag an
//! absolute path anywhere is accepted: only arrow-vmm's own user and root can
//! reach the socket (see [`super::socket`]), and they could write there anyway.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct SnapshotPolicy {
    /// Canonical root, when restricted.
    root: Option<PathBuf>,
}

impl SnapshotPolicy {
    /// Any absolute path (arrow-vmm run by hand without `--snapshot-dir`).
    pub fn anywhere() -> Self {
        Self { root: None }
    }

    /// Only under `root`, which must exist.
    pub fn under(root: &Path) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(root)?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(Self { root: Some(root) })
    }

    /// The directory a request for `dir` writes to, or why it may not.
    pub fn resolve(&self, dir: &Path) -> Result<PathBuf, String> {
        let Some(root) = &self.root else {
            return Ok(dir.to_path_buf());
        };
        if dir
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(format!(
                "snapshot dir {} contains '.' or '..': give a plain path under {}",
                dir.display(),
                root.display()
            ));
        }
        let full = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            root.join(dir)
        };
        let outside = || {
            format!(
                "snapshot dir {} is outside {} (this arrow-vmm's --snapshot-dir): give a path under it",
                dir.display(),
                root.display()
            )
        };
        if full == *root || !full.starts_with(root) {
            return Err(outside());
        }
        // The deepest part that exists must really be inside the root (a
        // symlink under the root could point anywhere).
        let mut existing = full.as_path();
        while !existing.exists() {
            existing = existing.parent().ok_or_else(outside)?;
        }
        let real = std::fs::canonicalize(existing)
            .map_err(|e| format!("cannot resolve {}: {e}", existing.display()))?;
        if !real.starts_with(root) {
            return Err(outside());
        }
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_stay_under_the_root() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("templates");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let p = SnapshotPolicy::under(&root).unwrap();
        let real = std::fs::canonicalize(&root).unwrap();
        assert_eq!(p.resolve(Path::new("t1")).unwrap(), real.join("t1"));
        assert_eq!(
            p.resolve(&real.join("a/b")).unwrap(),
            real.join("a/b"),
            "nested new directories are fine"
        );
        for bad in [
            "/tmp/x",
            "../x",
            "a/../../x",
            "escape/x",
            "./x",
            real.to_str().unwrap(),
        ] {
            let e = p.resolve(Path::new(bad)).unwrap_err();
            assert!(e.contains("outside") || e.contains("'..'"), "{bad}: {e}");
        }
        assert_eq!(
            SnapshotPolicy::anywhere()
                .resolve(Path::new("/tmp/x"))
                .unwrap(),
            Path::new("/tmp/x")
        );
    }
}
