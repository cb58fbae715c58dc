//! The cluster at a glance: every process's status document, and the view assembled from them.
//!
//! Every long-running process answers the queryable `<prefix>/status/<role>/<name>` with a
//! [`ProcessStatus`]: its health and problems, what it sees alive and saw leave, and its part of
//! the cluster (an agent's sources, limit keys and DLR records; a collector's role, commits and
//! streams). Rates in it are per second over the process's last one-second sample ([`Rates`]).
//! [`fetch`] asks all of them and the liveliness tokens at once; [`cluster::assemble`] turns
//! the answers into one [`cluster::ClusterStatus`] with the problems first, which
//! `switchboard status` prints ([`text`]) and every process's `/status` page shows ([`page`]).
//! The documents are described in `docs/protocol.md` ("Status").

pub mod cluster;
pub mod page;
pub mod text;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::Session;

use crate::keys::{KeySpace, Role};
use crate::membership::Membership;
use crate::session::SessionError;

/// Version of the status documents.
pub const STATUS_VERSION: u32 = 1;
/// The largest status document taken; a larger answer is left out (and named).
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;
/// Processes taken from one fetch, at most.
pub const MAX_PROCESSES: usize = 10_000;
/// Bytes of answers taken from one fetch, at most (further answers are left out and named).
pub const MAX_FETCH_BYTES: usize = 64 << 20;
/// Limit keys one node lists, at most (the busiest).
pub const MAX_KEYS_PER_NODE: usize = 1000;

/// One process's answer on `<prefix>/status/<role>/<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Always [`STATUS_VERSION`].
    pub version: u32,
    /// `node` (an agent) or `collector`.
    pub role: String,
    /// Its name on the bus.
    pub name: String,
    /// Its software version.
    pub software: String,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// When this document was made, ms since the Unix epoch.
    pub at_ms: u64,
    /// `ok`, `degraded` or `failing`, as its `/health` says.
    pub health: String,
    /// Why it cannot do its job (its `/health` is `failing`).
    #[serde(default)]
    pub failing: Vec<String>,
    /// What needs attention although it does its job.
    #[serde(default)]
    pub degraded: Vec<String>,
    /// Whether it runs with mutual TLS.
    #[serde(default)]
    pub tls: bool,
    /// The bus endpoints others reach it at (agents remember them: [`crate::config::PEERS_FILE`]).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The processes it sees alive, as `<role>/<name>`.
    #[serde(default)]
    pub live: Vec<String>,
    /// Processes it saw leave and not come back, with when.
    #[serde(default)]
    pub departed: Vec<Departed>,
    /// An agent's part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeStatus>,
    /// A collector's part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorStatus>,
}

/// A process seen leaving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    /// `<role>/<name>`.
    pub member: String,
    /// When its liveliness token went, ms since the Unix epoch.
    pub at_ms: u64,
}

/// An agent's part of its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Whether it serves limits (`[limits] enabled`); a document without the field is of a
    /// node that does.
    #[serde(default = "serves_limits_by_default")]
    pub serves_limits: bool,
    /// The limits revision it applies (none yet: `null`).
    #[serde(default)]
    pub limits_revision: Option<u64>,
    /// A digest of the limits it applies ([`crate::limits::revision::Revision::digest`]): two
    /// nodes on different revision numbers may apply the same limits.
    #[serde(default)]
    pub limits_digest: Option<String>,
    /// The sources it tails.
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    /// Limit keys in use on it, the busiest first (at most [`MAX_KEYS_PER_NODE`]).
    #[serde(default)]
    pub limits: Vec<KeyStatus>,
    /// Its DLR records, when the DLR index is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlr: Option<DlrStatus>,
}

pub(crate) fn serves_limits_by_default() -> bool {
    true
}

