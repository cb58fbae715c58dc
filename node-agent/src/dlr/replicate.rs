//! Copies of this node's records on other live nodes (`[dlr] copies` each, 2 by default), and
//! the copies it keeps for others.
//!
//! [`run`] sends every change of an own record (register, report, close) to the record's
//! replicas: the live nodes that [`replicas_for`] picks among the others. Changes wait in the
//! bounded [`super::outbox::Outbox`]; they are batched (up to [`BATCH_OPS`] per query,
//! [`IN_FLIGHT`] queries unacknowledged per replica, each replica in a lane of its own so that
//! one that hangs holds back no other's copies) and each batch is a query on
//! `<prefix>/dlr/replica/<node>` that the replica acknowledges; a batch that fails goes back to
//! the queue after [`LANE_PAUSE`] (a pass that fails is tried again every second). When the
//! live set changes, one pass over the store sends each record to the replicas it gained (and
//! tells those it lost, if live, to drop it). A pass that sends
//! everything runs after start (copies missed while this node was down), when the first peer
//! arrives, and after the outbox overflowed or a pass failed. Passes read the store in pages.
//!
//! [`serve`] answers the replica queryable: a copy is stored unless the node holds a higher
//! version, which goes back in the ack ([`ReplicaAck::newer`]) for the sender to adopt. That is
//! how a record closed on its replica while the owner was down reaches the owner again (and,
//! through the owner, its other replicas).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use switchboard_bus::dlr::rendezvous::replicas_for;
use switchboard_bus::dlr::wire::{ReplicaAck, ReplicaBatch, ReplicaOp, DOC_VERSION};
use switchboard_bus::dlr::DlrRecord;
use switchboard_bus::keys::Role;
use switchboard_bus::refusals::{refuse, Reason};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::query::{Query, QueryTarget};

use super::store::Write;
use super::DlrService;
use crate::AgentError;

/// Most operations in one replica batch.
pub const BATCH_OPS: usize = 2000;
/// Batches sent to replicas before the first is acknowledged.
pub const IN_FLIGHT: usize = 4;
/// How long a replica has to acknowledge a batch.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Declare this node's replica queryable and serve it until `cancel` fires.
pub(crate) async fn serve(
    service: Arc<DlrService>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let key = service.keys.dlr_replica(&service.node)?;
    let queryable = service
        .session
        .declare_queryable(key)
        .await
        .map_err(|source| AgentError::Declare { what: "DLR replica queryable", source })?;
    tracker.spawn(async move {
        loop {
            let query = tokio::select! {
                _ = cancel.cancelled() => break,
                q = queryable.recv_async() => match q { Ok(q) => q, Err(_) => break },
            };
            let service = service.clone();
            tokio::spawn(async move {
                let (service2, payload) = (service.clone(), query.payload().map(|p| p.to_bytes().into_owned()));
                let applied = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    let ack = take(&service2, payload.as_deref());
                    tracing::debug!(us = started.elapsed().as_micros() as u64, "replica batch applied");
                    ack
                })
                .await;
                reply(&query, applied.map_err(|e| e.to_string()).and_then(|r| r)).await;
            });
        }
    });
    Ok(())
}

async fn reply(query: &Query, ack: Result<ReplicaAck, String>) {
    let sent = match ack.and_then(|a| serde_json::to_vec(&a).map_err(|e| e.to_string())) {
        Ok(body) => query.reply(query.key_expr().clone(), body).await,
        Err(e) => query.reply_err(e).await,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot answer a replica batch");
    }
}

