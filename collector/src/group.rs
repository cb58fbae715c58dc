//! The collector group: which collector writes the dataset (the leader), taking over from one
//! that is gone, and committing under the commit log's fence.
//!
//! Every collector runs a [`Group`]. A standby reads each new log record ([`Group::tick`], every
//! [`TICK`]) and claims the log when the newest claim's writer is not alive on the bus (or the
//! log is empty, or the claim is an earlier run of its own name): it first publishes the last
//! commit if that is not visible yet (roll-forward), then appends its claim, and on success deletes
//! what is left in the staging area. The leader commits finished files ([`Group::commit`]): stage,
//! record, publish. Finding someone else's record in its slot (when committing, or when reading
//! the log) makes it step down. See docs/architecture.md, "Collector group".

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_bus::keys::Role;
use switchboard_bus::tables::ColumnType;
use switchboard_bus::Membership;
use tokio_util::sync::CancellationToken;

use crate::log::{slot_key, Appended, CommitLog, FileEntry, Kind, Record, HINT_EVERY, STAGING_DIR};
use crate::store::{Store, StoreError};

/// How often the log is read.
pub const TICK: Duration = Duration::from_millis(200);
/// How often a leader that commits checks that its claim is still in the log.
const CLAIM_CHECK: Duration = Duration::from_secs(10);
/// A failed sweep of the staging area is tried again at most this often (a listing that
/// times out holds a commit up as long).
const SWEEP_RETRY: Duration = Duration::from_secs(60);
/// After being fenced, wait this long before claiming again (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// The longest wait before claiming again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A split bus is reported until this long passes without a fence by an unseen writer.
const SPLIT_QUIET: Duration = Duration::from_secs(3 * 60);
/// How long a collector that fenced this one must stay unseen before the bus counts as split.
const SPLIT_CONFIRM: Duration = Duration::from_secs(2);
/// After starting, wait this long for the bus to show the live collectors before claiming.
const SETTLE: Duration = Duration::from_millis(500);

/// What `/health` and `/metrics` show of the group.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    /// `leader` or `standby`.
    pub role: &'static str,
    /// The leader's epoch (the slot of its claim), while leading.
    pub epoch: Option<u64>,
    /// The writer of the newest claim this collector knows.
    pub leader: Option<String>,
    /// When this collector last committed.
    pub last_commit: Option<Instant>,
    /// The last storage error, until an operation succeeds again.
    pub store_error: Option<String>,
    /// A standby's failed probe write, until a probe succeeds or it stops probing: reads that
    /// succeed meanwhile do not clear it (a full disk answers them).
    pub write_error: Option<String>,
    /// Claims won.
    pub takeovers: u64,
    /// Times this collector found itself fenced and stepped down.
    pub stepped_down: u64,
    /// Tries to write a commit log record that failed (each is retried until it succeeds).
    pub log_write_errors: u64,
    /// Why this collector will not write the dataset (its promoted columns' types differ from
    /// the current writer's), while that lasts.
    pub refused: Option<String>,
    /// Why the bus looks split between collectors (one this collector cannot see took the
    /// dataset from it), until that collector is seen or [`SPLIT_QUIET`] passes without another
    /// fence by a collector it cannot see.
    pub split: Option<String>,
    /// Why the log lost this leader's claim (the store was emptied or restored under it), until
    /// it claims again.
    pub claim_lost: Option<String>,
}

impl GroupStatus {
    /// What the store refuses this collector now: the last storage error, or a probe write
    /// that failed.
    pub fn store_problem(&self) -> Option<String> {
        self.store_error.clone().or_else(|| self.write_error.clone())
    }
}

/// The outcome of [`Group::commit`].
#[derive(Debug)]
pub enum Commit {
    /// Recorded and visible.
    Done,
    /// Not committed (the files' rows are to be pulled again).
    Failed(String),
    /// Another collector claimed the log: not committed, and this collector is now a standby.
    /// The records read on the way, for the caller to apply.
    Fenced(Vec<Record>),
}

