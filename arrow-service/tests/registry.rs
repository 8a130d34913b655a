//! arrowd pulls from a real registry (Debian's docker-registry on 127.0.0.1 with htpasswd
//! auth, installed by the test setup when missing): `POST /images/pull` and `actl pull`
//! use asdk's registry code; the pulled image is listed, inspected and runs (test guest).

mod common;

#[path = "../../asdk/tests/support/registry.rs"]
mod registry;

use common::{stderr, stdout, Daemon};
use serde_json::json;

#[test]
fn arrowd_pulls_from_a_registry_and_runs_the_image() {
    let reg = registry::Registry::start(Some(("bob", "pw1")));
    let d = Daemon::new();
    // An image built elsewhere (its own store) and pushed with asdk's library.
    let elsewhere = tempfile::tempdir().unwrap();
    let src = asdk::Store::open(elsewhere.path()).unwrap();
    let file = asdk::spec::SpecFile {
        name: Some("exit3".into()),
        args: vec!["exit=3".into()],
        memory_mib: Some(32),
        ..Default::default()
    };
    let (spec, files) =
        asdk::Spec::resolve(&file, "exit3", "1.0.0", std::path::Path::new(".")).unwrap();
    let built = asdk::image::assemble(b"\x7fELF not run by the test guest", &spec, &files)
        .expect("assemble");
    src.add(&built, &["exit3:latest".parse().unwrap()]).unwrap();
    let remote = format!("{}/apps/exit3:1", reg.addr);
    let opts = asdk::registry::RegistryOptions {
        credentials: Some(asdk::registry::Credentials::Basic {
            username: "bob".into(),
            password: "pw1".into(),
        }),
        progress: asdk::registry::ProgressMode::Quiet,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(asdk::registry::push(&src, "exit3", &remote, &opts))
        .unwrap();

    // Without credentials: refused, nothing stored.
    let (status, msg) = d
        .post("/images/pull", Some(json!({ "reference": remote })))
        .unwrap_err();
    assert_eq!(status, 409, "{msg}");
    assert!(msg.contains("authentication failed"), "{msg}");
    let (status, _) = d
        .post("/images/pull", Some(json!({ "reference": "Not A Ref" })))
        .unwrap_err();
    assert_eq!(status, 400);

    let pulled = d
        .post(
            "/images/pull",
            Some(json!({ "reference": remote, "username": "bob", "password": "pw1" })),
        )
        .unwrap();
    assert_eq!(pulled["digest"], built.digest.to_string());
    assert_eq!(pulled["reference"], remote);
    let list = d.get("/images").unwrap();
    assert!(list.to_string().contains(&remote), "{list}");
    let inspected = d.get(&format!("/images/{remote}")).unwrap();
    assert_eq!(inspected["digest"], built.digest.to_string());

    // actl pull (already there: nothing downloaded), then the pulled image runs.
    let out = d.actl(&["pull", "--creds", "bob:pw1", &remote]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), built.digest.to_string());
    let out = d.actl(&["run", "--rm", &remote]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
