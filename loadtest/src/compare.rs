//! `--compare`: the same test plan on a fresh leader-mode cluster and a fresh leaderless one,
//! repeated, then one table (Markdown and JSON) and an HTML report with a throughput and p99
//! plot per run.
//!
//! Each cluster comes from the testbed's cluster API, its processes run by this very binary (it
//! plays the testbed's `node` and `paxos`, see `main.rs`), on free ports, with its data in a
//! fresh temporary folder, stopped after its run.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use paxos::Mode;

use crate::Cli;
use crate::stats::{self, Second, Summary};

/// A testbed cluster started for one run (the cluster API of the testbed, on a thread of its
/// own); stopped when dropped.
pub struct Cluster {
    cluster: testbed::cluster::ClusterThread,
    /// Its front door.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a cluster of this binary (it plays the testbed's `node` and `paxos`) in `mode`
    /// and waits until it is ready. `extra` are more `testbed up` flags.
    pub fn start(mode: Mode, nodes: u32, extra: &str) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("finding the loadtest binary")?;
        Cluster::start_with(&exe, mode, nodes, extra)
    }

    /// [`Cluster::start`] with `exe`, a binary that plays the testbed (`loadtest` or `testbed`).
    /// The cluster dies with the process that started it, even when that one is killed.
    pub fn start_with(
        exe: &std::path::Path,
        mode: Mode,
        nodes: u32,
        extra: &str,
    ) -> anyhow::Result<Cluster> {
        use clap::Parser as _;
        let dir = tempfile::Builder::new()
            .prefix("loadtest-")
            .tempdir()
            .context("creating a data folder")?;
        let up = testbed::cli::Cli::try_parse_from(
            ["testbed", "up"]
                .into_iter()
                .chain(extra.split_whitespace()),
        )
        .with_context(|| format!("--testbed-args {extra:?}"))?;
        let testbed::cli::Command::Up(mut up) = up.command else {
            anyhow::bail!("--testbed-args are the arguments of `testbed up`");
        };
        up.mode = mode;
        up.nodes = nodes;
        up.port = 0;
        // Measurements without the prober's writes (`--testbed-args` cannot turn it back on).
        up.no_prober = true;
        up.data_dir = Some(dir.path().join("data"));
        let mut spec = testbed::cluster::ClusterSpec::from_up_args(&up, exe.to_owned(), None)?;
        spec.env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
        let cluster = testbed::cluster::ClusterThread::start(spec, Duration::from_secs(120))?;
        let url = cluster.handle().front_door().to_owned();
        Ok(Cluster { cluster, url, dir })
    }

    /// The cluster's data folder (`node-N/`, `cluster-token`, ...).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Typed access to the cluster: nodes, PIDs, the leader, stop/kill/wipe of one node.
    pub fn handle(&self) -> &testbed::cluster::ClusterHandle {
        self.cluster.handle()
    }

    /// Stops every process of the cluster.
    pub fn stop(self) {
        drop(self);
    }
}

/// One run of one mode.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Leader or leaderless.
    pub mode: Mode,
    /// 1-based repeat.
    pub repeat: u32,
    /// Figures.
    pub summary: Summary,
    /// Per-second series.
    pub seconds: Vec<Second>,
    /// Invariant violations (empty: the money is right).
    pub violations: Vec<String>,
}

/// Runs the comparison and writes the reports; an error if any invariant check failed.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for repeat in 1..=cli.repeats {
        for mode in Mode::ALL {
            eprintln!(
                "== {mode} mode, run {repeat} of {}: starting a {}-node testbed",
                cli.repeats, cli.nodes
            );
            let cluster = Cluster::start(mode, cli.nodes, &cli.testbed_args)?;
            let outcome = one_run(cli, &cluster.url, mode, repeat).await;
            cluster.stop();
            let result = outcome?;
            eprintln!(
                "== {mode} run {repeat}: {:.0} ops/s, p99 {:.1} ms, {} errors, {} violations",
                result.summary.ops_per_s,
                result.summary.p99_ms,
                result.summary.errors,
                result.violations.len()
            );
            results.push(result);
        }
    }
    let table = table(&results);
    println!("{table}");
    std::fs::create_dir_all(&cli.out_dir)?;
    let md = cli.out_dir.join("compare.md");
    std::fs::write(&md, &table)?;
    let json = cli.out_dir.join("compare.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    let html = cli.out_dir.join("compare.html");
    std::fs::write(&html, html_report(&results, &table))?;
    eprintln!(
        "reports: {}, {}, {}",
        md.display(),
        json.display(),
        html.display()
    );
    let violations: usize = results.iter().map(|r| r.violations.len()).sum();
    anyhow::ensure!(
        violations == 0,
        "{violations} invariant violations (see above)"
    );
    Ok(())
}

