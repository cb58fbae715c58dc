//! A node rebuilt empty takes its records back from the copies other nodes keep of them.
//!
//! Copies are made by their owner ([`super::replicate`]). A node whose store is lost (its
//! `data_dir` rebuilt empty) would hold none of its records again, and each node keeping a copy
//! that is rebuilt after it would take one copy away for good. So:
//!
//! - [`serve`] answers `<prefix>/dlr/restore/<this node>/<owner>` for a live agent `owner`: one
//!   [`RestorePage`] per query, the copies of `owner`'s records among up to [`SCAN`] records of
//!   this node's store after the query's `after` cursor. Queries are answered one at a time.
//! - [`run`], on a node whose store was empty when it started, asks every other live agent once,
//!   page after page, and takes each record unless it holds the same or a newer version. It
//!   keeps `dlr/restore.json` (when it began, the nodes done) so that a restart goes on where it
//!   stopped and an agent that arrives later (down at the start) is asked too, until
//!   `max_expiry_s` after the beginning, when every record it could return has expired. While it
//!   asks, and until a replication pass after it has checked every copy, reports of this node's
//!   records are checked with their first copy holder (a reporter may have handled the DLR while
//!   this node was down), and that pass makes the copies again where they are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_bus::dlr::wire::{RestorePage, DOC_VERSION, RESTORE_PAGE_RECORDS};
use switchboard_bus::dlr::DlrRecord;
use switchboard_bus::keys::Role;
use switchboard_bus::refusals::{refuse, Reason};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::query::QueryTarget;

use super::store::Write;
use super::{now_ms, DlrService};
use crate::AgentError;

/// Records of its store a node reads for one restore page, at most: bounds the time one
/// answer takes whatever the share of the asker's records.
pub const SCAN: usize = 50_000;
/// How long the asker waits for one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the asker waits before asking again a node that failed.
const RETRY: Duration = Duration::from_secs(5);
/// Pages asked of one node, at most (10^9 records at one record per [`SCAN`]).
const MAX_PAGES: u64 = 20_000;
/// Bytes of an `after` cursor, at most (a store key: a connector and an id).
const MAX_CURSOR_BYTES: usize = 512;
/// The file that says a restore is under way.
pub const STATE_FILE: &str = "restore.json";

/// Declare this node's restore queryable and serve it until `cancel` fires.
pub(crate) async fn serve(
    service: Arc<DlrService>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let key = service.keys.all_dlr_restores(&service.node)?;
    let queryable = service
        .session
        .declare_queryable(key)
        .await
        .map_err(|source| AgentError::Declare { what: "DLR restore queryable", source })?;
    tracker.spawn(async move {
        loop {
            let query = tokio::select! {
                _ = cancel.cancelled() => break,
                q = queryable.recv_async() => match q { Ok(q) => q, Err(_) => break },
            };
            let (s, key) = (service.clone(), query.key_expr().as_str().to_owned());
            let after = query.parameters().get("after").map(str::to_owned);
            let page = tokio::task::spawn_blocking(move || page(&s, &key, after.as_deref()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            let sent = match page.and_then(|p| serde_json::to_vec(&p).map_err(|e| e.to_string())) {
                Ok(body) => {
                    service.stats.restore_pages_served.fetch_add(1, Ordering::Relaxed);
                    query.reply(query.key_expr().clone(), body).await
                }
                Err(e) => query.reply_err(e).await,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "cannot answer a restore query");
            }
        }
    });
    Ok(())
}

/// The page a restore query on `key` asks for, from the cursor `after`.
fn page(service: &DlrService, key: &str, after: Option<&str>) -> Result<RestorePage, String> {
    let invalid = |why: String| {
        refuse(Reason::RestoreInvalid, &why);
        why
    };
    let Some(owner) = service.keys.parse_dlr_restore(&service.node, key) else {
        return Err(invalid(format!("not a restore key of this node: {key}")));
    };
    if owner == service.node || !service.membership.live_of(Role::Agent).contains(&owner) {
        return Err(invalid(format!("a restore asked for {owner}, which is not another live agent")));
    }
    let after = match after.map(decode_cursor) {
        None => None,
        Some(Some(k)) => Some(k),
        Some(None) => return Err(invalid(format!("after= of a restore for {owner} is not a cursor"))),
    };
    let (records, next) = service
        .store
        .records_of(&owner, after.as_deref(), SCAN, RESTORE_PAGE_RECORDS)
        .map_err(|e| format!("{}: {e}", switchboard_bus::dlr::wire::STORE_FAILED))?;
    Ok(RestorePage { version: DOC_VERSION, records, next: next.map(|k| encode_cursor(&k)) })
}

/// A store key as lowercase hex.
fn encode_cursor(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cursor back into a store key; `None` unless it is hex digits (either case), two per byte,
/// of at most [`MAX_CURSOR_BYTES`] bytes.
fn decode_cursor(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 2 * MAX_CURSOR_BYTES || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What `dlr/restore.json` keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// When the restore began (ms since the Unix epoch).
    began_ms: u64,
    /// The nodes whose copies were all taken.
    done: BTreeSet<String>,
}

impl State {
    /// The state in `path`: a restore under way, begun now if the store was `empty` and none
    /// was; `None` when there is nothing to restore (or the one under way is past `max_age_ms`).
    fn begin(path: &Path, empty: bool, max_age_ms: u64) -> Option<Self> {
        let held = std::fs::read(path).ok().and_then(|b| match serde_json::from_slice::<Self>(&b) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable restore state: begun again");
                None
            }
        });
        let now = now_ms();
        match held {
            Some(s) if now.saturating_sub(s.began_ms) > max_age_ms => {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the finished restore's state");
                }
                None
            }
            Some(s) => Some(s),
            None if empty => {
                let s = Self { began_ms: now, done: BTreeSet::new() };
                s.save(path);
                Some(s)
            }
            None => None,
        }
    }

    fn save(&self, path: &Path) {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Err(e) = switchboard_bus::config::write_atomically(path, &body) {
            tracing::error!(path = %path.display(), error = %e, "cannot record the restore's progress");
        }
    }
}

