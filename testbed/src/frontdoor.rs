//! The front door: the local stand-in for the Kubernetes Service / external load balancer.
//!
//! Every path except `/_testbed/...` is proxied to a node's public port. Leader mode: to the
//! current target (by default the node the cluster reports as leader; `POST /_testbed/target`
//! pins it, as the prober will). Leaderless: each client connection stays on one node, and
//! connections are dealt out round robin over the nodes that answered `/readyz` (as a
//! Kubernetes Service balances connections, not requests; a node's clients come back to it, so
//! its proposal batches fill: docs/performance.md, twelfth round). If the chosen node refuses the connection (the request was never sent, so retrying cannot
//! apply anything twice), the next node is tried.
//!
//! It honours health as a real load balancer does (Envoy's outlier detection): a node that fails
//! its readiness check (every 100 ms, 300 ms timeout), or whose last [`Outlier::THRESHOLD`]
//! proxied requests got no answer (timed out or broke), gets no new requests: the first until it
//! is ready again, the second for [`Outlier::EJECTION`]. If every node is out, all are tried
//! (Envoy's panic threshold): a guess beats a certain 503.
//!
//! `/_testbed/` (GET) is the status page ([`crate::status_page`]), `/_testbed/prober/status` the
//! prober's `/status` relayed; `/_testbed/cluster` (GET) describes the cluster; `POST /_testbed/target`, and
//! `POST /_testbed/nodes/{id}/{stop|start|wipe}` need the cluster token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::supervisor::Child;

/// One node as the testbed sees it.
pub struct NodeHandle {
    /// Id.
    pub id: u32,
    /// Public base URL of its `node` process.
    pub public_url: String,
    /// Internal base URL of its `node` process.
    pub internal_url: String,
    /// Base URL of its `paxos` process.
    pub paxos_url: String,
    /// Its `node` process.
    pub node: Arc<Child>,
    /// Its `paxos` process.
    pub paxos: Arc<Child>,
    /// Data folders of the node and its paxos process (deleted by `wipe`).
    pub data_dirs: Vec<std::path::PathBuf>,
    /// Last known role: `leader`, `follower`, `replica`, `candidate` or `down`.
    pub role: std::sync::Mutex<String>,
    /// Answered `/readyz` at the last check.
    pub ready: AtomicBool,
    /// Proxied requests without an answer, and the ejection they cause.
    pub outlier: Outlier,
    /// Its network namespace (`--netns`).
    pub netns: Option<String>,
    /// Its address.
    pub ip: String,
    /// Its link proxy's admin URL (`--proxies`).
    pub proxy_url: Option<String>,
    /// Its link proxy (`--proxies`).
    pub proxy: Option<Arc<Child>>,
    /// Being restarted (a rolling restart): no new requests go there.
    pub draining: AtomicBool,
    /// Requests the front door is proxying to it now.
    pub in_flight: AtomicUsize,
}

/// Outlier detection of one node: consecutive proxied requests that got no answer, and when
/// enough did, an ejection.
#[derive(Debug, Default)]
pub struct Outlier {
    consecutive: AtomicU32,
    ejected_until: std::sync::Mutex<Option<Instant>>,
    ejections: AtomicU32,
}

impl Outlier {
    /// Consecutive requests without an answer that eject a node.
    pub const THRESHOLD: u32 = 3;
    /// How long an ejection lasts.
    pub const EJECTION: Duration = Duration::from_secs(10);

    /// A proxied request got an answer (any status: the node is alive).
    pub fn answered(&self) {
        self.consecutive.store(0, Ordering::SeqCst);
    }

    /// A proxied request got none (timed out, or the connection broke after it was sent).
    /// Returns true if this ejected the node.
    pub fn no_answer(&self) -> bool {
        if self.consecutive.fetch_add(1, Ordering::SeqCst) + 1 < Self::THRESHOLD {
            return false;
        }
        self.consecutive.store(0, Ordering::SeqCst);
        *self.ejected_until.lock().expect("outlier lock") = Some(Instant::now() + Self::EJECTION);
        self.ejections.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Ejected now.
    pub fn is_ejected(&self) -> bool {
        let mut until = self.ejected_until.lock().expect("outlier lock");
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Ejections so far.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::SeqCst)
    }
}