/// One tailed source (its stream is `<node>/log/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The source's (and stream's) name.
    pub name: String,
    /// Next sequence number: lines journaled so far.
    pub head: u64,
    /// Lines the collectors acknowledged (committed) so far.
    pub acked: u64,
    /// Age of its oldest line not yet committed, in seconds (0 when none).
    pub lag_seconds: f64,
    /// Lines read per second.
    pub lines_per_s: f64,
}

/// One limit key in use on a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// The concrete key.
    pub key: String,
    /// The limit that applies (its key or pattern).
    pub limit: String,
    /// A rate limit's cluster-wide rate, per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// A concurrency limit's cluster-wide slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u64>,
    /// Slots held on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    /// This node's share of the limit (a fraction).
    pub share: f64,
    /// Units allowed per second.
    pub allowed_per_s: f64,
    /// Units denied per second.
    pub denied_per_s: f64,
}

/// A node's DLR records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DlrStatus {
    /// Records held, own and copies (approximate).
    pub records: u64,
    /// Open records this node owns, as of `counted_at_ms`.
    #[serde(default)]
    pub own_open: Option<u64>,
    /// Copies of other nodes' records held, as of `counted_at_ms`.
    #[serde(default)]
    pub copies: Option<u64>,
    /// Submission time of the oldest open own record, ms since the Unix epoch.
    #[serde(default)]
    pub oldest_open_ms: Option<u64>,
    /// When the records were last counted (a pass over the store after start, then after they changed).
    #[serde(default)]
    pub counted_at_ms: Option<u64>,
    /// Lookups (resolves and reports) this node's gateway made per second.
    pub lookups_per_s: f64,
    /// Of those, per second, for ids no node knows.
    pub not_found_per_s: f64,
    /// Reports waiting for this node's gateway.
    pub inbox: u64,
    /// Changes of own records waiting for their replicas.
    pub replica_queue: u64,
}

/// A collector's part of its status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectorStatus {
    /// `leader` (writes the dataset) or `standby`.
    pub role: String,
    /// The epoch it writes under, while leading.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The writer of the newest claim it knows.
    #[serde(default)]
    pub leader: Option<String>,
    /// Seconds since its last commit.
    #[serde(default)]
    pub last_commit_age_s: Option<f64>,
    /// The dataset store's last error, until an operation succeeds again.
    #[serde(default)]
    pub store_error: Option<String>,
    /// Partition files open.
    pub open_files: u64,
    /// Rows taken into its open files per second (committed with the file, at the next commit).
    pub rows_per_s: f64,
    /// Its `max_file_age_ms` in seconds: how long a record may wait for its file's commit.
    #[serde(default)]
    pub max_file_age_s: Option<f64>,
    /// Every stream it writes.
    #[serde(default)]
    pub streams: Vec<StreamStatus>,
}

/// One stream as its collector sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    /// The node.
    pub node: String,
    /// The stream under the node, e.g. `log/app`.
    pub stream: String,
    /// Committed contiguous prefix: the next sequence number to commit.
    pub committed: u64,
    /// Records between the committed prefix and the agent's last head.
    pub lag_records: u64,
    /// Age of the oldest record not committed (since its agent announced it), in seconds.
    pub lag_seconds: f64,
    /// Records committed per second.
    pub committed_per_s: f64,
}

impl ProcessStatus {
    /// A document for `role`/`name` made now, with the process's health.
    pub fn new(role: Role, name: &str, started_at_ms: u64, health: &crate::http::Health) -> Self {
        Self {
            version: STATUS_VERSION,
            role: role.as_str().to_owned(),
            name: name.to_owned(),
            software: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms,
            at_ms: now_ms(),
            health: health.status().to_owned(),
            failing: health.failing.clone(),
            degraded: health.degraded.clone(),
            tls: crate::refusals::tls(),
            endpoints: ENDPOINTS.read().map(|e| e.clone()).unwrap_or_default(),
            ..Self::default()
        }
    }

