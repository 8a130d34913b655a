//! Restart safety: on startup, re-adopt every arrow-vmm of this arrowd that still runs
//! (PID and start time must match the record, and the process must carry the spawn
//! token arrowd wrote into its run directory: see `procfs::SPAWN_TOKEN_ENV`), close the
//! records of the vanished ones, and kill VMMs of ours that no record claims (so nothing
//! is orphaned). A process that only looks like arrow-vmm is left alone. The same for
//! the virtiofsd processes recorded in run directories (`virtiofsd.json`): watched again
//! with their re-adopted VMM, killed otherwise (supervisor/volumes.rs).

use std::sync::Arc;

use super::Supervisor;
use crate::clock::now_ms;
use crate::error::Result;
use crate::model::State;
use crate::procfs::{self, FoundVmm};
use crate::proxy;

/// What recovery did, for the log and the tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recovery {
    /// Running VMMs now tracked again.
    pub adopted: usize,
    /// Records closed because their VMM was gone.
    pub closed: usize,
    /// VMMs nobody claimed, killed.
    pub strays_killed: usize,
    /// virtiofsd processes of re-adopted instances, watched again.
    pub backends_adopted: usize,
    /// virtiofsd processes of instances no longer running, killed.
    pub backends_killed: usize,
}

impl Supervisor {
    /// Reconciles the database with the running arrow-vmm processes. Call once at startup.
    pub async fn recover(self: &Arc<Self>) -> Result<Recovery> {
        let mut found: Vec<FoundVmm> = Vec::new();
        for f in procfs::scan_vmms(&self.cfg.run_root()) {
            if f.is_ours(&self.run_dir(&f.id)) {
                found.push(f);
            } else {
                // Looks like one of ours (name, report path) but lacks the token
                // this arrowd gave its VMM: never adopt, never signal it.
                tracing::warn!(pid = f.pid, run_dir = %f.id, uid = f.uids.1, "ignoring a process that looks like arrow-vmm but was not spawned by this arrowd");
            }
        }
        let mut out = Recovery::default();
        // Instances whose virtiofsd processes were taken care of.
        let mut handled = std::collections::HashSet::new();
        for rec in self.db.list()? {
            if !rec.state.is_active() {
                continue;
            }
            handled.insert(rec.id.clone());
            let pos = found.iter().position(|f| f.id == rec.id);
            let vmm = pos.map(|i| found.swap_remove(i));
            let matches = match (&vmm, rec.pid, rec.pid_start) {
                (Some(f), Some(pid), Some(start)) => f.pid == pid && f.start == start,
                // Spawned, but arrowd died before recording the PID: the run directory
                // (in its --report path) names the instance.
                (Some(_), None, _) => rec.state == State::Starting,
                _ => false,
            };
            match vmm {
                Some(f) if matches => {
                    self.db
                        .set_running(&rec.id, f.pid, f.start, rec.cgroup.as_deref())?;
                    if rec.state == State::Stopping {
                        self.db
                            .set_state(&rec.id, &[State::Running], State::Stopping)?;
                    }
                    let vsock = self.run_dir(&rec.id).join(super::VSOCK_SOCK);
                    match proxy::start(&rec.id, &rec.spec.ports, &vsock).await {
                        Ok(p) => self.set_proxies(&rec.id, Some(p)),
                        Err(e) => tracing::warn!(instance = %rec.id, "cannot re-export ports: {e}"),
                    }
                    tracing::info!(instance = %rec.id, pid = f.pid, "re-adopted running instance");
                    self.monitor_adopted(rec.id.clone(), f.pid, f.start);
                    out.backends_adopted += self.adopt_backends(&rec.id);
                    out.adopted += 1;
                }
                other => {
                    if let Some(f) = other {
                        // A VMM in this run directory that is not the recorded one.
                        tracing::warn!(instance = %rec.id, pid = f.pid, "killing an arrow-vmm that does not match the record");
                        procfs::signal(f.pid, f.start, libc::SIGKILL);
                    }
                    // Killed when the record is closed (finish_run, or below).
                    out.backends_killed += self.reclaim_backends(&rec.id);
                    if rec.state == State::Starting && rec.pid.is_none() {
                        self.db.finish(
                            &rec.id,
                            State::Failed,
                            None,
                            "arrowd stopped while starting this instance; start it again",
                            now_ms(),
                        )?;
                        self.stop_backends(&rec.id);
                    } else {
                        // finish_run reads the exit report if the VMM wrote one.
                        self.finish_run(&rec.id, None, None);
                    }
                    tracing::warn!(instance = %rec.id, "instance's arrow-vmm was gone at restart; record closed");
                    out.closed += 1;
                }
            }
        }
        for f in found {
            tracing::warn!(pid = f.pid, run_dir = %f.id, "killing an arrow-vmm no instance record claims");
            if procfs::signal(f.pid, f.start, libc::SIGKILL) {
                out.strays_killed += 1;
            }
        }
        out.backends_killed += self.kill_stray_backends(&handled);
        self.changed();
        tracing::info!(
            adopted = out.adopted,
            closed = out.closed,
            strays_killed = out.strays_killed,
            backends_adopted = out.backends_adopted,
            backends_killed = out.backends_killed,
            "recovery done"
        );
        Ok(out)
    }
}
