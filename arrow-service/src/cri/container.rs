//! CRI containers: each is one Arrow instance, created/started/stopped/removed through the
//! [`crate::supervisor::Supervisor`] like the REST API's instances.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerResources, ContainerState,
    ContainerStatus, ImageSpec, LinuxContainerResources, PodSandboxConfig,
};
use tonic::Status;

use super::store::ContainerRecord;
use super::{labels_match, new_id, now_ns, ns, status, Cri};
use crate::db::Record;
use crate::error::Error;
use crate::model::{CreateRequest, MemoryArg, PortMapping, State};

/// The path the app has inside every Arrow image (argv[0]).
const APP: &str = asdk::image::APP_PATH;

/// Docker's entrypoint/cmd rules with the image's app as the only possible entrypoint:
/// `command` + `args` become the app's arguments (a leading `/app`, the app itself, is
/// dropped); `args` alone replace the image's arguments; neither keeps the image's.
pub fn argv(command: &[String], args: &[String]) -> Option<Vec<String>> {
    if command.is_empty() {
        return (!args.is_empty()).then(|| args.to_vec());
    }
    let tail = if command[0] == APP {
        &command[1..]
    } else {
        command
    };
    Some(tail.iter().chain(args).cloned().collect())
}

/// MiB for a memory limit in bytes (rounded up); `None` keeps the image's.
fn memory_mib(bytes: i64) -> Result<Option<u64>, Status> {
    if bytes <= 0 {
        return Ok(None);
    }
    Ok(Some((bytes as u64).div_ceil(1 << 20)))
}

/// vCPUs for a CFS quota/period (rounded up); `None` keeps the image's.
fn vcpus(quota: i64, period: i64) -> Result<Option<u8>, Status> {
    if quota <= 0 || period <= 0 {
        return Ok(None);
    }
    let n = (quota as u64).div_ceil(period as u64);
    u8::try_from(n).map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "CPU quota {quota}/{period} asks for {n} vCPUs: at most {} fit one instance",
            crate::supervisor::MAX_VCPUS
        ))
    })
}

