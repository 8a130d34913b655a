//! The gRPC trait implementations: each RPC unpacks its request and calls [`Cri`].

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::{Cri, RUNTIME_HANDLER, RUNTIME_NAME};

type R<T> = Result<Response<T>, Status>;

fn ok<T>(v: T) -> R<T> {
    Ok(Response::new(v))
}

/// Why a single-task microVM cannot do what exec/attach need.
const NO_EXEC: &str = "an Arrow container is a single-task microVM: its app is the only process, so there is no second process to exec and no shell to attach to; use the app's own endpoints (exported ports) or `crictl logs`";

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Cri {
    /// RuntimeReady: the guest kernel, arrow-vmm and /dev/kvm are usable.
    fn runtime_condition(&self) -> RuntimeCondition {
        let cfg = self.sup.config();
        let kernel = cfg.kernel_path();
        let vmm = cfg.vmm_path();
        let vmm_ok = if vmm.components().count() > 1 {
            is_executable(&vmm)
        } else {
            std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|d| is_executable(&d.join(&vmm)))
            })
        };
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm");
        let problem = if !kernel.is_file() {
            Some((
                "NoGuestKernel",
                format!(
                    "guest kernel {} does not exist: restart arrowd with --kernel PATH",
                    kernel.display()
                ),
            ))
        } else if !vmm_ok {
            Some((
                "NoVmm",
                format!(
                    "arrow-vmm {} is not an executable file: restart arrowd with --vmm PATH",
                    vmm.display()
                ),
            ))
        } else if let Err(e) = kvm {
            Some(("NoKvm", format!("cannot open /dev/kvm: {e}")))
        } else {
            None
        };
        let (status, reason, message) = match problem {
            Some((r, m)) => (false, r.to_owned(), m),
            None => (true, String::new(), String::new()),
        };
        RuntimeCondition {
            r#type: "RuntimeReady".to_owned(),
            status,
            reason,
            message,
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, _: Request<VersionRequest>) -> R<VersionResponse> {
        ok(VersionResponse {
            version: "0.1.0".to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
            runtime_api_version: "v1".to_owned(),
        })
    }

    async fn run_pod_sandbox(&self, r: Request<RunPodSandboxRequest>) -> R<RunPodSandboxResponse> {
        let r = r.into_inner();
        let pod_sandbox_id = self.run_sandbox(r.config, r.runtime_handler).await?;
        ok(RunPodSandboxResponse { pod_sandbox_id })
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<StopPodSandboxRequest>,
    ) -> R<StopPodSandboxResponse> {
        self.stop_sandbox(&r.into_inner().pod_sandbox_id).await?;
        ok(StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<RemovePodSandboxRequest>,
    ) -> R<RemovePodSandboxResponse> {
        self.remove_sandbox(&r.into_inner().pod_sandbox_id).await?;
        ok(RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<PodSandboxStatusRequest>,
    ) -> R<PodSandboxStatusResponse> {
        let r = r.into_inner();
        ok(self.sandbox_status(&r.pod_sandbox_id, r.verbose)?)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<ListPodSandboxRequest>,
    ) -> R<ListPodSandboxResponse> {
        ok(ListPodSandboxResponse {
            items: self.list_sandboxes(r.into_inner().filter)?,
        })
    }

    async fn create_container(
        &self,
        r: Request<CreateContainerRequest>,
    ) -> R<CreateContainerResponse> {
        let r = r.into_inner();
        let container_id = self.create_container(&r.pod_sandbox_id, r.config).await?;
        ok(CreateContainerResponse { container_id })
    }

    async fn start_container(
        &self,
        r: Request<StartContainerRequest>,
    ) -> R<StartContainerResponse> {
        self.arc()?
            .start_container(&r.into_inner().container_id)
            .await?;
        ok(StartContainerResponse {})
    }

    async fn stop_container(&self, r: Request<StopContainerRequest>) -> R<StopContainerResponse> {
        let r = r.into_inner();
        Cri::stop_container(self, &r.container_id, r.timeout).await?;
        ok(StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        r: Request<RemoveContainerRequest>,
    ) -> R<RemoveContainerResponse> {
        Cri::remove_container(self, &r.into_inner().container_id).await?;
        ok(RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        r: Request<ListContainersRequest>,
    ) -> R<ListContainersResponse> {
        ok(ListContainersResponse {
            containers: Cri::list_containers(self, r.into_inner().filter)?,
        })
    }

    async fn container_status(
        &self,
        r: Request<ContainerStatusRequest>,
    ) -> R<ContainerStatusResponse> {
        let r = r.into_inner();
        let (status, info) = Cri::container_status(self, &r.container_id, r.verbose)?;
        ok(ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    async fn update_container_resources(
        &self,
        r: Request<UpdateContainerResourcesRequest>,
    ) -> R<UpdateContainerResourcesResponse> {
        let r = r.into_inner();
        self.update_resources(&r.container_id, r.linux).await?;
        ok(UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<ReopenContainerLogRequest>,
    ) -> R<ReopenContainerLogResponse> {
        self.reopen_log(&r.into_inner().container_id)?;
        ok(ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, _: Request<ExecSyncRequest>) -> R<ExecSyncResponse> {
        Err(Status::unimplemented(format!("exec: {NO_EXEC}")))
    }

    async fn exec(&self, _: Request<ExecRequest>) -> R<ExecResponse> {
        Err(Status::unimplemented(format!("exec: {NO_EXEC}")))
    }

    async fn attach(&self, _: Request<AttachRequest>) -> R<AttachResponse> {
        Err(Status::unimplemented(format!("attach: {NO_EXEC}")))
    }

    async fn port_forward(&self, _: Request<PortForwardRequest>) -> R<PortForwardResponse> {
        Err(Status::unimplemented(
            "port-forward: not implemented by arrowd; export the port instead (a hostPort in the pod spec becomes a host TCP port forwarded to the app's vsock port)",
        ))
    }

    async fn container_stats(
        &self,
        r: Request<ContainerStatsRequest>,
    ) -> R<ContainerStatsResponse> {
        ok(ContainerStatsResponse {
            stats: Some(Cri::container_stats(self, &r.into_inner().container_id)?),
        })
    }

    async fn list_container_stats(
        &self,
        r: Request<ListContainerStatsRequest>,
    ) -> R<ListContainerStatsResponse> {
        ok(ListContainerStatsResponse {
            stats: self.list_stats(r.into_inner().filter)?,
        })
    }

    async fn pod_sandbox_stats(
        &self,
        _: Request<PodSandboxStatsRequest>,
    ) -> R<PodSandboxStatsResponse> {
        Err(Status::unimplemented(
            "pod sandbox stats: not implemented by arrowd (a sandbox has no VM of its own); use ContainerStats / crictl stats",
        ))
    }

    async fn list_pod_sandbox_stats(
        &self,
        _: Request<ListPodSandboxStatsRequest>,
    ) -> R<ListPodSandboxStatsResponse> {
        Err(Status::unimplemented(
            "pod sandbox stats: not implemented by arrowd (a sandbox has no VM of its own); use ListContainerStats / crictl stats",
        ))
    }

    async fn update_runtime_config(
        &self,
        _: Request<UpdateRuntimeConfigRequest>,
    ) -> R<UpdateRuntimeConfigResponse> {
        // The pod CIDR is the CNI configuration's business (host-local ranges).
        ok(UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, _: Request<StatusRequest>) -> R<StatusResponse> {
        let (status, reason, message) = self.network_condition();
        let network = RuntimeCondition {
            r#type: "NetworkReady".to_owned(),
            status,
            reason,
            message,
        };
        ok(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![self.runtime_condition(), network],
            }),
            info: Default::default(),
            runtime_handlers: ["", RUNTIME_HANDLER]
                .into_iter()
                .map(|n| RuntimeHandler {
                    name: n.to_owned(),
                    features: Some(RuntimeHandlerFeatures::default()),
                })
                .collect(),
            features: Some(RuntimeFeatures::default()),
        })
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> R<CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "checkpoint: not implemented through CRI by arrowd",
        ))
    }

    type GetContainerEventsStream = tokio_stream::Empty<Result<ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        Err(Status::unimplemented(
            "container events: not implemented by arrowd; kubelet's default (polling) PLEG works without them",
        ))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> R<ListMetricDescriptorsResponse> {
        Err(Status::unimplemented(
            "metric descriptors: not implemented by arrowd",
        ))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> R<ListPodSandboxMetricsResponse> {
        Err(Status::unimplemented(
            "pod sandbox metrics: not implemented by arrowd",
        ))
    }

    async fn runtime_config(&self, _: Request<RuntimeConfigRequest>) -> R<RuntimeConfigResponse> {
        Err(Status::unimplemented(
            "runtime config: arrowd does not report a cgroup driver (it places instances under its own --cgroup-root); configure kubelet's cgroupDriver",
        ))
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, r: Request<ListImagesRequest>) -> R<ListImagesResponse> {
        ok(ListImagesResponse {
            images: Cri::list_images(self, r.into_inner().filter)?,
        })
    }

    async fn image_status(&self, r: Request<ImageStatusRequest>) -> R<ImageStatusResponse> {
        let r = r.into_inner();
        let (image, info) = Cri::image_status(self, r.image, r.verbose)?;
        ok(ImageStatusResponse { image, info })
    }

    async fn pull_image(&self, r: Request<PullImageRequest>) -> R<PullImageResponse> {
        let r = r.into_inner();
        ok(PullImageResponse {
            image_ref: Cri::pull_image(self, r.image, r.auth).await?,
        })
    }

    async fn remove_image(&self, r: Request<RemoveImageRequest>) -> R<RemoveImageResponse> {
        Cri::remove_image(self, r.into_inner().image)?;
        ok(RemoveImageResponse {})
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> R<ImageFsInfoResponse> {
        let (image_filesystems, container_filesystems) = Cri::image_fs_info(self);
        ok(ImageFsInfoResponse {
            image_filesystems,
            container_filesystems,
        })
    }
}
