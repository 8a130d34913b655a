//! `asdk push`: each blob the registry lacks (checked with HEAD), then the manifest, byte
//! for byte as stored, so the registry's digest is the local image ID.

use http::HeaderValue;
use oci_client::RegistryOperation;
use serde::Serialize;

use super::progress::{human, Progress};
use super::{
    backoff, client, client_error, transient, RegistryError, RegistryOptions, RemoteRef, Result,
};
use crate::digest::Digest;
use crate::image::MEDIA_TYPE_MANIFEST;
use crate::store::Store;

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    /// The image ID (manifest digest), the same in the registry.
    pub digest: Digest,
    /// The remote reference, normalized.
    pub remote: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry already had (not uploaded again).
    pub existing: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Pushes the local image `source` (reference, digest or ID) to `remote`
/// (`REGISTRY/REPOSITORY[:TAG]`).
pub async fn push(
    store: &Store,
    source: &str,
    remote: &str,
    opts: &RegistryOptions,
) -> Result<Pushed> {
    let image = store.image(source)?;
    store.verify(&image)?;
    let target = RemoteRef::parse(remote)?;
    if target.oci.digest().is_some() {
        return Err(RegistryError::BadReference {
            input: remote.to_owned(),
            reason: "push to a tag (REGISTRY/REPOSITORY:TAG), not a digest".into(),
        });
    }
    let client = client(&target, opts);
    let creds = super::auth::lookup(
        &target.registry,
        opts.credentials.as_ref(),
        opts.auth_file.as_deref(),
    )?;
    let auth = creds.to_oci();
    let progress = Progress::new(opts.progress);
    progress.line(&format!(
        "Pushing {} to {}",
        image.digest.short(),
        target.display
    ));
    retry(&target, &progress, opts, || {
        client.auth(&target.oci, &auth, RegistryOperation::Push)
    })
    .await?;

    let (mut uploaded, mut existing, mut bytes) = (0, 0, 0);
    let mut seen = Vec::new();
    for desc in image.manifest.blobs() {
        if seen.contains(&desc.digest) {
            continue;
        }
        seen.push(desc.digest);
        let digest = desc.digest.to_string();
        let label = desc.digest.short();
        if retry(&target, &progress, opts, || {
            client.blob_exists(&target.oci, &digest)
        })
        .await?
        {
            existing += 1;
            progress.line(&format!("{label}: layer already exists"));
            continue;
        }
        let data = bytes::Bytes::from(store.read_blob(&desc.digest)?);
        let transfer = progress.transfer(&label, "uploading", desc.size);
        retry(&target, &progress, opts, || {
            client.push_blob(&target.oci, data.clone(), &digest)
        })
        .await?;
        transfer.set_position(desc.size);
        transfer.finish(&format!("pushed {}", human(desc.size)));
        uploaded += 1;
        bytes += desc.size;
    }
    let manifest = bytes::Bytes::from(store.read_blob(&image.digest)?);
    retry(&target, &progress, opts, || {
        client.push_manifest_raw(
            &target.oci,
            manifest.clone(),
            HeaderValue::from_static(MEDIA_TYPE_MANIFEST),
        )
    })
    .await?;
    progress.line(&format!(
        "{}: digest: {} size: {}",
        target.oci.tag().unwrap_or("latest"),
        image.digest,
        manifest.len()
    ));
    Ok(Pushed {
        digest: image.digest,
        remote: target.display.clone(),
        uploaded,
        existing,
        bytes,
    })
}

/// Runs `op`, retrying transient failures with backoff.
async fn retry<T, F, Fut>(
    target: &RemoteRef,
    progress: &Progress,
    opts: &RegistryOptions,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<
        Output = std::result::Result<T, oci_client::errors::OciDistributionError>,
    >,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && attempt < opts.retries() => {
                attempt += 1;
                progress.line(&format!("{e}; retrying ({attempt}/{})", opts.retries()));
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(client_error(target, e)),
        }
    }
}
