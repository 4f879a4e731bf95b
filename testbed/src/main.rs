//! `testbed`: `testbed up` runs a local cluster. The testbed also re-executes itself as
//! `testbed node ...` and `testbed paxos ...` for its children, so one binary is all it needs.

/// mimalloc: these processes allocate per HTTP request and per message; glibc malloc showed up
/// as ~12% of CPU in the cluster benchmark profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = match args.get(1).map(String::as_str) {
        Some("node") => runtime.block_on(node::server::main_with_args(args[1..].to_vec())),
        Some("paxos") => runtime.block_on(paxos::runtime::main_with_args(args[1..].to_vec())),
        _ => {
            let cli = testbed::cli::Cli::parse();
            match cli.command {
                testbed::cli::Command::Up(up) => runtime.block_on(async {
                    let identity = telemetry::Identity::new("testbed", &up.mode, "front-door");
                    let telemetry = telemetry::init(&identity, telemetry::LogFormat::Human);
                    let result = testbed::up::up(up).await;
                    telemetry.shutdown().await;
                    result
                }),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testbed: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
