//! Guest-physical memory layout and the e820 map derived from it.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), IDT right after it
//! 0x0000_6000  PVH start info + memory map (PVH boot only)
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  page tables: PML4, PDPT, 4 PDs (identity map of the first 4 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (end of conventional memory, reserved in e820)
//! 0x0010_0000  high memory: kernel (at its ELF physical address), then RAM
//! initrd       page aligned, at the top of RAM below the MMIO gap
//! 0xd000_0000  MMIO gap: virtio-mmio devices, IOAPIC, LAPIC (up to 4 GiB)
//! 0x1_0000_0000 RAM above the gap when the guest has more than 3.25 GiB
//! above RAM    device memory (pmem windows), from the next 1 GiB boundary
//!              at or above 4 GiB, each range on a 128 MiB boundary
//! ```

use vm_memory::GuestAddress;

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MEMMAP_ADDR: u64 = 0x6040;
pub const PVH_MODLIST_ADDR: u64 = 0x6800;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
/// Four page directories of 2 MiB pages follow the PDPT.
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIGH_MEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Where virtio-mmio devices start in the gap; each gets one page.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI for virtio devices (below: legacy ISA interrupts).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// TSS for KVM_SET_TSS_ADDR (needs three pages below 4 GiB, in the gap).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// The guest RAM regions (start, size) for `mem_size` bytes: below the MMIO
/// gap first, the rest from 4 GiB up.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_GAP_START {
        regions.push((
            GuestAddress(MMIO_GAP_END),
            (mem_size - MMIO_GAP_START) as usize,
        ));
    }
    regions
}

/// The e820 map the guest sees for `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = mem_size.min(MMIO_GAP_START);
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        // The MP table lives here; the kernel must not reuse it as RAM.
        E820Entry {
            addr: EBDA_START,
            size: 0xa0000 - EBDA_START,
            kind: E820Kind::Reserved,
        },
        E820Entry {
            addr: HIGH_MEM_START,
            size: low_end - HIGH_MEM_START,
            kind: E820Kind::Ram,
        },
    ];
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

/// End (exclusive) of all guest RAM (device memory goes above it).
pub fn ram_end(mem_size: u64) -> u64 {
    if mem_size > MMIO_GAP_START {
        MMIO_GAP_END + (mem_size - MMIO_GAP_START)
    } else {
        mem_size
    }
}

/// End (exclusive) of the RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_and_no_high_ram() {
        let regions = ram_regions(128 << 20);
        assert_eq!(regions, vec![(GuestAddress(0), 128 << 20)]);
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr + map[2].size, 128 << 20);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (128 << 20) - 0x60400);
    }

    #[test]
    fn large_guest_is_split_around_the_mmio_gap() {
        let size = 6u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].1 as u64, MMIO_GAP_START);
        assert_eq!(regions[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(regions[0].1 as u64 + regions[1].1 as u64, size);
        let map = e820_map(size);
        assert_eq!(map.last().unwrap().addr, MMIO_GAP_END);
        assert!(map
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }
}
