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

use serde::{Deserialize, Serialize};
use switchboard_bus::dlr::rendezvous::replicas_for;
use switchboard_bus::dlr::wire::{RestorePage, DOC_VERSION, RESTORE_PAGE_RECORDS};
use switchboard_bus::dlr::DlrRecord;
use switchboard_bus::keys::Role;
use switchboard_bus::refusals::{refuse, Reason};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zenoh::query::{Query, QueryTarget};
use zenoh::Wait as _;

use super::store::Write;
use super::{now_ms, DlrService};
use crate::AgentError;

/// Records of its store a node reads for one restore page, at most: bounds the time one
/// answer takes whatever the share of the asker's records.
pub const SCAN: usize = 50_000;
/// How long the asker waits for one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one attempt at an agent may take in all (one that holds millions of records
/// answers a few pages a second; one that drags is given up and asked again later).
const ATTEMPT_BUDGET: Duration = Duration::from_secs(120);
/// Pages asked of one node in one attempt, at most (10^9 records at one record per [`SCAN`]).
const MAX_PAGES: u64 = 20_000;
/// How long the asker waits before asking again a node that failed.
const RETRY: Duration = Duration::from_secs(5);
/// Agents asked at once.
const AT_ONCE: usize = 16;
/// How long an agent has been seen before it is asked: it sees this node by then too (an
/// agent asked the moment this node sees it may not see this node yet, and refuse).
const SEEN_FOR: Duration = Duration::from_secs(1);
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

/// The restore queries waiting at a holder: one per asker (an asker that asks again before
/// its last query was answered replaces it), answered in the order the askers came. An asker
/// asks one page at a time, so a flood under one name (with TLS a member can only ask under its
/// own) takes one turn in the round like any other asker, and the queue holds at most one
/// query per live agent.
#[derive(Default)]
struct Waiting {
    order: std::collections::VecDeque<String>,
    queries: std::collections::HashMap<String, Query>,
}

