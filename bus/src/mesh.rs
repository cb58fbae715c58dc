//! The mesh check: does every process see every process that is alive?
//!
//! zenoh peers do not route for each other: a peer reaches only the peers it has a link to. A
//! cluster whose agents cannot reach each other (no `listen` endpoint, a firewall) therefore
//! splits silently: each agent shares the limits with itself alone and resolves only its own DLRs.
//! This module makes that visible.
//!
//! - Every long-running process answers the queryable `<prefix>/view/<role>/<name>` with a
//!   [`View`]: the processes whose liveliness tokens it sees ([`Mesh::start`]).
//! - Every 2 s it asks all views it can reach and compares them with its own live set
//!   ([`assess`]): a process that another one sees but this one does not is *unreachable* from
//!   here; a process this one sees that a peer's view lacks is a *missing link* of that peer.
//!   A problem counts once it has lasted [`SETTLE`] (joins and deaths take a moment to reach
//!   everyone); each one is logged when it starts and when it ends, and [`Mesh::problems`] feeds
//!   `/health` (degraded) and `/metrics`.
//! - A process it cannot reach, though another one sees it, has usually lost a link that zenoh
//!   does not dial again ([`crate::links`]): once that has lasted [`SETTLE`], the check asks the
//!   views again naming it (`?address_of=<role>/<name>`), and each process that reaches it
//!   relays the address that process gave in its own view; the check dials the address most of
//!   them relay, again after 2, 4, ... up to 60 s while it stays unreachable (not with `gossip =
//!   false` or as a `client`: there every link goes where `connect` says). At most
//!   [`MAX_DIALS_PER_POLL`] dials start per poll and [`MAX_DIALS_IN_FLIGHT`] run at once, so
//!   forged views cannot make a process dial without bound.
//! - Before a process announces itself, [`check_name_free`] asks the same views and the
//!   liveliness tokens whether its name is already alive, so a second agent started with the same
//!   node name is refused instead of silently mixing its data with the first one's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::{Session, Wait};

use crate::keys::{KeySpace, Role};
use crate::links::{Address, Dialed, Links};
use crate::membership::{Member, Membership};
use crate::session::SessionError;

/// Version of the view document.
pub const VIEW_VERSION: u32 = 1;
/// How often a process compares its view with the others'.
pub const POLL: Duration = Duration::from_secs(2);
/// How long a difference must last before it counts as a problem.
pub const SETTLE: Duration = Duration::from_secs(3);
/// How long a view query waits for answers.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Members one view may list, at most (a larger document is refused).
const MAX_MEMBERS: usize = 10_000;
/// Members taken from all views of one poll together; views beyond are not read. Bounds what
/// peers (or anyone on the bus) can make a poll hold.
const MAX_MEMBERS_PER_POLL: usize = 100_000;
/// Bytes of one view document, at most (10,000 members of 100 bytes and 17 addresses fit).
const MAX_VIEW_BYTES: usize = 2 << 20;
/// Bytes of all views of one poll together; views beyond are not read.
const MAX_BYTES_PER_POLL: usize = 32 << 20;
/// Problems tracked at most; more are not recorded (the first ones already say what is wrong).
const MAX_PROBLEMS: usize = 1_000;
/// The longest wait between two dials of a process that stays unreachable.
const MAX_REDIAL_WAIT: Duration = Duration::from_secs(60);
/// Dials started in one poll, at most (the others wait for a later poll).
pub const MAX_DIALS_PER_POLL: usize = 4;
/// Dials running at once, at most (one may take a connection timeout per locator).
pub const MAX_DIALS_IN_FLIGHT: usize = 8;
/// Processes whose relayed address one view query asks for, at most.
const MAX_ASKED_ADDRESSES: usize = 16;
/// The query parameter that asks a view to relay the addresses of the processes it names.
const ADDRESS_OF: &str = "address_of";

/// ms since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What one process sees: the answer of its view queryable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Always [`VIEW_VERSION`].
    pub version: u32,
    /// The live processes it sees, as `<role>/<name>` (e.g. `node/gw1`, `collector/c1`),
    /// itself included.
    pub live: Vec<String>,
    /// Where processes are, by `<role>/<name>`: its own address and, when the query asked for
    /// them (`address_of`), those of the named processes it reaches, as each gave it in its own
    /// view. Absent from views of older versions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, Address>,
}

impl View {
    fn of(live: &BTreeSet<Member>, addresses: BTreeMap<String, Address>) -> Self {
        Self { version: VIEW_VERSION, live: live.iter().map(member_chunk).collect(), addresses }
    }

