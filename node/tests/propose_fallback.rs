//! A node proposes on paxos's propose stream (`GET /local/propose/stream`); a paxos process that
//! does not serve it (an older version during a rolling upgrade) still gets every proposal, by
//! `POST /local/propose`, and the node's writes go through.

mod common;

use std::sync::Arc;
use std::time::Duration;

use node::cluster::ClusterLog;
use node::command::{AccountId, Command, Operation, Outcome};
use node::log::Log;
use node::store::{EmbeddedStore, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_a_paxos_without_the_propose_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_in_dir(dir.path(), StoreOptions::default()).unwrap());
    let (shutdown, fatal) = (CancellationToken::new(), CancellationToken::new());
    let _stop = shutdown.clone().drop_guard();
    let proposed = common::StandIn::default();
    let options = common::cluster_options(
        paxos::Mode::Leaderless,
        common::older_paxos(proposed.clone(), Duration::ZERO).await,
    );
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
