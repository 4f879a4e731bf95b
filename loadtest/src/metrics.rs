//! The load generator's metrics (served with `--metrics-listen`): name, kind, unit and HELP in
//! one table ([`METRICS`]), every series of a run created at zero before its first operation.

use metrics::Unit;
use telemetry::catalog::{Metric, counter, describe_all, histogram};

/// `loadtest_operations_total{mode,op,outcome}`.
pub const OPERATIONS: &str = "loadtest_operations_total";
/// `loadtest_operation_duration_seconds{mode,op}`.
pub const OPERATION_DURATION: &str = "loadtest_operation_duration_seconds";

/// The operations of the workloads (the `op` label).
pub const OPS: [&str; 5] = [
    "open_account",
    "deposit",
    "withdraw",
    "move_money",
    "check_account",
];

/// The `outcome` label: the bank answered (any status but 503) or not.
pub const OUTCOMES: [&str; 2] = ["served", "error"];

/// Every metric of the load generator.
pub const METRICS: &[Metric] = &[
    counter(
        OPERATIONS,
        "Operations by mode, op and outcome (served: any answer but 503)",
    ),
    histogram(
        OPERATION_DURATION,
        Some(Unit::Seconds),
        "Whole operations, retries included, as a client sees them",
    ),
];

/// HELP texts of every metric.
pub fn describe() {
    describe_all(METRICS);
}

/// Every series of a run labelled `mode`, at zero.
pub fn register(mode: &str) {
    for op in OPS {
        for outcome in OUTCOMES {
            metrics::counter!(OPERATIONS, "mode" => mode.to_owned(), "op" => op, "outcome" => outcome)
                .increment(0);
        }
        drop(metrics::histogram!(OPERATION_DURATION, "mode" => mode.to_owned(), "op" => op));
    }
}
