//! Telemetry shared by every binary of the paxos bank: logging through `tracing`, and a
//! Prometheus recorder for the `metrics` facade whose text the binaries serve at `/metrics`.
//!
//! Layout: [`init_logging`] installs the subscriber (human or JSON lines, `RUST_LOG` filter);
//! [`install_prometheus`] installs the global recorder once and returns a handle to render it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be human or json, not {other:?}")),
        }
    }
}

/// Installs the global `tracing` subscriber. `RUST_LOG` filters (default `info`). Calling it a
/// second time is harmless (the first subscriber stays).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Latency buckets in seconds: from 50 microseconds (an in-memory step) to 10 seconds (a remote
/// database under contention).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Buckets for batch sizes (entries per commit).
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Records `build_info{service, version, mode, node} 1`, the gauge dashboards join on.
pub fn set_build_info(service: &'static str, mode: &str, node: &str) {
    metrics::describe_gauge!(
        "build_info",
        "1, labelled with service, version, mode and node"
    );
    metrics::gauge!(
        "build_info",
        "service" => service,
        "version" => env!("CARGO_PKG_VERSION"),
        "mode" => mode.to_owned(),
        "node" => node.to_owned()
    )
    .set(1.0);
}

/// The Prometheus text of everything recorded, with fresh process figures (CPU seconds, resident
/// memory, open file descriptors, threads) collected first. Installs the recorder if needed.
pub fn render() -> String {
    let handle = install_prometheus();
    let process = PROCESS.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    });
    process.collect();
    handle.render()
}

/// Installs the global Prometheus recorder (once per process) and returns its handle. Must be
/// called inside a tokio runtime: it starts the periodic upkeep that bounds histogram memory.
pub fn install_prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS_SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("batch_size".into()),
                        BATCH_SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}
