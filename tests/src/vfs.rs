//! Helpers shared by the e2e tests (tests/vhost_user_fs.rs, generic_template.rs)
//! and the bench (benches/vhost_user_fs.rs): a real virtiofsd, and a
//! generic template with volume slots.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{arrow_vmm, cmdline, control_api, kernel};

/// A running virtiofsd, killed on drop.
pub struct Virtiofsd(pub Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts virtiofsd (installed by the project on first use) serving
/// `shared` on `socket`, as arrowd does; returns once it listens.
pub fn virtiofsd(shared: &Path, socket: &Path) -> Virtiofsd {
    let bin = shadowfs::tools::find_or_install_virtiofsd().expect("virtiofsd");
    let child = Command::new(bin)
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        .args([
            "--sandbox",
            "namespace",
            "--cache",
            "never",
            "--log-level",
            "error",
        ])
        .spawn()
        .expect("start virtiofsd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Virtiofsd(child)
}

/// Waits for `child` under a 240 s timeout; returns its output.
pub fn finish(mut child: Child) -> Output {
    let t = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Exit code, console and stderr of a run, for failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- console ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Boots a 128 MiB generic template from `initrd` with `slots`
/// vhost-user-fs slots (vol0.., no backend) and snapshots it at the app
/// wait point into `dir/template`.
pub fn template_with_slots(dir: &Path, initrd: &Path, slots: u8) -> PathBuf {
    let args = ["--fs-slots".into(), slots.to_string().into()];
    generic_template(dir, initrd, "", &args).0
}

/// Boots a 128 MiB generic template (`arrow.wait_app=1`, then `cmdline_extra`)
/// from `initrd` with `extra` arrow-vmm arguments (slots), waits for
/// KERNEL_READY (240 s), snapshots it into `dir/template` and stops it.
/// Returns the snapshot and `GET /vm` at the wait point; the console is
/// `dir/tpl.log`.
pub fn generic_template(
    dir: &Path,
    initrd: &Path,
    cmdline_extra: &str,
    extra: &[OsString],
) -> (PathBuf, serde_json::Value) {
    let sock = dir.join("tpl.sock");
    let tpl = dir.join("template");
    let console = dir.join("tpl.log");
    let log = || std::fs::read_to_string(&console).unwrap_or_default();
    let mut child = Command::new(arrow_vmm())
        .args(["run", "--kernel"])
        .arg(kernel())
        .arg("--initrd")
        .arg(initrd)
        .arg("--cmdline")
        .arg(cmdline(
            format!("arrow.wait_app=1 {cmdline_extra}").trim_end(),
        ))
        .args(["--memory", "128M"])
        .args(extra)
        .arg("--console")
        .arg(&console)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn template");
    let t = Instant::now();
    let vm = loop {
        let (st, v) = control_api(&sock, "GET", "/vm", "");
        let v: serde_json::Value = serde_json::from_str(&v).unwrap_or_default();
        if st == 200 && v["kernel_ready_ms"].is_u64() {
            break v;
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!("the template exited ({s}) before KERNEL_READY\n{}", log());
        }
        if t.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            panic!("no KERNEL_READY within 240 s\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("generic template: KERNEL_READY after {:.1?}", t.elapsed());
    let (st, v) = control_api(&sock, "PUT", "/vm/pause", "");
    assert_eq!(st, 200, "{v}");
    let body = serde_json::json!({ "dir": tpl }).to_string();
    let (st, v) = control_api(&sock, "PUT", "/vm/snapshot", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(control_api(&sock, "PUT", "/vm/shutdown", "").0, 200);
    let o = finish(child);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    (tpl, vm)
}

/// `(copied KiB, ms)` from arrow-vmm's "converted to shared memory" log
/// line (run with `--log-level info` and `NO_COLOR=1`).
pub fn conversion_cost(stderr: &str) -> Option<(u64, f64)> {
    let line = stderr
        .lines()
        .find(|l| l.contains("converted to shared memory"))?;
    // Without colour codes (in case the log has them).
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    let line = plain;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    Some((
        field("copied_kib=")?.parse().ok()?,
        field("ms=")?.parse().ok()?,
    ))
}
