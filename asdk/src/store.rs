//! The local image store: content-addressed blobs plus `NAME:TAG` references.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     manifests, specs, initrds, files layers (read-only, 0444)
//! <root>/refs/<name>/<tag>      "sha256:<hex>\n"  ('/' in names is stored as '+')
//! <root>/bases/<image hex>      "sha256:<hex>\n"  the image's shadowfs base (crate::base)
//! <root>/tmp/                   temp files, renamed into place (atomic on one filesystem)
//! <root>/lock                   flock: shared while adding, exclusive while removing
//! ```
//! Every read of a blob re-hashes it, so a corrupted blob is reported, never used.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::digest::Digest;
use crate::image::{BuiltImage, ImageError, Manifest};
use crate::reference::{Reference, ReferenceError};
use crate::spec::Spec;

/// A store problem; each names the path or reference involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error.
    #[error("image store {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No usable default location.
    #[error("cannot find the image store: set XDG_DATA_HOME or HOME, or pass --store DIR")]
    NoDefaultDir,
    /// A blob's bytes do not hash to its name.
    #[error("corrupted blob {digest} at {path}: its contents hash to {actual}; remove the image (`asdk rm`) and build or import it again")]
    Corrupted {
        /// Expected digest.
        digest: Digest,
        /// The blob file.
        path: PathBuf,
        /// What the file hashes to.
        actual: Digest,
    },
    /// A blob the image needs is absent.
    #[error("blob {digest} is missing from the store ({path}); build or import the image again")]
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
    /// Nothing matches a reference or ID.
    #[error("image '{0}' not found: `asdk images` lists the images in the store")]
    NotFound(String),
    /// A short ID matches several images.
    #[error("image ID '{0}' is ambiguous: give more digits")]
    Ambiguous(String),
    /// An image is still tagged under other names.
    #[error("image {digest} is referenced by {refs}: remove those references, or use --force")]
    InUse {
        /// The image.
        digest: Digest,
        /// Its references.
        refs: String,
    },
    /// A reference file could not be understood.
    #[error(
        "reference file {path} is damaged: {reason}; re-tag the image (`asdk build -t`/`asdk tag`)"
    )]
    BadRef {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Bad reference syntax.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A stored manifest or spec is not a valid Arrow image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image's shadowfs base could not be built.
    #[error("cannot build the image base of {image}: {source}")]
    Base {
        /// The image.
        image: Digest,
        /// Why.
        source: Box<shadowfs::Error>,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An image read from the store: digest, manifest and spec (all verified).
#[derive(Debug, Clone)]
pub struct Image {
    /// Image ID (manifest digest).
    pub digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// The spec (argv, env, ports, vcpus, memory, readiness, files).
    pub spec: Spec,
    /// Total size of manifest, spec and layers in bytes.
    pub size: u64,
}

/// One row of `asdk images`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSummary {
    /// Reference.
    pub reference: Reference,
    /// Image ID.
    pub digest: Digest,
    /// App version from the manifest annotations.
    pub version: String,
    /// Size of all blobs in bytes.
    pub size: u64,
}

/// What `remove` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Removal {
    /// References removed.
    pub untagged: Vec<Reference>,
    /// Images (manifests) deleted because nothing referenced them any more.
    pub deleted: Vec<Digest>,
}

