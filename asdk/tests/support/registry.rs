//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF distribution
//! registry, v2.8) on 127.0.0.1, with its storage in a temp dir and optionally htpasswd
//! auth. The package is installed with apt-get on first use when missing (as root, else
//! with `sudo -n`); the registry is killed when the handle drops.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Installs Debian's docker-registry when missing (once per process; serialized across
/// processes with a lock file, as apt holds its own lock).
pub fn ensure_installed() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done || Path::new(REGISTRY_BIN).is_file() {
        *done = true;
        return;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("arrow-test-apt.lock"))
        .expect("open apt lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    if !Path::new(REGISTRY_BIN).is_file() {
        eprintln!("test setup: installing Debian package docker-registry with apt-get");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let run = |args: &[&str]| {
            let mut c = if root {
                Command::new(args[0])
            } else {
                let mut c = Command::new("sudo");
                c.arg("-n").arg(args[0]);
                c
            };
            c.args(&args[1..])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let install = [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "docker-registry",
        ];
        if !run(&install) {
            assert!(run(&["apt-get", "update", "-qq"]), "apt-get update failed");
            assert!(
                run(&install),
                "cannot install docker-registry with apt-get (run the tests as root or with passwordless sudo)"
            );
        }
    }
    assert!(
        Path::new(REGISTRY_BIN).is_file(),
        "{REGISTRY_BIN} missing after install"
    );
    *done = true;
}

/// A running registry.
pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Registry {
    /// Starts a registry; with `user`, only that user (password `pass`) may push or pull.
    pub fn start(user: Option<(&str, &str)>) -> Registry {
        ensure_installed();
        // Bind-then-release picks a free port; a rare clash is retried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let auth = match user {
                Some((u, p)) => {
                    let hash = bcrypt::hash(p, 5).expect("bcrypt");
                    let htpasswd = dir.path().join("htpasswd");
                    std::fs::write(&htpasswd, format!("{u}:{hash}\n")).expect("write htpasswd");
                    format!(
                        "auth:\n  htpasswd:\n    realm: arrow-test\n    path: {}\n",
                        htpasswd.display()
                    )
                }
                None => String::new(),
            };
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            let mut f = std::fs::File::create(&config).expect("config");
            write!(
                f,
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            )
            .expect("write config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Registry { child, dir, addr };
            if reg.wait_ready() {
                return reg;
            }
            eprintln!(
                "docker-registry on {} did not come up: {}",
                reg.addr,
                reg.log()
            );
        }
        panic!("docker-registry did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Where the registry keeps a blob's bytes (distribution's filesystem layout).
    pub fn blob_data(&self, digest_hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&digest_hex[..2])
            .join(digest_hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
