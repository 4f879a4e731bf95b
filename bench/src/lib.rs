//! The side-by-side benchmark: the paxos bank and etcd on one workload shape, in one run.
//!
//! Files: `systems` (starting and stopping a testbed and an etcd cluster, reading their
//! processes' CPU), `workload` (the clients: transfers with a conserved total, and the bank's
//! mixed workload), `report` (summaries, ratios, the Markdown table).

pub mod report;
pub mod systems;
pub mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use report::{Run, System};
use workload::Workload;

/// `bench`: the paxos bank and etcd side by side.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "bench",
    about = "The paxos bank and etcd side by side on the same workload."
)]
pub struct Cli {
    /// Concurrent clients, one run per count (each client waits for its answer before the
    /// next request: a closed loop).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64])]
    pub clients: Vec<u32>,
    /// Measured time of each run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load before each measured window (not counted).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Paxos bank modes to run.
    #[arg(long, value_delimiter = ',', default_values_t = [paxos::Mode::Leader, paxos::Mode::Leaderless])]
    pub modes: Vec<paxos::Mode>,
    /// Workloads: `transfers` (both systems) and `mixed` (the bank alone: 40% move, 25% deposit,
    /// 15% withdraw, 20% check over --mixed-accounts accounts).
    #[arg(long, value_delimiter = ',', default_values_t = [Workload::Transfers, Workload::Mixed])]
    pub workloads: Vec<Workload>,
    /// Accounts of the transfers workload (every one starts with 1,000.00).
    #[arg(long, default_value_t = 100)]
    pub accounts: u32,
    /// Accounts of the mixed workload.
    #[arg(long, default_value_t = 1000)]
    pub mixed_accounts: u32,
    /// Skip etcd (the ratios are then missing).
    #[arg(long)]
    pub no_etcd: bool,
    /// The etcd binary (Debian: `apt-get install etcd-server`).
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Nodes of the paxos bank and members of etcd.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the Markdown tables here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also run transfers from one client pacing itself to this many per second (0: not): the
    /// latency of a lightly loaded cluster, where nothing else fills the batches.
    #[arg(long, default_value_t = 20.0)]
    pub paced_rate: f64,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run everything this many times, on fresh systems each round, and print the medians of
    /// the ratios taken within each round: this host's speed moves within minutes, and a round
    /// puts the systems' runs close together in time.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Where the logs of a testbed that answered a run with errors are kept (its processes'
    /// `*.log` files, under `round-<N>-<mode>/`): an error under load (an election, a timeout)
    /// is rare, and the testbed's folder goes at the end of its round.
    #[arg(long, default_value = "bench-failures")]
    pub failure_logs: PathBuf,
}

/// The binary's `main` for everything but the testbed roles it plays.
pub fn main_with_args(args: Vec<String>) -> ExitCode {
    use clap::Parser as _;
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    /// The paced run's rate, if any.
    fn paced(&self) -> Option<f64> {
        (self.paced_rate > 0.0).then_some(self.paced_rate)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|&c| (1..=1024).contains(&c)),
            "--clients: between 1 and 1024 each"
        );
        anyhow::ensure!(
            self.accounts >= 2 && self.mixed_accounts >= 2,
            "--accounts and --mixed-accounts: at least 2 (a transfer needs two accounts)"
        );
        anyhow::ensure!(
            self.accounts <= 100_000 && self.mixed_accounts <= 100_000,
            "--accounts and --mixed-accounts: at most 100,000"
        );
        anyhow::ensure!(
            self.duration >= Duration::from_secs(1) && self.duration <= Duration::from_secs(3600),
            "--duration: between 1 s and 1 h"
        );
        anyhow::ensure!(
            self.warmup <= Duration::from_secs(600),
            "--warmup: at most 10 min"
        );
        anyhow::ensure!((1..=7).contains(&self.nodes), "--nodes: between 1 and 7");
        anyhow::ensure!(
            (1..=50).contains(&self.rounds),
            "--rounds: between 1 and 50"
        );
        Ok(())
    }
}

/// Runs every system, mode, workload and client count of `cli`, prints the tables, writes the
/// files; an error when a run's total was not conserved or a system failed.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    cli.validate()?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let dir = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir()
        .context("creating a data folder")?;
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=cli.rounds {
        if cli.rounds > 1 {
            eprintln!("== round {round} of {}", cli.rounds);
        }
        let round_dir = dir.path().join(format!("round-{round}"));
        let first = runs.len();
        run_round(&cli, round, &exe, &round_dir, &mut runs).await?;
        for run in &mut runs[first..] {
            run.round = round;
        }
        // Every round starts fresh systems: the last one's data (logs, stores, etcd's WAL)
        // would only fill the disk over up to 50 rounds.
        if let Err(err) = std::fs::remove_dir_all(&round_dir) {
            eprintln!("   could not remove {}: {err}", round_dir.display());
        }
    }
    let tables = report::tables(&runs);
    println!("{tables}");
    if let Some(path) = &cli.markdown {
        std::fs::write(path, &tables).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&runs)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let broken: Vec<String> = runs
        .iter()
        .filter(|run| run.conserved == Some(false))
        .map(|run| format!("{} {} {}", run.system, run.workload, run.shape()))
        .collect();
    anyhow::ensure!(
        broken.is_empty(),
        "the money was not conserved in: {}",
        broken.join(", ")
    );
    Ok(())
}

