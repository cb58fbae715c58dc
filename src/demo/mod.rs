//! `switchboard demo`: a short tour of the whole mission on loopback, with no setup.
//!
//! Starts a collector and `nodes` node agents as real `switchboard` processes ([`cluster`]), with
//! their configs written into the demo directory. Agents name only the collector's endpoint and
//! find each other through it. The demo then sets one cluster-wide limit with
//! `switchboard limits set` and, for `duration`, plays each node's gateway ([`load`]): it writes
//! synthetic SMS gateway and MTA logs, asks for the shared limit at uneven rates, registers
//! messages and hands their DLRs to other nodes, and sends StatsD timers. Part way through, one
//! agent is killed with -9 and restarted: its DLRs are answered by copies, its share of the limit
//! goes to the others, and its log lines still land exactly once. Progress is printed every
//! second. At the end the demo waits until the collector holds every line, stops the processes,
//! and prints a summary computed with SQL over the Parquet dataset ([`summary`]), then writes the
//! reports and a chart into `<dir>/reports`.

mod cluster;
mod http;
mod load;
mod summary;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::demo::cluster::{Ports, Proc};
use crate::demo::http::HttpClient;
use crate::demo::load::{Load, LIMIT_KEY, LIMIT_RATE};
use crate::loggen::{GatewayLog, MtaLog};

pub use summary::DemoSummary;

/// A file in the demo directory that marks it as the demo's own (and so safe to clear).
const MARKER: &str = ".switchboard-demo";
/// How long the demo waits for the collector to hold every written line after the writers stop.
const CATCH_UP: Duration = Duration::from_secs(60);
/// How long the killed agent stays down.
const DOWN_FOR: Duration = Duration::from_secs(4);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the gateways run.
    pub duration: Duration,
    /// The demo directory (configs, logs, agent state, dataset, reports); cleared first if the
    /// demo made it.
    pub dir: PathBuf,
    /// Number of node agents.
    pub nodes: usize,
    /// Log lines per second written on each node.
    pub rate: u32,
    /// First of the demo's ports (bus endpoint, then HTTP and StatsD); 0 picks free ones.
    pub port: u16,
    /// Kill one agent with -9 part way through, and restart it.
    pub kill: bool,
}

/// What the demo is doing now, for the progress line.
struct Run {
    started: Instant,
    duration: Duration,
    written: Vec<Arc<AtomicU64>>,
    load: Arc<Load>,
    ports: Ports,
}

/// Run the demo; `cancel` (Ctrl-C) cuts the run short but still shuts down cleanly.
pub async fn run(opts: DemoOptions, cancel: CancellationToken) -> Result<DemoSummary> {
    // The processes and gateways are driven by plain threads; only the SQL summary is async.
    let facts = tokio::task::spawn_blocking(move || drive(opts, cancel)).await.context("the demo's driver")??;
    summary::summarize(&facts).await
}

