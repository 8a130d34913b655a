//! virtio-mmio transport, version 2 (virtio 1.x, section 4.2).
//!
//! One [`MmioTransport`] per device, registered on the MMIO bus with a
//! [`MMIO_WINDOW_SIZE`](super::MMIO_WINDOW_SIZE) window. It keeps the register
//! state the driver programs, validates feature negotiation and the status
//! sequence, and on DRIVER_OK hands validated queues to the device.
//!
//! What the VMM wires:
//! - `KVM_IRQFD`: [`MmioTransport::irq_evt`] on the device's GSI;
//! - `KVM_IOEVENTFD`: each of [`MmioTransport::queue_evts`] at
//!   `base + NOTIFY_OFFSET`, 4 bytes, datamatch = queue index. Without it the
//!   transport signals the same eventfd on a QueueNotify write.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::limited_warn as warn;
use serde::{Deserialize, Serialize};
use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    status, ActivateContext, ActivateError, IrqTrigger, QueueConfig, VirtioDevice, INT_CONFIG,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use crate::devices::bus::BusDevice;
use crate::GuestMemoryMmap;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// Arrow's vendor ID ("ARRW"); drivers do not match on it.
const VENDOR_ID: u32 = 0x5752_5241;

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify: where the VMM registers the ioeventfds.
pub const NOTIFY_OFFSET: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Errors from building a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("invalid queue size {0} offered by the device")]
    QueueSize(u16),
    #[error("snapshot is of device type {saved}, the device is type {actual}")]
    DeviceType { saved: u32, actual: u32 },
    #[error("snapshot has {saved} queues, the device has {actual}")]
    QueueCount { saved: usize, actual: usize },
    #[error("snapshot queue {index}: {reason}")]
    Queue { index: usize, reason: String },
    #[error("snapshot acknowledges features {acked:#x} the device does not offer ({offered:#x})")]
    Features { acked: u64, offered: u64 },
    #[error("snapshot status {0:#x} is not a state a driver can reach")]
    Status(u32),
    #[error("cannot re-activate the restored device: {0}")]
    Activate(#[from] ActivateError),
}

/// Register state of the transport, for snapshots.
///
/// Take it with the vCPUs paused (the device lock is taken inside, so the
/// ring positions are consistent with guest memory at that moment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// Virtio device ID, checked on restore.
    pub device_type: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_select: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    /// Queue registers as the driver programmed them. While DRIVER_OK is set
    /// they come from the active device and include its ring positions
    /// (`next_avail` / `next_used`), so a restore continues the rings.
    pub queues: Vec<QueueConfig>,
}

/// The virtio-mmio register file of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    device_type: u32,
    avail_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_select: u32,
    status: u32,
    config_generation: u32,
}

