//! The operator's view with real processes on loopback: `switchboard status` (JSON, text, exit
//! codes) and the status page, against a collector and three agents, one of which is killed.

mod common;

use std::time::{Duration, Instant};

use common::limits::{http_post, LimitsNode};
use common::{append, free_port, numbered, wait_until, Cluster, BIN};
use serde_json::Value;

/// Run `switchboard status` against `endpoint`: (exit code, stdout, stderr).
fn status(c: &Cluster, endpoint: &str, args: &[&str]) -> (i32, String, String) {
    tool(c, &["status"], endpoint, args)
}

/// Run `switchboard <command>` against `endpoint`: (exit code, stdout, stderr).
fn tool(c: &Cluster, command: &[&str], endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(command)
        .args(args)
        .args(["--connect", endpoint, "--cluster", &c.cluster])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status_json(c: &Cluster) -> (i32, Value) {
    let (code, out, err) = status(c, &c.endpoint, &["--format", "json"]);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}")))
}

/// `http://127.0.0.1:<port>` of a process of the test cluster.
fn url(c: &Cluster, name: &str) -> String {
    format!("http://127.0.0.1:{}", c.http_port(name))
}

/// Run `docs/keepalived/check-switchboard` with `args`: its exit code.
fn check(args: &[&str]) -> i32 {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/keepalived/check-switchboard");
    let out = std::process::Command::new("sh").arg(script).args(args).output().unwrap();
    out.status.code().unwrap_or(-1)
}

/// Every `switchboard_*` metric name in the Grafana dashboard's queries (which must be valid
/// dashboard JSON with a Prometheus target in every panel).
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana/switchboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut names = std::collections::BTreeSet::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel without targets: {p}"));
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("target without expr: {t}"));
            let mut rest = expr;
            while let Some(i) = rest.find("switchboard_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

fn node<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == name)).unwrap_or(&Value::Null)
}

/// A collector and three agents in a full mesh, each tailing `app` and using limits and DLRs.
fn cluster(c: &Cluster) -> (common::Proc, Vec<LimitsNode>) {
    let collector = c.start_collector();
    let mut agents: Vec<LimitsNode> = Vec::new();
    for name in ["gw1", "gw2", "gw3"] {
        let connect: Vec<String> =
            std::iter::once(c.endpoint.clone()).chain(agents.iter().map(LimitsNode::endpoint)).collect();
        let source = format!(
            "[[source]]\nname = \"app\"\npaths = [\"{}/*.log\"]\nformat = \"plain\"\n",
            c.logs_dir(name).display()
        );
        agents.push(c.start_limits_agent(name, &connect, "", &source));
    }
    (collector, agents)
}

