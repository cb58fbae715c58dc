//! Lookups over the bus: the queryables every node answers, and the queries that ask them.
//!
//! A resolve of a record this node holds (its own or its copy) is answered from its store,
//! without the bus. Otherwise it first asks only the node that must hold the record, the
//! heaviest live node for its key ([`first_holder`]: the owner or its replica), on the ask
//! stream ([`super::ask`]). Each node also answers the same lookup as a query on its own
//! `<prefix>/dlr/at/<node>/<connector>/<id>`, for clients that ask rarely. Its answer may come
//! from the copy, which trails the owner by the replication delay. Without an answer (the live
//! set is changing, the copy is not there yet, no such record) and for reports, which only the
//! owner takes, the lookup asks every node: one query on `<prefix>/dlr/at/*/<connector>/<id>`
//! (target `All`, no consolidation, so replies arrive as they are sent).
//!
//! Each node that holds the record answers with a [`LookupReply`] on the key of its own name,
//! `<prefix>/dlr/at/<node>/...`, which the access policy holds to `agent:<node>`: the asker
//! takes a reply only when its body names the node of its key. The others stay silent, so a
//! query that found nothing is a miss only if no node that could answer left before it ended
//! (zenoh ends the part of a node whose link closed as silently) and none joined after it began
//! (zenoh never sends it the query: a node restarted meanwhile may own the record alone). A
//! node asked to wait (`wait_ms=N`) keeps the query open and answers when the record is
//! registered with it, so a DLR that overtakes its registration still resolves in one round
//! trip. The asker of all nodes takes the owner's reply as soon as it comes. A replica's reply
//! is enough once the owner is known to be down; while the owner is live the asker waits for it
//! (it may be taking the report) until the query completes. Clients may also ask every node on
//! `<prefix>/dlr/id/<connector>/<id>`, where each node replies on the query's own key.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::dlr::record::store_key;
use switchboard_bus::dlr::rendezvous::first_holder;
use switchboard_bus::dlr::wire::{self, DlrReport, LookupReply, Role as HolderRole, STORE_FAILED};
use switchboard_bus::keys::Role;
use switchboard_bus::membership::MemberEvent;
use switchboard_bus::refusals::{refuse, Reason};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::key_expr::KeyExpr;
use zenoh::query::{ConsolidationMode, Query, QueryTarget};
use zenoh::Wait;

use super::answerer::Answerer;
use super::ask::Asked;
use super::records::Claim;
use super::{now_ms, DlrError, DlrService};
use crate::AgentError;

/// Declare the lookup queryables (every node's and this node's own) and answer them until
/// `cancel` fires. A plain lookup is answered on the [`Answerer`]'s thread (one store read);
/// one that carries a report or may wait is handed to the runtime.
pub(crate) async fn serve(
    service: Arc<DlrService>,
    answerer: Answerer,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Handle::current();
    let keys = [service.keys.all_dlr_ids(), service.keys.all_dlr_at(&service.node)];
    for key in keys {
        let key = key?;
        let (svc, runtime, answerer) = (service.clone(), runtime.clone(), answerer.clone());
        let queryable = service
            .session
            .declare_queryable(key)
            .callback(move |query| match parse(&svc, &query) {
                Err(e) => {
                    svc.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(e) = e {
                        let _ = query.reply_err(e).wait();
                    }
                }
                Ok(req) if req.report.is_none() && req.wait.is_zero() => {
                    let svc = svc.clone();
                    answerer.run(move |_| {
                        let reply = svc.answer(&req.connector, &req.id, None);
                        if let Some(answer) = encode(&svc, reply) {
                            let _ = match answer {
                                Ok(body) => query.reply(req.reply_on, body).wait(),
                                Err(e) => query.reply_err(e).wait(),
                            };
                        }
                    });
                }
                Ok(req) => {
                    runtime.spawn(answer_later(svc.clone(), query, req));
                }
            })
            .await
            .map_err(|source| AgentError::Declare { what: "DLR lookup queryable", source })?;
        let cancel = cancel.clone();
        tracker.spawn(async move {
            cancel.cancelled().await;
            drop(queryable);
        });
    }
    Ok(())
}

