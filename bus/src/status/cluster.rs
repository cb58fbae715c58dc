//! One view of the cluster from every process's status document, problems first.
//!
//! [`assemble`] joins a [`Snapshot`]: nodes from the live tokens, the documents and what the
//! processes saw leave; streams from the leading collector (with the agents' heads); limits per
//! key over every node's share and use; DLR records per node. Then it names what needs an
//! operator ([`Problem`]), worst first, and an overall [`Level`] that `switchboard status` turns
//! into its exit code.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{ProcessStatus, Snapshot, STATUS_VERSION};

/// A stream whose oldest record not committed is this much older than the writing collector's
/// `max_file_age_ms` (the longest a record waits for its file's commit) is a problem.
pub const STREAM_STALL_S: f64 = 30.0;

/// How long a process that left stays a problem (it is listed as gone after that too, until the
/// processes that saw it leave restart): a node stopped on purpose, retired or replaced, does not
/// keep the cluster degraded, and a check run every minute pages about it for this long.
pub const GONE_IS_A_PROBLEM_MS: u64 = 15 * 60 * 1000;

/// The cluster's overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every process answered and nothing needs attention.
    Ok,
    /// Something needs attention (a problem is listed).
    Degraded,
    /// No process could be reached.
    Unreachable,
}

impl Level {
    /// The exit code of `switchboard status`: 0 ok, 1 degraded, 2 unreachable.
    pub fn exit_code(self) -> i32 {
        match self {
            Level::Ok => 0,
            Level::Degraded => 1,
            Level::Unreachable => 2,
        }
    }
}

/// Something that needs an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `failing` (something does not work) or `degraded` (it works, but needs attention).
    pub severity: String,
    /// What, naming the process, node or stream.
    pub what: String,
}

/// One node (agent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    /// The node's name.
    pub name: String,
    /// Whether its liveliness token is there.
    pub alive: bool,
    /// When it was seen leaving, ms since the Unix epoch (gone nodes).
    pub gone_since_ms: Option<u64>,
    /// Whether it answered the status query.
    pub answered: bool,
    /// Its software version.
    pub software: Option<String>,
    /// Seconds since it started.
    pub uptime_s: Option<u64>,
    /// Its health: `ok`, `degraded`, `failing` (or `gone`, `silent`: alive but no answer).
    pub health: String,
    /// Whether it serves limits (`[limits] enabled`): one that does not holds no revision.
    #[serde(default = "crate::status::serves_limits_by_default")]
    pub serves_limits: bool,
    /// The limits revision it applies.
    pub limits_revision: Option<u64>,
    /// A digest of the limits it applies (equal limits, equal digests).
    pub limits_digest: Option<String>,
    /// The sources it tails.
    pub sources: Vec<String>,
    /// Lines read per second, all sources.
    pub lines_per_s: f64,
    /// Whether it runs with mutual TLS.
    pub tls: Option<bool>,
}

/// One collector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectorRow {
    /// Its name.
    pub name: String,
    /// Whether its liveliness token is there.
    pub alive: bool,
    /// `leader`, `standby` (or `gone`, `silent`).
    pub role: String,
    /// The epoch it writes under, while it says it leads.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Its health.
    pub health: String,
    /// Streams it writes.
    pub streams: usize,
    /// Rows committed per second.
    pub rows_per_s: f64,
    /// Seconds since its last commit.
    pub last_commit_age_s: Option<f64>,
    /// The store's error, while it lasts.
    pub store_error: Option<String>,
    /// Its `max_file_age_ms`, in seconds (how long a record may wait for its file's commit),
    /// when it said.
    #[serde(default)]
    pub max_file_age_s: Option<f64>,
}

impl CollectorRow {
    /// The store column: its error, `ok` from a collector that answered, `-` from one that is
    /// gone or silent (nothing is known of its store).
    pub fn store_text(&self) -> &str {
        match &self.store_error {
            Some(e) => e,
            None if self.alive && self.role != "silent" && self.role != "gone" => "ok",
            None => "-",
        }
    }
}

