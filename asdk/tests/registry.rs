//! `asdk push` / `asdk pull` against a real registry (Debian's docker-registry on
//! 127.0.0.1, installed by the test setup when missing): round trip with equal digests,
//! skipped blobs, htpasswd auth (flags and auth file), a tampered blob refused with nothing
//! stored, and a resumed download.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use asdk::spec::{Spec, SpecFile};
use asdk::Store;
use base64::Engine;
use serde_json::Value;
use support::registry::Registry;

fn asdk(store: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_asdk"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("ASDK_REGISTRY_CREDS")
        .env_remove("ASDK_REGISTRY_TOKEN")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("DOCKER_CONFIG", store.join("no-docker-config"))
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run asdk");
    eprintln!(
        "$ asdk {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "asdk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn failed(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "asdk should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A store with `hello:v1` (an image with a 64 KiB "binary", so blobs are not trivial).
fn store_with_image(dir: &Path) -> (Store, asdk::BuiltImage) {
    let store = Store::open(dir).unwrap();
    let (spec, files) =
        Spec::resolve(&SpecFile::default(), "hello", "1.0", Path::new(".")).unwrap();
    let binary: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let img = asdk::image::assemble(&binary, &spec, &files).expect("assemble");
    store.add(&img, &["hello:v1".parse().unwrap()]).unwrap();
    (store, img)
}

#[test]
fn push_then_pull_into_a_fresh_store_gives_the_same_image() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (_a, img) = store_with_image(&tmp.path().join("a"));
    let remote = format!("{}/team/hello:1", reg.addr);

    let pushed = ok(&asdk(
        &tmp.path().join("a"),
        &["push", "hello:v1", &remote, "--output", "json"],
    ));
    let pushed: Value = serde_json::from_str(&pushed).unwrap();
    assert_eq!(pushed["digest"], img.digest.to_string());
    assert_eq!(pushed["uploaded"], 2, "spec + initrd uploaded");

    // Again: the registry has every blob, nothing is uploaded.
    let again: Value = serde_json::from_str(&ok(&asdk(
        &tmp.path().join("a"),
        &["push", "hello:v1", &remote, "--output", "json"],
    )))
    .unwrap();
    assert_eq!(
        (again["uploaded"].as_u64(), again["existing"].as_u64()),
        (Some(0), Some(2))
    );

    let b = tmp.path().join("b");
    let id = ok(&asdk(&b, &["pull", &remote]));
    assert_eq!(
        id,
        img.digest.to_string(),
        "same image ID after the round trip"
    );
    let store_b = Store::open(&b).unwrap();
    let pulled = store_b.image(&remote).unwrap();
    store_b.verify(&pulled).unwrap();
    assert_eq!(pulled.spec, img.spec);
    assert_eq!(
        store_b.initrd_bytes(&pulled).unwrap(),
        img.blobs[1],
        "initrd byte-identical"
    );
    let listed = ok(&asdk(&b, &["images"]));
    assert!(
        listed.contains(&format!("{}/team/hello", reg.addr)),
        "{listed}"
    );

    // Pulling again downloads nothing; pulling by digest works and is verified.
    let again: Value =
        serde_json::from_str(&ok(&asdk(&b, &["pull", &remote, "--output", "json"]))).unwrap();
    assert_eq!(
        (again["downloaded"].as_u64(), again["existing"].as_u64()),
        (Some(0), Some(2))
    );
    let by_digest = format!("{}/team/hello@{}", reg.addr, img.digest);
    let c = tmp.path().join("c");
    assert_eq!(
        ok(&asdk(&c, &["pull", "-q", &by_digest])),
        img.digest.to_string()
    );
    assert!(Store::open(&c)
        .unwrap()
        .image(&img.digest.to_string())
        .is_ok());

    let missing = failed(&asdk(
        &b,
        &["pull", &format!("{}/team/nothing:1", reg.addr)],
    ));
    assert!(missing.contains("not found"), "{missing}");
}

#[test]
fn htpasswd_registry_needs_credentials_from_flags_or_auth_file() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let (_store, img) = store_with_image(&a);
    let remote = format!("{}/hello:1", reg.addr);

    let e = failed(&asdk(&a, &["push", "hello:v1", &remote]));
    assert!(e.contains("authentication failed"), "{e}");
    let e = failed(&asdk(
        &a,
        &["push", "--creds", "alice:wrong", "hello:v1", &remote],
    ));
    assert!(e.contains("authentication failed"), "{e}");
    assert_eq!(
        ok(&asdk(
            &a,
            &["push", "--creds", "alice:s3cret", "hello:v1", &remote]
        )),
        img.digest.to_string()
    );

    let b = tmp.path().join("b");
    let e = failed(&asdk(&b, &["pull", &remote]));
    assert!(e.contains("authentication failed"), "{e}");
    let auth_file = tmp.path().join("config.json");
    let token = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths":{{"{}":{{"auth":"{token}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let id = ok(&asdk(
        &b,
        &["pull", "--authfile", auth_file.to_str().unwrap(), &remote],
    ));
    assert_eq!(id, img.digest.to_string());
    // DOCKER_CONFIG is found without a flag, as docker does.
    let c = tmp.path().join("c");
    let docker_dir = tmp.path().join("docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    std::fs::copy(&auth_file, docker_dir.join("config.json")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_asdk"))
        .args(["--store", c.to_str().unwrap(), "pull", "-q", &remote])
        .env("DOCKER_CONFIG", &docker_dir)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert_eq!(ok(&out), img.digest.to_string());
}

