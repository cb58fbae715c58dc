//! Messages refused from the bus: counted by reason, logged at a rate limit.
//!
//! Every check that drops what a peer sent calls [`refuse`] with a [`Reason`]; `/metrics` of every
//! long-running process shows `switchboard_bus_refused_total{reason}` ([`render`]), and the log
//! gets at most one `WARN` per reason per [`LOG_EVERY`], with the count since the last one. What
//! zenoh's access control drops is counted as [`Reason::AccessDenied`] by [`AccessDeniedLayer`],
//! which watches zenoh's own decisions. The reasons are documented in `docs/security.md`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::http::Metrics;
use crate::throttle::Throttle;

/// At most one log line per reason this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

macro_rules! reasons {
    ($($variant:ident => $label:literal: $doc:literal,)*) => {
        /// Why a message from the bus was refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $(#[doc = $doc] $variant,)*
        }
        impl Reason {
            /// Every reason, in the order of the metric's series.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];
            /// The metric's `reason` label.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $label,)* }
            }
        }
    };
}

reasons! {
    AccessDenied => "access_denied": "The access policy does not allow the sender's identity this message.",
    NotAMember => "not_a_member": "A link whose certificate the cluster's CA signed, for an identity not in the members file: everything it sends is dropped (counted once per link, not per message).",
    WatermarkNotLive => "watermark_not_live": "A watermark from a collector that is not live.",
    WatermarkNotWriter => "watermark_not_writer": "A watermark of the current epoch from another collector than its writer.",
    WatermarkStale => "watermark_stale": "A watermark of an older epoch: a replaced writer's.",
    WatermarkAhead => "watermark_ahead": "A watermark beyond what the agent published on the stream.",
    WatermarkInvalid => "watermark_invalid": "A watermark document that does not parse (version, JSON, field types).",
    ReplicaOwnRecord => "replica_own_record": "A replica batch carrying a record the receiver owns.",
    ReplicaInvalid => "replica_invalid": "A replica batch that does not parse or is out of bounds.",
    RestoreInvalid => "restore_invalid": "A DLR restore query for a name that is not another live agent or with a cursor that does not parse, or a restore page that does not parse, is out of bounds or carries records of another owner.",
    LookupReplyInvalid => "lookup_reply_invalid": "A reply to a DLR lookup that cannot be what it says: its body names another node than its key, it is in the asking node's own name, for another record than the one asked, an owner's reply for a record another node owns, a copy's of the replier's own record, or an ask-stream answer on another node's key than the one asked.",
    ReportInvalid => "report_invalid": "A DLR report over the bus that the HTTP API would refuse.",
    ReportLate => "report_late": "A DLR report for one of this node's records read after its `answer_by` (this node was hung or slow) whose first copy a reporter closed first (or whose holder did not answer): not taken, the reporting gateway handles the DLR.",
    ConfigInvalid => "config_invalid": "A configuration revision or file content that does not parse, validate or match its hash.",
    CounterInvalid => "counter_invalid": "A demand document out of bounds or under another node's key.",
    HeadNotLive => "head_not_live": "Heads from a node that is not live.",
    HeadInvalid => "head_invalid": "Heads that do not parse or are out of bounds.",
    ReplayRange => "replay_range": "A replay query whose range is inverted or too long.",
    StreamsTooMany => "streams_too_many": "A log batch that would open more streams of one node than a collector keeps (1,024).",
    TlsHandshake => "tls_handshake": "A link whose TLS handshake failed on a certificate: the peer sent none or one the cluster's CA did not sign, or refused this process's (it trusts another CA).",
    TlsIncomplete => "tls_incomplete": "A connection to a tls/ listener that closed, timed out, sent what is not TLS or an alert other than a certificate's before its handshake completed, was ended to make room for a newer one (256 in progress at a listener), or came past the bounds of its host (16 in progress, 16 started a second after a burst of 32).",
}

const N: usize = Reason::ALL.len();

static COUNTS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Per reason: when it was last logged, and how many went unlogged since.
static LOGGED: Mutex<[Throttle; N]> = Mutex::new([Throttle::new(LOG_EVERY); N]);

/// The same for the other lines of zenoh's listeners said again here (an error of the socket
/// itself, such as running out of file descriptors, which its loop meets ten times a second).
static LISTENER_LOGGED: Mutex<Throttle> = Mutex::new(Throttle::new(LOG_EVERY));

/// Say `line` of a listener at `WARN`, at most once per [`LOG_EVERY`].
fn listener_warning(line: &str) {
    let Some(before) = LISTENER_LOGGED.lock().ok().and_then(|mut t| t.admit()) else { return };
    tracing::warn!(unlogged_since_last_line = before, "{line}");
}

fn index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

