//! One registered message: what a DLR is resolved to.
//!
//! [`DlrRecord`] travels as JSON on the bus (lookup replies, replica batches) and is stored by the
//! agents in a compact binary form ([`DlrRecord::encode_value`] / [`DlrRecord::decode`]): the store
//! key holds the connector and the canonical id, the value the rest, with variable-length integers.
//! A record is `open` until a final DLR (or its gateway) closes it; a closed record is kept for a
//! while so that a repeated DLR is recognized as a duplicate. Every change raises `version`, and of
//! two copies the higher version wins.

use serde::{Deserialize, Serialize};

/// Version byte of the stored value layout.
const VALUE_LAYOUT: u8 = 1;

/// Whether a record still waits for its final DLR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// No final DLR yet.
    Open,
    /// The final DLR arrived (or the gateway closed the record).
    Closed,
}

/// A registered message and, once closed, its final status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlrRecord {
    /// The connector (SMSC or operator account link) the message went out on.
    pub connector: String,
    /// The message id in canonical form (see [`crate::dlr::id`]).
    pub id: String,
    /// The message id as the gateway registered it.
    pub msg_id: String,
    /// The customer account, if the gateway gave one.
    #[serde(default)]
    pub account: String,
    /// The destination address.
    #[serde(default)]
    pub destination: String,
    /// When the message was submitted, ms since the Unix epoch.
    pub submitted_at: u64,
    /// The node whose gateway submitted the message.
    pub owner: String,
    /// The gateway's own reference for the message.
    #[serde(default)]
    pub gateway_ref: String,
    /// When the record is dropped, ms since the Unix epoch.
    pub expires_at: u64,
    /// Raised by every change; a registration starts it at [`registration_version`].
    pub version: u32,
    /// Open or closed.
    pub state: RecordState,
    /// The final status (e.g. `DELIVRD`), once closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When it was closed, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<u64>,
    /// The node that took the final DLR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// Closed by a hand-off: the reporter's gateway handles the DLR (`owner_down`), not the
    /// owner's inbox (docs/architecture.md, "A reporter gone before its answer").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handed_off: bool,
}

impl DlrRecord {
    /// The `i`-th of a deterministic series of open records owned by `owner` (eight connectors,
    /// spread ids), for capacity tests and benchmarks.
    pub fn synthetic(i: u64, owner: &str) -> Self {
        let id = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        DlrRecord {
            connector: format!("smsc-{}", i % 8),
            msg_id: id.clone(),
            id,
            account: format!("acct-{}", i % 1000),
            destination: format!("+4915{:08}", i % 100_000_000),
            submitted_at: 1_790_000_000_000 + i,
            owner: owner.into(),
            gateway_ref: format!("gw-{i:012}"),
            expires_at: 1_790_172_800_000 + i / 1000,
            version: 1,
            state: RecordState::Open,
            status: None,
            closed_at: None,
            closed_by: None,
            handed_off: false,
        }
    }
}

/// A stored value that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored DLR record is corrupt: {0}")]
pub struct CorruptRecord(pub &'static str);

impl DlrRecord {
    /// The store key: `connector`, a zero byte, the canonical id.
    pub fn store_key(&self) -> Vec<u8> {
        store_key(&self.connector, &self.id)
    }

    /// Whether the record is still open.
    pub fn is_open(&self) -> bool {
        self.state == RecordState::Open
    }

    /// The value stored under [`Self::store_key`].
    pub fn encode_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.destination.len() + self.gateway_ref.len() + self.account.len());
        let closed = self.state == RecordState::Closed;
        let own_msg_id = self.msg_id != self.id;
        out.push(VALUE_LAYOUT);
        let handed_off = closed && self.handed_off;
        out.push(u8::from(closed) | (u8::from(own_msg_id) << 1) | (u8::from(handed_off) << 2));
        put_varint(&mut out, self.submitted_at);
        put_varint(&mut out, self.expires_at);
        put_varint(&mut out, u64::from(self.version));
        put_str(&mut out, &self.owner);
        put_str(&mut out, &self.account);
        put_str(&mut out, &self.destination);
        put_str(&mut out, &self.gateway_ref);
        if own_msg_id {
            put_str(&mut out, &self.msg_id);
        }
        if closed {
            put_str(&mut out, self.status.as_deref().unwrap_or(""));
            put_varint(&mut out, self.closed_at.unwrap_or(0));
            put_str(&mut out, self.closed_by.as_deref().unwrap_or(""));
        }
        out
    }

    /// A record back from its store key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, CorruptRecord> {
        let (connector, id) = split_store_key(key).ok_or(CorruptRecord("key"))?;
        let mut r = Reader(value);
        if r.byte()? != VALUE_LAYOUT {
            return Err(CorruptRecord("unknown layout"));
        }
        let flags = r.byte()?;
        let submitted_at = r.varint()?;
        let expires_at = r.varint()?;
        let version = u32::try_from(r.varint()?).map_err(|_| CorruptRecord("version"))?;
        let (owner, account, destination, gateway_ref) = (r.str()?, r.str()?, r.str()?, r.str()?);
        let msg_id = if flags & 2 != 0 { r.str()? } else { id.clone() };
        let (state, status, closed_at, closed_by) = if flags & 1 != 0 {
            (RecordState::Closed, Some(r.str()?), Some(r.varint()?), Some(r.str()?))
        } else {
            (RecordState::Open, None, None, None)
        };
        Ok(Self {
            connector,
            id,
            msg_id,
            account,
            destination,
            submitted_at,
            owner,
            gateway_ref,
            expires_at,
            version,
            state,
            status,
            closed_at,
            closed_by,
            handed_off: flags & 5 == 5,
        })
    }
}

