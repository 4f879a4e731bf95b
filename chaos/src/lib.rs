//! Chaos for the paxos bank: faults injected into a running cluster, once (`chaos inject`) or
//! on a seeded schedule (`chaos run`), with the controls an SRE expects of such a tool: dry-run,
//! a kill switch, at most one fault in flight, a minimum age of the target, excluded windows,
//! and every fault recorded (metrics, log lines, span events, `/status`). Whatever stops chaos,
//! nothing it paused stays paused (see [`fault`]).
//!
//! Layout: [`cluster`] (the cluster's nodes and processes), [`target`] (which node),
//! [`fault`] (inject and heal), [`schedule`] (when, seeded), [`metrics`], and here the two
//! commands.
#![deny(missing_docs)]

pub mod cluster;
pub mod fault;
pub mod kubernetes;
pub mod metrics;
pub mod schedule;
pub mod target;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::{Args, Parser, Subcommand};
use rand::SeedableRng as _;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterView, LocalCluster, NodeView};
use crate::fault::{Fault, Injected, Injector, Partition, Processes, Shape, record_path};
use crate::kubernetes::{KubernetesChaos, KubernetesTarget, Refused};
use crate::schedule::{CronExpr, Plan, Window, minute_of_day_utc};
use crate::target::{Target, node_age};

/// `chaos`.
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(
    name = "chaos",
    about = "Faults for the paxos bank: kill, shutdown and pause nodes, once or on a schedule"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The two forms.
#[derive(Clone, Debug, PartialEq, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Inject one fault now; with --duration hold it, then heal it and exit.
    Inject(InjectArgs),
    /// Inject faults on a seeded schedule until stopped (or --for, or --max-faults).
    Run(RunArgs),
    /// Continue every process an earlier chaos run left paused (it was killed), and exit.
    Heal(HealArgs),
}

/// `chaos heal`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct HealArgs {
    /// The testbed's front door.
    #[arg(long, env = "CHAOS_CLUSTER", required_unless_present = "kubernetes")]
    pub cluster: Option<String>,
    /// The cluster on Kubernetes.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// File holding the cluster token (healing a delay needs it; else BANK_CLUSTER_TOKEN, else
    /// the token file the testbed names).
    #[arg(long, env = "BANK_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
}

/// `chaos heal`: heals what an earlier run left (paused processes, cut namespaces, delayed
/// links); returns how many.
pub async fn heal(args: HealArgs) -> anyhow::Result<usize> {
    let http = http()?;
    let (backend, _) = Backend::connect(
        args.cluster.as_deref(),
        &args.kubernetes,
        args.cluster_token_file.as_deref(),
        http,
        Duration::ZERO,
    )
    .await?;
    let healed = backend.heal_leftovers().await?;
    println!("healed {healed} processes, namespaces, links and pods an earlier chaos run left");
    Ok(healed)
}

/// Where chaos acts on Kubernetes.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct KubernetesArgs {
    /// Act on bank pods through the Kubernetes API (in a pod: its service account) instead of
    /// the testbed; a dry run unless --no-dry-run, as chaoskube.
    #[arg(long, env = "CHAOS_KUBERNETES", conflicts_with = "cluster")]
    pub kubernetes: bool,
    /// Kubernetes: the namespace of the bank pods (default: chaos's own).
    #[arg(long, env = "CHAOS_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// Kubernetes: the label selector of the pods chaos may hit.
    #[arg(
        long,
        env = "CHAOS_K8S_POD_SELECTOR",
        default_value = "app.kubernetes.io/name=bank"
    )]
    pub k8s_pod_selector: String,
    /// Kubernetes: the port of each pod's node container (a partition leaves it open).
    #[arg(long, env = "CHAOS_K8S_PUBLIC_PORT", default_value_t = 8080)]
    pub k8s_public_port: u16,
    /// Kubernetes: the port of each pod's paxos container (where the leader is asked).
    #[arg(long, env = "CHAOS_K8S_PAXOS_PORT", default_value_t = 9180)]
    pub k8s_paxos_port: u16,
}

impl KubernetesArgs {
    fn to_args(&self) -> Vec<String> {
        if !self.kubernetes {
            return Vec::new();
        }
        let mut args = vec![
            "--kubernetes".to_owned(),
            format!("--k8s-pod-selector={}", self.k8s_pod_selector),
            format!("--k8s-public-port={}", self.k8s_public_port),
            format!("--k8s-paxos-port={}", self.k8s_paxos_port),
        ];
        if let Some(namespace) = &self.k8s_namespace {
            args.push(format!("--k8s-namespace={namespace}"));
        }
        args
    }
}

