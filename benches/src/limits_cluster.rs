//! Limits through real node agents: the cost of a decision through the agent's local APIs, and
//! the accuracy of a cluster-wide limit shared by several node processes under uneven, shifting
//! demand.
//!
//! Every node is this benchmark's own executable started as `sb-bench limits-node --config F`,
//! which runs a full node agent (bus session, coordination, APIs). Each node starts on the same
//! stored limits revision (its history file is written first, as a node that already took
//! `switchboard limits set` would have it). Demand is driven from this process over each node's
//! Unix socket; every allowed unit is timestamped here, and admissions of all nodes together are
//! counted per 1 s window, sliding in 100 ms steps, as a share of the limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use switchboard_agent::config::AgentConfig;
use switchboard_bus::limits::revision::{self, History, Revision};
use switchboard_bus::limits::LimitSpec;

use crate::ports::free_port;

/// Run a node agent from a config file until SIGTERM/SIGINT (the `limits-node` subcommand).
pub(crate) fn node(config: &Path) -> Result<()> {
    let cfg = AgentConfig::load(config)?;
    // With SWITCHBOARD_LOG set (e.g. `info`), the node logs at that level to its `n<i>.log`.
    if let Some(filter) = std::env::var_os("SWITCHBOARD_LOG").and_then(|f| f.into_string().ok()) {
        let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let agent = switchboard_agent::Agent::start(cfg, cancel.clone()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        cancel.cancel();
        agent.wait().await;
        Ok(())
    })
}

