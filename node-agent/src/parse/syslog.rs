//! Syslog lines: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD...] MSG`) and
//! RFC 3164 / BSD (`[<PRI>]Mmm dd hh:mm:ss HOST TAG[PID]: MSG`, the `<PRI>` being optional
//! because files written by syslog daemons usually omit it). An RFC 3339 timestamp is
//! accepted in place of the BSD one (rsyslog's high-precision file format).
//!
//! Fields, in line order: `facility` (only with a PRI), `host`, `app`, `pid`, `msgid`
//! (5424), each structured-data parameter as `<sd-id>.<param>`, then, with
//! `kv_in_message`, the `key=value` pairs of the message.

use std::borrow::Cow;

use chrono::Datelike;

use super::kv::{self, Fields};
use super::{skip_blanks, sub, tail, timestamp, Level, ParseContext, Parsed};

/// Facility names by number (PRI / 8); PRI is at most 191, so 0..=23 covers all.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp",
    "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

/// Month abbreviations of BSD timestamps.
const MONTHS: [&[u8; 3]; 12] =
    [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"];

/// Microseconds in a day.
const DAY_MICROS: i64 = 86_400_000_000;

/// Header fields shared by both syslog flavours, gathered before building the result.
struct Header<'a> {
    ts_micros: Option<i64>,
    pri: Option<u8>,
    fields: Fields<'a>,
}

impl<'a> Header<'a> {
    fn new(pri: Option<u8>) -> Header<'a> {
        let mut fields = Vec::new();
        if let Some(pri) = pri {
            let facility = FACILITIES.get(usize::from(pri / 8)).copied().unwrap_or("unknown");
            fields.push((Cow::Borrowed("facility"), Cow::Borrowed(facility)));
        }
        Header { ts_micros: None, pri, fields }
    }

    fn push(&mut self, key: &'static str, value: &'a str) {
        self.fields.push((Cow::Borrowed(key), Cow::Borrowed(value)));
    }

    fn finish(mut self, msg: &'a str, ctx: &ParseContext) -> Parsed<'a> {
        if ctx.kv_in_message {
            kv::extract_in_message(msg, &mut self.fields);
        }
        Parsed {
            ts_micros: self.ts_micros,
            level: self.pri.and_then(|p| Level::from_syslog_severity(p % 8)),
            message: Cow::Borrowed(msg),
            fields: self.fields,
            matched: true,
        }
    }
}

/// Parses a syslog line; `None` when it is neither RFC 5424 nor RFC 3164.
pub(crate) fn parse<'a>(line: &'a str, ctx: &ParseContext) -> Option<Parsed<'a>> {
    let b = line.as_bytes();
    let (pri, after_pri) = if b.first() == Some(&b'<') {
        let (pri, end) = parse_pri(b)?;
        (Some(pri), end)
    } else {
        (None, 0)
    };
    if pri.is_some() {
        if let Some(after_version) = version(b, after_pri) {
            return parse_5424(line, pri, after_version, ctx);
        }
    }
    parse_3164(line, pri, after_pri, ctx)
}

/// `<PRI>` at the start: 1 to 3 digits, value at most 191. Returns PRI and the index after `>`.
fn parse_pri(b: &[u8]) -> Option<(u8, usize)> {
    let mut v: u32 = 0;
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        if !c.is_ascii_digit() {
            break;
        }
        if i > 3 {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
        i += 1;
    }
    if i == 1 || b.get(i) != Some(&b'>') || v > 191 {
        return None;
    }
    Some((u8::try_from(v).ok()?, i + 1))
}

/// RFC 5424 VERSION (1 or 2 digits, not starting with 0) followed by a space.
/// Returns the index after the space.
fn version(b: &[u8], at: usize) -> Option<usize> {
    let first = *b.get(at)?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    match b.get(at + 1) {
        Some(b' ') => Some(at + 2),
        Some(c) if c.is_ascii_digit() && b.get(at + 2) == Some(&b' ') => Some(at + 3),
        _ => None,
    }
}

/// The next space-delimited token at or after `at` (leading spaces skipped): `(start, end)`.
fn token(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let start = skip_blanks(b, at);
    let mut end = start;
    while let Some(&c) = b.get(end) {
        if c == b' ' || c == b'\t' {
            break;
        }
        end += 1;
    }
    (end > start).then_some((start, end))
}

/// A 5424 header value: `None` for the nil value `-`.
fn non_nil(s: &str) -> Option<&str> {
    (s != "-").then_some(s)
}

