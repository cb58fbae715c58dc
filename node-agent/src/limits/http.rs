//! The limits API over HTTP/JSON, served on the agent's HTTP address next to `/health`.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/limits/acquire` `{"key": "operator:x", "n": 1}` | `200 {"allowed": true, "limited": true}`, or `429 {"allowed": false, "retry_after_ms": 12.5}` with `Retry-After` |
//! | `POST /v1/slots/acquire` `{"key": "domain:x", "n": 1}` | `200 {"allowed": true, ...}` or `429 {"allowed": false, ...}` |
//! | `POST /v1/slots/release` `{"key": "domain:x", "n": 1}` | `200 {"released": 1}`, or `409` when fewer were held |
//! | `GET /v1/limits` | revision, limits, keys in use with shares and counts, known nodes |
//! | `GET /v1/limits/history` | every revision: who, when, why, what |
//!
//! A key no limit applies to is allowed with `"limited": false`. Malformed requests get `400`
//! with `{"error": "..."}` and are counted. Connections are kept alive between requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use switchboard_bus::limits::Decision;

use super::{check_request, LimitsService};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsRequest {
    key: String,
    #[serde(default = "one", deserialize_with = "super::units_from_json")]
    n: u64,
}

fn one() -> u64 {
    1
}

/// The `/v1/...` routes over `service`.
pub fn router(service: Arc<LimitsService>) -> Router {
    Router::new()
        .route("/v1/limits/acquire", post(acquire))
        .route("/v1/slots/acquire", post(acquire))
        .route("/v1/slots/release", post(release))
        .route("/v1/limits", get(show))
        .route("/v1/limits/history", get(history))
        .with_state(service)
}

/// The same routes when limits are off: a `404` that says so.
pub fn off_router() -> Router {
    crate::off::router(&["/v1/limits", "/v1/slots"], "limits are off on this node ([limits] enabled = false)")
}

fn bad(service: &LimitsService, message: String) -> Response {
    service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// The request in `body`, or why it is not one.
fn parse(body: &[u8]) -> Result<UnitsRequest, String> {
    const SHAPE: &str = "{\"key\": string, \"n\": integer >= 1}";
    let req: UnitsRequest = switchboard_bus::http::json_object(body, SHAPE)?;
    check_request(&req.key, req.n).map_err(|e| e.to_string())?;
    Ok(req)
}

async fn acquire(State(s): State<Arc<LimitsService>>, body: Bytes) -> Response {
    s.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let req = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad(&s, message),
    };
    match s.acquire(&req.key, req.n) {
        // The answers of nearly every request, written out once (no JSON tree to build).
        Decision::Allowed => static_json(r#"{"allowed":true,"limited":true}"#),
        Decision::Unlimited => static_json(r#"{"allowed":true,"limited":false}"#),
        Decision::Denied { retry_after } => {
            // Whole microseconds, as the socket's three decimals: no float noise in the JSON.
            let ms = retry_after.as_micros() as f64 / 1000.0;
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "allowed": false, "retry_after_ms": ms })))
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        Decision::TooLarge { most, slots } => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "allowed": false, "most": most, "error": Decision::too_large(&req.key, req.n, most, slots) })),
        )
            .into_response(),
        Decision::TooManyKeys => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "allowed": false, "error": Decision::too_many_keys() })))
                .into_response()
        }
    }
}

/// A `200` with a JSON body known at compile time.
fn static_json(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

async fn release(State(s): State<Arc<LimitsService>>, body: Bytes) -> Response {
    s.stats.http_requests.fetch_add(1, Ordering::Relaxed);
    let req = match parse(&body) {
        Ok(r) => r,
        Err(message) => return bad(&s, message),
    };
    let released = s.release(&req.key, req.n);
    if released < req.n {
        let msg = s.release_shortfall(&req.key, req.n, released).unwrap_or_else(|e| e);
        return (StatusCode::CONFLICT, Json(json!({ "released": released, "error": msg }))).into_response();
    }
    Json(json!({ "released": released })).into_response()
}

async fn show(State(s): State<Arc<LimitsService>>) -> Response {
    let history = s.revisions.history();
    let keys: Vec<serde_json::Value> = s
        .limiter
        .usage()
        .into_iter()
        .map(|u| {
            json!({
                "key": u.key, "limit": u.limit, "allowed": u.allowed, "denied": u.denied, "share": u.share,
                "rate_per_sec": u.rate_per_sec, "slots_max": u.slots.map(|x| x.0), "slots_held": u.slots.map(|x| x.1),
            })
        })
        .collect();
    let peers = s.peers.borrow().clone();
    Json(json!({
        "revision": history.current_number(),
        "limits": history.current().map(|r| r.limits.clone()).unwrap_or_default(),
        "keys": keys,
        "nodes": peers,
    }))
    .into_response()
}

async fn history(State(s): State<Arc<LimitsService>>) -> Response {
    Json(s.revisions.history()).into_response()
}
