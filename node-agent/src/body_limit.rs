//! The size limit on the request bodies of the agent's HTTP APIs (limits, DLR, metrics intake).
//!
//! [`limit_bodies`] reads every request body, up to `agent.http_max_body_bytes`, before a route
//! sees it. A body declared larger (`Content-Length`) is refused before any of it is read, one
//! that turns out larger (chunked) as soon as it passes the limit: `413` with the APIs' JSON
//! error body, `{"error": "..."}`, counted in `switchboard_agent_http_oversized_requests_total`.
//!
//! A body must also come at a pace: it is refused with `408` once it has taken longer than
//! [`BODY_GRACE`] plus one second per MiB received ([`BODY_BYTES_PER_SEC`]), or has sent nothing
//! for the stall timeout (10 s), so a client sending a byte a second holds its connection for
//! 10 s, not for as long as it likes (counted in `switchboard_agent_http_slow_requests_total`).
//! A body that cannot be read (a malformed chunked encoding) gets `400`, counted in
//! `switchboard_agent_http_malformed_bodies_total`. And the bodies being read, and held while their
//! request runs, take at most [`bodies_budget`] bytes in all (256 MiB by default): past it a request
//! gets `503` (`switchboard_agent_http_busy_requests_total`), so 256 connections announcing
//! 32 MiB each cannot make the agent hold 8 GiB.
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

/// How long any request body may take, before [`BODY_BYTES_PER_SEC`] adds to it.
pub const BODY_GRACE: std::time::Duration = switchboard_bus::http::STALL_TIMEOUT;
/// Each this many bytes received give a body one more second.
pub const BODY_BYTES_PER_SEC: usize = 1 << 20;

/// The bytes all request bodies being read or handled may hold at once: eight bodies at the
/// limit, and at least 256 MiB.
pub fn bodies_budget(max_bytes: usize) -> usize {
    max_bytes.saturating_mul(8).max(256 << 20)
}

#[derive(Clone)]
struct BodyLimit {
    max_bytes: usize,
    stats: Arc<AgentStats>,
    /// [`bodies_budget`], in KiB.
    budget_kib: Arc<tokio::sync::Semaphore>,
}

impl BodyLimit {
    fn too_large(&self) -> Response {
        self.stats.http_oversized_requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(max_bytes = self.max_bytes, "refused an HTTP request body over the limit");
        let error = format!("request body over {} bytes (agent.http_max_body_bytes)", self.max_bytes);
        (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({ "error": error }))).into_response()
    }

    fn too_slow(&self, received: usize, took: std::time::Duration) -> Response {
        self.stats.http_slow_requests.fetch_add(1, Ordering::Relaxed);
        let error = format!(
            "request body too slow: {received} bytes in {:.1} s (a body may take {} s plus 1 s per MiB, \
             and pause at most {} s)",
            took.as_secs_f64(),
            BODY_GRACE.as_secs(),
            switchboard_bus::http::STALL_TIMEOUT.as_secs()
        );
        (StatusCode::REQUEST_TIMEOUT, [(header::CONNECTION, "close")], Json(json!({ "error": error }))).into_response()
    }

    fn busy(&self) -> Response {
        self.stats.http_busy_requests.fetch_add(1, Ordering::Relaxed);
        let error = format!(
            "the request bodies being read hold {} MiB, the most this agent holds at once: retry shortly",
            bodies_budget(self.max_bytes) >> 20
        );
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Json(json!({ "error": error }))).into_response()
    }

    /// Take `bytes` more of the budget into `held`; false when the budget has not that much.
    fn take(&self, held: &mut Option<tokio::sync::OwnedSemaphorePermit>, bytes: usize) -> bool {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        if kib == 0 {
            return true;
        }
        match self.budget_kib.clone().try_acquire_many_owned(kib) {
            Ok(more) => {
                match held {
                    Some(h) => h.merge(more),
                    None => *held = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// `routes` with bodies of at most `max_bytes`; larger ones get `413 {"error": "..."}` and are
/// counted in `stats`.
pub fn limit_bodies(routes: Router, max_bytes: usize, stats: Arc<AgentStats>) -> Router {
    let kib = (bodies_budget(max_bytes) / 1024).min(tokio::sync::Semaphore::MAX_PERMITS);
    let budget_kib = Arc::new(tokio::sync::Semaphore::new(kib));
    routes
        .layer(middleware::from_fn_with_state(BodyLimit { max_bytes, stats, budget_kib }, read_body))
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
    // The budget is held until the request is answered: the route works on the bytes.
    let mut held = None;
    if !limit.take(&mut held, declared) {
        return limit.busy();
    }
    let (parts, body) = request.into_parts();
    // Room for what the header announces, up to 1 MiB: more grows as it arrives (a header is
    // no promise that the bytes come).
    let mut bytes = Vec::with_capacity(declared.min(1 << 20));
    let mut chunks = body.into_data_stream();
    let started = tokio::time::Instant::now();
    loop {
        // Past its pace, or silent for the stall timeout, whichever comes first.
        let paced = started + BODY_GRACE + std::time::Duration::from_secs((bytes.len() / BODY_BYTES_PER_SEC) as u64);
        let deadline = paced.min(tokio::time::Instant::now() + switchboard_bus::http::STALL_TIMEOUT);
        let chunk = match tokio::time::timeout_at(deadline, chunks.next()).await {
            Err(_) => return limit.too_slow(bytes.len(), started.elapsed()),
            Ok(None) => break,
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(e))) => {
                limit.stats.http_malformed_bodies.fetch_add(1, Ordering::Relaxed);
                let error = format!("reading the request body: {e}");
                return (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response();
            }
        };
        if chunk.len() > limit.max_bytes.saturating_sub(bytes.len()) {
            return limit.too_large();
        }
        // A body without a length (chunked), or longer than it said, takes budget as it comes.
        let past_declared = bytes.len().saturating_add(chunk.len()).saturating_sub(declared.max(bytes.len()));
        if !limit.take(&mut held, past_declared) {
            return limit.busy();
        }
        bytes.extend_from_slice(&chunk);
    }
    let answer = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    drop(held);
    answer
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