/// Shared state of the front door.
pub struct FrontDoor {
    /// Leader or leaderless.
    pub mode: paxos::Mode,
    /// The nodes.
    pub nodes: Vec<NodeHandle>,
    /// Leader mode: index of the target node.
    pub target: AtomicUsize,
    /// Leader mode: follow the leader automatically.
    pub auto_target: AtomicBool,
    /// Leaderless: round-robin position for a request that came on no known connection.
    pub next: AtomicUsize,
    /// Node the cluster reports as leader (leader mode), `usize::MAX` if none.
    pub leader: AtomicUsize,
    /// Cluster token (admin calls).
    pub token: String,
    /// Where the data lives.
    pub data_dir: std::path::PathBuf,
    /// The token file, if generated.
    pub token_file: Option<std::path::PathBuf>,
    /// The front door's own URL.
    pub url: std::sync::Mutex<String>,
    /// HTTP client for polling and admin calls.
    pub client: reqwest::Client,
    /// HTTP client for the proxied bank requests.
    pub proxy_client: ProxyClient,
    /// The prober's base URL and process, when the cluster runs one.
    pub prober: std::sync::OnceLock<(String, Arc<Child>)>,
    /// Chaos's base URL and process, when the cluster runs it.
    pub chaos: std::sync::OnceLock<(String, Arc<Child>)>,
    /// Prometheus's base URL and process (`testbed up --prometheus`).
    pub prometheus: std::sync::OnceLock<(String, Arc<Child>)>,
    /// How long a proxied request may take before it counts as unanswered.
    pub request_timeout: Duration,
    /// A rolling restart is running (one at a time).
    pub restarting: AtomicBool,
}

/// The client that forwards bank requests to the nodes: hyper's pooled HTTP/1.1 client, so a
/// request goes out with its method, path and headers as they came in (reqwest would parse a URL
/// and rebuild them for each).
pub type ProxyClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// A [`ProxyClient`] keeping up to 128 idle connections a node, each for
/// [`plumbing::CLIENT_POOL_IDLE`].
pub fn proxy_client() -> ProxyClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
        .pool_max_idle_per_host(128)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// The default of [`FrontDoor::request_timeout`]: above the nodes' own deadlines (a write waits
/// up to 10 s for consensus), so a slow answer is still an answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// `GET /_testbed/cluster` (and `<data-dir>/cluster.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// `leader` or `leaderless`.
    pub mode: paxos::Mode,
    /// Every node answers `/readyz` and, in leader mode, a leader is known: the cluster serves.
    pub ready: bool,
    /// Leader node id (leader mode, when known).
    pub leader: Option<u32>,
    /// Node the front door sends traffic to (leader mode).
    pub target: Option<u32>,
    /// The front door.
    pub front_door: String,
    /// Where the data lives.
    pub data_dir: String,
    /// The generated token file (absent when the token came from the environment).
    pub token_file: Option<String>,
    /// Every node.
    pub nodes: Vec<NodeInfo>,
    /// The prober, when the cluster runs one.
    #[serde(default)]
    pub prober: Option<ServiceInfo>,
    /// Chaos, when the cluster runs it (`testbed up --chaos`).
    #[serde(default)]
    pub chaos: Option<ServiceInfo>,
    /// Prometheus, when the cluster runs one (`testbed up --prometheus`): it loads the rules of
    /// `dashboards/rules/` and scrapes every process.
    #[serde(default)]
    pub prometheus: Option<ServiceInfo>,
}

/// The prober, chaos or Prometheus in [`ClusterInfo`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Its base URL: `/status` (JSON) and `/metrics`.
    pub url: String,
    /// Its PID (0: not running).
    pub pid: u32,
}

/// One node in [`ClusterInfo`].
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Id.
    pub id: u32,
    /// `leader`, `follower`, `replica`, `candidate` or `down`.
    pub role: String,
    /// Public URL.
    pub public_url: String,
    /// Internal URL of the node process.
    pub internal_url: String,
    /// URL of the paxos process.
    pub paxos_url: String,
    /// PID of the node process (0: not running).
    pub node_pid: u32,
    /// PID of the paxos process (0: not running).
    pub paxos_pid: u32,
    /// Restarts of the node process.
    pub node_restarts: u64,
    /// Restarts of the paxos process.
    pub paxos_restarts: u64,
    /// Answered `/readyz` at the last check.
    pub ready: bool,
    /// Ejected by outlier detection (its last requests got no answer): no new requests now.
    #[serde(default)]
    pub ejected: bool,
    /// Ejections so far.
    #[serde(default)]
    pub ejections: u32,
    /// Its network namespace, with `--netns` (chaos cuts its links there).
    #[serde(default)]
    pub netns: Option<String>,
    /// Its address (127.0.0.1, or its namespace's).
    #[serde(default)]
    pub ip: String,
    /// Its link proxy's admin URL, with `--proxies` (chaos's `delay` sets its links' delays).
    #[serde(default)]
    pub proxy_url: Option<String>,
}

