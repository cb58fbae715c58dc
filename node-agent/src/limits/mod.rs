//! Cluster-wide limits on the node agent.
//!
//! [`LimitsService::start`] builds the node's [`Limiter`], restores and follows the cluster's
//! limits revision ([`sync`]), takes part in the coordination of shares ([`coord`]) and records decisions for the collector's `limits` table
//! ([`record`]). Gateways reach it through [`http`] (JSON on the agent's HTTP address) or
//! [`lines`] (the limits verbs of the gateway socket, `crate::gateway`); both are described in `docs/limits-api.md`.

pub mod coord;
pub mod http;
pub mod lines;
pub mod record;
pub(crate) mod settings;
pub mod sync;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchboard_bus::keys::{KeySpace, Role, Service};
use switchboard_bus::limits::{Decision, Limiter};
use switchboard_bus::{Member, Membership};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::coord::{CoordSettings, PeerView};
use self::sync::Revisions;
use crate::config::{AgentConfig, SourceConfig};
use crate::AgentError;

/// Longest key the APIs accept, in bytes: as long as a limit's key may be.
pub const MAX_KEY_BYTES: usize = switchboard_bus::limits::MAX_KEY_BYTES;
/// Most units one request may ask for.
pub const MAX_UNITS: u64 = 1_000_000_000;

/// How often the state of idle keys is swept: a key idle for one to two sweeps, with nothing
/// owed and no slot held, is forgotten ([`Limiter::evict_idle`]).
pub const EVICT_EVERY: Duration = Duration::from_secs(300);

/// Sweep idle keys every [`EVICT_EVERY`] until `cancel` fires.
async fn evict_idle(limiter: Arc<Limiter>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(EVICT_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        let (l, started) = (limiter.clone(), std::time::Instant::now());
        match tokio::task::spawn_blocking(move || (l.evict_idle(), l.keys_in_use())).await {
            Ok((forgotten, kept)) if forgotten > 0 => {
                tracing::debug!(forgotten, kept, ms = started.elapsed().as_millis() as u64, "idle limit keys forgotten")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep of idle limit keys stopped"),
        }
    }
}

/// Counters of the limits APIs.
#[derive(Debug, Default)]
pub struct ApiStats {
    /// Requests answered over HTTP.
    pub http_requests: AtomicU64,
    /// Requests answered over the Unix socket.
    pub socket_requests: AtomicU64,
    /// Requests refused as malformed (either API).
    pub bad_requests: AtomicU64,
    /// Releases of slots that were not held.
    pub unmatched_releases: AtomicU64,
}

/// A request the APIs could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The key is empty, too long, or has control characters.
    #[error("key must be 1 to {MAX_KEY_BYTES} bytes without control characters")]
    Key,
    /// `n` is zero or too large.
    #[error("n must be a whole number from 1 to {MAX_UNITS}")]
    Units,
}

/// `n` as a request gives it in text (the gateway socket): a whole number from 1 to
/// [`MAX_UNITS`]; a whole number too long for 64 bits is out of that range too, not malformed.
pub fn units_of(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) => Ok(n),
        // Digits past 64 bits: said as a number, shortened (it may be thousands of digits long).
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            let shown =
                if text.len() > 24 { format!("{}... ({} digits)", &text[..24], text.len()) } else { text.into() };
            Err(format!("{}, got {shown}", RequestError::Units))
        }
        Err(_) => Err(format!("{}, got {text:?}", RequestError::Units)),
    }
}

/// `n` as a JSON body gives it: any number is read, and one that is not a whole number from 1 up
/// (a fraction, a negative, one past 64 bits, which JSON readers hold as a float) is refused
/// with the range, not with the reader's type error. [`check_request`] checks the top.
pub fn units_from_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Units;
    impl serde::de::Visitor<'_> for Units {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a whole number from 1 to {MAX_UNITS}")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(RequestError::Units))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<u64, E> {
            Err(E::custom(RequestError::Units))
        }
    }
    d.deserialize_any(Units)
}

/// Check a request's key and unit count.
pub fn check_request(key: &str, n: u64) -> Result<(), RequestError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(RequestError::Key);
    }
    if n == 0 || n > MAX_UNITS {
        return Err(RequestError::Units);
    }
    Ok(())
}

/// The node's limits and what serves them.
pub struct LimitsService {
    /// Local decisions.
    pub limiter: Arc<Limiter>,
    /// The cluster's limits revisions as this node holds them.
    pub revisions: Revisions,
    /// How this node sees the others (for `/v1/limits` and `/health`).
    pub peers: watch::Receiver<BTreeMap<String, PeerView>>,
    /// API counters.
    pub stats: ApiStats,
}

