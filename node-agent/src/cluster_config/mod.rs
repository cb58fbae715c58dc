//! The cluster's configuration repository on a node: hold it, serve it, apply it.
//!
//! [`ClusterConfig::start`] opens the node's [`Store`] and working directory ([`worktree`]), then
//! on one thread of its own (its file work never stalls the agent's runtime):
//! - takes pushed revisions from `<prefix>/config/push`;
//! - every `resync_ms` asks the other nodes for their state and fetches the revisions it lacks
//!   and the contents they name (a node that was down or cut off catches up);
//! - answers `<prefix>/config/state/<node>` and `<prefix>/config/object/<node>/<sha256>`;
//! - when the repository has one head that is not applied, materializes this node's view of it
//!   beside the current tree, switches the link, and runs the reload command; a failed reload
//!   switches back (unless `on_reload_failure = "keep"`). Local edits are carried over when the
//!   revision leaves their file alone, and block the revision when it changes it too. Two heads (a
//!   conflict) block every node until `switchboard config resolve`.
//!
//! A [`HeadHook`] sees every new head: the limits take `global/limits.toml` from it.

pub mod settings;
pub mod worktree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use switchboard_bus::keys::KeySpace;
use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::repo::store::{read_object, Store};
use switchboard_bus::repo::tree::LIMITS_FILE;
use switchboard_bus::repo::wire::{
    fetch_object, fetch_revision, fetch_states, Applied, Blocked, LocalEdit, NodeState, Pack, ReloadOutcome, Reloading,
    Storing,
};
use switchboard_bus::repo::{sha256_hex, short, tree, Change, Contents, RepoError, Revision};
use switchboard_bus::throttle::Throttle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::{Session, Wait as _};

use self::settings::{ClusterConfigSettings, OnReloadFailure};
use self::worktree::{Manifest, Planned, Source, WorkTree, REVISION_FILE};
use crate::AgentError;

/// How long a query to another node waits.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest one catch-up round may take (pushes wait meanwhile).
const CATCH_UP_BUDGET: Duration = Duration::from_secs(10);
/// Contents fetched at once from one node.
const FETCH_CONCURRENCY: usize = 16;
/// Failed revisions remembered (never applied again).
const MAX_FAILED: usize = 100;
/// Longest reload output kept.
const MAX_OUTPUT: usize = 2048;

/// The revision that set the limits `head` carries: following first parents through the
/// revisions held (or `fetched`, not yet stored) while `global/limits.toml` stays the same, so
/// that every node names the same revision (its author, time and message) for the same limits,
/// however late it joined.
fn limits_origin<'a>(store: &'a Store, fetched: &'a BTreeMap<String, Revision>, head: &'a Revision) -> &'a Revision {
    let limits = |r: &Revision| r.files.get(LIMITS_FILE).map(|f| f.sha256.clone());
    let wanted = limits(head);
    let mut at = head;
    // Each step goes to an older revision, so this ends; the count bounds it besides.
    for _ in 0..store.summaries().len().saturating_add(fetched.len()) {
        match at.parents.first().and_then(|p| store.revision(p).or_else(|| fetched.get(p))) {
            Some(parent) if limits(parent) == wanted => at = parent,
            _ => break,
        }
    }
    at
}

/// The revisions of `got` whose every parent is held here (`held`) or another of those kept. A
/// walk cut short (a node that stopped answering or answered wrong, a round's time spent) leaves
/// revisions whose parents were never fetched; stored, the lowest of them would stand as a
/// second head beside the revision held below the break (a conflict nobody made), for good, as
/// the next round's walk stops at the revisions held.
fn grounded(got: BTreeMap<String, Revision>, held: impl Fn(&str) -> bool) -> BTreeMap<String, Revision> {
    let mut order: Vec<(String, Revision)> = got.into_iter().collect();
    // A parent's number is below its child's: parents come first.
    order.sort_by_key(|(_, r)| r.number);
    let mut kept = BTreeMap::new();
    for (id, rev) in order {
        if rev.parents.iter().all(|p| held(p) || kept.contains_key(p)) {
            kept.insert(id, rev);
        }
    }
    kept
}

/// Called with each new head of the repository (as the revision that set its limits, see
/// `limits_origin`) and, if it has one, its `global/limits.toml`.
/// `None`: the cluster holds no revision (said once, when this node holds none and the others
/// that answered hold none either, or none answered within [`ALONE_AFTER`] of its start).
pub type HeadHook = Arc<dyn Fn(Option<&Revision>, Option<&[u8]>) + Send + Sync>;

/// A node that hears from no other node this long after its start takes the cluster to hold
/// what it holds (a cluster of one, or the others down). Long, as it matters only to a node
/// that holds no revision (its first start, or a rebuild), whose limits wait for it; at once
/// for a node with no `connect`, which no link of its own would bring others to.
const ALONE_AFTER: Duration = Duration::from_secs(10);

/// How a plan says a content of the store is missing.
const NOT_HELD: &str = "the store lacks the content of";

/// The node's repository, as the status page and the agent's API show it.
pub struct ClusterConfig {
    state: Arc<Mutex<NodeState>>,
}

