//! End to end: log lines appended on two nodes arrive in the Parquet dataset exactly once, across
//! agent and collector restarts. Every process is a real `switchboard` process with its own zenoh
//! session on loopback.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn line(node: &str, i: usize) -> String {
    // Some lines carry a level so the plain parser has something to find; all are unique.
    let level = ["INFO", "WARN", "ERROR"][i % 3];
    format!("2026-11-22 10:{:02}:{:02} [{i}] {level}: {node} submit_sm msg #{i:06} ok", (i / 60) % 60, i % 60)
}

/// Also: an agent offering `bus.compression` to a collector that does not (zenoh negotiates it per link).
#[test]
fn two_agents_deliver_every_line_exactly_once() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let a = c.start_agent("gw-a", "plain");
    // gw-b offers compression, the collector (plain TCP: off by default) does not: their link
    // stays uncompressed. (On TLS every process offers it: the TLS tests run compressed links.)
    let b = c.start_agent_bus("gw-b", "plain", "compression = true");
    const N: usize = 4000;
    // Written in several appends while the agents run, across two files per node.
    for chunk in 0..4 {
        for node in ["gw-a", "gw-b"] {
            let file = c.logs_dir(node).join(if chunk % 2 == 0 { "one.log" } else { "two.log" });
            append(&file, (chunk * N / 4..(chunk + 1) * N / 4).map(|i| line(node, i)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= 2 * N);
    assert!(ok, "dataset holds {} of {} rows\n{}", count_logs(&c.dataset()), 2 * N, collector.log_text());
    a.stop();
    b.stop();
    collector.stop();

    let rows = read_logs(&c.dataset());
    assert_eq!(rows.len(), 2 * N);
    let counts = assert_exactly_once(&rows);
    assert_eq!(counts.get("gw-a/app"), Some(&N));
    assert_eq!(counts.get("gw-b/app"), Some(&N));
    // Content: every written line is there once, with its level parsed and its offset right.
    let mut by_msg: HashMap<(String, String), &Row> = HashMap::new();
    for r in &rows {
        by_msg.insert((r.node.clone(), r.message.clone()), r);
    }
    for node in ["gw-a", "gw-b"] {
        for i in 0..N {
            let want = format!("{node} submit_sm msg #{i:06} ok");
            let r = by_msg.get(&(node.to_owned(), want.clone())).unwrap_or_else(|| panic!("missing {node} line {i}"));
            assert_eq!(r.level.as_deref(), Some(["info", "warn", "error"][i % 3]));
            let text = std::fs::read(&r.file).unwrap();
            let at = &text[r.offset as usize..];
            assert!(at.starts_with(line(node, i).as_bytes()), "offset of {node} line {i} does not point at it");
        }
    }
}

#[test]
fn agent_restarted_mid_file_resumes_without_loss_or_duplicates() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let file = c.logs_dir("gw").join("gw.log");
    let agent = c.start_agent("gw", "plain");
    // A large burst, and the agent is stopped while it is still reading it.
    const N: usize = 200_000;
    append(&file, (0..N).map(|i| line("gw", i)));
    let checkpoint_path = c.agent_state("gw").join("checkpoint.json");
    let offset_of = |text: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        v["sources"]["app"]["files"][0]["offset"].as_u64().unwrap_or(0)
    };
    let started =
        wait_until(DEADLINE, || offset_of(&std::fs::read_to_string(&checkpoint_path).unwrap_or_default()) > 0);
    assert!(started, "the agent published nothing\n{}", agent.log_text());
    agent.stop();
    let after_stop = count_logs(&c.dataset());
    let checkpoint = std::fs::read_to_string(c.agent_state("gw").join("checkpoint.json")).unwrap_or_default();
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!("stopped after {after_stop} committed rows; checkpoint {checkpoint}; file size {size}");
    assert!(offset_of(&checkpoint) < size, "the agent was meant to stop mid-file");
    // More lines while it is down, one of them split across two writes around the restart.
    append(&file, (N..N + 500).map(|i| line("gw", i)));
    let half = line("gw", N + 500);
    let (head, tail) = half.split_at(20);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .map(|mut f| std::io::Write::write_all(&mut f, head.as_bytes()))
        .unwrap()
        .unwrap();
    let agent = c.start_agent("gw", "plain");
    std::thread::sleep(Duration::from_millis(300));
    append(&file, std::iter::once(tail.to_owned()));
    let total = N + 501;
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= total);
    assert!(ok, "dataset holds {} of {total}\n{}", count_logs(&c.dataset()), agent.log_text());
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_eq!(rows.len(), total, "stopped with {after_stop} rows in; restart must neither lose nor repeat");
    assert_exactly_once(&rows);
    assert!(
        rows.iter().any(|r| r.message == "gw submit_sm msg #200500 ok"),
        "the line split across the restart is whole"
    );
}