/// Each live collector that says it leads under an older epoch than another live leader, with
/// the newest leader: a leader cut off from the store keeps saying `leader` until it reaches the
/// store again and finds the newer claim, though every commit it tries is fenced meanwhile.
fn fenced_leaders(collectors: &[CollectorRow]) -> Vec<(&CollectorRow, &CollectorRow)> {
    let leaders = || collectors.iter().filter(|c| c.alive && c.role == "leader");
    let Some(newest) = leaders().max_by_key(|c| c.epoch) else { return Vec::new() };
    leaders().filter(|c| c.epoch < newest.epoch).map(|c| (c, newest)).collect()
}

/// One stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamRow {
    /// `<node>/<kind>/<name>`.
    pub stream: String,
    /// The agent's head (next sequence number), when the agent answered.
    pub head: Option<u64>,
    /// The committed prefix (next sequence number to commit).
    pub committed: u64,
    /// Records not committed yet.
    pub lag_records: u64,
    /// Age of the oldest record not committed, in seconds.
    pub lag_seconds: f64,
    /// Lines the agent reads per second.
    pub lines_per_s: f64,
    /// Records committed per second.
    pub committed_per_s: f64,
    /// At the current rates, seconds until the lag is gone: 0 with no lag or while what waits
    /// is in flight (the text's `-`), none when not catching up.
    pub catch_up_s: Option<f64>,
}

/// How much older than the writing collector's `max_file_age_ms` the oldest record not committed
/// may be and still count as in flight (no catch-up estimate): a quiet stream's records wait for
/// their file's commit, up to that age.
pub const IN_FLIGHT_S: f64 = 10.0;
/// `max_file_age_ms`'s default, in seconds, for a collector whose document does not say its own.
const DEFAULT_FILE_AGE_S: f64 = 30.0;

/// One limit key over the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitRow {
    /// The concrete key.
    pub key: String,
    /// The limit (key or pattern) that applies.
    pub limit: String,
    /// A rate limit's rate per second.
    pub rate_per_sec: Option<f64>,
    /// A concurrency limit's slots.
    pub slots: Option<u64>,
    /// Use over the last second: allowed units against the rate, or held slots against the
    /// slots, in percent.
    pub use_pct: f64,
    /// Units allowed per second, all nodes.
    pub allowed_per_s: f64,
    /// Units denied per second, all nodes.
    pub denied_per_s: f64,
    /// Each node's share (a fraction).
    pub shares: BTreeMap<String, f64>,
}

/// One node's DLR records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DlrRow {
    /// The node.
    pub node: String,
    /// Records held (own and copies).
    pub records: u64,
    /// Open records it owns.
    pub own_open: Option<u64>,
    /// Copies of others' records it holds.
    pub copies: Option<u64>,
    /// Age of its oldest open record, in seconds.
    pub oldest_open_age_s: Option<f64>,
    /// Lookups per second.
    pub lookups_per_s: f64,
    /// Lookups per second for ids no node knows.
    pub not_found_per_s: f64,
    /// Changes waiting for replicas.
    pub replica_queue: u64,
}

/// The cluster at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Always [`STATUS_VERSION`].
    pub version: u32,
    /// When the documents were asked for, ms since the Unix epoch.
    pub at_ms: u64,
    /// The overall state.
    pub level: Level,
    /// What needs attention, `failing` first.
    pub problems: Vec<Problem>,
    /// Nodes, by name.
    pub nodes: Vec<NodeRow>,
    /// Collectors, by name.
    pub collectors: Vec<CollectorRow>,
    /// Streams, by name.
    pub streams: Vec<StreamRow>,
    /// Limit keys, the most used first.
    pub limits: Vec<LimitRow>,
    /// DLR records per node.
    pub dlr: Vec<DlrRow>,
    /// Answers that were left out (too large, not a status document, naming another process).
    #[serde(default)]
    pub unreadable: Vec<String>,
}

