//! Helpers for Arrow's end-to-end tests: build the guest kernel (cached) and
//! `arrow-vmm`, compile a static test app, package it as an image initrd, and
//! boot it under a timeout, one guest at a time.
//!
//! Environment:
//! - `ARROW_KERNEL`: use this vmlinux instead of running `guest-kernel/build.sh`;
//! - `ARROW_VMM`: use this arrow-vmm binary instead of `cargo build -p arrow-vmm`;
//! - `ARROW_E2E_TIMEOUT`: seconds per boot (default 180).

pub mod vfs;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Guests run one at a time: on nested-PVM hosts two guests at once make
/// each boot 2–3× slower, and CPU time is shared with everything else.
pub fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/dev/kvm` is usable; the tests are skipped (with a message) otherwise.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Path of the guest kernel: `guest-kernel/build.sh` (cached after the first
/// build) prints it on its last stdout line.
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("ARROW_KERNEL") {
                return PathBuf::from(p);
            }
            let t = Instant::now();
            let out = Command::new("bash")
                .arg(workspace_root().join("guest-kernel/build.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run guest-kernel/build.sh");
            assert!(
                out.status.success(),
                "guest-kernel/build.sh failed: {}",
                out.status
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("build.sh printed a path")
                    .trim(),
            );
            assert!(
                path.is_file(),
                "build.sh printed {path:?}, which is not a file"
            );
            eprintln!(
                "e2e: kernel {} ({:.1} s)",
                path.display(),
                t.elapsed().as_secs_f64()
            );
            path
        })
        .clone()
}

/// Path of `arrow-vmm`, built by cargo in this workspace's target directory.
pub fn arrow_vmm() -> PathBuf {
    static VMM: OnceLock<PathBuf> = OnceLock::new();
    VMM.get_or_init(|| {
        if let Some(p) = std::env::var_os("ARROW_VMM") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--quiet", "-p", "arrow-vmm", "--bin", "arrow-vmm"])
            .status()
            .expect("run cargo build -p arrow-vmm");
        assert!(status.success(), "cargo build -p arrow-vmm failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug/arrow-vmm")
    })
    .clone()
}

/// Compiles `apps/<name>.c` into a static executable: `musl-gcc` when
/// installed (Debian `musl-tools`), else the system `cc -static` (glibc).
pub fn static_c_app(name: &str, out_dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps")
        .join(format!("{name}.c"));
    let out = out_dir.join(name);
    let compilers: &[&str] = &["musl-gcc", "cc"];
    for cc in compilers {
        let status = Command::new(cc)
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .stderr(Stdio::inherit())
            .status();
        match status {
            Ok(s) if s.success() => return out,
            Ok(s) => panic!("{cc} failed to compile {}: {s}", src.display()),
            Err(_) => continue, // not installed: try the next one
        }
    }
    panic!("no C compiler (musl-gcc or cc) to build {}", src.display());
}

/// An image initrd: an uncompressed newc cpio with the app at `/app` (mode
/// `mode`) and a minimal `/arrow/spec.json`, as asdk lays images out.
pub fn initrd(app: &[u8], mode: u32, out: &Path) -> PathBuf {
    let mut w = asdk::cpio::Writer::new();
    w.file("app", mode, app).expect("app under 4 GiB");
    w.dir("arrow", 0o755);
    w.file("arrow/spec.json", 0o644, br#"{"argv":["/app"]}"#)
        .expect("small spec");
    std::fs::write(out, w.finish()).expect("write initrd");
    out.to_path_buf()
}

/// What one boot produced.
#[derive(Debug)]
pub struct Run {
    /// `arrow-vmm`'s exit code (`None`: killed by the timeout).
    pub exit_code: Option<i32>,
    /// The guest console (arrow-vmm's stdout).
    pub console: String,
    /// arrow-vmm's own messages.
    pub stderr: String,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// APP_STARTED as arrow-vmm recorded it (from `--report`).
    pub app_started: Option<Duration>,
    /// Wall time until the first console line containing the marker.
    pub first_marker_line: Option<Duration>,
}

impl Run {
    pub fn console_has(&self, needle: &str) -> bool {
        self.console.contains(needle)
    }
}

/// Boots `kernel` with `initrd` and `cmdline` under a timeout; `marker` is a
/// console string whose first appearance is timed.
pub fn boot(initrd: &Path, cmdline: &str, marker: &str) -> Run {
    boot_with_vcpus(initrd, cmdline, marker, 1)
}

/// `boot` with `vcpus` vCPUs.
pub fn boot_with_vcpus(initrd: &Path, cmdline: &str, marker: &str, vcpus: u8) -> Run {
    boot_with_args(initrd, cmdline, marker, vcpus, &[])
}

/// `boot_with_vcpus` with extra `arrow-vmm run` arguments (e.g. `--core-dir DIR`).
pub fn boot_with_args(
    initrd: &Path,
    cmdline: &str,
    marker: &str,
    vcpus: u8,
    extra: &[&std::ffi::OsStr],
) -> Run {
    let mut args = vec![
        std::ffi::OsString::from("--initrd"),
        initrd.as_os_str().to_owned(),
    ];
    args.extend(extra.iter().map(|a| a.to_os_string()));
    boot_vmm(&args, cmdline, marker, vcpus)
}

/// Boots without an initrd, with these `--pmem PATH[,ro|rw]` devices (the
/// shadowfs path: the image base first, then a persistent writable layer).
pub fn boot_pmem(pmem: &[String], cmdline: &str, marker: &str) -> Run {
    let args: Vec<std::ffi::OsString> = pmem
        .iter()
        .flat_map(|p| ["--pmem".into(), p.into()])
        .collect();
    boot_vmm(&args, cmdline, marker, 1)
}

/// Boots the kernel with `args` added to `arrow-vmm run`.
pub fn boot_vmm(args: &[std::ffi::OsString], cmdline: &str, marker: &str, vcpus: u8) -> Run {
    let vcpus = vcpus.to_string();
    let timeout = std::env::var("ARROW_E2E_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(180));
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let start = Instant::now();
    let mut child = Command::new(arrow_vmm())
        .args(["run", "--kernel"])
        .arg(kernel())
        .args(args)
        .args(["--cmdline", cmdline, "--memory", "128M", "--vcpus", &vcpus])
        .args(["--console", "stdout", "--log-level", "info", "--report"])
        .arg(&report)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn arrow-vmm");

    let stdout = child.stdout.take().expect("stdout");
    let marker = marker.to_string();
    let console = std::thread::spawn(move || {
        let mut text = String::new();
        let mut first = None;
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let l = String::from_utf8_lossy(&line);
            if first.is_none() && l.contains(&marker) {
                first = Some(start.elapsed());
            }
            text.push_str(&l);
            line.clear();
        }
        (text, first)
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    let exit_code = loop {
        match child.try_wait().expect("wait arrow-vmm") {
            Some(status) => break status.code(),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let wall = start.elapsed();
    let (console, first_marker_line) = console.join().expect("console reader");
    let stderr = stderr.join().expect("stderr reader");
    let app_started = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("app_started_us").and_then(|u| u.as_u64()))
        .map(Duration::from_micros);
    Run {
        exit_code,
        console,
        stderr,
        wall,
        app_started,
        first_marker_line,
    }
}

/// The kernel command line the tests use: console and reset as arrow-vmm's
/// default; arrow-vmm adds the nested-PVM flags itself on such hosts.
pub fn cmdline(extra: &str) -> String {
    format!("console=ttyS0 reboot=k panic=-1 {extra}")
}

/// A readable failure message with the tail of the console and stderr.
pub fn explain(run: &Run) -> String {
    let tail = |s: &str, n: usize| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    format!(
        "exit code {:?} after {:.1} s\n--- console (tail) ---\n{}\n--- arrow-vmm stderr (tail) ---\n{}",
        run.exit_code,
        run.wall.as_secs_f64(),
        tail(&run.console, 40),
        tail(&run.stderr, 20)
    )
}

/// Builds the freestanding test guest (vmm/tests/guests: a tiny ELF that
/// arrow-vmm boots in milliseconds and that acts on words on its command
/// line) with the system gcc into `out`. Runs at CPL0, which nested-PVM hosts
/// emulate: plain integer code only (ENVIRONMENT.md's flags).
pub fn build_test_guest(out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/tests/guests");
    let status = Command::new("gcc")
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-mgeneral-regs-only",
            "-mno-red-zone",
            "-O1",
            "-fno-pic",
            "-no-pie",
            "-static",
            "-fno-stack-protector",
            "-fcf-protection=none",
            "-fno-asynchronous-unwind-tables",
            "-fno-builtin",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
            "-T",
        ])
        .arg(src.join("guest.ld"))
        .arg("-o")
        .arg(out)
        .arg(src.join("start.S"))
        .arg(src.join("guest.c"))
        .status()
        .expect("gcc must be installed to build the test guest");
    assert!(status.success(), "building the test guest with gcc failed");
}

/// One request to arrow-vmm's control API (HTTP/1.1 over its Unix socket):
/// (status, body); (0, "") when the socket does not answer.
pub fn control_api(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return (0, String::new());
    };
    let sent = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: arrow\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if sent.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The content of the sample packed volumes ([`sample_volume_pack`]):
/// `0/app.conf` (first line) and the single file `1`.
pub const SAMPLE_CONF: &str = "greeting=from-the-host";
pub const SAMPLE_TOKEN: &str = "token-0123456789";

/// A packed volume image as arrowd packs read-only volumes: a directory
/// tree with one top-level entry per volume — `0/` (a directory holding
/// `app.conf` and `sub/nested`) and `1` (a single file) — made into an EROFS
/// image with mkfs.erofs (installed by the shadowfs crate on first use).
pub fn sample_volume_pack(dir: &Path) -> PathBuf {
    let tree = dir.join("pack");
    std::fs::create_dir_all(tree.join("0/sub")).expect("mkdir pack/0/sub");
    std::fs::write(tree.join("0/app.conf"), format!("{SAMPLE_CONF}\n")).expect("write app.conf");
    std::fs::write(tree.join("0/sub/nested"), "nested\n").expect("write nested");
    std::fs::write(tree.join("1"), format!("{SAMPLE_TOKEN}\n")).expect("write the token");
    let mkfs = shadowfs::tools::find_or_install(shadowfs::tools::MKFS_EROFS)
        .expect("mkfs.erofs (erofs-utils)");
    let out = dir.join("volumes.erofs");
    shadowfs::tools::run(
        Command::new(mkfs)
            .args(["--quiet", "-T0", "--all-root", "-x-1"])
            .arg(&out)
            .arg(&tree),
        "packing the volumes",
    )
    .expect("mkfs.erofs");
    out
}