impl ClusterConfig {
    /// The node's current state.
    pub fn state(&self) -> NodeState {
        self.state.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Why this node could not store the last revision it was given (a write of its own
    /// failed: a full disk, permissions), until it stores one; `/health` says it.
    pub fn store_error(&self) -> Option<String> {
        self.state().store_error.map(|e| e.why)
    }

    /// Open the store and working directory and follow the cluster's repository until `cancel`.
    pub async fn start(
        config: &crate::config::AgentConfig,
        session: &Session,
        keys: &KeySpace,
        hook: Option<HeadHook>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Arc<Self>, AgentError> {
        let (settings, data_dir, node) = (&config.cluster_config, &config.agent.data_dir, config.bus.node.as_str());
        let root = data_dir.join("cluster-config");
        let invalid = |what: &str, e: RepoError| {
            AgentError::Config(crate::config::AgentConfigError::Invalid(format!("{what}: {e}")))
        };
        let store = Store::open(&root.join("store")).map_err(|e| invalid("cluster_config (its store)", e))?;
        let tree = WorkTree::open(&settings.dir(data_dir)).map_err(|e| invalid("cluster_config.dir", e))?;
        let state_path = root.join("applied.json");
        let mut persisted = Persisted::load(&state_path);
        if persisted.applied.is_some() && persisted.tree != tree.current_name() {
            // The record describes the tree the link pointed at. A link that points elsewhere or
            // nowhere (`dir` changed, or removed by hand) holds none of it: the head is written
            // there whole, from the store, and the reload command runs.
            tracing::warn!(
                dir = %tree.link().display(),
                "the configuration working directory does not hold the applied revision's tree (dir changed or \
                 removed?): writing the head there afresh"
            );
            (persisted.applied, persisted.tree) = (None, None);
            persisted.manifest.clear();
        }
        let view = ViewOf::of(node, settings);
        if persisted.applied.is_some() && persisted.view.as_ref().is_some_and(|v| *v != view) {
            // The tree holds another node's or subcluster's layers: the head is written afresh for
            // this one, and the reload command runs. (The tree stays until pruned.)
            tracing::warn!(
                was = ?persisted.view,
                now = ?view,
                "the node's name or subcluster changed since its configuration tree was written: writing the head \
                 there afresh"
            );
            persisted.applied = None;
            // A reload that failed did so on the other layers' files.
            persisted.failed.clear();
        }
        // A record from before the view was kept: the tree is this view's (it is kept from now).
        if persisted.applied.is_some() && persisted.view.is_none() {
            persisted.view = Some(view);
            persisted.save(&state_path);
        }
        let mut inner = Inner {
            node: node.to_owned(),
            settings: settings.clone(),
            store,
            tree,
            p: persisted,
            state_path,
            local_edits: Vec::new(),
            blocked: None,
            store_error: None,
            hooked: None,
            hook,
            unplaced: Throttle::new(Duration::from_secs(10)),
            cancel: cancel.clone(),
            alone_after: if config.bus.connect.is_empty() { Duration::ZERO } else { ALONE_AFTER },
            started: Instant::now(),
        };
        let state = Arc::new(Mutex::new(inner.node_state()));
        let decl = |what| move |source| AgentError::Declare { what, source };
        let push = session.declare_subscriber(keys.config_push()?).await.map_err(decl("config push subscriber"))?;
        let state_q = switchboard_bus::session::serve_document(session, keys.config_state(node)?, state.clone())
            .await
            .map_err(decl("config state queryable"))?;
        let objects_q = {
            let (k, store_root) = (keys.clone(), root.join("store"));
            session
                .declare_queryable(keys.all_config_objects_of(node)?)
                .callback(move |q| {
                    let Some(hash) = k.parse_config_object(q.key_expr().as_str()) else { return };
                    if let Some(bytes) = read_object(&store_root, &hash) {
                        if let Err(e) = q.reply(q.key_expr().clone(), bytes).wait() {
                            tracing::debug!(error = %e, "cannot answer a config object query");
                        }
                    }
                })
                .await
                .map_err(decl("config object queryable"))?
        };
        let (session, keys, cancel2, shared) = (session.clone(), keys.clone(), cancel.clone(), state.clone());
        let thread = tracker.spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(async move {
                let mut next_sync = tokio::time::Instant::now();
                let every = Duration::from_millis(inner.settings.resync_ms);
                loop {
                    inner.settle(&shared).await;
                    tokio::select! {
                        biased;
                        _ = cancel2.cancelled() => break,
                        sample = push.recv_async() => {
                            let Ok(sample) = sample else { break };
                            if !inner.take_push(&sample.payload().to_bytes(), &shared) {
                                next_sync = tokio::time::Instant::now() + Duration::from_millis(200);
                            }
                        }
                        _ = tokio::time::sleep_until(next_sync) => {
                            // Pushes go on being taken while the other nodes' states are asked
                            // for: a hung node holds that query until its timeout.
                            let asked = fetch_states(&session, &keys, ASK_TIMEOUT);
                            tokio::pin!(asked);
                            // A push not taken meanwhile is fetched by the next round, which the
                            // states asked for before the others stored it cannot serve.
                            let mut untaken = false;
                            let states = loop {
                                tokio::select! {
                                    biased;
                                    _ = cancel2.cancelled() => break None,
                                    states = &mut asked => break Some(states),
                                    sample = push.recv_async() => {
                                        let Ok(sample) = sample else { break None };
                                        untaken |= !inner.take_push(&sample.payload().to_bytes(), &shared);
                                        inner.settle(&shared).await;
                                    }
                                }
                            };
                            let Some(states) = states else { break };
                            let others = states.iter().filter(|s| s.as_ref().is_ok_and(|s| s.node != inner.node)).count();
                            let any_head = states.iter().any(|s| s.as_ref().is_ok_and(|s| !s.heads.is_empty()));
                            inner.catch_up(&session, &keys, states, &shared).await;
                            inner.no_head_anywhere(others, any_head);
                            inner.scan();
                            inner.prune_trees();
                            next_sync = tokio::time::Instant::now()
                                + if untaken { Duration::from_millis(200) } else { every };
                        }
                    }
                }
                drop((state_q, objects_q));
            })
        });
        switchboard_bus::vital::watch(tracker, "the cluster configuration thread".into(), thread, cancel.clone());
        Ok(Arc::new(Self { state }))
    }
}

/// What a node keeps across restarts about its working directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    applied: Option<Applied>,
    tree: Option<String>,
    manifest: Manifest,
    #[serde(default)]
    failed: Vec<String>,
    #[serde(default)]
    reload: Option<ReloadOutcome>,
    /// The revision switched in whose reload command has not finished: the agent stopped (or
    /// died) while it ran, and runs it again at its next start.
    #[serde(default)]
    reload_pending: Option<String>,
    /// The head whose limits this node took before it stored the history below it
    /// ([`Inner::take_limits_first`]): while the store's head is an older revision (the catch-up
    /// was cut short, or the agent restarted during it), that head is not applied, neither its
    /// limits, which would put older limits back in force, nor its files. Cleared once the
    /// revision is stored, or the node it came from answers without it.
    #[serde(default)]
    limits_first: Option<LimitsFirst>,
    /// Whose view the applied tree is (a node's layers follow its name and subcluster); `None`
    /// in a record written before it was kept.
    #[serde(default)]
    view: Option<ViewOf>,
}

