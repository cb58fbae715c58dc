//! The ask stream: lookups of the one node that must hold a record, as put messages.
//!
//! A query costs zenoh two timer tasks and a completion message on top of the request and its
//! reply; at thousands of lookups per second that dominates. So a resolve asks the first holder
//! with a [`DlrAsk`] published on `<prefix>/dlr/ask/<node>` and takes its [`DlrAnswer`] from
//! `<prefix>/dlr/answer/<client>/<node>`, where `<client>` is this session's own chunk and only
//! `agent:<node>` may put (docs/security.md): an answer on another node's key is not taken. The asked node
//! always answers (with `null` when it holds nothing), so no answer means the node is gone: the
//! ask ends at once when its subscriber disappears (zenoh's matching status), else at the
//! timeout, and the resolve falls back to asking every node.
//!
//! [`serve`] answers this node's asks; [`Asker`] asks other nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_bus::dlr::wire::{DlrAnswer, DlrAsk, LookupReply, DOC_VERSION};
use switchboard_bus::keys::KeySpace;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::matching::MatchingListener;
use zenoh::pubsub::{Publisher, Subscriber};
use zenoh::qos::CongestionControl;
use zenoh::Wait;

use super::answerer::{Answerer, Queued};
use super::{DlrError, DlrService, DlrStats};
use crate::AgentError;

/// Answer every ask published for this node until `cancel` fires, on the [`Answerer`]'s thread
/// (one store read and one put).
pub(crate) async fn serve(
    service: Arc<DlrService>,
    answerer: Answerer,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let key = service.keys.dlr_ask(&service.node)?;
    let svc = service.clone();
    let subscriber = service
        .session
        .declare_subscriber(key)
        .callback(move |sample| {
            let svc = svc.clone();
            answerer.run(move |queued| answer(&svc, &sample.payload().to_bytes(), queued));
        })
        .await
        .map_err(|source| AgentError::Declare { what: "DLR ask subscriber", source })?;
    tracker.spawn(async move {
        cancel.cancelled().await;
        drop(subscriber);
    });
    Ok(())
}

/// Answer one ask; a malformed one (no usable `reply_to`) is counted and dropped.
fn answer(service: &DlrService, payload: &[u8], queued: Queued) {
    let ask = match switchboard_bus::dlr::wire::decode::<DlrAsk>(payload) {
        Ok(ask) => ask,
        Err(e) => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "a DLR ask that is not a dlr_ask");
            return;
        }
    };
    let Ok(to) = service.keys.dlr_answer(&ask.reply_to, &service.node) else {
        service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reply_to = %ask.reply_to, "a DLR ask whose reply_to is not a key chunk");
        return;
    };
    let (reply, error) = match service.answer(&ask.connector, &ask.id, None) {
        Ok(reply) => (reply, None),
        Err(e) => (None, Some(e.to_string())),
    };
    if reply.is_some() {
        service.stats.lookups_answered.fetch_add(1, Ordering::Relaxed);
    }
    let body = match serde_json::to_vec(&DlrAnswer { version: DOC_VERSION, n: ask.n, reply, error }) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a DLR answer");
            return;
        }
    };
    // The last answer queued is express: sent at once with the batch of those before it, which
    // zenoh would otherwise hold for up to its batching limit (see `Asker::route`).
    let put = service.session.put(to, body).congestion_control(CongestionControl::Block).express(!queued.0);
    if let Err(e) = put.wait() {
        tracing::warn!(error = %e, "cannot send a DLR answer");
    }
}

/// An ask waiting for its answer.
struct Pending {
    node: Arc<str>,
    answer: oneshot::Sender<DlrAnswer>,
}

/// The asks in flight, by number.
type PendingAsks = Arc<Mutex<HashMap<u64, Pending>>>;

/// A publisher of asks to one node, and the listener that ends its asks when the node's
/// subscriber goes away.
struct Route {
    node: Arc<str>,
    /// Declared before the publisher so that it is dropped first: a publisher undeclared first
    /// takes its listeners with it, and the listener's own undeclaring then logs an error.
    _listener: MatchingListener<()>,
    publisher: Publisher<'static>,
    /// Whether the node's subscriber is there: kept by the listener, which zenoh calls at once
    /// when it is there already.
    listening: Arc<AtomicBool>,
}

