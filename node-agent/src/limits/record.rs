//! Recording limit decisions for the collector's `limits` table.
//!
//! Every second the [`Recorder`] writes, for each key with decisions since the last second, one
//! JSON line to `<data_dir>/limits/decisions.log`: units allowed and denied in that second, the
//! node's share, the limit, and held slots for concurrency keys. Windows end on whole seconds of
//! the wall clock (all but the last, which ends at shutdown), so every node's windows end at the
//! same instants and the cluster's total for one second is the sum of one window per node;
//! `window_ms` is the window's real length (a late timer makes a window longer, its counts
//! running to when they were read, and the next one shorter; the first one is shorter). The agent tails that file as
//! its own source `_limits`, so the records travel the same durable, exactly-once path as log
//! lines (journal, replay, watermarks) and the collector writes them to the `limits` table.
//! The file is renamed to `decisions.log.1` when it passes [`ROTATE_BYTES`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use switchboard_bus::limits::Limiter;
use tokio_util::sync::CancellationToken;

use crate::eventlog::EventLog;

/// Name of the decision log in the limits directory.
pub const FILE_NAME: &str = "decisions.log";
/// Size at which the decision log is rotated.
pub const ROTATE_BYTES: u64 = 16 << 20;
/// Length of one recorded window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One line of the decision log: a key's decisions in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRecord<'a> {
    /// End of the window, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Always `info`.
    pub level: &'static str,
    /// Always `limit decisions`.
    pub msg: &'static str,
    /// The concrete key.
    pub key: &'a str,
    /// The limit (key or pattern) that applies.
    pub limit_key: &'a str,
    /// Real length of the window in milliseconds (about [`WINDOW`]).
    pub window_ms: u64,
    /// Units allowed in the window.
    pub allowed: u64,
    /// Units denied in the window.
    pub denied: u64,
    /// This node's share of the limit at the end of the window.
    pub share: f64,
    /// For a rate limit: the cluster-wide rate per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// For a concurrency limit: the cluster-wide maximum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots_max: Option<u64>,
    /// For a concurrency limit: slots held on this node at the end of the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots_held: Option<u64>,
}

switchboard_bus::record_columns!(switchboard_bus::tables::LIMITS, WindowRecord<'_> {
    layout: ts, level, msg;
    columns: key, limit_key, window_ms, allowed, denied, share, rate_per_sec, slots_max, slots_held
});

/// Writes the decision log.
pub struct Recorder {
    dir: PathBuf,
    log: EventLog,
    limiter: Arc<Limiter>,
    last: HashMap<String, (u64, u64, u64)>,
    /// When the counts in `last` were read (ms since the Unix epoch).
    last_read: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Recorder {
    /// A recorder writing into `dir`.
    pub fn new(dir: PathBuf, limiter: Arc<Limiter>) -> Self {
        Self {
            log: EventLog::new(&dir, FILE_NAME, ROTATE_BYTES),
            dir,
            limiter,
            last: HashMap::new(),
            last_read: now_ms(),
        }
    }

    /// Record every window until `cancel` fires (and the last, partial one then).
    pub async fn run(mut self, cancel: CancellationToken) {
        let window = WINDOW.as_millis() as u64;
        loop {
            // The next whole window of the wall clock.
            let now = now_ms();
            let end = (now / window + 1) * window;
            let stop = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = tokio::time::sleep(Duration::from_millis(end - now)) => false,
            };
            let ts = if stop { now_ms() } else { end };
            // Off the runtime's threads: a write can wait for the disk, and the limits' exchange
            // runs on those threads.
            let written = tokio::task::spawn_blocking(move || {
                let written = self.record_window_ending(ts);
                (self, written)
            })
            .await;
            let (me, written) = match written {
                Ok(done) => done,
                Err(e) if e.is_panic() => {
                    // Decisions would go on unrecorded: the agent stops, saying why.
                    switchboard_bus::vital::fail("the limits decision recorder panicked".into(), cancel);
                    break;
                }
                Err(_) => break,
            };
            self = me;
            if let Err(e) = written {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the limits decision log yet");
            }
            if stop {
                break;
            }
        }
    }

    /// Append the lines of the window that ends now; returns how many were written.
    pub fn record_window(&mut self) -> std::io::Result<usize> {
        self.record_window_ending(now_ms())
    }

