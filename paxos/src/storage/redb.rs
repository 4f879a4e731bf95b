//! Acceptor state in a redb file, as versions before the log (`wal.rs`) kept it: read once, at
//! the first start of a newer version, to carry it over; its snapshot-file helpers are shared.
//! Its write path stays so tests can make such a database.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{PersistOp, PersistentState, Storage, StorageError, StoredEntry};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::messages::Value;

const PROMISED: TableDefinition<u32, &[u8]> = TableDefinition::new("promised");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Snapshots written inside the database by earlier versions (read, then replaced by a file).
const SNAPSHOT: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");
/// The current snapshot: its slot and byte length; the bytes are in a file of the snapshot folder.
const SNAPSHOT_FILE: TableDefinition<u64, u64> = TableDefinition::new("snapshot_file");
/// The crash vector: node id -> highest incarnation known.
const INCARNATIONS: TableDefinition<u32, u64> = TableDefinition::new("incarnations");
/// `"format"` -> the layout version of the promised and log tables.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Version 2: ballots carry an incarnation. Version 1 (no `meta` table) is migrated on open.
const FORMAT: u64 = 2;

/// A ballot as version 1 stored it.
#[derive(Deserialize)]
struct BallotV1 {
    round: u64,
    node: NodeId,
}

/// A log entry as version 1 stored it.
#[derive(Deserialize)]
struct StoredEntryV1 {
    ballot: BallotV1,
    value: Value,
    decided: bool,
}

impl From<BallotV1> for Ballot {
    fn from(b: BallotV1) -> Ballot {
        Ballot::new(b.round, b.node)
    }
}

/// Rewrites a version 1 database in the current layout, in the transaction that opens it.
fn migrate(txn: &redb::WriteTransaction) -> Result<(), StorageError> {
    let mut meta = txn.open_table(META).map_err(err)?;
    match meta.get("format").map_err(err)?.map(|v| v.value()) {
        Some(FORMAT) => return Ok(()),
        Some(other) => {
            return Err(err(format!(
                "paxos database layout {other} is newer than this binary's {FORMAT}"
            )));
        }
        None => {}
    }
    let mut promised = txn.open_table(PROMISED).map_err(err)?;
    let old: Vec<(u32, Ballot)> = promised
        .iter()
        .map_err(err)?
        .map(|item| {
            let (lane, bytes) = item.map_err(err)?;
            Ok((lane.value(), decode::<BallotV1>(bytes.value())?.into()))
        })
        .collect::<Result<_, StorageError>>()?;
    for (lane, ballot) in old {
        promised
            .insert(lane, encode(&ballot)?.as_slice())
            .map_err(err)?;
    }
    let mut log = txn.open_table(LOG).map_err(err)?;
    let old: Vec<(Slot, StoredEntry)> = log
        .iter()
        .map_err(err)?
        .map(|item| {
            let (slot, bytes) = item.map_err(err)?;
            let e: StoredEntryV1 = decode(bytes.value())?;
            let entry = StoredEntry {
                ballot: e.ballot.into(),
                value: e.value,
                decided: e.decided,
            };
            Ok((slot.value(), entry))
        })
        .collect::<Result<_, StorageError>>()?;
    for (slot, entry) in old {
        log.insert(slot, encode(&entry)?.as_slice()).map_err(err)?;
    }
    meta.insert("format", FORMAT).map_err(err)?;
    Ok(())
}

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
///
/// Application snapshots (megabytes: every account and retained idempotency record) live in
/// files of a folder beside the database, named by slot; the database records which one is
/// current. A snapshot can so be written and synced by [`stage_snapshot`] outside the driver,
/// which then only records it and drops the covered log entries: writing ten megabytes inside
/// the driver's transaction stalled every commit of the replica for 100-250 ms.
pub struct RedbStorage {
    db: Database,
    snapshots: PathBuf,
    /// Slot of the recorded snapshot (in the file table, or the legacy table).
    snap_slot: Option<Slot>,
}

/// The snapshot folder of the database at `db_path`.
pub fn snapshot_dir(db_path: &Path) -> PathBuf {
    db_path.with_extension("snapshots")
}

pub(super) fn snapshot_file(dir: &Path, slot: Slot) -> PathBuf {
    dir.join(format!("{slot:020}.snapshot"))
}

