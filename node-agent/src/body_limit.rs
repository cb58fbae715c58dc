//! The size limit on the request bodies of the agent's HTTP APIs (limits, DLR, metrics intake).
//!
//! [`limit_bodies`] reads every request body, up to `agent.http_max_body_bytes`, before a route
//! sees it. A body declared larger (`Content-Length`) is refused before any of it is read, one
//! that turns out larger (chunked) as soon as it passes the limit: `413` with the APIs' JSON
//! error body, `{"error": "..."}`, counted in `switchboard_agent_http_oversized_requests_total`.
//!
//! Sizing the default: the largest request the APIs document is a DLR register batch of
//! [`crate::dlr::MAX_BATCH`] records. With every field at its longest (connector 64 bytes,
//! message id, destination and account 128 each, gateway reference 256, both numbers 20 digits)
//! and every character of the free-text fields escaped (`\"`), one record is 1,487 bytes of
//! compact JSON, and the batch about 14.2 MiB. The default, 32 MiB
//! ([`DEFAULT_MAX_BODY_BYTES`]), leaves more than twice that for pretty-printed JSON.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;

use crate::stats::AgentStats;

/// The default of `agent.http_max_body_bytes`: 32 MiB (see the module docs).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 << 20;

#[derive(Clone)]
struct BodyLimit {
    max_bytes: usize,
    stats: Arc<AgentStats>,
}

impl BodyLimit {
    fn too_large(&self) -> Response {
        self.stats.http_oversized_requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(max_bytes = self.max_bytes, "refused an HTTP request body over the limit");
        let error = format!("request body over {} bytes (agent.http_max_body_bytes)", self.max_bytes);
        (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({ "error": error }))).into_response()
    }
}

/// `routes` with bodies of at most `max_bytes`; larger ones get `413 {"error": "..."}` and are
/// counted in `stats`.
pub fn limit_bodies(routes: Router, max_bytes: usize, stats: Arc<AgentStats>) -> Router {
    routes
        .layer(middleware::from_fn_with_state(BodyLimit { max_bytes, stats }, read_body))
        // The routes get the body whole and within the limit: axum's own limit (2 MiB unless
        // told otherwise) must not cut it again.
        .layer(DefaultBodyLimit::max(max_bytes))
}

async fn read_body(State(limit): State<BodyLimit>, request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let declared = match declared.map(usize::try_from) {
        Some(Ok(n)) if n <= limit.max_bytes => n,
        Some(_) => return limit.too_large(),
        None => 0,
    };
    let (parts, body) = request.into_parts();
    let mut bytes = Vec::with_capacity(declared);
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let error = format!("reading the request body: {e}");
                return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
            }
        };
        if chunk.len() > limit.max_bytes.saturating_sub(bytes.len()) {
            return limit.too_large();
        }
        bytes.extend_from_slice(&chunk);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentSettings;
    use crate::dlr::MAX_BATCH;

    /// One record of a register request with every field at its longest, every character of
    /// the free-text fields one that JSON escapes (`"` is allowed in each and written as two bytes).
    fn largest_register_record() -> serde_json::Value {
        let text = |len: usize| "\"".repeat(len);
        json!({
            "connector": "c".repeat(switchboard_bus::dlr::id::MAX_CONNECTOR_BYTES),
            "msg_id": text(switchboard_bus::dlr::id::MAX_ID_BYTES),
            "destination": text(crate::dlr::MAX_FIELD_BYTES),
            "account": text(crate::dlr::MAX_FIELD_BYTES),
            "gateway_ref": text(crate::dlr::MAX_REF_BYTES),
            "submitted_at": u64::MAX,
            "expiry_s": u64::MAX,
        })
    }

    #[test]
    fn the_default_holds_the_largest_documented_batch_twice() {
        let record = largest_register_record();
        assert_eq!(serde_json::to_vec(&record).unwrap().len(), 1487, "the module docs give this figure");
        let batch = serde_json::to_vec(&json!({ "records": vec![record; MAX_BATCH] })).unwrap().len();
        assert_eq!(AgentSettings::default().http_max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(batch * 2 <= DEFAULT_MAX_BODY_BYTES, "{batch} bytes");
        assert_eq!(batch / (1 << 20), 14, "the module docs say about 14.2 MiB: {batch}");
    }
}
