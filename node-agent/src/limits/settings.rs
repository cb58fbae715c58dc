//! The `[limits]` table: how this node takes part in the cluster's limits (the coordination
//! interval, how long a silent node's share is held and the decision records; the socket is
//! `[gateway]`'s). The limits themselves are the configuration repository's `global/limits.toml`,
//! set for the whole cluster with `switchboard limits set`.

use serde::{Deserialize, Serialize};

use crate::config::AgentConfigError;

/// The `[limits]` table. The limits themselves are set for the whole cluster with
/// `switchboard limits set`, not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Serve the limits API and take part in the cluster's limits. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Publish this node's demand and update its shares this often, in milliseconds. Must be
    /// under a quarter of `bus.lease_ms`. Default: 100.
    #[serde(default = "default_limits_interval_ms")]
    pub interval_ms: u64,
    /// How long the share of a node that vanished silently (dead, or behind a network
    /// partition) stays reserved, in milliseconds. During a partition each side keeps to the
    /// shares of the nodes it can see for this long; afterwards the node counts as dead and its
    /// share is freed. A node that exits or is killed is freed at once. Default: 30000.
    #[serde(default = "default_silent_hold_ms")]
    pub silent_hold_ms: u64,
    /// No longer used: the limits come from the configuration repository, whose
    /// `cluster_config.resync_ms` catches nodes up. Accepted so that existing files load, with
    /// a warning ([`AgentConfig::warnings`](crate::config::AgentConfig::warnings)).
    #[serde(default, skip_serializing)]
    pub resync_ms: Option<u64>,
    /// Moved to `gateway.socket` (the socket serves DLRs too); set here, it is refused with a
    /// message that says so.
    #[serde(default, skip_serializing)]
    pub socket: Option<String>,
    /// Moved to `gateway.socket_group`, like `socket`.
    #[serde(default, skip_serializing)]
    pub socket_group: Option<String>,
    /// Write decisions per key and second to the collector's `limits` table. Default: true.
    #[serde(default = "default_true")]
    pub record_decisions: bool,
}

fn default_limits_interval_ms() -> u64 {
    100
}
fn default_silent_hold_ms() -> u64 {
    30_000
}

impl Default for LimitsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: default_limits_interval_ms(),
            silent_hold_ms: default_silent_hold_ms(),
            resync_ms: None,
            socket: None,
            socket_group: None,
            record_decisions: true,
        }
    }
}

fn default_true() -> bool {
    true
}

impl LimitsSettings {
    /// Check the rules of the `[limits]` table alone. That `interval_ms` is under a quarter of
    /// `bus.lease_ms` is checked by [`AgentConfig::validate`](crate::config::AgentConfig::validate),
    /// which sees both tables.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.socket.is_some() || self.socket_group.is_some() {
            return Err(AgentConfigError::Invalid(
                "limits.socket and limits.socket_group are now gateway.socket and gateway.socket_group \
                 (the gateway socket serves DLRs too): move them to a [gateway] table"
                    .into(),
            ));
        }
        Ok(())
    }
}