/// Apply one replica batch.
fn take(service: &DlrService, payload: Option<&[u8]>) -> Result<ReplicaAck, String> {
    let batch: ReplicaBatch = switchboard_bus::dlr::wire::decode(payload.unwrap_or_default()).map_err(|e| {
        service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        refuse(Reason::ReplicaInvalid, format_args!("not a replica batch: {e}"));
        format!("not a replica batch: {e}")
    })?;
    if batch.ops.len() > BATCH_OPS {
        refuse(Reason::ReplicaInvalid, format_args!("a replica batch of {} operations", batch.ops.len()));
        return Err(format!("a replica batch holds at most {BATCH_OPS} operations, not {}", batch.ops.len()));
    }
    let mut ack = ReplicaAck { version: DOC_VERSION, applied: 0, newer: Vec::new() };
    let _guard = service.store.lock();
    let mut puts: Vec<(DlrRecord, Option<DlrRecord>)> = Vec::new();
    let mut drops: Vec<DlrRecord> = Vec::new();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let latest_expiry = super::types::latest_expiry(service.settings.max_expiry_s);
    for op in batch.ops {
        match op {
            // Only the owner writes its records: a copy of one of ours is someone else's forgery
            // (or a mistake), never newer than what we hold.
            ReplicaOp::Put(record) if record.owner == service.node => {
                refuse(
                    Reason::ReplicaOwnRecord,
                    format_args!("a replica of this node's own record {}/{}", record.connector, record.id),
                );
            }
            ReplicaOp::Put(record) => {
                if let Err(e) = super::types::check_record(&record, latest_expiry) {
                    refuse(Reason::ReplicaInvalid, format_args!("record {}/{}: {e}", record.connector, record.id));
                    continue;
                }
                let key = record.store_key();
                let held = match seen.get(&key) {
                    Some(&i) => Some(puts[i].0.clone()),
                    None => service.store.get_key(&key).map_err(|e| e.to_string())?,
                };
                // Nor does another node take over an open record of ours by naming itself its
                // owner: its DLR would never reach this node's gateway.
                if held.as_ref().is_some_and(|h| h.owner == service.node && h.is_open()) {
                    refuse(
                        Reason::ReplicaOwnRecord,
                        format_args!(
                            "a replica from {} of this node's own open record {}/{} (naming {} its owner)",
                            batch.from, record.connector, record.id, record.owner
                        ),
                    );
                    continue;
                }
                // A record's owner never changes: a copy naming another owner than the one held
                // (open) is a forgery, or the same id registered at two nodes, whose DLR must
                // still reach one gateway.
                if let Some(h) = held.as_ref().filter(|h| h.owner != record.owner && h.is_open()) {
                    refuse(
                        Reason::ReplicaInvalid,
                        format_args!(
                            "a replica from {} of {}/{} naming {} its owner, held open as {}'s",
                            batch.from, record.connector, record.id, record.owner, h.owner
                        ),
                    );
                    continue;
                }
                match held {
                    Some(h) if h.version > record.version || (h.version == record.version && h != record) => {
                        ack.newer.push(h);
                    }
                    Some(h) if h == record => ack.applied += 1,
                    held => {
                        ack.applied += 1;
                        if let Some(&i) = seen.get(&key) {
                            puts[i].0 = record;
                        } else {
                            seen.insert(key, puts.len());
                            puts.push((record, held));
                        }
                    }
                }
            }
            ReplicaOp::Drop { connector, id } => {
                match service.store.get(&connector, &id).map_err(|e| e.to_string())? {
                    // A node never drops its own records on another's word.
                    Some(h) if h.owner == service.node => {
                        refuse(
                            Reason::ReplicaOwnRecord,
                            format_args!("a drop from {} of this node's own record {connector}/{id}", batch.from),
                        );
                        continue;
                    }
                    // Only the owner moves its copies away.
                    Some(h) if h.owner != batch.from => {
                        refuse(
                            Reason::ReplicaInvalid,
                            format_args!(
                                "a drop from {} of {connector}/{id}, a copy of {}'s record",
                                batch.from, h.owner
                            ),
                        );
                        continue;
                    }
                    Some(h) if !seen.contains_key(&h.store_key()) => drops.push(h),
                    // Not held (counts as applied), or put by this same batch (kept).
                    _ => {}
                }
                ack.applied += 1;
            }
        }
    }
    let mut writes: Vec<Write<'_>> =
        puts.iter().map(|(record, previous)| Write::Put { record, previous: previous.as_ref() }).collect();
    writes.extend(drops.iter().map(Write::Remove));
    service.store.write(&writes).map_err(|e| {
        service.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        e.to_string()
    })?;
    service.stats.replica_ops_received.fetch_add(ack.applied, Ordering::Relaxed);
    Ok(ack)
}

