//! Generic-template benchmark (real guest kernel): start request → the app
//! starts, for the same app (vsock-echo) three ways, in one invocation:
//! - cold: `arrow-vmm run` spawned → APP_STARTED (the whole boot);
//! - generic: a pooled clone of the generic template (booted once with
//!   `arrow.wait_app=1`, snapshotted at KERNEL_READY) spawned ahead;
//!   `PUT /vm/start {"app": …}` → APP_STARTED. Split into the VMM's part
//!   (`start_us` in the answer: map memory, load state, offer the app) and
//!   the guest's (wait-point poll, parse, ainit mounts, exec);
//! - generic + base: the same, with the app taken from an image base (EROFS
//!   holding vsock-echo, built by shadowfs) that `PUT /vm/start
//!   {"image_base": …}` maps into the template's image slot (pmem0): the
//!   path arrowd takes; the guest part adds the overlay mounts;
//! - per-image: a pooled clone of a template of vsock-echo itself
//!   (snapshotted once it listens): `PUT /vm/start` → VM running (its app
//!   started before the snapshot).
//!
//! For generic and per-image clones, start request → first vsock echo too.
//! `ARROW_BENCH_GENERIC_RUNS` (default 10) clones of each; cold boots:
//! `ARROW_BENCH_COLD_RUNS` (default 2; ~25 s each on the slow hosts).
//! Prints a table, writes target/bench-results/generic.json.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/apps/vsock_guest.rs"]
mod vsock_guest;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vsock_guest::{api, echo_once, ECHO_PORT};

const T: Duration = Duration::from_secs(600);
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

fn json(sock: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    match api(sock, method, path, body) {
        Ok((st, b)) => (st, serde_json::from_str(&b).unwrap_or_default()),
        Err(_) => (0, serde_json::Value::Null),
    }
}

