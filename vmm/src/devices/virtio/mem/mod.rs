//! virtio-mem device (virtio 1.2, 5.15): memory hotplug. The device owns a
//! region of guest-physical address space above RAM (outside the e820 map);
//! the host sets a *requested size*, the guest driver plugs or unplugs
//! [`BLOCK_SIZE`] blocks of the region to reach it, one request at a time
//! on the single guest queue.
//!
//! Split:
//! - [`request`]: the wire format and the bounds checks of every field;
//! - [`blocks`]: the plugged-block bitmap (saved in snapshots);
//! - [`backend`]: KVM slots and giving unplugged memory back to the host;
//! - this file: the device model (config space, request semantics, state);
//! - [`event_handler`]: the queue eventfd on the event loop.
//!
//! Request semantics (the driver's view):
//! - PLUG: ERROR for a range outside the region, unaligned, empty, or with
//!   a block already plugged; NACK when it would exceed the requested size
//!   or the host cannot provide the memory; else ACK.
//! - UNPLUG: ERROR for a bad range or one with an unplugged block; BUSY if
//!   the host could not discard the memory (the driver retries); else ACK.
//! - UNPLUG_ALL: ACK once every block is unplugged (BUSY as above).
//! - STATE: PLUGGED / UNPLUGGED / MIXED for a valid range, else ERROR.
//!
//! The device offers `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE` and refuses to
//! start without it: unplugged slots are removed from the guest, which a
//! driver that reads unplugged memory (allowed without the feature) would
//! not survive.

pub mod backend;
pub mod blocks;
pub mod event_handler;
pub mod request;

#[cfg(test)]
mod tests;

use crate::limited_warn as warn;
use serde::{Deserialize, Serialize};
use tracing::debug;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, ActivateError, IrqTrigger, QueueConfig, VirtioDevice, INT_VRING, TYPE_MEM,
    VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;
pub use backend::{BackendError, HotplugMemory, MemoryBackend, SlotControl};
use blocks::BlockBitmap;
use request::{
    BlockRange, Geometry, RawRequest, RawResponse, Request, RESP_ACK, RESP_BUSY, RESP_ERROR,
    RESP_NACK, STATE_MIXED, STATE_PLUGGED, STATE_UNPLUGGED,
};

/// Plug/unplug granularity.
pub const BLOCK_SIZE: u64 = 2 << 20;
/// Alignment of the region's start and size (Linux's x86-64 memory block).
pub const REGION_ALIGN: u64 = 128 << 20;
/// Feature: the driver must not read unplugged memory.
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u32 = 1;
const QUEUE_SIZE: u16 = 128;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Size of `struct virtio_mem_config`.
pub const CONFIG_SIZE: usize = 56;

/// Errors from creating or restoring the device.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("the hotplug region at {addr:#x} of {size:#x} bytes must be a non-empty multiple of {REGION_ALIGN:#x} bytes at an address aligned to it")]
    Geometry { addr: u64, size: u64 },
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("saved virtio-mem state is inconsistent: {0}")]
    BadState(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A requested size the device cannot take (the API answers 400 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("requested hotplug memory {requested_mib} MiB: {reason}; allowed: 0 to {max_mib} MiB in steps of {step_mib} MiB")]
pub struct RequestedSizeError {
    pub requested_mib: u64,
    pub max_mib: u64,
    pub step_mib: u64,
    pub reason: &'static str,
}

/// What the control API shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemStatus {
    pub region_addr: u64,
    pub region_size: u64,
    pub block_size: u64,
    pub plugged_size: u64,
    pub requested_size: u64,
    /// The driver has started the device.
    pub driver_active: bool,
    /// Bytes of the region resident in host memory.
    pub host_resident: Option<u64>,
}

