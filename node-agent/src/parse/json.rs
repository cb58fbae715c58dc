//! JSON lines: one object per line, e.g. a DLR event
//! `{"ts":"2026-11-22T10:00:00Z","level":"info","msg":"dlr","id":"abc","status":"DELIVRD"}`.
//!
//! The object is read with a streaming serde visitor so that keys and string values borrow
//! from the line when they contain no escapes, and fields keep their line order. Timestamp
//! comes from the first parsable of `ts`, `time`, `timestamp`, `@timestamp` (RFC 3339 text or
//! epoch number); level from `level`, `lvl`, `severity`, `loglevel` (a name, or a number:
//! 0..=7 syslog severity, 10..=60 bunyan/pino scale); message from `msg`, `message`. All
//! other members become fields; non-string values are rendered as compact JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{timestamp, Level, Parsed};

/// Keys giving the event time, in order of preference.
const TS_KEYS: [&str; 4] = ["ts", "time", "timestamp", "@timestamp"];
/// Keys giving the level, in order of preference.
const LEVEL_KEYS: [&str; 4] = ["level", "lvl", "severity", "loglevel"];
/// Keys giving the message, in order of preference.
const MSG_KEYS: [&str; 2] = ["msg", "message"];

/// A member value, kept as close to the line as possible.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    /// A string (borrowed unless it had escapes).
    Str(Cow<'a, str>),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A non-integer number.
    Float(f64),
    /// Anything else (`true`, `null`, arrays, objects) as compact JSON text.
    Other(String),
}

