//! The transport between paxos processes: per-peer queues bounded in bytes, request bodies
//! bounded in bytes, and snapshots sent apart from the messages, one at a time per peer, in
//! chunks, resumably.
//!
//! Why: a replica that lags resends `CatchUp` every resend interval while it is behind, and
//! every peer answers each with its whole snapshot. Packed into one request body with other
//! messages, five copies of a 270 MB snapshot made one 1.35 GB allocation that the receiver
//! refused, and the replica never caught up (review item 6). Here a snapshot reply leaves the
//! message queue: the peer's snapshot task keeps only the newest snapshot wanted, sends it in
//! chunks of `chunk_bytes` to `POST /peer/snapshot`, and the receiver appends each chunk to a
//! file and answers the offset it expects next, so a transfer cut by a restart on either side
//! resumes where it stopped. Memory per transfer is a few chunks on each side (the sender's
//! snapshot is already in memory; the receiver reads the finished file once, to install it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::header;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ballot::{NodeId, Slot};
use crate::messages::{CatchUpReply, Envelope, Message};

/// A message for a peer and the trace it belongs to, if sampled.
pub type Outbound = (Envelope, Option<telemetry::trace::Context>);

/// Byte limits of the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Largest body of a `/peer/messages` or `/peer/snapshot` request, sent or accepted.
    pub max_body_bytes: usize,
    /// Bytes of a snapshot per `/peer/snapshot` request.
    pub chunk_bytes: usize,
    /// Most bytes of messages queued for one peer; beyond it new messages are dropped (Paxos
    /// resends what matters).
    pub max_queued_bytes: usize,
}

impl Default for PeerLimits {
    fn default() -> PeerLimits {
        PeerLimits {
            max_body_bytes: 64 << 20,
            chunk_bytes: 4 << 20,
            max_queued_bytes: 128 << 20,
        }
    }
}

impl PeerLimits {
    /// Checks that a chunk fits in a body.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.chunk_bytes >= 1024 && self.chunk_bytes + 4096 <= self.max_body_bytes,
            "--snapshot-chunk-bytes ({}) must be at least 1024 and fit in \
             --max-peer-body-bytes ({}) with 4096 to spare",
            self.chunk_bytes,
            self.max_body_bytes
        );
        Ok(())
    }
}

/// The newest snapshot a peer needs, with the envelope fields it travels with.
#[derive(Clone, Debug)]
struct SnapshotJob {
    slot: Slot,
    data: Bytes,
    from: NodeId,
    incarnations: Vec<u64>,
}

/// The sending side of one peer.
pub struct Peer {
    queue: mpsc::Sender<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
    snapshots: Arc<watch::Sender<Option<SnapshotJob>>>,
    max_queued_bytes: usize,
}

/// Roughly what a message costs in a queue and on the wire.
pub fn approx_bytes(msg: &Message) -> usize {
    let values = |values: &mut dyn Iterator<Item = &crate::messages::Value>| -> usize {
        values
            .map(|v| 32 + v.commands().iter().map(|c| c.len() + 4).sum::<usize>())
            .sum()
    };
    64 + match msg {
        Message::Accept(m) => values(&mut m.entries.iter().map(|(_, v)| v)),
        Message::Promise(m) => values(&mut m.entries.iter().map(|e| &e.value)),
        Message::CatchUpReply(m) => {
            values(&mut m.entries.iter().map(|(_, v)| v))
                + m.snapshot.as_ref().map_or(0, |(_, d)| d.len())
        }
        _ => 0,
    }
}

impl Peer {
    /// Starts the message sender and the snapshot sender of the peer at `base`.
    pub fn spawn(
        client: reqwest::Client,
        base: &str,
        token: &str,
        me: Option<NodeId>,
        limits: PeerLimits,
        queue_len: usize,
        shutdown: CancellationToken,
    ) -> Peer {
        let (queue, rx) = mpsc::channel(queue_len);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let snapshots = Arc::new(watch::Sender::new(None));
        let base = base.trim_end_matches('/').to_owned();
        tokio::spawn(send_messages(
            StreamTarget {
                client: client.clone(),
                url: format!("{base}/peer/stream"),
                token: token.to_owned(),
                me,
            },
            rx,
            queued_bytes.clone(),
            limits,
            shutdown.clone(),
        ));
        tokio::spawn(send_snapshots(
            client,
            format!("{base}/peer/snapshot"),
            token.to_owned(),
            snapshots.clone(),
            limits,
            shutdown,
        ));
        Peer {
            queue,
            queued_bytes,
            snapshots,
            max_queued_bytes: limits.max_queued_bytes,
        }
    }

