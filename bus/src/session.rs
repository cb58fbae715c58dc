//! Opening a zenoh session from a [`BusConfig`], and announcing this process on the bus.
//!
//! [`open`] validates the config, translates it into zenoh's configuration and opens the session
//! (with `[bus.tls]`: mutual TLS and the access policy, [`crate::tls`], [`crate::access`]; without:
//! a loud warning); [`open_linked`] does the same for a long-running process and keeps its
//! runtime's [`Links`];
//! [`announce`] declares the process's liveliness token (`<prefix>/<role>/<name>`), which lives as
//! long as the returned token (or the process) does.

use std::time::Duration;

use tokio_util::task::TaskTracker;
use zenoh::internal::runtime::RuntimeBuilder;
use zenoh::liveliness::LivelinessToken;
use zenoh::Session;

use crate::config::{BusConfig, ConfigError};
use crate::keys::{KeyError, KeySpace, Role};
use crate::links::Links;
use crate::tls::{IdRole, Identity, TlsError};

/// How often a process without TLS says so again.
const PLAIN_WARNING_EVERY: Duration = Duration::from_secs(600);

/// A bus session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The `[bus]` config is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A name or key expression is not valid.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A `[bus.tls]` file is not usable.
    #[error("[bus.tls]: {0}")]
    Tls(#[from] TlsError),
    /// zenoh refused the configuration or could not open the session (for example a listen
    /// endpoint already in use).
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// Another live process already uses this process's name.
    #[error(
        "{name} is already alive in the cluster (seen by {seen_by}): each process needs its own \
         name (`node` in `[bus]`, default: the host name); stop the other one or rename this one"
    )]
    NameTaken {
        /// `<role>/<name>` of this process.
        name: String,
        /// Who reported the other one alive.
        seen_by: String,
    },
}

fn zenoh_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Zenoh(without_source_location(&e.to_string()))
}

/// A zenoh error from opening a session for `config`; one about an endpoint of `listen` or
/// `connect` (a port in use) names that setting.
fn open_err(config: &BusConfig, e: impl std::fmt::Display) -> SessionError {
    let text = without_source_location(&e.to_string());
    let names = |endpoints: &[String]| endpoints.iter().any(|x| text.contains(x.as_str()));
    match (names(&config.listen), names(&config.connect)) {
        (true, _) => SessionError::Zenoh(format!("`listen`: {text}")),
        (false, true) => SessionError::Zenoh(format!("`connect`: {text}")),
        _ => SessionError::Zenoh(text),
    }
}

