//! The link proxy of `testbed up --proxies`: one per node, a third process beside its `node` and
//! `paxos` (in the node's network namespace with `--netns`), through which its paxos process
//! reaches every peer: link `i -> j` is a TCP listener on 127.0.0.1 (node i's peer URL for j)
//! forwarding to j's paxos process. Each link can hold back every chunk of bytes, in both
//! directions, for a delay set over its admin API: what chaos's `delay` fault uses, since this
//! kernel has no `tc netem`. With `--netns` the proxy connects from node i's namespace, so
//! partitions still cut what it forwards.
//!
//! Admin (on the node's address, the cluster token): `GET /links` lists `{to, delay_ms}`,
//! `PUT /links/{to}` with `{"delay_ms": n}` sets one (0 to 60,000).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One link: a listener forwarding to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The peer's node id.
    pub to: u32,
    /// Where the local paxos process connects.
    pub listen: SocketAddr,
    /// The peer's paxos process.
    pub upstream: SocketAddr,
}

impl FromStr for Link {
    type Err = String;

    /// `TO=LISTEN->UPSTREAM`, e.g. `2=127.0.0.1:4000->127.0.0.1:5002`.
    fn from_str(text: &str) -> Result<Link, String> {
        let bad = || format!("a link is TO=LISTEN->UPSTREAM, not {text:?}");
        let (to, rest) = text.split_once('=').ok_or_else(bad)?;
        let (listen, upstream) = rest.split_once("->").ok_or_else(bad)?;
        Ok(Link {
            to: to.parse().map_err(|_| bad())?,
            listen: listen.parse().map_err(|_| bad())?,
            upstream: upstream.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}->{}", self.to, self.listen, self.upstream)
    }
}

/// `testbed linkproxy`.
#[derive(Clone, Debug, PartialEq, clap::Parser)]
#[command(
    name = "linkproxy",
    about = "The link proxy of one node (testbed up --proxies)"
)]
pub struct Args {
    /// The admin API's address.
    #[arg(long)]
    pub admin: SocketAddr,
    /// A link, `TO=LISTEN->UPSTREAM`; repeatable.
    #[arg(long = "link")]
    pub links: Vec<Link>,
}

impl Args {
    /// The command line (after `linkproxy`) that parses back into `self`.
    pub fn to_args(&self) -> Vec<String> {
        std::iter::once(format!("--admin={}", self.admin))
            .chain(self.links.iter().map(|link| format!("--link={link}")))
            .collect()
    }
}

/// The longest delay the admin API accepts.
pub const MAX_DELAY_MS: u64 = 60_000;

/// The delay of each link, by peer id.
type Delays = Arc<Vec<(u32, AtomicU64)>>;

#[derive(Clone)]
struct Admin {
    delays: Delays,
    token: Arc<str>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DelaySetting {
    delay_ms: u64,
}

async fn list(State(admin): State<Admin>) -> Json<serde_json::Value> {
    let links: Vec<_> = (admin.delays.iter())
        .map(|(to, delay)| serde_json::json!({"to": to, "delay_ms": delay.load(Ordering::SeqCst)}))
        .collect();
    Json(serde_json::json!(links))
}

async fn set(
    State(admin): State<Admin>,
    Path(to): Path<u32>,
    headers: axum::http::HeaderMap,
    Json(setting): Json<DelaySetting>,
) -> Response {
    if !plumbing::bearer_matches(&headers, &admin.token) {
        return plumbing::unauthorized();
    }
    if setting.delay_ms > MAX_DELAY_MS {
        let body = serde_json::json!({"error": format!("delay_ms must be at most {MAX_DELAY_MS}"), "code": "invalid_request"});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let Some((_, delay)) = admin.delays.iter().find(|(peer, _)| *peer == to) else {
        let body =
            serde_json::json!({"error": format!("no link to node {to}"), "code": "not_found"});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    delay.store(setting.delay_ms, Ordering::SeqCst);
    tracing::info!(to, delay_ms = setting.delay_ms, "link delay set");
    Json(serde_json::json!({"to": to, "delay_ms": setting.delay_ms})).into_response()
}

/// Runs the proxy until `shutdown`.
pub async fn run(args: Args, token: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let delays: Delays = Arc::new(
        args.links
            .iter()
            .map(|l| (l.to, AtomicU64::new(0)))
            .collect(),
    );
    for (index, link) in args.links.iter().enumerate() {
        let listener = TcpListener::bind(link.listen)
            .await
            .with_context(|| format!("binding link {link}"))?;
        let (delays, upstream, shutdown) = (delays.clone(), link.upstream, shutdown.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let delays = delays.clone();
                tokio::spawn(async move {
                    // A peer that does not answer: the client sees the connection close, as it
                    // would without the proxy.
                    let Ok(Ok(server)) =
                        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream))
                            .await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let there = pipe(client_read, server_write, delays.clone(), index);
                    let back = pipe(server_read, client_write, delays, index);
                    let _ = tokio::join!(there, back);
                });
            }
        });
    }
    let admin = axum::Router::new()
        .route("/links", axum::routing::get(list))
        .route("/links/{to}", axum::routing::put(set))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(Admin {
            delays,
            token: token.into(),
        });
    let listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("binding --admin {}", args.admin))?;
    plumbing::serve(
        listener,
        admin,
        plumbing::Limits::DEFAULT,
        shutdown.cancelled_owned(),
    )
    .await?;
    Ok(())
}