/// The node name and subcluster a tree was written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ViewOf {
    node: String,
    subcluster: Option<String>,
}

impl ViewOf {
    fn of(node: &str, settings: &ClusterConfigSettings) -> Self {
        // `default` is the layer of no named subcluster.
        let subcluster = settings.subcluster.clone().filter(|s| s != "default");
        Self { node: node.to_owned(), subcluster }
    }
}

/// How [`LimitsFirst::catching_up`]'s reason begins.
const CATCHING_UP: &str = "catching up";

impl LimitsFirst {
    /// Why nothing is applied while it is not stored.
    fn catching_up(&self) -> Blocked {
        let why = format!(
            "{CATCHING_UP}: revision {} ({}), whose limits are in force, is not stored yet; older revisions are not \
             applied meanwhile",
            self.number,
            short(&self.id)
        );
        Blocked { id: self.id.clone(), number: self.number, why, paths: Vec::new() }
    }
}

/// See [`Persisted::limits_first`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LimitsFirst {
    id: String,
    number: u64,
    /// The node it was fetched from.
    from: String,
    /// Whether it has a `global/limits.toml` (the limits keep it in their own history then).
    #[serde(default)]
    has_limits: bool,
}

impl Persisted {
    fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable applied-revision record; starting without it");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    fn save(&self, path: &Path) {
        if let Err(e) = switchboard_bus::config::write_atomically(path, &serde_json::to_vec(self).unwrap_or_default()) {
            tracing::error!(path = %path.display(), error = %e, "cannot record the applied revision");
        }
    }
}

struct Inner {
    node: String,
    settings: ClusterConfigSettings,
    store: Store,
    tree: WorkTree,
    p: Persisted,
    state_path: PathBuf,
    local_edits: Vec<LocalEdit>,
    blocked: Option<Blocked>,
    /// The last revision given to this node that could not be stored (a write of its own
    /// failed), and why, until one is stored.
    store_error: Option<Blocked>,
    /// The head last given to the hook.
    hooked: Option<String>,
    hook: Option<HeadHook>,
    /// Pushes on a revision not held here, said at most every 10 s.
    unplaced: Throttle,
    /// When this node's configuration thread started, and how long after it hearing no other
    /// node means it is alone (see [`ALONE_AFTER`]).
    started: Instant,
    alone_after: Duration,
    /// The agent's stop: a reload command running then is stopped, not waited for.
    cancel: CancellationToken,
}

fn now_ms() -> u64 {
    switchboard_bus::status::now_ms()
}

impl Inner {
    fn node_state(&self) -> NodeState {
        let mut revisions: Vec<_> = self.store.summaries().values().cloned().collect();
        revisions.sort_by(|a, b| (b.number, &b.id).cmp(&(a.number, &a.id)));
        NodeState {
            version: 1,
            node: self.node.clone(),
            subcluster: self.settings.subcluster.clone(),
            dir: self.tree.link().display().to_string(),
            applied: self.p.applied.clone(),
            heads: self.store.heads().into_iter().cloned().collect(),
            revisions,
            local_edits: self.local_edits.clone(),
            blocked: self.blocked.clone(),
            reload: self.p.reload.clone(),
            storing: None,
            reloading: None,
            store_error: self.store_error.clone(),
        }
    }

    /// Note what storing `what` came to: a refusal for a revision that does not hold, this
    /// node's own problem for a write of its own that failed (said once, in `/health` until a
    /// revision is stored), nothing more for one stored. Whether it was taken (stored, or held
    /// already): `false` when its contents must come from another node first.
    fn stored(
        &mut self,
        result: Result<bool, RepoError>,
        which: Option<(String, u64)>,
        what: std::fmt::Arguments<'_>,
    ) -> bool {
        match result {
            Ok(true) => {
                if self.store_error.take().is_some() {
                    tracing::info!("configuration revisions are stored again");
                }
                true
            }
            Ok(false) => false,
            Err(e @ RepoError::Io { .. }) => {
                let why = format!("cannot store a configuration revision: {e}");
                if self.store_error.as_ref().is_none_or(|b| b.why != why) {
                    tracing::error!("{why} ({what})");
                }
                let (id, number) = which.unwrap_or_default();
                self.store_error = Some(Blocked { id, number, why, paths: Vec::new() });
                true
            }
            Err(e) => {
                refuse(Reason::ConfigInvalid, format_args!("{what}: {e}"));
                true
            }
        }
    }

    /// Apply what this node holds ([`Self::reconcile`]) and publish its state.
    async fn settle(&mut self, shared: &Mutex<NodeState>) {
        self.reconcile(shared).await;
        self.publish(shared);
    }

    /// Show the node's state as it is now (what its state queryable answers).
    fn publish(&self, shared: &Mutex<NodeState>) {
        if let Ok(mut s) = shared.lock() {
            *s = self.node_state();
        }
    }

    /// Take a pushed revision (`bytes`, a pack); `false` when it could not be stored whole (the
    /// other nodes are then asked for what it lacks).
    fn take_push(&mut self, bytes: &[u8], shared: &Mutex<NodeState>) -> bool {
        // A large revision takes seconds to store: the state says so meanwhile.
        let storing = |st| {
            if let Ok(mut s) = shared.lock() {
                s.storing = Some(st);
            }
        };
        let (which, taken) = self.take_pack(bytes, storing);
        self.stored(taken, which, format_args!("a pushed configuration revision"))
    }

    fn take_pack(
        &mut self,
        bytes: &[u8],
        storing: impl FnOnce(Storing),
    ) -> (Option<(String, u64)>, Result<bool, RepoError>) {
        let started = Instant::now();
        let (rev, contents) = match Pack::decode(bytes) {
            Ok(pack) => pack,
            Err(e) => return (None, Err(e)),
        };
        let which = Some((rev.id(), rev.number));
        (which, self.take_decoded(rev, contents, started, storing))
    }

