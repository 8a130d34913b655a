//! End-to-end vsock test on the real /dev/kvm with the real guest kernel:
//! ONE boot of `arrow-vmm` running vsock-echo (examples/apps) behind the
//! small vsock-peer launcher (tests/apps), then in that boot:
//! - host-initiated: `CONNECT 5000` → `OK`, 1 MiB echoed back intact; the
//!   guest kernel reported APP_READY with port 5000 (GET /vm);
//! - guest-initiated: the guest dials CID 2 port 6000, which the device
//!   connects to `<uds>_6000`; 1 MiB echoed back intact;
//! - then, with a host connection still open, the VM is paused and
//!   snapshotted through the control API and restored as three concurrent
//!   clones (new CIDs, new sockets), each dialled at once: CONNECT → OK
//!   and a 64 KiB echo work in every one.
//!
//! The guest is killed after 180 s at most. No KVM, no kernel, or no
//! musl-gcc is a failure with the reason, never a skip.
//!
//! `cargo test -p arrow-vmm --test vsock_kvm -- --nocapture`
//! (`ARROW_KERNEL=/path/vmlinux` skips the kernel build script.)

#[path = "apps/vsock_guest.rs"]
mod vsock_guest;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use vsock_guest::*;

const GUEST_TIMEOUT: Duration = Duration::from_secs(180);
const MIB: usize = 1 << 20;

fn fail(guest: Option<&Guest>, what: &str, e: String) -> ! {
    let console = guest.map(Guest::console).unwrap_or_default();
    panic!("{what}: {e}\n---- guest console ----\n{console}\n-----------------------");
}

/// KVM checked, the guest kernel, a scratch directory with the initrd, and
/// the path for the guest's vsock socket.
fn prepare() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    if let Err(e) = check_kvm() {
        fail(None, "this test boots a real guest", e);
    }
    let kernel = kernel().unwrap_or_else(|e| fail(None, "guest kernel unavailable", e));
    let dir = tempfile::tempdir().unwrap();
    let initrd = initrd(dir.path()).unwrap_or_else(|e| fail(None, "building the initrd", e));
    let uds = dir.path().join("v.sock");
    (dir, kernel, initrd, uds)
}

#[test]
fn vsock_host_and_guest_initiated_megabyte_echo() {
    let (dir, kernel, initrd, uds) = prepare();
    let dial_listener = UnixListener::bind(side_path(&uds, DIAL_PORT)).unwrap();

    let vmm = Vmm::Arrow(env!("CARGO_BIN_EXE_arrow-vmm").into());
    let mut g = Guest::boot(&vmm, &kernel, &initrd, &uds, &app_args(1), GUEST_TIMEOUT)
        .unwrap_or_else(|e| fail(None, "starting arrow-vmm", e));
    let data = pattern(MIB);

    // Guest-initiated: the guest dials the host as soon as it runs.
    let s = g
        .accept(&dial_listener)
        .unwrap_or_else(|e| fail(Some(&g), "guest-initiated connection", e));
    let t_dial = g.started.elapsed();
    let dt = g
        .echo_roundtrip(&s, &data)
        .unwrap_or_else(|e| fail(Some(&g), "guest-initiated 1 MiB echo", e));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    eprintln!(
        "guest dialed after {:.1} s; 1 MiB echoed in {:.2} s",
        t_dial.as_secs_f64(),
        dt.as_secs_f64()
    );

    // Host-initiated: CONNECT 5000 to vsock-echo (PID 1).
    g.wait_for(ECHO_READY)
        .unwrap_or_else(|e| fail(Some(&g), "vsock-echo start", e));
    let (c, setup) = g
        .connect_retry(ECHO_PORT)
        .unwrap_or_else(|e| fail(Some(&g), "host-initiated CONNECT", e));
    let dt = g
        .echo_roundtrip(&c, &data)
        .unwrap_or_else(|e| fail(Some(&g), "host-initiated 1 MiB echo", e));
    eprintln!(
        "CONNECT -> OK in {:.1} ms; 1 MiB echoed in {:.2} s",
        setup.as_secs_f64() * 1e3,
        dt.as_secs_f64()
    );

    // The kernel reported APP_READY with the port when PID 1 (vsock-echo)
    // listened; the bulk server (a child, port 5001) does not count.
    let api = api_sock(&uds);
    match vsock_guest::api(&api, "GET", "/vm", "") {
        Ok((200, body)) => {
            let vm: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| fail(Some(&g), "GET /vm", format!("{e}: {body}")));
            assert_eq!(vm["app_ready_port"], ECHO_PORT, "GET /vm: {body}");
        }
        Ok((st, b)) => fail(Some(&g), "GET /vm", format!("{st} {b}")),
        Err(e) => fail(Some(&g), "GET /vm", e),
    }

    // The guest saw the end of its dialed connection.
    g.wait_for("vsock-peer: dial 0 echoed 1048576 bytes")
        .unwrap_or_else(|e| fail(Some(&g), "guest-side end of the dialed connection", e));
    g.check_alive()
        .unwrap_or_else(|e| fail(Some(&g), "guest after the transfers", e));

    // Snapshot with the host connection `c` still open, then restore the
    // snapshot as a clone with a new CID and socket (no second boot): the
    // guest gets TRANSPORT_RESET for its stale connection and serves new
    // ones under the new CID.
    let snap = dir.path().join("snap");
    for (method, path, body) in [
        ("PUT", "/vm/pause", String::new()),
        (
            "PUT",
            "/vm/snapshot",
            format!(r#"{{"dir":"{}"}}"#, snap.display()),
        ),
    ] {
        match vsock_guest::api(&api, method, path, &body) {
            Ok((200, _)) => {}
            Ok((st, b)) => fail(Some(&g), &format!("{method} {path}"), format!("{st} {b}")),
            Err(e) => fail(Some(&g), &format!("{method} {path}"), e),
        }
    }
    g.kill();
    drop(c);
    // Three clones at once, each dialled as soon as its socket exists: a
    // CONNECT that arrives before the guest handled TRANSPORT_RESET must
    // wait for it, not be answered under the old CID or reset afterwards.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_arrow-vmm"));
    let small = pattern(64 << 10);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3u32)
            .map(|i| {
                let uds = dir.path().join(format!("clone{i}.sock"));
                let (snap, small) = (&snap, &small);
                scope.spawn(move || {
                    let mut clone = Guest::restore_clone(bin, snap, &uds, 4 + i, GUEST_TIMEOUT)
                        .unwrap_or_else(|e| fail(None, "starting a clone", e));
                    let (c2, setup) = clone
                        .connect_retry(ECHO_PORT)
                        .unwrap_or_else(|e| fail(Some(&clone), "CONNECT to a clone", e));
                    let dt = clone
                        .echo_roundtrip(&c2, small)
                        .unwrap_or_else(|e| fail(Some(&clone), "64 KiB echo through a clone", e));
                    eprintln!(
                        "clone {i}: CONNECT -> OK in {:.1} ms; 64 KiB echoed in {:.2} s",
                        setup.as_secs_f64() * 1e3,
                        dt.as_secs_f64()
                    );
                    clone
                        .check_alive()
                        .unwrap_or_else(|e| fail(Some(&clone), "clone after the transfer", e));
                    clone.kill();
                })
            })
            .collect();
        for r in runs {
            if let Err(p) = r.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
}

