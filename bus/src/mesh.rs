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
/// Problems tracked at most; more are not recorded (the first ones already say what is wrong).
const MAX_PROBLEMS: usize = 1_000;

/// What one process sees: the answer of its view queryable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Always [`VIEW_VERSION`].
    pub version: u32,
    /// The live processes it sees, as `<role>/<name>` (e.g. `node/gw1`, `collector/c1`),
    /// itself included.
    pub live: Vec<String>,
}

impl View {
    fn of(live: &BTreeSet<Member>) -> Self {
        Self { version: VIEW_VERSION, live: live.iter().map(member_chunk).collect() }
    }

    /// Decode a view; `None` for a malformed, oversized or unknown-version document.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let view: View = serde_json::from_slice(bytes).ok()?;
        (view.version == VIEW_VERSION && view.live.len() <= MAX_MEMBERS).then_some(view)
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
    /// Processes this one saw, with when each was first seen.
    since: BTreeMap<Member, Instant>,
}

/// The running mesh check of one process.
#[derive(Clone)]
pub struct Mesh {
    state: Arc<Mutex<State>>,
    /// View answers that could not be read (malformed, oversized, unknown version, bad key).
    malformed: Arc<AtomicU64>,
    membership: Membership,
}

impl Mesh {
    /// Answer this process's view queryable and compare views every [`POLL`] until `cancel`.
    pub async fn start(
        session: &Session,
        keys: &KeySpace,
        me: Member,
        membership: Membership,
        cancel: CancellationToken,
    ) -> Result<Self, SessionError> {
        let key = keys.view(me.role, &me.name)?;
        let queryable = {
            let membership = membership.clone();
            let key = key.clone();
            session
                .declare_queryable(key.clone())
                .callback(move |query| {
                    let body = serde_json::to_vec(&View::of(&membership.live())).unwrap_or_default();
                    if let Err(e) = query.reply(key.clone(), body).wait() {
                        tracing::debug!(error = %e, "cannot answer a view query");
                    }
                })
                .await
                .map_err(|e| SessionError::Zenoh(e.to_string()))?
        };
        let mesh = Self { state: Arc::new(Mutex::new(State::default())), malformed: Arc::default(), membership };
        let (session, keys, task) = (session.clone(), keys.clone(), mesh.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let views = fetch_views(&session, &keys, &task.malformed).await;
                task.update(&me, views, Instant::now());
            }
            drop(queryable);
        });
        Ok(mesh)
    }

    fn update(&self, me: &Member, views: BTreeMap<Member, BTreeSet<Member>>, now: Instant) {
        let mine = self.membership.live();
        let Ok(mut st) = self.state.lock() else { return };
        st.since.retain(|m, _| mine.contains(m));
        for m in &mine {
            st.since.entry(m.clone()).or_insert(now);
        }
        let found = assess(me, &mine, &st.since, &views, now);
        let ended: Vec<MeshProblem> = st.pending.keys().filter(|p| !found.contains(*p)).cloned().collect();
        for p in ended {
            if let Some(first) = st.pending.remove(&p) {
                if now.saturating_duration_since(first) >= SETTLE {
                    tracing::info!(problem = %p, "bus mesh: resolved");
                }
            }
        }
        for p in found {
            let first = *st.pending.entry(p.clone()).or_insert(now);
            // Logged once, on the poll that first finds it settled.
            let age = now.saturating_duration_since(first);
            if age >= SETTLE && age < SETTLE + POLL {
                tracing::warn!(
                    problem = %p,
                    "bus mesh: processes do not all see each other, so limits, DLR lookups and \
                     replication are split; give every agent a `listen` endpoint its peers can reach \
                     (the default is the address it uses to reach its first `connect` endpoint)"
                );
            }
        }
    }

    /// The problems that have lasted at least [`SETTLE`].
    pub fn problems(&self) -> Vec<MeshProblem> {
        let now = Instant::now();
        let Ok(st) = self.state.lock() else { return Vec::new() };
        st.pending
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= SETTLE)
            .map(|(p, _)| p.clone())
            .collect()
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
        m.gauge(
            "switchboard_mesh_live_processes",
            "Processes this one sees alive (itself included).",
            self.membership.live().len() as f64,
        )
        .gauge(
            "switchboard_mesh_unreachable_processes",
            "Processes alive according to others that this one has no link to.",
            members.len() as f64,
        )
        .gauge(
            "switchboard_mesh_missing_links",
            "Pairs of processes this one sees where one does not see the other.",
            (problems.len() - unreachable) as f64,
        )
        .counter(
            "switchboard_mesh_malformed_views_total",
            "Views of other processes left out: malformed, oversized, of an unknown version or under a bad key.",
            self.malformed.load(Ordering::Relaxed),
        );
    }
}

