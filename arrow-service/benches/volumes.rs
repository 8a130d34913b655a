//! What volumes cost (docs/volumes.md), end to end through arrowd with release builds of
//! arrowd and arrow-vmm, the real guest kernel, the project's virtiofsd and
//! examples/apps/volprobe, on clones of a 64 MiB generic template with a warm pool of one:
//! - start: `POST /instances {"start": true}` sent → reply (running), with no volume,
//!   1 and 4 packed read-only volumes (20 files of 100 bytes each), 1 and 4 writable
//!   volumes (one virtiofsd each); every start is checked to be a generic clone;
//! - memory of each such clone, idle: arrow-vmm's smaps_rollup (Pss, private) and the
//!   summed RSS of the instance's virtiofsd processes (two per volume: virtiofsd's
//!   namespace sandbox keeps a parent waiting for the server);
//! - I/O, one clone: sequential read and open+close of small files in a packed volume,
//!   sequential write + read and opens in a virtiofsd volume and in the guest's own tmpfs,
//!   beside the same volprobe run natively on the host on the same directories.
//!
//! `cargo bench -p arrow-service --bench volumes` (ARROW_BENCH_STARTS: starts per row,
//! default 5; ARROW_BENCH_MIB: MiB per sequential test, default 8). Prints tables and
//! writes target/bench-results/volumes.json. Guest I/O runs emulated guest-kernel code on
//! these hosts (ENVIRONMENT.md): compare the rows, not the hardware.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/summary.rs"]
mod summary;
#[path = "support/vmm_memory.rs"]
mod vmm_memory;
use summary::{summary, write_results};
use vmm_memory::{kib, rollup_kib, vmm_pid};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

const TEMPLATE: &str = "/templates/generic";

/// Summed RSS (KiB) and count of the virtiofsd processes serving directories under `root`.
fn virtiofsd_kib(root: &Path) -> (u64, usize) {
    let (mut rss, mut n) = (0, 0);
    let root = root.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("virtiofsd") && cmd.contains(&root) {
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            rss += kib(&status, "VmRSS:");
            n += 1;
        }
    }
    (rss, n)
}

fn vol(host: &Path, guest: &str, read_only: bool) -> Value {
    json!({"host_path": host, "guest_path": guest, "read_only": read_only})
}

/// Starts volprobe with `args` and `volumes` from the (full) warm pool; returns the
/// instance and the request's latency in µs.
fn start(d: &Daemon, args: &[&str], volumes: &[Value]) -> (Value, u64) {
    common::wait_until("a full pool", || {
        d.get(TEMPLATE).unwrap()["pool"]["ready"].as_u64() == Some(1)
    });
    let t = Instant::now();
    let inst = d
        .post(
            "/instances",
            Some(json!({"image": "volprobe", "args": args, "volumes": volumes, "start": true})),
        )
        .unwrap();
    let us = t.elapsed().as_micros() as u64;
    assert_eq!(inst["state"], "running", "{inst}");
    assert_eq!(
        inst["clone"]["generic"], true,
        "not a generic clone: {inst}"
    );
    (inst, us)
}

fn remove(d: &Daemon, inst: &Value) {
    let id = inst["id"].as_str().unwrap();
    d.remove_force(id);
}