    /// Decode a view; `None` for a malformed, oversized or unknown-version document. Addresses
    /// out of bounds or that do not parse are left out of it.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_VIEW_BYTES {
            return None;
        }
        let mut view: View = serde_json::from_slice(bytes).ok()?;
        // Its own address and those asked for, at most: more is never read.
        if view.version != VIEW_VERSION
            || view.live.len() > MAX_MEMBERS
            || view.addresses.len() > MAX_ASKED_ADDRESSES + 1
        {
            return None;
        }
        view.addresses.retain(|_, a| a.is_valid());
        Some(view)
    }

    /// The address `member` gave for itself, as this view lists it.
    fn address_of(&self, member: &Member) -> Option<&Address> {
        self.addresses.get(&member_chunk(member))
    }

    fn members(&self) -> BTreeSet<Member> {
        self.live.iter().filter_map(|s| parse_member_chunk(s)).collect()
    }
}

fn member_chunk(m: &Member) -> String {
    format!("{}/{}", m.role.as_str(), m.name)
}

fn parse_member_chunk(s: &str) -> Option<Member> {
    Role::parse_member(s).map(|(role, name)| Member { role, name })
}

/// A difference between this process's view and another's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MeshProblem {
    /// `member` is alive according to `seen_by`, but this process has no link to it.
    Unreachable {
        /// The process this one cannot see.
        member: Member,
        /// A process that sees it.
        seen_by: Member,
    },
    /// This process sees both, but `observer` does not see `missing`.
    MissingLink {
        /// The process whose view lacks `missing`.
        observer: Member,
        /// The process it does not see.
        missing: Member,
    },
}

/// Whether `problem` ended since the last poll found it: a process unreachable from here that
/// this one sees live now (its link came back, a dial got through) is no longer one, though the
/// next poll, up to 2 s away, is what takes it off the list.
fn mended(problem: &MeshProblem, live: &BTreeSet<Member>) -> bool {
    matches!(problem, MeshProblem::Unreachable { member, .. } if live.contains(member))
}

impl std::fmt::Display for MeshProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeshProblem::Unreachable { member, seen_by } => write!(
                f,
                "{} is alive (seen by {}) but not reachable from here",
                member_chunk(member),
                member_chunk(seen_by)
            ),
            MeshProblem::MissingLink { observer, missing } => {
                write!(f, "{} does not see {}", member_chunk(observer), member_chunk(missing))
            }
        }
    }
}

/// Compare `mine` (this process's live set; `me` is this process) with the views of the others.
/// `since` says when each member of `mine` was first seen: a member seen for less than
/// [`SETTLE`] is not yet expected in the others' views.
pub fn assess(
    me: &Member,
    mine: &BTreeSet<Member>,
    since: &BTreeMap<Member, Instant>,
    views: &BTreeMap<Member, BTreeSet<Member>>,
    now: Instant,
) -> BTreeSet<MeshProblem> {
    let settled = |m: &Member| since.get(m).is_some_and(|t| now.saturating_duration_since(*t) >= SETTLE);
    let mut problems = BTreeSet::new();
    for (observer, theirs) in views {
        if observer == me {
            continue;
        }
        for member in theirs {
            if member != me && !mine.contains(member) && problems.len() < MAX_PROBLEMS {
                problems.insert(MeshProblem::Unreachable { member: member.clone(), seen_by: observer.clone() });
            }
        }
        if !mine.contains(observer) {
            continue;
        }
        for member in mine {
            if member != observer
                && !theirs.contains(member)
                && settled(member)
                && settled(observer)
                && problems.len() < MAX_PROBLEMS
            {
                problems.insert(MeshProblem::MissingLink { observer: observer.clone(), missing: member.clone() });
            }
        }
    }
    problems
}

#[derive(Default)]
struct State {
    /// Problems seen, with when each was first seen.
    pending: BTreeMap<MeshProblem, Instant>,
    /// Problems whose start was logged (their end is logged too).
    warned: BTreeSet<MeshProblem>,
    /// Processes this one saw, with when each was first seen.
    since: BTreeMap<Member, Instant>,
    /// The addresses the processes this one reaches gave in their own views at the last poll.
    known: BTreeMap<Member, Address>,
    /// Unreachable processes this one dials: when next, and the wait after that.
    redial: BTreeMap<Member, (Instant, Duration)>,
}

/// What the mesh check counts of its dials.
#[derive(Default)]
struct Dials {
    /// Dials of an unreachable process (through at least one locator).
    tried: AtomicU64,
    /// Of those, dials after which a link to it was open.
    opened: AtomicU64,
    /// Of those, dials that found a link open already, carrying none of its declarations, and
    /// shut it down.
    reset: AtomicU64,
    /// Dials running now.
    running: std::sync::atomic::AtomicUsize,
}

/// The running mesh check of one process.
#[derive(Clone)]
pub struct Mesh {
    state: Arc<Mutex<State>>,
    /// View answers that could not be read (malformed, oversized, unknown version, bad key).
    malformed: Arc<AtomicU64>,
    dials: Arc<Dials>,
    membership: Membership,
    /// This process's runtime, to dial unreachable processes.
    links: Links,
    /// When the last poll that completed began (ms since the Unix epoch; 0: none yet).
    assessed_from_ms: Arc<AtomicU64>,
}

