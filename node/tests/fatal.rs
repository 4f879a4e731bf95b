//! A fatal store error ends the node (review item 5): `/healthz` fails at once and the process
//! exits non-zero, so that its supervisor (the testbed, a kubelet) restarts it.

mod common;
#[path = "../../paxos/tests/support/small_disk.rs"]
mod small_disk;

use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use node::api::AppState;
use node::bank::IdempotencyRecord;
use node::cluster::{ClusterLog, ClusterOptions};
use node::command::{AccountId, Command, Entry, IdempotencyKey, Operation, Outcome};
use node::log::Log;
use node::money::Money;
use node::store::{EmbeddedStore, Snapshot, Store, StoreError, StoreOptions, Summary};
use paxos::Value;
use paxos::wire::EntriesReply;
use tokio_util::sync::CancellationToken;

/// An embedded store whose writes fail, as a broken disk's would.
struct FailingStore(EmbeddedStore);

#[async_trait::async_trait]
impl Store for FailingStore {
    fn backend(&self) -> &'static str {
        "failing"
    }
    async fn apply(&self, _: &[Entry]) -> Result<Vec<Option<Vec<Outcome>>>, StoreError> {
        Err(StoreError::Fatal(
            "injected: the disk refuses writes".into(),
        ))
    }
    async fn summary(&self) -> Result<Summary, StoreError> {
        self.0.summary().await
    }
    async fn balance(&self, id: AccountId) -> Result<Option<Money>, StoreError> {
        self.0.balance(id).await
    }
    async fn accounts(
        &self,
        after: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, Money)>, StoreError> {
        self.0.accounts(after, limit).await
    }
    async fn idempotency(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.0.idempotency(key).await
    }
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.0.snapshot().await
    }
    async fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        Err(StoreError::Fatal(format!(
            "injected: cannot install snapshot {}",
            snapshot.applied_index
        )))
    }
}

/// A stand-in paxos process whose log holds one decided deposit.
async fn paxos_with_one_entry() -> String {
    let command = Command {
        op: Operation::OpenAccount {
            account_id: AccountId::random(),
        },
        idempotency_key: None,
        request_id: None,
    };
    let value = Value::Batch(Arc::new(vec![serde_json::to_vec(&command).unwrap().into()]));
    let entries = postcard::to_stdvec(&EntriesReply::Entries(vec![(1, value)])).unwrap();
    let app = Router::new().route(
        "/local/entries",
        get(move || {
            let entries = entries.clone();
            async move { entries }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_store_that_fails_its_writes_fails_healthz_and_signals_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap();
    let store: Arc<dyn Store> = Arc::new(FailingStore(embedded.clone()));
    let (shutdown, fatal) = (CancellationToken::new(), CancellationToken::new());
    let _stop = shutdown.clone().drop_guard();
    let options = ClusterOptions {
        max_waiting: 16,
        ..common::cluster_options(paxos::Mode::Leaderless, paxos_with_one_entry().await)
    };
    let log = ClusterLog::start(options, store.clone(), shutdown.clone(), fatal.clone())
        .await
        .unwrap();
    let node = common::TestNode::with_app(
        AppState {
            store,
            log: log.clone(),
            forwarder: reqwest::Client::new(),
            request_timeout: Duration::from_secs(2),
            max_body_bytes: 16 * 1024,
        },
        embedded,
        dir,
    );
    tokio::time::timeout(Duration::from_secs(10), fatal.cancelled())
        .await
        .expect("the applier's fatal store error asks the process to exit");
    assert!(!log.is_alive());
    let (status, body) = node.call(common::get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_ends_the_node_process_with_a_clear_error() {
    let Some(disk) = small_disk::SmallDisk::mount(8) else {
        return;
    };
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (public, internal) = (port(0), port(1));
    let mut child = Process::new(env!("CARGO_BIN_EXE_node"))
        .arg(format!("--listen=127.0.0.1:{public}"))
        .arg(format!("--internal-listen=127.0.0.1:{internal}"))
        .arg(format!("--data-dir={}", disk.path.join("node").display()))
        .env("BANK_CLUSTER_TOKEN", common::TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{public}");
    let client = reqwest::Client::new();
    let up = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(up.elapsed() < Duration::from_secs(20), "node did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, stderr) = small_disk::fill_until_exit(&disk, &mut child, async || {
        let _ = client
            .post(format!("{base}/open_account"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
    })
    .await;
    assert!(!status.success(), "a non-zero exit: {status}");
    assert!(
        stderr.contains("fatal store error"),
        "the last words name the store: {stderr}"
    );
}