#[test]
fn restarted_collector_drops_what_it_already_committed() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let file = c.logs_dir("gw").join("gw.log");
    const N: usize = 3000;
    append(&file, (0..N).map(|i| line("gw", i)));
    let agent = c.start_agent("gw", "plain");
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= N));
    agent.stop();
    collector.stop();
    // The agent forgets its checkpoint and sends everything again with the same sequence
    // numbers; the restarted collector knows them from its files' footers.
    std::fs::remove_dir_all(c.agent_state("gw")).unwrap();
    append(&file, (N..N + 100).map(|i| line("gw", i)));
    let collector = c.start_collector();
    let agent = c.start_agent("gw", "plain");
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= N + 100), "{}", collector.log_text());
    // Give a resend of duplicates the time to show up if it were (wrongly) written.
    std::thread::sleep(Duration::from_millis(800));
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_eq!(rows.len(), N + 100);
    assert_exactly_once(&rows);
}

/// A collector stopped on purpose commits its open files and says so to the agents before it
/// leaves: their `acked` reaches what it committed (the last watermark can come after its
/// token went, and was dropped as a straggler's; the publishing task could also end, once the
/// intake closed its status channel, before it had sent the last one).
#[test]
fn a_collector_stopped_on_purpose_acknowledges_its_last_commit() {
    let c = Cluster::new();
    // Files committed every 3 s: the lines written below wait in an open file, which the stop
    // commits.
    let collector = c.start_collector_with_file_age(3000);
    let agent = c.start_agent("gw", "plain");
    let file = c.logs_dir("gw").join("gw.log");
    append(&file, (0..100).map(|i| line("gw", i)));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 100), "{}", agent.log_text());
    let acked = || {
        let (_, body) = c.http_get("gw", "/health");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        health["sources"]["app"]["acked"].as_u64().unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(10), || acked() == 100), "acked {}", acked());
    const N: usize = 5000;
    append(&file, (100..N).map(|i| line("gw", i)));
    assert!(wait_until(DEADLINE, || lines_read(&c, "gw") >= N), "{}", agent.log_text());
    std::thread::sleep(Duration::from_millis(300));
    assert!(count_logs(&c.dataset()) < N, "the last lines wait in an open file");
    let collector_log = collector.stop_and_read_log();
    let committed = count_logs(&c.dataset()) as u64;
    assert_eq!(committed, N as u64, "the stop commits what it holds");
    let ok = wait_until(Duration::from_secs(5), || acked() == committed);
    let refusals = || {
        let (_, metrics) = c.http_get("gw", "/metrics");
        metrics.lines().filter(|l| l.contains("refus") || l.contains("watermark")).collect::<Vec<_>>().join("\n")
    };
    assert!(
        ok,
        "acked {} of the {committed} committed\n{}\n{}\n{collector_log}",
        acked(),
        refusals(),
        agent.log_text()
    );
    agent.stop();
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "[[source]]\nname = \"a/b\"\npaths = [\"x\"]\n").unwrap();
    let out =
        std::process::Command::new(BIN).args(["agent", "--check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("source name \"a/b\""), "{err}");
    std::fs::write(&cfg, "[bus]\nnode = \"gw1\"\nmode = \"router\"\n").unwrap();
    let out =
        std::process::Command::new(BIN).args(["agent", "--check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown variant `router`"));
}

