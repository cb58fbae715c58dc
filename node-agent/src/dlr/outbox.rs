//! The replication queue: changes of this node's records waiting for their replicas, bounded.
//!
//! [`super::Records`] hands every change of a record this node owns to [`Outbox::push`]; the
//! replication task ([`super::replicate::run`]) takes them all at once with [`Outbox::take`].
//! The queue keeps the latest version of each record and at most `cap` records. A change that
//! finds it full (no replica live for a long time, or replicas that do not acknowledge) empties
//! it and leaves only a mark that something was forgotten; the replication task then reads
//! every own record from the store in one pass instead. So memory stays bounded by `cap`,
//! whatever the peers do, and nothing is lost: the store is the source of truth, the queue
//! only a shortcut to what changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use switchboard_bus::dlr::DlrRecord;
use tokio::sync::Notify;

/// Changes of own records waiting for their replicas.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Queued>,
    ready: Notify,
    cap: usize,
    overflows: AtomicU64,
    /// Changes taken from the queue that wait for a replica whose batches are all unacknowledged
    /// (`super::replicate`): counted with the queue, and held to the same bound per replica.
    held: AtomicUsize,
}

/// What [`Outbox::take`] hands over.
#[derive(Debug, Default)]
pub struct Queued {
    /// The latest version of each changed record, by store key.
    pub records: HashMap<Vec<u8>, DlrRecord>,
    /// Changes were forgotten since the last take: only a pass over the store finds them.
    pub overflowed: bool,
}

impl Outbox {
    /// An empty queue of at most `cap` records (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Queued::default()),
            ready: Notify::new(),
            cap: cap.max(1),
            overflows: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        }
    }

    /// The most records queued, and the most held for one replica.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Note how many changes wait for replicas outside the queue now.
    pub fn set_held(&self, n: usize) {
        self.held.store(n, Ordering::Relaxed);
    }

    /// Count changes held for a replica forgotten (past [`Outbox::cap`]): a pass sends them.
    pub fn forgot(&self) {
        self.overflows.fetch_add(1, Ordering::Relaxed);
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, Queued> {
        // Every change under this lock is a single insert or swap: a panic elsewhere cannot
        // leave it half done, so a poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `record` (replacing an older version of it) and wake the replication task; forget
    /// everything if the queue is full.
    pub fn push(&self, record: DlrRecord) {
        self.insert(record);
        self.ready.notify_one();
    }

    /// Queue again what a failed batch carried, without waking the replication task: it tries
    /// again on its next retry tick, not at once (a replica that refuses at once would make a
    /// busy loop).
    pub fn requeue(&self, records: impl IntoIterator<Item = DlrRecord>) {
        for r in records {
            self.insert(r);
        }
    }

    fn insert(&self, record: DlrRecord) {
        let key = record.store_key();
        {
            let mut q = self.queued();
            let full = q.records.len() >= self.cap;
            match q.records.get_mut(&key) {
                Some(held) if held.version > record.version => {}
                Some(held) => *held = record,
                None if full => {
                    q.records = HashMap::new();
                    q.overflowed = true;
                    self.overflows.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    q.records.insert(key, record);
                }
            }
        }
    }

    /// Everything queued, and whether changes were forgotten; the queue is empty after.
    pub fn take(&self) -> Queued {
        std::mem::take(&mut *self.queued())
    }

    /// Wait until something is pushed (returns at once if a push came since the last wait).
    pub async fn pushed(&self) {
        self.ready.notified().await;
    }

    /// Changes waiting now: queued, and held for replicas.
    pub fn len(&self) -> usize {
        self.queued().records.len().saturating_add(self.held.load(Ordering::Relaxed))
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Times the queue was full and forgot its records.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64, version: u32) -> DlrRecord {
        DlrRecord { version, ..DlrRecord::synthetic(i, "gw1") }
    }

    #[test]
    fn keeps_the_latest_version_of_each_record() {
        let q = Outbox::new(10);
        q.push(record(1, 2));
        q.push(record(1, 1));
        q.push(record(2, 1));
        q.push(record(2, 3));
        let taken = q.take();
        let mut versions: Vec<u32> = taken.records.into_values().map(|r| r.version).collect();
        versions.sort();
        assert_eq!(versions, [2, 3]);
        assert!(!taken.overflowed && q.is_empty());
    }

    #[test]
    fn a_full_queue_forgets_its_records_and_says_so() {
        let q = Outbox::new(1000);
        for i in 0..1_000_000 {
            q.push(record(i, 1));
            assert!(q.len() <= 1000, "the queue holds {} records", q.len());
        }
        let taken = q.take();
        assert!(taken.overflowed, "the forgotten changes must be marked");
        assert_eq!(q.overflows(), 999, "one overflow per 1,000 records past the first thousand");
        assert!(!q.take().overflowed, "the mark goes with the take");
    }

    #[tokio::test]
    async fn a_push_wakes_the_replicator_and_a_requeue_does_not() {
        let q = Outbox::new(10);
        q.requeue([record(1, 1)]);
        let woke = tokio::time::timeout(std::time::Duration::from_millis(20), q.pushed()).await;
        assert!(woke.is_err(), "a requeue must wait for the retry tick");
        q.push(record(2, 1));
        let woke = tokio::time::timeout(std::time::Duration::from_millis(20), q.pushed()).await;
        assert!(woke.is_ok(), "a push wakes the replicator at once");
        assert_eq!(q.len(), 2);
    }
}
