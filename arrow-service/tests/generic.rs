//! The generic template with the freestanding test guest, which has no app wait point:
//! arrowd's background build fails fast with the reason, instances keep cold-booting
//! without a build per start, and the explicit paths (create, `"template": "generic"`,
//! reserved names, removal) answer as documented. The real-kernel path is in
//! generic_real_kernel.rs.

mod common;

use std::time::{Duration, Instant};

use common::{require_kvm, Daemon};
use serde_json::{json, Value};

fn exited(d: &Daemon, id: &str) -> Value {
    let t = Instant::now();
    loop {
        let v = d.get(&format!("/instances/{id}")).unwrap();
        if v["state"] == "exited" || v["state"] == "failed" {
            return v;
        }
        assert!(t.elapsed() < common::TIMEOUT, "{id} did not exit: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_kernel_without_the_wait_point_fails_the_generic_template_and_starts_stay_cold() {
    require_kvm();
    let d = Daemon::with_args(&[
        "--generic-template=true",
        "--generic-memory-mib",
        "32",
        "--pool-size",
        "0",
    ]);
    d.image("hello", &["hello"]);

    // The first start that could use it: a cold boot, and a build in the background.
    let a = d
        .post("/instances", Some(json!({"image": "hello", "start": true})))
        .unwrap();
    assert!(a["clone"].is_null(), "{a}");
    assert_eq!(exited(&d, a["id"].as_str().unwrap())["exit_code"], 0);
    let t0 = Instant::now();
    let t = loop {
        if let Ok(t) = d.get("/templates/generic") {
            if t["state"] == "failed" {
                break t;
            }
            assert_ne!(t["state"], "ready", "{t}");
        }
        assert!(
            t0.elapsed() < common::TIMEOUT,
            "no failed generic template:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(t["spec"]["generic"], true, "{t}");
    let reason = t["reason"].as_str().unwrap_or_default();
    eprintln!(
        "generic template failed after {:.1?}: {reason}",
        t0.elapsed()
    );
    assert!(reason.contains("does not support generic templates"), "{t}");

    // Later starts cold-boot and do not rebuild it (10 minutes between attempts).
    let b = d
        .post("/instances", Some(json!({"image": "hello", "start": true})))
        .unwrap();
    assert!(b["clone"].is_null(), "{b}");
    assert_eq!(exited(&d, b["id"].as_str().unwrap())["exit_code"], 0);
    std::thread::sleep(Duration::from_millis(300));
    let list = d.get("/templates").unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["created_at"], t["created_at"]);

    // Asked for explicitly while it is failed: 409, nothing started.
    let e = d
        .post(
            "/instances",
            Some(json!({"image": "hello", "template": "generic", "start": true})),
        )
        .unwrap_err();
    assert_eq!(e.0, 409, "{e:?}");
    // Reserved names and extra fields are refused; an explicit create retries (and fails).
    let e = d
        .post(
            "/templates",
            Some(json!({"name": "generic-mine", "image": "hello"})),
        )
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    assert!(e.1.contains("reserved"), "{e:?}");
    let e = d
        .post(
            "/templates",
            Some(json!({"generic": true, "image": "hello"})),
        )
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let e = d
        .post(
            "/templates",
            Some(json!({"generic": true, "timeout_s": 30})),
        )
        .unwrap_err();
    assert_eq!(e.0, 500, "{e:?}");
    let out = d.actl(&["template", "ls"]);
    assert!(
        common::stdout(&out).contains("(generic: any image)"),
        "{}",
        common::stdout(&out)
    );
    // Removal by the alias; then nothing is left.
    let out = d.actl(&["template", "rm", "generic"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(d.get("/templates").unwrap().as_array().unwrap().is_empty());
    let slots: Vec<_> = std::fs::read_dir(d.dir.path().join("state/templates"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".slot"))
        .collect();
    assert!(slots.is_empty(), "{slots:?}");
}
