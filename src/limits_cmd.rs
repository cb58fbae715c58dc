//! `switchboard limits set|list|history`: the cluster's limits, set once for every node.
//!
//! The limits are the file `global/limits.toml` of the configuration repository
//! (`crate::config_cmd`): `set` is a push of the current tree with that file replaced, then waits
//! until every node that answered holds the new limits. `list` and `history` read the nodes'
//! limits histories (`<prefix>/limits/config/*`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Deserialize;
use switchboard_bus::config::BusConfig;
use switchboard_bus::keys::KeySpace;
use switchboard_bus::limits::revision::{fetch_histories, History, Revision};
use switchboard_bus::repo::FileEntry;

use crate::config_cmd;
use switchboard_bus::limits::{LimitSpec, Per};
use switchboard_bus::session;
use switchboard_bus::tls::TlsConfig;

/// How to reach the cluster's bus.
#[derive(Debug, Args)]
pub struct BusArgs {
    /// zenoh endpoint of any process of the cluster (an agent's or the collector's `listen`);
    /// repeat for several.
    #[arg(long, env = "SWITCHBOARD_CONNECT", default_value = "tcp/127.0.0.1:7447")]
    pub connect: Vec<String>,
    /// The cluster's name (keys live under `sb/<cluster>`).
    #[arg(long, default_value = "default")]
    pub cluster: String,
    /// Key prefix, when the cluster sets one.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Take cluster, prefix, endpoints and TLS files from an agent or collector config instead
    /// (its `connect` endpoints, and its `listen` ones on this host).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// With mutual TLS: the cluster CA's certificate (the members file is read beside it).
    #[arg(long, env = "SWITCHBOARD_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// With mutual TLS: this tool's certificate. Any member's for `status` and to read limits,
    /// an agent's or an admin's to read the configuration, an admin's (`switchboard certs issue
    /// <you> --role admin`) to set limits or the configuration.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// With mutual TLS: this tool's private key.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
}

/// Said when no node answers: the usual cause is a cluster of another name.
pub const CLUSTER_HINT: &str =
    "(the cluster's name is `[bus] cluster` in the agents' files: pass it with --cluster, or an agent's file with --config; \
     on TLS, this tool's certificate must be of the cluster's CA and its identity in the cluster's members file; \
     with `gossip = false` in the cluster, this tool reaches only the processes it names: give every agent's \
     endpoint, one --connect each)";

/// The `limits` subcommands.
#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// Set the cluster's limits from a TOML file: every node applies it as the next revision.
    ///
    /// The file lists every limit (the revision replaces the whole set):
    ///
    ///   [[limit]]
    ///   key = "operator:*"        # one limit per operator; exact keys win over patterns
    ///   rate = 500                # units per `per` (second, minute or hour)
    ///   per = "second"
    ///
    ///   [[limit]]
    ///   key = "domain:*"
    ///   concurrency = 20          # slots held at once, cluster-wide
    #[command(verbatim_doc_comment)]
    Set {
        /// The limits file.
        file: PathBuf,
        /// Who sets it (kept in the history). Default: the identity of the TLS certificate, else
        /// $USER, else $LOGNAME, else this process's user in /etc/passwd.
        #[arg(long, value_parser = config_cmd::parse_author)]
        author: Option<String>,
        /// Why (kept in the history).
        #[arg(long, short, default_value = "")]
        message: String,
        /// Show what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for every node to hold the new revision.
        #[arg(long, default_value = "5s", value_parser = crate::cli::parse_timeout)]
        timeout: Duration,
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Show the limits in force and the revision each node holds.
    List {
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Show every revision: number, when, who, why and what changed.
    History {
        /// How to reach the bus.
        #[command(flatten)]
        bus: BusArgs,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default, rename = "limit")]
    limits: Vec<LimitSpec>,
}

/// Read and check a limits file.
pub fn load_limits(path: &Path) -> Result<Vec<LimitSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: LimitsFile = toml::from_str(&text).with_context(|| format!("{} is not a limits file", path.display()))?;
    switchboard_bus::limits::check(&file.limits).with_context(|| format!("{}", path.display()))?;
    Ok(file.limits)
}

