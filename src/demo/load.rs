//! The demo's gateways: what each gateway node asks of its agent while the demo runs.
//!
//! Per node, three threads, all paced and all stopping on one token:
//! - **limits**: asks its agent's Unix socket (`ACQUIRE <key>`) for the shared key [`LIMIT_KEY`]
//!   at an uneven rate per node, well above the limit, so the nodes must share it by demand;
//! - **DLRs**: registers messages with its own agent, then hands each one's DLR to *another*
//!   node's agent (the "wrong" node), which finds the record on the bus; the outcome and the
//!   round trip are counted;
//! - **metrics**: sends StatsD timers and counters over UDP, keeping every timer value so the
//!   demo can set the p99 the dataset gives beside the exact one.
//!
//! A gateway whose agent is down (the demo kills one) pauses its calls, as a real gateway that
//! cannot reach its agent would; its log files keep growing ([`crate::demo`] writes them).

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::demo::cluster::Ports;
use crate::demo::http::HttpClient;
use crate::loggen::Rng;

/// The limit the demo's nodes share.
pub(crate) const LIMIT_KEY: &str = "operator:demo";
/// Its rate per second, cluster-wide.
pub(crate) const LIMIT_RATE: u64 = 1000;
/// The connector the demo's messages go through.
const CONNECTOR: &str = "smsc-demo";
/// The timer the gateways send: submit-to-DLR latency, in milliseconds.
pub(crate) const TIMER: &str = "dlr_latency";
/// The counter the gateways send: messages submitted.
pub(crate) const COUNTER: &str = "submitted";
/// A DLR is reported this long after its message was registered.
const DLR_AFTER: Duration = Duration::from_millis(150);
/// How long a gateway waits to hand in again a DLR answered `503` (try again), and how many
/// times it tries in all (docs/dlr-api.md: a restarted node answers 503 for 5 s, a node that
/// just died leaves misses unknown for a while).
const RETRY_AFTER: Duration = Duration::from_secs(1);
pub(crate) const TRIES: u32 = 20;

/// What one gateway node is doing, shared with the demo's orchestration.
pub(crate) struct Gateway {
    /// Whether its agent is up (the demo clears it while the agent is killed).
    pub(crate) up: AtomicBool,
    /// Limit decisions asked for, allowed and denied (as the gateway saw them).
    pub(crate) asked: AtomicU64,
    pub(crate) allowed: AtomicU64,
}

/// Counters of the DLR flow over all gateways.
#[derive(Default)]
pub(crate) struct DlrCounts {
    pub(crate) registered: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) owner_down: AtomicU64,
    pub(crate) duplicate: AtomicU64,
    pub(crate) not_found: AtomicU64,
    /// Answers `503` (try again), each handed in again later.
    pub(crate) retried: AtomicU64,
    /// Any other failure of a report, or a `503` at the last try.
    pub(crate) errors: AtomicU64,
    /// Registrations not answered `201` (sent to an agent as it was killed, say): no DLR follows.
    pub(crate) unregistered: AtomicU64,
    /// Round trips of reports at the gateway, in microseconds.
    pub(crate) round_trips_us: Mutex<Vec<u64>>,
}

/// A registered message waiting for its DLR.
struct Pending {
    id: u64,
    owner: usize,
    /// When it was registered, or answered `503` for a retry.
    at: Instant,
    /// Times it was handed in so far.
    tries: u32,
}

/// Everything the load threads share.
pub(crate) struct Load {
    pub(crate) gateways: Vec<Arc<Gateway>>,
    pub(crate) dlr: DlrCounts,
    pending: Mutex<std::collections::VecDeque<Pending>>,
    /// DLRs answered `503`, to hand in again after [`RETRY_AFTER`].
    retrying: Mutex<std::collections::VecDeque<Pending>>,
    next_id: AtomicU64,
    /// Every timer value sent, in milliseconds.
    pub(crate) timer_values: Mutex<Vec<u64>>,
}

impl Load {
    pub(crate) fn new(nodes: &[String]) -> Arc<Self> {
        let gateways = nodes
            .iter()
            .map(|_| {
                Arc::new(Gateway { up: AtomicBool::new(true), asked: AtomicU64::new(0), allowed: AtomicU64::new(0) })
            })
            .collect();
        Arc::new(Self {
            gateways,
            dlr: DlrCounts::default(),
            pending: Mutex::new(Default::default()),
            retrying: Mutex::new(Default::default()),
            // Start ids high enough that they print as 6+ hex digits.
            next_id: AtomicU64::new(0x10_0000),
            timer_values: Mutex::new(Vec::new()),
        })
    }

    /// Limit demand of node `i` (from 0), per second: uneven on purpose, and together (also
    /// without any one node) above [`LIMIT_RATE`].
    pub(crate) fn demand(i: usize) -> u64 {
        [1200, 700, 350, 500, 200, 900, 400, 300, 250][i % 9]
    }

    /// Start every thread; they stop when `stop` fires. `sockets[i]` is node `i`'s gateway socket.
    pub(crate) fn start(
        self: &Arc<Self>,
        ports: Ports,
        sockets: Vec<PathBuf>,
        stop: &CancellationToken,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate().take(self.gateways.len()) {
            let (load, stop2) = (self.clone(), stop.clone());
            threads.push(std::thread::spawn(move || load.limits(i, &socket, &stop2)));
            let (load, stop2) = (self.clone(), stop.clone());
            threads.push(std::thread::spawn(move || load.dlrs(i, ports, &stop2)));
            let (load, stop2) = (self.clone(), stop.clone());
            threads.push(std::thread::spawn(move || load.metrics(i, ports, &stop2)));
        }
        threads
    }

