//! Address-keyed dispatch of port I/O and MMIO exits to device models.
//!
//! The vCPU threads look up the device that owns an address and call it with
//! the offset inside its range. Devices are shared between vCPUs (and the
//! event loop), so each sits behind its own mutex.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device model reachable through port I/O or MMIO.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from registering devices on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or overlaps a registered one.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if len == 0 {
            return Err(BusError::Overlap { base, len });
        }
        if let Some((&b, &(l, _))) = self.ranges.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((offset, dev))
    }

    /// Dispatches a read; returns false when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                // A poisoned lock means another thread panicked inside the
                // device; the data is still the best we have.
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, dev)) => {
                let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
                d.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        bus.insert(dev.clone(), 0x3f0, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x400, &mut b));
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
