//! Saving and restoring the complete state of one vCPU.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Everything KVM holds for one vCPU, in restore order.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
}

#[derive(Debug, thiserror::Error)]
#[error("vCPU {cpu}: KVM {what} failed: {source}")]
pub struct VcpuStateError {
    pub cpu: u8,
    pub what: &'static str,
    pub source: kvm_ioctls::Error,
}

fn err(cpu: u8, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError { cpu, what, source }
}

/// Reads the MSRs in `indices` that this vCPU has; KVM stops a batch at the
/// first MSR it cannot read, so skip that one and go on.
fn read_msrs(
    vcpu: &VcpuFd,
    cpu: u8,
    indices: &[u32],
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
            cpu,
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(err(cpu, "get MSRs"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

impl VcpuState {
    /// Saves a vCPU that is not running (its thread is parked).
    pub fn save(
        vcpu: &VcpuFd,
        cpu: u8,
        msr_indices: &[u32],
        has_xcrs: bool,
    ) -> Result<Self, VcpuStateError> {
        // Events and MP state first: reading them settles pending work in KVM.
        let mp_state = vcpu.get_mp_state().map_err(err(cpu, "get MP state"))?;
        let events = vcpu
            .get_vcpu_events()
            .map_err(err(cpu, "get vCPU events"))?;
        let cpuid = vcpu
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(err(cpu, "get CPUID"))?
            .as_slice()
            .to_vec();
        Ok(Self {
            id: cpu,
            cpuid,
            msrs: read_msrs(vcpu, cpu, msr_indices)?,
            regs: vcpu.get_regs().map_err(err(cpu, "get registers"))?,
            sregs: vcpu
                .get_sregs()
                .map_err(err(cpu, "get special registers"))?,
            xsave: vcpu.get_xsave().map_err(err(cpu, "get XSAVE state"))?,
            xcrs: if has_xcrs {
                Some(vcpu.get_xcrs().map_err(err(cpu, "get XCRs"))?)
            } else {
                None
            },
            debugregs: vcpu
                .get_debug_regs()
                .map_err(err(cpu, "get debug registers"))?,
            lapic: vcpu.get_lapic().map_err(err(cpu, "get LAPIC"))?,
            mp_state,
            events,
        })
    }

    /// Loads this state into a fresh vCPU of a restored VM.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        let cpu = self.id;
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError {
            cpu,
            what: "CPUID list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(err(cpu, "set CPUID"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(err(cpu, "set special registers"))?;
        vcpu.set_regs(&self.regs)
            .map_err(err(cpu, "set registers"))?;
        // SAFETY: this kvm_xsave came from KVM_GET_XSAVE (the legacy 4 KiB
        // form) on a VM created the same way (no extended xsave permission
        // requested), so KVM reads no more than size_of::<kvm_xsave>().
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(err(cpu, "set XSAVE state"))?;
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(err(cpu, "set XCRs"))?;
        }
        // LAPIC before MSRs: KVM ignores a TSC_DEADLINE write unless the
        // LAPIC timer is already in TSC-deadline mode, and a lost deadline
        // leaves an idle guest without its next timer interrupt.
        vcpu.set_lapic(&self.lapic).map_err(err(cpu, "set LAPIC"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| VcpuStateError {
            cpu,
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(err(cpu, "set MSRs"))?;
        if set != self.msrs.len() {
            let failed = self.msrs.get(set).map(|m| m.index).unwrap_or(0);
            return Err(VcpuStateError {
                cpu,
                what: if failed == 0 {
                    "set MSRs"
                } else {
                    "set MSRs (an MSR this host refuses)"
                },
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(err(cpu, "set debug registers"))?;
        vcpu.set_mp_state(self.mp_state)
            .map_err(err(cpu, "set MP state"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(err(cpu, "set vCPU events"))?;
        Ok(())
    }
}
