//! Rate and concurrency limits, decided locally.
//!
//! A [`LimitSpec`] names a key (exact, or a pattern where `*` matches any run of characters: one
//! limit per operator with `operator:*`) and either a rate (`rate` units per `per`) or a
//! concurrency (`concurrency` slots). A [`Limiter`] holds the specs and, per concrete key, the
//! state of its limit: a [`gcra::Gcra`] for rates (a sliding, not fixed, window: see there), a
//! [`slots::Slots`] for concurrency. Keys get their state on first use; after that a decision
//! is a read lock, a hash lookup and one compare-and-swap: no allocation, no network.
//!
//! The node's share of a cluster-wide limit is set with [`Limiter::set_share`] (a fraction of
//! the limit); [`share`] computes shares from the cluster's demand, which each key counts
//! ([`Limiter::asked`]: units asked for, allowed or not).

pub mod gcra;
pub mod revision;
pub mod share;
pub mod slots;

pub use share::DemandReport;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::gcra::{Gcra, RateDecision};
use self::slots::Slots;

/// The period of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

impl Per {
    /// The period in nanoseconds.
    pub fn nanos(self) -> u64 {
        match self {
            Per::Second => 1_000_000_000,
            Per::Minute => 60_000_000_000,
            Per::Hour => 3_600_000_000_000,
        }
    }
}

/// One limit definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// The key, or a pattern with `*` (e.g. `operator:*`: one limit per operator).
    pub key: String,
    /// Units per period, for a rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// The period of `rate`: `second` (default), `minute` or `hour`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<Per>,
    /// Slots held at once, for a concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u64>,
    /// Units that may pass at once after a quiet spell (rate limits). Default: 1% of the rate,
    /// at least 1: no window of one period on one node admits more than the rate plus the burst
    /// less one unit (see [`LimitSpec::most_per_period`] for a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// A limit definition that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Neither or both of `rate` and `concurrency`.
    #[error("limit {0:?}: give exactly one of `rate` or `concurrency`")]
    Kind(String),
    /// An empty key.
    #[error("a limit needs a non-empty key")]
    EmptyKey,
    /// `per` or `burst` on a concurrency limit.
    #[error("limit {0:?}: `per` and `burst` apply to rate limits only")]
    RateFieldOnConcurrency(String),
    /// The same key twice.
    #[error("limit {0:?} is defined twice")]
    Duplicate(String),
    /// A key longer than [`MAX_KEY_BYTES`].
    #[error("a limit key is at most {MAX_KEY_BYTES} bytes, not {0}")]
    KeyTooLong(usize),
    /// More than [`MAX_LIMITS`] limits.
    #[error("a revision holds at most {MAX_LIMITS} limits, not {0}")]
    TooMany(usize),
    /// A key the gateway protocol could not name.
    #[error("limit key {0:?} holds whitespace or a control character")]
    KeyCharacters(String),
    /// A rate or concurrency of zero.
    #[error("limit {0:?}: a limit of 0 would refuse everything and tell no time to retry; the smallest is 1")]
    Zero(String),
    /// A burst of zero.
    #[error(
        "limit {0:?}: a burst of 0 would let no request pass; the smallest is 1 (leave it out for 1% of the rate)"
    )]
    ZeroBurst(String),
    /// A rate, burst or concurrency above [`MAX_VALUE`].
    #[error("limit {0:?}: {1} = {2} is more than the largest, {MAX_VALUE} (leave a key out to leave it unlimited)")]
    TooLarge(String, &'static str, u64),
    /// A revision number too far above the highest known.
    #[error("revision {got} is more than {} above the highest known ({known})", revision::MAX_STEP)]
    Jump {
        /// The offered number.
        got: u64,
        /// The highest known.
        known: u64,
    },
}

/// Longest limit key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest rate, burst or concurrency: a billion (per second, a rate far past what one node
/// decides), so that the shares' arithmetic stays far from the 64-bit bounds.
pub const MAX_VALUE: u64 = 1_000_000_000;
/// Most limits in one revision.
pub const MAX_LIMITS: usize = 100_000;
/// Most agents a demand report names as those its node splits with.
pub const MAX_AGENTS: usize = 10_000;
/// Most concrete keys a node holds state for at once. The coordination walks every key each
/// interval (100 ms) and names it in the node's demand report: measured with three agents on
/// two cores, 10,000 keys cost a node about 12% of a core and its reports stayed on time; 30,000
/// cost 50% and came 150 ms apart; 100,000 came 1-2 s apart and the others froze their shares.
pub const MAX_KEYS: usize = 10_000;
/// When every key slot is taken, the keys at rest are forgotten at once to make room, at most
/// this often (it walks every key with the table locked).
const MAKE_ROOM_EVERY_NS: u64 = 1_000_000_000;

