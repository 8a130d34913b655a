//! Snapshot, restore and clones with the test guest on the real /dev/kvm.

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Boots the test guest with a control socket in `dir`; returns the child
/// and the socket once it is up.
fn boot_with_api(
    dir: &Path,
    scenario: &str,
    extra: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let sock = dir.join("api.sock");
    let elf = guest_elf().to_str().unwrap().to_string();
    let mut args = vec![
        "run",
        "--kernel",
        &elf,
        "--cmdline",
        scenario,
        "--api-sock",
        s(&sock),
    ];
    args.extend_from_slice(extra);
    let child = spawn_vmm(&args);
    wait_for_path(&sock, T);
    (child, sock)
}

/// Snapshots through the API into `snap`, which must succeed.
fn take_snapshot(sock: &Path, snap: &Path) {
    let (st, v) = api(
        sock,
        "PUT",
        "/vm/snapshot",
        Some(&format!(r#"{{"dir":"{}"}}"#, s(snap))),
    );
    assert_eq!(st, 200, "{v}");
}

/// Shuts the VM down through the API; it must exit 0.
fn shut_down(child: std::process::Child, sock: &Path) {
    assert_eq!(api(sock, "PUT", "/vm/shutdown", None).0, 200);
    let o = wait_with_timeout(child, T);
    assert_eq!(
        o.status.code(),
        Some(0),
        "shutdown through the API exits 0: {}",
        stderr(&o)
    );
}

fn expected_ticks(n: u32, gen_from: impl Fn(u32) -> u32) -> String {
    (1..=n)
        .map(|k| format!("tick {k} gen {}\n", gen_from(k)))
        .collect()
}

#[test]
fn pause_snapshot_restore_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (console, snap) = (dir.path().join("a.log"), dir.path().join("snap"));
    let (child, sock) = boot_with_api(dir.path(), "tick=12", &["--console", s(&console)]);
    wait_for_text(&console, "tick 3 ", T);

    let (st, v) = api(&sock, "PUT", "/vm/pause", None);
    assert_eq!((st, v["state"].as_str()), (200, Some("paused")));
    let (_, v) = api(&sock, "GET", "/vm", None);
    assert_eq!(v["state"], "paused");
    let before = std::fs::read_to_string(&console).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        before,
        "a paused guest prints nothing"
    );

    take_snapshot(&sock, &snap);
    assert!(snap.join("state.json").exists() && snap.join("memory.bin").exists());
    // A second snapshot into a used directory is refused.
    let (st, v) = api(
        &sock,
        "PUT",
        "/vm/snapshot",
        Some(&format!(r#"{{"dir":"{}"}}"#, s(&snap))),
    );
    assert_eq!(st, 400, "{v}");
    shut_down(child, &sock);
    assert!(!sock.exists(), "the control socket is removed on exit");

    // The restored guest prints exactly the rest of the sequence.
    let o = run_vmm(&["restore", "--from", s(&snap)]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let whole = before + &stdout(&o);
    assert_eq!(whole, expected_ticks(12, |_| 0));
    // A snapshot can be restored again: it is never modified.
    let o = run_vmm(&["restore", "--from", s(&snap), "--console", "none"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}

#[test]
fn running_vm_is_resumed_after_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (child, sock) = boot_with_api(dir.path(), "tick=6", &[]);
    take_snapshot(&sock, &dir.path().join("snap"));
    let o = wait_with_timeout(child, T);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        expected_ticks(6, |_| 0),
        "the VM ran on to its end"
    );
}

#[test]
fn ten_clones_run_independently_and_leave_the_template_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (console, tpl) = (dir.path().join("t.log"), dir.path().join("template"));
    let (child, sock) = boot_with_api(dir.path(), "clonetest", &["--console", s(&console)]);
    wait_for_text(&console, "waiting to be cloned\n", T);
    api(&sock, "PUT", "/vm/pause", None);
    take_snapshot(&sock, &tpl);
    shut_down(child, &sock);
    let template_bytes = std::fs::read(tpl.join("memory.bin")).unwrap();

    let clones: Vec<_> = (0..10)
        .map(|_| spawn_vmm(&["restore", "--from", s(&tpl), "--clone"]))
        .collect();
    let mut nonces = std::collections::HashSet::new();
    for c in clones {
        let o = wait_with_timeout(c, T);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        let out = stdout(&o);
        // Each clone sees the template's memory (mark 0), not another clone's write.
        let line = out
            .lines()
            .find(|l| l.starts_with("cloned gen 1 nonce "))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.ends_with(" mark 0x0000000000000000"), "{out}");
        let nonce = line.split(' ').nth(4).unwrap().to_string();
        assert!(out.contains(&format!("after mark {nonce}\n")), "{out}");
        assert!(nonces.insert(nonce), "every clone gets its own nonce");
    }
    assert_eq!(
        std::fs::read(tpl.join("memory.bin")).unwrap(),
        template_bytes,
        "clones never write the template"
    );
}

#[test]
fn bad_snapshots_are_refused_before_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |from: &Path, needle: &str| {
        let o = run_vmm(&["restore", "--from", s(from)]);
        assert_eq!(o.status.code(), Some(125), "stderr: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
        assert!(stdout(&o).is_empty());
    };
    fails(&dir.path().join("missing"), "cannot read");

    // Make a real snapshot, then damage copies of it.
    let snap = dir.path().join("snap");
    let (child, sock) = boot_with_api(dir.path(), "tick=1000", &["--console", "none", "--paused"]);
    take_snapshot(&sock, &snap);
    shut_down(child, &sock);

    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in ["state.json", "memory.bin"] {
            std::fs::copy(snap.join(f), d.join(f)).unwrap();
        }
        d
    };
    let corrupt = copy("corrupt");
    let mut state = std::fs::read(corrupt.join("state.json")).unwrap();
    let n = state.len();
    state[n / 2] ^= 0x01;
    std::fs::write(corrupt.join("state.json"), state).unwrap();
    fails(&corrupt, "checksum");

    let truncated = copy("truncated");
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("memory.bin"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    fails(&truncated, "truncated");

    let version = copy("version");
    let text = std::fs::read(version.join("state.json")).unwrap();
    let mut v2 = b"ARROW-SNAPSHOT 2".to_vec();
    v2.extend_from_slice(&text[16..]);
    std::fs::write(version.join("state.json"), v2).unwrap();
    fails(&version, "format version 2");

    let other_cpu = copy("othercpu");
    let text = String::from_utf8(std::fs::read(other_cpu.join("state.json")).unwrap()).unwrap();
    let (_, body) = text.split_once('\n').unwrap();
    let mut state: serde_json::Value = serde_json::from_str(body).unwrap();
    state["cpu"]["model"] = serde_json::json!(state["cpu"]["model"].as_u64().unwrap() ^ 0xff);
    let body = state.to_string();
    use sha2::Digest;
    let sum: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        other_cpu.join("state.json"),
        format!("ARROW-SNAPSHOT 1 sha256={sum}\n{body}"),
    )
    .unwrap();
    fails(&other_cpu, "same CPU model");

    // Sizes that add up to memory.bin's length but a region that lies past
    // its end: refused before mapping (it used to SIGBUS on first touch).
    let past_eof = copy("pasteof");
    let text = String::from_utf8(std::fs::read(past_eof.join("state.json")).unwrap()).unwrap();
    let (_, body) = text.split_once('\n').unwrap();
    let mut state: serde_json::Value = serde_json::from_str(body).unwrap();
    let size = state["regions"][0]["size"].as_u64().unwrap();
    state["regions"][0]["file_offset"] = serde_json::json!(size);
    let body = state.to_string();
    let sum: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        past_eof.join("state.json"),
        format!("ARROW-SNAPSHOT 1 sha256={sum}\n{body}"),
    )
    .unwrap();
    fails(&past_eof, "memory layout is invalid");
}

