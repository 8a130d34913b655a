//! `cargo bench -p arrow-vmm --bench memhp`: memory hotplug against the real
//! guest kernel running memhp-app (tests/apps), one boot:
//! - plug 1 GiB: `PUT /vm/memory` → the device has plugged it all (its
//!   config space's plugged_size, as `GET /vm/memory` shows it), and →
//!   the app sees it online (its `sysinfo` total grew; console line);
//! - the app writes `ARROW_BENCH_TOUCH_MIB` (default 4) MiB;
//! - unplug all: `PUT /vm/memory 0` → plugged_size 0, and the resident
//!   memory given back to the host (the VMM's RSS and its hotplug region's).
//!
//! Prints a table and writes `target/bench-results/memhp.json`.
//! Firecracker is not run here: its virtio-mem (`/hotplug/memory`) was
//! measured by hand on another host (ENVIRONMENT.md); a same-invocation
//! comparison is future work.
//!
//! Environment: `ARROW_BENCH_PLUG_MIB` (default 1024),
//! `ARROW_BENCH_TOUCH_MIB` (default 4), `ARROW_KERNEL`.
//! On nested-PVM hosts the guest kernel is emulated (ENVIRONMENT.md): the
//! times mostly measure the emulated driver and memory onlining.

#[path = "../tests/apps/vsock_guest.rs"]
mod vsock_guest;

#[path = "../tests/apps/memhp_guest.rs"]
mod memhp_guest;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use memhp_guest::*;
use vsock_guest::*;

const GUEST_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOT_MIB: u64 = 32;

fn main() {
    if let Err(e) = check_kvm() {
        eprintln!("memhp bench not run: {e}");
        std::process::exit(1);
    }
    let plug_mib: u64 = std::env::var("ARROW_BENCH_PLUG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v: &u64| v > 0 && v.is_multiple_of(2))
        .unwrap_or(1024);
    // Pages the guest populates cost ~1-4 ms each in the emulated guest
    // kernel here: the app writes only this much of the plugged memory.
    let touch_mib: u64 = std::env::var("ARROW_BENCH_TOUCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let region_mib = plug_mib.next_multiple_of(128);
    let kernel = kernel().unwrap_or_else(|e| panic!("guest kernel: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let initrd = memhp_initrd(dir.path()).unwrap_or_else(|e| panic!("initrd: {e}"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_arrow-vmm"));
    let sock = dir.path().join("api.sock");
    let mut g = boot(
        &bin,
        &kernel,
        &initrd,
        &sock,
        BOOT_MIB,
        region_mib,
        &format!("--grow-mib {plug_mib} --touch-mib {touch_mib} --touch-any"),
        GUEST_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("boot: {e}"));
    let fail = |g: &Guest, what: &str, e: String| -> ! {
        panic!("{what}: {e}\n---- console ----\n{}", g.console())
    };
    let boot_s = g
        .wait_for("memhp: boot total")
        .unwrap_or_else(|e| fail(&g, "boot", e))
        .as_secs_f64();

    let t = Instant::now();
    request(&sock, plug_mib).unwrap_or_else(|e| fail(&g, "plug", e));
    let plugged = wait_plugged(&mut g, &sock, plug_mib).unwrap_or_else(|e| fail(&g, "plug", e));
    g.wait_for("memhp: grown to")
        .unwrap_or_else(|e| fail(&g, "online", e));
    let online = t.elapsed();
    g.wait_for("memhp: grown: touched")
        .unwrap_or_else(|e| fail(&g, "touch", e));

    let (rss_before, region_before) =
        rss_kib(g.pid(), &sock).unwrap_or_else(|e| fail(&g, "RSS", e));
    request(&sock, 0).unwrap_or_else(|e| fail(&g, "unplug", e));
    let unplugged = wait_plugged(&mut g, &sock, 0).unwrap_or_else(|e| fail(&g, "unplug", e));
    let (rss_after, region_after) = rss_kib(g.pid(), &sock).unwrap_or_else(|e| fail(&g, "RSS", e));
    g.wait_for("memhp: done")
        .unwrap_or_else(|e| fail(&g, "after unplug", e));

    let rows = [
        ("boot to app (s)", boot_s),
        (
            "plug: request -> device plugged all (s)",
            plugged.as_secs_f64(),
        ),
        (
            "plug: request -> guest sees it online (s)",
            online.as_secs_f64(),
        ),
        (
            "unplug all: request -> device plugged 0 (s)",
            unplugged.as_secs_f64(),
        ),
        ("VMM RSS before unplug (MiB)", rss_before as f64 / 1024.0),
        ("VMM RSS after unplug (MiB)", rss_after as f64 / 1024.0),
        (
            "hotplug region resident before (MiB)",
            region_before as f64 / 1024.0,
        ),
        (
            "hotplug region resident after (MiB)",
            region_after as f64 / 1024.0,
        ),
        (
            "RSS returned to the host (MiB)",
            rss_before.saturating_sub(rss_after) as f64 / 1024.0,
        ),
    ];
    println!(
        "memory hotplug, {BOOT_MIB} MiB boot + {plug_mib} MiB plugged, app wrote {touch_mib} MiB (arrow-vmm)"
    );
    for (k, v) in rows {
        println!("  {k:<45} {v:>10.2}");
    }
    let json = serde_json::json!({
        "boot_mib": BOOT_MIB,
        "plug_mib": plug_mib,
        "touch_mib": touch_mib,
        "boot_to_app_s": boot_s,
        "plug_device_s": plugged.as_secs_f64(),
        "plug_guest_online_s": online.as_secs_f64(),
        "unplug_device_s": unplugged.as_secs_f64(),
        "vmm_rss_before_unplug_kib": rss_before,
        "vmm_rss_after_unplug_kib": rss_after,
        "region_resident_before_kib": region_before,
        "region_resident_after_kib": region_after,
    });
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    let _ = std::fs::create_dir_all(&out);
    let path = out.join("memhp.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
