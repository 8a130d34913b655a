//! arrow-vmm: boots one single-task Linux microVM on KVM.

pub mod devices;

/// Guest memory as every part of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
