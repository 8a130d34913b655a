//! End-to-end shadowfs: the real guest kernel runs a static test app from an
//! EROFS image base on virtio-pmem (DAX) with a writable overlay, no initrd.
//!
//! Four boots, one at a time (each ~25 s on a nested-PVM host):
//! 1. tmpfs layer (2 MiB): the app reads its config from the base, appends
//!    to it (copy-up), deletes and renames base files, fills the layer
//!    (ENOSPC, then room again after deleting) — status 187;
//! 2. a second instance, persistent layer: sees the pristine base (the first
//!    instance's writes were its own) — status 59;
//! 3. the same instance restarted: sees its earlier writes — status 5; the
//!    host lists them with shadowfs::upper::changes;
//! 4. a truncated base: the guest fails with the reason (kernel panic, exit
//!    123), the VMM does not crash.
//!
//! The base file is never modified (same digest at the end). See
//! tests/apps/shadowfs-app.c for the status bits.

use std::path::Path;

use arrow_e2e::{boot_pmem, cmdline, explain, kvm_available, one_guest_at_a_time, static_c_app};
use shadowfs::base::{self, Entry};
use shadowfs::upper::{self, ChangeKind};

const MARKER: &str = "SHADOWFS-APP: app.conf";

fn image_base(dir: &Path) -> std::path::PathBuf {
    let app = std::fs::read(static_c_app("shadowfs-app", dir)).expect("read app");
    let file = |path: &str, data: &[u8]| Entry::File {
        path: path.into(),
        mode: 0o644,
        data: data.to_vec(),
    };
    let entries = vec![
        Entry::File {
            path: "app".into(),
            mode: 0o755,
            data: app,
        },
        file("data/conf/app.conf", b"greeting=hello\n"),
        file("data/delete-me", b"x\n"),
        file("data/rename-me", b"r\n"),
    ];
    let out = dir.join("base.erofs");
    base::build(&entries, &out).expect("build the base");
    out
}

fn status_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| l.starts_with("SHADOWFS-APP: status"))
}

#[test]
fn app_runs_from_a_dax_base_with_private_persistent_and_full_layers() {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here; this test boots the real guest kernel"
    );
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let base = image_base(dir.path());
    let digest = base::file_digest(&base).unwrap();
    let base_ro = format!("{},ro", base.display());

    // 1. tmpfs layer, filled up.
    let run = boot_pmem(
        std::slice::from_ref(&base_ro),
        &cmdline("arrow.base=/dev/pmem0 arrow.upper_size=2m -- fill"),
        MARKER,
    );
    eprintln!(
        "shadowfs boot 1: APP_STARTED after {:?}, whole run {:.1} s",
        run.app_started,
        run.wall.as_secs_f64()
    );
    assert_eq!(run.exit_code, Some(187), "{}", explain(&run));
    assert!(
        run.console_has("then No space left on device"),
        "{}",
        explain(&run)
    );
    assert!(!run.console_has("DAX unsupported"), "{}", explain(&run));

    // 2. A second instance, with a persistent layer: the pristine base.
    let layer = dir.path().join("upper.img");
    upper::create(&layer, 32 << 20).unwrap();
    let devices = [base_ro.clone(), format!("{},rw", layer.display())];
    let params = "arrow.base=/dev/pmem0 arrow.upper=/dev/pmem1";
    let run = boot_pmem(&devices, &cmdline(params), MARKER);
    assert_eq!(run.exit_code, Some(59), "{}", explain(&run));
    assert_eq!(status_line(&run.console), Some("SHADOWFS-APP: status 59"));

    // 3. The same instance again: its earlier writes are there.
    upper::check(&layer).unwrap();
    let run = boot_pmem(&devices, &cmdline(params), MARKER);
    assert_eq!(run.exit_code, Some(5), "{}", explain(&run));
    let changes = upper::changes(&layer).unwrap();
    let kind = |p: &str| changes.iter().find(|c| c.path == p).map(|c| c.kind.clone());
    assert_eq!(
        kind("/data/conf/app.conf"),
        Some(ChangeKind::Written),
        "{changes:?}"
    );
    assert_eq!(
        kind("/data/delete-me"),
        Some(ChangeKind::Deleted),
        "{changes:?}"
    );
    assert_eq!(
        kind("/data/rename-me"),
        Some(ChangeKind::Deleted),
        "{changes:?}"
    );
    assert_eq!(
        kind("/data/renamed"),
        Some(ChangeKind::Written),
        "{changes:?}"
    );
    assert_eq!(
        kind("/data/marker"),
        Some(ChangeKind::Written),
        "{changes:?}"
    );

    assert_eq!(
        base::file_digest(&base).unwrap(),
        digest,
        "the base is never written"
    );

    // 4. A truncated base: a clear failure in the guest, not in the VMM.
    let truncated = dir.path().join("truncated.erofs");
    std::fs::write(&truncated, &std::fs::read(&base).unwrap()[..1024]).unwrap();
    let run = boot_pmem(
        &[format!("{},ro", truncated.display())],
        &cmdline("arrow.base=/dev/pmem0"),
        MARKER,
    );
    assert_eq!(run.exit_code, Some(123), "{}", explain(&run));
    assert!(
        run.console_has("ainit: shadowfs: cannot mount the image base /dev/pmem0"),
        "{}",
        explain(&run)
    );
}

