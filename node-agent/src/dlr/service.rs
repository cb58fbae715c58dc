//! The async orchestration over the bus: resolving a message id (the first holder, then every
//! node), handing in a report (taken by the owner, or closed on the replicas' copies when the
//! owner is down), turning a lookup's reply into a [`Resolution`], and the inbox the gateway polls for
//! the reports this node took.

use std::sync::atomic::Ordering;
use std::time::Duration;

use switchboard_bus::dlr::record::store_key;
use switchboard_bus::dlr::rendezvous::replicas_for;
use switchboard_bus::dlr::wire::{DlrReport, LookupReply, ReplicaOp, ReportOutcome, Role as HolderRole, DOC_VERSION};
use switchboard_bus::keys::Role;

use super::events::{DlrEvent, EventKind};
use super::lookup::FirstHolder;
use super::records::Claim;
use super::types::check_report_fields;
use super::wake::STALE;
use super::{lookup, now_ms, replicate, DlrError, DlrService, IdForm, InboxEntry, Outcome, ReportRequest, Resolution};

/// How long a repeat of a DLR handed off by a node still live here waits before it looks at that
/// node again: a killed process's token is gone within milliseconds.
const GONE_RECHECK: Duration = Duration::from_millis(250);

impl DlrService {
    /// The canonical id of `msg_id`, read in the connector's format for `form`.
    fn canonical(&self, connector: &str, msg_id: &str, form: IdForm) -> Result<String, DlrError> {
        let (ids, dlr_ids) = self.formats(connector)?;
        Ok(match form {
            IdForm::Registered => ids.canonical(msg_id)?,
            IdForm::Report => dlr_ids.canonical(msg_id)?,
        })
    }

