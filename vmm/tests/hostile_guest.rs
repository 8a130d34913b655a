//! A guest that behaves as a hostile virtio driver — random register writes
//! on every device, queues on random memory with random descriptors, every
//! queue notified, round after round — may at most stop its own VM: the VMM
//! ends with an exit code (never a signal, never a hang), and a VM running
//! beside it is untouched. Real KVM, real seccomp filters, every device type
//! arrow-vmm has attached at once.

mod common;
use common::*;
use std::os::unix::process::ExitStatusExt;

const ROUNDS: u64 = 40;

#[test]
fn garbage_on_every_queue_stops_at_most_its_own_vm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let uds = dir.path().join("v.sock");
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![0x5a; 4096]).unwrap();
    let upper = dir.path().join("upper.img");
    std::fs::write(&upper, vec![0; 4096]).unwrap();
    let upper_arg = format!("{},rw", upper.display());
    let elf = s(guest_elf());

    // The bystander: a VM printing a tick at a time for as long as the
    // hostile one runs.
    let bystander = spawn_vmm(&["run", "--kernel", &elf, "--cmdline", "tick=25"]);
    let hostile_args = [
        "run",
        "--kernel",
        &elf,
        "--cmdline",
        &format!("garbage={ROUNDS}"),
        "--vsock-cid",
        "3",
        "--vsock-uds",
        &s(&uds),
        "--pmem",
        &s(&base),
        "--pmem",
        &upper_arg,
        "--memory-hotplug",
        "256M",
    ];
    let o = run_vmm(&hostile_args);
    // Stopped on purpose, the VMM says why on stderr.
    assert_stopped_at_most_its_own_vm(&o, 4, None);

    let b = wait_with_timeout(bystander, GUEST_TIMEOUT);
    assert_eq!(b.status.code(), Some(0), "bystander stderr: {}", stderr(&b));
    assert!(stdout(&b).contains("tick 25 "), "{}", stdout(&b));
}

/// The same hostile driver against vhost-user-fs devices: one connected to
/// a real virtiofsd (random rings are handed to it; it may refuse them or
/// hang up, which stops the VM with the reason) and one slot without a
/// backend. Guest RAM is a memfd here (`--fs`).
#[test]
fn garbage_on_vhost_user_fs_devices_stops_at_most_its_own_vm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let socket = dir.path().join("fs.sock");
    let fsd = arrow_e2e::vfs::virtiofsd(&share, &socket);
    let elf = guest_elf().to_str().unwrap().to_owned();
    let fs = format!("x={}", socket.display());
    let o = run_vmm(&[
        "run",
        "--kernel",
        &elf,
        "--cmdline",
        &format!("garbage={ROUNDS}"),
        "--fs",
        &fs,
        "--fs-slots",
        "1",
    ]);
    drop(fsd);
    eprintln!(
        "hostile fs guest: exit {:?}, last line: {:?}",
        o.status.code(),
        stderr(&o).lines().last()
    );
    assert_stopped_at_most_its_own_vm(&o, 2, Some("vhost-user-fs"));
}

/// The VMM ended with an exit code, not a signal or a panic, within its
/// warning budget: exit 0 after every round with `devices` devices probed,
/// or a deliberate stop (120–125) whose stderr says why (`reason`, or
/// anything when None).
fn assert_stopped_at_most_its_own_vm(o: &std::process::Output, devices: u32, reason: Option<&str>) {
    let (out, err) = (stdout(o), stderr(o));
    assert_eq!(
        o.status.signal(),
        None,
        "the VMM died of a signal: {:?}\nstdout: {out}\nstderr: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{err}");
    // The guest cannot flood the VMM's log (a file on the host under arrowd)
    // either: device warnings stay within their budget (50 per 10 s), so a
    // run this short logs at most two windows' worth.
    let warnings = err.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 2 * arrow_vmm::devices::warn_limit::PER_WINDOW as usize + 2,
        "{warnings} warning lines"
    );
    match o.status.code() {
        // The guest got through every round: the devices refused what was
        // wrong and went on serving.
        Some(0) => assert!(
            out.contains(&format!("garbage round {ROUNDS} devices {devices}")),
            "all {devices} devices probed every round: {out}"
        ),
        Some(c) => assert!(
            (120..=125).contains(&c) && reason.map_or(!err.trim().is_empty(), |r| err.contains(r)),
            "exit {c}, stderr: {err}"
        ),
        None => unreachable!(),
    }
}
