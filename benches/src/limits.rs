//! Rate-limit decision cost: in-process decisions/s and latency percentiles, beside the usual
//! alternative, a shared Redis counter (one round trip per decision, a Lua script doing INCR
//! with expiry), when `redis-server` is installed (the bench starts it on a loopback port; the
//! row is skipped with a message otherwise).
//!
//! The same decisions through a node agent's local APIs (Unix socket line protocol, HTTP/JSON
//! with keep-alive), one client asking one request at a time, are measured against a real agent
//! process ([`crate::limits_cluster::api_cost`]).
//!
//! Anchor on the reference 2-core machine: such a Redis limiter serves 35,000-40,000
//! decisions/s at p99 0.2-2 ms. Targets: in-process at least 100x Redis's decisions/s at p99
//! under 1 µs; through the agent's API at least Redis's decisions/s at a lower p99.

use std::io::BufReader;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use switchboard_bus::limits::{LimitSpec, Limiter, Per};

/// The Redis anchor's decisions/s on the reference machine (midpoint of 35k-40k).
const REDIS_ANCHOR: f64 = 37_500.0;

fn limiter() -> Result<Limiter> {
    let spec =
        LimitSpec { key: "operator:*".into(), rate: Some(500), per: Some(Per::Second), concurrency: None, burst: None };
    Ok(Limiter::new(vec![spec])?)
}

/// One measured case: its rate and, where each call was timed, its latencies (ns).
struct Case {
    name: String,
    rate: f64,
    latency: Option<Histogram<u64>>,
}