impl BusArgs {
    /// The bus settings these flags (or the config file) give.
    pub fn bus_config(&self) -> Result<BusConfig> {
        let mut bus = BusConfig {
            cluster: self.cluster.clone(),
            prefix: self.prefix.clone(),
            connect: self.connect.clone(),
            tls: match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
                (Some(ca), Some(cert), Some(key)) => {
                    Some(TlsConfig { ca: ca.clone(), cert: cert.clone(), key: key.clone(), members: None })
                }
                _ => None,
            },
            ..BusConfig::default()
        };
        if let Some(path) = &self.config {
            #[derive(Deserialize)]
            struct Outer {
                #[serde(default)]
                bus: BusConfig,
                #[serde(default)]
                agent: Option<AgentPart>,
            }
            #[derive(Deserialize)]
            struct AgentPart {
                data_dir: Option<PathBuf>,
            }
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let (theirs, data_dir) = toml::from_str::<Outer>(&text)
                .map(|o| (o.bus, o.agent.map(|a| a.data_dir.unwrap_or_else(|| "switchboard-agent".into()))))
                .or_else(|_| toml::from_str::<toml::Table>(&text).map(|_| (BusConfig::default(), None)))
                .with_context(|| format!("{}: no usable [bus] table", path.display()))?;
            bus.cluster = theirs.cluster.clone();
            bus.prefix = theirs.prefix.clone();
            bus.connect = theirs.connect.clone();
            // An agent that chose its own `listen` wrote it down in its data directory (a relative
            // one is the agent's working directory's: here, or where the file is).
            let beside = path.parent().unwrap_or(Path::new("."));
            let listening: Vec<String> = data_dir
                .iter()
                .flat_map(|d| [d.clone(), beside.join(d)])
                .flat_map(|d| switchboard_bus::config::read_listening(&d))
                .collect();
            for e in theirs.listen.iter().chain(&listening).map(|e| e.replace("0.0.0.0", "127.0.0.1")) {
                if !bus.connect.contains(&e) {
                    bus.connect.push(e);
                }
            }
            if bus.tls.is_none() {
                bus.tls = theirs.tls;
            }
        }
        if bus.tls.is_none() {
            if let Some(e) = bus.connect.iter().find(|e| e.starts_with("quic/") || e.starts_with("tls/")) {
                anyhow::bail!(
                    "{e} is a TLS endpoint: give this tool's certificate with --tls-ca, --tls-cert and \
                     --tls-key (or SWITCHBOARD_TLS_CA/_CERT/_KEY), or --config with a member's config \
                     that has [bus.tls] (docs/security.md)"
                );
            }
        }
        bus.node = format!("limits-cli-{}", std::process::id());
        Ok(bus)
    }
}

/// What a limit shared by `nodes` nodes may admit beyond its rate in one period, where that is
/// more than a tenth of the rate: each node passes whole units (docs/limits-api.md, "Small
/// limits").
fn small_limits(limits: &[LimitSpec], nodes: usize) -> Vec<String> {
    limits
        .iter()
        .filter_map(|l| {
            let (rate, most, per) = (l.rate?, l.most_per_period(nodes)?, per_name(l.per));
            (nodes > 1 && most.saturating_sub(rate).saturating_mul(10) > rate).then(|| {
                format!(
                    "{}: {rate} per {per} over {nodes} nodes can admit up to {most} in one {per}, as each node \
                     passes whole units (docs/limits-api.md, \"Small limits\")",
                    l.key
                )
            })
        })
        .collect()
}

/// The rate limits of at least 10 per second whose burst lets a node with half an even share
/// (nodes split a burst by their shares, which follow demand) pass one unit at once: requests
/// that are not spaced to such a node's share then pass less than the rate (docs/limits-api.md,
/// "Semantics").
fn thin_bursts(limits: &[LimitSpec], nodes: usize) -> Vec<String> {
    let nodes = nodes.max(1);
    limits
        .iter()
        .filter_map(|l| {
            let rate = l.rate?;
            let half_share = l.burst_of_share(0.5 / nodes as f64);
            (l.per.unwrap_or(Per::Second) == Per::Second && rate >= 10 && half_share == 1).then(|| {
                format!(
                    "{}: a burst of {} over {nodes} node(s), split by their demand, lets a node with half an even \
                     share or less pass 1 unit at once, so requests not spaced to its share pass less than the rate \
                     (as few as half); give it `burst = {}` or more (docs/limits-api.md, \"Semantics\")",
                    l.key,
                    l.burst_units(),
                    6 * nodes
                )
            })
        })
        .collect()
}

