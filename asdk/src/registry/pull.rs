//! `asdk pull`: manifest, then each blob the store lacks, downloaded into the store's tmp/
//! (resumed from what an interrupted pull left there), verified by digest, then added.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::secrets::RegistryAuth;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use super::progress::{human, Progress, Transfer};
use super::{
    backoff, client, client_error, transient, RegistryError, RegistryOptions, RemoteRef, Result,
};
use crate::digest::Digest;
use crate::image::{Descriptor, Manifest, MEDIA_TYPE_MANIFEST};
use crate::reference::Reference;
use crate::store::Store;

/// Manifests larger than this are refused (Arrow manifests are well under 1 KiB).
const MAX_MANIFEST: usize = 4 << 20;

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct Pulled {
    /// The image ID (manifest digest).
    pub digest: Digest,
    /// The local reference it is stored under (none for a pull by digest).
    pub reference: Option<Reference>,
    /// The remote reference, normalized.
    pub remote: String,
    /// Blobs downloaded.
    pub downloaded: usize,
    /// Blobs the store already had.
    pub existing: usize,
    /// Bytes downloaded (including resumed parts from earlier attempts).
    pub bytes: u64,
}

/// Pulls `remote` (`REGISTRY/REPOSITORY[:TAG]` or `…@sha256:HEX`) into `store` and tags it
/// with its full reference (see [`RemoteRef`]).
pub async fn pull(store: &Store, remote: &str, opts: &RegistryOptions) -> Result<Pulled> {
    let target = RemoteRef::parse(remote)?;
    let client = client(&target, opts);
    let creds = super::auth::lookup(
        &target.registry,
        opts.credentials.as_ref(),
        opts.auth_file.as_deref(),
    )?;
    let auth = creds.to_oci();
    let progress = Progress::new(opts.progress);
    progress.line(&format!("Pulling {}", target.display));

    let manifest_bytes = {
        let mut attempt = 0;
        loop {
            match client
                .pull_manifest_raw(&target.oci, &auth, &[MEDIA_TYPE_MANIFEST])
                .await
            {
                Ok((bytes, _)) => break bytes,
                Err(e) if transient(&e) && attempt < opts.retries() => {
                    attempt += 1;
                    progress.line(&format!(
                        "manifest: {e}; retrying ({attempt}/{})",
                        opts.retries()
                    ));
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(oci_client::errors::OciDistributionError::DigestError(e)) => {
                    return Err(RegistryError::Tampered {
                        registry: target.registry.clone(),
                        what: format!("manifest of {}", target.display),
                        expected: target
                            .oci
                            .digest()
                            .unwrap_or("its digest header")
                            .to_owned(),
                        actual: e.to_string(),
                    })
                }
                Err(e) => return Err(client_error(&target, e)),
            }
        }
    };
    if manifest_bytes.len() > MAX_MANIFEST {
        return Err(RegistryError::NotArrow {
            reference: target.display.clone(),
            reason: format!("manifest of {} bytes is too large", manifest_bytes.len()),
        });
    }
    let digest = Digest::of(&manifest_bytes);
    if let Some(want) = target.oci.digest() {
        if want != digest.to_string() {
            return Err(RegistryError::Tampered {
                registry: target.registry.clone(),
                what: format!("manifest of {}", target.display),
                expected: want.to_owned(),
                actual: digest.to_string(),
            });
        }
    }
    let manifest =
        Manifest::parse(&manifest_bytes, &target.display).map_err(|e| RegistryError::NotArrow {
            reference: target.display.clone(),
            reason: e.to_string(),
        })?;

    let mut files: Vec<(Digest, PathBuf)> = Vec::new();
    let (mut existing, mut bytes) = (0, 0);
    for desc in manifest.blobs() {
        if store.has_blob(&desc.digest) {
            existing += 1;
            progress.line(&format!("{}: already exists", desc.digest.short()));
            continue;
        }
        if files.iter().any(|(d, _)| *d == desc.digest) {
            continue;
        }
        let path = store
            .tmp_dir()
            .join(format!("pull-{}.partial", desc.digest.hex()));
        match download(&client, &target, &auth, desc, &path, &progress, opts).await {
            Ok(n) => bytes += n,
            Err(e) => {
                // Keep partial downloads for a later resume, unless the registry serves
                // bad content: then drop everything this pull fetched.
                if matches!(e, RegistryError::Tampered { .. }) {
                    for (_, p) in &files {
                        let _ = std::fs::remove_file(p);
                    }
                }
                return Err(e);
            }
        }
        files.push((desc.digest, path));
    }
    let refs: Vec<Reference> = target.local.iter().cloned().collect();
    let stored = store.add_downloaded(&manifest_bytes, &files, &refs);
    if stored.is_err() {
        for (_, p) in &files {
            let _ = std::fs::remove_file(p);
        }
    }
    stored?;
    progress.line(&format!("Digest: {digest}"));
    match &target.local {
        Some(r) => progress.line(&format!("Status: downloaded image for {r}")),
        None => progress.line("Status: downloaded image (untagged: pulled by digest)"),
    }
    Ok(Pulled {
        digest,
        reference: target.local.clone(),
        remote: target.display.clone(),
        downloaded: files.len(),
        existing,
        bytes,
    })
}

/// Downloads one blob to `path`, resuming from what is there, retrying transient errors;
/// returns the bytes transferred. On return the file holds exactly the blob (verified).
async fn download(
    client: &oci_client::Client,
    target: &RemoteRef,
    auth: &RegistryAuth,
    desc: &Descriptor,
    path: &Path,
    progress: &Progress,
    opts: &RegistryOptions,
) -> Result<u64> {
    let io = |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    };
    let digest = desc.digest.to_string();
    let transfer = progress.transfer(&desc.digest.short(), "downloading", desc.size);
    let (mut attempt, mut restarted, mut moved) = (0u32, false, 0u64);
    // pull_manifest_raw stored the credentials; blob requests reuse them.
    let _ = auth;
    loop {
        let have = std::fs::metadata(path).map_or(0, |m| m.len());
        if have > desc.size {
            std::fs::remove_file(path).map_err(io)?;
            continue;
        }
        if have == desc.size && (have > 0 || path.exists()) {
            let actual = std::fs::File::open(path)
                .and_then(Digest::of_reader)
                .map_err(io)?;
            if actual == desc.digest {
                transfer.finish(&format!("downloaded {}", human(desc.size)));
                return Ok(moved);
            }
            std::fs::remove_file(path).map_err(io)?;
            if restarted || moved == desc.size {
                // Fetched whole from the registry and still wrong: refuse.
                return Err(RegistryError::Tampered {
                    registry: target.registry.clone(),
                    what: format!("blob {digest}"),
                    expected: digest,
                    actual: actual.to_string(),
                });
            }
            // What an earlier pull left was bad: start over once.
            restarted = true;
            transfer.note("partial download did not verify; starting over");
            continue;
        }
        if have > 0 {
            transfer.note(&format!("resuming at {}", human(have)));
        }
        match fetch(client, target, desc, path, have, &transfer).await {
            Ok(n) => {
                moved += n;
                let now = std::fs::metadata(path).map_or(0, |m| m.len());
                if now < desc.size {
                    // The connection ended early: counts as a failed attempt.
                    attempt += 1;
                    if attempt > opts.retries() {
                        return Err(RegistryError::Client {
                            registry: target.registry.clone(),
                            source: oci_client::errors::OciDistributionError::GenericError(Some(
                                format!(
                                    "blob {digest}: transfer ended at {now} of {} bytes",
                                    desc.size
                                ),
                            )),
                            hint: String::new(),
                        });
                    }
                }
            }
            Err(FetchError::Client(e)) if transient(&e) && attempt < opts.retries() => {
                attempt += 1;
                transfer.note(&format!("{e}; retrying ({attempt}/{})", opts.retries()));
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(FetchError::Client(e)) => return Err(client_error(target, e)),
            Err(FetchError::Io(e)) => return Err(io(e)),
            Err(FetchError::TooLong) => {
                std::fs::remove_file(path).map_err(io)?;
                return Err(RegistryError::Tampered {
                    registry: target.registry.clone(),
                    what: format!("blob {digest}"),
                    expected: format!("{digest} ({} bytes)", desc.size),
                    actual: "more bytes than the manifest says".into(),
                });
            }
        }
    }
}

enum FetchError {
    Client(oci_client::errors::OciDistributionError),
    Io(std::io::Error),
    TooLong,
}

/// One GET of the blob from `offset` (a range request when resuming), appended to `path`.
/// Returns the bytes received. A server that ignores the range sends the whole blob: the
/// file is then rewritten from the start.
async fn fetch(
    client: &oci_client::Client,
    target: &RemoteRef,
    desc: &Descriptor,
    path: &Path,
    offset: u64,
    transfer: &Transfer,
) -> std::result::Result<u64, FetchError> {
    let digest = desc.digest.to_string();
    let response = client
        .pull_blob_stream_partial(&target.oci, digest.as_str(), offset, None)
        .await
        .map_err(FetchError::Client)?;
    let (mut stream, mut pos) = match response {
        BlobResponse::Partial(s) => (s, offset),
        BlobResponse::Full(s) => (s, 0),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(pos == 0)
        .open(path)
        .await
        .map_err(FetchError::Io)?;
    if pos > 0 {
        file.set_len(pos).await.map_err(FetchError::Io)?;
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(pos))
            .await
            .map_err(FetchError::Io)?;
    }
    let mut received = 0u64;
    transfer.set_position(pos);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            // The client's own digest check fails at the end of a whole blob: let ours
            // (over the file) decide, so that the error names the blob.
            Err(_) if pos == desc.size => break,
            Err(e) => {
                file.flush().await.map_err(FetchError::Io)?;
                return Err(FetchError::Client(e.into()));
            }
        };
        if pos + chunk.len() as u64 > desc.size {
            return Err(FetchError::TooLong);
        }
        file.write_all(&chunk).await.map_err(FetchError::Io)?;
        pos += chunk.len() as u64;
        received += chunk.len() as u64;
        transfer.set_position(pos);
    }
    file.flush().await.map_err(FetchError::Io)?;
    file.sync_all().await.map_err(FetchError::Io)?;
    Ok(received)
}
