//! "503, retry later" only where nothing can have been applied (review item 4).
//!
//! A client without an `Idempotency-Key` that follows a plain 503's advice applies its command
//! again, so every failure after the command may have reached the log must be
//! `outcome_unknown` ("retry with the same key to learn the outcome"), and only failures where
//! nothing was sent (no connection, an explicit refusal, a command handed back undecided) may be
//! `unavailable`. Each path is driven against a stand-in for the paxos process or the leader.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use node::api::AppState;
use node::cluster::{ClusterLog, ClusterOptions};
use node::command::{AccountId, Command, Operation, Outcome};
use node::log::{Log, Route, SubmitError};
use node::store::{EmbeddedStore, Store, StoreOptions};
use paxos::wire::{EntriesReply, ProposeReply};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A port where nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A server that reads each request and hangs up without answering (a crash mid-request).
async fn hangs_up() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
                drop(socket);
            });
        }
    });
    addr
}

/// A stand-in paxos process: `/local/propose` answers with `propose`, `/local/entries` with no
/// entries (after a pause, like a long poll), `/status` with nothing useful.
async fn fake_paxos(propose: (StatusCode, Vec<u8>)) -> SocketAddr {
    let entries = postcard::to_stdvec(&EntriesReply::Entries(Vec::new())).unwrap();
    let app = Router::new()
        .route(
            "/local/propose",
            post(move || {
                let (status, body) = propose.clone();
                async move { (status, body) }
            }),
        )
        .route(
            "/local/entries",
            get(move || {
                let entries = entries.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    entries
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn replies(reply: ProposeReply) -> (StatusCode, Vec<u8>) {
    (StatusCode::OK, postcard::to_stdvec(&vec![reply]).unwrap())
}

/// Submits one deposit through a `ClusterLog` whose paxos process is at `paxos`.
async fn submit_via(paxos: SocketAddr) -> Result<Outcome, SubmitError> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let shutdown = CancellationToken::new();
    let options = ClusterOptions {
        node_id: 0,
        mode: paxos::Mode::Leaderless,
        paxos_url: format!("http://{paxos}"),
        peers_public: vec!["http://127.0.0.1:1".into()],
        token: common::TOKEN.into(),
        max_waiting: 16,
        proposals_in_flight: 1,
        propose_linger: std::time::Duration::from_millis(2),
        compact_every: 10_000,
    };
    let log = ClusterLog::start(options, store, shutdown.clone(), CancellationToken::new())
        .await
        .unwrap();
    let command = Command {
        op: Operation::Deposit {
            account_id: AccountId::random(),
            amount: node::money::Money::from_cents(100),
        },
        idempotency_key: None,
        request_id: None,
    };
    let result = tokio::time::timeout(Duration::from_secs(20), log.submit(command))
        .await
        .expect("an answer in time");
    shutdown.cancel();
    result
}

#[tokio::test]
async fn paxos_unreachable_is_unavailable() {
    assert_eq!(
        submit_via(closed_port().await).await,
        Err(SubmitError::Unavailable)
    );
}

#[tokio::test]
async fn paxos_refusing_the_call_is_unavailable() {
    let paxos = fake_paxos((StatusCode::SERVICE_UNAVAILABLE, b"busy".to_vec())).await;
    assert_eq!(submit_via(paxos).await, Err(SubmitError::Unavailable));
}

#[tokio::test]
async fn a_command_handed_back_undecided_is_unavailable() {
    let paxos = fake_paxos(replies(ProposeReply::Dropped)).await;
    assert_eq!(submit_via(paxos).await, Err(SubmitError::Unavailable));
}

#[tokio::test]
async fn a_command_whose_fate_paxos_lost_is_outcome_unknown() {
    let paxos = fake_paxos(replies(ProposeReply::OutcomeUnknown)).await;
    assert_eq!(submit_via(paxos).await, Err(SubmitError::OutcomeUnknown));
}

#[tokio::test]
async fn paxos_hanging_up_after_the_request_is_outcome_unknown() {
    assert_eq!(
        submit_via(hangs_up().await).await,
        Err(SubmitError::OutcomeUnknown)
    );
}

#[tokio::test]
async fn a_garbled_answer_from_paxos_is_outcome_unknown() {
    let paxos = fake_paxos((StatusCode::OK, b"\xff\xff not postcard".to_vec())).await;
    assert_eq!(submit_via(paxos).await, Err(SubmitError::OutcomeUnknown));
}

/// A follower whose leader is at `leader`.
struct Follower {
    leader: String,
}

#[async_trait::async_trait]
impl Log for Follower {
    async fn submit(&self, _command: Command) -> Result<Outcome, SubmitError> {
        unreachable!("a follower forwards writes")
    }
    async fn read_barrier(&self) -> Result<(), SubmitError> {
        Ok(())
    }
    fn is_healthy(&self) -> bool {
        true
    }
    fn is_alive(&self) -> bool {
        true
    }
    fn route(&self) -> Route {
        Route::Forward(self.leader.clone())
    }
}

async fn via_follower(leader: SocketAddr, method: &str) -> (StatusCode, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap();
    let node = common::TestNode::with_app(
        AppState {
            store: Arc::new(store.clone()),
            log: Arc::new(Follower {
                leader: format!("http://{leader}"),
            }),
            forwarder: reqwest::Client::new(),
            request_timeout: Duration::from_secs(2),
            max_body_bytes: 16 * 1024,
        },
        store,
        dir,
    );
    let account = AccountId::random();
    let request = if method == "GET" {
        common::get(&format!("/check_account?account_id={account}"))
    } else {
        common::json_post(
            "/deposit_money",
            &serde_json::json!({"account_id": account.to_string(), "amount": 1}).to_string(),
            None,
        )
    };
    node.call(request).await
}

#[tokio::test]
async fn a_write_forwarded_to_a_leader_that_hangs_up_is_outcome_unknown() {
    let (status, body) = via_follower(hangs_up().await, "POST").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "outcome_unknown", "{body}");
}

#[tokio::test]
async fn a_write_forwarded_to_an_unreachable_leader_is_unavailable() {
    let (status, body) = via_follower(closed_port().await, "POST").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "unavailable", "{body}");
}

#[tokio::test]
async fn a_read_forwarded_to_a_leader_that_hangs_up_is_unavailable() {
    let (status, body) = via_follower(hangs_up().await, "GET").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body["code"], "unavailable",
        "a read is always safe to retry: {body}"
    );
}
