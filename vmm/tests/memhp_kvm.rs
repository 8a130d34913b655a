//! End-to-end memory hotplug on the real /dev/kvm with the real guest
//! kernel: ONE boot of `arrow-vmm run --memory 32M --memory-hotplug 512M`
//! running memhp-app (tests/apps) as PID 1, then:
//! - `PUT /vm/memory {"requested_mib": 256}`: the guest driver plugs 256 MiB
//!   (GET /vm/memory shows it), the kernel onlines it by itself, and the app
//!   allocates, writes and checks more memory than it booted with;
//! - bad sizes answer 400 with what is allowed;
//! - the VM is snapshotted with the memory plugged (a template);
//! - `requested_mib: 0`: the driver unplugs everything, the VMM's resident
//!   memory drops by what the hotplug region held, the app sees its memory
//!   shrink, allocates again and exits 0 (the VMM's exit status);
//! - a clone of the template starts with 256 MiB plugged, grows beyond it
//!   (384 MiB), gives it all back (its region's resident memory goes to
//!   zero although it was a copy-on-write mapping of the template), and its
//!   app exits 0 too.
//!
//! Why 32 MiB of boot memory: on nested-PVM hosts every page the guest
//! kernel hands out is zeroed by emulated kernel code (~0.2–1 MiB/s
//! measured here), so "more than it booted with" must stay small.
//!
//! No KVM, no kernel, or no musl-gcc is a failure with the reason, never a
//! skip. `cargo test -p arrow-vmm --test memhp_kvm -- --nocapture`
//! (`ARROW_KERNEL=/path/vmlinux` skips the kernel build script.)

#[path = "apps/vsock_guest.rs"]
mod vsock_guest;

#[path = "apps/memhp_guest.rs"]
mod memhp_guest;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use memhp_guest::*;
use vsock_guest::*;

const GUEST_TIMEOUT: Duration = Duration::from_secs(900);
const REGION_MIB: u64 = 512;

#[test]
fn plug_touch_unplug_snapshot_and_clone() {
    if let Err(e) = check_kvm() {
        fail(None, "this test boots a real guest", e);
    }
    let kernel = kernel().unwrap_or_else(|e| fail(None, "guest kernel unavailable", e));
    let dir = tempfile::tempdir().unwrap();
    let initrd = memhp_initrd(dir.path()).unwrap_or_else(|e| fail(None, "building the initrd", e));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_arrow-vmm"));
    let sock = dir.path().join("api.sock");
    let mut g = boot(
        &bin,
        &kernel,
        &initrd,
        &sock,
        32,
        REGION_MIB,
        "--grow-mib 256 --touch-mib 0",
        GUEST_TIMEOUT,
    )
    .unwrap_or_else(|e| fail(None, "starting arrow-vmm", e));
    g.wait_for("memhp: boot total")
        .unwrap_or_else(|e| fail(Some(&g), "app start", e));
    let m = memory(&sock).unwrap_or_else(|e| fail(Some(&g), "GET /vm/memory", e));
    assert_eq!(m["boot_mib"], 32, "{m}");
    assert_eq!(m["hotplug_max_mib"], REGION_MIB, "{m}");
    assert_eq!(m["plugged_mib"], 0, "{m}");

    // Sizes the device cannot take: 400 with what is allowed.
    for (body, needle) in [
        (r#"{"requested_mib": 3}"#, "steps of 2 MiB"),
        (r#"{"requested_mib": 1024}"#, "0 to 512 MiB"),
        (r#"{"requested_mib": -2}"#, "non-negative"),
        (r#"{"size": 2}"#, "requested_mib"),
    ] {
        let (code, text) = api(&sock, "PUT", "/vm/memory", body).unwrap();
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }

    // Grow.
    request(&sock, 256).unwrap_or_else(|e| fail(Some(&g), "plug", e));
    let plug = wait_plugged(&mut g, &sock, 256).unwrap_or_else(|e| fail(Some(&g), "plug", e));
    g.wait_for("memhp: grown to")
        .unwrap_or_else(|e| fail(Some(&g), "guest sees the memory", e));
    let touched = g
        .wait_for("memhp: grown: touched")
        .unwrap_or_else(|e| fail(Some(&g), "app uses more than it booted with", e));
    eprintln!(
        "256 MiB plugged in {:.2} s; app touched its memory at {:.1} s",
        plug.as_secs_f64(),
        touched.as_secs_f64()
    );

    // Template with the memory plugged.
    let snap = dir.path().join("snap");
    snapshot(&g, &sock, &snap, Duration::ZERO);

    // Shrink: the memory goes back to the host.
    let u = unplug_all(&mut g, &sock);
    let ((rss_before, rss_after), (region_before, region_after)) = (u.rss, u.region);
    assert!(
        region_before >= 8 << 10,
        "the app's memory was not in the hotplug region"
    );
    assert_eq!(region_after, 0, "unplugged memory still resident");
    assert!(
        rss_before - rss_after >= region_before * 9 / 10,
        "RSS dropped by {} KiB, the region held {region_before} KiB",
        rss_before.saturating_sub(rss_after)
    );
    app_done(&mut g, "guest after unplug");

    // A clone of the template: plugged memory kept, can grow beyond it and
    // give it all back.
    let clone_sock = dir.path().join("clone.sock");
    let mut cmd = Command::new(&bin);
    cmd.arg("restore")
        .arg("--from")
        .arg(&snap)
        .arg("--clone")
        .arg("--api-sock")
        .arg(&clone_sock);
    let mut c = spawn_restored(cmd, &bin, &clone_sock, "the clone");
    let m = memory(&clone_sock).unwrap_or_else(|e| fail(Some(&c), "clone memory", e));
    assert_eq!(m["plugged_mib"], 256, "{m}");
    assert_eq!(m["requested_mib"], 256, "{m}");
    request(&clone_sock, 384).unwrap_or_else(|e| fail(Some(&c), "clone grows", e));
    let grow =
        wait_plugged(&mut c, &clone_sock, 384).unwrap_or_else(|e| fail(Some(&c), "clone grows", e));
    request(&clone_sock, 0).unwrap_or_else(|e| fail(Some(&c), "clone shrinks", e));
    let shrink =
        wait_plugged(&mut c, &clone_sock, 0).unwrap_or_else(|e| fail(Some(&c), "clone shrinks", e));
    let (_, clone_region) =
        rss_kib(c.pid(), &clone_sock).unwrap_or_else(|e| fail(Some(&c), "clone RSS", e));
    eprintln!(
        "clone: 256 -> 384 MiB in {:.2} s, -> 0 in {:.2} s; region resident after: {} KiB",
        grow.as_secs_f64(),
        shrink.as_secs_f64(),
        clone_region
    );
    assert_eq!(
        clone_region, 0,
        "the clone's unplugged memory is still resident"
    );
    app_done(&mut c, "clone");
}
