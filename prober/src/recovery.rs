//! Leader recovery. After `threshold` consecutive failed probes of the entry point (leader mode),
//! while some node answers its direct probe and the leader's node does not, the prober asks a
//! healthy replica to start an election, waits for the new leader and points the load balancer
//! at it. If the leader's node answers but the load balancer points elsewhere (the cluster
//! elected a leader by itself, and on Kubernetes nothing else moves the Service), it retargets
//! without an election. At most one election per outage, and at least `min_interval` between two elections
//! (until then, each failed probe looks again: the leader's node may answer again, or a healthy
//! node appear). Every outage
//! ends in a [`RecoveryRecord`]: first failure, election started, new leader, retargeted, first
//! probe that passed again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paxos::Mode;

use crate::control::{ClusterView, Control};
use crate::probe::Outcome;

/// How long a recovery waits for the election it started to produce a leader.
pub const ELECTION_WAIT: Duration = Duration::from_secs(3);

/// How long the end of an outage waits before the fresh view that attributes it (the testbed's
/// front door refreshes its view every 100 ms).
const VIEW_SETTLE: Duration = Duration::from_millis(300);

/// One outage, from its first failed probe to the first probe that passed again.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RecoveryRecord {
    /// Unix time of the first failed probe.
    pub first_failure: f64,
    /// Failed probes in a row.
    pub failed_probes: u32,
    /// The leader when it began.
    pub leader_before: Option<u32>,
    /// What the prober did: `retargeted` (after its election, or at a leader the cluster
    /// elected), `no_healthy_node`, `leader_healthy`, `failed`, or
    /// `None` (it did not act: too short, leaderless mode, recovery off, too soon after the last).
    pub action: Option<&'static str>,
    /// Unix time the prober asked for an election.
    pub election_started: Option<f64>,
    /// The leader the election produced.
    pub new_leader: Option<u32>,
    /// Unix time the new leader was known.
    pub leader_known: Option<f64>,
    /// Unix time the load balancer was pointed at it.
    pub retargeted: Option<f64>,
    /// Unix time of the first probe that passed again.
    pub first_success: Option<f64>,
    /// `prober` (its election), `cluster` (the leader changed without it), `none` (the leader
    /// before the outage leads again) or `unknown` (the outage ended before any view of the
    /// cluster named a leader: a recovery faster than the views, through a node that forwards).
    pub elected_by: &'static str,
    /// What went wrong in the recovery, if anything.
    pub error: Option<String>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The recovery state of the probe loop.
#[derive(Debug)]
pub struct Recovery {
    threshold: u32,
    min_interval: Duration,
    enabled: bool,
    outage: Option<Outage>,
    last_election: Option<Instant>,
    /// The last leader a view named outside an outage: an outage's `leader_before` even when
    /// the view at its first failure already knows no leader, or there is no fresh view (the
    /// views run on their own schedule, and a dead leader leaves them within 100 ms).
    known_leader: Option<u32>,
}

/// An outage in progress.
#[derive(Debug)]
struct Outage {
    started: Instant,
    record: RecoveryRecord,
    /// `prober.outage`: open from the first failed probe to the first that passes again.
    span: tracing::Span,
}

impl Recovery {
    /// Recovers after `threshold` consecutive failures, at most once per `min_interval`; with
    /// `enabled` false it only records outages.
    pub fn new(threshold: u32, min_interval: Duration, enabled: bool) -> Recovery {
        Recovery {
            threshold,
            min_interval,
            enabled,
            outage: None,
            last_election: None,
            known_leader: None,
        }
    }

    /// A view (of the node-probe loop) named `leader`: remembered as the leader before the
    /// next outage, unless one is open.
    pub fn leader_seen(&mut self, leader: u32) {
        if self.outage.is_none() {
            self.known_leader = Some(leader);
        }
    }

