//! Lookups over the bus: the queryable every node answers, and the query that asks them all.
//!
//! A lookup is one query on `<prefix>/dlr/id/<connector>/<id>` to every node (target `All`,
//! no consolidation, so replies arrive as they are sent). Each node that holds the record
//! answers with a [`LookupReply`]; the others stay silent. A node asked to wait (`wait_ms=N`)
//! keeps the query open and answers when the record is registered with it, so a DLR that
//! overtakes its registration still resolves in one round trip.
//!
//! The asker takes the owner's reply as soon as it comes. A replica's reply is enough once the
//! owner is known to be down; while the owner is live the asker waits for it (it may be taking
//! the report) until the query completes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_bus::dlr::wire::{DlrReport, LookupReply, Role as HolderRole};
use switchboard_bus::keys::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::query::{ConsolidationMode, Query, QueryTarget};

use super::{DlrError, DlrService};
use crate::AgentError;

/// Declare the lookup queryable and answer it until `cancel` fires.
pub(crate) async fn serve(
    service: Arc<DlrService>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let key = service.keys.all_dlr_ids().map_err(|e| AgentError::Bus(e.to_string()))?;
    let queryable =
        service.session.declare_queryable(key).await.map_err(|e| AgentError::Bus(format!("DLR lookups: {e}")))?;
    tracker.spawn(async move {
        loop {
            let query = tokio::select! {
                _ = cancel.cancelled() => break,
                q = queryable.recv_async() => match q { Ok(q) => q, Err(_) => break },
            };
            tokio::spawn(answer(service.clone(), query));
        }
    });
    Ok(())
}

async fn answer(service: Arc<DlrService>, query: Query) {
    let Some((connector, id)) = service.keys.parse_dlr_id(query.key_expr().as_str()) else {
        service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let report = match query.payload().map(|p| serde_json::from_slice::<DlrReport>(&p.to_bytes())) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            let _ = query.reply_err(format!("payload is not a DLR report: {e}")).await;
            return;
        }
    };
    let wait = query
        .parameters()
        .get("wait_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(service.settings.max_wait_ms)))
        .unwrap_or_default();
    let mut reply = service.answer(&connector, &id, report.as_ref());
    if matches!(reply, Ok(None)) && !wait.is_zero() {
        let key = switchboard_bus::dlr::record::store_key(&connector, &id);
        if service.wait_for(&key, wait).await {
            reply = service.answer(&connector, &id, report.as_ref());
        }
    }
    match reply {
        Ok(Some(r)) => {
            service.stats.lookups_answered.fetch_add(1, Ordering::Relaxed);
            match serde_json::to_vec(&r) {
                Ok(body) => {
                    let _ = query.reply(query.key_expr().clone(), body).await;
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode a lookup reply"),
            }
        }
        Ok(None) => {}
        Err(e) => {
            let _ = query.reply_err(e.to_string()).await;
        }
    }
}

/// Ask every node for `(connector, canonical id)`; the best reply and how long it took.
pub(crate) async fn query(
    service: &DlrService,
    connector: &str,
    canonical: &str,
    wait: Duration,
    report: Option<&DlrReport>,
) -> Result<Option<(LookupReply, Duration)>, DlrError> {
    let key = service.keys.dlr_id(connector, canonical).map_err(|e| DlrError::BadRequest(e.to_string()))?;
    let selector = if wait.is_zero() { key.to_string() } else { format!("{key}?wait_ms={}", wait.as_millis()) };
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
        get = get.payload(serde_json::to_vec(r).map_err(|e| DlrError::Bus(e.to_string()))?);
    }
    get.await.map_err(|e| DlrError::Bus(e.to_string()))?;
    let mut best: Option<LookupReply> = None;
    while let Some(reply) = replies.recv().await {
        let sample = match reply.result() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(key = %key, error = %String::from_utf8_lossy(&e.payload().to_bytes()), "a node failed a DLR lookup");
                continue;
            }
        };
        let Ok(r) = serde_json::from_slice::<LookupReply>(&sample.payload().to_bytes()) else {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if r.role == HolderRole::Owner {
            return Ok(Some((r, started.elapsed())));
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
    Ok(best.map(|b| (b, started.elapsed())))
}
