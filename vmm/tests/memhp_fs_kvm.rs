//! End-to-end `--fs` together with `--memory-hotplug` on the real /dev/kvm,
//! the real guest kernel and a real virtiofsd (installed by the project on
//! first use): ONE boot of `arrow-vmm run --memory 32M --memory-hotplug
//! 512M --fs myfs=SOCKET` running memhp-app (tests/apps) as PID 1, the
//! volume mounted by ainit at /data, then:
//! - `PUT /vm/memory {"requested_mib": 256}`: the driver plugs 256 MiB, the
//!   app touches more memory than it booted with;
//! - the VM is snapshotted with the memory plugged (a template);
//! - the app writes a 48 MiB buffer (more than its 32 MiB of boot memory,
//!   so most of it lies in plugged memory, and with virtiofsd's `--cache
//!   never` the app's pages are the virtio buffers) to /data/memhp.bin and
//!   reads it back: virtiofsd mapped the plugged memory; the host checks
//!   the file's every page;
//! - `requested_mib: 0`: everything is unplugged, the memfd's share of the
//!   hotplug region drops to zero (punched out) and so does the VMM's RSS;
//!   the app exits 0;
//! - a clone of the template (a second virtiofsd) restores with both: 256
//!   MiB plugged, its memfd holds the plugged data, its backend's first
//!   memory table carries the plugged slots, and unplugging gives it all
//!   back; so does a pooled clone (`restore --pool`, the backend given at
//!   `PUT /vm/start`). (Their apps cannot use the volume: the new virtiofsd never saw the
//!   guest's FUSE_INIT, a limitation of restoring mounted volumes that
//!   docs/arrow-vmm.md describes; the clones are killed.)
//!
//! No KVM, no kernel, no virtiofsd or no musl-gcc is a failure with the
//! reason, never a skip. `cargo test -p arrow-vmm --test memhp_fs_kvm --
//! --nocapture` (`ARROW_KERNEL=/path/vmlinux` skips the kernel build script.)

#[path = "apps/vsock_guest.rs"]
mod vsock_guest;

#[path = "apps/memhp_guest.rs"]
mod memhp_guest;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow_e2e::vfs::virtiofsd;
use memhp_guest::*;
use vsock_guest::*;

const GUEST_TIMEOUT: Duration = Duration::from_secs(900);
const REGION_MIB: u64 = 512;
const FILE_MIB: usize = 48;

/// Page i of the app's file holds (i * 7 + 1) & 0xff.
fn check_file(path: &Path) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(data.len(), FILE_MIB << 20, "{} size", path.display());
    for (i, page) in data.chunks(4096).enumerate() {
        let want = ((i * 7 + 1) & 0xff) as u8;
        assert!(
            page.iter().all(|&b| b == want),
            "page {i} of {} is not {want:#x}",
            path.display()
        );
    }
}

/// `s` without ANSI escape sequences (the VMM's log colours).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

