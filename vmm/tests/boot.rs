//! arrow-vmm boots the freestanding test guest on the real /dev/kvm and
//! reports what it did through serial, the notify device and its exit code.

mod common;
use common::*;

#[test]
fn serial_hello_and_clean_exit() {
    let o = run_guest("hello", &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "hello from the arrow test guest\n");
}

#[test]
fn app_exit_status_and_signal_become_the_exit_code() {
    let o = run_guest("exit=3", &[]);
    assert_eq!(o.status.code(), Some(3), "stderr: {}", stderr(&o));
    let o = run_guest("exit=0", &[]);
    assert_eq!(o.status.code(), Some(0));
    let o = run_guest("signal=9", &[]);
    assert_eq!(o.status.code(), Some(137), "killed by signal 9 → 128+9");
}

#[test]
fn guest_reads_cmdline_and_e820_ram_size() {
    let o = run_guest("info", &["--memory", "256M"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("cmdline: info"), "{out}");
    // RAM = 256 MiB minus the MP-table area and the legacy hole below 1 MiB.
    let expected = (256u64 << 20) - 0x60400;
    assert!(out.contains(&format!("ram bytes: {expected}\n")), "{out}");
    if is_nested_pvm_host() {
        assert!(
            out.contains("noxsave clearcpuid=smap,smep,popcnt,cx16 reboot=k rodata=off"),
            "{out}"
        );
    }
    // Explicitly off: the command line is exactly what was given.
    let o = run_guest("info", &["--host-compat", "off"]);
    assert!(stdout(&o).contains("cmdline: info\n"), "{}", stdout(&o));
}

#[test]
fn large_memory_is_split_around_the_mmio_gap() {
    // 4 GiB of RAM: 3.25 GiB below the gap, 0.75 GiB above 4 GiB. Untouched
    // guest memory costs the host nothing.
    let o = run_guest("info", &["--memory", "4G"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("e820 entries: 4 "), "{out}");
    assert!(
        out.contains(&format!("ram bytes: {}\n", (4u64 << 30) - 0x60400)),
        "{out}"
    );
}

#[test]
fn two_vcpus_come_up() {
    let o = run_guest("smp", &["--vcpus", "2"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("mp table cpus: 2\n"), "{out}");
    assert!(
        out.contains("cpus up: 2\n"),
        "the second vCPU must run: {out}"
    );
}

#[test]
fn triple_fault_ends_the_vm_with_its_code() {
    let o = run_guest("triple", &[]);
    assert_eq!(o.status.code(), Some(122), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("triple fault (KVM_EXIT_SHUTDOWN) on vCPU 0 at rip 0x"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_ports_and_mmio_are_ignored() {
    let o = run_guest("ports", &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("unknown port reads: 0x00000000000000ff 0x00000000ffffffff mmio: 0x0000000000000000\nstill running\n"),
        "{out}"
    );
}

#[test]
fn panic_reset_and_halt_have_their_codes() {
    let o = run_guest("panic", &[]);
    assert_eq!(o.status.code(), Some(123), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("GUEST_PANIC"));
    let o = run_guest("reset", &[]);
    assert_eq!(o.status.code(), Some(121), "stderr: {}", stderr(&o));
    let o = run_guest("halt", &["--vcpus", "2"]);
    assert_eq!(o.status.code(), Some(120), "stderr: {}", stderr(&o));
}

#[test]
fn emulation_failure_is_reported_with_instruction_bytes() {
    let o = run_guest("popcnt", &[]);
    if is_nested_pvm_host() {
        assert_eq!(o.status.code(), Some(124), "stderr: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("KVM_EXIT_INTERNAL_ERROR"), "{err}");
        assert!(err.contains("instruction bytes [f3 48 0f b8 c0"), "{err}");
    } else {
        println!("host has hardware virtualization: popcnt runs natively, checking that instead");
        assert_eq!(o.status.code(), Some(0));
        assert!(stdout(&o).contains("popcnt: 8\n"));
    }
}

#[test]
fn sigterm_stops_the_vm() {
    require_kvm();
    let elf = guest_elf();
    let child = std::process::Command::new(vmm_bin())
        .args([
            "run",
            "--console",
            "none",
            "--cmdline",
            "count=100000000",
            "--kernel",
        ])
        .arg(elf)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = wait_with_timeout(child, std::time::Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(143), "stderr: {}", stderr(&o));
}

#[test]
fn report_has_timings_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let o = run_guest("hello", &["--report", report.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["exit_code"], 0);
    assert!(r["first_kvm_run_cpu_us"].as_u64().unwrap() > 0);
    assert!(r["app_started_us"].as_u64().unwrap() >= r["first_kvm_run_wall_us"].as_u64().unwrap());
    assert!(r["vmm_rss_kib"].as_u64().unwrap() > 0);
}

#[test]
fn vsock_device_is_announced_and_answers_on_mmio() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let o = run_guest(
        "virtio",
        &["--vsock-cid", "3", "--vsock-uds", uds.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("virtio magic 0x0000000074726976 version 2 device 19\n"),
        "{out}"
    );
    assert!(out.contains("virtio_mmio.device=4K@0xd0000000:5"), "{out}");
    assert!(uds.exists(), "the host side listens on --vsock-uds");
}

/// Two pmem devices: a read-only base and a writable upper. The guest reads
/// each window's config, maps it, reads the file's bytes and writes one:
/// the write is dropped for the read-only device (KVM read-only slot) and
/// reaches the file for the writable one.
#[test]
fn pmem_windows_map_the_files_read_only_and_read_write() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    let upper = dir.path().join("upper.img");
    std::fs::write(&base, b"hello base").unwrap();
    let mut u = b"upper data".to_vec();
    u.resize(4096, 0);
    std::fs::write(&upper, &u).unwrap();
    let upper_arg = format!("{},rw", upper.display());
    let o = run_guest(
        "pmem",
        &["--pmem", base.to_str().unwrap(), "--pmem", &upper_arg],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "pmem start 0x0000000100000000 size 0x0000000000200000 data 'hello base' after write 'e'\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "pmem start 0x0000000108000000 size 0x0000000000200000 data 'upper data' after write 'W'\n"
        ),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&base).unwrap(),
        b"hello base",
        "base untouched"
    );
    assert_eq!(&std::fs::read(&upper).unwrap()[..10], b"uWper data");
}

#[test]
fn pmem_bad_files_fail_before_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let o = run_guest("hello", &["--pmem", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    assert!(err.contains("cannot open pmem file"), "{err}");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let o = run_guest("hello", &["--pmem", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("is empty"), "{}", stderr(&o));
}
