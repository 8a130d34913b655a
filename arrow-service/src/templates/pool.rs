//! The warm pool: per template, a few `arrow-vmm restore --clone --pool` processes that
//! have done everything a clone start needs except mapping the template's memory and
//! loading its state. A start takes one (the instance gets its ID, run directory and
//! CID) and sends it `PUT /vm/start`; a background task refills the pool, retires dead
//! VMMs, and backs off when pooled VMMs cannot be started.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::Method;

use super::clone::vmm_api;
use super::db::{self, TemplateRecord};
use super::model::{PoolInfo, TemplateState};
use super::POOL_CID_BASE;
use crate::error::Result;
use crate::model::InstanceSpec;
use crate::supervisor::create::new_id;
use crate::supervisor::{Supervisor, API_SOCK, VMM_LOG, VSOCK_SOCK};

/// A pooled VMM waiting for a start.
pub struct Slot {
    /// Its ID: the ID of the instance it becomes (its run directory's name).
    pub id: String,
    /// Its vsock CID.
    pub cid: u32,
    /// The template it restores.
    pub template_id: String,
    /// The process (arrowd's child).
    pub child: tokio::process::Child,
    /// PID.
    pub pid: i32,
    /// PID start time.
    pub start: u64,
    /// `GET /vm` said `pooled`: it can take a start.
    pub ready: bool,
    spawned: Instant,
}

#[derive(Default)]
struct Pool {
    slots: Vec<Slot>,
    hits: u64,
    misses: u64,
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Runtime state of the templates: warm pools and VMMs claimed by starting instances.
#[derive(Default)]
pub struct Templates {
    pools: Mutex<HashMap<String, Pool>>,
    claimed: Mutex<HashMap<String, Slot>>,
    next_cid: AtomicU32,
    wake: tokio::sync::Notify,
    /// Held while the generic template is being made (one build at a time).
    pub(super) generic_build: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pooled VMM that never says `pooled` within this time is replaced.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between attempts when pooled VMMs keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Templates {
    /// Wakes the refill task.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Takes a ready pooled VMM of `template_id`, if there is one.
    pub fn take(&self, template_id: &str) -> Option<Slot> {
        let mut pools = lock(&self.pools);
        let pool = pools.get_mut(template_id)?;
        let pos = pool.slots.iter().position(|s| s.ready)?;
        let slot = pool.slots.swap_remove(pos);
        drop(pools);
        self.wake();
        Some(slot)
    }

    /// Returns an unused slot to its pool.
    pub fn put_back(&self, slot: Slot) {
        lock(&self.pools)
            .entry(slot.template_id.clone())
            .or_default()
            .slots
            .push(slot);
    }

    /// Keeps a taken slot for the start of the instance with the same ID.
    pub fn claim(&self, slot: Slot) {
        lock(&self.claimed).insert(slot.id.clone(), slot);
    }

    /// The slot claimed for instance `id`.
    pub fn take_claimed(&self, id: &str) -> Option<Slot> {
        lock(&self.claimed).remove(id)
    }

    /// Counts a start served by the pool.
    pub fn count_hit(&self, template_id: &str) {
        lock(&self.pools)
            .entry(template_id.to_owned())
            .or_default()
            .hits += 1;
    }

    /// Counts a clone start the pool could not serve.
    pub fn count_miss(&self, template_id: &str, why: Option<String>) {
        let mut pools = lock(&self.pools);
        let p = pools.entry(template_id.to_owned()).or_default();
        p.misses += 1;
        if why.is_some() {
            p.last_error = why;
        }
    }

    /// The pool as the API shows it.
    pub fn pool_info(&self, template_id: &str, size: u32) -> PoolInfo {
        let pools = lock(&self.pools);
        let mut info = PoolInfo {
            size,
            ..Default::default()
        };
        if let Some(p) = pools.get(template_id) {
            info.ready = p.slots.iter().filter(|s| s.ready).count() as u32;
            info.starting = p.slots.len() as u32 - info.ready;
            info.hits = p.hits;
            info.misses = p.misses;
            info.last_error = p.last_error.clone();
        }
        info
    }
}

/// chmod a-w on a template's files and directory.
pub fn make_read_only(dir: &Path) {
    set_modes(dir, 0o444, 0o555);
}

/// chmod a-w on one file (the generic template's image slot).
pub fn make_file_read_only(file: &Path) {
    let _ = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444));
}

/// Undoes [`make_read_only`] so the directory can be removed.
pub fn make_writable(dir: &Path) {
    set_modes(dir, 0o644, 0o755);
}

fn set_modes(dir: &Path, file: u32, d: u32) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(file));
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(d));
}

