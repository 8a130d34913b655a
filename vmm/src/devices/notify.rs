//! The Arrow notify device: the guest reports app lifecycle events with a
//! 32-bit `outl` to port 0x0AE0 (ABI in DESIGN.md). Bits 31..24 are the event,
//! bits 23..0 the payload.

use std::sync::Arc;

use super::bus::BusDevice;
use super::coredump::CoreCollector;
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;

/// The I/O port of the notify device.
pub const NOTIFY_PORT: u16 = 0x0ae0;
/// It answers 8 bytes of port space: writes at +0; reads at +0 (clone
/// generation) and +4 (clone nonce).
pub const NOTIFY_LEN: u64 = 8;

pub const EVENT_APP_STARTED: u8 = 0x01;
pub const EVENT_APP_READY: u8 = 0x02;
pub const EVENT_APP_EXITED: u8 = 0x03;
pub const EVENT_GUEST_PANIC: u8 = 0x04;
/// A chunk of an app core dump; payload = page frame of its descriptor (see `coredump`).
pub const EVENT_CORE_CHUNK: u8 = 0x06;
/// Generic-template wait point: the kernel is ready and waits for an app on
/// the app channel; the payload is the injection ABI version it speaks.
pub const EVENT_KERNEL_READY: u8 = 0x05;

/// A decoded notify event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyEvent {
    AppStarted,
    AppReady { port: u32 },
    AppExited { status: u8, signal: bool },
    GuestPanic,
    CoreChunk { pfn: u32 },
    KernelReady { abi: u32 },
    Unknown { event: u8, payload: u32 },
}

impl NotifyEvent {
    /// Decodes the 32-bit value the guest wrote.
    pub fn decode(value: u32) -> Self {
        let event = (value >> 24) as u8;
        let payload = value & 0x00ff_ffff;
        match event {
            EVENT_APP_STARTED => NotifyEvent::AppStarted,
            EVENT_APP_READY => NotifyEvent::AppReady { port: payload },
            EVENT_APP_EXITED => NotifyEvent::AppExited {
                status: (payload & 0xff) as u8,
                signal: payload & 0x100 != 0,
            },
            EVENT_GUEST_PANIC => NotifyEvent::GuestPanic,
            EVENT_CORE_CHUNK => NotifyEvent::CoreChunk { pfn: payload },
            EVENT_KERNEL_READY => NotifyEvent::KernelReady { abi: payload },
            event => NotifyEvent::Unknown { event, payload },
        }
    }
}

/// The device model; it acts on the VM's lifecycle.
///
/// Host → guest: a 32-bit read at +0 returns the clone generation (0 for a
/// VM that booted, incremented by every restore as a clone), at +4 a random
/// nonce that differs between clones (0 before the first clone). A guest that
/// sees either change knows it was cloned: it should reseed its randomness
/// and drop state tied to its identity.
pub struct NotifyDevice {
    lifecycle: Arc<Lifecycle>,
    generation: u32,
    nonce: u32,
    /// Set when core dumps are enabled for this VM (`--core-dir`).
    cores: Option<CoreCollector>,
    /// The injection ABI the guest reported with KERNEL_READY (kept in
    /// snapshots: it tells whether a template can take an app).
    kernel_ready_abi: Option<u32>,
}

