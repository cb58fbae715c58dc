//! Cluster membership from zenoh liveliness tokens.
//!
//! Every Switchboard process holds a token `<prefix>/<role>/<name>` ([`crate::session::announce`]).
//! [`Membership::watch`] subscribes to all tokens of the cluster (with history, so the current set
//! arrives first), keeps the live set in a `watch` channel and re-publishes each change as a
//! [`MemberEvent`] on a broadcast channel. A killed process's token disappears within
//! milliseconds; a hung one when its zenoh lease expires. [`Membership::watch_service`] keeps the
//! same for the agents that serve one service (limits, DLRs): those that take part in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use zenoh::sample::SampleKind;
use zenoh::Session;

use crate::keys::{KeySpace, Role, Service};
use crate::session::SessionError;

/// A live process: its role and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// What the process is.
    pub role: Role,
    /// Its name on the bus.
    pub name: String,
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A process appeared.
    Joined(Member),
    /// A process left or died.
    Left(Member),
}

/// Departed processes remembered at most (the longest gone are forgotten first).
pub const MAX_DEPARTED: usize = 1000;

/// How long after a process left a message of its is taken for a straggler it sent before it
/// left ([`Membership::left_within`]).
pub const STRAGGLER_WITHIN: Duration = Duration::from_secs(2);

/// Processes seen leaving and not back, with when they left (ms since the Unix epoch).
type Departed = Arc<Mutex<BTreeMap<Member, u64>>>;

/// Changes of one process said in the log per [`SAID_WINDOW`] at most: a restart (a leave and a
/// join) is said whole; a link that comes and goes many times a second is not said each time.
const SAID_PER_WINDOW: u32 = 4;
/// See [`SAID_PER_WINDOW`].
const SAID_WINDOW: Duration = Duration::from_secs(10);
/// Processes whose changes are followed for the log at most (more: the count starts over).
const SAID_MEMBERS: usize = 4096;

/// Per process: when its current window began, its changes in it, and those left unsaid since
/// the last line said of it.
#[derive(Default)]
struct Said(BTreeMap<Member, (std::time::Instant, u32, u64)>);

impl Said {
    /// Whether to say a change of `member` now: `Some(changes left unsaid before it)`, or `None`.
    fn admit(&mut self, member: &Member) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.0.len() >= SAID_MEMBERS && !self.0.contains_key(member) {
            self.0.clear();
        }
        let (began, said, unsaid) = self.0.entry(member.clone()).or_insert((now, 0, 0));
        if now.saturating_duration_since(*began) >= SAID_WINDOW {
            (*began, *said) = (now, 0);
        }
        if *said >= SAID_PER_WINDOW {
            *unsaid = unsaid.saturating_add(1);
            return None;
        }
        *said += 1;
        Some(std::mem::take(unsaid))
    }
}

/// How many times each process was seen joining (its first join counts 1).
type Joins = Arc<Mutex<BTreeMap<Member, u64>>>;

