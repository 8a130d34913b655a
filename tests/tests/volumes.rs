//! End-to-end volumes on cold boots: the real guest kernel's ainit mounts
//! `arrow.vol=` volumes before it runs the app (0011-ainit-volumes.patch).
//!
//! Two boots, one at a time:
//! 1. a packed EROFS image (a directory and a single file, made with the
//!    shadowfs crate's mkfs.erofs) on virtio-pmem: the app reads both at
//!    their guest paths (a directory mount point and a file mount point
//!    that ainit creates) and cannot write either (EROFS) — status 31;
//! 2. a virtio-fs volume whose tag no device has: the app never runs, the
//!    guest exits 125 with "ainit: volume fs:TAG at PATH: error N".
//!
//! Generic-template clones with volumes: tests/tests/generic_template.rs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use arrow_e2e::{
    boot_vmm, cmdline, explain, initrd, kvm_available, one_guest_at_a_time, sample_volume_pack,
    static_c_app, SAMPLE_CONF as CONF, SAMPLE_TOKEN as TOKEN,
};

const MARKER: &str = "VOLUME-APP: status";

fn app_initrd(dir: &Path) -> PathBuf {
    let app = std::fs::read(static_c_app("volume-app", dir)).expect("volume-app");
    initrd(&app, 0o755, &dir.join("initrd.cpio"))
}

#[test]
fn cold_boot_mounts_packed_volumes_read_only_and_fails_on_a_missing_tag() {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here (missing or no permission); this test boots the real guest kernel"
    );
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = sample_volume_pack(dir.path());
    let initrd = app_initrd(dir.path());
    let mut pmem = pack.into_os_string();
    pmem.push(",ro");
    let args: Vec<OsString> = vec![
        "--initrd".into(),
        initrd.clone().into(),
        "--pmem".into(),
        pmem,
    ];

    // 1. Pack volumes: a directory at /config, a single file at /etc/token
    //    (neither exists in the initramfs: ainit creates both mount points).
    let run = boot_vmm(
        &args,
        &cmdline(
            "arrow.volpack=/dev/pmem0 arrow.vol=pack:0:ro:/config arrow.vol=pack:1:ro:/etc/token",
        ),
        MARKER,
        1,
    );
    eprintln!(
        "volumes boot 1: APP_STARTED after {:?}, whole run {:.1} s",
        run.app_started,
        run.wall.as_secs_f64()
    );
    assert!(
        run.console_has(&format!("VOLUME-APP: /config/app.conf={CONF}")),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has(&format!("VOLUME-APP: /etc/token={TOKEN}")),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("VOLUME-APP: write /config/new-file: Read-only file system"),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("VOLUME-APP: write /etc/token: Read-only file system"),
        "{}",
        explain(&run)
    );
    assert_eq!(run.exit_code, Some(31), "{}", explain(&run));

    // 2. A virtio-fs tag no device has: ainit stops before the app.
    let run = boot_vmm(
        &args,
        &cmdline("arrow.vol=fs:nosuchtag:rw:/data"),
        "ainit: volume",
        1,
    );
    assert_eq!(run.exit_code, Some(125), "{}", explain(&run));
    assert!(
        run.console_has("ainit: volume fs:nosuchtag at /data: error -"),
        "{}",
        explain(&run)
    );
    assert!(
        !run.console_has("VOLUME-APP"),
        "the app never ran: {}",
        explain(&run)
    );
}
