//! A deterministic simulator of N replicas on a faulty network, checking safety on every step
//! and liveness after the faults heal (TigerBeetle's VOPR and raft-rs' harness in spirit).
//!
//! Everything random comes from one seed, so a failure replays exactly: the error names the
//! seed and the command that replays it. The network drops, duplicates, delays and so reorders
//! messages, partitions the replicas (symmetric splits, one-way links, a "bridge" node that alone
//! sees both sides) and heals; replicas crash and restart from their durable state, sometimes
//! losing the writes of the step they crashed in (never synced, so never sent either).
//!
//! Adversarial schedules on top: a sender's batch of messages sometimes reaches only a random
//! subset of its receivers (a broadcast that half failed), and a replica is sometimes wiped
//! right after it sent a vote (a promise, an accept acknowledgement or a read confirmation)
//! that is still in flight, which is what makes a lost disk dangerous.
//!
//! Checked after every step: agreement (a slot is decided with one value), prefix consistency
//! (every replica applies slots in order and reaches the same state hash at every slot),
//! validity (only proposed commands are decided, each at most once), promises never go
//! backwards in durable state, a restarted replica's applied index never goes backwards, and
//! linearizable reads: the read point a leader answers `read_index` with is at or above every
//! slot that was decided (applied by some replica) before the read began.
//! After healing: every command proposed by a replica that did not crash afterwards is decided
//! (or handed back as dropped), new commands are decided everywhere within `settle_ticks`.

use std::collections::{HashMap, HashSet};
use std::fmt;

use bytes::Bytes;

use crate::ballot::{NodeId, Slot};
use crate::core::{Config, Mode, ProposeError, ReadResult, Replica};
use crate::messages::{Envelope, Message, Value};
use crate::storage::{MemStorage, Storage};

/// What one simulation does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of everything.
    pub seed: u64,
    /// Replicas.
    pub nodes: u32,
    /// Leader or leaderless.
    pub mode: Mode,
    /// Ticks with faults.
    pub fault_ticks: u64,
    /// Ticks allowed after healing for every command to be decided everywhere.
    pub settle_ticks: u64,
    /// Per-message drop chance, per mille.
    pub drop_per_mille: u64,
    /// Per-message duplication chance, per mille.
    pub dup_per_mille: u64,
    /// Longest message delay, in ticks.
    pub max_delay_ticks: u64,
    /// Per-tick chance that some replica crashes, per mille.
    pub crash_per_mille: u64,
    /// Per-tick chance that a crashed replica restarts, per mille.
    pub restart_per_mille: u64,
    /// Chance that a crash loses the step it happened in (unsynced writes), per mille.
    pub torn_crash_per_mille: u64,
    /// Chance that a replica which just sent its early accepts crashes before syncing the
    /// step they came from, per mille of such steps.
    pub early_crash_per_mille: u64,
    /// Per-tick chance of a new partition, per mille.
    pub partition_per_mille: u64,
    /// Per-tick chance that partitions heal, per mille.
    pub heal_per_mille: u64,
    /// Per-tick, per-replica chance of a client proposal, per mille.
    pub propose_per_mille: u64,
    /// Compact when a replica retains more applied slots than this.
    pub compact_after: u64,
    /// Per-tick chance that a replica loses its whole durable state (a wiped disk) and
    /// rejoins, per mille. Only one replica is ever without its state at a time.
    pub wipe_per_mille: u64,
    /// Chance that a replica that just sent a vote is wiped with the vote in flight, per mille.
    pub wipe_after_vote_per_mille: u64,
    /// Chance that one step's messages of a replica reach only a random subset of their
    /// receivers, per mille.
    pub partial_per_mille: u64,
    /// Per-tick, per-replica chance of a `read_index` call (leader mode), per mille.
    pub read_per_mille: u64,
}