    /// [`Self::take_pack`] of a pack that decoded: `Ok(false)` when it cannot be stored from the
    /// pack alone (a parent or contents it names are not held here: it is then fetched, with
    /// them, from another node).
    fn take_decoded(
        &mut self,
        rev: Revision,
        contents: Vec<Vec<u8>>,
        started: Instant,
        storing: impl FnOnce(Storing),
    ) -> Result<bool, RepoError> {
        let contents: Contents = contents.into_iter().map(|c| (sha256_hex(&c), c)).collect();
        // A push on a revision not held here (this node missed it, or a catch-up was cut short
        // below it): stored now, it would stand as a second head beside the one held, and the
        // next round's walk would stop at it without filling the gap. It comes with the history
        // it follows instead, oldest first, from the other nodes; a push on a revision no node
        // holds is never stored.
        let summaries = self.store.summaries();
        if !summaries.contains_key(&rev.id()) && rev.parents.iter().any(|p| !summaries.contains_key(p)) {
            if let Some(unsaid) = self.unplaced.admit() {
                tracing::info!(
                    revision = rev.number,
                    unsaid,
                    "a pushed revision follows one not held here; fetching it with its history from the other nodes"
                );
            }
            return Ok(false);
        }
        if self.store.missing_blobs(&rev).iter().any(|h| !contents.contains_key(h)) {
            // Nothing is written: the revision and all it lacks come from another node.
            tracing::info!(
                revision = rev.number,
                "a pushed revision names contents not held here; fetching them from the other nodes"
            );
            return Ok(false);
        }
        if self.store.revision(&rev.id()).is_none() {
            storing(Storing { id: rev.id(), number: rev.number, files: rev.files.len(), since_ms: now_ms() });
        }
        if self.admit(rev.clone(), &contents)? {
            tracing::info!(revision = rev.number, id = short(&rev.id()), author = %rev.author, ms = started.elapsed().as_millis() as u64, "configuration revision received");
        }
        Ok(true)
    }

    /// Check `rev` with `contents` (those it names that the store lacks), then store both; `false`
    /// if it was held already. Nothing is written for a revision that is refused, so a stranger's
    /// refused pushes leave nothing on disk.
    fn admit(&mut self, rev: Revision, contents: &Contents) -> Result<bool, RepoError> {
        self.store.check_numbering(&rev)?;
        self.check_limits(&rev, contents)?;
        for f in rev.files.values() {
            if let Some(c) = contents.get(&f.sha256) {
                self.store.put_blob(c)?;
            }
        }
        self.store.insert(rev)
    }

    /// A revision's `global/limits.toml`, if it has one, must be a valid limits file: every node
    /// refuses the whole revision otherwise.
    fn check_limits(&self, rev: &Revision, contents: &Contents) -> Result<(), RepoError> {
        let Some(f) = rev.files.get(LIMITS_FILE) else { return Ok(()) };
        let bytes = match contents.get(&f.sha256) {
            Some(b) => b.clone(),
            None => {
                self.store.blob(&f.sha256)?.ok_or_else(|| RepoError::Invalid(format!("{LIMITS_FILE} is not held")))?
            }
        };
        let text =
            std::str::from_utf8(&bytes).map_err(|_| RepoError::Invalid(format!("{LIMITS_FILE} is not UTF-8")))?;
        switchboard_bus::limits::parse_document(text)
            .map(|_| ())
            .map_err(|e| RepoError::Invalid(format!("revision {}: {LIMITS_FILE}: {e}", rev.number)))
    }

    /// After a round of states (`others` answered besides this node, `any_head` whether any
    /// holds a revision): when neither this node nor any other holds one, tell the hook once
    /// that the cluster holds none. With no other answer that waits for [`ALONE_AFTER`]: the
    /// links of a node just started may not be up yet.
    fn no_head_anywhere(&mut self, others: usize, any_head: bool) {
        if self.hooked.is_some() || any_head || !self.store.heads().is_empty() {
            return;
        }
        if others == 0 && self.started.elapsed() < self.alone_after {
            return;
        }
        if let Some(hook) = &self.hook {
            hook(None, None);
        }
        self.hooked = Some(String::new());
    }

