//! The musl-gcc install path of `asdk build FILE.c`, exercised against fake `apt-get` and
//! `musl-gcc` scripts on a private PATH (the real system is never touched).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn script(path: &std::path::Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn installs_musl_tools_when_missing_then_builds() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tiny = dir.path().join("tiny");
    std::fs::write(&tiny, common::tiny_static_elf()).unwrap();
    // A fresh machine: `install` fails until `update` has fetched the package lists.
    script(
        &bin.join("apt-get"),
        &format!(
            r#"#!/bin/sh
PATH=/usr/bin:/bin
D={dir}
echo "apt-get $*" >> $D/apt.log
case "$*" in
  *update*) touch $D/lists ;;
  *install*musl-tools*)
    [ -f $D/lists ] || {{ echo "E: Unable to locate package musl-tools" >&2; exit 100; }}
    printf '#!/bin/sh\nPATH=/usr/bin:/bin\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done\ncp {tiny} "$out"\n' > $D/bin/musl-gcc
    chmod 755 $D/bin/musl-gcc ;;
  *) exit 1 ;;
esac
"#,
            dir = dir.path().display(),
            tiny = tiny.display()
        ),
    );
    let src = dir.path().join("svc.c");
    std::fs::write(&src, "int main(void) { return 42; }\n").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_asdk"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("build")
        // The private PATH has no mkfs.erofs; the image base is not what this tests.
        .arg("--no-base")
        .arg(&src)
        .env("PATH", &bin)
        .env_remove("ASDK_MUSL_GCC")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("installing Debian package musl-tools"),
        "{err}"
    );
    let log = std::fs::read_to_string(dir.path().join("apt.log")).unwrap();
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 3, "{log}");
    assert!(
        calls[0].contains("install -y --no-install-recommends musl-tools"),
        "{log}"
    );
    assert!(calls[1].ends_with("update"), "{log}");
    assert!(calls[2].contains("install"), "{log}");

    let store = asdk::Store::open(dir.path().join("store")).unwrap();
    let image = store.image("svc").unwrap();
    let entries = asdk::cpio::read(&store.initrd_bytes(&image).unwrap()).unwrap();
    let app = entries.iter().find(|e| e.path == "app").unwrap();
    assert_eq!(app.data, common::tiny_static_elf());

    // The packaged tiny ELF really runs (exit 42) on this x86-64 host.
    let exe = dir.path().join("run");
    std::fs::write(&exe, &app.data).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(Command::new(&exe).status().unwrap().code(), Some(42));
}

#[test]
fn missing_apt_get_gives_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("svc.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_asdk"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("build")
        .arg(&src)
        .env("PATH", dir.path())
        .env_remove("ASDK_MUSL_GCC")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("musl-gcc is needed") && err.contains("apt-get install musl-tools"),
        "{err}"
    );
    assert!(common::files_under(&dir.path().join("store")).is_empty());
}
