//! logfmt-style `key=value` lines (`ts=... level=warn msg="queue full" smsc=smsc1 retry`),
//! plus the scanner that pulls `key=value` pairs out of free-text messages (postfix style:
//! `to=<a@b.c>, relay=mx[1.2.3.4]:25, delay=0.5, status=sent (250 ok)`).

use std::borrow::Cow;

use super::{sub, timestamp, Level, Parsed};

/// A parsed field list.
pub(crate) type Fields<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// Value of a bare key (`flag` without `=`).
const BARE_KEY_VALUE: &str = "true";

/// Space or tab. (Byte indexing `b[i]` in this file always sits behind an `i < n` check.)
fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Parses a logfmt line. `None` when the line holds no `key=value` pair with a non-empty key.
pub(crate) fn parse(line: &str) -> Option<Parsed<'_>> {
    let b = line.as_bytes();
    let n = b.len();
    let mut ts_micros = None;
    let mut level = None;
    let mut message: Option<Cow<'_, str>> = None;
    let mut fields: Fields<'_> = Vec::new();
    let mut any_pair = false;
    let mut i = 0;
    while i < n {
        let c = b[i];
        if is_blank(c) {
            i += 1;
            continue;
        }
        if c == b'"' {
            // A quoted string without a key: skip it as a whole.
            i = quoted(line, i + 1).1;
            continue;
        }
        let ks = i;
        while i < n && !is_blank(b[i]) && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        if i == ks || b.get(i) == Some(&b'"') {
            // `=value` or `key"...`: garbage, skip the rest of the token.
            while i < n && !is_blank(b[i]) {
                i += 1;
            }
            continue;
        }
        let key = sub(line, ks, i);
        if b.get(i) != Some(&b'=') {
            fields.push((Cow::Borrowed(key), Cow::Borrowed(BARE_KEY_VALUE)));
            continue;
        }
        i += 1;
        let value = if b.get(i) == Some(&b'"') {
            let (v, next) = quoted(line, i + 1);
            i = next;
            v
        } else {
            let vs = i;
            while i < n && !is_blank(b[i]) {
                i += 1;
            }
            Cow::Borrowed(sub(line, vs, i))
        };
        any_pair = true;
        match key {
            "ts" | "time" | "timestamp" if ts_micros.is_none() => {
                if let Some(ts) = timestamp::parse_ts_text(&value) {
                    ts_micros = Some(ts);
                    continue;
                }
            }
            "level" | "lvl" | "severity" if level.is_none() => {
                if let Some(l) = Level::from_text(&value) {
                    level = Some(l);
                    continue;
                }
            }
            "msg" | "message" if message.is_none() => {
                message = Some(value);
                continue;
            }
            _ => {}
        }
        fields.push((Cow::Borrowed(key), value));
    }
    if !any_pair {
        return None;
    }
    Some(Parsed { ts_micros, level, message: message.unwrap_or(Cow::Borrowed(line)), fields, matched: true })
}

/// Scans a double-quoted value whose content starts at `start` (just after the opening
/// quote). Returns the unescaped content and the index just after the closing quote; an
/// unterminated value runs to the end of `s`.
pub(crate) fn quoted(s: &str, start: usize) -> (Cow<'_, str>, usize) {
    let b = s.as_bytes();
    let mut i = start;
    let mut escaped = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => break,
            _ => i += 1,
        }
    }
    // `i` is the closing quote (ASCII) or past the end; either way a char boundary.
    let end = i.min(b.len());
    let raw = sub(s, start, end);
    let value = if escaped {
        unescape(raw, |c| match c {
            '"' => Some('"'),
            '\\' => Some('\\'),
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            _ => None,
        })
    } else {
        Cow::Borrowed(raw)
    };
    (value, (end + 1).min(b.len()))
}

/// Replaces `\x` sequences in `raw` by `map(x)`; a sequence `map` does not know, and a
/// trailing lone backslash, are kept as they are. Borrows when there is no backslash.
pub(crate) fn unescape(raw: &str, map: impl Fn(char) -> Option<char>) -> Cow<'_, str> {
    if !raw.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e) => match map(e) {
                Some(r) => out.push(r),
                None => {
                    out.push('\\');
                    out.push(e);
                }
            },
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Bytes that may make up a key inside a free-text message.
fn is_msg_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.'
}

/// Ends a value inside a free-text message.
fn is_msg_separator(c: u8) -> bool {
    is_blank(c) || c == b','
}

