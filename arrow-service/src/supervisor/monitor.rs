//! Watching a running arrow-vmm: its exit (as our child, or by polling /proc for an
//! adopted one), the start latency (APP_STARTED in its log) and the final record.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Supervisor, REPORT, VMM_LOG};
use crate::clock::now_ms;
use crate::model::State;
use crate::procfs;

/// The fields of arrow-vmm's `--report` file that arrowd uses.
#[derive(Debug, Deserialize)]
struct Report {
    exit_code: i32,
    reason: String,
    app_started_us: Option<u64>,
}

fn read_report(run_dir: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(run_dir.join(REPORT)).ok()?;
    serde_json::from_str(&text).ok()
}

fn app_started(run_dir: &Path) -> bool {
    std::fs::read(run_dir.join(VMM_LOG))
        .map(|b| b.windows(11).any(|w| w == b"APP_STARTED"))
        .unwrap_or(false)
}

impl Supervisor {
    /// Watches a child arrowd spawned itself. `track_latency`: record spawn → APP_STARTED
    /// as the start latency (a clone's was recorded when it started).
    pub(crate) fn monitor_child(
        self: &Arc<Self>,
        id: String,
        mut child: tokio::process::Child,
        track_latency: bool,
    ) {
        let sup = Arc::clone(self);
        tokio::spawn(async move {
            let run_dir = sup.run_dir(&id);
            let spawned = Instant::now();
            let mut latency_known = !track_latency;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let status = loop {
                tokio::select! {
                    st = child.wait() => break st.ok(),
                    _ = tick.tick(), if !latency_known => {
                        if app_started(&run_dir) {
                            latency_known = true;
                            sup.record_latency(&id, spawned.elapsed());
                        }
                    }
                }
            };
            sup.jailed_vmm_gone(&id).await;
            sup.finish_run(
                &id,
                status,
                if latency_known { None } else { Some(spawned) },
            );
        });
    }

