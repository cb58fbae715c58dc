//! Switchboard's bus: everything two Switchboard processes must agree on.
//!
//! Layout:
//! - [`config`]: the `[bus]` config table (cluster, node, zenoh mode and endpoints);
//! - [`keys`]: the key space, defined once, with typed stream and member identities;
//! - [`session`]: opening a zenoh session from the config, announcing a process;
//! - [`membership`]: the live set of the cluster from liveliness tokens;
//! - [`mesh`]: the check that every process sees every live process, and unique names;
//! - [`dlr`]: the DLR lookup protocol: canonical ids, records, lookup and replica documents;
//! - [`limits`]: rate and concurrency limits decided locally (GCRA, slots);
//! - [`http`]: the `/health` and `/metrics` endpoint of long-running processes;
//! - [`wire`]: versioned payload schemas (Arrow IPC), e.g. [`wire::log_batch`].
//!
//! `docs/protocol.md` documents the same key space and payloads for clients in other languages.

pub mod config;
pub mod dlr;
pub mod histogram;
pub mod http;
pub mod keys;
pub mod limits;
pub mod membership;
pub mod mesh;
pub mod session;
pub mod wire;

pub use config::BusConfig;
pub use keys::{KeySpace, Role, StreamId, StreamKind};
pub use membership::{Member, MemberEvent, Membership};