    /// Fill `live` and `departed` from `membership`.
    pub fn with_membership(mut self, membership: &Membership) -> Self {
        self.live = membership.live().iter().map(|m| format!("{}/{}", m.role.as_str(), m.name)).collect();
        self.departed = membership
            .departed()
            .into_iter()
            .map(|(m, at_ms)| Departed { member: format!("{}/{}", m.role.as_str(), m.name), at_ms })
            .collect();
        self
    }
}

/// The endpoints this process's status documents name (set when it joins the bus).
static ENDPOINTS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Set the endpoints this process's status documents name.
pub(crate) fn set_endpoints(endpoints: Vec<String>) {
    if let Ok(mut e) = ENDPOINTS.write() {
        *e = endpoints;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Per-second rates of running counts, each over the samples of the last [`Rates::window`]: a
/// count that moves in steps (a collector's watermarks, one step per committed file) reads as
/// its average over the window, not as 0 between steps and a burst at each.
#[derive(Debug)]
pub struct Rates {
    window: Duration,
    history: HashMap<String, std::collections::VecDeque<(Instant, u64)>>,
    rates: HashMap<String, f64>,
    /// Counts that start at 0 when they first appear (a limit key's decisions): one first seen
    /// in a sample was 0 at the sample before, so what it counted in between is in its rate.
    from_zero: fn(&str) -> bool,
    /// When the last sample was taken.
    last: Option<Instant>,
}

impl Default for Rates {
    fn default() -> Self {
        Self::over(Duration::from_secs(10))
    }
}

impl Rates {
    /// Rates over the samples of the last `window`.
    pub fn over(window: Duration) -> Self {
        Self { window, history: HashMap::new(), rates: HashMap::new(), from_zero: |_| false, last: None }
    }

    /// The same, for counts whose names `from_zero` picks starting at 0 when they first appear
    /// (others, such as a stream's sequence number, may first be seen anywhere).
    pub fn counting_new_from_zero(self, from_zero: fn(&str) -> bool) -> Self {
        Self { from_zero, ..self }
    }

    /// Take a sample of `counts` at `now`: each count's rate from its oldest sample within the
    /// window (a count that went down started again: its history with it). Counts not in this
    /// sample are forgotten.
    pub fn sample(&mut self, now: Instant, counts: impl IntoIterator<Item = (String, u64)>) {
        let mut history = HashMap::new();
        let mut rates = HashMap::new();
        for (name, count) in counts {
            let mut h = self.history.remove(&name).unwrap_or_default();
            if h.back().is_some_and(|&(_, before)| count < before) {
                h.clear();
            }
            if let Some(last) = self.last.filter(|_| h.is_empty() && (self.from_zero)(&name)) {
                h.push_back((last, 0));
            }
            h.push_back((now, count));
            // Keep one sample at least a window old, and none older than it needs.
            while h.len() > 2 && h.get(1).is_some_and(|&(t, _)| now.saturating_duration_since(t) >= self.window) {
                h.pop_front();
            }
            if let (Some(&(then, before)), true) = (h.front(), h.len() > 1) {
                let dt = now.saturating_duration_since(then).as_secs_f64();
                if dt > 0.0 {
                    rates.insert(name.clone(), (count - before) as f64 / dt);
                }
            }
            history.insert(name, h);
        }
        self.history = history;
        self.rates = rates;
        self.last = Some(now);
    }

    /// The rate of `name` per second (0 before two samples).
    pub fn get(&self, name: &str) -> f64 {
        self.rates.get(name).copied().unwrap_or(0.0)
    }
}

/// A process whose running counts become the rates of its status document.
pub trait Sampled: Send + Sync + 'static {
    /// The running counts, by name.
    fn counts(&self) -> Vec<(String, u64)>;
    /// Where their rates are kept.
    fn rates(&self) -> &std::sync::Mutex<Rates>;
}

/// Sample `process`'s counts every second until `cancel` fires (off the runtime's threads).
pub async fn sample_rates<P: Sampled>(process: Arc<P>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let p = process.clone();
        let sampled = tokio::task::spawn_blocking(move || {
            let counts = p.counts();
            // A sample is one assignment: a poisoned lock is taken over.
            p.rates().lock().unwrap_or_else(|e| e.into_inner()).sample(Instant::now(), counts);
        })
        .await;
        if let Err(e) = sampled {
            tracing::warn!(error = %e, "status sampler stopped");
            break;
        }
    }
}

