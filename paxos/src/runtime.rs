//! The `paxos` process: drives a [`Replica`] with real time, durable storage and HTTP.
//!
//! One driver task owns the replica and runs a `tokio::select!` loop over the tick interval,
//! inbound peer messages and requests from the local `node`. After every burst of inputs it
//! follows the driver contract of the crate docs: persist and fsync (one redb transaction for
//! everything the burst produced, so many messages share one sync), then hand messages to the
//! per-peer senders, then answer whoever waits for decided entries.
//!
//! HTTP routes (one port; every route needs `Authorization: Bearer <cluster token>`):
//! - `POST /peer/messages`: postcard `Vec<Envelope>` from a peer;
//! - `POST /local/propose`: postcard `Vec<Bytes>` commands -> one [`ProposeReply`] each, once
//!   all are decided here, handed back, or refused;
//! - `GET /local/entries?from=&max=&wait_ms=`: decided entries from a slot -> [`EntriesReply`]
//!   (long poll), or the snapshot when those slots were compacted;
//! - `POST /local/read_index` -> [`ReadIndexReply`]; `POST /local/compact`: postcard
//!   `(Slot, Bytes)`;
//! - `GET /status`, `POST /elect` (JSON [`StatusReply`]), `POST /shutdown`, `GET /metrics`,
//!   `GET /healthz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes as BodyBytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ballot::{NodeId, Slot};
use crate::core::{
    Config, Metrics, Mode, Observation, ProposeError, ReadResult, Ready, Replica, Status,
};
use crate::messages::{Envelope, Message, Value};
use crate::storage::{RedbStorage, Storage};
use crate::transfer::{Chunk, Peer, PeerLimits, Received};

/// Answer to `POST /local/propose`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeReply {
    /// Decided at this slot (this replica has it; apply up to here to see the outcome).
    Decided {
        /// The slot.
        slot: Slot,
    },
    /// Leader mode and this replica does not lead: send it to `leader`.
    NotLeader {
        /// Best guess.
        leader: Option<NodeId>,
    },
    /// Handed back, never decided (it never got a slot, or another value took its slot): safe
    /// to retry.
    Dropped,
    /// Too many pending commands.
    Overloaded,
    /// No decision in time: it may still be decided.
    Timeout,
    /// Its fate was lost (a snapshot from a peer replaced the slots it was proposed in): it may
    /// have been decided. Retry only with the same idempotency key, to learn the outcome.
    OutcomeUnknown,
}

/// What each command the core reported on is told: decided, handed back (never decided, safe
/// to retry), or of unknown fate (it may have been decided: only a retry with its idempotency
/// key is safe).
pub fn answers(ready: &Ready) -> impl Iterator<Item = (&Bytes, ProposeReply)> {
    let decided = ready.decided.iter().flat_map(|(slot, value)| {
        value
            .commands()
            .iter()
            .map(|c| (c, ProposeReply::Decided { slot: *slot }))
    });
    let dropped = ready.dropped.iter().map(|c| (c, ProposeReply::Dropped));
    let unknown = (ready.outcome_unknown.iter()).map(|c| (c, ProposeReply::OutcomeUnknown));
    decided.chain(dropped).chain(unknown)
}

/// Answer to `GET /local/entries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntriesReply {
    /// Consecutive decided entries from the requested slot (empty: none yet).
    Entries(Vec<(Slot, Value)>),
    /// The requested slots were compacted: install this application snapshot first.
    Snapshot {
        /// Last slot it covers.
        slot: Slot,
        /// The application's bytes.
        data: Bytes,
    },
}

/// Answer to `POST /local/read_index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// Apply up to `index`, then read.
    Ready {
        /// The read point.
        index: Slot,
    },
    /// Not the leader (or leaderless mode).
    NotLeader {
        /// Best guess.
        leader: Option<NodeId>,
    },
}

/// `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// `leader` or `leaderless`.
    pub mode: String,
    /// The core's view.
    #[serde(flatten)]
    pub status: Status,
    /// Counters.
    pub metrics: Metrics,
}

/// Everything the process needs.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// This replica and the cluster shape.
    pub core: Config,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Base URLs of every replica's paxos process, indexed by id (own entry unused).
    pub peers: Vec<String>,
    /// Where the acceptor state lives (`paxos.redb`).
    pub data_dir: PathBuf,
    /// The cluster token.
    pub token: String,
    /// Milliseconds per tick.
    pub tick_ms: u64,
    /// Most messages queued for one peer before new ones are dropped.
    pub peer_queue: usize,
    /// Byte limits of the transport between paxos processes.
    pub peer_limits: PeerLimits,
    /// How to start with an empty data dir (`None`: refuse to).
    pub initial_cluster_state: Option<InitialClusterState>,
    /// A read-only credential: it reads `/metrics` and nothing else (Prometheus scrapes with it;
    /// the cluster token still reads `/metrics` too).
    pub metrics_token: Option<String>,
}

enum LocalRequest {
    Propose {
        commands: Vec<Bytes>,
        /// The proposing request's trace, when sampled.
        trace: Option<telemetry::trace::Context>,
        reply: oneshot::Sender<Vec<ProposeReply>>,
    },
    Entries {
        from: Slot,
        max: usize,
        wait: bool,
        reply: oneshot::Sender<EntriesReply>,
    },
    ReadIndex {
        reply: oneshot::Sender<ReadIndexReply>,
    },
    Compact {
        slot: Slot,
        data: Bytes,
    },
    Status {
        reply: oneshot::Sender<StatusReply>,
    },
    Elect {
        reply: oneshot::Sender<StatusReply>,
    },
}

