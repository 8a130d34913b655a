//! End to end with the real guest kernel: arrowd's generic template. The first start of an
//! image with no template of its own cold-boots and makes arrowd build the generic
//! template in the background (one boot to KERNEL_READY); then that image (from the warm
//! pool, with the request's own args and env) and a second, different image (a plain
//! `restore --clone` of an existing instance) start from the same generic template, their
//! image base and app injected, and each exits with the status its app computes from the
//! argv, environment and hostname it saw. Two real boots (~4 s each here, ~25 s on
//! nested-PVM hosts). A second test makes the generic template explicitly, shaped for
//! the 64 MiB examples, and runs the hello app through CRI from it. The kernel is
//! ARROW_TEST_KERNEL, or the cached build of guest-kernel/build.sh (built on first use).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cri::CriClient;
use common::{stderr, stdout, Daemon};
use k8s_cri::v1::*;
use serde_json::{json, Value};

/// Exits with the sum of its numeric arguments plus $N (tests/apps/sum-app.c).
const SUM_TOML: &str = r#"name = "gsum"
args = ["3", "4"]
env = { N = "10" }
"#;

/// Exits with 64 | one bit per thing it did not see as expected.
const CHECK_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/utsname.h>

int main(int argc, char **argv)
{
    struct utsname u;
    const char *g = getenv("GREETING");
    int bad = 0;

    uname(&u);
    if (argc != 3 || strcmp(argv[1], "two words") || strcmp(argv[2], "x"))
        bad |= 1;
    if (!g || strcmp(g, "hi there"))
        bad |= 2;
    if (getenv("N") || getenv("SECRET"))
        bad |= 4;
    if (strcmp(u.nodename, "gen-b"))
        bad |= 8;
    if (access("/app", X_OK))
        bad |= 16;
    if (strcmp(argv[0], "/app"))
        bad |= 32;
    printf("CHECK-APP: argc=%d argv0=%s host=%s greeting=%s bad=%d\n", argc, argv[0],
           u.nodename, g ? g : "(none)", bad);
    fflush(stdout);
    return 64 | bad;
}
"#;

const CHECK_TOML: &str = r#"name = "gcheck"
args = ["two words", "x"]
env = { GREETING = "hi there" }
"#;

fn build(store: &asdk::Store, dir: &Path, file: &str, source: &str, toml: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), source).unwrap();
    std::fs::write(dir.join("arrow.toml"), toml).unwrap();
    asdk::build::build_into(store, &dir.join(file), &Default::default(), &[]).unwrap();
}

