//! The bus lets no one in where they don't belong (docs/security.md): mutual TLS refuses a peer
//! without a certificate, the access policy refuses a member that acts as another, and the
//! message checks refuse forged documents even without TLS. Every attempt is a real zenoh
//! session of this test against real collector and agent processes; after each one the refusal
//! is counted where it landed, and at the end the dataset holds every real line exactly once and
//! the real DLR record is intact.

mod common;

use std::time::Duration;

use common::limits::http_post;
use common::{append, assert_exactly_once, free_port, metric, numbered, read_logs, wait_until, Cluster, Proc, BIN};
use serde_json::{json, Value};
use switchboard_bus::config::BusConfig;
use switchboard_bus::dlr::wire::{DlrReport, LookupReply, ReplicaBatch, ReplicaOp, Role as HolderRole, DOC_VERSION};
use switchboard_bus::dlr::{DlrRecord, RecordState};
use switchboard_bus::limits::revision::{History, Revision};
use switchboard_bus::tls::TlsConfig;
use switchboard_bus::wire::log_batch::{self, LogBatchBuilder, LogRow};
use zenoh::Session;

const DLR: &str = "[dlr]\n[[dlr.connector]]\nname = \"dec\"\nids = \"decimal\"\n";

/// A collector and agent `gw1` (its own listen port, a log source, limits and DLRs).
struct Setup {
    c: Cluster,
    _collector: Proc,
    _gw1: Proc,
    gw1_endpoint: String,
}

fn setup(c: Cluster) -> Setup {
    let collector = c.start_collector();
    let port = free_port();
    let proto = c.endpoint.split('/').next().unwrap_or("tcp").to_owned();
    let gw1_endpoint = format!("{proto}/127.0.0.1:{port}");
    let rest = format!(
        "[[source]]\nname = \"app\"\npaths = [\"{}/*.log*\"]\nformat = \"plain\"\n\n[limits]\ninterval_ms = 50\nresync_ms = 1000\n\n{DLR}",
        c.logs_dir("gw1").display()
    );
    let gw1 = c.start_agent_config(
        "gw1",
        std::slice::from_ref(&c.endpoint),
        &format!("listen = [\"{gw1_endpoint}\"]"),
        &rest,
    );
    let s = Setup { c, _collector: collector, _gw1: gw1, gw1_endpoint };
    write_and_wait(&s, 0, 100);
    s
}

/// Append lines `from..to` of gw1 and wait until the dataset holds all `to` of them.
fn write_and_wait(s: &Setup, from: usize, to: usize) {
    append(&s.c.logs_dir("gw1").join("app.log"), (from..to).map(|i| numbered("gw1", i)));
    let ok = wait_until(Duration::from_secs(30), || read_logs(&s.c.dataset()).len() >= to);
    assert!(ok, "only {} of {to} lines stored", read_logs(&s.c.dataset()).len());
}

fn refused(c: &Cluster, process: &str, reason: &str) -> u64 {
    let (_, text) = c.http_get(process, "/metrics");
    metric(&text, &format!("switchboard_bus_refused_total{{reason=\"{reason}\"}}")).unwrap_or(0.0) as u64
}

/// Run `attempt`, then wait until `process` has counted one more refusal for `reason`.
async fn expect_refused<F: std::future::Future>(c: &Cluster, process: &str, reason: &str, attempt: F) -> F::Output {
    let before = refused(c, process, reason);
    let out = attempt.await;
    let ok = wait_until(Duration::from_secs(10), || refused(c, process, reason) > before);
    assert!(ok, "{process} did not count a refusal for {reason} (still {before})");
    out
}

/// A bus session of this test as `identity` (`<role>:<name>`; plain TCP when the cluster has
/// no TLS), connected to `endpoints` only.
async fn session(c: &Cluster, identity: &str, endpoints: &[String]) -> Session {
    session_listening(c, identity, endpoints, &[]).await
}

/// [`session`], also listening on `listen` (a tool connected there is linked to it alone: peers
/// do not route for each other).
async fn session_listening(c: &Cluster, identity: &str, endpoints: &[String], listen: &[String]) -> Session {
    let (role, name) = identity.split_once(':').unwrap();
    let bus = BusConfig {
        cluster: c.cluster.clone(),
        node: format!("hostile-{name}"),
        connect: endpoints.to_vec(),
        listen: listen.to_vec(),
        gossip: false,
        tls: c.tls.as_ref().map(|dir| TlsConfig {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{role}-{name}.crt")),
            key: dir.join(format!("{role}-{name}.key")),
            members: None,
        }),
        ..BusConfig::default()
    };
    let s = switchboard_bus::session::open(&bus, None).await.expect("a member's session opens");
    // Links up and declarations exchanged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s
}

/// Run `switchboard <args>` with the `admin:ops` certificate against `endpoint`.
fn as_admin(c: &Cluster, endpoint: &str, args: &[&str]) -> std::process::Output {
    as_member(c, "admin-ops", endpoint, args)
}

/// Run `switchboard <args>` with the certificate `<role>-<name>` against `endpoint`.
fn as_member(c: &Cluster, who: &str, endpoint: &str, args: &[&str]) -> std::process::Output {
    let dir = c.tls.clone().unwrap();
    std::process::Command::new(BIN)
        .args(args)
        .args(["--connect", endpoint, "--cluster", &c.cluster])
        .args(["--tls-ca", dir.join("ca.crt").to_str().unwrap()])
        .args(["--tls-cert", dir.join(format!("{who}.crt")).to_str().unwrap()])
        .args(["--tls-key", dir.join(format!("{who}.key")).to_str().unwrap()])
        .output()
        .unwrap()
}

fn key(c: &Cluster, rest: &str) -> String {
    format!("sb/{}/{rest}", c.cluster)
}

/// A valid `log_batch` of lines `first..first+n` saying "forged".
fn forged_batch(first: u64, n: u64) -> Vec<u8> {
    let mut b = LogBatchBuilder::new();
    for seq in first..first + n {
        let row = LogRow {
            seq,
            ts_micros: 1_700_000_000_000_000,
            observed_micros: 1_700_000_000_000_000,
            file: "/forged.log",
            offset: seq * 10,
            level: Some("info"),
            message: "forged",
            raw: None,
            truncated: false,
        };
        b.append::<&str, &str>(&row, &[]);
    }
    log_batch::encode(&b.finish().unwrap()).unwrap()
}

async fn put(s: &Session, key: &str, body: impl Into<zenoh::bytes::ZBytes>) {
    s.put(key, body).congestion_control(zenoh::qos::CongestionControl::Block).await.unwrap();
}

/// Send a query with a payload; the replies' texts (errors too).
async fn ask(s: &Session, selector: &str, payload: Option<Vec<u8>>) -> Vec<String> {
    let mut get = s.get(selector).timeout(Duration::from_secs(3));
    if let Some(p) = payload {
        get = get.payload(p);
    }
    let replies = get.await.unwrap();
    let mut out = Vec::new();
    while let Ok(r) = replies.recv_async().await {
        out.push(match r.result() {
            Ok(s) => String::from_utf8_lossy(&s.payload().to_bytes()).into_owned(),
            Err(e) => format!("error: {}", String::from_utf8_lossy(&e.payload().to_bytes())),
        });
    }
    out
}

