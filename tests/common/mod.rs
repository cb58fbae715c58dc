//! Shared harness for the integration tests: real `switchboard` processes on loopback.
//!
//! - [`Proc`] starts the binary with a config file and kills it on `Drop` (so a failing test leaves
//!   nothing running); [`Proc::stop`] asks it to stop with SIGTERM and waits, bounded.
//! - [`Cluster`] lays out a temporary directory with a collector and agent configs on a free port.
//! - [`read_logs`] reads the `logs` table back with the parquet crate, independently of `query`.
//! - [`wait_until`] polls a condition with a deadline; every loop in the tests is bounded.
//! - [`cut_links`] resets the TCP connections between two processes (`ss -K`), as a firewall does.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod group;
pub mod limits;
pub mod webdriver;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A loopback port that was free a moment ago, from below the kernel's ephemeral range: the
/// processes under test bind port 0 (agents listen on a free port by default), and the kernel
/// hands those out from the ephemeral range, so a port picked here is never given to one of them
/// between the pick and its use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..20_000 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(start);
        let port = 12_000 + (k % 20_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 12000 and 32000");
}

/// The TCP ports `pid` listens on.
pub fn listen_ports(pid: u32) -> Vec<u16> {
    let out = std::process::Command::new("ss").args(["-tlnpH"]).output().expect("ss runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit_once(':')?.1.parse().ok())
        .collect()
}

/// Reset every established TCP connection between processes `a` and `b` (one's listening port
/// at one end, the other process at the other end), as a firewall or a NAT that drops a
/// connection does, and no other; how many were reset. Needs CAP_NET_ADMIN (`ss -K`).
pub fn cut_links(a: u32, b: u32) -> usize {
    let ss = |args: &[&str]| {
        let out = std::process::Command::new("ss").args(args).output().expect("ss runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut cut = 0;
    for (from, to) in [(a, b), (b, a)] {
        for port in listen_ports(to) {
            // `from`'s connections to that port: columns Recv-Q Send-Q Local Peer Process.
            let listed = ss(&["-tnpH", "state", "established", "dport", "=", &format!(":{port}")]);
            let local_ports: Vec<String> = listed
                .lines()
                .filter(|l| l.contains(&format!("pid={from},")))
                .filter_map(|l| Some(l.split_whitespace().nth(2)?.rsplit_once(':')?.1.to_owned()))
                .collect();
            for local in local_ports {
                let killed = ss(&[
                    "-K",
                    "-tnH",
                    "state",
                    "established",
                    "sport",
                    "=",
                    &format!(":{local}"),
                    "dport",
                    "=",
                    &format!(":{port}"),
                ]);
                cut += killed.lines().count();
            }
        }
    }
    cut
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// A running `switchboard` process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn start(name: &str, args: &[&str], log: PathBuf) -> Self {
        let out = File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            // TEST_LOG sets another filter when a test is being looked into.
            .env("SWITCHBOARD_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name: name.to_owned(), child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then wait up to 20 s for a clean exit; panics (with the process log) otherwise.
    pub fn stop(mut self) {
        // A process takes SIGTERM as a stop once it has installed its handler, before its first
        // log line; one stopped sooner (a loaded host starting it slowly) would die of it.
        wait_until(Duration::from_secs(5), || std::fs::metadata(&self.log).is_ok_and(|m| m.len() > 0));
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}\n{}", self.name, self.log_text());
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{} did not stop within 20 s\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop as [`Proc::stop`] does; then its whole log.
    pub fn stop_and_read_log(self) -> String {
        let log = self.log.clone();
        self.stop();
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// kill -9.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test cluster's directory layout and configs.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub cluster: String,
    /// HTTP port of each process's /health and /metrics, by name (`collector`, agent node).
    ports: std::sync::Mutex<HashMap<String, u16>>,
    /// With mutual TLS: the directory of `switchboard certs` (CA, members, every certificate).
    pub tls: Option<PathBuf>,
}

impl Cluster {
    pub fn new() -> Self {
        let port = free_port();
        Self {
            dir: tempfile::tempdir().unwrap(),
            endpoint: format!("tcp/127.0.0.1:{port}"),
            cluster: format!("t{port}"),
            ports: std::sync::Mutex::new(HashMap::new()),
            tls: None,
        }
    }

    /// A cluster on mutual TLS over TCP (`tls/` endpoints): a CA made by `switchboard certs
    /// init`, and a certificate for each of `identities` (`<role>:<name>`), all of them members.
    pub fn with_tls(identities: &[&str]) -> Self {
        Self::with_tls_on("tls", identities)
    }

    /// The same, on `proto` endpoints (`tls` or `quic`).
    pub fn with_tls_on(proto: &str, identities: &[&str]) -> Self {
        let mut c = Self::new();
        let dir = c.path().join("tls");
        certs(&["init", "--dir", dir.to_str().unwrap()]);
        for id in identities {
            let (role, name) = id.split_once(':').unwrap();
            certs(&["issue", name, "--role", role, "--dir", dir.to_str().unwrap()]);
        }
        c.endpoint = c.endpoint.replace("tcp/", &format!("{proto}/"));
        c.tls = Some(dir);
        c
    }

    /// The `[bus.tls]` table for the process `<role>:<name>` (empty without TLS).
    pub fn tls_table(&self, role: &str, name: &str) -> String {
        let Some(dir) = &self.tls else { return String::new() };
        format!(
            "[bus.tls]\nca = \"{0}/ca.crt\"\ncert = \"{0}/{role}-{name}.crt\"\nkey = \"{0}/{role}-{name}.key\"\n",
            dir.display()
        )
    }

    /// The HTTP port of `name` (a free one, chosen the first time it is asked for).
    pub fn http_port(&self, name: &str) -> u16 {
        *self.ports.lock().unwrap().entry(name.to_owned()).or_insert_with(free_port)
    }

    /// GET `path` from `name`'s HTTP endpoint: (status code, body).
    pub fn http_get(&self, name: &str, path: &str) -> (u16, String) {
        http_get(self.http_port(name), path)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn dataset(&self) -> PathBuf {
        self.path().join("dataset")
    }

    pub fn logs_dir(&self, node: &str) -> PathBuf {
        let d = self.path().join("logs").join(node);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn start_collector(&self) -> Proc {
        self.start_collector_with_file_age(300)
    }

    /// [`Cluster::start_collector`] committing its files every `max_file_age_ms`.
    pub fn start_collector_with_file_age(&self, max_file_age_ms: u64) -> Proc {
        let cfg = self.path().join("collector.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[bus]
cluster = "{}"
node = "c1"
listen = ["{}"]
{}
[collector]
data_dir = "{}"
max_file_age_ms = {max_file_age_ms}
http_listen = "127.0.0.1:{}"
"#,
                self.cluster,
                self.endpoint,
                self.tls_table("collector", "c1"),
                self.dataset().display(),
                self.http_port("collector")
            ),
        )
        .unwrap();
        Proc::start("collector", &["collector", "--config", cfg.to_str().unwrap()], self.path().join("collector.log"))
    }

    /// An agent for `node` tailing `<logs>/<node>/*.log*` (rotated names too) as source `app` in `format`.
    pub fn start_agent(&self, node: &str, format: &str) -> Proc {
        self.start_agent_connecting(node, format, &[])
    }

    /// Like [`Self::start_agent`], also connecting to `extra` endpoints.
    pub fn start_agent_connecting(&self, node: &str, format: &str, extra: &[String]) -> Proc {
        self.start_agent_with(node, format, extra, "")
    }

    /// The general form: `source_extra` is appended to the `[[source]]` table (TOML lines).
    pub fn start_agent_with(&self, node: &str, format: &str, extra: &[String], source_extra: &str) -> Proc {
        let connect: Vec<String> = std::iter::once(&self.endpoint).chain(extra).cloned().collect();
        self.start_agent_config(node, &connect, "", &self.app_source(node, format, source_extra))
    }

    /// Like [`Self::start_agent`], with `bus_extra` (TOML lines) in its `[bus]` table.
    pub fn start_agent_bus(&self, node: &str, format: &str, bus_extra: &str) -> Proc {
        self.start_agent_config(
            node,
            std::slice::from_ref(&self.endpoint),
            bus_extra,
            &self.app_source(node, format, ""),
        )
    }

    /// The `[[source]]` table of source `app` for `node`, with `source_extra` in it.
    fn app_source(&self, node: &str, format: &str, source_extra: &str) -> String {
        format!(
            "[[source]]\nname = \"app\"\npaths = [\"{}/*.log*\"]\nformat = \"{format}\"\n{source_extra}\n",
            self.logs_dir(node).display()
        )
    }

    /// Write `agent-<node>.toml` (bus, test-speed agent settings, then `rest`) and start it.
    pub fn start_agent_config(&self, node: &str, connect: &[String], bus_extra: &str, rest: &str) -> Proc {
        self.start_agent_settings(node, connect, bus_extra, "", rest)
    }

    /// Like [`Self::start_agent_config`], with `agent_extra` (TOML lines) in its `[agent]` table.
    pub fn start_agent_settings(
        &self,
        node: &str,
        connect: &[String],
        bus_extra: &str,
        agent_extra: &str,
        rest: &str,
    ) -> Proc {
        let connect: Vec<String> = connect.iter().map(|e| format!("\"{e}\"")).collect();
        let cfg = self.path().join(format!("agent-{node}.toml"));
        // Several agents share this host: no StatsD port unless the test asks for one.
        let metrics = if rest.contains("[metrics]") { "" } else { "[metrics]\nstatsd_listen = \"\"\n" };
        std::fs::write(
            &cfg,
            format!(
                r#"
[bus]
cluster = "{}"
node = "{node}"
connect = [{}]
{bus_extra}
{}
[agent]
data_dir = "{}"
batch_max_delay_ms = 50
poll_interval_ms = 20
glob_interval_ms = 200
checkpoint_interval_ms = 100
http_listen = "127.0.0.1:{}"
{agent_extra}

{metrics}
{rest}
"#,
                self.cluster,
                connect.join(", "),
                self.tls_table("agent", node),
                self.agent_state(node).display(),
                self.http_port(node),
            ),
        )
        .unwrap();
        Proc::start(
            &format!("agent {node}"),
            &["agent", "--config", cfg.to_str().unwrap()],
            self.path().join(format!("agent-{node}.log")),
        )
    }

    /// Run `switchboard query` over the dataset as CSV; the output if the query succeeded.
    pub fn query_csv(&self, sql: &str) -> Option<String> {
        self.query(sql).ok()
    }

    /// Run `switchboard query` as CSV: the output, or the error it printed.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let out = std::process::Command::new(BIN)
            .args(["query", "--data", self.dataset().to_str().unwrap(), "--format", "csv", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    pub fn agent_state(&self, node: &str) -> PathBuf {
        self.path().join("state").join(node)
    }
}

/// Run `switchboard certs <args>`; panics with its output if it fails.
pub fn certs(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).arg("certs").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "switchboard certs {args:?}: {text}");
    text
}

/// A minimal HTTP/1.1 GET on loopback: (status code, body); (0, error) if unreachable.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, "unreachable".into()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_owned()).unwrap_or_default();
    (code, body)
}

/// The value of an unlabelled metric in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Append `lines` to `path` (each gets a newline).
pub fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).unwrap();
}

/// One row of the `logs` table, as read back from Parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub node: String,
    pub stream: String,
    pub seq: i64,
    pub file: String,
    pub offset: i64,
    pub level: Option<String>,
    pub message: String,
    pub truncated: bool,
    pub invalid_utf8: bool,
    pub raw: Option<Vec<u8>>,
}

/// Every row of every committed file of the `logs` table below `dataset`.
pub fn read_logs(dataset: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let files = switchboard_bus::tables::table_files(&dataset.join("logs")).unwrap_or_default();
    for p in files.into_iter().filter(|f| f.committed).map(|f| f.path) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap().build().unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
            let i = |n: &str| b.column_by_name(n).unwrap().as_primitive::<Int64Type>().clone();
            let (node, stream, file, level, message) = (s("node"), s("stream"), s("file"), s("level"), s("message"));
            let (seq, offset) = (i("seq"), i("offset"));
            let flag = |n: &str| b.column_by_name(n).unwrap().as_boolean().clone();
            let (truncated, invalid) = (flag("truncated"), flag("invalid_utf8"));
            let raw = b.column_by_name("raw").unwrap().as_binary::<i32>().clone();
            for r in 0..b.num_rows() {
                rows.push(Row {
                    node: node.value(r).to_owned(),
                    stream: stream.value(r).to_owned(),
                    seq: seq.value(r),
                    file: file.value(r).to_owned(),
                    offset: offset.value(r),
                    level: (!level.is_null(r)).then(|| level.value(r).to_owned()),
                    message: message.value(r).to_owned(),
                    truncated: truncated.value(r),
                    invalid_utf8: invalid.value(r),
                    raw: (!raw.is_null(r)).then(|| raw.value(r).to_vec()),
                });
            }
        }
    }
    rows
}

