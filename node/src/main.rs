//! `node`: one bank node (standalone until the cluster lands).

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use node::config::Config;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    telemetry::init_logging(config.log_format);
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("node: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    let token = node::server::resolve_token(&config, std::env::var("BANK_CLUSTER_TOKEN").ok())?;
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    let internal = TcpListener::bind(config.internal_listen)
        .await
        .with_context(|| format!("binding --internal-listen {}", config.internal_listen))?;
    let public_addr = public.local_addr()?;
    let internal_addr = internal.local_addr()?;
    let handle = telemetry::install_prometheus();
    let render: node::api::metrics_render::Render = Arc::new(move || handle.render());
    println!(
        "bank node ready: open http://{public_addr}/ (API docs: http://{public_addr}/openapi.json)"
    );
    println!(
        "internal port: http://{internal_addr}/ (/metrics, /shutdown; needs the cluster token)"
    );
    node::server::run(
        config,
        token,
        public,
        internal,
        Some(render),
        shutdown_signal(),
    )
    .await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received; shutting down");
}
