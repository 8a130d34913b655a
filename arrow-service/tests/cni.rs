//! Pod networking through CNI without a guest: one arrowd (test guest as kernel) whose CNI
//! configuration directory the test rewrites between steps (arrowd reads it at each
//! call). Real plugins (Debian's bridge + host-local) on a private bridge and range;
//! root and iproute2 needed. See common/cni.rs.

mod common;

use common::cni::TestNet;
use common::cri::CriClient;
use common::Daemon;
use k8s_cri::v1::*;

fn pod_config(name: &str, host_network: bool) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: host_network.then(|| LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..CriClient::pod_config(name)
    }
}

fn runp(c: &CriClient, name: &str, host_network: bool) -> Result<String, tonic::Status> {
    c.run_pod_config(pod_config(name, host_network))
}

fn pod_ip(c: &CriClient, id: &str) -> (String, serde_json::Value) {
    let r = c
        .call(c.runtime().pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        }))
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    (r.status.unwrap().network.unwrap().ip, info)
}

fn network_ready(c: &CriClient) -> RuntimeCondition {
    c.call(c.runtime().status(StatusRequest::default()))
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap()
}

#[test]
fn sandboxes_get_pod_ips_release_them_and_fail_cleanly() {
    let net = TestNet::new('s', 1);
    let args = net.args();
    let mut d = Daemon::with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let c = CriClient::connect(&d.cri_socket());

    // No configuration yet: NetworkReady is false with the reason.
    let cond = network_ready(&c);
    assert!(
        !cond.status && cond.message.contains("no CNI network configuration"),
        "{cond:?}"
    );
    net.write_config(None);
    let cond = network_ready(&c);
    assert!(cond.status, "{cond:?}");
    assert!(cond.message.contains("bridge"), "{cond:?}");

    // Two sandboxes: two namespaces, two IPs from the range, configured on eth0 inside.
    let t = std::time::Instant::now();
    let a = runp(&c, "a", false).unwrap();
    eprintln!(
        "RunPodSandbox with CNI (bridge + host-local): {} ms",
        t.elapsed().as_millis()
    );
    let b = runp(&c, "b", false).unwrap();
    let (ip_a, info_a) = pod_ip(&c, &a);
    let (ip_b, _) = pod_ip(&c, &b);
    assert!(ip_a.starts_with(&format!("{}.", net.prefix)), "{ip_a}");
    assert!(ip_b.starts_with(&format!("{}.", net.prefix)), "{ip_b}");
    assert_ne!(ip_a, ip_b);
    assert_eq!(net.namespaces().len(), 2, "{:?}", net.namespaces());
    let ns_a = std::path::PathBuf::from(info_a["netns"].as_str().unwrap());
    assert!(
        TestNet::addresses_in(&ns_a).contains(&format!("inet {ip_a}/24")),
        "{}",
        TestNet::addresses_in(&ns_a)
    );
    assert_eq!(net.leases(), {
        let mut v = vec![ip_a.clone(), ip_b.clone()];
        v.sort();
        v
    });

    // Host network: no CNI, no namespace, no IP.
    let h = runp(&c, "host", true).unwrap();
    assert_eq!(pod_ip(&c, &h).0, "");
    assert_eq!(net.namespaces().len(), 2);

    // Stop releases the IP and removes the namespace (idempotently); remove is then a no-op
    // for the network.
    let stopp = |id: &str| {
        c.call(c.runtime().stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        }))
    };
    let rmp = |id: &str| {
        c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        }))
    };
    stopp(&a).unwrap();
    assert_eq!(pod_ip(&c, &a).0, "");
    assert!(!ns_a.exists());
    assert_eq!(net.leases(), vec![ip_b.clone()]);
    stopp(&a).unwrap();
    rmp(&a).unwrap();
    rmp(&a).unwrap();
    // Remove without stop tears the network down too.
    rmp(&b).unwrap();
    rmp(&h).unwrap();
    assert!(net.namespaces().is_empty(), "{:?}", net.namespaces());
    assert!(net.leases().is_empty(), "{:?}", net.leases());

    // A plugin failure (host-local rejects the range): RunPodSandbox fails with the
    // plugin's message and leaves nothing behind.
    net.write_config(Some("10.213.1.0/99"));
    let e = runp(&c, "broken", false).unwrap_err();
    assert!(
        e.message()
            .contains("pod network setup failed: CNI plugin bridge ADD failed"),
        "{e:?}"
    );
    assert!(
        e.message().contains("10.213.1.0/99"),
        "the plugin's message: {e:?}"
    );
    assert!(net.namespaces().is_empty(), "{:?}", net.namespaces());
    assert!(net.leases().is_empty());
    let pods = c
        .call(
            c.runtime()
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        )
        .unwrap()
        .items;
    assert!(pods.is_empty(), "{pods:?}");

    // A plugin that is not installed: NetworkReady false, RunPodSandbox refused.
    std::fs::write(
        net.conf_dir.join("10-arrow-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let cond = network_ready(&c);
    assert!(
        !cond.status && cond.message.contains("\"no-such-plugin\""),
        "{cond:?}"
    );
    let e = runp(&c, "missing", false).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(net.namespaces().is_empty());

    // arrowd stopped during RunPodSandbox, after ADD but before the sandbox was recorded:
    // the restarted arrowd runs DEL and removes the namespace.
    net.write_config(None);
    let ns = net.netns_dir.join("arrow-orphan");
    arrow_service::netns::create(&ns).unwrap();
    let store =
        arrow_service::cri::store::CriStore::open(&d.dir.path().join("state/arrowd.db")).unwrap();
    store
        .put_network(&arrow_service::cri::store::NetworkRecord {
            sandbox_id: "0123456789abcdef".into(),
            netns: ns.display().to_string(),
            config: arrow_service::cni::config::load(&net.conf_dir)
                .unwrap()
                .to_json(),
            result: serde_json::Value::Null,
        })
        .unwrap();
    d.signal(libc::SIGKILL);
    d.start();
    let start = std::time::Instant::now();
    while ns.exists() || store.network("0123456789abcdef").unwrap().is_some() {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "the orphan network stayed: {}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