    /// True while an outage is open (the last probe of the entry point failed).
    pub fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// After each probe of the entry point: opens, extends or closes the outage, and recovers
    /// when it is time. `view` and `nodes` are the last round of direct probes, if it is fresh
    /// (without one the outage is recorded, and nothing is done). Returns the record of an
    /// outage that just ended.
    pub async fn after_probe(
        &mut self,
        entry: &Outcome,
        view: Option<&ClusterView>,
        nodes: &[(u32, Outcome)],
        control: &Control,
    ) -> Option<RecoveryRecord> {
        if let Some(leader) = view.and_then(|v| v.leader) {
            self.leader_seen(leader);
        }
        if entry.failure.is_none() {
            let Outage {
                started,
                mut record,
                span,
            } = self.outage.take()?;
            record.first_success = Some(now());
            // The round's view may predate the election that ended the outage (a fast one ends
            // it between two rounds, through a node that forwards): let the views settle and
            // ask again before saying who ended it.
            let mut leader_now = view.and_then(|v| v.leader);
            tokio::time::sleep(VIEW_SETTLE).await;
            if let Ok(Ok(fresh)) =
                tokio::time::timeout(Duration::from_secs(1), control.view()).await
            {
                leader_now = fresh.leader;
            }
            if record.elected_by == "none" {
                if leader_now.is_none() {
                    record.elected_by = "unknown";
                } else if leader_now != record.leader_before {
                    record.elected_by = "cluster";
                }
            }
            if matches!(record.elected_by, "prober" | "cluster") {
                ::metrics::histogram!(crate::metrics::FAILOVER_DURATION, "elected_by" => record.elected_by)
                    .record(started.elapsed().as_secs_f64());
            }
            span.record("elected_by", record.elected_by);
            tracing::info!(
                parent: &span,
                outage_ms = started.elapsed().as_millis() as u64,
                failed_probes = record.failed_probes,
                elected_by = record.elected_by,
                action = record.action,
                "probes pass again"
            );
            return Some(record);
        }
        let leader_before = self.known_leader;
        let outage = self.outage.get_or_insert_with(|| {
            let span = tracing::info_span!(
                "prober.outage",
                leader_before = ?leader_before,
                elected_by = tracing::field::Empty,
            );
            tracing::warn!(parent: &span, detail = ?entry.detail, "a probe of the entry point failed");
            Outage {
                started: Instant::now(),
                record: RecoveryRecord {
                    first_failure: now(),
                    leader_before,
                    elected_by: "none",
                    ..RecoveryRecord::default()
                },
                span,
            }
        });
        let record = &mut outage.record;
        record.failed_probes += 1;
        let view = view?;
        let due = self.enabled
            && view.mode == Mode::Leader
            && record.election_started.is_none()
            && record.retargeted.is_none()
            && record.failed_probes >= self.threshold
            && self
                .last_election
                .is_none_or(|at| at.elapsed() >= self.min_interval);
        if !due {
            return None;
        }
        let action = recover(record, view, nodes, control, &outage.span).await;
        if record.election_started.is_some() {
            self.last_election = Some(Instant::now());
        }
        // A decision not to elect is counted once per outage, each time it changes.
        if record.action != Some(action) {
            ::metrics::counter!(crate::metrics::RECOVERIES, "outcome" => action).increment(1);
        }
        record.action = Some(action);
        None
    }
}

/// Elects a healthy replica and retargets the load balancer, or only retargets when the
/// leader is healthy and the load balancer points elsewhere; fills in `record`. Each step is an
/// event of `span`.
async fn recover(
    record: &mut RecoveryRecord,
    view: &ClusterView,
    nodes: &[(u32, Outcome)],
    control: &Control,
    span: &tracing::Span,
) -> &'static str {
    let healthy: Vec<u32> = (nodes.iter())
        .filter(|(_, outcome)| outcome.failure.is_none())
        .map(|(id, _)| *id)
        .collect();
    if healthy.is_empty() {
        tracing::warn!(parent: span, "the entry point fails and no node answers: nothing to elect");
        return "no_healthy_node";
    }
    if let Some(leader) = view.leader
        && healthy.contains(&leader)
    {
        if view.target.is_some_and(|target| target != leader) {
            tracing::warn!(
                parent: span,
                leader,
                target = ?view.target,
                "the load balancer does not point at the leader: retargeting"
            );
            return retarget(record, control, leader, span).await;
        }
        tracing::warn!(
            parent: span,
            leader,
            "the entry point fails but the leader's node answers"
        );
        return "leader_healthy";
    }
    let candidate = healthy[0];
    let Some(node) = view.nodes.iter().find(|n| n.id == candidate) else {
        return "failed";
    };
    tracing::warn!(
        parent: span,
        old_leader = ?view.leader,
        candidate,
        "election started: the leader's node does not answer, electing a healthy replica"
    );
    record.election_started = Some(now());
    if let Err(err) = control.elect(node).await {
        let error = format!("elect at node {candidate}: {err:#}");
        tracing::warn!(parent: span, error, "the election request failed");
        record.error = Some(error);
        return "failed";
    }
    let deadline = Instant::now() + ELECTION_WAIT;
    let leader = loop {
        if let Ok(view) = control.view().await
            && let Some(leader) = view.leader.filter(|l| healthy.contains(l))
        {
            break Some(leader);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(leader) = leader else {
        let error = format!("no healthy leader within {ELECTION_WAIT:?}");
        tracing::warn!(parent: span, error, "the election produced no healthy leader");
        record.error = Some(error);
        return "failed";
    };
    record.new_leader = Some(leader);
    record.leader_known = Some(now());
    record.elected_by = "prober";
    tracing::info!(parent: span, leader, "new leader");
    retarget(record, control, leader, span).await
}

/// Points the load balancer at `leader`; fills in `record`.
async fn retarget(
    record: &mut RecoveryRecord,
    control: &Control,
    leader: u32,
    span: &tracing::Span,
) -> &'static str {
    if let Err(err) = control.retarget(leader).await {
        let error = format!("retarget to node {leader}: {err:#}");
        tracing::warn!(parent: span, error, "retargeting failed");
        record.error = Some(error);
        return "failed";
    }
    record.retargeted = Some(now());
    if record.elected_by == "none" {
        record.elected_by = "cluster";
        record.new_leader = Some(leader);
    }
    tracing::info!(parent: span, leader, "retargeted the load balancer at the leader");
    "retargeted"
}
