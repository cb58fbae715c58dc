//! The node's records and the state machine over them: what registering, closing, taking a
//! report and expiring do to the records in the store.
//!
//! [`Records`] holds the store and what a change sets off on this node: the counters, the
//! replication queue, the waiting lookups, the inbox notice and the event log. Each operation
//! is a synchronous method: the store reads that decide a change and the write that makes it
//! happen under the store lock (one write per register request, close or report; expiry works
//! in batches); after the lock it counts what happened, hands changes of own records to
//! replication, wakes waiting lookups and logs events. [`Records::answer`] without a report is
//! a plain read. No bus is involved, so the unit tests below run it on a store alone; the
//! service ([`super::DlrService`], which derefs to its records) calls these from the lookup and
//! ask queryables, and its sweep ([`super::DlrService::sweep`]) runs [`Records::expire_due`] every
//! second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchboard_bus::dlr::wire::{DlrReport, LookupReply, ReportOutcome, Role as HolderRole, DOC_VERSION};
use switchboard_bus::dlr::{id, registration_version, DlrRecord, IdFormat, RecordState};
use switchboard_bus::refusals::{refuse, Reason};
use switchboard_bus::throttle::Throttle;
use tokio::sync::{oneshot, Notify};

use super::events::{DlrEvent, EventKind};
use super::outbox::Outbox;
use super::settings::DlrSettings;
use super::store::{DlrStore, StoreError, Write};
use super::types::{check_field, check_status};
use super::{now_ms, DlrError, DlrStats, InboxEntry, Registration, MAX_BATCH, MAX_FIELD_BYTES, MAX_REF_BYTES};
use crate::eventlog::EventLog;

/// How far ahead of this node's clock a registration's `submitted_at` may be.
const SUBMITTED_AHEAD_MS: u64 = 86_400_000;

/// What a record's first copy holder said of a report its owner could not take on its own
/// record alone (`DlrService::claim`; docs/architecture.md, "A hung owner").
#[derive(Debug)]
pub enum Claim {
    /// The holder was not asked: the record here decides.
    NotAsked,
    /// The holder took this node's close first: the report is this node's to take.
    Won(DlrRecord),
    /// The holder keeps a newer close: a reporter handled the DLR with a copy's record.
    Lost(DlrRecord),
    /// The holder could not be asked (unreachable, too slow, too many asks at once).
    Unknown,
    /// Not asked: read in time, but this node is just back from not running, and other nodes
    /// may have handled the DLR meanwhile (the holder it would ask may not be theirs yet). Not
    /// taken: the reporter decides on the copies.
    Stale,
    /// Not asked: the record (in this version) was closed by a hand-off whose reporter is gone
    /// since, so its gateway may never have had the DLR: a final report is taken again
    /// (docs/architecture.md, "A reporter gone before its answer").
    HandOffLost(u32),
}

/// The node's records, and what a change to them sets off on this node.
pub struct Records {
    pub(super) node: String,
    pub(super) settings: DlrSettings,
    formats: HashMap<String, (IdFormat, IdFormat)>,
    pub(super) store: Arc<DlrStore>,
    pub(super) waiters: Mutex<HashMap<Vec<u8>, Vec<oneshot::Sender<()>>>>,
    pub(super) waiting: AtomicU64,
    /// Changes of own records waiting for replication.
    pub(super) outbox: Outbox,
    events: Option<EventLog>,
    pub(super) inbox_ready: Notify,
    /// Reports refused for a full inbox are logged at most once a minute.
    inbox_full_logged: Mutex<Throttle>,
    /// Counters.
    pub stats: Arc<DlrStats>,
}

