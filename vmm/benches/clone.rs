//! Clone benchmark with the real `arrow-vmm` (release) and the test guest:
//! a template is booted, paused and snapshotted once; then
//! - clone start: 50 clones one after another, VMM side = process start →
//!   first KVM_RUN (from `--report`), and spawn → control socket up (external);
//! - private memory of idle clones (Private_* of /proc/PID/smaps_rollup);
//! - 100 clones started back to back and left running together;
//! - pooled clones (what arrowd's warm pool holds): `restore --clone --pool`
//!   spawned ahead; timed = `PUT /vm/start` sent → answered (the VM runs),
//!   and the VMM's own `start_us`.
//!
//! Prints a table and writes target/bench-results/clone.json. Goals for
//! later turns: clone ≤ 2 ms VMM-side, ≤ 1 MiB private per idle clone.
//!
//! With `FIRECRACKER_BIN` set (a Firecracker built from source), a second
//! section compares arrow-vmm's clone with Firecracker's snapshot restore
//! of the same real Linux guest (kernel from guest-kernel/build.sh or
//! `ARROW_KERNEL`, vsock-echo initramfs), in the same invocation; see
//! clone/real_linux.rs. `ARROW_BENCH_LINUX_RUNS` sets its restores per VMM
//! (default 50). Without `FIRECRACKER_BIN` the section is skipped and the
//! output says so.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "clone/real_linux.rs"]
mod real_linux;
#[path = "../tests/apps/vsock_guest.rs"]
mod vsock_guest;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn private_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn start_clone(tpl: &Path, dir: &Path, i: usize) -> (Child, PathBuf, PathBuf, Instant) {
    let sock = dir.join(format!("c{i}.sock"));
    let report = dir.join(format!("c{i}.json"));
    let t = Instant::now();
    let child = common::spawn_vmm(&[
        "restore",
        "--from",
        tpl.to_str().unwrap(),
        "--clone",
        "--console",
        "none",
        "--api-sock",
        sock.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    (child, sock, report, t)
}

/// A pooled clone, spawned and waiting in `pooled` state.
fn pooled_clone(tpl: &Path, dir: &Path, i: usize) -> (Child, PathBuf) {
    let sock = dir.join(format!("p{i}.sock"));
    let child = common::spawn_vmm(&[
        "restore",
        "--from",
        tpl.to_str().unwrap(),
        "--clone",
        "--pool",
        "--console",
        "none",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    wait_pooled(&sock);
    (child, sock)
}

fn wait_pooled(sock: &Path) {
    common::wait_for_path(sock, T);
    let t = Instant::now();
    while common::api(sock, "GET", "/vm", None).1["state"] != "pooled" {
        assert!(t.elapsed() < T, "{} never got pooled", sock.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn stop_clone(child: Child, sock: &Path) {
    common::api(sock, "PUT", "/vm/shutdown", None);
    let o = common::wait_with_timeout(child, T);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
}

fn main() {
    common::require_kvm();
    let runs: usize = std::env::var("ARROW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let elf = common::guest_elf().to_str().unwrap().to_string();
    let tpl = dir.path().join("template");
    let sock = dir.path().join("tpl.sock");
    let child = common::spawn_vmm(&[
        "run",
        "--kernel",
        &elf,
        "--cmdline",
        "idle",
        "--memory",
        "128M",
        "--console",
        "none",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    common::wait_for_path(&sock, T);
    std::thread::sleep(Duration::from_millis(200));
    let (st, v) = common::api(
        &sock,
        "PUT",
        "/vm/snapshot",
        Some(&format!(r#"{{"dir":"{}"}}"#, tpl.display())),
    );
    assert_eq!(st, 200, "{v}");
    stop_clone(child, &sock);

    // Clone start, one at a time.
    let (mut vmm_side, mut cpu, mut external) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let (child, sock, report, t) = start_clone(&tpl, dir.path(), i);
        common::wait_for_path(&sock, T);
        external.push(t.elapsed().as_micros() as u64);
        stop_clone(child, &sock);
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        vmm_side.push(r["first_kvm_run_wall_us"].as_u64().unwrap());
        cpu.push(r["first_kvm_run_cpu_us"].as_u64().unwrap());
    }

    // 100 clones back to back, all running at the end; memory of idle ones.
    let t = Instant::now();
    let clones: Vec<_> = (0..100)
        .map(|i| start_clone(&tpl, dir.path(), 1000 + i))
        .collect();
    for (_, sock, _, _) in &clones {
        common::wait_for_path(sock, T);
    }
    let hundred_ms = t.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(500));
    let mut private: Vec<u64> = clones.iter().map(|(c, ..)| private_kib(c.id())).collect();
    for (child, sock, _, _) in clones {
        stop_clone(child, &sock);
    }

    // Pooled clones: the pool is filled ahead (up to 10 waiting), then
    // each start is timed from the request to its answer.
    let (mut pooled_req, mut pooled_vmm) = (vec![], vec![]);
    let mut pool: std::collections::VecDeque<_> = (0..10.min(runs))
        .map(|i| pooled_clone(&tpl, dir.path(), i))
        .collect();
    for i in 0..runs {
        let Some((child, sock)) = pool.pop_front() else {
            break;
        };
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        let (st, v) = common::api(&sock, "PUT", "/vm/start", None);
        pooled_req.push(t.elapsed().as_micros() as u64);
        assert_eq!(st, 200, "{v}");
        pooled_vmm.push(v["start_us"].as_u64().unwrap());
        stop_clone(child, &sock);
        if i + 10 < runs {
            pool.push_back(pooled_clone(&tpl, dir.path(), i + 10));
        }
    }

    for v in [
        &mut vmm_side,
        &mut cpu,
        &mut external,
        &mut private,
        &mut pooled_req,
        &mut pooled_vmm,
    ] {
        v.sort_unstable();
    }
    println!("arrow-vmm clones of a 128 MiB / 1 vCPU idle test-guest template ({runs} sequential, 100 concurrent)");
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "metric", "unit", "p50", "p99", "max", "goal"
    );
    let mut json = serde_json::Map::new();
    for (name, unit, v, goal) in [
        ("clone_main_to_first_kvm_run", "µs", &vmm_side, "≤2000"),
        ("clone_cpu_to_first_kvm_run", "µs", &cpu, "-"),
        ("clone_spawn_to_api_socket", "µs", &external, "-"),
        ("private_memory_per_idle_clone", "KiB", &private, "≤1024"),
        (
            "pooled_start_request_to_running",
            "µs",
            &pooled_req,
            "≤2000",
        ),
        ("pooled_start_vmm_side", "µs", &pooled_vmm, "-"),
    ] {
        let (p50, p99, max) = (percentile(v, 0.5), percentile(v, 0.99), v[v.len() - 1]);
        println!("{name:<34} {unit:>6} {p50:>9} {p99:>9} {max:>9} {goal:>9}");
        json.insert(
            name.into(),
            serde_json::json!({"unit": unit, "p50": p50, "p99": p99, "max": max, "n": v.len()}),
        );
    }
    println!(
        "{:<34} {:>6} {:>9}",
        "hundred_clones_back_to_back", "ms", hundred_ms
    );
    json.insert(
        "hundred_clones_back_to_back_ms".into(),
        serde_json::json!(hundred_ms),
    );

    // Real Linux template, arrow-vmm and Firecracker side by side.
    match vsock_guest::firecracker_bin() {
        Err(why) => {
            println!("real-Linux comparison with Firecracker: skipped: {why}");
            json.insert(
                "real_linux_template".into(),
                serde_json::json!({ "skipped": why }),
            );
        }
        Ok(fc) => {
            let runs: usize = std::env::var("ARROW_BENCH_LINUX_RUNS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or(50);
            eprintln!("clone bench: real-Linux section: guest kernel and initramfs");
            let kernel = vsock_guest::kernel().unwrap_or_else(|e| panic!("guest kernel: {e}"));
            let initrd = vsock_guest::initrd(dir.path())
                .unwrap_or_else(|e| panic!("building the initrd: {e}"));
            let r = real_linux::run(Path::new(common::vmm_bin()), &fc, &kernel, &initrd, runs);
            real_linux::report(&r, &mut json);
        }
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("clone.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("JSON: {}", path.display());
}
