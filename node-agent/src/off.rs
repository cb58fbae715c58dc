//! The HTTP routes of a service turned off in the config: every request under them is answered
//! `404` with a JSON error that names the setting, not the bare 404 of an unknown path.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};

/// Routes for `paths` (each also with everything under it) answering `404 {"error": why}`.
pub(crate) fn router(paths: &[&str], why: &'static str) -> Router {
    let off = move || async move { (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": why }))).into_response() };
    paths.iter().fold(Router::new(), |r, path| {
        r.route(path, axum::routing::any(off)).route(&format!("{path}/{{*rest}}"), axum::routing::any(off))
    })
}
