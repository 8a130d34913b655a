//! What the volume tests and the volumes bench share: the project's virtiofsd, the
//! volprobe app (examples/apps/volprobe) in a daemon's store, and an arrowd whose
//! generic template (64 MiB, with fs slots) is built.

use super::{stderr, Daemon};

/// The project's virtiofsd (what arrowd uses too), built from crates.io on first use.
pub fn virtiofsd() -> String {
    shadowfs::tools::find_or_install_virtiofsd()
        .expect("virtiofsd for writable volumes")
        .display()
        .to_string()
}

/// Builds examples/apps/volprobe into `d`'s store as image `volprobe`.
pub fn build_volprobe(d: &Daemon) {
    let store = asdk::Store::open(d.store_dir()).unwrap();
    let src = super::repo_root().join("examples/apps/volprobe/volprobe.c");
    asdk::build::build_into(&store, &src, &Default::default(), &[]).unwrap();
}

/// arrowd with the real kernel, virtiofsd, a 64 MiB generic template (built before this
/// returns) with a warm pool of one, `extra` arguments, and volprobe in its store.
pub fn generic_daemon(extra: &[&str]) -> Daemon {
    let vfsd = virtiofsd();
    let mut args = vec![
        "--virtiofsd",
        &vfsd,
        "--generic-template=true",
        "--generic-memory-mib",
        "64",
        "--pool-size",
        "1",
    ];
    args.extend_from_slice(extra);
    let d = Daemon::with_real_kernel(&args);
    build_volprobe(&d);
    let out = d.actl(&["template", "create", "--generic"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    d
}
