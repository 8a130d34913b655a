//! End to end with the real guest kernel: ONE boot, as a template of vsock-echo (snapshot at
//! APP_READY: the app listens on vsock port 5000), then two clones of it — one with
//! `--template`, taken from the warm pool, one that matches the template by image and
//! settings — each with its own
//! exported port; bytes are echoed through arrowd's port proxy → each clone's own vsock
//! socket → the restored app. The boot takes ~25 s on nested-PVM hosts. The kernel is
//! ARROW_TEST_KERNEL, or the cached build of guest-kernel/build.sh (built on first use).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon};

/// Echoes a line through the exported port, retrying while the clone's guest settles
/// (it handles the vsock transport reset within seconds of the restore).
fn echo(d: &Daemon, id: &str, port: u16) -> Duration {
    let start = Instant::now();
    let line = format!("ping {id}\n");
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no echo from {id}; console:\n{}",
            stdout(&d.actl(&["logs", id]))
        );
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            if c.write_all(line.as_bytes()).is_ok() {
                let mut buf = vec![0u8; line.len()];
                if c.read_exact(&mut buf).is_ok() {
                    assert_eq!(buf, line.as_bytes());
                    return start.elapsed();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn vsock_echo_through_exported_ports_of_clones() {
    let d = Daemon::with_real_kernel(&["--pool-size", "1"]);
    let src = common::repo_root().join("examples/apps/vsock-echo");
    let store = asdk::Store::open(d.store_dir()).unwrap();
    asdk::build::build_into(&store, &src.join("vsock-echo.c"), &Default::default(), &[]).unwrap();

    let t0 = Instant::now();
    let out = d.actl(&["template", "create", "--name", "echo", "vsock-echo"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let t = d.get("/templates/echo").unwrap();
    assert_eq!(t["state"], "ready", "{t}");
    assert_eq!(
        t["spec"]["snapshot_at"], "ready",
        "the image declares port 5000"
    );
    eprintln!(
        "template: boot → snapshot {} ms (request {} ms), disk {}",
        t["boot_to_snapshot_ms"],
        t0.elapsed().as_millis(),
        t["disk"]
    );

    // The first clone comes from the warm pool (one pooled arrow-vmm).
    let start = Instant::now();
    while d.get("/templates/echo").unwrap()["pool"]["ready"] != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            d.get("/templates/echo").unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (p1, p2) = (common::free_port(), common::free_port());
    let run = |args: &[&str]| {
        let out = d.actl(args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let a = run(&[
        "run",
        "-d",
        "--template",
        "echo",
        "-p",
        &format!("{p1}:5000"),
    ]);
    let b = run(&["run", "-d", "-p", &format!("{p2}:5000"), "vsock-echo"]);
    assert_eq!(
        d.get(&format!("/instances/{a}")).unwrap()["clone"]["pooled"],
        true
    );
    for (id, port) in [(&a, p1), (&b, p2)] {
        let inst = d.get(&format!("/instances/{id}")).unwrap();
        assert_eq!(inst["state"], "running", "{inst}");
        assert_eq!(inst["clone"]["template"], "echo", "{inst}");
        let first = echo(&d, id, port);
        eprintln!(
            "clone {id}: pooled {}, start {} µs (arrowd), first echo after {} ms",
            inst["clone"]["pooled"],
            inst["clone"]["start_us"],
            first.as_millis()
        );
    }
    let t = d.get("/templates/echo").unwrap();
    assert_eq!(t["clones"].as_array().unwrap().len(), 2, "{t}");
    eprintln!("sharing with 2 clones: {}", t["sharing"]);
    for id in [&a, &b] {
        assert!(d.actl(&["rm", "-f", id]).status.success());
    }
    assert!(d.actl(&["template", "rm", "echo"]).status.success());
}
