//! The sweep loop: every second it expires the records that are due
//! ([`super::Records::expire_due`]); every `dlr.sync_ms` (if set) and once more at shutdown it syncs
//! the store to disk. Beside it, [`DlrService::take_census`] counts the records for the status
//! document ([`Census`]) when they have changed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use switchboard_bus::dlr::DlrRecord;

use super::store::{DlrStore, StoreError};
use super::{now_ms, DlrService};

/// The soonest a census follows the last one when the records changed.
pub const CENSUS_SOON: Duration = Duration::from_secs(5);
/// Records read per page of a census.
const CENSUS_PAGE: usize = 10_000;
/// A census rests this many times as long as it read each page: it takes at most a fifth of a
/// core, and lookups on a small machine never wait behind a core it holds for a whole pass.
const CENSUS_REST: u32 = 4;

/// The node's records counted in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Every record held (own, open or not, and copies).
    pub total: u64,
    /// Open records this node owns.
    pub own_open: u64,
    /// Copies of other nodes' records.
    pub copies: u64,
    /// Submission time of the oldest open own record, ms since the Unix epoch.
    pub oldest_open_ms: Option<u64>,
    /// When the count ended, ms since the Unix epoch.
    pub at_ms: u64,
}

/// Count the records of `store` as node `node` sees them (a pass in pages, each record glanced
/// at, not decoded, resting between pages; blocking). `None` when `stop` fired between pages: a
/// shutdown does not wait for a paced pass over a large store.
pub fn count_records(store: &DlrStore, node: &str, stop: &CancellationToken) -> Result<Option<Census>, StoreError> {
    let mut c = Census::default();
    let mut unreadable = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = std::time::Instant::now();
        let next = store.scan_values(after.as_deref(), CENSUS_PAGE, |value| {
            c.total += 1;
            match DlrRecord::glance(value) {
                Ok(g) if g.owner != node.as_bytes() => c.copies += 1,
                Ok(g) if g.open => {
                    c.own_open += 1;
                    c.oldest_open_ms = Some(c.oldest_open_ms.map_or(g.submitted_at, |o| o.min(g.submitted_at)));
                }
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        })?;
        match next {
            Some(k) => after = Some(k),
            None => break,
        }
        std::thread::sleep(page.elapsed() * CENSUS_REST);
        if stop.is_cancelled() {
            return Ok(None);
        }
    }
    if unreadable > 0 {
        tracing::warn!(records = unreadable, "DLR census: unreadable records skipped");
    }
    c.at_ms = now_ms();
    Ok(Some(c))
}

impl DlrService {
    /// Count the records a few seconds after start, then whenever they changed (the store's
    /// change count moved): [`CENSUS_SOON`] after the last count, or 20 times as long as the last
    /// count took, whichever is later (so that counts of a large store stay under 1% of a core:
    /// a count takes five times its CPU time). A store that does not change is not read again.
    /// Until `cancel` fires; its own task, so that a long pass never delays expiry.
    pub async fn take_census(self: Arc<Self>, cancel: CancellationToken) {
        let started = tokio::time::Instant::now();
        // When the last count began, how long it took, and the store's change count then.
        let mut last: Option<(tokio::time::Instant, Duration, u64)> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let changes = self.store().record_changes();
            let due = match last {
                None => started.elapsed() >= Duration::from_secs(2),
                Some((at, took, counted)) => changes != counted && at.elapsed() >= CENSUS_SOON.max(took * 20),
            };
            if !due {
                continue;
            }
            let (me, stop, at) = (self.clone(), cancel.clone(), tokio::time::Instant::now());
            match tokio::task::spawn_blocking(move || count_records(me.store(), &me.node, &stop)).await {
                // One assignment under the lock: a poisoned lock is taken over.
                Ok(Ok(Some(c))) => *self.census.lock().unwrap_or_else(|p| p.into_inner()) = Some(c),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => tracing::warn!(error = %e, "DLR census"),
                Err(e) => tracing::warn!(error = %e, "DLR census task"),
            }
            last = Some((at, at.elapsed(), changes));
        }
    }

    /// The last census, if one finished.
    pub fn census(&self) -> Option<Census> {
        *self.census.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records held: the last census's exact count, or the store's estimate before the first.
    pub fn records_held(&self) -> u64 {
        self.census().map_or_else(|| self.store.size().records, |c| c.total)
    }
}

impl DlrService {
    /// Drop records past their expiry, every second, until `cancel` fires; then sync the store.
    pub async fn sweep(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let sync_every = (self.settings.sync_ms > 0).then(|| Duration::from_millis(self.settings.sync_ms));
        let mut last_sync = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            // Event lines a failed write left waiting go out with the expiry's (or alone).
            match tokio::task::spawn_blocking(move || {
                me.log_events(&[]);
                me.expire_due(now_ms())
            })
            .await
            {
                Ok(Err(e)) => tracing::warn!(error = %e, "DLR expiry"),
                Err(e) => tracing::warn!(error = %e, "DLR expiry task"),
                Ok(Ok(_)) => {}
            }
            if sync_every.is_some_and(|every| last_sync.elapsed() >= every) {
                last_sync = tokio::time::Instant::now();
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.count_store_error(me.store.sync())).await;
            }
        }
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.count_store_error(me.store.sync())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlr::store::Write;
    use switchboard_bus::dlr::RecordState;

    fn rec(id: u32, owner: &str, open: bool) -> DlrRecord {
        let state = if open { RecordState::Open } else { RecordState::Closed };
        let submitted_at = 1_000 + u64::from(id);
        DlrRecord {
            owner: owner.into(),
            state,
            submitted_at,
            ..crate::dlr::store::tests::rec(&id.to_string(), u64::MAX / 2)
        }
    }

    #[test]
    fn a_census_counts_over_pages_and_stops_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = DlrStore::open(dir.path(), 1 << 20).unwrap();
        // Two and a half pages: own open ones, own closed ones, copies of b's.
        let records: Vec<DlrRecord> = (0..25_000u32)
            .map(|i| match i % 5 {
                0 => rec(i, "b", true),
                1 => rec(i, "a", false),
                _ => rec(i, "a", true),
            })
            .collect();
        for chunk in records.chunks(5_000) {
            let writes: Vec<Write<'_>> = chunk.iter().map(|r| Write::Put { record: r, previous: None }).collect();
            store.write(&writes).unwrap();
        }
        let c = count_records(&store, "a", &CancellationToken::new()).unwrap().unwrap();
        assert_eq!((c.total, c.own_open, c.copies, c.oldest_open_ms), (25_000, 15_000, 5_000, Some(1_002)));
        // Removed records are gone from the count at once (the store's estimate keeps them until
        // it compacts).
        let gone: Vec<Write<'_>> = records[..1_000].iter().map(Write::Remove).collect();
        store.write(&gone).unwrap();
        let c = count_records(&store, "a", &CancellationToken::new()).unwrap().unwrap();
        assert_eq!(c.total, 24_000);
        let stop = CancellationToken::new();
        stop.cancel();
        assert_eq!(count_records(&store, "a", &stop).unwrap(), None, "stopped after its first page");
    }
}
