//! Initial CPU state for the boot vCPU: GDT, identity page tables, segment and
//! control registers, general registers, FPU, MSRs and the local APIC.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout::*;
use crate::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write boot tables into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM refused the initial {what} of vCPU {cpu}: {source}")]
    Kvm {
        what: &'static str,
        cpu: u8,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// Xen PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh,
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A GDT entry from flags, base and limit (the x86 descriptor encoding).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
            // With 4 KiB granularity the limit counts pages.
            if bit(55) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// GDT for the given entry mode: null, code, data, TSS.
fn gdt(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Writes the identity page tables (first 4 GiB, 2 MiB pages) used by the
/// Linux 64-bit entry until the kernel installs its own.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
    for pd in 0..4u64 {
        let pd_addr = PD_ADDR + pd * 0x1000;
        mem.write_obj(pd_addr | 0x03, GuestAddress(PDPT_ADDR + pd * 8))?;
        for i in 0..512u64 {
            let phys = (pd << 30) | (i << 21);
            // Present, writable, 2 MiB page.
            mem.write_obj(phys | 0x83, GuestAddress(pd_addr + i * 8))?;
        }
    }
    Ok(())
}

/// Sets segment and control registers, after writing GDT, IDT and page tables.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    cpu: u8,
    mode: EntryMode,
) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, cpu, source };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("sregs"))?;
    let table = gdt(mode);
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR).unchecked_add(i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(table[1], 1);
    let data = segment_from_gdt(table[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(table[3], 3);

    match mode {
        EntryMode::Linux64 => {
            write_page_tables(mem)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("sregs"))
}

/// Sets the general registers for the entry point.
pub fn setup_regs(vcpu: &VcpuFd, cpu: u8, entry: u64, mode: EntryMode) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_TOP;
            regs.rbp = BOOT_STACK_TOP;
            regs.rsi = ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_ADDR,
    }
    vcpu.set_regs(&regs).map_err(|source| RegsError::Kvm {
        what: "registers",
        cpu,
        source,
    })
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd, cpu: u8) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU state",
        cpu,
        source,
    })
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// Boot MSRs: syscall MSRs cleared, fast strings on, MTRRs default write-back.
pub fn setup_msrs(vcpu: &VcpuFd, cpu: u8) -> Result<(), RegsError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        cpu,
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware would.
pub fn setup_lapic(vcpu: &VcpuFd, cpu: u8) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(|source| RegsError::Kvm {
        what: "LAPIC",
        cpu,
        source,
    })?;
    let set_mode = |regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32| {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[off + i] = *b as std::os::raw::c_char;
        }
    };
    set_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(|source| RegsError::Kvm {
        what: "LAPIC",
        cpu,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment_from_gdt(gdt(EntryMode::Linux64)[1], 1);
        assert_eq!(
            (code.base, code.limit, code.l, code.db),
            (0, 0xffff_ffff, 1, 0)
        );
        assert_eq!(
            (code.selector, code.type_, code.present, code.s),
            (8, 0xb, 1, 1)
        );
        let code32 = segment_from_gdt(gdt(EntryMode::Pvh)[1], 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment_from_gdt(gdt(EntryMode::Linux64)[3], 3);
        assert_eq!((tss.selector, tss.s, tss.type_), (0x18, 0, 0xb));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, (4u64 << 30) - (2 << 20));
        assert_eq!(last & 0x83, 0x83);
    }
}
