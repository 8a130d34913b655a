//! Per-thread seccomp filters (seccompiler): each thread may make only the
//! system calls its role needs. A blocked call raises SIGSYS, whose handler
//! names the call on stderr and exits 125 (a VMM bug, not a guest's doing).
//!
//! Filters are installed by each thread itself once its setup is done: vCPU
//! threads before their first KVM_RUN, the event-loop thread before its loop.
//! (A thread inherits its creator's filter, so vCPU threads are spawned
//! before the event loop installs its own.)

use std::collections::BTreeMap;

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch,
};

/// How strict the filters are (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompLevel {
    /// Block calls outside each thread's list (SIGSYS → message, exit 125).
    #[default]
    Trap,
    /// Allow everything but log calls outside the lists (kernel audit log).
    Log,
    /// No filters (debugging).
    Off,
}

/// What a thread does, and so which calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    Vcpu,
    EventLoop,
}

/// Calls every thread needs: memory, locks, signals, logging, exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_read,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_ioctl,
    // std's debug builds check descriptors with F_GETFD.
    libc::SYS_fcntl,
];

/// vCPU threads: KVM_RUN and state ioctls, device register accesses that
/// write eventfds and the console, the kick signal.
const VCPU: &[libc::c_long] = &[
    libc::SYS_tgkill,
    // Console file rotation (devices/console_log.rs): descriptors only.
    libc::SYS_ftruncate,
    libc::SYS_copy_file_range,
    // vhost-user-fs: the driver's DRIVER_OK hands the rings to the backend
    // (vhost-user requests with SCM_RIGHTS descriptors, and their replies).
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
];

/// The event loop: epoll, sockets (vsock backend, control API), snapshot
/// files, signalfd, timers, stopping vCPU threads, the final report.
const EVENT_LOOP: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_readv,
    libc::SYS_openat,
    libc::SYS_pwrite64,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getdents64,
    libc::SYS_tgkill,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_fchmod,
    // vsock connection-setup timeouts: the device's timerfd is created with
    // the device, before the filter; the loop (re-)arms it.
    libc::SYS_timerfd_settime,
    // --snapshot-dir: resolving a requested directory (realpath).
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_copy_file_range,
    // PUT /vm/start with "fs": the clone's RAM becomes a memfd copy.
    libc::SYS_memfd_create,
    // virtio-mem unplug with --fs: unplugged blocks are punched out of the
    // guest-RAM memfd (shared_memory/hotplug.rs).
    libc::SYS_fallocate,
];

#[derive(Debug, thiserror::Error)]
#[error("cannot install the seccomp filter: {0}")]
pub struct SeccompError(String);

fn program(role: ThreadRole, level: SeccompLevel) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match level {
        SeccompLevel::Off => return Ok(None),
        SeccompLevel::Log => SeccompAction::Log,
        SeccompLevel::Trap => SeccompAction::Trap,
    };
    let extra = match role {
        ThreadRole::Vcpu => VCPU,
        ThreadRole::EventLoop => EVENT_LOOP,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError(e.to_string()))?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| SeccompError(e.to_string()))
}

/// Installs the filter for `role` on the calling thread.
pub fn install(role: ThreadRole, level: SeccompLevel) -> Result<(), SeccompError> {
    if let Some(p) = program(role, level)? {
        apply_filter(&p).map_err(|e| SeccompError(e.to_string()))?;
        tracing::debug!(?role, ?level, "seccomp filter installed");
    }
    Ok(())
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe only: format the number by hand, write(2), _exit.
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; si_syscall sits
    // at byte offset 24 of it on x86-64 (after si_call_addr).
    let nr = unsafe { *(info.cast::<u8>().add(24).cast::<i32>()) };
    let mut msg = *b"arrow-vmm: seccomp blocked system call           \n";
    let mut n = nr.unsigned_abs();
    let mut i = 48;
    loop {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 39 {
            break;
        }
        i -= 1;
    }
    // SAFETY: writing a stack buffer to stderr and exiting are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(125);
    }
}

/// Installs the SIGSYS handler that reports a blocked call.
pub fn install_sigsys_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_every_role() {
        for role in [ThreadRole::Vcpu, ThreadRole::EventLoop] {
            assert!(program(role, SeccompLevel::Trap).unwrap().is_some());
            assert!(program(role, SeccompLevel::Log).unwrap().is_some());
            assert!(program(role, SeccompLevel::Off).unwrap().is_none());
        }
    }

    #[test]
    fn a_thread_with_a_filter_cannot_make_other_calls() {
        // In a child thread with the vCPU filter and EPERM instead of a trap:
        // `socket` is not on the vCPU list.
        let t = std::thread::spawn(|| {
            let rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
                .iter()
                .chain(VCPU)
                .map(|&nr| (nr, Vec::new()))
                .collect();
            let f = SeccompFilter::new(
                rules,
                SeccompAction::Errno(libc::EPERM as u32),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .unwrap();
            apply_filter(&BpfProgram::try_from(f).unwrap()).unwrap();
            std::os::unix::net::UnixStream::pair()
                .map(|_| ())
                .map_err(|e| e.raw_os_error())
        });
        assert_eq!(t.join().unwrap(), Err(Some(libc::EPERM)));
    }
}
