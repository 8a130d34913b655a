//! shadowfs, host side: Arrow's layered image filesystem.
//!
//! ```text
//!            the app's root (/) in the guest = overlayfs
//!        ┌──────────────────────────────────────────────────┐
//!  upper │ writable layer: tmpfs in guest RAM (default), or │ per instance
//!        │ ext4 in <run dir>/upper.img on /dev/pmem1 (rw)   │
//!        ├──────────────────────────────────────────────────┤
//!  lower │ image base: EROFS on /dev/pmem0 (ro, DAX)        │ one file per image,
//!        │ = blobs/sha256/<digest> in the image store       │ shared by every VM
//!        └──────────────────────────────────────────────────┘
//! ```
//!
//! - [`base`]: builds an image's base (its app, spec and shipped files) as a
//!   reproducible EROFS file and checks one.
//! - [`upper`]: creates, grows, checks, inspects (what the instance
//!   changed) and removes persistent writable layers.
//! - [`kernel_params`]: the guest command line that tells ainit to mount
//!   them (see docs/shadowfs.md).

pub mod base;
pub mod tools;
pub mod upper;

use std::path::PathBuf;

/// Errors; each names the file or tool involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} is needed but not installed and could not be installed: {why}; install the Debian package {package} (apt-get install {package})")]
    MissingTool {
        program: &'static str,
        package: &'static str,
        why: String,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {program} exited with {status}: {stderr}")]
    ToolFailed {
        what: String,
        program: String,
        status: String,
        stderr: String,
    },
    #[error("base entry path {0:?} is not a relative path inside the base")]
    BadEntry(String),
    #[error("image base {path} is unusable: {why}; rebuild it (asdk rebuilds a base that fails its digest check)")]
    BadBase { path: PathBuf, why: String },
    #[error("writable layer {path} is unusable: {why}")]
    BadUpper { path: PathBuf, why: String },
    #[error("writable layer size {0} bytes is too large")]
    BadSize(u64),
}

/// The guest device of the image base: the first pmem device.
pub const BASE_DEVICE: &str = "/dev/pmem0";
/// The guest device of a persistent writable layer: the second pmem device.
pub const UPPER_DEVICE: &str = "/dev/pmem1";

/// The writable layer of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upper {
    /// tmpfs in guest RAM; `None` = tmpfs's default size (half the RAM).
    Tmpfs { size_mib: Option<u64> },
    /// ext4 on the second pmem device (attached read-write after the base).
    Persistent,
}

/// Kernel parameters for ainit: mount the base (first pmem device) and the
/// writable layer, and make their overlay the app's root. The VMM must
/// attach the base first (`--pmem BASE,ro`) and, for a persistent layer,
/// the layer second (`--pmem LAYER,rw`).
pub fn kernel_params(upper: &Upper) -> Vec<String> {
    let mut p = vec![format!("arrow.base={BASE_DEVICE}")];
    match upper {
        Upper::Tmpfs { size_mib: Some(m) } => p.push(format!("arrow.upper_size={m}m")),
        Upper::Tmpfs { size_mib: None } => {}
        Upper::Persistent => p.push(format!("arrow.upper={UPPER_DEVICE}")),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_name_the_devices() {
        assert_eq!(
            kernel_params(&Upper::Tmpfs { size_mib: None }),
            ["arrow.base=/dev/pmem0"]
        );
        assert_eq!(
            kernel_params(&Upper::Tmpfs { size_mib: Some(16) }),
            ["arrow.base=/dev/pmem0", "arrow.upper_size=16m"]
        );
        assert_eq!(
            kernel_params(&Upper::Persistent),
            ["arrow.base=/dev/pmem0", "arrow.upper=/dev/pmem1"]
        );
    }
}