/// What a count of the store needs of a record, read from its stored value without decoding the
/// rest (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Glance<'a> {
    /// Whether the record is open.
    pub open: bool,
    /// When its message was submitted, in ms since the epoch.
    pub submitted_at: u64,
    /// Its owner's node name, as stored.
    pub owner: &'a [u8],
}

impl DlrRecord {
    /// A [`Glance`] at the stored value `value` of a record.
    pub fn glance(value: &[u8]) -> Result<Glance<'_>, CorruptRecord> {
        let mut r = Reader(value);
        if r.byte()? != VALUE_LAYOUT {
            return Err(CorruptRecord("unknown layout"));
        }
        let flags = r.byte()?;
        let submitted_at = r.varint()?;
        let (_expires_at, _version) = (r.varint()?, r.varint()?);
        Ok(Glance { open: flags & 1 == 0, submitted_at, owner: r.bytes()? })
    }
}

/// The start of the minutes a registration's version counts: 2024-01-01T00:00:00Z.
pub const VERSION_EPOCH_MS: u64 = 1_704_067_200_000;
/// Versions per minute since [`VERSION_EPOCH_MS`]: a record's version starts at its
/// registration's minute times this, and each change adds one. A `u32` holds them until 2151.
pub const VERSIONS_PER_MINUTE: u32 = 64;

/// The version of a record registered at `now_ms` over the `previous` one of its id: above
/// every version of an earlier record registered in an earlier minute, as long as that one
/// changed fewer than [`VERSIONS_PER_MINUTE`] times per minute of its life (a record changes a
/// few times in all). A version counted from 1 instead let a node rebuilt with an empty store
/// register an id again below the copies of its earlier life, which then replaced the new
/// record everywhere. Versions stay `u32`, as agents of earlier releases read them.
pub fn registration_version(previous: Option<u32>, now_ms: u64) -> u32 {
    let minutes = now_ms.saturating_sub(VERSION_EPOCH_MS) / 60_000;
    let fresh = u32::try_from(minutes.saturating_mul(u64::from(VERSIONS_PER_MINUTE))).unwrap_or(u32::MAX);
    previous.map_or(fresh, |p| p.saturating_add(1).max(fresh))
}