/// Where chaos acts: the testbed (processes, namespaces, link proxies) or Kubernetes (pods,
/// evictions, NetworkPolicies).
#[derive(Clone)]
pub enum Backend {
    /// A testbed cluster behind its front door.
    Testbed {
        /// Its front door.
        cluster: LocalCluster,
        /// What injects into its processes and links.
        injector: Injector,
    },
    /// Bank pods on Kubernetes.
    Kubernetes(KubernetesChaos),
}

impl Backend {
    /// Connects to the testbed at `cluster`, or to Kubernetes; waits up to `wait` for a
    /// testbed that is still starting. Returns the backend and the cluster token.
    pub async fn connect(
        cluster: Option<&str>,
        kubernetes: &KubernetesArgs,
        token_file: Option<&Path>,
        http: reqwest::Client,
        wait: Duration,
    ) -> anyhow::Result<(Backend, Option<String>)> {
        if kubernetes.kubernetes {
            let token = plumbing::read_cluster_token(plumbing::token_from_env(), token_file)
                .context("chaos on Kubernetes asks the paxos processes who leads: it needs the cluster token")?;
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in a pod: its service account)")?;
            let namespace = (kubernetes.k8s_namespace.clone())
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let target = KubernetesTarget {
                namespace,
                pod_selector: kubernetes.k8s_pod_selector.clone(),
                public_port: kubernetes.k8s_public_port,
                paxos_port: kubernetes.k8s_paxos_port,
            };
            let chaos = KubernetesChaos::new(client, http, token.clone(), target);
            return Ok((Backend::Kubernetes(chaos), Some(token)));
        }
        let url = cluster.context("--cluster (the testbed's front door) or --kubernetes")?;
        let cluster = LocalCluster::new(http.clone(), url);
        let deadline = Instant::now() + wait;
        let view = loop {
            match cluster.view().await {
                Ok(view) => break view,
                Err(err) if Instant::now() >= deadline => {
                    return Err(err.context("reading the cluster"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let file = (token_file.map(Path::to_path_buf))
            .or_else(|| view.token_file.as_ref().map(PathBuf::from));
        let token = plumbing::read_cluster_token(plumbing::token_from_env(), file.as_deref()).ok();
        let injector = Injector::new(http, token.clone(), record_path(Path::new(&view.data_dir)));
        Ok((Backend::Testbed { cluster, injector }, token))
    }

    /// The cluster now.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        match self {
            Backend::Testbed { cluster, .. } => cluster.view().await,
            Backend::Kubernetes(chaos) => chaos.view().await,
        }
    }

    /// Injects `fault` at node `target` of `view`.
    pub async fn inject(
        &self,
        fault: Fault,
        view: &ClusterView,
        target: u32,
        shape: Shape,
    ) -> anyhow::Result<Injected> {
        match self {
            Backend::Testbed { injector, .. } => injector.inject(fault, view, target, shape).await,
            Backend::Kubernetes(chaos) => chaos.inject(fault, view, target, shape).await,
        }
    }

    /// Heals what `injected` left.
    pub async fn heal(&self, injected: &Injected) -> anyhow::Result<()> {
        match self {
            Backend::Testbed { injector, .. } => injector.heal(injected).await,
            Backend::Kubernetes(chaos) => chaos.heal(injected).await,
        }
    }

    /// Heals what a chaos run that is gone left; returns how much.
    pub async fn heal_leftovers(&self) -> anyhow::Result<usize> {
        match self {
            Backend::Testbed { injector, .. } => injector.heal_leftovers().await,
            Backend::Kubernetes(chaos) => chaos.heal_leftovers().await,
        }
    }

    fn is_kubernetes(&self) -> bool {
        matches!(self, Backend::Kubernetes(_))
    }
}

/// True once node `node` of `view` is ready again and is not what `injected` hit (new
/// processes on the testbed, a new pod on Kubernetes).
fn replaced(view: &ClusterView, node: u32, injected: &Injected) -> bool {
    view.nodes.iter().find(|n| n.id == node).is_some_and(|n| {
        let new = match (&n.pod, &injected.pod_uid) {
            (Some(pod), Some(uid)) => pod.uid != *uid,
            _ => !(injected.pids.iter()).any(|&p| p == n.node_pid || p == n.paxos_pid),
        };
        n.ready && new
    })
}

/// What both forms take.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct Common {
    /// The testbed's front door (its `/_testbed/cluster` names the nodes and their processes).
    #[arg(long, env = "CHAOS_CLUSTER", required_unless_present = "kubernetes")]
    pub cluster: Option<String>,
    /// Or the cluster on Kubernetes.
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    /// Which node: leader, follower, random, a node id or a pod name (bank-2).
    #[arg(long, default_value = "random")]
    pub target: Target,
    /// Which of the node's processes: node, paxos or both (kill, shutdown, pause).
    #[arg(long, value_enum, default_value_t = Processes::Both)]
    pub process: Processes,
    /// The shape of a partition around the target: isolate, one-way (it hears no one),
    /// split (a minority with it, the majority), bridge (two halves that both hear it).
    #[arg(long, value_enum, default_value_t = Partition::Isolate)]
    pub partition: Partition,
    /// Loss: percent of the packets on the target's links dropped (1 to 100).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub loss_percent: u8,
    /// Delay: milliseconds every chunk on the target's links is held, each way (1 to 60000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub delay_ms: u64,
    /// Print what would be done; inject nothing (the default on Kubernetes).
    #[arg(long)]
    pub dry_run: bool,
    /// Kubernetes: inject for real.
    #[arg(long, requires = "kubernetes", conflicts_with = "dry_run")]
    pub no_dry_run: bool,
    /// File holding the cluster token (`shutdown` needs it; else BANK_CLUSTER_TOKEN, else the
    /// token file the testbed names).
    #[arg(long, env = "BANK_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,
    /// Log lines: human or json.
    #[arg(long, env = "BANK_LOG_FORMAT", default_value = "human")]
    pub log_format: telemetry::LogFormat,
}

/// `chaos inject`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct InjectArgs {
    /// kill, shutdown or pause.
    #[arg(value_enum)]
    pub fault: Fault,
    /// Target and controls.
    #[command(flatten)]
    pub common: Common,
    /// Hold the fault this long, then heal it (`10s`, `1m`); a pause, partition or loss needs it.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// `chaos run`.
#[derive(Clone, Debug, PartialEq, Args)]
pub struct RunArgs {
    /// Target and controls.
    #[command(flatten)]
    pub common: Common,
    /// The faults to draw from, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kill")]
    pub faults: Vec<Fault>,
    /// Take the faults in turn instead of drawing each at random.
    #[arg(long)]
    pub cycle: bool,
    /// Inject at the times of this cron expression, UTC, seconds first (`0 */5 * * * *`)
    /// instead of every --every.
    #[arg(long)]
    pub cron: Option<CronExpr>,
    /// A fault every this long (less the jitter).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub every: Duration,
    /// Up to this share of --every is taken off each interval at random (0 to 1).
    #[arg(long, default_value_t = 0.25)]
    pub jitter: f64,
    /// How long a pause, partition or loss lasts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Spare nodes whose processes have run less than this (still catching up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub min_age: Duration,
    /// Seed of the schedule (default: from the clock; printed, to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Inject nothing in this window of the day, UTC (`09:00-17:00`); repeatable.
    #[arg(long)]
    pub exclude: Vec<Window>,
    /// While this file exists, inject nothing and heal what is active.
    #[arg(long)]
    pub kill_switch_file: Option<PathBuf>,
    /// While this PromQL query returns a sample that is not 0 (say
    /// `ALERTS{alertname="BankAvailabilityBudgetBurn",alertstate="firing"}`), inject nothing and
    /// heal what is active. Asked every second; while Prometheus does not answer, chaos holds too.
    #[arg(long)]
    pub kill_switch_query: Option<String>,
    /// The Prometheus that --kill-switch-query asks.
    #[arg(
        long,
        env = "CHAOS_PROMETHEUS",
        default_value = "http://127.0.0.1:9090"
    )]
    pub prometheus: String,
    /// Stop after this many faults.
    #[arg(long)]
    pub max_faults: Option<u64>,
    /// Stop after this long.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub run_for: Option<Duration>,
    /// Address of chaos's `/metrics`, `/status` and `/kill-switch`.
    #[arg(long, env = "CHAOS_LISTEN", default_value = "127.0.0.1:9300")]
    pub listen: SocketAddr,
}

