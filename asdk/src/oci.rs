//! Export and import of images as OCI image layouts (tar archives or directories), so that
//! ordinary OCI registries and tools (oras, skopeo, crane) can carry Arrow images.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::{BuiltImage, Manifest, ARTIFACT_TYPE, MEDIA_TYPE_MANIFEST};
use crate::reference::Reference;
use crate::spec::Spec;
use crate::store::{Store, StoreError};

/// Media type of `index.json`.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Annotation naming an image in `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_VERSION: &str = "1.0.0";
/// Most bytes an imported layout's files may hold together (a tar is read
/// into memory): far more than a static binary and its files need.
pub const MAX_IMPORT_BYTES: u64 = 1 << 30;

/// An export or import problem.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// Reading or writing the archive failed.
    #[error("{path}: {source}")]
    Io {
        /// Archive or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The archive is not a usable OCI layout.
    #[error("{path} is not a valid OCI image layout: {reason}")]
    Layout {
        /// Archive or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `-t` given for a layout holding several images.
    #[error("{path} holds {count} images: import it without -t (each keeps its own name)")]
    TagsForMany {
        /// Archive.
        path: PathBuf,
        /// Number of images.
        count: usize,
    },
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, OciError>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// Writes the image `input` (reference or ID) as an OCI layout tar archive at `out`.
/// Given a reference, the index names the image with it; given an ID, with all its references.
/// The archive's bytes are deterministic (zero mtimes and owners, sorted entries).
pub fn export(store: &Store, input: &str, out: &Path) -> Result<Digest> {
    let image = store.image(input)?;
    store.verify(&image)?;
    let names: Vec<Reference> = match input.parse::<Reference>() {
        Ok(r) if store.lookup(&r)? == Some(image.digest) => vec![r],
        _ => store
            .references()?
            .into_iter()
            .filter(|(_, d)| *d == image.digest)
            .map(|(r, _)| r)
            .collect(),
    };
    let manifest_bytes = store.read_blob(&image.digest)?;
    let mut entries = Vec::new();
    for r in names
        .iter()
        .map(Some)
        .chain(names.is_empty().then_some(None))
    {
        entries.push(IndexEntry {
            media_type: MEDIA_TYPE_MANIFEST.to_owned(),
            digest: image.digest,
            size: manifest_bytes.len() as u64,
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            annotations: r
                .map(|r| BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), r.to_string())]))
                .unwrap_or_default(),
        });
    }
    let index = Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX.to_owned(),
        manifests: entries,
    };
    let mut blobs: BTreeMap<Digest, Vec<u8>> = BTreeMap::new();
    blobs.insert(image.digest, manifest_bytes);
    for d in image.manifest.blobs() {
        blobs.insert(d.digest, store.read_blob(&d.digest)?);
    }

    let io = |source| OciError::Io {
        path: out.to_owned(),
        source,
    };
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let mut tar = tar::Builder::new(tmp.as_file());
    let layout = serde_json::to_vec(&OciLayout {
        image_layout_version: LAYOUT_VERSION.to_owned(),
    })
    .unwrap_or_default();
    append(&mut tar, "oci-layout", &layout).map_err(io)?;
    append(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).unwrap_or_default(),
    )
    .map_err(io)?;
    append_dir(&mut tar, "blobs/").map_err(io)?;
    append_dir(&mut tar, "blobs/sha256/").map_err(io)?;
    for (d, bytes) in &blobs {
        append(&mut tar, &format!("blobs/sha256/{}", d.hex()), bytes).map_err(io)?;
    }
    tar.into_inner().map_err(io)?.sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| io(e.error))?;
    Ok(image.digest)
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // Path is set by append_data; names are short ASCII, so ustar suffices.
    let _ = h.set_path(path);
    h
}