    /// Look up `msg_id` (read as `form` says) on the bus (waiting up to `wait_ms` for a
    /// registration not there yet):
    /// first at the one node that must hold it (whose copy may trail the owner by the
    /// replication delay), then at every node; with `owner`, at every node at once, waiting for
    /// the owner's answer while it is live.
    pub async fn resolve(
        &self,
        connector: &str,
        msg_id: &str,
        form: IdForm,
        wait_ms: Option<u64>,
        owner: bool,
    ) -> Result<Resolution, DlrError> {
        let canonical = self.canonical(connector, msg_id, form)?;
        let wait = self.wait(wait_ms.unwrap_or(self.settings.wait_ms))?;
        let (mut found, mut unanswered) = (None, None);
        if !owner {
            match lookup::query_first_holder(self, connector, &canonical).await? {
                FirstHolder::Found(reply, took) => found = Some((reply, took)),
                FirstHolder::Missing => {}
                FirstHolder::Unanswered(why) => unanswered = Some(why),
            }
            let counter = if found.is_some() { &self.stats.first_holder_hits } else { &self.stats.first_holder_misses };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if found.is_none() {
            let asked = lookup::query(self, connector, &canonical, wait, None).await?;
            found = asked.found;
            unanswered = unanswered.or(asked.unanswered);
        }
        if found.is_none() {
            // A node that may hold the record did not answer, and no other holds it: whether it
            // exists is not known, and a gateway told "not found" would drop its DLR.
            if let Some(why) = unanswered {
                return Err(self.unanswered(&why, connector, msg_id));
            }
        }
        self.after_lookup(connector, msg_id, found, None)
    }

    /// Look up `msg_id` in this node's own store only (no bus): what node-by-node forwarding
    /// asks each node.
    pub fn resolve_local(&self, connector: &str, msg_id: &str, form: IdForm) -> Result<Resolution, DlrError> {
        let canonical = self.canonical(connector, msg_id, form)?;
        let Some(reply) = self.answer(connector, &canonical, None)? else {
            self.stats.not_found.fetch_add(1, Ordering::Relaxed);
            return Err(DlrError::NotFound { connector: connector.into(), msg_id: msg_id.into() });
        };
        self.stats.answered_here.fetch_add(1, Ordering::Relaxed);
        Ok(Resolution {
            owner_alive: reply.record.owner == self.node
                || self.membership.live_of(Role::Agent).contains(&reply.record.owner),
            record: reply.record,
            answered_by: reply.node,
            role: reply.role,
            outcome: None,
            lookup_us: 0,
        })
    }

    /// Hand in a DLR that arrived at this node: resolve it, let the owner take it (or close the
    /// owner's copy when the owner is down), recognize repeats.
    pub async fn report(&self, req: &ReportRequest) -> Result<Resolution, DlrError> {
        let (_, dlr_ids) = self.formats(&req.connector)?;
        let canonical = dlr_ids.canonical(&req.msg_id)?;
        check_report_fields(&req.status, req.error.as_deref(), req.text.as_deref())?;
        let wait = self.wait(req.wait_ms.unwrap_or(self.settings.report_wait_ms))?;
        if self.wake.just_woke() {
            // Other nodes may have handed this DLR to their gateways while this one did not run;
            // its view of the live nodes is not yet theirs to ask.
            self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
            return Err(DlrError::Unreachable(format!(
                "{STALE}: a DLR handed in now may have been handled elsewhere meanwhile; try again in a few seconds"
            )));
        }
        let reported_at = now_ms();
        // The owner takes the report only until half the timeout is left: the other half is for
        // its answer to come back (and for the two clocks to differ).
        let answer_by =
            reported_at.saturating_add(wait.as_millis() as u64).saturating_add(self.settings.timeout_ms / 2);
        let report = DlrReport {
            version: DOC_VERSION,
            status: req.status.clone(),
            r#final: req.is_final,
            reported_at,
            reported_by: self.node.clone(),
            error: req.error.clone(),
            text: req.text.clone(),
            answer_by: Some(answer_by),
        };
        // One report of a record at a time here: a repeat behind it finds the record closed.
        let _entered = self.reporting.enter(store_key(&req.connector, &canonical)).await;
        let asked = lookup::query(self, &req.connector, &canonical, wait, Some(&report)).await?;
        if asked.found.is_none() {
            // A live node that did not answer may hold the record (and read the report later,
            // after its `answer_by`: docs/architecture.md, "A hung owner").
            if let Some(why) = &asked.unanswered {
                return Err(self.unanswered(why, &req.connector, &req.msg_id));
            }
            self.confirm_missing(&req.connector, &canonical, &req.msg_id).await?;
        }
        // A live owner that failed the report (its store refuses writes, say) did not leave the
        // DLR to this node: the gateway must try again, not handle it here.
        if let (Some((reply, _)), Some(reason)) = (&asked.found, &asked.failed) {
            let owner = &reply.record.owner;
            let owner_live = *owner == self.node || self.membership.live_of(Role::Agent).contains(owner);
            if reply.role == HolderRole::Replica && owner_live {
                let reason = format!("a node failed the report while the owner is live ({reason}): try again");
                return Err(DlrError::Refused { node: owner.clone(), reason });
            }
        }
        let mut res = self.after_lookup(&req.connector, &req.msg_id, asked.found, Some(&report))?;
        match res.role {
            HolderRole::Replica => self.report_to_replica(&mut res, &report).await?,
            // The owner read the report after `answer_by` (it was hung) and left the DLR to this
            // node's gateway: as if it were down, with no copy to close (it closed the record).
            HolderRole::Owner if res.outcome.is_none() => {
                res.outcome = Some(Outcome::OwnerDown);
                self.log_handled_here(&res, &report);
            }
            HolderRole::Owner => {}
        }
        Ok(res)
    }

    /// No node answered a report with the record: it is missing only if the node that must hold
    /// it says so. Its silence (hung, or cut off while still counted live) leaves the record
    /// possibly there, and a gateway told "not found" would drop its DLR: `Unreachable` then,
    /// to try again, as a resolve answers.
    async fn confirm_missing(&self, connector: &str, canonical: &str, msg_id: &str) -> Result<(), DlrError> {
        match lookup::query_first_holder(self, connector, canonical).await? {
            FirstHolder::Missing => Ok(()),
            FirstHolder::Unanswered(why) => Err(self.unanswered(&why, connector, msg_id)),
            FirstHolder::Found(..) => {
                self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                Err(DlrError::Unreachable(format!(
                    "message {msg_id:?} on connector {connector:?} was registered while the report was handed in: try again"
                )))
            }
        }
    }

    /// For a final report of an open record of this node's that the record here cannot settle:
    /// read after its `answer_by` (this node was hung), or after this node did not run for a
    /// while and before its copies were checked again. A reporter may have handled the DLR with
    /// a copy's record, closing the copy on the first copy holder first, or handled nothing. The
    /// same holder decides here: the record closed now (at this node's read time, so that it
    /// differs from any reporter's close) is put there, and [`Claim::Won`] if it was first;
    /// [`Claim::Lost`] with the holder's close when a reporter closed it there first;
    /// [`Claim::Unknown`] when the holder cannot be asked (or [`super::MAX_LATE_CLAIMS`] are
    /// being asked already). Read in time within seconds of waking
    /// ([`super::wake::Wake::just_woke`]: this node's first copy holder may not be the reporter's
    /// yet): [`Claim::Stale`], not taken, for the reporter to decide on the copies as when the
    /// owner is down. A record closed by a hand-off whose reporter is gone since:
    /// [`Claim::HandOffLost`], taken again. Otherwise [`Claim::NotAsked`] (docs/architecture.md,
    /// "A woken owner", "A reporter gone before its answer").
    pub(crate) async fn claim(&self, connector: &str, id: &str, report: &DlrReport) -> Claim {
        let now = now_ms();
        // A store that refuses writes could not close the record after a won claim, and the
        // holder's copy would stay closed for a DLR no gateway got: the report fails here as is.
        if !report.r#final || self.store().broken().is_some() {
            return Claim::NotAsked;
        }
        let Some(current) = self.store().get(connector, id).ok().flatten() else { return Claim::NotAsked };
        if current.owner == self.node && self.hand_off_lost(&current).await {
            return Claim::HandOffLost(current.version);
        }
        if current.owner != self.node || !current.is_open() {
            return Claim::NotAsked;
        }
        let late = report.answer_by.is_some_and(|by| now > by);
        if !late {
            // Reporters may have seen this node gone and handled the DLR with a copy's record;
            // its own record says nothing of that until its copies are checked again. Just
            // awake, even its first copy holder may not be the one they closed.
            if self.wake.just_woke() {
                return Claim::Stale;
            }
            if !self.wake.copies_unchecked() {
                return Claim::NotAsked;
            }
        }
        // Bounded: a flood of such reports asks the holder at most this many times at once.
        let Ok(_asking) = self.late_claims.try_acquire() else { return Claim::Unknown };
        let live = self.membership.live_of(Role::Agent);
        let key = current.store_key();
        let Some(first) = replicas_for(&key, &self.node, live.iter().map(String::as_str), self.settings.copies)
            .first()
            .map(|n| n.to_string())
        else {
            // No copy is live: none can have been closed by a reporter since.
            return if late { Claim::Unknown } else { Claim::NotAsked };
        };
        let closed =
            self.closed(&current, &report.status, now.max(report.reported_at.saturating_add(1)), &report.reported_by);
        // Bounded as a lookup is: the reporter is not waiting, but later asks of this record are.
        let asked = tokio::time::timeout(
            Duration::from_millis(self.settings.timeout_ms),
            replicate::send(self, &first, &[ReplicaOp::Put(closed.clone())]),
        )
        .await;
        match asked {
            Ok(Ok(ack)) if ack.newer.is_empty() && ack.applied == 1 => Claim::Won(closed),
            Ok(Ok(ack)) => ack.newer.into_iter().next().map_or(Claim::Unknown, Claim::Lost),
            Ok(Err(e)) => {
                tracing::info!(node = %first, error = %e, "cannot ask the first copy holder about a report");
                Claim::Unknown
            }
            Err(_) => {
                tracing::info!(node = %first, "the first copy holder did not answer about a report in time");
                Claim::Unknown
            }
        }
    }

