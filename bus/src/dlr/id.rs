//! Message ids as connectors write them, and the one canonical form they are stored and looked up by.
//!
//! An SMSC may answer `submit_sm` with `000024` and report the DLR for `24`, or give the id in hex
//! in one place and in decimal in the other. Each connector names an [`IdFormat`] for the ids it
//! registers and one for the ids its DLRs carry; [`IdFormat::canonical`] turns both into the same
//! string, so `000024` (decimal) and `24` (decimal) meet, and so do `1A` (hex) and `26` (decimal).
//! [`key_chunk`] then makes the canonical id safe as one chunk of a zenoh key expression.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Longest message id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest connector name accepted, in bytes.
pub const MAX_CONNECTOR_BYTES: usize = 64;

/// How a connector writes message ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdFormat {
    /// Opaque text, matched exactly.
    #[default]
    Text,
    /// Text matched without regard to ASCII case.
    Nocase,
    /// A decimal number: leading zeros do not matter.
    Decimal,
    /// A hexadecimal number (case and leading zeros do not matter, `0x` allowed).
    Hex,
}

/// An id that its connector's format rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty, too long, or with control characters.
    #[error("message id must be 1 to {MAX_ID_BYTES} bytes (without the whitespace around it) and without control characters")]
    Shape,
    /// Not a number in the connector's base, or larger than 128 bits.
    #[error("message id {0:?} is not a {1} number of at most 128 bits")]
    NotNumber(String, &'static str),
    /// A connector name that is empty, too long or has characters other than `A-Za-z0-9._-`.
    #[error("connector must be 1 to {MAX_CONNECTOR_BYTES} characters of A-Z a-z 0-9 . _ -")]
    Connector,
}

impl IdFormat {
    /// The canonical form of `id`: numbers as decimal without leading zeros, `nocase` lowercased,
    /// `text` as it is (surrounding whitespace is dropped in every format).
    pub fn canonical(self, id: &str) -> Result<String, IdError> {
        let id = id.trim();
        if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
            return Err(IdError::Shape);
        }
        let number = |digits: &str, radix: u32, name: &'static str| {
            u128::from_str_radix(digits, radix)
                .ok()
                .filter(|_| digits.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|n| n.to_string())
                .ok_or_else(|| IdError::NotNumber(id.to_owned(), name))
        };
        match self {
            IdFormat::Text => Ok(id.to_owned()),
            IdFormat::Nocase => Ok(id.to_ascii_lowercase()),
            IdFormat::Decimal => number(id, 10, "decimal"),
            IdFormat::Hex => {
                let digits = id.strip_prefix("0x").or_else(|| id.strip_prefix("0X")).unwrap_or(id);
                number(digits, 16, "hexadecimal")
            }
        }
    }
}

/// Check a connector name (it is used as a key chunk as it is).
pub fn check_connector(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CONNECTOR_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or(IdError::Connector)
}

/// A canonical id as one key chunk: `A-Z a-z 0-9 . _ ~ -` stay, every other byte becomes `%XX`.
pub fn key_chunk(canonical: &str) -> String {
    let mut out = String::with_capacity(canonical.len());
    for b in canonical.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The canonical id back from a key chunk made by [`key_chunk`]; `None` if it is not one.
pub fn from_key_chunk(chunk: &str) -> Option<String> {
    let bytes = chunk.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_agree_where_connectors_say_they_do() {
        assert_eq!(IdFormat::Decimal.canonical("000024").unwrap(), "24");
        assert_eq!(IdFormat::Decimal.canonical(" 24 ").unwrap(), "24");
        assert_eq!(IdFormat::Decimal.canonical("0").unwrap(), "0");
        assert_eq!(IdFormat::Decimal.canonical("0000").unwrap(), "0");
        assert_eq!(IdFormat::Hex.canonical("1A").unwrap(), "26");
        assert_eq!(IdFormat::Hex.canonical("0x001a").unwrap(), "26");
        assert_eq!(IdFormat::Hex.canonical("FFFFFFFF").unwrap(), "4294967295");
        assert_eq!(IdFormat::Nocase.canonical("AbC-12").unwrap(), "abc-12");
        assert_eq!(IdFormat::Text.canonical("AbC-12").unwrap(), "AbC-12");
        assert_ne!(IdFormat::Text.canonical("000024").unwrap(), IdFormat::Text.canonical("24").unwrap());
    }

    #[test]
    fn bad_ids_are_refused() {
        assert_eq!(IdFormat::Text.canonical(""), Err(IdError::Shape));
        assert_eq!(IdFormat::Text.canonical("   "), Err(IdError::Shape));
        assert_eq!(IdFormat::Text.canonical("a\u{0}b"), Err(IdError::Shape));
        assert_eq!(IdFormat::Text.canonical(&"x".repeat(MAX_ID_BYTES + 1)), Err(IdError::Shape));
        assert!(matches!(IdFormat::Decimal.canonical("12a"), Err(IdError::NotNumber(..))));
        assert!(matches!(IdFormat::Decimal.canonical("-1"), Err(IdError::NotNumber(..))));
        assert!(matches!(IdFormat::Decimal.canonical("+1"), Err(IdError::NotNumber(..))));
        assert!(matches!(IdFormat::Hex.canonical("0x"), Err(IdError::NotNumber(..))));
        assert!(matches!(IdFormat::Hex.canonical("g1"), Err(IdError::NotNumber(..))));
        assert!(matches!(IdFormat::Decimal.canonical(&"9".repeat(40)), Err(IdError::NotNumber(..))));
    }

    #[test]
    fn connectors_are_checked() {
        assert!(check_connector("smsc-a.eu_1").is_ok());
        for bad in ["", "a/b", "a*", "a b", "é", &"c".repeat(65)] {
            assert_eq!(check_connector(bad), Err(IdError::Connector), "{bad:?}");
        }
    }

    #[test]
    fn key_chunks_round_trip_and_are_valid_chunks() {
        for id in ["24", "abc-DEF_1.2~", "a/b*c$d?e#f", "sp ace%", "ünï"] {
            let chunk = key_chunk(id);
            assert!(crate::keys::check_chunk(&chunk).is_ok(), "{chunk}");
            assert!(!chunk.starts_with('@'));
            assert_eq!(from_key_chunk(&chunk).as_deref(), Some(id));
        }
        assert_eq!(key_chunk("a/b"), "a%2Fb");
        assert_eq!(from_key_chunk("%G1"), None);
        assert_eq!(from_key_chunk("%4"), None);
    }
}
