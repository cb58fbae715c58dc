//! The DLR lookup protocol: what nodes agree on to resolve any message id in one round trip.
//!
//! - [`id`]: per-connector id formats and the canonical id (`000024` = `24`, hex = decimal);
//! - [`record`]: the registered message ([`record::DlrRecord`]) and its compact stored form;
//! - [`wire`]: the JSON documents of lookups, reports and replication;
//! - [`rendezvous`]: which live node keeps the copy of a record.
//!
//! The agent (`switchboard-agent`, module `dlr`) keeps the index, answers lookups and replicates;
//! `docs/protocol.md` describes the same for clients in other languages.

pub mod id;
pub mod record;
pub mod rendezvous;
pub mod wire;

pub use id::{IdError, IdFormat};
pub use record::{registration_version, DlrRecord, RecordState};