impl LimitsService {
    /// Start limits for the agent described by `config`; `membership` is the whole cluster's.
    pub async fn start(
        config: &AgentConfig,
        session: &zenoh::Session,
        keys: &KeySpace,
        membership: &Membership,
        tracker: &TaskTracker,
        announced: &tokio::sync::watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> Result<Arc<Self>, AgentError> {
        let l = &config.limits;
        let node = config.bus.node.clone();
        // Limits are shared among the agents that serve them: an agent that runs without them is
        // alive but takes no part.
        let me = Member { role: Role::Agent, name: node.clone() };
        let sharing = Membership::watch_service(session, keys, Service::Limits, Some(me), cancel.clone()).await?;
        let dir = limits_dir(&config.agent.data_dir);
        // No limits until the first revision arrives: an empty set is valid. No key takes any
        // share (units of a rate, or a first slot) until the coordination has heard the other
        // nodes, who split the whole limit without this one until then.
        let limiter = Arc::new(Limiter::empty());
        limiter.set_default_share(0.0);
        limiter.set_first_use_slots(0.0);
        let revisions = sync::start(
            session.clone(),
            keys.clone(),
            node.clone(),
            limiter.clone(),
            dir.join("history.json"),
            config.cluster_config.enabled,
            cancel.clone(),
        )
        .await?;
        let interval = Duration::from_millis(l.interval_ms);
        limiter.set_no_share_wait(interval);
        let settings = CoordSettings {
            interval,
            lease: Duration::from_millis(config.bus.lease_ms),
            silent_hold: Duration::from_millis(l.silent_hold_ms),
        };
        let (view_tx, peers) = watch::channel(BTreeMap::new());
        // Demand reports begin once this node is live (peers refuse them before).
        // A coordinator that died would leave every share where it was, the others' held for
        // good: the process stops instead (`vital`).
        let coordinator = tokio::spawn(crate::once_announced(
            announced.clone(),
            coord::run(
                session.clone(),
                keys.clone(),
                node,
                limiter.clone(),
                sharing,
                membership.clone(),
                settings,
                view_tx,
                cancel.clone(),
            ),
        ));
        switchboard_bus::vital::watch(tracker, "the limits coordinator".into(), coordinator, cancel.clone());
        if l.record_decisions {
            let recorder = record::Recorder::new(dir, limiter.clone());
            tracker.spawn(recorder.run(cancel.clone()));
        }
        tracker.spawn(evict_idle(limiter.clone(), cancel.clone()));
        let service = Arc::new(Self { limiter, revisions, peers, stats: ApiStats::default() });
        Ok(service)
    }

    /// A rate decision (or a slot, for a concurrency key), counted.
    pub fn acquire(&self, key: &str, n: u64) -> Decision {
        self.limiter.try_acquire(key, n)
    }

    /// Give back slots; counts a release of slots that were not held.
    pub fn release(&self, key: &str, n: u64) -> u64 {
        let released = self.limiter.release(key, n);
        if released < n {
            self.stats.unmatched_releases.fetch_add(1, Ordering::Relaxed);
        }
        released
    }

    /// Why a release of `n` that gave back `released` fell short: `Err` for a key no
    /// concurrency limit applies to (a mistake of the caller's: HTTP 409, `CONFLICT` on the
    /// socket), `Ok` with the shortfall's explanation for slots that were not held.
    pub fn release_shortfall(&self, key: &str, n: u64, released: u64) -> Result<String, String> {
        if self.limiter.slot_limit(key).is_none() {
            return Err(format!(
                "no concurrency limit applies to {key:?}: it has no slots to give back (a rate limit's units are not given back)"
            ));
        }
        Ok(format!("released {released} of {n}: the rest were not held on this node"))
    }
}

/// The agent's limits directory: history and decision log.
pub fn limits_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("limits")
}

/// The internal source that carries the decision log to the collector.
pub fn decisions_source(data_dir: &Path) -> SourceConfig {
    crate::eventlog::EventLog::new(&limits_dir(data_dir), record::FILE_NAME, record::ROTATE_BYTES)
        .source(switchboard_bus::tables::LIMITS.stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        assert!(check_request("operator:x", 1).is_ok());
        assert_eq!(check_request("", 1), Err(RequestError::Key));
        assert_eq!(check_request(&"k".repeat(MAX_KEY_BYTES + 1), 1), Err(RequestError::Key));
        assert_eq!(check_request("a\nb", 1), Err(RequestError::Key));
        assert_eq!(check_request("k", 0), Err(RequestError::Units));
        assert_eq!(check_request("k", MAX_UNITS + 1), Err(RequestError::Units));
    }
}
