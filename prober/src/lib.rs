//! The prober: measures the bank as a client sees it, computes its availability SLIs and SLOs,
//! and in leader mode recovers from failures the cluster does not see by itself (a hung `node`
//! process whose `paxos` process still leads: a gray failure) by electing a healthy replica and
//! retargeting the load balancer.
//!
//! Layout: [`probe`] (one probe of the entry point, one of a node), [`slo`] (availability,
//! error budget and burn rate, pure), [`control`] (the cluster's nodes and leader, elections, the
//! load balancer's target), [`recovery`] (when and how to recover), [`metrics`], and here the
//! loop, `/status` and `/metrics`.
#![deny(missing_docs)]

pub mod control;
pub mod follow;
pub mod metrics;
pub mod probe;
pub mod probe_log;
pub mod recovery;
pub mod slo;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use node::client::BankClient;
use tokio_util::sync::CancellationToken;

use crate::control::{ClusterView, Control, KubernetesControl, KubernetesTarget, TestbedControl};
use crate::probe::{EntryProbe, Outcome};
use crate::probe_log::ProbeLog;
use crate::recovery::{Recovery, RecoveryRecord};
use crate::slo::Slo;

/// The name of the entry point's target in metrics and `/status`.
pub const ENTRY: &str = "entry";

/// Command-line options of the `prober`.
#[derive(Clone, Debug, PartialEq, clap::Parser)]
#[command(
    name = "prober",
    about = "Availability probes, SLOs and leader recovery for the paxos bank"
)]
pub struct Config {
    /// The entry point clients use (the testbed's front door, or the LoadBalancer Service).
    #[arg(long, env = "PROBER_TARGET")]
    pub target: String,
    /// The testbed's front door, for the cluster's nodes and leader and the load balancer's
    /// target (default: --target).
    #[arg(long, env = "PROBER_TESTBED", conflicts_with = "kubernetes")]
    pub testbed: Option<String>,
    /// Find the nodes through the Kubernetes API (the pod's service account) and retarget by
    /// patching the external Service's selector, instead of the testbed's front door.
    #[arg(long, env = "PROBER_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubernetes: the namespace of the bank pods and the Service (default: the prober's own).
    #[arg(long, env = "PROBER_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// Kubernetes: the external Service whose selector follows the leader.
    #[arg(long, env = "PROBER_K8S_SERVICE", default_value = "bank")]
    pub k8s_service: String,
    /// Kubernetes: the label selector of the bank pods.
    #[arg(
        long,
        env = "PROBER_K8S_POD_SELECTOR",
        default_value = "app.kubernetes.io/name=bank"
    )]
    pub k8s_pod_selector: String,
    /// Kubernetes: the port of each pod's node container (public API).
    #[arg(long, env = "PROBER_K8S_PUBLIC_PORT", default_value_t = 8080)]
    pub k8s_public_port: u16,
    /// Kubernetes: the port of each pod's paxos container.
    #[arg(long, env = "PROBER_K8S_PAXOS_PORT", default_value_t = 9180)]
    pub k8s_paxos_port: u16,
    /// Address of the prober's own `/metrics` and `/status`.
    #[arg(long, env = "PROBER_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// Milliseconds between probe rounds (jittered by up to a tenth).
    #[arg(long, env = "PROBER_INTERVAL_MS", default_value_t = 1_000)]
    pub interval_ms: u64,
    /// Milliseconds between two direct probes of every node (what recovery and the status
    /// page use; may be shorter than --interval-ms; jittered by up to a tenth).
    #[arg(long, env = "PROBER_NODE_INTERVAL_MS", default_value_t = 500)]
    pub node_interval_ms: u64,
    /// Milliseconds one probe may take before it counts as failed.
    #[arg(long, env = "PROBER_TIMEOUT_MS", default_value_t = 500)]
    pub timeout_ms: u64,
    /// Leader mode: consecutive failed probes of the entry point before a recovery.
    #[arg(long, env = "PROBER_FAILURES_BEFORE_RECOVERY", default_value_t = 2)]
    pub failures_before_recovery: u32,
    /// Milliseconds at least between two recoveries.
    #[arg(
        long,
        env = "PROBER_MIN_RECOVERY_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub min_recovery_interval_ms: u64,
    /// Do not recover (measure only).
    #[arg(long, env = "PROBER_NO_RECOVERY")]
    pub no_recovery: bool,
    /// The availability objective.
    #[arg(long, env = "PROBER_OBJECTIVE", default_value_t = 0.999)]
    pub objective: f64,
    /// The SLO period, in days.
    #[arg(long, env = "PROBER_SLO_DAYS", default_value_t = 30)]
    pub slo_days: u64,
    /// File holding the cluster token (else BANK_CLUSTER_TOKEN).
    #[arg(long, env = "BANK_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<std::path::PathBuf>,
    /// Log lines: human or json.
    #[arg(long, env = "BANK_LOG_FORMAT", default_value = "human")]
    pub log_format: telemetry::LogFormat,
    /// Append every probe and every recovery to this CSV file (`unix_s,target,outcome,latency_ms`).
    #[arg(long, env = "PROBER_PROBE_LOG")]
    pub probe_log: Option<std::path::PathBuf>,
}