fn lock(dev: &Mutex<dyn VirtioDevice>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    // A poisoned lock means a panic elsewhere; the register state is still
    // the best we have and the VMM is going down anyway.
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_queues(max_sizes: &[u16]) -> Result<Vec<Queue>, MmioError> {
    max_sizes
        .iter()
        .map(|&m| Queue::new(m).map_err(|_| MmioError::QueueSize(m)))
        .collect()
}

impl MmioTransport {
    /// Wraps `device`; `mem` is the guest memory the queues live in.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (queues, queue_evts, device_type, avail_features) = {
            let d = lock(&device);
            let evts = d
                .queue_evts()
                .iter()
                .map(|e| e.try_clone())
                .collect::<Result<Vec<_>, _>>()
                .map_err(MmioError::EventFd)?;
            (
                new_queues(d.queue_max_sizes())?,
                evts,
                d.device_type(),
                d.avail_features(),
            )
        };
        Ok(Self {
            device,
            mem,
            irq: Arc::new(IrqTrigger::new().map_err(MmioError::EventFd)?),
            queue_evts,
            queues,
            device_type,
            avail_features,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// The eventfd to register with `KVM_IRQFD` for this device's GSI.
    pub fn irq_evt(&self) -> &EventFd {
        self.irq.evt()
    }

    /// Queue notification eventfds, in queue order, for `KVM_IOEVENTFD` at
    /// `base + NOTIFY_OFFSET` with datamatch = index (4 bytes).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// Tells the driver that the device configuration changed (e.g. a new
    /// guest CID after a clone).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.irq.trigger(INT_CONFIG);
    }

    /// Register state for snapshots (see [`MmioTransportState`]).
    pub fn state(&self) -> MmioTransportState {
        let live = if self.has(status::DRIVER_OK) {
            lock(&self.device).active_queues()
        } else {
            None
        };
        let queues = match live {
            Some(q) if q.len() == self.queues.len() => q,
            Some(q) => {
                warn!(
                    "virtio-mmio: device reports {} active queues, transport has {}",
                    q.len(),
                    self.queues.len()
                );
                self.queues.iter().map(|q| q.state().into()).collect()
            }
            None => self.queues.iter().map(|q| q.state().into()).collect(),
        };
        MmioTransportState {
            device_type: self.device_type,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.irq.status(),
            queues,
        }
    }

    /// Rebuilds a transport from a snapshot, around a device restored from
    /// the same snapshot (still inactive).
    ///
    /// - The register file (feature selectors, acked features, queue
    ///   select, status, config generation, queue registers) is as saved.
    /// - If the saved status has DRIVER_OK (and not DEVICE_NEEDS_RESET), the
    ///   device is activated with queues rebuilt from the saved
    ///   configuration *including ring positions*: descriptors the guest
    ///   made available before the snapshot and the device had not yet
    ///   consumed are consumed after restore; used-ring indices continue.
    /// - A saved InterruptStatus is re-raised (the irqfd eventfd is written;
    ///   KVM delivers an event pending at `KVM_IRQFD` registration), so an
    ///   interrupt in flight at snapshot time is not lost. At worst the
    ///   guest sees one spurious interrupt.
    /// - If the device reports a configuration change
    ///   ([`VirtioDevice::take_config_changed`], e.g. a new vsock CID), the
    ///   config generation is bumped and, with DRIVER_OK, a configuration
    ///   interrupt raised.
    ///
    /// Everything in `state` is validated against the device and guest
    /// memory; a snapshot that does not fit is an error, never a panic.
    pub fn restore(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        state: &MmioTransportState,
    ) -> Result<Self, MmioError> {
        let mut t = Self::new(mem, device)?;
        t.restore_state(state)?;
        Ok(t)
    }

    /// Puts a fresh transport (from [`MmioTransport::new`], its eventfds
    /// already registered with KVM) in the saved state, activating the
    /// device when the driver had. Guest memory must hold the snapshot's
    /// content by then: activation checks the rings in it.
    pub fn restore_state(&mut self, state: &MmioTransportState) -> Result<(), MmioError> {
        let t = self;
        if state.device_type != t.device_type {
            return Err(MmioError::DeviceType {
                saved: state.device_type,
                actual: t.device_type,
            });
        }
        if state.queues.len() != t.queues.len() {
            return Err(MmioError::QueueCount {
                saved: state.queues.len(),
                actual: t.queues.len(),
            });
        }
        if state.acked_features & !t.avail_features != 0 {
            return Err(MmioError::Features {
                acked: state.acked_features,
                offered: t.avail_features,
            });
        }
        let st = state.status;
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::DEVICE_NEEDS_RESET
            | status::FAILED;
        let needs = |bit: u32, pre: u32| st & bit == 0 || st & pre == pre;
        if st & !known != 0
            || !needs(status::DRIVER, status::ACKNOWLEDGE)
            || !needs(status::FEATURES_OK, status::DRIVER)
            || !needs(status::DRIVER_OK, status::FEATURES_OK)
        {
            return Err(MmioError::Status(st));
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (index, (saved, current)) in state.queues.iter().zip(&t.queues).enumerate() {
            if saved.max_size != current.max_size() {
                return Err(MmioError::Queue {
                    index,
                    reason: format!(
                        "max size {} but the device offers {}",
                        saved.max_size,
                        current.max_size()
                    ),
                });
            }
            let q = Queue::try_from(virtio_queue::QueueState::from(*saved)).map_err(|e| {
                MmioError::Queue {
                    index,
                    reason: e.to_string(),
                }
            })?;
            queues.push(q);
        }
        t.queues = queues;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.acked_features = state.acked_features;
        t.queue_select = state.queue_select;
        t.config_generation = state.config_generation;
        t.status = st;
        if st & status::DRIVER_OK != 0 && st & status::DEVICE_NEEDS_RESET == 0 {
            t.activate_restored()?;
        }
        let pending = state.interrupt_status & (super::INT_VRING | INT_CONFIG);
        if pending != 0 {
            t.irq.trigger(pending);
        }
        if lock(&t.device).take_config_changed() {
            t.config_generation = t.config_generation.wrapping_add(1);
            if t.has(status::DRIVER_OK) {
                t.irq.trigger(INT_CONFIG);
            }
        }
        debug!(
            "virtio-mmio: restored device type {} in status {:#x}",
            t.device_type, t.status
        );
        Ok(())
    }

    /// Hands the restored queues (with their ring positions) to the device.
    fn activate_restored(&mut self) -> Result<(), MmioError> {
        let event_idx = self.acked_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                return Err(MmioError::Queue {
                    index,
                    reason: "rings are not ready or not inside guest memory".into(),
                });
            }
            // The device writes the used index to memory with every used
            // entry, so a consistent snapshot has them equal. Otherwise the
            // guest has seen entries the restored device would write again:
            // it would find its used index moving backwards and stop using
            // the queue, a hang far from the cause.
            let in_memory = q
                .used_idx(&self.mem, std::sync::atomic::Ordering::Acquire)
                .map_err(|e| MmioError::Queue {
                    index,
                    reason: format!("cannot read the used ring index: {e}"),
                })?;
            if in_memory.0 != q.next_used() {
                return Err(MmioError::Queue {
                    index,
                    reason: format!(
                        "used ring index in guest memory is {} but the saved device state says {}: \
                         the snapshot is inconsistent, take it again",
                        in_memory.0,
                        q.next_used()
                    ),
                });
            }
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            let q = Queue::try_from(state).map_err(|e| MmioError::Queue {
                index,
                reason: e.to_string(),
            })?;
            queues.push(q);
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            acked_features: self.acked_features,
            queues,
            irq: self.irq.clone(),
        };
        lock(&self.device).activate(ctx)?;
        Ok(())
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        if !self.has(status::FEATURES_OK) || self.status & (status::DRIVER_OK | status::FAILED) != 0
        {
            warn!(
                "virtio-mmio: queue register written in status {:#x}",
                self.status
            );
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn reset(&mut self) {
        debug!("virtio-mmio: device reset");
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.status = 0;
        self.irq.clear();
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & !self.avail_features == 0
            && self.acked_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) -> bool {
        let event_idx = self.acked_features & (1 << VIRTIO_F_RING_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if !q.is_valid(&self.mem) {
                warn!("virtio-mmio: queue {i} invalid at DRIVER_OK");
                return false;
            }
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            match Queue::try_from(state) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    warn!("virtio-mmio: queue {i} rejected: {e}");
                    return false;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            acked_features: self.acked_features,
            queues,
            irq: self.irq.clone(),
        };
        match lock(&self.device).activate(ctx) {
            Ok(()) => true,
            Err(e) => {
                warn!("virtio-mmio: activation failed: {e}");
                false
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Besides reset, the driver only ever adds bits.
        if value & old != old {
            warn!("virtio-mmio: status {old:#x} -> {value:#x} clears bits; ignored");
            return;
        }
        let mut value = value;
        let added = value & !old;
        if added & status::FEATURES_OK != 0
            && (value & status::DRIVER == 0 || !self.features_acceptable())
        {
            // Leaving FEATURES_OK unset tells the driver we refuse the set.
            warn!("virtio-mmio: refusing features {:#x}", self.acked_features);
            value &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 {
            if value & status::FEATURES_OK == 0 {
                warn!("virtio-mmio: DRIVER_OK without FEATURES_OK");
                value &= !status::DRIVER_OK;
            } else if !self.activate() {
                value = (value & !status::DRIVER_OK) | status::DEVICE_NEEDS_RESET;
                self.status = value;
                self.irq.trigger(INT_CONFIG);
                return;
            }
        }
        self.status = value;
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            REG_QUEUE_NUM => self.selected_queue().map_or(0, |q| q.size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            REG_QUEUE_DESC_LOW => self.selected_queue().map_or(0, |q| q.desc_table() as u32),
            REG_QUEUE_DESC_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.desc_table() >> 32) as u32),
            REG_QUEUE_DRIVER_LOW => self.selected_queue().map_or(0, |q| q.avail_ring() as u32),
            REG_QUEUE_DRIVER_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.avail_ring() >> 32) as u32),
            REG_QUEUE_DEVICE_LOW => self.selected_queue().map_or(0, |q| q.used_ring() as u32),
            REG_QUEUE_DEVICE_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.used_ring() >> 32) as u32),
            REG_INTERRUPT_STATUS => self.irq.status(),
            REG_STATUS => self.status,
            // No shared memory regions: length -1 means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if !self.has(status::DRIVER) || self.has(status::FEATURES_OK) {
                    warn!("virtio-mmio: features written in status {:#x}", self.status);
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    // Only 64 feature bits exist; setting others is refused.
                    _ if v != 0 => warn!("virtio-mmio: unknown feature bits acked"),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_select = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue_mut() {
                    // Invalid sizes are logged and ignored by virtio-queue;
                    // is_valid() catches the rest at DRIVER_OK.
                    q.set_size(v as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue_mut() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            NOTIFY_OFFSET => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        warn!("virtio-mmio: cannot signal queue {v}: {e}");
                    }
                }
                None => warn!("virtio-mmio: notify for unknown queue {v}"),
            },
            REG_INTERRUPT_ACK => self.irq.ack(v),
            REG_STATUS => self.set_status(v),
            _ => debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue_mut() {
            f(q);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and naturally aligned (4.2.2.2).
        if data.len() != 4 || offset & 3 != 0 {
            warn!("virtio-mmio: bad register read {offset:#x}/{}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!("virtio-mmio: bad register write {offset:#x}/{}", data.len());
            return;
        };
        if offset & 3 != 0 {
            warn!("virtio-mmio: unaligned register write {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