impl LimitSpec {
    /// Check the definition.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.key.is_empty() {
            return Err(SpecError::EmptyKey);
        }
        if self.key.len() > MAX_KEY_BYTES {
            return Err(SpecError::KeyTooLong(self.key.len()));
        }
        if self.key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SpecError::KeyCharacters(self.key.clone()));
        }
        if self.rate == Some(0) || self.concurrency == Some(0) {
            return Err(SpecError::Zero(self.key.clone()));
        }
        if self.burst == Some(0) {
            return Err(SpecError::ZeroBurst(self.key.clone()));
        }
        for (field, value) in [("rate", self.rate), ("burst", self.burst), ("concurrency", self.concurrency)] {
            if let Some(v) = value.filter(|v| *v > MAX_VALUE) {
                return Err(SpecError::TooLarge(self.key.clone(), field, v));
            }
        }
        match (self.rate, self.concurrency) {
            (Some(_), None) => Ok(()),
            (None, Some(_)) if self.per.is_none() && self.burst.is_none() => Ok(()),
            (None, Some(_)) => Err(SpecError::RateFieldOnConcurrency(self.key.clone())),
            _ => Err(SpecError::Kind(self.key.clone())),
        }
    }

    /// The burst in force: as set, or 1% of the rate (at least 1).
    pub fn burst_units(&self) -> u64 {
        self.burst.unwrap_or_else(|| self.rate.unwrap_or(0) / 100).max(1)
    }

    /// The units a node lets pass at once under `share` of the limit: its part of the burst
    /// rounded down, at least 1 (a node passes whole units). The nodes' units beyond one each
    /// so add up to at most `burst - 1`.
    pub fn burst_of_share(&self, share: f64) -> u64 {
        // The small term keeps an exact part (0.5 of 10) from rounding down below itself.
        ((self.burst_units() as f64) * share + 1e-9).floor().max(1.0) as u64
    }

    /// The most units a window of one period can admit, for a rate limit shared by `nodes`
    /// nodes that each decide alone, while the shares hold still (docs/limits-api.md, "Small
    /// limits"): the rate, the burst beyond one unit, and one unit per node beyond the first. A
    /// node passes whole units, at least one after a quiet spell whatever its share, so a node
    /// whose share is a fraction of a unit per period still passes one. `None` for a
    /// concurrency limit.
    pub fn most_per_period(&self, nodes: usize) -> Option<u64> {
        let rate = self.rate?;
        let beyond_first = u64::try_from(nodes.saturating_sub(1)).unwrap_or(u64::MAX);
        Some(rate.saturating_add(self.burst_units() - 1).saturating_add(beyond_first))
    }

    fn matches(&self, key: &str) -> bool {
        glob_match(&self.key, key)
    }
}

/// `*` matches any run of characters (possibly empty); everything else matches itself.
fn glob_match(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else { return pattern == key };
    let Some(mut rest) = key.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Not now; try again after the hint (zero for concurrency: after a release).
    Denied {
        /// When the same request would pass if nothing else happened.
        retry_after: Duration,
    },
    /// No limit applies to this key.
    Unlimited,
    /// More units of a rate than this node lets pass at once (its share of the burst), or more
    /// slots than the whole cluster's concurrency limit: the request as it is would never pass,
    /// whatever the wait.
    TooLarge {
        /// The most units this node lets pass at once now (a rate), or the limit (slots).
        most: u64,
        /// Whether `most` is a concurrency limit's slots.
        slots: bool,
    },
    /// A key never seen, while the node holds state for [`MAX_KEYS`] keys none of which is at
    /// rest: not allowed (a table filled with junk keys must not open every new key), and not
    /// counted as demand.
    TooManyKeys,
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed | Decision::Unlimited)
    }

    /// Why a [`Decision::TooManyKeys`] request cannot pass, for the gateway.
    pub fn too_many_keys() -> String {
        format!(
            "this node holds the state of {MAX_KEYS} keys, its most, none of them at rest: a new key is refused \
             until keys come to rest (a rate key's units are paid back, a concurrency key's slots released)"
        )
    }

    /// Why a [`Decision::TooLarge`] request of `n` units of `key` cannot pass, for the gateway.
    pub fn too_large(key: &str, n: u64, most: u64, slots: bool) -> String {
        if slots {
            return format!("n {n} is more than the {most} slots of {key} in the whole cluster: it would never pass");
        }
        format!(
            "n {n} is more than this node lets pass at once for {key} ({most}, its share of the burst): \
             it would never pass; split the request or raise the limit's burst"
        )
    }
}

/// Units decided on for one key since it got its state.
#[derive(Debug, Default)]
struct Counts {
    /// Tells this state from an earlier one of the same key (see [`Usage::state_id`]).
    id: u64,
    allowed: AtomicU64,
    denied: AtomicU64,
    /// Units decided on at the last [`Limiter::evict_idle`] (the key was idle since if equal).
    swept: AtomicU64,
}

/// Source of [`Counts::id`], unique within the process.
static NEXT_STATE_ID: AtomicU64 = AtomicU64::new(1);

impl Counts {
    fn fresh() -> Self {
        Self { id: NEXT_STATE_ID.fetch_add(1, Ordering::Relaxed), ..Self::default() }
    }

    #[inline]
    /// Count `n` units as allowed or denied. A request that could never pass here
    /// ([`Decision::TooLarge`]) is not demand: counted, it would let one gateway asking for a
    /// billion units take every other node's share.
    fn count(&self, d: Decision, n: u64) -> Decision {
        if matches!(d, Decision::TooLarge { .. } | Decision::TooManyKeys) {
            return d;
        }
        let c = if d.is_allowed() { &self.allowed } else { &self.denied };
        c.fetch_add(n, Ordering::Relaxed);
        d
    }
}

enum State {
    Rate { gcra: Gcra, spec: AtomicUsize, counts: Counts },
    Slots { slots: Slots, spec: AtomicUsize, counts: Counts },
}

impl State {
    fn counts(&self) -> &Counts {
        match self {
            State::Rate { counts, .. } | State::Slots { counts, .. } => counts,
        }
    }

    /// Index of the spec in force (moves when a new revision reorders the specs).
    fn spec(&self) -> usize {
        match self {
            State::Rate { spec, .. } | State::Slots { spec, .. } => spec.load(Ordering::Relaxed),
        }
    }

    fn set_spec(&self, idx: usize) {
        match self {
            State::Rate { spec, .. } | State::Slots { spec, .. } => spec.store(idx, Ordering::Relaxed),
        }
    }

    /// Whether a fresh state would decide the same: no units owed, no slots held.
    fn is_rested(&self, now_ns: u64) -> bool {
        match self {
            State::Rate { gcra, .. } => gcra.is_rested(now_ns),
            State::Slots { slots, .. } => slots.held() == 0,
        }
    }

