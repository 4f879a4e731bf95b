//! Command-line configuration of the `node` binary. Every flag can also come from an
//! environment variable (shown in `node --help`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use paxos::Mode;

use crate::store::StoreKind;

/// A bank node: the banking REST API over a durable state machine.
#[derive(Clone, Debug, PartialEq, Eq, Parser)]
#[command(name = "node", version, about)]
pub struct Config {
    /// Public (client) address: the banking API, the web page, /healthz, /readyz, /openapi.json.
    #[arg(long, env = "BANK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Internal address: /shutdown, /metrics, /healthz, /readyz; every route needs the token.
    #[arg(long, env = "BANK_INTERNAL_LISTEN", default_value = "127.0.0.1:9080")]
    pub internal_listen: SocketAddr,

    /// Directory of the node's durable state (created if missing).
    #[arg(long, env = "BANK_DATA_DIR", default_value = "data/node")]
    pub data_dir: PathBuf,

    /// File holding the cluster token. The token can also come from BANK_CLUSTER_TOKEN; with
    /// neither, the node generates one into `<data-dir>/cluster-token` (mode 0600).
    #[arg(long, env = "BANK_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,

    /// File holding a read-only token for Prometheus: it reads the internal `/metrics` and
    /// nothing else (the cluster token still reads it too).
    #[arg(long, env = "BANK_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// Idempotency records are kept for this many further log entries (identical on every
    /// replica: it is part of the state machine).
    #[arg(long, env = "BANK_IDEMPOTENCY_RETENTION", default_value_t = 1_000_000)]
    pub idempotency_retention: u64,

    /// Most commands applied in one transaction (one fsync).
    #[arg(long, env = "BANK_MAX_BATCH", default_value_t = 1_024)]
    pub max_batch: usize,

    /// Cluster mode: most proposal batches out to paxos at once, each waiting to be decided.
    /// Commands that arrive while every batch is out wait and leave together in the next one,
    /// so batches grow with the load instead of the calls (1: the most batching; a lone
    /// command never waits).
    #[arg(long, env = "BANK_PROPOSALS_IN_FLIGHT", default_value_t = 1)]
    pub proposals_in_flight: usize,

    /// Cluster mode: under load (the last batch held 6 commands or more), the longest a
    /// proposal batch waits to grow as large as the last one (at most 24 commands), in
    /// microseconds; it leaves as soon as no command came for a quarter of this. 0 never waits;
    /// at low load nothing waits whatever this says. Default: 2000 in leader mode, 4000 in
    /// leaderless mode (see [`Config::propose_linger`]).
    #[arg(long, env = "BANK_PROPOSE_LINGER_US")]
    pub propose_linger_us: Option<u64>,

    /// Commands waiting to be applied before new ones get 503 overloaded.
    #[arg(long, env = "BANK_QUEUE_CAPACITY", default_value_t = 16_384)]
    pub queue_capacity: usize,

    /// How long a write waits for its outcome before answering 503 outcome_unknown.
    #[arg(long, env = "BANK_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BANK_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,

    /// Cluster mode: base URL of this node's paxos process (standalone without it).
    #[arg(long, env = "BANK_PAXOS_URL")]
    pub paxos_url: Option<String>,

    /// Cluster mode: this node's id (its paxos replica's id).
    #[arg(long, env = "BANK_NODE_ID", default_value_t = 0)]
    pub node_id: u32,

    /// Cluster mode: leader or leaderless.
    #[arg(long, env = "BANK_MODE", value_enum, default_value_t = Mode::Leader)]
    pub mode: Mode,

    /// Cluster mode: public base URLs of every node, comma-separated, in id order.
    #[arg(long, env = "BANK_PEERS_PUBLIC", value_delimiter = ',')]
    pub peers_public: Vec<String>,

    /// Cluster mode: hand paxos a snapshot of the store every this many applied slots.
    #[arg(long, env = "BANK_COMPACT_EVERY", default_value_t = 10_000)]
    pub compact_every: u64,

