//! Cluster-wide limit definitions with revisions.
//!
//! A [`Revision`] is the whole set of limits at one point in time, numbered, with who set it,
//! when and why. The limits are the file `global/limits.toml` of the configuration repository
//! ([`crate::repo`]); a node applies the limits of each new head in one step
//! ([`super::Limiter::replace`]) and appends them to its [`History`] under the head's number,
//! kept in a file so that a restarted node starts on the limits it had. Each node answers
//! queries for its history on `<prefix>/limits/config/<node>` ([`fetch_histories`]).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zenoh::Session;

use super::{check, LimitSpec, SpecError};
use crate::keys::KeySpace;

/// How long a history query waits for answers.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One revision of the cluster's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    /// Revision number, from 1.
    pub revision: u64,
    /// Who set it.
    pub author: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Why (free text; may be empty).
    #[serde(default)]
    pub comment: String,
    /// The complete set of limits in force from this revision on.
    pub limits: Vec<LimitSpec>,
}

impl Revision {
    /// The order in which revisions supersede each other.
    pub fn order(&self, other: &Revision) -> Ordering {
        (self.revision, self.at_ms, &self.author).cmp(&(other.revision, other.at_ms, &other.author))
    }

    /// Check the limits it carries.
    pub fn validate(&self) -> Result<(), SpecError> {
        check(&self.limits)
    }

    /// A short digest of its limits (16 hex digits of the SHA-256 of their JSON): equal for two
    /// revisions that set the same limits, whatever their numbers.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(&self.limits).unwrap_or_default();
        let mut hex = crate::repo::sha256_hex(&json);
        hex.truncate(16);
        hex
    }
}

/// Largest step above the highest known revision number that a node takes.
pub const MAX_STEP: u64 = 1_000_000;
/// Revisions a history keeps (the newest).
pub const MAX_HISTORY: usize = 1000;

/// A node's revisions, oldest first; the last one is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Always 1.
    pub version: u32,
    /// Revisions applied, oldest first.
    pub revisions: Vec<Revision>,
}

impl Default for History {
    fn default() -> Self {
        Self { version: 1, revisions: Vec::new() }
    }
}

impl History {
    /// The revision in force, if any.
    pub fn current(&self) -> Option<&Revision> {
        self.revisions.last()
    }

    /// The number of the revision in force (0: none yet).
    pub fn current_number(&self) -> u64 {
        self.current().map_or(0, |r| r.revision)
    }

    /// Take `rev` if it supersedes the current one; `true` if it did. A number more than
    /// [`MAX_STEP`] above the current one is refused: one forged huge number would otherwise
    /// set the cluster's limits for good. The oldest revisions beyond [`MAX_HISTORY`] are dropped.
    pub fn offer(&mut self, rev: Revision) -> Result<bool, SpecError> {
        rev.validate()?;
        let known = self.current_number();
        if rev.revision > known.saturating_add(MAX_STEP) {
            return Err(SpecError::Jump { got: rev.revision, known });
        }
        if self.current().is_some_and(|c| rev.order(c) != Ordering::Greater) {
            return Ok(false);
        }
        self.revisions.push(rev);
        if self.revisions.len() > MAX_HISTORY {
            let excess = self.revisions.len() - MAX_HISTORY;
            self.revisions.drain(..excess);
        }
        Ok(true)
    }

    /// Make `rev` the revision in force whatever its number: the configuration repository's head
    /// decides which limits are current ([`crate::repo`]).
    pub fn force(&mut self, rev: Revision) -> Result<(), SpecError> {
        rev.validate()?;
        self.revisions.push(rev);
        if self.revisions.len() > MAX_HISTORY {
            let excess = self.revisions.len() - MAX_HISTORY;
            self.revisions.drain(..excess);
        }
        Ok(())
    }

    /// Take the revisions of another node's history that are newer than ours, in order; `true`
    /// if the revision in force changed. Invalid revisions are skipped.
    pub fn merge(&mut self, other: &History) -> bool {
        let mut changed = false;
        for rev in &other.revisions {
            changed |= self.offer(rev.clone()).unwrap_or(false);
        }
        changed
    }
}

/// A history file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a history document.
    #[error("{path}: not a limits history: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Read a history file; a missing file is an empty history.
