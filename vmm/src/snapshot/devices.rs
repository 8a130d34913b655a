//! Device state in a snapshot.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use crate::device_manager::MmioSlot;
use crate::devices::virtio::fs::FsState;
use crate::devices::virtio::mem::MemState;
use crate::devices::virtio::mmio::MmioTransportState;
use crate::devices::virtio::pmem::PmemState;
use crate::devices::virtio::vsock::VsockState;

/// vm-superio's `SerialState` has no serde support: this remote definition
/// (same fields) lets serde read and write it directly.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// The vsock device with its transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VsockSnapshot {
    /// Snapshots from before slots were recorded had vsock in the first.
    #[serde(default = "MmioSlot::first")]
    pub slot: MmioSlot,
    pub transport: MmioTransportState,
    pub device: VsockState,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceStates {
    #[serde(with = "SerialStateDef")]
    pub serial: SerialState,
    /// Clone generation the notify device reports (0 = booted fresh).
    pub generation: u32,
    /// The app-injection ABI the guest reported at the generic-template
    /// wait point (KERNEL_READY); None = not a generic template.
    #[serde(default)]
    pub kernel_ready_abi: Option<u32>,
    /// The device manager's devices (kept at this level of the JSON, where
    /// `vsock` has always been).
    #[serde(flatten)]
    pub virtio: VirtioStates,
}

/// The virtio devices, as the device manager saves and restores them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VirtioStates {
    #[serde(default)]
    pub vsock: Option<VsockSnapshot>,
    /// In attach order (the guest's /dev/pmem numbering).
    #[serde(default)]
    pub pmem: Vec<PmemSnapshot>,
    /// The virtio-mem device: plugged blocks and requested size.
    #[serde(default)]
    pub mem: Option<MemSnapshot>,
    /// vhost-user-fs devices (with `--fs` or `--fs-slots`), in attach order.
    #[serde(default)]
    pub fs: Vec<FsSnapshot>,
}

/// A vhost-user-fs device with its transport. `connected`: it had a
/// backend when the snapshot was taken (a restore must give it one); a
/// slot (`--fs-slots`) had none.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FsSnapshot {
    pub slot: MmioSlot,
    pub transport: MmioTransportState,
    pub device: FsState,
    pub connected: bool,
}

/// A pmem device with its transport; restore maps the same file at the
/// same guest address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PmemSnapshot {
    pub slot: MmioSlot,
    pub transport: MmioTransportState,
    pub device: PmemState,
}

/// The virtio-mem device with its transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemSnapshot {
    pub slot: MmioSlot,
    pub transport: MmioTransportState,
    pub device: MemState,
}
