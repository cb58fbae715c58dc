//! The StatsD line protocol, with DogStatsD tags.
//!
//! One datagram (or HTTP body) holds lines separated by `\n`; each line is
//!
//! ```text
//! <name>:<value>[:<value>...]|<type>[|@<sample rate>][|#<tag>[:<value>],...]
//! ```
//!
//! with `<type>` one of `c` (counter), `g` (gauge; a value with a leading `+` or `-` changes
//! the gauge by that much), `ms`, `h` or `d` (timer, histogram, distribution: all timers here),
//! `s` (set: distinct values are counted). Several values in one line (DogStatsD 1.1) are taken
//! for counters and timers. Other `|` sections (`|c:` container ids, `|T` timestamps) are
//! ignored. Tags are sorted and deduplicated by key, so `#b:2,a:1` and `#a:1,b:2` are one series.
//!
//! [`parse_line`] never panics; every refusal says why ([`BadLine`]).

use std::fmt;

/// Longest metric name, tag, or set member.
pub const MAX_NAME_BYTES: usize = 200;
/// Most tags on one line.
pub const MAX_TAGS: usize = 32;
/// Most values in one line.
pub const MAX_VALUES: usize = 256;

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Summed per interval; sent as the interval's delta.
    Counter,
    /// The last value; sent every interval.
    Gauge,
    /// Samples into a histogram (`ms`, `h`, `d`).
    Timer,
    /// Distinct members per interval.
    Set,
}

impl Kind {
    /// The name in the `metrics` table's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Timer => "timer",
            Kind::Set => "set",
        }
    }
}

/// The value part of one line.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Counter increments (already divided by the sample rate).
    Count(Vec<f64>),
    /// A gauge's new value.
    Gauge(f64),
    /// A change of a gauge (`+3`, `-2`).
    GaugeDelta(f64),
    /// Timer samples, each standing for `weight` samples (1 / sample rate).
    Samples {
        /// The sample values.
        values: Vec<f64>,
        /// How many samples each stands for.
        weight: u64,
    },
    /// A set member.
    Member(&'a str),
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    /// The metric name.
    pub name: &'a str,
    /// Its kind.
    pub kind: Kind,
    /// Its value(s).
    pub value: Value<'a>,
    /// Tags, sorted by key, joined as `k:v,k2:v2` (empty when none).
    pub tags: String,
}

/// Why a line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine(pub String);

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadLine {}

fn bad<T>(why: impl Into<String>) -> Result<T, BadLine> {
    Err(BadLine(why.into()))
}

fn check_text(what: &str, s: &str) -> Result<(), BadLine> {
    if s.is_empty() {
        return bad(format!("empty {what}"));
    }
    if s.len() > MAX_NAME_BYTES {
        return bad(format!("{what} longer than {MAX_NAME_BYTES} bytes"));
    }
    if s.chars().any(|c| c.is_control() || c == ',' || c == '|') {
        return bad(format!("{what} {s:?} holds a control character, ',' or '|'"));
    }
    Ok(())
}

fn number(s: &str) -> Result<f64, BadLine> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => bad(format!("value {s:?} is not a finite number")),
    }
}

/// The text of one line as it came off the wire, or why it is refused: names, tags and set
/// members are UTF-8, and a line that is not would be stored under replacement characters, a
/// series no gateway sent.
pub fn line_text(line: &[u8]) -> Result<&str, BadLine> {
    std::str::from_utf8(line).map_err(|e| {
        let valid = e.valid_up_to();
        let in_name = !line.get(..valid).unwrap_or_default().contains(&b':');
        let part = if in_name { "the metric name" } else { "the line" };
        BadLine(format!("{part} is not valid UTF-8 (byte {} of the line)", valid + 1))
    })
}

