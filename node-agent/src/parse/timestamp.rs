//! Timestamp parsing shared by all line formats: RFC 3339 / ISO 8601 date-times
//! (`2026-11-22T10:00:00Z`, `2026-11-22 10:00:00,123`, ...) and Unix epoch numbers,
//! all converted to microseconds since the Unix epoch (UTC).
//!
//! Everything here works on bytes and never panics, whatever the input.

use chrono::NaiveDate;

/// Microseconds per second.
const MICROS_PER_SEC: i64 = 1_000_000;

/// Converts a calendar date and wall-clock time (UTC) into microseconds since the epoch.
///
/// `sec` may be 60 (a leap second, as RFC 3339 allows): it is counted as the first
/// microseconds of the next minute. Returns `None` for an impossible date or time.
pub(crate) fn civil_to_micros(
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    micros: u32,
) -> Option<i64> {
    let (sec, extra) = if sec == 60 { (59, MICROS_PER_SEC) } else { (sec, 0) };
    let dt = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_micro_opt(hour, min, sec, micros)?;
    dt.and_utc().timestamp_micros().checked_add(extra).and_then(in_range)
}

/// Reads exactly `n` ASCII digits at `b[at..]` as a number.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(n)?)?;
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

/// Parses an optional fraction of a second (`.123` or `,123456789`) at `b[at..]`.
///
/// Returns the fraction in microseconds (extra digits are truncated) and the index after
/// it. Without a separator followed by at least one digit, returns `(0, at)`.
pub(crate) fn fraction(b: &[u8], at: usize) -> (u32, usize) {
    match b.get(at) {
        Some(b'.') | Some(b',') => {}
        _ => return (0, at),
    }
    let start = at + 1;
    let mut i = start;
    let mut micros: u32 = 0;
    while let Some(c) = b.get(i) {
        if !c.is_ascii_digit() {
            break;
        }
        if i - start < 6 {
            micros = micros * 10 + u32::from(c - b'0');
        }
        i += 1;
    }
    let n = i - start;
    if n == 0 {
        return (0, at);
    }
    for _ in n..6 {
        micros *= 10;
    }
    (micros, i)
}

/// Parses `hh:mm:ss[.frac]` at `b[at..]`, returning hour, minute, second, microseconds and
/// the index after it. Ranges are checked later by chrono.
pub(crate) fn clock(b: &[u8], at: usize) -> Option<(u32, u32, u32, u32, usize)> {
    let h = digits(b, at, 2)?;
    if b.get(at + 2) != Some(&b':') {
        return None;
    }
    let m = digits(b, at + 3, 2)?;
    if b.get(at + 5) != Some(&b':') {
        return None;
    }
    let s = digits(b, at + 6, 2)?;
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    let (us, end) = fraction(b, at + 8);
    Some((h, m, s, us, end))
}

/// Parses an optional UTC offset at `b[at..]`: `Z`, `z`, `+hh:mm`, `-hhmm` or `+hh`.
///
/// Returns the offset in seconds east of UTC and the index after it (no zone = UTC, 0).
fn offset(b: &[u8], at: usize) -> (i64, usize) {
    let sign = match b.get(at) {
        Some(b'Z') | Some(b'z') => return (0, at + 1),
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return (0, at),
    };
    let Some(hh) = digits(b, at + 1, 2) else {
        return (0, at);
    };
    if hh > 23 {
        return (0, at);
    }
    let (mm, end) = if b.get(at + 3) == Some(&b':') {
        match digits(b, at + 4, 2) {
            Some(mm) => (mm, at + 6),
            None => return (0, at),
        }
    } else {
        match digits(b, at + 3, 2) {
            Some(mm) => (mm, at + 5),
            None => (0, at + 3),
        }
    };
    if mm > 59 {
        return (0, at);
    }
    (sign * (i64::from(hh) * 3600 + i64::from(mm) * 60), end)
}