    /// Whether `record` was closed by a hand-off whose reporter is gone since the close, so that
    /// its gateway may never have had the DLR: not live here, or this process, started after it
    /// (docs/architecture.md, "A reporter gone before its answer"). Not decided in the seconds
    /// after this node woke or started: its view of the live nodes is not built yet.
    ///
    /// A reporter killed a moment ago may still be live here (its token takes milliseconds to go,
    /// and a gateway fails over as soon as its connection breaks): one still live is looked at
    /// again after [`GONE_RECHECK`] before the repeat is called a duplicate (at most
    /// [`super::MAX_GONE_RECHECKS`] at once).
    async fn hand_off_lost(&self, record: &switchboard_bus::dlr::record::DlrRecord) -> bool {
        let (false, true, Some(by), Some(at)) =
            (record.is_open(), record.handed_off, record.closed_by.as_deref(), record.closed_at)
        else {
            return false;
        };
        if self.wake.just_woke() {
            return false;
        }
        if by == self.node {
            return self.started_ms > at;
        }
        let gone = || !self.processes.live_of(Role::Agent).iter().any(|n| n == by);
        if gone() {
            return true;
        }
        // Bounded: past it, the live nodes seen now decide.
        let Ok(_waiting) = self.gone_rechecks.try_acquire() else { return false };
        tokio::time::sleep(GONE_RECHECK).await;
        gone()
    }