/// Minimal HTTP/1.1 over arrow-vmm's control socket; returns the status code.
fn api(sock: &Path, method: &str, path: &str, body: &str) -> u16 {
    arrow_e2e::control_api(sock, method, path, body).0
}

fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// One line through the guest's vsock port 5000 (Firecracker's host protocol:
/// CONNECT, OK, then the stream); `None` until the guest accepts.
fn vsock_line(uds: &Path, line: &str) -> Option<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(uds).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    s.write_all(b"CONNECT 5000\n").ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut ok = String::new();
    r.read_line(&mut ok).ok()?;
    if !ok.starts_with("OK ") {
        return None;
    }
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    r.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Two clones of one template (tmpfs layer, in the snapshot) write different
/// contents to the same base file; each reads back its own, and the base
/// file is unchanged.
#[test]
fn clones_of_a_template_keep_their_writes_private() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here; this test boots the real guest kernel"
    );
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let base = image_base(dir.path());
    let digest = base::file_digest(&base).unwrap();
    let (sock, console, snap) = (
        dir.path().join("t.api"),
        dir.path().join("t.log"),
        dir.path().join("snap"),
    );
    let vmm = |args: &[&std::ffi::OsStr]| {
        Command::new(arrow_e2e::arrow_vmm())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn arrow-vmm")
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let kernel = arrow_e2e::kernel();
    let mut template = vmm(&[
        &os("run"),
        &os("--kernel"),
        kernel.as_os_str(),
        &os("--pmem"),
        &os(&format!("{},ro", base.display())),
        &os("--cmdline"),
        &os(&cmdline("arrow.base=/dev/pmem0 -- serve")),
        &os("--vsock-cid"),
        &os("3"),
        &os("--vsock-uds"),
        dir.path().join("t.vsock").as_os_str(),
        &os("--api-sock"),
        sock.as_os_str(),
        &os("--console"),
        console.as_os_str(),
    ]);
    wait_for(
        "the template's app to listen",
        Duration::from_secs(300),
        || {
            std::fs::read_to_string(&console)
                .unwrap_or_default()
                .contains("listening on vsock port 5000")
        },
    );
    assert_eq!(api(&sock, "PUT", "/vm/pause", ""), 200);
    let body = format!(r#"{{"dir":"{}"}}"#, snap.display());
    assert_eq!(api(&sock, "PUT", "/vm/snapshot", &body), 200);
    assert_eq!(api(&sock, "PUT", "/vm/shutdown", ""), 200);
    let _ = template.wait();

    let clone = |name: &str, cid: &str| {
        let uds = dir.path().join(format!("{name}.vsock"));
        let child = vmm(&[
            &os("restore"),
            &os("--from"),
            snap.as_os_str(),
            &os("--clone"),
            &os("--vsock-cid"),
            &os(cid),
            &os("--vsock-uds"),
            uds.as_os_str(),
            &os("--console"),
            &os("none"),
        ]);
        (child, uds)
    };
    let (mut a, a_uds) = clone("a", "4");
    let (mut b, b_uds) = clone("b", "5");
    let answer = |uds: &Path, line: &str| {
        let mut got = None;
        wait_for(
            "a clone to answer on vsock",
            Duration::from_secs(120),
            || {
                got = vsock_line(uds, line);
                got.is_some()
            },
        );
        got.unwrap_or_default()
    };
    assert_eq!(answer(&a_uds, "clone a"), "clone a\n");
    assert_eq!(answer(&b_uds, "clone b"), "clone b\n");
    assert_eq!(answer(&a_uds, "?"), "clone a\n", "a reads its own write");
    assert_eq!(answer(&b_uds, "?"), "clone b\n", "b reads its own write");
    let _ = a.kill();
    let _ = b.kill();
    let _ = (a.wait(), b.wait());
    assert_eq!(
        base::file_digest(&base).unwrap(),
        digest,
        "the base is never written"
    );
}
