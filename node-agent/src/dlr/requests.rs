//! The gateway's DLR requests, defined once for both ways in: the HTTP routes ([`super::http`])
//! and the gateway socket (`crate::gateway`). A request is its JSON body (docs/dlr-api.md); its
//! answer is a JSON document, or a [`DlrError`] that each transport turns into its own status.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{DlrError, DlrService, IdForm, Registration, ReportRequest};

/// A DLR request, parsed from its JSON body.
#[derive(Debug)]
pub enum Request {
    /// Register one message or a batch.
    Register(Vec<Registration>),
    /// Look a message up.
    Resolve(ResolveRequest),
    /// Hand in a DLR.
    Report(ReportRequest),
    /// Close a record this node owns.
    Close(CloseRequest),
}

/// What `resolve` asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The connector the DLR came in on.
    pub connector: String,
    /// The message id.
    pub msg_id: String,
    /// How long to wait for a registration not there yet, ms.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// This node's store only, no bus.
    #[serde(default)]
    pub local: bool,
    /// The owner's answer while it is live (not a copy).
    #[serde(default)]
    pub owner: bool,
    /// `msg_id` as the gateway registered it (`ids`), not as a DLR writes it (`report_ids`).
    #[serde(default)]
    pub registered: bool,
}

/// What `close` asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// The connector.
    pub connector: String,
    /// The message id, as registered.
    pub msg_id: String,
    /// The final status to record.
    pub status: String,
}

/// A batch of registrations (`{"records": [...]}`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterMany {
    records: Vec<Registration>,
}

/// The shape of each request's body, for error messages.
const REGISTER_SHAPE: &str = r#"{"connector", "msg_id", "destination"?, "account"?, "gateway_ref"?, "submitted_at"?, "expiry_s"?} or {"records": [...]}"#;
const RESOLVE_SHAPE: &str = r#"{"connector": string, "msg_id": string, "wait_ms"?: integer, "local"?: bool, "owner"?: bool, "registered"?: bool}"#;
const REPORT_SHAPE: &str = r#"{"connector", "msg_id", "status", "final"?, "error"?, "text"?, "wait_ms"?}"#;
const CLOSE_SHAPE: &str = r#"{"connector": string, "msg_id": string, "status": string}"#;

/// Parse a JSON body as `T`, naming the expected shape when it is not one.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], shape: &str) -> Result<T, DlrError> {
    switchboard_bus::http::json_object(body, shape).map_err(DlrError::BadRequest)
}

impl Request {
    /// A `register` body.
    pub fn register(body: &[u8]) -> Result<Self, DlrError> {
        // One shape or the other, each parsed as itself so that an error names the field (an
        // untagged enum's error names neither). `"records"` can stand in a body only as a key or
        // as a whole string value; for the latter, the single shape is tried after the batch.
        if !body.windows(9).any(|w| w == b"\"records\"") {
            return parse(body, REGISTER_SHAPE).map(|one| Self::Register(vec![one]));
        }
        match parse::<RegisterMany>(body, REGISTER_SHAPE) {
            Ok(many) => Ok(Self::Register(many.records)),
            Err(e) => parse(body, REGISTER_SHAPE).map(|one| Self::Register(vec![one])).map_err(|_| e),
        }
    }

    /// A `resolve` body.
    pub fn resolve(body: &[u8]) -> Result<Self, DlrError> {
        parse(body, RESOLVE_SHAPE).map(Self::Resolve)
    }

    /// A `report` body.
    pub fn report(body: &[u8]) -> Result<Self, DlrError> {
        parse(body, REPORT_SHAPE).map(Self::Report)
    }

    /// A `close` body.
    pub fn close(body: &[u8]) -> Result<Self, DlrError> {
        parse(body, CLOSE_SHAPE).map(Self::Close)
    }

    /// Carry the request out. Register and close write the store on a blocking thread; a
    /// resolve of a record this node holds completes without waiting (the socket answers it on
    /// the thread that read it, see `crate::gateway`).
    pub async fn run(self, service: Arc<DlrService>) -> Result<Answer, DlrError> {
        match self {
            Self::Register(regs) => {
                let s = service.clone();
                let records = tokio::task::spawn_blocking(move || s.register(&regs)).await??;
                Ok(Answer::created(&json!({ "registered": records.len(), "records": records })))
            }
            Self::Resolve(req) => {
                let form = if req.registered { IdForm::Registered } else { IdForm::Report };
                let r = if req.local {
                    service.resolve_local(&req.connector, &req.msg_id, form)?
                } else {
                    service.resolve(&req.connector, &req.msg_id, form, req.wait_ms, req.owner).await?
                };
                Ok(Answer::ok(&r))
            }
            Self::Report(req) => Ok(Answer::ok(&service.report(&req).await?)),
            Self::Close(req) => {
                let s = service.clone();
                let record =
                    tokio::task::spawn_blocking(move || s.close(&req.connector, &req.msg_id, &req.status)).await??;
                Ok(Answer::ok(&json!({ "record": record })))
            }
        }
    }
}

/// A request's answer: its JSON document, and whether it created something (HTTP 201).
#[derive(Debug)]
pub struct Answer {
    /// The JSON document, on one line.
    pub body: Vec<u8>,
    /// Whether the request created records.
    pub created: bool,
}

impl Answer {
    fn ok(value: &impl Serialize) -> Self {
        // A document of our own types (strings, numbers, maps with string keys) always encodes.
        Self { body: serde_json::to_vec(value).unwrap_or_default(), created: false }
    }

    fn created(value: &impl Serialize) -> Self {
        Self { created: true, ..Self::ok(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &str) -> String {
        match Request::register(body.as_bytes()) {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{body} parsed: {r:?}"),
        }
    }

    fn registered(body: &str) -> usize {
        match Request::register(body.as_bytes()) {
            Ok(Request::Register(records)) => records.len(),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_register_error_names_the_field_in_either_shape() {
        assert!(error(r#"{"connector": "smpp1"}"#).contains("missing field `msg_id`"));
        assert!(error(r#"{"connector": "c", "msg_id": "1", "bogus": 1}"#).contains("unknown field `bogus`"));
        assert!(
            error(r#"{"records": [{"connector": "c", "msg_id": "1", "bogus": 1}]}"#).contains("unknown field `bogus`")
        );
        assert!(error(r#"{"records": 3}"#).contains("expected a sequence"));
        assert_eq!(registered(r#"{"connector": "c", "msg_id": "1"}"#), 1);
        assert_eq!(
            registered(r#"{"records": [{"connector": "c", "msg_id": "1"}, {"connector": "c", "msg_id": "2"}]}"#),
            2
        );
        // "records" as a value, not a key, is still one registration.
        assert_eq!(registered(r#"{"connector": "c", "msg_id": "1", "account": "records"}"#), 1);
    }

    #[test]
    fn only_the_documented_object_is_a_request() {
        // serde alone reads a struct from an array of its fields.
        assert!(error(r#"["c", "1"]"#).contains("not a JSON object"));
        for parsed in [Request::resolve(br#"["c", "1"]"#), Request::report(b" [\"c\", \"1\", \"DELIVRD\"]")] {
            let Err(e) = parsed else { panic!("an array was taken as a request") };
            assert!(e.to_string().contains("not a JSON object"), "{e}");
        }
    }
}
