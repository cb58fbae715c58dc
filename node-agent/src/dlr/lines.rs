//! The DLR verbs of the gateway protocol (`crate::gateway`, docs/gateway-protocol.md): each
//! takes the JSON body of its HTTP route ([`super::requests`]) on the same line and answers
//! with the same JSON document.
//!
//! | request | answers |
//! | --- | --- |
//! | `REGISTER <json>` | `OK {"registered": n, "records": [...]}` |
//! | `RESOLVE <json>` or `RESOLVE <connector> <msg_id>` | `OK <resolution>` or `NOTFOUND <reason>` |
//! | `REPORT <json>` | `OK <resolution with outcome>` or `NOTFOUND <reason>` |
//! | `CLOSE <json>` | `OK {"record": ...}`, `NOTFOUND <reason>` or `CONFLICT <reason>` |
//!
//! A malformed request is answered `ERR <reason>` (and counted); a store or bus failure
//! `UNAVAILABLE <reason>`. A resolve of a record this node holds is answered at once; the rest
//! are answered when done, in request order.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;

use super::requests::{Answer, Request, ResolveRequest};
use super::{DlrError, DlrService, ErrorKind};
use crate::gateway::Later;

/// Answer one DLR request line: now (appended to `out`) or later.
pub fn answer(service: &Arc<DlrService>, line: &[u8], out: &mut Vec<u8>) -> Option<Later> {
    let request = match parse(line) {
        Ok(r) => r,
        Err(e) => {
            write_answer(service, Err(e), out);
            return None;
        }
    };
    let service = service.clone();
    let mut running = Box::pin(async move {
        let answer = request.run(service.clone()).await;
        let mut line = Vec::new();
        write_answer(&service, answer, &mut line);
        line
    });
    // A record held here, or a request refused, is done on the first poll.
    match (&mut running).now_or_never() {
        Some(line) => {
            out.extend_from_slice(&line);
            None
        }
        None => Some(running as std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send>>),
    }
}

/// The request on `line`: a verb, then the JSON body (or, for `RESOLVE`, a connector and an id).
fn parse(line: &[u8]) -> Result<Request, DlrError> {
    let line = line.trim_ascii_end();
    let (verb, rest) = match line.iter().position(crate::gateway::is_separator) {
        Some(i) => (&line[..i], line[i..].trim_ascii_start()),
        None => (line, &b""[..]),
    };
    if rest.is_empty() && verb == b"RESOLVE" {
        return Err(DlrError::BadRequest("expected `RESOLVE <connector> <msg_id>` or `RESOLVE <json>`".into()));
    }
    if rest.is_empty() {
        return Err(DlrError::BadRequest(format!(
            "{} needs its JSON body on the same line (docs/gateway-protocol.md)",
            String::from_utf8_lossy(verb)
        )));
    }
    match verb {
        b"REGISTER" => Request::register(rest),
        b"RESOLVE" if rest[0] != b'{' => {
            let words = std::str::from_utf8(rest).map_err(|_| DlrError::BadRequest("request is not UTF-8".into()))?;
            let mut words = crate::gateway::words(words);
            match (words.next(), words.next(), words.next()) {
                (Some(connector), Some(msg_id), None) => Ok(Request::Resolve(ResolveRequest {
                    connector: connector.to_owned(),
                    msg_id: msg_id.to_owned(),
                    wait_ms: None,
                    local: false,
                    owner: false,
                    registered: false,
                })),
                _ => Err(DlrError::BadRequest("expected `RESOLVE <connector> <msg_id>` or `RESOLVE <json>`".into())),
            }
        }
        b"RESOLVE" => Request::resolve(rest),
        b"REPORT" => Request::report(rest),
        b"CLOSE" => Request::close(rest),
        other => Err(DlrError::BadRequest(format!("not a DLR request: {:?}", String::from_utf8_lossy(other)))),
    }
}

/// Append the answer line for `answer` to `out`.
fn write_answer(service: &DlrService, answer: Result<Answer, DlrError>, out: &mut Vec<u8>) {
    let e = match answer {
        Ok(a) => {
            out.extend_from_slice(b"OK ");
            out.extend_from_slice(&a.body);
            out.push(b'\n');
            return;
        }
        Err(e) => e,
    };
    let word = match e.kind() {
        ErrorKind::BadRequest => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            "ERR"
        }
        ErrorKind::NotFound => "NOTFOUND",
        ErrorKind::Conflict => "CONFLICT",
        ErrorKind::Unavailable => "UNAVAILABLE",
    };
    // One line whatever the error says.
    let reason = e.to_string().replace(['\n', '\r'], " ");
    out.extend_from_slice(word.as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_the_http_requests() {
        assert!(
            matches!(parse(b"RESOLVE smpp1 abc\n"), Ok(Request::Resolve(r)) if r.connector == "smpp1" && r.msg_id == "abc")
        );
        assert!(
            matches!(parse(b"RESOLVE\tsmpp1 \t abc \r\n"), Ok(Request::Resolve(r)) if r.connector == "smpp1" && r.msg_id == "abc")
        );
        // Only spaces and tabs separate words: a `\r` inside a line is part of its word.
        assert!(parse(b"RESOLVE smpp1\rabc\n").is_err(), "one word, not a connector and an id");
        let json = br#"RESOLVE {"connector": "c", "msg_id": "7", "owner": true}"#;
        assert!(matches!(parse(json), Ok(Request::Resolve(r)) if r.owner && r.msg_id == "7"));
        assert!(
            matches!(parse(br#"REGISTER {"connector": "c", "msg_id": "1"}"#), Ok(Request::Register(v)) if v.len() == 1)
        );
        assert!(matches!(
            parse(br#"REPORT {"connector": "c", "msg_id": "1", "status": "DELIVRD"}"#),
            Ok(Request::Report(_))
        ));
        assert!(matches!(parse(br#"CLOSE {"connector": "c", "msg_id": "1", "status": "x"}"#), Ok(Request::Close(_))));
        for (bad, says) in [
            (&b"RESOLVE\n"[..], "expected `RESOLVE <connector> <msg_id>` or `RESOLVE <json>`"),
            (b"REPORT\n", "needs its JSON body"),
            (b"RESOLVE a b c\n", "expected `RESOLVE"),
            (b"RESOLVE a\n", "expected `RESOLVE"),
            (b"REGISTER {\"connector\": 1}\n", "expected {\"connector\""),
            (b"REPORT {\"nope\": true}\n", "expected"),
            (b"RESOLVE \xff \xfe\n", "UTF-8"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{:?}: {err}", String::from_utf8_lossy(bad));
        }
    }
}
