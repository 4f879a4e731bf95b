//! The local testbed: what Kubernetes does for the real deployment, on one machine.
//!
//! `testbed up` starts N node+paxos pairs as separate OS processes (the testbed re-executes its
//! own binary as `testbed node ...` and `testbed paxos ...`, so one `cargo run` builds all), restarts
//! a process that dies (capped backoff, like a kubelet), and serves a front door that plays the
//! external load balancer: in leader mode it forwards to its current target node (the leader,
//! found by polling; `POST /_testbed/target` retargets it), in leaderless mode it spreads requests
//! over the nodes that are ready.
//!
//! Layout: [`cli`] (arguments), [`supervisor`] (child processes), [`frontdoor`] (the proxy and
//! the `/_testbed` API), [`prometheus`] (scrape config, `--prometheus`), [`up`] (wiring, ports,
//! `cluster.json`, the printed URLs).
#![deny(missing_docs)]

pub mod cli;
pub mod frontdoor;
pub mod prometheus;
pub mod supervisor;
pub mod up;