impl Mesh {
    /// Answer this process's view queryable and compare views every [`POLL`] until `cancel`;
    /// dial the processes it finds unreachable through `links`.
    pub async fn start(
        session: &Session,
        keys: &KeySpace,
        me: Member,
        membership: Membership,
        links: Links,
        cancel: CancellationToken,
    ) -> Result<Self, SessionError> {
        let mesh = Self {
            state: Arc::new(Mutex::new(State::default())),
            malformed: Arc::default(),
            dials: Arc::default(),
            membership,
            links,
            assessed_from_ms: Arc::default(),
        };
        let key = keys.view(me.role, &me.name)?;
        let queryable = {
            let (mesh, me, key) = (mesh.clone(), me.clone(), key.clone());
            session
                .declare_queryable(key.clone())
                .callback(move |query| {
                    let asked = query.parameters().get(ADDRESS_OF).map(parse_asked).unwrap_or_default();
                    let body = serde_json::to_vec(&mesh.view(&me, &asked)).unwrap_or_default();
                    if let Err(e) = query.reply(key.clone(), body).wait() {
                        tracing::debug!(error = %e, "cannot answer a view query");
                    }
                })
                .await
                .map_err(|e| SessionError::Zenoh(e.to_string()))?
        };
        let (session, keys, task) = (session.clone(), keys.clone(), mesh.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let began = now_ms();
                let views = fetch_views(&session, &keys, &task.malformed, &[]).await;
                let due = task.update(&me, &views, Instant::now());
                task.assessed_from_ms.store(began, Ordering::Relaxed);
                if due.is_empty() {
                    continue;
                }
                let asked: Vec<Member> = due.iter().map(|(m, _)| m.clone()).collect();
                let relays = fetch_views(&session, &keys, &task.malformed, &asked).await;
                for (member, seen_by) in due {
                    match relayed_address(&member, &seen_by, &relays) {
                        Some(address) => task.dial(member, address),
                        None => {
                            tracing::debug!(process = %member_chunk(&member), "bus mesh: no process relays an address of an unreachable process")
                        }
                    }
                }
            }
            drop(queryable);
        });
        Ok(mesh)
    }

    /// This process's view: what it sees, its own address, and those of the `asked` processes
    /// it reaches.
    fn view(&self, me: &Member, asked: &[Member]) -> View {
        let live = self.membership.live();
        let mut addresses = BTreeMap::new();
        addresses.insert(member_chunk(me), self.links.address());
        if let Ok(st) = self.state.lock() {
            for m in asked.iter().filter(|m| live.contains(*m) && *m != me) {
                if let Some(a) = st.known.get(m) {
                    addresses.insert(member_chunk(m), a.clone());
                }
            }
        }
        View::of(&live, addresses)
    }

    /// Dial `member` at `address` in the background.
    fn dial(&self, member: Member, address: Address) {
        let (links, dials, membership) = (self.links.clone(), self.dials.clone(), self.membership.clone());
        // A link to the id of a process seen alive here (by the address its own view gives) is
        // never reset: a view that names that id for another process is wrong or forged.
        let may_reset = self.state.lock().is_ok_and(|st| !st.known.values().any(|a| a.zid == address.zid));
        dials.running.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let who = member_chunk(&member);
            match links.dial(&address, may_reset, || !membership.live().contains(&member)).await {
                Dialed::Opened => {
                    dials.tried.fetch_add(1, Ordering::Relaxed);
                    dials.opened.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(process = %who, locators = ?address.locators, "bus mesh: dialed an unreachable process");
                }
                Dialed::Reset(shut) => {
                    dials.tried.fetch_add(1, Ordering::Relaxed);
                    dials.reset.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        process = %who,
                        connections = shut,
                        "bus mesh: a link to a process whose token is not seen here was open (its declarations were \
                         lost, as after a pause of about the lease): its connections were shut down, for a fresh link"
                    );
                }
                Dialed::Failed => {
                    dials.tried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(process = %who, locators = ?address.locators, "bus mesh: dialing an unreachable process failed");
                }
                Dialed::Nothing => {
                    tracing::debug!(process = %who, locators = ?address.locators, "bus mesh: no locator of a protocol this process uses")
                }
            }
            dials.running.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Take one poll's `views` in; the unreachable processes to dial now, each with a process
    /// that sees it.
    fn update(&self, me: &Member, views: &BTreeMap<Member, View>, now: Instant) -> Vec<(Member, Member)> {
        let mine = self.membership.live();
        let Ok(mut st) = self.state.lock() else { return Vec::new() };
        st.since.retain(|m, _| mine.contains(m));
        for m in &mine {
            st.since.entry(m.clone()).or_insert(now);
        }
        st.known = views
            .iter()
            .filter(|(m, _)| *m != me && mine.contains(*m))
            .filter_map(|(m, v)| Some((m.clone(), v.address_of(m)?.clone())))
            .collect();
        let seen: BTreeMap<Member, BTreeSet<Member>> = views.iter().map(|(m, v)| (m.clone(), v.members())).collect();
        let found = assess(me, &mine, &st.since, &seen, now);
        let ended: Vec<MeshProblem> = st.pending.keys().filter(|p| !found.contains(*p)).cloned().collect();
        for p in ended {
            st.pending.remove(&p);
            if st.warned.remove(&p) {
                tracing::info!(problem = %p, "bus mesh: resolved");
            }
        }
        for p in found {
            let first = *st.pending.entry(p.clone()).or_insert(now);
            // Logged once, on the poll that first finds it settled (polls may come late).
            if now.saturating_duration_since(first) >= SETTLE && st.warned.insert(p.clone()) {
                tracing::warn!(
                    problem = %p,
                    "bus mesh: processes do not all see each other, so limits, DLR lookups and \
                     replication are split until the link is back; the mesh check dials an unreachable \
                     process again (a link reset comes back so within seconds; if it does not, give every \
                     agent a `listen` endpoint its peers can reach: the default is the address it uses to \
                     reach its first `connect` endpoint)"
                );
            }
        }
        if !self.links.may_dial() {
            return Vec::new();
        }
        let room =
            MAX_DIALS_PER_POLL.min(MAX_DIALS_IN_FLIGHT.saturating_sub(self.dials.running.load(Ordering::Relaxed)));
        let st = &mut *st;
        due_dials(&st.pending, &mut st.redial, room, now)
    }

    /// The processes alive on the bus, as this process sees them (the membership it compares
    /// with the others' views).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether a poll that began at or after `at_ms` (ms since the Unix epoch) has completed:
    /// what [`Mesh::unreachable_now`] says covers what happened before `at_ms`.
    pub fn assessed_since(&self, at_ms: u64) -> bool {
        self.assessed_from_ms.load(Ordering::Relaxed) >= at_ms
    }

    /// The processes alive according to another one but unreachable from here at the last poll
    /// (however short a time), each with a process that sees it.
    pub fn unreachable_now(&self) -> Vec<(Member, Member)> {
        let live = self.membership.live();
        let Ok(st) = self.state.lock() else { return Vec::new() };
        st.pending
            .keys()
            .filter(|p| !mended(p, &live))
            .filter_map(|p| match p {
                MeshProblem::Unreachable { member, seen_by } => Some((member.clone(), seen_by.clone())),
                MeshProblem::MissingLink { .. } => None,
            })
            .collect()
    }

    /// The problems that have lasted at least [`SETTLE`], as the poll that found them so logged
    /// them (a problem over before a poll saw it settled is neither logged nor shown).
    pub fn problems(&self) -> Vec<MeshProblem> {
        let live = self.membership.live();
        let Ok(st) = self.state.lock() else { return Vec::new() };
        st.pending.keys().filter(|p| st.warned.contains(*p) && !mended(p, &live)).cloned().collect()
    }

    /// The mesh part of a `/health` body: what this process sees and what is wrong.
    pub fn health(&self) -> serde_json::Value {
        let live: Vec<String> = self.membership.live().iter().map(member_chunk).collect();
        let problems: Vec<String> = self.problems().iter().map(ToString::to_string).collect();
        serde_json::json!({ "sees": live, "problems": problems })
    }

    /// Add the mesh gauges to a `/metrics` exposition.
    pub fn metrics(&self, m: &mut crate::http::Metrics) {
        let problems = self.problems();
        let unreachable = problems.iter().filter(|p| matches!(p, MeshProblem::Unreachable { .. })).count();
        let mut members: Vec<&Member> = problems
            .iter()
            .filter_map(|p| match p {
                MeshProblem::Unreachable { member, .. } => Some(member),
                MeshProblem::MissingLink { .. } => None,
            })
            .collect();
        members.sort();
        members.dedup();
        mesh_families(
            m,
            [self.membership.live().len(), members.len(), problems.len() - unreachable],
            [
                self.malformed.load(Ordering::Relaxed),
                self.dials.tried.load(Ordering::Relaxed),
                self.dials.opened.load(Ordering::Relaxed),
                self.dials.reset.load(Ordering::Relaxed),
            ],
        );
    }
}