impl Supervisor {
    /// For a create-and-start: the warm VMM this instance will become, if it will be a
    /// clone (of `explicit`, of a matching template, or of the generic template) and that
    /// pool has one ready.
    pub(crate) fn pool_slot_for(
        &self,
        explicit: Option<&TemplateRecord>,
        spec: &InstanceSpec,
    ) -> Option<Slot> {
        let t = match explicit {
            Some(t) => t.clone(),
            None => self
                .matching_template(spec)
                .or_else(|| self.generic_for_spec(spec))?,
        };
        let slot = self.templates.take(&t.id);
        if slot.is_none() && self.pool_target(&t) > 0 {
            self.templates.count_miss(&t.id, None);
        }
        slot
    }

    /// Kills the warm VMM claimed by instance `id`, if its start never took it.
    pub(crate) async fn release_claimed(&self, id: &str) {
        if let Some(s) = self.templates.take_claimed(id) {
            tracing::info!(
                instance = id,
                pid = s.pid,
                "stopping the unused warm VMM of a failed start"
            );
            self.retire(s).await;
        }
    }

    /// Stops and forgets every pooled VMM of a template.
    pub(crate) async fn drain_pool(&self, template_id: &str) {
        let slots = lock(&self.templates.pools)
            .remove(template_id)
            .map(|p| p.slots)
            .unwrap_or_default();
        for s in slots {
            self.retire(s).await;
        }
    }

