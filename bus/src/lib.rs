//! Switchboard's bus: everything two Switchboard processes must agree on, and the few runtimes
//! every long-running process runs the same way (session, membership, mesh check, health).
//! A runtime that one kind of process runs alone lives in its crate (the agent's limits
//! coordination and DLR service, the collector's sinks).
//!
//! Layout:
//! - [`dataset`]: where the Parquet dataset lives (a directory or `s3://`) and how to reach it;
//! - [`config`]: the `[bus]` config table (cluster, node, zenoh mode and endpoints) and the
//!   config-file loader ([`config::read_file`], [`config::FileError`]);
//! - [`keys`]: the key space, defined once, with typed stream and member identities;
//! - [`tls`]: the `[bus.tls]` table, certificate identities (`<role>:<name>`) and their checks;
//! - [`access`]: the access policy every process applies to what it receives, from the members;
//! - [`refusals`]: messages refused from the bus, counted by reason;
//! - [`vital`]: threads a process cannot live without; one that dies fails it;
//! - [`session`]: opening a zenoh session from the config, announcing a process;
//! - [`membership`]: the live set of the cluster from liveliness tokens;
//! - [`mesh`]: the check that every process sees every live process, and unique names;
//! - [`links`]: dialing a peer again whose link zenoh would not restore;
//! - [`dlr`]: the DLR lookup protocol: canonical ids, records, lookup and replica documents;
//! - [`histogram`]: HDR V2 histograms (DEFLATE or not) as they travel and rest;
//! - [`limits`]: rate and concurrency limits decided locally (GCRA, slots), shares, demand
//!   reports and revisions;
//! - [`repo`]: the cluster's configuration repository: revisions, trees, the store on a node and
//!   the documents on the bus;
//! - [`tables`]: the dataset's tables and the agents' own streams that feed them;
//! - [`http`]: the `/health` and `/metrics` endpoint of long-running processes;
//! - [`udp`]: the kernel's UDP receive buffers that `quic/` links depend on;
//! - [`wire`]: versioned payload schemas (Arrow IPC), e.g. [`wire::log_batch`].
//!
//! `docs/protocol.md` documents the same key space and payloads for clients in other languages.

pub mod access;
pub mod apart;
pub mod busy_poll;
pub mod config;
pub mod connect_failures;
pub mod dataset;
pub mod dlr;
pub mod histogram;
pub mod http;
pub mod keys;
pub mod limits;
pub mod links;
pub mod membership;
pub mod mesh;
pub mod quiet_unix;
pub mod refusals;
pub mod repo;
pub mod session;
pub mod status;
pub mod tables;
pub mod throttle;
pub mod tls;
pub mod udp;
pub mod vital;
pub mod wire;
pub mod zenoh_logs;

pub use config::BusConfig;
pub use keys::{KeySpace, Role, Service, StreamId, StreamKind};
pub use membership::{Member, MemberEvent, Membership};
