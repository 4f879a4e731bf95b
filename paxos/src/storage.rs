//! Durable acceptor state: promised ballots, accepted and decided entries, the snapshot.
//!
//! The core emits [`PersistOp`]s; the driver writes each batch atomically and syncs it before it
//! sends the messages that depend on it. [`Storage::load`] gives back everything written, so a
//! restarted replica never breaks a promise it made.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::ballot::{Ballot, Slot};
use crate::messages::Value;

/// One change to durable state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl PersistentState {
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

const PROMISED: TableDefinition<u32, &[u8]> = TableDefinition::new("promised");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");

fn err(e: impl std::fmt::Display) -> StorageError {
    StorageError(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(value).map_err(err)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(err)
}

/// File-backed storage in a redb database: each `write` is one fsync'd transaction.
pub struct RedbStorage {
    db: Database,
}

impl RedbStorage {
    /// Opens or creates the database file.
    pub fn open(path: &Path) -> Result<RedbStorage, StorageError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(PROMISED).map_err(err)?;
            txn.open_table(LOG).map_err(err)?;
            txn.open_table(SNAPSHOT).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(RedbStorage { db })
    }
}

impl Storage for RedbStorage {
    fn load(&self) -> Result<PersistentState, StorageError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut state = PersistentState::default();
        for item in txn.open_table(PROMISED).map_err(err)?.iter().map_err(err)? {
            let (lane, ballot) = item.map_err(err)?;
            state.promised.insert(lane.value(), decode(ballot.value())?);
        }
        for item in txn.open_table(LOG).map_err(err)?.iter().map_err(err)? {
            let (slot, entry) = item.map_err(err)?;
            state.log.insert(slot.value(), decode(entry.value())?);
        }
        if let Some(item) = txn.open_table(SNAPSHOT).map_err(err)?.last().map_err(err)? {
            let (slot, data) = item;
            state.snapshot = Some((slot.value(), Bytes::copy_from_slice(data.value())));
        }
        Ok(state)
    }

    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(err)?;
        // A batch that only records decisions gates no message (decided is a fact that peers
        // re-teach after a crash), so it is written without its own fsync; the next promise or
        // accept commits it durably. Promises, accepts and snapshots are always synced.
        if ops.iter().all(|op| matches!(op, PersistOp::Decide { .. })) {
            txn.set_durability(redb::Durability::None).map_err(err)?;
        }
        {
            let mut promised = txn.open_table(PROMISED).map_err(err)?;
            let mut log = txn.open_table(LOG).map_err(err)?;
            let mut snapshot = txn.open_table(SNAPSHOT).map_err(err)?;
            let mut snap_slot = snapshot.last().map_err(err)?.map(|(s, _)| s.value());
            for op in ops {
                match op {
                    PersistOp::Promise { lane, ballot } => {
                        promised
                            .insert(*lane, encode(ballot)?.as_slice())
                            .map_err(err)?;
                    }
                    PersistOp::Accept {
                        slot,
                        ballot,
                        value,
                    } => {
                        if snap_slot.is_some_and(|s| *slot <= s) {
                            continue;
                        }
                        let decided = match log.get(*slot).map_err(err)? {
                            Some(old) => decode::<StoredEntry>(old.value())?.decided,
                            None => false,
                        };
                        if !decided {
                            let entry = StoredEntry {
                                ballot: *ballot,
                                value: value.clone(),
                                decided: false,
                            };
                            log.insert(*slot, encode(&entry)?.as_slice()).map_err(err)?;
                        }
                    }
                    PersistOp::Decide { slot, value } => {
                        if snap_slot.is_some_and(|s| *slot <= s) {
                            continue;
                        }
                        let ballot = match log.get(*slot).map_err(err)? {
                            Some(old) => decode::<StoredEntry>(old.value())?.ballot,
                            None => Ballot::default(),
                        };
                        let entry = StoredEntry {
                            ballot,
                            value: value.clone(),
                            decided: true,
                        };
                        log.insert(*slot, encode(&entry)?.as_slice()).map_err(err)?;
                    }
                    PersistOp::Snapshot { slot, data } => {
                        if snap_slot.is_some_and(|s| s >= *slot) {
                            continue;
                        }
                        log.retain_in(..=*slot, |_, _| false).map_err(err)?;
                        snapshot.retain(|_, _| false).map_err(err)?;
                        snapshot.insert(*slot, data.as_ref()).map_err(err)?;
                        snap_slot = Some(*slot);
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batch(text: &str) -> Value {
        Value::Batch(Arc::new(vec![Bytes::copy_from_slice(text.as_bytes())]))
    }

    fn ops() -> Vec<Vec<PersistOp>> {
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
            ],
        ]
    }

    #[test]
    fn redb_storage_matches_the_reference_semantics_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paxos.redb");
        let mut reference = PersistentState::default();
        {
            let mut storage = RedbStorage::open(&path).unwrap();
            for batch in ops() {
                storage.write(&batch).unwrap();
                reference.apply(&batch);
                assert_eq!(storage.load().unwrap(), reference);
            }
        }
        let reopened = RedbStorage::open(&path).unwrap();
        let state = reopened.load().unwrap();
        assert_eq!(state, reference);
        assert_eq!(state.promised[&0], Ballot::new(1, 2));
        assert_eq!(state.snapshot, Some((2, Bytes::from_static(b"snap"))));
        assert_eq!(
            state.log.keys().copied().collect::<Vec<_>>(),
            vec![3],
            "slots <= 2 compacted"
        );
    }

    #[test]
    fn decided_entries_are_never_overwritten_by_late_accepts() {
        let mut state = PersistentState::default();
        state.apply(&ops()[0]);
        state.apply(&ops()[1]);
        assert_eq!(state.log[&1].value, batch("a"));
        assert!(state.log[&1].decided);
    }
}
