//! The health and metrics endpoint every long-running Switchboard process serves.
//!
//! [`serve`] listens on one address and answers:
//! - `GET /health`: a JSON body whose `status` is `ok` (200), `degraded` (200: the process does
//!   its job, but something needs attention) or `failing` (503: it cannot do its job), with the
//!   reasons in `problems` (keepalived- and load-balancer-style checks use the code, monitoring
//!   reads `status`);
//! - `GET /metrics`: the Prometheus text exposition format.
//!
//! Both add what every process shares: `tls` in the health body, and the bus's refusals and TLS
//! gauge ([`crate::refusals::render`]) in the metrics.
//!
//! Every route is guarded by [`Access`]: with a token, every request but `/health` must carry it
//! (and an address that is not loopback needs one); at most [`MAX_CONNECTIONS`] are open at once,
//! and one that stalls for [`STALL_TIMEOUT`] is closed.
//!
//! The process supplies both through a [`Report`] function called per request; [`Metrics`]
//! writes the exposition format (`switchboard_<name>_<unit>_total` for counters, bounded labels).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::busy_poll::BusyPoll;

/// A process's health: what is wrong, worst first, and the details of its state.
#[derive(Debug, Default)]
pub struct Health {
    /// Reasons it cannot do its job (`/health` answers 503 `failing`).
    pub failing: Vec<String>,
    /// Reasons it does its job but needs attention (200 `degraded`).
    pub degraded: Vec<String>,
    /// Further fields of the body (a JSON object).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Health {
    /// `ok`, `degraded` or `failing`.
    pub fn status(&self) -> &'static str {
        if !self.failing.is_empty() {
            "failing"
        } else if !self.degraded.is_empty() {
            "degraded"
        } else {
            "ok"
        }
    }

    /// The `/health` body: `status`, `problems` (failing reasons first), then the details.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("status".into(), self.status().into());
        let problems: Vec<&String> = self.failing.iter().chain(&self.degraded).collect();
        body.insert("problems".into(), serde_json::json!(problems));
        for (k, v) in &self.details {
            body.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(body)
    }

    /// The health gauge of `/metrics`: 0 ok, 1 degraded, 2 failing.
    pub fn gauge(&self, m: &mut Metrics) {
        let level = match self.status() {
            "ok" => 0.0,
            "degraded" => 1.0,
            _ => 2.0,
        };
        m.gauge("switchboard_health_status", "Health: 0 ok, 1 degraded, 2 failing (see /health).", level);
    }
}

/// What a process reports about itself.
pub trait Report: Send + Sync + 'static {
    /// Its health and state.
    fn health(&self) -> Health;
    /// Its metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Its status document for `switchboard status` and the status page, made from `health`
    /// (what [`health_of`] says).
    fn status(&self, health: &Health) -> crate::status::ProcessStatus;
}

/// A process's full health: its own, a vital thread's failure first, and whether it runs TLS.
pub fn health_of(r: &dyn Report) -> Health {
    let mut h = r.health();
    h.details.insert("tls".into(), crate::refusals::tls().into());
    if let Some(why) = crate::vital::failed() {
        h.failing.insert(0, why);
    }
    h
}

/// Most series of one metric in an exposition: a metric labelled by something peers or
/// gateways choose (a limit key, a stream) keeps its largest values and counts the rest in
/// `switchboard_metrics_series_left_out{metric}`, so a flood of keys cannot flood Prometheus.
pub const MAX_SERIES_PER_METRIC: usize = 10_000;
/// The metric that counts series left out.
const LEFT_OUT: &str = "switchboard_metrics_series_left_out";

/// Builds a Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    out: String,
    /// Series left out per metric.
    left_out: Vec<(String, usize)>,
}

