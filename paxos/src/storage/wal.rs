//! Acceptor state in an append-only log file, `paxos.wal`: every [`Storage::write`] appends one
//! checksummed record and syncs it with one `fdatasync`. When the file has grown past
//! [`REWRITE_BYTES`] (and four times its last checkpoint) it is rewritten as a single record
//! holding the whole state, beside it, synced, and renamed over it. The checkpoint is written by
//! a thread of its own from a copy of the state while steps go on being appended to the log;
//! once it is on disk, the records appended meanwhile are copied after it, synced, and only then
//! is it renamed over the log (see [`WalStorage::finish_checkpoint`]). Written inside the step, a
//! checkpoint of a loaded replica's retained log stalled it 0.25-1 s every 20 s or so, long
//! enough for its followers to elect another leader. Snapshots are files in a
//! folder beside it, as they were beside the redb database this replaces.
//!
//! A redb transaction wrote about eight scattered pages per step (the log's leaf and branches,
//! the table tree, the allocator state, the header) and synced them all; a step here is one
//! write of a few hundred bytes at the end of one file.
//!
//! Layout: `PAXOSWAL` and a little-endian `u32` version, then records: a `u32` payload length,
//! the payload's CRC-32, and the payload (postcard, a list of operations). Only the last record
//! can be torn by a crash (records are appended one at a time, each synced before the next):
//! a bad record with no whole record after it is cut off when the file is opened; a bad record
//! with a whole record after it (a damaged length or payload in the middle) is corruption, and
//! the file is refused rather than cut, which would drop acknowledged records.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::redb::{
    RedbStorage, remove_snapshots, snapshot_dir, snapshot_file, stage_snapshot, staged, sync_dir,
};
use super::{PersistOp, PersistentState, Storage, StorageError};
use crate::ballot::Slot;

const MAGIC: &[u8; 8] = b"PAXOSWAL";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 4;
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record read back (a checkpoint holds the retained log; a step one burst of inputs).
const MAX_RECORD_BYTES: usize = 1 << 30;
/// The log is rewritten as one checkpoint once it is larger than this (and than four times the
/// last checkpoint, so a large retained log is not rewritten at every step).
pub const REWRITE_BYTES: u64 = 64 << 20;
/// The file is grown this much at a time, with zeros written and synced, so that a record is
/// written over blocks the file already owns. An `fdatasync` of an append that grows the file
/// also commits the file system's journal (the new size and blocks); one over allocated blocks
/// writes the data alone. Measured on this project's machines (ext4 on a virtual disk): 120 ->
/// 80 us and 56 -> 31 us of CPU a sync. Zeros after the last record read as a torn tail (see
/// [`replay`]), so the grown part needs no marker.
const GROW_BYTES: u64 = 4 << 20;
/// Records appended while a checkpoint was written are copied after it this much at a time
/// (a checkpoint slowed by the disk can have many steps after it). Small in tests, so that
/// their copies take several rounds.
const COPY_CHUNK_BYTES: u64 = if cfg!(test) { 256 } else { 1 << 20 };

/// A logged operation, as written: a [`PersistOp`] as it is, except a snapshot, whose data
/// stays in its file and is logged as its slot and length.
#[derive(Serialize)]
enum OpRef<'a> {
    Persist(&'a PersistOp),
    /// The snapshot of `slot`, `len` bytes, is the file of `slot` in the snapshot folder.
    Snapshot {
        slot: Slot,
        len: u64,
    },
}

/// A logged operation, as read back: the same variants, in the same order, as [`OpRef`].
#[derive(Deserialize)]
enum Op {
    Persist(PersistOp),
    Snapshot { slot: Slot, len: u64 },
}

fn err(e: impl std::fmt::Display) -> StorageError {
    StorageError(e.to_string())
}

