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

use super::{DlrError, DlrService, IdForm, Registration, ReportRequest};

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

fn error(service: &DlrService, e: DlrError) -> Response {
    let status = match &e {
        DlrError::BadRequest(_) => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
        DlrError::NotFound { .. } => StatusCode::NOT_FOUND,
        DlrError::NotOwner(..) => StatusCode::CONFLICT,
        DlrError::Store(_)
        | DlrError::Bus(_)
        | DlrError::Refused { .. }
        | DlrError::Replica(_)
        | DlrError::Encode(_)
        | DlrError::Task(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], shape: &str) -> Result<T, DlrError> {
    serde_json::from_slice(body).map_err(|e| DlrError::BadRequest(format!("expected {shape}: {e}")))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RegisterBody {
    Many { records: Vec<Registration> },
    One(Registration),
}

async fn register(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    let shape = r#"{"connector", "msg_id", "destination"?, "account"?, "gateway_ref"?, "submitted_at"?, "expiry_s"?} or {"records": [...]}"#;
    let regs = match parse::<RegisterBody>(&body, shape) {
        Ok(RegisterBody::Many { records }) => records,
        Ok(RegisterBody::One(r)) => vec![r],
        Err(e) => return error(&s, e),
    };
    let service = s.clone();
    match tokio::task::spawn_blocking(move || service.register(&regs)).await {
        Ok(Ok(records)) => {
            (StatusCode::CREATED, Json(json!({ "registered": records.len(), "records": records }))).into_response()
        }
        Ok(Err(e)) => error(&s, e),
        Err(e) => error(&s, DlrError::Task(e)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    connector: String,
    msg_id: String,
    #[serde(default)]
    wait_ms: Option<u64>,
    #[serde(default)]
    local: bool,
    #[serde(default)]
    owner: bool,
    /// `msg_id` as the gateway registered it (`ids`), not as a DLR writes it (`report_ids`).
    #[serde(default)]
    registered: bool,
}

async fn resolve(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    let req = match parse::<ResolveRequest>(
        &body,
        r#"{"connector": string, "msg_id": string, "wait_ms"?: integer, "local"?: bool, "owner"?: bool, "registered"?: bool}"#,
    ) {
        Ok(r) => r,
        Err(e) => return error(&s, e),
    };
    let form = if req.registered { IdForm::Registered } else { IdForm::Report };
    let answer = if req.local {
        s.resolve_local(&req.connector, &req.msg_id, form)
    } else {
        s.resolve(&req.connector, &req.msg_id, form, req.wait_ms, req.owner).await
    };
    match answer {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(&s, e),
    }
}

async fn report(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    let shape = r#"{"connector", "msg_id", "status", "final"?, "error"?, "text"?, "wait_ms"?}"#;
    let req = match parse::<ReportRequest>(&body, shape) {
        Ok(r) => r,
        Err(e) => return error(&s, e),
    };
    match s.report(&req).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(&s, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseRequest {
    connector: String,
    msg_id: String,
    status: String,
}

async fn close(State(s): State<Arc<DlrService>>, body: Bytes) -> Response {
    let req = match parse::<CloseRequest>(&body, r#"{"connector": string, "msg_id": string, "status": string}"#) {
        Ok(r) => r,
        Err(e) => return error(&s, e),
    };
    let service = s.clone();
    match tokio::task::spawn_blocking(move || service.close(&req.connector, &req.msg_id, &req.status)).await {
        Ok(Ok(record)) => Json(json!({ "record": record })).into_response(),
        Ok(Err(e)) => error(&s, e),
        Err(e) => error(&s, DlrError::Task(e)),
    }
}

async fn inbox(State(s): State<Arc<DlrService>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let num = |name: &str, default: u64| -> Result<u64, DlrError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| DlrError::BadRequest(format!("{name} must be a non-negative integer")))
        })
    };
    let (after, max, wait) = match (num("after", 0), num("max", 1000), num("wait_ms", 0)) {
        (Ok(a), Ok(m), Ok(w)) => (a, (m as usize).clamp(1, MAX_INBOX), w.min(60_000)),
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
        "records": size.records,
        "inbox": size.inbox,
        "disk_bytes": size.disk_bytes,
        "replica_queue": s.replica_queue().0,
        "counters": counters,
    }))
    .into_response()
}
