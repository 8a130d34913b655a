//! End-to-end: one generic template (the real guest kernel booted once with
//! `arrow.wait_app=1`, snapshotted at its wait point) runs different apps
//! with their own argv, environment and hostname, injected at clone time.
//!
//! The apps come from the template's initramfs (two programs at two paths)
//! or from an image base (EROFS, built with the shadowfs crate) that
//! arrow-vmm maps into the template's image slot (its read-only pmem0).
//! Volumes come with the app description; packed ones from a packed EROFS
//! image that arrow-vmm maps into the template's volume slot (pmem1).
//! One boot (~25 s on the slow hosts), then clones, one at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow_e2e::vfs::{finish, generic_template as generic_template_at, text};
use arrow_e2e::{
    arrow_vmm, kvm_available, one_guest_at_a_time, sample_volume_pack, static_c_app, SAMPLE_CONF,
    SAMPLE_TOKEN,
};

const TIMEOUT: Duration = Duration::from_secs(240);

fn api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return (0, serde_json::Value::Null);
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// Size of the template's image slot (pmem0) and of its volume slot (pmem1).
const SLOT_BYTES: u64 = 64 << 20;

fn clone_with(tpl: &Path, spec: &serde_json::Value, dir: &Path, tag: &str) -> Output {
    clone_from_base(tpl, spec, dir, tag, None)
}

fn clone_from_base(
    tpl: &Path,
    spec: &serde_json::Value,
    dir: &Path,
    tag: &str,
    base: Option<&Path>,
) -> Output {
    clone_with_slots(tpl, spec, dir, tag, base, None)
}

fn clone_with_slots(
    tpl: &Path,
    spec: &serde_json::Value,
    dir: &Path,
    tag: &str,
    base: Option<&Path>,
    volumes: Option<&Path>,
) -> Output {
    let spec_path = dir.join(format!("{tag}.json"));
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let mut cmd = Command::new(arrow_vmm());
    cmd.arg("restore");
    if let Some(base) = base {
        cmd.arg("--image-base").arg(base);
    }
    if let Some(volumes) = volumes {
        cmd.arg("--volumes-base").arg(volumes);
    }
    let child = cmd
        .args(["--clone", "--from"])
        .arg(tpl)
        .arg("--app-spec")
        .arg(&spec_path)
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clone");
    finish(child)
}