impl Metrics {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    /// A gauge with one series per label set.
    pub fn gauge_series<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
    ) -> &mut Self {
        self.series(name, "gauge", help, series)
    }

    /// A counter with one series per label set.
    pub fn counter_series<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
    ) -> &mut Self {
        self.series(name, "counter", help, series)
    }

    fn series<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        series: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>,
    ) -> &mut Self {
        self.header(name, kind, help);
        let mut series: Vec<_> = series.into_iter().collect();
        if series.len() > MAX_SERIES_PER_METRIC {
            // Keep the largest values (the busiest keys).
            series.select_nth_unstable_by(MAX_SERIES_PER_METRIC - 1, |a, b| b.1.total_cmp(&a.1));
            self.left_out.push((name.to_owned(), series.len() - MAX_SERIES_PER_METRIC));
            series.truncate(MAX_SERIES_PER_METRIC);
        }
        for (labels, value) in series {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
        self
    }

    /// The exposition text.
    pub fn finish(&mut self) -> String {
        let left_out = std::mem::take(&mut self.left_out);
        if !left_out.is_empty() {
            self.left_out_family(left_out.iter().map(|(m, n)| (vec![("metric", m.clone())], *n as f64)));
        }
        std::mem::take(&mut self.out)
    }

    fn left_out_family<'a>(&mut self, series: impl IntoIterator<Item = (Vec<(&'a str, String)>, f64)>) {
        self.series(
            LEFT_OUT,
            "gauge",
            &format!(
                "Series of a metric left out of this exposition (at most {MAX_SERIES_PER_METRIC} per metric, the largest values kept)."
            ),
            series,
        );
    }
}

async fn health(State(r): State<Arc<dyn Report>>) -> impl IntoResponse {
    let h = health_of(&*r);
    let code = if h.failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], h.body().to_string())
}

async fn metrics(State(r): State<Arc<dyn Report>>) -> impl IntoResponse {
    let mut text = r.metrics();
    let mut bus = Metrics::new();
    crate::refusals::render(&mut bus);
    crate::connect_failures::render(&mut bus);
    crate::udp::render(&mut bus);
    render_head_refusals(&mut bus);
    // The family is always there (without series when nothing was left out), so dashboards can
    // rely on it.
    if !text.contains(&format!("# TYPE {LEFT_OUT} ")) {
        bus.left_out_family([]);
    }
    text.push_str(&bus.finish());
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// A request head hyper refused itself, answering before any route saw it (and closing the
/// connection), counted in `switchboard_http_refused_requests_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadRefusal {
    /// `400`: not an HTTP/1 request head (a bad method, version, target or header).
    Malformed,
    /// `431`: the head is over hyper's limits (about 400 KiB, 100 header fields), or its
    /// `Content-Length` is one hyper keeps for itself.
    TooLarge,
    /// `414`: the request target is 65,535 bytes or longer.
    TargetTooLong,
}

/// Counts of [`HeadRefusal`]s, in the order of [`HeadRefusal::ALL`].
static HEAD_REFUSALS: [std::sync::atomic::AtomicU64; 3] = [const { std::sync::atomic::AtomicU64::new(0) }; 3];

impl HeadRefusal {
    const ALL: [HeadRefusal; 3] = [Self::Malformed, Self::TooLarge, Self::TargetTooLong];