/// The mesh check's families before a process has joined the bus: every one at 0.
pub fn idle_metrics(m: &mut crate::http::Metrics) {
    mesh_families(m, [0; 3], [0; 4]);
}

/// The mesh check's families: `gauges` live, unreachable, missing links; `counters` malformed
/// views, dials, dials opened, links reset.
fn mesh_families(m: &mut crate::http::Metrics, gauges: [usize; 3], counters: [u64; 4]) {
    let [live, unreachable, missing] = gauges.map(|g| g as f64);
    let [malformed, tried, opened, reset] = counters;
    m.gauge(
            "switchboard_mesh_live_processes",
            "Processes this one sees alive (itself included).",
            live,
        )
        .gauge(
            "switchboard_mesh_unreachable_processes",
            "Processes alive according to others that this one has no link to.",
            unreachable,
        )
        .gauge(
            "switchboard_mesh_missing_links",
            "Pairs of processes this one sees where one does not see the other.",
            missing,
        )
        .counter(
            "switchboard_mesh_malformed_views_total",
            "Views of other processes left out: malformed, oversized, of an unknown version or under a bad key.",
            malformed,
        )
        .counter(
            "switchboard_mesh_dials_total",
            "Dials of a process alive according to others but unreachable from here.",
            tried,
        )
        .counter(
            "switchboard_mesh_dials_opened_total",
            "Dials after which a link to that process was open.",
            opened,
        )
        .counter(
            "switchboard_mesh_links_reset_total",
            "Dials that found a link to that process open but carrying none of its declarations, and shut its connections down.",
            reset,
        );
}

