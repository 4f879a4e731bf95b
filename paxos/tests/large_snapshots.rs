//! The paxos process with a snapshot larger than an ordinary message: a bank that retains many
//! idempotency records hands paxos snapshots of hundreds of megabytes, and a replica that fell
//! behind the compaction point can only catch up by receiving one from a peer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser as _;
use paxos::runtime::{Cli, EntriesReply, ProposeReply, StatusReply};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "large-snapshot-test-token";

/// Larger than the 64 MiB every route allowed before.
const SNAPSHOT_BYTES: usize = 80 << 20;

/// Starts replica `id`; `initial` is `new` for the first replicas, `existing` for one that
/// first starts after the cluster has decided slots.
fn start(
    id: u32,
    urls: &[String],
    listener: tokio::net::TcpListener,
    dir: &std::path::Path,
    shutdown: &CancellationToken,
    initial: &str,
) {
    let cli = Cli::try_parse_from([
        "paxos".to_owned(),
        format!("--id={id}"),
        format!("--peers={}", urls.join(",")),
        "--mode=leader".to_owned(),
        format!("--initial-cluster-state={initial}"),
        format!("--data-dir={}", dir.join(format!("paxos-{id}")).display()),
    ])
    .expect("paxos flags");
    let cfg = cli.into_config(TOKEN.to_owned()).expect("paxos config");
    tokio::spawn(paxos::runtime::run(cfg, listener, None, shutdown.clone()));
}

async fn status(client: &reqwest::Client, url: &str) -> Option<StatusReply> {
    let response = client
        .get(format!("{url}/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_compaction_point_catches_up_with_a_snapshot_over_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let late = listeners.pop().unwrap();
    let late_addr = late.local_addr().unwrap();
    drop(late);
    for (id, listener) in listeners.into_iter().enumerate() {
        start(id as u32, &urls, listener, dir.path(), &shutdown, "new");
    }
    let client = reqwest::Client::new();

    // Replicas 0 and 1 are a majority: one of them leads and decides a command.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        assert!(
            Instant::now() < deadline,
            "no leader among replicas 0 and 1"
        );
        let mut found = None;
        for url in &urls[..2] {
            if status(&client, url)
                .await
                .is_some_and(|s| s.status.is_leader)
            {
                found = Some(url.clone());
            }
        }
        if let Some(url) = found {
            break url;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body = postcard::to_stdvec(&vec![Bytes::from_static(b"a command")]).unwrap();
    let replies: Vec<ProposeReply> = postcard::from_bytes(
        &client
            .post(format!("{leader}/local/propose"))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let ProposeReply::Decided { slot, .. } = replies[0] else {
        panic!("not decided: {replies:?}");
    };

    // Both compact with a snapshot larger than 64 MiB.
    let data = Bytes::from(vec![7u8; SNAPSHOT_BYTES]);
    let compact = postcard::to_stdvec(&(slot, data.clone())).unwrap();
    for url in &urls[..2] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&client, url)
            .await
            .is_none_or(|s| s.status.decided < slot)
        {
            assert!(Instant::now() < deadline, "{url} did not learn slot {slot}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let response = client
            .post(format!("{url}/local/compact"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/octet-stream")
            .body(compact.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204, "{url}/local/compact");
        let compacted = status(&client, url).await.unwrap().status.compacted;
        assert_eq!(compacted, slot, "{url} compacted");
    }

    // The third replica starts empty, behind the compaction point: it can only catch up by
    // receiving the snapshot from a peer, in one message.
    let late = tokio::net::TcpListener::bind(late_addr).await.unwrap();
    start(2, &urls, late, dir.path(), &shutdown, "existing");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "replica 2 never received the snapshot"
        );
        let reply = client
            .get(format!("{}/local/entries?from=1&wait_ms=500", urls[2]))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(reply) = reply
            && let Ok(bytes) = reply.bytes().await
            && let Ok(EntriesReply::Snapshot {
                slot: at,
                data: got,
            }) = postcard::from_bytes::<EntriesReply>(&bytes)
        {
            assert_eq!(at, slot);
            assert!(got == data, "the snapshot arrived altered");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
