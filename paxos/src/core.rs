//! The sans-IO replica: acceptor, proposer and learner of every lane, in one synchronous struct.
//!
//! See the crate docs for the driver contract and the two modes. Section numbers in comments
//! refer to "Paxos Made Simple" (PMS) and the Mencius paper (M).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::{
    Accept, Accepted, CatchUp, CatchUpReply, Command, Decide, Envelope, Heartbeat, HeartbeatAck,
    LaneClaim, Message, Nack, NackReason, Prepare, Promise, PromiseEntry, RecoveryReply, Value,
};
use crate::storage::{PersistOp, PersistentState};

/// Leader or leaderless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One elected leader proposes every command.
    Leader,
    /// Every replica proposes in its own lane (Mencius).
    Leaderless,
}

/// Static configuration of one replica. Every limit is here.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica, `0..nodes`.
    pub id: NodeId,
    /// Cluster size N.
    pub nodes: u32,
    /// Leader or leaderless.
    pub mode: Mode,
    /// Ticks between heartbeats.
    pub heartbeat_ticks: u64,
    /// Ticks of silence before a leader (or a lane's holder) is presumed dead; the actual
    /// timeout is randomized in `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: u64,
    /// Ticks before unacknowledged accepts and prepares are sent again.
    pub resend_ticks: u64,
    /// Most undecided slots a lane's leader has in flight (the pipeline window).
    pub window: usize,
    /// Most commands in one slot.
    pub max_batch_commands: usize,
    /// Most command bytes in one slot.
    pub max_batch_bytes: usize,
    /// Most commands waiting for a slot; `propose` refuses beyond it.
    pub max_pending_commands: usize,
    /// Most entries in one promise or catch-up reply.
    pub max_entries_per_message: usize,
    /// Decided entries kept before the core asks the application for a snapshot.
    pub max_retained_log: u64,
    /// Seed of the replica's only source of randomness (election jitter).
    pub seed: u64,
    /// This replica lost its durable state and rejoins an existing cluster: with empty storage it
    /// does not vote until it has learned, from a majority of the others, every ballot it may
    /// have promised and every slot it may have accepted (see [`Replica`]). Never set it for the
    /// first start of a new cluster.
    pub rejoin: bool,
}

impl Config {
    /// Defaults for replica `id` of `nodes` in `mode`.
    pub fn new(id: NodeId, nodes: u32, mode: Mode) -> Config {
        Config {
            id,
            nodes,
            mode,
            heartbeat_ticks: 2,
            election_ticks: 10,
            resend_ticks: 4,
            window: 64,
            max_batch_commands: 4_096,
            max_batch_bytes: 1 << 20,
            max_pending_commands: 65_536,
            max_entries_per_message: 1_024,
            max_retained_log: 100_000,
            seed: u64::from(id),
            rejoin: false,
        }
    }

    /// Checks ranges; the message names the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, String); 8] = [
            (
                (1..=64).contains(&self.nodes),
                format!("nodes must be 1..=64, got {}", self.nodes),
            ),
            (
                self.id < self.nodes,
                format!("id must be below nodes ({}), got {}", self.nodes, self.id),
            ),
            (
                self.heartbeat_ticks >= 1,
                format!("heartbeat_ticks must be >= 1, got {}", self.heartbeat_ticks),
            ),
            (
                self.election_ticks > self.heartbeat_ticks,
                format!(
                    "election_ticks ({}) must exceed heartbeat_ticks ({})",
                    self.election_ticks, self.heartbeat_ticks
                ),
            ),
            (
                self.resend_ticks >= 1,
                format!("resend_ticks must be >= 1, got {}", self.resend_ticks),
            ),
            (
                self.window >= 1,
                format!("window must be >= 1, got {}", self.window),
            ),
            (
                self.max_batch_commands >= 1 && self.max_batch_bytes >= 1,
                "max_batch_commands and max_batch_bytes must be >= 1".to_owned(),
            ),
            (
                self.max_entries_per_message >= 1 && self.max_retained_log >= 1,
                "max_entries_per_message and max_retained_log must be >= 1".to_owned(),
            ),
        ];
        checks
            .into_iter()
            .find(|(ok, _)| !ok)
            .map_or(Ok(()), |(_, msg)| Err(msg))
    }

    fn lanes(&self) -> u32 {
        match self.mode {
            Mode::Leader => 1,
            Mode::Leaderless => self.nodes,
        }
    }

    fn majority(&self) -> usize {
        self.nodes as usize / 2 + 1
    }
}

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
    /// 1. Write atomically and sync before sending anything.
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

#[derive(Clone, Debug, Hash)]
struct Entry {
    ballot: Ballot,
    value: Value,
    decided: bool,
}

#[derive(Clone, Debug, Hash)]
struct Inflight {
    value: Value,
    acks: u64,
    sent_at: u64,
}

#[derive(Clone, Debug, Hash)]
enum Role {
    Follower,
    Preparing {
        ballot: Ballot,
        from_slot: Slot,
        promises: BTreeMap<NodeId, Vec<PromiseEntry>>,
        started: u64,
        sent_at: u64,
    },
    Leading {
        ballot: Ballot,
        next_slot: Slot,
        inflight: BTreeMap<Slot, Inflight>,
    },
}

#[derive(Clone, Debug, Hash)]
struct Lane {
    role: Role,
    /// Highest ballot seen in the lane; its node is the believed holder.
    highest_seen: Ballot,
    /// Start phase 1 (election, takeover, reclaim) at or after this tick.
    deadline: u64,
    /// Highest slot of the lane's decided prefix known here (0: none).
    decided_prefix: Slot,
}

/// SplitMix64: the core's only randomness, seeded from the config (the simulator uses it too).
#[derive(Clone, Debug, Hash)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// A rejoining replica's progress (see [`Config::rejoin`]).
#[derive(Clone, Debug, Default, Hash)]
struct Recovery {
    replies: BTreeMap<NodeId, RecoveryReply>,
    /// Decided index to reach before voting: every slot it may have accepted before.
    target: Option<Slot>,
    /// Highest promise any responder holds, per lane.
    max_promised: Vec<Ballot>,
    /// Writes held back until recovery completes, so a crash during recovery leaves the storage
    /// empty and recovery simply starts over.
    deferred: Vec<PersistOp>,
    last_query: u64,
}

#[derive(Clone, Debug, Hash)]
struct PendingRead {
    id: u64,
    seq: u64,
    index: Slot,
}

/// One Paxos replica. See the crate docs for how to drive it.
#[derive(Clone, Debug)]
pub struct Replica {
    cfg: Config,
    lanes_n: u32,
    rng: Rng,
    tick: u64,
    promised: Vec<Ballot>,
    log: BTreeMap<Slot, Entry>,
    snapshot: Option<(Slot, Bytes)>,
    compacted: Slot,
    decided_index: Slot,
    lanes: Vec<Lane>,
    frontier: Slot,
    pending: VecDeque<Command>,
    my_proposals: BTreeMap<Slot, (Value, u64)>,
    /// Tick of the last heartbeat from each replica.
    last_heard: Vec<u64>,
    next_heartbeat: u64,
    catchup_after: u64,
    read_seq: u64,
    read_acks: Vec<u64>,
    reads: Vec<PendingRead>,
    ready: Ready,
    metrics: Metrics,
    recovery: Option<Recovery>,
    /// The crash vector: the highest incarnation known of every replica, this one included
    /// (while recovering: the incarnation it is trying to establish).
    incarnations: Vec<u64>,
    /// No-op skips are proposed on ticks only, so commands that arrive meanwhile take the slots
    /// instead, and one accept carries every skip of a tick (Mencius piggybacks skips too).
    fill_noops: bool,
}