/// Count of committed rows (for polling).
pub fn count_logs(dataset: &Path) -> usize {
    read_logs(dataset).len()
}

/// Assert every `(node, stream, seq)` is unique and each node's sequence is gap-free from 0;
/// returns rows per node.
pub fn assert_exactly_once(rows: &[Row]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    let mut per_node: HashMap<String, Vec<i64>> = HashMap::new();
    for r in rows {
        let key = (r.node.clone(), r.stream.clone(), r.seq);
        assert!(seen.insert(key.clone(), ()).is_none(), "duplicate {key:?}");
        per_node.entry(format!("{}/{}", r.node, r.stream)).or_default().push(r.seq);
    }
    let mut counts = HashMap::new();
    for (k, mut seqs) in per_node {
        seqs.sort_unstable();
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(*s, i as i64, "stream {k}: sequence gap or offset at position {i}");
        }
        counts.insert(k, seqs.len());
    }
    counts
}

/// A thread appending numbered lines (`<node> line <n> …`) to `<dir>/<file>` in small bursts
/// until stopped; [`Writer::stop`] returns how many it wrote.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

/// The line number `i` of `node` as the writers write it.
pub fn numbered(node: &str, i: usize) -> String {
    format!("2026-11-22T10:00:00Z INFO {node} line {i:07} submit_sm ok padding-padding-padding")
}

