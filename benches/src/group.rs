//! Collector group: the dataset on S3 beside a local directory, and how fast a new writer takes
//! over.
//!
//! Throughput: the `logs` bench's end-to-end case (1 agent, acknowledgements on) with the
//! collector's dataset in a local directory and on a local S3 server (moto, started by the bench),
//! in the same run; target: S3 at least 80% of local.
//!
//! Takeover: two collector processes (this binary's hidden `collector-node`) share a dataset in a
//! directory, an agent in this process writes 2,000 lines/s; the writer is killed with -9
//! `--kills` times and stopped with SIGSTOP `--hangs` times (then continued), alternating between
//! the two. Each takeover is timed from the fault to the first commit of the new writer (its
//! `/health` says `role: leader` and the age of its last commit). Printed: p50 and max beside the
//! anchor, keepalived moving a virtual IP in 3-5 s; target max 5 s, goal 3 s. A hang is seen at the
//! bus lease (`lease_ms`, 3 s by default), a kill at once.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use switchboard_collector::config::CollectorConfig;

use crate::logs::{self, LogsBench};
use crate::ports::free_port;

/// Options of the `group` bench.
pub(crate) struct GroupBench {
    pub(crate) lines: usize,
    pub(crate) repeat: usize,
    pub(crate) kills: usize,
    pub(crate) hangs: usize,
}

/// The anchor: keepalived's VRRP failover moves a virtual IP in 3-5 s.
const KEEPALIVED_SECS: &str = "3-5 s";

pub(crate) fn run(opts: &GroupBench) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start(dir.path(), "sb-bench")?;
    println!("== group: dataset on S3 (moto on 127.0.0.1) beside a local directory; takeover time ==");
    let lb = LogsBench {
        lines: opts.lines,
        format: switchboard_agent::parse::Format::Plain,
        kv_in_message: false,
        repeat: 1,
    };
    let mut rates = [Vec::new(), Vec::new()];
    for run in 0..opts.repeat.max(1) {
        rates[0].push(rt.block_on(logs::end_to_end_with(&lb, 1, true, None, |_| {}))?.lines_per_s);
        let endpoint = s3.endpoint();
        rates[1].push(
            rt.block_on(logs::end_to_end_with(&lb, 1, true, None, |c| {
                c.collector.data_dir = PathBuf::from(format!("s3://sb-bench/run-{run}"));
                c.collector.store.endpoint = Some(endpoint);
                c.collector.store.allow_http = true;
                c.collector.store.access_key_id = Some("bench".into());
                c.collector.store.secret_access_key = Some("bench".into());
                c.collector.store.region = Some("us-east-1".into());
            }))?
            .lines_per_s,
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (local, remote) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "{:<44} {:>12} {:>10}",
        format!("end to end, 1 agent, {} lines (median of {})", opts.lines, opts.repeat),
        "lines/s",
        "vs local"
    );
    println!("{:<44} {:>12.0} {:>10}", "dataset in a local directory", local, "1.00");
    println!("{:<44} {:>12.0} {:>10.2}   (target >= 0.80)", "dataset on S3 (moto)", remote, remote / local);
    drop(s3);
    takeovers(opts, &rt)
}

