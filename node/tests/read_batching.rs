//! A read takes a read point first: in leader mode paxos's `POST /local/read_index`, in
//! leaderless mode a barrier through the log. Reads that wait together share one; a read that
//! arrives while one is being taken waits for the next, so its read point still covers
//! everything decided before it began.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use node::cluster::ClusterLog;
use node::log::Log;
use node::store::{EmbeddedStore, Store, StoreOptions};
use paxos::wire::{EntriesReply, ReadIndexReply};
use tokio_util::sync::CancellationToken;

/// A paxos leader whose read points take 200 ms each; counts the calls.
async fn slow_reads(calls: Arc<AtomicUsize>) -> String {
    async fn read_index(State(calls): State<Arc<AtomicUsize>>) -> Vec<u8> {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        postcard::to_stdvec(&ReadIndexReply::Ready { index: 0 }).unwrap()
    }
    async fn entries() -> Vec<u8> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        postcard::to_stdvec(&EntriesReply::Entries(Vec::new())).unwrap()
    }
    let app = Router::new()
        .route("/local/read_index", post(read_index))
        .route("/local/entries", get(entries))
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn leader_node(
    paxos_url: String,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Arc<ClusterLog> {
    node_in(paxos::Mode::Leader, paxos_url, dir, shutdown).await
}

async fn node_in(
    mode: paxos::Mode,
    paxos_url: String,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Arc<ClusterLog> {
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_in_dir(dir, StoreOptions::default()).unwrap());
    let options = common::cluster_options(mode, paxos_url);
    ClusterLog::start(options, store, shutdown.clone(), CancellationToken::new())
        .await
        .unwrap()
}

/// `n` reads at once; every one succeeds within 20 s.
async fn read_together(log: &Arc<ClusterLog>, n: usize) {
    let reads: Vec<_> = (0..n)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { log.read_barrier().await })
        })
        .collect();
    for read in reads {
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("answered")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_together_share_one_read_point_call() {
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let calls = Arc::new(AtomicUsize::new(0));
    let dir = tempfile::tempdir().unwrap();
    let log = leader_node(slow_reads(calls.clone()).await, dir.path(), &shutdown).await;

    // One read first: its call is out for 200 ms.
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.read_barrier().await }
    });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A read that begins now must not be answered by that call.
    let second = tokio::spawn({
        let log = log.clone();
        async move { log.read_barrier().await }
    });
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a later read, a later call"
    );

    // 60 reads at once: a handful of calls, not 60.
    calls.store(0, Ordering::SeqCst);
    read_together(&log, 60).await;
    let made = calls.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&made),
        "{made} read-point calls for 60 reads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_reads_waiting_together_share_one_barrier() {
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let dir = tempfile::tempdir().unwrap();
    let proposed = common::StandIn::default();
    let paxos_url = common::older_paxos(proposed.clone(), Duration::from_millis(200)).await;
    let log = node_in(paxos::Mode::Leaderless, paxos_url, dir.path(), &shutdown).await;
    read_together(&log, 60).await;
    let barriers = proposed.lock().unwrap().len();
    assert!(
        (1..=8).contains(&barriers),
        "{barriers} barriers for 60 reads"
    );
}
