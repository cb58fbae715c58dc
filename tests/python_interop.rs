//! Independent clients: the Python zenoh binding and pyarrow speak the protocol from
//! docs/protocol.md alone (subscribing to an agent's batches, publishing as a node of their own),
//! and pyarrow and DuckDB read the dataset as it is. Needs `python3` with `eclipse-zenoh`,
//! `pyarrow` and `duckdb` (installed by .ci/run).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn script() -> String {
    format!("{}/tests/py/interop.py", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn python_clients_subscribe_publish_and_read() {
    let c = Cluster::new();
    let prefix = format!("sb/{}", c.cluster);
    let collector = c.start_collector();
    let py_listen = format!("tcp/127.0.0.1:{}", free_port());

    // A Python subscriber, listening so that the agent connects to it directly.
    let mut sub = Command::new("python3")
        .args([&script(), "subscribe", &c.endpoint, &py_listen, &prefix, "500", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready");

    let agent = c.start_agent_connecting("gw", "plain", std::slice::from_ref(&py_listen));
    append(&c.logs_dir("gw").join("a.log"), (0..500).map(|i| format!("2026-11-22 10:00:00 INFO: line {i}")));
    let mut summary = String::new();
    out.read_line(&mut summary).unwrap();
    assert!(sub.wait().unwrap().success(), "python subscriber failed: {summary}");
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(v["rows"], 500, "{summary}");
    assert_eq!(v["max_seq"], 499);
    assert_eq!(v["keys"][0], format!("{prefix}/stream/gw/log/app"));

    // A Python publisher as node `py-node`: its records land in the dataset like an agent's.
    let status = Command::new("python3")
        .args([&script(), "publish", &c.endpoint, &prefix, "py-node", "app", "100"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_until(Duration::from_secs(30), || count_logs(&c.dataset()) >= 600),
        "dataset holds {}\n{}",
        count_logs(&c.dataset()),
        collector.log_text()
    );
    // A Python client sets the cluster's limits through the documented keys; the agent applies
    // them and decides by them.
    let out = Command::new("python3").args([&script(), "limits", &c.endpoint, &prefix, "7"]).output().unwrap();
    assert!(out.status.success(), "python limits: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"], serde_json::json!(["gw"]), "{v}");
    let (_, body) = c.http_get("gw", "/v1/limits/history");
    assert!(body.contains("\"author\":\"python\"") && body.contains("\"rate\":7"), "{body}");
    let decisions = (0..20)
        .map(|_| common::limits::http_post(c.http_port("gw"), "/v1/limits/acquire", r#"{"key":"operator:x"}"#).0)
        .filter(|code| *code == 200)
        .count();
    assert_eq!(decisions, 1, "7 per minute alone on one node admits its burst of 1 at once");
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_eq!(rows.len(), 600);
    assert_exactly_once(&rows);
    let py: Vec<_> = rows.iter().filter(|r| r.node == "py-node").collect();
    assert_eq!(py.len(), 100);
    assert!(py.iter().any(|r| r.message == "python record 42" && r.offset == 420));

    // pyarrow and DuckDB read the files as they are, with the same counts.
    let out = Command::new("python3").args([&script(), "read", c.dataset().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for reader in ["pyarrow", "duckdb", "distinct"] {
        assert_eq!(v[reader]["gw"], 500, "{reader}: {v}");
        assert_eq!(v[reader]["py-node"], 100, "{reader}: {v}");
    }
    assert_eq!(v["point"], 1, "point lookup by the promoted msg_id column");
}
