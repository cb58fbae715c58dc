//! The gateway socket: one line protocol for limit decisions and DLRs, on a Unix socket and,
//! when configured, on TCP at a loopback address (docs/gateway-protocol.md).
//!
//! One request per line, one answer per line, in the order of the requests. Requests may be
//! pipelined: a connection reads on while earlier requests wait for the bus (up to
//! [`MAX_IN_FLIGHT`] of them), and answers that are ready leave with one write. A request that
//! needs no waiting (a limit decision, a DLR this node holds) is answered on the task that read
//! it, without a hand-off. Every connection is served on one thread of its own
//! (`switchboard_bus::apart`) and busy-polls after an answer (`switchboard_bus::busy_poll`,
//! `gateway.busy_poll_us`); a Unix socket's thread is woken by requests only
//! (`switchboard_bus::quiet_unix`). The verbs are those of `crate::limits::lines` (`ACQUIRE`, `RELEASE`,
//! `PING`) and `crate::dlr::lines` (`REGISTER`, `RESOLVE`, `REPORT`, `CLOSE`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use switchboard_bus::busy_poll::BusyPoll;
use switchboard_bus::quiet_unix::QuietUnixStream;
use switchboard_bus::throttle::Throttle;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfigError;
use crate::dlr::DlrService;
use crate::limits::LimitsService;
use crate::AgentError;

/// Longest request line (a DLR registration batch is one line of JSON).
pub const MAX_LINE: usize = 64 * 1024;
/// Requests of one connection waiting for their answers; beyond that it stops reading. With
/// [`MAX_LINE`] this bounds what one connection holds to 8 MiB of requests.
pub const MAX_IN_FLIGHT: usize = 128;

/// The longest path of a Unix socket, in bytes (`sun_path` holds 108 with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The gateway socket's path (`gateway.socket` under `data_dir`), `None` when disabled; an
/// error when it is too long for a Unix socket.
pub fn socket_path(settings: &GatewaySettings, data_dir: &Path) -> Result<Option<PathBuf>, AgentConfigError> {
    if settings.socket.as_os_str().is_empty() {
        return Ok(None);
    }
    let path = data_dir.join(&settings.socket);
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(AgentConfigError::Invalid(format!(
            "gateway.socket {}: {len} bytes, over the {MAX_SOCKET_PATH} a Unix socket's path may have: set \
             gateway.socket to a shorter absolute path (e.g. \"/run/switchboard/gateway.sock\")",
            path.display()
        )));
    }
    Ok(Some(path))
}

/// The most `gateway.max_connections` may allow, per listener.
pub const MAX_CONNECTIONS: usize = 100_000;

/// The `[gateway]` config table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Unix socket of the gateway protocol, relative to `agent.data_dir` unless absolute; empty
    /// to disable. Default: `gateway.sock`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group of the socket (a name from `/etc/group`, or a number): the socket is created with
    /// mode 0660, so the agent's user and this group may connect. Default: the agent's group.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// The same protocol over TCP, for gateways that cannot open a Unix socket: a loopback
    /// address and port (`127.0.0.1:7484`); empty to disable. The protocol has no token, so
    /// other addresses are refused. Default: empty.
    #[serde(default)]
    pub tcp_listen: String,
    /// Connections open at once, per listener; more are closed at once. Default: 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// After an answer, how long a connection of the gateway socket or the HTTP API looks for
    /// its next request before its thread may sleep, in microseconds, while the gateway's last
    /// request came within that time (docs/gateway-protocol.md, "Threads and busy polling";
    /// docs/performance.md, "Limit decisions"). A gateway asking one request at a time gets two
    /// to three times the decisions per second; one that asks at a paced rate or rarely costs
    /// no spinning. 0 turns it off. Default: 50.
    #[serde(default = "default_busy_poll_us")]
    pub busy_poll_us: u64,
}

/// Whether `b` separates the words of a request line: a space or a tab (docs/gateway-protocol.md).
/// Any other byte, a `\r` inside a line too, belongs to the word it is in.
pub(crate) fn is_separator(b: &u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// The words of a request line (its end's whitespace, a `\r` before the `\n`, left out).
pub(crate) fn words(line: &str) -> impl Iterator<Item = &str> {
    line.trim_ascii_end().split([' ', '\t']).filter(|w| !w.is_empty())
}

fn default_socket() -> PathBuf {
    PathBuf::from("gateway.sock")
}

fn default_max_connections() -> usize {
    1024
}

fn default_busy_poll_us() -> u64 {
    switchboard_bus::busy_poll::DEFAULT_BUDGET_US
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_group: None,
            tcp_listen: String::new(),
            max_connections: default_max_connections(),
            busy_poll_us: default_busy_poll_us(),
        }
    }
}

