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
    /// Which round of `--rounds` (from 1).
    pub round: u32,
    /// Share of the host's CPU time the hypervisor gave to other guests during the window
    /// (`steal` in `/proc/stat`; `None` where the kernel does not say). A run with much steal
    /// measured a slower machine than its neighbours did.
    pub host_steal: Option<f64>,
    /// Cores the load generator (this process: the clients) used, not counted in `cpu_cores`.
    pub client_cores: Option<f64>,
    /// The disk's speed just before the run: the median of [`FSYNC_PROBES`] 4 KiB appends, each
    /// followed by `fdatasync`, in the temporary folder the systems keep their data in, in ms.
    /// Both systems sync every write to a majority; etcd syncs per transaction, so its
    /// throughput follows this figure closely.
    pub disk_sync_ms: Option<f64>,
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
        round: 1,
        host_steal: None,
        client_cores: None,
        disk_sync_ms: None,
    }
}

/// Appends timed by [`disk_sync_ms`].
pub const FSYNC_PROBES: usize = 20;

/// The median time, in ms, of [`FSYNC_PROBES`] 4 KiB appends to a new file in `dir`, each
/// followed by `fdatasync` (blocking: call it off the runtime). An error if the folder is not
/// writable.
pub fn disk_sync_ms(dir: &std::path::Path) -> std::io::Result<f64> {
    use std::io::Write as _;
    let mut file = tempfile::tempfile_in(dir)?;
    let block = [0x5a_u8; 4096];
    let mut times = Vec::with_capacity(FSYNC_PROBES);
    for _ in 0..FSYNC_PROBES {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(times))
}

/// CPU time of the whole host so far, from the first line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTicks {
    /// Every state's ticks: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
    /// Ticks a hypervisor ran other guests while this one had work (`steal`).
    pub steal: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat` (`cpu  user nice system idle iowait irq
/// softirq steal guest guest_nice`; guest time is already inside user time). `None` for a line
/// without a steal field (kernels before 2.6.11).
pub fn parse_host_ticks(proc_stat: &str) -> Option<HostTicks> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (fields.len() == 8).then(|| HostTicks {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

/// The host's CPU ticks now (`None` off Linux).
pub fn host_ticks() -> Option<HostTicks> {
    parse_host_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Share of the host's CPU time stolen between two readings.
pub fn steal_share(before: HostTicks, after: HostTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let steal = after.steal.checked_sub(before.steal)?;
    (total > 0).then(|| steal as f64 / total as f64)
}

/// Runs with more steal than this are flagged under the tables.
pub const STEAL_WARNING: f64 = 0.10;

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) if t > 0.0 && ours.is_finite() && t.is_finite() => format!("{:.2}x", ours / t),
        _ => "-".to_owned(),
    }
}

/// The Markdown tables of every round (each bank figure's ratio to etcd's in the same round),
/// then, with several rounds, the medians of the ratios.
pub fn tables(runs: &[Run]) -> String {
    let rounds = rounds_of(runs);
    if rounds.len() <= 1 {
        return round_tables(runs);
    }
    let mut out = String::new();
    for round in &rounds {
        let of_round: Vec<Run> = runs.iter().filter(|r| r.round == *round).cloned().collect();
        let _ = writeln!(out, "### Round {round} of {}\n", rounds.len());
        out.push_str(&round_tables(&of_round));
        out.push('\n');
    }
    out.push_str(&medians(runs));
    out
}

