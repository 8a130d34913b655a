//! The app a generic template's clone runs, and its wire format.
//!
//! A generic template is a guest kernel paused at ainit's wait point
//! (`arrow.wait_app=1`): it reported KERNEL_READY with the injection ABI
//! version and polls the app channel (`devices::app_channel`). A clone is
//! given an [`AppSpec`]; arrow-vmm checks it against the limits below before
//! anything runs and encodes it; the guest copies it in and execs the app.
//!
//! Wire format, ABI version 2 (little endian; docs/guest-kernel.md):
//! ```text
//! 0   magic "ARWAPP2\0"
//! 8   u32 total length (header + strings)
//! 12  u32 flags   bit 0: mount the image base (pmem0) as the root
//!                 bit 1: the writable upper layer is persistent (pmem1)
//!                 bit 2: the packed volume image is in the volume slot (pmem1)
//! 16  u32 argc (argv[0] included)
//! 20  u32 envc
//! 24  u32 volc (at most MAX_VOLUMES)
//! 28  strings, each NUL-terminated: app path, hostname, argv[0..argc],
//!     env[0..envc] ("KEY=VALUE"), volumes[0..volc] ("KIND:ID:MODE:PATH")
//! ```

use serde::{Deserialize, Serialize};

pub use crate::volume::{Volume, VolumeError, VolumeKind, MAX_VOLUMES};

/// The injection ABI this arrow-vmm speaks (KERNEL_READY's payload).
pub const APP_ABI_VERSION: u32 = 2;
/// Largest encoded spec (the guest copies it into one allocation).
pub const MAX_SPEC_BYTES: usize = 64 << 10;
/// Most argv and env entries each (well under the guest's exec limits).
pub const MAX_ENTRIES: usize = 1024;
/// Longest hostname (the kernel's __NEW_UTS_LEN).
pub const MAX_HOSTNAME: usize = 64;
const MAGIC: &[u8; 8] = b"ARWAPP2\0";
const HEADER: usize = 28;
pub const FLAG_IMAGE_BASE: u32 = 1;
pub const FLAG_PERSISTENT_UPPER: u32 = 2;
/// The packed volume image (EROFS) is in the template's volume slot (pmem1).
pub const FLAG_VOLPACK: u32 = 4;

/// Where the clone's writes go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upper {
    /// A tmpfs in guest memory (private to the clone).
    #[default]
    Tmpfs,
    /// A writable file on a second pmem device.
    Persistent,
}

