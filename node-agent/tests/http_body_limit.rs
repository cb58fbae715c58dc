//! The body limit of the agent's HTTP APIs, against a running agent: the largest DLR register
//! batch the API documents (10,000 records) is taken; a body over the limit, declared or
//! streamed, gets `413` with a JSON error and moves the counter in `/metrics`; a body that cannot
//! be read gets a counted `400`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use switchboard_agent::config::AgentConfig;
use switchboard_agent::{body_limit, Agent};
use tokio_util::sync::CancellationToken;

/// Send one request (headers, then `body` as given) and read the answer: status and body.
fn request(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let message = [format!("{head}Host: agent\r\nConnection: close\r\n\r\n").as_bytes(), body].concat();
    // Written from a thread of its own: the agent may answer before it has read everything.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&message);
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // An agent that refused a body closes without reading the rest; the reset that
            // follows its answer ends the read.
            Err(_) if !answer.is_empty() => break,
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let _ = sender.join();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

fn post(port: u16, path: &str, body: &[u8]) -> (u16, String) {
    request(port, &format!("POST {path} HTTP/1.1\r\nContent-Length: {}\r\n", body.len()), body)
}

fn counter(port: u16, name: &str) -> u64 {
    let (status, text) = request(port, "GET /metrics HTTP/1.1\r\n", b"");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn oversized_counter(port: u16) -> u64 {
    counter(port, "switchboard_agent_http_oversized_requests_total")
}

#[test]
fn documented_batches_are_taken_and_larger_bodies_get_a_counted_json_413() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config: AgentConfig = toml::from_str(&format!(
        r#"
        [bus]
        cluster = "body-limit-{pid}"
        node = "gw1"
        [agent]
        data_dir = {dir:?}
        http_listen = "127.0.0.1:{port}"
        [metrics]
        statsd_listen = ""
        "#,
        pid = std::process::id(),
        dir = dir.path().display().to_string(),
    ))
    .unwrap();
    let limit = config.agent.http_max_body_bytes;
    assert_eq!(limit, body_limit::DEFAULT_MAX_BODY_BYTES);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cancel = CancellationToken::new();
    let agent = runtime.block_on(Agent::start(config, cancel.clone())).unwrap();
    // A failed assertion stops the agent too (its tailer threads would keep the runtime alive).
    let _stop_on_panic = cancel.clone().drop_guard();

    // 10,000 records (the most one request may register), every field at its longest.
    let records: Vec<serde_json::Value> = (0..10_000)
        .map(|i| {
            json!({
                "connector": "c".repeat(64),
                "msg_id": format!("{i:08}{}", "\"".repeat(120)),
                "destination": "\"".repeat(128),
                "account": "\"".repeat(128),
                "gateway_ref": "\"".repeat(256),
                "submitted_at": 1_790_000_000_000u64,
            })
        })
        .collect();
    let batch = serde_json::to_vec(&json!({ "records": records })).unwrap();
    assert!(batch.len() > 13 << 20, "{} bytes: far over the 2 MiB that axum takes by default", batch.len());
    let (status, body) = post(port, "/v1/dlr/register", &batch);
    assert_eq!(status, 201, "{}", &body[..body.len().min(500)]);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["registered"], 10_000);
    assert_eq!(oversized_counter(port), 0);

    // Declared over the limit: refused before the body is sent (the client waits for
    // `100 Continue`, which never comes).
    let head = format!("POST /v1/dlr/register HTTP/1.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\n", limit + 1);
    let (status, body) = request(port, &head, b"");
    assert_eq!(status, 413, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error, json!({ "error": format!("request body over {limit} bytes (agent.http_max_body_bytes)") }));
    assert_eq!(oversized_counter(port), 1);

    // Streamed without a length: refused once it passes the limit, on any route.
    let mut chunked = Vec::with_capacity(limit + (1 << 20));
    let mib = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent <= limit {
        let part = &mib[..(limit + 1 - sent).min(mib.len())];
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
        sent += part.len();
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = request(port, "POST /v1/metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", &chunked);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("agent.http_max_body_bytes"), "{body}");
    assert_eq!(oversized_counter(port), 2);
    assert_eq!(agent.stats().http_oversized_requests.load(std::sync::atomic::Ordering::Relaxed), 2);

    // A chunked body whose chunk size is not a number: a counted 400, on every route.
    for path in ["/v1/limits/acquire", "/v1/dlr/register", "/v1/metrics"] {
        let head = format!("POST {path} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n");
        let (status, body) = request(port, &head, b"zz\r\nabc\r\n0\r\n\r\n");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("reading the request body"), "{path}: {body}");
    }
    assert_eq!(counter(port, "switchboard_agent_http_malformed_bodies_total"), 3);

    // Bodies within the limit still reach their route.
    let (status, body) = post(port, "/v1/limits/acquire", br#"{"key": "operator:x"}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"allowed":true,"limited":false}"#));

    cancel.cancel();
    runtime.block_on(agent.wait());
}
