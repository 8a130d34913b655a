//! `/instances` handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use crate::error::Error;
use crate::model::{CreateRequest, Instance, MemoryStatus, UpdateRequest, WaitResponse};
use crate::supervisor::Supervisor;

type Sup = State<Arc<Supervisor>>;

/// `?all=`
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

/// `?timeout=` (seconds)
#[derive(Debug, Deserialize)]
pub struct StopQuery {
    timeout: Option<u64>,
}

/// `?signal=`
#[derive(Debug, Deserialize)]
pub struct KillQuery {
    signal: Option<String>,
}

/// `?force=`
#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `?follow=&tail=`
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

pub async fn list(State(s): Sup, Query(q): Query<ListQuery>) -> ApiResult<Json<Vec<Instance>>> {
    Ok(Json(s.list(q.all)?))
}

pub async fn create(
    State(s): Sup,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    let Json(req) = body.map_err(|e| {
        ApiError(Error::Invalid(format!(
            "bad request body: {}; send JSON such as {{\"image\": \"hello:latest\"}} (schema: GET /openapi.json)",
            e.body_text()
        )))
    })?;
    Ok((StatusCode::CREATED, Json(s.create(req).await?)))
}

pub async fn inspect(State(s): Sup, Path(id): Path<String>) -> ApiResult<Json<Instance>> {
    Ok(Json(s.inspect(&id)?))
}

pub async fn start(State(s): Sup, Path(id): Path<String>) -> ApiResult<Json<Instance>> {
    Ok(Json(s.start(&id).await?))
}

pub async fn stop(
    State(s): Sup,
    Path(id): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(s.stop(&id, q.timeout).await?))
}

pub async fn kill(
    State(s): Sup,
    Path(id): Path<String>,
    Query(q): Query<KillQuery>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(s.kill(&id, q.signal.as_deref()).await?))
}

pub async fn delete(
    State(s): Sup,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    s.delete(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn wait(State(s): Sup, Path(id): Path<String>) -> ApiResult<Json<WaitResponse>> {
    Ok(Json(s.wait(&id).await?))
}

pub async fn logs(
    State(s): Sup,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let stream = s.logs(&id, q.follow, q.tail)?;
    let body = Body::from_stream(stream.map(|r| r.map(axum::body::Bytes::from)));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// `GET /instances/{id}/cores/{name}`: an app core dump (`core.<pid>`), as a download.
pub async fn core(State(s): Sup, Path((id, name)): Path<(String, String)>) -> ApiResult<Response> {
    let inst = s.inspect(&id)?;
    let path = crate::cores::path(std::path::Path::new(&inst.run_dir), &name).ok_or_else(|| {
        Error::NotFound(format!(
            "instance {id} has no core dump {name:?}; `actl inspect {id}` lists its cores"
        ))
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::Internal(format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util_stream(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// A file as a stream of chunks (64 KiB reads).
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// `POST /instances/{id}/update`: resize a running instance's memory.
pub async fn update(
    State(s): Sup,
    Path(id): Path<String>,
    body: Result<Json<UpdateRequest>, JsonRejection>,
) -> ApiResult<Json<MemoryStatus>> {
    const USAGE: &str = "send JSON such as {\"memory\": \"512M\"} (schema: GET /openapi.json)";
    let Json(req) = body.map_err(|e| {
        ApiError(Error::Invalid(format!(
            "bad request body: {}; {USAGE}",
            e.body_text()
        )))
    })?;
    let Some(memory) = &req.memory else {
        return Err(ApiError(Error::Invalid(format!(
            "nothing to update: {USAGE}"
        ))));
    };
    Ok(Json(s.update_memory(&id, memory).await?))
}