impl GatewaySettings {
    /// Check the `[gateway]` table: a TCP address must be loopback, connections at least one.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(AgentConfigError::Invalid(format!(
                "gateway.max_connections = {} must be between 1 and {MAX_CONNECTIONS} (each connection holds a thread's \
                 share and a descriptor; the default is 1024)",
                self.max_connections
            )));
        }
        if self.busy_poll_us > 10_000 {
            return Err(AgentConfigError::Invalid(format!(
                "gateway.busy_poll_us = {} is over 10000 (10 ms): a connection would keep a core busy that long \
                 whenever its gateway pauses; 50 is the default, 0 turns it off",
                self.busy_poll_us
            )));
        }
        self.tcp_addr().map(|_| ())
    }

    /// The busy-polling budget of a connection (`busy_poll_us`).
    pub fn busy_poll(&self) -> Duration {
        Duration::from_micros(self.busy_poll_us)
    }

    /// The TCP address, if one is set.
    pub fn tcp_addr(&self) -> Result<Option<SocketAddr>, AgentConfigError> {
        if self.tcp_listen.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = self
            .tcp_listen
            .parse()
            .map_err(|e| AgentConfigError::Invalid(format!("gateway.tcp_listen {:?}: {e}", self.tcp_listen)))?;
        if !addr.ip().is_loopback() {
            return Err(AgentConfigError::Invalid(format!(
                "gateway.tcp_listen {addr} is not a loopback address: the gateway protocol has no token; \
                 gateways on other hosts use the HTTP API with agent.http_token"
            )));
        }
        Ok(Some(addr))
    }
}

/// The gateway socket's counters.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Request lines answered.
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Lines with a verb the protocol does not have.
    pub unknown_requests: AtomicU64,
    /// Lines over [`MAX_LINE`] (the connection is closed).
    pub lines_too_long: AtomicU64,
    /// Bytes after the last newline when a connection ended: a request cut short, not carried out.
    pub unterminated_lines: AtomicU64,
}

/// What answers the requests: the limits and the DLR index, whichever this node runs.
pub struct Gateway {
    limits: Option<Arc<LimitsService>>,
    dlr: Option<Arc<DlrService>>,
    /// Counters.
    pub stats: GatewayStats,
}

/// An answer still waiting (for the bus, the store): it yields the answer line.
pub type Later = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// The gateway protocol's listeners, bound before the agent joins the bus (a socket that cannot
/// be bound fails the start before anything else happens).
pub struct Listeners {
    unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    tcp: Option<std::net::TcpListener>,
    max_connections: usize,
}

impl Listeners {
    /// Bind the configured socket and TCP address; `None` when neither is configured.
    pub fn bind(settings: &GatewaySettings, data_dir: &Path) -> Result<Option<Self>, AgentError> {
        let tcp = settings.tcp_addr().map_err(AgentError::Config)?;
        if settings.socket.as_os_str().is_empty() && tcp.is_none() {
            return Ok(None);
        }
        let unix = match socket_path(settings, data_dir).map_err(AgentError::Config)? {
            None => None,
            Some(path) => {
                let listener = bind_unix(&path, settings.socket_group.as_deref()).map_err(|source| {
                    AgentError::Listen { what: format!("gateway.socket {}", path.display()), source }
                })?;
                tracing::info!(socket = %path.display(), "gateway protocol on the Unix socket");
                Some((listener, path))
            }
        };
        let tcp = match tcp {
            Some(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| AgentError::Listen { what: format!("gateway.tcp_listen {addr}"), source })?;
                tracing::info!(%addr, "gateway protocol on TCP");
                Some(listener)
            }
            None => None,
        };
        Ok(Some(Self { unix, tcp, max_connections: settings.max_connections }))
    }
}