#[derive(Clone)]
struct HttpState {
    requests: mpsc::Sender<LocalRequest>,
    inbound: mpsc::Sender<Vec<Envelope>>,
    token: Arc<str>,
    metrics_token: Option<Arc<str>>,
    shutdown: CancellationToken,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Where snapshots are staged before the driver records them.
    snapshots: Arc<std::path::Path>,
    /// Cancelled the moment the driver task ends: `/healthz` fails from then on.
    driver_gone: CancellationToken,
    /// This replica.
    me: NodeId,
    /// The replica's contiguous decided index, as of the driver's last step.
    decided: Arc<std::sync::atomic::AtomicU64>,
    /// Where snapshot chunks from peers are assembled.
    incoming: Arc<std::path::Path>,
}

/// Largest request body: a snapshot (every account and retained idempotency record of the bank:
/// about 270 bytes per record, so a million retained keys make ~270 MB) travels whole in
/// `/local/compact` and in a peer's catch-up reply. Every route checks the cluster token before
/// reading a body.
pub const MAX_BODY_BYTES: usize = 1 << 30;

/// Time allowed for one call carrying `bytes` to a peer: 2 s, plus 1 s per 16 MiB (a snapshot
/// of hundreds of megabytes over a real network).
pub(crate) fn peer_timeout(bytes: usize) -> Duration {
    Duration::from_secs(2) + Duration::from_secs((bytes >> 24) as u64)
}

/// Runs the paxos process until `shutdown` is cancelled (or `POST /shutdown`), on the redb
/// storage in `cfg.data_dir`. Returns an error, at once, if the driver stops for any other
/// reason (a storage error, a failed assertion): the process must then exit non-zero so that
/// its supervisor restarts it, rather than go on answering with nobody deciding anything.
pub async fn run(
    cfg: RuntimeConfig,
    listener: tokio::net::TcpListener,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("paxos.redb");
    let storage =
        RedbStorage::open(&path).with_context(|| format!("opening {}", path.display()))?;
    run_with_storage(cfg, Box::new(storage), listener, metrics, shutdown).await
}

/// [`run`] over any storage (tests use one that fails on purpose).
pub async fn run_with_storage(
    cfg: RuntimeConfig,
    storage: Box<dyn Storage + Send>,
    listener: tokio::net::TcpListener,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    cfg.core.validate().map_err(anyhow::Error::msg)?;
    let path = cfg.data_dir.join("paxos.redb");
    let state = storage.load()?;
    if state.is_empty() {
        match cfg.initial_cluster_state {
            None => anyhow::bail!(
                "{} holds no paxos state: pass --initial-cluster-state new for the first start \
                 of a new cluster, or existing if this replica lost its data (it then recovers \
                 from a majority of the others before it votes)",
                cfg.data_dir.display()
            ),
            Some(InitialClusterState::Existing) => {}
            Some(InitialClusterState::New) => refuse_if_the_cluster_exists(&cfg).await?,
        }
    }
    let replica = Replica::new(cfg.core.clone(), state);
    let (requests_tx, requests_rx) = mpsc::channel(4_096);
    let (inbound_tx, inbound_rx) = mpsc::channel(1_024);
    let client = reqwest::Client::builder()
        .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(4)
        .build()?;
    let mut outbound = Vec::new();
    for (id, url) in cfg.peers.iter().enumerate() {
        if id as NodeId == cfg.core.id {
            outbound.push(None);
            continue;
        }
        outbound.push(Some(Peer::spawn(
            client.clone(),
            url,
            &cfg.token,
            cfg.peer_limits,
            cfg.peer_queue,
            shutdown.clone(),
        )));
    }
    let decided = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let driver = Driver {
        decided: decided.clone(),
        exported: Metrics::default(),
        replica,
        storage,
        outbound,
        traced_batches: 0,
        election_started: None,
        mode: cfg.core.mode,
        proposals: HashMap::new(),
        batches: HashMap::new(),
        next_batch: 0,
        entry_waiters: Vec::new(),
        read_waiters: HashMap::new(),
        next_read: 1,
    };
    let driver_gone = CancellationToken::new();
    let mut driver_task = {
        let (gone, driver) = (driver_gone.clone(), driver);
        let run = driver.run(cfg.tick_ms, requests_rx, inbound_rx, shutdown.clone());
        tokio::spawn(async move {
            let _gone = gone.drop_guard();
            run.await
        })
    };
    let state = HttpState {
        snapshots: crate::storage::snapshot_dir(&path).into(),
        requests: requests_tx,
        inbound: inbound_tx,
        token: cfg.token.clone().into(),
        metrics_token: cfg.metrics_token.clone().map(Into::into),
        shutdown: shutdown.clone(),
        metrics,
        driver_gone,
        me: cfg.core.id,
        decided: decided.clone(),
        incoming: cfg.data_dir.join("paxos.incoming").into(),
    };
    let app = router(state, cfg.peer_limits.max_body_bytes);
    let server = plumbing::serve(
        listener,
        app,
        plumbing::Limits::DEFAULT,
        shutdown.clone().cancelled_owned(),
    );
    tokio::select! {
        served = server => {
            served?;
            shutdown.cancel();
            driver_task.await.context("driver task")??;
            Ok(())
        }
        ended = &mut driver_task => {
            let stopping = shutdown.is_cancelled();
            shutdown.cancel();
            let err = match ended {
                Ok(Ok(())) if stopping => return Ok(()),
                Ok(Ok(())) => anyhow::anyhow!("the driver stopped without a shutdown"),
                Ok(Err(err)) => err,
                Err(join) => anyhow::anyhow!("the driver panicked: {join}"),
            };
            tracing::error!(error = %format!("{err:#}"), "paxos driver failed; the process exits");
            Err(err.context("paxos driver failed"))
        }
    }
}