impl Replica {
    /// A replica restored from its durable state (`PersistentState::default()` when new).
    /// Panics on an invalid config (validate it first).
    pub fn new(cfg: Config, state: PersistentState) -> Replica {
        cfg.validate().expect("invalid paxos config");
        let lanes_n = cfg.lanes();
        let state_was_empty = state.is_empty();
        let mut incarnations = vec![0; cfg.nodes as usize];
        for (node, incarnation) in &state.incarnations {
            if let Some(known) = incarnations.get_mut(*node as usize) {
                *known = *incarnation;
            }
        }
        let mut rng = Rng(cfg.seed ^ 0x5DEE_CE66_D1CE_4E5B ^ u64::from(cfg.id).rotate_left(32));
        let promised: Vec<Ballot> = (0..lanes_n)
            .map(|lane| {
                state
                    .promised
                    .get(&lane)
                    .copied()
                    .unwrap_or_else(|| default_ballot(&cfg, lane))
            })
            .collect();
        let (compacted, snapshot) = match state.snapshot {
            Some((slot, data)) => (slot, Some((slot, data))),
            None => (0, None),
        };
        let log: BTreeMap<Slot, Entry> = state
            .log
            .into_iter()
            .filter(|(slot, _)| *slot > compacted)
            .map(|(slot, e)| {
                (
                    slot,
                    Entry {
                        ballot: e.ballot,
                        value: e.value,
                        decided: e.decided,
                    },
                )
            })
            .collect();
        let frontier = log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(compacted)
            .max(compacted);
        let lanes = (0..lanes_n)
            .map(|lane| Lane {
                role: Role::Follower,
                highest_seen: promised[lane as usize],
                deadline: cfg.election_ticks + rng.below(cfg.election_ticks),
                decided_prefix: 0,
            })
            .collect();
        let mut replica = Replica {
            lanes_n,
            rng,
            tick: 0,
            promised,
            log,
            snapshot,
            compacted,
            decided_index: compacted,
            lanes,
            frontier,
            pending: VecDeque::new(),
            my_proposals: BTreeMap::new(),
            last_heard: vec![0; cfg.nodes as usize],
            next_heartbeat: 0,
            catchup_after: 0,
            read_seq: 0,
            read_acks: vec![0; cfg.nodes as usize],
            reads: Vec::new(),
            ready: Ready::default(),
            metrics: Metrics::default(),
            recovery: None,
            incarnations,
            fill_noops: false,
            cfg,
        };
        if let Some((slot, data)) = &replica.snapshot {
            replica.ready.snapshot = Some((*slot, data.clone()));
        }
        // Only a replica that has never persisted anything starts as a leader: the default owner
        // of a lane holds ballot (0, owner), which every acceptor has implicitly promised, so it
        // leads without phase 1. After any restart it wins its lane back with phase 1 at a new
        // ballot instead, so a ballot is never used across two lives (its earlier life may have
        // proposed values at (0, owner) that were not chosen).
        let fresh = state_was_empty && !replica.cfg.rejoin;
        if state_was_empty && replica.cfg.rejoin {
            replica.recovery = Some(Recovery::default());
            replica.restart_recovery(0);
        }
        for lane in 0..lanes_n {
            replica.refresh_lane_prefix(lane);
            let default = default_ballot(&replica.cfg, lane);
            if fresh && default.node == replica.cfg.id {
                replica.lanes[lane as usize].role = Role::Leading {
                    ballot: default,
                    next_slot: u64::from(lane) + 1,
                    inflight: BTreeMap::new(),
                };
            } else if replica.cfg.mode == Mode::Leaderless && default.node == replica.cfg.id {
                // Reclaim quickly rather than after a full election timeout.
                replica.lanes[lane as usize].deadline =
                    1 + replica.rng.below(replica.cfg.heartbeat_ticks + 1);
            }
        }
        replica.advance_decided();
        replica
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Status for operators and tests.
    pub fn status(&self) -> Status {
        let leading: Vec<u32> = (0..self.lanes_n)
            .filter(|&l| matches!(self.lanes[l as usize].role, Role::Leading { .. }))
            .collect();
        let (leader, is_leader) = match self.cfg.mode {
            Mode::Leader => (Some(self.lanes[0].highest_seen.node), !leading.is_empty()),
            Mode::Leaderless => (None, false),
        };
        Status {
            id: self.cfg.id,
            leader,
            is_leader,
            leading,
            ballot: self.promised.iter().copied().max().unwrap_or_default(),
            decided: self.decided_index,
            frontier: self.frontier,
            compacted: self.compacted,
            pending: self.pending.len(),
            incarnation: self.incarnations[self.cfg.id as usize],
        }
    }

    /// A one-line description of every lane's role, for failure reports.
    pub fn describe_lanes(&self) -> String {
        self.lanes
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let role = match &l.role {
                    Role::Follower => "follower".to_owned(),
                    Role::Preparing {
                        ballot, promises, ..
                    } => {
                        format!("preparing {ballot} ({} promises)", promises.len())
                    }
                    Role::Leading {
                        ballot,
                        next_slot,
                        inflight,
                    } => {
                        format!(
                            "leading {ballot} next {next_slot} inflight {}",
                            inflight.len()
                        )
                    }
                };
                format!(
                    "lane {i}: {role}, promised {}, seen {}, deadline {}, prefix {}",
                    self.promised[i], l.highest_seen, l.deadline, l.decided_prefix
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
            + &format!("; tick {}", self.tick)
    }

    /// The latest snapshot and the slot it covers.
    pub fn snapshot(&self) -> Option<(Slot, Bytes)> {
        self.snapshot.clone()
    }

    /// Promised ballot in `lane` (for invariant checks).
    pub fn promised(&self, lane: u32) -> Ballot {
        self.promised[lane as usize]
    }

    /// Decided entries from `from` on, at most `max` (for a runtime that streams the log to its
    /// application). Stops at the first slot not held (compacted or undecided).
    pub fn decided_entries(&self, from: Slot, max: usize) -> Vec<(Slot, Value)> {
        let mut out = Vec::new();
        let mut slot = from.max(self.compacted + 1);
        while slot <= self.decided_index && out.len() < max {
            match self.log.get(&slot) {
                Some(e) if e.decided => out.push((slot, e.value.clone())),
                _ => break,
            }
            slot += 1;
        }
        out
    }

    /// Drains the outputs. See the driver contract.
    pub fn take_ready(&mut self) -> Ready {
        self.start_read_round();
        self.metrics.messages_sent += self.ready.messages.len() as u64;
        if let Some(recovery) = &mut self.recovery {
            recovery.deferred.append(&mut self.ready.persist);
        }
        std::mem::take(&mut self.ready)
    }

    /// A hash of everything that decides the replica's future behaviour (its metrics left
    /// out), so a model checker can tell two states apart after different histories.
    pub fn state_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let Replica {
            cfg: _,
            lanes_n: _,
            rng,
            tick,
            promised,
            log,
            snapshot,
            compacted,
            decided_index,
            lanes,
            frontier,
            pending,
            my_proposals,
            last_heard,
            next_heartbeat,
            catchup_after,
            read_seq,
            read_acks,
            reads,
            ready,
            metrics: _,
            recovery,
            incarnations,
            fill_noops,
        } = self;
        (
            rng.0,
            tick,
            promised,
            log,
            snapshot,
            compacted,
            decided_index,
        )
            .hash(&mut h);
        (
            lanes,
            frontier,
            pending,
            my_proposals,
            last_heard,
            next_heartbeat,
        )
            .hash(&mut h);
        (catchup_after, read_seq, read_acks, reads, ready, recovery).hash(&mut h);
        (incarnations, fill_noops).hash(&mut h);
        h.finish()
    }

    /// True while a rejoining replica is still recovering (it does not vote yet).
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    // ----- inputs -----

    /// Queues client commands. Leader mode: only the leader accepts them.
    pub fn propose(&mut self, commands: Vec<Command>) -> Result<(), ProposeError> {
        if self.recovery.is_some() {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if self.cfg.mode == Mode::Leader && !self.is_leading(0) {
            return Err(ProposeError::NotLeader {
                leader: self.leader_hint(),
            });
        }
        if self.pending.len() + commands.len() > self.cfg.max_pending_commands {
            return Err(ProposeError::Overloaded);
        }
        self.metrics.commands_proposed += commands.len() as u64;
        self.pending.extend(commands);
        self.flush();
        Ok(())
    }

    /// Leader mode: start an election now (the prober's "elect" call).
    pub fn start_election(&mut self) {
        if self.recovery.is_some() {
            return;
        }
        if !self.is_leading(0) {
            self.start_prepare(0);
            self.flush();
        }
    }

    /// Leader mode: ask for a linearizable read point for request `id`. Answered in
    /// `Ready::reads` once a majority confirmed this replica still leads.
    pub fn read_index(&mut self, id: u64) -> Result<(), ProposeError> {
        if self.recovery.is_some() {
            return Err(ProposeError::NotLeader { leader: None });
        }
        if self.cfg.mode != Mode::Leader {
            return Err(ProposeError::NotLeader { leader: None });
        }
        let Role::Leading { next_slot, .. } = &self.lanes[0].role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader_hint(),
            });
        };
        // Everything chosen before now is at or below the last slot this leader proposed: its
        // phase 1 re-proposed every value an earlier ballot could have chosen.
        let index = next_slot.saturating_sub(1).max(self.decided_index);
        if self.reads.len() >= self.cfg.max_pending_commands {
            return Err(ProposeError::Overloaded);
        }
        // The confirmation round starts at the next `take_ready`, so every read that arrives in
        // one burst shares one round of heartbeats.
        self.reads.push(PendingRead { id, seq: 0, index });
        Ok(())
    }

    /// Starts one confirmation round for every read still waiting for one.
    fn start_read_round(&mut self) {
        if !self.reads.iter().any(|r| r.seq == 0) || !self.is_leading(0) {
            return;
        }
        self.read_seq += 1;
        let seq = self.read_seq;
        for read in self.reads.iter_mut().filter(|r| r.seq == 0) {
            read.seq = seq;
        }
        self.read_acks[self.cfg.id as usize] = seq;
        self.broadcast_heartbeat(seq);
        self.complete_reads();
    }

    /// Replaces every slot up to `slot` (which the application has applied) by `data`, a
    /// snapshot of the application; the log stays bounded.
    pub fn compact(&mut self, slot: Slot, data: Bytes) {
        if slot <= self.compacted || slot > self.decided_index {
            return;
        }
        self.log = self.log.split_off(&(slot + 1));
        self.compacted = slot;
        self.snapshot = Some((slot, data.clone()));
        self.ready.persist.push(PersistOp::Snapshot { slot, data });
    }

    /// One unit of time.
    pub fn tick(&mut self) {
        self.tick += 1;
        if self.recovery.is_some() {
            self.tick_recovery();
            return;
        }
        if self.tick >= self.next_heartbeat {
            self.broadcast_heartbeat(0);
            self.next_heartbeat = self.tick + self.cfg.heartbeat_ticks;
        }
        for lane in 0..self.lanes_n {
            self.tick_lane(lane);
        }
        self.fill_noops = true;
        self.flush();
        self.fill_noops = false;
    }

    /// One message from a peer.
    pub fn handle(&mut self, envelope: Envelope) {
        if envelope.to != self.cfg.id
            || envelope.from >= self.cfg.nodes
            || envelope.from == self.cfg.id
        {
            return;
        }
        self.metrics.messages_received += 1;
        let from = envelope.from;
        if envelope.msg == Message::RecoveryQuery {
            if self.recovery.is_none() {
                self.on_recovery_query(&envelope);
            }
            return;
        }
        if let Message::RecoveryReply(reply) = &envelope.msg {
            let stale = envelope.incarnation_of(from) < self.incarnations[from as usize];
            if self.recovery.is_some() && !stale {
                self.merge_incarnations(&envelope.incarnations);
                let view = envelope.incarnation_of(self.cfg.id);
                self.on_recovery_reply(from, view, reply.clone());
                self.advance_decided();
                self.check_recovered();
            }
            return;
        }
        if !self.admit(&envelope) {
            return;
        }
        if matches!(envelope.msg, Message::Heartbeat(_)) {
            // Liveness is judged by heartbeats alone: a replica that talks but does not
            // heartbeat (one recovering its state) is not serving its lanes.
            self.last_heard[from as usize] = self.tick;
        }
        if self.recovery.is_some() {
            // Not a voter yet: only learn.
            match envelope.msg {
                Message::Decide(m) => self.on_decide(from, m),
                Message::Heartbeat(m) => self.on_heartbeat(from, m),
                Message::CatchUpReply(m) => self.on_catch_up_reply(m),
                _ => {}
            }
            self.advance_decided();
            self.check_recovered();
            return;
        }
        match envelope.msg {
            Message::RecoveryQuery | Message::RecoveryReply(_) => {}
            Message::Prepare(m) => self.on_prepare(from, m),
            Message::Promise(m) => self.on_promise(from, m),
            Message::Accept(m) => self.on_accept(from, m),
            Message::Accepted(m) => self.on_accepted(from, m),
            Message::Nack(m) => self.on_nack(from, m),
            Message::Decide(m) => self.on_decide(from, m),
            Message::Heartbeat(m) => self.on_heartbeat(from, m),
            Message::HeartbeatAck(m) => self.on_heartbeat_ack(from, m),
            Message::CatchUp(m) => self.on_catch_up(from, m),
            Message::CatchUpReply(m) => self.on_catch_up_reply(m),
        }
        self.flush();
    }

    // ----- crash vectors: votes of a replica's earlier lives are never counted again -----

    /// The crash-vector checks every message but a recovery query passes; false: drop it.
    /// Merges what the sender knows of every replica's incarnation.
    fn admit(&mut self, envelope: &Envelope) -> bool {
        let (me, from) = (self.cfg.id, envelope.from);
        if envelope.incarnation_of(from) < self.incarnations[from as usize] {
            // Sent by an earlier life of the sender, before it lost its storage.
            return false;
        }
        let mine = self.incarnations[me as usize];
        let theirs = envelope.incarnation_of(me);
        if theirs > mine {
            // The sender knows a later life of this replica: an abandoned recovery attempt of
            // ours used that number (start over above it, unless still in the first round,
            // which learns it anyway), or this process is the stale one.
            if self.recovery.is_some() && mine > 0 {
                self.restart_recovery(theirs + 1);
            }
            return false;
        }
        self.merge_incarnations(&envelope.incarnations);
        // Below ours: addressed to an earlier life of this replica (a reply to what it sent).
        // A catch-up reply is still welcome: it carries only decided entries and snapshots,
        // facts whichever life asked (a snapshot may take long to arrive, see `transfer`).
        theirs == mine || matches!(envelope.msg, Message::CatchUpReply(_))
    }

    /// Raises the known incarnation of every other replica to what `vector` says, durably, and
    /// forgets every vote counted from an earlier life of a replica whose entry rose.
    fn merge_incarnations(&mut self, vector: &[u64]) {
        let me = self.cfg.id as usize;
        for (node, &theirs) in vector.iter().enumerate().take(self.cfg.nodes as usize) {
            if node == me || theirs <= self.incarnations[node] {
                continue;
            }
            self.incarnations[node] = theirs;
            self.ready.persist.push(PersistOp::Incarnation {
                node: node as NodeId,
                incarnation: theirs,
            });
            let bit = !(1u64 << node);
            for lane in &mut self.lanes {
                match &mut lane.role {
                    Role::Preparing { promises, .. } => {
                        promises.remove(&(node as NodeId));
                    }
                    Role::Leading { inflight, .. } => {
                        for f in inflight.values_mut() {
                            f.acks &= bit;
                        }
                    }
                    Role::Follower => {}
                }
            }
            self.read_acks[node] = 0;
        }
    }

    /// What every message carries: the crash vector, without trailing zeros.
    fn wire_incarnations(&self) -> Vec<u64> {
        let len = self
            .incarnations
            .iter()
            .rposition(|i| *i > 0)
            .map_or(0, |i| i + 1);
        self.incarnations[..len].to_vec()
    }

    // ----- recovery of a replica that lost its state -----
    //
    // A replica that lost its storage forgot the promises and accepts of its earlier life. Some
    // of them may still count: a vote it sent just before the wipe can reach a proposer later,
    // and votes of other acceptors that went into the same quorum can arrive later still. Waiting
    // for a majority of the others to answer is not enough on its own (review item 1: with
    // N = 5 the pre-wipe vote of r1 and the post-wipe vote of r1 each completed a quorum, for
    // two values of one slot). The protocol is the crash-vector recovery of Michael, Ports,
    // Sharma and Szekeres, "Recovering Shared Objects Without Stable Storage" (DISC 2017):
    //
    // 1. The rejoining replica R first asks every other replica which incarnation of R it
    //    knows, and takes i = 1 + the highest a majority reports: every earlier life that
    //    voted finished its own recovery with a majority knowing it, so i is above them all.
    //    Then R asks again with i in the query. An answering replica first raises (durably) its
    //    known incarnation of R to i, then answers with its promises, decided index and frontier.
    //    (A replica that knows more than i saw an abandoned attempt: R starts over above it.)
    // 2. Every message carries the sender's crash vector. A receiver drops messages from an
    //    earlier incarnation of their sender, drops replies addressed to an earlier incarnation
    //    of itself, and when it learns a newer incarnation of R it forgets every promise, accept
    //    acknowledgement and read acknowledgement it counted from R.
    // 3. R votes only after a majority M of the others answered, and after it promised the
    //    highest ballot they reported and learned every slot decided up to the highest slot they
    //    reported.
    //
    // Why no quorum can count R's old vote against R's new ones: let Q be a quorum counted by a
    // proposer P with R's old vote in it. Every other vote in Q reached P carrying a vector in
    // which R was still old (had one carried i, P would have merged it and dropped or forgotten
    // R's old vote), so each was cast before its sender answered R's query (answering raises R
    // to i first). |M| >= majority and |Q \ {R}| >= majority - 1 among the N - 1 others, so some
    // m in M voted in Q before answering R: R's promise is then at least the ballot Q promised,
    // and R has learned the decided value of every slot Q accepted. R's new votes are those of
    // an acceptor that kept its state. A quorum with R's new votes and a quorum with its old
    // ones therefore behave like two quorums of one acceptor. Ballots carry the incarnation too
    // (`Ballot::incarnation`), so R never reuses a ballot its earlier life proposed with.
    //
    // Read index (review item 2): a recovering replica acknowledges no heartbeat; a recovered
    // one promised at least what M promised, so it never confirms a leader that M deposed.

    /// Starts (or restarts) recovery as `incarnation`.
    fn restart_recovery(&mut self, incarnation: u64) {
        let me = self.cfg.id as usize;
        self.incarnations[me] = incarnation;
        if let Some(recovery) = &mut self.recovery {
            recovery.replies.clear();
            recovery.target = None;
            recovery.max_promised.clear();
            recovery.last_query = self.tick;
        }
        self.broadcast(Message::RecoveryQuery);
        self.check_recovered();
    }

    fn on_recovery_query(&mut self, envelope: &Envelope) {
        let (me, from) = (self.cfg.id, envelope.from);
        if envelope.incarnation_of(me) > self.incarnations[me as usize] {
            return; // the asker knows a later life of this replica: this one is stale
        }
        let known = self.incarnations[from as usize];
        // Raise the asker to the incarnation it wants (persisted before the reply is sent, by
        // the driver contract) and forget what its earlier life voted.
        self.merge_incarnations(&envelope.incarnations);
        let reply = RecoveryReply {
            known,
            promised: self.promised.clone(),
            decided: self.decided_index,
            frontier: self.frontier,
        };
        self.send(from, Message::RecoveryReply(reply));
    }

    /// `view`: the incarnation of this replica the responder held when it answered.
    fn on_recovery_reply(&mut self, from: NodeId, view: u64, m: RecoveryReply) {
        let mine = self.incarnations[self.cfg.id as usize];
        if mine > 0 && m.known > mine {
            // An abandoned attempt of ours went higher (a finished life would have been seen by
            // the majority that answered the first round): go above it.
            return self.restart_recovery(m.known + 1);
        }
        if mine > 0 && view != mine {
            // An answer to the first round or to an abandoned attempt: its sender did not record
            // this incarnation before answering, so it may still count votes of the earlier
            // life. Only answers given as `mine` count (the query is resent to the missing).
            return;
        }
        if mine > 0 && m.decided > self.decided_index {
            self.request_catch_up(from);
        }
        if let Some(recovery) = &mut self.recovery {
            recovery.replies.insert(from, m);
        }
    }

    fn tick_recovery(&mut self) {
        let (tick, resend) = (self.tick, self.cfg.resend_ticks);
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        if recovery.last_query + resend <= tick {
            recovery.last_query = tick;
            let missing: Vec<NodeId> = (0..self.cfg.nodes)
                .filter(|n| *n != self.cfg.id && !recovery.replies.contains_key(n))
                .collect();
            // Ask the most advanced responder for what is still missing.
            let best = recovery
                .replies
                .iter()
                .max_by_key(|(_, r)| r.decided)
                .map(|(n, _)| *n);
            let target = recovery.target;
            for to in missing {
                self.send(to, Message::RecoveryQuery);
            }
            if let (Some(best), Some(target)) = (best, target)
                && self.decided_index < target
            {
                self.request_catch_up(best);
            }
        }
        self.check_recovered();
    }

    /// Completes recovery once a majority of the *other* replicas answered the current attempt
    /// and this replica has learned every slot up to the highest one they reported (see the
    /// section comment above for why this is enough).
    fn check_recovered(&mut self) {
        let needed = if self.cfg.nodes == 1 {
            0
        } else {
            self.cfg.majority()
        };
        let lanes_n = self.lanes_n as usize;
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        if self.incarnations[self.cfg.id as usize] == 0 {
            // First round: learn the highest incarnation of this replica that a majority knows.
            if recovery.replies.len() >= needed {
                let known = recovery.replies.values().map(|r| r.known).max();
                self.restart_recovery(known.unwrap_or(0) + 1);
            }
            return;
        }
        if recovery.target.is_none() && recovery.replies.len() >= needed {
            let target = recovery
                .replies
                .values()
                .map(|r| r.decided.max(r.frontier))
                .max()
                .unwrap_or(0);
            let mut max_promised = self.promised.clone();
            for reply in recovery.replies.values() {
                for (lane, ballot) in reply.promised.iter().enumerate().take(lanes_n) {
                    max_promised[lane] = max_promised[lane].max(*ballot);
                }
            }
            recovery.target = Some(target);
            recovery.max_promised = max_promised;
            self.frontier = self.frontier.max(target);
        }
        let Some(target) = recovery.target else {
            return;
        };
        if self.decided_index < target {
            return;
        }
        let recovery = self.recovery.take().expect("recovering");
        self.ready.persist.extend(recovery.deferred);
        let me = self.cfg.id;
        self.ready.persist.push(PersistOp::Incarnation {
            node: me,
            incarnation: self.incarnations[me as usize],
        });
        for lane in 0..self.lanes_n {
            let ballot = recovery.max_promised[lane as usize];
            if ballot > self.promised[lane as usize] {
                self.promise(lane, ballot);
            }
            self.lanes[lane as usize].highest_seen =
                self.lanes[lane as usize].highest_seen.max(ballot);
            let deadline = self.randomized_deadline();
            self.lanes[lane as usize].deadline = deadline;
        }
    }

    // ----- slot arithmetic -----

    fn lane_of(&self, slot: Slot) -> u32 {
        ((slot - 1) % u64::from(self.lanes_n)) as u32
    }

    /// The first slot of `lane` at or after `slot`.
    fn lane_slot_at_or_after(&self, lane: u32, slot: Slot) -> Slot {
        let first = u64::from(lane) + 1;
        if slot <= first {
            return first;
        }
        let step = u64::from(self.lanes_n);
        first + (slot - first).div_ceil(step) * step
    }

    fn step(&self) -> u64 {
        u64::from(self.lanes_n)
    }

    fn is_leading(&self, lane: u32) -> bool {
        matches!(self.lanes[lane as usize].role, Role::Leading { .. })
    }

    fn leader_hint(&self) -> Option<NodeId> {
        let holder = self.lanes[0].highest_seen.node;
        (holder != self.cfg.id).then_some(holder)
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        let incarnations = self.wire_incarnations();
        self.ready.messages.push(Envelope {
            from: self.cfg.id,
            to,
            msg,
            incarnations,
        });
    }

    fn broadcast(&mut self, msg: Message) {
        for to in 0..self.cfg.nodes {
            if to != self.cfg.id {
                self.send(to, msg.clone());
            }
        }
    }

    fn randomized_deadline(&mut self) -> u64 {
        self.tick + self.cfg.election_ticks + self.rng.below(self.cfg.election_ticks)
    }

    // ----- acceptor (PMS 2.2, phases 1b and 2b) -----

    fn promise(&mut self, lane: u32, ballot: Ballot) {
        let current = self.promised[lane as usize];
        assert!(ballot >= current, "promises never go backwards");
        if ballot > current {
            self.promised[lane as usize] = ballot;
            self.ready.persist.push(PersistOp::Promise { lane, ballot });
        }
    }

    fn on_prepare(&mut self, from: NodeId, m: Prepare) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if m.ballot < self.promised[lane as usize] {
            return self.nack(from, lane, m.ballot, NackReason::HigherBallot);
        }
        let start = self.lane_slot_at_or_after(lane, m.from_slot);
        if start <= self.compacted {
            return self.nack(from, lane, m.ballot, NackReason::Behind);
        }
        let entries: Vec<PromiseEntry> = self
            .log
            .range(start..)
            .filter(|(slot, _)| self.lane_of(**slot) == lane)
            .take(self.cfg.max_entries_per_message + 1)
            .map(|(slot, e)| PromiseEntry {
                slot: *slot,
                ballot: e.ballot,
                value: e.value.clone(),
                decided: e.decided,
            })
            .collect();
        if entries.len() > self.cfg.max_entries_per_message {
            return self.nack(from, lane, m.ballot, NackReason::Behind);
        }
        self.observe_ballot(lane, m.ballot);
        self.promise(lane, m.ballot);
        let decided = self.decided_index;
        self.send(
            from,
            Message::Promise(Promise {
                lane,
                ballot: m.ballot,
                entries,
                decided,
            }),
        );
    }

    fn nack(&mut self, to: NodeId, lane: u32, ballot: Ballot, reason: NackReason) {
        let msg = Nack {
            lane,
            ballot,
            promised: self.promised[lane as usize],
            reason,
            decided: self.decided_index,
        };
        self.send(to, Message::Nack(msg));
    }

    fn on_accept(&mut self, from: NodeId, m: Accept) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if m.ballot < self.promised[lane as usize] {
            return self.nack(from, lane, m.ballot, NackReason::HigherBallot);
        }
        self.observe_ballot(lane, m.ballot);
        self.promise(lane, m.ballot);
        let mut slots = Vec::with_capacity(m.entries.len());
        for (slot, value) in m.entries {
            if slot == 0 || self.lane_of(slot) != lane {
                continue;
            }
            self.frontier = self.frontier.max(slot);
            slots.push(slot);
            if slot <= self.compacted || self.log.get(&slot).is_some_and(|e| e.decided) {
                continue;
            }
            self.log.insert(
                slot,
                Entry {
                    ballot: m.ballot,
                    value: value.clone(),
                    decided: false,
                },
            );
            self.ready.persist.push(PersistOp::Accept {
                slot,
                ballot: m.ballot,
                value,
            });
        }
        if !slots.is_empty() {
            self.send(
                from,
                Message::Accepted(Accepted {
                    lane,
                    ballot: m.ballot,
                    slots,
                }),
            );
        }
        self.learn_lane_prefix(from, lane, m.ballot, m.decided_up_to);
    }

    // ----- learner -----

    /// A leader of `lane` at `ballot` says every lane slot up to `up_to` is decided.
    fn learn_lane_prefix(&mut self, from: NodeId, lane: u32, ballot: Ballot, up_to: Slot) {
        if up_to == 0 || lane >= self.lanes_n || self.lane_of(up_to) != lane {
            return;
        }
        self.frontier = self.frontier.max(up_to);
        let step = self.step();
        let mut slot =
            self.lane_slot_at_or_after(lane, self.lanes[lane as usize].decided_prefix + 1);
        let mut missing = false;
        let mut budget = self.cfg.max_entries_per_message;
        while slot <= up_to {
            if budget == 0 {
                missing = true;
                break;
            }
            budget -= 1;
            if slot > self.compacted {
                match self.log.get(&slot) {
                    Some(e) if e.decided => {}
                    // Accepted at the deciding leader's ballot: the leader proposed exactly one
                    // value per slot at that ballot, so this is the chosen one.
                    Some(e) if e.ballot == ballot => {
                        let value = e.value.clone();
                        self.decide(slot, value);
                    }
                    _ => missing = true,
                }
            }
            slot += step;
        }
        self.refresh_lane_prefix(lane);
        if missing {
            self.request_catch_up(from);
        }
    }

    fn decide(&mut self, slot: Slot, value: Value) {
        if slot <= self.compacted {
            return;
        }
        let entry = self.log.entry(slot).or_insert_with(|| Entry {
            ballot: Ballot::default(),
            value: value.clone(),
            decided: false,
        });
        if entry.decided {
            assert_eq!(
                entry.value, value,
                "slot {slot} decided twice with different values"
            );
            return;
        }
        entry.decided = true;
        entry.value = value.clone();
        self.metrics.slots_decided += 1;
        self.ready.persist.push(PersistOp::Decide {
            slot,
            value: value.clone(),
        });
        if let Some((mine, at)) = self.my_proposals.remove(&slot) {
            if mine == value {
                self.ready
                    .observations
                    .push(Observation::CommitTicks(self.tick - at));
            } else {
                self.ready.dropped.extend(mine.commands().iter().cloned());
            }
        }
        let lane = self.lane_of(slot);
        if let Role::Leading { inflight, .. } = &mut self.lanes[lane as usize].role
            && let Some(mine) = inflight.remove(&slot)
            && mine.value != value
        {
            // Another value was chosen in a slot this leader proposed: a higher ballot
            // decided it, so this ballot is stale. Stepping down keeps the rule that a
            // leader's decided prefix at its ballot only covers slots where what it
            // proposed at that ballot is what was chosen.
            self.step_down(lane);
        }
    }

    fn refresh_lane_prefix(&mut self, lane: u32) {
        let step = self.step();
        let mut prefix = self.lanes[lane as usize].decided_prefix;
        let mut next = self.lane_slot_at_or_after(lane, prefix + 1);
        while next <= self.compacted || self.log.get(&next).is_some_and(|e| e.decided) {
            prefix = next;
            next += step;
        }
        self.lanes[lane as usize].decided_prefix = prefix;
    }

    fn advance_decided(&mut self) {
        let before = self.decided_index;
        while let Some(e) = self
            .log
            .get(&(self.decided_index + 1))
            .filter(|e| e.decided)
        {
            let slot = self.decided_index + 1;
            self.ready.decided.push((slot, e.value.clone()));
            self.decided_index = slot;
        }
        debug_assert!(self.decided_index >= before);
        let retained = self.decided_index - self.compacted;
        if retained > self.cfg.max_retained_log {
            self.ready.snapshot_wanted = Some(self.decided_index);
        }
    }

    // ----- catch-up -----

    fn request_catch_up(&mut self, peer: NodeId) {
        if self.tick < self.catchup_after {
            return;
        }
        self.catchup_after = self.tick + self.cfg.resend_ticks;
        let from_slot = self.decided_index + 1;
        self.send(peer, Message::CatchUp(CatchUp { from_slot }));
    }

    fn on_catch_up(&mut self, from: NodeId, m: CatchUp) {
        let snapshot = match &self.snapshot {
            Some((slot, data)) if m.from_slot <= *slot => Some((*slot, data.clone())),
            _ => None,
        };
        let start = snapshot.as_ref().map_or(m.from_slot, |(slot, _)| slot + 1);
        let entries = self.decided_entries(start, self.cfg.max_entries_per_message);
        if snapshot.is_some() || !entries.is_empty() {
            self.send(
                from,
                Message::CatchUpReply(CatchUpReply { snapshot, entries }),
            );
        }
    }

    fn on_catch_up_reply(&mut self, m: CatchUpReply) {
        if let Some((slot, data)) = m.snapshot
            && slot > self.decided_index
        {
            self.install_snapshot(slot, data);
        }
        for (slot, value) in m.entries {
            self.decide(slot, value);
        }
        for lane in 0..self.lanes_n {
            self.refresh_lane_prefix(lane);
        }
        self.catchup_after = 0;
    }

    fn install_snapshot(&mut self, slot: Slot, data: Bytes) {
        self.log = self.log.split_off(&(slot + 1));
        self.compacted = slot;
        self.decided_index = slot;
        self.frontier = self.frontier.max(slot);
        self.snapshot = Some((slot, data.clone()));
        self.ready.persist.push(PersistOp::Snapshot {
            slot,
            data: data.clone(),
        });
        self.ready.snapshot = Some((slot, data));
        // Anything of ours up to the snapshot was decided one way or the other; we no longer
        // know which.
        let rest = self.my_proposals.split_off(&(slot + 1));
        for (value, _) in std::mem::replace(&mut self.my_proposals, rest).into_values() {
            self.ready
                .outcome_unknown
                .extend(value.commands().iter().cloned());
        }
        for lane in 0..self.lanes_n {
            let first_free = self.lane_slot_at_or_after(lane, slot + 1);
            let mut lost_track = false;
            if let Role::Leading {
                inflight,
                next_slot,
                ..
            } = &mut self.lanes[lane as usize].role
            {
                // Proposals of ours that the snapshot covers were decided, but maybe with other
                // values (at a higher ballot we never saw): this ballot can no longer vouch for
                // its slots, so give the lane up and win it back with phase 1 if needed.
                lost_track = inflight.range(..=slot).next().is_some();
                *inflight = inflight.split_off(&(slot + 1));
                *next_slot = (*next_slot).max(first_free);
            }
            if lost_track {
                self.step_down(lane);
            }
        }
    }

    // ----- proposer: phase 1 (PMS 2.2 and 3; M 4.3 revocation) -----

    fn observe_ballot(&mut self, lane: u32, ballot: Ballot) {
        let l = &mut self.lanes[lane as usize];
        if ballot > l.highest_seen {
            if ballot.node != l.highest_seen.node {
                self.metrics.leader_changes += 1;
            }
            l.highest_seen = ballot;
        }
        let holds_lower = match &self.lanes[lane as usize].role {
            Role::Leading { ballot: mine, .. } | Role::Preparing { ballot: mine, .. } => {
                *mine < ballot
            }
            Role::Follower => false,
        };
        if holds_lower {
            self.step_down(lane);
        }
    }

    fn step_down(&mut self, lane: u32) {
        let l = &mut self.lanes[lane as usize];
        l.role = Role::Follower;
        let deadline = self.randomized_deadline();
        self.lanes[lane as usize].deadline = deadline;
        if self.cfg.mode == Mode::Leader {
            // Queued commands never got a slot: hand them back for the new leader.
            self.ready.dropped.extend(self.pending.drain(..));
            for read in self.reads.drain(..) {
                self.ready.reads.push(ReadResult::Failed { id: read.id });
            }
        }
    }

    fn start_prepare(&mut self, lane: u32) {
        let max_round = self
            .promised
            .iter()
            .chain(self.lanes.iter().map(|l| &l.highest_seen))
            .map(|b| b.round)
            .max()
            .unwrap_or(0);
        let ballot = Ballot {
            incarnation: self.incarnations[self.cfg.id as usize],
            ..Ballot::new(max_round + 1, self.cfg.id)
        };
        self.promise(lane, ballot);
        self.lanes[lane as usize].highest_seen = ballot;
        let from_slot =
            self.lane_slot_at_or_after(lane, self.lanes[lane as usize].decided_prefix + 1);
        let own: Vec<PromiseEntry> = self
            .log
            .range(from_slot..)
            .filter(|(slot, _)| self.lane_of(**slot) == lane)
            .map(|(slot, e)| PromiseEntry {
                slot: *slot,
                ballot: e.ballot,
                value: e.value.clone(),
                decided: e.decided,
            })
            .collect();
        let mut promises = BTreeMap::new();
        promises.insert(self.cfg.id, own);
        self.lanes[lane as usize].role = Role::Preparing {
            ballot,
            from_slot,
            promises,
            started: self.tick,
            sent_at: self.tick,
        };
        self.metrics.elections_started += 1;
        self.metrics.phase1_rounds += 1;
        self.broadcast(Message::Prepare(Prepare {
            lane,
            ballot,
            from_slot,
        }));
        self.try_win(lane);
    }

    fn on_promise(&mut self, from: NodeId, m: Promise) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if let Role::Preparing {
            ballot, promises, ..
        } = &mut self.lanes[lane as usize].role
            && *ballot == m.ballot
        {
            promises.insert(from, m.entries);
        }
        if m.decided > self.decided_index {
            self.request_catch_up(from);
        }
        self.try_win(lane);
    }

    fn try_win(&mut self, lane: u32) {
        let Role::Preparing {
            ballot,
            from_slot,
            promises,
            ..
        } = &self.lanes[lane as usize].role
        else {
            return;
        };
        if promises.len() < self.cfg.majority() {
            return;
        }
        let (ballot, from_slot) = (*ballot, *from_slot);
        // For every slot any promiser reported: a decided value wins; otherwise the value
        // accepted at the highest ballot (PMS 2.2, P2c). Unreported slots below the highest
        // reported one become no-ops.
        let mut chosen: BTreeMap<Slot, (bool, Ballot, Value)> = BTreeMap::new();
        for entry in promises.values().flatten() {
            let candidate = (entry.decided, entry.ballot, entry.value.clone());
            match chosen.get(&entry.slot) {
                Some((true, _, _)) => {}
                Some((false, b, _)) if !entry.decided && *b >= entry.ballot => {}
                _ => {
                    chosen.insert(entry.slot, candidate);
                }
            }
        }
        let step = self.step();
        let last = chosen.keys().next_back().copied().unwrap_or(0);
        let next_slot = if last >= from_slot {
            last + step
        } else {
            from_slot
        };
        self.lanes[lane as usize].role = Role::Leading {
            ballot,
            next_slot,
            inflight: BTreeMap::new(),
        };
        self.metrics.elections_won += 1;
        let mut entries = Vec::new();
        let mut slot = from_slot;
        while slot < next_slot {
            let known_decided =
                slot <= self.compacted || self.log.get(&slot).is_some_and(|e| e.decided);
            match chosen.remove(&slot) {
                _ if known_decided => {}
                Some((true, _, value)) => self.decide(slot, value),
                Some((false, _, value)) => {
                    entries.push(self.propose_slot(lane, ballot, slot, value))
                }
                None => entries.push(self.propose_slot(lane, ballot, slot, Value::Noop)),
            }
            slot += step;
        }
        self.refresh_lane_prefix(lane);
        self.send_accepts(lane, ballot, entries);
    }

    fn on_nack(&mut self, from: NodeId, m: Nack) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        match m.reason {
            NackReason::HigherBallot => self.observe_ballot(lane, m.promised),
            NackReason::Behind => self.request_catch_up(from),
        }
        if m.decided > self.decided_index {
            self.request_catch_up(from);
        }
    }

    // ----- proposer: phase 2 (PMS 3; M 4.2 skips) -----

    /// Accepts `value` locally at `slot` (the leader is also an acceptor) and tracks it.
    fn propose_slot(
        &mut self,
        lane: u32,
        ballot: Ballot,
        slot: Slot,
        value: Value,
    ) -> (Slot, Value) {
        self.log.insert(
            slot,
            Entry {
                ballot,
                value: value.clone(),
                decided: false,
            },
        );
        self.ready.persist.push(PersistOp::Accept {
            slot,
            ballot,
            value: value.clone(),
        });
        self.frontier = self.frontier.max(slot);
        self.metrics.slots_proposed += 1;
        if value == Value::Noop {
            self.metrics.noops_proposed += 1;
        }
        if let Role::Leading { inflight, .. } = &mut self.lanes[lane as usize].role {
            inflight.insert(
                slot,
                Inflight {
                    value: value.clone(),
                    acks: 1 << self.cfg.id,
                    sent_at: self.tick,
                },
            );
        }
        (slot, value)
    }

    fn send_accepts(&mut self, lane: u32, ballot: Ballot, entries: Vec<(Slot, Value)>) {
        if entries.is_empty() {
            return;
        }
        self.metrics.phase2_messages += u64::from(self.cfg.nodes - 1);
        let decided_up_to = self.lanes[lane as usize].decided_prefix;
        self.broadcast(Message::Accept(Accept {
            lane,
            ballot,
            entries,
            decided_up_to,
        }));
        if self.cfg.majority() == 1 {
            self.check_quorums(lane);
        }
    }

    fn on_accepted(&mut self, from: NodeId, m: Accepted) {
        let lane = m.lane;
        if lane >= self.lanes_n {
            return;
        }
        if let Role::Leading {
            ballot, inflight, ..
        } = &mut self.lanes[lane as usize].role
            && *ballot == m.ballot
        {
            for slot in &m.slots {
                if let Some(f) = inflight.get_mut(slot) {
                    f.acks |= 1 << from;
                }
            }
        }
        self.check_quorums(lane);
    }

    fn check_quorums(&mut self, lane: u32) {
        let majority = self.cfg.majority() as u32;
        let Role::Leading {
            ballot, inflight, ..
        } = &self.lanes[lane as usize].role
        else {
            return;
        };
        let ballot = *ballot;
        let chosen: Vec<(Slot, Value)> = inflight
            .iter()
            .filter(|(_, f)| f.acks.count_ones() >= majority)
            .map(|(slot, f)| (*slot, f.value.clone()))
            .collect();
        if chosen.is_empty() {
            return;
        }
        let before = self.lanes[lane as usize].decided_prefix;
        for (slot, value) in chosen {
            self.decide(slot, value);
        }
        self.refresh_lane_prefix(lane);
        let up_to = self.lanes[lane as usize].decided_prefix;
        if up_to > before {
            self.broadcast(Message::Decide(Decide {
                lane,
                ballot,
                up_to,
            }));
        }
    }

    fn on_decide(&mut self, from: NodeId, m: Decide) {
        if m.lane >= self.lanes_n {
            return;
        }
        self.observe_ballot(m.lane, m.ballot);
        self.learn_lane_prefix(from, m.lane, m.ballot, m.up_to);
    }

    /// Assigns queued commands and needed no-ops to slots in every lane this replica leads.
    fn flush(&mut self) {
        for lane in 0..self.lanes_n {
            let Role::Leading { ballot, .. } = &self.lanes[lane as usize].role else {
                continue;
            };
            let ballot = *ballot;
            let may_propose_commands = self.cfg.mode == Mode::Leader || lane == self.cfg.id;
            let step = self.step();
            let mut entries = Vec::new();
            while let Role::Leading {
                next_slot,
                inflight,
                ..
            } = &self.lanes[lane as usize].role
            {
                let (slot, in_flight) = (*next_slot, inflight.len());
                if in_flight >= self.cfg.window {
                    break;
                }
                let value = if may_propose_commands && !self.pending.is_empty() {
                    Value::Batch(Arc::new(self.take_batch()))
                } else if slot <= self.frontier && self.fill_noops {
                    // This slot or a later one is in use elsewhere (another lane's proposal, or
                    // a deposed proposer's value that phase 1 proved unchosen): fill it with a
                    // no-op so the log can be applied past it (M 4.2, skips).
                    Value::Noop
                } else {
                    break;
                };
                if let Role::Leading { next_slot, .. } = &mut self.lanes[lane as usize].role {
                    *next_slot += step;
                }
                if let Value::Batch(commands) = &value {
                    self.ready
                        .observations
                        .push(Observation::BatchSize(commands.len()));
                    self.my_proposals.insert(slot, (value.clone(), self.tick));
                }
                entries.push(self.propose_slot(lane, ballot, slot, value));
            }
            self.send_accepts(lane, ballot, entries);
        }
        self.advance_decided();
    }

    fn take_batch(&mut self) -> Vec<Command> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.pending.front() {
            let full = batch.len() >= self.cfg.max_batch_commands
                || (!batch.is_empty() && bytes + next.len() > self.cfg.max_batch_bytes);
            if full {
                break;
            }
            bytes += next.len();
            batch.extend(self.pending.pop_front());
        }
        batch
    }

    // ----- time: heartbeats, resends, elections, takeovers -----

    fn broadcast_heartbeat(&mut self, read_seq: u64) {
        let leading = (0..self.lanes_n)
            .filter_map(|lane| match &self.lanes[lane as usize].role {
                Role::Leading { ballot, .. } => Some(LaneClaim {
                    lane,
                    ballot: *ballot,
                    decided_up_to: self.lanes[lane as usize].decided_prefix,
                }),
                _ => None,
            })
            .collect();
        let hb = Heartbeat {
            leading,
            decided: self.decided_index,
            frontier: self.frontier,
            read_seq,
        };
        self.broadcast(Message::Heartbeat(hb));
    }

    fn on_heartbeat(&mut self, from: NodeId, m: Heartbeat) {
        for claim in &m.leading {
            if claim.lane >= self.lanes_n {
                continue;
            }
            if claim.ballot >= self.lanes[claim.lane as usize].highest_seen {
                self.observe_ballot(claim.lane, claim.ballot);
                // A live leader postpones elections. (A leaderless replica's claim on its own
                // lane is never postponed by whoever holds it meanwhile.)
                if self.cfg.mode == Mode::Leader {
                    let deadline = self.randomized_deadline();
                    self.lanes[claim.lane as usize].deadline = deadline;
                }
            }
            self.learn_lane_prefix(from, claim.lane, claim.ballot, claim.decided_up_to);
            // A recovering replica confirms nobody: its promise may be below one it forgot.
            if m.read_seq > 0
                && self.recovery.is_none()
                && claim.ballot >= self.promised[claim.lane as usize]
            {
                let ack = HeartbeatAck {
                    lane: claim.lane,
                    ballot: claim.ballot,
                    read_seq: m.read_seq,
                };
                self.send(from, Message::HeartbeatAck(ack));
            }
        }
        self.frontier = self.frontier.max(m.frontier);
        if m.decided > self.decided_index {
            self.request_catch_up(from);
        }
    }

    fn on_heartbeat_ack(&mut self, from: NodeId, m: HeartbeatAck) {
        if m.lane != 0 || self.cfg.mode != Mode::Leader {
            return;
        }
        if let Role::Leading { ballot, .. } = &self.lanes[0].role
            && *ballot == m.ballot
        {
            let seen = &mut self.read_acks[from as usize];
            *seen = (*seen).max(m.read_seq);
            self.complete_reads();
        }
    }

    fn complete_reads(&mut self) {
        let majority = self.cfg.majority();
        let acks = &self.read_acks;
        let mut done = Vec::new();
        self.reads.retain(|read| {
            let confirmed = acks.iter().filter(|seq| **seq >= read.seq).count() >= majority;
            if confirmed {
                done.push(ReadResult::Ready {
                    id: read.id,
                    index: read.index,
                });
            }
            !confirmed
        });
        self.ready.reads.extend(done);
    }

    fn tick_lane(&mut self, lane: u32) {
        let tick = self.tick;
        match &mut self.lanes[lane as usize].role {
            Role::Leading {
                ballot, inflight, ..
            } => {
                // Resend what a peer has not acknowledged (message loss).
                let ballot = *ballot;
                let due: Vec<(Slot, Value, u64)> = inflight
                    .iter_mut()
                    .filter(|(_, f)| f.sent_at + self.cfg.resend_ticks <= tick)
                    .map(|(slot, f)| {
                        f.sent_at = tick;
                        (*slot, f.value.clone(), f.acks)
                    })
                    .collect();
                if due.is_empty() {
                    return;
                }
                let decided_up_to = self.lanes[lane as usize].decided_prefix;
                let (me, nodes) = (self.cfg.id, self.cfg.nodes);
                for to in (0..nodes).filter(|n| *n != me) {
                    let entries: Vec<(Slot, Value)> = due
                        .iter()
                        .filter(|(_, _, acks)| acks & (1 << to) == 0)
                        .map(|(slot, value, _)| (*slot, value.clone()))
                        .collect();
                    if !entries.is_empty() {
                        self.metrics.phase2_messages += 1;
                        self.send(
                            to,
                            Message::Accept(Accept {
                                lane,
                                ballot,
                                entries,
                                decided_up_to,
                            }),
                        );
                    }
                }
            }
            Role::Preparing {
                ballot,
                from_slot,
                promises,
                started,
                sent_at,
            } => {
                if tick >= *started + self.cfg.election_ticks * 2 {
                    // No majority in time: try again later with a higher ballot.
                    self.lanes[lane as usize].role = Role::Follower;
                    self.lanes[lane as usize].deadline =
                        tick + self.rng.below(self.cfg.election_ticks) + 1;
                    return;
                }
                if *sent_at + self.cfg.resend_ticks <= tick {
                    *sent_at = tick;
                    let (ballot, from_slot) = (*ballot, *from_slot);
                    let missing: Vec<NodeId> = (0..self.cfg.nodes)
                        .filter(|n| !promises.contains_key(n))
                        .collect();
                    for to in missing {
                        self.send(
                            to,
                            Message::Prepare(Prepare {
                                lane,
                                ballot,
                                from_slot,
                            }),
                        );
                    }
                }
            }
            Role::Follower => {
                if tick < self.lanes[lane as usize].deadline {
                    return;
                }
                if self.should_campaign(lane) {
                    self.start_prepare(lane);
                } else {
                    self.lanes[lane as usize].deadline = tick + self.cfg.heartbeat_ticks;
                }
            }
        }
    }

    fn should_campaign(&self, lane: u32) -> bool {
        let holder = self.lanes[lane as usize].highest_seen.node;
        let silent = |node: NodeId| {
            node != self.cfg.id
                && self.tick.saturating_sub(self.last_heard[node as usize])
                    > self.cfg.election_ticks
        };
        match self.cfg.mode {
            // Leader mode: the leader went quiet (or this replica was the leader and lost it).
            Mode::Leader => holder == self.cfg.id || silent(holder),
            // Leaderless, own lane: always take it back (after the randomized deadline).
            Mode::Leaderless if lane == self.cfg.id => true,
            // Leaderless, another lane: revoke only if its holder is silent and the log is
            // stuck on one of its slots (M 4.3).
            Mode::Leaderless => {
                let stuck = self.decided_index + 1;
                (holder == self.cfg.id || silent(holder))
                    && self.frontier >= stuck
                    && self.lane_of(stuck) == lane
            }
        }
    }
}

fn default_ballot(cfg: &Config, lane: u32) -> Ballot {
    match cfg.mode {
        Mode::Leader => Ballot::new(0, 0),
        Mode::Leaderless => Ballot::new(0, lane),
    }
}
