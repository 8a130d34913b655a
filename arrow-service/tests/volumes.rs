//! Volumes over a real arrowd spawning real arrow-vmm processes (test guest as kernel):
//! validation (REST 400, CRI InvalidArgument), what reaches arrow-vmm (the pack on the
//! next pmem device, the guest parameters), the pack's content (a snapshot at each start,
//! symlinks kept as symlinks), kubelet's default mounts, and a volume backend that dies.
//! The guest side (ainit mounting them) is in volumes_real_kernel.rs.

mod common;

use std::path::Path;
use std::process::Command;

use common::cri::CriClient;
use common::{stderr, stdout, Daemon};
use k8s_cri::v1::*;
use serde_json::{json, Value};

/// The VMM's command line (jailed: the jailer's, which carries it after `--`).
fn vmm_cmdline(pid: i64) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// Extracts an EROFS image with fsck.erofs.
fn extract(image: &Path, into: &Path) {
    let fsck = shadowfs::tools::find_or_install(shadowfs::tools::FSCK_EROFS).unwrap();
    let st = Command::new(fsck)
        .arg(format!("--extract={}", into.display()))
        .arg(image)
        .status()
        .unwrap();
    assert!(st.success());
}

fn bad(d: &Daemon, volumes: Value) -> String {
    let body = json!({"image": "long", "volumes": volumes});
    match d.post("/instances", Some(body)) {
        Err((400, msg)) => msg,
        other => panic!("expected 400 for {volumes}: {other:?}"),
    }
}

