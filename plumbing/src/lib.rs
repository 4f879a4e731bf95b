//! Process plumbing shared by every binary of the paxos bank.
//!
//! - [`serve`]: the HTTP server of every listener (node public and internal ports, paxos, the
//!   testbed's front door), with a limit on everything a client controls: how long it may take
//!   to send a request's headers ([`Limits::header_read_timeout`], so slowloris cannot hold a
//!   socket forever) and its body ([`Limits::body_read_timeout`]), and how many connections it
//!   may hold at once ([`Limits::max_connections`]; beyond it, new connections wait in the
//!   kernel's backlog).
//! - [`reject_oversized`]: a 413 that a client which sends its whole body before reading the
//!   answer (Python's urllib, many HTTP/1.1 clients) can read, instead of a connection reset.
#![deny(missing_docs)]

mod serve;

pub use serve::{LINGER_BYTES, LINGER_TIME, Limits, Oversized, reject_oversized, serve};

/// How long the bank's HTTP clients keep an idle pooled connection: below the servers'
/// [`Limits::header_read_timeout`], so a server never closes a connection a client reuses.
pub const CLIENT_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(20);
