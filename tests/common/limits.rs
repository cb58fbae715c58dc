//! Harness for the limits tests: agents in a mesh of their own, a client of the agent's Unix
//! socket, paced demand that records every allowed unit, an HTTP POST, and a TCP proxy that can
//! cut a link without closing it (as a network partition does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{free_port, Cluster, Proc, BIN};

/// One agent of a limits test: its bus port and its files.
pub struct LimitsNode {
    pub name: String,
    pub port: u16,
    pub proc: Option<Proc>,
}

impl LimitsNode {
    pub fn endpoint(&self) -> String {
        format!("tcp/127.0.0.1:{}", self.port)
    }
}

impl Cluster {
    /// An agent that listens on its own port and connects to `connect`, with no log source of
    /// its own and limits tuned for tests (`bus_extra` and `limits_extra` are TOML lines).
    pub fn start_limits_agent(
        &self,
        node: &str,
        connect: &[String],
        bus_extra: &str,
        limits_extra: &str,
    ) -> LimitsNode {
        let port = free_port();
        self.restart_limits_agent(node, port, connect, bus_extra, limits_extra)
    }

    pub fn restart_limits_agent(
        &self,
        node: &str,
        port: u16,
        connect: &[String],
        bus_extra: &str,
        limits_extra: &str,
    ) -> LimitsNode {
        let bus = format!("listen = [\"tcp/127.0.0.1:{port}\"]\n{bus_extra}");
        let rest = format!("[limits]\ninterval_ms = 50\n{limits_extra}\n");
        let proc = self.start_agent_config(node, connect, &bus, &rest);
        LimitsNode { name: node.to_owned(), port, proc: Some(proc) }
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        self.agent_state(node).join("gateway.sock")
    }

    /// Run `switchboard limits <args>` against `endpoint`; (success, stdout + stderr).
    pub fn limits_cli(&self, endpoint: &str, args: &[&str]) -> (bool, String) {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("limits").args(args).args(["--connect", endpoint, "--cluster", &self.cluster]);
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Write a limits file and set it; panics with the output if that fails.
    pub fn set_limits(&self, endpoint: &str, toml: &str, message: &str) -> String {
        let file = self.path().join("limits.toml");
        std::fs::write(&file, toml).unwrap();
        let (ok, text) = self.limits_cli(
            endpoint,
            &["set", file.to_str().unwrap(), "--author", "test", "-m", message, "--timeout", "10s"],
        );
        assert!(ok, "limits set failed:\n{text}");
        text
    }
}

/// A connection to an agent's gateway socket.
pub struct SocketClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

impl SocketClient {
    /// Connect, retrying for up to 10 s while the agent starts.
    pub fn connect(path: &std::path::Path) -> Self {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    return Self { reader: BufReader::new(s.try_clone().unwrap()), writer: s, line: String::new() };
                }
                Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("{}: {e}", path.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Send one request line, return the answer line (without the newline).
    pub fn request(&mut self, req: &str) -> String {
        self.try_request(req).expect("the agent answers")
    }

    /// Like [`Self::request`]; `None` once the agent is gone.
    pub fn try_request(&mut self, req: &str) -> Option<String> {
        self.writer.write_all(format!("{req}\n").as_bytes()).ok()?;
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(n) if n > 0 => Some(self.line.trim_end().to_owned()),
            _ => None,
        }
    }

    /// Send request lines without waiting for their answers (pipelining).
    pub fn send(&mut self, reqs: &[&str]) {
        let text: String = reqs.iter().map(|r| format!("{r}\n")).collect();
        self.writer.write_all(text.as_bytes()).unwrap();
    }

    /// The next answer line (without the newline); `None` once the agent closed the connection.
    pub fn answer(&mut self) -> Option<String> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(n) if n > 0 => Some(self.line.trim_end().to_owned()),
            _ => None,
        }
    }

    pub fn acquire(&mut self, key: &str) -> bool {
        self.try_acquire(key) == Some(true)
    }

    /// `None` once the agent is gone.
    pub fn try_acquire(&mut self, key: &str) -> Option<bool> {
        let a = self.try_request(&format!("ACQUIRE {key}"))?;
        assert!(a == "OK" || a.starts_with("DENY ") || a == "UNLIMITED", "unexpected answer {a:?}");
        Some(!a.starts_with("DENY"))
    }
}

/// Paced demand on one node: `rate` requests per second for `key` (changeable while it runs),
/// recording when each allowed one was answered.
pub struct Load {
    pub rate: Arc<AtomicU64>,
    pub allowed: Arc<Mutex<Vec<Instant>>>,
    /// When each request that was denied was answered.
    pub denied: Arc<Mutex<Vec<Instant>>>,
    pub asked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    pub fn start(socket: PathBuf, key: &str, rate: u64) -> Self {
        let (rate, stop) = (Arc::new(AtomicU64::new(rate)), Arc::new(AtomicBool::new(false)));
        let (allowed, denied) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let asked = Arc::new(AtomicU64::new(0));
        let (r, s, a, d, n, key) =
            (rate.clone(), stop.clone(), allowed.clone(), denied.clone(), asked.clone(), key.to_owned());
        let handle = std::thread::spawn(move || {
            let mut client = SocketClient::connect(&socket);
            let tick = Duration::from_millis(5);
            let mut owed = 0.0f64;
            let (mut next, mut last) = (Instant::now(), Instant::now());
            // Bounded: at most 10 minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                // What is owed for the time that passed, not for one tick: a thread that woke
                // late (a busy machine) still offers the whole rate, catching up on at most
                // 200 ms.
                let now = Instant::now();
                owed += r.load(Ordering::Relaxed) as f64 * (now - last).min(Duration::from_millis(200)).as_secs_f64();
                last = now;
                while owed >= 1.0 {
                    owed -= 1.0;
                    n.fetch_add(1, Ordering::Relaxed);
                    match client.try_acquire(&key) {
                        Some(true) => a.lock().unwrap().push(Instant::now()),
                        Some(false) => d.lock().unwrap().push(Instant::now()),
                        // The agent is gone (killed by the test).
                        None => return,
                    }
                }
                next += tick;
                match next.checked_duration_since(Instant::now()) {
                    Some(d) => std::thread::sleep(d),
                    None => next = Instant::now(),
                }
            }
        });
        Self { rate, allowed, denied, asked, stop, handle: Some(handle) }
    }

    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    pub fn total(&self) -> usize {
        self.allowed.lock().unwrap().len()
    }

    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.total()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Allowed units of all `loads` in `[from, from + len)`.
