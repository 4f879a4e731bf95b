//! Leaderless mode: a step that only accepts this replica's own proposals is written with the
//! next step that syncs instead of being synced on its own (the driver's `plan_step`), and a
//! proposal is still answered only once its own accept is on disk.
//!
//! Three replicas in this process, replica 0 on a storage that records every write it is given
//! (each write is one synced transaction).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use paxos::client::PaxosClient;
use paxos::runtime::{Cli, run_with_storage};
use paxos::storage::{MemStorage, PersistOp, PersistentState, Storage, StorageError};
use paxos::wire::ProposeReply;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "held-accepts-test-token";

/// Every write made to it, in order.
#[derive(Clone, Default)]
struct Recording {
    writes: Arc<Mutex<Vec<Vec<PersistOp>>>>,
    inner: MemStorage,
}

impl Storage for Recording {
    fn load(&self) -> Result<PersistentState, StorageError> {
        self.inner.load()
    }
    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.writes.lock().unwrap().push(ops.to_vec());
        self.inner.write(ops)
    }
}

fn is_own_accept(op: &PersistOp, slot: u64) -> bool {
    matches!(op, PersistOp::Accept { slot: s, ballot, .. } if ballot.node == 0 && *s == slot)
}

/// The write that carried replica 0's accept of its own proposal at `slot`, if any: did it also
/// carry something that came back from the peers after that accept went out (the decision of
/// `slot`, or a peer's accept)?
fn written_with_an_answer(writes: &[Vec<PersistOp>], slot: u64) -> Option<bool> {
    let write = writes
        .iter()
        .find(|ops| ops.iter().any(|op| is_own_accept(op, slot)))?;
    Some(write.iter().any(|op| match op {
        PersistOp::Decide { slot: s, .. } => *s == slot,
        PersistOp::Accept { ballot, .. } => ballot.node != 0,
        _ => false,
    }))
}

async fn cluster(mode: &str) -> (Vec<String>, Recording, CancellationToken) {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let shutdown = CancellationToken::new();
    let recording = Recording::default();
    for (id, listener) in listeners.into_iter().enumerate() {
        let cfg = Cli::try_parse_from([
            "paxos".to_owned(),
            format!("--id={id}"),
            format!("--peers={}", urls.join(",")),
            format!("--mode={mode}"),
            "--initial-cluster-state=new".to_owned(),
            format!("--data-dir={}", dir.join(id.to_string()).display()),
        ])
        .unwrap()
        .into_config(TOKEN.to_owned())
        .unwrap();
        let storage: Box<dyn Storage + Send> = if id == 0 {
            Box::new(recording.clone())
        } else {
            Box::new(MemStorage::default())
        };
        tokio::spawn(run_with_storage(
            cfg,
            storage,
            listener,
            None,
            shutdown.clone(),
        ));
    }
    (urls, recording, shutdown)
}

/// Proposes one command at replica 0 until it is decided; the slot it got.
async fn decided(client: &PaxosClient, text: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{text} was not decided");
        if let Ok(replies) = client.propose(&[Bytes::from(text.to_owned())]).await
            && let Some(ProposeReply::Decided { slot }) = replies.first()
        {
            return *slot;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_own_accepts_wait_for_the_next_sync_and_answers_for_theirs() {
    let (urls, recording, shutdown) = cluster("leaderless").await;
    let _stop = shutdown.drop_guard();
    let client = PaxosClient::new(&urls[0], TOKEN).unwrap();
    // The first write of a life is never held; let it happen.
    decided(&client, "warm-up").await;
    for i in 0..20 {
        let slot = decided(&client, &format!("command {i}")).await;
        let writes = recording.writes.lock().unwrap();
        // Answered only once the accept is on disk...
        let with_answer = written_with_an_answer(&writes, slot).unwrap_or_else(|| {
            panic!("command {i} was answered (slot {slot}) before replica 0 wrote its accept")
        });
        // ...which waited for the peers' traffic instead of a sync of its own.
        assert!(
            with_answer,
            "command {i}: the accept of slot {slot} was synced on its own, before any answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_mode_syncs_the_leaders_accepts_at_once() {
    let (urls, recording, shutdown) = cluster("leader").await;
    let _stop = shutdown.drop_guard();
    let client = PaxosClient::new(&urls[0], TOKEN).unwrap();
    decided(&client, "warm-up").await;
    for i in 0..5 {
        let slot = decided(&client, &format!("command {i}")).await;
        let writes = recording.writes.lock().unwrap();
        let with_answer = written_with_an_answer(&writes, slot)
            .unwrap_or_else(|| panic!("command {i} was answered before its accept was written"));
        assert!(
            !with_answer,
            "command {i}: leader mode syncs its accept at once, overlapping its followers' syncs"
        );
    }
}
