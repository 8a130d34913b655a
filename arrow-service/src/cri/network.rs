//! Pod networking: RunPodSandbox gives the sandbox a pinned network namespace and runs the
//! node's CNI plugins in it (ADD); StopPodSandbox/RemovePodSandbox run DEL and remove the
//! namespace. Each running container's declared ports are served on the pod IP inside that
//! namespace once its app is ready (APP_READY): arrowd listens there and relays every TCP
//! connection to the instance's guest vsock port of the same number (the relay of the
//! host port exports, [`crate::proxy`]). The guest has no network device.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{NamespaceMode, PodSandboxConfig, Protocol};
use tokio::task::JoinHandle;
use tonic::Status;

use super::store::{ContainerRecord, NetworkRecord};
use super::{status, Cri};
use crate::cni::{AddResult, Attachment, CniError, NetworkConfig};
use crate::{netns, proxy};

/// How often a container's app is asked whether it is ready, and its state checked.
const POLL: Duration = Duration::from_millis(50);

/// The pod-IP listeners of one container: a task that waits for APP_READY, serves the
/// ports while the instance runs, and closes them when it ends (or when dropped).
pub(super) struct PodPorts {
    task: JoinHandle<()>,
    serving: Arc<AtomicBool>,
    ports: Vec<u16>,
}

impl Drop for PodPorts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A sandbox with `network: NODE` uses the host's network: no CNI.
fn host_network(config: &PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|n| n.network == NamespaceMode::Node as i32)
}

/// kubelet's CNI_ARGS.
fn cni_args(id: &str, config: &PodSandboxConfig) -> Vec<(String, String)> {
    let md = config.metadata.clone().unwrap_or_default();
    vec![
        ("K8S_POD_NAMESPACE".into(), md.namespace),
        ("K8S_POD_NAME".into(), md.name),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_owned()),
        ("K8S_POD_UID".into(), md.uid),
    ]
}

/// The pod IPs in a stored ADD result.
pub(super) fn pod_ips(n: &NetworkRecord) -> Vec<IpAddr> {
    serde_json::from_value::<AddResult>(n.result.clone())
        .map(|r| r.pod_ips())
        .unwrap_or_default()
}

fn network_config(n: &NetworkRecord) -> Result<NetworkConfig, Status> {
    NetworkConfig::from_json(Path::new("(stored with the sandbox)"), &n.config)
        .map_err(|e| Status::internal(e.to_string()))
}

