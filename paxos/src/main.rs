//! `paxos`: one Paxos replica process (the second container of a bank pod).

/// mimalloc: these processes allocate per HTTP request and per message; glibc malloc showed up
/// as ~12% of CPU in the cluster benchmark profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match paxos::runtime::main_with_args(std::env::args().collect()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("paxos: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
