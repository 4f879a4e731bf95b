//! A minimal OTLP/gRPC trace receiver for machines without a collector: it accepts every export,
//! counts spans per service, and prints the counts every 5 s. Used to measure the cost of
//! tracing (`scripts/bench-telemetry`) and to see that traces flow.
//!
//! `cargo run --release -p testbed --example otlp_sink -- 127.0.0.1:4317`, then start the
//! cluster with `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

#[derive(Default)]
struct Counts {
    spans: BTreeMap<String, u64>,
    exports: u64,
}

struct Sink(Arc<Mutex<Counts>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut counts = self.0.lock().expect("counts lock");
        counts.exports += 1;
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "unknown".to_owned());
            let spans: usize = resource_spans
                .scope_spans
                .iter()
                .map(|s| s.spans.len())
                .sum();
            *counts.spans.entry(service).or_default() += spans as u64;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("otlp sink listening on http://{}", listener.local_addr()?);
    let counts = Arc::new(Mutex::new(Counts::default()));
    let report = counts.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            let counts = report.lock().expect("counts lock");
            println!(
                "exports: {}  spans by service: {:?}",
                counts.exports, counts.spans
            );
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink(counts)))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await?;
    Ok(())
}
