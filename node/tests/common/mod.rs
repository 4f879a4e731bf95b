//! Helpers shared by the node's integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use node::api::{self, AppState, InternalState};
use node::log::{LocalLogOptions, spawn_local_log};
use node::store::{EmbeddedStore, Store, StoreOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub const TOKEN: &str = "test-token-0123456789";
/// The read-only scrape token of the test node's internal port.
pub const METRICS_TOKEN: &str = "metrics-token-9876543210";

/// A standalone node in this process: routers over a real embedded store in a temp dir.
pub struct TestNode {
    pub public: Router,
    pub internal: Router,
    pub store: EmbeddedStore,
    pub shutdown: CancellationToken,
    pub _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap();
        let dyn_store: Arc<dyn Store> = Arc::new(store.clone());
        let (log, _writer) = spawn_local_log(
            dyn_store.clone(),
            LocalLogOptions::default(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let app = AppState {
            store: dyn_store,
            log: Arc::new(log),
            forwarder: reqwest::Client::new(),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 16 * 1024,
        };
        TestNode::with_app(app, store, dir)
    }

    /// Routers over `app` (whose store is `store`); `dir` is kept as long as the node.
    pub fn with_app(app: AppState, store: EmbeddedStore, dir: tempfile::TempDir) -> TestNode {
        let shutdown = CancellationToken::new();
        let internal = api::internal_router(InternalState {
            app: app.clone(),
            tokens: plumbing::Tokens::new(TOKEN, Some(METRICS_TOKEN)),
            shutdown: shutdown.clone(),
            metrics: Some(Arc::new(|| "bank_test_metric 1\n".to_owned())),
        });
        TestNode {
            public: api::public_router(app),
            internal,
            store,
            shutdown,
            _dir: dir,
        }
    }

    pub async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.public.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub async fn store_summary(&self) -> node::store::Summary {
        self.store.summary().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(json_post(path, &body.to_string(), None)).await
    }

    pub async fn open(&self) -> String {
        let (status, body) = self.call(json_post("/open_account", "", None)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["account_id"].as_str().unwrap().to_owned()
    }

    pub async fn deposit(&self, account: &str, amount: Value) -> (StatusCode, Value) {
        self.post(
            "/deposit_money",
            serde_json::json!({"account_id": account, "amount": amount}),
        )
        .await
    }

    /// The balance, read exactly from the answer's text (never through a float).
    pub async fn balance_money(&self, account: &str) -> node::money::Money {
        let request = get(&format!("/check_account?account_id={account}"));
        let response = self.public.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        balance_field(&bytes, "balance")
    }

    pub async fn balance(&self, account: &str) -> Value {
        let (status, body) = self
            .call(get(&format!("/check_account?account_id={account}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["balance"].clone()
    }
}

/// The money in `field` of a JSON answer, parsed from its exact text.
pub fn balance_field(body: &[u8], field: &str) -> node::money::Money {
    let fields: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(body).unwrap();
    node::money::Money::parse_balance(fields[field].get()).unwrap()
}

pub fn json_post(path: &str, body: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// A `node` process started from the built binary, on ports the OS picked.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub public_url: String,
    pub internal_url: String,
}

impl NodeProcess {
    /// Starts `node` on `data_dir` and waits for its "ready" line.
    pub fn spawn(data_dir: &std::path::Path) -> NodeProcess {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_node"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("BANK_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the node binary");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut find = |marker: &str| -> String {
            let line = lines
                .next()
                .expect("node exited before it was ready")
                .unwrap();
            let start = line
                .find(marker)
                .unwrap_or_else(|| panic!("unexpected line: {line}"));
            let rest = &line[start + marker.len()..];
            let url = rest.split_whitespace().next().unwrap();
            url.trim_end_matches('/').to_owned()
        };
        let public_url = find("open ");
        let internal_url = find("internal port: ");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        NodeProcess {
            child,
            public_url,
            internal_url,
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log of the stand-in: every command proposed, one slot each, from slot 1.
pub type StandIn = Arc<std::sync::Mutex<Vec<axum::body::Bytes>>>;

#[derive(serde::Deserialize)]
pub struct EntriesFrom {
    pub from: u64,
}

/// The answer of a stand-in's `POST /local/propose`: every command decided, each in the next
/// slot of `log`.
pub fn decide_all(log: &StandIn, commands: Vec<axum::body::Bytes>) -> Vec<u8> {
    let mut log = log.lock().unwrap();
    let replies: Vec<paxos::wire::ProposeReply> = commands
        .into_iter()
        .map(|command| {
            log.push(command);
            paxos::wire::ProposeReply::Decided {
                slot: log.len() as u64,
            }
        })
        .collect();
    postcard::to_stdvec(&replies).unwrap()
}

/// The answer of a stand-in's `GET /local/entries`: `log`'s entries from `from`, long-polled
/// for up to 500 ms.
pub async fn entries_of(log: &StandIn, from: u64) -> Vec<u8> {
    for _ in 0..50 {
        let found: Vec<(u64, paxos::Value)> = {
            let log = log.lock().unwrap();
            (from.max(1)..=log.len() as u64)
                .map(|slot| {
                    let command = log[slot as usize - 1].clone();
                    (slot, paxos::Value::Batch(Arc::new(vec![command])))
                })
                .collect()
        };
        if !found.is_empty() {
            return postcard::to_stdvec(&paxos::wire::EntriesReply::Entries(found)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    postcard::to_stdvec(&paxos::wire::EntriesReply::Entries(Vec::new())).unwrap()
}

/// A paxos process of the version before the propose stream: `POST /local/propose` decides
/// each command in the next slot (answering after `delay`), `GET /local/entries` long-polls
/// them; nothing else is served.
pub async fn older_paxos(log: StandIn, delay: Duration) -> String {
    async fn propose(
        axum::extract::State((log, delay)): axum::extract::State<(StandIn, Duration)>,
        body: axum::body::Bytes,
    ) -> Vec<u8> {
        let commands: Vec<axum::body::Bytes> = postcard::from_bytes(&body).unwrap();
        tokio::time::sleep(delay).await;
        decide_all(&log, commands)
    }
    async fn entries(
        axum::extract::State((log, _)): axum::extract::State<(StandIn, Duration)>,
        axum::extract::Query(q): axum::extract::Query<EntriesFrom>,
    ) -> Vec<u8> {
        entries_of(&log, q.from).await
    }
    let app = Router::new()
        .route("/local/propose", axum::routing::post(propose))
        .route("/local/entries", axum::routing::get(entries))
        .with_state((log, delay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Options of a node in cluster mode whose paxos process is at `paxos_url` (its peers
/// unreachable).
pub fn cluster_options(mode: paxos::Mode, paxos_url: String) -> node::cluster::ClusterOptions {
    node::cluster::ClusterOptions {
        node_id: 0,
        mode,
        paxos_url,
        peers_public: vec!["http://127.0.0.1:1".into()],
        token: TOKEN.into(),
        max_waiting: 256,
        proposals_in_flight: 1,
        propose_linger: std::time::Duration::from_millis(2),
        compact_every: 10_000,
    }
}
