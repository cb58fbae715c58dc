//! A `connect` endpoint this process cannot reach, said at `WARN` with zenoh's reason.
//!
//! zenoh retries a configured endpoint that fails (refused, unreachable, a TLS handshake that
//! fails on a certificate) about once a second and says why only at `DEBUG`, so a process whose
//! CA is not the cluster's, or whose `connect` names a wrong port, looked healthy in its own log
//! while it stayed alone. [`ConnectFailureLayer`] watches zenoh's lines for it: the first failure
//! of an endpoint is logged at once, the next ones at most once per [`LOG_EVERY`] with their
//! count (a link that comes and goes too: the count carries over its ups), and a link that comes
//! up after a failure that was said is said at `INFO`. An endpoint an agent only
//! remembered from the cluster's last view ([`remembered`]) is said at `INFO`: its process may
//! have been stopped on purpose. `/metrics` shows
//! `switchboard_bus_connect_failures_total` ([`render`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::http::Metrics;
use crate::throttle::Throttle;

/// At most one line per endpoint this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Where zenoh logs its attempts to open links to the `connect` endpoints.
pub const ZENOH_ORCHESTRATOR: &str = "zenoh::net::runtime::orchestrator";

/// Endpoints followed at most (they come from the process's own `connect` list).
const MAX_ENDPOINTS: usize = 64;

static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Whether this process is a command-line tool, which tries its endpoints only until its own
/// timeout (see [`short_lived`]).
static SHORT_LIVED: AtomicBool = AtomicBool::new(false);

/// Say that this process is a command-line tool: its lines then say that it tries again until
/// the command gives up, not that it retries every second (for good, as a long-running process
/// does).
pub fn short_lived() {
    SHORT_LIVED.store(true, Ordering::Relaxed);
}

/// How the lines end: what the process does next about a failed endpoint.
fn retrying() -> &'static str {
    if SHORT_LIVED.load(Ordering::Relaxed) {
        "trying again while the command runs"
    } else {
        "retrying every second"
    }
}

/// Per endpoint that failed: its log throttle, kept while it is up (a link that comes and goes
/// is said once a minute, not at each fall), whether a failure was said since it was last up
/// (its coming up is said only then), and zenoh's reason while its last attempt failed.
static FAILING: Mutex<BTreeMap<String, Failing>> = Mutex::new(BTreeMap::new());

/// What is kept of an endpoint that failed (see [`FAILING`]).
struct Failing {
    throttle: Throttle,
    said: bool,
    why: Option<String>,
}

/// Endpoints connected to because the cluster's last view named them (an agent's `bus.peers`),
/// not because the configuration does.
static REMEMBERED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Note `endpoints` as remembered from the cluster's last view, not configured: a failure to
/// reach one (a process stopped on purpose, say) is said at `INFO`, not `WARN`.
pub fn remembered(endpoints: &[String]) {
    if let Ok(mut r) = REMEMBERED.lock() {
        r.extend(endpoints.iter().take(MAX_ENDPOINTS).cloned());
    }
}

/// A `tracing` layer that turns zenoh's `DEBUG` lines about a `connect` endpoint it cannot reach
/// into a warning (see the module documentation). Install it with its filter
/// ([`ConnectFailureLayer::filter`]).
#[derive(Debug, Default)]
pub struct ConnectFailureLayer;

impl ConnectFailureLayer {
    /// The per-layer filter: zenoh's connection attempts only.
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new().with_target(ZENOH_ORCHESTRATOR, tracing::Level::DEBUG)
    }
}

/// What a line of zenoh's says about a `connect` endpoint.
#[derive(Debug, PartialEq, Eq)]
enum Attempt<'m> {
    Failed { endpoint: &'m str, why: String },
    Connected { endpoint: &'m str },
}

/// Read zenoh's line: `Unable to connect to configured peer <endpoint>! <why>. Retry in <d>.`
/// (or without the retry), or `Successfully connected to configured peer <endpoint>`.
fn attempt(message: &str) -> Option<Attempt<'_>> {
    if let Some(endpoint) = message.strip_prefix("Successfully connected to configured peer ") {
        return Some(Attempt::Connected { endpoint: endpoint.trim() });
    }
    let rest = message.strip_prefix("Unable to connect to configured peer ")?;
    let (endpoint, why) = rest.split_once("! ")?;
    let why = why.rsplit_once(". Retry in ").map_or(why, |(why, _)| why);
    // zenoh's errors say where in its source they were made (` at <file>.rs:<line>.`), at their
    // end and inside brackets too: not the problem.
    let why = crate::session::without_source_location(why);
    Some(Attempt::Failed { endpoint, why: why.trim_end_matches('.').to_owned() })
}

