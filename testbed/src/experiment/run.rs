//! Running a plan: for each of its modes, a fresh cluster (the prober in it, driving the load
//! balancer in leader mode as it would on Kubernetes), accounts, a warm-up, then the measured
//! open-model load, the counter check and the plan's faults on schedule (through the chaos
//! library), then the bank invariant check, and the cluster stopped. What each mode produced is
//! a [`ModeRun`]; [`super::report`] turns them into the results folder.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use chaos::cluster::{ClusterView, LocalCluster};
use chaos::fault::{Fault, Injector, record_path};
use chaos::target::{NoTarget, Target};
use paxos::Mode;
use rand::SeedableRng as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::counter::{Counter, CounterReport};
use super::load::{OpenLoad, Sample, Tally};
use super::plan::Plan;
use crate::cluster::{Cluster, ClusterSpec, ProberSpec};
use crate::ledger::{Answer, Ledger, send_write};

/// Accounts the load moves money between.
pub const ACCOUNTS: usize = 10;
/// What each of them starts with, in cents.
pub const INITIAL_CENTS: i64 = 100_000;
/// Each request's timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most requests waiting at once.
pub const MAX_IN_FLIGHT: usize = 2_000;

/// How a plan is run, beyond the plan.
#[derive(Clone, Debug)]
pub struct Options {
    /// The binary that plays the cluster's processes (the testbed's own).
    pub exe: PathBuf,
    /// The results folder.
    pub out: PathBuf,
    /// Show a progress bar (on a terminal; lines otherwise).
    pub progress: bool,
    /// Cancelled on Ctrl-C or SIGTERM: the running mode's cluster is stopped (its processes,
    /// namespaces and faults gone) and the run ends without a report.
    pub interrupt: CancellationToken,
}

/// One fault as it happened.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FaultRecord {
    /// Seconds after the measured load began that it was injected (or skipped).
    pub at: f64,
    /// The fault.
    pub fault: Fault,
    /// The plan's target (`leader`, `follower`, `random` or an id).
    pub target: String,
    /// The node it hit.
    pub node: Option<u32>,
    /// When it was healed (faults that hold).
    pub healed: Option<f64>,
    /// `injected`, `skipped` (no node to hit) or `failed`.
    pub outcome: &'static str,
    /// What went wrong, for `skipped` and `failed`.
    pub detail: String,
}

/// One line of the prober's log, relative to the measured load's start.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProbeRecord {
    /// Seconds after the measured load began.
    pub at: f64,
    /// `entry`, `node-<id>` or `recovery`.
    pub target: String,
    /// `ok`, a failure, or what a recovery did.
    pub outcome: String,
    /// The probe's latency (a recovery's length).
    pub latency_ms: f64,
}

