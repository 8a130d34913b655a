//! The warm pool with the freestanding test guest: pooled arrow-vmm processes
//! (`restore --clone --pool`) become instances on `actl run` (ID, run directory and CID
//! included), the pool refills, a killed pooled VMM makes the start fall back to a plain
//! restore, and after kill -9 of arrowd the unclaimed pooled VMMs are replaced while the
//! clones they became are re-adopted.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{stderr, stdout, Daemon};
use serde_json::Value;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < common::TIMEOUT,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn template(d: &Daemon) -> Value {
    d.get("/templates/tpl").unwrap()
}

/// IDs (run directories) of live arrow-vmm processes that are not instances: pooled VMMs.
fn pooled(d: &Daemon) -> BTreeSet<(String, i32)> {
    let ids: BTreeSet<String> = d
        .get("/instances?all=true")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    d.vmms()
        .into_iter()
        .filter(|v| !ids.contains(&v.id))
        .map(|v| (v.id, v.pid))
        .collect()
}

fn wait_pool_ready(d: &Daemon, n: u64) {
    wait_for(&format!("{n} pooled VMMs ready"), || {
        template(d)["pool"]["ready"].as_u64() == Some(n)
    });
}

fn run(d: &Daemon, args: &[&str]) -> String {
    let out = d.actl(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        stderr(&out),
        d.log()
    );
    stdout(&out).trim().to_owned()
}

/// The clone's console line `clone gen 1 nonce N cid C`, with C its own CID.
fn check_identity(d: &Daemon, id: &str) {
    let inst = d.wait_state(id, "running");
    let cid = inst["spec"]["vsock_cid"].as_u64().unwrap();
    let mut line = String::new();
    wait_for(&format!("{id}'s identity on its console"), || {
        let logs = stdout(&d.actl(&["logs", id]));
        // Only a whole line: the guest writes the console byte by byte.
        line = logs
            .split_inclusive('\n')
            .find(|l| l.starts_with("clone gen ") && l.ends_with('\n'))
            .unwrap_or("")
            .trim_end()
            .to_owned();
        !line.is_empty()
    });
    assert!(line.starts_with("clone gen 1 nonce "), "{line}");
    assert!(line.ends_with(&format!(" cid {cid}")), "{line} (CID {cid})");
}

/// Proportional and resident memory of a process, from smaps_rollup (KiB).
fn pss_rss_kib(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

#[test]
fn pooled_vmms_become_instances_refill_fall_back_and_survive_restarts() {
    let mut d = Daemon::with_args(&["--pool-size", "2"]);
    d.image("cloner", &["cloneidle"]);
    run(&d, &["template", "create", "--name", "tpl", "cloner"]);
    wait_pool_ready(&d, 2);
    let slots = pooled(&d);
    assert_eq!(slots.len(), 2, "{slots:?}");
    for (id, pid) in &slots {
        let (pss, rss) = pss_rss_kib(*pid);
        eprintln!("idle pooled arrow-vmm {id}: PSS {pss} KiB, RSS {rss} KiB");
    }

    // A start takes a pooled VMM: the instance is that process, in its directory.
    let a = run(&d, &["run", "-d", "--template", "tpl"]);
    let inst = d.get(&format!("/instances/{a}")).unwrap();
    let slot_pid = slots.iter().find(|(id, _)| *id == a).map(|(_, p)| *p);
    assert_eq!(
        inst["pid"].as_i64().map(|p| p as i32),
        slot_pid,
        "{inst} {slots:?}"
    );
    assert_eq!(inst["clone"]["pooled"], true, "{inst}");
    assert!(
        inst["spec"]["vsock_cid"].as_u64().unwrap() > 0x4000_0000,
        "{inst}"
    );
    check_identity(&d, &a);
    eprintln!("pooled start: {} µs", inst["clone"]["start_us"]);
    // A matching start takes the other one.
    let b = run(&d, &["run", "-d", "cloner"]);
    assert!(slots.iter().any(|(id, _)| *id == b), "{b} {slots:?}");
    assert_eq!(
        d.get(&format!("/instances/{b}")).unwrap()["clone"]["pooled"],
        true
    );
    check_identity(&d, &b);

    // The pool refills with new processes.
    wait_pool_ready(&d, 2);
    let refilled = pooled(&d);
    assert!(refilled.is_disjoint(&slots), "{refilled:?} {slots:?}");
    assert_eq!(template(&d)["pool"]["hits"], 2);

    // Pooled VMMs killed: the start falls back to a plain restore.
    for (_, pid) in &refilled {
        common::kill(*pid, libc::SIGKILL);
    }
    let c = run(&d, &["run", "-d", "--template", "tpl"]);
    let inst = d.get(&format!("/instances/{c}")).unwrap();
    assert_eq!(inst["clone"]["pooled"], false, "{inst}");
    check_identity(&d, &c);
    wait_pool_ready(&d, 2);
    assert!(
        pooled(&d).is_disjoint(&refilled),
        "dead pooled VMMs replaced"
    );
    for (id, _) in &refilled {
        if *id != c {
            assert!(!d.run_root().join(id).exists(), "{id}'s directory removed");
        }
    }

    // kill -9 of arrowd: clones are re-adopted, unclaimed pooled VMMs replaced.
    let before = pooled(&d);
    d.signal(libc::SIGKILL);
    d.start();
    for id in [&a, &b, &c] {
        let inst = d.get(&format!("/instances/{id}")).unwrap();
        assert_eq!(inst["state"], "running", "{inst}");
    }
    check_identity(&d, &a);
    wait_pool_ready(&d, 2);
    let after = pooled(&d);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.is_disjoint(&before), "{after:?} {before:?}");
    for (id, pid) in &before {
        assert!(
            arrow_service::procfs::start_time(*pid).is_none(),
            "old pooled VMM {pid} killed"
        );
        assert!(!d.run_root().join(id).exists());
    }
    let d2 = run(&d, &["run", "-d", "--template", "tpl"]);
    assert_eq!(
        d.get(&format!("/instances/{d2}")).unwrap()["clone"]["pooled"],
        true
    );
    check_identity(&d, &d2);

    // Removing the template stops its pool; nothing stays behind.
    run(&d, &["template", "rm", "-f", "tpl"]);
    for id in [&a, &b, &c, &d2] {
        run(&d, &["rm", "-f", id]);
    }
    wait_for("every arrow-vmm gone", || d.vmms().is_empty());
    let dirs: Vec<PathBuf> = std::fs::read_dir(d.run_root())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}
