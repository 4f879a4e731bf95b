//! The prober's metrics: counters (not only gauges) per target, the SLO figures it computes, and
//! its recoveries. One table ([`METRICS`]); every series of a target exists at zero from its
//! first probe round on.

use metrics::Unit;
use telemetry::catalog::{Metric, counter, describe_all, gauge, histogram};

use crate::probe::Failure;

/// `probe_total{target}`.
pub const PROBES: &str = "probe_total";
/// `probe_success_total{target}`.
pub const SUCCESSES: &str = "probe_success_total";
/// `probe_failures_total{target,reason}`.
pub const FAILURES: &str = "probe_failures_total";
/// `probe_duration_seconds{target}`.
pub const DURATION: &str = "probe_duration_seconds";
/// `probe_last_success_timestamp_seconds{target}`.
pub const LAST_SUCCESS: &str = "probe_last_success_timestamp_seconds";
/// `prober_availability{target,window}`.
pub const AVAILABILITY: &str = "prober_availability";
/// `prober_burn_rate{target,window}`.
pub const BURN_RATE: &str = "prober_burn_rate";
/// `prober_error_budget_remaining{target}`.
pub const BUDGET_REMAINING: &str = "prober_error_budget_remaining";
/// `prober_slo_objective`.
pub const OBJECTIVE: &str = "prober_slo_objective";
/// `prober_recoveries_total{outcome}`.
pub const RECOVERIES: &str = "prober_recoveries_total";
/// `prober_failover_duration_seconds{elected_by}`.
pub const FAILOVER_DURATION: &str = "prober_failover_duration_seconds";

/// How a recovery ended: the `outcome` label of `prober_recoveries_total`.
pub const RECOVERY_OUTCOMES: [&str; 5] = [
    "retargeted",
    "no_healthy_node",
    "leader_healthy",
    "failed",
    "followed_leader",
];

/// Every metric of the prober.
pub const METRICS: &[Metric] = &[
    counter(
        PROBES,
        "Probes sent, by target (the entry point, or node-<id>)",
    ),
    counter(SUCCESSES, "Probes that passed, by target"),
    counter(FAILURES, "Probes that failed, by target and reason"),
    histogram(
        DURATION,
        Some(Unit::Seconds),
        "Probe duration, by target (a failed probe counts its time to failure)",
    ),
    gauge(
        LAST_SUCCESS,
        "Unix time of the last probe that passed, by target",
    ),
    gauge(
        AVAILABILITY,
        "Good probes / probes over a window, by target and window",
    ),
    gauge(
        BURN_RATE,
        "(1 - availability) / (1 - objective) over a window, by target and window",
    ),
    gauge(
        BUDGET_REMAINING,
        "Share of the SLO period's error budget left (negative: overspent), by target",
    ),
    gauge(OBJECTIVE, "The availability objective (0.999: 99.9%)"),
    counter(
        RECOVERIES,
        "Leader recoveries the prober attempted, by outcome",
    ),
    histogram(
        FAILOVER_DURATION,
        Some(Unit::Seconds),
        "From the first failed probe of an outage to the first probe that passed again, by who elected the new leader (prober, cluster)",
    ),
];

/// HELP texts of every metric.
pub fn describe() {
    describe_all(METRICS);
}

/// The series of the prober itself, at zero.
pub fn register() {
    for outcome in RECOVERY_OUTCOMES {
        metrics::counter!(RECOVERIES, "outcome" => outcome).increment(0);
    }
    for by in ["prober", "cluster"] {
        drop(metrics::histogram!(FAILOVER_DURATION, "elected_by" => by));
    }
}

/// The series of one target, at zero.
pub fn register_target(target: &str) {
    let target = target.to_owned();
    metrics::counter!(PROBES, "target" => target.clone()).increment(0);
    metrics::counter!(SUCCESSES, "target" => target.clone()).increment(0);
    for failure in Failure::ALL {
        metrics::counter!(FAILURES, "target" => target.clone(), "reason" => failure.as_str())
            .increment(0);
    }
    drop(metrics::histogram!(DURATION, "target" => target.clone()));
    metrics::gauge!(LAST_SUCCESS, "target" => target.clone()).increment(0.0);
    metrics::gauge!(BUDGET_REMAINING, "target" => target).set(1.0);
}
