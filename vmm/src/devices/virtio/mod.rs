//! Virtio devices and the virtio-mmio transport that presents them to the guest.
//!
//! Split of responsibilities:
//! - [`mmio::MmioTransport`] is the register file the guest driver programs
//!   (features, status, queue addresses). It runs on vCPU threads, through the
//!   MMIO [`Bus`](super::bus::Bus).
//! - A [`VirtioDevice`] is the device model. When the driver sets DRIVER_OK the
//!   transport hands it the configured queues ([`VirtioDevice::activate`]); from
//!   then on the device works the queues on the event-loop thread and raises
//!   interrupts through the shared [`IrqTrigger`].

pub mod fs;
pub mod mem;
pub mod mmio;
pub mod pmem;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

/// Virtio device IDs (virtio 1.x, section 5).
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_MEM: u32 = 24;
pub const TYPE_PMEM: u32 = 27;

/// Feature bits common to all devices.
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 0x01;
    pub const DRIVER: u32 = 0x02;
    pub const DRIVER_OK: u32 = 0x04;
    pub const FEATURES_OK: u32 = 0x08;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits of the virtio-mmio InterruptStatus register.
pub const INT_VRING: u32 = 0x1;
pub const INT_CONFIG: u32 = 0x2;

/// Size of one virtio-mmio device window on the bus.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Answers a driver's read of `data.len()` bytes at `offset` of a config
/// space whose bytes are `cfg`: what lies outside it reads as zeros.
pub fn read_config_bytes(cfg: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = cfg.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Kernel command-line fragment that announces a virtio-mmio device at `base`
/// with interrupt line `irq` (Linux `virtio_mmio.device=` syntax).
pub fn cmdline_fragment(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Errors a device reports when the driver asks it to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("device is already active")]
    AlreadyActive,
    #[error("the driver did not accept the required feature {0}")]
    MissingFeature(&'static str),
    #[error("cannot signal the event loop: {0}")]
    Signal(std::io::Error),
    #[error("the device's backend refused the queues: {0}")]
    Backend(String),
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus register
/// plus the eventfd that the VMM registers with `KVM_IRQFD`.
///
/// Shared (in an `Arc`) between the transport, which reads and acknowledges the
/// status on vCPU threads, and the device, which raises it on the event loop.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets `bit` (INT_VRING / INT_CONFIG) and injects the interrupt.
    pub fn trigger(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("virtio: cannot write irq eventfd: {e}");
        }
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest acknowledged the bits in `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd to register with `KVM_IRQFD`.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }
}

/// What the transport hands a device when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    /// Features acknowledged by the driver (a subset of the device's).
    pub acked_features: u64,
    /// One configured queue per entry of [`VirtioDevice::queue_max_sizes`].
    pub queues: Vec<Queue>,
    pub irq: std::sync::Arc<IrqTrigger>,
}

/// A virtio device model behind a transport.
///
/// Every method is called with the device's mutex held, on a vCPU thread;
/// long work belongs on the event loop (signal it through an eventfd).
pub trait VirtioDevice: Send {
    /// Virtio device ID (e.g. [`TYPE_VSOCK`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Eventfds signalled when the driver notifies a queue, one per queue,
    /// in queue order. The transport signals them on QueueNotify writes; the
    /// VMM may register them with `KVM_IOEVENTFD` instead.
    fn queue_evts(&self) -> &[EventFd];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the queues the driver configured.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device and forgets the queues (driver wrote status 0).
    fn reset(&mut self);
    /// The queues of an active device *with the device's ring positions*
    /// (`next_avail` / `next_used`), for snapshots; `None` while inactive.
    /// The transport's own register copies do not track ring positions.
    fn active_queues(&self) -> Option<Vec<QueueConfig>>;
    /// Returns true once after the device configuration changed behind the
    /// driver's back (e.g. a restored vsock device got a new CID); the
    /// transport then bumps ConfigGeneration and raises a config interrupt.
    fn take_config_changed(&mut self) -> bool {
        false
    }
}

/// Serializable mirror of virtio-queue's [`QueueState`] (which has no serde
/// support), for snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl From<QueueState> for QueueConfig {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }
}

impl From<QueueConfig> for QueueState {
    fn from(c: QueueConfig) -> Self {
        Self {
            max_size: c.max_size,
            size: c.size,
            ready: c.ready,
            desc_table: c.desc_table,
            avail_ring: c.avail_ring,
            used_ring: c.used_ring,
            next_avail: c.next_avail,
            next_used: c.next_used,
            event_idx_enabled: c.event_idx_enabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_fragment_format() {
        assert_eq!(
            cmdline_fragment(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }

    #[test]
    fn irq_trigger_sets_and_acks() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(INT_VRING);
        irq.trigger(INT_CONFIG);
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.evt().read().unwrap(), 2);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
    }

    #[test]
    fn queue_config_roundtrip() {
        let q = <Queue as virtio_queue::QueueT>::new(256).unwrap();
        let c = QueueConfig::from(q.state());
        assert_eq!(QueueState::from(c), q.state());
    }
}
