//! The default store: one [redb](https://docs.rs/redb) file per node.
//!
//! Why redb: a pure-Rust, crash-safe B-tree with ACID write transactions (copy-on-write pages and
//! a checksummed commit slot, so a torn write after `kill -9` or power loss rolls back to the last
//! commit), MVCC readers that never block the writer, and no C toolchain. One write transaction
//! applies a whole batch of entries and the applied index, and one fsync makes the batch durable:
//! that is the group commit.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition,
};

use super::{Snapshot, Store, StoreError, StoreOptions, Summary};
use crate::bank::{self, IdempotencyRecord, Ledger};
use crate::command::{AccountId, Entry, IdempotencyKey, Outcome};
use crate::money::Money;

const ACCOUNTS: TableDefinition<u128, i64> = TableDefinition::new("accounts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TOTALS: TableDefinition<&str, i128> = TableDefinition::new("totals");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// Log index -> idempotency keys applied there (several commands of one entry may carry keys).
const KEYS_BY_INDEX: MultimapTableDefinition<u64, &str> =
    MultimapTableDefinition::new("idempotency_keys_by_index");

const APPLIED_INDEX: &str = "applied_index";
const ACCOUNT_COUNT: &str = "accounts";
const TOTAL_CENTS: &str = "total_cents";

/// Without `sync_commits`, how often a commit is synced (the others are written without a sync:
/// a node that loses unsynced applies re-applies them from the log after a restart).
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// File name of the bank database inside a node's data directory.
pub const FILE_NAME: &str = "bank.redb";

/// The embedded store.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    options: StoreOptions,
    /// When the last synced commit happened (for `sync_commits: false`).
    last_sync: Arc<std::sync::Mutex<Instant>>,
}

