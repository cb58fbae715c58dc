//! The `switchboard` command: thin wiring of the workspace's libraries into subcommands.
//!
//! - [`cli`]: argument definitions and the dispatch to each library's entry point;
//! - [`certs`]: `certs init|issue|show`, the cluster's CA and certificates;
//! - [`demo`]: the no-setup demo of the log pipeline on loopback;
//! - [`config_cmd`]: `config push|log|show|diff|rollback|status|resolve`, the configuration
//!   repository;
//! - [`limits_cmd`]: `limits set|list|history`, the cluster's limits with revisions;
//! - [`loggen`]: synthetic SMS gateway and MTA logs for the demo;
//! - [`status_cmd`]: `status`, the cluster at a glance.

pub mod certs;
pub mod cli;
pub mod config_cmd;
pub mod demo;
pub mod limits_cmd;
pub mod loggen;
pub mod status_cmd;