async fn one_run(cli: &Cli, url: &str, mode: Mode, repeat: u32) -> anyhow::Result<RunResult> {
    let run = crate::prepare(cli, url, mode.as_str()).await?;
    crate::attack(cli, url, run.clone()).await?;
    let samples = run.samples.lock().expect("samples lock").clone();
    let ledger = run.ledger.lock().expect("ledger lock").clone();
    crate::save_ledger(
        &ledger,
        &cli.out_dir.join(format!("ledger-{mode}-{repeat}.json")),
    )?;
    let violations = if cli.no_check {
        Vec::new()
    } else {
        let nodes = crate::ledger::testbed_nodes(url).await;
        let report = crate::ledger::check(&ledger, url, &nodes, cli.replays).await;
        let _ = crate::judge(&report);
        report.violations
    };
    Ok(RunResult {
        mode,
        repeat,
        summary: stats::summarize(&samples),
        seconds: stats::per_second(&samples),
        violations,
    })
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    if values.len() < 2 {
        return format!("{mean:.1}");
    }
    format!("{mean:.1} ({min:.1}-{max:.1})")
}

/// The comparison table: per mode, the mean over repeats and (min-max).
pub fn table(results: &[RunResult]) -> String {
    let mut out = String::from(
        "| mode | runs | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | violations |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for mode in Mode::ALL {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.mode == mode).collect();
        if runs.is_empty() {
            continue;
        }
        let col = |f: fn(&Summary) -> f64| {
            spread(&runs.iter().map(|r| f(&r.summary)).collect::<Vec<_>>())
        };
        let errors: u64 = runs.iter().map(|r| r.summary.errors).sum();
        let violations: usize = runs.iter().map(|r| r.violations.len()).sum();
        out.push_str(&format!(
            "| {mode} | {} | {} | {} | {} | {} | {} | {errors} | {violations} |\n",
            runs.len(),
            col(|s| s.ops_per_s),
            col(|s| s.p50_ms),
            col(|s| s.p90_ms),
            col(|s| s.p99_ms),
            col(|s| s.p999_ms),
        ));
    }
    out
}

/// A line chart of per-second values, one line per run.
fn chart(title: &str, series: &[(String, Vec<(f64, f64)>)], unit: &str) -> String {
    let series: Vec<testbed::plot::Series> = series
        .iter()
        .enumerate()
        .map(|(i, (name, points))| testbed::plot::Series {
            name: name.clone(),
            points: points.clone(),
            dashed: false,
            colour: i,
        })
        .collect();
    testbed::plot::lines(&testbed::plot::Lines {
        title,
        x_label: "seconds",
        y_label: unit,
        series: &series,
        ..testbed::plot::Lines::default()
    })
}

/// The HTML report: the table and, per mode, throughput and p99 over time.
pub fn html_report(results: &[RunResult], table: &str) -> String {
    let mut body = String::new();
    for mode in Mode::ALL {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.mode == mode).collect();
        if runs.is_empty() {
            continue;
        }
        // One line per run of `value` over the run's seconds.
        let series = |value: fn(&Second) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
            runs.iter()
                .map(|r| {
                    let points = r
                        .seconds
                        .iter()
                        .map(|s| (f64::from(s.second), value(s)))
                        .collect();
                    (format!("run {}", r.repeat), points)
                })
                .collect()
        };
        let ops = series(|s| s.ops as f64);
        let p99 = series(|s| s.p99_ms);
        body.push_str(&format!(
            "<h2>{mode} mode</h2>{}{}",
            chart("operations per second", &ops, "ops/s"),
            chart("p99 latency per second", &p99, "ms")
        ));
    }
    let rows = testbed::plot::markdown_table(table);
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>paxos bank: leader vs leaderless</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>\
         <h1>paxos bank: leader vs leaderless</h1>{rows}{body}</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(mode: Mode, repeat: u32, ops: f64) -> RunResult {
        RunResult {
            mode,
            repeat,
            summary: Summary {
                ops_per_s: ops,
                p99_ms: 10.0,
                ..Summary::default()
            },
            seconds: vec![Second {
                second: 0,
                ops: 5,
                p99_ms: 2.0,
            }],
            violations: Vec::new(),
        }
    }

    #[test]
    fn the_table_shows_the_mean_and_spread_per_mode() {
        let results = vec![
            result(Mode::Leader, 1, 100.0),
            result(Mode::Leader, 2, 300.0),
            result(Mode::Leaderless, 1, 50.0),
        ];
        let table = table(&results);
        assert!(
            table.contains("| leader | 2 | 200.0 (100.0-300.0) |"),
            "{table}"
        );
        assert!(table.contains("| leaderless | 1 | 50.0 |"), "{table}");
        let html = html_report(&results, &table);
        assert!(html.contains("<svg") && html.contains("leaderless mode"));
    }
}