pub fn load(path: &Path) -> Result<History, HistoryError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| HistoryError::Format { path: path.into(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
        Err(source) => Err(HistoryError::Io { path: path.into(), source }),
    }
}

/// Write a history file atomically (temporary file, fsync, rename).
pub fn save(path: &Path, history: &History) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io { path: path.into(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let body =
        serde_json::to_vec_pretty(history).map_err(|source| HistoryError::Format { path: path.into(), source })?;
    crate::config::write_atomically(path, &body).map_err(io)
}

/// Ask every node for its limits history; `(node, history)` for each answer that parses.
pub async fn fetch_histories(session: &Session, keys: &KeySpace) -> Vec<(String, History)> {
    let Ok(all) = keys.all_limits_configs() else { return Vec::new() };
    let Ok(replies) = session.get(all).timeout(QUERY_TIMEOUT).await else { return Vec::new() };
    let mut out = Vec::new();
    while let Ok(reply) = replies.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let Some(node) = keys.parse_limits_config(sample.key_expr().as_str()) else { continue };
        match serde_json::from_slice::<History>(&sample.payload().to_bytes()) {
            Ok(h) => out.push((node, h)),
            Err(e) => tracing::warn!(%node, error = %e, "ignoring a malformed limits history"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: u64, at: u64, author: &str, rate: u64) -> Revision {
        Revision {
            revision: n,
            author: author.into(),
            at_ms: at,
            comment: String::new(),
            limits: vec![LimitSpec { key: "k".into(), rate: Some(rate), per: None, concurrency: None, burst: None }],
        }
    }

    #[test]
    fn newer_revisions_supersede_and_races_end_the_same_everywhere() {
        let mut a = History::default();
        assert!(a.offer(rev(1, 10, "x", 1)).unwrap());
        assert!(!a.offer(rev(1, 10, "x", 1)).unwrap(), "the same revision twice is taken once");
        assert!(a.offer(rev(2, 20, "x", 2)).unwrap());
        assert!(!a.offer(rev(1, 30, "y", 3)).unwrap(), "an older number never wins");
        // Two `set`s raced for revision 3: whichever order they arrive in, the later one wins.
        let (r3a, r3b) = (rev(3, 40, "ann", 4), rev(3, 41, "bob", 5));
        let mut b = a.clone();
        a.offer(r3a.clone()).unwrap();
        a.offer(r3b.clone()).unwrap();
        b.offer(r3b.clone()).unwrap();
        b.offer(r3a).unwrap();
        assert_eq!(a.current(), Some(&r3b));
        assert_eq!(b.current(), Some(&r3b));
    }

    #[test]
    fn a_joiner_merges_what_it_missed_and_invalid_revisions_are_refused() {
        let mut old = History::default();
        old.offer(rev(1, 1, "x", 1)).unwrap();
        let mut cluster = old.clone();
        cluster.offer(rev(2, 2, "x", 2)).unwrap();
        cluster.offer(rev(3, 3, "x", 3)).unwrap();
        assert!(old.merge(&cluster));
        assert_eq!(old, cluster);
        assert!(!old.merge(&cluster), "nothing new");
        let mut bad = rev(4, 4, "x", 1);
        bad.limits[0].concurrency = Some(1);
        assert!(old.offer(bad).is_err());
        assert_eq!(old.current_number(), 3);
    }

    #[test]
    fn a_history_keeps_the_newest_revisions_and_refuses_a_jump() {
        let mut h = History::default();
        for n in 1..=(MAX_HISTORY as u64 + 5) {
            assert!(h.offer(rev(n, n, "ops", 10)).unwrap());
        }
        assert_eq!(h.revisions.len(), MAX_HISTORY);
        assert_eq!(h.revisions[0].revision, 6);
        let known = h.current_number();
        assert!(matches!(h.offer(rev(known + MAX_STEP + 1, 1, "x", 1)), Err(SpecError::Jump { .. })));
        assert!(h.offer(rev(known + MAX_STEP, 1, "x", 1)).unwrap());
    }

    #[test]
    fn history_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits/history.json");
        assert_eq!(load(&path).unwrap().revisions.len(), 0);
        let mut h = load(&path).unwrap();
        h.offer(rev(1, 1, "x", 1)).unwrap();
        save(&path, &h).unwrap();
        assert_eq!(load(&path).unwrap(), h);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(load(&path), Err(HistoryError::Format { .. })));
    }
}
