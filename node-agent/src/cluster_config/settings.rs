//! The `[cluster_config]` table: where this node materializes the cluster's configuration
//! repository, which subcluster it belongs to, and how its gateway is told to reload.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::AgentConfigError;

/// What to do when the reload command fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnReloadFailure {
    /// Switch the working directory back to the revision before (the default).
    #[default]
    Revert,
    /// Leave the new revision in place (the failure is still reported).
    Keep,
}

/// The `[cluster_config]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfigSettings {
    /// Take part in the configuration repository: hold its revisions, serve them to other
    /// nodes, materialize this node's files. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The working directory: a symbolic link that Switchboard points at the materialized tree of
    /// the applied revision (the trees live beside it, in `<dir>.revisions/`). It must not exist
    /// yet or be such a link. Default: `<agent.data_dir>/cluster-config/current`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The subcluster this node belongs to: its files come from `<subcluster>/` of the
    /// repository instead of `default/`. Default: none (the default subcluster).
    #[serde(default)]
    pub subcluster: Option<String>,
    /// The command that makes the gateway read its configuration again, as a program and its
    /// arguments (e.g. `["systemctl", "reload", "kannel"]`), run after every switch with
    /// `SWITCHBOARD_CONFIG_DIR` and `SWITCHBOARD_CONFIG_REVISION` set. Default: none.
    #[serde(default)]
    pub reload: Vec<String>,
    /// How long the reload command may run before it is killed and counts as failed, in
    /// milliseconds. Default: 30000.
    #[serde(default = "default_reload_timeout_ms")]
    pub reload_timeout_ms: u64,
    /// After a failed reload: `revert` (switch back to the revision before; the default) or
    /// `keep` (leave the new one in place).
    #[serde(default)]
    pub on_reload_failure: OnReloadFailure,
    /// Ask the other nodes what they hold this often, in milliseconds (pushes arrive at once;
    /// this is how a node that was down or cut off catches up). Local edits are looked for as
    /// often. Default: 2000.
    #[serde(default = "default_resync_ms")]
    pub resync_ms: u64,
    /// Materialized trees kept besides the current one. Default: 3.
    #[serde(default = "default_keep_trees")]
    pub keep_trees: usize,
}

fn default_true() -> bool {
    true
}
fn default_reload_timeout_ms() -> u64 {
    30_000
}
fn default_resync_ms() -> u64 {
    2000
}
fn default_keep_trees() -> usize {
    3
}

impl Default for ClusterConfigSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            subcluster: None,
            reload: Vec::new(),
            reload_timeout_ms: default_reload_timeout_ms(),
            on_reload_failure: OnReloadFailure::default(),
            resync_ms: default_resync_ms(),
            keep_trees: default_keep_trees(),
        }
    }
}

impl ClusterConfigSettings {
    /// The working directory, given the agent's data directory.
    pub fn dir(&self, data_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("cluster-config").join("current"))
    }

    /// Check the table's rules.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        let bad = |m: &str| Err(AgentConfigError::Invalid(format!("cluster_config.{m}")));
        switchboard_bus::config::first_zero(&[
            ("cluster_config.resync_ms", self.resync_ms),
            ("cluster_config.reload_timeout_ms", self.reload_timeout_ms),
        ])
        .map_err(AgentConfigError::Invalid)?;
        if let Some(s) = &self.subcluster {
            if let Err(why) = check_subcluster(s) {
                return bad(&format!("subcluster {s:?}: {why}"));
            }
        }
        if let Some(program) = self.reload.first() {
            switchboard_bus::config::check_program("cluster_config.reload", program)
                .map_err(AgentConfigError::Invalid)?;
        }
        if self.dir.as_ref().is_some_and(|d| d.file_name().is_none()) {
            return bad("dir must name a link to create, not end in `/` or `..`");
        }
        Ok(())
    }
}

/// A subcluster's name is the directory of its layer in the tree: letters, digits, `.`, `_`
/// and `-`, not starting with `.` (`.git` is skipped, `..` is no directory of the tree), and
/// not `global` (`default` is the layer a node of no named subcluster reads: the same).
fn check_subcluster(name: &str) -> Result<(), &'static str> {
    use switchboard_bus::repo::tree::GLOBAL;
    if name.is_empty() {
        return Err("empty: leave `subcluster` out for a node of no named subcluster");
    }
    if name.len() > 64 {
        return Err("longer than 64 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(
            "a subcluster is named with letters, digits, '.', '_' and '-' only (it names the layer's directory)",
        );
    }
    if name.starts_with('.') {
        return Err("a layer's directory cannot start with '.'");
    }
    if name == GLOBAL {
        return Err("`global` is the layer of every node");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn subcluster_names_that_cannot_be_a_layer_are_refused_with_why() {
        for (name, why) in [
            ("", "leave `subcluster` out"),
            ("../x", "letters, digits"),
            ("a/b", "letters, digits"),
            ("eu*", "letters, digits"),
            ("x y", "letters, digits"),
            (" ", "letters, digits"),
            ("..", "cannot start with '.'"),
            (".git", "cannot start with '.'"),
            ("global", "layer of every node"),
        ] {
            let e = super::check_subcluster(name).unwrap_err();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        for ok in ["eu", "eu-west_1", "dc2.rack3"] {
            assert!(super::check_subcluster(ok).is_ok(), "{ok}");
        }
    }

    use super::*;

    #[test]
    fn a_reload_program_that_is_not_there_is_refused() {
        let with = |program: &str| ClusterConfigSettings { reload: vec![program.into()], ..Default::default() };
        assert!(with("sh").validate().is_ok(), "found through PATH");
        assert!(with("/bin/sh").validate().is_ok());
        let err = with("/nonexistent/reload").validate().unwrap_err().to_string();
        assert!(err.contains("\"/nonexistent/reload\" not found"), "{err}");
        let err = with("no-such-reload-program").validate().unwrap_err().to_string();
        assert!(err.contains("not found in PATH"), "{err}");
        let err = with("/etc/passwd").validate().unwrap_err().to_string();
        assert!(err.contains("\"/etc/passwd\" is not an executable file"), "{err}");
        let err = with("").validate().unwrap_err().to_string();
        assert!(err.contains("may not be empty"), "{err}");
    }
}