#[test]
fn status_shows_the_cluster_and_a_killed_node_as_gone_with_exit_codes() {
    let c = Cluster::new();
    let (_collector, mut agents) = cluster(&c);
    append(&c.logs_dir("gw1").join("app.log"), (0..500).map(|i| numbered("gw1", i)));
    assert!(
        wait_until(Duration::from_secs(30), || status_json(&c).0 == 0),
        "never healthy: {:?}",
        status_json(&c).1["problems"]
    );
    c.set_limits(&c.endpoint, "[[limit]]\nkey = \"op:*\"\nrate = 1000\n", "status test");
    for gw in ["gw1", "gw2", "gw3"] {
        for _ in 0..20 {
            http_post(c.http_port(gw), "/v1/limits/acquire", r#"{"key": "op:a"}"#);
        }
    }
    http_post(
        c.http_port("gw1"),
        "/v1/dlr/register",
        r#"{"connector": "smsc", "msg_id": "m1", "destination": "+4915100000"}"#,
    );

    // Everything the issue names, in one JSON document.
    let ok = wait_until(Duration::from_secs(30), || {
        let (code, s) = status_json(&c);
        let stream = s["streams"].as_array().and_then(|a| a.iter().find(|x| x["stream"] == "gw1/log/app").cloned());
        code == 0
            && stream.is_some_and(|x| x["committed"] == 500 && x["head"] == 500 && x["lag_records"] == 0)
            && s["limits"][0]["key"] == "op:a"
            && s["dlr"].as_array().is_some_and(|d| d.len() == 3)
            && s["dlr"].as_array().is_some_and(|d| d.iter().any(|x| x["node"] == "gw1" && x["own_open"] == 1))
    });
    let (code, s) = status_json(&c);
    assert!(ok, "exit {code}: {:#} {:#}", s["streams"], s["limits"]);
    assert_eq!(s["level"], "ok");
    for n in ["gw1", "gw2", "gw3"] {
        let row = node(&s, n);
        assert_eq!((row["alive"].as_bool(), row["answered"].as_bool()), (Some(true), Some(true)), "{row}");
        assert_eq!(row["limits_revision"], 1, "{row}");
        assert!(row["sources"].as_array().is_some_and(|a| a.contains(&"app".into())), "{row}");
    }
    let collectors = s["collectors"].as_array().unwrap();
    assert_eq!((collectors.len(), collectors[0]["role"].as_str()), (1, Some("leader")), "{s:#}");
    assert_eq!(collectors[0]["max_file_age_s"].as_f64(), Some(0.3), "max_file_age_ms = 300: {s:#}");
    assert_eq!(s["limits"][0]["shares"].as_object().map(|o| o.len()), Some(3), "{s:#}");

    let (code, text, _) = status(&c, &c.endpoint, &[]);
    assert_eq!(code, 0, "{text}");
    for part in ["OK", "NODES", "COLLECTORS", "STREAMS", "LIMITS", "DLR", "gw1/log/app", "op:a", "leader"] {
        assert!(text.contains(part), "no {part:?} in:\n{text}");
    }

    // --watch redraws every second until Ctrl-C; its exit code is the last state's. The redraws
    // are read as they come: Ctrl-C goes after three, the last of them healthy.
    let mut watch = std::process::Command::new(BIN)
        .args(["status", "--watch", "--format", "json", "--connect", &c.endpoint, "--cluster", &c.cluster])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = {
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        })
    };
    let mut redraws: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !(redraws.len() >= 3 && redraws.last().is_some_and(|r| r["level"] == "ok")) {
        redraws.extend(rx.recv_timeout(Duration::from_millis(200)));
    }
    let drawn = redraws.len();
    common::signal(watch.id(), "-INT");
    // It stops within a redraw's fetch; a watch that missed the Ctrl-C is killed and fails.
    let stopped = wait_until(Duration::from_secs(10), || watch.try_wait().ok().flatten().is_some());
    if !stopped {
        let _ = watch.kill();
    }
    let code = watch.wait().unwrap().code();
    reader.join().unwrap();
    redraws.extend(rx.try_iter());
    assert!(stopped, "status --watch ran on after Ctrl-C");
    assert!(drawn >= 3, "{drawn} redraws in 30 s: {redraws:?}");
    assert!(redraws.iter().all(|r| r["nodes"].as_array().is_some_and(|n| n.len() == 3)), "{redraws:?}");
    let last = redraws.last().map(|r| r["level"].clone());
    assert_eq!(code == Some(0), last == Some("ok".into()), "the exit code {code:?} of the last state, {last:?}");

    // The keepalived check script: an agent passes, only the writing collector passes --leader.
    assert_eq!(check(&[&url(&c, "gw1")]), 0);
    assert_eq!(check(&[&format!("{}/", url(&c, "gw1"))]), 0, "a URL with a trailing slash names the same process");
    assert_eq!(check(&["--strict", &url(&c, "gw1")]), 0);
    assert_eq!(check(&["--token", "t", &url(&c, "gw1")]), 0);
    assert_eq!(check(&[&url(&c, "gw1"), "--token"]), 0, "a --token without its value is no answer from the process");
    assert_eq!(check(&["--leader", &url(&c, "collector")]), 0);
    assert_eq!(check(&["--leader", &url(&c, "gw1")]), 1, "an agent is no collector leader");
    assert_eq!(check(&[&format!("http://127.0.0.1:{}", free_port())]), 2, "nothing listens there");
    assert_eq!(check(&["--strcit", &url(&c, "gw1")]), 2, "a mistyped option is no pass");
    assert_eq!(check(&[&url(&c, "gw1"), &url(&c, "gw2")]), 2, "two URLs: which one?");

    // Every metric the Grafana dashboard queries is one the processes export.
    let exported: String = ["collector", "gw1", "gw2"].iter().map(|p| c.http_get(p, "/metrics").1).collect();
    for name in dashboard_metrics() {
        let found = exported
            .lines()
            .any(|l| l.strip_prefix("# TYPE ").is_some_and(|t| t.split(' ').next() == Some(name.as_str())));
        assert!(found, "docs/grafana/switchboard.json queries {name}, which no process exports");
    }
    // docs/prometheus.md lists every family the processes export, and no other.
    let families: std::collections::BTreeSet<&str> =
        exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let reference =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus.md")).unwrap();
    let listed: std::collections::BTreeSet<&str> =
        reference.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next()).collect();
    assert_eq!(
        families.difference(&listed).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "exported, not in docs/prometheus.md"
    );
    assert_eq!(
        listed.difference(&families).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "in docs/prometheus.md, not exported"
    );

    // kill -9: the node is gone, with when, and the exit code says degraded.
    let killed = Instant::now();
    agents.pop().unwrap().proc.take().unwrap().kill();
    let gone = wait_until(Duration::from_secs(10), || {
        let (code, s) = status_json(&c);
        code == 1 && node(&s, "gw3")["alive"] == false && node(&s, "gw3")["gone_since_ms"].is_u64()
    });
    let (code, s) = status_json(&c);
    assert!(gone, "exit {code}: {s:#}");
    assert!(killed.elapsed() < Duration::from_secs(10));
    let problems: Vec<&str> = s["problems"].as_array().unwrap().iter().filter_map(|p| p["what"].as_str()).collect();
    assert!(problems.iter().any(|p| p.starts_with("node gw3 is gone since")), "{problems:?}");
    assert_eq!(check(&[&url(&c, "gw3")]), 2, "a killed agent fails the check");
    let (_, text, _) = status(&c, &c.endpoint, &[]);
    assert!(text.starts_with("DEGRADED") && text.contains("PROBLEMS") && text.contains("gone"), "{text}");

    // The same from the collector's page, and as JSON.
    let (code, html) = c.http_get("collector", "/status");
    assert_eq!(code, 200);
    assert!(
        html.contains("data-node=\"gw3\" data-state=\"gone\"")
            && html.contains("data-node=\"gw1\" data-state=\"alive\""),
        "{html}"
    );
    let (code, json) = c.http_get("gw1", "/status.json");
    assert_eq!(code, 200);
    let from_agent: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(node(&from_agent, "gw3")["alive"], false, "{from_agent:#}");
}

