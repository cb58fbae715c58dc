//! The dataset's commit log: numbered records created only if absent, the collector group's
//! single source of truth for who writes and what is committed.
//!
//! Slot `n` is the key `_switchboard/log/<n, 20 digits>.json`. A [`Record`] is a *claim* (from
//! this slot on, this writer writes) or a *commit* (these staged files are committed, with these
//! sequence ranges). A writer appends only at the slot after the last one it read or wrote, with
//! a put-if-absent, so when the put succeeds it knows every earlier record; it writes a commit only
//! while the newest claim is its own. A put that finds the slot taken returns the record there
//! ([`Appended::Taken`]): the writer was fenced. See docs/architecture.md, "Collector group".
//!
//! `_switchboard/log/_tail.json` holds a slot at or below the end of the log (written after
//! claims and every [`HINT_EVERY`] commits), so that a collector starting on a long log reads a few
//! records, not all of them. A slot that holds something unreadable is skipped (and logged): it
//! cannot be anyone's claim.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchboard_bus::throttle::Throttle;
use switchboard_bus::StreamId;
use tokio_util::sync::CancellationToken;

use crate::ranges::RangeSet;
use crate::store::{Store, StoreError};

pub use switchboard_bus::dataset::{LOG_DIR, STAGING_DIR, TAIL_KEY};
/// The record format version.
pub const VERSION: u32 = 1;
/// The hint is rewritten after this many commits.
pub const HINT_EVERY: u64 = 64;
/// Records read in one [`CommitLog::poll`] at most (the rest at the next).
const POLL_MAX: usize = 1024;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// From this slot on, `writer` writes.
    Claim,
    /// `files` are committed.
    Commit,
}

/// One committed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The table (`logs`, `limits`, …).
    pub table: String,
    /// Where the finished file waits until it is published.
    pub staging: String,
    /// Its final key (`<table>/date=…/hour=…/part-….parquet`).
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// The sequence ranges per stream it holds (as in its footer).
    pub ranges: BTreeMap<StreamId, RangeSet>,
}

/// One slot of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always [`VERSION`].
    pub version: u32,
    /// The slot.
    pub seq: u64,
    /// Claim or commit.
    pub kind: Kind,
    /// The collector's name.
    pub writer: String,
    /// The collector's run (new at every start): a restarted collector is a new writer.
    pub instance: String,
    /// The slot of the claim this writer writes under (its own slot for a claim).
    pub epoch: u64,
    /// When it was written (ms since the epoch), for people.
    pub at_ms: u64,
    /// The committed files (commits only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    /// The writer's promoted columns of `logs` (name → type): a collector whose types differ
    /// does not take over (its files would make the table unreadable as one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, switchboard_bus::tables::ColumnType>,
}

impl Record {
    /// A record of `kind` by `writer`/`instance` under `epoch`, for slot `seq`.
    pub fn new(kind: Kind, writer: &str, instance: &str, seq: u64, epoch: u64, files: Vec<FileEntry>) -> Self {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self {
            version: VERSION,
            seq,
            kind,
            writer: writer.to_owned(),
            instance: instance.to_owned(),
            epoch,
            at_ms,
            files,
            columns: BTreeMap::new(),
        }
    }

    /// The promoted columns of `logs` that `columns` gives another stored type than this record's
    /// writer did, as `name (theirs here, ours there)` phrases; empty when the two agree.
    pub fn column_conflicts(&self, columns: &BTreeMap<String, switchboard_bus::tables::ColumnType>) -> Vec<String> {
        columns
            .iter()
            .filter_map(|(name, ours)| {
                let theirs = self.columns.get(name)?;
                (theirs.arrow_type() != ours.arrow_type())
                    .then(|| format!("{name} ({} in the dataset, {} here)", theirs.arrow_type(), ours.arrow_type()))
            })
            .collect()
    }
}

/// The key of slot `seq`.
pub fn slot_key(seq: u64) -> String {
    format!("{LOG_DIR}/{seq:020}.json")
}

/// The highest slot in the log's directory, by listing it.
async fn last_slot(store: &Store) -> Result<Option<u64>, StoreError> {
    let keys = store.list(LOG_DIR).await?;
    Ok(keys.iter().filter_map(|(key, _)| key.rsplit('/').next()?.strip_suffix(".json")?.parse::<u64>().ok()).max())
}