impl<'a> Value<'a> {
    fn from_number(n: &serde_json::Number) -> Value<'a> {
        if let Some(u) = n.as_u64() {
            Value::UInt(u)
        } else if let Some(i) = n.as_i64() {
            Value::Int(i)
        } else if let Some(f) = n.as_f64() {
            Value::Float(f)
        } else {
            Value::Other(n.to_string())
        }
    }

    /// The value as field text: strings as they are, everything else as compact JSON.
    fn into_text(self) -> Cow<'a, str> {
        match self {
            Value::Str(s) => s,
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::UInt(u) => Cow::Owned(u.to_string()),
            Value::Float(f) => {
                Cow::Owned(serde_json::Number::from_f64(f).map_or_else(|| "null".to_owned(), |n| n.to_string()))
            }
            Value::Other(s) => Cow::Owned(s),
        }
    }

    fn timestamp(&self) -> Option<i64> {
        match self {
            Value::Str(s) => timestamp::parse_ts_text(s),
            Value::Int(i) => timestamp::epoch_i64_to_micros(*i),
            Value::UInt(u) => timestamp::epoch_i64_to_micros(i64::try_from(*u).ok()?),
            Value::Float(f) => timestamp::epoch_f64_to_micros(*f),
            Value::Other(_) => None,
        }
    }

    fn level(&self) -> Option<Level> {
        match self {
            Value::Str(s) => Level::from_text(s),
            Value::UInt(u) => Level::from_number(*u),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Value::Other(if v { "true" } else { "false" }.to_owned()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if v >= 0 { Value::UInt(v.unsigned_abs()) } else { Value::Int(v) })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Value::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Value::Other("null".to_owned()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        // serde_json's own recursion limit applies while this nested value is read.
        let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Value::Other(v.to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(match &v {
            // With serde_json's `arbitrary_precision` feature numbers arrive as maps.
            serde_json::Value::Number(n) => Value::from_number(n),
            serde_json::Value::String(s) => Value::Str(Cow::Owned(s.clone())),
            _ => Value::Other(v.to_string()),
        })
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

/// The top-level object's members in line order.
struct Object<'a>(Vec<(Cow<'a, str>, Value<'a>)>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let v: Value<'de> = map.next_value()?;
            members.push((k, v));
        }
        Ok(Object(members))
    }
}

/// Index of the first member named one of `keys` (in order of preference) for which
/// `accept` returns something.
fn pick<'a, T>(
    members: &[(Cow<'a, str>, Value<'a>)],
    keys: &[&str],
    accept: impl Fn(&Value<'a>) -> Option<T>,
) -> Option<(usize, T)> {
    keys.iter().find_map(|key| {
        let idx = members.iter().position(|(k, _)| k == key)?;
        members.get(idx).and_then(|(_, v)| accept(v)).map(|t| (idx, t))
    })
}

/// Parses a JSON object line; `None` when the line is not exactly one JSON object.
pub(crate) fn parse(line: &str) -> Option<Parsed<'_>> {
    // Cheap pre-check: anything that cannot start an object is rejected without serde.
    let first = line.bytes().find(|c| !c.is_ascii_whitespace())?;
    if first != b'{' {
        return None;
    }
    let Object(members) = serde_json::from_str::<Object<'_>>(line).ok()?;

    let ts = pick(&members, &TS_KEYS, Value::timestamp);
    let level = pick(&members, &LEVEL_KEYS, Value::level);
    let msg_idx = MSG_KEYS.iter().find_map(|key| members.iter().position(|(k, _)| k == key));

    let mut message = Cow::Borrowed("");
    let mut fields = Vec::with_capacity(members.len());
    for (idx, (k, v)) in members.into_iter().enumerate() {
        if Some(idx) == msg_idx {
            message = v.into_text();
        } else if ts.is_some_and(|(i, _)| i == idx) || level.is_some_and(|(i, _)| i == idx) {
            continue;
        } else {
            fields.push((k, v.into_text()));
        }
    }
    Some(Parsed { ts_micros: ts.map(|(_, t)| t), level: level.map(|(_, l)| l), message, fields, matched: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:00:00Z in microseconds.
    const T0: i64 = 1_795_341_600_000_000;

    fn must(line: &str) -> Parsed<'_> {
        match parse(line) {
            Some(p) => p,
            None => panic!("did not match: {line:?}"),
        }
    }

    fn pairs<'b>(p: &'b Parsed<'_>) -> Vec<(&'b str, &'b str)> {
        p.fields.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect()
    }

    #[test]
    fn dlr_event() {
        let line = r#"{"ts":"2026-11-22T10:00:00.250Z","level":"info","msg":"DLR received","smsc":"smsc1","id":"6f1c","status":"DELIVRD","err":0,"to":"+4915112345678","billed":true,"meta":{"a":[1,2],"b":null},"x":null,"price":0.05}"#;
        let p = must(line);
        assert!(p.matched);
        assert_eq!(p.ts_micros, Some(T0 + 250_000));
        assert_eq!(p.level, Some(Level::Info));
        assert_eq!(p.message, "DLR received");
        assert_eq!(
            pairs(&p),
            [
                ("smsc", "smsc1"),
                ("id", "6f1c"),
                ("status", "DELIVRD"),
                ("err", "0"),
                ("to", "+4915112345678"),
                ("billed", "true"),
                ("meta", r#"{"a":[1,2],"b":null}"#),
                ("x", "null"),
                ("price", "0.05"),
            ]
        );
        // Unescaped keys and values borrow from the line.
        assert!(matches!(p.message, Cow::Borrowed(_)));
        assert!(p.fields.iter().take(3).all(|(k, v)| matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_)))));
    }

    #[test]
    fn key_preference_and_epochs() {
        let p = must(
            r#"{"@timestamp":"2026-11-22T10:00:00Z","time":1795341600,"severity":"WARNING","lvl":"x","message":"m"}"#,
        );
        // `time` is preferred over `@timestamp`, `lvl` over `severity` only when parsable.
        assert_eq!(p.ts_micros, Some(T0));
        assert_eq!(p.level, Some(Level::Warn));
        assert_eq!(p.message, "m");
        assert_eq!(pairs(&p), [("@timestamp", "2026-11-22T10:00:00Z"), ("lvl", "x")]);

        let p = must(r#"{"timestamp":1795341600123,"level":3}"#);
        assert_eq!((p.ts_micros, p.level), (Some(T0 + 123_000), Some(Level::Error)));
        let p = must(r#"{"ts":1795341600123456,"level":50}"#);
        assert_eq!((p.ts_micros, p.level), (Some(T0 + 123_456), Some(Level::Error)));
        let p = must(r#"{"ts":1795341600.5,"loglevel":"crit"}"#);
        assert_eq!((p.ts_micros, p.level), (Some(T0 + 500_000), Some(Level::Critical)));
        assert!(p.fields.is_empty());
        assert_eq!(p.message, "");
    }

    #[test]
    fn unusable_special_values_stay_fields() {
        let p = must(r#"{"ts":"soon","level":9,"msg":{"text":"hi"},"message":"second"}"#);
        assert_eq!((p.ts_micros, p.level), (None, None));
        assert_eq!(p.message, r#"{"text":"hi"}"#);
        assert_eq!(pairs(&p), [("ts", "soon"), ("level", "9"), ("message", "second")]);
        let p = must(r#"{"ts":-1.5e300,"level":-1}"#);
        assert_eq!(p.ts_micros, None);
        assert_eq!(pairs(&p), [("ts", "-1.5e+300"), ("level", "-1")]);
    }

    #[test]
    fn escapes_and_non_ascii() {
        let p = must(r#"{"msg":"Zustellung \"ok\" \u00fc\n","k\u00e9y":"€","ü":"\ud83d\ude00"}"#);
        assert_eq!(p.message, "Zustellung \"ok\" ü\n");
        assert_eq!(pairs(&p), [("kéy", "€"), ("ü", "😀")]);
        assert!(matches!(p.message, Cow::Owned(_)));
    }

    #[test]
    fn duplicate_keys_keep_first_as_special() {
        let p = must(r#"{"msg":"a","msg":"b","ts":"x"}"#);
        assert_eq!(p.message, "a");
        assert_eq!(pairs(&p), [("msg", "b"), ("ts", "x")]);
    }

    #[test]
    fn not_json_objects() {
        for line in [
            "",
            "  ",
            "null",
            "[1,2]",
            "\"str\"",
            "42",
            "{",
            "{\"a\":1",
            "{\"a\":1}}",
            "{\"a\":1} trailing",
            "{\"a\":\"unterminated}",
            "{a:1}",
            "{\"a\":\"\u{FFFD}\\ud800\"}",
            "{\"a\":\"bad \\x escape\"}",
            "\u{FEFF}{\"a\":1}",
            "plain text line",
        ] {
            assert!(parse(line).is_none(), "{line:?}");
        }
        // Surrounding whitespace is fine.
        assert!(parse(" {\"a\":1} \t").is_some());
        assert!(parse("{}").is_some_and(|p| p.fields.is_empty() && p.message.is_empty()));
    }

    #[test]
    fn deep_nesting_is_rejected_not_crashing() {
        for depth in [200usize, 100_000, 1_000_000] {
            let line = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            assert!(parse(&line).is_none(), "array depth {depth}");
            let line = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            assert!(parse(&line).is_none(), "object depth {depth}");
        }
        // Moderate nesting is accepted and rendered.
        let line = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        let p = must(&line);
        assert_eq!(p.fields[0].1.len(), 201);
    }

    #[test]
    fn big_numbers() {
        // Out of f64 range: serde_json rejects the whole line.
        assert!(parse(r#"{"c":1e400}"#).is_none());
        let p = must(r#"{"a":18446744073709551615,"b":-9223372036854775808,"ts":18446744073709551615,"c":1e-400}"#);
        assert_eq!(p.ts_micros, None);
        assert_eq!(
            pairs(&p),
            [
                ("a", "18446744073709551615"),
                ("b", "-9223372036854775808"),
                ("ts", "18446744073709551615"),
                ("c", "0.0"),
            ]
        );
    }
}