/// A node process, killed on drop.
pub(crate) struct NodeProc {
    pub(crate) child: Child,
    /// The gateway socket (Unix).
    pub(crate) socket: PathBuf,
    /// The gateway protocol on TCP (loopback).
    pub(crate) gateway_tcp: u16,
    pub(crate) http: u16,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write node `i`'s stored revision of `limits` and start it.
fn start_node(
    dir: &Path,
    cluster: &str,
    i: usize,
    port: u16,
    connect: &[u16],
    limits: &[LimitSpec],
) -> Result<NodeProc> {
    let history = History {
        version: 1,
        revisions: vec![Revision {
            revision: 1,
            author: "bench".into(),
            at_ms: 0,
            comment: String::new(),
            limits: limits.to_vec(),
        }],
    };
    revision::save(&dir.join(format!("node{i}")).join("limits").join("history.json"), &history)?;
    spawn_node(dir, cluster, i, port, connect, "[limits]\nrecord_decisions = false\n", None)
}

/// Write node `i`'s config (bus, data dir, HTTP port, then `extra` TOML) and start it; with
/// `tls` (a directory of [`switchboard_bus::tls::write_cluster`]), as `agent:n<i>` on mutual TLS.
pub(crate) fn spawn_node(
    dir: &Path,
    cluster: &str,
    i: usize,
    port: u16,
    connect: &[u16],
    extra: &str,
    tls: Option<&Path>,
) -> Result<NodeProc> {
    let data = dir.join(format!("node{i}"));
    let http = free_port()?;
    let gateway_tcp = free_port()?;
    let proto = if tls.is_some() { crate::tls::proto() } else { "tcp" };
    let connect: Vec<String> = connect.iter().map(|p| format!("\"{proto}/127.0.0.1:{p}\"")).collect();
    let tls = tls.map_or(String::new(), |t| {
        let t = t.display();
        format!("[bus.tls]\nca = \"{t}/ca.crt\"\ncert = \"{t}/agent-n{i}.crt\"\nkey = \"{t}/agent-n{i}.key\"\n\n")
    });
    let cfg = dir.join(format!("node{i}.toml"));
    let metrics = if extra.contains("[metrics]") { "" } else { "[metrics]\nenabled = false\n\n" };
    // SB_BUSY_POLL_US sets the nodes' `gateway.busy_poll_us`, to compare budgets.
    let busy_poll = std::env::var("SB_BUSY_POLL_US").map_or(String::new(), |us| format!("busy_poll_us = {us}\n"));
    let gateway = format!("[gateway]\ntcp_listen = \"127.0.0.1:{gateway_tcp}\"\n{busy_poll}\n");
    std::fs::write(
        &cfg,
        format!(
            "[bus]\ncluster = \"{cluster}\"\nnode = \"n{i}\"\n{}listen = [\"{proto}/127.0.0.1:{port}\"]\nconnect = [{}]\n\n{tls}[agent]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\n{gateway}{metrics}{extra}",
            crate::bus_compression().map_or(String::new(), |on| format!("compression = {on}\n")),
            connect.join(", "),
            data.display()
        ),
    )?;
    // With SWITCHBOARD_LOG set, each node's log goes to `n<i>.log` beside its config.
    let stderr = match std::env::var_os("SWITCHBOARD_LOG") {
        Some(_) => Stdio::from(std::fs::File::create(dir.join(format!("n{i}.log")))?),
        None => Stdio::null(),
    };
    let child = Command::new(std::env::current_exe()?)
        .args(["limits-node", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("starting a node process")?;
    Ok(NodeProc { child, socket: data.join("gateway.sock"), gateway_tcp, http })
}

fn connect_socket(path: &Path) -> Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() > Duration::from_secs(20) => bail!("{}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A connection to a node's gateway protocol on TCP, with Nagle off.
pub(crate) fn connect_tcp(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("gateway TCP port {port}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One request over a socket connection: the answer line.
pub(crate) fn ask<S: Read + Write>(
    reader: &mut BufReader<S>,
    writer: &mut S,
    req: &[u8],
    line: &mut String,
) -> Result<()> {
    writer.write_all(req)?;
    line.clear();
    if reader.read_line(line)? == 0 {
        bail!("the node closed the connection");
    }
    Ok(())
}

pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|x| x.1.to_owned())
}

/// Wait until every node sees all `n` nodes live.
fn wait_for_mesh(nodes: &[NodeProc]) -> Result<()> {
    let n = nodes.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in nodes {
        loop {
            let live = http_get(node.http, "/v1/limits")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v["nodes"].as_object().map(|m| m.values().filter(|p| p["state"] == "live").count()));
            if live == Some(n) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the nodes did not all see each other within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// `n` requests over one connection, request `i` being `reqs[i % len]`, with up to `depth` in
/// flight (1: each waits for its answer): requests/s and each latency from its send to its answer
/// line, which `ok` must accept.
pub(crate) fn pipelined<S: Read + Write>(
    reader: &mut BufReader<S>,
    writer: &mut S,
    reqs: &[Vec<u8>],
    n: u64,
    depth: u64,
    ok: impl Fn(&str) -> bool,
) -> Result<(f64, Histogram<u64>)> {
    let mut h = Histogram::<u64>::new(3)?;
    let mut sent = std::collections::VecDeque::new();
    let mut line = String::new();
    let start = Instant::now();
    for i in 0..n + depth {
        if i < n {
            writer.write_all(&reqs[i as usize % reqs.len()])?;
            sent.push_back(Instant::now());
        }
        if sent.len() as u64 >= depth || i >= n {
            let Some(t) = sent.pop_front() else { break };
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("the server closed the connection");
            }
            if !ok(&line) {
                bail!("unexpected answer {line:?}");
            }
            h.record(t.elapsed().as_nanos() as u64).ok();
        }
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), h))
}

/// Decision cost through one node's APIs: (Unix socket, HTTP keep-alive) figures.
pub(crate) fn api_cost(requests: u64) -> Result<Vec<(String, f64, Histogram<u64>)>> {
    let dir = tempfile::tempdir()?;
    let limits =
        vec![LimitSpec { key: "operator:*".into(), rate: Some(500), per: None, concurrency: None, burst: None }];
    let mut node = start_node(dir.path(), &format!("bench{}", std::process::id()), 0, free_port()?, &[], &limits)?;
    let measured = api_rows(&node, requests);
    // A node that died says so (run with SWITCHBOARD_LOG=1 for its log).
    match (measured, node.child.try_wait()) {
        (Err(e), Ok(Some(status))) => Err(e.context(format!("the node process exited: {status}"))),
        (measured, _) => measured,
    }
}

/// The rows of [`api_cost`], measured against `node`.
fn api_rows(node: &NodeProc, requests: u64) -> Result<Vec<(String, f64, Histogram<u64>)>> {
    let reqs: Vec<Vec<u8>> = (0..16).map(|i| format!("ACQUIRE operator:op{i}\n").into_bytes()).collect();
    let decision = |line: &str| line.starts_with("OK") || line.starts_with("DENY") || line.starts_with("UNLIMITED");
    let sock = connect_socket(&node.socket)?;
    let (mut reader, mut writer) = (BufReader::new(sock.try_clone()?), sock);
    pipelined(&mut reader, &mut writer, &reqs, 10_000, 1, decision)?; // warm up
    let mut out = Vec::new();
    for (depth, name) in
        [(1, "agent API, Unix socket, 1 client"), (16, "agent API, Unix socket, 1 client, 16 pipelined")]
    {
        let (rate, h) = pipelined(&mut reader, &mut writer, &reqs, requests, depth, decision)?;
        out.push((name.to_owned(), rate, h));
    }
    let tcp = connect_tcp(node.gateway_tcp)?;
    let (mut reader, mut writer) = (BufReader::new(tcp.try_clone()?), tcp);
    pipelined(&mut reader, &mut writer, &reqs, 10_000, 1, decision)?;
    let (rate, h) = pipelined(&mut reader, &mut writer, &reqs, requests, 1, decision)?;
    out.push(("agent API, TCP loopback, 1 client".to_owned(), rate, h));
    let mut line = String::new();

    let http_requests = requests / 2;
    let mut s = TcpStream::connect(("127.0.0.1", node.http))?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let bodies: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let body = format!("{{\"key\":\"operator:op{i}\"}}");
            format!(
                "POST /v1/limits/acquire HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let mut h = Histogram::<u64>::new(3)?;
    let mut one = |i: u64, h: Option<&mut Histogram<u64>>| -> Result<()> {
        let t = Instant::now();
        s.write_all(&bodies[(i & 15) as usize])?;
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                bail!("the node closed the HTTP connection");
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        if let Some(h) = h {
            h.record(t.elapsed().as_nanos() as u64).ok();
        }
        Ok(())
    };
    for i in 0..5_000 {
        one(i, None)?;
    }
    let start = Instant::now();
    for i in 0..http_requests {
        one(i, Some(&mut h))?;
    }
    let http_rate = http_requests as f64 / start.elapsed().as_secs_f64();
    out.push(("agent API, HTTP keep-alive, 1 client".to_owned(), http_rate, h));
    Ok(out)
}

/// Paced demand on one node; records allowed units.
struct Driver {
    rate: Arc<AtomicU64>,
    allowed: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<()>>,
}

fn drive(socket: PathBuf, rate: u64) -> Driver {
    let (r, stop, allowed) =
        (Arc::new(AtomicU64::new(rate)), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let (r2, s2, a2) = (r.clone(), stop.clone(), allowed.clone());
    let handle = std::thread::spawn(move || -> Result<()> {
        let sock = connect_socket(&socket)?;
        let mut reader = BufReader::new(sock.try_clone()?);
        let mut writer = sock;
        let mut line = String::new();
        let tick = Duration::from_millis(2);
        let (mut owed, mut next) = (0.0f64, Instant::now());
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
            owed += r2.load(Ordering::Relaxed) as f64 * tick.as_secs_f64();
            while owed >= 1.0 {
                owed -= 1.0;
                ask(&mut reader, &mut writer, b"ACQUIRE operator:x\n", &mut line)?;
                if line.starts_with("OK") {
                    a2.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Instant::now());
                }
            }
            next += tick;
            match next.checked_duration_since(Instant::now()) {
                Some(d) => std::thread::sleep(d),
                None => next = Instant::now(),
            }
        }
        Ok(())
    });
    Driver { rate: r, allowed, stop, handle }
}

/// Accuracy: `nodes` processes share `limit`/s under demand that rotates every `phase`.
pub(crate) fn accuracy(nodes: usize, limit: u64, phase: Duration) -> Result<()> {
    println!();
    println!("== limits: accuracy, {nodes} node processes sharing {limit}/s, demand rotating every {phase:?} ==");
    let dir = tempfile::tempdir()?;
    let cluster = format!("acc{}", std::process::id());
    let limits =
        vec![LimitSpec { key: "operator:*".into(), rate: Some(limit), per: None, concurrency: None, burst: None }];
    let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_>>()?;
    let mut procs = Vec::new();
    for i in 0..nodes {
        procs.push(start_node(dir.path(), &cluster, i, ports[i], &ports[..i], &limits)?);
    }
    wait_for_mesh(&procs)?;
    // Uneven demand: 150%, 50%, 25% and 5% of the limit (230% in all), rotating among nodes.
    let weights = [1.5, 0.5, 0.25, 0.05];
    let demand = |phase_no: usize, node: usize| (weights[(node + phase_no) % weights.len()] * limit as f64) as u64;
    let drivers: Vec<Driver> = procs.iter().enumerate().map(|(i, p)| drive(p.socket.clone(), demand(0, i))).collect();
    let start = Instant::now();
    let phases = nodes.max(4);
    for ph in 0..phases {
        if ph > 0 {
            for (i, d) in drivers.iter().enumerate() {
                d.rate.store(demand(ph, i), Ordering::Relaxed);
            }
        }
        std::thread::sleep(phase);
    }
    let end = Instant::now();
    let mut allowed: Vec<Instant> = Vec::new();
    for d in drivers {
        d.stop.store(true, Ordering::Relaxed);
        d.handle.join().map_err(|_| anyhow::anyhow!("a driver panicked"))??;
        allowed.extend(d.allowed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter());
    }
    allowed.sort();
    let count =
        |from: Instant, to: Instant| allowed.partition_point(|t| *t < to) - allowed.partition_point(|t| *t < from);
    let mut ratios = Vec::new();
    let mut t = start + Duration::from_secs(1);
    while t + Duration::from_secs(1) <= end {
        ratios.push(count(t, t + Duration::from_secs(1)) as f64 / limit as f64);
        t += Duration::from_millis(100);
    }
    if ratios.is_empty() {
        bail!("the run was too short to measure");
    }
    let max = ratios.iter().copied().fold(0.0, f64::max);
    let min = ratios.iter().copied().fold(f64::MAX, f64::min);
    let avg = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!("{:<44} {:>10} {:>10} {:>10}", "admitted per 1 s window / limit", "max", "average", "min");
    println!(
        "{:<44} {:>9.1}% {:>9.1}% {:>9.1}%",
        format!("{} windows (sliding, 100 ms step)", ratios.len()),
        max * 100.0,
        avg * 100.0,
        min * 100.0
    );
    println!(
        "target: max <= 101% ({}), average >= 97% ({})",
        if max <= 1.01 { "met" } else { "MISSED" },
        if avg >= 0.97 { "met" } else { "MISSED" }
    );
    drop(procs);
    Ok(())
}
