//! The Arrow image: an OCI image manifest (artifact) whose config is the [`Spec`] and whose
//! layers are the initrd (newc cpio: `/app` + `/arrow/spec.json`) and, optionally, the app's
//! read-only files. The image's digest is the digest of the manifest bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cpio;
use crate::digest::Digest;
use crate::spec::{FileData, Spec, SpecError};

/// Path of the executable inside the initrd; the guest kernel execs it as PID 1.
pub const APP_PATH: &str = "/app";
/// Path of the spec inside the initrd.
pub const SPEC_PATH: &str = "/arrow/spec.json";
/// OCI image manifest media type.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType` of every Arrow image.
pub const ARTIFACT_TYPE: &str = "application/vnd.arrow.image.v1";
/// Media type of the config blob (the spec JSON).
pub const MEDIA_TYPE_SPEC: &str = "application/vnd.arrow.image.spec.v1+json";
/// Media type of the initrd layer.
pub const MEDIA_TYPE_INITRD: &str = "application/vnd.arrow.image.initrd.v1.cpio";
/// Media type of the optional files layer (newc cpio of `files`, relative to `data_dir`).
pub const MEDIA_TYPE_FILES: &str = "application/vnd.arrow.image.files.v1.cpio";
/// Annotation holding a layer's file name, as ORAS does.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Annotation holding the app version.
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced blob.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Optional annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest (v1.1, artifact form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MEDIA_TYPE_MANIFEST`].
    pub media_type: String,
    /// [`ARTIFACT_TYPE`].
    #[serde(default)]
    pub artifact_type: String,
    /// The spec blob.
    pub config: Descriptor,
    /// Initrd first, then the files layer if any.
    pub layers: Vec<Descriptor>,
    /// Name/version annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest or spec that is not a valid Arrow image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Bad JSON or wrong media types.
    #[error("{what} is not an Arrow image manifest: {reason}")]
    NotArrow {
        /// Digest or file of the manifest.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The spec blob is invalid.
    #[error("image {digest} has an invalid spec: {source}")]
    Spec {
        /// The image.
        digest: Digest,
        /// Why.
        source: SpecError,
    },
}

/// An image assembled in memory, ready to be written to a store.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Digest of `manifest_bytes`: the image ID.
    pub digest: Digest,
    /// Serialized manifest.
    pub manifest_bytes: Vec<u8>,
    /// Parsed manifest.
    pub manifest: Manifest,
    /// Resolved spec.
    pub spec: Spec,
    /// Every blob the manifest references (config and layers), in manifest order.
    pub blobs: Vec<Vec<u8>>,
}

impl Manifest {
    /// Parses and checks that `bytes` is an Arrow image manifest (`what` names it in errors).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, ImageError> {
        let not_arrow = |reason: String| ImageError::NotArrow {
            what: what.to_owned(),
            reason,
        };
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| not_arrow(format!("invalid JSON: {e}")))?;
        if m.schema_version != 2 || m.media_type != MEDIA_TYPE_MANIFEST {
            return Err(not_arrow(format!(
                "mediaType {:?} / schemaVersion {}, expected {MEDIA_TYPE_MANIFEST} / 2",
                m.media_type, m.schema_version
            )));
        }
        if m.artifact_type != ARTIFACT_TYPE || m.config.media_type != MEDIA_TYPE_SPEC {
            return Err(not_arrow(format!(
                "artifactType {:?} with config {:?}; Arrow images have {ARTIFACT_TYPE} and {MEDIA_TYPE_SPEC} (build it with `asdk build`)",
                m.artifact_type, m.config.media_type
            )));
        }
        let initrds = m
            .layers
            .iter()
            .filter(|l| l.media_type == MEDIA_TYPE_INITRD)
            .count();
        let files = m
            .layers
            .iter()
            .filter(|l| l.media_type == MEDIA_TYPE_FILES)
            .count();
        if initrds != 1 || files > 1 || initrds + files != m.layers.len() {
            return Err(not_arrow(
                "expected one initrd layer and at most one files layer".into(),
            ));
        }
        Ok(m)
    }

    /// The initrd layer's descriptor.
    pub fn initrd(&self) -> &Descriptor {
        // `parse` guarantees exactly one; fall back to the first layer for hand-made values.
        self.layers
            .iter()
            .find(|l| l.media_type == MEDIA_TYPE_INITRD)
            .unwrap_or(&self.config)
    }

    /// The files layer's descriptor, if the image ships files.
    pub fn files(&self) -> Option<&Descriptor> {
        self.layers
            .iter()
            .find(|l| l.media_type == MEDIA_TYPE_FILES)
    }

    /// Every blob the manifest references: config, then layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Sum of the referenced blobs' sizes.
    pub fn content_size(&self) -> u64 {
        self.blobs().map(|d| d.size).sum()
    }
}

/// Builds the initrd: the cpio the guest kernel unpacks as its initramfs.
pub fn initrd(binary: &[u8], spec_json: &[u8]) -> Result<Vec<u8>, cpio::EntryTooLarge> {
    let mut w = cpio::Writer::new();
    // Mount points ainit uses; cheap (one header each) and spares the kernel a mkdir.
    for dir in ["arrow", "dev", "proc", "sys"] {
        w.dir(dir, 0o755);
    }
    w.dir("tmp", 0o1777);
    w.file(APP_PATH, 0o755, binary)?;
    w.file(SPEC_PATH, 0o644, spec_json)?;
    Ok(w.finish())
}

/// Builds the files layer (paths relative to `data_dir`), or `None` when nothing is shipped.
pub fn files_layer(files: &[FileData]) -> Result<Option<Vec<u8>>, cpio::EntryTooLarge> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut w = cpio::Writer::new();
    for f in files {
        if f.entry.dir {
            w.dir(&f.entry.path, f.entry.mode);
        } else {
            w.file(&f.entry.path, f.entry.mode, &f.data)?;
        }
    }
    Ok(Some(w.finish()))
}

fn descriptor(media_type: &str, bytes: &[u8], title: Option<&str>) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        annotations: title
            .map(|t| BTreeMap::from([(ANNOTATION_TITLE.to_owned(), t.to_owned())]))
            .unwrap_or_default(),
    }
}

/// Assembles an image from a checked static binary, its resolved spec and shipped files.
/// Equal inputs give byte-identical blobs and therefore the same digest.
/// Fails only for a file of 4 GiB or more (cpio holds 32-bit sizes).
pub fn assemble(
    binary: &[u8],
    spec: &Spec,
    files: &[FileData],
) -> Result<BuiltImage, cpio::EntryTooLarge> {
    let spec_json = spec.to_json();
    let initrd = initrd(binary, &spec_json)?;
    let files = files_layer(files)?;
    let mut layers = vec![descriptor(MEDIA_TYPE_INITRD, &initrd, Some("initrd.cpio"))];
    if let Some(f) = &files {
        layers.push(descriptor(MEDIA_TYPE_FILES, f, Some("files.cpio")));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_owned(),
        artifact_type: ARTIFACT_TYPE.to_owned(),
        config: descriptor(MEDIA_TYPE_SPEC, &spec_json, None),
        layers,
        annotations: BTreeMap::from([
            (ANNOTATION_TITLE.to_owned(), spec.name.clone()),
            (ANNOTATION_VERSION.to_owned(), spec.version.clone()),
        ]),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    let mut blobs = vec![spec_json, initrd];
    blobs.extend(files);
    Ok(BuiltImage {
        digest: Digest::of(&manifest_bytes),
        manifest_bytes,
        manifest,
        spec: spec.clone(),
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecFile;
    use std::path::Path;

    fn spec() -> Spec {
        Spec::resolve(&SpecFile::default(), "hello", "1.0.0", Path::new("."))
            .unwrap()
            .0
    }

    #[test]
    fn initrd_holds_app_and_spec() {
        let img = assemble(b"\x7fELF fake", &spec(), &[]).unwrap();
        let entries = cpio::read(&img.blobs[1]).unwrap();
        let app = entries.iter().find(|e| e.path == "app").unwrap();
        assert_eq!(app.mode, cpio::S_IFREG | 0o755);
        assert_eq!(app.data, b"\x7fELF fake");
        let spec_entry = entries
            .iter()
            .find(|e| e.path == "arrow/spec.json")
            .unwrap();
        assert_eq!(spec_entry.data, img.blobs[0]);
        // Parents come before children so the kernel can create them in order.
        let arrow_dir = entries.iter().position(|e| e.path == "arrow").unwrap();
        let spec_pos = entries
            .iter()
            .position(|e| e.path == "arrow/spec.json")
            .unwrap();
        assert!(arrow_dir < spec_pos && entries[arrow_dir].is_dir());
    }

    #[test]
    fn deterministic_and_parseable() {
        let a = assemble(b"bin", &spec(), &[]).unwrap();
        let b = assemble(b"bin", &spec(), &[]).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.manifest_bytes, b.manifest_bytes);
        let c = assemble(b"bin2", &spec(), &[]).unwrap();
        assert_ne!(a.digest, c.digest);
        let m = Manifest::parse(&a.manifest_bytes, "test").unwrap();
        assert_eq!(m, a.manifest);
        assert_eq!(m.initrd().digest, Digest::of(&a.blobs[1]));
        assert!(m.files().is_none());
    }

    #[test]
    fn rejects_foreign_manifests() {
        let mut m = assemble(b"bin", &spec(), &[]).unwrap().manifest;
        m.artifact_type = "application/vnd.example".into();
        let err = Manifest::parse(&serde_json::to_vec(&m).unwrap(), "x").unwrap_err();
        assert!(err.to_string().contains("artifactType"), "{err}");
        assert!(Manifest::parse(b"[]", "x").is_err());
    }
}
