//! End-to-end: the Arrow guest kernel (guest-kernel/build.sh, cached) booted by
//! the real `arrow-vmm` with a static test app as the image initrd.
//!
//! Each boot takes ~25 s alone on a nested-PVM host (see docs/guest-kernel.md);
//! guests run one at a time, each under a timeout (ARROW_E2E_TIMEOUT, 180 s).
//! Without a usable /dev/kvm the tests fail with the reason.

use std::time::Duration;

use arrow_e2e::{
    boot, boot_with_vcpus, cmdline, explain, initrd, kvm_available, one_guest_at_a_time,
    static_c_app,
};

const MARKER: &str = "ARROW-E2E: hello";

fn app_bytes(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(static_c_app("e2e-app", dir)).expect("read app")
}

/// These tests exist to boot the real guest: without a usable /dev/kvm they
/// fail with the reason instead of passing without a boot.
fn skip() -> bool {
    assert!(
        kvm_available(),
        "e2e: /dev/kvm is not usable here (missing or no permission); these tests boot the real guest kernel and need it"
    );
    false
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// The app runs as PID 1 with argv, env and hostname from the command line,
/// finds /proc, /sys, /dev and /tmp, prints to the console, and its exit
/// status 3 becomes arrow-vmm's exit code. Prints the boot time.
#[test]
fn app_runs_as_pid1_and_its_exit_status_is_the_vmm_exit_code() {
    if skip() {
        return;
    }
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(&app_bytes(dir.path()), 0o755, &dir.path().join("app.cpio"));
    let run = boot(
        &rd,
        &cmdline("arrow.hostname=e2e-host GREETING=\"hello world\" -- first 3"),
        MARKER,
    );
    eprintln!(
        "e2e boot: APP_STARTED after {} (arrow-vmm), first app line after {}, whole run {:.2} s",
        secs(run.app_started),
        secs(run.first_marker_line),
        run.wall.as_secs_f64()
    );
    assert_eq!(run.exit_code, Some(3), "{}", explain(&run));
    assert!(
        run.console_has("ARROW-E2E: hello pid=1 host=e2e-host argc=3"),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("ARROW-E2E: argv[0]=/app"),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("ARROW-E2E: argv[1]=first"),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("ARROW-E2E: env GREETING=hello world"),
        "{}",
        explain(&run)
    );
    assert!(
        run.console_has("ARROW-E2E: mounts proc=1 sys=1 dev=1 tmp=1 console=1"),
        "{}",
        explain(&run)
    );
    // Kernel flags (e.g. the nested-PVM ones arrow-vmm adds) never reach argv.
    assert!(!run.console_has("argv[3]"), "{}", explain(&run));
    assert!(
        run.app_started.is_some(),
        "no APP_STARTED recorded\n{}",
        explain(&run)
    );
}

/// A missing app is reported through anotify as status 127; no hang.
#[test]
fn missing_app_exits_127() {
    if skip() {
        return;
    }
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(&app_bytes(dir.path()), 0o755, &dir.path().join("app.cpio"));
    let run = boot(&rd, &cmdline("arrow.app=/does-not-exist"), MARKER);
    assert_eq!(run.exit_code, Some(127), "{}", explain(&run));
    assert!(
        run.console_has("ainit: cannot execute /does-not-exist"),
        "{}",
        explain(&run)
    );
}

/// An app without execute permission is reported as status 126; no hang.
#[test]
fn non_executable_app_exits_126() {
    if skip() {
        return;
    }
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(&app_bytes(dir.path()), 0o644, &dir.path().join("app.cpio"));
    let run = boot(&rd, &cmdline(""), MARKER);
    assert_eq!(run.exit_code, Some(126), "{}", explain(&run));
}

/// An app killed by a signal: APP_EXITED with the signal bit, arrow-vmm
/// exits 128 + 11. Runs on two vCPUs.
#[test]
fn app_killed_by_sigsegv_exits_139() {
    if skip() {
        return;
    }
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let rd = initrd(&app_bytes(dir.path()), 0o755, &dir.path().join("app.cpio"));
    // Two vCPUs: the kernel must find both in the MP table and bring the
    // second up (INIT/SIPI) before the app runs.
    let run = boot_with_vcpus(&rd, &cmdline("-- segv"), MARKER, 2);
    assert_eq!(run.exit_code, Some(139), "{}", explain(&run));
    assert!(run.console_has(MARKER), "{}", explain(&run));
    assert!(
        run.console_has("ARROW-E2E: cpus online=2"),
        "{}",
        explain(&run)
    );
}