struct Vmm {
    child: Child,
    sock: PathBuf,
    vsock: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, args: &[&str], dir: &Path, tag: &str) -> Vmm {
    let sock = dir.join(format!("{tag}.api"));
    let vsock = dir.join(format!("{tag}.vsock"));
    let log = std::fs::File::create(dir.join(format!("{tag}.log"))).unwrap();
    let child = Command::new(bin)
        .args(args)
        .arg("--api-sock")
        .arg(&sock)
        .arg("--vsock-uds")
        .arg(&vsock)
        .args(["--console", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn arrow-vmm");
    Vmm { child, sock, vsock }
}

/// Polls GET /vm until `field` is set; returns it (ms) and the wall time.
fn wait_field(v: &mut Vmm, field: &str, from: Instant) -> (u64, Duration) {
    loop {
        let (st, body) = json(&v.sock, "GET", "/vm", "");
        if st == 200 {
            if let Some(ms) = body[field].as_u64() {
                return (ms, from.elapsed());
            }
        }
        if let Ok(Some(s)) = v.child.try_wait() {
            panic!("arrow-vmm exited ({s}) before {field}");
        }
        assert!(from.elapsed() < T, "no {field} within {T:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_state(v: &mut Vmm, state: &str) {
    let t = Instant::now();
    while json(&v.sock, "GET", "/vm", "").1["state"] != state {
        if let Ok(Some(s)) = v.child.try_wait() {
            panic!("arrow-vmm exited ({s}) waiting for {state}");
        }
        assert!(t.elapsed() < T, "never {state}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn echo(v: &mut Vmm, from: Instant) -> Duration {
    loop {
        if echo_once(
            &v.vsock,
            ECHO_PORT,
            b"generic bench\n",
            Duration::from_secs(30),
        )
        .is_ok()
        {
            return from.elapsed();
        }
        assert!(from.elapsed() < T, "no echo");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn snapshot(v: &mut Vmm, dir: &Path) {
    assert_eq!(json(&v.sock, "PUT", "/vm/pause", "").0, 200);
    let body = serde_json::json!({ "dir": dir }).to_string();
    let (st, b) = json(&v.sock, "PUT", "/vm/snapshot", &body);
    assert_eq!(st, 200, "{b}");
    let _ = json(&v.sock, "PUT", "/vm/shutdown", "");
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[(((s.len() - 1) as f64) * p).round() as usize]
}

/// Which clone a run starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Generic template, the app from its initramfs.
    Generic,
    /// Generic template, the app from an image base mapped into its slot.
    GenericBase,
    /// Template of the app itself.
    PerImage,
}

fn main() {
    common::require_kvm();
    let runs: usize = std::env::var("ARROW_BENCH_GENERIC_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cold_runs: usize = std::env::var("ARROW_BENCH_COLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let bin = PathBuf::from(common::vmm_bin());
    let tmp = tempfile::Builder::new()
        .prefix("arrow-generic-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let kernel = vsock_guest::kernel().unwrap_or_else(|e| panic!("kernel: {e}"));
    let initrd = vsock_guest::initrd(dir).unwrap_or_else(|e| panic!("initrd: {e}"));
    let (k, i) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    // The image base (vsock-echo at /vsock-echo) and the generic template's
    // image slot it is mapped into (zeros, 64 MiB).
    let base = dir.join("echo.erofs");
    let echo_bin = std::fs::read(dir.join("vsock-echo")).expect("vsock-echo built by initrd()");
    shadowfs::base::build(
        &[shadowfs::base::Entry::File {
            path: "vsock-echo".into(),
            mode: 0o755,
            data: echo_bin,
        }],
        &base,
    )
    .unwrap_or_else(|e| panic!("image base: {e}"));
    let slot = dir.join("slot.img");
    std::fs::File::create(&slot)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image slot");
    let slot_arg = format!("{},ro", slot.display());
    let echo_app = "arrow.app=/vsock-echo -- --port 5000";
    // `arrow-vmm run` of the kernel and initrd with `cmdline` (+ `extra` arguments).
    let boot = |cmdline: &str, extra: &[&str], tag: &str| {
        let mut args = vec![
            "run",
            "--kernel",
            k,
            "--initrd",
            i,
            "--cmdline",
            cmdline,
            "--vsock-cid",
            "3",
        ];
        args.extend_from_slice(extra);
        spawn(&bin, &args, dir, tag)
    };

    // (a) cold boots, spawn → APP_STARTED.
    let mut cold = Vec::new();
    for n in 0..cold_runs {
        let cmd = format!("{CMDLINE} {echo_app}");
        let t = Instant::now();
        let mut v = boot(&cmd, &[], &format!("cold{n}"));
        let (_, wall) = wait_field(&mut v, "app_started_ms", t);
        cold.push(wall.as_secs_f64() * 1e3);
        eprintln!("generic bench: cold boot {n}: APP_STARTED after {wall:.1?}");
    }

    // The two templates: generic (wait point) and per-image (echo listening).
    let generic = dir.join("generic");
    let cmd = format!("{CMDLINE} arrow.wait_app=1");
    let t = Instant::now();
    let mut v = boot(&cmd, &["--pmem", &slot_arg], "gtpl");
    let (_, generic_boot) = wait_field(&mut v, "kernel_ready_ms", t);
    snapshot(&mut v, &generic);
    drop(v);
    let image_tpl = dir.join("image");
    let cmd = format!("{CMDLINE} {echo_app}");
    let t = Instant::now();
    let mut v = boot(&cmd, &[], "itpl");
    let (_, image_boot) = wait_field(&mut v, "app_ready_ms", t);
    std::thread::sleep(Duration::from_secs(2));
    snapshot(&mut v, &image_tpl);
    drop(v);
    eprintln!(
        "generic bench: templates ready (generic {generic_boot:.1?}, per-image {image_boot:.1?})"
    );

    let app = serde_json::json!({"app": {"app": "/vsock-echo", "args": ["--port", "5000"], "hostname": "g"}})
        .to_string();
    let app_base = serde_json::json!({
        "app": {"app": "/vsock-echo", "args": ["--port", "5000"], "hostname": "g"},
        "image_base": base,
    })
    .to_string();
    let (mut g_req, mut g_vmm, mut g_echo) = (vec![], vec![], vec![]);
    let (mut b_req, mut b_vmm, mut b_echo) = (vec![], vec![], vec![]);
    let (mut p_req, mut p_vmm, mut p_echo) = (vec![], vec![], vec![]);
    for n in 0..runs {
        for (k, side) in [Side::Generic, Side::GenericBase, Side::PerImage]
            .into_iter()
            .enumerate()
        {
            let (tpl, tag) = match side {
                Side::Generic => (&generic, format!("g{n}")),
                Side::GenericBase => (&generic, format!("b{n}")),
                Side::PerImage => (&image_tpl, format!("p{n}")),
            };
            let cid = (100 + 3 * n + k).to_string();
            let mut v = spawn(
                &bin,
                &[
                    "restore",
                    "--from",
                    tpl.to_str().unwrap(),
                    "--clone",
                    "--pool",
                    "--vsock-cid",
                    &cid,
                ],
                dir,
                &tag,
            );
            wait_state(&mut v, "pooled");
            std::thread::sleep(Duration::from_millis(20));
            let t = Instant::now();
            let body = match side {
                Side::Generic => app.as_str(),
                Side::GenericBase => app_base.as_str(),
                Side::PerImage => "",
            };
            let (st, b) = json(&v.sock, "PUT", "/vm/start", body);
            assert_eq!(st, 200, "{b}");
            let answered = t.elapsed();
            let vmm_us = b["start_us"].as_u64().unwrap_or(0) as f64;
            let (req, vmm, echoed) = match side {
                Side::Generic => (&mut g_req, &mut g_vmm, &mut g_echo),
                Side::GenericBase => (&mut b_req, &mut b_vmm, &mut b_echo),
                Side::PerImage => (&mut p_req, &mut p_vmm, &mut p_echo),
            };
            if side == Side::PerImage {
                req.push(answered.as_secs_f64() * 1e3);
            } else {
                let (_, started) = wait_field(&mut v, "app_started_ms", t);
                req.push(started.as_secs_f64() * 1e3);
            }
            vmm.push(vmm_us / 1e3);
            echoed.push(echo(&mut v, t).as_secs_f64() * 1e3);
            let _ = json(&v.sock, "PUT", "/vm/shutdown", "");
        }
        eprintln!("generic bench: {} of {runs} clone triples", n + 1);
    }
    let guest: Vec<f64> = g_req.iter().zip(&g_vmm).map(|(r, v)| r - v).collect();
    let b_guest: Vec<f64> = b_req.iter().zip(&b_vmm).map(|(r, v)| r - v).collect();

    println!("generic template vs per-image template vs cold boot (vsock-echo, 1 vCPU / 128 MiB, real guest kernel)");
    println!(
        "{:<52} {:>10} {:>10} {:>4}",
        "metric (ms)", "p50", "p99", "n"
    );
    let mut out = serde_json::Map::new();
    for (name, v) in [
        ("cold: spawn -> APP_STARTED", &cold),
        ("generic: start request -> APP_STARTED", &g_req),
        ("generic: of which VMM (start_us)", &g_vmm),
        ("generic: of which guest (wait point -> exec)", &guest),
        ("generic: start request -> first echo", &g_echo),
        ("generic + base: start request -> APP_STARTED", &b_req),
        ("generic + base: of which VMM (start_us)", &b_vmm),
        (
            "generic + base: of which guest (wait point -> exec)",
            &b_guest,
        ),
        ("generic + base: start request -> first echo", &b_echo),
        ("per-image: start request -> VM running", &p_req),
        ("per-image: of which VMM (start_us)", &p_vmm),
        ("per-image: start request -> first echo", &p_echo),
    ] {
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        println!("{name:<52} {p50:>10.2} {p99:>10.2} {:>4}", v.len());
        out.insert(
            name.into(),
            serde_json::json!({"p50_ms": p50, "p99_ms": p99, "n": v.len(), "values": v}),
        );
    }
    println!(
        "template boots: generic to KERNEL_READY {:.1} s, per-image to APP_READY {:.1} s",
        generic_boot.as_secs_f64(),
        image_boot.as_secs_f64()
    );
    out.insert(
        "generic_template_boot_s".into(),
        serde_json::json!(generic_boot.as_secs_f64()),
    );
    out.insert(
        "image_template_boot_s".into(),
        serde_json::json!(image_boot.as_secs_f64()),
    );
    let dest = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&dest).unwrap();
    let path = dest.join("generic.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("JSON: {}", path.display());
}