impl Config {
    /// The command line that parses back into `self` (without the program name): how the testbed
    /// starts the prober from a typed value. Every option is written out.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--target={}", self.target),
            format!("--listen={}", self.listen),
            format!("--interval-ms={}", self.interval_ms),
            format!("--node-interval-ms={}", self.node_interval_ms),
            format!("--k8s-service={}", self.k8s_service),
            format!("--k8s-pod-selector={}", self.k8s_pod_selector),
            format!("--k8s-public-port={}", self.k8s_public_port),
            format!("--k8s-paxos-port={}", self.k8s_paxos_port),
            format!("--timeout-ms={}", self.timeout_ms),
            format!(
                "--failures-before-recovery={}",
                self.failures_before_recovery
            ),
            format!(
                "--min-recovery-interval-ms={}",
                self.min_recovery_interval_ms
            ),
            format!("--objective={}", self.objective),
            format!("--slo-days={}", self.slo_days),
            format!("--log-format={}", self.log_format),
        ];
        if let Some(testbed) = &self.testbed {
            args.push(format!("--testbed={testbed}"));
        }
        if let Some(file) = &self.cluster_token_file {
            args.push(format!("--cluster-token-file={}", file.display()));
        }
        if self.no_recovery {
            args.push("--no-recovery".to_owned());
        }
        if let Some(file) = &self.probe_log {
            args.push(format!("--probe-log={}", file.display()));
        }
        if self.kubernetes {
            args.push("--kubernetes".to_owned());
        }
        if let Some(namespace) = &self.k8s_namespace {
            args.push(format!("--k8s-namespace={namespace}"));
        }
        args
    }

    /// Checks ranges; the message names the flag and the value.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (10..=3_600_000).contains(&self.interval_ms),
            "--interval-ms must be 10..=3600000, got {}",
            self.interval_ms
        );
        anyhow::ensure!(
            (10..=3_600_000).contains(&self.node_interval_ms),
            "--node-interval-ms must be 10..=3600000, got {}",
            self.node_interval_ms
        );
        anyhow::ensure!(
            (10..=60_000).contains(&self.timeout_ms),
            "--timeout-ms must be 10..=60000, got {}",
            self.timeout_ms
        );
        anyhow::ensure!(
            self.failures_before_recovery >= 1,
            "--failures-before-recovery must be at least 1"
        );
        anyhow::ensure!(
            self.objective > 0.0 && self.objective < 1.0,
            "--objective must be between 0 and 1 (0.999 is 99.9%), got {}",
            self.objective
        );
        anyhow::ensure!(
            (1..=366).contains(&self.slo_days),
            "--slo-days must be 1..=366, got {}",
            self.slo_days
        );
        Ok(())
    }
}

