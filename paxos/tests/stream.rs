//! The receiving end of the peer streams on a real paxos process: a stream is an upgraded
//! `GET /peer/stream` that carries frames of messages to the driver; a request that does not
//! ask for the protocol is refused; a newer stream from the same peer closes the older one.

use std::time::Duration;

use clap::Parser as _;
use futures::SinkExt as _;
use paxos::messages::{Envelope, Heartbeat, LaneClaim, Message};
use paxos::transfer::{STREAM_FROM, STREAM_PROTOCOL, stream_codec};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "cluster-token-0123456789";

/// A paxos process of a 3-replica cluster (its peers unreachable), replica 0; its URL.
async fn start(dir: &std::path::Path, shutdown: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = paxos::runtime::Cli::try_parse_from([
        "paxos".to_owned(),
        "--id=0".to_owned(),
        format!("--peers={url},http://127.0.0.1:9,http://127.0.0.1:9"),
        "--initial-cluster-state=new".to_owned(),
        format!("--data-dir={}", dir.join("paxos").display()),
    ])
    .unwrap()
    .into_config(TOKEN.to_owned())
    .unwrap();
    tokio::spawn(paxos::runtime::run(cfg, listener, None, shutdown.clone()));
    url
}

async fn open(url: &str, from: u32) -> reqwest::Upgraded {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let response = client
            .get(format!("{url}/peer/stream"))
            .bearer_auth(TOKEN)
            .header("connection", "upgrade")
            .header("upgrade", STREAM_PROTOCOL)
            .header(STREAM_FROM, from.to_string())
            .send()
            .await;
        if let Ok(response) = response {
            assert_eq!(response.status(), 101);
            return response.upgrade().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the paxos process never answered");
}

fn frame(envelopes: &[Envelope]) -> bytes::Bytes {
    let trace: Vec<(String, String)> = Vec::new();
    let mut body = postcard::to_stdvec(&trace).unwrap();
    body.extend(postcard::to_stdvec(envelopes).unwrap());
    body.into()
}

async fn frontier(url: &str) -> Option<u64> {
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["frontier"].as_u64()
}

#[tokio::test]
async fn a_stream_carries_frames_to_the_driver_and_a_newer_one_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let url = start(dir.path(), &shutdown).await;

    // Without the Upgrade header: refused, with a reason.
    let plain = reqwest::Client::new()
        .get(format!("{url}/peer/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains(STREAM_PROTOCOL));

    // Replica 1 tells of slot 77 in a heartbeat, in a frame of its stream: the driver learns it.
    let first = open(&url, 1).await;
    let mut frames = tokio_util::codec::FramedWrite::new(first, stream_codec(1 << 20));
    let claim = Envelope::new(
        1,
        0,
        Message::Heartbeat(Heartbeat {
            leading: vec![LaneClaim {
                lane: 0,
                ballot: paxos::Ballot::new(1_000_000, 1),
                decided_up_to: 0,
            }],
            decided: 0,
            frontier: 77,
            read_seq: 0,
        }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        frames
            .send(frame(std::slice::from_ref(&claim)))
            .await
            .unwrap();
        if frontier(&url).await == Some(77) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat never reached the driver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second stream from replica 1: the process closes the first one.
    let _second = open(&url, 1).await;
    let mut first = frames.into_inner();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("the older stream is closed, not left open");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the older stream ended: {read:?}"
    );
}

/// The node's side: `GET /local/entries/stream` pushes the decided log as it grows, each batch
/// continuing where the last ended, with empty batches while nothing is decided; without the
/// Upgrade header the route refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entries_stream_pushes_the_log_as_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let url = start_alone(dir.path(), &shutdown).await;
    let client = paxos::client::PaxosClient::new(&url, TOKEN).unwrap();

    assert_eq!(
        status_without_upgrade(&url, "/local/entries/stream?from=1").await,
        400
    );

    let mut stream = client.entries_stream(1, 2).await.unwrap();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut next_slot = 1;
    let mut proposed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "saw only {seen:?}");
        if proposed < 5 {
            let command = bytes::Bytes::from(vec![b'a' + proposed]);
            if let Ok(replies) = client.propose(std::slice::from_ref(&command)).await
                && matches!(replies[0], paxos::wire::ProposeReply::Decided { .. })
            {
                proposed += 1;
            }
        }
        let batch = stream.next().await.unwrap().expect("the stream stays open");
        let paxos::wire::EntriesReply::Entries(entries) = batch else {
            panic!("no snapshot was taken");
        };
        assert!(entries.len() <= 2, "at most max entries per frame");
        for (slot, value) in entries {
            assert_eq!(slot, next_slot, "consecutive, continuing the last frame");
            next_slot += 1;
            seen.extend(value.commands().iter().map(|c| c.to_vec()));
        }
    }
    assert_eq!(
        seen,
        [b"a", b"b", b"c", b"d", b"e"].map(|c| c.to_vec()).to_vec()
    );
    // Nothing more is decided: the stream says so (an empty batch) instead of falling silent.
    let quiet = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a keepalive within a few seconds")
        .unwrap()
        .unwrap();
    assert_eq!(quiet, paxos::wire::EntriesReply::Entries(Vec::new()));
}