fn fatal(err: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(err.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path, options: StoreOptions) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(fatal)?;
        let txn = db.begin_write().map_err(fatal)?;
        {
            txn.open_table(ACCOUNTS).map_err(fatal)?;
            txn.open_table(META).map_err(fatal)?;
            txn.open_table(TOTALS).map_err(fatal)?;
            txn.open_table(KEYS).map_err(fatal)?;
            txn.open_multimap_table(KEYS_BY_INDEX).map_err(fatal)?;
        }
        txn.commit().map_err(fatal)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            options,
            last_sync: Arc::new(std::sync::Mutex::new(Instant::now())),
        })
    }

    /// Opens `bank.redb` inside `dir`, creating the directory if needed.
    pub fn open_in_dir(dir: &Path, options: StoreOptions) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(fatal)?;
        EmbeddedStore::open(&dir.join(FILE_NAME), options)
    }

    /// Overwrites one balance directly, bypassing the state machine. Only for tests that must
    /// corrupt a replica on purpose (to prove that checkers notice); never called by the node.
    #[doc(hidden)]
    pub fn corrupt_balance_for_tests(
        &self,
        id: AccountId,
        balance: Money,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(fatal)?;
        txn.open_table(ACCOUNTS)
            .map_err(fatal)?
            .insert(id.as_u128(), balance.cents())
            .map_err(fatal)?;
        txn.commit().map_err(fatal)
    }

    /// Whether the next commit must be synced (always with `sync_commits`, otherwise once
    /// [`SYNC_EVERY`] has passed since the last synced one).
    fn sync_due(&self) -> bool {
        self.options.sync_commits
            || self.last_sync.lock().expect("last_sync lock").elapsed() >= SYNC_EVERY
    }

    /// Applies `entries` in one transaction; `may_sync: false` commits without syncing whatever
    /// the time since the last synced commit (only when `sync_commits` is off).
    fn apply_blocking(
        &self,
        entries: &[Entry],
        may_sync: bool,
    ) -> Result<Vec<Option<Vec<Outcome>>>, StoreError> {
        let started = Instant::now();
        let mut txn = self.db.begin_write().map_err(fatal)?;
        if !self.options.sync_commits {
            let mut last_sync = self.last_sync.lock().expect("last_sync lock");
            if !may_sync || last_sync.elapsed() < SYNC_EVERY {
                txn.set_durability(redb::Durability::None).map_err(fatal)?;
            } else {
                *last_sync = Instant::now();
            }
        }
        let outcomes = {
            let mut meta = txn.open_table(META).map_err(fatal)?;
            let mut totals = txn.open_table(TOTALS).map_err(fatal)?;
            let applied = meta
                .get(APPLIED_INDEX)
                .map_err(fatal)?
                .map_or(0, |v| v.value());
            if let Some(first) = entries.first()
                && first.index > applied + 1
            {
                return Err(StoreError::OutOfOrder {
                    expected: applied + 1,
                    got: first.index,
                });
            }
            let mut ledger = RedbLedger {
                accounts: txn.open_table(ACCOUNTS).map_err(fatal)?,
                keys: txn.open_table(KEYS).map_err(fatal)?,
                keys_by_index: txn.open_multimap_table(KEYS_BY_INDEX).map_err(fatal)?,
                created: 0,
            };
            let mut total = totals
                .get(TOTAL_CENTS)
                .map_err(fatal)?
                .map_or(0, |v| v.value());
            let mut last = applied;
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in entries {
                if entry.index <= last {
                    outcomes.push(None);
                    continue;
                }
                if entry.index != last + 1 {
                    return Err(StoreError::OutOfOrder {
                        expected: last + 1,
                        got: entry.index,
                    });
                }
                let mut results = Vec::with_capacity(entry.commands.len());
                for command in &entry.commands {
                    let applied = bank::apply(
                        &mut ledger,
                        entry.index,
                        command,
                        self.options.idempotency_retention,
                    )?;
                    total += applied.total_delta;
                    results.push(applied.outcome);
                }
                outcomes.push(Some(results));
                last = entry.index;
            }
            if last > applied {
                prune_keys(&mut ledger, last, self.options.idempotency_retention)?;
                let count = meta
                    .get(ACCOUNT_COUNT)
                    .map_err(fatal)?
                    .map_or(0, |v| v.value());
                meta.insert(ACCOUNT_COUNT, count + ledger.created)
                    .map_err(fatal)?;
                meta.insert(APPLIED_INDEX, last).map_err(fatal)?;
                totals.insert(TOTAL_CENTS, total).map_err(fatal)?;
            }
            outcomes
        };
        // Durability::Immediate (the default, and at least every 200 ms without `sync_commits`):
        // commit returns after the fsync.
        txn.commit().map_err(fatal)?;
        let labels = [("backend", "embedded"), ("op", "apply")];
        metrics::histogram!(crate::metrics::STORE_OPERATION_DURATION, &labels)
            .record(started.elapsed().as_secs_f64());
        let commands: usize = entries.iter().map(|e| e.commands.len()).sum();
        metrics::histogram!(crate::metrics::STORE_COMMIT_BATCH_SIZE, "backend" => "embedded")
            .record(commands as f64);
        Ok(outcomes)
    }

    fn read_blocking<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(fatal)?;
        f(&txn).map_err(fatal)
    }
}

/// Drops idempotency records applied `retention` or more entries before `applied`: no entry
/// after `applied` can be deduplicated by them any more (see [`bank::apply`]), so pruning is
/// housekeeping and its timing changes no outcome.
fn prune_keys(ledger: &mut RedbLedger<'_>, applied: u64, retention: u64) -> Result<(), StoreError> {
    let Some(cutoff) = applied.checked_sub(retention) else {
        return Ok(());
    };
    let mut expired = Vec::new();
    let mut indexes = Vec::new();
    for item in ledger.keys_by_index.range(..=cutoff).map_err(fatal)? {
        let (index, keys) = item.map_err(fatal)?;
        indexes.push(index.value());
        for key in keys {
            expired.push(key.map_err(fatal)?.value().to_owned());
        }
    }
    for index in indexes {
        ledger.keys_by_index.remove_all(index).map_err(fatal)?;
    }
    for key in expired {
        ledger.keys.remove(key.as_str()).map_err(fatal)?;
    }
    Ok(())
}