/// The last outcome and the SLO of one target.
#[derive(Debug)]
struct Target {
    slo: Slo,
    last: Option<Outcome>,
    consecutive_failures: u32,
}

/// What `/status` shows, kept by the loop.
#[derive(Debug)]
pub struct State {
    started: SystemTime,
    objective: f64,
    view: Option<ClusterView>,
    targets: BTreeMap<String, Target>,
    failures: VecDeque<serde_json::Value>,
    recoveries: VecDeque<RecoveryRecord>,
}

/// How many failures and recoveries `/status` remembers.
const HISTORY: usize = 20;

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl State {
    fn new(objective: f64) -> State {
        State {
            started: SystemTime::now(),
            objective,
            view: None,
            targets: BTreeMap::new(),
            failures: VecDeque::new(),
            recoveries: VecDeque::new(),
        }
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        let now = SystemTime::now();
        let seconds = now
            .duration_since(self.started)
            .unwrap_or_default()
            .as_secs();
        let targets: Vec<serde_json::Value> = self
            .targets
            .iter()
            .map(|(name, target)| {
                serde_json::json!({
                    "target": name,
                    "ok": target.last.as_ref().map(|o| o.failure.is_none()),
                    "last_latency_ms": target.last.as_ref().map(|o| o.latency.as_secs_f64() * 1e3),
                    "last_failure": target.last.as_ref().and_then(|o| o.failure.map(|f| f.as_str())),
                    "consecutive_failures": target.consecutive_failures,
                    "windows": target.slo.report(seconds),
                    "error_budget_remaining": target.slo.budget_remaining(seconds),
                })
            })
            .collect();
        let nodes: Vec<serde_json::Value> = (self.view.iter())
            .flat_map(|view| &view.nodes)
            .map(|node| {
                let target = self.targets.get(&format!("node-{}", node.id));
                serde_json::json!({
                    "id": node.id,
                    "public_url": node.public_url,
                    "leader": self.view.as_ref().is_some_and(|v| v.leader == Some(node.id)),
                    "healthy": target.and_then(|t| t.last.as_ref()).map(|o| o.failure.is_none()),
                })
            })
            .collect();
        serde_json::json!({
            "objective": self.objective,
            "started": unix_seconds(self.started),
            "mode": self.view.as_ref().map(|v| v.mode),
            "leader": self.view.as_ref().and_then(|v| v.leader),
            "nodes": nodes,
            "targets": targets,
            "failures": self.failures,
            "recoveries": self.recoveries,
        })
    }
}

/// Runs the prober until `shutdown`.
pub async fn run(
    config: Config,
    token: String,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let http = reqwest::Client::builder()
        .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
        .build()
        .context("building the HTTP client")?;
    let control = control(&config, http.clone(), token).await?;
    run_with(config, control, http, listener, shutdown).await
}

