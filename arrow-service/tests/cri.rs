//! CRI (runtime.v1) over arrowd's gRPC Unix socket with the k8s-cri client, against a real
//! arrowd booting real arrow-vmm guests (the freestanding test guest as kernel): the call
//! sequences crictl makes, idempotence, unknown IDs, bad requests and restart safety.

mod common;

#[path = "../../asdk/tests/support/registry.rs"]
mod registry;

use std::time::{Duration, Instant};

use common::cri::CriClient;
use common::Daemon;
use k8s_cri::v1::*;
use tonic::Code;

fn client(d: &Daemon) -> CriClient {
    CriClient::connect(&d.cri_socket())
}

/// Waits until `path` holds `needle`.
fn wait_for_text(path: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < common::TIMEOUT,
            "{} never contained {needle:?}: {text:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every line is `<RFC3339Nano> stdout F|P <text>`.
fn check_cri_format(text: &str) {
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let ts = parts.next().unwrap();
        assert!(
            ts.len() == 30
                && ts.ends_with('Z')
                && ts.as_bytes()[10] == b'T'
                && ts.as_bytes()[19] == b'.',
            "bad timestamp in {line:?}"
        );
        assert_eq!(parts.next(), Some("stdout"), "{line:?}");
        assert!(matches!(parts.next(), Some("F" | "P")), "{line:?}");
    }
}

