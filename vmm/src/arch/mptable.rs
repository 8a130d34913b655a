//! Intel MultiProcessor Specification 1.4 table, so a Linux guest without
//! ACPI finds its CPUs, the IOAPIC and the ISA interrupt routing.
//!
//! Written as little-endian bytes rather than `#[repr(C)]` structs: the table
//! is small, packed, and this needs no `unsafe` `ByteValued` impls.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_START, IOAPIC_ADDR, LAPIC_ADDR};
use crate::GuestMemoryMmap;

/// Legacy IRQ lines routed through the IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Stepping/model/family of a generic x86-64 CPU and FPU+APIC feature flags.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4) | 1;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IRQ_INT: u8 = 0;
const IRQ_NMI: u8 = 1;
const IRQ_EXTINT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in the MP table (at most {max})", max = max_cpus())]
    TooManyCpus(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const TABLE_SPACE: usize = 0xa0000 - EBDA_START as usize;

fn fixed_len() -> usize {
    // bus + ioapic + interrupt sources + two local interrupts
    FLOATING_LEN + HEADER_LEN + SMALL_ENTRY_LEN * (2 + IOAPIC_PINS as usize + 2)
}

/// The most vCPUs whose entries fit in the reserved area.
pub const fn max_cpus() -> usize {
    (TABLE_SPACE - (FLOATING_LEN + HEADER_LEN + SMALL_ENTRY_LEN * (2 + 24 + 2))) / CPU_LEN
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs whose
/// APIC ids are 0..cpus, placed at `base`.
pub fn build(cpus: u8, base: u32) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || usize::from(cpus) > max_cpus() {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for id in 0..cpus {
        entries.extend_from_slice(&[0, id, APIC_VERSION]);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    // KVM's default routing sends GSI n to IOAPIC pin n (and the PIC), so
    // every ISA IRQ, the PIT's IRQ 0 included, is a plain INT on its own pin.
    // (Reporting pin 0 as ExtINT makes Linux's timer check take a path that
    // expects an 8259 cascade through the IOAPIC and crash.)
    for pin in 0..IOAPIC_PINS {
        // type, irq type, flags (conforming), bus 0, bus irq, ioapic, pin
        entries.extend_from_slice(&[3, IRQ_INT, 0, 0, 0, pin, ioapic_id, pin]);
    }
    // LINT0 = ExtINT, LINT1 = NMI on every local APIC (0xff).
    entries.extend_from_slice(&[4, IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);

    let entry_count = u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2;
    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.extend_from_slice(&[4, 0]); // spec revision 1.4, checksum
    header.extend_from_slice(b"ARROW   ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&[0; 6]); // OEM table pointer and size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&entries);
    header[7] = checksum(&header);

    let mut floating = Vec::with_capacity(FLOATING_LEN + table_len);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(base + FLOATING_LEN as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);
    floating.extend_from_slice(&header);
    debug_assert!(floating.len() <= fixed_len() + CPU_LEN * usize::from(cpus));
    Ok(floating)
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, EBDA_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_and_counts_are_consistent() {
        let t = build(2, EBDA_START as u32).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(ptr, EBDA_START as u32 + 16);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 2 + 2 + 24 + 2);
        // Second CPU entry: APIC id 1, enabled, not bootstrap.
        assert_eq!(&table[44 + 20..44 + 24], &[0, 1, APIC_VERSION, CPU_ENABLED]);
        assert!(t.len() <= TABLE_SPACE);
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(0, 0).is_err());
        assert!(build(u8::try_from(max_cpus() + 1).unwrap(), 0).is_err());
        let max = build(u8::try_from(max_cpus()).unwrap(), 0).unwrap();
        assert!(max.len() <= TABLE_SPACE);
    }
}
