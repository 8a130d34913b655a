//! vhost-user-fs device (virtio 1.2, 5.11, device id 26): a host directory
//! served to the guest by a separate backend process (virtiofsd) over a
//! vhost-user socket. The guest mounts it with `mount -t virtiofs TAG DIR`.
//!
//! - Config space: `u8 tag[36]; le32 num_request_queues` (= 1). Queues:
//!   0 = hiprio, 1 = the request queue.
//! - The VMM never reads the queues: on DRIVER_OK ([`VirtioDevice::activate`])
//!   it hands the rings and guest memory to the backend ([`backend`]).
//!   Kicks: each queue's notify eventfd (KVM's ioeventfd on QueueNotify) is
//!   the vring's kick fd, so guest notifications go from KVM straight to the
//!   backend. Calls: the backend signals a per-queue eventfd that the event
//!   loop reads ([`event_handler`]); it sets the VRING bit of InterruptStatus
//!   and raises the interrupt (Linux's virtio-mmio driver reads
//!   InterruptStatus, so an irqfd alone would not do).
//! - Guest RAM must be shared memory ([`crate::shared_memory`]). With a
//!   virtio-mem region, the backend's memory table follows what is plugged
//!   ([`VhostUserFs`] is a [`MemTableListener`] of the shared memory).
//! - A backend that hangs up stops the VM with the reason
//!   ("vhost-user-fs TAG: backend SOCKET closed the connection", exit 125).
//! - Slots (`--fs-slots`): devices without a backend. The guest probes and
//!   activates them at boot; nothing is sent anywhere until a clone of the
//!   snapshot connects a backend ([`VhostUserFs::connect`]) — the rings the
//!   guest configured come from the snapshot.
//! - Snapshots ([`FsState`]): the tag; the transport records the rings. A
//!   device with a connected backend is saved with its ring positions read
//!   from the used ring (requests in flight in the backend at snapshot time
//!   are not recorded: snapshot an idle VM).

pub mod backend;
pub mod event_handler;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::limited_warn as warn;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, ActivateError, IrqTrigger, QueueConfig, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_VERSION_1,
};
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;
use crate::shared_memory::{MemTableListener, SharedMemory};
use crate::GuestMemoryMmap;
pub use backend::{Backend, BackendError, VringSetup};

/// Virtio device ID of a file system device.
pub const TYPE_FS: u32 = 26;
/// Length of the tag field of the config space.
pub const TAG_LEN: usize = 36;
/// At most this many file system devices per VM (`--fs` plus `--fs-slots`).
pub const MAX_FS_DEVICES: usize = 8;
/// hiprio + one request queue.
pub const NUM_QUEUES: usize = 2;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;

/// Features shown to the guest: what virtiofsd implements and what our
/// transport can carry. A slot has no backend to ask, so the set is fixed;
/// a backend that lacks one the guest acked is refused when it connects.
pub const GUEST_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_F_RING_EVENT_IDX);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("invalid virtio-fs tag {0:?}: use 1 to 36 characters of A-Z a-z 0-9 _ -")]
    BadTag(String),
    #[error("vhost-user-fs {tag}: {source}")]
    Backend { tag: String, source: BackendError },
    #[error("vhost-user-fs {0}: already has a backend")]
    AlreadyConnected(String),
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Checks a virtio-fs tag: 1..=36 bytes of `[A-Za-z0-9_-]`.
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    let ok = !tag.is_empty()
        && tag.len() <= TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FsError::BadTag(tag.to_string()))
    }
}

/// What a snapshot records of a file system device (the transport records
/// the rings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    pub tag: String,
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    irq: Arc<IrqTrigger>,
    acked_features: u64,
    /// The backend has the rings.
    started: bool,
}

/// The device model.
pub struct VhostUserFs {
    tag: String,
    backend: Option<Backend>,
    shared: Option<Arc<SharedMemory>>,
    /// Queue notify eventfds (KVM ioeventfds) = the vrings' kick fds.
    kick_evts: [EventFd; NUM_QUEUES],
    /// Signalled by the backend when it used buffers.
    pub(crate) call_evts: [EventFd; NUM_QUEUES],
    /// Signalled when a backend is connected after the event loop started
    /// (a clone's slot): the loop then watches its socket.
    pub(crate) connected_evt: EventFd,
    lifecycle: Arc<Lifecycle>,
    active: Option<Active>,
    /// Interrupts raised for the backend's used buffers (tests, logs).
    pub(crate) interrupts: u64,
}

fn evts() -> Result<[EventFd; NUM_QUEUES], FsError> {
    Ok([
        EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
        EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
    ])
}

