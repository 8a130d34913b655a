//! The instance supervisor: owns instance records, spawns one arrow-vmm per instance in
//! its own run directory (and cgroup), watches it, and re-adopts running VMMs after an
//! arrowd restart.

pub(crate) mod create;
pub mod guest_env;
pub(crate) mod lifecycle;
mod logs;
mod memory;
mod monitor;
mod readiness;
mod recover;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::cgroup::Cgroups;
use crate::clock::rfc3339;
use crate::config::Config;
use crate::db::{Db, Record};
use crate::error::Result;
use crate::jail::Jail;
use crate::metrics::Metrics;
use crate::model::Instance;
use crate::proxy::Proxies;

pub use create::MAX_VCPUS;
pub use logs::LogStream;

/// Files in an instance's run directory.
pub const CONSOLE_LOG: &str = "console.log";
/// arrow-vmm's own stderr.
pub const VMM_LOG: &str = "vmm.log";
/// arrow-vmm's exit report (`--report`).
pub const REPORT: &str = "report.json";
/// arrow-vmm's control API socket (`--api-sock`).
pub const API_SOCK: &str = "api.sock";
/// The vsock device's Unix socket.
pub const VSOCK_SOCK: &str = "vsock.sock";
/// Persistent shadowfs writable layer (ext4), when the instance asked for storage.
pub const UPPER_IMG: &str = "upper.img";

/// Shared state of arrowd.
pub struct Supervisor {
    pub(crate) cfg: Config,
    pub(crate) db: Db,
    pub(crate) store: asdk::Store,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    pub(crate) cgroups: Cgroups,
    /// How arrow-vmm processes are started: jailed or not.
    pub(crate) jail: Jail,
    /// Templates' runtime state (warm pools).
    pub(crate) templates: crate::templates::Templates,
    /// virtiofsd processes of running instances' fs volumes.
    pub(crate) backends: volumes::Backends,
    changes: watch::Sender<u64>,
    proxies: Mutex<HashMap<String, Proxies>>,
    stopping: Mutex<HashSet<String>>,
    /// The last signal arrowd sent each running instance's VMM (`kill`): a
    /// VMM that dies of it ended as asked; one that dies of any other signal
    /// without a report was lost, and its instance is failed.
    signalled: Mutex<HashMap<String, i32>>,
}

impl Supervisor {
    /// Opens the database and the image store; call [`Supervisor::recover`] next.
    pub fn new(
        cfg: Config,
        db: Db,
        store: asdk::Store,
        cgroups: Cgroups,
        jail: Jail,
    ) -> Arc<Supervisor> {
        let (changes, _) = watch::channel(0);
        Arc::new(Supervisor {
            backends: volumes::Backends::new(crate::volumes::jail::VfsJail::init(
                cfg.virtiofsd_max_files,
            )),
            cfg,
            db,
            store,
            metrics: Metrics::default(),
            cgroups,
            jail,
            templates: crate::templates::Templates::default(),
            changes,
            proxies: Mutex::new(HashMap::new()),
            stopping: Mutex::new(HashSet::new()),
            signalled: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The image store.
    pub fn store(&self) -> &asdk::Store {
        &self.store
    }

    /// Whether arrow-vmm processes run jailed.
    pub fn jail_enabled(&self) -> bool {
        self.jail.enabled()
    }

    /// Whether cgroup limits apply.
    pub fn cgroups_enabled(&self) -> bool {
        self.cgroups.enabled()
    }

    pub(crate) fn run_dir(&self, id: &str) -> PathBuf {
        self.cfg.run_root().join(id)
    }

    /// Wakes everyone waiting for a state change.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(crate) fn set_proxies(&self, id: &str, p: Option<Proxies>) {
        let mut map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Some(p) => {
                map.insert(id.to_owned(), p);
            }
            None => {
                map.remove(id);
            }
        }
    }

    /// Records (`Some`) or takes (`None`) the signal arrowd last sent `id`'s VMM.
    fn mark_signalled(&self, id: &str, sig: Option<i32>) -> Option<i32> {
        let mut map = self.signalled.lock().unwrap_or_else(|e| e.into_inner());
        match sig {
            Some(s) => map.insert(id.to_owned(), s),
            None => map.remove(id),
        }
    }

    fn mark_stopping(&self, id: &str, on: bool) -> bool {
        if on {
            self.backends_stopping(id);
        }
        let mut set = self.stopping.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            set.insert(id.to_owned())
        } else {
            set.remove(id)
        }
    }

    /// The API view of a record.
    pub fn view(&self, r: &Record) -> Instance {
        Instance {
            id: r.id.clone(),
            name: r.name.clone(),
            state: r.state,
            pid: r.pid,
            exit_code: r.exit_code,
            reason: r.reason.clone(),
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            start_latency_ms: r.start_latency_ms,
            start_count: r.start_count,
            run_dir: self.run_dir(&r.id).display().to_string(),
            cgroup: r.cgroup.clone(),
            spec: r.spec.clone(),
            clone: crate::templates::db::clone_of(&self.db, &r.id).unwrap_or(None),
            cores: crate::cores::list(&self.run_dir(&r.id)),
        }
    }

    /// All instances (`all`) or only the active ones.
    pub fn list(&self, all: bool) -> Result<Vec<Instance>> {
        Ok(self
            .db
            .list()?
            .iter()
            .filter(|r| all || r.state.is_active())
            .map(|r| self.view(r))
            .collect())
    }

    /// One instance by ID, name or ID prefix.
    pub fn inspect(&self, reference: &str) -> Result<Instance> {
        Ok(self.view(&self.db.find(reference)?))
    }

    /// The stored record of an instance by exact ID (CRI reads its times and state).
    pub fn record(&self, id: &str) -> Result<Option<Record>> {
        self.db.get(id)
    }

    /// `/metrics` text.
    pub fn metrics_text(&self) -> Result<String> {
        Ok(self.metrics.render(&self.db.count_by_state()?))
    }
}
