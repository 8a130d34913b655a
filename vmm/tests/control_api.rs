//! The control API's hardening, with the test guest on the real /dev/kvm:
//! socket mode, connection limits and timeouts, and the snapshot directory.

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn boot(dir: &Path, extra: &[&str]) -> (std::process::Child, std::path::PathBuf) {
    let sock = dir.join("api.sock");
    let elf = guest_elf().to_str().unwrap().to_string();
    let mut args = vec![
        "run",
        "--kernel",
        &elf,
        "--cmdline",
        "tick=1000",
        "--console",
        "none",
        "--paused",
        "--api-sock",
        s(&sock),
    ];
    args.extend_from_slice(extra);
    let child = spawn_vmm(&args);
    wait_for_path(&sock, T);
    (child, sock)
}

fn shut_down(child: std::process::Child, sock: &Path) {
    assert_eq!(api(sock, "PUT", "/vm/shutdown", None).0, 200);
    let o = wait_with_timeout(child, T);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn silent_clients_neither_lock_the_api_out_nor_stay_forever() {
    let dir = tempfile::tempdir().unwrap();
    let (child, sock) = boot(dir.path(), &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    // More silent clients than the server's connection limit, one of them
    // half-way through a request (slowloris).
    let mut silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    silent[19].write_all(b"GET /vm HTTP/1.1\r\nHost:").unwrap();
    // Give the loop a moment to accept them all.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (st, v) = api(&sock, "GET", "/vm", None);
    assert_eq!(st, 200, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a new client was served only after {:?}",
        t.elapsed()
    );

    // Every silent connection is closed by the server within its timeout.
    let last = silent.pop().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = (&last).read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a silent client gets EOF, not a response");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "closed after {:?}",
        t.elapsed()
    );

    // A client that sends requests but never reads does not block the loop.
    let mut hog = UnixStream::connect(&sock).unwrap();
    hog.write_all(b"GET /vm HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(api(&sock, "GET", "/vm", None).0, 200);
    drop(hog);
    shut_down(child, &sock);
}

#[test]
fn snapshots_only_go_under_the_snapshot_dir() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("templates");
    std::fs::create_dir(&snaps).unwrap();
    let (child, sock) = boot(dir.path(), &["--snapshot-dir", s(&snaps)]);
    let outside = dir.path().join("elsewhere");
    let (st, v) = api(
        &sock,
        "PUT",
        "/vm/snapshot",
        Some(&format!(r#"{{"dir":"{}"}}"#, s(&outside))),
    );
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("--snapshot-dir"),
        "{v}"
    );
    assert!(!outside.exists());
    let (st, v) = api(&sock, "PUT", "/vm/snapshot", Some(r#"{"dir":"../x"}"#));
    assert_eq!(st, 403, "{v}");
    let (st, v) = api(&sock, "PUT", "/vm/snapshot", Some(r#"{"dir":"t1"}"#));
    assert_eq!(st, 200, "{v}");
    assert!(snaps.join("t1/state.json").is_file());
    shut_down(child, &sock);
}
