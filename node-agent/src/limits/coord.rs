//! Coordination of cluster-wide limits over the bus: this node's part.
//!
//! Every `interval` each node publishes its smoothed demand per limit key, and the slots it
//! holds of each concurrency key, on `<prefix>/counter/<node>` (one small JSON document for all
//! keys: batched, not per decision). It then sets its share of every key from the latest reports
//! of the nodes it knows ([`switchboard_bus::limits::share`]): shares of the known nodes sum to 1.
//!
//! The known nodes are the live agents plus those that vanished *silently*. A node whose
//! liveliness token disappears while its reports were still arriving has exited (a clean stop,
//! a crash, kill -9: the kernel closes its connections at once), or its link to this node was
//! reset (a firewall, a NAT) while it lives on: this node asks the views of the processes it
//! reaches ([`switchboard_bus::mesh::seen_elsewhere`]) [`EXIT_CHECK_DELAY`] later, its share held
//! meanwhile. Seen by none of those that answered, it exited: it is forgotten and its share and
//! held slots go to the others at the next tick. Seen by another, or when no other process
//! answered (this node may be the one cut off), it is held as a silent node. A node that went silent first and whose
//! token vanished only when the zenoh lease expired may be dead or may sit behind a network
//! partition; the bus cannot tell. By default its share stays reserved for `silent_hold`: during
//! a partition each side keeps to the shares of the nodes it can see, so the cluster as a whole
//! stays within the limit. After `silent_hold` the node is forgotten and its share is freed.
//! From the moment another node's reports stop arriving (three intervals, long before its lease
//! expires) shares are frozen: each follows demand up to what it was when the freeze began,
//! never past it, because the other side goes on using the share it had and cannot see a new
//! split.
//!
//! A first use of a concurrency key takes the slots the coordination worked out for this node,
//! and none until it has: a key another node reports holding takes none before the next tick,
//! and after a start no key takes any before this node has heard every live node.
//!
//! Concurrency limits are split in whole slots: each node's allotment is its share rounded down,
//! the slots left over go to the largest remainders (ties by name), and a node never takes more
//! than the limit minus what every other node may hold or reports holding, so a node whose
//! share shrank while it held slots is not double-counted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zenoh::Session;

use switchboard_bus::keys::{KeySpace, Role};
use switchboard_bus::limits::share::{share_of, Demand};
use switchboard_bus::limits::{DemandReport, Limiter};
use switchboard_bus::mesh::Sighting;
use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::{Member, Membership};

/// Timing of the coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordSettings {
    /// How often demand is published and shares are set.
    pub interval: Duration,
    /// The zenoh lease in force: a node whose last report is older than half of it when its
    /// token vanishes went silent first (see the module docs).
    pub lease: Duration,
    /// How long the share of a silently vanished node stays reserved.
    pub silent_hold: Duration,
}

impl Default for CoordSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            lease: Duration::from_secs(3),
            silent_hold: Duration::from_secs(30),
        }
    }
}

impl CoordSettings {
    /// A report younger than this when a node's token vanishes means the node exited.
    fn exit_window(&self) -> Duration {
        (self.lease / 2).max(self.interval * 3)
    }
}

/// How long after a node's token vanished with its reports fresh this node asks whether another
/// process still sees it: long enough for a real exit to reach every process (its connections
/// close at once), short enough to hand an exited node's share on within a second.
const EXIT_CHECK_DELAY: Duration = Duration::from_millis(300);
/// A vanished node whose check gave no answer within this long is held as a silent node (the
/// check itself waits at most a second for the views).
const EXIT_CHECK_LIMIT: Duration = Duration::from_secs(5);

/// Ticks after the start before a first use of a concurrency key takes slots (see [`run`]).
const SETTLING_TICKS: u32 = 3;

/// How this node sees one known node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerView {
    /// `live`, `vanished` (its token went while its reports were arriving; asking whether
    /// another process still sees it; its share is held) or `silent` (vanished silently, or
    /// still seen by another process; its share is held); for this node itself, `cut_off` while
    /// it takes no share (see `CutOff`).
    pub state: &'static str,
    /// Milliseconds since its last report (none yet: `null`).
    pub last_report_ms: Option<u64>,
    /// For `silent`: milliseconds until it is forgotten; for `cut_off`, until the hold ends.
    pub forget_in_ms: Option<u64>,
}

#[derive(Default)]
struct Peer {
    /// The report the shares are worked out from: the newest of an earlier tick.
    report: Option<DemandReport>,
    /// Reports of this tick or later, oldest first, waiting for their turn (at most
    /// [`MAX_WAITING`]).
    waiting: std::collections::VecDeque<DemandReport>,
    heard: Option<Instant>,
    silent_since: Option<Instant>,
    /// When its token went while its reports were fresh, until the check says whether it
    /// exited or is cut off from here.
    vanished: Option<Instant>,
    /// Its last report said it is stopping: its token going is an exit.
    leaving: bool,
}

/// Reports of a node kept for a later tick: a clock further ahead than this many intervals has
/// its reports taken early rather than piling up.
const MAX_WAITING: usize = 4;

impl Peer {
    /// A report arrived (or this node made one).
    fn offer(&mut self, report: DemandReport) {
        self.waiting.push_back(report);
        if self.waiting.len() > MAX_WAITING {
            self.report = self.waiting.pop_front();
        }
    }

    /// Put in force the newest waiting report made before tick `tick` (a report without a tick
    /// at once).
    fn promote(&mut self, tick: u64) {
        while self.waiting.front().is_some_and(|r| r.tick.is_none_or(|t| t < tick)) {
            self.report = self.waiting.pop_front();
        }
    }
}

/// The coordination tick of `now` for `interval`: Unix milliseconds over the interval.
fn tick_of(now: std::time::SystemTime, interval: Duration) -> u64 {
    let ms = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    ms / (interval.as_millis() as u64).max(1)
}

/// How long until the next tick boundary of `interval` (ticks are aligned to the wall clock, so
/// every node's tick `t` begins at the same moment, to its clock's accuracy).
fn until_next_tick(interval: Duration) -> Duration {
    let every = (interval.as_millis() as u64).max(1);
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    // Just past the boundary: a timer that fires a little early by the wall clock still lands
    // in the new tick.
    Duration::from_millis(every - ms % every + 1)
}

