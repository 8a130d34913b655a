//! actl + REST over a real arrowd spawning real arrow-vmm processes (test guest as kernel).

mod common;

use common::{stderr, stdout, Daemon};
use serde_json::{json, Value};

#[test]
fn run_ps_logs_stop_wait_rm_with_actl() {
    let d = Daemon::new();
    d.image("exit3", &["exit=3"]);
    d.image("hello", &["hello"]);
    d.image("long", &["idle"]);

    let out = d.actl(&["images"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(
        s.starts_with("REPOSITORY") && s.contains("exit3") && s.contains("long"),
        "{s}"
    );
    let imgs: Value = serde_json::from_slice(&d.actl(&["images", "-o", "json"]).stdout).unwrap();
    assert_eq!(imgs.as_array().unwrap().len(), 3);

    // `actl run` without -d prints the console and exits with the app's status.
    let out = d.actl(&["run", "exit3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = d.actl(&["run", "--rm", "--name", "hi", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("hello from the arrow test guest"),
        "{}",
        stdout(&out)
    );
    assert!(d.get("/instances/hi").is_err(), "--rm removed it");

    // Detached, with an exported port; env and resources reach the VMM.
    let port = common::free_port();
    let publish = format!("{port}:5000");
    let out = d.actl(&[
        "run",
        "-d",
        "--name",
        "l1",
        "-e",
        "MODE=test",
        "-p",
        &publish,
        "--memory",
        "48M",
        "--cpus",
        "1",
        "long",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert_eq!(id.len(), 16);
    let inst = d.wait_state(&id, "running");
    assert_eq!(inst["spec"]["memory_mib"], 48);
    assert!(inst["spec"]["cmdline"]
        .as_str()
        .unwrap()
        .contains("MODE=test"));
    let pid = inst["pid"].as_i64().unwrap() as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("48M"));
    // Memory hotplug: a region of memory_max (default 4 x memory) minus
    // memory, and `actl update --memory` reaches arrow-vmm's virtio-mem
    // device (this test guest has no driver: the request is kept, nothing
    // gets plugged; tests/memhp_kvm.rs in arrow-vmm runs a real guest).
    assert_eq!(inst["spec"]["memory_max_mib"], 192);
    assert!(String::from_utf8_lossy(&cmdline).contains("--memory-hotplug\x00144M"));
    let out = d.actl(&["update", "--memory", "112M", "l1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "l1");
    let st = d
        .post(
            &format!("/instances/{id}/update"),
            Some(json!({"memory": 64})),
        )
        .unwrap();
    assert_eq!(
        st,
        json!({"id": id, "boot_mib": 48, "max_mib": 192, "requested_mib": 64, "current_mib": 48})
    );
    for bad in ["49M", "1G", "16M"] {
        let out = d.actl(&["update", "--memory", bad, "l1"]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(
            stderr(&out).contains("give 48 to 192 MiB"),
            "{bad}: {}",
            stderr(&out)
        );
    }
    let e = d
        .post(&format!("/instances/{id}/update"), Some(json!({})))
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");

    // The exported port listens while the instance runs.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    let ps = stdout(&d.actl(&["ps"]));
    assert!(
        ps.contains("l1") && ps.contains(&format!("127.0.0.1:{port}->5000/vsock")),
        "{ps}"
    );
    assert!(
        !ps.contains("exit3"),
        "ps without -a hides finished instances: {ps}"
    );
    let all: Value =
        serde_json::from_slice(&d.actl(&["ps", "-a", "--output", "json"]).stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);

    // Logs: the guest's console.
    let start = std::time::Instant::now();
    loop {
        let logs = stdout(&d.actl(&["logs", "--tail", "2", "l1"]));
        if logs.contains("idle") {
            assert!(logs.lines().count() <= 2, "{logs}");
            break;
        }
        assert!(start.elapsed() < common::TIMEOUT, "no console output");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Graceful stop through arrow-vmm's control API (PUT /vm/shutdown → exit 0).
    let out = d.actl(&["stop", "-t", "5", "l1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&d.actl(&["wait", "l1"])).trim(), "0");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port released"
    );
    let e = d
        .post("/instances/l1/update", Some(json!({"memory": 64})))
        .unwrap_err();
    assert_eq!(e.0, 409, "only a running instance is resized: {e:?}");
    let inspect: Value = serde_json::from_slice(&d.actl(&["inspect", "l1"]).stdout).unwrap();
    assert_eq!(inspect[0]["state"], "exited");
    assert_eq!(inspect[0]["exit_code"], 0);

    // Restart the same instance, kill it, remove it.
    let again = d.post(&format!("/instances/{id}/start"), None).unwrap();
    assert_eq!(again["start_count"], 2);
    // The metrics below count this start's latency: kill only once the app started
    // (arrowd sees APP_STARTED by polling; a SIGKILLed VMM writes no report).
    let start = std::time::Instant::now();
    while d.get(&format!("/instances/{id}")).unwrap()["start_latency_ms"].is_null() {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "no start latency recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = d.actl(&["kill", &id[..6]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inst = d.wait_state(&id, "exited");
    assert_eq!(inst["exit_code"], 137);
    assert!(d.actl(&["rm", "l1"]).status.success());
    assert!(!d.run_root().join(&id).exists(), "run directory removed");
    let out = d.actl(&["inspect", "l1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("actl ps -a"), "{}", stderr(&out));
    assert!(d.vmms().is_empty());

    // Metrics and the OpenAPI document.
    let m = d.get("/metrics").unwrap();
    let m = m.as_str().unwrap();
    assert!(m.contains("arrow_instance_starts_total 4"), "{m}");
    assert!(m.contains("arrow_instances{state=\"exited\"} 1"), "{m}");
    assert!(
        m.contains("arrow_instance_start_latency_seconds_count 4"),
        "{m}"
    );
    let api = d.get("/openapi.json").unwrap();
    assert_eq!(api["openapi"], "3.0.3");
}

#[test]
fn bad_input_gets_4xx_and_arrowd_survives() {
    let d = Daemon::new();
    d.image("long", &["idle"]);
    let err = |r: Result<Value, (u16, String)>| r.expect_err("must fail");

    let (code, msg) = err(d.post("/instances", Some(json!({"image": "nope:1"}))));
    assert_eq!(code, 404);
    assert!(msg.contains("asdk build"), "{msg}");
    for (body, what) in [
        (json!({"image": "long", "memory": "12x"}), "memory"),
        (json!({"image": "long", "memory": 1}), "memory"),
        (json!({"image": "long", "vcpus": 0}), "vCPU"),
        (
            json!({"image": "long", "env": {"1BAD": "x"}}),
            "environment",
        ),
        (json!({"image": "long", "name": "bad name"}), "name"),
        (
            json!({"image": "long", "ports": [{"host_port": 0, "guest_port": 1}]}),
            "port",
        ),
        (json!({"image": "long", "bogus": 1}), "bogus"),
        (json!({"image": 5}), "JSON"),
        (json!({}), "image"),
    ] {
        let (code, msg) = err(d.post("/instances", Some(body.clone())));
        assert_eq!(code, 400, "{body}: {msg}");
        assert!(msg.contains(what), "{body}: {msg}");
    }
    // Malformed JSON.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(d.ep.send(
        hyper::Method::POST,
        "/instances",
        Some(b"{\"image\": ".to_vec()),
    ));
    match r {
        Err(arrow_service::client::ClientError::Api { status, message }) => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("JSON"), "{message}");
        }
        other => panic!("malformed JSON accepted: {other:?}"),
    }
    // A host port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (code, msg) = err(d.post(
        "/instances",
        Some(json!({"image": "long", "ports": [{"host_port": port, "guest_port": 80}]})),
    ));
    assert_eq!(code, 409);
    assert!(msg.contains("already in use"), "{msg}");

    // Names are unique; a running instance cannot be removed without force.
    let inst = d
        .post(
            "/instances",
            Some(json!({"image": "long", "name": "one", "start": true})),
        )
        .unwrap();
    let id = inst["id"].as_str().unwrap().to_owned();
    assert_eq!(
        err(d.post("/instances", Some(json!({"image": "long", "name": "one"})))).0,
        409
    );
    let (code, msg) = err(d.call(hyper::Method::DELETE, "/instances/one", None));
    assert_eq!(code, 409);
    assert!(msg.contains("rm -f"), "{msg}");
    assert_eq!(err(d.post("/instances/one/kill?signal=NOPE", None)).0, 400);
    d.call(hyper::Method::DELETE, "/instances/one?force=true", None)
        .unwrap();
    // `rm -f` returns once the VMM is gone, not only its jailer (whose death kills
    // the VMM a moment later): a few rounds, as the gap is short.
    assert!(d.vmms().is_empty(), "rm -f returned with a VMM alive");
    for n in 0..5 {
        let name = format!("again{n}");
        d.post(
            "/instances",
            Some(json!({"image": "long", "name": name, "start": true})),
        )
        .unwrap();
        d.call(
            hyper::Method::DELETE,
            &format!("/instances/{name}?force=true"),
            None,
        )
        .unwrap();
        assert!(d.vmms().is_empty(), "rm -f returned with a VMM alive");
    }

    // Everything about a deleted instance is a 404 that says what to do.
    for path in ["start", "stop", "kill", "wait"] {
        let (code, msg) = err(d.post(&format!("/instances/{id}/{path}"), None));
        assert_eq!(code, 404, "{path}");
        assert!(msg.contains("actl ps -a"), "{msg}");
    }
    assert_eq!(err(d.get(&format!("/instances/{id}/logs"))).0, 404);
    assert_eq!(err(d.get("/no/such/path")).0, 404);
    assert_eq!(err(d.call(hyper::Method::PUT, "/instances", None)).0, 405);
    // actl: docker's exit codes for errors.
    assert_eq!(d.actl(&["run", "nope"]).status.code(), Some(125));
    assert_eq!(d.actl(&["stop", "nope"]).status.code(), Some(1));

    assert!(d.get("/version").is_ok(), "arrowd still answers");
    assert!(d.vmms().is_empty());
}

#[test]
fn concurrent_clients() {
    let d = Daemon::new();
    for n in 0..4 {
        d.image(&format!("exit{n}"), &[&format!("exit={n}")]);
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let d = &d;
            s.spawn(move || {
                for round in 0..3 {
                    let n = (t + round) % 4;
                    let inst = d
                        .post(
                            "/instances",
                            Some(json!({"image": format!("exit{n}"), "start": true})),
                        )
                        .unwrap();
                    let id = inst["id"].as_str().unwrap();
                    let w = d.post(&format!("/instances/{id}/wait"), None).unwrap();
                    assert_eq!(w["exit_code"], n, "{w}");
                    d.get("/instances?all=true").unwrap();
                    d.call(hyper::Method::DELETE, &format!("/instances/{id}"), None)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(
        d.get("/instances?all=true")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let m = d.get("/metrics").unwrap();
    assert!(
        m.as_str()
            .unwrap()
            .contains("arrow_instance_starts_total 24"),
        "{m}"
    );
}

#[test]
fn tcp_listener_requires_the_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arrowd"))
        .args(["--tcp", "127.0.0.1:0", "--socket", "/nonexistent/x.sock"])
        .env_remove("ARROWD_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));

    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::with_args(&["--tcp", &addr, "--token", "s3cret"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = |token: Option<&str>| {
        let ep = arrow_service::client::Endpoint::Tcp(addr.clone(), token.map(str::to_owned));
        rt.block_on(ep.send(hyper::Method::GET, "/version", None))
            .map(|r| r.status().as_u16())
    };
    // arrowd opens its TCP listener after the Unix socket the helper waits
    // for: retry while the port still refuses connections.
    let start = std::time::Instant::now();
    let first = loop {
        match call(None) {
            Err(arrow_service::client::ClientError::Connect(..))
                if start.elapsed() < common::TIMEOUT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other,
        }
    };
    match first {
        Err(arrow_service::client::ClientError::Api { status, message }) => {
            assert_eq!(status.as_u16(), 401);
            assert!(message.contains("ARROW_TOKEN"), "{message}");
        }
        other => panic!("TCP without token: {other:?}"),
    }
    assert!(call(Some("wrong")).is_err());
    assert_eq!(call(Some("s3cret")).unwrap(), 200);
    drop(d);
}