    /// Queues a message. A snapshot goes to the snapshot sender instead (unless that snapshot,
    /// or a newer one, is already on its way: once at a time per peer); the entries after it
    /// still go as a message. False: dropped (the queue is full, in messages or bytes).
    pub fn send(&self, mut envelope: Envelope, trace: Option<telemetry::trace::Context>) -> bool {
        if let Message::CatchUpReply(reply) = &mut envelope.msg
            && let Some((slot, data)) = reply.snapshot.take()
        {
            let job = SnapshotJob {
                slot,
                data,
                from: envelope.from,
                incarnations: envelope.incarnations.clone(),
            };
            self.snapshots.send_if_modified(|current| match current {
                Some(running) if running.slot >= slot => false,
                _ => {
                    *current = Some(job);
                    true
                }
            });
            if reply.entries.is_empty() {
                return true;
            }
        }
        let size = approx_bytes(&envelope.msg);
        if self.queued_bytes.load(Ordering::Relaxed) + size > self.max_queued_bytes {
            metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "outbound_bytes_full")
                .increment(1);
            return false;
        }
        self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if self.queue.try_send((envelope, trace)).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "outbound_full")
                .increment(1);
            return false;
        }
        true
    }
}

/// The `Upgrade` protocol of a peer stream (`GET /peer/stream`).
pub const STREAM_PROTOCOL: &str = "paxos-peer/1";

/// Header of the stream request naming the sending replica (a newer stream from the same
/// replica replaces the older one at the receiver).
pub const STREAM_FROM: &str = "x-paxos-from";

/// A sender with nothing to send writes an empty frame this often, so the receiver (which
/// closes a stream silent for [`STREAM_IDLE`]) keeps the stream and a dead link is noticed.
pub const STREAM_KEEPALIVE: Duration = Duration::from_secs(5);

/// The receiver closes a stream that carried no frame for this long.
pub const STREAM_IDLE: Duration = Duration::from_secs(20);

/// Data written to a peer and not acknowledged by its kernel for this long aborts the stream
/// (`TCP_USER_TIMEOUT`): a partitioned or frozen peer costs a reconnect, not a stalled stream.
pub const STREAM_USER_TIMEOUT: Duration = Duration::from_secs(2);

/// The length-delimited framing of a peer stream: frames up to `max_frame` bytes.
pub fn stream_codec(max_frame: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

/// W3C trace headers (name, value) carried in a frame.
pub type TraceHeaders = Vec<(String, String)>;

/// Where a peer's stream goes, and as whom.
struct StreamTarget {
    client: reqwest::Client,
    /// `<base>/peer/stream`.
    url: String,
    token: String,
    /// This replica (sent as `x-paxos-from`).
    me: Option<NodeId>,
}

/// A frame's body: the trace headers (`traceparent`, `tracestate`; empty unless a message of the
/// frame belongs to a sampled trace), then a postcard `Vec<Envelope>` (a varint count and the
/// items back to back).
pub fn decode_frame(frame: &[u8]) -> Option<(TraceHeaders, Vec<Envelope>)> {
    let (trace, rest) = postcard::take_from_bytes::<TraceHeaders>(frame).ok()?;
    let envelopes = postcard::from_bytes::<Vec<Envelope>>(rest).ok()?;
    Some((trace, envelopes))
}

/// Opens a stream to the peer: `GET /peer/stream` with the cluster token, upgraded.
async fn open_stream(target: &StreamTarget) -> anyhow::Result<reqwest::Upgraded> {
    let StreamTarget {
        client,
        url,
        token,
        me,
    } = target;
    let mut request = client
        .get(url)
        .bearer_auth(token)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STREAM_PROTOCOL);
    if let Some(me) = me {
        request = request.header(STREAM_FROM, me.to_string());
    }
    let response = tokio::time::timeout(crate::runtime::peer_timeout(0), request.send())
        .await
        .context("no answer")??;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::SWITCHING_PROTOCOLS,
        "{url} answered {} to the stream upgrade",
        response.status()
    );
    Ok(response.upgrade().await?)
}

