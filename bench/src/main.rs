//! `bench`: the paxos bank and etcd side by side, in one run, on one workload shape.
//!
//! `cargo run --release -p bench` starts a 3-node testbed (this very binary plays `testbed up`
//! and its node/paxos children, with the same allocator) and measures transfers between 100
//! accounts through its front door at 1 and 64 clients, then stops it, starts a 3-member etcd
//! cluster (Debian's `etcd-server`) and runs the same transfers there (a read transaction, then a
//! compare-and-swap transaction on both keys' revisions, retried on conflict: how an etcd client
//! moves money). Every figure is printed with its ratio to etcd's, and every system's total is
//! checked to be conserved. See `docs/measurements/` for results and `bench --help` for the
//! knobs.

/// The same allocator as the `testbed`, `node` and `paxos` binaries, so the cluster measured is
/// the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if matches!(
        args.get(1).map(String::as_str),
        Some("up" | "node" | "paxos" | "prober" | "chaos" | "linkproxy")
    ) {
        return testbed::main_with_args(args);
    }
    bench::main_with_args(args)
}
