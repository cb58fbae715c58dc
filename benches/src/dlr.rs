//! DLR lookups across three node processes with `--records` open records registered on each.
//!
//! Rows, each paced at `--rate` lookups/s, latency measured from the scheduled send time, ids
//! drawn at random over every node's records. The bus rows but the bare one are one async zenoh
//! client (one pacing thread starting each lookup as a task, as an agent resolves); the HTTP and Redis rows
//! are `--clients` threads with a connection each (a slow answer delays the next ones of its
//! client and counts against them):
//! - a zenoh client asking the node that must hold the id (the heaviest live node by rendezvous
//!   weight: owner or copy) on the ask stream (`<prefix>/dlr/ask/<node>`), as agents do: one bus
//!   round trip;
//! - the same asks from a bare zenoh client: published by the pacing thread, latency taken in the
//!   answer callback (the bus round trip without an async runtime's hand-offs);
//! - the same as a query (`<prefix>/dlr/at/<node>/...`);
//! - a zenoh client asking every node (`<prefix>/dlr/at/*/...`) and waiting for the owner's answer;
//! - zenoh's own floor: a queryable in a second session of the bench answering a fixed reply,
//!   asked at the same pace (what any one-query lookup costs at least);
//! - the agent's API (`POST /v1/dlr/resolve` on one node, HTTP keep-alive): the round trip plus
//!   the gateway's hop to its agent;
//! - the gateway socket (`RESOLVE <connector> <id>`, on the Unix socket and on loopback TCP),
//!   then split by where the record is: held by that node (its own or its copy: answered from
//!   its store, no bus) or elsewhere (one bus round trip), and the HTTP route on held records;
//!   the difference between rows is the cost of a hop (docs/performance.md);
//! - node-by-node forwarding as gateways do it today: ask node 1's own store, then node 2's, ...
//!   (`"local": true` on each agent's API);
//! - a shared Redis hash (HGET), with the same records loaded, when `redis-server` is available.
//!
//! The ask-stream row runs `--repeat` times, each printed. Then memory per open record in the agents' processes (RSS growth over the records each holds,
//! its own and its copies) and disk per record.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hdrhistogram::Histogram;
use zenoh::query::{ConsolidationMode, QueryTarget};

use crate::limits_cluster::{http_get, spawn_node, NodeProc};
use crate::ports::free_port;

const NODES: usize = 3;
const BATCH: u64 = 10_000;
const CONNECTOR: &str = "smsc";

/// A keep-alive HTTP/1.1 client for one agent.
pub(crate) struct Http {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    request: Vec<u8>,
    line: String,
}

impl Http {
    pub(crate) fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Self { reader: BufReader::new(stream.try_clone()?), stream, request: Vec::new(), line: String::new() })
    }

    /// POST `body` to `path`: (status, body).
    pub(crate) fn post(&mut self, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
        // One write, as HTTP clients send a small request: `write!` on the socket itself would
        // send each piece of the format as a segment of its own (the socket has no delay).
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        self.stream.write_all(&self.request)?;
        let (mut status, mut len) = (0u16, 0usize);
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                bail!("the agent closed the connection");
            }
            if self.line == "\r\n" {
                break;
            }
            if status == 0 {
                status = self.line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if let Some(v) = self.line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut out = vec![0; len];
        self.reader.read_exact(&mut out)?;
        Ok((status, out))
    }
}

fn msg_id(node: usize, k: u64) -> String {
    format!("{node}{k:09}")
}

/// A deterministic pseudo-random (node, k) sequence.
fn picks(n: u64, records: u64) -> Vec<(usize, u64)> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % NODES as u64) as usize, (x >> 8) % records)
        })
        .collect()
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .map_or(0, |kb: u64| kb * 1024)
}

/// CPU time (user + system) a process has used so far, in µs (`/proc/<pid>/stat`, 100 ticks/s).
pub(crate) fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    ticks * 10_000
}

fn dlr_status(node: &NodeProc) -> serde_json::Value {
    http_get(node.http, "/v1/dlr").and_then(|b| serde_json::from_str(&b).ok()).unwrap_or_default()
}

