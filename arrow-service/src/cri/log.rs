//! The CRI container log: the instance's console (`console.log` in its run directory) is
//! copied, while the instance runs, to the container's `log_path` in kubelet's CRI format,
//! one record per line: `<RFC3339Nano> stdout F <text>` (`P` for a partial line, i.e. a
//! line cut at [`MAX_LINE`] bytes). ReopenContainerLog swaps the open file (log rotation).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Longest record; a longer line is written as `P` records and a final `F`.
pub const MAX_LINE: usize = 16 * 1024;

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (RFC 3339 with nanoseconds, UTC).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = (d.as_secs() as i64) * 1000;
    // clock::rfc3339 gives `….000Z`; replace the milliseconds with nanoseconds.
    let base = crate::clock::rfc3339(ms);
    format!("{}{:09}Z", &base[..base.len() - 4], d.subsec_nanos())
}

/// Turns console bytes into CRI log records, keeping an unfinished last line.
#[derive(Debug, Default)]
pub struct Formatter {
    pending: Vec<u8>,
}

fn record(out: &mut Vec<u8>, ts: &str, tag: &str, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b" stdout ");
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line);
    out.push(b'\n');
}

impl Formatter {
    /// Records for `chunk` (complete lines, and full-length pieces of a long line).
    pub fn push(&mut self, chunk: &[u8], ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + nl];
            for piece in line
                .chunks(MAX_LINE)
                .take(line.len().saturating_sub(1) / MAX_LINE)
            {
                record(&mut out, ts, "P", piece);
            }
            let tail = line.len() - line.len().saturating_sub(1) / MAX_LINE * MAX_LINE;
            record(&mut out, ts, "F", &line[line.len() - tail..]);
            start += nl + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() > MAX_LINE {
            let piece: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            record(&mut out, ts, "P", &piece);
        }
        out
    }

    /// The unfinished last line, once the console has ended.
    pub fn finish(&mut self, ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            record(&mut out, ts, "F", &std::mem::take(&mut self.pending));
        }
        out
    }
}

/// The open log file of one container; shared by its writer task and ReopenContainerLog.
pub struct LogSink {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

fn open(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create log directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Internal(format!("cannot open container log {}: {e}", path.display())))
}

impl LogSink {
    /// Opens (appending, creating) the log file.
    pub fn open(path: &Path) -> Result<LogSink> {
        Ok(LogSink {
            path: path.to_owned(),
            file: Mutex::new(open(path)?),
        })
    }

    /// Reopens the file at the same path (after kubelet rotated it away).
    pub fn reopen(&self) -> Result<()> {
        let f = open(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = f;
        Ok(())
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(bytes)
    }
}

/// Reads up to 1 MiB of `path` from `offset` (nothing if it does not exist yet).
fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Where the copy stands, and how to tell whether the instance still runs.
pub struct Copy {
    /// The instance's console file.
    pub console: PathBuf,
    /// Bytes already copied.
    pub offset: u64,
    /// The container log.
    pub sink: Arc<LogSink>,
}

impl Copy {
    /// Copies until `running()` says the instance ended and the console is drained;
    /// `saved(offset)` is called after each write (to persist the offset).
    pub async fn run(mut self, mut running: impl FnMut() -> bool, mut saved: impl FnMut(u64)) {
        let mut fmt = Formatter::default();
        loop {
            // Look at the state before reading: output written just before the end is
            // still read below.
            let alive = running();
            let chunk = match read_from(&self.console, self.offset) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(console = %self.console.display(), "cannot read the console: {e}");
                    Vec::new()
                }
            };
            if !chunk.is_empty() {
                let ts = rfc3339_nano(SystemTime::now());
                let out = fmt.push(&chunk, &ts);
                if let Err(e) = self.sink.write(&out) {
                    tracing::warn!(log = %self.sink.path.display(), "cannot write the container log: {e}");
                }
                self.offset += chunk.len() as u64;
                saved(self.offset);
                continue;
            }
            if !alive {
                let out = fmt.finish(&rfc3339_nano(SystemTime::now()));
                if let Err(e) = self.sink.write(&out) {
                    tracing::warn!(log = %self.sink.path.display(), "cannot write the container log: {e}");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records() {
        let mut f = Formatter::default();
        let out = f.push(b"hello\r\nwor", "T");
        assert_eq!(out, b"T stdout F hello\n");
        let out = f.push(b"ld\n\n", "U");
        assert_eq!(out, b"U stdout F world\nU stdout F \n");
        assert!(f.push(b"tail", "V").is_empty());
        assert_eq!(f.finish("W"), b"W stdout F tail\n");
        assert!(f.finish("W").is_empty());
    }

    #[test]
    fn long_lines_are_split_into_partials() {
        let mut f = Formatter::default();
        let mut line = vec![b'a'; MAX_LINE * 2 + 5];
        line.push(b'\n');
        let out = String::from_utf8(f.push(&line, "T")).unwrap();
        let tags: Vec<&str> = out.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
        assert!(out.lines().last().unwrap().ends_with(" F aaaaa"));
        // Exactly MAX_LINE bytes is one full record.
        let mut line = vec![b'b'; MAX_LINE];
        line.push(b'\n');
        let out = String::from_utf8(f.push(&line, "T")).unwrap();
        assert_eq!(out.lines().count(), 1);
        // A line without newline longer than MAX_LINE is emitted as partial at once.
        let out = String::from_utf8(f.push(&vec![b'c'; MAX_LINE + 1], "T")).unwrap();
        assert_eq!(out.lines().count(), 1);
        assert!(out.contains(" P "));
        assert_eq!(f.finish("T"), b"T stdout F c\n");
    }

    #[test]
    fn timestamps_have_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(951_782_400, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.123456789Z");
    }
}
