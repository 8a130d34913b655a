//! The CPUID a guest sees: the host's KVM-supported set, filtered to what a
//! single-task microVM should use, plus per-vCPU topology.
//!
//! The filter is a table (`FILTER`), one row per hidden feature with the
//! reason; `--cpuid-passthrough` skips it (for debugging) and `--cpuid-clear`
//! adds rows. On hosts like ours (nested `kvm_pvm`) masking CPUID is not
//! enough to keep some instructions away from the guest: see `crate::host`.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One feature (bit mask) hidden from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearRule {
    pub leaf: u32,
    /// `None` = every subleaf.
    pub subleaf: Option<u32>,
    pub reg: Reg,
    pub mask: u32,
    pub why: &'static str,
}

const fn rule(
    leaf: u32,
    subleaf: Option<u32>,
    reg: Reg,
    mask: u32,
    why: &'static str,
) -> ClearRule {
    ClearRule {
        leaf,
        subleaf,
        reg,
        mask,
        why,
    }
}

/// Features hidden from every guest.
pub const FILTER: &[ClearRule] = &[
    rule(
        1,
        None,
        Reg::Ecx,
        1 << 3,
        "MONITOR/MWAIT: idle is HLT, mwait exits are not emulated",
    ),
    rule(1, None, Reg::Ecx, 1 << 5, "VMX: no nested virtualization"),
    rule(1, None, Reg::Ecx, 1 << 6, "SMX: no trusted execution"),
    rule(
        1,
        None,
        Reg::Ecx,
        1 << 7,
        "EIST: the VMM owns power management",
    ),
    rule(1, None, Reg::Ecx, 1 << 8, "TM2: no thermal control"),
    rule(1, None, Reg::Ecx, 1 << 15, "PDCM: no perf capabilities MSR"),
    rule(
        1,
        None,
        Reg::Ecx,
        1 << 2 | 1 << 4,
        "DTES64/DS-CPL: no debug store",
    ),
    rule(
        1,
        None,
        Reg::Edx,
        1 << 21 | 1 << 22,
        "DS/ACPI thermal: not emulated",
    ),
    rule(
        1,
        None,
        Reg::Edx,
        1 << 29 | 1 << 31,
        "TM/PBE: no thermal control",
    ),
    rule(
        6,
        None,
        Reg::Eax,
        u32::MAX,
        "thermal and power leaf: the VMM owns it",
    ),
    rule(
        6,
        None,
        Reg::Ecx,
        u32::MAX,
        "thermal and power leaf: the VMM owns it",
    ),
    rule(7, Some(0), Reg::Ebx, 1 << 2, "SGX: no enclaves"),
    rule(
        7,
        Some(0),
        Reg::Ebx,
        1 << 10,
        "INVPCID: not emulated on nested hosts",
    ),
    rule(
        7,
        Some(0),
        Reg::Ebx,
        1 << 12 | 1 << 15,
        "RDT monitoring/allocation",
    ),
    rule(7, Some(0), Reg::Ebx, 1 << 25, "Intel PT: no tracing"),
    rule(
        7,
        Some(0),
        Reg::Ecx,
        1 << 3 | 1 << 4,
        "PKU/OSPKE: rdpkru/wrpkru not emulated on nested hosts",
    ),
    rule(7, Some(0), Reg::Ecx, 1 << 5, "WAITPKG: umwait/tpause"),
    rule(
        0xa,
        None,
        Reg::Eax,
        u32::MAX,
        "architectural PMU: no perf counters",
    ),
    rule(
        0xa,
        None,
        Reg::Ebx,
        u32::MAX,
        "architectural PMU: no perf counters",
    ),
    rule(
        0xa,
        None,
        Reg::Edx,
        u32::MAX,
        "architectural PMU: no perf counters",
    ),
    rule(
        0x8000_0001,
        None,
        Reg::Ecx,
        1 << 2,
        "SVM: no nested virtualization",
    ),
    rule(0x8000_0001, None, Reg::Ecx, 1 << 29, "MONITORX/MWAITX"),
    rule(
        0x8000_0001,
        None,
        Reg::Ecx,
        1 << 23,
        "AMD perf counter core extensions",
    ),
];

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Parses a `--cpuid-clear` value: `LEAF[.SUBLEAF]:REG:BIT`, numbers in
/// decimal or 0x-hex, e.g. `0x7.0:ebx:10`.
pub fn parse_clear_rule(s: &str) -> Result<ClearRule, String> {
    let bad = || {
        format!("invalid --cpuid-clear '{s}': expected LEAF[.SUBLEAF]:REG:BIT, e.g. 0x7.0:ebx:10")
    };
    let num = |t: &str| -> Option<u32> {
        match t.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => t.parse().ok(),
        }
    };
    let mut parts = s.split(':');
    let (Some(leaf), Some(reg), Some(bit), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (leaf, subleaf) = match leaf.split_once('.') {
        Some((l, sl)) => (num(l).ok_or_else(bad)?, Some(num(sl).ok_or_else(bad)?)),
        None => (num(leaf).ok_or_else(bad)?, None),
    };
    let reg = match reg.to_ascii_lowercase().as_str() {
        "eax" => Reg::Eax,
        "ebx" => Reg::Ebx,
        "ecx" => Reg::Ecx,
        "edx" => Reg::Edx,
        _ => return Err(bad()),
    };
    let bit = num(bit).filter(|b| *b < 32).ok_or_else(bad)?;
    Ok(ClearRule {
        leaf,
        subleaf,
        reg,
        mask: 1 << bit,
        why: "--cpuid-clear",
    })
}