impl Records {
    /// The records of `node` in `store`, with `settings`; events go to `events` when given.
    /// Every change of a record this node owns goes to its replication queue ([`Outbox`]).
    pub fn new(node: String, settings: DlrSettings, store: DlrStore, events: Option<EventLog>) -> Self {
        let formats =
            settings.connectors.iter().map(|c| (c.name.clone(), (c.ids, c.report_ids.unwrap_or(c.ids)))).collect();
        Self {
            node,
            outbox: Outbox::new(settings.replica_queue),
            settings,
            formats,
            store: Arc::new(store),
            waiters: Mutex::new(HashMap::new()),
            waiting: AtomicU64::new(0),
            events,
            inbox_ready: Notify::new(),
            inbox_full_logged: Mutex::new(Throttle::new(std::time::Duration::from_secs(60))),
            stats: Arc::new(DlrStats::default()),
        }
    }

    /// Changes of own records waiting for their replicas now, and how often that queue was
    /// full and forgot its records (a pass over the store sent them instead).
    pub fn replica_queue(&self) -> (usize, u64) {
        (self.outbox.len(), self.outbox.overflows())
    }

    /// The id formats of `connector`: (registered ids, DLR ids).
    pub(super) fn formats(&self, connector: &str) -> Result<(IdFormat, IdFormat), DlrError> {
        id::check_connector(connector)?;
        Ok(self.formats.get(connector).copied().unwrap_or_default())
    }