/// Sends queued messages over one long-lived stream per peer (an upgraded HTTP connection),
/// in length-delimited frames whose size stays within half the body limit. Nothing is answered
/// per frame: frames are written back to back as messages arrive. A stream that fails (the
/// peer is down, partitioned or too slow to take a frame) is dropped with what was queued for it
/// (Paxos resends what matters) and opened again with a backoff.
async fn send_messages(
    target: StreamTarget,
    mut queue: mpsc::Receiver<Outbound>,
    queued_bytes: Arc<AtomicUsize>,
    limits: PeerLimits,
    shutdown: CancellationToken,
) {
    use futures::SinkExt as _;
    use tracing::Instrument as _;
    let budget = limits.max_body_bytes / 2;
    // Looked up once, not per frame (see `metrics::DriverMetrics`).
    let frame_duration = metrics::histogram!(crate::metrics::PEER_RPC_DURATION);
    let mut waiting: std::collections::VecDeque<Outbound> = std::collections::VecDeque::new();
    let mut received = Vec::with_capacity(256);
    let mut failures: u32 = 0;
    let mut stream = None;
    let drop_queued = |waiting: &mut std::collections::VecDeque<Outbound>,
                       queue: &mut mpsc::Receiver<Outbound>| {
        let mut dropped = waiting.len();
        waiting.clear();
        while let Ok((envelope, _)) = queue.try_recv() {
            queued_bytes.fetch_sub(approx_bytes(&envelope.msg), Ordering::Relaxed);
            dropped += 1;
        }
        metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "peer_unreachable")
            .increment(dropped as u64);
    };
    loop {
        if waiting.is_empty() {
            let n = tokio::select! {
                () = shutdown.cancelled() => return,
                n = queue.recv_many(&mut received, 256) => n,
                () = tokio::time::sleep(STREAM_KEEPALIVE), if stream.is_some() => 0,
            };
            if n == 0 && queue.is_closed() {
                return;
            }
            for (envelope, trace) in received.drain(..) {
                queued_bytes.fetch_sub(approx_bytes(&envelope.msg), Ordering::Relaxed);
                waiting.push_back((envelope, trace));
            }
        }
        let framed = match &mut stream {
            Some(framed) => framed,
            None => match open_stream(&target).await {
                Ok(upgraded) => {
                    failures = 0;
                    stream.insert(tokio_util::codec::FramedWrite::new(
                        upgraded,
                        stream_codec(limits.max_body_bytes),
                    ))
                }
                Err(err) => {
                    tracing::debug!(url = %target.url, error = %err, "no stream to the peer");
                    drop_queued(&mut waiting, &mut queue);
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis((10u64 << failures.min(6)).min(500));
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    continue;
                }
            },
        };
        // One frame: the messages that fit in the budget (none: a keepalive).
        let mut items: Vec<Vec<u8>> = Vec::new();
        let mut traces = Vec::new();
        let mut size = 0;
        while let Some((envelope, _)) = waiting.front() {
            let Ok(bytes) = postcard::to_stdvec(envelope) else {
                waiting.pop_front();
                continue;
            };
            if !items.is_empty() && size + bytes.len() > budget {
                break;
            }
            size += bytes.len();
            items.push(bytes);
            let (_, trace) = waiting.pop_front().expect("front exists");
            traces.extend(trace);
        }
        let count = items.len();
        let span = telemetry::trace::batch_span("paxos.peer_send", traces.iter());
        let trace: TraceHeaders = match &span {
            Some(span) => span.in_scope(|| {
                telemetry::trace::current_headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect()
            }),
            None => Vec::new(),
        };
        let mut body = postcard::to_stdvec(&trace).expect("headers encode");
        body.extend(postcard::to_stdvec(&(count as u64)).expect("a count encodes"));
        for item in items {
            body.extend_from_slice(&item);
        }
        if body.len() > limits.max_body_bytes {
            // One message larger than a frame: it cannot be sent (it would be refused).
            metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "too_large")
                .increment(1);
            continue;
        }
        let started = std::time::Instant::now();
        let timeout = crate::runtime::peer_timeout(body.len());
        let write = tokio::time::timeout(timeout, framed.send(Bytes::from(body)));
        let sent = match span {
            Some(span) => write.instrument(span).await,
            None => write.await,
        };
        match sent {
            Ok(Ok(())) => {
                if count > 0 {
                    frame_duration.record(started.elapsed().as_secs_f64());
                }
            }
            _ => {
                metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "peer_unreachable")
                    .increment(count as u64);
                stream = None;
                drop_queued(&mut waiting, &mut queue);
            }
        }
    }
}

