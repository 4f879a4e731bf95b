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
    let result = match args.get(1).map(String::as_str) {
        Some("node") => runtime(None).block_on(node::server::main_with_args(args[1..].to_vec())),
        Some("paxos") => runtime(None).block_on(paxos::runtime::main_with_args(args[1..].to_vec())),
        Some("prober") => runtime(None).block_on(prober::main_with_args(args[1..].to_vec())),
        Some("chaos") => runtime(None).block_on(chaos::main_with_args(args[1..].to_vec())),
        Some("linkproxy") => runtime(None).block_on(linkproxy::main_with_args(args[1..].to_vec())),
        _ => match cli::Cli::try_parse_from(&args) {
            Err(err) => err.exit(),
            Ok(cli) => match cli.command {
                // The front door is one more process on the cluster's cores: sized as its
                // children are (one worker on two cores: 15% less front door CPU per proxied
                // request in leaderless mode, docs/measurements/2026-12-01-performance-round4.md).
                cli::Command::Up(up) => runtime_for(&up).block_on(async {
                    let identity =
                        telemetry::Identity::new("testbed", up.mode.as_str(), "front-door");
                    let telemetry = telemetry::init(&identity, telemetry::LogFormat::Human);
                    let result = up::up(up).await;
                    telemetry.shutdown().await;
                    result
                }),
                cli::Command::Restart(args) => {
                    runtime(None).block_on(rolling::restart_command(args))
                }
                cli::Command::Experiment(args) => {
                    runtime(None).block_on(experiment::experiment_command(args))
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

/// A multi-threaded runtime with `workers` workers, or as many as `TOKIO_WORKER_THREADS` says
/// (tokio's default: one per core).
fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder
        .enable_all()
        .build()
        .expect("starting the tokio runtime")
}

/// The runtime of `testbed up` (the front door and the supervisor): on the embedded store,
/// [`cluster::worker_threads`] workers unless `TOKIO_WORKER_THREADS` says otherwise, as for
/// the children it starts.
fn runtime_for(up: &cli::UpArgs) -> tokio::runtime::Runtime {
    let sized = up.store == node::store::StoreKind::Embedded
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none();
    runtime(sized.then(|| cluster::worker_threads(up.nodes)))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn up(args: &[&str]) -> cli::UpArgs {
        let cli = cli::Cli::try_parse_from(["testbed", "up"].iter().chain(args)).expect("args");
        match cli.command {
            cli::Command::Up(up) => up,
            _ => unreachable!("parsed `up`"),
        }
    }

    #[test]
    fn the_front_door_runtime_is_sized_like_its_children_on_the_embedded_store() {
        if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            eprintln!("TOKIO_WORKER_THREADS is set: it decides the worker count, nothing to check");
            return;
        }
        for nodes in [1, 3, 5] {
            let runtime = runtime_for(&up(&["--nodes", &nodes.to_string()]));
            assert_eq!(
                runtime.metrics().num_workers(),
                cluster::worker_threads(nodes),
                "{nodes} nodes"
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let firestore = runtime_for(&up(&["--store", "firestore"]));
        assert_eq!(
            firestore.metrics().num_workers(),
            cores,
            "tokio's default on Firestore"
        );
    }
}