/// Run lookups `0..n` at `rate`/s in all, spread over `clients` threads (lookup `i` goes to
/// client `i % clients`, each with its own state from `open`): lookups/s reached and the latency
/// of each from its scheduled start, in ns. A client that falls behind sends its next lookups
/// late, and their latency counts the wait (no coordinated omission).
fn paced<W: Send>(
    n: u64,
    rate: u64,
    clients: usize,
    mut open: impl FnMut(usize) -> Result<W>,
    one: impl Fn(&mut W, u64) -> Result<()> + Sync,
) -> Result<(f64, Histogram<u64>)> {
    let clients = clients.max(1);
    let states: Vec<W> = (0..clients).map(&mut open).collect::<Result<_>>()?;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let one = &one;
    let hists = std::thread::scope(|s| {
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(c, mut state)| {
                s.spawn(move || -> Result<Histogram<u64>> {
                    let mut h = Histogram::<u64>::new(3)?;
                    for i in (c as u64..n).step_by(clients) {
                        let due = start + gap.mul_f64(i as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        one(&mut state, i)?;
                        h.record(due.elapsed().as_nanos() as u64).ok();
                    }
                    Ok(h)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let mut all = Histogram::<u64>::new(3)?;
    for h in &hists {
        all.add(h)?;
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), all))
}

/// Run lookups `0..n` at `rate`/s in all from one pacing thread, each as a task on `rt` (as an
/// async client such as an agent asks): lookups/s reached and each latency from its scheduled
/// start, in ns. The first failure is returned.
fn paced_async<F>(
    rt: &tokio::runtime::Runtime,
    n: u64,
    rate: u64,
    one: impl Fn(u64) -> F,
) -> Result<(f64, Histogram<u64>)>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel::<Result<u64>>();
    let start = Instant::now();
    for i in 0..n {
        let due = start + gap.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (lookup, tx) = (one(i), tx.clone());
        rt.spawn(async move {
            let _ = tx.send(lookup.await.map(|()| due.elapsed().as_nanos() as u64));
        });
    }
    drop(tx);
    let mut all = Histogram::<u64>::new(3)?;
    while let Some(latency) = done.blocking_recv() {
        all.record(latency?).ok();
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), all))
}

fn row(name: &str, rate: f64, h: &Histogram<u64>, ours_p99: u64, cpu: Cpu) {
    println!(
        "{:<44} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.2} {:>9.0} {:>9.0}",
        name,
        rate,
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / ours_p99.max(1) as f64,
        cpu.servers,
        cpu.client,
    );
}

/// CPU µs per lookup in the serving processes (the agents, or redis) and in the client.
#[derive(Clone, Copy)]
pub(crate) struct Cpu {
    servers: f64,
    client: f64,
}

/// Run `f` and the CPU it cost `servers` and this process, per each of `n` lookups.
fn with_cpu<T>(servers: &[u32], n: u64, f: impl FnOnce() -> Result<T>) -> Result<(T, Cpu)> {
    let me = std::process::id();
    let before: u64 = servers.iter().map(|p| cpu_us(*p)).sum();
    let mine = cpu_us(me);
    let out = f()?;
    let used: u64 = servers.iter().map(|p| cpu_us(*p)).sum::<u64>() - before;
    let n = n.max(1) as f64;
    Ok((out, Cpu { servers: used as f64 / n, client: cpu_us(me).saturating_sub(mine) as f64 / n }))
}

/// What `sb-bench dlr` runs (see its `--help`).
pub(crate) struct DlrBench {
    pub(crate) records: u64,
    pub(crate) lookups: u64,
    pub(crate) rate: u64,
    pub(crate) clients: usize,
    pub(crate) cache_mb: u64,
    pub(crate) repeat: u32,
    pub(crate) copies: usize,
}

/// Three node processes, `records` open records registered on each and copied to their
/// replicas, stores settled. With `tls` (a directory of [`switchboard_bus::tls::write_cluster`]),
/// the bus runs mutual TLS with the access policy.
pub(crate) struct Cluster {
    /// Configs, data and (with `SWITCHBOARD_LOG` set, kept) logs of the nodes.
    dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub(crate) name: String,
    pub(crate) ports: Vec<u16>,
    pub(crate) nodes: Vec<NodeProc>,
    /// Each node's resident memory before the records.
    rss0: Vec<u64>,
    /// Copies of each record on other nodes.
    copies: u64,
}

/// The identities of a TLS run: the nodes, and the bench's client as an admin.
pub(crate) fn tls_identities() -> Vec<switchboard_bus::tls::Identity> {
    use switchboard_bus::tls::{IdRole, Identity};
    let mut ids: Vec<Identity> =
        (0..NODES).filter_map(|i| Identity::new(IdRole::Agent, &format!("n{i}")).ok()).collect();
    ids.extend(Identity::new(IdRole::Admin, "bench").ok());
    ids
}

impl Cluster {
    pub(crate) fn start(records: u64, cache_mb: u64, tls: bool) -> Result<Self> {
        Self::start_with(records, cache_mb, tls, 1, "[limits]\nenabled = false\n")
    }

    /// Like [`Cluster::start`], with `copies` of each record on other nodes and `limits` as the
    /// nodes' `[limits]` table.
    pub(crate) fn start_with(records: u64, cache_mb: u64, tls: bool, copies: usize, limits: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let (dir, tmp) = if std::env::var_os("SWITCHBOARD_LOG").is_some() {
            println!("node logs in {} (kept)", tmp.path().display());
            (tmp.keep(), None)
        } else {
            (tmp.path().to_owned(), Some(tmp))
        };
        let tls_dir = dir.join("tls");
        if tls {
            switchboard_bus::tls::write_cluster(&tls_dir, &tls_identities())?;
        }
        let tls_dir = tls.then_some(tls_dir.as_path());
        let name = format!("dlrbench{}", std::process::id());
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect::<Result<_>>()?;
        let extra = format!("{limits}\n[dlr]\nrecord_events = false\ncache_mb = {cache_mb}\ncopies = {copies}\n");
        let nodes: Vec<NodeProc> = (0..NODES)
            .map(|i| spawn_node(&dir, &name, i, ports[i], &ports[..i], &extra, tls_dir))
            .collect::<Result<_>>()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, n) in nodes.iter().enumerate() {
            while dlr_status(n)["live_nodes"].as_array().map_or(0, Vec::len) != NODES {
                if Instant::now() > deadline {
                    let seen = |n: &NodeProc| dlr_status(n)["live_nodes"].to_string();
                    let views: Vec<String> =
                        nodes.iter().enumerate().map(|(j, n)| format!("n{j} sees {}", seen(n))).collect();
                    bail!(
                        "the nodes did not see each other within 30 s (n{i} first; {}; bus ports {ports:?}; \
                         SWITCHBOARD_LOG=info keeps their logs)",
                        views.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let rss0: Vec<u64> = nodes.iter().map(|n| rss_bytes(n.child.id())).collect();
        let cluster = Self { dir, _tmp: tmp, name, ports, nodes, rss0, copies: copies.min(NODES - 1) as u64 };
        cluster.register(records)?;
        Ok(cluster)
    }

    fn register(&self, records: u64) -> Result<()> {
        let nodes = &self.nodes;
        println!("registering {records} records on each of {NODES} nodes ({} in all) ...", records * NODES as u64);
        let t = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    s.spawn(move || -> Result<()> {
                        let mut http = Http::connect(node.http)?;
                        for start in (0..records).step_by(BATCH as usize) {
                            let batch: Vec<serde_json::Value> = (start..(start + BATCH).min(records))
                                .map(|k| {
                                    serde_json::json!({
                                        "connector": CONNECTOR, "msg_id": msg_id(i, k), "destination": format!("+4915{k:08}"),
                                        "account": format!("acct-{}", k % 100), "gateway_ref": format!("gw{i}-{k:012}"),
                                    })
                                })
                                .collect();
                            let (code, body) =
                                http.post("/v1/dlr/register", &serde_json::json!({ "records": batch }).to_string())?;
                            if code != 201 {
                                bail!("register on node {i}: {code} {}", String::from_utf8_lossy(&body));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("a register thread panicked"))??;
            }
            Ok(())
        })?;
        let took = t.elapsed();
        println!(
            "registered in {took:.1?}: {:.0} registrations/s (HTTP batches of {BATCH}, 3 nodes at once)",
            (records * NODES as u64) as f64 / took.as_secs_f64()
        );
        let want = records * NODES as u64 * self.copies;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let copies: u64 =
                nodes.iter().map(|n| dlr_status(n)["counters"]["replica_ops_received"].as_u64().unwrap_or(0)).sum();
            if copies >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {copies} of {want} copies made within 600 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("copies on replicas after {:.1?}", t.elapsed());
        // Let memtables flush and compactions settle before measuring lookups, memory and
        // disk: until the agents' disk use holds still and their CPU falls under a tenth of a
        // core for 3 s (compacting a bulk load keeps both cores busy for minutes), at most 300 s.
        let settle = Instant::now();
        let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
        let mut last: Vec<u64> = Vec::new();
        let busy = loop {
            let cpu0: u64 = pids.iter().map(|p| cpu_us(*p)).sum();
            std::thread::sleep(Duration::from_secs(3));
            let busy = pids.iter().map(|p| cpu_us(*p)).sum::<u64>().saturating_sub(cpu0) as f64 / 3e6;
            let disk: Vec<u64> = nodes.iter().map(|n| dlr_status(n)["disk_bytes"].as_u64().unwrap_or(0)).collect();
            if (disk == last && busy < 0.1) || settle.elapsed() > Duration::from_secs(300) {
                break busy;
            }
            last = disk;
        };
        println!(
            "stores settled after {:.1?} more (the agents' CPU {:.0}% of a core over the last 3 s)",
            settle.elapsed(),
            busy * 100.0
        );
        Ok(())
    }

    /// A zenoh client session connected to every node (as the bench's admin with TLS).
    pub(crate) fn client(&self, rt: &tokio::runtime::Runtime, tls: bool) -> Result<zenoh::Session> {
        let e = |e: zenoh::Error| anyhow::anyhow!("{e}");
        let session = rt.block_on(async {
            let mut config = zenoh::Config::default();
            let proto = if tls { crate::tls::proto() } else { "tcp" };
            let endpoints: Vec<String> = self.ports.iter().map(|p| format!("\"{proto}/127.0.0.1:{p}\"")).collect();
            config.insert_json5("connect/endpoints", &format!("[{}]", endpoints.join(","))).map_err(e)?;
            config.insert_json5("listen/endpoints", "[]").map_err(e)?;
            config.insert_json5("scouting/multicast/enabled", "false").map_err(e)?;
            if tls {
                let dir = self.dir.join("tls");
                let path = |f: &str| serde_json::Value::from(dir.join(f).to_string_lossy().into_owned()).to_string();
                for (k, f) in [
                    ("root_ca_certificate", "ca.crt"),
                    ("connect_certificate", "admin-bench.crt"),
                    ("connect_private_key", "admin-bench.key"),
                ] {
                    config.insert_json5(&format!("transport/link/tls/{k}"), &path(f)).map_err(e)?;
                }
                config.insert_json5("transport/link/tls/enable_mtls", "true").map_err(e)?;
                config.insert_json5("transport/link/tls/verify_name_on_connect", "false").map_err(e)?;
            }
            zenoh::open(config).await.map_err(e)
        })?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(session)
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.child.id()).collect()
    }
}

/// One paced run: (lookups/s, latency histogram in ns) and the CPU it cost.
pub(crate) type Run = ((f64, Histogram<u64>), Cpu);

/// The ask-stream row alone, `repeat` times on one cluster: (lookups/s, latency) of each run.
pub(crate) fn ask_stream(records: u64, lookups: u64, rate: u64, repeat: u32, tls: bool) -> Result<Vec<Run>> {
    let cluster = Cluster::start(records, 16, tls)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let session = cluster.client(&rt, tls)?;
    let ids = picks(lookups, records);
    let keys = switchboard_bus::keys::KeySpace::new(&format!("sb/{}", cluster.name))?;
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
    let stats = std::sync::Arc::new(switchboard_agent::dlr::DlrStats::default());
    let asker =
        std::sync::Arc::new(rt.block_on(switchboard_agent::dlr::ask::Asker::new(&session, &keys, "bench", stats))?);
    let ask = |i: u64| ask_one(asker.clone(), names.clone(), ids[i as usize]);
    for i in 0..lookups.min(2000) {
        rt.block_on(ask(i))?;
    }
    take_unanswered();
    let pids = cluster.pids();
    (0..repeat).map(|_| with_cpu(&pids, lookups, || paced_async(&rt, lookups, rate, ask))).collect()
}

/// Asks of [`ask_one`] and queries of [`lookup`] that got no answer within their time (each
/// counted in its row's latencies at the time it gave up).
static UNANSWERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The asks left unanswered since the last call.
pub(crate) fn take_unanswered() -> u64 {
    UNANSWERED.swap(0, std::sync::atomic::Ordering::Relaxed)
}

/// Print the asks of the row just printed that got no answer, if any.
fn say_unanswered() {
    let n = take_unanswered();
    if n > 0 {
        println!("{:<44} {n} lookups unanswered in time (in the row at the time waited)", "");
    }
}

/// One lookup on the ask stream, at the node that must hold the record; an ask unanswered
/// within 2 s is counted ([`take_unanswered`]) and its latency is the time it waited.
async fn ask_one(
    asker: std::sync::Arc<switchboard_agent::dlr::ask::Asker>,
    names: Vec<String>,
    (node, k): (usize, u64),
) -> Result<()> {
    let id = msg_id(node, k);
    let key = switchboard_bus::dlr::record::store_key(CONNECTOR, &id);
    let first = switchboard_bus::dlr::rendezvous::first_holder(&key, names.iter().map(String::as_str))
        .context("no live node")?;
    if asker.ask(first, CONNECTOR, &id, Duration::from_secs(2)).await?.is_none() {
        UNANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

pub(crate) fn run(bench: &DlrBench) -> Result<()> {
    let DlrBench { records, lookups, rate, clients, cache_mb, repeat, copies } = *bench;
    let cluster = Cluster::start_with(records, cache_mb, false, copies, "[limits]\nenabled = false\n")?;
    println!("block cache {cache_mb} MiB per agent; {copies} copies of each record on other nodes");
    let copies_made = cluster.copies;
    let (nodes, rss0, pids) = (&cluster.nodes, &cluster.rss0, cluster.pids());
    // What the agents spend with nothing asked (census, expiry, status, the bus's keep-alives):
    // part of every row's server CPU.
    let ((), rest) = with_cpu(&pids, 1, || {
        std::thread::sleep(Duration::from_secs(5));
        Ok(())
    })?;
    let per_s = rest.servers / 5.0;
    println!(
        "agents at rest: {per_s:.0} µs of CPU per second in all ({:.1}% of a core; {:.1} µs a lookup at {rate}/s, in every row's srv CPU)",
        per_s / 1e4,
        per_s / rate.max(1) as f64
    );
    let ids = picks(lookups, records);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let session = cluster.client(&rt, false)?;
    let cluster = &cluster.name;
    let prefix = format!("sb/{cluster}");
    let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
    let bus_lookup = |node: usize, k: u64, every: bool| -> Result<()> {
        rt.block_on(lookup(&session, &prefix, &names, &msg_id(node, k), every, Duration::from_secs(2)))
    };
    for (node, k) in ids.iter().take(2000) {
        bus_lookup(*node, *k, false)?;
        bus_lookup(*node, *k, true)?;
    }
    if take_unanswered() >= 4000.min(2 * lookups) {
        bail!("no lookup on the bus was answered: the cluster does not serve them");
    }
    println!(
        "\n{:<44} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "lookup (records open per node: ".to_owned() + &records.to_string() + ")",
        "lookups/s",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "p99 x",
        "srv CPU",
        "cli CPU"
    );
    let bus_row = |every: bool| {
        with_cpu(&pids, lookups, || {
            paced_async(&rt, lookups, rate, |i| {
                let (node, k) = ids[i as usize];
                let (session, prefix, names) = (session.clone(), prefix.clone(), names.clone());
                async move { lookup(&session, &prefix, &names, &msg_id(node, k), every, Duration::from_secs(2)).await }
            })
        })
    };
    let stats = std::sync::Arc::new(switchboard_agent::dlr::DlrStats::default());
    let keys = switchboard_bus::keys::KeySpace::new(&prefix)?;
    let asker = std::sync::Arc::new(rt.block_on(switchboard_agent::dlr::ask::Asker::new(
        &session,
        &keys,
        "bench",
        stats.clone(),
    ))?);
    let ask = |i: u64| ask_one(asker.clone(), names.clone(), ids[i as usize]);
    for i in 0..lookups.min(2000) {
        rt.block_on(ask(i))?;
    }
    take_unanswered();
    let ((r, bus), cpu) = with_cpu(&pids, lookups, || paced_async(&rt, lookups, rate, ask))?;
    let ours = bus.value_at_quantile(0.99);
    row("bus: ask stream, the node that must hold it", r, &bus, ours, cpu);
    say_unanswered();
    for _ in 1..repeat {
        let ((r, bus), cpu) = with_cpu(&pids, lookups, || paced_async(&rt, lookups, rate, ask))?;
        row("bus: ask stream, again", r, &bus, ours, cpu);
        say_unanswered();
    }
    let ((r, h), cpu) = with_cpu(&pids, lookups, || ask_stream_bare(&session, &keys, &names, &ids, lookups, rate))?;
    row("bus: ask stream, bare client (no runtime)", r, &h, ours, cpu);
    let ((r, h), cpu) = bus_row(false)?;
    row("bus: query the node that must hold it", r, &h, ours, cpu);
    say_unanswered();
    let ((r, h), cpu) = bus_row(true)?;
    row("bus: every node, owner's answer (1 trip)", r, &h, ours, cpu);
    say_unanswered();
    let ((r, h), cpu) = zenoh_floor(&rt, lookups, rate)?;
    row("zenoh alone: fixed reply, same pacing", r, &h, ours, cpu);

    // `POST /v1/dlr/resolve` of lookup `i`, which must answer 200.
    let http_resolve = |http: &mut Http, i: u64| -> Result<()> {
        let (node, k) = ids[i as usize];
        let body = format!("{{\"connector\":\"{CONNECTOR}\",\"msg_id\":\"{}\"}}", msg_id(node, k));
        let (code, answer) = http.post("/v1/dlr/resolve", &body)?;
        if code != 200 {
            bail!("resolve: {code} {}", String::from_utf8_lossy(&answer));
        }
        Ok(())
    };
    let resolve = || paced(lookups, rate, clients, |_| Http::connect(nodes[0].http), http_resolve);
    let ((r, h), cpu) = with_cpu(&pids, lookups, resolve)?;
    row("agent API /v1/dlr/resolve (HTTP, via bus)", r, &h, ours, cpu);

    // The gateway protocol: `RESOLVE <connector> <id>` on a Unix socket and on TCP, one
    // connection per client thread, one request in flight each.
    let resolve_line = |i: u64| {
        let (node, k) = ids[i as usize];
        format!("RESOLVE {CONNECTOR} {}\n", msg_id(node, k)).into_bytes()
    };
    fn answered<S: std::io::Read + std::io::Write>(
        conn: &mut (std::io::BufReader<S>, S, String),
        req: &[u8],
    ) -> Result<()> {
        let (reader, writer, line) = conn;
        crate::limits_cluster::ask(reader, writer, req, line)?;
        if !line.starts_with("OK ") {
            bail!("resolve: {}", line.trim());
        }
        Ok(())
    }
    let unix = || {
        paced(
            lookups,
            rate,
            clients,
            |_| {
                let s = std::os::unix::net::UnixStream::connect(&nodes[0].socket)?;
                Ok((std::io::BufReader::new(s.try_clone()?), s, String::new()))
            },
            |conn, i| answered(conn, &resolve_line(i)),
        )
    };
    let ((r, h), cpu) = with_cpu(&pids, lookups, unix)?;
    row("agent gateway socket RESOLVE (Unix)", r, &h, ours, cpu);
    let tcp = || {
        paced(
            lookups,
            rate,
            clients,
            |_| {
                let s = crate::limits_cluster::connect_tcp(nodes[0].gateway_tcp)?;
                Ok((std::io::BufReader::new(s.try_clone()?), s, String::new()))
            },
            |conn, i| answered(conn, &resolve_line(i)),
        )
    };
    let ((r, h), cpu) = with_cpu(&pids, lookups, tcp)?;
    row("agent gateway socket RESOLVE (TCP loopback)", r, &h, ours, cpu);
    let here = dlr_status(&nodes[0])["counters"]["answered_here"].as_u64().unwrap_or(0);
    println!("{:<44} {here} resolves on n0 so far answered from its own store (its records and copies)", "");

    // Where the time goes: the same lookups split by whether n0 holds the record (its own or
    // its copy: answered from its store) or not (one bus round trip to the node that does).
    let local_line = |i: u64| {
        let (node, k) = ids[i as usize];
        format!("RESOLVE {{\"connector\":\"{CONNECTOR}\",\"msg_id\":\"{}\",\"local\":true}}\n", msg_id(node, k))
            .into_bytes()
    };
    let (held, elsewhere): (Vec<u64>, Vec<u64>) = {
        let s = std::os::unix::net::UnixStream::connect(&nodes[0].socket)?;
        let mut conn = (std::io::BufReader::new(s.try_clone()?), s, String::new());
        let mut held = Vec::new();
        let mut elsewhere = Vec::new();
        for i in 0..lookups {
            match answered(&mut conn, &local_line(i)) {
                Ok(()) => held.push(i),
                Err(_) => elsewhere.push(i),
            }
        }
        (held, elsewhere)
    };
    println!("{:<44} n0 holds {} of the {lookups} records looked up", "", held.len());
    let split = |which: &[u64], line: &(dyn Fn(u64) -> Vec<u8> + Sync)| {
        let n = which.len() as u64;
        with_cpu(&pids, n, || {
            paced(
                n,
                rate,
                clients,
                |_| {
                    let s = std::os::unix::net::UnixStream::connect(&nodes[0].socket)?;
                    Ok((std::io::BufReader::new(s.try_clone()?), s, String::new()))
                },
                |conn, j| answered(conn, &line(which[j as usize])),
            )
        })
    };
    let ((r, h), cpu) = split(&held, &resolve_line)?;
    row("  socket, held here (store, no bus)", r, &h, ours, cpu);
    if elsewhere.is_empty() {
        println!("{:<44} none: n0 holds every record", "  socket, held elsewhere (1 bus trip)");
    } else {
        let ((r, h), cpu) = split(&elsewhere, &resolve_line)?;
        row("  socket, held elsewhere (1 bus trip)", r, &h, ours, cpu);
    }
    let n = held.len() as u64;
    let ((r, h), cpu) = with_cpu(&pids, n, || {
        paced(n, rate, clients, |_| Http::connect(nodes[0].http), |http, j| http_resolve(http, held[j as usize]))
    })?;
    row("  HTTP, held here (store, no bus)", r, &h, ours, cpu);

    let asked = std::sync::atomic::AtomicU64::new(0);
    let each = |_| nodes.iter().map(|n| Http::connect(n.http)).collect::<Result<Vec<_>>>();
    let forward = || {
        paced(lookups, rate, clients, each, |each, i| {
            let (node, k) = ids[i as usize];
            let body = format!("{{\"connector\":\"{CONNECTOR}\",\"msg_id\":\"{}\",\"local\":true}}", msg_id(node, k));
            for client in each.iter_mut() {
                asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if client.post("/v1/dlr/resolve", &body)?.0 == 200 {
                    return Ok(());
                }
            }
            bail!("{}: on no node", msg_id(node, k))
        })
    };
    let ((r, h), cpu) = with_cpu(&pids, lookups, forward)?;
    row("node-by-node forwarding (HTTP, each store)", r, &h, ours, cpu);
    println!("{:<44} {:.2} nodes asked per lookup on average", "", asked.into_inner() as f64 / lookups as f64);

    match redis_hash(records, lookups, rate, clients, &ids) {
        Ok(((r, h), cpu)) => row("shared Redis hash, HGET (1 round trip)", r, &h, ours, cpu),
        Err(e) => println!("{:<44} skipped: {e:#}", "shared Redis hash"),
    }

    let r = closed_loop(&rt, |i| Box::pin(ask(i)), lookups)?;
    println!("{:<44} {:>10.0}   (64 lookups in flight, 1 client)", "bus: ask stream, as fast as it goes", r);

    // Each node holds its own records and, on average, `copies` copies of each of the others'
    // (the census in the status document may not have counted them all yet: it is paced).
    let held = records.saturating_mul(1 + copies_made).max(1);
    println!("\nmemory and disk of the agents (each holds its own records and copies of others': {held} on average):");
    for (i, n) in nodes.iter().enumerate() {
        let st = dlr_status(n);
        let census = st["records"].as_u64().unwrap_or(0);
        let grow = rss_bytes(n.child.id()).saturating_sub(rss0[i]);
        let disk = st["disk_bytes"].as_u64().unwrap_or(0);
        println!(
            "  node n{i} (census so far {census}): RSS +{} MiB = {:.1} B per record held, {:.1} B per own record; disk {} MiB = {:.1} B per record held",
            grow >> 20,
            grow as f64 / held as f64,
            grow as f64 / records as f64,
            disk >> 20,
            disk as f64 / held as f64
        );
    }
    println!("targets: p99 < 1000 µs at 10000 lookups/s; < 200 B per open record in the agent's memory");
    drop(session);
    Ok(())
}

/// Whether a lookup reply comes from the record's owner.
fn is_owner_reply(sample: &zenoh::sample::Sample) -> bool {
    serde_json::from_slice::<serde_json::Value>(&sample.payload().to_bytes()).is_ok_and(|v| v["role"] == "owner")
}

/// One lookup as a zenoh client does it (docs/protocol.md): ask the heaviest of the live
/// `nodes` alone and take its answer, or (`every`) ask every node and wait for the owner's.
async fn lookup(
    session: &zenoh::Session,
    prefix: &str,
    nodes: &[String],
    id: &str,
    every: bool,
    timeout: Duration,
) -> Result<()> {
    let key = if every {
        format!("{prefix}/dlr/at/*/{CONNECTOR}/{id}")
    } else {
        let record_key = switchboard_bus::dlr::record::store_key(CONNECTOR, id);
        let first = switchboard_bus::dlr::rendezvous::first_holder(&record_key, nodes.iter().map(String::as_str))
            .context("no live node")?;
        format!("{prefix}/dlr/at/{first}/{CONNECTOR}/{id}")
    };
    let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    session
        .get(key.as_str())
        .target(if every { QueryTarget::All } else { QueryTarget::BestMatching })
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .callback(move |r| {
            let _ = tx.send(r);
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    while let Some(reply) = replies.recv().await {
        if reply.result().is_ok_and(|s| !every || is_owner_reply(s)) {
            return Ok(());
        }
    }
    // Counted, with the time it waited as its latency: a row at a rate the nodes cannot keep
    // up with (a slow machine) says so instead of ending the whole run.
    UNANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The ask stream as any zenoh client can speak it (docs/protocol.md), with no async runtime:
/// the pacing thread publishes each ask itself and the answer subscriber's callback takes the
/// latency, so the client adds no thread hand-off of its own to the bus round trip.
fn ask_stream_bare(
    session: &zenoh::Session,
    keys: &switchboard_bus::keys::KeySpace,
    names: &[String],
    ids: &[(usize, u64)],
    n: u64,
    rate: u64,
) -> Result<(f64, Histogram<u64>)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use switchboard_bus::dlr::wire::{DlrAnswer, DlrAsk};
    use zenoh::Wait;

    let client = format!("bare.{}", session.zid());
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let (answered, missed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (h, a, m) = (latencies.clone(), answered.clone(), missed.clone());
    let _answers = session
        .declare_subscriber(keys.dlr_answers(&client)?)
        .callback(move |sample| {
            let took = Instant::now();
            match serde_json::from_slice::<DlrAnswer>(&sample.payload().to_bytes()) {
                Ok(DlrAnswer { n, reply: Some(_), .. }) => {
                    let due = start + gap.mul_f64(n as f64);
                    h.lock().unwrap_or_else(|p| p.into_inner()).record(took.duration_since(due).as_nanos() as u64).ok();
                }
                _ => {
                    m.fetch_add(1, Ordering::Relaxed);
                }
            }
            a.fetch_add(1, Ordering::Relaxed);
        })
        .wait()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let publishers = names
        .iter()
        .map(|node| {
            session
                .declare_publisher(keys.dlr_ask(node)?)
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .express(true)
                .wait()
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    for i in 0..n {
        let due = start + gap.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (node, k) = ids[i as usize];
        let id = msg_id(node, k);
        let key = switchboard_bus::dlr::record::store_key(CONNECTOR, &id);
        let first = switchboard_bus::dlr::rendezvous::first_holder(&key, names.iter().map(String::as_str))
            .context("no live node")?;
        let at = names.iter().position(|m| m == first).context("an unknown node")?;
        publishers[at].put(DlrAsk::encode(&client, i, CONNECTOR, &id)?).wait().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (got, bad) = (answered.load(Ordering::Relaxed), missed.load(Ordering::Relaxed));
    if got < n || bad > 0 {
        bail!("bare ask stream: {got} of {n} asks answered, {bad} without the record");
    }
    let h = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((n as f64 / start.elapsed().as_secs_f64(), h))
}

/// The floor zenoh sets: a queryable in its own session (over loopback TCP, in this process)
/// answering every query with a fixed 400-byte reply, asked as the lookups are.
fn zenoh_floor(rt: &tokio::runtime::Runtime, n: u64, rate: u64) -> Result<((f64, Histogram<u64>), Cpu)> {
    let port = free_port()?;
    let open = |listen: bool| {
        let mut config = zenoh::Config::default();
        let (l, c) = if listen {
            (format!("[\"tcp/127.0.0.1:{port}\"]"), "[]".to_owned())
        } else {
            ("[]".to_owned(), format!("[\"tcp/127.0.0.1:{port}\"]"))
        };
        config.insert_json5("listen/endpoints", &l).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.insert_json5("connect/endpoints", &c).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.insert_json5("scouting/multicast/enabled", "false").map_err(|e| anyhow::anyhow!("{e}"))?;
        rt.block_on(async { zenoh::open(config).await }).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let server = open(true)?;
    let client = open(false)?;
    let body = vec![b'x'; 400];
    let _queryable = rt.block_on(async {
        server
            .declare_queryable("floor/**")
            .callback(move |q| {
                use zenoh::Wait;
                let _ = q.reply(q.key_expr().clone(), body.clone()).wait();
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let ask = |i: u64| -> Result<()> {
        rt.block_on(async {
            let replies = client.get(format!("floor/{i}")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            replies.recv_async().await.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
        })
    };
    for i in 0..2000 {
        ask(i)?;
    }
    with_cpu(&[], n, || {
        paced_async(rt, n, rate, |i| {
            let client = client.clone();
            async move {
                let replies = client.get(format!("floor/{i}")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                replies.recv_async().await.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
            }
        })
    })
}

/// Lookups of the node that must hold each id on the ask stream, 64 in flight from one zenoh
/// session: lookups/s.
fn closed_loop(
    rt: &tokio::runtime::Runtime,
    ask: impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>,
    n: u64,
) -> Result<f64> {
    let n = n.min(100_000);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0u64;
        while next < n && tasks.len() < 64 {
            tasks.spawn(ask(next));
            next += 1;
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| anyhow::anyhow!("{e}"))??;
            if next < n {
                tasks.spawn(ask(next));
                next += 1;
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn resp(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s
}

/// The records in one Redis hash (field `connector:id`, value the record as JSON), then HGET paced.
fn redis_hash(
    records: u64,
    lookups: u64,
    rate: u64,
    clients: usize,
    ids: &[(usize, u64)],
) -> Result<((f64, Histogram<u64>), Cpu)> {
    let (server, stream) = crate::limits::start_redis()?;
    let port = stream.peer_addr()?.port();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    for node in 0..NODES {
        for start in (0..records).step_by(BATCH as usize) {
            let end = (start + BATCH).min(records);
            let mut cmds = String::new();
            for k in start..end {
                let field = format!("{CONNECTOR}:{}", msg_id(node, k));
                let value = format!(
                    r#"{{"owner":"n{node}","destination":"+4915{k:08}","account":"acct-{}","gateway_ref":"gw{node}-{k:012}","submitted_at":1790000000000,"expires_at":1790172800000}}"#,
                    k % 100
                );
                cmds.push_str(&resp(&["HSET", "dlr", &field, &value]));
            }
            writer.write_all(cmds.as_bytes())?;
            for _ in start..end {
                line.clear();
                reader.read_line(&mut line)?;
            }
        }
    }
    let open = |_| -> Result<(TcpStream, BufReader<TcpStream>, String, Vec<u8>)> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok((stream.try_clone()?, BufReader::new(stream), String::new(), Vec::new()))
    };
    let hget = || {
        paced(lookups, rate, clients, open, |(writer, reader, line, buf), i| {
            let (node, k) = ids[i as usize];
            writer.write_all(resp(&["HGET", "dlr", &format!("{CONNECTOR}:{}", msg_id(node, k))]).as_bytes())?;
            line.clear();
            reader.read_line(line)?;
            let len: usize =
                line.trim_end().strip_prefix('$').and_then(|v| v.parse().ok()).context("HGET: no record")?;
            buf.resize(len + 2, 0);
            reader.read_exact(buf)?;
            Ok(())
        })
    };
    with_cpu(&[server.pid()], lookups, hget)
}