    /// The error of a lookup the node that must hold the record did not answer (counted).
    fn unanswered(&self, why: &str, connector: &str, msg_id: &str) -> DlrError {
        self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
        DlrError::Unreachable(format!("{why}, and no other node holds message {msg_id:?} on connector {connector:?}"))
    }

    /// The owner did not answer: close the copies (for a final report), so a repeat is
    /// recognized; the reporting gateway handles the DLR with the record. The heaviest live
    /// copy is closed first (or the one that answered, when the live set moved): of two reports
    /// of one DLR at once, the later finds it closed there. The other copies are closed after it;
    /// one that cannot be is logged, and the owner's first pass when it returns mends it.
    async fn report_to_replica(&self, res: &mut Resolution, report: &DlrReport) -> Result<(), DlrError> {
        // A close by a hand-off whose reporter is gone since may never have reached a gateway:
        // a final report hands it off again, deciding at the first holder as the first did.
        let again = !res.record.is_open() && report.r#final && self.hand_off_lost(&res.record).await;
        if !res.record.is_open() && !again {
            self.log_duplicate(res, report);
            return Ok(());
        }
        res.outcome = Some(Outcome::OwnerDown);
        if !report.r#final {
            return Ok(());
        }
        let closed = self.handed_off(&res.record, &report.status, report.reported_at, &self.node);
        let live = self.membership.live_of(Role::Agent);
        let key = closed.store_key();
        let mut holders = replicas_for(&key, &closed.owner, live.iter().map(String::as_str), self.settings.copies);
        if !holders.contains(&res.answered_by.as_str()) {
            holders.insert(0, res.answered_by.as_str());
        }
        let put = [ReplicaOp::Put(closed.clone())];
        // `holders` holds at least the node that answered.
        let (first, others) = holders.split_first().unwrap_or((&"", &[]));
        let ack = replicate::send(self, first, &put).await?;
        if let Some(newer) = ack.newer.into_iter().next() {
            // Another node closed it first.
            res.record = newer;
            self.log_duplicate(res, report);
            return Ok(());
        }
        let rest = futures::future::join_all(others.iter().map(|node| replicate::send(self, node, &put))).await;
        for (node, sent) in others.iter().zip(rest) {
            if let Err(e) = sent {
                tracing::warn!(node, error = %e, "cannot close a copy while its owner is down");
            }
        }
        if again {
            self.stats.handed_again.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "DLR {}/{} handed off again: {} closed it by a hand-off and is gone since",
                res.record.connector,
                res.record.id,
                res.record.closed_by.as_deref().unwrap_or("?")
            );
        }
        res.record = closed;
        self.log_handled_here(res, report);
        Ok(())
    }

    /// A repeat of a DLR whose record a copy holds closed (its owner down): counted and logged
    /// as the owner logs one.
    fn log_duplicate(&self, res: &mut Resolution, report: &DlrReport) {
        res.outcome = Some(Outcome::Duplicate);
        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        let mut line = Vec::new();
        DlrEvent::of(EventKind::Duplicate, &res.record, &self.node).with_report(report).write_to(&mut line);
        self.log_events(&line);
    }

    /// Log a DLR this node's gateway handles itself (`owner_down`).
    fn log_handled_here(&self, res: &Resolution, report: &DlrReport) {
        let mut line = Vec::new();
        DlrEvent::of(EventKind::Delivered, &res.record, &self.node)
            .with_report(report)
            .answered_by(&res.answered_by, res.lookup_us)
            .write_to(&mut line);
        self.log_events(&line);
    }

    fn wait(&self, ms: u64) -> Result<Duration, DlrError> {
        if ms > self.settings.max_wait_ms {
            return Err(DlrError::BadRequest(format!(
                "wait_ms must be at most {} (dlr.max_wait_ms)",
                self.settings.max_wait_ms
            )));
        }
        Ok(Duration::from_millis(ms))
    }

    fn after_lookup(
        &self,
        connector: &str,
        msg_id: &str,
        found: Option<(LookupReply, Duration)>,
        report: Option<&DlrReport>,
    ) -> Result<Resolution, DlrError> {
        let mut line = Vec::new();
        let Some((reply, took)) = found else {
            if let Some(why) = self.cut_off() {
                self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                return Err(DlrError::Unreachable(format!(
                    "{why}: message {msg_id:?} on connector {connector:?} may be held there"
                )));
            }
            self.stats.not_found.fetch_add(1, Ordering::Relaxed);
            DlrEvent::not_found(connector, msg_id, &self.node).write_to(&mut line);
            self.log_events(&line);
            return Err(DlrError::NotFound { connector: connector.into(), msg_id: msg_id.into() });
        };
        let owner_alive =
            reply.record.owner == self.node || self.membership.live_of(Role::Agent).contains(&reply.record.owner);
        let counter = match reply.role {
            HolderRole::Owner => &self.stats.resolved_by_owner,
            HolderRole::Replica => &self.stats.resolved_by_replica,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let lookup_us = took.as_micros() as u64;
        let mut ev = DlrEvent::of(EventKind::Resolved, &reply.record, &self.node).answered_by(&reply.node, lookup_us);
        if let Some(r) = report {
            ev = ev.with_report(r);
        }
        ev.write_to(&mut line);
        self.log_events(&line);
        Ok(Resolution {
            outcome: reply.outcome.map(|o| match o {
                ReportOutcome::Delivered => Outcome::Delivered,
                ReportOutcome::Duplicate => Outcome::Duplicate,
            }),
            record: reply.record,
            answered_by: reply.node,
            role: reply.role,
            owner_alive,
            lookup_us,
        })
    }

    /// Reports queued for this node's gateway after `after`, waiting up to `wait` for one.
    pub async fn inbox(&self, after: u64, max: usize, wait: Duration) -> Result<Vec<(u64, InboxEntry)>, DlrError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inbox_ready.notified();
            let raw = self.count_store_error(self.store.inbox_after(after, max))?;
            if !raw.is_empty() || tokio::time::Instant::now() >= deadline {
                let mut out = Vec::with_capacity(raw.len());
                for (seq, doc) in raw {
                    match serde_json::from_slice(&doc) {
                        Ok(entry) => out.push((seq, entry)),
                        Err(e) => tracing::warn!(seq, error = %e, "skipping an unreadable inbox entry"),
                    }
                }
                return Ok(out);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Drop inbox entries up to `upto` (the gateway has them).
    pub fn ack(&self, upto: u64) -> Result<u64, DlrError> {
        self.count_store_error(self.store.ack_inbox(upto))
    }
}