impl NotifyDevice {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            lifecycle,
            generation: 0,
            nonce: 0,
            cores: None,
            kernel_ready_abi: None,
        }
    }

    /// Accepts core dumps (CORE_CHUNK events) into `collector`.
    pub fn with_core_dumps(mut self, collector: CoreCollector) -> Self {
        self.cores = Some(collector);
        self
    }

    /// A device for a restored VM.
    pub fn restored(
        lifecycle: Arc<Lifecycle>,
        generation: u32,
        nonce: u32,
        kernel_ready_abi: Option<u32>,
    ) -> Self {
        Self {
            lifecycle,
            generation,
            nonce,
            cores: None,
            kernel_ready_abi,
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn kernel_ready_abi(&self) -> Option<u32> {
        self.kernel_ready_abi
    }

    fn handle(&mut self, event: NotifyEvent) {
        match event {
            NotifyEvent::AppStarted => {
                let t = self.lifecycle.mark_app_started();
                tracing::info!(
                    ms = t.as_millis() as u64,
                    "APP_STARTED: kernel is about to exec the app"
                );
            }
            NotifyEvent::AppReady { port } => {
                let t = self.lifecycle.mark_app_ready(port);
                tracing::info!(ms = t.as_millis() as u64, port, "APP_READY");
            }
            NotifyEvent::AppExited { status, signal } => {
                tracing::info!(status, signal, "APP_EXITED");
                self.lifecycle
                    .request_stop(StopReason::AppExited { status, signal });
            }
            NotifyEvent::GuestPanic => {
                crate::limited_warn!("GUEST_PANIC: the guest kernel panicked");
                self.lifecycle.request_stop(StopReason::GuestPanic);
            }
            NotifyEvent::CoreChunk { pfn } => match self.cores.as_mut() {
                Some(c) => c.on_chunk(pfn),
                // The guest was not told to send cores (no arrow.core=), or it is a
                // clone of one that was: the status stays non-zero and it stops.
                None => tracing::debug!(pfn, "core dump chunk ignored: core dumps are off"),
            },
            NotifyEvent::KernelReady { abi } => {
                let t = self.lifecycle.mark_kernel_ready(abi);
                self.kernel_ready_abi = Some(abi);
                tracing::info!(
                    ms = t.as_millis() as u64,
                    abi,
                    "KERNEL_READY: the kernel waits for an app (generic template)"
                );
            }
            NotifyEvent::Unknown { event, payload } => {
                tracing::debug!(event, payload, "unknown notify event ignored");
            }
        }
    }
}

impl BusDevice for NotifyDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.generation,
            4 => self.nonce,
            _ => 0,
        };
        match data.len() {
            4 => data.copy_from_slice(&value.to_le_bytes()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset == 0 => self.handle(NotifyEvent::decode(u32::from_le_bytes(bytes))),
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "notify device: ignored write that is not a 32-bit outl to its base"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn decodes_the_abi() {
        assert_eq!(NotifyEvent::decode(0x0100_0000), NotifyEvent::AppStarted);
        assert_eq!(
            NotifyEvent::decode(0x0200_1388),
            NotifyEvent::AppReady { port: 5000 }
        );
        assert_eq!(
            NotifyEvent::decode(0x0300_0003),
            NotifyEvent::AppExited {
                status: 3,
                signal: false
            }
        );
        assert_eq!(
            NotifyEvent::decode(0x0300_0109),
            NotifyEvent::AppExited {
                status: 9,
                signal: true
            }
        );
        assert_eq!(NotifyEvent::decode(0x0400_0000), NotifyEvent::GuestPanic);
        assert_eq!(
            NotifyEvent::decode(0x0500_0001),
            NotifyEvent::KernelReady { abi: 1 }
        );
        assert_eq!(
            NotifyEvent::decode(0x7f00_0001),
            NotifyEvent::Unknown {
                event: 0x7f,
                payload: 1
            }
        );
    }

    #[test]
    fn reads_report_clone_generation_and_nonce() {
        let l = Arc::new(Lifecycle::new(Instant::now()).unwrap());
        let mut d = NotifyDevice::restored(l, 2, 0xabcd, None);
        let mut b = [0u8; 4];
        d.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 2);
        d.read(4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xabcd);
        let mut one = [9u8; 1];
        d.read(0, &mut one);
        assert_eq!(one, [0]);
    }

    #[test]
    fn exit_event_stops_the_vm_and_odd_writes_are_ignored() {
        let l = Arc::new(Lifecycle::new(Instant::now()).unwrap());
        let mut d = NotifyDevice::new(l.clone());
        d.write(0, &[0, 0, 0, 1]);
        assert!(l.app_started().is_some());
        d.write(0, &[3, 0]);
        d.write(1, &[3, 0, 0, 3]);
        d.write(0, &[0, 0, 0, 0x7e]);
        assert!(!l.stopping());
        d.write(0, &0x0300_0109u32.to_le_bytes());
        assert_eq!(
            l.reason(),
            Some(StopReason::AppExited {
                status: 9,
                signal: true
            })
        );
    }
}