impl FrontDoor {
    /// True once every node answers `/readyz` and, in leader mode, a leader is known.
    pub fn is_ready(&self) -> bool {
        let all_ready = self.nodes.iter().all(|n| n.ready.load(Ordering::SeqCst));
        let leader_known =
            self.mode != paxos::Mode::Leader || self.leader.load(Ordering::SeqCst) != usize::MAX;
        all_ready && leader_known
    }

    /// A lost disk: both processes of node `index` down, both data folders deleted, then back.
    /// The paxos process rejoins: it learns what it may have promised and the log from a
    /// majority before it votes again, and the node installs a snapshot from it.
    pub async fn wipe(&self, index: usize) {
        let node = &self.nodes[index];
        node.node.stop();
        node.paxos.stop();
        for _ in 0..100 {
            if node.node.pid().is_none() && node.paxos.pid().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for dir in &node.data_dirs {
            if let Err(err) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), %err, "wipe: could not delete");
            }
        }
        node.paxos.add_arg("--initial-cluster-state=existing");
        node.paxos.start();
        node.node.start();
    }

    /// The cluster description.
    pub fn info(&self) -> ClusterInfo {
        let leader = self.leader.load(Ordering::SeqCst);
        let leader_mode = self.mode == paxos::Mode::Leader;
        ClusterInfo {
            mode: self.mode,
            ready: self.is_ready(),
            leader: (leader_mode && leader != usize::MAX).then_some(leader as u32),
            target: leader_mode.then(|| self.target.load(Ordering::SeqCst) as u32),
            front_door: self.url.lock().expect("url lock").clone(),
            data_dir: self.data_dir.display().to_string(),
            token_file: self.token_file.as_ref().map(|p| p.display().to_string()),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    id: n.id,
                    role: n.role.lock().expect("role lock").clone(),
                    public_url: n.public_url.clone(),
                    internal_url: n.internal_url.clone(),
                    paxos_url: n.paxos_url.clone(),
                    node_pid: n.node.pid.load(Ordering::SeqCst),
                    paxos_pid: n.paxos.pid.load(Ordering::SeqCst),
                    node_restarts: n.node.restarts.load(Ordering::SeqCst),
                    paxos_restarts: n.paxos.restarts.load(Ordering::SeqCst),
                    ready: n.ready.load(Ordering::SeqCst),
                    ejected: n.outlier.is_ejected(),
                    ejections: n.outlier.ejections(),
                    netns: n.netns.clone(),
                    ip: n.ip.clone(),
                    proxy_url: n.proxy_url.clone(),
                })
                .collect(),
            prober: self.prober.get().map(|(url, child)| ServiceInfo {
                url: url.clone(),
                pid: child.pid().unwrap_or(0),
            }),
            chaos: self.chaos.get().map(|(url, child)| ServiceInfo {
                url: url.clone(),
                pid: child.pid().unwrap_or(0),
            }),
            prometheus: self.prometheus.get().map(|(url, child)| ServiceInfo {
                url: url.clone(),
                pid: child.pid().unwrap_or(0),
            }),
        }
    }

    /// Polls every node (paxos status and node readiness) and updates roles, leader and target.
    pub async fn poll(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let mut leader = usize::MAX;
            // Of two nodes that both say they lead (one cut off from the rest still thinks so
            // until it hears of the newer ballot), the one with the higher ballot does.
            let mut leader_ballot = None;
            for (i, node) in self.nodes.iter().enumerate() {
                let paxos = paxos::client::PaxosClient::with_http(
                    self.client.clone(),
                    &node.paxos_url,
                    self.token.as_str(),
                );
                let status = tokio::time::timeout(Duration::from_millis(300), paxos.status())
                    .await
                    .ok()
                    .and_then(Result::ok);
                let bank =
                    node::client::BankClient::with_http(self.client.clone(), &node.public_url);
                let ready = tokio::time::timeout(Duration::from_millis(300), bank.ready())
                    .await
                    .is_ok_and(|ready| ready.unwrap_or(false));
                node.ready.store(ready, Ordering::SeqCst);
                let role = match (&status, self.mode) {
                    (None, _) => "down",
                    (Some(s), paxos::Mode::Leader) if s.status.is_leader => {
                        if leader_ballot.is_none_or(|b| s.status.ballot > b) {
                            leader = i;
                            leader_ballot = Some(s.status.ballot);
                        }
                        "leader"
                    }
                    (Some(s), paxos::Mode::Leader) if s.status.leader == Some(node.id) => {
                        "candidate"
                    }
                    (Some(_), paxos::Mode::Leader) => "follower",
                    (Some(_), paxos::Mode::Leaderless) => "replica",
                };
                *node.role.lock().expect("role lock") = role.to_owned();
            }
            self.leader.store(leader, Ordering::SeqCst);
            if leader != usize::MAX && self.auto_target.load(Ordering::SeqCst) {
                self.target.store(leader, Ordering::SeqCst);
            }
        }
    }

    /// Candidate nodes for one request, best first: in leader mode the target; leaderless, the
    /// node of the client's connection (connections are dealt out round robin, as a Kubernetes
    /// Service or an L4 load balancer does), or the next in round robin for a request that came
    /// on no known connection; nodes that are not ready or are ejected come last (tried only if
    /// every healthy one refused the connection).
    fn candidates(&self, connection: Option<plumbing::Connection>) -> Vec<usize> {
        let n = self.nodes.len();
        let first = match (self.mode, connection) {
            (paxos::Mode::Leader, _) => self.target.load(Ordering::SeqCst) % n,
            (paxos::Mode::Leaderless, Some(connection)) => (connection.id % n as u64) as usize,
            (paxos::Mode::Leaderless, None) => self.next.fetch_add(1, Ordering::SeqCst) % n,
        };
        let (mut healthy, sick): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (first + k) % n)
            .partition(|&i| self.nodes[i].is_healthy());
        healthy.extend(sick);
        healthy
    }
}