impl SimConfig {
    /// The standard fault mix used by the CI seeds.
    pub fn standard(seed: u64, nodes: u32, mode: Mode) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            mode,
            fault_ticks: 200,
            settle_ticks: 400,
            drop_per_mille: 50,
            dup_per_mille: 30,
            max_delay_ticks: 4,
            crash_per_mille: 15,
            restart_per_mille: 80,
            torn_crash_per_mille: 300,
            early_crash_per_mille: 30,
            partition_per_mille: 15,
            heal_per_mille: 40,
            propose_per_mille: 250,
            compact_after: 40,
            wipe_per_mille: 5,
            wipe_after_vote_per_mille: 3,
            partial_per_mille: 40,
            read_per_mille: 60,
        }
    }

    fn replay_command(&self) -> String {
        format!(
            "PAXOS_SIM_SEED={} PAXOS_SIM_NODES={} PAXOS_SIM_MODE={} cargo test -p paxos --test simulation replay -- --nocapture",
            self.seed, self.nodes, self.mode
        )
    }
}

/// What a successful simulation saw.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Highest slot decided.
    pub decided_slots: Slot,
    /// Client commands decided.
    pub commands_decided: u64,
    /// Commands handed back (dropped) by replicas.
    pub commands_dropped: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Accepts sent early (before their step was synced).
    pub early_accepts: u64,
    /// Crashes between a replica's early accepts and the sync of their step.
    pub early_crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Replicas wiped (durable state erased) and rejoined.
    pub wipes: u64,
    /// Reads answered with a read point, each checked.
    pub reads_checked: u64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Ticks it took after healing until everything was decided everywhere.
    pub settle_ticks_used: u64,
}

/// A violated property, with the seed and the command that replays it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// Tick of the violation.
    pub tick: u64,
    /// What broke.
    pub message: String,
    /// A one-line command that replays this run.
    pub replay: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at tick {}: {}\n  replay: {}",
            self.seed, self.tick, self.message, self.replay
        )
    }
}

/// The core's SplitMix64 plus per-mille chances.
struct SimRng(crate::core::Rng);

impl SimRng {
    fn new(seed: u64) -> SimRng {
        SimRng(crate::core::Rng(seed))
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The replicated application: a hash chain over applied slots.
#[derive(Clone, Copy, Default)]
struct App {
    applied: Slot,
    hash: u64,
}

impl App {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&self.hash.to_le_bytes());
        Bytes::from(out)
    }
    fn decode(data: &[u8]) -> App {
        let applied = u64::from_le_bytes(data[0..8].try_into().unwrap());
        let hash = u64::from_le_bytes(data[8..16].try_into().unwrap());
        App { applied, hash }
    }
}

fn mix(hash: u64, slot: Slot, value: &Value) -> u64 {
    let mut h = hash ^ slot.wrapping_mul(0x100_0000_01B3);
    for cmd in value.commands() {
        for b in cmd.iter() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
        }
        h = h.rotate_left(7);
    }
    h
}

fn command_id(cmd: &Bytes) -> u64 {
    u64::from_le_bytes(cmd[..8].try_into().expect("sim commands are 8 bytes"))
}

struct SimNode {
    replica: Option<Replica>,
    storage: MemStorage,
    app: App,
    applied_floor: Slot,
    restarts: u64,
    rejoin: bool,
}

struct InFlight {
    deliver_at: u64,
    envelope: Envelope,
}

/// One simulation run.
pub struct Sim {
    cfg: SimConfig,
    rng: SimRng,
    tick: u64,
    nodes: Vec<SimNode>,
    network: Vec<InFlight>,
    blocked: HashSet<(NodeId, NodeId)>,
    faults: bool,
    trace: bool,
    chosen: HashMap<Slot, Value>,
    chain: HashMap<Slot, u64>,
    next_command: u64,
    proposed: HashMap<u64, NodeId>,
    outstanding: HashMap<u64, NodeId>,
    decided_commands: HashMap<u64, Slot>,
    /// Read id -> (replica, highest slot decided anywhere when the read began).
    reads: HashMap<u64, (NodeId, Slot)>,
    next_read: u64,
    report: SimReport,
}

