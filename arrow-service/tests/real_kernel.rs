//! End to end with the real guest kernel: `actl run -p HOST:5000 vsock-echo` and bytes echoed
//! through arrowd's port proxy → arrow-vmm's vsock → the app. A real boot takes ~25 s on
//! nested-PVM hosts, so this runs only when ARROW_TEST_KERNEL names a vmlinux
//! (`ARROW_TEST_KERNEL=$(bash guest-kernel/build.sh | tail -1) cargo test -p arrow-service`).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon};

#[test]
fn vsock_echo_through_an_exported_port() {
    let Some(kernel) = std::env::var_os("ARROW_TEST_KERNEL") else {
        eprintln!("skipped: set ARROW_TEST_KERNEL to a guest vmlinux to run this test");
        return;
    };
    let kernel = kernel.to_string_lossy().into_owned();
    let d = Daemon::with_args(&[
        "--kernel",
        &kernel,
        "--kernel-cmdline",
        "console=ttyS0 reboot=k panic=-1",
    ]);
    let src = common::repo_root().join("examples/apps/vsock-echo");
    let store = asdk::Store::open(d.store_dir()).unwrap();
    asdk::build::build_into(&store, &src.join("vsock-echo.c"), &Default::default(), &[]).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("{port}:5000");
    let out = d.actl(&["run", "-d", "-p", &publish, "vsock-echo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "no echo; console:\n{}",
            stdout(&d.actl(&["logs", &id]))
        );
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if c.write_all(b"ping\n").is_ok() {
                let mut buf = [0u8; 5];
                if c.read_exact(&mut buf).is_ok() {
                    assert_eq!(&buf, b"ping\n");
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(d.actl(&["rm", "-f", &id]).status.success());
}