/// Publish demand and apply shares until `cancel` fires; `view` shows the known nodes.
/// `membership` holds the agents sharing the limits, `everyone` every process (see [`CutOff`]).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    session: Session,
    keys: KeySpace,
    node: String,
    limiter: Arc<Limiter>,
    membership: Membership,
    everyone: Membership,
    settings: CoordSettings,
    view: watch::Sender<BTreeMap<String, PeerView>>,
    cancel: CancellationToken,
) {
    let (Ok(my_key), Ok(all)) = (keys.counter(&node), keys.all_counters()) else { return };
    let subscriber = match session.declare_subscriber(all).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to demand reports; limits stay at this node's last shares");
            return;
        }
    };
    let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
    // Answers of the checks of vanished nodes: (node, when it vanished, a process that still
    // sees it). One check per tick at most, for every node that vanished in it.
    let (checked_tx, mut checked) = tokio::sync::mpsc::channel::<Vec<(String, Instant, Sighting)>>(16);
    let mut demands: BTreeMap<String, (u64, Demand)> = BTreeMap::new();
    let mut last = Instant::now();
    let mut last_tick: Option<u64> = None;
    let mut applied = Applied::new();
    let mut freezes = Freezes::default();
    let mut ticks = 0u32;
    // Whether this node has once heard every live node since it started (see `apply`).
    let mut settled = false;
    // Whether, and since when, this node takes itself for cut off from all (see `CutOff`).
    let mut cut_off = CutOff::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Stopping: say so, so that the others free this node's share when its token
                // goes, without asking whether anyone still sees it.
                let bye = DemandReport { version: 1, leaving: true, ..DemandReport::default() };
                if let Err(e) = session.put(&my_key, serde_json::to_vec(&bye).unwrap_or_default()).await {
                    tracing::debug!(error = %e, "cannot say this node is leaving");
                }
                break;
            }
            Some(answers) = checked.recv() => {
                let alone = others_seen(&everyone, &node) == 0;
                for (name, at, seen_by) in answers {
                    if seen_by == Sighting::NoAnswer && peers.get(&name).and_then(|p| p.vanished) == Some(at) {
                        cut_off.suspect(alone, &name, &settings);
                    }
                    settle_vanished(&mut peers, &name, at, seen_by, &settings);
                }
            }
            sample = subscriber.recv_async() => {
                let Ok(sample) = sample else { break };
                let Some(from) = keys.parse_counter(sample.key_expr().as_str()) else { continue };
                if from == node { continue; }
                // Only a live agent has a share: a stranger's reports would make state without
                // bound and skew the shares.
                if !membership.live_of(Role::Agent).contains(&from) {
                    heard_unseen(&mut peers, &from);
                    refuse(Reason::CounterInvalid, format_args!("demand from {from:?}, which is not a live agent"));
                    continue;
                }
                match serde_json::from_slice::<DemandReport>(&sample.payload().to_bytes()) {
                    Ok(r) => match r.check() {
                        Ok(()) => {
                            // Slots another node holds or may take: none here until the next
                            // tick works out this node's part of them.
                            for key in r.held.keys().chain(r.allotted.keys()) {
                                if !applied.contains_key(key) {
                                    limiter.hold_first_use(key);
                                }
                            }
                            if r.leaving {
                                leaving(&mut peers, &from);
                                continue;
                            }
                            let p = peers.entry(from).or_default();
                            p.offer(r);
                            (p.heard, p.leaving) = (Some(Instant::now()), false);
                        }
                        Err(e) => refuse(Reason::CounterInvalid, format_args!("demand from {from}: {e}")),
                    },
                    Err(e) => refuse(Reason::CounterInvalid, format_args!("a malformed demand report from {from}: {e}")),
                }
            }
            _ = tokio::time::sleep(until_next_tick(settings.interval)) => {
                // Shares of this tick come from every node's report of an earlier one, this
                // node's too: all nodes split by the same demand, so the shares they work out
                // sum to 1 (and slots to the limit) even while demand moves.
                let now_tick = tick_of(std::time::SystemTime::now(), settings.interval);
                if last_tick == Some(now_tick) {
                    continue; // woken twice in one tick
                }
                last_tick = Some(now_tick);
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let me = peers.entry(node.clone()).or_default();
                let mut fresh = my_report(&limiter, &mut demands, dt);
                fresh.tick = Some(now_tick);
                me.offer(fresh);
                me.heard = Some(Instant::now());
                for p in peers.values_mut() {
                    p.promote(now_tick);
                }
                let live: BTreeSet<String> =
                    membership.live_of(Role::Agent).into_iter().chain([node.clone()]).collect();
                // Only agents seen again end a cut-off: the agents are the ones that may have
                // freed this node's share, and one that sees it again takes it back into the
                // split; a collector seen again alone (the links to the agents still cut)
                // changes nothing of theirs. And all of them: an agent the others split with
                // that does not see this node yet still splits without it.
                cut_off.note_company(others_seen(&everyone, &node), &settings);
                let waiting = cut_off.since.and_then(|since| splits_without(&node, &peers, &live, since));
                cut_off.end_if(live.len().saturating_sub(1), waiting.as_deref(), &settings);
                let vanished: Vec<(String, Instant)> = reconcile(&mut peers, &live, &settings)
                    .into_iter()
                    .filter_map(|name| Some((name.clone(), peers.get(&name)?.vanished?)))
                    .collect();
                if !vanished.is_empty() {
                    let (session, keys, tx) = (session.clone(), keys.clone(), checked_tx.clone());
                    let me = Member { role: Role::Agent, name: node.clone() };
                    tokio::spawn(async move {
                        tokio::time::sleep(EXIT_CHECK_DELAY).await;
                        let members: Vec<Member> =
                            vanished.iter().map(|(name, _)| Member { role: Role::Agent, name: name.clone() }).collect();
                        let mut seen = switchboard_bus::mesh::seen_elsewhere(&session, &keys, &me, &members).await;
                        let answers = vanished
                            .into_iter()
                            .map(|(name, at)| {
                                let sighting = seen
                                    .remove(&Member { role: Role::Agent, name: name.clone() })
                                    .unwrap_or(Sighting::NoAnswer);
                                (name, at, sighting)
                            })
                            .collect();
                        let _ = tx.send(answers).await;
                    });
                }
                let silent = someone_silent(&node, &peers, settings.interval * 3);
                let frozen = silent.is_some();
                freezes.note(silent.as_deref());
                // Until this node has once heard every live node since it started (and given
                // the bus a few ticks to name them all) it takes no share of any key: the others
                // still split the whole limit without it, and another may hold every slot of a
                // concurrency key.
                ticks = ticks.saturating_add(1);
                let heard_all = ticks > SETTLING_TICKS && peers.values().all(|p| p.report.is_some());
                settled |= heard_all;
                // A live node whose report of the last tick has not arrived (late: a busy host).
                let behind = peers.iter().any(|(name, p)| {
                    *name != node && p.report.as_ref().is_none_or(|r| r.tick.is_some_and(|t| t.saturating_add(1) < now_tick))
                });
                apply(&node, &limiter, &peers, &mut applied, frozen, settled, behind, cut_off.active());
                let first_use = if heard_all && !cut_off.active() { 1.0 / peers.len().max(1) as f64 } else { 0.0 };
                limiter.set_first_use_slots(first_use);
                // Published after applying, so the allotments in it are the ones in force.
                let first_use_share = Some(first_use);
                if let Some(mine) = peers.get_mut(&node).and_then(|me| me.waiting.back_mut()) {
                    mine.allotted = applied.iter().filter(|(_, a)| a.1 != u64::MAX).map(|(k, a)| (k.clone(), a.1)).collect();
                    mine.shares = applied.iter().filter(|(_, a)| a.1 == u64::MAX).map(|(k, a)| (k.clone(), a.2)).collect();
                    mine.first_use_share = first_use_share;
                    mine.agents = live.iter().cloned().collect();
                    if let Err(e) = session.put(&my_key, serde_json::to_vec(&*mine).unwrap_or_default()).await {
                        tracing::debug!(error = %e, "cannot publish demand");
                    }
                }
                let mut seen = peers_view(&peers, &settings);
                if let (Some(me), Some(left)) = (seen.get_mut(&node), cut_off.hold_left(&settings)) {
                    (me.state, me.forget_in_ms) = (CUT_OFF, Some(left.as_millis() as u64));
                }
                view.send_replace(seen);
            }
        }
    }
}

