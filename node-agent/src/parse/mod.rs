//! Log line parsing: turns one gateway log line into a timestamp, a severity, a message and
//! named fields, for each of the supported source formats (plain text, JSON, syslog and
//! logfmt-style key=value).
//!
//! Parsing never fails and never panics: a line that does not match its configured format
//! comes back whole as the message with [`Parsed::matched`] set to `false`. Results borrow
//! from the line; allocation happens only where text has to be unescaped or a field name
//! has to be built.

use std::borrow::Cow;

mod json;
mod kv;
mod plain;
mod syslog;
mod timestamp;

/// Log line format of a source, chosen per file in the agent config (`format = "syslog"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Free text, optionally prefixed by an ISO 8601 timestamp and a level
    /// (`2026-11-22 10:00:00 [32253] [6] ERROR: SMSC conn closed`).
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
    /// RFC 5424 or RFC 3164 syslog, with or without the `<PRI>` prefix.
    Syslog,
    /// logfmt: `key=value key2="quoted value" flag`.
    Kv,
}

/// Normalized severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Finest-grained tracing.
    Trace,
    /// Debugging output.
    Debug,
    /// Informational.
    Info,
    /// Normal but significant.
    Notice,
    /// Warning.
    Warn,
    /// Error.
    Error,
    /// Critical condition (also "fatal").
    Critical,
    /// Action must be taken immediately.
    Alert,
    /// System is unusable (also "panic").
    Emergency,
}

impl Level {
    /// The canonical lowercase name: "trace", "debug", "info", "notice", "warn", "error",
    /// "critical", "alert" or "emergency".
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Notice => "notice",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Critical => "critical",
            Level::Alert => "alert",
            Level::Emergency => "emergency",
        }
    }

    /// Looks a level up by name, ignoring ASCII case. Besides the canonical names this
    /// accepts the aliases "warning", "err", "fatal", "crit", "emerg", "panic",
    /// "information", "inf", "dbg" and "trc". Does not allocate.
    pub fn from_name(s: &str) -> Option<Level> {
        // Longest name is "information" (11 bytes): reject long tokens without comparing.
        if s.len() < 3 || s.len() > 11 {
            return None;
        }
        const NAMES: [(&str, Level); 19] = [
            ("trace", Level::Trace),
            ("trc", Level::Trace),
            ("debug", Level::Debug),
            ("dbg", Level::Debug),
            ("info", Level::Info),
            ("information", Level::Info),
            ("inf", Level::Info),
            ("notice", Level::Notice),
            ("warn", Level::Warn),
            ("warning", Level::Warn),
            ("error", Level::Error),
            ("err", Level::Error),
            ("critical", Level::Critical),
            ("crit", Level::Critical),
            ("fatal", Level::Critical),
            ("alert", Level::Alert),
            ("emergency", Level::Emergency),
            ("emerg", Level::Emergency),
            ("panic", Level::Emergency),
        ];
        NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)).map(|&(_, level)| level)
    }

    /// Maps a syslog severity (0..=7) to a level: 0 Emergency, 1 Alert, 2 Critical, 3 Error,
    /// 4 Warn, 5 Notice, 6 Info, 7 Debug. `None` above 7.
    pub fn from_syslog_severity(sev: u8) -> Option<Level> {
        Some(match sev {
            0 => Level::Emergency,
            1 => Level::Alert,
            2 => Level::Critical,
            3 => Level::Error,
            4 => Level::Warn,
            5 => Level::Notice,
            6 => Level::Info,
            7 => Level::Debug,
            _ => return None,
        })
    }

    /// Maps a numeric level as found in structured logs: 0..=7 as a syslog severity, and the
    /// bunyan/pino scale 10 (trace), 20, 30, 40, 50, 60 (fatal).
    pub(crate) fn from_number(n: u64) -> Option<Level> {
        match n {
            0..=7 => Level::from_syslog_severity(n as u8),
            10 => Some(Level::Trace),
            20 => Some(Level::Debug),
            30 => Some(Level::Info),
            40 => Some(Level::Warn),
            50 => Some(Level::Error),
            60 => Some(Level::Critical),
            _ => None,
        }
    }

    /// Level from a text value of a structured field: a name (see [`Level::from_name`]) or
    /// a decimal number (see [`Level::from_number`]).
    pub(crate) fn from_text(s: &str) -> Option<Level> {
        if let Some(l) = Level::from_name(s) {
            return Some(l);
        }
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok().and_then(Level::from_number)
    }
}

