//! Shared by `tests/memhp_kvm.rs`, `tests/memhp_fs_kvm.rs` and
//! `benches/memhp.rs`: builds the memhp-app initramfs, drives arrow-vmm's
//! memory-hotplug control API, reads the VMM's resident memory from /proc,
//! and the tests' common steps (snapshot, unplug everything, restore).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::process::Command;

use crate::vsock_guest::{api, musl_build, newc_cpio, Guest, Vmm};

pub fn memhp_initrd(dir: &Path) -> Result<PathBuf, String> {
    let app = dir.join("memhp-app");
    musl_build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/memhp-app.c"),
        &app,
    )?;
    let bytes = std::fs::read(&app).map_err(|e| e.to_string())?;
    let out = dir.join("memhp.cpio");
    std::fs::write(&out, newc_cpio(&[("app", 0o755, &bytes)])).map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn memory(sock: &Path) -> Result<serde_json::Value, String> {
    let (code, body) = api(sock, "GET", "/vm/memory", "")?;
    if code != 200 {
        return Err(format!("GET /vm/memory: {code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

pub fn request(sock: &Path, mib: u64) -> Result<(), String> {
    let (code, body) = api(
        sock,
        "PUT",
        "/vm/memory",
        &format!(r#"{{"requested_mib": {mib}}}"#),
    )?;
    if code != 200 {
        return Err(format!("PUT /vm/memory {mib}: {code} {body}"));
    }
    Ok(())
}

/// Waits until the device reports `mib` plugged; returns how long it took.
pub fn wait_plugged(g: &mut Guest, sock: &Path, mib: u64) -> Result<Duration, String> {
    poll_plugged(g, mib, "plugged_mib", || memory(sock))
}

/// Polls `state` (a VMM's memory-hotplug status) every 20 ms until its `key`
/// says `mib`, while the guest lives; returns how long it took. Shared with
/// the Firecracker side of the memhp bench, whose API names the field
/// differently.
pub fn poll_plugged(
    g: &mut Guest,
    mib: u64,
    key: &str,
    mut state: impl FnMut() -> Result<serde_json::Value, String>,
) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        let m = state()?;
        if m[key] == mib {
            return Ok(t.elapsed());
        }
        g.check_alive()
            .map_err(|e| format!("waiting for {mib} MiB plugged (now {m}): {e}"))?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory (KiB) of the VMM process (`VmRSS`).
pub fn vmm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory (KiB) of the VMM and of its hotplug region (as the
/// device reports it: `host_resident_kib` in GET /vm/memory).
pub fn rss_kib(pid: u32, sock: &Path) -> Result<(u64, u64), String> {
    let m = memory(sock)?;
    let region = m["host_resident_kib"]
        .as_u64()
        .ok_or_else(|| format!("no host_resident_kib in {m}"))?;
    Ok((vmm_rss_kib(pid), region))
}

/// Boots memhp-app (`app_args`) under `arrow-vmm run` with `boot_mib` of
/// memory, a `region_mib` hotplug region and its control API at `sock`.
#[allow(clippy::too_many_arguments)]
pub fn boot(
    bin: &Path,
    kernel: &Path,
    initrd: &Path,
    sock: &Path,
    boot_mib: u64,
    region_mib: u64,
    app_args: &str,
    timeout: Duration,
) -> Result<Guest, String> {
    let (mib, args) = ((boot_mib, region_mib), (app_args, "", &[][..]));
    boot_with(bin, kernel, initrd, sock, mib, args, timeout)
}

/// [`boot`] with more kernel parameters and arrow-vmm arguments (`args`:
/// app arguments, kernel parameters, VMM arguments).
pub fn boot_with(
    bin: &Path,
    kernel: &Path,
    initrd: &Path,
    sock: &Path,
    (boot_mib, region_mib): (u64, u64),
    (app_args, params, vmm_args): (&str, &str, &[&std::ffi::OsStr]),
    timeout: Duration,
) -> Result<Guest, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 reboot=k panic=-1 arrow.app=/app {params} -- {app_args}"
        ))
        .args(vmm_args)
        .arg("--memory")
        .arg(format!("{boot_mib}M"))
        .arg("--memory-hotplug")
        .arg(format!("{region_mib}M"))
        .arg("--api-sock")
        .arg(sock);
    let unused = sock.with_extension("unused");
    Guest::spawn(cmd, &Vmm::Arrow(bin.to_path_buf()), &unused, timeout)
}

/// Fails the test with the guest's console.
pub fn fail(guest: Option<&Guest>, what: &str, e: String) -> ! {
    let console = guest.map(Guest::console).unwrap_or_default();
    panic!("{what}: {e}\n---- guest console ----\n{console}\n-----------------------");
}

/// `PUT path body` must answer 200.
pub fn api_ok(g: &Guest, sock: &Path, path: &str, body: &str) {
    let (code, text) = api(sock, "PUT", path, body).unwrap_or_else(|e| fail(Some(g), path, e));
    assert_eq!(code, 200, "{path}: {text}");
}

/// Pauses the VM, snapshots it into `dir` (created) and resumes it; `settle`
/// lets in-flight device requests finish before the rings are saved.
pub fn snapshot(g: &Guest, sock: &Path, dir: &Path, settle: Duration) {
    std::fs::create_dir(dir).unwrap();
    api_ok(g, sock, "/vm/pause", "");
    std::thread::sleep(settle);
    api_ok(
        g,
        sock,
        "/vm/snapshot",
        &format!(r#"{{"dir": "{}"}}"#, dir.display()),
    );
    api_ok(g, sock, "/vm/resume", "");
}

/// What unplugging everything gave back: VMM RSS and the hotplug region's
/// resident memory (KiB) before and after.
pub struct Unplugged {
    pub took: Duration,
    pub rss: (u64, u64),
    pub region: (u64, u64),
}

/// Asks for 0 MiB of hotplug memory, waits until all is unplugged and
/// measures the memory before and after (printed).
pub fn unplug_all(g: &mut Guest, sock: &Path) -> Unplugged {
    let (rss_before, region_before) =
        rss_kib(g.pid(), sock).unwrap_or_else(|e| fail(Some(g), "RSS", e));
    request(sock, 0).unwrap_or_else(|e| fail(Some(g), "unplug", e));
    let took = wait_plugged(g, sock, 0).unwrap_or_else(|e| fail(Some(g), "unplug", e));
    let (rss_after, region_after) =
        rss_kib(g.pid(), sock).unwrap_or_else(|e| fail(Some(g), "RSS", e));
    eprintln!(
        "unplugged in {:.2} s; VMM RSS {} -> {} MiB, hotplug region {} -> {} MiB",
        took.as_secs_f64(),
        rss_before >> 10,
        rss_after >> 10,
        region_before >> 10,
        region_after >> 10
    );
    Unplugged {
        took,
        rss: (rss_before, rss_after),
        region: (region_before, region_after),
    }
}

/// Waits for memhp-app's last line and its exit status 0.
pub fn app_done(g: &mut Guest, what: &str) {
    g.wait_for("memhp: done")
        .unwrap_or_else(|e| fail(Some(g), &format!("{what} keeps running"), e));
    let code = g
        .wait_exit()
        .unwrap_or_else(|e| fail(Some(g), &format!("{what} exit"), e));
    assert_eq!(code, 0, "{what}: app exit status\n{}", g.console());
}

/// Spawns a restore (`cmd`, with `--api-sock sock`) and waits for its API.
pub fn spawn_restored(cmd: Command, bin: &Path, sock: &Path, what: &str) -> Guest {
    let unused = sock.with_extension("unused");
    let mut c = Guest::spawn(cmd, &Vmm::Arrow(bin.to_path_buf()), &unused, GUEST_WAIT)
        .unwrap_or_else(|e| fail(None, &format!("starting {what}"), e));
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(60) {
        c.check_alive()
            .unwrap_or_else(|e| fail(Some(&c), &format!("{what} start"), e));
        std::thread::sleep(Duration::from_millis(20));
    }
    c
}

/// How long a restored guest may run in these tests.
const GUEST_WAIT: Duration = Duration::from_secs(900);