#[test]
fn volume_io_from_plugged_memory_unplug_snapshot_and_clone() {
    if let Err(e) = check_kvm() {
        fail(None, "this test boots a real guest", e);
    }
    let kernel = kernel().unwrap_or_else(|e| fail(None, "guest kernel unavailable", e));
    let dir = tempfile::tempdir().unwrap();
    let initrd = memhp_initrd(dir.path()).unwrap_or_else(|e| fail(None, "building the initrd", e));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_arrow-vmm"));
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let fs_sock = dir.path().join("fs.sock");
    let _fsd = virtiofsd(&share, &fs_sock);
    let sock = dir.path().join("api.sock");
    let fs_arg = format!("myfs={}", fs_sock.display());
    let app = format!("--grow-mib 256 --touch-mib 0 --file-mib {FILE_MIB}");
    let vmm_args: [&OsStr; 2] = ["--fs".as_ref(), fs_arg.as_ref()];
    let mut g = boot_with(
        &bin,
        &kernel,
        &initrd,
        &sock,
        (32, REGION_MIB),
        (&app, "arrow.vol=fs:myfs:rw:/data", &vmm_args),
        GUEST_TIMEOUT,
    )
    .unwrap_or_else(|e| fail(None, "starting arrow-vmm", e));
    g.wait_for("memhp: boot total")
        .unwrap_or_else(|e| fail(Some(&g), "app start", e));
    let m = memory(&sock).unwrap_or_else(|e| fail(Some(&g), "GET /vm/memory", e));
    assert_eq!(m["hotplug_max_mib"], REGION_MIB, "{m}");

    request(&sock, 256).unwrap_or_else(|e| fail(Some(&g), "plug", e));
    let plug = wait_plugged(&mut g, &sock, 256).unwrap_or_else(|e| fail(Some(&g), "plug", e));
    g.wait_for("memhp: grown: touched")
        .unwrap_or_else(|e| fail(Some(&g), "app uses the plugged memory", e));

    // Template with the memory plugged; the app polls /data/go meanwhile,
    // so let its last request finish before saving the rings.
    let snap = dir.path().join("snap");
    snapshot(&g, &sock, &snap, Duration::from_millis(300));

    // File I/O from plugged memory through virtiofsd.
    std::fs::write(share.join("go"), "").unwrap();
    let io = g
        .wait_for("memhp: file: wrote and read back")
        .unwrap_or_else(|e| fail(Some(&g), "file I/O from plugged memory", e));
    check_file(&share.join("memhp.bin"));
    eprintln!(
        "256 MiB plugged in {:.2} s; {FILE_MIB} MiB written and read back through virtiofsd by {:.1} s",
        plug.as_secs_f64(),
        io.as_secs_f64()
    );

    // Unplug: the memfd gives the region's pages back.
    let u = unplug_all(&mut g, &sock);
    let ((rss_before, rss_after), (region_before, region_after)) = (u.rss, u.region);
    assert!(
        region_before >= 16 << 10,
        "the app's memory was not in the hotplug region: {region_before} KiB"
    );
    assert_eq!(region_after, 0, "unplugged memory still in the memfd");
    assert!(
        rss_before.saturating_sub(rss_after) >= region_before / 2,
        "RSS dropped by {} KiB, the region held {region_before} KiB",
        rss_before.saturating_sub(rss_after)
    );
    app_done(&mut g, "guest after unplug");

    // A clone with its own virtiofsd: restored with both.
    let share2 = dir.path().join("share2");
    std::fs::create_dir(&share2).unwrap();
    let fs_sock2 = dir.path().join("fs2.sock");
    let _fsd2 = virtiofsd(&share2, &fs_sock2);
    let clone_sock = dir.path().join("clone.sock");
    let mut cmd = Command::new(&bin);
    cmd.env("RUST_LOG", "warn,arrow_vmm::devices::virtio::fs=debug")
        .arg("restore")
        .arg("--from")
        .arg(&snap)
        .arg("--clone")
        .arg("--api-sock")
        .arg(&clone_sock)
        .arg("--fs")
        .arg(format!("myfs={}", fs_sock2.display()));
    let mut c = spawn_restored(cmd, &bin, &clone_sock, "the clone");
    let m = memory(&clone_sock).unwrap_or_else(|e| fail(Some(&c), "clone memory", e));
    assert_eq!(m["plugged_mib"], 256, "{m}");
    let (_, clone_before) =
        rss_kib(c.pid(), &clone_sock).unwrap_or_else(|e| fail(Some(&c), "clone RSS", e));
    assert!(
        clone_before >= 8 << 10,
        "the clone's memfd lacks the plugged data: {clone_before} KiB"
    );
    let log = plain(&c.console());
    assert!(
        log.contains("memory table sent") && log.contains("hotplug=2"),
        "the clone's backend did not get the 2 plugged slots\n{}",
        c.console()
    );
    request(&clone_sock, 0).unwrap_or_else(|e| fail(Some(&c), "clone shrinks", e));
    let shrink =
        wait_plugged(&mut c, &clone_sock, 0).unwrap_or_else(|e| fail(Some(&c), "clone shrinks", e));
    let (_, clone_after) =
        rss_kib(c.pid(), &clone_sock).unwrap_or_else(|e| fail(Some(&c), "clone RSS", e));
    eprintln!(
        "clone: region in its memfd {} MiB -> {clone_after} KiB after unplug in {:.2} s",
        clone_before >> 10,
        shrink.as_secs_f64()
    );
    assert_eq!(
        clone_after, 0,
        "the clone's unplugged memory is still in its memfd"
    );
    c.kill();

    // A pooled clone: RAM converted and the backend connected at PUT /vm/start.
    let share3 = dir.path().join("share3");
    std::fs::create_dir(&share3).unwrap();
    let fs_sock3 = dir.path().join("fs3.sock");
    let _fsd3 = virtiofsd(&share3, &fs_sock3);
    let pool_sock = dir.path().join("pool.sock");
    let mut cmd = Command::new(&bin);
    cmd.env("RUST_LOG", "warn,arrow_vmm::devices::virtio::fs=debug")
        .args(["restore", "--clone", "--pool", "--from"])
        .arg(&snap)
        .arg("--api-sock")
        .arg(&pool_sock);
    let mut p = spawn_restored(cmd, &bin, &pool_sock, "the pooled clone");
    let body = format!(
        r#"{{"fs": [{{"tag": "myfs", "socket": "{}"}}]}}"#,
        fs_sock3.display()
    );
    api_ok(&p, &pool_sock, "/vm/start", &body);
    let m = memory(&pool_sock).unwrap_or_else(|e| fail(Some(&p), "pooled clone memory", e));
    assert_eq!(m["plugged_mib"], 256, "{m}");
    let (_, pool_before) =
        rss_kib(p.pid(), &pool_sock).unwrap_or_else(|e| fail(Some(&p), "pooled RSS", e));
    assert!(
        pool_before >= 8 << 10,
        "the pooled clone's memfd lacks the plugged data: {pool_before} KiB"
    );
    let log = plain(&p.console());
    assert!(
        log.contains("memory table sent") && log.contains("hotplug=2"),
        "the pooled clone's backend did not get the 2 plugged slots\n{log}"
    );
    request(&pool_sock, 0).unwrap_or_else(|e| fail(Some(&p), "pooled clone shrinks", e));
    wait_plugged(&mut p, &pool_sock, 0)
        .unwrap_or_else(|e| fail(Some(&p), "pooled clone shrinks", e));
    let (_, pool_after) =
        rss_kib(p.pid(), &pool_sock).unwrap_or_else(|e| fail(Some(&p), "pooled RSS", e));
    eprintln!(
        "pooled clone: region in its memfd {} MiB -> {pool_after} KiB after unplug",
        pool_before >> 10
    );
    assert_eq!(
        pool_after, 0,
        "the pooled clone's unplugged memory is still in its memfd"
    );
    p.kill();
}