/// Appends the `key=value` pairs found in a free-text message to `out`, in order.
///
/// A key is a run of ASCII letters, digits, `_`, `-` and `.` at the start of a token
/// (tokens are separated by blanks and commas); a value ends at a blank or a comma, unless
/// it is double-quoted (then it may contain both). Tokens that are not pairs are skipped.
pub(crate) fn extract_in_message<'a>(msg: &'a str, out: &mut Fields<'a>) {
    let b = msg.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        if is_msg_separator(b[i]) {
            i += 1;
            continue;
        }
        let ks = i;
        while i < n && is_msg_key_byte(b[i]) {
            i += 1;
        }
        if i > ks && b.get(i) == Some(&b'=') {
            let key = sub(msg, ks, i);
            i += 1;
            let value = if b.get(i) == Some(&b'"') {
                let (v, next) = quoted(msg, i + 1);
                i = next;
                v
            } else {
                let vs = i;
                while i < n && !is_msg_separator(b[i]) {
                    i += 1;
                }
                Cow::Borrowed(sub(msg, vs, i))
            };
            out.push((Cow::Borrowed(key), value));
        } else {
            while i < n && !is_msg_separator(b[i]) {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:00:00Z in microseconds.
    const T0: i64 = 1_795_341_600_000_000;

    fn pairs<'b>(f: &'b Fields<'_>) -> Vec<(&'b str, &'b str)> {
        f.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect()
    }

    fn must(line: &str) -> Parsed<'_> {
        match parse(line) {
            Some(p) => p,
            None => panic!("did not match: {line:?}"),
        }
    }

    #[test]
    fn gateway_logfmt_line() {
        let p = must(
            r#"ts=2026-11-22T10:00:00.5Z level=warn msg="throughput limit \"reached\"" smsc=smsc1 queue=812 throttled"#,
        );
        assert!(p.matched);
        assert_eq!(p.ts_micros, Some(T0 + 500_000));
        assert_eq!(p.level, Some(Level::Warn));
        assert_eq!(p.message, "throughput limit \"reached\"");
        assert_eq!(pairs(&p.fields), [("smsc", "smsc1"), ("queue", "812"), ("throttled", "true")]);
        // Unescaped values allocate, plain ones borrow.
        assert!(matches!(p.message, Cow::Owned(_)));
        assert!(matches!(p.fields[0].1, Cow::Borrowed(_)));
    }

    #[test]
    fn aliases_and_epoch() {
        let p = must("time=1795341600 lvl=ERR message=boom");
        assert_eq!((p.ts_micros, p.level, p.message.as_ref()), (Some(T0), Some(Level::Error), "boom"));
        let p = must("timestamp=1795341600123 severity=3 id=7");
        assert_eq!((p.ts_micros, p.level), (Some(T0 + 123_000), Some(Level::Error)));
        assert_eq!(pairs(&p.fields), [("id", "7")]);
    }

    #[test]
    fn unparsable_special_values_stay_fields() {
        let p = must("ts=yesterday level=loud msg=x ts=2026-11-22T10:00:00Z");
        assert_eq!(p.ts_micros, Some(T0));
        assert_eq!(p.level, None);
        assert_eq!(pairs(&p.fields), [("ts", "yesterday"), ("level", "loud")]);
        // Second msg is a field.
        let p = must("msg=a msg=b");
        assert_eq!(p.message, "a");
        assert_eq!(pairs(&p.fields), [("msg", "b")]);
    }

    #[test]
    fn no_msg_key_means_whole_line() {
        let line = "event=dlr id=abc123 status=DELIVRD";
        let p = must(line);
        assert_eq!(p.message, line);
        assert_eq!(p.fields.len(), 3);
    }

    #[test]
    fn not_logfmt() {
        for line in ["", "   ", "hello world", "=====", "= = =", "\"a=b\"", "\u{FFFD}\u{FFFD}", "k\"=v\""] {
            assert!(parse(line).is_none(), "{line:?}");
        }
    }

    #[test]
    fn quoting_edge_cases() {
        // Unterminated quote runs to the end of the line.
        let p = must(r#"a=1 msg="never closed \"x"#);
        assert_eq!(p.message, "never closed \"x");
        // Trailing lone backslash is kept.
        let p = must(r#"msg="oops\"#);
        assert_eq!(p.message, "oops\\");
        // Empty values and values glued to the next key.
        let p = must(r#"a= b="" c="x"d=1"#);
        assert_eq!(pairs(&p.fields), [("a", ""), ("b", ""), ("c", "x"), ("d", "1")]);
        // Unknown escapes are kept; known ones decoded.
        let p = must(r#"msg="tab\tq\"\\ \q""#);
        assert_eq!(p.message, "tab\tq\"\\ \\q");
        // Bare value with `=` and quotes inside.
        let p = must(r#"url=http://x/?a=b&c="d""#);
        assert_eq!(pairs(&p.fields), [("url", "http://x/?a=b&c=\"d\"")]);
    }

    #[test]
    fn multibyte_values() {
        let p = must("msg=\"Grüße €\" to=+49ü é=ß flag€");
        assert_eq!(p.message, "Grüße €");
        assert_eq!(pairs(&p.fields), [("to", "+49ü"), ("é", "ß"), ("flag€", "true")]);
        let p = must("a=\"\\é\"");
        assert_eq!(pairs(&p.fields), [("a", "\\é")]);
    }

    #[test]
    fn postfix_message_pairs() {
        let msg = "4ABC123: to=<alice@example.com>, relay=mx.example.com[192.0.2.1]:25, \
                   delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9XYZ)";
        let mut f = Vec::new();
        extract_in_message(msg, &mut f);
        assert_eq!(
            pairs(&f),
            [
                ("to", "<alice@example.com>"),
                ("relay", "mx.example.com[192.0.2.1]:25"),
                ("delay", "0.5"),
                ("delays", "0.1/0/0.2/0.2"),
                ("dsn", "2.0.0"),
                ("status", "sent"),
            ]
        );
    }

    #[test]
    fn message_pairs_edge_cases() {
        let mut f = Vec::new();
        extract_in_message(r#"said "a=b c" x(y=z) =v k= q="two words",next=1 é=2 ü k2="open"#, &mut f);
        assert_eq!(pairs(&f), [("k", ""), ("q", "two words"), ("next", "1"), ("k2", "open")]);
        let equals = "=".repeat(10_000);
        let mut f = Vec::new();
        extract_in_message("", &mut f);
        extract_in_message("no pairs here, none", &mut f);
        extract_in_message(&equals, &mut f);
        assert!(f.is_empty());
    }
}
