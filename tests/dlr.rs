//! The DLR index with real agent processes on loopback: gateways register on one node, DLRs
//! arrive at others, owners die and come back; every answer is checked, and every event is
//! counted in the collector's `dlr` table.

mod common;

use std::time::{Duration, Instant};

use common::limits::{http_post, http_post_within, LimitsNode, SocketClient};
use common::{free_port, metric, signal, wait_until, Cluster, Proc};
use serde_json::{json, Value};

/// `[dlr]` settings of the test agents: one connector with hex ids in `submit_sm_resp` and
/// decimal ids in DLRs, one with decimal ids, one case-insensitive.
const DLR: &str = r#"
[dlr]
copies = 1
closed_retention_s = 600
[[dlr.connector]]
name = "hexdec"
ids = "hex"
report_ids = "decimal"
[[dlr.connector]]
name = "dec"
ids = "decimal"
[[dlr.connector]]
name = "nocase"
ids = "nocase"
"#;

fn start(c: &Cluster, node: &str, connect: &[String]) -> LimitsNode {
    c.start_limits_agent(node, connect, "", DLR)
}

fn restart(c: &Cluster, node: &LimitsNode, connect: &[String]) -> LimitsNode {
    c.restart_limits_agent(&node.name, node.port, connect, "", DLR)
}

fn post(c: &Cluster, node: &str, path: &str, body: Value) -> (u16, Value) {
    let (code, _, text) = http_post(c.http_port(node), path, &body.to_string());
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn dlr_counter(c: &Cluster, node: &str, name: &str) -> u64 {
    let (_, body) = c.http_get(node, "/v1/dlr");
    serde_json::from_str::<Value>(&body).ok().and_then(|v| v["counters"][name].as_u64()).unwrap_or(0)
}

fn live_nodes(c: &Cluster, node: &str) -> Vec<String> {
    let (_, body) = c.http_get(node, "/v1/dlr");
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| {
            v["live_nodes"].as_array().map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect())
        })
        .unwrap_or_default()
}

/// Wait until every node sees exactly `nodes` live.
fn wait_mesh(c: &Cluster, nodes: &[&str]) {
    for n in nodes {
        let ok = wait_until(Duration::from_secs(20), || live_nodes(c, n) == nodes);
        assert!(ok, "{n} never saw {nodes:?}: {:?}", live_nodes(c, n));
    }
}

fn register(c: &Cluster, node: &str, connector: &str, ids: impl IntoIterator<Item = String>) -> usize {
    let records: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({"connector": connector, "msg_id": id, "destination": "+4915100000", "account": "acme", "gateway_ref": format!("ref-{id}")}))
        .collect();
    let n = records.len();
    let (code, body) = post(c, node, "/v1/dlr/register", json!({ "records": records }));
    assert_eq!((code, body["registered"].as_u64()), (201, Some(n as u64)), "{body}");
    n
}

fn table_counts(c: &Cluster) -> Option<String> {
    c.query_csv("SELECT event, count(*) AS n FROM dlr GROUP BY event ORDER BY event")
}

#[test]
fn a_dlr_at_another_node_reaches_the_owner_in_one_round_trip_and_repeats_are_recognized() {
    let c = Cluster::new();
    let _collector = c.start_collector();
    let a = start(&c, "a", std::slice::from_ref(&c.endpoint));
    let b = start(&c, "b", &[c.endpoint.clone(), a.endpoint()]);
    let c3 = start(&c, "c", &[c.endpoint.clone(), a.endpoint(), b.endpoint()]);
    wait_mesh(&c, &["a", "b", "c"]);

    // The gateway on a registers the id from submit_sm_resp in hex; the DLR carries it in decimal.
    let (code, body) = post(
        &c,
        "a",
        "/v1/dlr/register",
        json!({"connector": "hexdec", "msg_id": "00001A", "destination": "+4915112345678", "account": "acme", "gateway_ref": "gw-msg-1", "submitted_at": 1_790_000_000_000u64}),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["records"][0]["id"], "26");
    let n = register(&c, "a", "dec", (0..200).map(|i| format!("{:06}", 1000 + i)));

    let (code, res) =
        post(&c, "b", "/v1/dlr/report", json!({"connector": "hexdec", "msg_id": "26", "status": "DELIVRD"}));
    assert_eq!(code, 200, "{res}");
    assert_eq!(
        (res["outcome"].as_str(), res["answered_by"].as_str(), res["role"].as_str()),
        (Some("delivered"), Some("a"), Some("owner"))
    );
    assert_eq!((res["record"]["state"].as_str(), res["record"]["status"].as_str()), (Some("closed"), Some("DELIVRD")));
    assert_eq!(res["record"]["gateway_ref"], "gw-msg-1");
    // The same DLR again, at a third node: a duplicate, not handed on.
    let (code, res) =
        post(&c, "c", "/v1/dlr/report", json!({"connector": "hexdec", "msg_id": "026", "status": "DELIVRD"}));
    assert_eq!((code, res["outcome"].as_str()), (200, Some("duplicate")), "{res}");

    // The owner's gateway gets exactly one report, through its inbox.
    let (code, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&wait_ms=1000");
    let inbox: Value = serde_json::from_str(&inbox).unwrap();
    assert_eq!(code, 200);
    let reports = inbox["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{inbox}");
    assert_eq!(reports[0]["record"]["gateway_ref"], "gw-msg-1");
    assert_eq!(
        (reports[0]["report"]["status"].as_str(), reports[0]["report"]["reported_by"].as_str()),
        (Some("DELIVRD"), Some("b"))
    );
    let seq = reports[0]["seq"].as_u64().unwrap();
    assert_eq!(post(&c, "a", "/v1/dlr/inbox/ack", json!({ "upto": seq })).1["removed"], 1);
    assert_eq!(c.http_get("b", "/v1/dlr/inbox?after=0").1, r#"{"reports":[]}"#, "b owns nothing");

    // Every registered id resolves from every node, with leading zeros or without. With the
    // copies in place, the one node that must hold each record (owner or copy) answers alone.
    let copies = || dlr_counter(&c, "b", "replica_ops_received") + dlr_counter(&c, "c", "replica_ops_received");
    assert!(wait_until(Duration::from_secs(10), || copies() > n as u64), "copies: {}", copies());
    let t = Instant::now();
    let mut roles = std::collections::BTreeMap::new();
    for (i, node) in (0..n).zip(["a", "b", "c"].iter().cycle()) {
        let id = (1000 + i).to_string();
        let (code, res) = post(&c, node, "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id}));
        assert_eq!((code, res["record"]["owner"].as_str()), (200, Some("a")), "{id} on {node}: {res}");
        assert_eq!(res["record"]["gateway_ref"], format!("ref-{:06}", 1000 + i));
        *roles.entry(res["role"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
    }
    eprintln!("{n} lookups over HTTP in {:?}, answered by {roles:?}", t.elapsed());
    let hits: u64 = ["a", "b", "c"].iter().map(|node| dlr_counter(&c, node, "first_holder_hits")).sum();
    assert_eq!(hits, n as u64, "every resolve answered by the first holder alone");
    assert!(roles.get("owner").is_some_and(|&k| k > 30) && roles.get("replica").is_some_and(|&k| k > 80), "{roles:?}");
    // Asked for the owner's answer, every node waits for the owner.
    let (_, res) = post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "1000", "owner": true}));
    assert_eq!((res["role"].as_str(), res["answered_by"].as_str()), (Some("owner"), Some("a")), "{res}");
    let (code, res) = post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "999999"}));
    assert_eq!(code, 404, "{res}");

    // The dlr table has each event once.
    let want = format!("delivered,1\nduplicate,1\nnot_found,1\nregistered,{}\nresolved,{}", n + 1, n + 3);
    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), || {
        last = table_counts(&c);
        last.as_deref().is_some_and(|t| t.lines().skip(1).collect::<Vec<_>>().join("\n") == want)
    });
    assert!(ok, "dlr table: want\n{want}\ngot {last:?}");
    let latency = c.query_csv("SELECT connector, latency_ms, at_node FROM dlr WHERE event = 'delivered'").unwrap();
    let row: Vec<&str> = latency.lines().nth(1).unwrap().split(',').collect();
    assert_eq!((row[0], row[2]), ("hexdec", "a"));
    assert!(
        row[1].parse::<u64>().unwrap() > 1_000_000,
        "submit-to-DLR latency from the registered submit time: {latency}"
    );
    // The everyday report gives the same latency as its percentiles.
    let out = std::process::Command::new(common::BIN)
        .args(["report", "dlr-latency", "--data", c.dataset().to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let cols: Vec<&str> = report.lines().nth(1).unwrap_or_default().split(',').collect();
    assert_eq!((cols[0], cols[1]), ("hexdec", "1"), "{report}");
    let p50: f64 = cols[2].parse().unwrap();
    let exact: f64 = row[1].parse().unwrap();
    assert!((p50 - exact).abs() <= exact * 0.001, "p50 {p50} within 0.1% of {exact}: {report}");
    // pyarrow and DuckDB read every table's files with the numbers query gives.
    common::assert_independent_readers_agree(&c);
    // Nodes that asked others over the ask stream stop without an error in their logs.
    for mut node in [b, c3] {
        let log = node.proc.take().unwrap().stop_and_read_log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "{} stopped with an error:\n{}\n---\n{log}", node.name, errors.join("\n"));
    }
}

