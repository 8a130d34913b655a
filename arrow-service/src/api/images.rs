//! `/images` handlers (the asdk image store arrowd shares with `asdk`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

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