/// The live set of the cluster, kept current by a background task.
#[derive(Debug, Clone)]
pub struct Membership {
    live: watch::Receiver<BTreeSet<Member>>,
    events: broadcast::Sender<MemberEvent>,
    departed: Departed,
    joins: Joins,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Count a join of `m` (before the live set shows it, so whoever sees it there sees the count).
fn count_join(joins: &Joins, live: &BTreeSet<Member>, m: &Member) {
    // Each change under this lock is one insert or remove: a poisoned lock is taken over.
    let mut j = joins.lock().unwrap_or_else(|p| p.into_inner());
    let n = j.entry(m.clone()).or_default();
    *n = n.wrapping_add(1);
    // Bounded: counts of processes not live go first.
    if j.len() > MAX_DEPARTED {
        j.retain(|member, _| member == m || live.contains(member));
    }
}

/// `member` joined (`true`) or left.
fn change(member: Member, joined: bool) -> MemberEvent {
    if joined {
        MemberEvent::Joined(member)
    } else {
        MemberEvent::Left(member)
    }
}

/// The agents' tokens as [`Membership::watch_service`] reads them.
#[derive(Default)]
struct AgentTokens {
    /// Agents whose `node/<name>` token is live.
    nodes: BTreeSet<String>,
    /// Per agent, the service chunks of its live `serves/` tokens.
    serves: BTreeMap<String, BTreeSet<String>>,
    /// Agents that declared a `serves/` token while their `node/` token lives: they said what
    /// they serve, and are not taken for an older agent when their tokens go in any order (a
    /// killed process's all go at once).
    declared: BTreeSet<String>,
}

impl AgentTokens {
    fn note(&mut self, keys: &KeySpace, key: &str, name: &str, put: bool) {
        if let Some((service, _)) = keys.parse_serves(key) {
            let of = self.serves.entry(name.to_owned()).or_default();
            if put {
                of.insert(service.to_owned());
                self.declared.insert(name.to_owned());
            } else {
                of.remove(service);
                if of.is_empty() {
                    self.serves.remove(name);
                    if !self.nodes.contains(name) {
                        self.declared.remove(name);
                    }
                }
            }
        } else if put {
            self.nodes.insert(name.to_owned());
        } else {
            self.nodes.remove(name);
            if !self.serves.contains_key(name) {
                self.declared.remove(name);
            }
        }
    }

    /// Whether `name` takes part in `service`: it says it serves it, or it is alive and never
    /// said what it serves.
    fn takes_part(&self, name: &str, service: Service) -> bool {
        if self.declared.contains(name) {
            self.serves.get(name).is_some_and(|of| of.contains(service.as_str()))
        } else {
            self.nodes.contains(name)
        }
    }
}

/// Note `event` in the departed set: a leave is remembered, a join forgets it. A change that is
/// not `settled` was a guess of the watcher's (an agent alive that had not said yet what it
/// serves, counted in), or its correction: a guessed join forgets nothing, and a correction
/// only moves the time of a leave already remembered (an agent restarting, back in the guess,
/// then out until its service runs), so that an agent that never took part is never departed.
fn remember(departed: &Departed, event: &MemberEvent, settled: bool) {
    // Each change under this lock is one insert or remove: a poisoned lock is taken over.
    let mut d = departed.lock().unwrap_or_else(|p| p.into_inner());
    match event {
        MemberEvent::Joined(_) if !settled => {}
        MemberEvent::Left(m) if !settled => {
            if let Some(at) = d.get_mut(m) {
                *at = now_ms();
            }
        }
        MemberEvent::Joined(m) => {
            d.remove(m);
        }
        MemberEvent::Left(m) => {
            d.insert(m.clone(), now_ms());
            while d.len() > MAX_DEPARTED {
                let Some(oldest) = d.iter().min_by_key(|(_, at)| **at).map(|(m, _)| m.clone()) else { break };
                d.remove(&oldest);
            }
        }
    }
}

impl Membership {
    /// Start watching the cluster's liveliness tokens until `cancel` fires.
    ///
    /// The live set changes inside zenoh's delivery of each token, not on a task of its own, so
    /// it is current for whatever zenoh delivers next: a node's token comes before its other
    /// messages on a link, and a subscriber that checks the live set (heads) sees the node.
    ///
    /// `me`, the process watching (`None` for a tool), never leaves its own live set: a token
    /// under its name that another session declares and withdraws (a client reusing the name)
    /// ends, at this process, as if its own had, while its own lives as long as it does.
    pub async fn watch(
        session: &Session,
        keys: &KeySpace,
        me: Option<Member>,
        cancel: CancellationToken,
    ) -> Result<Self, SessionError> {
        let parse = keys.clone();
        let event = move |key: &str, kind: SampleKind| {
            let (role, name) = parse.parse_member(key)?;
            Some((change(Member { role, name }, kind == SampleKind::Put), true))
        };
        Self::watch_tokens(session, keys.all_members()?, event, "membership changed", me, cancel).await
    }