/// A replica told `new` with an empty data dir must not vote as new in a cluster that already
/// decided something: its disk was lost, and voting with forgotten promises breaks safety. It
/// asks every peer it can reach (1 s each); any that decided a slot proves the cluster exists.
/// Best effort: peers that do not answer are taken for peers still starting.
async fn refuse_if_the_cluster_exists(cfg: &RuntimeConfig) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
        .timeout(Duration::from_secs(1))
        .build()?;
    let mut asks = tokio::task::JoinSet::new();
    for (id, url) in cfg.peers.iter().enumerate() {
        if id as NodeId == cfg.core.id {
            continue;
        }
        let request = client
            .get(format!("{}/status", url.trim_end_matches('/')))
            .bearer_auth(&cfg.token);
        let url = url.clone();
        asks.spawn(async move {
            let status = request
                .send()
                .await
                .ok()?
                .json::<StatusReply>()
                .await
                .ok()?;
            Some((id, url, status.status.decided))
        });
    }
    while let Some(answer) = asks.join_next().await {
        let Ok(Some((id, url, decided))) = answer else {
            continue;
        };
        anyhow::ensure!(
            decided == 0,
            "--initial-cluster-state new, but replica {id} ({url}) has decided {decided} slots: \
             this cluster exists and this replica's data dir is empty (its data was lost?). \
             Start it with --initial-cluster-state existing to rejoin safely"
        );
    }
    Ok(())
}

/// Liveness: false from the moment the driver is gone (the process is exiting).
async fn healthz(State(state): State<HttpState>) -> Response {
    if state.driver_gone.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the paxos driver stopped").into_response();
    }
    "ok".into_response()
}

fn router(state: HttpState, peer_body: usize) -> Router {
    Router::new()
        .route(
            "/peer/messages",
            post(peer_messages).layer(axum::extract::DefaultBodyLimit::max(peer_body)),
        )
        .route(
            "/peer/snapshot",
            post(peer_snapshot).layer(axum::extract::DefaultBodyLimit::max(peer_body)),
        )
        .route("/local/propose", post(propose))
        .route("/local/entries", get(entries))
        .route("/local/read_index", post(read_index))
        .route("/local/compact", post(compact))
        .route("/status", get(status))
        .route("/elect", post(elect))
        .route("/shutdown", post(shutdown))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(trace_http))
        .with_state(state)
}

/// A server span for requests that are part of a trace (they carry `traceparent`): the node's
/// proposals and reads, a peer's messages for a traced slot. Polls and peer traffic of untraced
/// work start no traces of their own.
async fn trace_http(mut request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    if !request.headers().contains_key("traceparent") {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |p| p.as_str().to_owned(),
        );
    let method = request.method().as_str().to_owned();
    let span = telemetry::trace::http_server_span(&method, &route, request.headers_mut());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let scrape = request.uri().path() == "/metrics"
        && (state.metrics_token.as_deref())
            .is_some_and(|metrics| bearer_matches(request.headers(), metrics));
    if scrape || bearer_matches(request.headers(), &state.token) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "a valid cluster token is required",
        )
            .into_response()
    }
}

/// Constant-time comparison of a presented token with the cluster token: the time taken does not
/// reveal how much of it matched. An empty expected token matches nothing.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether `Authorization: Bearer <token>` carries the cluster token (every internal route of
/// every process checks it this way).
pub fn bearer_matches(headers: &axum::http::HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(presented, expected)
}

fn postcard_response<T: Serialize>(value: &T) -> Response {
    match postcard::to_stdvec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the paxos driver is not running",
    )
        .into_response()
}

async fn ask<T>(
    state: &HttpState,
    make: impl FnOnce(oneshot::Sender<T>) -> LocalRequest,
) -> Option<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    state.requests.send(make(tx)).await.ok()?;
    Some(rx)
}

/// A chunk of a snapshot a peer sends this lagging replica (see [`crate::transfer`]): answers
/// the offset to send next; the last chunk hands the whole snapshot to the driver.
async fn peer_snapshot(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    body: BodyBytes,
) -> Response {
    let Some(chunk) = Chunk::from_headers(&headers) else {
        return (StatusCode::BAD_REQUEST, "missing snapshot chunk headers").into_response();
    };
    if chunk.slot <= state.decided.load(std::sync::atomic::Ordering::Relaxed) {
        // Already past it (another peer's copy arrived first): the sender may stop.
        return chunk.total.to_string().into_response();
    }
    let (dir, me) = (state.incoming.clone(), state.me);
    let received =
        tokio::task::spawn_blocking(move || crate::transfer::receive(&dir, me, &chunk, &body))
            .await;
    match received {
        Ok(Ok(Received::Next(offset))) => offset.to_string().into_response(),
        Ok(Ok(Received::Complete(envelope))) => {
            let Message::CatchUpReply(reply) = &envelope.msg else {
                unreachable!("receive completes a catch-up reply")
            };
            let total = reply.snapshot.as_ref().map_or(0, |(_, d)| d.len());
            // Unlike ordinary messages this one is not dropped when the driver is busy: it is
            // the end of a long transfer.
            if state.inbound.send(vec![envelope]).await.is_err() {
                return unavailable();
            }
            metrics::counter!("paxos_snapshots_received_total").increment(1);
            total.to_string().into_response()
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %format!("{err:#}"), "snapshot chunk refused");
            (StatusCode::BAD_REQUEST, err.to_string()).into_response()
        }
        Err(_) => unavailable(),
    }
}

