//! The Prometheus kill switch: `chaos run --kill-switch-query` injects nothing while the query
//! returns a non-zero sample, resumes when it returns none, and holds while Prometheus cannot be
//! asked. Against a stub front door (`/_testbed/cluster`) and a stub Prometheus HTTP API; the
//! runs are dry runs, so nothing is signalled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Query;
use clap::Parser as _;
use serde_json::{Value, json};

struct Stub {
    url: String,
    firing: Arc<AtomicBool>,
    queries: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

async fn stub() -> Stub {
    let dir = tempfile::tempdir().unwrap();
    let firing = Arc::new(AtomicBool::new(true));
    let queries = Arc::new(Mutex::new(Vec::new()));
    let node = |id: u32| {
        json!({"id": id, "role": "follower", "ready": true, "internal_url": "", "paxos_url": "",
               "node_pid": 0, "paxos_pid": 0})
    };
    let cluster = json!({"mode": "leader", "leader": 0, "data_dir": dir.path(),
                         "nodes": [node(0), node(1), node(2)]});
    let (on, seen) = (firing.clone(), queries.clone());
    let app = axum::Router::new()
        .route(
            "/_testbed/cluster",
            axum::routing::get(move || async move { axum::Json(cluster) }),
        )
        .route(
            "/api/v1/query",
            axum::routing::get(
                move |Query(params): Query<std::collections::HashMap<String, String>>| async move {
                    seen.lock().unwrap().push(params["query"].clone());
                    let result = match on.load(Ordering::SeqCst) {
                        true => json!([{"metric": {"alertname": "BankAvailabilityBudgetBurn"}, "value": [1.0, "1"]}]),
                        false => json!([]),
                    };
                    axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Stub {
        url,
        firing,
        queries,
        _dir: dir,
    }
}

fn run_args(cluster: &str, prometheus: &str) -> chaos::RunArgs {
    let line = [
        "chaos",
        "run",
        "--cluster",
        cluster,
        "--faults",
        "kill",
        "--every",
        "200ms",
        "--min-age",
        "0s",
        "--dry-run",
        "--for",
        "4s",
        "--kill-switch-query",
        r#"ALERTS{alertstate="firing"}"#,
        "--prometheus",
        prometheus,
    ];
    match chaos::Cli::parse_from(line).command {
        chaos::Command::Run(args) => args,
        other => panic!("{other:?}"),
    }
}

async fn status(url: &str) -> Value {
    reqwest::get(format!("{url}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_firing_query_holds_chaos_and_its_end_releases_it() {
    let stub = stub().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let chaos_url = format!("http://{}", listener.local_addr().unwrap());
    let run = tokio::spawn(chaos::run(
        run_args(&stub.url, &stub.url),
        listener,
        Default::default(),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = status(&chaos_url).await;
    assert_eq!(held["kill_switch"]["query"], true, "{held:#}");
    assert_eq!(
        held["faults"].as_array().unwrap().len(),
        0,
        "decided while held: {held:#}"
    );
    stub.firing.store(false, Ordering::SeqCst);
    let last = run.await.unwrap().unwrap();
    assert_eq!(last["kill_switch"]["query"], false, "{last:#}");
    let decisions = last["faults"].as_array().unwrap();
    assert!(decisions.len() >= 3, "released: it decides again: {last:#}");
    assert!(decisions.iter().all(|d| d["dry_run"] == true));
    let queries = stub.queries.lock().unwrap().clone();
    assert!(queries.len() >= 3, "asked about every second: {queries:?}");
    assert!(
        queries
            .iter()
            .all(|q| q == r#"ALERTS{alertstate="firing"}"#),
        "{queries:?}"
    );
}

#[tokio::test]
async fn chaos_holds_while_prometheus_cannot_be_asked() {
    let stub = stub().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let last = chaos::run(run_args(&stub.url, &closed), listener, Default::default())
        .await
        .unwrap();
    assert_eq!(last["kill_switch"]["query"], true, "{last:#}");
    assert_eq!(last["faults"].as_array().unwrap().len(), 0, "{last:#}");
}
