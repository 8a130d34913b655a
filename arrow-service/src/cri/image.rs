//! ImageService over Arrow's local image store (the one `asdk` builds into and imports to).

use std::collections::BTreeMap;

use k8s_cri::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFilter, ImageSpec, UInt64Value,
};
use tonic::Status;

use super::{now_ns, status, Cri};
use crate::error::Error;

/// Bytes and inodes under `dir` (not following symlinks).
fn usage(dir: &std::path::Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    (bytes, inodes)
}

fn fs_usage(dir: &std::path::Path) -> FilesystemUsage {
    let (bytes, inodes) = usage(dir);
    FilesystemUsage {
        timestamp: now_ns(),
        fs_id: Some(FilesystemIdentifier {
            mountpoint: dir.display().to_string(),
        }),
        used_bytes: Some(UInt64Value { value: bytes }),
        inodes_used: Some(UInt64Value { value: inodes }),
    }
}

/// Registry credentials from CRI's AuthConfig: user and password, the base64 `auth`
/// (`user:password`), or a token; none means arrowd's auth files.
fn credentials(auth: Option<AuthConfig>) -> Result<Option<asdk::registry::Credentials>, Status> {
    use asdk::registry::Credentials;
    use base64::Engine;
    let Some(a) = auth else { return Ok(None) };
    if !a.username.is_empty() {
        return Ok(Some(Credentials::Basic {
            username: a.username,
            password: a.password,
        }));
    }
    if !a.auth.is_empty() {
        let bad = || Status::invalid_argument("auth is not base64 of USER:PASSWORD");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (user, pass) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credentials::Basic {
            username: user.to_owned(),
            password: pass.to_owned(),
        }));
    }
    for token in [a.registry_token, a.identity_token] {
        if !token.is_empty() {
            return Ok(Some(Credentials::Bearer(token)));
        }
    }
    Ok(None)
}

impl Cri {
    /// Every image in the store, one entry per image ID with all its `name:tag`s.
    fn images(&self) -> Result<Vec<Image>, Status> {
        let list = self
            .sup
            .store()
            .list()
            .map_err(|e| Status::internal(format!("cannot list the image store: {e}")))?;
        let mut by_id: BTreeMap<String, Image> = BTreeMap::new();
        for s in list {
            let id = s.digest.to_string();
            let img = by_id.entry(id.clone()).or_insert_with(|| Image {
                id: id.clone(),
                size: s.size,
                spec: Some(ImageSpec {
                    image: id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            img.repo_tags.push(s.reference.to_string());
        }
        Ok(by_id.into_values().collect())
    }

    /// The image a CRI reference names, if it is in the store.
    fn find_image(&self, reference: &str) -> Result<Option<Image>, Status> {
        let img = match self.resolve_image(reference) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(status(e)),
        };
        let id = img.digest.to_string();
        Ok(self
            .images()?
            .into_iter()
            .find(|i| i.id == id)
            .or(Some(Image {
                id: id.clone(),
                size: img.size,
                spec: Some(ImageSpec {
                    image: id,
                    ..Default::default()
                }),
                ..Default::default()
            })))
    }

    pub(super) fn list_images(&self, filter: Option<ImageFilter>) -> Result<Vec<Image>, Status> {
        let wanted = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        match wanted {
            Some(r) => Ok(self.find_image(&r)?.into_iter().collect()),
            None => self.images(),
        }
    }

    /// An unknown image is not an error: the answer has no image (crictl and kubelet rely
    /// on that to decide whether to pull).
    pub(super) fn image_status(
        &self,
        spec: Option<ImageSpec>,
        verbose: bool,
    ) -> Result<(Option<Image>, std::collections::HashMap<String, String>), Status> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("ImageStatus names no image"));
        }
        let img = self.find_image(&reference)?;
        let info = match (&img, verbose) {
            (Some(_), true) => {
                let spec = self.resolve_image(&reference).map_err(status)?.spec;
                super::info(serde_json::json!({ "arrowSpec": spec }))
            }
            _ => Default::default(),
        };
        Ok((img, info))
    }

