//! Threads a process cannot live without (the collector's intake, the agent's tailers): one
//! that panics turns `/health` to `failing` and stops the process with the reason, rather than
//! leaving a process that says ok and drops data.
//!
//! [`watch`] follows a task's join handle; on a panic it records why ([`failed`], read by
//! [`crate::http`]'s `/health`), logs it, and cancels the process's token after a short grace so
//! that a health check can still see the 503. The binary exits non-zero when [`failed`] is set.

use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a process stays up, answering 503, after a vital thread died.
pub const GRACE: Duration = Duration::from_secs(2);

static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Why a vital thread died, if one did.
pub fn failed() -> Option<String> {
    FAILED.lock().ok().and_then(|f| f.clone())
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        // The payload of a panic is its message for `panic!("...")` and `panic!("{x}")`.
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Follow `handle`, the task named `what`: if it panics, record it, log it, and cancel `cancel`
/// after [`GRACE`].
pub fn watch(tracker: &TaskTracker, what: String, handle: JoinHandle<()>, cancel: CancellationToken) {
    tracker.spawn(async move {
        let Err(e) = handle.await else { return };
        let why = format!("{what} died: {}", panic_text(e));
        tracing::error!("{why}; stopping the process (its data is safe: the journal and the dataset are durable)");
        if let Ok(mut f) = FAILED.lock() {
            f.get_or_insert(why);
        }
        tokio::time::sleep(GRACE).await;
        cancel.cancel();
    });
}

/// Stop the process for `why`, a fault it cannot go on with (not a panic): record it, log it,
/// and cancel `cancel` after [`GRACE`]. Call within a tokio runtime.
pub fn fail(why: String, cancel: CancellationToken) {
    tracing::error!("{why}; stopping the process");
    if let Ok(mut f) = FAILED.lock() {
        f.get_or_insert(why);
    }
    tokio::spawn(async move {
        tokio::time::sleep(GRACE).await;
        cancel.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_thread_fails_the_process_and_cancels_it() {
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        let fine = tokio::task::spawn_blocking(|| ());
        watch(&tracker, "a quiet thread".into(), fine, cancel.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(failed(), None);
        let dies = tokio::task::spawn_blocking(|| panic!("disk on fire"));
        watch(&tracker, "the intake thread".into(), dies, cancel.clone());
        tokio::time::timeout(GRACE * 3, cancel.cancelled()).await.expect("cancelled after the grace");
        let why = failed().unwrap();
        assert!(why.starts_with("the intake thread died"), "{why}");
    }
}