/// The file of a restore's state in the DLR directory `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Take this node's records back from every other live agent, once each, if its store was
/// `empty` at start or a restore was under way; until `cancel` fires or the restore is over.
pub(crate) async fn run(service: Arc<DlrService>, state_file: PathBuf, empty: bool, cancel: CancellationToken) {
    let max_age_ms = service.settings.max_expiry_s.saturating_mul(1000);
    let Some(mut state) = State::begin(&state_file, empty, max_age_ms) else { return };
    tracing::info!(
        done = ?state.done,
        "this node's DLR store was empty at start: its records are taken back from their copies on the other nodes"
    );
    let mut live = service.membership.subscribe();
    let mut failed: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    // The other agents take a moment to be seen: until then the restore counts as under way.
    let seen_by = tokio::time::Instant::now() + switchboard_bus::mesh::SETTLE;
    service.wake.restoring(true);
    loop {
        let now = tokio::time::Instant::now();
        failed.retain(|_, at| now.duration_since(*at) < RETRY);
        let peers: Vec<String> = live
            .borrow_and_update()
            .iter()
            .filter(|m| m.role == Role::Agent && m.name != service.node && !state.done.contains(&m.name))
            .map(|m| m.name.clone())
            .collect();
        let due: Vec<&String> = peers.iter().filter(|p| !failed.contains_key(*p)).collect();
        let restoring = !peers.is_empty() || now < seen_by;
        if service.wake.is_restoring() != restoring {
            service.wake.restoring(restoring);
        }
        let asked = !due.is_empty();
        for peer in due {
            match restore_from(&service, peer, &cancel).await {
                Ok(taken) => {
                    tracing::info!(node = %peer, taken, "took back this node's DLR records from their copies on {peer}");
                    state.done.insert(peer.clone());
                    state.save(&state_file);
                }
                Err(e) => {
                    tracing::warn!(node = %peer, error = %e, "cannot take back this node's DLR records from {peer} yet");
                    failed.insert(peer.clone(), tokio::time::Instant::now());
                }
            }
            if cancel.is_cancelled() {
                return;
            }
        }
        if now_ms().saturating_sub(state.began_ms) > max_age_ms {
            tracing::info!("the restore of this node's DLR records is over: any record left to take has expired");
            if let Err(e) = std::fs::remove_file(&state_file) {
                tracing::warn!(path = %state_file.display(), error = %e, "cannot remove the finished restore's state");
            }
            service.wake.restoring(false);
            return;
        }
        if asked {
            // Look again at once: the restore is done with every node it sees, or one failed.
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = live.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY), if !failed.is_empty() => {}
            _ = tokio::time::sleep_until(seen_by), if restoring && peers.is_empty() => {}
        }
    }
}

