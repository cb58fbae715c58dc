//! A full disk at the collector: it stops committing, says so (log, metric, `/health` 503),
//! leaves no corrupt file in the dataset, and once space returns pulls what it could not write
//! from the agents: every line ends up stored exactly once. A full disk at an agent: it says so
//! too, and after space returns (and a restart, if its journal could not be written) every line
//! is stored exactly once.
//!
//! The full disk is real: the dataset lives on a small tmpfs this test mounts (it needs root, as
//! on the CI machine). Where mounting is not permitted the test says so and skips.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn full_disk_then_space_returns() {
    let c = Cluster::new();
    let Some(mount) = Mount::tmpfs(&c.dataset(), "400k") else { return };
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let w = Writer::start("gw", c.logs_dir("gw").join("app.log"), 150, 60_000, |_, _| {});
    // 503 while it starts too (`"role": "starting"`): wait for the leader's.
    let failing = wait_until(DEADLINE, || {
        let (code, body) = c.http_get("collector", "/health");
        code == 503 && !body.contains("\"starting\"")
    });
    assert!(failing, "the collector never reported the full disk\n{}", collector.log_text());
    let (_, body) = c.http_get("collector", "/health");
    assert!(body.contains("No space left") || body.contains("failing"), "{body}");
    let (_, metrics) = c.http_get("collector", "/metrics");
    // Whichever write meets the full disk first is counted: a data file's as a failed write, a
    // commit log record's (when the disk fills between the files and their commit) as a failed
    // commit.
    let errors = metric(&metrics, "switchboard_collector_write_errors_total").unwrap_or(0.0)
        + metric(&metrics, "switchboard_collector_commit_errors_total").unwrap_or(0.0);
    assert!(errors > 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "switchboard_collector_failing"), Some(1.0));
    // What is committed is whole: every visible file reads back.
    let visible = read_logs(&c.dataset()).len();
    eprintln!("disk full with {visible} rows committed; giving space back");
    mount.resize("64m");
    let n = w.stop();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= n);
    if !ok {
        let log = collector.log_text();
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("zenoh")).rev().take(60).collect();
        let alog = agent.log_text();
        let atail: Vec<&str> = alog.lines().filter(|l| !l.contains("zenoh")).rev().take(30).collect();
        panic!(
            "dataset holds {} of {n}\n--- collector\n{}\n--- agent\n{}\n--- agent health {:?}\n--- collector health {:?}",
            count_logs(&c.dataset()),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            atail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            c.http_get("gw", "/health"),
            c.http_get("collector", "/health"),
        );
    }
    assert!(wait_until(Duration::from_secs(20), || c.http_get("collector", "/health").0 == 200));
    let (code, agent_metrics) = c.http_get("gw", "/metrics");
    assert_eq!(code, 200);
    // Each line went out live or, if no collector was alive yet when it was read, was pulled.
    let sent = metric(&agent_metrics, "switchboard_agent_published_lines_total").unwrap_or(0.0)
        + metric(&agent_metrics, "switchboard_agent_replayed_lines_total").unwrap_or(0.0);
    assert!(sent as usize >= n, "{sent} lines sent of {n}");
    stop_and_check_every_line(&c, agent, collector, n);
    drop(mount);
}

/// A collector started again on a disk that filled while it was down: its claim cannot be
/// written, and `/health` says so with the store's error (it said `joining the bus`), until
/// there is space again.
#[test]
fn a_collector_started_on_a_full_disk_says_why_it_cannot_join() {
    let c = Cluster::new();
    let Some(mount) = Mount::tmpfs(&c.dataset(), "400k") else { return };
    let collector = c.start_collector();
    assert!(
        wait_until(Duration::from_secs(30), || c.http_get("collector", "/health").0 == 200),
        "{}",
        collector.log_text()
    );
    collector.stop();
    let filler = c.dataset().join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"]).output();
    let collector = c.start_collector();
    let says = wait_until(Duration::from_secs(30), || {
        let (code, body) = c.http_get("collector", "/health");
        let (_, metrics) = c.http_get("collector", "/metrics");
        code == 503
            && body.contains("No space left")
            && metric(&metrics, "switchboard_collector_store_failing") == Some(1.0)
    });
    assert!(
        says,
        "{:?}
{}",
        c.http_get("collector", "/health"),
        collector.log_text()
    );
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || c.http_get("collector", "/health").0 == 200),
        "{:?}",
        c.http_get("collector", "/health")
    );
    collector.stop();
    drop(mount);
}

#[test]
fn an_agent_whose_disk_fills_says_so_and_loses_nothing() {
    let c = Cluster::new();
    let Some(mount) = Mount::tmpfs(&c.agent_state("gw"), "16m") else { return };
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    let w = Writer::start("gw", c.logs_dir("gw").join("app.log"), 150, 60_000, |_, _| {});
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) > 0), "nothing arrived\n{}", agent.log_text());
    // Fill what is left of the agent's disk.
    let filler = c.agent_state("gw").join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=64k"]).output();
    let failing = wait_until(DEADLINE, || c.http_get("gw", "/health").0 == 503);
    let (_, body) = c.http_get("gw", "/health");
    assert!(failing, "the agent never reported its full disk: {body}\n{}", agent.log_text());
    assert!(body.contains("checkpoint") || body.contains("journal"), "{body}");
    assert!(body.contains("No space left on device"), "/health names the error: {body}");
    // A source stopped by its journal says so in a gauge of its own (its lag says 0).
    let stopped = || metric(&c.http_get("gw", "/metrics").1, "switchboard_agent_source_stopped{source=\"app\"}");
    if body.contains("source app stopped: its journal cannot be written") {
        assert_eq!(stopped(), Some(1.0), "{body}");
        eprintln!("the source stopped on its journal, and its gauge says so");
    }
    std::fs::remove_file(&filler).unwrap();
    let n = w.stop();
    // A source whose journal could not be written stopped; a restart takes it up again.
    agent.stop();
    let agent = c.start_agent("gw", "plain");
    assert!(
        wait_until(DEADLINE, || count_logs(&c.dataset()) >= n),
        "dataset holds {} of {n}",
        count_logs(&c.dataset())
    );
    assert!(wait_until(Duration::from_secs(20), || c.http_get("gw", "/health").0 == 200));
    assert_eq!(stopped(), Some(0.0));
    stop_and_check_every_line(&c, agent, collector, n);
    drop(mount);
}