/// No agent answered with its limits: the command exits 2, as `switchboard status` does when
/// nothing answered, so a script tells "cannot see the cluster" from "a problem was found" (1).
#[derive(Debug)]
pub struct NoNodeAnswered(String);

impl std::fmt::Display for NoNodeAnswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoNodeAnswered {}

/// The exit code of a failed `limits` command: 2 when no node answered, 1 otherwise.
pub fn failure_code(e: &anyhow::Error) -> i32 {
    if e.is::<NoNodeAnswered>() {
        2
    } else {
        1
    }
}

/// Run one `limits` subcommand.
pub async fn run(cmd: LimitsCommand) -> Result<()> {
    match cmd {
        LimitsCommand::Set { file, author, message, dry_run, timeout, bus } => {
            let limits = load_limits(&file)?;
            if !dry_run {
                config_cmd::require_admin(&bus)?;
            }
            let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let conn = config_cmd::connect(&bus).await?;
            let config_cmd::Conn { session, keys, repo } = &conn;
            let histories = histories(session, keys, &bus).await?;
            let current = newest(&histories);
            let head = config_cmd::single_head(repo)?.cloned();
            let mut files = match &head {
                Some(h) => repo.revision(session, keys, &h.id).await?.files,
                None => BTreeMap::new(),
            };
            let entry = FileEntry::of(&text);
            files.insert(switchboard_bus::repo::tree::LIMITS_FILE.to_owned(), entry.clone());
            let changes = diff(current.as_ref().map_or(&[][..], |r| &r.limits[..]), &limits);
            out!("{} ({} limits):", switchboard_bus::repo::tree::LIMITS_FILE, limits.len());
            for c in &changes {
                out!("  {c}");
            }
            if changes.is_empty() {
                out!("  no change to the limits");
            }
            for note in small_limits(&limits, histories.len()).into_iter().chain(thin_bursts(&limits, histories.len()))
            {
                out!("note: {note}");
            }
            if dry_run {
                out!("dry run: nothing set");
                return Ok(());
            }
            if changes.is_empty() {
                // Nodes make a limits revision only from a change: there would be nothing to wait for.
                match &current {
                    Some(r) => out!("nothing pushed: revision {} stays in force", r.revision),
                    None => out!("nothing pushed"),
                }
                return Ok(());
            }
            let nodes: Vec<String> = histories.iter().map(|(n, _)| n.clone()).collect();
            let first = current.as_ref().map_or(1, |r| r.revision.saturating_add(1));
            let make = config_cmd::MakeArgs { message, author, timeout, bus };
            let rev = config_cmd::make_revision(
                &conn,
                &make,
                head.map(|h| vec![h.id]).unwrap_or_default(),
                first,
                files,
                BTreeMap::from([(entry.sha256, text)]),
                false,
            )
            .await?;
            let deadline = Instant::now() + timeout;
            loop {
                let now = fetch_histories(session, keys).await;
                let holding: Vec<&String> = now
                    .iter()
                    .filter(|(_, h)| h.current().is_some_and(|c| c.revision == rev.number && c.limits == limits))
                    .map(|(n, _)| n)
                    .collect();
                let missing: Vec<&String> = nodes.iter().filter(|n| !holding.contains(n)).collect();
                if missing.is_empty() {
                    out!(
                        "the limits of revision {} are in force on {} of {} nodes: {}",
                        rev.number,
                        holding.len(),
                        now.len().max(nodes.len()),
                        join(&holding)
                    );
                    let answered: std::collections::BTreeSet<String> = now.iter().map(|(n, _)| n.clone()).collect();
                    config_cmd::say_unanswered(session, keys, &answered).await;
                    // The limits apply whatever the gateways' reloads and working directories
                    // did; say when a node's working directory did not take the revision.
                    let id = rev.id();
                    for st in switchboard_bus::repo::wire::fetch_states(session, keys, Duration::from_secs(2)).await {
                        let Ok(st) = st else { continue };
                        if let Some(r) = st.reload.as_ref().filter(|r| r.id == id && !r.ok) {
                            out!(
                                "note: {}: the gateway's reload of revision {} failed ({}); `switchboard config status` shows it",
                                st.node, r.number, r.status
                            );
                        } else if let Some(b) = st.blocked.as_ref().filter(|b| b.id == id) {
                            out!(
                                "note: {}: its working directory is not at revision {} ({}); `switchboard config status` shows it",
                                st.node, b.number, b.why
                            );
                        }
                    }
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "revision {} was published but {} of {} nodes do not hold it after {:?}: {} (they take it when they next sync)",
                        rev.number,
                        missing.len(),
                        nodes.len(),
                        timeout,
                        join(&missing)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        LimitsCommand::List { bus } => {
            let (session, keys) = open(&bus).await?;
            let histories = histories(&session, &keys, &bus).await?;
            let current = newest(&histories);
            match &current {
                Some(r) => out!(
                    "revision {}, set {} by {}{}",
                    r.revision,
                    when(r.at_ms),
                    r.author,
                    if r.comment.is_empty() { String::new() } else { format!(": {}", r.comment) }
                ),
                None => out!("no limits set yet (`switchboard limits set FILE`)"),
            }
            if let Some(r) = &current {
                out!("{:<32} {:>12} {:>8} {:>12} {:>8}", "KEY", "RATE", "PER", "CONCURRENCY", "BURST");
                for l in &r.limits {
                    out!(
                        "{:<32} {:>12} {:>8} {:>12} {:>8}",
                        l.key,
                        l.rate.map_or("-".into(), |v| v.to_string()),
                        l.rate.map_or("-", |_| per_name(l.per)),
                        l.concurrency.map_or("-".into(), |v| v.to_string()),
                        match (l.rate, l.burst) {
                            (None, _) => "-".to_owned(),
                            (Some(_), Some(b)) => b.to_string(),
                            (Some(_), None) => format!("{} (1%)", l.burst_units()),
                        }
                    );
                }
            }
            out!("nodes:");
            let newest_no = current.as_ref().map_or(0, |r| r.revision);
            // During a configuration conflict a node keeps its limits: one behind stays behind.
            let conflict = switchboard_bus::repo::wire::fetch_states(&session, &keys, Duration::from_secs(2))
                .await
                .iter()
                .any(|s| s.as_ref().is_ok_and(|s| s.heads.len() > 1));
            let mut apart = Vec::new();
            for (node, h) in &histories {
                let (n, theirs) = (h.current_number(), h.current());
                let same_limits = theirs.map(|r| &r.limits) == current.as_ref().map(|r| &r.limits);
                let note = match theirs {
                    // Two revisions of one number, with other limits: set on two sides of a
                    // partition (the same limits set on both sides are no conflict of limits).
                    Some(r) if n == newest_no && Some(r) != current.as_ref() && !same_limits => {
                        apart.push(node.as_str());
                        format!("  (other limits: set {} by {}: {})", when(r.at_ms), r.author, r.comment)
                    }
                    _ if n == newest_no || same_limits => String::new(),
                    Some(r) if conflict => {
                        apart.push(node.as_str());
                        format!(
                            "  (other limits, kept during the configuration conflict: set {} by {}: {})",
                            when(r.at_ms),
                            r.author,
                            r.comment
                        )
                    }
                    _ => "  (behind: takes the newest at its next sync)".to_owned(),
                };
                out!("  {node:<24} revision {n}{note}");
            }
            // The nodes that did not answer: what the cluster's processes last saw of them.
            for (node, seen) in config_cmd::down_nodes(&session, &keys).await {
                if histories.iter().any(|(n, _)| *n == node) {
                    continue;
                }
                match seen {
                    config_cmd::NodeSeen::Down(since) => {
                        out!(
                            "  {}: it takes the newest revision when it starts or resumes",
                            config_cmd::down_text(&node, since)
                        )
                    }
                    config_cmd::NodeSeen::Silent => {
                        out!(
                            "  {node:<24} did not answer: stopped just now, hung, or not linked to this tool (with \
                             `gossip = false`, give its endpoint with another --connect)"
                        )
                    }
                }
            }
            if !apart.is_empty() {
                anyhow::bail!(
                    "{} {} other limits than the newest revision's (set apart, during a partition): \
                     `switchboard config status` shows the conflict, `switchboard config resolve` settles it",
                    apart.join(", "),
                    if apart.len() == 1 { "enforces" } else { "enforce" }
                );
            }
            Ok(())
        }
        LimitsCommand::History { bus } => {
            let (session, keys) = open(&bus).await?;
            let histories = histories(&session, &keys, &bus).await?;
            // Each revision with the one before it in a node's history: two made apart (in a
            // partition) each show their change from the revision they were made on.
            let mut all: BTreeMap<(u64, u64, String), (Revision, Vec<LimitSpec>)> = BTreeMap::new();
            for (_, h) in histories {
                let mut previous: Vec<LimitSpec> = Vec::new();
                for r in h.revisions {
                    let limits = r.limits.clone();
                    all.entry((r.revision, r.at_ms, r.author.clone())).or_insert((r, previous));
                    previous = limits;
                }
            }
            let mut numbers: BTreeMap<u64, usize> = BTreeMap::new();
            for (n, _, _) in all.keys() {
                *numbers.entry(*n).or_default() += 1;
            }
            for (r, previous) in all.values() {
                let apart = if numbers.get(&r.revision).is_some_and(|&k| k > 1) {
                    "  (set apart: another revision has this number)"
                } else {
                    ""
                };
                out!("revision {}  {}  {}  {}{apart}", r.revision, when(r.at_ms), r.author, r.comment);
                for c in diff(previous, &r.limits) {
                    out!("    {c}");
                }
            }
            if all.is_empty() {
                out!("no revisions yet");
            }
            Ok(())
        }
    }
}

pub(crate) async fn open(bus: &BusArgs) -> Result<(zenoh::Session, KeySpace)> {
    let config = bus.bus_config()?;
    let keys = KeySpace::new(&config.effective_prefix())?;
    let session = session::open(&config, None).await.context("joining the bus")?;
    OPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(session.clone());
    Ok((session, keys))
}

/// The sessions a command opened, for [`close_sessions`]. Dropping the last handle of a zenoh
/// session closes it waiting up to 10 s for its links, which a peer hung within its lease costs
/// in full after the command's work is done; the handle kept here makes the drop a no-op.
static OPEN: std::sync::Mutex<Vec<zenoh::Session>> = std::sync::Mutex::new(Vec::new());

/// Close what [`open`] opened, waiting at most a second each: what a command sent is out by then
/// (pushes and queries were answered), so a hung peer no longer holds the command's exit.
pub(crate) async fn close_sessions() {
    let open = std::mem::take(&mut *OPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for s in open {
        match tokio::time::timeout(Duration::from_secs(1), s.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the bus session"),
            // Still closing: dropping it would wait the rest of zenoh's 10 s; the process is
            // about to exit, which ends its links all the same.
            Err(_) => std::mem::forget(s),
        }
    }
}

async fn histories(session: &zenoh::Session, keys: &KeySpace, bus: &BusArgs) -> Result<Vec<(String, History)>> {
    // The session is still connecting to the peers of the first node it reached: ask until two
    // answers in a row come from the same nodes (at most about 3 s).
    let mut h: Vec<(String, History)> = Vec::new();
    let mut previous: Option<Vec<String>> = None;
    for _ in 0..10 {
        h = fetch_histories(session, keys).await;
        let mut names: Vec<String> = h.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        if !names.is_empty() && previous.as_ref() == Some(&names) {
            break;
        }
        previous = Some(names);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if h.is_empty() {
        return Err(NoNodeAnswered(format!(
            "no node answered on {}/limits/config/*: is an agent of this cluster with limits enabled running and \
             reachable at {}? {CLUSTER_HINT}",
            keys.prefix(),
            bus.bus_config()?.connect.join(", ")
        ))
        .into());
    }
    h.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(h)
}

/// The number a first configuration revision takes: above every limits revision made before the
/// repository held the limits, so that the limits' numbers keep rising.
pub async fn first_number(session: &zenoh::Session, keys: &KeySpace) -> u64 {
    let h = fetch_histories(session, keys).await;
    newest(&h).map_or(1, |r| r.revision.saturating_add(1))
}

/// The newest revision any node holds.
fn newest(histories: &[(String, History)]) -> Option<Revision> {
    histories.iter().filter_map(|(_, h)| h.current()).max_by(|a, b| a.order(b)).cloned()
}

/// What changed between two sets of limits, one line per key.
pub fn diff(old: &[LimitSpec], new: &[LimitSpec]) -> Vec<String> {
    let old: BTreeMap<&str, &LimitSpec> = old.iter().map(|s| (s.key.as_str(), s)).collect();
    let new: BTreeMap<&str, &LimitSpec> = new.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut out = Vec::new();
    for (k, n) in &new {
        match old.get(k) {
            None => out.push(format!("+ {k}: {}", describe(n))),
            Some(o) if o != n => out.push(format!("~ {k}: {} -> {}", describe(o), describe(n))),
            Some(_) => {}
        }
    }
    for (k, o) in &old {
        if !new.contains_key(k) {
            out.push(format!("- {k}: {}", describe(o)));
        }
    }
    out
}

fn describe(s: &LimitSpec) -> String {
    match (s.rate, s.concurrency) {
        (Some(r), _) => {
            let burst = s.burst.map_or(String::new(), |b| format!(" (burst {b})"));
            format!("{r}/{}{burst}", per_name(s.per))
        }
        (None, Some(c)) => format!("{c} concurrent"),
        (None, None) => "nothing".to_owned(),
    }
}

fn per_name(per: Option<Per>) -> &'static str {
    match per.unwrap_or(Per::Second) {
        Per::Second => "second",
        Per::Minute => "minute",
        Per::Hour => "hour",
    }
}

fn when(at_ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms as i64)
        .map_or_else(|| at_ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn join(names: &[&String]) -> String {
    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_limits_are_named_with_what_they_can_admit() {
        let spec =
            |key: &str, rate, per| LimitSpec { key: key.into(), rate: Some(rate), per, concurrency: None, burst: None };
        let limits = [spec("slow:*", 1, Some(Per::Hour)), spec("operator:*", 500, None), spec("ten", 10, None)];
        let notes = small_limits(&limits, 2);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("slow:*: 1 per hour over 2 nodes can admit up to 2 in one hour"), "{notes:?}");
        assert_eq!(small_limits(&limits, 3).len(), 2, "10/s over 3 nodes: up to 12");
        assert!(small_limits(&limits, 1).is_empty(), "one node keeps to the rate");
    }

    #[test]
    fn bursts_of_one_unit_per_node_are_named() {
        let spec = |key: &str, rate, burst| LimitSpec {
            key: key.into(),
            rate: Some(rate),
            per: None,
            concurrency: None,
            burst,
        };
        let limits = [spec("operator:*", 300, None), spec("wide", 300, Some(30)), spec("trickle", 5, None)];
        let notes = thin_bursts(&limits, 3);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("operator:*: a burst of 3 over 3 node(s)") && notes[0].contains("burst = 18"));
        // 6 units over 3 nodes is 2 each when demand is even; a node asking half as much gets 1.
        assert_eq!(thin_bursts(&[spec("mid", 600, None)], 3).len(), 1, "600/s, default burst 6");
        assert_eq!(thin_bursts(&[spec("mid", 600, Some(18))], 3), Vec::<String>::new(), "18 units");
        assert_eq!(thin_bursts(&[spec("big", 10_000, None)], 3), Vec::<String>::new(), "100 units per burst");
        assert_eq!(thin_bursts(&[spec("one", 50, None)], 1).len(), 1, "under 100/s on one node");
    }

    #[test]
    fn limits_files_are_checked_and_diffs_name_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.toml");
        std::fs::write(
            &path,
            "[[limit]]\nkey = \"operator:*\"\nrate = 500\n\n[[limit]]\nkey = \"domain:*\"\nconcurrency = 20\n",
        )
        .unwrap();
        let specs = load_limits(&path).unwrap();
        assert_eq!(specs.len(), 2);
        std::fs::write(&path, "[[limit]]\nkey = \"x\"\nrate = 1\nconcurrency = 2\n").unwrap();
        assert!(format!("{:#}", load_limits(&path).unwrap_err()).contains("exactly one of"));
        std::fs::write(&path, "[[limits]]\nkey = \"x\"\n").unwrap();
        assert!(load_limits(&path).is_err());
        let mut changed = specs.clone();
        changed[0].rate = Some(600);
        changed.remove(1);
        let d = diff(&specs, &changed);
        assert_eq!(d, vec!["~ operator:*: 500/second -> 600/second", "- domain:*: 20 concurrent"]);
    }
}