/// This node's report: smoothed demand per key, plus held slots for concurrency keys.
fn my_report(limiter: &Limiter, demands: &mut BTreeMap<String, (u64, Demand)>, dt: f64) -> DemandReport {
    let mut r = DemandReport { version: 1, ..DemandReport::default() };
    for u in limiter.usage() {
        let d = demands.entry(u.key.clone()).or_default();
        if d.0 != u.state_id {
            // The key's counts started again from zero (new revision, or forgotten while idle).
            *d = (u.state_id, Demand::default());
        }
        let mut rate = d.1.update(u.allowed + u.denied, dt);
        if let Some((_, held)) = u.slots {
            rate += held as f64;
            r.held.insert(u.key.clone(), held);
        }
        r.demand.insert(u.key, rate);
    }
    // Keys whose state the limiter forgot (idle) are forgotten here too.
    demands.retain(|k, _| r.demand.contains_key(k));
    r
}

/// A report came from `name`, whose token this node does not see. A node held as silent whose
/// reports still come is alive (its link is up, its token not seen here: a lost declaration
/// after a pause past the lease): its hold starts again, so its share stays reserved while they
/// come, rather than freed while it goes on using it. The report itself is not taken.
fn heard_unseen(peers: &mut BTreeMap<String, Peer>, name: &str) {
    if let Some(p) = peers.get_mut(name).filter(|p| p.silent_since.is_some()) {
        p.silent_since = Some(Instant::now());
    }
}

/// Bring the known set in line with the live set: newcomers join, silently vanished nodes are
/// held for `silent_hold`, and nodes whose token went while their reports were fresh are held
/// until a check says whether they exited ([`settle_vanished`]). Returns the nodes to check.
fn reconcile(peers: &mut BTreeMap<String, Peer>, live: &BTreeSet<String>, settings: &CoordSettings) -> Vec<String> {
    for n in live {
        let p = peers.entry(n.clone()).or_default();
        (p.silent_since, p.vanished) = (None, None);
    }
    peers.retain(|name, p| {
        let gone = p.leaving && !live.contains(name);
        if gone {
            tracing::info!(node = %name, "node left; its share is freed");
        }
        !gone
    });
    let mut to_check = Vec::new();
    peers.retain(|name, p| {
        if live.contains(name) {
            return true;
        }
        match (p.silent_since, p.vanished) {
            (Some(since), _) if since.elapsed() >= settings.silent_hold => {
                tracing::warn!(node = %name, "silent node forgotten after the hold; its share is freed");
                false
            }
            (Some(_), _) => true,
            (None, Some(at)) if at.elapsed() >= EXIT_CHECK_LIMIT => {
                tracing::warn!(node = %name, "node vanished and its check gave no answer; its share stays reserved");
                (p.silent_since, p.vanished) = (Some(at), None);
                true
            }
            (None, Some(_)) => true,
            (None, None) if p.heard.is_some_and(|h| h.elapsed() >= settings.exit_window()) => {
                tracing::warn!(
                    node = %name,
                    hold_ms = settings.silent_hold.as_millis() as u64,
                    "node vanished silently (dead, partitioned, or seen so by this node after it did not run for a while); its share stays reserved"
                );
                p.silent_since = Some(Instant::now());
                true
            }
            (None, None) => {
                p.vanished = Some(Instant::now());
                to_check.push(name.clone());
                true
            }
        }
    });
    to_check
}

/// Node `name` said it is stopping: once its token is gone (now, or at the next tick) it is
/// forgotten and its share freed, whatever a check of it would answer.
fn leaving(peers: &mut BTreeMap<String, Peer>, name: &str) {
    let Some(p) = peers.get_mut(name) else { return };
    p.leaving = true;
    if p.vanished.is_some() {
        tracing::info!(node = %name, "node left; its share is freed");
        peers.remove(name);
    }
}

/// The check of node `name`, which vanished `at`, answered: seen by none of the processes that
/// answered, it exited and is forgotten; still seen by another, only its link to this node
/// broke, and with no other answer this node cannot tell: both are held as a silent node (from
/// when it vanished). A node live again by now, or that vanished again since (the answer is of
/// an older check), is left as it is.
fn settle_vanished(
    peers: &mut BTreeMap<String, Peer>,
    name: &str,
    at: Instant,
    sighting: Sighting,
    settings: &CoordSettings,
) {
    if peers.get(name).and_then(|p| p.vanished) != Some(at) {
        return;
    }
    let hold_ms = settings.silent_hold.as_millis() as u64;
    match sighting {
        Sighting::NotSeen => {
            tracing::info!(node = %name, "node exited; its share is freed");
            peers.remove(name);
            return;
        }
        Sighting::SeenBy(observer) => tracing::warn!(
            node = %name,
            seen_by = %observer,
            hold_ms,
            "node vanished from here but {observer} still sees it (its link to this node broke); its share stays reserved"
        ),
        Sighting::NoAnswer => tracing::warn!(
            node = %name,
            hold_ms,
            "node vanished and no other process answered (this node may be cut off from all); its share stays reserved"
        ),
    }
    if let Some(p) = peers.get_mut(name) {
        (p.silent_since, p.vanished) = (Some(at), None);
    }
}

/// The state `/v1/limits` gives this node itself while it takes itself for cut off ([`CutOff`]).
pub const CUT_OFF: &str = "cut_off";