impl ClusterStatus {
    /// Lines read per second over all nodes.
    pub fn lines_per_s(&self) -> f64 {
        self.nodes.iter().map(|n| n.lines_per_s).sum()
    }

    /// Records not committed yet over all streams.
    pub fn lag_records(&self) -> u64 {
        self.streams.iter().map(|s| s.lag_records).sum()
    }

    /// The highest use of any limit key, in percent.
    pub fn max_limit_use_pct(&self) -> f64 {
        self.limits.iter().map(|l| l.use_pct).fold(0.0, f64::max)
    }
}

impl NodeRow {
    /// `alive`, `gone 42 s ago` (as of `now_ms`) or `gone`.
    pub fn state_text(&self, now_ms: u64) -> String {
        match (self.alive, self.gone_since_ms) {
            (true, _) => "alive".to_owned(),
            (false, Some(at)) => format!("gone {} ago", ago(now_ms, at)),
            (false, None) => "gone".to_owned(),
        }
    }
}

impl StreamRow {
    /// `-` (no lag), `12 s`, or `not catching up`.
    pub fn catch_up_text(&self) -> String {
        match self.catch_up_s {
            Some(x) if x <= 0.0 => "-".to_owned(),
            Some(x) => human_secs(x),
            None => "not catching up".to_owned(),
        }
    }
}

impl LimitRow {
    /// `500/s`, `20 slots` or `-`, with `num` formatting a rate.
    pub fn limit_text(&self, num: impl Fn(f64) -> String) -> String {
        match (self.rate_per_sec, self.slots) {
            (Some(r), _) => format!("{}/s", num(r)),
            (_, Some(s)) => format!("{s} slots"),
            _ => "-".to_owned(),
        }
    }

    /// Each node's share, `gw1 0.50, gw2 0.50`.
    pub fn shares_text(&self) -> String {
        self.shares.iter().map(|(n, s)| format!("{n} {s:.2}")).collect::<Vec<_>>().join(", ")
    }
}

fn split(member: &str) -> Option<(&str, &str)> {
    member.split_once('/')
}

