//! The `paxos` process: drives a [`Replica`] with real time, durable storage and HTTP.
//!
//! One driver task owns the replica and runs a `tokio::select!` loop over the tick interval,
//! inbound peer messages and requests from the local `node`. After every burst of inputs it
//! follows the driver contract of the crate docs: persist and fsync (one redb transaction for
//! everything the burst produced, so many messages share one sync), then hand messages to the
//! per-peer senders, then answer whoever waits for decided entries.
//!
//! HTTP routes (one port; every route needs `Authorization: Bearer <cluster token>`):
//! - `GET /peer/stream`: a peer's long-lived message stream (upgraded; length-delimited frames,
//!   see [`crate::transfer`]); `POST /peer/messages`: one postcard `Vec<Envelope>` batch (what
//!   a peer of an older version sends);
//! - `POST /local/propose`: postcard `Vec<Bytes>` commands -> one [`ProposeReply`](crate::wire::ProposeReply) each, once
//!   all are decided here, handed back, or refused;
//! - `GET /local/entries?from=&max=&wait_ms=`: decided entries from a slot -> [`EntriesReply`](crate::wire::EntriesReply)
//!   (long poll), or the snapshot when those slots were compacted;
//! - `POST /local/read_index` -> [`ReadIndexReply`](crate::wire::ReadIndexReply); `POST /local/compact`: postcard
//!   `(Slot, Bytes)`;
//! - `GET /status`, `POST /elect` (JSON [`StatusReply`]), `POST /shutdown`, `GET /metrics`,
//!   `GET /healthz`.
//!
//! Files: `driver` (the task that owns the replica), `http` (the routes), `cli` (flags and
//! `main`); the transport to peers is [`crate::transfer`], the wire types [`crate::wire`].

mod cli;
mod driver;
mod http;

pub use cli::{Cli, InitialClusterState, main_with_args};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::driver::{Driver, LocalRequest};
use self::http::{HttpState, router};
use crate::ballot::NodeId;
use crate::core::{Config, Replica};
use crate::storage::{Storage, WalStorage};
use crate::transfer::{Peer, PeerLimits};
use crate::wire::StatusReply;

/// Everything the process needs.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// This replica and the cluster shape.
    pub core: Config,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Base URLs of every replica's paxos process, indexed by id (own entry unused).
    pub peers: Vec<String>,
    /// Where the acceptor state lives (`paxos.wal`, snapshots in `paxos.snapshots/`).
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
    let path = cfg.data_dir.join("paxos.wal");
    let storage = WalStorage::open(&path).with_context(|| format!("opening {}", path.display()))?;
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
    let path = cfg.data_dir.join("paxos.wal");
    let storage = Box::new(crate::storage::DeferredDecisions::new(storage));
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
    // `shutdown` (a signal, `POST /shutdown`, the caller) starts the stop; `stop` is the stop
    // itself, once a leader has handed its lead to a follower (see [`hand_off`]).
    let stop = CancellationToken::new();
    let (requests_tx, requests_rx) = mpsc::channel(4_096);
    let (inbound_tx, inbound_rx) = mpsc::channel(1_024);
    // No overall timeout: message streams live long (each snapshot chunk sets its own); a peer
    // that stops acknowledging what is written to it is cut after STREAM_USER_TIMEOUT.
    let client = reqwest::Client::builder()
        .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
        .connect_timeout(Duration::from_secs(2))
        .tcp_user_timeout(crate::transfer::STREAM_USER_TIMEOUT)
        .tcp_nodelay(true)
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
            Some(cfg.core.id),
            cfg.peer_limits,
            cfg.peer_queue,
            stop.clone(),
        )));
    }
    let decided = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let driver = Driver::new(replica, storage, outbound, decided.clone(), cfg.tick_ms);
    let driver_gone = CancellationToken::new();
    let mut driver_task = {
        let (gone, driver) = (driver_gone.clone(), driver);
        let run = driver.run(requests_rx, inbound_rx, stop.clone());
        tokio::spawn(async move {
            let _gone = gone.drop_guard();
            run.await
        })
    };
    let state = HttpState {
        snapshots: crate::storage::snapshot_dir(&path).into(),
        requests: requests_tx.clone(),
        inbound: inbound_tx,
        tokens: plumbing::Tokens::new(cfg.token.as_str(), cfg.metrics_token.as_deref()),
        shutdown: shutdown.clone(),
        metrics,
        driver_gone,
        me: cfg.core.id,
        decided: decided.clone(),
        incoming: cfg.data_dir.join("paxos.incoming").into(),
        streams: Arc::default(),
        max_frame: cfg.peer_limits.max_body_bytes,
    };
    let app = router(state, cfg.peer_limits.max_body_bytes);
    let server = plumbing::serve(
        listener,
        app,
        plumbing::Limits::DEFAULT,
        stop.clone().cancelled_owned(),
    );
    let handing_off = {
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        let (requests, client) = (requests_tx.clone(), client.clone());
        let (peers, token, me) = (cfg.peers.clone(), cfg.token.clone(), cfg.core.id);
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {
                    hand_off(&requests, &client, &peers, &token, me).await;
                }
                () = stop.cancelled() => {}
            }
            stop.cancel();
        })
    };
    let _stop_guard = stop.clone().drop_guard();
    let result = tokio::select! {
        served = server => {
            served?;
            stop.cancel();
            driver_task.await.context("driver task")??;
            Ok(())
        }
        ended = &mut driver_task => {
            let stopping = shutdown.is_cancelled();
            shutdown.cancel();
            stop.cancel();
            let err = match ended {
                Ok(Ok(())) if stopping => return Ok(()),
                Ok(Ok(())) => anyhow::anyhow!("the driver stopped without a shutdown"),
                Ok(Err(err)) => err,
                Err(join) => anyhow::anyhow!("the driver panicked: {join}"),
            };
            tracing::error!(error = %format!("{err:#}"), "paxos driver failed; the process exits");
            Err(err.context("paxos driver failed"))
        }
    };
    handing_off.abort();
    result
}

