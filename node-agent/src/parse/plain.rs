//! Plain text lines: an optional leading ISO 8601 timestamp, then optional bracketed tokens
//! (`[32253] [6]`, dropped) and a level name (`ERROR:`, `[warn]`), then the message.
//!
//! Kannel-style example: `2026-11-22 10:00:00 [32253] [6] ERROR: SMSC conn closed`.
//! A line without a leading timestamp is all message. Lines without a timestamp do not
//! allocate (unless `kv_in_message` finds pairs).

use std::borrow::Cow;

use super::{kv, skip_blanks, sub, tail, timestamp, Level, ParseContext, Parsed};

/// Parses a plain line. Always matches.
pub(crate) fn parse<'a>(line: &'a str, ctx: &ParseContext) -> Parsed<'a> {
    let b = line.as_bytes();
    let mut ts_micros = None;
    let mut level = None;
    let mut message: &'a str = line;
    if let Some((ts, end)) = timestamp::parse_rfc3339_prefix(b) {
        // The timestamp must stand on its own: `2026-11-22 10:00:00abc` is not one.
        let standalone = b.get(end).is_none_or(|c| !c.is_ascii_alphanumeric());
        if standalone {
            ts_micros = Some(ts);
            let (lvl, msg_start) = level_after(line, end);
            level = lvl;
            message = tail(line, msg_start);
        }
    }
    let mut fields = Vec::new();
    if ctx.kv_in_message {
        kv::extract_in_message(message, &mut fields);
    }
    Parsed { ts_micros, level, message: Cow::Borrowed(message), fields, matched: true }
}

/// Looks for a level after the timestamp ending at `from`: skips blanks and bracketed tokens
/// until a level name (bare or bracketed, optionally followed by `:`).
///
/// Returns the level and where the message starts. Without a level the message starts
/// right after the timestamp (blanks skipped), so bracketed tokens are only dropped when a
/// level follows them.
fn level_after(line: &str, from: usize) -> (Option<Level>, usize) {
    let b = line.as_bytes();
    let after_ts = skip_blanks(b, from);
    let mut i = after_ts;
    loop {
        match b.get(i) {
            None => break,
            Some(b'[') => {
                let Some(close) = find_byte(b, i + 1, b']') else {
                    break;
                };
                let inner = sub(line, i + 1, close).trim_matches(|c| c == ' ' || c == '\t');
                if let Some(level) = Level::from_name(inner) {
                    return (Some(level), after_level(b, close + 1));
                }
                i = skip_blanks(b, close + 1);
            }
            Some(_) => {
                let mut end = i;
                while let Some(&c) = b.get(end) {
                    if c == b' ' || c == b'\t' || c == b':' {
                        break;
                    }
                    end += 1;
                }
                return match Level::from_name(sub(line, i, end)) {
                    Some(level) => (Some(level), after_level(b, end)),
                    None => (None, after_ts),
                };
            }
        }
    }
    (None, after_ts)
}

/// Start of the message after a level token ending at `end`: an optional `:`, then blanks.
fn after_level(b: &[u8], end: usize) -> usize {
    let end = if b.get(end) == Some(&b':') { end + 1 } else { end };
    skip_blanks(b, end)
}