    /// Log format: human or json.
    #[arg(long, env = "BANK_LOG_FORMAT", default_value = "human")]
    pub log_format: telemetry::LogFormat,

    /// Storage backend: embedded (a redb file in --data-dir) or firestore.
    #[arg(long, env = "BANK_STORE", value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// Firestore: Google Cloud project (FIRESTORE_EMULATOR_HOST switches to the emulator).
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub firestore_project: Option<String>,

    /// Firestore: database id.
    #[arg(long, env = "BANK_FIRESTORE_DATABASE", default_value = "(default)")]
    pub firestore_database: String,

    /// Firestore: base name of the collections. Leaderless mode uses `<prefix>-<node id>` per
    /// node; leader mode and standalone use `<prefix>` (leader mode: shared by every node).
    #[arg(
        long,
        env = "BANK_FIRESTORE_COLLECTION_PREFIX",
        default_value = "accounts"
    )]
    pub firestore_collection_prefix: String,

    /// Firestore: longest wait for one request, in milliseconds.
    #[arg(long, env = "BANK_FIRESTORE_TIMEOUT_MS", default_value_t = 5_000)]
    pub firestore_timeout_ms: u64,
}

/// A configuration value out of range; the message names the flag and the value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The command line that parses back into `self` (without the program name): how the
    /// testbed and the manifests start a node from a typed value, never from hand-built strings.
    /// Every option is written out, defaults too.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--listen={}", self.listen),
            format!("--internal-listen={}", self.internal_listen),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--idempotency-retention={}", self.idempotency_retention),
            format!("--max-batch={}", self.max_batch),
            format!("--proposals-in-flight={}", self.proposals_in_flight),
            format!("--queue-capacity={}", self.queue_capacity),
            format!("--request-timeout-ms={}", self.request_timeout_ms),
            format!("--max-body-bytes={}", self.max_body_bytes),
            format!("--node-id={}", self.node_id),
            format!("--mode={}", self.mode),
            format!("--compact-every={}", self.compact_every),
            format!("--log-format={}", self.log_format),
            format!("--store={}", self.store),
            format!("--firestore-database={}", self.firestore_database),
            format!(
                "--firestore-collection-prefix={}",
                self.firestore_collection_prefix
            ),
            format!("--firestore-timeout-ms={}", self.firestore_timeout_ms),
        ];
        if !self.peers_public.is_empty() {
            args.push(format!("--peers-public={}", self.peers_public.join(",")));
        }
        let optional = [
            (
                "--cluster-token-file",
                self.cluster_token_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            ),
            (
                "--metrics-token-file",
                self.metrics_token_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            ),
            ("--paxos-url", self.paxos_url.clone()),
            ("--firestore-project", self.firestore_project.clone()),
            (
                "--propose-linger-us",
                self.propose_linger_us.map(|us| us.to_string()),
            ),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                args.push(format!("{flag}={value}"));
            }
        }
        args
    }

    /// The Firestore location of this node's state (`None` with the embedded store).
    pub fn firestore(&self) -> Option<crate::store::FirestoreConfig> {
        if self.store != StoreKind::Firestore {
            return None;
        }
        let cluster = self.paxos_url.is_some();
        let shared = cluster && self.mode == Mode::Leader;
        let collection = if cluster && !shared {
            format!("{}-{}", self.firestore_collection_prefix, self.node_id)
        } else {
            self.firestore_collection_prefix.clone()
        };
        Some(crate::store::FirestoreConfig {
            project: self.firestore_project.clone().unwrap_or_default(),
            database: self.firestore_database.clone(),
            collection,
            request_timeout: std::time::Duration::from_millis(self.firestore_timeout_ms),
            shared,
        })
    }

    /// How long a proposal batch may linger under load: `--propose-linger-us`, or the mode's
    /// default. Leader mode: 2 ms; the clients a decision answered send their next requests to
    /// the same leader, so the next batch fills within a round trip (64 clients: 1.18x the
    /// transfers, paxos CPU per operation -15%, docs/performance.md, tenth round). Leaderless
    /// mode: 4 ms. A load balancer that keeps each client connection on one node (a Kubernetes
    /// Service, the testbed's front door) sends a node's clients back to it, but a node's batch
    /// holds a third of the clients' commands and they come back less evenly, so it waits
    /// longer (64 clients, against no linger: 1.2-1.3x the transfers, 1.1x the mixed workload;
    /// 2 ms gained less, 10 ms as much on transfers but lost on the mixed workload, twelfth
    /// round). Behind a balancer that spreads one connection's requests over the nodes the
    /// node waits for commands that mostly go elsewhere: set 0 there.
    pub fn propose_linger(&self) -> std::time::Duration {
        let default = match self.mode {
            Mode::Leader => 2_000,
            Mode::Leaderless => 4_000,
        };
        std::time::Duration::from_micros(self.propose_linger_us.unwrap_or(default))
    }

    /// Checks ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(ConfigError(msg)) };
        check(
            self.idempotency_retention >= 1,
            format!(
                "--idempotency-retention must be at least 1, got {}",
                self.idempotency_retention
            ),
        )?;
        check(
            (1..=65_536).contains(&self.max_batch),
            format!("--max-batch must be 1..=65536, got {}", self.max_batch),
        )?;
        check(
            (1..=64).contains(&self.proposals_in_flight),
            format!(
                "--proposals-in-flight must be 1..=64, got {}",
                self.proposals_in_flight
            ),
        )?;
        check(
            self.propose_linger_us.is_none_or(|us| us <= 100_000),
            format!(
                "--propose-linger-us must be 0..=100000, got {}",
                self.propose_linger_us.unwrap_or_default()
            ),
        )?;
        check(
            (1..=1_048_576).contains(&self.queue_capacity),
            format!(
                "--queue-capacity must be 1..=1048576, got {}",
                self.queue_capacity
            ),
        )?;
        check(
            (1..=600_000).contains(&self.request_timeout_ms),
            format!(
                "--request-timeout-ms must be 1..=600000, got {}",
                self.request_timeout_ms
            ),
        )?;
        check(
            (256..=16 * 1024 * 1024).contains(&self.max_body_bytes),
            format!(
                "--max-body-bytes must be 256..=16777216, got {}",
                self.max_body_bytes
            ),
        )?;
        check(
            self.paxos_url.is_none() || (self.node_id as usize) < self.peers_public.len(),
            format!(
                "--node-id {} needs --peers-public with an entry for it, got {} entries",
                self.node_id,
                self.peers_public.len()
            ),
        )?;
        check(
            self.compact_every >= 1,
            format!(
                "--compact-every must be at least 1, got {}",
                self.compact_every
            ),
        )?;
        check(
            self.store != StoreKind::Firestore
                || self
                    .firestore_project
                    .as_deref()
                    .is_some_and(|p| !p.trim().is_empty()),
            "--store firestore needs --firestore-project (or GOOGLE_CLOUD_PROJECT)".to_owned(),
        )?;
        check(
            (100..=600_000).contains(&self.firestore_timeout_ms),
            format!(
                "--firestore-timeout-ms must be 100..=600000, got {}",
                self.firestore_timeout_ms
            ),
        )?;
        check(
            self.listen != self.internal_listen || self.listen.port() == 0,
            format!(
                "--listen and --internal-listen must differ, both are {}",
                self.listen
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The testbed and the manifests start nodes from `to_args`: whatever they set must come
    /// back unchanged through the parser the binary uses.
    #[test]
    fn to_args_parses_back_into_the_same_config() {
        let mut config = Config::parse_from(["node"]);
        config.listen = "127.0.0.1:7001".parse().unwrap();
        config.internal_listen = "127.0.0.1:7002".parse().unwrap();
        config.data_dir = "/tmp/a dir/bank".into();
        config.cluster_token_file = Some("/tmp/token".into());
        config.metrics_token_file = Some("/tmp/metrics".into());
        config.idempotency_retention = 77;
        config.max_batch = 5;
        config.propose_linger_us = Some(0);
        config.queue_capacity = 6;
        config.request_timeout_ms = 8;
        config.max_body_bytes = 4096;
        config.paxos_url = Some("http://127.0.0.1:7003".into());
        config.node_id = 1;
        config.mode = Mode::Leaderless;
        config.peers_public = vec!["http://a:1".into(), "http://b:2".into()];
        config.compact_every = 3;
        config.log_format = telemetry::LogFormat::Json;
        config.store = StoreKind::Firestore;
        config.firestore_project = Some("p".into());
        config.firestore_database = "db".into();
        config.firestore_collection_prefix = "acc".into();
        config.firestore_timeout_ms = 900;
        let args = std::iter::once("node".to_owned()).chain(config.to_args());
        assert_eq!(Config::parse_from(args), config);
        let defaults = Config::parse_from(["node"]);
        let args = std::iter::once("node".to_owned()).chain(defaults.to_args());
        assert_eq!(Config::parse_from(args), defaults);
    }

    #[test]
    fn proposal_batches_linger_by_default_longer_in_leaderless_mode() {
        let leader = Config::parse_from(["node", "--mode", "leader"]);
        let leaderless = Config::parse_from(["node", "--mode", "leaderless"]);
        if std::env::var_os("BANK_PROPOSE_LINGER_US").is_none() {
            assert_eq!(leader.propose_linger(), Duration::from_millis(2));
            assert_eq!(leaderless.propose_linger(), Duration::from_millis(4));
        }
        let set =
            Config::parse_from(["node", "--mode", "leaderless", "--propose-linger-us", "700"]);
        assert_eq!(set.propose_linger(), Duration::from_micros(700));
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::parse_from(["node"]);
        config.validate().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.internal_listen.to_string(), "127.0.0.1:9080");
    }

    #[test]
    fn firestore_collections_follow_the_mode() {
        let base = [
            "node",
            "--store",
            "firestore",
            "--firestore-project",
            "p",
            "--paxos-url",
            "http://127.0.0.1:1",
            "--peers-public",
            "a,b,c",
            "--node-id",
            "2",
        ];
        let leaderless = Config::parse_from(base.iter().chain(&["--mode", "leaderless"]));
        leaderless.validate().unwrap();
        let store = leaderless.firestore().unwrap();
        assert_eq!(store.collection, "accounts-2", "one collection per node");
        assert!(!store.shared);
        let leader = Config::parse_from(base.iter().chain(&["--mode", "leader"]));
        let store = leader.firestore().unwrap();
        assert_eq!(store.collection, "accounts", "one shared collection");
        assert!(store.shared);
        assert!(Config::parse_from(["node"]).firestore().is_none());
        let missing = Config::parse_from(["node", "--store", "firestore"]);
        if std::env::var("GOOGLE_CLOUD_PROJECT").is_err() {
            let err = missing.validate().unwrap_err().to_string();
            assert!(err.contains("--firestore-project"), "{err}");
        }
    }

    #[test]
    fn validation_names_the_flag_and_the_value() {
        let config = Config::parse_from(["node", "--max-batch", "0"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--max-batch") && err.contains("got 0"),
            "{err}"
        );
        for bad in ["0", "65"] {
            let config = Config::parse_from(["node", "--proposals-in-flight", bad]);
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains("--proposals-in-flight") && err.contains(&format!("got {bad}")),
                "{err}"
            );
        }
        let config = Config::parse_from(["node", "--propose-linger-us", "100001"]);
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--propose-linger-us") && err.contains("got 100001"),
            "{err}"
        );
        let config = Config::parse_from([
            "node",
            "--listen",
            "127.0.0.1:7000",
            "--internal-listen",
            "127.0.0.1:7000",
        ]);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("127.0.0.1:7000")
        );
    }
}
