//! Bad input never panics: clear message, exit code 125.

mod common;
use common::*;

fn fails_with(args: &[&str], needle: &str) {
    let o = run_vmm(args);
    assert_eq!(
        o.status.code(),
        Some(125),
        "{args:?}: stderr {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(needle),
        "{args:?}: stderr {}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn bad_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notelf");
    std::fs::write(&text, "not a kernel").unwrap();
    fails_with(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot open kernel",
    );
    fails_with(
        &["run", "--kernel", text.to_str().unwrap()],
        "is not an ELF file",
    );
    fails_with(&["run", "--kernel", "/bin/ls"], "not a bootable vmlinux");
    // A 32-bit ELF: take the test guest and flip its class byte.
    let mut elf = std::fs::read(guest_elf()).unwrap();
    elf[4] = 1;
    let elf32 = dir.path().join("elf32");
    std::fs::write(&elf32, elf).unwrap();
    fails_with(&["run", "--kernel", elf32.to_str().unwrap()], "32-bit");
}

#[test]
fn bad_sizes_and_counts() {
    let k = guest_elf().to_str().unwrap().to_string();
    fails_with(
        &["run", "--kernel", &k, "--memory", "0"],
        "--memory must be at least",
    );
    fails_with(
        &["run", "--kernel", &k, "--memory", "64T"],
        "more than this host has",
    );
    fails_with(
        &["run", "--kernel", &k, "--memory", "12X"],
        "invalid size unit",
    );
    fails_with(
        &["run", "--kernel", &k, "--vcpus", "0"],
        "--vcpus must be at least 1",
    );
    fails_with(
        &["run", "--kernel", &k, "--vcpus", "250"],
        "more than this host's KVM allows",
    );
    fails_with(
        &["run", "--kernel", &k, "--initrd", "/nonexistent"],
        "cannot read initrd",
    );
    fails_with(
        &["run", "--kernel", &k, "--memory", "2M"],
        "does not fit in guest memory",
    );
    fails_with(
        &["run", "--kernel", &k, "--cpuid-clear", "7:zz:1"],
        "invalid --cpuid-clear",
    );
    fails_with(&["run"], "--kernel");
}

#[test]
fn help_exits_zero() {
    let o = std::process::Command::new(vmm_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--memory"));
}
