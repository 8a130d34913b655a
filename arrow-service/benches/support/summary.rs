//! The percentile table rows the arrow-service benches print, and the JSON file they write.

use serde_json::{json, Value};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sorts `v`, prints its row (p50, p99, min, max, n) and returns it as JSON.
pub fn summary(name: &str, unit: &str, v: &mut [u64]) -> Value {
    v.sort_unstable();
    let (p50, p99, min, max) = (
        percentile(v, 0.5),
        percentile(v, 0.99),
        v[0],
        v[v.len() - 1],
    );
    println!(
        "{name:<44} {unit:>4} {p50:>9} {p99:>9} {min:>9} {max:>9} {:>5}",
        v.len()
    );
    json!({"name": name, "unit": unit, "p50": p50, "p99": p99, "min": min, "max": max, "n": v.len()})
}

/// Writes `results` to target/bench-results/`name`.json and says where.
pub fn write_results(name: &str, results: &Value) {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-results");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(results).unwrap()).unwrap();
    println!("wrote {}", file.display());
}