impl Gateway {
    /// Serve the bound `listeners` until `cancel` fires. `None` when there are none.
    pub fn start(
        listeners: Option<Listeners>,
        busy_poll: Duration,
        limits: Option<Arc<LimitsService>>,
        dlr: Option<Arc<DlrService>>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Option<Arc<Self>>, AgentError> {
        let Some(Listeners { unix, tcp, max_connections }) = listeners else { return Ok(None) };
        let gateway = Arc::new(Self { limits, dlr, stats: GatewayStats::default() });
        // `max_connections` holds for each listener on its own.
        let (unix_slots, tcp_slots) = (
            Arc::new(tokio::sync::Semaphore::new(max_connections)),
            Arc::new(tokio::sync::Semaphore::new(max_connections)),
        );
        // Every connection is served on one thread of its own (`switchboard_bus::apart`): a
        // request is read, decided and answered there, without moving between threads.
        let (g, stop) = (gateway.clone(), cancel.clone());
        let task = switchboard_bus::apart::spawn("sb-gateway", move || {
            let unix = match unix {
                Some((listener, path)) => Some((UnixListener::from_std(listener)?, path)),
                None => None,
            };
            let tcp = tcp.map(TcpListener::from_std).transpose()?;
            Ok(async move {
                let on_unix = async {
                    let Some((listener, path)) = unix else { return };
                    let accept = || async {
                        let (s, _) = listener.accept().await?;
                        // Woken by requests only, not by the gateway reading its answers.
                        let s = QuietUnixStream::from_tokio(s)?;
                        Ok(tokio::io::split(BusyPoll::new(s, busy_poll)))
                    };
                    accept_loop(accept, g.clone(), unix_slots, &stop).await;
                    let _ = std::fs::remove_file(&path);
                };
                let on_tcp = async {
                    let Some(listener) = tcp else { return };
                    let accept = || async {
                        let (s, _) = listener.accept().await?;
                        // Answers are small and must leave at once.
                        s.set_nodelay(true)?;
                        Ok(tokio::io::split(BusyPoll::new(s, busy_poll)))
                    };
                    accept_loop(accept, g.clone(), tcp_slots, &stop).await;
                };
                tokio::join!(on_unix, on_tcp);
            })
        })
        .map_err(|source| AgentError::Listen { what: "the gateway protocol's listeners".into(), source })?;
        switchboard_bus::vital::watch(tracker, "the gateway protocol".into(), task, cancel.clone());
        Ok(Some(gateway))
    }

    /// Answer one request line: now (appended to `out`), or later.
    pub fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) -> Option<Later> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let line = line.trim_ascii_end();
        let verb_end = line.iter().position(is_separator).unwrap_or(line.len());
        match &line[..verb_end] {
            b"ACQUIRE" | b"RELEASE" | b"PING" => match &self.limits {
                Some(l) => {
                    l.stats.socket_requests.fetch_add(1, Ordering::Relaxed);
                    crate::limits::lines::answer(l, line, out);
                }
                None if &line[..verb_end] == b"PING" => {
                    if line[verb_end..].iter().all(u8::is_ascii_whitespace) {
                        out.extend_from_slice(b"PONG\n");
                    } else {
                        out.extend_from_slice(b"ERR PING takes no argument\n");
                    }
                }
                None => out.extend_from_slice(b"ERR limits are off on this node ([limits] enabled = false)\n"),
            },
            b"REGISTER" | b"RESOLVE" | b"REPORT" | b"CLOSE" => match &self.dlr {
                Some(d) => return crate::dlr::lines::answer(d, line, out),
                None => out.extend_from_slice(b"ERR DLRs are off on this node ([dlr] enabled = false)\n"),
            },
            b"" => {
                self.stats.unknown_requests.fetch_add(1, Ordering::Relaxed);
                let what = if line.is_empty() { "an empty line" } else { "whitespace" };
                out.extend_from_slice(format!("ERR a request starts with its verb, not with {what}\n").as_bytes());
            }
            verb if std::str::from_utf8(verb).is_err() => {
                self.stats.unknown_requests.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(
                    b"ERR request is not UTF-8; expected ACQUIRE, RELEASE, PING, REGISTER, RESOLVE, REPORT or CLOSE\n",
                );
            }
            _ => {
                self.stats.unknown_requests.fetch_add(1, Ordering::Relaxed);
                let verb = String::from_utf8_lossy(&line[..verb_end.min(32)]);
                out.extend_from_slice(
                    format!(
                        "ERR unknown request {:?}; expected ACQUIRE, RELEASE, PING, REGISTER, RESOLVE, REPORT or CLOSE\n",
                        verb.trim()
                    )
                    .as_bytes(),
                );
            }
        }
        None
    }
}

/// Accept connections from `accept` until `cancel` fires, at most `slots` open at once.
async fn accept_loop<A, F, R, W>(
    accept: A,
    gateway: Arc<Gateway>,
    slots: Arc<tokio::sync::Semaphore>,
    cancel: &CancellationToken,
) where
    A: Fn() -> F,
    F: Future<Output = std::io::Result<(R, W)>>,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // A full file table fails every accept until a descriptor is free: said once per 10 s.
    let mut accept_failed = Throttle::new(std::time::Duration::from_secs(10));
    loop {
        let (read, mut write) = tokio::select! {
            _ = cancel.cancelled() => return,
            s = accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    if let Some(unsaid) = accept_failed.admit() {
                        tracing::warn!(error = %e, failed_since_last_line = unsaid, "gateway socket: accept failed");
                    }
                    // A full file table, say: do not spin on it.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            gateway.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = write.write_all(b"ERR too many connections (gateway.max_connections)\n").await;
                close_gently(read, write).await;
            });
            continue;
        };
        gateway.stats.connections.fetch_add(1, Ordering::Relaxed);
        let (g, cancel) = (gateway.clone(), cancel.clone());
        tokio::spawn(async move {
            answer_requests(read, write, &*g, &cancel).await;
            drop(slot);
        });
    }
}