impl Cri {
    /// RunPodSandbox's network: namespace + CNI ADD, recorded before ADD runs so that DEL
    /// can always follow. On failure everything is undone and the plugin's message
    /// returned. No CNI configuration: the sandbox has no pod network (hostPorts only).
    pub(super) async fn setup_network(
        &self,
        id: &str,
        config: &PodSandboxConfig,
    ) -> Result<(), Status> {
        if host_network(config) {
            return Ok(());
        }
        let net = match self.cni.network() {
            Ok(n) => n,
            Err(e @ CniError::NoConfig { .. }) => {
                tracing::warn!(sandbox = id, "no pod network: {e}");
                return Ok(());
            }
            Err(e) => return Err(Status::failed_precondition(e.to_string())),
        };
        let path = self
            .netns_dir
            .join(format!("arrow-{}", &id[..16.min(id.len())]));
        let p = path.clone();
        tokio::task::spawn_blocking(move || netns::create(&p))
            .await
            .map_err(|e| Status::internal(format!("network namespace helper failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut rec = NetworkRecord {
            sandbox_id: id.to_owned(),
            netns: path.display().to_string(),
            config: net.to_json(),
            result: serde_json::Value::Null,
        };
        let at = Attachment {
            container_id: id,
            netns: &path,
            args: cni_args(id, config),
        };
        let added = match self.store.put_network(&rec) {
            Ok(()) => self.cni.add(&net, &at).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let added = added.and_then(|(r, raw)| {
            if r.pod_ips().is_empty() {
                Err(format!(
                    "CNI network {:?} returned no IP address for the pod: {raw}",
                    net.name
                ))
            } else {
                Ok(raw)
            }
        });
        match added {
            Ok(raw) => {
                rec.result = raw;
                self.store.put_network(&rec).map_err(status)?;
                tracing::info!(sandbox = id, netns = %path.display(), ips = ?pod_ips(&rec), network = %net.name, "pod network set up");
                Ok(())
            }
            Err(why) => {
                // Release whatever the plugins did (IPAM lease, veth) before the namespace.
                if let Err(e) = self.cni.del(&net, &at, None).await {
                    tracing::warn!(sandbox = id, "CNI DEL after a failed ADD: {e}");
                }
                if let Err(e) = netns::remove(&path) {
                    tracing::warn!(sandbox = id, "{e}");
                }
                let _ = self.store.delete_network(id);
                Err(Status::internal(format!("pod network setup failed: {why}")))
            }
        }
    }

    /// Closes the sandbox's pod ports, runs DEL and removes its namespace; a sandbox
    /// without a network (or already torn down) is fine.
    pub(super) async fn teardown_network(
        &self,
        id: &str,
        config: &PodSandboxConfig,
        containers: &[ContainerRecord],
    ) -> Result<(), Status> {
        {
            let mut ports = self.pod_ports.lock().unwrap_or_else(|p| p.into_inner());
            for c in containers {
                ports.remove(&c.id);
            }
        }
        let Some(n) = self.store.network(id).map_err(status)? else {
            return Ok(());
        };
        let net = network_config(&n)?;
        let path = PathBuf::from(&n.netns);
        let at = Attachment {
            container_id: id,
            netns: &path,
            args: cni_args(id, config),
        };
        let prev = (!n.result.is_null()).then_some(&n.result);
        self.cni
            .del(&net, &at, prev)
            .await
            .map_err(|e| Status::internal(format!("pod network teardown failed: {e}")))?;
        netns::remove(&path).map_err(|e| Status::internal(e.to_string()))?;
        self.store.delete_network(id).map_err(status)?;
        tracing::info!(sandbox = id, "pod network torn down");
        Ok(())
    }

    /// The container's ports on the pod IP: the sandbox's TCP port mappings'
    /// `container_port`s and the image's declared vsock ports.
    fn pod_port_numbers(&self, c: &ContainerRecord, sandbox: &PodSandboxConfig) -> Vec<u16> {
        let mut ports: Vec<u16> = sandbox
            .port_mappings
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp as i32)
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        if let Ok(d) = c.image_ref.parse() {
            if let Ok(img) = self.sup.store().image_by_digest(&d) {
                ports.extend(img.spec.ports.iter().filter_map(|&p| u16::try_from(p).ok()));
            }
        }
        ports.retain(|&p| p > 0);
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Serves the container's ports on the pod IP once its app is ready (see the module
    /// documentation). Replaces what an earlier start of the same container had.
    pub(super) fn spawn_pod_ports(self: &Arc<Self>, c: &ContainerRecord) {
        let (n, sb) = match (
            self.store.network(&c.sandbox_id),
            self.store.sandbox(&c.sandbox_id),
        ) {
            (Ok(Some(n)), Ok(sb)) => (n, sb),
            _ => return,
        };
        let ips = pod_ips(&n);
        let ports = self.pod_port_numbers(c, &sb.config);
        if ips.is_empty() || ports.is_empty() {
            return;
        }
        let serving = Arc::new(AtomicBool::new(false));
        let cri = Arc::clone(self);
        let (cid, iid) = (c.id.clone(), c.instance_id.clone());
        let ns = PathBuf::from(&n.netns);
        let flag = Arc::clone(&serving);
        let list = ports.clone();
        let task = tokio::spawn(async move {
            let active = || matches!(cri.sup.record(&iid), Ok(Some(r)) if r.state.is_active());
            while !cri.sup.app_ready(&iid).await {
                if !active() {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
            let addrs: Vec<SocketAddr> = ips
                .iter()
                .flat_map(|ip| list.iter().map(move |p| SocketAddr::new(*ip, *p)))
                .collect();
            let bound = match tokio::task::spawn_blocking(move || netns::bind_tcp(&ns, addrs)).await
            {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::warn!(container = %cid, "cannot open the pod ports: {e}");
                    return;
                }
                Err(e) => {
                    tracing::warn!(container = %cid, "pod port helper failed: {e}");
                    return;
                }
            };
            let mut listeners = Vec::new();
            for b in bound {
                match b {
                    Ok(l) => {
                        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                        listeners.push((l, u32::from(port)));
                    }
                    // A sibling container of the pod serves that port already.
                    Err((a, e)) => {
                        tracing::warn!(container = %cid, "cannot listen on {a} in the pod's namespace: {e}")
                    }
                }
            }
            let uds = cri
                .sup
                .config()
                .run_root()
                .join(&iid)
                .join(crate::supervisor::VSOCK_SOCK);
            let proxies = match proxy::serve(&iid, listeners, &uds) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(container = %cid, "{e}");
                    return;
                }
            };
            flag.store(true, Ordering::SeqCst);
            tracing::info!(container = %cid, instance = %iid, ips = ?ips, ports = ?list, "app ready: pod ports open");
            while active() {
                tokio::time::sleep(POLL * 4).await;
            }
            flag.store(false, Ordering::SeqCst);
            drop(proxies);
            tracing::info!(container = %cid, "instance ended: pod ports closed");
        });
        self.pod_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                c.id.clone(),
                PodPorts {
                    task,
                    serving,
                    ports,
                },
            );
    }

    /// Whether the container's app is ready and its pod ports serve; `None` when it has
    /// no pod ports.
    pub(super) fn pod_ports_state(&self, container_id: &str) -> Option<(bool, Vec<u16>)> {
        self.pod_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .map(|p| (p.serving.load(Ordering::SeqCst), p.ports.clone()))
    }

    /// Closes a container's pod ports.
    pub(super) fn close_pod_ports(&self, container_id: &str) {
        self.pod_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(container_id);
    }

    /// After an arrowd restart: serve again the pod ports of running containers whose
    /// sandbox has a network (the namespaces outlived arrowd).
    pub(super) fn resume_pod_ports(self: &Arc<Self>) -> crate::error::Result<()> {
        for c in self.store.containers()? {
            if matches!(self.sup.record(&c.instance_id)?, Some(r) if r.state.is_active()) {
                self.spawn_pod_ports(&c);
            }
        }
        Ok(())
    }

    /// After an arrowd restart: networks whose sandbox was never recorded (arrowd stopped
    /// during RunPodSandbox) are torn down (DEL, namespace removed) in the background.
    pub(super) fn collect_orphan_networks(self: &Arc<Self>) -> crate::error::Result<()> {
        let orphans = self.store.orphan_networks()?;
        if orphans.is_empty() {
            return Ok(());
        }
        let cri = Arc::clone(self);
        tokio::spawn(async move {
            for id in orphans {
                match cri
                    .teardown_network(&id, &PodSandboxConfig::default(), &[])
                    .await
                {
                    Ok(()) => {
                        tracing::info!(sandbox = %id, "released the network of a sandbox that was never created")
                    }
                    Err(e) => tracing::warn!(sandbox = %id, "{}", e.message()),
                }
            }
        });
        Ok(())
    }

    /// CRI Status's NetworkReady: a CNI configuration that loads and whose plugins exist.
    pub(super) fn network_condition(&self) -> (bool, String, String) {
        match self.cni.network() {
            Ok(net) => (
                true,
                String::new(),
                format!(
                    "CNI network {:?} from {} (plugins: {})",
                    net.name,
                    net.file.display(),
                    net.types().join(", ")
                ),
            ),
            Err(e) => (false, "NetworkPluginNotReady".to_owned(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption};

    #[test]
    fn host_network_is_detected() {
        let mut c = PodSandboxConfig::default();
        assert!(!host_network(&c));
        c.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(host_network(&c));
    }
}
