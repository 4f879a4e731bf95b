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
//! - [`auth`]: the cluster token: reading it ([`read_cluster_token`], [`read_token_file`]),
//!   checking it in constant time, and the one middleware ([`require_token`]) with the one 401.
//! - [`process`]: the shutdown signal ([`shutdown_signal`]) and children that die with their
//!   parent ([`DieWithParent`]).
//! - [`burst`]: [`recv_burst`], a queue's items taken in bursts, so that a write carries what
//!   many tasks made ready together instead of one write each.
//! - [`metrics_response`]: the `/metrics` answer of every process.
#![deny(missing_docs)]

pub mod auth;
pub mod burst;
pub mod process;
mod serve;

pub use auth::{
    TOKEN_ENV, Tokens, bearer_matches, read_cluster_token, read_or_generate_token, read_token_file,
    require_token, token_from_env, token_matches, unauthorized,
};
pub use burst::{recv_burst, take_the_rest};
pub use process::{DieWithParent, shutdown_signal};
pub use serve::{
    Connection, LINGER_BYTES, LINGER_TIME, Limits, Oversized, reject_oversized, serve,
};

/// How long the bank's HTTP clients keep an idle pooled connection: below the servers'
/// [`Limits::header_read_timeout`], so a server never closes a connection a client reuses.
pub const CLIENT_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// The `/metrics` answer of every process: Prometheus text (`text/plain; version=0.0.4`), or 404
/// when metrics are off (`render` is `None`).
pub fn metrics_response(
    render: Option<&(dyn Fn() -> String + Send + Sync)>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match render {
        Some(render) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            render(),
        )
            .into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
