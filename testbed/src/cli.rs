//! `testbed` command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The local testbed of the paxos bank.
#[derive(Debug, Parser)]
#[command(name = "testbed", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local cluster and its front door; Ctrl-C stops everything.
    Up(UpArgs),
    /// Restart every node of a running cluster one at a time, without failing a request.
    Restart(RestartArgs),
    /// Run an availability experiment: for each mode of a plan, a fresh cluster, an open-model
    /// load, the prober and the plan's faults; then a report (`testbed/plans/` has ready plans).
    Experiment(ExperimentArgs),
}

/// `testbed experiment <plan.toml>`: flags override the plan's values.
#[derive(Clone, Debug, clap::Args)]
pub struct ExperimentArgs {
    /// The plan (TOML; see `testbed/plans/`).
    pub plan: PathBuf,
    /// How long the measured load runs, per mode (`30s`, `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Load before the measurement, per mode.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<std::time::Duration>,
    /// Requests per second (open model: sent on schedule whatever earlier ones do).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Nodes per cluster.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Storage backend.
    #[arg(long, value_enum)]
    pub store: Option<node::store::StoreKind>,
    /// Seed of the fault schedule's choices and of the load's operation mix.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only these modes (comma-separated), instead of the plan's.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub modes: Option<Vec<paxos::Mode>>,
    /// The results folder (default: `./results/<plan>-<time>/`); must not exist or be empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar (lines only).
    #[arg(long)]
    pub no_progress: bool,
}

/// `testbed restart --rolling`.
#[derive(Clone, Debug, clap::Args)]
pub struct RestartArgs {
    /// One node at a time, followers first, the leader last after handing its lead over (the
    /// only form there is: a flag so that the command says what it does).
    #[arg(long, required = true)]
    pub rolling: bool,
    /// The cluster's front door.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub cluster: String,
    /// File holding the cluster token (else BANK_CLUSTER_TOKEN, else the token file the
    /// cluster names).
    #[arg(long, env = "BANK_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<std::path::PathBuf>,
}

/// `testbed up`.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// Number of node+paxos pairs (1 to 7).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// leader (one elected leader serves and proposes) or leaderless (every node proposes).
    #[arg(long, value_enum, default_value_t = paxos::Mode::Leader)]
    pub mode: paxos::Mode,
    /// Storage backend of the nodes: embedded (a redb file per node) or firestore.
    #[arg(long, value_enum, default_value_t = node::store::StoreKind::Embedded)]
    pub store: node::store::StoreKind,
    /// Firestore project. Without it and without FIRESTORE_EMULATOR_HOST, `--store firestore`
    /// starts a Firestore emulator (gcloud) for the cluster.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    pub firestore_project: Option<String>,
    /// Base name of the Firestore collections (default: `accounts-<random>`, fresh per cluster,
    /// so a new cluster never finds an old cluster's state).
    #[arg(long)]
    pub firestore_collection_prefix: Option<String>,
    /// Where the nodes keep their data (default: a fresh folder under the system temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Reuse the data already in --data-dir (without it, a non-empty --data-dir is refused).
    #[arg(long)]
    pub keep_data: bool,
    /// Front door port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Run every node in a network namespace of its own, joined by a bridge (needs root and
    /// iproute2): what chaos's partition and loss faults cut. URLs stay reachable from the host.
    #[arg(long)]
    pub netns: bool,
    /// Put a link proxy per node between its paxos process and each peer (what chaos's delay
    /// fault slows down); works with or without --netns.
    #[arg(long)]
    pub proxies: bool,
    /// Do not restart processes that die.
    #[arg(long)]
    pub no_restart: bool,
    /// Do not start the prober (by default it probes the front door every second, computes the
    /// availability SLOs and, in leader mode, elects a healthy replica when the leader's node
    /// stops answering).
    #[arg(long)]
    pub no_prober: bool,
    /// Port of the prober's `/status` and `/metrics` on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub prober_port: u16,
    /// Milliseconds between the prober's probe rounds.
    #[arg(long, default_value_t = 1_000)]
    pub prober_interval_ms: u64,
    /// Also run chaos, drawing from these faults (comma-separated: kill, shutdown, pause) on a
    /// seeded schedule; its URL is in `/_testbed/cluster` under `chaos`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub chaos: Option<Vec<chaos::fault::Fault>>,
    /// With --chaos: a fault every this long, less up to a quarter (`30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub chaos_every: std::time::Duration,
    /// With --chaos: which node (leader, follower, random or an id).
    #[arg(long, default_value = "random")]
    pub chaos_target: chaos::target::Target,
    /// With --chaos: spare nodes whose processes have run less than this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub chaos_min_age: std::time::Duration,
    /// With --chaos: how long a pause lasts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub chaos_pause: std::time::Duration,
    /// With --chaos: say what it would do, inject nothing.
    #[arg(long)]
    pub chaos_dry_run: bool,
    /// With --chaos: the schedule's seed (replays a run).
    #[arg(long)]
    pub chaos_seed: Option<u64>,
    /// With --chaos: port of its `/status` and `/metrics` on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub chaos_port: u16,
    /// Leader mode: keep the front door on its target even when another node leads (the
    /// prober retargets it); by default the front door follows the leader itself.
    #[arg(long)]
    pub manual_target: bool,
    /// Nodes hand their paxos process a snapshot every this many applied slots (log compaction).
    #[arg(long, default_value_t = 10_000)]
    pub compact_every: u64,
    /// Milliseconds per Paxos tick.
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// Also start a Prometheus (`apt-get install prometheus`) scraping every process with the
    /// generated `<data-dir>/prometheus.yml` (written with or without this flag).
    #[arg(long)]
    pub prometheus: bool,
    /// Port of that Prometheus on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 9090)]
    pub prometheus_port: u16,
}

impl UpArgs {
    /// Checks values; the message names the flag and the value.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=7).contains(&self.nodes),
            "--nodes must be 1 to 7, got {}",
            self.nodes
        );
        anyhow::ensure!(
            (1..=1_000).contains(&self.tick_ms),
            "--tick-ms must be 1 to 1000, got {}",
            self.tick_ms
        );
        Ok(())
    }
}