/// A pooled clone of `tpl` (`restore --clone --pool`) with its API at `sock`, once it
/// says it is pooled.
fn pooled_clone(tpl: &Path, sock: &Path) -> std::process::Child {
    let child = Command::new(arrow_vmm())
        .args(["restore", "--clone", "--pool", "--from"])
        .arg(tpl)
        .arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pooled clone");
    let t = Instant::now();
    while api(sock, "GET", "/vm", "").1["state"] != "pooled" {
        assert!(t.elapsed() < TIMEOUT, "pooled clone never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn initrd(dir: &Path) -> PathBuf {
    let e2e = std::fs::read(static_c_app("e2e-app", dir)).expect("e2e-app");
    let sum = std::fs::read(static_c_app("sum-app", dir)).expect("sum-app");
    let vol = std::fs::read(static_c_app("volume-app", dir)).expect("volume-app");
    let mut w = asdk::cpio::Writer::new();
    w.file("app", 0o755, &e2e).expect("app under 4 GiB");
    w.dir("bin", 0o755);
    w.file("bin/sum", 0o755, &sum).expect("sum under 4 GiB");
    w.file("bin/volume-app", 0o755, &vol)
        .expect("volume-app under 4 GiB");
    let out = dir.join("initrd.cpio");
    std::fs::write(&out, w.finish()).expect("write initrd");
    out
}

/// Boots the generic template and snapshots it at the wait point.
fn generic_template(dir: &Path) -> PathBuf {
    // The image slot and the volume slot: zeros until a clone maps an image
    // base or a packed volume image over them.
    let slot = |name: &str| {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(SLOT_BYTES))
            .expect("create a slot");
        let mut pmem = path.into_os_string();
        pmem.push(",ro");
        pmem
    };
    let (pmem, volume_slot) = (slot("slot.img"), slot("volumes.slot"));
    let args = ["--pmem".into(), pmem, "--pmem".into(), volume_slot];
    let (tpl, vm) = generic_template_at(
        dir,
        &initrd(dir),
        "arrow.hostname=template SECRET=template -- templatearg 5",
        &args,
    );
    assert_eq!(vm["app_abi"], 2, "{vm}");
    let console = std::fs::read_to_string(dir.join("tpl.log")).unwrap_or_default();
    assert!(
        !console.contains("ARROW-E2E: hello"),
        "the template must not run an app:\n{console}"
    );
    tpl
}

#[test]
fn one_generic_template_runs_different_apps_injected_at_clone_time() {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here (missing or no permission); this test boots the real guest kernel"
    );
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let tpl = generic_template(dir.path());
    let memory_before = std::fs::read(tpl.join("memory.bin")).expect("memory.bin");

    // Clone 1: e2e-app with its own argv, env and hostname.
    let o = clone_with(
        &tpl,
        &serde_json::json!({"app": "/app", "args": ["first", "7"], "env": ["FOO=bar"], "hostname": "clone-one"}),
        dir.path(),
        "c1",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}");
    assert!(
        out.contains("ARROW-E2E: hello pid=1 host=clone-one argc=3"),
        "{out}"
    );
    assert!(out.contains("ARROW-E2E: argv[1]=first"), "{out}");
    assert!(out.contains("ARROW-E2E: env FOO=bar"), "{out}");
    assert!(out.contains("ARROW-E2E: env HOME=/"), "{out}");
    assert!(
        !out.contains("SECRET") && !out.contains("templatearg"),
        "nothing of the template's app leaks: {out}"
    );

    // Bad descriptions are refused before anything runs (exit 125) ...
    for (spec, needle) in [
        (serde_json::json!({"app": "relative"}), "not absolute"),
        (
            serde_json::json!({"app": "/app", "args": vec!["y".repeat(1000); 70]}),
            "fit the channel",
        ),
        (
            serde_json::json!({"app": "/app", "env": ["NOEQUALS"]}),
            "KEY=VALUE",
        ),
        (
            serde_json::json!({"app": "/app", "volumes": [{"kind": "fs", "id": "vol0", "path": "data"}]}),
            "volume path \"data\" is not absolute",
        ),
        (
            serde_json::json!({"app": "/app", "volumes": [{"kind": "pack", "id": "0", "read_only": true, "path": "/config"}]}),
            "--volumes-base",
        ),
    ] {
        let o = clone_with(&tpl, &spec, dir.path(), "bad");
        assert_eq!(o.status.code(), Some(125), "{}", text(&o));
        assert!(text(&o).contains(needle), "{needle}: {}", text(&o));
        assert!(o.stdout.is_empty(), "nothing ran: {}", text(&o));
    }

    // ... and the next clone still works: a different program.
    let o = clone_with(
        &tpl,
        &serde_json::json!({"app": "/bin/sum", "args": ["20", "22"], "env": ["N=100"], "hostname": "clone-two"}),
        dir.path(),
        "c2",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(142), "{out}");
    assert!(
        out.contains("SUM-APP: host=clone-two argc=3 sum=142"),
        "{out}"
    );

    // An image base in the image slot: the app comes from it (sum-app at
    // /app there; the initramfs's /app is e2e-app).
    let base = dir.path().join("base.erofs");
    let sum = std::fs::read(static_c_app("sum-app", dir.path())).expect("sum-app");
    shadowfs::base::build(
        &[shadowfs::base::Entry::File {
            path: "app".into(),
            mode: 0o755,
            data: sum,
        }],
        &base,
    )
    .expect("build the image base");
    let spec = serde_json::json!({"app": "/app", "args": ["1", "2"], "env": ["N=10"], "hostname": "from-base"});
    let o = clone_from_base(&tpl, &spec, dir.path(), "c3", Some(&base));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(13), "{out}");
    assert!(
        out.contains("SUM-APP: host=from-base argc=3 sum=13"),
        "{out}"
    );
    // An image larger than the slot is refused before anything runs.
    let big = dir.path().join("big.erofs");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(SLOT_BYTES + 4096))
        .expect("big file");
    let o = clone_from_base(&tpl, &spec, dir.path(), "big", Some(&big));
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        text(&o).contains("image slot holds at most"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));

    // Volumes: a packed image in the volume slot (pmem1), a directory at
    // /config and a single file at /etc/token, both read-only.
    let pack = sample_volume_pack(dir.path());
    let vol_spec = |app: &str| {
        serde_json::json!({"app": app, "hostname": "with-volumes", "volumes": [
            {"kind": "pack", "id": "0", "read_only": true, "path": "/config"},
            {"kind": "pack", "id": "1", "read_only": true, "path": "/etc/token"}]})
    };
    let o = clone_with_slots(
        &tpl,
        &vol_spec("/bin/volume-app"),
        dir.path(),
        "v1",
        None,
        Some(&pack),
    );
    let out = text(&o);
    assert!(
        out.contains(&format!("VOLUME-APP: /config/app.conf={SAMPLE_CONF}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("VOLUME-APP: /etc/token={SAMPLE_TOKEN}")),
        "{out}"
    );
    assert!(
        out.contains("VOLUME-APP: write /config/new-file: Read-only file system"),
        "{out}"
    );
    assert_eq!(o.status.code(), Some(31), "{out}");
    // A packed image larger than the volume slot is refused before anything runs.
    let o = clone_with_slots(
        &tpl,
        &vol_spec("/bin/volume-app"),
        dir.path(),
        "v-big",
        None,
        Some(&big),
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        text(&o).contains("volume slot holds at most"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "{}", text(&o));
    // A virtio-fs volume whose tag no device has: the guest stops before
    // the app, with the reason on the console.
    let o = clone_with(
        &tpl,
        &serde_json::json!({"app": "/bin/volume-app", "volumes": [
            {"kind": "fs", "id": "nosuchtag", "path": "/data"}]}),
        dir.path(),
        "v-tag",
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(125), "{out}");
    assert!(
        out.contains("ainit: volume fs:nosuchtag at /data: error -"),
        "{out}"
    );
    assert!(!out.contains("VOLUME-APP"), "{out}");

    // A pooled clone gets its app with PUT /vm/start.
    let sock = dir.path().join("pool.sock");
    let child = pooled_clone(&tpl, &sock);
    let (st, v) = api(&sock, "PUT", "/vm/start", r#"{"app": {"app": "relative"}}"#);
    assert_eq!(st, 400, "a bad app leaves the VM pooled: {v}");
    assert_eq!(api(&sock, "GET", "/vm", "").1["state"], "pooled");
    let (st, v) = api(
        &sock,
        "PUT",
        "/vm/start",
        r#"{"app": {"app": "/app", "args": ["9"], "hostname": "pooled"}}"#,
    );
    assert_eq!(st, 200, "{v}");
    let o = finish(child);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert!(out.contains("host=pooled"), "{out}");

    // ... and its volumes, with the packed image for the volume slot.
    let sock = dir.path().join("pool-v.sock");
    let child = pooled_clone(&tpl, &sock);
    let body = serde_json::json!({"app": vol_spec("/bin/volume-app")}).to_string();
    let (st, v) = api(&sock, "PUT", "/vm/start", &body);
    assert_eq!(st, 400, "pack volumes without their image: {v}");
    assert!(v.to_string().contains("volumes_base"), "{v}");
    let body =
        serde_json::json!({"app": vol_spec("/bin/volume-app"), "volumes_base": pack}).to_string();
    let (st, v) = api(&sock, "PUT", "/vm/start", &body);
    assert_eq!(st, 200, "{v}");
    let o = finish(child);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(31), "{out}");
    assert!(
        out.contains(&format!("VOLUME-APP: /etc/token={SAMPLE_TOKEN}")),
        "{out}"
    );

    assert!(
        std::fs::read(tpl.join("memory.bin")).expect("memory.bin") == memory_before,
        "clones never write the template"
    );
}
