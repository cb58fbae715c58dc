//! Links this process opens to a peer again, where zenoh would not.
//!
//! zenoh dials again, after a link drops, only the endpoints of a process's own `connect` list.
//! A link it opened because gossip named the peer stays down until gossip names that peer again,
//! which it does only when the peer links to a common process anew: two agents whose direct link
//! broke (a reset connection, a stall past the lease) while both kept their collector link stay
//! apart. [`Links`] keeps the handle of this process's zenoh runtime so that the mesh check
//! ([`crate::mesh`]) can dial such a peer at the [`Address`] it last gave for itself.
//!
//! A link can also be open while the peer's declarations (its liveliness token, subscribers,
//! queryables) never arrived over it: a process paused for about the lease comes back with its
//! old transport to a peer still open, while the peer, which gave it up, opened a new one; zenoh
//! adds the peer's new link to the old transport and never declares anything on it again, and
//! the peer never sees the paused process's token. [`Links::dial`] of a process whose token is
//! not seen here although a link to it is open shuts that link's TCP connections down (this
//! process's own sockets, found by the link's two addresses), so that both sides drop the
//! transport and open a fresh one, which carries every declaration again. It first gives the
//! link [`FRESH_LINK`] to bring the token: when both sides dial each other at once, the link
//! the other side just opened is not stale, only early.
//!
//! The dial names the peer's zenoh id, and a link whose far end gives another id is closed at
//! once. The id is claimed, not proven (it is not part of a certificate): a forged address can
//! make this process try a connection and, with `[bus.tls]`, reach only a holder of a
//! certificate of the cluster CA, which may do on the link what its own identity may do. So the
//! mesh check dials the address most processes relay, few at a time, through at most
//! [`MAX_DIAL_LOCATORS`] locators.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zenoh::config::{Locator, ZenohId};
use zenoh::internal::runtime::Runtime;

/// Locators one address may list, at most.
pub const MAX_LOCATORS: usize = 16;
/// Locators one dial tries, at most (each may take zenoh's connection timeout).
pub const MAX_DIAL_LOCATORS: usize = 4;
/// Bytes one locator may take, at most.
const MAX_LOCATOR_BYTES: usize = 256;
/// Bytes of a zenoh id written out (16 bytes in hexadecimal).
const MAX_ZID_BYTES: usize = 32;
/// How long a link found open to a process whose token is not seen is given to bring its
/// declarations before it is taken for stale and shut down.
pub const FRESH_LINK: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a process is on the bus: its zenoh id and the locators it listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Its zenoh id, in hexadecimal.
    pub zid: String,
    /// Its locators, e.g. `tcp/10.0.0.5:7447`.
    pub locators: Vec<String>,
}

impl Address {
    /// Whether the address is within bounds and its zenoh id and locators parse.
    pub fn is_valid(&self) -> bool {
        self.zid.len() <= MAX_ZID_BYTES
            && ZenohId::from_str(&self.zid).is_ok()
            && self.locators.len() <= MAX_LOCATORS
            && self.locators.iter().all(|l| l.len() <= MAX_LOCATOR_BYTES && Locator::from_str(l).is_ok())
    }
}

/// The protocol of a locator or endpoint (`tcp`, `tls`, `quic`).
fn protocol(locator: &str) -> &str {
    locator.split_once('/').map_or("", |(p, _)| p)
}

/// What a dial did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialed {
    /// A link to the process is open (opened now).
    Opened,
    /// A link to the process was open already, carrying no declaration of it: its connections
    /// (this many) were shut down, for a fresh link (see the module doc).
    Reset(usize),
    /// No link could be opened through the locators tried.
    Failed,
    /// Nothing was tried: no locator of a protocol this process listens on, the process's own
    /// address, or dialing is off.
    Nothing,
}

/// This process's zenoh runtime, for dialing peers (see the module doc).
#[derive(Clone)]
pub struct Links {
    runtime: Runtime,
    /// The session on the runtime, for the links it lists.
    session: Option<zenoh::Session>,
    /// Whether it may dial peers it was not told to connect to: a `peer` with gossip on (with
    /// gossip off, or as a `client`, every link goes where `connect` says).
    may_dial: bool,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("zid", &self.runtime.zid().to_string()).finish()
    }
}

impl Links {
    pub(crate) fn new(runtime: Runtime, session: zenoh::Session, may_dial: bool) -> Self {
        Self { runtime, session: Some(session), may_dial }
    }