/// The outcome of [`CommitLog::append`].
#[derive(Debug)]
pub enum Appended {
    /// The record is in its slot.
    Written,
    /// Someone else's record took the slot (this one was not written); it is returned, and the
    /// log has moved past it.
    Taken(Option<Box<Record>>),
}

/// A reader and writer of the log, positioned after the last record it knows.
#[derive(Debug)]
pub struct CommitLog {
    next: u64,
    last: Option<Record>,
    skipped: u64,
    /// A write retried while the store stays down is said at most once per 30 s.
    write_failures: switchboard_bus::throttle::Throttle,
}

/// How often a failed write of the commit log is said while it is retried.
const WRITE_FAILURE_LINES: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct Hint {
    seq: u64,
}

impl CommitLog {
    /// Find the end of the log: from the hint (or slot 0), read forward until a slot is free.
    /// Returns the log and the records read on the way.
    pub async fn open(store: &Store) -> Result<(Self, Vec<Record>), StoreError> {
        let hinted = match store.get(TAIL_KEY).await? {
            Some(bytes) => serde_json::from_slice::<Hint>(&bytes).map_or(0, |h| h.seq),
            None => 0,
        };
        // A hint is only taken when its slot exists (a damaged hint would skip the log's end).
        let mut start = if hinted > 0 && store.exists(&slot_key(hinted)).await? { hinted } else { 0 };
        // No hint and no slot 0, yet later slots: the log's beginning was removed or lost by the
        // store under a writer that went on. Claiming slot 0 would start a second log beside
        // that writer's, unfenced; it is read from its last slot left instead (the footers hold
        // what was committed before).
        if start == 0 && !store.exists(&slot_key(0)).await? {
            if let Some(last) = last_slot(store).await? {
                tracing::error!(
                    last,
                    "the commit log's first slots and its tail hint are missing (removed, or lost by the store) \
                     while slot {last} exists: reading it from there; restore the dataset as a whole \
                     (docs/operations.md, what to back up)"
                );
                start = last;
            }
        }
        let mut log = Self { next: start, last: None, skipped: 0, write_failures: Throttle::new(WRITE_FAILURE_LINES) };
        let mut all = Vec::new();
        loop {
            let batch = log.poll(store).await?;
            if batch.is_empty() {
                break;
            }
            all.extend(batch);
        }
        // The hint is at or below the end; the record just before `start` names the holder when
        // nothing was read after it.
        if log.last.is_none() && log.next > 0 {
            if let Some(r) = read_slot(store, log.next - 1, &mut log.skipped).await? {
                log.last = Some(r);
            }
        }
        Ok((log, all))
    }

    /// The next free slot as far as this log knows.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The last record read or written.
    pub fn last(&self) -> Option<&Record> {
        self.last.as_ref()
    }