impl VhostUserFs {
    /// A device with tag `tag` and no backend yet (a slot, or a device
    /// [`Self::connect`]ed before the guest runs).
    pub fn new(tag: &str, lifecycle: Arc<Lifecycle>) -> Result<Self, FsError> {
        validate_tag(tag)?;
        Ok(Self {
            tag: tag.to_string(),
            backend: None,
            shared: None,
            kick_evts: evts()?,
            call_evts: evts()?,
            connected_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)?,
            lifecycle,
            active: None,
            interrupts: 0,
        })
    }

    /// Rebuilds a device from a snapshot (without backend).
    pub fn restore(state: &FsState, lifecycle: Arc<Lifecycle>) -> Result<Self, FsError> {
        Self::new(&state.tag, lifecycle)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn state(&self) -> FsState {
        FsState {
            tag: self.tag.clone(),
        }
    }

    pub fn has_backend(&self) -> bool {
        self.backend.is_some()
    }

    /// The backend's socket, while connected.
    pub fn socket(&self) -> Option<&Path> {
        self.backend.as_ref().map(|b| b.socket())
    }

    /// Connects the backend listening on `socket`; guest RAM is `shared`.
    /// If the guest already activated the device (a clone's slot), the
    /// backend gets the rings at once.
    pub fn connect(&mut self, socket: &Path, shared: Arc<SharedMemory>) -> Result<(), FsError> {
        if self.backend.is_some() {
            return Err(FsError::AlreadyConnected(self.tag.clone()));
        }
        let tag = self.tag.clone();
        let err = |source| FsError::Backend { tag, source };
        let backend = Backend::connect(socket, NUM_QUEUES).map_err(err)?;
        info!(tag = %self.tag, socket = %socket.display(), features = backend.features(), "vhost-user-fs backend connected");
        self.backend = Some(backend);
        self.shared = Some(shared);
        if self.active.is_some() {
            self.start_backend().map_err(|source| FsError::Backend {
                tag: self.tag.clone(),
                source,
            })?;
        }
        // Wake the event loop (if running) to watch the socket.
        self.connected_evt.write(1).map_err(FsError::EventFd)?;
        Ok(())
    }

    /// Hands the active rings to the backend.
    fn start_backend(&mut self) -> Result<(), BackendError> {
        let (Some(act), Some(backend), Some(shared)) = (
            self.active.as_mut(),
            self.backend.as_mut(),
            self.shared.as_ref(),
        ) else {
            return Ok(());
        };
        if act.started {
            return Ok(());
        }
        let vrings: Vec<VringSetup> = act
            .queues
            .iter()
            .map(|q| VringSetup {
                max_size: q.max_size(),
                size: q.size(),
                desc_table: q.desc_table(),
                avail_ring: q.avail_ring(),
                used_ring: q.used_ring(),
                next_avail: q.next_avail(),
            })
            .collect();
        backend.start(
            act.acked_features,
            &act.mem,
            shared,
            &vrings,
            &self.kick_evts,
            &self.call_evts,
        )?;
        act.started = true;
        debug!(tag = %self.tag, "vhost-user-fs: backend has the rings");
        Ok(())
    }

    /// Brings the backend's memory table up to date with the shared hotplug
    /// slots, once the backend has one (before, [`Backend::start`] sends
    /// the current table).
    pub fn sync_memory(&mut self) -> Result<(), FsError> {
        let started = self.active.as_ref().is_some_and(|a| a.started);
        let (Some(backend), Some(shared), true) =
            (self.backend.as_mut(), self.shared.as_ref(), started)
        else {
            return Ok(());
        };
        backend
            .sync_memory(shared)
            .map_err(|source| FsError::Backend {
                tag: self.tag.clone(),
                source,
            })
    }

    /// The hotplug slots in the backend's memory table (tests).
    pub fn announced_memory(&self) -> Vec<crate::shared_memory::SharedRegion> {
        self.backend
            .as_ref()
            .map(|b| b.announced().to_vec())
            .unwrap_or_default()
    }

    /// The backend used buffers on queue `index`: tell the guest.
    pub(crate) fn signal_used(&mut self, index: usize) {
        let Some(evt) = self.call_evts.get(index) else {
            return;
        };
        // EAGAIN is a spurious wakeup.
        if evt.read().is_ok() {
            if let Some(act) = &self.active {
                act.irq.trigger(super::INT_VRING);
                self.interrupts += 1;
            }
        }
    }

    /// The backend closed the connection: the volume is gone, stop the VM. arrowd reads
    /// the tag back from this reason for virtiofsd it re-adopted after a restart
    /// (arrow-service/src/supervisor/volumes.rs, `backend_gone_tag`): keep its shape.
    pub(crate) fn backend_gone(&mut self) {
        let socket = self
            .socket()
            .map_or_else(|| "?".to_string(), |p| p.display().to_string());
        let msg = format!(
            "vhost-user-fs {}: backend {socket} closed the connection (did virtiofsd exit?)",
            self.tag
        );
        tracing::error!("{msg}");
        self.backend = None;
        self.lifecycle.request_stop(StopReason::VmmError(msg));
    }

    /// The connection's descriptor, while connected.
    pub(crate) fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend.as_ref().map(|b| b.raw_fd())
    }
}

