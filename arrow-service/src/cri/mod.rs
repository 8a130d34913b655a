//! The Kubernetes CRI (`runtime.v1` RuntimeService and ImageService) over gRPC on its own
//! Unix socket, for kubelet and crictl. See `docs/cri.md` for the mapping: a pod sandbox
//! is a record (no VM), each CRI container is one Arrow instance created, started, stopped
//! and removed through the same [`Supervisor`] methods as the REST API.

mod container;
mod image;
pub mod log;
pub mod mounts;
mod network;
mod sandbox;
mod service;
mod stats;
pub mod store;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::error::Error;
use crate::supervisor::Supervisor;
use store::CriStore;

/// Runtime name in Version.
pub const RUNTIME_NAME: &str = "arrow";
/// The RuntimeClass handler arrowd answers to (besides the default, "").
pub const RUNTIME_HANDLER: &str = "arrow";

/// State of the CRI service.
pub struct Cri {
    /// Ourselves, for tasks the gRPC handlers (which get `&self`) spawn.
    me: std::sync::Weak<Cri>,
    sup: Arc<Supervisor>,
    store: CriStore,
    /// Open container logs, by container ID.
    logs: Mutex<HashMap<String, Arc<log::LogSink>>>,
    /// Serializes CreateContainer/RunPodSandbox checks with their inserts.
    create: tokio::sync::Mutex<()>,
    /// The node's CNI configuration and plugins.
    cni: crate::cni::Cni,
    /// Where sandboxes' network namespaces are pinned.
    netns_dir: std::path::PathBuf,
    /// Pod-IP listeners of running containers, by container ID.
    pod_ports: Mutex<HashMap<String, network::PodPorts>>,
}

/// An arrowd error as a gRPC status.
fn status(e: Error) -> Status {
    match e {
        Error::Invalid(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::Conflict(m) => Status::failed_precondition(m),
        Error::Internal(m) => Status::internal(m),
    }
}

/// 64 hex digits from the kernel's random source.
fn new_id() -> Result<String, Status> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Status::internal(format!("cannot read /dev/urandom for an ID: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Nanoseconds since the epoch from arrowd's milliseconds.
fn ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Whether `labels` has every pair of `selector`.
fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Verbose `info` map with one JSON entry.
fn info(value: serde_json::Value) -> HashMap<String, String> {
    HashMap::from([("info".to_owned(), value.to_string())])
}

impl Cri {
    /// Opens the CRI tables in arrowd's database and resumes the log copies and pod ports
    /// of running containers (after an arrowd restart).
    pub fn new(sup: Arc<Supervisor>) -> crate::error::Result<Arc<Cri>> {
        let store = CriStore::open(&sup.config().db_path())?;
        let cfg = sup.config();
        let cni = crate::cni::Cni::new(cfg.cni_conf_dir.clone(), &cfg.cni_bin_dir);
        let netns_dir = cfg.netns_dir.clone();
        let cri = Arc::new_cyclic(|me| Cri {
            me: me.clone(),
            sup,
            store,
            logs: Mutex::new(HashMap::new()),
            create: tokio::sync::Mutex::new(()),
            cni,
            netns_dir,
            pod_ports: Mutex::new(HashMap::new()),
        });
        cri.resume_logs()?;
        cri.resume_pod_ports()?;
        cri.collect_orphan_networks()?;
        Ok(cri)
    }

    fn arc(&self) -> Result<Arc<Cri>, Status> {
        self.me
            .upgrade()
            .ok_or_else(|| Status::unavailable("arrowd is shutting down"))
    }

    fn resume_logs(self: &Arc<Self>) -> crate::error::Result<()> {
        for c in self.store.containers()? {
            if c.log_path.is_empty() {
                continue;
            }
            let Some(rec) = self.sup.record(&c.instance_id)? else {
                continue;
            };
            let console = self.console_path(&c.instance_id);
            let size = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
            if rec.state.is_active() || size > c.log_offset {
                self.spawn_log(&c.id, &c.instance_id, &c.log_path, c.log_offset);
            }
        }
        Ok(())
    }

    fn console_path(&self, instance_id: &str) -> std::path::PathBuf {
        self.sup
            .config()
            .run_root()
            .join(instance_id)
            .join(crate::supervisor::CONSOLE_LOG)
    }

    /// Starts copying the instance's console to the container log.
    fn spawn_log(self: &Arc<Self>, id: &str, instance_id: &str, path: &str, offset: u64) {
        let sink = match log::LogSink::open(Path::new(path)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(container = id, "{e}");
                return;
            }
        };
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), Arc::clone(&sink));
        let copy = log::Copy {
            console: self.console_path(instance_id),
            offset,
            sink: Arc::clone(&sink),
        };
        let cri = Arc::clone(self);
        let (id, iid) = (id.to_owned(), instance_id.to_owned());
        tokio::spawn(async move {
            let sup = Arc::clone(&cri.sup);
            let running = || matches!(sup.record(&iid), Ok(Some(r)) if r.state.is_active());
            let saved = |off: u64| {
                if let Err(e) = cri.store.set_log_offset(&id, off) {
                    tracing::warn!(container = %id, "cannot record the log offset: {e}");
                }
            };
            copy.run(running, saved).await;
            let mut logs = cri.logs.lock().unwrap_or_else(|p| p.into_inner());
            if logs.get(&id).is_some_and(|s| Arc::ptr_eq(s, &sink)) {
                logs.remove(&id);
            }
        });
    }
}

/// Serves CRI on `path` until `stop` turns true.
pub async fn serve(
    cri: Arc<Cri>,
    listener: crate::unix_socket::CheckedUnixListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    use k8s_cri::v1::image_service_server::ImageServiceServer;
    use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
    tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::from_arc(Arc::clone(&cri)))
        .add_service(ImageServiceServer::from_arc(cri))
        .serve_with_incoming_shutdown(
            // Only peers the socket's policy allows (SO_PEERCRED) get through.
            futures_util::stream::unfold(listener, |l| async move {
                let next = l.accept_allowed().await.map(|(stream, _)| stream);
                Some((next, l))
            }),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
        .await
}