/// The longest a leader that is asked to stop waits for a follower to take over.
pub const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(3);

/// A leader that is asked to stop first hands its lead to a follower, so that the cluster does
/// not wait an election timeout for the next one (a rolling restart, a Kubernetes pod replaced):
/// it asks every peer's status, tells the one that has decided the most to start an election
/// (`POST /elect`, what the prober does), and waits until it has seen that higher ballot (it is a
/// follower then) or [`HAND_OFF_TIMEOUT`] passed. Any follower is safe to elect (its phase 1
/// learns whatever a majority accepted); the most up to date one has the least to catch up. A
/// replica that does not lead (or leaderless mode) stops at once.
async fn hand_off(
    requests: &mpsc::Sender<LocalRequest>,
    client: &reqwest::Client,
    peers: &[String],
    token: &str,
    me: NodeId,
) {
    let status = || async {
        let (reply, rx) = tokio::sync::oneshot::channel();
        requests.send(LocalRequest::Status { reply }).await.ok()?;
        rx.await.ok()
    };
    let Some(mine) = status().await else { return };
    if !mine.status.is_leader {
        return;
    }
    let urls: Vec<String> = (peers.iter().enumerate())
        .filter(|(id, _)| *id as NodeId != me)
        .map(|(_, url)| url.clone())
        .collect();
    let replies = crate::client::survey(client, token, &urls, Duration::from_millis(500)).await;
    let Some(successor) = replies
        .iter()
        .max_by_key(|r| (r.status.decided, r.status.id))
    else {
        tracing::warn!("stopping as leader: no follower answered, nobody to hand the lead to");
        return;
    };
    let to = successor.status.id;
    let paxos = crate::client::PaxosClient::with_http(client.clone(), &peers[to as usize], token);
    let started = std::time::Instant::now();
    if let Err(err) = paxos.elect().await {
        tracing::warn!(to, error = %err, "stopping as leader: the hand-off was refused");
        return;
    }
    while started.elapsed() < HAND_OFF_TIMEOUT {
        match status().await {
            Some(now) if !now.status.is_leader => {
                crate::metrics::hand_off("handed_off");
                tracing::info!(
                    to,
                    ms = started.elapsed().as_millis() as u64,
                    "stopping: handed the lead to a follower"
                );
                return;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            None => return,
        }
    }
    crate::metrics::hand_off("timed_out");
    tracing::warn!(
        to,
        "stopping as leader: the follower did not take over in time"
    );
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
