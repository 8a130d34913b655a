//! End-to-end vhost-user-fs: the real guest kernel, the real arrow-vmm
//! (`run --fs myfs=SOCKET`, seccomp on) and a real virtiofsd (installed by
//! `shadowfs::tools::find_or_install_virtiofsd`) serving a host directory.
//!
//! 1. The app reads a host file from the volume and writes one; the host
//!    sees the write. The command line asks ainit for the volume with the
//!    contract's `arrow.vol=fs:myfs:rw:/data`; on a kernel without that
//!    (vfs-guest's patch) the app mounts it itself (tests/apps/fs-app.c).
//! 2. virtiofsd dies under a running guest: arrow-vmm stops with exit code
//!    125 and says which volume's backend closed — no hang, no crash.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use arrow_e2e::{
    boot_with_args, cmdline, explain, initrd, kvm_available, one_guest_at_a_time, static_c_app,
};

const MARKER: &str = "FS-APP: wrote";

struct Virtiofsd(Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virtiofsd(shared: &Path, socket: &Path) -> Virtiofsd {
    let bin = shadowfs::tools::find_or_install_virtiofsd().expect("virtiofsd");
    let child = Command::new(bin)
        .arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared)
        .args(["--sandbox", "namespace", "--cache", "never"])
        .spawn()
        .expect("start virtiofsd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Virtiofsd(child)
}

struct Setup {
    _dir: tempfile::TempDir,
    share: PathBuf,
    socket: PathBuf,
    initrd: PathBuf,
}

fn setup() -> Setup {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here; this test boots the real guest kernel"
    );
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hello from the host\n").unwrap();
    let app = std::fs::read(static_c_app("fs-app", dir.path())).expect("read app");
    let rd = initrd(&app, 0o755, &dir.path().join("app.cpio"));
    Setup {
        socket: dir.path().join("fs.sock"),
        share,
        initrd: rd,
        _dir: dir,
    }
}

#[test]
fn app_reads_a_host_file_and_the_host_sees_its_write() {
    let _one = one_guest_at_a_time();
    let s = setup();
    let _fsd = virtiofsd(&s.share, &s.socket);
    let fs = format!("myfs={}", s.socket.display());
    let run = boot_with_args(
        &s.initrd,
        &cmdline("arrow.vol=fs:myfs:rw:/data"),
        MARKER,
        1,
        &["--fs".as_ref(), fs.as_ref()],
    );
    assert_eq!(run.exit_code, Some(0), "{}", explain(&run));
    assert!(
        run.console_has("FS-APP: read hello from the host"),
        "{}",
        explain(&run)
    );
    assert_eq!(
        std::fs::read_to_string(s.share.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
}

#[test]
fn backend_death_stops_the_vm_with_the_reason() {
    let _one = one_guest_at_a_time();
    let s = setup();
    std::fs::write(s.share.join("wait"), "").unwrap();
    let fsd = virtiofsd(&s.share, &s.socket);
    // Kill virtiofsd once the guest has written through it.
    let written = s.share.join("from-guest.txt");
    let killer = std::thread::spawn(move || {
        let mut fsd = fsd;
        let deadline = Instant::now() + Duration::from_secs(170);
        while !std::fs::read_to_string(&written).is_ok_and(|t| !t.is_empty()) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        let _ = fsd.0.kill();
        let _ = fsd.0.wait();
        true
    });
    let fs = format!("myfs={}", s.socket.display());
    let run = boot_with_args(
        &s.initrd,
        &cmdline("arrow.vol=fs:myfs:rw:/data"),
        "FS-APP: waiting",
        1,
        &["--fs".as_ref(), fs.as_ref()],
    );
    assert!(
        killer.join().unwrap(),
        "the guest never wrote: {}",
        explain(&run)
    );
    assert_eq!(run.exit_code, Some(125), "{}", explain(&run));
    assert!(
        run.stderr.contains("vhost-user-fs myfs: backend") && run.stderr.contains("closed"),
        "{}",
        explain(&run)
    );
}
