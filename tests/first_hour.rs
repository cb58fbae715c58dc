//! What a new operator meets first: the README's topology is one cluster, a split one is
//! reported, a second process under a live name is refused, `/health` says what is wrong, and
//! config mistakes are said once, in plain text.

mod common;

use std::time::Duration;

use common::limits::http_post;
use common::{append, metric, numbered, wait_until, Cluster};

const DEADLINE: Duration = Duration::from_secs(20);

fn health(c: &Cluster, name: &str) -> serde_json::Value {
    serde_json::from_str(&c.http_get(name, "/health").1).unwrap_or_default()
}

/// Whether `name`'s `/health` says `degraded` with a problem containing `text`.
fn degraded_with(c: &Cluster, name: &str, text: &str) -> bool {
    let h = health(c, name);
    h["status"] == "degraded"
        && h["problems"].as_array().is_some_and(|p| p.iter().any(|p| p.as_str().is_some_and(|s| s.contains(text))))
}

fn sees(c: &Cluster, name: &str) -> usize {
    health(c, name)["mesh"]["sees"].as_array().map_or(0, Vec::len)
}

/// The README's config: agents name only the collector's endpoint, and nothing else.
#[test]
fn the_readme_topology_is_one_cluster() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let rest = "[dlr]\nenabled = true\n";
    let agents: Vec<_> = ["gw1", "gw2", "gw3"]
        .iter()
        .map(|n| c.start_agent_config(n, std::slice::from_ref(&c.endpoint), "", rest))
        .collect();
    for n in ["gw1", "gw2", "gw3", "collector"] {
        assert!(wait_until(DEADLINE, || sees(&c, n) == 4), "{n} sees {:?}", health(&c, n)["mesh"]);
    }
    // Limits are shared by all three, and settable through the collector's endpoint.
    c.set_limits(&c.endpoint, "[[limit]]\nkey = \"operator:x\"\nrate = 300\n", "readme topology");
    for n in ["gw1", "gw2", "gw3"] {
        assert!(
            wait_until(DEADLINE, || metric(&c.http_get(n, "/metrics").1, "switchboard_agent_limits_known_nodes")
                == Some(3.0)),
            "{n} does not share limits with all three"
        );
    }
    let (ok, list) = c.limits_cli(&c.endpoint, &["list"]);
    assert!(ok && list.contains("operator:x"), "{list}");
    // A DLR registered on gw1 is found from gw2.
    let (code, _, body) = http_post(
        c.http_port("gw1"),
        "/v1/dlr/register",
        r#"{"connector":"smsc","msg_id":"m-1","destination":"+49151"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let (code, _, body) = http_post(c.http_port("gw2"), "/v1/dlr/resolve", r#"{"connector":"smsc","msg_id":"m-1"}"#);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""answered_by":"gw1""#) || body.contains(r#""owner":"gw1""#), "{body}");
    // Settled: nothing to report.
    assert!(wait_until(DEADLINE, || health(&c, "gw2")["status"] == "ok"), "{}", health(&c, "gw2"));
    assert_eq!(health(&c, "collector")["status"], "ok", "{}", health(&c, "collector"));
    for a in agents {
        a.stop();
    }
    collector.stop();
}

/// Agents that cannot reach each other are told so, and so is the collector that sees both.
#[test]
fn a_split_cluster_is_reported() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let a = c.start_agent_config("gw1", std::slice::from_ref(&c.endpoint), "gossip = false", "");
    let b = c.start_agent_config("gw2", std::slice::from_ref(&c.endpoint), "gossip = false", "");
    assert!(
        wait_until(DEADLINE, || degraded_with(
            &c,
            "gw1",
            "node/gw2 is alive (seen by collector/c1) but not reachable from here"
        )),
        "{}",
        health(&c, "gw1")
    );
    assert!(
        wait_until(DEADLINE, || degraded_with(&c, "collector", "node/gw1 does not see node/gw2")),
        "{}",
        health(&c, "collector")
    );
    assert_eq!(c.http_get("gw1", "/health").0, 200, "degraded still serves");
    // gw2 settles its own view on its own poll.
    let settled = wait_until(DEADLINE, || {
        let m = c.http_get("gw2", "/metrics").1;
        metric(&m, "switchboard_mesh_unreachable_processes") == Some(1.0)
            && metric(&m, "switchboard_health_status") == Some(1.0)
    });
    let m = c.http_get("gw2", "/metrics").1;
    assert!(settled, "{m}");
    // With gossip off every link goes where `connect` says: the check reports, it does not dial.
    assert_eq!(metric(&m, "switchboard_mesh_dials_total"), Some(0.0), "{m}");
    assert!(wait_until(DEADLINE, || a.log_text().contains("bus mesh")), "a warning is logged:\n{}", a.log_text());
    a.stop();
    b.stop();
    collector.stop();
}

