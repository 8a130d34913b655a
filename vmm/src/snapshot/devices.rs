//! Device state in a snapshot.

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use crate::devices::virtio::mmio::MmioTransportState;
use crate::devices::virtio::vsock::VsockState;

/// A serde mirror of vm-superio's `SerialState`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for SerialSnapshot {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The vsock device with its transport.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VsockSnapshot {
    pub transport: MmioTransportState,
    pub device: VsockState,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceStates {
    pub serial: SerialSnapshot,
    /// Clone generation the notify device reports (0 = booted fresh).
    pub generation: u32,
    pub vsock: Option<VsockSnapshot>,
}
