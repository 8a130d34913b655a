//! virtiofsd, the vhost-user-fs backend that serves Arrow's live volumes.
//!
//! It is not packaged by Debian at the version Arrow needs, so it is built
//! from crates.io (`cargo install --locked virtiofsd --version 1.14.0`) into
//! `$XDG_CACHE_HOME/arrow/tools` (default `~/.cache/arrow/tools`) on first
//! use, after its C build dependencies (libseccomp, libcap-ng) are installed
//! with apt-get. One install at a time: concurrent callers wait on a lock
//! and then find the result. Building it takes minutes of both cores; the
//! cargo output is relayed line by line to the log as progress.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{apt_install, find_or_install, which, Tool};
use crate::Error;

/// The virtiofsd release Arrow is tested with.
pub const VIRTIOFSD_VERSION: &str = "1.14.0";

const PROGRAM: &str = "virtiofsd";

/// Build dependencies of virtiofsd: `libseccomp-sys` links libseccomp,
/// `capng` links libcap-ng; pkg-config finds them.
const PKG_CONFIG: Tool = Tool {
    program: "pkg-config",
    package: "pkg-config",
};
const BUILD_LIBS: [&str; 2] = ["libseccomp-dev", "libcap-ng-dev"];

/// `$XDG_CACHE_HOME/arrow/tools` (default `$HOME/.cache/arrow/tools`):
/// where Arrow installs the tools it builds itself.
pub fn tools_root() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("arrow").join("tools")
}

fn installed() -> Option<PathBuf> {
    let local = tools_root().join("bin").join(PROGRAM);
    if is_executable(&local) {
        return Some(local);
    }
    which(PROGRAM)
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The path of a `virtiofsd` program: `$XDG_CACHE_HOME/arrow/tools/bin`
/// first, then PATH; otherwise builds virtiofsd
/// [`VIRTIOFSD_VERSION`] there with cargo (minutes, logged as progress).
pub fn find_or_install_virtiofsd() -> Result<PathBuf, Error> {
    if let Some(p) = installed() {
        return Ok(p);
    }
    let missing = |why: String| Error::MissingTool {
        program: PROGRAM,
        package: "virtiofsd (crates.io)",
        why,
    };
    let root = tools_root();
    std::fs::create_dir_all(&root).map_err(|source| Error::Io {
        path: root.clone(),
        source,
    })?;
    let _guard = lock(&root).map_err(|source| Error::Io {
        path: root.join(".virtiofsd.lock"),
        source,
    })?;
    if let Some(p) = installed() {
        return Ok(p);
    }
    find_or_install(PKG_CONFIG)?;
    for package in BUILD_LIBS {
        install_build_lib(package)?;
    }
    let cargo = which("cargo")
        .or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
            Some(home.join("bin").join("cargo")).filter(|p| is_executable(p))
        })
        .ok_or_else(|| {
            missing("cargo is not available to build it (install Rust with rustup)".into())
        })?;
    tracing::info!(
        "virtiofsd not found: building virtiofsd {VIRTIOFSD_VERSION} from crates.io into {} (takes minutes)",
        root.display()
    );
    let started = std::time::Instant::now();
    let mut child = Command::new(&cargo)
        .args([
            "install",
            "--locked",
            PROGRAM,
            "--version",
            VIRTIOFSD_VERSION,
        ])
        .arg("--root")
        .arg(&root)
        // A caller's target dir (a workspace build) must not receive it.
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: cargo.display().to_string(),
            source,
        })?;
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = line.trim().to_string();
            if line.starts_with("Compiling") || line.starts_with("Installing") {
                tracing::info!("virtiofsd build: {line}");
            }
            tail.push(line);
            if tail.len() > 20 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().map_err(|source| Error::Spawn {
        program: cargo.display().to_string(),
        source,
    })?;
    if !status.success() {
        return Err(missing(format!(
            "cargo install virtiofsd {VIRTIOFSD_VERSION} exited with {status}: {}",
            tail.join("\n")
        )));
    }
    tracing::info!(
        "virtiofsd {VIRTIOFSD_VERSION} built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    installed()
        .ok_or_else(|| missing("cargo install succeeded but the program is not there".into()))
}

/// Installs a Debian library package unless dpkg says it is installed.
fn install_build_lib(package: &'static str) -> Result<(), Error> {
    let present = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed")
        });
    if present {
        return Ok(());
    }
    tracing::info!("building virtiofsd needs {package}: installing it with apt-get");
    apt_install(package).map_err(|why| Error::MissingTool {
        program: PROGRAM,
        package,
        why: format!("building virtiofsd needs {package}: {why}"),
    })
}

fn lock(root: &std::path::Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".virtiofsd.lock"))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real program, installed by the project if missing (minutes the
    /// first time), answers `--version` with the pinned release.
    #[test]
    fn finds_or_installs_virtiofsd_1_14() {
        let p = find_or_install_virtiofsd().expect("virtiofsd");
        let out = Command::new(&p)
            .arg("--version")
            .output()
            .expect("run virtiofsd");
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(v.contains(VIRTIOFSD_VERSION), "{}: {v}", p.display());
    }
}
