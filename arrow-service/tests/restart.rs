//! Restart safety: `kill -9 arrowd` while 100 clients create and start instances at once,
//! restart, and every instance is running and tracked or cleanly finished, every instance
//! a client was told about is still there; no stray arrow-vmm. SIGTERM stops
//! arrowd without stopping instances; the next arrowd re-adopts them.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

fn instances(d: &Daemon) -> Vec<Value> {
    d.get("/instances?all=true")
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every record is consistent with /proc; returns the running (id, pid) pairs.
fn check_consistent(d: &Daemon) -> BTreeSet<(String, i32)> {
    let mut running = BTreeSet::new();
    for i in instances(d) {
        let id = i["id"].as_str().unwrap().to_owned();
        match i["state"].as_str().unwrap() {
            "running" => {
                let pid = i["pid"].as_i64().unwrap() as i32;
                assert!(
                    arrow_service::procfs::start_time(pid).is_some(),
                    "running instance {id} has no live process: {i}"
                );
                running.insert((id, pid));
            }
            "failed" | "exited" => assert!(i["reason"].is_string(), "finished without reason: {i}"),
            "created" => {}
            other => panic!("instance {id} left in state {other}: {i}"),
        }
    }
    let live: BTreeSet<(String, i32)> = d.vmms().into_iter().map(|v| (v.id, v.pid)).collect();
    assert_eq!(
        live, running,
        "every live arrow-vmm is a tracked running instance"
    );
    running
}

/// Clients creating an instance at once, and how many records exist when arrowd is killed.
const CLIENTS: usize = 100;
const KILL_AT: usize = 30;

#[test]
fn kill_9_while_creating_then_restart_and_sigterm() {
    let mut d = Daemon::new();
    d.image("long", &["idle"]);
    let pid = d.child.as_ref().unwrap().id() as i32;

    // IDs of the instances whose creation a client saw succeed.
    let acked = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let (d, acked) = (&d, &acked);
            s.spawn(move || {
                // Requests after the kill fail to connect; that is expected.
                if let Ok(v) = d.post("/instances", Some(json!({"image": "long", "start": true}))) {
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    acked.lock().unwrap().push(id);
                }
            });
        }
        let start = Instant::now();
        while d
            .get("/instances?all=true")
            .map(|v| v.as_array().unwrap().len())
            .unwrap_or(0)
            < KILL_AT
        {
            assert!(
                start.elapsed() < common::TIMEOUT,
                "instances were not created"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        common::kill(pid, libc::SIGKILL);
    });
    d.signal(libc::SIGKILL); // reap
    let before = d.vmms().len();
    assert!(before > 0, "some instances were running when arrowd died");

    d.start();
    let running = check_consistent(&d);
    assert!(!running.is_empty());
    let total = instances(&d).len();
    let states: Vec<String> = instances(&d)
        .iter()
        .map(|i| i["state"].as_str().unwrap().to_owned())
        .collect();
    eprintln!("after kill -9 and restart: {total} instances, states {states:?}");
    assert!((KILL_AT..=CLIENTS).contains(&total), "{total}");
    let ids: BTreeSet<String> = instances(&d)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let acked = acked.into_inner().unwrap();
    eprintln!("{} creates answered before the kill", acked.len());
    for id in &acked {
        assert!(
            ids.contains(id),
            "instance {id} was created (201) but is gone"
        );
    }
    assert!(d.log().contains("recovery done"), "{}", d.log());

    // SIGTERM: arrowd stops, the instances keep running, the next arrowd adopts them.
    d.signal(libc::SIGTERM);
    let live: BTreeSet<(String, i32)> = d.vmms().into_iter().map(|v| (v.id, v.pid)).collect();
    assert_eq!(live, running, "SIGTERM to arrowd must not stop instances");
    d.start();
    assert_eq!(check_consistent(&d), running, "same processes re-adopted");

    // An adopted instance (not arrowd's child) still reports its exit code.
    let (id, _) = running.iter().next().unwrap().clone();
    let stopped = d
        .post(&format!("/instances/{id}/stop?timeout=5"), None)
        .unwrap();
    assert_eq!(stopped["state"], "exited", "{stopped}");
    assert_eq!(stopped["exit_code"], 0, "{stopped}");

    // A VMM killed while arrowd is down is closed with a reason at the next start.
    let (victim, vpid) = running.iter().nth(1).cloned().unwrap_or_default();
    d.signal(libc::SIGKILL);
    if vpid > 0 {
        common::kill(vpid, libc::SIGKILL);
        let t = Instant::now();
        while arrow_service::procfs::start_time(vpid).is_some() {
            assert!(t.elapsed() < common::TIMEOUT);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    d.start();
    check_consistent(&d);
    if vpid > 0 {
        let v = d.get(&format!("/instances/{victim}")).unwrap();
        assert_eq!(v["state"], "failed", "{v}");
        assert!(
            v["reason"].as_str().unwrap().contains("no exit report"),
            "{v}"
        );
    }

    for i in instances(&d) {
        let id = i["id"].as_str().unwrap();
        d.call(
            hyper::Method::DELETE,
            &format!("/instances/{id}?force=true"),
            None,
        )
        .unwrap();
    }
    assert!(d.vmms().is_empty(), "nothing left running");
    assert!(instances(&d).is_empty());
}
