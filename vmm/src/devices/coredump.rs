//! App core dumps from the guest: the notify device's CORE_CHUNK event (0x06).
//!
//! The guest kernel (guest-kernel/patches/0008-arrow-coredump.patch) sends a core in
//! chunks: for each it fills a descriptor in guest memory and writes `0x06 << 24 | PFN` to
//! the notify port, PFN being the descriptor's page frame number. The descriptor
//! (little-endian, ABI in docs/arrow-vmm.md "Core dumps"):
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | magic u32 | `0x45524f43` ("CORE") |
//! | 4 | version u32 | 1 |
//! | 8 | pid u32 | the dumping process (guest PID) |
//! | 12 | signal u32 | the signal that dumped core |
//! | 16 | offset u64 | of this chunk in the core file |
//! | 24 | total u64 | size of the whole core file |
//! | 32 | data u64 | guest-physical address of the chunk |
//! | 40 | len u32 | bytes at `data` (at most [`MAX_CHUNK`]) |
//! | 44 | flags u32 | 1 FIRST, 2 LAST, 4 TRUNCATED (the guest hit its size limit) |
//! | 48 | status u32 | written by the VMM: 0 taken, else [`Status`]: stop sending this core |
//!
//! Everything in it is guest input: the collector checks the magic, the sequence (one
//! core at a time, chunks in order), every size against the host's cap and every address
//! against guest memory; a bad chunk drops the core being assembled, never the VMM. The
//! collector runs on the vCPU thread that took the port write; finished cores go over a
//! bounded channel to the event-loop thread ([`CoreWriter`]), which writes
//! `<dir>/core.<pid>` (temp file + rename), because vCPU threads may not open files
//! (seccomp).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

pub const MAGIC: u32 = 0x4552_4f43;
pub const VERSION: u32 = 1;
pub const FLAG_FIRST: u32 = 1;
pub const FLAG_LAST: u32 = 2;
pub const FLAG_TRUNCATED: u32 = 4;
/// Largest chunk accepted (the guest sends 64 KiB).
pub const MAX_CHUNK: u32 = 1 << 20;
/// Size of the descriptor.
pub const DESC_LEN: usize = 56;
const STATUS_OFFSET: u64 = 48;
/// Default cap on one core file.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// At most this many core files per VM run; later cores are refused.
pub const MAX_FILES: u32 = 16;

/// Why a chunk was refused (the value written to the descriptor's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Taken = 0,
    /// Bad magic or version.
    BadDescriptor = 1,
    /// Not the next chunk of the core being assembled.
    BadSequence = 2,
    /// Larger than the host's cap (or a chunk over [`MAX_CHUNK`]).
    TooLarge = 3,
    /// The data address is outside guest memory.
    BadAddress = 4,
    /// Too many cores this run, or the writer is gone.
    Refused = 5,
}

/// Where cores go and how large they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreDumpConfig {
    /// Directory for `core.<pid>` (the instance's run directory under arrowd).
    pub dir: PathBuf,
    /// Cap per core file; the guest is told the same cap (`arrow.core=`).
    pub max_bytes: u64,
}

/// The kernel parameter that turns core dumps to the VMM on in the guest.
pub fn kernel_param(cfg: &CoreDumpConfig) -> String {
    format!("arrow.core={}", cfg.max_bytes)
}

/// A decoded descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub pid: u32,
    pub signal: u32,
    pub offset: u64,
    pub total: u64,
    pub data: u64,
    pub len: u32,
    pub flags: u32,
}

impl Chunk {
    /// Decodes a descriptor; `None` if the magic or version is wrong.
    pub fn decode(b: &[u8; DESC_LEN]) -> Option<Self> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        if u32_at(0) != MAGIC || u32_at(4) != VERSION {
            return None;
        }
        Some(Chunk {
            pid: u32_at(8),
            signal: u32_at(12),
            offset: u64_at(16),
            total: u64_at(24),
            data: u64_at(32),
            len: u32_at(40),
            flags: u32_at(44),
        })
    }
}

