//! An image's shadowfs base: the image as a read-only EROFS filesystem
//! (`/app`, `/arrow/spec.json`, the mount points, and the shipped files at
//! `data_dir`), which arrow-vmm maps into the guest with virtio-pmem (DAX)
//! instead of copying an initrd into guest RAM.
//!
//! The base is derived from the image, so it is not a layer of the
//! manifest (the image ID is unchanged, export/import need not carry it):
//! it is built by `shadowfs::base` (mkfs.erofs; reproducible: same image →
//! same base digest) on first use, stored as a blob beside the layers, and
//! found through `bases/<image hex>` ("sha256:<base hex>\n"). Every use
//! re-hashes it like any blob; a damaged base is built again. `rm` deletes
//! the bases of deleted images.
//!
//! ```text
//! <store>/blobs/sha256/<base hex>   the EROFS image (0444)
//! <store>/bases/<image hex>         "sha256:<base hex>\n"
//! ```

use std::path::{Path, PathBuf};

use shadowfs::base::Entry;

use crate::digest::Digest;
use crate::store::{Image, Store, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The entries of an image's base: the initrd's tree plus the shipped files
/// under `data_dir`.
pub fn entries(store: &Store, image: &Image) -> Result<Vec<Entry>> {
    let initrd = store.initrd_bytes(image)?;
    let bad = |what: &str, e: String| StoreError::Io {
        path: store.blob_path(&image.digest),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} of image {}: {e}", image.digest),
        ),
    };
    let mut out = Vec::new();
    let mut add = |prefix: &str, e: crate::cpio::Entry| {
        let path = if prefix.is_empty() {
            e.path.clone()
        } else {
            format!("{prefix}/{}", e.path)
        };
        out.push(if e.is_dir() {
            Entry::Dir {
                path,
                mode: e.mode & 0o7777,
            }
        } else {
            Entry::File {
                path,
                mode: e.mode & 0o7777,
                data: e.data,
            }
        });
    };
    for e in crate::cpio::read(&initrd).map_err(|e| bad("initrd", e.to_string()))? {
        add("", e);
    }
    if let Some(layer) = image.manifest.files() {
        let bytes = store.read_blob(&layer.digest)?;
        let data_dir = image.spec.data_dir.trim_matches('/');
        let mut prefix = String::new();
        for part in data_dir.split('/').filter(|p| !p.is_empty()) {
            prefix = if prefix.is_empty() {
                part.to_string()
            } else {
                format!("{prefix}/{part}")
            };
            add(
                "",
                crate::cpio::Entry {
                    path: prefix.clone(),
                    mode: 0o040755,
                    data: Vec::new(),
                },
            );
        }
        for e in crate::cpio::read(&bytes).map_err(|e| bad("files layer", e.to_string()))? {
            add(data_dir, e);
        }
    }
    Ok(out)
}

impl Store {
    fn base_ref(&self, image: &Image) -> PathBuf {
        self.root().join("bases").join(image.digest.hex())
    }

    /// The base of an image, if it was built and is intact.
    pub fn recorded_base(&self, image: &Image) -> Option<Digest> {
        let text = std::fs::read_to_string(self.base_ref(image)).ok()?;
        let digest: Digest = text.trim().parse().ok()?;
        match self.verify_blob_file(&digest) {
            Ok(()) => Some(digest),
            Err(e) => {
                tracing::warn!("image base of {}: {e}; building it again", image.digest);
                None
            }
        }
    }

    /// The image's base (built and stored on first use), verified: pass it
    /// to arrow-vmm as `--pmem PATH,ro` with `arrow.base=/dev/pmem0`.
    pub fn base_path(&self, image: &Image) -> Result<PathBuf> {
        let _lock = self.lock(false)?;
        if let Some(d) = self.recorded_base(image) {
            return Ok(self.blob_path(&d));
        }
        let tmp_dir = self.root().join("tmp");
        let tmp = tempfile::Builder::new()
            .prefix("base-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
        let entries = entries(self, image)?;
        shadowfs::base::build(&entries, tmp.path()).map_err(|e| StoreError::Base {
            image: image.digest,
            source: Box::new(e),
        })?;
        let bytes = std::fs::read(tmp.path()).map_err(io(tmp.path()))?;
        let digest = self.put_blob(&bytes)?;
        let dir = self.root().join("bases");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        self.write_file_atomic(&self.base_ref(image), format!("{digest}\n").as_bytes())?;
        tracing::info!(image = %image.digest, base = %digest, bytes = bytes.len(), "image base built");
        Ok(self.blob_path(&digest))
    }

    /// Base digests of these images (for garbage collection).
    pub(crate) fn bases_of(&self, images: &[Digest]) -> Vec<Digest> {
        images
            .iter()
            .filter_map(|d| {
                let text = std::fs::read_to_string(self.root().join("bases").join(d.hex())).ok()?;
                text.trim().parse().ok()
            })
            .collect()
    }

    /// Removes `bases/` records of images not in `live`.
    pub(crate) fn forget_bases(&self, live: &std::collections::BTreeSet<Digest>) -> Result<()> {
        let dir = self.root().join("bases");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = format!("sha256:{name}")
                .parse::<Digest>()
                .is_ok_and(|d| live.contains(&d));
            if !keep {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::assemble;
    use crate::spec::{FileSource, Spec, SpecFile};
    use crate::Reference;

    #[test]
    fn base_holds_the_image_is_reproducible_and_collected_with_it() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("conf")).unwrap();
        std::fs::write(src.path().join("conf/app.conf"), b"greeting=hello\n").unwrap();
        let file = SpecFile {
            files: vec![FileSource {
                source: "conf".into(),
                target: None,
            }],
            ..Default::default()
        };
        let (spec, files) = Spec::resolve(&file, "hello", "1.0", src.path()).unwrap();
        let img = assemble(b"\x7fELF app", &spec, &files).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r: Reference = "hello:1".parse().unwrap();
        store.add(&img, std::slice::from_ref(&r)).unwrap();
        let image = store.image("hello:1").unwrap();
        assert!(store.recorded_base(&image).is_none());

        let paths: Vec<String> = entries(&store, &image)
            .unwrap()
            .iter()
            .map(|e| e.path().to_string())
            .collect();
        for p in [
            "app",
            "arrow/spec.json",
            "tmp",
            "data",
            "data/conf",
            "data/conf/app.conf",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} in {paths:?}");
        }

        let base = store.base_path(&image).unwrap();
        shadowfs::base::check(&base).unwrap();
        let digest = store.recorded_base(&image).unwrap();
        assert_eq!(base, store.blob_path(&digest));
        // Built again from scratch: the same bytes.
        std::fs::remove_dir_all(dir.path().join("bases")).unwrap();
        std::fs::remove_file(&base).unwrap();
        assert_eq!(store.base_path(&image).unwrap(), base);
        // A damaged base is rebuilt.
        let mut perm = std::fs::metadata(&base).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        std::fs::set_permissions(&base, perm).unwrap();
        std::fs::write(&base, b"junk").unwrap();
        assert!(store.recorded_base(&image).is_none());
        assert_eq!(store.base_path(&image).unwrap(), base);
        shadowfs::base::check(&base).unwrap();

        store.remove("hello:1", false).unwrap();
        assert!(!base.exists(), "the base goes with its image");
        assert_eq!(
            std::fs::read_dir(dir.path().join("bases")).unwrap().count(),
            0
        );
    }
}
