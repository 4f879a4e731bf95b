//! The sans-IO replica: acceptor, proposer and learner of every lane, in one synchronous struct.
//!
//! See the crate docs for the driver contract and the two modes. Section numbers in comments
//! refer to "Paxos Made Simple" (PMS) and the Mencius paper (M). One file a role:
//!
//! - this file: the [`Replica`] state, its inputs (`propose`, `handle`, `tick`, `compact`) and
//!   slot arithmetic;
//! - `config`: [`Config`] and [`Mode`]; `outputs`: [`Ready`] and what else the driver reads;
//! - `acceptor`: promises and accepts (phases 1b and 2b);
//! - `proposer`: phase 1 (elections, lane revocation) and phase 2 (pipelined, batched accepts);
//! - `learner`: decided prefixes and the decided index;
//! - `catch_up`: entries and snapshots for a replica that is behind;
//! - `recovery`: crash vectors and the rejoin of a replica that lost its state;
//! - `read_index`: heartbeats and linearizable read points;
//! - `timers`: resends, elections and takeovers driven by `tick`;
//! - `quorum`: counting votes.

mod acceptor;
mod catch_up;
mod config;
mod learner;
mod outputs;
mod proposer;
mod quorum;
mod read_index;
mod recovery;
mod timers;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::{Command, Envelope, Message, PromiseEntry, RecoveryReply, Value};
use crate::storage::{PersistOp, PersistentState};

pub use config::{Config, Mode};
pub use outputs::{
    CampaignCause, Metrics, Observation, ProposeError, ReadResult, Ready, Status, StepDownCause,
};
use quorum::{Quorum, Votes};

#[derive(Clone, Debug, Hash)]
struct Entry {
    ballot: Ballot,
    value: Value,
    decided: bool,
}

#[derive(Clone, Debug, Hash)]
struct Inflight {
    value: Value,
    acks: Votes,
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
    /// Leader mode: the followers have not been told the decided prefix yet; the next accept
    /// carries it, or a `Decide` on the next tick.
    decide_due: bool,
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
    /// Highest slot known to be in use (by a command or a no-op): the recovery target, and what
    /// a tick's skips reach.
    frontier: Slot,
    /// Highest slot known to hold a command. Leaderless: this replica's own empty slots below
    /// it become no-ops at once (M 4.2).
    command_frontier: Slot,
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
    /// This life has synced a write: its ballots can no longer be reused by a restart that
    /// looks fresh (see [`Replica::take_ready`]).
    synced: bool,
    /// Set during a tick's flush: skips reach the frontier (see [`Replica::flush`]).
    fill_noops: bool,
    /// Inputs since the last flush may have queued commands or opened the window: the next
    /// [`Replica::take_ready`] assigns slots once for all of them, so a burst of proposals and
    /// replies becomes one slot (and one accept per peer), not one per input.
    flush_due: bool,
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
                decide_due: false,
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
            command_frontier: frontier,
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
            flush_due: false,
            synced: false,
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

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
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
        if std::mem::take(&mut self.flush_due) {
            self.flush();
        }
        self.start_read_round();
        if self.cfg.mode == Mode::Leaderless {
            for lane in 0..self.lanes_n {
                self.send_due_decide(lane);
            }
        }
        self.metrics.messages_sent += self.ready.messages.len() as u64;
        if let Some(recovery) = &mut self.recovery {
            recovery.deferred.append(&mut self.ready.persist);
        }
        let mut ready = std::mem::take(&mut self.ready);
        // An accept may leave before this step's writes are synced when its ballot can never
        // be used again for another value, whatever happens to those writes:
        // - this life already synced a write, so a crash now cannot make the next life look
        //   fresh (a fresh replica leads at the default ballot (0, id) without phase 1, so an
        //   accept at (0, id) sent before anything was synced could meet another value at the
        //   same ballot after a restart);
        // - no promise of its lane is among this step's writes (a ballot won by phase 1 had its
        //   own promise synced before its prepare went out; a promise written now is not yet).
        // The proposer's own vote still counts only once the step is synced: the driver handles
        // no reply before the sync returns. See the driver contract in the crate docs.
        if self.synced && !ready.messages.is_empty() {
            let promising: Vec<u32> = ready
                .persist
                .iter()
                .filter_map(|op| match op {
                    PersistOp::Promise { lane, .. } => Some(*lane),
                    _ => None,
                })
                .collect();
            let (early, later): (Vec<Envelope>, Vec<Envelope>) =
                std::mem::take(&mut ready.messages).into_iter().partition(
                    |e| matches!(&e.msg, Message::Accept(a) if !promising.contains(&a.lane)),
                );
            // An accept of commands to a peer this step also answers (an `Accepted`, which
            // waits for the sync) goes with that answer: one frame and one step of the peer's
            // instead of two. Leaderless under load, where most steps both accept other lanes'
            // slots and propose in their own, that is most accepts; it delays them by this
            // step's sync, which the peer's answer already waits for. No-op skips still leave
            // early (other lanes' commands wait on them), and leader mode is unchanged (its
            // leader answers no accepts).
            let answered: Vec<NodeId> = later
                .iter()
                .filter(|e| matches!(e.msg, Message::Accepted(_)))
                .map(|e| e.to)
                .collect();
            let (held, early): (Vec<Envelope>, Vec<Envelope>) = early.into_iter().partition(|e| {
                answered.contains(&e.to)
                    && matches!(&e.msg, Message::Accept(a)
                            if a.entries.iter().any(|(_, v)| matches!(v, Value::Batch(_))))
            });
            ready.early = early;
            ready.messages = held;
            ready.messages.extend(later);
        }
        if ready
            .persist
            .iter()
            .any(|op| !matches!(op, PersistOp::Decide { .. }))
        {
            self.synced = true;
        }
        ready
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
            command_frontier,
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
            synced,
            flush_due,
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
        (incarnations, fill_noops, synced, flush_due).hash(&mut h);
        command_frontier.hash(&mut h);
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
        self.flush_due = true;
        Ok(())
    }

    /// Leader mode: start an election now (the prober's "elect" call).
    pub fn start_election(&mut self) {
        if self.recovery.is_some() {
            return;
        }
        if !self.is_leading(0) {
            self.start_prepare(0, CampaignCause::Requested);
            self.flush();
        }
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
            self.send_due_decide(lane);
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
        self.flush_due = true;
    }
}

impl Replica {
    // ----- slot arithmetic -----

    fn quorum(&self) -> Quorum {
        Quorum::of(self.cfg.nodes)
    }

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
}

fn default_ballot(cfg: &Config, lane: u32) -> Ballot {
    match cfg.mode {
        Mode::Leader => Ballot::new(0, 0),
        Mode::Leaderless => Ballot::new(0, lane),
    }
}
