//! `--since` / `--until`: a time window applied to every table.
//!
//! A bound is an RFC 3339 time (`2026-11-22T10:00:00Z`), a UTC date or date and time
//! (`2026-11-22`, `2026-11-22 10:00`), or a span back from now (`30s`, `15m`, `2h`, `7d`).
//! With a window, each table is a view over its files filtered on `ts` and on the `date`/`hour`
//! partition columns, so only the files of the window's hours are read.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone as _, Utc};

use crate::QueryError;

/// A half-open window `[since, until)` in µs since the epoch; either side may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// Rows at or after this time.
    pub since: Option<i64>,
    /// Rows before this time.
    pub until: Option<i64>,
}

impl TimeWindow {
    /// The window from optional `--since` and `--until` texts, relative spans taken from `now`.
    pub fn parse(since: Option<&str>, until: Option<&str>, now: DateTime<Utc>) -> Result<Self, QueryError> {
        let w = Self {
            since: since.map(|s| parse_time(s, now)).transpose()?,
            until: until.map(|s| parse_time(s, now)).transpose()?,
        };
        if let (Some(a), Some(b)) = (w.since, w.until) {
            if a >= b {
                return Err(QueryError::Sql("--since must be before --until".into()));
            }
        }
        Ok(w)
    }

    /// Whether the window is open on both sides.
    pub fn is_all(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// The SQL condition on `ts`, `date` and `hour` (`TRUE` when open).
    pub fn condition(&self) -> String {
        let mut parts = Vec::new();
        if let Some(since) = self.since.and_then(DateTime::from_timestamp_micros) {
            let (d, h) = (since.format("%Y-%m-%d"), since.format("%H"));
            parts.push(format!(
                "(date > '{d}' OR (date = '{d}' AND hour >= {}))",
                h.to_string().parse::<u32>().unwrap_or(0)
            ));
            parts.push(format!("ts >= '{}'", since.format("%Y-%m-%dT%H:%M:%S%.6fZ")));
        }
        if let Some(until) = self.until.and_then(DateTime::from_timestamp_micros) {
            // The last hour with a row before `until` (an `until` on the hour reads no file of
            // that hour).
            let last = until - chrono::TimeDelta::microseconds(1);
            let (d, h) = (last.format("%Y-%m-%d"), last.format("%H"));
            parts.push(format!(
                "(date < '{d}' OR (date = '{d}' AND hour <= {}))",
                h.to_string().parse::<u32>().unwrap_or(23)
            ));
            parts.push(format!("ts < '{}'", until.format("%Y-%m-%dT%H:%M:%S%.6fZ")));
        }
        if parts.is_empty() {
            "TRUE".into()
        } else {
            parts.join(" AND ")
        }
    }
}

/// One bound, in µs since the epoch.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<i64, QueryError> {
    let t = text.trim();
    let bad = || {
        QueryError::Sql(format!(
            "time {text:?}: expected RFC 3339 (2026-11-22T10:00:00Z), a UTC date or date and time (2026-11-22, 2026-11-22 10:00), or a span back from now (30s, 15m, 2h, 7d)"
        ))
    };
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = t[..t.len() - 1].parse::<u32>() {
            let secs = u64::from(n)
                * match unit {
                    's' => 1,
                    'm' => 60,
                    'h' => 3600,
                    _ => 86_400,
                };
            return Ok(now.timestamp_micros() - (secs as i64) * 1_000_000);
        }
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(Utc.from_utc_datetime(&dt).timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).ok_or_else(bad)?).timestamp_micros());
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_in_every_form() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let at = |y, mo, d, h, mi| Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap().timestamp_micros();
        assert_eq!(parse_time("2h", now).unwrap(), at(2026, 11, 22, 10, 0));
        assert_eq!(parse_time("1d", now).unwrap(), at(2026, 11, 21, 12, 0));
        assert_eq!(parse_time("90s", now).unwrap(), at(2026, 11, 22, 11, 58) + 30_000_000);
        assert_eq!(parse_time("2026-11-22", now).unwrap(), at(2026, 11, 22, 0, 0));
        assert_eq!(parse_time("2026-11-22 10:30", now).unwrap(), at(2026, 11, 22, 10, 30));
        assert_eq!(parse_time("2026-11-22T10:30:00+01:00", now).unwrap(), at(2026, 11, 22, 9, 30));
        for bad in ["", "yesterday", "2026-13-01", "5y", "-3h"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
        assert!(TimeWindow::parse(Some("1h"), Some("2h"), now).is_err());
    }

    #[test]
    fn condition_prunes_partitions_and_rows() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let w = TimeWindow::parse(Some("2026-11-22 10:15"), Some("2026-11-22 11:00"), now).unwrap();
        let c = w.condition();
        assert!(c.contains("date = '2026-11-22' AND hour >= 10") && c.contains("hour <= 10"), "{c}");
        assert!(c.contains("ts >= '2026-11-22T10:15:00.000000Z'"), "{c}");
        let c = TimeWindow::parse(None, Some("2026-11-23 00:00"), now).unwrap().condition();
        assert!(c.contains("date < '2026-11-22' OR (date = '2026-11-22' AND hour <= 23)"), "{c}");
        let c = TimeWindow::parse(None, Some("2026-11-22 11:30"), now).unwrap().condition();
        assert!(c.contains("hour <= 11"), "{c}");
        assert_eq!(TimeWindow::default().condition(), "TRUE");
    }
}