/// Headers of a snapshot chunk.
const SLOT: &str = "x-paxos-snapshot-slot";
const OFFSET: &str = "x-paxos-snapshot-offset";
const TOTAL: &str = "x-paxos-snapshot-total";
const FROM: &str = "x-paxos-from";
const INCARNATIONS: &str = "x-paxos-incarnations";

/// Streams the newest wanted snapshot to the peer, chunk by chunk, from the offset the peer
/// asks for (so a cut transfer resumes); a newer snapshot replaces one in progress. Done (or
/// given up after repeated failures), the job is cleared, so the peer's next catch-up request
/// starts it again if it still needs it.
async fn send_snapshots(
    client: reqwest::Client,
    url: String,
    token: String,
    wanted: Arc<watch::Sender<Option<SnapshotJob>>>,
    limits: PeerLimits,
    shutdown: CancellationToken,
) {
    let mut jobs = wanted.subscribe();
    loop {
        let job = jobs.borrow_and_update().clone();
        let Some(job) = job else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = jobs.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let total = job.data.len();
        let incarnations = job
            .incarnations
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut offset = 0usize;
        let mut failures: u32 = 0;
        let outcome = loop {
            if shutdown.is_cancelled() {
                return;
            }
            if jobs.has_changed().unwrap_or(false) {
                break None; // a newer snapshot replaces this one
            }
            let end = (offset + limits.chunk_bytes).min(total);
            let chunk = job.data.slice(offset..end);
            let started = std::time::Instant::now();
            let sent = client
                .post(&url)
                .timeout(crate::runtime::peer_timeout(chunk.len()))
                .bearer_auth(&token)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(SLOT, job.slot)
                .header(OFFSET, offset)
                .header(TOTAL, total)
                .header(FROM, job.from)
                .header(INCARNATIONS, incarnations.as_str())
                .body(chunk)
                .send()
                .await;
            let next = match sent {
                Ok(response) if response.status().is_success() => {
                    (response.text().await.ok()).and_then(|t| t.trim().parse::<usize>().ok())
                }
                _ => None,
            };
            match next {
                Some(next) => {
                    failures = 0;
                    metrics::counter!(crate::metrics::SNAPSHOT_BYTES_SENT)
                        .increment((end - offset) as u64);
                    metrics::histogram!(crate::metrics::PEER_RPC_DURATION)
                        .record(started.elapsed().as_secs_f64());
                    if next >= total {
                        break Some(true);
                    }
                    offset = next;
                }
                None => {
                    failures = failures.saturating_add(1);
                    if failures > 20 {
                        break Some(false);
                    }
                    let backoff = Duration::from_millis((50u64 << failures.min(5)).min(1_000));
                    tokio::time::sleep(backoff).await;
                }
            }
        };
        if let Some(finished) = outcome {
            let label = if finished { "sent" } else { "given_up" };
            metrics::counter!(crate::metrics::SNAPSHOT_TRANSFERS, "outcome" => label).increment(1);
            // Clear it unless a newer one arrived meanwhile.
            wanted.send_if_modified(|current| {
                if current.as_ref().is_some_and(|c| c.slot == job.slot) {
                    *current = None;
                    return true;
                }
                false
            });
        }
    }
}