#[test]
fn crictl_flow_runp_create_start_logs_stop_rm() {
    let d = Daemon::new();
    d.image("guest", &["idle"]);
    let c = client(&d);
    let logs = d.dir.path().join("pods");

    // Connection handshake: Version on the runtime side, ImageFsInfo on the image side.
    let v = c
        .call(c.runtime().version(VersionRequest::default()))
        .unwrap();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("arrow", "v1")
    );
    let fs = c
        .call(c.images().image_fs_info(ImageFsInfoRequest {}))
        .unwrap();
    assert!(
        fs.image_filesystems[0].used_bytes.unwrap().value > 0,
        "{fs:?}"
    );
    let st = c
        .call(c.runtime().status(StatusRequest::default()))
        .unwrap();
    let conds = st.status.unwrap().conditions;
    let cond = |t: &str| conds.iter().find(|c| c.r#type == t).unwrap();
    assert!(cond("RuntimeReady").status, "{conds:?}");
    // This daemon has no CNI configuration: no pod network, and Status says why.
    let net = cond("NetworkReady");
    assert!(!net.status, "{conds:?}");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("no CNI network configuration in"),
        "{net:?}"
    );

    // crictl images / inspecti / pull of a local image.
    let imgs = c
        .call(c.images().list_images(ListImagesRequest::default()))
        .unwrap()
        .images;
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].repo_tags, ["guest:latest"]);
    assert!(
        imgs[0].id.starts_with("sha256:") && imgs[0].id.len() == 71,
        "{}",
        imgs[0].id
    );
    let pulled = c
        .call(c.images().pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: "guest".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(pulled.image_ref, imgs[0].id);

    // runp → create → start: the app prints numbered lines and exits 0.
    let pod = c.run_pod("web", &logs);
    assert_eq!(pod.len(), 64);
    let ctr = c
        .create(&pod[..13], "counter", "guest:latest", &["count=3"])
        .unwrap();
    assert_eq!(ctr.len(), 64);
    assert_eq!(
        c.status(&ctr).unwrap().state,
        ContainerState::ContainerCreated as i32
    );
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: ctr[..13].into(),
    }))
    .unwrap();
    let st = c.wait_state(&ctr, ContainerState::ContainerExited);
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );
    assert!(st.started_at > 0 && st.finished_at >= st.started_at && st.created_at > 0);
    assert_eq!(st.log_path, logs.join("counter.log").display().to_string());
    assert_eq!(st.image_ref, imgs[0].id);
    let text = wait_for_text(&logs.join("counter.log"), "stdout F count 3");
    check_cri_format(&text);
    assert!(text.contains(" stdout F count 1\n"), "{text}");

    // ps / pods with filters.
    let list = |f: ContainerFilter| {
        c.call(
            c.runtime()
                .list_containers(ListContainersRequest { filter: Some(f) }),
        )
        .unwrap()
        .containers
    };
    assert_eq!(list(ContainerFilter::default()).len(), 1);
    assert_eq!(
        list(ContainerFilter {
            pod_sandbox_id: pod[..8].into(),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        list(ContainerFilter {
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32
            }),
            ..Default::default()
        })
        .len(),
        0
    );
    assert_eq!(
        list(ContainerFilter {
            label_selector: [("container".to_owned(), "counter".to_owned())].into(),
            ..Default::default()
        })[0]
            .id,
        ctr
    );
    assert!(list(ContainerFilter {
        id: "ffff".repeat(4),
        ..Default::default()
    })
    .is_empty());
    let pods = c
        .call(c.runtime().list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
        }))
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32);

    // A long-running app in a second pod: running, a sibling, stats, stop.
    let pod2 = c.run_pod("idle", &logs);
    let idle = c.create(&pod2, "idler", "guest", &[]).unwrap();
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: idle.clone(),
    }))
    .unwrap();
    c.wait_state(&idle, ContainerState::ContainerRunning);
    wait_for_text(&logs.join("idler.log"), "stdout F idle");
    // A second container in the same pod is a second microVM; a name is taken once.
    let second = c.create(&pod2, "second", "guest", &["count=2"]).unwrap();
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: second.clone(),
    }))
    .unwrap();
    let st = c.wait_state(&second, ContainerState::ContainerExited);
    assert_eq!(st.reason, "Completed", "{st:?}");
    wait_for_text(&logs.join("second.log"), "stdout F count 2");
    let e = c.create(&pod2, "second", "guest", &[]).unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let stats = c
        .call(c.runtime().container_stats(ContainerStatsRequest {
            container_id: idle.clone(),
        }))
        .unwrap()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.is_some());
    let all = c
        .call(
            c.runtime()
                .list_container_stats(ListContainerStatsRequest::default()),
        )
        .unwrap()
        .stats;
    assert_eq!(all.len(), 3);
    // Log rotation: move the file away, reopen, new output goes to a new file.
    std::fs::rename(logs.join("idler.log"), logs.join("idler.log.1")).unwrap();
    c.call(c.runtime().reopen_container_log(ReopenContainerLogRequest {
        container_id: idle.clone(),
    }))
    .unwrap();
    assert!(logs.join("idler.log").exists());
    // Memory grows through hotplug (the guest plugs in the background); beyond the
    // instance's hotplug maximum (4 x 32 MiB) is refused; vCPUs are fixed.
    let upd = |mib: i64, quota: i64| {
        c.call(
            c.runtime()
                .update_container_resources(UpdateContainerResourcesRequest {
                    container_id: idle.clone(),
                    linux: Some(LinuxContainerResources {
                        memory_limit_in_bytes: mib << 20,
                        cpu_quota: quota,
                        cpu_period: 100_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
        )
    };
    upd(63, 0).unwrap();
    let e = upd(1024, 0).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("MiB"), "{e:?}");
    let e = upd(0, 200_000).unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("fixed at boot"), "{e:?}");
    // Exec is not possible in a single-task VM.
    let e = c
        .call(c.runtime().exec_sync(ExecSyncRequest {
            container_id: idle.clone(),
            cmd: vec!["ls".into()],
            timeout: 1,
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("single-task"), "{e:?}");

    // stop (idempotent) → rm (idempotent) → stopp → rmp.
    for _ in 0..2 {
        c.call(c.runtime().stop_container(StopContainerRequest {
            container_id: idle.clone(),
            timeout: 1,
        }))
        .unwrap();
    }
    let st = c.status(&idle).unwrap();
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert!(st.finished_at > 0 && !st.message.is_empty(), "{st:?}");
    eprintln!(
        "stopped: exit {} reason {} message {}",
        st.exit_code, st.reason, st.message
    );
    // The image is in use: rmi is refused.
    let e = c
        .call(c.images().remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: "guest:latest".into(),
                ..Default::default()
            }),
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for _ in 0..2 {
        c.call(c.runtime().remove_container(RemoveContainerRequest {
            container_id: idle.clone(),
        }))
        .unwrap();
    }
    for p in [&pod, &pod2] {
        c.call(c.runtime().stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: p.to_string(),
        }))
        .unwrap();
        for _ in 0..2 {
            c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.to_string(),
            }))
            .unwrap();
        }
    }
    assert!(list(ContainerFilter::default()).is_empty());
    assert!(d.vmms().is_empty());
    let instances = d.get("/instances?all=true").unwrap();
    assert_eq!(instances.as_array().unwrap().len(), 0, "{instances}");

    // rmi, then the image is gone (ImageStatus: OK without an image).
    c.call(c.images().remove_image(RemoveImageRequest {
        image: Some(ImageSpec {
            image: "guest:latest".into(),
            ..Default::default()
        }),
    }))
    .unwrap();
    let st = c
        .call(c.images().image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: "guest:latest".into(),
                ..Default::default()
            }),
            verbose: false,
        }))
        .unwrap();
    assert!(st.image.is_none());
}