#[test]
fn status_from_an_agents_config_reaches_it_while_every_collector_is_down() {
    // The agent's file names only the collector; the agent chose its own `listen` and wrote it
    // down in its data directory, where `status --config` finds it.
    let c = Cluster::new();
    let collector = c.start_collector();
    let _gw1 = c.start_agent("gw1", "plain");
    let cfg = c.path().join("agent-gw1.toml");
    let run = || {
        let out = std::process::Command::new(BIN)
            .args(["status", "--format", "json", "--timeout", "5s", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code().unwrap_or(-1), serde_json::from_str::<Value>(&text).unwrap_or(Value::Null), text)
    };
    assert!(wait_until(Duration::from_secs(30), || run().0 == 0), "never healthy: {}", run().2);
    collector.kill();
    let (code, s, text) = run();
    assert!(code != 2 && node(&s, "gw1")["answered"] == true, "exit {code}: {text}");
    std::fs::remove_file(c.agent_state("gw1").join("bus.listen")).unwrap();
    assert_eq!(run().0, 2, "without the file the config names only the collector, which is down");
}

/// An agent restarted while every collector is down finds the other agents at the endpoints it
/// noted while the cluster was whole (its `connect` names only the collector).
#[test]
fn an_agent_restarted_while_every_collector_is_down_finds_the_others() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let _gw1 = c.start_agent("gw1", "plain");
    let gw2 = c.start_agent("gw2", "plain");
    let listen = c.agent_state("gw1").join("bus.listen");
    assert!(wait_until(Duration::from_secs(15), || listen.exists()));
    let gw1_at = std::fs::read_to_string(listen).unwrap();
    let peers = c.agent_state("gw2").join("bus.peers");
    let noted = wait_until(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&peers).unwrap_or_default();
        text.contains(gw1_at.trim()) && text.contains(&c.endpoint)
    });
    assert!(noted, "gw2 noted {:?}, gw1 listens at {gw1_at}", std::fs::read_to_string(&peers));
    collector.kill();
    gw2.kill();
    let _gw2 = c.start_agent("gw2", "plain");
    let sees_gw1 = || c.http_get("gw2", "/health").1.contains("\"node/gw1\"");
    assert!(wait_until(Duration::from_secs(15), sees_gw1), "{}", c.http_get("gw2", "/health").1);
}

