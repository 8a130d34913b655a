//! Bases and writable layers made by the real tools (mkfs.erofs, mke2fs,
//! debugfs; installed with apt-get when missing, as the library does).

use std::path::Path;
use std::process::Command;

use shadowfs::base::{self, Entry};
use shadowfs::upper::{self, Change, ChangeKind};
use shadowfs::{tools, Error};

fn entries() -> Vec<Entry> {
    vec![
        Entry::File {
            path: "app".into(),
            mode: 0o755,
            data: b"\x7fELF not really".to_vec(),
        },
        Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
        Entry::File {
            path: "data/conf/app.toml".into(),
            mode: 0o644,
            data: b"greeting = \"hello\"\n".to_vec(),
        },
        Entry::Dir {
            path: "data".into(),
            mode: 0o755,
        },
    ]
}

#[test]
fn bases_are_reproducible_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.erofs");
    let b = dir.path().join("b.erofs");
    let da = base::build(&entries(), &a).unwrap();
    let mut reversed = entries();
    reversed.reverse();
    let db = base::build(&reversed, &b).unwrap();
    assert_eq!(da, db, "same entries in another order: same bytes");
    assert!(da.starts_with("sha256:"));
    assert_eq!(base::file_digest(&a).unwrap(), da);
    base::check(&a).unwrap();

    let mut other = entries();
    other.push(Entry::File {
        path: "data/more".into(),
        mode: 0o644,
        data: vec![1],
    });
    assert_ne!(base::build(&other, &b).unwrap(), da);

    // Truncated: no superblock. Corrupted: bad magic / fsck failure.
    let t = dir.path().join("trunc.erofs");
    std::fs::write(&t, &std::fs::read(&a).unwrap()[..600]).unwrap();
    let e = base::check(&t).unwrap_err();
    assert!(matches!(e, Error::BadBase { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    let mut bytes = std::fs::read(&a).unwrap();
    bytes[1024] ^= 0xff;
    std::fs::write(&t, &bytes).unwrap();
    let e = base::check(&t).unwrap_err();
    assert!(e.to_string().contains("no EROFS superblock"), "{e}");
}

#[test]
fn entries_cannot_escape_the_base() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["../x", "/etc/passwd", "", "a/../../b"] {
        let e = base::build(
            &[Entry::File {
                path: bad.into(),
                mode: 0o644,
                data: vec![],
            }],
            &dir.path().join("x.erofs"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::BadEntry(_)), "{bad}: {e}");
    }
}

/// Writes into a layer what overlayfs would: upper/ with a copied-up file,
/// a whiteout and an opaque directory.
fn fake_instance_writes(layer: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("content");
    std::fs::write(&f, b"changed\n").unwrap();
    let cmds = dir.path().join("cmds");
    std::fs::write(
        &cmds,
        format!(
            "mkdir upper\nmkdir work\nmkdir upper/data\ncd /upper/data\nwrite {} app.toml\n\
             mknod gone c 0 0\nmkdir /upper/data/cache\nea_set /upper/data/cache trusted.overlay.opaque y\n",
            f.display()
        ),
    )
    .unwrap();
    let debugfs = tools::find_or_install(tools::DEBUGFS).unwrap();
    let out = Command::new(debugfs)
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(layer)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn upper_layers_are_created_inspected_grown_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let layer = dir.path().join("upper.img");
    assert_eq!(upper::create(&layer, 17 << 20).unwrap(), 18 << 20);
    assert_eq!(std::fs::metadata(&layer).unwrap().len(), 18 << 20);
    let e = upper::create(&layer, 8 << 20).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert!(!upper::check(&layer).unwrap());
    assert!(upper::changes(&layer).unwrap().is_empty());

    fake_instance_writes(&layer);
    let changes = upper::changes(&layer).unwrap();
    let c = |path: &str, kind, size| Change {
        path: path.into(),
        kind,
        size,
    };
    assert_eq!(
        changes,
        vec![
            c("/data", ChangeKind::Dir, None),
            c("/data/app.toml", ChangeKind::Written, Some(8)),
            c("/data/cache", ChangeKind::OpaqueDir, None),
            c("/data/gone", ChangeKind::Deleted, None),
        ]
    );

    assert_eq!(upper::resize(&layer, 32 << 20).unwrap(), 32 << 20);
    assert_eq!(
        upper::resize(&layer, 20 << 20).unwrap(),
        32 << 20,
        "never shrinks"
    );
    assert_eq!(
        upper::changes(&layer).unwrap(),
        changes,
        "growing keeps the data"
    );

    // A layer that is not ext4 is refused by the check.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    assert!(matches!(upper::check(&junk), Err(Error::BadUpper { .. })));

    upper::remove(&layer).unwrap();
    assert!(!layer.exists());
    upper::remove(&layer).unwrap();
}

/// Without mkfs.erofs and without a way to install it, the error says which
/// package to install (the CLI, with an empty PATH).
#[test]
fn a_missing_tool_is_named_with_its_package() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app"), b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shadowfs"))
        .arg("build")
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("base.erofs"))
        .env("PATH", dir.path().join("empty"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mkfs.erofs is needed") && err.contains("apt-get install erofs-utils"),
        "{err}"
    );
}
