//! Throughput and latency from the load test's own samples: one sample per operation, its
//! latency measured around the whole operation (503 retries included), as a client sees it.

use serde::Serialize;

/// The figures of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Operations answered (including business refusals) per second of the run.
    pub ops_per_s: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Operations without an answer or answered 5xx after every retry.
    pub errors: u64,
    /// Operations in all.
    pub operations: u64,
    /// Run length in seconds (first to last sample).
    pub seconds: f64,
}

/// One second of a run, for the plots.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Second since the start.
    pub second: u32,
    /// Operations completed in it.
    pub ops: u64,
    /// Their 99th percentile latency in milliseconds.
    pub p99_ms: f64,
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank; the epsilon keeps 99.9% of 1000 at rank 999 despite float rounding.
    let rank = ((q / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

/// Summarizes samples of `(ms since start, latency us, ok)`.
pub fn summarize(samples: &[(u32, u32, bool)]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    let mut latencies: Vec<u32> = samples.iter().map(|s| s.1).collect();
    latencies.sort_unstable();
    let first = samples.iter().map(|s| s.0).min().unwrap_or(0);
    let last = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let seconds = (f64::from(last - first) / 1000.0).max(1.0);
    let errors = samples.iter().filter(|s| !s.2).count() as u64;
    let operations = samples.len() as u64;
    Summary {
        ops_per_s: (operations - errors) as f64 / seconds,
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        p999_ms: percentile(&latencies, 99.9),
        errors,
        operations,
        seconds,
    }
}

/// Per-second throughput and p99.
pub fn per_second(samples: &[(u32, u32, bool)]) -> Vec<Second> {
    let mut buckets: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for (ms, latency, _) in samples {
        buckets.entry(ms / 1000).or_default().push(*latency);
    }
    buckets
        .into_iter()
        .map(|(second, mut latencies)| {
            latencies.sort_unstable();
            Second {
                second,
                ops: latencies.len() as u64,
                p99_ms: percentile(&latencies, 99.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates_come_from_the_samples() {
        // 1000 operations over 10 s, latencies 1..=1000 us, 10 errors.
        let samples: Vec<(u32, u32, bool)> = (0..1000u32)
            .map(|i| (i * 10, i + 1, i % 100 != 0))
            .collect();
        let s = summarize(&samples);
        assert_eq!(s.operations, 1000);
        assert_eq!(s.errors, 10);
        assert!((s.seconds - 9.99).abs() < 1e-9);
        assert!((s.ops_per_s - 990.0 / 9.99).abs() < 1e-6);
        assert_eq!(s.p50_ms, 0.5);
        assert_eq!(s.p99_ms, 0.99);
        assert_eq!(s.p999_ms, 0.999);
        let seconds = per_second(&samples);
        assert_eq!(seconds.len(), 10);
        assert_eq!(seconds[0].ops, 100);
    }
}