/// Parses an RFC 3339 / ISO 8601 date-time at the start of `b`:
/// `YYYY-MM-DD[T|t| ]hh:mm:ss[.frac|,frac][Z|±hh:mm|±hhmm|±hh]`; no zone means UTC.
///
/// Returns microseconds since the epoch and the number of bytes consumed. The byte after
/// the consumed part is not looked at; callers decide what may follow.
pub(crate) fn parse_rfc3339_prefix(b: &[u8]) -> Option<(i64, usize)> {
    let year = digits(b, 0, 4)?;
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = digits(b, 5, 2)?;
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = digits(b, 8, 2)?;
    match b.get(10) {
        Some(b'T') | Some(b't') | Some(b' ') => {}
        _ => return None,
    }
    let (h, m, s, us, end) = clock(b, 11)?;
    let (off, end) = offset(b, end);
    let year = i32::try_from(year).ok()?;
    let local = civil_to_micros(year, month, day, h, m, s, us)?;
    Some((in_range(local.checked_sub(off.checked_mul(MICROS_PER_SEC)?)?)?, end))
}

/// Parses a whole string as an RFC 3339 / ISO 8601 date-time (see [`parse_rfc3339_prefix`]).
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    match parse_rfc3339_prefix(s.as_bytes()) {
        Some((ts, n)) if n == s.len() => Some(ts),
        _ => None,
    }
}

/// Epoch numbers above this are milliseconds (1e11 s is in the year 5138).
const MILLIS_THRESHOLD: f64 = 1e11;
/// Epoch numbers above this are microseconds.
const MICROS_THRESHOLD: f64 = 1e14;

/// Converts an epoch number to microseconds: seconds (fractions kept), milliseconds when
/// above 1e11, microseconds when above 1e14. `None` when not finite or out of range.
pub(crate) fn epoch_f64_to_micros(v: f64) -> Option<i64> {
    if !v.is_finite() {
        return None;
    }
    let mag = v.abs();
    let micros = if mag > MICROS_THRESHOLD {
        v
    } else if mag > MILLIS_THRESHOLD {
        v * 1e3
    } else {
        v * 1e6
    };
    // i64::MAX is about 9.22e18; stay clearly inside so the cast cannot saturate.
    if micros.abs() >= 9.2e18 {
        return None;
    }
    in_range(micros.round() as i64)
}

/// `micros` if it lies in the years 0000-9999, which the tables hold (a batch with another is
/// refused as malformed); else `None`, and the line's read time stands in.
fn in_range(micros: i64) -> Option<i64> {
    use switchboard_bus::wire::log_batch::{TS_MAX_MICROS, TS_MIN_MICROS};
    (TS_MIN_MICROS..=TS_MAX_MICROS).contains(&micros).then_some(micros)
}

/// Integer version of [`epoch_f64_to_micros`] (exact, no float rounding).
pub(crate) fn epoch_i64_to_micros(v: i64) -> Option<i64> {
    let mag = v.unsigned_abs();
    if mag > 100_000_000_000_000 {
        in_range(v)
    } else if mag > 100_000_000_000 {
        v.checked_mul(1_000).and_then(in_range)
    } else {
        v.checked_mul(MICROS_PER_SEC).and_then(in_range)
    }
}

