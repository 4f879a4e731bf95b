//! Chaos's metrics: every fault counted by fault and target, a gauge that is 1 while a fault's
//! effect lasts (what dashboards draw as annotations), what was skipped and why, and the kill
//! switch.

use telemetry::catalog::{Metric, counter, describe_all, gauge};

use crate::fault::Fault;

/// `chaos_faults_total{fault,target}`.
pub const FAULTS: &str = "chaos_faults_total";
/// `chaos_fault_active{fault,target}`.
pub const ACTIVE: &str = "chaos_fault_active";
/// `chaos_skipped_total{reason}`.
pub const SKIPPED: &str = "chaos_skipped_total";
/// `chaos_kill_switch_engaged`.
pub const KILL_SWITCH: &str = "chaos_kill_switch_engaged";

/// Why a scheduled fault was not injected: the `reason` label of `chaos_skipped_total`.
pub const SKIP_REASONS: [&str; 7] = [
    "dry_run",
    "kill_switch",
    "in_flight",
    "excluded_window",
    "no_target",
    "no_cluster",
    "failed",
];

/// Every metric of chaos.
pub const METRICS: &[Metric] = &[
    counter(
        FAULTS,
        "Faults injected, by fault (kill, shutdown, pause, partition, loss) and target node (node-<id>)",
    ),
    gauge(
        ACTIVE,
        "1 while a fault's effect lasts (a pause until it is healed; a kill or shutdown until the node is ready again), by fault and target",
    ),
    counter(
        SKIPPED,
        "Scheduled faults not injected, by reason (dry_run, kill_switch, in_flight, excluded_window, no_target, no_cluster, failed)",
    ),
    gauge(
        KILL_SWITCH,
        "1 while the kill switch is engaged (nothing is injected)",
    ),
];

/// Describes the metrics and creates their series at zero for `nodes`.
pub fn register(nodes: impl IntoIterator<Item = u32>) {
    describe_all(METRICS);
    for reason in SKIP_REASONS {
        ::metrics::counter!(SKIPPED, "reason" => reason).increment(0);
    }
    ::metrics::gauge!(KILL_SWITCH).set(0.0);
    for node in nodes {
        for fault in Fault::ALL {
            let target = format!("node-{node}");
            ::metrics::counter!(FAULTS, "fault" => fault.as_str(), "target" => target.clone())
                .increment(0);
            ::metrics::gauge!(ACTIVE, "fault" => fault.as_str(), "target" => target).set(0.0);
        }
    }
}