fn parse_5424<'a>(line: &'a str, pri: Option<u8>, at: usize, ctx: &ParseContext) -> Option<Parsed<'a>> {
    let b = line.as_bytes();
    let mut h = Header::new(pri);

    let (s, e) = token(b, at)?;
    let ts = sub(line, s, e);
    if ts != "-" {
        h.ts_micros = Some(timestamp::parse_rfc3339(ts)?);
    }
    let mut pos = e;
    for key in ["host", "app", "pid", "msgid"] {
        let (s, e) = token(b, pos)?;
        if let Some(v) = non_nil(sub(line, s, e)) {
            h.push(key, v);
        }
        pos = e;
    }

    // STRUCTURED-DATA: `-` or one or more `[id name="value" ...]`.
    let sd_start = skip_blanks(b, pos);
    let after_sd = match b.get(sd_start) {
        Some(b'-') => sd_start + 1,
        Some(b'[') => structured_data(line, sd_start, &mut h.fields)?,
        _ => return None,
    };
    let msg = match b.get(after_sd) {
        None => "",
        Some(b' ') => tail(line, after_sd + 1),
        Some(_) => return None,
    };
    let msg = msg.strip_prefix('\u{FEFF}').unwrap_or(msg);
    Some(h.finish(msg, ctx))
}

/// Parses SD-ELEMENTs starting at the `[` at `at`, pushing `<sd-id>.<name>` fields.
/// Returns the index after the last `]`, `None` if malformed.
fn structured_data<'a>(line: &'a str, mut at: usize, fields: &mut Fields<'a>) -> Option<usize> {
    let b = line.as_bytes();
    while b.get(at) == Some(&b'[') {
        let id_start = at + 1;
        let mut i = id_start;
        while let Some(&c) = b.get(i) {
            if matches!(c, b' ' | b']' | b'=' | b'"') {
                break;
            }
            i += 1;
        }
        if i == id_start {
            return None;
        }
        let id = sub(line, id_start, i);
        loop {
            match b.get(i) {
                Some(b']') => {
                    i += 1;
                    break;
                }
                Some(b' ') => {
                    i += 1;
                    let name_start = i;
                    while let Some(&c) = b.get(i) {
                        if matches!(c, b' ' | b']' | b'=' | b'"') {
                            break;
                        }
                        i += 1;
                    }
                    if i == name_start || b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
                        return None;
                    }
                    let name = sub(line, name_start, i);
                    let (value, next) = sd_value(line, i + 2)?;
                    fields.push((Cow::Owned(format!("{id}.{name}")), value));
                    i = next;
                }
                _ => return None,
            }
        }
        at = i;
    }
    Some(at)
}

/// An SD-PARAM value starting at `start` (after the opening quote); `\"`, `\\` and `\]` are
/// unescaped. Returns the value and the index after the closing quote, `None` if unterminated.
fn sd_value(line: &str, start: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = line.as_bytes();
    let mut i = start;
    let mut escaped = false;
    loop {
        match *b.get(i)? {
            b'\\' => {
                escaped = true;
                i += 2;
            }
            b'"' => break,
            _ => i += 1,
        }
    }
    let raw = sub(line, start, i);
    let value =
        if escaped { kv::unescape(raw, |c| matches!(c, '"' | '\\' | ']').then_some(c)) } else { Cow::Borrowed(raw) };
    Some((value, i + 1))
}

fn parse_3164<'a>(line: &'a str, pri: Option<u8>, at: usize, ctx: &ParseContext) -> Option<Parsed<'a>> {
    let b = line.as_bytes();
    let mut h = Header::new(pri);
    let (ts, ts_end) = match timestamp::parse_rfc3339_prefix(b.get(at..)?) {
        Some((ts, n)) => (ts, at + n),
        None => bsd_timestamp(b, at, ctx.now_micros)?,
    };
    // The timestamp must be followed by a blank or end the line.
    match b.get(ts_end) {
        None | Some(b' ') | Some(b'\t') => {}
        Some(_) => return None,
    }
    h.ts_micros = Some(ts);

    let Some((s, e)) = token(b, ts_end) else {
        return Some(h.finish("", ctx));
    };
    // HOSTNAME, unless the first token already is the TAG (hostname omitted).
    let (tag_token, msg_start) = match tag(sub(line, s, e)) {
        Some(t) => (Some(t), e),
        None => {
            h.push("host", sub(line, s, e));
            match token(b, e) {
                Some((s2, e2)) => match tag(sub(line, s2, e2)) {
                    Some(t) => (Some(t), e2),
                    None => (None, s2),
                },
                None => (None, e),
            }
        }
    };
    if let Some((app, pid)) = tag_token {
        h.push("app", app);
        if let Some(pid) = pid {
            h.push("pid", pid);
        }
    }
    let msg = tail(line, skip_blanks(b, msg_start));
    Some(h.finish(msg, ctx))
}

