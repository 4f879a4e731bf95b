//! Traces leave every process over real OTLP/gRPC: a `testbed up` cluster exports to a
//! collector stand-in (the OTLP trace service, served here), and one deposit through the front
//! door arrives as one trace with spans from the front door, the nodes and the paxos processes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// (service.name, trace id, span name) of every span received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>, String)>>>;

struct Sink(Received);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
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
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span.trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_exports_its_spans_over_otlp_as_one_trace() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(received.clone())))
            .serve_with_incoming(incoming),
    );
    let tb = Testbed::up_binary(
        "leader",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER_ARG", "1.0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    assert!(
        tb.printed
            .iter()
            .any(|l| l.starts_with("traces: exported over OTLP")),
        "testbed says where traces go: {:?}",
        tb.printed
    );
    let account = open_account(&tb.client, &tb.url).await;
    assert_eq!(
        deposit(&tb.client, &tb.url, &account, "2").await.status,
        200
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Group what arrived by trace: the deposit's trace starts at the front door and must
        // reach a node and the paxos processes.
        let by_trace: HashMap<Vec<u8>, BTreeSet<(String, String)>> = {
            let received = received.lock().unwrap();
            let mut by_trace: HashMap<_, BTreeSet<_>> = HashMap::new();
            for (service, trace, name) in received.iter() {
                by_trace
                    .entry(trace.clone())
                    .or_default()
                    .insert((service.clone(), name.clone()));
            }
            by_trace
        };
        let complete = by_trace.values().find(|spans| {
            [
                ("testbed", "POST /deposit_money"),
                ("node", "POST /deposit_money"),
                ("node", "node.propose_batch"),
                ("paxos", "POST /local/propose"),
                ("paxos", "paxos.commit"),
                ("paxos", "paxos.peer_receive"),
                ("node", "node.apply"),
            ]
            .iter()
            .all(|(service, name)| spans.contains(&(service.to_string(), name.to_string())))
        });
        if complete.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no complete deposit trace arrived within 30 s; traces: {by_trace:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
