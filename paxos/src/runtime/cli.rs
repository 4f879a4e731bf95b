//! The `paxos` binary's flags and `main`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{RuntimeConfig, run};
use crate::ballot::NodeId;
use crate::core::{Config, Mode};
use crate::transfer::PeerLimits;

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
#[derive(Clone, Debug, PartialEq, Eq, clap::Parser)]
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
    #[arg(long, env = "BANK_MODE", value_enum, default_value_t = Mode::Leader)]
    pub mode: Mode,
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
    /// The command line that parses back into `self` (without the program name): how the
    /// testbed and the manifests start a replica from a typed value, never from hand-built
    /// strings. Every option is written out, defaults too.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--id={}", self.id),
            format!("--peers={}", self.peers.join(",")),
            format!("--mode={}", self.mode),
            format!("--listen={}", self.listen),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--max-peer-body-bytes={}", self.max_peer_body_bytes),
            format!("--snapshot-chunk-bytes={}", self.snapshot_chunk_bytes),
            format!("--tick-ms={}", self.tick_ms),
            format!("--heartbeat-ticks={}", self.heartbeat_ticks),
            format!("--election-ticks={}", self.election_ticks),
            format!("--window={}", self.window),
            format!("--max-retained-log={}", self.max_retained_log),
            format!("--log-format={}", self.log_format),
        ];
        if let Some(file) = &self.cluster_token_file {
            args.push(format!("--cluster-token-file={}", file.display()));
        }
        if let Some(file) = &self.metrics_token_file {
            args.push(format!("--metrics-token-file={}", file.display()));
        }
        if let Some(state) = self.initial_cluster_state {
            let state = match state {
                InitialClusterState::New => "new",
                InitialClusterState::Existing => "existing",
            };
            args.push(format!("--initial-cluster-state={state}"));
        }
        if self.rejoin {
            args.push("--rejoin".to_owned());
        }
        args
    }

    /// The runtime configuration, validated.
    pub fn into_config(self, token: String) -> anyhow::Result<RuntimeConfig> {
        let mode = self.mode;
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
                .map(plumbing::read_token_file)
                .transpose()?,
        })
    }
}

/// The `paxos` binary's main, also used by the testbed when it re-executes itself.
pub async fn main_with_args(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let cli = Cli::try_parse_from(args)?;
    let identity = telemetry::Identity::new("paxos", cli.mode.as_str(), &cli.id.to_string());
    let telemetry = telemetry::init(&identity, cli.log_format);
    let token = plumbing::read_cluster_token(
        plumbing::token_from_env(),
        cli.cluster_token_file.as_deref(),
    )?;
    let cfg = cli.into_config(token)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding --listen {}", cfg.listen))?;
    telemetry::install_prometheus();
    telemetry::set_build_info("paxos", cfg.core.mode.as_str(), &cfg.core.id.to_string());
    crate::metrics::describe();
    crate::metrics::register();
    let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(telemetry::render);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        plumbing::shutdown_signal().await;
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The testbed and the manifests start replicas from `to_args`: whatever they set must come
    /// back unchanged through the parser the binary uses.
    #[test]
    fn to_args_parses_back_into_the_same_options() {
        let mut cli = Cli::parse_from(["paxos", "--id", "0", "--peers", "http://a:1"]);
        cli.id = 2;
        cli.peers = vec![
            "http://a:1".into(),
            "http://b:2".into(),
            "http://c:3".into(),
        ];
        cli.mode = Mode::Leaderless;
        cli.listen = "127.0.0.1:7003".parse().unwrap();
        cli.data_dir = "/tmp/some dir/paxos".into();
        cli.cluster_token_file = Some("/tmp/token".into());
        cli.metrics_token_file = Some("/tmp/metrics-token".into());
        cli.tick_ms = 7;
        cli.heartbeat_ticks = 3;
        cli.election_ticks = 11;
        cli.window = 9;
        cli.max_retained_log = 1234;
        cli.max_peer_body_bytes = 1 << 21;
        cli.snapshot_chunk_bytes = 1 << 20;
        cli.initial_cluster_state = Some(InitialClusterState::Existing);
        cli.rejoin = true;
        cli.log_format = telemetry::LogFormat::Json;
        let args = std::iter::once("paxos".to_owned()).chain(cli.to_args());
        assert_eq!(Cli::parse_from(args), cli);
        let defaults = Cli::parse_from(["paxos", "--id", "1", "--peers", "http://a:1,http://b:2"]);
        let args = std::iter::once("paxos".to_owned()).chain(defaults.to_args());
        assert_eq!(Cli::parse_from(args), defaults);
    }
}