/// A replica batch that was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The node's name makes no key expression.
    #[error(transparent)]
    Key(#[from] switchboard_bus::keys::KeyError),
    /// The batch could not be encoded.
    #[error("cannot encode a replica batch: {0}")]
    Encode(#[from] serde_json::Error),
    /// The query could not be sent.
    #[error("bus: {0}")]
    Bus(zenoh::Error),
    /// No answer in time.
    #[error("node {0} did not acknowledge")]
    NoAck(String),
    /// The node refused the batch.
    #[error("node {node} refused the replica batch: {reason}")]
    Refused {
        /// The replica's node.
        node: String,
        /// What it said.
        reason: String,
    },
    /// The answer is not an acknowledgement.
    #[error("node {node} answered with a malformed acknowledgement: {source}")]
    BadAck {
        /// The replica's node.
        node: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// Send `ops` to `node`'s replica queryable and wait for its ack.
pub(crate) async fn send(service: &DlrService, node: &str, ops: &[ReplicaOp]) -> Result<ReplicaAck, ReplicaError> {
    let n = ops.len() as u64;
    let key = service.keys.dlr_replica(node)?;
    let body = ReplicaBatch::encode(&service.node, ops)?;
    let result = async {
        let replies = service
            .session
            .get(key)
            .payload(body)
            .target(QueryTarget::All)
            .timeout(ACK_TIMEOUT)
            .await
            .map_err(ReplicaError::Bus)?;
        let reply = replies.recv_async().await.map_err(|_| ReplicaError::NoAck(node.to_owned()))?;
        let sample = reply.result().map_err(|e| ReplicaError::Refused {
            node: node.to_owned(),
            reason: String::from_utf8_lossy(&e.payload().to_bytes()).into_owned(),
        })?;
        serde_json::from_slice::<ReplicaAck>(&sample.payload().to_bytes())
            .map_err(|source| ReplicaError::BadAck { node: node.to_owned(), source })
    }
    .await;
    match &result {
        Ok(_) => service.stats.replica_ops_sent.fetch_add(n, Ordering::Relaxed),
        Err(_) => service.stats.replica_failures.fetch_add(1, Ordering::Relaxed),
    };
    result
}

/// Replicate own records until `cancel` fires: each change the outbox hands over, and a pass
/// over the store when the live set changes or the outbox had to forget changes.
pub(crate) async fn run(service: Arc<DlrService>, cancel: CancellationToken) {
    let mut live = service.membership.subscribe();
    let mut peers: Vec<String> = Vec::new();
    // A pass that sends every own record is owed: at start (copies missed while this node was
    // down), when the first peer arrives, after the outbox forgot changes, after a failed pass.
    let mut resync = true;
    // The peers before a change of the live set, whose pass (moving copies) is owed.
    let mut moved_from: Option<Vec<String>> = None;
    let mut last_pass: Option<tokio::time::Instant> = None;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut members_changed = true;
    // How often each peer was seen joining: a peer that left and came back between two looks
    // (this node or that one hung past the lease, a cut link) is in the live set both times,
    // yet its copies must be checked as a new peer's are, or records closed on them while the
    // two were apart would stay open here.
    let mut joins: BTreeMap<String, u64> = BTreeMap::new();
    // This node itself not running for a while (stopped, starved), or taking its records back
    // after a rebuild, is the same: every copy is checked again once it runs (or has them),
    // whatever its view of the live set shows.
    let mut woke = service.wake.check_owed();
    let mut lanes = Lanes::default();
    loop {
        if service.wake.check_owed() != woke {
            woke = service.wake.check_owed();
            resync = true;
            moved_from = None;
        }
        if members_changed {
            members_changed = false;
            let now: Vec<String> = live
                .borrow_and_update()
                .iter()
                .filter(|m| m.role == Role::Agent && m.name != service.node)
                .map(|m| m.name.clone())
                .collect();
            let counts = service.membership.joins_of(Role::Agent);
            let returned: Vec<String> =
                peers.iter().filter(|p| now.contains(p) && joins.get(*p) != counts.get(*p)).cloned().collect();
            joins = counts;
            if now != peers || !returned.is_empty() {
                if !returned.is_empty() {
                    tracing::info!(?returned, "peers left and came back: their copies are checked again");
                }
                let before: Vec<String> =
                    std::mem::replace(&mut peers, now).into_iter().filter(|p| !returned.contains(p)).collect();
                lanes.keep_only(&service, &peers);
                // A pass still owed from an earlier change must also treat them as new.
                if let Some(owed) = moved_from.as_mut() {
                    owed.retain(|p| !returned.contains(p));
                }
                if before.is_empty() || moved_from.as_ref().is_some_and(Vec::is_empty) {
                    resync = true;
                    moved_from = None;
                } else if moved_from.is_none() {
                    moved_from = Some(before);
                }
            }
        }
        if peers.is_empty() {
            // Nobody to send to: the pass when a peer arrives sends every record, so holding
            // the changes meanwhile would only cost memory. No copy is live to check either.
            service.outbox.take();
            lanes.keep_only(&service, &peers);
            service.wake.copies_checked(woke);
            resync = true;
            moved_from = None;
        } else if resync && last_pass.is_none_or(|t| t.elapsed() >= RETRY) && !service.wake.just_woke() {
            // Not while just woken: a report this node refuses then (`Claim::Stale`) has its
            // copies closed by the reporter right after, and a pass begun before that would count
            // them checked while they were still open (a short stop, under the lease, changes no
            // live set to check them again).
            // Changes queued so far are in the store the pass reads; later ones come after.
            service.outbox.take();
            last_pass = Some(tokio::time::Instant::now());
            (resync, moved_from) = (pass(&service, None, &peers).await.is_err(), None);
            if !resync {
                service.wake.copies_checked(woke);
            }
        } else if !service.wake.is_restoring() {
            // Not while taking records back from their copies: a pass moving copies drops them
            // where they no longer belong, and one a reporter closed could go before this node
            // has read it. The pass owed once the restore is done checks every copy instead.
            if let Some(before) = moved_from.take().filter(|_| !resync) {
                resync = pass(&service, Some(&before), &peers).await.is_err();
            }
        }
        // While just woken the pass waits, but new changes still go out (a host that stalls
        // every few seconds would otherwise never send them); a holder with a newer copy answers
        // with it, as in a pass.
        if !peers.is_empty() && (!resync || service.wake.just_woke()) {
            let queued = service.outbox.take();
            // A pass owed (deferred while just woken) stays owed.
            resync |= queued.overflowed;
            resync |= lanes.flush(&service, &peers, queued.records);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = lanes.sending.join_next_with_id(), if !lanes.sending.is_empty() => {
                lanes.done(&service, done.map_or_else(|e| e.id(), |(id, ())| id));
            }
            changed = live.changed() => {
                if changed.is_err() {
                    break;
                }
                members_changed = true;
            }
            _ = service.outbox.pushed() => {}
            _ = retry.tick() => {}
        }
    }
    // A last try for what is still unsent.
    let queued = service.outbox.take();
    if !peers.is_empty() {
        lanes.flush(&service, &peers, queued.records);
    }
    while let Some(done) = lanes.sending.join_next_with_id().await {
        lanes.done(&service, done.map_or_else(|e| e.id(), |(id, ())| id));
    }
}

/// How often failed batches and failed passes are tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The changes on their way to each replica: up to [`IN_FLIGHT`] batches unacknowledged per
/// replica, the rest held until one is. Each replica has a lane of its own, so one that hangs
/// (its batches wait out [`ACK_TIMEOUT`]) does not hold back the copies of the others.
#[derive(Default)]
struct Lanes {
    /// The batches on their way; each ends by adopting the replica's newer copies, or by
    /// queueing its puts again when it failed.
    sending: tokio::task::JoinSet<()>,
    /// Which replica each batch on its way goes to.
    to: HashMap<tokio::task::Id, String>,
    /// Batches on their way per replica.
    busy: BTreeMap<String, usize>,
    /// Puts waiting for a replica whose lane is full.
    held: BTreeMap<String, Vec<ReplicaOp>>,
}

impl Lanes {
    /// Send `records` to their replicas among `peers`. Returns whether puts were dropped (a
    /// replica's held puts past the queue's bound, `[dlr] replica_queue`): a pass is then owed.
    fn flush(&mut self, service: &Arc<DlrService>, peers: &[String], records: HashMap<Vec<u8>, DlrRecord>) -> bool {
        self.keep_only(service, peers);
        let mut touched = BTreeSet::new();
        for (key, record) in records {
            if record.owner != service.node {
                continue;
            }
            for node in replicas_for(&key, &service.node, peers.iter().map(String::as_str), service.settings.copies) {
                self.held.entry(node.to_owned()).or_default().push(ReplicaOp::Put(record.clone()));
                touched.insert(node.to_owned());
            }
        }
        let mut dropped = false;
        for node in touched {
            if self.held.get(&node).is_some_and(|h| h.len() > service.outbox.cap()) {
                tracing::warn!(
                    node,
                    "replica {node} acknowledges no batch; its changes wait for a pass over the store"
                );
                self.held.remove(&node);
                service.outbox.forgot();
                dropped = true;
            }
            self.start(service, &node);
        }
        service.outbox.set_held(self.held.values().map(Vec::len).sum());
        dropped
    }

    /// Forget what is held for replicas no longer among `peers`: a replica no longer live gets
    /// nothing more, and the pass its leaving brings moves its copies.
    fn keep_only(&mut self, service: &DlrService, peers: &[String]) {
        self.held.retain(|node, _| peers.contains(node));
        service.outbox.set_held(self.held.values().map(Vec::len).sum());
    }

    /// Send what is held for `node`, as its lane has room.
    fn start(&mut self, service: &Arc<DlrService>, node: &str) {
        loop {
            let busy = self.busy.get(node).copied().unwrap_or(0);
            let Some(held) = self.held.get_mut(node).filter(|h| !h.is_empty() && busy < IN_FLIGHT) else { return };
            let rest = held.split_off(held.len().min(BATCH_OPS));
            let ops = std::mem::replace(held, rest);
            let (service, to) = (service.clone(), node.to_owned());
            let task = self.sending.spawn(async move {
                match send(&service, &to, &ops).await {
                    Ok(ack) => adopt(&service, ack.newer),
                    Err(e) => {
                        // The lane pauses (its slot held) before the batch goes back: a replica
                        // that stopped answering (leaving, its token not yet gone) is not asked
                        // again in a loop.
                        tokio::time::sleep(LANE_PAUSE).await;
                        failed(&service, &to, ops, &e);
                    }
                }
            });
            self.to.insert(task.id(), node.to_owned());
            self.busy.insert(node.to_owned(), busy.saturating_add(1));
        }
    }

    /// The batch `id` ended: its lane has room for what is held.
    fn done(&mut self, service: &Arc<DlrService>, id: tokio::task::Id) {
        let Some(node) = self.to.remove(&id) else { return };
        match self.busy.get(&node).copied() {
            // An idle lane is forgotten: names come and go with the live set.
            Some(0 | 1) | None => self.busy.remove(&node),
            Some(n) => self.busy.insert(node.clone(), n - 1),
        };
        self.start(service, &node);
        service.outbox.set_held(self.held.values().map(Vec::len).sum());
    }
}

/// Send `batches` with up to [`IN_FLIGHT`] unacknowledged at once; adopt what the replicas hold
/// newer, and queue the puts of failed batches again. Returns the operations acknowledged and
/// whether a batch failed.
async fn send_batches(service: &DlrService, batches: Vec<(String, Vec<ReplicaOp>)>) -> (u64, bool) {
    let (mut acked, mut failed) = (0, false);
    let mut results = futures::stream::iter(batches)
        .map(|(node, ops)| async move {
            let result = send(service, &node, &ops).await;
            (node, ops, result)
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((node, ops, result)) = results.next().await {
        match result {
            Ok(ack) => {
                acked += ops.len() as u64;
                adopt(service, ack.newer);
            }
            Err(e) => {
                failed = true;
                self::failed(service, &node, ops, &e);
            }
        }
    }
    (acked, failed)
}

/// How long a lane waits after a failed batch before its puts are queued again.
const LANE_PAUSE: Duration = Duration::from_millis(250);

/// Failed batches said at most this often (with how many went unsaid).
static FAILURES_SAID: std::sync::Mutex<switchboard_bus::throttle::Throttle> =
    std::sync::Mutex::new(switchboard_bus::throttle::Throttle::new(Duration::from_secs(10)));

/// A batch to `node` failed: say so (throttled) and queue its puts again.
fn failed(service: &DlrService, node: &str, ops: Vec<ReplicaOp>, e: &ReplicaError) {
    // One admit under this lock: a poisoned lock is taken over.
    if let Some(unsaid) = FAILURES_SAID.lock().unwrap_or_else(|p| p.into_inner()).admit() {
        tracing::warn!(node, records = ops.len(), error = %e, unsaid_failures = unsaid, "replica batch failed; retrying");
    }
    service.outbox.requeue(ops.into_iter().filter_map(|op| match op {
        ReplicaOp::Put(r) => Some(r),
        ReplicaOp::Drop { .. } => None,
    }));
}

/// Take copies the replica holds in a newer version (closed while this node was down), and
/// queue them for the other replicas, whose copies may be older.
fn adopt(service: &DlrService, newer: Vec<DlrRecord>) {
    if newer.is_empty() {
        return;
    }
    let latest_expiry = super::types::latest_expiry(service.settings.max_expiry_s);
    let _guard = service.store.lock();
    for record in newer.into_iter().filter(|r| r.owner == service.node) {
        if let Err(e) = super::types::check_record(&record, latest_expiry) {
            refuse(Reason::ReplicaInvalid, format_args!("a newer copy of {}/{}: {e}", record.connector, record.id));
            continue;
        }
        let held = service.store.get_key(&record.store_key()).ok().flatten();
        if held.as_ref().is_some_and(|h| h.version >= record.version) {
            continue;
        }
        match service.store.write(&[Write::Put { record: &record, previous: held.as_ref() }]) {
            Ok(_) if service.settings.copies > 1 => service.outbox.push(record),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot adopt a newer copy"),
        }
    }
}

/// A replication pass that stopped at a failed batch; it is tried again whole.
#[derive(Debug)]
struct PassFailed;

/// After a change of the live set: send each own record to the replicas it gained and drop it
/// from those it lost (if still live). With `before == None`, send it to all its replicas.
/// The store is read in pages and batches go out as they fill, so memory stays bounded by a
/// page and one batch per peer, however many records the node holds.
async fn pass(service: &DlrService, before: Option<&[String]>, now: &[String]) -> Result<u64, PassFailed> {
    let me = service.node.as_str();
    let mut moves: BTreeMap<String, Vec<ReplicaOp>> = BTreeMap::new();
    let mut sent = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        // Read under no lock: a record changed meanwhile also comes through the outbox.
        let store = service.store.clone();
        let from = after.take();
        let page = tokio::task::spawn_blocking(move || store.page(from.as_deref(), PASS_PAGE)).await;
        let (records, next) = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "DLR replication pass cannot read the store");
                return Err(PassFailed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "DLR replication pass stopped");
                return Err(PassFailed);
            }
        };
        let mut ready: Vec<(String, Vec<ReplicaOp>)> = Vec::new();
        let copies = service.settings.copies;
        for record in records.into_iter().filter(|r| r.owner == me) {
            let key = record.store_key();
            let new = replicas_for(&key, me, now.iter().map(String::as_str), copies);
            let old = before.map(|b| replicas_for(&key, me, b.iter().map(String::as_str), copies)).unwrap_or_default();
            for lost in old.iter().filter(|o| !new.contains(o) && now.iter().any(|n| n == *o)) {
                let drop = ReplicaOp::Drop { connector: record.connector.clone(), id: record.id.clone() };
                moves.entry((*lost).to_owned()).or_default().push(drop);
            }
            for gained in new.iter().filter(|n| !old.contains(n)) {
                moves.entry((*gained).to_owned()).or_default().push(ReplicaOp::Put(record.clone()));
            }
            for (node, ops) in moves.iter_mut().filter(|(_, ops)| ops.len() >= BATCH_OPS) {
                ready.push((node.clone(), std::mem::take(ops)));
            }
        }
        if next.is_none() {
            ready.extend(std::mem::take(&mut moves).into_iter().filter(|(_, ops)| !ops.is_empty()));
        }
        let (acked, failed) = send_batches(service, ready).await;
        sent += acked;
        if failed {
            tracing::warn!(
                peers = now.len(),
                records = sent,
                "DLR replication pass stopped at a failed batch; retrying"
            );
            return Err(PassFailed);
        }
        match next {
            Some(key) => after = Some(key),
            None => break,
        }
    }
    tracing::info!(peers = now.len(), records = sent, "DLR copies sent after a change of the live nodes");
    Ok(sent)
}

/// Records read from the store at once by a replication pass.
const PASS_PAGE: usize = BATCH_OPS * IN_FLIGHT;