/// This node's side of the ask stream: one answer subscriber, a publisher per asked node.
pub struct Asker {
    client: String,
    keys: KeySpace,
    session: zenoh::Session,
    next: AtomicU64,
    pending: PendingAsks,
    routes: Mutex<HashMap<Arc<str>, Arc<Route>>>,
    stats: Arc<DlrStats>,
    _answers: Subscriber<()>,
}

impl Asker {
    /// Subscribe to this session's answers (`<prefix>/dlr/answer/<node>.<session id>/*`, the
    /// last chunk naming the node that answers).
    pub async fn new(
        session: &zenoh::Session,
        keys: &KeySpace,
        node: &str,
        stats: Arc<DlrStats>,
    ) -> Result<Self, AgentError> {
        let client = format!("{node}.{}", session.zid());
        let key = keys.dlr_answers(&client)?;
        let pending: PendingAsks = Arc::default();
        let (waiting, counters, answer_keys) = (pending.clone(), stats.clone(), keys.clone());
        let answers = session
            .declare_subscriber(key)
            .callback(move |sample| {
                match switchboard_bus::dlr::wire::decode::<DlrAnswer>(&sample.payload().to_bytes()) {
                    Ok(answer) => {
                        let from = answer_keys.parse_dlr_answer_node(sample.key_expr().as_str());
                        let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                        match take_answered(&mut waiting, answer.n, from) {
                            Ok(Some(ask)) => {
                                let _ = ask.answer.send(answer);
                            }
                            // An answer after the ask gave up finds nothing: nothing to do.
                            Ok(None) => {}
                            Err(asked) => switchboard_bus::refusals::refuse(
                                switchboard_bus::refusals::Reason::LookupReplyInvalid,
                                format_args!(
                                    "an answer on the key of {} to a DLR lookup asked of {asked}",
                                    from.unwrap_or("no node")
                                ),
                            ),
                        }
                    }
                    Err(e) => {
                        counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "a DLR answer that is not a dlr_answer");
                    }
                }
            })
            .await
            .map_err(|source| AgentError::Declare { what: "DLR answer subscriber", source })?;
        Ok(Self {
            client,
            keys: keys.clone(),
            session: session.clone(),
            next: AtomicU64::new(0),
            pending,
            routes: Mutex::new(HashMap::new()),
            stats,
            _answers: answers,
        })
    }

    /// Ask `node` for `(connector, canonical id)`: its reply (`None` when it holds nothing), or
    /// `Ok(None)` as well when no node listens there, it did not answer within `timeout`
    /// (counted in `ask_timeouts`) or its answer is for another lookup (counted in
    /// `bad_requests`).
    pub async fn ask(
        &self,
        node: &str,
        connector: &str,
        canonical: &str,
        timeout: Duration,
    ) -> Result<Option<LookupReply>, DlrError> {
        Ok(match self.ask_node(node, connector, canonical, timeout).await? {
            Asked::Answered(reply) => reply,
            Asked::Unanswered(_) => None,
        })
    }

    /// [`Asker::ask`], telling an answer that the node holds nothing from no answer at all.
    pub async fn ask_node(
        &self,
        node: &str,
        connector: &str,
        canonical: &str,
        timeout: Duration,
    ) -> Result<Asked, DlrError> {
        let route = self.route(node).await?;
        if !route.listening.load(Ordering::Acquire) {
            return Ok(Asked::Unanswered(format!("node {node} is not reachable")));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let body = DlrAsk::encode(&self.client, n, connector, canonical)?;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(n, Pending { node: route.node.clone(), answer: tx });
        if let Err(e) = route.publisher.put(body).await {
            self.lock().remove(&n);
            return Err(DlrError::Bus(e));
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            // The node's subscriber went away: the listener dropped the ask.
            Ok(Err(_)) => return Ok(Asked::Unanswered(format!("the link to node {node} closed before it answered"))),
            Err(_) => {
                self.lock().remove(&n);
                self.stats.ask_timeouts.fetch_add(1, Ordering::Relaxed);
                return Ok(Asked::Unanswered(format!("node {node} did not answer within {} ms", timeout.as_millis())));
            }
        };
        match (answer.error, answer.reply) {
            (Some(reason), _) => Err(DlrError::Refused { node: node.to_owned(), reason }),
            // Another asker using the same answer key could be answered with the same number.
            (None, Some(r)) if r.record.connector != connector || r.record.id != canonical => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node, client = %self.client, "an answer for another lookup: is the answer key shared?");
                Ok(Asked::Unanswered(format!("node {node} answered another lookup")))
            }
            (None, Some(r)) if r.node != node => {
                switchboard_bus::refusals::refuse(
                    switchboard_bus::refusals::Reason::LookupReplyInvalid,
                    format_args!("an answer of node {node} to a DLR lookup in the name of {}", r.node),
                );
                Ok(Asked::Unanswered(format!("node {node} answered in another node's name")))
            }
            (None, reply) => Ok(Asked::Answered(reply)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The publisher of asks to `node`, declared on first use.
    async fn route(&self, node: &str) -> Result<Arc<Route>, DlrError> {
        if let Some(route) = self.routes.lock().unwrap_or_else(|p| p.into_inner()).get(node) {
            return Ok(route.clone());
        }
        let key = self.keys.dlr_ask(node).map_err(|e| DlrError::BadRequest(e.to_string()))?;
        let publisher = self
            .session
            .declare_publisher(key)
            .congestion_control(CongestionControl::Block)
            // An ask is one small message someone waits for: zenoh's transmit side would hold a
            // batch that is being written to for up to its batching time limit (1 ms by
            // default, in timer ticks of 1 ms) to fill it; express sends it at once.
            .express(true)
            .await
            .map_err(DlrError::Bus)?;
        // Whether the node listens now; the listener below keeps it current.
        let matching = publisher.matching_status().await.map_err(DlrError::Bus)?.matching();
        let listening = Arc::new(AtomicBool::new(matching));
        let (pending, gone_node, flag) = (self.pending.clone(), Arc::<str>::from(node), listening.clone());
        let listener = publisher
            .matching_listener()
            .callback(move |status| {
                flag.store(status.matching(), Ordering::Release);
                if !status.matching() {
                    // Dropping the senders ends those asks at once.
                    pending.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, p| p.node != gone_node);
                }
            })
            .await
            .map_err(DlrError::Bus)?;
        let route = Arc::new(Route { node: Arc::from(node), _listener: listener, publisher, listening });
        // Two first asks may race here: the first route stored wins, the other is dropped.
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(routes.entry(Arc::from(node)).or_insert(route).clone())
    }
}

