//! `/images` handlers (the asdk image store arrowd shares with `asdk`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiResult;
use crate::error::Error;
use crate::model::ImageInfo;
use crate::supervisor::Supervisor;

pub async fn list(State(s): State<Arc<Supervisor>>) -> ApiResult<Json<Vec<ImageInfo>>> {
    let images = s
        .store()
        .list()
        .map_err(|e| Error::Internal(format!("image store: {e}")))?;
    Ok(Json(
        images
            .into_iter()
            .map(|i| ImageInfo {
                reference: i.reference.to_string(),
                digest: i.digest.to_string(),
                version: i.version,
                size: i.size,
            })
            .collect(),
    ))
}

pub async fn inspect(
    State(s): State<Arc<Supervisor>>,
    Path(reference): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let image = s.store().image(&reference).map_err(|e| match e {
        asdk::store::StoreError::NotFound(_) => Error::NotFound(format!(
            "image {reference:?} not found: `actl images` lists the images in the store"
        )),
        other => Error::Invalid(other.to_string()),
    })?;
    Ok(Json(serde_json::json!({
        "digest": image.digest.to_string(),
        "size": image.size,
        "spec": image.spec,
    })))
}

/// `POST /images/pull` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// `REGISTRY/REPOSITORY[:TAG]` or `REGISTRY/REPOSITORY@sha256:HEX`.
    pub reference: String,
    /// Basic credentials (with `password`); else a `token`; else arrowd's auth files.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A bearer token sent as is.
    #[serde(default)]
    pub token: Option<String>,
    /// Reach this registry over plain HTTP even though it is not on loopback.
    #[serde(default)]
    pub insecure: bool,
}

/// Pulls an image from a registry into the store (the same code as `asdk pull` and the CRI
/// `PullImage`); answers what was pulled.
pub async fn pull(
    State(s): State<Arc<Supervisor>>,
    Json(req): Json<PullRequest>,
) -> ApiResult<Json<asdk::registry::Pulled>> {
    use asdk::registry::{Credentials, RegistryError, RegistryOptions};
    let credentials = match (req.username, req.password, req.token) {
        (Some(username), Some(password), None) => Some(Credentials::Basic { username, password }),
        (None, None, Some(t)) => Some(Credentials::Bearer(t)),
        (None, None, None) => None,
        _ => {
            return Err(Error::Invalid(
                "give either username and password, or token, or neither (arrowd's auth files)"
                    .into(),
            )
            .into())
        }
    };
    let mut opts = RegistryOptions {
        credentials,
        progress: asdk::registry::ProgressMode::Quiet,
        ..Default::default()
    };
    if req.insecure {
        if let Ok(r) = asdk::registry::RemoteRef::parse(&req.reference) {
            opts.insecure_registries.push(r.registry);
        }
    }
    tracing::info!(reference = %req.reference, "pulling image");
    let pulled = asdk::registry::pull(s.store(), &req.reference, &opts)
        .await
        .map_err(|e| match e {
            RegistryError::BadReference { .. } | RegistryError::Credentials(_) => {
                Error::Invalid(e.to_string())
            }
            RegistryError::NotFound { .. } => Error::NotFound(e.to_string()),
            RegistryError::Unauthorized { .. }
            | RegistryError::Tampered { .. }
            | RegistryError::NotArrow { .. } => Error::Conflict(e.to_string()),
            other => Error::Internal(format!("pull {}: {other}", req.reference)),
        })?;
    tracing::info!(reference = %req.reference, digest = %pulled.digest, "image pulled");
    Ok(Json(pulled))
}
