//! Gateway metrics end to end: StatsD over UDP on one agent, over HTTP on another, snapshots
//! through the collector into the `metrics` table, and `switchboard query` giving the right sums
//! and the right cluster-wide quantiles (checked against a histogram built here from the same
//! samples). pyarrow and DuckDB read the same files with the same numbers.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::limits::http_post;
use common::{free_port, wait_until, Cluster};
use hdrhistogram::Histogram;

const OPERATORS: [&str; 3] = ["o2", "tmo", "voda"];
const SAMPLES: usize = 3000;

fn metrics_toml(port: u16) -> String {
    format!("[metrics]\nstatsd_listen = \"127.0.0.1:{port}\"\ninterval_ms = 500\n")
}

fn intake(c: &Cluster, node: &str, name: &str) -> u64 {
    let (_, body) = c.http_get(node, "/v1/metrics/intake");
    serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["counters"][name].as_u64()).unwrap_or(0)
}

/// The sample `i`: (operator, latency in ms with 0.1 ms resolution).
fn sample(i: usize) -> (&'static str, f64) {
    (OPERATORS[i % 3], ((i * 7919) % 50_000) as f64 / 10.0)
}

fn csv_rows(out: &str) -> Vec<Vec<String>> {
    out.lines().skip(1).map(|l| l.split(',').map(str::to_owned).collect()).collect()
}