/// The processes unreachable (per `pending`) for [`SETTLE`] whose next dial is due at `now`, at
/// most `room` of them, each with a process that sees it; each dial doubles the wait before the
/// next one, up to [`MAX_REDIAL_WAIT`]. `redial` keeps the schedule.
fn due_dials(
    pending: &BTreeMap<MeshProblem, Instant>,
    redial: &mut BTreeMap<Member, (Instant, Duration)>,
    room: usize,
    now: Instant,
) -> Vec<(Member, Member)> {
    let unreachable: BTreeMap<&Member, &Member> = pending
        .iter()
        .filter(|(_, first)| now.saturating_duration_since(**first) >= SETTLE)
        .filter_map(|(p, _)| match p {
            MeshProblem::Unreachable { member, seen_by } => Some((member, seen_by)),
            MeshProblem::MissingLink { .. } => None,
        })
        .collect();
    redial.retain(|m, _| unreachable.contains_key(m));
    // Due: never dialed first, then the longest overdue, so that many at once take turns.
    let mut candidates: Vec<(Option<Instant>, &Member, &Member)> = unreachable
        .into_iter()
        .map(|(member, seen_by)| (redial.get(member).map(|(next, _)| *next), member, seen_by))
        .filter(|(next, _, _)| next.is_none_or(|n| n <= now))
        .collect();
    candidates.sort_by_key(|(next, _, _)| *next);
    let mut due = Vec::new();
    for (_, member, seen_by) in candidates.into_iter().take(room) {
        let wait = redial.get(member).map_or(POLL, |(_, wait)| *wait);
        redial.insert(member.clone(), (now + wait, (wait * 2).min(MAX_REDIAL_WAIT)));
        due.push((member.clone(), seen_by.clone()));
    }
    due
}

/// The address of `member` that most of the `relays` give (a view relays what `member` gave in
/// its own view); between as many, the one `seen_by` relays, then the first.
fn relayed_address(member: &Member, seen_by: &Member, relays: &BTreeMap<Member, View>) -> Option<Address> {
    let mut votes: Vec<(&Address, usize, bool)> = Vec::new();
    for (observer, view) in relays.iter().filter(|(o, _)| *o != member) {
        let Some(a) = view.address_of(member) else { continue };
        match votes.iter_mut().find(|(b, _, _)| *b == a) {
            Some(v) => {
                v.1 += 1;
                v.2 |= observer == seen_by;
            }
            None => votes.push((a, 1, observer == seen_by)),
        }
    }
    votes.into_iter().max_by_key(|(_, n, by_seer)| (*n, *by_seer)).map(|(a, _, _)| a.clone())
}

/// The processes a view query asks addresses of (`address_of=node/gw2|node/gw3`), at most
/// [`MAX_ASKED_ADDRESSES`]; names that do not parse are left out.
fn parse_asked(value: &str) -> Vec<Member> {
    value.split('|').take(MAX_ASKED_ADDRESSES).filter_map(parse_member_chunk).collect()
}

