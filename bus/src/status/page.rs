//! The live status page every long-running process serves on its HTTP address.
//!
//! `GET /status` is a server-rendered HTML page of the cluster as this process sees it (the
//! same [`ClusterStatus`] as `switchboard status`), with small inline-SVG charts of lines/s,
//! records not committed and the highest limit use over the last minutes. A dozen lines of
//! script fetch `GET /status/fragment` (the page's body, rendered here too) every second and
//! swap it in, so the page follows the cluster without a reload and without a JavaScript
//! build. `GET /status.json` is the same status as JSON. Read-only; the routes sit behind the
//! HTTP API's token when one is set (a browser passes it as `?token=`).
//!
//! Answers are cached for [`CACHE`], so any number of viewers cost the bus one status query
//! per second; the charts' history fills while someone watches ([`HISTORY`] samples).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use zenoh::Session;

use super::cluster::{assemble, clock, human_secs, ClusterStatus, Level};
use crate::keys::KeySpace;

/// How long one fetched status serves every viewer.
pub const CACHE: Duration = Duration::from_millis(900);
/// Samples the charts keep (one per second while someone watches: ten minutes).
pub const HISTORY: usize = 600;
/// How long a status query waits for the processes' answers.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long after it joined the bus a process whose view lists no node answers `503`, gathering:
/// the others' tokens and answers reach a new session within about a second.
pub const GATHERING: Duration = Duration::from_secs(3);

/// One chart sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    lines_per_s: f64,
    lag_records: f64,
    limit_use_pct: f64,
}

struct Inner {
    cached: Option<(Instant, Arc<ClusterStatus>)>,
    history: VecDeque<Sample>,
}

/// What the page routes share: the bus, the cache and the charts' history.
#[derive(Clone)]
pub struct StatusPage {
    session: Session,
    keys: KeySpace,
    title: String,
    /// Held while one request fetches; the others wait and take its result.
    fetching: Arc<tokio::sync::Mutex<()>>,
    state: Arc<Mutex<Inner>>,
    /// When the page was made (the process had just joined the bus).
    since: Instant,
}

impl StatusPage {
    /// A page for the cluster on `session`, titled after the process that serves it.
    pub fn new(session: Session, keys: KeySpace, title: String) -> Self {
        Self {
            session,
            keys,
            title,
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            state: Arc::new(Mutex::new(Inner { cached: None, history: VecDeque::new() })),
            since: Instant::now(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change under this lock is a plain assignment or push: a poisoned lock is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster's status, fetched at most once per [`CACHE`].
    pub async fn current(&self) -> Arc<ClusterStatus> {
        if let Some((at, c)) = &self.state().cached {
            if at.elapsed() < CACHE {
                return c.clone();
            }
        }
        // One fetch at a time; whoever waited takes its result.
        let _one = self.fetching.lock().await;
        if let Some((at, c)) = &self.state().cached {
            if at.elapsed() < CACHE {
                return c.clone();
            }
        }
        let snap = super::fetch(&self.session, &self.keys, FETCH_TIMEOUT).await.unwrap_or_default();
        let c = Arc::new(assemble(&snap));
        let mut st = self.state();
        st.history.push_back(Sample {
            at_ms: c.at_ms,
            lines_per_s: c.lines_per_s(),
            lag_records: c.lag_records() as f64,
            limit_use_pct: c.max_limit_use_pct(),
        });
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
        st.cached = Some((Instant::now(), c.clone()));
        c
    }

    /// The routes: `/status`, `/status/fragment`, `/status.json`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/status", get(full))
            .route("/status/fragment", get(fragment))
            .route("/status.json", get(json))
            .with_state(self)
    }

    /// What to say instead of `c` while this process has only just joined and has heard of no
    /// node yet: an empty cluster then is a view not gathered yet, not a healthy one.
    fn gathering(&self, c: &ClusterStatus) -> Option<String> {
        gathering(&self.title, self.since.elapsed(), c)
    }

    fn body(&self, c: &ClusterStatus) -> String {
        let history: Vec<Sample> = self.state().history.iter().copied().collect();
        render_body(c, &history)
    }
}

/// What a page made `since` ago by `title` says instead of `c` while it gathers (see
/// [`StatusPage::gathering`]).
fn gathering(title: &str, since: Duration, c: &ClusterStatus) -> Option<String> {
    (since < GATHERING && c.nodes.is_empty()).then(|| {
        format!("{title} joined the bus just now and has not heard from the cluster's nodes yet: try again in a moment")
    })
}

/// The form of a status route's answer.
#[derive(Debug, Clone, Copy)]
pub enum Form {
    /// `/status`: a page.
    Page,
    /// `/status/fragment`: the part the page swaps in.
    Fragment,
    /// `/status.json`.
    Json,
}

/// `503` with `why` while a process has no view of the cluster to show (`state`: what it is
/// doing, as the page's title and the JSON's `role`), as a page that reloads itself every 2 s,
/// a fragment or JSON.
pub fn unavailable(why: &str, state: &str, form: Form) -> axum::response::Response {
    use axum::http::StatusCode;
    let (content_type, body) = match form {
        Form::Json => ("application/json", serde_json::json!({ "error": why, "role": state }).to_string()),
        Form::Page => (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" \
                 content=\"2\"><title>Switchboard: {}</title></head>\n<body><p>{}</p></body></html>\n",
                esc(state),
                esc(why)
            ),
        ),
        Form::Fragment => ("text/html; charset=utf-8", format!("<p>{}</p>", esc(why))),
    };
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-store")], body)
        .into_response()
}

async fn full(State(p): State<StatusPage>) -> axum::response::Response {
    let c = p.current().await;
    if let Some(why) = p.gathering(&c) {
        return unavailable(&why, "gathering", Form::Page);
    }
    let body = p.body(&c);
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Switchboard: {title}</title><style>{STYLE}</style></head>\n\
         <body><header><h1>Switchboard</h1><span class=\"via\">as seen by {title}</span>\
         <span id=\"updated\" class=\"via\"></span></header>\n<main id=\"status\">{body}</main>\n\
         <script>{SCRIPT}</script></body></html>\n",
        title = esc(&p.title),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html).into_response()
}