fn append(tar: &mut tar::Builder<&fs::File>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = header(path, data.len() as u64, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

fn append_dir(tar: &mut tar::Builder<&fs::File>, path: &str) -> std::io::Result<()> {
    let mut h = header(path, 0, 0o755, tar::EntryType::Directory);
    tar.append_data(&mut h, path, std::io::empty())
}

/// An OCI layout being read: a directory or an in-memory tar.
enum Layout {
    Dir(PathBuf),
    Tar(BTreeMap<String, Vec<u8>>),
}

impl Layout {
    fn open(path: &Path) -> Result<Self> {
        let io = |source| OciError::Io {
            path: path.to_owned(),
            source,
        };
        if path.is_dir() {
            return Ok(Layout::Dir(path.to_owned()));
        }
        let file = fs::File::open(path).map_err(io)?;
        let too_large = |what: String| {
            OciError::Layout {
            path: path.to_owned(),
            reason: format!(
                "{what} is larger than {MAX_IMPORT_BYTES} bytes, the most an import reads: is this an Arrow image?"
            ),
        }
        };
        let mut total = 0u64;
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(file);
        let entries = archive.entries().map_err(|e| OciError::Layout {
            path: path.to_owned(),
            reason: format!("not a tar archive ({e})"),
        })?;
        for entry in entries {
            let mut entry = entry.map_err(|e| OciError::Layout {
                path: path.to_owned(),
                reason: format!("not a tar archive ({e})"),
            })?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
            let size = entry.size();
            total = total.saturating_add(size);
            if total > MAX_IMPORT_BYTES {
                return Err(too_large("the archive's content".into()));
            }
            let mut data = Vec::new();
            // The header's size was counted; never read more than it says.
            (&mut entry).take(size).read_to_end(&mut data).map_err(io)?;
            files.insert(name.trim_start_matches("./").to_owned(), data);
        }
        Ok(Layout::Tar(files))
    }

    fn read(&self, rel: &str, origin: &Path) -> Result<Vec<u8>> {
        let missing = || OciError::Layout {
            path: origin.to_owned(),
            reason: format!("{rel} is missing"),
        };
        match self {
            Layout::Dir(dir) => read_capped(&dir.join(rel)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => missing(),
                _ => OciError::Io {
                    path: dir.join(rel),
                    source: e,
                },
            }),
            Layout::Tar(files) => files.get(rel).cloned().ok_or_else(missing),
        }
    }

    /// A blob whose digest and size are checked.
    fn blob(&self, digest: &Digest, size: u64, origin: &Path) -> Result<Vec<u8>> {
        let bytes = self.read(&format!("blobs/sha256/{}", digest.hex()), origin)?;
        let actual = Digest::of(&bytes);
        if actual != *digest || bytes.len() as u64 != size {
            return Err(OciError::Layout {
                path: origin.to_owned(),
                reason: format!(
                    "blob {digest} is corrupted (hashes to {actual}, {} bytes, expected {size})",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }
}

/// A layout directory's file, refused when larger than [`MAX_IMPORT_BYTES`].
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut data = Vec::new();
    f.take(MAX_IMPORT_BYTES + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_IMPORT_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_IMPORT_BYTES} bytes, the most an import reads"
        )));
    }
    Ok(data)
}

/// Imports every Arrow image of the OCI layout at `path` (a tar archive or a directory).
/// Each is tagged with `tags` if given (only for a single image), else with its
/// `org.opencontainers.image.ref.name` (a full `NAME:TAG`, or a bare tag combined with the
/// spec's name), else `<spec name>:latest`. Everything is verified before anything is written.
pub fn import(
    store: &Store,
    path: &Path,
    tags: &[Reference],
) -> Result<Vec<(Digest, Vec<Reference>)>> {
    let bad = |reason: String| OciError::Layout {
        path: path.to_owned(),
        reason,
    };
    let layout = Layout::open(path)?;
    let marker: OciLayout = serde_json::from_slice(&layout.read("oci-layout", path)?)
        .map_err(|e| bad(format!("oci-layout: {e}")))?;
    if marker.image_layout_version != LAYOUT_VERSION {
        return Err(bad(format!(
            "imageLayoutVersion {} is not supported (expected {LAYOUT_VERSION})",
            marker.image_layout_version
        )));
    }
    let index: Index = serde_json::from_slice(&layout.read("index.json", path)?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    if index.manifests.is_empty() {
        return Err(bad("index.json lists no images".into()));
    }

    // Group index entries per manifest: one image may carry several names.
    let mut images: BTreeMap<Digest, (BuiltImage, Vec<Reference>)> = BTreeMap::new();
    for entry in &index.manifests {
        if entry.media_type != MEDIA_TYPE_MANIFEST {
            return Err(bad(format!(
                "entry {} has media type {} (only image manifests are supported)",
                entry.digest, entry.media_type
            )));
        }
        let (built, refs) = match images.entry(entry.digest) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((load_image(&layout, entry, path)?, Vec::new()))
            }
        };
        if let Some(name) = entry.annotations.get(ANNOTATION_REF_NAME) {
            let r = if name.contains(':') {
                name.parse()
            } else {
                Reference::new(&built.spec.name, name)
            }
            .map_err(StoreError::from)?;
            refs.push(r);
        }
    }
    if !tags.is_empty() && images.len() > 1 {
        return Err(OciError::TagsForMany {
            path: path.to_owned(),
            count: images.len(),
        });
    }
    let mut out = Vec::new();
    for (digest, (built, mut refs)) in images {
        if !tags.is_empty() {
            refs = tags.to_vec();
        } else if refs.is_empty() {
            refs.push(
                Reference::new(&built.spec.name, crate::reference::DEFAULT_TAG)
                    .map_err(StoreError::from)?,
            );
        }
        refs.sort();
        refs.dedup();
        store.add(&built, &refs)?;
        out.push((digest, refs));
    }
    Ok(out)
}