/// A chunk of a snapshot from a peer, as the receiving handler parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Sender.
    pub from: NodeId,
    /// The snapshot's slot.
    pub slot: Slot,
    /// Where this chunk starts.
    pub offset: usize,
    /// The snapshot's length.
    pub total: usize,
    /// The sender's crash vector.
    pub incarnations: Vec<u64>,
}

impl Chunk {
    /// From the request headers.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<Chunk> {
        let get = |name: &str| headers.get(name)?.to_str().ok();
        let incarnations = match get(INCARNATIONS)? {
            "" => Vec::new(),
            text => text
                .split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(Chunk {
            from: get(FROM)?.parse().ok()?,
            slot: get(SLOT)?.parse().ok()?,
            offset: get(OFFSET)?.parse().ok()?,
            total: get(TOTAL)?.parse().ok()?,
            incarnations,
        })
    }
}

fn partial_file(dir: &Path, chunk: &Chunk) -> PathBuf {
    dir.join(format!(
        "incoming-{}-{}-{}.part",
        chunk.slot, chunk.from, chunk.total
    ))
}

/// A transfer that made no progress for this long may be taken over by another sender.
pub const STALLED: Duration = Duration::from_secs(10);

/// What a received chunk led to.
#[derive(Debug)]
pub enum Received {
    /// Send from this offset next.
    Next(usize),
    /// The snapshot is complete: here it is, as a message from its sender.
    Complete(Envelope),
}

/// Appends `data` at `chunk.offset` of the partial file of this snapshot, or answers where the
/// file really ends; once complete, reads it back as the catch-up reply it replaces. One
/// transfer at a time: while another sender's transfer of the same snapshot progresses (two
/// peers may answer one lagging replica), this sender is told it is done; a stalled one
/// ([`STALLED`]) is taken over; any other partial file is removed. Blocking file I/O: call it
/// off the async workers.
pub fn receive(dir: &Path, me: NodeId, chunk: &Chunk, data: &[u8]) -> anyhow::Result<Received> {
    // Chunks are handled one at a time (two senders' first chunks must not both start a
    // transfer), and a snapshot completed here is never received again.
    static COMPLETED: std::sync::Mutex<BTreeMap<PathBuf, Slot>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut completed = COMPLETED.lock().unwrap_or_else(|e| e.into_inner());
    if completed.get(dir).is_some_and(|slot| *slot >= chunk.slot) {
        return Ok(Received::Next(chunk.total));
    }
    let received = receive_locked(dir, me, chunk, data)?;
    if matches!(received, Received::Complete(_)) {
        completed.insert(dir.to_owned(), chunk.slot);
    }
    Ok(received)
}

