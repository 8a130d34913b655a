//! Device models: legacy port-I/O devices and virtio devices.

pub mod bus;
pub mod virtio;
