//! `loadtest`: `cargo run --release -p loadtest -- --host http://127.0.0.1:8080` runs the mixed
//! workload for a bounded time and checks the bank's invariants; `--compare` measures leader vs
//! leaderless on fresh clusters; `loadtest check --host URL` checks a saved ledger again. The
//! binary also plays `testbed up` and its node/paxos children (for `--compare`).

use std::process::ExitCode;

use clap::Parser as _;

/// `loadtest check`: the invariant check alone, against a ledger saved by an earlier run.
#[derive(Debug, clap::Parser)]
#[command(name = "loadtest check")]
struct CheckCli {
    /// The bank's URL (a node or the front door).
    #[arg(long)]
    host: String,
    /// The ledger written by the run.
    #[arg(long, default_value = "target/loadtest/ledger.json")]
    ledger: std::path::PathBuf,
    /// Public URLs of every node to compare replicas (default: asked from the testbed).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Acknowledged writes replayed with their keys.
    #[arg(long, default_value_t = 50)]
    replays: usize,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if matches!(
        args.get(1).map(String::as_str),
        Some("up" | "node" | "paxos" | "prober" | "chaos" | "linkproxy")
    ) {
        return testbed::main_with_args(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = if args.get(1).map(String::as_str) == Some("check") {
        let cli = CheckCli::parse_from(&args[1..]);
        runtime.block_on(check(cli))
    } else {
        let cli = loadtest::Cli::parse();
        runtime.block_on(run(cli))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loadtest: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check(cli: CheckCli) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text = std::fs::read(&cli.ledger)
        .with_context(|| format!("reading the ledger {}", cli.ledger.display()))?;
    let ledger: loadtest::ledger::Ledger = serde_json::from_slice(&text)?;
    let host = cli.host.trim_end_matches('/').to_owned();
    let nodes = if cli.nodes.is_empty() {
        loadtest::ledger::testbed_nodes(&host).await
    } else {
        cli.nodes
    };
    let report = loadtest::ledger::check(&ledger, &host, &nodes, cli.replays).await;
    loadtest::judge(&report)
}

async fn serve_metrics(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    telemetry::install_prometheus();
    loadtest::metrics::describe();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "load generator metrics: http://{}/metrics",
        listener.local_addr()?
    );
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { telemetry::render() }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

async fn run(cli: loadtest::Cli) -> anyhow::Result<()> {
    cli.validate()?;
    if let Some(listen) = cli.metrics_listen {
        serve_metrics(listen).await?;
    }
    if cli.compare {
        return loadtest::compare::run(&cli).await;
    }
    let host =
        cli.goose.host.clone().ok_or_else(|| {
            anyhow::anyhow!("--host is required (or --compare to start clusters)")
        })?;
    let host = host.trim_end_matches('/').to_owned();
    let nodes = loadtest::ledger::testbed_nodes(&host).await;
    let mode = if nodes.is_empty() {
        "unknown"
    } else {
        "testbed"
    };
    eprintln!("creating a pool of {} accounts at {host}...", cli.accounts);
    let run = loadtest::prepare(&cli, &host, mode).await?;
    loadtest::attack(&cli, &host, run.clone()).await?;
    let samples = run.samples.lock().expect("samples lock").clone();
    let summary = loadtest::stats::summarize(&samples);
    println!(
        "{:?} workload: {} operations, {:.0} ops/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} errors",
        cli.workload,
        summary.operations,
        summary.ops_per_s,
        summary.p50_ms,
        summary.p90_ms,
        summary.p99_ms,
        summary.p999_ms,
        summary.errors
    );
    let ledger = run.ledger.lock().expect("ledger lock").clone();
    let path = cli.out_dir.join("ledger.json");
    loadtest::save_ledger(&ledger, &path)?;
    eprintln!(
        "ledger: {} (for `loadtest check --host {host}`)",
        path.display()
    );
    if cli.no_check {
        return Ok(());
    }
    let report = loadtest::ledger::check(&ledger, &host, &nodes, cli.replays).await;
    loadtest::judge(&report)
}
