//! `node`: one bank node (standalone, or the first container of a cluster pod).

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
