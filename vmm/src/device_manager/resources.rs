//! The resources a virtio-mmio device needs from the VM: a register window
//! in the MMIO gap and an interrupt line (GSI), handed out in order and
//! recorded in snapshots so a restored device sits where the guest saw it.

use serde::{Deserialize, Serialize};

use crate::arch::layout;
use crate::arch::mptable::IOAPIC_PINS;
use crate::devices::virtio::MMIO_WINDOW_SIZE;

/// Where one virtio-mmio device sits: its register window and GSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The first slot, where vsock sat before slots were recorded (snapshots
    /// without a slot field were all taken with vsock there).
    pub fn first() -> Self {
        Self {
            base: layout::VIRTIO_MMIO_BASE,
            irq: layout::VIRTIO_IRQ_BASE,
        }
    }

    /// Slot number `i` in allocation order.
    fn nth(i: u32) -> Self {
        Self {
            base: layout::VIRTIO_MMIO_BASE + u64::from(i) * MMIO_WINDOW_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + i,
        }
    }

    /// Index of a valid slot, None for an address/GSI pair the allocator
    /// would never hand out (e.g. from a tampered snapshot).
    fn index(&self) -> Option<u32> {
        let off = self.base.checked_sub(layout::VIRTIO_MMIO_BASE)?;
        if off % MMIO_WINDOW_SIZE != 0 {
            return None;
        }
        let i = u32::try_from(off / MMIO_WINDOW_SIZE).ok()?;
        (i < MAX_SLOTS && self.irq == layout::VIRTIO_IRQ_BASE + i).then_some(i)
    }
}

/// GSIs from VIRTIO_IRQ_BASE up to the last IOAPIC pin.
pub const MAX_SLOTS: u32 = IOAPIC_PINS as u32 - layout::VIRTIO_IRQ_BASE;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("no free virtio-mmio slot: at most {MAX_SLOTS} virtio devices per VM")]
    Exhausted,
    #[error("virtio-mmio slot {base:#x} (GSI {irq}) is not a valid slot")]
    Invalid { base: u64, irq: u32 },
    #[error("virtio-mmio slot {base:#x} (GSI {irq}) is used by two devices")]
    Taken { base: u64, irq: u32 },
}

/// Hands out slots; for restore, claims the recorded ones.
#[derive(Debug, Default)]
pub struct SlotAllocator {
    used: u32, // bit i = slot i taken
}

impl SlotAllocator {
    /// The lowest free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot, SlotError> {
        let i = (0..MAX_SLOTS)
            .find(|i| self.used & (1 << i) == 0)
            .ok_or(SlotError::Exhausted)?;
        self.used |= 1 << i;
        Ok(MmioSlot::nth(i))
    }

    /// Claims a slot recorded in a snapshot.
    pub fn claim(&mut self, slot: MmioSlot) -> Result<(), SlotError> {
        let i = slot.index().ok_or(SlotError::Invalid {
            base: slot.base,
            irq: slot.irq,
        })?;
        if self.used & (1 << i) != 0 {
            return Err(SlotError::Taken {
                base: slot.base,
                irq: slot.irq,
            });
        }
        self.used |= 1 << i;
        Ok(())
    }
}

/// KVM memory slots for device memory (pmem windows, hotplug regions):
/// above the guest RAM's slots, which are numbered by RAM region.
#[derive(Debug)]
pub struct KvmSlotAllocator {
    next: u32,
}

/// The first KVM memory slot for device memory (RAM uses 0 and 1).
pub const FIRST_DEVICE_KVM_SLOT: u32 = 8;

impl Default for KvmSlotAllocator {
    fn default() -> Self {
        Self {
            next: FIRST_DEVICE_KVM_SLOT,
        }
    }
}

impl KvmSlotAllocator {
    pub fn allocate(&mut self) -> u32 {
        let s = self.next;
        self.next += 1;
        s
    }
}

/// Guest-physical space for device memory (pmem windows, hotplug
/// regions): above RAM and above 4 GiB, from a 1 GiB boundary.
#[derive(Debug)]
pub struct DeviceMemory {
    start: u64,
    next: u64,
    /// Ranges taken (start, end), for restore's overlap checks.
    taken: Vec<(u64, u64)>,
}

/// Each device-memory range starts on a memory-section boundary (128 MiB
/// on x86-64) so no two devices share a section in the guest's memmap.
pub const DEVICE_MEMORY_ALIGN: u64 = 128 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DeviceMemoryError {
    #[error("no guest-physical room for {size:#x} bytes of device memory")]
    Exhausted { size: u64 },
    #[error("device memory {start:#x}+{size:#x} is below {floor:#x} or overlaps another device")]
    Invalid { start: u64, size: u64, floor: u64 },
}