#[test]
fn records_resolve_from_the_replica_after_kill_9_of_the_owner_and_survive_its_restart() {
    let c = Cluster::new();
    let mut a = start(&c, "a", &[]);
    let b = start(&c, "b", &[a.endpoint()]);
    let _c3 = start(&c, "c", &[a.endpoint(), b.endpoint()]);
    wait_mesh(&c, &["a", "b", "c"]);
    let n = register(&c, "a", "dec", (0..300).map(|i| i.to_string()));
    let ok = wait_until(Duration::from_secs(10), || {
        dlr_counter(&c, "b", "replica_ops_received") + dlr_counter(&c, "c", "replica_ops_received") >= n as u64
    });
    assert!(
        ok,
        "copies: b {} c {}",
        dlr_counter(&c, "b", "replica_ops_received"),
        dlr_counter(&c, "c", "replica_ops_received")
    );
    let (b_copies, c_copies) =
        (dlr_counter(&c, "b", "replica_ops_received"), dlr_counter(&c, "c", "replica_ops_received"));
    assert!(b_copies > 90 && c_copies > 90, "rendezvous spreads copies: b {b_copies}, c {c_copies}");

    a.proc.take().unwrap().kill();
    for n in ["b", "c"] {
        assert!(wait_until(Duration::from_secs(5), || live_nodes(&c, n) == ["b", "c"]), "{n} still sees a");
    }
    for i in 0..n {
        let node = if i % 2 == 0 { "b" } else { "c" };
        let (code, res) = post(&c, node, "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": format!("000{i}")}));
        assert_eq!(code, 200, "{i} on {node} with the owner dead: {res}");
        assert_eq!((res["role"].as_str(), res["owner_alive"].as_bool()), (Some("replica"), Some(false)), "{res}");
        assert_eq!(res["record"]["gateway_ref"], format!("ref-{i}"));
    }
    // A DLR for a dead owner's message: the reporting gateway gets the record, the copy is
    // closed, and a repeat elsewhere is a duplicate.
    let (code, res) = post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "7", "status": "UNDELIV"}));
    assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "{res}");
    assert_eq!(res["record"]["gateway_ref"], "ref-7");
    let (_, res) = post(&c, "c", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "7", "status": "UNDELIV"}));
    assert_eq!(res["outcome"], "duplicate", "{res}");

    // The owner comes back with every record, and learns that 7 was closed while it was away.
    // A repeat of that DLR handed to it at once is never taken as new (another gateway has it).
    a = restart(&c, &a, &[b.endpoint()]);
    assert!(wait_until(Duration::from_secs(20), || c.http_get("a", "/v1/dlr").0 == 200), "a did not start again");
    let (code, res) = post(&c, "a", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "7", "status": "UNDELIV"}));
    assert!(code == 503 || res["outcome"] == "duplicate", "a repeat at the restarted owner: {code} {res}");
    wait_mesh(&c, &["a", "b", "c"]);
    let (_, dlr) = c.http_get("a", "/v1/dlr");
    let records = serde_json::from_str::<Value>(&dlr).unwrap()["records"].as_u64().unwrap();
    assert!(records >= n as u64, "a holds {records} records after a restart, registered {n}");
    let ok = wait_until(Duration::from_secs(10), || {
        let (_, res) = post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "7", "owner": true}));
        res["role"] == "owner" && res["record"]["state"] == "closed" && res["record"]["status"] == "UNDELIV"
    });
    assert!(ok, "{:?}", post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "7", "owner": true})));
    // Settled (5 s after its start at least, and its copies checked), it takes its DLRs again.
    let settled = || serde_json::from_str::<Value>(&c.http_get("a", "/v1/dlr").1).is_ok_and(|v| v["settling"] == false);
    assert!(wait_until(Duration::from_secs(20), settled), "{}", c.http_get("a", "/v1/dlr").1);
    let (code, res) = post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "8", "status": "DELIVRD"}));
    assert_eq!((code, res["outcome"].as_str(), res["role"].as_str()), (200, Some("delivered"), Some("owner")), "{res}");
    drop(a);
}

