//! App core dumps through arrowd: an instance created with `core_dumps` gets arrow-vmm
//! `--core-dir` (its run directory); the test guest's `core` scenario speaks the guest
//! kernel's CORE_CHUNK protocol; the core shows in inspect, downloads over REST and with
//! `actl cp`. Without `core_dumps`, nothing is kept.

mod common;

use common::{stderr, stdout, Daemon};
use serde_json::json;

const BODY: &[u8] = b"ARROW-TEST-CORE-0123456789abcdef";

#[test]
fn core_dumps_show_in_inspect_and_download() {
    let d = Daemon::new();
    d.image("crash", &["core"]);

    let out = d.actl(&["run", "--core-dumps", "--name", "c1", "crash"]);
    assert_eq!(
        out.status.code(),
        Some(139),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("core chunk status 0"),
        "{}",
        stdout(&out)
    );
    let inst = d.get("/instances/c1").unwrap();
    assert_eq!(inst["spec"]["core_dumps"], true);
    let cores = inst["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 1, "{inst}");
    assert_eq!(cores[0]["name"], "core.1");
    assert_eq!(cores[0]["size"], BODY.len());

    let dir = tempfile::tempdir().unwrap();
    let out = d.actl(&["cp", "c1:core.1", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.path().join("core.1")).unwrap(), BODY);
    let out = d.actl(&["cp", "c1:core.1", "-"]);
    assert_eq!(out.stdout, BODY);

    for bad in ["core.2", "..%2Fvmm.log", "console.log"] {
        let (status, msg) = d.get(&format!("/instances/c1/cores/{bad}")).unwrap_err();
        assert_eq!(status, 404, "{bad}: {msg}");
    }
    let out = d.actl(&["cp", "c1:console.log", "-"]);
    assert!(!out.status.success());

    // Off by default: the same app leaves no core, and the VMM ignores the chunks.
    let out = d.actl(&["run", "--name", "c2", "crash"]);
    assert_eq!(out.status.code(), Some(139), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("core chunk status 4294967295"),
        "{}",
        stdout(&out)
    );
    assert_eq!(d.get("/instances/c2").unwrap()["cores"], json!([]));
}