/// What an operator can do about `why`, when it is a certificate.
fn hint(why: &str) -> &'static str {
    let lower = why.to_ascii_lowercase();
    if lower.contains("invalid peer certificate") {
        "; the peer's certificate is not signed by this process's [bus.tls] ca, or has expired: \
         every process must trust the cluster's CA (docs/security.md)"
    } else if lower.contains("alert") {
        "; the peer refused this process's certificate: check that it was issued by the cluster's \
         CA (`switchboard certs show --ca`, docs/security.md)"
    } else if lower.contains("early eof") {
        "; the peer closed the link before the bus's handshake: a peer listening with TLS does so \
         to a plain tcp/ link (give this process [bus.tls] and tls/ endpoints, docs/security.md), \
         and so does a port that is not a bus endpoint (an HTTP port, say: check the port)"
    } else {
        ""
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ConnectFailureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        match attempt(&crate::refusals::message_of(event)) {
            Some(Attempt::Failed { endpoint, why }) => failed(endpoint, &why),
            Some(Attempt::Connected { endpoint }) => connected(endpoint),
            None => {}
        }
    }
}

fn failed(endpoint: &str, why: &str) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    let Ok(mut failing) = FAILING.lock() else { return };
    if !failing.contains_key(endpoint) && failing.len() >= MAX_ENDPOINTS {
        return;
    }
    let entry = failing.entry(endpoint.to_owned()).or_insert(Failing {
        throttle: Throttle::new(LOG_EVERY),
        said: false,
        why: None,
    });
    entry.why = Some(why.to_owned());
    let Some(unsaid) = entry.throttle.admit() else { return };
    entry.said = true;
    if REMEMBERED.lock().is_ok_and(|r| r.contains(endpoint)) {
        tracing::info!(
            failed_since_last_line = unsaid,
            "bus: cannot connect to {endpoint} (a process of the cluster's last view, from bus.peers): {why}; {}",
            retrying()
        );
    } else {
        tracing::warn!(
            failed_since_last_line = unsaid,
            "bus: cannot connect to {endpoint} (in `connect`): {why}{}; {}",
            hint(why),
            retrying()
        );
    }
}

fn connected(endpoint: &str) {
    let Ok(mut failing) = FAILING.lock() else { return };
    let Some(entry) = failing.get_mut(endpoint) else { return };
    entry.why = None;
    if std::mem::take(&mut entry.said) {
        tracing::info!("bus: connected to {endpoint} after failed attempts");
    }
}

/// The `connect` endpoints whose last attempt failed, each as `<endpoint>: <zenoh's reason>` and
/// what to do about it: for a command-line tool that reached no process, which says why.
pub fn failing_now() -> Vec<String> {
    let Ok(failing) = FAILING.lock() else { return Vec::new() };
    failing.iter().filter_map(|(e, f)| f.why.as_deref().map(|why| format!("{e}: {why}{}", hint(why)))).collect()
}

/// What to say of `endpoints` this process has no link to and no failure of: something there
/// took the connection but never finished the bus's handshake.
pub fn silent(endpoints: &[String]) -> Vec<String> {
    let failing: BTreeSet<String> = FAILING
        .lock()
        .map(|f| f.iter().filter(|(_, f)| f.why.is_some()).map(|(e, _)| e.clone()).collect())
        .unwrap_or_default();
    endpoints
        .iter()
        .filter(|e| !failing.contains(*e))
        .map(|e| {
            format!(
                "{e}: no answer to the bus's handshake (something there takes connections but does not answer: a \
                 process that is stopped (SIGSTOP) or hung, or a port that is not a bus endpoint)"
            )
        })
        .collect()
}