impl NodeHandle {
    /// Ready at the last check, not ejected, not draining.
    fn is_healthy(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
            && !self.outlier.is_ejected()
            && !self.draining.load(Ordering::SeqCst)
    }
}

/// The header naming the node that answered a proxied request (experiments record it).
pub const NODE_HEADER: &str = "x-bank-node";

/// Counts a request in flight to a node while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> InFlight<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The front door's router.
pub fn router(door: Arc<FrontDoor>) -> Router {
    Router::new()
        .route("/_testbed/", get(crate::status_page::page))
        .route(
            "/_testbed/prober/status",
            get(crate::status_page::prober_status),
        )
        .route("/_testbed/cluster", get(cluster))
        .route("/_testbed/target", post(set_target))
        .route("/_testbed/rolling-restart", post(rolling_restart))
        .route("/_testbed/nodes/{id}/{action}", post(node_action))
        .route("/_testbed/metrics", get(|| async { telemetry::render() }))
        .fallback(proxy)
        .layer(axum::middleware::from_fn_with_state(
            plumbing::Oversized {
                max_body_bytes: MAX_BODY_BYTES as u64,
                respond: |limit| {
                    let body = serde_json::json!({
                        "error": format!("request body over {limit} bytes"),
                        "code": "payload_too_large",
                    });
                    (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response()
                },
            },
            plumbing::reject_oversized,
        ))
        .layer(axum::middleware::from_fn(node::api::track_http))
        .with_state(door)
}

impl FrontDoor {
    /// A request proxied to `node` got no answer: count it, and log an ejection.
    fn no_answer(&self, node: &NodeHandle) {
        if node.outlier.no_answer() {
            tracing::warn!(
                node = node.id,
                requests = Outlier::THRESHOLD,
                ejection_s = Outlier::EJECTION.as_secs(),
                "outlier detection: the node's last requests got no answer; no new requests for a while"
            );
            ::metrics::counter!(EJECTIONS, "node" => node.id.to_string()).increment(1);
        }
    }
}

/// Counter of outlier ejections by node.
pub const EJECTIONS: &str = "testbed_frontdoor_ejections_total";

/// The front door's own metrics (besides the HTTP ones it shares with the nodes).
pub const METRICS: [telemetry::catalog::Metric; 1] = [telemetry::catalog::counter(
    EJECTIONS,
    "Nodes the front door stopped sending new requests to because their last requests got no answer (outlier detection), by node.",
)];

impl FrontDoor {
    /// Describes the front door's metrics and creates their series at zero, one per node.
    pub fn register_metrics(&self) {
        telemetry::catalog::describe_all(&METRICS);
        for node in &self.nodes {
            ::metrics::counter!(EJECTIONS, "node" => node.id.to_string()).increment(0);
        }
    }
}

async fn cluster(State(door): State<Arc<FrontDoor>>) -> Json<ClusterInfo> {
    Json(door.info())
}

fn authorized(door: &FrontDoor, headers: &HeaderMap) -> bool {
    plumbing::bearer_matches(headers, &door.token)
}

/// `POST /_testbed/rolling-restart` (cluster token): restarts every node in turn
/// ([`crate::rolling`]), answering a line of text per step as it happens, then `ok <JSON
/// report>` or `error: ...`. 409 while one is running.
async fn rolling_restart(State(door): State<Arc<FrontDoor>>, headers: HeaderMap) -> Response {
    if !authorized(&door, &headers) {
        return plumbing::unauthorized();
    }
    if door.restarting.swap(true, Ordering::SeqCst) {
        return (
            StatusCode::CONFLICT,
            "a rolling restart is running already\n",
        )
            .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let result = crate::rolling::rolling_restart(&door, |line| {
            tracing::info!("{line}");
            let _ = tx.send(format!("{line}\n"));
        })
        .await;
        let last = match result {
            Ok(reports) => format!(
                "ok {}\n",
                serde_json::to_string(&reports).unwrap_or_default()
            ),
            Err(err) => format!("error: {err:#}\n"),
        };
        let _ = tx.send(last);
        door.restarting.store(false, Ordering::SeqCst);
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Deserialize)]
struct TargetRequest {
    node: u32,
    /// Keep following the leader automatically afterwards (default: no, the caller decides).
    #[serde(default)]
    auto: bool,
}

async fn set_target(
    State(door): State<Arc<FrontDoor>>,
    headers: HeaderMap,
    Json(req): Json<TargetRequest>,
) -> Response {
    if !authorized(&door, &headers) {
        return plumbing::unauthorized();
    }
    if req.node as usize >= door.nodes.len() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no node {}", req.node),
        )
            .into_response();
    }
    door.target.store(req.node as usize, Ordering::SeqCst);
    door.auto_target.store(req.auto, Ordering::SeqCst);
    Json(door.info()).into_response()
}

