//! Pod sandboxes: a record and, through CNI, a network namespace with the pod IP (no VM:
//! the image is not known before CreateContainer). Stopping a sandbox stops its
//! containers and releases its network; removing it removes them.

use k8s_cri::v1::{
    LinuxPodSandboxStatus, Namespace, PodIp, PodSandbox, PodSandboxConfig, PodSandboxFilter,
    PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus, PodSandboxStatusResponse,
};
use tonic::Status;

use super::store::{ContainerRecord, SandboxRecord};
use super::{info, labels_match, new_id, now_ns, status, Cri, RUNTIME_HANDLER};
use crate::error::Error;

fn state(s: &SandboxRecord) -> i32 {
    if s.ready {
        PodSandboxState::SandboxReady as i32
    } else {
        PodSandboxState::SandboxNotready as i32
    }
}

impl Cri {
    pub(super) async fn run_sandbox(
        &self,
        config: Option<PodSandboxConfig>,
        handler: String,
    ) -> Result<String, Status> {
        let config = config.ok_or_else(|| {
            Status::invalid_argument("RunPodSandbox without a sandbox config: send `config`")
        })?;
        let md = config.metadata.clone().unwrap_or_default();
        if md.name.is_empty() || md.namespace.is_empty() || md.uid.is_empty() {
            return Err(Status::invalid_argument(
                "the sandbox config needs metadata with name, namespace and uid",
            ));
        }
        if !handler.is_empty() && handler != RUNTIME_HANDLER {
            return Err(Status::invalid_argument(format!(
                "unknown runtime handler {handler:?}: arrowd serves {RUNTIME_HANDLER:?} (RuntimeClass handler) or the default \"\""
            )));
        }
        let _guard = self.create.lock().await;
        if let Some(other) = self
            .store
            .sandboxes()
            .map_err(status)?
            .into_iter()
            .find(|s| {
                let m = s.config.metadata.clone().unwrap_or_default();
                m.name == md.name
                    && m.namespace == md.namespace
                    && m.uid == md.uid
                    && m.attempt == md.attempt
            })
        {
            return Err(Status::already_exists(format!(
                "pod sandbox {}/{} (uid {}, attempt {}) already exists as {}: remove it first (crictl rmp)",
                md.namespace, md.name, md.uid, md.attempt, other.id
            )));
        }
        if !config.log_directory.is_empty() {
            std::fs::create_dir_all(&config.log_directory).map_err(|e| {
                Status::internal(format!(
                    "cannot create the sandbox log directory {}: {e}",
                    config.log_directory
                ))
            })?;
        }
        let id = new_id()?;
        self.setup_network(&id, &config).await?;
        let rec = SandboxRecord {
            id,
            config,
            runtime_handler: handler,
            ready: true,
            created_at: now_ns(),
        };
        if let Err(e) = self.store.insert_sandbox(&rec) {
            let _ = self.teardown_network(&rec.id, &rec.config, &[]).await;
            return Err(status(e));
        }
        tracing::info!(sandbox = %rec.id, name = %md.name, namespace = %md.namespace, "pod sandbox created");
        Ok(rec.id)
    }

    /// Stops every container of the sandbox (at once: kubelet has already given them their
    /// grace period) and marks it not ready. An unknown sandbox is already stopped.
    pub(super) async fn stop_sandbox(&self, reference: &str) -> Result<(), Status> {
        let sb = match self.store.sandbox(reference) {
            Ok(s) => s,
            // Idempotent: kubelet stops sandboxes it may already have removed.
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(status(e)),
        };
        let containers = self.containers_of(&sb.id)?;
        for c in &containers {
            self.stop_container_record(c, 0).await?;
        }
        self.store
            .set_sandbox_ready(&sb.id, false)
            .map_err(status)?;
        // The pod IP is released at stop, as kubelet expects.
        self.teardown_network(&sb.id, &sb.config, &containers)
            .await?;
        tracing::info!(sandbox = %sb.id, "pod sandbox stopped");
        Ok(())
    }

    /// The container records of sandbox `id`.
    fn containers_of(&self, id: &str) -> Result<Vec<ContainerRecord>, Status> {
        Ok(self
            .store
            .containers()
            .map_err(status)?
            .into_iter()
            .filter(|c| c.sandbox_id == id)
            .collect())
    }

    /// Removes the sandbox and its containers; an unknown sandbox is already removed.
    pub(super) async fn remove_sandbox(&self, reference: &str) -> Result<(), Status> {
        let sb = match self.store.sandbox(reference) {
            Ok(s) => s,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(status(e)),
        };
        let containers = self.containers_of(&sb.id)?;
        for c in &containers {
            self.remove_container_record(c).await?;
        }
        self.teardown_network(&sb.id, &sb.config, &containers)
            .await?;
        self.store.delete_sandbox(&sb.id).map_err(status)?;
        tracing::info!(sandbox = %sb.id, "pod sandbox removed");
        Ok(())
    }

    pub(super) fn sandbox_status(
        &self,
        reference: &str,
        verbose: bool,
    ) -> Result<PodSandboxStatusResponse, Status> {
        let sb = self.store.sandbox(reference).map_err(status)?;
        let containers = self
            .store
            .containers()
            .map_err(status)?
            .into_iter()
            .filter(|c| c.sandbox_id == sb.id)
            .map(|c| self.container_status_of(&c))
            .collect::<Result<Vec<_>, _>>()?;
        let ns_opts = sb
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let net = self.store.network(&sb.id).map_err(status)?;
        let ips = net
            .as_ref()
            .map(super::network::pod_ips)
            .unwrap_or_default();
        let st = PodSandboxStatus {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: state(&sb),
            created_at: sb.created_at,
            // The pod IPs CNI gave the sandbox's namespace (arrowd serves the containers'
            // ports there); none for host-network sandboxes or without CNI.
            network: Some(PodSandboxNetworkStatus {
                ip: ips.first().map(|i| i.to_string()).unwrap_or_default(),
                additional_ips: ips
                    .iter()
                    .skip(1)
                    .map(|i| PodIp { ip: i.to_string() })
                    .collect(),
            }),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace { options: ns_opts }),
            }),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        };
        let info = if verbose {
            info(serde_json::json!({
                "config": sb.config,
                "runtime": "arrow: a pod sandbox is a record; each container is one microVM",
                "netns": net.as_ref().map(|n| n.netns.clone()),
                "cniResult": net.as_ref().map(|n| n.result.clone()),
            }))
        } else {
            Default::default()
        };
        Ok(PodSandboxStatusResponse {
            status: Some(st),
            info,
            containers_statuses: containers,
            timestamp: now_ns(),
        })
    }

    pub(super) fn list_sandboxes(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>, Status> {
        let f = filter.unwrap_or_default();
        Ok(self
            .store
            .sandboxes()
            .map_err(status)?
            .into_iter()
            .filter(|s| s.id.starts_with(&f.id))
            .filter(|s| f.state.as_ref().is_none_or(|v| v.state == state(s)))
            .filter(|s| labels_match(&s.config.labels, &f.label_selector))
            .map(|s| PodSandbox {
                state: state(&s),
                id: s.id,
                metadata: s.config.metadata,
                created_at: s.created_at,
                labels: s.config.labels,
                annotations: s.config.annotations,
                runtime_handler: s.runtime_handler,
            })
            .collect())
    }
}
