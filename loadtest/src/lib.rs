//! The paxos bank's load test, on goose: how fast is each mode, and is the money still right?
//!
//! Layout: [`workload`] (the goose scenarios and what each operation records), [`ledger`] (the
//! record of acknowledged operations and the invariant check; it lives in the testbed, whose
//! experiments check the bank with it too), [`stats`] (latency percentiles
//! and throughput from the load test's own samples), [`compare`] (leader vs leaderless on fresh
//! testbed clusters, and the reports), [`metrics`] (the load generator's own metrics). The binary (`src/main.rs`) also plays the testbed and its
//! children, so `--compare` needs nothing else built.

pub mod compare;
pub use testbed::ledger;
pub mod metrics;
pub mod stats;
pub mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use goose::config::GooseConfiguration;
use goose::prelude::*;
use serde_json::json;

use crate::ledger::{Answer, Ledger, send_write};
use crate::workload::{Run, Workload};

/// `loadtest` (the run itself; `check` and the testbed roles are subcommands).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "loadtest",
    about = "Goose load test of the paxos bank, with a bank invariant check at the end",
    disable_version_flag = true
)]
pub struct Cli {
    /// Which traffic: original (deposit 1 into one account), mixed, or bank (transfers only).
    #[arg(long, value_enum, default_value = "mixed")]
    pub workload: Workload,
    /// Accounts created before the load (the pool operations pick from); each gets
    /// --initial-balance.
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Balance each pool account starts with.
    #[arg(long, default_value_t = 1000)]
    pub initial_balance: u32,
    /// Start a testbed cluster per mode (leader, then leaderless; fresh data each time), run the
    /// same test plan on each, --repeats times, and write one comparison table.
    #[arg(long)]
    pub compare: bool,
    /// Runs per mode with --compare.
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Nodes of each --compare cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// More `testbed up` flags for --compare clusters, e.g. "--store firestore".
    #[arg(long, default_value = "")]
    pub testbed_args: String,
    /// Where the ledger and the comparison reports go.
    #[arg(long, default_value = "target/loadtest")]
    pub out_dir: std::path::PathBuf,
    /// Acknowledged writes the check replays with their keys.
    #[arg(long, default_value_t = 50)]
    pub replays: usize,
    /// Skip the invariant check after the run.
    #[arg(long)]
    pub no_check: bool,
    /// Serve the load generator's own Prometheus metrics here (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Goose's own options (host, users, ramp, run time, throttle, report files, ...).
    #[command(flatten)]
    pub goose: GooseConfiguration,
}

impl Cli {
    /// Checks values; messages name the flag and the value.
    pub fn validate(&self) -> anyhow::Result<()> {
        let min = if self.workload == Workload::Original {
            1
        } else {
            2
        };
        anyhow::ensure!(
            (min..=100_000).contains(&self.accounts),
            "--accounts must be {min} to 100000 for the {:?} workload, got {}",
            self.workload,
            self.accounts
        );
        anyhow::ensure!(
            (1..=20).contains(&self.repeats),
            "--repeats must be 1 to 20, got {}",
            self.repeats
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.initial_balance),
            "--initial-balance must be 1 to 1000000, got {}",
            self.initial_balance
        );
        Ok(())
    }
}

/// Bounded defaults, so a bare run ends by itself: 16 users started at once, 30 s.
pub fn with_defaults(attack: GooseAttack) -> Result<GooseAttack, GooseError> {
    Ok(*attack
        .set_default(GooseDefault::Users, 16)?
        .set_default(GooseDefault::IncreaseRate, "16")?
        .set_default(GooseDefault::RunTime, 30)?)
}

/// Creates the account pool (each with the initial balance) and returns the run's state.
pub async fn prepare(cli: &Cli, host: &str, mode: &str) -> anyhow::Result<Arc<Run>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let mut ledger = Ledger::default();
    let mut pool = Vec::with_capacity(cli.accounts);
    let initial_cents = i64::from(cli.initial_balance) * 100;
    let started = Instant::now();
    for i in 0..cli.accounts {
        let deadline = Instant::now() + Duration::from_secs(30);
        let key = uuid::Uuid::new_v4().to_string();
        let opened = send_write(&client, host, "/open_account", &json!(null), &key, deadline).await;
        let Answer::Status(200, reply) = opened else {
            anyhow::bail!("opening pool account {i} at {host} failed: {opened:?}");
        };
        let id = reply["account_id"]
            .as_str()
            .context("open_account answered without account_id")?
            .to_owned();
        let body = json!({"account_id": id, "amount": cli.initial_balance});
        let key = uuid::Uuid::new_v4().to_string();
        let answer = send_write(&client, host, "/deposit_money", &body, &key, deadline).await;
        anyhow::ensure!(
            matches!(answer, Answer::Status(200, _)),
            "initial deposit into {id} failed: {answer:?}"
        );
        ledger.record(
            "/deposit_money",
            &body,
            &key,
            &answer,
            &[(id.clone(), initial_cents)],
        );
        pool.push(id);
        if (i + 1) % 100 == 0 {
            eprintln!("  pool: {} of {} accounts", i + 1, cli.accounts);
        }
    }
    if cli.workload == Workload::Bank {
        ledger.fixed_total_cents = Some(initial_cents * cli.accounts as i64);
    }
    eprintln!(
        "pool of {} accounts with {} each ready in {:.1} s",
        pool.len(),
        cli.initial_balance,
        started.elapsed().as_secs_f64()
    );
    crate::metrics::register(mode);
    Ok(Arc::new(Run {
        pool,
        ledger: Mutex::new(ledger),
        samples: Mutex::new(Vec::new()),
        started: Instant::now(),
        mode: mode.to_owned(),
    }))
}

/// Runs the goose attack against `host` with `run` as the shared state.
pub async fn attack(cli: &Cli, host: &str, run: Arc<Run>) -> anyhow::Result<GooseMetrics> {
    let mut config = cli.goose.clone();
    config.host = Some(host.to_owned());
    workload::set_current(run);
    let mut attack = with_defaults(GooseAttack::initialize_with_config(config)?)?;
    // Goose's own summary is printed unless --quiet/--no-print-metrics; ours follows it.
    for scenario in workload::scenarios(cli.workload)? {
        attack = attack.register_scenario(scenario);
    }
    Ok(attack.execute().await?)
}

/// Writes the ledger as JSON (for a later `loadtest check`).
pub fn save_ledger(ledger: &Ledger, path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(ledger)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints a check report; an error when it found violations.
pub fn judge(report: &ledger::Report) -> anyhow::Result<()> {
    eprintln!(
        "invariant check: {} accounts, {} acknowledged writes replayed, {} replicas compared",
        report.accounts, report.replayed, report.replicas
    );
    if report.violations.is_empty() {
        eprintln!("invariant check: OK (money conserved, exactly once, replicas identical)");
        return Ok(());
    }
    for violation in &report.violations {
        eprintln!("VIOLATION: {violation}");
    }
    anyhow::bail!("{} invariant violations", report.violations.len())
}
