//! The external programs shadowfs drives, and installing them.
//!
//! EROFS and ext4 images are made by the reference tools (Debian
//! `erofs-utils`: mkfs.erofs, fsck.erofs; `e2fsprogs`: mke2fs, e2fsck,
//! debugfs) rather than by a hand-written writer: they are what the kernel
//! is tested against. A missing tool is installed with `apt-get` when this
//! runs as root on Debian/Ubuntu (as asdk installs musl-tools); otherwise
//! the error says which package to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// A program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const MKFS_EROFS: Tool = Tool {
    program: "mkfs.erofs",
    package: "erofs-utils",
};
pub const FSCK_EROFS: Tool = Tool {
    program: "fsck.erofs",
    package: "erofs-utils",
};
pub const MKE2FS: Tool = Tool {
    program: "mke2fs",
    package: "e2fsprogs",
};
pub const E2FSCK: Tool = Tool {
    program: "e2fsck",
    package: "e2fsprogs",
};
pub const RESIZE2FS: Tool = Tool {
    program: "resize2fs",
    package: "e2fsprogs",
};
pub const DEBUGFS: Tool = Tool {
    program: "debugfs",
    package: "e2fsprogs",
};

/// Installs a Debian package with apt-get (updating the package lists if
/// the first try fails); the error says why.
pub(crate) fn apt_install(package: &str) -> Result<(), String> {
    let Some(apt) = which("apt-get") else {
        return Err("apt-get is not available".into());
    };
    let install = || {
        Command::new(&apt)
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"])
            .args(["--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let ok =
        |o: &std::io::Result<std::process::Output>| o.as_ref().is_ok_and(|o| o.status.success());
    if ok(&install()) {
        return Ok(());
    }
    // A fresh machine has no package lists yet.
    let _ = Command::new(&apt)
        .args(["-o", "DPkg::Lock::Timeout=600", "update", "-qq"])
        .output();
    let out = install();
    if ok(&out) {
        return Ok(());
    }
    let why = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    Err(format!("installing it failed ({why}); are you root?"))
}

/// Directories searched besides PATH: the e2fsprogs tools live in /sbin,
/// which a non-login PATH may lack.
const EXTRA_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The tool's path; installs its package with apt-get if it is missing.
pub fn find_or_install(tool: Tool) -> Result<PathBuf, Error> {
    if let Some(p) = which(tool.program) {
        return Ok(p);
    }
    let missing = |why: String| Error::MissingTool {
        program: tool.program,
        package: tool.package,
        why,
    };
    // Concurrent first uses on a fresh machine: one installs, the others
    // wait and then find it.
    let _guard = install_lock();
    if let Some(p) = which(tool.program) {
        return Ok(p);
    }
    tracing::info!(
        "{} not found: installing Debian package {} with apt-get",
        tool.program,
        tool.package
    );
    apt_install(tool.package).map_err(missing)?;
    which(tool.program).ok_or_else(|| {
        missing(format!(
            "{} was installed but the program is still not found",
            tool.package
        ))
    })
}

fn install_lock() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join("arrow-shadowfs-install.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
    Some(file)
}

/// Runs `cmd`; a failure names the program and quotes its stderr.
pub fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output, Error> {
    let program = Path::new(cmd.get_program()).display().to_string();
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            what: what.to_string(),
            program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

mod virtiofsd;
pub use virtiofsd::{find_or_install_virtiofsd, tools_root, VIRTIOFSD_VERSION};