async fn node_action(
    State(door): State<Arc<FrontDoor>>,
    headers: HeaderMap,
    Path((id, action)): Path<(u32, String)>,
) -> Response {
    if !authorized(&door, &headers) {
        return plumbing::unauthorized();
    }
    let Some(node) = door.nodes.get(id as usize) else {
        return (StatusCode::NOT_FOUND, format!("no node {id}")).into_response();
    };
    match action.as_str() {
        "stop" => {
            node.node.stop();
            node.paxos.stop();
        }
        "start" => {
            node.paxos.start();
            node.node.start();
        }
        "wipe" => door.wipe(id as usize).await,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: stop, start, wipe"),
            )
                .into_response();
        }
    }
    Json(door.info()).into_response()
}

/// Largest request body the front door relays (the nodes' own limit is smaller).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest answer the front door buffers and relays (a node's largest, a page of 1,000
/// accounts, is about 200 KB).
const MAX_REPLY_BYTES: usize = 4 << 20;

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

async fn proxy(State(door): State<Arc<FrontDoor>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let connection = parts.extensions.get::<plumbing::Connection>().copied();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        let body = serde_json::json!({
            "error": format!("request body over {MAX_BODY_BYTES} bytes"),
            "code": "payload_too_large",
        });
        return (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let write = parts.method != axum::http::Method::GET;
    let mut maybe_applied = false;
    let mut headers = parts.headers;
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // The node's span is a child of the front door's (the client's traceparent otherwise).
    headers.extend(telemetry::trace::current_headers());
    for index in door.candidates(connection) {
        let node = &door.nodes[index];
        let _in_flight = InFlight::new(&node.in_flight);
        let Ok(uri) = format!("{}{}", node.public_url, path).parse::<axum::http::Uri>() else {
            let body = serde_json::json!({"error": "bad request path", "code": "bad_request"});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        };
        let mut outgoing = axum::http::Request::new(http_body_util::Full::new(body.clone()));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers.clone();
        let exchange = async {
            let reply = door.proxy_client.request(outgoing).await?;
            let (reply, incoming) = reply.into_parts();
            let limited = http_body_util::Limited::new(incoming, MAX_REPLY_BYTES);
            let bytes = http_body_util::BodyExt::collect(limited)
                .await
                .map(|b| b.to_bytes());
            Ok::<_, hyper_util::client::legacy::Error>((reply, bytes))
        };
        match tokio::time::timeout(door.request_timeout, exchange).await {
            Ok(Ok((reply, Ok(bytes)))) => {
                node.outlier.answered();
                let mut response = Response::new(Body::from(bytes));
                *response.status_mut() = reply.status;
                let mut reply_headers = reply.headers;
                for name in HOP_BY_HOP {
                    reply_headers.remove(name);
                }
                *response.headers_mut() = reply_headers;
                response
                    .headers_mut()
                    .insert(NODE_HEADER, axum::http::HeaderValue::from(node.id));
                return response;
            }
            // Not connected: nothing was sent, so another node may take it.
            Ok(Err(err)) if err.is_connect() => continue,
            // The node answered past the limit: not relayed, but not the node's failure.
            Ok(Ok((_, Err(err)))) if err.is::<http_body_util::LengthLimitError>() => {
                tracing::warn!(
                    node = node.id,
                    "an answer over {MAX_REPLY_BYTES} bytes, not relayed"
                );
                maybe_applied = true;
                break;
            }
            // The request was sent (or may have been): its answer is lost.
            Ok(Err(_)) | Ok(Ok((_, Err(_)))) | Err(_) => {
                door.no_answer(node);
                maybe_applied = true;
                break;
            }
        }
    }
    // A write that reached a node and lost its answer may have been applied: a client must not
    // be told that a plain retry is safe.
    let body = if maybe_applied && write {
        serde_json::json!({
            "error": "the node's answer was lost; the request may have been applied: retry with the same Idempotency-Key to learn the outcome",
            "code": "outcome_unknown",
        })
    } else {
        serde_json::json!({"error": "no node answered; retry", "code": "unavailable"})
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// A node that reads each request and hangs up without answering.
    async fn hangs_up() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0; 64 * 1024];
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
            }
        });
        addr
    }

    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    fn handle(id: u32, public: SocketAddr) -> NodeHandle {
        let child = |name: &str| {
            Child::new(
                name.into(),
                "/bin/false".into(),
                Vec::new(),
                Vec::new(),
                "/dev/null".into(),
                false,
            )
        };
        NodeHandle {
            id,
            public_url: format!("http://{public}"),
            internal_url: String::new(),
            paxos_url: String::new(),
            node: child("node"),
            paxos: child("paxos"),
            data_dirs: Vec::new(),
            role: std::sync::Mutex::new("leader".into()),
            ready: AtomicBool::new(true),
            outlier: Outlier::default(),
            netns: None,
            ip: "127.0.0.1".into(),
            proxy_url: None,
            proxy: None,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// A front door over `nodes`, served as `testbed up` serves it.
    async fn front_door(nodes: Vec<SocketAddr>) -> SocketAddr {
        serve_door(paxos::Mode::Leaderless, nodes, REQUEST_TIMEOUT)
            .await
            .0
    }

    async fn serve_door(
        mode: paxos::Mode,
        nodes: Vec<SocketAddr>,
        request_timeout: Duration,
    ) -> (SocketAddr, Arc<FrontDoor>) {
        let door = Arc::new(FrontDoor {
            mode,
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, a)| handle(i as u32, a))
                .collect(),
            target: AtomicUsize::new(0),
            auto_target: AtomicBool::new(true),
            next: AtomicUsize::new(0),
            leader: AtomicUsize::new(usize::MAX),
            token: "t".into(),
            data_dir: std::env::temp_dir(),
            token_file: None,
            url: std::sync::Mutex::new(String::new()),
            client: reqwest::Client::new(),
            proxy_client: proxy_client(),
            prober: std::sync::OnceLock::new(),
            chaos: std::sync::OnceLock::new(),
            prometheus: std::sync::OnceLock::new(),
            request_timeout,
            restarting: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = plumbing::serve(
            listener,
            router(door.clone()),
            plumbing::Limits::DEFAULT,
            std::future::pending(),
        );
        tokio::spawn(serve);
        (addr, door)
    }

    /// A node that takes every request and never answers; counts the connections it got.
    async fn hangs() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    drop(socket);
                });
            }
        });
        (addr, connections)
    }

    /// A node that answers every request with 200 `{}`.
    async fn answers() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(|| async { Json(serde_json::json!({})) });
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn get_status(client: &reqwest::Client, door: SocketAddr) -> u16 {
        let url = format!("http://{door}/account_balance?account_id=x");
        client.get(url).send().await.unwrap().status().as_u16()
    }

    /// Outlier detection: after `THRESHOLD` requests without an answer a node gets no new
    /// requests; the others serve everything.
    #[tokio::test]
    async fn a_node_whose_requests_time_out_is_ejected() {
        let (hung, connections) = hangs().await;
        let nodes = vec![hung, answers().await];
        let (door, state) =
            serve_door(paxos::Mode::Leaderless, nodes, Duration::from_millis(200)).await;
        // A connection per request: connections are dealt out round robin.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut timeouts = 0;
        for _ in 0..2 * Outlier::THRESHOLD {
            if get_status(&client, door).await == 503 {
                timeouts += 1;
            }
        }
        assert_eq!(
            timeouts,
            Outlier::THRESHOLD,
            "round robin sent every other connection there"
        );
        assert!(state.nodes[0].outlier.is_ejected());
        assert_eq!(state.info().nodes[0].ejections, 1);
        let before = connections.load(Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(get_status(&client, door).await, 200);
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            before,
            "an ejected node gets no new requests"
        );
        assert!(
            !state.nodes[1].outlier.is_ejected(),
            "answers reset the count"
        );
    }

    /// The node that answered a `GET /` through the front door at `door`.
    async fn answered_by(client: &reqwest::Client, door: SocketAddr) -> String {
        let reply = client.get(format!("http://{door}/")).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        reply.headers()[NODE_HEADER].to_str().unwrap().to_owned()
    }

    /// Leaderless: a client's connection stays on one node (its batches fill with that client's
    /// next requests), connections are dealt out round robin, and a connection whose node
    /// refuses it is served by the next.
    #[tokio::test]
    async fn leaderless_keeps_a_connection_on_one_node_and_deals_connections_round_robin() {
        let nodes = vec![answers().await, answers().await, answers().await];
        let door = front_door(nodes).await;
        let kept = reqwest::Client::new();
        let first = answered_by(&kept, door).await;
        for _ in 0..5 {
            assert_eq!(
                answered_by(&kept, door).await,
                first,
                "one connection, one node"
            );
        }
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut dealt = Vec::new();
        for _ in 0..6 {
            dealt.push(answered_by(&fresh, door).await);
        }
        assert_eq!(dealt[..3], dealt[3..], "round robin over the connections");
        let mut distinct = dealt.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct, ["0", "1", "2"], "every node gets connections");

        let nodes = vec![answers().await, answers().await, closed_port().await];
        let door = front_door(nodes).await;
        let mut dealt = Vec::new();
        for _ in 0..6 {
            dealt.push(answered_by(&fresh, door).await);
        }
        assert!(
            dealt.iter().filter(|n| *n == "0").count() == 4 && !dealt.contains(&"2".to_owned()),
            "the refused node's connections went to the next one: {dealt:?}"
        );
    }

    /// Leader mode: a target that fails its readiness check gets no new requests while
    /// another node is ready (it forwards to the leader, or says there is none).
    #[tokio::test]
    async fn a_target_that_is_not_ready_is_passed_over() {
        let (hung, connections) = hangs().await;
        let nodes = vec![hung, answers().await];
        let (door, state) =
            serve_door(paxos::Mode::Leader, nodes, Duration::from_millis(200)).await;
        state.nodes[0].ready.store(false, Ordering::SeqCst);
        let client = reqwest::Client::new();
        for _ in 0..5 {
            assert_eq!(get_status(&client, door).await, 200);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        state.nodes[0].ready.store(true, Ordering::SeqCst);
        assert_eq!(
            get_status(&client, door).await,
            503,
            "ready again: the target first"
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    /// A draining node (a rolling restart) gets no new requests, though it is ready and the
    /// target; every reply names the node that answered (`x-bank-node`).
    #[tokio::test]
    async fn a_draining_node_is_passed_over_and_replies_name_their_node() {
        let (hung, connections) = hangs().await;
        let nodes = vec![hung, answers().await];
        let (door, state) =
            serve_door(paxos::Mode::Leader, nodes, Duration::from_millis(200)).await;
        state.nodes[0].draining.store(true, Ordering::SeqCst);
        let client = reqwest::Client::new();
        for _ in 0..5 {
            let reply = (client.get(format!("http://{door}/account_balance?account_id=x")))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200);
            assert_eq!(reply.headers()[NODE_HEADER], "1");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 0);
        assert_eq!(state.nodes[1].in_flight.load(Ordering::SeqCst), 0);
    }

    /// Sends `method /deposit_money` through a front door over `nodes`; returns status and code.
    async fn through(nodes: Vec<SocketAddr>, method: reqwest::Method) -> (u16, String) {
        let addr = front_door(nodes).await;
        let reply = reqwest::Client::new()
            .request(method, format!("http://{addr}/deposit_money"))
            .header("content-type", "application/json")
            .body(r#"{"account_id":"00000000-0000-4000-8000-000000000000","amount":1}"#)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let body: serde_json::Value = reply.json().await.unwrap();
        (status, body["code"].as_str().unwrap_or_default().to_owned())
    }

    /// Review item 4: a write that reached a node whose answer was lost may have been applied.
    #[tokio::test]
    async fn a_write_whose_answer_was_lost_is_outcome_unknown() {
        let reply = through(vec![hangs_up().await], reqwest::Method::POST).await;
        assert_eq!(reply, (503, "outcome_unknown".to_owned()));
    }

    /// A node that answers every request with a 200 of `bytes` bytes.
    async fn answers_with(bytes: usize) -> SocketAddr {
        use tokio::io::AsyncWriteExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    let _ = socket.read(&mut buf).await;
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {bytes}\r\n\r\n");
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&vec![b'x'; bytes]).await;
                });
            }
        });
        addr
    }

    /// An answer over the front door's limit is not buffered and relayed; the write it answers
    /// was applied, so the client learns the outcome with its Idempotency-Key.
    #[tokio::test]
    async fn an_answer_over_the_limit_is_not_relayed() {
        let node = answers_with(MAX_REPLY_BYTES + 1).await;
        let reply = through(vec![node], reqwest::Method::POST).await;
        assert_eq!(reply, (503, "outcome_unknown".to_owned()));
        let node = answers_with(1_000).await;
        let (addr, _) = serve_door(paxos::Mode::Leaderless, vec![node], REQUEST_TIMEOUT).await;
        let reply = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.bytes().await.unwrap().len(), 1_000);
    }

    #[tokio::test]
    async fn a_read_whose_answer_was_lost_is_unavailable() {
        let reply = through(vec![hangs_up().await], reqwest::Method::GET).await;
        assert_eq!(reply, (503, "unavailable".to_owned()));
    }

    /// Refused connections sent nothing: the next node is tried, and when none is left the
    /// answer is a plain "retry".
    #[tokio::test]
    async fn a_write_no_node_received_is_unavailable() {
        let nodes = vec![closed_port().await, closed_port().await];
        let reply = through(nodes, reqwest::Method::POST).await;
        assert_eq!(reply, (503, "unavailable".to_owned()));
    }

    /// Review item 7: a body over the limit sent whole reads its 413, not a reset.
    #[tokio::test]
    async fn a_5_mib_body_sent_whole_reads_its_413() {
        use tokio::io::AsyncWriteExt as _;
        let addr = front_door(vec![closed_port().await]).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = vec![b' '; 5 << 20];
        let head = format!(
            "POST /deposit_money HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await.unwrap();
        client
            .write_all(&body)
            .await
            .expect("the whole body is taken, not reset");
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("payload_too_large"), "{text}");
    }
}