fn receive_locked(dir: &Path, me: NodeId, chunk: &Chunk, data: &[u8]) -> anyhow::Result<Received> {
    use std::io::Write as _;
    anyhow::ensure!(
        chunk.offset + data.len() <= chunk.total,
        "a chunk beyond the snapshot's end"
    );
    std::fs::create_dir_all(dir)?;
    let path = partial_file(dir, chunk);
    let same_slot = format!("incoming-{}-", chunk.slot);
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path() == path {
            continue;
        }
        let name = entry.file_name();
        let progressing = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < STALLED);
        if name.to_string_lossy().starts_with(&same_slot) && progressing {
            return Ok(Received::Next(chunk.total));
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let have = std::fs::metadata(&path).map_or(0, |m| m.len() as usize);
    if have != chunk.offset {
        return Ok(Received::Next(have));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(data)?;
    let have = have + data.len();
    if have < chunk.total {
        return Ok(Received::Next(have));
    }
    file.sync_all()?;
    drop(file);
    let snapshot = Bytes::from(std::fs::read(&path)?);
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(
        snapshot.len() == chunk.total,
        "the snapshot file changed size"
    );
    Ok(Received::Complete(Envelope {
        from: chunk.from,
        to: me,
        msg: Message::CatchUpReply(CatchUpReply {
            snapshot: Some((chunk.slot, snapshot)),
            entries: Vec::new(),
        }),
        incarnations: chunk.incarnations.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc as StdArc;

    use super::*;
    use crate::messages::{Accept, Value};

    fn reply(slot: Slot, entries: usize) -> Envelope {
        let value = Value::Batch(StdArc::new(vec![Bytes::from_static(b"c")]));
        Envelope::new(
            0,
            1,
            Message::CatchUpReply(CatchUpReply {
                snapshot: Some((slot, Bytes::from(vec![0u8; 1000]))),
                entries: (0..entries)
                    .map(|i| (slot + 1 + i as u64, value.clone()))
                    .collect(),
            }),
        )
    }

    /// Review item 6: a lagging replica asks every resend interval; its peer sends the snapshot
    /// once, and a newer one replaces it. Messages beyond the byte budget are dropped.
    #[tokio::test]
    async fn a_peer_sends_one_snapshot_at_a_time_and_bounds_its_queue_in_bytes() {
        let limits = PeerLimits {
            max_queued_bytes: 10_000,
            ..PeerLimits::default()
        };
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        // Nothing listens there: whatever is queued stays queued for a while.
        let peer = Peer::spawn(
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            "token",
            None,
            limits,
            16,
            shutdown.clone(),
        );
        let mut jobs = peer.snapshots.subscribe();
        assert!(peer.send(reply(5, 0), None));
        assert!(jobs.has_changed().unwrap());
        assert_eq!(jobs.borrow_and_update().as_ref().map(|j| j.slot), Some(5));
        assert!(peer.send(reply(5, 0), None));
        assert!(peer.send(reply(4, 0), None));
        assert!(
            !jobs.has_changed().unwrap(),
            "the same snapshot is not queued twice"
        );
        assert!(peer.send(reply(9, 2), None));
        assert_eq!(jobs.borrow_and_update().as_ref().map(|j| j.slot), Some(9));
        let big = Value::Batch(StdArc::new(vec![Bytes::from(vec![0u8; 20_000])]));
        let accept = Envelope::new(
            0,
            1,
            Message::Accept(Accept {
                lane: 0,
                ballot: crate::Ballot::default(),
                entries: vec![(1, big)],
                decided_up_to: 0,
            }),
        );
        assert!(
            !peer.send(accept, None),
            "20 kB over a 10 kB budget is dropped"
        );
    }

    /// A peer's end of the stream, by hand: accepts connections, checks nothing, hands each
    /// request's head to `heads`, answers 101, then hands every frame's messages (with the
    /// connection's number) to `frames`, and closes each connection after `per_connection`
    /// frames.
    async fn stream_receiver(
        per_connection: usize,
        frames: mpsc::UnboundedSender<(usize, Vec<Envelope>)>,
        heads: mpsc::UnboundedSender<String>,
    ) -> String {
        use futures::StreamExt as _;
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for connection in 0.. {
                let (socket, _) = listener.accept().await.unwrap();
                let mut reader = tokio::io::BufReader::new(socket);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line.to_ascii_lowercase());
                }
                let _ = heads.send(head);
                reader
                    .get_mut()
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                          upgrade: paxos-peer/1\r\n\r\n",
                    )
                    .await
                    .unwrap();
                let frames = frames.clone();
                tokio::spawn(async move {
                    let mut read =
                        tokio_util::codec::FramedRead::new(reader, stream_codec(1 << 20));
                    for _ in 0..per_connection {
                        let Some(Ok(frame)) = read.next().await else {
                            return;
                        };
                        let (_, envelopes) = decode_frame(&frame).expect("a frame decodes");
                        let _ = frames.send((connection, envelopes));
                    }
                });
            }
        });
        url
    }

    fn heartbeat(to: NodeId) -> Envelope {
        Envelope::new(
            0,
            to,
            Message::Heartbeat(crate::messages::Heartbeat {
                leading: Vec::new(),
                decided: 7,
                frontier: 7,
                read_seq: 0,
            }),
        )
    }

    /// Messages travel as frames on one upgraded connection that stays open (no request or
    /// answer per batch); when the peer drops it, the sender opens a new one and goes on.
    #[tokio::test]
    async fn messages_stream_over_one_connection_and_a_dropped_stream_is_reopened() {
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let (heads_tx, mut heads) = mpsc::unbounded_channel();
        let url = stream_receiver(3, frames_tx, heads_tx).await;
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let peer = Peer::spawn(
            reqwest::Client::new(),
            &url,
            "the-token",
            Some(2),
            PeerLimits::default(),
            64,
            shutdown.clone(),
        );
        let mut seen = Vec::new();
        for round in 0..3 {
            assert!(peer.send(heartbeat(1), None));
            let (connection, envelopes) =
                tokio::time::timeout(Duration::from_secs(5), frames.recv())
                    .await
                    .expect("a frame")
                    .unwrap();
            assert_eq!(envelopes.len(), 1, "round {round}");
            assert!(matches!(envelopes[0].msg, Message::Heartbeat(_)));
            seen.push(connection);
        }
        assert_eq!(seen, [0, 0, 0], "one connection carries every frame");
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("get /peer/stream http/1.1"), "{head}");
        assert!(head.contains("authorization: bearer the-token"), "{head}");
        assert!(head.contains("upgrade: paxos-peer/1"), "{head}");
        assert!(head.contains("x-paxos-from: 2"), "{head}");
        assert!(heads.try_recv().is_err(), "no second request");

        // The receiver closed that connection after its third frame: the next writes fail
        // (one may vanish into the closing socket, as any message may), and the sender opens a
        // second stream that carries the rest.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let reconnected = loop {
            assert!(tokio::time::Instant::now() < deadline, "no second stream");
            peer.send(heartbeat(1), None);
            if let Ok(Some((connection, _))) =
                tokio::time::timeout(Duration::from_millis(100), frames.recv()).await
            {
                break connection;
            }
        };
        assert_eq!(reconnected, 1);
        assert!(heads.recv().await.unwrap().starts_with("get /peer/stream"));
    }

    fn chunk(offset: usize, total: usize) -> Chunk {
        Chunk {
            from: 1,
            slot: 9,
            offset,
            total,
            incarnations: vec![0, 2],
        }
    }

    #[test]
    fn chunks_append_resume_and_complete_into_the_catch_up_reply() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        assert!(matches!(
            receive(dir.path(), 0, &chunk(0, 100), &data[..40]).unwrap(),
            Received::Next(40)
        ));
        // A resend of a chunk already written (its answer was lost) is answered with the end.
        assert!(matches!(
            receive(dir.path(), 0, &chunk(0, 100), &data[..40]).unwrap(),
            Received::Next(40)
        ));
        let Received::Complete(envelope) =
            receive(dir.path(), 0, &chunk(40, 100), &data[40..]).unwrap()
        else {
            panic!("complete");
        };
        assert_eq!(envelope.from, 1);
        assert_eq!(envelope.incarnations, vec![0, 2]);
        let Message::CatchUpReply(reply) = envelope.msg else {
            panic!("a catch-up reply");
        };
        assert_eq!(reply.snapshot, Some((9, Bytes::from(data))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_newer_snapshot_replaces_an_unfinished_one() {
        let dir = tempfile::tempdir().unwrap();
        receive(dir.path(), 0, &chunk(0, 100), &[1; 10]).unwrap();
        let newer = Chunk {
            slot: 12,
            ..chunk(0, 50)
        };
        receive(dir.path(), 0, &newer, &[2; 10]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(receive(dir.path(), 0, &chunk(95, 100), &[0; 10]).is_err());
    }

    /// Two peers answering one lagging replica do not send it two copies at once.
    #[test]
    fn a_second_sender_of_the_same_snapshot_is_told_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        receive(dir.path(), 0, &chunk(0, 100), &[1; 10]).unwrap();
        let other = Chunk {
            from: 2,
            ..chunk(0, 100)
        };
        assert!(matches!(
            receive(dir.path(), 0, &other, &[1; 10]).unwrap(),
            Received::Next(100)
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
