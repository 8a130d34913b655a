//! `/templates` handlers.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use crate::error::Error;
use crate::supervisor::Supervisor;
use crate::templates::model::{Template, TemplateRequest};

type Sup = State<Arc<Supervisor>>;

/// `?force=`
#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

pub async fn list(State(s): Sup) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(s.list_templates()?))
}

pub async fn create(
    State(s): Sup,
    body: Result<Json<TemplateRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    let Json(req) = body.map_err(|e| {
        ApiError(Error::Invalid(format!(
            "bad request body: {}; send JSON such as {{\"name\": \"web\", \"image\": \"web:latest\"}} (schema: GET /openapi.json)",
            e.body_text()
        )))
    })?;
    Ok((StatusCode::CREATED, Json(s.create_template(req).await?)))
}

pub async fn inspect(State(s): Sup, Path(name): Path<String>) -> ApiResult<Json<Template>> {
    Ok(Json(s.inspect_template(&name)?))
}

pub async fn delete(
    State(s): Sup,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    s.delete_template(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}