/// Device state for snapshots: the plugged blocks and the requested size.
/// `queues` (with ring positions) is informational: the transport's
/// snapshot carries them and re-activates the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemState {
    pub addr: u64,
    pub region_size: u64,
    pub block_size: u64,
    pub requested_size: u64,
    pub plugged: BlockBitmap,
    pub acked_features: Option<u64>,
    pub queues: Vec<QueueConfig>,
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: std::sync::Arc<IrqTrigger>,
    acked_features: u64,
}

impl MemState {
    /// Guest ranges (address, size) of the unplugged blocks: zero by
    /// definition, a snapshot need not read them.
    pub fn unplugged_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = 0u64;
        let block = self.block_size;
        for run in self.plugged.plugged_runs() {
            if run.first > next {
                out.push((self.addr + next * block, (run.first - next) * block));
            }
            next = run.first + run.count;
        }
        if next < self.plugged.len() {
            out.push((
                self.addr + next * block,
                (self.plugged.len() - next) * block,
            ));
        }
        out
    }
}

/// The virtio-mem device model.
pub struct VirtioMem {
    addr: u64,
    region_size: u64,
    requested: u64,
    blocks: BlockBitmap,
    backend: Box<dyn MemoryBackend>,
    queue_evts: Vec<EventFd>,
    active: Option<Active>,
}

fn check_geometry(addr: u64, size: u64) -> Result<(), MemError> {
    if size == 0 || !addr.is_multiple_of(REGION_ALIGN) || !size.is_multiple_of(REGION_ALIGN) {
        return Err(MemError::Geometry { addr, size });
    }
    Ok(())
}