#[test]
fn health_and_metrics_endpoints_answer() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    append(&c.logs_dir("gw").join("a.log"), (0..100).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 100));
    let (code, body) = c.http_get("gw", "/health");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["collectors_alive"][0], "c1");
    // The checkpoint follows the collector's watermark.
    assert!(wait_until(Duration::from_secs(10), || {
        let (_, b) = c.http_get("gw", "/health");
        serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| v["sources"]["app"]["acked"] == 100)
    }));
    // Heads come every second: the lag series appears with the first one after the lines.
    let lag0 = "switchboard_collector_stream_lag_records{stream=\"gw/log/app\"} 0";
    assert!(wait_until(Duration::from_secs(10), || c.http_get("collector", "/metrics").1.contains(lag0)));
    let (code, m) = c.http_get("collector", "/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&m, "switchboard_collector_rows_committed_total"), Some(100.0));
    let (code, _) = c.http_get("collector", "/nope");
    assert_eq!(code, 404);
    agent.stop();
    collector.stop();
}

/// A full disk at an agent with DLRs: its store refuses every change until a restart, `/health`
/// says so, and a DLR for one of its records is refused (503: try again) at any node while it
/// is live, never handed to another node's gateway; once it has space and is restarted, the
/// DLR reaches it.
#[test]
fn an_agent_whose_dlr_store_fails_refuses_reports_of_its_records_until_restarted() {
    use common::limits::http_post;
    let c = Cluster::new();
    let Some(mount) = Mount::tmpfs(&c.agent_state("a"), "24m") else { return };
    let dlr = "[dlr]\n[[dlr.connector]]\nname = \"dec\"\nids = \"decimal\"\n";
    let a = c.start_limits_agent("a", &[], "", dlr);
    let b = c.start_limits_agent("b", &[a.endpoint()], "", dlr);
    let post = |node: &str, path: &str, body: String| {
        let (code, _, text) = http_post(c.http_port(node), path, &body);
        (code, serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default())
    };
    let register = |id: u32| {
        post("a", "/v1/dlr/register", format!(r#"{{"records": [{{"connector": "dec", "msg_id": "{id}"}}]}}"#)).0
    };
    let report = |node: &str, id: u32| {
        post(node, "/v1/dlr/report", format!(r#"{{"connector": "dec", "msg_id": "{id}", "status": "DELIVRD"}}"#))
    };
    let copies = |node: &str| {
        let (_, body) = c.http_get(node, "/v1/dlr");
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["counters"]["replica_ops_received"].as_u64())
    };
    let up = |node: &str| wait_until(Duration::from_secs(20), || c.http_get(node, "/health").0 != 0);
    assert!(up("a") && up("b"), "an agent did not start");
    // Both nodes up and linked: a's records get their copy on b.
    assert!(wait_until(Duration::from_secs(20), || register(1) == 201), "a never took a registration");
    for id in 2..=3 {
        assert_eq!(register(id), 201);
    }
    assert!(wait_until(Duration::from_secs(20), || copies("b").unwrap_or(0) >= 3), "b holds {:?} copies", copies("b"));

    let filler = c.agent_state("a").join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=64k"]).output();
    let mut id = 100;
    let refused = wait_until(Duration::from_secs(30), || {
        id += 1;
        register(id) == 503
    });
    assert!(refused, "registrations still taken on a full disk");
    let (code, health) = c.http_get("a", "/health");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("the DLR store failed a write") && health.contains("restart the agent"), "{health}");
    // Space again, but the store stays broken until a restart: a DLR for a's record, at a or at
    // b, is refused while a is live.
    std::fs::remove_file(&filler).unwrap();
    for (node, id) in [("a", 1), ("b", 2)] {
        let (code, res) = report(node, id);
        assert_eq!(code, 503, "report of {id} at {node}: {res}");
    }
    let port = a.port;
    drop(a);
    let restarted = c.restart_limits_agent("a", port, &[], "", dlr);
    assert!(up("a"), "a did not start again");
    assert!(wait_until(Duration::from_secs(20), || register(200) == 201), "a took no registration after its restart");
    let sees_a = || {
        let (_, body) = c.http_get("b", "/v1/dlr");
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .is_some_and(|v| v["live_nodes"] == serde_json::json!(["a", "b"]))
    };
    assert!(wait_until(Duration::from_secs(20), sees_a), "b does not see a again");
    // Started again over its records, a first checks what its copies say (docs/dlr-api.md).
    let settled = || {
        let (_, body) = c.http_get("a", "/v1/dlr");
        serde_json::from_str::<serde_json::Value>(&body).ok().is_some_and(|v| v["settling"] == false)
    };
    assert!(wait_until(Duration::from_secs(30), settled), "a did not settle after its restart");
    let (code, res) = report("b", 2);
    assert_eq!((code, res["outcome"].as_str(), res["role"].as_str()), (200, Some("delivered"), Some("owner")), "{res}");
    let (_, res) = report("b", 1);
    assert_eq!(res["outcome"], "delivered", "{res}");
    drop((restarted, b));
    drop(mount);
}