/// A node that lost every other process at once, none of them answering whether they still see
/// the agents that went, may be the one cut off (every link to it reset: a firewall that
/// rejects, a conntrack flush). Those on the other side, when two or more processes are left
/// there (agents or collectors), asked each other, saw it go nowhere, and took it for exited:
/// the agents among them split its share. So when this node saw two or more other processes
/// within the last lease and sees none now, it takes no share of any key until it sees another
/// agent again, or until the silent nodes' hold ends (then a partition is long, and each side
/// takes what it sees as the whole limit: docs/architecture.md, "Deaths and partitions"). With
/// one other process before, that one, an agent cut off too, could not have taken this node's
/// share: both hold as before.
#[derive(Debug, Default)]
struct CutOff {
    since: Option<Instant>,
    /// The most other processes seen at a tick within the last lease, and when; the count
    /// stays while none is seen. Over a lease, not one tick: links that close a tick apart
    /// (or run out their lease apart) are still lost "at once".
    company: usize,
    company_at: Option<Instant>,
}

/// Why this node, cut off since `since`, must not take a share yet, if it must not: a live
/// agent not heard since then (its newest report may be from before the cut), one whose newest
/// report does not name this node among those it splits with (it still splits without it: it
/// names it, with its own share cut to make room, once it sees it), or an agent such a report
/// names that this node does not see (that one splits without it too). A report that names no
/// agents (the field is optional) is taken to name them all.
fn splits_without(
    node: &str,
    peers: &BTreeMap<String, Peer>,
    live: &BTreeSet<String>,
    since: Instant,
) -> Option<String> {
    for name in live.iter().filter(|n| *n != node) {
        let newest = peers
            .get(name)
            .filter(|p| p.heard.is_some_and(|h| h >= since))
            .and_then(|p| p.waiting.back().or(p.report.as_ref()));
        let Some(report) = newest else { return Some(format!("no report from {name} since the cut")) };
        if !report.agents.is_empty() && !report.agents.iter().any(|a| a == node) {
            return Some(format!("{name} still splits without this node"));
        }
        if let Some(unseen) = report.agents.iter().find(|a| !live.contains(*a)) {
            return Some(format!("{name} splits with {unseen}, which this node does not see"));
        }
    }
    None
}

/// Processes live besides this node (agents of any service, collectors).
fn others_seen(everyone: &Membership, node: &str) -> usize {
    everyone.live().iter().filter(|m| !(m.role == Role::Agent && m.name == node)).count()
}

impl CutOff {
    /// Note how many other processes this node sees at a tick.
    fn note_company(&mut self, others: usize, settings: &CoordSettings) {
        let stale = self.company_at.is_none_or(|at| at.elapsed() > settings.lease);
        if others > 0 && (others >= self.company || stale) {
            (self.company, self.company_at) = (others, Some(Instant::now()));
        }
    }

    /// A vanished agent's check found no other process to answer: this node is cut off when it
    /// is `alone` now (no other process) after having had two or more others.
    fn suspect(&mut self, alone: bool, node: &str, settings: &CoordSettings) {
        let company = self.company;
        if !alone || company < 2 || self.since.is_some() {
            return;
        }
        tracing::warn!(
            vanished = node,
            hold_ms = settings.silent_hold.as_millis() as u64,
            "this node lost every other process at once (it saw {company} a moment before) and none answered: it may \
             be the one cut off, and the others may have freed its share; it admits nothing until it sees the other \
             agents again or the hold ends"
        );
        self.since = Some(Instant::now());
    }

    /// End the cut-off once other agents are seen (`agents` live besides this node) and none of
    /// them splits without it (`waiting` says why not, [`splits_without`]), or after the hold.
    fn end_if(&mut self, agents: usize, waiting: Option<&str>, settings: &CoordSettings) {
        let Some(since) = self.since else { return };
        if agents > 0 && waiting.is_none() {
            tracing::info!(agents, "this node sees the other agents again; it takes its share again");
        } else if since.elapsed() >= settings.silent_hold {
            tracing::warn!("cut off for the whole hold: this node takes what it sees as the whole limit");
        } else {
            return;
        }
        self.since = None;
    }

    fn active(&self) -> bool {
        self.since.is_some()
    }

    /// While cut off: how long until the hold ends.
    fn hold_left(&self, settings: &CoordSettings) -> Option<Duration> {
        self.since.map(|s| settings.silent_hold.saturating_sub(s.elapsed()))
    }
}

/// The log of freezes: a freeze is said when it began, at most once per [`FREEZE_SAID_EVERY`]
/// (with how many began unsaid since: on a busy host a report late by a tick freezes the shares
/// for a tick, again and again), and its end only when its beginning was said.
#[derive(Debug)]
struct Freezes {
    since: Option<Instant>,
    said: bool,
    throttle: switchboard_bus::throttle::Throttle,
}

/// How often a freeze may be said in the log.
const FREEZE_SAID_EVERY: Duration = Duration::from_secs(30);

impl Default for Freezes {
    fn default() -> Self {
        Self { since: None, said: false, throttle: switchboard_bus::throttle::Throttle::new(FREEZE_SAID_EVERY) }
    }
}

impl Freezes {
    /// Note this tick's state: `Some(why)` while someone is silent.
    fn note(&mut self, silent: Option<&str>) {
        match (silent, self.since) {
            (Some(why), None) => {
                self.since = Some(Instant::now());
                self.said = match self.throttle.admit() {
                    Some(0) => {
                        tracing::info!("shares frozen (may shrink, not grow): {why}");
                        true
                    }
                    Some(unsaid) => {
                        tracing::info!(
                            "shares frozen (may shrink, not grow): {why} ({unsaid} more began since the last one said)"
                        );
                        true
                    }
                    None => {
                        tracing::debug!("shares frozen (may shrink, not grow): {why}");
                        false
                    }
                };
            }
            (None, Some(since)) => {
                let ms = since.elapsed().as_millis();
                if std::mem::take(&mut self.said) {
                    tracing::info!("shares follow demand again, after {ms} ms frozen");
                } else {
                    tracing::debug!("shares follow demand again, after {ms} ms frozen");
                }
                self.since = None;
            }
            _ => {}
        }
    }
}

/// Which other known node is silent or whose reports stopped arriving (older than `stale`),
/// and how: the first sign of a partition, long before the lease expires (or a node busy
/// starting). `None` when every node reports.
fn someone_silent(node: &str, peers: &BTreeMap<String, Peer>, stale: Duration) -> Option<String> {
    peers.iter().filter(|(name, _)| *name != node).find_map(|(name, p)| match (p.silent_since, p.heard) {
        (Some(_), _) => Some(format!("node {name} vanished without leaving")),
        _ if p.vanished.is_some() => {
            Some(format!("node {name} vanished; asking whether another process still sees it"))
        }
        (None, Some(h)) if h.elapsed() > stale => {
            Some(format!("no demand report from node {name} for {} ms", h.elapsed().as_millis()))
        }
        _ => None,
    })
}

