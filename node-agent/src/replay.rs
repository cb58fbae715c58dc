//! Re-reading journaled batches for a collector that lacks them.
//!
//! [`replay`] takes the journal entries overlapping the requested range and re-reads each
//! segment from its open file handle with a fresh framer at the segment's start position, parsing
//! each line exactly as the tailer did ([`crate::tailer::append_line`], same read time), so every
//! line gets back its original sequence number. Rows outside the requested range are skipped.
//! A segment whose file is gone, or yields another number of lines than it did (the file was
//! truncated or rewritten), ends the replay with [`ReplayError`]: what was rebuilt before it is
//! still returned.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use switchboard_bus::wire::log_batch::{self, LogBatchBuilder};

use crate::config::SourceConfig;
use crate::framing::LineFramer;
use crate::journal::BatchRecord;
use crate::tailer::{append_line, LineCounts, LineFormat};

/// Rows per replayed payload.
const REPLAY_BATCH_ROWS: usize = 8192;

/// Why a replay stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file of a segment is no longer open (the agent restarted after it was deleted).
    #[error("file {0} of seq {1} is gone")]
    FileGone(String, u64),
    /// Reading failed.
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    /// The file no longer holds the same lines.
    #[error("file {path} changed: segment of seq {seq} gave {got} lines, expected {want}")]
    Changed {
        /// The file.
        path: String,
        /// First sequence number of the segment.
        seq: u64,
        /// Lines found.
        got: u64,
        /// Lines journaled.
        want: u64,
    },
    /// Encoding failed (a bug).
    #[error("encoding: {0}")]
    Encode(String),
}

/// Rebuild the rows `from..=to` of `entries` as `log_batch` payloads.
pub fn replay(
    config: &SourceConfig,
    entries: &[(BatchRecord, Vec<Option<Arc<File>>>)],
    from: u64,
    to: u64,
) -> (Vec<Vec<u8>>, u64, Option<ReplayError>) {
    let mut payloads = Vec::new();
    let mut builder = LogBatchBuilder::new();
    let mut counts = LineCounts::default();
    let mut rows = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let flush = |builder: &mut LogBatchBuilder, payloads: &mut Vec<Vec<u8>>| -> Result<(), ReplayError> {
        if builder.is_empty() {
            return Ok(());
        }
        let batch = builder.finish().map_err(|e| ReplayError::Encode(e.to_string()))?;
        payloads.push(log_batch::encode(&batch).map_err(|e| ReplayError::Encode(e.to_string()))?);
        Ok(())
    };
    for (entry, handles) in entries {
        let mut seq = entry.first_seq;
        for (segment, handle) in entry.segments.iter().zip(handles) {
            let path = segment.path.to_string_lossy().into_owned();
            let seg_first = seq;
            if segment.lines == 0 || seq + segment.lines <= from || seq > to {
                seq += segment.lines;
                continue;
            }
            let Some(file) = handle else {
                let _ = flush(&mut builder, &mut payloads);
                return (payloads, rows, Some(ReplayError::FileGone(path, seg_first)));
            };
            let mut framer = LineFramer::new(config.max_line_bytes, segment.start);
            let mut produced = 0u64;
            let mut at = segment.start.offset;
            while at < segment.end.offset {
                let want = ((segment.end.offset - at) as usize).min(buf.len());
                let n = match file.read_at(&mut buf[..want], at) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = flush(&mut builder, &mut payloads);
                        return (payloads, rows, Some(ReplayError::Io(path, e)));
                    }
                };
                at += n as u64;
                framer.push(&buf[..n], |line| {
                    let s = seg_first + produced;
                    produced += 1;
                    if s >= from && s <= to {
                        append_line(
                            &mut builder,
                            s,
                            line,
                            &path,
                            segment.observed_micros,
                            LineFormat::of(config),
                            &mut counts,
                        );
                        rows += 1;
                    }
                });
                if builder.len() >= REPLAY_BATCH_ROWS {
                    if let Err(e) = flush(&mut builder, &mut payloads) {
                        return (payloads, rows, Some(e));
                    }
                }
            }
            if produced != segment.lines {
                let _ = flush(&mut builder, &mut payloads);
                return (
                    payloads,
                    rows,
                    Some(ReplayError::Changed { path, seq: seg_first, got: produced, want: segment.lines }),
                );
            }
            seq += segment.lines;
        }
    }
    let err = flush(&mut builder, &mut payloads).err();
    (payloads, rows, err)
}

