//! End-to-end volumes on cold boots: the real guest kernel's ainit mounts
//! `arrow.vol=` volumes before it runs the app (0011-ainit-volumes.patch).
//!
//! Seven boots, one at a time:
//! 1. a packed EROFS image (a directory and a single file, made with the
//!    shadowfs crate's mkfs.erofs) on virtio-pmem: the app reads both at
//!    their guest paths (a directory mount point and a file mount point
//!    that ainit creates) and cannot write either (EROFS) — status 31;
//! 2. a virtio-fs volume whose tag no device has: the app never runs, the
//!    guest exits 125 with "ainit: volume fs:TAG at PATH: error N";
//! 3. a shadowfs root whose /var/run links to /run: a volume at
//!    /var/run/secrets/token lands in /run/secrets/token (links are followed
//!    inside the app's root, as runc does);
//! 4. a mount point under a link to /proc/sys: refused (exit 125, EPERM),
//!    a volume never covers the kernel's filesystems;
//! 5. a mount point that is a dangling link: refused (EEXIST), its target is
//!    never created;
//! 6. a writable virtio-fs volume (arrow-vmm `--fs`, a real virtiofsd):
//!    ainit mounts it, the app reads the host's file and writes one the
//!    host sees;
//! 7. the same read-only: the app reads it, every write fails with EROFS.
//!
//! Generic-template clones with volumes: tests/tests/generic_template.rs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_e2e::{
    boot_vmm, cmdline, explain, initrd, kvm_available, one_guest_at_a_time, sample_volume_pack,
    static_c_app, Run, SAMPLE_CONF as CONF, SAMPLE_TOKEN as TOKEN,
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
    assert_refused(&run, "ainit: volume fs:nosuchtag at /data: error -");
}

/// An image base (EROFS, mkfs.erofs from a real tree) with the app at /app
/// and links: /var/run -> ../run (as in Debian images), /escape -> /proc/sys,
/// /dangling -> /made-through-a-link (which does not exist).
fn base_with_links(dir: &Path) -> PathBuf {
    let tree = dir.join("root");
    std::fs::create_dir_all(tree.join("var")).expect("mkdir var");
    std::fs::create_dir_all(tree.join("run")).expect("mkdir run");
    std::fs::copy(static_c_app("volume-app", dir), tree.join("app")).expect("copy the app");
    std::os::unix::fs::symlink("../run", tree.join("var/run")).expect("link var/run");
    std::os::unix::fs::symlink("/proc/sys", tree.join("escape")).expect("link escape");
    std::os::unix::fs::symlink("/made-through-a-link", tree.join("dangling"))
        .expect("link dangling");
    let mkfs = shadowfs::tools::find_or_install(shadowfs::tools::MKFS_EROFS)
        .expect("mkfs.erofs (erofs-utils)");
    let out = dir.join("base.erofs");
    shadowfs::tools::run(
        Command::new(mkfs)
            .args(["--quiet", "-T0", "--all-root", "-x-1", "-Enoinline_data"])
            .arg(&out)
            .arg(&tree),
        "building the image base",
    )
    .expect("mkfs.erofs");
    out
}

