//! A collector group under test: collectors sharing one dataset (a directory or a bucket of a
//! local S3 server), agents that reach every collector, and ways to find the writer.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_get, signal, wait_until, Cluster, Proc, BIN};

/// A local S3 server (moto, from tests/py/requirements.txt) on a free loopback port, with one
/// bucket; stopped on drop.
pub struct S3Server {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl S3Server {
    pub fn start(dir: &std::path::Path, bucket: &str) -> Self {
        let port = free_port();
        let log = dir.join(format!("s3-{port}.log"));
        let mut s = Self { port, child: None, log };
        s.spawn();
        s.create_bucket(bucket);
        s
    }

    fn spawn(&mut self) {
        let out = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("starting moto's S3 server (python3 -m pip install -r tests/py/requirements.txt)");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok());
        assert!(up, "the S3 server did not come up\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {text}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop the server (its data is in memory: a restarted server is empty, so tests that stop
    /// it use [`S3Server::pause`] instead).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (the store stops answering) or SIGCONT.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            signal(c.id(), if paused { "-STOP" } else { "-CONT" });
        }
    }

    /// The `AWS_*` variables that make `switchboard query` and pyarrow reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
    }
}

/// Where a group's dataset is.
#[derive(Clone)]
pub enum Data {
    Dir(PathBuf),
    S3 { url: String, endpoint: String },
}

impl Data {
    /// The `data_dir` line and, for S3, the `[collector.store]` table.
    fn config(&self) -> String {
        match self {
            Data::Dir(p) => format!("data_dir = \"{}\"\n", p.display()),
            Data::S3 { url, endpoint } => format!(
                "data_dir = \"{url}\"\n\n[collector.store]\nendpoint = \"{endpoint}\"\nallow_http = true\n\
                 access_key_id = \"test\"\nsecret_access_key = \"test\"\nregion = \"us-east-1\"\ntimeout_ms = 3000\n"
            ),
        }
    }

    pub fn arg(&self) -> String {
        match self {
            Data::Dir(p) => p.display().to_string(),
            Data::S3 { url, .. } => url.clone(),
        }
    }
}

