//! Who may call what on a paxos process (review item 7): the cluster token everything, the
//! read-only metrics token `/metrics` and nothing else.

use std::sync::Arc;

use clap::Parser as _;
use paxos::runtime::Cli;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "cluster-token-0123456789";
const METRICS_TOKEN: &str = "metrics-token-0123456789";

#[tokio::test]
async fn the_metrics_token_reads_metrics_only() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_file = dir.path().join("metrics-token");
    std::fs::write(&metrics_file, format!("{METRICS_TOKEN}\n")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = Cli::try_parse_from([
        "paxos".to_owned(),
        "--id=0".to_owned(),
        format!("--peers={url}"),
        "--initial-cluster-state=new".to_owned(),
        format!("--data-dir={}", dir.path().join("paxos").display()),
        format!("--metrics-token-file={}", metrics_file.display()),
    ])
    .unwrap()
    .into_config(TOKEN.to_owned())
    .unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let render: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(|| "paxos_test_metric 1\n".to_owned());
    tokio::spawn(paxos::runtime::run(
        cfg,
        listener,
        Some(render),
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str| {
        client
            .request(method, format!("{url}{path}"))
            .bearer_auth(token)
            .send()
    };
    let mut metrics = None;
    for _ in 0..100 {
        if let Ok(reply) = call(reqwest::Method::GET, "/metrics", METRICS_TOKEN).await {
            metrics = Some(reply);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let metrics = metrics.expect("paxos answers");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("paxos_test_metric"));
    let with_cluster_token = call(reqwest::Method::GET, "/metrics", TOKEN).await.unwrap();
    assert_eq!(with_cluster_token.status(), 200);
    for (method, path) in [
        (reqwest::Method::GET, "/status"),
        (reqwest::Method::POST, "/local/propose"),
        (reqwest::Method::POST, "/peer/messages"),
        (reqwest::Method::GET, "/peer/stream"),
        (reqwest::Method::POST, "/shutdown"),
    ] {
        let reply = call(method.clone(), path, METRICS_TOKEN).await.unwrap();
        assert_eq!(
            reply.status(),
            401,
            "{method} {path} with the metrics token"
        );
        // The one 401 of every process: the bank's error body, code `unauthorized`.
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert_eq!(body["error"], plumbing::auth::UNAUTHORIZED_TEXT);
    }
}
