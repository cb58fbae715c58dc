//! The `[[source]]` table: one named log stream the tailer reads, the globs of its files, their
//! line format, where to start reading and what to do with binary files.

use serde::{Deserialize, Serialize};
use switchboard_bus::keys::check_chunk;

use crate::config::AgentConfigError;
use crate::parse::Format;

/// Where to start reading a file the agent has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From its first byte (default).
    #[default]
    Beginning,
    /// From its current end: only lines written from now on. Applies to files present when the
    /// agent first starts; files that appear later are always read from the beginning.
    End,
}

/// One `[[source]]`: a named stream fed by the files its globs match.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The stream's name (a key chunk: no `/`, `*`, `$`, `?`, `#`). Required.
    pub name: String,
    /// Glob patterns of the files to tail, e.g. `/var/log/kannel/*.log`. Required. Files that
    /// appear later are picked up too.
    pub paths: Vec<String>,
    /// Line format: `plain` (default), `json`, `syslog` (RFC 3164 and 5424) or `kv` (logfmt).
    #[serde(default)]
    pub format: Format,
    /// `beginning` (default) or `end`.
    #[serde(default)]
    pub start_at: StartAt,
    /// Lines longer than this are cut and flagged `truncated`. Default: 1 MiB.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// Also extract `key=value` pairs from the message of plain and syslog lines. Default: false.
    #[serde(default)]
    pub kv_in_message: bool,
    /// What to do with a file whose first block read looks binary (a NUL byte, or more than one
    /// byte in 20 a control character that text does not use): `skip` (default) or `read`.
    #[serde(default)]
    pub binary: BinaryFiles,
}

/// What a source does with a file that looks binary ([`crate::tailer::looks_binary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BinaryFiles {
    /// Do not read it: a warning names it and `switchboard_agent_skipped_binary_files_total`
    /// counts it (default). A glob such as `app.log*` then passes over compressed rotations.
    #[default]
    Skip,
    /// Read it as lines like any other file (invalid UTF-8 is kept in each line's raw bytes).
    Read,
}

fn default_max_line() -> usize {
    1 << 20
}

impl SourceConfig {
    /// Check the rules of one `[[source]]` table: its name, its paths and `max_line_bytes`. That
    /// no two sources share a name is checked by
    /// [`AgentConfig::validate`](crate::config::AgentConfig::validate), which sees them all.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let s = self;
        check_chunk(&s.name).map_err(|e| AgentConfigError::Invalid(format!("source name {:?}: {e}", s.name)))?;
        if s.name.starts_with('_') {
            return Err(AgentConfigError::Invalid(format!(
                "source name {:?}: names starting with '_' are reserved for the agent's own streams",
                s.name
            )));
        }
        if s.paths.is_empty() {
            return Err(AgentConfigError::Invalid(format!("source {:?} has no paths", s.name)));
        }
        for p in &s.paths {
            glob::Pattern::new(p)
                .map_err(|e| AgentConfigError::Invalid(format!("source {:?}: bad glob {p:?}: {e}", s.name)))?;
        }
        if s.max_line_bytes < 16 {
            return Err(AgentConfigError::Invalid(format!("source {:?}: max_line_bytes must be >= 16", s.name)));
        }
        Ok(())
    }
}
