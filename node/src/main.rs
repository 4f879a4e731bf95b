//! `node`: one bank node (standalone, or the first container of a cluster pod).

/// mimalloc: these processes allocate per HTTP request and per message; glibc malloc showed up
/// as ~12% of CPU in the cluster benchmark profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match node::server::main_with_args(std::env::args().collect()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("node: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
