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

#[test]
fn a_python_client_looks_up_and_reports_dlrs_by_the_documented_keys() {
    let c = Cluster::new();
    let dlr = "[dlr]\n[[dlr.connector]]\nname = \"hexdec\"\nids = \"hex\"\nreport_ids = \"decimal\"\n";
    let a = c.start_limits_agent("a", &[], "", dlr);
    let _b = c.start_limits_agent("b", &[a.endpoint()], "", dlr);
    assert!(common::wait_until(std::time::Duration::from_secs(15), || c
        .http_get("b", "/v1/dlr")
        .1
        .contains("\"live_nodes\":[\"a\",\"b\"]")));
    let post =
        |body: serde_json::Value| common::limits::http_post(c.http_port("a"), "/v1/dlr/register", &body.to_string()).0;
    assert_eq!(post(serde_json::json!({"connector": "hexdec", "msg_id": "00FF", "gateway_ref": "r-255"})), 201);
    assert_eq!(post(serde_json::json!({"connector": "plain", "msg_id": "a/b 1", "gateway_ref": "r-text"})), 201);
    let prefix = format!("sb/{}", c.cluster);
    let py = |args: &[&str]| {
        let mut all = vec![script(), "dlr".into(), a.endpoint(), prefix.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        let out = Command::new("python3").args(&all).output().unwrap();
        assert!(out.status.success(), "python dlr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // The DLR's decimal 255 is the registered hex 00FF; the reply comes from the owner and the copy.
    let v = py(&["hexdec", "decimal", "255"]);
    assert_eq!(
        (v["owner"]["node"].as_str(), v["owner"]["record"]["gateway_ref"].as_str()),
        (Some("a"), Some("r-255")),
        "{v}"
    );
    assert_eq!(v["replies"], 2, "owner and replica answer: {v}");
    // Python picks the node that must hold the record by the documented weights; that node
    // alone answers on its own key, and it is the node the agents pick.
    let first = &v["first"];
    assert_eq!(first["live"], serde_json::json!(["a", "b"]), "{v}");
    assert_eq!(first["reply"]["node"], first["node"], "{v}");
    assert_eq!(first["reply"]["record"]["gateway_ref"], "r-255", "{v}");
    let key = switchboard_bus::dlr::record::store_key("hexdec", "255");
    assert_eq!(first["node"].as_str(), switchboard_bus::dlr::rendezvous::first_holder(&key, ["a", "b"]), "{v}");
    // The same node answers the ask stream: every ask with a usable reply_to gets an answer,
    // `null` for an id it does not hold; the two malformed asks are counted and dropped.
    let asked = &first["asked"];
    assert_eq!(asked["7"]["reply"]["record"]["gateway_ref"], "r-255", "{v}");
    assert_eq!(asked["7"]["reply"]["node"], first["node"], "{v}");
    assert_eq!(
        (&asked["7"]["from"], &asked["8"]["from"]),
        (&first["node"], &first["node"]),
        "answers on the key of their node: {v}"
    );
    assert!(asked["8"].get("reply").is_some_and(serde_json::Value::is_null), "{v}");
    assert!(asked.get("6").is_none(), "{v}");
    let holder = first["node"].as_str().unwrap_or_default();
    let (_, status) = c.http_get(holder, "/v1/dlr");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["counters"]["bad_requests"], 2, "{status}");
    let v = py(&["plain", "text", "a/b 1"]);
    assert_eq!(v["key"], format!("{prefix}/dlr/at/*/plain/a%2Fb%201"));
    assert_eq!(v["owner"]["record"]["gateway_ref"], "r-text");
    // Each node replies on the key of its own name; on `dlr/id`, on the query's key.
    assert_eq!(v["owner"]["on_key_of"], v["owner"]["node"], "{v}");
    assert_eq!(v["by_id"]["record"]["gateway_ref"], "r-text", "{v}");
    // A report from Python: the owner takes it once, then it is a duplicate.
    let v = py(&["hexdec", "decimal", "255", "DELIVRD"]);
    assert_eq!(
        (v["owner"]["outcome"].as_str(), v["owner"]["record"]["state"].as_str()),
        (Some("delivered"), Some("closed")),
        "{v}"
    );
    let v = py(&["hexdec", "decimal", "255", "DELIVRD"]);
    assert_eq!(v["owner"]["outcome"], "duplicate");
    let (_, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0");
    assert_eq!(inbox.matches("\"reported_by\":\"python\"").count(), 1, "{inbox}");
    drop(a);
}
