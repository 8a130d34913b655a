//! A guest flooding its console cannot fill the host's disk: the console file
//! is rotated under the real seccomp filters (rotation runs on the vCPU thread).

mod common;
use common::*;

#[test]
fn console_flood_is_capped_and_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let o = run_vmm(&[
        "run",
        "--kernel",
        guest_elf().to_str().unwrap(),
        "--cmdline",
        "count=4000",
        "--console",
        console.to_str().unwrap(),
        "--console-max-size",
        "8K",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let cur = std::fs::read_to_string(&console).unwrap();
    let old = std::fs::read_to_string(dir.path().join("console.log.1")).unwrap();
    assert!(
        cur.len() <= 8192 && old.len() <= 8192,
        "{} + {}",
        cur.len(),
        old.len()
    );
    assert!(cur.ends_with("count 4000\n"), "latest output kept: {cur}");
    assert!(old.contains("count "), "{old}");
}
