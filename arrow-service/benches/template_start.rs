//! arrowd's start from a template, measured end to end with release builds of arrowd and
//! arrow-vmm and the freestanding test guest as kernel (`cloneidle`: it prints its
//! identity once cloned, then idles):
//! - `POST /instances {"template", "start": true}` sent → HTTP reply (the instance is
//!   running: arrowd answers after `PUT /vm/start`, or after `GET /vm` says running for a
//!   plain restore), with a warm pool (each start waits until the pool is full again, so
//!   every start is a pool hit on an otherwise quiet arrowd) and without one (pool 0:
//!   `restore --clone`);
//! - the VMM-side part arrowd records (`clone.start_us`);
//! - memory of an idle pooled arrow-vmm (smaps_rollup PSS, RSS, private);
//! - template cost: boot → snapshot, snapshot size on disk;
//! - a burst: `ARROW_BENCH_BURST` (default 100) starts sent at once (one thread each) with
//!   the pool full: wall time, starts per second (and per core), each request's latency.
//!
//! `cargo bench -p arrow-service --bench template_start` (ARROW_BENCH_STARTS: starts per
//! mode, default 50). Prints a table and writes target/bench-results/template_start.json.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/summary.rs"]
mod summary;
#[path = "support/vmm_memory.rs"]
mod vmm_memory;
use summary::{summary, write_results};
use vmm_memory::{rollup_kib, vmm_pid};

use std::time::Instant;

use common::Daemon;
use serde_json::{json, Value};

/// Starts `n` clones one after another; returns (request µs, VMM-side µs, pool hits).
fn starts(d: &Daemon, n: usize, pool: u64) -> (Vec<u64>, Vec<u64>, usize) {
    let (mut req, mut vmm, mut hits) = (Vec::new(), Vec::new(), 0);
    for _ in 0..n {
        if pool > 0 {
            common::wait_until("a full pool", || {
                d.get("/templates/tpl").unwrap()["pool"]["ready"].as_u64() == Some(pool)
            });
        }
        let t = Instant::now();
        let inst = d
            .post(
                "/instances",
                Some(json!({"template": "tpl", "start": true})),
            )
            .unwrap();
        req.push(t.elapsed().as_micros() as u64);
        assert_eq!(inst["state"], "running", "{inst}");
        vmm.push(inst["clone"]["start_us"].as_u64().unwrap_or(0));
        hits += usize::from(inst["clone"]["pooled"] == true);
        let id = inst["id"].as_str().unwrap();
        d.remove_force(id);
    }
    (req, vmm, hits)
}

/// Starts `n` clones at once (one thread each); returns (wall µs, request µs each,
/// pool hits). All are deleted afterwards.
fn burst(d: &Daemon, n: usize) -> (u64, Vec<u64>, usize) {
    let t0 = Instant::now();
    let results: Vec<(u64, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let t = Instant::now();
                    let inst = d
                        .post(
                            "/instances",
                            Some(json!({"template": "tpl", "start": true})),
                        )
                        .unwrap();
                    (t.elapsed().as_micros() as u64, inst)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed().as_micros() as u64;
    let mut req = Vec::new();
    let mut hits = 0;
    for (us, inst) in &results {
        assert_eq!(inst["state"], "running", "{inst}");
        req.push(*us);
        hits += usize::from(inst["clone"]["pooled"] == true);
    }
    for (_, inst) in &results {
        let id = inst["id"].as_str().unwrap();
        d.remove_force(id);
    }
    (wall, req, hits)
}

fn main() {
    common::build_release_vmm();
    let n: usize = std::env::var("ARROW_BENCH_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let burst_n: usize = std::env::var("ARROW_BENCH_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut rows = Vec::new();
    println!(
        "{:<44} {:>3} {:>9} {:>9} {:>9} {:>9} {:>5}",
        "metric", "", "p50", "p99", "min", "max", "n"
    );
    let mut extra = json!({});
    for pool in [4u64, 0] {
        let d = Daemon::with_args(&["--pool-size", &pool.to_string(), "--log-level", "warn"]);
        d.image("cloner", &["cloneidle"]);
        let t = d
            .post(
                "/templates",
                Some(json!({"name": "tpl", "image": "cloner"})),
            )
            .unwrap();
        if pool > 0 {
            extra["template_boot_to_snapshot_ms"] = t["boot_to_snapshot_ms"].clone();
            extra["template_disk"] = t["disk"].clone();
            common::wait_until("a full pool", || {
                d.get("/templates/tpl").unwrap()["pool"]["ready"].as_u64() == Some(pool)
            });
            let ids: Vec<String> = d
                .get("/instances?all=true")
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned())
                .collect();
            let mut idle = Vec::new();
            for v in d.vmms().into_iter().filter(|v| !ids.contains(&v.id)) {
                let (pss, rss, private) = rollup_kib(vmm_pid(v.pid));
                idle.push(json!({"pss_kib": pss, "rss_kib": rss, "private_kib": private}));
            }
            println!("idle pooled arrow-vmm (smaps_rollup, KiB): {}", json!(idle));
            extra["idle_pooled_vmm"] = json!(idle);
        }
        let (mut req, mut vmm, hits) = starts(&d, n, pool);
        let mode = if pool > 0 { "pooled" } else { "restore" };
        if pool > 0 {
            // The burst: arrowd serves the first `pool` from the pool, the rest with
            // plain restores while the pool refills.
            common::wait_until("a full pool", || {
                d.get("/templates/tpl").unwrap()["pool"]["ready"].as_u64() == Some(pool)
            });
            let (wall, mut breq, bhits) = burst(&d, burst_n);
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            let per_s = burst_n as f64 / (wall as f64 / 1e6);
            println!(
                "burst: {burst_n} concurrent starts in {:.1} ms: {per_s:.0} starts/s, {:.0} per core ({cores} cores), {bhits} from the pool",
                wall as f64 / 1e3,
                per_s / cores as f64
            );
            rows.push(summary(
                &format!("  burst of {burst_n}: POST → running, each"),
                "µs",
                &mut breq,
            ));
            extra["burst"] = json!({
                "n": burst_n, "wall_us": wall, "starts_per_s": per_s,
                "starts_per_s_per_core": per_s / cores as f64, "cores": cores,
                "pool_hits": bhits,
            });
        }
        assert!(
            pool == 0 || hits == n,
            "{hits}/{n} starts came from the pool"
        );
        rows.push(summary(
            &format!("POST /instances → running ({mode})"),
            "µs",
            &mut req,
        ));
        rows.push(summary(
            &format!("  of which arrowd → VM running ({mode})"),
            "µs",
            &mut vmm,
        ));
    }
    write_results("template_start", &json!({"rows": rows, "extra": extra}));
}