/// Start the cluster, play the gateways, cause the fault, wait for the dataset, stop.
fn drive(opts: DemoOptions, cancel: CancellationToken) -> Result<summary::Facts> {
    if opts.nodes == 0 || opts.rate == 0 {
        bail!("--nodes and --rate must be at least 1");
    }
    prepare_dir(&opts.dir)?;
    let dir = opts.dir.canonicalize().context("resolving the demo directory")?;
    let dataset = dir.join("dataset");
    let ports = Ports::pick(opts.port, opts.nodes)?;
    let nodes: Vec<String> = (1..=opts.nodes).map(|i| format!("gw{i}")).collect();
    note!(
        "switchboard demo: 1 collector + {} node agent{} on {} for {} s",
        opts.nodes,
        if opts.nodes == 1 { "" } else { "s" },
        ports.bus(),
        opts.duration.as_secs()
    );
    note!("  directory: {} (configs, logs, dataset, reports)", dir.display());

    // The cluster: real processes with the configs an operator would write.
    std::fs::create_dir_all(dir.join("logs")).context("creating the logs directory")?;
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let collector_cfg = write("collector.toml", cluster::collector_toml(&ports, &dataset))?;
    let mut collector = Proc::start("collector", "collector", &collector_cfg, &dir.join("logs/collector.log"))?;
    let mut agents = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        std::fs::create_dir_all(dir.join("logs").join(node))?;
        let cfg = write(&format!("{node}.toml"), cluster::agent_toml(&ports, i + 1, node, &dir))?;
        agents.push(Proc::start("agent", node, &cfg, &dir.join(format!("logs/{node}.log")))?);
    }
    let mut health: Vec<(String, std::net::SocketAddr)> = vec![("collector".into(), ports.collector_http())];
    health.extend(nodes.iter().enumerate().map(|(i, n)| (n.clone(), ports.agent_http(i + 1))));
    {
        let mut all: Vec<&mut Proc> = agents.iter_mut().collect();
        all.push(&mut collector);
        cluster::wait_ready(&health, opts.nodes + 1, &mut all)?;
    }
    note!("  cluster formed: every process sees the {} other{}", opts.nodes, if opts.nodes == 1 { "" } else { "s" });

    // One limit for the whole cluster, set the way an operator sets it.
    let limits =
        write("limits.toml", format!("[[limit]]\nkey = \"{LIMIT_KEY}\"\nrate = {LIMIT_RATE}\nper = \"second\"\n"))?;
    set_limits(&limits, &ports)?;
    note!(
        "  limit set: {LIMIT_KEY} at {LIMIT_RATE}/s for the cluster; gateways ask for {} /s",
        (0..opts.nodes).map(|i| Load::demand(i).to_string()).collect::<Vec<_>>().join(" + ")
    );

    // The gateways.
    let stop = CancellationToken::new();
    let written: Vec<Arc<AtomicU64>> = nodes.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut writers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (node, logs) = (node.clone(), dir.join("logs").join(node));
        let (count, stop, rate) = (written[i].clone(), stop.clone(), opts.rate);
        writers.push(std::thread::spawn(move || write_logs(&node, &logs, i as u64, rate, &count, &stop)));
    }
    let load = Load::new(&nodes);
    let sockets = nodes.iter().map(|n| dir.join("agents").join(n).join("gateway.sock")).collect();
    let load_threads = load.start(ports, sockets, &stop);
    let run =
        Run { started: Instant::now(), duration: opts.duration, written: written.clone(), load: load.clone(), ports };

    // The fault: the second node's agent, killed part way through and restarted.
    let victim = (opts.kill && opts.nodes >= 2).then_some(1usize);
    if opts.kill && victim.is_none() {
        note!("  (no kill -9 with one node: its DLRs and its share of the limit have nowhere to go)");
    }
    let kill_at = opts.duration.mul_f64(0.35);
    let mut outage: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = None;
    let mut killed_at: Option<(Instant, chrono::DateTime<chrono::Utc>)> = None;
    let mut last = (0u64, Instant::now());
    let mut next_tick = Duration::from_secs(1);
    while run.started.elapsed() < opts.duration {
        while run.started.elapsed() < next_tick && !cancel.is_cancelled() {
            std::thread::sleep(Duration::from_millis(20));
        }
        next_tick += Duration::from_secs(1);
        if cancel.is_cancelled() {
            note!("  interrupted: stopping early");
            break;
        }
        if let Some(v) = victim {
            if killed_at.is_none() && outage.is_none() && run.started.elapsed() >= kill_at {
                load.gateways[v].up.store(false, Ordering::Relaxed);
                agents[v].kill();
                killed_at = Some((Instant::now(), chrono::Utc::now()));
                note!(
                    "  ** kill -9 {}: its DLRs must come from copies, its share of the limit go to the others",
                    nodes[v]
                );
            } else if let Some((at, wall)) = killed_at {
                if at.elapsed() >= DOWN_FOR {
                    agents[v].restart()?;
                    killed_at = None;
                    outage = Some((wall, chrono::Utc::now()));
                    let back = wait_agent_back(&ports, v + 1, &mut agents[v]);
                    load.gateways[v].up.store(true, Ordering::Relaxed);
                    note!("  ** {} restarted ({back}); it resumes from its checkpoint", nodes[v]);
                    next_tick = Duration::from_secs(run.started.elapsed().as_secs() + 1);
                }
            }
        }
        progress(&run, &mut last);
    }
    stop.cancel();
    for t in load_threads {
        let _ = t.join();
    }
    for w in writers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("writing demo logs")),
            Err(_) => bail!("a log writer thread panicked"),
        }
    }
    if let (Some(v), Some((_, wall))) = (victim, killed_at) {
        // Cut short while the victim was down: bring it back so that its lines are collected.
        agents[v].restart()?;
        outage = Some((wall, chrono::Utc::now()));
        let _ = wait_agent_back(&ports, v + 1, &mut agents[v]);
    }
    let per_node: Vec<u64> = written.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    let total: u64 = per_node.iter().sum();
    note!("  gateways stopped after {total} log lines; waiting until the collector has committed all of them");
    wait_committed(&ports, &nodes, &per_node);
    for a in &mut agents {
        a.stop(Duration::from_secs(30))?;
    }
    collector.stop(Duration::from_secs(30))?;
    note!("  stopped cleanly; summary computed with SQL over {}", dataset.display());
    Ok(summary::Facts {
        nodes: nodes.clone(),
        written: per_node,
        load,
        victim: victim.map(|v| nodes[v].clone()),
        outage,
        dir: dir.clone(),
        dataset: dataset.clone(),
    })
}

fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if dir.join(MARKER).exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("clearing the previous demo run in {}", dir.display()))?;
        } else if !empty {
            bail!("{} exists and was not made by the demo; choose another directory with --dir", dir.display());
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by switchboard demo; the demo clears this directory on its next run\n")?;
    Ok(())
}

