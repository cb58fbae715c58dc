//! The collector's counters, shared with whoever embeds or watches it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The `/metrics` name of [`CollectorStats::rows_committed`], which tools outside read too.
pub const ROWS_COMMITTED_METRIC: &str = "switchboard_collector_rows_committed_total";

/// Counters since the collector started. All are monotonic.
#[derive(Debug, Default)]
pub struct CollectorStats {
    /// Payloads taken from the bus.
    pub payloads_received: AtomicU64,
    /// Payloads a standby kept in its buffer (the leader writes them).
    pub payloads_standby: AtomicU64,
    /// Payloads a standby let go from its full buffer (pulled from the agents if a takeover
    /// needs them).
    pub payloads_standby_dropped: AtomicU64,
    /// Buffered payloads a new leader wrote at its takeover.
    pub payloads_standby_taken: AtomicU64,
    /// Payloads dropped as malformed, of an unknown version, or on an unknown key.
    pub payloads_malformed: AtomicU64,
    /// Live payloads and heads not queued because the sink stayed behind (payloads are pulled
    /// again from the agents).
    pub inputs_shed: AtomicU64,
    /// Rows in well-formed payloads.
    pub rows_received: AtomicU64,
    /// Rows dropped because their sequence number was already accepted.
    pub rows_duplicate: AtomicU64,
    /// Rows written to an open file.
    pub rows_accepted: AtomicU64,
    /// Rows in committed files.
    pub rows_committed: AtomicU64,
    /// Files committed.
    pub files_committed: AtomicU64,
    /// Commits that failed (the file's rows are taken again on resend).
    pub commit_errors: AtomicU64,
    /// Failures to create or write a data file.
    pub write_errors: AtomicU64,
    /// Promoted field values that did not convert to their column type (kept in `fields`).
    pub promote_failures: AtomicU64,
    /// Gaps found by comparing agents' heads with what is held.
    pub gaps_detected: AtomicU64,
    /// Records below an agent's `acked` never committed here (given up: the agent cannot send
    /// them any more).
    pub records_given_up: AtomicU64,
    /// Why the stop left rows uncommitted (its last commit failed), once stopped.
    pub stopped_uncommitted: std::sync::Mutex<Option<String>>,
    /// Replay queries sent to agents.
    pub replay_requests: AtomicU64,
    /// Rows received in answer to replay queries (before deduplication).
    pub rows_replayed: AtomicU64,
    /// Replay queries that failed or were answered with an error.
    pub replay_errors: AtomicU64,
    /// Control documents (heads) that could not be read.
    pub control_malformed: AtomicU64,
    /// Heads that showed two processes publishing as one node.
    pub conflicting_writers: AtomicU64,
}

impl CollectorStats {
    /// Read one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
