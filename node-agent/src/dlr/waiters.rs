//! Lookups waiting for a registration not there yet.
//!
//! A lookup that may wait (`wait_ms`) and finds nothing parks on the record's store key
//! (`wait_for`), at most [`MAX_WAITERS`] at once; registering the record wakes it (`wake`) and
//! it answers then.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;

use super::records::Records;

/// Most lookups that may wait for a registration at once on this node.
pub const MAX_WAITERS: usize = 10_000;

impl Records {
    /// Wait for `key` to be registered here, up to `wait`; false if it was not.
    pub(super) async fn wait_for(&self, key: &[u8], wait: Duration) -> bool {
        if self.waiting.load(Ordering::Relaxed) >= MAX_WAITERS as u64 {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().entry(key.to_vec()).or_default().push(tx);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Registered between the caller's miss and the line above: do not wait.
        let present = matches!(self.store.get_key(key), Ok(Some(_)));
        let woken = present || tokio::time::timeout(wait, rx).await.is_ok_and(|r| r.is_ok());
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let mut waiters = self.lock_waiters();
        if let Some(list) = waiters.get_mut(key) {
            list.retain(|t| !t.is_closed());
            if list.is_empty() {
                waiters.remove(key);
            }
        }
        woken
    }

    pub(super) fn wake(&self, key: &[u8]) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(list) = self.lock_waiters().remove(key) {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<oneshot::Sender<()>>>> {
        // Only map operations run under this lock; nothing in them panics.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}