    /// Watch the agents that take part in `service`, as members of role [`Role::Agent`], until
    /// `cancel` fires: those with a token `serves/<service>/<node>`, and those alive that
    /// declare no `serves/` token at all (an agent of a version before the service tokens,
    /// which serves both: a cluster upgraded one node at a time keeps counting it). An agent
    /// that runs neither service declares `serves/none/<node>` and takes part in neither.
    /// `me` as for [`Self::watch`].
    pub async fn watch_service(
        session: &Session,
        keys: &KeySpace,
        service: Service,
        me: Option<Member>,
        cancel: CancellationToken,
    ) -> Result<Self, SessionError> {
        let parse = keys.clone();
        let tokens = Mutex::new(AgentTokens::default());
        let event = move |key: &str, kind: SampleKind| {
            let put = kind == SampleKind::Put;
            // Each change under this lock is one insert or remove: a poisoned lock is taken over.
            let mut t = tokens.lock().unwrap_or_else(|p| p.into_inner());
            let name = match (parse.parse_member(key), parse.parse_serves(key)) {
                (Some((Role::Agent, name)), _) => name,
                (_, Some((_, name))) => name.to_owned(),
                _ => return None,
            };
            let before = t.takes_part(&name, service);
            t.note(&parse, key, &name, put);
            let after = t.takes_part(&name, service);
            // Settled: a token withdrawn, or a join the agent declared. An agent alive that has
            // not yet said what it serves is counted in (it may be of an earlier version): a
            // guess, and its declaration arriving later without this service corrects it (see
            // `remember`: an agent that never served is not one that departed).
            let settled = if after { t.declared.contains(&name) } else { !put };
            (before != after).then(|| (change(Member { role: Role::Agent, name }, after), settled))
        };
        let said = match service {
            Service::Limits => "agents serving limits changed",
            Service::Dlr => "agents serving DLRs changed",
        };
        Self::watch_tokens(session, keys.all_tokens()?, event, said, me, cancel).await
    }

    /// Watch the liveliness tokens on `tokens`, each turned into a change of the live set by
    /// `event` (`None`: no change, or the change and whether it is settled, see `remember`),
    /// logging each change with `said`; `me` never leaves.
    async fn watch_tokens(
        session: &Session,
        tokens: zenoh::key_expr::OwnedKeyExpr,
        event: impl Fn(&str, SampleKind) -> Option<(MemberEvent, bool)> + Send + Sync + 'static,
        said: &'static str,
        me: Option<Member>,
        cancel: CancellationToken,
    ) -> Result<Self, SessionError> {
        let (live_tx, live) = watch::channel(BTreeSet::new());
        let (events, _) = broadcast::channel(256);
        let events_tx = events.clone();
        let departed = Departed::default();
        let departed_w = departed.clone();
        let joins = Joins::default();
        let joins_w = joins.clone();
        let said_of = Mutex::new(Said::default());
        let subscriber = session
            .liveliness()
            .declare_subscriber(tokens)
            .history(true)
            .callback(move |sample| {
                let Some((event, settled)) = event(sample.key_expr().as_str(), sample.kind()) else {
                    tracing::debug!(key = %sample.key_expr(), "a liveliness token that changes no member");
                    return;
                };
                if let (MemberEvent::Left(m), Some(me)) = (&event, &me) {
                    if m == me {
                        // Said as often as a change of a member is (a lock held for one update).
                        if said_of.lock().unwrap_or_else(|p| p.into_inner()).admit(m).is_some() {
                            tracing::warn!(
                                key = %sample.key_expr(),
                                "a token under this process's own name was withdrawn by another session (a \
                                 client using its name): this process is still alive"
                            );
                        }
                        return;
                    }
                }
                let changed = live_tx.send_if_modified(|set| match &event {
                    MemberEvent::Joined(m) => {
                        let new = !set.contains(m);
                        if new {
                            count_join(&joins_w, set, m);
                            set.insert(m.clone());
                        }
                        new
                    }
                    MemberEvent::Left(m) => set.remove(m),
                });
                if changed {
                    let member = match &event {
                        MemberEvent::Joined(m) | MemberEvent::Left(m) => m,
                    };
                    // One insert or update under this lock: a poisoned lock is taken over.
                    match said_of.lock().unwrap_or_else(|p| p.into_inner()).admit(member) {
                        Some(0) => tracing::info!(?event, "{said}"),
                        Some(unsaid) => tracing::info!(?event, unsaid_changes_of_it = unsaid, "{said}"),
                        None => tracing::debug!(?event, "{said}"),
                    }
                    remember(&departed_w, &event, settled);
                    // No receiver is fine: events are for whoever listens.
                    let _ = events_tx.send(event);
                }
            })
            .await
            .map_err(|e| SessionError::Zenoh(e.to_string()))?;
        tokio::spawn(async move {
            cancel.cancelled().await;
            drop(subscriber);
        });
        Ok(Self { live, events, departed, joins })
    }

