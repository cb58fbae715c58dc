//! The node's DLR records on disk: an LSM tree ([fjall]) with four keyspaces.
//!
//! - `records`: `connector \0 canonical id` → the record's compact value (see
//!   [`switchboard_bus::dlr::record`]); the node's own records and its copies of other nodes'.
//! - `expiry`: `expires_at (8 bytes, big endian) ++ record key` → empty: records in expiry order,
//!   so the sweeper reads only what is due.
//! - `inbox`: `sequence (8 bytes, big endian)` → a report for this node's gateway (JSON), until the
//!   gateway acknowledges it.
//! - `meta`: `inbox_acked` → the highest inbox sequence acknowledged (8 bytes, big endian), so
//!   that sequences go on from it after a restart with the inbox empty (a gateway asks with
//!   `after` = the last sequence it saw).
//!
//! Why an LSM tree: every message is inserted once, updated once or twice and deleted a day or
//! two later, so the workload is inserts and deletes at the same rate with few reads of each
//! record. An LSM tree turns all of them into sequential appends (deletes are tombstones that
//! compaction drops), keeps only its block cache and memtables in memory however many records
//! there are, and compresses blocks (LZ4). fjall is pure Rust (no C++ toolchain) and keeps a
//! journal that reaches the OS on every write, so a killed agent loses no acknowledged
//! registration; [`DlrStore::sync`] forces it to disk.
//!
//! Every write here is one atomic batch over the keyspaces it touches. Read-modify-write
//! sequences are serialized by the caller ([`DlrStore::lock`]).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use fjall::config::{CompressionPolicy, PinningPolicy};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use switchboard_bus::dlr::id::{MAX_CONNECTOR_BYTES, MAX_ID_BYTES};
use switchboard_bus::dlr::record::{self, CorruptRecord, DlrRecord};
use switchboard_bus::dlr::wire::STORE_FAILED;

/// The longest store key a record can have: its connector, a separator and its id.
const MAX_KEY_BYTES: usize = MAX_CONNECTOR_BYTES + 1 + MAX_ID_BYTES;

/// The store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The LSM tree reported an error (I/O, a full disk). Its text starts with
    /// [`switchboard_bus::dlr::wire::STORE_FAILED`], which other nodes read in error replies.
    #[error("{STORE_FAILED}: {0}")]
    Engine(#[from] fjall::Error),
    /// A stored value does not decode.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The inbox holds its most: a report for it is refused until the gateway takes some. Its
    /// text starts with [`switchboard_bus::dlr::wire::STORE_FAILED`] too, so a reporter
    /// elsewhere answers its gateway `503` (try again) rather than handle the DLR itself.
    #[error("{STORE_FAILED}: the inbox holds {held} DLRs its gateway has not taken, its most (dlr.max_inbox): try again once the gateway reads its inbox")]
    InboxFull {
        /// DLRs in the inbox.
        held: u64,
    },
}

/// One change, applied with others in one atomic batch.
#[derive(Debug)]
pub enum Write<'a> {
    /// Store `record`; `previous` is the copy it replaces (its expiry entry is removed).
    Put {
        /// The new record.
        record: &'a DlrRecord,
        /// What was stored before, if anything.
        previous: Option<&'a DlrRecord>,
    },
    /// Remove `record` and its expiry entry.
    Remove(&'a DlrRecord),
    /// Queue a report for the gateway.
    Inbox(&'a [u8]),
}

/// Sizes of the store.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreSize {
    /// Records (own and copies), approximate: deleted and replaced records count until the
    /// store compacts them away ([`crate::dlr::sweep::Census`] counts exactly).
    pub records: u64,
    /// Reports waiting for the gateway (exact).
    pub inbox: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
}

/// The `meta` key of the highest inbox sequence acknowledged.
const INBOX_ACKED: &[u8] = b"inbox_acked";