/// A core as received.
#[derive(Debug)]
pub struct FinishedCore {
    pub pid: u32,
    pub signal: u32,
    pub data: Vec<u8>,
    /// The guest stopped early (its size limit or memory): gdb may still read the notes.
    pub truncated: bool,
}

struct Assembly {
    pid: u32,
    signal: u32,
    total: u64,
    data: Vec<u8>,
}

/// The vCPU-side half: checks chunks and assembles cores.
pub struct CoreCollector {
    mem: GuestMemoryMmap,
    max_bytes: u64,
    current: Option<Assembly>,
    sent: u32,
    tx: SyncSender<FinishedCore>,
    wake: EventFd,
}

/// The event-loop half: writes finished cores.
pub struct CoreWriter {
    dir: PathBuf,
    rx: Receiver<FinishedCore>,
    wake: EventFd,
    written: Vec<PathBuf>,
}

/// A connected collector and writer.
pub fn channel(
    cfg: &CoreDumpConfig,
    mem: GuestMemoryMmap,
) -> std::io::Result<(CoreCollector, CoreWriter)> {
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    // A few whole cores may wait for the writer; the guest is told to stop beyond that.
    let (tx, rx) = mpsc::sync_channel(4);
    Ok((
        CoreCollector {
            mem,
            max_bytes: cfg.max_bytes,
            current: None,
            sent: 0,
            tx,
            wake: wake.try_clone()?,
        },
        CoreWriter {
            dir: cfg.dir.clone(),
            rx,
            wake,
            written: Vec::new(),
        },
    ))
}

impl CoreCollector {
    /// Handles CORE_CHUNK with the descriptor at page frame `pfn`; writes the status back.
    pub fn on_chunk(&mut self, pfn: u32) {
        let desc = GuestAddress(u64::from(pfn) << 12);
        let mut raw = [0u8; DESC_LEN];
        if self.mem.read_slice(&mut raw, desc).is_err() {
            crate::limited_warn!(
                pfn,
                "core dump: descriptor outside guest memory; chunk ignored"
            );
            self.current = None;
            return;
        }
        let status = self.take(&raw);
        if status != Status::Taken {
            self.current = None;
        }
        let at = desc.0 + STATUS_OFFSET;
        if self
            .mem
            .write_obj((status as u32).to_le(), GuestAddress(at))
            .is_err()
        {
            crate::limited_warn!(pfn, "core dump: cannot write the descriptor status");
        }
    }

    fn take(&mut self, raw: &[u8; DESC_LEN]) -> Status {
        let Some(c) = Chunk::decode(raw) else {
            crate::limited_warn!("core dump: descriptor with bad magic or version refused");
            return Status::BadDescriptor;
        };
        if c.flags & FLAG_FIRST != 0 {
            if self.current.is_some() {
                crate::limited_warn!("core dump: a new core starts before the last one ended; dropping the unfinished one");
            }
            if self.sent >= MAX_FILES {
                crate::limited_warn!(
                    pid = c.pid,
                    "core dump: {MAX_FILES} cores this run already; refused"
                );
                return Status::Refused;
            }
            if c.offset != 0 {
                return Status::BadSequence;
            }
            if c.total > self.max_bytes {
                crate::limited_warn!(
                    pid = c.pid,
                    total = c.total,
                    max = self.max_bytes,
                    "core dump larger than the cap; refused"
                );
                return Status::TooLarge;
            }
            self.current = Some(Assembly {
                pid: c.pid,
                signal: c.signal,
                total: c.total,
                // `total` is capped by max_bytes above.
                data: Vec::with_capacity(c.total as usize),
            });
        }
        let Some(a) = self.current.as_mut() else {
            return Status::BadSequence;
        };
        if c.pid != a.pid || c.total != a.total || c.offset != a.data.len() as u64 {
            crate::limited_warn!(
                pid = c.pid,
                offset = c.offset,
                "core dump: chunk out of sequence; core dropped"
            );
            return Status::BadSequence;
        }
        if c.len > MAX_CHUNK || c.offset + u64::from(c.len) > a.total {
            return Status::TooLarge;
        }
        let start = a.data.len();
        a.data.resize(start + c.len as usize, 0);
        let ok = c.data.checked_add(u64::from(c.len)).is_some()
            && self
                .mem
                .read_slice(&mut a.data[start..], GuestAddress(c.data))
                .is_ok();
        if !ok {
            crate::limited_warn!(
                pid = c.pid,
                data = c.data,
                len = c.len,
                "core dump: chunk outside guest memory; core dropped"
            );
            return Status::BadAddress;
        }
        if c.flags & FLAG_LAST != 0 {
            let Some(a) = self.current.take() else {
                return Status::BadSequence;
            };
            if a.data.len() as u64 != a.total {
                return Status::BadSequence;
            }
            let total = a.total;
            let core = FinishedCore {
                pid: a.pid,
                signal: a.signal,
                data: a.data,
                truncated: c.flags & FLAG_TRUNCATED != 0,
            };
            match self.tx.try_send(core) {
                Ok(()) => {
                    self.sent += 1;
                    let _ = self.wake.write(1);
                    tracing::info!(
                        pid = c.pid,
                        signal = c.signal,
                        bytes = total,
                        "core dump received"
                    );
                }
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    crate::limited_warn!(
                        pid = c.pid,
                        "core dump: writer busy or gone; core dropped"
                    );
                    return Status::Refused;
                }
            }
        }
        Status::Taken
    }
}

