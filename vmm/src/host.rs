//! What the host's KVM can and cannot do, and how arrow-vmm adapts.
//!
//! On hosts whose `/dev/kvm` is the nested `kvm_pvm` module (no VT-x/AMD-V),
//! guest kernel code runs in KVM's instruction emulator, which lacks some
//! instructions (xsave, cmpxchg16b, popcnt, clac/stac, …). Hiding them in
//! CPUID does not stop the guest using them there (measured: the guest still
//! saw XSAVE and SMAP), so arrow-vmm appends guest command-line flags instead.
//! This is the one place those flags live. On hosts with hardware
//! virtualization nothing is added.

use std::path::Path;

use crate::config::insert_kernel_param;

/// Guest command-line flags required on nested-PVM hosts, with the reason.
pub const PVM_CMDLINE_FLAGS: &[(&str, &str)] = &[
    ("noxsave", "xsave/xrstor are not emulated"),
    (
        "clearcpuid=smap,smep,popcnt,cx16",
        "clac/stac, popcnt and cmpxchg16b are not emulated",
    ),
    (
        "reboot=k",
        "the triple-fault reboot path dies on int3; use the i8042 reset",
    ),
    (
        "rodata=off",
        "avoids page-table splitting work in the slow emulated kernel",
    ),
];

/// The kind of KVM this host provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum HostKind {
    /// Hardware virtualization (VT-x / AMD-V).
    Hardware,
    /// Nested, pagetable-based KVM (`kvm_pvm`): guest CPL0 is emulated.
    NestedPvm,
}

impl HostKind {
    /// Detects the host kind from sysfs.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            HostKind::NestedPvm
        } else {
            HostKind::Hardware
        }
    }

    /// Appends the flags this host needs to `cmdline`, skipping those the
    /// user already gave.
    pub fn adapt_cmdline(self, cmdline: &str) -> String {
        let mut out = cmdline.trim().to_string();
        if self == HostKind::Hardware {
            return out;
        }
        for (flag, why) in PVM_CMDLINE_FLAGS {
            // Only kernel parameters count (after `--` is init's argv).
            let kernel_part = out.split(" -- ").next().unwrap_or("");
            let kernel_part = if kernel_part.starts_with("-- ") {
                ""
            } else {
                kernel_part
            };
            let key = flag.split('=').next().unwrap_or(flag);
            let present = kernel_part
                .split_whitespace()
                .any(|w| w == *flag || w.split('=').next() == Some(key));
            if !present {
                tracing::debug!(flag, why, "nested-PVM host: adding guest command-line flag");
                out = insert_kernel_param(&out, flag);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_pvm_module() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(HostKind::detect_in(dir.path()), HostKind::Hardware);
        std::fs::create_dir(dir.path().join("kvm_pvm")).unwrap();
        assert_eq!(HostKind::detect_in(dir.path()), HostKind::NestedPvm);
    }

    #[test]
    fn flags_are_added_before_init_args_only_on_pvm() {
        assert_eq!(
            HostKind::Hardware.adapt_cmdline("console=ttyS0"),
            "console=ttyS0"
        );
        let s = HostKind::NestedPvm.adapt_cmdline("console=ttyS0 reboot=t -- -x y");
        assert_eq!(
            s,
            "console=ttyS0 reboot=t noxsave clearcpuid=smap,smep,popcnt,cx16 rodata=off -- -x y"
        );
        let s = HostKind::NestedPvm.adapt_cmdline("");
        assert!(s.starts_with("noxsave "));
    }
}
