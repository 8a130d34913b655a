//! Measured costs of a template: its snapshot on disk and the pages its live clones map.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::model::{DiskUsage, Sharing};

/// Apparent and allocated size of the files in `dir` (not recursive).
pub fn disk_usage(dir: &Path) -> DiskUsage {
    let mut u = DiskUsage::default();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                u.apparent_bytes += m.len();
                u.allocated_bytes += m.blocks() * 512;
            }
        }
    }
    u
}

/// Adds the smaps figures of every mapping of `file` in process `pid` to `s`.
/// Returns false when the process (or its smaps) cannot be read.
pub fn add_process(s: &mut Sharing, pid: i32, file: &Path) -> bool {
    let pid = crate::procfs::vmm_process(pid);
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return false;
    };
    add_smaps(s, &text, &file.display().to_string());
    s.clones += 1;
    true
}

fn kib(line: &str, key: &str) -> Option<u64> {
    let v = line.strip_prefix(key)?.trim();
    v.strip_suffix("kB")?.trim().parse::<u64>().ok()
}

/// Sums the fields of the smaps entries whose path is `file`.
fn add_smaps(s: &mut Sharing, smaps: &str, file: &str) {
    let mut inside = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        if let Some(range) = words.next() {
            if range.contains('-') && range.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                // Header: range perms offset dev inode [path] (the path may hold spaces).
                inside = line.trim_end().ends_with(&format!(" {file}"));
                continue;
            }
        }
        if !inside {
            continue;
        }
        let b = |k| kib(line, k).map(|v| v * 1024);
        if let Some(v) = b("Rss:") {
            s.rss_bytes += v;
        } else if let Some(v) = b("Pss:") {
            s.pss_bytes += v;
        } else if let Some(v) = b("Shared_Clean:").or_else(|| b("Shared_Dirty:")) {
            s.shared_bytes += v;
        } else if let Some(v) = b("Private_Dirty:") {
            s.private_dirty_bytes += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_template_mapping() {
        let smaps = "\
7f0000000000-7f0002000000 r--p 00000000 08:01 1234 /t/memory.bin
Size:              32768 kB
Rss:                 400 kB
Pss:                 150 kB
Shared_Clean:        300 kB
Shared_Dirty:          0 kB
Private_Clean:        20 kB
Private_Dirty:        80 kB
7f0003000000-7f0003001000 rw-p 00000000 00:00 0
Rss:                   4 kB
Pss:                   4 kB
Private_Dirty:         4 kB
";
        let mut s = Sharing::default();
        add_smaps(&mut s, smaps, "/t/memory.bin");
        assert_eq!(s.rss_bytes, 400 * 1024);
        assert_eq!(s.pss_bytes, 150 * 1024);
        assert_eq!(s.shared_bytes, 300 * 1024);
        assert_eq!(s.private_dirty_bytes, 80 * 1024);
    }

    #[test]
    fn counts_allocated_blocks_of_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("memory.bin")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
        let u = disk_usage(dir.path());
        assert_eq!(u.apparent_bytes, (64 << 20) + 2);
        assert!(u.allocated_bytes < 1 << 20, "{u:?}");
    }
}