    fn limits(&self, i: usize, socket: &Path, stop: &CancellationToken) {
        let gw = &self.gateways[i];
        let request = format!("ACQUIRE {LIMIT_KEY}\n");
        let mut conn: Option<(BufReader<UnixStream>, UnixStream)> = None;
        let mut answer = String::new();
        paced(Self::demand(i), stop, || {
            if !gw.up.load(Ordering::Relaxed) {
                conn = None;
                return;
            }
            if conn.is_none() {
                conn = UnixStream::connect(socket).and_then(|s| Ok((BufReader::new(s.try_clone()?), s))).ok();
            }
            let Some((reader, writer)) = conn.as_mut() else { return };
            gw.asked.fetch_add(1, Ordering::Relaxed);
            answer.clear();
            if writer.write_all(request.as_bytes()).is_err() || reader.read_line(&mut answer).is_err() {
                conn = None;
                return;
            }
            if answer.starts_with("OK") {
                gw.allowed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    fn dlrs(&self, i: usize, ports: Ports, stop: &CancellationToken) {
        let n = self.gateways.len();
        let mut clients: Vec<HttpClient> = (1..=n).map(|k| HttpClient::new(ports.agent_http(k))).collect();
        paced(40, stop, || {
            if !self.gateways[i].up.load(Ordering::Relaxed) {
                return;
            }
            // Register one message with this node's agent.
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                r#"{{"connector":"{CONNECTOR}","msg_id":"{id:X}","destination":"+4915100{id}","account":"acme","gateway_ref":"ref-{id}"}}"#
            );
            match clients[i].post("/v1/dlr/register", &body) {
                Ok((201, _)) => {
                    self.dlr.registered.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut p) = self.pending.lock() {
                        p.push_back(Pending { id, owner: i, at: Instant::now(), tries: 0 });
                    }
                }
                _ => {
                    self.dlr.unregistered.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Hand the DLRs that are due to a node other than their owner (its SMSC connection
            // happened to be elsewhere), one that is up.
            let mut due: Vec<Pending> = Vec::new();
            for (queue, after) in [(&self.pending, DLR_AFTER), (&self.retrying, RETRY_AFTER)] {
                let Ok(mut p) = queue.lock() else { return };
                while p.front().is_some_and(|m| m.at.elapsed() >= after) && due.len() < 4 {
                    due.extend(p.pop_front());
                }
            }
            for mut m in due {
                let Some(at) = (1..n).map(|k| (m.owner + k) % n).find(|&k| self.gateways[k].up.load(Ordering::Relaxed))
                else {
                    continue;
                };
                // The SMSC writes the id in hex in submit_sm_resp and in decimal in its DLRs; the
                // connector's id formats make both the same message.
                let body = format!(r#"{{"connector":"{CONNECTOR}","msg_id":"{}","status":"DELIVRD"}}"#, m.id);
                let started = Instant::now();
                let answer = clients[at].post("/v1/dlr/report", &body);
                let took = started.elapsed().as_micros() as u64;
                m.tries += 1;
                let counter = match &answer {
                    Ok((200, b)) if b.contains(r#""outcome":"delivered""#) => &self.dlr.delivered,
                    Ok((200, b)) if b.contains(r#""outcome":"owner_down""#) => &self.dlr.owner_down,
                    Ok((200, b)) if b.contains(r#""outcome":"duplicate""#) => &self.dlr.duplicate,
                    Ok((404, _)) => &self.dlr.not_found,
                    // No answer (the agent was killed while it had the report, say) is handed in
                    // again as a 503 is: if that node took it, the retry is a `duplicate`.
                    Ok((503, _)) | Err(_) if m.tries < TRIES => {
                        m.at = Instant::now();
                        if let Ok(mut r) = self.retrying.lock() {
                            r.push_back(m);
                        }
                        &self.dlr.retried
                    }
                    _ => &self.dlr.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let (Ok((200, _)), Ok(mut rt)) = (&answer, self.dlr.round_trips_us.lock()) {
                    rt.push(took);
                }
            }
        });
    }

    fn metrics(&self, i: usize, ports: Ports, stop: &CancellationToken) {
        let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else { return };
        let target = ports.statsd(i + 1);
        let mut rng = Rng::new(i as u64 + 7);
        let operators = ["vodafone-de", "telekom-de", "orange-fr"];
        paced(200, stop, || {
            if !self.gateways[i].up.load(Ordering::Relaxed) {
                return;
            }
            // Submit-to-DLR latency: mostly 20-60 ms, one in fifty slow (200-1000 ms).
            let ms = if rng.below(50) == 0 { 200 + u64::from(rng.below(800)) } else { 20 + u64::from(rng.below(40)) };
            let op = rng.pick(&operators);
            let line = format!("{TIMER}:{ms}|ms|#operator:{op}\n{COUNTER}:1|c|#operator:{op}");
            if socket.send_to(line.as_bytes(), target).is_ok() {
                if let Ok(mut v) = self.timer_values.lock() {
                    v.push(ms);
                }
            }
        });
    }
}

/// Call `f` `per_second` times a second until `stop` fires (catching up after a stall, at most
/// one second's worth at once).
fn paced(per_second: u64, stop: &CancellationToken, mut f: impl FnMut()) {
    let started = Instant::now();
    let mut done: u64 = 0;
    while !stop.is_cancelled() {
        let due = (started.elapsed().as_secs_f64() * per_second as f64) as u64;
        let mut burst = 0;
        while done < due && burst < per_second && !stop.is_cancelled() {
            f();
            done += 1;
            burst += 1;
        }
        done = done.max(due.saturating_sub(per_second));
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The `q` quantile (0..=1) of `values` (sorted here), by the nearest-rank rule.
pub(crate) fn quantile(values: &mut [u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}