    /// Whether no decision was made since the last sweep; marks the sweep.
    fn idle_since_last_sweep(&self) -> bool {
        let c = self.counts();
        let total = c.allowed.load(Ordering::Relaxed).wrapping_add(c.denied.load(Ordering::Relaxed));
        c.swept.swap(total, Ordering::Relaxed) == total
    }
}

/// What one key in use has decided so far, for demand reports and decision statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The concrete key.
    pub key: String,
    /// The pattern or key of the limit that applies.
    pub limit: String,
    /// Identifies the key's current state: it changes when the counts start again from zero
    /// (a new revision changed the key's limit, or the key was idle and forgotten).
    pub state_id: u64,
    /// Units allowed since the key got its state.
    pub allowed: u64,
    /// Units denied since the key got its state.
    pub denied: u64,
    /// For a concurrency limit: the cluster-wide maximum and the slots held on this node.
    pub slots: Option<(u64, u64)>,
    /// For a rate limit: the cluster-wide rate, per second.
    pub rate_per_sec: Option<f64>,
    /// This node's share of the limit (a fraction).
    pub share: f64,
}

struct Table {
    specs: Vec<LimitSpec>,
    states: HashMap<Box<str>, Arc<State>>,
    /// The node's share of each key's limit, as a fraction.
    shares: HashMap<Box<str>, f64>,
    /// The share of keys not in `shares` (1 alone; 1/n once n nodes are known).
    default_share: f64,
    /// For concurrency keys: the slots this node may hold, as the coordination last set them
    /// (a key's first use starts from here when set, not from its share).
    allotted: HashMap<Box<str>, u64>,
    /// The share of a concurrency key's slots taken at a first use with no allotment (1 alone;
    /// 0 until the coordination has heard the other nodes, then 1/n).
    first_use_slots: f64,
    /// When keys at rest were last forgotten to make room ([`MAKE_ROOM_EVERY_NS`]).
    made_room_ns: u64,
}

impl Table {
    /// Forget the keys at rest and the shares of keys without state; with `marked`, only those
    /// also idle since the previous call (the regular sweep). Returns how many were forgotten.
    fn forget_rested(&mut self, now_ns: u64, marked: bool) -> usize {
        let before = self.states.len();
        // With the write lock held no decision can take a new reference to a state, so a
        // count of one means no decision is under way on it either.
        self.states.retain(|_, s| {
            let idle = !marked || s.idle_since_last_sweep();
            !(idle && s.is_rested(now_ns) && Arc::strong_count(s) == 1)
        });
        let Table { states, shares, allotted, .. } = self;
        shares.retain(|k, _| states.contains_key(k));
        allotted.retain(|k, _| states.contains_key(k));
        before - self.states.len()
    }
}

/// The wait told to a refused request when this node holds no share of the key (none of its
/// slots, or a rate share of 0, as a node that has just started), until
/// [`Limiter::set_no_share_wait`] sets the exchange's own interval.
pub const DEFAULT_NO_SHARE_WAIT: Duration = Duration::from_millis(100);

/// A new key found every key slot taken ([`MAX_KEYS`]).
#[derive(Debug)]
struct KeysFull;

/// Local decisions over a set of limits; see the module docs.
pub struct Limiter {
    table: RwLock<Table>,
    epoch: Instant,
    /// Requests refused as [`Decision::TooManyKeys`].
    keys_full: AtomicU64,
    /// The wait a refused request is told when this node holds no share of the key (no slot
    /// held, or a rate share of 0), in ns: nothing here frees one, the next exchange of demand
    /// may give this node some.
    no_share_wait_ns: AtomicU64,
    /// The cluster's limits are not known here yet (a node started with none of its own, before
    /// it has the cluster's): every key is refused as if it held no share, since any may be
    /// limited.
    unknown: std::sync::atomic::AtomicBool,
}

impl Limiter {
    /// A limiter over `specs` (checked).
    pub fn new(specs: Vec<LimitSpec>) -> Result<Self, SpecError> {
        check(&specs)?;
        Ok(Self::unchecked(specs))
    }

    /// A limiter with no limits yet (every key is allowed until [`Limiter::replace`]).
    pub fn empty() -> Self {
        Self::unchecked(Vec::new())
    }

