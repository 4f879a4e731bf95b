//! Figures of a run, and the tables: every figure of the bank next to etcd's on the same
//! workload and client count, with the ratio.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::workload::Workload;

/// One operation as a client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When it ended, from the start of the run.
    pub end: Duration,
    /// How long it took, in microseconds.
    pub latency_us: u32,
    /// It failed (no answer, or not the bank's answer).
    pub error: bool,
    /// etcd: transactions that lost a race and were redone.
    pub retries: u32,
}

impl Sample {
    /// An operation begun at `began` and ending now, in a run started at `start`.
    pub fn new(start: Instant, began: Instant, error: bool) -> Sample {
        let now = Instant::now();
        Sample {
            end: now.duration_since(start),
            latency_us: u32::try_from(now.duration_since(began).as_micros()).unwrap_or(u32::MAX),
            error,
            retries: 0,
        }
    }
}

/// The system measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// The paxos bank in this mode.
    Bank(paxos::Mode),
    /// etcd.
    Etcd,
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            System::Bank(mode) => write!(f, "paxos bank ({mode})"),
            System::Etcd => f.write_str("etcd"),
        }
    }
}

/// CPU of one process over the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessCpu {
    /// `front-door`, `node-0`, `paxos-1`, `etcd-2`, ...
    pub role: String,
    /// Share of one core (1.0: a whole core).
    pub cores: f64,
    /// CPU milliseconds per operation.
    pub ms_per_op: f64,
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// What ran.
    pub system: System,
    /// Its workload.
    pub workload: Workload,
    /// Clients (each waits for its answer before its next request).
    pub clients: u32,
    /// Requests per second each client paces itself to (`None`: as fast as answered).
    pub rate: Option<f64>,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Operations that ended in the window, errors included.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Latency percentiles of successful operations.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Failed operations in the window.
    pub errors: u64,
    /// Cores the system's processes used together.
    pub cpu_cores: f64,
    /// Their CPU milliseconds per successful operation.
    pub cpu_ms_per_op: f64,
    /// Each process.
    pub processes: Vec<ProcessCpu>,
    /// The total was conserved (`None`: not checkable, errors left writes unknown).
    pub conserved: Option<bool>,
    /// The closing total, cents.
    pub total_cents: Option<i64>,
    /// etcd: transactions redone after losing a race, in the window.
    pub conflicts: Option<u64>,
    /// The bank in leader mode: the leader at the end of the run.
    pub leader: Option<u32>,
    /// etcd: its version.
    pub version: Option<String>,
    /// The first failures, described.
    pub error_examples: Vec<String>,
}

impl Run {
    /// `64 clients`, or `1 client at 20/s`.
    pub fn shape(&self) -> String {
        let clients = match self.clients {
            1 => "1 client".to_owned(),
            n => format!("{n} clients"),
        };
        match self.rate {
            Some(rate) => format!("{clients} at {rate}/s"),
            None => clients,
        }
    }
}

/// The `q` quantile (0..=1) of sorted `values`, in milliseconds.
fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

/// The figures of `samples` (already cut to the window of length `window`) and `cpu` (CPU
/// seconds per process over the window).
pub fn summarize(
    system: System,
    workload: Workload,
    clients: u32,
    rate: Option<f64>,
    window: Duration,
    samples: &[Sample],
    cpu: Vec<(String, f64)>,
) -> Run {
    let seconds = window.as_secs_f64();
    let mut latencies: Vec<u32> = samples
        .iter()
        .filter(|s| !s.error)
        .map(|s| s.latency_us)
        .collect();
    latencies.sort_unstable();
    let ok = latencies.len() as f64;
    let per_op = |cpu_seconds: f64| {
        if ok > 0.0 {
            cpu_seconds * 1000.0 / ok
        } else {
            f64::NAN
        }
    };
    let total: f64 = cpu.iter().map(|(_, s)| s).sum();
    Run {
        system,
        workload,
        clients,
        rate,
        seconds,
        ops: samples.len() as u64,
        ops_per_s: ok / seconds,
        p50_ms: quantile_ms(&latencies, 0.50),
        p99_ms: quantile_ms(&latencies, 0.99),
        errors: samples.iter().filter(|s| s.error).count() as u64,
        cpu_cores: total / seconds,
        cpu_ms_per_op: per_op(total),
        processes: cpu
            .into_iter()
            .map(|(role, s)| ProcessCpu {
                role,
                cores: s / seconds,
                ms_per_op: per_op(s),
            })
            .collect(),
        conserved: None,
        total_cents: None,
        conflicts: Some(samples.iter().map(|s| u64::from(s.retries)).sum())
            .filter(|_| system == System::Etcd),
        leader: None,
        version: None,
        error_examples: Vec::new(),
    }
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) if t > 0.0 && ours.is_finite() && t.is_finite() => format!("{:.2}x", ours / t),
        _ => "-".to_owned(),
    }
}