fn duration_arg(flag: &str, value: Duration) -> String {
    format!("{flag}={}", humantime::format_duration(value))
}

impl Common {
    /// A dry run: asked for, or on Kubernetes unless --no-dry-run.
    pub fn dry_run(&self) -> bool {
        self.dry_run || (self.kubernetes.kubernetes && !self.no_dry_run)
    }

    /// The fault's shape from the flags.
    pub fn shape(&self) -> Shape {
        Shape {
            processes: self.process,
            partition: self.partition,
            loss_percent: self.loss_percent,
            delay_ms: self.delay_ms,
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut args = self.kubernetes.to_args();
        if let Some(cluster) = &self.cluster {
            args.push(format!("--cluster={cluster}"));
        }
        args.extend([
            format!("--target={}", self.target),
            format!(
                "--process={}",
                match self.process {
                    Processes::Node => "node",
                    Processes::Paxos => "paxos",
                    Processes::Both => "both",
                }
            ),
            format!("--log-format={}", self.log_format),
            format!(
                "--partition={}",
                match self.partition {
                    Partition::Isolate => "isolate",
                    Partition::OneWay => "one-way",
                    Partition::Split => "split",
                    Partition::Bridge => "bridge",
                }
            ),
            format!("--loss-percent={}", self.loss_percent),
            format!("--delay-ms={}", self.delay_ms),
        ]);
        if self.dry_run {
            args.push("--dry-run".into());
        }
        if self.no_dry_run {
            args.push("--no-dry-run".into());
        }
        if let Some(file) = &self.cluster_token_file {
            args.push(format!("--cluster-token-file={}", file.display()));
        }
        args
    }
}

impl RunArgs {
    /// The command line (after `chaos run`) that parses back into `self`: how the testbed
    /// starts chaos from a typed value.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = self.common.to_args();
        let faults: Vec<&str> = self.faults.iter().map(|f| f.as_str()).collect();
        args.push(format!("--faults={}", faults.join(",")));
        args.push(duration_arg("--every", self.every));
        args.push(format!("--jitter={}", self.jitter));
        args.push(duration_arg("--duration", self.duration));
        args.push(duration_arg("--min-age", self.min_age));
        args.push(format!("--listen={}", self.listen));
        if let Some(seed) = self.seed {
            args.push(format!("--seed={seed}"));
        }
        if self.cycle {
            args.push("--cycle".into());
        }
        if let Some(cron) = &self.cron {
            args.push(format!("--cron={cron}"));
        }
        for window in &self.exclude {
            args.push(format!("--exclude={window}"));
        }
        if let Some(file) = &self.kill_switch_file {
            args.push(format!("--kill-switch-file={}", file.display()));
        }
        if let Some(query) = &self.kill_switch_query {
            args.push(format!("--kill-switch-query={query}"));
        }
        args.push(format!("--prometheus={}", self.prometheus));
        if let Some(max) = self.max_faults {
            args.push(format!("--max-faults={max}"));
        }
        if let Some(limit) = self.run_for {
            args.push(duration_arg("--for", limit));
        }
        args
    }

