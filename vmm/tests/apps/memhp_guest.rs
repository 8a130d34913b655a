//! Shared by `tests/memhp_kvm.rs` and `benches/memhp.rs`: builds the
//! memhp-app initramfs and drives arrow-vmm's memory-hotplug control API;
//! reads the VMM's resident memory from /proc.
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
    let t = Instant::now();
    loop {
        let m = memory(sock)?;
        if m["plugged_mib"] == mib {
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