/// Answer `<prefix>/status/<role>/<name>` with `report`'s status document, until `cancel` fires.
pub async fn serve(
    session: &Session,
    keys: &KeySpace,
    role: Role,
    name: &str,
    report: Arc<dyn crate::http::Report>,
    cancel: CancellationToken,
) -> Result<(), SessionError> {
    let key = keys.status(role, name).map_err(|e| SessionError::Zenoh(e.to_string()))?;
    let queryable = session.declare_queryable(key.clone()).await.map_err(|e| SessionError::Zenoh(e.to_string()))?;
    tokio::spawn(async move {
        loop {
            let query = tokio::select! {
                _ = cancel.cancelled() => break,
                q = queryable.recv_async() => match q { Ok(q) => q, Err(_) => break },
            };
            let (report, key) = (report.clone(), key.clone());
            // Building a document reads counters and locks: off the runtime's threads.
            let body = tokio::task::spawn_blocking(move || {
                let health = crate::http::health_of(&*report);
                serde_json::to_vec(&report.status(&health))
            })
            .await;
            let sent = match body {
                // Answered under this process's own key, which names it (the query's is a pattern).
                Ok(Ok(body)) => query.reply(key, body).await,
                Ok(Err(e)) => query.reply_err(e.to_string()).await,
                Err(e) => query.reply_err(e.to_string()).await,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "cannot answer a status query");
            }
        }
    });
    Ok(())
}

/// What one fetch found: the live tokens and every status document that came back.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// Live tokens, as `<role>/<name>`.
    pub live: BTreeSet<String>,
    /// The documents, by role and name.
    pub processes: Vec<ProcessStatus>,
    /// Answers that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// Ask every process's status and the live tokens, waiting at most `timeout` for answers.
pub async fn fetch(session: &Session, keys: &KeySpace, timeout: Duration) -> Result<Snapshot, SessionError> {
    let zerr = |e: zenoh::Error| SessionError::Zenoh(e.to_string());
    let kerr = |e: crate::keys::KeyError| SessionError::Zenoh(e.to_string());
    let tokens = session.liveliness().get(keys.all_members().map_err(kerr)?).timeout(timeout).await.map_err(zerr)?;
    let answers = session
        .get(keys.all_status().map_err(kerr)?)
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .await
        .map_err(zerr)?;
    let mut snap = Snapshot { at_ms: now_ms(), ..Snapshot::default() };
    let mut taken = 0usize;
    while let Ok(reply) = tokens.recv_async().await {
        if let Ok(sample) = reply.result() {
            if let Some((role, name)) = keys.parse_member(sample.key_expr().as_str()) {
                if snap.live.len() < MAX_PROCESSES {
                    snap.live.insert(format!("{}/{name}", role.as_str()));
                }
            }
        }
    }
    while let Ok(reply) = answers.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let Some((role, name)) = keys.parse_status(sample.key_expr().as_str()) else { continue };
        let who = format!("{}/{name}", role.as_str());
        let body = sample.payload().to_bytes();
        if body.len() > MAX_DOCUMENT_BYTES || taken.saturating_add(body.len()) > MAX_FETCH_BYTES {
            if snap.unreadable.len() < MAX_PROCESSES {
                snap.unreadable.push(format!("{who}: a status document of {} bytes left out", body.len()));
            }
            continue;
        }
        taken += body.len();
        let left_out = match serde_json::from_slice::<ProcessStatus>(&body) {
            Ok(doc) if doc.role != role.as_str() || doc.name != name => {
                Some(format!("{who}: a document naming another process"))
            }
            Ok(doc) => {
                let known = snap.processes.iter().any(|p| p.role == doc.role && p.name == doc.name);
                if snap.processes.len() < MAX_PROCESSES && !known {
                    snap.processes.push(doc);
                }
                None
            }
            Err(e) => Some(format!("{who}: {e}")),
        };
        if let Some(why) = left_out.filter(|_| snap.unreadable.len() < MAX_PROCESSES) {
            snap.unreadable.push(why);
        }
    }
    // A member any answering process sees alive is alive (this session may not link to it).
    let seen: Vec<String> = snap.processes.iter().flat_map(|p| p.live.iter().cloned()).collect();
    for m in seen {
        if snap.live.len() >= MAX_PROCESSES {
            break;
        }
        snap.live.insert(m);
    }
    snap.processes.sort_by(|a, b| (&a.role, &a.name).cmp(&(&b.role, &b.name)));
    Ok(snap)
}