fn post(c: &Cluster, node: &str, path: &str, body: Value) -> (u16, Value) {
    let (code, _, text) = http_post(c.http_port(node), path, &body.to_string());
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Register message 1001 on gw1; its record as gw1 holds it.
fn register(c: &Cluster) -> DlrRecord {
    let (code, body) = post(c, "gw1", "/v1/dlr/register", json!({"records": [{"connector": "dec", "msg_id": "1001"}]}));
    assert_eq!(code, 201, "{body}");
    record(c)
}

fn record(c: &Cluster) -> DlrRecord {
    let (code, body) = post(c, "gw1", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": "1001"}));
    assert_eq!(code, 200, "{body}");
    serde_json::from_value(body["record"].clone()).unwrap()
}

fn limits_revision(c: &Cluster) -> u64 {
    let (_, body) = c.http_get("gw1", "/v1/limits");
    serde_json::from_str::<Value>(&body).ok().and_then(|v| v["revision"].as_u64()).unwrap_or(0)
}

/// A push of revision `number` (no parent) whose tree is `global/limits.toml` = `limits`.
fn limits_pack(number: u64, limits: &[u8]) -> Vec<u8> {
    limits_pack_after(number, &[], limits).1
}

/// [`limits_pack`] with `parents`, and the revision's id.
fn limits_pack_after(number: u64, parents: &[String], limits: &[u8]) -> (String, Vec<u8>) {
    let rev = switchboard_bus::repo::Revision {
        version: 1,
        number,
        parents: parents.to_vec(),
        author: "x".into(),
        at_ms: 1,
        message: String::new(),
        files: [("global/limits.toml".to_owned(), switchboard_bus::repo::FileEntry::of(limits))].into(),
    };
    (rev.id(), switchboard_bus::repo::wire::Pack::new(rev, [limits]).encode())
}

fn report(status: &str, by: &str) -> Vec<u8> {
    let r = DlrReport {
        version: 1,
        status: status.into(),
        r#final: true,
        reported_at: 1,
        reported_by: by.into(),
        error: None,
        text: None,
        answer_by: None,
    };
    serde_json::to_vec(&r).unwrap()
}

/// A lookup reply in the name of `rec`'s owner, as the owner of a made-up record `id` like `rec`.
fn made_up_reply(rec: &DlrRecord, id: &str) -> Vec<u8> {
    let ghost = DlrRecord { id: id.into(), msg_id: id.into(), gateway_ref: "FORGED".into(), ..rec.clone() };
    let reply = LookupReply {
        version: DOC_VERSION,
        node: rec.owner.clone(),
        role: HolderRole::Owner,
        record: ghost,
        outcome: None,
    };
    serde_json::to_vec(&reply).unwrap()
}

/// A queryable of `s` on `key` that replies `body` on `key` to every query.
async fn liar(s: &Session, key: String, body: Vec<u8>) -> zenoh::query::Queryable<()> {
    let on = key.clone();
    let queryable = s
        .declare_queryable(key)
        .callback(move |q| {
            let _ = zenoh::Wait::wait(q.reply(on.clone(), body.clone()));
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    queryable
}

/// gw1's answer to a report of message `id` that no node holds.
fn report_of(c: &Cluster, id: &str) -> (u16, Value) {
    post(c, "gw1", "/v1/dlr/report", json!({"connector": "dec", "msg_id": id, "status": "DELIVRD"}))
}

fn finish(s: &Setup, rec: &DlrRecord) {
    // The real agent goes on; every real line is stored once, no forged one at all.
    write_and_wait(s, 100, 200);
    let rows = read_logs(&s.c.dataset());
    assert!(rows.iter().all(|r| r.message != "forged" && r.node == "gw1"), "a forged row was stored");
    assert_eq!(assert_exactly_once(&rows).into_values().collect::<Vec<_>>(), [200], "gw1 has one stream of 200 lines");
    assert_eq!(&record(&s.c), rec, "the real DLR record changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_cannot_connect() {
    // On quic/ (the other test is on tls/): QUIC's own checks (UDP buffers) are seen here.
    let c = Cluster::with_tls_on("quic", &["collector:c1", "agent:gw1", "admin:ops"]);
    let s = setup(c);
    let c = &s.c;
    // The processes say they run on TLS.
    let (_, health) = c.http_get("collector", "/health");
    assert!(health.contains("\"tls\":true"), "{health}");
    let (_, text) = c.http_get("gw1", "/metrics");
    assert_eq!(metric(&text, "switchboard_bus_tls"), Some(1.0));
    // The kernel's UDP drops, which quic/ links pay for in stalls, are in its metrics; and a
    // process with a quic/ endpoint warns when new sockets get less than the recommended buffer.
    let drops = metric(&text, "switchboard_host_udp_receive_buffer_errors_total").expect("no UDP drops in /metrics");
    assert!(drops <= switchboard_bus::udp::receive_buffer_drops().unwrap() as f64);
    let small = switchboard_bus::udp::default_receive_buffer().unwrap() < switchboard_bus::udp::RECOMMENDED_BYTES;
    let log = s._gw1.log_text();
    assert_eq!(log.contains("net.core.rmem_default"), small, "{log}");

    // Row 1: a client that trusts the CA but shows no certificate, and a plain TCP client.
    no_certificate_no_entry(&s).await;

    // Row 18: a member sees the cluster: the views answer and the tokens are there.
    let ops = session(c, "admin:ops", std::slice::from_ref(&c.endpoint)).await;
    let views = ask(&ops, &key(c, "view/**"), None).await;
    assert!(views.iter().any(|v| v.contains("collector/c1")), "{views:?}");
    let tokens = ops.liveliness().get(key(c, "*/*")).timeout(Duration::from_secs(3)).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(r) = tokens.recv_async().await {
        if let Ok(s) = r.result() {
            seen.push(s.key_expr().to_string());
        }
    }
    assert!(seen.contains(&key(c, "collector/c1")), "{seen:?}");

    // Row 18 too: `switchboard status` with the admin's certificate sees both processes.
    let out = as_admin(c, &c.endpoint, &["status", "--format", "json"]);
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let answered: Vec<&str> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(status["collectors"].as_array().into_iter().flatten())
        .filter(|p| p["health"] != "silent" && p["alive"] == true)
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(answered, ["gw1", "c1"], "{status:#}");
}

/// A process whose CA is not the cluster's cannot join, and says so in its own log and metrics
/// (zenoh retries the endpoint and said why only at DEBUG: the process looked healthy, alone);
/// once its files are right it joins, and says that too.
#[test]
fn a_process_that_trusts_another_ca_says_why_it_cannot_connect() {
    let c = Cluster::with_tls(&["collector:c1", "agent:gw1", "admin:ops"]);
    let _collector = c.start_collector();
    // gw1's certificate and CA from a CA of its own, the cluster's endpoint and name.
    let mut other = Cluster::with_tls(&["agent:gw1"]);
    other.endpoint = c.endpoint.clone();
    other.cluster = c.cluster.clone();
    let gw1 = other.start_agent("gw1", "plain");
    let said = wait_until(Duration::from_secs(15), || gw1.log_text().contains("cannot connect to"));
    let log = gw1.log_text();
    assert!(said, "nothing said of the endpoint it cannot reach: {log}");
    let line = log.lines().find(|l| l.contains("cannot connect to")).unwrap_or_default();
    assert!(line.contains("WARN") && line.contains(&c.endpoint), "{line}");
    assert!(line.contains("invalid peer certificate") && line.contains("[bus.tls] ca"), "{line}");
    assert!(!line.contains(".rs:"), "zenoh's source location in an operator's line: {line}");
    // At most a line per endpoint a minute, while zenoh retries about once a second.
    std::thread::sleep(Duration::from_secs(3));
    let (_, text) = other.http_get("gw1", "/metrics");
    let failures = metric(&text, "switchboard_bus_connect_failures_total").unwrap_or(0.0);
    assert!(failures >= 2.0, "{failures} failures counted");
    assert_eq!(gw1.log_text().matches("cannot connect to").count(), 1, "{}", gw1.log_text());
    drop(gw1);

    // With the cluster's files it joins, and the line after failures says so.
    std::fs::copy(c.tls.as_ref().unwrap().join("ca.crt"), other.tls.as_ref().unwrap().join("ca.crt")).unwrap();
    for f in ["agent-gw1.crt", "agent-gw1.key", "members"] {
        std::fs::copy(c.tls.as_ref().unwrap().join(f), other.tls.as_ref().unwrap().join(f)).unwrap();
    }
    let gw1 = other.start_agent("gw1", "plain");
    let joined = wait_until(Duration::from_secs(20), || {
        let out = as_admin(&c, &c.endpoint, &["status", "--format", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["nodes"].as_array().into_iter().flatten().any(|n| n["name"] == "gw1" && n["alive"] == true)
    });
    assert!(joined, "gw1 did not join with the cluster's files: {}", gw1.log_text());
    assert!(!gw1.log_text().contains("cannot connect to"), "{}", gw1.log_text());
}

/// Row 1 of the policy, on the cluster's transport: a client that trusts the CA but shows no
/// certificate cannot open a session (counted and logged at the collector as a refusal), nor can
/// a plain TCP client.
async fn no_certificate_no_entry(s: &Setup) {
    let c = &s.c;
    let dir = c.tls.clone().unwrap();
    let mut zc = zenoh::Config::default();
    zc.insert_json5("mode", "\"client\"").unwrap();
    zc.insert_json5("connect/endpoints", &json!([c.endpoint]).to_string()).unwrap();
    zc.insert_json5("transport/link/tls/root_ca_certificate", &json!(dir.join("ca.crt")).to_string()).unwrap();
    zc.insert_json5("transport/link/tls/verify_name_on_connect", "false").unwrap();
    assert!(zenoh::open(zc).await.is_err(), "a client without a certificate connected over {}", c.endpoint);
    // Counted and logged as a refusal, without zenoh's hint about open files.
    let refused = wait_until(Duration::from_secs(10), || {
        let (_, text) = c.http_get("collector", "/metrics");
        metric(&text, "switchboard_bus_refused_total{reason=\"tls_handshake\"}").unwrap_or(0.0) >= 1.0
    });
    let log = s._collector.log_text();
    assert!(refused && log.to_ascii_lowercase().contains("certificate"), "{log}");
    assert!(!log.contains("open file limit"), "{log}");
    let mut plain = zenoh::Config::default();
    plain.insert_json5("mode", "\"client\"").unwrap();
    let tcp = c.endpoint.replace("quic/", "tcp/").replace("tls/", "tcp/");
    plain.insert_json5("connect/endpoints", &json!([tcp]).to_string()).unwrap();
    assert!(zenoh::open(plain).await.is_err(), "a plain TCP client connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_act_as_another() {
    let c = Cluster::with_tls(&["collector:c1", "agent:gw1", "agent:gw2", "collector:c2", "admin:ops", "agent:gw9"]);
    // gw9 has a certificate of the CA but is not a member.
    let members = c.tls.as_ref().unwrap().join("members");
    let text = std::fs::read_to_string(&members).unwrap().replace("agent:gw9\n", "");
    std::fs::write(&members, text).unwrap();
    let s = setup(c);
    no_certificate_no_entry(&s).await;
    let (c, both) = (&s.c, vec![s.c.endpoint.clone(), s.gw1_endpoint.clone()]);
    let rec = register(c);
    let gw2 = session(c, "agent:gw2", &both).await;

    // A cluster going about its business, a member's session included, refuses nothing: each
    // count below is of an attempt, not of the cluster's own traffic.
    let quiet = || (refused(c, "collector", "access_denied"), refused(c, "gw1", "access_denied"));
    let before = quiet();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(quiet(), before, "access_denied (collector, gw1) counted with no attempt");
    // A command-line session says nothing of refusals when nothing was refused of it: zenoh
    // checks the declarations the processes send back for its interest as replies on their
    // keys (docs/security.md says what the processes count meanwhile).
    for args in [&["status"][..], &["limits", "list"][..]] {
        let out = as_admin(c, &c.endpoint, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("refused from the bus"), "switchboard {args:?}:\n{err}");
    }

    // Rows 2, 3, 6: gw2 publishes gw1's stream and heads.
    expect_refused(c, "collector", "access_denied", put(&gw2, &key(c, "stream/gw1/log/app"), forged_batch(100, 50)))
        .await;
    let heads = json!({"version": 1, "streams": {"log/app": 1_000_000_000u64}}).to_string();
    expect_refused(c, "collector", "access_denied", put(&gw2, &key(c, "head/gw1"), heads)).await;

    // Rows 4, 5: gw2 poses as another node and as a collector.
    expect_refused(c, "gw1", "access_denied", async {
        std::mem::forget(gw2.liveliness().declare_token(key(c, "node/gw3")).await.unwrap());
        std::mem::forget(gw2.liveliness().declare_token(key(c, "collector/c2")).await.unwrap());
        std::mem::forget(gw2.liveliness().declare_token(key(c, "serves/dlr/gw3")).await.unwrap());
        std::mem::forget(gw2.liveliness().declare_token(key(c, "serves/limits/gw3")).await.unwrap());
    })
    .await;
    let (_, dlr) = c.http_get("gw1", "/v1/dlr");
    assert!(!dlr.contains("gw3"), "gw1 took gw2's token for gw3: {dlr}");
    let (_, limits) = c.http_get("gw1", "/v1/limits");
    assert!(!limits.contains("gw3"), "gw1 took gw2's token for gw3: {limits}");

    // Row 7: gw2 forges the collector's watermark; it never reaches gw1's checks.
    let checks = refused(c, "gw1", "watermark_not_live") + refused(c, "gw1", "watermark_ahead");
    let marks = json!({"version": 1, "streams": {"log/app": 99}, "epoch": 1_000_000u64}).to_string();
    expect_refused(c, "gw1", "access_denied", put(&gw2, &key(c, "watermark/c1/gw1"), marks)).await;
    assert_eq!(refused(c, "gw1", "watermark_not_live") + refused(c, "gw1", "watermark_ahead"), checks);

    // Row 9: gw2 reports demand as gw1.
    let demand = json!({"version": 1, "demand": {"k": 1e9}}).to_string();
    expect_refused(c, "gw1", "access_denied", put(&gw2, &key(c, "counter/gw1"), demand)).await;

    // Row 10: an agent cannot set limits; an admin can (with `switchboard limits set`).
    expect_refused(
        c,
        "gw1",
        "access_denied",
        put(&gw2, &key(c, "config/push"), limits_pack(1, b"[[limit]]\nkey = \"k\"\nrate = 1\n")),
    )
    .await;
    assert_eq!(limits_revision(c), 0);
    let file = c.path().join("limits.toml");
    std::fs::write(&file, "[[limit]]\nkey = \"k\"\nrate = 100\n").unwrap();
    let out = as_admin(c, &s.gw1_endpoint, &["limits", "set", file.to_str().unwrap(), "--timeout", "10s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(Duration::from_secs(10), || limits_revision(c) == 1), "the admin's revision was not applied");
    // The same file again changes nothing, and says so instead of waiting for a revision.
    let out = as_admin(c, &s.gw1_endpoint, &["limits", "set", file.to_str().unwrap(), "--timeout", "10s"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("nothing pushed: revision 1 stays in force"), "{said}");
    // An agent's certificate is refused by the tool itself, before a push its peers would drop.
    std::fs::write(&file, "[[limit]]\nkey = \"k\"\nrate = 200\n").unwrap();
    let out =
        as_member(c, "agent-gw2", &s.gw1_endpoint, &["limits", "set", file.to_str().unwrap(), "--timeout", "10s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs an admin's certificate") && err.contains("agent:gw2"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pushed"), "the agent's revision was pushed");
    // So is a collector's (which may not read the repository's revisions at all).
    let out = as_member(c, "collector-c1", &s.gw1_endpoint, &["limits", "set", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs an admin's certificate") && err.contains("collector:c1"),
        "{err}"
    );
    // Rows 19, 20: the admin reads the repository's states and objects (the revision's files).
    let out = as_admin(c, &s.gw1_endpoint, &["config", "show", "head", "global/limits.toml"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[[limit]]\nkey = \"k\"\nrate = 100\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Row 12: gw2 answers a tool's query for the limits histories on gw1's key as well as on its
    // own. The tool, linked to gw2 alone, takes gw2's own answer and drops the other by its policy.
    let liar_endpoint = format!("{}/127.0.0.1:{}", c.endpoint.split('/').next().unwrap(), free_port());
    let gw2_listening = session_listening(c, "agent:gw2", &[], std::slice::from_ref(&liar_endpoint)).await;
    let history = |revision: u64, author: &str| {
        let limits = vec![serde_json::from_value(json!({"key": "k", "rate": 5})).unwrap()];
        let r = Revision { revision, author: author.into(), at_ms: 1, comment: String::new(), limits };
        serde_json::to_vec(&History { version: 1, revisions: vec![r] }).unwrap()
    };
    let _own = liar(&gw2_listening, key(c, "limits/config/gw2"), history(998, "gw2-own")).await;
    let _other = liar(&gw2_listening, key(c, "limits/config/gw1"), history(999, "gw2-as-gw1")).await;
    let out = as_admin(c, &liar_endpoint, &["limits", "history"]);
    let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("revision 998") && said.contains("gw2-own"),
        "gw2's own history is not listed:\n{said}\n{err}"
    );
    assert!(!said.contains("gw2-as-gw1"), "a history in gw1's name from gw2 was taken:\n{said}");
    drop((_own, _other));
    gw2_listening.close().await.unwrap();

    // Rows 6, 8: only a collector may ask an agent for a replay, and the agent answers it (here
    // with an error reply: those lines are committed and no longer kept).
    expect_refused(c, "gw1", "access_denied", async {
        let _ = ask(&gw2, &key(c, "replay/gw1/log/app?from=0;to=9"), None).await;
    })
    .await;
    let c2 = session(c, "collector:c2", &both).await;
    let replies = ask(&c2, &key(c, "replay/gw1/log/app?from=0;to=9"), None).await;
    assert!(replies.iter().any(|r| r.contains("cannot be rebuilt")), "{replies:?}");
    // A range the wrong way round, or a `to` that is no number, is an error that says so.
    let replies = ask(&c2, &key(c, "replay/gw1/log/app?from=9;to=2"), None).await;
    assert!(replies.iter().any(|r| r.contains("to=2 is below from=9")), "{replies:?}");
    let replies = ask(&c2, &key(c, "replay/gw1/log/app?from=0;to=abc"), None).await;
    assert!(replies.iter().any(|r| r.contains("must be a sequence number")), "{replies:?}");
    // Any number of failed replay queries makes a few log lines, and each is counted.
    let log_lines = || {
        let log = std::fs::read_to_string(c.path().join("agent-gw1.log")).unwrap_or_default();
        log.matches("replay query not answered").count()
    };
    let (lines_before, errors_before) =
        (log_lines(), metric(&c.http_get("gw1", "/metrics").1, "switchboard_agent_replay_errors_total").unwrap_or(0.0));
    for _ in 0..300 {
        let _ = ask(&c2, &key(c, "replay/gw1/log/app?from=abc"), None).await;
    }
    let errors = metric(&c.http_get("gw1", "/metrics").1, "switchboard_agent_replay_errors_total").unwrap_or(0.0);
    assert!(errors - errors_before >= 300.0, "{errors_before} then {errors}");
    assert!(log_lines() - lines_before <= 2, "{} lines for 300 failed replay queries", log_lines() - lines_before);

    // Rows 13, 14, 16, 17: an admin looks a record up on the ask stream, not by query (which
    // may carry a report); a collector may not ask.
    let ops = session(c, "admin:ops", &both).await;
    let answers = ops.declare_subscriber(key(c, "dlr/answer/ops-test/*")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ask_doc = switchboard_bus::dlr::wire::DlrAsk::encode("ops-test", 1, "dec", &rec.id).unwrap();
    put(&ops, &key(c, "dlr/ask/gw1"), ask_doc.clone()).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.recv_async()).await.expect("an answer").unwrap();
    let answer_key = answer.key_expr().clone();
    let answer = String::from_utf8_lossy(&answer.payload().to_bytes()).into_owned();
    assert!(answer.contains("\"n\":1") && answer.contains("gw1"), "{answer}");
    assert_eq!(answer_key.as_str(), key(c, "dlr/answer/ops-test/gw1"), "gw1 answers on the key of its name");
    expect_refused(c, "gw1", "access_denied", put(&c2, &key(c, "dlr/ask/gw1"), ask_doc)).await;

    // Rows 14, 17: an answer is taken only on the key of the node that sends it. gw2 replies to
    // gw1's lookup of every node on gw1's key, in gw1's name: gw1's policy drops the reply, and
    // the report of a message no node holds is not found; on its own key in gw1's name: gw1
    // refuses the reply. Nor may gw2 put an answer to an ask on another node's key.
    let _on_gw1_key = liar(&gw2, key(c, "dlr/at/gw1/dec/7777"), made_up_reply(&rec, "7777")).await;
    let (code, body) = expect_refused(c, "gw1", "access_denied", async { report_of(c, "7777") }).await;
    assert_eq!(code, 404, "{body}");
    let _on_own_key = liar(&gw2, key(c, "dlr/at/gw2/dec/7778"), made_up_reply(&rec, "7778")).await;
    let (code, body) = expect_refused(c, "gw1", "lookup_reply_invalid", async { report_of(c, "7778") }).await;
    assert_eq!(code, 404, "{body}");
    // Nor on the question's own key (as agents of earlier versions reply), in its own name.
    let as_gw2 = DlrRecord { owner: "gw2".into(), ..rec.clone() };
    let _on_question = liar(&gw2, key(c, "dlr/at/*/dec/7780"), made_up_reply(&as_gw2, "7780")).await;
    let (code, body) = expect_refused(c, "gw1", "access_denied", async { report_of(c, "7780") }).await;
    assert_eq!(code, 404, "{body}");
    let made_up =
        json!({"version": 1, "n": 0, "reply": serde_json::from_slice::<Value>(&made_up_reply(&rec, "7779")).unwrap()});
    expect_refused(c, "gw1", "access_denied", put(&gw2, &key(c, "dlr/answer/*/gw1"), made_up.to_string())).await;

    // Rows 13, 15: a collector's or an admin's certificate cannot send DLR reports or replicas.
    let closing = report("DELIVRD", "gw1");
    expect_refused(c, "gw1", "access_denied", async {
        let _ = ask(&c2, &key(c, "dlr/id/dec/1001"), Some(closing.clone())).await;
    })
    .await;
    expect_refused(c, "gw1", "access_denied", async {
        let _ = ask(&ops, &key(c, &format!("dlr/id/dec/{}", rec.id)), Some(closing.clone())).await;
    })
    .await;
    // An agent may send a replica batch, but not one of gw1's own records (the receiver's check).
    let mut forged = rec.clone();
    forged.version += 10;
    forged.state = RecordState::Closed;
    forged.status = Some("DELIVRD".into());
    let batch = ReplicaBatch::encode("gw2", &[ReplicaOp::Put(forged.clone())]).unwrap();
    expect_refused(c, "gw1", "replica_own_record", async {
        let _ = ask(&gw2, &key(c, "dlr/replica/gw1"), Some(batch.clone())).await;
    })
    .await;
    // Nor by naming gw2 its owner: an open record of gw1's is not taken over.
    forged.owner = "gw2".into();
    forged.state = RecordState::Open;
    forged.status = None;
    forged.gateway_ref = "evil".into();
    let hijack = ReplicaBatch::encode("gw2", &[ReplicaOp::Put(forged)]).unwrap();
    expect_refused(c, "gw1", "replica_own_record", async {
        let _ = ask(&gw2, &key(c, "dlr/replica/gw1"), Some(hijack.clone())).await;
    })
    .await;

    // Row 21: a node takes back its own records only. gw2 may not ask gw1 for gw3's copies, a
    // collector for none; asking for its own is allowed, and gw1's check then refuses it as
    // this bare session serves no DLRs (it is not a live agent there).
    expect_refused(c, "gw1", "access_denied", async {
        let _ = ask(&gw2, &key(c, "dlr/restore/gw1/gw3"), None).await;
    })
    .await;
    expect_refused(c, "gw1", "access_denied", async {
        let _ = ask(&c2, &key(c, "dlr/restore/gw1/c2"), None).await;
    })
    .await;
    let replies = expect_refused(c, "gw1", "restore_invalid", ask(&gw2, &key(c, "dlr/restore/gw1/gw2"), None)).await;
    assert!(replies.iter().any(|r| r.contains("not another live agent")), "{replies:?}");

    // Row 22: a certificate of the CA that is not a member can do nothing: it matches no subject
    // of the policy, whose default drops what it sends. `finish` finds none of its rows. Its
    // link is counted as `not_a_member`, and what it declares (an agent declares its queryables
    // at start) as `access_denied`.
    assert_eq!(refused(c, "collector", "not_a_member"), 0, "the members' own links matched no subject");
    let gw9 =
        expect_refused(c, "collector", "not_a_member", session(c, "agent:gw9", std::slice::from_ref(&c.endpoint)))
            .await;
    put(&gw9, &key(c, "stream/gw9/log/app"), forged_batch(0, 10)).await;
    expect_refused(c, "collector", "access_denied", async {
        let _q = gw9.declare_queryable(key(c, "replay/gw9/log/app")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    })
    .await;

    finish(&s, &rec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_checks_hold_without_tls() {
    let s = setup(Cluster::new());
    let (c, both) = (&s.c, vec![s.c.endpoint.clone(), s.gw1_endpoint.clone()]);
    let (_, health) = c.http_get("gw1", "/health");
    assert!(health.contains("\"tls\":false"), "{health}");
    let rec = register(c);
    let h = session(c, "agent:x", &both).await;

    // A watermark from a collector that is not live.
    let marks = |w: u64, epoch: u64| json!({"version": 1, "streams": {"log/app": w}, "epoch": epoch}).to_string();
    expect_refused(c, "gw1", "watermark_not_live", put(&h, &key(c, "watermark/c9/gw1"), marks(99, 5))).await;
    // A live stranger's watermark beyond what gw1 published is refused whole (its epoch too).
    let _token = h.liveliness().declare_token(key(c, "collector/c9")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    expect_refused(c, "gw1", "watermark_ahead", put(&h, &key(c, "watermark/c9/gw1"), marks(u64::MAX, u64::MAX))).await;
    // One that does not parse: counted, not only logged.
    expect_refused(c, "gw1", "watermark_invalid", put(&h, &key(c, "watermark/c9/gw1"), "not json".to_owned())).await;

    // A replica of gw1's own record, and one out of bounds.
    let mut forged = rec.clone();
    forged.version += 10;
    forged.state = RecordState::Closed;
    let own = ReplicaBatch::encode("x", &[ReplicaOp::Put(forged.clone())]).unwrap();
    expect_refused(c, "gw1", "replica_own_record", async {
        let _ = ask(&h, &key(c, "dlr/replica/gw1"), Some(own.clone())).await;
    })
    .await;
    // A drop of gw1's own record: refused and counted, not answered as applied.
    let drop_own =
        ReplicaBatch::encode("x", &[ReplicaOp::Drop { connector: rec.connector.clone(), id: rec.id.clone() }]).unwrap();
    expect_refused(c, "gw1", "replica_own_record", async {
        let replies = ask(&h, &key(c, "dlr/replica/gw1"), Some(drop_own.clone())).await;
        assert!(!replies.is_empty() && replies.iter().all(|r| r.contains("\"applied\":0")), "{replies:?}");
    })
    .await;
    forged.owner = "gw2".into();
    // Fields the register API refuses (an id of 129 bytes or none, surrounding whitespace), and a
    // record that would never expire.
    let mut bad = Vec::new();
    for (id, msg_id) in [("9".repeat(129), "9".to_owned()), (String::new(), "9".to_owned()), ("9".into(), " 9 ".into())]
    {
        bad.push(DlrRecord { id, msg_id, ..forged.clone() });
    }
    bad.push(DlrRecord { id: "9".into(), msg_id: "9".into(), expires_at: u64::MAX, ..forged.clone() });
    // A version from the future would outrank the owner's own registration and close for good.
    bad.push(DlrRecord { id: "9".into(), msg_id: "9".into(), version: u32::MAX, ..forged.clone() });
    forged.destination = "x".repeat(10_000);
    bad.push(forged);
    for record in bad {
        let batch = ReplicaBatch::encode("x", &[ReplicaOp::Put(record.clone())]).unwrap();
        expect_refused(c, "gw1", "replica_invalid", async {
            let replies = ask(&h, &key(c, "dlr/replica/gw1"), Some(batch.clone())).await;
            assert!(replies.iter().all(|r| r.contains("\"applied\":0")), "{record:?}: {replies:?}");
        })
        .await;
    }

    // A copy gw1 holds of gw3's open record: another sender may neither name itself its owner
    // nor drop it; its owner may.
    let theirs = DlrRecord { owner: "gw3".into(), id: "5555".into(), msg_id: "5555".into(), ..rec.clone() };
    let copy = |from: &str, r: &DlrRecord| ReplicaBatch::encode(from, &[ReplicaOp::Put(r.clone())]).unwrap();
    let applied = |replies: &[String]| replies.iter().any(|r| r.contains("\"applied\":1"));
    assert!(applied(&ask(&h, &key(c, "dlr/replica/gw1"), Some(copy("gw3", &theirs))).await));
    let taken = DlrRecord { owner: "gw9".into(), version: theirs.version + 50, ..theirs.clone() };
    let drop_of = |from: &str| {
        ReplicaBatch::encode(from, &[ReplicaOp::Drop { connector: theirs.connector.clone(), id: theirs.id.clone() }])
            .unwrap()
    };
    for batch in [copy("gw9", &taken), drop_of("gw9")] {
        expect_refused(c, "gw1", "replica_invalid", async {
            let replies = ask(&h, &key(c, "dlr/replica/gw1"), Some(batch.clone())).await;
            assert!(!applied(&replies), "{replies:?}");
        })
        .await;
    }
    assert!(applied(&ask(&h, &key(c, "dlr/replica/gw1"), Some(drop_of("gw3"))).await));

    // Reports the HTTP API would refuse: an empty status, a reporter that is no node's name; and
    // one of a version this build does not read.
    let mut v2: Value = serde_json::from_slice(&report("DELIVRD", "gw1")).unwrap();
    v2["version"] = json!(2);
    for r in [report("", "gw1"), report("DELIVRD", "no/body"), serde_json::to_vec(&v2).unwrap()] {
        expect_refused(c, "gw1", "report_invalid", async {
            let replies = ask(&h, &key(c, "dlr/id/dec/1001"), Some(r.clone())).await;
            assert!(replies.iter().all(|r| r.starts_with("error")), "{replies:?}");
        })
        .await;
    }

    // A reply to a lookup on every node in gw1's own name, with a made-up record, on gw1's key
    // (which nothing binds without TLS): dropped, as another session sent it, so a report of an
    // id no node holds is still not found (it was taken as gw1's own, `owner_down`).
    let _liar = liar(&h, key(c, "dlr/at/gw1/dec/7777"), made_up_reply(&rec, "7777")).await;
    let (code, body) = expect_refused(c, "gw1", "lookup_reply_invalid", async { report_of(c, "7777") }).await;
    assert_eq!(code, 404, "{body}");

    // A configuration revision whose content does not hash to its name, one whose limits file
    // does not validate, and demand from a node that is not live.
    let mut forged: Value = serde_json::from_slice(&limits_pack(1, b"[[limit]]\nkey = \"k\"\nrate = 1\n")).unwrap();
    for v in forged["contents"].as_object_mut().unwrap().values_mut() {
        *v = json!("W1tsaW1pdF1dCmtleSA9ICJrIgpyYXRlID0gOTk5OTkK");
    }
    expect_refused(c, "gw1", "config_invalid", put(&h, &key(c, "config/push"), forged.to_string())).await;
    expect_refused(
        c,
        "gw1",
        "config_invalid",
        put(&h, &key(c, "config/push"), limits_pack(1, b"[[limit]]\nkey = \"k\"\n")),
    )
    .await;
    assert_eq!(limits_revision(c), 0);
    let objects = c.agent_state("gw1").join("cluster-config/store/objects");
    let stored = std::fs::read_dir(&objects)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(stored, 0, "refused pushes left contents in {}", objects.display());

    // A peer whose configuration state names 300 heads it never hands out (it holds every object
    // query until it times out) costs one ask, not 300: a real push is still applied at once.
    let fake_heads: Vec<Value> = (0..300u32)
        .map(|i| json!({"id": format!("{i:064x}"), "number": 1, "parents": [], "author": "x", "at_ms": 1, "message": ""}))
        .collect();
    let state = json!({"version": 1, "node": "gw7", "subcluster": null, "dir": "x", "applied": null,
        "heads": fake_heads, "revisions": [], "local_edits": [], "blocked": null, "reload": null})
    .to_string();
    let state_key = key(c, "config/state/gw7");
    let _state = h
        .declare_queryable(state_key.clone())
        .callback(move |q| {
            let _ = zenoh::Wait::wait(q.reply(state_key.clone(), state.clone()));
        })
        .await
        .unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let _objects = h
        .declare_queryable(key(c, "config/object/gw7/*"))
        .callback(move |q| keep.lock().unwrap().push(q))
        .await
        .unwrap();
    expect_refused(c, "gw1", "config_invalid", async {
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let (first, pack) = limits_pack_after(1, &[], b"[[limit]]\nkey = \"k\"\nrate = 5\n");
    put(&h, &key(c, "config/push"), pack).await;
    let applied = wait_until(Duration::from_secs(20), || limits_revision(c) == 1);
    assert!(applied, "a push waited behind a peer's unanswered heads");
    assert!(held.lock().unwrap().len() < 10, "{} object queries to the lying peer", held.lock().unwrap().len());
    drop(held);

    // Numbers that would leave no number for the next revision: the last one after revision 1,
    // and one without a parent held more than 2^32 above every number held.
    for (number, parents) in [(u64::MAX, vec![first.clone()]), (3, vec![first]), ((1 << 32) + 2, vec![])] {
        let (_, pack) = limits_pack_after(number, &parents, b"[[limit]]\nkey = \"k\"\nrate = 6\n");
        expect_refused(c, "gw1", "config_invalid", put(&h, &key(c, "config/push"), pack)).await;
    }
    assert_eq!(limits_revision(c), 1);

    let demand = json!({"version": 1, "demand": {"k": 1.0}}).to_string();
    expect_refused(c, "gw1", "counter_invalid", put(&h, &key(c, "counter/gw7"), demand)).await;

    // Heads of a node that is not live create nothing at the collector.
    let heads = json!({"version": 1, "streams": {"log/app": 1_000_000u64}}).to_string();
    expect_refused(c, "collector", "head_not_live", put(&h, &key(c, "head/gw7"), heads)).await;

    drop(_token);
    finish(&s, &rec);
}

/// A certificate for `agent:gw1` signed by the CA in `tls` that expired yesterday (PEM).
fn expired_certificate(tls: &std::path::Path) -> String {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["gw1".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "agent:gw1");
    let now = time::OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = (now - time::Duration::days(10), now - time::Duration::days(1));
    params.signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer).unwrap().pem()
}

#[test]
fn certs_refuse_what_would_not_work() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let t = tls.to_str().unwrap();
    common::certs(&["init", "--dir", t]);
    common::certs(&["issue", "gw1", "--role", "agent", "--dir", t]);
    // A second CA over the first is refused without --force.
    let out = std::process::Command::new(BIN).args(["certs", "init", "--dir", t]).output().unwrap();
    assert!(!out.status.success());
    // `show --ca` tells which of two CAs of the same name signed a certificate.
    let other = dir.path().join("tls-new");
    common::certs(&["init", "--dir", other.to_str().unwrap()]);
    let crt = format!("{t}/agent-gw1.crt");
    assert!(common::certs(&["show", &crt, "--ca", &format!("{t}/ca.crt")]).contains("signed by: "));
    let out = std::process::Command::new(BIN)
        .args(["certs", "show", &crt, "--ca", other.join("ca.crt").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stdout).contains("signed by: NOT"));
    // An expired certificate of the CA: `show` says so and exits 1; a process refuses it at start
    // with the file's name and its dates.
    let expired = dir.path().join("expired.crt");
    std::fs::write(&expired, expired_certificate(&tls)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["certs", "show", expired.to_str().unwrap(), "--ca", &format!("{t}/ca.crt")])
        .output()
        .unwrap();
    let (said, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && said.contains("valid now: NO") && said.contains("signed by: "), "{said}");
    assert!(err.contains("not now") && err.contains("expired.crt"), "{err}");
    let out = std::process::Command::new(BIN)
        .args(["status", "--connect", "tls/127.0.0.1:1", "--tls-ca", &format!("{t}/ca.crt")])
        .args(["--tls-cert", expired.to_str().unwrap(), "--tls-key", &format!("{t}/agent-gw1.key")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("expired.crt") && err.contains("not now"), "{err}");
    // A validity of 0 days is refused (it would make a certificate that expires at once).
    let out = std::process::Command::new(BIN)
        .args(["certs", "issue", "gw3", "--role", "agent", "--days", "0", "--dir", t])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let certs_err = |args: &[&str]| {
        let out = std::process::Command::new(BIN).arg("certs").args(args).output().unwrap();
        assert!(!out.status.success(), "certs {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Names a certificate cannot hold: said plainly, nothing written.
    for name in ["gw-ü", "gw:1", "gw+1", "gw(1)", "gw,1"] {
        let err = certs_err(&["issue", name, "--role", "agent", "--dir", t]);
        assert!(err.contains("letters, digits, '.', '_' and '-'") && err.contains("DNS name"), "{name}: {err}");
        assert!(!tls.join(format!("agent-{name}.crt")).exists(), "{name}");
    }
    let long = "g".repeat(70);
    let err = certs_err(&["issue", &long, "--role", "agent", "--dir", t]);
    assert!(err.contains("over the 64 of a certificate's common name"), "{err}");
    assert!(!tls.join(format!("agent-{long}.crt")).exists());
    // The CA's key moved offline, as advised: issuing says to bring it back, and `init` does not
    // quietly make another CA over the certificate.
    let offline = dir.path().join("offline");
    std::fs::create_dir(&offline).unwrap();
    let o = offline.to_str().unwrap();
    for f in ["ca.crt", "members"] {
        std::fs::copy(tls.join(f), offline.join(f)).unwrap();
    }
    let err = certs_err(&["issue", "gw4", "--role", "agent", "--dir", o]);
    assert!(err.contains("put it back") && !err.contains("certs init --dir"), "{err}");
    let ca_before = std::fs::read(offline.join("ca.crt")).unwrap();
    let err = certs_err(&["init", "--dir", o]);
    assert!(err.contains("ca.crt exists"), "{err}");
    assert_eq!(std::fs::read(offline.join("ca.crt")).unwrap(), ca_before, "the CA was replaced");
    // The end of a CA rotation (the new CA alone in ca.crt) with the old key still beside it: no
    // certificate that nobody trusts comes out.
    std::fs::copy(tls.join("ca.key"), offline.join("ca.key")).unwrap();
    std::fs::copy(dir.path().join("tls-new").join("ca.crt"), offline.join("ca.crt")).unwrap();
    let err = certs_err(&["issue", "gw4", "--role", "agent", "--dir", o]);
    assert!(err.contains("is not the key of the CA"), "{err}");
    assert!(!offline.join("agent-gw4.crt").exists());
    // Each config below is refused by `--check` as by a start, saying why.
    let cfg = dir.path().join("agent.toml");
    let refused = |want: &str| {
        for check in [true, false] {
            let mut cmd = std::process::Command::new(BIN);
            cmd.args(["agent", "--config", cfg.to_str().unwrap()]);
            if check {
                cmd.arg("--check");
            }
            let out = cmd.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(want), "--check {check}: {err}");
        }
    };
    // An agent whose certificate names another node.
    std::fs::write(
        &cfg,
        format!(
            "[bus]\nnode = \"gw2\"\nconnect = [\"tls/127.0.0.1:{}\"]\n[bus.tls]\nca = \"{t}/ca.crt\"\ncert = \"{t}/agent-gw1.crt\"\nkey = \"{t}/agent-gw1.key\"\n[agent]\nhttp_listen = \"\"\ndata_dir = \"{}\"\n",
            free_port(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    refused("is the certificate of agent:gw1, but this process is agent:gw2");
    // A plain endpoint beside [bus.tls] (a start refuses it; `--check` too).
    let text = std::fs::read_to_string(&cfg).unwrap().replace("tls/127", "tcp/127").replace("gw2", "gw1");
    std::fs::write(&cfg, text).unwrap();
    refused("not TLS");
    // A certificate from another CA, with the file's name.
    let other = dir.path().join("other");
    common::certs(&["init", "--dir", other.to_str().unwrap()]);
    common::certs(&["issue", "gw1", "--role", "agent", "--dir", other.to_str().unwrap()]);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("tcp/127", "tls/127")
        .replace(&format!("{t}/agent-gw1.crt"), &format!("{}/agent-gw1.crt", other.display()));
    std::fs::write(&cfg, &text).unwrap();
    refused("is not signed by the CA");
    // The right certificate with another certificate's key, with the key file's name.
    let text = text
        .replace(&format!("{}/agent-gw1.crt", other.display()), &format!("{t}/agent-gw1.crt"))
        .replace(&format!("{t}/agent-gw1.key"), &format!("{}/agent-gw1.key", other.display()));
    std::fs::write(&cfg, &text).unwrap();
    refused(&format!("{}/agent-gw1.key", other.display()));
    // A socket group that does not exist.
    let text = text.replace(&format!("{}/agent-gw1.key", other.display()), &format!("{t}/agent-gw1.key"));
    std::fs::write(&cfg, format!("{text}[gateway]\nsocket_group = \"no-such-group-here\"\n")).unwrap();
    refused("no-such-group-here");
}

/// GET `path` with an optional bearer token: the status code.
fn get_with(port: u16, path: &str, token: Option<&str>) -> u16 {
    get_with_auth(port, path, token.map(|t| format!("Bearer {t}")).as_deref())
}

/// `GET path` with `Authorization: <auth>`; the status code (0: no answer).
fn get_with_auth(port: u16, path: &str, auth: Option<&str>) -> u16 {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The text of `/metrics` on `port`, asked with `token`.
fn metrics_with_token(port: u16, token: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn local_apis_are_guarded() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let write = |listen: &str, token: &str| {
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "[bus]\nnode = \"gw1\"\ncluster = \"t{port}\"\nlisten = [\"tcp/127.0.0.1:{}\"]\n[agent]\ndata_dir = \"{}\"\nhttp_listen = \"{listen}\"\n{token}\n[metrics]\nstatsd_listen = \"\"\n[gateway]\nsocket_group = \"{}\"\n",
                free_port(),
                dir.path().join("state").display(),
                std::fs::metadata(dir.path()).unwrap().gid(),
            ),
        )
        .unwrap();
        cfg
    };
    // Not loopback and no token: refused at start, saying what to do.
    let cfg = write(&format!("0.0.0.0:{port}"), "");
    let out = std::process::Command::new(BIN).args(["agent", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("http_token"), "{err}");

    // An HTTP port already taken fails the start before the agent joins the bus, and the process
    // exits with the reason: no panic on the way out (it once panicked, and once waited for the
    // gateway's thread for ever).
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let cfg = write(&taken.local_addr().unwrap().to_string(), "");
    let mut child = std::process::Command::new(BIN)
        .args(["agent", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "an agent whose HTTP port is taken must exit; it did not within 20 s: {err}");
    assert!(!out.status.success() && err.contains("http_listen"), "{err}");
    assert!(!err.contains("panicked") && !err.contains("joined the bus"), "{err}");
    drop(taken);

    // With a token: every API needs it, /health does not.
    let cfg = write(&format!("0.0.0.0:{port}"), "http_token = \"s3cret\"");
    let agent = Proc::start("agent gw1", &["agent", "--config", cfg.to_str().unwrap()], dir.path().join("agent.log"));
    assert!(wait_until(Duration::from_secs(20), || get_with(port, "/health", None) == 200), "{}", agent.log_text());
    assert_eq!(get_with(port, "/metrics", None), 401);
    assert_eq!(get_with(port, "/v1/limits", Some("wrong")), 401);
    assert_eq!(get_with(port, "/v1/limits", Some("s3cret")), 200);
    // The scheme in any case, as HTTP has it.
    assert_eq!(get_with_auth(port, "/v1/limits", Some("bearer s3cret")), 200);
    assert_eq!(get_with_auth(port, "/v1/limits", Some("Basic s3cret")), 401);
    // The status page: a browser passes the token once in the address; its own requests send
    // it as a bearer token; the query form opens the page alone.
    assert_eq!(get_with(port, "/status", None), 401);
    assert_eq!(get_with(port, "/status?token=wrong", None), 401);
    assert_eq!(get_with(port, "/status?token=s3cret", None), 200);
    assert_eq!(get_with(port, "/status.json?token=s3cret", None), 401);
    assert_eq!(get_with(port, "/status/fragment", Some("s3cret")), 200);

    // The gateway socket: mode 0660, in the configured group.
    let sock = dir.path().join("state").join("gateway.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), std::fs::metadata(dir.path()).unwrap().gid());

    // At most 256 connections at once: the next one waits until one closes.
    let idle: Vec<std::net::TcpStream> =
        (0..256).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get_with(port, "/health", None), 0, "a connection past the cap was served");
    // Connections that send nothing are closed 10 s after they opened (the stall timeout), and
    // the one waiting in the backlog is then served, while the idle ones are still held here.
    assert!(
        wait_until(Duration::from_secs(15), || get_with(port, "/health", None) == 200),
        "idle connections kept every slot past the stall timeout"
    );
    drop(idle);

    // Request bodies keep a pace: one sent a byte every half second gets 408 after 10 s.
    use std::io::{Read as _, Write as _};
    let head = |len: usize| {
        format!("POST /v1/dlr/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: {len}\r\n\r\n")
    };
    let mut drip = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    drip.write_all(head(100_000).as_bytes()).unwrap();
    let started = std::time::Instant::now();
    // At most 40 bytes: 20 s, far past the 10 s a 40-byte body may take.
    for _ in 0..40 {
        if drip.write_all(b" ").is_err() {
            break;
        }
        drip.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut answer = [0u8; 12];
        if drip.read_exact(&mut answer).is_ok() {
            assert_eq!(&answer, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&answer));
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(9) && took < Duration::from_secs(14),
        "a dripping body was answered after {took:?}"
    );
    assert_eq!(metric(&metrics_with_token(port, "s3cret"), "switchboard_agent_http_slow_requests_total"), Some(1.0));

    // Bodies being read hold at most 256 MiB: eight announcing 32 MiB hold it all, the ninth
    // gets 503 at once, and the budget comes back as they are refused.
    let held: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(head(32 << 20).as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut ninth = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    ninth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ninth.write_all(head(1024).as_bytes()).unwrap();
    let mut answer = [0u8; 12];
    ninth.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 503");
    assert_eq!(metric(&metrics_with_token(port, "s3cret"), "switchboard_agent_http_busy_requests_total"), Some(1.0));
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let body = r#"{"connector": "smsc-a", "msg_id": "budget-1"}"#;
        let _ = write!(s, "{}{body}", head(body.len()));
        let mut answer = [0u8; 12];
        s.read_exact(&mut answer).is_ok() && &answer != b"HTTP/1.1 503"
    }));

    // Heads the HTTP parser refuses itself get its answer and a count by reason.
    let refused = |head: String, status: &[u8; 12]| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut answer = [0u8; 12];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, status, "{}", String::from_utf8_lossy(&answer));
    };
    let fields: String = (0..150).map(|i| format!("X-F{i}: v\r\n")).collect();
    refused(format!("GET /v1/limits HTTP/1.1\r\nHost: x\r\n{fields}\r\n"), b"HTTP/1.1 431");
    refused(format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)), b"HTTP/1.1 414");
    refused("NOT HTTP\r\n\r\n".to_owned(), b"HTTP/1.1 400");
    for reason in ["head_too_large", "target_too_long", "malformed_head"] {
        let series = format!("switchboard_http_refused_requests_total{{reason=\"{reason}\"}}");
        assert!(
            wait_until(Duration::from_secs(5), || metric(&metrics_with_token(port, "s3cret"), &series) == Some(1.0)),
            "{series} is not 1"
        );
    }
    agent.stop();
}

/// One peer's zenoh config for a `tls/` link with the certificate `tls` (listening on `port`, or
/// connecting to it).
fn tls_link_config(tls: &TlsConfig, port: u16, listen: bool) -> zenoh::Config {
    let mut zc = zenoh::Config::default();
    zc.insert_json5("mode", "\"peer\"").unwrap();
    zc.insert_json5("scouting/multicast/enabled", "false").unwrap();
    let endpoint = json!([format!("tls/127.0.0.1:{port}")]).to_string();
    if listen {
        zc.insert_json5("listen/endpoints", &endpoint).unwrap();
    } else {
        zc.insert_json5("listen/endpoints", "[]").unwrap();
        zc.insert_json5("connect/endpoints", &endpoint).unwrap();
    }
    let link = json!({
        "root_ca_certificate": tls.ca, "listen_certificate": tls.cert, "listen_private_key": tls.key,
        "connect_certificate": tls.cert, "connect_private_key": tls.key,
        "enable_mtls": true, "verify_name_on_connect": false,
    });
    zc.insert_json5("transport/link/tls", &link.to_string()).unwrap();
    zc
}

/// zenoh's `tls/` link as published lets its reading and its writing task use one TLS connection
/// at the same time, which corrupted memory under two-way load; the workspace's copy takes a
/// lock per poll (bus/patched/zenoh-link-tls). Two peers on one `tls/` link query each other and
/// publish to each other at once for 4 s: every query is answered whole, every put arrives.
/// (With the published link, the link broke within milliseconds in each of three runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_link_carries_traffic_both_ways_at_once() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    use switchboard_bus::tls::{write_cluster, IdRole, Identity};
    use zenoh::qos::CongestionControl;

    let dir = tempfile::tempdir().unwrap();
    let ids = [Identity::new(IdRole::Agent, "a").unwrap(), Identity::new(IdRole::Agent, "b").unwrap()];
    let tls = write_cluster(dir.path(), &ids).unwrap();
    let port = free_port();
    let a = zenoh::open(tls_link_config(&tls[0], port, true)).await.unwrap();
    let b = zenoh::open(tls_link_config(&tls[1], port, false)).await.unwrap();
    const REPLY: usize = 2048;
    const PUT: usize = 8 * 1024;
    let mut keep = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    for (s, me) in [(&a, "a"), (&b, "b")] {
        let q = s
            .declare_queryable(format!("twoway/{me}/q"))
            .callback(|q| {
                let key = q.key_expr().clone();
                tokio::spawn(async move { q.reply(key, vec![7u8; REPLY]).await.unwrap() });
            })
            .await
            .unwrap();
        let n = received.clone();
        let sub = s
            .declare_subscriber(format!("twoway/{me}/put"))
            .callback(move |p| {
                if p.payload().len() == PUT {
                    n.fetch_add(1, Relaxed);
                }
            })
            .await
            .unwrap();
        keep.push((q, sub));
    }
    // Both see the other's declarations before the load starts.
    let ok = {
        let mut ok = false;
        for _ in 0..50 {
            let r = b.get("twoway/a/q").timeout(Duration::from_secs(1)).await.unwrap().recv_async().await;
            let r2 = a.get("twoway/b/q").timeout(Duration::from_secs(1)).await.unwrap().recv_async().await;
            if r.is_ok() && r2.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    assert!(ok, "the peers did not see each other over tls/");

    let until = std::time::Instant::now() + Duration::from_secs(4);
    let (answered, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for (s, other) in [(a.clone(), "b"), (b.clone(), "a")] {
        for _ in 0..4 {
            let (s, answered) = (s.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                while std::time::Instant::now() < until {
                    // A query waits behind the puts queued on the link: a generous timeout (a
                    // test build of zenoh and rustls is slow, and the suite runs beside it).
                    let asked = std::time::Instant::now();
                    let replies = s.get(format!("twoway/{other}/q")).timeout(Duration::from_secs(30)).await.unwrap();
                    let reply = replies
                        .recv_async()
                        .await
                        .unwrap_or_else(|e| panic!("a query went unanswered after {:?}: {e}", asked.elapsed()));
                    let body = reply.result().expect("an error reply").payload().to_bytes();
                    assert_eq!(body.as_ref(), &[7u8; REPLY][..], "a reply arrived damaged");
                    answered.fetch_add(1, Relaxed);
                }
            }));
        }
        let (s, sent) = (s.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("twoway/{other}/put");
            let publisher = s.declare_publisher(key).congestion_control(CongestionControl::Block).await.unwrap();
            // Paced (at most 2,000 a second each way): a flood both ways would fill both
            // transmission queues, which zenoh answers by closing the transport after 5 s on any
            // link, tcp/ as well (a test of zenoh's congestion control, not of the link).
            while std::time::Instant::now() < until {
                publisher.put(vec![1u8; PUT]).await.unwrap();
                sent.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sent = sent.load(Relaxed);
    let all = wait_until(Duration::from_secs(30), || received.load(Relaxed) == sent);
    let answered = answered.load(Relaxed);
    assert!(all, "{} of {sent} puts arrived", received.load(Relaxed));
    assert!(answered > 1000 && sent > 1000, "too little load to tell: {answered} queries, {sent} puts");
    eprintln!("over one tls/ link in 4 s: {answered} queries answered, {sent} puts of {PUT} bytes both ways");
}

/// TCP connections to `endpoint`'s port from `source` (another loopback address: the listener
/// counts handshakes per host), `n` of them, each sending `bytes` (nothing for none).
async fn connections_from(source: &str, endpoint: &str, n: usize, bytes: &[u8]) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        if !bytes.is_empty() {
            stream.write_all(bytes).await.unwrap();
        }
        held.push(stream);
    }
    held
}

/// How many of `streams` the listener closed within `wait` (read the end of the stream, or a
/// reset), as it closes a connection past its bounds at once.
async fn closed_by_listener(streams: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    tokio::time::sleep(wait).await;
    let mut buf = [0u8; 64];
    streams
        .iter_mut()
        .filter(|s| !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count()
}

/// `switchboard status` as the admin, through the collector's listener: it sees a live collector
/// and node within 5 s (`when` says what the listener is going through).
fn a_member_sees_the_cluster_at_once(c: &Cluster, when: &str) {
    let started = std::time::Instant::now();
    let out = as_admin(c, &c.endpoint, &["status", "--format", "json"]);
    let took = started.elapsed();
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let alive = |kind: &str| status[kind].as_array().into_iter().flatten().any(|p| p["alive"] == true);
    assert!(alive("collectors") && alive("nodes"), "status {when}, after {took:?}: {status:#}");
    assert!(took < Duration::from_secs(5), "status took {took:?} {when}");
}

/// Connections from `source` that each close with a reset as soon as they are made, from one
/// port again and again: each new one has the address and port of one the listener may not
/// have seen fail yet.
async fn reset_storm(source: String, endpoint: String, n: usize) {
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let mut from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.set_zero_linger().unwrap();
        socket.bind(from).unwrap();
        from = socket.local_addr().unwrap();
        // Refused at once past the host's rate: closed either way.
        if let Ok(stream) = socket.connect(([127, 0, 0, 1], port).into()).await {
            drop(stream);
        }
    }
}

/// An outsider on many hosts holds more silent handshakes than the `tls/` listener takes (256):
/// the oldest are ended to make room, so a member still connects at once, and so after a storm
/// of connections that reuse their address and port (whose handshakes must not be taken for
/// one another); and one host starting handshakes faster than 16 a second (after a burst of 32)
/// has the rest closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_on_many_hosts_cannot_fill_the_tls_listener() {
    let c = Cluster::with_tls(&["collector:c1", "agent:gw1", "admin:ops"]);
    let s = setup(c);
    let c = &s.c;
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", s._collector.pid())).map_or(0, |d| d.count());
    let before = fds();
    let mut storm = tokio::task::JoinSet::new();
    for host in 100..164 {
        storm.spawn(reset_storm(format!("127.0.0.{host}"), c.endpoint.clone(), 40));
    }
    // The listener's descriptors stay within its bounds (512 connections not yet closed, 256
    // handles on those in progress) while the storm lasts.
    let mut most = before;
    while storm.try_join_next().is_some() || !storm.is_empty() {
        most = most.max(fds());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most <= before + 768 + 16, "the collector held {most} descriptors during the storm, {before} before");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 16 silent connections (the most one host may have in progress) from each of 17 hosts.
    let mut held = Vec::new();
    for host in 10..27 {
        held.push(connections_from(&format!("127.0.0.{host}"), &c.endpoint, 16, b"").await);
    }
    a_member_sees_the_cluster_at_once(c, "with the listener full");
    // The first host's were the oldest: ended; the last host's still wait.
    let first = closed_by_listener(&mut held[0], Duration::from_millis(500)).await;
    assert_eq!(first, 16, "of the oldest handshakes, {first} of 16 ended");
    let last = closed_by_listener(&mut held[16], Duration::ZERO).await;
    assert_eq!(last, 0, "{last} of the newest handshakes ended");
    drop(held);

    // One host opening 8 connections every 100 ms (80 a second), closing each round's.
    let (mut taken, mut closed) = (0, 0);
    let began = std::time::Instant::now();
    for _ in 0..16 {
        let mut round = connections_from("127.0.0.40", &c.endpoint, 8, b"").await;
        let n = closed_by_listener(&mut round, Duration::from_millis(100)).await;
        closed += n;
        taken += round.len() - n;
    }
    let secs = began.elapsed().as_secs_f64();
    let allowed = 32.0 + 16.0 * secs;
    assert!(taken as f64 <= allowed + 1.0, "{taken} handshakes started in {secs:.1} s (at most {allowed:.0})");
    assert!(closed > 0 || allowed >= 128.0, "none of 128 connections in {secs:.1} s closed at once");
    assert_eq!(refused(c, "collector", "tls_handshake"), 0, "a handshake that never began counted as a certificate's");
}

/// An outsider's connections that never complete a TLS handshake (silent ones held open,
/// garbage, more than a host may have in progress) neither shut the `tls/` listener nor flood
/// its log: a member connects at once meanwhile, and each is counted as `tls_incomplete`,
/// logged at the rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_complete_do_not_keep_members_out() {
    let c = Cluster::with_tls(&["collector:c1", "agent:gw1", "admin:ops"]);
    let s = setup(c);
    let c = &s.c;
    // 40 silent connections from one host, held open: 16 wait for their handshake (the bound
    // per host), the other 24 are closed at once. Then 60 of garbage, 10 from each of 6 hosts
    // (each a failed handshake: published, each held the listener shut for 100 ms).
    let silent = connections_from("127.0.0.2", &c.endpoint, 40, b"").await;
    for host in 3..9 {
        let garbage = [0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3];
        drop(connections_from(&format!("127.0.0.{host}"), &c.endpoint, 10, &garbage).await);
    }
    // A member's command connects and sees the cluster while the silent ones still wait.
    a_member_sees_the_cluster_at_once(c, "during the flood");
    // Counted: the 24 past the bound and the 60 of garbage.
    let counted = wait_until(Duration::from_secs(10), || refused(c, "collector", "tls_incomplete") >= 84);
    assert!(counted, "tls_incomplete {}", refused(c, "collector", "tls_incomplete"));
    drop(silent);
    // Their slots come back as each ends: 16 more from the same host all wait again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = connections_from("127.0.0.2", &c.endpoint, 16, b"").await;
    assert_eq!(closed_by_listener(&mut again, Duration::from_millis(300)).await, 0, "slots not given back");
    drop(again);
    // Logged at the rate limit, not once a connection.
    let log = s._collector.log_text();
    let lines = log.lines().filter(|l| l.contains("Can not accept TLS connection")).count();
    assert!((1..=3).contains(&lines), "{lines} lines of refused handshakes:\n{log}");
    assert_eq!(refused(c, "collector", "tls_handshake"), 0, "a handshake that never began counted as a certificate's");
}

/// Without TLS anyone may pose as an agent and answer a rebuilt node's restore. The node takes
/// a record back only from a node that keeps a copy of it by the copies' rule: a made-up closed
/// state of its open record, and a made-up record, from one that keeps neither are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_node_takes_back_only_what_its_copy_holders_hand_it() {
    use switchboard_bus::dlr::record::store_key;
    use switchboard_bus::dlr::rendezvous::replicas_for;
    let c = Cluster::new();
    let _collector = c.start_collector();
    let rest = "[dlr]\ncopies = 1\n[[dlr.connector]]\nname = \"dec\"\nids = \"decimal\"\n";
    // x poses as an agent that serves DLRs, on an endpoint gw1 dials whenever it starts.
    let x_endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let x = switchboard_bus::session::open(
        &BusConfig {
            cluster: c.cluster.clone(),
            node: "x".into(),
            connect: vec![c.endpoint.clone()],
            listen: vec![x_endpoint.clone()],
            gossip: false,
            ..BusConfig::default()
        },
        None,
    )
    .await
    .expect("x's session opens");
    let _node = x.liveliness().declare_token(key(&c, "node/x")).await.unwrap();
    let _serves = x.liveliness().declare_token(key(&c, "serves/dlr/x")).await.unwrap();
    let gw1 = c.start_agent_config("gw1", &[c.endpoint.clone(), x_endpoint.clone()], "", rest);
    let _gw2 = c.start_agent_config("gw2", std::slice::from_ref(&c.endpoint), "", rest);
    let live = |n: &str| {
        let (_, body) = c.http_get(n, "/v1/dlr");
        serde_json::from_str::<Value>(&body).map(|v| v["live_nodes"].to_string()).unwrap_or_default()
    };
    let all = r#"["gw1","gw2","x"]"#;
    assert!(wait_until(Duration::from_secs(20), || live("gw1") == all), "gw1 sees {}", live("gw1"));
    // Ids whose one copy is gw2's with x live: x keeps none of them.
    let kept_by_gw2 = |id: &str| replicas_for(&store_key("dec", id), "gw1", ["gw2", "x"], 1) == ["gw2"];
    let ids: Vec<String> = (5000..6000).map(|i| i.to_string()).filter(|i| kept_by_gw2(i)).take(2).collect();
    let (real, made_up) = (&ids[0], &ids[1]);
    let (code, body) = post(&c, "gw1", "/v1/dlr/register", json!({"records": [{"connector": "dec", "msg_id": real}]}));
    assert_eq!(code, 201, "{body}");
    let copies = || {
        let (_, body) = c.http_get("gw2", "/v1/dlr");
        serde_json::from_str::<Value>(&body).ok().and_then(|v| v["counters"]["replica_ops_received"].as_u64())
    };
    assert!(wait_until(Duration::from_secs(10), || copies() >= Some(1)), "gw2 has no copy");
    let (_, res) = post(&c, "gw1", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": real}));
    let mut forged: DlrRecord = serde_json::from_value(res["record"].clone()).unwrap();
    forged.version += 5;
    forged.state = RecordState::Closed;
    forged.status = Some("FORGED".into());
    forged.closed_at = Some(forged.submitted_at);
    forged.closed_by = Some("x".into());
    let mut invented = forged.clone();
    (invented.id, invented.msg_id, invented.state, invented.status) =
        (made_up.clone(), made_up.clone(), RecordState::Open, None);
    (invented.closed_at, invented.closed_by) = (None, None);
    let page = json!({"version": 1, "records": [forged, invented], "next": null}).to_string();
    let _answers = x
        .declare_queryable(key(&c, "dlr/restore/x/*"))
        .callback(move |q| {
            use zenoh::Wait as _;
            let _ = q.reply(q.key_expr().clone(), page.clone()).wait();
        })
        .await
        .unwrap();

    // gw1 is rebuilt: it asks gw2 and x for its records.
    gw1.kill();
    std::fs::remove_dir_all(c.agent_state("gw1")).unwrap();
    let gw1 = c.start_agent_config("gw1", &[c.endpoint.clone(), x_endpoint], "", rest);
    let asked_both = wait_until(Duration::from_secs(30), || {
        let log = gw1.log_text();
        log.contains("took back this node's DLR records from their copies on gw2")
            && log.contains("took back this node's DLR records from their copies on x")
    });
    assert!(asked_both, "{}", gw1.log_text());
    let local = |id: &str| post(&c, "gw1", "/v1/dlr/resolve", json!({"connector": "dec", "msg_id": id, "local": true}));
    let (code, res) = local(real);
    assert_eq!(
        (code, res["record"]["state"].as_str(), res["role"].as_str()),
        (200, Some("open"), Some("owner")),
        "{res}"
    );
    assert_eq!(local(made_up).0, 404, "a made-up record was taken");
    assert!(refused(&c, "gw1", "restore_invalid") >= 2, "the two made-up states were not counted");
}