type Check = Result<(), String>;

impl Sim {
    /// A simulation that has not started.
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = SimRng::new(cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xABCD);
        let nodes = (0..cfg.nodes)
            .map(|_| SimNode {
                replica: None,
                storage: MemStorage::default(),
                app: App::default(),
                applied_floor: 0,
                restarts: 0,
                rejoin: false,
            })
            .collect();
        Sim {
            cfg,
            rng,
            tick: 0,
            nodes,
            network: Vec::new(),
            blocked: HashSet::new(),
            faults: true,
            trace: std::env::var_os("PAXOS_SIM_TRACE").is_some(),
            chosen: HashMap::new(),
            chain: HashMap::new(),
            next_command: 1,
            proposed: HashMap::new(),
            outstanding: HashMap::new(),
            decided_commands: HashMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            report: SimReport::default(),
        }
    }

    fn replica_config(&self, id: NodeId) -> Config {
        let mut cfg = Config::new(id, self.cfg.nodes, self.cfg.mode);
        cfg.seed = self.cfg.seed ^ (u64::from(id) << 40) ^ (self.nodes[id as usize].restarts << 20);
        cfg.window = 8;
        cfg.max_batch_commands = 4;
        cfg.max_entries_per_message = 64;
        cfg.max_retained_log = self.cfg.compact_after;
        cfg.rejoin = self.nodes[id as usize].rejoin;
        cfg
    }

    /// Crashes a replica and erases its storage; it restarts later as a rejoining replica.
    fn wipe(&mut self, id: NodeId) {
        let someone_without_state = self.nodes.iter().any(|n| {
            n.replica.as_ref().is_some_and(Replica::is_recovering)
                || (n.replica.is_none() && n.rejoin && n.storage.state == Default::default())
        });
        if someone_without_state {
            return;
        }
        self.crash(id);
        if self.trace {
            eprintln!("t{} wipe {id}", self.tick);
        }
        let node = &mut self.nodes[id as usize];
        node.storage = MemStorage::default();
        node.applied_floor = 0;
        node.rejoin = true;
        self.report.wipes += 1;
    }

    fn start(&mut self, id: NodeId) -> Check {
        if self.trace {
            eprintln!("t{} start {id}", self.tick);
        }
        let state = self.nodes[id as usize]
            .storage
            .load()
            .map_err(|e| e.to_string())?;
        let replica = Replica::new(self.replica_config(id), state);
        let node = &mut self.nodes[id as usize];
        node.replica = Some(replica);
        node.app = App::default();
        self.drive(id)?;
        let node = &self.nodes[id as usize];
        if node.app.applied < node.applied_floor {
            return Err(format!(
                "replica {id} restarted with applied index {} below {} applied before the crash",
                node.app.applied, node.applied_floor
            ));
        }
        Ok(())
    }

    fn crash(&mut self, id: NodeId) {
        let torn = self.rng.chance(self.cfg.torn_crash_per_mille);
        self.crash_with(id, torn);
    }

    /// [`Sim::crash`]; `torn`: the replica works one more step and dies before syncing it.
    fn crash_with(&mut self, id: NodeId, torn: bool) {
        if self.trace && self.nodes[id as usize].replica.is_some() {
            eprintln!("t{} crash {id} (torn: {torn})", self.tick);
        }
        let node = &mut self.nodes[id as usize];
        if let Some(mut replica) = node.replica.take() {
            if torn {
                // The replica works one more step, then dies before syncing it: its writes are
                // lost and, as the driver contract requires, nothing it produced was sent but
                // its early accepts.
                replica.tick();
                let ready = replica.take_ready();
                self.transmit(ready.early);
            }
            let node = &mut self.nodes[id as usize];
            // A replica still recovering has nothing durable yet: it starts over from nothing.
            node.applied_floor = if replica.is_recovering() {
                0
            } else {
                node.app.applied
            };
            node.restarts += 1;
            self.report.crashes += 1;
            // Commands this replica was responsible for may now never be decided.
            self.outstanding.retain(|_, owner| *owner != id);
            self.reads.retain(|_, (owner, _)| *owner != id);
        }
    }

    /// Puts messages on the network, with the faults of the moment: drops, duplicates, delays,
    /// and a broadcast that reaches only some of its receivers.
    fn transmit(&mut self, messages: Vec<Envelope>) {
        let reached: Option<Vec<bool>> =
            (self.faults && messages.len() > 1 && self.rng.chance(self.cfg.partial_per_mille))
                .then(|| (0..self.cfg.nodes).map(|_| self.rng.chance(500)).collect());
        for envelope in messages {
            if self.faults && self.rng.chance(self.cfg.drop_per_mille) {
                continue;
            }
            if reached
                .as_ref()
                .is_some_and(|reached| !reached[envelope.to as usize])
            {
                continue;
            }
            let copies = if self.faults && self.rng.chance(self.cfg.dup_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let deliver_at = self.tick + 1 + self.rng.below(self.cfg.max_delay_ticks);
                self.network.push(InFlight {
                    deliver_at,
                    envelope: envelope.clone(),
                });
            }
        }
    }

    /// Drains a replica's outputs: persist, send, install, apply, with every check.
    fn drive(&mut self, id: NodeId) -> Check {
        let Some(replica) = self.nodes[id as usize].replica.as_mut() else {
            return Ok(());
        };
        let mut ready = replica.take_ready();
        // The early accepts leave before the step is synced, and the replica may die right then.
        let early = std::mem::take(&mut ready.early);
        let sent_early = !early.is_empty();
        self.report.early_accepts += early.len() as u64;
        self.transmit(early);
        if sent_early && self.faults && self.rng.chance(self.cfg.early_crash_per_mille) {
            self.report.early_crashes += 1;
            if self.trace {
                eprintln!("t{} replica {id} dies after its early accepts", self.tick);
            }
            self.crash_with(id, false);
            return Ok(());
        }
        let before = self.nodes[id as usize].storage.state.promised.clone();
        self.nodes[id as usize]
            .storage
            .write(&ready.persist)
            .map_err(|e| e.to_string())?;
        for (lane, old) in before {
            let new = self.nodes[id as usize].storage.state.promised[&lane];
            if new < old {
                return Err(format!(
                    "replica {id} lane {lane}: durable promise went back from {old} to {new}"
                ));
            }
        }
        let voted = ready.messages.iter().any(|e| {
            matches!(
                e.msg,
                Message::Promise(_) | Message::Accepted(_) | Message::HeartbeatAck(_)
            )
        });
        self.transmit(ready.messages);
        if let Some((slot, data)) = ready.snapshot {
            let app = App::decode(&data);
            if app.applied != slot {
                return Err(format!(
                    "replica {id}: snapshot for slot {slot} holds state of slot {}",
                    app.applied
                ));
            }
            if let Some(expected) = self.chain.get(&slot)
                && *expected != app.hash
            {
                return Err(format!(
                    "replica {id}: snapshot at slot {slot} disagrees with the decided log"
                ));
            }
            let node = &mut self.nodes[id as usize];
            if slot > node.app.applied {
                node.app = app;
            }
        }
        for (slot, value) in ready.decided {
            if self.trace {
                eprintln!("t{} replica {id} applies slot {slot}: {value:?}", self.tick);
            }
            self.apply(id, slot, value)?;
        }
        for cmd in ready.dropped.iter().chain(&ready.outcome_unknown) {
            self.outstanding.remove(&command_id(cmd));
            self.report.commands_dropped += 1;
        }
        for read in ready.reads {
            if let ReadResult::Ready { id: read_id, index } = read {
                let (_, before) = self
                    .reads
                    .remove(&read_id)
                    .ok_or_else(|| format!("replica {id} answered read {read_id} twice"))?;
                if index < before {
                    return Err(format!(
                        "linearizability: replica {id} answered read {read_id} at index {index}, \
                         but slot {before} was decided before the read began"
                    ));
                }
                self.report.reads_checked += 1;
            } else if let ReadResult::Failed { id: read_id } = read {
                self.reads.remove(&read_id);
            }
        }
        if voted && self.faults && self.rng.chance(self.cfg.wipe_after_vote_per_mille) {
            // The vote is in flight; the disk that recorded it is gone.
            self.wipe(id);
            return Ok(());
        }
        let app = self.nodes[id as usize].app;
        if let Some(replica) = self.nodes[id as usize].replica.as_mut()
            && ready.snapshot_wanted.is_some()
            && app.applied > replica.status().compacted
        {
            replica.compact(app.applied, app.encode());
            return self.drive(id);
        }
        Ok(())
    }

    fn apply(&mut self, id: NodeId, slot: Slot, value: Value) -> Check {
        let node = &mut self.nodes[id as usize];
        if slot <= node.app.applied {
            return Ok(()); // covered by an installed snapshot
        }
        if slot != node.app.applied + 1 {
            return Err(format!(
                "replica {id} applied slot {slot} after {}: a gap in its decided log",
                node.app.applied
            ));
        }
        match self.chosen.get(&slot) {
            Some(first) if *first != value => {
                return Err(format!(
                    "agreement: slot {slot} decided as {first:?} and as {value:?} (replica {id})"
                ));
            }
            Some(_) => {}
            None => {
                for cmd in value.commands() {
                    let cid = command_id(cmd);
                    if !self.proposed.contains_key(&cid) {
                        return Err(format!(
                            "validity: slot {slot} holds command {cid} that nobody proposed"
                        ));
                    }
                    if let Some(other) = self.decided_commands.insert(cid, slot) {
                        return Err(format!(
                            "command {cid} decided twice, in slots {other} and {slot}"
                        ));
                    }
                    self.outstanding.remove(&cid);
                    self.report.commands_decided += 1;
                }
                self.chosen.insert(slot, value.clone());
                self.report.decided_slots = self.report.decided_slots.max(slot);
            }
        }
        let node = &mut self.nodes[id as usize];
        node.app.hash = mix(node.app.hash, slot, &value);
        node.app.applied = slot;
        match self.chain.get(&slot) {
            Some(expected) if *expected != node.app.hash => Err(format!(
                "prefix consistency: replica {id} reached a different state at slot {slot}"
            )),
            Some(_) => Ok(()),
            None => {
                self.chain.insert(slot, node.app.hash);
                Ok(())
            }
        }
    }

    fn propose(&mut self, id: NodeId) -> Check {
        let count = 1 + self.rng.below(3);
        let first = self.next_command;
        let commands: Vec<Bytes> = (first..first + count)
            .map(|c| Bytes::copy_from_slice(&c.to_le_bytes()))
            .collect();
        let Some(replica) = self.nodes[id as usize].replica.as_mut() else {
            return Ok(());
        };
        match replica.propose(commands) {
            Ok(()) => {
                self.next_command += count;
                for c in first..first + count {
                    self.proposed.insert(c, id);
                    self.outstanding.insert(c, id);
                }
                // Sometimes left for the end of the tick, so proposals and messages that arrive
                // together are flushed together (every replica is driven after its tick).
                if self.rng.below(3) == 0 {
                    return Ok(());
                }
                self.drive(id)
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::Overloaded) => Ok(()),
        }
    }

    fn read(&mut self, id: NodeId) -> Check {
        let read_id = self.next_read;
        let Some(replica) = self.nodes[id as usize].replica.as_mut() else {
            return Ok(());
        };
        if replica.read_index(read_id).is_ok() {
            self.next_read += 1;
            self.reads.insert(read_id, (id, self.report.decided_slots));
            return self.drive(id);
        }
        Ok(())
    }

    fn deliver(&mut self) -> Check {
        let now = self.tick;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|m| m.deliver_at <= now);
        self.network = later;
        let mut due = due;
        // Random order within a tick: reordering on top of the random delays.
        for i in (1..due.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            due.swap(i, j);
        }
        // A replica sometimes takes several messages before it is driven, as the driver takes a
        // burst of inputs before one `take_ready`: what those inputs queued is flushed together.
        let mut undriven = std::collections::BTreeSet::new();
        for m in due {
            let Envelope { from, to, .. } = m.envelope;
            if self.blocked.contains(&(from, to)) {
                continue;
            }
            if let Some(replica) = self.nodes[to as usize].replica.as_mut() {
                if self.trace {
                    eprintln!("t{} deliver {from}->{to} {:?}", self.tick, m.envelope.msg);
                }
                replica.handle(m.envelope);
                self.report.messages_delivered += 1;
                if self.rng.below(3) == 0 {
                    undriven.insert(to);
                } else {
                    undriven.remove(&to);
                    self.drive(to)?;
                }
            }
        }
        for to in undriven {
            self.drive(to)?;
        }
        Ok(())
    }

    fn partition(&mut self) {
        let n = self.cfg.nodes;
        self.blocked.clear();
        self.report.partitions += 1;
        if self.trace {
            eprintln!("t{} partition", self.tick);
        }
        match self.rng.below(3) {
            0 => {
                // Symmetric split into two groups.
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a as usize] != side[b as usize] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            1 => {
                // One-way links: a hears nothing from b, b still hears a.
                for _ in 0..=self.rng.below(u64::from(n)) {
                    let a = self.rng.below(u64::from(n)) as NodeId;
                    let b = self.rng.below(u64::from(n)) as NodeId;
                    if a != b {
                        self.blocked.insert((b, a));
                    }
                }
            }
            _ => {
                // Bridge: two groups that cannot talk, and one node that talks to both.
                let bridge = self.rng.below(u64::from(n)) as NodeId;
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(500)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if a != bridge && b != bridge && side[a as usize] != side[b as usize] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
        }
    }

    fn check_durable_state(&self) -> Check {
        for (id, node) in self.nodes.iter().enumerate() {
            if let Some(replica) = &node.replica {
                for (lane, stored) in &node.storage.state.promised {
                    if replica.promised(*lane) < *stored {
                        return Err(format!(
                            "replica {id} lane {lane}: promise {} below its durable {stored}",
                            replica.promised(*lane)
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Check {
        self.tick += 1;
        let n = u64::from(self.cfg.nodes);
        if self.faults {
            if self.rng.chance(self.cfg.crash_per_mille) {
                let id = self.rng.below(n) as NodeId;
                self.crash(id);
            }
            if self.rng.chance(self.cfg.wipe_per_mille) {
                let id = self.rng.below(n) as NodeId;
                self.wipe(id);
            }
            for id in 0..self.cfg.nodes {
                if self.nodes[id as usize].replica.is_none()
                    && self.rng.chance(self.cfg.restart_per_mille)
                {
                    self.start(id)?;
                }
            }
            if self.rng.chance(self.cfg.partition_per_mille) {
                self.partition();
            } else if !self.blocked.is_empty() && self.rng.chance(self.cfg.heal_per_mille) {
                self.blocked.clear();
            }
            for id in 0..self.cfg.nodes {
                if self.rng.chance(self.cfg.propose_per_mille) {
                    self.propose(id)?;
                }
                if self.cfg.mode == Mode::Leader && self.rng.chance(self.cfg.read_per_mille) {
                    self.read(id)?;
                }
            }
        }
        self.deliver()?;
        for id in 0..self.cfg.nodes {
            if let Some(replica) = self.nodes[id as usize].replica.as_mut() {
                replica.tick();
                self.drive(id)?;
            }
        }
        self.check_durable_state()
    }

    fn settled(&self, wanted: &[u64]) -> bool {
        let all_decided = wanted.iter().all(|c| self.decided_commands.contains_key(c))
            && self.outstanding.is_empty();
        let top = self.report.decided_slots;
        all_decided && self.nodes.iter().all(|n| n.app.applied == top)
    }

    /// Runs the faulty phase, heals, and waits for liveness.
    pub fn run(mut self) -> Result<SimReport, SimFailure> {
        let result = self.run_inner();
        result
            .map(|()| self.report.clone())
            .map_err(|message| SimFailure {
                seed: self.cfg.seed,
                tick: self.tick,
                message,
                replay: self.cfg.replay_command(),
            })
    }

    fn run_inner(&mut self) -> Check {
        for id in 0..self.cfg.nodes {
            self.start(id)?;
        }
        for _ in 0..self.cfg.fault_ticks {
            self.step()?;
        }
        // Heal: everyone up, a reliable network (delays remain), no more crashes.
        self.faults = false;
        self.blocked.clear();
        for id in 0..self.cfg.nodes {
            if self.nodes[id as usize].replica.is_none() {
                self.start(id)?;
            }
        }
        let healed_at = self.tick;
        let mut wanted = Vec::new();
        let mut to_place: u64 = match self.cfg.mode {
            Mode::Leader => 3,
            Mode::Leaderless => u64::from(self.cfg.nodes),
        };
        let mut next_node = 0;
        while self.tick < healed_at + self.cfg.settle_ticks {
            // A command handed back (dropped) is retried, as a client would.
            let before = wanted.len();
            wanted.retain(|c| {
                self.decided_commands.contains_key(c) || self.outstanding.contains_key(c)
            });
            to_place += (before - wanted.len()) as u64;
            if to_place > 0 {
                // New commands after healing: at each replica (leaderless) or wherever the
                // leader is (leader mode), like a client retrying until it finds it.
                let id = next_node % self.cfg.nodes;
                next_node += 1;
                let before = self.next_command;
                self.propose(id)?;
                if self.next_command > before {
                    wanted.extend(before..self.next_command);
                    to_place -= 1;
                }
            }
            self.step()?;
            if to_place == 0 && self.settled(&wanted) {
                self.report.settle_ticks_used = self.tick - healed_at;
                return Ok(());
            }
        }
        let stuck: Vec<_> = wanted
            .iter()
            .filter(|c| !self.decided_commands.contains_key(c))
            .collect();
        let applied: Vec<_> = self.nodes.iter().map(|n| n.app.applied).collect();
        let statuses: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|n| {
                n.replica
                    .as_ref()
                    .map(|r| format!("{:?} [{}]", r.status(), r.describe_lanes()))
            })
            .collect();
        Err(format!(
            "liveness: {} ticks after healing, commands {stuck:?} undecided, {} earlier commands outstanding ({:?}), applied per replica {applied:?}, top slot {}, statuses {statuses:?}",
            self.cfg.settle_ticks,
            self.outstanding.len(),
            self.outstanding.iter().take(5).collect::<Vec<_>>(),
            self.report.decided_slots
        ))
    }
}

/// Runs one simulation. A panic inside the core (one of its production assertions) is a failure
/// too, reported with the seed that replays it.
pub fn run(cfg: SimConfig) -> Result<SimReport, SimFailure> {
    let (seed, replay) = (cfg.seed, cfg.replay_command());
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(cfg).run())).unwrap_or_else(
        |panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            Err(SimFailure {
                seed,
                tick: 0,
                message: format!("assertion in the core: {message}"),
                replay,
            })
        },
    )
}

/// Runs `count` seeds from `first_seed`; returns the first failure.
pub fn run_seeds(
    first_seed: u64,
    count: u64,
    nodes: u32,
    mode: Mode,
) -> Result<Vec<SimReport>, SimFailure> {
    (first_seed..first_seed + count)
        .map(|seed| run(SimConfig::standard(seed, nodes, mode)))
        .collect()
}
