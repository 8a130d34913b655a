//! The Firecracker side of the memhp bench: boots the same kernel and
//! memhp-app initramfs under Firecracker with its virtio-mem device
//! (`memory-hotplug` in the config file) and drives `/hotplug/memory` on
//! its API socket.
//!
//! Firecracker announces the device like arrow-vmm does, as virtio-mmio on
//! the kernel command line (`virtio_mmio.device=`, appended before the
//! `--` that starts the app's arguments); the guest kernel needs neither
//! ACPI nor PCI for it. The region sits above the 64-bit MMIO window,
//! aligned to Firecracker's 128 MiB slots; unplugged slots are removed
//! from KVM and `mprotect`ed, unplugged blocks `madvise(MADV_DONTNEED)`d.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::vsock_guest::{api, Guest, Vmm, COMPAT_FLAGS};

/// Boots memhp-app (`app_args`) under Firecracker with `boot_mib` of boot
/// memory and a `region_mib` virtio-mem region of 2 MiB blocks (the block
/// size arrow-vmm uses), its API at `sock`. The config file and the log go
/// next to `sock`.
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
    let dir = sock.parent().unwrap_or(Path::new("/tmp"));
    let cfg = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "initrd_path": initrd,
            "boot_args": format!("console=ttyS0 panic=-1 {COMPAT_FLAGS} arrow.app=/app -- {app_args}"),
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": boot_mib },
        "memory-hotplug": {
            "total_size_mib": region_mib,
            "block_size_mib": 2,
            "slot_size_mib": 128,
        },
    });
    let cfg_path = dir.join("firecracker.json");
    std::fs::write(&cfg_path, cfg.to_string())
        .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let log = dir.join("firecracker.log");
    std::fs::write(&log, "").map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--api-sock")
        .arg(sock)
        .arg("--config-file")
        .arg(&cfg_path)
        .args(["--level", "Warn", "--log-path"])
        .arg(&log);
    let unused = sock.with_extension("unused");
    Guest::spawn(cmd, &Vmm::Firecracker(bin.to_path_buf()), &unused, timeout)
}

/// `GET /hotplug/memory`.
pub fn memory(sock: &Path) -> Result<serde_json::Value, String> {
    let (code, body) = api(sock, "GET", "/hotplug/memory", "")?;
    if code != 200 {
        return Err(format!("GET /hotplug/memory: {code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// `PATCH /hotplug/memory` with `requested_size_mib`.
pub fn request(sock: &Path, mib: u64) -> Result<(), String> {
    let (code, body) = api(
        sock,
        "PATCH",
        "/hotplug/memory",
        &format!(r#"{{"requested_size_mib": {mib}}}"#),
    )?;
    if !(200..300).contains(&code) {
        return Err(format!("PATCH /hotplug/memory {mib}: {code} {body}"));
    }
    Ok(())
}

/// Waits until the device reports `mib` plugged (`plugged_size_mib`);
/// returns how long it took.
pub fn wait_plugged(g: &mut Guest, sock: &Path, mib: u64) -> Result<Duration, String> {
    crate::memhp_guest::poll_plugged(g, mib, "plugged_size_mib", || memory(sock))
}

/// Waits until the API socket answers (Firecracker creates it before it
/// reads the config file; the guest is started once it answers).
pub fn wait_api(g: &mut Guest, sock: &Path) -> Result<(), String> {
    loop {
        if sock.exists() && memory(sock).is_ok() {
            return Ok(());
        }
        g.check_alive()
            .map_err(|e| format!("waiting for the API at {}: {e}", sock.display()))?;
        std::thread::sleep(Duration::from_millis(20));
    }
}
