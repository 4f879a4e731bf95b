//! The bank node of the paxos bank.
//!
//! A node serves the original system's banking REST API over a deterministic state machine.
//! Layout, from the inside out:
//!
//! - [`money`]: exact amounts (integer cents) and their exact JSON parsing and printing;
//! - [`command`]: the commands that go into the log and the outcomes of applying them;
//! - [`bank`]: the state machine (the business rules), over a [`bank::Ledger`] view;
//! - [`store`]: the [`store::Store`] trait, the embedded redb backend and the conformance suite;
//! - [`log`]: the way into the log (standalone: a group-committing single writer);
//! - [`cluster`]: the way into the replicated log of the local `paxos` process;
//! - [`api`]: the public and internal HTTP routers; [`client`]: the typed client of the public API;
//! - [`config`] and [`server`]: command-line configuration and the process entry point;
//! - [`metrics`]: every metric the node exports, described and created at zero at start-up.
#![deny(missing_docs)]

pub mod api;
pub mod bank;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod log;
pub mod metrics;
pub mod money;
pub mod server;
pub mod store;
