//! Helpers shared by the integration tests: run the real `asdk` binary on a temp store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("asdk lives in the workspace")
        .to_owned()
}

/// Path of a sample app's C source.
pub fn app_source(app: &str) -> PathBuf {
    repo_root().join(format!("examples/apps/{app}/{app}.c"))
}

/// Runs `asdk --store <store> args…`.
pub fn asdk(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asdk"))
        .arg("--store")
        .arg(store)
        .args(args)
        // Never fall back to the user's store, whatever the environment says.
        .env_remove("ASDK_STORE")
        .output()
        .expect("run asdk")
}

/// Runs asdk and asserts success; returns stdout.
pub fn asdk_ok(store: &Path, args: &[&str]) -> String {
    let out = asdk(store, args);
    assert!(
        out.status.success(),
        "asdk {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Builds a sample app into `store` and returns the image digest printed on stdout.
pub fn build_app(store: &Path, app: &str) -> String {
    let src = app_source(app);
    let out = asdk_ok(store, &["build", "-q", src.to_str().expect("utf-8 path")]);
    out.trim().to_owned()
}

/// Files under `dir` (recursively), for "nothing was written" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