    /// Slots skipped because they held something unreadable.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Read the records written since the last call (at most [`POLL_MAX`]). A read that fails
    /// after others succeeded ends the call with the records read (the next call reads the
    /// failed slot again): they are past, and a caller that lost them would never see them.
    pub async fn poll(&mut self, store: &Store) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        while out.len() < POLL_MAX {
            let key = slot_key(self.next);
            let bytes = match store.get(&key).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(%key, error = %e, "a commit log read failed; the records before it are taken");
                    break;
                }
            };
            self.next = self.next.saturating_add(1);
            match parse(&bytes, self.next - 1) {
                Ok(r) => {
                    self.last = Some(r.clone());
                    out.push(r);
                }
                Err(e) => {
                    self.skipped += 1;
                    tracing::error!(%key, error = %e, "skipping an unreadable commit log record");
                }
            }
        }
        Ok(out)
    }

    /// Append `record` at the next slot (its `seq` is set here). When the put's outcome is
    /// unknown (the store failed or timed out), the slot is read back until the store answers,
    /// so that a record that did land is never taken for one that did not; this waits, retrying,
    /// until `cancel` fires (then the error is returned and the outcome stays unknown).
    /// `failing` hears of each failed try (a full disk, a store that is down) while it waits.
    pub async fn append(
        &mut self,
        store: &Store,
        mut record: Record,
        cancel: &CancellationToken,
        mut failing: impl FnMut(&StoreError),
    ) -> Result<Appended, StoreError> {
        record.seq = self.next;
        if record.kind == Kind::Claim {
            record.epoch = record.seq;
        }
        let key = slot_key(record.seq);
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Io { path: key.clone().into(), source: std::io::Error::other(e) })?;
        let mut delay = Duration::from_millis(100);
        loop {
            let outcome = match store.put_new(&key, bytes.clone()).await {
                Ok(true) => Ok(true),
                Ok(false) => Ok(false),
                // Unknown: did it land? Read it back.
                Err(e) => match store.get(&key).await {
                    Ok(Some(b)) => Ok(parse(&b, record.seq).is_ok_and(|r| r == record) || b == bytes),
                    Ok(None) => Err(e),
                    Err(_) => Err(e),
                },
            };
            match outcome {
                Ok(true) => {
                    self.next = self.next.saturating_add(1);
                    self.last = Some(record);
                    return Ok(Appended::Written);
                }
                Ok(false) => {
                    let taken = read_slot(store, record.seq, &mut self.skipped).await?;
                    self.next = self.next.saturating_add(1);
                    if let Some(r) = &taken {
                        self.last = Some(r.clone());
                    }
                    return Ok(Appended::Taken(taken.map(Box::new)));
                }
                Err(e) => {
                    if let Some(unsaid) = self.write_failures.admit() {
                        tracing::warn!(error = %e, slot = record.seq, failed_since_last_line = unsaid, "commit log write failed; retrying");
                    }
                    failing(&e);
                    if cancel.is_cancelled() {
                        return Err(e);
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(e),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Rewrite the tail hint (best effort: a stale hint only makes a start read more records).
    pub async fn write_hint(&self, store: &Store) {
        let body = serde_json::to_vec(&Hint { seq: self.next.saturating_sub(1) }).unwrap_or_default();
        if let Err(e) = store.put(TAIL_KEY, body).await {
            tracing::debug!(error = %e, "cannot update the commit log's tail hint");
        }
    }
}

fn parse(bytes: &[u8], seq: u64) -> Result<Record, String> {
    let r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if r.version != VERSION {
        return Err(format!("unknown record version {}", r.version));
    }
    if r.seq != seq {
        return Err(format!("record says slot {}, found in slot {seq}", r.seq));
    }
    if r.kind == Kind::Claim && r.epoch != r.seq {
        return Err("a claim's epoch must be its own slot".into());
    }
    if r.epoch > r.seq {
        return Err(format!("epoch {} after its own slot", r.epoch));
    }
    Ok(r)
}

async fn read_slot(store: &Store, seq: u64, skipped: &mut u64) -> Result<Option<Record>, StoreError> {
    let key = slot_key(seq);
    Ok(match store.get(&key).await? {
        Some(b) => match parse(&b, seq) {
            Ok(r) => Some(r),
            Err(e) => {
                *skipped += 1;
                tracing::error!(%key, error = %e, "skipping an unreadable commit log record");
                None
            }
        },
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// A record that cannot be written (a full disk, here a file where the log's directory
    /// should be) is retried, and each failed try is told to the caller, which turns `/health`
    /// to failing meanwhile.
    #[test]
    fn each_failed_try_of_a_record_is_told_while_it_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local { root: dir.path().to_owned() };
        let cancel = CancellationToken::new();
        rt().block_on(async {
            let (mut log, _) = CommitLog::open(&store).await.unwrap();
            let in_the_way = dir.path().join(LOG_DIR);
            let _ = std::fs::remove_dir_all(&in_the_way);
            std::fs::create_dir_all(in_the_way.parent().unwrap()).unwrap();
            std::fs::write(&in_the_way, b"not a directory").unwrap();
            let stop = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                stop.cancel();
            });
            let mut told = 0;
            let r = log.append(&store, Record::new(Kind::Claim, "a", "1", 0, 0, vec![]), &cancel, |_| told += 1).await;
            assert!(r.is_err());
            assert!(told >= 2, "told {told} times");
        });
    }

    /// A read that fails after others succeeded loses none of them: a standby that lost a
    /// commit it had read past took its ranges for never committed and wrote them again.
    #[test]
    fn a_failed_read_keeps_the_records_read_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local { root: dir.path().to_owned() };
        let cancel = CancellationToken::new();
        rt().block_on(async {
            let (mut writer, _) = CommitLog::open(&store).await.unwrap();
            let (mut reader, _) = CommitLog::open(&store).await.unwrap();
            for kind in [Kind::Claim, Kind::Commit] {
                writer.append(&store, Record::new(kind, "a", "1", 0, 0, vec![]), &cancel, |_| {}).await.unwrap();
            }
            // Slot 2 cannot be read (a directory where its record would be: the read fails).
            std::fs::create_dir_all(dir.path().join(slot_key(2))).unwrap();
            let read = reader.poll(&store).await.unwrap();
            assert_eq!(read.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
            assert!(reader.poll(&store).await.is_err(), "the failing slot fails again");
            std::fs::remove_dir(dir.path().join(slot_key(2))).unwrap();
            writer.append(&store, Record::new(Kind::Commit, "a", "1", 0, 0, vec![]), &cancel, |_| {}).await.unwrap();
            let read = reader.poll(&store).await.unwrap();
            assert_eq!(read.iter().map(|r| (r.seq, r.kind)).collect::<Vec<_>>(), [(2, Kind::Commit)]);
        });
    }

    #[test]
    fn a_claim_fences_the_writer_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local { root: dir.path().to_owned() };
        let cancel = CancellationToken::new();
        rt().block_on(async {
            let (mut a, _) = CommitLog::open(&store).await.unwrap();
            let (mut b, _) = CommitLog::open(&store).await.unwrap();
            // Both claim slot 0 at once: one wins.
            assert!(matches!(
                a.append(&store, Record::new(Kind::Claim, "a", "1", 0, 0, vec![]), &cancel, |_| {}).await.unwrap(),
                Appended::Written
            ));
            match b.append(&store, Record::new(Kind::Claim, "b", "2", 0, 0, vec![]), &cancel, |_| {}).await.unwrap() {
                Appended::Taken(Some(r)) => assert_eq!((r.writer.as_str(), r.kind), ("a", Kind::Claim)),
                other => panic!("{other:?}"),
            }
            // a commits under epoch 0; b takes over at slot 2.
            assert!(matches!(
                a.append(&store, Record::new(Kind::Commit, "a", "1", 0, 0, vec![]), &cancel, |_| {}).await.unwrap(),
                Appended::Written
            ));
            assert_eq!(b.poll(&store).await.unwrap().len(), 1);
            assert!(matches!(
                b.append(&store, Record::new(Kind::Claim, "b", "2", 0, 0, vec![]), &cancel, |_| {}).await.unwrap(),
                Appended::Written
            ));
            // a's next commit finds b's claim in its slot.
            match a.append(&store, Record::new(Kind::Commit, "a", "1", 0, 0, vec![]), &cancel, |_| {}).await.unwrap() {
                Appended::Taken(Some(r)) => assert_eq!((r.writer.as_str(), r.kind, r.epoch), ("b", Kind::Claim, 2)),
                other => panic!("{other:?}"),
            }
            // A new reader from the hint finds the end and the holder.
            b.write_hint(&store).await;
            let (c, read) = CommitLog::open(&store).await.unwrap();
            assert_eq!(c.next(), 3);
            assert_eq!(read.len(), 1, "the hint points at the last slot");
            assert_eq!(c.last().map(|r| r.writer.as_str()), Some("b"));
            // A hint that names a slot that does not exist is not taken.
            std::fs::write(dir.path().join(TAIL_KEY), b"{\"seq\": 18446744073709551615}").unwrap();
            let (h, _) = CommitLog::open(&store).await.unwrap();
            assert_eq!(h.next(), 3);
            b.write_hint(&store).await;
            // The log's first slots and its hint lost under a writer that went on: read from
            // the last slot left, so a new claim lands after the writer's records, not at slot 0.
            std::fs::remove_file(dir.path().join(TAIL_KEY)).unwrap();
            for seq in 0..2 {
                std::fs::remove_file(dir.path().join(slot_key(seq))).unwrap();
            }
            let (lost, _) = CommitLog::open(&store).await.unwrap();
            assert_eq!((lost.next(), lost.last().map(|r| r.writer.as_str())), (3, Some("b")));
            b.write_hint(&store).await;
            // Garbage in a slot is skipped, not taken for a claim.
            std::fs::write(dir.path().join(slot_key(3)), b"{not json").unwrap();
            let (mut d, _) = CommitLog::open(&store).await.unwrap();
            assert_eq!((d.next(), d.skipped()), (4, 1));
            assert!(matches!(
                d.append(&store, Record::new(Kind::Commit, "b", "2", 0, 2, vec![]), &cancel, |_| {}).await.unwrap(),
                Appended::Written
            ));
        });
    }
}
