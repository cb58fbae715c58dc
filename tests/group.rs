//! A collector group over one dataset, on a directory and on a real S3 server (moto): the writer
//! killed, hung past the lease and resumed, cut off from the other collector, two collectors
//! starting together, the store stopped. Each test counts every `(node, stream, seq)` at the end,
//! with `switchboard query` (and DuckDB over the files where the test says), and prints the
//! takeover times it saw.

mod common;

use std::time::{Duration, Instant};

use common::group::*;
use common::*;

const DEADLINE: Duration = Duration::from_secs(120);
const NODES: [&str; 3] = ["gw-a", "gw-b", "gw-c"];

/// Two collectors (c1, c2) linked directly, three agents connected to both, writers adding
/// `per_tick` lines every 10 ms per node.
struct Group {
    c: Cluster,
    data: Data,
    env: Vec<(&'static str, String)>,
    members: Vec<Member>,
    agents: Vec<Proc>,
    writers: Vec<Writer>,
}

impl Group {
    fn start(data: impl FnOnce(&Cluster) -> (Data, Vec<(&'static str, String)>), per_tick: usize) -> Self {
        let c = Cluster::new();
        let (data, env) = data(&c);
        let (p1, p2) = (free_port(), free_port());
        let mut members = vec![
            Member { name: "c1".into(), port: p1, proc: None },
            Member { name: "c2".into(), port: p2, proc: None },
        ];
        members[0].proc = Some(start_member(&c, "c1", p1, &[], &data));
        let leader = wait_for_leader(&c, &["c1"], Duration::from_secs(30));
        assert_eq!(leader, Some(0), "c1 alone should lead\n{}", members[0].proc.as_ref().unwrap().log_text());
        let e1 = members[0].endpoint();
        members[1].proc = Some(start_member(&c, "c2", p2, &[e1], &data));
        let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
        let agents = NODES.iter().map(|n| start_group_agent(&c, n, &eps)).collect();
        let writers = NODES
            .iter()
            .map(|n| Writer::start(n, c.logs_dir(n).join("app.log"), per_tick, usize::MAX, |_, _| {}))
            .collect();
        Self { c, data, env, members, agents, writers }
    }

    fn names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    fn leader(&self) -> usize {
        let names = self.names();
        let i = wait_for_leader(&self.c, &names, Duration::from_secs(30));
        i.unwrap_or_else(|| panic!("no leader\n{}", self.logs()))
    }

    fn restart(&mut self, i: usize) {
        let other = self.members[1 - i].endpoint();
        let connect = if i == 1 { vec![other] } else { Vec::new() };
        let name = self.members[i].name.clone();
        self.members[i].proc = Some(start_member(&self.c, &name, self.members[i].port, &connect, &self.data));
    }

    fn logs(&self) -> String {
        // zenoh's own lines (late replies, query timeouts) drown the project's; leave them out.
        let ours = |text: String| text.lines().filter(|l| !l.contains(" zenoh::")).collect::<Vec<_>>().join("\n");
        self.members
            .iter()
            .filter_map(|m| m.proc.as_ref())
            .chain(&self.agents)
            .map(|p| format!("--- {}\n{}\n", p.name, ours(p.log_text())))
            .collect()
    }

    /// Stop the writers, wait until every line is stored, stop everything, check exactly once.
    fn finish(mut self) -> Cluster {
        let counts: Vec<(String, usize)> =
            std::mem::take(&mut self.writers).into_iter().zip(NODES).map(|(w, n)| (n.to_owned(), w.stop())).collect();
        let total: usize = counts.iter().map(|x| x.1).sum();
        let ok = wait_until(DEADLINE, || stored(&self.data, &self.env) >= total as u64);
        assert!(ok, "the dataset holds {} of {total}\n{}", stored(&self.data, &self.env), self.logs());
        for a in std::mem::take(&mut self.agents) {
            a.stop();
        }
        for m in &mut self.members {
            if let Some(p) = m.proc.take() {
                p.stop();
            }
        }
        let expected: Vec<(&str, usize)> = counts.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        assert_exactly_once_by_query(&self.data, &self.env, &expected);
        if let Data::Dir(dir) = &self.data {
            let rows = read_logs(dir);
            assert_exactly_once(&rows);
            for (n, k) in &expected {
                assert_lines(&rows, n, *k);
            }
        }
        self.c
    }
}

fn local(c: &Cluster) -> (Data, Vec<(&'static str, String)>) {
    (Data::Dir(c.dataset()), Vec::new())
}

fn takeovers_report(label: &str, times: &[Duration]) {
    let mut ms: Vec<u128> = times.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    eprintln!("{label}: takeover (fault to first commit by the new writer) in ms: {ms:?}");
}

/// kill -9 of whichever collector writes, four times at pseudo-random moments (so some land
/// mid-commit), alternating; the killed one comes back as a standby each time.
fn kill_the_writer_repeatedly(g: &mut Group) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut seed = 0x5eed_u64;
    for round in 0..4 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(1000 + (seed >> 33) % 1500));
        let i = g.leader();
        let survivor = g.members[1 - i].name.clone();
        eprintln!("round {round}: kill -9 {} (pid {})", g.members[i].name, g.members[i].pid());
        let fault = Instant::now();
        g.members[i].proc.take().unwrap().kill();
        let t = takeover_time(&g.c, &survivor, fault, Duration::from_secs(30));
        let t = t.unwrap_or_else(|| panic!("{survivor} did not take over\n{}", g.logs()));
        times.push(t);
        // The survivor wrote what it had buffered as a standby.
        let taken = metric(
            &http_get(g.c.http_port(&survivor), "/metrics").1,
            "switchboard_collector_standby_payloads_taken_total",
        );
        assert!(taken.is_some_and(|n| n >= 1.0), "{survivor} took over with an empty buffer: {taken:?}");
        g.restart(i);
        assert!(
            wait_until(Duration::from_secs(20), || role(&g.c, &g.members[i].name).as_deref() == Some("standby")),
            "the restarted collector rejoins as a standby\n{}",
            g.logs()
        );
    }
    times
}

#[test]
fn killing_the_writer_repeatedly_on_a_directory_loses_and_doubles_nothing() {
    let mut g = Group::start(local, 10);
    let times = kill_the_writer_repeatedly(&mut g);
    takeovers_report("directory, kill -9", &times);
    // A planned stop (SIGTERM): the writer commits its open files before it leaves the bus, so
    // the standby claims after that commit and fences nothing.
    let i = g.leader();
    let survivor = g.members[1 - i].name.clone();
    let log = g.members[i].proc.take().unwrap().stop_and_read_log();
    assert!(!log.contains("commit failed") && !log.contains("stepped down"), "{log}");
    let took = wait_until(Duration::from_secs(20), || role(&g.c, &survivor).as_deref() == Some("leader"));
    assert!(took, "{survivor} takes over after a planned stop\n{}", g.logs());
    g.restart(i);
    let c = g.finish();
    // Every claim is in the log: the first, one per kill, one for the planned stop, and one more
    // if the writer was stopped first at the end (the standby takes over before it stops too).
    let claims = claims_in(&c.dataset()).len();
    assert!((6..=7).contains(&claims), "{:?}", claims_in(&c.dataset()));
    assert_independent_readers_agree(&c);
}

#[test]
fn a_hung_writer_that_resumes_after_a_takeover_commits_nothing() {
    let g = Group::start(local, 10);
    std::thread::sleep(Duration::from_secs(2));
    let i = g.leader();
    let (hung, other) = (g.members[i].name.clone(), g.members[1 - i].name.clone());
    let pid = g.members[i].pid();
    let committed_before = |g: &Group| {
        metric(&http_get(g.c.http_port(&hung), "/metrics").1, "switchboard_collector_files_committed_total")
    };
    eprintln!("SIGSTOP {hung} (pid {pid})");
    let fault = Instant::now();
    signal(pid, "-STOP");
    let t = takeover_time(&g.c, &other, fault, Duration::from_secs(30));
    let t = t.unwrap_or_else(|| panic!("{other} did not take over\n{}", g.logs()));
    takeovers_report("directory, SIGSTOP", &[t]);
    // Let the new writer commit a while, then wake the old one: it holds open files it thinks
    // are its to commit.
    std::thread::sleep(Duration::from_secs(2));
    signal(pid, "-CONT");
    let before = committed_before(&g);
    let stepped = wait_until(Duration::from_secs(20), || {
        role(&g.c, &hung).as_deref() == Some("standby")
            && g.members[i].proc.as_ref().unwrap().log_text().contains("stepped down")
    });
    assert!(stepped, "{hung} should step down\n{}", g.logs());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(committed_before(&g), before, "{hung} committed after it resumed");
    // A standby shows no commit age (its commits were a writer's), and the leader's rows/s is the
    // rows it takes in (commits come in steps of a file age).
    let health = http_get(g.c.http_port(&hung), "/health").1;
    assert!(health.contains("\"last_commit_age_seconds\":null"), "{health}");
    let took_rows = wait_until(Duration::from_secs(10), || {
        let status = http_get(g.c.http_port(&other), "/status.json").1;
        status.split("\"rows_per_s\":").skip(1).any(|rest| {
            rest.split([',', '}']).next().and_then(|n| n.trim().parse::<f64>().ok()).is_some_and(|r| r > 0.0)
        })
    });
    assert!(took_rows, "{}", http_get(g.c.http_port(&other), "/status.json").1);
    let roles = std::fs::read_to_string(g.c.path().join(format!("roles-{hung}.txt"))).unwrap_or_default();
    assert_eq!(roles.lines().collect::<Vec<_>>(), ["standby", "leader", "standby"], "notify of {hung}");
    let roles = std::fs::read_to_string(g.c.path().join(format!("roles-{other}.txt"))).unwrap_or_default();
    assert_eq!(roles.lines().collect::<Vec<_>>(), ["standby", "leader"], "notify of {other}");
    g.finish();
}

#[test]
fn two_collectors_started_together_on_an_empty_dataset_elect_one_writer() {
    let c = Cluster::new();
    let data = Data::Dir(c.dataset());
    let (p1, p2) = (free_port(), free_port());
    let e1 = format!("tcp/127.0.0.1:{p1}");
    let a = start_member(&c, "c1", p1, &[], &data);
    let b = start_member(&c, "c2", p2, &[e1], &data);
    let leader = wait_for_leader(&c, &["c1", "c2"], Duration::from_secs(30));
    assert!(leader.is_some(), "{}\n{}", a.log_text(), b.log_text());
    std::thread::sleep(Duration::from_secs(3));
    let roles = [role(&c, "c1"), role(&c, "c2")];
    let leaders = roles.iter().filter(|r| r.as_deref() == Some("leader")).count();
    assert_eq!(leaders, 1, "{roles:?}");
    let claims = claims_in(&c.dataset());
    assert_eq!(claims.len(), 1, "one claim in the log: {claims:?}\n{}\n{}", a.log_text(), b.log_text());
    a.stop();
    b.stop();

    // A collector that cannot serve its HTTP port exits before it claims anything: on an empty
    // dataset of its own it would otherwise be the writer, and beside a leader it would fence it.
    let taken = std::net::TcpListener::bind(("127.0.0.1", c.http_port("c3"))).unwrap();
    let own = c.path().join("own-dataset");
    let mut c3 = start_member(&c, "c3", free_port(), &[], &Data::Dir(own.clone()));
    let exited = wait_until(Duration::from_secs(20), || c3.exited().is_some());
    assert!(exited, "c3 should exit\n{}", c3.log_text());
    assert!(!c3.exited().is_some_and(|s| s.success()), "{}", c3.log_text());
    assert!(c3.log_text().contains("collector.http_listen"), "{}", c3.log_text());
    assert_eq!(claims_in(&own), Vec::<String>::new(), "{}", c3.log_text());
    drop(taken);
}

/// A second collector under c1's name, on the same dataset but linked to nobody (so the bus
/// could not refuse it at start): the first of the two to read the other's record stops with
/// the reason, and the two do not take the dataset from each other without end.
#[test]
fn a_second_collector_under_a_live_name_stops_one_of_the_two() {
    let c = Cluster::new();
    let data = Data::Dir(c.dataset());
    let c1 = start_member(&c, "c1", free_port(), &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    // The twin's own config: c1's, with a port, an HTTP port and a spool of its own.
    let original = std::fs::read_to_string(c.path().join("c1.toml")).unwrap();
    let http = format!("127.0.0.1:{}", c.http_port("c1"));
    let twin_http = format!("127.0.0.1:{}", c.http_port("c1-twin"));
    let bus_port = original.split("tcp/127.0.0.1:").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned();
    let twin_cfg = original
        .replace(&format!("tcp/127.0.0.1:{bus_port}"), &format!("tcp/127.0.0.1:{}", free_port()))
        .replace(&http, &twin_http)
        .replace("spool-c1", "spool-c1-twin");
    let cfg = c.path().join("c1-twin.toml");
    std::fs::write(&cfg, twin_cfg).unwrap();
    let twin = Proc::start("c1-twin", &["collector", "--config", cfg.to_str().unwrap()], c.path().join("c1-twin.log"));
    let mut both = [c1, twin];
    let one_stopped = wait_until(Duration::from_secs(30), || both.iter_mut().any(|p| p.exited().is_some()));
    let logs = |both: &[Proc; 2]| format!("--- c1\n{}\n--- twin\n{}", both[0].log_text(), both[1].log_text());
    assert!(one_stopped, "{}", logs(&both));
    let stopped = if both[0].exited().is_some() { 0 } else { 1 };
    assert!(!both[stopped].exited().is_some_and(|s| s.success()), "{}", logs(&both));
    let text = both[stopped].log_text();
    eprintln!("stopped: {}", ["c1", "the twin"][stopped]);
    assert!(text.contains("another collector runs under this collector's name"), "{}", logs(&both));
    // The one left keeps the dataset: no more claims, no end of turns.
    std::thread::sleep(Duration::from_secs(8));
    assert!(both[1 - stopped].exited().is_none(), "{}", logs(&both));
    let claims = claims_in(&c.dataset());
    assert!(claims.len() <= 2, "{claims:?}\n{}", logs(&both));
    let [first, second] = both;
    let (_exited, running) = if stopped == 0 { (first, second) } else { (second, first) };
    running.stop();
}

#[test]
fn collectors_cut_off_from_each_other_keep_the_dataset_exactly_once() {
    // c2 reaches c1 only through a proxy; both reach the agents and the store.
    let c = Cluster::new();
    let data = Data::Dir(c.dataset());
    let (p1, p2) = (free_port(), free_port());
    let c1 = start_member(&c, "c1", p1, &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    let proxy = common::limits::Proxy::start(p1);
    let c2 = start_member(&c, "c2", p2, &[proxy.endpoint()], &data);
    let eps = [format!("tcp/127.0.0.1:{p1}"), format!("tcp/127.0.0.1:{p2}")];
    let agents: Vec<Proc> = NODES.iter().map(|n| start_group_agent(&c, n, &eps)).collect();
    let writers: Vec<Writer> =
        NODES.iter().map(|n| Writer::start(n, c.logs_dir(n).join("app.log"), 10, usize::MAX, |_, _| {})).collect();
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("cutting c1 <-> c2");
    proxy.cut();
    // Both think the other is gone: the standby claims, the writer is fenced at its next commit,
    // and the back-off keeps them from taking turns at every commit. The one fenced by a
    // collector it cannot see says the bus is split (degraded), and stops saying it once healed.
    let split = |name: &str| {
        let (_, h) = health(&c, name);
        let problems = h["problems"].as_array().cloned().unwrap_or_default();
        let said = problems.iter().any(|p| p.as_str().is_some_and(|p| p.contains("the bus is split")));
        (said && h["status"] == "degraded", h)
    };
    let cut = Instant::now();
    let said = wait_until(Duration::from_secs(16), || split("c1").0 || split("c2").0);
    assert!(said, "no collector said the bus is split: {}\n{}", split("c1").1, split("c2").1);
    std::thread::sleep(Duration::from_secs(12).saturating_sub(cut.elapsed()));
    eprintln!("healing");
    proxy.heal();
    let cleared = wait_until(Duration::from_secs(15), || !split("c1").0 && !split("c2").0);
    assert!(cleared, "a split still reported after healing: {}\n{}", split("c1").1, split("c2").1);
    std::thread::sleep(Duration::from_secs(2));
    let counts: Vec<(&str, usize)> = writers.into_iter().zip(NODES).map(|(w, n)| (n, w.stop())).collect();
    let total: usize = counts.iter().map(|x| x.1).sum();
    let ok = wait_until(DEADLINE, || count_logs(&c.dataset()) >= total);
    assert!(ok, "{} of {total}\n{}\n{}", count_logs(&c.dataset()), c1.log_text(), c2.log_text());
    let claims = common::group::claims_at(&c.dataset());
    eprintln!(
        "claims (writer, ms since the first): {:?}",
        claims.iter().map(|(w, at)| (w, at - claims[0].1)).collect::<Vec<_>>()
    );
    assert!(claims.len() >= 2, "the cut-off standby should have claimed: {claims:?}");
    // A collector fenced by one it has not seen since that one's claim waits out its back-off
    // (5 s at first) before it claims back; the first takeover after the cut comes at once.
    for pair in claims.windows(2).skip(1) {
        let ((before, at), (after, then)) = (&pair[0], &pair[1]);
        assert!(
            before == after || then.saturating_sub(*at) >= 4_500,
            "{after} claimed {} ms after {before}'s claim: {claims:?}",
            then.saturating_sub(*at)
        );
    }
    for a in agents {
        a.stop();
    }
    c1.stop();
    c2.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    for (n, k) in counts {
        assert_lines(&rows, n, k);
    }
}

fn s3(c: &Cluster, server: &S3Server) -> (Data, Vec<(&'static str, String)>) {
    let _ = c;
    (Data::S3 { url: "s3://sb-test/cluster-a".into(), endpoint: server.endpoint() }, server.env())
}

#[test]
fn killing_the_writer_repeatedly_on_s3_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(dir.path(), "sb-test");
    let mut g = Group::start(|c| s3(c, &server), 10);
    let times = kill_the_writer_repeatedly(&mut g);
    takeovers_report("S3, kill -9", &times);
    let c = g.finish();
    // pyarrow and DuckDB read the bucket's files as plain Parquet.
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/s3_count.py"))
        .args([server.endpoint(), "sb-test".into(), "cluster-a/logs".into()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let sql = query(
        &Data::S3 { url: "s3://sb-test/cluster-a".into(), endpoint: server.endpoint() },
        &server.env(),
        "SELECT count(*) AS n FROM logs",
    )
    .unwrap();
    let n: u64 = sql.lines().nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(text.trim(), format!("rows={n} distinct={n}"), "DuckDB over pyarrow's read of the bucket");
    drop(c);
}

#[test]
fn the_store_stopped_for_a_while_loses_nothing_and_health_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(dir.path(), "sb-test");
    let mut g = Group::start(|c| s3(c, &server), 10);
    std::thread::sleep(Duration::from_secs(2));
    let i = g.leader();
    let name = g.members[i].name.clone();
    eprintln!("pausing the S3 server");
    let paused = Instant::now();
    server.pause(true);
    let said = wait_until(Duration::from_secs(40), || {
        let (code, h) = health(&g.c, &name);
        code == 503 && h.to_string().contains("dataset store")
    });
    assert!(said, "/health of {name} should fail with the store's error: {:?}\n{}", health(&g.c, &name), g.logs());
    // Its sink is stuck on the store, but the bus is not: the collector still answers on it,
    // and its lag in records keeps growing with the heads the agents announce.
    let lag_records = || {
        let (_, h) = health(&g.c, &name);
        h["lag"].as_object().map_or(0, |m| m.values().filter_map(|l| l["records"].as_u64()).sum::<u64>())
    };
    let lag_before = lag_records();
    std::thread::sleep(Duration::from_secs(5));
    let lag_after = lag_records();
    assert!(lag_after > lag_before, "the lag in records moves while the store is down: {lag_before} then {lag_after}");
    let out = std::process::Command::new(BIN)
        .args(["status", "--format", "json", "--timeout", "5s", "--connect", &g.members[i].endpoint()])
        .args(["--cluster", &g.c.cluster])
        .output()
        .unwrap();
    let view = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("collector {name}: ");
    assert!(
        view.contains(&prefix) && view.contains("dataset store"),
        "{name} should answer `status` on the bus with its store error while the store is down: {view}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.logs()
    );
    // The standby killed and started again while the store is down: it cannot read the
    // commit log, so it waits for the store, `/health` failing with why, and joins once it
    // answers (it used to exit after the store's timeout).
    let j = 1 - i;
    let standby = g.members[j].name.clone();
    g.members[j].proc.take().unwrap().kill();
    g.restart(j);
    // It answers while it waits for the store (`starting`, then with the store's error), not
    // after its first attempt has timed out (3 s here); a loaded host may take seconds to start it.
    let at_once = wait_until(Duration::from_secs(10), || {
        let (code, h) = health(&g.c, &standby);
        code == 503 && h["role"] == "starting"
    });
    assert!(at_once, "{standby} restarted: /health {:?}\n{}", health(&g.c, &standby), g.logs());
    let waiting = wait_until(Duration::from_secs(20), || {
        let (code, h) = health(&g.c, &standby);
        code == 503 && h.to_string().contains("does not answer")
    });
    assert!(waiting, "{standby} restarted while the store is down: {:?}\n{}", health(&g.c, &standby), g.logs());
    // Not on the bus yet, it has no view of the cluster: its status page says why, not 404.
    for path in ["/status", "/status.json"] {
        let (code, body) = g.c.http_get(&standby, path);
        assert!(
            code == 503 && body.contains("is starting") && body.contains("does not answer"),
            "{path}: {code} {body}"
        );
    }
    let (_, metrics) = g.c.http_get(&standby, "/metrics");
    // Every family without labels is there from the start (docs/prometheus.md), at 0 but for
    // what says it is starting.
    for line in [
        "switchboard_health_status 2",
        "switchboard_collector_store_failing 1",
        "switchboard_collector_failing 0",
        "switchboard_collector_epoch -1",
        "switchboard_collector_last_commit_age_seconds -1",
        "switchboard_collector_rows_committed_total 0",
        "switchboard_mesh_live_processes 0",
        "switchboard_mesh_dials_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // 30 s without a store in all.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(paused.elapsed()));
    eprintln!("resuming the S3 server");
    server.pause(false);
    let back = wait_until(Duration::from_secs(60), || health(&g.c, &name).0 == 200);
    assert!(back, "/health of {name} should recover: {:?}\n{}", health(&g.c, &name), g.logs());
    let joined = wait_until(Duration::from_secs(60), || role(&g.c, &standby).as_deref() == Some("standby"));
    assert!(joined, "{standby} should join once the store answers: {:?}\n{}", health(&g.c, &standby), g.logs());
    let (_, metrics) = g.c.http_get(&name, "/metrics");
    let shed = metric(&metrics, "switchboard_collector_inputs_shed_total").unwrap_or(0.0);
    eprintln!("{name} shed {shed} live inputs while the store was down");
    assert!(shed > 0.0, "a sink stuck for 30 s sheds what the bus brings rather than hold the links");
    g.finish();
}

/// A group on an S3 server behind a proxy, with files of `age_ms`: c1 writes through the proxy;
/// c2, started once c1 leads, stands by through the proxy with `standby_via_proxy`, else
/// straight to the server; agents and writers running, c2 a standby for 2 s.
fn s3_group_behind_proxy(
    dir: &std::path::Path,
    standby_via_proxy: bool,
    age_ms: u64,
) -> (Group, common::limits::Proxy, S3Server) {
    s3_group_behind_proxy_of(dir, standby_via_proxy, age_ms, &["c2"])
}

/// [`s3_group_behind_proxy`] with the standbys `standbys`.
fn s3_group_behind_proxy_of(
    dir: &std::path::Path,
    standby_via_proxy: bool,
    age_ms: u64,
    standbys: &[&str],
) -> (Group, common::limits::Proxy, S3Server) {
    let server = S3Server::start(dir, "sb-test");
    let path = common::limits::Proxy::start(server.port);
    let url = "s3://sb-test/cluster-a".to_owned();
    let direct = Data::S3 { url: url.clone(), endpoint: server.endpoint() };
    let via_proxy = Data::S3 { url, endpoint: format!("http://127.0.0.1:{}", path.port) };
    let c = Cluster::new();
    let p1 = free_port();
    let mut members = vec![Member {
        name: "c1".into(),
        port: p1,
        proc: Some(start_member_aged(&c, "c1", p1, &[], &via_proxy, "", age_ms)),
    }];
    let leader = wait_for_leader(&c, &["c1"], Duration::from_secs(30));
    assert_eq!(leader, Some(0), "c1 alone should lead\n{}", members[0].proc.as_ref().unwrap().log_text());
    let standby_data = if standby_via_proxy { &via_proxy } else { &direct };
    for name in standbys {
        let port = free_port();
        let earlier: Vec<String> = members.iter().map(Member::endpoint).collect();
        let proc = start_member_aged(&c, name, port, &earlier, standby_data, "", age_ms);
        members.push(Member { name: (*name).into(), port, proc: Some(proc) });
    }
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let agents = NODES.iter().map(|n| start_group_agent(&c, n, &eps)).collect();
    let writers =
        NODES.iter().map(|n| Writer::start(n, c.logs_dir(n).join("app.log"), 10, usize::MAX, |_, _| {})).collect();
    let g = Group { c, data: direct, env: server.env(), members, agents, writers };
    for name in standbys {
        let standing_by = wait_until(Duration::from_secs(30), || role(&g.c, name).as_deref() == Some("standby"));
        assert!(standing_by, "{}", g.logs());
    }
    std::thread::sleep(Duration::from_secs(2));
    (g, path, server)
}

/// The writer's own path to the store cut while the standby's works: the writer stays alive
/// on the bus but commits nothing, and the standby takes the dataset from it once records have
/// waited that long (three file ages, at least 10 s); healed, the old writer finds the claim
/// and stands by. Every line is stored once.
#[test]
fn a_writer_cut_off_from_the_store_alone_is_taken_over_by_a_standby() {
    let dir = tempfile::tempdir().unwrap();
    let (g, path, _server) = s3_group_behind_proxy(dir.path(), false, 1000);
    assert_eq!(g.leader(), 0);
    eprintln!("cutting c1's path to the store");
    let cut = Instant::now();
    path.cut();
    let took = wait_until(Duration::from_secs(60), || role(&g.c, "c2").as_deref() == Some("leader"));
    assert!(took, "c2 should take over from a writer that commits nothing\n{}", g.logs());
    eprintln!("c2 took over {:.1} s after the cut", cut.elapsed().as_secs_f64());
    let said = g.members[1].proc.as_ref().unwrap().log_text();
    assert!(said.contains("collector c1 is alive but has committed nothing"), "{said}");
    path.heal();
    let stood_by = wait_until(Duration::from_secs(60), || role(&g.c, "c1").as_deref() == Some("standby"));
    assert!(stood_by, "c1, its path back, should find the claim and stand by\n{}", g.logs());
    g.finish();
}

/// Two standbys see the writer stall at once: one takes the dataset, and the other does not then
/// take it from the new writer for the stall it just ended (one takeover, not two).
#[test]
fn of_two_standbys_one_takes_over_from_a_stalled_writer_and_the_other_stands_by() {
    let dir = tempfile::tempdir().unwrap();
    let (g, path, _server) = s3_group_behind_proxy_of(dir.path(), false, 1000, &["c2", "c3"]);
    assert_eq!(g.leader(), 0);
    path.cut();
    let took =
        wait_until(Duration::from_secs(60), || ["c2", "c3"].iter().any(|n| role(&g.c, n).as_deref() == Some("leader")));
    assert!(took, "a standby should take over from a writer that commits nothing\n{}", g.logs());
    // Past the moment both standbys judged the writer stalled, and a stall's time more.
    std::thread::sleep(Duration::from_secs(12));
    let takeovers: usize = g.members[1..]
        .iter()
        .map(|m| m.proc.as_ref().map_or(0, |p| p.log_text().matches("this collector now writes the dataset").count()))
        .sum();
    assert_eq!(takeovers, 1, "one takeover from the stalled writer\n{}", g.logs());
    path.heal();
    g.finish();
}

/// The store down for both collectors (it refuses their connections) for longer than a standby's
/// stall, then back: the writer commits what waited and stays the writer; the standby, whose
/// own reads failed too, does not take the dataset from it. Every line is stored once.
#[test]
fn a_store_down_for_every_collector_changes_no_writer() {
    // Files of 3 s: once the store is back, the writer's first commit comes up to 3 s later,
    // which a standby counting the outage as the writer's silence would not wait for.
    let dir = tempfile::tempdir().unwrap();
    let (g, path, _server) = s3_group_behind_proxy(dir.path(), true, 3000);
    let epoch = health(&g.c, "c1").1["epoch"].as_u64();
    eprintln!("the store refuses both collectors");
    path.refuse();
    // Past the standby's stall (three file ages, at least 10 s) with records waiting.
    std::thread::sleep(Duration::from_secs(16));
    path.heal();
    // As long again as the stall, and more: the writer commits what waited, nobody claims.
    let committed = || last_commit_age(&g.c, "c1").is_some_and(|a| a < 6.0);
    assert!(wait_until(Duration::from_secs(20), committed), "c1 should commit again\n{}", g.logs());
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(g.leader(), 0, "c1 should still write\n{}", g.logs());
    assert_eq!(health(&g.c, "c1").1["epoch"].as_u64(), epoch, "the same claim");
    let said = g.members[1].proc.as_ref().unwrap().log_text();
    assert!(!said.contains("taking the dataset"), "{said}");
    g.finish();
}

/// The dataset's disk full under both collectors: reads work, every write fails, the writer's
/// and the standby's alike. The standby does not take the dataset (it cannot write either), and
/// once space returns the writer commits what waited, under the same claim.
#[test]
fn a_full_disk_under_every_collector_changes_no_writer() {
    let c = Cluster::new();
    let Some(mount) = Mount::tmpfs(&c.dataset(), "64m") else { return };
    let (data, env) = local(&c);
    let (p1, p2) = (free_port(), free_port());
    let c1 = start_member(&c, "c1", p1, &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    let c1_endpoint = format!("tcp/127.0.0.1:{p1}");
    let c2 = start_member(&c, "c2", p2, std::slice::from_ref(&c1_endpoint), &data);
    let members = vec![
        Member { name: "c1".into(), port: p1, proc: Some(c1) },
        Member { name: "c2".into(), port: p2, proc: Some(c2) },
    ];
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let agents = NODES.iter().map(|n| start_group_agent(&c, n, &eps)).collect();
    let writers =
        NODES.iter().map(|n| Writer::start(n, c.logs_dir(n).join("app.log"), 10, usize::MAX, |_, _| {})).collect();
    let g = Group { c, data, env, members, agents, writers };
    let standing_by = wait_until(Duration::from_secs(30), || role(&g.c, "c2").as_deref() == Some("standby"));
    assert!(standing_by, "{}", g.logs());
    assert!(wait_until(Duration::from_secs(30), || last_commit_age(&g.c, "c1").is_some()), "{}", g.logs());
    let epoch = health(&g.c, "c1").1["epoch"].as_u64();
    eprintln!("filling the dataset's disk");
    let filler = mount.fill();
    // Past the standby's stall (three file ages, at least 10 s) with records waiting.
    std::thread::sleep(Duration::from_secs(16));
    let failing = health(&g.c, "c1");
    assert_eq!(failing.0, 503, "the writer says its disk is full: {}", failing.1);
    // The standby says so too, steadily: its reads still work, its probe writes do not.
    for _ in 0..6 {
        let standby = health(&g.c, "c2");
        assert_eq!(standby.0, 503, "the standby cannot write either: {}", standby.1);
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::remove_file(filler).unwrap();
    let committed = || last_commit_age(&g.c, "c1").is_some_and(|a| a < 3.0);
    assert!(wait_until(Duration::from_secs(30), committed), "c1 should commit again\n{}", g.logs());
    // As long again as the stall, and more: nobody claims.
    std::thread::sleep(Duration::from_secs(14));
    assert_eq!(g.leader(), 0, "c1 should still write\n{}", g.logs());
    assert_eq!(health(&g.c, "c1").1["epoch"].as_u64(), epoch, "the same claim");
    let said = g.members[1].proc.as_ref().unwrap().log_text();
    assert!(!said.contains("taking the dataset"), "{said}");
    assert!(said.contains("this standby cannot write the dataset's store either"), "{said}");
    g.finish();
    drop(mount);
}

/// A collector added to a running group with no `connect` (as the example config has it) and
/// that no agent lists yet sees nobody: it does not take the dataset from the writer it cannot
/// see, which would stall commits (no agent reaches it) and make the two take turns.
#[test]
fn a_collector_that_sees_no_agent_takes_the_dataset_from_no_writer() {
    let c = Cluster::new();
    let (data, env) = local(&c);
    let p1 = free_port();
    let c1 = start_member(&c, "c1", p1, &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    let members = vec![Member { name: "c1".into(), port: p1, proc: Some(c1) }];
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let agents = NODES.iter().map(|n| start_group_agent(&c, n, &eps)).collect();
    let writers =
        NODES.iter().map(|n| Writer::start(n, c.logs_dir(n).join("app.log"), 10, usize::MAX, |_, _| {})).collect();
    let mut g = Group { c, data: data.clone(), env, members, agents, writers };
    assert!(wait_until(Duration::from_secs(30), || last_commit_age(&g.c, "c1").is_some()), "{}", g.logs());
    let epoch = health(&g.c, "c1").1["epoch"].as_u64();
    let p3 = free_port();
    let c3 = start_member(&g.c, "c3", p3, &[], &data);
    g.members.push(Member { name: "c3".into(), port: p3, proc: Some(c3) });
    // Past its startup grace (two leases) and more.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(role(&g.c, "c3").as_deref(), Some("standby"), "{}", g.logs());
    assert_eq!(health(&g.c, "c1").1["epoch"].as_u64(), epoch, "c1 keeps its claim\n{}", g.logs());
    let said = g.members[1].proc.as_ref().unwrap().log_text();
    assert!(said.contains("neither is any agent"), "{said}");
    g.finish();
}

/// A zenoh client session of the agent listening on `port` (a peer making up messages).
async fn client_of(port: u16) -> zenoh::Session {
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", "\"client\"").unwrap();
    config.insert_json5("connect/endpoints", &format!("[\"tcp/127.0.0.1:{port}\"]")).unwrap();
    config.insert_json5("scouting/multicast/enabled", "false").unwrap();
    zenoh::open(config).await.unwrap()
}

#[test]
fn an_agent_ignores_watermarks_of_a_replaced_writer() {
    // c1 writes (epoch 0), is killed and comes back: its new claim has a later slot, so a
    // watermark that names epoch 0 comes from a writer that was replaced.
    let c = Cluster::new();
    let data = Data::Dir(c.dataset());
    let p1 = free_port();
    let c1 = start_member(&c, "c1", p1, &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    c1.kill();
    let c1 = start_member(&c, "c1", p1, &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    let epoch = health(&c, "c1").1["epoch"].as_u64().unwrap();
    assert!(epoch > 0, "the second claim is in a later slot");
    let agent_port = free_port();
    let rest = format!(
        "[[source]]\nname = \"app\"\npaths = [\"{}/*.log*\"]\nformat = \"plain\"\n",
        c.logs_dir("gw-a").display()
    );
    let bus = format!("gossip = false\nlisten = [\"tcp/127.0.0.1:{agent_port}\"]");
    let agent = c.start_agent_config("gw-a", &[format!("tcp/127.0.0.1:{p1}")], &bus, &rest);
    let w = Writer::start("gw-a", c.logs_dir("gw-a").join("app.log"), 10, usize::MAX, |_, _| {});
    // Wait for the real writer's first watermark.
    let acked = || health(&c, "gw-a").1["sources"]["app"]["acked"].as_u64().unwrap_or(0);
    assert!(wait_until(Duration::from_secs(30), || acked() > 0), "{}", agent.log_text());
    // A stale writer (or anyone) claims that everything up to 10 M is committed, under epoch 0.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let s = client_of(agent_port).await;
        let stranger = format!("sb/{}/watermark/c0/gw-a", c.cluster);
        // A stranger (no live collector is named c0) announces a huge epoch: not taken.
        s.put(&stranger, r#"{"version":1,"streams":{},"epoch":18446744073709551615}"#).await.unwrap();
        // Under the live writer's name: an epoch-0 claim of everything up to 10 M (beyond what
        // the agent journaled), then of what it has (an older epoch than the writer's).
        let key = format!("sb/{}/watermark/c1/gw-a", c.cluster);
        s.put(&key, r#"{"version":1,"streams":{"log/app":10000000},"epoch":0}"#).await.unwrap();
        for _ in 0..5 {
            s.put(&key, r#"{"version":1,"streams":{"log/app":1},"epoch":0}"#).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s.close().await.unwrap();
    });
    let metrics = || c.http_get("gw-a", "/metrics").1;
    let refused = |reason: &str| {
        metric(&metrics(), &format!("switchboard_bus_refused_total{{reason=\"{reason}\"}}")).unwrap_or(0.0)
    };
    let stale = || metric(&metrics(), "switchboard_agent_watermarks_stale_total").unwrap_or(0.0);
    assert!(wait_until(Duration::from_secs(10), || stale() >= 5.0), "stale: {}", stale());
    assert!(refused("watermark_not_live") >= 1.0 && refused("watermark_ahead") >= 1.0, "{}", metrics());
    assert!(acked() < 10_000_000, "the agent forgot data on a replaced writer's word");
    // The real writer's watermarks still count.
    let before = acked();
    assert!(wait_until(Duration::from_secs(20), || acked() > before), "acks stopped after the stranger's epoch");
    // Under the writer's own name, the highest epoch there is (a bus without TLS cannot tell who
    // sent it): the real writer's watermarks are refused as older, until no watermark has been
    // taken for 5 s; then they are followed again.
    rt.block_on(async {
        let s = client_of(agent_port).await;
        let key = format!("sb/{}/watermark/c1/gw-a", c.cluster);
        s.put(&key, r#"{"version":1,"streams":{},"epoch":18446744073709551615}"#).await.unwrap();
        s.close().await.unwrap();
    });
    let stale_before = stale();
    assert!(wait_until(Duration::from_secs(10), || stale() > stale_before), "the forged epoch was not taken");
    let before = acked();
    assert!(wait_until(Duration::from_secs(20), || acked() > before), "deaf to the writer after a forged epoch");
    assert!(agent.log_text().contains("no watermark of c1 for 5 s"), "{}", agent.log_text());
    let n = w.stop();
    assert!(wait_until(DEADLINE, || count_logs(&c.dataset()) >= n), "{} of {n}", count_logs(&c.dataset()));
    // Idle, the writer's watermarks go out once a second (protocol.md), not at every status update.
    let puts = rt.block_on(async {
        let s = client_of(agent_port).await;
        let sub = s.declare_subscriber(format!("sb/{}/watermark/c1/gw-a", c.cluster)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let puts = std::iter::from_fn(|| sub.try_recv().ok().flatten()).count();
        s.close().await.unwrap();
        puts
    });
    assert!((2..=6).contains(&puts), "{puts} watermark puts in 4 s while idle");
    agent.stop();
    c1.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw-a", n);
}

/// A collector whose `[[logs.promote]]` stores a column as another type than the dataset's
/// writer does never writes (its files would make `logs` unreadable as one table): its
/// `/health` says why while it stands by, and it does not take over when the writer dies.
#[test]
fn a_collector_whose_promoted_types_differ_never_writes_and_says_why() {
    let c = Cluster::new();
    let (data, _) = local(&c);
    let (p1, p3) = (free_port(), free_port());
    let c1 = start_member(&c, "c1", p1, &[], &data);
    assert_eq!(wait_for_leader(&c, &["c1"], Duration::from_secs(30)), Some(0), "{}", c1.log_text());
    let odd = "[[logs.promote]]\nname = \"latency_ms\"\ntype = \"string\"\n";
    let c3 = start_member_with(&c, "c3", p3, &[format!("tcp/127.0.0.1:{p1}")], &data, odd);
    let why = "latency_ms (Int64 in the dataset, Utf8 here)";
    let said = wait_until(Duration::from_secs(20), || {
        let (code, body) = c.http_get("c3", "/health");
        code == 503 && body.contains(why)
    });
    assert!(said, "{:?}\n{}", c.http_get("c3", "/health"), c3.log_text());
    c1.kill();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(role(&c, "c3").as_deref(), Some("standby"), "{}", c3.log_text());
    assert!(claims_in(&c.dataset()).iter().all(|w| w == "c1"), "{:?}", claims_in(&c.dataset()));
    c3.stop();
}

/// The commit log removed under a running leader (a store emptied or restored by mistake): the
/// leader finds its own claim gone within seconds and `/health` fails saying so, while it goes
/// on committing what the agents send.
#[test]
fn a_leader_whose_claim_left_the_store_says_so() {
    let mut g = Group::start(local, 1);
    let i = g.leader();
    let name = g.members[i].name.clone();
    let committed = wait_until(Duration::from_secs(30), || last_commit_age(&g.c, &name).is_some());
    assert!(committed, "{name} never committed\n{}", g.logs());
    std::fs::remove_dir_all(g.c.dataset().join("_switchboard/log")).unwrap();
    let said = wait_until(Duration::from_secs(30), || {
        let (code, h) = health(&g.c, &name);
        code == 503 && h.to_string().contains("lost this leader's claim")
    });
    assert!(said, "{name}: {:?}\n{}", health(&g.c, &name), g.logs());
    // A commit after that: its age under the time since the claim was found gone.
    let found = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let committing = wait_until(Duration::from_secs(20), || {
        last_commit_age(&g.c, &name).is_some_and(|age| age < found.elapsed().as_secs_f64())
    });
    for w in std::mem::take(&mut g.writers) {
        w.stop();
    }
    assert!(committing, "{name} stopped committing: {:?}\n{}", health(&g.c, &name), g.logs());
}

/// A collector asked to stop while it waits for a store that does not answer (here one that
/// takes connections and never replies) stops at once and cleanly: it had claimed nothing.
#[test]
fn a_collector_stopped_while_its_store_does_not_answer_stops_cleanly() {
    let c = Cluster::new();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        // Hold every connection open without a word, until the test process ends.
        let mut open = Vec::new();
        for conn in silent.incoming().take(64) {
            match conn {
                Ok(s) => open.push(s),
                Err(_) => break,
            }
        }
    });
    let data = Data::S3 { url: "s3://silent/dataset".into(), endpoint };
    let member = start_member(&c, "c1", free_port(), &[], &data);
    let starting = wait_until(Duration::from_secs(10), || health(&c, "c1").1["role"] == "starting");
    assert!(starting, "{:?}\n{}", health(&c, "c1"), member.log_text());
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let log = member.stop_and_read_log();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(3), "the stop took {took:?}\n{log}");
    assert!(log.contains("stopped before it opened the dataset") && !log.contains("error:"), "{log}");
    drop(held);
}