    pub(super) fn count_store_error<T>(&self, r: Result<T, StoreError>) -> Result<T, DlrError> {
        r.map_err(|e| {
            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "DLR store");
            DlrError::Store(e)
        })
    }

    pub(super) fn log_events(&self, lines: &[u8]) {
        if let Some(log) = &self.events {
            if let Err(e) = log.append(lines) {
                self.stats.event_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %log.path().display(), error = %e, "cannot write DLR events yet");
            }
        }
    }
    /// Register messages (one atomic write for the whole request); returns the stored records.
    pub fn register(&self, regs: &[Registration]) -> Result<Vec<DlrRecord>, DlrError> {
        if regs.is_empty() || regs.len() > MAX_BATCH {
            return Err(DlrError::BadRequest(format!("a request registers 1 to {MAX_BATCH} records")));
        }
        let now = now_ms();
        let mut fresh = Vec::with_capacity(regs.len());
        for (i, r) in regs.iter().enumerate() {
            let at = |e: DlrError| {
                DlrError::BadRequest(if regs.len() > 1 { format!("record {i}: {e}") } else { e.to_string() })
            };
            let (ids, _) = self.formats(&r.connector).map_err(at)?;
            let canonical = ids.canonical(&r.msg_id).map_err(|e| at(e.into()))?;
            check_field("destination", &r.destination, MAX_FIELD_BYTES).map_err(at)?;
            check_field("account", &r.account, MAX_FIELD_BYTES).map_err(at)?;
            check_field("gateway_ref", &r.gateway_ref, MAX_REF_BYTES).map_err(at)?;
            let expiry_s = r.expiry_s.unwrap_or(self.settings.expiry_s);
            if expiry_s == 0 || expiry_s > self.settings.max_expiry_s {
                return Err(at(DlrError::BadRequest(format!(
                    "expiry_s must be 1 to {} (dlr.max_expiry_s)",
                    self.settings.max_expiry_s
                ))));
            }
            // A gateway's clock may run ahead of this node's, but not by a day: a later time is a
            // bug (or hostile), and would turn into no latency at all in the `dlr` table.
            if r.submitted_at.is_some_and(|at| at > now.saturating_add(SUBMITTED_AHEAD_MS)) {
                return Err(at(DlrError::BadRequest(format!(
                    "submitted_at is more than a day after this node's clock ({now} ms since the epoch)"
                ))));
            }
            fresh.push(DlrRecord {
                connector: r.connector.clone(),
                id: canonical,
                msg_id: r.msg_id.trim().to_owned(),
                account: r.account.clone(),
                destination: r.destination.clone(),
                submitted_at: r.submitted_at.unwrap_or(now),
                owner: self.node.clone(),
                gateway_ref: r.gateway_ref.clone(),
                expires_at: now.saturating_add(expiry_s.saturating_mul(1000)),
                version: 1,
                state: RecordState::Open,
                status: None,
                closed_at: None,
                closed_by: None,
                handed_off: false,
            });
        }
        {
            let _guard = self.store.lock();
            let mut previous = Vec::with_capacity(fresh.len());
            for r in &mut fresh {
                let prev = self.count_store_error(self.store.get(&r.connector, &r.id))?;
                // Re-registering an id (a retry, or an id the SMSC reused) replaces the record,
                // on its copies too, even those of a life of this node before a rebuild.
                r.version = registration_version(prev.as_ref().map(|p| p.version), now);
                previous.push(prev);
            }
            let writes: Vec<Write<'_>> =
                fresh.iter().zip(&previous).map(|(record, p)| Write::Put { record, previous: p.as_ref() }).collect();
            self.count_store_error(self.store.write(&writes))?;
        }
        self.stats.registered.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        let mut lines = Vec::new();
        for r in &fresh {
            self.wake(&r.store_key());
            self.outbox.push(r.clone());
            DlrEvent::of(EventKind::Registered, r, &self.node).write_to(&mut lines);
        }
        self.log_events(&lines);
        Ok(fresh)
    }

    /// Close a record this node owns, with `status` (e.g. when the gateway learned the outcome
    /// some other way). Closing a closed record returns it unchanged.
    pub fn close(&self, connector: &str, msg_id: &str, status: &str) -> Result<DlrRecord, DlrError> {
        let (ids, _) = self.formats(connector)?;
        let canonical = ids.canonical(msg_id)?;
        check_status(status)?;
        let closed = {
            let _guard = self.store.lock();
            let Some(current) = self.count_store_error(self.store.get(connector, &canonical))? else {
                return Err(DlrError::NotFound { connector: connector.into(), msg_id: msg_id.into() });
            };
            if current.owner != self.node {
                return Err(DlrError::NotOwner(msg_id.into(), current.owner));
            }
            if !current.is_open() {
                return Ok(current);
            }
            let closed = self.closed(&current, status, now_ms(), &self.node);
            self.count_store_error(self.store.write(&[Write::Put { record: &closed, previous: Some(&current) }]))?;
            closed
        };
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
        self.outbox.push(closed.clone());
        let mut line = Vec::new();
        DlrEvent::of(EventKind::Closed, &closed, &self.node).write_to(&mut line);
        self.log_events(&line);
        Ok(closed)
    }

    /// `record` closed with `status` at `at` by `by`: kept until its expiry or the closed
    /// retention, whichever comes first. A record closes no earlier than it was submitted: a
    /// DLR that overtook its registration was reported before the record existed.
    pub(super) fn closed(&self, record: &DlrRecord, status: &str, at: u64, by: &str) -> DlrRecord {
        let at = at.max(record.submitted_at);
        let keep = at.saturating_add(self.settings.closed_retention_s.saturating_mul(1000));
        DlrRecord {
            version: record.version.saturating_add(1),
            state: RecordState::Closed,
            status: Some(status.to_owned()),
            closed_at: Some(at),
            closed_by: Some(by.to_owned()),
            handed_off: false,
            expires_at: record.expires_at.min(keep),
            ..record.clone()
        }
    }

    /// [`Self::closed`] by a hand-off: `by`'s gateway handles the DLR (`owner_down`).
    pub(super) fn handed_off(&self, record: &DlrRecord, status: &str, at: u64, by: &str) -> DlrRecord {
        DlrRecord { handed_off: true, ..self.closed(record, status, at, by) }
    }

    /// What this node answers to a lookup of `(connector, id)`, taking `report` if it owns the
    /// record; `None` if it holds no record.
    pub fn answer(
        &self,
        connector: &str,
        id: &str,
        report: Option<&DlrReport>,
    ) -> Result<Option<LookupReply>, DlrError> {
        self.answer_claimed(connector, id, report, &Claim::NotAsked)
    }

    /// [`Records::answer`], for a report that the record here could not settle alone
    /// (`DlrService::claim`): it is taken (queued) with the record this node closed first on the
    /// record's first copy holder, while the record is still the one it was closed from, and is a
    /// duplicate when a reporter closed it there first; otherwise a late one is closed, not
    /// queued, and one read in time is not taken (an error reply: the reporter decides).
    pub fn answer_claimed(
        &self,
        connector: &str,
        id: &str,
        report: Option<&DlrReport>,
        claim: &Claim,
    ) -> Result<Option<LookupReply>, DlrError> {
        // An id or connector no record can have (a peer's ask, say) names none: counted, `null`.
        use switchboard_bus::dlr::id::{check_connector, MAX_ID_BYTES};
        if id.is_empty() || id.len() > MAX_ID_BYTES || check_connector(connector).is_err() {
            self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let reply = |record: DlrRecord, outcome| {
            let role = if record.owner == self.node { HolderRole::Owner } else { HolderRole::Replica };
            LookupReply { version: DOC_VERSION, node: self.node.clone(), role, record, outcome }
        };
        let Some(report) = report else {
            return Ok(self.count_store_error(self.store.get(connector, id))?.map(|r| reply(r, None)));
        };
        let (record, outcome) = {
            let _guard = self.store.lock();
            let Some(current) = self.count_store_error(self.store.get(connector, id))? else { return Ok(None) };
            if current.owner != self.node {
                return Ok(Some(reply(current, None)));
            }
            let late = report.answer_by.is_some_and(|by| super::now_ms() > by);
            let won = match claim {
                Claim::Won(w) if w.version == current.version.saturating_add(1) && report.r#final => Some(w),
                _ => None,
            };
            let lost = match claim {
                Claim::Lost(newer)
                    if newer.owner == self.node
                        && newer.store_key() == current.store_key()
                        && newer.version > current.version
                        && !newer.is_open() =>
                {
                    // The holder's word, held to what a copy may carry.
                    match super::types::check_record(newer, super::types::latest_expiry(self.settings.max_expiry_s)) {
                        Ok(()) => Some(newer),
                        Err(e) => {
                            refuse(Reason::ReplicaInvalid, format_args!("a holder's close of {connector}/{id}: {e}"));
                            None
                        }
                    }
                }
                _ => None,
            };
            let again =
                report.r#final && !current.is_open() && matches!(claim, Claim::HandOffLost(v) if *v == current.version);
            if !current.is_open() && !again {
                (current, ReportOutcome::Duplicate)
            } else if let Some(newer) = lost {
                // A reporter handled the DLR with a copy's record while this node was not
                // running, and closed that copy on the first holder: this is a repeat. The
                // holder's close is taken here, as the first pass after waking would take it.
                if late {
                    refuse(
                        Reason::ReportLate,
                        format_args!(
                            "report of {connector}/{id} from {} read after its answer_by: a duplicate",
                            report.reported_by
                        ),
                    );
                }
                self.count_store_error(self.store.write(&[Write::Put { record: newer, previous: Some(&current) }]))?;
                drop(_guard);
                self.outbox.push(newer.clone());
                (newer.clone(), ReportOutcome::Duplicate)
            } else if won.is_none() && late {
                // The reporter stopped waiting: its gateway handles the DLR (`owner_down`) and a
                // final report closed the copies. Queueing it here too would hand it to two
                // gateways; the record is closed here as the reporter closed the copies (the same
                // record), so a repeat that comes before that copy is a duplicate here too.
                refuse(
                    Reason::ReportLate,
                    format_args!(
                        "report of {connector}/{id} from {} read after its answer_by: closed, not queued",
                        report.reported_by
                    ),
                );
                if !report.r#final {
                    return Ok(Some(reply(current, None)));
                }
                let next = self.handed_off(&current, &report.status, report.reported_at, &report.reported_by);
                self.count_store_error(self.store.write(&[Write::Put { record: &next, previous: Some(&current) }]))?;
                drop(_guard);
                self.outbox.push(next.clone());
                return Ok(Some(reply(next, None)));
            } else if matches!(claim, Claim::Stale) || (won.is_none() && matches!(claim, Claim::Unknown)) {
                return Err(DlrError::Unreachable(format!(
                    "{}: not taking the report of {connector}/{id} from {}",
                    super::wake::STALE,
                    report.reported_by
                )));
            } else {
                let held = self.store.inbox_len();
                if held >= self.settings.max_inbox {
                    self.stats.inbox_full.fetch_add(1, Ordering::Relaxed);
                    let e = StoreError::InboxFull { held };
                    if let Some(unlogged) = self.inbox_full_logged.lock().ok().and_then(|mut t| t.admit()) {
                        tracing::warn!(refused_since_last_line = unlogged, "report of {connector}/{id} refused: {e}");
                    }
                    return Err(DlrError::Store(e));
                }
                let next = match won {
                    Some(w) => w.clone(),
                    None if report.r#final => {
                        self.closed(&current, &report.status, report.reported_at, &report.reported_by)
                    }
                    None => current.clone(),
                };
                let entry = serde_json::to_vec(&InboxEntry { record: next.clone(), report: report.clone() })?;
                let mut writes = vec![Write::Inbox(&entry)];
                if report.r#final {
                    writes.push(Write::Put { record: &next, previous: Some(&current) });
                }
                self.count_store_error(self.store.write(&writes))?;
                if again {
                    self.stats.handed_again.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "report of {connector}/{id} from {} taken again: {} closed it by a hand-off and is gone since",
                        report.reported_by,
                        current.closed_by.as_deref().unwrap_or("?")
                    );
                }
                (next, ReportOutcome::Delivered)
            }
        };
        let mut line = Vec::new();
        let kind = match outcome {
            ReportOutcome::Delivered => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.inbox_ready.notify_waiters();
                if report.r#final {
                    self.outbox.push(record.clone());
                }
                EventKind::Delivered
            }
            ReportOutcome::Duplicate => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                EventKind::Duplicate
            }
        };
        DlrEvent::of(kind, &record, &self.node).with_report(report).write_to(&mut line);
        self.log_events(&line);
        Ok(Some(reply(record, Some(outcome))))
    }

    /// Remove every record due at `now`; returns how many (own open ones are logged as expired).
    pub fn expire_due(&self, now: u64) -> Result<usize, DlrError> {
        let mut total = 0;
        loop {
            let due = self.count_store_error(self.store.due(now, 10_000))?;
            if due.is_empty() {
                return Ok(total);
            }
            let mut lines = Vec::new();
            let due = {
                let _guard = self.store.lock();
                // A record re-registered or closed since it was read keeps its newer self.
                let mut still = Vec::with_capacity(due.len());
                for r in due {
                    let current = self.count_store_error(self.store.get_key(&r.store_key()))?;
                    if current.is_some_and(|c| c.version == r.version) {
                        still.push(r);
                    }
                }
                let writes: Vec<Write<'_>> = still.iter().map(Write::Remove).collect();
                self.count_store_error(self.store.write(&writes))?;
                still
            };
            if due.is_empty() {
                return Ok(total);
            }
            for r in due.iter().filter(|r| r.owner == self.node && r.is_open()) {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                DlrEvent::of(EventKind::Expired, r, &self.node).write_to(&mut lines);
            }
            self.log_events(&lines);
            total += due.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(node: &str) -> (tempfile::TempDir, Records) {
        let dir = tempfile::tempdir().unwrap();
        let store = DlrStore::open(&dir.path().join("store"), 8 << 20).unwrap();
        (dir, Records::new(node.into(), DlrSettings::default(), store, None))
    }

    /// The one change queued for replication.
    fn queued(r: &Records) -> Option<DlrRecord> {
        let mut q = r.outbox.take().records.into_values();
        let one = q.next();
        assert!(q.next().is_none(), "one change queued");
        one
    }

    fn registration(msg_id: &str) -> Registration {
        Registration {
            connector: "smsc1".into(),
            msg_id: msg_id.into(),
            destination: "+4915200000".into(),
            account: "acme".into(),
            gateway_ref: String::new(),
            submitted_at: Some(1_000),
            expiry_s: Some(60),
        }
    }

    #[test]
    fn a_full_inbox_refuses_reports_until_the_gateway_takes_some() {
        let dir = tempfile::tempdir().unwrap();
        let store = DlrStore::open(&dir.path().join("store"), 8 << 20).unwrap();
        let settings = DlrSettings { max_inbox: 2, ..DlrSettings::default() };
        let r = Records::new("gw1".into(), settings, store, None);
        r.register(&[registration("1")]).unwrap();
        for _ in 0..2 {
            assert!(r.answer("smsc1", "1", Some(&report(false))).unwrap().is_some());
        }
        let e = r.answer("smsc1", "1", Some(&report(true))).unwrap_err();
        assert!(e.to_string().starts_with(switchboard_bus::dlr::wire::STORE_FAILED), "{e}");
        assert!(e.to_string().contains("max_inbox"), "{e}");
        assert_eq!(e.kind(), super::super::types::ErrorKind::Unavailable);
        assert_eq!(r.stats.inbox_full.load(Ordering::Relaxed), 1);
        assert!(r.store.get("smsc1", "1").unwrap().unwrap().is_open(), "the final report was not taken");
        r.store.ack_inbox(1).unwrap();
        let taken = r.answer("smsc1", "1", Some(&report(true))).unwrap().unwrap();
        assert_eq!(taken.outcome, Some(ReportOutcome::Delivered));
        assert_eq!(r.store.inbox_len(), 2);
    }

    #[test]
    fn an_id_or_connector_no_record_can_have_names_none_and_is_counted() {
        let (_dir, r) = records("gw1");
        r.register(&[registration("1")]).unwrap();
        // 100,000 bytes: past what the store can look up (64 KiB), which panicked.
        for (connector, id) in [
            ("smsc1".to_owned(), "1".repeat(100_000)),
            ("smsc1".into(), String::new()),
            ("x".repeat(70_000), "1".into()),
        ] {
            assert!(r.answer(&connector, &id, None).unwrap().is_none());
            assert!(r.answer(&connector, &id, Some(&report(true))).unwrap().is_none());
        }
        assert_eq!(counted(&r.stats.bad_requests), 6);
        assert!(r.answer("smsc1", "1", None).unwrap().is_some());
        assert!(r.store.get_key(&vec![b'k'; 70_000]).unwrap().is_none());
    }

    fn report(is_final: bool) -> DlrReport {
        DlrReport {
            version: DOC_VERSION,
            status: "DELIVRD".into(),
            r#final: is_final,
            reported_at: 2_000,
            reported_by: "gw2".into(),
            error: None,
            text: None,
            answer_by: None,
        }
    }

    fn counted(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    #[test]
    fn a_final_report_closes_an_own_record_once_and_queues_it_for_the_gateway() {
        let (_dir, r) = records("gw1");
        let id = r.register(&[registration("AbC-1")]).unwrap().remove(0).id;
        assert!(queued(&r).unwrap().version > 1_000_000, "a registration goes to replication");
        let first = r.answer("smsc1", &id, Some(&report(true))).unwrap().unwrap();
        assert_eq!((first.role, first.outcome), (HolderRole::Owner, Some(ReportOutcome::Delivered)));
        assert_eq!(first.record.state, RecordState::Closed);
        assert_eq!(first.record.closed_by.as_deref(), Some("gw2"));
        assert_eq!(queued(&r).unwrap().state, RecordState::Closed, "and so does its closing");
        let again = r.answer("smsc1", &id, Some(&report(true))).unwrap().unwrap();
        assert_eq!(again.outcome, Some(ReportOutcome::Duplicate));
        assert!(queued(&r).is_none(), "a duplicate changes nothing");
        assert_eq!((counted(&r.stats.delivered), counted(&r.stats.duplicates)), (1, 1));
        assert_eq!(r.store.inbox_after(0, 10).unwrap().len(), 1, "one report for the gateway");
    }

    #[test]
    fn a_report_older_than_its_registration_closes_the_record_when_it_was_submitted() {
        let (_dir, r) = records("gw1");
        let mut late = registration("m-9");
        late.submitted_at = Some(5_000);
        let id = r.register(&[late]).unwrap().remove(0).id;
        // Reported at 2,000: the DLR overtook the registration that says 5,000.
        let reply = r.answer("smsc1", &id, Some(&report(true))).unwrap().unwrap();
        assert_eq!(reply.record.state, RecordState::Closed);
        assert_eq!(reply.record.closed_at, Some(5_000));
    }

    #[test]
    fn an_interim_report_reaches_the_inbox_and_leaves_the_record_open() {
        let (_dir, r) = records("gw1");
        let id = r.register(&[registration("m-2")]).unwrap().remove(0).id;
        let reply = r.answer("smsc1", &id, Some(&report(false))).unwrap().unwrap();
        assert_eq!(reply.outcome, Some(ReportOutcome::Delivered));
        assert_eq!(reply.record.state, RecordState::Open);
        assert_eq!(r.store.inbox_after(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_copy_answers_lookups_but_takes_no_report_and_cannot_be_closed_here() {
        let (_dir, owner) = records("gw1");
        let record = owner.register(&[registration("m-3")]).unwrap().remove(0);
        let (_dir2, copy) = records("gw2");
        copy.store.write(&[Write::Put { record: &record, previous: None }]).unwrap();
        let reply = copy.answer("smsc1", &record.id, Some(&report(true))).unwrap().unwrap();
        assert_eq!((reply.role, reply.outcome), (HolderRole::Replica, None));
        assert_eq!(reply.record.state, RecordState::Open, "the owner decides, not the copy");
        assert!(matches!(copy.close("smsc1", "m-3", "DELIVRD"), Err(DlrError::NotOwner(..))));
        assert!(copy.answer("smsc1", "unknown", None).unwrap().is_none());
    }

    #[test]
    fn bad_registrations_are_refused_whole() {
        let (_dir, r) = records("gw1");
        let mut long = registration("m-4");
        long.destination = "9".repeat(MAX_FIELD_BYTES + 1);
        let err = r.register(&[registration("m-5"), long]).unwrap_err();
        assert!(err.to_string().starts_with("record 1: "), "{err}");
        assert!(r.answer("smsc1", "m-5", None).unwrap().is_none(), "nothing of the request was stored");
        let mut forever = registration("m-6");
        forever.expiry_s = Some(0);
        assert!(matches!(r.register(&[forever]), Err(DlrError::BadRequest(_))));
        assert!(matches!(r.register(&[]), Err(DlrError::BadRequest(_))));
    }

    #[test]
    fn expiry_removes_due_records_and_counts_own_open_ones() {
        let (_dir, r) = records("gw1");
        let kept = r.register(&[registration("m-7")]).unwrap().remove(0);
        let mut short = registration("m-8");
        short.expiry_s = Some(1);
        let due = r.register(&[short]).unwrap().remove(0);
        assert_eq!(r.expire_due(due.expires_at).unwrap(), 1);
        assert_eq!(counted(&r.stats.expired), 1);
        assert!(r.answer("smsc1", &due.id, None).unwrap().is_none());
        assert!(r.answer("smsc1", &kept.id, None).unwrap().is_some());
        assert_eq!(r.expire_due(due.expires_at).unwrap(), 0, "nothing twice");
    }
}