/// Parse one line (without its `\n`).
pub fn parse_line(line: &str) -> Result<Line<'_>, BadLine> {
    let line = line.trim_end_matches('\r');
    let mut sections = line.split('|');
    let head = sections.next().unwrap_or_default();
    let Some((name, values)) = head.split_once(':') else {
        return bad("no ':' between name and value");
    };
    check_text("name", name)?;
    if name.contains(':') || name.contains('#') || name.contains('@') {
        return bad(format!("name {name:?} holds ':', '#' or '@'"));
    }
    let Some(kind) = sections.next() else { return bad("no '|type'") };
    let kind = match kind {
        "c" => Kind::Counter,
        "g" => Kind::Gauge,
        "ms" | "h" | "d" => Kind::Timer,
        "s" => Kind::Set,
        other => return bad(format!("unknown type {other:?} (c, g, ms, h, d, s)")),
    };
    let mut rate = 1.0f64;
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for section in sections {
        if let Some(r) = section.strip_prefix('@') {
            rate = number(r).or_else(|_| bad(format!("sample rate {r:?} is not a number")))?;
            if !(rate > 0.0 && rate <= 1.0) {
                return bad(format!("sample rate {r} is not in (0, 1]"));
            }
        } else if let Some(list) = section.strip_prefix('#') {
            for tag in list.split(',').filter(|t| !t.is_empty()) {
                check_text("tag", tag)?;
                let (key, value) = tag.split_once(':').unwrap_or((tag, ""));
                if key.is_empty() {
                    return bad(format!("tag {tag:?} has no key"));
                }
                tags.push((key, value));
            }
            if tags.len() > MAX_TAGS {
                return bad(format!("more than {MAX_TAGS} tags"));
            }
        }
        // `c:<container>`, `T<timestamp>` and future sections are not used here.
    }
    // Sorted by key; of one key given twice, the last value counts.
    tags.reverse();
    tags.sort_by(|a, b| a.0.cmp(b.0));
    tags.dedup_by(|a, b| a.0 == b.0);
    let tags = tags
        .iter()
        .map(|(k, v)| if v.is_empty() { (*k).to_owned() } else { format!("{k}:{v}") })
        .collect::<Vec<_>>()
        .join(",");
    let value = match kind {
        Kind::Set => {
            check_text("set member", values)?;
            Value::Member(values)
        }
        Kind::Gauge => {
            if values.contains(':') {
                return bad("a gauge takes one value");
            }
            let v = number(values)?;
            if values.starts_with('+') || values.starts_with('-') {
                Value::GaugeDelta(v)
            } else {
                Value::Gauge(v)
            }
        }
        Kind::Counter | Kind::Timer => {
            let mut parsed = Vec::new();
            for v in values.split(':') {
                if parsed.len() == MAX_VALUES {
                    return bad(format!("more than {MAX_VALUES} values"));
                }
                parsed.push(number(v)?);
            }
            if kind == Kind::Counter {
                Value::Count(parsed.into_iter().map(|v| v / rate).collect())
            } else {
                if parsed.iter().any(|v| *v < 0.0) {
                    return bad("a timer value is negative");
                }
                Value::Samples { values: parsed, weight: (1.0 / rate).round().max(1.0) as u64 }
            }
        }
    };
    Ok(Line { name, kind, value, tags })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_type_and_section() {
        let l = parse_line("sms.submitted:3|c|@0.5|#operator:voda,node:a").unwrap();
        assert_eq!((l.name, l.kind, l.tags.as_str()), ("sms.submitted", Kind::Counter, "node:a,operator:voda"));
        assert_eq!(l.value, Value::Count(vec![6.0]));
        assert_eq!(parse_line("q.depth:-4|g").unwrap().value, Value::GaugeDelta(-4.0));
        assert_eq!(parse_line("q.depth:4.5|g").unwrap().value, Value::Gauge(4.5));
        let t = parse_line("dlr.latency:12:40.5|ms|@0.1|#b,a:1|c:abc|T1700000000").unwrap();
        assert_eq!(t.value, Value::Samples { values: vec![12.0, 40.5], weight: 10 });
        assert_eq!(t.tags, "a:1,b");
        assert_eq!(parse_line("users:alice|s").unwrap().value, Value::Member("alice"));
        assert_eq!(parse_line("x:1|h").unwrap().kind, Kind::Timer);
        assert_eq!(parse_line("x:1|d\r").unwrap().kind, Kind::Timer);
        // The same key twice: the last value wins.
        assert_eq!(parse_line("x:1|c|#k:1,k:2").unwrap().tags, "k:2");
    }

    #[test]
    fn hostile_lines_are_refused_with_a_reason() {
        for (line, why) in [
            ("", "no ':'"),
            ("name", "no ':'"),
            (":1|c", "empty name"),
            ("x:1", "no '|type'"),
            ("x:1|q", "unknown type"),
            ("x:abc|c", "not a finite number"),
            ("x:NaN|c", "not a finite number"),
            ("x:inf|ms", "not a finite number"),
            ("x:1e999|c", "not a finite number"),
            ("x:-1|ms", "negative"),
            ("x:1|c|@0", "sample rate"),
            ("x:1|c|@", "sample rate \"\" is not a number"),
            ("x:1|c|#:v", "has no key"),
            ("x:1|c|@2", "sample rate"),
            ("x:1|c|@-1", "sample rate"),
            ("x:1:2|g", "one value"),
            ("x\u{1}:1|c", "control character"),
            ("x:1|c|#a\u{7f}", "control character"),
            ("x::|c", "not a finite number"),
            ("x:|s", "empty set member"),
        ] {
            let err = parse_line(line).unwrap_err().0;
            assert!(err.contains(why), "{line:?}: {err}");
        }
        for (bytes, why) in [
            (&b"sub\xffmitted:1|c"[..], "the metric name is not valid UTF-8 (byte 4 of the line)"),
            (b"\xc3(:1|c", "the metric name is not valid UTF-8 (byte 1 of the line)"),
            (b"x:1|c|#operator:\xfe", "the line is not valid UTF-8 (byte 17 of the line)"),
        ] {
            assert_eq!(line_text(bytes).unwrap_err().0, why, "{bytes:?}");
        }
        assert_eq!(line_text("caf\u{e9}.hits:1|c".as_bytes()), Ok("caf\u{e9}.hits:1|c"));
        let long = format!("{}:1|c", "n".repeat(MAX_NAME_BYTES + 1));
        assert!(parse_line(&long).is_err());
        let many = format!("x:1|c|#{}", (0..=MAX_TAGS).map(|i| format!("t{i}")).collect::<Vec<_>>().join(","));
        assert!(parse_line(&many).unwrap_err().0.contains("tags"));
        let values = format!("x:{}|c", vec!["1"; MAX_VALUES + 1].join(":"));
        assert!(parse_line(&values).unwrap_err().0.contains("values"));
    }

    proptest! {
        #[test]
        fn never_panics(line in ".{0,300}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn accepted_lines_are_sane(line in "[a-z.]{1,8}:[-+0-9.:e]{1,12}\\|(c|g|ms|s)(\\|@[0-9.]{1,4})?(\\|#[a-z:,]{0,12})?") {
            if let Ok(l) = parse_line(&line) {
                prop_assert!(!l.name.is_empty());
                match l.value {
                    Value::Count(v) => prop_assert!(v.iter().all(|x| x.is_finite())),
                    Value::Samples { values, weight } => prop_assert!(weight >= 1 && values.iter().all(|x| *x >= 0.0)),
                    Value::Gauge(x) | Value::GaugeDelta(x) => prop_assert!(x.is_finite()),
                    Value::Member(m) => prop_assert!(!m.is_empty()),
                }
            }
        }
    }
}