#[test]
fn the_collectors_status_document_lists_a_stream_with_nothing_committed_yet() {
    // A collector that commits a file only after a minute: the stream's records are announced
    // and none is committed when the document is read.
    let c = Cluster::new();
    let cfg = c.path().join("collector-slow.toml");
    std::fs::write(
        &cfg,
        format!(
            "[bus]\ncluster = \"{}\"\nnode = \"c1\"\nlisten = [\"{}\"]\n\n[collector]\ndata_dir = \"{}\"\n\
             max_file_age_ms = 60000\nhttp_listen = \"127.0.0.1:{}\"\n",
            c.cluster,
            c.endpoint,
            c.dataset().display(),
            c.http_port("collector")
        ),
    )
    .unwrap();
    let _collector =
        common::Proc::start("collector", &["collector", "--config", cfg.to_str().unwrap()], c.path().join("c.log"));
    let _gw1 = c.start_agent("gw1", "plain");
    append(&c.logs_dir("gw1").join("app.log"), (0..50).map(|i| numbered("gw1", i)));
    let announced = wait_until(Duration::from_secs(20), || {
        let (_, h) = c.http_get("collector", "/health");
        h.contains("\"gw1/log/app\":{\"records\":50")
    });
    assert!(announced, "{:?}", c.http_get("collector", "/health"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let doc: Value = rt.block_on(async {
        let mut config = zenoh::Config::default();
        config.insert_json5("mode", "\"client\"").unwrap();
        config.insert_json5("connect/endpoints", &format!("[\"{}\"]", c.endpoint)).unwrap();
        config.insert_json5("scouting/multicast/enabled", "false").unwrap();
        let s = zenoh::open(config).await.unwrap();
        let replies = s.get(format!("sb/{}/status/collector/c1", c.cluster)).await.unwrap();
        let reply = replies.recv_async().await.unwrap();
        let doc = serde_json::from_slice(&reply.result().unwrap().payload().to_bytes()).unwrap();
        s.close().await.unwrap();
        doc
    });
    let streams = doc["collector"]["streams"].as_array().cloned().unwrap_or_default();
    let row = streams.iter().find(|r| r["node"] == "gw1" && r["stream"] == "log/app");
    assert!(
        row.is_some_and(|r| r["committed"] == 0 && r["lag_records"] == 50),
        "the document lists the stream with nothing committed: {doc:#}"
    );
}

#[test]
fn status_of_an_address_where_nothing_answers_is_unreachable() {
    let c = Cluster::new();
    let t = Instant::now();
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let (code, out, err) = status(&c, &endpoint, &["--timeout", "1s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("UNREACHABLE") || err.contains("error"), "{out}{err}");
    // It says what zenoh met at the endpoint, without zenoh's source locations.
    assert!(err.contains(&format!("cannot connect to {endpoint}: ")) && err.contains("Connection refused"), "{err}");
    assert!(!err.contains(".rs:"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
    // The other tools that read the cluster's state say the same with the same code.
    for command in [&["limits", "list"][..], &["limits", "history"], &["config", "status"]] {
        let t = Instant::now();
        let (code, out, err) = tool(&c, command, &endpoint, &[]);
        assert_eq!(code, 2, "{command:?}: {out}{err}");
        assert!(err.contains("no node answered"), "{command:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(30), "{command:?} took {:?}", t.elapsed());
    }
    // Something that takes the connection and never answers (a hung process): said too.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp/{}", listener.local_addr().unwrap());
    let (code, out, err) = status(&c, &endpoint, &["--timeout", "1s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&format!("cannot connect to {endpoint}: no answer to the bus's handshake")), "{err}");
    drop(listener);
}

#[test]
fn the_status_page_in_a_real_browser_marks_a_killed_node_gone_without_a_reload() {
    let c = Cluster::new();
    let (_collector, mut agents) = cluster(&c);
    // Some traffic, so that the page (and its screenshot) has something to show.
    c.set_limits(&c.endpoint, "[[limit]]\nkey = \"operator:*\"\nrate = 200\n", "page test");
    for (i, gw) in ["gw1", "gw2", "gw3"].iter().enumerate() {
        append(&c.logs_dir(gw).join("app.log"), (0..1000 * (i + 1)).map(|n| numbered(gw, n)));
        for _ in 0..50 {
            http_post(c.http_port(gw), "/v1/limits/acquire", r#"{"key": "operator:vodafone"}"#);
        }
    }
    let browser = common::webdriver::Browser::start();
    browser.open(&format!("http://127.0.0.1:{}/status", c.http_port("collector")));
    let alive = |b: &common::webdriver::Browser| {
        b.eval(
            "return [...document.querySelectorAll('tr.node[data-state=\"alive\"]')].map(r => r.dataset.node).join(',')",
        )
    };
    let three = wait_until(Duration::from_secs(30), || alive(&browser) == "gw1,gw2,gw3");
    assert!(three, "the page shows {:?} alive", alive(&browser));
    // A mark on the page: a reload would lose it.
    browser.eval("window.notReloaded = true; return true");

    agents.pop().unwrap().proc.take().unwrap().kill();
    let killed = Instant::now();
    let state = |b: &common::webdriver::Browser| {
        b.eval("const r = document.querySelector('tr.node[data-node=\"gw3\"]'); return r ? r.dataset.state : null")
    };
    let gone = wait_until(Duration::from_secs(15), || state(&browser) == "gone");
    let took = killed.elapsed();
    assert!(gone, "gw3 still {:?} on the page {took:?} after kill -9", state(&browser));
    assert_eq!(browser.eval("return window.notReloaded === true"), true, "the page was reloaded");
    assert_eq!(browser.eval("return document.getElementById('level').dataset.level"), "degraded");
    let problems = browser.eval("return document.querySelector('ul.problems').innerText");
    assert!(problems.as_str().is_some_and(|p| p.contains("node gw3 is gone since")), "{problems}");
    eprintln!("gw3 marked gone on the page {took:?} after kill -9");
    // The process behind the page hangs: the page says so within seconds, not "updated" forever.
    let stamp = |b: &common::webdriver::Browser| b.eval("return document.getElementById('updated').textContent");
    common::signal(_collector.pid(), "-STOP");
    let said = wait_until(Duration::from_secs(10), || {
        stamp(&browser).as_str().is_some_and(|s| s.contains("no answer within 3 s"))
    });
    common::signal(_collector.pid(), "-CONT");
    assert!(said, "a hung process's page says {:?}", stamp(&browser));
    let back =
        wait_until(Duration::from_secs(10), || stamp(&browser).as_str().is_some_and(|s| s.starts_with("updated")));
    assert!(back, "the page did not come back: {:?}", stamp(&browser));
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_status_answer_is_left_out_and_named() {
    let c = Cluster::new();
    let _collector = c.start_collector();
    // A peer that answers the status query with 9 MiB under a node's name.
    let mut config = zenoh::Config::default();
    config.insert_json5("connect/endpoints", &serde_json::json!([c.endpoint]).to_string()).unwrap();
    config.insert_json5("scouting/multicast/enabled", "false").unwrap();
    let evil = zenoh::open(config).await.unwrap();
    let key = format!("sb/{}/status/node/evil", c.cluster);
    let queryable = evil.declare_queryable(&key).await.unwrap();
    let big = vec![b'x'; 9 << 20];
    tokio::spawn(async move {
        while let Ok(q) = queryable.recv_async().await {
            let _ = q.reply(q.key_expr().as_str().replace("*/*", "node/evil"), big.clone()).await;
        }
    });
    let c2 = &c;
    let named = tokio::task::spawn_blocking({
        let (endpoint, cluster) = (c2.endpoint.clone(), c2.cluster.clone());
        move || {
            wait_until(Duration::from_secs(20), || {
                let out = std::process::Command::new(BIN)
                    .args(["status", "--format", "json", "--connect", &endpoint, "--cluster", &cluster])
                    .output()
                    .unwrap();
                let s: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                out.status.code() == Some(1)
                    && s["unreadable"].to_string().contains("node/evil: a status document of 9437184 bytes left out")
            })
        }
    })
    .await
    .unwrap();
    assert!(named, "the 9 MiB answer was not named as left out");
}
