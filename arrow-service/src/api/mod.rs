//! The REST API (axum): routes, the Unix-socket and optional TCP listeners, token check.

mod error;
mod images;
mod instances;
mod templates;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub use error::ApiError;

use crate::error::Error;
use crate::supervisor::Supervisor;

/// All routes.
pub fn router(sup: Arc<Supervisor>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/images", get(images::list))
        .route("/images/pull", post(images::pull))
        // Pulled images are named REGISTRY/REPOSITORY:TAG: the reference spans segments.
        .route("/images/{*reference}", get(images::inspect))
        .route("/instances", get(instances::list).post(instances::create))
        .route(
            "/instances/{id}",
            get(instances::inspect).delete(instances::delete),
        )
        .route("/instances/{id}/start", post(instances::start))
        .route("/instances/{id}/stop", post(instances::stop))
        .route("/instances/{id}/kill", post(instances::kill))
        .route("/instances/{id}/wait", post(instances::wait))
        .route("/instances/{id}/update", post(instances::update))
        .route("/instances/{id}/logs", get(instances::logs))
        .route("/instances/{id}/cores/{name}", get(instances::core))
        .route("/templates", get(templates::list).post(templates::create))
        .route(
            "/templates/{name}",
            get(templates::inspect).delete(templates::delete),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(sup.clone(), count_requests))
        .with_state(sup)
}

/// Routes behind a bearer token (the TCP listener).
pub fn router_with_token(sup: Arc<Supervisor>, token: String) -> Router {
    router(sup).layer(middleware::from_fn(move |req: Request, next: Next| {
        let expected = format!("Bearer {token}");
        async move {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
            if ok {
                next.run(req).await
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    Json(crate::model::ErrorBody {
                        error: "missing or wrong token: send `Authorization: Bearer TOKEN` (actl: set ARROW_TOKEN)".into(),
                    }),
                )
                    .into_response()
            }
        }
    }))
}

/// Compares without an early exit, so the time taken does not tell how many
/// leading bytes of a guessed token were right (only the expected length).
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() ^ expected.len()) as u8 | u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!*e);
        diff |= std::hint::black_box(g ^ e);
    }
    diff == 0
}

async fn count_requests(State(s): State<Arc<Supervisor>>, req: Request, next: Next) -> Response {
    s.metrics.request();
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound(
        "no such API path: GET /openapi.json describes the API".into(),
    ))
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(crate::model::ErrorBody {
            error: "method not allowed on this path: GET /openapi.json describes the API".into(),
        }),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
        .into_response()
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn info(State(s): State<Arc<Supervisor>>) -> Json<serde_json::Value> {
    let c = s.config();
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": c.kernel_path(),
        "vmm": c.vmm_path(),
        "store": s.store().root(),
        "state_dir": c.state_dir,
        "cgroups": s.cgroups_enabled(),
        "jail": s.jail_enabled(),
    }))
}

async fn metrics(State(s): State<Arc<Supervisor>>) -> Result<Response, ApiError> {
    let text = s.metrics_text()?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        use super::constant_time_eq as eq;
        assert!(eq(b"Bearer abc", b"Bearer abc"));
        assert!(!eq(b"Bearer abd", b"Bearer abc"));
        assert!(!eq(b"Bearer ab", b"Bearer abc"));
        assert!(!eq(b"Bearer abcd", b"Bearer abc"));
        assert!(!eq(b"", b"Bearer abc"));
        // Lengths that differ by a multiple of 256 are still different.
        assert!(!eq(&[b'a'; 256], b""));
    }

    /// The checked-in OpenAPI document names every route the router serves.
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI_JSON).unwrap();
        let src = include_str!("mod.rs");
        let mut n = 0;
        for chunk in src.split(".route(").skip(1) {
            let Some(path) = chunk.split('"').nth(1).filter(|p| p.starts_with('/')) else {
                continue;
            };
            // A catch-all `{*name}` is documented as the parameter `{name}`.
            let path = path.replace("{*", "{");
            let path = path.as_str();
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} missing from openapi.json"
            );
            n += 1;
        }
        assert!(n >= 15, "{n}");
    }
}