/// What this node last applied per key: the share it works toward (the split's; while frozen,
/// the split's from before the freeze), for concurrency keys its slots (else `u64::MAX`), the
/// share in force (the split's, or less while it lacks a report), and the slots it works toward
/// (as the first, else `u64::MAX`).
type Applied = BTreeMap<String, (f64, u64, f64, u64)>;

/// Set this node's share of every key, and its slots of every concurrency key in use. While
/// `frozen` (someone went silent), shares follow demand up to what they were when the freeze
/// began, never past it: the silent side is still using the share it had, and the split must
/// not be recomputed against its frozen demand.
#[allow(clippy::too_many_arguments)]
fn apply(
    node: &str,
    limiter: &Limiter,
    peers: &BTreeMap<String, Peer>,
    applied: &mut Applied,
    frozen: bool,
    settled: bool,
    behind: bool,
    cut_off: bool,
) {
    let n = peers.len().max(1);
    // Not settled yet (just started), or cut off from every other agent: no share at all,
    // see the caller.
    limiter.set_default_share(if settled && !cut_off { 1.0 / n as f64 } else { 0.0 });
    // A live node not heard from yet may be as busy as anyone: until it reports, take no more
    // than an equal split.
    let cap = match (settled, peers.values().any(|p| p.report.is_none())) {
        (false, _) => 0.0,
        (true, true) => 1.0 / n as f64,
        (true, false) => 1.0,
    };
    let mut per_key: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for (name, p) in peers {
        for (key, d) in p.report.iter().flat_map(|r| &r.demand) {
            per_key.entry(key.as_str()).or_default().insert(name.clone(), *d);
        }
    }
    let slot_keys: BTreeMap<String, u64> =
        limiter.usage().into_iter().filter_map(|u| u.slots.map(|(max, _)| (u.key, max))).collect();
    if !frozen {
        // Keys no node asks for any more (their state was evicted everywhere) are forgotten.
        applied.retain(|k, _| per_key.contains_key(k.as_str()));
    }
    for (key, mut demands) in per_key {
        // Every known node takes part in every key's split, with no demand if it reported none.
        for name in peers.keys() {
            demands.entry(name.clone()).or_insert(0.0);
        }
        let shares = key_shares(&demands, cap, node);
        let mut share = shares.get(node).copied().unwrap_or(0.0);
        let max = slot_keys.get(key).copied().or_else(|| limiter.slot_limit(key));
        let mut slots = max.map(|max| {
            // A live node not heard from yet may hold every slot (it may have held them before
            // this node started): it claims all of them until its first report says otherwise.
            let claimed =
                |name: &str| peers.get(name).and_then(|p| p.report.as_ref()).map_or(max, |r| r.claim(key, max));
            my_slots(node, &shares, &demands, max, claimed)
        });
        // What this node works toward: the split's share and slots; while frozen, those it had
        // when the freeze began (each tick's split below them is taken, but not kept as the
        // bound: with demand that moves, a running minimum would shrink the live nodes' shares
        // tick after tick for the whole hold).
        let (mut target, mut slot_target) = (share, slots);
        if let (true, Some(&(last_share, _, _, last_slots))) = (frozen, applied.get(key)) {
            share = share.min(last_share);
            slots = slots.map(|s| s.min(last_slots));
            (target, slot_target) = (last_share, slots.map(|_| last_slots));
        }
        if max.is_none() && behind {
            // This node lacks a report of the last tick: the others split this tick by newer
            // figures. It takes only what they leave, each by its share by these figures or
            // the share it said it applies (or would take at first use), whichever is larger,
            // so that it does not keep what they have already given to another.
            let others: f64 = shares
                .iter()
                .filter(|(name, _)| name.as_str() != node)
                .map(|(name, s)| {
                    let said =
                        peers.get(name).and_then(|p| p.report.as_ref()).map_or(1.0 / n as f64, |r| r.rate_claim(key));
                    s.max(said)
                })
                .sum();
            share = share.min((1.0 - others).max(0.0));
        }
        if cut_off {
            // The others may have taken this node for gone and split its share among them: it
            // takes nothing, and keeps working toward what it had for when it sees them again.
            (share, slots) = (0.0, slots.map(|_| 0));
        }
        match slots {
            Some(n) => limiter.set_slots(key, n, share),
            None => limiter.set_share(key, share),
        }
        applied.insert(key.to_owned(), (target, slots.unwrap_or(u64::MAX), share, slot_target.unwrap_or(u64::MAX)));
    }
}

/// Every node's share of one key (this node's capped as in [`apply`]).
fn key_shares(demands: &BTreeMap<String, f64>, cap: f64, node: &str) -> BTreeMap<String, f64> {
    demands
        .keys()
        .map(|n| (n.clone(), if n == node { share_of(n, demands).min(cap) } else { share_of(n, demands) }))
        .collect()
}

/// Whole slots of `max` for `node`: its share rounded down, leftovers by largest remainder (to
/// nodes that ask for the key first: an idle node's floor would otherwise park a slot that the
/// one node asking could never take), and never more than what the others may hold leaves free:
/// each other node's allotment by the shares, or what it claims ([`DemandReport::claim`]: holds,
/// or lets itself hold; every slot for a node not heard from yet), whichever is larger. A node
/// therefore grows only into room the others have said they left.
fn my_slots(
    node: &str,
    shares: &BTreeMap<String, f64>,
    demands: &BTreeMap<String, f64>,
    max: u64,
    claimed: impl Fn(&str) -> u64,
) -> u64 {
    let mut alloc: BTreeMap<&str, u64> = BTreeMap::new();
    let mut remainders: Vec<(bool, f64, &str)> = Vec::new();
    for (name, share) in shares {
        let exact = share * max as f64;
        let whole = exact.floor() as u64;
        alloc.insert(name, whole);
        let asks = demands.get(name).is_some_and(|d| *d > 0.0);
        remainders.push((asks, exact - whole as f64, name));
    }
    // Whole slots of shares summing to 1 (a limit is at most `MAX_VALUE`): the sums stay far
    // below the 64-bit bound; saturating all the same.
    let given = alloc.values().fold(0u64, |a, b| a.saturating_add(*b));
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(b.2)));
    for (_, _, name) in remainders.into_iter().take(max.saturating_sub(given) as usize) {
        *alloc.entry(name).or_default() += 1;
    }
    let others =
        alloc.iter().filter(|(n, _)| **n != node).map(|(n, a)| (*a).max(claimed(n))).fold(0u64, u64::saturating_add);
    alloc.get(node).copied().unwrap_or(0).min(max.saturating_sub(others))
}

