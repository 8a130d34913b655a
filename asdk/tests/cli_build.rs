//! `asdk build`: static checks, reproducibility, Cargo and C sources, concurrency.

mod common;

use std::process::Command;

use common::{app_source, asdk, asdk_ok, build_app, files_under};

#[test]
fn same_inputs_give_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let a = build_app(&dir.path().join("a"), "hello");
    let b = build_app(&dir.path().join("b"), "hello");
    assert!(a.starts_with("sha256:") && a.len() == 71, "{a}");
    assert_eq!(a, b, "two builds of the same source differ");

    // The source's location does not matter either (prefix map in the compile flags).
    let copy = dir.path().join("elsewhere/hello");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["hello.c", "arrow.toml"] {
        std::fs::copy(app_source("hello").with_file_name(f), copy.join(f)).unwrap();
    }
    let c = asdk_ok(
        &dir.path().join("c"),
        &["build", "-q", copy.join("hello.c").to_str().unwrap()],
    );
    assert_eq!(c.trim(), a);
}

#[test]
fn rejects_dynamic_binary_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = asdk(&store, &["build", "/bin/ls", "-t", "ls:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/bin/ls is dynamically linked"), "{err}");
    assert!(err.contains("libc.so.6"), "names the libraries: {err}");
    assert!(err.contains("ld-linux"), "names the interpreter: {err}");
    assert!(
        err.contains("musl-gcc -static") && err.contains("crt-static"),
        "{err}"
    );
    assert!(files_under(&store).is_empty(), "store must stay empty");
}

#[test]
fn rejects_non_elf_missing_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let cases = [
        (
            script.to_str().unwrap().to_owned(),
            "is not an ELF executable",
        ),
        ("/nonexistent/app".to_owned(), "/nonexistent/app"),
        (
            dir.path().to_str().unwrap().to_owned(),
            "without Cargo.toml",
        ),
    ];
    for (path, expected) in cases {
        let out = asdk(&store, &["build", &path]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{path}: {err}");
    }
    // A relocatable object is ELF x86-64 but not an executable.
    let obj = dir.path().join("x.o");
    let cc = Command::new("cc")
        .args(["-c", "-x", "c", "-", "-o"])
        .arg(&obj)
        .stdin(std::process::Stdio::null())
        .status();
    if cc.is_ok_and(|s| s.success()) {
        let out = asdk(&store, &["build", obj.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not an executable"), "{err}");
    }
    assert!(files_under(&store).is_empty());
}

#[test]
fn bad_spec_is_reported_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, "vcpus = 0\n").unwrap();
    let src = app_source("hello");
    let out = asdk(
        &dir.path().join("s"),
        &["build", src.to_str().unwrap(), "-f", spec.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`vcpus`") && err.contains("1..=32"), "{err}");
    std::fs::write(&spec, "memroy_mib = 64\n").unwrap();
    let out = asdk(
        &dir.path().join("s"),
        &["build", src.to_str().unwrap(), "-f", spec.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `memroy_mib`"), "{err}");
}

#[test]
fn concurrent_builds_of_the_same_tag() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Two different images fight over one tag.
    let specs: Vec<_> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("spec{i}.toml"));
            std::fs::write(
                &p,
                format!("name = \"race\"\nenv = {{ VARIANT = \"{i}\" }}\n"),
            )
            .unwrap();
            p
        })
        .collect();
    let src = app_source("hello");
    let children: Vec<_> = (0..6)
        .map(|i| {
            std::process::Command::new(env!("CARGO_BIN_EXE_asdk"))
                .arg("--store")
                .arg(&store)
                .args(["build", "-q", "-t", "race:latest", "-f"])
                .arg(&specs[i % 2])
                .arg(&src)
                .output_async()
        })
        .collect();
    let mut digests = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), 2, "two variants, two digests: {digests:?}");
    // The tag names one complete, intact image; the other is reachable by ID.
    let store_h = asdk::Store::open(&store).unwrap();
    let tagged = store_h.image("race:latest").unwrap();
    assert!(digests.contains(&tagged.digest.to_string()));
    store_h.verify(&tagged).unwrap();
    let listed = asdk_ok(&store, &["images", "--output", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        files_under(&store.join("tmp")).is_empty(),
        "no temp files left"
    );
}

/// `Command::spawn` with piped output, named for readability above.
trait SpawnPiped {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnPiped for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn builds_a_cargo_project_statically() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("tiny");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"tiny_svc\"\nversion = \"0.3.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        project.join("src/main.rs"),
        "fn main() { println!(\"tiny\"); std::process::exit(4) }\n",
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_asdk"))
        .arg("--store")
        .arg(&store)
        .args(["build", "--output", "json"])
        .arg(&project)
        // Its own target dir: the workspace's is locked by the running `cargo test`.
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("==> building Cargo project"),
        "progress shown: {err}"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["references"][0], "tiny-svc:latest");
    assert_eq!(result["executable"], "static-pie");

    let store = asdk::Store::open(&store).unwrap();
    let image = store.image("tiny-svc").unwrap();
    assert_eq!(image.spec.version, "0.3.0");
    let entries = asdk::cpio::read(&store.initrd_bytes(&image).unwrap()).unwrap();
    let app = entries.iter().find(|e| e.path == "app").unwrap();
    let exe = dir.path().join("tiny-app");
    std::fs::write(&exe, &app.data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = Command::new(&exe).output().unwrap();
    assert_eq!(run.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&run.stdout), "tiny\n");
}

#[test]
fn packages_a_prebuilt_static_binary_and_rejects_other_arches() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    build_app(&store, "hello");
    let handle = asdk::Store::open(&store).unwrap();
    let image = handle.image("hello").unwrap();
    let entries = asdk::cpio::read(&handle.initrd_bytes(&image).unwrap()).unwrap();
    let app = entries
        .iter()
        .find(|e| e.path == "app")
        .unwrap()
        .data
        .clone();

    // The static binary itself is accepted as PATH; no arrow.toml beside it → defaults.
    let bin = dir.path().join("my_tool");
    std::fs::write(&bin, &app).unwrap();
    let other = dir.path().join("other");
    let out = asdk_ok(&other, &["build", "-q", bin.to_str().unwrap()]);
    let spec = asdk::Store::open(&other)
        .unwrap()
        .image("my-tool")
        .unwrap()
        .spec;
    assert_eq!(spec.name, "my-tool");
    assert_eq!((spec.vcpus, spec.memory_mib), (1, 128));
    assert!(out.trim().starts_with("sha256:"));

    // Same bytes claiming to be AArch64 (e_machine at offset 18).
    let mut arm = app.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    let arm_path = dir.path().join("arm");
    std::fs::write(&arm_path, &arm).unwrap();
    let empty = dir.path().join("empty");
    let out = asdk(&empty, &["build", arm_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is built for AARCH64") && err.contains("x86-64"),
        "{err}"
    );
    assert!(files_under(&empty).is_empty());
}