fn takeovers(opts: &GroupBench, rt: &tokio::runtime::Runtime) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = format!("bench{}", std::process::id());
    let ports = [free_port()?, free_port()?];
    let https = [free_port()?, free_port()?];
    let dataset = dir.path().join("dataset");
    let write_config = |i: usize| -> Result<PathBuf> {
        let connect = if i == 1 { format!("\"tcp/127.0.0.1:{}\"", ports[0]) } else { String::new() };
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[bus]\ncluster = \"{cluster}\"\nnode = \"c{i}\"\nlisten = [\"tcp/127.0.0.1:{}\"]\nconnect = [{connect}]\ngossip = false\n\n\
                 [collector]\ndata_dir = \"{}\"\nmax_file_age_ms = 1000\nhttp_listen = \"127.0.0.1:{}\"\n",
                ports[i],
                dataset.display(),
                https[i]
            ),
        )?;
        Ok(cfg)
    };
    let configs = [write_config(0)?, write_config(1)?];
    let mut procs: [Option<Child>; 2] = [Some(start_node(&configs[0])?), None];
    wait_for(Duration::from_secs(30), || role(https[0]).as_deref() == Some("leader"))
        .context("the first collector did not start writing")?;
    procs[1] = Some(start_node(&configs[1])?);

    // One agent, connected to both, fed 2,000 lines/s.
    let logs_dir = dir.path().join("logs");
    std::fs::create_dir_all(&logs_dir)?;
    let agent_cfg: switchboard_agent::config::AgentConfig = toml::from_str(&format!(
        "[bus]\ncluster = \"{cluster}\"\nnode = \"gw\"\nconnect = [\"tcp/127.0.0.1:{}\", \"tcp/127.0.0.1:{}\"]\ngossip = false\n\n\
         [agent]\ndata_dir = \"{}\"\nhttp_listen = \"\"\n\n[limits]\nenabled = false\n[dlr]\nenabled = false\n[metrics]\nenabled = false\n\n\
         [[source]]\nname = \"app\"\npaths = [\"{}/*.log\"]\n",
        ports[0],
        ports[1],
        dir.path().join("agent").display(),
        logs_dir.display()
    ))?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let agent = rt.block_on(switchboard_agent::Agent::start(agent_cfg, cancel.clone()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), logs_dir.join("app.log"));
        std::thread::spawn(move || -> Result<usize> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..20 {
                    writeln!(f, "{}", logs::line(n))?;
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(n)
        })
    };

    let mut kills = Vec::new();
    let mut hangs = Vec::new();
    let total = opts.kills + opts.hangs;
    for round in 0..total {
        std::thread::sleep(Duration::from_millis(1500));
        let i = wait_leader(&https)?;
        let other = 1 - i;
        let hang = round >= opts.kills;
        let pid = procs[i].as_ref().map_or(0, Child::id);
        let fault = Instant::now();
        if hang {
            signal(pid, "-STOP");
        } else if let Some(mut c) = procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let t = takeover(https[other], fault, Duration::from_secs(30))
            .with_context(|| format!("round {round}: c{other} did not take over"))?;
        if hang {
            signal(pid, "-CONT");
            wait_for(Duration::from_secs(30), || role(https[i]).as_deref() == Some("standby"))
                .with_context(|| format!("round {round}: the resumed c{i} did not step down"))?;
            hangs.push(t);
        } else {
            procs[i] = Some(start_node(&configs[i])?);
            wait_for(Duration::from_secs(30), || role(https[i]).as_deref() == Some("standby"))
                .with_context(|| format!("round {round}: the restarted c{i} did not rejoin as a standby"))?;
            kills.push(t);
        }
        eprintln!("  {} {round}: {:.2} s", if hang { "hang" } else { "kill" }, t.as_secs_f64());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    cancel.cancel();
    rt.block_on(agent.wait());
    for p in procs.iter_mut().flatten() {
        signal(p.id(), "-TERM");
        let _ = p.wait();
    }
    println!(
        "{:<44} {:>8} {:>8}   anchor: keepalived {KEEPALIVED_SECS}",
        "takeover (fault -> first commit of the new writer)", "p50", "max"
    );
    for (label, v) in
        [("kill -9 of the writer", &mut kills), ("SIGSTOP of the writer (seen at the lease, 3 s)", &mut hangs)]
    {
        if v.is_empty() {
            continue;
        }
        v.sort();
        println!(
            "{:<44} {:>7.2}s {:>7.2}s   ({} faults; target max 5 s, goal 3 s)",
            label,
            v[v.len() / 2].as_secs_f64(),
            v[v.len() - 1].as_secs_f64(),
            v.len()
        );
    }
    println!("lines written meanwhile: {written}");
    Ok(())
}

/// One collector process (`sb-bench collector-node`), until SIGTERM.
pub(crate) fn node(config: &Path) -> Result<()> {
    let cfg = CollectorConfig::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let collector = switchboard_collector::Collector::start(cfg, cancel.clone()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        cancel.cancel();
        collector.wait().await;
        Ok(())
    })
}

fn start_node(config: &Path) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["collector-node", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a collector process")
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("not within {timeout:?}")
}

fn wait_leader(https: &[u16; 2]) -> Result<usize> {
    let mut found = None;
    wait_for(Duration::from_secs(30), || {
        found = https.iter().position(|p| role(*p).as_deref() == Some("leader"));
        found.is_some()
    })?;
    found.context("no leader")
}

/// The collector's `/health`, parsed.
fn health(port: u16) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

fn role(port: u16) -> Option<String> {
    health(port)?.get("role")?.as_str().map(str::to_owned)
}

/// From `fault` until the collector on `port` leads and has committed after it.
fn takeover(port: u16, fault: Instant, timeout: Duration) -> Result<Duration> {
    let mut at = None;
    wait_for(timeout, || {
        let Some(h) = health(port) else { return false };
        if h.get("role").and_then(|r| r.as_str()) != Some("leader") {
            return false;
        }
        let elapsed = fault.elapsed().as_secs_f64();
        match h.get("last_commit_age_seconds").and_then(serde_json::Value::as_f64) {
            Some(age) if age < elapsed => {
                at = Some(Duration::from_secs_f64(elapsed - age));
                true
            }
            _ => false,
        }
    })?;
    at.context("no takeover")
}

/// moto's S3 server on a free loopback port, with one bucket; killed on drop.
struct S3Server {
    port: u16,
    child: Child,
}

impl S3Server {
    fn start(dir: &Path, bucket: &str) -> Result<Self> {
        let port = free_port()?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("moto.log"))?))
            .spawn()
            .context("starting moto's S3 server (python3 -m pip install 'moto[server]')")?;
        let server = Self { port, child };
        wait_for(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
            .context("the S3 server did not come up")?;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        if !text.starts_with("HTTP/1.1 200") {
            bail!("creating bucket {bucket}: {text}");
        }
        Ok(server)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
