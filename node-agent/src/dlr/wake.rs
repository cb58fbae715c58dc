//! Whether this node just came back from not running (SIGSTOP, a VM paused, a starved host).
//!
//! A node that did not run for a while missed what happened meanwhile: other nodes saw it gone
//! and closed its records on their copies, registered records it holds no copy of, and its view
//! of who is live is stale until its links are up again. A heartbeat every [`BEAT`] notices the
//! gap; until [`SETTLE`] after it (or while the gap has not been noticed yet), lookups that find
//! nothing cannot say the record does not exist, and replication checks every copy again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::now_ms;

/// How often the heartbeat runs.
const BEAT: Duration = Duration::from_millis(100);
/// A gap between beats at least this long means the node did not run.
pub const GAP: Duration = Duration::from_secs(1);
/// How long after a gap the node counts as just woken: its links are up again well within it.
pub const SETTLE: Duration = Duration::from_secs(5);
/// What a request refused for it says.
pub const STALE: &str = "this node did not run for a while (stopped or starved)";

/// The heartbeat's record.
#[derive(Debug)]
pub struct Wake {
    /// The last beat (ms since the Unix epoch).
    beat: AtomicU64,
    /// When the last gap was noticed (ms since the Unix epoch; 0: never).
    woke: AtomicU64,
    /// Checks of every copy owed so far: each gap, a start over records and each restore
    /// (`super::restore`) owes one.
    owed: AtomicU64,
    /// The latest of [`Self::owed`] after which a replication pass has checked every copy.
    checked: AtomicU64,
    /// Whether this node, rebuilt empty, is taking its records back from an agent now.
    restoring: AtomicBool,
    /// What `GET /v1/dlr` says of it: also in the first moment, before the agents are seen.
    shown_restoring: AtomicBool,
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            beat: AtomicU64::new(now_ms()),
            woke: AtomicU64::new(0),
            owed: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            restoring: AtomicBool::new(false),
            shown_restoring: AtomicBool::new(false),
        }
    }
}

