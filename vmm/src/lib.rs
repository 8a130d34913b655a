//! arrow-vmm: boots one single-task Linux microVM on KVM.
//!
//! A `VmConfig` is turned into a `vm::Vm` (KVM VM, guest memory, kernel,
//! devices, vCPUs), which runs until the guest or the host stops it; the
//! `exit::StopReason` says why and maps to the process exit code.

pub mod api;
pub mod app_spec;
pub mod arch;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod exit;
#[doc(hidden)]
pub mod fuzz;
pub mod host;
pub mod lifecycle;
pub mod pooled;
pub mod report;
pub mod runtime;
pub mod seccomp;
pub mod shared_memory;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
pub mod volume;

/// Guest memory as every part of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