/// A hand-off (`owner_down`) whose reporter died may never have reached its gateway (killed
/// between closing the copies and answering): a repeat is handed off again, at a copy's node
/// (`owner_down`) and at the owner back with the copies' close (`delivered`), never a
/// `duplicate` that no gateway handles; a repeat while the reporter runs stays a `duplicate`.
#[test]
fn a_dlr_handed_off_by_a_reporter_that_died_is_handed_off_again_not_dropped() {
    // Two copies: every record on b and c, so one outlives the reporter.
    let dlr = DLR.replace("copies = 1", "copies = 2");
    let c = Cluster::new();
    let mut a = c.start_limits_agent("a", &[], "", &dlr);
    let mut b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    let c3 = c.start_limits_agent("c", &[a.endpoint(), b.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b", "c"]);
    let n = register(&c, "a", "dec", ["21".to_owned(), "22".to_owned()]);
    let copied = || {
        dlr_counter(&c, "b", "replica_ops_received") >= n as u64
            && dlr_counter(&c, "c", "replica_ops_received") >= n as u64
    };
    assert!(wait_until(Duration::from_secs(10), copied), "the copies did not arrive");
    a.proc.take().unwrap().kill();
    for node in ["b", "c"] {
        assert!(wait_until(Duration::from_secs(5), || live_nodes(&c, node) == ["b", "c"]), "{node} still sees a");
    }
    let report = |node: &str, id: &str| {
        post(&c, node, "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}))
    };
    for id in ["21", "22"] {
        let (code, res) = report("b", id);
        assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "{id} at b: {res}");
    }
    // b runs: whatever its gateway did with its answer, a repeat elsewhere goes nowhere.
    let (_, res) = report("c", "21");
    assert_eq!(res["outcome"], "duplicate", "{res}");

    // The gateway fails over at once, before c may have seen b go.
    b.proc.take().unwrap().kill();
    let (code, res) = report("c", "21");
    assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "a repeat after b died: {res}");
    assert_eq!((res["record"]["state"].as_str(), res["record"]["closed_by"].as_str()), (Some("closed"), Some("c")));
    assert_eq!(dlr_counter(&c, "c", "handed_again"), 1);
    // Handed again to c's gateway, by a process that runs: the next repeat is a duplicate.
    let (_, res) = report("c", "21");
    assert_eq!(res["outcome"], "duplicate", "{res}");

    // The owner back, b still gone: it takes the copies' close of 22 (by b's hand-off), and a
    // repeat is taken into its own inbox once it has settled.
    a = c.restart_limits_agent("a", a.port, &[c3.endpoint()], "", &dlr);
    let settled = || serde_json::from_str::<Value>(&c.http_get("a", "/v1/dlr").1).is_ok_and(|v| v["settling"] == false);
    assert!(wait_until(Duration::from_secs(30), settled), "{}", c.http_get("a", "/v1/dlr").1);
    let (code, res) = report("a", "22");
    assert_eq!(
        (code, res["outcome"].as_str(), res["role"].as_str()),
        (200, Some("delivered"), Some("owner")),
        "a repeat at the owner of a DLR b handed off before it died: {res}"
    );
    assert_eq!(dlr_counter(&c, "a", "handed_again"), 1);
    let (_, res) = report("c", "22");
    assert_eq!(res["outcome"], "duplicate", "{res}");
    drop(a);
}

#[test]
fn with_two_copies_every_node_answers_from_its_store_and_records_outlive_two_nodes_down() {
    let c = Cluster::new();
    let dlr = DLR.replace("copies = 1\n", "copies = 2\n");
    let a = c.start_limits_agent("a", &[], "", &dlr);
    let mut b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    let _c3 = c.start_limits_agent("c", &[a.endpoint(), b.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b", "c"]);
    let n = register(&c, "a", "dec", (0..200).map(|i| i.to_string()));
    for node in ["b", "c"] {
        let ok = wait_until(Duration::from_secs(10), || dlr_counter(&c, node, "replica_ops_received") >= n as u64);
        assert!(ok, "{node} holds {} copies of {n}", dlr_counter(&c, node, "replica_ops_received"));
    }
    // Each of the other two holds every record: answered from its own store, without the bus.
    for node in ["b", "c"] {
        for i in 0..n {
            let req = json!({"connector": "dec", "msg_id": i.to_string()});
            let (code, res) = post(&c, node, "/v1/dlr/resolve", req);
            assert_eq!((code, res["answered_by"].as_str()), (200, Some(node)), "{i} on {node}: {res}");
        }
        assert_eq!(dlr_counter(&c, node, "answered_here"), n as u64, "{node}");
    }

    // The owner dies: a DLR at b closes both copies, so c knows it as a duplicate.
    let mut a = a;
    a.proc.take().unwrap().kill();
    wait_mesh(&c, &["b", "c"]);
    let (code, res) = post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "7", "status": "UNDELIV"}));
    assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "{res}");
    let (_, res) = post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "7", "local": true}));
    assert_eq!((res["record"]["state"].as_str(), res["record"]["status"].as_str()), (Some("closed"), Some("UNDELIV")));
    let (code, _) = post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "999999", "local": true}));
    assert_eq!(code, 404);
    // Local resolves are counted as the others are: one answered here, one not found.
    assert_eq!((dlr_counter(&c, "c", "answered_here"), dlr_counter(&c, "c", "not_found")), (n as u64 + 1, 1));
    let (_, res) = post(&c, "c", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "7", "status": "UNDELIV"}));
    assert_eq!(res["outcome"], "duplicate", "{res}");
    // The repeat is counted and written to the dlr table's events, as on a live owner.
    assert_eq!(dlr_counter(&c, "c", "duplicates"), 1);
    let events = std::fs::read_to_string(c.agent_state("c").join("dlr/events.log")).unwrap();
    let repeats: Vec<&str> = events.lines().filter(|l| l.contains(r#""event":"duplicate""#)).collect();
    assert_eq!(repeats.len(), 1, "{events}");
    assert!(repeats[0].contains(r#""id":"7""#) && repeats[0].contains(r#""status":"UNDELIV""#), "{}", repeats[0]);

    // A second node dies: the last one still answers every record, and knows 7 was closed.
    b.proc.take().unwrap().kill();
    wait_mesh(&c, &["c"]);
    for i in 0..n {
        let (code, res) = post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": i.to_string()}));
        assert_eq!((code, res["role"].as_str()), (200, Some("replica")), "{i} with a and b down: {res}");
        assert_eq!(res["record"]["gateway_ref"], format!("ref-{i}"));
    }
    // b handed 7 to its gateway and is gone since: whether that answer reached its gateway
    // cannot be known here, so a repeat is handed off again (once: then c, which runs, holds it).
    for outcome in ["owner_down", "duplicate"] {
        let req = json!({"connector": "dec", "msg_id": "7", "status": "UNDELIV"});
        let (_, res) = post(&c, "c", "/v1/dlr/report", req);
        assert_eq!(res["outcome"], outcome, "{res}");
    }
    let (_, res) = post(&c, "c", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "8", "status": "DELIVRD"}));
    assert_eq!(res["outcome"], "owner_down", "{res}");
}

#[test]
fn ids_are_normalized_races_wait_records_expire_and_bad_requests_are_refused() {
    let c = Cluster::new();
    let a = start(&c, "a", &[]);
    let _b = start(&c, "b", &[a.endpoint()]);
    wait_mesh(&c, &["a", "b"]);

    // Normalization per connector.
    register(&c, "a", "dec", ["000024".to_string()]);
    register(&c, "a", "nocase", ["AbCd-9".to_string()]);
    register(&c, "a", "plain", ["AbCd-9".to_string()]);
    for (connector, id, found) in [
        ("dec", "24", true),
        ("dec", "0024", true),
        ("dec", "25", false),
        ("nocase", "abcd-9", true),
        ("nocase", "ABCD-9", true),
        ("plain", "AbCd-9", true),
        ("plain", "abcd-9", false),
    ] {
        let (code, res) = post(&c, "b", "/v1/dlr/resolve", json!({"connector": connector, "msg_id": id}));
        assert_eq!(code == 200, found, "{connector}/{id}: {res}");
    }
    // A gateway resolves with the id it registered: hex 00001A is decimal 26 in the DLRs.
    register(&c, "a", "hexdec", ["00001A".to_string()]);
    let registered = json!({"connector": "hexdec", "msg_id": "00001A", "registered": true});
    let (code, res) = post(&c, "b", "/v1/dlr/resolve", registered);
    assert_eq!(code, 200, "{res}");
    assert_eq!(res["record"]["msg_id"], "00001A", "{res}");
    let local = json!({"connector": "hexdec", "msg_id": "1a", "registered": true, "local": true});
    assert_eq!(post(&c, "a", "/v1/dlr/resolve", local).0, 200);
    assert_eq!(post(&c, "b", "/v1/dlr/resolve", json!({"connector": "hexdec", "msg_id": "26"})).0, 200);
    assert_eq!(post(&c, "b", "/v1/dlr/resolve", json!({"connector": "hexdec", "msg_id": "00001A"})).0, 400);

    // A DLR that overtakes its registration waits for it (bounded), then is delivered.
    let port = c.http_port("b");
    let t = Instant::now();
    let pending = std::thread::spawn(move || {
        let body = json!({"connector": "dec", "msg_id": "77", "status": "DELIVRD", "wait_ms": 5000}).to_string();
        http_post(port, "/v1/dlr/report", &body)
    });
    std::thread::sleep(Duration::from_millis(400));
    register(&c, "a", "dec", ["77".to_string()]);
    let (code, _, text) = pending.join().unwrap();
    let took = t.elapsed();
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("\"outcome\":\"delivered\""), "{text}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "answered {took:?} after the report");
    // Without a wait, an unknown id is not found at once.
    let t = Instant::now();
    assert_eq!(post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "78"})).0, 404);
    assert!(t.elapsed() < Duration::from_secs(3));
    let t = Instant::now();
    assert_eq!(post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "78", "wait_ms": 300})).0, 404);
    assert!(t.elapsed() >= Duration::from_millis(300), "waited the bounded time");

    // Expiry: gone everywhere, owner and copy.
    let (code, body) = post(&c, "a", "/v1/dlr/register", json!({"connector": "dec", "msg_id": "500", "expiry_s": 1}));
    assert_eq!(code, 201, "{body}");
    assert_eq!(post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "500"})).0, 200);
    let gone = wait_until(Duration::from_secs(5), || {
        post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "500"})).0 == 404
    });
    assert!(gone, "an expired record still resolves");
    assert_eq!(dlr_counter(&c, "a", "expired"), 1);

    // Malformed requests: 400 with a reason, counted.
    let bad = [
        ("/v1/dlr/register", "not json".to_string(), "expected"),
        ("/v1/dlr/register", json!({"connector": "dec"}).to_string(), "expected"),
        ("/v1/dlr/register", json!({"connector": "dec", "msg_id": "12x"}).to_string(), "not a decimal number"),
        ("/v1/dlr/register", json!({"connector": "a/b", "msg_id": "1"}).to_string(), "connector must be"),
        ("/v1/dlr/register", json!({"connector": "dec", "msg_id": ""}).to_string(), "message id must be"),
        ("/v1/dlr/register", json!({"connector": "dec", "msg_id": "1", "expiry_s": 0}).to_string(), "expiry_s"),
        ("/v1/dlr/register", json!({"records": []}).to_string(), "1 to 10000"),
        (
            "/v1/dlr/register",
            json!({"connector": "dec", "msg_id": "1", "submitted_at": u64::MAX}).to_string(),
            "more than a day after",
        ),
        ("/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "1", "wait_ms": 999_999}).to_string(), "wait_ms"),
        ("/v1/dlr/report", json!({"connector": "dec", "msg_id": "1", "status": ""}).to_string(), "status"),
        ("/v1/dlr/report", json!({"connector": "dec", "msg_id": "1", "status": "  "}).to_string(), "status"),
        ("/v1/dlr/close", json!({"connector": "dec", "msg_id": "1", "status": ""}).to_string(), "status"),
        ("/v1/dlr/close", json!({"connector": "dec", "msg_id": "1", "status": " "}).to_string(), "status"),
        ("/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "1", "extra": 1}).to_string(), "unknown field"),
    ];
    for (path, body, reason) in &bad {
        let (code, _, text) = http_post(c.http_port("a"), path, body);
        assert_eq!(code, 400, "{path} {body}: {text}");
        assert!(text.contains(reason), "{path} {body}: {text}");
    }
    let (code, _, text) = http_post(
        c.http_port("b"),
        "/v1/dlr/close",
        &json!({"connector": "dec", "msg_id": "24", "status": "X"}).to_string(),
    );
    assert_eq!(code, 409, "closing another node's record: {text}");
    let (code, _, _) = http_post(
        c.http_port("a"),
        "/v1/dlr/close",
        &json!({"connector": "dec", "msg_id": "4242", "status": "X"}).to_string(),
    );
    assert_eq!(code, 404);
    assert_eq!(c.http_get("a", "/v1/dlr/inbox?after=x").0, 400);
    // A sequence number past any there can be is refused as that, not as "not an integer".
    let (code, body) = c.http_get("a", "/v1/dlr/inbox?after=99999999999999999999999");
    assert!(code == 400 && body.contains("past the largest value"), "{code} {body}");
    let (code, body) = c.http_get("a", "/v1/dlr/inbox?after=0&wait=5000");
    let error = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(String::from));
    assert!(code == 400 && error.is_some_and(|e| e.contains("unknown parameter \"wait\"")), "{code} {body}");
    // `max` outside 1..=10,000 is moved to the nearer bound, not refused.
    for max in ["-5", "0", "99999999999999999999999"] {
        let (code, body) = c.http_get("a", &format!("/v1/dlr/inbox?after=0&max={max}"));
        assert_eq!(code, 200, "max={max}: {body}");
    }
    let (_, metrics) = c.http_get("a", "/metrics");
    assert_eq!(metric(&metrics, "switchboard_agent_dlr_bad_requests_total"), Some((bad.len() + 3) as f64), "{metrics}");
    assert!(c.http_get("a", "/health").0 == 200, "still healthy after bad input");
}

/// A `dec` id whose first holder among the live `nodes` is `holder` (the first of 0..1000).
fn first_held_by(nodes: &[&str], holder: &str) -> String {
    (0..1000)
        .map(|i| i.to_string())
        .find(|id| {
            let key = switchboard_bus::dlr::record::store_key("dec", id);
            switchboard_bus::dlr::rendezvous::first_holder(&key, nodes.iter().copied()) == Some(holder)
        })
        .unwrap_or_else(|| panic!("no id in a thousand weighs most on {holder}"))
}

/// Agents a, b and c (one copy per record, asks timing out after 1 s), and an id registered
/// at a whose first holder, and so its one copy, is c.
fn a_record_of_a_held_by_c(c: &Cluster) -> ([LimitsNode; 3], String) {
    let dlr = DLR.replace("[dlr]\n", "[dlr]\ntimeout_ms = 1000\n");
    let a = c.start_limits_agent("a", &[], "", &dlr);
    let b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    let holder = c.start_limits_agent("c", &[a.endpoint(), b.endpoint()], "", &dlr);
    wait_mesh(c, &["a", "b", "c"]);
    let id = first_held_by(&["a", "b", "c"], "c");
    register(c, "a", "dec", [id.clone()]);
    assert!(wait_until(Duration::from_secs(10), || dlr_counter(c, "c", "replica_ops_received") >= 1));
    ([a, b, holder], id)
}

#[test]
fn a_hung_first_holder_costs_one_ask_timeout_then_every_node_answers() {
    let c = Cluster::new();
    let ([_a, _b, hung], id) = a_record_of_a_held_by_c(&c);

    let pid = hung.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    signal(pid, "-STOP");
    let t = Instant::now();
    let (code, res) = post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id}));
    let took = t.elapsed();
    signal(pid, "-CONT");
    assert_eq!((code, res["answered_by"].as_str()), (200, Some("a")), "{res}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(dlr_counter(&c, "b", "ask_timeouts"), 1);
    assert_eq!(dlr_counter(&c, "b", "first_holder_misses"), 1);
    // Awake again, c answers on the stream, and its late answer to the first ask changed nothing.
    let (code, res) = post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id}));
    assert_eq!((code, res["answered_by"].as_str(), res["role"].as_str()), (200, Some("c"), Some("replica")), "{res}");
    assert_eq!(dlr_counter(&c, "b", "first_holder_hits"), 1);
    assert_eq!(dlr_counter(&c, "b", "bad_requests"), 0);
}