/// Waits for `id` to exit; returns its inspect.
fn exited(d: &Daemon, id: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let v = d.get(&format!("/instances/{id}")).unwrap();
        if v["state"] == "exited" || v["state"] == "failed" {
            return v;
        }
        assert!(
            t.elapsed() < within,
            "{id} did not exit: {v}\n{}",
            stdout(&d.actl(&["logs", id]))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn images_without_templates_start_from_one_generic_template() {
    let d = Daemon::with_real_kernel(&["--generic-template=true", "--pool-size", "1"]);
    let store = asdk::Store::open(d.store_dir()).unwrap();
    let src = d.dir.path().join("src");
    let sum = std::fs::read_to_string(common::repo_root().join("tests/apps/sum-app.c")).unwrap();
    build(&store, &src.join("gsum"), "sum.c", &sum, SUM_TOML);
    build(&store, &src.join("gcheck"), "check.c", CHECK_C, CHECK_TOML);
    let slow = Duration::from_secs(240);

    // 1. No generic template yet: a cold boot, which starts making one.
    let t0 = Instant::now();
    let cold = d
        .post(
            "/instances",
            Some(json!({"image": "gsum", "name": "cold-a", "start": true})),
        )
        .unwrap();
    let id = cold["id"].as_str().unwrap().to_owned();
    assert!(cold["clone"].is_null(), "{cold}");
    let v = exited(&d, &id, slow);
    assert_eq!(
        v["exit_code"],
        17,
        "cold boot: 3 + 4 + N=10\n{v}\n{}",
        d.log()
    );
    eprintln!("cold boot of gsum: exited after {:.1?}", t0.elapsed());

    // 2. The generic template becomes ready in the background.
    let t = loop {
        match d.get("/templates/generic") {
            Ok(t) if t["state"] == "ready" => break t,
            Ok(t) if t["state"] == "failed" => panic!("generic template failed: {t}"),
            _ => {}
        }
        assert!(t0.elapsed() < slow, "no generic template:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let name = t["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("generic-"), "{t}");
    assert_eq!(t["spec"]["generic"], true, "{t}");
    assert_eq!(t["spec"]["snapshot_at"], "kernel_ready", "{t}");
    eprintln!(
        "generic template {name}: boot → snapshot {} ms, disk {}",
        t["boot_to_snapshot_ms"], t["disk"]
    );
    // Clones never write the template's files.
    let files = |dir: &Path| -> Vec<(String, u64, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let tdir = std::path::PathBuf::from(t["dir"].as_str().unwrap());
    let before = files(&tdir);
    let slot = tdir.with_extension("slot");
    let slot_before = std::fs::metadata(&slot).unwrap().modified().unwrap();
    let ls = d.actl(&["template", "ls"]);
    assert!(stdout(&ls).contains("(generic"), "{}", stdout(&ls));
    let pool_ready = Instant::now();
    while d.get(&format!("/templates/{name}")).unwrap()["pool"]["ready"] != 1 {
        assert!(
            pool_ready.elapsed() < Duration::from_secs(60),
            "pool never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3. The same image with the request's own args and env, from the warm pool.
    let t1 = Instant::now();
    let a = d
        .post(
            "/instances",
            Some(json!({"image": "gsum", "name": "gen-a", "args": ["5", "6"],
                        "env": {"N": "1"}, "start": true})),
        )
        .unwrap();
    let a_id = a["id"].as_str().unwrap().to_owned();
    assert_eq!(a["clone"]["generic"], true, "{a}");
    assert_eq!(a["clone"]["template"], name.as_str(), "{a}");
    assert_eq!(a["clone"]["pooled"], true, "{a}");
    let v = exited(&d, &a_id, slow);
    let logs = stdout(&d.actl(&["logs", &a_id]));
    assert_eq!(v["exit_code"], 12, "5 + 6 + N=1\n{v}\n{logs}");
    assert!(logs.contains("host=gen-a argc=3 sum=12"), "{logs}");
    eprintln!(
        "gsum from the generic template (pooled): start {} µs, exited after {:.1?}",
        a["clone"]["start_us"],
        t1.elapsed()
    );

    // Asking for it explicitly: creating it again returns it; an instance it cannot run
    // is refused instead of cold-booted.
    let out = d.actl(&["template", "create", "--generic"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), name);
    let e = d
        .post(
            "/instances",
            Some(json!({"image": "gsum", "template": "generic", "memory": "256M", "start": true})),
        )
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    assert!(e.1.contains("256 MiB"), "{e:?}");

    // 4. A different image, created then started: a plain restore --clone.
    let out = d.actl(&["create", "--name", "gen-b", "gcheck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t2 = Instant::now();
    let out = d.actl(&["start", "gen-b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = d.get("/instances/gen-b").unwrap();
    assert_eq!(b["clone"]["generic"], true, "{b}");
    assert_eq!(b["clone"]["template"], name.as_str(), "{b}");
    assert_eq!(b["clone"]["pooled"], false, "{b}");
    let v = exited(&d, "gen-b", slow);
    let logs = stdout(&d.actl(&["logs", "gen-b"]));
    assert_eq!(
        v["exit_code"], 64,
        "bits: what the app did not see\n{v}\n{logs}"
    );
    eprintln!(
        "gcheck from the generic template (restore): start {} µs, exited after {:.1?}",
        b["clone"]["start_us"],
        t2.elapsed()
    );

    assert_eq!(files(&tdir), before, "the template's files changed");
    assert_eq!(
        std::fs::metadata(&slot).unwrap().modified().unwrap(),
        slot_before
    );

    // The template is kept and still ready; removing it works once its clones are gone.
    assert_eq!(d.get("/templates/generic").unwrap()["state"], "ready");
    for i in [id.as_str(), a_id.as_str(), "gen-b"] {
        assert!(d.actl(&["rm", "-f", i]).status.success());
    }
    let out = d.actl(&["template", "rm", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.get("/templates/generic").is_err());
}

#[test]
fn cri_start_container_runs_from_an_explicitly_made_generic_template() {
    let d = Daemon::with_real_kernel(&[
        "--generic-template=true",
        "--generic-memory-mib",
        "64",
        "--pool-size",
        "0",
    ]);
    let src = common::repo_root().join("examples/apps/hello");
    let store = asdk::Store::open(d.store_dir()).unwrap();
    asdk::build::build_into(&store, &src.join("hello.c"), &Default::default(), &[]).unwrap();
    let t0 = Instant::now();
    let out = d.actl(&["template", "create", "--generic"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let t = d.get("/templates/generic").unwrap();
    assert_eq!(t["spec"]["memory_mib"], 64, "{t}");
    eprintln!("generic template made explicitly in {:.1?}", t0.elapsed());

    let c = CriClient::connect(&d.cri_socket());
    let logs = d.dir.path().join("pods");
    let pod = c.run_pod("hello", &logs);
    let ctr = c.start_hello(&pod);
    let inst = d.get(&format!("/instances/cri-{}", &ctr[..16])).unwrap();
    assert_eq!(inst["clone"]["generic"], true, "{inst}");
    let st = c.wait_state(&ctr, ContainerState::ContainerExited);
    assert_eq!(st.exit_code, 3, "{st:?}");
    let path = logs.join("hello/0.log");
    let text = CriClient::wait_log(&path, " stdout F exit 3");
    for want in [
        " stdout F hello from Arrow",
        " stdout F argv[1]=--exit",
        " stdout F argv[2]=3",
        " stdout F env GREETING=from CRI",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the log:\n{text}"
        );
    }
    c.call(c.runtime().remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    }))
    .unwrap();
}

#[test]
fn a_generic_template_caught_mid_build_by_kill_9_is_made_again_at_once() {
    let mut d = Daemon::with_real_kernel(&["--generic-template=true", "--pool-size", "0"]);
    let create = std::process::Command::new(env!("CARGO_BIN_EXE_actl"))
        .args(["template", "create", "--generic"])
        .env("ARROW_HOST", format!("unix://{}", d.socket().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !matches!(d.get("/templates/generic"), Ok(t) if t["state"] == "creating") {
        assert!(t0.elapsed() < Duration::from_secs(30), "never creating");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(libc::SIGKILL);
    common::wait_output(create);
    d.start();
    // Forgotten (not left failed), its VM and files gone.
    assert!(d.get("/templates/generic").is_err(), "{}", d.log());
    let left: Vec<_> = std::fs::read_dir(d.dir.path().join("state/templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".build")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = d.actl(&["template", "create", "--generic"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    assert_eq!(d.get("/templates/generic").unwrap()["state"], "ready");
}
