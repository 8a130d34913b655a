//! An instance's volumes at start and stop: the plan (pack made, fs volumes chosen), the
//! virtiofsd processes of its fs volumes, and their failures. A virtiofsd that exits
//! while its instance runs fails the instance with the reason: arrow-vmm stops the VM
//! when the backend hangs up (and arrowd kills it after a grace period if it has not).
//! Each virtiofsd is recorded at spawn (`virtiofsd.json`, [`crate::volumes::record`]);
//! after an arrowd restart the running instances' virtiofsd are watched again
//! ([`Supervisor::adopt_backends`]) and those of instances that are gone are killed
//! ([`Supervisor::reclaim_backends`], [`Supervisor::kill_stray_backends`]).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Supervisor;
use crate::db::Record;
use crate::error::{Error, Result};
use crate::volumes::jail::VfsJail;
use crate::volumes::record::{self, Entry, Seen, Verdict};
use crate::volumes::{virtiofsd, Plan};

/// How long a VMM has to stop by itself after its virtiofsd died.
const BACKEND_GRACE: Duration = Duration::from_secs(3);

/// How often an adopted virtiofsd (not arrowd's child) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// The virtiofsd processes of running instances.
#[derive(Debug)]
pub struct Backends {
    by_instance: Mutex<HashMap<String, Running>>,
    /// What each virtiofsd is started inside.
    jail: VfsJail,
}

#[derive(Debug, Default)]
struct Running {
    /// Each virtiofsd (what its record says).
    procs: Vec<Entry>,
    /// Watched again after an arrowd restart (exit statuses are not known).
    adopted: bool,
    /// arrowd is stopping them (the instance ended).
    stopping: bool,
    /// The first unexpected exit.
    failure: Option<String>,
}