/// What a clone of a generic template runs (JSON: `--app-spec`, or the body
/// of `PUT /vm/start` as `{"app": …}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Absolute path of the program, as the guest sees it.
    pub app: String,
    /// argv[1..] (argv[0] is the app path).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment entries, "KEY=VALUE".
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    /// Root is the image base on pmem0 (an overlay with the upper layer).
    #[serde(default)]
    pub image_base: bool,
    #[serde(default)]
    pub upper: Upper,
    /// Mounted by the guest in this order before the exec; `pack` volumes
    /// need the packed image in the volume slot (`--volumes-base`).
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppSpecError {
    #[error("app path {0:?} is not absolute: give the path inside the image, e.g. /app")]
    RelativeApp(String),
    #[error("{what} contains a NUL byte: {value:?}")]
    Nul { what: &'static str, value: String },
    #[error("environment entry {0:?} is not KEY=VALUE with a non-empty KEY")]
    BadEnv(String),
    #[error("{what} has {count} entries; at most {MAX_ENTRIES} are allowed")]
    TooMany { what: &'static str, count: usize },
    #[error("hostname {0:?} is longer than {MAX_HOSTNAME} bytes")]
    Hostname(String),
    #[error("the app description is {0} bytes encoded; at most {MAX_SPEC_BYTES} fit the channel: shorten argv or env")]
    TooLarge(usize),
    #[error("the snapshot is not a generic template (its kernel never reached the app wait point, arrow.wait_app=1): it cannot be given an app")]
    NotGeneric,
    #[error("the template's kernel speaks app-injection ABI version {0}, this arrow-vmm version {APP_ABI_VERSION}: rebuild the template with the matching guest kernel")]
    Abi(u32),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("the app has {0} volumes; at most {MAX_VOLUMES} are allowed")]
    TooManyVolumes(usize),
    #[error("pack volumes are read from the packed image in the template's volume slot: give the packed image (--volumes-base, or \"volumes_base\" in PUT /vm/start)")]
    NoVolumesBase,
    #[error("a packed volume image was given but no volume of the app is of kind \"pack\": drop the volumes base or add the pack volumes")]
    UnusedVolumesBase,
    #[error("a persistent upper layer is not available to generic-template clones yet (the template has no writable slot): use \"upper\": \"tmpfs\", or start the instance from a per-image template or a cold boot")]
    PersistentUpper,
}

fn check_nul(what: &'static str, v: &str) -> Result<(), AppSpecError> {
    if v.contains('\0') {
        return Err(AppSpecError::Nul {
            what,
            value: v.to_string(),
        });
    }
    Ok(())
}

impl AppSpec {
    /// [`Self::encode`], for a template whose kernel reported `template_abi`
    /// at its wait point (None: it never reached one).
    pub fn encode_for(&self, template_abi: Option<u32>) -> Result<Vec<u8>, AppSpecError> {
        match template_abi {
            None => Err(AppSpecError::NotGeneric),
            Some(APP_ABI_VERSION) if self.upper == Upper::Persistent => {
                Err(AppSpecError::PersistentUpper)
            }
            Some(APP_ABI_VERSION) => self.encode(),
            Some(other) => Err(AppSpecError::Abi(other)),
        }
    }

    /// Whether the packed volume image is needed (a `pack` volume).
    pub fn uses_volume_pack(&self) -> bool {
        self.volumes.iter().any(|v| v.kind == VolumeKind::Pack)
    }

    /// Checks that a packed volume image is given exactly when a `pack`
    /// volume reads from it (`volumes_base`: one is mapped into the slot).
    pub fn check_volumes_base(&self, volumes_base: bool) -> Result<(), AppSpecError> {
        match (self.uses_volume_pack(), volumes_base) {
            (true, false) => Err(AppSpecError::NoVolumesBase),
            (false, true) => Err(AppSpecError::UnusedVolumesBase),
            _ => Ok(()),
        }
    }

    /// Checks the limits and encodes the spec for the guest.
    pub fn encode(&self) -> Result<Vec<u8>, AppSpecError> {
        if !self.app.starts_with('/') {
            return Err(AppSpecError::RelativeApp(self.app.clone()));
        }
        check_nul("app path", &self.app)?;
        check_nul("hostname", &self.hostname)?;
        if self.hostname.len() > MAX_HOSTNAME {
            return Err(AppSpecError::Hostname(self.hostname.clone()));
        }
        let argc = self.args.len() + 1;
        if argc > MAX_ENTRIES {
            return Err(AppSpecError::TooMany {
                what: "argv",
                count: argc,
            });
        }
        if self.env.len() > MAX_ENTRIES {
            return Err(AppSpecError::TooMany {
                what: "env",
                count: self.env.len(),
            });
        }
        for a in &self.args {
            check_nul("an argument", a)?;
        }
        for e in &self.env {
            check_nul("an environment entry", e)?;
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(AppSpecError::BadEnv(e.clone())),
            }
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(AppSpecError::TooManyVolumes(self.volumes.len()));
        }
        let volumes = crate::volume::encode_all(&self.volumes)?;
        let strings = std::iter::once(self.app.as_str())
            .chain(std::iter::once(self.hostname.as_str()))
            .chain(std::iter::once(self.app.as_str()))
            .chain(self.args.iter().map(String::as_str))
            .chain(self.env.iter().map(String::as_str))
            .chain(volumes.iter().map(String::as_str));
        let mut out = Vec::with_capacity(HEADER + 256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[0; HEADER - MAGIC.len()]);
        for s in strings {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        if out.len() > MAX_SPEC_BYTES {
            return Err(AppSpecError::TooLarge(out.len()));
        }
        let mut flags = 0;
        if self.image_base {
            flags |= FLAG_IMAGE_BASE;
        }
        if self.upper == Upper::Persistent {
            flags |= FLAG_PERSISTENT_UPPER;
        }
        if self.uses_volume_pack() {
            flags |= FLAG_VOLPACK;
        }
        let len = out.len() as u32;
        out[8..12].copy_from_slice(&len.to_le_bytes());
        out[12..16].copy_from_slice(&flags.to_le_bytes());
        out[16..20].copy_from_slice(&(argc as u32).to_le_bytes());
        out[20..24].copy_from_slice(&(self.env.len() as u32).to_le_bytes());
        out[24..28].copy_from_slice(&(volumes.len() as u32).to_le_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        AppSpec {
            app: "/app".into(),
            args: vec!["-v".into(), "7".into()],
            env: vec!["A=1".into(), "B=x=y".into()],
            hostname: "h1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn encodes_header_and_strings() {
        let b = spec().encode().unwrap();
        assert_eq!(&b[..8], b"ARWAPP2\0");
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 0);
        assert_eq!(u32::from_le_bytes(b[16..20].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 0);
        assert_eq!(
            &b[28..],
            b"/app\x00h1\x00/app\x00-v\x007\x00A=1\x00B=x=y\x00"
        );
        let mut s = spec();
        s.image_base = true;
        s.upper = Upper::Persistent;
        let b = s.encode().unwrap();
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 3);
    }

    #[test]
    fn refuses_what_the_guest_could_not_take() {
        let mut s = spec();
        s.app = "app".into();
        assert!(matches!(s.encode(), Err(AppSpecError::RelativeApp(_))));
        let mut s = spec();
        s.args.push("a\0b".into());
        assert!(matches!(s.encode(), Err(AppSpecError::Nul { .. })));
        let mut s = spec();
        s.env.push("NOEQUALS".into());
        assert!(matches!(s.encode(), Err(AppSpecError::BadEnv(_))));
        let mut s = spec();
        s.env.push("=v".into());
        assert!(matches!(s.encode(), Err(AppSpecError::BadEnv(_))));
        let mut s = spec();
        s.args = vec!["x".into(); MAX_ENTRIES];
        assert!(matches!(s.encode(), Err(AppSpecError::TooMany { .. })));
        let mut s = spec();
        s.args = vec!["y".repeat(1000); 70];
        assert!(matches!(s.encode(), Err(AppSpecError::TooLarge(_))));
        let mut s = spec();
        s.hostname = "h".repeat(65);
        assert!(matches!(s.encode(), Err(AppSpecError::Hostname(_))));
        assert_eq!(spec().encode_for(None), Err(AppSpecError::NotGeneric));
        assert_eq!(spec().encode_for(Some(9)), Err(AppSpecError::Abi(9)));
        assert_eq!(spec().encode_for(Some(APP_ABI_VERSION)), spec().encode());
        let mut s = spec();
        s.upper = Upper::Persistent;
        assert_eq!(
            s.encode_for(Some(APP_ABI_VERSION)),
            Err(AppSpecError::PersistentUpper)
        );
        let e = serde_json::from_str::<AppSpec>(r#"{"app":"/a","bogus":1}"#).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    fn with_volumes() -> AppSpec {
        serde_json::from_str(
            r#"{"app": "/app", "hostname": "h", "volumes": [
                {"kind": "pack", "id": "0", "read_only": true, "path": "/config"},
                {"kind": "pack", "id": "1", "read_only": true, "path": "/etc/token"},
                {"kind": "fs", "id": "vol0", "read_only": false, "path": "/data"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn encodes_volumes_after_env_with_the_pack_flag() {
        let b = with_volumes().encode().unwrap();
        assert_eq!(
            u32::from_le_bytes(b[12..16].try_into().unwrap()),
            FLAG_VOLPACK
        );
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 3);
        assert_eq!(
            &b[28..],
            &b"/app\0h\0/app\0pack:0:ro:/config\0pack:1:ro:/etc/token\0fs:vol0:rw:/data\0"[..]
        );
        // Only fs volumes: no packed image, no flag.
        let mut s = with_volumes();
        s.volumes.retain(|v| v.kind == VolumeKind::Fs);
        let b = s.encode().unwrap();
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 0);
        assert_eq!(s.check_volumes_base(false), Ok(()));
        assert_eq!(
            s.check_volumes_base(true),
            Err(AppSpecError::UnusedVolumesBase)
        );
        assert_eq!(with_volumes().check_volumes_base(true), Ok(()));
        assert_eq!(
            with_volumes().check_volumes_base(false),
            Err(AppSpecError::NoVolumesBase)
        );
    }

    #[test]
    fn refuses_volumes_the_guest_could_not_take() {
        let mut s = with_volumes();
        s.volumes[0].path = "config".into();
        let e = s.encode().unwrap_err();
        assert!(
            matches!(e, AppSpecError::Volume(VolumeError::RelativePath(_))),
            "{e}"
        );
        assert!(e.to_string().contains("not absolute"), "{e}");
        let mut s = with_volumes();
        s.volumes[1].path = "/config".into();
        assert!(matches!(
            s.encode(),
            Err(AppSpecError::Volume(VolumeError::Duplicate(_)))
        ));
        let mut s = with_volumes();
        s.volumes[0].read_only = false;
        assert!(matches!(
            s.encode(),
            Err(AppSpecError::Volume(VolumeError::WritablePack(_)))
        ));
        let mut s = with_volumes();
        s.volumes = (0..=MAX_VOLUMES)
            .map(|i| Volume {
                kind: VolumeKind::Fs,
                id: format!("vol{i}"),
                read_only: false,
                path: format!("/v{i}"),
            })
            .collect();
        assert_eq!(
            s.encode(),
            Err(AppSpecError::TooManyVolumes(MAX_VOLUMES + 1))
        );
        s.volumes.pop();
        assert!(s.encode().is_ok());
    }
}