/// Count a refusal and log it (at most once per reason per [`LOG_EVERY`]).
pub fn refuse(reason: Reason, detail: impl fmt::Display) {
    let i = index(reason);
    COUNTS[i].fetch_add(1, Ordering::Relaxed);
    let Some(before) = LOGGED.lock().ok().and_then(|mut logged| logged[i].admit()) else { return };
    tracing::warn!(reason = reason.as_str(), refused_since_last_line = before, "refused from the bus: {detail}");
}

/// How many messages were refused for `reason` since the process started.
pub fn count(reason: Reason) -> u64 {
    COUNTS[index(reason)].load(Ordering::Relaxed)
}

/// Whether this process runs the bus with mutual TLS (set by [`crate::session::open`]).
static TLS: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_tls(on: bool) {
    TLS.store(on, Ordering::Relaxed);
}

/// The key prefix of this process's cluster (`sb/<cluster>`), for [`is_declaration_interest`].
static PREFIX: Mutex<String> = Mutex::new(String::new());

pub(crate) fn set_prefix(prefix: &str) {
    if let Ok(mut p) = PREFIX.lock() {
        prefix.clone_into(&mut p);
    }
}

/// Whether a denial is of zenoh's interest in declarations on a key that is only put and
/// subscribed to (no process answers queries there). zenoh checks that interest, which a
/// process sends as it declares a publisher or subscriber and as links come up, as a `Query`
/// (`unauthorized to Query (ingress) on <prefix>/head`), and the declarations sent back for it
/// as a `Reply` on the declared key, so a healthy cluster would count a burst of them at every
/// start and at every command-line session. What such a message could ask, no one answers, and
/// a reply there answers no one's query: not a refusal worth counting.
fn is_declaration_interest(message: &str) -> bool {
    let Some((_, key)) = message
        .split_once("unauthorized to Query (ingress) on ")
        .or_else(|| message.split_once("unauthorized to Reply (ingress) on "))
    else {
        return false;
    };
    let key = key.split_whitespace().next().unwrap_or_default();
    let Ok(prefix) = PREFIX.lock() else { return false };
    let Some(rest) = key.strip_prefix(prefix.as_str()).and_then(|r| r.strip_prefix('/')) else { return false };
    crate::keys::PUT_ONLY.iter().any(|k| rest == *k || rest.strip_prefix(k).is_some_and(|r| r.starts_with('/')))
}

/// Whether the bus runs with mutual TLS.
pub fn tls() -> bool {
    TLS.load(Ordering::Relaxed)
}

/// `switchboard_bus_tls` and `switchboard_bus_refused_total{reason}`.
pub fn render(m: &mut Metrics) {
    m.gauge(
        "switchboard_bus_tls",
        "1 when the bus runs with mutual TLS, 0 on plain TCP.",
        if tls() { 1.0 } else { 0.0 },
    );
    m.counter_series(
        "switchboard_bus_refused_total",
        "Messages from the bus refused, by reason (docs/security.md).",
        Reason::ALL.iter().map(|r| (vec![("reason", r.as_str().to_owned())], count(*r) as f64)),
    );
}

/// Where zenoh logs its access-control decisions.
pub const ZENOH_ACCESS_CONTROL: &str = "zenoh::net::routing::interceptor::access_control";
/// Where zenoh's QUIC listener logs a link it could not accept (at `WARN`, every one: the log
/// filter of a process holds these back, and [`AccessDeniedLayer`] logs them instead).
pub const ZENOH_QUIC_ACCEPT: &str = "zenoh_link_commons::quic::unicast";
/// Where zenoh's TLS-over-TCP listener logs one (at `WARN`: `Can not accept TLS connection from
/// <peer>: <why>`, or zenoh's hint for an error of the socket itself; its other lines at `DEBUG`).
pub const ZENOH_TLS_ACCEPT: &str = "zenoh_link_tls::unicast";

/// A `tracing` layer that counts what zenoh refuses for the policy: access-control denials as
/// [`Reason::AccessDenied`] (a `TRACE` event of [`ZENOH_ACCESS_CONTROL`] for each decision), and
/// links whose handshake failed on the peer's certificate as [`Reason::TlsHandshake`]. Give it
/// its filter ([`AccessDeniedLayer::filter`]) so that nothing else reaches it.
#[derive(Debug, Default)]
pub struct AccessDeniedLayer;

impl AccessDeniedLayer {
    /// The per-layer filter: those events only (every other call site of the program stays
    /// disabled for this layer, so it costs nothing elsewhere).
    pub fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new()
            .with_target(ZENOH_ACCESS_CONTROL, tracing::Level::TRACE)
            .with_target(ZENOH_QUIC_ACCEPT, tracing::Level::WARN)
            .with_target(ZENOH_TLS_ACCEPT, tracing::Level::DEBUG)
    }
}