/// Ask every reachable process for its view, and for the addresses of the `asked` processes;
/// malformed, oversized or unknown-version answers are counted in `malformed` and left out, and
/// at most [`MAX_MEMBERS_PER_POLL`] members are taken in all.
async fn fetch_views(
    session: &Session,
    keys: &KeySpace,
    malformed: &AtomicU64,
    asked: &[Member],
) -> BTreeMap<Member, View> {
    let mut out = BTreeMap::new();
    let (mut members, mut bytes) = (0usize, 0usize);
    let Ok(all) = keys.all_views() else { return out };
    let parameters = match asked {
        [] => String::new(),
        _ => {
            let names: Vec<String> = asked.iter().take(MAX_ASKED_ADDRESSES).map(member_chunk).collect();
            format!("{ADDRESS_OF}={}", names.join("|"))
        }
    };
    let Ok(replies) = session
        .get((all, parameters))
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(QUERY_TIMEOUT)
        .await
    else {
        return out;
    };
    while let Ok(reply) = replies.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let Some((role, name)) = keys.parse_view(sample.key_expr().as_str()) else {
            malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let payload = sample.payload().to_bytes();
        bytes = bytes.saturating_add(payload.len());
        if bytes > MAX_BYTES_PER_POLL {
            tracing::debug!("views of over {MAX_BYTES_PER_POLL} bytes in all; the rest are not read");
            break;
        }
        match View::decode(&payload) {
            Some(v) => {
                members = members.saturating_add(v.live.len()).saturating_add(v.addresses.len());
                if members > MAX_MEMBERS_PER_POLL {
                    tracing::debug!("views list over {MAX_MEMBERS_PER_POLL} members in all; the rest are not read");
                    break;
                }
                out.insert(Member { role, name }, v);
            }
            None => {
                malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%name, "ignoring a malformed view");
            }
        }
    }
    out
}

/// What the other processes' views say of a process that left this one's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sighting {
    /// A process other than this one and it sees it alive (`<role>/<name>`): its link to this
    /// one broke; it did not exit.
    SeenBy(String),
    /// Other processes answered and none sees it: it left.
    NotSeen,
    /// No process other than this one and those asked about answered: this one may be cut off
    /// from everyone, and cannot tell.
    NoAnswer,
}

/// What the views reachable from here say of each of `members`, from one fresh ask.
pub async fn seen_elsewhere(
    session: &Session,
    keys: &KeySpace,
    me: &Member,
    members: &[Member],
) -> BTreeMap<Member, Sighting> {
    let views = fetch_views(session, keys, &AtomicU64::new(0), &[]).await;
    let answered = views.keys().any(|o| o != me && !members.contains(o));
    members
        .iter()
        .map(|member| {
            let seen_by = views
                .iter()
                .find(|(observer, view)| *observer != me && *observer != member && view.members().contains(member))
                .map(|(observer, _)| member_chunk(observer));
            let sighting = match (seen_by, answered) {
                (Some(by), _) => Sighting::SeenBy(by),
                (None, true) => Sighting::NotSeen,
                (None, false) => Sighting::NoAnswer,
            };
            (member.clone(), sighting)
        })
        .collect()
}

/// Refuse to start a second live process under the same name: ask the liveliness tokens and the
/// views of every process reachable now. Call after opening the session, before announcing.
///
/// A process of that name that answers (its own view) runs: the name is refused at once. One
/// stopped just now (kill -9 on a `quic/` link, where no connection closes: its peers see it
/// gone only when the bus `lease` runs out), or hung, still looks alive without answering: the
/// name is asked again every half second for the lease and one second more (logged) before it
/// is refused, so a supervisor that restarts a killed process at once does not fail.
pub async fn check_name_free(
    session: &Session,
    keys: &KeySpace,
    me: &Member,
    lease: Duration,
) -> Result<(), SessionError> {
    let started = Instant::now();
    let patience = lease + Duration::from_secs(1);
    let mut said = false;
    loop {
        let Some((seen_by, answers)) = who_has_name(session, keys, me).await? else { return Ok(()) };
        if answers || started.elapsed() >= patience {
            return Err(SessionError::NameTaken { name: member_chunk(me), seen_by });
        }
        // Not on the first ask: a session just opened may see the token before the process's
        // own answer can reach it.
        if started.elapsed() >= NAME_RETRY && !std::mem::replace(&mut said, true) {
            tracing::info!(
                "{} still looks alive (seen by {seen_by}): a process of that name stopped just now holds the name \
                 until the bus lease ({} ms) runs out; waiting up to {} ms",
                member_chunk(me),
                lease.as_millis(),
                patience.as_millis()
            );
        }
        tokio::time::sleep(NAME_RETRY).await;
    }
}

/// How often [`check_name_free`] asks again.
const NAME_RETRY: Duration = Duration::from_millis(500);