fn peers_view(peers: &BTreeMap<String, Peer>, settings: &CoordSettings) -> BTreeMap<String, PeerView> {
    peers
        .iter()
        .map(|(name, p)| {
            let view = PeerView {
                state: match (p.silent_since, p.vanished) {
                    (Some(_), _) => "silent",
                    (None, Some(_)) => "vanished",
                    (None, None) => "live",
                },
                last_report_ms: p.heard.map(|h| h.elapsed().as_millis() as u64),
                forget_in_ms: p
                    .silent_since
                    .map(|s| settings.silent_hold.saturating_sub(s.elapsed()).as_millis() as u64),
            };
            (name.clone(), view)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(v: &[(&str, f64)]) -> BTreeMap<String, f64> {
        v.iter().map(|(k, s)| (k.to_string(), *s)).collect()
    }

    #[test]
    fn a_freeze_is_said_once_per_interval_and_its_end_only_when_its_beginning_was() {
        let mut f = Freezes::default();
        f.note(Some("node b vanished"));
        assert!(f.said && f.since.is_some(), "the first freeze is said");
        f.note(Some("node b vanished"));
        assert!(f.said, "a freeze that goes on is one freeze");
        f.note(None);
        assert!(!f.said && f.since.is_none(), "its end is said, and the freeze is over");
        f.note(Some("no demand report from node b for 310 ms"));
        assert!(!f.said && f.since.is_some(), "a second freeze within the interval is not said");
        f.note(None);
        assert!(f.since.is_none());
    }

    #[test]
    fn slots_are_whole_and_sum_to_the_limit() {
        let s = shares(&[("a", 0.333), ("b", 0.333), ("c", 0.334)]);
        let got: Vec<u64> = ["a", "b", "c"].iter().map(|n| my_slots(n, &s, &s, 20, |_| 0)).collect();
        assert_eq!(got.iter().sum::<u64>(), 20, "{got:?}");
        assert!(got.iter().all(|&g| g == 6 || g == 7), "{got:?}");
    }

    #[test]
    fn one_node_asking_alone_grows_into_every_slot() {
        // a asks, b and c do not: their floors (0.4 slot each) would leave the 20th slot to b.
        let demands = shares(&[("a", 50.0), ("b", 0.0), ("c", 0.0)]);
        let s: BTreeMap<String, f64> = demands.keys().map(|n| (n.clone(), share_of(n, &demands))).collect();
        let got: Vec<u64> = ["a", "b", "c"].iter().map(|n| my_slots(n, &s, &demands, 20, |_| 0)).collect();
        assert_eq!(got, [20, 0, 0]);
    }

    fn slot_limiter() -> Limiter {
        let spec = switchboard_bus::limits::LimitSpec {
            key: "k".into(),
            rate: None,
            per: None,
            concurrency: Some(20),
            burst: None,
        };
        Limiter::new(vec![spec]).unwrap()
    }

    /// One rate limit `k` of 1000/s.
    fn rate_limiter() -> Limiter {
        let spec = switchboard_bus::limits::LimitSpec {
            key: "k".into(),
            rate: Some(1000),
            per: None,
            concurrency: None,
            burst: None,
        };
        Limiter::new(vec![spec]).unwrap()
    }

    fn heard(report: DemandReport) -> Peer {
        Peer { report: Some(report), heard: Some(Instant::now()), ..Peer::default() }
    }

    #[test]
    fn a_node_grows_only_into_room_the_others_said_they_left() {
        let busy = DemandReport { version: 1, demand: [("k".to_owned(), 50.0)].into(), ..Default::default() };
        let idle = |allotted: &[(&str, u64)]| DemandReport {
            version: 1,
            allotted: allotted.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            first_use_share: Some(0.5),
            ..Default::default()
        };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        peers.insert("me".into(), heard(busy.clone()));
        peers.insert("other".into(), heard(idle(&[])));
        let (me, mut applied) = (slot_limiter(), Applied::new());
        apply("me", &me, &peers, &mut applied, false, true, false, false);
        assert_eq!(applied["k"].1, 10, "the other's first use of k may still take half");
        // The other applies the same reports: it has not used k and gets none of it.
        let other = slot_limiter();
        let mut other_applied = Applied::new();
        apply("other", &other, &peers, &mut other_applied, false, true, false, false);
        assert_eq!(other_applied["k"].1, 0);
        assert!(!other.acquire_slot("k", 1).is_allowed(), "its first use takes its allotment, not half");
        // Once it says so, this node grows into the whole limit.
        peers.insert("other".into(), heard(idle(&[("k", 0)])));
        apply("me", &me, &peers, &mut applied, false, true, false, false);
        assert_eq!(applied["k"].1, 20);
        let held = (0..30).filter(|_| me.acquire_slot("k", 1).is_allowed()).count();
        assert_eq!(held, 20);
    }

    #[test]
    fn a_frozen_share_is_held_to_its_value_at_the_freeze_not_to_its_lowest_since() {
        let l = rate_limiter();
        let report = |d: f64| DemandReport { version: 1, demand: [("k".to_owned(), d)].into(), ..Default::default() };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        for n in ["me", "other", "silent"] {
            peers.insert(n.into(), heard(report(100.0)));
        }
        let mut applied = Applied::new();
        apply("me", &l, &peers, &mut applied, false, true, false, false);
        let at_freeze = applied["k"].2;
        assert!((at_freeze - 1.0 / 3.0).abs() < 1e-9, "{at_freeze}");
        // Frozen (silent went quiet); this node's demand dips for a tick: its share follows down.
        peers.insert("me".into(), heard(report(10.0)));
        apply("me", &l, &peers, &mut applied, true, true, false, false);
        assert!(applied["k"].2 < 0.1, "{}", applied["k"].2);
        // Its demand is back: its share goes back up to what it had at the freeze, no further.
        peers.insert("me".into(), heard(report(100.0)));
        apply("me", &l, &peers, &mut applied, true, true, false, false);
        assert!((applied["k"].2 - at_freeze).abs() < 1e-9, "{}", applied["k"].2);
        peers.insert("me".into(), heard(report(1000.0)));
        apply("me", &l, &peers, &mut applied, true, true, false, false);
        assert!((applied["k"].2 - at_freeze).abs() < 1e-9, "never past it while frozen: {}", applied["k"].2);
    }

    #[test]
    fn a_node_cut_off_from_all_takes_nothing_and_works_toward_its_share_for_later() {
        let l = rate_limiter();
        let report = |d: f64| DemandReport { version: 1, demand: [("k".to_owned(), d)].into(), ..Default::default() };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        for n in ["me", "a", "b"] {
            peers.insert(n.into(), heard(report(100.0)));
        }
        let mut applied = Applied::new();
        apply("me", &l, &peers, &mut applied, true, true, false, true);
        assert_eq!(applied["k"].2, 0.0, "no share in force while cut off");
        assert!((applied["k"].0 - 1.0 / 3.0).abs() < 1e-9, "the target stays: {}", applied["k"].0);
        apply("me", &l, &peers, &mut applied, true, true, false, false);
        assert!((applied["k"].2 - 1.0 / 3.0).abs() < 1e-9, "back once it sees them: {}", applied["k"].2);

        let settings = CoordSettings::default();
        let mut cut = CutOff::default();
        cut.note_company(1, &settings);
        cut.suspect(true, "a", &settings);
        assert!(!cut.active(), "with one other process before, that one could not free this node's share");
        cut.note_company(2, &settings);
        cut.suspect(false, "a", &settings);
        assert!(!cut.active(), "another process is still seen");
        // Links that close a tick apart: the most seen within the lease counts.
        cut.note_company(1, &settings);
        cut.note_company(0, &settings);
        cut.suspect(true, "a", &settings);
        assert!(cut.active());
        cut.end_if(0, None, &settings);
        assert!(cut.active(), "still alone, within the hold");
        cut.end_if(1, Some("b"), &settings);
        assert!(cut.active(), "an agent the one seen splits with does not see this node yet");
        cut.end_if(1, None, &settings);
        assert!(!cut.active(), "another agent seen again");
    }

    #[test]
    fn a_node_back_from_a_cut_waits_until_every_agent_it_sees_splits_with_it() {
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let said = |agents: &[&str]| DemandReport { version: 1, agents: names(agents), ..Default::default() };
        let live: BTreeSet<String> = names(&["me", "a", "b"]).into_iter().collect();
        let since = Instant::now();
        let after = |r: DemandReport| Peer { report: Some(r), heard: Some(Instant::now()), ..Peer::default() };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        // Reports from before the cut name this node: they say nothing of now.
        let before = Instant::now().checked_sub(Duration::from_secs(1));
        for n in ["a", "b"] {
            peers.insert(n.into(), Peer { report: Some(said(&["a", "b", "me"])), heard: before, ..Peer::default() });
        }
        let why = |peers: &BTreeMap<String, Peer>| splits_without("me", peers, &live, since).unwrap_or_default();
        assert!(why(&peers).contains("no report from a since the cut"), "{}", why(&peers));
        peers.insert("a".into(), after(said(&["a", "b"])));
        peers.insert("b".into(), after(said(&["a", "b", "me"])));
        assert!(why(&peers).contains("a still splits without this node"), "{}", why(&peers));
        peers.insert("a".into(), after(said(&["a", "b", "me", "d"])));
        assert!(why(&peers).contains("a splits with d"), "{}", why(&peers));
        peers.insert("a".into(), after(said(&["a", "b", "me"])));
        assert_eq!(splits_without("me", &peers, &live, since), None);
        // An agent that does not say whom it splits with (the field is optional) holds nothing up.
        peers.insert("a".into(), after(said(&[])));
        assert_eq!(splits_without("me", &peers, &live, since), None);
    }

    #[test]
    fn a_node_behind_by_a_report_takes_only_what_the_others_said_they_left() {
        let l = rate_limiter();
        let report = |d: f64, shares: &[(&str, f64)]| DemandReport {
            version: 1,
            demand: [("k".to_owned(), d)].into(),
            shares: shares.iter().map(|(k, s)| (k.to_string(), *s)).collect(),
            first_use_share: Some(0.5),
            ..Default::default()
        };
        let share = |peers: &BTreeMap<String, Peer>| {
            let mut applied = Applied::new();
            apply("me", &l, peers, &mut applied, false, true, true, false);
            applied["k"].2
        };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        // This node asks for nearly everything, the other for little, by the figures this node
        // has; the other's last report here says it applies 0.6 (this node lacks its newest).
        peers.insert("me".into(), heard(report(900.0, &[])));
        peers.insert("other".into(), heard(report(100.0, &[("k", 0.6)])));
        assert!((share(&peers) - 0.4).abs() < 1e-9, "{}", share(&peers));
        // Once it says it applies what the split gives it, this node takes its own.
        let theirs = 0.02 + 0.96 * 0.1;
        peers.insert("other".into(), heard(report(100.0, &[("k", theirs)])));
        assert!((share(&peers) - (1.0 - theirs)).abs() < 1e-9, "{}", share(&peers));
        // A key the other applies no share of yet: its first use may take its first-use share.
        peers.insert("other".into(), heard(report(0.0, &[])));
        assert!((share(&peers) - 0.5).abs() < 1e-9, "{}", share(&peers));
        // With every report of the last tick here, the split is the others' too: no cap.
        let mut applied = Applied::new();
        apply("me", &l, &peers, &mut applied, false, true, false, false);
        assert!((applied["k"].2 - 0.98).abs() < 1e-9, "{}", applied["k"].2);
    }

    #[test]
    fn shares_come_from_the_reports_of_an_earlier_tick() {
        let at = |tick: Option<u64>, d: f64| DemandReport {
            version: 1,
            demand: [("k".to_owned(), d)].into(),
            tick,
            ..Default::default()
        };
        let demand = |p: &Peer| p.report.as_ref().map(|r| r.demand["k"]);
        let mut p = Peer::default();
        p.offer(at(Some(10), 1.0));
        p.promote(10);
        assert_eq!(demand(&p), None, "a report of tick 10 is not in force at tick 10");
        p.offer(at(Some(11), 2.0));
        p.promote(11);
        assert_eq!(demand(&p), Some(1.0), "at tick 11 the report of tick 10 is");
        p.promote(13);
        assert_eq!(demand(&p), Some(2.0));
        p.offer(at(None, 3.0));
        p.promote(13);
        assert_eq!(demand(&p), Some(3.0), "a report without a tick is taken at the next tick");
        // A clock far ahead: its reports do not pile up.
        for t in 100..110 {
            p.offer(at(Some(t), t as f64));
        }
        assert_eq!(p.waiting.len(), MAX_WAITING);
        assert_eq!(demand(&p), Some(105.0));
    }

    #[test]
    fn a_node_not_heard_from_yet_leaves_no_slot_free() {
        // A node starting beside one that holds every slot, live before its first report arrives.
        let busy = DemandReport { version: 1, demand: [("k".to_owned(), 50.0)].into(), ..Default::default() };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        peers.insert("me".into(), heard(busy));
        peers.insert("unheard".into(), Peer::default());
        let (me, mut applied) = (slot_limiter(), Applied::new());
        apply("me", &me, &peers, &mut applied, false, true, false, false);
        assert_eq!(applied["k"].1, 0, "its report may say it holds all 20");
        let holder = DemandReport {
            version: 1,
            held: [("k".to_owned(), 20)].into(),
            allotted: [("k".to_owned(), 20)].into(),
            ..Default::default()
        };
        peers.insert("unheard".into(), heard(holder));
        apply("me", &me, &peers, &mut applied, false, true, false, false);
        assert_eq!(applied["k"].1, 0, "and it does");
        let idle = DemandReport { version: 1, allotted: [("k".to_owned(), 0)].into(), ..Default::default() };
        peers.insert("unheard".into(), heard(idle));
        apply("me", &me, &peers, &mut applied, false, true, false, false);
        assert_eq!(applied["k"].1, 20, "one that holds none leaves them all");
    }

    #[test]
    fn a_key_another_node_holds_takes_no_slot_here_before_the_next_tick() {
        let fresh = slot_limiter();
        assert!(fresh.acquire_slot("k", 1).is_allowed(), "alone, a first use takes its default share");
        let l = slot_limiter();
        l.hold_first_use("k");
        assert!(!l.acquire_slot("k", 1).is_allowed());
        let starting = slot_limiter();
        starting.set_first_use_slots(0.0);
        assert!(!starting.acquire_slot("k", 1).is_allowed(), "not before the others are heard");
        // Its state stays at none until the coordination sets its slots.
        starting.set_first_use_slots(0.5);
        assert!(!starting.acquire_slot("k", 1).is_allowed());
        starting.set_slots("k", 10, 0.5);
        assert!(starting.acquire_slot("k", 1).is_allowed());
    }

    #[test]
    fn slots_held_above_an_allotment_are_not_given_twice() {
        // b's share fell to 0.25 (5 slots) while it still holds 10: a may take 10, not 15.
        let s = shares(&[("a", 0.75), ("b", 0.25)]);
        assert_eq!(my_slots("a", &s, &s, 20, |n| if n == "b" { 10 } else { 0 }), 10);
        assert_eq!(my_slots("a", &s, &s, 20, |_| 0), 15);
    }

    fn peer(heard_ago: Duration) -> Peer {
        Peer { report: Some(DemandReport::default()), heard: Instant::now().checked_sub(heard_ago), ..Peer::default() }
    }

    #[test]
    fn exited_nodes_are_forgotten_and_silent_ones_held() {
        let settings = CoordSettings {
            interval: Duration::from_millis(100),
            lease: Duration::from_secs(2),
            silent_hold: Duration::from_millis(300),
        };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        peers.insert("me".into(), peer(Duration::ZERO));
        peers.insert("killed".into(), peer(Duration::from_millis(150)));
        peers.insert("cut-off".into(), peer(Duration::from_secs(2)));
        peers.insert("reset".into(), peer(Duration::from_millis(150)));
        let live: BTreeSet<String> = ["me".to_owned()].into();
        let to_check = reconcile(&mut peers, &live, &settings);
        assert_eq!(to_check, ["killed", "reset"], "nodes whose reports were fresh are checked");
        assert!(peers["killed"].vanished.is_some() && peers["reset"].vanished.is_some(), "held meanwhile");
        assert!(reconcile(&mut peers, &live, &settings).is_empty(), "each is checked once");
        assert!(peers["cut-off"].silent_since.is_some(), "a silent node is held");
        let at = |peers: &BTreeMap<String, Peer>, n: &str| peers[n].vanished.unwrap();
        let older = at(&peers, "killed") - Duration::from_millis(1);
        settle_vanished(&mut peers, "killed", older, Sighting::NotSeen, &settings);
        assert!(peers.contains_key("killed"), "the answer of an older check settles nothing");
        let killed_at = at(&peers, "killed");
        settle_vanished(&mut peers, "killed", killed_at, Sighting::NotSeen, &settings);
        assert!(!peers.contains_key("killed"), "seen by none that answered: it exited");
        let reset_at = at(&peers, "reset");
        settle_vanished(&mut peers, "reset", reset_at, Sighting::SeenBy("collector/c1".into()), &settings);
        assert!(peers["reset"].silent_since.is_some(), "still seen elsewhere: held as silent");
        peers.insert("alone".into(), peer(Duration::from_millis(10)));
        reconcile(&mut peers, &live, &settings);
        let alone_at = at(&peers, "alone");
        settle_vanished(&mut peers, "alone", alone_at, Sighting::NoAnswer, &settings);
        assert!(peers["alone"].silent_since.is_some(), "no one else answered: held as silent");
        peers.insert("unseen".into(), Peer { silent_since: Some(Instant::now()), ..peer(Duration::from_secs(2)) });
        for _ in 0..7 {
            std::thread::sleep(Duration::from_millis(50));
            heard_unseen(&mut peers, "unseen");
            heard_unseen(&mut peers, "stranger");
        }
        reconcile(&mut peers, &live, &settings);
        for n in ["cut-off", "reset", "alone"] {
            assert!(!peers.contains_key(n), "{n} is forgotten after the hold");
        }
        assert!(peers.contains_key("unseen"), "its reports still come: held past the hold");
        assert!(!peers.contains_key("stranger"), "a name not known makes no state");
        // A node that said it is leaving is forgotten when its token goes, before or after.
        peers.insert("bye".into(), peer(Duration::ZERO));
        leaving(&mut peers, "bye");
        assert!(peers.contains_key("bye"), "still live");
        reconcile(&mut peers, &live, &settings);
        assert!(!peers.contains_key("bye"), "its token went after its last report");
        peers.insert("late-bye".into(), peer(Duration::ZERO));
        assert_eq!(reconcile(&mut peers, &live, &settings), ["late-bye"]);
        leaving(&mut peers, "late-bye");
        assert!(!peers.contains_key("late-bye"), "its last report came after its token went");
        // A node that comes back is live again.
        peers.insert("back".into(), Peer { silent_since: Some(Instant::now()), ..peer(Duration::ZERO) });
        let live: BTreeSet<String> = ["me".to_owned(), "back".to_owned()].into();
        reconcile(&mut peers, &live, &settings);
        assert!(peers["back"].silent_since.is_none());
    }

    #[test]
    fn a_silent_nodes_share_stays_reserved() {
        let l = rate_limiter();
        let report = |d: f64| DemandReport {
            version: 1,
            demand: [("k".to_owned(), d)].into(),
            shares: [("k".to_owned(), 0.5)].into(),
            ..Default::default()
        };
        let mut peers: BTreeMap<String, Peer> = BTreeMap::new();
        peers.insert(
            "me".into(),
            Peer { report: Some(report(500.0)), heard: Some(Instant::now()), silent_since: None, ..Peer::default() },
        );
        peers.insert(
            "other".into(),
            Peer {
                report: Some(report(500.0)),
                heard: Some(Instant::now()),
                silent_since: Some(Instant::now()),
                ..Peer::default()
            },
        );
        apply("me", &l, &peers, &mut Applied::new(), true, true, false, false);
        let share = l.usage().first().map(|u| u.share);
        assert!(share.is_none(), "no state made by apply");
        assert!(l.try_acquire("k", 1).is_allowed());
        let share = l.usage()[0].share;
        assert!((share - 0.5).abs() < 1e-9, "{share}");
    }
}