impl CoreWriter {
    /// Writes every core received so far.
    pub fn drain(&mut self) {
        while let Ok(core) = self.rx.try_recv() {
            match write_core(&self.dir, &core) {
                Ok(path) => {
                    tracing::info!(
                        path = %path.display(),
                        pid = core.pid,
                        signal = core.signal,
                        bytes = core.data.len(),
                        truncated = core.truncated,
                        "core dump written"
                    );
                    self.written.push(path);
                }
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "cannot write core dump")
                }
            }
        }
    }

    /// Core files written so far.
    pub fn written(&self) -> &[PathBuf] {
        &self.written
    }
}

/// `core.<pid>`, or `core.<pid>.<n>` if taken (a PID reused after a restart).
fn write_core(dir: &Path, core: &FinishedCore) -> std::io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let mut path = dir.join(format!("core.{}", core.pid));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("core.{}.{n}", core.pid));
        n += 1;
    }
    let tmp = dir.join(format!(".core.{}.tmp", core.pid));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&core.data)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

impl MutEventSubscriber for CoreWriter {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the core dump channel");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.wake.read();
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: u64 = 0x10_000;
    const DATA: u64 = 0x20_000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(c: &Chunk) -> [u8; DESC_LEN] {
        let mut b = [0u8; DESC_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&c.pid.to_le_bytes());
        b[12..16].copy_from_slice(&c.signal.to_le_bytes());
        b[16..24].copy_from_slice(&c.offset.to_le_bytes());
        b[24..32].copy_from_slice(&c.total.to_le_bytes());
        b[32..40].copy_from_slice(&c.data.to_le_bytes());
        b[40..44].copy_from_slice(&c.len.to_le_bytes());
        b[44..48].copy_from_slice(&c.flags.to_le_bytes());
        b[48..52].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        b
    }

    /// Puts the descriptor and data in guest memory, sends the event, returns the status.
    fn send(col: &mut CoreCollector, c: &Chunk, data: &[u8]) -> u32 {
        col.mem.write_slice(&desc(c), GuestAddress(DESC)).unwrap();
        if c.data == DATA {
            col.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        }
        col.on_chunk((DESC >> 12) as u32);
        u32::from_le(
            col.mem
                .read_obj(GuestAddress(DESC + STATUS_OFFSET))
                .unwrap(),
        )
    }

