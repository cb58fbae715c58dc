//! The demo's cluster: a collector and node agents as real `switchboard` processes on loopback,
//! each with a TOML config written into the demo directory (the same files an operator writes),
//! its log in `<dir>/logs/<name>.log`, killed on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::demo::http::HttpClient;

/// Ports of the demo cluster: the collector's bus endpoint, then HTTP and StatsD ports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    /// The collector's bus endpoint; the collector's HTTP is `base + 1`, agent `i`'s (from 1)
    /// HTTP `base + 1 + i`, its StatsD `base + 10 + i`.
    pub(crate) base: u16,
}

impl Ports {
    /// `base` as given, or a free range when 0.
    pub(crate) fn pick(base: u16, nodes: usize) -> Result<Self> {
        if nodes > 9 {
            bail!("the demo runs at most 9 nodes");
        }
        if base != 0 {
            if base > u16::MAX - 20 {
                bail!("--port {base} leaves no room for the demo's 20 ports");
            }
            return Ok(Self { base });
        }
        // Free ports a moment ago, below the kernel's ephemeral range (where the agents' own
        // listening ports come from): try a few bases, keep the first whose 20 ports bind. Bases
        // are whole slots of 20 ports, so demos started together (process ids one apart) take
        // ranges that do not overlap.
        for attempt in 0..50u32 {
            let slot = (std::process::id().wrapping_add(attempt.wrapping_mul(7919))) % 1_000;
            // At most 12,000 + 999 * 20 = 31,980: within u16.
            let base = 12_000 + slot as u16 * 20;
            if (base..base + 20).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
                return Ok(Self { base });
            }
        }
        bail!("found no 20 free loopback ports; pass --port");
    }

    pub(crate) fn bus(&self) -> String {
        format!("tcp/127.0.0.1:{}", self.base)
    }
    pub(crate) fn collector_http(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 1))
    }
    pub(crate) fn agent_http(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 1 + i as u16))
    }
    pub(crate) fn statsd(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 10 + i as u16))
    }
}

/// A `switchboard` child process, killed on drop.
pub(crate) struct Proc {
    pub(crate) name: String,
    config: PathBuf,
    log: PathBuf,
    role: &'static str,
    child: Option<Child>,
}

impl Proc {
    pub(crate) fn start(role: &'static str, name: &str, config: &Path, log: &Path) -> Result<Self> {
        let mut p = Self { name: name.to_owned(), config: config.to_owned(), log: log.to_owned(), role, child: None };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let exe = std::env::current_exe().context("finding the switchboard binary")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        // A group of its own: a terminal's Ctrl-C (SIGINT to the foreground group) reaches only
        // the demo, which then stops its processes in order after their last commits; in the
        // demo's group they stopped with it, and the lines not committed yet were missing.
        let child = Command::new(exe)
            .process_group(0)
            .args([self.role, "--config"])
            .arg(&self.config)
            .env("SWITCHBOARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// kill -9.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again after [`Proc::kill`].
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub(crate) fn stop(&mut self, timeout: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status}; see {}", self.name, self.log.display());
                }
                return Ok(());
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not stop within {} s; see {}", self.name, timeout.as_secs(), self.log.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has exited on its own (a start-up error).
    pub(crate) fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Some(format!("{} exited with {status}:\n    {}", self.name, tail.join("\n    ")))
            }
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The collector's config.
pub(crate) fn collector_toml(ports: &Ports, dataset: &Path) -> String {
    format!(
        r#"# The demo's collector (switchboard collector --config collector.toml).
[bus]
cluster = "demo"
node = "collector"
listen = ["{bus}"]

[collector]
data_dir = "{data}"
max_file_age_ms = 1000
http_listen = "{http}"
"#,
        bus = ports.bus(),
        data = dataset.display(),
        http = ports.collector_http(),
    )
}

/// Agent `i`'s (from 1) config: two log sources, limits, DLRs and StatsD metrics.
pub(crate) fn agent_toml(ports: &Ports, i: usize, node: &str, dir: &Path) -> String {
    let logs = dir.join("logs").join(node);
    format!(
        r#"# The demo's agent on {node} (switchboard agent --config {node}.toml).
[bus]
cluster = "demo"
node = "{node}"
connect = ["{bus}"]   # the collector; agents find each other through it (gossip)

[agent]
data_dir = "{data}"
batch_max_delay_ms = 100
poll_interval_ms = 50
glob_interval_ms = 500
http_listen = "{http}"

[metrics]
statsd_listen = "{statsd}"
interval_ms = 1000

[[dlr.connector]]
name = "smsc-demo"
ids = "hex"            # submit_sm_resp says 10002A
report_ids = "decimal" # its DLR says 1048618: the same message

[[source]]
name = "smsgw"
paths = ["{logs}/smsgw*.log"]
format = "kv"
start_at = "beginning"

[[source]]
name = "mta"
paths = ["{logs}/mail*.log"]
format = "syslog"
kv_in_message = true
start_at = "beginning"
"#,
        bus = ports.bus(),
        data = dir.join("agents").join(node).display(),
        http = ports.agent_http(i),
        statsd = ports.statsd(i),
        logs = logs.display(),
    )
}

/// Wait until every process answers `/health` and each sees all `expected` processes.
pub(crate) fn wait_ready(addrs: &[(String, SocketAddr)], expected: usize, procs: &mut [&mut Proc]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waiting: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        for p in procs.iter_mut() {
            if let Some(why) = p.exited() {
                bail!("{why}");
            }
        }
        waiting.clear();
        for (name, addr) in addrs {
            let seen = HttpClient::new(*addr)
                .get("/health")
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v["mesh"]["sees"].as_array().map(Vec::len))
                .unwrap_or(0);
            if seen < expected {
                waiting.push(format!("{name} sees {seen} of {expected}"));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the demo cluster did not form within 30 s: {}", waiting.join(", "))
}