/// Join a snapshot into the cluster's view; see the module docs.
pub fn assemble(snap: &Snapshot) -> ClusterStatus {
    let now = snap.at_ms;
    let mut problems: Vec<Problem> = Vec::new();
    let mut problem = |severity: &str, what: String| problems.push(Problem { severity: severity.into(), what });
    let doc = |role: &str, name: &str| snap.processes.iter().find(|p| p.role == role && p.name == name);

    // Who exists: live tokens, answers, and whoever someone saw leave (the latest leave wins).
    let mut departed: BTreeMap<&str, u64> = BTreeMap::new();
    for p in &snap.processes {
        for d in &p.departed {
            let at = departed.entry(d.member.as_str()).or_default();
            *at = (*at).max(d.at_ms);
        }
    }
    let mut members: BTreeSet<(String, String)> = BTreeSet::new();
    for m in snap.live.iter().map(String::as_str).chain(departed.keys().copied()) {
        if let Some((role, name)) = split(m) {
            members.insert((role.to_owned(), name.to_owned()));
        }
    }
    for p in &snap.processes {
        members.insert((p.role.clone(), p.name.clone()));
    }
    let alive = |role: &str, name: &str| snap.live.contains(&format!("{role}/{name}"));
    let gone_since = |role: &str, name: &str| {
        if alive(role, name) {
            None
        } else {
            departed.get(format!("{role}/{name}").as_str()).copied()
        }
    };

    for p in &snap.processes {
        for what in &p.failing {
            problem("failing", format!("{} {}: {what}", p.role, p.name));
        }
        for what in &p.degraded {
            problem("degraded", format!("{} {}: {what}", p.role, p.name));
        }
    }

    let mut nodes = Vec::new();
    let mut collectors = Vec::new();
    for (role, name) in &members {
        let d = doc(role, name);
        let is_alive = alive(role, name);
        let gone = gone_since(role, name);
        let health = match (d, is_alive) {
            (Some(d), _) => d.health.clone(),
            (None, true) => "silent".to_owned(),
            (None, false) => "gone".to_owned(),
        };
        if d.is_none() && is_alive {
            problem(
                "degraded",
                format!(
                "{role} {name} is alive but did not answer (hung, an older version, or not linked to this tool: with \
                 `gossip = false`, give every process's endpoint with --connect)"
            ),
            );
        }
        // A process that left long ago is listed, no longer a problem.
        if !is_alive && gone.is_none_or(|at| now.saturating_sub(at) < GONE_IS_A_PROBLEM_MS) {
            let since = gone.map_or_else(String::new, |at| format!(" since {} ({} ago)", clock(at), ago(now, at)));
            problem("degraded", format!("{role} {name} is gone{since}"));
        }
        match role.as_str() {
            "node" => {
                let n = d.and_then(|d| d.node.as_ref());
                nodes.push(NodeRow {
                    name: name.clone(),
                    alive: is_alive,
                    gone_since_ms: gone,
                    answered: d.is_some(),
                    software: d.map(|d| d.software.clone()),
                    uptime_s: d.map(|d| d.at_ms.saturating_sub(d.started_at_ms) / 1000),
                    health,
                    serves_limits: n.is_none_or(|n| n.serves_limits),
                    limits_revision: n.and_then(|n| n.limits_revision),
                    limits_digest: n.and_then(|n| n.limits_digest.clone()),
                    sources: n.map(|n| n.sources.iter().map(|s| s.name.clone()).collect()).unwrap_or_default(),
                    lines_per_s: n.map_or(0.0, |n| n.sources.iter().map(|s| s.lines_per_s).sum()),
                    tls: d.map(|d| d.tls),
                });
            }
            "collector" => {
                let c = d.and_then(|d| d.collector.as_ref());
                collectors.push(CollectorRow {
                    name: name.clone(),
                    alive: is_alive,
                    role: c.map_or_else(|| health.clone(), |c| c.role.clone()),
                    epoch: c.and_then(|c| c.epoch),
                    health,
                    streams: c.map_or(0, |c| c.streams.len()),
                    rows_per_s: c.map_or(0.0, |c| c.rows_per_s),
                    last_commit_age_s: c.and_then(|c| c.last_commit_age_s),
                    store_error: c.and_then(|c| c.store_error.clone()),
                    max_file_age_s: c.and_then(|c| c.max_file_age_s),
                });
            }
            _ => {}
        }
    }
    for (old, newer) in fenced_leaders(&collectors) {
        problem(
            "degraded",
            format!(
                "collectors {} and {} both say they lead: {}'s claim (epoch {}) is older than {}'s (epoch {}), \
                 so the store refuses its commits until it sees the newer claim and stands by",
                old.name,
                newer.name,
                old.name,
                old.epoch.unwrap_or(0),
                newer.name,
                newer.epoch.unwrap_or(0)
            ),
        );
    }
    if !members.is_empty() && !collectors.iter().any(|c| c.alive) {
        problem("degraded", "no collector is alive: lines wait in the agents' journals".to_owned());
    }

    // Limits revisions: everyone on the newest's limits (a node whose limits equal the newest's
    // is not behind, whatever its revision number: a resolve that kept its limits, say).
    let newest = nodes.iter().filter(|n| n.alive).filter_map(|n| n.limits_revision).max();
    if let Some(newest) = newest {
        let newest_limits: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.alive && n.limits_revision == Some(newest))
            .filter_map(|n| n.limits_digest.as_deref())
            .collect();
        for n in nodes.iter().filter(|n| n.alive && n.answered && n.serves_limits) {
            let same_limits = n.limits_digest.as_deref().is_some_and(|d| newest_limits.contains(d));
            match n.limits_revision {
                Some(r) if r < newest && !same_limits => {
                    problem("degraded", format!("node {} applies limits revision {r}, others {newest}", n.name))
                }
                None => problem("degraded", format!("node {} holds no limits revision, others {newest}", n.name)),
                _ => {}
            }
        }
    }

    let streams = streams(snap);
    let stall_s = STREAM_STALL_S + file_age_s(snap);
    for s in &streams {
        if s.lag_records > 0 && s.lag_seconds >= stall_s {
            problem(
                "degraded",
                format!("stream {}: {} records not committed for {:.0} s", s.stream, s.lag_records, s.lag_seconds),
            );
        }
    }

    for u in &snap.unreadable {
        problem("degraded", format!("an unreadable status answer: {u}"));
    }
    // Problems: failing first, then in the order found.
    // One line per problem, however many ways it was found.
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert((p.severity.clone(), p.what.clone())));
    problems.sort_by_key(|p| p.severity != "failing");
    let level = if snap.processes.is_empty() && snap.live.is_empty() {
        Level::Unreachable
    } else if problems.is_empty() {
        Level::Ok
    } else {
        Level::Degraded
    };
    ClusterStatus {
        version: STATUS_VERSION,
        at_ms: now,
        level,
        problems,
        nodes,
        collectors,
        streams,
        limits: limits(&snap.processes),
        dlr: dlr(&snap.processes, now),
        unreadable: snap.unreadable.clone(),
    }
}