impl MemTableListener for std::sync::Mutex<VhostUserFs> {
    fn mem_table_changed(&self) -> Result<(), String> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync_memory()
            .map_err(|e| e.to_string())
    }
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        match &self.backend {
            Some(b) => GUEST_FEATURES & (b.features() | (1 << VIRTIO_F_VERSION_1)),
            None => GUEST_FEATURES,
        }
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.kick_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut cfg = [0u8; TAG_LEN + 4];
        cfg[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        super::read_config_bytes(&cfg, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!(tag = %self.tag, "vhost-user-fs: guest wrote read-only config at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: ctx.queues.len(),
            });
        }
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            irq: ctx.irq,
            acked_features: ctx.acked_features,
            started: false,
        });
        if let Err(e) = self.start_backend() {
            // The guest would wait for its volume forever: stop with why.
            let msg = format!("vhost-user-fs {}: cannot start the backend: {e}", self.tag);
            tracing::error!("{msg}");
            self.lifecycle.request_stop(StopReason::VmmError(msg));
            self.active = None;
            return Err(ActivateError::Backend(e.to_string()));
        }
        debug!(tag = %self.tag, backend = self.backend.is_some(), "vhost-user-fs: activated");
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(act) = self.active.take() {
            if act.started {
                if let Some(b) = self.backend.as_mut() {
                    b.stop(NUM_QUEUES);
                }
            }
        }
    }

    fn active_queues(&self) -> Option<Vec<QueueConfig>> {
        let act = self.active.as_ref()?;
        Some(
            act.queues
                .iter()
                .map(|q| {
                    let mut c = QueueConfig::from(q.state());
                    if act.started {
                        // The backend moved the rings: with no request in
                        // flight, everything made available was used.
                        if let Ok(used) = q.used_idx(&act.mem, std::sync::atomic::Ordering::Acquire)
                        {
                            c.next_used = used.0;
                            c.next_avail = used.0;
                        }
                    }
                    c
                })
                .collect(),
        )
    }
}

/// `TAG=SOCKET` of `--fs` and of `PUT /vm/start`'s `"fs"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    pub tag: String,
    pub socket: PathBuf,
}

impl std::str::FromStr for FsConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid --fs '{s}': expected TAG=SOCKET, e.g. vol0=/run/arrow/vol0.sock (TAG: 1 to 36 characters of A-Z a-z 0-9 _ -)")
        };
        let (tag, socket) = s.split_once('=').ok_or_else(bad)?;
        if socket.is_empty() || validate_tag(tag).is_err() {
            return Err(bad());
        }
        Ok(Self {
            tag: tag.to_string(),
            socket: PathBuf::from(socket),
        })
    }
}

/// Checks a list of `--fs`: at most [`MAX_FS_DEVICES`] (with `slots`
/// slots), tags unique.
pub fn validate_configs(fs: &[FsConfig], slots: usize) -> Result<(), String> {
    if fs.len() + slots > MAX_FS_DEVICES {
        return Err(format!(
            "{} file system devices (--fs and --fs-slots) asked: at most {MAX_FS_DEVICES}",
            fs.len() + slots
        ));
    }
    for (i, f) in fs.iter().enumerate() {
        validate_tag(&f.tag).map_err(|e| e.to_string())?;
        if fs[..i].iter().any(|o| o.tag == f.tag) {
            return Err(format!(
                "--fs tag {} given twice: tags must be unique",
                f.tag
            ));
        }
        if slots > 0 && slot_index(&f.tag).is_some_and(|n| n < slots) {
            return Err(format!(
                "--fs tag {} is also a slot's tag (--fs-slots uses vol0..vol{})",
                f.tag,
                slots - 1
            ));
        }
    }
    Ok(())
}

/// The tag of slot `i`.
pub fn slot_tag(i: usize) -> String {
    format!("vol{i}")
}

fn slot_index(tag: &str) -> Option<usize> {
    tag.strip_prefix("vol")?.parse().ok()
}
