//! End to end with the real guest kernel: volumes (docs/volumes.md). The app is
//! examples/apps/volprobe, which runs the file operations its arguments name and prints
//! one `VOLPROBE …` line each. Cold boots: a packed read-only volume and a live writable
//! one (the host sees the guest's write, a second instance sees the first's), read-only
//! stays read-only (packed and virtiofsd-served), symlinks pointing out of a volume do not
//! reach the host; `actl update --memory` grows and shrinks an instance with a writable
//! volume (memory hotplug beside virtiofsd); a CRI container with kubelet-like mounts; clones of the generic
//! template with their own volumes. The kernel is ARROW_TEST_KERNEL, or the cached build of
//! guest-kernel/build.sh (built on first use); virtiofsd is the project's (built into
//! ~/.cache/arrow/tools on first use).

mod common;

use std::path::{Path, PathBuf};

use common::cri::CriClient;
use common::volumes::{build_volprobe, generic_daemon, virtiofsd};
use common::{stderr, stdout, Daemon};
use k8s_cri::v1::*;
use serde_json::{json, Value};

/// Host directories of a test: `cfg` (read-only, small), `data` (writable), and a marker
/// file outside both that symlinks inside them point at.
struct Host {
    cfg: PathBuf,
    data: PathBuf,
}

fn host(root: &Path) -> Host {
    let cfg = root.join("cfg");
    let data = root.join("data");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(cfg.join("app.conf"), "hello-cfg").unwrap();
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "HOST-SECRET").unwrap();
    for dir in [&cfg, &data] {
        std::os::unix::fs::symlink("../secret.txt", dir.join("leak")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("leak-abs")).unwrap();
    }
    Host { cfg, data }
}

/// arrow-vmm's and virtiofsd's logs of instance `name`, for failure messages.
fn diag(d: &Daemon, name: &str) -> String {
    let Ok(inst) = d.get(&format!("/instances/{name}")) else {
        return String::new();
    };
    let run_dir = PathBuf::from(inst["run_dir"].as_str().unwrap_or_default());
    let read = |f: &str| std::fs::read_to_string(run_dir.join(f)).unwrap_or_default();
    format!(
        "reason: {}
vmm.log:
{}
virtiofsd.log:
{}",
        inst["reason"],
        read("vmm.log"),
        read("virtiofsd.log")
    )
}

fn vol(p: &Path, guest: &str, ro: bool) -> String {
    format!("{}:{guest}{}", p.display(), if ro { ":ro" } else { "" })
}