/// A zenoh error's text without the source file and line zenoh appends to it (`... at
/// /path/to/zenoh-link-tcp/src/lib.rs:61.`, also inside brackets: `[... at ...rs:61.]`), which
/// names where zenoh was built, not the problem.
pub fn without_source_location(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" at ") {
        let (head, tail) = rest.split_at(at);
        let location = &tail[4..];
        let end = location.find(|c: char| c.is_whitespace()).unwrap_or(location.len());
        let (word, after) = location.split_at(end);
        let place = word.trim_end_matches(['.', ',', ']', ')']);
        let is_source = place.rsplit_once(':').is_some_and(|(file, line)| {
            file.ends_with(".rs") && !line.is_empty() && line.chars().all(|c| c.is_ascii_digit())
        });
        out.push_str(head);
        if is_source {
            // Keep the brackets that closed around the location.
            out.extend(word[place.len()..].chars().filter(|c| matches!(c, ']' | ')')));
        } else {
            out.push_str(" at ");
            out.push_str(word);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Validate `config` and open a zenoh session for it. `role` is what this process is: with
/// `[bus.tls]`, its certificate must name that role and `[bus] node`; `None` (a command-line
/// tool) takes any member's certificate. A long-running process (`role` given) without TLS
/// warns at start and every 10 minutes.
pub async fn open(config: &BusConfig, role: Option<IdRole>) -> Result<Session, SessionError> {
    zenoh::open(zenoh_config(config, role)?).await.map_err(|e| open_err(config, e))
}

/// [`open`] for a long-running process, which also keeps the [`Links`] of its runtime to dial
/// peers that zenoh would not dial again ([`crate::links`]). Leave with [`leave`].
pub async fn open_linked(config: &BusConfig, role: IdRole) -> Result<(Session, Links), SessionError> {
    let zc = zenoh_config(config, Some(role))?;
    // What `zenoh::open` does, keeping the runtime: build it, put a session on it, start it.
    // A session on a runtime it did not build leaves the runtime open when it closes: the
    // runtime is closed here on failure, and by `leave` after.
    let mut runtime = RuntimeBuilder::new(zc).build().await.map_err(|e| open_err(config, e))?;
    let session = match zenoh::session::init(runtime.clone().into()).await {
        Ok(s) => s,
        Err(e) => {
            if let Err(e) = runtime.close().await {
                tracing::debug!(error = %e, "closing the bus runtime");
            }
            return Err(open_err(config, e));
        }
    };
    let may_dial = config.gossip && config.mode == crate::config::Mode::Peer;
    let links = Links::new(runtime.clone(), session.clone(), may_dial);
    if let Err(e) = runtime.start().await {
        leave(&session, &links).await;
        return Err(open_err(config, e));
    }
    Ok((session, links))
}

/// `config` as zenoh's configuration (see [`open`]).
fn zenoh_config(config: &BusConfig, role: Option<IdRole>) -> Result<zenoh::Config, SessionError> {
    config.validate()?;
    if role.is_some() {
        crate::status::set_endpoints(crate::config::advertised(&config.listen, &config.connect));
    }
    let mut zc = zenoh::Config::default();
    let json = config.zenoh_json();
    if let Some(map) = json.as_object() {
        for (key, value) in map {
            insert(&mut zc, key, value)?;
        }
    }
    match &config.tls {
        Some(tls) => {
            let expect = role.map(|r| Identity::new(r, &config.node)).transpose()?;
            let creds = crate::tls::load(tls, expect.as_ref())?;
            let keys = KeySpace::new(&config.effective_prefix())?;
            let path = |p: &std::path::Path| serde_json::Value::from(p.to_string_lossy().into_owned());
            let link = serde_json::json!({
                "root_ca_certificate": path(&tls.ca),
                "listen_certificate": path(&tls.cert),
                "listen_private_key": path(&tls.key),
                "connect_certificate": path(&tls.cert),
                "connect_private_key": path(&tls.key),
                // Both sides show a certificate of the cluster CA; the identity in it, not the
                // host name, decides what a peer may do.
                "enable_mtls": true,
                "verify_name_on_connect": false,
            });
            insert(&mut zc, "transport/link/tls", &link)?;
            // Only TLS links, accepted or opened: a peer's plain `tcp/` locator learned by gossip
            // (zenoh's default listen for a peer) would otherwise be dialed, a link without the
            // policy's identities.
            insert(&mut zc, "transport/link/protocols", &serde_json::json!(["quic", "tls"]))?;
            let policy = crate::access::policy(&keys, &creds.members);
            zc.insert_json5("access_control", &policy.to_string())
                .map_err(|e| SessionError::Zenoh(format!("access policy: {e}")))?;
            crate::refusals::set_tls(true);
            crate::refusals::set_prefix(keys.prefix());
            if role.is_some() {
                crate::udp::warn_if_small(config.listen.iter().chain(&config.connect));
            }
            tracing::info!(
                identity = %creds.identity,
                members = creds.members.len(),
                expires = %creds.not_after,
                "bus: mutual TLS as {}", creds.identity
            );
            for warning in &creds.warnings {
                tracing::warn!("bus: {warning}");
            }
        }
        None => {
            crate::refusals::set_tls(false);
            if role.is_some() {
                warn_plain();
                tokio::spawn(async {
                    let mut every = tokio::time::interval(PLAIN_WARNING_EVERY);
                    every.tick().await;
                    loop {
                        every.tick().await;
                        warn_plain();
                    }
                });
            }
        }
    }
    Ok(zc)
}

fn warn_plain() {
    tracing::warn!(
        "bus: running WITHOUT TLS: any host that reaches this process's endpoints can join the \
         cluster and pose as any node; set [bus.tls] for a shared network (docs/security.md)"
    );
}

/// Insert a (possibly nested) JSON value into a zenoh config, leaf by leaf, so that zenoh's own
/// defaults stay in force for everything we do not set.
fn insert(zc: &mut zenoh::Config, key: &str, value: &serde_json::Value) -> Result<(), SessionError> {
    match value {
        // Optional sections that are absent by default take their whole object at once.
        serde_json::Value::Object(_) if key.ends_with("/retry") => zc
            .insert_json5(key, &value.to_string())
            .map_err(|e| SessionError::Zenoh(format!("setting {key} = {value}: {e}"))),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                insert(zc, &format!("{key}/{k}"), v)?;
            }
            Ok(())
        }
        leaf => zc
            .insert_json5(key, &leaf.to_string())
            .map_err(|e| SessionError::Zenoh(format!("setting {key} = {leaf}: {e}"))),
    }
}