/// What [`Group::tick`] found.
#[derive(Debug, Default)]
pub struct Tick {
    /// Records other collectors wrote (their commits' ranges are committed).
    pub records: Vec<Record>,
    /// This collector became the leader.
    pub took_over: bool,
    /// This collector was the leader and found another's claim.
    pub stepped_down: bool,
}

/// One collector's part in the group; see the module docs.
pub struct Group {
    name: String,
    instance: String,
    store: Store,
    log: CommitLog,
    epoch: Option<u64>,
    membership: Membership,
    notify: Notifier,
    status: Arc<Mutex<GroupStatus>>,
    started: Instant,
    startup_grace: Duration,
    backoff: Duration,
    claim_not_before: Option<Instant>,
    /// The newest claim's writer and epoch, whether that writer has been seen alive on the bus
    /// since that claim: its going away then is a real departure, not a partition; and when
    /// this collector first read of the claim. Per claim, not per writer: a writer seen before
    /// a split that claims again from across it was not seen since.
    holder_seen_live: Option<(String, u64, bool, Instant)>,
    commits_since_hint: u64,
    /// When the leader last checked that its claim is still in the log.
    claim_checked: Instant,
    /// Another process writes under this collector's name: it never claims again.
    twin: bool,
    /// The collector this one could not see when it last took the dataset from it, and when.
    split: Option<(String, Instant)>,
    /// A collector that fenced this one unseen, and when: a split once that lasts
    /// [`SPLIT_CONFIRM`].
    unseen_fencer: Option<(String, Instant)>,
    /// This collector's promoted columns of `logs`, recorded in its claims and commits.
    columns: BTreeMap<String, ColumnType>,
    /// A store that stays down fails every tick's read: said at most once per 10 s.
    read_failures: switchboard_bus::throttle::Throttle,
    /// How long a live writer may record nothing while records wait before a standby takes
    /// the dataset from it ([`Group::set_stall`]).
    stall: Duration,
    /// When this collector last read a new record of the log (or started).
    last_record: Instant,
    /// Since when this collector's own reads of the commit log have all succeeded (or it
    /// started): a writer's silence while the store did not answer here either is the store's.
    store_ok_since: Instant,
    /// Since when this standby's writes to the store have all succeeded, while records wait
    /// past a file age ([`Group::probe_writes`]); `None` when it has not written yet, or the
    /// last write failed. A store that takes reads but refuses writes (a full disk, a bucket
    /// made read-only) refuses them to the writer and to this collector alike.
    writes_ok_since: Option<Instant>,
    /// When this standby last wrote its probe.
    probed: Option<Instant>,
    /// The last probe failed (said once until one succeeds).
    probe_failed: bool,
    /// As the leader: when the staging area's sweep last failed (tried again after a commit, at
    /// most once per [`SWEEP_RETRY`]); `None` once it succeeded.
    sweep_failed: Option<Instant>,
    /// Said that no agent is seen, so no unseen writer is taken over (once, until one is seen).
    no_agent_said: bool,
    /// When the oldest record an agent announced and no collector committed was first
    /// announced, as the caller last said ([`Group::tick_waiting`]).
    waiting_since: Option<Instant>,
    /// When the last live payload came, as the caller last said: agents are publishing what a
    /// writer that runs commits within its file age.
    live_at: Option<Instant>,
    cancel: CancellationToken,
}

