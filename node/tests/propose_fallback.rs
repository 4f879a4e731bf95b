//! A node proposes on paxos's propose stream (`GET /local/propose/stream`); a paxos process that
//! does not serve it (an older version during a rolling upgrade) still gets every proposal, by
//! `POST /local/propose`, and the node's writes go through.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use node::cluster::{ClusterLog, ClusterOptions};
use node::command::{AccountId, Command, Operation, Outcome};
use node::log::Log;
use node::store::{EmbeddedStore, Store, StoreOptions};
use paxos::Value;
use paxos::wire::{EntriesReply, ProposeReply};
use tokio_util::sync::CancellationToken;

/// The log of the stand-in: every command proposed, one slot each, from slot 1.
type StandIn = Arc<Mutex<Vec<Bytes>>>;

#[derive(serde::Deserialize)]
struct From {
    from: u64,
}

/// A paxos process of the version before the propose stream: `POST /local/propose` decides
/// each command in the next slot, `GET /local/entries` long-polls them; nothing else is served.
async fn older_paxos(log: StandIn) -> String {
    async fn propose(State(log): State<StandIn>, body: Bytes) -> Vec<u8> {
        let commands: Vec<Bytes> = postcard::from_bytes(&body).unwrap();
        let mut log = log.lock().unwrap();
        let replies: Vec<ProposeReply> = commands
            .into_iter()
            .map(|command| {
                log.push(command);
                ProposeReply::Decided {
                    slot: log.len() as u64,
                }
            })
            .collect();
        postcard::to_stdvec(&replies).unwrap()
    }
    async fn entries(State(log): State<StandIn>, Query(q): Query<From>) -> Vec<u8> {
        for _ in 0..50 {
            let found: Vec<(u64, Value)> = {
                let log = log.lock().unwrap();
                (q.from.max(1)..=log.len() as u64)
                    .map(|slot| {
                        let command = log[slot as usize - 1].clone();
                        (slot, Value::Batch(Arc::new(vec![command])))
                    })
                    .collect()
            };
            if !found.is_empty() {
                return postcard::to_stdvec(&EntriesReply::Entries(found)).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        postcard::to_stdvec(&EntriesReply::Entries(Vec::new())).unwrap()
    }
    let app = Router::new()
        .route("/local/propose", post(propose))
        .route("/local/entries", get(entries))
        .with_state(log);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_a_paxos_without_the_propose_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap());
    let (shutdown, fatal) = (CancellationToken::new(), CancellationToken::new());
    let _stop = shutdown.clone().drop_guard();
    let proposed = StandIn::default();
    let options = ClusterOptions {
        node_id: 0,
        mode: paxos::Mode::Leaderless,
        paxos_url: older_paxos(proposed.clone()).await,
        peers_public: vec!["http://127.0.0.1:1".into()],
        token: common::TOKEN.into(),
        max_waiting: 16,
        compact_every: 10_000,
    };
    let log = ClusterLog::start(options, store.clone(), shutdown.clone(), fatal.clone())
        .await
        .unwrap();
    for n in 1..=3 {
        let account_id = AccountId::random();
        let command = Command {
            op: Operation::OpenAccount { account_id },
            idempotency_key: None,
            request_id: None,
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), log.submit(command))
            .await
            .expect("answered")
            .expect("applied");
        assert!(matches!(outcome, Outcome::Opened { .. }), "{outcome:?}");
        assert_eq!(proposed.lock().unwrap().len(), n, "proposed by POST");
        assert!(store.balance(account_id).await.unwrap().is_some());
    }
    assert!(!fatal.is_cancelled());
}
