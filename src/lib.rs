//! The `switchboard` command: thin wiring of the workspace's libraries into subcommands.
//!
//! - [`cli`]: argument definitions and the dispatch to each library's entry point;
//! - [`demo`]: the no-setup demo of the log pipeline on loopback;
//! - [`loggen`]: synthetic SMS gateway and MTA logs for the demo.

pub mod cli;
pub mod demo;
pub mod loggen;