    /// A reference already in the store succeeds at once; anything else is pulled from its
    /// registry with asdk's registry client (the code `asdk pull` and `POST /images/pull`
    /// use), with the request's credentials or else arrowd's auth files.
    pub(super) async fn pull_image(
        &self,
        spec: Option<ImageSpec>,
        auth: Option<AuthConfig>,
    ) -> Result<String, Status> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("PullImage names no image"));
        }
        match self.find_image(&reference) {
            Ok(Some(img)) => return Ok(img.id),
            Ok(None) => {}
            // Not a local name: the registry client judges it as a remote reference.
            Err(e) if e.code() == tonic::Code::InvalidArgument => {}
            Err(e) => return Err(e),
        }
        use asdk::registry::{ProgressMode, RegistryError, RegistryOptions};
        let opts = RegistryOptions {
            credentials: credentials(auth)?,
            progress: ProgressMode::Quiet,
            ..Default::default()
        };
        tracing::info!(image = %reference, "pulling image through CRI");
        let pulled = asdk::registry::pull(self.sup.store(), &reference, &opts)
            .await
            .map_err(|e| {
                let hint = "; or build the image with `asdk build -t NAME:TAG` / import an OCI archive with `asdk import`";
                match e {
                    RegistryError::BadReference { .. } | RegistryError::Credentials(_) => {
                        Status::invalid_argument(format!("{e}{hint}"))
                    }
                    RegistryError::NotFound { .. } => Status::not_found(format!("{e}{hint}")),
                    RegistryError::Unauthorized { .. } => Status::unauthenticated(e.to_string()),
                    RegistryError::Tampered { .. } | RegistryError::NotArrow { .. } => {
                        Status::failed_precondition(e.to_string())
                    }
                    other => Status::unavailable(format!("pull {reference}: {other}{hint}")),
                }
            })?;
        tracing::info!(image = %reference, digest = %pulled.digest, "image pulled");
        Ok(pulled.digest.to_string())
    }

    /// Removes a `name:tag` (or, given an ID, the image and all its tags). An unknown image
    /// is already removed; an image a container or instance uses is refused.
    pub(super) fn remove_image(&self, spec: Option<ImageSpec>) -> Result<(), Status> {
        let reference = spec.map(|s| s.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("RemoveImage names no image"));
        }
        let img = match self.resolve_image(&reference) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(status(e)),
        };
        let digest = img.digest.to_string();
        if let Some(c) = self
            .store
            .containers()
            .map_err(status)?
            .into_iter()
            .find(|c| c.image_ref == digest)
        {
            return Err(Status::failed_precondition(format!(
                "image {reference:?} is used by container {}: remove the container first (crictl rm)",
                c.id
            )));
        }
        if let Some(i) = self
            .sup
            .list(true)
            .map_err(status)?
            .into_iter()
            .find(|i| i.spec.image_digest == digest)
        {
            return Err(Status::failed_precondition(format!(
                "image {reference:?} is used by instance {} ({}): remove it first (actl rm)",
                i.name, i.id
            )));
        }
        let store = self.sup.store();
        // A tag that exists removes just that tag; anything else (an ID) the whole image.
        let tagged = store
            .references()
            .map_err(|e| Status::internal(format!("cannot read the image store: {e}")))?
            .into_iter()
            .any(|(r, _)| r.to_string() == reference);
        let target = if tagged { reference.clone() } else { digest };
        store
            .remove(&target, true)
            .map_err(|e| Status::internal(format!("cannot remove image {reference:?}: {e}")))?;
        tracing::info!(image = %reference, "image removed through CRI");
        Ok(())
    }

    pub(super) fn image_fs_info(&self) -> (Vec<FilesystemUsage>, Vec<FilesystemUsage>) {
        (
            vec![fs_usage(self.sup.store().root())],
            vec![fs_usage(&self.sup.config().run_root())],
        )
    }
}
