//! `cargo bench -p arrow-vmm --bench vsock`: vsock throughput (host → guest,
//! guest → host, echo both ways on host- and guest-initiated connections)
//! and connection setup latency (`CONNECT <port>` → `OK`) against the real
//! guest kernel running vsock-echo, one boot per VMM.
//!
//! Firecracker runs the same kernel and initramfs in the same invocation
//! when `FIRECRACKER_BIN` names its binary; otherwise its column says why
//! it did not run. Prints a table and writes
//! `target/bench-results/vsock.json`.
//!
//! Environment: `ARROW_BENCH_CONNS` (connections for the latency, default
//! 20), `ARROW_BENCH_MIB` (MiB per throughput run, default 4),
//! `ARROW_KERNEL` (skip the kernel build script), `FIRECRACKER_BIN`.
//!
//! On nested-PVM hosts every guest kernel instruction is emulated (see
//! ENVIRONMENT.md): absolute figures mostly measure the emulator; compare
//! the VMMs by their ratio, measured here in the same run.

#[path = "../tests/apps/vsock_guest.rs"]
mod vsock_guest;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vsock_guest::*;

const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

#[derive(Default)]
struct Figures {
    boot_to_ready_s: f64,
    connect_ms: Vec<f64>,
    host_to_guest_mib_s: f64,
    guest_to_host_mib_s: f64,
    echo_host_initiated_mib_s: f64,
    echo_guest_initiated_mib_s: f64,
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pct = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    (s[0], pct(0.5), pct(0.9), mean)
}