    /// Checks ranges; the message names the flag and the value.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.every >= Duration::from_millis(100),
            "--every must be at least 100ms, got {:?}",
            self.every
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.jitter),
            "--jitter must be 0 to 1, got {}",
            self.jitter
        );
        anyhow::ensure!(
            self.duration >= Duration::from_millis(10)
                && self.duration <= Duration::from_secs(3600),
            "--duration must be 10ms to 1h, got {:?}",
            self.duration
        );
        anyhow::ensure!(!self.faults.is_empty(), "--faults names no fault");
        Ok(())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
        .build()
        .context("building the HTTP client")
}

fn node(view: &ClusterView, id: u32) -> anyhow::Result<&NodeView> {
    (view.nodes.iter().find(|n| n.id == id)).with_context(|| format!("no node {id}"))
}

/// `chaos inject`: one fault now. Returns what it did, one line per step (also printed).
pub async fn inject(args: InjectArgs, shutdown: CancellationToken) -> anyhow::Result<Vec<String>> {
    let (backend, _) = Backend::connect(
        args.common.cluster.as_deref(),
        &args.common.kubernetes,
        args.common.cluster_token_file.as_deref(),
        http()?,
        Duration::ZERO,
    )
    .await?;
    inject_with(args, &backend, shutdown).await
}

/// `chaos inject` through `backend`.
pub async fn inject_with(
    args: InjectArgs,
    backend: &Backend,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        !args.fault.holds() || args.duration.is_some(),
        "{} needs --duration (how long it lasts before chaos heals it)",
        args.fault
    );
    let dry_run = args.common.dry_run();
    let view = backend.view().await?;
    let mut said = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        said.push(line);
    };
    if !dry_run {
        let healed = backend.heal_leftovers().await?;
        if healed > 0 {
            say(format!("healed {healed} things an earlier chaos run left"));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(unix_now().to_bits());
    let id = (args.common.target)
        .choose(&view, Duration::ZERO, node_age, &mut rng)
        .with_context(|| format!("target {}", args.common.target))?;
    let node = node(&view, id)?;
    let whom = match &node.pod {
        Some(pod) => format!("pod {} (node {id})", pod.name),
        None => format!("node {id}"),
    };
    let what = match (args.fault, &node.pod) {
        (Fault::Partition, _) => format!("partition {whom} ({:?})", args.common.partition),
        (Fault::Loss, _) => format!("loss {whom} ({}% of packets)", args.common.loss_percent),
        (Fault::Delay, _) => format!("delay {whom} ({} ms each way)", args.common.delay_ms),
        (fault, Some(_)) => format!("{fault} {whom}"),
        (fault, None) => format!(
            "{fault} {whom} ({:?}; node PID {}, paxos PID {})",
            args.common.process, node.node_pid, node.paxos_pid
        ),
    };
    if dry_run {
        let hint = if backend.is_kubernetes() {
            " (a dry run is the default on Kubernetes: --no-dry-run to inject)"
        } else {
            ""
        };
        say(format!("dry run: would {what}{hint}"));
        return Ok(said);
    }
    let span = tracing::info_span!("chaos.fault", fault = %args.fault, target = id);
    let injected = (backend.inject(args.fault, &view, id, args.common.shape())).await?;
    tracing::info!(parent: &span, pids = ?injected.pids, "injected");
    ::metrics::counter!(metrics::FAULTS, "fault" => args.fault.as_str(), "target" => format!("node-{id}"))
        .increment(1);
    say(format!("injected: {what}"));
    if let Some(hold) = args.duration {
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            () = shutdown.cancelled() => say("interrupted: healing now".into()),
        }
        backend.heal(&injected).await?;
        tracing::info!(parent: &span, "healed");
        say(format!("healed: {} {whom}", args.fault));
    }
    Ok(said)
}