/// A one-replica paxos process; its URL, once it answers.
async fn start_alone(dir: &std::path::Path, shutdown: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = paxos::runtime::Cli::try_parse_from([
        "paxos".to_owned(),
        "--id=0".to_owned(),
        format!("--peers={url}"),
        "--initial-cluster-state=new".to_owned(),
        format!("--data-dir={}", dir.join("paxos").display()),
    ])
    .unwrap()
    .into_config(TOKEN.to_owned())
    .unwrap();
    tokio::spawn(paxos::runtime::run(cfg, listener, None, shutdown.clone()));
    for _ in 0..100 {
        if reqwest::get(format!("{url}/healthz")).await.is_ok() {
            return url;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the paxos process never answered");
}

/// The status of a plain GET of `path` (no Upgrade header).
async fn status_without_upgrade(url: &str, path: &str) -> u16 {
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// The node's proposals on `GET /local/propose/stream`: many frames in flight at once, each
/// answered by its id with the slot its command was decided in; a request without the Upgrade
/// header is refused; a frame that does not decode ends the stream; once the process is gone,
/// a proposal on the stream is `NotSent` (the node then proposes another way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_propose_stream_answers_every_frame_by_its_id() {
    use paxos::client::ClientError;
    use paxos::wire::{EntriesReply, PROPOSE_STREAM_PROTOCOL, ProposeReply};
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let url = start_alone(dir.path(), &shutdown).await;
    let client = paxos::client::PaxosClient::new(&url, TOKEN).unwrap();

    assert_eq!(
        status_without_upgrade(&url, "/local/propose/stream").await,
        400
    );

    let stream = client.propose_stream().await.unwrap();
    let proposals = (0..20u8).map(|i| {
        let stream = stream.clone();
        async move {
            let command = bytes::Bytes::from(vec![b'a' + i]);
            (command.clone(), stream.propose(vec![command]).await)
        }
    });
    // Frames that reach the driver together may share a slot.
    let mut decided = Vec::new();
    for (command, replies) in futures::future::join_all(proposals).await {
        let replies = replies.unwrap();
        let [ProposeReply::Decided { slot }] = replies[..] else {
            panic!("{command:?}: {replies:?}");
        };
        decided.push((slot, command));
    }
    assert_eq!(decided.len(), 20);
    // Every answer names the slot that holds its command.
    let EntriesReply::Entries(entries) = client
        .entries(1, 100, Duration::from_secs(1))
        .await
        .unwrap()
    else {
        panic!("no snapshot was taken");
    };
    for (slot, command) in &decided {
        let (_, value) = entries.iter().find(|(s, _)| s == slot).expect("decided");
        assert!(value.commands().contains(command), "slot {slot}");
    }

    // A frame that is not a proposal ends that stream.
    let response = reqwest::Client::new()
        .get(format!("{url}/local/propose/stream"))
        .bearer_auth(TOKEN)
        .header("connection", "upgrade")
        .header("upgrade", PROPOSE_STREAM_PROTOCOL)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let mut raw = response.upgrade().await.unwrap();
    let mut frames = tokio_util::codec::FramedWrite::new(&mut raw, stream_codec(1 << 20));
    frames
        .send(bytes::Bytes::from_static(b"\xff\xff\xff"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed without an answer");

    // The process goes away: the stream ends, and says so before sending anything.
    shutdown.cancel();
    for _ in 0..250 {
        if stream.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = stream.propose(vec![bytes::Bytes::from_static(b"z")]).await;
    assert!(
        matches!(after, Err(ClientError::NotSent { .. })),
        "{after:?}"
    );
}