/// The rounds `runs` come from, in order, each once.
fn rounds_of(runs: &[Run]) -> Vec<u32> {
    let mut rounds: Vec<u32> = runs.iter().map(|r| r.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    rounds
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if !values.len().is_multiple_of(2) {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Medians over rounds of each bank figure, of its ratio to etcd's in the same round, and of
/// leaderless mode's throughput over leader mode's in the same round: ratios taken within a
/// round and then their median, so a slow minute moves one round, not the answer.
pub fn medians(runs: &[Run]) -> String {
    let mut out = String::new();
    let rounds = rounds_of(runs).len();
    let _ = writeln!(
        out,
        "### Medians over {rounds} rounds (ratios taken within each round)\n"
    );
    let _ = writeln!(
        out,
        "| workload | clients | system | ops/s | vs etcd | p50 ms | vs etcd | p99 ms | vs etcd | CPU ms/op | vs etcd | vs leader mode (ops/s) |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut shapes: Vec<(Workload, u32, Option<u64>, System)> = Vec::new();
    for run in runs {
        let key = (
            run.workload,
            run.clients,
            run.rate.map(f64::to_bits),
            run.system,
        );
        if !shapes.contains(&key) {
            shapes.push(key);
        }
    }
    let same_shape = |a: &Run, b: &Run| {
        a.round == b.round && a.workload == b.workload && a.clients == b.clients && a.rate == b.rate
    };
    for (workload, clients, rate, system) in shapes {
        let of_shape: Vec<&Run> = runs
            .iter()
            .filter(|r| {
                r.workload == workload
                    && r.clients == clients
                    && r.rate.map(f64::to_bits) == rate
                    && r.system == system
            })
            .collect();
        let first = of_shape[0];
        let to = |other: System, figure: fn(&Run) -> f64| -> String {
            let ratios: Vec<f64> = of_shape
                .iter()
                .filter_map(|run| {
                    let theirs = runs
                        .iter()
                        .find(|r| r.system == other && same_shape(r, run))?;
                    Some(figure(run) / figure(theirs))
                })
                .collect();
            if ratios.is_empty() || system == other {
                "-".to_owned()
            } else {
                format!("{:.2}x", median(ratios))
            }
        };
        let etcd = |figure: fn(&Run) -> f64| match system {
            System::Bank(_) => to(System::Etcd, figure),
            System::Etcd => "-".to_owned(),
        };
        let of = |figure: fn(&Run) -> f64| median(of_shape.iter().map(|r| figure(r)).collect());
        let vs_leader = match system {
            System::Bank(paxos::Mode::Leaderless) => {
                to(System::Bank(paxos::Mode::Leader), |r| r.ops_per_s)
            }
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {} | {} |",
            workload,
            first.shape(),
            system,
            of(|r| r.ops_per_s),
            etcd(|r| r.ops_per_s),
            of(|r| r.p50_ms),
            etcd(|r| r.p50_ms),
            of(|r| r.p99_ms),
            etcd(|r| r.p99_ms),
            of(|r| r.cpu_ms_per_op),
            etcd(|r| r.cpu_ms_per_op),
            vs_leader,
        );
    }
    out
}

/// One round's tables: one row per run with each figure's ratio to etcd's on the same workload
/// and client count, then CPU per process, then a warning for runs the hypervisor slowed.
fn round_tables(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | clients | system | ops/s | vs etcd | p50 ms | vs etcd | p99 ms | vs etcd | cores | CPU ms/op | vs etcd | errors | total | host steal | client cores | disk sync ms |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
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
            "| {} | {} | {} | {:.0} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
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
            },
            run.host_steal
                .map_or("-".to_owned(), |s| format!("{:.0}%", s * 100.0)),
            run.client_cores
                .map_or("-".to_owned(), |c| format!("{c:.2}")),
            run.disk_sync_ms
                .map_or("-".to_owned(), |ms| format!("{ms:.2}")),
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
    let stolen: Vec<String> = runs
        .iter()
        .filter_map(|run| {
            let steal = run.host_steal.filter(|s| *s > STEAL_WARNING)?;
            Some(format!(
                "{} {} {} ({:.0}%)",
                run.system,
                run.workload,
                run.shape(),
                steal * 100.0
            ))
        })
        .collect();
    if !stolen.is_empty() {
        let _ = writeln!(
            out,
            "\nThe hypervisor took more than {:.0}% of this host's CPU during: {}. Such a run measured \
             a slower machine than the others; compare ratios from runs with similar steal, or take \
             the medians of several rounds (`--rounds`).",
            STEAL_WARNING * 100.0,
            stolen.join(", ")
        );
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

    fn run_of(system: System, round: u32, ops_per_s: f64, p50_ms: f64) -> Run {
        let samples: Vec<Sample> = (1..=10).map(|i| sample(i, 1000, false)).collect();
        let mut run = summarize(
            system,
            Workload::Transfers,
            64,
            None,
            Duration::from_secs(1),
            &samples,
            vec![("p".into(), 0.01)],
        );
        run.round = round;
        run.ops_per_s = ops_per_s;
        run.p50_ms = p50_ms;
        run
    }

    #[test]
    fn the_host_s_steal_is_read_from_proc_stat() {
        let before = parse_host_ticks(
            "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\nintr 1\n",
        )
        .unwrap();
        assert_eq!(
            before,
            HostTicks {
                total: 1000,
                steal: 35
            }
        );
        let after = HostTicks {
            total: 1400,
            steal: 135,
        };
        assert_eq!(steal_share(before, after), Some(0.25));
        assert_eq!(steal_share(after, after), None, "no time passed");
        assert_eq!(parse_host_ticks("cpu  1 2 3 4\n"), None, "no steal field");
        assert_eq!(parse_host_ticks("intr 1\n"), None);
    }

    #[test]
    fn the_disk_s_sync_time_is_measured_in_the_given_folder() {
        let dir = tempfile::tempdir().unwrap();
        let ms = disk_sync_ms(dir.path()).unwrap();
        assert!(ms.is_finite() && ms > 0.0, "{ms}");
        assert!(
            disk_sync_ms(&dir.path().join("missing")).is_err(),
            "a folder that is not there is an error, not a figure"
        );
        let mut run = run_of(System::Etcd, 1, 100.0, 1.0);
        run.disk_sync_ms = Some(0.123);
        let text = tables(&[run]);
        let row = text.lines().find(|l| l.contains("| etcd |")).unwrap();
        assert!(row.ends_with("| 0.12 |"), "{row}");
    }

    #[test]
    fn a_run_with_much_steal_is_flagged_and_its_steal_shown() {
        let mut run = run_of(System::Bank(paxos::Mode::Leader), 1, 100.0, 1.0);
        run.host_steal = Some(0.54);
        run.client_cores = Some(0.29);
        let text = tables(&[run.clone()]);
        let row = text
            .lines()
            .find(|l| l.contains("paxos bank (leader)"))
            .unwrap();
        assert!(row.ends_with("| 54% | 0.29 | - |"), "{row}");
        assert!(text.contains("more than 10% of this host's CPU during: paxos bank (leader) transfers 64 clients (54%)"), "{text}");
        run.host_steal = Some(0.02);
        assert!(!tables(&[run]).contains("The hypervisor took"));
    }

    #[test]
    fn medians_are_of_ratios_taken_within_each_round() {
        let leader = System::Bank(paxos::Mode::Leader);
        let leaderless = System::Bank(paxos::Mode::Leaderless);
        // Ratios to etcd by round: 2x, 3x, 4x (median 3x); the ratio of the medians of ops/s
        // (10 / 5) would say 2x. Leaderless over leader: 0.5, 0.9, 1.0 (median 0.9).
        let runs = vec![
            run_of(leader, 1, 10.0, 4.0),
            run_of(leaderless, 1, 5.0, 4.0),
            run_of(System::Etcd, 1, 5.0, 8.0),
            run_of(leader, 2, 30.0, 4.0),
            run_of(leaderless, 2, 27.0, 4.0),
            run_of(System::Etcd, 2, 10.0, 8.0),
            run_of(leader, 3, 8.0, 4.0),
            run_of(leaderless, 3, 8.0, 4.0),
            run_of(System::Etcd, 3, 2.0, 8.0),
        ];
        let text = tables(&runs);
        assert!(text.contains("### Round 3 of 3"), "{text}");
        let medians = text.split("### Medians over 3 rounds").nth(1).expect(&text);
        let row = |system: &str| {
            medians
                .lines()
                .find(|l| l.contains(&format!("| {system} |")))
                .unwrap_or_else(|| panic!("{system}: {medians}"))
                .to_owned()
        };
        let leader_row = row("paxos bank (leader)");
        assert!(
            leader_row.contains("| 10 | 3.00x | 4.00 | 0.50x |"),
            "{leader_row}"
        );
        assert!(leader_row.ends_with("| - |"), "{leader_row}");
        let leaderless_row = row("paxos bank (leaderless)");
        assert!(leaderless_row.ends_with("| 0.90x |"), "{leaderless_row}");
        let etcd_row = row("etcd");
        assert!(etcd_row.contains("| 5 | - |"), "{etcd_row}");
        // Each round's own table takes its ratios from its own etcd run.
        let round2 = text.split("### Round 2 of 3").nth(1).unwrap();
        let round2_leader = round2
            .lines()
            .find(|l| l.contains("paxos bank (leader)"))
            .unwrap();
        assert!(round2_leader.contains("| 30 | 3.00x |"), "{round2_leader}");
    }
}
