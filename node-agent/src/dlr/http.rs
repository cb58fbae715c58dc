//! The DLR API over HTTP/JSON, on the agent's HTTP address next to the limits API.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/dlr/register` one registration, or `{"records": [...]}` | `201 {"registered": n, "records": [...]}` |
//! | `POST /v1/dlr/resolve` `{"connector", "msg_id", "wait_ms"?, "local"?, "owner"?, "registered"?}` | `200` the record, who answered, owner or copy; `404` (`local`: this node's store only, no bus; `owner`: the owner's answer while it is live; `registered`: `msg_id` as registered, not as in the DLR) |
//! | `POST /v1/dlr/report` `{"connector", "msg_id", "status", "final"?, "error"?, "text"?, "wait_ms"?}` | `200` with `outcome` `delivered`, `duplicate` or `owner_down`; `404` |
//! | `POST /v1/dlr/close` `{"connector", "msg_id", "status"}` | `200 {"record"}`; `404`; `409` if another node owns it |
//! | `GET /v1/dlr/inbox?after=N&max=M&wait_ms=W` | `200 {"reports": [{"seq", "record", "report"}]}` (long poll) |
//! | `POST /v1/dlr/inbox/ack` `{"upto": N}` | `200 {"removed": n}` |
//! | `GET /v1/dlr` | counters and store size |
//!
//! Errors are `{"error": "..."}`: `400` for malformed requests (counted), `503` when the store
//! or the bus fails (a full disk, say). docs/dlr-api.md has examples.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::requests::{parse, Request};
use super::{DlrError, DlrService, ErrorKind};

/// Most reports one inbox request returns.
const MAX_INBOX: usize = 10_000;

/// The `/v1/dlr/...` routes over `service`.
pub fn router(service: Arc<DlrService>) -> Router {
    Router::new()
        .route("/v1/dlr/register", post(register))
        .route("/v1/dlr/resolve", post(resolve))
        .route("/v1/dlr/report", post(report))
        .route("/v1/dlr/close", post(close))
        .route("/v1/dlr/inbox", get(inbox))
        .route("/v1/dlr/inbox/ack", post(ack))
        .route("/v1/dlr", get(show))
        .with_state(service)
}

/// The DLR routes of a node whose `[dlr]` is off: a 404 that says so (not an empty one).
pub fn off_router() -> Router {
    crate::off::router(&["/v1/dlr"], "DLRs are off on this node ([dlr] enabled = false)")
}

fn error(service: &DlrService, e: DlrError) -> Response {
    let status = match e.kind() {
        ErrorKind::BadRequest => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

/// Answer one request of [`Request`]'s kinds.
async fn run(s: Arc<DlrService>, req: Result<Request, DlrError>) -> Response {
    let req = match req {
        Ok(r) => r,
        Err(e) => return error(&s, e),
    };
    match req.run(s.clone()).await {
        Ok(a) => {
            let status = if a.created { StatusCode::CREATED } else { StatusCode::OK };
            (status, [(axum::http::header::CONTENT_TYPE, "application/json")], a.body).into_response()
        }
        Err(e) => error(&s, e),
    }
}

async fn register(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    run(s, Request::register(&body)).await
}

async fn resolve(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    run(s, Request::resolve(&body)).await
}

async fn report(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    run(s, Request::report(&body)).await
}

async fn close(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    run(s, Request::close(&body)).await
}

async fn inbox(State(s): State<Arc<DlrService>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let num = |name: &str, default: u64| -> Result<u64, DlrError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                DlrError::BadRequest(if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{name} = {v} is past the largest value, {}", u64::MAX)
                } else {
                    format!("{name} must be a non-negative integer")
                })
            })
        })
    };
    // A misspelt parameter (`wait=5000`) would otherwise ask without waiting, unseen.
    if let Some(unknown) = q.keys().find(|k| !["after", "max", "wait_ms"].contains(&k.as_str())) {
        return error(
            &s,
            DlrError::BadRequest(format!("unknown parameter {unknown:?}: the inbox takes after, max and wait_ms")),
        );
    }
    let max = q.get("max").map_or(Ok(1000), |v| inbox_max(v));
    let (after, max, wait) = match (num("after", 0), max, num("wait_ms", 0)) {
        (Ok(a), Ok(m), Ok(w)) => (a, m, w.min(60_000)),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return error(&s, e),
    };
    match s.inbox(after, max, Duration::from_millis(wait)).await {
        Ok(entries) => {
            let reports: Vec<_> = entries
                .into_iter()
                .map(|(seq, e)| json!({ "seq": seq, "record": e.record, "report": e.report }))
                .collect();
            Json(json!({ "reports": reports })).into_response()
        }
        Err(e) => error(&s, e),
    }
}

/// The inbox's `max`: any integer, however long, moved to the nearer of 1 and [`MAX_INBOX`].
fn inbox_max(v: &str) -> Result<usize, DlrError> {
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DlrError::BadRequest("max must be an integer".into()));
    }
    if v.starts_with('-') {
        return Ok(1);
    }
    // Too many digits for a u64 is past the bound all the same.
    Ok(digits.parse::<u64>().map_or(MAX_INBOX, |m| usize::try_from(m).unwrap_or(MAX_INBOX).clamp(1, MAX_INBOX)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    upto: u64,
}

async fn ack(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    let req = match parse::<AckRequest>(&body, r#"{"upto": integer}"#) {
        Ok(r) => r,
        Err(e) => return error(&s, e),
    };
    match s.ack(req.upto) {
        Ok(n) => Json(json!({ "removed": n })).into_response(),
        Err(e) => error(&s, e),
    }
}

async fn show(State(s): State<Arc<DlrService>>) -> Response {
    let size = s.store().size();
    let counters: serde_json::Map<String, serde_json::Value> =
        s.stats.counters().into_iter().map(|(name, _, v)| (name.to_owned(), json!(v))).collect();
    Json(json!({
        "node": s.node(),
        "live_nodes": s.live_nodes(),
        "settling": s.settling(),
        "restoring": s.restoring(),
        "records": s.records_held(),
        "inbox": size.inbox,
        "disk_bytes": size.disk_bytes,
        "replica_queue": s.replica_queue().0,
        "counters": counters,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_max_is_moved_to_the_nearer_bound() {
        for (v, want) in [("5", 5), ("0", 1), ("-5", 1), ("-", 0), ("99999", MAX_INBOX), ("1", 1)] {
            match inbox_max(v) {
                Ok(m) => assert_eq!(m, want, "{v}"),
                Err(_) => assert_eq!(want, 0, "{v} refused"),
            }
        }
        assert_eq!(inbox_max(&"9".repeat(60)).ok(), Some(MAX_INBOX));
        assert_eq!(inbox_max(&format!("-{}", "9".repeat(60))).ok(), Some(1));
        for bad in ["", "x", "1.5", "+3", "1e3", " 4"] {
            assert!(inbox_max(bad).is_err(), "{bad:?}");
        }
    }
}
