//! End to end with the real guest kernel: `actl run -p HOST:5000 vsock-echo` and bytes echoed
//! through arrowd's port proxy → arrow-vmm's vsock → the app. One real boot (~25 s on
//! nested-PVM hosts). The kernel is ARROW_TEST_KERNEL, or the cached build of
//! guest-kernel/build.sh (built on first use).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon};

#[test]
fn vsock_echo_through_an_exported_port() {
    let kernel = std::env::var_os("ARROW_TEST_KERNEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(arrow_e2e::kernel)
        .to_string_lossy()
        .into_owned();
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