#[test]
fn unknown_ids_bad_requests_and_env_checks() {
    let d = Daemon::new();
    d.image("guest", &["hello"]);
    let c = client(&d);
    let unknown = "0123456789abcdef".repeat(4);
    let e = c.status(&unknown).unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("not found"), "{e:?}");
    let e = c
        .call(c.runtime().start_container(StartContainerRequest {
            container_id: unknown.clone(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .call(c.runtime().pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: unknown.clone(),
            verbose: false,
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Stopping and removing what does not exist is fine (kubelet retries them).
    c.call(c.runtime().stop_container(StopContainerRequest {
        container_id: unknown.clone(),
        timeout: 0,
    }))
    .unwrap();
    c.call(c.runtime().stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: unknown.clone(),
    }))
    .unwrap();
    c.call(c.runtime().remove_container(RemoveContainerRequest {
        container_id: unknown.clone(),
    }))
    .unwrap();
    c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: unknown.clone(),
    }))
    .unwrap();

    // Malformed requests: InvalidArgument, and arrowd keeps serving.
    let e = c
        .call(c.runtime().run_pod_sandbox(RunPodSandboxRequest::default()))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .call(c.runtime().run_pod_sandbox(RunPodSandboxRequest {
            config: Some(PodSandboxConfig::default()),
            runtime_handler: "runc".into(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let pod = c.run_pod("p", d.dir.path());
    let e = c
        .call(c.runtime().create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: None,
            sandbox_config: None,
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c.create(&pod, "x", "nosuch:1", &[]).unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("asdk import"), "{e:?}");
    // Raw garbage on the socket does not hurt the server.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(d.cri_socket()).unwrap();
        let _ = s.write_all(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xffgarbage",
        );
    }
    // Environment the guest kernel would eat, and too much of it.
    let mk = |envs: Vec<KeyValue>| {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "env".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "guest".into(),
                ..Default::default()
            }),
            envs,
            ..Default::default()
        };
        c.call(c.runtime().create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: None,
        }))
    };
    let kv = |k: &str| KeyValue {
        key: k.into(),
        value: "1".into(),
    };
    let e = mk(vec![kv("console")]).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("guest kernel would take it"), "{e:?}");
    let e = mk((0..40).map(|i| kv(&format!("K{i}"))).collect()).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at most 30"), "{e:?}");
    let e = mk(vec![KeyValue {
        key: "BIG".into(),
        value: "x".repeat(3000),
    }])
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("command line"), "{e:?}");
    // The same checks apply to the REST API.
    let (status, msg) = d
        .post(
            "/instances",
            Some(serde_json::json!({"image": "guest", "env": {"init": "/bin/sh"}})),
        )
        .unwrap_err();
    assert_eq!(status, 400);
    assert!(msg.contains("guest kernel would take it"), "{msg}");
    // A good environment reaches the guest (the test guest prints its command line).
    let ctr = {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: "env".into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: "guest".into(),
                ..Default::default()
            }),
            envs: vec![KeyValue {
                key: "MODE".into(),
                value: "cri test".into(),
            }],
            command: vec!["info".into()],
            log_path: "env.log".into(),
            ..Default::default()
        };
        c.call(c.runtime().create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: None,
        }))
        .unwrap()
        .container_id
    };
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: ctr.clone(),
    }))
    .unwrap();
    c.wait_state(&ctr, ContainerState::ContainerExited);
    let text = wait_for_text(&d.dir.path().join("env.log"), "e820");
    assert!(text.contains(" \"MODE=cri test\" "), "{text}");
    assert!(text.contains(" -- info\n"), "{text}");

    // ImageStatus of an unknown image: OK and empty; pull of a registry image: what to do.
    let st = c
        .call(c.images().image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: "docker.io/library/nginx:1.27".into(),
                ..Default::default()
            }),
            verbose: false,
        }))
        .unwrap();
    assert!(st.image.is_none());
    let e = c
        .call(c.images().pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: "Not A Reference".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("asdk import"), "{e:?}");
    // kubelet's normalized name of a local image resolves.
    let st = c
        .call(c.images().image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: "docker.io/library/guest:latest".into(),
                ..Default::default()
            }),
            verbose: true,
        }))
        .unwrap();
    assert_eq!(st.image.unwrap().repo_tags, ["guest:latest"]);
    // Still serving.
    c.call(c.runtime().version(VersionRequest::default()))
        .unwrap();
}