/// One parsed line. Borrowed from the line where possible (allocation only for unescaping).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed<'a> {
    /// Event time from the line, microseconds since the Unix epoch (UTC), if the format carries one.
    pub ts_micros: Option<i64>,
    /// Severity from the line, if it carries a recognised one.
    pub level: Option<Level>,
    /// The message text: the whole line for plain lines without a recognised prefix.
    pub message: Cow<'a, str>,
    /// Other parsed fields, in line order.
    pub fields: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Whether the line matched its format. Plain lines always match; a line that does not
    /// match comes back with the whole line as message and no timestamp, level or fields.
    pub matched: bool,
}

impl<'a> Parsed<'a> {
    /// The result for a line that does not match its format.
    pub(crate) fn unmatched(line: &'a str) -> Parsed<'a> {
        Parsed { ts_micros: None, level: None, message: Cow::Borrowed(line), fields: Vec::new(), matched: false }
    }
}

/// Parser settings that hold for a whole source.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext {
    /// "Now" in microseconds since the epoch: RFC 3164 timestamps carry no year; the year is
    /// the one that puts the timestamp nearest to (and not more than one day after) now.
    pub now_micros: i64,
    /// Also extract `key=value` pairs found in the message of syslog and plain lines.
    pub kv_in_message: bool,
}

/// Parse one line (without its line terminator) in the given format. Never fails: a line that
/// does not match its format comes back with the whole line as message and no fields, and
/// `Parsed::matched == false`. Plain lines always match.
pub fn parse<'a>(format: Format, line: &'a str, ctx: &ParseContext) -> Parsed<'a> {
    let parsed = match format {
        Format::Plain => Some(plain::parse(line, ctx)),
        Format::Json => json::parse(line),
        Format::Syslog => syslog::parse(line, ctx),
        Format::Kv => kv::parse(line),
    };
    parsed.unwrap_or_else(|| Parsed::unmatched(line))
}

/// `&s[start..end]`, or `""` if that is not a valid char-boundary range. Every caller passes
/// positions of ASCII bytes (always char boundaries), so the fallback is only a safety net
/// that turns a logic error into an empty string instead of a panic.
pub(crate) fn sub(s: &str, start: usize, end: usize) -> &str {
    s.get(start..end).unwrap_or("")
}

/// `&s[start..]`, or `""` if `start` is not a char boundary inside `s` (see [`sub`]).
pub(crate) fn tail(s: &str, start: usize) -> &str {
    s.get(start..).unwrap_or("")
}