/// The Markdown tables: one row per run with each figure's ratio to etcd's on the same
/// workload and client count, then CPU per process.
pub fn tables(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | clients | system | ops/s | vs etcd | p50 ms | vs etcd | p99 ms | vs etcd | cores | CPU ms/op | vs etcd | errors | total |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for run in runs {
        let etcd = runs.iter().find(|r| {
            r.system == System::Etcd
                && r.workload == run.workload
                && r.clients == run.clients
                && r.rate == run.rate
        });
        let (ops, p50, p99, cpu) = match (etcd, run.system) {
            (Some(e), System::Bank(_)) => (
                ratio(run.ops_per_s, Some(e.ops_per_s)),
                ratio(run.p50_ms, Some(e.p50_ms)),
                ratio(run.p99_ms, Some(e.p99_ms)),
                ratio(run.cpu_ms_per_op, Some(e.cpu_ms_per_op)),
            ),
            _ => Default::default(),
        };
        let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2} | {} | {} | {} |",
            run.workload,
            run.shape(),
            run.system,
            run.ops_per_s,
            dash(ops),
            run.p50_ms,
            dash(p50),
            run.p99_ms,
            dash(p99),
            run.cpu_cores,
            run.cpu_ms_per_op,
            dash(cpu),
            run.errors,
            match run.conserved {
                Some(true) => "conserved",
                Some(false) => "NOT CONSERVED",
                None => "not checked (errors)",
            }
        );
    }
    let _ = writeln!(
        out,
        "\nCPU per process (% of one core; CPU ms per operation):\n"
    );
    let _ = writeln!(
        out,
        "| workload | clients | system | process | % core | ms/op |"
    );
    let _ = writeln!(out, "|---|---:|---|---|---:|---:|");
    for run in runs {
        for p in &run.processes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.1} | {:.3} |",
                run.workload,
                run.shape(),
                run.system,
                p.role,
                p.cores * 100.0,
                p.ms_per_op
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(end_ms: u64, latency_us: u32, error: bool) -> Sample {
        Sample {
            end: Duration::from_millis(end_ms),
            latency_us,
            error,
            retries: 0,
        }
    }

    #[test]
    fn summary_counts_successes_per_second_and_cpu_per_success() {
        let mut samples: Vec<Sample> = (1..=100)
            .map(|i| sample(i, i as u32 * 1000, false))
            .collect();
        samples.push(sample(50, 1, true));
        let run = summarize(
            System::Bank(paxos::Mode::Leader),
            Workload::Transfers,
            1,
            None,
            Duration::from_secs(2),
            &samples,
            vec![("node-0".into(), 0.5), ("paxos-0".into(), 1.5)],
        );
        assert_eq!(run.ops, 101);
        assert_eq!(run.errors, 1);
        assert_eq!(run.ops_per_s, 50.0);
        assert_eq!(run.p50_ms, 50.0);
        assert_eq!(run.p99_ms, 99.0);
        assert_eq!(run.cpu_cores, 1.0);
        assert_eq!(run.cpu_ms_per_op, 20.0);
        assert_eq!(run.processes[1].ms_per_op, 15.0);
        assert_eq!(run.conflicts, None);
    }

    #[test]
    fn tables_give_each_bank_figure_its_ratio_to_etcd_at_the_same_shape() {
        let samples: Vec<Sample> = (1..=10).map(|i| sample(i, 2000, false)).collect();
        let bank = summarize(
            System::Bank(paxos::Mode::Leader),
            Workload::Transfers,
            1,
            None,
            Duration::from_secs(1),
            &samples,
            vec![("paxos-0".into(), 0.01)],
        );
        let mut etcd = summarize(
            System::Etcd,
            Workload::Transfers,
            1,
            None,
            Duration::from_secs(1),
            &samples[..5],
            vec![("etcd-0".into(), 0.01)],
        );
        etcd.p50_ms = 4.0;
        let text = tables(&[bank, etcd]);
        let row = text
            .lines()
            .find(|l| l.contains("paxos bank (leader)"))
            .unwrap();
        // 10 vs 5 ops/s: 2x; p50 2 ms vs 4 ms: 0.5x; CPU 1 ms/op vs 2 ms/op: 0.5x.
        assert!(row.contains("| 10 | 2.00x | 2.00 | 0.50x |"), "{row}");
        assert!(row.contains("| 1.00 | 0.50x |"), "{row}");
        let etcd_row = text.lines().find(|l| l.contains("| etcd |")).unwrap();
        assert!(etcd_row.contains("| 5 | - |"), "{etcd_row}");
        assert!(
            text.contains("| transfers | 1 client | paxos bank (leader) | paxos-0 | 1.0 | 1.000 |")
        );
    }
}
