//! The sample apps build static with asdk, and behave as documented when run on the host
//! (vsock apps in their `--tcp` test mode: hosts here have no vsock transport to connect to).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::build_app;

/// Builds `app` with asdk and writes the `/app` of its initrd to an executable file.
fn packaged_app(dir: &Path, app: &str) -> (asdk::Image, PathBuf) {
    let store_dir = dir.join("store");
    let digest = build_app(&store_dir, app);
    let store = asdk::Store::open(&store_dir).unwrap();
    let image = store.image(&digest).unwrap();
    let entries = asdk::cpio::read(&store.initrd_bytes(&image).unwrap()).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "arrow",
            "dev",
            "proc",
            "sys",
            "tmp",
            "app",
            "arrow/spec.json"
        ]
    );
    let bin = &entries[5];
    assert_eq!(bin.mode, 0o100755);
    // Static, small: cheap for the guest kernel to unpack.
    asdk::elf::check_bytes(&bin.data, Path::new(app)).unwrap();
    assert!(
        bin.data.len() < 200 * 1024,
        "{app} is {} bytes",
        bin.data.len()
    );
    let exe = dir.join(app);
    std::fs::write(&exe, &bin.data).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (image, exe)
}

/// A server child that is killed when the test ends, whatever happens.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a vsock app in TCP mode on an ephemeral port; returns it and the port it prints.
fn start_tcp(exe: &Path) -> (Server, u16) {
    let mut child = Command::new(exe)
        .args(["--tcp", "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("listening on tcp port ")
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .parse()
        .unwrap();
    (Server(child), port)
}

#[test]
fn hello_prints_argv_env_and_exits_with_code() {
    let dir = tempfile::tempdir().unwrap();
    let (image, exe) = packaged_app(dir.path(), "hello");
    assert_eq!(image.spec.env["GREETING"], "hello");

    let out = Command::new(&exe)
        .args(["--exit", "7", "two words"])
        .env("GREETING", "hi")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("argv[2]=7\n") && text.contains("argv[3]=two words\n"),
        "{text}"
    );
    assert!(text.contains("env GREETING=hi\n"), "{text}");

    let out = Command::new(&exe).env("EXIT_CODE", "3").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let out = Command::new(&exe).env_clear().output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(&exe).args(["--exit", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn vsock_echo_echoes_until_eof() {
    let dir = tempfile::tempdir().unwrap();
    let (image, exe) = packaged_app(dir.path(), "vsock-echo");
    assert_eq!(image.spec.ports, vec![5000]);
    assert_eq!(image.spec.readiness, asdk::Readiness::Notify);
    let (_server, port) = start_tcp(&exe);
    // Two connections in a row, each served fully.
    for round in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + round) as u8).collect();
        let writer = {
            let mut s = s.try_clone().unwrap();
            let payload = payload.clone();
            std::thread::spawn(move || {
                s.write_all(&payload).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut echoed = Vec::new();
        s.read_to_end(&mut echoed).unwrap();
        writer.join().unwrap();
        assert_eq!(echoed, payload);
    }
}

#[test]
fn vsock_http_answers_get_with_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let (image, exe) = packaged_app(dir.path(), "vsock-http");
    assert_eq!(image.spec.ports, vec![8080]);
    let (_server, port) = start_tcp(&exe);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Two pipelined requests on one keep-alive connection; the second closes it.
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/5 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert_eq!(
        resp,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\nhello from Arrow\n\
         HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\naaaaa"
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"DELETE / HTTP/1.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 405 "), "{resp}");
}

#[test]
fn vsock_apps_reject_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (_, exe) = packaged_app(dir.path(), "vsock-echo");
    let out = Command::new(&exe)
        .args(["--port", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --port"));
}
