//! A minimal newc ("070701") cpio writer and reader: the initramfs format the Linux kernel unpacks.
//!
//! The writer is deterministic: inode numbers count up from 1, and mtime, uid, gid and device
//! numbers are zero, so equal inputs give equal bytes.

/// Mode bits for a directory.
pub const S_IFDIR: u32 = 0o040000;
/// Mode bits for a regular file.
pub const S_IFREG: u32 = 0o100000;
const S_IFMT: u32 = 0o170000;
const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// Builds an archive in memory (Arrow initrds are small).
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub path: String,
    /// Type and permission bits.
    pub mode: u32,
    /// File contents (empty for directories).
    pub data: Vec<u8>,
}

impl Entry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

/// A malformed archive.
#[derive(Debug, thiserror::Error)]
#[error("malformed cpio archive at byte {offset}: {reason}")]
pub struct CpioError {
    /// Where parsing stopped.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

/// A file the newc format cannot hold (sizes are 32-bit).
#[derive(Debug, thiserror::Error)]
#[error("{path} has {size} bytes; a cpio (newc) entry holds less than 4 GiB: ship a smaller file")]
pub struct EntryTooLarge {
    /// The file.
    pub path: String,
    /// Its size.
    pub size: u64,
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    /// Adds a directory; `perm` is the permission bits (e.g. 0o755).
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[]);
    }

    /// Adds a regular file. newc headers hold 32-bit sizes: a file of 4 GiB
    /// or more (or a path that long) is refused, never truncated.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), EntryTooLarge> {
        if u32::try_from(data.len()).is_err() {
            return Err(EntryTooLarge {
                path: path.to_owned(),
                size: data.len() as u64,
            });
        }
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data);
        Ok(())
    }

    /// Appends the `TRAILER!!!` entry and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(TRAILER, 0, 0, 1, 0);
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        // Checked by `file` (directories have no data).
        let size = u32::try_from(data.len()).unwrap_or(0);
        self.header(path.trim_start_matches('/'), ino, mode, nlink, size);
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32) {
        let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(MAGIC);
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        for field in [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0] {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        self.buf.resize(align4(self.buf.len()), 0);
    }
}

/// Parses a newc archive up to its trailer.
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let err = |offset: usize, reason: &str| CpioError {
        offset,
        reason: reason.to_owned(),
    };
    let mut entries = Vec::new();
    let mut pos = 0usize;
    loop {
        let header = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| err(pos, "truncated header (no TRAILER!!! entry)"))?;
        if &header[..6] != MAGIC {
            return Err(err(pos, "bad magic, expected newc 070701"));
        }
        let field = |i: usize| -> Result<usize, CpioError> {
            let text = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| err(pos, "non-ASCII header field"))?;
            usize::from_str_radix(text, 16).map_err(|_| err(pos, "non-hex header field"))
        };
        let mode = u32::try_from(field(1)?).map_err(|_| err(pos, "mode out of range"))?;
        let size = field(6)?;
        let namesize = field(11)?;
        let name_start = pos + HEADER_LEN;
        let name_bytes = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| err(pos, "truncated name"))?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
            .map_err(|_| err(pos, "name is not UTF-8"))?
            .to_owned();
        let data_start = align4(name_start + namesize);
        if name == TRAILER {
            return Ok(entries);
        }
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or_else(|| err(pos, "truncated file data"))?
            .to_vec();
        entries.push(Entry {
            path: name,
            mode,
            data,
        });
        pos = align4(data_start + size);
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let mut w = Writer::new();
        w.dir("arrow", 0o755);
        w.file("/app", 0o755, b"hello").unwrap();
        w.file("arrow/spec.json", 0o644, b"{}").unwrap();
        let bytes = w.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let entries = read(&bytes).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].path, "arrow");
        assert!(entries[0].is_dir());
        assert_eq!(entries[1].path, "app");
        assert_eq!(entries[1].mode, 0o100755);
        assert_eq!(entries[1].data, b"hello");
        assert!(entries[2].is_file());
        // The trailer is the last header in the archive.
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]).into_owned();
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
    }

    #[test]
    fn header_fields_are_deterministic() {
        let mut w = Writer::new();
        w.file("app", 0o755, b"x").unwrap();
        let bytes = w.finish();
        // ino=1, mode=0100755, uid=gid=0, nlink=1, mtime=0, size=1
        let fields = [1, 0o100755, 0, 0, 1, 0, 1, 0, 0, 0, 0, 4, 0];
        let expected: String = std::iter::once("070701".to_owned())
            .chain(fields.iter().map(|f| format!("{f:08x}")))
            .collect();
        assert_eq!(String::from_utf8_lossy(&bytes[..110]), expected);
    }

    #[test]
    fn refuses_files_of_4_gib_instead_of_truncating() {
        // calloc'd through mmap: the pages are never touched.
        let big = vec![0u8; 1 << 32];
        let mut w = Writer::new();
        let e = w.file("big", 0o644, &big).unwrap_err();
        assert_eq!(e.size, 1 << 32);
        assert!(e.to_string().contains("less than 4 GiB"), "{e}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(read(b"not a cpio archive at all, really not one, no no no no no no no no no no no no no no no no no no no no").is_err());
        let mut w = Writer::new();
        w.file("app", 0o755, b"hello world").unwrap();
        let bytes = w.finish();
        assert!(read(&bytes[..120]).is_err());
    }
}