/// `agent --check` says what a start would meet on this host, and refuses values a start
/// could not live with, each naming its key.
#[test]
fn check_says_what_a_start_would_meet() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    let check = |data_dir: &std::path::Path, extra: &str, agent_extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[bus]\nnode = \"gw1\"\n[agent]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n{agent_extra}\n\
                 [metrics]\nstatsd_listen = \"\"\n{extra}",
                data_dir.display().to_string()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["agent", "--check", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let data = dir.path().join("data");
    let (ok, out, err) = check(&data, "", "");
    assert!(ok && out.contains(": ok (0 sources)"), "{out}{err}");
    assert!(!data.exists(), "a check makes no data directory");
    // The data directory held by a running agent (its lock taken here).
    std::fs::create_dir_all(&data).unwrap();
    let lock = std::fs::File::create(data.join("agent.lock")).unwrap();
    lock.try_lock().unwrap();
    // A changed config is checked while its agent runs: a note, not an error, and the ports
    // that agent holds are not looked at.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (ok, out, err) = check(&data, &format!("[gateway]\ntcp_listen = \"127.0.0.1:{port}\"\n"), "");
    assert!(ok && out.contains("note: ") && out.contains("is held by a running agent"), "{out}{err}");
    drop(lock);
    // A gateway socket path too long for a Unix socket.
    let deep = dir.path().join("d".repeat(120));
    let (ok, _, err) = check(&deep, "", "");
    assert!(!ok && err.contains("gateway.socket") && err.contains("a Unix socket's path may have"), "{err}");
    // A port in use, with the data directory free: another process holds it.
    let (ok, _, err) = check(&data, &format!("[gateway]\ntcp_listen = \"127.0.0.1:{port}\"\n"), "");
    assert!(!ok && err.contains(&format!("gateway.tcp_listen 127.0.0.1:{port}")), "{err}");
    // Values a start could not live with.
    for (agent_extra, extra, key) in [
        ("", "[gateway]\nmax_connections = 9223372036854775807\n", "gateway.max_connections"),
        ("http_max_body_bytes = 9223372036854775807", "", "agent.http_max_body_bytes"),
        ("poll_interval_ms = 600000", "", "agent.poll_interval_ms"),
    ] {
        let (ok, _, err) = check(&data, extra, agent_extra);
        assert!(!ok && err.contains(key) && !err.contains("panicked"), "{key}: {err}");
    }
    let (ok, _, err) = check(std::path::Path::new(""), "", "");
    assert!(!ok && err.contains("agent.data_dir is empty"), "{err}");
    // A token no header can carry, and a bus port in use.
    let (ok, _, err) = check(&data, "", "http_token = \" tok \"");
    assert!(!ok && err.contains("has spaces at either end"), "{err}");
    let (ok, _, err) = check(&data, "", "batch_max_delay_ms = 600000");
    assert!(!ok && err.contains("agent.batch_max_delay_ms"), "{err}");
    let bus_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bus_addr = bus_port.local_addr().unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[bus]\nnode = \"gw1\"\nlisten = [\"tcp/{bus_addr}\"]\n[agent]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n\
             [metrics]\nstatsd_listen = \"\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let out =
        std::process::Command::new(BIN).args(["agent", "--check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("bus.listen tcp/{bus_addr}")), "{err}");
    // A source whose path is a directory: a warning that says what to write.
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let source = format!("[[source]]\nname = \"app\"\npaths = [{:?}]\n", logs.display().to_string());
    let (ok, out, err) = check(&data, &source, "");
    assert!(ok && out.contains("is a directory, which matches no file") && out.contains("/logs/*.log"), "{out}{err}");
}

#[test]
fn query_reports_bad_sql_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    // A collector's dataset with nothing committed yet.
    std::fs::create_dir_all(dir.path().join("_switchboard/log")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["query", "--data", dir.path().to_str().unwrap(), "SELEC 1"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("SELEC"), "{err}");
    assert!(!err.contains("backtrace") && !err.contains("panicked"), "{err}");
}

#[test]
fn hostile_lines_arrive_flagged_and_bounded() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let file = c.logs_dir("gw").join("x.log");
    // Present before the agent starts with start_at = "end": must not be shipped.
    append(&file, (0..10).map(|i| format!("old line {i}")));
    let agent = c.start_agent_with("gw", "plain", &[], "start_at = \"end\"\nmax_line_bytes = 65536");
    assert!(wait_until(DEADLINE, || std::fs::read_to_string(c.path().join("agent-gw.log"))
        .unwrap_or_default()
        .contains("tailing file")));
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"crlf line\r\n");
    bytes.extend_from_slice(b"bad \xff\xfe utf8\n");
    bytes.extend(std::iter::repeat_n(b'z', 10 << 20)); // a 10 MB line
    bytes.extend_from_slice(b"\nafter the long one\npartial");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .map(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap()
        .unwrap();
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 4), "{}", agent.log_text());
    append(&file, std::iter::once(" completed".to_owned()));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 5), "{}", agent.log_text());
    agent.stop();
    collector.stop();
    let mut rows = read_logs(&c.dataset());
    rows.sort_by_key(|r| r.seq);
    let msgs: Vec<&str> =
        rows.iter().map(|r| if r.message.len() > 40 { "<long>" } else { r.message.as_str() }).collect();
    assert_eq!(
        msgs,
        vec!["crlf line", "bad \u{FFFD}\u{FFFD} utf8", "<long>", "after the long one", "partial completed"]
    );
    assert!(rows[1].invalid_utf8 && rows[1].raw.as_deref() == Some(&b"bad \xff\xfe utf8"[..]));
    assert!(!rows[0].invalid_utf8 && rows[0].raw.is_none());
    assert!(rows[2].truncated && rows[2].message.len() == 65536);
    assert!(!rows[3].truncated);
    assert_exactly_once(&rows);
}