/// Host ports of the sandbox forwarded to the same-numbered guest vsock ports.
fn ports(sandbox: &PodSandboxConfig) -> Vec<PortMapping> {
    sandbox
        .port_mappings
        .iter()
        .filter(|p| p.protocol == k8s_cri::v1::Protocol::Tcp as i32 && p.host_port > 0)
        .filter_map(|p| {
            Some(PortMapping {
                host_ip: if p.host_ip.is_empty() {
                    "0.0.0.0".to_owned()
                } else {
                    p.host_ip.clone()
                },
                host_port: u16::try_from(p.host_port).ok()?,
                guest_port: u32::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

/// CRI state of an instance record (`None`: the instance was removed behind CRI's back).
fn cri_state(rec: Option<&Record>) -> ContainerState {
    match rec.map(|r| r.state) {
        Some(State::Created) => ContainerState::ContainerCreated,
        Some(State::Starting | State::Running | State::Stopping) => {
            ContainerState::ContainerRunning
        }
        Some(State::Exited | State::Failed) => ContainerState::ContainerExited,
        None => ContainerState::ContainerUnknown,
    }
}

/// kubelet's reasons: `Completed`, `Error`, `OOMKilled`.
fn reason(rec: &Record) -> String {
    let text = rec.reason.as_deref().unwrap_or("").to_ascii_lowercase();
    if text.contains("out of memory") || text.contains("oom") {
        "OOMKilled".to_owned()
    } else if rec.exit_code == Some(0) {
        "Completed".to_owned()
    } else {
        "Error".to_owned()
    }
}

fn log_path(sandbox: &PodSandboxConfig, config: &ContainerConfig) -> String {
    if config.log_path.is_empty() {
        return String::new();
    }
    Path::new(&sandbox.log_directory)
        .join(&config.log_path)
        .display()
        .to_string()
}

impl Cri {
    /// Resolves a CRI image reference in the local store: as given, then without the
    /// `docker.io/library/` or `docker.io/` prefix kubelet adds to short names.
    pub(super) fn resolve_image(
        &self,
        reference: &str,
    ) -> crate::error::Result<asdk::store::Image> {
        let store = self.sup.store();
        let mut last = None;
        for candidate in [
            Some(reference),
            reference.strip_prefix("docker.io/library/"),
            reference.strip_prefix("docker.io/"),
        ]
        .into_iter()
        .flatten()
        {
            match store.image(candidate) {
                Ok(i) => return Ok(i),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            // A name the local store cannot even parse (e.g. `REPO@sha256:…`) is not in it.
            Some(asdk::store::StoreError::NotFound(_) | asdk::store::StoreError::Reference(_))
            | None => Error::NotFound(format!(
                "image {reference:?} is not in Arrow's image store: build it with `asdk build` or import it with `asdk import`; `crictl images` lists what is there"
            )),
            Some(asdk::store::StoreError::Ambiguous(_)) => Error::Invalid(format!(
                "image ID prefix {reference:?} is ambiguous: give more digits"
            )),
            Some(e) => Error::Invalid(format!("image {reference:?}: {e}")),
        })
    }

    pub(super) async fn create_container(
        &self,
        sandbox_ref: &str,
        config: Option<ContainerConfig>,
    ) -> Result<String, Status> {
        let config = config.ok_or_else(|| {
            Status::invalid_argument("CreateContainer without a container config: send `config`")
        })?;
        let md = config.metadata.clone().unwrap_or_default();
        if md.name.is_empty() {
            return Err(Status::invalid_argument(
                "the container config needs metadata with a name",
            ));
        }
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("the container config names no image"))?;
        let _guard = self.create.lock().await;
        let sb = self.store.sandbox(sandbox_ref).map_err(status)?;
        if !sb.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is stopped: run a new sandbox to create containers",
                sb.id
            )));
        }
        // Several containers may share a sandbox (one microVM each); the sandbox's host
        // ports go to the one that has no active sibling, as two VMs cannot both listen.
        let mut siblings_active = false;
        for other in self.store.containers().map_err(status)? {
            if other.sandbox_id != sb.id {
                continue;
            }
            let omd = other.config.metadata.clone().unwrap_or_default();
            if omd.name == md.name && omd.attempt == md.attempt {
                return Err(Status::already_exists(format!(
                    "container {:?} attempt {} already exists in sandbox {} as {}: remove it first",
                    md.name, md.attempt, sb.id, other.id
                )));
            }
            let rec = self.sup.record(&other.instance_id).map_err(status)?;
            siblings_active |= matches!(
                cri_state(rec.as_ref()),
                ContainerState::ContainerCreated | ContainerState::ContainerRunning
            );
        }
        let image = self.resolve_image(&image_ref).map_err(status)?;
        let mut env = BTreeMap::new();
        for kv in &config.envs {
            if kv.key.is_empty() {
                return Err(Status::invalid_argument(
                    "an environment entry has an empty name",
                ));
            }
            env.insert(kv.key.clone(), kv.value.clone());
        }
        let res = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        let id = new_id()?;
        let req = CreateRequest {
            image: image.digest.to_string(),
            name: Some(format!("cri-{}", &id[..16])),
            vcpus: vcpus(res.cpu_quota, res.cpu_period)?,
            memory: memory_mib(res.memory_limit_in_bytes)?.map(MemoryArg::Mib),
            env,
            args: argv(&config.command, &config.args),
            ports: if siblings_active {
                Vec::new()
            } else {
                ports(&sb.config)
            },
            volumes: super::mounts::volumes(&config.mounts)?,
            // No template named: the supervisor still starts it as a clone of a matching
            // one. Not started here: StartContainer does that.
            ..Default::default()
        };
        let inst = self.sup.create(req).await.map_err(status)?;
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            instance_id: inst.id.clone(),
            log_path: log_path(&sb.config, &config),
            config,
            image_ref: image.digest.to_string(),
            log_offset: 0,
            created_at: now_ns(),
        };
        if let Err(e) = self.store.insert_container(&rec) {
            let _ = self.sup.delete(&inst.id, true).await;
            return Err(status(e));
        }
        tracing::info!(container = %id, instance = %inst.id, sandbox = %sb.id, image = %image_ref, "container created");
        Ok(id)
    }

    pub(super) async fn start_container(self: &Arc<Self>, reference: &str) -> Result<(), Status> {
        let c = self.store.container(reference).map_err(status)?;
        let rec = self.sup.record(&c.instance_id).map_err(status)?;
        match cri_state(rec.as_ref()) {
            ContainerState::ContainerCreated => {}
            ContainerState::ContainerRunning => {
                return Err(Status::failed_precondition(format!(
                    "container {} is already running",
                    c.id
                )))
            }
            ContainerState::ContainerExited => {
                return Err(Status::failed_precondition(format!(
                    "container {} has exited; CRI containers are not restarted: create a new one",
                    c.id
                )))
            }
            _ => {
                return Err(Status::failed_precondition(format!(
                    "container {}'s instance {} no longer exists (removed outside CRI): remove the container",
                    c.id, c.instance_id
                )))
            }
        }
        self.sup.start(&c.instance_id).await.map_err(status)?;
        if !c.log_path.is_empty() {
            self.spawn_log(&c.id, &c.instance_id, &c.log_path, 0);
        }
        self.spawn_pod_ports(&c);
        tracing::info!(container = %c.id, instance = %c.instance_id, "container started");
        Ok(())
    }

    /// Stops a container; an unknown one is already stopped (kubelet retries stops).
    pub(super) async fn stop_container(&self, reference: &str, timeout: i64) -> Result<(), Status> {
        match self.store.container(reference) {
            Ok(c) => self.stop_container_record(&c, timeout).await,
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(status(e)),
        }
    }

    /// Graceful stop (the guest is asked to shut down), killed after `timeout` seconds.
    /// Stopping a stopped container is fine.
    pub(super) async fn stop_container_record(
        &self,
        c: &ContainerRecord,
        timeout: i64,
    ) -> Result<(), Status> {
        match self
            .sup
            .stop(&c.instance_id, Some(timeout.max(0) as u64))
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(status(e)),
        }
    }

    /// Removes a container (killing it if it runs); an unknown container is already removed.
    pub(super) async fn remove_container(&self, reference: &str) -> Result<(), Status> {
        match self.store.container(reference) {
            Ok(c) => self.remove_container_record(&c).await,
            Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(status(e)),
        }
    }

    pub(super) async fn remove_container_record(&self, c: &ContainerRecord) -> Result<(), Status> {
        match self.sup.delete(&c.instance_id, true).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(status(e)),
        }
        self.close_pod_ports(&c.id);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        self.store.delete_container(&c.id).map_err(status)?;
        tracing::info!(container = %c.id, instance = %c.instance_id, "container removed");
        Ok(())
    }

    fn image_spec(&self, c: &ContainerRecord) -> ImageSpec {
        let mut spec = c.config.image.clone().unwrap_or_default();
        if spec.user_specified_image.is_empty() {
            spec.user_specified_image = spec.image.clone();
        }
        spec
    }

    pub(super) fn container_status_of(
        &self,
        c: &ContainerRecord,
    ) -> Result<ContainerStatus, Status> {
        let rec = self.sup.record(&c.instance_id).map_err(status)?;
        let state = cri_state(rec.as_ref());
        let mut st = ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: state as i32,
            created_at: c.created_at,
            image: Some(self.image_spec(c)),
            image_ref: c.image_ref.clone(),
            image_id: c.image_ref.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            mounts: c.config.mounts.clone(),
            log_path: c.log_path.clone(),
            ..Default::default()
        };
        match &rec {
            Some(r) => {
                st.started_at = r.started_at.map(ns).unwrap_or(0);
                if r.state.is_finished() {
                    st.finished_at = r.finished_at.map(ns).unwrap_or(0);
                    st.exit_code = r.exit_code.unwrap_or(-1);
                    st.reason = reason(r);
                    st.message = r.reason.clone().unwrap_or_default();
                }
                st.resources = Some(ContainerResources {
                    linux: Some(LinuxContainerResources {
                        memory_limit_in_bytes: i64::from(r.spec.memory_mib) << 20,
                        cpu_period: 100_000,
                        cpu_quota: i64::from(r.spec.vcpus) * 100_000,
                        ..Default::default()
                    }),
                    windows: None,
                });
            }
            None => {
                st.reason = "Unknown".to_owned();
                st.message = format!(
                    "instance {} was removed outside CRI (actl rm?)",
                    c.instance_id
                );
            }
        }
        Ok(st)
    }

    pub(super) fn container_status(
        &self,
        reference: &str,
        verbose: bool,
    ) -> Result<(ContainerStatus, std::collections::HashMap<String, String>), Status> {
        let c = self.store.container(reference).map_err(status)?;
        let st = self.container_status_of(&c)?;
        let info = if verbose {
            let inst = self.sup.inspect(&c.instance_id).ok();
            let pod_ports = self.pod_ports_state(&c.id);
            super::info(serde_json::json!({
                "sandboxID": c.sandbox_id,
                "appReady": pod_ports.as_ref().map(|p| p.0),
                "podPorts": pod_ports.map(|p| p.1),
                "instance": inst,
                "config": c.config,
            }))
        } else {
            Default::default()
        };
        Ok((st, info))
    }

    pub(super) fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<Container>, Status> {
        let f = filter.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.store.containers().map_err(status)? {
            if !c.id.starts_with(&f.id)
                || !c.sandbox_id.starts_with(&f.pod_sandbox_id)
                || !labels_match(&c.config.labels, &f.label_selector)
            {
                continue;
            }
            let rec = self.sup.record(&c.instance_id).map_err(status)?;
            let state = cri_state(rec.as_ref()) as i32;
            if f.state.as_ref().is_some_and(|s| s.state != state) {
                continue;
            }
            out.push(Container {
                image: Some(self.image_spec(&c)),
                id: c.id,
                pod_sandbox_id: c.sandbox_id,
                metadata: c.config.metadata,
                image_ref: c.image_ref.clone(),
                image_id: c.image_ref,
                state,
                created_at: c.created_at,
                labels: c.config.labels,
                annotations: c.config.annotations,
            });
        }
        Ok(out)
    }

    /// Memory is resized through the supervisor's memory hotplug (the same path as
    /// `POST /instances/{id}/update`); vCPUs are fixed at boot, so only an unchanged CPU
    /// limit is accepted.
    pub(super) async fn update_resources(
        &self,
        reference: &str,
        res: Option<LinuxContainerResources>,
    ) -> Result<(), Status> {
        let c = self.store.container(reference).map_err(status)?;
        let Some(res) = res else { return Ok(()) };
        let Some(rec) = self.sup.record(&c.instance_id).map_err(status)? else {
            return Err(Status::not_found(format!(
                "container {}'s instance was removed",
                c.id
            )));
        };
        if let Some(n) = vcpus(res.cpu_quota, res.cpu_period)? {
            if n != rec.spec.vcpus {
                return Err(Status::failed_precondition(format!(
                    "cannot change container {}'s vCPUs from {} to {n}: a microVM's vCPUs are fixed at boot; recreate the container with the new CPU limit",
                    c.id, rec.spec.vcpus
                )));
            }
        }
        if let Some(mut mib) = memory_mib(res.memory_limit_in_bytes)? {
            let boot = u64::from(rec.spec.memory_mib);
            // Hotplug works in 2 MiB blocks above the boot memory: round up to one.
            if mib > boot && (mib - boot) % 2 == 1 {
                mib += 1;
            }
            self.sup
                .update_memory(&c.instance_id, &MemoryArg::Mib(mib))
                .await
                .map_err(status)?;
            tracing::info!(container = %c.id, memory_mib = mib, "memory update requested");
        }
        Ok(())
    }

    pub(super) fn reopen_log(&self, reference: &str) -> Result<(), Status> {
        let c = self.store.container(reference).map_err(status)?;
        let rec = self.sup.record(&c.instance_id).map_err(status)?;
        if cri_state(rec.as_ref()) != ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {} is not running: only a running container's log is reopened",
                c.id
            )));
        }
        let sink = self
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.id)
            .cloned();
        match sink {
            Some(s) => s.reopen().map_err(status),
            None => Err(Status::failed_precondition(format!(
                "container {} has no log file (no log_path was given)",
                c.id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd() {
        assert_eq!(argv(&[], &[]), None);
        assert_eq!(argv(&[], &v(&["a"])), Some(v(&["a"])));
        assert_eq!(argv(&v(&["/app", "x"]), &v(&["y"])), Some(v(&["x", "y"])));
        assert_eq!(argv(&v(&["/app"]), &[]), Some(v(&[])));
        assert_eq!(argv(&v(&["top"]), &v(&["-b"])), Some(v(&["top", "-b"])));
    }

    #[test]
    fn resources() {
        assert_eq!(memory_mib(0).unwrap(), None);
        assert_eq!(memory_mib(64 << 20).unwrap(), Some(64));
        assert_eq!(memory_mib((64 << 20) + 1).unwrap(), Some(65));
        assert_eq!(vcpus(0, 100_000).unwrap(), None);
        assert_eq!(vcpus(150_000, 100_000).unwrap(), Some(2));
        assert!(vcpus(1_000_000_000, 1).is_err());
    }
}