/// Most bytes read and dropped from a connection being closed after an error line.
const DRAIN_BYTES: u64 = 1 << 20;
/// Longest wait for the peer to finish sending on a connection being closed after an error line.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Close a connection after its last answer (an error): end the writing side, then read and
/// drop what the peer still sends (up to [`DRAIN_BYTES`] or [`DRAIN_TIME`]). Closing a socket
/// with unread bytes makes the kernel reset it, and a reset can destroy the answer in flight
/// before the peer reads it.
async fn close_gently<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(read: R, mut write: W) {
    let _ = write.shutdown().await;
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(DRAIN_TIME, tokio::io::copy(&mut read.take(DRAIN_BYTES), &mut sink)).await;
}

/// How a request is ordered with the others of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Runs beside the requests before and after it (a decision, a lookup).
    Free,
    /// Changes what later requests see, running beside the others (a DLR report; two reports
    /// of one message are ordered by the service).
    Change,
    /// Changes what later requests see: no request behind it is read until its work is done
    /// (its answer may still wait its turn).
    Write,
    /// A [`Kind::Write`] that starts only once the [`Kind::Change`]s before it are done.
    WriteAfterChanges,
}

/// What a connection does with its request lines.
pub(crate) trait LineService {
    /// Answer one request line: now (appended to `out`), or later.
    fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) -> Option<Later>;
    /// How the request on `line` is ordered with the others of its connection.
    fn kind(&self, _line: &[u8]) -> Kind {
        Kind::Free
    }
    /// A line over [`MAX_LINE`] bytes arrived; it is refused and the connection closed.
    fn refuse_long_line(&self);
    /// The connection ended after a request without its newline, which is not carried out.
    fn drop_unterminated_line(&self);
}

impl LineService for Gateway {
    fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) -> Option<Later> {
        Gateway::answer_line(self, line, out)
    }

    /// A registration and a close: a request behind one on the same connection is read once
    /// it is done, so it sees the record it made or closed. Reports run concurrently, and a
    /// close starts once the reports before it are done, so it closes what they left.
    fn kind(&self, line: &[u8]) -> Kind {
        if line.starts_with(b"REGISTER") {
            Kind::Write
        } else if line.starts_with(b"CLOSE") {
            Kind::WriteAfterChanges
        } else if line.starts_with(b"REPORT") {
            Kind::Change
        } else {
            Kind::Free
        }
    }

    fn refuse_long_line(&self) {
        self.stats.lines_too_long.fetch_add(1, Ordering::Relaxed);
    }

    fn drop_unterminated_line(&self) {
        self.stats.unterminated_lines.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bind the Unix socket at `path`, replacing a stale one left by a previous run, with mode 0660
/// and, if given, the group `group` (a name or a number): the agent's user and that group may
/// connect, nobody else.
pub fn bind_unix(path: &Path, group: Option<&str>) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    if let Some(group) = group {
        std::os::unix::fs::chown(path, None, Some(gid_of(group)?))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The id of group `group`: a number, or a name looked up in `/etc/group`.
pub fn gid_of(group: &str) -> std::io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no group named {group:?} in /etc/group"))
        })
}

