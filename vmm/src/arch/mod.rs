//! x86-64 machine setup: memory layout, boot protocols, CPU state, CPUID, MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