    /// Whether `member` was ever seen joining, here.
    pub fn ever_joined(&self, member: &Member) -> bool {
        self.joins.lock().unwrap_or_else(|p| p.into_inner()).contains_key(member)
    }

    /// How many times each live process of `role` was seen joining, by name. A count that moved
    /// while the process stayed in the live set means it left and came back between two looks
    /// (a hung process past its lease, a cut link): the live set alone does not show that.
    pub fn joins_of(&self, role: Role) -> BTreeMap<String, u64> {
        let live = self.live_of(role);
        let j = self.joins.lock().unwrap_or_else(|p| p.into_inner());
        live.into_iter()
            .map(|name| {
                let n = j.get(&Member { role, name: name.clone() }).copied().unwrap_or_default();
                (name, n)
            })
            .collect()
    }

    /// Processes this one saw leave (or die) since it started and that are not back, with when
    /// they left (ms since the Unix epoch); at most [`MAX_DEPARTED`], the latest.
    pub fn departed(&self) -> Vec<(Member, u64)> {
        let d = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().map(|(m, at)| (m.clone(), *at)).collect()
    }

    /// Whether `member` left (or died) within the last `within` and is not back. What it sent
    /// just before it left may arrive just after its token went (zenoh carries declarations
    /// ahead of data): such a straggler is dropped as any message of a process that is not live,
    /// but it is no refusal of a stranger's.
    pub fn left_within(&self, member: &Member, within: Duration) -> bool {
        let d = self.departed.lock().unwrap_or_else(|p| p.into_inner());
        let since = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        d.get(member).is_some_and(|at| now_ms().saturating_sub(*at) <= since)
    }

    /// The processes alive now.
    pub fn live(&self) -> BTreeSet<Member> {
        self.live.borrow().clone()
    }

    /// The live processes of one role, by name.
    pub fn live_of(&self, role: Role) -> Vec<String> {
        self.live.borrow().iter().filter(|m| m.role == role).map(|m| m.name.clone()).collect()
    }

    /// Join and leave events from now on.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Wait until at least one process of `role` is alive; `false` if `timeout` passed first or
    /// the membership task ended.
    pub async fn wait_for_role(&self, role: Role, timeout: Duration) -> bool {
        let mut rx = self.live.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|set| set.iter().any(|m| m.role == role))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// A receiver of the live set, for `changed()`/`wait_for` loops.
    pub fn subscribe(&self) -> watch::Receiver<BTreeSet<Member>> {
        self.live.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BusConfig;
    use crate::session::{announce, open};

    fn bus(node: &str, listen: Option<&str>, connect: Option<&str>) -> BusConfig {
        BusConfig {
            cluster: "mtest".into(),
            node: node.into(),
            listen: listen.into_iter().map(str::to_owned).collect(),
            connect: connect.into_iter().map(str::to_owned).collect(),
            ..BusConfig::default()
        }
    }

    /// Two sessions on loopback, `b` linked to `a`, under `prefix`.
    async fn two_sessions(prefix: &str) -> (Session, Session, KeySpace, CancellationToken) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ep = format!("tcp/127.0.0.1:{port}");
        let a = open(&bus("a", Some(&ep), None), None).await.unwrap();
        let b = open(&bus("b", None, Some(&ep)), None).await.unwrap();
        (a, b, KeySpace::new(prefix).unwrap(), CancellationToken::new())
    }