/// A lookup as a node receives it.
struct Request {
    connector: String,
    id: String,
    report: Option<DlrReport>,
    wait: Duration,
    /// The key of the reply: this node's own `dlr/at` key for a lookup there (which the access
    /// policy holds to this node's identity), the query's own key for one on `dlr/id`.
    reply_on: KeyExpr<'static>,
}

/// The lookup a query asks for; `Err(Some(reason))` for a bad payload (answered with the
/// reason), `Err(None)` for a key that is not a lookup.
fn parse(service: &DlrService, query: &Query) -> Result<Request, Option<String>> {
    let (connector, id) = service.keys.parse_dlr_id(query.key_expr().as_str()).ok_or(None)?;
    let reply_on = if service.keys.is_dlr_at(query.key_expr().as_str()) {
        service.keys.dlr_at(&service.node, &connector, &id).map_err(|e| Some(e.to_string()))?.into()
    } else {
        query.key_expr().clone()
    };
    let report = match query.payload().map(|p| wire::decode::<DlrReport>(&p.to_bytes())) {
        None => None,
        Some(Ok(r)) => {
            if let Err(e) = super::types::check_bus_report(&r, now_ms()) {
                refuse(Reason::ReportInvalid, &e);
                return Err(Some(e.to_string()));
            }
            Some(r)
        }
        Some(Err(e)) => {
            refuse(Reason::ReportInvalid, format_args!("payload is not a DLR report: {e}"));
            return Err(Some(format!("payload is not a DLR report: {e}")));
        }
    };
    let wait = query
        .parameters()
        .get("wait_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(service.settings.max_wait_ms)))
        .unwrap_or_default();
    Ok(Request { connector, id, report, wait, reply_on })
}

/// The reply body for an answer (counted), the error text for a failure, `None` for silence.
fn encode(service: &DlrService, reply: Result<Option<LookupReply>, DlrError>) -> Option<Result<Vec<u8>, String>> {
    match reply {
        Ok(Some(r)) => {
            service.stats.lookups_answered.fetch_add(1, Ordering::Relaxed);
            match serde_json::to_vec(&r) {
                Ok(body) => Some(Ok(body)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode a lookup reply");
                    None
                }
            }
        }
        Ok(None) => None,
        Err(e) => Some(Err(e.to_string())),
    }
}

/// Answer a lookup that carries a report or may wait for its registration.
async fn answer_later(service: Arc<DlrService>, query: Query, req: Request) {
    let claim = match &req.report {
        Some(report) => service.claim(&req.connector, &req.id, report).await,
        None => Claim::NotAsked,
    };
    let mut reply = service.answer_claimed(&req.connector, &req.id, req.report.as_ref(), &claim);
    if matches!(reply, Ok(None)) && !req.wait.is_zero() {
        let key = store_key(&req.connector, &req.id);
        if service.wait_for(&key, req.wait).await {
            reply = service.answer(&req.connector, &req.id, req.report.as_ref());
        }
    }
    let _ = match encode(&service, reply) {
        Some(Ok(body)) => query.reply(req.reply_on, body).await,
        Some(Err(e)) => query.reply_err(e).await,
        None => Ok(()),
    };
}

/// What the node that must hold a record said of it.
// Returned once per resolve and taken apart at once, never stored.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FirstHolder {
    /// Its reply (or this node's own, when it holds the record) and how long it took.
    Found(LookupReply, Duration),
    /// It holds no such record (or this node is that node).
    Missing,
    /// It did not answer (why): the record may exist there.
    Unanswered(String),
}

/// Answer from this node's store when it holds `(connector, canonical id)` (its own record, or
/// its copy), without the bus; otherwise ask the node that must hold it alone.
pub(crate) async fn query_first_holder(
    service: &DlrService,
    connector: &str,
    canonical: &str,
) -> Result<FirstHolder, DlrError> {
    let started = Instant::now();
    if let Some(reply) = service.answer(connector, canonical, None)? {
        service.stats.answered_here.fetch_add(1, Ordering::Relaxed);
        return Ok(FirstHolder::Found(reply, started.elapsed()));
    }
    let live = service.membership.live_of(Role::Agent);
    let Some(first) = first_holder(&store_key(connector, canonical), live.iter().map(String::as_str)) else {
        return Ok(FirstHolder::Missing);
    };
    if first == service.node {
        return Ok(FirstHolder::Missing);
    }
    let timeout = Duration::from_millis(service.settings.timeout_ms);
    Ok(match service.asker.ask_node(first, connector, canonical, timeout).await? {
        Asked::Answered(Some(r)) => FirstHolder::Found(r, started.elapsed()),
        Asked::Answered(None) => FirstHolder::Missing,
        Asked::Unanswered(why) => FirstHolder::Unanswered(why),
    })
}