#[test]
fn metrics_pushed_on_two_agents_sum_and_merge_exactly() {
    let c = Cluster::new();
    let _collector = c.start_collector();
    let (udp_a, udp_b) = (free_port(), free_port());
    let a = c.start_agent_config("a", std::slice::from_ref(&c.endpoint), "", &metrics_toml(udp_a));
    let b = c.start_agent_config("b", std::slice::from_ref(&c.endpoint), "", &metrics_toml(udp_b));
    for n in ["a", "b"] {
        assert!(wait_until(Duration::from_secs(20), || c.http_get(n, "/v1/metrics/intake").0 == 200), "{n} is not up");
    }

    // Even samples go to a over UDP, odd ones to b over HTTP; each also counts `submitted`.
    let mut per_op: BTreeMap<&str, Histogram<u64>> =
        OPERATORS.iter().map(|o| (*o, Histogram::new(3).unwrap())).collect();
    let mut all = Histogram::<u64>::new(3).unwrap();
    let (mut udp_lines, mut http_lines) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let (op, ms) = sample(i);
        let scaled = (ms * 1000.0).round() as u64;
        per_op.get_mut(op).unwrap().record(scaled).unwrap();
        all.record(scaled).unwrap();
        let lines = if i % 2 == 0 { &mut udp_lines } else { &mut http_lines };
        lines.push(format!("dlr_latency:{ms}|ms|#operator:{op},node_role:gw"));
        lines.push(format!("submitted:1|c|#operator:{op}"));
    }
    // A sampled counter: 5 at rate 0.5 stands for 10.
    udp_lines.push("submitted:5|c|@0.5|#operator:voda".into());
    udp_lines.push("queue_depth:7|g".into());
    http_lines.push("queue_depth:3|g".into());

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0;
    for chunk in udp_lines.chunks(40) {
        socket.send_to(chunk.join("\n").as_bytes(), ("127.0.0.1", udp_a)).unwrap();
        sent += chunk.len() as u64;
        // Paced so the receive buffer never overflows (UDP drops silently).
        std::thread::sleep(Duration::from_millis(2));
    }
    for chunk in http_lines.chunks(500) {
        let (code, _, body) = http_post(c.http_port("b"), "/v1/metrics", &chunk.join("\n"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((v["accepted"].as_u64(), v["rejected"].as_u64()), (Some(chunk.len() as u64), Some(0)), "{body}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || intake(&c, "a", "lines") == sent),
        "a took {} of {sent} UDP lines",
        intake(&c, "a", "lines")
    );

    // Hostile input is refused line by line, counted, and never stops the intake.
    let bad = "garbage\nx:1|q\ny:NaN|c\nz:-1|ms\n:1|c\nok:1|c|#operator:voda";
    let (code, _, body) = http_post(c.http_port("b"), "/v1/metrics", bad);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, v["accepted"].as_u64(), v["rejected"].as_u64()), (200, Some(1), Some(5)), "{body}");
    assert!(v["errors"][0].as_str().unwrap().starts_with("line 1:"), "{body}");
    let (code, _, body) = http_post(c.http_port("b"), "/v1/metrics", "nonsense");
    assert_eq!(code, 400, "{body}");
    // A name that is not UTF-8 is refused like any malformed line: two bad lines.
    socket.send_to(b"\xff\xfe:1|c\nbroken", ("127.0.0.1", udp_a)).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || intake(&c, "a", "bad_lines") == 2),
        "the bad datagram lines are counted: {}",
        intake(&c, "a", "bad_lines")
    );
    assert_eq!(intake(&c, "b", "bad_lines"), 6);

    // Every sample reaches the table: counters sum per operator, both nodes together.
    let want_submitted: BTreeMap<&str, f64> =
        OPERATORS.iter().map(|o| (*o, (SAMPLES / 3) as f64 + if *o == "voda" { 10.0 } else { 0.0 })).collect();
    let sums = || {
        c.query_csv(
            "SELECT tag(tags, 'operator') AS op, sum(value) AS n FROM metrics WHERE name = 'submitted' GROUP BY 1 ORDER BY 1",
        )
        .map(|out| csv_rows(&out).into_iter().map(|r| (r[0].clone(), r[1].parse::<f64>().unwrap_or(-1.0))).collect::<Vec<_>>())
        .unwrap_or_default()
    };
    let want: Vec<(String, f64)> = want_submitted.iter().map(|(o, n)| ((*o).to_owned(), *n)).collect();
    // An interval's rows may reach the dataset in more than one commit: counters, timers and
    // gauges are each waited for.
    let samples = || {
        c.query_csv("SELECT sum(count) FROM metrics WHERE name = 'dlr_latency'")
            .and_then(|out| csv_rows(&out).first().map(|r| r[0].clone()))
            .unwrap_or_default()
    };
    let gauges = || {
        c.query_csv(
            "SELECT node, max(value) FROM metrics WHERE name = 'queue_depth' AND kind = 'gauge' GROUP BY 1 ORDER BY 1",
        )
        .map(|out| csv_rows(&out))
        .unwrap_or_default()
    };
    let complete = || sums() == want && samples() == SAMPLES.to_string() && gauges() == [["a", "7.0"], ["b", "3.0"]];
    assert!(
        wait_until(Duration::from_secs(30), complete),
        "sums {:?}, want {want:?}; samples {}; gauges {:?}",
        sums(),
        samples(),
        gauges()
    );

    // Merged quantiles equal those of one histogram of all samples, per operator and overall.
    let out = c
        .query(
            "SELECT tag(tags, 'operator') AS op, hdr_quantile(hdr_merge(histogram), 0.5) AS p50, \
             hdr_quantile(hdr_merge(histogram), 0.99) AS p99, hdr_count(hdr_merge(histogram)) AS n, \
             count(DISTINCT node) AS nodes FROM metrics WHERE name = 'dlr_latency' GROUP BY 1 ORDER BY 1",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = csv_rows(&out);
    assert_eq!(rows.len(), 3, "{out}");
    for r in &rows {
        let h = &per_op[r[0].as_str()];
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
        assert_eq!(r[1].parse::<f64>().unwrap(), q(0.5), "p50 of {}: {out}", r[0]);
        assert_eq!(r[2].parse::<f64>().unwrap(), q(0.99), "p99 of {}: {out}", r[0]);
        assert_eq!(r[3].parse::<u64>().unwrap(), h.len());
        assert_eq!(r[4], "2", "{} has samples from both nodes", r[0]);
    }
    let out = c
        .query("SELECT hdr_quantile(hdr_merge(histogram), 0.999) FROM metrics WHERE name = 'dlr_latency'")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(csv_rows(&out)[0][0].parse::<f64>().unwrap(), all.value_at_quantile(0.999) as f64 / 1000.0);
    // Gauges: the last value per node (waited for above).
    // The collector shows the newest snapshot of each node's gauges and counters on /metrics.
    let (_, prom) = c.http_get("collector", "/metrics");
    for (node, depth) in [("a", 7), ("b", 3)] {
        let line = format!(
            "switchboard_cluster_metric{{node=\"{node}\",name=\"queue_depth\",kind=\"gauge\",tags=\"\"}} {depth}\n"
        );
        assert!(prom.contains(&line), "{line} in\n{prom}");
        let counter =
            format!("switchboard_cluster_metric{{node=\"{node}\",name=\"submitted\",kind=\"counter\",tags=\"operator:");
        assert!(prom.contains(&counter), "{counter} in\n{prom}");
    }

    // The timer report merges the same way.
    let out = Command::new(common::BIN)
        .args(["report", "timer", "--data", c.dataset().to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = csv_rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(report.len(), 3);
    assert_eq!(report[2][4].parse::<f64>().unwrap(), per_op["voda"].value_at_quantile(0.99) as f64 / 1000.0);

    // pyarrow and DuckDB read the files as they are, with the numbers query gives, once the
    // agents have stopped (gracefully: their last snapshots are sent first) and all is committed.
    a.stop();
    b.stop();
    let rows = || c.query("SELECT count(*) FROM metrics").unwrap_or_default();
    let mut last = String::new();
    assert!(wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(700));
        let now = rows();
        std::mem::replace(&mut last, now.clone()) == now
    }));
    common::assert_independent_readers_agree(&c);
}

