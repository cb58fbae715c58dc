//! The replay client: asks an agent for the sequence ranges a stream is missing (found against
//! its heads) and feeds the answers to the sink as replayed payloads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use switchboard_bus::keys::KeySpace;
use switchboard_bus::wire::control::MAX_REPLAY_RECORDS;
use tokio_util::sync::CancellationToken;
use zenoh::query::ConsolidationMode;
use zenoh::Session;

use crate::intake::Input;
use crate::sink::ReplayRequest;
use crate::stats::CollectorStats;

/// Replies an agent could not give in full are logged at most once per 30 s, with the count since.
static REPLAY_FAILED_LOGGED: std::sync::Mutex<switchboard_bus::throttle::Throttle> =
    std::sync::Mutex::new(switchboard_bus::throttle::Throttle::new(Duration::from_secs(30)));

/// How long a replay query may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Send replay queries and feed their answers to the sink.
pub(crate) async fn run(
    session: Session,
    keys: KeySpace,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ReplayRequest>,
    tx: flume::Sender<Input>,
    stats: Arc<CollectorStats>,
    cancel: CancellationToken,
) {
    loop {
        let req = tokio::select! {
            _ = cancel.cancelled() => break,
            r = requests.recv() => match r { Some(r) => r, None => break },
        };
        let Ok(key) = keys.replay(&req.stream) else { continue };
        let (session, tx, stats) = (session.clone(), tx.clone(), stats.clone());
        tokio::spawn(async move {
            // In parts no longer than an agent answers, one after the other.
            let mut from = req.from;
            while from <= req.to {
                let to = req.to.min(from.saturating_add(MAX_REPLAY_RECORDS - 1));
                if !ask(&session, &key, &req.stream, from, to, &tx, &stats).await {
                    return;
                }
                match to.checked_add(1) {
                    Some(next) => from = next,
                    None => return,
                }
            }
        });
    }
}

/// Ask for `from..=to` of `stream` and feed the answers to the sink; `false` once the sink is gone.
async fn ask(
    session: &Session,
    key: &zenoh::key_expr::OwnedKeyExpr,
    stream: &switchboard_bus::StreamId,
    from: u64,
    to: u64,
    tx: &flume::Sender<Input>,
    stats: &CollectorStats,
) -> bool {
    stats.replay_requests.fetch_add(1, Ordering::Relaxed);
    let selector = format!("{key}?from={from};to={to}");
    let replies =
        match session.get(selector.as_str()).consolidation(ConsolidationMode::None).timeout(REPLAY_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                stats.replay_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%selector, error = %e, "replay query failed");
                return true;
            }
        };
    while let Ok(reply) = replies.recv_async().await {
        match reply.result() {
            Ok(sample) => {
                let input = Input::Data { stream: stream.clone(), payload: sample.payload().clone(), replayed: true };
                if tx.send_async(input).await.is_err() {
                    return false;
                }
            }
            Err(e) => {
                stats.replay_errors.fetch_add(1, Ordering::Relaxed);
                // Throttled: a leader cut off from the store asks again every few seconds for
                // ranges another collector committed meanwhile (counted in replay_errors).
                if let Some(unlogged) = REPLAY_FAILED_LOGGED.lock().ok().and_then(|mut t| t.admit()) {
                    tracing::warn!(%selector, error = %String::from_utf8_lossy(&e.payload().to_bytes()), failed_since_last_line = unlogged, "agent could not replay in full");
                }
            }
        }
    }
    true
}