async fn fragment(State(p): State<StatusPage>) -> axum::response::Response {
    let c = p.current().await;
    if let Some(why) = p.gathering(&c) {
        return unavailable(&why, "gathering", Form::Fragment);
    }
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], p.body(&c))
        .into_response()
}

async fn json(State(p): State<StatusPage>) -> axum::response::Response {
    let c = p.current().await;
    if let Some(why) = p.gathering(&c) {
        return unavailable(&why, "gathering", Form::Json);
    }
    let body = serde_json::to_string(&*c).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

/// The page's script: fetch the fragment every second and swap it in; say when that fails:
/// no answer within 3 s (a hung process keeps its connection open), or a `503`
/// (the process says why it cannot show the cluster now: its text replaces the view).
const SCRIPT: &str = r#"
const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
let inflight = false;
async function refresh() {
  if (inflight) return;
  inflight = true;
  const stamp = document.getElementById("updated");
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 3000);
  try {
    const r = await fetch("status/fragment", { headers, cache: "no-store", signal: ctl.signal });
    const text = await r.text();
    if (r.status === 503) {
      document.getElementById("status").innerHTML = text;
      stamp.textContent = "this process cannot show the cluster now (" + new Date().toISOString().slice(11, 19) + " UTC" + ")";
      stamp.className = "via stale";
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    document.getElementById("status").innerHTML = text;
    stamp.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    stamp.className = "via";
  } catch (e) {
    const why = e.name === "AbortError" ? "no answer within 3 s (hung or overloaded?)" : e.message;
    stamp.textContent = "cannot reach this process: " + why;
    stamp.className = "via stale";
  } finally {
    clearTimeout(timer);
    inflight = false;
  }
}
setInterval(refresh, 1000);
"#;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}\
header{display:flex;gap:1em;align-items:baseline;padding:.6em 1.2em;background:#1d2430;color:#fff}\
h1{font-size:1.2em;margin:0}.via{opacity:.75}.stale{color:#ffb4a8;opacity:1}\
main{padding:0 1.2em 2em}h2{font-size:1em;margin:1.4em 0 .4em;text-transform:uppercase;letter-spacing:.05em;color:#5a6577}\
table{border-collapse:collapse;background:#fff;min-width:40%}td,th{padding:.25em .8em;text-align:left;border-bottom:1px solid #e3e6eb}\
th{font-weight:600;color:#5a6577}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.level{display:inline-block;padding:.3em .8em;border-radius:4px;font-weight:700;margin-top:1em}\
.ok{background:#d8f3dc;color:#1b5e20}.degraded{background:#fff3cd;color:#7a5a00}.unreachable,.failing{background:#fde2e1;color:#8a1c1c}\
.gone,.silent{color:#8a1c1c;font-weight:600}.alive{color:#1b5e20}\
ul.problems{background:#fff;padding:.6em 1.2em .6em 2em;border-left:4px solid #e0a800}ul.problems li.failing{color:#8a1c1c;font-weight:600}\
.charts{display:flex;gap:1em;flex-wrap:wrap;margin-top:1em}figure{margin:0;background:#fff;padding:.5em .8em}\
figcaption{font-size:.85em;color:#5a6577}svg{display:block}";

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small line chart of `values` (oldest first) as inline SVG, with its latest value.
fn chart(caption: &str, unit: &str, values: &[(u64, f64)]) -> String {
    const W: f64 = 280.0;
    const H: f64 = 60.0;
    let max = values.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9);
    let (first, last) = (values.first().map_or(0, |v| v.0), values.last().map_or(0, |v| v.0));
    let span = last.saturating_sub(first).max(1) as f64;
    let mut points = String::new();
    for (at, v) in values {
        let x = W * (at - first) as f64 / span;
        let y = H - 2.0 - (H - 4.0) * v / max;
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    let latest = values.last().map_or(0.0, |v| v.1);
    format!(
        "<figure><figcaption>{} <b>{}</b>{} (max {}, last {})</figcaption>\
         <svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#f0f2f5\"/>\
         <polyline fill=\"none\" stroke=\"#2f6fde\" stroke-width=\"1.5\" points=\"{}\"/></svg></figure>",
        esc(caption),
        num(latest),
        esc(unit),
        num(max),
        human_secs(span / 1000.0),
        esc(caption),
        points.trim_end()
    )
}

fn num(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| esc(&v.to_string()))
}

