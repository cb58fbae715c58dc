//! The agent's counters, shared between its threads and read by whoever embeds or watches it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Counters since the agent started. All are monotonic.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Bytes read from log files.
    pub bytes_read: AtomicU64,
    /// Lines framed and parsed.
    pub lines_read: AtomicU64,
    /// Lines that did not match their source's format (kept whole as the message).
    pub lines_unmatched: AtomicU64,
    /// Lines cut at `max_line_bytes`.
    pub lines_truncated: AtomicU64,
    /// Lines that were not valid UTF-8 (kept, with their raw bytes).
    pub lines_invalid_utf8: AtomicU64,
    /// Files found truncated in place (copytruncate) and re-read from the start.
    pub truncations: AtomicU64,
    /// Files not read because their first block looked binary (`binary = "skip"`).
    pub binary_files_skipped: AtomicU64,
    /// Lines published on the bus.
    pub lines_published: AtomicU64,
    /// Batches published on the bus.
    pub batches_published: AtomicU64,
    /// Batches journaled and not published because no collector was alive (pulled later).
    pub batches_held: AtomicU64,
    /// Failed publications (the batch is retried after a restart from the checkpoint).
    pub publish_errors: AtomicU64,
    /// Checkpoint writes that failed.
    pub checkpoint_errors: AtomicU64,
    /// Why the last checkpoint write failed, until one succeeds (`/health` fails meanwhile).
    pub checkpoint_failing: std::sync::Mutex<Option<String>>,
    /// Journal writes that failed (the source stops until a restart).
    pub journal_errors: AtomicU64,
    /// Sources stopped by a journal write that failed: source name and error.
    pub journal_failed: std::sync::Mutex<Vec<(String, String)>>,
    /// Replay queries answered.
    pub replays: AtomicU64,
    /// Lines sent again in answer to replay queries.
    pub lines_replayed: AtomicU64,
    /// Replay queries that could not be answered in full (a file gone or changed).
    pub replay_errors: AtomicU64,
    /// Lines given up for lost: never acknowledged, and their file written over or gone.
    pub lines_lost: AtomicU64,
    /// Watermarks ignored because a newer collector-group writer (higher epoch) had spoken.
    pub watermarks_stale: AtomicU64,
    /// Highest watermark seen minus lines published, summed over sources (lag in lines).
    pub unacked_batches: AtomicU64,
    /// HTTP requests refused because their body was over `agent.http_max_body_bytes`.
    pub http_oversized_requests: AtomicU64,
    /// HTTP requests refused with 408 because their body came too slowly.
    pub http_slow_requests: AtomicU64,
    /// HTTP requests refused with 503 because the bodies being read held the whole budget.
    pub http_busy_requests: AtomicU64,
    /// HTTP requests refused with 400 because their body could not be read (a malformed chunked
    /// encoding, a connection that ended inside it).
    pub http_malformed_bodies: AtomicU64,
    /// Per source, when its tailer thread last went round its loop (a stuck or dead tailer
    /// stops beating; `/health` reports it).
    pub tailer_beats: Mutex<BTreeMap<String, Instant>>,
    /// Per source, the files its paths match that it cannot open (permissions, say), as of its
    /// last scan; `/health` reports them.
    pub unreadable: Mutex<BTreeMap<String, Unreadable>>,
}

/// Files of one source that could not be opened at its last scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// How many.
    pub files: usize,
    /// One of them, and why.
    pub path: String,
    /// The error opening it.
    pub error: String,
    /// Since when some file of the source has been unreadable without a break.
    pub since: Instant,
}

impl AgentStats {
    /// Read one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A tailer says it is alive.
    pub fn tailer_beat(&self, source: &str) {
        if let Ok(mut beats) = self.tailer_beats.lock() {
            match beats.get_mut(source) {
                Some(t) => *t = Instant::now(),
                None => {
                    beats.insert(source.to_owned(), Instant::now());
                }
            }
        }
    }

    /// Note what source `source` could not open at its last scan: `failures` (path, error), none
    /// when every file opened.
    pub fn set_unreadable(&self, source: &str, failures: &[(String, String)]) {
        let Ok(mut u) = self.unreadable.lock() else { return };
        match failures.first() {
            None => {
                u.remove(source);
            }
            Some((path, error)) => {
                let since = u.get(source).map_or_else(Instant::now, |e| e.since);
                let entry = Unreadable { files: failures.len(), path: path.clone(), error: error.clone(), since };
                u.insert(source.to_owned(), entry);
            }
        }
    }

    /// Sources whose tailer has not gone round its loop for `quiet`, with how long.
    pub fn silent_tailers(&self, quiet: std::time::Duration) -> Vec<(String, std::time::Duration)> {
        let Ok(beats) = self.tailer_beats.lock() else { return Vec::new() };
        beats.iter().map(|(s, t)| (s.clone(), t.elapsed())).filter(|(_, d)| *d >= quiet).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_kept_per_source_with_when_it_began_until_a_scan_finds_none() {
        let s = AgentStats::default();
        let fail = |path: &str| (path.to_owned(), "Permission denied (os error 13)".to_owned());
        s.set_unreadable("app", &[fail("/l/b.log"), fail("/l/c.log")]);
        let first = s.unreadable.lock().unwrap()["app"].clone();
        assert_eq!((first.files, first.path.as_str()), (2, "/l/b.log"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.set_unreadable("app", &[fail("/l/c.log")]);
        let again = s.unreadable.lock().unwrap()["app"].clone();
        assert_eq!((again.files, again.path.as_str(), again.since), (1, "/l/c.log", first.since), "since kept");
        s.set_unreadable("other", &[]);
        s.set_unreadable("app", &[]);
        assert!(s.unreadable.lock().unwrap().is_empty());
    }
}