#[test]
fn each_row_holds_the_samples_sent_before_its_ts_also_after_the_agent_was_stopped() {
    let c = Cluster::new();
    let _collector = c.start_collector();
    let udp = free_port();
    let a = c.start_agent_config("a", std::slice::from_ref(&c.endpoint), "", &metrics_toml(udp));
    assert!(wait_until(Duration::from_secs(20), || c.http_get("a", "/v1/metrics/intake").0 == 200), "a is not up");
    // Stopped 10 ms after a boundary for 1.4 s: a schedule that kept the stop's delay would take
    // each later snapshot 410 ms after a boundary, where its snapshots must fall on the
    // boundaries again.
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    std::thread::sleep(Duration::from_millis((510 - now_ms() % 500) as u64));
    common::signal(a.pid(), "-STOP");
    std::thread::sleep(Duration::from_millis(1400));
    common::signal(a.pid(), "-CONT");
    std::thread::sleep(Duration::from_millis(300));
    // Probes 37 ms apart over three intervals, each a series of its own, noted with the time
    // it was sent: its row ends at the first boundary after that time (give or take 250 ms for
    // a wake-up on a busy host).
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent_at = BTreeMap::new();
    for i in 0..40 {
        sent_at.insert(format!("probe{i}"), now_ms());
        socket.send_to(format!("probe{i}:1|c").as_bytes(), ("127.0.0.1", udp)).unwrap();
        std::thread::sleep(Duration::from_millis(37));
    }
    let rows = || {
        c.query_csv("SELECT name, CAST(ts AS BIGINT) / 1000 FROM metrics WHERE name LIKE 'probe%'")
            .map(|out| csv_rows(&out))
            .unwrap_or_default()
    };
    assert!(wait_until(Duration::from_secs(30), || rows().len() == 40), "{} of 40 probes stored", rows().len());
    for r in rows() {
        let (sent, ts) = (sent_at[&r[0]], r[1].parse::<i64>().unwrap());
        // On a boundary, the first after the send (a datagram read late on a loaded host may
        // fall in a later row, never in an earlier one).
        assert!(ts % 500 == 0, "{} is in a row of {ts}, off the 500 ms boundaries", r[0]);
        assert!(ts >= sent - 250 && ts <= sent + 1500, "{} sent at {sent} is in the row of {ts}", r[0]);
    }
}
