//! Traces: the OpenTelemetry tracer behind `tracing`, W3C `traceparent` propagation across HTTP
//! hops, and the helpers that carry a request's trace through batched work.
//!
//! Every process builds one [`Identity`] and calls [`crate::init`]. When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are
//! exported over OTLP/gRPC in batches; otherwise no tracer is installed and spans cost only what
//! `tracing` itself costs. Sampling is parent-based: a request that arrives with a sampled
//! `traceparent` is traced everywhere; a new trace is sampled with probability
//! `OTEL_TRACES_SAMPLER_ARG` (default [`DEFAULT_SAMPLE_RATIO`]).
//!
//! Batching: the node sends many client commands to paxos in one HTTP call and paxos sends many
//! messages to a peer in one call, so one hop can carry several traces. The hop's span then
//! takes the first sampled trace as its parent and links the others ([`batch_span`]); a batch
//! with no sampled request makes no span at all, so unsampled traffic pays nothing for it.

pub use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::IdGenerator as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The sample ratio's bits (an f64).
static RATIO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records that a tracer is installed (by [`crate::init`]) and the share of new traces to sample.
pub(crate) fn set_enabled(ratio: f64) {
    RATIO.store(
        ratio.clamp(0.0, 1.0).to_bits(),
        std::sync::atomic::Ordering::Relaxed,
    );
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The share of new traces sampled at the edge (see [`http_server_span`]).
pub fn sample_ratio() -> f64 {
    f64::from_bits(RATIO.load(std::sync::atomic::Ordering::Relaxed))
}

/// Whether this process exports traces. Without a tracer every helper here takes a fast path
/// (no span, no header parsing), so a process without tracing pays nothing for it.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Share of new traces sampled when `OTEL_TRACES_SAMPLER_ARG` is not set.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// Who is emitting: the resource attributes of every span and the labels of `build_info`.
#[derive(Clone, Debug)]
pub struct Identity {
    /// `service.name`: `node`, `paxos`, `testbed`, `prober`, ...
    pub service: &'static str,
    /// `service.instance.id`: unique per process instance (e.g. `node-1`).
    pub instance: String,
    /// `leader`, `leaderless` or `standalone`.
    pub mode: String,
    /// The node id, or a role such as `front-door`.
    pub node: String,
}

impl Identity {
    /// An identity for `service` on node `node` in `mode`; the instance id is `service-node`.
    pub fn new(service: &'static str, mode: &str, node: &str) -> Identity {
        Identity {
            service,
            instance: format!("{service}-{node}"),
            mode: mode.to_owned(),
            node: node.to_owned(),
        }
    }
}

/// The sample ratio from `OTEL_TRACES_SAMPLER_ARG` (clamped to 0..=1), else the default.
pub fn sample_ratio_from_env() -> f64 {
    std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|r| r.is_finite())
        .map_or(DEFAULT_SAMPLE_RATIO, |r| r.clamp(0.0, 1.0))
}

/// Whether spans should be exported over OTLP (an endpoint is configured).
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The OpenTelemetry context of a `tracing` span, if that span is being sampled. `None` when no
/// tracer is installed or the trace was not sampled: callers then skip their extra spans.
pub fn sampled_context(span: &tracing::Span) -> Option<Context> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    cx.span().span_context().is_sampled().then_some(cx)
}

/// [`sampled_context`] of the current span.
pub fn current_sampled() -> Option<Context> {
    sampled_context(&tracing::Span::current())
}

/// The parent context carried by W3C `traceparent`/`tracestate` headers (empty if none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(headers))
    })
}

/// Writes `cx` as W3C `traceparent`/`tracestate` headers (nothing if `cx` has no valid span).
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut opentelemetry_http::HeaderInjector(headers));
    });
}

/// Headers that carry the current span's trace to the next hop.
pub fn current_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    if !enabled() {
        return headers;
    }
    inject(&tracing::Span::current().context(), &mut headers);
    headers
}

/// The server span of one HTTP request, where the sampling decision is made (head sampling at
/// the edge): a request whose `traceparent` is sampled gets a child span; one whose
/// `traceparent` is not sampled gets none; one without `traceparent` starts a new trace with
/// probability [`sample_ratio`], and otherwise gets none **and** an unsampled `traceparent`
/// written into `headers`, which the proxies and forwarders pass on, so no later hop starts a
/// trace of its own for it. Unsampled requests thus never touch the OpenTelemetry layer: they pay
/// a header lookup and a random number. The span is named `METHOD route` and records the trace
/// id, so log lines inside the request can be correlated with the trace. Without a tracer: no
/// span, nothing written.
pub fn http_server_span(method: &str, route: &str, headers: &mut http::HeaderMap) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let parent = extract(headers);
    let remote = parent.span().span_context().clone();
    if remote.is_valid() && !remote.is_sampled() {
        return tracing::Span::none();
    }
    if !remote.is_valid() {
        let ids = opentelemetry_sdk::trace::RandomIdGenerator::default();
        let trace_id = ids.new_trace_id();
        let low = u128::from_be_bytes(trace_id.to_bytes()) as u64;
        if (low as f64) >= sample_ratio() * u64::MAX as f64 {
            let traceparent = format!("00-{trace_id}-{}-00", ids.new_span_id());
            if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
                headers.insert("traceparent", value);
            }
            return tracing::Span::none();
        }
    }
    let span = tracing::info_span!(
        "http.server",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if remote.is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// A span for one hop that carries several requests' work (a batch): parented to the first
/// sampled context, linked to the rest. `None` (no span) when none of them is sampled.
pub fn batch_span<'a>(
    name: &'static str,
    contexts: impl IntoIterator<Item = &'a Context>,
) -> Option<tracing::Span> {
    let mut contexts = contexts.into_iter();
    let parent = contexts.next()?;
    let span = tracing::info_span!("batch", otel.name = name, links = tracing::field::Empty);
    let _ = span.set_parent(parent.clone());
    let mut links = 0usize;
    for cx in contexts {
        span.add_link(cx.span().span_context().clone());
        links += 1;
    }
    if links > 0 {
        span.record("links", links);
    }
    Some(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsampled_requests_get_no_span_and_pass_the_decision_on() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        set_enabled(0.0);
        let mut headers = http::HeaderMap::new();
        let span = http_server_span("GET", "/x", &mut headers);
        assert!(span.is_none(), "ratio 0: not sampled, no span");
        let written = headers["traceparent"].to_str().unwrap().to_owned();
        assert!(
            written.starts_with("00-") && written.ends_with("-00"),
            "{written}"
        );
        assert!(!extract(&headers).span().span_context().is_sampled());
        // The next hop sees the unsampled decision and makes no span either, writing nothing.
        let before = headers.clone();
        assert!(http_server_span("GET", "/x", &mut headers).is_none());
        assert_eq!(headers, before);
        assert!(current_sampled().is_none());
        assert!(current_headers().is_empty());
    }
}
