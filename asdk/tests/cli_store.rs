//! Store commands: images, inspect, tag, rm, initrd, corruption detection, OCI round trip.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{asdk, asdk_ok, build_app};

fn make_writable(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn images_inspect_tag_rm() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let digest = build_app(&store, "hello");
    asdk_ok(&store, &["tag", "hello", "team/hello:1.0"]);

    let table = asdk_ok(&store, &["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY") && lines[0].contains("IMAGE ID"),
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].starts_with("hello ") && lines[1].contains(&digest[7..19]),
        "{table}"
    );
    assert!(
        lines[2].starts_with("team/hello ") && lines[2].contains("1.0"),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&asdk_ok(&store, &["images", "--output", "json"])).unwrap();
    assert_eq!(json[0]["id"], digest.as_str());
    assert_eq!(json[1]["reference"], "team/hello:1.0");
    assert_eq!(asdk_ok(&store, &["images", "-q"]).trim(), &digest[7..19]);

    let inspect: serde_json::Value =
        serde_json::from_str(&asdk_ok(&store, &["inspect", &digest[7..19]])).unwrap();
    let img = &inspect[0];
    assert_eq!(img["id"], digest.as_str());
    assert_eq!(img["spec"]["name"], "hello");
    assert_eq!(img["spec"]["env"]["GREETING"], "hello");
    assert_eq!(img["argv"][0], "/app");
    assert_eq!(img["references"].as_array().unwrap().len(), 2);
    let initrd = asdk_ok(&store, &["initrd", "hello"]);
    assert_eq!(img["initrd"]["path"], initrd.trim());
    assert!(std::fs::read(initrd.trim()).unwrap().starts_with(b"070701"));

    // An ID with two references needs --force; a reference is just untagged.
    let out = asdk(&store, &["rm", &digest]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = asdk_ok(&store, &["rm", "team/hello:1.0"]);
    assert_eq!(out.trim(), "Untagged: team/hello:1.0");
    let out = asdk_ok(&store, &["rm", "hello"]);
    assert!(
        out.contains("Untagged: hello:latest") && out.contains(&format!("Deleted: {digest}")),
        "{out}"
    );
    assert_eq!(asdk_ok(&store, &["images", "-q"]), "");
    assert!(
        common::files_under(&store.join("blobs")).is_empty(),
        "blobs collected"
    );

    let out = asdk(&store, &["inspect", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("image 'hello' not found"));
}

#[test]
fn corrupted_blobs_are_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    build_app(&store, "hello");
    let handle = asdk::Store::open(&store).unwrap();
    let image = handle.image("hello").unwrap();

    // Flip one byte of the initrd (the app binary inside it).
    let initrd = handle.blob_path(&image.manifest.initrd().digest);
    let mut bytes = std::fs::read(&initrd).unwrap();
    let last = bytes.len() - 200;
    bytes[last] ^= 0xff;
    make_writable(&initrd);
    std::fs::write(&initrd, &bytes).unwrap();
    let out = asdk(&store, &["initrd", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupted blob") && err.contains(&image.manifest.initrd().digest.to_string()),
        "{err}"
    );
    assert!(
        asdk(
            &store,
            &[
                "export",
                "hello",
                "-o",
                dir.path().join("x.tar").to_str().unwrap()
            ]
        )
        .status
        .code()
            == Some(1)
    );

    // A damaged manifest is reported by its digest; the image can still be listed and removed.
    let manifest = handle.blob_path(&image.digest);
    make_writable(&manifest);
    std::fs::write(&manifest, b"{}").unwrap();
    let out = asdk(&store, &["inspect", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&image.digest.to_string()) && err.contains("corrupted"),
        "{err}"
    );
    assert!(asdk_ok(&store, &["images"]).contains("<damaged>"));
    asdk_ok(&store, &["rm", "hello"]);
    assert!(common::files_under(&store.join("blobs")).is_empty());
}

#[test]
fn export_import_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let digest = build_app(&a, "vsock-echo");
    let archive = dir.path().join("echo.tar");
    asdk_ok(
        &a,
        &[
            "export",
            "vsock-echo:latest",
            "-o",
            archive.to_str().unwrap(),
        ],
    );

    // The archive is a plain OCI image layout carrying an Arrow artifact.
    let listing = std::process::Command::new("tar")
        .arg("tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("oci-layout") && listing.contains("index.json"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("blobs/sha256/{}", &digest[7..])),
        "{listing}"
    );

    let out = asdk_ok(&b, &["import", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), digest);
    let a_store = asdk::Store::open(&a).unwrap();
    let b_store = asdk::Store::open(&b).unwrap();
    let (ia, ib) = (
        a_store.image("vsock-echo").unwrap(),
        b_store.image("vsock-echo").unwrap(),
    );
    assert_eq!(ia.spec, ib.spec);
    assert_eq!(ib.spec.ports, vec![5000]);
    assert_eq!(
        a_store.initrd_bytes(&ia).unwrap(),
        b_store.initrd_bytes(&ib).unwrap()
    );

    // Importing again under another name keeps the digest.
    let out = asdk_ok(&b, &["import", archive.to_str().unwrap(), "-t", "echo:v2"]);
    assert_eq!(out.trim(), digest);
    assert_eq!(b_store.resolve("echo:v2").unwrap().to_string(), digest);

    // Garbage is refused and nothing is written.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar").unwrap();
    let c = dir.path().join("c");
    let out = asdk(&c, &["import", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid OCI image layout"));
    assert!(common::files_under(&c.join("blobs")).is_empty());
}
