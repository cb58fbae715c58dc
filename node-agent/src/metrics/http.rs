//! `POST /v1/metrics`: StatsD lines over HTTP, for gateways that cannot send UDP.
//!
//! The body is StatsD text, one metric per line (see [`super::statsd`]). The answer is
//! `200 {"accepted", "rejected", "errors"}` when at least one line was taken (or the body was
//! empty), `400` with the same body when every line was refused. A line that is not UTF-8 is
//! refused like any other bad line; the others are taken. `GET /v1/metrics/intake` shows
//! the intake counters.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::MetricsService;

/// The `/v1/metrics` routes over `service`.
pub fn router(service: Arc<MetricsService>) -> Router {
    Router::new().route("/v1/metrics", post(push)).route("/v1/metrics/intake", get(show)).with_state(service)
}

async fn push(State(s): State<Arc<MetricsService>>, body: Bytes) -> Response {
    let intake = s.ingest_bytes(&body);
    let status = if intake.accepted == 0 && intake.rejected > 0 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    (status, Json(intake)).into_response()
}

async fn show(State(s): State<Arc<MetricsService>>) -> Response {
    let counters: serde_json::Map<String, serde_json::Value> =
        s.stats.counters().into_iter().map(|(name, _, v)| (name.to_owned(), v.into())).collect();
    Json(serde_json::json!({ "counters": counters })).into_response()
}