/// One round: every mode of the bank and etcd, each on fresh systems under `dir`, in that order
/// in odd rounds and the reverse in even ones (so no system always runs in the same place of a
/// round); the runs are added to `runs` as they end.
async fn run_round(
    cli: &Cli,
    round: u32,
    exe: &std::path::Path,
    dir: &std::path::Path,
    runs: &mut Vec<Run>,
) -> anyhow::Result<()> {
    let mut systems: Vec<System> = cli.modes.iter().map(|&mode| System::Bank(mode)).collect();
    if cli.no_etcd {
        eprintln!("== etcd: skipped (--no-etcd): no ratios");
    } else if cli.workloads.contains(&Workload::Transfers) {
        systems.push(System::Etcd);
    }
    if round.is_multiple_of(2) {
        systems.reverse();
    }
    for system in systems {
        match system {
            System::Bank(mode) => {
                eprintln!("== {system}: starting a {}-node testbed", cli.nodes);
                let testbed_dir = dir.join(mode.as_str());
                let cluster = systems::Testbed::start(exe, mode, cli.nodes, &testbed_dir).await?;
                let first = runs.len();
                for &workload in &cli.workloads {
                    for &clients in &cli.clients {
                        let run =
                            workload::run_bank(cli, &cluster, system, workload, clients, None)
                                .await;
                        runs.push(report_progress(run?));
                    }
                }
                if let Some(rate) = cli.paced() {
                    let run = workload::run_bank(
                        cli,
                        &cluster,
                        system,
                        Workload::Transfers,
                        1,
                        Some(rate),
                    )
                    .await;
                    runs.push(report_progress(run?));
                }
                cluster.stop().await;
                if runs[first..].iter().any(|run| run.errors > 0) {
                    let kept = cli
                        .failure_logs
                        .join(format!("round-{round}-{}", mode.as_str()));
                    match keep_logs(&testbed_dir, &kept) {
                        Ok(n) => eprintln!(
                            "   a run had errors: kept the testbed's {n} log files in {}",
                            kept.display()
                        ),
                        Err(err) => eprintln!("   could not keep the testbed's logs: {err:#}"),
                    }
                }
            }
            System::Etcd => {
                eprintln!("== etcd: starting {} members", cli.nodes);
                let etcd = systems::Etcd::start(&cli.etcd, cli.nodes, &dir.join("etcd")).await?;
                for &clients in &cli.clients {
                    let run = workload::run_etcd(cli, &etcd, clients, None).await;
                    runs.push(report_progress(run?));
                }
                if let Some(rate) = cli.paced() {
                    let run = workload::run_etcd(cli, &etcd, 1, Some(rate)).await;
                    runs.push(report_progress(run?));
                }
                etcd.stop().await;
            }
        }
    }
    Ok(())
}

/// Copies every `*.log` file under `from` to the same place under `to`; returns how many.
fn keep_logs(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<usize> {
    let mut kept = 0;
    for entry in walkdir::WalkDir::new(from) {
        let path = entry?.into_path();
        if !path.is_file() || path.extension().is_none_or(|ext| ext != "log") {
            continue;
        }
        let target = to.join(path.strip_prefix(from)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
        kept += 1;
    }
    Ok(kept)
}

fn report_progress(run: Run) -> Run {
    eprintln!(
        "   {} {} {}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {:.2} cores, {:.2} ms CPU/op, {} errors, total {}, host steal {}",
        run.system,
        run.workload,
        run.shape(),
        run.ops_per_s,
        run.p50_ms,
        run.p99_ms,
        run.cpu_cores,
        run.cpu_ms_per_op,
        run.errors,
        match run.conserved {
            Some(true) => "conserved",
            Some(false) => "NOT CONSERVED",
            None => "not checked",
        },
        run.host_steal
            .map_or("unknown".to_owned(), |s| format!("{:.0}%", s * 100.0)),
    );
    for what in &run.error_examples {
        eprintln!("     error: {what}");
    }
    run
}

#[cfg(test)]
mod tests {
    /// A testbed's logs sit at `<mode>/testbed.log` and `<mode>/data/node-N/{node,paxos}.log`
    /// among stores and WALs: only the logs are kept, each at its place.
    #[test]
    fn only_the_log_files_are_kept_and_keep_their_places() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let node = from.path().join("data/node-1");
        std::fs::create_dir_all(node.join("paxos")).unwrap();
        std::fs::write(from.path().join("testbed.log"), "up").unwrap();
        std::fs::write(node.join("paxos.log"), "starting an election").unwrap();
        std::fs::write(node.join("node.log"), "node").unwrap();
        std::fs::write(node.join("paxos/paxos.wal"), [0u8; 64]).unwrap();
        std::fs::write(from.path().join("data/cluster-token"), "secret").unwrap();
        let kept_in = to.path().join("round-3-leader");
        assert_eq!(super::keep_logs(from.path(), &kept_in).unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(kept_in.join("data/node-1/paxos.log")).unwrap(),
            "starting an election"
        );
        assert!(kept_in.join("testbed.log").is_file());
        assert!(kept_in.join("data/node-1/node.log").is_file());
        assert!(!kept_in.join("data/node-1/paxos/paxos.wal").exists());
        assert!(!kept_in.join("data/cluster-token").exists(), "no secrets");
    }
}