/// Streams from the leading collector (or any, if none leads), with the agents' heads.
/// The collector that writes the dataset (the leader, else any).
fn writer(snap: &Snapshot) -> Option<&ProcessStatus> {
    let collectors: Vec<&ProcessStatus> = snap.processes.iter().filter(|p| p.collector.is_some()).collect();
    collectors
        .iter()
        .find(|p| p.collector.as_ref().is_some_and(|c| c.role == "leader"))
        .or_else(|| collectors.first())
        .copied()
}

/// The writing collector's `max_file_age_ms` in seconds.
fn file_age_s(snap: &Snapshot) -> f64 {
    writer(snap).and_then(|p| p.collector.as_ref()).and_then(|c| c.max_file_age_s).unwrap_or(DEFAULT_FILE_AGE_S)
}

fn streams(snap: &Snapshot) -> Vec<StreamRow> {
    let writer = writer(snap);
    let in_flight = IN_FLIGHT_S + file_age_s(snap);
    let mut rows: BTreeMap<String, StreamRow> = BTreeMap::new();
    if let Some(c) = writer.and_then(|p| p.collector.as_ref()) {
        for s in &c.streams {
            rows.insert(
                format!("{}/{}", s.node, s.stream),
                StreamRow {
                    stream: format!("{}/{}", s.node, s.stream),
                    committed: s.committed,
                    lag_records: s.lag_records,
                    lag_seconds: s.lag_seconds,
                    committed_per_s: s.committed_per_s,
                    ..StreamRow::default()
                },
            );
        }
    }
    for p in &snap.processes {
        let Some(n) = &p.node else { continue };
        for src in &n.sources {
            let name = crate::StreamId::log(&p.name, &src.name).to_string();
            let row = rows.entry(name.clone()).or_insert_with(|| StreamRow {
                stream: name,
                committed: src.acked,
                lag_records: src.head.saturating_sub(src.acked),
                lag_seconds: src.lag_seconds,
                ..StreamRow::default()
            });
            row.head = Some(src.head);
            row.lines_per_s = src.lines_per_s;
            row.lag_records = row.lag_records.max(src.head.saturating_sub(row.committed));
            // The agent knows how long its oldest line has waited; a writer that does not hear
            // the agent (it reaches only a standby) knows of no lag at all.
            row.lag_seconds = row.lag_seconds.max(src.lag_seconds);
        }
    }
    for row in rows.values_mut() {
        let gain = row.committed_per_s - row.lines_per_s;
        row.catch_up_s = match row.lag_records {
            0 => Some(0.0),
            // Records younger than a few commits are in flight, not a backlog: a quiet stream
            // (a few records every 10 s) has no rates to estimate from.
            _ if row.lag_seconds < in_flight => Some(0.0),
            lag if gain > 0.0 => Some(lag as f64 / gain),
            _ => None,
        };
    }
    rows.into_values().collect()
}