    /// Whether [`Links::dial`] may open links (see the field's doc).
    pub fn may_dial(&self) -> bool {
        self.may_dial
    }

    /// This process's own address: the locators others can reach from another host first (as
    /// zenoh's gossip gives them), loopback ones after (the only ones of a cluster on one host).
    pub fn address(&self) -> Address {
        let routable = self.runtime.get_locators_noloopback();
        let all = self.runtime.get_locators();
        let loopback = all.iter().filter(|l| !routable.contains(l));
        Address {
            zid: self.runtime.zid().to_string(),
            locators: routable.iter().chain(loopback).take(MAX_LOCATORS).map(ToString::to_string).collect(),
        }
    }

    /// Open a link to the process at `to`, unless one is open already; only through locators of
    /// a protocol this process listens on itself (a peer's address cannot make it open a link
    /// of a kind its operator did not choose), the first [`MAX_DIAL_LOCATORS`] of them.
    ///
    /// A link found open is shut down only if `unseen` still says, [`FRESH_LINK`] later, that
    /// the process's token is not seen here: the other side may have dialed this process at the
    /// same moment (each sees the other unreachable), and a link it just opened carries its
    /// declarations a moment after it opens. Shutting that one down had each side cut the
    /// other's fresh link, dial after dial.
    pub async fn dial(&self, to: &Address, may_reset: bool, unseen: impl Fn() -> bool) -> Dialed {
        let Ok(zid) = ZenohId::from_str(&to.zid) else { return Dialed::Nothing };
        let own = self.address();
        let locators: Vec<Locator> = to
            .locators
            .iter()
            .filter(|l| own.locators.iter().any(|o| protocol(o) == protocol(l)))
            .filter_map(|l| Locator::from_str(l).ok())
            .take(MAX_DIAL_LOCATORS)
            .collect();
        if !self.may_dial || locators.is_empty() || zid == self.runtime.zid() {
            return Dialed::Nothing;
        }
        // Only a process whose token is not seen here is dialed: a link to it that is open
        // already carries none of its declarations. Unless `may_reset` is false: the caller
        // sees a live process at that id (a forged view naming another one's id must not make
        // this process cut a working link).
        if !self.connections_to(&zid).await.is_empty() {
            if !may_reset {
                return Dialed::Nothing;
            }
            tokio::time::sleep(FRESH_LINK).await;
            if !unseen() {
                return Dialed::Nothing;
            }
            let stale = self.connections_to(&zid).await;
            if !stale.is_empty() {
                let shut = tokio::task::spawn_blocking(move || shut_down(&stale)).await.unwrap_or(0);
                return Dialed::Reset(shut);
            }
        }
        // Not cut short by a timeout of ours: zenoh forgets a dial in progress only when it
        // ends, and would ignore the peer until then.
        match self.runtime.connect_peer(&zid.into(), &locators).await {
            true => Dialed::Opened,
            false => Dialed::Failed,
        }
    }

    /// The TCP connections (this end, the far end) of the links open to `zid` (TCP and TLS
    /// links; a QUIC link has no connection of its own to shut down).
    async fn connections_to(&self, zid: &ZenohId) -> Vec<(SocketAddr, SocketAddr)> {
        let Some(session) = &self.session else { return Vec::new() };
        let on_tcp = |l: &Locator| matches!(l.protocol().as_str(), "tcp" | "tls");
        session
            .info()
            .links()
            .await
            .filter(|l| l.zid() == zid && on_tcp(l.src()) && on_tcp(l.dst()))
            .filter_map(|l| Some((socket_addr(l.src())?, socket_addr(l.dst())?)))
            .collect()
    }

    /// Close the runtime's links (after the session is closed: [`crate::session::leave`]).
    pub(crate) async fn close(&self) {
        if let Err(e) = self.runtime.close().await {
            tracing::debug!(error = %e, "closing the bus runtime");
        }
    }
}

/// The socket address of a `tcp/` or `tls/` locator given as an IP address (as a link's ends
/// are).
fn socket_addr(locator: &Locator) -> Option<SocketAddr> {
    locator.address().as_str().parse().ok()
}

