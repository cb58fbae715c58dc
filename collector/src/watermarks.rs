//! Publishing the committed watermarks: per node, what this collector has committed of each of
//! its streams, on `<prefix>/watermark/<collector>/<node>`, with its epoch; agents compact their
//! journals by it. Only the group's writer publishes; a standby stays silent.

use std::collections::BTreeMap;
use std::time::Duration;

use switchboard_bus::keys::KeySpace;
use switchboard_bus::wire::control::Watermarks;
use switchboard_bus::StreamId;
use tokio_util::sync::CancellationToken;
use zenoh::Session;

use crate::sink::SinkStatus;

/// Watermarks are re-published this often even when they do not move (agents that join late
/// or missed one learn them), and at most this often... when they do: see [`publish`].
const WATERMARK_EVERY: Duration = Duration::from_secs(1);

/// Publish each node's watermarks when they move (at most every 100 ms) and every second; once
/// `cancel` fires, publish what the intake's last commit leaves, then stop.
pub(crate) async fn publish(
    session: Session,
    keys: KeySpace,
    collector: String,
    mut marks: tokio::sync::watch::Receiver<SinkStatus>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(WATERMARK_EVERY);
    // What was last published: the status changes more often than the watermarks do (its lag
    // figures), and unchanged watermarks go out only with the tick.
    let mut published = None;
    loop {
        let due = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tick.tick() => true,
            changed = marks.changed() => {
                if changed.is_err() { break; }
                tokio::time::sleep(Duration::from_millis(100)).await;
                false
            }
        };
        let now = current(&mut marks);
        if due || published.as_ref() != Some(&now) {
            send(&session, &keys, &collector, &now).await;
            published = Some(now);
        }
    }
    // Stopping: the intake commits what it holds, sends its last status and closes the channel.
    // Every status until then is published; the last one says what the stop committed.
    loop {
        let now = current(&mut marks);
        if published.as_ref() != Some(&now) {
            send(&session, &keys, &collector, &now).await;
            published = Some(now);
        }
        if marks.changed().await.is_err() {
            break;
        }
    }
}

/// The watermarks and epoch of the latest status, marked seen.
fn current(marks: &mut tokio::sync::watch::Receiver<SinkStatus>) -> (BTreeMap<StreamId, u64>, Option<u64>) {
    let status = marks.borrow_and_update();
    (status.watermarks.clone(), status.epoch)
}

/// Publish one document per node; nothing without an epoch (a standby's status).
async fn send(
    session: &Session,
    keys: &KeySpace,
    collector: &str,
    (marks, epoch): &(BTreeMap<StreamId, u64>, Option<u64>),
) {
    let Some(epoch) = *epoch else { return };
    let mut per_node: BTreeMap<&str, Watermarks> = BTreeMap::new();
    for (stream, &w) in marks {
        let doc = per_node.entry(stream.node.as_str()).or_default();
        doc.epoch = Some(epoch);
        doc.streams.insert(stream.local(), w);
    }
    for (node, doc) in per_node {
        if let Ok(key) = keys.watermark(collector, node) {
            if let Err(e) = session.put(key, doc.encode()).await {
                tracing::debug!(error = %e, "cannot publish watermarks");
            }
        }
    }
}
