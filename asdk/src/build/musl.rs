//! Builds a C source file into a static binary with `musl-gcc -static`, installing Debian's
//! `musl-tools` when musl-gcc is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Progress};

/// Environment variable naming the musl-gcc to use instead of the one on PATH.
pub const MUSL_GCC_ENV: &str = "ASDK_MUSL_GCC";

/// Finds an executable named `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Returns musl-gcc's path, installing `musl-tools` with apt-get if it is not there.
pub fn find_or_install(progress: &Progress) -> Result<PathBuf, BuildError> {
    if let Some(explicit) = std::env::var_os(MUSL_GCC_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(explicit));
    }
    if let Some(p) = which("musl-gcc") {
        return Ok(p);
    }
    let no_tool = |why: &str| BuildError::MissingTool {
        tool: "musl-gcc".into(),
        message: format!(
            "{why}; install musl-gcc yourself (Debian/Ubuntu: `apt-get install musl-tools`) \
             or set {MUSL_GCC_ENV} to its path"
        ),
    };
    let Some(apt) = which("apt-get") else {
        return Err(no_tool("it is not on PATH and apt-get is not available"));
    };
    // Concurrent builds on a fresh machine: one installs, the others wait and then find it.
    let _guard = install_lock();
    if let Some(p) = which("musl-gcc") {
        return Ok(p);
    }
    progress.step("musl-gcc not found: installing Debian package musl-tools with apt-get");
    let install = |p: &Progress| {
        p.run(
            "apt-get install musl-tools",
            Command::new(&apt)
                .args([
                    "-o",
                    "DPkg::Lock::Timeout=600",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "musl-tools",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install(progress).is_err() {
        // A fresh machine has no package lists yet.
        progress.step("updating the apt package lists");
        progress
            .run(
                "apt-get update",
                Command::new(&apt).args(["-o", "DPkg::Lock::Timeout=600", "update"]),
            )
            .map_err(|e| no_tool(&format!("installing it failed ({e}); are you root?")))?;
        install(progress)
            .map_err(|e| no_tool(&format!("installing it failed ({e}); are you root?")))?;
    }
    which("musl-gcc")
        .ok_or_else(|| no_tool("musl-tools was installed but musl-gcc is still not on PATH"))
}

/// Serializes installs between asdk processes (best effort: without the lock, apt's own
/// lock still protects dpkg).
fn install_lock() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join("asdk-musl-install.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
    Some(file)
}

/// Compiles `source` with `musl-gcc -static` and returns the binary's bytes.
pub fn compile(source: &Path, progress: &Progress) -> Result<Vec<u8>, BuildError> {
    let gcc = find_or_install(progress)?;
    let tmp = tempfile::tempdir().map_err(|e| BuildError::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let out = tmp.path().join("app");
    let src_dir = source.parent().unwrap_or(Path::new("."));
    progress.step(&format!(
        "compiling {} with {} -static",
        source.display(),
        gcc.display()
    ));
    progress.run(
        "musl-gcc",
        Command::new(&gcc)
            .args(["-static", "-O2", "-s", "-Wall", "-Wextra"])
            // Keep the build directory out of the binary: same source, same bytes, anywhere.
            .arg(format!("-ffile-prefix-map={}=.", src_dir.display()))
            .arg("-o")
            .arg(&out)
            .arg(source),
    )?;
    std::fs::read(&out).map_err(|e| BuildError::Io {
        path: out,
        source: e,
    })
}
