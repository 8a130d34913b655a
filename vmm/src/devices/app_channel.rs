//! The app channel: how a clone of a generic template gets its app.
//!
//! Port I/O at 0x0AE8 (8 bytes), next to the notify device:
//! - `inl(0x0AE8)`: length of the app description waiting for the guest,
//!   0 while there is none (the guest polls at its wait point);
//! - `outl(pfn, 0x0AE8)`: the guest gives the page frame number of a
//!   physically contiguous buffer of at least that length; arrow-vmm copies
//!   the description there (bounds-checked against guest memory) during the
//!   exit, and the channel is empty again;
//! - `inl(0x0AEC)`: the injection ABI version this VMM speaks.
//!
//! The description's format is in `crate::app_spec`. A buffer outside guest
//! memory is the guest's fault: its VM stops with a VMM error.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::bus::BusDevice;
use crate::app_spec::APP_ABI_VERSION;
use crate::exit::StopReason;
use crate::lifecycle::Lifecycle;
use crate::GuestMemoryMmap;

pub const APP_CHANNEL_PORT: u16 = 0x0ae8;
pub const APP_CHANNEL_LEN: u64 = 8;

pub struct AppChannel {
    mem: GuestMemoryMmap,
    lifecycle: Arc<Lifecycle>,
    /// The encoded description, until the guest took it.
    pending: Option<Vec<u8>>,
}

impl AppChannel {
    pub fn new(mem: GuestMemoryMmap, lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            mem,
            lifecycle,
            pending: None,
        }
    }

    /// Offers an encoded description to the guest.
    pub fn offer(&mut self, encoded: Vec<u8>) {
        self.pending = Some(encoded);
    }

    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    fn deliver(&mut self, pfn: u32) {
        let Some(spec) = self.pending.take() else {
            tracing::debug!(pfn, "app channel: buffer given but nothing to deliver");
            return;
        };
        let gpa = u64::from(pfn) << 12;
        match self.mem.write_slice(&spec, GuestAddress(gpa)) {
            Ok(()) => tracing::info!(bytes = spec.len(), gpa, "app description delivered"),
            Err(e) => self.lifecycle.request_stop(StopReason::VmmError(format!(
                "the guest gave the app channel a buffer at {gpa:#x} for {} bytes outside its memory: {e}",
                spec.len()
            ))),
        }
    }
}

impl BusDevice for AppChannel {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.pending.as_ref().map_or(0, |p| p.len() as u32),
            4 => APP_ABI_VERSION,
            _ => 0,
        };
        match data.len() {
            4 => data.copy_from_slice(&value.to_le_bytes()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(b) if offset == 0 => self.deliver(u32::from_le_bytes(b)),
            _ => tracing::debug!(offset, len = data.len(), "app channel: ignored write"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn rig() -> (AppChannel, GuestMemoryMmap, Arc<Lifecycle>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let lc = Arc::new(Lifecycle::new(Instant::now()).unwrap());
        (AppChannel::new(mem.clone(), lc.clone()), mem, lc)
    }

    fn inl(c: &mut AppChannel, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn delivers_once_into_the_guest_buffer() {
        let (mut c, mem, lc) = rig();
        assert_eq!(inl(&mut c, 0), 0, "nothing waiting");
        assert_eq!(inl(&mut c, 4), APP_ABI_VERSION);
        c.offer(b"hello".to_vec());
        assert_eq!(inl(&mut c, 0), 5);
        c.write(0, &0x10u32.to_le_bytes());
        let mut got = [0u8; 5];
        mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(inl(&mut c, 0), 0, "taken");
        assert!(!lc.stopping());
        // A second buffer without an offer changes nothing.
        c.write(0, &0x20u32.to_le_bytes());
        assert!(!lc.stopping());
    }

    #[test]
    fn a_buffer_outside_guest_memory_stops_only_this_vm() {
        let (mut c, _, lc) = rig();
        c.offer(vec![1; 64]);
        c.write(0, &0xffff_ffffu32.to_le_bytes());
        assert!(lc.stopping());
        let (mut c, _, lc) = rig();
        c.offer(vec![1; 8192]);
        // Starts in guest memory, ends past it.
        c.write(0, &0xffu32.to_le_bytes());
        assert!(lc.stopping());
        // Odd-sized accesses are ignored.
        let (mut c, _, lc) = rig();
        c.offer(vec![1; 4]);
        c.write(0, &[1, 2]);
        assert!(!lc.stopping());
        assert_eq!(inl(&mut c, 0), 4);
    }
}