    fn unchecked(specs: Vec<LimitSpec>) -> Self {
        Self {
            table: RwLock::new(Table {
                specs,
                states: HashMap::new(),
                shares: HashMap::new(),
                default_share: 1.0,
                allotted: HashMap::new(),
                first_use_slots: 1.0,
                made_room_ns: 0,
            }),
            epoch: Instant::now(),
            keys_full: AtomicU64::new(0),
            no_share_wait_ns: AtomicU64::new(DEFAULT_NO_SHARE_WAIT.as_nanos() as u64),
            unknown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Say whether the cluster's limits are still unknown here: while they are, every key is
    /// refused (with the no-share wait), limited or not.
    pub fn set_unknown(&self, unknown: bool) {
        self.unknown.store(unknown, Ordering::Relaxed);
    }

    /// Whether the cluster's limits are still unknown here ([`Limiter::set_unknown`]).
    pub fn unknown(&self) -> bool {
        self.unknown.load(Ordering::Relaxed)
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1_000_000_000_000
    }

    /// The state `key` has now, without making one.
    fn existing(&self, key: &str) -> Option<Arc<State>> {
        self.table.read().ok()?.states.get(key).cloned()
    }

    /// The state of `key`, created on first use; `None` when no limit applies; `Err` for a new
    /// key when the node holds [`MAX_KEYS`] and none can be forgotten.
    #[inline]
    fn state(&self, key: &str) -> Result<Option<Arc<State>>, KeysFull> {
        if let Ok(t) = self.table.read() {
            if let Some(s) = t.states.get(key) {
                return Ok(Some(s.clone()));
            }
        }
        let Ok(mut t) = self.table.write() else { return Ok(None) };
        if let Some(s) = t.states.get(key) {
            return Ok(Some(s.clone()));
        }
        let Some(spec_idx) =
            t.specs.iter().position(|s| s.key == key).or_else(|| t.specs.iter().position(|s| s.matches(key)))
        else {
            return Ok(None);
        };
        if t.states.len() >= MAX_KEYS {
            let now = self.now_ns();
            if now.saturating_sub(t.made_room_ns) < MAKE_ROOM_EVERY_NS {
                return Err(KeysFull);
            }
            t.made_room_ns = now;
            let forgotten = t.forget_rested(now, false);
            tracing::info!(forgotten, kept = t.states.len(), "limit keys at rest forgotten to make room for new keys");
            if t.states.len() >= MAX_KEYS {
                return Err(KeysFull);
            }
        }
        let share = t.shares.get(key).copied().unwrap_or(t.default_share);
        let state = make_state(&t.specs[spec_idx], spec_idx, share);
        if let State::Slots { slots, .. } = &state {
            let limit = t.specs[spec_idx].concurrency.unwrap_or(0);
            let first = ((limit as f64) * t.first_use_slots).floor() as u64;
            slots.set_max(t.allotted.get(key).copied().unwrap_or(first));
        }
        let state = Arc::new(state);
        t.states.insert(key.into(), state.clone());
        Ok(Some(state))
    }

    /// Rate decision on `n` units of `key`. Concurrency keys are handled as
    /// [`Limiter::acquire_slot`].
    #[inline]
    pub fn try_acquire(&self, key: &str, n: u64) -> Decision {
        let state = match self.state(key) {
            Ok(Some(state)) => state,
            Ok(None) if self.unknown() => {
                return Decision::Denied {
                    retry_after: Duration::from_nanos(self.no_share_wait_ns.load(Ordering::Relaxed)),
                }
            }
            Ok(None) => return Decision::Unlimited,
            Err(KeysFull) => {
                self.keys_full.fetch_add(1, Ordering::Relaxed);
                return Decision::TooManyKeys;
            }
        };
        let no_share =
            || Decision::Denied { retry_after: Duration::from_nanos(self.no_share_wait_ns.load(Ordering::Relaxed)) };
        let decision = match &*state {
            // A share of 0 (a node that has not heard the others yet): nothing passes until the
            // exchange gives it one, whatever `n`.
            State::Rate { gcra, .. } if gcra.is_closed() => no_share(),
            State::Rate { gcra, .. } if n > gcra.burst() => Decision::TooLarge { most: gcra.burst(), slots: false },
            State::Rate { gcra, .. } => match gcra.try_acquire(n, self.now_ns()) {
                RateDecision::Allowed => Decision::Allowed,
                RateDecision::Denied { retry_after_ns } => {
                    Decision::Denied { retry_after: Duration::from_nanos(retry_after_ns) }
                }
            },
            State::Slots { slots, .. } => {
                let max = self.table.read().ok().and_then(|t| t.specs.get(state.spec()).and_then(|s| s.concurrency));
                match max {
                    Some(max) if n > max => Decision::TooLarge { most: max, slots: true },
                    _ if slots.try_acquire(n) => Decision::Allowed,
                    // Refused with none held here: a release here cannot help; say when the
                    // slots may have moved here instead of "at once".
                    _ if slots.held() == 0 => no_share(),
                    _ => Decision::Denied { retry_after: Duration::ZERO },
                }
            }
        };
        state.counts().count(decision, n)
    }

    /// The wait told to a refused request when this node holds no share of the key (the
    /// exchange's interval: the share and slots this node may hold are worked out there).
    pub fn set_no_share_wait(&self, wait: Duration) {
        self.no_share_wait_ns.store(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Take `n` concurrency slots of `key` (to be given back with [`Limiter::release`]).
    #[inline]
    pub fn acquire_slot(&self, key: &str, n: u64) -> Decision {
        self.try_acquire(key, n)
    }

    /// Give back `n` slots of `key`; returns how many were held (fewer means a release without
    /// an acquire, which the caller should count).
    pub fn release(&self, key: &str, n: u64) -> u64 {
        match self.existing(key).as_deref() {
            Some(State::Slots { slots, .. }) => slots.release(n),
            _ => 0,
        }
    }

    /// Slots of `key` held on this node.
    pub fn held(&self, key: &str) -> u64 {
        match self.existing(key).as_deref() {
            Some(State::Slots { slots, .. }) => slots.held(),
            _ => 0,
        }
    }

    /// Units asked for so far, per key in use (allowed or not): the demand the node announces.
    pub fn asked(&self) -> Vec<(String, u64)> {
        self.usage().into_iter().map(|u| (u.key, u.allowed + u.denied)).collect()
    }

    /// Counts, share and held slots of every key in use.
    pub fn usage(&self) -> Vec<Usage> {
        let Ok(t) = self.table.read() else { return Vec::new() };
        t.states
            .iter()
            .filter_map(|(key, state)| {
                let spec = t.specs.get(state.spec())?;
                let c = state.counts();
                Some(Usage {
                    key: key.to_string(),
                    limit: spec.key.clone(),
                    state_id: c.id,
                    allowed: c.allowed.load(Ordering::Relaxed),
                    denied: c.denied.load(Ordering::Relaxed),
                    slots: match &**state {
                        State::Slots { slots, .. } => Some((spec.concurrency.unwrap_or(0), slots.held())),
                        State::Rate { .. } => None,
                    },
                    rate_per_sec: spec.rate.map(|r| r as f64 * 1e9 / spec.per.unwrap_or(Per::Second).nanos() as f64),
                    share: t.shares.get(&**key).copied().unwrap_or(t.default_share),
                })
            })
            .collect()
    }

    /// For a concurrency key: set how many slots this node may hold (whole slots, worked out by
    /// the coordination from the node's share and the slots others hold).
    pub fn set_slots(&self, key: &str, max: u64, share: f64) {
        let Ok(mut t) = self.table.write() else { return };
        t.shares.insert(key.into(), share);
        t.allotted.insert(key.into(), max);
        if let Some(State::Slots { slots, .. }) = t.states.get(key).map(|s| &**s) {
            slots.set_max(max);
        }
    }

    /// The cluster-wide number of slots of concurrency key `key`, whether it is in use here or
    /// not; `None` for a key under a rate limit or no limit.
    pub fn slot_limit(&self, key: &str) -> Option<u64> {
        let t = self.table.read().ok()?;
        let spec = t.specs.iter().find(|s| s.key == key).or_else(|| t.specs.iter().find(|s| s.matches(key)))?;
        spec.concurrency.filter(|_| spec.rate.is_none())
    }

    /// The share of a concurrency key's slots a first use takes when the coordination has not
    /// worked out this node's slots of the key (0 while this node has not yet heard the others).
    pub fn set_first_use_slots(&self, share: f64) {
        if let Ok(mut t) = self.table.write() {
            t.first_use_slots = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
        }
    }

    /// A concurrency key another node reports using, for which the coordination has not yet
    /// worked out this node's slots: a first use here takes none until it has (starting from
    /// an equal split could hand out slots the other node holds).
    pub fn hold_first_use(&self, key: &str) {
        let Ok(mut t) = self.table.write() else { return };
        if !t.states.contains_key(key) && !t.allotted.contains_key(key) {
            t.allotted.insert(key.into(), 0);
        }
    }

    /// Set this node's share of `key`'s limit (a fraction between 0 and 1).
    pub fn set_share(&self, key: &str, share: f64) {
        let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
        let Ok(mut t) = self.table.write() else { return };
        t.shares.insert(key.into(), share);
        if let Some(state) = t.states.get(key).cloned() {
            apply_share(&t.specs, &state, share, self.now_ns());
        }
    }

    /// The share given to keys first seen from now on, before their own share is known (the
    /// coordination sets `1/n` for `n` live nodes, so that a new key never starts at the whole
    /// limit on every node).
    pub fn set_default_share(&self, share: f64) {
        if let Ok(mut t) = self.table.write() {
            t.default_share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
        }
    }

    /// Replace the limit definitions (a new revision), all at once: keys keep their state where
    /// their spec is unchanged; a changed concurrency limit keeps the slots held under it (they
    /// are released later); everything else starts afresh on next use.
    pub fn replace(&self, specs: Vec<LimitSpec>) -> Result<(), SpecError> {
        check(&specs)?;
        let Ok(mut t) = self.table.write() else { return Ok(()) };
        let old = std::mem::replace(&mut t.specs, specs);
        let states = std::mem::take(&mut t.states);
        for (key, state) in states {
            let Some(old_spec) = old.get(state.spec()) else { continue };
            let Some(idx) = t.specs.iter().position(|s| s.key == old_spec.key) else { continue };
            let new_spec = &t.specs[idx];
            let share = t.shares.get(&*key).copied().unwrap_or(t.default_share);
            if new_spec == old_spec {
                state.set_spec(idx);
                t.states.insert(key, state);
                continue;
            }
            let State::Slots { slots, .. } = &*state else { continue };
            if new_spec.concurrency.is_none() {
                continue;
            }
            let kept = make_state(new_spec, idx, share);
            if let State::Slots { slots: fresh, .. } = &kept {
                fresh.force_held(slots.held());
            }
            let kept = Arc::new(kept);
            t.states.insert(key, kept);
        }
        Ok(())
    }

    /// Forget the state of keys that made no decision since the previous call and are at rest
    /// (nothing owed, no slot held), and the shares of keys without state: called every few
    /// minutes, it bounds the memory of keys that come and go (one state per concrete key of a
    /// pattern such as `account:*`). Nothing changes for gateways: a key's next use builds a
    /// state equal to the one forgotten. Its counts start again from zero, which readers of
    /// [`Limiter::usage`] take as a restart. Returns how many keys were forgotten.
    pub fn evict_idle(&self) -> usize {
        let now = self.now_ns();
        let Ok(mut t) = self.table.write() else { return 0 };
        t.forget_rested(now, true)
    }

    /// Concrete keys that have state now.
    pub fn keys_in_use(&self) -> usize {
        self.table.read().map(|t| t.states.len()).unwrap_or(0)
    }

    /// Requests refused so far because the node held [`MAX_KEYS`] keys none of which was at
    /// rest ([`Decision::TooManyKeys`]).
    pub fn refused_keys_full(&self) -> u64 {
        self.keys_full.load(Ordering::Relaxed)
    }

    /// The limit definitions in force.
    pub fn specs(&self) -> Vec<LimitSpec> {
        self.table.read().map(|t| t.specs.clone()).unwrap_or_default()
    }
}

/// The limits file (`global/limits.toml` of the configuration repository, or the file given to
/// `switchboard limits set`): `[[limit]]` tables, each a [`LimitSpec`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsDocument {
    #[serde(default, rename = "limit")]
    limits: Vec<LimitSpec>,
}

/// Parse and check a limits file's text.
pub fn parse_document(text: &str) -> Result<Vec<LimitSpec>, String> {
    let doc: LimitsDocument = toml::from_str(text).map_err(|e| {
        // `[limit]` (one table) where the file holds an array of them: say how to write it.
        let hint = if e.to_string().contains("expected a sequence") {
            "\n(each limit is a `[[limit]]` table, with double brackets, even when there is one)"
        } else {
            ""
        };
        format!("not a limits file: {e}{hint}")
    })?;
    check(&doc.limits).map_err(|e| e.to_string())?;
    Ok(doc.limits)
}

/// Check a whole set of limits: each valid, no key twice.
pub fn check(specs: &[LimitSpec]) -> Result<(), SpecError> {
    if specs.len() > MAX_LIMITS {
        return Err(SpecError::TooMany(specs.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for s in specs {
        s.validate()?;
        if !seen.insert(&s.key) {
            return Err(SpecError::Duplicate(s.key.clone()));
        }
    }
    Ok(())
}

fn make_state(spec: &LimitSpec, idx: usize, share: f64) -> State {
    match (spec.rate, spec.concurrency) {
        (Some(rate), _) => {
            let per = spec.per.unwrap_or(Per::Second).nanos();
            let burst = spec.burst_of_share(share);
            State::Rate {
                gcra: Gcra::new(Gcra::interval_for(rate as f64 * share, per), burst),
                spec: AtomicUsize::new(idx),
                counts: Counts::fresh(),
            }
        }
        (None, Some(max)) => State::Slots {
            slots: Slots::new(((max as f64) * share).floor() as u64),
            spec: AtomicUsize::new(idx),
            counts: Counts::fresh(),
        },
        (None, None) => State::Slots { slots: Slots::new(0), spec: AtomicUsize::new(idx), counts: Counts::fresh() },
    }
}

fn apply_share(specs: &[LimitSpec], state: &State, share: f64, now_ns: u64) {
    match state {
        State::Rate { gcra, .. } => {
            let Some(s) = specs.get(state.spec()) else { return };
            let per = s.per.unwrap_or(Per::Second).nanos();
            let burst = s.burst_of_share(share);
            gcra.set(Gcra::interval_for(s.rate.unwrap_or(0) as f64 * share, per), burst, now_ns);
        }
        State::Slots { slots, .. } => {
            let Some(s) = specs.get(state.spec()) else { return };
            slots.set_max(((s.concurrency.unwrap_or(0) as f64) * share).floor() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(key: &str, n: u64) -> LimitSpec {
        LimitSpec { key: key.into(), rate: Some(n), per: Some(Per::Second), concurrency: None, burst: None }
    }

    /// Nodes that each hold a share of one rate limit and are asked all the time, each deciding
    /// alone (as the agents do): no window of one period admits more than
    /// [`LimitSpec::most_per_period`], and a limit of 1 per period on two nodes reaches it.
    #[test]
    fn nodes_deciding_alone_admit_at_most_the_documented_bound() {
        const P: u64 = 1_000_000_000;
        let cases: [(u64, Option<u64>, &[f64]); 6] = [
            (1, None, &[0.5, 0.5]),
            (10, None, &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]),
            (500, None, &[0.7, 0.2, 0.1]),
            (100, Some(10), &[0.98, 0.02]),
            (7, Some(3), &[0.4, 0.35, 0.25]),
            (1000, Some(10), &[0.5, 0.5]),
        ];
        for (r, burst, shares) in cases {
            let spec = LimitSpec { burst, ..rate("k", r) };
            let nodes: Vec<Gcra> = shares
                .iter()
                .map(|&sh| Gcra::new(Gcra::interval_for(r as f64 * sh, P), spec.burst_of_share(sh)))
                .collect();
            let mut passed = Vec::new();
            // Each node asked every 1/4000 of a period, at offsets of its own, for 4 periods.
            for step in 0..16_000u64 {
                for (i, g) in nodes.iter().enumerate() {
                    let now = P + step * (P / 4000) + i as u64 * 7_919;
                    if g.try_acquire(1, now) == gcra::RateDecision::Allowed {
                        passed.push(now);
                    }
                }
            }
            passed.sort_unstable();
            let (mut best, mut lo) = (0, 0);
            for hi in 0..passed.len() {
                while passed[hi] - passed[lo] >= P {
                    lo += 1;
                }
                best = best.max(hi - lo + 1);
            }
            let bound = spec.most_per_period(shares.len()).unwrap_or(0) as usize;
            assert!(best <= bound, "rate {r}, burst {burst:?}, shares {shares:?}: {best} in one period, bound {bound}");
            if r == 1 {
                assert_eq!(best, 2, "one unit per node, whatever its share");
            }
        }
        assert_eq!(rate("k", 1).most_per_period(2), Some(2));
        assert_eq!(rate("k", 1000).most_per_period(3), Some(1011));
        assert_eq!(LimitSpec { burst: Some(10), ..rate("k", 10) }.burst_of_share(0.5), 5);
        assert_eq!(rate("k", 50).burst_of_share(0.1), 1);
    }

    #[test]
    fn patterns_give_each_key_its_own_limit() {
        assert!(glob_match("operator:*", "operator:vodafone"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXc"));
        assert!(!glob_match("operator:*", "customer:x"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
        let l = Limiter::new(vec![rate("operator:*", 100)]).unwrap();
        // Burst 1: the first request of each operator passes, the second at once does not.
        assert_eq!(l.try_acquire("operator:a", 1), Decision::Allowed);
        assert_eq!(l.try_acquire("operator:b", 1), Decision::Allowed);
        assert!(!l.try_acquire("operator:a", 1).is_allowed());
        assert_eq!(l.try_acquire("customer:x", 1), Decision::Unlimited);
    }

    #[test]
    fn more_units_than_the_burst_are_refused_as_such_not_told_to_wait() {
        let mut spec = rate("operator:*", 500);
        spec.burst = Some(5);
        let l = Limiter::new(vec![spec]).unwrap();
        assert_eq!(l.try_acquire("operator:x", 6), Decision::TooLarge { most: 5, slots: false });
        assert!(!Decision::TooLarge { most: 5, slots: false }.is_allowed());
        assert_eq!(l.try_acquire("operator:x", 5), Decision::Allowed);
        assert!(matches!(l.try_acquire("operator:x", 5), Decision::Denied { .. }), "the burst is spent");
        // A request that could never pass is not demand: the 6 and a billion are not counted.
        assert!(matches!(l.try_acquire("operator:x", 1_000_000_000), Decision::TooLarge { .. }));
        let u = &l.usage()[0];
        assert_eq!((u.allowed, u.denied), (5, 5));
        let why = Decision::too_large("operator:x", 6, 5, false);
        assert!(why.contains("n 6") && why.contains("operator:x") && why.contains("(5,"), "{why}");
    }

    #[test]
    fn exact_keys_win_over_patterns() {
        let l = Limiter::new(vec![rate("operator:*", 1), rate("operator:big", 1_000_000)]).unwrap();
        let passed = (0..1000).filter(|_| l.try_acquire("operator:big", 1).is_allowed()).count();
        assert!(passed >= 1000 / 2, "{passed}");
    }

    #[test]
    fn concurrency_acquire_release_and_share() {
        let l = Limiter::new(vec![LimitSpec {
            key: "domain:*".into(),
            rate: None,
            per: None,
            concurrency: Some(20),
            burst: None,
        }])
        .unwrap();
        assert!((0..20).all(|_| l.acquire_slot("domain:x", 1).is_allowed()));
        // Refused while this node holds slots: one of its releases frees one at once.
        assert_eq!(l.acquire_slot("domain:x", 1), Decision::Denied { retry_after: Duration::ZERO });
        assert_eq!(l.release("domain:x", 1), 1);
        assert!(l.acquire_slot("domain:x", 1).is_allowed());
        l.set_share("domain:x", 0.5);
        assert_eq!(l.release("domain:x", 20), 20);
        assert_eq!((0..20).filter(|_| l.acquire_slot("domain:x", 1).is_allowed()).count(), 10);
        assert_eq!(l.release("domain:unknown-to-it", 1), 0);
        // A rate key with a share of 0 (a node that has not heard the others yet) lets nothing
        // pass, whatever n, and says to wait for the exchange, not "never" or centuries.
        let r = Limiter::new(vec![LimitSpec {
            key: "operator:*".into(),
            rate: Some(1000),
            per: None,
            concurrency: None,
            burst: None,
        }])
        .unwrap();
        r.set_default_share(0.0);
        r.set_no_share_wait(Duration::from_millis(250));
        for n in [1, 50] {
            assert_eq!(r.try_acquire("operator:x", n), Decision::Denied { retry_after: Duration::from_millis(250) });
        }
        r.set_share("operator:x", 0.5);
        assert!(r.try_acquire("operator:x", 1).is_allowed(), "a share given, units pass");
        // Refused with none held here (a node not yet given slots of the key): no release here
        // can help, so the wait is the exchange's interval, not zero.
        l.set_no_share_wait(Duration::from_millis(250));
        l.set_slots("domain:y", 0, 0.0);
        assert_eq!(l.acquire_slot("domain:y", 1), Decision::Denied { retry_after: Duration::from_millis(250) });
        // More slots than the whole cluster's limit would never pass: said so, not "wait".
        assert_eq!(l.acquire_slot("domain:x", 21), Decision::TooLarge { most: 20, slots: true });
        assert!(Decision::too_large("domain:x", 21, 20, true).contains("20 slots"));
    }

    #[test]
    fn bad_specs_are_named() {
        let mut s = rate("x", 1);
        s.concurrency = Some(1);
        assert_eq!(Limiter::new(vec![s]).err(), Some(SpecError::Kind("x".into())));
        assert_eq!(Limiter::new(vec![rate("x", 1), rate("x", 2)]).err(), Some(SpecError::Duplicate("x".into())));
        let c = LimitSpec { key: "c".into(), rate: None, per: Some(Per::Hour), concurrency: Some(1), burst: None };
        assert!(matches!(Limiter::new(vec![c]), Err(SpecError::RateFieldOnConcurrency(_))));
        let single = parse_document("[limit]\nkey = \"k\"\nrate = 1\n").unwrap_err();
        assert!(single.contains("`[[limit]]` table, with double brackets"), "{single}");
        let toml_ok: LimitSpec = toml::from_str("key = \"customer:*\"\nrate = 1000000\nper = \"hour\"").unwrap();
        assert_eq!(toml_ok.per, Some(Per::Hour));
        assert!(toml::from_str::<LimitSpec>("key = \"x\"\nrate = 1\nper = \"week\"").is_err());
        assert_eq!(Limiter::new(vec![rate("x", 0)]).err(), Some(SpecError::Zero("x".into())));
        let none = LimitSpec { key: "c".into(), rate: None, per: None, concurrency: Some(0), burst: None };
        assert_eq!(Limiter::new(vec![none]).err(), Some(SpecError::Zero("c".into())));
        let mut no_burst = rate("b", 5);
        no_burst.burst = Some(0);
        assert_eq!(Limiter::new(vec![no_burst]).err(), Some(SpecError::ZeroBurst("b".into())));
        assert_eq!(Limiter::new(vec![rate("a b", 1)]).err(), Some(SpecError::KeyCharacters("a b".into())));
        assert!(Limiter::new(vec![rate("big", MAX_VALUE)]).is_ok());
        let huge = LimitSpec { key: "h".into(), rate: None, per: None, concurrency: Some(u64::MAX), burst: None };
        assert_eq!(Limiter::new(vec![huge]).err(), Some(SpecError::TooLarge("h".into(), "concurrency", u64::MAX)));
        let mut huge_burst = rate("hb", 5);
        huge_burst.burst = Some(MAX_VALUE + 1);
        assert_eq!(
            Limiter::new(vec![huge_burst]).err(),
            Some(SpecError::TooLarge("hb".into(), "burst", MAX_VALUE + 1))
        );
    }

    #[test]
    fn a_new_revision_resets_only_changed_limits() {
        let l = Limiter::new(vec![rate("a", 1), rate("b", 1)]).unwrap();
        assert!(l.try_acquire("a", 1).is_allowed() && l.try_acquire("b", 1).is_allowed());
        l.replace(vec![rate("a", 1), rate("b", 2)]).unwrap();
        assert!(!l.try_acquire("a", 1).is_allowed(), "unchanged limit keeps its state");
        assert!(l.try_acquire("b", 1).is_allowed(), "changed limit starts afresh");
    }

    #[test]
    fn a_changed_concurrency_limit_keeps_the_slots_held_under_it() {
        let conc = |n: u64| LimitSpec { key: "d:*".into(), rate: None, per: None, concurrency: Some(n), burst: None };
        let l = Limiter::new(vec![conc(4)]).unwrap();
        assert!((0..4).all(|_| l.acquire_slot("d:x", 1).is_allowed()));
        l.replace(vec![rate("r", 1), conc(5)]).unwrap();
        assert_eq!(l.held("d:x"), 4, "held slots survive a new revision (and a move in the list)");
        assert!(l.acquire_slot("d:x", 1).is_allowed());
        assert!(!l.acquire_slot("d:x", 1).is_allowed(), "5 held of 5");
        let u = l.usage().into_iter().find(|u| u.key == "d:x").unwrap();
        assert_eq!((u.limit.as_str(), u.slots, u.allowed, u.denied), ("d:*", Some((5, 5)), 1, 1));
        l.replace(vec![rate("r", 1)]).unwrap();
        assert_eq!(l.try_acquire("d:x", 1), Decision::Unlimited, "a removed limit no longer applies");
    }

    #[test]
    fn share_scales_the_rate() {
        let l = Limiter::new(vec![LimitSpec {
            key: "k".into(),
            rate: Some(1000),
            per: Some(Per::Second),
            concurrency: None,
            burst: Some(1000),
        }])
        .unwrap();
        l.set_share("k", 0.25);
        let passed = (0..2000).filter(|_| l.try_acquire("k", 1).is_allowed()).count();
        assert_eq!(passed, 250, "a quarter of the burst passes at once");
        assert_eq!(l.asked(), vec![("k".to_owned(), 2000)], "demand counts every unit asked for");
    }

    #[test]
    fn idle_keys_at_rest_are_forgotten_and_busy_or_owing_ones_kept() {
        let fast = LimitSpec {
            key: "acct:*".into(),
            rate: Some(1_000_000_000),
            per: Some(Per::Second),
            concurrency: None,
            burst: None,
        };
        let slow =
            LimitSpec { key: "day:*".into(), rate: Some(1), per: Some(Per::Hour), concurrency: None, burst: None };
        let conc = LimitSpec { key: "conn:*".into(), rate: None, per: None, concurrency: Some(10), burst: None };
        let l = Limiter::new(vec![fast, slow, conc]).unwrap();
        for i in 0..9_000 {
            assert!(l.try_acquire(&format!("acct:{i}"), 1).is_allowed());
        }
        assert!(l.try_acquire("day:x", 1).is_allowed(), "the day's one unit");
        assert!(l.acquire_slot("conn:x", 1).is_allowed());
        l.set_share("acct:0", 0.5);
        assert_eq!(l.keys_in_use(), 9_002);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.evict_idle(), 0, "the first sweep only marks what it saw");
        assert!(l.try_acquire("acct:1", 1).is_allowed(), "acct:1 stays busy");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.evict_idle(), 8_999, "idle keys at rest go");
        assert_eq!(l.keys_in_use(), 3, "acct:1 (used), day:x (owes its unit) and conn:x (a slot held) stay");
        assert!(!l.try_acquire("day:x", 1).is_allowed(), "a key that owes units is never reset by a sweep");
        assert_eq!(l.usage().iter().find(|u| u.key == "acct:0").map(|u| u.share), None, "its share went with it");
        assert!(l.try_acquire("acct:0", 1).is_allowed(), "a forgotten key starts afresh on its next use");
    }

    #[test]
    fn keys_are_bounded_and_keys_at_rest_make_room() {
        // Keys that owe their unit for an hour fill the table: a new key is refused, counted,
        // and not taken as demand; keys held still decide; a release makes no state.
        let slow =
            LimitSpec { key: "day:*".into(), rate: Some(1), per: Some(Per::Hour), concurrency: None, burst: None };
        let fast = rate("acct:*", 1_000_000_000);
        let l = Limiter::new(vec![slow, fast]).unwrap();
        for i in 0..MAX_KEYS {
            assert!(l.try_acquire(&format!("day:{i}"), 1).is_allowed());
        }
        assert_eq!(l.try_acquire("day:new", 1), Decision::TooManyKeys);
        assert_eq!(l.try_acquire("acct:new", 1), Decision::TooManyKeys, "refused without a walk within a second");
        assert!(matches!(l.try_acquire("day:7", 1), Decision::Denied { .. }), "a key held decides as before");
        assert_eq!(l.try_acquire("nobody:limits:this", 1), Decision::Unlimited, "a key no limit applies to");
        assert_eq!(l.release("day:new", 1), 0);
        assert_eq!(l.held("acct:other"), 0);
        assert_eq!((l.keys_in_use(), l.refused_keys_full()), (MAX_KEYS, 2));
        assert!(l.usage().iter().all(|u| u.key != "day:new" && u.key != "acct:new"));

        // Keys at rest (units paid back within a nanosecond) are forgotten at once to make room.
        let l = Limiter::new(vec![rate("acct:*", 1_000_000_000)]).unwrap();
        for i in 0..MAX_KEYS {
            assert!(l.try_acquire(&format!("acct:{i}"), 1).is_allowed());
        }
        std::thread::sleep(Duration::from_millis(2));
        assert!(l.try_acquire("acct:new", 1).is_allowed(), "room was made");
        assert_eq!((l.keys_in_use(), l.refused_keys_full()), (1, 0));
    }
}