/// Limit keys over all nodes, the most used first.
fn limits(processes: &[ProcessStatus]) -> Vec<LimitRow> {
    let mut rows: BTreeMap<&str, LimitRow> = BTreeMap::new();
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for p in processes {
        let Some(n) = &p.node else { continue };
        for k in &n.limits {
            let row = rows.entry(k.key.as_str()).or_insert_with(|| LimitRow {
                key: k.key.clone(),
                limit: k.limit.clone(),
                rate_per_sec: k.rate_per_sec,
                slots: k.slots,
                ..LimitRow::default()
            });
            row.allowed_per_s += k.allowed_per_s;
            row.denied_per_s += k.denied_per_s;
            row.shares.insert(p.name.clone(), k.share);
            *held.entry(k.key.as_str()).or_default() += k.held.unwrap_or(0);
        }
    }
    let mut rows: Vec<LimitRow> = rows
        .into_iter()
        .map(|(key, mut row)| {
            row.use_pct = match (row.rate_per_sec, row.slots) {
                (Some(rate), _) if rate > 0.0 => 100.0 * row.allowed_per_s / rate,
                (_, Some(slots)) if slots > 0 => 100.0 * held.get(key).copied().unwrap_or(0) as f64 / slots as f64,
                _ => 0.0,
            };
            row
        })
        .collect();
    rows.sort_by(|a, b| b.use_pct.total_cmp(&a.use_pct).then_with(|| a.key.cmp(&b.key)));
    rows
}

fn dlr(processes: &[ProcessStatus], now: u64) -> Vec<DlrRow> {
    processes
        .iter()
        .filter_map(|p| {
            let d = p.node.as_ref()?.dlr.as_ref()?;
            Some(DlrRow {
                node: p.name.clone(),
                records: d.records,
                own_open: d.own_open,
                copies: d.copies,
                oldest_open_age_s: d.oldest_open_ms.map(|t| now.saturating_sub(t) as f64 / 1000.0),
                lookups_per_s: d.lookups_per_s,
                not_found_per_s: d.not_found_per_s,
                replica_queue: d.replica_queue,
            })
        })
        .collect()
}

/// `HH:MM:SS` (UTC) of a time in ms since the Unix epoch.
pub fn clock(at_ms: u64) -> String {
    let s = at_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// A short duration from `then` to `now` (ms): `42 s`, `5 min`, `3 h`, `2 d`.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    human_secs(now_ms.saturating_sub(then_ms) as f64 / 1000.0)
}

