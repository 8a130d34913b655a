//! An instance's volumes at start and stop: the plan (pack made, fs volumes chosen), the
//! virtiofsd processes of its fs volumes, and their failures. A virtiofsd that exits
//! while its instance runs fails the instance with the reason: arrow-vmm stops the VM
//! when the backend hangs up (and arrowd kills it after a grace period if it has not).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Supervisor;
use crate::db::Record;
use crate::error::{Error, Result};
use crate::volumes::{virtiofsd, Plan};

/// How long a VMM has to stop by itself after its virtiofsd died.
const BACKEND_GRACE: Duration = Duration::from_secs(3);

/// The virtiofsd processes of running instances.
#[derive(Debug, Default)]
pub struct Backends {
    by_instance: Mutex<HashMap<String, Running>>,
}

#[derive(Debug, Default)]
struct Running {
    /// PID and start time of each virtiofsd.
    pids: Vec<(i32, u64)>,
    /// arrowd is stopping them (the instance ended).
    stopping: bool,
    /// The first unexpected exit.
    failure: Option<String>,
}

impl Backends {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.by_instance.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Supervisor {
    /// Applies the volume rule for a start of `rec` (makes its pack).
    pub(crate) async fn plan_volumes(&self, rec: &Record) -> Result<Plan> {
        if rec.spec.volumes.is_empty() {
            return Ok(Plan::default());
        }
        let volumes = rec.spec.volumes.clone();
        let run_dir = self.run_dir(&rec.id);
        let staging = self.cfg.run_root();
        let t0 = std::time::Instant::now();
        let plan = tokio::task::spawn_blocking(move || Plan::make(&volumes, &run_dir, &staging))
            .await
            .map_err(|e| Error::Internal(format!("volume task failed: {e}")))?
            .map_err(|why| {
                Error::Invalid(format!(
                    "cannot give instance {} its volumes: {why}",
                    rec.name
                ))
            })?;
        tracing::info!(
            instance = %rec.id,
            volumes = plan.placed.len(),
            fs = plan.fs().count(),
            pack_bytes = plan.pack_size,
            ms = t0.elapsed().as_millis() as u64,
            "volumes ready"
        );
        Ok(plan)
    }

    /// The virtiofsd program, when `plan` needs one (installed on first use: minutes,
    /// off the async workers).
    pub(crate) async fn virtiofsd_for(&self, plan: &Plan) -> Result<Option<PathBuf>> {
        if !plan.has_fs() {
            return Ok(None);
        }
        let configured = self.cfg.virtiofsd.clone();
        tokio::task::spawn_blocking(move || virtiofsd::program(configured.as_deref()))
            .await
            .map_err(|e| Error::Internal(format!("virtiofsd lookup failed: {e}")))?
            .map(Some)
            .map_err(Error::Internal)
    }

    /// Starts one virtiofsd (`program`) per fs volume of `plan`; each listens on its
    /// socket in the run directory when this returns. On error none is left running.
    pub(crate) fn start_backends(
        self: &Arc<Self>,
        rec: &Record,
        plan: &Plan,
        program: Option<&Path>,
    ) -> std::result::Result<(), String> {
        let Some(program) = program.filter(|_| plan.has_fs()) else {
            return Ok(());
        };
        let run_dir = self.run_dir(&rec.id);
        self.backends
            .lock()
            .insert(rec.id.clone(), Running::default());
        for p in plan.fs() {
            let b = match virtiofsd::spawn(program, p, &run_dir, self.jail.ids()) {
                Ok(b) => b,
                Err(e) => {
                    self.stop_backends(&rec.id);
                    return Err(format!(
                        "cannot start virtiofsd {} for volume {}: {e}",
                        program.display(),
                        p.volume.host_path
                    ));
                }
            };
            self.watch_backend(&rec.id, b);
        }
        Ok(())
    }

    fn watch_backend(self: &Arc<Self>, id: &str, mut b: virtiofsd::Backend) {
        let pid = b
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        let start = crate::procfs::raw_start_time(pid).unwrap_or(0);
        if let Some(r) = self.backends.lock().get_mut(id) {
            r.pids.push((pid, start));
        }
        let sup = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            let status = b.child.wait().await;
            let failed = {
                let mut map = sup.backends.lock();
                match map.get_mut(&id) {
                    Some(r) => {
                        r.pids.retain(|(p, _)| *p != pid);
                        // virtiofsd exits 0 when its VMM hangs up (the VM ended).
                        let clean = matches!(&status, Ok(s) if s.success());
                        if r.stopping || r.failure.is_some() || clean {
                            None
                        } else {
                            let how = match status {
                                Ok(s) => s.to_string(),
                                Err(e) => e.to_string(),
                            };
                            let tail = virtiofsd::log_tail(&sup.run_dir(&id));
                            let why = format!(
                                "virtiofsd serving volume {} ({}) ended ({how}){}",
                                b.host_path,
                                b.tag,
                                if tail.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {tail}")
                                }
                            );
                            r.failure = Some(why.clone());
                            Some(why)
                        }
                    }
                    None => None,
                }
            };
            if let Some(why) = failed {
                tracing::warn!(instance = %id, "{why}; the instance fails");
                tokio::time::sleep(BACKEND_GRACE).await;
                if matches!(sup.db.get(&id), Ok(Some(r)) if r.state.is_active()) {
                    let _ = sup.signal_vmm(&id, libc::SIGKILL).await;
                }
            }
        });
    }

    /// The reason the instance's virtiofsd failed, if one did; stops the others.
    pub(crate) fn stop_backends(&self, id: &str) -> Option<String> {
        let running = self.backends.lock().remove(id)?;
        for (pid, start) in &running.pids {
            crate::procfs::signal(*pid, *start, libc::SIGKILL);
        }
        running.failure
    }

    /// Marks the instance's virtiofsd processes as being stopped by arrowd (their exit
    /// is then no failure).
    pub(crate) fn backends_stopping(&self, id: &str) {
        if let Some(r) = self.backends.lock().get_mut(id) {
            r.stopping = true;
        }
    }
}
