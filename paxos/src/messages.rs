//! The protocol messages, one documented struct each, wrapped in an [`Envelope`].
//!
//! Paper references: Lamport, "Paxos Made Simple" (2001), section 2.2 (phases 1a/1b/2a/2b) and
//! section 3 (Multi-Paxos: one phase 1 for all instances); Mao, Junqueira, Marzullo, "Mencius:
//! Building Efficient Replicated State Machines for WANs" (OSDI 2008), section 4 (skips and
//! revocation).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ballot::{Ballot, NodeId, Slot};

/// One client command, opaque to Paxos.
pub type Command = Bytes;

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// Nothing: a skipped or recovered-empty slot.
    Noop,
    /// A batch of commands, applied in order.
    Batch(Arc<Vec<Command>>),
}

impl Value {
    /// Commands in the slot.
    pub fn commands(&self) -> &[Command] {
        match self {
            Value::Noop => &[],
            Value::Batch(commands) => commands,
        }
    }
}

/// A message with its sender and receiver.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Payload.
    pub msg: Message,
    /// The sender's crash vector: the incarnation it knows of every replica, its own included,
    /// indexed by node id; missing trailing entries are 0, so a cluster that never lost a disk
    /// sends an empty vector. A receiver drops a message whose sender is older than the
    /// incarnation it knows, or that was addressed to an older incarnation of itself, and stops
    /// counting votes of a replica once it learns of a newer incarnation (see `core`).
    pub incarnations: Vec<u64>,
}

impl Envelope {
    /// A message between replicas that never lost their storage (every incarnation 0).
    pub fn new(from: NodeId, to: NodeId, msg: Message) -> Envelope {
        Envelope {
            from,
            to,
            msg,
            incarnations: Vec::new(),
        }
    }

    /// The incarnation of `node` this message's sender knows.
    pub fn incarnation_of(&self, node: NodeId) -> u64 {
        self.incarnations.get(node as usize).copied().unwrap_or(0)
    }
}

/// Every protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a.
    Prepare(Prepare),
    /// Phase 1b.
    Promise(Promise),
    /// Phase 2a.
    Accept(Accept),
    /// Phase 2b.
    Accepted(Accepted),
    /// A refusal: a higher promise, or the receiver is too far behind to be answered.
    Nack(Nack),
    /// Commit notification.
    Decide(Decide),
    /// Liveness and leadership beacon.
    Heartbeat(Heartbeat),
    /// Answer to a heartbeat that carries a read sequence (read-index confirmation).
    HeartbeatAck(HeartbeatAck),
    /// Request for decided entries.
    CatchUp(CatchUp),
    /// Decided entries or a snapshot.
    CatchUpReply(CatchUpReply),
    /// A replica that lost its state asks what it may have promised and how far the log went.
    RecoveryQuery,
    /// The answer to a [`Message::RecoveryQuery`].
    RecoveryReply(RecoveryReply),
}

impl Message {
    /// Every [`Message::kind`], for metrics that must exist before the first message.
    pub const KINDS: [&'static str; 12] = [
        "prepare",
        "promise",
        "accept",
        "accepted",
        "nack",
        "decide",
        "heartbeat",
        "heartbeat_ack",
        "catch_up",
        "catch_up_reply",
        "recovery_query",
        "recovery_reply",
    ];

    /// The message's name, a low-cardinality metric label.
    pub fn kind(&self) -> &'static str {
        Message::KINDS[self.kind_index()]
    }

    /// The position of [`Message::kind`] in [`Message::KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Message::Prepare(_) => 0,
            Message::Promise(_) => 1,
            Message::Accept(_) => 2,
            Message::Accepted(_) => 3,
            Message::Nack(_) => 4,
            Message::Decide(_) => 5,
            Message::Heartbeat(_) => 6,
            Message::HeartbeatAck(_) => 7,
            Message::CatchUp(_) => 8,
            Message::CatchUpReply(_) => 9,
            Message::RecoveryQuery => 10,
            Message::RecoveryReply(_) => 11,
        }
    }
}

/// Phase 1a for every slot of `lane` from `from_slot` on (Multi-Paxos: one prepare covers all
/// future instances).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prepare {
    /// Lane (0 in leader mode).
    pub lane: u32,
    /// The candidate's ballot.
    pub ballot: Ballot,
    /// First slot the candidate does not know to be decided.
    pub from_slot: Slot,
}