/// Answer every request line read from `read` on `write`, in order, until the peer closes (then
/// the answers still due are sent), a line is too long or `cancel` fires.
///
/// Answers wait in `out` only while the next request line is already complete in the read
/// buffer (so a pipelined burst is answered with one write) or while an earlier answer is still
/// due; before waiting for more bytes from the gateway, everything answered so far is written.
async fn answer_requests<R, W, S>(read: R, mut write: W, service: &S, cancel: &CancellationToken)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: LineService + ?Sized,
{
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(128);
    let mut out = Vec::with_capacity(256);
    // Answers in request order; ready ones queue behind a pending one.
    let mut due = Due::default();
    let mut reading = true;
    // A request read that waits for the changes before it to be done before it starts.
    let mut held: Option<Vec<u8>> = None;
    loop {
        if held.is_some() && !due.changes.any() {
            if let Some(line) = held.take() {
                start(service, &line, &mut due, &mut out);
            }
        }
        // What is ready at the head goes out in order.
        while let Some(Some(answer)) = due.next().now_or_never() {
            out.extend_from_slice(&answer);
        }
        let may_read = reading && held.is_none() && due.len() < MAX_IN_FLIGHT && !due.writes.any();
        // Hold the answers only while the next request is already in and will be read at once.
        let next_is_in = may_read && memchr::memchr(b'\n', reader.buffer()).is_some();
        if !out.is_empty() && !next_is_in {
            if write.write_all(&out).await.is_err() {
                // The gateway is gone (it reset the connection, say), maybe mid-request.
                if ends_inside_a_request(&line, reader.buffer()) {
                    service.drop_unterminated_line();
                }
                return;
            }
            out.clear();
        }
        if !reading && due.is_empty() && held.is_none() {
            return;
        }
        let (writes, changes) = (due.writes.clone(), due.changes.clone());
        tokio::select! {
            _ = cancel.cancelled() => return,
            answer = due.next(), if !due.is_empty() => {
                if let Some(answer) = answer {
                    out.extend_from_slice(&answer);
                }
            }
            // A write done before its answer's turn lets reading go on, and a change done lets
            // a held request start.
            _ = writes.done.notified(), if writes.any() => {}
            _ = changes.done.notified(), if held.is_some() => {}
            n = read_line(&mut reader, &mut line), if may_read => {
                match n {
                    Ok(0) | Err(_) => {
                        reading = false;
                        // Reset by the gateway (or ended after a read cut short) with part of a
                        // request read: as below.
                        if ends_inside_a_request(&line, reader.buffer()) {
                            service.drop_unterminated_line();
                            line.clear();
                        }
                    }
                    Ok(_) if line.len() > MAX_LINE => {
                        service.refuse_long_line();
                        // The answers to the lines before it go first.
                        while let Some(answer) = due.next().await {
                            out.extend_from_slice(&answer);
                        }
                        out.extend_from_slice(b"ERR line too long\n");
                        if write.write_all(&out).await.is_ok() {
                            close_gently(reader, write).await;
                        }
                        return;
                    }
                    // The stream ended inside a line, cut short (a gateway that crashed
                    // mid-write): `ACQUIRE k 12` cut to `ACQUIRE k 1` must not be carried out,
                    // with nobody left to read the answer.
                    Ok(_) if line.last() != Some(&b'\n') => {
                        reading = false;
                        service.drop_unterminated_line();
                        tracing::debug!(bytes = line.len(), "a gateway connection ended inside a request: not carried out");
                        line.clear();
                    }
                    Ok(_) if service.kind(&line) == Kind::WriteAfterChanges && due.changes.any() => {
                        held = Some(std::mem::take(&mut line));
                    }
                    Ok(_) => {
                        start(service, &line, &mut due, &mut out);
                        line.clear();
                    }
                }
            }
        }
    }
}

/// Start the request on `line`: answered now (into `out` when nothing is due before it), or
/// queued in `due`.
fn start<S: LineService + ?Sized>(service: &S, line: &[u8], due: &mut Due, out: &mut Vec<u8>) {
    let mut now = Vec::new();
    match service.answer_line(line, if due.is_empty() { out } else { &mut now }) {
        Some(later) => due.push(later, service.kind(line)),
        None if !now.is_empty() => due.push(Box::pin(std::future::ready(now)), Kind::Free),
        None => {}
    }
}

/// A connection's answers still due, in request order, and the writes and changes among them
/// whose work is not done yet. A write holds back further requests until the write itself is
/// done (the record registered or closed), not until its answer's turn, so a wait pipelined
/// before it does not hold the connection.
#[derive(Default)]
struct Due {
    queue: FuturesOrdered<Later>,
    /// Writes whose work is not done yet (their answers may still wait their turn).
    writes: Running,
    /// Changes whose work is not done yet.
    changes: Running,
}

/// Requests of one kind whose work is not done yet, and a wake-up as each is done.
#[derive(Default, Clone)]
struct Running {
    count: Arc<AtomicUsize>,
    done: Arc<tokio::sync::Notify>,
}

impl Running {
    /// `later`, counted here until it is done.
    fn track(&self, later: Later) -> Later {
        self.count.fetch_add(1, Ordering::Relaxed);
        let (count, done) = (self.count.clone(), self.done.clone());
        Box::pin(async move {
            let answer = later.await;
            count.fetch_sub(1, Ordering::Relaxed);
            done.notify_one();
            answer
        })
    }

    /// Whether any is not done yet.
    fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }
}