/// One fault of a run, for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Record {
    /// Unix time it was injected (or would have been, in a dry run).
    pub at: f64,
    /// The fault.
    pub fault: Fault,
    /// The node.
    pub target: Option<u32>,
    /// The PIDs it hit.
    pub pids: Vec<u32>,
    /// Unix time its effect ended (healed, or the node ready again), when it has.
    pub ended: Option<f64>,
    /// A dry run: nothing was injected.
    pub dry_run: bool,
    /// Why it was not injected, or what went wrong.
    pub error: Option<String>,
}

/// The state `/status` shows and the kill switch changes.
#[derive(Debug, Default)]
struct RunState {
    seed: u64,
    dry_run: bool,
    injected: u64,
    kill_switch_endpoint: bool,
    kill_switch_file: bool,
    kill_switch_query: bool,
    active: bool,
    history: VecDeque<Record>,
}

const HISTORY: usize = 50;

impl RunState {
    fn engaged(&self) -> bool {
        self.kill_switch_endpoint || self.kill_switch_file || self.kill_switch_query
    }

    fn push(&mut self, record: Record) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(record);
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "dry_run": self.dry_run,
            "injected": self.injected,
            "active": self.active,
            "kill_switch": {
                "engaged": self.engaged(),
                "endpoint": self.kill_switch_endpoint,
                "file": self.kill_switch_file,
                "query": self.kill_switch_query,
            },
            "faults": self.history,
        })
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<RunState>>,
    token: Option<Arc<str>>,
    /// Cancelled when the kill switch engages: the active fault heals at once.
    heal_now: Arc<Mutex<CancellationToken>>,
}