fn snapshot_slot(file: &Path) -> Option<Slot> {
    let name = file.file_name()?.to_str()?;
    name.strip_suffix(".snapshot")?.parse().ok()
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Bytes of a snapshot written between two syncs while staging it.
const STAGE_CHUNK_BYTES: usize = 4 << 20;

/// Writes the snapshot of `slot` into the snapshot folder `dir` (see [`snapshot_dir`]) and syncs
/// it, so that a later [`PersistOp::Snapshot`] for the same slot only has to record it. The
/// state at a slot is the same on every replica and at every time, so a staged file is the
/// snapshot of its slot whoever wrote it.
pub fn stage_snapshot(dir: &Path, slot: Slot, data: &[u8]) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(err)?;
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = snapshot_file(dir, slot);
    // Its own temporary name, so that two writers of one slot never write into one file.
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    // Synced a few megabytes at a time: on ext4 (ordered data) an fsync of the driver's small
    // transaction also waits for whatever file data is dirty, so a whole snapshot written at
    // once would still stall commits while the kernel flushed tens of megabytes.
    for chunk in data.chunks(STAGE_CHUNK_BYTES) {
        file.write_all(chunk).map_err(err)?;
        file.sync_data().map_err(err)?;
    }
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(err)?;
    sync_dir(dir)
}

pub(super) fn staged(dir: &Path, slot: Slot, len: usize) -> bool {
    std::fs::metadata(snapshot_file(dir, slot)).is_ok_and(|m| m.len() == len as u64)
}