/// The shortest stall after which a standby takes the dataset from a live writer.
const MIN_STALL: Duration = Duration::from_secs(10);
/// How often a standby writes its probe while records wait past a file age.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl Group {
    /// A standby over `log`. `startup_grace`: how long after it first reads of the newest
    /// claim's writer (another collector) this collector waits for that writer to show up on the
    /// bus before taking over from it (two bus leases: a live writer has linked by then, even
    /// one that started after this collector and claimed first).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        instance: String,
        store: Store,
        log: CommitLog,
        membership: Membership,
        notify: Vec<String>,
        status: Arc<Mutex<GroupStatus>>,
        startup_grace: Duration,
        columns: BTreeMap<String, ColumnType>,
        cancel: CancellationToken,
    ) -> Self {
        let g = Self {
            name,
            instance,
            store,
            log,
            epoch: None,
            membership,
            notify: Notifier::new(notify),
            status,
            started: Instant::now(),
            startup_grace,
            backoff: FIRST_BACKOFF,
            claim_not_before: None,
            holder_seen_live: None,
            commits_since_hint: 0,
            claim_checked: Instant::now(),
            twin: false,
            read_failures: switchboard_bus::throttle::Throttle::new(Duration::from_secs(10)),
            split: None,
            unseen_fencer: None,
            columns,
            stall: Duration::from_secs(90),
            last_record: Instant::now(),
            store_ok_since: Instant::now(),
            writes_ok_since: None,
            probed: None,
            probe_failed: false,
            sweep_failed: None,
            no_agent_said: false,
            waiting_since: None,
            live_at: None,
            cancel,
        };
        let leader = g.leader_now();
        g.update(|s| {
            s.role = "standby";
            s.leader = leader;
        });
        // Every collector starts a standby; the script hears it, as keepalived's does the state
        // it starts in.
        g.run_notify("standby");
        g
    }

    /// A live writer that records nothing in the log for three of its file ages (at least
    /// [`MIN_STALL`]) while records wait and live data keeps coming is stalled (its path to the store is cut, say, while
    /// this collector's is not): a standby then takes the dataset from it.
    pub fn set_stall(&mut self, max_file_age: Duration) {
        self.stall = max_file_age.saturating_mul(3).max(MIN_STALL);
    }

    /// [`Group::tick`], told since when the oldest record not committed has waited, and when
    /// the last live payload came.
    pub async fn tick_waiting(&mut self, waiting_since: Option<Instant>, live_at: Option<Instant>) -> Tick {
        (self.waiting_since, self.live_at) = (waiting_since, live_at);
        self.tick().await
    }

    /// The writer of the newest claim, if any: a claim of an earlier run of this collector's
    /// name is nobody's now.
    fn leader_now(&self) -> Option<String> {
        let last = self.log.last()?;
        (last.writer != self.name || last.instance == self.instance).then(|| last.writer.clone())
    }

    /// Whether this collector writes.
    pub fn is_leader(&self) -> bool {
        self.epoch.is_some()
    }

    /// The epoch this collector writes under.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    fn update(&self, f: impl FnOnce(&mut GroupStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// What [`CommitLog::append`] calls with each failed try: `/health` says so while it retries.
    fn store_failing(&self) -> impl FnMut(&StoreError) + use<> {
        let (status, store) = (self.status.clone(), self.store.describe());
        move |e| {
            if let Ok(mut s) = status.lock() {
                s.store_error = Some(format!("dataset store {store}: {e}"));
                s.log_write_errors = s.log_write_errors.saturating_add(1);
            }
        }
    }

    fn store_result<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Ok(_) => self.update(|s| s.store_error = None),
            Err(e) => {
                let msg = format!("dataset store {}: {e}", self.store.describe());
                self.update(|s| s.store_error = Some(msg));
            }
        }
        r
    }

    /// The first [`Group::tick`], once the bus has had [`SETTLE`] to show the live collectors.
    pub async fn first_tick(&mut self) -> Tick {
        tokio::time::sleep(SETTLE.saturating_sub(self.started.elapsed())).await;
        self.tick().await
    }

    /// Read what others wrote; as a standby, claim if the writer is gone; as the leader, step
    /// down if someone else claimed.
    pub async fn tick(&mut self) -> Tick {
        let mut out = Tick::default();
        let polled = self.log.poll(&self.store).await;
        match self.store_result(polled) {
            Ok(records) => out.records = records,
            Err(e) => {
                self.store_ok_since = Instant::now();
                if let Some(unsaid) = self.read_failures.admit() {
                    tracing::warn!(error = %e, failed_since_last_line = unsaid, "cannot read the commit log");
                }
                return out;
            }
        }
        if !out.records.is_empty() {
            self.last_record = Instant::now();
        }
        if self.log.last().is_some() {
            let leader = self.leader_now();
            self.update(|s| s.leader = leader);
        }
        self.check_split();
        let was_leader = self.is_leader();
        if self.twin_in(&out.records) {
            out.stepped_down = was_leader;
            return out;
        }
        if self.is_leader() {
            if let Some(r) = out.records.iter().find(|r| r.kind == Kind::Claim) {
                let why = format!("{} claimed the dataset at epoch {}", r.writer, r.seq);
                let writer = r.writer.clone();
                self.step_down(&why);
                self.fenced_by(&writer);
                out.stepped_down = true;
            }
            return out;
        }
        self.probe_writes().await;
        if self.should_claim() {
            let (took_over, more) = self.claim().await;
            self.twin_in(&more);
            out.records.extend(more);
            out.took_over = took_over;
        }
        out
    }

    /// Whether `records`, written since this collector started, show another process under
    /// its name (a record of its name from another run). Two collectors with one name would
    /// take the dataset from each other without end (each reads the other's claim as one of an
    /// earlier run of its own), and one that could not reach the bus when it started was not
    /// refused then: the first to read the other's record stops, with the reason, and never
    /// claims again.
    fn twin_in(&mut self, records: &[Record]) -> bool {
        if self.twin {
            return true;
        }
        let Some(r) = records.iter().find(|r| r.writer == self.name && r.instance != self.instance) else {
            return false;
        };
        let why = format!(
            "another collector runs under this collector's name {:?} (run {}, slot {}): every collector \
             needs its own [bus] node name",
            self.name, r.instance, r.seq
        );
        if self.is_leader() {
            self.step_down(&why);
        }
        self.twin = true;
        switchboard_bus::vital::fail(why, self.cancel.clone());
        true
    }

    /// This collector was fenced by `writer`: when it cannot see that collector on the bus, the
    /// bus is split between collectors, which take turns at the store (each claims when the
    /// other seems gone); `/health` says so until [`Group::check_split`] clears it.
    fn fenced_by(&mut self, writer: &str) {
        if writer == self.name || self.membership.live_of(Role::Collector).iter().any(|c| c == writer) {
            return;
        }
        // Judged at the next ticks: a collector that just woke (SIGSTOP, a paused VM) sees the
        // bus again within moments, and was not split from anyone.
        if self.split.is_none() {
            self.unseen_fencer = Some((writer.to_owned(), Instant::now()));
        }
    }

    /// Report the split [`Group::fenced_by`] suspected once its writer has stayed unseen for
    /// [`SPLIT_CONFIRM`].
    fn confirm_split(&mut self) {
        let Some((writer, at)) = self.unseen_fencer.clone() else { return };
        if self.membership.live_of(Role::Collector).contains(&writer) {
            self.unseen_fencer = None;
            return;
        }
        if at.elapsed() < SPLIT_CONFIRM {
            return;
        }
        self.unseen_fencer = None;
        let writer = writer.as_str();
        let why = format!(
            "collector {writer} took the dataset while this collector cannot see it on the bus: the bus is split \
             between collectors, which take turns writing (each waits up to {} s after being fenced); link them \
             (`mesh.sees` of each /health)",
            MAX_BACKOFF.as_secs()
        );
        if self.split.is_none() {
            tracing::error!("{why}");
        }
        self.split = Some((writer.to_owned(), at));
        self.update(|s| s.split = Some(why));
    }

    /// Clear a split once the collector that fenced this one is seen on the bus, or once
    /// [`SPLIT_QUIET`] passed without another fence by a collector this one cannot see.
    fn check_split(&mut self) {
        self.confirm_split();
        let Some((writer, at)) = &self.split else { return };
        let seen = self.membership.live_of(Role::Collector).contains(writer);
        if seen || at.elapsed() >= SPLIT_QUIET {
            tracing::info!(collector = %writer, seen, "no longer reporting a split bus between collectors");
            self.split = None;
            self.update(|s| s.split = None);
        }
    }

    fn holder_gone(&self, last: Option<&Record>) -> bool {
        match last {
            None => true,
            Some(r) if r.writer == self.name => r.instance != self.instance,
            Some(r) => !self.membership.live_of(Role::Collector).contains(&r.writer),
        }
    }

    fn should_claim(&mut self) -> bool {
        if self.twin || self.cancel.is_cancelled() || self.started.elapsed() < SETTLE {
            return false;
        }
        let holder = self.log.last().map(|r| r.writer.clone()).unwrap_or_default();
        let epoch = self.log.last().map_or(0, |r| r.epoch);
        let gone = self.holder_gone(self.log.last());
        let (seen, noticed) = match &mut self.holder_seen_live {
            Some((h, e, seen, noticed)) if *h == holder && *e == epoch => {
                *seen |= !gone;
                (*seen, *noticed)
            }
            _ => {
                self.holder_seen_live = Some((holder.clone(), epoch, !gone, Instant::now()));
                (!gone, Instant::now())
            }
        };
        // Checked whatever the writer's state: a collector that could not take over says so now.
        let agree = self.columns_agree();
        if !agree {
            return false;
        }
        if !gone {
            return self.writer_stalled(&holder, noticed);
        }
        // This collector may not be linked to a live writer yet (a writer that just started, or
        // reconnects, takes its time): give one that was never seen up to two leases, from when
        // its claim was first read here, to appear.
        let other = holder != self.name && !holder.is_empty();
        if other && !seen && noticed.elapsed() < self.startup_grace {
            return false;
        }
        // A collector that sees no agent would write nothing, and another writer may well be
        // running where this one cannot see it (it was started without a `connect` to the
        // cluster, or is cut off): it takes the dataset from no other writer until it sees an
        // agent.
        if other && self.membership.live_of(Role::Agent).is_empty() {
            if !std::mem::replace(&mut self.no_agent_said, true) {
                tracing::warn!(
                    writer = %holder,
                    "collector {holder} is not seen, and neither is any agent: this collector takes the dataset from \
                     it only once it sees an agent (is its [bus] connect given a running process of the cluster?)"
                );
            }
            return false;
        }
        self.no_agent_said = false;
        // After being fenced, wait before claiming from a writer this collector never saw alive
        // (it may be writing on the other side of a partition); one that was seen and went away
        // is taken over at once.
        seen || self.claim_not_before.is_none_or(|t| Instant::now() >= t)
    }

    /// Whether the live writer `holder` (whose claim this collector first read at `noticed`)
    /// has recorded nothing for [`Group::set_stall`]'s time while a record has waited as long:
    /// said once, as the reason to take over.
    fn writer_stalled(&self, holder: &str, noticed: Instant) -> bool {
        if holder.is_empty() || holder == self.name || self.claim_not_before.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        // A writer's silence counts from its claim: one that took over from a stalled writer
        // just now is not blamed for the stall it ended (a claim read while this collector's own
        // claim lost the race is no record of the log's polls).
        let quiet = self.last_record.elapsed().min(noticed.elapsed());
        let waited = self.waiting_since.map_or(Duration::ZERO, |t| t.elapsed());
        // Live data keeps coming: a writer that runs commits it. (A hole no agent can send
        // again, with nothing else coming, is no sign of a stalled writer.)
        let fed = self.live_at.is_some_and(|t| t.elapsed() < self.stall);
        // The store answered this collector all along: the writer's silence is its own. (A
        // store down for every collector leaves the writer as long again to commit once it
        // is back, rather than have it deposed the moment the store answers.)
        let store_ok = self.store_ok_since.elapsed() >= self.stall
            && self.writes_ok_since.is_some_and(|t| t.elapsed() >= self.stall);
        if quiet < self.stall || waited < self.stall || !fed || !store_ok {
            return false;
        }
        tracing::warn!(
            writer = holder,
            "collector {holder} is alive but has committed nothing for {} s while records waited {} s (its store \
             unreachable from there, or its disk, or the process stuck): taking the dataset from it",
            quiet.as_secs(),
            waited.as_secs()
        );
        true
    }

    /// As a standby, while records have waited a third of the stall (a file age): rewrite this
    /// collector's probe in the store once per [`PROBE_EVERY`], so that [`Group::writer_stalled`]
    /// knows since when this collector's writes succeed. Reads alone do not tell: a full disk or
    /// a store made read-only answers reads and refuses the writer's files and this collector's
    /// claim alike, and a claim retried until the store takes writes again would depose a writer
    /// that was about to commit.
    async fn probe_writes(&mut self) {
        let late = self.waiting_since.is_some_and(|t| t.elapsed() >= self.stall / 3);
        if !late || self.twin {
            (self.writes_ok_since, self.probed) = (None, None);
            if std::mem::take(&mut self.probe_failed) {
                self.update(|s| s.write_error = None);
            }
            return;
        }
        if self.probed.is_some_and(|t| t.elapsed() < PROBE_EVERY) {
            return;
        }
        self.probed = Some(Instant::now());
        let key = format!("{}/{}.json", switchboard_bus::dataset::PROBE_DIR, self.name);
        let body = serde_json::json!({"collector": self.name, "instance": self.instance}).to_string().into_bytes();
        match self.store.put(&key, body).await {
            Ok(()) => {
                self.writes_ok_since.get_or_insert_with(Instant::now);
                if std::mem::take(&mut self.probe_failed) {
                    self.update(|s| s.write_error = None);
                    tracing::info!("this standby can write the dataset's store again");
                }
            }
            Err(e) => {
                self.writes_ok_since = None;
                let msg = format!("dataset store {}: {e}", self.store.describe());
                self.update(|s| s.write_error = Some(msg));
                if !std::mem::replace(&mut self.probe_failed, true) {
                    tracing::warn!(
                        error = %e,
                        "this standby cannot write the dataset's store either: it takes the dataset from no writer \
                         until it can"
                    );
                }
            }
        }
    }

    /// Whether this collector's promoted columns give every column the type the newest record's
    /// writer stored it as; if not, it stands by with `/health` failing and says why (once).
    fn columns_agree(&mut self) -> bool {
        let conflicts = self.log.last().map(|r| r.column_conflicts(&self.columns)).unwrap_or_default();
        let refused = (!conflicts.is_empty()).then(|| {
            format!(
                "this collector's [[logs.promote]] gives columns other types than the dataset's writer: {}; its \
                 files would make `logs` unreadable as one table, so it does not write: give it the same types (or \
                 promote the field under a new name)",
                conflicts.join(", ")
            )
        });
        let changed = self.status.lock().map(|s| s.refused != refused).unwrap_or(false);
        if changed {
            match &refused {
                Some(why) => tracing::error!("{why}"),
                None => tracing::info!("promoted columns agree with the dataset's writer again"),
            }
            let r = refused.clone();
            self.update(|s| s.refused = r);
        }
        refused.is_none()
    }

    /// Publish the last commit if it is not visible yet, then append a claim; repeat while a
    /// gone writer's commits keep taking the slot. Returns whether the claim was won, and the
    /// records read on the way.
    async fn claim(&mut self) -> (bool, Vec<Record>) {
        let mut read = Vec::new();
        let previous = self.log.last().map(|r| r.writer.clone());
        loop {
            if let Some(last) = self.log.last().filter(|r| r.kind == Kind::Commit).cloned() {
                let rolled = self.publish_all(&last.files, false).await;
                if let Err(e) = self.store_result(rolled) {
                    tracing::warn!(error = %e, slot = last.seq, "cannot publish the last commit before claiming; retrying");
                    return (false, read);
                }
            }
            let mut record = Record::new(Kind::Claim, &self.name, &self.instance, 0, 0, Vec::new());
            record.columns = self.columns.clone();
            let appended = self.log.append(&self.store, record, &self.cancel, self.store_failing()).await;
            match self.store_result(appended) {
                Ok(Appended::Written) => break,
                Ok(Appended::Taken(r)) => {
                    let Some(r) = r else { continue };
                    read.push((*r).clone());
                    // A claim made just now is a live writer's, seen on the bus or not (it may
                    // not be linked yet): stand by, and give it the grace of any writer not seen
                    // yet. A gone writer's commit is rolled forward and claimed over.
                    if r.kind == Kind::Claim || !self.holder_gone(Some(&r)) {
                        tracing::info!(leader = %r.writer, epoch = r.epoch, "another collector claimed first; standing by");
                        return (false, read);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim the commit log");
                    return (false, read);
                }
            }
        }
        let epoch = self.log.next() - 1;
        self.epoch = Some(epoch);
        (self.writes_ok_since, self.probed, self.probe_failed) = (None, None, false);
        self.log.write_hint(&self.store).await;
        self.sweep_staging().await;
        self.update(|s| {
            s.role = "leader";
            s.epoch = Some(epoch);
            s.leader = Some(self.name.clone());
            s.takeovers += 1;
            s.claim_lost = None;
            // A standby's probe says nothing of a leader, which learns of its store by its commits.
            s.write_error = None;
        });
        // Taking over from another collector is worth a warning; a first start, or a restart of
        // the same one, is not.
        match previous.as_deref().filter(|p| *p != self.name) {
            Some(p) => {
                tracing::warn!(epoch, previous = p, "this collector now writes the dataset (took it over from {p})")
            }
            None => tracing::info!(epoch, "this collector now writes the dataset (claimed the commit log)"),
        }
        self.run_notify("leader");
        (true, read)
    }

    fn step_down(&mut self, why: &str) {
        self.epoch = None;
        self.claim_not_before = Some(Instant::now() + self.backoff);
        tracing::error!(
            reason = why,
            retry_in_s = self.backoff.as_secs(),
            "stepped down: this collector no longer writes the dataset; its uncommitted files are dropped \
             (the new writer pulls their rows from the agents)"
        );
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.update(|s| {
            s.role = "standby";
            s.epoch = None;
            // Its commits were a writer's: a standby's age is `null`, as documented.
            s.last_commit = None;
            s.stepped_down += 1;
        });
        self.run_notify("standby");
    }

    /// Publish `files` (their staged copies to their final keys) and delete the staged copies.
    /// With `retry`, a failure is retried until it succeeds or the collector stops.
    async fn publish_all(&self, files: &[FileEntry], retry: bool) -> Result<(), StoreError> {
        for f in files {
            let mut delay = Duration::from_millis(100);
            loop {
                let done = match self.store.exists(&f.path).await {
                    Ok(true) => Ok(()),
                    Ok(false) => self.store.publish(&f.staging, &f.path).await,
                    Err(e) => Err(e),
                };
                match self.store_result(done) {
                    Ok(()) => break,
                    Err(e) if !retry || self.cancel.is_cancelled() => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, path = %f.path, "publishing a committed file failed; retrying");
                        tokio::select! {
                            _ = self.cancel.cancelled() => return Err(e),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
            self.delete_staged(&f.staging).await;
        }
        Ok(())
    }

    /// Remove a staged file once it is published or dropped: tried three times (a store whose
    /// answer was lost, or a connection reset, leaves it otherwise), then left for the next
    /// claim's sweep of the staging area, which removes what no collector writes.
    async fn delete_staged(&self, key: &str) {
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=3 {
            match self.store.delete(key).await {
                Ok(()) => return,
                Err(e) if attempt == 3 => {
                    tracing::debug!(%key, error = %e, "cannot remove a staged file; the next claim removes it");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Commit finished files: stage them, record them in the next slot, publish them.
    pub async fn commit(&mut self, files: &[FileEntry]) -> Commit {
        let Some(epoch) = self.epoch else { return Commit::Failed("this collector is a standby".into()) };
        for f in files {
            let staged = self.store.stage(&f.staging).await;
            if let Err(e) = self.store_result(staged) {
                self.discard(files).await;
                return Commit::Failed(e.to_string());
            }
        }
        let mut record = Record::new(Kind::Commit, &self.name, &self.instance, 0, epoch, files.to_vec());
        record.columns = self.columns.clone();
        let appended = self.log.append(&self.store, record, &self.cancel, self.store_failing()).await;
        match self.store_result(appended) {
            Ok(Appended::Written) => {}
            Ok(Appended::Taken(r)) => {
                self.discard(files).await;
                let mut read: Vec<Record> = r.map(|r| *r).into_iter().collect();
                let who = read
                    .first()
                    .map_or_else(|| "an unreadable record".to_owned(), |r| format!("{} (epoch {})", r.writer, r.epoch));
                let writer = read.first().map(|r| r.writer.clone());
                if let Ok(more) = self.log.poll(&self.store).await {
                    read.extend(more);
                }
                self.step_down(&format!("the commit log slot this commit needed holds a record of {who}"));
                if let Some(w) = writer {
                    self.fenced_by(&w);
                }
                return Commit::Fenced(read);
            }
            Err(e) => {
                // Stopping with the outcome unknown: leave the staged files for the next writer.
                return Commit::Failed(format!("recording the commit: {e}"));
            }
        }
        if let Err(e) = self.publish_all(files, true).await {
            return Commit::Failed(format!(
                "stopped before the commit was visible (the next writer publishes it): {e}"
            ));
        }
        self.commits_since_hint += 1;
        if self.commits_since_hint >= HINT_EVERY {
            self.commits_since_hint = 0;
            self.log.write_hint(&self.store).await;
        }
        self.update(|s| s.last_commit = Some(Instant::now()));
        // Between commits nothing of this leader's is staged: a sweep that failed at the claim
        // is tried again here.
        if self.sweep_failed.is_some_and(|at| at.elapsed() >= SWEEP_RETRY) {
            self.sweep_staging().await;
        }
        if self.claim_checked.elapsed() >= CLAIM_CHECK {
            self.claim_checked = Instant::now();
            self.check_claim_kept(epoch).await;
        }
        if self.claim_not_before.is_none_or(|t| t.elapsed() > MAX_BACKOFF) {
            self.backoff = FIRST_BACKOFF;
        }
        Commit::Done
    }

    /// Records are never removed from the log, so a leader's own claim that is gone means the
    /// store lost the log's beginning under this writer (emptied, or restored from a backup), and
    /// with it what was committed before: said in `/health` (failing) and logged. Writing goes on,
    /// so the agents' data still reaches the store; the operator restores (docs/operations.md).
    async fn check_claim_kept(&mut self, epoch: u64) {
        if let Ok(false) = self.store.exists(&slot_key(epoch)).await {
            let why = format!(
                "the commit log lost this leader's claim (slot {epoch}): the store was emptied or restored under \
                 it, and what was committed before may be gone from the dataset (docs/operations.md, backups)"
            );
            tracing::error!("{why}");
            self.update(|s| s.claim_lost = Some(why));
        }
    }

    /// Remove everything in the staging area: at a claim (before this leader stages anything)
    /// or between its commits, what is there is published already (the roll-forward) or was
    /// never recorded (a writer stopped or fenced before its commit, an upload that landed after
    /// it timed out). A listing that fails is said and tried again after a later commit.
    async fn sweep_staging(&mut self) {
        match self.store.list(STAGING_DIR).await {
            Ok(keys) => {
                for (key, _) in keys {
                    self.delete_staged(&key).await;
                }
                self.sweep_failed = None;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot list the staging area to remove what earlier writes left there (no reader sees it); \
                     trying again after a commit in {} s",
                    SWEEP_RETRY.as_secs()
                );
                self.sweep_failed = Some(Instant::now());
            }
        }
    }

    async fn discard(&self, files: &[FileEntry]) {
        for f in files {
            self.delete_staged(&f.staging).await;
            let _ = std::fs::remove_file(self.store.writing_path(&f.staging));
        }
    }

    fn run_notify(&self, role: &'static str) {
        self.notify.tell(role);
    }
}

/// Runs the `notify` command with each role, one run at a time and in order (a script that
/// keeps state sees `standby`, `leader`, `standby` as they happened), on a thread of its own.
struct Notifier(Option<std::sync::mpsc::Sender<&'static str>>);

impl Notifier {
    fn new(command: Vec<String>) -> Self {
        if command.is_empty() {
            return Self(None);
        }
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        let spawned = std::thread::Builder::new().name("sb-notify".into()).spawn(move || {
            let Some((program, args)) = command.split_first() else { return };
            for role in rx {
                match std::process::Command::new(program).args(args).arg(role).status() {
                    Ok(status) if !status.success() => {
                        tracing::warn!(%program, %status, role, "the notify command failed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%program, error = %e, role, "cannot run the notify command"),
                }
            }
        });
        match spawned {
            Ok(_) => Self(Some(tx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the notify thread: role changes run no command");
                Self(None)
            }
        }
    }

    fn tell(&self, role: &'static str) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(role);
        }
    }
}