/// An agent restarted without DLRs leaves the DLR service but not the cluster: the node left
/// alone serving DLRs calls a miss a miss. (It answered 503, "no other node is reachable (gone:
/// b)", as if b had gone away with records only it held.)
#[test]
fn a_node_that_stops_serving_dlrs_is_not_taken_for_one_that_went_away() {
    let c = Cluster::new();
    let a = c.start_limits_agent("a", &[], "", DLR);
    let b = c.start_limits_agent("b", &[a.endpoint()], "", DLR);
    wait_mesh(&c, &["a", "b"]);
    let port = b.port;
    drop(b);
    let _b = c.restart_limits_agent("b", port, &[a.endpoint()], "", "\n[dlr]\nenabled = false\n");
    assert!(wait_until(Duration::from_secs(20), || c.http_get("b", "/health").0 == 200), "b did not come back");
    assert!(wait_until(Duration::from_secs(10), || live_nodes(&c, "a") == ["a"]), "{:?}", live_nodes(&c, "a"));
    let resolve = || post(&c, "a", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "9090"}));
    assert!(wait_until(Duration::from_secs(10), || resolve().0 == 404), "{:?}", resolve());
    drop(a);
}

/// Agents a and b (asks timing out after `timeout_ms`), and an id no node registered whose first
/// holder is b itself: b asks no single node, only every node at once. Then a is stopped
/// (SIGSTOP), `during` runs, and a goes on: the cluster, its agents, the id and what `during`
/// gave.
fn while_a_is_hung<T>(
    timeout_ms: u64,
    during: impl FnOnce(&Cluster, &str) -> T,
) -> (Cluster, [LimitsNode; 2], String, T) {
    let c = Cluster::new();
    let dlr = DLR.replace("[dlr]\n", &format!("[dlr]\ntimeout_ms = {timeout_ms}\n"));
    let a = c.start_limits_agent("a", &[], "", &dlr);
    let b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b"]);
    let id = first_held_by(&["a", "b"], "b");
    let pid = a.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    signal(pid, "-STOP");
    let seen = during(&c, &id);
    signal(pid, "-CONT");
    (c, [a, b], id, seen)
}

/// Once a answers again, the id is missing, known now.
fn missing_once_a_answers(c: &Cluster, id: &str) {
    let resolve = || post(c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id})).0;
    assert!(wait_until(Duration::from_secs(20), || resolve() == 404));
}

#[test]
fn a_node_whose_lease_runs_out_during_a_lookup_makes_the_miss_unknown_not_missing() {
    // Asks wait longer than the lease (3 s): the lookup of every node is still open when a's
    // lease runs out, and zenoh ends a's part of it then without a word, as if a held nothing.
    let (c, _agents, id, ((code, res), took)) = while_a_is_hung(10_000, |c, id| {
        let t = Instant::now();
        (post(c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id})), t.elapsed())
    });
    assert_eq!(code, 503, "{res}");
    assert!(res["error"].as_str().is_some_and(|e| e.contains("node a left while the lookup ran")), "{res}");
    // It ended at the lease, not at the ask's timeout.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(dlr_counter(&c, "b", "not_found"), 0);
    missing_once_a_answers(&c, &id);
}

#[test]
fn a_hung_node_that_may_hold_the_record_makes_a_miss_unknown_not_missing() {
    // a, hung within its lease, could hold the id (registered just before it hung, its copy not
    // yet sent).
    let (c, _agents, id, answers) = while_a_is_hung(300, |c, id| {
        let resolved = post(c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id}));
        let report = json!({"connector": "dec", "msg_id": id, "status": "DELIVRD", "wait_ms": 0});
        [("resolve", resolved), ("report", post(c, "b", "/v1/dlr/report", report))]
    });
    for (what, (code, res)) in answers {
        assert_eq!(code, 503, "{what}: {res}");
        assert!(res["error"].as_str().is_some_and(|e| e.contains("did not answer within 300 ms")), "{what}: {res}");
    }
    assert_eq!(dlr_counter(&c, "b", "ask_timeouts"), 2);
    assert_eq!(dlr_counter(&c, "b", "not_found"), 0);
    missing_once_a_answers(&c, &id);
}

/// A link reset between two live agents (both still linked to a collector): while the other
/// may hold a record, a miss is unknown (503), not missing (404), from the moment it left this
/// node's view until the mesh check has dialed the link again; then misses are 404 again.
#[test]
fn a_miss_while_the_link_to_a_live_node_is_cut_is_unknown_not_missing() {
    let c = Cluster::new();
    let _collector = c.start_collector();
    let a = start(&c, "a", std::slice::from_ref(&c.endpoint));
    let b = start(&c, "b", std::slice::from_ref(&c.endpoint));
    // b still reaches another agent: it is not alone, so only a's being cut off makes a miss
    // unknown.
    let _d = start(&c, "d", std::slice::from_ref(&c.endpoint));
    wait_mesh(&c, &["a", "b", "d"]);
    let pid = |n: &LimitsNode| n.proc.as_ref().map_or(0, |p| p.pid());
    let resolve = || post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "424242"}));
    assert_eq!(resolve().0, 404, "before the cut");
    assert!(common::cut_links(pid(&a), pid(&b)) >= 1, "no connection between a and b to reset");
    let cut = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(5), || live_nodes(&c, "b") == ["b", "d"]), "b still sees a");
    // How often b has seen a join the DLR service: once more when the link is back, however
    // briefly (a link that comes up and drops again gives a true 404 while it is up).
    let joins_of_a = || {
        let log = b.proc.as_ref().map(Proc::log_text).unwrap_or_default();
        log.lines()
            .filter(|l| {
                l.contains("agents serving DLRs changed") && l.contains(r#"Joined(Member { role: Agent, name: "a" })"#)
            })
            .count()
    };
    let joined_before = joins_of_a();
    let mut codes = Vec::new();
    let healed = wait_until(Duration::from_secs(20), || {
        if live_nodes(&c, "b") == ["a", "b", "d"] {
            return true;
        }
        let (code, body) = resolve();
        codes.push((cut.elapsed().as_millis(), code, body["error"].as_str().unwrap_or_default().to_owned()));
        code == 404 && joins_of_a() > joined_before
    });
    let logs = || [&a, &b].map(|n| n.proc.as_ref().map(Proc::log_text).unwrap_or_default()).join("\n---\n");
    assert!(healed, "the link never came back: {codes:?}\n{}", logs());
    // An answer after a came back may be a true 404 already: only those before count.
    codes.pop();
    let unknown = codes.iter().filter(|(_, code, _)| *code == 503).count();
    assert!(codes.iter().all(|(_, code, _)| *code == 503), "a miss while a may hold the record: {codes:?}");
    assert!(codes.iter().any(|(_, _, e)| e.contains("node a is alive (seen by")), "{codes:?}");
    eprintln!("{unknown} misses answered 503 over {} ms until the link came back", cut.elapsed().as_millis());
    assert!(wait_until(Duration::from_secs(10), || resolve().0 == 404), "misses are 404 again: {:?}", resolve());
}

#[test]
fn a_report_whose_holders_are_hung_is_told_to_try_again_not_that_the_record_is_missing() {
    let c = Cluster::new();
    // b holds nothing of the record: its one copy is on c.
    let ([a, _b, holder], id) = a_record_of_a_held_by_c(&c);

    // The owner and its copy hung, still within their lease: nobody answers b.
    let pids: Vec<u32> = [&a, &holder].iter().map(|n| n.proc.as_ref().map(|p| p.pid()).unwrap_or_default()).collect();
    for pid in &pids {
        signal(*pid, "-STOP");
    }
    let report = json!({"connector": "dec", "msg_id": id, "status": "DELIVRD", "wait_ms": 0});
    let (code, res) = post(&c, "b", "/v1/dlr/report", report.clone());
    for pid in &pids {
        signal(*pid, "-CONT");
    }
    assert_eq!(code, 503, "{res}");
    assert!(res["error"].as_str().is_some_and(|e| e.contains("no other node holds message")), "{res}");
    assert_eq!((dlr_counter(&c, "b", "unanswered"), dlr_counter(&c, "b", "not_found")), (1, 0));
    // Awake again, the owner reads the first report past its deadline. b handled nothing, so the
    // owner wins the copy holder and takes it: its gateway's inbox has the DLR, once, and the
    // gateway's retry at b is a duplicate.
    let inbox = || {
        let (_, body) = c.http_get("a", "/v1/dlr/inbox?after=0&max=100");
        let reports = serde_json::from_str::<Value>(&body).unwrap_or_default()["reports"].clone();
        reports.as_array().map_or(0, |r| r.iter().filter(|e| e["record"]["id"] == id.as_str()).count())
    };
    // (On a loaded host the copy holder, just woken too, may not answer the owner in time: the
    // owner then leaves the late report, and the gateway's retry, told 503, hands it in.)
    let taken = wait_until(Duration::from_secs(10), || inbox() == 1);
    let (code, res) = post(&c, "b", "/v1/dlr/report", report);
    let expected = if taken { "duplicate" } else { "delivered" };
    eprintln!("the owner took the late report: {taken}; the retry at b: {res}");
    assert_eq!((code, res["outcome"].as_str()), (200, Some(expected)), "{res}");
    assert!(wait_until(Duration::from_secs(10), || inbox() == 1), "the DLR is not in a's inbox once");
    assert_eq!(inbox(), 1);
    // An id that nobody registered is still missing: 404 once the holder says so.
    let (code, _) = post(
        &c,
        "b",
        "/v1/dlr/report",
        json!({"connector": "dec", "msg_id": "999999", "status": "DELIVRD", "wait_ms": 0}),
    );
    assert_eq!(code, 404);
}

