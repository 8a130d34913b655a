//! Device models: legacy port-I/O devices and virtio devices.

pub mod app_channel;
pub mod bus;
pub mod console_log;
pub mod coredump;
pub mod legacy;
pub mod notify;
pub mod virtio;
pub mod warn_limit;
