//! Availability experiments (`testbed experiment <plan.toml>`): for each mode of a plan, a fresh
//! cluster, an open-model load, the prober and the plan's faults on schedule, then the bank's
//! invariant check and a report.
//!
//! Built so far: the plan ([`plan`]: its TOML form, validated, the ready plans in
//! `testbed/plans/`) and the open-model load ([`load`]: requests sent on schedule whatever the
//! earlier ones do, so an outage shows as errors and queueing instead of being hidden by clients
//! that wait). The runner and the report are still to come (issue 17).

pub mod load;
pub mod plan;
