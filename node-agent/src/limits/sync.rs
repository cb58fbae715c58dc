//! Keeping a node on the cluster's current limits revision.
//!
//! [`start`] loads the node's history file and applies the revision in force before anything
//! else, then on the bus: takes new revisions put on `<prefix>/limits/revision`, answers queries
//! for its history on `<prefix>/limits/config/<node>`, and asks the other nodes for theirs at
//! start and every `resync` (a joiner, or a node that missed a put behind a partition, catches
//! up). Every change is applied to the [`Limiter`] in one step and saved before it is announced.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zenoh::{Session, Wait};

use switchboard_bus::keys::{KeyError, KeySpace};
use switchboard_bus::limits::revision::{self, fetch_histories, History, HistoryError, Revision};
use switchboard_bus::limits::Limiter;
use switchboard_bus::refusals::{refuse, Reason};

/// The limits sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The history file.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The stored revision cannot be applied.
    #[error("stored revision: {0}")]
    Stored(#[from] switchboard_bus::limits::SpecError),
    /// A key expression could not be made from the node's name.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// zenoh refused to declare the revision subscriber or the history queryable.
    #[error("bus: {0}")]
    Declare(zenoh::Error),
}

/// The node's history, shared with whoever shows it (the agent's API).
#[derive(Clone)]
pub struct Revisions {
    history: Arc<Mutex<History>>,
    current: watch::Receiver<u64>,
}

impl Revisions {
    /// A copy of the node's history.
    pub fn history(&self) -> History {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The revision in force (0: none).
    pub fn current(&self) -> u64 {
        *self.current.borrow()
    }

    /// Changes of the revision in force.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.current.clone()
    }
}

struct Node {
    limiter: Arc<Limiter>,
    history: Arc<Mutex<History>>,
    path: PathBuf,
    current: watch::Sender<u64>,
}

impl Node {
    /// Offer revisions; apply and save if the one in force changed.
    fn take(&self, revs: impl IntoIterator<Item = Revision>, from: &str) {
        let Ok(mut h) = self.history.lock() else { return };
        let mut changed = false;
        for rev in revs {
            match h.offer(rev) {
                Ok(took) => changed |= took,
                Err(e) => refuse(Reason::RevisionInvalid, format_args!("limits revision from {from}: {e}")),
            }
        }
        if !changed {
            return;
        }
        let Some(cur) = h.current().cloned() else { return };
        if let Err(e) = self.limiter.replace(cur.limits.clone()) {
            tracing::error!(revision = cur.revision, error = %e, "cannot apply limits revision");
            return;
        }
        if let Err(e) = revision::save(&self.path, &h) {
            tracing::error!(error = %e, "cannot save the limits history; a restart would start on an older revision");
        }
        tracing::info!(revision = cur.revision, author = %cur.author, %from, limits = cur.limits.len(), "limits revision applied");
        self.current.send_replace(cur.revision);
    }
}

/// Load the history at `path`, apply it, and keep it in sync with the cluster until `cancel`.
pub async fn start(
    session: Session,
    keys: KeySpace,
    node: String,
    limiter: Arc<Limiter>,
    path: PathBuf,
    resync: Duration,
    cancel: CancellationToken,
) -> Result<Revisions, SyncError> {
    let loaded = revision::load(&path)?;
    if let Some(cur) = loaded.current() {
        limiter.replace(cur.limits.clone())?;
        tracing::info!(revision = cur.revision, "limits revision restored from disk");
    }
    let (current, current_rx) = watch::channel(loaded.current_number());
    let state = Arc::new(Node { limiter, history: Arc::new(Mutex::new(loaded)), path, current });
    let bus = SyncError::Declare;
    let revisions = session.declare_subscriber(keys.limits_revision()?).await.map_err(bus)?;
    // Answered from zenoh's own threads, so that this node's history queries (which reach its
    // own queryable too) never wait on the task below.
    let queryable = {
        let history = state.history.clone();
        let mine = keys.limits_config(&node)?;
        session
            .declare_queryable(mine.clone())
            .callback(move |query| {
                let body = history.lock().ok().and_then(|h| serde_json::to_vec(&*h).ok()).unwrap_or_default();
                // Answer under this node's own key, which names it to the asker.
                if let Err(e) = query.reply(mine.clone(), body).wait() {
                    tracing::debug!(error = %e, "cannot answer a limits history query");
                }
            })
            .await
            .map_err(bus)?
    };
    let handle = Revisions { history: state.history.clone(), current: current_rx };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(resync);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                sample = revisions.recv_async() => {
                    let Ok(sample) = sample else { break };
                    match serde_json::from_slice::<Revision>(&sample.payload().to_bytes()) {
                        Ok(rev) => state.take([rev], "limits set"),
                        Err(e) => refuse(Reason::RevisionInvalid, format_args!("a malformed limits revision: {e}")),
                    }
                }
                _ = tick.tick() => {
                    for (from, history) in fetch_histories(&session, &keys).await {
                        if from != node {
                            state.take(history.revisions, &from);
                        }
                    }
                }
            }
        }
        drop(queryable);
    });
    Ok(handle)
}
