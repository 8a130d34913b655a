//! Console output (`console.log` in the run directory), optionally followed until the
//! instance finishes.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, Stream};

use super::{Supervisor, CONSOLE_LOG};
use crate::error::Result;
use crate::model::State;

/// A stream of console bytes.
pub type LogStream = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Vec<u8>>> + Send>>;

/// Most bytes `logs?tail=N` returns (the console file itself is capped too).
const MAX_TAIL_BYTES: u64 = 8 << 20;
/// Step of the backwards scan for line ends.
const TAIL_CHUNK: u64 = 64 << 10;

/// The last `n` lines of the file at `path` and its length, reading backwards
/// from the end in chunks: never more than [`MAX_TAIL_BYTES`] in memory.
fn tail_file(path: &std::path::Path, n: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if n == 0 {
        return Ok((Vec::new(), len));
    }
    let floor = len.saturating_sub(MAX_TAIL_BYTES);
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > floor {
        let from = start.saturating_sub(TAIL_CHUNK).max(floor);
        let mut chunk = vec![0u8; (start - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
        let tail = last_lines(&buf, n);
        if tail.len() < buf.len() {
            return Ok((tail.to_vec(), len));
        }
    }
    Ok((last_lines(&buf, n).to_vec(), len))
}

fn last_lines(data: &[u8], n: usize) -> &[u8] {
    let mut count = 0;
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            count += 1;
            if count == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

struct Follow {
    sup: Arc<Supervisor>,
    id: String,
    offset: u64,
    follow: bool,
    done: bool,
}

/// Up to 1 MiB from `offset`; a file shorter than `offset` was rotated
/// (arrow-vmm moved it to console.log.1), so reading restarts at 0.
fn read_from(path: &std::path::Path, offset: &mut u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() < *offset {
        *offset = 0;
    }
    f.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    Ok(buf)
}

impl Supervisor {
    /// The console log; `tail` keeps the last N lines; `follow` streams until the instance
    /// finishes (or is removed).
    pub fn logs(
        self: &Arc<Self>,
        reference: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream> {
        let rec = self.db.find(reference)?;
        let path = self.run_dir(&rec.id).join(CONSOLE_LOG);
        let mut offset = 0;
        let mut first = Vec::new();
        if let Some(n) = tail {
            (first, offset) = tail_file(&path, n).unwrap_or_default();
        }
        let state = Follow {
            sup: Arc::clone(self),
            id: rec.id,
            offset,
            follow,
            done: false,
        };
        let head = stream::iter((!first.is_empty()).then_some(Ok(first)));
        let body = stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let path = st.sup.run_dir(&st.id).join(CONSOLE_LOG);
            loop {
                // Check the state before reading so that output written just before the
                // instance finished is still delivered.
                // Following a never-started instance waits for it to run; otherwise
                // the stream ends once the instance is no longer active (or removed).
                let finished = match st.sup.db.get(&st.id) {
                    Ok(Some(r)) if r.state == State::Created => !st.follow,
                    Ok(Some(r)) => !r.state.is_active(),
                    _ => true,
                };
                match read_from(&path, &mut st.offset) {
                    Ok(chunk) if !chunk.is_empty() => {
                        st.offset += chunk.len() as u64;
                        return Some((Ok(chunk), st));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
                if !st.follow || finished {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Box::pin(stream::StreamExt::chain(head, body)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_lines() {
        assert_eq!(super::last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(super::last_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(super::last_lines(b"a\n", 5), b"a\n");
    }

    #[test]
    fn tail_reads_from_the_end_only() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..200_000 {
            writeln!(f, "line {i}").unwrap();
        }
        drop(f);
        let len = std::fs::metadata(&path).unwrap().len();
        let (t, off) = super::tail_file(&path, 3).unwrap();
        assert_eq!(t, b"line 199997\nline 199998\nline 199999\n");
        assert_eq!(off, len);
        // Across several chunks.
        let (t, _) = super::tail_file(&path, 20_000).unwrap();
        assert!(t.starts_with(b"line 180000\n"), "{:?}", &t[..20]);
        // Bounded: asking for everything returns at most MAX_TAIL_BYTES.
        let (t, _) = super::tail_file(&path, usize::MAX).unwrap();
        assert!(t.len() as u64 <= super::MAX_TAIL_BYTES);
        assert!(t.ends_with(b"line 199999\n"));
        assert_eq!(
            super::tail_file(&dir.path().join("none"), 5).unwrap(),
            (vec![], 0)
        );

        // A rotated (shorter) file is read again from its start.
        let mut off = len;
        std::fs::write(&path, b"fresh\n").unwrap();
        assert_eq!(super::read_from(&path, &mut off).unwrap(), b"fresh\n");
        assert_eq!(off, 0);
    }
}