/// Who says a process of `me`'s name is alive (itself, answering with its view; its token; or
/// another process's view), if any, and whether it answered itself (it runs).
async fn who_has_name(session: &Session, keys: &KeySpace, me: &Member) -> Result<Option<(String, bool)>, SessionError> {
    let views = fetch_views(session, keys, &AtomicU64::new(0), &[]).await;
    if views.contains_key(me) {
        return Ok(Some(("itself: it answers on the bus".into(), true)));
    }
    let token = keys.member(me.role, &me.name)?;
    if let Ok(replies) = session.liveliness().get(&token).timeout(QUERY_TIMEOUT).await {
        if let Ok(reply) = replies.recv_async().await {
            if reply.result().is_ok() {
                return Ok(Some(("its own token".into(), false)));
            }
        }
    }
    Ok(views.iter().find(|(_, view)| view.members().contains(me)).map(|(observer, _)| (member_chunk(observer), false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(n: &str) -> Member {
        Member { role: Role::Agent, name: n.into() }
    }
    fn coll(n: &str) -> Member {
        Member { role: Role::Collector, name: n.into() }
    }
    fn set(ms: &[Member]) -> BTreeSet<Member> {
        ms.iter().cloned().collect()
    }

    #[test]
    fn a_split_star_is_seen_from_both_ends() {
        let t0 = Instant::now();
        let now = t0 + SETTLE;
        let all = set(&[agent("gw1"), agent("gw2"), coll("c1")]);
        let since: BTreeMap<Member, Instant> = all.iter().map(|m| (m.clone(), t0)).collect();
        // The collector sees both agents; each agent sees only itself and the collector.
        let views = BTreeMap::from([
            (agent("gw1"), set(&[agent("gw1"), coll("c1")])),
            (agent("gw2"), set(&[agent("gw2"), coll("c1")])),
            (coll("c1"), all.clone()),
        ]);
        let at_collector = assess(&coll("c1"), &all, &since, &views, now);
        assert_eq!(
            at_collector,
            BTreeSet::from([
                MeshProblem::MissingLink { observer: agent("gw1"), missing: agent("gw2") },
                MeshProblem::MissingLink { observer: agent("gw2"), missing: agent("gw1") },
            ])
        );
        // gw1 reaches only the collector, which sees gw2.
        let gw1_sees = set(&[agent("gw1"), coll("c1")]);
        let views_at_gw1 = BTreeMap::from([(coll("c1"), all.clone()), (agent("gw1"), gw1_sees.clone())]);
        let at_gw1 = assess(&agent("gw1"), &gw1_sees, &since, &views_at_gw1, now);
        assert_eq!(at_gw1, BTreeSet::from([MeshProblem::Unreachable { member: agent("gw2"), seen_by: coll("c1") }]));
        assert!(at_gw1.iter().next().unwrap().to_string().contains("node/gw2 is alive (seen by collector/c1)"));
    }

    #[test]
    fn a_full_mesh_and_fresh_joiners_are_fine() {
        let t0 = Instant::now();
        let all = set(&[agent("gw1"), agent("gw2"), coll("c1")]);
        let views: BTreeMap<Member, BTreeSet<Member>> = all.iter().map(|m| (m.clone(), all.clone())).collect();
        let since: BTreeMap<Member, Instant> = all.iter().map(|m| (m.clone(), t0)).collect();
        assert!(assess(&agent("gw1"), &all, &since, &views, t0 + SETTLE).is_empty());
        // gw3 just joined here and is not yet in the others' views: not a problem yet.
        let mut mine = all.clone();
        mine.insert(agent("gw3"));
        let mut since = since;
        since.insert(agent("gw3"), t0 + SETTLE);
        assert!(assess(&agent("gw1"), &mine, &since, &views, t0 + SETTLE).is_empty());
    }

    #[test]
    fn what_a_view_can_claim_is_bounded() {
        let t0 = Instant::now();
        let me = set(&[agent("gw1")]);
        let since: BTreeMap<Member, Instant> = me.iter().map(|m| (m.clone(), t0)).collect();
        let claimed: BTreeSet<Member> = (0..5_000).map(|i| agent(&format!("ghost{i}"))).collect();
        let views = BTreeMap::from([(coll("c1"), claimed)]);
        assert_eq!(assess(&agent("gw1"), &me, &since, &views, t0 + SETTLE).len(), MAX_PROBLEMS);
        let live: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("node/n{i}")).collect();
        let too_many = serde_json::to_vec(&View { version: VIEW_VERSION, live, addresses: BTreeMap::new() }).unwrap();
        assert!(View::decode(&too_many).is_none());
        let at = |zid: &str| Address { zid: zid.into(), locators: vec!["tcp/127.0.0.1:7447".into()] };
        let addresses: BTreeMap<String, Address> =
            (0..=MAX_MEMBERS).map(|i| (format!("node/n{i}"), at("a1"))).collect();
        let too_many = View { version: VIEW_VERSION, live: vec![], addresses };
        assert!(View::decode(&serde_json::to_vec(&too_many).unwrap()).is_none());
        // An address that does not parse is left out, the view kept.
        let bad = View::of(
            &set(&[agent("gw1")]),
            BTreeMap::from([("node/gw1".to_owned(), at("not an id")), ("node/gw2".to_owned(), at("a2"))]),
        );
        let read = View::decode(&serde_json::to_vec(&bad).unwrap()).unwrap();
        assert_eq!(read.addresses.keys().collect::<Vec<_>>(), ["node/gw2"]);
    }

    #[test]
    fn views_decode_strictly() {
        let v = View::of(&set(&[agent("gw1"), coll("c1")]), BTreeMap::new());
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), r#"{"version":1,"live":["node/gw1","collector/c1"]}"#);
        assert_eq!(View::decode(&bytes).unwrap().members(), set(&[agent("gw1"), coll("c1")]));
        let at = Address { zid: "a1b2".into(), locators: vec!["tcp/10.0.0.5:7447".into()] };
        let v = View::of(&set(&[agent("gw1")]), BTreeMap::from([("node/gw1".to_owned(), at.clone())]));
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"version":1,"live":["node/gw1"],"addresses":{"node/gw1":{"zid":"a1b2","locators":["tcp/10.0.0.5:7447"]}}}"#
        );
        assert_eq!(View::decode(&bytes).unwrap().address_of(&agent("gw1")), Some(&at));
        assert!(View::decode(br#"{"version":2,"live":[]}"#).is_none());
        assert!(View::decode(b"\xff").is_none());
        let unknown_role = View::decode(br#"{"version":1,"live":["router/r1","node/gw1"]}"#).unwrap();
        assert_eq!(unknown_role.members(), set(&[agent("gw1")]));
    }

    #[test]
    fn an_unreachable_process_is_dialed_ever_less_often_and_few_at_a_time() {
        let t0 = Instant::now();
        let split = |n: &str| MeshProblem::Unreachable { member: agent(n), seen_by: coll("c1") };
        let pending = BTreeMap::from([(split("gw2"), t0)]);
        let mut redial = BTreeMap::new();
        let due = |redial: &mut BTreeMap<Member, (Instant, Duration)>, after: u64| {
            due_dials(&pending, redial, MAX_DIALS_PER_POLL, t0 + Duration::from_millis(after))
        };
        assert!(due(&mut redial, 1_000).is_empty(), "not before the problem has settled");
        let mut dialed = Vec::new();
        for ms in (3_000..200_000).step_by(500) {
            for pair in due(&mut redial, ms) {
                assert_eq!(pair, (agent("gw2"), coll("c1")));
                dialed.push(ms);
            }
        }
        let gaps: Vec<u64> = dialed.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps[..6], [2_000, 4_000, 8_000, 16_000, 32_000, 60_000], "{dialed:?}");
        assert!(gaps[6..].iter().all(|g| *g == 60_000), "{dialed:?}");
        // The problem ended: the schedule is forgotten.
        assert!(due_dials(&BTreeMap::new(), &mut redial, 4, t0 + Duration::from_secs(300)).is_empty());
        assert!(redial.is_empty());
        // Many unreachable at once: `room` of them per poll, the others at the next polls.
        let many: BTreeMap<MeshProblem, Instant> = (0..10).map(|i| (split(&format!("g{i}")), t0)).collect();
        let first = due_dials(&many, &mut redial, 4, t0 + SETTLE);
        let second = due_dials(&many, &mut redial, 4, t0 + SETTLE + POLL);
        assert_eq!((first.len(), second.len()), (4, 4));
        assert!(first.iter().all(|d| !second.contains(d)), "{first:?} then {second:?}");
        assert!(due_dials(&many, &mut redial, 0, t0 + SETTLE + POLL * 2).is_empty(), "no room: none");
    }

    #[test]
    fn the_address_most_relays_give_is_dialed() {
        let at = |zid: &str| Address { zid: zid.into(), locators: vec!["tcp/127.0.0.1:7447".into()] };
        let relaying = |zid: &str| View::of(&BTreeSet::new(), BTreeMap::from([("node/gw2".to_owned(), at(zid))]));
        let gw2 = agent("gw2");
        // Two relays agree against the one that reported it: the majority wins.
        let relays = BTreeMap::from([
            (agent("gw3"), relaying("a2")),
            (agent("gw4"), relaying("a2")),
            (coll("c1"), relaying("b7")),
        ]);
        assert_eq!(relayed_address(&gw2, &coll("c1"), &relays), Some(at("a2")));
        // As many each way: the one the process that sees it relays.
        let relays = BTreeMap::from([(agent("gw3"), relaying("a2")), (coll("c1"), relaying("b7"))]);
        assert_eq!(relayed_address(&gw2, &coll("c1"), &relays), Some(at("b7")));
        // What gw2 says of itself through a view under its own name is not a relay.
        let relays = BTreeMap::from([(gw2.clone(), relaying("a2"))]);
        assert_eq!(relayed_address(&gw2, &coll("c1"), &relays), None);
        assert_eq!(parse_asked("node/gw2|bogus|collector/c1"), vec![gw2, coll("c1")]);
    }
}
