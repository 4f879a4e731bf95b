//! A metric catalogue: every crate lists its metrics (name, kind, unit, HELP) in one table of
//! [`Metric`]s; [`describe_all`] gives Prometheus the HELP texts and [`register_all`] creates
//! the series at zero at start-up, so a dashboard or an alert never sees a missing series where
//! there were simply no events yet.

use metrics::Unit;

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value now.
    Gauge,
    /// A distribution (Prometheus histogram buckets).
    Histogram,
}

/// One metric of the contract: dashboards, alerts and the docs' table rely on its name.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The series name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit, if it has one.
    pub unit: Option<Unit>,
    /// The HELP text.
    pub help: &'static str,
}

/// A counter without a unit.
pub const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        unit: None,
        help,
    }
}

/// A gauge without a unit.
pub const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        unit: None,
        help,
    }
}

/// A histogram, with its unit if it has one.
pub const fn histogram(name: &'static str, unit: Option<Unit>, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        unit,
        help,
    }
}

/// Gives every metric of `metrics` its HELP text and unit.
pub fn describe_all(metrics: &[Metric]) {
    for metric in metrics {
        match (metric.kind, metric.unit) {
            (Kind::Counter, Some(unit)) => {
                metrics::describe_counter!(metric.name, unit, metric.help)
            }
            (Kind::Counter, None) => metrics::describe_counter!(metric.name, metric.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(metric.name, unit, metric.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(metric.name, metric.help),
            (Kind::Histogram, Some(unit)) => {
                metrics::describe_histogram!(metric.name, unit, metric.help);
            }
            (Kind::Histogram, None) => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

/// Creates the unlabelled series of `metrics` at zero (histograms with no samples yet).
pub fn register_all(metrics: &[Metric]) {
    for metric in metrics {
        match metric.kind {
            Kind::Counter => metrics::counter!(metric.name).increment(0),
            Kind::Gauge => metrics::gauge!(metric.name).increment(0.0),
            Kind::Histogram => drop(metrics::histogram!(metric.name)),
        }
    }
}

/// What every process exports besides its own metrics: `build_info` and the process figures.
pub const EVERY_PROCESS: [&str; 6] = [
    "build_info",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_threads",
    "process_start_time_seconds",
];

/// True if the Prometheus `text` has a sample of the series `name` (a histogram's `_bucket`,
/// `_sum` or `_count` counts).
pub fn has_series(text: &str, name: &str) -> bool {
    text.lines().filter(|l| !l.starts_with('#')).any(|line| {
        line.strip_prefix(name).is_some_and(|rest| {
            let rest = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| rest.strip_prefix(suffix))
                .unwrap_or(rest);
            rest.starts_with('{') || rest.starts_with(' ')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_by_its_exact_name() {
        let text = "# HELP a_total x\na_total{k=\"v\"} 0\nb_seconds_bucket{le=\"1\"} 0\nc 1\n";
        assert!(has_series(text, "a_total"));
        assert!(has_series(text, "b_seconds"));
        assert!(has_series(text, "c"));
        assert!(!has_series(text, "a"));
        assert!(!has_series(text, "b"));
        assert!(!has_series(text, "d"));
    }
}
