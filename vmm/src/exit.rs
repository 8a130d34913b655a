//! Why a VM stopped, and the exit code `arrow-vmm` reports for it.
//!
//! | code | meaning |
//! |---|---|
//! | 0–255 | the app's exit status (APP_EXITED) |
//! | 128+n | the app was killed by signal n (APP_EXITED, signal bit) — or arrow-vmm itself got SIGTERM/SIGINT/SIGHUP |
//! | 120 | the guest halted a vCPU for good (HLT with interrupts off) |
//! | 121 | the guest reset itself (i8042 / system reset) without APP_EXITED |
//! | 122 | triple fault (KVM_EXIT_SHUTDOWN) |
//! | 123 | the guest kernel panicked (GUEST_PANIC) |
//! | 124 | the guest crashed the vCPU: KVM_EXIT_INTERNAL_ERROR (e.g. an instruction the host cannot emulate) or KVM_EXIT_FAIL_ENTRY |
//! | 0 | also: stopped through the control API (`PUT /vm/shutdown`) |
//! | 125 | arrow-vmm failed: bad arguments, unusable kernel/initrd, KVM errors (as `docker run`) |
//!
//! An app can of course exit with 120–125 itself; a caller that needs to
//! tell them apart reads the one-line reason arrow-vmm prints on stderr.

use std::fmt;

pub const EXIT_GUEST_HALTED: i32 = 120;
pub const EXIT_GUEST_RESET: i32 = 121;
pub const EXIT_TRIPLE_FAULT: i32 = 122;
pub const EXIT_GUEST_PANIC: i32 = 123;
pub const EXIT_GUEST_CRASHED: i32 = 124;
pub const EXIT_VMM_ERROR: i32 = 125;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The app (PID 1) exited; `signal` = killed by signal `status`.
    AppExited {
        status: u8,
        signal: bool,
    },
    GuestPanic,
    GuestReset,
    Halted {
        cpu: u8,
    },
    TripleFault {
        cpu: u8,
        rip: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR; suberror 1 is an emulation failure.
    InternalError {
        cpu: u8,
        suberror: u32,
        rip: u64,
        insn: Vec<u8>,
    },
    FailEntry {
        cpu: u8,
        reason: u64,
    },
    /// arrow-vmm received this signal.
    Signal(i32),
    /// The control API asked for a shutdown.
    Shutdown,
    /// KVM_RUN or a device failed on the host side.
    VmmError(String),
}

impl StopReason {
    /// The process exit code (see the module table).
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::AppExited {
                status,
                signal: false,
            } => i32::from(*status),
            StopReason::AppExited {
                status,
                signal: true,
            } => 128 + i32::from(*status),
            StopReason::GuestPanic => EXIT_GUEST_PANIC,
            StopReason::GuestReset => EXIT_GUEST_RESET,
            StopReason::Halted { .. } => EXIT_GUEST_HALTED,
            StopReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            StopReason::InternalError { .. } | StopReason::FailEntry { .. } => EXIT_GUEST_CRASHED,
            StopReason::Signal(n) => 128 + n,
            StopReason::Shutdown => 0,
            StopReason::VmmError(_) => EXIT_VMM_ERROR,
        }
    }

    /// Whether this is an ordinary end (the app exited or the VMM was asked
    /// to stop) rather than a guest or host failure.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            StopReason::AppExited { .. } | StopReason::Signal(_) | StopReason::Shutdown
        )
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::AppExited { status, signal: false } => write!(f, "app exited with status {status}"),
            StopReason::AppExited { status, signal: true } => write!(f, "app killed by signal {status}"),
            StopReason::GuestPanic => write!(f, "guest kernel panicked (GUEST_PANIC)"),
            StopReason::GuestReset => write!(f, "guest reset itself without reporting an app exit"),
            StopReason::Halted { cpu } => write!(f, "guest halted for good: every vCPU is in HLT with interrupts off (last: vCPU {cpu})"),
            StopReason::TripleFault { cpu, rip } => {
                write!(f, "guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU {cpu} at rip {rip:#x}")
            }
            StopReason::InternalError { cpu, suberror, rip, insn } => {
                let what = if *suberror == 1 { "emulation failure" } else { "internal error" };
                write!(
                    f,
                    "guest crashed: KVM_EXIT_INTERNAL_ERROR ({what}, suberror {suberror}) on vCPU {cpu} at rip {rip:#x}, instruction bytes [{}]",
                    insn.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
                )
            }
            StopReason::FailEntry { cpu, reason } => {
                write!(f, "guest crashed: KVM_EXIT_FAIL_ENTRY on vCPU {cpu}, hardware reason {reason:#x}")
            }
            StopReason::Signal(n) => write!(f, "arrow-vmm stopped by signal {n}"),
            StopReason::Shutdown => write!(f, "stopped through the control API"),
            StopReason::VmmError(e) => write!(f, "arrow-vmm failed while running the guest: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_table() {
        assert_eq!(
            StopReason::AppExited {
                status: 3,
                signal: false
            }
            .exit_code(),
            3
        );
        assert_eq!(
            StopReason::AppExited {
                status: 9,
                signal: true
            }
            .exit_code(),
            137
        );
        assert_eq!(StopReason::Signal(15).exit_code(), 143);
        assert_eq!(StopReason::GuestPanic.exit_code(), 123);
        assert_eq!(StopReason::TripleFault { cpu: 0, rip: 0 }.exit_code(), 122);
        let e = StopReason::InternalError {
            cpu: 1,
            suberror: 1,
            rip: 0x1000,
            insn: vec![0x0f, 0xae],
        };
        assert_eq!(e.exit_code(), 124);
        assert!(e
            .to_string()
            .contains("vCPU 1 at rip 0x1000, instruction bytes [0f ae]"));
    }
}
