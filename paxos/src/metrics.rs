//! Every metric the paxos process exports: its name, kind, unit and HELP text, in one table
//! ([`METRICS`]). [`describe`] gives Prometheus the HELP texts; [`register`] creates every series
//! at zero at start-up, so a dashboard or an alert never sees a missing series where there were
//! simply no events yet (an election that never happened is `0`, not "no data").

use metrics::Unit;
use telemetry::catalog::{Metric, counter, describe_all, gauge, histogram, register_all};

use crate::messages::{Envelope, Message};

/// `paxos_commands_proposed_total`.
pub const COMMANDS_PROPOSED: &str = "paxos_commands_proposed_total";
/// `paxos_proposals_total{via}`.
pub const PROPOSALS: &str = "paxos_proposals_total";
/// How a node's proposals reach the process: the propose stream or `POST /local/propose`.
pub const PROPOSAL_TRANSPORTS: [&str; 2] = ["stream", "http"];
/// `paxos_slots_proposed_total`.
pub const SLOTS_PROPOSED: &str = "paxos_slots_proposed_total";
/// `paxos_noops_proposed_total`.
pub const NOOPS_PROPOSED: &str = "paxos_noops_proposed_total";
/// `paxos_phase1_rounds_total`.
pub const PHASE1_ROUNDS: &str = "paxos_phase1_rounds_total";
/// `paxos_phase2_messages_total`.
pub const PHASE2_MESSAGES: &str = "paxos_phase2_messages_total";
/// `paxos_elections_started_total`.
pub const ELECTIONS_STARTED: &str = "paxos_elections_started_total";
/// `paxos_elections_won_total`.
pub const ELECTIONS_WON: &str = "paxos_elections_won_total";
/// `paxos_leader_changes_total`.
pub const LEADER_CHANGES: &str = "paxos_leader_changes_total";
/// `paxos_slots_decided_total`.
pub const SLOTS_DECIDED: &str = "paxos_slots_decided_total";
/// `paxos_messages_total{direction,type}`.
pub const MESSAGES: &str = "paxos_messages_total";
/// `paxos_messages_dropped_total{reason}`.
pub const MESSAGES_DROPPED: &str = "paxos_messages_dropped_total";
/// `paxos_snapshots_received_total`.
pub const SNAPSHOTS_RECEIVED: &str = "paxos_snapshots_received_total";
/// `paxos_snapshot_bytes_sent_total`.
pub const SNAPSHOT_BYTES_SENT: &str = "paxos_snapshot_bytes_sent_total";
/// `paxos_snapshot_transfers_total{outcome}`.
pub const SNAPSHOT_TRANSFERS: &str = "paxos_snapshot_transfers_total";
/// `paxos_decided_index`.
pub const DECIDED_INDEX: &str = "paxos_decided_index";
/// `paxos_frontier_slot`.
pub const FRONTIER_SLOT: &str = "paxos_frontier_slot";
/// `paxos_compacted_index`.
pub const COMPACTED_INDEX: &str = "paxos_compacted_index";
/// `paxos_ballot_round`.
pub const BALLOT_ROUND: &str = "paxos_ballot_round";
/// `paxos_pending_commands`.
pub const PENDING_COMMANDS: &str = "paxos_pending_commands";
/// `paxos_is_leader`.
pub const IS_LEADER: &str = "paxos_is_leader";
/// `paxos_lanes_led`.
pub const LANES_LED: &str = "paxos_lanes_led";
/// `paxos_leader_id`.
pub const LEADER_ID: &str = "paxos_leader_id";
/// `paxos_recovering`.
pub const RECOVERING: &str = "paxos_recovering";
/// `paxos_batch_size`.
pub const BATCH_SIZE: &str = "paxos_batch_size";
/// `paxos_commit_latency_seconds`.
pub const COMMIT_LATENCY: &str = "paxos_commit_latency_seconds";
/// `paxos_phase1_duration_seconds`.
pub const PHASE1_DURATION: &str = "paxos_phase1_duration_seconds";
/// `paxos_slot_commit_ticks`.
pub const SLOT_COMMIT_TICKS: &str = "paxos_slot_commit_ticks";
/// `paxos_persist_duration_seconds`.
pub const PERSIST_DURATION: &str = "paxos_persist_duration_seconds";
/// `paxos_peer_rpc_duration_seconds`.
pub const PEER_RPC_DURATION: &str = "paxos_peer_rpc_duration_seconds";

