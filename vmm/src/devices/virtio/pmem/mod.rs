//! virtio-pmem device (virtio 1.2, 5.19): a host file mapped into guest
//! physical memory above RAM, which the guest drives as an NVDIMM region
//! (`/dev/pmem<N>`, DAX-capable).
//!
//! - The file is mapped `MAP_SHARED` ([`mapping`]): read-only for an image
//!   base (KVM slot flagged read-only too; the host's page cache pages are
//!   shared by every VM mapping the file), read-write for a persistent
//!   upper layer.
//! - Config space: `le64 start; le64 size` (guest-physical window).
//! - One request queue; the only request is FLUSH, answered after `fsync`
//!   of the file ([`request`]); requests are worked on the event loop
//!   ([`event_handler`]).
//! - Snapshots record the file, mode and window so that a restored VM (or a
//!   clone) maps the same file at the same address ([`PmemState`]).
//!
//! Wiring is the device manager's (`crate::device_manager`): it picks the
//! guest window, registers the KVM memory slot and the transport.

pub mod event_handler;
pub mod mapping;
pub mod request;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::limited_warn as warn;
use serde::{Deserialize, Serialize};
use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, ActivateError, IrqTrigger, QueueConfig, VirtioDevice, TYPE_PMEM,
    VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;
pub use mapping::{PmemMapping, REGION_ALIGN};

const QUEUE_SIZE: u16 = 64;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];

/// Errors from creating or restoring a pmem device.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("cannot open pmem file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pmem file {0} is empty: a pmem device needs a non-empty file (an image base, or an upper layer made with `shadowfs`)")]
    Empty(PathBuf),
    #[error("pmem file {0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("pmem file {path} is too large ({len} bytes)")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("cannot map pmem file {path}: {source}")]
    Map {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pmem file {path} is {now} bytes but was {then} when the snapshot was taken: the guest would see another disk; restore with the file the snapshot was taken with")]
    SizeChanged { path: PathBuf, now: u64, then: u64 },
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("image base {path} is {len} bytes; the template's image slot holds at most {window}: build a template with a larger slot")]
    TooLargeForWindow {
        path: PathBuf,
        len: u64,
        window: u64,
    },
    #[error("pmem device {0} is writable: only a read-only image slot takes another image")]
    NotReadOnly(PathBuf),
}

/// What a snapshot records of a pmem device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmemState {
    pub path: PathBuf,
    pub read_only: bool,
    /// Size of the file when the snapshot was taken.
    pub file_len: u64,
    /// Guest-physical window: start and size (a multiple of 2 MiB).
    pub guest_addr: u64,
    pub region_size: u64,
    pub flushes: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<IrqTrigger>,
}

/// The device model.
pub struct Pmem {
    path: PathBuf,
    read_only: bool,
    file: File,
    file_len: u64,
    mapping: PmemMapping,
    /// Guest-physical start of the window (set by the device manager before
    /// the guest can read the config).
    guest_addr: u64,
    queue_evts: [EventFd; 1],
    active: Option<Active>,
    /// FLUSH requests answered (for the log and tests).
    flushes: u64,
}

impl Pmem {
    /// Opens and maps `path`; the window is the file rounded up to 2 MiB.
    pub fn new(path: impl AsRef<Path>, read_only: bool) -> Result<Self, PmemError> {
        Self::open(path.as_ref(), read_only, None)
    }