    /// Kills a pooled VMM and removes its run directory and cgroup.
    async fn retire(&self, mut s: Slot) {
        crate::procfs::signal(s.pid, s.start, libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), s.child.wait()).await;
        let _ = std::fs::remove_dir_all(self.run_dir(&s.id));
        if let Some(root) = self.cgroups_dir(&s.id) {
            self.cgroups.remove(&root);
        }
    }

    fn cgroups_dir(&self, id: &str) -> Option<String> {
        self.cgroups_enabled()
            .then(|| self.cfg.cgroup_root.join(id).display().to_string())
    }

    /// After [`Supervisor::recover`]: run directories no instance claims (warm VMMs of the
    /// previous arrowd, already killed as strays) are removed, templates caught mid-way
    /// are marked failed, instances that were handed a warm VMM that never got its start
    /// get it now, and the refill task starts.
    pub async fn start_templates(self: &Arc<Self>) -> Result<()> {
        db::init(&self.db)?;
        db::prune_clones(&self.db)?;
        for f in crate::procfs::scan_vmms(&self.build_root()) {
            tracing::warn!(pid = f.pid, template = %f.id, "killing the VM of a template that was being created when arrowd stopped");
            crate::procfs::signal(f.pid, f.start, libc::SIGKILL);
        }
        for t in db::list(&self.db)? {
            if t.state == TemplateState::Creating && t.spec.generic {
                // Nobody waits for it: forgotten, so that the next need makes it at once.
                self.remove_generic_files(&t, "arrowd stopped while creating it");
            } else if t.state == TemplateState::Creating {
                db::set_failed(
                    &self.db,
                    &t.id,
                    "arrowd stopped while creating this template: remove it and create it again",
                )?;
                let dir = self.template_dir(&t.id);
                make_writable(&dir);
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        let ids = db::instance_ids(&self.db)?;
        let mut removed = 0;
        for e in std::fs::read_dir(self.cfg.run_root())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only directories named like an instance (16 hex digits) that no record has.
            let like_id = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if like_id && !ids.contains(&name) && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
                if let Some(cg) = self.cgroups_dir(&name) {
                    self.cgroups.remove(&cg);
                }
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed run directories of the previous arrowd's warm pool"
            );
        }
        for rec in self.db.list()? {
            let Ok(Some(c)) = db::clone_of(&self.db, &rec.id) else {
                continue;
            };
            if !rec.state.is_active() || !c.pooled {
                continue;
            }
            let sock = self.run_dir(&rec.id).join(API_SOCK);
            if let Ok(v) = vmm_api(&sock, Method::GET, "/vm", None).await {
                if v["state"] == "pooled" {
                    tracing::info!(instance = %rec.id, "sending the start arrowd did not send before it stopped");
                    // A clone of the generic template gets the image and app it was given.
                    let body = std::fs::read(self.run_dir(&rec.id).join(super::clone::START_BODY))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    if let Err(e) = vmm_api(&sock, Method::PUT, "/vm/start", body).await {
                        tracing::warn!(instance = %rec.id, "cannot start the adopted pooled VMM: {e}");
                    }
                }
            }
        }
        let floor = db::max_cid_from(&self.db, POOL_CID_BASE)?;
        self.templates.next_cid.store(floor + 1, Ordering::SeqCst);
        let sup = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                sup.refill_pools().await;
                let _ = tokio::time::timeout(Duration::from_secs(1), sup.templates.wake.notified())
                    .await;
            }
        });
        Ok(())
    }

    /// One round of pool upkeep.
    async fn refill_pools(&self) {
        let templates = db::list(&self.db).unwrap_or_default();
        let mut targets: HashMap<String, (u32, TemplateRecord)> = HashMap::new();
        for t in templates {
            let n = if t.state == TemplateState::Ready && self.stale_reason(&t).is_none() {
                self.pool_target(&t)
            } else {
                0
            };
            targets.insert(t.id.clone(), (n, t));
        }
        // Retire dead, stuck or surplus VMMs; learn which ones became ready.
        let mut retire = Vec::new();
        let mut probe = Vec::new();
        {
            let mut pools = lock(&self.templates.pools);
            for (tid, pool) in pools.iter_mut() {
                let target = targets.get(tid).map_or(0, |(n, _)| *n) as usize;
                let mut keep = Vec::new();
                for mut s in pool.slots.drain(..) {
                    if let Ok(Some(st)) = s.child.try_wait() {
                        let log = std::fs::read_to_string(self.run_dir(&s.id).join(VMM_LOG))
                            .unwrap_or_default();
                        let last = log.lines().last().unwrap_or("").to_owned();
                        let why = format!("pooled arrow-vmm exited ({st}): {last}");
                        tracing::warn!(template = %tid, "{why}");
                        if !s.ready {
                            pool.failures += 1;
                            let backoff =
                                Duration::from_secs(1 << pool.failures.min(6)).min(MAX_BACKOFF);
                            pool.retry_at = Some(Instant::now() + backoff);
                        }
                        pool.last_error = Some(why);
                        retire.push(s);
                    } else if keep.len() >= target
                        || (!s.ready && s.spawned.elapsed() > SETUP_TIMEOUT)
                    {
                        retire.push(s);
                    } else {
                        if !s.ready {
                            probe.push((tid.clone(), s.id.clone()));
                        }
                        keep.push(s);
                    }
                }
                pool.slots = keep;
            }
        }
        for s in retire {
            self.retire(s).await;
        }
        for (tid, id) in probe {
            let sock = self.run_dir(&id).join(API_SOCK);
            let pooled = matches!(vmm_api(&sock, Method::GET, "/vm", None).await, Ok(v) if v["state"] == "pooled");
            if pooled {
                let mut pools = lock(&self.templates.pools);
                if let Some(p) = pools.get_mut(&tid) {
                    if let Some(s) = p.slots.iter_mut().find(|s| s.id == id) {
                        s.ready = true;
                        p.failures = 0;
                        p.retry_at = None;
                    }
                }
            }
        }
        // Spawn what is missing.
        for (tid, (target, t)) in targets {
            let missing = {
                let mut pools = lock(&self.templates.pools);
                let p = pools.entry(tid.clone()).or_default();
                if p.retry_at.is_some_and(|at| Instant::now() < at) {
                    0
                } else {
                    (target as usize).saturating_sub(p.slots.len())
                }
            };
            for _ in 0..missing {
                match self.spawn_pooled(&t) {
                    Ok(s) => self.templates.put_back(s),
                    Err(e) => {
                        tracing::warn!(template = %t.name, "cannot start a pooled arrow-vmm: {e}");
                        let mut pools = lock(&self.templates.pools);
                        let p = pools.entry(tid.clone()).or_default();
                        p.last_error = Some(e.to_string());
                        p.failures += 1;
                        p.retry_at = Some(
                            Instant::now()
                                + MAX_BACKOFF.min(Duration::from_secs(1 << p.failures.min(6))),
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Spawns one pooled VMM of `t` in a fresh run directory with a fresh CID.
    fn spawn_pooled(&self, t: &TemplateRecord) -> std::io::Result<Slot> {
        let id = new_id().map_err(|e| std::io::Error::other(e.to_string()))?;
        let cid = self.templates.next_cid.fetch_add(1, Ordering::SeqCst);
        let run_dir: PathBuf = self.run_dir(&id);
        std::fs::create_dir_all(&run_dir)?;
        let cg = self.cgroups.create(&id, t.spec.vcpus, t.spec.memory_mib, 0);
        let args = vec![
            "restore".into(),
            "--from".into(),
            self.template_dir(&t.id).into(),
            "--clone".into(),
            "--pool".into(),
            "--vsock-cid".into(),
            cid.to_string().into(),
            "--vsock-uds".into(),
            VSOCK_SOCK.into(),
        ];
        let (child, pid, start) = match self.spawn_vmm(&run_dir, args, cg.map(|(_, p)| p)) {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                return Err(e);
            }
        };
        tracing::debug!(template = %t.name, id = %id, pid, cid, "pooled arrow-vmm spawned");
        Ok(Slot {
            id,
            cid,
            template_id: t.id.clone(),
            child,
            pid,
            start,
            ready: false,
            spawned: Instant::now(),
        })
    }
}
