//! A node rebuilt empty takes its records back from the copies other nodes keep of them.
//!
//! Copies are made by their owner ([`super::replicate`]). A node whose store is lost (its
//! `data_dir` rebuilt empty) would hold none of its records again, and each node keeping a copy
//! that is rebuilt after it would take one copy away for good. So:
//!
//! - [`serve`] answers `<prefix>/dlr/restore/<this node>/<owner>` for a live agent `owner`: one
//!   [`RestorePage`] per query, the copies of `owner`'s records among up to [`SCAN`] records of
//!   this node's store after the query's `after` cursor. Queries are answered one at a time,
//!   from a short queue that drops the oldest when full, so a flood of them cannot hold up the
//!   node's other bus traffic.
//! - [`run`], on a node whose store was empty when it started, asks every other live agent,
//!   page after page, and takes each record unless it holds the same or a newer version. It
//!   keeps `dlr/restore.json` (when it began, the nodes done) so that a restart goes on where it
//!   stopped and an agent that arrives a little later (down at the start) is asked too, for
//!   [`window`] after the beginning. While it takes records (and for its first seconds), and
//!   until a replication pass after that has checked every copy, reports of this node's records
//!   are checked with their first copy holder (a reporter may have handled the DLR while this
//!   node was down), and that pass makes the copies again where they are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
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
/// How long one attempt at a node may take in all (a node that holds millions of records
/// answers a few hundred pages a second; one that drags is given up and tried again later).
const ATTEMPT_BUDGET: Duration = Duration::from_secs(600);
/// Pages asked of one node in one attempt, at most (10^9 records at one record per [`SCAN`]).
const MAX_PAGES: u64 = 20_000;
/// How long the asker waits before asking again a node that failed.
const RETRY: Duration = Duration::from_secs(5);
/// Attempts at one node in a process's life, at most.
const MAX_ATTEMPTS: u32 = 5;
/// Nodes asked at once.
const AT_ONCE: usize = 4;
/// How long after a rebuild a node still asks agents that join (were down at the rebuild), at
/// most; never longer than `closed_retention_s`, so that a record this node closed meanwhile
/// is still held (closed) when a late copy of it arrives, and the copy does not open it again.
const LATE_JOINS: Duration = Duration::from_secs(600);
/// The shortest restore window: the agents live at the start are seen within it.
const FIRST_ROUND: Duration = Duration::from_secs(30);
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
        .with(zenoh::handlers::RingChannel::new(8))
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
    if !text.len().is_multiple_of(2)
        || text.len() > 2 * MAX_CURSOR_BYTES
        || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
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
    /// The restore under way per the file at `path`: a new one if the store was `empty` (a
    /// state file left beside an emptied store says nothing of it), the one in the file if it
    /// began less than `window_ms` ago; `None` when there is nothing to restore.
    fn begin(path: &Path, empty: bool, window_ms: u64) -> Option<Self> {
        let now = now_ms();
        if empty {
            let s = Self { began_ms: now, done: BTreeSet::new() };
            s.save(path);
            return Some(s);
        }
        let held = std::fs::read(path).ok()?;
        match serde_json::from_slice::<Self>(&held) {
            Ok(s) if now.saturating_sub(s.began_ms) <= window_ms => Some(s),
            Ok(_) => {
                end(path);
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable restore state: the restore is over");
                end(path);
                None
            }
        }
    }

    fn save(&self, path: &Path) {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Err(e) = switchboard_bus::config::write_atomically(path, &body) {
            tracing::error!(path = %path.display(), error = %e, "cannot record the restore's progress");
        }
    }
}

/// Remove the state file of a restore that is over.
fn end(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the finished restore's state");
        }
    }
}

/// How long after it began a restore asks agents that join: [`LATE_JOINS`], or
/// `closed_retention_s` if shorter, but at least [`FIRST_ROUND`].
pub fn window(closed_retention_s: u64) -> Duration {
    LATE_JOINS.min(Duration::from_secs(closed_retention_s)).max(FIRST_ROUND)
}