/// Two agents under one name: the second is refused at start; heads under a live node's name
/// from another instance make the collector say so.
#[test]
fn a_second_process_under_a_live_name_is_refused() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let first = c.start_agent("gw1", "plain");
    assert!(wait_until(DEADLINE, || sees(&c, "collector") == 2));
    // Same node name, its own state and HTTP port.
    let cfg = c.path().join("twin.toml");
    std::fs::write(
        &cfg,
        format!(
            "[bus]\ncluster = \"{}\"\nnode = \"gw1\"\nconnect = [\"{}\"]\n[agent]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:{}\"\n[metrics]\nstatsd_listen = \"\"\n",
            c.cluster,
            c.endpoint,
            c.path().join("twin").display(),
            c.http_port("twin")
        ),
    )
    .unwrap();
    let out =
        std::process::Command::new(common::BIN).args(["agent", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the twin must not start:\n{stderr}");
    assert!(stderr.contains("node/gw1 is already alive in the cluster"), "{stderr}");
    // The first one answers: refused at once, not after waiting out a lease as for a hung one.
    assert!(
        stderr.contains("seen by itself: it answers on the bus") && !stderr.contains("still looks alive"),
        "{stderr}"
    );

    // A writer that slipped through (started at the same moment): its heads name another instance.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let mut config = zenoh::Config::default();
        config.insert_json5("mode", "\"client\"").unwrap();
        config.insert_json5("connect/endpoints", &format!("[\"{}\"]", c.endpoint)).unwrap();
        config.insert_json5("scouting/multicast/enabled", "false").unwrap();
        let s = zenoh::open(config).await.unwrap();
        let key = format!("sb/{}/head/gw1", c.cluster);
        for _ in 0..6 {
            s.put(&key, r#"{"version":1,"streams":{},"instance":"intruder"}"#).await.unwrap();
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        s.close().await.unwrap();
    });
    assert!(
        wait_until(DEADLINE, || metric(
            &c.http_get("collector", "/metrics").1,
            "switchboard_collector_conflicting_writers_total"
        )
        .is_some_and(|v| v >= 1.0)),
        "{}",
        c.http_get("collector", "/metrics").1
    );
    let h = health(&c, "collector");
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["problems"][0].as_str().unwrap_or("").contains("two processes publish as node gw1"), "{h}");
    assert!(collector.log_text().contains("two processes publish as node gw1"));

    // A process of that name that stopped answering just now (hung, or killed on a link that
    // does not close) still holds the name until the lease runs out: a start in that time waits
    // for it instead of failing.
    let _ = std::process::Command::new("kill").args(["-STOP", &first.pid().to_string()]).status();
    let mut twin =
        common::Proc::start("twin", &["agent", "--config", cfg.to_str().unwrap()], c.path().join("twin.log"));
    let joined = wait_until(Duration::from_secs(15), || twin.log_text().contains("joined the bus"));
    assert!(joined && twin.exited().is_none(), "{}", twin.log_text());
    assert!(twin.log_text().contains("node/gw1 still looks alive"), "{}", twin.log_text());
    twin.stop();
    first.kill();
    collector.stop();
}