/// Ask every reachable process for its view; malformed, oversized or unknown-version answers
/// are counted in `malformed` and left out, and at most [`MAX_MEMBERS_PER_POLL`] members are
/// taken in all.
async fn fetch_views(session: &Session, keys: &KeySpace, malformed: &AtomicU64) -> BTreeMap<Member, BTreeSet<Member>> {
    let mut out = BTreeMap::new();
    let mut members = 0usize;
    let Ok(all) = keys.all_views() else { return out };
    let Ok(replies) =
        session.get(all).target(QueryTarget::All).consolidation(ConsolidationMode::None).timeout(QUERY_TIMEOUT).await
    else {
        return out;
    };
    while let Ok(reply) = replies.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let Some((role, name)) = keys.parse_view(sample.key_expr().as_str()) else {
            malformed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match View::decode(&sample.payload().to_bytes()) {
            Some(v) => {
                members = members.saturating_add(v.live.len());
                if members > MAX_MEMBERS_PER_POLL {
                    tracing::debug!("views list over {MAX_MEMBERS_PER_POLL} members in all; the rest are not read");
                    break;
                }
                out.insert(Member { role, name }, v.members());
            }
            None => {
                malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%name, "ignoring a malformed view");
            }
        }
    }
    out
}

/// Refuse to start a second live process under the same name: ask the liveliness tokens and the
/// views of every process reachable now. Call after opening the session, before announcing.
///
/// A process of this name stopped just now (kill -9 on a `quic/` link, where no connection
/// closes: its peers see it gone only when the bus `lease` runs out) still looks alive: the name
/// is asked again every half second for the lease and one second more (logged) before it is
/// refused, so a supervisor that restarts a killed process at once does not fail.
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
        let Some(seen_by) = who_has_name(session, keys, me).await? else { return Ok(()) };
        if started.elapsed() >= patience {
            return Err(SessionError::NameTaken { name: member_chunk(me), seen_by });
        }
        if !std::mem::replace(&mut said, true) {
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

/// Who says a process of `me`'s name is alive (its token, or another process's view), if any.
async fn who_has_name(session: &Session, keys: &KeySpace, me: &Member) -> Result<Option<String>, SessionError> {
    let token = keys.member(me.role, &me.name)?;
    if let Ok(replies) = session.liveliness().get(&token).timeout(QUERY_TIMEOUT).await {
        if let Ok(reply) = replies.recv_async().await {
            if reply.result().is_ok() {
                return Ok(Some("its own token".into()));
            }
        }
    }
    for (observer, live) in fetch_views(session, keys, &AtomicU64::new(0)).await {
        if live.contains(me) {
            return Ok(Some(member_chunk(&observer)));
        }
    }
    Ok(None)
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
        let too_many = serde_json::to_vec(&View { version: VIEW_VERSION, live }).unwrap();
        assert!(View::decode(&too_many).is_none());
    }

    #[test]
    fn views_decode_strictly() {
        let v = View::of(&set(&[agent("gw1"), coll("c1")]));
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), r#"{"version":1,"live":["node/gw1","collector/c1"]}"#);
        assert_eq!(View::decode(&bytes).unwrap().members(), set(&[agent("gw1"), coll("c1")]));
        assert!(View::decode(br#"{"version":2,"live":[]}"#).is_none());
        assert!(View::decode(b"\xff").is_none());
        let unknown_role = View::decode(br#"{"version":1,"live":["router/r1","node/gw1"]}"#).unwrap();
        assert_eq!(unknown_role.members(), set(&[agent("gw1")]));
    }
}