fn load_image(layout: &Layout, entry: &IndexEntry, origin: &Path) -> Result<BuiltImage> {
    let manifest_bytes = layout.blob(&entry.digest, entry.size, origin)?;
    let manifest = Manifest::parse(
        &manifest_bytes,
        &format!("{} in {}", entry.digest, origin.display()),
    )
    .map_err(StoreError::from)?;
    let mut blobs = Vec::new();
    for d in manifest.blobs() {
        blobs.push(layout.blob(&d.digest, d.size, origin)?);
    }
    let spec: Spec = serde_json::from_slice(&blobs[0]).map_err(|e| OciError::Layout {
        path: origin.to_owned(),
        reason: format!("spec of {} is not valid JSON: {e}", entry.digest),
    })?;
    spec.validate().map_err(|e| OciError::Layout {
        path: origin.to_owned(),
        reason: format!("spec of {}: {e}", entry.digest),
    })?;
    Ok(BuiltImage {
        digest: entry.digest,
        manifest_bytes,
        manifest,
        spec,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::assemble;
    use crate::spec::SpecFile;

    #[test]
    fn export_import_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path().join("a")).unwrap();
        let (spec, files) =
            Spec::resolve(&SpecFile::default(), "hello", "1.0", Path::new(".")).unwrap();
        let img = assemble(b"binary", &spec, &files).unwrap();
        a.add(&img, &["hello:v1".parse().unwrap()]).unwrap();
        let archive = dir.path().join("hello.tar");
        assert_eq!(export(&a, "hello:v1", &archive).unwrap(), img.digest);
        let first = fs::read(&archive).unwrap();
        export(&a, "hello:v1", &archive).unwrap();
        assert_eq!(
            fs::read(&archive).unwrap(),
            first,
            "export is deterministic"
        );

        let b = Store::open(dir.path().join("b")).unwrap();
        let imported = import(&b, &archive, &[]).unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].0, img.digest);
        assert_eq!(imported[0].1[0].to_string(), "hello:v1");
        let loaded = b.image("hello:v1").unwrap();
        b.verify(&loaded).unwrap();
        assert_eq!(loaded.spec, spec);
    }

    #[test]
    fn refuses_archives_past_the_import_cap_before_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        // A header claiming 2 GiB of content, and no content: the cap is
        // checked on the header, before anything is read or allocated.
        let mut h = tar::Header::new_ustar();
        h.set_path("blobs/sha256/big").unwrap();
        h.set_size(2 << 30);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let archive = dir.path().join("big.tar");
        fs::write(&archive, h.as_bytes()).unwrap();
        let e = import(&store, &archive, &[]).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn rejects_tampered_archive() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path().join("a")).unwrap();
        let (spec, files) =
            Spec::resolve(&SpecFile::default(), "hello", "1.0", Path::new(".")).unwrap();
        let img = assemble(b"binary", &spec, &files).unwrap();
        a.add(&img, &["hello".parse().unwrap()]).unwrap();
        let layout = dir.path().join("layout");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let archive = dir.path().join("x.tar");
        export(&a, "hello", &archive).unwrap();
        tar::Archive::new(fs::File::open(&archive).unwrap())
            .unpack(&layout)
            .unwrap();
        let initrd = layout.join(format!(
            "blobs/sha256/{}",
            img.manifest.initrd().digest.hex()
        ));
        fs::write(&initrd, b"evil").unwrap();
        let b = Store::open(dir.path().join("b")).unwrap();
        let err = import(&b, &layout, &[]).unwrap_err();
        assert!(err.to_string().contains("corrupted"), "{err}");
        assert!(b.references().unwrap().is_empty(), "nothing imported");
    }
}
