//! `switchboard status` against three node processes with `--keys` limit keys in use and
//! `--records` open DLR records each: the time to first output (a new session joins the bus,
//! asks every process, assembles and renders, as the command does), beside the anchor of one
//! `/health` round over the same nodes by HTTP; then what `--watch` costs the nodes, their CPU
//! per second while one watcher asks every second, against the same span unwatched.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use switchboard_bus::keys::KeySpace;
use switchboard_bus::repo::wire::Pack;
use switchboard_bus::repo::{FileEntry, Revision};
use switchboard_bus::status::cluster::assemble;
use switchboard_bus::status::{fetch, gather, text};

use crate::dlr::{cpu_us, Cluster, Http};
use crate::limits_cluster::http_get;

/// What `sb-bench status` runs.
pub(crate) struct StatusBench {
    /// Open DLR records registered on each node.
    pub records: u64,
    /// Limit keys in use on each node.
    pub keys: u64,
    /// Runs of the time to first output (the median is printed).
    pub repeat: usize,
    /// Seconds of each CPU window (watched, unwatched).
    pub window_secs: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// CPU ms per second of the nodes together over `window`, while `during` runs.
fn cpu_per_s(pids: &[u32], window: Duration, during: impl FnOnce(Instant)) -> f64 {
    let before: u64 = pids.iter().map(|p| cpu_us(*p)).sum();
    let t = Instant::now();
    during(t + window);
    let spent = t.elapsed();
    let after: u64 = pids.iter().map(|p| cpu_us(*p)).sum();
    after.saturating_sub(before) as f64 / 1000.0 / spent.as_secs_f64()
}

pub(crate) fn run(b: &StatusBench) -> Result<()> {
    let cluster = Cluster::start_with(b.records, 16, false, 1, "[limits]\ninterval_ms = 100\n")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let keys = KeySpace::new(&format!("sb/{}", cluster.name))?;

    // One limit over `keys` concrete keys, each used on every node.
    let client = cluster.client(&rt, false)?;
    let limits = b"[[limit]]\nkey = \"op:*\"\nrate = 1000000\n";
    let rev = Revision {
        version: 1,
        number: 1,
        parents: Vec::new(),
        author: "bench".into(),
        at_ms: switchboard_bus::status::now_ms(),
        message: String::new(),
        files: [(switchboard_bus::repo::tree::LIMITS_FILE.to_owned(), FileEntry::of(limits))].into(),
    };
    let pack = Pack::new(rev, [&limits[..]]);
    rt.block_on(async { client.put(keys.config_push()?, pack.encode()).await.map_err(|e| anyhow::anyhow!("{e}")) })?;
    std::thread::sleep(Duration::from_secs(1));
    for node in &cluster.nodes {
        let mut http = Http::connect(node.http)?;
        for k in 0..b.keys {
            let (code, body) = http.post("/v1/limits/acquire", &format!("{{\"key\": \"op:{k}\"}}"))?;
            if code != 200 {
                bail!("acquire op:{k}: {code} {}", String::from_utf8_lossy(&body));
            }
        }
    }
    // Let the first DLR census finish on every node (it runs a few seconds after start, then
    // every minute).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let snap = rt.block_on(fetch(&client, &keys, Duration::from_secs(2)))?;
        let c = assemble(&snap);
        let counted = c.dlr.iter().filter(|d| d.own_open.is_some_and(|n| n >= b.records)).count();
        let keyed = c.limits.len() as u64 >= b.keys;
        if counted == cluster.nodes.len() && keyed {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the status never showed every node's census and keys: {} of {} nodes, {} keys",
                counted,
                cluster.nodes.len(),
                c.limits.len()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(client);

    println!(
        "status: {} nodes, {} limit keys in use on each, {} open DLR records on each (and their copies)",
        cluster.nodes.len(),
        b.keys,
        b.records
    );
    // Time to first output, as `switchboard status` does it from a cold session.
    let endpoint = format!("tcp/127.0.0.1:{}", cluster.ports[0]);
    let mut firsts = Vec::new();
    let mut sizes = (0, 0);
    for _ in 0..b.repeat {
        let t = Instant::now();
        let out = rt.block_on(async {
            let mut config = zenoh::Config::default();
            let e = |e: zenoh::Error| anyhow::anyhow!("{e}");
            config.insert_json5("connect/endpoints", &format!("[\"{endpoint}\"]")).map_err(e)?;
            config.insert_json5("listen/endpoints", "[]").map_err(e)?;
            config.insert_json5("scouting/multicast/enabled", "false").map_err(e)?;
            let session = zenoh::open(config).await.map_err(e)?;
            let snap = gather(&session, &keys, Duration::from_secs(3)).await;
            let c = assemble(&snap);
            let json = serde_json::to_vec(&c)?;
            let shown = text::render(&c);
            let _ = session.close().await;
            anyhow::Ok((c.nodes.iter().filter(|n| n.answered).count(), json.len(), shown.len()))
        })?;
        if out.0 != cluster.nodes.len() {
            bail!("only {} of {} nodes answered", out.0, cluster.nodes.len());
        }
        sizes = (out.1, out.2);
        firsts.push(t.elapsed());
    }
    let mut healths = Vec::new();
    for _ in 0..b.repeat {
        let t = Instant::now();
        for node in &cluster.nodes {
            http_get(node.http, "/health").ok_or_else(|| anyhow::anyhow!("no /health answer"))?;
        }
        healths.push(t.elapsed());
    }
    println!(
        "  time to first output (join the bus, ask, assemble, render), median of {}: {:>8.1} ms   anchor: one GET /health of each node by HTTP: {:.1} ms",
        b.repeat,
        median(firsts).as_secs_f64() * 1e3,
        median(healths).as_secs_f64() * 1e3
    );
    println!("  the cluster as JSON: {} KiB; as text: {} KiB", sizes.0 / 1024, sizes.1 / 1024);

    // What watching costs the nodes.
    let pids = cluster.pids();
    let window = Duration::from_secs(b.window_secs);
    let idle = cpu_per_s(&pids, window, |until| std::thread::sleep(until.saturating_duration_since(Instant::now())));
    let watcher = cluster.client(&rt, false)?;
    let mut asks = 0;
    let watched = cpu_per_s(&pids, window, |until| {
        while Instant::now() < until {
            let t = Instant::now();
            if let Ok(snap) = rt.block_on(fetch(&watcher, &keys, Duration::from_millis(900))) {
                let _ = text::render(&assemble(&snap));
                asks += 1;
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
        }
    });
    println!(
        "  the nodes' CPU, {} nodes together: {idle:.1} ms/s unwatched, {watched:.1} ms/s with --watch ({asks} asks in {} s): watching costs {:.1} ms of CPU per second",
        pids.len(),
        b.window_secs,
        watched - idle
    );
    Ok(())
}