    /// Append the lines of the window that ends at `ts` (ms since the Unix epoch; the counts are
    /// read now); returns how many were written.
    fn record_window_ending(&mut self, ts: u64) -> std::io::Result<usize> {
        let read = now_ms();
        let window_ms = read.saturating_sub(self.last_read).max(1);
        self.last_read = read;
        let mut out = Vec::new();
        let mut lines = 0;
        let usage = self.limiter.usage();
        // Keys the limiter forgot (idle) are forgotten here too.
        let in_use: std::collections::HashSet<&str> = usage.iter().map(|u| u.key.as_str()).collect();
        self.last.retain(|k, _| in_use.contains(k.as_str()));
        for u in &usage {
            // A key whose state restarted (new revision, or forgotten while idle) counts from zero.
            let (a0, d0) = match self.last.get(&u.key) {
                Some(&(id, a0, d0)) if id == u.state_id => (a0, d0),
                _ => (0, 0),
            };
            let (allowed, denied) = (u.allowed - a0, u.denied - d0);
            if allowed + denied == 0 {
                continue;
            }
            let rec = WindowRecord {
                ts,
                level: "info",
                msg: "limit decisions",
                key: &u.key,
                limit_key: &u.limit,
                window_ms,
                allowed,
                denied,
                share: u.share,
                rate_per_sec: u.rate_per_sec,
                slots_max: u.slots.map(|(m, _)| m),
                slots_held: u.slots.map(|(_, h)| h),
            };
            serde_json::to_writer(&mut out, &rec).map_err(std::io::Error::other)?;
            out.push(b'\n');
            lines += 1;
            self.last.insert(u.key.clone(), (u.state_id, u.allowed, u.denied));
        }
        // An empty window still writes the lines a failed write left waiting.
        self.log.append(&out).map_err(std::io::Error::other)?;
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::limits::LimitSpec;

    #[test]
    fn each_window_records_only_its_own_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LimitSpec { key: "k:*".into(), rate: Some(10), per: None, concurrency: None, burst: Some(5) };
        let l = Arc::new(Limiter::new(vec![spec]).unwrap());
        let mut r = Recorder::new(dir.path().to_owned(), l.clone());
        for _ in 0..8 {
            l.try_acquire("k:a", 1);
        }
        assert_eq!(r.record_window().unwrap(), 1);
        assert_eq!(r.record_window().unwrap(), 0, "no decisions, no line");
        l.try_acquire("k:b", 1);
        assert_eq!(r.record_window().unwrap(), 1);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0]["key"].as_str(), rows[0]["allowed"].as_u64(), rows[0]["denied"].as_u64()),
            (Some("k:a"), Some(5), Some(3))
        );
        assert_eq!((rows[1]["key"].as_str(), rows[1]["allowed"].as_u64()), (Some("k:b"), Some(1)));
        assert_eq!(rows[0]["limit_key"], "k:*");
    }

    fn rows(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_window_records_its_real_length() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LimitSpec { key: "k".into(), rate: Some(1000), per: None, concurrency: None, burst: None };
        let l = Arc::new(Limiter::new(vec![spec]).unwrap());
        let mut r = Recorder::new(dir.path().to_owned(), l.clone());
        std::thread::sleep(Duration::from_millis(120));
        l.try_acquire("k", 1);
        r.record_window().unwrap();
        let ms = rows(dir.path())[0]["window_ms"].as_u64().unwrap();
        assert!((120..1000).contains(&ms), "{ms}");
    }

    #[test]
    fn windows_end_on_whole_seconds_of_the_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LimitSpec { key: "k".into(), rate: Some(1000), per: None, concurrency: None, burst: None };
        let l = Arc::new(Limiter::new(vec![spec]).unwrap());
        let recorder = Recorder::new(dir.path().to_owned(), l.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let cancel = CancellationToken::new();
        rt.block_on(async {
            let task = tokio::spawn(recorder.run(cancel.clone()));
            // Decisions in each of the next two whole seconds, then stop.
            for _ in 0..2 {
                l.try_acquire("k", 1);
                let now = now_ms();
                tokio::time::sleep(Duration::from_millis(1000 - now % 1000 + 50)).await;
            }
            l.try_acquire("k", 1);
            cancel.cancel();
            task.await.unwrap();
        });
        let rows = rows(dir.path());
        assert!(rows.len() >= 3, "{rows:?}");
        let ts: Vec<u64> = rows.iter().map(|r| r["ts"].as_u64().unwrap()).collect();
        for t in &ts[..ts.len() - 1] {
            assert_eq!(t % 1000, 0, "a full window ends on a whole second: {ts:?}");
        }
    }
}