/// A handle on a store directory. Cheap to clone; holds no open files.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["blobs/sha256", "refs", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Self { root })
    }

    /// The default store directory: `$XDG_DATA_HOME/arrow/images`, else
    /// `$HOME/.local/share/arrow/images`.
    pub fn default_dir() -> Result<PathBuf> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(x) = non_empty("XDG_DATA_HOME") {
            return Ok(PathBuf::from(x).join("arrow/images"));
        }
        non_empty("HOME")
            .map(|h| PathBuf::from(h).join(".local/share/arrow/images"))
            .ok_or(StoreError::NoDefaultDir)
    }

    /// Opens the store at [`Store::default_dir`].
    pub fn open_default() -> Result<Self> {
        Self::open(Self::default_dir()?)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Reads a blob and checks its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|e| blob_error(digest, &path, e))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::Corrupted {
                digest: *digest,
                path,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether an intact copy of the blob is in the store (its content is re-hashed).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        fs::File::open(self.blob_path(digest))
            .and_then(Digest::of_reader)
            .is_ok_and(|d| d == *digest)
    }

    /// The store's directory for temporary files (same filesystem as the blobs). Downloads
    /// in progress live here (`asdk pull` resumes them).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Adds an image whose blobs were downloaded to files (e.g. under [`Store::tmp_dir`]):
    /// each file is re-hashed and must match its digest, then moved into place; then the
    /// manifest is written and each reference pointed at it. Nothing is written unless every
    /// file matches and the manifest and spec parse.
    pub fn add_downloaded(
        &self,
        manifest_bytes: &[u8],
        blob_files: &[(Digest, PathBuf)],
        refs: &[Reference],
    ) -> Result<Digest> {
        let digest = Digest::of(manifest_bytes);
        let manifest = Manifest::parse(manifest_bytes, &digest.to_string())?;
        let config = manifest.config.digest;
        let spec_bytes = match blob_files.iter().find(|(d, _)| *d == config) {
            Some((_, path)) => fs::read(path).map_err(io(path))?,
            None => self.read_blob(&config)?,
        };
        let spec: Spec = serde_json::from_slice(&spec_bytes).map_err(|e| ImageError::NotArrow {
            what: digest.to_string(),
            reason: format!("spec is not valid JSON: {e}"),
        })?;
        spec.validate()
            .map_err(|source| ImageError::Spec { digest, source })?;
        for (d, path) in blob_files {
            let actual = File::open(path)
                .and_then(Digest::of_reader)
                .map_err(io(path))?;
            if actual != *d {
                return Err(StoreError::Corrupted {
                    digest: *d,
                    path: path.clone(),
                    actual,
                });
            }
        }
        let _lock = self.lock(false)?;
        for (d, path) in blob_files {
            let target = self.blob_path(d);
            fs::set_permissions(path, fs::Permissions::from_mode(0o444)).map_err(io(path))?;
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io(path))?;
            fs::rename(path, &target).map_err(io(&target))?;
        }
        self.put_blob(manifest_bytes)?;
        self.image_by_digest(&digest)?;
        for r in refs {
            self.set_ref(r, &digest)?;
        }
        Ok(digest)
    }

    /// Writes a blob atomically (temp file + rename) unless an intact copy exists; returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if matches!(fs::read(&path), Ok(existing) if Digest::of(&existing) == digest) {
            return Ok(digest);
        }
        self.write_atomic(&path, bytes, 0o444)?;
        Ok(digest)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).map_err(io(path))?;
        tmp.persist(path).map_err(|e| StoreError::Io {
            path: path.to_owned(),
            source: e.error,
        })?;
        if let Some(dir) = path.parent() {
            // Make the rename durable; failure here only weakens crash safety.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Checks a blob's digest without reading it into memory.
    pub(crate) fn verify_blob_file(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| blob_error(digest, &path, e))?;
        let actual = Digest::of_reader(file).map_err(io(&path))?;
        if actual != *digest {
            return Err(StoreError::Corrupted {
                digest: *digest,
                path,
                actual,
            });
        }
        Ok(())
    }

    /// Writes a small store file (not a blob) atomically.
    pub(crate) fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.write_atomic(path, bytes, 0o644)
    }

    /// Holds the store lock (shared or exclusive) until dropped.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<File> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        flock(&file, op).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(file)
    }

    /// Writes a built image's blobs and manifest, then points each reference at it.
    /// Concurrent adds of the same tag are safe: blobs are immutable and each reference is
    /// replaced atomically, so the tag names one complete image (the last writer's).
    pub fn add(&self, image: &BuiltImage, refs: &[Reference]) -> Result<()> {
        let _lock = self.lock(false)?;
        for blob in &image.blobs {
            self.put_blob(blob)?;
        }
        self.put_blob(&image.manifest_bytes)?;
        for r in refs {
            self.set_ref(r, &image.digest)?;
        }
        Ok(())
    }

    /// Points `reference` at an image already in the store (like `docker tag`).
    pub fn tag(&self, digest: &Digest, reference: &Reference) -> Result<()> {
        let _lock = self.lock(false)?;
        self.load_manifest(digest)?;
        self.set_ref(reference, digest)
    }

    fn ref_path(&self, r: &Reference) -> PathBuf {
        self.root
            .join("refs")
            .join(r.name().replace('/', "+"))
            .join(r.tag())
    }

    fn set_ref(&self, r: &Reference, digest: &Digest) -> Result<()> {
        let path = self.ref_path(r);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        self.write_atomic(&path, format!("{digest}\n").as_bytes(), 0o644)
    }

    /// The digest a reference points to, if it exists.
    pub fn lookup(&self, r: &Reference) -> Result<Option<Digest>> {
        let path = self.ref_path(r);
        match fs::read_to_string(&path) {
            Ok(text) => {
                text.trim()
                    .parse()
                    .map(Some)
                    .map_err(|e: crate::digest::DigestParseError| StoreError::BadRef {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Every reference and the image it points to, sorted by reference.
    pub fn references(&self) -> Result<Vec<(Reference, Digest)>> {
        let refs_dir = self.root.join("refs");
        let mut out = Vec::new();
        for name_dir in read_dir_sorted(&refs_dir)? {
            let Some(name) = file_name(&name_dir) else {
                continue;
            };
            let name = name.replace('+', "/");
            if !name_dir.is_dir() {
                continue;
            }
            for tag_file in read_dir_sorted(&name_dir)? {
                let Some(tag) = file_name(&tag_file) else {
                    continue;
                };
                // Skip stray files (editor backups, …) that are not valid references.
                let Ok(r) = Reference::new(&name, &tag) else {
                    continue;
                };
                if let Some(d) = self.lookup(&r)? {
                    out.push((r, d));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Resolves `NAME[:TAG]`, `sha256:<hex>`, a full hex digest or a unique ID prefix
    /// (at least 4 hex digits) to an image digest.
    pub fn resolve(&self, input: &str) -> Result<Digest> {
        if let Ok(d) = input.parse::<Digest>() {
            return if self.blob_path(&d).exists() {
                Ok(d)
            } else {
                Err(StoreError::NotFound(input.to_owned()))
            };
        }
        if let Ok(r) = input.parse::<Reference>() {
            if let Some(d) = self.lookup(&r)? {
                return Ok(d);
            }
        }
        let prefix = input.strip_prefix("sha256:").unwrap_or(input);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<Digest> = self
                .references()?
                .into_iter()
                .map(|(_, d)| d)
                .filter(|d| d.hex().starts_with(&prefix.to_ascii_lowercase()))
                .collect();
            found.dedup();
            return match found.as_slice() {
                [d] => Ok(*d),
                [] => Err(StoreError::NotFound(input.to_owned())),
                _ => Err(StoreError::Ambiguous(input.to_owned())),
            };
        }
        // Report syntax errors only when nothing else could match.
        input.parse::<Reference>()?;
        Err(StoreError::NotFound(input.to_owned()))
    }

    fn load_manifest(&self, digest: &Digest) -> Result<(Manifest, u64)> {
        let bytes = self.read_blob(digest).map_err(|e| match e {
            StoreError::MissingBlob { .. } => StoreError::NotFound(digest.to_string()),
            other => other,
        })?;
        Ok((
            Manifest::parse(&bytes, &digest.to_string())?,
            bytes.len() as u64,
        ))
    }

    /// Loads an image by reference or ID; manifest and spec are verified.
    pub fn image(&self, input: &str) -> Result<Image> {
        let digest = self.resolve(input)?;
        self.image_by_digest(&digest)
    }

    /// Loads an image by digest; manifest and spec are verified.
    pub fn image_by_digest(&self, digest: &Digest) -> Result<Image> {
        let (manifest, manifest_len) = self.load_manifest(digest)?;
        let spec_bytes = self.read_blob(&manifest.config.digest)?;
        let spec: Spec = serde_json::from_slice(&spec_bytes).map_err(|e| ImageError::NotArrow {
            what: digest.to_string(),
            reason: format!("spec is not valid JSON: {e}"),
        })?;
        spec.validate().map_err(|source| ImageError::Spec {
            digest: *digest,
            source,
        })?;
        Ok(Image {
            digest: *digest,
            size: manifest_len + manifest.content_size(),
            manifest,
            spec,
        })
    }

    /// Checks the initrd's digest and returns its path: hand this to the VMM as `--initrd`.
    pub fn initrd_path(&self, image: &Image) -> Result<PathBuf> {
        let d = image.manifest.initrd().digest;
        self.read_blob(&d)?;
        Ok(self.blob_path(&d))
    }

    /// The initrd's bytes (verified).
    pub fn initrd_bytes(&self, image: &Image) -> Result<Vec<u8>> {
        self.read_blob(&image.manifest.initrd().digest)
    }

    /// Checks every blob of an image (manifest, spec, layers).
    pub fn verify(&self, image: &Image) -> Result<()> {
        self.read_blob(&image.digest)?;
        for d in image.manifest.blobs() {
            self.read_blob(&d.digest)?;
        }
        Ok(())
    }

    /// Unpacks the image's shipped files (the shadowfs base) into `dir`; returns how many
    /// entries were written. Images without files write nothing.
    pub fn extract_files(&self, image: &Image, dir: &Path) -> Result<usize> {
        let Some(layer) = image.manifest.files() else {
            return Ok(0);
        };
        let bytes = self.read_blob(&layer.digest)?;
        let path = self.blob_path(&layer.digest);
        let entries = crate::cpio::read(&bytes).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        for e in &entries {
            // Paths were validated at build time; re-check so a crafted layer cannot escape `dir`.
            let rel = Path::new(&e.path);
            if rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(StoreError::Io {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unsafe path {:?} in files layer", e.path),
                    ),
                });
            }
            let target = dir.join(rel);
            if e.is_dir() {
                fs::create_dir_all(&target).map_err(io(&target))?;
            } else {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io(parent))?;
                }
                fs::write(&target, &e.data).map_err(io(&target))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(e.mode & 0o777))
                    .map_err(io(&target))?;
            }
        }
        Ok(entries.len())
    }

    /// One summary per reference, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let mut out = Vec::new();
        for (reference, digest) in self.references()? {
            // A damaged image is still listed (so it can be removed); its size is what we know.
            let (version, size) = match self.load_manifest(&digest) {
                Ok((m, len)) => (
                    m.annotations
                        .get(crate::image::ANNOTATION_VERSION)
                        .cloned()
                        .unwrap_or_default(),
                    len + m.content_size(),
                ),
                Err(_) => ("<damaged>".to_owned(), 0),
            };
            out.push(ImageSummary {
                reference,
                digest,
                version,
                size,
            });
        }
        Ok(out)
    }

    /// Removes a reference, or (given an ID) an image and all its references (only with
    /// `force` when it has several). Blobs no remaining image uses are deleted.
    pub fn remove(&self, input: &str, force: bool) -> Result<Removal> {
        let _lock = self.lock(true)?;
        let refs = self.references()?;
        let mut removal = Removal::default();
        let by_ref = input
            .parse::<Reference>()
            .ok()
            .filter(|r| refs.iter().any(|(x, _)| x == r));
        if let Some(r) = by_ref {
            self.remove_ref(&r)?;
            removal.untagged.push(r);
        } else {
            let digest = self.resolve(input)?;
            let tagged: Vec<_> = refs.iter().filter(|(_, d)| *d == digest).collect();
            if tagged.len() > 1 && !force {
                return Err(StoreError::InUse {
                    digest,
                    refs: tagged
                        .iter()
                        .map(|(r, _)| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            for (r, _) in tagged {
                self.remove_ref(r)?;
                removal.untagged.push(r.clone());
            }
        }
        removal.deleted = self.collect_garbage()?;
        Ok(removal)
    }

    fn remove_ref(&self, r: &Reference) -> Result<()> {
        let path = self.ref_path(r);
        fs::remove_file(&path).map_err(io(&path))?;
        if let Some(dir) = path.parent() {
            // Only succeeds when empty, which is what we want.
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    /// Deletes blobs that no referenced image uses; returns the deleted image digests.
    /// Caller holds the exclusive lock, so no add is half-way.
    fn collect_garbage(&self) -> Result<Vec<Digest>> {
        let mut live = std::collections::BTreeSet::new();
        let mut images = std::collections::BTreeSet::new();
        for (_, d) in self.references()? {
            live.insert(d);
            images.insert(d);
            // A damaged manifest keeps only itself alive; its layers become garbage.
            if let Ok((m, _)) = self.load_manifest(&d) {
                live.extend(m.blobs().map(|b| b.digest));
            }
        }
        // Image bases (crate::base) live as long as their image.
        let image_list: Vec<Digest> = images.iter().copied().collect();
        live.extend(self.bases_of(&image_list));
        self.forget_bases(&images)?;
        let mut deleted = Vec::new();
        let blob_dir = self.root.join("blobs/sha256");
        for path in read_dir_sorted(&blob_dir)? {
            let Some(d) = file_name(&path).and_then(|n| n.parse::<Digest>().ok()) else {
                continue;
            };
            if live.contains(&d) {
                continue;
            }
            if fs::read(&path)
                .ok()
                .is_some_and(|b| Manifest::parse(&b, "").is_ok())
            {
                deleted.push(d);
            }
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(deleted)
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io(dir))?;
    out.sort();
    Ok(out)
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_owned)
}

/// A blob that cannot be read: missing (a damaged store) or an I/O error.
fn blob_error(digest: &Digest, path: &std::path::Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::MissingBlob {
            digest: *digest,
            path: path.to_path_buf(),
        },
        _ => StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::assemble;
    use crate::spec::SpecFile;

    fn built(bin: &[u8], name: &str) -> BuiltImage {
        let (spec, files) =
            Spec::resolve(&SpecFile::default(), name, "1.0", Path::new(".")).unwrap();
        assemble(bin, &spec, &files).unwrap()
    }

    #[test]
    fn add_resolve_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = built(b"binary", "hello");
        let r: Reference = "hello:1".parse().unwrap();
        store.add(&img, std::slice::from_ref(&r)).unwrap();
        assert_eq!(store.resolve("hello:1").unwrap(), img.digest);
        assert_eq!(store.resolve(&img.digest.to_string()).unwrap(), img.digest);
        assert_eq!(store.resolve(&img.digest.short()).unwrap(), img.digest);
        assert!(matches!(
            store.resolve("hello:2"),
            Err(StoreError::NotFound(_))
        ));
        let loaded = store.image("hello:1").unwrap();
        assert_eq!(loaded.spec, img.spec);
        let initrd = store.initrd_path(&loaded).unwrap();
        assert_eq!(fs::read(initrd).unwrap(), img.blobs[1]);
        assert_eq!(store.list().unwrap().len(), 1);

        let removal = store.remove("hello:1", false).unwrap();
        assert_eq!(removal.deleted, vec![img.digest]);
        assert!(store.references().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn shared_blobs_survive_removal_of_one_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = built(b"binary", "hello");
        let refs: Vec<Reference> = vec!["a:1".parse().unwrap(), "b:1".parse().unwrap()];
        store.add(&img, &refs).unwrap();
        assert!(matches!(
            store.remove(&img.digest.to_string(), false),
            Err(StoreError::InUse { .. })
        ));
        let removal = store.remove("a:1", false).unwrap();
        assert!(removal.deleted.is_empty());
        assert!(store.image("b:1").is_ok());
        let removal = store.remove(&img.digest.short(), true).unwrap();
        assert_eq!(removal.untagged, vec![refs[1].clone()]);
    }

    #[test]
    fn corrupted_blob_is_reported_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let img = built(b"binary", "hello");
        store.add(&img, &["hello".parse().unwrap()]).unwrap();
        let initrd = img.manifest.initrd().digest;
        let path = store.blob_path(&initrd);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"tampered").unwrap();
        let image = store.image("hello").unwrap();
        let err = store.initrd_path(&image).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { digest, .. } if digest == initrd));
        assert!(err.to_string().contains(&initrd.hex()));
        // Adding the image again repairs the blob.
        store.add(&img, &[]).unwrap();
        assert!(store.initrd_path(&image).is_ok());
    }

    #[test]
    fn extracts_files_layer() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("greeting.txt"), "hi").unwrap();
        let f = SpecFile::parse(
            "files = [{ source = \"greeting.txt\", target = \"etc/greeting.txt\" }]",
            Path::new("arrow.toml"),
        )
        .unwrap();
        let (spec, files) = Spec::resolve(&f, "app", "1", src.path()).unwrap();
        let img = assemble(b"bin", &spec, &files).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        store.add(&img, &["app".parse().unwrap()]).unwrap();
        let image = store.image("app").unwrap();
        let out = dir.path().join("base");
        assert_eq!(store.extract_files(&image, &out).unwrap(), 2);
        assert_eq!(
            fs::read_to_string(out.join("etc/greeting.txt")).unwrap(),
            "hi"
        );
    }
}
