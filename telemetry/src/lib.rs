//! Telemetry shared by every binary of the paxos bank: logs and traces through `tracing`
//! (OpenTelemetry export over OTLP, W3C trace context across HTTP hops), and a Prometheus
//! recorder for the `metrics` facade whose text the binaries serve at `/metrics`.
//!
//! Layout: [`init`] installs the subscriber once per process (human or JSON log lines filtered
//! by `RUST_LOG`, plus the OpenTelemetry layer when an OTLP endpoint is configured) and returns
//! a [`Guard`] whose [`Guard::shutdown`] flushes the spans; [`trace`] holds the propagation
//! helpers; [`install_prometheus`] installs the global recorder once and [`render`] produces the
//! text.

pub mod catalog;
pub mod trace;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanExporter};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use trace::Identity;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
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

/// Keeps the tracer alive; [`Guard::shutdown`] exports the spans still buffered.
#[must_use = "dropping the guard without shutdown() may lose the last spans"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Whether spans are being exported (a tracer is installed).
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports every span still buffered and stops the exporter (bounded: the exporter's own
    /// timeout applies). Runs the blocking flush off the async worker threads.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }

    /// Exports the spans buffered so far (tests read them right after).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

/// Installs logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set,
/// the OTLP span exporter with parent-based sampling at `OTEL_TRACES_SAMPLER_ARG` (default
/// [`trace::DEFAULT_SAMPLE_RATIO`]). Call once, inside the tokio runtime, as early as possible;
/// a second call in the same process keeps the first subscriber.
pub fn init(identity: &Identity, format: LogFormat) -> Guard {
    let provider = if trace::otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => Some((
                tracer_provider(identity)
                    .with_batch_exporter(exporter)
                    .build(),
                trace::sample_ratio_from_env(),
            )),
            Err(err) => {
                eprintln!("OTLP exporter not started ({err}); continuing without traces");
                None
            }
        }
    } else {
        None
    };
    install(identity, format, provider)
}

/// [`init`] with a given exporter (every span handed over synchronously when it ends) and
/// sample ratio: what tests use with an in-memory exporter.
pub fn init_with_exporter<E: SpanExporter + 'static>(
    identity: &Identity,
    format: LogFormat,
    exporter: E,
    sample_ratio: f64,
) -> Guard {
    let provider = tracer_provider(identity)
        .with_simple_exporter(exporter)
        .build();
    install(identity, format, Some((provider, sample_ratio)))
}

/// The sampling decision is made once, at the edge ([`trace::http_server_span`]); the SDK
/// then keeps every span of a sampled trace (a root is only created when sampled).
fn tracer_provider(identity: &Identity) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let resource = Resource::builder()
        .with_service_name(identity.service)
        .with_attributes([
            KeyValue::new("service.instance.id", identity.instance.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("bank.mode", identity.mode.clone()),
            KeyValue::new("bank.node", identity.node.clone()),
        ])
        .build();
    SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(resource)
}

/// Human logs are coloured only on a terminal (and not when `NO_COLOR` is set and not empty,
/// see no-color.org): the testbed sends every process's logs to a file, where escape codes
/// only get in the way of `grep`.
fn colored_logs(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|value| value.is_empty())
}

fn install(
    identity: &Identity,
    format: LogFormat,
    tracing: Option<(SdkTracerProvider, f64)>,
) -> Guard {
    let (provider, ratio) = match tracing {
        Some((provider, ratio)) => (Some(provider), ratio),
        None => (None, 0.0),
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(colored_logs(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    // Spans are exported whatever RUST_LOG says about log lines: the two are separate concerns.
    let otel = provider.as_ref().map(|provider| {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(identity.service))
            .with_filter(LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        trace::set_enabled(ratio);
    }
    Guard {
        provider: if installed { provider } else { None },
    }
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

/// Whether metrics are recorded: `BANK_METRICS=off` turns them off (the `metrics` macros then
/// do nothing and `/metrics` is empty), to measure what recording them costs.
pub fn metrics_enabled() -> bool {
    !std::env::var("BANK_METRICS").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// This process's Prometheus recorder is installed ([`install_prometheus`] ran, metrics on):
/// metric handles made from now on record into it (one made before records nothing, ever).
pub fn recorder_installed() -> bool {
    HANDLE.get().is_some() && metrics_enabled()
}

/// Installs the global Prometheus recorder (once per process) and returns its handle. Must be
/// called inside a tokio runtime: it starts the periodic upkeep that bounds histogram memory.
/// With metrics off ([`metrics_enabled`]) the recorder is built but not installed.
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
            if !metrics_enabled() {
                return handle;
            }
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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    /// The testbed writes every child's stderr to a file: escape codes there broke `grep` on
    /// field values (`silent_ms=370` was `silent_ms\x1b[0m\x1b[2m=\x1b[0m370`).
    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(super::colored_logs(true, None));
        assert!(!super::colored_logs(false, None), "a file gets plain text");
        assert!(!super::colored_logs(true, Some(OsStr::new("1"))));
        assert!(
            super::colored_logs(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
    }
}