/// Ask `peer` for every copy it keeps of this node's records and take them; how many were taken.
async fn restore_from(service: &Arc<DlrService>, peer: &str, cancel: &CancellationToken) -> Result<u64, String> {
    let key = service.keys.dlr_restore(peer, &service.node).map_err(|e| e.to_string())?;
    let (mut after, mut taken) = (None::<String>, 0u64);
    for _ in 0..MAX_PAGES {
        if cancel.is_cancelled() {
            return Err("stopping".into());
        }
        let parameters = after.as_ref().map(|a| format!("after={a}")).unwrap_or_default();
        let replies = service
            .session
            .get((&key, parameters))
            .target(QueryTarget::All)
            .timeout(PAGE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let reply = replies.recv_async().await.map_err(|_| format!("{peer} did not answer"))?;
        let sample = reply
            .result()
            .map_err(|e| format!("{peer} refused: {}", String::from_utf8_lossy(&e.payload().to_bytes())))?;
        let page: RestorePage = switchboard_bus::dlr::wire::decode(&sample.payload().to_bytes()).map_err(|e| {
            refuse(Reason::RestoreInvalid, format_args!("a restore page from {peer}: {e}"));
            format!("{peer} answered with what is not a restore page: {e}")
        })?;
        let next = page.next.clone();
        let s = service.clone();
        let from = peer.to_owned();
        taken += tokio::task::spawn_blocking(move || take(&s, &from, page)).await.map_err(|e| e.to_string())??;
        match next {
            Some(n) => after = Some(n),
            None => return Ok(taken),
        }
    }
    Err(format!("{peer} had more than {MAX_PAGES} pages"))
}

/// Take the records of one page that are this node's and newer than what it holds.
fn take(service: &DlrService, from: &str, page: RestorePage) -> Result<u64, String> {
    if page.records.len() > RESTORE_PAGE_RECORDS {
        refuse(Reason::RestoreInvalid, format_args!("a restore page from {from} of {} records", page.records.len()));
        return Err(format!("a restore page holds at most {RESTORE_PAGE_RECORDS} records"));
    }
    let latest_expiry = super::types::latest_expiry(service.settings.max_expiry_s);
    let _guard = service.store.lock();
    let mut puts: Vec<(DlrRecord, Option<DlrRecord>)> = Vec::new();
    let mut keys = BTreeSet::new();
    for record in page.records {
        if record.owner != service.node {
            refuse(
                Reason::RestoreInvalid,
                format_args!(
                    "a restore page from {from} with {}'s record {}/{}",
                    record.owner, record.connector, record.id
                ),
            );
            continue;
        }
        if let Err(e) = super::types::check_record(&record, latest_expiry) {
            refuse(Reason::RestoreInvalid, format_args!("record {}/{} from {from}: {e}", record.connector, record.id));
            continue;
        }
        let key = record.store_key();
        if !keys.insert(key.clone()) {
            continue;
        }
        let held = service.store.get_key(&key).map_err(|e| e.to_string())?;
        if held.as_ref().is_none_or(|h| h.version < record.version) {
            puts.push((record, held));
        }
    }
    let writes: Vec<Write<'_>> =
        puts.iter().map(|(record, previous)| Write::Put { record, previous: previous.as_ref() }).collect();
    service.store.write(&writes).map_err(|e| {
        service.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        e.to_string()
    })?;
    let n = puts.len() as u64;
    service.stats.restored.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_go_and_come_back_and_junk_is_refused() {
        let key = b"smsc\x00ab/c;d".to_vec();
        assert_eq!(decode_cursor(&encode_cursor(&key)), Some(key));
        assert_eq!(decode_cursor("0A0b"), Some(vec![10, 11]));
        for junk in ["a", "zz", "0g", "+1", &"00".repeat(MAX_CURSOR_BYTES + 1)] {
            assert_eq!(decode_cursor(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_restore_begins_on_an_empty_store_goes_on_after_a_restart_and_ends_with_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        assert_eq!(State::begin(&path, false, 1000), None, "a store with records restores nothing");
        let mut s = State::begin(&path, true, 60_000).unwrap();
        s.done.insert("b".into());
        s.save(&path);
        // Restarted with records taken meanwhile: it goes on.
        assert_eq!(State::begin(&path, false, 60_000), Some(s.clone()));
        // Past its age: over, and forgotten.
        let old = State { began_ms: 1, ..s };
        old.save(&path);
        assert_eq!(State::begin(&path, false, 60_000), None);
        assert!(!path.exists());
    }
}