#[test]
fn control_api_rejects_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (child, sock) = boot_with_api(dir.path(), "tick=1000", &["--console", "none", "--paused"]);
    assert_eq!(api(&sock, "GET", "/nope", None).0, 404);
    assert_eq!(api(&sock, "DELETE", "/vm/pause", None).0, 405);
    assert_eq!(api(&sock, "PUT", "/vm/snapshot", Some("not json")).0, 400);
    assert_eq!(
        api(&sock, "PUT", "/vm/snapshot", Some(r#"{"dir":"relative"}"#)).0,
        400
    );
    // Garbage on the socket gets a 400 and the VMM keeps serving.
    {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    }
    let (st, v) = api(&sock, "GET", "/vm", None);
    assert_eq!(
        (st, v["state"].as_str(), v["vcpus"].as_u64()),
        (200, Some("paused"), Some(1))
    );
    assert_eq!(api(&sock, "PUT", "/vm/resume", None).1["state"], "running");
    shut_down(child, &sock);
}

#[test]
fn pooled_clones_wait_then_start_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (console, tpl) = (dir.path().join("t.log"), dir.path().join("template"));
    let (child, sock) = boot_with_api(dir.path(), "clonetest", &["--console", s(&console)]);
    wait_for_text(&console, "waiting to be cloned\n", T);
    api(&sock, "PUT", "/vm/pause", None);
    take_snapshot(&sock, &tpl);
    shut_down(child, &sock);
    let template_bytes = std::fs::read(tpl.join("memory.bin")).unwrap();

    let pooled: Vec<_> = (0..3)
        .map(|i| {
            let sock = dir.path().join(format!("pool{i}.sock"));
            let out = dir.path().join(format!("pool{i}.log"));
            let c = spawn_vmm(&[
                "restore",
                "--from",
                s(&tpl),
                "--clone",
                "--pool",
                "--api-sock",
                s(&sock),
                "--console",
                s(&out),
            ]);
            wait_for_path(&sock, T);
            (c, sock, out)
        })
        .collect();
    let mut nonces = std::collections::HashSet::new();
    for (i, (c, sock, out)) in pooled.into_iter().enumerate() {
        let (st, v) = api(&sock, "GET", "/vm", None);
        assert_eq!((st, v["state"].as_str()), (200, Some("pooled")), "{v}");
        assert_eq!(api(&sock, "PUT", "/vm/pause", None).0, 409);
        let snap = dir.path().join(format!("nosnap{i}"));
        let body = format!(r#"{{"dir":"{}"}}"#, s(&snap));
        assert_eq!(api(&sock, "PUT", "/vm/snapshot", Some(&body)).0, 409);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap_or_default(),
            "",
            "a pooled VM runs no guest code"
        );
        if i == 2 {
            // A pooled VM that is never used shuts down cleanly.
            shut_down(c, &sock);
            continue;
        }
        // An app description needs a generic template; this one is not.
        let (st, v) = api(&sock, "PUT", "/vm/start", Some(r#"{"app":{"app":"/app"}}"#));
        assert_eq!(st, 400, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("not a generic template"),
            "{v}"
        );
        let (st, v) = api(&sock, "PUT", "/vm/start", None);
        assert_eq!((st, v["state"].as_str()), (200, Some("running")), "{v}");
        assert!(v["start_us"].as_u64().is_some(), "{v}");
        assert_eq!(api(&sock, "PUT", "/vm/start", None).0, 409, "only once");
        let o = wait_with_timeout(c, T);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        let text = std::fs::read_to_string(&out).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("cloned gen 1 nonce "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with(" mark 0x0000000000000000"), "{text}");
        let nonce = line.split(' ').nth(4).unwrap().to_string();
        assert!(text.contains(&format!("after mark {nonce}\n")), "{text}");
        assert!(nonces.insert(nonce), "every clone gets its own nonce");
    }
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"app": "/app"}"#).unwrap();
    let o = run_vmm(&[
        "restore",
        "--from",
        s(&tpl),
        "--clone",
        "--app-spec",
        s(&spec),
    ]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a generic template"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
    assert_eq!(
        std::fs::read(tpl.join("memory.bin")).unwrap(),
        template_bytes,
        "pooled clones never write the template"
    );
}

/// pmem devices are in the snapshot: a restore maps the same files at the
/// same guest addresses. A read-only base can back any number of clones; a
/// writable file cannot be shared by clones (refused), but a plain restore
/// continues with it.
#[test]
fn pmem_files_are_mapped_again_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    let upper = dir.path().join("upper.img");
    std::fs::write(&base, b"hello base").unwrap();
    let mut u = b"upper data".to_vec();
    u.resize(4096, 0);
    std::fs::write(&upper, &u).unwrap();
    let upper_arg = format!("{},rw", s(&upper));
    let console = dir.path().join("t.log");
    let (child, sock) = boot_with_api(
        dir.path(),
        "pmemclone",
        &[
            "--console",
            s(&console),
            "--pmem",
            s(&base),
            "--pmem",
            &upper_arg,
        ],
    );
    wait_for_text(&console, "waiting to be cloned\n", T);
    let (_, v) = api(&sock, "GET", "/vm", None);
    assert_eq!(v["pmem"][1]["guest_addr"], 0x1_0800_0000u64, "{v}");
    assert_eq!(v["pmem"][0]["read_only"], true, "{v}");
    api(&sock, "PUT", "/vm/pause", None);
    let tpl = dir.path().join("tpl");
    take_snapshot(&sock, &tpl);
    shut_down(child, &sock);

    let o = run_vmm(&["restore", "--from", s(&tpl), "--clone"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("writable pmem device"),
        "{}",
        stderr(&o)
    );

    // A plain restore (the one continuation of the VM) keeps the writable
    // file, at the same guest address.
    let sock2 = dir.path().join("api2.sock");
    let restored = spawn_vmm(&[
        "restore",
        "--from",
        s(&tpl),
        "--console",
        "none",
        "--api-sock",
        s(&sock2),
    ]);
    wait_for_path(&sock2, T);
    let (_, v) = api(&sock2, "GET", "/vm", None);
    assert_eq!(v["pmem"][1]["guest_addr"], 0x1_0800_0000u64, "{v}");
    assert_eq!(v["pmem"][1]["path"], s(&upper), "{v}");
    shut_down(restored, &sock2);

    // Read-only only: clones run and see the base.
    let dir2 = tempfile::tempdir().unwrap();
    let console = dir2.path().join("t.log");
    let (child, sock) = boot_with_api(
        dir2.path(),
        "pmemclone",
        &["--console", s(&console), "--pmem", s(&base)],
    );
    wait_for_text(&console, "waiting to be cloned\n", T);
    api(&sock, "PUT", "/vm/pause", None);
    let tpl = dir2.path().join("tpl");
    take_snapshot(&sock, &tpl);
    shut_down(child, &sock);
    for _ in 0..2 {
        let o = run_vmm(&["restore", "--from", s(&tpl), "--clone"]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        assert!(
            stdout(&o).contains(
                "pmem start 0x0000000100000000 size 0x0000000000200000 data 'hello base' after write 'e'\n"
            ),
            "{}",
            stdout(&o)
        );
    }
    // A pooled clone maps the base ahead and runs on PUT /vm/start.
    let (psock, pout) = (dir2.path().join("pool.sock"), dir2.path().join("pool.log"));
    let c = spawn_vmm(&[
        "restore",
        "--from",
        s(&tpl),
        "--clone",
        "--pool",
        "--api-sock",
        s(&psock),
        "--console",
        s(&pout),
    ]);
    wait_for_path(&psock, T);
    let (st, v) = api(&psock, "PUT", "/vm/start", None);
    assert_eq!(st, 200, "{v}");
    let o = wait_with_timeout(c, T);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let text = std::fs::read_to_string(&pout).unwrap();
    assert!(
        text.contains("data 'hello base' after write 'e'\n"),
        "{text}"
    );
    assert_eq!(std::fs::read(&base).unwrap(), b"hello base");
    // The base changed size: the restore says so.
    std::fs::write(&base, b"hello base, longer").unwrap();
    let o = run_vmm(&["restore", "--from", s(&tpl), "--clone"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("when the snapshot was taken"),
        "{}",
        stderr(&o)
    );
}