    /// The refusal an ended connection's error stands for, if hyper refused a head.
    fn of(e: &hyper::Error) -> Option<Self> {
        if !e.is_parse() {
            return None;
        }
        if !e.is_parse_too_large() {
            return Some(Self::Malformed);
        }
        // hyper tells the two kinds of "too large" apart only by their text (pinned by
        // `heads_hyper_refuses_are_counted_by_reason`).
        Some(if e.to_string().contains("URI too long") { Self::TargetTooLong } else { Self::TooLarge })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_head",
            Self::TooLarge => "head_too_large",
            Self::TargetTooLong => "target_too_long",
        }
    }

    fn count(self) {
        HEAD_REFUSALS[self as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn counted(self) -> u64 {
        HEAD_REFUSALS[self as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `switchboard_http_refused_requests_total{reason}`: request heads refused before a route saw them.
fn render_head_refusals(m: &mut Metrics) {
    m.counter_series(
        "switchboard_http_refused_requests_total",
        "HTTP requests refused before any route saw them, by reason: malformed_head (400), \
         head_too_large (431), target_too_long (414).",
        HeadRefusal::ALL.iter().map(|r| (vec![("reason", r.as_str().to_owned())], r.counted() as f64)),
    );
}

/// Most connections an HTTP API holds open at once; more wait in the kernel's backlog until one
/// closes.
pub const MAX_CONNECTIONS: usize = 256;

/// How long an HTTP connection may stall before it is closed: to send a request's head (counted
/// from the connection's start or the end of the previous answer, so an idle keep-alive
/// connection closes after this long), and while an answer waits for the client to read it.
/// A route that reads a body bounds that itself (the agent's: `agent::body_limit`). With every slot held by clients that send slowly or
/// not at all, a new connection waits in the backlog at most about this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may use a process's HTTP API.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// When set, every request but `GET /health` must carry `Authorization: Bearer <token>`.
    /// Required on an address that is not loopback.
    pub token: Option<String>,
}

impl Access {
    /// Refuse to serve a non-loopback address without a token.
    pub fn check(&self, addr: &SocketAddr, setting: &str) -> Result<(), String> {
        if !addr.ip().is_loopback() && self.token.as_deref().is_none_or(|t| t.trim().is_empty()) {
            return Err(format!(
                "{setting} = {addr} is not a loopback address: set http_token too, not blank (every request \
                 then needs `Authorization: Bearer <token>`; docs/security.md)"
            ));
        }
        Ok(())
    }
}

/// Check an `http_listen` setting (`setting` names it in errors) and its token: empty (no API),
/// or an address, loopback unless `token` is set.
pub fn check_listen(listen: &str, token: Option<&str>, setting: &str) -> Result<(), String> {
    // A header carries no spaces at either end of a value: such a token could never be matched.
    if let Some(t) = token.filter(|t| !t.is_empty() && t.trim() != *t) {
        let why = if t.trim().is_empty() { "is blank" } else { "has spaces at either end" };
        return Err(format!(
            "the http_token beside {setting} {why}: no request could send it (an HTTP header drops them); \
             use a token without spaces, or \"\" for none"
        ));
    }
    if listen.is_empty() {
        return Ok(());
    }
    let addr = listen
        .parse::<SocketAddr>()
        .map_err(|_| format!("{setting} {listen:?} is not an address like 127.0.0.1:7480"))?;
    Access { token: token.map(str::to_owned) }.check(&addr, setting)
}

/// Compare without stopping at the first difference, so timing says nothing of the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(token): State<Arc<str>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // The scheme is case-insensitive (RFC 9110): `bearer` and `BEARER` are `Bearer`.
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token)
    });
    // A browser opening the status page cannot set a header: the page takes `?token=`.
    let in_query = req.uri().path() == "/status"
        && req.uri().query().is_some_and(|q| {
            q.split('&').any(|kv| kv.strip_prefix("token=").is_some_and(|t| same(t.as_bytes(), token.as_bytes())))
        });
    let allowed = req.uri().path() == "/health" || given.is_some_and(|t| same(t.as_bytes(), token.as_bytes()));
    if allowed || in_query {
        return next.run(req).await;
    }
    let body = serde_json::json!({ "error": "this API needs Authorization: Bearer <http_token>" }).to_string();
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer"), (header::CONTENT_TYPE, "application/json")], body)
        .into_response()
}

/// A TCP listener that holds at most [`MAX_CONNECTIONS`] connections: each accepted one keeps a
/// permit until it closes.
struct Capped {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
    /// Each connection's busy-polling budget ([`crate::busy_poll`]).
    busy_poll: Duration,
    /// See [`STALL_TIMEOUT`].
    stall: Duration,
}

/// A connection of [`Capped`], with its permit; a write that makes no progress for the stall
/// timeout fails (a client that does not read its answers gives its slot back).
struct CappedIo {
    io: BusyPoll<tokio::net::TcpStream>,
    _permit: tokio::sync::OwnedSemaphorePermit,
    stall: Duration,
    /// Armed while a write waits for the client to read.
    write_stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl CappedIo {
    /// Pass a write's outcome on, failing it once writes have waited for the stall timeout.
    fn bound_write<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        written: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        if written.is_ready() {
            self.write_stalled = None;
            return written;
        }
        let stall = self.stall;
        let sleep = self.write_stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its answer",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl Capped {
    async fn accept(&mut self) -> CappedIo {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed; should it be, accept nothing more.
            Err(_) => std::future::pending().await,
        };
        // axum's accept retries what fails (a connection reset in the backlog, too many open
        // files) after a pause, logging it.
        let (io, _) = axum::serve::Listener::accept(&mut self.inner).await;
        // Answers leave at once: with Nagle's algorithm an answer written in two parts waits
        // for the client's delayed ACK (40 ms) before its second part.
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        CappedIo { io: BusyPoll::new(io, self.busy_poll), _permit: permit, stall: self.stall, write_stalled: None }
    }
}