    /// A jailed arrow-vmm dies of its parent-death signal just after its arrow-jailer
    /// (which is what arrowd waits for): the run is over only once the VMM is gone too,
    /// so that `rm -f` and stop return with its memory given back and its cgroup empty
    /// (removing a cgroup that still holds it fails). Waits at most 5 s; a VMM not under
    /// a jailer was the process waited for and is not found here.
    async fn jailed_vmm_gone(&self, id: &str) {
        let root = self.cfg.run_root();
        let deadline = Instant::now() + Duration::from_secs(5);
        while procfs::scan_vmms(&root).iter().any(|v| v.id == id) {
            if Instant::now() >= deadline {
                tracing::warn!(
                    instance = id,
                    "arrow-vmm still runs 5 s after its jailer ended; recording the end of the run anyway"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Watches an arrow-vmm adopted after a restart (not our child: poll /proc).
    pub(super) fn monitor_adopted(self: &Arc<Self>, id: String, pid: i32, start: u64) {
        let sup = Arc::clone(self);
        tokio::spawn(async move {
            while procfs::is_alive(pid, start) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sup.jailed_vmm_gone(&id).await;
            sup.finish_run(&id, None, None);
        });
    }

    pub(crate) fn record_latency(&self, id: &str, elapsed: Duration) {
        let ms = elapsed.as_millis() as u64;
        self.metrics.start_latency(ms);
        if let Err(e) = self.db.set_start_latency(id, ms as i64) {
            tracing::warn!(instance = id, "cannot record start latency: {e}");
        }
    }

    /// Records the end of a run. `status` is known for our own children; otherwise the
    /// exit report tells. `spawned` is set when the start latency is still unknown.
    pub(super) fn finish_run(
        &self,
        id: &str,
        status: Option<std::process::ExitStatus>,
        spawned: Option<Instant>,
    ) {
        let run_dir = self.run_dir(id);
        let report = read_report(&run_dir);
        if let (Some(_), Some(r)) = (spawned, &report) {
            if let Some(us) = r.app_started_us {
                self.record_latency(id, Duration::from_micros(us));
            }
        }
        let stop_requested = self.mark_stopping(id, false);
        let sent = self.mark_signalled(id, None);
        let (state, code, reason) = end_of_run(report.as_ref(), status, stop_requested, sent);
        // A volume's virtiofsd that failed is why the VM stopped.
        self.note_vmm_end(id, report.as_ref().map(|r| r.reason.as_str()));
        let (state, code, reason) = match self.stop_backends(id) {
            Some(why) if !stop_requested => (State::Failed, code, why),
            _ => (state, code, reason),
        };
        let crashed = matches!(code, Some(122..=125)) || state == State::Failed;
        if crashed && !stop_requested {
            self.metrics.failure();
        }
        match self.db.finish(id, state, code, &reason, now_ms()) {
            Ok(true) => tracing::info!(instance = id, ?code, %reason, "finished"),
            Ok(false) => {}
            Err(e) => tracing::error!(instance = id, "cannot record the end of a run: {e}"),
        }
        self.set_proxies(id, None);
        if let Ok(Some(rec)) = self.db.get(id) {
            if let Some(cg) = &rec.cgroup {
                self.cgroups.remove(cg);
            }
        }
        self.changed();
    }
}

/// How a run ended: the VMM's report when it wrote one; otherwise the process
/// status, which is a failure unless arrowd asked for that end (a stop, or the
/// very signal it died of): a VMM killed or crashed behind arrowd's back lost
/// its VM.
fn end_of_run(
    report: Option<&Report>,
    status: Option<std::process::ExitStatus>,
    stop_requested: bool,
    sent: Option<i32>,
) -> (State, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(r) = report {
        return (State::Exited, Some(r.exit_code), r.reason.clone());
    }
    let Some(st) = status else {
        return (
            State::Failed,
            None,
            "arrow-vmm ended while arrowd was not its parent and left no exit report (killed by SIGKILL?)".to_owned(),
        );
    };
    match (st.code(), st.signal()) {
        (Some(c), _) if stop_requested => (
            State::Exited,
            Some(c),
            format!("arrow-vmm exited with {c} (no report)"),
        ),
        (Some(c), _) => (
            State::Failed,
            Some(c),
            format!("arrow-vmm exited with {c} without an exit report: the VM was lost (see arrowd's log and the instance's vmm.log)"),
        ),
        (None, Some(sig)) if stop_requested || sent == Some(sig) => (
            State::Exited,
            Some(128 + sig),
            format!("arrow-vmm was killed by signal {sig} ({})", signal_name(sig)),
        ),
        (None, Some(sig)) => (
            State::Failed,
            Some(128 + sig),
            format!(
                "arrow-vmm was killed by signal {sig} ({}), which arrowd did not send: the VM was lost (the kernel's OOM killer or someone's kill; see the host's kernel log)",
                signal_name(sig)
            ),
        ),
        (None, None) => (
            State::Failed,
            None,
            "arrow-vmm ended for an unknown reason".to_owned(),
        ),
    }
}

fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig).map_or("a real-time signal", |s| s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn killed_by(sig: i32) -> Option<std::process::ExitStatus> {
        Some(std::process::ExitStatus::from_raw(sig))
    }

    #[test]
    fn a_signal_arrowd_did_not_send_fails_the_instance() {
        let (state, code, reason) = end_of_run(None, killed_by(libc::SIGKILL), false, None);
        assert_eq!((state, code), (State::Failed, Some(137)));
        assert!(reason.contains("signal 9 (SIGKILL)"), "{reason}");
        assert!(reason.contains("did not send"), "{reason}");
        // arrowd sent USR1, the VMM died of SIGKILL: still lost.
        let (state, ..) = end_of_run(None, killed_by(libc::SIGKILL), false, Some(libc::SIGUSR1));
        assert_eq!(state, State::Failed);
    }

    #[test]
    fn the_signal_arrowd_sent_ends_the_run_as_asked() {
        let (state, code, _) =
            end_of_run(None, killed_by(libc::SIGUSR1), false, Some(libc::SIGUSR1));
        assert_eq!((state, code), (State::Exited, Some(128 + libc::SIGUSR1)));
        let (state, code, _) = end_of_run(None, killed_by(libc::SIGKILL), true, None);
        assert_eq!((state, code), (State::Exited, Some(137)));
    }

    #[test]
    fn an_exit_without_report_is_a_failure_unless_stopping() {
        let st = Some(std::process::ExitStatus::from_raw(1 << 8));
        assert_eq!(end_of_run(None, st, false, None).0, State::Failed);
        assert_eq!(end_of_run(None, st, true, None).0, State::Exited);
        let report = Report {
            exit_code: 3,
            reason: "the app exited with 3".into(),
            app_started_us: None,
        };
        let (state, code, reason) = end_of_run(Some(&report), killed_by(9), false, None);
        assert_eq!(
            (state, code, reason.as_str()),
            (State::Exited, Some(3), "the app exited with 3")
        );
    }
}
