//! Shared helpers for tests that boot the freestanding test guest under the
//! real /dev/kvm with the real `arrow-vmm` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Every guest run is bounded: a hung VMM must fail the test, not CI.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Fails loudly when KVM is unusable: these tests exist to run guests for real.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test boots a real guest and needs /dev/kvm, which cannot be opened: {e}");
    }
}

/// Builds the test guest (guests/*.c, *.S) with the system gcc, once.
pub fn guest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("test-guest-{}.elf", std::process::id()));
        arrow_e2e::build_test_guest(&out);
        out
    })
}

/// The `arrow-vmm` under test: `$ARROW_VMM_BIN` if set (e.g. the static
/// release build `make bench` measures), else cargo's build of this crate.
pub fn vmm_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("ARROW_VMM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_arrow-vmm").into())
    })
}

/// Runs `arrow-vmm` with `args`, killing it after `GUEST_TIMEOUT`.
pub fn run_vmm(args: &[&str]) -> Output {
    require_kvm();
    let child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arrow-vmm");
    wait_with_timeout(child, GUEST_TIMEOUT)
}

/// Waits for `child`; kills it and panics when it outlives `timeout`.
pub fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> Output {
    let start = Instant::now();
    // Drain the pipes on threads so a chatty guest cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            std::io::Read::read_to_end(o, &mut v).ok();
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            std::io::Read::read_to_end(e, &mut v).ok();
        }
        v
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait arrow-vmm") {
            return Output {
                status,
                stdout: out_t.join().unwrap(),
                stderr: err_t.join().unwrap(),
            };
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("arrow-vmm did not stop within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Boots the test guest with a scenario on its command line.
pub fn run_guest(scenario: &str, extra: &[&str]) -> Output {
    let elf = guest_elf().to_str().expect("utf-8 path").to_string();
    let mut args = vec!["run", "--kernel", &elf, "--cmdline", scenario];
    args.extend_from_slice(extra);
    run_vmm(&args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn is_nested_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Sends one HTTP request to a control socket; returns (status, JSON body).
pub fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = resp
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// Waits until `path` exists (a socket appearing) or panics.
pub fn wait_for_path(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the file at `path` contains `needle`; returns its content.
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "'{needle}' did not appear in {} within {timeout:?}; it has:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `arrow-vmm` in the background (console to a file).
pub fn spawn_vmm(args: &[&str]) -> std::process::Child {
    require_kvm();
    Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arrow-vmm")
}
