//! The local testbed: what Kubernetes does for the real deployment, on one machine.
//!
//! `testbed up` starts N node+paxos pairs as separate OS processes (the testbed re-executes its
//! own binary as `testbed node ...` and `testbed paxos ...`, so one `cargo run` builds all), restarts
//! a process that dies (capped backoff, like a kubelet), and serves a front door that plays the
//! external load balancer: in leader mode it forwards to its current target node (the leader,
//! found by polling; `POST /_testbed/target` retargets it), in leaderless mode it spreads requests
//! over the nodes that are ready.
//!
//! Layout: [`cluster`] (the cluster API: a spec, a running cluster and a handle to it, used by
//! `up`, the tests and the load test), [`supervisor`] (child processes), [`frontdoor`] (the proxy
//! and the `/_testbed` API), [`status_page`] (`/_testbed/`), [`ledger`] (what a load did and the bank invariant check on it, shared with the load test), [`experiment`] (`testbed experiment`), [`prometheus`] (scrape config,
//! `--prometheus`), [`cli`] and [`up`]
//! (`testbed up`: the arguments and the printed URLs).
#![deny(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod experiment;
pub mod frontdoor;
pub mod ledger;
pub mod linkproxy;
pub mod netns;
pub mod plot;
pub mod prometheus;
pub mod rolling;
pub mod status_page;
pub mod supervisor;
pub mod up;

/// The `testbed` binary's main: `up`, or `node ...` / `paxos ...` when the testbed re-executes
/// itself for its children. Other binaries that embed the testbed (the load test) call it too,
/// so their own executable can play every role.
pub fn main_with_args(args: Vec<String>) -> std::process::ExitCode {
    use clap::Parser as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = match args.get(1).map(String::as_str) {
        Some("node") => runtime.block_on(node::server::main_with_args(args[1..].to_vec())),
        Some("paxos") => runtime.block_on(paxos::runtime::main_with_args(args[1..].to_vec())),
        Some("prober") => runtime.block_on(prober::main_with_args(args[1..].to_vec())),
        Some("chaos") => runtime.block_on(chaos::main_with_args(args[1..].to_vec())),
        Some("linkproxy") => runtime.block_on(linkproxy::main_with_args(args[1..].to_vec())),
        _ => match cli::Cli::try_parse_from(&args) {
            Err(err) => err.exit(),
            Ok(cli) => match cli.command {
                cli::Command::Up(up) => runtime.block_on(async {
                    let identity =
                        telemetry::Identity::new("testbed", up.mode.as_str(), "front-door");
                    let telemetry = telemetry::init(&identity, telemetry::LogFormat::Human);
                    let result = up::up(up).await;
                    telemetry.shutdown().await;
                    result
                }),
                cli::Command::Restart(args) => runtime.block_on(rolling::restart_command(args)),
                cli::Command::Experiment(args) => {
                    runtime.block_on(experiment::experiment_command(args))
                }
            },
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testbed: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
