//! The record state machine: what registering, closing, taking a report and expiring do to the
//! records in the store.
//!
//! Each is a synchronous method: the store reads that decide a change and the write that makes it
//! happen under the store lock (one write per register request, close or report; expiry works in
//! batches); after the lock it counts what happened, hands changes of own records to replication,
//! wakes waiting lookups and logs events. [`DlrService::answer`] without a report is a plain read.
//! No bus is involved: the async side ([`super::service`], the lookup and ask queryables) calls
//! these, and [`super::sweep`] runs [`DlrService::expire_due`] every second.

use std::sync::atomic::Ordering;

use switchboard_bus::dlr::wire::{DlrReport, LookupReply, ReportOutcome, Role as HolderRole, DOC_VERSION};
use switchboard_bus::dlr::{DlrRecord, RecordState};

use super::events::{DlrEvent, EventKind};
use super::store::Write;
use super::types::check_field;
use super::{now_ms, DlrError, DlrService, InboxEntry, Registration, MAX_BATCH, MAX_FIELD_BYTES, MAX_REF_BYTES};

impl DlrService {
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
            });
        }
        {
            let _guard = self.store.lock();
            let mut previous = Vec::with_capacity(fresh.len());
            for r in &mut fresh {
                let prev = self.count_store_error(self.store.get(&r.connector, &r.id))?;
                // Re-registering an id (a retry, or an id the SMSC reused) replaces the record.
                r.version = prev.as_ref().map_or(1, |p| p.version.saturating_add(1));
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
            let _ = self.changes.send(r.clone());
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
        check_field("status", status, MAX_FIELD_BYTES)?;
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
        let _ = self.changes.send(closed.clone());
        let mut line = Vec::new();
        DlrEvent::of(EventKind::Closed, &closed, &self.node).write_to(&mut line);
        self.log_events(&line);
        Ok(closed)
    }

    /// `record` closed with `status` at `at` by `by`: kept until its expiry or the closed
    /// retention, whichever comes first.
    pub(super) fn closed(&self, record: &DlrRecord, status: &str, at: u64, by: &str) -> DlrRecord {
        let keep = at.saturating_add(self.settings.closed_retention_s.saturating_mul(1000));
        DlrRecord {
            version: record.version.saturating_add(1),
            state: RecordState::Closed,
            status: Some(status.to_owned()),
            closed_at: Some(at),
            closed_by: Some(by.to_owned()),
            expires_at: record.expires_at.min(keep),
            ..record.clone()
        }
    }

    /// What this node answers to a lookup of `(connector, id)`, taking `report` if it owns the
    /// record; `None` if it holds no record.
    pub fn answer(
        &self,
        connector: &str,
        id: &str,
        report: Option<&DlrReport>,
    ) -> Result<Option<LookupReply>, DlrError> {
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
            if !current.is_open() {
                (current, ReportOutcome::Duplicate)
            } else {
                let next = if report.r#final {
                    self.closed(&current, &report.status, report.reported_at, &report.reported_by)
                } else {
                    current.clone()
                };
                let entry = serde_json::to_vec(&InboxEntry { record: next.clone(), report: report.clone() })?;
                let mut writes = vec![Write::Inbox(&entry)];
                if report.r#final {
                    writes.push(Write::Put { record: &next, previous: Some(&current) });
                }
                self.count_store_error(self.store.write(&writes))?;
                (next, ReportOutcome::Delivered)
            }
        };
        let mut line = Vec::new();
        let kind = match outcome {
            ReportOutcome::Delivered => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.inbox_ready.notify_waiters();
                if report.r#final {
                    let _ = self.changes.send(record.clone());
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
