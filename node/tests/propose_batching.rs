//! A node keeps at most `proposals_in_flight` proposal batches out to paxos, each answered once
//! its commands are decided; commands that arrive while every batch is out wait and leave
//! together in the next one, so batches grow with the load instead of the calls.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use node::cluster::{ClusterLog, ClusterOptions};
use node::command::{AccountId, Command, Operation};
use node::log::Log;
use node::store::{EmbeddedStore, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

/// What the stand-in paxos saw: proposal calls, the most out at once, and each call's size.
#[derive(Default)]
struct Calls {
    made: AtomicUsize,
    out: AtomicUsize,
    most_out: AtomicUsize,
    sizes: std::sync::Mutex<Vec<usize>>,
    log: common::StandIn,
}

/// A paxos process without the propose stream (the node then proposes by `POST
/// /local/propose`) that decides each call's commands 200 ms after it came.
async fn slow_paxos(calls: Arc<Calls>) -> String {
    async fn propose(State(calls): State<Arc<Calls>>, body: axum::body::Bytes) -> Vec<u8> {
        let commands: Vec<axum::body::Bytes> = postcard::from_bytes(&body).unwrap();
        calls.made.fetch_add(1, Ordering::SeqCst);
        let out = calls.out.fetch_add(1, Ordering::SeqCst) + 1;
        calls.most_out.fetch_max(out, Ordering::SeqCst);
        calls.sizes.lock().unwrap().push(commands.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answer = common::decide_all(&calls.log, commands);
        calls.out.fetch_sub(1, Ordering::SeqCst);
        answer
    }
    async fn entries(
        State(calls): State<Arc<Calls>>,
        axum::extract::Query(q): axum::extract::Query<common::EntriesFrom>,
    ) -> Vec<u8> {
        common::entries_of(&calls.log, q.from).await
    }
    let app = Router::new()
        .route("/local/propose", axum::routing::post(propose))
        .route("/local/entries", axum::routing::get(entries))
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn open_account() -> Command {
    Command {
        op: Operation::OpenAccount {
            account_id: AccountId::random(),
        },
        idempotency_key: None,
        request_id: None,
    }
}

/// One command, then 3 waves of 10 while its batch is out (50 ms apart); every command is
/// applied. What the stand-in saw.
async fn waves(proposals_in_flight: usize) -> Arc<Calls> {
    // Leader mode's default linger: these batches grow while one is out, not by lingering.
    let (log, calls, _dir, _stop) =
        node_proposing(proposals_in_flight, Duration::from_millis(2)).await;
    let mut submitted = vec![submit(&log)];
    first_call(&calls).await;
    for _ in 0..3 {
        submitted.extend((0..10).map(|_| submit(&log)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answered(submitted).await;
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_batch_out_the_commands_that_arrive_meanwhile_leave_together() {
    let calls = waves(1).await;
    assert_eq!(
        calls.most_out.load(Ordering::SeqCst),
        1,
        "one call out at a time"
    );
    let sizes = calls.sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 31);
    // The 30 arrive within about 110 ms of the first call's 200: they leave together (a third
    // call only if the machine delayed one of them past the first call's answer).
    assert!(
        sizes[0] == 1 && sizes.len() <= 3 && sizes[1] >= 20,
        "calls of {sizes:?} commands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_limit_lets_the_waves_leave_while_a_batch_is_out() {
    let calls = waves(4).await;
    let sizes = calls.sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 31);
    assert!(
        (2..=4).contains(&calls.most_out.load(Ordering::SeqCst)) && sizes.len() >= 3,
        "calls of {sizes:?} commands, {} out at most",
        calls.most_out.load(Ordering::SeqCst)
    );
}

/// Under load (the last batch carried several commands) a batch waits, up to the linger, to
/// be as large as the last one: the clients answered by a decision come back a few at a time,
/// and without lingering the first of them left in a slot of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_batch_waits_for_as_many_commands_as_the_last_one_carried() {
    let (log, calls, _dir, _stop) = node_proposing(1, Duration::from_secs(5)).await;
    // A lone command: the first batch, one command, sent at once (the linger is 5 s).
    let started = std::time::Instant::now();
    let first = submit(&log);
    first_call(&calls).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a lone command waited for the linger"
    );
    // Ten while it is out: they leave together in the next batch.
    let ten: Vec<_> = (0..10).map(|_| submit(&log)).collect();
    answered(vec![first]).await;
    answered(ten).await;
    // Ten more, 5 ms apart, as clients answered by that decision would come back: one batch.
    let mut trickle = Vec::new();
    for _ in 0..10 {
        trickle.push(submit(&log));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    answered(trickle).await;
    let sizes = calls.sizes.lock().unwrap().clone();
    assert_eq!(sizes, vec![1, 10, 10], "calls of these many commands");
}

/// A lingering batch waits for commands that are coming, not for ones that never come: after a
/// batch of ten, three commands wait a quarter of the linger for more, then leave together,
/// long before the linger is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_stops_growing_leaves_without_waiting_out_the_linger() {
    let linger = Duration::from_secs(8);
    let (log, calls, _dir, _stop) = node_proposing(1, linger).await;
    let first = submit(&log);
    first_call(&calls).await;
    let ten: Vec<_> = (0..10).map(|_| submit(&log)).collect();
    answered(vec![first]).await;
    answered(ten).await;
    let started = std::time::Instant::now();
    let three: Vec<_> = (0..3).map(|_| submit(&log)).collect();
    answered(three).await;
    let waited = started.elapsed();
    // The call left a quarter of the linger (2 s) after the three came, and was answered 200 ms
    // later (the stand-in's delay); a wait for the whole linger would take 8 s.
    assert!(
        waited >= linger / 4 && waited < linger * 3 / 4,
        "the three were answered after {waited:?}"
    );
    let sizes = calls.sizes.lock().unwrap().clone();
    assert_eq!(sizes, vec![1, 10, 3], "calls of these many commands");
}

/// A node proposing to the slow stand-in with this many batches out and this linger; the
/// directory and the guard that stops it go with it.
async fn node_proposing(
    proposals_in_flight: usize,
    linger: Duration,
) -> (
    Arc<ClusterLog>,
    Arc<Calls>,
    tempfile::TempDir,
    tokio_util::sync::DropGuard,
) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap());
    let shutdown = CancellationToken::new();
    let calls = Arc::new(Calls::default());
    let options = ClusterOptions {
        proposals_in_flight,
        propose_linger: linger,
        ..common::cluster_options(paxos::Mode::Leaderless, slow_paxos(calls.clone()).await)
    };
    let log = ClusterLog::start(options, store, shutdown.clone(), CancellationToken::new())
        .await
        .unwrap();
    (log, calls, dir, shutdown.drop_guard())
}

/// Waits until the stand-in got its first call.
async fn first_call(calls: &Calls) {
    while calls.made.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn submit(
    log: &Arc<ClusterLog>,
) -> tokio::task::JoinHandle<Result<node::command::Outcome, node::log::SubmitError>> {
    let log = log.clone();
    tokio::spawn(async move { log.submit(open_account()).await })
}

async fn answered(
    submitted: Vec<tokio::task::JoinHandle<Result<node::command::Outcome, node::log::SubmitError>>>,
) {
    for outcome in submitted {
        tokio::time::timeout(Duration::from_secs(20), outcome)
            .await
            .expect("answered")
            .unwrap()
            .expect("applied");
    }
}
