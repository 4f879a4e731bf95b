//! One client request is one trace across every hop: a follower node forwards to the leader
//! node, which proposes to its paxos process, which runs the Paxos round with its peers, and the
//! leader node applies the decided slot. Three node+paxos pairs run in this process (so one
//! in-memory exporter sees every span); the assertions check the trace id and each parent link.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tracing-test-token";

struct Pair {
    public_url: String,
    paxos_url: String,
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

/// Starts N node+paxos pairs in this process, leader mode.
async fn start_cluster(dir: &std::path::Path, shutdown: &CancellationToken) -> Vec<Pair> {
    let n = 3;
    let mut paxos_listeners = Vec::new();
    let mut public_listeners = Vec::new();
    let mut internal_listeners = Vec::new();
    for _ in 0..n {
        paxos_listeners.push(bind().await);
        public_listeners.push(bind().await);
        internal_listeners.push(bind().await);
    }
    let paxos_urls: Vec<String> = paxos_listeners.iter().map(|(_, u)| u.clone()).collect();
    let public_urls: Vec<String> = public_listeners.iter().map(|(_, u)| u.clone()).collect();
    let mut pairs = Vec::new();
    let listeners = paxos_listeners
        .into_iter()
        .zip(public_listeners)
        .zip(internal_listeners);
    for (id, (((paxos, paxos_url), (public, public_url)), (internal, _))) in listeners.enumerate() {
        let cli = paxos::runtime::Cli::try_parse_from([
            "paxos".to_owned(),
            format!("--id={id}"),
            format!("--peers={}", paxos_urls.join(",")),
            "--mode=leader".to_owned(),
            "--initial-cluster-state=new".to_owned(),
            format!("--data-dir={}", dir.join(format!("paxos-{id}")).display()),
        ])
        .expect("paxos flags");
        let cfg = cli.into_config(TOKEN.to_owned()).expect("paxos config");
        tokio::spawn(paxos::runtime::run(cfg, paxos, None, shutdown.clone()));
        let config = node::config::Config::try_parse_from([
            "node".to_owned(),
            format!("--node-id={id}"),
            "--mode=leader".to_owned(),
            format!("--paxos-url={paxos_url}"),
            format!("--peers-public={}", public_urls.join(",")),
            format!("--data-dir={}", dir.join(format!("node-{id}")).display()),
        ])
        .expect("node flags");
        let stop = shutdown.clone();
        tokio::spawn(node::server::run(
            config,
            TOKEN.to_owned(),
            public,
            internal,
            None,
            async move { stop.cancelled().await },
        ));
        pairs.push(Pair {
            public_url,
            paxos_url,
        });
    }
    pairs
}

/// The id of the leader once every node knows it.
async fn wait_for_leader(client: &reqwest::Client, pairs: &[Pair]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut ready = 0;
        for pair in pairs {
            let ok = client
                .get(format!("{}/readyz", pair.public_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            ready += usize::from(ok);
        }
        if ready == pairs.len() {
            let status: serde_json::Value = client
                .get(format!("{}/status", pairs[0].paxos_url))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("status")
                .json()
                .await
                .expect("status json");
            if let Some(leader) = status["leader"].as_u64() {
                return leader as u32;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader within 20 s");
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_is_one_trace_across_node_paxos_and_peers() {
    let exporter = InMemorySpanExporter::default();
    let identity = telemetry::Identity::new("cluster-in-one-process", "leader", "all");
    let guard = telemetry::init_with_exporter(
        &identity,
        telemetry::LogFormat::Human,
        exporter.clone(),
        1.0,
    );
    assert!(guard.tracing_enabled(), "the test tracer was installed");
    let dir = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let pairs = start_cluster(dir.path(), &shutdown).await;
    let client = reqwest::Client::new();
    let leader = wait_for_leader(&client, &pairs).await;
    let follower = (leader as usize + 1) % pairs.len();

    let account: serde_json::Value = client
        .post(format!(
            "{}/open_account",
            pairs[leader as usize].public_url
        ))
        .send()
        .await
        .expect("open")
        .json()
        .await
        .expect("open json");
    let account = account["account_id"]
        .as_str()
        .expect("account id")
        .to_owned();
    exporter.reset();

    // The traced request: a deposit sent to a follower, which forwards it to the leader.
    let reply = client
        .post(format!("{}/deposit_money", pairs[follower].public_url))
        .json(&serde_json::json!({"account_id": account, "amount": 5}))
        .send()
        .await
        .expect("deposit");
    assert_eq!(reply.status(), 200, "{:?}", reply.text().await);

    // Spans end as their work ends (the round's span when every command of the batch is
    // decided, peers' spans when their handlers return): wait until the whole chain is there.
    let root_name = "POST /deposit_money";
    let deadline = Instant::now() + Duration::from_secs(10);
    let (trace_id, spans) = loop {
        guard.flush();
        let all = exporter.get_finished_spans().expect("spans");
        let root = all.iter().find(|s| {
            s.name == root_name && s.parent_span_id == opentelemetry::trace::SpanId::INVALID
        });
        if let Some(root) = root {
            let trace_id = root.span_context.trace_id();
            let spans: Vec<SpanData> = all
                .iter()
                .filter(|s| s.span_context.trace_id() == trace_id)
                .cloned()
                .collect();
            let complete = ["node.apply", "paxos.peer_receive", "paxos.commit"]
                .iter()
                .all(|name| !named(&spans, name).is_empty());
            if complete || Instant::now() > deadline {
                break (trace_id, spans);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no root span for the deposit: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_id: HashMap<_, _> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let parent_of = |span: &SpanData| by_id.get(&span.parent_span_id).map(|p| p.name.to_string());
    let names: Vec<String> = spans.iter().map(|s| s.name.to_string()).collect();

    // Follower and leader both serve the deposit: two server spans, the leader's a child of the
    // follower's (forwarding carries traceparent).
    let servers = named(&spans, root_name);
    assert_eq!(
        servers.len(),
        2,
        "follower and leader server spans: {names:?}"
    );
    let forwarded = servers
        .iter()
        .find(|s| s.parent_span_id != opentelemetry::trace::SpanId::INVALID)
        .expect("the leader's span has a parent");
    assert_eq!(parent_of(forwarded).as_deref(), Some(root_name));
    // Trace ids are recorded on the server span, for log correlation.
    assert_eq!(
        attribute(forwarded, "trace_id"),
        Some(trace_id.to_string()),
        "trace_id field on the server span"
    );

    let propose = named(&spans, "node.propose_batch");
    assert_eq!(propose.len(), 1, "{names:?}");
    assert_eq!(propose[0].parent_span_id, forwarded.span_context.span_id());

    let paxos_propose = named(&spans, "POST /local/propose");
    assert_eq!(paxos_propose.len(), 1, "{names:?}");
    assert_eq!(
        parent_of(paxos_propose[0]).as_deref(),
        Some("node.propose_batch")
    );

    let commit = named(&spans, "paxos.commit");
    assert_eq!(commit.len(), 1, "{names:?}");
    assert_eq!(parent_of(commit[0]).as_deref(), Some("POST /local/propose"));

    let sends = named(&spans, "paxos.peer_send");
    assert!(
        !sends.is_empty(),
        "accepts of the traced slot go out: {names:?}"
    );
    for send in &sends {
        assert_eq!(parent_of(send).as_deref(), Some("paxos.commit"));
    }
    let received = named(&spans, "paxos.peer_receive");
    assert!(
        !received.is_empty(),
        "peers receive the traced accepts: {names:?}"
    );
    for receive in &received {
        assert_eq!(parent_of(receive).as_deref(), Some("paxos.peer_send"));
    }

    let applies = named(&spans, "node.apply");
    assert!(!applies.is_empty(), "{names:?}");
    assert!(
        applies
            .iter()
            .any(|a| a.parent_span_id == forwarded.span_context.span_id()),
        "the leader's apply of the slot is a child of its request span: {names:?}"
    );
    for span in &spans {
        assert_eq!(span.span_context.trace_id(), trace_id);
    }
    shutdown.cancel();
    guard.shutdown().await;
}
