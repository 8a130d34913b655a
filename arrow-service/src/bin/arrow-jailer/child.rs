//! The jailer's child, PID 1 of the new PID namespace: the remaining
//! namespaces, the root, limits, credentials, then exec of arrow-vmm.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use arrow_service::jail::JailSpec;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};

/// Environment variables the VMM keeps; all others (arrowd's spawn token among
/// them) stay outside.
const KEPT_ENV: [&str; 3] = ["NO_COLOR", "RUST_LOG", "RUST_BACKTRACE"];

/// Builds the jail and execs the VMM; returns only on failure.
pub fn exec_vmm(spec: &JailSpec, parent_alive: OwnedFd, old_mask: &SigSet) -> anyhow::Error {
    match setup(spec, parent_alive, old_mask) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn setup(
    spec: &JailSpec,
    parent_alive: OwnedFd,
    old_mask: &SigSet,
) -> Result<std::convert::Infallible> {
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .context("cannot create the mount, IPC, UTS, network and cgroup namespaces")?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    crate::mounts::enter_root(spec)?;
    nix::unistd::sethostname("arrow-vmm").context("cannot set the jail's hostname")?;
    nix::unistd::chdir(&spec.cwd)
        .with_context(|| format!("cannot enter {} in the jail", spec.cwd.display()))?;
    // What the VMM creates is its own only (sockets, logs, snapshots).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, spec.max_files, spec.max_files)
        .with_context(|| format!("cannot limit open files to {}", spec.max_files))?;
    nix::sys::resource::setrlimit(
        Resource::RLIMIT_FSIZE,
        spec.max_file_bytes,
        spec.max_file_bytes,
    )
    .with_context(|| format!("cannot limit file size to {} bytes", spec.max_file_bytes))?;
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    nix::unistd::setgroups(&[gid]).context("cannot set supplementary groups")?;
    nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("cannot change to gid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("cannot change to uid {uid}"))?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        anyhow::bail!("could get root back after dropping to uid {uid}; refusing to run");
    }
    nix::sys::prctl::set_no_new_privs().context("cannot set no_new_privs")?;
    // After the uid change, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .context("cannot set the parent-death signal")?;
    let mut fds = [nix::poll::PollFd::new(
        parent_alive.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).context("cannot check the jailer")?;
    if fds[0]
        .revents()
        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    {
        anyhow::bail!("the jailer died before the VMM started");
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None)
        .context("cannot restore the signal mask")?;
    let cstr = |b: &[u8]| CString::new(b).context("an argument contains a NUL byte");
    let prog = cstr(spec.vmm.as_os_str().as_bytes())?;
    let mut argv = vec![prog.clone()];
    for a in &spec.vmm_args {
        argv.push(cstr(a.as_bytes())?);
    }
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        if KEPT_ENV.iter().any(|x| k == *x) {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstr(&kv)?);
        }
    }
    nix::unistd::execve(&prog, &argv, &env)
        .with_context(|| format!("cannot execute {}", spec.vmm.display()))
}
