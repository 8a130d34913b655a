//! VM-wide KVM state: interrupt controllers, PIT and the KVM clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Debug, thiserror::Error)]
#[error("KVM {what} failed: {source}")]
pub struct VmStateError {
    pub what: &'static str,
    pub source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(err("get irqchip"))?;
    Ok(c)
}

impl VmState {
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        Ok(Self {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(err("get PIT"))?,
            clock: vm.get_clock().map_err(err("get clock"))?,
        })
    }

    /// Loads the state into a VM that already has its irqchip and PIT.
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        vm.set_pit2(&self.pit).map_err(err("set PIT"))?;
        // Only the clock value can be set; the flags describe the source host.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(err("set clock"))?;
        vm.set_irqchip(&self.pic_master)
            .map_err(err("set PIC master"))?;
        vm.set_irqchip(&self.pic_slave)
            .map_err(err("set PIC slave"))?;
        vm.set_irqchip(&self.ioapic).map_err(err("set IOAPIC"))?;
        Ok(())
    }
}