fn ns(pid: i32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn proc_line(pid: i32, file: &str, prefix: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_default()
        .to_owned()
}

/// Starts instance `name` that writes `name`.txt into writable volume `data` (host
/// directory `dir`) and keeps running; returns it once its virtiofsd served the write,
/// with its run directory and its virtiofsd's PID (from `virtiofsd.json`).
fn start_serving(d: &Daemon, name: &str, dir: &Path, data: &str) -> (Value, PathBuf, i32) {
    let file = format!("/data/{name}.txt");
    let out = d.actl(&[
        "run", "-d", "--name", name, "-v", data, "volprobe", "write", &file, name, "sleep", "600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = std::time::Instant::now();
    while std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap_or_default() != name {
        assert!(t.elapsed() < common::TIMEOUT, "{}", diag(d, name));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let inst = d.wait_state(name, "running");
    let run_dir = PathBuf::from(inst["run_dir"].as_str().unwrap());
    let record: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("virtiofsd.json")).unwrap()).unwrap();
    let vpid = record[0]["pid"].as_i64().unwrap() as i32;
    assert!(proc_line(vpid, "cmdline", "").contains("virtiofsd"));
    (inst, run_dir, vpid)
}

fn wait_gone(pid: i32) {
    let t = std::time::Instant::now();
    while arrow_service::procfs::start_time(pid).is_some() {
        assert!(
            t.elapsed() < common::TIMEOUT,
            "process {pid} is still there"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Instance `c`'s virtiofsd is in the instance's cgroup, has its own IPC and UTS
/// namespaces, no_new_privs and arrowd's open-files limit (4096 here). Then kill -9
/// of arrowd and a restart: `c`'s virtiofsd is watched again (kill -9 of it fails `c`
/// with a reason naming virtiofsd; none is left after `c` is removed); the
/// virtiofsd of instance `s`, whose VMM was killed while arrowd was down and whose
/// server was stopped so it could not see the hang-up, is killed as a stray; and
/// instance `k`, whose virtiofsd was killed while arrowd was down, is failed with a
/// reason naming virtiofsd.
fn readopted_virtiofsd_is_jailed_and_watched(d: &mut Daemon, dir: &Path, data: &str) {
    let (inst, run_dir, vpid) = start_serving(d, "c", dir, data);
    let arrowd = d.child.as_ref().unwrap().id() as i32;
    match inst["cgroup"].as_str() {
        Some(cg) => {
            let line = proc_line(vpid, "cgroup", "0::");
            let rel = line.trim_start_matches("0::");
            assert!(!rel.is_empty() && cg.ends_with(rel), "virtiofsd in {line}, instance in {cg}");
        }
        None => eprintln!(
            "skipping the cgroup check: this host gives arrowd no cgroup v2 hierarchy (instances run without cgroups; see arrowd's log)"
        ),
    }
    for kind in ["ipc", "uts"] {
        assert_ne!(
            ns(vpid, kind),
            ns(arrowd, kind),
            "virtiofsd's {kind} namespace"
        );
    }
    assert_eq!(proc_line(vpid, "status", "NoNewPrivs:"), "NoNewPrivs:\t1");
    let files: Vec<String> = proc_line(vpid, "limits", "Max open files")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(files[3..5], ["4096", "4096"], "{files:?}");

    let (s, _, spid) = start_serving(d, "s", dir, data);
    let (k, _, kpid) = start_serving(d, "k", dir, data);
    let server = arrow_service::procfs::children(spid);
    assert_eq!(
        server.len(),
        1,
        "virtiofsd {spid} runs its server as its only child"
    );
    d.signal(libc::SIGKILL);
    // Stopped only now: stopped before arrowd died, its orphaned process group would
    // get SIGHUP (and virtiofsd die of it).
    common::kill(server[0].0, libc::SIGSTOP);
    let svmm = s["pid"].as_i64().unwrap() as i32;
    common::kill(svmm, libc::SIGKILL);
    wait_gone(svmm);
    // k's virtiofsd dies while arrowd is down: its VMM stops by itself.
    common::kill(kpid, libc::SIGKILL);
    wait_gone(k["pid"].as_i64().unwrap() as i32);
    let alive = |pid: i32| arrow_service::procfs::start_time(pid).is_some();
    assert!(
        alive(spid) && alive(server[0].0),
        "the stopped virtiofsd outlived its VMM"
    );
    d.start();
    wait_gone(spid);
    wait_gone(server[0].0);
    assert!(
        d.log()
            .contains("killing a virtiofsd whose instance is no longer running"),
        "{}",
        d.log()
    );
    assert_eq!(d.get("/instances/s").unwrap()["state"], "failed");
    d.call(hyper::Method::DELETE, "/instances/s", None).unwrap();
    let k = d.get("/instances/k").unwrap();
    assert_eq!(k["state"], "failed", "{k}");
    assert!(
        k["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("virtiofsd serving volume"),
        "{k}"
    );
    d.call(hyper::Method::DELETE, "/instances/k", None).unwrap();

    assert_eq!(d.wait_state("c", "running")["pid"], inst["pid"]);
    assert!(d.log().contains("re-adopted virtiofsd"), "{}", d.log());
    common::kill(vpid, libc::SIGKILL);
    let failed = d.wait_state("c", "failed");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("virtiofsd serving volume"), "{failed}");
    eprintln!("after kill -9 of the re-adopted virtiofsd: {reason}");
    d.call(hyper::Method::DELETE, "/instances/c", None).unwrap();
    wait_gone(vpid);
    assert!(!run_dir.exists());
}

#[test]
fn packed_and_live_volumes_in_cold_boots() {
    let vfsd = virtiofsd();
    let mut d = Daemon::with_real_kernel(&["--virtiofsd", &vfsd, "--virtiofsd-max-files", "4096"]);
    build_volprobe(&d);
    let h = host(d.dir.path());
    // A read-only directory too large to pack: served by virtiofsd --readonly.
    let big = d.dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("blob"), vec![0u8; 65 << 20]).unwrap();
    std::fs::write(big.join("small"), "big-dir").unwrap();

    let (cfg, data, bigv) = (
        vol(&h.cfg, "/cfg", true),
        vol(&h.data, "/data", false),
        vol(&big, "/big", true),
    );
    let out = d.actl(&[
        "run",
        "--name",
        "a",
        "-v",
        &cfg,
        "-v",
        &data,
        "-v",
        &bigv,
        "volprobe",
        "cat",
        "/cfg/app.conf",
        "write",
        "/data/out.txt",
        "from-guest-a",
        "write",
        "/cfg/new",
        "x",
        "write",
        "/big/new",
        "x",
        "cat",
        "/big/small",
        "cat",
        "/cfg/leak",
        "cat",
        "/cfg/leak-abs",
        "cat",
        "/data/leak",
        "cat",
        "/data/leak-abs",
    ]);
    let console = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{console}\n{}\n{}",
        stderr(&out),
        diag(&d, "a")
    );
    for want in [
        "VOLPROBE cat /cfg/app.conf = hello-cfg",
        "VOLPROBE write /data/out.txt ok",
        "VOLPROBE write /cfg/new error Read-only file system",
        "VOLPROBE write /big/new error Read-only file system",
        "VOLPROBE cat /big/small = big-dir",
        "VOLPROBE cat /cfg/leak error No such file or directory",
        "VOLPROBE cat /data/leak-abs error No such file or directory",
        "VOLPROBE done",
    ] {
        assert!(console.contains(want), "{want:?} missing:\n{console}");
    }
    assert!(!console.contains("HOST-SECRET"), "{console}");
    // The host sees the guest's write; the read-only volumes are untouched.
    assert_eq!(
        std::fs::read_to_string(h.data.join("out.txt")).unwrap(),
        "from-guest-a"
    );
    assert!(!h.cfg.join("new").exists() && !big.join("new").exists());
    let inst = d.get("/instances/a").unwrap();
    let run_dir = PathBuf::from(inst["run_dir"].as_str().unwrap());
    assert!(run_dir.join("volumes.erofs").is_file());
    let argv = std::fs::read_to_string(run_dir.join("vmm.log")).unwrap_or_default();
    eprintln!(
        "instance a: start {} ms; {}",
        inst["start_latency_ms"],
        argv.lines().next().unwrap_or("")
    );

    // A second instance sees the first's write through the shared writable volume, and
    // writes back; the host and the next reader see that.
    let out = d.actl(&[
        "run",
        "--name",
        "b",
        "-v",
        &data,
        "volprobe",
        "cat",
        "/data/out.txt",
        "write",
        "/data/from-b.txt",
        "from-guest-b",
    ]);
    let console = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{console}\n{}", diag(&d, "b"));
    assert!(
        console.contains("VOLPROBE cat /data/out.txt = from-guest-a"),
        "{console}"
    );
    assert_eq!(
        std::fs::read_to_string(h.data.join("from-b.txt")).unwrap(),
        "from-guest-b"
    );

    // A writable volume and memory hotplug together: `actl update --memory` grows the
    // running instance and shrinks it again while its volume stays served.
    let out = d.actl(&[
        "run",
        "-d",
        "--name",
        "c",
        "-v",
        &data,
        "volprobe",
        "write",
        "/data/from-c.txt",
        "from-guest-c",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inst = d.wait_state("c", "running");
    assert_eq!(inst["spec"]["memory_max_mib"], 256, "{inst}");
    let t = std::time::Instant::now();
    while !h.data.join("from-c.txt").exists() {
        assert!(
            t.elapsed().as_secs() < 120,
            "c never wrote\n{}",
            diag(&d, "c")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let argv = std::fs::read(format!("/proc/{}/cmdline", inst["pid"])).unwrap_or_default();
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(
        argv.contains("--memory-hotplug 192M") && argv.contains("--fs "),
        "{argv}"
    );
    for (size, mib) in [("128M", 128), ("64M", 64)] {
        let out = d.actl(&["update", "--memory", size, "c"]);
        assert!(out.status.success(), "{}\n{}", stderr(&out), diag(&d, "c"));
        let t = std::time::Instant::now();
        loop {
            let st = d
                .post("/instances/c/update", Some(json!({ "memory": size })))
                .unwrap();
            if st["current_mib"] == mib {
                break;
            }
            assert!(
                t.elapsed().as_secs() < 180,
                "c stays at {st} after update --memory {size}\n{}",
                diag(&d, "c")
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        eprintln!(
            "instance c (writable volume): memory {size} reached in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    assert_eq!(d.get("/instances/c").unwrap()["state"], "running");
    assert!(d.actl(&["rm", "-f", "c"]).status.success());

    // Escape attempts by path are refused before anything runs.
    let bad = json!({"image": "volprobe", "volumes": [{"host_path": h.data, "guest_path": "/data/../etc"}]});
    let (code, msg) = d.post("/instances", Some(bad)).unwrap_err();
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("'..'"), "{msg}");

    // A running instance's virtiofsd: jailed, re-adopted after kill -9 of arrowd, and
    // its death then fails the instance with the reason.
    readopted_virtiofsd_is_jailed_and_watched(&mut d, &h.data, &data);

    // virtiofsd is gone with its VMM.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &format!("shared-dir {}", h.data.display())])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "virtiofsd left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn cri_container_with_kubelet_like_mounts_runs() {
    let vfsd = virtiofsd();
    let d = Daemon::with_real_kernel(&["--virtiofsd", &vfsd]);
    build_volprobe(&d);
    let c = CriClient::connect(&d.cri_socket());
    let logs = d.dir.path().join("pods");
    let pod = c.run_pod("vp", &logs);
    let k = d.dir.path().join("kubelet");
    let token = k.join("kube-api-access-x");
    let ts = token.join("..2026_12_05_13_00_00.1");
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("token"), "eyJhbGciOi").unwrap();
    std::os::unix::fs::symlink("..2026_12_05_13_00_00.1", token.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/token", token.join("token")).unwrap();
    let cm = k.join("configmap-cfg");
    let ts = cm.join("..2026_12_05_13_00_00.2");
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("key"), "value-1").unwrap();
    std::os::unix::fs::symlink("..2026_12_05_13_00_00.2", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/key", cm.join("key")).unwrap();
    let hosts = k.join("etc-hosts");
    std::fs::write(&hosts, "10.1.2.3 vp\n").unwrap();
    let term = k.join("termination-log");
    std::fs::write(&term, "").unwrap();
    let empty = k.join("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let m = |h: &Path, g: &str, ro: bool| Mount {
        host_path: h.display().to_string(),
        container_path: g.into(),
        readonly: ro,
        selinux_relabel: true,
        ..Default::default()
    };
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "vp".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: "volprobe".into(),
            ..Default::default()
        }),
        args: [
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "cat",
            "/etc/config/key",
            "cat",
            "/etc/hosts",
            "write",
            "/cache/x",
            "emptydir-write",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        mounts: vec![
            m(
                &token,
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ),
            m(&cm, "/etc/config", true),
            m(&hosts, "/etc/hosts", false),
            m(&term, "/dev/termination-log", false),
            m(&empty, "/cache", false),
        ],
        log_path: "vp/0.log".into(),
        ..Default::default()
    };
    let id = c
        .call(c.runtime().create_container(CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(config),
            sandbox_config: None,
        }))
        .unwrap()
        .container_id;
    c.call(c.runtime().start_container(StartContainerRequest {
        container_id: id.clone(),
    }))
    .unwrap();
    let st = c.wait_state(&id, ContainerState::ContainerExited);
    let log = CriClient::wait_log(&logs.join("vp/0.log"), "VOLPROBE done");
    assert_eq!(st.exit_code, 0, "{st:?}\n{log}");
    for want in [
        "VOLPROBE cat /var/run/secrets/kubernetes.io/serviceaccount/token = eyJhbGciOi",
        "VOLPROBE cat /etc/config/key = value-1",
        "VOLPROBE cat /etc/hosts = 10.1.2.3 vp|",
        "VOLPROBE write /cache/x ok",
    ] {
        assert!(log.contains(want), "{want:?} missing:\n{log}");
    }
    assert_eq!(
        std::fs::read_to_string(empty.join("x")).unwrap(),
        "emptydir-write"
    );
}

#[test]
fn generic_template_clones_get_their_own_volumes() {
    let d = generic_daemon(&[]);
    let t = d.get("/templates/generic").unwrap();
    assert_eq!(t["spec"]["volume_slot_mib"], 64, "{t}");
    let h = host(d.dir.path());
    let other = d.dir.path().join("cfg2");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("app.conf"), "second-cfg").unwrap();
    let fs_slots = t["spec"]["fs_slots"].as_u64().unwrap();
    eprintln!("generic template: {fs_slots} fs slots");

    // Clone 1 (from the warm pool once it is filled): a packed and, with fs slots, a live
    // volume. Clone 2 (plain restore): its own packed volume only.
    let start = std::time::Instant::now();
    while d.get("/templates/generic").unwrap()["pool"]["ready"] != 1 {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "{}",
            d.get("/templates/generic").unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (cfg, data, cfg2) = (
        vol(&h.cfg, "/cfg", true),
        vol(&h.data, "/data", false),
        vol(&other, "/cfg", true),
    );
    let mut args = vec!["run", "--name", "c1", "-v", &cfg];
    if fs_slots > 0 {
        args.extend(["-v", &data]);
    }
    args.extend(["volprobe", "cat", "/cfg/app.conf", "write", "/cfg/x", "y"]);
    if fs_slots > 0 {
        args.extend(["write", "/data/clone.txt", "from-clone"]);
    }
    let out = d.actl(&args);
    let console = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{console}\n{}", diag(&d, "c1"));
    assert!(
        console.contains("VOLPROBE cat /cfg/app.conf = hello-cfg"),
        "{console}"
    );
    assert!(
        console.contains("VOLPROBE write /cfg/x error Read-only file system"),
        "{console}"
    );
    let c1 = d.get("/instances/c1").unwrap();
    assert_eq!(c1["clone"]["generic"], true, "{c1}");
    eprintln!("clone 1: {}", c1["clone"]);
    if fs_slots > 0 {
        assert_eq!(
            std::fs::read_to_string(h.data.join("clone.txt")).unwrap(),
            "from-clone"
        );
    }
    let out = d.actl(&[
        "run",
        "--name",
        "c2",
        "-v",
        &cfg2,
        "volprobe",
        "cat",
        "/cfg/app.conf",
        "ls",
        "/cfg",
    ]);
    let console = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{console}\n{}", diag(&d, "c2"));
    assert!(
        console.contains("VOLPROBE cat /cfg/app.conf = second-cfg"),
        "{console}"
    );
    assert!(console.contains("VOLPROBE ls /cfg = app.conf"), "{console}");
    let c2 = d.get("/instances/c2").unwrap();
    assert_eq!(c2["clone"]["generic"], true, "{c2}");
    eprintln!("clone 2: {}", c2["clone"]);
}
