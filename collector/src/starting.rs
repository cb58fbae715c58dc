//! What a collector answers from the moment its HTTP port is bound until it has joined the
//! group: `/health` fails with `"role": "starting"` and what it is doing, or the store's error
//! while the store it must read before anything else does not answer (an object store that is
//! down or unreachable at start; the collector retries until the store answers or it is stopped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_bus::http::{Access, Health, Metrics, Report};
use switchboard_bus::keys::Role;
use switchboard_bus::status::ProcessStatus;
use tokio_util::sync::CancellationToken;

/// How long a collector waits after a failed attempt to read its store before the next one.
pub(crate) const RETRY: Duration = Duration::from_secs(5);

/// The `/health` of a collector waiting for its store.
pub(crate) struct Starting {
    name: String,
    started_at_ms: u64,
    /// What it is doing, and whether that is waiting for a store that failed.
    problem: Mutex<(String, bool)>,
}

impl Starting {
    /// Serve `/health` and `/metrics` on a copy of `listener` until the returned token is
    /// cancelled (the collector's own endpoint then takes over the same socket).
    pub(crate) fn serve(
        name: &str,
        listener: &std::net::TcpListener,
        access: &Access,
        cancel: &CancellationToken,
    ) -> std::io::Result<(Arc<Self>, CancellationToken)> {
        let me = Arc::new(Self {
            name: name.to_owned(),
            started_at_ms: switchboard_bus::status::now_ms(),
            problem: Mutex::new(("reading the dataset's commit log".to_owned(), false)),
        });
        let copy = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        let stop = cancel.child_token();
        tokio::spawn(switchboard_bus::http::run(
            copy,
            access.clone(),
            me.clone(),
            status_routes(me.clone()),
            Duration::ZERO,
            stop.clone(),
        ));
        Ok((me, stop))
    }

    /// Say why the collector is not running yet; `store_failing` when the store does not answer.
    pub(crate) fn set_problem(&self, why: String, store_failing: bool) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = (why, store_failing);
    }
}

impl Report for Starting {
    fn health(&self) -> Health {
        let (problem, _) = self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut details = serde_json::Map::new();
        details.insert("role".into(), "starting".into());
        Health { failing: vec![problem], degraded: Vec::new(), details }
    }

    fn metrics(&self) -> String {
        let (problem, store_failing) = self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut m = Metrics::new();
        // Every family without labels, as a running collector shows them: nothing done yet.
        let group = crate::group::GroupStatus { store_error: store_failing.then_some(problem), ..Default::default() };
        crate::report::own_families(&mut m, &crate::stats::CollectorStats::default(), &group, false, 0);
        switchboard_bus::mesh::idle_metrics(&mut m);
        self.health().gauge(&mut m);
        m.finish()
    }

    fn status(&self, health: &Health) -> ProcessStatus {
        ProcessStatus::new(Role::Collector, &self.name, self.started_at_ms, health)
    }
}

/// `/status`, `/status/fragment` and `/status.json` while the collector has not joined the bus:
/// `503` with what it is doing (the cluster's view needs the bus; any other process serves it).
/// The page reloads itself every 2 s, and so becomes the live view once the collector has joined.
fn status_routes(starting: Arc<Starting>) -> axum::Router {
    use axum::routing::get;
    use switchboard_bus::status::page::{unavailable, Form};
    let why = move |s: &Starting| {
        let (problem, _) = s.problem.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!(
            "collector {} is starting: {problem}; the cluster's status is on any other agent's or collector's /status",
            s.name
        )
    };
    let (page, fragment, json) = (starting.clone(), starting.clone(), starting);
    axum::Router::new()
        .route("/status", get(move || std::future::ready(unavailable(&why(&page), "starting", Form::Page))))
        .route(
            "/status/fragment",
            get(move || std::future::ready(unavailable(&why(&fragment), "starting", Form::Fragment))),
        )
        .route("/status.json", get(move || std::future::ready(unavailable(&why(&json), "starting", Form::Json))))
}