/// Take the ask numbered `n` for its answer, sent on the key of node `from`: `Ok(None)` when no
/// such ask waits (it gave up), `Err(asked node)` when it waits for another node's answer (left
/// waiting: only the node asked answers it).
fn take_answered(pending: &mut HashMap<u64, Pending>, n: u64, from: Option<&str>) -> Result<Option<Pending>, Arc<str>> {
    match pending.get(&n) {
        None => Ok(None),
        Some(ask) if Some(&*ask.node) != from => Err(ask.node.clone()),
        Some(_) => Ok(pending.remove(&n)),
    }
}

/// What asking one node gave.
#[derive(Debug)]
// Returned once per ask and taken apart at once, never stored: boxing would only add an
// allocation to every lookup.
#[allow(clippy::large_enum_variant)]
pub enum Asked {
    /// It answered: its reply, `None` when it holds nothing.
    Answered(Option<LookupReply>),
    /// No answer (why), so nothing is known of what it holds.
    Unanswered(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_is_answered_only_from_the_key_of_the_node_asked() {
        let mut pending = HashMap::new();
        let (tx, mut rx) = oneshot::channel();
        pending.insert(7, Pending { node: Arc::from("gw2"), answer: tx });
        // Another node's key, or none: refused, and the ask still waits.
        assert_eq!(take_answered(&mut pending, 7, Some("gw3")).err().as_deref(), Some("gw2"));
        assert_eq!(take_answered(&mut pending, 7, None).err().as_deref(), Some("gw2"));
        assert!(pending.contains_key(&7) && rx.try_recv().is_err());
        // An ask that gave up (or never was) finds nothing.
        assert!(matches!(take_answered(&mut pending, 8, Some("gw2")), Ok(None)));
        // The node asked.
        assert!(matches!(take_answered(&mut pending, 7, Some("gw2")), Ok(Some(p)) if &*p.node == "gw2"));
        assert!(pending.is_empty());
    }
}