pub fn admitted(loads: &[&Load], from: Instant, len: Duration) -> usize {
    loads.iter().map(|l| l.allowed.lock().unwrap().iter().filter(|t| **t >= from && **t < from + len).count()).sum()
}

/// What each of `loads` was allowed and denied per 250 ms of `[from, to)`, as
/// `allowed/denied` columns: whether a short window came from the limiter (denials) or from
/// requests that were not sent (neither).
pub fn timeline(loads: &[&Load], from: Instant, to: Instant) -> String {
    let step = Duration::from_millis(250);
    let count =
        |v: &Mutex<Vec<Instant>>, t: Instant| v.lock().unwrap().iter().filter(|x| **x >= t && **x < t + step).count();
    let mut out = String::new();
    let mut t = from;
    while t + step <= to {
        let cells: Vec<String> =
            loads.iter().map(|l| format!("{}/{}", count(&l.allowed, t), count(&l.denied, t))).collect();
        out.push_str(&format!("{:>6} ms {}\n", (t - from).as_millis(), cells.join(" ")));
        t += step;
    }
    out
}

/// Sliding 1 s windows (step 100 ms) over `[from, to)`: the most and the least admitted.
///
/// The least is taken over the windows in which the loads were answered steadily: a window
/// with a 250 ms step in which they were answered for under 80% of the requests they were set
/// to offer (a client or an agent starved of CPU by a busy host, and a token bucket does not
/// bank what it could not hand out meanwhile) says nothing of the shares. When over half the
/// windows are such, the least is over all of them, so a limiter that answers slowly fails.
pub fn window_extremes(loads: &[&Load], from: Instant, to: Instant) -> (usize, usize) {
    let step = Duration::from_millis(250);
    let offered = loads.iter().map(|l| l.rate.load(Ordering::Relaxed)).sum::<u64>() as f64 * step.as_secs_f64();
    let answered = |t: Instant| -> usize {
        let within = |v: &Mutex<Vec<Instant>>| v.lock().unwrap().iter().filter(|x| **x >= t && **x < t + step).count();
        loads.iter().map(|l| within(&l.allowed) + within(&l.denied)).sum()
    };
    let steady = |t: Instant| (0..4).all(|q| answered(t + step * q) as f64 >= 0.8 * offered);
    let (mut most, mut least, mut least_steady, mut windows, mut starved) = (0, usize::MAX, usize::MAX, 0, 0);
    let mut t = from;
    while t + Duration::from_secs(1) <= to {
        let n = admitted(loads, t, Duration::from_secs(1));
        most = most.max(n);
        least = least.min(n);
        windows += 1;
        if steady(t) {
            least_steady = least_steady.min(n);
        } else {
            starved += 1;
        }
        t += Duration::from_millis(100);
    }
    if starved > 0 {
        eprintln!("{starved} of {windows} windows had a 250 ms step answered under 80% of the offered rate");
    }
    (most, if starved * 2 > windows { least } else { least_steady })
}

/// POST a JSON body: (status code, headers, body).
pub fn http_post(port: u16, path: &str, body: &str) -> (u16, String, String) {
    http_post_within(port, path, body, Duration::from_secs(5))
}

/// [`http_post`], waiting up to `timeout` for the answer.
pub fn http_post_within(port: u16, path: &str, body: &str, timeout: Duration) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_owned(), body.to_owned())
}

/// A TCP proxy on loopback; [`Proxy::cut`] makes it swallow everything in both directions
/// while keeping connections open, like a network that stopped delivering; [`Proxy::refuse`]
/// closes every connection and refuses new ones, like a server that is down.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    refuse: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let refuse = Arc::new(AtomicBool::new(false));
        let (c, r, s) = (cut.clone(), refuse.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if r.load(Ordering::SeqCst) => drop(client),
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                        for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                        {
                            let (c, r, s) = (c.clone(), r.clone(), s.clone());
                            std::thread::spawn(move || pump(from, to, c, r, s));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, cut, refuse, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("tcp/127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn refuse(&self) {
        self.refuse.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.refuse.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, refuse: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    // A connection that carried data across a cut is dropped when the cut heals: the bytes it
    // swallowed are gone, so what follows would be garbage to the other end.
    let mut swallowed = false;
    while !stop.load(Ordering::Relaxed) && !refuse.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if cut.load(Ordering::SeqCst) => {
                let _ = n;
                swallowed = true;
            }
            Ok(n) => {
                if swallowed || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if swallowed && !cut.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