/// Recognises a TAG token: `name:`, `name[pid]:` or `name[pid]`. Returns name and pid.
fn tag(t: &str) -> Option<(&str, Option<&str>)> {
    let (body, colon) = match t.strip_suffix(':') {
        Some(body) => (body, true),
        None => (t, false),
    };
    if let Some(open) = body.find('[') {
        let inner = body.get(open + 1..)?.strip_suffix(']')?;
        let name = body.get(..open)?;
        if name.is_empty() || inner.contains(['[', ']']) {
            return None;
        }
        return Some((name, (!inner.is_empty()).then_some(inner)));
    }
    if colon && !body.is_empty() && !body.contains(']') {
        return Some((body, None));
    }
    None
}

/// Parses a BSD timestamp `Mmm dd hh:mm:ss[.frac]` (day may be space-padded or a single
/// digit) at `at`, placing it in the year nearest to `now` but not more than one day after
/// it. Returns microseconds and the index after the timestamp.
fn bsd_timestamp(b: &[u8], at: usize, now: i64) -> Option<(i64, usize)> {
    let mon = b.get(at..at + 3)?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))?;
    let month = u32::try_from(month).ok()? + 1;
    if b.get(at + 3) != Some(&b' ') {
        return None;
    }
    let mut i = at + 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut day: u32 = 0;
    let day_start = i;
    while let Some(&c) = b.get(i) {
        if !c.is_ascii_digit() || i - day_start >= 2 {
            break;
        }
        day = day * 10 + u32::from(c - b'0');
        i += 1;
    }
    if i == day_start || b.get(i) != Some(&b' ') {
        return None;
    }
    let (hh, mm, ss, us, end) = timestamp::clock(b, i + 1)?;

    let now_year = chrono::DateTime::from_timestamp_micros(now).map_or(1970, |d| d.year());
    let limit = now.saturating_add(DAY_MICROS);
    let ts = [now_year - 1, now_year, now_year + 1]
        .into_iter()
        .filter_map(|y| timestamp::civil_to_micros(y, month, day, hh, mm, ss, us))
        .filter(|&t| t <= limit)
        .max()?;
    Some((ts, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:00:00Z in microseconds.
    const T0: i64 = 1_795_341_600_000_000;

    fn ctx(kv: bool) -> ParseContext {
        ParseContext { now_micros: T0, kv_in_message: kv }
    }

    fn must(line: &str, kv: bool) -> Parsed<'_> {
        match parse(line, &ctx(kv)) {
            Some(p) => p,
            None => panic!("did not match: {line:?}"),
        }
    }

    fn pairs<'b>(f: &'b Fields<'_>) -> Vec<(&'b str, &'b str)> {
        f.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect()
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<i64> {
        timestamp::civil_to_micros(y, mo, d, h, mi, s, 0)
    }

    #[test]
    fn rfc5424_full() {
        let line = "<165>1 2026-11-22T10:00:00.003Z gw1.example.net smsbox 4711 DLR \
                    [dlr@32473 id=\"msg-1\" status=\"DELIVRD\" text=\"a \\\"b\\\" c\\\\d\\]e\\x\"][meta seq=\"9\"] \u{FEFF}DLR for msg-1";
        let p = must(line, false);
        assert!(p.matched);
        assert_eq!(p.ts_micros, Some(T0 + 3_000));
        assert_eq!(p.level, Some(Level::Notice));
        assert_eq!(p.message, "DLR for msg-1");
        assert_eq!(
            pairs(&p.fields),
            [
                ("facility", "local4"),
                ("host", "gw1.example.net"),
                ("app", "smsbox"),
                ("pid", "4711"),
                ("msgid", "DLR"),
                ("dlr@32473.id", "msg-1"),
                ("dlr@32473.status", "DELIVRD"),
                ("dlr@32473.text", "a \"b\" c\\d]e\\x"),
                ("meta.seq", "9"),
            ]
        );
    }

    #[test]
    fn rfc5424_nil_values_and_no_msg() {
        let p = must("<34>1 - - - - - -", false);
        assert_eq!((p.ts_micros, p.level), (None, Some(Level::Critical)));
        assert_eq!(p.message, "");
        assert_eq!(pairs(&p.fields), [("facility", "auth")]);

        let p = must("<14>1 2026-11-22T12:00:00+02:00 host app - - - hello  world", false);
        assert_eq!(p.ts_micros, Some(T0));
        assert_eq!(p.message, "hello  world");
        assert_eq!(pairs(&p.fields), [("facility", "user"), ("host", "host"), ("app", "app")]);
    }

    #[test]
    fn rfc5424_malformed() {
        for line in [
            "<34>1 2026-11-22T10:00:00Z host app",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID",
            "<34>1 notatime host app 1 ID - msg",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID [x a=\"unterminated] msg",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID [x a=unquoted] msg",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID [] msg",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID [x]msg",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID x msg",
            "<34>1 2026-11-22T10:00:00Z host app 1 ID [x a=\"1\"",
        ] {
            assert!(parse(line, &ctx(false)).is_none(), "{line:?}");
        }
    }

    #[test]
    fn rfc3164_postfix_with_kv() {
        let line = "<22>Nov 22 09:58:01 mx1 postfix/smtp[12345]: 4ABC123: to=<alice@example.com>, \
                    relay=mx.example.com[192.0.2.1]:25, delay=0.5, status=sent (250 2.0.0 Ok)";
        let p = must(line, true);
        assert_eq!(p.ts_micros, utc(2026, 11, 22, 9, 58, 1));
        assert_eq!(p.level, Some(Level::Info));
        assert!(p.message.starts_with("4ABC123: to=<alice@example.com>,"));
        assert_eq!(
            pairs(&p.fields),
            [
                ("facility", "mail"),
                ("host", "mx1"),
                ("app", "postfix/smtp"),
                ("pid", "12345"),
                ("to", "<alice@example.com>"),
                ("relay", "mx.example.com[192.0.2.1]:25"),
                ("delay", "0.5"),
                ("status", "sent"),
            ]
        );
        // Without kv_in_message only the header fields.
        assert_eq!(must(line, false).fields.len(), 4);
    }

    #[test]
    fn rfc3164_without_pri_and_padded_day() {
        let p = must("Nov  2 07:05:09 gw2 bearerbox[811]: SMSC[smsc1]: connected", false);
        assert_eq!(p.ts_micros, utc(2026, 11, 2, 7, 5, 9));
        assert_eq!(p.level, None);
        assert_eq!(p.message, "SMSC[smsc1]: connected");
        assert_eq!(pairs(&p.fields), [("host", "gw2"), ("app", "bearerbox"), ("pid", "811")]);

        let p = must("nov 2 07:05:09 gw2 kernel: oom", false);
        assert_eq!(p.ts_micros, utc(2026, 11, 2, 7, 5, 9));
        assert_eq!(pairs(&p.fields), [("host", "gw2"), ("app", "kernel")]);
        assert_eq!(p.message, "oom");
    }

    #[test]
    fn rfc3164_tag_variants() {
        // No tag: the rest after the host is the message.
        let p = must("Nov 22 09:00:00 gw1 last message repeated 3 times", false);
        assert_eq!(p.message, "last message repeated 3 times");
        assert_eq!(pairs(&p.fields), [("host", "gw1")]);
        // Host omitted: the first token is the tag.
        let p = must("<13>Nov 22 09:00:00 app[42]: hi", false);
        assert_eq!(pairs(&p.fields), [("facility", "user"), ("app", "app"), ("pid", "42")]);
        assert_eq!(p.message, "hi");
        // Tag with pid but no colon; URL-like token is not a tag.
        let p = must("Nov 22 09:00:00 gw1 smsbox[7] http://x/y", false);
        assert_eq!(pairs(&p.fields), [("host", "gw1"), ("app", "smsbox"), ("pid", "7")]);
        assert_eq!(p.message, "http://x/y");
        let p = must("Nov 22 09:00:00 gw1 http://x/y z", false);
        assert_eq!(pairs(&p.fields), [("host", "gw1")]);
        assert_eq!(p.message, "http://x/y z");
        // Timestamp only.
        let p = must("Nov 22 09:00:00", false);
        assert_eq!((p.ts_micros, p.message.as_ref()), (utc(2026, 11, 22, 9, 0, 0), ""));
    }

    #[test]
    fn rsyslog_high_precision_timestamp() {
        let p = must("2026-11-22T12:00:00.123456+02:00 gw1 opensmppbox[99]: bind ok", false);
        assert_eq!(p.ts_micros, Some(T0 + 123_456));
        assert_eq!(p.message, "bind ok");
        assert_eq!(pairs(&p.fields), [("host", "gw1"), ("app", "opensmppbox"), ("pid", "99")]);
        let p = must("<30>2026-11-22T10:00:00Z gw1 app: x", false);
        assert_eq!((p.ts_micros, p.level), (Some(T0), Some(Level::Info)));
    }

    #[test]
    fn year_inference() {
        // Now is 2026-11-22 10:00 UTC: tomorrow still this year, the day after tomorrow last year.
        let p = must("Nov 23 09:00:00 h a: x", false);
        assert_eq!(p.ts_micros, utc(2026, 11, 23, 9, 0, 0));
        let p = must("Nov 24 09:00:00 h a: x", false);
        assert_eq!(p.ts_micros, utc(2025, 11, 24, 9, 0, 0));
        let p = must("Jan  1 00:00:00 h a: x", false);
        assert_eq!(p.ts_micros, utc(2026, 1, 1, 0, 0, 0));
        // Around new year: a December line read just after midnight is last year's,
        // a January line read on Dec 31 is next year's.
        let jan1 = utc(2027, 1, 1, 0, 5, 0).unwrap_or(0);
        let c = ParseContext { now_micros: jan1, kv_in_message: false };
        let p = parse("Dec 31 23:59:00 h a: x", &c).map(|p| p.ts_micros);
        assert_eq!(p, Some(utc(2026, 12, 31, 23, 59, 0)));
        let dec31 = utc(2026, 12, 31, 23, 0, 0).unwrap_or(0);
        let c = ParseContext { now_micros: dec31, kv_in_message: false };
        let p = parse("Jan  1 00:10:00 h a: x", &c).map(|p| p.ts_micros);
        assert_eq!(p, Some(utc(2027, 1, 1, 0, 10, 0)));
        // Feb 29 goes to the nearest leap year within reach (2028 when now is 2028-03-01).
        let c = ParseContext { now_micros: utc(2028, 3, 1, 0, 0, 0).unwrap_or(0), kv_in_message: false };
        let p = parse("Feb 29 12:00:00 h a: x", &c).map(|p| p.ts_micros);
        assert_eq!(p, Some(utc(2028, 2, 29, 12, 0, 0)));
    }

    #[test]
    fn not_syslog() {
        for line in [
            "",
            "   ",
            "<999>Nov 22 10:00:00 h a: x",
            "<192>1 - - - - - -",
            "<1234>1 - - - - - -",
            "<>Nov 22 10:00:00 h a: x",
            "<13",
            "<13>",
            "<13>hello world",
            "Nov 22 10:00 h a: x",
            "Nov 22 10:00:00x h a: x",
            "Nov 31 10:00:00 h a: x",
            "Nox 22 10:00:00 h a: x",
            "Nov 222 10:00:00 h a: x",
            "Nov",
            "N",
            "hello world",
            "2026-11-22 10:00",
            "Növ 22 10:00:00 h a: x",
            "Nov\u{FFFD}22 10:00:00",
        ] {
            assert!(parse(line, &ctx(true)).is_none(), "{line:?}");
        }
    }

    #[test]
    fn pri_bounds_and_facilities() {
        let p = must("<191>Nov 22 10:00:00 h a: x", false);
        assert_eq!((p.level, pairs(&p.fields)[0]), (Some(Level::Debug), ("facility", "local7")));
        let p = must("<0>Nov 22 10:00:00 h a: x", false);
        assert_eq!((p.level, pairs(&p.fields)[0]), (Some(Level::Emergency), ("facility", "kern")));
    }

    #[test]
    fn multibyte_in_header_and_tags() {
        let p = must("Nov 22 10:00:00 hö€t äpp[1é]: ü=1 mëssage", true);
        assert_eq!(pairs(&p.fields), [("host", "hö€t"), ("app", "äpp"), ("pid", "1é")]);
        assert_eq!(p.message, "ü=1 mëssage");
        let p = must("<13>1 2026-11-22T10:00:00Z hé ä€ - - [é a=\"€\\\"\"] ", false);
        assert_eq!(pairs(&p.fields)[3], ("é.a", "€\""));
        assert_eq!(p.message, "");
        // A bracket glued to a multi-byte char inside the tag.
        let p = must("Nov 22 10:00:00 h a€[: x", false);
        assert_eq!(pairs(&p.fields), [("host", "h")]);
        assert_eq!(p.message, "a€[: x");
    }
}