/// What one mode of a plan produced.
#[derive(Clone, Debug)]
pub struct ModeRun {
    /// The mode.
    pub mode: Mode,
    /// Every request of the measured load, in due order.
    pub samples: Vec<Sample>,
    /// The prober's probes and recoveries during the measured load.
    pub probes: Vec<ProbeRecord>,
    /// Every scheduled fault.
    pub faults: Vec<FaultRecord>,
    /// The bank invariant check against the ledger.
    pub check: crate::ledger::Report,
    /// The counter check (reads through every node).
    pub counter: CounterReport,
    /// Writes acknowledged, refused and of unknown outcome, over the whole run.
    pub writes: (u64, u64, u64),
    /// The measured load's length.
    pub duration: Duration,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Prints a line above the progress bar, or plainly.
#[derive(Clone)]
struct Say(Option<indicatif::ProgressBar>);

impl Say {
    fn line(&self, text: impl AsRef<str>) {
        match &self.0 {
            Some(bar) if !bar.is_hidden() => bar.println(text.as_ref()),
            _ => eprintln!("{}", text.as_ref()),
        }
    }
}

/// Runs every mode of `plan`; the cluster of each is stopped before the next starts.
pub async fn run_plan(plan: &Plan, options: &Options) -> anyhow::Result<Vec<ModeRun>> {
    let mut runs = Vec::new();
    for &mode in &plan.modes {
        let dir = options.out.join(mode.as_str());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        runs.push(run_mode(plan, mode, options, &dir).await?);
    }
    Ok(runs)
}

/// One mode: a fresh cluster in `dir/cluster`, the prober's log in `dir/prober.csv`.
pub async fn run_mode(
    plan: &Plan,
    mode: Mode,
    options: &Options,
    dir: &Path,
) -> anyhow::Result<ModeRun> {
    let mut spec = ClusterSpec::new(options.exe.clone(), plan.nodes, mode);
    spec.store = plan.store;
    spec.data_dir = Some(dir.join("cluster"));
    // As on Kubernetes: the prober moves the load balancer to a new leader, nothing else.
    spec.follow_leader = false;
    let probe_log = dir.join("prober.csv");
    spec.prober = Some(ProberSpec {
        port: 0,
        interval_ms: 1_000,
        probe_log: Some(probe_log.clone()),
    });
    spec.netns = (plan.faults.iter()).any(|f| matches!(f.fault, Fault::Partition | Fault::Loss));
    spec.proxies = plan.faults.iter().any(|f| f.fault == Fault::Delay);
    eprintln!(
        "{} mode: starting {} nodes ({} store{}), data in {}",
        mode,
        plan.nodes,
        plan.store,
        if spec.netns {
            ", a network namespace each"
        } else {
            ""
        },
        dir.join("cluster").display()
    );
    let cluster = Cluster::start(spec).await?;
    let result = tokio::select! {
        result = drive(plan, mode, options, &cluster, &probe_log) => result,
        () = options.interrupt.cancelled() => Err(anyhow::anyhow!(
            "interrupted: the {mode} cluster is stopped, no report is written"
        )),
    };
    cluster.stop().await;
    result
}

async fn drive(
    plan: &Plan,
    mode: Mode,
    options: &Options,
    cluster: &Cluster,
    probe_log: &Path,
) -> anyhow::Result<ModeRun> {
    let handle = cluster.handle();
    anyhow::ensure!(
        handle.wait_ready(Duration::from_secs(90)).await,
        "the {mode} cluster was not ready within 90 s: see the logs in {}",
        handle.layout().data_dir.display()
    );
    if mode == Mode::Leader {
        handle
            .wait_leader(None, Duration::from_secs(60))
            .await
            .context("no leader within 60 s")?;
    }
    let front = handle.front_door().to_owned();
    let nodes = handle.public_urls();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build()
        .context("building the HTTP client")?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (accounts, counter_account) = open_accounts(&http, &front, &ledger).await?;

    // Warm-up: the same load, not measured (its writes are in the ledger all the same).
    let run_id = format!("{}-{}-{}", plan.name, mode, plan.seed);
    let load = |duration, key_prefix: String, tally| OpenLoad {
        base: front.clone(),
        accounts: accounts.clone(),
        rate: plan.rate,
        duration,
        timeout: REQUEST_TIMEOUT,
        max_in_flight: MAX_IN_FLIGHT,
        seed: plan.seed,
        key_prefix,
        ledger: Some(ledger.clone()),
        tally,
    };
    if !plan.warmup.is_zero() {
        eprintln!("{mode} mode: warming up for {:?}", plan.warmup);
        load(plan.warmup, format!("{run_id}-warmup"), Arc::default())
            .run(&http)
            .await;
    }

    let bar = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new(plan.duration.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} s  {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(mode.to_string());
        bar
    });
    let say = Say(bar.clone());
    say.line(format!(
        "{mode} mode: measuring {:?} at {} requests/s, {} faults scheduled",
        plan.duration,
        plan.rate,
        plan.schedule().len()
    ));
    let tally = Arc::new(Tally::default());
    let measured = load(plan.duration, format!("{run_id}-load"), tally.clone());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let started_unix = unix_now();
    let counter = Counter {
        base: front.clone(),
        nodes: nodes.clone(),
        account: counter_account,
        read_every: Duration::from_millis(100),
        write_every: Duration::from_millis(50),
        key_prefix: format!("{run_id}-counter"),
    };
    let injector = Injector::new(
        http.clone(),
        Some(handle.token().to_owned()),
        record_path(&handle.layout().data_dir),
    );
    let chaos_view = LocalCluster::new(http.clone(), &front);
    let faults = run_faults(plan, mode, &chaos_view, &injector, started, say.clone());
    let ticker = {
        let (bar, tally, stop) = (bar.clone(), tally.clone(), stop.clone());
        async move {
            let Some(bar) = bar else { return };
            while !stop.is_cancelled() {
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!(
                    "{} ok, {} failed",
                    tally.ok.load(std::sync::atomic::Ordering::Relaxed),
                    tally.failed.load(std::sync::atomic::Ordering::Relaxed)
                ));
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            bar.finish_and_clear();
        }
    };
    let work = async {
        let samples = measured.run(&http).await;
        // The counter stops with the load, the faults when their schedule and heals are done.
        stop.cancel();
        samples
    };
    let (samples, counter_report, faults, ()) = tokio::join!(
        work,
        counter.run(&http, ledger.clone(), stop.clone()),
        faults,
        ticker
    );
    let healed = injector.heal_leftovers().await.unwrap_or(0);
    if healed > 0 {
        say.line(format!(
            "{mode} mode: healed {healed} leftovers of the faults"
        ));
    }
    say.line(format!(
        "{mode} mode: {} requests, {} acknowledged; checking the bank",
        samples.len(),
        samples.iter().filter(|s| s.outcome == "ok").count()
    ));
    // Every node back before the check reads them.
    if !handle.wait_ready(Duration::from_secs(60)).await {
        say.line(format!(
            "{mode} mode: not every node is ready after 60 s; checking anyway"
        ));
    }
    let ledger = ledger.lock().expect("ledger lock").clone();
    let check = crate::ledger::check(&ledger, &front, &nodes, 200).await;
    let probes = read_probes(probe_log, started_unix, plan.duration);
    Ok(ModeRun {
        mode,
        samples,
        probes,
        faults,
        check,
        counter: counter_report,
        writes: (ledger.ok, ledger.refused, ledger.unknown),
        duration: plan.duration,
    })
}