async fn peer_messages(State(state): State<HttpState>, body: BodyBytes) -> Response {
    let Ok(envelopes) = postcard::from_bytes::<Vec<Envelope>>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a postcard Vec<Envelope>").into_response();
    };
    // Paxos tolerates loss: when the driver is behind, drop rather than queue without bound.
    if state.inbound.try_send(envelopes).is_err() {
        metrics::counter!("paxos_messages_dropped_total", "reason" => "inbound_full").increment(1);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn propose(State(state): State<HttpState>, body: BodyBytes) -> Response {
    let Ok(commands) = postcard::from_bytes::<Vec<Bytes>>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a postcard Vec<Bytes>").into_response();
    };
    if commands.is_empty() || commands.len() > 4_096 {
        return (StatusCode::BAD_REQUEST, "1 to 4096 commands per call").into_response();
    }
    let count = commands.len();
    let trace = telemetry::trace::current_sampled();
    let Some(rx) = ask(&state, |reply| LocalRequest::Propose {
        commands,
        trace,
        reply,
    })
    .await
    else {
        return unavailable();
    };
    // Error statuses mean "not proposed" to the node (safe to retry); once the driver holds the
    // commands, every answer is a reply, and a lost one is an unknown outcome.
    let replies = match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(replies)) => replies,
        Ok(Err(_)) => vec![ProposeReply::OutcomeUnknown; count],
        Err(_) => vec![ProposeReply::Timeout; count],
    };
    postcard_response(&replies)
}

#[derive(Deserialize)]
struct EntriesQuery {
    from: Slot,
    max: Option<usize>,
    wait_ms: Option<u64>,
}

async fn entries(State(state): State<HttpState>, Query(q): Query<EntriesQuery>) -> Response {
    let max = q.max.unwrap_or(1_024).clamp(1, 16_384);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    let from = q.from.max(1);
    let Some(rx) = ask(&state, |reply| LocalRequest::Entries {
        from,
        max,
        wait: !wait.is_zero(),
        reply,
    })
    .await
    else {
        return unavailable();
    };
    let reply = match tokio::time::timeout(wait.max(Duration::from_millis(1)), rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => return unavailable(),
        Err(_) => EntriesReply::Entries(Vec::new()),
    };
    postcard_response(&reply)
}

async fn read_index(State(state): State<HttpState>) -> Response {
    let Some(rx) = ask(&state, |reply| LocalRequest::ReadIndex { reply }).await else {
        return unavailable();
    };
    match tokio::time::timeout(Duration::from_secs(2), rx).await {
        Ok(Ok(reply)) => postcard_response(&reply),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "no read point in time").into_response(),
    }
}

async fn compact(State(state): State<HttpState>, body: BodyBytes) -> Response {
    let Ok((slot, data)) = postcard::from_bytes::<(Slot, Bytes)>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a postcard (Slot, Bytes)").into_response();
    };
    // Write and sync the snapshot here, beside the driver: the driver then only records it.
    let dir = state.snapshots.clone();
    let staged = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || crate::storage::stage_snapshot(&dir, slot, &data)).await
    };
    match staged {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(slot, error = %e, "staging a snapshot failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        Err(_) => return unavailable(),
    }
    match state
        .requests
        .send(LocalRequest::Compact { slot, data })
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => unavailable(),
    }
}

async fn status(State(state): State<HttpState>) -> Response {
    let Some(rx) = ask(&state, |reply| LocalRequest::Status { reply }).await else {
        return unavailable();
    };
    match rx.await {
        Ok(reply) => Json(reply).into_response(),
        Err(_) => unavailable(),
    }
}

async fn elect(State(state): State<HttpState>) -> Response {
    let Some(rx) = ask(&state, |reply| LocalRequest::Elect { reply }).await else {
        return unavailable();
    };
    match rx.await {
        Ok(reply) => Json(reply).into_response(),
        Err(_) => unavailable(),
    }
}

async fn shutdown(State(state): State<HttpState>) -> &'static str {
    state.shutdown.cancel();
    "Server shut down..."
}

async fn metrics_text(State(state): State<HttpState>) -> Response {
    metrics_response(state.metrics.as_deref())
}