impl Backends {
    /// No virtiofsd yet; each is started inside `jail`.
    pub fn new(jail: VfsJail) -> Backends {
        Backends {
            by_instance: Mutex::new(HashMap::new()),
            jail,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.by_instance.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The failure reason for virtiofsd `e` of the instance in `run_dir` that ended `how`.
fn ended(e: &Entry, how: &str, run_dir: &Path) -> String {
    let tail = virtiofsd::log_tail(run_dir);
    format!(
        "virtiofsd serving volume {} ({}) ended ({how}){}",
        e.host_path,
        e.tag,
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    )
}

/// Kills virtiofsd `e` if it is still the recorded process: first its sandbox's
/// children (the server, PID 1 of virtiofsd's PID namespace, which otherwise only gets
/// SIGTERM when its parent dies, and a stopped one never acts on that), then itself.
/// Returns whether it was still there.
fn kill_backend(e: &Entry) -> bool {
    if !crate::procfs::is_alive(e.pid, e.start) {
        return false;
    }
    for (pid, start) in crate::procfs::children(e.pid) {
        crate::procfs::signal(pid, start, libc::SIGKILL);
    }
    crate::procfs::signal(e.pid, e.start, libc::SIGKILL)
}

/// The volume tag whose backend arrow-vmm says hung up, from its exit reason
/// ("… vhost-user-fs vol0: backend fs-vol0.sock closed the connection …", written by
/// arrow-vmm's `VhostUserFs::backend_gone`).
fn backend_gone_tag(vmm_reason: &str) -> Option<&str> {
    if !vmm_reason.contains("closed the connection") {
        return None;
    }
    let rest = &vmm_reason[vmm_reason.find("vhost-user-fs ")? + "vhost-user-fs ".len()..];
    rest.split(':').next().filter(|t| !t.is_empty())
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

    /// Starts one virtiofsd (`program`) per fs volume of `plan`, in the instance's cgroup
    /// (`cgroup_procs`) when it has one; each listens on its socket in the run directory
    /// when this returns, and is recorded there. On error none is left running.
    pub(crate) fn start_backends(
        self: &Arc<Self>,
        rec: &Record,
        plan: &Plan,
        program: Option<&Path>,
        cgroup_procs: Option<&CString>,
    ) -> std::result::Result<(), String> {
        let Some(program) = program.filter(|_| plan.has_fs()) else {
            return Ok(());
        };
        let run_dir = self.run_dir(&rec.id);
        self.backends
            .lock()
            .insert(rec.id.clone(), Running::default());
        let launch = virtiofsd::Launch {
            program,
            run_dir: &run_dir,
            owner: self.jail.ids(),
            jail: &self.backends.jail,
            cgroup_procs,
        };
        let mut recorded = Vec::new();
        for p in plan.fs() {
            let started = super::lifecycle::spawn_token()
                .and_then(|token| virtiofsd::spawn(launch, p, &token))
                .and_then(|b| {
                    let e = self.watch_backend(&rec.id, b);
                    recorded.push(e);
                    // Rewritten after each spawn: a crash of arrowd leaves none unrecorded.
                    record::write(&run_dir, &recorded)
                });
            if let Err(e) = started {
                self.stop_backends(&rec.id);
                return Err(format!(
                    "cannot start virtiofsd {} for volume {}: {e}",
                    program.display(),
                    p.volume.host_path
                ));
            }
        }
        Ok(())
    }

    /// Watches a virtiofsd arrowd just spawned; returns its record entry.
    fn watch_backend(self: &Arc<Self>, id: &str, mut b: virtiofsd::Backend) -> Entry {
        let pid = b
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        let entry = Entry {
            tag: b.tag.clone(),
            host_path: b.host_path.clone(),
            pid,
            start: crate::procfs::raw_start_time(pid).unwrap_or(0),
            token: std::mem::take(&mut b.token),
        };
        if let Some(r) = self.backends.lock().get_mut(id) {
            r.procs.push(entry.clone());
        }
        let sup = Arc::clone(self);
        let id = id.to_owned();
        let e = entry.clone();
        tokio::spawn(async move {
            let status = b.child.wait().await;
            // virtiofsd exits 0 when its VMM hangs up (the VM ended).
            let clean = matches!(&status, Ok(s) if s.success());
            let how = match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            if let Some(why) = sup.backend_ended(&id, &e, clean, &how) {
                sup.fail_for_backend(&id, why).await;
            }
        });
        entry
    }

    /// Records that virtiofsd `e` of `id` ended; returns the failure reason when that
    /// fails the instance (it was neither stopped by arrowd nor a clean exit).
    fn backend_ended(&self, id: &str, e: &Entry, clean: bool, how: &str) -> Option<String> {
        let mut map = self.backends.lock();
        let r = map.get_mut(id)?;
        r.procs.retain(|p| p.pid != e.pid);
        if r.stopping || r.failure.is_some() || clean {
            return None;
        }
        let why = ended(e, how, &self.run_dir(id));
        r.failure = Some(why.clone());
        Some(why)
    }

    /// A virtiofsd of `id` failed: its VMM stops by itself (the backend hung up), or is
    /// killed after [`BACKEND_GRACE`].
    async fn fail_for_backend(&self, id: &str, why: String) {
        tracing::warn!(instance = %id, "{why}; the instance fails");
        tokio::time::sleep(BACKEND_GRACE).await;
        if matches!(self.db.get(id), Ok(Some(r)) if r.state.is_active()) {
            let _ = self.signal_vmm(id, libc::SIGKILL).await;
        }
    }

    /// Watches a virtiofsd that still runs after an arrowd restart (not our child: poll
    /// /proc). Its exit status is unknown: when it ends while the VMM keeps running past
    /// [`BACKEND_GRACE`], the instance fails; when the VMM ends, [`Self::note_vmm_end`]
    /// tells from the VMM's exit reason whether the backend's end stopped it.
    fn watch_adopted_backend(self: &Arc<Self>, id: &str, e: Entry) {
        let sup = Arc::clone(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            while crate::procfs::is_alive(e.pid, e.start) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            {
                let map = sup.backends.lock();
                match map.get(&id) {
                    Some(r) if !r.stopping && r.failure.is_none() => {}
                    _ => return,
                }
            }
            // The VMM sees the hang-up and ends (then note_vmm_end decides), or not.
            tokio::time::sleep(BACKEND_GRACE).await;
            let how = "while its instance ran; it was re-adopted after an arrowd restart, so its exit status is unknown";
            if let Some(why) = sup.backend_ended(&id, &e, false, how) {
                tracing::warn!(instance = %id, "{why}; the instance fails");
                if matches!(sup.db.get(&id), Ok(Some(r)) if r.state.is_active()) {
                    let _ = sup.signal_vmm(&id, libc::SIGKILL).await;
                }
            }
        });
    }

    /// The VMM of `id` ended with exit reason `vmm_reason`: for re-adopted virtiofsd
    /// (whose exit status arrowd cannot see) the VMM saying its backend hung up is the
    /// virtiofsd's failure.
    pub(crate) fn note_vmm_end(&self, id: &str, vmm_reason: Option<&str>) {
        let Some(tag) = vmm_reason.and_then(backend_gone_tag) else {
            return;
        };
        let mut map = self.backends.lock();
        let Some(r) = map.get_mut(id) else {
            return;
        };
        if !r.adopted || r.stopping || r.failure.is_some() {
            return;
        }
        if let Some(e) = r.procs.iter().find(|e| e.tag == tag) {
            r.failure = Some(ended(
                e,
                "while its instance ran, and arrow-vmm stopped the VM; arrowd restarted since it spawned it, so its exit status is unknown",
                &self.run_dir(id),
            ));
        }
    }

    /// After an arrowd restart: takes back the recorded virtiofsd of instance `id` as
    /// adopted (the running ones and those that ended while arrowd was down; a PID now
    /// held by another process is left alone). Returns them.
    fn load_backends(&self, id: &str) -> Vec<Entry> {
        let entries = match record::read(&self.run_dir(id)) {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(instance = %id, "{why}; its virtiofsd processes (if any) are not watched");
                return Vec::new();
            }
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let mine: Vec<Entry> = entries
            .into_iter()
            .filter(|e| match record::verdict(e, &Seen::look(e.pid), me) {
                Verdict::Ours | Verdict::Gone => true,
                Verdict::NotOurs => {
                    tracing::warn!(instance = %id, pid = e.pid, "the recorded virtiofsd's PID belongs to another process now: left alone");
                    false
                }
            })
            .collect();
        if !mine.is_empty() {
            self.backends.lock().insert(
                id.to_owned(),
                Running {
                    procs: mine.clone(),
                    adopted: true,
                    ..Running::default()
                },
            );
        }
        mine
    }

    /// After an arrowd restart, for instance `id` whose VMM was re-adopted: watches its
    /// recorded virtiofsd again. Returns how many.
    pub(crate) fn adopt_backends(self: &Arc<Self>, id: &str) -> usize {
        let mine = self.load_backends(id);
        let n = mine.len();
        for e in mine {
            tracing::info!(instance = %id, pid = e.pid, volume = %e.host_path, "re-adopted virtiofsd");
            self.watch_adopted_backend(id, e);
        }
        n
    }

    /// After an arrowd restart, for instance `id` whose VMM is gone: takes its recorded
    /// virtiofsd back, so that closing its record ([`Self::stop_backends`]) kills the
    /// ones still running and reads the VMM's exit reason as for adopted ones. Returns
    /// how many still run.
    pub(crate) fn reclaim_backends(&self, id: &str) -> usize {
        let live: Vec<Entry> = self
            .load_backends(id)
            .into_iter()
            .filter(|e| crate::procfs::is_alive(e.pid, e.start))
            .collect();
        for e in &live {
            tracing::warn!(instance = %id, pid = e.pid, volume = %e.host_path, "killing a virtiofsd whose instance is no longer running");
        }
        live.len()
    }

    /// After an arrowd restart: kills the recorded virtiofsd of every run directory
    /// not in `handled` (the instances [`Self::adopt_backends`] and
    /// [`Self::reclaim_backends`] took care of): their instances are not running. Only
    /// processes the record proves arrowd started are touched ([`record::verdict`]).
    /// Returns how many were killed.
    pub(crate) fn kill_stray_backends(&self, handled: &HashSet<String>) -> usize {
        let Ok(dirs) = std::fs::read_dir(self.cfg.run_root()) else {
            return 0;
        };
        let mut killed = 0;
        for d in dirs.flatten() {
            let Some(id) = d.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if handled.contains(&id) || !d.path().join(record::FILE).exists() {
                continue;
            }
            killed += self.reclaim_backends(&id);
            self.stop_backends(&id);
            record::remove(&d.path());
        }
        killed
    }

    /// The reason the instance's virtiofsd failed, if one did; stops the others and
    /// removes their record.
    pub(crate) fn stop_backends(&self, id: &str) -> Option<String> {
        let running = self.backends.lock().remove(id)?;
        for e in &running.procs {
            kill_backend(e);
        }
        record::remove(&self.run_dir(id));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_saying_its_backend_hung_up_names_the_volume() {
        // As arrow-vmm's report writes it (StopReason::VmmError of backend_gone).
        let r = "arrow-vmm failed while running the guest: vhost-user-fs vol1: backend fs-vol1.sock closed the connection (did virtiofsd exit?)";
        assert_eq!(backend_gone_tag(r), Some("vol1"));
        for other in [
            "the app exited with 0",
            "arrow-vmm failed while running the guest: vhost-user-fs vol0: cannot map guest memory",
            "closed the connection",
        ] {
            assert_eq!(backend_gone_tag(other), None, "{other}");
        }
    }
}
