//! A source tailer running on its own thread over `app.log*`-style paths, as the tailer's
//! integration tests start it: fast polling and glob intervals, plain lines, no bound on
//! unacknowledged batches.

use std::path::Path;
use std::sync::{Arc, Mutex};

use switchboard_agent::checkpoint::SourceCheckpoint;
use switchboard_agent::config::{AgentSettings, BinaryFiles, SourceConfig, StartAt};
use switchboard_agent::journal::SourceJournal;
use switchboard_agent::parse::Format;
use switchboard_agent::stats::AgentStats;
use switchboard_agent::tailer::{OutBatch, SourceTailer};
use tokio_util::sync::CancellationToken;

/// The running tailer: its batches, and how to stop it.
pub(crate) struct Tailing {
    pub(crate) batches: tokio::sync::mpsc::Receiver<OutBatch>,
    pub(crate) cancel: CancellationToken,
    pub(crate) thread: std::thread::JoinHandle<()>,
}

/// Tail the files matching `pattern`, keeping its journal in `state`.
pub(crate) fn tail(pattern: &Path, state: &Path) -> Tailing {
    let config = SourceConfig {
        name: "app".into(),
        paths: vec![pattern.to_string_lossy().into_owned()],
        format: Format::Plain,
        start_at: StartAt::Beginning,
        max_line_bytes: 4096,
        kv_in_message: false,
        binary: BinaryFiles::Skip,
    };
    let settings = AgentSettings {
        data_dir: state.to_owned(),
        batch_max_lines: 64,
        batch_max_delay_ms: 5,
        poll_interval_ms: 2,
        glob_interval_ms: 10,
        max_unacked_batches: usize::MAX,
        ..AgentSettings::default()
    };
    let journal =
        Arc::new(Mutex::new(SourceJournal::open(&settings.data_dir, "app", SourceCheckpoint::default()).unwrap()));
    let tailer = SourceTailer::new(config, settings, journal, Arc::new(AgentStats::default()));
    let (tx, batches) = tokio::sync::mpsc::channel(1 << 16);
    let cancel = CancellationToken::new();
    let thread = {
        let cancel = cancel.clone();
        std::thread::spawn(move || tailer.run(tx, cancel))
    };
    Tailing { batches, cancel, thread }
}
