//! A volume of an app: host content the guest's ainit mounts at a guest
//! path before the exec (docs/guest-kernel.md, "Volumes").
//!
//! The guest reads each volume as one string `KIND:ID:MODE:PATH`: on a cold
//! boot's command line (`arrow.vol=`, see [`Volume::param`]) or in a generic
//! template clone's injected app description (`crate::app_spec`). What the
//! guest would refuse is refused here first, with the reason.

use serde::{Deserialize, Serialize};

/// Most volumes per app (the guest's ARROW_MAX_VOLUMES).
pub const MAX_VOLUMES: usize = 16;
/// Longest id: a virtio-fs tag is at most 36 bytes.
pub const MAX_ID: usize = 36;
/// Longest guest path.
pub const MAX_PATH: usize = 1024;
/// The guest's kernel filesystems: a volume never covers them.
const KERNEL_DIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// How the guest gets a volume's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A virtio-fs device (served live by virtiofsd): `id` is its tag.
    Fs,
    /// A top-level entry (directory or single file) of the packed EROFS
    /// image: `id` is its name. Always read-only.
    Pack,
}

impl VolumeKind {
    fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Fs => "fs",
            VolumeKind::Pack => "pack",
        }
    }
}

/// One volume (JSON: `{"kind": "pack", "id": "0", "read_only": true,
/// "path": "/config"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub kind: VolumeKind,
    /// The virtio-fs tag (`fs`) or the packed image's entry (`pack`).
    pub id: String,
    #[serde(default)]
    pub read_only: bool,
    /// Absolute guest path of the mount point (created if missing).
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("volume path {0:?} is not absolute: give the path inside the guest, e.g. /data")]
    RelativePath(String),
    #[error("volume path {path:?} {why}")]
    BadPath { path: String, why: &'static str },
    #[error("volume id {0:?} is not 1..={MAX_ID} bytes of [A-Za-z0-9_-] (a virtio-fs tag such as \"vol0\", or an entry of the packed image such as \"0\")")]
    BadId(String),
    #[error("the pack volume at {0:?} is not read-only: packed volumes always are (set \"read_only\": true, or use a kind \"fs\" volume)")]
    WritablePack(String),
    #[error("two volumes are mounted at {0:?}: give each its own path")]
    Duplicate(String),
}

fn bad_path(path: &str, why: &'static str) -> VolumeError {
    VolumeError::BadPath {
        path: path.to_string(),
        why,
    }
}

fn check_path(path: &str) -> Result<(), VolumeError> {
    if !path.starts_with('/') {
        return Err(VolumeError::RelativePath(path.to_string()));
    }
    if path == "/" {
        return Err(bad_path(path, "is the root: mount the volume under it"));
    }
    if path.len() > MAX_PATH {
        return Err(bad_path(path, "is longer than 1024 bytes"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad_path(
            path,
            "contains whitespace or a control character (the guest's command line splits on whitespace)",
        ));
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad_path(
            path,
            "has an empty, \".\" or \"..\" component: give the plain path, e.g. /data/config",
        ));
    }
    let under = |dir: &str| path == dir || path.starts_with(&format!("{dir}/"));
    if KERNEL_DIRS.into_iter().any(under) {
        return Err(bad_path(
            path,
            "is or is under /proc, /sys or /dev, which the guest's kernel provides",
        ));
    }
    Ok(())
}

impl Volume {
    /// Checks what the guest would refuse.
    pub fn check(&self) -> Result<(), VolumeError> {
        let id_ok = (1..=MAX_ID).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(VolumeError::BadId(self.id.clone()));
        }
        check_path(&self.path)?;
        if self.kind == VolumeKind::Pack && !self.read_only {
            return Err(VolumeError::WritablePack(self.path.clone()));
        }
        Ok(())
    }

    /// `KIND:ID:MODE:PATH`, as the guest reads it (the value of a cold
    /// boot's `arrow.vol=`). Call [`Self::check`] first.
    pub fn param(&self) -> String {
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("{}:{}:{mode}:{}", self.kind.as_str(), self.id, self.path)
    }
}

/// Checks `volumes` (each, and no two at one path) and gives their
/// [`Volume::param`] strings in order. The count is the caller's to bound.
pub fn encode_all(volumes: &[Volume]) -> Result<Vec<String>, VolumeError> {
    let mut seen = std::collections::HashSet::new();
    volumes
        .iter()
        .map(|v| {
            v.check()?;
            if !seen.insert(v.path.as_str()) {
                return Err(VolumeError::Duplicate(v.path.clone()));
            }
            Ok(v.param())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(kind: VolumeKind, id: &str, read_only: bool, path: &str) -> Volume {
        Volume {
            kind,
            id: id.into(),
            read_only,
            path: path.into(),
        }
    }

    #[test]
    fn encodes_kind_id_mode_path() {
        let v = [
            vol(VolumeKind::Pack, "0", true, "/config"),
            vol(VolumeKind::Fs, "vol0", false, "/data/db"),
            vol(VolumeKind::Fs, "vol-1_x", true, "/srv/a:b"),
        ];
        assert_eq!(
            encode_all(&v).unwrap(),
            [
                "pack:0:ro:/config",
                "fs:vol0:rw:/data/db",
                "fs:vol-1_x:ro:/srv/a:b"
            ]
        );
        let json: Volume = serde_json::from_str(
            r#"{"kind": "pack", "id": "1", "read_only": true, "path": "/etc/token"}"#,
        )
        .unwrap();
        assert_eq!(json, vol(VolumeKind::Pack, "1", true, "/etc/token"));
        let e = serde_json::from_str::<Volume>(r#"{"kind": "nfs", "id": "1", "path": "/x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("nfs"), "{e}");
    }

    #[test]
    fn refuses_what_the_guest_would() {
        let bad_paths = [
            "relative/path",
            "",
            "/",
            "/a//b",
            "/a/",
            "/a/../etc",
            "/./a",
            "/a b",
            "/a\tb",
            "/a\nb",
            "/proc",
            "/proc/sys",
            "/sys/x",
            "/dev",
            "/dev/termination-log",
        ];
        for p in bad_paths {
            let e = vol(VolumeKind::Fs, "vol0", false, p).check().unwrap_err();
            assert!(
                matches!(
                    e,
                    VolumeError::RelativePath(_) | VolumeError::BadPath { .. }
                ),
                "{p:?}: {e}"
            );
        }
        assert!(check_path(&format!("/{}", "x".repeat(MAX_PATH))).is_err());
        for p in [
            "/procfs",
            "/devices",
            "/system/x",
            "/a/proc",
            "/.arrow-data",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        for id in ["", "a/b", "..", "a:b", "a b", &"x".repeat(MAX_ID + 1)] {
            assert_eq!(
                vol(VolumeKind::Pack, id, true, "/x").check(),
                Err(VolumeError::BadId(id.to_string()))
            );
        }
        assert_eq!(
            vol(VolumeKind::Pack, "0", false, "/x").check(),
            Err(VolumeError::WritablePack("/x".into()))
        );
        let twice = [
            vol(VolumeKind::Pack, "0", true, "/x"),
            vol(VolumeKind::Fs, "vol0", false, "/x"),
        ];
        assert_eq!(encode_all(&twice), Err(VolumeError::Duplicate("/x".into())));
        let e = vol(VolumeKind::Fs, "vol0", false, "data")
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("not absolute"), "{e}");
    }
}