impl Writer {
    /// Write `per_tick` lines every 10 ms, at most `max` lines, calling `between(n)` after each
    /// burst (rotations happen there).
    pub fn start(
        node: &str,
        path: PathBuf,
        per_tick: usize,
        max: usize,
        mut between: impl FnMut(&Path, usize) + Send + 'static,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, node) = (stop.clone(), node.to_owned());
        let handle = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) && n < max {
                let end = (n + per_tick).min(max);
                append(&path, (n..end).map(|i| numbered(&node, i)));
                n = end;
                between(&path, n);
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        });
        Self { stop, handle: Some(handle) }
    }

    pub fn stop(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }

    /// Wait until it has written all `max` lines; how many that was.
    pub fn finish(mut self) -> usize {
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Stop both processes; the dataset holds each of the `n` lines of `gw` exactly once.
pub fn stop_and_check_every_line(c: &Cluster, agent: Proc, collector: Proc, n: usize) {
    agent.stop();
    collector.stop();
    let rows = read_logs(&c.dataset());
    assert_exactly_once(&rows);
    assert_lines(&rows, "gw", n);
}

/// Lines the agent of `node` has read so far (`switchboard_agent_lines_total`; 0 if it does not
/// answer).
pub fn lines_read(c: &Cluster, node: &str) -> usize {
    metric(&c.http_get(node, "/metrics").1, "switchboard_agent_lines_total").unwrap_or(0.0) as usize
}

/// Assert the rows of `node` are exactly its lines `0..count`, each once, in sequence order.
pub fn assert_lines(rows: &[Row], node: &str, count: usize) {
    let mut mine: Vec<&Row> = rows.iter().filter(|r| r.node == node).collect();
    mine.sort_by_key(|r| r.seq);
    let mut seen = std::collections::HashSet::new();
    for r in &mine {
        assert!(seen.insert(r.message.clone()), "{node}: line stored twice: {}", r.message);
    }
    for i in 0..count {
        let want = numbered(node, i);
        let want = want.split_once(" INFO ").map(|x| x.1).unwrap_or(&want).to_owned();
        assert!(seen.contains(&want), "{node}: line {i} missing ({} of {count} stored)", mine.len());
    }
    assert_eq!(mine.len(), count, "{node}: extra rows");
}

/// Every table in the dataset read by pyarrow and DuckDB (tests/py/interop.py `tables`) gives
/// the same rows, the same distinct (node, stream, seq) and the same sums as `switchboard query`.
/// Call it when nothing is written any more.
pub fn assert_independent_readers_agree(c: &Cluster) {
    let script = format!("{}/tests/py/interop.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3").args([&script, "tables", c.dataset().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tables = py.as_object().unwrap();
    assert!(!tables.is_empty(), "no table read: {py}");
    for (table, v) in tables {
        let extra = if table == "metrics" {
            ", sum(value) AS sum_value, sum(count) AS sum_count, count(histogram) AS histograms"
        } else {
            ""
        };
        let sql = format!(
            "SELECT count(*) AS rows, sum(seq) AS sum_seq, (SELECT count(*) FROM (SELECT DISTINCT node, stream, seq FROM {table})) AS distinct_rows{extra} FROM {table}"
        );
        let csv = c.query(&sql).unwrap_or_else(|e| panic!("{e}"));
        let mut lines = csv.lines();
        let (head, row) = (lines.next().unwrap(), lines.next().unwrap());
        for (k, val) in head.split(',').zip(row.split(',')) {
            let ours: f64 = val.parse().unwrap_or(0.0);
            let theirs = v[k].as_f64().unwrap_or(-1.0);
            assert!(
                (ours - theirs).abs() <= 1e-6 * ours.abs().max(1.0),
                "{table}.{k}: query {ours}, python {theirs}: {v}"
            );
        }
        assert_eq!(v["pyarrow_rows"], v["rows"], "{table}: {v}");
    }
}

/// Send `sig` (as `kill` takes it: `-STOP`, `-CONT`, `-9`) to `pid`. A stop must reach the
/// process, and returns once every thread of it is stopped (state `T`), not merely signalled;
/// other signals are sent as they can be (to a process that may have exited already).
pub fn signal(pid: u32, sig: &str) {
    let pid = pid.to_string();
    let sent = Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success());
    if sig != "-STOP" {
        return;
    }
    assert!(sent, "kill {sig} {pid}");
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
        tasks.filter_map(Result::ok).all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|st| st.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
                .unwrap_or(true)
        })
    };
    assert!(wait_until(Duration::from_secs(2), stopped), "{pid} did not stop");
}

/// A small tmpfs mounted for a test (a real full disk); unmounted on drop. Mounting needs root,
/// as on the CI machine: where it is not permitted, [`Mount::tmpfs`] says so and gives `None`.
pub struct Mount(std::path::PathBuf);

impl Mount {
    pub fn tmpfs(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root?): the full-disk fault cannot be made");
        }
        ok.then(|| Self(dir.to_owned()))
    }

    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }

    /// Fill the mount with a file of zeros until the disk is full (bounded by the mount's size).
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join(".filler");
        let mut f = File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..1 << 16 {
            if f.write_all(&chunk).and_then(|_| f.sync_data()).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
