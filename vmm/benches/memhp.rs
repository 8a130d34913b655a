//! `cargo bench -p arrow-vmm --bench memhp`: memory hotplug against the real
//! guest kernel running memhp-app (tests/apps), one boot per run:
//! - plug 1 GiB: the host's request → the device has plugged it all (its
//!   plugged size, as the VMM's API shows it), and → the app sees it
//!   online (its `sysinfo` total grew; console line);
//! - the app writes `ARROW_BENCH_TOUCH_MIB` (default 4) MiB;
//! - unplug all: request 0 → plugged size 0, and the resident memory given
//!   back to the host (the VMM's RSS, and for arrow-vmm its hotplug
//!   region's as `GET /vm/memory` reports it).
//!
//! With `FIRECRACKER_BIN` set (a Firecracker with virtio-mem, ≥ v1.14,
//! built from source), the same scenario runs in the same invocation under
//! Firecracker (`PATCH /hotplug/memory`, `GET` for `plugged_size_mib`):
//! same kernel, initramfs, boot memory, region size and 2 MiB blocks,
//! runs alternating arrow-vmm / Firecracker. Without it the table says why
//! the comparison was skipped.
//!
//! Prints a table (medians over the runs, arrow/fc ratio) and writes
//! `target/bench-results/memhp.json` (every run's figures).
//!
//! Environment: `ARROW_BENCH_PLUG_MIB` (default 1024),
//! `ARROW_BENCH_TOUCH_MIB` (default 4), `ARROW_BENCH_RUNS` (runs per VMM,
//! default 1), `ARROW_KERNEL`, `FIRECRACKER_BIN`.
//! On nested-PVM hosts the guest kernel is emulated (ENVIRONMENT.md): the
//! times mostly measure the emulated driver and memory onlining; compare
//! the VMMs by their ratio, measured here in the same run.

#[path = "../tests/apps/vsock_guest.rs"]
mod vsock_guest;

#[path = "../tests/apps/memhp_guest.rs"]
mod memhp_guest;

#[path = "memhp/firecracker.rs"]
mod firecracker;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vsock_guest::{check_kvm, Guest};

const GUEST_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOT_MIB: u64 = 32;

/// How each side boots memhp-app: binary, kernel, initrd, API socket, boot
/// MiB, region MiB, app arguments, timeout.
type BootFn = fn(&Path, &Path, &Path, &Path, u64, u64, &str, Duration) -> Result<Guest, String>;

/// Which VMM a run uses.
enum Side {
    Arrow(PathBuf),
    Firecracker(PathBuf),
}

impl Side {
    fn name(&self) -> &'static str {
        match self {
            Side::Arrow(_) => "arrow-vmm",
            Side::Firecracker(_) => "firecracker",
        }
    }

    fn request(&self, sock: &Path, mib: u64) -> Result<(), String> {
        match self {
            Side::Arrow(_) => memhp_guest::request(sock, mib),
            Side::Firecracker(_) => firecracker::request(sock, mib),
        }
    }

    fn wait_plugged(&self, g: &mut Guest, sock: &Path, mib: u64) -> Result<Duration, String> {
        match self {
            Side::Arrow(_) => memhp_guest::wait_plugged(g, sock, mib),
            Side::Firecracker(_) => firecracker::wait_plugged(g, sock, mib),
        }
    }

    /// The VMM's RSS (KiB) and, where its API reports it, its hotplug
    /// region's resident memory (Firecracker's does not).
    fn rss(&self, g: &Guest, sock: &Path) -> Result<(u64, Option<u64>), String> {
        match self {
            Side::Arrow(_) => memhp_guest::rss_kib(g.pid(), sock).map(|(v, r)| (v, Some(r))),
            Side::Firecracker(_) => Ok((memhp_guest::vmm_rss_kib(g.pid()), None)),
        }
    }
}

/// What one run is asked to do.
struct Scenario {
    kernel: PathBuf,
    initrd: PathBuf,
    plug_mib: u64,
    region_mib: u64,
    touch_mib: u64,
}

/// One run's figures.
struct Figures {
    boot_s: f64,
    plug_device_s: f64,
    plug_online_s: f64,
    unplug_device_s: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    region_before_kib: Option<u64>,
    region_after_kib: Option<u64>,
}