/// zenoh's hint on every link its listeners could not accept, whatever the cause.
const OPEN_FILES_HINT: &str = " Hint: increase the system open file limit";

/// zenoh's line (logged at `target`) for a link it could not accept, when the cause is a
/// certificate (the peer sent none or a foreign CA's, or refused this process's with a fatal
/// alert): the line without zenoh's hint about open files, which does not apply.
fn handshake_refused<'m>(target: &str, message: &'m str) -> Option<&'m str> {
    let accept = message.contains("QUIC acceptor failed") || tls_accept_failed(target, message);
    // The peer's certificate refused here, or this process's refused by the peer with a
    // certificate's alert (`BadCertificate`, `UnknownCA`, `CertificateExpired`, ...;
    // `DecryptError` from a peer whose CA has this one's name but another key); not any other
    // alert an outsider may send.
    let lower = message.to_ascii_lowercase();
    let certificate = lower.contains("certificate")
        || (lower.contains("fatal alert") && (lower.contains("unknownca") || lower.contains("decrypterror")));
    (accept && certificate).then(|| message.split(OPEN_FILES_HINT).next().unwrap_or(message))
}

/// Whether a line of the `tls/` listener is a handshake it could not complete: the listener's
/// line for one that failed, timed out or was one too many (`Can not accept TLS connection from
/// <peer>: <why>`; bus/patched/zenoh-link-tls).
fn tls_accept_failed(target: &str, message: &str) -> bool {
    target == ZENOH_TLS_ACCEPT && message.starts_with("Can not accept TLS connection from ")
}

