//! App core dumps in an instance's run directory: arrow-vmm writes `core.<pid>` (or
//! `core.<pid>.<n>`) there when the instance was created with `core_dumps`.

use std::path::{Path, PathBuf};

use crate::model::CoreFile;

/// Whether `name` is a core file name arrow-vmm writes (no path parts, nothing else).
pub fn is_core_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("core.") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let digits = |p: &&str| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit());
    (1..=2).contains(&parts.len()) && parts.iter().all(digits)
}

/// The core files in `run_dir`, oldest first.
pub fn list(run_dir: &Path) -> Vec<CoreFile> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(std::time::SystemTime, CoreFile)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if !is_core_name(&name) {
                return None;
            }
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            let ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            Some((
                modified,
                CoreFile {
                    path: e.path().display().to_string(),
                    name,
                    size: meta.len(),
                    created_at: crate::clock::rfc3339(ms),
                },
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    out.into_iter().map(|(_, c)| c).collect()
}

/// The path of core `name` in `run_dir`, if it is a core file name and exists.
pub fn path(run_dir: &Path, name: &str) -> Option<PathBuf> {
    if !is_core_name(name) {
        return None;
    }
    let p = run_dir.join(name);
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_core_names_are_listed_or_served() {
        for ok in ["core.1", "core.42", "core.7.1"] {
            assert!(is_core_name(ok), "{ok}");
        }
        for bad in [
            "core",
            "core.",
            "core.x",
            "core.1.2.3",
            "../core.1",
            "core.1/x",
            "vmm.log",
            "core.1.",
            ".core.1.tmp",
        ] {
            assert!(!is_core_name(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("core.1"), b"ELF").unwrap();
        std::fs::write(dir.path().join("console.log"), b"").unwrap();
        std::fs::write(dir.path().join(".core.2.tmp"), b"").unwrap();
        let l = list(dir.path());
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].name.as_str(), l[0].size), ("core.1", 3));
        assert!(path(dir.path(), "core.1").is_some());
        assert!(path(dir.path(), "console.log").is_none());
        assert!(path(dir.path(), "core.9").is_none());
    }
}