/// Shut down this process's TCP sockets whose two ends are one of `connections`; how many.
/// The sockets stay open (their owner closes them when it reads the end); only the connection
/// ends, as a peer's reset would end it.
fn shut_down(connections: &[(SocketAddr, SocketAddr)]) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut shut = 0;
    for entry in fds.flatten() {
        let Some(raw) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
        // SAFETY: `raw` was listed as open in this process a moment ago, and it is only
        // borrowed for the calls below, never closed here. If it was closed since (and its
        // number reused), the calls act on whatever it names now, which is shut down only if
        // it is a socket whose two ends are those of a stale link.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let socket = socket2::SockRef::from(&fd);
        let ends =
            (socket.local_addr().ok().and_then(|a| a.as_socket()), socket.peer_addr().ok().and_then(|a| a.as_socket()));
        let (Some(local), Some(peer)) = ends else { continue };
        if connections.contains(&(local, peer)) && socket.shutdown(std::net::Shutdown::Both).is_ok() {
            shut += 1;
        }
    }
    shut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dial of a process a link is open to already shuts that link's connections down (both
    /// ends: the one this process dialed and the one it accepted), and the peer, which dials
    /// its `connect` endpoint again, comes back on a fresh link with its token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dial_of_a_process_linked_already_resets_the_link_and_it_comes_back() {
        use zenoh::sample::SampleKind;

        use crate::config::BusConfig;
        use crate::session::{open, open_linked};
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bport = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (ep, bep) = (format!("tcp/127.0.0.1:{port}"), format!("tcp/127.0.0.1:{bport}"));
        let bus = |node: &str, listen: &str, connect: &[String]| BusConfig {
            cluster: "ltest".into(),
            node: node.into(),
            listen: vec![listen.to_owned()],
            connect: connect.to_vec(),
            ..BusConfig::default()
        };
        let (a, links) =
            open_linked(&bus("a", &ep, std::slice::from_ref(&bep)), crate::tls::IdRole::Agent).await.unwrap();
        let b = open(&bus("b", &bep, std::slice::from_ref(&ep)), None).await.unwrap();
        let _token = b.liveliness().declare_token("sb/ltest/node/b").await.unwrap();
        let tokens = a.liveliness().declare_subscriber("sb/ltest/node/*").history(true).await.unwrap();
        let next_of_b = || async {
            let wait = std::time::Duration::from_secs(5);
            loop {
                let sample = tokio::time::timeout(wait, tokens.recv_async()).await.ok()?.ok()?;
                if sample.key_expr().as_str() == "sb/ltest/node/b" {
                    return Some(sample.kind());
                }
            }
        };
        assert_eq!(next_of_b().await, Some(SampleKind::Put), "a should see b's token");
        let linked = || async { a.info().links().await.any(|l| l.zid() == &b.zid()) };
        let to = Address { zid: b.zid().to_string(), locators: vec![bep.clone()] };
        let wait_linked = || async {
            for _ in 0..100 {
                if linked().await {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        for round in 0..2 {
            wait_linked().await;
            // Seen by the time the link is looked at again (a dial from the other side): kept.
            assert_eq!(links.dial(&to, true, || false).await, Dialed::Nothing, "round {round}: a link just seen stays");
            let dialed = links.dial(&to, true, || true).await;
            assert!(matches!(dialed, Dialed::Reset(n) if n >= 1), "round {round}: a link to b was open: {dialed:?}");
            // The transport went (b's token with it) and came back: its declarations anew.
            assert_eq!(next_of_b().await, Some(SampleKind::Delete), "round {round}: the link went");
            assert_eq!(next_of_b().await, Some(SampleKind::Put), "round {round}: b came back on a fresh link");
        }
        // An id the caller sees alive under another name (a forged view's) is never reset.
        wait_linked().await;
        assert_eq!(links.dial(&to, false, || true).await, Dialed::Nothing, "a link to a process seen alive stays");
        b.close().await.unwrap();
        crate::session::leave(&a, &links).await;
    }

    #[test]
    fn addresses_out_of_bounds_or_unparsable_are_refused() {
        let ok = Address { zid: "a1b2c3".into(), locators: vec!["tcp/127.0.0.1:7447".into()] };
        assert!(ok.is_valid());
        assert!(!Address { zid: "not hex".into(), ..ok.clone() }.is_valid());
        assert!(!Address { zid: "a".repeat(33), ..ok.clone() }.is_valid());
        assert!(!Address { locators: vec!["nonsense".into()], ..ok.clone() }.is_valid());
        assert!(!Address { locators: vec![ok.locators[0].clone(); MAX_LOCATORS + 1], ..ok.clone() }.is_valid());
        let long = format!("tcp/127.0.0.1:7447?{}", "x".repeat(MAX_LOCATOR_BYTES));
        assert!(!Address { locators: vec![long], ..ok }.is_valid());
    }
}