/// Index of the first byte at or after `from` that is not a space or a tab.
pub(crate) fn skip_blanks(b: &[u8], mut from: usize) -> usize {
    while let Some(&c) = b.get(from) {
        if c != b' ' && c != b'\t' {
            break;
        }
        from += 1;
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:00:00Z in microseconds.
    const T0: i64 = 1_795_341_600_000_000;

    fn ctx(kv: bool) -> ParseContext {
        ParseContext { now_micros: T0, kv_in_message: kv }
    }

    const ALL: [Format; 4] = [Format::Plain, Format::Json, Format::Syslog, Format::Kv];

    /// Deterministic pseudo-random bytes (xorshift64*), no external crates.
    fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let v = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Invariants every result must satisfy, whatever the input.
    fn check_invariants(format: Format, line: &str, p: &Parsed<'_>) {
        if !p.matched {
            assert_eq!(p.message, line, "{format:?}: unmatched must keep the whole line");
            assert!(p.fields.is_empty(), "{format:?}: unmatched must have no fields");
            assert_eq!(p.ts_micros, None);
            assert_eq!(p.level, None);
        }
        if format == Format::Plain {
            assert!(p.matched, "plain lines always match");
        }
        assert!(p.message.len() <= line.len() + 3, "{format:?}: message grew");
    }

    #[test]
    fn level_names_and_aliases() {
        let cases = [
            ("trace", Level::Trace),
            ("TRC", Level::Trace),
            ("Debug", Level::Debug),
            ("dbg", Level::Debug),
            ("INFO", Level::Info),
            ("information", Level::Info),
            ("Inf", Level::Info),
            ("notice", Level::Notice),
            ("warn", Level::Warn),
            ("WARNING", Level::Warn),
            ("error", Level::Error),
            ("ERR", Level::Error),
            ("critical", Level::Critical),
            ("crit", Level::Critical),
            ("FATAL", Level::Critical),
            ("alert", Level::Alert),
            ("emergency", Level::Emergency),
            ("emerg", Level::Emergency),
            ("PANIC", Level::Emergency),
        ];
        for (name, level) in cases {
            assert_eq!(Level::from_name(name), Some(level), "{name}");
        }
        for bad in ["", "in", "informational", "warnin", "errors", "ERROR:", " info", "ınfo", "\u{FFFD}"] {
            assert_eq!(Level::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn level_as_str_round_trips() {
        let all = [
            Level::Trace,
            Level::Debug,
            Level::Info,
            Level::Notice,
            Level::Warn,
            Level::Error,
            Level::Critical,
            Level::Alert,
            Level::Emergency,
        ];
        let names: Vec<&str> = all.iter().map(|l| l.as_str()).collect();
        assert_eq!(names, ["trace", "debug", "info", "notice", "warn", "error", "critical", "alert", "emergency"]);
        for l in all {
            assert_eq!(Level::from_name(l.as_str()), Some(l));
        }
        // Ordering follows severity.
        assert!(Level::Trace < Level::Info && Level::Error < Level::Emergency);
    }

    #[test]
    fn syslog_severity_mapping() {
        let expect = [
            Level::Emergency,
            Level::Alert,
            Level::Critical,
            Level::Error,
            Level::Warn,
            Level::Notice,
            Level::Info,
            Level::Debug,
        ];
        for (sev, level) in expect.iter().enumerate() {
            assert_eq!(Level::from_syslog_severity(sev as u8), Some(*level));
        }
        assert_eq!(Level::from_syslog_severity(8), None);
        assert_eq!(Level::from_syslog_severity(255), None);
        assert_eq!(Level::from_text("3"), Some(Level::Error));
        assert_eq!(Level::from_text("50"), Some(Level::Error));
        assert_eq!(Level::from_text("8"), None);
        assert_eq!(Level::from_text("003"), None);
    }

    #[test]
    fn format_deserializes_lowercase() {
        #[derive(serde::Deserialize)]
        struct Cfg {
            format: Format,
        }
        for (text, f) in [
            (r#"{"format":"plain"}"#, Format::Plain),
            (r#"{"format":"json"}"#, Format::Json),
            (r#"{"format":"syslog"}"#, Format::Syslog),
            (r#"{"format":"kv"}"#, Format::Kv),
        ] {
            let cfg: Cfg = serde_json::from_str(text).unwrap();
            assert_eq!(cfg.format, f);
        }
        assert!(serde_json::from_str::<Cfg>(r#"{"format":"Syslog"}"#).is_err());
        assert_eq!(Format::default(), Format::Plain);
        assert_eq!(serde_json::to_string(&Format::Kv).unwrap(), "\"kv\"");
    }

    #[test]
    fn dispatch_by_format() {
        let c = ctx(false);
        let p = parse(Format::Json, r#"{"msg":"hi","level":"warn"}"#, &c);
        assert!(p.matched);
        assert_eq!((p.message.as_ref(), p.level), ("hi", Some(Level::Warn)));

        let p = parse(Format::Kv, "level=error msg=boom", &c);
        assert_eq!((p.message.as_ref(), p.level), ("boom", Some(Level::Error)));

        let p = parse(Format::Syslog, "<11>Nov 22 09:59:59 gw1 bearerbox[77]: boom", &c);
        assert_eq!((p.message.as_ref(), p.level), ("boom", Some(Level::Error)));

        let p = parse(Format::Plain, "2026-11-22 10:00:00 [1] [6] WARNING: slow", &c);
        assert_eq!((p.message.as_ref(), p.level, p.ts_micros), ("slow", Some(Level::Warn), Some(T0)));

        // The same JSON line is not syslog.
        let line = r#"{"msg":"hi"}"#;
        let p = parse(Format::Syslog, line, &c);
        assert!(!p.matched);
        assert_eq!(p.message, line);
    }

    #[test]
    fn empty_and_blank_lines() {
        let c = ctx(true);
        for line in ["", " ", "   \t  "] {
            let plain = parse(Format::Plain, line, &c);
            assert!(plain.matched);
            assert_eq!(plain.message, line);
            assert!(plain.fields.is_empty());
            for f in [Format::Json, Format::Syslog, Format::Kv] {
                let p = parse(f, line, &c);
                assert!(!p.matched, "{f:?} {line:?}");
                check_invariants(f, line, &p);
            }
        }
    }

    #[test]
    fn hostile_random_bytes_10mb() {
        let bytes = random_bytes(10 * 1024 * 1024, 0x9E37_79B9_7F4A_7C15);
        let line = String::from_utf8_lossy(&bytes);
        for kv in [false, true] {
            for f in ALL {
                let p = parse(f, &line, &ctx(kv));
                check_invariants(f, &line, &p);
                if f == Format::Json || f == Format::Syslog {
                    assert!(!p.matched, "{f:?} matched random bytes");
                }
            }
        }
        // Random bytes with a valid prefix in front still parse the prefix and do not panic.
        let prefixed = format!("2026-11-22 10:00:00 [9] ERROR: {line}");
        let p = parse(Format::Plain, &prefixed, &ctx(true));
        assert_eq!((p.ts_micros, p.level), (Some(T0), Some(Level::Error)));
        assert_eq!(p.message.len(), line.len());
        let prefixed = format!("<27>Nov 22 10:00:00 gw1 smsbox[9]: {line}");
        let p = parse(Format::Syslog, &prefixed, &ctx(true));
        assert!(p.matched);
        assert_eq!(p.level, Some(Level::Error));
        assert_eq!(p.message.len(), line.len());
    }

    #[test]
    fn hostile_equals_signs_10mb() {
        let line = "=".repeat(10 * 1024 * 1024);
        for kv in [false, true] {
            for f in ALL {
                let p = parse(f, &line, &ctx(kv));
                check_invariants(f, &line, &p);
                assert!(p.fields.is_empty(), "{f:?}");
                assert_eq!(p.message.len(), line.len());
            }
        }
        assert!(!parse(Format::Kv, &line, &ctx(false)).matched);
    }

    #[test]
    fn hostile_replacement_chars() {
        let unit = "\u{FFFD}";
        let lines = [
            unit.repeat(100_000),
            format!("{u}={u} {u}=\"{u}\" k{u}=v{u}", u = unit),
            format!("<{u}>1 {u} {u} {u} {u} {u} [{u} {u}=\"{u}\"] {u}", u = unit),
            format!("<13>1 2026-11-22T10:00:00Z h{u} a{u} p{u} m{u} [x{u} y=\"{u}\\\"\"] {u}=\"{u}\"", u = unit),
            format!("{{\"{u}\":\"{u}\",\"msg\":\"{u}\"}}", u = unit),
            format!("2026-11-22 10:00:00 [{u}] {u}: {u}={u}", u = unit),
            format!("Nov 22 10:00:00 {u} {u}[{u}]: {u}", u = unit),
        ];
        for line in &lines {
            for kv in [false, true] {
                for f in ALL {
                    let p = parse(f, line, &ctx(kv));
                    check_invariants(f, line, &p);
                }
            }
        }
        // Spot-check real values.
        let p = parse(Format::Kv, &lines[1], &ctx(false));
        assert!(p.matched);
        assert_eq!(p.fields[0], (Cow::Borrowed(unit), Cow::Borrowed(unit)));
        let p = parse(Format::Json, &lines[4], &ctx(false));
        assert_eq!(p.message, unit);
        assert_eq!(p.fields, vec![(Cow::Borrowed(unit), Cow::Borrowed(unit))]);
        let p = parse(Format::Syslog, &lines[3], &ctx(true));
        assert!(p.matched);
        assert_eq!(p.ts_micros, Some(T0));
        let sd = format!("x{unit}.y");
        assert!(p.fields.iter().any(|(k, v)| *k == sd && *v == format!("{unit}\"")));
        let p = parse(Format::Syslog, &lines[6], &ctx(false));
        assert!(p.matched);
        assert_eq!(p.message, unit);
    }

    /// Realistic lines with multi-byte characters, cut at every char boundary and glued to
    /// multi-byte characters: no panic, and the invariants hold.
    #[test]
    fn truncation_at_every_char_boundary() {
        let lines = [
            "2026-11-22 10:00:00,123+02:00 [32253] [6] ERROR: SMSC[é€] conn to=<ü@b.c>, x=\"ß\\\"",
            "<134>1 2026-11-22T10:00:00.5Z gw-ü smsbox 4711 DLR [dlr@1 id=\"ä\\]\" st=\"€\"] \u{FEFF}ok ü=é",
            "<22>Nov  2 10:00:00 mx1 postfix/smtp[123]: 4ABC: to=<a@ü.de>, relay=mx[1.2.3.4]:25, status=sent (250 ok)",
            "2026-11-22T10:00:00.123456+02:00 gw1 kannel[é]: ää=öö",
            r#"{"ts":"2026-11-22T10:00:00Z","level":"info","msg":"Zustellung ✓","to":"+49€","n":[1,{"é":null}]}"#,
            r#"ts=2026-11-22T10:00:00Z level=warn msg="über \"quote\" €" smsc=é flag"#,
        ];
        for line in lines {
            let mut cuts: Vec<usize> = line.char_indices().map(|(i, _)| i).collect();
            cuts.push(line.len());
            for cut in cuts {
                let head = &line[..cut];
                for glued in [head.to_string(), format!("{head}é"), format!("{head}€x")] {
                    for kv in [false, true] {
                        for f in ALL {
                            let p = parse(f, &glued, &ctx(kv));
                            check_invariants(f, &glued, &p);
                        }
                    }
                }
            }
        }
    }
}