    /// An agent counted in a service while it had not said what it serves, and out once it
    /// said (it serves none), never departed: a DLR lookup would take it for one that may hold
    /// records. An agent restarting (departed, back in the guess, out until its service runs)
    /// stays departed, from the correction on.
    #[test]
    fn a_guess_and_its_correction_depart_no_agent_that_never_took_part() {
        let d = Departed::default();
        let m = |n: &str| Member { role: Role::Agent, name: n.into() };
        let at = |n: &str| d.lock().unwrap().get(&m(n)).copied();
        remember(&d, &MemberEvent::Joined(m("off")), false);
        remember(&d, &MemberEvent::Left(m("off")), false);
        assert_eq!(at("off"), None);
        remember(&d, &MemberEvent::Left(m("gw1")), true);
        let killed = at("gw1").unwrap();
        remember(&d, &MemberEvent::Joined(m("gw1")), false);
        assert_eq!(at("gw1"), Some(killed), "a guessed join forgets nothing");
        std::thread::sleep(Duration::from_millis(5));
        remember(&d, &MemberEvent::Left(m("gw1")), false);
        assert!(at("gw1").unwrap() > killed, "departed again from the correction");
        remember(&d, &MemberEvent::Joined(m("gw1")), true);
        assert_eq!(at("gw1"), None, "back, serving");
    }

    /// A killed agent's tokens go in any order: one that said what it serves is never taken
    /// for an older agent in between.
    #[test]
    fn an_agent_that_said_what_it_serves_is_not_taken_for_an_older_one_as_its_tokens_go() {
        let keys = KeySpace::new("sb/t").unwrap();
        let (node, serves) = (keys.member(Role::Agent, "gw1").unwrap(), keys.serves(Service::Limits, "gw1").unwrap());
        for first_gone in [&serves, &node] {
            let mut t = AgentTokens::default();
            t.note(&keys, serves.as_str(), "gw1", true);
            t.note(&keys, node.as_str(), "gw1", true);
            assert!(t.takes_part("gw1", Service::Limits) && !t.takes_part("gw1", Service::Dlr));
            t.note(&keys, first_gone.as_str(), "gw1", false);
            assert!(!t.takes_part("gw1", Service::Dlr), "gw1 counted in DLRs after {first_gone} went");
            let other = if first_gone == &serves { &node } else { &serves };
            t.note(&keys, other.as_str(), "gw1", false);
            assert!(!t.takes_part("gw1", Service::Limits));
            assert!(t.declared.is_empty() && t.serves.is_empty() && t.nodes.is_empty());
        }
        // An older agent (a node token alone) serves both.
        let mut t = AgentTokens::default();
        t.note(&keys, node.as_str(), "gw1", true);
        assert!(t.takes_part("gw1", Service::Limits) && t.takes_part("gw1", Service::Dlr));
    }

    /// A service's members: the agents that say they serve it, and those that say nothing of
    /// what they serve (of a version before the service tokens); not those that serve others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_counts_who_serves_it_and_who_says_nothing() {
        let (a, b, keys, cancel) = two_sessions("sb/mservice").await;
        let limits = Membership::watch_service(&a, &keys, Service::Limits, None, cancel.clone()).await.unwrap();
        let declare = |key: zenoh::key_expr::OwnedKeyExpr| {
            let b = b.clone();
            async move { b.liveliness().declare_token(key).await.unwrap() }
        };
        let mut tokens = Vec::new();
        for (service, node) in [(Some(Service::Limits), "on"), (Some(Service::Dlr), "dlr-only"), (None, "off")] {
            tokens.push(match service {
                Some(s) => declare(keys.serves(s, node).unwrap()).await,
                None => declare(keys.serves_none(node).unwrap()).await,
            });
            tokens.push(declare(keys.member(Role::Agent, node).unwrap()).await);
        }
        let old = b.liveliness().declare_token(keys.member(Role::Agent, "old").unwrap()).await.unwrap();

