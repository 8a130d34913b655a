//! Pod networking end to end with the real guest kernel: CNI (Debian's bridge +
//! host-local on a private bridge and range, nothing leaves the machine) gives each pod
//! its namespace and IP; the vsock-echo app (examples/apps/vsock-echo, vsock port 5000)
//! is reached at `podIP:5000` from a client namespace on the same bridge, through arrowd's
//! relay inside the pod's namespace → the instance's vsock. Pod A cold-boots with only a
//! `containerPort` (no exported port: its VM still has the vsock device the relay needs;
//! its ports open at APP_READY), pod B starts as a clone of a template and also has a
//! `hostPort`; both stay reachable across an arrowd kill; stopping A releases its IP
//! while B keeps serving. Two real boots
//! (~4 s each on Intel hosts, ~25 s on AMD). Root, /dev/kvm and iproute2 needed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cni::TestNet;
use common::cri::CriClient;
use common::{stderr, Daemon};
use k8s_cri::v1::*;

const PORT: u16 = 5000;
const BOOT: Duration = Duration::from_secs(180);

fn runp(c: &CriClient, name: &str, host_port: u16, logs: &std::path::Path) -> String {
    c.run_pod_config(PodSandboxConfig {
        log_directory: logs.display().to_string(),
        // What kubelet sends for `ports: [{containerPort: 5000, hostPort: …}]`.
        port_mappings: vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: i32::from(PORT),
            host_port: i32::from(host_port),
            host_ip: if host_port > 0 {
                "127.0.0.1".into()
            } else {
                String::new()
            },
        }],
        ..CriClient::pod_config(name)
    })
    .unwrap()
}

fn start_echo(c: &CriClient, pod: &str) -> String {
    let ctr = c.create(pod, "echo", "vsock-echo:latest", &[]).unwrap();
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: ctr.clone(),
    }))
    .unwrap();
    ctr
}

fn pod_ip(c: &CriClient, pod: &str) -> SocketAddr {
    let st = c
        .call(c.runtime().pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_owned(),
            verbose: false,
        }))
        .unwrap();
    let ip = st.status.unwrap().network.unwrap().ip;
    SocketAddr::new(ip.parse().expect("a pod IP"), PORT)
}

fn verbose(c: &CriClient, ctr: &str) -> serde_json::Value {
    let r = c
        .call(c.runtime().container_status(ContainerStatusRequest {
            container_id: ctr.to_owned(),
            verbose: true,
        }))
        .unwrap();
    serde_json::from_str(&r.info["info"]).unwrap()
}

#[test]
fn pods_are_reachable_at_their_pod_ip_over_vsock() {
    let net = TestNet::new('k', 2);
    net.write_config(None);
    let mut args: Vec<String> = net.args();
    args.extend(["--pool-size".into(), "0".into()]);
    let mut d = Daemon::with_real_kernel(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let src = common::repo_root().join("examples/apps/vsock-echo");
    let store = asdk::Store::open(d.store_dir()).unwrap();
    asdk::build::build_into(&store, &src.join("vsock-echo.c"), &Default::default(), &[]).unwrap();
    let c = CriClient::connect(&d.cri_socket());
    let client = net.client("c");

    // Pod A: a cold boot with a containerPort and no hostPort (nothing exported: the
    // pod port alone needs the VM's vsock device). Its pod port opens only once the app
    // reported APP_READY.
    let logs = d.dir.path().join("pods");
    let a = runp(&c, "a", 0, &logs);
    let addr_a = pod_ip(&c, &a);
    let ctr_a = start_echo(&c, &a);
    let early = client.connect(addr_a, Duration::from_secs(2));
    assert_eq!(
        early.as_ref().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the pod port must stay closed while the app boots: {early:?}"
    );
    assert_eq!(verbose(&c, &ctr_a)["appReady"], false);
    let took = client.echo(addr_a, BOOT);
    eprintln!(
        "pod A {addr_a}: first echo {} ms after StartContainer",
        took.as_millis()
    );
    let info = verbose(&c, &ctr_a);
    assert_eq!(info["appReady"], true, "{info}");
    assert_eq!(info["podPorts"], serde_json::json!([PORT]), "{info}");
    // A port the pod does not declare: refused (nothing listens there).
    let other = client.connect(
        SocketAddr::new(addr_a.ip(), PORT + 1),
        Duration::from_secs(2),
    );
    assert_eq!(
        other.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused)
    );

    // Pod B: its container starts as a clone of a template of the same image; it gets its
    // own namespace, IP and relay (the template had none), and a hostPort.
    let out = d.actl(&["template", "create", "--name", "echo", "vsock-echo"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let host_port = common::free_port();
    let b = runp(&c, "b", host_port, &logs);
    let addr_b = pod_ip(&c, &b);
    assert_ne!(addr_a.ip(), addr_b.ip());
    let ctr_b = start_echo(&c, &b);
    let took = client.echo(addr_b, BOOT);
    let info = verbose(&c, &ctr_b);
    assert_eq!(info["instance"]["clone"]["template"], "echo", "{info}");
    assert_eq!(info["appReady"], true, "{info}");
    eprintln!(
        "pod B {addr_b} (clone): first echo {} ms after StartContainer",
        took.as_millis()
    );
    // The hostPort goes through arrowd's host-side relay to the same app.
    let mut h = std::net::TcpStream::connect(("127.0.0.1", host_port)).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    use std::io::{Read, Write};
    h.write_all(b"via hostPort\n").unwrap();
    let mut buf = [0u8; 13];
    h.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"via hostPort\n");
    drop(h);

    // arrowd killed and restarted: the namespaces and VMs outlived it; the relays are
    // opened again in the existing namespaces.
    d.signal(libc::SIGKILL);
    d.start();
    let c = CriClient::connect(&d.cri_socket());
    for addr in [addr_a, addr_b] {
        let took = client.echo(addr, Duration::from_secs(30));
        eprintln!(
            "{addr} after the arrowd restart: echo after {} ms",
            took.as_millis()
        );
    }
    assert_eq!(pod_ip(&c, &a), addr_a);

    // Stopping A releases its IP and namespace; B keeps serving.
    c.call(c.runtime().stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: a.clone(),
    }))
    .unwrap();
    assert!(client.connect(addr_a, Duration::from_secs(2)).is_err());
    assert_eq!(net.leases(), {
        let mut v = vec![addr_b.ip().to_string(), client.ip.to_string()];
        v.sort();
        v
    });
    assert_eq!(net.namespaces().len(), 1, "{:?}", net.namespaces());
    client.echo(addr_b, Duration::from_secs(10));
    for pod in [&a, &b] {
        c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        }))
        .unwrap();
    }
    assert!(net.namespaces().is_empty(), "{:?}", net.namespaces());
    assert_eq!(net.leases(), vec![client.ip.to_string()]);
    assert!(d.vmms().is_empty());
    assert!(d.actl(&["template", "rm", "echo"]).status.success());
}