    /// Opens `path` and checks it is a non-empty regular file; returns it
    /// with its length.
    fn open_file(path: &Path, read_only: bool) -> Result<(File, u64), PmemError> {
        let path = path.to_path_buf();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
            .map_err(|source| PmemError::Open {
                path: path.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| PmemError::Open {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(PmemError::NotAFile(path));
        }
        let file_len = meta.len();
        if file_len == 0 {
            return Err(PmemError::Empty(path));
        }
        Ok((file, file_len))
    }

    /// [`Self::new`] with a window of `window` bytes (an image slot larger
    /// than its file), or the file rounded up to 2 MiB.
    fn open(path: &Path, read_only: bool, window: Option<u64>) -> Result<Self, PmemError> {
        let (file, file_len) = Self::open_file(path, read_only)?;
        let path = path.to_path_buf();
        let region_size = mapping::align_up(file_len, REGION_ALIGN)
            .map(|r| window.map_or(r, |w| w.max(r)))
            .filter(|&s| s <= 1 << 46)
            .ok_or_else(|| PmemError::TooLarge {
                path: path.clone(),
                len: file_len,
            })?;
        let mapping =
            PmemMapping::new(&file, file_len, region_size, read_only).map_err(|source| {
                PmemError::Map {
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(Self {
            path,
            read_only,
            file,
            file_len,
            mapping,
            guest_addr: 0,
            queue_evts: [EventFd::new(libc::EFD_NONBLOCK).map_err(PmemError::EventFd)?],
            active: None,
            flushes: 0,
        })
    }

    /// Reopens the file of a snapshot, which must still have its size.
    pub fn restore(state: &PmemState) -> Result<Self, PmemError> {
        // The window may be larger than the file (an image slot).
        let window = Some(state.region_size).filter(|&w| w >= state.file_len);
        let mut dev = Self::open(&state.path, state.read_only, window)?;
        if dev.file_len != state.file_len || dev.region_size() != state.region_size {
            return Err(PmemError::SizeChanged {
                path: state.path.clone(),
                now: dev.file_len,
                then: state.file_len,
            });
        }
        dev.guest_addr = state.guest_addr;
        Ok(dev)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maps another file (an image base) into this read-only device's
    /// window in place of the current one, before the guest reads it: the
    /// generic template's image slot. The window does not change; the rest
    /// of it after the file reads as zeros.
    pub fn replace_file(&mut self, path: &Path) -> Result<(), PmemError> {
        if !self.read_only {
            return Err(PmemError::NotReadOnly(self.path.clone()));
        }
        let (file, file_len) = Self::open_file(path, true)?;
        let window = self.region_size();
        if file_len > window {
            return Err(PmemError::TooLargeForWindow {
                path: path.to_path_buf(),
                len: file_len,
                window,
            });
        }
        self.mapping
            .replace_read_only(&file, file_len)
            .map_err(|source| PmemError::Map {
                path: path.to_path_buf(),
                source,
            })?;
        self.path = path.to_path_buf();
        self.file = file;
        self.file_len = file_len;
        Ok(())
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size of the guest window (the file rounded up to 2 MiB).
    pub fn region_size(&self) -> u64 {
        self.mapping.size()
    }

    pub fn mapping(&self) -> &PmemMapping {
        &self.mapping
    }

    pub fn guest_addr(&self) -> u64 {
        self.guest_addr
    }

    /// Places the window in guest-physical memory (before the guest runs).
    pub fn set_guest_addr(&mut self, addr: u64) {
        self.guest_addr = addr;
    }

    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    pub fn state(&self) -> PmemState {
        PmemState {
            path: self.path.clone(),
            read_only: self.read_only,
            file_len: self.file_len,
            guest_addr: self.guest_addr,
            region_size: self.region_size(),
            flushes: self.flushes,
        }
    }

    /// Makes the guest's writes durable: fsync of a writable file; nothing
    /// to do for a read-only one.
    fn flush(&mut self) -> std::io::Result<()> {
        self.flushes += 1;
        if self.read_only {
            return Ok(());
        }
        self.file.sync_all()
    }

    /// Answers every request the guest made available.
    pub(crate) fn process_queue(&mut self) {
        let Some(mut act) = self.active.take() else {
            return;
        };
        let used = request::process(&act.mem, &mut act.queue, || self.flush());
        if used > 0 {
            match act.queue.needs_notification(&act.mem) {
                Ok(true) => act.irq.trigger(super::INT_VRING),
                Ok(false) => {}
                Err(e) => warn!("pmem: queue: {e}"),
            }
        }
        self.active = Some(act);
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        TYPE_PMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_pmem_config { le64 start; le64 size; }
        let mut cfg = [0u8; 16];
        cfg[..8].copy_from_slice(&self.guest_addr.to_le_bytes());
        cfg[8..].copy_from_slice(&self.region_size().to_le_bytes());
        super::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!("pmem: guest wrote read-only config at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = ctx.queues.len();
        let Some(queue) = ctx.queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            irq: ctx.irq,
        });
        // Requests made available before activation (or before a snapshot)
        // are answered on the next queue event; make sure there is one.
        self.queue_evts[0].write(1).map_err(ActivateError::Signal)?;
        debug!(path = %self.path.display(), "pmem: activated");
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn active_queues(&self) -> Option<Vec<QueueConfig>> {
        self.active
            .as_ref()
            .map(|a| vec![QueueConfig::from(a.queue.state())])
    }
}
