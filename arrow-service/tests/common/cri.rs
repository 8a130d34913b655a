//! A k8s-cri gRPC client on arrowd's CRI Unix socket, for blocking tests.

use std::future::Future;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct CriClient {
    rt: tokio::runtime::Runtime,
    pub rs: RuntimeServiceClient<Channel>,
    pub is: ImageServiceClient<Channel>,
}

impl CriClient {
    pub fn connect(socket: &Path) -> CriClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path: PathBuf = socket.to_owned();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to arrowd's CRI socket");
        CriClient {
            rt,
            rs: RuntimeServiceClient::new(channel.clone()),
            is: ImageServiceClient::new(channel),
        }
    }

    /// Runs one call; `Err(status)` for gRPC errors.
    pub fn call<T, F>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt.block_on(f).map(|r| r.into_inner())
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.rs.clone()
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        self.is.clone()
    }

    /// A pod's config with the usual kubelet metadata (name, uid, namespace, hostname).
    pub fn pod_config(name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            ..Default::default()
        }
    }

    /// RunPodSandbox of `config`; the pod's ID.
    pub fn run_pod_config(&self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        self.call(self.runtime().run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))
        .map(|r| r.pod_sandbox_id)
    }

    /// RunPodSandbox with the usual kubelet metadata and an `app` label; logs under
    /// `log_dir`.
    pub fn run_pod(&self, name: &str, log_dir: &Path) -> String {
        self.run_pod_config(PodSandboxConfig {
            log_directory: log_dir.display().to_string(),
            labels: [("app".to_owned(), name.to_owned())].into(),
            ..Self::pod_config(name)
        })
        .expect("runp")
    }

    /// CreateContainer of `image` with `args` in `pod`, log at `<name>.log`.
    pub fn create(
        &self,
        pod: &str,
        name: &str,
        image: &str,
        args: &[&str],
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels: [("container".to_owned(), name.to_owned())].into(),
            ..Default::default()
        };
        self.call(self.runtime().create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: None,
        }))
        .map(|r| r.container_id)
    }

    pub fn status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        self.call(self.runtime().container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        }))
        .map(|r| r.status.expect("status"))
    }

    /// Waits until the container reaches `state`.
    pub fn wait_state(&self, id: &str, state: ContainerState) -> ContainerStatus {
        let start = std::time::Instant::now();
        loop {
            let st = self.status(id).unwrap();
            if st.state == state as i32 {
                return st;
            }
            assert!(
                start.elapsed() < super::TIMEOUT,
                "container {id} never reached {state:?}: {st:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Creates and starts the hello example (docker.io/library/hello:latest, built
    /// into the store by the caller) in `pod`: `/app --exit 3` with GREETING set,
    /// logging to `hello/0.log`; returns the container ID.
    pub fn start_hello(&self, pod: &str) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "hello".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "docker.io/library/hello:latest".into(),
                ..Default::default()
            }),
            command: vec!["/app".into(), "--exit".into()],
            args: vec!["3".into()],
            envs: vec![KeyValue {
                key: "GREETING".into(),
                value: "from CRI".into(),
            }],
            log_path: "hello/0.log".into(),
            ..Default::default()
        };
        let ctr = self
            .call(self.runtime().create_container(CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(config),
                sandbox_config: None,
            }))
            .unwrap()
            .container_id;
        self.call(self.runtime().start_container(StartContainerRequest {
            container_id: ctr.clone(),
        }))
        .unwrap();
        ctr
    }

    /// The CRI log at `path` once it holds `last` (the copy finishes right after
    /// the instance), or whatever it holds after 30 s.
    pub fn wait_log(path: &Path, last: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(last) || start.elapsed() > std::time::Duration::from_secs(30) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