#[test]
fn the_replication_queue_stays_bounded_without_a_replica_and_every_copy_arrives_after() {
    let c = Cluster::new();
    let dlr = DLR.replace("[dlr]\n", "[dlr]\nreplica_queue = 1000\n");
    let a = c.start_limits_agent("a", &[], "", &dlr);
    wait_mesh(&c, &["a"]);
    let records = |node: &str| {
        let (_, body) = c.http_get(node, "/v1/dlr");
        serde_json::from_str::<Value>(&body).map_or(0, |v| v["records"].as_u64().unwrap_or(0))
    };
    let queued = |node: &str| {
        let (_, body) = c.http_get(node, "/v1/dlr");
        serde_json::from_str::<Value>(&body).map_or(0, |v| v["replica_queue"].as_u64().unwrap_or(0))
    };
    // Alone: nothing to send, so nothing is held.
    for part in 0..5 {
        register(&c, "a", "dec", (part * 1000..(part + 1) * 1000).map(|i| i.to_string()));
        assert!(queued("a") <= 1000, "a holds {} changes alone", queued("a"));
    }
    // The first peer gets every record from one pass over the store.
    let b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b"]);
    assert!(wait_until(Duration::from_secs(30), || records("b") >= 5000), "b holds {} copies", records("b"));

    // A replica that hangs: the queue fills, forgets, and one pass makes it good afterwards.
    let pid = b.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    common::signal(pid, "-STOP");
    for part in 5..10 {
        register(&c, "a", "dec", (part * 1000..(part + 1) * 1000).map(|i| i.to_string()));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, text) = c.http_get("a", "/metrics");
    let overflows = metric(&text, "switchboard_agent_dlr_replica_queue_overflows_total").unwrap_or(0.0);
    assert!(queued("a") <= 1000, "a holds {} changes for a hung replica", queued("a"));
    common::signal(pid, "-CONT");
    assert!(overflows >= 1.0, "the queue never overflowed: {overflows}");
    assert!(wait_until(Duration::from_secs(60), || records("b") >= 10_000), "b holds {} copies of 10000", records("b"));
    assert_eq!(records("b"), 10_000, "one copy of each record");
    assert_eq!(dlr_counter(&c, "b", "bad_requests"), 0);
}