#[test]
fn containers_survive_an_arrowd_kill() {
    let mut d = Daemon::new();
    d.image("guest", &["idle"]);
    let logs = d.dir.path().join("pods");
    let (pod, ctr) = {
        let c = client(&d);
        let pod = c.run_pod("keep", &logs);
        let ctr = c.create(&pod, "idler", "guest", &[]).unwrap();
        c.call(c.runtime().start_container(StartContainerRequest {
            container_id: ctr.clone(),
        }))
        .unwrap();
        c.wait_state(&ctr, ContainerState::ContainerRunning);
        wait_for_text(&logs.join("idler.log"), "stdout F idle");
        (pod, ctr)
    };
    let pid = d.vmms()[0].pid;
    d.signal(libc::SIGKILL);
    d.start();
    let c = client(&d);
    let st = c.status(&ctr).unwrap();
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
    assert_eq!(d.vmms()[0].pid, pid, "the same VM was re-adopted");
    let pods = c
        .call(
            c.runtime()
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, pod);
    c.call(c.runtime().stop_container(StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 0,
    }))
    .unwrap();
    assert_eq!(
        c.status(&ctr).unwrap().state,
        ContainerState::ContainerExited as i32
    );
    // The log was not duplicated by the restarted copy.
    let text = std::fs::read_to_string(logs.join("idler.log")).unwrap();
    assert_eq!(text.matches("stdout F idle").count(), 1, "{text}");
    c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    }))
    .unwrap();
    assert!(d.vmms().is_empty());
}

#[test]
fn pull_image_from_a_registry_with_credentials() {
    let reg = registry::Registry::start(Some(("ann", "pw2")));
    let d = Daemon::new();
    // An image built elsewhere and pushed with asdk's library.
    let elsewhere = tempfile::tempdir().unwrap();
    let src = asdk::Store::open(elsewhere.path()).unwrap();
    let file = asdk::spec::SpecFile {
        name: Some("exit4".into()),
        args: vec!["exit=4".into()],
        memory_mib: Some(32),
        ..Default::default()
    };
    let (spec, files) =
        asdk::Spec::resolve(&file, "exit4", "1.0.0", std::path::Path::new(".")).unwrap();
    let built = asdk::image::assemble(b"\x7fELF not run by the test guest", &spec, &files)
        .expect("assemble");
    src.add(&built, &["exit4:latest".parse().unwrap()]).unwrap();
    let remote = format!("{}/apps/exit4:1", reg.addr);
    let opts = asdk::registry::RegistryOptions {
        credentials: Some(asdk::registry::Credentials::Basic {
            username: "ann".into(),
            password: "pw2".into(),
        }),
        progress: asdk::registry::ProgressMode::Quiet,
        ..Default::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(asdk::registry::push(&src, "exit4", &remote, &opts))
        .unwrap();

    let c = client(&d);
    let pull = |auth: Option<AuthConfig>| {
        c.call(c.images().pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: remote.clone(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        }))
    };
    let e = pull(None).unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // crictl pull --creds sends the base64 `auth` form.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("ann:pw2");
    let pulled = pull(Some(AuthConfig {
        auth,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(pulled.image_ref, built.digest.to_string());
    // Now local: a second pull needs no credentials.
    assert_eq!(pull(None).unwrap().image_ref, pulled.image_ref);
    let st = c
        .call(c.images().image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: remote.clone(),
                ..Default::default()
            }),
            verbose: false,
        }))
        .unwrap();
    assert_eq!(st.image.unwrap().id, pulled.image_ref);
    // The pulled image runs as a CRI container.
    let pod = c.run_pod("pulled", d.dir.path());
    let ctr = c.create(&pod, "exit4", &remote, &[]).unwrap();
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: ctr.clone(),
    }))
    .unwrap();
    let st = c.wait_state(&ctr, ContainerState::ContainerExited);
    assert_eq!((st.exit_code, st.reason.as_str()), (4, "Error"), "{st:?}");
}