/// What asking every node gave: the best reply and how long it took, the first error of a
/// node whose store failed, and why the query ended before every node had answered (a node that
/// is live but hung or slow: what it holds is not known).
#[derive(Default)]
pub(crate) struct AskedAll {
    pub(crate) found: Option<(LookupReply, Duration)>,
    pub(crate) failed: Option<String>,
    pub(crate) unanswered: Option<String>,
}

/// Lookups a node failed are logged at most once per 10 s, with the count since.
static FAILED_LOGGED: std::sync::Mutex<switchboard_bus::throttle::Throttle> =
    std::sync::Mutex::new(switchboard_bus::throttle::Throttle::new(Duration::from_secs(10)));

/// The error zenoh gives a query whose time ran out before every queryable had answered.
const ZENOH_TIMEOUT: &str = "Timeout";

/// Ask every node for `(connector, canonical id)`.
pub(crate) async fn query(
    service: &DlrService,
    connector: &str,
    canonical: &str,
    wait: Duration,
    report: Option<&DlrReport>,
) -> Result<AskedAll, DlrError> {
    let key = service.keys.dlr_at_every(connector, canonical).map_err(|e| DlrError::BadRequest(e.to_string()))?;
    let selector = if wait.is_zero() { key.to_string() } else { format!("{key}?wait_ms={}", wait.as_millis()) };
    // Who could answer, and the processes that leave from now on: a node whose link closes ends
    // its part of the query without a word, as one that holds nothing does.
    let mut leaves = service.processes.events();
    let asked: Vec<String> =
        service.membership.live_of(Role::Agent).into_iter().filter(|n| *n != service.node).collect();
    let started = Instant::now();
    // Replies go to a channel of our own: when the owner's reply ends the wait early, later
    // replies are dropped quietly (zenoh's own channel would log each as an error).
    let (tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    let mut get = service
        .session
        .get(selector.as_str())
        .target(QueryTarget::All)
        .consolidation(ConsolidationMode::None)
        .timeout(wait + Duration::from_millis(service.settings.timeout_ms))
        .callback(move |reply| {
            let _ = tx.send(reply);
        });
    if let Some(r) = report {
        get = get.payload(serde_json::to_vec(r)?);
    }
    get.await.map_err(DlrError::Bus)?;
    let mut best: Option<LookupReply> = None;
    let (mut failed, mut unanswered): (Option<String>, Option<String>) = (None, None);
    while let Some(reply) = replies.recv().await {
        let sample = match reply.result() {
            Ok(s) => s,
            Err(e) => {
                let why = String::from_utf8_lossy(&e.payload().to_bytes()).into_owned();
                if why == ZENOH_TIMEOUT {
                    // A node did not finish answering in time: whether it holds the record is
                    // not known (a refusal of the request says nothing of what a node holds).
                    service.stats.ask_timeouts.fetch_add(1, Ordering::Relaxed);
                    let within = wait + Duration::from_millis(service.settings.timeout_ms);
                    tracing::info!(key = %key, "a node did not answer a DLR lookup within {} ms", within.as_millis());
                    unanswered = Some(format!("a live node did not answer within {} ms", within.as_millis()));
                    continue;
                }
                // Throttled: an owner whose inbox is full fails every report, which gateways retry.
                if let Some(unlogged) = FAILED_LOGGED.lock().ok().and_then(|mut t| t.admit()) {
                    tracing::warn!(key = %key, error = %why, failed_since_last_line = unlogged, "a node failed a DLR lookup");
                }
                // A node that holds the record and cannot take the report now (its store failed,
                // its inbox is full, or it just ran again) says so: the record exists, and a miss
                // elsewhere must not be taken for its absence.
                if why.starts_with(STORE_FAILED) || why.starts_with(super::wake::STALE) {
                    unanswered.get_or_insert_with(|| why.clone());
                }
                if why.starts_with(STORE_FAILED) {
                    failed.get_or_insert(why);
                }
                continue;
            }
        };
        let Ok(r) = wire::decode::<LookupReply>(&sample.payload().to_bytes()) else {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // This node's own queryable answers its query too (a copy it holds, a report it owns):
        // zenoh names the session that sent each reply.
        let from_here = reply.replier_id().is_some_and(|id| id.zid() == service.session.zid());
        let on = match sample.key_expr().as_str() {
            k if k == key.as_str() => RepliedOn::Query,
            k => service.keys.parse_dlr_at_node(k).map_or(RepliedOn::Other, RepliedOn::Node),
        };
        if let Some(why) = implausible(&service.node, from_here, on, &r, connector, canonical) {
            refuse(
                Reason::LookupReplyInvalid,
                format_args!("a reply to the DLR lookup of {connector}/{canonical}: {why}"),
            );
            continue;
        }
        if r.role == HolderRole::Owner {
            return Ok(AskedAll { found: Some((r, started.elapsed())), failed, unanswered });
        }
        let owner_down =
            r.record.owner != service.node && !service.membership.live_of(Role::Agent).contains(&r.record.owner);
        if best.as_ref().is_none_or(|b| r.record.version > b.record.version) {
            best = Some(r);
        }
        if owner_down {
            break;
        }
    }
    if best.is_none() && unanswered.is_none() {
        let held = started.elapsed() > wait + HELD;
        unanswered = left_before_answering(service, &asked, &mut leaves, held)
            .await
            .or_else(|| joined_after_asking(service, &asked));
    }
    Ok(AskedAll { found: best.map(|b| (b, started.elapsed())), failed, unanswered })
}

/// The key a reply to a lookup of every node came on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RepliedOn<'k> {
    /// The `dlr/at` key of this node, where only its certificate may reply (docs/security.md).
    Node(&'k str),
    /// The query's own key, where agents of versions before answers were bound reply. With TLS
    /// the access policy drops such a reply (anyone's, there) before it is read; without TLS no
    /// key is bound to anyone, so it is checked as any other.
    Query,
    /// Another key.
    Other,
}

/// Why `r`, a reply to this node's lookup of `(connector, canonical)` that came `on` a key,
/// cannot be what it says, if it cannot. The access policy holds a node's key to its identity,
/// not the name in the body: a reply whose body names another node than its key, one in this
/// node's own name that another session sent (`from_here` false: the check that holds without
/// TLS), one for another record, or one whose role contradicts its record is a hostile agent's.
pub(crate) fn implausible(
    me: &str,
    from_here: bool,
    on: RepliedOn<'_>,
    r: &LookupReply,
    connector: &str,
    canonical: &str,
) -> Option<String> {
    match on {
        RepliedOn::Node(n) if n != r.node => return Some(format!("it names {} on the key of {n}", r.node)),
        RepliedOn::Other => return Some(format!("it names {} on a key of no node", r.node)),
        RepliedOn::Node(_) | RepliedOn::Query => {}
    }
    if r.record.connector != connector || r.record.id != canonical {
        return Some(format!("it is for {}/{}", r.record.connector, r.record.id));
    }
    if (r.node == me) != from_here {
        return Some(if from_here {
            format!("this node's own answer names {}", r.node)
        } else {
            format!("another process answers in this node's name ({me})")
        });
    }
    match r.role {
        HolderRole::Owner if r.record.owner != r.node => {
            Some(format!("{} answers as the owner of a record of {}", r.node, r.record.owner))
        }
        HolderRole::Replica if r.record.owner == r.node => {
            Some(format!("{} answers with a copy of its own record", r.node))
        }
        _ => None,
    }
}

/// Why a query that found nothing may have missed the record: a node that serves DLRs now was
/// not among those `asked` (it joined, or came back from a restart, while the query ran). zenoh
/// sends a query to the queryables it knows when it begins, so such a node was never asked, and
/// it may be the owner of a record no copy holds (registered just before it was killed).
fn joined_after_asking(service: &DlrService, asked: &[String]) -> Option<String> {
    let live = service.membership.live_of(Role::Agent);
    let joined = live.iter().find(|n| **n != service.node && !asked.contains(n))?;
    Some(format!("node {joined} joined while the lookup ran, after the nodes were asked"))
}

/// A query held this much longer than the wait it asked for was kept open by a node that did not
/// answer at once (hung, or slow).
const HELD: Duration = Duration::from_millis(20);

/// How long a miss from a held query waits to hear whether a node left meanwhile.
const LEAVE_HEARD_WITHIN: Duration = Duration::from_millis(100);

/// Why a query that found nothing may have missed the record: the process of a node of `asked`
/// (serving DLRs when it began) left before the query ended. zenoh ends a node's part of a query when its link closes
/// (a hung node's lease ran out, a cut link) just before it says the node's liveliness token is
/// gone, so when the query was `held` open, the leave is waited for a moment.
async fn left_before_answering(
    service: &DlrService,
    asked: &[String],
    leaves: &mut tokio::sync::broadcast::Receiver<MemberEvent>,
    held: bool,
) -> Option<String> {
    let left = |node: &str| Some(format!("node {node} left while the lookup ran, before it answered"));
    let live = service.processes.live_of(Role::Agent);
    if let Some(gone) = asked.iter().find(|n| !live.contains(n)) {
        return left(gone);
    }
    let deadline = tokio::time::Instant::now() + if held { LEAVE_HEARD_WITHIN } else { Duration::ZERO };
    loop {
        // A node that left and came back during the query shows only in the events.
        let event = match leaves.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty) if held => match tokio::time::timeout_at(deadline, leaves.recv()).await {
                Ok(Ok(event)) => event,
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) | Err(_) => return None,
            },
            Err(TryRecvError::Lagged(_)) => continue,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
        };
        if let MemberEvent::Left(m) = event {
            if m.role == Role::Agent && asked.contains(&m.name) {
                return left(&m.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_bus::dlr::DlrRecord;

    use super::*;

    fn reply(node: &str, role: HolderRole, owner: &str) -> LookupReply {
        let record = DlrRecord::synthetic(7, owner);
        LookupReply { version: wire::DOC_VERSION, node: node.into(), role, record, outcome: None }
    }

    #[test]
    fn a_reply_that_cannot_be_what_it_says_is_named() {
        let (c, id) = {
            let r = reply("gw2", HolderRole::Owner, "gw2");
            (r.record.connector.clone(), r.record.id.clone())
        };
        let on_own_key = |from_here: bool, r: &LookupReply, c: &str, id: &str| {
            implausible("gw1", from_here, RepliedOn::Node(r.node.as_str()), r, c, id)
        };
        assert_eq!(on_own_key(false, &reply("gw2", HolderRole::Owner, "gw2"), &c, &id), None);
        assert_eq!(on_own_key(false, &reply("gw3", HolderRole::Replica, "gw2"), &c, &id), None);
        assert_eq!(on_own_key(true, &reply("gw1", HolderRole::Replica, "gw2"), &c, &id), None);
        assert_eq!(on_own_key(true, &reply("gw1", HolderRole::Owner, "gw1"), &c, &id), None);
        let why = |r: LookupReply, c: &str, id: &str| on_own_key(false, &r, c, id).unwrap_or_default();
        assert!(why(reply("gw1", HolderRole::Owner, "gw1"), &c, &id).contains("in this node's name"));
        assert!(why(reply("gw3", HolderRole::Owner, "gw2"), &c, &id).contains("as the owner of a record of gw2"));
        assert!(why(reply("gw2", HolderRole::Replica, "gw2"), &c, &id).contains("copy of its own"));
        assert!(why(reply("gw2", HolderRole::Owner, "gw2"), &c, "another").contains("it is for"));
        assert!(why(reply("gw2", HolderRole::Owner, "gw2"), "other", &id).contains("it is for"));
        // A reply whose body names another node than its key, or that came on no node's key; one
        // on the query's own key (an agent of an earlier version) is checked as the others.
        let gw2 = reply("gw2", HolderRole::Owner, "gw2");
        let named = |on: RepliedOn| implausible("gw1", false, on, &gw2, &c, &id).unwrap_or_default();
        assert!(named(RepliedOn::Node("gw3")).contains("names gw2 on the key of gw3"));
        assert!(named(RepliedOn::Other).contains("on a key of no node"));
        assert_eq!(named(RepliedOn::Query), "");
        let gw1 = reply("gw1", HolderRole::Owner, "gw1");
        assert!(
            implausible("gw1", false, RepliedOn::Query, &gw1, &c, &id).is_some_and(|w| w.contains("this node's name"))
        );
    }
}
