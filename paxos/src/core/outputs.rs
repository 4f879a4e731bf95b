//! What a replica hands its driver: `Ready`, read results, errors, metrics and status.

use bytes::Bytes;

use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::{Command, Envelope, Value};
use crate::storage::PersistOp;

/// Why `propose` refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Leader mode and this replica is not the leader; `leader` is the best guess.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Who to forward to, if known.
        leader: Option<NodeId>,
    },
    /// The pending queue is full.
    #[error("too many pending commands")]
    Overloaded,
}

/// A linearizable read point (leader mode): once the application has applied `index`, a read
/// of its state is linearizable for request `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadResult {
    /// Serve the read after applying up to `index`.
    Ready {
        /// The request.
        id: u64,
        /// Apply up to here first.
        index: Slot,
    },
    /// Leadership was lost; retry at the leader.
    Failed {
        /// The request.
        id: u64,
    },
}

/// Samples for the runtime's histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Observation {
    /// Commands in a slot this replica proposed.
    BatchSize(usize),
    /// Ticks from proposing a slot to learning it decided.
    CommitTicks(u64),
    /// This replica started phase 1 for `lane` (an election in leader mode, a takeover or a
    /// reclaim in leaderless mode), and why.
    Campaign {
        /// The lane (0 in leader mode).
        lane: u32,
        /// Why.
        cause: CampaignCause,
    },
    /// This replica stopped leading (or preparing) `lane`, and why.
    StepDown {
        /// The lane (0 in leader mode).
        lane: u32,
        /// Why.
        cause: StepDownCause,
    },
}

/// Why a replica started phase 1 for a lane: what an operator asks first about an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CampaignCause {
    /// The lane's holder sent no heartbeat for `ticks` ticks (more than the election timeout).
    HolderSilent {
        /// The replica believed to hold the lane.
        holder: NodeId,
        /// Ticks since its last heartbeat.
        ticks: u64,
    },
    /// This replica held the lane before (it stepped down, or restarted) and takes it back.
    Reclaim,
    /// Asked to (`POST /elect`, the prober's or an operator's call).
    Requested,
}

/// Why a replica stopped leading a lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepDownCause {
    /// A higher ballot was seen: another replica won the lane.
    HigherBallot,
    /// Check-quorum (leader mode): no majority's heartbeats for `ticks` ticks.
    NoMajorityHeard {
        /// The check-quorum window: two election timeouts.
        ticks: u64,
    },
    /// Another value was chosen in a slot it proposed (a higher ballot decided it).
    Overtaken,
    /// A catch-up moved the log past the slots it was proposing in.
    CaughtUp,
}

/// Counters for the runtime's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Commands accepted by `propose`.
    pub commands_proposed: u64,
    /// Slots this replica proposed (phase 2 instances it led, no-ops included).
    pub slots_proposed: u64,
    /// No-op slots among them (skips and recovery).
    pub noops_proposed: u64,
    /// Phase 1 rounds started.
    pub phase1_rounds: u64,
    /// Phase 2 (accept) messages sent.
    pub phase2_messages: u64,
    /// Elections (or lane takeovers) started.
    pub elections_started: u64,
    /// Elections won.
    pub elections_won: u64,
    /// Times the believed leader of a lane changed.
    pub leader_changes: u64,
    /// Slots learned decided.
    pub slots_decided: u64,
    /// Messages emitted.
    pub messages_sent: u64,
    /// Messages handled.
    pub messages_received: u64,
}

/// Everything the driver must act on, in the order of the crate-level driver contract.
#[derive(Clone, Debug, Default, Hash)]
pub struct Ready {
    /// 0. May be sent before `persist` is synced (accepts of a proposer whose ballot is already
    ///    durable; see the crate's driver contract); sending them at once lets the followers'
    ///    syncs overlap this replica's.
    pub early: Vec<Envelope>,
    /// 1. Write atomically and sync before sending anything else.
    pub persist: Vec<PersistOp>,
    /// 2. Then send.
    pub messages: Vec<Envelope>,
    /// 3. Install into the application (it replaces every slot up to its slot).
    pub snapshot: Option<(Slot, Bytes)>,
    /// 4. Apply in order.
    pub decided: Vec<(Slot, Value)>,
    /// Commands that will not be decided through this replica: retry them (at the leader).
    pub dropped: Vec<Command>,
    /// Commands whose fate this replica lost track of (a snapshot replaced its log).
    pub outcome_unknown: Vec<Command>,
    /// Read points.
    pub reads: Vec<ReadResult>,
    /// The log holds more than `max_retained_log` decided entries: call `compact` with a
    /// snapshot of the application at or below this slot.
    pub snapshot_wanted: Option<Slot>,
    /// Histogram samples.
    pub observations: Vec<Observation>,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.early.is_empty()
            && self.messages.is_empty()
            && self.snapshot.is_none()
            && self.decided.is_empty()
            && self.dropped.is_empty()
            && self.outcome_unknown.is_empty()
            && self.reads.is_empty()
            && self.snapshot_wanted.is_none()
            && self.observations.is_empty()
    }
}

/// A replica's view for status endpoints and tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// This replica.
    pub id: NodeId,
    /// Leader mode: the believed leader. Leaderless: none.
    pub leader: Option<NodeId>,
    /// Leader mode: whether this replica is the leader.
    pub is_leader: bool,
    /// Lanes this replica leads.
    pub leading: Vec<u32>,
    /// Highest promised ballot over all lanes.
    pub ballot: Ballot,
    /// Contiguous decided index.
    pub decided: Slot,
    /// Highest slot seen proposed.
    pub frontier: Slot,
    /// Last slot covered by the snapshot.
    pub compacted: Slot,
    /// Commands waiting for a slot.
    pub pending: usize,
    /// This replica's incarnation: 0, plus one for each time it lost its storage and rejoined
    /// (more when a recovery attempt had to start over).
    pub incarnation: u64,
}