/// Parses a timestamp given as text: RFC 3339 / ISO 8601, or an epoch number
/// (`1732269600`, `1732269600.25`, milliseconds, microseconds).
pub(crate) fn parse_ts_text(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_digit() || *c == b'-' => {}
        _ => return None,
    }
    if b.len() >= 19 && b.get(4) == Some(&b'-') {
        return parse_rfc3339(s);
    }
    // Only plain decimal numbers: `f64::from_str` would also accept "inf", "1e5", ...
    if !b.iter().all(|c| c.is_ascii_digit() || *c == b'.' || *c == b'-') {
        return None;
    }
    if let Ok(i) = s.parse::<i64>() {
        return epoch_i64_to_micros(i);
    }
    s.parse::<f64>().ok().and_then(epoch_f64_to_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T10:00:00Z in microseconds.
    const T0: i64 = 1_795_341_600_000_000;

    #[test]
    fn reference_instant_is_right() {
        let dt = NaiveDate::from_ymd_opt(2026, 11, 22)
            .and_then(|d| d.and_hms_opt(10, 0, 0))
            .map(|d| d.and_utc().timestamp_micros());
        assert_eq!(dt, Some(T0));
        assert_eq!(civil_to_micros(1970, 1, 1, 0, 0, 0, 0), Some(0));
    }

    #[test]
    fn rfc3339_variants() {
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00Z"), Some(T0));
        assert_eq!(parse_rfc3339("2026-11-22t10:00:00z"), Some(T0));
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00.123456+02:00"), Some(T0 - 7_200_000_000 + 123_456));
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00-0130"), Some(T0 + 5_400_000_000));
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00+02"), Some(T0 - 7_200_000_000));
        assert_eq!(parse_rfc3339("2026-11-22 10:00:00"), Some(T0));
        assert_eq!(parse_rfc3339("2026-11-22 10:00:00,123"), Some(T0 + 123_000));
        assert_eq!(parse_rfc3339("2026-11-22 10:00:00.5"), Some(T0 + 500_000));
        // Nanoseconds are truncated to microseconds.
        assert_eq!(parse_rfc3339("2026-11-22T10:00:00.123456789Z"), Some(T0 + 123_456));
        // Leap second.
        assert_eq!(parse_rfc3339("2026-12-31T23:59:60Z"), civil_to_micros(2027, 1, 1, 0, 0, 0, 0));
    }

    #[test]
    fn rfc3339_rejects_truncated_and_invalid() {
        for s in [
            "",
            "2026",
            "2026-11-22",
            "2026-11-22T",
            "2026-11-22T10",
            "2026-11-22T10:00",
            "2026-11-22T10:00:0",
            "2026-13-22T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T10:60:00Z",
            "2026-11-22X10:00:00Z",
            "2026-11-22T10:00:00Zjunk",
            "2026-11-22T10:00:00+",
            "２０２６-11-22T10:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s:?}");
        }
    }

    #[test]
    fn prefix_reports_consumed_length() {
        let b = b"2026-11-22 10:00:00,123 [1] INFO x";
        assert_eq!(parse_rfc3339_prefix(b), Some((T0 + 123_000, 23)));
        // A dangling fraction separator is not consumed.
        let b = b"2026-11-22 10:00:00, x";
        assert_eq!(parse_rfc3339_prefix(b), Some((T0, 19)));
        // A bad offset is not consumed either.
        let b = b"2026-11-22 10:00:00 +99:00";
        assert_eq!(parse_rfc3339_prefix(b), Some((T0, 19)));
        let b = "2026-11-22 10:00:00+é".as_bytes();
        assert_eq!(parse_rfc3339_prefix(b), Some((T0, 19)));
    }

    #[test]
    fn epoch_numbers() {
        assert_eq!(epoch_i64_to_micros(1_795_341_600), Some(T0));
        assert_eq!(epoch_i64_to_micros(1_795_341_600_000), Some(T0));
        assert_eq!(epoch_i64_to_micros(T0), Some(T0));
        assert_eq!(epoch_i64_to_micros(i64::MIN), None, "outside the years 0000-9999");
        assert_eq!(epoch_f64_to_micros(-9e18), None);
        assert_eq!(epoch_i64_to_micros(253_402_300_800_000_000), None);
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00+01:00"), None, "an offset before the year 0");
        assert_eq!(parse_rfc3339("9999-12-31T23:59:60Z"), None, "a leap second into the year 10000");
        assert!(parse_rfc3339("0000-01-01T00:00:00Z").is_some());
        assert_eq!(epoch_i64_to_micros(100_000_000_000), Some(100_000_000_000_000_000));
        assert_eq!(epoch_i64_to_micros(100_000_000_001), Some(100_000_000_001_000));
        assert_eq!(epoch_f64_to_micros(1_795_341_600.25), Some(T0 + 250_000));
        assert_eq!(epoch_f64_to_micros(1_795_341_600_123.0), Some(T0 + 123_000));
        assert_eq!(epoch_f64_to_micros(f64::NAN), None);
        assert_eq!(epoch_f64_to_micros(f64::INFINITY), None);
        assert_eq!(epoch_f64_to_micros(1e300), None);
    }

    #[test]
    fn ts_text() {
        assert_eq!(parse_ts_text("2026-11-22T10:00:00Z"), Some(T0));
        assert_eq!(parse_ts_text("1795341600"), Some(T0));
        assert_eq!(parse_ts_text("1795341600.5"), Some(T0 + 500_000));
        assert_eq!(parse_ts_text("1795341600000"), Some(T0));
        assert_eq!(parse_ts_text("inf"), None);
        assert_eq!(parse_ts_text("1e9"), None);
        assert_eq!(parse_ts_text("yesterday"), None);
        assert_eq!(parse_ts_text(""), None);
        assert_eq!(parse_ts_text("99999999999999999999999"), None);
        assert_eq!(parse_ts_text("2026-11-22T10:00:00Z\u{FFFD}"), None);
    }
}
