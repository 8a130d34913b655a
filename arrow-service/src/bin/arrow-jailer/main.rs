//! arrow-jailer: runs one arrow-vmm in a jail (docs/security.md). arrowd starts
//! it with a [`JailSpec`] (the paths the VMM may see, its uid/gid and limits)
//! followed by `-- arrow-vmm ARGS`.
//!
//! It enters a new PID namespace and forks: the child (PID 1 there) builds the
//! rest of the jail (mount namespace with a tmpfs root holding only the given
//! paths, at their host paths; new IPC, UTS, network and cgroup namespaces),
//! drops to the unprivileged uid with `no_new_privs` and execs arrow-vmm; this
//! process stays as arrowd's child, relays signals to the VMM and exits as it
//! did. Killing this process kills the VMM (parent-death signal).

mod child;
mod mounts;
mod relay;

use std::ffi::OsString;

use anyhow::{Context, Result};
use arrow_service::jail::JailSpec;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::ForkResult;

/// Exit code for a failure of the jail itself (arrow-vmm's code for its own errors).
const FAILED: u8 = 125;

fn main() -> std::process::ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("arrow-jailer: {e:#}");
            std::process::ExitCode::from(FAILED)
        }
    }
}

fn run(args: &[OsString]) -> Result<u8> {
    let spec = JailSpec::parse(args).context("bad command line")?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("must run as root (it builds namespaces and mounts, then drops to uid {}); arrowd does this when it runs as root", spec.uid);
    }
    // Blocked from now on, so none is lost before the relay loop waits for it;
    // the child unblocks them before exec.
    let relayed = relay::signal_set();
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&relayed), Some(&mut old))
        .context("cannot block signals")?;
    // Closed (by our exit) when this process dies: the child checks it after
    // setting its parent-death signal, in case we died before that.
    let (alive_r, alive_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // Its write end is closed by the child's exec (or death): until then the child is
    // not the VMM yet, and a signal for the VMM must not be left pending in it.
    let (exec_r, exec_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .context("cannot create a pipe")?;
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).context("cannot create a PID namespace")?;
    // SAFETY: this process has a single thread (nothing here starts one), so
    // the child may run any code after fork.
    match unsafe { nix::unistd::fork() }.context("cannot fork")? {
        ForkResult::Child => {
            drop(alive_w);
            drop(exec_r);
            // Kept open until the exec closes it.
            let _exec_w = exec_w;
            let e = child::exec_vmm(&spec, alive_r, &old);
            // exec_vmm only returns on failure.
            eprintln!(
                "arrow-jailer: cannot start {} jailed: {e:#}",
                spec.vmm.display()
            );
            std::process::exit(FAILED.into());
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            drop(exec_w);
            let status = relay::until_exit(child, &relayed, &exec_r)?;
            drop(alive_w);
            Ok(relay::exit_like(status))
        }
    }
}
