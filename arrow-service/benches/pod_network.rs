//! Pod networking costs, all in one run on this host (release arrowd and arrow-vmm, the
//! real guest kernel, Debian's bridge + host-local on a private bridge; see
//! tests/common/cni.rs):
//! - RunPodSandbox with CNI (namespace + bridge/veth + host-local), and Stop+Remove;
//! - TCP request/response latency (64-byte messages on one connection), a new connection
//!   per request, and one-way-and-back throughput, over three paths:
//!   1. pod IP → guest: client namespace → bridge → arrowd's relay in the pod namespace →
//!      vsock → vsock-echo in the microVM;
//!   2. host port export → guest: host 127.0.0.1:hostPort → arrowd's host relay → vsock →
//!      the same app;
//!   3. the relay alone: client namespace → bridge → arrowd's relay code
//!      (`proxy::serve`, a listener bound in another namespace) → a host Unix socket that
//!      answers `CONNECT` like the VMM and echoes (no guest) — the relay's own cost;
//!   4. plain TCP: client namespace → bridge → an echo server (a host thread) listening in
//!      another namespace on the same bridge — what the relay adds is 3 − 4.
//!
//! `cargo bench -p arrow-service --bench pod_network` (ARROW_BENCH_RTT: round trips per
//! path, default 2000; ARROW_BENCH_MIB: throughput volume through the guest, default 2;
//! 64 MiB on the host-only paths). Prints a table and writes
//! target/bench-results/pod_network.json.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/summary.rs"]
mod summary;
use summary::{summary, write_results};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::cni::{Client, TestNet};
use common::cri::CriClient;
use common::Daemon;
use k8s_cri::v1::*;
use serde_json::json;

const PORT: u16 = 5000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pod_config(name: &str, host_port: u16) -> PodSandboxConfig {
    let logs = std::env::temp_dir().join(format!("arrow-pod-network-bench-{}", std::process::id()));
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            namespace: "bench".to_owned(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        port_mappings: vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: i32::from(PORT),
            host_port: i32::from(host_port),
            host_ip: "127.0.0.1".into(),
        }],
        ..Default::default()
    }
}

fn runp(c: &CriClient, name: &str, host_port: u16) -> String {
    c.call(c.runtime().run_pod_sandbox(RunPodSandboxRequest {
        config: Some(pod_config(name, host_port)),
        runtime_handler: String::new(),
    }))
    .unwrap()
    .pod_sandbox_id
}

fn rmp(c: &CriClient, id: &str) {
    c.call(c.runtime().stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    }))
    .unwrap();
    c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.to_owned(),
    }))
    .unwrap();
}

/// `n` round trips of 64 bytes on one connection, µs each.
fn rtt(mut s: TcpStream, n: usize) -> Vec<u64> {
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    (0..n)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            t.elapsed().as_micros() as u64
        })
        .collect()
}

/// Connect + one 64-byte round trip, µs each.
fn connects(connect: &dyn Fn() -> TcpStream, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let s = connect();
            let mut v = rtt(s, 1);
            v.pop();
            t.elapsed().as_micros() as u64
        })
        .collect()
}

/// MiB/s of `mib` MiB sent and echoed back on one connection (writer and reader threads).
fn throughput(s: TcpStream, mib: usize) -> f64 {
    let total = mib << 20;
    let mut w = s.try_clone().unwrap();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0xa5u8; 64 << 10];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    });
    let mut r = s;
    r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {got} of {total} bytes");
        got += n;
    }
    writer.join().unwrap();
    total as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

/// Echoes what `s` sends until it closes or fails.
fn echo_until_closed(mut s: impl Read + Write) {
    let mut buf = vec![0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A thread-per-connection echo server listening on `ip:PORT` inside `server`'s namespace.
fn plain_echo_server(server: &Client) -> SocketAddr {
    let addr = SocketAddr::new(server.ip, PORT);
    let l = arrow_service::netns::run_in(&server.path, move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                echo_until_closed(s);
            });
        }
    });
    addr
}

/// A Unix socket that answers `CONNECT <port>` with `OK 1` and then echoes, like the
/// VMM's vsock socket in front of vsock-echo.
fn fake_vmm(uds: &std::path::Path) {
    let l = std::os::unix::net::UnixListener::bind(uds).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read_exact(&mut b).is_ok() && b[0] != b'\n' {
                    line.push(b[0]);
                }
                if !line.starts_with(b"CONNECT ") || s.write_all(b"OK 1\n").is_err() {
                    return;
                }
                echo_until_closed(s);
            });
        }
    });
}