/// The store key of `(connector, canonical id)`.
pub fn store_key(connector: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(connector.len() + 1 + id.len());
    k.extend_from_slice(connector.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `(connector, canonical id)` back from a store key.
pub fn split_store_key(key: &[u8]) -> Option<(String, String)> {
    let at = key.iter().position(|&b| b == 0)?;
    let connector = std::str::from_utf8(&key[..at]).ok()?;
    let id = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((connector.to_owned(), id.to_owned()))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CorruptRecord> {
        let (&b, rest) = self.0.split_first().ok_or(CorruptRecord("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CorruptRecord> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CorruptRecord("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CorruptRecord> {
        let len = usize::try_from(self.varint()?).map_err(|_| CorruptRecord("length"))?;
        if len > self.0.len() {
            return Err(CorruptRecord("truncated"));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    fn str(&mut self) -> Result<String, CorruptRecord> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| CorruptRecord("not UTF-8"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn a_registration_outranks_every_version_of_the_earlier_record() {
        let t = 1_790_000_000_000u64;
        let first = registration_version(None, t);
        assert_eq!(u64::from(first), (t - VERSION_EPOCH_MS) / 60_000 * 64);
        // Closed and changed a few times, then registered again a minute later: above.
        let changed = first + 5;
        assert!(registration_version(None, t + 60_000) > changed, "a store rebuilt empty");
        assert!(registration_version(Some(changed), t + 60_000) > changed);
        // Within the same minute, or with a clock that went back, one above the previous.
        assert_eq!(registration_version(Some(changed), t), changed + 1);
        assert_eq!(registration_version(Some(changed), t - 3_600_000), changed + 1);
        assert_eq!(registration_version(Some(u32::MAX), t), u32::MAX, "saturates");
        assert_eq!(registration_version(None, u64::MAX), u32::MAX, "past 2151: the largest");
        // Until 2151 a version fits.
        assert!(registration_version(None, 5_700_000_000_000) < u32::MAX);
    }

    use super::*;

    pub(crate) fn sample(id: &str) -> DlrRecord {
        DlrRecord {
            connector: "smsc-a".into(),
            id: id.into(),
            msg_id: id.into(),
            account: "acme".into(),
            destination: "+4915112345678".into(),
            submitted_at: 1_790_000_000_000,
            owner: "node-a".into(),
            gateway_ref: "b6f2c9d0-7e1a-4c1e-9d3b-2a7f7a0c1e55".into(),
            expires_at: 1_790_172_800_000,
            version: 1,
            state: RecordState::Open,
            status: None,
            closed_at: None,
            closed_by: None,
            handed_off: false,
        }
    }

    #[test]
    fn values_round_trip_open_and_closed() {
        let open = sample("24");
        let back = DlrRecord::decode(&open.store_key(), &open.encode_value()).unwrap();
        assert_eq!(back, open);
        let mut closed = sample("26");
        closed.msg_id = "1A".into();
        closed.state = RecordState::Closed;
        closed.status = Some("DELIVRD".into());
        closed.closed_at = Some(1_790_000_100_000);
        closed.closed_by = Some("node-b".into());
        closed.version = 2;
        let back = DlrRecord::decode(&closed.store_key(), &closed.encode_value()).unwrap();
        assert_eq!(back, closed);
        let handed = DlrRecord { handed_off: true, ..closed.clone() };
        let back = DlrRecord::decode(&handed.store_key(), &handed.encode_value()).unwrap();
        assert_eq!(back, handed);
        // JSON: the mark only where it is set, as every earlier record read it.
        assert!(!serde_json::to_string(&closed).unwrap().contains("handed_off"));
        let json = serde_json::to_string(&handed).unwrap();
        assert!(json.contains("\"handed_off\":true"), "{json}");
        assert_eq!(serde_json::from_str::<DlrRecord>(&json).unwrap(), handed);
        for r in [&open, &closed] {
            let value = r.encode_value();
            let g = DlrRecord::glance(&value).unwrap();
            assert_eq!((g.open, g.submitted_at, g.owner), (r.is_open(), r.submitted_at, r.owner.as_bytes()));
        }
        assert!(open.encode_value().len() < 100, "compact: {} bytes", open.encode_value().len());
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let rec = sample("24");
        let value = rec.encode_value();
        for cut in 0..value.len() {
            assert!(DlrRecord::decode(&rec.store_key(), &value[..cut]).is_err(), "cut at {cut}");
        }
        // A glance reads up to the owner: any cut before its end is an error.
        let owner_end =
            value.windows(rec.owner.len()).position(|w| w == rec.owner.as_bytes()).unwrap() + rec.owner.len();
        for cut in 0..owner_end {
            assert!(DlrRecord::glance(&value[..cut]).is_err(), "glance cut at {cut}");
        }
        assert!(DlrRecord::decode(b"no-separator", &value).is_err());
        let mut bad = value.clone();
        bad[0] = 9;
        assert!(DlrRecord::decode(&rec.store_key(), &bad).is_err());
        assert!(DlrRecord::decode(
            &rec.store_key(),
            &[1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        )
        .is_err());
    }
}