/// The `/metrics` answer of every process: Prometheus text, or 404 when metrics are off.
pub fn metrics_response(render: Option<&(dyn Fn() -> String + Send + Sync)>) -> Response {
    match render {
        Some(render) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}

/// HELP texts of every metric the paxos process exports.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "paxos_commands_proposed_total",
        "Client commands accepted by propose"
    );
    describe_counter!(
        "paxos_slots_proposed_total",
        "Slots this replica proposed (phase 2 instances it led), no-ops included"
    );
    describe_counter!(
        "paxos_noops_proposed_total",
        "No-op slots proposed (skips and recovery)"
    );
    describe_counter!(
        "paxos_phase1_rounds_total",
        "Phase 1 rounds started (elections, lane takeovers)"
    );
    describe_counter!(
        "paxos_phase2_messages_total",
        "Phase 2 (accept) messages sent"
    );
    describe_counter!(
        "paxos_elections_started_total",
        "Elections or lane takeovers started"
    );
    describe_counter!(
        "paxos_elections_won_total",
        "Elections or lane takeovers won"
    );
    describe_counter!(
        "paxos_leader_changes_total",
        "Times the believed holder of a lane changed"
    );
    describe_counter!("paxos_slots_decided_total", "Slots learned decided");
    describe_counter!(
        "paxos_messages_total",
        "Protocol messages by direction and type"
    );
    describe_counter!(
        "paxos_messages_dropped_total",
        "Messages dropped, by reason (full queues, unreachable peers)"
    );
    describe_gauge!("paxos_decided_index", "Contiguous decided index");
    describe_gauge!("paxos_frontier_slot", "Highest slot seen proposed");
    describe_gauge!("paxos_compacted_index", "Last slot covered by the snapshot");
    describe_gauge!("paxos_ballot_round", "Round of the highest promised ballot");
    describe_gauge!("paxos_pending_commands", "Commands waiting for a slot");
    describe_gauge!("paxos_is_leader", "1 if this replica leads (leader mode)");
    describe_gauge!("paxos_lanes_led", "Lanes this replica leads");
    describe_gauge!("paxos_leader_id", "Believed leader (leader mode; -1: none)");
    describe_gauge!(
        "paxos_recovering",
        "1 while a rejoining replica recovers its state"
    );
    describe_histogram!(
        "paxos_batch_size",
        "Commands per slot this replica proposed"
    );
    describe_histogram!(
        "paxos_commit_latency_seconds",
        Unit::Seconds,
        "Wall-clock time from a node's propose call to every command of it decided (the Paxos round, phase 2)"
    );
    describe_histogram!(
        "paxos_phase1_duration_seconds",
        Unit::Seconds,
        "Wall-clock time from starting an election (phase 1) to winning it"
    );
    describe_histogram!(
        "paxos_slot_commit_ticks",
        "Ticks from proposing a slot to learning it decided, as the core counts them"
    );
    describe_histogram!(
        "paxos_persist_duration_seconds",
        Unit::Seconds,
        "Write and fsync of one burst of acceptor state"
    );
    describe_histogram!(
        "paxos_peer_rpc_duration_seconds",
        Unit::Seconds,
        "One batch of messages to a peer"
    );
}

fn count_message(direction: &'static str, envelope: &Envelope) {
    metrics::counter!("paxos_messages_total", "direction" => direction, "type" => envelope.msg.kind()).increment(1);
}

/// Most long polls of `/local/entries` waiting at once (one node normally keeps one open).
const MAX_ENTRY_WAITERS: usize = 64;

struct BatchWaiter {
    replies: Vec<Option<ProposeReply>>,
    remaining: usize,
    reply: oneshot::Sender<Vec<ProposeReply>>,
    /// `paxos.commit`, open from propose until every command is decided (or handed back), when
    /// the proposing request is sampled: the Paxos round of that request's trace.
    span: Option<tracing::Span>,
    /// When the node proposed it (for `paxos_commit_latency_seconds`).
    proposed_at: std::time::Instant,
}

struct Driver {
    /// Counters already exported (the core's are cumulative).
    exported: Metrics,
    replica: Replica,
    storage: Box<dyn Storage + Send>,
    outbound: Vec<Option<Peer>>,
    /// Shared with the HTTP handlers: the contiguous decided index.
    decided: Arc<std::sync::atomic::AtomicU64>,
    mode: Mode,
    /// Batches whose `span` is set (accepts for their commands carry the trace to peers).
    traced_batches: usize,
    /// When the election in progress started (for `paxos_phase1_duration_seconds`).
    election_started: Option<std::time::Instant>,
    /// Command -> (batch, position in it).
    proposals: HashMap<Bytes, (u64, usize)>,
    batches: HashMap<u64, BatchWaiter>,
    next_batch: u64,
    entry_waiters: Vec<(Slot, usize, oneshot::Sender<EntriesReply>)>,
    read_waiters: HashMap<u64, oneshot::Sender<ReadIndexReply>>,
    next_read: u64,
}

