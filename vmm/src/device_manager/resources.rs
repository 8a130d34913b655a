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

#[cfg(test)]
mod tests {
    use super::*;

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