/// The zenoh id of a new link's peer that matched no subject of the policy, from zenoh's line
/// (`<zid> did not match any configured ACL subject. Default permission ...`).
fn not_a_member(message: &str) -> Option<&str> {
    let (zid, _) = message.split_once(" did not match any configured ACL subject")?;
    Some(zid.trim()).filter(|z| !z.is_empty() && !z.contains(' '))
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// The text of an event's message.
pub(crate) fn message_of(event: &tracing::Event<'_>) -> String {
    let mut m = Message(String::new());
    event.record(&mut m);
    m.0
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessDeniedLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if !tls() {
            return;
        }
        let m = Message(message_of(event));
        let target = event.metadata().target();
        if target == ZENOH_QUIC_ACCEPT || target == ZENOH_TLS_ACCEPT {
            match handshake_refused(target, &m.0) {
                Some(line) => refuse(Reason::TlsHandshake, line),
                // A handshake that never completed (or one too many at once): counted and logged
                // at the rate limit, however many connections an outsider opens.
                None if tls_accept_failed(target, &m.0) => refuse(Reason::TlsIncomplete, m.0),
                // Held back from the log with the refusals: said here, as zenoh would have.
                // (At most a line every LOG_EVERY: an error of the socket repeats ten times a second.)
                None if *event.metadata().level() <= tracing::Level::WARN => listener_warning(&m.0),
                None => {}
            }
            return;
        }
        // A link whose identity no subject of the policy names: zenoh drops all it sends under
        // the default permission, without a decision to count per message.
        // (An `INFO` line: the decisions per message are `TRACE`, and are not scanned for it.)
        if let Some(zid) = (*event.metadata().level() == tracing::Level::INFO).then(|| not_a_member(&m.0)).flatten() {
            refuse(
                Reason::NotAMember,
                format_args!(
                    "a process (zenoh id {zid}) linked with a certificate of the cluster's CA whose identity is \
                     not in the members file: everything it sends is dropped (docs/security.md, \"Identities \
                     and certificates\")"
                ),
            );
            return;
        }
        // Only what arrives: a process's own messages out are never filtered (see `access`).
        if m.0.contains("is unauthorized") && m.0.contains("(ingress)") {
            if is_declaration_interest(&m.0) {
                return;
            }
            refuse(Reason::AccessDenied, m.0);
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_handshake_refused_for_its_certificate_is_told_from_other_accept_errors() {
        let none = r#"QUIC acceptor failed: TransportError(Error { code: Code::crypto(2a), frame: None, reason: "peer sent no certificates" }) Hint: increase the system open file limit."#;
        let quic = ZENOH_QUIC_ACCEPT;
        assert_eq!(handshake_refused(quic, none).map(|l| l.ends_with("certificates\" })")), Some(true));
        let foreign = r#"QUIC acceptor failed: TransportError(Error { code: Code::crypto(2a), frame: None, reason: "invalid peer certificate: BadSignature" }) Hint: increase the system open file limit."#;
        assert!(handshake_refused(quic, foreign).is_some());
        // The tls/ listener's own line: the peer sent no certificate or a foreign CA's, or
        // refused this process's (a fatal alert).
        let tls = ZENOH_TLS_ACCEPT;
        let from = "Can not accept TLS connection from 127.0.0.1:5";
        for cause in [
            "peer sent no certificates",
            "invalid peer certificate: UnknownIssuer",
            "received fatal alert: DecryptError",
            "received fatal alert: UnknownCA",
            "received fatal alert: BadCertificate",
        ] {
            let line = format!("{from}: {cause}");
            assert_eq!(handshake_refused(tls, &line), Some(line.as_str()));
        }
        // A handshake that did not complete, or one too many: counted apart.
        for cause in [
            "tls handshake eof",
            "timeout during TLS handshake",
            "received corrupt message of type InvalidContentType",
            "16 TLS handshakes in progress from that host (at most 16)",
            "more TLS handshakes from that host than 16 a second (after a burst of 32)",
            "received fatal alert: HandshakeFailure",
            "received fatal alert: ProtocolVersion",
        ] {
            let line = format!("{from}: {cause}");
            assert!(handshake_refused(tls, &line).is_none(), "{line}");
            assert!(tls_accept_failed(tls, &line), "{line}");
        }
        assert!(!tls_accept_failed(quic, &format!("{from}: tls handshake eof")));
        // The listener failing to start is not a connection refused.
        assert!(!tls_accept_failed(tls, "Can not accept TLS connections: Bad file descriptor (os error 9)"));
        // Not an accept: a line of the tls/ listener that speaks of certificates otherwise.
        let expiry = "Cannot monitor expiration for TLS link: client does not have certificates";
        assert!(handshake_refused(tls, expiry).is_none() && !tls_accept_failed(tls, expiry));
        // A link that timed out (a process resumed after a stop), or running out of files.
        let hint = " Hint: increase the system open file limit.";
        assert!(handshake_refused(quic, &format!("QUIC acceptor failed: TimedOut{hint}")).is_none());
        let files = format!("Too many open files (os error 24).{hint}");
        assert!(handshake_refused(tls, &files).is_none() && handshake_refused(quic, &files).is_none());
    }

    #[test]
    fn interest_in_declarations_on_put_only_keys_is_told_from_a_query() {
        set_prefix("sb/t");
        let denied = |what: &str, key: &str| {
            format!("a1b2 on Interface(lo)+CertCommonName(agent:gw1) is unauthorized to {what} (ingress) on {key}")
        };
        for key in ["sb/t/head", "sb/t/stream", "sb/t/dlr/answer/gw1.5c0f", "sb/t/config/push", "sb/t/watermark/c1/gw2"]
        {
            assert!(is_declaration_interest(&denied("Query", key)), "{key}");
            assert!(is_declaration_interest(&denied("Reply", key)), "{key}");
        }
        for key in
            ["sb/t/replay/gw1/log/app", "sb/t/dlr/id/c/1", "sb/t/headx", "sb/other/head", "sb/t/config/object/gw1/x"]
        {
            assert!(!is_declaration_interest(&denied("Query", key)), "{key}");
            assert!(!is_declaration_interest(&denied("Reply", key)), "{key}");
        }
        assert!(!is_declaration_interest(&denied("Put", "sb/t/head")));
        assert!(!is_declaration_interest(&denied("Delete", "sb/t/head")));
    }

    use super::*;

    #[test]
    fn every_reason_is_documented() {
        let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md");
        let text = std::fs::read_to_string(&doc).unwrap();
        for r in Reason::ALL {
            assert!(text.contains(&format!("| `{}` |", r.as_str())), "{} has no row in docs/security.md", r.as_str());
        }
    }

    #[test]
    fn a_link_of_no_member_is_read_from_zenohs_line() {
        let line = "d70f5a1b did not match any configured ACL subject. Default permission `Deny` will be applied on \
                    all messages";
        assert_eq!(not_a_member(line), Some("d70f5a1b"));
        assert_eq!(not_a_member("d70f5a1b on Interface(lo) is unauthorized to Put (ingress) on sb/t/head"), None);
    }

    #[test]
    fn refusals_are_counted_by_reason_and_rendered() {
        let before = count(Reason::ReplayRange);
        refuse(Reason::ReplayRange, "from=9;to=1");
        refuse(Reason::ReplayRange, "from=9;to=1");
        assert_eq!(count(Reason::ReplayRange), before + 2);
        let mut m = Metrics::new();
        render(&mut m);
        let text = m.finish();
        assert!(text.contains("switchboard_bus_refused_total{reason=\"replay_range\"}"), "{text}");
        assert!(text.contains("switchboard_bus_tls 0"), "{text}");
    }
}