/// Guest-physical addresses stay below 2^46 (the guest kernel's limit for
/// x86-64 4-level paging).
const DEVICE_MEMORY_END: u64 = 1 << 46;

impl DeviceMemory {
    /// Device memory for a guest whose RAM ends (exclusive) at `ram_end`.
    pub fn above_ram(ram_end: u64) -> Self {
        let floor = ram_end.max(layout::MMIO_GAP_END);
        let start = floor.div_ceil(1 << 30) * (1 << 30);
        Self {
            start,
            next: start,
            taken: Vec::new(),
        }
    }

    /// A range of `size` bytes on a section boundary.
    pub fn allocate(&mut self, size: u64) -> Result<u64, DeviceMemoryError> {
        let addr = self.next.div_ceil(DEVICE_MEMORY_ALIGN) * DEVICE_MEMORY_ALIGN;
        let end = addr
            .checked_add(size)
            .filter(|&e| e <= DEVICE_MEMORY_END && size > 0)
            .ok_or(DeviceMemoryError::Exhausted { size })?;
        self.next = end;
        self.taken.push((addr, end));
        Ok(addr)
    }

    /// Claims a range recorded in a snapshot.
    pub fn claim(&mut self, start: u64, size: u64) -> Result<(), DeviceMemoryError> {
        let invalid = DeviceMemoryError::Invalid {
            start,
            size,
            floor: self.start,
        };
        let end = start
            .checked_add(size)
            .filter(|&e| e <= DEVICE_MEMORY_END && size > 0 && start >= self.start)
            .ok_or(invalid.clone())?;
        if self.taken.iter().any(|&(s, e)| start < e && end > s) {
            return Err(invalid);
        }
        self.taken.push((start, end));
        self.next = self.next.max(end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_memory_sits_above_ram_on_section_boundaries() {
        let mut d = DeviceMemory::above_ram(128 << 20);
        let a = d.allocate(2 << 20).unwrap();
        assert_eq!(a, 4 << 30);
        let b = d.allocate(6 << 20).unwrap();
        assert_eq!(b, (4 << 30) + DEVICE_MEMORY_ALIGN);
        assert!(d.allocate(0).is_err());
        assert!(d.allocate(u64::MAX).is_err());

        // 6 GiB of RAM ends at 4 GiB + 2.75 GiB: device memory from 7 GiB.
        let mut big = DeviceMemory::above_ram(layout::MMIO_GAP_END + (2816 << 20));
        assert_eq!(big.allocate(1).unwrap(), 7 << 30);

        let mut r = DeviceMemory::above_ram(128 << 20);
        r.claim(b, 6 << 20).unwrap();
        assert!(r.claim(b + (2 << 20), 2 << 20).is_err(), "overlap");
        assert!(r.claim(1 << 20, 2 << 20).is_err(), "inside RAM");
        assert!(r.claim(u64::MAX - 1, 2).is_err());
        // Allocation continues after claimed ranges.
        assert!(r.allocate(2 << 20).unwrap() >= b + (6 << 20));
    }

    #[test]
    fn slots_are_handed_out_in_order_and_claims_checked() {
        let mut a = SlotAllocator::default();
        assert_eq!(a.allocate().unwrap(), MmioSlot::first());
        let second = a.allocate().unwrap();
        assert_eq!(second.base, layout::VIRTIO_MMIO_BASE + MMIO_WINDOW_SIZE);
        assert_eq!(second.irq, layout::VIRTIO_IRQ_BASE + 1);
        for _ in 2..MAX_SLOTS {
            a.allocate().unwrap();
        }
        assert_eq!(a.allocate(), Err(SlotError::Exhausted));
        // The last GSI is the last IOAPIC pin.
        assert_eq!(MmioSlot::nth(MAX_SLOTS - 1).irq, u32::from(IOAPIC_PINS) - 1);

        let mut r = SlotAllocator::default();
        r.claim(second).unwrap();
        assert!(matches!(r.claim(second), Err(SlotError::Taken { .. })));
        assert_eq!(r.allocate().unwrap(), MmioSlot::first());
        for bad in [
            MmioSlot { base: 0, irq: 5 },
            MmioSlot {
                base: layout::VIRTIO_MMIO_BASE + 8,
                irq: 5,
            },
            MmioSlot {
                base: layout::VIRTIO_MMIO_BASE,
                irq: 6,
            },
            MmioSlot::nth(MAX_SLOTS),
        ] {
            assert!(matches!(r.claim(bad), Err(SlotError::Invalid { .. })));
        }
    }
}
