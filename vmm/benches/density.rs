//! Density benchmark: how many idle clones of one real-Linux template
//! (guest kernel from guest-kernel/build.sh, vsock-echo listening on port
//! 5000, 1 vCPU / 128 MiB) this host keeps alive together, each still
//! answering a vsock echo, and what one idle clone costs the host.
//!
//! ```text
//! cargo bench -p arrow-vmm --bench density            # N = 200
//! ARROW_DENSITY_N=50 cargo bench -p arrow-vmm --bench density
//! ```
//! Clones are started `BATCH` at a time (`restore --clone`, each with its
//! own CID and socket); once all run, each must echo a message (retried
//! until `VERIFY_TIMEOUT`: the emulated guest kernel first handles the vsock
//! reset). The largest N reached with every clone answering is reported;
//! the first clone that cannot start or answer ends the ramp. After
//! `SETTLE`, per clone: PSS (guest memory included), private bytes
//! (Private_Clean + Private_Dirty), and CPU used over `CPU_WINDOW` while
//! idle. Prints a table, writes target/bench-results/density.json.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/apps/vsock_guest.rs"]
mod vsock_guest;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vsock_guest::{api_sock, echo_once, Guest, Vmm, ECHO_PORT, ECHO_READY};

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
const BATCH: usize = 10;
const SETTLE: Duration = Duration::from_secs(5);
const CPU_WINDOW: Duration = Duration::from_secs(10);

struct Clone {
    child: Child,
    vsock: PathBuf,
}

impl Drop for Clone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (PSS, Private_Clean + Private_Dirty) of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    )
}

/// utime + stime of a process (all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After ')': state is index 0, so utime (field 14) is 11, stime 12.
    get(11) + get(12)
}

fn mem_available_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn template(bin: &Path, kernel: &Path, initrd: &Path, dir: &Path) -> (PathBuf, f64) {
    let uds = dir.join("tpl.vsock");
    let snap = dir.join("template");
    let mut g = Guest::boot(
        &Vmm::Arrow(bin.to_path_buf()),
        kernel,
        initrd,
        &uds,
        "--exec /vsock-echo --port 5000",
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("template boot: {e}"));
    let ready = g
        .wait_for(ECHO_READY)
        .unwrap_or_else(|e| panic!("template: {e}\n{}", g.console()));
    std::thread::sleep(Duration::from_secs(2));
    let body = serde_json::json!({ "dir": snap }).to_string();
    match vsock_guest::api(&api_sock(&uds), "PUT", "/vm/snapshot", &body) {
        Ok((200, _)) => {}
        other => panic!("template snapshot: {other:?}"),
    }
    let _ = vsock_guest::api(&api_sock(&uds), "PUT", "/vm/shutdown", "");
    g.kill();
    (snap, ready.as_secs_f64())
}

