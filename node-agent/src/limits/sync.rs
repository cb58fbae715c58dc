//! Keeping a node on the cluster's current limits.
//!
//! The limits are the file `global/limits.toml` of the cluster's configuration repository
//! (`crate::cluster_config`): each new head of the repository is handed to [`Revisions::take`],
//! which applies its limits to the [`Limiter`] in one step, appends them to the node's limits
//! history (a file, so that a restarted node starts on the limits it had) and announces the
//! number. The node answers queries for its history on `<prefix>/limits/config/<node>`
//! (`switchboard limits list|history` read them).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zenoh::Session;

use switchboard_bus::keys::{KeyError, KeySpace};
use switchboard_bus::limits::revision::{self, History, HistoryError, Revision};
use switchboard_bus::limits::{parse_document, Limiter};
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
    node: Arc<Node>,
    current: watch::Receiver<u64>,
}

impl Revisions {
    /// A copy of the node's history.
    pub fn history(&self) -> History {
        self.node.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Take the limits of a new head of the configuration repository (`limits`: the content of
    /// its `global/limits.toml`; `None` leaves the limits as they are), or (`head` `None`) learn
    /// that the cluster holds no revision. Either way the cluster's limits are known here from
    /// then on. Limits equal to those in force make no new revision.
    pub fn take(&self, head: Option<&switchboard_bus::repo::Revision>, limits: Option<&[u8]>) {
        if self.node.limiter.unknown() {
            match head {
                Some(h) => {
                    tracing::info!(revision = h.number, "this node has the cluster's configuration: limits are known")
                }
                None => tracing::info!("the cluster holds no configuration revision: no limits"),
            }
        }
        let (Some(head), Some(bytes)) = (head, limits) else {
            self.node.limiter.set_unknown(false);
            return;
        };
        let specs = match std::str::from_utf8(bytes).map_err(|e| e.to_string()).and_then(parse_document) {
            Ok(specs) => specs,
            Err(e) => {
                refuse(Reason::ConfigInvalid, format_args!("global/limits.toml of revision {}: {e}", head.number));
                return;
            }
        };
        let rev = Revision {
            revision: head.number,
            author: head.author.clone(),
            at_ms: head.at_ms,
            comment: head.message.clone(),
            limits: specs,
        };
        self.node.take(rev);
        self.node.limiter.set_unknown(false);
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
    /// Apply `rev` (the repository's head decides, whatever its number) and save it, unless its
    /// limits are those in force.
    fn take(&self, rev: Revision) {
        let Ok(mut h) = self.history.lock() else { return };
        if h.current().is_some_and(|c| c.limits == rev.limits) {
            return;
        }
        if let Err(e) = h.force(rev) {
            refuse(Reason::ConfigInvalid, format_args!("limits of the configuration repository: {e}"));
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
        tracing::info!(revision = cur.revision, author = %cur.author, limits = cur.limits.len(), "limits revision applied");
        self.current.send_replace(cur.revision);
    }
}

/// Load the history at `path`, apply it, and answer history queries until `cancel`. A node with
/// no history and the configuration repository on (`from_cluster`) refuses every key until the
/// repository hands it the cluster's head ([`Revisions::take`]): it cannot tell a key that is
/// limited from one that is not.
pub async fn start(
    session: Session,
    keys: KeySpace,
    node: String,
    limiter: Arc<Limiter>,
    path: PathBuf,
    from_cluster: bool,
    cancel: CancellationToken,
) -> Result<Revisions, SyncError> {
    let loaded = revision::load(&path)?;
    if let Some(cur) = loaded.current() {
        limiter.replace(cur.limits.clone())?;
        tracing::info!(revision = cur.revision, "limits revision restored from disk");
    } else if from_cluster {
        limiter.set_unknown(true);
        tracing::info!("no limits held here yet: every key is refused until this node has the cluster's configuration");
    }
    let (current, current_rx) = watch::channel(loaded.current_number());
    let state = Arc::new(Node { limiter, history: Arc::new(Mutex::new(loaded)), path, current });
    let bus = SyncError::Declare;
    let queryable =
        switchboard_bus::session::serve_document(&session, keys.limits_config(&node)?, state.history.clone())
            .await
            .map_err(bus)?;
    let handle = Revisions { node: state.clone(), current: current_rx };
    tokio::spawn(async move {
        cancel.cancelled().await;
        drop(queryable);
    });
    Ok(handle)
}
