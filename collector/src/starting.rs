//! What a collector answers while the store it must read before anything else does not answer
//! (an object store that is down or unreachable at start): `/health` fails with the store's
//! error, and the collector retries until the store answers or it is stopped.

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
    problem: Mutex<String>,
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
            problem: Mutex::new(String::new()),
        });
        let copy = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        let stop = cancel.child_token();
        tokio::spawn(switchboard_bus::http::run(
            copy,
            access.clone(),
            me.clone(),
            axum::Router::new(),
            Duration::ZERO,
            stop.clone(),
        ));
        Ok((me, stop))
    }

    /// Say why the collector is not running yet.
    pub(crate) fn set_problem(&self, why: String) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}

impl Report for Starting {
    fn health(&self) -> Health {
        let problem = self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut details = serde_json::Map::new();
        details.insert("role".into(), "starting".into());
        Health { failing: vec![problem], degraded: Vec::new(), details }
    }

    fn metrics(&self) -> String {
        let mut m = Metrics::new();
        m.gauge(
            "switchboard_collector_leader",
            "1 while this collector writes the dataset, 0 while it stands by.",
            0.0,
        );
        m.finish()
    }

    fn status(&self, health: &Health) -> ProcessStatus {
        ProcessStatus::new(Role::Collector, &self.name, self.started_at_ms, health)
    }
}