impl tokio::io::AsyncRead for CappedIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CappedIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.bound_write(cx, written)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.bound_write(cx, flushed)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.bound_write(cx, written)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Bind `addr` and serve `/health`, `/metrics` and the routes of `extra` until `cancel` fires,
/// to whom `access` allows, on at most [`MAX_CONNECTIONS`] connections at once, each reading
/// with a busy-polling budget of `busy_poll` ([`crate::busy_poll`]; zero for none). Returns the
/// bound address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    access: &Access,
    report: Arc<dyn Report>,
    extra: Router,
    busy_poll: Duration,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::from_std(bind(addr, access)?)?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(run(listener, access.clone(), report, extra, busy_poll, cancel));
    Ok((bound, task))
}

/// Bind `addr` for [`run`], if `access` allows serving there.
pub fn bind(addr: SocketAddr, access: &Access) -> std::io::Result<std::net::TcpListener> {
    access.check(&addr, "http_listen").map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    // Said once here: a collector serves its starting `/health` on the listener, then the full one.
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%bound, "health and metrics on http://{bound}/health and /metrics");
    Ok(listener)
}

/// A request body that must be one JSON object of type `T`; the error names `shape`, the form
/// expected. serde would also read a struct from an array of its fields (`["k", 1]`): only the
/// documented object is taken.
pub fn json_object<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, String> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(format!("expected {shape}: the body is not a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| format!("expected {shape}: {e}"))
}

/// An unknown path: `404` with a JSON error, as every other error of these APIs.
async fn no_such_path(uri: axum::http::Uri) -> Response {
    let error = format!("no such endpoint: {}", uri.path());
    (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// A known path asked with a method it does not take: `405` with a JSON error.
async fn no_such_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let error = format!("{method} is not allowed on {}", uri.path());
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// Serve as [`serve`] does on `listener` (from [`bind`]), on the runtime this runs on, until
/// `cancel` fires.
pub async fn run(
    inner: tokio::net::TcpListener,
    access: Access,
    report: Arc<dyn Report>,
    extra: Router,
    busy_poll: Duration,
    cancel: CancellationToken,
) {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(report)
        .merge(extra)
        .fallback(no_such_path)
        .method_not_allowed_fallback(no_such_method);
    if let Some(token) = access.token.as_deref().filter(|t| !t.is_empty()) {
        app = app.layer(axum::middleware::from_fn_with_state(Arc::<str>::from(token), require_token));
    }
    serve_connections(inner, app, busy_poll, STALL_TIMEOUT, cancel).await;
}

/// Accept connections on `inner` (at most [`MAX_CONNECTIONS`] at once) and answer them with
/// `app`, closing each that stalls for `stall` ([`STALL_TIMEOUT`]); once `cancel` fires, accept no
/// more, let each connection finish the request it is in, and return when all are closed.
async fn serve_connections(
    inner: tokio::net::TcpListener,
    app: Router,
    busy_poll: Duration,
    stall: Duration,
    cancel: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut listener = Capped { inner, permits, busy_poll, stall };
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let io = tokio::select! {
            io = listener.accept() => io,
            _ = cancel.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(stall);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // A client that stalled, went away or sent what is not HTTP: nothing to tell anyone
            // but a debugging operator, and a count of the heads hyper refused.
            if let Err(e) = served {
                if let Some(refusal) = HeadRefusal::of(&e) {
                    refusal.count();
                }
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serve `/health` (a short answer) and `/big` (1 MiB) with a stall timeout of `stall`.
    async fn stall_server(stall: Duration) -> (SocketAddr, CancellationToken) {
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let app =
            Router::new().route("/health", get(|| async { "ok" })).route("/big", get(|| async { vec![b'x'; 1 << 20] }));
        let cancel = CancellationToken::new();
        tokio::spawn(serve_connections(inner, app, Duration::ZERO, stall, cancel.clone()));
        (addr, cancel)
    }

    /// The status code of `GET /health` on a new connection, or `None` when no answer came in `within`.
    async fn health_within(addr: SocketAddr, within: Duration) -> Option<u16> {
        let asked = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).await.ok()?;
            text.split_whitespace().nth(1)?.parse().ok()
        };
        tokio::time::timeout(within, asked).await.ok().flatten()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_that_stall_give_their_slots_back() {
        // Long enough that opening every slot's connection on a loaded host (hundreds of ms)
        // ends well before the first of them stalls out.
        let stall = Duration::from_millis(2000);
        let (addr, cancel) = stall_server(stall).await;
        assert_eq!(health_within(addr, Duration::from_secs(2)).await, Some(200));

        // Every slot held: half by connections that send nothing, half by ones sending a
        // request head a byte at a time (slowloris).
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS / 2 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (connected, all_in) = tokio::sync::oneshot::channel();
        let slow = tokio::spawn(async move {
            let mut slow = Vec::new();
            for _ in 0..MAX_CONNECTIONS / 2 {
                slow.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            let _ = connected.send(());
            // At most 100 rounds of 100 ms: far past the stall timeout.
            for i in 0..100 {
                for s in &mut slow {
                    let _ = s.write_all(&[b"GET /health HTTP/1.1\r\n"[i % 22]]).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        all_in.await.unwrap();
        // The server accepts what is connected before a later connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Past the cap, a request waits in the backlog...
        assert_eq!(health_within(addr, Duration::from_millis(300)).await, None, "a connection past the cap was served");
        // ...until the stalled connections are closed, a stall timeout after they opened.
        let started = std::time::Instant::now();
        assert_eq!(health_within(addr, Duration::from_secs(5)).await, Some(200));
        assert!(started.elapsed() < stall + Duration::from_secs(2), "{:?}", started.elapsed());
        slow.abort();
        drop(idle);

        // A client that asks and never reads: its connection is closed before every answer is
        // written (50 MiB of answers are far past the socket buffers).
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..50 {
            s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        }
        tokio::time::sleep(stall * 3).await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let read_all = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(10), read_all).await.is_ok(), "the connection stayed open");
        assert!(got < 50 << 20, "every answer was written: {got} bytes");
        cancel.cancel();
    }

    /// The status line hyper answers `head` with on a new connection.
    async fn answer_to(addr: SocketAddr, head: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head).await.unwrap();
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut text)).await;
        String::from_utf8_lossy(&text).lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heads_hyper_refuses_are_counted_by_reason() {
        let (addr, cancel) = stall_server(Duration::from_secs(5)).await;
        let before = HeadRefusal::ALL.map(HeadRefusal::counted);
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        let many_fields: String = (0..150).map(|i| format!("X-F{i}: v\r\n")).collect();
        let many_fields = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_fields}\r\n");
        let cases: [(&[u8], &str, HeadRefusal); 3] = [
            (b"NOT HTTP AT ALL\r\n\r\n", "HTTP/1.1 400", HeadRefusal::Malformed),
            (many_fields.as_bytes(), "HTTP/1.1 431", HeadRefusal::TooLarge),
            (long_target.as_bytes(), "HTTP/1.1 414", HeadRefusal::TargetTooLong),
        ];
        for (head, status, refusal) in cases {
            assert!(answer_to(addr, head).await.starts_with(status), "{refusal:?}");
            // The connection's task counts after the answer is written: wait for it (bounded).
            let started = std::time::Instant::now();
            while refusal.counted() <= before[refusal as usize] && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(refusal.counted() > before[refusal as usize], "{refusal:?} not counted");
        }
        let mut m = Metrics::new();
        render_head_refusals(&mut m);
        let text = m.finish();
        for r in HeadRefusal::ALL {
            let line = format!("switchboard_http_refused_requests_total{{reason=\"{}\"}} ", r.as_str());
            assert!(text.contains(&line), "{text}");
        }
        cancel.cancel();
    }

    #[test]
    fn a_flood_of_label_sets_keeps_the_largest_and_counts_the_rest() {
        let mut m = Metrics::new();
        let keys: Vec<String> = (0..50_000).map(|i| format!("acct:{i}")).collect();
        m.counter_series(
            "t_units_total",
            "Units.",
            keys.iter().enumerate().map(|(i, k)| (vec![("key", k.clone())], i as f64)),
        );
        let text = m.finish();
        let series = text.lines().filter(|l| l.starts_with("t_units_total{")).count();
        assert_eq!(series, MAX_SERIES_PER_METRIC);
        assert!(text.contains("t_units_total{key=\"acct:49999\"} 49999"), "the largest value is kept");
        assert!(!text.contains("t_units_total{key=\"acct:0\"}"), "the smallest is left out");
        assert!(
            text.contains("switchboard_metrics_series_left_out{metric=\"t_units_total\"} 40000"),
            "{}",
            &text[text.len() - 400..]
        );
    }
}
