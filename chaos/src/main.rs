//! The `chaos` binary: see the crate docs.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(chaos::main_with_args(std::env::args().collect())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chaos: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
