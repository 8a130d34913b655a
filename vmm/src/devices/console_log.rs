//! The console file, capped: a guest that floods its serial port cannot fill
//! the host's disk. When `PATH` would grow past the cap, its content moves to
//! `PATH.1` (replacing the previous one) and `PATH` starts again empty, so at
//! most twice the cap is on disk.
//!
//! Rotation runs on the vCPU thread that writes the byte, so it uses only
//! calls on descriptors opened at start (ftruncate, copy_file_range), never
//! paths: the vCPU seccomp filter has no open or rename.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The default cap of `--console-max-size`.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

pub struct ConsoleLog {
    current: File,
    previous: File,
    len: u64,
    max: u64,
    /// Bytes dropped because rotation failed (reported once).
    dropped: u64,
}

/// The rotated file's path: `PATH.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

impl ConsoleLog {
    /// Creates (truncates) `path` and `path.1`; `max` 0 = no cap.
    pub fn create(path: &Path, max: u64) -> std::io::Result<Self> {
        // O_APPEND: after a rotation truncates it, writes start at 0 again.
        let current = File::create(path)?;
        drop(current);
        let current = OpenOptions::new().append(true).read(true).open(path)?;
        let previous = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(rotated_path(path))?;
        Ok(Self {
            current,
            previous,
            len: 0,
            max,
            dropped: 0,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.previous.set_len(0)?;
        let mut off_in: libc::loff_t = 0;
        let mut off_out: libc::loff_t = 0;
        while (off_in as u64) < self.len {
            let left = (self.len - off_in as u64) as usize;
            // SAFETY: both descriptors are open files owned by self; the
            // offsets are valid pointers to locals the kernel updates.
            let n = unsafe {
                libc::copy_file_range(
                    self.current.as_raw_fd(),
                    &mut off_in,
                    self.previous.as_raw_fd(),
                    &mut off_out,
                    left,
                    0,
                )
            };
            if n <= 0 {
                break;
            }
        }
        self.current.set_len(0)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.max > 0 && self.len + buf.len() as u64 > self.max {
            if let Err(e) = self.rotate() {
                if self.dropped == 0 {
                    crate::limited_warn!(error = %e, "cannot rotate the console file; dropping console output");
                }
                self.dropped += buf.len() as u64;
                return Ok(buf.len());
            }
        }
        let n = self.current.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_stays_under_twice_the_cap_and_keeps_the_latest_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = ConsoleLog::create(&path, 1000).unwrap();
        for i in 0..10_000u32 {
            writeln!(log, "line {i}").unwrap();
        }
        let cur = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(rotated_path(&path)).unwrap();
        assert!(
            cur.len() <= 1000 && old.len() <= 1000,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert!(cur.ends_with("line 9999\n"), "{cur}");
        // The two files are consecutive: old ends where current begins.
        let first_cur: u32 = cur.lines().next().unwrap()[5..].parse().unwrap();
        let last_old: u32 = old.lines().last().unwrap()[5..].parse().unwrap();
        assert_eq!(last_old + 1, first_cur);

        let mut unlimited = ConsoleLog::create(&path, 0).unwrap();
        for _ in 0..100 {
            unlimited.write_all(&[b'x'; 100]).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10_000);
    }
}