/// Failed attempts to open a link to a `connect` endpoint since the process started.
pub fn count() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// `switchboard_bus_connect_failures_total`.
pub fn render(m: &mut Metrics) {
    m.counter(
        "switchboard_bus_connect_failures_total",
        "Failed attempts to open a link to an endpoint of `connect` (zenoh retries about once a second; \
         the log says why).",
        count(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zenohs_lines_about_connect_endpoints_are_read() {
        let tls = "Unable to connect to configured peer tls/127.0.0.1:17801! Can not create a new TLS link bound to \
                   IpAddress(V4(Ipv4Addr([127, 0, 0, 1]))): invalid peer certificate: BadSignature at \
                   bus/patched/zenoh-link-tls/src/unicast.rs:692.. Retry in 100ms.";
        let Some(Attempt::Failed { endpoint, why }) = attempt(tls) else { panic!("not read: {tls}") };
        assert_eq!(endpoint, "tls/127.0.0.1:17801");
        assert!(why.ends_with("invalid peer certificate: BadSignature"), "{why}");
        assert!(hint(&why).contains("[bus.tls] ca"));
        let refused = "Unable to connect to configured peer tcp/127.0.0.1:9! Can not create a new TCP link bound to \
                       127.0.0.1:9: Connection refused (os error 111) at io/zenoh-links/zenoh-link-tcp/src/unicast.rs:\
                       324.. Retry in 1s.";
        let Some(Attempt::Failed { why, .. }) = attempt(refused) else { panic!("not read: {refused}") };
        assert!(why.ends_with("Connection refused (os error 111)"), "{why}");
        assert_eq!(hint(&why), "");
        // zenoh 1.10's own form, with a location inside brackets too: both are left out of what
        // is said and kept.
        let _alone = alone();
        let nested = "Unable to connect to configured peer tcp/127.0.0.1:8! Can not create a new TCP link bound to \
                      tcp/127.0.0.1:8: [127.0.0.1:8: Connection refused (os error 111) at /src/zenoh-link-commons-1.10.2/\
                      src/tcp.rs:105.] at /src/zenoh-link-commons-1.10.2/src/tcp.rs:133. Retry in 1s.";
        let Some(Attempt::Failed { endpoint, why }) = attempt(nested) else { panic!("not read: {nested}") };
        levels_logged(|| failed(endpoint, &why));
        assert_eq!(
            failing_now(),
            ["tcp/127.0.0.1:8: Can not create a new TCP link bound to tcp/127.0.0.1:8: [127.0.0.1:8: Connection \
              refused (os error 111)]"]
        );
        // A plain tcp/ link to a TLS listener: the listener drops it during the handshake.
        let plain = "Unable to connect to configured peer tcp/127.0.0.1:21050! Read error on TCP link \
                     127.0.0.1:44386 => 127.0.0.1:21050: early eof. Retry in 1s.";
        let Some(Attempt::Failed { why, .. }) = attempt(plain) else { panic!("not read: {plain}") };
        assert!(hint(&why).contains("[bus.tls] and tls/ endpoints"), "{why}");
        assert_eq!(
            attempt("Successfully connected to configured peer tls/127.0.0.1:17801"),
            Some(Attempt::Connected { endpoint: "tls/127.0.0.1:17801" })
        );
        for other in ["Try to connect: tls/127.0.0.1:17801: global timeout", "Unable to connect to configured peer x"] {
            assert_eq!(attempt(other), None, "{other}");
        }
    }

    /// The tests share the process's state: one at a time, each from no failing endpoint.
    fn alone() -> std::sync::MutexGuard<'static, ()> {
        static ONE: Mutex<()> = Mutex::new(());
        let guard = ONE.lock().unwrap_or_else(|p| p.into_inner());
        FAILING.lock().unwrap().clear();
        guard
    }

    /// The levels of the lines `f` logs.
    fn levels_logged(f: impl FnOnce()) -> Vec<tracing::Level> {
        use tracing_subscriber::layer::SubscriberExt as _;
        struct Levels(std::sync::Arc<Mutex<Vec<tracing::Level>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Levels {
            fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                self.0.lock().unwrap().push(*event.metadata().level());
            }
        }
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Levels(seen.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let levels = seen.lock().unwrap().clone();
        levels
    }

    #[test]
    fn a_remembered_endpoint_is_said_at_info_a_configured_one_at_warn() {
        let _alone = alone();
        remembered(&["tcp/127.0.0.1:7".to_owned()]);
        let levels = levels_logged(|| {
            failed("tcp/127.0.0.1:7", "Connection refused");
            failed("tcp/127.0.0.1:8", "Connection refused");
            // Within the minute: counted, not said again.
            failed("tcp/127.0.0.1:8", "Connection refused");
        });
        assert_eq!(levels, [tracing::Level::INFO, tracing::Level::WARN]);
    }

    #[test]
    fn failures_are_counted_and_the_endpoints_followed_are_bounded() {
        let _alone = alone();
        let before = count();
        for i in 0..MAX_ENDPOINTS + 10 {
            failed(&format!("tcp/127.0.0.1:{i}"), "Connection refused");
        }
        assert_eq!(count(), before + MAX_ENDPOINTS as u64 + 10);
        assert!(FAILING.lock().unwrap().len() <= MAX_ENDPOINTS);
    }

    #[test]
    fn a_link_that_comes_and_goes_is_said_once_a_minute_with_its_coming_up() {
        let _alone = alone();
        let levels = levels_logged(|| {
            for _ in 0..20 {
                failed("tcp/127.0.0.1:9", "Transport with peer is closed");
                connected("tcp/127.0.0.1:9");
            }
        });
        assert_eq!(levels, [tracing::Level::WARN, tracing::Level::INFO], "the first fall and rise only");
        // Up without a failure said: nothing to say.
        assert!(levels_logged(|| connected("tcp/127.0.0.1:10")).is_empty());
    }

    #[test]
    fn the_endpoints_failing_now_are_listed_with_what_to_do() {
        let _alone = alone();
        levels_logged(|| {
            failed("tcp/127.0.0.1:11", "Read error on TCP link 127.0.0.1:5 => 127.0.0.1:11: early eof");
            failed("tcp/127.0.0.1:12", "Connection refused (os error 111)");
            connected("tcp/127.0.0.1:12");
        });
        let now = failing_now();
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(now[0].starts_with("tcp/127.0.0.1:11: Read error") && now[0].contains("tls/ endpoints"), "{now:?}");
    }
}