/// `switchboard limits set` against the demo's collector endpoint, as a child process.
fn set_limits(file: &Path, ports: &Ports) -> Result<()> {
    let exe = std::env::current_exe().context("finding the switchboard binary")?;
    let out = std::process::Command::new(exe)
        .args(["limits", "set"])
        .arg(file)
        .args(["--connect", &ports.bus(), "--cluster", "demo", "-m", "demo: one limit shared by every node"])
        .env("NO_COLOR", "1")
        .output()
        .context("running switchboard limits set")?;
    if !out.status.success() {
        bail!("switchboard limits set failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Wait (bounded) until a restarted agent answers `/health`; says how long it took.
fn wait_agent_back(ports: &Ports, i: usize, proc: &mut Proc) -> String {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(why) = proc.exited() {
            return format!("failed: {why}");
        }
        if HttpClient::new(ports.agent_http(i)).get("/health").is_ok() {
            return format!("answering after {} ms", started.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    "not answering after 20 s".into()
}

/// Wait until every agent has read all lines written on its node and a collector has committed
/// all of them (lag 0 on every source), or [`CATCH_UP`] passes.
fn wait_committed(ports: &Ports, nodes: &[String], written: &[u64]) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CATCH_UP {
        let mut behind = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let Ok((_, body)) = HttpClient::new(ports.agent_http(i + 1)).get("/health") else {
                behind.push(format!("{node} not answering"));
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let sources = v["sources"].as_object().cloned().unwrap_or_default();
            let read: u64 =
                ["smsgw", "mta"].iter().map(|s| sources.get(*s).map_or(0, |x| x["head"].as_u64().unwrap_or(0))).sum();
            let lag: u64 = sources.values().map(|x| x["lag_records"].as_u64().unwrap_or(0)).sum();
            if read < written[i] || lag > 0 {
                behind.push(format!("{node}: read {read} of {}, {lag} not yet committed", written[i]));
            }
        }
        if behind.is_empty() {
            return;
        }
        last = behind.join("; ");
        std::thread::sleep(Duration::from_millis(200));
    }
    note!("  warning: not everything was committed after {} s: {last}", CATCH_UP.as_secs());
}

/// Append synthetic lines to `<logs>/smsgw.log` and `<logs>/mail.log` at `rate` lines/s until
/// `stop` fires.
fn write_logs(
    node: &str,
    logs: &Path,
    seed: u64,
    rate: u32,
    written: &AtomicU64,
    stop: &CancellationToken,
) -> Result<()> {
    let open = |name: &str| -> Result<BufWriter<std::fs::File>> {
        let path = logs.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(BufWriter::new(f))
    };
    let (mut sms, mut mail) = (open("smsgw.log")?, open("mail.log")?);
    let mut gw = GatewayLog::new(node, seed);
    let mut mta = MtaLog::new(node, seed);
    let started = Instant::now();
    let mut done: u64 = 0;
    let mut reported: u64 = 0;
    while !stop.is_cancelled() {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let now = chrono::Utc::now();
        while done < due {
            // Two SMS lines for every mail line.
            if done % 3 == 2 {
                writeln!(mail, "{}", mta.line(now))?;
            } else {
                writeln!(sms, "{}", gw.line(now))?;
            }
            done += 1;
        }
        sms.flush()?;
        mail.flush()?;
        // Count lines only once they are in the files.
        written.fetch_add(done - reported, Ordering::Relaxed);
        reported = done;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One progress line; returns the gateways' allowed count so far (for the rate since the last).
fn progress(run: &Run, last: &mut (u64, Instant)) {
    let written: u64 = run.written.iter().map(|w| w.load(Ordering::Relaxed)).sum();
    let committed = collector_committed(&run.ports).map_or_else(|| "-".to_owned(), |c| c.to_string());
    let allowed: u64 = run.load.gateways.iter().map(|g| g.allowed.load(Ordering::Relaxed)).sum();
    let per_s = allowed.saturating_sub(last.0) as f64 / last.1.elapsed().as_secs_f64().max(0.001);
    *last = (allowed, Instant::now());
    let d = &run.load.dlr;
    note!(
        "  [{:>3}s/{}s] log lines written {:>7}, committed {:>7} | limit: {:>4.0} allowed/s of {LIMIT_RATE} | DLRs: {} registered, {} delivered from another node, {} by copies",
        run.started.elapsed().as_secs(),
        run.duration.as_secs(),
        written,
        committed,
        per_s,
        d.registered.load(Ordering::Relaxed),
        d.delivered.load(Ordering::Relaxed),
        d.owner_down.load(Ordering::Relaxed),
    );
}

/// The log lines the collector has committed, from its `/health` watermarks.
fn collector_committed(ports: &Ports) -> Option<u64> {
    // The gateways' log streams only (the agents' own `_metrics`, `_limits`, `_dlr` streams
    // are rows too, but not log lines): each watermark is the highest sequence number committed.
    let (_, body) = HttpClient::new(ports.collector_http()).get("/health").ok()?;
    let health: serde_json::Value = serde_json::from_str(&body).ok()?;
    let marks = health.get("watermarks")?.as_object()?;
    let lines = marks
        .iter()
        .filter(|(stream, _)| stream.rsplit('/').next().is_some_and(|name| !name.starts_with('_')))
        .filter_map(|(_, w)| w.as_u64())
        .map(|w| w.saturating_add(1))
        .sum();
    Some(lines)
}