/// The instance's console once volprobe printed "VOLPROBE done".
fn console_when_done(inst: &Value) -> String {
    let log = Path::new(inst["run_dir"].as_str().unwrap()).join("console.log");
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("VOLPROBE done") {
            return text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "volprobe did not finish:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `key=value` of the `VOLPROBE <op> <path> …` line, as a float.
fn field(out: &str, op_path: &str, key: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains(&format!("VOLPROBE {op_path} ")))
        .unwrap_or_else(|| panic!("no VOLPROBE {op_path} line in:\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn small_files(dir: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("small-{i}")), vec![b'x'; size]).unwrap();
    }
}

fn main() {
    let n: usize = std::env::var("ARROW_BENCH_STARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mib: u64 = std::env::var("ARROW_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    common::build_release_vmm();
    let d = common::volumes::generic_daemon(&["--log-level", "warn"]);
    let src = common::repo_root().join("examples/apps/volprobe/volprobe.c");
    let fs_slots = d.get(TEMPLATE).unwrap()["spec"]["fs_slots"].as_u64();
    assert!(
        fs_slots >= Some(4),
        "the generic template needs 4 fs slots: {fs_slots:?}"
    );

    let root = d.dir.path().join("volumes");
    let (cfg, data): (Vec<PathBuf>, Vec<PathBuf>) = (0..4)
        .map(|i| (root.join(format!("cfg{i}")), root.join(format!("data{i}"))))
        .unzip();
    for (c, w) in cfg.iter().zip(&data) {
        small_files(c, 20, 100);
        std::fs::create_dir_all(w).unwrap();
    }
    let rows_of = |name: &str, k: usize, ro: bool| -> (String, Vec<Value>) {
        let dirs = if ro { &cfg } else { &data };
        let v = (0..k)
            .map(|i| vol(&dirs[i], &format!("/v{i}"), ro))
            .collect();
        (name.to_owned(), v)
    };
    let configs = [
        ("none".to_owned(), Vec::new()),
        rows_of("1 packed", 1, true),
        rows_of("4 packed", 4, true),
        rows_of("1 virtiofsd", 1, false),
        rows_of("4 virtiofsd", 4, false),
    ];

    let mut rows = Vec::new();
    let mut memory = Vec::new();
    println!(
        "{:<44} {:>4} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "start from the warm pool (POST → running)", "", "p50", "p99", "min", "max", "n"
    );
    for (name, volumes) in &configs {
        let (mut lat, mut pss, mut private, mut fsd) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let (inst, us) = start(&d, &["sleep", "600"], volumes);
            lat.push(us);
            // Let the clone settle (ainit's mounts, virtiofsd's first requests).
            std::thread::sleep(Duration::from_secs(2));
            let (p, _, pr) = rollup_kib(vmm_pid(inst["pid"].as_i64().unwrap() as i32));
            pss.push(p);
            private.push(pr);
            // virtiofsd's namespace sandbox is two processes per volume (a parent that
            // waits for the server in its new PID namespace).
            let (rss, procs) = virtiofsd_kib(&root);
            let fs = volumes.iter().filter(|v| v["read_only"] == false).count();
            assert!(procs >= fs, "{procs} virtiofsd processes for {fs} volumes");
            fsd.push(rss);
            remove(&d, &inst);
            common::wait_until("the instance's virtiofsd to exit", || {
                virtiofsd_kib(&root).1 == 0
            });
        }
        rows.push(summary(&format!("  {name}"), "µs", &mut lat));
        let med = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        memory.push(json!({
            "volumes": name, "vmm_pss_kib": med(&mut pss),
            "vmm_private_kib": med(&mut private), "virtiofsd_rss_kib": med(&mut fsd),
        }));
    }
    println!("\nmemory of an idle clone, medians (KiB)");
    println!(
        "{:<14} {:>10} {:>12} {:>14}",
        "volumes", "VMM Pss", "VMM private", "virtiofsd RSS"
    );
    for m in &memory {
        let k = |key: &str| m[key].as_u64().unwrap_or(0);
        println!(
            "{:<14} {:>10} {:>12} {:>14}",
            m["volumes"].as_str().unwrap_or_default(),
            k("vmm_pss_kib"),
            k("vmm_private_kib"),
            k("virtiofsd_rss_kib")
        );
    }

    // I/O: a packed volume with one file of `mib` MiB and 100 small files, a writable
    // volume with 100 small files, the guest's tmpfs; then the host on the same paths.
    let pack = root.join("io-pack");
    let live = root.join("io-fs");
    small_files(&pack, 100, 100);
    small_files(&live, 100, 100);
    std::fs::write(pack.join("blob"), vec![b'b'; (mib << 20) as usize]).unwrap();
    let m = mib.to_string();
    let (inst, _) = start(
        &d,
        &[
            "read", "/pk/blob", "opens", "/pk", "500", "bench", "/fsv", &m, "500", "bench", "/tmp",
            &m, "0",
        ],
        &[vol(&pack, "/pk", true), vol(&live, "/fsv", false)],
    );
    let guest = console_when_done(&inst);
    remove(&d, &inst);
    let probe = d.dir.path().join("volprobe-host");
    let cc = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&probe)
        .arg(&src)
        .status()
        .expect("cc for the host run of volprobe");
    assert!(cc.success());
    let host = std::process::Command::new(&probe)
        .arg("read")
        .arg(pack.join("blob"))
        .arg("opens")
        .arg(&pack)
        .arg("500")
        .arg("bench")
        .arg(&live)
        .args([&m, "500"])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout).into_owned();
    let (hp, hl) = (pack.display().to_string(), live.display().to_string());
    let io = json!({
        "mib": mib,
        "guest_packed": {"read_mbps": field(&guest, "read /pk/blob", "mbps"),
                         "open_us": field(&guest, "opens /pk", "open_us")},
        "guest_virtiofsd": {"write_mbps": field(&guest, "bench /fsv", "write_mbps"),
                            "read_mbps": field(&guest, "bench /fsv", "read_mbps"),
                            "open_us": field(&guest, "bench /fsv", "open_us")},
        "guest_tmpfs": {"write_mbps": field(&guest, "bench /tmp", "write_mbps"),
                        "read_mbps": field(&guest, "bench /tmp", "read_mbps")},
        "host_pack_dir": {"read_mbps": field(&host, &format!("read {hp}/blob"), "mbps"),
                          "open_us": field(&host, &format!("opens {hp}"), "open_us")},
        "host_fs_dir": {"write_mbps": field(&host, &format!("bench {hl}"), "write_mbps"),
                        "read_mbps": field(&host, &format!("bench {hl}"), "read_mbps"),
                        "open_us": field(&host, &format!("bench {hl}"), "open_us")},
    });
    println!("\nI/O ({mib} MiB sequential, 500 open+close of 100 small files)");
    println!(
        "{:<28} {:>12} {:>12} {:>12}",
        "where", "write MB/s", "read MB/s", "µs/open"
    );
    for (label, k) in [
        ("guest: packed volume", "guest_packed"),
        ("guest: virtiofsd volume", "guest_virtiofsd"),
        ("guest: tmpfs", "guest_tmpfs"),
        ("host: the packed dir", "host_pack_dir"),
        ("host: the virtiofsd dir", "host_fs_dir"),
    ] {
        let f = |x: &str| io[k].get(x).map_or("–".to_owned(), |v| format!("{v}"));
        println!(
            "{label:<28} {:>12} {:>12} {:>12}",
            f("write_mbps"),
            f("read_mbps"),
            f("open_us")
        );
    }

    write_results(
        "volumes",
        &json!({"start": rows, "memory": memory, "io": io}),
    );
}