/// Why a message was dropped: the values of `paxos_messages_dropped_total{reason}`.
pub const DROP_REASONS: [&str; 5] = [
    "inbound_full",
    "outbound_full",
    "outbound_bytes_full",
    "too_large",
    "peer_unreachable",
];

/// How a snapshot transfer to a peer ended: the values of
/// `paxos_snapshot_transfers_total{outcome}`.
pub const TRANSFER_OUTCOMES: [&str; 2] = ["sent", "given_up"];

/// `paxos_leadership_handoffs_total{outcome}`.
pub const HAND_OFFS: &str = "paxos_leadership_handoffs_total";
/// Its `outcome` label: a follower took over, or it did not in time.
pub const HAND_OFF_OUTCOMES: [&str; 2] = ["handed_off", "timed_out"];

/// Every metric of the paxos process.
pub const METRICS: &[Metric] = &[
    counter(COMMANDS_PROPOSED, "Client commands accepted by propose"),
    counter(
        SLOTS_PROPOSED,
        "Slots this replica proposed (phase 2 instances it led), no-ops included",
    ),
    counter(NOOPS_PROPOSED, "No-op slots proposed (skips and recovery)"),
    counter(
        PROPOSALS,
        "Batches of commands a node proposed, by how they came (via: stream, http)",
    ),
    counter(
        PHASE1_ROUNDS,
        "Phase 1 rounds started (elections, lane takeovers)",
    ),
    counter(PHASE2_MESSAGES, "Phase 2 (accept) messages sent"),
    counter(ELECTIONS_STARTED, "Elections or lane takeovers started"),
    counter(ELECTIONS_WON, "Elections or lane takeovers won"),
    counter(
        LEADER_CHANGES,
        "Times the believed holder of a lane changed",
    ),
    counter(SLOTS_DECIDED, "Slots learned decided"),
    counter(MESSAGES, "Protocol messages by direction and type"),
    counter(
        MESSAGES_DROPPED,
        "Messages dropped, by reason (full queues, unreachable peers)",
    ),
    counter(
        SNAPSHOTS_RECEIVED,
        "Snapshots received from a peer and installed",
    ),
    counter(SNAPSHOT_BYTES_SENT, "Snapshot bytes sent to lagging peers"),
    counter(
        HAND_OFFS,
        "Leaders asked to stop that handed their lead to a follower first, by outcome (handed_off, timed_out)",
    ),
    counter(
        SNAPSHOT_TRANSFERS,
        "Snapshot transfers to a peer, by outcome (sent, given_up)",
    ),
    gauge(DECIDED_INDEX, "Contiguous decided index"),
    gauge(FRONTIER_SLOT, "Highest slot seen proposed"),
    gauge(COMPACTED_INDEX, "Last slot covered by the snapshot"),
    gauge(BALLOT_ROUND, "Round of the highest promised ballot"),
    gauge(PENDING_COMMANDS, "Commands waiting for a slot"),
    gauge(IS_LEADER, "1 if this replica leads (leader mode)"),
    gauge(LANES_LED, "Lanes this replica leads"),
    gauge(LEADER_ID, "Believed leader (leader mode; -1: none)"),
    gauge(RECOVERING, "1 while a rejoining replica recovers its state"),
    histogram(BATCH_SIZE, None, "Commands per slot this replica proposed"),
    histogram(
        COMMIT_LATENCY,
        Some(Unit::Seconds),
        "Wall-clock time from a node's propose call to every command of it decided (the Paxos round, phase 2)",
    ),
    histogram(
        PHASE1_DURATION,
        Some(Unit::Seconds),
        "Wall-clock time from starting an election (phase 1) to winning it",
    ),
    histogram(
        SLOT_COMMIT_TICKS,
        None,
        "Ticks from proposing a slot to learning it decided, as the core counts them",
    ),
    histogram(
        PERSIST_DURATION,
        Some(Unit::Seconds),
        "Write and fsync of one burst of acceptor state",
    ),
    histogram(
        PEER_RPC_DURATION,
        Some(Unit::Seconds),
        "Writing one frame of messages to a peer's stream (a slow peer fills its socket and makes this grow)",
    ),
];