/// A short duration: `42 s`, `5 min`, `3 h`, `2 d`.
pub fn human_secs(s: f64) -> String {
    match s {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.0} h", s / 3600.0),
        s => format!("{:.0} d", s / 86400.0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CollectorStatus, Departed, KeyStatus, NodeStatus, SourceStatus, StreamStatus};
    use super::*;

    fn node(name: &str, rev: u64) -> ProcessStatus {
        ProcessStatus {
            version: STATUS_VERSION,
            role: "node".into(),
            name: name.into(),
            health: "ok".into(),
            node: Some(NodeStatus {
                serves_limits: true,
                limits_revision: Some(rev),
                limits_digest: Some(format!("limits of {rev}")),
                sources: vec![SourceStatus {
                    name: "app".into(),
                    head: 100,
                    acked: 90,
                    lag_seconds: 1.0,
                    lines_per_s: 10.0,
                }],
                limits: vec![KeyStatus {
                    key: "op:a".into(),
                    limit: "op:*".into(),
                    rate_per_sec: Some(100.0),
                    share: 0.5,
                    allowed_per_s: 25.0,
                    denied_per_s: 1.0,
                    ..KeyStatus::default()
                }],
                dlr: None,
            }),
            ..ProcessStatus::default()
        }
    }

    #[test]
    fn a_gone_node_an_old_revision_and_a_stalled_stream_are_problems() {
        let mut collector = ProcessStatus {
            role: "collector".into(),
            name: "c1".into(),
            health: "ok".into(),
            departed: vec![Departed { member: "node/gw3".into(), at_ms: 1_000 }],
            collector: Some(CollectorStatus {
                role: "leader".into(),
                rows_per_s: 20.0,
                max_file_age_s: Some(1.0),
                streams: vec![
                    StreamStatus {
                        node: "gw1".into(),
                        stream: "log/app".into(),
                        committed: 90,
                        lag_records: 10,
                        lag_seconds: 12.0,
                        committed_per_s: 30.0,
                    },
                    StreamStatus {
                        node: "gw3".into(),
                        stream: "log/app".into(),
                        committed: 5,
                        lag_records: 7,
                        lag_seconds: 45.0,
                        committed_per_s: 0.0,
                    },
                ],
                ..CollectorStatus::default()
            }),
            ..ProcessStatus::default()
        };
        collector.version = STATUS_VERSION;
        let snap = Snapshot {
            at_ms: 61_000,
            live: ["node/gw1", "node/gw2", "collector/c1"].iter().map(|s| s.to_string()).collect(),
            processes: vec![collector, node("gw1", 7), node("gw2", 6)],
            unreadable: vec![],
        };
        let c = assemble(&snap);
        assert_eq!(c.level, Level::Degraded);
        let what: Vec<&str> = c.problems.iter().map(|p| p.what.as_str()).collect();
        assert!(what.contains(&"node gw3 is gone since 00:00:01 (60 s ago)"), "{what:?}");
        assert!(what.contains(&"node gw2 applies limits revision 6, others 7"), "{what:?}");
        // The newest's limits under an older number (a resolve that kept them): not behind.
        let mut same = snap.clone();
        if let Some(n) = same.processes[2].node.as_mut() {
            n.limits_digest = Some("limits of 7".into());
        }
        let with_same: Vec<String> = assemble(&same).problems.into_iter().map(|p| p.what).collect();
        assert!(!with_same.iter().any(|w| w.contains("limits revision")), "{with_same:?}");
        // A node that serves no limits holds no revision, and is not behind for it.
        let mut off = snap.clone();
        if let Some(n) = off.processes[2].node.as_mut() {
            (n.serves_limits, n.limits_revision, n.limits_digest) = (false, None, None);
        }
        let with_off: Vec<String> = assemble(&off).problems.into_iter().map(|p| p.what).collect();
        assert!(!with_off.iter().any(|w| w.contains("limits revision")), "{with_off:?}");
        if let Some(n) = off.processes[2].node.as_mut() {
            n.serves_limits = true;
        }
        let with_none: Vec<String> = assemble(&off).problems.into_iter().map(|p| p.what).collect();
        assert!(with_none.iter().any(|w| w == "node gw2 holds no limits revision, others 7"), "{with_none:?}");
        assert!(what.contains(&"stream gw3/log/app: 7 records not committed for 45 s"), "{what:?}");
        // A stream the writer does not hear (its agent reaches only a standby): the writer
        // knows of no lag, the agent says its oldest line has waited 86 s.
        let mut unheard = snap.clone();
        if let Some(n) = unheard.processes[2].node.as_mut() {
            n.sources[0].lag_seconds = 86.0;
        }
        if let Some(c) = unheard.processes[0].collector.as_mut() {
            c.streams.push(StreamStatus {
                node: "gw2".into(),
                stream: "log/app".into(),
                committed: 90,
                ..StreamStatus::default()
            });
        }
        let said: Vec<String> = assemble(&unheard).problems.into_iter().map(|p| p.what).collect();
        assert!(said.iter().any(|w| w == "stream gw2/log/app: 10 records not committed for 86 s"), "{said:?}");
        assert_eq!(
            c.nodes.iter().map(|n| (n.name.as_str(), n.alive)).collect::<Vec<_>>(),
            [("gw1", true), ("gw2", true), ("gw3", false)]
        );
        let gw1 = c.streams.iter().find(|s| s.stream == "gw1/log/app").unwrap();
        assert_eq!((gw1.head, gw1.lag_records), (Some(100), 10));
        assert_eq!(gw1.catch_up_s, Some(0.5), "10 records at 30/s committed against 10/s read");
        // Records in flight (under 10 s old) have no estimate to make, whatever the rates.
        let gw2 = c.streams.iter().find(|s| s.stream == "gw2/log/app").unwrap();
        assert_eq!((gw2.lag_records, gw2.catch_up_s), (10, Some(0.0)));
        // With the default 30 s files, records 12 s old wait for their file's commit: in flight,
        // and 45 s is no stall yet.
        let mut default_age = snap.clone();
        if let Some(c) = default_age.processes[0].collector.as_mut() {
            c.max_file_age_s = None;
        }
        let d = assemble(&default_age);
        let gw1 = d.streams.iter().find(|s| s.stream == "gw1/log/app").unwrap();
        assert_eq!(gw1.catch_up_s, Some(0.0));
        assert!(!d.problems.iter().any(|p| p.what.contains("not committed")), "{:?}", d.problems);
        assert_eq!(c.limits[0].allowed_per_s, 50.0);
        assert_eq!(c.limits[0].use_pct, 50.0);
        assert_eq!(c.limits[0].shares.len(), 2);
        // A quarter of an hour later gw3 is still listed as gone, no longer a problem.
        let later = Snapshot { at_ms: 1_000 + GONE_IS_A_PROBLEM_MS, ..snap };
        let c = assemble(&later);
        assert!(!c.problems.iter().any(|p| p.what.contains("gw3 is gone")), "{:?}", c.problems);
        assert!(c.nodes.iter().any(|n| n.name == "gw3" && !n.alive && n.gone_since_ms == Some(1_000)));
    }

    #[test]
    fn a_leader_behind_a_newer_claim_is_named_as_fenced() {
        let collector = |name: &str, role: &str, epoch: Option<u64>| ProcessStatus {
            version: STATUS_VERSION,
            role: "collector".into(),
            name: name.into(),
            health: "ok".into(),
            collector: Some(CollectorStatus { role: role.into(), epoch, ..CollectorStatus::default() }),
            ..ProcessStatus::default()
        };
        let snap = Snapshot {
            at_ms: 1,
            live: ["collector/c1", "collector/c2", "collector/c3"].iter().map(|s| s.to_string()).collect(),
            processes: vec![
                collector("c1", "leader", Some(3)),
                collector("c2", "leader", Some(4)),
                collector("c3", "standby", None),
            ],
            unreadable: vec![],
        };
        let c = assemble(&snap);
        assert_eq!(c.level, Level::Degraded);
        let what: Vec<&str> = c.problems.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(what.len(), 1, "{what:?}");
        assert!(what[0].starts_with("collectors c1 and c2 both say they lead: c1's claim (epoch 3)"), "{what:?}");
        assert_eq!(c.collectors.iter().map(|x| x.epoch).collect::<Vec<_>>(), [Some(3), Some(4), None]);
        let text = super::super::text::render(&c);
        assert!(text.contains("epoch"), "{text}");
        // One leader: nothing to say.
        let mut one = snap.clone();
        one.processes.remove(0);
        one.live.remove("collector/c1");
        assert_eq!(assemble(&one).level, Level::Ok, "{:?}", assemble(&one).problems);
    }

    #[test]
    fn nobody_answering_is_unreachable_and_everything_fine_is_ok() {
        assert_eq!(assemble(&Snapshot::default()).level, Level::Unreachable);
        let mut c = node("gw1", 1);
        c.node = None;
        let col = ProcessStatus {
            role: "collector".into(),
            name: "c".into(),
            health: "ok".into(),
            ..ProcessStatus::default()
        };
        let snap = Snapshot {
            at_ms: 1,
            live: ["node/gw1", "collector/c"].iter().map(|s| s.to_string()).collect(),
            processes: vec![c, col],
            unreadable: vec![],
        };
        assert_eq!(assemble(&snap).level, Level::Ok, "{:?}", assemble(&snap).problems);
    }
}