fn run(
    vmm: &Vmm,
    kernel: &Path,
    initrd: &Path,
    conns: usize,
    mib: usize,
) -> Result<Figures, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let uds = dir.path().join("v.sock");
    let dial = UnixListener::bind(side_path(&uds, DIAL_PORT)).map_err(|e| e.to_string())?;
    let mut g = Guest::boot(vmm, kernel, initrd, &uds, &app_args(1), GUEST_TIMEOUT)?;
    let with_console = |g: &Guest, e: String| {
        let c = g.console();
        let tail: Vec<&str> = c.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("{e}\n  console tail:\n    {}", tail.join("\n    "))
    };
    let mut f = Figures::default();
    let bytes = mib << 20;
    let data = pattern(bytes);

    f.boot_to_ready_s = g
        .wait_for(ECHO_READY)
        .map_err(|e| with_console(&g, e))?
        .as_secs_f64();
    g.wait_for(BULK_READY).map_err(|e| with_console(&g, e))?;

    // The guest dialed while booting; its connection waits in the backlog.
    let s = g.accept(&dial).map_err(|e| with_console(&g, e))?;
    let dt = g
        .echo_roundtrip(&s, &data)
        .map_err(|e| with_console(&g, e))?;
    f.echo_guest_initiated_mib_s = mib as f64 / dt.as_secs_f64();
    drop(s);

    // Connection setup: N sequential CONNECT → OK to vsock-echo.
    let (first, _) = g
        .connect_retry(ECHO_PORT)
        .map_err(|e| with_console(&g, e))?;
    drop(first);
    for _ in 0..conns {
        let (s, dt) = g.connect(ECHO_PORT).map_err(|e| with_console(&g, e))?;
        f.connect_ms.push(dt.as_secs_f64() * 1e3);
        drop(s);
    }

    let (c, _) = g
        .connect_retry(ECHO_PORT)
        .map_err(|e| with_console(&g, e))?;
    let dt = g
        .echo_roundtrip(&c, &data)
        .map_err(|e| with_console(&g, e))?;
    f.echo_host_initiated_mib_s = mib as f64 / dt.as_secs_f64();
    drop(c);

    let dt = g.sink(bytes).map_err(|e| with_console(&g, e))?;
    f.host_to_guest_mib_s = mib as f64 / dt.as_secs_f64();
    let dt = g.source(bytes).map_err(|e| with_console(&g, e))?;
    f.guest_to_host_mib_s = mib as f64 / dt.as_secs_f64();
    g.kill();
    Ok(f)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    if let Err(e) = check_kvm() {
        panic!("the vsock bench boots real guests: {e}");
    }
    let conns = env_usize("ARROW_BENCH_CONNS", 20);
    let mib = env_usize("ARROW_BENCH_MIB", 4);
    let kernel = kernel().unwrap_or_else(|e| panic!("guest kernel unavailable: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = initrd(dir.path()).unwrap_or_else(|e| panic!("building the initrd: {e}"));

    eprintln!("vsock bench: arrow-vmm ({conns} connections, {mib} MiB per transfer)");
    let arrow = run(
        &Vmm::Arrow(env!("CARGO_BIN_EXE_arrow-vmm").into()),
        &kernel,
        &initrd,
        conns,
        mib,
    )
    .unwrap_or_else(|e| panic!("arrow-vmm run failed: {e}"));
    let fc: Result<Figures, String> = firecracker_bin()
        .map_err(|e| format!("not run: {e}"))
        .and_then(|bin| {
            eprintln!("vsock bench: firecracker {}", bin.display());
            run(&Vmm::Firecracker(bin), &kernel, &initrd, conns, mib)
                .map_err(|e| format!("not available: {e}"))
        });

    // ---- table ----
    let (amin, a50, a90, amean) = stats(&arrow.connect_ms);
    let rows: Vec<(&str, &str, f64, Option<f64>, bool)> = {
        let fcv = |get: &dyn Fn(&Figures) -> f64| fc.as_ref().ok().map(get);
        let fstats = fc.as_ref().ok().map(|f| stats(&f.connect_ms));
        vec![
            (
                "connect CONNECT->OK min",
                "ms",
                amin,
                fstats.map(|s| s.0),
                false,
            ),
            (
                "connect CONNECT->OK p50",
                "ms",
                a50,
                fstats.map(|s| s.1),
                false,
            ),
            (
                "connect CONNECT->OK p90",
                "ms",
                a90,
                fstats.map(|s| s.2),
                false,
            ),
            (
                "connect CONNECT->OK mean",
                "ms",
                amean,
                fstats.map(|s| s.3),
                false,
            ),
            (
                "host->guest (sink)",
                "MiB/s",
                arrow.host_to_guest_mib_s,
                fcv(&|f| f.host_to_guest_mib_s),
                true,
            ),
            (
                "guest->host (source)",
                "MiB/s",
                arrow.guest_to_host_mib_s,
                fcv(&|f| f.guest_to_host_mib_s),
                true,
            ),
            (
                "echo, host-initiated",
                "MiB/s",
                arrow.echo_host_initiated_mib_s,
                fcv(&|f| f.echo_host_initiated_mib_s),
                true,
            ),
            (
                "echo, guest-initiated",
                "MiB/s",
                arrow.echo_guest_initiated_mib_s,
                fcv(&|f| f.echo_guest_initiated_mib_s),
                true,
            ),
            (
                "boot to vsock-echo ready",
                "s",
                arrow.boot_to_ready_s,
                fcv(&|f| f.boot_to_ready_s),
                false,
            ),
        ]
    };
    println!();
    println!(
        "{:<28} {:>6} {:>12} {:>12} {:>14}",
        "vsock", "unit", "arrow-vmm", "firecracker", "arrow/fc"
    );
    let mut json_rows = Vec::new();
    for (name, unit, a, f, higher_better) in &rows {
        let (fcol, ratio) = match f {
            Some(f) => (format!("{f:.3}"), format!("{:.3}", a / f)),
            None => ("-".to_string(), "-".to_string()),
        };
        println!("{name:<28} {unit:>6} {a:>12.3} {fcol:>12} {ratio:>14}");
        json_rows.push(serde_json::json!({
            "metric": name, "unit": unit, "arrow": a, "firecracker": f,
            "arrow_over_firecracker": f.map(|f| a / f),
            "higher_is_better": higher_better,
        }));
    }
    if let Err(e) = &fc {
        println!("firecracker: {e}");
    }
    println!(
        "(ratio arrow/fc: above 1 means arrow is higher — better for MiB/s, worse for ms and s)"
    );
    let json = serde_json::json!({
        "bench": "vsock",
        "connections": conns,
        "mib_per_transfer": mib,
        "kernel": kernel,
        "firecracker": match &fc { Ok(_) => "ran".to_string(), Err(e) => e.clone() },
        "arrow_connect_ms": arrow.connect_ms,
        "firecracker_connect_ms": fc.as_ref().ok().map(|f| f.connect_ms.clone()),
        "rows": json_rows,
    });
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("vsock.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", path.display());
}