/// HELP texts of every metric the paxos process exports.
pub fn describe() {
    describe_all(METRICS);
}

/// Every series of the paxos process at zero, labelled ones with each of their known labels.
pub fn register() {
    let labelled = [
        MESSAGES,
        MESSAGES_DROPPED,
        SNAPSHOT_TRANSFERS,
        HAND_OFFS,
        PROPOSALS,
    ];
    let plain: Vec<Metric> = (METRICS.iter())
        .filter(|m| !labelled.contains(&m.name))
        .copied()
        .collect();
    register_all(&plain);
    for direction in ["received", "sent"] {
        for kind in Message::KINDS {
            metrics::counter!(MESSAGES, "direction" => direction, "type" => kind).increment(0);
        }
    }
    for reason in DROP_REASONS {
        metrics::counter!(MESSAGES_DROPPED, "reason" => reason).increment(0);
    }
    for outcome in TRANSFER_OUTCOMES {
        metrics::counter!(SNAPSHOT_TRANSFERS, "outcome" => outcome).increment(0);
    }
    for via in PROPOSAL_TRANSPORTS {
        metrics::counter!(PROPOSALS, "via" => via).increment(0);
    }
    for outcome in HAND_OFF_OUTCOMES {
        metrics::counter!(HAND_OFFS, "outcome" => outcome).increment(0);
    }
}

/// The driver's series, looked up once: the driver exports after every step (about one per
/// operation under load), and a lookup by name hashes the key and takes the registry's lock,
/// 18 of them a step (6% of a leader's paxos CPU in a profile at 64 clients). A handle is bound
/// to the recorder installed when it was made: make this after `telemetry::install_prometheus`.
pub(crate) struct DriverMetrics {
    pub commands_proposed: metrics::Counter,
    pub slots_proposed: metrics::Counter,
    pub noops_proposed: metrics::Counter,
    pub phase1_rounds: metrics::Counter,
    pub phase2_messages: metrics::Counter,
    pub elections_started: metrics::Counter,
    pub elections_won: metrics::Counter,
    pub leader_changes: metrics::Counter,
    pub slots_decided: metrics::Counter,
    pub decided_index: metrics::Gauge,
    pub frontier_slot: metrics::Gauge,
    pub compacted_index: metrics::Gauge,
    pub ballot_round: metrics::Gauge,
    pub pending_commands: metrics::Gauge,
    pub is_leader: metrics::Gauge,
    pub lanes_led: metrics::Gauge,
    pub leader_id: metrics::Gauge,
    pub recovering: metrics::Gauge,
    pub batch_size: metrics::Histogram,
    pub commit_latency: metrics::Histogram,
    pub phase1_duration: metrics::Histogram,
    pub slot_commit_ticks: metrics::Histogram,
    pub persist_duration: metrics::Histogram,
}

