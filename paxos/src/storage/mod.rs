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
mod wal;

#[cfg(feature = "runtime")]
pub use self::redb::{RedbStorage, snapshot_dir, stage_snapshot};
#[cfg(feature = "runtime")]
pub use self::wal::{REWRITE_BYTES, WalStorage};

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

/// Decisions held back by [`DeferredDecisions`] before they are written on their own.
pub const MAX_DEFERRED_DECISIONS: usize = 4_096;

/// Storage that writes a step recording only decisions with the next step that must be synced
/// (a promise, an accept, a snapshot), in the same transaction and in the same order, instead
/// of in a transaction of its own.
///
/// A decision gates no message: a replica that lost one after a crash learns it again from its
/// peers (the same reason the redb backend never synced them). In steady state every round
/// produces one step of accepts and one of decisions, so this halves the transactions per round.
/// What is held back is bounded by [`MAX_DEFERRED_DECISIONS`], and written (not synced) when
/// the storage is dropped on a clean shutdown.
pub struct DeferredDecisions {
    inner: Box<dyn Storage + Send>,
    held: Vec<PersistOp>,
}

impl DeferredDecisions {
    /// Defers the decisions written to `inner`.
    pub fn new(inner: Box<dyn Storage + Send>) -> DeferredDecisions {
        DeferredDecisions {
            inner,
            held: Vec::new(),
        }
    }

    /// Decisions written but not yet passed on.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

impl Storage for DeferredDecisions {
    fn load(&self) -> Result<PersistentState, StorageError> {
        let mut state = self.inner.load()?;
        state.apply(&self.held);
        Ok(state)
    }

    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        if ops.iter().all(|op| matches!(op, PersistOp::Decide { .. })) {
            self.held.extend_from_slice(ops);
            if self.held.len() < MAX_DEFERRED_DECISIONS {
                return Ok(());
            }
            let held = std::mem::take(&mut self.held);
            return self.inner.write(&held);
        }
        if self.held.is_empty() {
            return self.inner.write(ops);
        }
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(ops);
        self.inner.write(&all)
    }
}

impl Drop for DeferredDecisions {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            let written = self.inner.write(&held);
            #[cfg(feature = "runtime")]
            if let Err(err) = written {
                tracing::warn!(%err, "decisions not written at shutdown (peers re-teach them)");
            }
            #[cfg(not(feature = "runtime"))]
            drop(written);
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Memory storage that records every batch it was asked to write.
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<(MemStorage, Vec<Vec<PersistOp>>)>>);

    impl Storage for Recording {
        fn load(&self) -> Result<PersistentState, StorageError> {
            self.0.lock().unwrap().0.load()
        }

        fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
            let mut inner = self.0.lock().unwrap();
            inner.0.write(ops)?;
            inner.1.push(ops.to_vec());
            Ok(())
        }
    }

    impl Recording {
        fn writes(&self) -> Vec<Vec<PersistOp>> {
            self.0.lock().unwrap().1.clone()
        }
    }

    /// Steps exercising every operation: promises, accepts, a decision, a late accept for a
    /// decided slot, a snapshot, incarnations raised and not lowered.
    #[cfg(feature = "runtime")]
    pub(super) fn sample_steps() -> Vec<Vec<PersistOp>> {
        vec![
            vec![
                PersistOp::Promise {
                    lane: 0,
                    ballot: Ballot::new(1, 2),
                },
                PersistOp::Accept {
                    slot: 1,
                    ballot: Ballot::new(1, 2),
                    value: batch("a"),
                },
                PersistOp::Accept {
                    slot: 2,
                    ballot: Ballot::new(1, 2),
                    value: batch("b"),
                },
            ],
            vec![
                PersistOp::Decide {
                    slot: 1,
                    value: batch("a"),
                },
                PersistOp::Accept {
                    slot: 1,
                    ballot: Ballot::new(2, 0),
                    value: batch("z"),
                },
                PersistOp::Accept {
                    slot: 3,
                    ballot: Ballot::new(2, 0),
                    value: Value::Noop,
                },
                PersistOp::Promise {
                    lane: 1,
                    ballot: Ballot::new(0, 1),
                },
                PersistOp::Incarnation {
                    node: 2,
                    incarnation: 3,
                },
                PersistOp::Accept {
                    slot: 4,
                    ballot: Ballot {
                        incarnation: 3,
                        ..Ballot::new(4, 2)
                    },
                    value: batch("reborn"),
                },
            ],
            vec![
                PersistOp::Decide {
                    slot: 2,
                    value: batch("b"),
                },
                PersistOp::Snapshot {
                    slot: 2,
                    data: Bytes::from_static(b"snap"),
                },
                PersistOp::Accept {
                    slot: 2,
                    ballot: Ballot::new(3, 0),
                    value: batch("late"),
                },
                PersistOp::Incarnation {
                    node: 2,
                    incarnation: 1,
                },
            ],
        ]
    }

    #[cfg(feature = "runtime")]
    fn batch(text: &str) -> Value {
        value(text)
    }

    fn value(text: &str) -> Value {
        Value::Batch(std::sync::Arc::new(vec![Bytes::copy_from_slice(
            text.as_bytes(),
        )]))
    }

    fn decide(slot: Slot) -> PersistOp {
        PersistOp::Decide {
            slot,
            value: value(&slot.to_string()),
        }
    }

    fn accept(slot: Slot) -> PersistOp {
        PersistOp::Accept {
            slot,
            ballot: Ballot::new(1, 0),
            value: value(&slot.to_string()),
        }
    }

    #[test]
    fn decisions_are_written_with_the_next_step_that_is_synced_in_order() {
        let inner = Recording::default();
        let mut storage = DeferredDecisions::new(Box::new(inner.clone()));
        let steps = [
            vec![accept(1)],
            vec![decide(1)],
            vec![accept(2)],
            vec![decide(2)],
        ];
        let mut reference = PersistentState::default();
        for step in &steps {
            storage.write(step).unwrap();
            reference.apply(step);
        }
        assert_eq!(
            inner.writes(),
            vec![vec![accept(1)], vec![decide(1), accept(2)]],
            "one transaction per synced step, the decision before it"
        );
        assert_eq!(storage.held(), 1);
        assert_eq!(
            storage.load().unwrap(),
            reference,
            "load sees held decisions"
        );
        drop(storage);
        assert_eq!(
            inner.load().unwrap(),
            reference,
            "dropping writes what was held"
        );
    }

    #[test]
    fn held_decisions_are_bounded() {
        let inner = Recording::default();
        let mut storage = DeferredDecisions::new(Box::new(inner.clone()));
        for slot in 1..=MAX_DEFERRED_DECISIONS as Slot {
            storage.write(&[decide(slot)]).unwrap();
        }
        assert_eq!(storage.held(), 0);
        let writes = inner.writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].len(), MAX_DEFERRED_DECISIONS);
    }
}
