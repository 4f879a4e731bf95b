//! Durable acceptor state: promised ballots, accepted and decided entries, the snapshot.
//!
//! The core emits [`PersistOp`]s; the driver writes each batch atomically and syncs it before it
//! sends the messages that depend on it. [`Storage::load`] gives back everything written, so a
//! restarted replica never breaks a promise it made.

//!
//! [`MemStorage`] keeps it in memory (the simulator, tests); [`RedbStorage`] in a redb file with
//! snapshots beside it (the `paxos` process, feature `runtime`).

#[cfg(feature = "runtime")]
mod redb;

#[cfg(feature = "runtime")]
pub use self::redb::{RedbStorage, snapshot_dir, stage_snapshot};

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::Value;

/// One change to durable state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PersistOp {
    /// The acceptor promised `ballot` in `lane`.
    Promise {
        /// Lane.
        lane: u32,
        /// Ballot.
        ballot: Ballot,
    },
    /// The acceptor accepted `value` at `ballot` for `slot`.
    Accept {
        /// Slot.
        slot: Slot,
        /// Ballot.
        ballot: Ballot,
        /// Value.
        value: Value,
    },
    /// `value` is chosen for `slot`.
    Decide {
        /// Slot.
        slot: Slot,
        /// Value.
        value: Value,
    },
    /// Every slot up to `slot` is covered by the application snapshot `data`; drop them.
    Snapshot {
        /// Last covered slot.
        slot: Slot,
        /// Application state.
        data: Bytes,
    },
    /// `node` is known to be in `incarnation` (its own, when `node` is this replica): messages
    /// of its earlier incarnations are never counted again, even after a restart.
    Incarnation {
        /// The replica.
        node: NodeId,
        /// Its incarnation; only ever raised.
        incarnation: u64,
    },
}

/// A slot's durable entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Ballot it was accepted at (default for entries learned decided).
    pub ballot: Ballot,
    /// Value.
    pub value: Value,
    /// Known chosen.
    pub decided: bool,
}

/// Everything a replica persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistentState {
    /// Promised ballot per lane (missing lanes: none).
    pub promised: BTreeMap<u32, Ballot>,
    /// Entries above the snapshot.
    pub log: BTreeMap<Slot, StoredEntry>,
    /// The latest snapshot.
    pub snapshot: Option<(Slot, Bytes)>,
    /// The crash vector: the highest incarnation known of each replica (missing: 0).
    pub incarnations: BTreeMap<NodeId, u64>,
}

impl PersistentState {
    /// Nothing was ever written: a new replica, or one that lost its data.
    pub fn is_empty(&self) -> bool {
        self.promised.is_empty()
            && self.log.is_empty()
            && self.snapshot.is_none()
            && self.incarnations.is_empty()
    }

    /// Applies ops in order (the reference semantics every backend follows).
    pub fn apply(&mut self, ops: &[PersistOp]) {
        for op in ops {
            match op {
                PersistOp::Promise { lane, ballot } => {
                    self.promised.insert(*lane, *ballot);
                }
                PersistOp::Accept {
                    slot,
                    ballot,
                    value,
                } => {
                    if self.covered(*slot) {
                        continue;
                    }
                    let entry = self.log.entry(*slot).or_insert_with(|| StoredEntry {
                        ballot: *ballot,
                        value: value.clone(),
                        decided: false,
                    });
                    if !entry.decided {
                        entry.ballot = *ballot;
                        entry.value = value.clone();
                    }
                }
                PersistOp::Decide { slot, value } => {
                    if self.covered(*slot) {
                        continue;
                    }
                    let entry = self.log.entry(*slot).or_insert_with(|| StoredEntry {
                        ballot: Ballot::default(),
                        value: value.clone(),
                        decided: true,
                    });
                    entry.value = value.clone();
                    entry.decided = true;
                }
                PersistOp::Snapshot { slot, data } => {
                    if self.snapshot.as_ref().is_some_and(|(s, _)| s >= slot) {
                        continue;
                    }
                    self.log = self.log.split_off(&(slot + 1));
                    self.snapshot = Some((*slot, data.clone()));
                }
                PersistOp::Incarnation { node, incarnation } => {
                    let known = self.incarnations.entry(*node).or_default();
                    *known = (*known).max(*incarnation);
                }
            }
        }
    }

    fn covered(&self, slot: Slot) -> bool {
        self.snapshot.as_ref().is_some_and(|(s, _)| slot <= *s)
    }
}

/// A storage failure: fatal for the replica.
#[derive(Debug, thiserror::Error)]
#[error("paxos storage failure: {0}")]
pub struct StorageError(pub String);

/// Durable acceptor state.
pub trait Storage {
    /// Everything written so far.
    fn load(&self) -> Result<PersistentState, StorageError>;
    /// Writes `ops` atomically and durably (synced when this returns).
    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError>;
}

/// In-memory storage for tests and the simulator.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// The state "on disk".
    pub state: PersistentState,
}

impl Storage for MemStorage {
    fn load(&self) -> Result<PersistentState, StorageError> {
        Ok(self.state.clone())
    }

    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.state.apply(ops);
        Ok(())
    }
}
