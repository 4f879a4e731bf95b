//! Catch-up by snapshot between real paxos processes (review item 6): a bank that retains many
//! idempotency records hands paxos snapshots of hundreds of megabytes, and a replica that fell
//! behind the compaction point can only catch up by receiving one from a peer.
//!
//! The peer body limit is lowered to 16 MiB and the snapshot is 80 MiB (five times that): it
//! can only travel in chunks. Each replica is its own process so that its memory can be
//! measured: the transfer may cost the senders a few chunks above their idle state, and the
//! receiver the snapshot it must keep (as every replica keeps its latest) plus a few chunks;
//! before, every catch-up request made each peer put the whole snapshot into one message.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos::wire::{EntriesReply, ProposeReply, StatusReply};

const TOKEN: &str = "large-snapshot-test-token";
const SNAPSHOT_BYTES: usize = 80 << 20;
const BODY_LIMIT: usize = 16 << 20;
const CHUNK: usize = 2 << 20;
/// What a transfer may cost a process, in chunks, above what it must hold anyway.
const CHUNKS_OF_OVERHEAD: usize = 24;

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Replica {
    fn start(id: usize, urls: &[String], dir: &std::path::Path, initial: &str) -> Replica {
        let port = urls[id].rsplit(':').next().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_paxos"))
            .arg(format!("--id={id}"))
            .arg(format!("--peers={}", urls.join(",")))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--initial-cluster-state={initial}"))
            .arg(format!(
                "--data-dir={}",
                dir.join(format!("paxos-{id}")).display()
            ))
            .arg(format!("--max-peer-body-bytes={BODY_LIMIT}"))
            .arg(format!("--snapshot-chunk-bytes={CHUNK}"))
            .env("BANK_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Replica(child)
    }

    /// A line of `/proc/<pid>/status`, in bytes (`VmRSS`, `VmHWM`).
    fn memory(&self, field: &str) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("{field} in /proc status"));
        let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Resets the peak (`VmHWM`) to the current resident size; returns that size.
    fn reset_peak(&self) -> usize {
        std::fs::write(format!("/proc/{}/clear_refs", self.0.id()), "5").unwrap();
        self.memory("VmRSS:")
    }
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

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_catches_up_from_a_snapshot_five_body_limits_large_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = (0..3)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("http://127.0.0.1:{port}")
        })
        .collect();
    let senders = [
        Replica::start(0, &urls, dir.path(), "new"),
        Replica::start(1, &urls, dir.path(), "new"),
    ];
    let client = reqwest::Client::new();

    // Replicas 0 and 1 are a majority: one of them leads and decides a command.
    let mut leader = None;
    wait_for(
        "no leader among replicas 0 and 1",
        Duration::from_secs(20),
        async || {
            for url in &urls[..2] {
                if status(&client, url)
                    .await
                    .is_some_and(|s| s.status.is_leader)
                {
                    leader = Some(url.clone());
                }
            }
            leader.is_some()
        },
    )
    .await;
    let idle = senders[1].memory("VmRSS:");
    let body = postcard::to_stdvec(&vec![Bytes::from_static(b"a command")]).unwrap();
    let replies: Vec<ProposeReply> = postcard::from_bytes(
        &client
            .post(format!("{}/local/propose", leader.unwrap()))
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

    // Both compact with a snapshot five times the body limit.
    let data = Bytes::from(
        (0..SNAPSHOT_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let compact = postcard::to_stdvec(&(slot, data.clone())).unwrap();
    for url in &urls[..2] {
        wait_for(
            "a sender did not learn the slot",
            Duration::from_secs(20),
            async || {
                status(&client, url)
                    .await
                    .is_some_and(|s| s.status.decided >= slot)
            },
        )
        .await;
        let response = client
            .post(format!("{url}/local/compact"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/octet-stream")
            .body(compact.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 204, "{url}/local/compact");
        assert_eq!(status(&client, url).await.unwrap().status.compacted, slot);
    }
    drop(compact);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baselines: Vec<usize> = senders.iter().map(Replica::reset_peak).collect();

    // The third replica starts empty, behind the compaction point: it can only catch up by
    // receiving the snapshot from a peer.
    let receiver = Replica::start(2, &urls, dir.path(), "existing");
    wait_for(
        "replica 2 never installed the snapshot",
        Duration::from_secs(120),
        async || {
            status(&client, &urls[2])
                .await
                .is_some_and(|s| s.status.compacted == slot)
        },
    )
    .await;
    let bound = CHUNKS_OF_OVERHEAD * CHUNK;
    for (i, (sender, baseline)) in senders.iter().zip(&baselines).enumerate() {
        let growth = sender.memory("VmHWM:").saturating_sub(*baseline);
        eprintln!("sender {i}: peak {} MiB above its state", growth >> 20);
        assert!(
            growth <= bound,
            "sender {i} grew {} MiB sending the snapshot (bound {} MiB)",
            growth >> 20,
            bound >> 20
        );
    }
    let growth = receiver.memory("VmHWM:").saturating_sub(idle);
    eprintln!(
        "receiver: peak {} MiB above an idle replica (snapshot {} MiB)",
        growth >> 20,
        SNAPSHOT_BYTES >> 20
    );
    assert!(
        growth <= SNAPSHOT_BYTES + bound,
        "the receiver grew {} MiB (bound: the snapshot plus {} MiB)",
        growth >> 20,
        bound >> 20
    );

    // And it is the snapshot, byte for byte.
    let reply = client
        .get(format!("{}/local/entries?from=1&wait_ms=500", urls[2]))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let EntriesReply::Snapshot {
        slot: at,
        data: got,
    } = postcard::from_bytes(&reply).unwrap()
    else {
        panic!("replica 2 serves its snapshot");
    };
    assert_eq!(at, slot);
    assert!(got == data, "the snapshot arrived altered");
}