/// Ask until every live process answered or `timeout` passed (a new session links to the
/// cluster's peers one by one, so the first asks may miss some); the fullest answer wins.
pub async fn gather(session: &Session, keys: &KeySpace, timeout: Duration) -> Snapshot {
    let deadline = Instant::now() + timeout;
    let mut best = Snapshot::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.clamp(Duration::from_millis(100), Duration::from_millis(1000));
        if let Ok(snap) = fetch(session, keys, wait).await {
            let complete = snap.complete();
            if snap.processes.len() >= best.processes.len() {
                best = snap;
            }
            if complete {
                return best;
            }
        }
        if Instant::now() >= deadline {
            return best;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

impl Snapshot {
    /// Whether every live member answered.
    pub fn complete(&self) -> bool {
        !self.live.is_empty()
            && self.live.iter().all(|m| self.processes.iter().any(|p| format!("{}/{}", p.role, p.name) == *m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_samples_of_the_window() {
        let mut r = Rates::default();
        let t0 = Instant::now();
        r.sample(t0, [("a".to_owned(), 10), ("b".to_owned(), 5)]);
        assert_eq!(r.get("a"), 0.0, "no rate from one sample");
        r.sample(t0 + Duration::from_secs(2), [("a".to_owned(), 30), ("b".to_owned(), 1)]);
        assert_eq!(r.get("a"), 10.0);
        assert_eq!(r.get("b"), 0.0, "a count that went down started again");
        // A count that moves in steps: 100 every 5 s, sampled every second, over a 10 s window.
        let mut r = Rates::over(Duration::from_secs(10));
        let mut rates = Vec::new();
        for s in 0..30u64 {
            r.sample(t0 + Duration::from_secs(s), [("w".to_owned(), (s / 5) * 100)]);
            rates.push(r.get("w"));
        }
        assert!(rates[12..].iter().all(|x| (10.0..=25.0).contains(x)), "about 20/s between steps too: {rates:?}");
    }

    #[test]
    fn a_count_that_starts_at_zero_has_what_it_counted_before_its_first_sample() {
        let mut r = Rates::default().counting_new_from_zero(|n| n.starts_with("a:"));
        let t0 = Instant::now();
        r.sample(t0, [("s:app".to_owned(), 1000)]);
        // Two keys appear between samples, with 5 decisions each; a stream with a head of 500.
        let t1 = t0 + Duration::from_secs(1);
        r.sample(t1, [("s:app".to_owned(), 1010), ("a:1:k".to_owned(), 5), ("s:new".to_owned(), 500)]);
        assert_eq!(r.get("a:1:k"), 5.0, "counted from 0 at the sample before");
        assert_eq!(r.get("s:new"), 0.0, "a stream's first head says nothing of its rate");
        assert_eq!(r.get("s:app"), 10.0);
        // At the very first sample there is no sample before: no rate yet.
        let mut r = Rates::default().counting_new_from_zero(|_| true);
        r.sample(t0, [("a:1:k".to_owned(), 5)]);
        assert_eq!(r.get("a:1:k"), 0.0);
    }
}