impl VirtioMem {
    /// A device for the region `[addr, addr + region_size)`, all unplugged,
    /// requested size 0.
    pub fn new(
        addr: u64,
        region_size: u64,
        backend: Box<dyn MemoryBackend>,
    ) -> Result<Self, MemError> {
        check_geometry(addr, region_size)?;
        Ok(Self {
            addr,
            region_size,
            requested: 0,
            blocks: BlockBitmap::new(region_size / BLOCK_SIZE),
            backend,
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).map_err(MemError::EventFd)?],
            active: None,
        })
    }

    /// Recreates the device from a snapshot. `backend` maps the restored
    /// region; the slots of plugged blocks are registered again. The
    /// transport's restore re-activates the device with the saved queue.
    pub fn restore(
        state: &MemState,
        mut backend: Box<dyn MemoryBackend>,
    ) -> Result<Self, MemError> {
        check_geometry(state.addr, state.region_size)?;
        let bad = |s: String| Err(MemError::BadState(s));
        if state.block_size != BLOCK_SIZE {
            return bad(format!("block size {:#x}", state.block_size));
        }
        if state.plugged.len() != state.region_size / BLOCK_SIZE || !state.plugged.is_valid() {
            return bad("plugged-block bitmap does not match the region".into());
        }
        if state.requested_size > state.region_size
            || !state.requested_size.is_multiple_of(BLOCK_SIZE)
        {
            return bad(format!("requested size {:#x}", state.requested_size));
        }
        for run in state.plugged.plugged_runs() {
            backend.plug(run.first * BLOCK_SIZE, run.count * BLOCK_SIZE)?;
        }
        let mut dev = Self::new(state.addr, state.region_size, backend)?;
        dev.blocks = state.plugged.clone();
        dev.requested = state.requested_size;
        Ok(dev)
    }

    pub fn state(&self) -> MemState {
        MemState {
            addr: self.addr,
            region_size: self.region_size,
            block_size: BLOCK_SIZE,
            requested_size: self.requested,
            plugged: self.blocks.clone(),
            acked_features: self.active.as_ref().map(|a| a.acked_features),
            queues: self.active_queues().unwrap_or_default(),
        }
    }

    pub fn status(&self) -> MemStatus {
        MemStatus {
            region_addr: self.addr,
            region_size: self.region_size,
            block_size: BLOCK_SIZE,
            plugged_size: self.plugged_size(),
            requested_size: self.requested,
            driver_active: self.active.is_some(),
            host_resident: self.backend.resident_bytes(),
        }
    }

    /// Guest memory became `shared` with vhost-user backends (a pooled
    /// clone's RAM converted at start): plugged slots are shared from now on.
    pub fn set_shared(
        &mut self,
        shared: std::sync::Arc<crate::shared_memory::SharedMemory>,
    ) -> Result<(), MemError> {
        Ok(self.backend.set_shared(shared)?)
    }

    /// The driver has started the device (DRIVER_OK).
    pub fn driver_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn plugged_size(&self) -> u64 {
        self.blocks.plugged() * BLOCK_SIZE
    }

    /// Sets the size the driver should plug. Returns whether it changed:
    /// the caller then signals a configuration change through the transport.
    pub fn set_requested(&mut self, bytes: u64) -> Result<bool, RequestedSizeError> {
        let err = |reason| RequestedSizeError {
            requested_mib: bytes >> 20,
            max_mib: self.region_size >> 20,
            step_mib: BLOCK_SIZE >> 20,
            reason,
        };
        if bytes > self.region_size {
            return Err(err("more than the hotplug region"));
        }
        if !bytes.is_multiple_of(BLOCK_SIZE) {
            return Err(err("not a multiple of the block size"));
        }
        let changed = bytes != self.requested;
        if changed {
            debug!(
                from = self.requested >> 20,
                to = bytes >> 20,
                "virtio-mem: requested size (MiB)"
            );
        }
        self.requested = bytes;
        Ok(changed)
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            addr: self.addr,
            block_size: BLOCK_SIZE,
            usable_size: self.region_size,
        }
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        // block_size, node_id (0) + padding, addr, region_size,
        // usable_region_size (the whole region), plugged_size, requested_size.
        let fields = [
            (0, BLOCK_SIZE),
            (16, self.addr),
            (24, self.region_size),
            (32, self.region_size),
            (40, self.plugged_size()),
            (48, self.requested),
        ];
        for (off, v) in fields {
            c[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        c
    }

    /// Answers one request; the device's state changes only on ACK.
    fn handle(&mut self, raw: &RawRequest) -> RawResponse {
        let req = match self.geometry().decode(raw) {
            Ok(r) => r,
            Err(e) => {
                warn!("virtio-mem: bad request: {e}");
                return RawResponse::new(RESP_ERROR);
            }
        };
        let bytes = |r: BlockRange| (r.first * BLOCK_SIZE, r.count * BLOCK_SIZE);
        match req {
            Request::Plug(r) => {
                if self.blocks.plugged_in(r) != 0 {
                    warn!("virtio-mem: PLUG of blocks already plugged ({r:?})");
                    return RawResponse::new(RESP_ERROR);
                }
                let (off, len) = bytes(r);
                if self.plugged_size() + len > self.requested {
                    return RawResponse::new(RESP_NACK);
                }
                if let Err(e) = self.backend.plug(off, len) {
                    warn!("virtio-mem: PLUG refused: {e}");
                    return RawResponse::new(RESP_NACK);
                }
                self.blocks.set(r, true);
                RawResponse::new(RESP_ACK)
            }
            Request::Unplug(r) => {
                if self.blocks.plugged_in(r) != r.count {
                    warn!("virtio-mem: UNPLUG of blocks not plugged ({r:?})");
                    return RawResponse::new(RESP_ERROR);
                }
                self.unplug(r)
            }
            Request::UnplugAll => {
                for r in self.blocks.plugged_runs() {
                    let resp = self.unplug(r);
                    if resp.resp_type != RESP_ACK {
                        return resp;
                    }
                }
                RawResponse::new(RESP_ACK)
            }
            Request::State(r) => {
                let n = self.blocks.plugged_in(r);
                RawResponse::state(match n {
                    0 => STATE_UNPLUGGED,
                    n if n == r.count => STATE_PLUGGED,
                    _ => STATE_MIXED,
                })
            }
        }
    }

    fn unplug(&mut self, r: BlockRange) -> RawResponse {
        match self
            .backend
            .unplug(r.first * BLOCK_SIZE, r.count * BLOCK_SIZE)
        {
            Ok(()) => {
                self.blocks.set(r, false);
                RawResponse::new(RESP_ACK)
            }
            Err(e) => {
                warn!("virtio-mem: UNPLUG failed, driver will retry: {e}");
                RawResponse::new(RESP_BUSY)
            }
        }
    }

    /// Reads one request from `chain`, answers it in its writable part and
    /// returns the number of bytes written. A chain without room for the
    /// answer is returned untouched and its request is not carried out.
    fn process_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let mut writer = match chain.clone().writer(mem) {
            Ok(w) if w.available_bytes() >= request::RESPONSE_SIZE => w,
            _ => {
                warn!("virtio-mem: request without room for a response; ignored");
                return 0;
            }
        };
        let raw = chain
            .reader(mem)
            .ok()
            .and_then(|mut r| r.read_obj::<RawRequest>().ok());
        let resp = match raw {
            Some(raw) => self.handle(&raw),
            None => {
                warn!(
                    "virtio-mem: request shorter than {} bytes",
                    request::REQUEST_SIZE
                );
                RawResponse::new(RESP_ERROR)
            }
        };
        match writer.write_obj(resp) {
            Ok(()) => request::RESPONSE_SIZE as u32,
            Err(e) => {
                warn!("virtio-mem: cannot write the response: {e}");
                0
            }
        }
    }

    /// Works every available request (event loop).
    pub fn process_queue(&mut self) {
        let Some(mut act) = self.active.take() else {
            return;
        };
        let mem = act.mem.clone();
        let mut used = false;
        loop {
            let mut popped = 0usize;
            while let Some(chain) = act.queue.pop_descriptor_chain(&mem) {
                popped += 1;
                let head = chain.head_index();
                let len = self.process_chain(&mem, chain);
                if let Err(e) = act.queue.add_used(&mem, head, len) {
                    warn!("virtio-mem: used ring: {e}");
                }
                used = true;
            }
            match act.queue.enable_notification(&mem) {
                Ok(true) if popped > 0 => continue,
                // The avail index claims more entries than the ring holds:
                // nothing can be popped, and retrying would spin forever.
                Ok(true) => {
                    warn!("virtio-mem: avail ring is inconsistent");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!("virtio-mem: queue: {e}");
                    break;
                }
            }
        }
        if used {
            match act.queue.needs_notification(&mem) {
                Ok(true) => act.irq.trigger(INT_VRING),
                Ok(false) => {}
                Err(e) => warn!("virtio-mem: queue: {e}"),
            }
        }
        self.active = Some(act);
    }
}

impl VirtioDevice for VirtioMem {
    fn device_type(&self) -> u32 {
        TYPE_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE)
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(data.len()) {
            Some(end) if end <= c.len() => data.copy_from_slice(&c[start..end]),
            _ => {
                warn!("virtio-mem: config read out of bounds at {offset:#x}");
                data.fill(0);
            }
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        warn!("virtio-mem: driver wrote read-only config at {offset:#x}; ignored");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.acked_features & (1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) == 0 {
            return Err(ActivateError::MissingFeature(
                "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
            ));
        }
        let got = ctx.queues.len();
        let Some(queue) = ctx.queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.active = Some(Active {
            mem: ctx.mem,
            queue,
            irq: ctx.irq,
            acked_features: ctx.acked_features,
        });
        // Requests the driver queued before the eventfd was watched.
        self.queue_evts[0].write(1).map_err(ActivateError::Signal)?;
        Ok(())
    }

    fn reset(&mut self) {
        // Blocks stay as they are: a new driver starts with UNPLUG_ALL.
        self.active = None;
    }

    fn active_queues(&self) -> Option<Vec<QueueConfig>> {
        self.active
            .as_ref()
            .map(|a| vec![QueueConfig::from(a.queue.state())])
    }
}