/// What an acceptor holds for one slot, reported in a promise.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PromiseEntry {
    /// Slot.
    pub slot: Slot,
    /// Ballot the value was accepted at (meaningless when `decided`).
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
    /// The acceptor knows this value is chosen.
    pub decided: bool,
}

/// Phase 1b: the acceptor will accept nothing below `ballot` in this lane and reports every value
/// it accepted in the lane at or after the prepare's `from_slot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Promise {
    /// Lane.
    pub lane: u32,
    /// The promised ballot (the prepare's).
    pub ballot: Ballot,
    /// Accepted and decided values of the lane at or after `from_slot`.
    pub entries: Vec<PromiseEntry>,
    /// The acceptor's contiguous decided index.
    pub decided: Slot,
}

/// Phase 2a: accept these values at `ballot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Accept {
    /// Lane.
    pub lane: u32,
    /// The proposer's ballot.
    pub ballot: Ballot,
    /// Slots of the lane and their values.
    pub entries: Vec<(Slot, Value)>,
    /// Every slot of the lane up to this one is decided (piggybacked commit).
    pub decided_up_to: Slot,
}

/// Phase 2b: the sender accepted these slots at `ballot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Accepted {
    /// Lane.
    pub lane: u32,
    /// The ballot accepted.
    pub ballot: Ballot,
    /// Slots accepted.
    pub slots: Vec<Slot>,
}

/// Why a prepare or accept was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NackReason {
    /// The acceptor promised a higher ballot (carried in the nack).
    HigherBallot,
    /// The candidate asked about slots the acceptor has compacted or that are too many to send:
    /// it must catch up first.
    Behind,
}

/// A refusal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Nack {
    /// Lane.
    pub lane: u32,
    /// The ballot the message was sent with.
    pub ballot: Ballot,
    /// The acceptor's promise in the lane.
    pub promised: Ballot,
    /// Why.
    pub reason: NackReason,
    /// The acceptor's contiguous decided index.
    pub decided: Slot,
}

/// Commit: every slot of `lane` up to `up_to` is decided; a receiver that accepted such a slot at
/// `ballot` holds the chosen value (the leader proposes one value per slot per ballot).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decide {
    /// Lane.
    pub lane: u32,
    /// The deciding leader's ballot.
    pub ballot: Ballot,
    /// Last decided slot of the lane's decided prefix.
    pub up_to: Slot,
}

/// A lane a heartbeat's sender leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LaneClaim {
    /// Lane.
    pub lane: u32,
    /// The sender's ballot there.
    pub ballot: Ballot,
    /// The lane's decided prefix, as in [`Decide`].
    pub decided_up_to: Slot,
}

/// Sent every `heartbeat_ticks`: the sender is alive, leads these lanes, has decided this much,
/// and has seen slots proposed up to `frontier`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Lanes the sender leads.
    pub leading: Vec<LaneClaim>,
    /// The sender's contiguous decided index.
    pub decided: Slot,
    /// Highest slot the sender has seen proposed.
    pub frontier: Slot,
    /// Read-index round (0: none); acknowledged by [`HeartbeatAck`].
    pub read_seq: u64,
}

/// "You are still my leader in `lane` at `ballot`", for read round `read_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Lane.
    pub lane: u32,
    /// The leader's ballot.
    pub ballot: Ballot,
    /// Echoed read round.
    pub read_seq: u64,
}

/// Send me decided entries from `from_slot` on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CatchUp {
    /// First slot wanted.
    pub from_slot: Slot,
}

/// Decided entries (consecutive, from the requested slot), or a snapshot first when the
/// requested slots were compacted away.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CatchUpReply {
    /// Application snapshot covering every slot up to its slot.
    pub snapshot: Option<(Slot, Bytes)>,
    /// Decided entries.
    pub entries: Vec<(Slot, Value)>,
}

/// What a replica with intact state reports to one that is recovering.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecoveryReply {
    /// The incarnation of the asker this replica knew *before* the query (the query's envelope
    /// carries the incarnation the asker wants). Not below the wanted one: an earlier life or
    /// attempt used it, and the asker must try again above it.
    pub known: u64,
    /// Promised ballot per lane.
    pub promised: Vec<Ballot>,
    /// Contiguous decided index.
    pub decided: Slot,
    /// Highest slot seen proposed.
    pub frontier: Slot,
}