/// [`run`] through `control` (tests: a Kubernetes control over a fake API server).
pub async fn run_with(
    config: Config,
    control: Control,
    http: reqwest::Client,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let probe_log = match &config.probe_log {
        Some(path) => ProbeLog::open(path)?,
        None => ProbeLog::disabled(),
    };
    let timeout = Duration::from_millis(config.timeout_ms);
    let state = Arc::new(Mutex::new(State::new(config.objective)));
    let period = Duration::from_secs(config.slo_days * 24 * 60 * 60);
    crate::metrics::describe();
    crate::metrics::register();
    ::metrics::gauge!(crate::metrics::OBJECTIVE).set(config.objective);
    let app = axum::Router::new()
        .route(
            "/status",
            axum::routing::get({
                let state = state.clone();
                move || async move { axum::Json(state.lock().expect("state lock").status()) }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(|| async { telemetry::render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(plumbing::serve(
        listener,
        app,
        plumbing::Limits::DEFAULT,
        shutdown.clone().cancelled_owned(),
    ));
    let mut entry = EntryProbe::new(BankClient::with_http(http.clone(), &config.target), timeout);
    let mut recovery = Recovery::new(
        config.failures_before_recovery,
        Duration::from_millis(config.min_recovery_interval_ms),
        !config.no_recovery,
    );
    let started = Instant::now();
    // A cluster still starting is not an outage: nothing counts until the entry point has
    // answered a probe once.
    let warm = Arc::new(AtomicBool::new(false));
    let nodes = Arc::new(Mutex::new(None::<NodeRound>));
    let node_loop = tokio::spawn(probe_nodes(
        control.clone(),
        http.clone(),
        Duration::from_millis(config.node_interval_ms),
        timeout,
        NodeLoopShared {
            warm: warm.clone(),
            latest: nodes.clone(),
            state: state.clone(),
            started,
            period,
            follow: !config.no_recovery,
            probe_log: probe_log.clone(),
        },
        shutdown.clone(),
    ));
    let interval = Duration::from_millis(config.interval_ms);
    // Node outcomes older than this are not used for a recovery decision.
    let fresh_for = Duration::from_millis(3 * config.node_interval_ms) + Duration::from_secs(2);
    let mut jitter = Jitter::new();
    while !shutdown.is_cancelled() {
        let round = Instant::now();
        let outcome = entry.probe().await;
        let seconds = started.elapsed().as_secs();
        if !warm.load(Ordering::SeqCst) && outcome.failure.is_some() {
            tracing::debug!(detail = ?outcome.detail, "the entry point does not answer yet");
        }
        if outcome.failure.is_none() {
            warm.store(true, Ordering::SeqCst);
        }
        if warm.load(Ordering::SeqCst) {
            probe_log.probe(ENTRY, &outcome);
            state
                .lock()
                .expect("state lock")
                .observe(ENTRY, &outcome, seconds, period);
            let latest = nodes.lock().expect("nodes lock").clone();
            if let Some(leader) = latest.as_ref().and_then(|round| round.last_leader) {
                recovery.leader_seen(leader);
            }
            let fresh = latest.filter(|round| round.at.elapsed() < fresh_for);
            let (view, outcomes) = match &fresh {
                Some(round) => (Some(&round.view), round.outcomes.as_slice()),
                None => (None, &[][..]),
            };
            let record = recovery
                .after_probe(&outcome, view, outcomes, &control)
                .await;
            if let Some(record) = record {
                if let Some(passed) = record.first_success {
                    let took = Duration::from_secs_f64((passed - record.first_failure).max(0.0));
                    probe_log.recovery(passed, record.action.unwrap_or("no_action"), took);
                }
                let mut state = state.lock().expect("state lock");
                if state.recoveries.len() == HISTORY {
                    state.recoveries.pop_front();
                }
                state.recoveries.push_back(record);
            }
        }
        let pause = jitter.pause(interval).saturating_sub(round.elapsed());
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    let _ = node_loop.await;
    let _ = server.await;
    Ok(())
}

/// The last round of direct probes: the view it used and each node's outcome.
#[derive(Clone, Debug)]
struct NodeRound {
    at: Instant,
    view: ClusterView,
    outcomes: Vec<(u32, Outcome)>,
    /// The last leader any round's view named (this one's, or an earlier one's).
    last_leader: Option<u32>,
}

/// What the node-probe loop shares with the entry loop.
struct NodeLoopShared {
    warm: Arc<AtomicBool>,
    latest: Arc<Mutex<Option<NodeRound>>>,
    state: Arc<Mutex<State>>,
    started: Instant,
    period: Duration,
    /// Point the load balancer at a new leader before the entry probe fails ([`follow`]).
    follow: bool,
    /// Where every probe goes too.
    probe_log: ProbeLog,
}

/// Probes every node directly every `interval`, on its own schedule: the view of the cluster,
/// then each node's `/readyz` concurrently.
async fn probe_nodes(
    control: Control,
    http: reqwest::Client,
    interval: Duration,
    timeout: Duration,
    shared: NodeLoopShared,
    shutdown: CancellationToken,
) {
    let mut jitter = Jitter::new();
    let mut last_leader = None;
    let mut follower = follow::Follower::default();
    while !shutdown.is_cancelled() {
        let round = Instant::now();
        match control.view().await {
            Ok(view) => {
                let probes = view.nodes.iter().map(|node| {
                    let bank = BankClient::with_http(http.clone(), &node.public_url);
                    async move { (node.id, probe::probe_node(&bank, timeout).await) }
                });
                let outcomes = futures::future::join_all(probes).await;
                let seconds = shared.started.elapsed().as_secs();
                {
                    let mut state = shared.state.lock().expect("state lock");
                    state.view = Some(view.clone());
                    if shared.warm.load(Ordering::SeqCst) {
                        for (id, outcome) in &outcomes {
                            shared.probe_log.probe(&format!("node-{id}"), outcome);
                            state.observe(&format!("node-{id}"), outcome, seconds, shared.period);
                        }
                    }
                }
                last_leader = view.leader.or(last_leader);
                if let Some(leader) = follower.observe(&view, &outcomes)
                    && shared.follow
                {
                    match control.retarget(leader).await {
                        Ok(()) => {
                            ::metrics::counter!(crate::metrics::RECOVERIES, "outcome" => "followed_leader")
                                .increment(1);
                            shared.probe_log.recovery(
                                unix_seconds(SystemTime::now()),
                                "followed_leader",
                                Duration::ZERO,
                            );
                            tracing::info!(
                                leader,
                                before = ?view.target,
                                "the leader moved: pointed the load balancer at it"
                            );
                        }
                        Err(err) => tracing::warn!(
                            leader,
                            error = format!("{err:#}"),
                            "could not point the load balancer at the leader"
                        ),
                    }
                }
                *shared.latest.lock().expect("nodes lock") = Some(NodeRound {
                    at: Instant::now(),
                    view,
                    outcomes,
                    last_leader,
                });
            }
            Err(err) => tracing::debug!(error = format!("{err:#}"), "no view of the cluster"),
        }
        let pause = jitter.pause(interval).saturating_sub(round.elapsed());
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Spreads probe rounds: each pause is the interval less up to a tenth of it, so probers
/// started together drift apart.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        Jitter((std::process::id() as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn pause(&mut self, interval: Duration) -> Duration {
        self.0 = self.0.rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let spread = interval.as_millis() as u64 / 10;
        interval.saturating_sub(Duration::from_millis(self.0 % (spread + 1)))
    }
}

/// The control plane `config` names: Kubernetes, or the testbed's front door.
async fn control(config: &Config, http: reqwest::Client, token: String) -> anyhow::Result<Control> {
    if !config.kubernetes {
        let front_door = config.testbed.as_deref().unwrap_or(&config.target);
        return Ok(Control::Testbed(TestbedControl::new(
            http, front_door, token,
        )));
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in a pod: its service account)")?;
    let namespace =
        (config.k8s_namespace.clone()).unwrap_or_else(|| client.default_namespace().to_owned());
    Ok(Control::Kubernetes(KubernetesControl::new(
        client,
        http,
        token,
        KubernetesTarget {
            namespace,
            service: config.k8s_service.clone(),
            pod_selector: config.k8s_pod_selector.clone(),
            public_port: config.k8s_public_port,
            paxos_port: config.k8s_paxos_port,
        },
    )))
}

impl State {
    /// Records one outcome of `target` at `seconds` since start: metrics, SLO, history.
    fn observe(&mut self, target: &str, outcome: &Outcome, seconds: u64, period: Duration) {
        let objective = self.objective;
        let entry = self.targets.entry(target.to_owned()).or_insert_with(|| {
            crate::metrics::register_target(target);
            Target {
                slo: Slo::new(objective, period),
                last: None,
                consecutive_failures: 0,
            }
        });
        let label = target.to_owned();
        ::metrics::counter!(crate::metrics::PROBES, "target" => label.clone()).increment(1);
        ::metrics::histogram!(crate::metrics::DURATION, "target" => label.clone())
            .record(outcome.latency.as_secs_f64());
        match outcome.failure {
            None => {
                entry.consecutive_failures = 0;
                ::metrics::counter!(crate::metrics::SUCCESSES, "target" => label.clone())
                    .increment(1);
                ::metrics::gauge!(crate::metrics::LAST_SUCCESS, "target" => label.clone())
                    .set(unix_seconds(SystemTime::now()));
            }
            Some(failure) => {
                entry.consecutive_failures += 1;
                ::metrics::counter!(crate::metrics::FAILURES, "target" => label.clone(), "reason" => failure.as_str())
                    .increment(1);
                if self.failures.len() == HISTORY {
                    self.failures.pop_front();
                }
                self.failures.push_back(serde_json::json!({
                    "at": unix_seconds(SystemTime::now()),
                    "target": target,
                    "reason": failure.as_str(),
                    "detail": outcome.detail,
                }));
            }
        }
        entry.slo.record(seconds, outcome.failure.is_none());
        for report in entry.slo.report(seconds) {
            if let (Some(availability), Some(burn)) = (report.availability, report.burn_rate) {
                ::metrics::gauge!(crate::metrics::AVAILABILITY, "target" => label.clone(), "window" => report.window)
                    .set(availability);
                ::metrics::gauge!(crate::metrics::BURN_RATE, "target" => label.clone(), "window" => report.window)
                    .set(burn);
            }
        }
        ::metrics::gauge!(crate::metrics::BUDGET_REMAINING, "target" => label)
            .set(entry.slo.budget_remaining(seconds));
        entry.last = Some(outcome.clone());
    }
}

/// The `prober` binary's main (the testbed runs it as `testbed prober ...`).
pub async fn main_with_args(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser as _;
    let config = Config::try_parse_from(args)?;
    let identity = telemetry::Identity::new("prober", "any", "prober");
    let telemetry = telemetry::init(&identity, config.log_format);
    config.validate()?;
    let token = plumbing::read_cluster_token(
        plumbing::token_from_env(),
        config.cluster_token_file.as_deref(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding --listen {}", config.listen))?;
    telemetry::install_prometheus();
    telemetry::set_build_info("prober", "any", "prober");
    println!(
        "prober: probing {} every {} ms; status http://{}/status",
        config.target,
        config.interval_ms,
        listener.local_addr()?
    );
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        plumbing::shutdown_signal().await;
        signal.cancel();
    });
    let result = run(config, token, listener, shutdown).await;
    telemetry.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The testbed starts the prober from `to_args`: what it sets comes back through the parser.
    #[test]
    fn to_args_parses_back_into_the_same_config() {
        let mut config = Config::parse_from(["prober", "--target=http://127.0.0.1:1"]);
        config.testbed = Some("http://127.0.0.1:2".into());
        config.listen = "127.0.0.1:3".parse().unwrap();
        config.interval_ms = 100;
        config.node_interval_ms = 40;
        config.timeout_ms = 50;
        config.failures_before_recovery = 3;
        config.min_recovery_interval_ms = 7;
        config.no_recovery = true;
        config.objective = 0.995;
        config.slo_days = 7;
        config.cluster_token_file = Some("/tmp/token".into());
        config.log_format = telemetry::LogFormat::Json;
        let args = std::iter::once("prober".to_owned()).chain(config.to_args());
        assert_eq!(Config::parse_from(args), config);
        config.testbed = None;
        config.kubernetes = true;
        config.k8s_namespace = Some("bank".into());
        config.k8s_service = "bank-lb".into();
        config.k8s_pod_selector = "app=bank".into();
        config.k8s_public_port = 1;
        config.k8s_paxos_port = 2;
        let args = std::iter::once("prober".to_owned()).chain(config.to_args());
        assert_eq!(Config::parse_from(args), config);
        config.validate().unwrap();
        config.objective = 1.0;
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("--objective") && err.contains("got 1"),
            "{err}"
        );
    }
}