fn main() {
    common::build_release_vmm();
    let n_rtt = env_or("ARROW_BENCH_RTT", 2000);
    let mib = env_or("ARROW_BENCH_MIB", 2);
    let net = TestNet::new('b', 3);
    net.write_config(None);
    let mut args = net.args();
    args.extend(["--log-level".into(), "warn".into()]);
    let d = Daemon::with_real_kernel(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let store = asdk::Store::open(d.store_dir()).unwrap();
    let src = common::repo_root().join("examples/apps/vsock-echo/vsock-echo.c");
    asdk::build::build_into(&store, &src, &Default::default(), &[]).unwrap();
    let c = CriClient::connect(&d.cri_socket());
    let client = net.client("client");
    let server = net.client("server");

    println!(
        "{:<44} {:>4} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "metric", "", "p50", "p99", "min", "max", "n"
    );
    let mut rows = Vec::new();

    // Sandbox set-up and tear-down with CNI (no containers).
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let t = Instant::now();
        let id = runp(&c, &format!("s{i}"), 0);
        up.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        rmp(&c, &id);
        down.push(t.elapsed().as_micros() as u64);
    }
    rows.push(summary("RunPodSandbox (netns + CNI ADD)", "µs", &mut up));
    rows.push(summary(
        "StopPodSandbox + RemovePodSandbox (DEL)",
        "µs",
        &mut down,
    ));

    // One pod with the echo app, reachable at its pod IP and at a host port.
    let host_port = common::free_port();
    let pod = runp(&c, "echo", host_port);
    let ip: std::net::IpAddr = c
        .call(c.runtime().pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }))
        .unwrap()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip
        .parse()
        .unwrap();
    let pod_addr = SocketAddr::new(ip, PORT);
    let ctr = c.create(&pod, "echo", "vsock-echo:latest", &[]).unwrap();
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: ctr.clone(),
    }))
    .unwrap();
    client.echo(pod_addr, Duration::from_secs(180));
    let plain = plain_echo_server(&server);
    // The relay alone, in the server namespace on port PORT + 1.
    let uds = net.dir.path().join("fake-vmm.sock");
    fake_vmm(&uds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let relay = SocketAddr::new(server.ip, PORT + 1);
    let bound = arrow_service::netns::bind_tcp(&server.path, vec![relay])
        .unwrap()
        .into_iter()
        .map(|b| (b.unwrap(), u32::from(PORT)))
        .collect();
    let _relay = {
        let _g = rt.enter();
        arrow_service::proxy::serve("bench", bound, &uds).unwrap()
    };

    let host = || TcpStream::connect(("127.0.0.1", host_port)).unwrap();
    let pod_c = || client.connect(pod_addr, Duration::from_secs(10)).unwrap();
    let plain_c = || client.connect(plain, Duration::from_secs(10)).unwrap();
    let relay_c = || client.connect(relay, Duration::from_secs(10)).unwrap();
    let paths: [(&str, &dyn Fn() -> TcpStream, usize); 4] = [
        ("pod IP → guest (relay in pod netns)", &pod_c, mib),
        ("host port → guest (host relay)", &host, mib),
        ("relay alone (netns → Unix echo)", &relay_c, 64),
        ("plain TCP server in a netns", &plain_c, 64),
    ];
    let mut p50 = Vec::new();
    let mut conn_p50 = Vec::new();
    let mut tput = Vec::new();
    for (name, connect, mib) in paths {
        let mut v = rtt(connect(), n_rtt);
        let row = summary(&format!("{name}: 64 B round trip"), "µs", &mut v);
        p50.push(row["p50"].as_u64().unwrap_or(0));
        rows.push(row);
        let mut v = connects(connect, 50);
        let row = summary(&format!("{name}: connect + round trip"), "µs", &mut v);
        conn_p50.push(row["p50"].as_u64().unwrap_or(0));
        rows.push(row);
        let mbs = throughput(connect(), mib);
        println!(
            "{:<44} MiB/s {mbs:>8.1}",
            format!("{name}: echo throughput")
        );
        rows.push(json!({"name": format!("{name}: echo throughput"), "unit": "MiB/s", "value": mbs, "mib": mib}));
        tput.push(mbs);
    }
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let ratios = json!({
        "rtt_pod_over_host": ratio(p50[0], p50[1]),
        "rtt_pod_over_plain": ratio(p50[0], p50[3]),
        "rtt_relay_over_plain": ratio(p50[2], p50[3]),
        "connect_pod_over_host": ratio(conn_p50[0], conn_p50[1]),
        "connect_relay_over_plain": ratio(conn_p50[2], conn_p50[3]),
        "throughput_pod_over_host": tput[0] / tput[1],
        "throughput_relay_over_plain": tput[2] / tput[3],
    });
    println!("ratios (p50 / MiB/s): {ratios}");
    rmp(&c, &pod);
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("arrow-pod-network-bench-{}", std::process::id())),
    );
    write_results("pod_network", &json!({"rows": rows, "ratios": ratios}));
}
