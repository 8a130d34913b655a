//! VMM-side start cost: runs the real `arrow-vmm` (release build) many times
//! with the tiny test guest (1 vCPU, 128 MiB), reads its `--report`, and
//! prints a table plus JSON (target/bench-results/vmm_start.json).
//!
//! Figures: CPU time the process used before the first KVM_RUN, wall time
//! from `main` to the first KVM_RUN, and resident memory outside guest
//! memory. Targets for later turns: ≤ 2 CPU-ms and ≤ 2 MiB.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let runs: usize = std::env::var("ARROW_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    common::require_kvm();
    let elf = common::guest_elf().to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (mut cpu, mut wall, mut rss, mut total) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let report = dir.path().join(format!("r{i}.json"));
        let o = common::run_vmm(&[
            "run",
            "--kernel",
            &elf,
            "--cmdline",
            "hello",
            "--memory",
            "128M",
            "--vcpus",
            "1",
            "--console",
            "none",
            "--report",
            report.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        cpu.push(r["first_kvm_run_cpu_us"].as_u64().unwrap());
        wall.push(r["first_kvm_run_wall_us"].as_u64().unwrap());
        rss.push(r["vmm_rss_kib"].as_u64().unwrap());
        total.push(r["total_wall_us"].as_u64().unwrap());
    }
    for v in [&mut cpu, &mut wall, &mut rss, &mut total] {
        v.sort_unstable();
    }
    let rows = [
        ("cpu_to_first_kvm_run", "µs", &cpu, 2000u64),
        ("wall_main_to_first_kvm_run", "µs", &wall, 0),
        ("vmm_rss_beyond_guest", "KiB", &rss, 2048),
        ("wall_main_to_exit_hello", "µs", &total, 0),
    ];
    println!("arrow-vmm start, {runs} runs, 1 vCPU / 128 MiB, test guest 'hello'");
    println!("binary: {}", common::vmm_bin());
    println!(
        "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "metric", "unit", "min", "p50", "p90", "target"
    );
    let mut json = serde_json::Map::new();
    for (name, unit, v, target) in rows {
        let t = if target == 0 {
            "-".to_string()
        } else {
            format!("≤{target}")
        };
        println!(
            "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10}",
            name,
            unit,
            v[0],
            percentile(v, 0.5),
            percentile(v, 0.9),
            t
        );
        json.insert(
            name.into(),
            serde_json::json!({"unit": unit, "min": v[0], "p50": percentile(v, 0.5), "p90": percentile(v, 0.9), "target": target}),
        );
    }
    json.insert("binary".into(), common::vmm_bin().into());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("vmm_start.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("JSON: {}", path.display());
}