async fn kill_switch(
    State(shared): State<Shared>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Response {
    let Some(token) = &shared.token else {
        return (
            StatusCode::FORBIDDEN,
            "no cluster token: the kill switch endpoint is off",
        )
            .into_response();
    };
    if !plumbing::bearer_matches(&headers, token) {
        return plumbing::unauthorized();
    }
    let engage = method == axum::http::Method::POST;
    shared
        .state
        .lock()
        .expect("state lock")
        .kill_switch_endpoint = engage;
    if engage {
        shared.heal_now.lock().expect("heal lock").cancel();
        tracing::warn!("kill switch engaged over HTTP: injecting nothing, healing what is active");
    } else {
        tracing::info!("kill switch released over HTTP");
    }
    axum::Json(shared.state.lock().expect("state lock").status()).into_response()
}

/// `chaos run`: faults on a schedule until `shutdown`, `--for` or `--max-faults`; serves
/// `/metrics`, `/status` and `/kill-switch` (POST engages, DELETE releases; cluster token) on
/// `listener`. Returns the last `/status` document.
pub async fn run(
    args: RunArgs,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<serde_json::Value> {
    args.validate()?;
    // Started beside a cluster that is still starting (`testbed up --chaos`): wait for it.
    let (backend, token) = Backend::connect(
        args.common.cluster.as_deref(),
        &args.common.kubernetes,
        args.common.cluster_token_file.as_deref(),
        http()?,
        Duration::from_secs(30),
    )
    .await?;
    run_with(args, backend, token, listener, shutdown).await
}

/// `chaos run` through `backend`; `token` guards the kill switch endpoint.
pub async fn run_with(
    args: RunArgs,
    backend: Backend,
    token: Option<String>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<serde_json::Value> {
    args.validate()?;
    let http_for_query = http()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let view = loop {
        match backend.view().await {
            Ok(view) => break view,
            Err(err) if Instant::now() >= deadline || shutdown.is_cancelled() => {
                return Err(err.context("reading the cluster"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let dry_run = args.common.dry_run();
    if !dry_run {
        backend.heal_leftovers().await?;
    }
    metrics::register(view.nodes.iter().map(|n| n.id));
    let seed = args.seed.unwrap_or_else(|| unix_now().to_bits());
    tracing::info!(
        seed,
        every = %humantime::format_duration(args.every),
        faults = ?args.faults,
        target = %args.common.target,
        dry_run,
        "chaos run (replay with --seed {seed})"
    );
    let shared = Shared {
        state: Arc::new(Mutex::new(RunState {
            seed,
            dry_run,
            ..RunState::default()
        })),
        token: token.map(Arc::from),
        heal_now: Arc::new(Mutex::new(CancellationToken::new())),
    };
    let app = axum::Router::new()
        .route(
            "/status",
            axum::routing::get({
                let state = shared.state.clone();
                move || async move { axum::Json(state.lock().expect("state lock").status()) }
            }),
        )
        .route(
            "/kill-switch",
            axum::routing::post(kill_switch).delete(kill_switch),
        )
        .route(
            "/metrics",
            axum::routing::get(|| async { telemetry::render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(shared.clone());
    let server = tokio::spawn(plumbing::serve(
        listener,
        app,
        plumbing::Limits::DEFAULT,
        shutdown.clone().cancelled_owned(),
    ));
    let started = Instant::now();
    let mut plan = Plan::new(
        args.every,
        args.jitter,
        args.faults.clone(),
        args.cycle,
        seed,
    )
    .with_cron(args.cron.clone());
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_query: Option<Instant> = None;
    'run: loop {
        let step = plan.next_step();
        let due = Instant::now() + step.delay;
        // Wait for the step, looking at the kill switch file every tick, asking its query
        // every second.
        loop {
            watch_kill_switch_file(&args, &shared);
            if last_query.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_query = Some(Instant::now());
                watch_kill_switch_query(&args, &shared, &http_for_query).await;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            if args.run_for.is_some_and(|limit| started.elapsed() >= limit) {
                break 'run;
            }
            tokio::select! {
                () = shutdown.cancelled() => break 'run,
                () = tokio::time::sleep((due - now).min(Duration::from_millis(200))) => {}
            }
        }
        if args.run_for.is_some_and(|limit| started.elapsed() >= limit) {
            break;
        }
        let skip = |reason: &'static str, record: Option<Record>| {
            ::metrics::counter!(metrics::SKIPPED, "reason" => reason).increment(1);
            tracing::info!(reason, fault = %step.fault, "fault skipped");
            if let Some(record) = record {
                shared.state.lock().expect("state lock").push(record);
            }
        };
        if shared.state.lock().expect("state lock").engaged() {
            skip("kill_switch", None);
            continue;
        }
        if args.exclude.iter().any(|w| w.contains(minute_of_day_utc())) {
            skip("excluded_window", None);
            continue;
        }
        if in_flight.as_ref().is_some_and(|task| !task.is_finished()) {
            skip("in_flight", None);
            continue;
        }
        let record = |target: Option<u32>, pids: Vec<u32>, error: Option<String>| Record {
            at: unix_now(),
            fault: step.fault,
            target,
            pids,
            ended: None,
            dry_run,
            error,
        };
        let view = match backend.view().await {
            Ok(view) => view,
            Err(err) => {
                skip(
                    "no_cluster",
                    Some(record(None, Vec::new(), Some(format!("{err:#}")))),
                );
                continue;
            }
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step.target_seed);
        let id = match (args.common.target).choose(&view, args.min_age, node_age, &mut rng) {
            Ok(id) => id,
            Err(err) => {
                skip(
                    "no_target",
                    Some(record(None, Vec::new(), Some(err.to_string()))),
                );
                continue;
            }
        };
        if dry_run {
            tracing::info!(fault = %step.fault, target = id, "dry run: would inject");
            plan.injected();
            skip("dry_run", Some(record(Some(id), Vec::new(), None)));
            continue;
        }
        let span = tracing::info_span!("chaos.fault", fault = %step.fault, target = id);
        let shape = args.common.shape();
        let injected = match backend.inject(step.fault, &view, id, shape).await {
            Ok(injected) => injected,
            Err(err) => {
                tracing::warn!(parent: &span, error = format!("{err:#}"), "injection failed");
                // Tried: with --cycle the next fault's turn comes (a fault that cannot be
                // injected does not hold up the others).
                plan.injected();
                let reason = if err.downcast_ref::<Refused>().is_some() {
                    "disruption_budget"
                } else {
                    "failed"
                };
                skip(
                    reason,
                    Some(record(Some(id), Vec::new(), Some(format!("{err:#}")))),
                );
                continue;
            }
        };
        tracing::warn!(parent: &span, pids = ?injected.pids, "injected");
        let target = format!("node-{id}");
        ::metrics::counter!(metrics::FAULTS, "fault" => step.fault.as_str(), "target" => target.clone())
            .increment(1);
        ::metrics::gauge!(metrics::ACTIVE, "fault" => step.fault.as_str(), "target" => target)
            .set(1.0);
        let heal_now = CancellationToken::new();
        *shared.heal_now.lock().expect("heal lock") = heal_now.clone();
        plan.injected();
        let injected_count = {
            let mut state = shared.state.lock().expect("state lock");
            state.injected += 1;
            state.active = true;
            state.push(record(Some(id), injected.pids.clone(), None));
            state.injected
        };
        in_flight = Some(tokio::spawn(end_of_fault(
            EndOfFault {
                fault: step.fault,
                node: id,
                injected,
                pause: args.duration,
                backend: backend.clone(),
                shared: shared.clone(),
                span,
            },
            heal_now,
            shutdown.clone(),
        )));
        if args.max_faults.is_some_and(|max| injected_count >= max) {
            break;
        }
    }
    // Stopping heals what is active.
    shared.heal_now.lock().expect("heal lock").cancel();
    if let Some(task) = in_flight {
        let _ = task.await;
    }
    shutdown.cancel();
    let _ = server.await;
    let status = shared.state.lock().expect("state lock").status();
    Ok(status)
}

/// Asks `--kill-switch-query` of Prometheus: engaged while it returns a sample that is not 0, or
/// while Prometheus cannot be asked (fail safe: a tool that breaks things should stop when it
/// cannot see).
async fn watch_kill_switch_query(args: &RunArgs, shared: &Shared, http: &reqwest::Client) {
    let Some(query) = &args.kill_switch_query else {
        return;
    };
    let url = format!("{}/api/v1/query", args.prometheus.trim_end_matches('/'));
    let answer = async {
        let url = reqwest::Url::parse_with_params(&url, &[("query", query)])?;
        let reply: serde_json::Value = (http.get(url))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::ensure!(reply["status"] == "success", "Prometheus answered {reply}");
        let samples = reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A vector's samples are [time, "value"]; a scalar's result is itself [time, "value"].
        let firing = samples.iter().any(|sample| {
            let value = sample["value"][1].as_str().or_else(|| sample.as_str());
            value.is_some_and(|v| v.parse::<f64>().is_ok_and(|v| v != 0.0))
        });
        Ok::<bool, anyhow::Error>(firing)
    };
    let (engaged, why) = match answer.await {
        Ok(firing) => (
            firing,
            if firing {
                "the query returns a sample"
            } else {
                ""
            },
        ),
        Err(err) => {
            tracing::warn!(
                url,
                error = format!("{err:#}"),
                "the kill switch query cannot be asked: holding"
            );
            (true, "Prometheus cannot be asked")
        }
    };
    let mut state = shared.state.lock().expect("state lock");
    if engaged != state.kill_switch_query {
        state.kill_switch_query = engaged;
        if engaged {
            tracing::warn!(
                query,
                why,
                "kill switch query engaged: injecting nothing, healing what is active"
            );
            shared.heal_now.lock().expect("heal lock").cancel();
        } else {
            tracing::info!(query, "kill switch query released");
        }
    }
    ::metrics::gauge!(metrics::KILL_SWITCH).set(if state.engaged() { 1.0 } else { 0.0 });
}

fn watch_kill_switch_file(args: &RunArgs, shared: &Shared) {
    let Some(file) = &args.kill_switch_file else {
        return;
    };
    let exists = file.exists();
    let mut state = shared.state.lock().expect("state lock");
    if exists != state.kill_switch_file {
        state.kill_switch_file = exists;
        if exists {
            tracing::warn!(file = %file.display(), "kill switch file present: injecting nothing, healing what is active");
            shared.heal_now.lock().expect("heal lock").cancel();
        } else {
            tracing::info!(file = %file.display(), "kill switch file gone");
        }
    }
    ::metrics::gauge!(metrics::KILL_SWITCH).set(if state.engaged() { 1.0 } else { 0.0 });
}

/// What ends a fault's effect.
struct EndOfFault {
    fault: Fault,
    node: u32,
    injected: Injected,
    pause: Duration,
    backend: Backend,
    shared: Shared,
    span: tracing::Span,
}

/// The longest chaos waits for a killed node to be ready again before it stops counting the
/// fault as active.
const RECOVERY_WATCH: Duration = Duration::from_secs(60);

/// Heals a pause after its duration (or at once, on the kill switch or at shutdown); watches a
/// killed or shut-down node until it is ready again with new processes. Then the fault is no
/// longer active.
async fn end_of_fault(end: EndOfFault, heal_now: CancellationToken, shutdown: CancellationToken) {
    match end.fault {
        Fault::Pause | Fault::Partition | Fault::Loss | Fault::Delay => {
            tokio::select! {
                () = tokio::time::sleep(end.pause) => {}
                () = heal_now.cancelled() => {}
                () = shutdown.cancelled() => {}
            }
            match end.backend.heal(&end.injected).await {
                Ok(()) => tracing::info!(parent: &end.span, "healed"),
                Err(err) => {
                    tracing::error!(parent: &end.span, error = format!("{err:#}"), "healing failed")
                }
            }
        }
        Fault::Kill | Fault::Shutdown | Fault::Evict => {
            let deadline = Instant::now() + RECOVERY_WATCH;
            while Instant::now() < deadline && !heal_now.is_cancelled() {
                let back = (end.backend.view().await.ok())
                    .is_some_and(|view| replaced(&view, end.node, &end.injected));
                if back {
                    tracing::info!(parent: &end.span, "the node is ready again");
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = heal_now.cancelled() => {}
                }
            }
        }
    }
    let target = format!("node-{}", end.node);
    ::metrics::gauge!(metrics::ACTIVE, "fault" => end.fault.as_str(), "target" => target).set(0.0);
    let mut state = end.shared.state.lock().expect("state lock");
    state.active = false;
    if let Some(record) = state
        .history
        .iter_mut()
        .rev()
        .find(|r| r.target == Some(end.node) && r.ended.is_none() && !r.dry_run)
    {
        record.ended = Some(unix_now());
    }
}

/// The `chaos` binary's main (the testbed runs it as `testbed chaos ...`).
pub async fn main_with_args(args: Vec<String>) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(args)?;
    let log_format = match &cli.command {
        Command::Inject(args) => args.common.log_format,
        Command::Run(args) => args.common.log_format,
        Command::Heal(_) => telemetry::LogFormat::Human,
    };
    let identity = telemetry::Identity::new("chaos", "any", "chaos");
    let telemetry = telemetry::init(&identity, log_format);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        plumbing::shutdown_signal().await;
        signal.cancel();
    });
    let result = match cli.command {
        Command::Inject(args) => inject(args, shutdown).await.map(drop),
        Command::Heal(args) => heal(args).await.map(drop),
        Command::Run(args) => {
            args.validate()?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding --listen {}", args.listen))?;
            telemetry::install_prometheus();
            telemetry::set_build_info("chaos", "any", "chaos");
            println!(
                "chaos: {} every {} at {} of {}; status http://{}/status",
                args.faults
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                humantime::format_duration(args.every),
                args.common.target,
                args.common.cluster.as_deref().unwrap_or("Kubernetes"),
                listener.local_addr()?
            );
            run(args, listener, shutdown).await.map(drop)
        }
    };
    telemetry.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The testbed starts `chaos run` from `to_args`: what it sets comes back through the parser.
    #[test]
    fn run_args_parse_back_into_the_same_value() {
        let cli = Cli::parse_from(["chaos", "run", "--cluster=http://127.0.0.1:1"]);
        let Command::Run(mut args) = cli.command else {
            panic!("run");
        };
        args.common.target = Target::Leader;
        args.common.process = Processes::Node;
        args.common.partition = Partition::Bridge;
        args.common.loss_percent = 55;
        args.common.delay_ms = 75;
        args.common.dry_run = true;
        args.common.cluster_token_file = Some("/tmp/token".into());
        args.faults = vec![Fault::Kill, Fault::Pause];
        args.every = Duration::from_millis(1_500);
        args.jitter = 0.5;
        args.duration = Duration::from_secs(3);
        args.min_age = Duration::from_secs(90);
        args.seed = Some(42);
        args.cycle = true;
        args.cron = Some("0 */5 * * * *".parse().unwrap());
        args.exclude = vec!["09:00-17:00".parse().unwrap()];
        args.kill_switch_file = Some("/tmp/stop".into());
        args.kill_switch_query = Some("ALERTS{alertstate=\"firing\"} > 0".into());
        args.prometheus = "http://127.0.0.1:9091".into();
        args.max_faults = Some(5);
        args.run_for = Some(Duration::from_secs(600));
        args.listen = "127.0.0.1:2".parse().unwrap();
        let line = ["chaos".to_owned(), "run".to_owned()]
            .into_iter()
            .chain(args.to_args());
        assert_eq!(Cli::parse_from(line).command, Command::Run(args.clone()));
        args.validate().unwrap();
        args.jitter = 2.0;
        let err = args.validate().unwrap_err().to_string();
        assert!(err.contains("--jitter") && err.contains("got 2"), "{err}");
    }
}