/// Copies `from` to `to`, holding each chunk back by the link's delay at the moment it was read
/// (chunks keep their order; at most 256 in flight, then reading waits).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delays: Delays,
    link: usize,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let delay = Duration::from_millis(delays[link].1.load(Ordering::SeqCst));
            if tx
                .send((tokio::time::Instant::now() + delay, buffer[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// The `linkproxy` role's main (`testbed linkproxy ...`).
pub async fn main_with_args(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let args = Args::try_parse_from(args)?;
    let identity = telemetry::Identity::new("linkproxy", "any", "linkproxy");
    let telemetry = telemetry::init(&identity, telemetry::LogFormat::Human);
    let token = plumbing::read_cluster_token(plumbing::token_from_env(), None)?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        plumbing::shutdown_signal().await;
        signal.cancel();
    });
    let result = run(args, token, shutdown).await;
    telemetry.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn links_parse_and_print_back() {
        let link: Link = "2=127.0.0.1:4000->10.213.0.12:5002".parse().unwrap();
        assert_eq!(link.to, 2);
        assert_eq!(link.to_string(), "2=127.0.0.1:4000->10.213.0.12:5002");
        assert!("2:127.0.0.1:4000".parse::<Link>().is_err());
        let args = Args {
            admin: "127.0.0.1:1".parse().unwrap(),
            links: vec![link],
        };
        let line = std::iter::once("linkproxy".to_owned()).chain(args.to_args());
        assert_eq!(Args::parse_from(line), args);
    }

    /// Bytes through a link arrive intact, in order, and no earlier than its delay.
    #[tokio::test]
    async fn a_link_forwards_in_order_and_holds_bytes_for_its_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                socket.write_all(&buf[..n]).await.unwrap();
            }
        });
        let free = |_: ()| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (listen, admin) = (free(()), free(()));
        let args = Args {
            admin,
            links: vec![Link {
                to: 1,
                listen,
                upstream,
            }],
        };
        tokio::spawn(run(args, "t".into(), CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let http = reqwest::Client::new();
        let set = http
            .put(format!("http://{admin}/links/1"))
            .bearer_auth("t")
            .json(&serde_json::json!({"delay_ms": 150}))
            .send()
            .await
            .unwrap();
        assert_eq!(set.status(), 200);
        let unauthorized = http
            .put(format!("http://{admin}/links/1"))
            .json(&serde_json::json!({"delay_ms": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(unauthorized.status(), 401);
        let mut client = TcpStream::connect(listen).await.unwrap();
        let started = tokio::time::Instant::now();
        client.write_all(b"one two three").await.unwrap();
        let mut answer = vec![0u8; 13];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"one two three");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "held 150 ms each way: {:?}",
            started.elapsed()
        );
        let links: serde_json::Value = (http.get(format!("http://{admin}/links")).send().await)
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(links, serde_json::json!([{"to": 1, "delay_ms": 150}]));
    }
}
