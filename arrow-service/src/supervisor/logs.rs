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

fn read_from(path: &std::path::Path, offset: u64) -> std::io::Result<Vec<u8>> {
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
            let all = std::fs::read(&path).unwrap_or_default();
            offset = all.len() as u64;
            if n > 0 {
                first = last_lines(&all, n).to_vec();
            }
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
                match read_from(&path, st.offset) {
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
}
