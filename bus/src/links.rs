//! Links this process opens to a peer again, where zenoh would not.
//!
//! zenoh dials again, after a link drops, only the endpoints of a process's own `connect` list.
//! A link it opened because gossip named the peer stays down until gossip names that peer again,
//! which it does only when the peer links to a common process anew: two agents whose direct link
//! broke (a reset connection, a stall past the lease) while both kept their collector link stay
//! apart. [`Links`] keeps the handle of this process's zenoh runtime so that the mesh check
//! ([`crate::mesh`]) can dial such a peer at the [`Address`] it last gave for itself.
//!
//! The dial names the peer's zenoh id, and a link whose far end gives another id is closed at
//! once. The id is claimed, not proven (it is not part of a certificate): a forged address can
//! make this process try a connection and, with `[bus.tls]`, reach only a holder of a
//! certificate of the cluster CA, which may do on the link what its own identity may do. So the
//! mesh check dials the address most processes relay, few at a time, through at most
//! [`MAX_DIAL_LOCATORS`] locators.

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
    /// A link to the process is open (opened now, or already).
    Opened,
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
    pub(crate) fn new(runtime: Runtime, may_dial: bool) -> Self {
        Self { runtime, may_dial }
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
    pub async fn dial(&self, to: &Address) -> Dialed {
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
        // Not cut short by a timeout of ours: zenoh forgets a dial in progress only when it
        // ends, and would ignore the peer until then.
        match self.runtime.connect_peer(&zid.into(), &locators).await {
            true => Dialed::Opened,
            false => Dialed::Failed,
        }
    }

    /// Close the runtime's links (after the session is closed: [`crate::session::leave`]).
    pub(crate) async fn close(&self) {
        if let Err(e) = self.runtime.close().await {
            tracing::debug!(error = %e, "closing the bus runtime");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
