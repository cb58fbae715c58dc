//! The limits verbs of the gateway protocol (`crate::gateway`, docs/gateway-protocol.md).
//!
//! | request | answers |
//! | --- | --- |
//! | `ACQUIRE <key> [n]` | `OK`, `UNLIMITED`, `DENY <retry_after_ms>`, or `ERR` when `n` is more than ever passes at once or a new key finds the node's key table full |
//! | `RELEASE <key> [n]` | `OK <released>` (fewer than `n`: the rest were not held), or `CONFLICT` for a key no concurrency limit applies to |
//! | `PING` | `PONG` |
//!
//! `ACQUIRE` takes slots of a concurrency key and units of a rate key. Keys may not contain
//! whitespace here (use HTTP for such keys); `n` defaults to 1. Anything else is answered with
//! `ERR <reason>` and counted; the connection stays usable.

use std::sync::atomic::Ordering;

use switchboard_bus::limits::Decision;

use super::{check_request, LimitsService};

/// Append the answer to one request line to `out`.
pub fn answer(service: &LimitsService, line: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    let reply = match parse(line) {
        Ok(Request::Ping) => {
            out.extend_from_slice(b"PONG\n");
            return;
        }
        Ok(Request::Acquire(key, n)) => match service.acquire(key, n) {
            Decision::Allowed => writeln!(out, "OK"),
            Decision::Unlimited => writeln!(out, "UNLIMITED"),
            Decision::Denied { retry_after } => writeln!(out, "DENY {:.3}", retry_after.as_secs_f64() * 1000.0),
            Decision::TooLarge { most, slots } => writeln!(out, "ERR {}", Decision::too_large(key, n, most, slots)),
            Decision::TooManyKeys => writeln!(out, "ERR {}", Decision::too_many_keys()),
        },
        Ok(Request::Release(key, n)) => match service.release(key, n) {
            released if released < n => match service.release_shortfall(key, n, released) {
                Err(no_slots) => writeln!(out, "CONFLICT {no_slots}"),
                Ok(_) => writeln!(out, "OK {released}"),
            },
            released => writeln!(out, "OK {released}"),
        },
        Err(reason) => {
            service.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            writeln!(out, "ERR {reason}")
        }
    };
    debug_assert!(reply.is_ok(), "writing to a Vec cannot fail");
}

#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    Acquire(&'a str, u64),
    Release(&'a str, u64),
    Ping,
}

fn parse<'a>(line: &'a [u8]) -> Result<Request<'a>, String> {
    let line = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let mut words = crate::gateway::words(line);
    let verb = words.next().ok_or("empty request; expected ACQUIRE, RELEASE or PING")?;
    let (key, n) = (words.next(), words.next());
    if words.next().is_some() {
        return Err("too many words; expected `<VERB> <key> [n]`".into());
    }
    let units = |n: Option<&str>| -> Result<u64, String> {
        n.map_or(Ok(1), |n| {
            super::units_of(n).map_err(|e| match n.bytes().all(|b| b.is_ascii_digit()) {
                true => e,
                // Likely a key with a space in it, its second part read as n.
                false => format!("{e} (words are split at spaces and tabs, which a key cannot hold)"),
            })
        })
    };
    let keyed = |key: Option<&'a str>, n: u64| -> Result<&'a str, String> {
        let key = key.ok_or("missing key")?;
        check_request(key, n).map_err(|e| e.to_string())?;
        Ok(key)
    };
    match verb {
        "ACQUIRE" => {
            let n = units(n)?;
            Ok(Request::Acquire(keyed(key, n)?, n))
        }
        "RELEASE" => {
            let n = units(n)?;
            Ok(Request::Release(keyed(key, n)?, n))
        }
        "PING" if key.is_none() => Ok(Request::Ping),
        "PING" => Err("PING takes no argument".into()),
        other => Err(format!("unknown request {other:?}; expected ACQUIRE, RELEASE or PING")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_explained() {
        assert_eq!(parse(b"ACQUIRE operator:x\n"), Ok(Request::Acquire("operator:x", 1)));
        assert_eq!(parse(b"ACQUIRE operator:x 5\r\n"), Ok(Request::Acquire("operator:x", 5)));
        assert_eq!(parse(b"RELEASE d 2\n"), Ok(Request::Release("d", 2)));
        assert_eq!(parse(b"PING\n"), Ok(Request::Ping));
        assert_eq!(parse(b"RELEASE \tk\t 3 \t\r\n"), Ok(Request::Release("k", 3)));
        // Words are split at spaces and tabs only: a `\r` inside a line stays in its word, and
        // the key is refused for it, as for any control character.
        assert_eq!(
            parse(b"ACQUIRE oper\rator:x 5\n"),
            Err("key must be 1 to 512 bytes without control characters".into())
        );
        for (bad, says) in [
            (&b"\n"[..], "empty"),
            (b"acquire x\n", "unknown request"),
            (b"PING extra\n", "PING takes no argument"),
            (b"ACQUIRE\n", "missing key"),
            (b"ACQUIRE x y\n", "whole number"),
            (b"ACQUIRE x 0\n", "from 1 to"),
            (b"ACQUIRE x 18446744073709551616\n", "from 1 to 1000000000, got 18446744073709551616"),
            (b"ACQUIRE my key\n", "which a key cannot hold"),
            (b"ACQUIRE x -1\n", "whole number"),
            (b"ACQUIRE x 1 2\n", "too many"),
            (b"ACQUIRE \xff\n", "UTF-8"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        // A number is not taken for a key split in two.
        let err = parse(b"ACQUIRE x 18446744073709551616\n").unwrap_err();
        assert!(!err.contains("whitespace"), "{err}");
    }
}
