//! End-to-end vhost-user-fs: the real guest kernel, the real arrow-vmm
//! (`run --fs myfs=SOCKET`, seccomp on) and a real virtiofsd (installed by
//! `shadowfs::tools::find_or_install_virtiofsd`) serving a host directory.
//!
//! 1. The app reads a host file from the volume and writes one; the host
//!    sees the write. ainit mounts the volume (`arrow.vol=fs:myfs:rw:/data`
//!    on the command line, a `volumes` entry in a clone's injected app;
//!    0011-ainit-volumes.patch), which the test checks; fs-app.c can still
//!    mount it itself on an older kernel.
//! 2. virtiofsd dies under a running guest: arrow-vmm stops with exit code
//!    125 and says which volume's backend closed — no hang, no crash.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use arrow_e2e::vfs::{conversion_cost, finish, template_with_slots, text, virtiofsd};
use arrow_e2e::{
    boot_with_args, cmdline, explain, initrd, kvm_available, one_guest_at_a_time, static_c_app,
};

const MARKER: &str = "FS-APP: wrote";

struct Setup {
    _dir: tempfile::TempDir,
    share: PathBuf,
    socket: PathBuf,
    initrd: PathBuf,
}

fn setup() -> Setup {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here; this test boots the real guest kernel"
    );
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    let app = std::fs::read(static_c_app("fs-app", dir.path())).expect("read app");
    let rd = initrd(&app, 0o755, &dir.path().join("app.cpio"));
    Setup {
        socket: dir.path().join("fs.sock"),
        share,
        initrd: rd,
        _dir: dir,
    }
}

#[test]
fn app_reads_a_host_file_and_the_host_sees_its_write() {
    let _one = one_guest_at_a_time();
    let s = setup();
    let _fsd = virtiofsd(&s.share, &s.socket);
    let fs = format!("myfs={}", s.socket.display());
    let run = boot_with_args(
        &s.initrd,
        &cmdline("arrow.vol=fs:myfs:rw:/data"),
        MARKER,
        1,
        &["--fs".as_ref(), fs.as_ref()],
    );
    assert_eq!(run.exit_code, Some(0), "{}", explain(&run));
    assert!(
        run.console_has("FS-APP: read hello from the host"),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("FS-APP: /data mounted by ainit"),
        "{}",
        explain(&run)
    );
    assert_eq!(
        std::fs::read_to_string(s.share.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
}

#[test]
fn backend_death_stops_the_vm_with_the_reason() {
    let _one = one_guest_at_a_time();
    let s = setup();
    std::fs::write(s.share.join("wait"), "").unwrap();
    let fsd = virtiofsd(&s.share, &s.socket);
    // Kill virtiofsd once the guest has written through it.
    let written = s.share.join("from-guest.txt");
    let killer = std::thread::spawn(move || {
        let mut fsd = fsd;
        let deadline = Instant::now() + Duration::from_secs(170);
        while !std::fs::read_to_string(&written).is_ok_and(|t| !t.is_empty()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = fsd.0.kill();
        let _ = fsd.0.wait();
        true
    });
    let fs = format!("myfs={}", s.socket.display());
    let run = boot_with_args(
        &s.initrd,
        &cmdline("arrow.vol=fs:myfs:rw:/data"),
        "FS-APP: waiting",
        1,
        &["--fs".as_ref(), fs.as_ref()],
    );
    assert!(
        killer.join().unwrap(),
        "the guest never wrote: {}",
        explain(&run)
    );
    assert_eq!(run.exit_code, Some(125), "{}", explain(&run));
    assert!(
        run.stderr.contains("vhost-user-fs myfs: backend") && run.stderr.contains("closed"),
        "{}",
        explain(&run)
    );
}

#[test]
fn generic_template_clones_get_their_own_volume_in_a_slot() {
    use arrow_e2e::{arrow_vmm, control_api};
    let _one = one_guest_at_a_time();
    let s = setup();
    let dir = s._dir.path();
    let tpl = template_with_slots(dir, &s.initrd, 1);
    let spec = dir.join("spec.json");
    // The volume comes with the injected app (ABI 2): ainit mounts vol0.
    let app = serde_json::json!({"app": "/app", "args": ["vol0"], "hostname": "clone",
        "volumes": [{"kind": "fs", "id": "vol0", "read_only": false, "path": "/data"}]});
    std::fs::write(&spec, app.to_string()).unwrap();

    // Clone 1 (restore --clone --fs vol0=SOCKET): its own share.
    let fsd = virtiofsd(&s.share, &s.socket);
    let child = Command::new(arrow_vmm())
        .args(["restore", "--clone", "--from"])
        .arg(&tpl)
        .arg("--app-spec")
        .arg(&spec)
        .arg("--fs")
        .arg(format!("vol0={}", s.socket.display()))
        .args(["--log-level", "info"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn clone");
    let o = finish(child);
    drop(fsd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("FS-APP: read hello from the host"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("FS-APP: /data mounted by ainit"),
        "{}",
        text(&o)
    );
    assert!(s.share.join("from-guest.txt").exists());
    let cost = conversion_cost(&String::from_utf8_lossy(&o.stderr));
    eprintln!("clone 1 (restore --fs): RAM to memfd (KiB copied, ms): {cost:?}");
    assert!(
        cost.is_some_and(|(kib, _)| kib > 0 && kib < 128 << 10),
        "only data extents are copied: {}",
        text(&o)
    );

    // Clone 2, pooled: the backend comes with PUT /vm/start.
    let share2 = dir.join("share2");
    std::fs::create_dir(&share2).unwrap();
    std::fs::write(share2.join("hello.txt"), "hello from share two\n").unwrap();
    let socket2 = dir.join("fs2.sock");
    let _fsd2 = virtiofsd(&share2, &socket2);
    let api = dir.join("pool.sock");
    let child = Command::new(arrow_vmm())
        .args(["restore", "--clone", "--pool", "--from"])
        .arg(&tpl)
        .arg("--api-sock")
        .arg(&api)
        .args(["--log-level", "info"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pooled clone");
    let t = Instant::now();
    while control_api(&api, "GET", "/vm", "").0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "pooled VM never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A tag the template does not have: 400, and the VM stays pooled.
    let bad = serde_json::json!({"app": app, "fs": [{"tag": "vol7", "socket": socket2}]});
    let (st, v) = control_api(&api, "PUT", "/vm/start", &bad.to_string());
    assert_eq!(st, 400, "{v}");
    assert!(v.contains("vol7"), "{v}");
    let body = serde_json::json!({"app": app, "fs": [{"tag": "vol0", "socket": socket2}]});
    let (st, v) = control_api(&api, "PUT", "/vm/start", &body.to_string());
    assert_eq!(st, 200, "{v}");
    let o = finish(child);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("FS-APP: read hello from share two"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("FS-APP: /data mounted by ainit"),
        "{}",
        text(&o)
    );
    assert!(share2.join("from-guest.txt").exists());
    let cost = conversion_cost(&String::from_utf8_lossy(&o.stderr));
    eprintln!("clone 2 (pooled): RAM to memfd (KiB copied, ms): {cost:?}");
    assert!(cost.is_some(), "{}", text(&o));

    // Naming a tag the template does not have is refused before it runs.
    let o = finish(
        Command::new(arrow_vmm())
            .args(["restore", "--clone", "--from"])
            .arg(&tpl)
            .arg("--app-spec")
            .arg(&spec)
            .arg("--fs")
            .arg(format!("nosuch={}", s.socket.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn clone"),
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(
        text(&o).contains("no vhost-user-fs device with tag nosuch"),
        "{}",
        text(&o)
    );
}