impl Figures {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "boot_to_app_s": self.boot_s,
            "plug_device_s": self.plug_device_s,
            "plug_guest_online_s": self.plug_online_s,
            "unplug_device_s": self.unplug_device_s,
            "vmm_rss_before_unplug_kib": self.rss_before_kib,
            "vmm_rss_after_unplug_kib": self.rss_after_kib,
            "region_resident_before_kib": self.region_before_kib,
            "region_resident_after_kib": self.region_after_kib,
        })
    }
}

/// The last lines of the guest's console, for error messages.
fn console_tail(g: &Guest) -> String {
    let c = g.console();
    let tail: Vec<&str> = c.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    tail.join("\n    ")
}

fn run(side: &Side, s: &Scenario) -> Result<Figures, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sock = dir.path().join("api.sock");
    let app_args = format!(
        "--grow-mib {} --touch-mib {} --touch-any",
        s.plug_mib, s.touch_mib
    );
    let (boot, bin) = match side {
        Side::Arrow(bin) => (memhp_guest::boot as BootFn, bin),
        Side::Firecracker(bin) => (firecracker::boot as BootFn, bin),
    };
    let mut g = boot(
        bin,
        &s.kernel,
        &s.initrd,
        &sock,
        BOOT_MIB,
        s.region_mib,
        &app_args,
        GUEST_TIMEOUT,
    )
    .map_err(|e| format!("boot: {e}"))?;
    let fail = |g: &Guest, what: &str, e: String| {
        format!("{what}: {e}\n  console tail:\n    {}", console_tail(g))
    };

    let boot_s = g
        .wait_for("memhp: boot total")
        .map_err(|e| fail(&g, "boot", e))?
        .as_secs_f64();
    if let Side::Firecracker(_) = side {
        firecracker::wait_api(&mut g, &sock).map_err(|e| fail(&g, "API", e))?;
    }

    let t = Instant::now();
    side.request(&sock, s.plug_mib)
        .map_err(|e| fail(&g, "plug", e))?;
    let plugged = side
        .wait_plugged(&mut g, &sock, s.plug_mib)
        .map_err(|e| fail(&g, "plug", e))?;
    g.wait_for("memhp: grown to")
        .map_err(|e| fail(&g, "online", e))?;
    let online = t.elapsed();
    g.wait_for("memhp: grown: touched")
        .map_err(|e| fail(&g, "touch", e))?;

    let (rss_before, region_before) = side.rss(&g, &sock).map_err(|e| fail(&g, "RSS", e))?;
    side.request(&sock, 0).map_err(|e| fail(&g, "unplug", e))?;
    let unplugged = side
        .wait_plugged(&mut g, &sock, 0)
        .map_err(|e| fail(&g, "unplug", e))?;
    let (rss_after, region_after) = side.rss(&g, &sock).map_err(|e| fail(&g, "RSS", e))?;
    g.wait_for("memhp: done")
        .map_err(|e| fail(&g, "after unplug", e))?;
    g.kill();
    Ok(Figures {
        boot_s,
        plug_device_s: plugged.as_secs_f64(),
        plug_online_s: online.as_secs_f64(),
        unplug_device_s: unplugged.as_secs_f64(),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        region_before_kib: region_before,
        region_after_kib: region_after,
    })
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    if let Err(e) = check_kvm() {
        eprintln!("memhp bench not run: {e}");
        std::process::exit(1);
    }
    let plug_mib = env_u64("ARROW_BENCH_PLUG_MIB")
        .filter(|&v| v > 0 && v.is_multiple_of(2))
        .unwrap_or(1024);
    // Pages the guest populates cost ~1-4 ms each in the emulated guest
    // kernel here: the app writes only this much of the plugged memory.
    let touch_mib = env_u64("ARROW_BENCH_TOUCH_MIB").unwrap_or(4);
    let runs = env_u64("ARROW_BENCH_RUNS").filter(|&n| n > 0).unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario {
        kernel: vsock_guest::kernel().unwrap_or_else(|e| panic!("guest kernel: {e}")),
        initrd: memhp_guest::memhp_initrd(dir.path()).unwrap_or_else(|e| panic!("initrd: {e}")),
        plug_mib,
        // Both VMMs take the region in whole 128 MiB sections / slots.
        region_mib: plug_mib.next_multiple_of(128),
        touch_mib,
    };
    let arrow = Side::Arrow(PathBuf::from(env!("CARGO_BIN_EXE_arrow-vmm")));
    let mut fc: Result<Side, String> = vsock_guest::firecracker_bin().map(Side::Firecracker);

    let mut arrow_runs = Vec::new();
    let mut fc_runs = Vec::new();
    for i in 0..runs {
        eprintln!("memhp bench: run {}/{runs}: {}", i + 1, arrow.name());
        arrow_runs
            .push(run(&arrow, &scenario).unwrap_or_else(|e| panic!("arrow-vmm run failed: {e}")));
        if let Ok(side) = &fc {
            eprintln!("memhp bench: run {}/{runs}: {}", i + 1, side.name());
            match run(side, &scenario) {
                Ok(f) => fc_runs.push(f),
                Err(e) => fc = Err(format!("failed: {e}")),
            }
        }
    }
    // A Firecracker failure in a later run drops its earlier runs too.
    if fc.is_err() {
        fc_runs.clear();
    }

    type Get = fn(&Figures) -> Option<f64>;
    let rows: [(&str, Get); 10] = [
        ("boot to app (s)", |f| Some(f.boot_s)),
        ("plug: request -> device plugged all (s)", |f| {
            Some(f.plug_device_s)
        }),
        ("plug: request -> guest sees it online (s)", |f| {
            Some(f.plug_online_s)
        }),
        ("unplug all: request -> device plugged 0 (s)", |f| {
            Some(f.unplug_device_s)
        }),
        ("VMM RSS before unplug (MiB)", |f| {
            Some(f.rss_before_kib as f64 / 1024.0)
        }),
        ("VMM RSS after unplug (MiB)", |f| {
            Some(f.rss_after_kib as f64 / 1024.0)
        }),
        ("RSS returned to the host (MiB)", |f| {
            Some(f.rss_before_kib.saturating_sub(f.rss_after_kib) as f64 / 1024.0)
        }),
        ("hotplug region resident before (MiB)", |f| {
            f.region_before_kib.map(|k| k as f64 / 1024.0)
        }),
        ("hotplug region resident after (MiB)", |f| {
            f.region_after_kib.map(|k| k as f64 / 1024.0)
        }),
        ("plug + unplug, device side (s)", |f| {
            Some(f.plug_device_s + f.unplug_device_s)
        }),
    ];
    println!(
        "memory hotplug, {BOOT_MIB} MiB boot + {plug_mib} MiB plugged ({} MiB region, 2 MiB blocks), \
         app wrote {touch_mib} MiB; median of {runs} run(s) per VMM, alternating",
        scenario.region_mib
    );
    println!(
        "  {:<45} {:>10} {:>12} {:>9}",
        "metric", "arrow-vmm", "firecracker", "arrow/fc"
    );
    let mut json_rows = Vec::new();
    for (name, get) in rows {
        let col = |runs: &[Figures]| median(&runs.iter().filter_map(get).collect::<Vec<_>>());
        let a = col(&arrow_runs);
        let f = col(&fc_runs);
        let ratio = a.zip(f).filter(|&(_, f)| f > 0.0).map(|(a, f)| a / f);
        let cell = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        println!(
            "  {name:<45} {:>10} {:>12} {:>9}",
            cell(a, 2),
            cell(f, 2),
            cell(ratio, 2)
        );
        json_rows.push(serde_json::json!({
            "metric": name, "arrow": a, "firecracker": f, "arrow_over_firecracker": ratio,
        }));
    }
    match &fc {
        Ok(_) => println!("  (region resident: Firecracker's API does not report it)"),
        Err(e) => println!("firecracker comparison skipped: {e}"),
    }
    let json = serde_json::json!({
        "bench": "memhp",
        "boot_mib": BOOT_MIB,
        "plug_mib": plug_mib,
        "region_mib": scenario.region_mib,
        "block_mib": 2,
        "touch_mib": touch_mib,
        "runs": runs,
        "kernel": scenario.kernel,
        "firecracker": match &fc { Ok(_) => "ran".to_string(), Err(e) => e.clone() },
        "rows": json_rows,
        "arrow_runs": arrow_runs.iter().map(Figures::json).collect::<Vec<_>>(),
        "firecracker_runs": fc_runs.iter().map(Figures::json).collect::<Vec<_>>(),
    });
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    let _ = std::fs::create_dir_all(&out);
    let path = out.join("memhp.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