fn start_clone(bin: &Path, tpl: &Path, dir: &Path, i: usize) -> Result<Clone, String> {
    let vsock = dir.join(format!("c{i}.vsock"));
    let log = std::fs::File::create(dir.join(format!("c{i}.log"))).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("restore")
        .arg("--from")
        .arg(tpl)
        .arg("--clone")
        .args(["--vsock-cid", &(100 + i).to_string(), "--vsock-uds"])
        .arg(&vsock)
        .args(["--console", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn clone {i}: {e}"))?;
    Ok(Clone { child, vsock })
}

fn verify(c: &mut Clone, i: usize) -> Result<(), String> {
    let t = Instant::now();
    let msg = format!("density clone {i}\n");
    loop {
        match echo_once(&c.vsock, ECHO_PORT, msg.as_bytes(), Duration::from_secs(30)) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if let Ok(Some(st)) = c.child.try_wait() {
                    return Err(format!("clone {i} exited ({st}): {e}"));
                }
                if t.elapsed() > VERIFY_TIMEOUT {
                    return Err(format!("clone {i} did not echo: {e}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn main() {
    if let Err(e) = vsock_guest::check_kvm() {
        panic!("density bench needs KVM: {e}");
    }
    let n: usize = std::env::var("ARROW_DENSITY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(200);
    let bin = PathBuf::from(common::vmm_bin());
    let tmp = tempfile::Builder::new()
        .prefix("arrow-density-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path();
    let kernel = vsock_guest::kernel().unwrap_or_else(|e| panic!("guest kernel: {e}"));
    let initrd = vsock_guest::initrd(dir).unwrap_or_else(|e| panic!("initrd: {e}"));
    eprintln!("density: booting the template (real guest kernel)");
    let (tpl, boot_s) = template(&bin, &kernel, &initrd, dir);
    let avail_before = mem_available_kib();

    let mut clones: Vec<Clone> = Vec::new();
    let mut verified = 0usize;
    let mut stopped_by = None;
    let t = Instant::now();
    'ramp: while clones.len() < n {
        let from = clones.len();
        for i in from..(from + BATCH).min(n) {
            match start_clone(&bin, &tpl, dir, i) {
                Ok(c) => clones.push(c),
                Err(e) => {
                    stopped_by = Some(e);
                    break 'ramp;
                }
            }
        }
        for (i, c) in clones.iter_mut().enumerate().skip(from) {
            if let Err(e) = verify(c, i) {
                stopped_by = Some(e);
                break 'ramp;
            }
            verified = i + 1;
        }
        eprintln!(
            "density: {verified} clones answering ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    let ramp_s = t.elapsed().as_secs_f64();
    clones.truncate(verified);
    std::thread::sleep(SETTLE);
    let avail_after = mem_available_kib();
    let ticks0: Vec<u64> = clones.iter().map(|c| cpu_ticks(c.child.id())).collect();
    std::thread::sleep(CPU_WINDOW);
    let hz = 100.0; // USER_HZ on Linux x86-64
    let mut cpu_pct: Vec<f64> = clones
        .iter()
        .zip(&ticks0)
        .map(|(c, t0)| {
            (cpu_ticks(c.child.id()).saturating_sub(*t0)) as f64 / hz / CPU_WINDOW.as_secs_f64()
                * 100.0
        })
        .collect();
    let (mut pss, mut private): (Vec<f64>, Vec<f64>) = clones
        .iter()
        .map(|c| {
            let (p, q) = memory_kib(c.child.id());
            (p as f64, q as f64)
        })
        .unzip();
    // Still alive and answering at the end?
    let mut alive_at_end = 0;
    for (i, c) in clones.iter_mut().enumerate() {
        if verify(c, i).is_ok() {
            alive_at_end += 1;
        }
    }
    for v in [&mut pss, &mut private, &mut cpu_pct] {
        v.sort_by(f64::total_cmp);
    }
    let used_kib = avail_before.saturating_sub(avail_after) as f64;
    let per_clone_host_kib = if verified > 0 {
        used_kib / verified as f64
    } else {
        f64::NAN
    };
    let total_cpu: f64 = cpu_pct.iter().sum();

    println!(
        "density: idle clones of a real-Linux vsock-echo template (1 vCPU / 128 MiB), asked N = {n}"
    );
    println!(
        "clones alive and answering: {verified} (after the idle window: {alive_at_end}){}",
        stopped_by
            .as_ref()
            .map(|e| format!("; ramp stopped: {e}"))
            .unwrap_or_default()
    );
    println!(
        "{:<34} {:>5} {:>10} {:>10} {:>10}",
        "metric", "unit", "p50", "p99", "max"
    );
    let mut json = serde_json::Map::new();
    for (name, unit, v) in [
        ("pss_per_clone", "KiB", &pss),
        ("private_per_clone", "KiB", &private),
        ("cpu_per_idle_clone", "%", &cpu_pct),
    ] {
        let (p50, p99, max) = (percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
        println!("{name:<34} {unit:>5} {p50:>10.2} {p99:>10.2} {max:>10.2}");
        json.insert(
            name.into(),
            serde_json::json!({"unit": unit, "p50": p50, "p99": p99, "max": max, "n": v.len()}),
        );
    }
    println!(
        "{:<34} {:>5} {:>10.0}",
        "host MemAvailable drop per clone", "KiB", per_clone_host_kib
    );
    println!(
        "{:<34} {:>5} {:>10.2}",
        "CPU of all idle clones together", "%", total_cpu
    );
    println!("template boot → ready {boot_s:.1} s; ramp to {verified} clones {ramp_s:.0} s");
    json.insert("asked".into(), serde_json::json!(n));
    json.insert("alive_answering".into(), serde_json::json!(verified));
    json.insert("alive_after_idle".into(), serde_json::json!(alive_at_end));
    json.insert("stopped_by".into(), serde_json::json!(stopped_by));
    json.insert(
        "host_mem_available_drop_per_clone_kib".into(),
        serde_json::json!(per_clone_host_kib),
    );
    json.insert("total_idle_cpu_pct".into(), serde_json::json!(total_cpu));
    json.insert("template_boot_s".into(), serde_json::json!(boot_s));
    json.insert("ramp_s".into(), serde_json::json!(ramp_s));
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("density.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("JSON: {}", path.display());
}