    /// Fetch from every other node the revisions it holds that this one lacks, with their
    /// contents, oldest first: each revision is stored on its parent, so a catch-up cut short
    /// leaves a shorter history, not a second head. A node that holds no revision takes the
    /// limits of the head first ([`Inner::take_limits_first`]).
    async fn catch_up(
        &mut self,
        session: &Session,
        keys: &KeySpace,
        states: Vec<Result<NodeState, String>>,
        shared: &Mutex<NodeState>,
    ) {
        // Pushes wait while this runs: one round takes at most this long, the rest is for the next.
        let deadline = Instant::now() + CATCH_UP_BUDGET;
        // The node the limits taken first came from answered without that revision (its
        // repository was made anew): nothing more is waited for.
        let first_withdrawn = self.p.limits_first.as_ref().is_some_and(|f| {
            states.iter().flatten().any(|s| s.node == f.from && !s.revisions.iter().any(|r| r.id == f.id))
        });
        for state in states {
            if Instant::now() >= deadline {
                tracing::info!("configuration catch-up paused for this round (time budget spent)");
                break;
            }
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    refuse(Reason::ConfigInvalid, format_args!("a configuration state: {e}"));
                    continue;
                }
            };
            if state.node == self.node {
                continue;
            }
            let mut want: Vec<String> = state.heads.iter().map(|h| h.id.clone()).collect();
            let heads: std::collections::BTreeSet<String> = want.iter().cloned().collect();
            let mut got: BTreeMap<String, Revision> = BTreeMap::new();
            // Parents the walk ends at without fetching them: pruned there, or past what any
            // node keeps.
            let mut gone: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
            while let Some(id) = want.pop() {
                if self.store.summaries().contains_key(&id) || got.contains_key(&id) {
                    continue;
                }
                if got.len() >= switchboard_bus::repo::KEEP_REVISIONS {
                    gone.insert(id);
                    gone.extend(want.drain(..));
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                match fetch_revision(session, keys, &state.node, &id, ASK_TIMEOUT).await {
                    Ok(Some(rev)) => {
                        want.extend(rev.parents.iter().cloned());
                        got.insert(id, rev);
                    }
                    // A parent it pruned: the walk ends there.
                    Ok(None) if !heads.contains(&id) => {
                        gone.insert(id);
                    }
                    // A head it names but does not hand out: nothing more from it this round.
                    Ok(None) => {
                        refuse(
                            Reason::ConfigInvalid,
                            format_args!("{} names head {} but does not answer it", state.node, short(&id)),
                        );
                        break;
                    }
                    Err(e) => {
                        refuse(Reason::ConfigInvalid, format_args!("revision {} from {}: {e}", short(&id), state.node));
                        break;
                    }
                }
            }
            let fetched = got.len();
            let got = grounded(got, |p| self.store.summaries().contains_key(p) || gone.contains(p));
            if got.len() < fetched {
                tracing::info!(
                    from = %state.node,
                    left = fetched - got.len(),
                    "revisions above a break in a node's history left for a later round"
                );
            }
            self.take_limits_first(session, keys, &state.node, &got).await;
            self.publish(shared);
            let mut revs: Vec<Revision> = got.into_values().collect();
            revs.sort_by_key(|r| r.number);
            for rev in revs {
                let contents = match self.fetch_contents(session, keys, &state.node, &rev).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(from = %state.node, revision = rev.number, error = %e, "cannot fetch a configuration revision's files; retrying later");
                        break;
                    }
                };
                let (number, id) = (rev.number, rev.id());
                match self.admit(rev, &contents) {
                    Ok(true) => {
                        tracing::info!(from = %state.node, revision = number, id = short(&id), "configuration revision caught up");
                        self.stored(Ok(true), None, format_args!("revision {number} from {}", state.node));
                        // The revision waited for is here: nothing more to catch up for it.
                        if self.blocked.as_ref().is_some_and(|b| b.id == id && b.why.starts_with(CATCHING_UP)) {
                            self.blocked = None;
                        }
                        // A long catch-up shows its progress (`config status`).
                        self.publish(shared);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.stored(Err(e), Some((id, number)), format_args!("revision {number} from {}", state.node));
                        break;
                    }
                }
            }
        }
        if let Some(first) = &self.p.limits_first {
            if self.store.revision(&first.id).is_some() || first_withdrawn {
                if self.blocked.as_ref().is_some_and(|b| b.id == first.id) {
                    self.blocked = None;
                }
                self.p.limits_first = None;
                self.p.save(&self.state_path);
            }
        }
        let keep = self.p.applied.as_ref().map(|a| a.id.clone()).unwrap_or_default();
        if let Err(e) = self.store.prune(&keep) {
            tracing::warn!(error = %e, "cannot prune old configuration revisions");
        }
    }

    /// A node that holds no revision (new, or rebuilt with an empty disk) refuses every limit key
    /// until it knows the cluster's limits: it takes those of the highest head among `got` (the
    /// revisions just fetched from `from`, not yet stored) as soon as it has that one file, not
    /// once the whole history is stored, which takes as long as the history is large. The limits
    /// are named by the revision that set them, looked for among `got` as among revisions held.
    async fn take_limits_first(
        &mut self,
        session: &Session,
        keys: &KeySpace,
        from: &str,
        got: &BTreeMap<String, Revision>,
    ) {
        // `Some("")`: told that the cluster holds no revision (none had answered yet).
        if self.hooked.as_deref().is_some_and(|h| !h.is_empty())
            || !self.store.heads().is_empty()
            || self.hook.is_none()
        {
            return;
        }
        let named: std::collections::BTreeSet<&String> = got.values().flat_map(|r| r.parents.iter()).collect();
        // The head a node with no tree takes once all is stored (see `reconcile`).
        let Some((id, head)) = got.iter().filter(|(id, _)| !named.contains(id)).max_by_key(|(id, r)| (r.number, *id))
        else {
            return;
        };
        let mut contents = Contents::new();
        if let Some(f) = head.files.get(LIMITS_FILE) {
            match fetch_object(session, keys, from, &f.sha256, ASK_TIMEOUT).await {
                Ok(Some(bytes)) => contents.insert(f.sha256.clone(), bytes),
                // Not this way, then: the limits come with the head once it is stored.
                Ok(None) | Err(_) => return,
            };
        }
        // Nor from a head this node would refuse to store (its number, its limits file).
        if self.store.check_numbering(head).is_err() || self.check_limits(head, &contents).is_err() {
            return;
        }
        let limits = contents.into_values().next();
        if let Some(hook) = &self.hook {
            hook(Some(limits_origin(&self.store, got, head)), limits.as_deref());
        }
        tracing::info!(revision = head.number, from, "took the limits of the cluster's head before its history");
        self.hooked = Some(id.clone());
        let first = LimitsFirst {
            id: id.clone(),
            number: head.number,
            from: from.to_owned(),
            has_limits: head.files.contains_key(LIMITS_FILE),
        };
        self.blocked = Some(first.catching_up());
        self.p.limits_first = Some(first);
        self.p.save(&self.state_path);
    }

    /// The contents `rev` names that the store lacks, fetched from `from` (checked against their
    /// hashes; nothing is written).
    async fn fetch_contents(
        &self,
        session: &Session,
        keys: &KeySpace,
        from: &str,
        rev: &Revision,
    ) -> Result<Contents, RepoError> {
        let missing = self.store.missing_blobs(rev);
        let mut fetches = futures::stream::iter(missing.into_iter().map(|h| async move {
            let got = fetch_object(session, keys, from, &h, ASK_TIMEOUT).await;
            (h, got)
        }))
        .buffer_unordered(FETCH_CONCURRENCY);
        let mut out = Contents::new();
        while let Some((h, got)) = fetches.next().await {
            match got? {
                Some(bytes) => {
                    out.insert(h, bytes);
                }
                None => return Err(RepoError::Invalid(format!("{from} did not answer content {}", short(&h)))),
            }
        }
        Ok(out)
    }

    /// Look for local edits in the working directory.
    fn scan(&mut self) {
        let Some(tree) = self.p.tree.as_deref() else { return };
        match self.tree.scan(tree, &self.p.manifest) {
            // The link points elsewhere: put back at the next look, not read meanwhile.
            Ok(None) => {}
            Ok(Some(edits)) => {
                if edits != self.local_edits && !edits.is_empty() {
                    let paths: Vec<&str> = edits.iter().map(|e| e.path.as_str()).collect();
                    tracing::warn!(dir = %self.tree.link().display(), ?paths, "local edits in the configuration working directory (kept; a revision that changes the same files is not applied until they are undone or pushed)");
                }
                self.local_edits = edits;
            }
            Err(e) => tracing::warn!(error = %e, "cannot scan the configuration working directory"),
        }
    }

    /// Apply the head if it can be; `shared` shows the node's state while its reload runs.
    async fn reconcile(&mut self, shared: &Mutex<NodeState>) {
        if self.cancel.is_cancelled() {
            return;
        }
        let heads: Vec<(String, u64)> = self.store.heads().iter().map(|s| (s.id.clone(), s.number)).collect();
        let (head, number) = match heads.as_slice() {
            [] => return,
            [one] => one.clone(),
            many => {
                let labels: Vec<String> = many.iter().map(|(id, n)| format!("{n} ({})", short(id))).collect();
                let why = format!(
                    "conflict: revisions {} were made apart (on two sides of a partition, or by two pushes at once); \
                     `switchboard config resolve` settles it",
                    labels.join(" and ")
                );
                if self.blocked.as_ref().is_none_or(|b| b.why != why) {
                    tracing::warn!("{why}");
                }
                // The head this node has not applied (each side of a split applied its own).
                let applied = self.p.applied.as_ref().map(|a| a.id.as_str());
                let (id, number) = many.iter().find(|(id, _)| Some(id.as_str()) != applied).unwrap_or(&many[0]);
                self.blocked = Some(Blocked { id: id.clone(), number: *number, why, paths: Vec::new() });
                // Each node keeps the tree it has; one that has none (rebuilt, or new, during the
                // conflict) takes the highest head's, tree and limits, rather than give its
                // gateway no files and refuse every key until the conflict is settled.
                if self.p.applied.is_some() {
                    return;
                }
                // Of two heads of one number (two pushes on one parent), the higher id: one
                // choice on every node, and the one `take_limits_first` makes.
                match many.iter().max_by_key(|(id, n)| (*n, id)) {
                    Some(highest) => highest.clone(),
                    None => return,
                }
            }
        };
        // A history stored part way below the head whose limits were taken first: nothing of it
        // is applied until that head is there (older limits would come back in force), nor a
        // head of the same number, which that one outranks once stored.
        if let Some(f) = self.p.limits_first.as_ref().filter(|f| head != f.id && number <= f.number) {
            self.blocked = Some(f.catching_up());
            // Restarted part way below a head without a limits file: the cluster holds no limits,
            // which the limits' own history (restored at start) cannot say.
            if self.hooked.is_none() && !f.has_limits {
                if let Some(hook) = &self.hook {
                    hook(self.store.revision(&head), None);
                }
                self.hooked = Some(head);
            }
            return;
        }
        let Some(rev) = self.store.revision(&head).cloned() else { return };
        // The limits follow the head whatever becomes of its files here (a working directory
        // that blocks them, a reload that fails).
        if self.hooked.as_deref() != Some(&head) {
            if let Some(hook) = &self.hook {
                let limits = rev.files.get(LIMITS_FILE).and_then(|f| self.store.blob(&f.sha256).ok().flatten());
                hook(Some(limits_origin(&self.store, &BTreeMap::new(), &rev)), limits.as_deref());
            }
            self.hooked = Some(head.clone());
        }
        if !self.keep_link(&head, number) {
            return;
        }
        if self.p.failed.contains(&head) {
            // Its reload failed (reverted, or kept in place): not applied until a new head, also
            // after a restart of the agent.
            if self.blocked.as_ref().is_none_or(|b| b.id != head) {
                self.blocked = Some(self.reload_failed(&head, number));
            }
            return;
        }
        if self.p.applied.as_ref().is_some_and(|a| a.id == head) {
            self.blocked = None;
            if self.p.reload_pending.as_deref() == Some(head.as_str()) && !self.settings.reload.is_empty() {
                // Switched in before a stop or a crash cut its reload short: run it again. The
                // tree before is not known any more, so a failure leaves this one in place.
                tracing::info!(revision = number, "running the reload command again: the agent stopped while it ran");
                self.reload(&head, number, None, shared).await;
            }
            return;
        }
        self.scan();
        let files = match self.plan(&rev) {
            Ok(f) => f,
            Err(blocked) if blocked.why.starts_with(NOT_HELD) => {
                // A content of the store went bad: forget the revision and fetch it again whole.
                tracing::warn!(revision = number, paths = ?blocked.paths, "{}", blocked.why);
                if let Err(e) = self.store.forget(&head) {
                    tracing::error!(error = %e, "cannot drop a damaged configuration revision");
                }
                self.blocked = Some(blocked);
                return;
            }
            Err(blocked) => {
                if self.blocked.as_ref() != Some(&blocked) {
                    tracing::warn!(revision = number, paths = ?blocked.paths, "{}", blocked.why);
                }
                self.blocked = Some(blocked);
                return;
            }
        };
        let started = Instant::now();
        let mut name = format!("r{number}-{}", short(&head));
        // Never over the tree the link points at (a node restarted as another view writes the
        // revision it has in place again): that one stays whole until the switch, and for a
        // switch back.
        if self.p.tree.as_deref() == Some(name.as_str()) {
            name.push_str("-b");
        }
        let line = format!("{number} {head}\n");
        let manifest = match self.tree.build(&name, &line, &files).and_then(|m| self.tree.switch(&name).map(|()| m)) {
            Ok(m) => m,
            Err(RepoError::HashMismatch(sha256)) => {
                // A content of the store went bad: drop it and the revision, and fetch both again.
                tracing::warn!(
                    revision = number,
                    content = short(&sha256),
                    "a stored content is damaged; fetching the revision again"
                );
                let _ = self.store.blob(&sha256);
                if let Err(e) = self.store.forget(&head) {
                    tracing::error!(error = %e, "cannot drop a damaged configuration revision");
                }
                return;
            }
            Err(e) => {
                tracing::error!(revision = number, error = %e, "cannot materialize the configuration revision");
                self.blocked =
                    Some(Blocked { id: head, number, why: format!("cannot materialize: {e}"), paths: Vec::new() });
                return;
            }
        };
        let before = (self.p.applied.take(), self.p.tree.take(), std::mem::take(&mut self.p.manifest));
        // The revision in place may be one whose reload a stop cut short (a newer head came
        // before it ran again): the gateway never loaded it.
        let pending_before = self.p.reload_pending.take();
        self.p.applied = Some(Applied { id: head.clone(), number, at_ms: now_ms() });
        self.p.view = Some(ViewOf::of(&self.node, &self.settings));
        self.p.tree = Some(name.clone());
        self.p.manifest = manifest;
        if !self.settings.reload.is_empty() {
            self.p.reload_pending = Some(head.clone());
        }
        self.p.save(&self.state_path);
        self.blocked = None;
        tracing::info!(revision = number, id = short(&head), files = files.len(), ms = started.elapsed().as_millis() as u64, dir = %self.tree.link().display(), "configuration revision applied");
        if !self.settings.reload.is_empty() {
            // A tree whose own reload never finished is no tree to switch back to.
            let before = pending_before.is_none().then_some(before);
            self.reload(&head, number, before, shared).await;
        }
    }

    /// Run the reload command for `head`, switched in; on failure switch back to `before` (when
    /// known and `on_reload_failure` says so). A stop of the agent meanwhile stops the command
    /// and leaves the reload pending for the next start.
    async fn reload(
        &mut self,
        head: &str,
        number: u64,
        before: Option<(Option<Applied>, Option<String>, Manifest)>,
        shared: &Mutex<NodeState>,
    ) {
        // Switched in, not applied until the reload succeeds: a push waiting for this node
        // says the reload is what it waits for.
        let mut state = self.node_state();
        state.reloading = Some(Reloading { id: head.to_owned(), number, since_ms: now_ms() });
        *shared.lock().unwrap_or_else(|p| p.into_inner()) = state;
        let Some(mut outcome) = self.run_reload(head, number).await else {
            tracing::warn!(
                revision = number,
                "the agent is stopping: its reload command was stopped, and runs again at the next start"
            );
            return;
        };
        self.p.reload_pending = None;
        if !outcome.ok {
            self.p.failed.push(head.to_owned());
            if self.p.failed.len() > MAX_FAILED {
                self.p.failed.remove(0);
            }
            let revert = self.settings.on_reload_failure == OnReloadFailure::Revert;
            if let (Some(before), true) = (before, revert) {
                if let Some(prev_tree) = &before.1 {
                    match self.tree.switch(prev_tree) {
                        Ok(()) => {
                            outcome.reverted = true;
                            (self.p.applied, self.p.tree, self.p.manifest) = before;
                        }
                        Err(e) => tracing::error!(error = %e, "cannot switch back to the revision before"),
                    }
                }
            }
            tracing::error!(revision = number, status = %outcome.status, reverted = outcome.reverted, output = %outcome.output, "the gateway's reload command failed");
        }
        self.p.reload = Some(outcome);
        self.p.save(&self.state_path);
        if self.p.failed.iter().any(|f| f == head) {
            self.blocked = Some(self.reload_failed(head, number));
        }
    }

    /// The link removed or pointed elsewhere by hand while the agent runs: put it back at the
    /// applied tree, or when that tree is gone too, write the head afresh (as at a start). A
    /// directory of someone else's in its place blocks every revision (the head, `number`, is
    /// named as the one not applied); `false` then.
    fn keep_link(&mut self, head: &str, number: u64) -> bool {
        let Some(tree) = self.p.tree.clone() else { return true };
        if self.tree.current_name().as_deref() == Some(tree.as_str()) {
            return true;
        }
        let link = self.tree.link().display().to_string();
        if let Err(e) = worktree::check_link(self.tree.link()) {
            let why = e.to_string();
            if self.blocked.as_ref().is_none_or(|b| b.why != why) {
                tracing::error!(dir = %link, "{why}");
            }
            self.blocked = Some(Blocked { id: head.to_owned(), number, why, paths: Vec::new() });
            return false;
        }
        if self.tree.has_tree(&tree) {
            match self.tree.switch(&tree) {
                Ok(()) => {
                    tracing::warn!(dir = %link, %tree, "the configuration working directory was removed or re-pointed by hand: put back")
                }
                Err(e) => {
                    tracing::error!(dir = %link, error = %e, "cannot put the configuration working directory back")
                }
            }
        } else {
            tracing::warn!(dir = %link, "the configuration working directory's tree was removed by hand: writing the head there afresh");
            (self.p.applied, self.p.tree) = (None, None);
            self.p.manifest.clear();
            self.p.failed.clear();
            // Edits seen in the tree that is gone went with it (a file removed before the rest).
            self.local_edits.clear();
            self.p.save(&self.state_path);
        }
        true
    }

    /// Why revision `head` (`number`), whose reload failed, is not applied.
    fn reload_failed(&self, head: &str, number: u64) -> Blocked {
        let outcome = self.p.reload.as_ref().filter(|o| o.id == head);
        let status = outcome.map_or("status not recorded", |o| o.status.as_str());
        let reverted = outcome.is_some_and(|o| o.reverted);
        let kept = self.settings.on_reload_failure == OnReloadFailure::Keep;
        let how = if reverted {
            ", the revision before is back in place"
        } else if kept && self.p.applied.as_ref().is_some_and(|a| a.id == head) {
            ", it stays in place (on_reload_failure = \"keep\")"
        } else if self.p.applied.as_ref().is_some_and(|a| a.id == head) {
            ", it stays in place (run again at a start, the revision before was not known)"
        } else {
            ""
        };
        Blocked {
            id: head.to_owned(),
            number,
            why: format!("the reload command failed ({status}){how}; push a fixed revision"),
            paths: Vec::new(),
        }
    }

    /// Remove trees beyond `keep_trees` (never the current one); run between applies, so that an
    /// apply does not wait for it.
    fn prune_trees(&self) {
        let current = self.p.tree.clone().unwrap_or_default();
        self.tree.prune(self.settings.keep_trees + 1, &[&current]);
    }

    /// The files of this node's view of `rev`, with local edits merged: an edited file the
    /// revision leaves alone is carried over; one it changes too blocks the revision.
    fn plan(&self, rev: &Revision) -> Result<BTreeMap<String, Planned>, Blocked> {
        let view = tree::view(&rev.files, &self.node, self.settings.subcluster.as_deref());
        let edits: BTreeMap<&str, Change> = self.local_edits.iter().map(|e| (e.path.as_str(), e.change)).collect();
        let mut files = BTreeMap::new();
        let mut conflicts = Vec::new();
        let base = |p: &str| self.p.manifest.get(p).map(|w| w.sha256.as_str());
        for (path, entry) in &view {
            let content = || self.store.blob_file(&entry.sha256).map(Source::Content);
            let source = match edits.get(path.as_str()) {
                None if base(path) == Some(entry.sha256.as_str()) => Some(Source::Unchanged),
                None => content(),
                Some(Change::Added | Change::Modified) => {
                    if base(path) == Some(entry.sha256.as_str()) {
                        Some(Source::Local)
                    } else if self.tree.local_hash(path).as_deref() == Some(entry.sha256.as_str()) {
                        content()
                    } else {
                        conflicts.push(path.clone());
                        continue;
                    }
                }
                // Removed here, left alone by the revision: stays removed, and reported.
                Some(Change::Removed) if base(path) == Some(entry.sha256.as_str()) => Some(Source::Absent),
                Some(Change::Removed) => {
                    conflicts.push(path.clone());
                    continue;
                }
            };
            let Some(source) = source else {
                return Err(Blocked {
                    id: rev.id(),
                    number: rev.number,
                    why: format!("{NOT_HELD} {path} (damaged?); the revision is fetched again"),
                    paths: vec![path.clone()],
                });
            };
            files.insert(path.clone(), (Some((entry.sha256.clone(), entry.size)), source));
        }
        for (path, change) in &edits {
            if view.contains_key(*path) || *path == REVISION_FILE {
                continue;
            }
            match change {
                // Made here and unknown to the repository: carried over.
                Change::Added => {
                    files.insert((*path).to_owned(), (None, Source::Local));
                }
                // Edited here, removed by the revision.
                Change::Modified => conflicts.push((*path).to_owned()),
                Change::Removed => {}
            }
        }
        if conflicts.is_empty() {
            Ok(files)
        } else {
            Err(Blocked {
                id: rev.id(),
                number: rev.number,
                why: format!(
                    "local edits in {} conflict with revision {}: undo them, or push them in a new revision",
                    self.tree.link().display(),
                    rev.number
                ),
                paths: conflicts,
            })
        }
    }

    /// The command's outcome; `None` when the agent's stop came first (the command's process
    /// group is killed then).
    async fn run_reload(&self, id: &str, number: u64) -> Option<ReloadOutcome> {
        let argv = &self.settings.reload;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("SWITCHBOARD_CONFIG_DIR", self.tree.link())
            .env("SWITCHBOARD_CONFIG_REVISION", number.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so that a timeout kills whatever it started too.
            .process_group(0)
            .kill_on_drop(true);
        let timeout = Duration::from_millis(self.settings.reload_timeout_ms);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let status = format!("cannot start {:?}: {e}", argv[0]);
                return Some(ReloadOutcome {
                    id: id.to_owned(),
                    number,
                    ok: false,
                    status,
                    output: String::new(),
                    reverted: false,
                    at_ms: now_ms(),
                });
            }
        };
        let group = child.id();
        // Its output is read as it comes, so that what it wrote before a timeout is reported too.
        let stdout = tokio::spawn(read_tail(child.stdout.take()));
        let stderr = tokio::spawn(read_tail(child.stderr.take()));
        let kill_group = || {
            if let Some(pgid) = group {
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
            }
        };
        let waited = tokio::select! {
            w = tokio::time::timeout(timeout, child.wait()) => w,
            _ = self.cancel.cancelled() => {
                kill_group();
                return None;
            }
        };
        let (ok, status) = match waited {
            Err(_) => {
                kill_group();
                (false, format!("timed out after {timeout:?} (its process group was killed)"))
            }
            Ok(Err(e)) => (false, format!("cannot wait for {:?}: {e}", argv[0])),
            Ok(Ok(exit)) => {
                let status = match (exit.code(), std::os::unix::process::ExitStatusExt::signal(&exit)) {
                    (Some(c), _) => format!("exit {c}"),
                    (None, Some(s)) => format!("killed by signal {s}"),
                    _ => "ended".to_owned(),
                };
                (exit.success(), status)
            }
        };
        // The group is gone (or killed): its pipes close. A process that left the group and
        // keeps them open is not waited for.
        let mut text = String::new();
        for reader in [stdout, stderr] {
            if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_secs(1), reader).await {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        let cut = text.len().saturating_sub(MAX_OUTPUT);
        let cut = (cut..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        let output = text[cut..].trim_end().to_owned();
        Some(ReloadOutcome { id: id.to_owned(), number, ok, status, output, reverted: false, at_ms: now_ms() })
    }
}