/// Answer replay queries on `<prefix>/replay/<node>/log/*` until `cancel` fires. Parameters:
/// `from` (first sequence number, required) and `to` (last, inclusive; default: the head). The
/// reply is a series of `log_batch` payloads on the query's key, then, if the range could not be
/// rebuilt in full, an error reply saying why.
pub(crate) async fn serve(
    session: zenoh::Session,
    keys: switchboard_bus::KeySpace,
    node: String,
    journals: crate::publisher::Journals,
    configs: Arc<std::collections::BTreeMap<String, SourceConfig>>,
    stats: Arc<crate::stats::AgentStats>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let key = match keys.replay_all_of(&node, switchboard_bus::StreamKind::Log) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "bad replay key");
            return;
        }
    };
    let queryable = match session.declare_queryable(key).await {
        Ok(q) => q,
        Err(e) => {
            tracing::error!(error = %e, "cannot declare the replay queryable; lost batches cannot be replayed");
            return;
        }
    };
    loop {
        let query = tokio::select! {
            _ = cancel.cancelled() => break,
            q = queryable.recv_async() => match q { Ok(q) => q, Err(_) => break },
        };
        let (keys, journals, configs, stats) = (keys.clone(), journals.clone(), configs.clone(), stats.clone());
        tokio::spawn(async move { answer(query, &keys, &journals, &configs, &stats).await });
    }
}

async fn answer(
    query: zenoh::query::Query,
    keys: &switchboard_bus::KeySpace,
    journals: &crate::publisher::Journals,
    configs: &std::collections::BTreeMap<String, SourceConfig>,
    stats: &crate::stats::AgentStats,
) {
    use std::sync::atomic::Ordering;
    let fail = |msg: String| async {
        stats.replay_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %query.key_expr(), error = %msg, "replay query not answered in full");
        let _ = query.reply_err(msg).await;
    };
    let Some(id) = keys.parse_replay(query.key_expr().as_str()) else {
        return fail("not a replay key of this node".into()).await;
    };
    let (Some(journal), Some(config)) = (journals.get(&id.name), configs.get(&id.name)) else {
        return fail(format!("no source named {:?}", id.name)).await;
    };
    let params = query.parameters();
    let Some(from) = params.get("from").and_then(|v| v.parse::<u64>().ok()) else {
        return fail("parameter from=<seq> is required".into()).await;
    };
    let to = params.get("to").and_then(|v| v.parse::<u64>().ok()).unwrap_or(u64::MAX);
    let sliced = journal.lock().map(|j| (j.slice(from, to), j.acked().next_seq)).ok();
    let Some((entries, acked)) = sliced else {
        return fail("journal unavailable".into()).await;
    };
    if from < acked {
        tracing::info!(stream = %id, from, acked, "replay asked for acknowledged records; they are committed already");
    }
    let config = config.clone();
    let rebuilt = tokio::task::spawn_blocking(move || replay(&config, &entries, from, to)).await;
    let (payloads, rows, err) = match rebuilt {
        Ok(r) => r,
        Err(e) => return fail(format!("replay task: {e}")).await,
    };
    stats.replays.fetch_add(1, Ordering::Relaxed);
    stats.lines_replayed.fetch_add(rows, Ordering::Relaxed);
    tracing::info!(stream = %id, from, to, rows, "replaying");
    for p in payloads {
        if let Err(e) = query.reply(query.key_expr().clone(), p).await {
            return fail(format!("reply: {e}")).await;
        }
    }
    if let Some(e) = err {
        fail(e.to_string()).await;
    }
}