impl Wake {
    /// Beat until `cancel` fires.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (now, last) = (now_ms(), self.beat.load(Ordering::Relaxed));
            if now.saturating_sub(last) >= GAP.as_millis() as u64 {
                tracing::info!(ms = now.saturating_sub(last), "{STALE}: its DLR copies are checked again");
                self.woke.store(now, Ordering::Relaxed);
                self.owed.fetch_add(1, Ordering::Relaxed);
            }
            self.beat.store(now, Ordering::Relaxed);
        }
    }

    /// Count the process's start as a gap: a node started again over its records (a restart,
    /// after `kill -9` as well) missed what the others did with their copies meanwhile, as one
    /// that was stopped did.
    pub fn started_over_records(&self) {
        self.woke.store(now_ms(), Ordering::Relaxed);
        self.owed.fetch_add(1, Ordering::Relaxed);
    }

    /// Note that this node, rebuilt empty, is taking its records back from an agent now
    /// (`restoring`), or from none. Records it takes back may have been closed on another copy
    /// meanwhile: while it takes them, and after it took some until a pass has checked every
    /// copy ([`Self::restored`]), reports of its records are checked with their first copy holder.
    pub fn restoring(&self, restoring: bool) {
        self.restoring.store(restoring, Ordering::Relaxed);
    }

    /// Note that this node took records back: a pass that checks every copy is owed.
    pub fn restored(&self) {
        self.owed.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether this node is taking its records back from an agent now.
    pub fn is_restoring(&self) -> bool {
        self.restoring.load(Ordering::Relaxed)
    }

    /// Say (in `GET /v1/dlr`) that a restore is under way, also before any agent is asked.
    pub fn show_restoring(&self, shown: bool) {
        self.shown_restoring.store(shown, Ordering::Relaxed);
    }

    /// What `GET /v1/dlr` says of the restore.
    pub fn shown_restoring(&self) -> bool {
        self.shown_restoring.load(Ordering::Relaxed) || self.is_restoring()
    }

    /// Whether reports of this node's records are still held back or checked with their first
    /// copy holder: just woken (or started over its records), or its copies not checked since;
    /// as `GET /v1/dlr` shows it, also while a restore is shown under way.
    pub fn settling(&self) -> bool {
        self.just_woke() || self.copies_unchecked() || self.shown_restoring()
    }

    /// Checks of every copy owed so far: a replication pass that begins after this reads it, and
    /// once done says so with [`Self::copies_checked`].
    pub fn check_owed(&self) -> u64 {
        self.owed.load(Ordering::Relaxed)
    }

    /// When the last gap was noticed (ms since the Unix epoch; 0: never).
    pub fn woke_at(&self) -> u64 {
        self.woke.load(Ordering::Relaxed)
    }

    /// Whether the node is just back from not running: a gap not noticed yet, or noticed less
    /// than [`SETTLE`] ago.
    pub fn just_woke(&self) -> bool {
        let now = now_ms();
        let unnoticed = now.saturating_sub(self.beat.load(Ordering::Relaxed)) >= GAP.as_millis() as u64;
        let woke = self.woke_at();
        unnoticed || (woke > 0 && now.saturating_sub(woke) < SETTLE.as_millis() as u64)
    }

    /// Note that a replication pass begun when [`Self::check_owed`] read `owed` checked every
    /// copy: records closed on a copy while this node was not running are closed here too.
    pub fn copies_checked(&self, owed: u64) {
        self.checked.fetch_max(owed, Ordering::Relaxed);
    }

    /// Whether no replication pass has checked the copies since the last gap (or restore), or a
    /// restore is still going on: other nodes may have closed this node's records on them
    /// (handling their DLRs) without it knowing yet.
    pub fn copies_unchecked(&self) -> bool {
        self.checked.load(Ordering::Relaxed) < self.check_owed() || self.is_restoring()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gap_between_beats_is_noticed_and_settles() {
        let wake = std::sync::Arc::new(Wake::default());
        assert!(!wake.just_woke());
        // A beat a while ago, as if the process had been stopped since.
        wake.beat.store(now_ms() - 2_000, Ordering::Relaxed);
        assert!(wake.just_woke(), "an unnoticed gap counts");
        let cancel = CancellationToken::new();
        let w = wake.clone();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { w.run(cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(wake.woke_at() > 0 && wake.just_woke(), "noticed, not settled yet");
        wake.woke.store(now_ms() - SETTLE.as_millis() as u64 - 1, Ordering::Relaxed);
        assert!(!wake.just_woke(), "settled");
        assert!(wake.copies_unchecked(), "until a pass has checked the copies");
        wake.copies_checked(wake.check_owed());
        assert!(!wake.copies_unchecked(), "checked");
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_start_over_records_counts_as_a_gap() {
        let wake = Wake::default();
        assert!(!wake.settling(), "a new node has nothing to settle");
        wake.started_over_records();
        assert!(wake.just_woke() && wake.copies_unchecked() && wake.settling());
        wake.woke.store(now_ms() - SETTLE.as_millis() as u64 - 1, Ordering::Relaxed);
        assert!(!wake.just_woke() && wake.settling(), "settled, copies not checked yet");
        wake.copies_checked(wake.check_owed());
        assert!(!wake.settling());
    }

    #[test]
    fn a_restore_settles_once_done_and_checked_after_if_it_took_records() {
        let wake = Wake::default();
        wake.restoring(true);
        let during = wake.check_owed();
        assert!(wake.settling() && !wake.just_woke(), "checked with the first holder, not refused");
        wake.restoring(false);
        wake.show_restoring(true);
        assert!(wake.settling(), "shown restoring is shown settling");
        wake.show_restoring(false);
        wake.restoring(true);
        wake.restored();
        wake.copies_checked(during);
        assert!(wake.settling(), "a pass begun before the records came does not count");
        wake.restoring(false);
        assert!(wake.settling(), "not checked since they came");
        wake.copies_checked(wake.check_owed());
        assert!(!wake.settling());
        // A restore that took nothing (a new node: nobody holds copies of its records) owes no pass.
        wake.restoring(true);
        wake.restoring(false);
        assert!(!wake.settling());
    }
}
