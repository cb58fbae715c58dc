//! Publishing the committed watermarks: per node, what this collector has committed of each of
//! its streams, on `<prefix>/watermark/<collector>/<node>`, with its epoch; agents compact their
//! journals by it. Only the group's writer publishes; a standby stays silent.

use std::collections::BTreeMap;
use std::time::Duration;

use switchboard_bus::keys::KeySpace;
use switchboard_bus::wire::control::Watermarks;
use tokio_util::sync::CancellationToken;
use zenoh::Session;

use crate::sink::SinkStatus;

/// Watermarks are re-published this often even when they do not move (agents that join late
/// or missed one learn them), and at most this often... when they do: see [`publish`].
const WATERMARK_EVERY: Duration = Duration::from_secs(1);

/// Publish each node's watermarks when they move (at most every 100 ms) and every second.
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
            _ = cancel.cancelled() => true,
            _ = tick.tick() => true,
            changed = marks.changed() => {
                if changed.is_err() { break; }
                tokio::time::sleep(Duration::from_millis(100)).await;
                false
            }
        };
        let (current, epoch) = {
            let status = marks.borrow_and_update();
            (status.watermarks.clone(), status.epoch)
        };
        let now = Some((current.clone(), epoch));
        if !due && now == published {
            continue;
        }
        published = now;
        let mut per_node: BTreeMap<String, Watermarks> = BTreeMap::new();
        if epoch.is_some() {
            for (stream, w) in current {
                let doc = per_node.entry(stream.node.clone()).or_default();
                doc.epoch = epoch;
                doc.streams.insert(stream.local(), w);
            }
        }
        for (node, doc) in per_node {
            if let Ok(key) = keys.watermark(&collector, &node) {
                if let Err(e) = session.put(key, doc.encode()).await {
                    tracing::debug!(error = %e, "cannot publish watermarks");
                }
            }
        }
        if cancel.is_cancelled() {
            // One last round after the final commit, then stop.
            if marks.changed().await.is_ok() {
                continue;
            }
            break;
        }
    }
}
