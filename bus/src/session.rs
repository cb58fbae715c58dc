//! Opening a zenoh session from a [`BusConfig`], and announcing this process on the bus.
//!
//! [`open`] validates the config, translates it into zenoh's configuration and opens the session;
//! [`announce`] declares the process's liveliness token (`<prefix>/<role>/<name>`), which lives as
//! long as the returned token (or the process) does.

use zenoh::liveliness::LivelinessToken;
use zenoh::Session;

use crate::config::{BusConfig, ConfigError};
use crate::keys::{KeyError, KeySpace, Role};

/// A bus session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The `[bus]` config is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A name or key expression is not valid.
    #[error(transparent)]
    Key(#[from] KeyError),
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
    SessionError::Zenoh(e.to_string())
}

/// Validate `config` and open a zenoh session for it.
pub async fn open(config: &BusConfig) -> Result<Session, SessionError> {
    config.validate()?;
    let mut zc = zenoh::Config::default();
    let json = config.zenoh_json();
    if let Some(map) = json.as_object() {
        for (key, value) in map {
            insert(&mut zc, key, value)?;
        }
    }
    zenoh::open(zc).await.map_err(zenoh_err)
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