impl DriverMetrics {
    /// Handles on the recorder installed now (no-ops without one).
    pub fn new() -> DriverMetrics {
        DriverMetrics {
            commands_proposed: metrics::counter!(COMMANDS_PROPOSED),
            slots_proposed: metrics::counter!(SLOTS_PROPOSED),
            noops_proposed: metrics::counter!(NOOPS_PROPOSED),
            phase1_rounds: metrics::counter!(PHASE1_ROUNDS),
            phase2_messages: metrics::counter!(PHASE2_MESSAGES),
            elections_started: metrics::counter!(ELECTIONS_STARTED),
            elections_won: metrics::counter!(ELECTIONS_WON),
            leader_changes: metrics::counter!(LEADER_CHANGES),
            slots_decided: metrics::counter!(SLOTS_DECIDED),
            decided_index: metrics::gauge!(DECIDED_INDEX),
            frontier_slot: metrics::gauge!(FRONTIER_SLOT),
            compacted_index: metrics::gauge!(COMPACTED_INDEX),
            ballot_round: metrics::gauge!(BALLOT_ROUND),
            pending_commands: metrics::gauge!(PENDING_COMMANDS),
            is_leader: metrics::gauge!(IS_LEADER),
            lanes_led: metrics::gauge!(LANES_LED),
            leader_id: metrics::gauge!(LEADER_ID),
            recovering: metrics::gauge!(RECOVERING),
            batch_size: metrics::histogram!(BATCH_SIZE),
            commit_latency: metrics::histogram!(COMMIT_LATENCY),
            phase1_duration: metrics::histogram!(PHASE1_DURATION),
            slot_commit_ticks: metrics::histogram!(SLOT_COMMIT_TICKS),
            persist_duration: metrics::histogram!(PERSIST_DURATION),
        }
    }
}

/// Counts a leader's hand-off on stopping.
pub(crate) fn hand_off(outcome: &'static str) {
    metrics::counter!(HAND_OFFS, "outcome" => outcome).increment(1);
}

/// The messages counter by direction and type, looked up once: the driver counts every message
/// it sends and receives, and a lookup by labels per message (hashing the key under the
/// registry's lock) was about 2% of a leaderless paxos process's CPU in a profile at 64 clients.
/// Bound to the recorder installed when made, like [`DriverMetrics`].
pub(crate) struct MessageCounters {
    sent: [metrics::Counter; Message::KINDS.len()],
    received: [metrics::Counter; Message::KINDS.len()],
}

impl MessageCounters {
    /// Handles on the recorder installed now (no-ops without one).
    pub fn new() -> MessageCounters {
        let of = |direction: &'static str| {
            Message::KINDS
                .map(|kind| metrics::counter!(MESSAGES, "direction" => direction, "type" => kind))
        };
        MessageCounters {
            sent: of("sent"),
            received: of("received"),
        }
    }

    /// Counts one message sent.
    pub fn sent(&self, envelope: &Envelope) {
        self.sent[envelope.msg.kind_index()].increment(1);
    }

    /// Counts one message received.
    pub fn received(&self, envelope: &Envelope) {
        self.received[envelope.msg.kind_index()].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_kind_has_its_own_label() {
        let mut kinds = Message::KINDS.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), Message::KINDS.len(), "labels are distinct");
        assert_eq!(Message::RecoveryQuery.kind(), "recovery_query");
        assert_eq!(
            Message::KINDS[Message::RecoveryQuery.kind_index()],
            "recovery_query"
        );
    }

    #[tokio::test]
    async fn messages_are_counted_by_direction_and_type() {
        telemetry::install_prometheus();
        if !telemetry::recorder_installed() {
            eprintln!("metrics are off (BANK_METRICS=off): nothing to count");
            return;
        }
        let value = |direction: &str| -> u64 {
            let series =
                format!("{MESSAGES}{{direction=\"{direction}\",type=\"recovery_query\"}} ");
            let text = telemetry::render();
            text.lines()
                .find_map(|line| line.strip_prefix(&series))
                .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
                .parse()
                .expect("a count")
        };
        let counters = MessageCounters::new();
        let query = Envelope {
            from: 0,
            to: 1,
            msg: Message::RecoveryQuery,
            incarnations: Vec::new(),
        };
        counters.sent(&query);
        let (sent, received) = (value("sent"), value("received"));
        counters.sent(&query);
        counters.sent(&query);
        counters.received(&query);
        assert_eq!(value("sent"), sent + 2);
        assert_eq!(value("received"), received + 1);
    }
}