impl Due {
    fn push(&mut self, later: Later, kind: Kind) {
        let later = match kind {
            Kind::Free => later,
            Kind::Change => self.changes.track(later),
            Kind::Write | Kind::WriteAfterChanges => self.writes.track(later),
        };
        self.queue.push_back(later);
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        self.queue.next().await
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Read more of one line into `line`, up to a newline, the end of the stream, or a length of
/// `MAX_LINE + 1` bytes in all (longer ones are refused by the caller). Bytes read before a
/// cancellation stay in `line`, so a call can be cancelled and made again.
/// Whether the bytes a connection read and did not carry out (the part of a line read so far,
/// then what waits in the read buffer) end inside a request.
fn ends_inside_a_request(line: &[u8], buffered: &[u8]) -> bool {
    buffered.last().or(line.last()).is_some_and(|&b| b != b'\n')
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
    let mut limited = reader.take(room);
    limited.read_until(b'\n', line).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixStream;

    /// Answers from the request alone: `PONG` for `PING`, `ECHO <line>` for anything else, and
    /// for `SLOW <ms> <tag>` the answer `SLOW <tag>` after that long, so the order of answers
    /// shows. `WRITE <ms> <n>` sets a shared number after that long (a write), `CHANGE <ms> <n>`
    /// as well (a change), `AFTER <ms> <n>` too (a write after the changes before it), answering
    /// the number it found when it started; `READ` answers it at once. The second number counts
    /// requests dropped for their missing newline.
    #[derive(Default)]
    struct Echo(Arc<AtomicU64>, AtomicU64);

    impl LineService for Echo {
        fn kind(&self, line: &[u8]) -> Kind {
            match line.split(|b| *b == b' ').next() {
                Some(b"WRITE") => Kind::Write,
                Some(b"CHANGE") => Kind::Change,
                Some(b"AFTER") => Kind::WriteAfterChanges,
                _ => Kind::Free,
            }
        }

        fn answer_line(&self, line: &[u8], out: &mut Vec<u8>) -> Option<Later> {
            let text = String::from_utf8_lossy(line).trim().to_owned();
            if let Some((verb, rest)) = text.split_once(' ').filter(|(v, _)| ["WRITE", "CHANGE", "AFTER"].contains(v)) {
                let (ms, n) = rest.split_once(' ').unwrap_or((rest, "0"));
                let (ms, n): (u64, u64) = (ms.parse().unwrap_or(0), n.parse().unwrap_or(0));
                let shared = self.0.clone();
                let found = shared.load(Ordering::Relaxed);
                let answer = if verb == "AFTER" { format!("AFTER {found} {n}\n") } else { format!("WROTE {n}\n") };
                return Some(Box::pin(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    shared.store(n, Ordering::Relaxed);
                    answer.into_bytes()
                }));
            }
            if text == "READ" {
                out.extend_from_slice(format!("READ {}\n", self.0.load(Ordering::Relaxed)).as_bytes());
                return None;
            }
            if let Some(rest) = text.strip_prefix("SLOW ") {
                let (ms, tag) = rest.split_once(' ').unwrap_or((rest, ""));
                let ms: u64 = ms.parse().unwrap_or(0);
                let tag = tag.to_owned();
                return Some(Box::pin(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    format!("SLOW {tag}\n").into_bytes()
                }));
            }
            let answer = if text == "PING" { "PONG".to_owned() } else { format!("ECHO {text}") };
            out.extend_from_slice(answer.as_bytes());
            out.push(b'\n');
            None
        }

        fn refuse_long_line(&self) {}

        fn drop_unterminated_line(&self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection served by [`Echo`]: the gateway's end of the socket and the serving task.
    fn echo_connection() -> (UnixStream, tokio::task::JoinHandle<()>) {
        let (gateway, agent) = UnixStream::pair().unwrap();
        let served = tokio::spawn(async move {
            let (read, write) = agent.into_split();
            answer_requests(read, write, &Echo::default(), &CancellationToken::new()).await;
        });
        (gateway, served)
    }

    /// Read exactly `expected` from `gateway`, failing after a second.
    async fn expect_answers(gateway: &mut UnixStream, expected: &[u8], context: &str) {
        let mut got = vec![0u8; expected.len()];
        let read = tokio::time::timeout(std::time::Duration::from_secs(1), gateway.read_exact(&mut got)).await;
        assert!(read.is_ok(), "{context}: no answer within 1 s; expected {:?}", String::from_utf8_lossy(expected));
        read.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(expected), "{context}");
    }

    #[tokio::test]
    async fn every_complete_line_is_answered_wherever_the_bytes_are_split() {
        let requests: &[u8] = b"PING\nACQUIRE operator:a 2\nRELEASE domain:b\nPING\r\nbogus\nACQUIRE k\n";
        let answers: Vec<String> =
            ["PONG", "ECHO ACQUIRE operator:a 2", "ECHO RELEASE domain:b", "PONG", "ECHO bogus", "ECHO ACQUIRE k"]
                .iter()
                .map(|a| format!("{a}\n"))
                .collect();
        for split in 0..=requests.len() {
            let (mut gateway, served) = echo_connection();
            let (first, rest) = requests.split_at(split);
            let complete = first.iter().filter(|b| **b == b'\n').count();
            gateway.write_all(first).await.unwrap();
            let before = answers[..complete].concat();
            expect_answers(&mut gateway, before.as_bytes(), &format!("after the first {split} bytes")).await;
            gateway.write_all(rest).await.unwrap();
            let after = answers[complete..].concat();
            expect_answers(&mut gateway, after.as_bytes(), &format!("after the rest (split at {split})")).await;
            gateway.shutdown().await.unwrap();
            let mut tail = Vec::new();
            gateway.read_to_end(&mut tail).await.unwrap();
            assert!(tail.is_empty(), "split at {split}: unexpected answers {:?}", String::from_utf8_lossy(&tail));
            served.await.unwrap();
        }
    }

    /// A connection served by an [`Echo`] the test can look at afterwards.
    fn watched_echo_connection() -> (UnixStream, Arc<Echo>, tokio::task::JoinHandle<()>) {
        let (gateway, agent) = UnixStream::pair().unwrap();
        let echo = Arc::new(Echo::default());
        let served = tokio::spawn({
            let echo = echo.clone();
            async move {
                let (read, write) = agent.into_split();
                answer_requests(read, write, &*echo, &CancellationToken::new()).await;
            }
        });
        (gateway, echo, served)
    }

    #[tokio::test]
    async fn a_request_cut_short_by_the_end_of_the_connection_is_not_carried_out() {
        let (mut gateway, echo, served) = watched_echo_connection();
        // `WRITE 0 12` cut after its `1`: the complete line before it is answered, the rest not.
        gateway.write_all(b"PING\nWRITE 0 1").await.unwrap();
        gateway.shutdown().await.unwrap();
        let mut tail = Vec::new();
        gateway.read_to_end(&mut tail).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&tail), "PONG\n");
        served.await.unwrap();
        assert_eq!((echo.0.load(Ordering::Relaxed), echo.1.load(Ordering::Relaxed)), (0, 1), "written, dropped");
    }

    #[tokio::test]
    async fn a_request_cut_short_by_a_gateway_that_leaves_its_answers_unread_is_counted() {
        let (mut gateway, echo, served) = watched_echo_connection();
        gateway.write_all(b"PING\nWRITE 0 1").await.unwrap();
        // The answer waits unread when the gateway closes: the agent's read fails (a reset), not
        // an end of stream.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(gateway);
        tokio::time::timeout(std::time::Duration::from_secs(5), served).await.unwrap().unwrap();
        assert_eq!((echo.0.load(Ordering::Relaxed), echo.1.load(Ordering::Relaxed)), (0, 1), "written, dropped");
    }

    #[tokio::test]
    async fn pipelined_answers_keep_request_order_while_slow_ones_run_together() {
        let (mut gateway, served) = echo_connection();
        let t = std::time::Instant::now();
        // Three slow answers of 300 ms each, with quick ones between: together they take about
        // 300 ms, not 900, and every answer comes in the order of its request.
        gateway.write_all(b"SLOW 300 a\nPING\nSLOW 300 b\nx\nSLOW 300 c\nPING\n").await.unwrap();
        expect_answers(&mut gateway, b"SLOW a\nPONG\nSLOW b\nECHO x\nSLOW c\nPONG\n", "pipelined").await;
        assert!(t.elapsed() < std::time::Duration::from_millis(700), "took {:?}", t.elapsed());
        // A request after the slow ones is answered at once.
        gateway.write_all(b"PING\n").await.unwrap();
        expect_answers(&mut gateway, b"PONG\n", "after").await;
        // Closing the writing half still delivers what is due.
        gateway.write_all(b"SLOW 100 d\n").await.unwrap();
        gateway.shutdown().await.unwrap();
        let mut tail = Vec::new();
        gateway.read_to_end(&mut tail).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&tail), "SLOW d\n");
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_behind_a_write_sees_it_and_reads_run_together_again_after() {
        let (mut gateway, served) = echo_connection();
        let t = std::time::Instant::now();
        // The READ behind the WRITE waits for it; the slow answers after the second write run
        // together again.
        gateway.write_all(b"WRITE 100 7\nREAD\nWRITE 0 8\nSLOW 200 a\nSLOW 200 b\nREAD\n").await.unwrap();
        expect_answers(&mut gateway, b"WROTE 7\nREAD 7\nWROTE 8\nSLOW a\nSLOW b\nREAD 8\n", "behind a write").await;
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "took {:?}", t.elapsed());
        drop(gateway);
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_close_behind_reports_starts_when_they_are_done_and_reads_wait_for_it() {
        let (mut gateway, served) = echo_connection();
        // Two changes run together (about 200 ms, not 300); the AFTER starts once both are done
        // and finds the last one's number; the READ behind it sees the AFTER's; the SLOW before
        // the changes does not hold the AFTER back.
        let t = std::time::Instant::now();
        gateway.write_all(b"SLOW 600 a\nCHANGE 200 7\nCHANGE 100 3\nPING\nAFTER 0 8\nREAD\n").await.unwrap();
        expect_answers(&mut gateway, b"SLOW a\nWROTE 7\nWROTE 3\nPONG\nAFTER 7 8\nREAD 8\n", "after changes").await;
        assert!(t.elapsed() < std::time::Duration::from_millis(900), "took {:?}", t.elapsed());
        // With no change running, it starts at once.
        gateway.write_all(b"AFTER 0 9\nREAD\n").await.unwrap();
        expect_answers(&mut gateway, b"AFTER 8 9\nREAD 9\n", "no change before").await;
        drop(gateway);
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_behind_a_wait_holds_reading_only_until_it_is_done() {
        let (mut gateway, served) = echo_connection();
        let t = std::time::Instant::now();
        // The WRITE is done at once but answered after the first SLOW; the second SLOW, behind
        // the WRITE, is read as soon as the WRITE is done, so the two waits run together
        // (about 300 ms, not 600), and the READ still sees the write.
        gateway.write_all(b"SLOW 300 a\nWRITE 0 5\nSLOW 300 b\nREAD\n").await.unwrap();
        expect_answers(&mut gateway, b"SLOW a\nWROTE 5\nSLOW b\nREAD 5\n", "a write behind a wait").await;
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "took {:?}", t.elapsed());
        drop(gateway);
        served.await.unwrap();
    }

    #[tokio::test]
    async fn more_waiting_requests_than_may_be_in_flight_are_all_answered_in_order() {
        let (mut gateway, served) = echo_connection();
        let n = MAX_IN_FLIGHT * 3;
        let requests: String = (0..n).map(|i| format!("SLOW 20 {i}\n")).collect();
        let expected: String = (0..n).map(|i| format!("SLOW {i}\n")).collect();
        let writer = tokio::spawn(async move {
            gateway.write_all(requests.as_bytes()).await.unwrap();
            gateway.shutdown().await.unwrap();
            let mut got = Vec::new();
            gateway.read_to_end(&mut got).await.unwrap();
            got
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), expected);
        served.await.unwrap();
    }

    #[tokio::test]
    async fn answers_before_an_over_long_line_are_sent_before_the_connection_closes() {
        let (mut gateway, served) = echo_connection();
        let mut requests = b"PING\nSLOW 50 a\n".to_vec();
        requests.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        gateway.write_all(&requests).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(1), gateway.read_to_end(&mut got)).await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&got), "PONG\nSLOW a\nERR line too long\n");
        served.await.unwrap();
    }

    #[test]
    fn with_limits_and_dlrs_off_ping_is_still_checked() {
        let gateway = Gateway { limits: None, dlr: None, stats: GatewayStats::default() };
        let answer = |line: &[u8]| {
            let mut out = Vec::new();
            assert!(gateway.answer_line(line, &mut out).is_none());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(answer(b"PING"), "PONG\n");
        assert_eq!(answer(b"PING \r"), "PONG\n");
        assert_eq!(answer(b"PING extra"), "ERR PING takes no argument\n");
        assert!(answer(b"ACQUIRE k").contains("limits are off"));
        assert!(answer(b"RESOLVE c 1").contains("DLRs are off"));
    }

    #[test]
    fn a_tcp_address_must_be_loopback() {
        let mut s = GatewaySettings { tcp_listen: "127.0.0.1:7484".into(), ..GatewaySettings::default() };
        assert!(s.validate().is_ok());
        s.tcp_listen = "[::1]:7484".into();
        assert!(s.validate().is_ok());
        s.tcp_listen = "0.0.0.0:7484".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        s.tcp_listen = "localhost".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn busy_polling_defaults_to_50_us_and_refuses_more_than_10_ms() {
        let mut s: GatewaySettings = toml::from_str("").unwrap();
        assert_eq!(s.busy_poll(), Duration::from_micros(50));
        s.busy_poll_us = 0;
        assert!(s.validate().is_ok());
        s.busy_poll_us = 10_001;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("busy_poll_us"), "{err}");
    }
}