/// Opens the load's accounts (each with [`INITIAL_CENTS`]) and the counter's.
async fn open_accounts(
    http: &reqwest::Client,
    front: &str,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<(Vec<String>, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut opened = Vec::new();
    for i in 0..=ACCOUNTS {
        let key = uuid::Uuid::new_v4().to_string();
        let answer = send_write(http, front, "/open_account", &json!(null), &key, deadline).await;
        let Answer::Status(200, reply) = answer else {
            anyhow::bail!("opening account {i} at {front} failed: {answer:?}");
        };
        let id = (reply["account_id"].as_str())
            .context("open_account answered without account_id")?
            .to_owned();
        ledger
            .lock()
            .expect("ledger lock")
            .accounts
            .entry(id.clone())
            .or_default();
        if i < ACCOUNTS {
            let body = json!({"account_id": id, "amount": crate::ledger::amount(INITIAL_CENTS)});
            let key = uuid::Uuid::new_v4().to_string();
            let answer = send_write(http, front, "/deposit_money", &body, &key, deadline).await;
            anyhow::ensure!(
                matches!(answer, Answer::Status(200, _)),
                "the first deposit into {id} failed: {answer:?}"
            );
            (ledger.lock().expect("ledger lock")).record(
                "/deposit_money",
                &body,
                &key,
                &answer,
                &[(id.clone(), INITIAL_CENTS)],
            );
        }
        opened.push(id);
    }
    let counter = opened.pop().expect("ACCOUNTS + 1 opened");
    Ok((opened, counter))
}

/// The node a fault at `target` hits in `view`. Leaderless mode has no leader: `leader` is node
/// 0 there and `follower` any other, so both modes are hit at a fixed place.
pub fn resolve(
    target: Target,
    view: &ClusterView,
    rng: &mut impl rand::Rng,
) -> Result<u32, NoTarget> {
    let target = match (view.mode, target) {
        (Mode::Leaderless, Target::Leader) => Target::Node(0),
        (Mode::Leaderless, Target::Follower) => {
            let others: Vec<u32> = (view.nodes.iter().map(|n| n.id))
                .filter(|&id| id != 0)
                .collect();
            if others.is_empty() {
                return Err(NoTarget::NoCandidate);
            }
            Target::Node(others[rng.random_range(0..others.len())])
        }
        _ => target,
    };
    target.choose(view, Duration::ZERO, |_| Duration::MAX, rng)
}

/// Injects the plan's faults on schedule from `started`; returns one record per scheduled
/// fault once every held fault is healed.
async fn run_faults(
    plan: &Plan,
    mode: Mode,
    cluster: &LocalCluster,
    injector: &Injector,
    started: Instant,
    say: Say,
) -> Vec<FaultRecord> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(plan.seed);
    let mut records = Vec::new();
    let mut heals = Vec::new();
    let schedule = plan.schedule();
    let total = schedule.len();
    for (n, (due, index)) in schedule.into_iter().enumerate() {
        tokio::time::sleep_until((started + due).into()).await;
        let fault = &plan.faults[index];
        let mut record = FaultRecord {
            at: started.elapsed().as_secs_f64(),
            fault: fault.fault,
            target: fault.target.to_string(),
            node: None,
            healed: None,
            outcome: "skipped",
            detail: String::new(),
        };
        // A leader may be being elected (an earlier fault): wait up to 5 s for one.
        let wait_for_leader = Instant::now() + Duration::from_secs(5);
        let chosen = loop {
            let view = match cluster.view().await {
                Ok(view) => view,
                Err(err) => break Err(format!("reading the cluster: {err:#}")),
            };
            match resolve(fault.target, &view, &mut rng) {
                Ok(id) => break Ok((view, id)),
                Err(NoTarget::NoLeader) if Instant::now() < wait_for_leader => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => break Err(err.to_string()),
            }
        };
        let (view, id) = match chosen {
            Ok(chosen) => chosen,
            Err(why) => {
                record.detail = why;
                say.line(format!(
                    "{mode} mode: fault {}/{total} at {:.1} s: {} {} skipped: {}",
                    n + 1,
                    record.at,
                    fault.fault,
                    fault.target,
                    record.detail
                ));
                records.push(record);
                continue;
            }
        };
        record.node = Some(id);
        record.at = started.elapsed().as_secs_f64();
        match injector.inject(fault.fault, &view, id, fault.shape).await {
            Ok(injected) => {
                record.outcome = "injected";
                say.line(format!(
                    "{mode} mode: fault {}/{total} at {:.1} s: {} node {id}",
                    n + 1,
                    record.at,
                    fault.fault
                ));
                if let Some(hold) = fault.duration {
                    let (injector, i) = (injector.clone(), records.len());
                    heals.push(tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        let healed = injector.heal(&injected).await;
                        (i, started.elapsed().as_secs_f64(), healed.err())
                    }));
                }
            }
            Err(err) => {
                record.outcome = "failed";
                record.detail = format!("{err:#}");
                say.line(format!(
                    "{mode} mode: fault {}/{total}: {} node {id} failed: {}",
                    n + 1,
                    fault.fault,
                    record.detail
                ));
            }
        }
        records.push(record);
    }
    for heal in heals {
        if let Ok((i, at, err)) = heal.await {
            records[i].healed = Some(at);
            if let Some(err) = err {
                records[i].detail = format!("healing failed: {err:#}");
            }
        }
    }
    records
}