/// A guest spinning vsock connections — 300 opened to a host listener
/// that never reads, then 300 to a port nobody serves — is held to the
/// device's connection limit, gets resets for the rest, and neither the VMM
/// nor its other connections suffer: the app's echo port still answers and
/// the VMM's descriptors go back down once the guest lets go.
#[test]
fn a_guest_spinning_connections_is_held_to_the_limit() {
    const SPIN_PORT: u32 = 7000;
    const SPINS: u32 = 300;
    let (_dir, kernel, initrd, uds) = prepare();
    // The host side accepts everything and never reads.
    let listener = UnixListener::bind(side_path(&uds, SPIN_PORT)).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held2 = std::sync::Arc::clone(&held);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            held2.lock().unwrap().push(s);
        }
    });
    let args = format!("--spin {SPIN_PORT} {SPINS} --exec /vsock-echo --port {ECHO_PORT}");
    let vmm = Vmm::Arrow(env!("CARGO_BIN_EXE_arrow-vmm").into());
    let mut g = Guest::boot(&vmm, &kernel, &initrd, &uds, &args, GUEST_TIMEOUT)
        .unwrap_or_else(|e| fail(None, "starting arrow-vmm", e));
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());

    g.wait_for("vsock-peer: spin held")
        .unwrap_or_else(|e| fail(Some(&g), "the spinning guest", e));
    let peak = fds(g.pid());
    let console = g.console();
    let line = console
        .lines()
        .find(|l| l.contains("vsock-peer: spin held"))
        .unwrap_or_default()
        .to_owned();
    let num = |key: &str| -> u32 {
        line.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| fail(Some(&g), "parsing the spin line", line.clone()))
    };
    let (held_n, refused) = (num("held"), num("refused"));
    // The device's limit (256 connections at once) bounds what the guest holds;
    // every other attempt was refused, none hung or failed otherwise.
    assert!(held_n <= 256, "{line}");
    assert_eq!(held_n + refused, 2 * SPINS, "{line}");
    assert!(
        peak < 256 + 64,
        "the VMM had {peak} descriptors open: {line}"
    );

    g.wait_for("vsock-peer: spin done")
        .unwrap_or_else(|e| fail(Some(&g), "the spinning guest letting go", e));
    g.wait_for(ECHO_READY)
        .unwrap_or_else(|e| fail(Some(&g), "vsock-echo start", e));
    let (c, _) = g
        .connect_retry(ECHO_PORT)
        .unwrap_or_else(|e| fail(Some(&g), "CONNECT after the spin", e));
    g.echo_roundtrip(&c, &pattern(64 << 10))
        .unwrap_or_else(|e| fail(Some(&g), "64 KiB echo after the spin", e));
    g.check_alive()
        .unwrap_or_else(|e| fail(Some(&g), "guest after the spin", e));
    // The guest closed its end: the VMM lets go of the host streams too.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = fds(g.pid());
        if now < 64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the VMM still has {now} descriptors open after the guest closed its connections"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{line}; VMM descriptors at the peak {peak}");
    drop(c);
    g.kill();
}