#[test]
fn packed_volumes_reach_the_vmm_and_bad_ones_are_refused() {
    let mut d = Daemon::new();
    d.image("long", &["idle"]);
    let host = d.dir.path().join("host");
    let cfg = host.join("cfg");
    std::fs::create_dir_all(cfg.join("sub")).unwrap();
    std::fs::write(cfg.join("app.conf"), "v1").unwrap();
    std::fs::write(cfg.join("sub/x"), "x").unwrap();
    // An escape attempt: a link to the host's /etc stays a link (resolved in the guest).
    std::os::unix::fs::symlink("/etc", cfg.join("host-etc")).unwrap();
    let hosts = host.join("hosts");
    std::fs::write(&hosts, "10.0.0.1 db\n").unwrap();
    let data = host.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (cfg_s, hosts_s, data_s) = (
        cfg.display().to_string(),
        hosts.display().to_string(),
        data.display().to_string(),
    );

    // Bad volumes: 400 with what is wrong, nothing created.
    let vol =
        |h: &str, g: &str, ro: bool| json!({"host_path": h, "guest_path": g, "read_only": ro});
    let e = bad(&d, json!([vol("/no/such/dir", "/d", true)]));
    assert!(e.contains("does not exist"), "{e}");
    let e = bad(&d, json!([vol(&cfg_s, "/data/../etc", true)]));
    assert!(e.contains("'..'"), "{e}");
    let e = bad(&d, json!([vol(&cfg_s, "/proc/x", true)]));
    assert!(e.contains("/proc"), "{e}");
    let e = bad(&d, json!([vol(&cfg_s, "data", true)]));
    assert!(e.contains("absolute"), "{e}");
    let e = bad(&d, json!([vol(&hosts_s, "/etc/hosts", false)]));
    assert!(e.contains("read-only"), "{e}");
    let e = bad(
        &d,
        json!([vol(&cfg_s, "/a", true), vol(&data_s, "/a", false)]),
    );
    assert!(e.contains("two volumes"), "{e}");
    let many: Vec<Value> = (0..17)
        .map(|i| vol(&cfg_s, &format!("/v{i}"), true))
        .collect();
    let e = bad(&d, json!(many));
    assert!(e.contains("at most 16"), "{e}");
    let state = d.dir.path().join("state").display().to_string();
    let e = bad(&d, json!([vol(&state, "/s", true)]));
    assert!(e.contains("state directory"), "{e}");
    let e = bad(
        &d,
        json!([{"host_path": cfg_s, "guest_path": "/x", "mode": "ro"}]),
    );
    assert!(e.contains("mode"), "{e}");
    // Writable volumes and memory hotplug combine: memory_max is taken, and the
    // default (4 x memory) applies as without volumes.
    let body = json!({"image": "long", "name": "hp", "memory_max": "256M", "volumes": [vol(&data_s, "/d", false)]});
    let i = d.post("/instances", Some(body)).unwrap();
    assert_eq!(i["spec"]["memory_max_mib"], 256, "{i}");
    let body = json!({"image": "long", "name": "hp4", "volumes": [vol(&data_s, "/d", false)]});
    let i = d.post("/instances", Some(body)).unwrap();
    assert_eq!(
        i["spec"]["memory_max_mib"].as_u64(),
        i["spec"]["memory_mib"]
            .as_u64()
            .map(|m| (m * 4).min(256 << 10)),
        "{i}"
    );
    for name in ["hp", "hp4"] {
        d.call(hyper::Method::DELETE, &format!("/instances/{name}"), None)
            .unwrap();
    }
    let out = d.actl(&["run", "-d", "-v", "/only-one-part", "long"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HOST_PATH:GUEST_PATH"),
        "{}",
        stderr(&out)
    );
    assert_eq!(d.get("/instances?all=true").unwrap(), json!([]));

    // actl run -v: two read-only volumes (a directory and a file) are packed.
    let v1 = format!("{cfg_s}:/etc/app:ro");
    let v2 = format!("{hosts_s}:/etc/hosts:ro");
    let out = d.actl(&[
        "run", "-d", "--name", "v", "-v", &v1, "--volume", &v2, "long",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let inst = d.wait_state(&id, "running");
    assert_eq!(
        inst["spec"]["volumes"],
        json!([
            vol(&cfg_s, "/etc/app", true),
            vol(&hosts_s, "/etc/hosts", true)
        ])
    );
    let run_dir = Path::new(inst["run_dir"].as_str().unwrap()).to_owned();
    let pack = run_dir.join("volumes.erofs");
    let argv = vmm_cmdline(inst["pid"].as_i64().unwrap());
    // The image base is pmem0 (shadowfs, tmpfs upper): the pack is pmem1.
    assert!(
        argv.contains(&format!("--pmem {},ro", pack.display())),
        "{argv}"
    );
    for p in [
        "arrow.volpack=/dev/pmem1",
        "arrow.vol=pack:0:ro:/etc/app",
        "arrow.vol=pack:1:ro:/etc/hosts",
    ] {
        assert!(argv.contains(p), "{p} missing: {argv}");
    }
    assert!(!argv.contains("--fs "), "{argv}");
    let x1 = d.dir.path().join("x1");
    extract(&pack, &x1);
    assert_eq!(
        std::fs::read_to_string(x1.join("0/app.conf")).unwrap(),
        "v1"
    );
    assert_eq!(std::fs::read_to_string(x1.join("0/sub/x")).unwrap(), "x");
    assert_eq!(
        std::fs::read_to_string(x1.join("1")).unwrap(),
        "10.0.0.1 db\n"
    );
    assert_eq!(
        std::fs::read_link(x1.join("0/host-etc")).unwrap(),
        Path::new("/etc")
    );
    assert!(!x1.join("0/host-etc/passwd").exists() || x1.join("0/host-etc").is_symlink());

    // An arrowd restart keeps the volumes and re-adopts the running instance.
    d.signal(libc::SIGTERM);
    d.start();
    let again = d.wait_state(&id, "running");
    assert_eq!(again["spec"]["volumes"], inst["spec"]["volumes"]);
    assert_eq!(again["pid"], inst["pid"], "re-adopted, not restarted");

    // A pack is the host content as of the start: a restart sees the change.
    std::fs::write(cfg.join("app.conf"), "v2").unwrap();
    let out = d.actl(&["stop", "-t", "1", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.actl(&["start", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    d.wait_state(&id, "running");
    let x2 = d.dir.path().join("x2");
    extract(&pack, &x2);
    assert_eq!(
        std::fs::read_to_string(x2.join("0/app.conf")).unwrap(),
        "v2"
    );

    // A host path that vanished: the start fails with the reason, nothing runs.
    let out = d.actl(&["stop", "-t", "1", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(&hosts).unwrap();
    let out = d.actl(&["start", "v"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("hosts"), "{}", stderr(&out));
    let out = d.actl(&["rm", "-f", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing of the packing is left beside the run directories.
    let left: Vec<_> = std::fs::read_dir(d.run_root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_writable_volume_whose_virtiofsd_dies_fails_with_the_reason() {
    // `false` stands in for a virtiofsd that exits at once.
    let d = Daemon::with_args(&["--virtiofsd", "/bin/false"]);
    d.image("long", &["idle"]);
    let data = d.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let v = format!("{}:/data", data.display());
    let out = d.actl(&["run", "-d", "--name", "w", "-v", &v, "long"]);
    let id = match out.status.success() {
        true => stdout(&out).trim().to_owned(),
        false => panic!("{}", stderr(&out)),
    };
    let start = std::time::Instant::now();
    let inst = loop {
        let i = d.get(&format!("/instances/{id}")).unwrap();
        if i["state"] == "failed" || i["state"] == "exited" {
            break i;
        }
        assert!(start.elapsed() < common::TIMEOUT, "{i}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let reason = inst["reason"].as_str().unwrap_or_default();
    // Either arrowd saw virtiofsd end first, or the VMM could not use its backend.
    assert!(
        reason.contains("virtiofsd") || reason.contains("vhost-user") || reason.contains("--fs"),
        "{inst}"
    );
    assert_ne!(inst["exit_code"], json!(0), "{inst}");
    let argv_log =
        std::fs::read_to_string(Path::new(inst["run_dir"].as_str().unwrap()).join("vmm.log"))
            .unwrap_or_default();
    assert!(!argv_log.contains("APP_STARTED"), "{argv_log}");
}

#[test]
fn cri_mounts_become_volumes() {
    let d = Daemon::new();
    d.image("guest", &["idle"]);
    let c = CriClient::connect(&d.cri_socket());
    let pod = c.run_pod("p", &d.dir.path().join("pods"));
    let host = d.dir.path().join("kubelet");
    let token = host.join("kube-api-access");
    std::fs::create_dir_all(&token).unwrap();
    std::fs::write(token.join("token"), "eyJ...").unwrap();
    let cm = host.join("configmap");
    std::fs::create_dir_all(cm.join("..2026_12_05")).unwrap();
    std::fs::write(cm.join("..2026_12_05/key"), "value").unwrap();
    std::os::unix::fs::symlink("..2026_12_05", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/key", cm.join("key")).unwrap();
    let etc_hosts = host.join("etc-hosts");
    std::fs::write(&etc_hosts, "127.0.0.1 localhost\n").unwrap();
    let term = host.join("termination-log");
    std::fs::write(&term, "").unwrap();
    let mount = |h: &Path, g: &str, ro: bool| Mount {
        host_path: h.display().to_string(),
        container_path: g.into(),
        readonly: ro,
        selinux_relabel: true,
        ..Default::default()
    };
    let config = |mounts: Vec<Mount>, name: &str| ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "guest".into(),
            ..Default::default()
        }),
        mounts,
        ..Default::default()
    };
    let create = |cfg: ContainerConfig| {
        c.call(c.runtime().create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: None,
        }))
    };
    let ok = create(config(
        vec![
            mount(
                &token,
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ),
            mount(&cm, "/etc/config", true),
            mount(&etc_hosts, "/etc/hosts", false),
            mount(&term, "/dev/termination-log", false),
        ],
        "app",
    ))
    .unwrap()
    .container_id;
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: ok.clone(),
    }))
    .unwrap();
    let st = c.wait_state(&ok, ContainerState::ContainerRunning);
    assert_eq!(
        st.mounts.len(),
        4,
        "the status lists what kubelet asked for"
    );
    let inst = d
        .get("/instances?all=true")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["state"] == "running")
        .cloned()
        .unwrap();
    let vols: Vec<(String, bool)> = inst["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["guest_path"].as_str().unwrap().to_owned(),
                v["read_only"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        vols,
        [
            (
                "/var/run/secrets/kubernetes.io/serviceaccount".to_owned(),
                true
            ),
            ("/etc/config".to_owned(), true),
            ("/etc/hosts".to_owned(), true),
        ]
    );
    // The ConfigMap's atomic-swap layout is packed as is: links stay relative links.
    let x = d.dir.path().join("x");
    extract(
        &Path::new(inst["run_dir"].as_str().unwrap()).join("volumes.erofs"),
        &x,
    );
    assert_eq!(
        std::fs::read_link(x.join("1/key")).unwrap(),
        Path::new("..data/key")
    );
    assert_eq!(
        std::fs::read_to_string(x.join("1/..2026_12_05/key")).unwrap(),
        "value"
    );

    // A mount the guest cannot have: InvalidArgument with the reason.
    let e = create(config(vec![mount(&token, "/proc/secrets", true)], "bad")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("/proc"), "{}", e.message());
    let e = create(config(vec![mount(&host.join("none"), "/x", true)], "bad2")).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("does not exist"), "{}", e.message());
}
