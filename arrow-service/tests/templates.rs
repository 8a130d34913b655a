//! Templates with the freestanding test guest as kernel: `actl template create` boots the
//! image once and snapshots it; instances start as clones (explicitly with --template, or
//! automatically when they run exactly what a template runs); each clone reports its own
//! identity (generation, nonce, vsock CID); the template's files never change; stale
//! templates are refused; arrowd restarts (kill -9) with templates and live clones.
//! The warm pool is off here (--pool-size 0): these are the plain `restore --clone` path.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon};
use serde_json::{json, Value};

/// Waits until the instance's console holds a line starting with `prefix`; returns it.
fn console_line(d: &Daemon, id: &str, prefix: &str) -> String {
    let start = Instant::now();
    loop {
        let logs = stdout(&d.actl(&["logs", id]));
        // Only a whole line: the guest writes the console byte by byte.
        let whole = logs.split_inclusive('\n');
        if let Some(l) = whole
            .into_iter()
            .find(|l| l.starts_with(prefix) && l.ends_with('\n'))
        {
            return l.trim_end().to_owned();
        }
        assert!(
            start.elapsed() < common::TIMEOUT,
            "{id}: no console line {prefix:?}:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `clone gen G nonce N cid C` of a running clone, checked against its record and against
/// what its arrow-vmm reports; returns the nonce.
fn check_identity(d: &Daemon, id: &str) -> String {
    let inst = d.wait_state(id, "running");
    let cid = inst["spec"]["vsock_cid"].as_u64().unwrap();
    let line = console_line(d, id, "clone gen ");
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words[2], "1", "first-generation clone: {line}");
    assert_eq!(
        words[6],
        cid.to_string(),
        "the guest sees its own CID: {line}"
    );
    let sock = PathBuf::from(inst["run_dir"].as_str().unwrap()).join("api.sock");
    let vm = vmm_get(&sock);
    assert_eq!(vm["vsock_cid"], cid, "{vm}");
    assert_eq!(vm["generation"], 1, "{vm}");
    words[4].to_owned()
}

/// `GET /vm` on an arrow-vmm control socket.
fn vmm_get(sock: &Path) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ep = arrow_service::client::Endpoint::Unix(sock.to_owned());
    rt.block_on(ep.json(hyper::Method::GET, "/vm", None))
        .unwrap()
}

/// Bytes of every file of the template directory.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn run_detached(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    let out = d.actl(&all);
    assert!(out.status.success(), "actl {all:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn create_template(d: &Daemon, name: &str, image: &str) -> Value {
    let out = d.actl(&["template", "create", "--name", name, image]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let id = stdout(&out).trim().to_owned();
    assert_eq!(id.len(), 16, "{}", stdout(&out));
    let t = d.get(&format!("/templates/{name}")).unwrap();
    assert_eq!(t["id"], id.as_str());
    assert_eq!(t["state"], "ready", "{t}");
    t
}

#[test]
fn clones_start_with_their_own_identity_and_leave_the_template_alone() {
    // Our own copy of the kernel, so that changing it can make the template stale.
    let tmp = tempfile::tempdir().unwrap();
    let kernel = tmp.path().join("vmlinux");
    std::fs::copy(common::guest_elf(), &kernel).unwrap();
    let d = Daemon::with_args(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--kernel-cmdline",
        "console=ttyS0",
        "--pool-size",
        "0",
    ]);
    d.image("cloner", &["cloneidle"]);

    let t = create_template(&d, "tpl", "cloner");
    assert_eq!(t["spec"]["snapshot_at"], "started", "no ports: APP_STARTED");
    assert!(t["boot_to_snapshot_ms"].as_i64().unwrap() > 0, "{t}");
    let dir = PathBuf::from(t["dir"].as_str().unwrap());
    assert!(dir.starts_with(d.dir.path().join("state/templates")), "{t}");
    let before = files(&dir);
    assert_eq!(
        before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["memory.bin", "state.json"]
    );
    assert!(std::fs::metadata(&dir).unwrap().permissions().readonly());
    let disk = &t["disk"];
    assert_eq!(disk["apparent_bytes"].as_u64().unwrap() >> 20, 32, "{t}");
    assert!(
        disk["allocated_bytes"].as_u64().unwrap() < disk["apparent_bytes"].as_u64().unwrap() / 4,
        "memory.bin is sparse: {t}"
    );
    let ls = stdout(&d.actl(&["template", "ls"]));
    assert!(
        ls.starts_with("NAME") && ls.contains("tpl") && ls.contains("ready"),
        "{ls}"
    );

    // Explicit clones, and one that matches the template automatically.
    let a = run_detached(&d, &["--template", "tpl", "--name", "a"]);
    let b = run_detached(&d, &["--template", "tpl"]);
    let c = run_detached(&d, &["cloner"]);
    let mut nonces = BTreeSet::new();
    let mut cids = BTreeSet::new();
    for id in [&a, &b, &c] {
        let inst = d.get(&format!("/instances/{id}")).unwrap();
        assert_eq!(inst["clone"]["template"], "tpl", "{inst}");
        assert_eq!(inst["clone"]["pooled"], false, "{inst}");
        assert!(
            nonces.insert(check_identity(&d, id)),
            "each clone its own nonce"
        );
        assert!(cids.insert(inst["spec"]["vsock_cid"].as_u64().unwrap()));
        let pid = inst["pid"].as_i64().unwrap();
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        assert!(
            argv.contains(" restore --from ") && argv.contains(" --clone "),
            "{argv}"
        );
    }
    let inst = d.get(&format!("/instances/{a}")).unwrap();
    assert_eq!(inst["spec"]["template"], "tpl");
    assert_eq!(
        inst["spec"]["image"], "cloner",
        "the template's image reference"
    );
    assert!(inst["start_latency_ms"].is_i64(), "{inst}");

    // Something else cold-boots.
    let other = run_detached(&d, &["cloner", "idle"]);
    let inst = d.wait_state(&other, "running");
    assert!(inst["clone"].is_null(), "{inst}");

    // Inspect: clones alive and the pages they share.
    let t = d.get("/templates/tpl").unwrap();
    let alive: BTreeSet<&str> = t["clones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(alive, BTreeSet::from([a.as_str(), b.as_str(), c.as_str()]));
    assert_eq!(t["sharing"]["clones"], 3, "{t}");
    assert!(t["sharing"]["rss_bytes"].as_u64().unwrap() > 0, "{t}");
    assert!(t["sharing"]["shared_bytes"].as_u64().unwrap() > 0, "{t}");
    eprintln!("template with 3 clones: {}", t);

    // Bad requests.
    let (code, msg) = d
        .post(
            "/instances",
            Some(json!({"template": "nope", "start": true})),
        )
        .unwrap_err();
    assert_eq!(code, 404, "{msg}");
    assert!(msg.contains("actl template ls"), "{msg}");
    let (code, msg) = d
        .post("/instances", Some(json!({"template": "tpl", "memory": 64})))
        .unwrap_err();
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("memory 64 MiB (template: 32 MiB)"), "{msg}");
    let (code, msg) = d
        .post(
            "/templates",
            Some(json!({"name": "tpl", "image": "cloner"})),
        )
        .unwrap_err();
    assert_eq!(code, 409, "{msg}");

    // rm is refused while clones run.
    let out = d.actl(&["template", "rm", "tpl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("running clone"), "{}", stderr(&out));

    // The kernel changes: the template is stale and never used.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&kernel)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
        .unwrap();
    let t = d.get("/templates/tpl").unwrap();
    assert_eq!(t["state"], "stale", "{t}");
    assert!(t["reason"].as_str().unwrap().contains("kernel"), "{t}");
    let (code, msg) = d
        .post(
            "/instances",
            Some(json!({"template": "tpl", "start": true})),
        )
        .unwrap_err();
    assert_eq!(code, 409, "{msg}");
    assert!(msg.contains("stale"), "{msg}");
    let cold = run_detached(&d, &["cloner"]);
    assert!(
        d.wait_state(&cold, "running")["clone"].is_null(),
        "a stale template is not matched"
    );

    // The image reference moves on: stale too (even with the kernel restored).
    std::fs::copy(common::guest_elf(), &kernel).unwrap();
    assert_eq!(d.get("/templates/tpl").unwrap()["state"], "ready");
    d.image("cloner", &["cloneidle", "v2"]);
    let t = d.get("/templates/tpl").unwrap();
    assert_eq!(t["state"], "stale", "{t}");
    assert!(t["reason"].as_str().unwrap().contains("image"), "{t}");

    // Forced removal kills the clones; the template's files were never written.
    assert_eq!(files(&dir), before, "clones never modify the template");
    let out = d.actl(&["template", "rm", "-f", "tpl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for id in [&a, &b, &c] {
        assert_eq!(
            d.get(&format!("/instances/{id}")).unwrap()["state"],
            "exited"
        );
    }
    assert!(!dir.exists());
    assert!(d.get("/templates").unwrap().as_array().unwrap().is_empty());
    for id in [&other, &cold] {
        assert!(d.actl(&["rm", "-f", id]).status.success());
    }
}

#[test]
fn templates_and_clones_survive_kill_9_of_arrowd() {
    let mut d = Daemon::with_args(&["--pool-size", "0"]);
    d.image("cloner", &["cloneidle"]);
    create_template(&d, "tpl", "cloner");
    let a = run_detached(&d, &["--template", "tpl"]);
    let b = run_detached(&d, &["cloner"]);
    let nonce_a = check_identity(&d, &a);
    check_identity(&d, &b);
    let pids: BTreeSet<i64> = [&a, &b]
        .iter()
        .map(|id| {
            d.get(&format!("/instances/{id}")).unwrap()["pid"]
                .as_i64()
                .unwrap()
        })
        .collect();

    d.signal(libc::SIGKILL);
    d.start();
    assert!(d.log().contains("recovery done"), "{}", d.log());
    for id in [&a, &b] {
        let inst = d.get(&format!("/instances/{id}")).unwrap();
        assert_eq!(inst["state"], "running", "re-adopted: {inst}");
        assert!(pids.contains(&inst["pid"].as_i64().unwrap()), "{inst}");
        assert_eq!(inst["clone"]["template"], "tpl", "{inst}");
    }
    let t = d.get("/templates/tpl").unwrap();
    assert_eq!(t["state"], "ready", "{t}");
    assert_eq!(t["clones"].as_array().unwrap().len(), 2, "{t}");
    // The template still makes clones, and the old ones are unchanged.
    let c = run_detached(&d, &["--template", "tpl"]);
    check_identity(&d, &c);
    assert_eq!(check_identity(&d, &a), nonce_a);
    // An adopted clone still stops cleanly.
    let stopped = d
        .post(&format!("/instances/{a}/stop?timeout=5"), None)
        .unwrap();
    assert_eq!(stopped["state"], "exited", "{stopped}");
    assert_eq!(stopped["exit_code"], 0, "{stopped}");
    let out = d.actl(&["template", "rm", "-f", "tpl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for id in [&a, &b, &c] {
        assert!(d.actl(&["rm", "-f", id]).status.success());
    }
    assert!(d.vmms().is_empty(), "nothing left running");
}

/// Unmounts the small filesystem when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_template_whose_snapshot_does_not_fit_on_disk_fails_and_is_never_used() {
    common::require_kvm();
    let d = Daemon::new();
    d.image("cloner", &["cloneidle"]);
    // Templates live on a 16 KiB filesystem: the snapshot's memory file does not fit.
    let tdir = d.dir.path().join("state/templates");
    std::fs::create_dir_all(&tdir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "arrow-test-full"])
        .arg(&tdir)
        .status()
        .expect("run mount");
    assert!(
        st.success(),
        "cannot mount a small tmpfs on {} (the test needs root): {st}",
        tdir.display()
    );
    let _mounted = Mounted(tdir.clone());

    let (code, msg) = d
        .post(
            "/templates",
            Some(json!({"name": "tpl", "image": "cloner"})),
        )
        .unwrap_err();
    assert_eq!(code, 500, "{msg}");
    assert!(
        msg.contains("No space left") || msg.contains("ENOSPC") || msg.contains("space"),
        "the error says the disk is full: {msg}"
    );
    let t = d.get("/templates/tpl").unwrap();
    assert_eq!(t["state"], "failed", "{t}");
    // Nothing half-written is left as a snapshot.
    let left: Vec<_> = std::fs::read_dir(&tdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != ".build")
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "snapshot files left behind: {left:?}");
    // Never used: neither explicitly nor by a matching start, which cold-boots.
    let (code, msg) = d
        .post(
            "/instances",
            Some(json!({"template": "tpl", "start": true})),
        )
        .unwrap_err();
    assert!((400..500).contains(&code), "{code} {msg}");
    let cold = run_detached(&d, &["cloner"]);
    assert!(
        d.wait_state(&cold, "running")["clone"].is_null(),
        "a failed template is not matched"
    );
    // arrowd still serves, and removing the failed template works.
    let out = d.actl(&["template", "rm", "tpl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.get("/templates").unwrap().as_array().unwrap().is_empty());
}
