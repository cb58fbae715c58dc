//! The sweep loop: every second it expires the records that are due
//! ([`super::Records::expire_due`]); every `dlr.sync_ms` (if set) and once more at shutdown it syncs
//! the store to disk. Beside it, [`DlrService::take_census`] counts the records for the status
//! document ([`Census`]) when they have changed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use switchboard_bus::dlr::DlrRecord;

use super::store::StoreError;
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
    /// Open records this node owns.
    pub own_open: u64,
    /// Copies of other nodes' records.
    pub copies: u64,
    /// Submission time of the oldest open own record, ms since the Unix epoch.
    pub oldest_open_ms: Option<u64>,
    /// When the count ended, ms since the Unix epoch.
    pub at_ms: u64,
}

impl DlrService {
    /// Count the records (a pass over the store in pages, each record glanced at, not decoded,
    /// resting between pages; blocking).
    pub fn count_records(&self) -> Result<Census, StoreError> {
        let mut c = Census::default();
        let mut unreadable = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = std::time::Instant::now();
            let next =
                self.store.scan_values(after.as_deref(), CENSUS_PAGE, |value| match DlrRecord::glance(value) {
                    Ok(g) if g.owner != self.node.as_bytes() => c.copies += 1,
                    Ok(g) if g.open => {
                        c.own_open += 1;
                        c.oldest_open_ms = Some(c.oldest_open_ms.map_or(g.submitted_at, |o| o.min(g.submitted_at)));
                    }
                    Ok(_) => {}
                    Err(_) => unreadable += 1,
                })?;
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
            std::thread::sleep(page.elapsed() * CENSUS_REST);
        }
        if unreadable > 0 {
            tracing::warn!(records = unreadable, "DLR census: unreadable records skipped");
        }
        c.at_ms = now_ms();
        Ok(c)
    }

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
            let (me, at) = (self.clone(), tokio::time::Instant::now());
            match tokio::task::spawn_blocking(move || me.count_records()).await {
                // One assignment under the lock: a poisoned lock is taken over.
                Ok(Ok(c)) => *self.census.lock().unwrap_or_else(|p| p.into_inner()) = Some(c),
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
            match tokio::task::spawn_blocking(move || me.expire_due(now_ms())).await {
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
