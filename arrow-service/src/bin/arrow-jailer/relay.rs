//! The jailer's parent side: forwards signals to the jailed VMM and ends the
//! way it ended, so arrowd sees the VMM's exit code or signal.

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsFd;

/// Signals passed on to the VMM (arrowd's stop falls back to SIGTERM; its kill
/// API sends any of these). SIGKILL cannot be caught: it kills this process and
/// the VMM follows through its parent-death signal.
const RELAYED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// The relayed signals plus SIGCHLD.
pub fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in RELAYED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// How the VMM ended.
pub enum Ended {
    Code(i32),
    Signal(Signal),
}

/// Whether `sig` would not take its default action in `pid`: caught, ignored,
/// or blocked (arrow-vmm reads its stop signals from a signalfd) — the masks
/// of /proc/PID/status.
fn handles(pid: Pid, sig: Signal) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (sig as i32 - 1);
    status
        .lines()
        .filter_map(|l| {
            ["SigCgt:", "SigIgn:", "SigBlk:"]
                .iter()
                .find_map(|k| l.strip_prefix(k))
        })
        .filter_map(|m| u64::from_str_radix(m.trim(), 16).ok())
        .any(|mask| mask & bit != 0)
}

/// Whether the child has exec'd the VMM (or died): `exec_r` is the non-blocking read
/// end of a pipe whose only write end the child holds until its exec closes it.
fn exec_done(exec_r: &impl AsFd) -> bool {
    let mut b = [0u8; 1];
    !matches!(
        nix::unistd::read(exec_r, &mut b),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Relays signals until `child` ends; `exec_r` tells whether it is the VMM yet
/// ([`exec_done`]).
pub fn until_exit(child: Pid, set: &SigSet, exec_r: &impl AsFd) -> Result<Ended> {
    // The VMM is PID 1 of its namespace: the kernel drops signals that would
    // take their default action. Their default action (all relayed ones terminate) is done
    // here instead: SIGKILL, and this process then dies of the original signal. So is a
    // signal that comes before the exec: the child still blocks the relayed signals
    // then, and one left pending would reach the VMM at its default action and be
    // dropped (arrowd's stop right after a start would wait out its whole timeout).
    let mut dies_of = None;
    loop {
        let sig = set.wait().context("cannot wait for signals")?;
        if sig != Signal::SIGCHLD {
            // The VMM may be gone already; its SIGCHLD is next.
            if exec_done(exec_r) && handles(child, sig) {
                let _ = nix::sys::signal::kill(child, sig);
            } else {
                dies_of.get_or_insert(sig);
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            continue;
        }
        loop {
            match nix::sys::wait::waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(Ended::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    return Ok(Ended::Signal(match (sig, dies_of) {
                        (Signal::SIGKILL, Some(original)) => original,
                        _ => sig,
                    }))
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("cannot wait for the VMM"),
            }
        }
    }
}

/// Exits like the VMM: its code, or death by its signal (re-raised on this
/// process, without a core dump of the jailer); 128+signal if that fails.
pub fn exit_like(ended: Ended) -> u8 {
    match ended {
        Ended::Code(c) => u8::try_from(c).unwrap_or(u8::MAX),
        Ended::Signal(sig) => {
            let no_core =
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            if no_core.is_ok() {
                // SAFETY: restoring the default action of a signal installs no handler.
                let _ =
                    unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
                let mut only = SigSet::empty();
                only.add(sig);
                let _ = only.thread_unblock();
                let _ = nix::sys::signal::raise(sig);
            }
            128u8.saturating_add(sig as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sleep` whose SIGALRM is ignored (`ignore`) or at its default action,
    /// with nothing blocked: the test does not depend on this process's own
    /// signal state, which the harness and its parents may change.
    fn sleeper(ignore: bool) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: the closure only calls sigprocmask and signal, which are
        // async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let _ = SigSet::empty().thread_set_mask();
                let action = if ignore {
                    nix::sys::signal::SigHandler::SigIgn
                } else {
                    nix::sys::signal::SigHandler::SigDfl
                };
                nix::sys::signal::signal(Signal::SIGALRM, action)
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        cmd.spawn().expect("spawn sleep")
    }

    #[test]
    fn exec_is_seen_when_the_write_end_closes() {
        use nix::fcntl::OFlag;
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        assert!(
            !exec_done(&r),
            "the child holds the write end: not exec'd yet"
        );
        drop(w);
        // Another test thread's fork may hold a copy of the write end until its exec.
        let t = std::time::Instant::now();
        while !exec_done(&r) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "closed by the exec (or the child's death)"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn default_action_signals_are_told_apart() {
        for ignore in [false, true] {
            let mut child = sleeper(ignore);
            let pid = Pid::from_raw(child.id() as i32);
            assert_eq!(handles(pid, Signal::SIGALRM), ignore);
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!handles(Pid::from_raw(i32::MAX), Signal::SIGALRM));
        let set = signal_set();
        assert!(set.contains(Signal::SIGCHLD) && set.contains(Signal::SIGTERM));
        assert!(!set.contains(Signal::SIGKILL));
        assert_eq!(exit_like(Ended::Code(3)), 3);
        assert_eq!(exit_like(Ended::Code(300)), 255);
    }
}
