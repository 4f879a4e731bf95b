//! Availability experiments (`testbed experiment <plan.toml>`): for each mode of a plan, a fresh
//! cluster, an open-model load, the prober and the plan's faults on schedule, then the bank's
//! invariant check and a report.
//!
//! Layout: [`plan`] (the TOML form, validated; the ready plans are in `testbed/plans/`),
//! [`load`] (the open-model load: requests sent on schedule whatever the earlier ones do, so an
//! outage shows as errors and queueing instead of being hidden by clients that wait),
//! [`counter`] (stale-read detection through every node), [`run`] (one mode: cluster, load,
//! faults, checks) and [`report`] (the results folder: raw logs, numbers, plots).

pub mod counter;
pub mod load;
pub mod plan;
pub mod report;
pub mod run;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cli::ExperimentArgs;

/// The plan of `args` with its overrides applied and checked.
pub fn plan_of(args: &ExperimentArgs) -> anyhow::Result<plan::Plan> {
    let mut plan = plan::Plan::read(&args.plan)?;
    if let Some(duration) = args.duration {
        plan.duration = duration;
    }
    if let Some(warmup) = args.warmup {
        plan.warmup = warmup;
    }
    if let Some(rate) = args.rate {
        plan.rate = rate;
    }
    if let Some(nodes) = args.nodes {
        plan.nodes = nodes;
    }
    if let Some(store) = args.store {
        plan.store = store;
    }
    if let Some(seed) = args.seed {
        plan.seed = seed;
    }
    if let Some(modes) = &args.modes {
        plan.modes = modes.clone();
    }
    plan.check()
        .context("the plan with the command line's values")?;
    Ok(plan)
}

/// The results folder: `--out`, or `./results/<plan>-<UTC time>/`; refused if it holds files.
pub fn results_dir(out: Option<&Path>, plan: &plan::Plan) -> anyhow::Result<PathBuf> {
    let dir = match out {
        Some(dir) => dir.to_path_buf(),
        None => PathBuf::from("results").join(format!(
            "{}-{}",
            plan.name,
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir)
            .with_context(|| format!("reading the results folder {}", dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "the results folder {} is not empty: choose another --out",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The commit this binary was built from (`testbed/build.rs`), when it was built in a checkout.
fn commit() -> Option<String> {
    Some(env!("TESTBED_GIT_COMMIT").to_owned()).filter(|c| !c.is_empty())
}

/// `testbed experiment`: runs the plan, writes the results; fails when an invariant broke.
pub async fn experiment_command(args: ExperimentArgs) -> anyhow::Result<()> {
    let plan = plan_of(&args)?;
    let out = results_dir(args.out.as_deref(), &plan)?;
    let exe = std::env::current_exe().context("finding the testbed binary")?;
    eprintln!(
        "experiment {}: {} per mode ({}), {} requests/s, {} nodes, {} store, seed {}; results in {}",
        plan.name,
        humantime::format_duration(plan.duration),
        plan.modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        plan.rate,
        plan.nodes,
        plan.store,
        plan.seed,
        out.display()
    );
    let interrupt = tokio_util::sync::CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        plumbing::shutdown_signal().await;
        eprintln!("experiment: interrupted, stopping the cluster");
        on_signal.cancel();
    });
    let options = run::Options {
        exe,
        out: out.clone(),
        progress: !args.no_progress,
        interrupt,
    };
    let runs = run::run_plan(&plan, &options).await?;
    let summaries = report::write(&out, &plan, &runs, commit().as_deref())?;
    println!("{}", report::summary_table(&summaries));
    println!(
        "report: {}/report.html (also report.md, report.json; raw logs requests.csv, probes.csv, faults.csv)",
        out.display()
    );
    let failed: Vec<String> = (summaries.iter())
        .filter(|s| s.invariant != "pass")
        .map(|s| format!("{}: {}", s.mode, s.violations.join("; ")))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "bank invariants broken: {}",
        failed.join(" | ")
    );
    Ok(())
}