/// Declare this node's restore queryable and serve it until `cancel` fires.
pub(crate) async fn serve(
    service: Arc<DlrService>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let key = service.keys.all_dlr_restores(&service.node)?;
    let waiting = Arc::new(std::sync::Mutex::new(Waiting::default()));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let queryable = {
        let (me, waiting, arrived) = (service.clone(), waiting.clone(), arrived.clone());
        service
            .session
            .declare_queryable(key)
            .callback(move |query| {
                let owner = match asker(&me, query.key_expr().as_str()) {
                    Ok(owner) => owner,
                    Err(why) => {
                        if let Err(e) = query.reply_err(why).wait() {
                            tracing::debug!(error = %e, "cannot answer a restore query");
                        }
                        return;
                    }
                };
                // One insert or replacement under this lock: a poisoned lock is taken over.
                let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(before) = w.queries.insert(owner.clone(), query) {
                    refuse(
                        Reason::RestoreInvalid,
                        format_args!("a restore query from {owner} before its last one was answered"),
                    );
                    if let Err(e) = before.reply_err("replaced by a later query of the same node").wait() {
                        tracing::debug!(error = %e, "cannot answer a restore query");
                    }
                } else {
                    w.order.push_back(owner);
                }
                arrived.notify_one();
            })
            .await
            .map_err(|source| AgentError::Declare { what: "DLR restore queryable", source })?
    };
    tracker.spawn(async move {
        loop {
            let next = {
                let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                let owner = w.order.pop_front();
                owner.and_then(|o| w.queries.remove(&o))
            };
            let Some(query) = next else {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = arrived.notified() => continue,
                }
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
        drop(queryable);
    });
    Ok(())
}

/// The asker of a restore query on `key`: another live agent, or why not (counted).
fn asker(service: &DlrService, key: &str) -> Result<String, String> {
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
    Ok(owner)
}

/// The page a restore query on `key` asks for, from the cursor `after`.
fn page(service: &DlrService, key: &str, after: Option<&str>) -> Result<RestorePage, String> {
    let owner = asker(service, key)?;
    let after = match after.map(decode_cursor) {
        None => None,
        Some(Some(k)) => Some(k),
        Some(None) => {
            let why = format!("after= of a restore for {owner} is not a cursor");
            refuse(Reason::RestoreInvalid, &why);
            return Err(why);
        }
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
/// Each agent is asked in a task of its own ([`AT_ONCE`] at most), so a slow one holds back no
/// other; one that fails is asked again [`RETRY`] later, until the window ends.
pub(crate) async fn run(service: Arc<DlrService>, state_file: PathBuf, empty: bool, cancel: CancellationToken) {
    let window = window(service.settings.closed_retention_s);
    let window_ms = window.as_millis() as u64;
    let Some(mut state) = State::begin(&state_file, empty, window_ms) else { return };
    if empty {
        tracing::info!(
            "this node's DLR store was empty at start: its records are taken back from their copies on the other nodes"
        );
    } else {
        tracing::info!(
            done = ?state.done,
            "the restore of this node's DLR records begun {} s ago (its store was empty then) goes on: asking the agents not asked yet",
            now_ms().saturating_sub(state.began_ms) / 1000
        );
    }
    let mut live = service.membership.subscribe();
    // Per agent: failed attempts so far, and when the last one failed.
    let mut failed: BTreeMap<String, (u32, tokio::time::Instant)> = BTreeMap::new();
    // When each agent was first seen: it is asked a moment later, once it has seen this node too.
    let mut seen: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut running: tokio::task::JoinSet<(String, Result<u64, String>)> = tokio::task::JoinSet::new();
    let mut asking: BTreeSet<String> = BTreeSet::new();
    // The other agents take a moment to be seen: until then a restore that begins now counts as
    // under way. One that goes on (a restart in its window) shows only what it asks.
    let seen_by = tokio::time::Instant::now() + if empty { switchboard_bus::mesh::SETTLE } else { Duration::ZERO };
    service.wake.show_restoring(empty);
    loop {
        let now = tokio::time::Instant::now();
        let over = now_ms().saturating_sub(state.began_ms) > window_ms;
        let peers: Vec<String> = live
            .borrow_and_update()
            .iter()
            .filter(|m| m.role == Role::Agent && m.name != service.node)
            .map(|m| m.name.clone())
            .collect();
        seen.retain(|p, _| peers.contains(p));
        for p in &peers {
            seen.entry(p.clone()).or_insert(now);
        }
        let due_at = |p: &String| {
            let first = seen.get(p).map_or(now, |t| *t + SEEN_FOR);
            failed.get(p).map_or(first, |(_, at)| first.max(*at + RETRY))
        };
        if !over {
            let due: Vec<String> = peers
                .iter()
                .filter(|p| !state.done.contains(*p) && !asking.contains(*p) && due_at(p) <= now)
                .take(AT_ONCE.saturating_sub(asking.len()))
                .cloned()
                .collect();
            for peer in due {
                asking.insert(peer.clone());
                let (service, cancel) = (service.clone(), cancel.clone());
                running.spawn(async move {
                    let attempt = tokio::time::timeout(ATTEMPT_BUDGET, restore_from(&service, &peer, &cancel));
                    let result = attempt
                        .await
                        .unwrap_or_else(|_| Err(format!("not done within {} s", ATTEMPT_BUDGET.as_secs())));
                    (peer, result)
                });
            }
        }
        // Reports of this node's records go through their first copy holder while records are
        // being taken; `GET /v1/dlr` says so for the first moment too, before agents are seen.
        service.wake.restoring(!asking.is_empty());
        let restoring = !asking.is_empty() || now < seen_by;
        service.wake.show_restoring(restoring);
        if over && asking.is_empty() {
            tracing::info!(
                done = ?state.done,
                "the restore of this node's DLR records is over: agents that join from now on are not asked"
            );
            end(&state_file);
            service.wake.show_restoring(false);
            return;
        }
        let next_due = peers
            .iter()
            .filter(|p| !state.done.contains(*p) && !asking.contains(*p))
            .map(due_at)
            .filter(|t| *t > now)
            .min();
        let over_at = now
            + Duration::from_millis(
                window_ms.saturating_sub(now_ms().saturating_sub(state.began_ms)).saturating_add(1),
            );
        tokio::select! {
            _ = cancel.cancelled() => {
                running.abort_all();
                return;
            }
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let Ok((peer, result)) = joined else { continue };
                asking.remove(&peer);
                // What was taken is on disk before a node counts as done.
                let s = service.clone();
                let synced = tokio::task::spawn_blocking(move || s.store.sync().map_err(|e| e.to_string()))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                match result.and_then(|taken| synced.map(|()| taken)) {
                    Ok(taken) => {
                        if taken > 0 {
                            service.wake.restored();
                        }
                        tracing::info!(node = %peer, taken, "took back this node's DLR records from their copies on {peer}");
                        failed.remove(&peer);
                        state.done.insert(peer);
                        state.save(&state_file);
                    }
                    Err(e) => {
                        let n = failed.get(&peer).map_or(0, |f| f.0).saturating_add(1);
                        // Said at the first failure and every tenth after it.
                        if n % 10 == 1 {
                            tracing::warn!(node = %peer, error = %e, attempt = n, "cannot take back this node's DLR records from {peer} yet; asking again every {} s until {} s after the start of the restore", RETRY.as_secs(), window.as_secs());
                        }
                        failed.insert(peer, (n, tokio::time::Instant::now()));
                    }
                }
            }
            changed = live.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(next_due.unwrap_or(over_at)), if next_due.is_some() => {}
            _ = tokio::time::sleep_until(seen_by), if restoring && asking.is_empty() => {}
            _ = tokio::time::sleep_until(over_at), if !over => {}
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
    let live = service.membership.live_of(Role::Agent);
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
        // Only a node that keeps a copy of the record (by the copies' rule, among the live
        // agents) may hand it back: any other agent could hand this node made-up states of its
        // records (closed, say, so that the real DLR would be a duplicate).
        let holders = replicas_for(&key, &service.node, live.iter().map(String::as_str), service.settings.copies);
        if !holders.contains(&from) {
            refuse(
                Reason::RestoreInvalid,
                format_args!(
                    "a copy from {from} of {}/{}, which {from} does not keep (its copies are on {})",
                    record.connector,
                    record.id,
                    holders.join(", ")
                ),
            );
            continue;
        }
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