/// A node rebuilt empty whose source reads from the end finds new lines only: they are numbered
/// on above what the collector holds of the stream from the node's earlier life, not again from
/// 0 (where the collector would drop them as duplicates).
#[test]
fn a_source_read_from_its_end_on_a_node_rebuilt_empty_numbers_on() {
    rebuild_a_node_reading_from_the_end(false);
}

/// The same rebuild while no collector runs: the new lines wait in their file until a collector
/// has said how far it holds the stream, and are then numbered on above it. Read at once, they
/// were numbered from 0 and dropped by the collector as repeats of the earlier life's, unsaid.
#[test]
fn a_node_rebuilt_empty_while_no_collector_runs_keeps_its_new_lines() {
    rebuild_a_node_reading_from_the_end(true);
}

/// Ten lines in a node's first life, its `data_dir` emptied, ten in its second (written while
/// no collector runs when `collector_down`): both lives' lines once each, the second's numbered
/// 10 to 19.
fn rebuild_a_node_reading_from_the_end(collector_down: bool) {
    let c = Cluster::new();
    let mut collector = Some(c.start_collector());
    let file = c.logs_dir("gw").join("x.log");
    append(&file, std::iter::once("before the first start".to_owned()));
    let tailing = |p: &Proc| wait_until(DEADLINE, || p.log_text().contains("tailing file"));
    let agent = c.start_agent_with("gw", "plain", &[], "start_at = \"end\"");
    assert!(tailing(&agent), "{}", agent.log_text());
    append(&file, (0..10).map(|i| format!("first life {i}")));
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 10), "{}", agent.log_text());
    agent.stop();
    if collector_down {
        if let Some(p) = collector.take() {
            p.stop();
        }
    }
    std::fs::remove_dir_all(c.agent_state("gw")).unwrap();
    let agent = c.start_agent_with("gw", "plain", &[], "start_at = \"end\"");
    if collector_down {
        assert!(tailing(&agent), "{}", agent.log_text());
        append(&file, (0..10).map(|i| format!("second life {i}")));
        // Longer than a read and a batch: lines read now would be numbered from 0.
        std::thread::sleep(Duration::from_secs(2));
        collector = Some(c.start_collector());
    } else {
        let numbered_on = wait_until(Duration::from_secs(20), || {
            agent.log_text().contains("holds stream gw/log/app up to 9 from an earlier life")
        });
        assert!(numbered_on && tailing(&agent), "{}", agent.log_text());
        append(&file, (0..10).map(|i| format!("second life {i}")));
    }
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= 20), "{}", agent.log_text());
    let log = agent.log_text();
    agent.stop();
    if let Some(p) = collector {
        p.stop();
    }
    let mut rows = read_logs(&c.dataset());
    rows.sort_by_key(|r| r.seq);
    assert_exactly_once(&rows);
    let second: Vec<i64> = rows.iter().filter(|r| r.message.starts_with("second life")).map(|r| r.seq).collect();
    assert_eq!(second, (10..20).collect::<Vec<i64>>(), "{log}");
}