impl Driver {
    async fn run(
        mut self,
        tick_ms: u64,
        mut requests: mpsc::Receiver<LocalRequest>,
        mut inbound: mpsc::Receiver<Vec<Envelope>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(Duration::from_millis(tick_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        self.after_inputs().await?;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    self.replica.tick();
                    ticks += 1;
                    if ticks.is_multiple_of(100) {
                        self.batches.retain(|_, batch| !batch.reply.is_closed());
                        self.traced_batches =
                            self.batches.values().filter(|b| b.span.is_some()).count();
                        self.read_waiters.retain(|_, reply| !reply.is_closed());
                        let batches = &self.batches;
                        self.proposals.retain(|_, (batch, _)| batches.contains_key(batch));
                        self.entry_waiters.retain(|(_, _, reply)| !reply.is_closed());
                    }
                }
                Some(envelopes) = inbound.recv() => {
                    for envelope in envelopes {
                        count_message("received", &envelope);
                        self.replica.handle(envelope);
                    }
                }
                Some(request) = requests.recv() => self.local(request),
            }
            // Take whatever else is already waiting, so one fsync covers the whole burst.
            for _ in 0..64 {
                match inbound.try_recv() {
                    Ok(envelopes) => envelopes.into_iter().for_each(|e| {
                        count_message("received", &e);
                        self.replica.handle(e);
                    }),
                    Err(_) => break,
                }
            }
            for _ in 0..1_024 {
                match requests.try_recv() {
                    Ok(request) => self.local(request),
                    Err(_) => break,
                }
            }
            self.after_inputs().await?;
        }
    }

    fn local(&mut self, request: LocalRequest) {
        match request {
            LocalRequest::Propose {
                commands,
                trace,
                reply,
            } => {
                let count = commands.len();
                match self.replica.propose(commands.clone()) {
                    Ok(()) => {
                        let batch = self.next_batch;
                        self.next_batch += 1;
                        for (position, command) in commands.into_iter().enumerate() {
                            self.proposals.insert(command, (batch, position));
                        }
                        let span = trace
                            .and_then(|cx| telemetry::trace::batch_span("paxos.commit", [&cx]));
                        self.traced_batches += usize::from(span.is_some());
                        let waiter = BatchWaiter {
                            replies: vec![None; count],
                            remaining: count,
                            reply,
                            span,
                            proposed_at: std::time::Instant::now(),
                        };
                        self.batches.insert(batch, waiter);
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        let _ = reply.send(vec![ProposeReply::NotLeader { leader }; count]);
                    }
                    Err(ProposeError::Overloaded) => {
                        let _ = reply.send(vec![ProposeReply::Overloaded; count]);
                    }
                }
            }
            LocalRequest::Entries {
                from,
                max,
                wait,
                reply,
            } => {
                if let Some(answer) = self.entries_for(from, max) {
                    let _ = reply.send(answer);
                } else if wait && self.entry_waiters.len() < MAX_ENTRY_WAITERS {
                    self.entry_waiters.push((from, max, reply));
                } else {
                    // Nothing yet (or too many long polls already waiting): answer empty now.
                    let _ = reply.send(EntriesReply::Entries(Vec::new()));
                }
            }
            LocalRequest::ReadIndex { reply } => {
                let id = self.next_read;
                self.next_read += 1;
                match self.replica.read_index(id) {
                    Ok(()) => {
                        self.read_waiters.insert(id, reply);
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        let _ = reply.send(ReadIndexReply::NotLeader { leader });
                    }
                    Err(ProposeError::Overloaded) => {
                        let _ = reply.send(ReadIndexReply::NotLeader { leader: None });
                    }
                }
            }
            LocalRequest::Compact { slot, data } => self.replica.compact(slot, data),
            LocalRequest::Status { reply } => {
                let _ = reply.send(self.status());
            }
            LocalRequest::Elect { reply } => {
                self.replica.start_election();
                let _ = reply.send(self.status());
            }
        }
    }

    fn resolve(&mut self, command: &Bytes, answer: ProposeReply) {
        let Some((batch, position)) = self.proposals.remove(command) else {
            return;
        };
        let Some(waiter) = self.batches.get_mut(&batch) else {
            return;
        };
        if waiter.replies[position].is_none() {
            waiter.replies[position] = Some(answer);
            waiter.remaining -= 1;
        }
        if waiter.remaining == 0 {
            let waiter = self.batches.remove(&batch).expect("present");
            if waiter
                .replies
                .iter()
                .all(|r| matches!(r, Some(ProposeReply::Decided { .. })))
            {
                metrics::histogram!("paxos_commit_latency_seconds")
                    .record(waiter.proposed_at.elapsed().as_secs_f64());
            }
            if waiter.span.is_some() {
                self.traced_batches -= 1;
            }
            let replies = waiter
                .replies
                .into_iter()
                .map(|r| r.expect("all resolved"))
                .collect();
            let _ = waiter.reply.send(replies);
        }
    }

    /// The trace of a traced proposal whose commands this accept carries. Only looked for while
    /// some proposal is traced, so unsampled traffic pays one comparison.
    fn trace_of(&self, envelope: &Envelope) -> Option<telemetry::trace::Context> {
        if self.traced_batches == 0 {
            return None;
        }
        let crate::messages::Message::Accept(accept) = &envelope.msg else {
            return None;
        };
        accept
            .entries
            .iter()
            .flat_map(|(_, value)| value.commands())
            .find_map(|command| {
                let (batch, _) = self.proposals.get(command)?;
                let span = self.batches.get(batch)?.span.as_ref()?;
                telemetry::trace::sampled_context(span)
            })
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            mode: match self.mode {
                Mode::Leader => "leader".to_owned(),
                Mode::Leaderless => "leaderless".to_owned(),
            },
            status: self.replica.status(),
            metrics: self.replica.metrics().clone(),
        }
    }

    /// Entries from `from`, the snapshot if they were compacted, or `None` if nothing yet.
    fn entries_for(&self, from: Slot, max: usize) -> Option<EntriesReply> {
        if let Some((slot, data)) = self.replica.snapshot()
            && from <= slot
        {
            return Some(EntriesReply::Snapshot { slot, data });
        }
        let entries = self.replica.decided_entries(from, max);
        (!entries.is_empty()).then_some(EntriesReply::Entries(entries))
    }

    async fn after_inputs(&mut self) -> anyhow::Result<()> {
        let mut ready = self.replica.take_ready();
        if ready.is_empty() {
            return Ok(());
        }
        // 1-2: persist and sync before anything leaves. A storage error is fatal.
        if !ready.persist.is_empty() {
            let started = std::time::Instant::now();
            tokio::task::block_in_place(|| self.storage.write(&ready.persist))
                .context("paxos storage failed; stopping")?;
            metrics::histogram!("paxos_persist_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        // 3: send.
        for envelope in std::mem::take(&mut ready.messages) {
            count_message("sent", &envelope);
            let trace = self.trace_of(&envelope);
            if let Some(Some(peer)) = self.outbound.get(envelope.to as usize) {
                peer.send(envelope, trace);
            }
        }
        // 4-6: tell the local node.
        if !self.proposals.is_empty() {
            for (command, answer) in answers(&ready) {
                self.resolve(command, answer);
            }
        }
        for read in ready.reads {
            match read {
                ReadResult::Ready { id, index } => {
                    if let Some(reply) = self.read_waiters.remove(&id) {
                        let _ = reply.send(ReadIndexReply::Ready { index });
                    }
                }
                ReadResult::Failed { id } => {
                    if let Some(reply) = self.read_waiters.remove(&id) {
                        let _ = reply.send(ReadIndexReply::NotLeader { leader: None });
                    }
                }
            }
        }
        if !self.entry_waiters.is_empty() && (!ready.decided.is_empty() || ready.snapshot.is_some())
        {
            let waiters = std::mem::take(&mut self.entry_waiters);
            for (from, max, reply) in waiters {
                match self.entries_for(from, max) {
                    Some(answer) => {
                        let _ = reply.send(answer);
                    }
                    None => self.entry_waiters.push((from, max, reply)),
                }
            }
        }
        for observation in &ready.observations {
            match observation {
                Observation::BatchSize(n) => {
                    metrics::histogram!("paxos_batch_size").record(*n as f64)
                }
                Observation::CommitTicks(t) => {
                    metrics::histogram!("paxos_slot_commit_ticks").record(*t as f64)
                }
            }
        }
        self.export_metrics();
        Ok(())
    }

    /// Exports the core's counters (as deltas) and its view as gauges.
    fn export_metrics(&mut self) {
        let now = self.replica.metrics().clone();
        let before = std::mem::replace(&mut self.exported, now.clone());
        if now.elections_started > before.elections_started {
            self.election_started = Some(std::time::Instant::now());
        }
        if now.elections_won > before.elections_won
            && let Some(started) = self.election_started.take()
        {
            metrics::histogram!("paxos_phase1_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        // Incremented even by 0, so every counter exists from the first scrape on.
        let add = |name: &'static str, new: u64, old: u64| {
            metrics::counter!(name).increment(new.saturating_sub(old));
        };
        add(
            "paxos_commands_proposed_total",
            now.commands_proposed,
            before.commands_proposed,
        );
        add(
            "paxos_slots_proposed_total",
            now.slots_proposed,
            before.slots_proposed,
        );
        add(
            "paxos_noops_proposed_total",
            now.noops_proposed,
            before.noops_proposed,
        );
        add(
            "paxos_phase1_rounds_total",
            now.phase1_rounds,
            before.phase1_rounds,
        );
        add(
            "paxos_phase2_messages_total",
            now.phase2_messages,
            before.phase2_messages,
        );
        add(
            "paxos_elections_started_total",
            now.elections_started,
            before.elections_started,
        );
        add(
            "paxos_elections_won_total",
            now.elections_won,
            before.elections_won,
        );
        add(
            "paxos_leader_changes_total",
            now.leader_changes,
            before.leader_changes,
        );
        add(
            "paxos_slots_decided_total",
            now.slots_decided,
            before.slots_decided,
        );
        let status = self.replica.status();
        self.decided
            .store(status.decided, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("paxos_decided_index").set(status.decided as f64);
        metrics::gauge!("paxos_frontier_slot").set(status.frontier as f64);
        metrics::gauge!("paxos_compacted_index").set(status.compacted as f64);
        metrics::gauge!("paxos_ballot_round").set(status.ballot.round as f64);
        metrics::gauge!("paxos_pending_commands").set(status.pending as f64);
        metrics::gauge!("paxos_is_leader").set(if status.is_leader { 1.0 } else { 0.0 });
        metrics::gauge!("paxos_lanes_led").set(status.leading.len() as f64);
        metrics::gauge!("paxos_leader_id").set(status.leader.map_or(-1.0, f64::from));
        metrics::gauge!("paxos_recovering").set(if self.replica.is_recovering() {
            1.0
        } else {
            0.0
        });
    }
}

/// How a replica with an empty data dir starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialClusterState {
    /// The first start of a new cluster: vote at once.
    New,
    /// A replica that lost its data rejoins a running cluster: recover first.
    Existing,
}

/// Command-line options of the `paxos` binary.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "paxos",
    about = "One Paxos replica of the bank cluster",
    args_override_self = true
)]
pub struct Cli {
    /// This replica's id, 0..N.
    #[arg(long, env = "PAXOS_ID")]
    pub id: NodeId,
    /// Base URLs of every replica's paxos process, comma-separated, in id order.
    #[arg(long, env = "PAXOS_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// leader or leaderless.
    #[arg(long, env = "BANK_MODE", default_value = "leader")]
    pub mode: String,
    /// Listen address (peers and the local node).
    #[arg(long, env = "PAXOS_LISTEN", default_value = "127.0.0.1:9180")]
    pub listen: SocketAddr,
    /// Directory of the acceptor state.
    #[arg(long, env = "PAXOS_DATA_DIR", default_value = "data/paxos")]
    pub data_dir: PathBuf,
    /// File holding the cluster token (else BANK_CLUSTER_TOKEN).
    #[arg(long, env = "BANK_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Largest request body between paxos processes (messages, snapshot chunks), sent or
    /// accepted.
    #[arg(long, env = "PAXOS_MAX_PEER_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_peer_body_bytes: usize,
    /// Bytes of a snapshot per request when a lagging peer catches up.
    #[arg(long, env = "PAXOS_SNAPSHOT_CHUNK_BYTES", default_value_t = 4 << 20)]
    pub snapshot_chunk_bytes: usize,
    /// File holding a read-only token that reads `/metrics` and nothing else (for Prometheus).
    #[arg(long, env = "BANK_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Milliseconds per tick.
    #[arg(long, env = "PAXOS_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Ticks between heartbeats.
    #[arg(long, env = "PAXOS_HEARTBEAT_TICKS", default_value_t = 5)]
    pub heartbeat_ticks: u64,
    /// Ticks of leader silence before an election (randomized up to twice this).
    #[arg(long, env = "PAXOS_ELECTION_TICKS", default_value_t = 20)]
    pub election_ticks: u64,
    /// Slots in flight per lane.
    #[arg(long, env = "PAXOS_WINDOW", default_value_t = 64)]
    pub window: usize,
    /// Decided entries kept before asking the node for a snapshot.
    #[arg(long, env = "PAXOS_MAX_RETAINED_LOG", default_value_t = 100_000)]
    pub max_retained_log: u64,
    /// Required when the data dir is empty (ignored otherwise), like etcd's flag of the same
    /// name: `new` for the first start of a new cluster, `existing` for a replica that lost its
    /// data and rejoins (it learns its promises and the log from a majority of the others before
    /// it votes). Given twice, the last one counts.
    #[arg(long, env = "PAXOS_INITIAL_CLUSTER_STATE", value_enum)]
    pub initial_cluster_state: Option<InitialClusterState>,
    /// The same as `--initial-cluster-state existing`.
    #[arg(long, env = "PAXOS_REJOIN")]
    pub rejoin: bool,
    /// Log lines: human or json (`RUST_LOG` filters).
    #[arg(long, env = "BANK_LOG_FORMAT", default_value = "human")]
    pub log_format: telemetry::LogFormat,
}

