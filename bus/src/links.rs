//! Links this process opens to a peer again, where zenoh would not.
//!
//! zenoh dials again, after a link drops, only the endpoints of a process's own `connect` list.
//! A link it opened because gossip named the peer stays down until gossip names that peer again,
//! which it does only when the peer links to a common process anew: two agents whose direct link
//! broke (a reset connection, a stall past the lease) while both kept their collector link stay
//! apart. [`Links`] keeps the handle of this process's zenoh runtime so that the mesh check
//! ([`crate::mesh`]) can dial such a peer at the [`Address`] it last gave for itself.
//!
//! The dial names the peer's zenoh id: a link whose far end proves another id is closed at once,
//! so an address relayed by a third process can make this one try a connection, not talk to an
//! impostor (and with `[bus.tls]` the peer still needs a certificate of the cluster CA).

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zenoh::config::{Locator, ZenohId};
use zenoh::internal::runtime::Runtime;

/// Locators one address may list, at most.
pub const MAX_LOCATORS: usize = 16;
/// Bytes one locator may take, at most.
const MAX_LOCATOR_BYTES: usize = 256;
/// Bytes of a zenoh id written out (16 bytes in hexadecimal).
const MAX_ZID_BYTES: usize = 32;
/// How long closing the runtime may take (as [`crate::session::CLOSE_TIMEOUT`] for the session).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// This process's own address.
    pub fn address(&self) -> Address {
        Address {
            zid: self.runtime.zid().to_string(),
            locators: self.runtime.get_locators().iter().take(MAX_LOCATORS).map(ToString::to_string).collect(),
        }
    }

    /// Open a link to the process at `to`, unless one is open already; only through locators of
    /// a protocol this process listens on itself (a peer's address cannot make it open a link
    /// of a kind its operator did not choose). Whether a link to it is open afterwards.
    pub async fn dial(&self, to: &Address) -> bool {
        let Ok(zid) = ZenohId::from_str(&to.zid) else { return false };
        let own = self.address();
        let locators: Vec<Locator> = to
            .locators
            .iter()
            .filter(|l| own.locators.iter().any(|o| protocol(o) == protocol(l)))
            .filter_map(|l| Locator::from_str(l).ok())
            .collect();
        if !self.may_dial || locators.is_empty() || zid == self.runtime.zid() {
            return false;
        }
        self.runtime.connect_peer(&zid.into(), &locators).await
    }

    /// Close the runtime's links (after the session is closed), within 2 s.
    pub async fn close(&self) {
        if tokio::time::timeout(CLOSE_TIMEOUT, async {
            if let Err(e) = self.runtime.close().await {
                tracing::debug!(error = %e, "closing the bus runtime");
            }
        })
        .await
        .is_err()
        {
            tracing::debug!("the bus runtime took over {CLOSE_TIMEOUT:?} to close; leaving it");
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