/// Applies `rules` to every matching entry.
pub fn apply_rules(cpuid: &mut CpuId, rules: &[ClearRule]) {
    for e in cpuid.as_mut_slice() {
        for r in rules {
            if r.leaf == e.function && r.subleaf.is_none_or(|s| s == e.index) {
                *reg_mut(e, r.reg) &= !r.mask;
            }
        }
    }
}

/// Sets what differs per vCPU: APIC ids, logical processor count, and the
/// hypervisor-present bit.
pub fn set_topology(cpuid: &mut CpuId, cpu: u8, cpus: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(cpu) << 24) | (u32::from(cpus) << 16);
                // HTT: "EBX[23:16] is valid".
                e.edx |= 1 << 28;
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => e.edx = u32::from(cpu),
            4 => {
                // Cores per package - 1, in EAX[31:26].
                e.eax = (e.eax & 0x03ff_ffff) | (u32::from(cpus.saturating_sub(1)) << 26);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    #[test]
    fn filter_clears_listed_bits_only() {
        let mut cpuid =
            CpuId::from_entries(&[entry(1, 0), entry(7, 0), entry(7, 1), entry(0xd, 0)]).unwrap();
        apply_rules(&mut cpuid, FILTER);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ecx & (1 << 5), 0, "VMX hidden");
        assert_ne!(s[0].ecx & (1 << 26), 0, "XSAVE stays honest");
        assert_eq!(s[1].ebx & (1 << 10), 0, "INVPCID hidden in subleaf 0");
        assert_eq!(s[2].ebx, u32::MAX, "subleaf 1 untouched");
        assert_eq!(s[3].eax, u32::MAX);
    }

    #[test]
    fn topology_sets_apic_id_and_count() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0)]).unwrap();
        set_topology(&mut cpuid, 1, 2);
        let s = cpuid.as_slice();
        assert_eq!(s[0].ebx >> 24, 1);
        assert_eq!((s[0].ebx >> 16) & 0xff, 2);
        assert_eq!(s[1].edx, 1);
    }

    #[test]
    fn clear_rule_parsing() {
        let r = parse_clear_rule("0x7.0:ebx:10").unwrap();
        assert_eq!(
            (r.leaf, r.subleaf, r.reg, r.mask),
            (7, Some(0), Reg::Ebx, 1 << 10)
        );
        let r = parse_clear_rule("1:ECX:31").unwrap();
        assert_eq!((r.leaf, r.subleaf, r.mask), (1, None, 1 << 31));
        for bad in ["", "1:ecx", "1:ecx:32", "1:xyz:3", "q:ecx:1", "1:ecx:1:2"] {
            assert!(parse_clear_rule(bad).is_err(), "{bad}");
        }
    }
}