/// Measure every case, then print the table beside Redis's one-client rate of the same run (or
/// the reference machine's when Redis cannot run) and the targets.
pub(crate) fn run(decisions: u64) -> Result<()> {
    println!("== limits: decision cost ({decisions} decisions per case) ==");
    let mut cases = Vec::new();
    let l = Arc::new(limiter()?);
    let keys: Vec<String> = (0..16).map(|i| format!("operator:op{i}")).collect();
    // Throughput, one thread, no timing per call.
    let start = Instant::now();
    let mut allowed = 0u64;
    for i in 0..decisions {
        allowed += u64::from(l.try_acquire(&keys[(i & 15) as usize], 1).is_allowed());
    }
    let rate = decisions as f64 / start.elapsed().as_secs_f64();
    // Latency, one thread: each call timed.
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..decisions.min(2_000_000) {
        let t = Instant::now();
        std::hint::black_box(l.try_acquire(&keys[(i & 15) as usize], 1));
        h.record(t.elapsed().as_nanos() as u64).ok();
    }
    cases.push(Case { name: "in-process, 1 thread".into(), rate, latency: Some(h) });
    // Two threads on the same keys (contention on the same atomics).
    let start = Instant::now();
    let per = decisions / 2;
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (l, keys) = (l.clone(), keys.clone());
            std::thread::spawn(move || {
                (0..per).filter(|i| l.try_acquire(&keys[((i + t) & 15) as usize], 1).is_allowed()).count()
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let rate = (per * 2) as f64 / start.elapsed().as_secs_f64();
    cases.push(Case { name: "in-process, 2 threads, same keys".into(), rate, latency: None });
    std::hint::black_box(allowed);
    eprintln!("in-process cases done; the agent's APIs ...");
    let mut failed = Vec::new();
    match crate::limits_cluster::api_cost(decisions.min(200_000)) {
        Ok(rows) => cases.extend(rows.into_iter().map(|(name, rate, h)| Case { name, rate, latency: Some(h) })),
        Err(e) => failed.push(format!("{:<46} failed: {e:#}", "agent API")),
    }
    eprintln!("agent cases done; Redis ...");
    for (depth, name) in [(1, REDIS_ONE), (16, "Redis INCR+EXPIRE (Lua), 16 pipelined")] {
        match redis(decisions.min(100_000), depth) {
            Ok((rate, h)) => cases.push(Case { name: name.into(), rate, latency: Some(h) }),
            Err(e) => failed.push(format!("{name:<46} skipped: {e:#}")),
        }
    }
    let redis = cases.iter().find(|c| c.name == REDIS_ONE);
    let (anchor, anchor_name) = match redis {
        Some(r) => (r.rate, "x Redis"),
        None => (REDIS_ANCHOR, "vs Redis 37.5k"),
    };
    println!(
        "{:<46} {:>14} {:>10} {:>10} {:>10} {:>12}",
        "case", "decisions/s", "p50 ns", "p99 ns", "p999 ns", anchor_name
    );
    for c in &cases {
        let q = |q: f64| c.latency.as_ref().map_or("-".to_owned(), |h| h.value_at_quantile(q).to_string());
        println!(
            "{:<46} {:>14.0} {:>10} {:>10} {:>10} {:>12.1}",
            c.name,
            c.rate,
            q(0.5),
            q(0.99),
            q(0.999),
            c.rate / anchor
        );
    }
    for f in failed {
        println!("{f}");
    }
    let Some(redis) = redis else {
        println!("targets: not judged (no Redis in this run)");
        return Ok(());
    };
    let p99 = |c: &Case| c.latency.as_ref().map_or(u64::MAX, |h| h.value_at_quantile(0.99));
    let redis_p99 = p99(redis);
    println!("targets, beside {REDIS_ONE} in this run ({:.0}/s, p99 {redis_p99} ns):", redis.rate);
    for (name, times) in [("agent API, Unix socket, 1 client", 3.0), ("agent API, HTTP keep-alive, 1 client", 1.0)] {
        let Some(c) = cases.iter().find(|c| c.name == name) else {
            println!("  {name}: not measured");
            continue;
        };
        let (ratio, p) = (c.rate / redis.rate, p99(c));
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "  {name}: {ratio:.2}x Redis's rate (target >= {times}x: {}), p99 {p} ns (target < {redis_p99}: {})",
            met(ratio >= times),
            met(p < redis_p99)
        );
    }
    Ok(())
}

/// The Redis case the targets are judged against.
const REDIS_ONE: &str = "Redis INCR+EXPIRE (Lua), 1 client";

/// `redis-server` on PATH, installed from Debian's packages if missing and possible.
pub(crate) fn ensure_redis() -> Result<()> {
    let present =
        || Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if present() {
        return Ok(());
    }
    eprintln!("redis-server not found; trying apt-get install redis-server ...");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "redis-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed && present() {
        return Ok(());
    }
    bail!("redis-server is not installed and could not be installed (apt-get install redis-server needs root and the Debian mirror)")
}

/// A `redis-server` on a loopback port, killed on drop.
pub(crate) struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `redis-server` (installing it if missing and possible) and connect to it.
impl RedisServer {
    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

pub(crate) fn start_redis() -> Result<(RedisServer, TcpStream)> {
    ensure_redis()?;
    let port = crate::ports::free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("redis-server is not installed (apt-get install redis-server)")?;
    let server = RedisServer(child);
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            c.set_nodelay(true)?;
            return Ok((server, c));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("redis-server did not start")
}

/// A fixed-window counter in Redis, the way gateways commonly do it: one EVAL per decision,
/// `depth` of them in flight (1: each waits for its answer). Each latency is from its send to
/// its answer.
fn redis(n: u64, depth: u64) -> Result<(f64, Histogram<u64>)> {
    let (_server, stream) = start_redis()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let script = "local c = redis.call('INCR', KEYS[1]) if c == 1 then redis.call('EXPIRE', KEYS[1], 1) end if c > tonumber(ARGV[1]) then return 0 end return 1";
    let cmds: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let key = format!("rl:op{i}");
            format!(
                "*5\r\n$4\r\nEVAL\r\n${}\r\n{}\r\n$1\r\n1\r\n${}\r\n{}\r\n$3\r\n500\r\n",
                script.len(),
                script,
                key.len(),
                key
            )
            .into_bytes()
        })
        .collect();
    crate::limits_cluster::pipelined(&mut reader, &mut writer, &cmds, n, depth, |line| line.starts_with(':'))
}