/// One collector of a group: its name, listen port and process.
pub struct Member {
    pub name: String,
    pub port: u16,
    pub proc: Option<Proc>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("tcp/127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }
}

/// Start collector `name` of the group: listening on `port`, connecting to `connect`, without
/// gossip (links only where the test says), `max_file_age_ms` = 1000, a notify command that
/// appends each new role to `roles-<name>.txt`.
pub fn start_member(c: &Cluster, name: &str, port: u16, connect: &[String], data: &Data) -> Proc {
    start_member_with(c, name, port, connect, data, "")
}

/// [`start_member`] with `extra` (TOML tables) at the end of its config.
pub fn start_member_with(c: &Cluster, name: &str, port: u16, connect: &[String], data: &Data, extra: &str) -> Proc {
    start_member_aged(c, name, port, connect, data, extra, 1000)
}

/// [`start_member_with`] with files committed every `age_ms` (`max_file_age_ms`).
pub fn start_member_aged(
    c: &Cluster,
    name: &str,
    port: u16,
    connect: &[String],
    data: &Data,
    extra: &str,
    age_ms: u64,
) -> Proc {
    let cfg = c.path().join(format!("{name}.toml"));
    let connect: Vec<String> = connect.iter().map(|e| format!("\"{e}\"")).collect();
    let roles = c.path().join(format!("roles-{name}.txt"));
    std::fs::write(
        &cfg,
        format!(
            r#"
[bus]
cluster = "{}"
node = "{name}"
listen = ["tcp/127.0.0.1:{port}"]
connect = [{}]
gossip = false

[collector]
max_file_age_ms = {age_ms}
http_listen = "127.0.0.1:{}"
spool_dir = "{}"
notify = ["sh", "-c", "echo \"$0\" >> {}"]
{}
{extra}
"#,
            c.cluster,
            connect.join(", "),
            c.http_port(name),
            c.path().join(format!("spool-{name}")).display(),
            roles.display(),
            data.config(),
        ),
    )
    .unwrap();
    Proc::start(name, &["collector", "--config", cfg.to_str().unwrap()], c.path().join(format!("{name}.log")))
}

/// Start an agent for `node` connected to every endpoint in `collectors`, without gossip.
pub fn start_group_agent(c: &Cluster, node: &str, collectors: &[String]) -> Proc {
    let rest = format!(
        "[[source]]\nname = \"app\"\npaths = [\"{}/*.log*\"]\nformat = \"plain\"\n",
        c.logs_dir(node).display()
    );
    c.start_agent_config(node, collectors, "gossip = false", &rest)
}

/// `name`'s role from its `/health` (`leader`, `standby`), or `None` if it does not answer.
pub fn role(c: &Cluster, name: &str) -> Option<String> {
    let (code, body) = http_get(c.http_port(name), "/health");
    if code == 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("role").and_then(|r| r.as_str()).map(str::to_owned)
}

/// `name`'s `/health` body.
pub fn health(c: &Cluster, name: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(c.http_port(name), "/health");
    (code, serde_json::from_str(&body).unwrap_or_default())
}

/// Seconds since `name` last committed, if it did.
pub fn last_commit_age(c: &Cluster, name: &str) -> Option<f64> {
    health(c, name).1.get("last_commit_age_seconds").and_then(serde_json::Value::as_f64)
}

/// Wait until one of `names` says it is the leader; its index.
pub fn wait_for_leader(c: &Cluster, names: &[&str], timeout: Duration) -> Option<usize> {
    let mut found = None;
    wait_until(timeout, || {
        found = names.iter().position(|n| role(c, n).as_deref() == Some("leader"));
        found.is_some()
    });
    found
}

/// From `fault` (an instant just before the writer was killed or stopped) until `name` is the
/// leader and has committed after the fault: the takeover time; `None` after `timeout`.
pub fn takeover_time(c: &Cluster, name: &str, fault: Instant, timeout: Duration) -> Option<Duration> {
    let mut at = None;
    wait_until(timeout, || {
        if role(c, name).as_deref() != Some("leader") {
            return false;
        }
        let elapsed = fault.elapsed().as_secs_f64();
        match last_commit_age(c, name) {
            Some(age) if age < elapsed => {
                at = Some(Duration::from_secs_f64(elapsed - age));
                true
            }
            _ => false,
        }
    });
    at
}

/// Run `switchboard query` (CSV) over `data`, with `env` set.
pub fn query(data: &Data, env: &[(&'static str, String)], sql: &str) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["query", "--data", &data.arg(), "--format", "csv", sql])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Per node: (rows, distinct (stream, seq), min seq, max seq), counted with `switchboard query`.
pub fn counts_by_query(data: &Data, env: &[(&'static str, String)]) -> Vec<(String, u64, u64, i64, i64)> {
    let sql = "SELECT node, count(*) AS n, count(DISTINCT stream || '/' || CAST(seq AS VARCHAR)) AS d, \
               min(seq) AS lo, max(seq) AS hi FROM logs GROUP BY node ORDER BY node";
    let Ok(csv) = query(data, env, sql) else { return Vec::new() };
    csv.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Assert that the dataset holds exactly `expected[node]` lines per node, each once, with
/// sequence numbers `0..n`: counted with `switchboard query`.
pub fn assert_exactly_once_by_query(data: &Data, env: &[(&'static str, String)], expected: &[(&str, usize)]) {
    let got = counts_by_query(data, env);
    for (node, n) in expected {
        let row = got.iter().find(|r| r.0 == *node);
        let Some((_, rows, distinct, lo, hi)) = row else { panic!("no rows of {node}: {got:?}") };
        assert_eq!((*rows, *distinct, *lo, *hi), (*n as u64, *n as u64, 0, *n as i64 - 1), "{node}: {got:?}");
    }
}

/// Total rows stored (for polling), by `switchboard query`.
pub fn stored(data: &Data, env: &[(&'static str, String)]) -> u64 {
    counts_by_query(data, env).iter().map(|r| r.1).sum()
}

/// Slots of the commit log that are claims, read from a local dataset.
pub fn claims_in(dir: &std::path::Path) -> Vec<String> {
    claims_at(dir).into_iter().map(|(writer, _)| writer).collect()
}

/// The claims in the commit log of the dataset in `dir`, in slot order: writer, and when it
/// was written (ms since the Unix epoch).
pub fn claims_at(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("_switchboard/log")).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if v.get("kind").and_then(|k| k.as_str()) == Some("claim") {
            let writer = v.get("writer").and_then(|w| w.as_str()).unwrap_or_default().to_owned();
            let (seq, at) = (v["seq"].as_u64().unwrap_or(0), v["at_ms"].as_u64().unwrap_or(0));
            out.push((seq, writer, at));
        }
    }
    out.sort();
    out.into_iter().map(|(_, writer, at)| (writer, at)).collect()
}