fn op_ref(op: &PersistOp) -> OpRef<'_> {
    match op {
        PersistOp::Snapshot { slot, data } => OpRef::Snapshot {
            slot: *slot,
            len: data.len() as u64,
        },
        op => OpRef::Persist(op),
    }
}

/// The operations that rebuild `state` from nothing, after the snapshot (whose data stays in
/// its file). Values are shared, not copied.
fn checkpoint(state: &PersistentState) -> Vec<PersistOp> {
    let mut ops =
        Vec::with_capacity(state.incarnations.len() + state.promised.len() + 2 * state.log.len());
    for (&node, &incarnation) in &state.incarnations {
        ops.push(PersistOp::Incarnation { node, incarnation });
    }
    for (&lane, &ballot) in &state.promised {
        ops.push(PersistOp::Promise { lane, ballot });
    }
    for (&slot, entry) in &state.log {
        ops.push(PersistOp::Accept {
            slot,
            ballot: entry.ballot,
            value: entry.value.clone(),
        });
        if entry.decided {
            ops.push(PersistOp::Decide {
                slot,
                value: entry.value.clone(),
            });
        }
    }
    ops
}

/// Appends one record holding `ops` to `buf`.
fn encode_record(ops: &[OpRef<'_>], buf: &mut Vec<u8>) -> Result<(), StorageError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    let mut buf_taken = std::mem::take(buf);
    buf_taken = postcard::to_extend(ops, buf_taken).map_err(err)?;
    *buf = buf_taken;
    let payload = buf.len() - start - RECORD_HEADER_BYTES;
    if payload > MAX_RECORD_BYTES {
        return Err(err(format!(
            "a paxos log record of {payload} bytes is over the {MAX_RECORD_BYTES}-byte limit"
        )));
    }
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER_BYTES..]);
    buf[start..start + 4].copy_from_slice(&(payload as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The file a checkpoint is written to before it replaces the log at `path`.
fn checkpoint_path(path: &Path) -> PathBuf {
    path.with_extension("wal.tmp")
}

/// Writes a log holding only the checkpoint of `state` at `path`, atomically: a file beside it,
/// synced, renamed over it, and the folder synced. Returns its length.
fn write_checkpoint(path: &Path, state: &PersistentState) -> Result<u64, StorageError> {
    let len = write_checkpoint_beside(path, state)?;
    std::fs::rename(checkpoint_path(path), path).map_err(err)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(len)
}

/// Writes a log holding only the checkpoint of `state` beside `path` ([`checkpoint_path`]),
/// synced. Returns its length.
fn write_checkpoint_beside(path: &Path, state: &PersistentState) -> Result<u64, StorageError> {
    let mut buf = Vec::with_capacity(HEADER_BYTES + 4096);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    let ops = checkpoint(state);
    let snapshot = (state.snapshot.as_ref()).map(|(slot, data)| OpRef::Snapshot {
        slot: *slot,
        len: data.len() as u64,
    });
    let refs: Vec<OpRef<'_>> = snapshot
        .into_iter()
        .chain(ops.iter().map(OpRef::Persist))
        .collect();
    encode_record(&refs, &mut buf)?;
    let tmp = checkpoint_path(path);
    let mut file = File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    file.write_all(&buf).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(buf.len() as u64)
}

/// A checkpoint being written beside the log by a thread of its own.
struct PendingCheckpoint {
    /// Where, in the current log, the records the checkpoint does not hold begin.
    from: u64,
    /// The checkpoint's length once it is written and synced.
    written: std::thread::JoinHandle<Result<u64, StorageError>>,
}

/// File-backed storage in an append-only, checksummed log (see the module docs), with the
/// whole state mirrored in memory (the replica holds the same entries; values are shared).
pub struct WalStorage {
    path: PathBuf,
    file: File,
    /// Bytes of the log (where the next record goes).
    len: u64,
    /// Bytes of the file: the log, then zeros written ahead of it ([`GROW_BYTES`]).
    allocated: u64,
    /// Length of the log when it was last rewritten.
    checkpoint_len: u64,
    /// The log is rewritten past this many bytes ([`REWRITE_BYTES`] but in tests).
    rewrite_bytes: u64,
    snapshots: PathBuf,
    state: PersistentState,
    buf: Vec<u8>,
    checkpoint: Option<PendingCheckpoint>,
    /// Bytes of records copied after checkpoints (appended while they were written).
    #[cfg(test)]
    copied_after_checkpoints: u64,
}

impl WalStorage {
    /// Opens the log at `path` (`.../paxos.wal`), creating it if needed. A redb database of an
    /// earlier version beside it (`paxos.redb`) is carried over into a new log, then removed.
    pub fn open(path: &Path) -> Result<WalStorage, StorageError> {
        WalStorage::open_with(path, REWRITE_BYTES)
    }

    fn open_with(path: &Path, rewrite_bytes: u64) -> Result<WalStorage, StorageError> {
        let snapshots = snapshot_dir(path);
        std::fs::create_dir_all(&snapshots).map_err(err)?;
        let legacy = path.with_extension("redb");
        if !path.exists() {
            let state = if legacy.exists() {
                let old = RedbStorage::open(&legacy)?.load()?;
                if let Some((slot, data)) = &old.snapshot
                    && !staged(&snapshots, *slot, data.len())
                {
                    // A snapshot an earlier version kept inside the database.
                    stage_snapshot(&snapshots, *slot, data)?;
                }
                tracing::info!(
                    from = %legacy.display(),
                    to = %path.display(),
                    entries = old.log.len(),
                    "carrying the acceptor state over from redb into the log"
                );
                old
            } else {
                PersistentState::default()
            };
            write_checkpoint(path, &state)?;
        }
        if legacy.exists() {
            // Its state is in the log (synced before this): it must not be read again.
            std::fs::remove_file(&legacy).map_err(err)?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        }
        let bytes = std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        if bytes.len() < HEADER_BYTES
            || &bytes[..MAGIC.len()] != MAGIC
            || bytes[MAGIC.len()..HEADER_BYTES] != VERSION.to_le_bytes()
        {
            return Err(err(format!(
                "{} is not a version {VERSION} paxos log",
                path.display()
            )));
        }
        let (mut state, end, checkpoint_len, snapshot) = replay(path, &bytes)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        if end < bytes.len() {
            tracing::warn!(
                log = %path.display(),
                kept = end,
                dropped = bytes.len() - end,
                "the last record of the paxos log was torn by a crash: cut off (it was never \
                 acknowledged)"
            );
            file.set_len(end as u64).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        if let Some((slot, len)) = snapshot {
            let file = snapshot_file(&snapshots, slot);
            let data = std::fs::read(&file).map_err(|e| err(format!("{}: {e}", file.display())))?;
            if data.len() as u64 != len {
                return Err(err(format!(
                    "{}: {} bytes, the log recorded {len}",
                    file.display(),
                    data.len()
                )));
            }
            state.snapshot = Some((slot, Bytes::from(data)));
        }
        remove_snapshots(&snapshots, snapshot.map(|(slot, _)| slot), true);
        Ok(WalStorage {
            path: path.to_path_buf(),
            file,
            len: end as u64,
            allocated: end as u64,
            checkpoint_len: checkpoint_len as u64,
            rewrite_bytes,
            snapshots,
            state,
            buf: Vec::new(),
            checkpoint: None,
            #[cfg(test)]
            copied_after_checkpoints: 0,
        })
    }

    /// Starts writing a checkpoint of the current state beside the log, on a thread of its own
    /// (a copy of the state: the values are shared, not copied).
    fn start_checkpoint(&mut self) -> Result<(), StorageError> {
        let (path, state) = (self.path.clone(), self.state.clone());
        let written = std::thread::Builder::new()
            .name("paxos-checkpoint".to_owned())
            .spawn(move || write_checkpoint_beside(&path, &state))
            .map_err(err)?;
        self.checkpoint = Some(PendingCheckpoint {
            from: self.len,
            written,
        });
        Ok(())
    }

    /// If the checkpoint being written is on disk (or, with `wait`, once it is): copies the
    /// records appended since it was started after it, syncs, and renames it over the log.
    /// Until the rename the log is whole on its own, so a crash at any point loses nothing; after
    /// it, the checkpoint and the copied records hold the same state.
    fn finish_checkpoint(&mut self, wait: bool) -> Result<(), StorageError> {
        match &self.checkpoint {
            Some(pending) if wait || pending.written.is_finished() => {}
            _ => return Ok(()),
        }
        let pending = self.checkpoint.take().expect("checked above");
        let checkpoint_len = pending
            .written
            .join()
            .map_err(|_| err("the paxos checkpoint thread panicked"))??;
        let tail = self.len - pending.from;
        let tmp = checkpoint_path(&self.path);
        let file = OpenOptions::new().write(true).open(&tmp).map_err(err)?;
        let mut chunk = vec![0u8; tail.min(COPY_CHUNK_BYTES) as usize];
        let mut copied = 0;
        while copied < tail {
            let n = (tail - copied).min(chunk.len() as u64) as usize;
            self.file
                .read_exact_at(&mut chunk[..n], pending.from + copied)
                .map_err(err)?;
            file.write_all_at(&chunk[..n], checkpoint_len + copied)
                .map_err(err)?;
            copied += n as u64;
        }
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(err)?;
        self.len = checkpoint_len + tail;
        self.allocated = self.len;
        self.checkpoint_len = checkpoint_len;
        #[cfg(test)]
        {
            self.copied_after_checkpoints += tail;
        }
        Ok(())
    }

    /// Grows the file with zeros, synced (size and blocks), until `needed` bytes fit.
    fn grow(&mut self, needed: u64) -> Result<(), StorageError> {
        let target = needed.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64);
            self.file
                .write_all_at(&zeros[..n as usize], at)
                .map_err(err)?;
            at += n;
        }
        self.file.sync_all().map_err(err)?;
        self.allocated = target;
        Ok(())
    }

    /// Bytes of the log file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log holds nothing but its header and an empty checkpoint.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }
}

/// The payload of the record at the start of `bytes`, if it is whole and intact.
fn record_at(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Bytes checksummed at most while looking past a damaged record for a whole one.
const SCAN_BUDGET_BYTES: usize = 256 << 20;

/// Where, after the damaged record at the start of `rest`, a whole record starts: `Some(None)`
/// if none does (a torn last write), `None` if the search would hash more than
/// [`SCAN_BUDGET_BYTES`] (a torn write is one step, far smaller).
fn whole_record_after(rest: &[u8]) -> Option<Option<usize>> {
    let mut hashed = 0;
    for offset in 1..rest.len().saturating_sub(RECORD_HEADER_BYTES) {
        let candidate = &rest[offset..];
        let len = u32::from_le_bytes(candidate[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || RECORD_HEADER_BYTES + len > candidate.len() {
            continue;
        }
        hashed += len;
        if hashed > SCAN_BUDGET_BYTES {
            return None;
        }
        if let Some(payload) = record_at(candidate)
            && postcard::from_bytes::<Vec<Op>>(payload).is_ok()
        {
            return Some(Some(offset));
        }
    }
    Some(None)
}

/// Replays the records of `bytes`: the state (snapshot data not read), where the last good
/// record ends, where the first record (the checkpoint) ends, and the snapshot (slot, length).
#[allow(clippy::type_complexity)]
fn replay(
    path: &Path,
    bytes: &[u8],
) -> Result<(PersistentState, usize, usize, Option<(Slot, u64)>), StorageError> {
    let mut state = PersistentState::default();
    let mut snapshot = None;
    let mut pos = HEADER_BYTES;
    let mut checkpoint_end = None;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let Some(payload) = record_at(rest) else {
            // Not a whole, intact record: the last write, torn by a crash, unless a whole
            // record follows it (then something damaged the file, and cutting it here would
            // drop records that were synced and acknowledged).
            match whole_record_after(rest) {
                Some(None) => break,
                Some(Some(offset)) => {
                    return Err(err(format!(
                        "{}: the record at byte {pos} is damaged and a whole record follows at \
                         byte {}: the file is corrupt, not torn by a crash; this replica cannot \
                         vouch for its promises (move its data away and restart it with \
                         --initial-cluster-state existing)",
                        path.display(),
                        pos + offset
                    )));
                }
                None => {
                    return Err(err(format!(
                        "{}: the record at byte {pos} is damaged and the {} bytes after it are \
                         too many to tell a torn last write from corruption",
                        path.display(),
                        rest.len()
                    )));
                }
            }
        };
        let end = RECORD_HEADER_BYTES + payload.len();
        let ops: Vec<Op> = postcard::from_bytes(payload).map_err(|e| {
            err(format!(
                "{}: the record at byte {pos} cannot be read: {e}",
                path.display()
            ))
        })?;
        for op in ops {
            let op = match op {
                // Never written: a snapshot's data lives in its file.
                Op::Persist(PersistOp::Snapshot { slot, .. }) => {
                    return Err(err(format!(
                        "{}: the record at byte {pos} holds the data of snapshot {slot}",
                        path.display()
                    )));
                }
                Op::Persist(op) => op,
                Op::Snapshot { slot, len } => {
                    if snapshot.is_some_and(|(s, _)| s >= slot) {
                        continue;
                    }
                    snapshot = Some((slot, len));
                    // The data is read once, for the last snapshot, after the replay.
                    PersistOp::Snapshot {
                        slot,
                        data: Bytes::new(),
                    }
                }
            };
            state.apply(std::slice::from_ref(&op));
        }
        pos += end;
        checkpoint_end.get_or_insert(pos);
    }
    Ok((state, pos, checkpoint_end.unwrap_or(pos), snapshot))
}

impl Storage for WalStorage {
    fn load(&self) -> Result<PersistentState, StorageError> {
        Ok(self.state.clone())
    }

    fn write(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let current = self.state.snapshot.as_ref().map(|(slot, _)| *slot);
        let mut recorded = None;
        for op in ops {
            if let PersistOp::Snapshot { slot, data } = op
                && current.is_none_or(|s| s < *slot)
                && recorded.is_none_or(|s| s < *slot)
            {
                if !staged(&self.snapshots, *slot, data.len()) {
                    // Not staged (a snapshot learned from a peer): written and synced here,
                    // before the record that names it.
                    stage_snapshot(&self.snapshots, *slot, data)?;
                }
                recorded = Some(*slot);
            }
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let refs: Vec<OpRef<'_>> = ops.iter().map(op_ref).collect();
        let encoded = encode_record(&refs, &mut buf);
        let needed = self.len + buf.len() as u64;
        let grown = if needed > self.allocated {
            self.grow(needed)
        } else {
            Ok(())
        };
        let written = encoded.and(grown).and_then(|()| {
            self.file.write_all_at(&buf, self.len).map_err(err)?;
            self.file.sync_data().map_err(err)
        });
        let appended = buf.len() as u64;
        // Large buffers (a checkpoint-sized step) are not kept.
        if buf.capacity() <= 1 << 20 {
            self.buf = buf;
        }
        written?;
        self.len += appended;
        self.state.apply(ops);
        if recorded.is_some() {
            remove_snapshots(&self.snapshots, recorded, false);
        }
        self.finish_checkpoint(false)?;
        if self.checkpoint.is_none()
            && self.len > self.rewrite_bytes
            && self.len > 4 * self.checkpoint_len
        {
            self.start_checkpoint()?;
        }
        Ok(())
    }
}

impl Drop for WalStorage {
    /// A checkpoint still being written is waited for (and not used: the log is whole without
    /// it), so no thread of this storage writes beside a log that another one opens.
    fn drop(&mut self) {
        if let Some(pending) = self.checkpoint.take() {
            let _ = pending.written.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ballot::Ballot;
    use crate::messages::Value;
    use crate::storage::tests::sample_steps;

    fn wal(dir: &Path) -> PathBuf {
        dir.join("paxos.wal")
    }

    /// The state after each of the sample steps, starting with none.
    fn states() -> Vec<PersistentState> {
        let mut state = PersistentState::default();
        let mut states = vec![state.clone()];
        for step in sample_steps() {
            state.apply(&step);
            states.push(state.clone());
        }
        states
    }

    /// Writes the sample steps; returns the log's length after each (the first: empty log).
    fn write_steps(path: &Path) -> Vec<u64> {
        let mut storage = WalStorage::open(path).unwrap();
        let mut lens = vec![storage.len()];
        for step in sample_steps() {
            storage.write(&step).unwrap();
            lens.push(storage.len());
        }
        lens
    }

    #[test]
    fn the_log_matches_the_reference_semantics_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let states = states();
        {
            let mut storage = WalStorage::open(&path).unwrap();
            assert!(storage.is_empty());
            for (step, expected) in sample_steps().iter().zip(&states[1..]) {
                storage.write(step).unwrap();
                assert_eq!(&storage.load().unwrap(), expected);
            }
        }
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert_eq!(&state, states.last().unwrap());
        assert_eq!(state.snapshot, Some((2, Bytes::from_static(b"snap"))));
        assert_eq!(state.log.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn a_log_cut_anywhere_in_its_last_record_opens_as_the_steps_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let lens = write_steps(&path);
        let whole = std::fs::read(&path).unwrap();
        let states = states();
        for step in 1..lens.len() {
            for cut in lens[step - 1]..lens[step] {
                let copy = dir.path().join(format!("cut-{cut}.wal"));
                std::fs::write(&copy, &whole[..cut as usize]).unwrap();
                let mut storage = WalStorage::open(&copy).unwrap();
                let state = storage.load().unwrap();
                assert_eq!(
                    state.promised,
                    states[step - 1].promised,
                    "cut at byte {cut}, in step {step}"
                );
                assert_eq!(state.log, states[step - 1].log, "cut at byte {cut}");
                assert_eq!(storage.len(), lens[step - 1], "the torn record is cut off");
                // And the log goes on from there.
                storage.write(&sample_steps()[step - 1]).unwrap();
                drop(storage);
                let state = WalStorage::open(&copy).unwrap().load().unwrap();
                assert_eq!(state.log, states[step].log, "cut at byte {cut}, rewritten");
                std::fs::remove_file(&copy).unwrap();
            }
        }
    }

    /// Records are written over zeros the file already holds (an `fdatasync` then writes the
    /// data alone, no journal commit for a new size), and those zeros read as the end.
    #[test]
    fn the_file_is_grown_ahead_of_the_log_and_reopens_as_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let lens = write_steps(&path);
        let logical = *lens.last().unwrap();
        let on_disk = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            on_disk, GROW_BYTES,
            "grown ahead, by whole steps of GROW_BYTES"
        );
        assert!(logical < on_disk);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[logical as usize..].iter().all(|&b| b == 0));
        let mut storage = WalStorage::open(&path).unwrap();
        assert_eq!(&storage.load().unwrap(), states().last().unwrap());
        assert_eq!(storage.len(), logical, "the zeros are not part of the log");
        // It goes on where the log ends, growing again as it needs.
        let big = PersistOp::Accept {
            slot: 100,
            ballot: Ballot::new(7, 1),
            value: Value::Batch(std::sync::Arc::new(vec![Bytes::from(vec![7u8; 5 << 20])])),
        };
        storage.write(std::slice::from_ref(&big)).unwrap();
        let grown = std::fs::metadata(&path).unwrap().len();
        assert_eq!(grown % GROW_BYTES, 0);
        assert!(grown >= storage.len() && grown > on_disk);
        drop(storage);
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert!(state.log.contains_key(&100));
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let lens = write_steps(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 5000]);
        std::fs::write(&path, &bytes).unwrap();
        let storage = WalStorage::open(&path).unwrap();
        assert_eq!(storage.len(), *lens.last().unwrap());
        assert_eq!(&storage.load().unwrap(), states().last().unwrap());
    }

    #[test]
    fn a_damaged_record_with_records_after_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let lens = write_steps(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        // A bit flipped in the payload of the second step (records follow it).
        bytes[lens[1] as usize + RECORD_HEADER_BYTES + 2] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let error = WalStorage::open(&path).err().expect("refused").to_string();
        assert!(
            error.contains(&format!("record at byte {} is damaged", lens[1])),
            "{error}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "a refused log is left as it was"
        );
    }

    #[test]
    fn a_damaged_length_with_records_after_it_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let lens = write_steps(&path);
        let original = std::fs::read(&path).unwrap();
        // The second step's length made to run past the end of the file, or to zero: either
        // would look like a torn last record, but whole records follow.
        for length in [u32::MAX / 2, 0] {
            let mut bytes = original.clone();
            let at = lens[1] as usize;
            bytes[at..at + 4].copy_from_slice(&length.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let error = WalStorage::open(&path).err().expect("refused").to_string();
            assert!(
                error.contains(&format!("the record at byte {at} is damaged")),
                "{error}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
        }
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        std::fs::write(&path, b"PAXOSWAL\x07\0\0\0").unwrap();
        let error = WalStorage::open(&path).err().expect("refused").to_string();
        assert!(error.contains("is not a version 1 paxos log"), "{error}");
    }

    /// A step that accepts and decides `slot`, a command of `bytes` bytes.
    fn accepted_and_decided(slot: Slot, bytes: usize) -> Vec<PersistOp> {
        let value = Value::Batch(std::sync::Arc::new(vec![Bytes::from(vec![7; bytes])]));
        vec![
            PersistOp::Accept {
                slot,
                ballot: Ballot::new(1, 0),
                value: value.clone(),
            },
            PersistOp::Decide { slot, value },
        ]
    }

    #[test]
    fn the_log_is_rewritten_as_a_checkpoint_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let mut storage = WalStorage::open_with(&path, 4096).unwrap();
        let mut reference = PersistentState::default();
        let mut appended = 0;
        for slot in 1..=200u64 {
            let step = accepted_and_decided(slot, 100);
            let before = storage.len();
            storage.write(&step).unwrap();
            appended += storage.len().saturating_sub(before);
            reference.apply(&step);
            if slot % 50 == 0 {
                // The application compacts, as the driver would.
                let snap = snapshot_op(slot - 10, format!("state at {}", slot - 10));
                storage.write(&snap).unwrap();
                reference.apply(&snap);
            }
        }
        storage.finish_checkpoint(true).unwrap();
        let len = storage.len();
        let on_disk = std::fs::metadata(&path).unwrap().len();
        assert!(
            on_disk <= len.div_ceil(GROW_BYTES) * GROW_BYTES,
            "{on_disk} on disk"
        );
        assert!(
            len * 2 < appended,
            "not rewritten: {len} bytes on disk after {appended} appended"
        );
        drop(storage);
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert_eq!(state, reference);
        assert_eq!(state.log.len(), 10, "slots above the last snapshot (190)");
    }

    /// The checkpoint is written beside the log while steps go on: the steps written meanwhile
    /// are copied after it before it replaces the log, so nothing is lost whenever it lands, and
    /// a log dropped with a checkpoint still being written opens whole.
    #[test]
    fn steps_written_while_a_checkpoint_is_written_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let mut storage = WalStorage::open_with(&path, 8192).unwrap();
        let mut reference = PersistentState::default();
        let mut started = 0;
        for slot in 1..=400u64 {
            let step = accepted_and_decided(slot, 200);
            let pending_before = storage.checkpoint.is_some();
            storage.write(&step).unwrap();
            reference.apply(&step);
            started += usize::from(!pending_before && storage.checkpoint.is_some());
            if slot % 100 == 0 {
                let snap = snapshot_op(slot - 20, format!("state at {}", slot - 20));
                storage.write(&snap).unwrap();
                reference.apply(&snap);
            }
            if slot == 250 {
                // Reopened as it is, a checkpoint perhaps in flight: the log alone is whole.
                drop(storage);
                assert_eq!(WalStorage::open(&path).unwrap().load().unwrap(), reference);
                storage = WalStorage::open_with(&path, 8192).unwrap();
            }
        }
        assert!(started >= 3, "{started} checkpoints started");
        assert!(
            storage.copied_after_checkpoints > 0,
            "no step was written while a checkpoint was: the test proves nothing"
        );
        storage.finish_checkpoint(true).unwrap();
        drop(storage);
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert_eq!(state, reference);
    }

    #[test]
    fn a_redb_database_is_carried_over_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let legacy = path.with_extension("redb");
        {
            let mut old = RedbStorage::open(&legacy).unwrap();
            for step in sample_steps() {
                old.write(&step).unwrap();
            }
        }
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert_eq!(&state, states().last().unwrap());
        assert!(!legacy.exists(), "the database is gone once carried over");
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert_eq!(&state, states().last().unwrap());
    }

    fn snapshot_op(slot: Slot, data: impl Into<Bytes>) -> Vec<PersistOp> {
        vec![PersistOp::Snapshot {
            slot,
            data: data.into(),
        }]
    }

    #[test]
    fn a_staged_snapshot_is_recorded_without_being_written_again() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let mut storage = WalStorage::open(&path).unwrap();
        let snapshots = snapshot_dir(&path);
        stage_snapshot(&snapshots, 7, b"state at 7").unwrap();
        let inode = std::fs::metadata(snapshot_file(&snapshots, 7))
            .unwrap()
            .ino();
        storage.write(&snapshot_op(7, &b"state at 7"[..])).unwrap();
        let now = std::fs::metadata(snapshot_file(&snapshots, 7))
            .unwrap()
            .ino();
        assert_eq!(now, inode, "the driver rewrote a staged snapshot");
        drop(storage);
        let state = WalStorage::open(&path).unwrap().load().unwrap();
        assert_eq!(state.snapshot, Some((7, Bytes::from_static(b"state at 7"))));
    }

    #[test]
    fn snapshot_files_not_current_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let snapshots = snapshot_dir(&path);
        let mut storage = WalStorage::open(&path).unwrap();
        storage.write(&snapshot_op(5, &b"five"[..])).unwrap();
        stage_snapshot(&snapshots, 9, b"nine").unwrap();
        storage.write(&snapshot_op(6, &b"six"[..])).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "00000000000000000006.snapshot",
                "00000000000000000009.snapshot"
            ],
            "older snapshots go when a newer one is recorded; newer ones may be in flight"
        );
        drop(storage);
        WalStorage::open(&path).unwrap();
        let files: Vec<_> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, ["00000000000000000006.snapshot"]);
    }

    #[test]
    fn a_truncated_snapshot_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = wal(dir.path());
        let mut storage = WalStorage::open(&path).unwrap();
        storage.write(&snapshot_op(3, &b"three"[..])).unwrap();
        drop(storage);
        std::fs::write(snapshot_file(&snapshot_dir(&path), 3), b"thr").unwrap();
        let error = WalStorage::open(&path).err().expect("refused").to_string();
        assert!(error.contains("3 bytes, the log recorded 5"), "{error}");
    }
}