    fn setup(max: u64) -> (tempfile::TempDir, CoreCollector, CoreWriter) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CoreDumpConfig {
            dir: dir.path().to_owned(),
            max_bytes: max,
        };
        let (c, w) = channel(&cfg, mem()).unwrap();
        (dir, c, w)
    }

    fn chunk(offset: u64, total: u64, len: u32, flags: u32) -> Chunk {
        Chunk {
            pid: 7,
            signal: 11,
            offset,
            total,
            data: DATA,
            len,
            flags,
        }
    }

    #[test]
    fn assembles_chunks_into_core_file() {
        let (dir, mut col, mut w) = setup(1 << 20);
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(
            send(&mut col, &chunk(0, 10_000, 4096, FLAG_FIRST), &body[..4096]),
            0
        );
        assert_eq!(
            send(&mut col, &chunk(4096, 10_000, 4096, 0), &body[4096..8192]),
            0
        );
        assert_eq!(
            send(
                &mut col,
                &chunk(8192, 10_000, 1808, FLAG_LAST),
                &body[8192..]
            ),
            0
        );
        w.drain();
        assert_eq!(w.written(), &[dir.path().join("core.7")]);
        assert_eq!(fs::read(dir.path().join("core.7")).unwrap(), body);
        // The same PID again (a second core): another name.
        assert_eq!(
            send(&mut col, &chunk(0, 3, 3, FLAG_FIRST | FLAG_LAST), b"abc"),
            0
        );
        w.drain();
        assert_eq!(fs::read(dir.path().join("core.7.1")).unwrap(), b"abc");
    }

    #[test]
    fn hostile_descriptors_are_refused_and_nothing_is_written() {
        let (dir, mut col, mut w) = setup(8192);
        // Over the cap.
        assert_eq!(
            send(&mut col, &chunk(0, 8193, 100, FLAG_FIRST), &[0; 100]),
            Status::TooLarge as u32
        );
        // Without FIRST.
        assert_eq!(
            send(&mut col, &chunk(0, 10, 10, FLAG_LAST), &[0; 10]),
            Status::BadSequence as u32
        );
        // A gap, then a chunk longer than the total.
        assert_eq!(send(&mut col, &chunk(0, 100, 10, FLAG_FIRST), &[0; 10]), 0);
        assert_eq!(
            send(&mut col, &chunk(20, 100, 10, 0), &[0; 10]),
            Status::BadSequence as u32
        );
        assert_eq!(send(&mut col, &chunk(0, 100, 10, FLAG_FIRST), &[0; 10]), 0);
        assert_eq!(
            send(&mut col, &chunk(10, 100, 200, 0), &[0; 200]),
            Status::TooLarge as u32
        );
        // Data outside guest memory, or wrapping around.
        let mut c = chunk(0, 100, 100, FLAG_FIRST);
        c.data = (1 << 20) - 50;
        assert_eq!(send(&mut col, &c, &[]), Status::BadAddress as u32);
        c.data = u64::MAX - 10;
        assert_eq!(send(&mut col, &c, &[]), Status::BadAddress as u32);
        // LAST before the total arrived.
        assert_eq!(
            send(
                &mut col,
                &chunk(0, 100, 10, FLAG_FIRST | FLAG_LAST),
                &[0; 10]
            ),
            Status::BadSequence as u32
        );
        // Bad magic.
        col.mem
            .write_slice(&[0u8; DESC_LEN], GuestAddress(DESC))
            .unwrap();
        col.on_chunk((DESC >> 12) as u32);
        let st: u32 = col
            .mem
            .read_obj(GuestAddress(DESC + STATUS_OFFSET))
            .unwrap();
        assert_eq!(st, Status::BadDescriptor as u32);
        // A descriptor page outside guest memory: ignored, no panic.
        col.on_chunk(0xff_ffff);
        w.drain();
        assert!(w.written().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn at_most_max_files_cores_per_run() {
        let (_dir, mut col, mut w) = setup(1 << 20);
        for i in 0..MAX_FILES {
            assert_eq!(
                send(&mut col, &chunk(0, 1, 1, FLAG_FIRST | FLAG_LAST), b"x"),
                0,
                "{i}"
            );
            w.drain();
        }
        assert_eq!(
            send(&mut col, &chunk(0, 1, 1, FLAG_FIRST | FLAG_LAST), b"x"),
            Status::Refused as u32
        );
    }
}