/// The record store.
pub struct DlrStore {
    db: Database,
    records: Keyspace,
    expiry: Keyspace,
    inbox: Keyspace,
    meta: Keyspace,
    next_inbox: AtomicU64,
    /// Entries in `inbox`: counted at open, then kept as entries come and go.
    inbox_len: AtomicU64,
    /// Batches that put or removed records since the store was opened.
    record_changes: AtomicU64,
    writer: Mutex<()>,
    /// The first write that failed: fjall refuses every change after it until it is opened
    /// again (a journal write failed, e.g. on a full disk).
    broken: Mutex<Option<String>>,
}

impl DlrStore {
    /// Open (or create) the store in `dir` with a block cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = Database::builder(dir).cache_size(cache_bytes).open()?;
        // LZ4 on every level (the default leaves the first two uncompressed): records are
        // mostly short text and most of them live in the upper levels for their whole life.
        // Filter and index blocks stay in memory on every level (about 1.5 B and 0.5 B per
        // record): a lookup, hit or miss, then reads at most one data block. Left to the block
        // cache they are evicted by data blocks, and each lookup re-reads a large index block.
        let opts = |memtable: u64| {
            move || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_pinning_policy(PinningPolicy::all(true))
            }
        };
        let records = db.keyspace("records", opts(16 << 20))?;
        let expiry = db.keyspace("expiry", opts(8 << 20))?;
        let inbox = db.keyspace("inbox", opts(4 << 20))?;
        let meta = db.keyspace("meta", opts(1 << 20))?;
        let acked = meta.get(INBOX_ACKED)?.map_or(0, |v| seq_of(&v));
        let next = match inbox.last_key_value() {
            Some(guard) => seq_of(&guard.key()?),
            None => 0,
        }
        .max(acked)
        .saturating_add(1);
        let mut inbox_len = 0u64;
        for guard in inbox.iter() {
            guard.key()?;
            inbox_len += 1;
        }
        Ok(Self {
            db,
            records,
            expiry,
            inbox,
            meta,
            next_inbox: AtomicU64::new(next),
            inbox_len: AtomicU64::new(inbox_len),
            record_changes: AtomicU64::new(0),
            writer: Mutex::new(()),
            broken: Mutex::new(None),
        })
    }

    /// Why the store refuses every change until the agent restarts, if it does.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Commit `batch`, noting a failure: fjall refuses every write after a failed one (a batch
    /// fails only when its journal write does, and that poisons the store until it is opened
    /// again).
    fn commit(&self, batch: fjall::OwnedWriteBatch) -> Result<(), StoreError> {
        batch.commit().map_err(|e| self.note_failure(e))
    }

    /// Note the first failure of a write: the store refuses every change after it.
    fn note_failure(&self, e: fjall::Error) -> StoreError {
        // One assignment under the lock: a poisoned lock is taken over.
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if broken.is_none() {
            *broken = Some(e.to_string());
        }
        e.into()
    }

    /// Serialize a read-modify-write sequence against every other one.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic while holding this guard cannot leave the store inconsistent (every write is
        // one atomic batch), so a poisoned lock is taken over.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of `(connector, canonical id)`, if held.
    pub fn get(&self, connector: &str, id: &str) -> Result<Option<DlrRecord>, StoreError> {
        let key = record::store_key(connector, id);
        self.get_key(&key)
    }

    /// The record under a store key, if held.
    pub fn get_key(&self, key: &[u8]) -> Result<Option<DlrRecord>, StoreError> {
        // No record has a longer key (every one was checked when it was stored), and the store
        // cannot look one up past 64 KiB: a peer's ask with a huge id finds nothing.
        if key.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        match self.records.get(key)? {
            Some(v) => Ok(Some(DlrRecord::decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Apply `writes` in one atomic batch; returns the inbox sequence of an [`Write::Inbox`].
    pub fn write(&self, writes: &[Write<'_>]) -> Result<Option<u64>, StoreError> {
        let mut batch = self.db.batch();
        let mut seq = None;
        for w in writes {
            match w {
                Write::Put { record, previous } => {
                    let key = record.store_key();
                    if let Some(p) = previous.filter(|p| p.expires_at != record.expires_at) {
                        batch.remove(&self.expiry, expiry_key(p.expires_at, &key));
                    }
                    batch.insert(&self.expiry, expiry_key(record.expires_at, &key), []);
                    batch.insert(&self.records, key, record.encode_value());
                }
                Write::Remove(record) => {
                    let key = record.store_key();
                    batch.remove(&self.expiry, expiry_key(record.expires_at, &key));
                    batch.remove(&self.records, key);
                }
                Write::Inbox(doc) => {
                    let s = self.next_inbox.fetch_add(1, Ordering::Relaxed);
                    batch.insert(&self.inbox, s.to_be_bytes(), doc.to_vec());
                    seq = Some(s);
                }
            }
        }
        self.commit(batch)?;
        if seq.is_some() {
            self.inbox_len.fetch_add(1, Ordering::Relaxed);
        }
        if writes.iter().any(|w| !matches!(w, Write::Inbox(_))) {
            self.record_changes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(seq)
    }

    /// How many batches put or removed records since the store was opened: a count that has
    /// not moved means the records have not changed.
    pub fn record_changes(&self) -> u64 {
        self.record_changes.load(Ordering::Relaxed)
    }

    /// Records due at `now_ms` (at most `max`), oldest first. Expiry entries whose record is gone
    /// or has another expiry are dropped on the way.
    pub fn due(&self, now_ms: u64, max: usize) -> Result<Vec<DlrRecord>, StoreError> {
        let mut out = Vec::new();
        let mut dangling = Vec::new();
        for guard in self.expiry.range(..expiry_key(now_ms.saturating_add(1), b"")) {
            if out.len() >= max {
                break;
            }
            let k = guard.key()?;
            let (at, key) = k.split_at(8.min(k.len()));
            let at = seq_of(at);
            match self.get_key(key)? {
                Some(r) if r.expires_at == at => out.push(r),
                _ => dangling.push(k.to_vec()),
            }
        }
        if !dangling.is_empty() {
            let mut batch = self.db.batch();
            for k in dangling {
                batch.remove(&self.expiry, k);
            }
            self.commit(batch)?;
        }
        Ok(out)
    }

    /// Up to `max` records in key order after the key `after` (from the first without it), and
    /// the key to continue after (None at the end): replication passes read the store in pages
    /// so that memory stays bounded by `max`. Unreadable values are skipped with a warning.
    pub fn page(&self, after: Option<&[u8]>, max: usize) -> Result<(Vec<DlrRecord>, Option<Vec<u8>>), StoreError> {
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        let mut out = Vec::new();
        let (mut last, mut scanned) = (None, 0);
        for guard in self.records.range::<Vec<u8>, _>((from, Bound::Unbounded)).take(max) {
            let (k, v) = guard.into_inner()?;
            match DlrRecord::decode(&k, &v) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable DLR record"),
            }
            last = Some(k.to_vec());
            scanned += 1;
        }
        Ok((out, if scanned == max { last } else { None }))
    }

    /// The records of `owner` among up to `scan` records in key order after the key `after`
    /// (from the first without it), at most `max` of them; and the key to go on after (`None`
    /// once the store's end was reached). A restore reads another node's copies so, in pages
    /// that bound both the time of one answer and its size. Unreadable values are skipped.
    pub fn records_of(
        &self,
        owner: &str,
        after: Option<&[u8]>,
        scan: usize,
        max: usize,
    ) -> Result<(Vec<DlrRecord>, Option<Vec<u8>>), StoreError> {
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        let mut out = Vec::new();
        let (mut last, mut scanned) = (None, 0);
        for guard in self.records.range::<Vec<u8>, _>((from, Bound::Unbounded)).take(scan) {
            let (k, v) = guard.into_inner()?;
            scanned += 1;
            let theirs = DlrRecord::glance(&v).is_ok_and(|g| g.owner == owner.as_bytes());
            if theirs {
                match DlrRecord::decode(&k, &v) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable DLR record"),
                }
            }
            last = Some(k.to_vec());
            if out.len() >= max {
                break;
            }
        }
        let more = scanned == scan || out.len() >= max;
        Ok((out, if more { last } else { None }))
    }

    /// Hand the stored values of up to `max` records after key `after` (all from the start
    /// with `None`) to `each`, in key order, without decoding them; the key to go on from, or
    /// `None` at the end.
    pub fn scan_values(
        &self,
        after: Option<&[u8]>,
        max: usize,
        mut each: impl FnMut(&[u8]),
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        let (mut last, mut scanned) = (None, 0);
        for guard in self.records.range::<Vec<u8>, _>((from, Bound::Unbounded)).take(max) {
            let (k, v) = guard.into_inner()?;
            each(&v);
            last = Some(k);
            scanned += 1;
        }
        Ok(if scanned == max { last.map(|k| k.to_vec()) } else { None })
    }

    /// Up to `max` inbox entries after sequence `after`.
    pub fn inbox_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.inbox.range((after.saturating_add(1)).to_be_bytes()..).take(max) {
            let (k, v) = guard.into_inner()?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    /// Drop inbox entries up to and including `upto`; returns how many.
    pub fn ack_inbox(&self, upto: u64) -> Result<u64, StoreError> {
        // Two acks at once would both count the entries they both remove.
        let _serial = self.lock();
        let mut batch = self.db.batch();
        let (mut n, mut last) = (0, None);
        for guard in self.inbox.range(..=upto.to_be_bytes()) {
            let key = guard.key()?;
            last = Some(seq_of(&key));
            batch.remove(&self.inbox, key);
            n += 1;
        }
        if let Some(last) = last {
            batch.insert(&self.meta, INBOX_ACKED, last.to_be_bytes());
        }
        self.commit(batch)?;
        let _ = self.inbox_len.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(l.saturating_sub(n)));
        Ok(n)
    }

    /// Force everything written so far to disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(|e| self.note_failure(e))
    }

    /// DLRs in the inbox (exact).
    pub fn inbox_len(&self) -> u64 {
        self.inbox_len.load(Ordering::Relaxed)
    }

    /// Record count, inbox length and disk use.
    pub fn size(&self) -> StoreSize {
        StoreSize {
            records: self.records.approximate_len() as u64,
            inbox: self.inbox_len.load(Ordering::Relaxed),
            disk_bytes: self.db.disk_space().unwrap_or(0),
        }
    }
}

fn expiry_key(at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn seq_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use switchboard_bus::dlr::RecordState;

    /// An open record of node `a` (test data).
    pub(crate) fn rec(id: &str, expires_at: u64) -> DlrRecord {
        DlrRecord {
            connector: "smsc".into(),
            id: id.into(),
            msg_id: id.into(),
            account: String::new(),
            destination: "+491".into(),
            submitted_at: 1,
            owner: "a".into(),
            gateway_ref: format!("ref-{id}"),
            expires_at,
            version: 1,
            state: RecordState::Open,
            status: None,
            closed_at: None,
            closed_by: None,
            handed_off: false,
        }
    }

    #[test]
    fn records_survive_reopen_and_expire_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
            for (id, at) in [("1", 300), ("2", 100), ("3", 200)] {
                s.write(&[Write::Put { record: &rec(id, at), previous: None }]).unwrap();
            }
            // A changed expiry leaves no stale entry behind.
            let old = rec("3", 200);
            let new = DlrRecord { expires_at: 50, version: 2, ..old.clone() };
            s.write(&[Write::Put { record: &new, previous: Some(&old) }]).unwrap();
        }
        let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.get("smsc", "2").unwrap().unwrap().gateway_ref, "ref-2");
        let due: Vec<_> = s.due(150, 10).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(due, ["3", "2"]);
        let r2 = s.get("smsc", "2").unwrap().unwrap();
        s.write(&[Write::Remove(&r2)]).unwrap();
        assert!(s.get("smsc", "2").unwrap().is_none());
        let due: Vec<_> = s.due(1000, 10).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(due, ["3", "1"]);
        assert_eq!(s.due(1000, 1).unwrap().len(), 1, "bounded");
    }

    #[test]
    fn the_records_of_one_owner_come_in_pages_bounded_by_scan_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
        // Ids 10..40; every third one is b's.
        for i in 10..40 {
            let owner = if i % 3 == 0 { "b" } else { "a" };
            s.write(&[Write::Put {
                record: &DlrRecord { owner: owner.into(), ..rec(&i.to_string(), 100) },
                previous: None,
            }])
            .unwrap();
        }
        let mut got = Vec::new();
        let (mut after, mut pages) = (None, 0);
        loop {
            let (records, next) = s.records_of("b", after.as_deref(), 7, 2).unwrap();
            assert!(records.len() <= 2);
            got.extend(records.into_iter().inspect(|r| assert_eq!(r.owner, "b")).map(|r| r.id));
            pages += 1;
            assert!(pages < 100, "the pages never end");
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let want: Vec<String> = (10..40).filter(|i| i % 3 == 0).map(|i: i32| i.to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(s.records_of("c", None, 100, 10).unwrap(), (Vec::new(), None), "nobody's records: one page");
    }

    #[test]
    fn record_changes_count_batches_that_touch_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.record_changes(), 0);
        s.write(&[Write::Put { record: &rec("1", 100), previous: None }]).unwrap();
        s.write(&[Write::Inbox(b"a")]).unwrap();
        s.write(&[]).unwrap();
        assert_eq!(s.record_changes(), 1);
        s.write(&[Write::Remove(&rec("1", 100)), Write::Inbox(b"b")]).unwrap();
        assert_eq!(s.record_changes(), 2);
        let mut seen = 0;
        assert_eq!(s.scan_values(None, 10, |_| seen += 1).unwrap(), None);
        assert_eq!(seen, 0);
    }

    #[test]
    fn inbox_keeps_order_across_reopen_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(s.write(&[Write::Inbox(b"a")]).unwrap(), Some(1));
            assert_eq!(s.write(&[Write::Inbox(b"b")]).unwrap(), Some(2));
        }
        let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.size().inbox, 2, "counted at open");
        assert_eq!(s.write(&[Write::Inbox(b"c")]).unwrap(), Some(3));
        assert_eq!(s.size().inbox, 3);
        let all = s.inbox_after(0, 10).unwrap();
        assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(s.inbox_after(1, 1).unwrap(), vec![(2, b"b".to_vec())]);
        assert_eq!(s.ack_inbox(2).unwrap(), 2);
        assert_eq!(s.inbox_after(0, 10).unwrap().len(), 1);
        assert_eq!(s.size().inbox, 1, "exact after an ack, not fjall's estimate");
        assert_eq!(s.ack_inbox(2).unwrap(), 0);
        assert_eq!(s.size().inbox, 1);
        // Every entry acknowledged, then a restart: sequences go on, never back to 1 (a gateway
        // asking after the last one it saw would not see the new ones).
        assert_eq!(s.ack_inbox(u64::MAX).unwrap(), 1);
        drop(s);
        let s = DlrStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.write(&[Write::Inbox(b"d")]).unwrap(), Some(4));
    }

    #[test]
    fn a_store_failure_reads_as_one_on_the_bus() {
        let e = crate::dlr::DlrError::Store(StoreError::Engine(fjall::Error::Poisoned));
        assert!(e.to_string().starts_with(switchboard_bus::dlr::wire::STORE_FAILED), "{e}");
    }
}