        let _collector = declare(keys.member(Role::Collector, "c1").unwrap()).await;
        let mut live = limits.subscribe();
        let want = vec!["old".to_owned(), "on".to_owned()];
        // (The borrow `wait_for` returns holds the live set's lock: not kept.)
        let seen = tokio::time::timeout(Duration::from_secs(5), live.wait_for(|s| s.len() == 2))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(seen, "{:?}", limits.live_of(Role::Agent));
        // Nothing else comes in a while later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(limits.live_of(Role::Agent), want);
        let mut events = limits.events();
        drop(old);
        let left = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert!(
            matches!(&left, Ok(Ok(MemberEvent::Left(m))) if m.name == "old"),
            "{left:?}; live {:?}",
            limits.live_of(Role::Agent)
        );
        drop(tokens);
        cancel.cancel();
        b.close().await.unwrap();
        a.close().await.unwrap();
    }

    #[test]
    fn a_restart_is_said_whole_and_a_flapping_process_a_few_times_per_window() {
        let mut s = Said::default();
        let gw1 = Member { role: Role::Agent, name: "gw1".into() };
        let said: Vec<Option<u64>> = (0..10).map(|_| s.admit(&gw1)).collect();
        assert_eq!(said[..4], [Some(0); 4], "a leave and a join, twice, are said");
        assert!(said[4..].iter().all(Option::is_none), "{said:?}");
        let gw2 = Member { role: Role::Agent, name: "gw2".into() };
        assert_eq!(s.admit(&gw2), Some(0), "each process has its own count");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joins_and_leaves_are_seen_by_a_peer() {
        let (a, b, keys, cancel) = two_sessions("sb/mtest").await;
        let _ta = announce(&a, &keys, Role::Collector, "c1").await.unwrap();
        let m = Membership::watch(&a, &keys, None, cancel.clone()).await.unwrap();
        // Own token arrives through history.
        assert!(m.wait_for_role(Role::Collector, Duration::from_secs(5)).await);
        let mut events = m.events();

        let tb = announce(&b, &keys, Role::Agent, "gw1").await.unwrap();
        assert!(m.wait_for_role(Role::Agent, Duration::from_secs(5)).await);
        assert_eq!(m.live_of(Role::Agent), vec!["gw1".to_owned()]);
        let joined = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
        assert_eq!(joined, MemberEvent::Joined(Member { role: Role::Agent, name: "gw1".into() }));

        drop(tb);
        let left = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
        assert_eq!(left, MemberEvent::Left(Member { role: Role::Agent, name: "gw1".into() }));
        assert!(m.live_of(Role::Agent).is_empty());
        let (gw1, stranger) =
            (Member { role: Role::Agent, name: "gw1".into() }, Member { role: Role::Agent, name: "gw9".into() });
        assert!(m.left_within(&gw1, STRAGGLER_WITHIN), "it left just now");
        assert!(!m.left_within(&stranger, STRAGGLER_WITHIN), "never seen: no straggler");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!m.left_within(&gw1, Duration::from_millis(10)), "it left longer ago than that");
        // Back again: the live set is as before, the join count tells it left in between.
        let tb = announce(&b, &keys, Role::Agent, "gw1").await.unwrap();
        assert!(m.wait_for_role(Role::Agent, Duration::from_secs(5)).await);
        assert_eq!(m.joins_of(Role::Agent), BTreeMap::from([("gw1".to_owned(), 2)]));
        drop(tb);
        cancel.cancel();
        b.close().await.unwrap();
        a.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_under_my_name_withdrawn_by_another_session_leaves_me_alive() {
        let (a, b, keys, cancel) = two_sessions("sb/mself").await;
        let me = Member { role: Role::Agent, name: "gw1".into() };
        let _mine = announce(&a, &keys, Role::Agent, "gw1").await.unwrap();
        let m = Membership::watch(&a, &keys, Some(me.clone()), cancel.clone()).await.unwrap();
        assert!(m.wait_for_role(Role::Agent, Duration::from_secs(5)).await);
        let impostor = announce(&b, &keys, Role::Agent, "gw1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(impostor);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(m.live().contains(&me), "{:?}", m.live());
        cancel.cancel();
    }
}