/// Index of the first `needle` at or after `from`.
pub(crate) fn find_byte(b: &[u8], from: usize, needle: u8) -> Option<usize> {
    b.get(from..)?.iter().position(|&c| c == needle).map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:00:00Z in microseconds.
    const T0: i64 = 1_795_341_600_000_000;

    fn p(line: &str) -> Parsed<'_> {
        parse(line, &ParseContext { now_micros: T0, kv_in_message: false })
    }

    fn pkv(line: &str) -> Parsed<'_> {
        parse(line, &ParseContext { now_micros: T0, kv_in_message: true })
    }

    #[test]
    fn kannel_line() {
        let r = p("2026-11-22 10:00:00 [32253] [6] ERROR: SMSC conn closed");
        assert!(r.matched);
        assert_eq!(r.ts_micros, Some(T0));
        assert_eq!(r.level, Some(Level::Error));
        assert_eq!(r.message, "SMSC conn closed");
        assert!(r.fields.is_empty());
    }

    #[test]
    fn kannel_variants() {
        let r = p("2026-11-22 10:00:01 [32253] [12] DEBUG: boxc_receiver: sms received");
        assert_eq!((r.ts_micros, r.level), (Some(T0 + 1_000_000), Some(Level::Debug)));
        assert_eq!(r.message, "boxc_receiver: sms received");

        let r = p("2026-11-22 10:00:00 [1] [0] PANIC: Could not open file");
        assert_eq!(r.level, Some(Level::Emergency));
        assert_eq!(r.message, "Could not open file");

        let r = p("2026-11-22 10:00:00 [1] [0] WARNING:SMSC[foo]: reconnecting");
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.message, "SMSC[foo]: reconnecting");
    }

    #[test]
    fn bracketed_level_and_zone() {
        let r = p("2026-11-22T12:00:00.250+02:00 [warn] queue length 812");
        assert_eq!(r.ts_micros, Some(T0 + 250_000));
        assert_eq!(r.level, Some(Level::Warn));
        assert_eq!(r.message, "queue length 812");

        let r = p("2026-11-22 10:00:00,123 [main] [ INFO ]: started");
        assert_eq!(r.ts_micros, Some(T0 + 123_000));
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.message, "started");

        let r = p("2026-11-22T10:00:00Z info");
        assert_eq!((r.level, r.message.as_ref()), (Some(Level::Info), ""));
    }

    #[test]
    fn timestamp_without_level_keeps_brackets() {
        let r = p("2026-11-22 10:00:00 Sent SMS [SMSC:smsc1] [SVC:default] [from:+4912]");
        assert_eq!(r.ts_micros, Some(T0));
        assert_eq!(r.level, None);
        assert_eq!(r.message, "Sent SMS [SMSC:smsc1] [SVC:default] [from:+4912]");

        let r = p("2026-11-22 10:00:00 [32253] something happened");
        assert_eq!(r.level, None);
        assert_eq!(r.message, "[32253] something happened");

        let r = p("2026-11-22 10:00:00 [unterminated ERROR: x");
        assert_eq!((r.ts_micros, r.level), (Some(T0), None));
        assert_eq!(r.message, "[unterminated ERROR: x");
    }

    #[test]
    fn no_timestamp_is_all_message_and_borrowed() {
        for line in ["hello world", "ERROR: not after a timestamp", "", "   ", "2026-11-22", "é€"] {
            let r = p(line);
            assert!(r.matched);
            assert_eq!(r.message, line);
            assert_eq!((r.ts_micros, r.level), (None, None));
            assert!(matches!(r.message, Cow::Borrowed(_)), "{line:?} allocated");
            assert_eq!(r.fields.capacity(), 0, "{line:?} allocated fields");
        }
    }

    #[test]
    fn truncated_or_glued_timestamps_are_not_timestamps() {
        for line in [
            "2026-11-22 10:00",
            "2026-11-22 10:00:0",
            "2026-11-22 10:00:00abc ERROR x",
            "2026-11-2210:00:00 ERROR x",
            "2026-11-31 10:00:00 ERROR x",
        ] {
            let r = p(line);
            assert_eq!((r.ts_micros, r.level), (None, None), "{line:?}");
            assert_eq!(r.message, line);
        }
        let r = p("2026-11-22 10:00:00");
        assert_eq!((r.ts_micros, r.message.as_ref()), (Some(T0), ""));
    }

    #[test]
    fn multibyte_next_to_delimiters() {
        let r = p("2026-11-22 10:00:00 [é] €RROR: x");
        assert_eq!((r.ts_micros, r.level), (Some(T0), None));
        assert_eq!(r.message, "[é] €RROR: x");
        let r = p("2026-11-22 10:00:00é ERROR: x");
        assert_eq!(r.ts_micros, Some(T0));
        assert_eq!((r.level, r.message.as_ref()), (None, "é ERROR: x"));
        let r = p("2026-11-22 10:00:00 [ERRÖR] ü");
        assert_eq!((r.level, r.message.as_ref()), (None, "[ERRÖR] ü"));
        let r = p("2026-11-22 10:00:00 ERROR:ü");
        assert_eq!((r.level, r.message.as_ref()), (Some(Level::Error), "ü"));
    }

    #[test]
    fn kv_in_message() {
        let line = "2026-11-22 10:00:00 [1] [6] INFO: DLR rcvd smsc=smsc1 id=\"a b\" status=8";
        let r = pkv(line);
        assert_eq!(r.level, Some(Level::Info));
        assert_eq!(r.message, "DLR rcvd smsc=smsc1 id=\"a b\" status=8");
        let f: Vec<(&str, &str)> = r.fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        assert_eq!(f, [("smsc", "smsc1"), ("id", "a b"), ("status", "8")]);
        // Off by default.
        assert!(p(line).fields.is_empty());
        // Without timestamp the whole line is scanned.
        let r = pkv("user=bob action=login");
        assert_eq!(r.fields.len(), 2);
        assert_eq!(r.message, "user=bob action=login");
    }
}