/// What `pipe` gives until it closes, keeping the last `2 × MAX_OUTPUT` bytes.
async fn read_tail(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let (mut kept, mut buf) = (Vec::new(), [0u8; 4096]);
    let Some(mut pipe) = pipe else { return kept };
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * MAX_OUTPUT {
            kept.drain(..kept.len() - 2 * MAX_OUTPUT);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(number: u64, parents: &[&str]) -> (String, Revision) {
        let r = Revision {
            version: 1,
            number,
            parents: parents.iter().map(|p| p.to_string()).collect(),
            author: "test".into(),
            at_ms: number,
            message: String::new(),
            files: BTreeMap::new(),
        };
        (r.id(), r)
    }

    #[test]
    fn revisions_above_a_break_in_the_history_are_not_kept() {
        let held = "held";
        let (id2, r2) = rev(2, &[held]);
        let (id3, r3) = rev(3, &[&id2]);
        let (id4, r4) = rev(4, &[&id3, "pruned"]);
        let whole: BTreeMap<String, Revision> =
            [(id2.clone(), r2), (id3.clone(), r3.clone()), (id4.clone(), r4.clone())].into();
        let held_or_gone = |p: &str| p == held || p == "pruned";
        assert_eq!(grounded(whole.clone(), held_or_gone).len(), 3, "a whole history is kept");
        // Revision 2 never came (its node answered wrong): 3 and 4 stay out.
        let broken: BTreeMap<String, Revision> = [(id3, r3), (id4, r4)].into();
        assert!(grounded(broken, held_or_gone).is_empty());
        // A parent neither held nor gone keeps its merge out, and what follows it.
        assert_eq!(grounded(whole, |p| p == held).len(), 2);
    }
}