struct RedbLedger<'txn> {
    accounts: redb::Table<'txn, u128, i64>,
    keys: redb::Table<'txn, &'static str, &'static [u8]>,
    keys_by_index: redb::MultimapTable<'txn, u64, &'static str>,
    created: u64,
}

impl Ledger for RedbLedger<'_> {
    type Error = StoreError;

    fn balance(&mut self, id: AccountId) -> Result<Option<Money>, StoreError> {
        Ok(self
            .accounts
            .get(id.as_u128())
            .map_err(fatal)?
            .map(|v| Money::from_cents(v.value())))
    }

    fn set_balance(
        &mut self,
        id: AccountId,
        balance: Money,
        created: bool,
    ) -> Result<(), StoreError> {
        self.accounts
            .insert(id.as_u128(), balance.cents())
            .map_err(fatal)?;
        self.created += u64::from(created);
        Ok(())
    }

    fn idempotency(
        &mut self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        match self.keys.get(key.as_str()).map_err(fatal)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(fatal),
        }
    }

    fn remember(
        &mut self,
        key: &IdempotencyKey,
        record: IdempotencyRecord,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&record).map_err(fatal)?;
        let old = self
            .keys
            .insert(key.as_str(), bytes.as_slice())
            .map_err(fatal)?
            .map(|old| serde_json::from_slice::<IdempotencyRecord>(old.value()));
        if let Some(old) = old {
            // An expired key used again: its old index must not prune the new record.
            let old = old.map_err(fatal)?;
            self.keys_by_index
                .remove(old.index, key.as_str())
                .map_err(fatal)?;
        }
        self.keys_by_index
            .insert(record.index, key.as_str())
            .map_err(fatal)?;
        Ok(())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Option<Vec<Outcome>>>, StoreError> {
        if !self.sync_due() && tokio::runtime::Handle::current().metrics().num_workers() == 1 {
            // One worker (the testbed's size on two cores): a commit that does not sync is a
            // few microseconds of work in memory, less than the two thread switches of handing
            // it to the blocking pool and back. A commit that syncs still leaves the runtime.
            return self.apply_blocking(entries, false);
        }
        let store = self.clone();
        let entries = entries.to_vec();
        tokio::task::spawn_blocking(move || store.apply_blocking(&entries, true))
            .await
            .map_err(fatal)?
    }

    async fn summary(&self) -> Result<Summary, StoreError> {
        self.read_blocking(|txn| {
            let meta = txn.open_table(META)?;
            let totals = txn.open_table(TOTALS)?;
            Ok(Summary {
                applied_index: meta.get(APPLIED_INDEX)?.map_or(0, |v| v.value()),
                accounts: meta.get(ACCOUNT_COUNT)?.map_or(0, |v| v.value()),
                total_cents: totals.get(TOTAL_CENTS)?.map_or(0, |v| v.value()),
            })
        })
    }

    async fn balance(&self, id: AccountId) -> Result<Option<Money>, StoreError> {
        // A point read in an MVCC snapshot takes microseconds and never waits for the writer.
        self.read_blocking(|txn| {
            let accounts = txn.open_table(ACCOUNTS)?;
            Ok(accounts
                .get(id.as_u128())?
                .map(|v| Money::from_cents(v.value())))
        })
    }

    async fn accounts(
        &self,
        after: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, Money)>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            store.read_blocking(|txn| {
                let accounts = txn.open_table(ACCOUNTS)?;
                let range = match after {
                    Some(id) => accounts.range((
                        std::ops::Bound::Excluded(id.as_u128()),
                        std::ops::Bound::Unbounded,
                    ))?,
                    None => accounts.range::<u128>(..)?,
                };
                let mut page = Vec::with_capacity(limit.min(1024));
                for item in range.take(limit) {
                    let (k, v) = item?;
                    page.push((
                        AccountId::from_u128(k.value()),
                        Money::from_cents(v.value()),
                    ));
                }
                Ok(page)
            })
        })
        .await
        .map_err(fatal)?
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let txn = store.db.begin_read().map_err(fatal)?;
            let meta = txn.open_table(META).map_err(fatal)?;
            let applied_index = meta
                .get(APPLIED_INDEX)
                .map_err(fatal)?
                .map_or(0, |v| v.value());
            let mut accounts = Vec::new();
            for item in txn
                .open_table(ACCOUNTS)
                .map_err(fatal)?
                .iter()
                .map_err(fatal)?
            {
                let (k, v) = item.map_err(fatal)?;
                accounts.push((
                    AccountId::from_u128(k.value()),
                    Money::from_cents(v.value()),
                ));
            }
            let mut keys = Vec::new();
            for item in txn.open_table(KEYS).map_err(fatal)?.iter().map_err(fatal)? {
                let (k, v) = item.map_err(fatal)?;
                let key = IdempotencyKey::parse(k.value())
                    .ok_or_else(|| StoreError::Fatal("stored key is invalid".to_owned()))?;
                keys.push((key, serde_json::from_slice(v.value()).map_err(fatal)?));
            }
            Ok(Snapshot {
                applied_index,
                accounts,
                keys,
            })
        })
        .await
        .map_err(fatal)?
    }

    async fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let store = self.clone();
        let snapshot = snapshot.clone();
        tokio::task::spawn_blocking(move || {
            let txn = store.db.begin_write().map_err(fatal)?;
            {
                let mut accounts = txn.open_table(ACCOUNTS).map_err(fatal)?;
                let mut keys = txn.open_table(KEYS).map_err(fatal)?;
                let mut by_index = txn.open_multimap_table(KEYS_BY_INDEX).map_err(fatal)?;
                let mut meta = txn.open_table(META).map_err(fatal)?;
                let mut totals = txn.open_table(TOTALS).map_err(fatal)?;
                accounts.retain(|_, _| false).map_err(fatal)?;
                keys.retain(|_, _| false).map_err(fatal)?;
                let mut indexes = Vec::new();
                for item in by_index.iter().map_err(fatal)? {
                    indexes.push(item.map_err(fatal)?.0.value());
                }
                for index in indexes {
                    by_index.remove_all(index).map_err(fatal)?;
                }
                let mut total: i128 = 0;
                for (id, balance) in &snapshot.accounts {
                    accounts
                        .insert(id.as_u128(), balance.cents())
                        .map_err(fatal)?;
                    total += i128::from(balance.cents());
                }
                for (key, record) in &snapshot.keys {
                    let bytes = serde_json::to_vec(record).map_err(fatal)?;
                    keys.insert(key.as_str(), bytes.as_slice()).map_err(fatal)?;
                    by_index.insert(record.index, key.as_str()).map_err(fatal)?;
                }
                meta.insert(APPLIED_INDEX, snapshot.applied_index)
                    .map_err(fatal)?;
                meta.insert(ACCOUNT_COUNT, snapshot.accounts.len() as u64)
                    .map_err(fatal)?;
                totals.insert(TOTAL_CENTS, total).map_err(fatal)?;
            }
            txn.commit().map_err(fatal)
        })
        .await
        .map_err(fatal)?
    }

    async fn idempotency(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let bytes = self.read_blocking(|txn| {
            let keys = txn.open_table(KEYS)?;
            Ok(keys.get(key.as_str())?.map(|v| v.value().to_vec()))
        })?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(fatal))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Harness};

    struct EmbeddedHarness {
        dir: tempfile::TempDir,
    }

    impl Harness for EmbeddedHarness {
        type Store = EmbeddedStore;

        async fn fresh(&mut self, options: StoreOptions) -> EmbeddedStore {
            self.dir = tempfile::tempdir().unwrap();
            EmbeddedStore::open_in_dir(self.dir.path(), options).unwrap()
        }

        async fn reopen(&mut self, store: EmbeddedStore, options: StoreOptions) -> EmbeddedStore {
            drop(store);
            EmbeddedStore::open_in_dir(self.dir.path(), options).unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_store_passes_the_conformance_suite() {
        let harness = EmbeddedHarness {
            dir: tempfile::tempdir().unwrap(),
        };
        conformance::run_all(harness).await;
    }
}