/// How long leaving the bus may take. zenoh's close waits on its links' tasks, and when the
/// cluster's processes stop together it sometimes waits 10 s for peers that are closing too;
/// everything this process had to send is sent before it leaves, so the rest is cut short.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Leave the bus: close `session` within [`CLOSE_TIMEOUT`].
pub async fn close(session: &Session) {
    match tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "closing the bus session"),
        Err(_) => tracing::debug!("the bus session took over {CLOSE_TIMEOUT:?} to close; leaving it"),
    }
}

/// Leave the bus as a long-running process: close `session`, then the runtime's links, within
/// [`CLOSE_TIMEOUT`] in all.
pub async fn leave(session: &Session, links: &Links) {
    let both = async {
        if let Err(e) = session.close().await {
            tracing::debug!(error = %e, "closing the bus session");
        }
        links.close().await;
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, both).await.is_err() {
        tracing::debug!("leaving the bus took over {CLOSE_TIMEOUT:?}; leaving it");
    }
}

/// Leaves the bus when dropped, unless [`LeaveOnDrop::keep`] was called first: a start that
/// fails after [`open_linked`] closes what it opened (listeners and links included), as a task
/// of `tracker`, which the failed start waits for.
pub struct LeaveOnDrop {
    bus: Option<(Session, Links)>,
    tracker: TaskTracker,
}

impl LeaveOnDrop {
    /// Guard `session` and `links`.
    pub fn new(session: &Session, links: &Links, tracker: &TaskTracker) -> Self {
        Self { bus: Some((session.clone(), links.clone())), tracker: tracker.clone() }
    }

    /// The start went through: the caller leaves the bus itself, later.
    pub fn keep(mut self) {
        self.bus = None;
    }
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let Some((session, links)) = self.bus.take() else { return };
        // Leaving is asynchronous: a task on the runtime the start ran on (there is one: the
        // guard lives in an async start).
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tracker.spawn(async move { leave(&session, &links).await });
        }
    }
}

/// Declare this process's liveliness token under `<prefix>/<role>/<name>`.
pub async fn announce(
    session: &Session,
    keys: &KeySpace,
    role: Role,
    name: &str,
) -> Result<LivelinessToken, SessionError> {
    let key = keys.member(role, name)?;
    session.liveliness().declare_token(key).await.map_err(zenoh_err)
}

/// Declare that this agent serves `service` (`<prefix>/serves/<service>/<node>`), or with `None`
/// that it serves none (`<prefix>/serves/none/<node>`): the agents that run a service count it in
/// as it says ([`crate::Membership::watch_service`]).
pub async fn announce_service(
    session: &Session,
    keys: &KeySpace,
    service: Option<crate::keys::Service>,
    node: &str,
) -> Result<LivelinessToken, SessionError> {
    let key = match service {
        Some(service) => keys.serves(service, node)?,
        None => keys.serves_none(node)?,
    };
    session.liveliness().declare_token(key).await.map_err(zenoh_err)
}

/// Answer every query on `key` with the JSON of `document` as it is at that moment, under `key`
/// itself (which names the answering process to the asker). Answered from zenoh's own threads, so
/// an answer never waits on the process's runtime; the queryable lives as long as the value
/// returned.
pub async fn serve_document<T: serde::Serialize + Send + 'static>(
    session: &Session,
    key: zenoh::key_expr::OwnedKeyExpr,
    document: std::sync::Arc<std::sync::Mutex<T>>,
) -> Result<zenoh::query::Queryable<()>, zenoh::Error> {
    session
        .declare_queryable(key.clone())
        .callback(move |query| {
            let body = document.lock().ok().and_then(|d| serde_json::to_vec(&*d).ok()).unwrap_or_default();
            if let Err(e) = zenoh::Wait::wait(query.reply(key.clone(), body)) {
                tracing::debug!(key = %key, error = %e, "cannot answer a document query");
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zenoh_source_locations_are_left_out() {
        let text = "Can not create a new TCP listener bound to tcp/127.0.0.1:7447: [Address already in use \
                    (os error 98) at /home/u/.cargo/registry/src/zenoh-link-commons-1.10.2/src/tcp.rs:61.]";
        assert_eq!(
            without_source_location(text),
            "Can not create a new TCP listener bound to tcp/127.0.0.1:7447: [Address already in use (os error 98)]"
        );
        assert_eq!(without_source_location("refused at src/lib.rs:9. Then at noon"), "refused Then at noon");
        assert_eq!(without_source_location("listening at 127.0.0.1:7447"), "listening at 127.0.0.1:7447");
    }
}