/// A copy holder that hangs holds back no other's copies: each replica has a lane of its own,
/// so the changes behind a batch the hung one does not acknowledge (it waits out its timeout,
/// 5 s) reach the live one at once.
#[test]
fn a_hung_copy_holder_does_not_hold_back_the_copies_of_the_others() {
    let c = Cluster::new();
    // Every record on both other nodes.
    let dlr = DLR.replace("copies = 1", "copies = 2");
    let a = c.start_limits_agent("a", &[], "", &dlr);
    let b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    let hung = c.start_limits_agent("c", &[a.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b", "c"]);
    let held_at_b = |id: &str| holds(&c, "b", id);
    register(&c, "a", "dec", ["1".to_owned()]);
    assert!(wait_until(Duration::from_secs(10), || held_at_b("1")), "b never got its first copy");
    let pid = hung.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    signal(pid, "-STOP");
    // A batch to c goes out and waits; the registrations after it must still reach b at once.
    register(&c, "a", "dec", (100..120).map(|i| i.to_string()));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    register(&c, "a", "dec", (200..220).map(|i| i.to_string()));
    let arrived = wait_until(Duration::from_secs(3), || held_at_b("219") && held_at_b("200"));
    let took = t.elapsed();
    signal(pid, "-CONT");
    assert!(arrived, "b did not get the later copies within 3 s while c hung");
    assert!(took < Duration::from_secs(2), "b got the later copies {took:?} after they were registered");
    // Once c runs again it gets every copy.
    let held_at_c = |id: &str| holds(&c, "c", id);
    assert!(wait_until(Duration::from_secs(20), || held_at_c("119") && held_at_c("219")), "c never caught up");
    drop(b);
}

/// Whether `node` holds the record of connector `dec` and id `id` (its own, or its copy).
fn holds(c: &Cluster, node: &str, id: &str) -> bool {
    post(c, node, "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id, "local": true})).0 == 200
}

/// The JSON document of an `OK <json>` answer of the gateway socket.
fn ok_json(answer: &str) -> Value {
    let json = answer.strip_prefix("OK ").unwrap_or_else(|| panic!("expected OK <json>, got {answer:?}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn the_gateway_socket_registers_resolves_and_reports_pipelined_in_order_on_unix_and_tcp() {
    let c = Cluster::new();
    let tcp = free_port();
    let a = c.start_limits_agent("a", &[], "", &format!("{DLR}\n[gateway]\ntcp_listen = \"127.0.0.1:{tcp}\"\n"));
    let _b = start(&c, "b", &[a.endpoint()]);
    wait_mesh(&c, &["a", "b"]);
    let mut sa = SocketClient::connect(&c.socket("a"));
    let reg = ok_json(&sa.request(
        r#"REGISTER {"records": [{"connector": "dec", "msg_id": "500", "gateway_ref": "r500"}, {"connector": "dec", "msg_id": "501"}]}"#,
    ));
    assert_eq!(reg["registered"], 2, "{reg}");
    // Its own record: answered by a from its store.
    let res = ok_json(&sa.request("RESOLVE dec 500"));
    assert_eq!((res["answered_by"].as_str(), res["role"].as_str()), (Some("a"), Some("owner")), "{res}");
    assert_eq!(res["record"]["gateway_ref"], "r500");
    // b holds the copies (the only other node): it answers from them, without the bus.
    let copies = wait_until(Duration::from_secs(10), || dlr_counter(&c, "b", "replica_ops_received") >= 2);
    assert!(copies, "b never got the copies");
    let mut sb = SocketClient::connect(&c.socket("b"));
    let res = ok_json(&sb.request("RESOLVE dec 0501"));
    assert_eq!((res["answered_by"].as_str(), res["role"].as_str()), (Some("b"), Some("replica")), "{res}");
    assert_eq!(dlr_counter(&c, "b", "answered_here"), 1);
    // Asked for the owner's answer, b asks the bus.
    let res = ok_json(&sb.request(r#"RESOLVE {"connector": "dec", "msg_id": "501", "owner": true}"#));
    assert_eq!((res["answered_by"].as_str(), res["role"].as_str()), (Some("a"), Some("owner")), "{res}");
    // Misses and bad requests have their words; the connection stays usable.
    assert!(sb.request("RESOLVE dec 999").starts_with("NOTFOUND "));
    let bad = sb.request(r#"REGISTER {"connector": 5}"#);
    assert!(bad.starts_with("ERR expected {"), "{bad}");
    assert!(sb.request("FROB x").starts_with("ERR unknown request \"FROB\""));
    assert_eq!(sb.request("PING"), "PONG");

    // Pipelined: a resolve that waits for its registration holds the answers behind it, not the
    // requests; two waits that never end run together (about 1.5 s, not 3 s).
    let t = Instant::now();
    sb.send(&[
        r#"RESOLVE {"connector": "dec", "msg_id": "900", "wait_ms": 5000}"#,
        "PING",
        "RESOLVE dec 500",
        r#"RESOLVE {"connector": "dec", "msg_id": "901", "wait_ms": 1500}"#,
        r#"RESOLVE {"connector": "dec", "msg_id": "902", "wait_ms": 1500}"#,
        "ACQUIRE k",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(post(&c, "a", "/v1/dlr/register", json!({"connector": "dec", "msg_id": "900"})).0, 201);
    let first = ok_json(&sb.answer().unwrap());
    let registered_after = t.elapsed();
    assert_eq!(first["record"]["msg_id"], "900", "{first}");
    assert!(registered_after >= Duration::from_millis(300), "{registered_after:?}");
    assert_eq!(sb.answer().as_deref(), Some("PONG"));
    assert_eq!(ok_json(&sb.answer().unwrap())["record"]["msg_id"], "500");
    assert!(sb.answer().unwrap().starts_with("NOTFOUND "));
    assert!(sb.answer().unwrap().starts_with("NOTFOUND "));
    assert_eq!(sb.answer().as_deref(), Some("UNLIMITED"));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(2900), "took {took:?}");

    // A report handed in at b reaches a's inbox.
    let rep = ok_json(&sb.request(r#"REPORT {"connector": "dec", "msg_id": "500", "status": "DELIVRD"}"#));
    assert_eq!(rep["outcome"], "delivered", "{rep}");
    let (code, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&wait_ms=1000");
    assert!(code == 200 && inbox.contains("DELIVRD"), "{code} {inbox}");
    let closed = ok_json(&sa.request(r#"CLOSE {"connector": "dec", "msg_id": "501", "status": "EXPIRED"}"#));
    assert_eq!(closed["record"]["status"], "EXPIRED", "{closed}");
    let conflict = sb.request(r#"CLOSE {"connector": "dec", "msg_id": "900", "status": "x"}"#);
    assert!(conflict.starts_with("CONFLICT "), "{conflict}");

    // A close pipelined behind a report of its message closes what the report left: the DLR is
    // delivered (not taken for a repeat) and reaches the inbox, every time.
    let ids: Vec<String> = (520..540).map(|i| i.to_string()).collect();
    assert_eq!(register(&c, "a", "dec", ids.clone()), ids.len());
    for id in &ids {
        sa.send(&[
            &format!(r#"REPORT {{"connector": "dec", "msg_id": "{id}", "status": "DELIVRD"}}"#),
            &format!(r#"CLOSE {{"connector": "dec", "msg_id": "{id}", "status": "UNDELIV"}}"#),
        ]);
    }
    for id in &ids {
        let rep = ok_json(&sa.answer().unwrap());
        assert_eq!(
            (rep["outcome"].as_str(), rep["record"]["status"].as_str()),
            (Some("delivered"), Some("DELIVRD")),
            "{id}: {rep}"
        );
        let closed = ok_json(&sa.answer().unwrap());
        assert_eq!(closed["record"]["status"], "DELIVRD", "{id}: the close found the report's close: {closed}");
    }
    let (code, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&wait_ms=1000&max=1000");
    assert_eq!(code, 200);
    for id in &ids {
        assert!(inbox.contains(&format!("\"msg_id\":\"{id}\"")), "{id} is not in the inbox: {inbox}");
    }

    // The same protocol on TCP (loopback).
    let s = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    use std::io::{BufRead as _, Write as _};
    w.write_all(b"RESOLVE dec 900\nPING\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(ok_json(line.trim_end())["record"]["owner"], "a", "{line}");
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\n");

    // An over-long line is refused and its connection closed; counted in /metrics.
    let mut long = "RESOLVE ".to_owned();
    long.push_str(&"x".repeat(70 * 1024));
    sa.send(&[&long]);
    assert_eq!(sa.answer().as_deref(), Some("ERR line too long"));
    assert_eq!(sa.answer(), None, "the connection is closed");
    let (_, text) = c.http_get("a", "/metrics");
    assert_eq!(metric(&text, "switchboard_agent_gateway_lines_too_long_total"), Some(1.0), "{text}");
    // REGISTER, RESOLVE and CLOSE on the socket, 20 REPORTs and CLOSEs behind them, RESOLVE and
    // PING on TCP.
    assert_eq!(metric(&text, "switchboard_agent_gateway_requests_total"), Some(45.0));
    assert_eq!(metric(&text, "switchboard_agent_gateway_connections_total"), Some(2.0));
}

#[test]
fn a_dlr_is_handled_by_one_gateway_when_its_owner_hangs_or_one_write_repeats_it() {
    let c = Cluster::new();
    // A report with `wait_ms` 0 tells the owner to take it within 800 ms, and waits 1.6 s (a hung
    // node's links stay up for its lease, 3 s, of which its last keep-alive may have used 0.75).
    let dlr = DLR.replace("[dlr]\n", "[dlr]\ntimeout_ms = 1600\n");
    let a = c.start_limits_agent("a", &[], "", &dlr);
    let b = c.start_limits_agent("b", &[a.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b"]);

    // A request pipelined behind a registration sees the record it made.
    let mut sa = SocketClient::connect(&c.socket("a"));
    sa.send(&[
        r#"REGISTER {"records": [{"connector": "dec", "msg_id": "700"}, {"connector": "dec", "msg_id": "701"}]}"#,
        r#"RESOLVE {"connector": "dec", "msg_id": "700", "local": true}"#,
        r#"CLOSE {"connector": "dec", "msg_id": "701", "status": "EXPIRED"}"#,
        r#"RESOLVE {"connector": "dec", "msg_id": "701", "local": true}"#,
    ]);
    assert_eq!(ok_json(&sa.answer().unwrap())["registered"], 2);
    assert_eq!(ok_json(&sa.answer().unwrap())["record"]["state"], "open");
    assert_eq!(ok_json(&sa.answer().unwrap())["record"]["state"], "closed");
    assert_eq!(ok_json(&sa.answer().unwrap())["record"]["state"], "closed", "a resolve behind a close sees it");
    register(&c, "a", "dec", ["702".to_owned(), "703".to_owned()]);
    let copied = |id: &str| holds(&c, "b", id);
    assert!(wait_until(Duration::from_secs(10), || copied("700") && copied("702")), "b never got the copies");

    // a hangs: b's report waits out its timeout, b's gateway handles the DLR (owner_down), and
    // a, once awake, does not queue the report it reads late.
    let pid = a.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    signal(pid, "-STOP");
    let (code, res) = post(
        &c,
        "b",
        "/v1/dlr/report",
        json!({"connector": "dec", "msg_id": "700", "status": "DELIVRD", "wait_ms": 0}),
    );
    signal(pid, "-CONT");
    assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "{res}");
    // a reads the report late and does not take it: counted as late, or as a duplicate when its
    // records' first pass after waking already took b's closed copy.
    let late = wait_until(Duration::from_secs(5), || {
        let (_, text) = c.http_get("a", "/metrics");
        metric(&text, "switchboard_bus_refused_total{reason=\"report_late\"}") == Some(1.0)
            || dlr_counter(&c, "a", "duplicates") == 1
    });
    assert!(late, "a never counted the late report");
    let (code, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&wait_ms=500");
    assert_eq!((code, inbox.as_str()), (200, r#"{"reports":[]}"#), "a queued a DLR b's gateway handles");
    // The repeat finds it closed.
    let (_, res) = post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "700", "status": "DELIVRD"}));
    assert_eq!(res["outcome"], "duplicate", "{res}");

    // a wakes after the report's answer_by but while b still waits: b has closed no copy yet, so
    // a wins the copy holder (b) and takes the DLR; b's gateway is told it was delivered.
    signal(pid, "-STOP");
    let t = Instant::now();
    let (code, res) = std::thread::scope(|s| {
        let reporter = s.spawn(|| {
            post(
                &c,
                "b",
                "/v1/dlr/report",
                json!({"connector": "dec", "msg_id": "703", "status": "DELIVRD", "wait_ms": 0}),
            )
        });
        // Past the report's answer_by (800 ms), with 550 ms left of b's wait for a's answer.
        std::thread::sleep(Duration::from_millis(1050).saturating_sub(t.elapsed()));
        signal(pid, "-CONT");
        reporter.join().unwrap()
    });
    assert_eq!((code, res["outcome"].as_str(), res["role"].as_str()), (200, Some("delivered"), Some("owner")), "{res}");
    let (_, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&wait_ms=300");
    let inbox: Value = serde_json::from_str(&inbox).unwrap();
    let ids: Vec<&str> =
        inbox["reports"].as_array().unwrap().iter().filter_map(|e| e["record"]["id"].as_str()).collect();
    assert_eq!(ids, ["703"], "a's gateway has the DLR it took, once");

    // a is gone: a DLR and its repeat in one write to b are handled once.
    a.proc.unwrap().kill();
    wait_mesh(&c, &["b"]);
    let mut sb = SocketClient::connect(&c.socket("b"));
    let report = r#"REPORT {"connector": "dec", "msg_id": "702", "status": "DELIVRD"}"#;
    sb.send(&[report, report]);
    let (first, second) = (ok_json(&sb.answer().unwrap()), ok_json(&sb.answer().unwrap()));
    assert_eq!((first["outcome"].as_str(), second["outcome"].as_str()), (Some("owner_down"), Some("duplicate")));
    drop(b);
}

/// Agents a, b and c, with `ids` registered on a (connector `dec`) and copied to b and c. a
/// dials b and c, so it links again as soon as it wakes from a stop (its view of them may not
/// change between two looks), and a cluster of three keeps some peer live.
fn owner_a_with_copies(c: &Cluster, ids: &[String]) -> [LimitsNode; 3] {
    let b = start(c, "b", &[]);
    let c3 = start(c, "c", &[b.endpoint()]);
    let a = start(c, "a", &[b.endpoint(), c3.endpoint()]);
    wait_mesh(c, &["a", "b", "c"]);
    let n = register(c, "a", "dec", ids.iter().cloned());
    let copies = || dlr_counter(c, "b", "replica_ops_received") + dlr_counter(c, "c", "replica_ops_received");
    assert!(wait_until(Duration::from_secs(10), || copies() >= n as u64), "{} copies of {n}", copies());
    [a, b, c3]
}

#[test]
fn an_owner_hung_past_its_lease_learns_what_was_closed_and_no_lookup_calls_a_record_missing() {
    let c = Cluster::new();
    let ids: Vec<String> = (5000..5030).map(|i| i.to_string()).collect();
    let [a, b, c3] = owner_a_with_copies(&c, &ids);

    // a hangs past its lease: b sees it gone, hands the DLRs of half its records to its own
    // gateway (owner_down) and closes its copies; a record registered on b meanwhile has no
    // copy on a.
    let pid = a.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    signal(pid, "-STOP");
    let gone = wait_until(Duration::from_secs(15), || live_nodes(&c, "b") == ["b", "c"]);
    if !gone {
        signal(pid, "-CONT");
    }
    assert!(gone, "b still sees a: {:?}", live_nodes(&c, "b"));
    for (i, id) in ids[..15].iter().enumerate() {
        let node = if i % 2 == 0 { "b" } else { "c" };
        let (code, res) =
            post(&c, node, "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}));
        assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "{id} at {node}: {res}");
    }
    register(&c, "b", "dec", ["9001".to_owned()]);

    // Lookups at a, asked while it hangs and answered as it wakes (cut off from b, then
    // joining again): the record on b is found or the answer says a node could not be asked
    // (503), never that it does not exist.
    let answers = std::thread::scope(|s| {
        let asks: Vec<_> = (0..4)
            .map(|_| s.spawn(|| post(&c, "a", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "9001"}))))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        signal(pid, "-CONT");
        // Repeats of DLRs b and c handed to their gateways meanwhile, at a as it wakes: a's own
        // records are still open, yet they are not a's to take.
        for id in &ids[1..3] {
            let (code, res) =
                post(&c, "a", "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}));
            assert!(
                (code, res["outcome"].as_str()) == (200, Some("duplicate")) || code == 503,
                "a repeat at the waking owner: {code} {res}"
            );
        }
        let mut answers: Vec<(u16, Value)> = asks.into_iter().map(|t| t.join().unwrap()).collect();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            answers.push(post(&c, "a", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "9001"})));
            std::thread::sleep(Duration::from_millis(20));
        }
        answers
    });
    for (code, res) in &answers {
        assert!(*code == 200 || *code == 503, "a resolve at the waking owner: {code} {res}");
    }
    assert!(answers.iter().any(|(code, _)| *code == 200), "b's record was never found from a");

    // a learns that its records were closed while it was away, so a repeat of any of those
    // DLRs is a duplicate, and none reaches a's gateway.
    let closed_on_a = |id: &str| {
        let (_, res) = post(&c, "a", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id, "local": true}));
        res["record"]["state"] == "closed"
    };
    let learned = wait_until(Duration::from_secs(20), || ids[..15].iter().all(|id| closed_on_a(id)));
    let open: Vec<&String> = ids[..15].iter().filter(|id| !closed_on_a(id)).collect();
    let log = a.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
    assert!(learned, "still open on a: {open:?}\n{log}");
    assert!(ids[15..].iter().all(|id| !closed_on_a(id)), "a record no DLR came for was closed");
    let (_, res) = post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": ids[0], "status": "DELIVRD"}));
    assert_eq!(res["outcome"], "duplicate", "{res}");
    let (code, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&wait_ms=300");
    assert_eq!((code, inbox.as_str()), (200, r#"{"reports":[]}"#), "a queued DLRs b's gateway handled");
    drop((b, c3));
}

#[test]
fn a_node_rebuilt_empty_numbers_its_own_records_above_what_the_collector_holds() {
    let c = Cluster::new();
    let _collector = c.start_collector();
    let registered = || {
        c.query_csv("SELECT count(*) AS n FROM dlr WHERE event = 'registered'")
            .and_then(|t| t.lines().nth(1).and_then(|n| n.trim().parse::<usize>().ok()))
            .unwrap_or(0)
    };
    let mut a = start(&c, "a", std::slice::from_ref(&c.endpoint));
    wait_mesh(&c, &["a"]);
    register(&c, "a", "dec", (0..300).map(|i| format!("{}", 5000 + i)));
    assert!(wait_until(Duration::from_secs(30), || registered() == 300), "{}", registered());
    if let Some(p) = a.proc.take() {
        p.stop();
    }
    // The node is rebuilt: its data_dir, journals and own event log with it, are gone.
    std::fs::remove_dir_all(c.agent_state("a")).unwrap();
    let mut a = restart(&c, &a, std::slice::from_ref(&c.endpoint));
    wait_mesh(&c, &["a"]);
    let log = || a.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
    let skipped = wait_until(Duration::from_secs(20), || log().contains("from an earlier life of this node"));
    assert!(skipped, "{}", log());
    // Its own records from here on are stored, not dropped as duplicates of the earlier ones.
    register(&c, "a", "dec", (0..50).map(|i| format!("{}", 9000 + i)));
    assert!(wait_until(Duration::from_secs(30), || registered() == 350), "{} of 350\n{}", registered(), log());
    // And the stream is acknowledged up to its head again (the collector's watermark is no
    // longer ahead of it), the other streams' acknowledgements never stopped.
    fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
        match v {
            Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|x| find(x, key))),
            _ => None,
        }
    }
    let source = || {
        let health = serde_json::from_str::<Value>(&c.http_get("a", "/health").1).unwrap_or(Value::Null);
        find(&health, "_dlr").map(|s| (s["head"].as_u64(), s["acked"].as_u64()))
    };
    let acked = wait_until(Duration::from_secs(20), || {
        source().is_some_and(|(head, acked)| head == acked && head.is_some_and(|h| h > 300))
    });
    assert!(acked, "{:?}\n{}", source(), c.http_get("a", "/health").1);
    if let Some(p) = a.proc.take() {
        p.stop();
    }
}

#[test]
fn an_owner_stopped_for_a_second_takes_no_dlr_another_gateway_handled() {
    let c = Cluster::new();
    let ids: Vec<String> = (7000..7010).map(|i| i.to_string()).collect();
    let [a, b, c3] = owner_a_with_copies(&c, &ids);

    // a stops for a little over a second (under its lease: no node sees it gone) while each DLR
    // is reported once at b or c; a answers as it wakes.
    let pid = a.proc.as_ref().map(|p| p.pid()).unwrap_or_default();
    signal(pid, "-STOP");
    let outcomes: Vec<(String, String)> = std::thread::scope(|s| {
        let reports: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (node, c) = (if i % 2 == 0 { "b" } else { "c" }, &c);
                s.spawn(move || {
                    let (code, res) =
                        post(c, node, "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}));
                    assert_eq!(code, 200, "{id} at {node}: {res}");
                    (id.clone(), res["outcome"].as_str().unwrap_or_default().to_owned())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1100));
        signal(pid, "-CONT");
        reports.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // Past the 5 s a just-woken owner refuses reports: each repeat at a is a duplicate, and a's
    // gateway gets only the DLRs that a itself took.
    std::thread::sleep(Duration::from_secs(7));
    for (id, outcome) in &outcomes {
        let (code, res) =
            post(&c, "a", "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}));
        assert_eq!((code, res["outcome"].as_str()), (200, Some("duplicate")), "{id} (first: {outcome}): {res}");
    }
    let (_, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0");
    let inbox: Value = serde_json::from_str(&inbox).unwrap();
    let taken: Vec<&str> = outcomes.iter().filter(|(_, o)| o == "delivered").map(|(id, _)| id.as_str()).collect();
    let got: Vec<&str> = inbox["reports"]
        .as_array()
        .map(|r| r.iter().filter_map(|e| e["msg_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(got.len(), taken.len(), "a's inbox {got:?}, taken by a {taken:?}: {outcomes:?}");
    drop((a, b, c3));
}

/// A replica that is live but does not answer (its token up, nothing serving its key, as while it
/// leaves) is asked again after a pause per batch, not in a loop: the failures stay counted by
/// the handful, and the log says so once.
#[test]
fn a_live_replica_that_does_not_answer_is_not_asked_in_a_loop() {
    let c = Cluster::new();
    let a = start(&c, "a", &[]);
    wait_mesh(&c, &["a"]);
    // A process holding only the token of an agent `mute`: a live replica with no queryable.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bus = switchboard_bus::config::BusConfig {
        cluster: c.cluster.clone(),
        node: "mute".into(),
        connect: vec![a.endpoint()],
        ..Default::default()
    };
    let session = rt.block_on(switchboard_bus::session::open(&bus, None)).unwrap();
    let token = format!("{}/node/mute", bus.effective_prefix());
    let _token = rt.block_on(async { session.liveliness().declare_token(token).await }).unwrap();
    let seen = wait_until(Duration::from_secs(20), || live_nodes(&c, "a") == ["a", "mute"]);
    assert!(seen, "a never saw mute: {:?}", live_nodes(&c, "a"));
    let before = dlr_counter(&c, "a", "replica_failures");
    let t = Instant::now();
    for i in 0..20 {
        register(&c, "a", "dec", [format!("{}", 9000 + i)]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let failures = dlr_counter(&c, "a", "replica_failures") - before;
    let took = t.elapsed();
    let log = a.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
    let said = log.matches("replica batch failed").count();
    eprintln!("{failures} failed batches in {took:?}, said {said} times");
    // Four batches in flight per lane, each paused 250 ms after its failure: about 16 a second,
    // plus a pass's now and then (a loop made thousands).
    assert!(failures as f64 <= 40.0 * took.as_secs_f64(), "{failures} failed batches in {took:?}");
    assert!(said <= 3, "said {said} times:\n{log}");
    drop(_token);
    rt.block_on(async { session.close().await }).unwrap();
}

#[test]
fn a_node_rebuilt_empty_takes_its_records_back_and_its_copies_are_made_again() {
    let c = Cluster::new();
    // More than a restore page (2,000 records) on each of b and c.
    let ids: Vec<String> = (20_000..24_500).map(|i| i.to_string()).collect();
    let [a, b, c3] = owner_a_with_copies(&c, &ids);
    let connect = [b.endpoint(), c3.endpoint()];
    let dlr = |node: &str| serde_json::from_str::<Value>(&c.http_get(node, "/v1/dlr").1).unwrap_or(Value::Null);

    // a is lost with its disk. Meanwhile b hands five of its DLRs to its own gateway and closes
    // their copies.
    if let Some(p) = a.proc.as_ref() {
        signal(p.pid(), "-KILL");
    }
    assert!(wait_until(Duration::from_secs(10), || live_nodes(&c, "b") == ["b", "c"]), "b still sees a");
    for id in &ids[..5] {
        let (code, res) =
            post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}));
        assert_eq!((code, res["outcome"].as_str()), (200, Some("owner_down")), "{res}");
    }
    // A miss is unknown for a while: a may have died holding records whose copies had not gone
    // out yet (docs/dlr-api.md).
    let miss = || post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "999999"}));
    let unknown = wait_until(Duration::from_secs(10), || {
        let (code, res) = miss();
        code == 503 && res["error"].as_str().is_some_and(|e| e.contains("may hold records no other node has"))
    });
    assert!(unknown, "{:?}", miss());
    drop(a);
    std::fs::remove_dir_all(c.agent_state("a")).unwrap();
    let mut a = c.restart_limits_agent("a", free_port(), &connect, "", DLR);

    // Rebuilt, it takes every record back from b's and c's copies, the closes included.
    let log = |n: &LimitsNode| n.proc.as_ref().map(Proc::log_text).unwrap_or_default();
    let done = wait_until(Duration::from_secs(30), || {
        let v = dlr(&a.name);
        v["counters"]["restored"].as_u64() == Some(ids.len() as u64) && v["restoring"] == false
    });
    assert!(done, "{}\n{}", dlr(&a.name), log(&a));
    assert!(log(&a).contains("took back this node's DLR records"), "{}", log(&a));
    let pages = dlr_counter(&c, "b", "restore_pages_served") + dlr_counter(&c, "c", "restore_pages_served");
    assert!(pages >= 4, "{pages} pages for {} records on two holders", ids.len());
    let here = dlr_counter(&c, "a", "answered_here");
    for (i, id) in ids.iter().enumerate() {
        let (code, res) = post(&c, "a", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id}));
        let state = if i < 5 { "closed" } else { "open" };
        assert_eq!(
            (code, res["role"].as_str(), res["record"]["state"].as_str()),
            (200, Some("owner"), Some(state)),
            "{id}: {res}"
        );
    }
    assert_eq!(
        dlr_counter(&c, "a", "answered_here") - here,
        ids.len() as u64,
        "every resolve answered from a's own store"
    );
    // Its DLRs reach its gateway again, once; one another gateway handled is a duplicate.
    let (code, res) =
        post(&c, "c", "/v1/dlr/report", json!({"connector": "dec", "msg_id": ids[5], "status": "DELIVRD"}));
    assert_eq!(
        (code, res["outcome"].as_str(), res["answered_by"].as_str()),
        (200, Some("delivered"), Some("a")),
        "{res}"
    );
    let (code, res) =
        post(&c, "a", "/v1/dlr/report", json!({"connector": "dec", "msg_id": ids[0], "status": "DELIVRD"}));
    assert_eq!((code, res["outcome"].as_str()), (200, Some("duplicate")), "{res}");
    // An id of its earlier life registered again (the SMSC reused it) is a new record on its
    // copy too, not replaced by the closed one there: its DLR reaches a's gateway.
    register(&c, "a", "dec", [ids[1].clone()]);
    let copy_open = || {
        ["b", "c"].iter().any(|n| {
            let (code, res) =
                post(&c, n, "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": ids[1], "local": true}));
            code == 200 && res["record"]["state"] == "open" && res["role"] == "replica"
        })
    };
    assert!(wait_until(Duration::from_secs(10), copy_open), "the copy of the new record never arrived");
    std::thread::sleep(Duration::from_secs(1));
    assert!(copy_open(), "the copy was replaced by the earlier life's record");
    let (code, res) =
        post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": ids[1], "status": "DELIVRD"}));
    assert_eq!(
        (code, res["outcome"].as_str(), res["answered_by"].as_str()),
        (200, Some("delivered"), Some("a")),
        "{res}"
    );
    let (_, inbox) = c.http_get("a", "/v1/dlr/inbox?after=0&max=100");
    let inbox: Value = serde_json::from_str(&inbox).unwrap_or(Value::Null);
    let reports = inbox["reports"].as_array().cloned().unwrap_or_default();
    let got: Vec<&str> = reports.iter().filter_map(|r| r["record"]["id"].as_str()).collect();
    assert_eq!(got, [ids[5].as_str(), ids[1].as_str()], "{inbox}");

    // A copy holder rebuilt after it gets its copies again from a, so the records outlive the
    // owner once more: with a killed, c answers every one from the copies on b and c.
    let mut b = b;
    if let Some(p) = b.proc.take() {
        p.kill();
    }
    std::fs::remove_dir_all(c.agent_state("b")).unwrap();
    let b = c.restart_limits_agent("b", b.port, &[a.endpoint(), c3.endpoint()], "", DLR);
    wait_mesh(&c, &["a", "b", "c"]);
    // About half of the copies are b's (rendezvous hashing); a pass sends them in batches.
    let copied = wait_until(Duration::from_secs(20), || dlr_counter(&c, "b", "replica_ops_received") >= 2000);
    assert!(copied, "{}\n{}", dlr(&a.name), dlr(&b.name));
    std::thread::sleep(Duration::from_secs(1));
    if let Some(p) = a.proc.take() {
        p.kill();
    }
    assert!(wait_until(Duration::from_secs(10), || live_nodes(&c, "c") == ["b", "c"]), "c still sees a");
    for id in &ids {
        let (code, res) = post(&c, "c", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id}));
        assert_eq!((code, res["role"].as_str()), (200, Some("replica")), "{id}: {res}\n{}", log(&b));
    }
    drop(c3);
}

/// Over mutual TLS a rebuilt node asks for its records under its own identity (policy row 21 of
/// docs/security.md) and takes every one back.
#[test]
fn a_node_rebuilt_empty_takes_its_records_back_over_mutual_tls() {
    let c = Cluster::with_tls(&["collector:c1", "agent:gw1", "agent:gw2"]);
    let _collector = c.start_collector();
    let rest = "[dlr]\ncopies = 1\n[[dlr.connector]]\nname = \"dec\"\nids = \"decimal\"\n";
    let start = |n: &str| c.start_agent_config(n, std::slice::from_ref(&c.endpoint), "", rest);
    let a = start("gw1");
    let _b = start("gw2");
    wait_mesh(&c, &["gw1", "gw2"]);
    let n = register(&c, "gw1", "dec", (30_000..30_300).map(|i| i.to_string())) as u64;
    let copied = wait_until(Duration::from_secs(10), || dlr_counter(&c, "gw2", "replica_ops_received") >= n);
    assert!(copied, "{} copies of {n}", dlr_counter(&c, "gw2", "replica_ops_received"));
    a.kill();
    std::fs::remove_dir_all(c.agent_state("gw1")).unwrap();
    let a = start("gw1");
    let restored = wait_until(Duration::from_secs(30), || dlr_counter(&c, "gw1", "restored") == n);
    assert!(restored, "{} of {n}\n{}", dlr_counter(&c, "gw1", "restored"), a.log_text());
    let (code, res) = post(&c, "gw1", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "30007", "local": true}));
    assert_eq!((code, res["role"].as_str()), (200, Some("owner")), "{res}");
}

/// A lookup that finds nothing answers `503` for `dlr.departed_hold_s` after an agent was
/// killed (it may hold records no other node has: registered just before it died, or on it
/// while cut off from all), then `404`; a node left alone names every agent gone.
#[test]
fn a_miss_is_unknown_for_the_departed_hold_and_a_node_alone_names_every_agent_gone() {
    let c = Cluster::new();
    let dlr = DLR.replacen("[dlr]\n", "[dlr]\ndeparted_hold_s = 3\n", 1);
    let b = c.start_limits_agent("b", &[], "", &dlr);
    let c3 = c.start_limits_agent("c", &[b.endpoint()], "", &dlr);
    let a = c.start_limits_agent("a", &[b.endpoint(), c3.endpoint()], "", &dlr);
    wait_mesh(&c, &["a", "b", "c"]);
    let miss = || post(&c, "b", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "999999"}));
    let said =
        |code: u16, res: &Value, what: &str| code == 503 && res["error"].as_str().is_some_and(|e| e.contains(what));
    assert_eq!(miss().0, 404, "{:?}", miss());

    let pid = |n: &LimitsNode| n.proc.as_ref().map_or(0, Proc::pid);
    signal(pid(&a), "-KILL");
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || live_nodes(&c, "b") == ["b", "c"]), "b still sees a");
    let unknown = wait_until(Duration::from_secs(3), || {
        let (code, res) = miss();
        said(code, &res, "may hold records no other node has")
    });
    assert!(unknown, "{:?}", miss());
    let known = wait_until(Duration::from_secs(15), || miss().0 == 404);
    let after = killed.elapsed();
    assert!(known, "{:?}", miss());
    assert!(after >= Duration::from_secs(3), "404 {after:?} after the kill, within the hold");

    signal(pid(&c3), "-KILL");
    let alone = wait_until(Duration::from_secs(10), || {
        let (code, res) = miss();
        said(code, &res, "no other node is reachable (gone: a, c)") || said(code, &res, "(gone: c, a)")
    });
    assert!(alone, "{:?}", miss());
    drop((a, c3, b));
}

/// A lookup begun while the owner of a record no copy holds is down, and still under way when
/// that owner comes back, never reached it (zenoh sends a query to the nodes it knows when the
/// query begins): the answer is `503`, to try again, not `404`, which would drop the DLR; a
/// report handed in again reaches the owner.
#[test]
fn a_lookup_under_way_when_the_owner_comes_back_is_unknown_not_missing() {
    let c = Cluster::new();
    // a registers alone: no copy of its record exists anywhere.
    let mut a = start(&c, "a", &[]);
    wait_mesh(&c, &["a"]);
    register(&c, "a", "dec", ["4242".to_string()]);
    a.proc.take().unwrap().kill();
    let b = start(&c, "b", &[]);
    let _c3 = start(&c, "c", &[b.endpoint()]);
    wait_mesh(&c, &["b", "c"]);
    // Every node asked holds the lookup open for 10 s, waiting for a registration; a comes
    // back meanwhile (and its copy of the record reaches b, which wakes no waiting lookup).
    let port = c.http_port("b");
    let started = Instant::now();
    let resolve = std::thread::spawn(move || {
        let body = json!({"connector": "dec", "msg_id": "4242", "wait_ms": 10_000});
        http_post_within(port, "/v1/dlr/resolve", &body.to_string(), Duration::from_secs(30))
    });
    std::thread::sleep(Duration::from_millis(300));
    a = restart(&c, &a, &[b.endpoint()]);
    wait_mesh(&c, &["a", "b", "c"]);
    assert!(started.elapsed() < Duration::from_secs(9), "a joined too late to test: {:?}", started.elapsed());
    let (code, _, text) = resolve.join().unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("node a joined while the lookup ran"), "{text}");
    // A report handed in now reaches a, which takes it once it has settled after its restart.
    let mut last = (0, Value::Null);
    let delivered = wait_until(Duration::from_secs(30), || {
        last = post(&c, "b", "/v1/dlr/report", json!({"connector": "dec", "msg_id": "4242", "status": "DELIVRD"}));
        last.0 == 200
    });
    assert!(delivered, "{last:?}");
    assert_eq!((last.1["outcome"].as_str(), last.1["role"].as_str()), (Some("delivered"), Some("owner")), "{last:?}");
    assert_eq!(dlr_counter(&c, "b", "not_found"), 0);
    drop(a);
}
