//! `cargo bench -p arrow-e2e --bench shadowfs`: the same app run by N
//! instances together (default 20, `SHADOWFS_BENCH_N`), from its shadowfs base
//! (virtio-pmem + DAX, tmpfs layer) and from its initrd, real guest kernel.
//! They boot one after another (each waits for the previous one's
//! BENCH-READY): 20 guest kernels booting at once on a 2-core nested host
//! starve, and some never leave the emulated timer interrupt path.
//!
//! The app (tests/apps/bench-big-app.c) carries 8 MiB of read-only data that
//! it reads page by page, then idles. Measured per path, once every instance
//! printed BENCH-READY:
//! - app pages on the host: the PSS of the base file's mappings summed over
//!   the VMMs (pmem), against the initrd's size × N (each guest holds the
//!   initrd and its unpacked copy in its own RAM);
//! - private memory per instance (Private_Clean + Private_Dirty of the VMM
//!   process: guest RAM it touched, plus the VMM's own);
//! - boot → APP_STARTED (`app_started_ms` in arrow-vmm's `GET /vm`).
//!
//! Prints a table, writes target/bench-results/shadowfs.json.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_e2e::{arrow_vmm, cmdline, control_api, initrd, kernel, static_c_app};
use shadowfs::base::{self, Entry};

const READY: &str = "BENCH-READY";

struct Instance {
    child: Child,
    console: PathBuf,
    api: PathBuf,
}

fn spawn(dir: &Path, i: usize, boot: &[String], params: &str) -> Instance {
    let console = dir.join(format!("console-{i}.log"));
    let api = dir.join(format!("api-{i}.sock"));
    let child = Command::new(arrow_vmm())
        .arg("run")
        .arg("--kernel")
        .arg(kernel())
        .args(boot)
        .args(["--cmdline", &cmdline(params), "--memory", "128M"])
        .arg("--console")
        .arg(&console)
        .arg("--api-sock")
        .arg(&api)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn arrow-vmm");
    Instance {
        child,
        console,
        api,
    }
}

/// kB values of `field` summed over the mappings of `pid` that `pick` accepts
/// (by their header line).
fn smaps_sum(pid: u32, field: &str, pick: impl Fn(&str) -> bool) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut take = false;
    let mut sum = 0;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            take = pick(line);
        } else if take && first == field {
            sum += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    sum
}

struct PathResult {
    name: &'static str,
    ready: usize,
    app_pages_kib: u64,
    private_kib_per_instance: f64,
    app_started_s: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn run_path(
    name: &'static str,
    tag: &str,
    dir: &Path,
    n: usize,
    boot: &[String],
    params: &str,
    mapped_file: Option<&Path>,
    initrd_kib: u64,
) -> PathResult {
    let dir = dir.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let has_ready = |i: &Instance| {
        std::fs::read_to_string(&i.console)
            .unwrap_or_default()
            .contains(READY)
    };
    let mut instances: Vec<Instance> = Vec::new();
    let mut app_started_s = Vec::new();
    for n_i in 0..n {
        let t = Instant::now();
        let mut inst = spawn(&dir, n_i, boot, params);
        while !has_ready(&inst)
            && inst.child.try_wait().ok().flatten().is_none()
            && t.elapsed() < Duration::from_secs(180)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (_, body) = control_api(&inst.api, "GET", "/vm", "");
        if let Some(ms) = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["app_started_ms"].as_u64())
        {
            app_started_s.push(ms as f64 / 1e3);
        }
        eprintln!(
            "shadowfs bench: {name}: instance {} of {n} after {:.1?}",
            n_i + 1,
            t.elapsed()
        );
        instances.push(inst);
    }
    let ready = instances.iter().filter(|i| has_ready(i)).count();
    let file = mapped_file.map(|p| p.display().to_string());
    let mut app_pages = 0;
    let mut private = 0;
    for i in &instances {
        let pid = i.child.id();
        if let Some(f) = &file {
            app_pages += smaps_sum(pid, "Pss:", |h| h.ends_with(f.as_str()));
        }
        private +=
            smaps_sum(pid, "Private_Clean:", |_| true) + smaps_sum(pid, "Private_Dirty:", |_| true);
    }
    if file.is_none() {
        // Each guest holds the initrd and the app unpacked from it.
        app_pages = 2 * initrd_kib * n as u64;
    }
    for mut i in instances {
        let _ = i.child.kill();
        let _ = i.child.wait();
    }
    app_started_s.sort_by(|a, b| a.total_cmp(b));
    PathResult {
        name,
        ready,
        app_pages_kib: app_pages,
        private_kib_per_instance: private as f64 / n as f64,
        app_started_s,
    }
}

fn main() {
    let n: usize = std::env::var("SHADOWFS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let app = std::fs::read(static_c_app("bench-big-app", dir.path())).unwrap();
    let base_file = dir.path().join("base.erofs");
    base::build(
        &[Entry::File {
            path: "app".into(),
            mode: 0o755,
            data: app.clone(),
        }],
        &base_file,
    )
    .unwrap();
    let rd = initrd(&app, 0o755, &dir.path().join("app.cpio"));
    let initrd_kib = std::fs::metadata(&rd).unwrap().len() / 1024;
    eprintln!(
        "shadowfs bench: {n} instances per path, app {} KiB",
        app.len() / 1024
    );

    let pmem = run_path(
        "pmem base (DAX) + tmpfs layer",
        "pmem",
        dir.path(),
        n,
        &["--pmem".into(), format!("{},ro", base_file.display())],
        "arrow.base=/dev/pmem0",
        Some(&base_file),
        initrd_kib,
    );
    let rdp = run_path(
        "initrd",
        "initrd",
        dir.path(),
        n,
        &["--initrd".into(), rd.display().to_string()],
        "",
        None,
        initrd_kib,
    );

    let med = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "{:<32} {:>6} {:>16} {:>18} {:>16}",
        "path", "ready", "app pages KiB", "private KiB/inst", "boot→APP_STARTED p50"
    );
    for r in [&pmem, &rdp] {
        println!(
            "{:<32} {:>3}/{n:<2} {:>16} {:>18.0} {:>14.1} s",
            r.name,
            r.ready,
            r.app_pages_kib,
            r.private_kib_per_instance,
            med(&r.app_started_s)
        );
    }
    let paths: Vec<serde_json::Value> = [&pmem, &rdp]
        .iter()
        .map(|r| {
            serde_json::json!({
                "path": r.name,
                "ready": r.ready,
                "app_pages_kib": r.app_pages_kib,
                "private_kib_per_instance": r.private_kib_per_instance,
                "app_started_s": r.app_started_s,
            })
        })
        .collect();
    let json = serde_json::json!({
        "instances": n,
        "app_kib": app.len() / 1024,
        "paths": paths,
        "app_pages_ratio_initrd_over_pmem": rdp.app_pages_kib as f64 / pmem.app_pages_kib.max(1) as f64,
        "private_ratio_initrd_over_pmem": rdp.private_kib_per_instance / pmem.private_kib_per_instance,
    });
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("shadowfs.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    println!("{json}");
}