impl Cli {
    /// The runtime configuration, validated.
    pub fn into_config(self, token: String) -> anyhow::Result<RuntimeConfig> {
        let mode = match self.mode.as_str() {
            "leader" => Mode::Leader,
            "leaderless" => Mode::Leaderless,
            other => anyhow::bail!("--mode must be leader or leaderless, not {other:?}"),
        };
        let nodes = u32::try_from(self.peers.len())?;
        let mut core = Config::new(self.id, nodes, mode);
        core.heartbeat_ticks = self.heartbeat_ticks;
        core.election_ticks = self.election_ticks;
        core.resend_ticks = self.heartbeat_ticks * 2;
        core.window = self.window;
        core.max_retained_log = self.max_retained_log;
        let initial = if self.rejoin {
            Some(InitialClusterState::Existing)
        } else {
            self.initial_cluster_state
        };
        core.rejoin = initial == Some(InitialClusterState::Existing);
        core.seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(self.id);
        core.validate().map_err(anyhow::Error::msg)?;
        let peer_limits = PeerLimits {
            max_body_bytes: self.max_peer_body_bytes,
            chunk_bytes: self.snapshot_chunk_bytes,
            ..PeerLimits::default()
        };
        peer_limits.validate()?;
        anyhow::ensure!(
            (1..=10_000).contains(&self.tick_ms),
            "--tick-ms must be 1..=10000, got {}",
            self.tick_ms
        );
        Ok(RuntimeConfig {
            core,
            listen: self.listen,
            peers: self.peers,
            data_dir: self.data_dir,
            token,
            tick_ms: self.tick_ms,
            peer_queue: 65_536,
            peer_limits,
            initial_cluster_state: initial,
            metrics_token: self
                .metrics_token_file
                .as_deref()
                .map(read_token_file)
                .transpose()?,
        })
    }
}

