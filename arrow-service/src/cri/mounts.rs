//! CRI `ContainerConfig.mounts` → instance volumes (docs/cri.md, docs/volumes.md).
//!
//! kubelet sends mounts in almost every CreateContainer: the service-account token (a
//! projected directory), ConfigMaps, Secrets, emptyDir, hostPath, persistent volumes, and
//! files of its own — `/etc/hosts` (writable) and the termination message file (writable,
//! `/dev/termination-log` by default). A guest can be given directories live or read-only
//! and files only read-only (a file is packed), so:
//! - a writable file mount becomes a read-only one (logged): the guest reads the content
//!   as of the start and cannot write it;
//! - a writable file mount under /dev (the termination message file) is skipped (logged):
//!   the guest has no /dev of the host's to write it in, and kubelet then reads an empty
//!   message;
//! - propagation: `PRIVATE` is what every volume is; `HOST_TO_CONTAINER` has meaning for
//!   live (writable) volumes and is logged for read-only ones (a snapshot at the start);
//!   `BIDIRECTIONAL` is logged (guest mounts never reach the host);
//! - `selinux_relabel` is ignored (logged); id-mapped mounts and image volumes are
//!   refused with the reason.
//!
//! Everything else is validated like a REST volume by the supervisor (InvalidArgument
//! with the reason).

use k8s_cri::v1::{Mount, MountPropagation};
use tonic::Status;

use crate::volumes::Volume;

/// Whether `path` (a host path) is a regular file.
fn is_file(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The volumes an instance gets for a container's `mounts`.
pub fn volumes(mounts: &[Mount]) -> Result<Vec<Volume>, Status> {
    let mut out = Vec::new();
    for m in mounts {
        let what = format!("mount {:?} -> {:?}", m.host_path, m.container_path);
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "{what}: image volumes are not supported by Arrow; use a ConfigMap, a hostPath or a persistent volume"
            )));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{what}: id-mapped mounts (user namespaces) are not supported by Arrow; run the pod without hostUsers: false"
            )));
        }
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{what}: a mount needs a host_path and a container_path"
            )));
        }
        if m.selinux_relabel {
            tracing::info!(
                "{what}: selinux_relabel ignored (the guest has no SELinux labels of the host's)"
            );
        }
        let mut read_only = m.readonly || m.recursive_read_only;
        if !read_only && is_file(&m.host_path) {
            if m.container_path.starts_with("/dev/") {
                tracing::info!("{what}: a writable file under /dev (the termination message file) is not given to the guest; kubelet reads an empty termination message");
                continue;
            }
            tracing::info!(
                "{what}: a file is given to the guest read-only (its content as of the start)"
            );
            read_only = true;
        }
        match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationPrivate) => {}
            Ok(MountPropagation::PropagationHostToContainer) if read_only => tracing::info!(
                "{what}: host-to-container propagation: a read-only volume is the host content as of the start"
            ),
            Ok(MountPropagation::PropagationHostToContainer) => {}
            Ok(MountPropagation::PropagationBidirectional) => tracing::info!(
                "{what}: bidirectional propagation: mounts made in the guest never reach the host"
            ),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "{what}: unknown mount propagation {}",
                    m.propagation
                )))
            }
        }
        out.push(Volume {
            host_path: m.host_path.clone(),
            guest_path: m.container_path.clone(),
            read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host: &std::path::Path, guest: &str, ro: bool) -> Mount {
        Mount {
            host_path: host.display().to_string(),
            container_path: guest.into(),
            readonly: ro,
            ..Default::default()
        }
    }

    #[test]
    fn kubelets_default_mounts_map_to_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("kube-api-access");
        std::fs::create_dir(&token).unwrap();
        let cfg = dir.path().join("configmap");
        std::fs::create_dir(&cfg).unwrap();
        let hosts = dir.path().join("etc-hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let term = dir.path().join("termination");
        std::fs::write(&term, "").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut relabel = mount(&data, "/data", false);
        relabel.selinux_relabel = true;
        relabel.propagation = MountPropagation::PropagationHostToContainer as i32;
        let v = volumes(&[
            mount(
                &token,
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ),
            mount(&cfg, "/etc/config", true),
            mount(&hosts, "/etc/hosts", false),
            mount(&term, "/dev/termination-log", false),
            relabel,
        ])
        .unwrap();
        let got: Vec<(&str, bool)> = v
            .iter()
            .map(|v| (v.guest_path.as_str(), v.read_only))
            .collect();
        assert_eq!(
            got,
            [
                ("/var/run/secrets/kubernetes.io/serviceaccount", true),
                ("/etc/config", true),
                ("/etc/hosts", true),
                ("/data", false),
            ]
        );
        // The supervisor's validation accepts what the mapping gives.
        crate::volumes::spec::validate(&v, &dir.path().join("state")).unwrap();
    }

    #[test]
    fn unsupported_mounts_are_invalid_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = mount(dir.path(), "/x", true);
        m.uid_mappings.push(Default::default());
        let e = volumes(&[m]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("id-mapped"), "{}", e.message());
        let mut m = mount(dir.path(), "/x", true);
        m.image = Some(k8s_cri::v1::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        assert!(volumes(&[m])
            .unwrap_err()
            .message()
            .contains("image volumes"));
        let e = volumes(&[mount(std::path::Path::new(""), "/x", true)]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut m = mount(dir.path(), "/x", true);
        m.propagation = 7;
        assert!(volumes(&[m]).is_err());
    }
}
