//! The jail around every arrow-vmm arrowd starts (on by default): checked from
//! the host through /proc — namespaces, uid, no_new_privs, limits, what the
//! VMM's root holds — and through arrowd: exit codes, kill -9, re-adoption.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: the jail needs root");
    }
    root
}

/// The jailed arrow-vmm under jailer `pid` (waits for the exec).
fn vmm_of(jailer: i32) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(v) = arrow_service::procfs::jailed_vmm(jailer) {
            let exe = std::fs::read_link(format!("/proc/{v}/exe")).unwrap_or_default();
            if exe.file_name().is_some_and(|n| n == "arrow-vmm") {
                return v;
            }
        }
        assert!(
            t.elapsed() < common::TIMEOUT,
            "no arrow-vmm under jailer {jailer}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until arrow-vmm `pid` takes SIGTERM as a stop (its signalfd blocks it)
/// and its control API is up.
fn ready(pid: i32) {
    let t = Instant::now();
    let bit = 1u64 << (libc::SIGTERM - 1);
    loop {
        let blocked = u64::from_str_radix(&status_field(pid, "SigBlk:"), 16).unwrap();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        if blocked & bit != 0 && cwd.join("api.sock").exists() {
            return;
        }
        assert!(
            t.elapsed() < common::TIMEOUT,
            "arrow-vmm {pid} never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ns(pid: i32, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .trim()
        .to_owned()
}

fn limit(pid: i32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    s.lines()
        .find(|l| l.starts_with(name))
        .unwrap()
        .split_whitespace()
        .rev()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// Every path in the VMM's root (bind-mounted directories are not descended).
fn tree(root: &Path, rel: &Path, out: &mut Vec<String>, depth: usize) {
    let Ok(dir) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in dir.flatten() {
        let p = rel.join(e.file_name());
        out.push(format!("/{}", p.display()));
        if depth < 12 && e.file_type().unwrap().is_dir() && p != Path::new("proc") {
            tree(root, &p, out, depth + 1);
        }
    }
}

#[test]
fn instance_runs_jailed_and_is_readopted() {
    if !require_root() {
        return;
    }
    let mut d = Daemon::with_args(&["--jail-user", "4321:4322"]);
    d.image("long", &["idle"]);
    d.image("exit3", &["exit=3"]);
    let me = std::process::id() as i32;
    let daemon_pid = d.child.as_ref().unwrap().id() as i32;
    assert_eq!(d.get("/info").unwrap()["jail"], true);

    let inst = d
        .post(
            "/instances",
            Some(json!({"image": "long", "name": "j1", "start": true})),
        )
        .unwrap();
    let id = inst["id"].as_str().unwrap().to_owned();
    let jailer = d.wait_state(&id, "running")["pid"].as_i64().unwrap() as i32;
    assert!(
        std::fs::read_link(format!("/proc/{jailer}/exe"))
            .unwrap()
            .ends_with("arrow-jailer"),
        "arrowd tracks the jailer"
    );
    let vmm = vmm_of(jailer);
    ready(vmm);
    assert_eq!(
        arrow_service::procfs::vmm_process(jailer),
        vmm,
        "what arrowd measures"
    );

    for kind in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        assert_ne!(ns(vmm, kind), ns(daemon_pid, kind), "{kind} namespace");
        assert_eq!(ns(me, kind), ns(daemon_pid, kind));
    }
    assert_eq!(
        status_field(vmm, "Uid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["4321"; 4]
    );
    assert_eq!(
        status_field(vmm, "Gid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["4322"; 4]
    );
    assert_eq!(status_field(vmm, "Groups:"), "4322");
    assert_eq!(status_field(vmm, "NoNewPrivs:"), "1");
    assert_eq!(status_field(vmm, "CapEff:"), "0000000000000000");
    assert_eq!(
        status_field(vmm, "NSpid:").split_whitespace().last(),
        Some("1")
    );
    assert_eq!(limit(vmm, "Max open files"), "4096");
    assert_eq!(limit(vmm, "Max file size"), (66560u64 << 20).to_string());

    // Its root: only what it needs.
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    let mut paths = Vec::new();
    tree(&root, Path::new(""), &mut paths, 0);
    for gone in [
        "/etc",
        "/etc/passwd",
        "/home",
        "/root",
        "/usr/bin/sh",
        "/bin",
        "/tmp",
        "/sys/fs",
    ] {
        assert!(
            !paths.iter().any(|p| p == gone),
            "{gone} is visible in the jail: {paths:#?}"
        );
    }
    let run_dir = d.run_root().join(&id);
    for needed in [
        run_dir.clone(),
        common::guest_elf().to_owned(),
        std::fs::canonicalize(common::vmm_bin()).unwrap(),
        PathBuf::from("/dev/kvm"),
        PathBuf::from("/dev/urandom"),
        PathBuf::from("/proc"),
    ] {
        assert!(
            paths.iter().any(|p| Path::new(p) == needed),
            "{} missing in the jail: {paths:#?}",
            needed.display()
        );
    }
    // Nothing else of the state directory: not the database, not other run directories.
    let state = d.dir.path().join("state");
    let from_state: Vec<&String> = paths
        .iter()
        .filter(|p| Path::new(p).starts_with(&state) && !Path::new(p).starts_with(&run_dir))
        .collect();
    assert!(
        from_state.iter().all(|p| run_dir.starts_with(p)),
        "only the run directory of the state directory: {from_state:?}"
    );
    assert!(root.join("dev/kvm").metadata().unwrap().uid() == 4321);
    // The mount table: the root tmpfs is read-only, the run directory writable, the kernel read-only.
    let mounts = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).unwrap();
    let opts = |mp: &Path| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
            .map(|l| l.split(' ').nth(5).unwrap().to_owned())
            .unwrap_or_else(|| panic!("{} not mounted: {mounts}", mp.display()))
    };
    assert!(opts(Path::new("/")).starts_with("ro"), "{mounts}");
    assert!(opts(&run_dir).starts_with("rw"), "{mounts}");
    assert!(opts(common::guest_elf()).starts_with("ro"), "{mounts}");
    // The spawn token stays arrowd's, and out of the VMM's environment.
    let token = std::fs::metadata(run_dir.join(arrow_service::procfs::SPAWN_TOKEN_FILE)).unwrap();
    assert_eq!((token.uid(), token.mode() & 0o777), (0, 0o600));
    let env = std::fs::read(format!("/proc/{vmm}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&env).contains("ARROW_SPAWN_TOKEN"));
    assert_eq!(std::fs::metadata(&run_dir).unwrap().mode() & 0o7777, 0o1770);
    // arrowd's process scan sees the instance once, as its jailer.
    let found: Vec<i32> = d
        .vmms()
        .iter()
        .filter(|v| v.id == id)
        .map(|v| v.pid)
        .collect();
    assert_eq!(found, [jailer]);

    // Restart arrowd: it re-adopts the jailed instance, then stops it normally.
    d.signal(libc::SIGKILL);
    assert!(
        arrow_service::procfs::start_time(vmm).is_some(),
        "the VMM outlives arrowd"
    );
    d.start();
    let v = d.wait_state(&id, "running");
    assert_eq!(v["pid"].as_i64(), Some(jailer as i64), "{v}");
    assert!(
        d.log().contains("re-adopted running instance"),
        "{}",
        d.log()
    );
    let stopped = d
        .post(&format!("/instances/{id}/stop?timeout=10"), None)
        .unwrap();
    assert_eq!(stopped["state"], "exited", "{stopped}");
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    assert!(arrow_service::procfs::start_time(vmm).is_none());

    // Exit codes come through the jailer.
    let e = d
        .post("/instances", Some(json!({"image": "exit3", "start": true})))
        .unwrap();
    let w = d
        .post(
            &format!("/instances/{}/wait", e["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(w["exit_code"], 3, "{w}");
    // A persistent writable layer (upper.img, made by arrowd) is given to the VMM.
    let e = d
        .post(
            "/instances",
            Some(json!({"image": "exit3", "storage": "16M", "start": true})),
        )
        .unwrap();
    let eid = e["id"].as_str().unwrap();
    let w = d.post(&format!("/instances/{eid}/wait"), None).unwrap();
    assert_eq!(w["exit_code"], 3, "{w}");
    let upper = std::fs::metadata(d.run_root().join(eid).join("upper.img")).unwrap();
    assert_eq!((upper.uid(), upper.gid()), (4321, 4322));

    // SIGTERM is relayed to arrow-vmm, which stops the VM (and reports 143),
    // once it handles it (before that it dies of it, jailed or not).
    d.post(&format!("/instances/{id}/start"), None).unwrap();
    let jailer = d.wait_state(&id, "running")["pid"].as_i64().unwrap() as i32;
    ready(vmm_of(jailer));
    d.post(&format!("/instances/{id}/kill?signal=TERM"), None)
        .unwrap();
    let v = d.wait_state(&id, "exited");
    assert_eq!(v["exit_code"], 143, "{v}");
    assert!(
        !v["reason"].as_str().unwrap().contains("killed by signal"),
        "arrow-vmm's own report: {v}"
    );

    // A signal arrow-vmm has no handler for ends it as it would unjailed
    // (PID 1 of a namespace would ignore it).
    d.post(&format!("/instances/{id}/start"), None).unwrap();
    let jailer = d.wait_state(&id, "running")["pid"].as_i64().unwrap() as i32;
    ready(vmm_of(jailer));
    d.post(&format!("/instances/{id}/kill?signal=USR1"), None)
        .unwrap();
    let v = d.wait_state(&id, "exited");
    assert_eq!(v["exit_code"], 128 + libc::SIGUSR1, "{v}");

    // kill -9 of the VMM inside the jail: the jailer dies the same way.
    d.post(&format!("/instances/{id}/start"), None).unwrap();
    let jailer = d.wait_state(&id, "running")["pid"].as_i64().unwrap() as i32;
    // arrowd did not send it: the VM was lost, the instance is failed.
    common::kill(vmm_of(jailer), libc::SIGKILL);
    let v = d.wait_state(&id, "failed");
    assert_eq!(v["exit_code"], 137, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("signal 9"), "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("did not send"),
        "{v}"
    );

    // kill -9 of the jailer of an adopted instance: the VMM goes too, the
    // instance is failed at once.
    d.post(&format!("/instances/{id}/start"), None).unwrap();
    let jailer = d.wait_state(&id, "running")["pid"].as_i64().unwrap() as i32;
    let vmm = vmm_of(jailer);
    d.signal(libc::SIGKILL);
    d.start();
    d.wait_state(&id, "running");
    common::kill(jailer, libc::SIGKILL);
    let v = d.wait_state(&id, "failed");
    assert!(
        v["reason"].as_str().unwrap().contains("no exit report"),
        "{v}"
    );
    let t = Instant::now();
    while arrow_service::procfs::start_time(vmm).is_some() {
        assert!(t.elapsed() < common::TIMEOUT, "the VMM outlived its jailer");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(d.vmms().is_empty());
}

#[test]
fn jail_off_runs_the_vmm_directly() {
    let d = Daemon::with_args(&["--jail=false"]);
    assert_eq!(d.get("/info").unwrap()["jail"], false);
    d.image("long", &["idle"]);
    let inst = d
        .post("/instances", Some(json!({"image": "long", "start": true})))
        .unwrap();
    let id = inst["id"].as_str().unwrap();
    let pid = d.wait_state(id, "running")["pid"].as_i64().unwrap() as i32;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("arrow-vmm"), "{}", exe.display());
    let me = std::process::id() as i32;
    assert_eq!(ns(pid, "mnt"), ns(me, "mnt"));
    let v: Value = d.post(&format!("/instances/{id}/kill"), None).unwrap();
    assert!(v.is_object());
    d.wait_state(id, "exited");
}

/// A stop right after a start (critest's StopContainer does this) reaches the jailed VMM
/// however early it comes: before the jailer's child has exec'd arrow-vmm, it still
/// blocks the relayed signals, and a SIGTERM left pending there was dropped by the VMM
/// (PID 1 of its namespace), so the stop waited out its whole timeout. Racy by nature:
/// several rounds, each must end well before the 60 s timeout.
#[test]
fn a_stop_right_after_a_start_is_not_lost() {
    if !require_root() {
        return;
    }
    let d = Daemon::with_args(&["--stop-timeout", "60"]);
    d.image("long", &["idle"]);
    for round in 0..12 {
        let inst = d
            .post(
                "/instances",
                Some(json!({"image": "long", "name": format!("s{round}"), "start": true})),
            )
            .unwrap();
        let id = inst["id"].as_str().unwrap().to_owned();
        let t = Instant::now();
        let v = d.post(&format!("/instances/{id}/stop"), None).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "round {round}: the stop waited {:?}: {}",
            t.elapsed(),
            d.log()
        );
        assert!(
            ["exited", "failed"].contains(&v["state"].as_str().unwrap_or("")),
            "round {round}: {v}"
        );
    }
    assert!(!d.log().contains("did not stop within"), "{}", d.log());
    assert!(d.vmms().is_empty());
}