/// A second agent started on a data directory in use (a double start, a copied config with
/// another name and ports) is refused before it opens or replaces anything there: the first
/// agent's gateway socket, journals and `bus.listen` stay its own.
#[test]
fn a_second_agent_on_a_data_dir_in_use_is_refused_and_touches_nothing() {
    let c = Cluster::new();
    let collector = c.start_collector();
    let first = c.start_agent("gw1", "plain");
    let socket = c.agent_state("gw1").join("gateway.sock");
    let mut client = common::limits::SocketClient::connect(&socket);
    assert_eq!(client.request("PING"), "PONG");
    let listening = std::fs::read_to_string(c.agent_state("gw1").join("bus.listen")).unwrap_or_default();
    // The first agent's file under another node name, with no HTTP port and a bus port of its own.
    let cfg = std::fs::read_to_string(c.path().join("agent-gw1.toml")).unwrap();
    let cfg = cfg
        .replace("node = \"gw1\"", "node = \"gw1b\"\nlisten = [\"tcp/127.0.0.1:0\"]")
        .lines()
        .map(|l| if l.starts_with("http_listen") { "http_listen = \"\"" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let twin = c.path().join("twin.toml");
    std::fs::write(&twin, cfg).unwrap();
    let out =
        std::process::Command::new(common::BIN).args(["agent", "--config", twin.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent must not start:\n{stderr}");
    let said = format!("is in use by another agent (pid {})", first.pid());
    assert!(stderr.contains(&said) && stderr.contains("own data_dir"), "{stderr}");
    assert!(!stderr.contains("joined the bus"), "refused before joining:\n{stderr}");
    assert_eq!(client.request("PING"), "PONG", "the first agent's connection");
    let mut again = common::limits::SocketClient::connect(&socket);
    assert_eq!(again.request("PING"), "PONG", "a new connection to the first agent's socket");
    let now = std::fs::read_to_string(c.agent_state("gw1").join("bus.listen")).unwrap_or_default();
    assert_eq!(now, listening, "bus.listen is the first agent's");
    first.stop();
    collector.stop();
}

/// `/health` of an agent with no collector: degraded, with the reasons, then ok once one is up.
#[test]
fn agent_health_says_what_is_wrong() {
    let c = Cluster::new();
    let rest =
        format!("[[source]]\nname = \"app\"\npaths = [\"{}/*.log\"]\nformat = \"plain\"\n", c.logs_dir("gw").display());
    let agent = c.start_agent_config("gw", std::slice::from_ref(&c.endpoint), "", &rest);
    append(&c.logs_dir("gw").join("a.log"), (0..50).map(|i| numbered("gw", i)));
    assert!(wait_until(DEADLINE, || degraded_with(&c, "gw", "no collector is alive")), "{}", health(&c, "gw"));
    assert!(degraded_with(&c, "gw", "if the cluster runs TLS"), "{}", health(&c, "gw"));
    assert_eq!(c.http_get("gw", "/health").0, 200);
    let collector = c.start_collector();
    assert!(wait_until(DEADLINE, || health(&c, "gw")["status"] == "ok"), "{}", health(&c, "gw"));
    // A collector seen leaving is named, rather than a guess at the configuration.
    collector.stop();
    assert!(wait_until(DEADLINE, || degraded_with(&c, "gw", "seen leaving: collector c1")), "{}", health(&c, "gw"));
    assert!(!degraded_with(&c, "gw", "if the cluster runs TLS"), "{}", health(&c, "gw"));
    agent.stop();
}

/// The lag bound: lines that wait longer than `health_max_lag_ms` make the agent degraded.
#[test]
fn agent_health_reports_lag_past_its_bound() {
    let c = Cluster::new();
    let cfg = c.path().join("lag.toml");
    std::fs::write(
        &cfg,
        format!(
            "[bus]\ncluster = \"{}\"\nnode = \"gw\"\nconnect = [\"{}\"]\n[agent]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:{}\"\nhealth_max_lag_ms = 1000\nwait_for_collector = false\n[metrics]\nstatsd_listen = \"\"\n[[source]]\nname = \"app\"\npaths = [\"{}/*.log\"]\n",
            c.cluster,
            c.endpoint,
            c.agent_state("gw").display(),
            c.http_port("gw"),
            c.logs_dir("gw").display()
        ),
    )
    .unwrap();
    let agent = common::Proc::start("agent", &["agent", "--config", cfg.to_str().unwrap()], c.path().join("lag.log"));
    append(&c.logs_dir("gw").join("a.log"), (0..10).map(|i| numbered("gw", i)));
    let lagging = || degraded_with(&c, "gw", "source app: its oldest uncommitted line is");
    assert!(wait_until(DEADLINE, lagging), "{}", health(&c, "gw"));
    // A second stop signal does not wait for the stop in order under way: it exits at once, 1
    // (a SIGTERM and a SIGINT sent together are two signals; two SIGTERMs may merge into one).
    let mut agent = agent;
    let pid = agent.pid().to_string();
    let sent = std::process::Command::new("sh").args(["-c", &format!("kill -TERM {pid}; kill -INT {pid}")]).status();
    assert!(sent.is_ok_and(|s| s.success()));
    assert!(wait_until(Duration::from_secs(5), || agent.exited().is_some()), "{}", agent.log_text());
    assert_eq!(agent.exited().and_then(|s| s.code()), Some(1), "{}", agent.log_text());
    assert!(agent.log_text().contains("second stop signal: exiting at once"), "{}", agent.log_text());
}

/// Config mistakes: each error said once; an agent with nothing to do refused; one that tails
/// nothing warned about; logs to a file carry no colour codes and no zenoh start-up noise.
#[test]
fn config_mistakes_are_said_once_and_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str, check: bool| {
        let cfg = dir.path().join("a.toml");
        std::fs::write(&cfg, text).unwrap();
        let mut args = vec!["agent", "--config", cfg.to_str().unwrap()];
        if check {
            args.push("--check");
        }
        let out = std::process::Command::new(common::BIN).args(&args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run("[bus]\nnode = \"gw1\"\nconect = []\n", true);
    assert!(!ok);
    assert_eq!(err.matches("unknown field `conect`").count(), 1, "said once:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    let (ok, _, err) = run(
        "[bus]\nnode = \"gw1\"\n[limits]\nenabled = false\n[dlr]\nenabled = false\n[metrics]\nenabled = false\n",
        true,
    );
    assert!(!ok);
    assert!(err.contains("nothing to do"), "{err}");
    // A semantic mistake names the file, as a syntax error does.
    let (ok, _, err) = run("[bus]\nnode = \"gw1\"\n[limits]\nsocket = \"/tmp/x.sock\"\n", false);
    assert!(!ok);
    assert!(err.contains("a.toml") && err.contains("gateway.socket"), "{err}");
    // A CLI tool pointed at a TLS endpoint without certificates is told which flags to give.
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--connect", "quic/127.0.0.1:9"])
        .env_remove("SWITCHBOARD_TLS_CA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-cert"), "{err}");
    let (ok, out, _) = run("[bus]\nnode = \"gw1\"\n", true);
    assert!(ok);
    assert!(out.contains("warning: no [[source]] is configured"), "{out}");
    // A setting no longer used is said, not taken in silence.
    let (ok, out, _) = run("[bus]\nnode = \"gw1\"\n[limits]\nresync_ms = 0\n", true);
    assert!(ok && out.contains("warning: limits.resync_ms is no longer used"), "{out}");
    // What the start would refuse, --check refuses: a data_dir under a file.
    let file = dir.path().join("app.log");
    std::fs::write(&file, "x").unwrap();
    let under_file = format!("[bus]\nnode = \"gw1\"\n[agent]\ndata_dir = \"{}/sub\"\n", file.display());
    let (ok, _, err) = run(&under_file, true);
    assert!(!ok && err.contains("agent.data_dir") && err.contains("is not a directory"), "{err}");
    let collector_check = |text: &str| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(common::BIN)
            .args(["collector", "--config", cfg.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) =
        collector_check(&format!("[bus]\nnode = \"c1\"\n[collector]\ndata_dir = \"{}/data\"\n", file.display()));
    assert!(!ok && err.contains("collector.data_dir") && err.contains("is not a directory"), "{err}");
    let plain_http = "[bus]\nnode = \"c1\"\n[collector]\ndata_dir = \"s3://bucket/x\"\n[collector.store]\nendpoint = \"http://127.0.0.1:9\"\n";
    let (ok, err) = collector_check(plain_http);
    assert!(!ok && err.contains("is plain http") && err.contains("allow_http"), "{err}");

    // A running agent's log, written to a file: plain text, no zenoh start-up warning.
    let c = Cluster::new();
    let agent = c.start_agent("gw", "plain");
    assert!(wait_until(DEADLINE, || agent.log_text().contains("agent started")), "{}", agent.log_text());
    let log = agent.log_text();
    agent.stop();
    assert!(log.contains("agent started") && log.contains("log_sources=1"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file:\n{log}");
    assert!(!log.contains("Scouting delay elapsed"), "{log}");
}

/// The README's topology with two agents (each connects only to the collector, and gossip there
/// links them), once both say `ok`: the collector, gw1, gw2.
fn two_agents_through_the_collector(c: &Cluster) -> (common::Proc, common::Proc, common::Proc) {
    let collector = c.start_collector();
    let a = c.start_agent_config("gw1", std::slice::from_ref(&c.endpoint), "", "");
    let b = c.start_agent_config("gw2", std::slice::from_ref(&c.endpoint), "", "");
    let settled = |n: &str| wait_until(DEADLINE, || health(c, n)["status"] == "ok");
    assert!(settled("gw1") && settled("gw2"), "{}\n{}", health(c, "gw1"), health(c, "gw2"));
    (collector, a, b)
}

/// Two agents that met through gossip (each connects only to the collector), one stopped just
/// past the bus lease: both sides drop their link. Their mesh must come back on its own.
#[test]
fn agents_that_met_through_gossip_find_each_other_again_after_a_stall_past_the_lease() {
    let c = Cluster::new();
    let (collector, a, b) = two_agents_through_the_collector(&c);
    common::signal(b.pid(), "-STOP");
    std::thread::sleep(Duration::from_millis(3050));
    common::signal(b.pid(), "-CONT");
    // A split lasts 3 s before it is reported (checked every 2 s): look after that.
    std::thread::sleep(Duration::from_secs(8));
    let healed = wait_until(Duration::from_secs(30), || {
        health(&c, "gw1")["status"] == "ok" && health(&c, "gw2")["status"] == "ok"
    });
    assert!(healed, "the mesh did not heal:\n{}\n{}", health(&c, "gw1"), health(&c, "gw2"));
    a.stop();
    b.stop();
    collector.stop();
}

fn sees_name(c: &Cluster, name: &str, other: &str) -> bool {
    health(c, name)["mesh"]["sees"].as_array().is_some_and(|s| s.iter().any(|m| m == other))
}

/// Two agents that met through gossip lose their direct link (reset) while both keep their
/// collector link: zenoh alone would never dial it again; the mesh check does.
fn a_cut_link_between_agents_is_dialed_again(c: Cluster) {
    let (collector, a, b) = two_agents_through_the_collector(&c);
    // Health can be `ok` before gossip has linked the two (a missing link counts after 3 s).
    let linked = wait_until(DEADLINE, || sees_name(&c, "gw1", "node/gw2") && sees_name(&c, "gw2", "node/gw1"));
    assert!(linked, "{}", health(&c, "gw1"));
    let cut = common::cut_links(a.pid(), b.pid());
    assert!(cut >= 1, "no connection between the two agents was found to reset");
    let at = std::time::Instant::now();
    // The split is seen at once, on both sides (no link between them is left).
    assert!(wait_until(DEADLINE, || !sees_name(&c, "gw1", "node/gw2")), "{}", health(&c, "gw1"));
    let healed =
        wait_until(Duration::from_secs(30), || sees_name(&c, "gw1", "node/gw2") && sees_name(&c, "gw2", "node/gw1"));
    assert!(healed, "the mesh did not heal:\n{}\n{}", health(&c, "gw1"), health(&c, "gw2"));
    eprintln!("the agents see each other again {} ms after the cut", at.elapsed().as_millis());
    // From the moment a process sees the other again, it no longer calls it unreachable (the
    // next poll of the mesh check may be 2 s away).
    for _ in 0..10 {
        for (me, other) in [("gw1", "node/gw2"), ("gw2", "node/gw1")] {
            let h = health(&c, me);
            let sees = h["mesh"]["sees"].as_array().is_some_and(|s| s.iter().any(|m| m == other));
            let unreachable = h["mesh"]["problems"].as_array().is_some_and(|p| {
                p.iter().any(|p| p.as_str().is_some_and(|p| p.starts_with(&format!("{other} is alive"))))
            });
            assert!(!(sees && unreachable), "{me} sees {other} and calls it unreachable: {h}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let opened = |n: &str| metric(&c.http_get(n, "/metrics").1, "switchboard_mesh_dials_opened_total").unwrap_or(0.0);
    assert!(opened("gw1") + opened("gw2") >= 1.0, "healed, but not by a dial of the mesh check");
    let ok = |n: &str| health(&c, n)["status"] == "ok";
    assert!(wait_until(DEADLINE, || ok("gw1") && ok("gw2")), "{}\n{}", health(&c, "gw1"), health(&c, "gw2"));
    a.stop();
    b.stop();
    collector.stop();
}

#[test]
fn a_cut_link_between_agents_heals() {
    a_cut_link_between_agents_is_dialed_again(Cluster::new());
}

#[test]
fn a_cut_tls_link_between_agents_heals() {
    a_cut_link_between_agents_is_dialed_again(Cluster::with_tls(&["collector:c1", "agent:gw1", "agent:gw2"]));
}

/// Anyone on a bus without TLS can answer views: one that names 200 processes alive which no one
/// can reach, and relays for each an address where a listener takes connections and never
/// answers, makes an agent report them and dial a few at a time, not 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_views_make_an_agent_dial_a_few_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;
    let c = Cluster::new();
    let collector = c.start_collector();
    let a = c.start_agent_config("gw1", std::slice::from_ref(&c.endpoint), "", "");
    let settled = tokio::task::block_in_place(|| wait_until(DEADLINE, || health(&c, "gw1")["status"] == "ok"));
    assert!(settled, "{}", health(&c, "gw1"));
    let bus = switchboard_bus::config::read_listening(&c.agent_state("gw1"));
    assert!(!bus.is_empty(), "gw1 names no bus endpoint");

    // Where the forged addresses lead: connections are taken, counted and never answered.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let taken = Arc::new(AtomicUsize::new(0));
    std::thread::spawn({
        let taken = taken.clone();
        move || {
            let mut held = Vec::new();
            for conn in sink.incoming().flatten() {
                taken.fetch_add(1, Relaxed);
                held.push(conn);
            }
        }
    });
    let mut zc = zenoh::Config::default();
    zc.insert_json5("mode", "\"peer\"").unwrap();
    zc.insert_json5("scouting/multicast/enabled", "false").unwrap();
    zc.insert_json5("listen/endpoints", "[]").unwrap();
    zc.insert_json5("connect/endpoints", &serde_json::json!(bus).to_string()).unwrap();
    // Linked to gw1 alone: the collector does not see its views.
    zc.insert_json5("scouting/gossip/enabled", "false").unwrap();
    let forger = zenoh::open(zc).await.unwrap();
    let key = format!("sb/{}/view/node/forger", c.cluster);
    let ghosts: Vec<String> = (0..200).map(|i| format!("node/ghost{i}")).collect();
    let live = serde_json::json!(ghosts);
    let _views = forger
        .declare_queryable(&key)
        .callback({
            let key = key.clone();
            move |query| {
                let asked: Vec<&str> =
                    query.parameters().get("address_of").map(|v| v.split('|').collect()).unwrap_or_default();
                // Each ghost its own zenoh id, as 200 real processes would have.
                let addresses: serde_json::Map<String, serde_json::Value> = asked
                    .iter()
                    .filter_map(|m| {
                        let n: u32 = m.strip_prefix("node/ghost")?.parse().ok()?;
                        let zid = format!("{:x}", 0xabc000 + n);
                        let locators = [format!("tcp/127.0.0.1:{sink_port}")];
                        Some(((*m).to_owned(), serde_json::json!({"zid": zid, "locators": locators})))
                    })
                    .collect();
                let view = serde_json::json!({"version": 1, "live": live, "addresses": addresses});
                let _ = zenoh::Wait::wait(query.reply(&key, view.to_string()));
            }
        })
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        most = most.max(taken.load(Relaxed));
    }
    let h = tokio::task::block_in_place(|| health(&c, "gw1"));
    eprintln!("connections to the forged address in 12 s: {most}; gw1 {}", h["status"]);
    assert!(h["problems"].as_array().is_some_and(|p| p.len() > 100), "the ghosts are reported: {h}");
    // 4 dials a poll, 8 at once; a dial of the sink lasts zenoh's open timeout (10 s).
    assert!((5..=8).contains(&most), "dials in 12 s: {most}");
    forger.close().await.unwrap();
    let back = tokio::task::block_in_place(|| wait_until(DEADLINE, || health(&c, "gw1")["status"] == "ok"));
    assert!(back, "{}", health(&c, "gw1"));
    a.stop();
    collector.stop();
}