/// Deletes snapshot files that are not `keep`: all of them (`newer_too`, when nothing else runs),
/// or only those of older slots (files of newer slots may be staged right now).
pub(super) fn remove_snapshots(dir: &Path, keep: Option<Slot>, newer_too: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = match snapshot_slot(&path) {
            Some(slot) => match keep {
                Some(keep) => slot < keep || (newer_too && slot > keep),
                None => newer_too,
            },
            // Half-written files of a crashed stage.
            None => newer_too,
        };
        if stale {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl RedbStorage {
    /// Opens or creates the database file (and its snapshot folder).
    pub fn open(path: &Path) -> Result<RedbStorage, StorageError> {
        let db = Database::create(path).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        migrate(&txn)?;
        let (current, legacy) = {
            txn.open_table(INCARNATIONS).map_err(err)?;
            let legacy = txn.open_table(SNAPSHOT).map_err(err)?;
            let table = txn.open_table(SNAPSHOT_FILE).map_err(err)?;
            (
                table.last().map_err(err)?.map(|(s, _)| s.value()),
                legacy.last().map_err(err)?.map(|(s, _)| s.value()),
            )
        };
        txn.commit().map_err(err)?;
        let snapshots = snapshot_dir(path);
        std::fs::create_dir_all(&snapshots).map_err(err)?;
        remove_snapshots(&snapshots, current, true);
        Ok(RedbStorage {
            db,
            snapshots,
            snap_slot: current.or(legacy),
        })
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
        for item in txn
            .open_table(INCARNATIONS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (node, incarnation) = item.map_err(err)?;
            state.incarnations.insert(node.value(), incarnation.value());
        }
        if let Some((slot, len)) = txn
            .open_table(SNAPSHOT_FILE)
            .map_err(err)?
            .last()
            .map_err(err)?
        {
            let (slot, len) = (slot.value(), len.value());
            let path = snapshot_file(&self.snapshots, slot);
            let data = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            if data.len() as u64 != len {
                return Err(err(format!(
                    "{}: {} bytes, the database recorded {len}",
                    path.display(),
                    data.len()
                )));
            }
            state.snapshot = Some((slot, Bytes::from(data)));
        } else if let Some(item) = txn.open_table(SNAPSHOT).map_err(err)?.last().map_err(err)? {
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
        let mut recorded = None;
        {
            let mut promised = txn.open_table(PROMISED).map_err(err)?;
            let mut log = txn.open_table(LOG).map_err(err)?;
            let mut legacy = txn.open_table(SNAPSHOT).map_err(err)?;
            let mut snapshot = txn.open_table(SNAPSHOT_FILE).map_err(err)?;
            let mut incarnations = txn.open_table(INCARNATIONS).map_err(err)?;
            let mut snap_slot = self.snap_slot;
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
                        if !staged(&self.snapshots, *slot, data.len()) {
                            // Not staged (a snapshot learned from a peer): write it here.
                            stage_snapshot(&self.snapshots, *slot, data)?;
                        }
                        log.retain_in(..=*slot, |_, _| false).map_err(err)?;
                        legacy.retain(|_, _| false).map_err(err)?;
                        snapshot.retain(|_, _| false).map_err(err)?;
                        snapshot.insert(*slot, data.len() as u64).map_err(err)?;
                        snap_slot = Some(*slot);
                        recorded = Some(*slot);
                    }
                    PersistOp::Incarnation { node, incarnation } => {
                        let known = incarnations.get(*node).map_err(err)?.map(|v| v.value());
                        if known.is_none_or(|k| k < *incarnation) {
                            incarnations.insert(*node, *incarnation).map_err(err)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(err)?;
        if recorded.is_some() {
            self.snap_slot = recorded;
            remove_snapshots(&self.snapshots, recorded, false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batch(text: &str) -> Value {
        Value::Batch(Arc::new(vec![Bytes::copy_from_slice(text.as_bytes())]))
    }

    #[test]
    fn redb_storage_matches_the_reference_semantics_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paxos.redb");
        let mut reference = PersistentState::default();
        {
            let mut storage = RedbStorage::open(&path).unwrap();
            for batch in crate::storage::tests::sample_steps() {
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
            vec![3, 4],
            "slots <= 2 compacted"
        );
        assert_eq!(state.log[&4].ballot.incarnation, 3);
        assert_eq!(
            state.incarnations.get(&2),
            Some(&3),
            "an incarnation is only ever raised"
        );
    }

    fn snapshot_op(slot: Slot, data: &'static [u8]) -> Vec<PersistOp> {
        vec![PersistOp::Snapshot {
            slot,
            data: Bytes::from_static(data),
        }]
    }

    #[test]
    fn writers_staging_the_same_slot_at_once_leave_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        stage_snapshot(dir.path(), 3, &data).unwrap();
                    }
                });
            }
        });
        assert!(std::fs::read(snapshot_file(dir.path(), 3)).unwrap() == data);
    }

    #[test]
    fn a_truncated_snapshot_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paxos.redb");
        let mut storage = RedbStorage::open(&path).unwrap();
        storage.write(&snapshot_op(3, b"three")).unwrap();
        std::fs::write(snapshot_file(&snapshot_dir(&path), 3), b"thr").unwrap();
        let error = storage.load().unwrap_err().to_string();
        assert!(
            error.contains("3 bytes, the database recorded 5"),
            "{error}"
        );
    }

    #[test]
    fn a_snapshot_kept_inside_the_database_by_an_earlier_version_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paxos.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SNAPSHOT).unwrap();
                table.insert(4, b"old layout".as_slice()).unwrap();
                // Version 1 layout: a ballot was (round, node), no incarnation.
                let mut log = txn.open_table(LOG).unwrap();
                let entry = encode(&((1u64, 0u32), batch("e"), true)).unwrap();
                log.insert(5, entry.as_slice()).unwrap();
                let mut promised = txn.open_table(PROMISED).unwrap();
                promised
                    .insert(0, encode(&(7u64, 2u32)).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let storage = RedbStorage::open(&path).unwrap();
        let state = storage.load().unwrap();
        assert_eq!(state.snapshot, Some((4, Bytes::from_static(b"old layout"))));
        assert_eq!(state.log.keys().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(state.log[&5].ballot, Ballot::new(1, 0));
        assert_eq!(state.log[&5].value, batch("e"));
        assert_eq!(state.promised[&0], Ballot::new(7, 2));
        drop(storage);
        let mut storage = RedbStorage::open(&path).unwrap();
        assert_eq!(storage.load().unwrap().log[&5].ballot, Ballot::new(1, 0));
        // An accept for a covered slot is still ignored, and a new snapshot replaces the old one.
        storage
            .write(&[PersistOp::Accept {
                slot: 3,
                ballot: Ballot::new(2, 0),
                value: batch("late"),
            }])
            .unwrap();
        assert!(!storage.load().unwrap().log.contains_key(&3));
        storage.write(&snapshot_op(5, b"new layout")).unwrap();
        let state = storage.load().unwrap();
        assert_eq!(state.snapshot, Some((5, Bytes::from_static(b"new layout"))));
        assert!(state.log.is_empty());
    }

    #[test]
    fn decided_entries_are_never_overwritten_by_late_accepts() {
        let mut state = PersistentState::default();
        state.apply(&crate::storage::tests::sample_steps()[0]);
        state.apply(&crate::storage::tests::sample_steps()[1]);
        assert_eq!(state.log[&1].value, batch("a"));
        assert!(state.log[&1].decided);
    }
}