#[test]
fn tampered_blob_is_refused_and_nothing_is_stored() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let (_store, img) = store_with_image(&a);
    let remote = format!("{}/hello:1", reg.addr);
    ok(&asdk(&a, &["push", "-q", "hello:v1", &remote]));

    // Flip one byte of the initrd in the registry's storage (same size).
    let initrd_hex = img.manifest.initrd().digest.hex();
    let data = reg.blob_data(&initrd_hex);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[40000] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let b = tmp.path().join("b");
    let e = failed(&asdk(&b, &["pull", &remote]));
    assert!(e.contains("tampered"), "{e}");
    assert!(e.contains(&initrd_hex), "names the blob: {e}");
    let store_b = Store::open(&b).unwrap();
    assert!(
        store_b.references().unwrap().is_empty(),
        "no reference stored"
    );
    assert!(!store_b.has_blob(&img.manifest.initrd().digest));
    assert!(
        !store_b.blob_path(&img.digest).exists(),
        "no manifest stored"
    );
    let leftovers: Vec<_> = std::fs::read_dir(store_b.tmp_dir()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "no partial downloads kept: {leftovers:?}"
    );
}

#[test]
fn interrupted_pull_resumes_from_the_partial_download() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let (_store, img) = store_with_image(&a);
    let remote = format!("{}/hello:1", reg.addr);
    ok(&asdk(&a, &["push", "-q", "hello:v1", &remote]));

    // What an interrupted pull leaves: the first part of the initrd in the store's tmp/.
    let b = tmp.path().join("b");
    let store_b = Store::open(&b).unwrap();
    let initrd = &img.blobs[1];
    let half = initrd.len() / 2;
    let partial = store_b.tmp_dir().join(format!(
        "pull-{}.partial",
        img.manifest.initrd().digest.hex()
    ));
    std::fs::write(&partial, &initrd[..half]).unwrap();
    let out = asdk(&b, &["pull", "--output", "json", &remote]);
    let pulled: Value = serde_json::from_str(&ok(&out)).unwrap();
    let spec_len = img.blobs[0].len();
    assert_eq!(
        pulled["bytes"].as_u64(),
        Some((spec_len + initrd.len() - half) as u64),
        "only the missing part of the initrd was downloaded"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming at"));
    assert!(store_b.image(&remote).is_ok());
    assert!(!partial.exists());

    // A partial that is wrong (not a prefix of the blob) is dropped and fetched again.
    let c = tmp.path().join("c");
    let store_c = Store::open(&c).unwrap();
    let partial = store_c.tmp_dir().join(format!(
        "pull-{}.partial",
        img.manifest.initrd().digest.hex()
    ));
    std::fs::write(&partial, vec![0u8; half]).unwrap();
    assert_eq!(
        ok(&asdk(&c, &["pull", "-q", &remote])),
        img.digest.to_string()
    );
    store_c.verify(&store_c.image(&remote).unwrap()).unwrap();
}
