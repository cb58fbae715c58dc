//! `switchboard status` on a terminal: the cluster in plain-text tables, problems first.

use std::fmt::Write as _;

use super::cluster::{clock, human_secs, ClusterStatus, Level};

/// Rows of a limits or streams table shown at most (the rest are counted).
pub const MAX_ROWS: usize = 20;

/// A table with left-aligned columns two spaces apart.
/// The widest a table's cell is shown (see [`Table::row`]).
const MAX_CELL: usize = 48;

struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&'static str]) -> Self {
        Self { head: head.to_vec(), rows: Vec::new() }
    }

    /// A cell wider than [`MAX_CELL`] (a long limit key or stream name) is cut to it, ending in
    /// `…`, so that one name cannot push the other columns off the screen; `--json` has it whole.
    /// The last column is not aligned and is kept whole.
    fn row(&mut self, mut cells: Vec<String>) {
        let last = cells.len().saturating_sub(1);
        for c in &mut cells[..last] {
            if c.chars().count() > MAX_CELL {
                *c = c.chars().take(MAX_CELL - 1).chain(std::iter::once('…')).collect();
            }
        }
        self.rows.push(cells);
    }

    fn write(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, cells: Vec<&str>| {
            let mut l = String::from("  ");
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(out, self.head.clone());
        for r in &self.rows {
            line(out, r.iter().map(String::as_str).collect());
        }
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn rate(v: f64) -> String {
    // A rate from counters that went back (a restart) is no rate: never print "-0.0".
    let v = if v > 0.0 { v } else { 0.0 };
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The whole status as text.
pub fn render(c: &ClusterStatus) -> String {
    let mut out = String::new();
    let alive = c.nodes.iter().filter(|n| n.alive).count();
    let level = match c.level {
        Level::Ok => "OK",
        Level::Degraded => "DEGRADED",
        Level::Unreachable => "UNREACHABLE",
    };
    let _ = writeln!(
        out,
        "{level}  {} of {} nodes alive, {} collector(s), {} lines/s, {} records not committed   {} UTC",
        alive,
        c.nodes.len(),
        c.collectors.iter().filter(|x| x.alive).count(),
        rate(c.lines_per_s()),
        c.lag_records(),
        clock(c.at_ms)
    );
    if c.level == Level::Unreachable {
        out.push_str(
            "\nno process answered and no liveliness token was seen: is --connect (or the connect and listen \
             endpoints of --config) a process of the cluster that is running, and is --cluster its cluster's \
             name (a process of another cluster answers on other keys, so it looks absent)? An agent's \
             own bus port is random unless its [bus] listen sets one. On TLS, are --tls-ca and this \
             tool's certificate the cluster's, and its identity in the members file (a refused handshake \
             or identity looks the same)?\n",
        );
        return out;
    }
    if !c.problems.is_empty() {
        let _ = writeln!(out, "\nPROBLEMS");
        for p in &c.problems {
            let mark = if p.severity == "failing" { "!!" } else { " !" };
            let _ = writeln!(out, "  {mark} {}", p.what);
        }
    }

    let _ = writeln!(out, "\nNODES");
    let mut t = Table::new(&["node", "state", "health", "version", "uptime", "limits rev", "lines/s", "sources"]);
    for n in &c.nodes {
        t.row(vec![
            n.name.clone(),
            n.state_text(c.at_ms),
            n.health.clone(),
            opt(n.software.clone()),
            opt(n.uptime_s.map(|s| human_secs(s as f64))),
            opt(n.limits_revision),
            rate(n.lines_per_s),
            n.sources.join(","),
        ]);
    }
    t.write(&mut out);

    let _ = writeln!(out, "\nCOLLECTORS");
    let mut t = Table::new(&["collector", "role", "epoch", "health", "streams", "rows/s", "last commit", "store"]);
    for x in &c.collectors {
        t.row(vec![
            x.name.clone(),
            x.role.clone(),
            opt(x.epoch),
            x.health.clone(),
            x.streams.to_string(),
            rate(x.rows_per_s),
            opt(x.last_commit_age_s.map(|s| format!("{} ago", human_secs(s)))),
            x.store_text().to_owned(),
        ]);
    }
    t.write(&mut out);

    if !c.streams.is_empty() {
        let _ = writeln!(out, "\nSTREAMS");
        let mut t = Table::new(&["stream", "head", "committed", "lag", "lag s", "lines/s", "catch-up"]);
        let mut streams: Vec<_> = c.streams.iter().collect();
        streams.sort_by(|a, b| b.lag_records.cmp(&a.lag_records).then_with(|| a.stream.cmp(&b.stream)));
        for s in streams.iter().take(MAX_ROWS) {
            t.row(vec![
                s.stream.clone(),
                opt(s.head),
                s.committed.to_string(),
                s.lag_records.to_string(),
                format!("{:.0}", s.lag_seconds),
                rate(s.lines_per_s),
                s.catch_up_text(),
            ]);
        }
        t.write(&mut out);
        more(&mut out, streams.len(), "streams");
    }

    if !c.limits.is_empty() {
        let _ = writeln!(out, "\nLIMITS");
        let mut t = Table::new(&["key", "limit", "use %", "allowed/s", "denied/s", "shares"]);
        for l in c.limits.iter().take(MAX_ROWS) {
            t.row(vec![
                l.key.clone(),
                l.limit_text(rate),
                format!("{:.0}", l.use_pct),
                rate(l.allowed_per_s),
                rate(l.denied_per_s),
                l.shares_text(),
            ]);
        }
        t.write(&mut out);
        more(&mut out, c.limits.len(), "keys");
    }

    if !c.dlr.is_empty() {
        let _ = writeln!(out, "\nDLR");
        let mut t =
            Table::new(&["node", "records", "open", "copies", "oldest open", "lookups/s", "unknown/s", "to replicate"]);
        for d in &c.dlr {
            t.row(vec![
                d.node.clone(),
                d.records.to_string(),
                opt(d.own_open),
                opt(d.copies),
                opt(d.oldest_open_age_s.map(human_secs)),
                rate(d.lookups_per_s),
                rate(d.not_found_per_s),
                d.replica_queue.to_string(),
            ]);
        }
        t.write(&mut out);
    }
    out
}

fn more(out: &mut String, n: usize, what: &str) {
    if n > MAX_ROWS {
        let _ = writeln!(out, "  ... and {} more {what} (--format json lists all)", n - MAX_ROWS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_name_is_cut_and_the_columns_stay_narrow() {
        let mut t = Table::new(&["key", "limit"]);
        t.row(vec!["k".repeat(512), "x".repeat(60)]);
        let mut out = String::new();
        t.write(&mut out);
        let row = out.lines().nth(1).unwrap_or_default();
        assert_eq!(row, format!("  {}…  {}", "k".repeat(MAX_CELL - 1), "x".repeat(60)));
    }
}