#[test]
fn mount_points_follow_links_inside_the_root_but_never_onto_proc() {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here (missing or no permission); this test boots the real guest kernel"
    );
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base_with_links(dir.path());
    let pack = sample_volume_pack(dir.path());
    let ro = |p: PathBuf| {
        let mut s = p.into_os_string();
        s.push(",ro");
        s
    };
    let args: Vec<OsString> = vec!["--pmem".into(), ro(base), "--pmem".into(), ro(pack)];
    let root = "arrow.base=/dev/pmem0 arrow.volpack=/dev/pmem1";

    // 3. Through /var/run -> ../run: the token lands in /run/secrets/token.
    let run = boot_vmm(
        &args,
        &cmdline(&format!(
            "{root} arrow.vol=pack:0:ro:/config arrow.vol=pack:1:ro:/var/run/secrets/token \
             -- /config /config/app.conf /run/secrets/token"
        )),
        MARKER,
        1,
    );
    assert!(
        run.console_has(&format!("VOLUME-APP: /run/secrets/token={TOKEN}")),
        "{}",
        explain(&run)
    );
    assert_eq!(run.exit_code, Some(31), "{}", explain(&run));

    // 4. Through /escape -> /proc/sys: refused before anything is mounted.
    let run = boot_vmm(
        &args,
        &cmdline(&format!("{root} arrow.vol=pack:0:ro:/escape/x")),
        "ainit: volume",
        1,
    );
    assert_refused(&run, "ainit: volume pack:0 at /escape/x: error -1");

    // 5. A dangling link as the mount point of a single file: not followed.
    let run = boot_vmm(
        &args,
        &cmdline(&format!("{root} arrow.vol=pack:1:ro:/dangling")),
        "ainit: volume",
        1,
    );
    assert_refused(&run, "ainit: volume pack:1 at /dangling: error -17");
}

#[test]
fn virtio_fs_volumes_are_mounted_by_ainit_writable_or_read_only() {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here (missing or no permission); this test boots the real guest kernel"
    );
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("mkdir share");
    std::fs::write(share.join("hello.txt"), "hello from the host\n").expect("write hello");
    let socket = dir.path().join("fs.sock");
    let initrd = app_initrd(dir.path());
    // The app's arguments: the volume, a file in it (read twice), and for
    // the writable volume a file to write.
    let app_args = "-- /data /data/hello.txt /data/hello.txt";

    // 6. Writable: the write reaches the host directory.
    let run = {
        let _fsd = arrow_e2e::vfs::virtiofsd(&share, &socket);
        let args: Vec<OsString> = vec![
            "--initrd".into(),
            initrd.clone().into(),
            "--fs".into(),
            format!("vol0={}", socket.display()).into(),
        ];
        boot_vmm(
            &args,
            &cmdline(&format!(
                "arrow.vol=fs:vol0:rw:/data {app_args} /data/from-guest"
            )),
            MARKER,
            1,
        )
    };
    assert!(
        run.console_has("VOLUME-APP: /data/hello.txt=hello from the host"),
        "{}",
        explain(&run)
    );
    // Read (1, 2), regular file (16), written (32); the writes are allowed.
    assert_eq!(run.exit_code, Some(51), "{}", explain(&run));
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).expect("the guest's file on the host"),
        "written by the guest\n"
    );
    assert!(share.join("new-file").is_file(), "{}", explain(&run));

    // 7. Read-only: the same volume, every write refused.
    std::fs::remove_file(share.join("new-file")).expect("rm new-file");
    let _ = std::fs::remove_file(&socket);
    let run = {
        let _fsd = arrow_e2e::vfs::virtiofsd(&share, &socket);
        let args: Vec<OsString> = vec![
            "--initrd".into(),
            initrd.into(),
            "--fs".into(),
            format!("vol0={}", socket.display()).into(),
        ];
        boot_vmm(
            &args,
            &cmdline(&format!("arrow.vol=fs:vol0:ro:/data {app_args}")),
            MARKER,
            1,
        )
    };
    assert!(
        run.console_has("VOLUME-APP: write /data/new-file: Read-only file system"),
        "{}",
        explain(&run)
    );
    assert_eq!(run.exit_code, Some(31), "{}", explain(&run));
    assert!(
        !share.join("new-file").exists(),
        "nothing written on the host"
    );
}

/// ainit refused a volume: exit 125, `line` on the console, the app never ran.
fn assert_refused(run: &Run, line: &str) {
    assert_eq!(run.exit_code, Some(125), "{}", explain(run));
    assert!(run.console_has(line), "{}", explain(run));
    assert!(
        !run.console_has("VOLUME-APP"),
        "the app never ran: {}",
        explain(run)
    );
}