/// The page's body: level, problems, charts, then one table per part of the cluster.
fn render_body(c: &ClusterStatus, history: &[Sample]) -> String {
    let mut out = String::new();
    let (class, word) = match c.level {
        Level::Ok => ("ok", "OK"),
        Level::Degraded => ("degraded", "DEGRADED"),
        Level::Unreachable => ("unreachable", "UNREACHABLE"),
    };
    let _ = write!(
        out,
        "<div id=\"level\" class=\"level {class}\" data-level=\"{class}\">{word}</div> \
         <span>{} of {} nodes alive &middot; {} collector(s) &middot; {} UTC</span>",
        c.nodes.iter().filter(|n| n.alive).count(),
        c.nodes.len(),
        c.collectors.iter().filter(|x| x.alive).count(),
        clock(c.at_ms)
    );
    if !c.problems.is_empty() {
        out.push_str("<h2>Problems</h2><ul class=\"problems\">");
        for p in &c.problems {
            let _ = write!(out, "<li class=\"{}\">{}</li>", esc(&p.severity), esc(&p.what));
        }
        out.push_str("</ul>");
    }
    let series = |f: fn(&Sample) -> f64| history.iter().map(|s| (s.at_ms, f(s))).collect::<Vec<_>>();
    out.push_str("<div class=\"charts\">");
    out.push_str(&chart("lines/s", "", &series(|s| s.lines_per_s)));
    out.push_str(&chart("not committed", " records", &series(|s| s.lag_records)));
    out.push_str(&chart("highest limit use", " %", &series(|s| s.limit_use_pct)));
    out.push_str("</div>");

    out.push_str("<h2>Nodes</h2><table id=\"nodes\"><tr><th>node</th><th>state</th><th>health</th><th>version</th><th>uptime</th><th>limits rev</th><th>lines/s</th><th>sources</th></tr>");
    for n in &c.nodes {
        let state = n.state_text(c.at_ms);
        let _ = write!(
            out,
            "<tr class=\"node\" data-node=\"{name}\" data-state=\"{s}\"><td>{name}</td><td class=\"{s}\">{state}</td>\
             <td class=\"{h}\">{h}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            opt(n.software.clone()),
            opt(n.uptime_s.map(|s| human_secs(s as f64))),
            opt(n.limits_revision),
            num(n.lines_per_s),
            esc(&n.sources.join(", ")),
            name = esc(&n.name),
            s = if n.alive { "alive" } else { "gone" },
            h = esc(&n.health),
        );
    }
    out.push_str("</table>");

    out.push_str("<h2>Collectors</h2><table id=\"collectors\"><tr><th>collector</th><th>role</th><th>epoch</th><th>health</th><th>streams</th><th>rows/s</th><th>last commit</th><th>store</th></tr>");
    for x in &c.collectors {
        let _ = write!(
            out,
            "<tr class=\"collector\" data-collector=\"{name}\"><td>{name}</td><td>{}</td><td class=\"n\">{}</td><td class=\"{h}\">{h}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.role),
            opt(x.epoch),
            x.streams,
            num(x.rows_per_s),
            opt(x.last_commit_age_s.map(|s| format!("{} ago", human_secs(s)))),
            esc(x.store_text()),
            name = esc(&x.name),
            h = esc(&x.health),
        );
    }
    out.push_str("</table>");

    if !c.streams.is_empty() {
        out.push_str("<h2>Streams</h2><table id=\"streams\"><tr><th>stream</th><th>head</th><th>committed</th><th>lag</th><th>lag s</th><th>lines/s</th><th>catch-up</th></tr>");
        for s in c.streams.iter().take(200) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.0}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&s.stream),
                opt(s.head),
                s.committed,
                s.lag_records,
                s.lag_seconds,
                num(s.lines_per_s),
                esc(&s.catch_up_text())
            );
        }
        out.push_str("</table>");
    }
    if !c.limits.is_empty() {
        out.push_str("<h2>Limits</h2><table id=\"limits\"><tr><th>key</th><th>limit</th><th>use %</th><th>allowed/s</th><th>denied/s</th><th>shares</th></tr>");
        for l in c.limits.iter().take(200) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.0}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&l.key),
                esc(&l.limit_text(num)),
                l.use_pct,
                num(l.allowed_per_s),
                num(l.denied_per_s),
                esc(&l.shares_text())
            );
        }
        out.push_str("</table>");
    }
    if !c.dlr.is_empty() {
        out.push_str("<h2>DLR</h2><table id=\"dlr\"><tr><th>node</th><th>records</th><th>open</th><th>copies</th><th>oldest open</th><th>lookups/s</th><th>unknown/s</th><th>to replicate</th></tr>");
        for d in &c.dlr {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&d.node),
                d.records,
                opt(d.own_open),
                opt(d.copies),
                opt(d.oldest_open_age_s.map(human_secs)),
                num(d.lookups_per_s),
                num(d.not_found_per_s),
                d.replica_queue
            );
        }
        out.push_str("</table>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::cluster::NodeRow;
    use super::*;

    #[test]
    fn names_are_escaped_and_rows_carry_their_state() {
        let c = ClusterStatus {
            version: 1,
            at_ms: 10_000,
            level: Level::Degraded,
            problems: vec![],
            nodes: vec![
                NodeRow { name: "gw<1>".into(), alive: true, health: "ok".into(), ..NodeRow::default() },
                NodeRow {
                    name: "gw2".into(),
                    alive: false,
                    gone_since_ms: Some(4_000),
                    health: "gone".into(),
                    ..NodeRow::default()
                },
            ],
            collectors: vec![],
            streams: vec![],
            limits: vec![],
            dlr: vec![],
            unreadable: vec![],
        };
        // A view with nodes is shown at once; one without, only once the page has had time to
        // hear from them (an empty cluster just after joining is not a healthy one).
        assert_eq!(gathering("collector c1", Duration::ZERO, &c), None);
        let empty = ClusterStatus { nodes: vec![], ..c.clone() };
        let said = gathering("collector c1", Duration::from_millis(500), &empty);
        assert!(said.is_some_and(|s| s.starts_with("collector c1 joined the bus just now")));
        assert_eq!(gathering("collector c1", GATHERING, &empty), None);
        let html = render_body(&c, &[Sample { at_ms: 1, lines_per_s: 5.0, lag_records: 0.0, limit_use_pct: 0.0 }]);
        assert!(html.contains("data-node=\"gw&lt;1&gt;\" data-state=\"alive\""), "{html}");
        assert!(html.contains("data-node=\"gw2\" data-state=\"gone\""));
        assert!(html.contains("gone 6 s ago"));
        assert!(!html.contains("<1>"));
    }
}