/// The prober's log lines from the measured load's start to its end, relative to the start.
pub fn read_probes(path: &Path, started_unix: f64, duration: Duration) -> Vec<ProbeRecord> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',');
            let unix: f64 = fields.next()?.parse().ok()?;
            let target = fields.next()?.to_owned();
            let outcome = fields.next()?.to_owned();
            let latency_ms: f64 = fields.next()?.parse().ok()?;
            let at = unix - started_unix;
            (at >= 0.0 && at <= duration.as_secs_f64()).then_some(ProbeRecord {
                at,
                target,
                outcome,
                latency_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(mode: Mode, leader: Option<u32>) -> ClusterView {
        serde_json::from_value(json!({
            "mode": mode,
            "leader": leader,
            "data_dir": "/tmp/x",
            "nodes": (0..3).map(|id| json!({
                "id": id, "role": "replica", "ready": true, "internal_url": "",
                "paxos_url": "", "node_pid": 10 + id, "paxos_pid": 20 + id,
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn leaderless_mode_maps_leader_to_node_0_and_follower_to_the_others() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let leaderless = view(Mode::Leaderless, None);
        for _ in 0..20 {
            assert_eq!(resolve(Target::Leader, &leaderless, &mut rng), Ok(0));
            assert_ne!(resolve(Target::Follower, &leaderless, &mut rng), Ok(0));
        }
        let leader = view(Mode::Leader, Some(2));
        assert_eq!(resolve(Target::Leader, &leader, &mut rng), Ok(2));
        assert_eq!(
            resolve(Target::Leader, &view(Mode::Leader, None), &mut rng),
            Err(NoTarget::NoLeader)
        );
        assert_eq!(resolve(Target::Node(1), &leaderless, &mut rng), Ok(1));
    }

    #[test]
    fn probes_are_read_relative_to_the_start_and_within_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prober.csv");
        std::fs::write(
            &path,
            "unix_s,target,outcome,latency_ms\n\
             99.000,entry,ok,1.0\n\
             100.500,entry,timeout,1000.0\n\
             101.000,recovery,retargeted,2500.0\n\
             130.000,node-1,ok,2.0\n\
             garbage\n",
        )
        .unwrap();
        let probes = read_probes(&path, 100.0, Duration::from_secs(10));
        assert_eq!(probes.len(), 2);
        assert_eq!(probes[0].at, 0.5);
        assert_eq!(probes[0].outcome, "timeout");
        assert_eq!(probes[1].target, "recovery");
        assert_eq!(probes[1].latency_ms, 2500.0);
    }
}
