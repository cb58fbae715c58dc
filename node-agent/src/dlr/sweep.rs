//! The sweep loop: every second it expires the records that are due
//! ([`super::Records::expire_due`]); every `dlr.sync_ms` (if set) and once more at shutdown it syncs
//! the store to disk.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{now_ms, DlrService};

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