/// A token from a file: trimmed, and at least 16 characters (a guessable token is no token).
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(
        token.len() >= 16,
        "the token in {} is shorter than 16 characters",
        path.display()
    );
    Ok(token.to_owned())
}

/// The token from `BANK_CLUSTER_TOKEN` or a file.
pub fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("BANK_CLUSTER_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let path = file.context("set BANK_CLUSTER_TOKEN or --cluster-token-file")?;
    let token =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        !token.trim().is_empty(),
        "cluster token file {} is empty",
        path.display()
    );
    Ok(token.trim().to_owned())
}

/// The `paxos` binary's main, also used by the testbed when it re-executes itself.
pub async fn main_with_args(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let cli = Cli::try_parse_from(args)?;
    let identity = telemetry::Identity::new("paxos", &cli.mode, &cli.id.to_string());
    let telemetry = telemetry::init(&identity, cli.log_format);
    let token = read_token(cli.cluster_token_file.as_deref())?;
    let cfg = cli.into_config(token)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding --listen {}", cfg.listen))?;
    telemetry::install_prometheus();
    let mode = if cfg.core.mode == Mode::Leader {
        "leader"
    } else {
        "leaderless"
    };
    telemetry::set_build_info("paxos", mode, &cfg.core.id.to_string());
    describe_metrics();
    let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(telemetry::render);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    tracing::info!(id = cfg.core.id, listen = %cfg.listen, "paxos replica starting");
    println!(
        "paxos replica {} listening on http://{}",
        cfg.core.id,
        listener.local_addr()?
    );
    let result = run(cfg, listener, Some(render), shutdown).await;
    telemetry.shutdown().await;
    result
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Review item 4: a command whose fate the core lost (a snapshot replaced its slot) must not
    /// be reported as handed back, which the node turns into "safe to retry".
    #[test]
    fn lost_commands_are_outcome_unknown_and_only_handed_back_ones_are_dropped() {
        let command = |s: &'static str| Bytes::from_static(s.as_bytes());
        let ready = Ready {
            decided: vec![(7, Value::Batch(Arc::new(vec![command("a")])))],
            dropped: vec![command("b")],
            outcome_unknown: vec![command("c")],
            ..Ready::default()
        };
        let got: Vec<(&Bytes, ProposeReply)> = answers(&ready).collect();
        assert_eq!(
            got,
            vec![
                (&command("a"), ProposeReply::Decided { slot: 7 }),
                (&command("b"), ProposeReply::Dropped),
                (&command("c"), ProposeReply::OutcomeUnknown),
            ]
        );
    }
}