/// The file of a restore's state in the DLR directory `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Take this node's records back from every other live agent, once each, if its store was
/// `empty` at start or a restore was under way; until `cancel` fires or the restore is over.
pub(crate) async fn run(service: Arc<DlrService>, state_file: PathBuf, empty: bool, cancel: CancellationToken) {
    let window = window(service.settings.closed_retention_s);
    let window_ms = window.as_millis() as u64;
    let Some(mut state) = State::begin(&state_file, empty, window_ms) else { return };
    tracing::info!(
        done = ?state.done,
        "this node's DLR store was empty at start: its records are taken back from their copies on the other nodes"
    );
    let mut live = service.membership.subscribe();
    // Per node: attempts so far, and when the last one failed.
    let mut failed: BTreeMap<String, (u32, tokio::time::Instant)> = BTreeMap::new();
    // The other agents take a moment to be seen: until then the restore counts as under way.
    let seen_by = tokio::time::Instant::now() + switchboard_bus::mesh::SETTLE;
    service.wake.restoring(true);
    loop {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = live
            .borrow_and_update()
            .iter()
            .filter(|m| m.role == Role::Agent && m.name != service.node && !state.done.contains(&m.name))
            .filter(|m| failed.get(&m.name).is_none_or(|(n, at)| *n < MAX_ATTEMPTS && now.duration_since(*at) >= RETRY))
            .map(|m| m.name.clone())
            .collect();
        if !due.is_empty() {
            service.wake.restoring(true);
            let asked: Vec<(String, Result<u64, String>)> = futures::stream::iter(due)
                .map(|peer| {
                    let service = service.clone();
                    let cancel = cancel.clone();
                    async move {
                        let attempt = tokio::time::timeout(ATTEMPT_BUDGET, restore_from(&service, &peer, &cancel));
                        let result = attempt
                            .await
                            .unwrap_or_else(|_| Err(format!("not done within {} s", ATTEMPT_BUDGET.as_secs())));
                        (peer, result)
                    }
                })
                .buffer_unordered(AT_ONCE)
                .collect()
                .await;
            if cancel.is_cancelled() {
                return;
            }
            // What was taken is on disk before a node counts as done.
            let s = service.clone();
            let synced = tokio::task::spawn_blocking(move || s.store.sync().map_err(|e| e.to_string()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            for (peer, result) in asked {
                match (result, &synced) {
                    (Ok(taken), Ok(())) => {
                        tracing::info!(node = %peer, taken, "took back this node's DLR records from their copies on {peer}");
                        state.done.insert(peer);
                    }
                    (Ok(_), Err(e)) => {
                        tracing::warn!(node = %peer, error = %e, "took this node's DLR records from {peer} but cannot sync the store: asking again");
                        let n = failed.get(&peer).map_or(0, |f| f.0);
                        failed.insert(peer, (n.saturating_add(1), tokio::time::Instant::now()));
                    }
                    (Err(e), _) => {
                        let n = failed.get(&peer).map_or(0, |f| f.0).saturating_add(1);
                        if n < MAX_ATTEMPTS {
                            tracing::warn!(node = %peer, error = %e, attempt = n, "cannot take back this node's DLR records from {peer} yet; asking again in {} s", RETRY.as_secs());
                        } else {
                            tracing::error!(node = %peer, error = %e, attempt = n, "cannot take back this node's DLR records from {peer}: given up (its copies still answer lookups)");
                        }
                        failed.insert(peer, (n, tokio::time::Instant::now()));
                    }
                }
            }
            state.save(&state_file);
            continue;
        }
        // Done with every node it sees (or gave up on some): reports go on as usual once a pass
        // has checked the copies (the change of `restoring` owes one).
        if service.wake.is_restoring() && now >= seen_by {
            service.wake.restoring(false);
        }
        if now_ms().saturating_sub(state.began_ms) > window_ms {
            tracing::info!(
                done = ?state.done,
                "the restore of this node's DLR records is over: agents that join from now on are not asked"
            );
            end(&state_file);
            return;
        }
        let retry_at = failed.values().filter(|(n, _)| *n < MAX_ATTEMPTS).map(|(_, at)| *at + RETRY).min();
        let over_at = tokio::time::Instant::now()
            + Duration::from_millis(
                window_ms.saturating_sub(now_ms().saturating_sub(state.began_ms)).saturating_add(1),
            );
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = live.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(retry_at.unwrap_or(over_at)), if retry_at.is_some() => {}
            _ = tokio::time::sleep_until(seen_by), if service.wake.is_restoring() => {}
            _ = tokio::time::sleep_until(over_at) => {}
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
        // The holder's cursor must go forward: one that stays (or goes back) would never end.
        let next = match page.next.as_deref() {
            None => None,
            Some(n) => {
                let key = decode_cursor(n).ok_or_else(|| {
                    refuse(
                        Reason::RestoreInvalid,
                        format_args!("a restore page from {peer} with a cursor that does not parse"),
                    );
                    format!("{peer} answered with a cursor that does not parse")
                })?;
                if after.as_deref().and_then(decode_cursor).is_some_and(|before| key <= before) {
                    refuse(
                        Reason::RestoreInvalid,
                        format_args!("a restore page from {peer} whose cursor does not go forward"),
                    );
                    return Err(format!("{peer} answered with a cursor that does not go forward"));
                }
                Some(encode_cursor(&key))
            }
        };
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
    let now = now_ms();
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
        // Expired here already (the holder's sweep is a second behind at most): nothing to take.
        if record.expires_at <= now {
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
    drop(_guard);
    // Lookups waiting here for one of these records (`wait_ms`) have it now.
    for (record, _) in &puts {
        service.records.wake(&record.store_key());
    }
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
    fn a_restore_begins_on_an_empty_store_goes_on_after_a_restart_and_ends_with_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        assert_eq!(State::begin(&path, false, 1000), None, "a store with records restores nothing");
        let mut s = State::begin(&path, true, 60_000).unwrap();
        s.done.insert("b".into());
        s.save(&path);
        // Restarted with records taken meanwhile: it goes on.
        assert_eq!(State::begin(&path, false, 60_000), Some(s.clone()));
        // Emptied again, state file kept: a new restore, every node asked again.
        let again = State::begin(&path, true, 60_000).unwrap();
        assert!(again.done.is_empty());
        // Past its window: over, and forgotten.
        State { began_ms: 1, ..s }.save(&path);
        assert_eq!(State::begin(&path, false, 60_000), None);
        assert!(!path.exists());
        // An unreadable file ends it too.
        std::fs::write(&path, "{").unwrap();
        assert_eq!(State::begin(&path, false, 60_000), None);
        assert!(!path.exists());
    }

    #[test]
    fn late_joins_are_asked_no_longer_than_closed_records_are_kept() {
        assert_eq!(window(3600), LATE_JOINS);
        assert_eq!(window(60), Duration::from_secs(60));
        assert_eq!(window(1), FIRST_ROUND, "the agents live at the start are asked in any case");
    }
}
