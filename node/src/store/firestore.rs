//! The Firestore store: the original system's database, through the `firestore` crate.
//!
//! Layout (one set per store; the collection names derive from one base name):
//! - `<base>`: one document per account, id = the account's UUID, `{id, balance_cents}` (integer
//!   cents, never doubles), so the collection looks like the original's;
//! - `<base>-meta/state`: `{applied_index, accounts, total_cents, installing}`;
//! - `<base>-keys`: one document per idempotency key (id = the key in hex, since keys may hold
//!   `/`), `{key, index, record}`.
//!
//! **Exactly once.** Every group of applied log entries is one Firestore transaction that reads
//! `applied_index` from the meta document, skips entries at or below it, applies the rest with
//! the shared state machine ([`crate::bank::apply`]) over the documents it read, and writes the
//! changed accounts, the new idempotency records and the advanced meta document. A second writer
//! (a deposed leader still running, a replica replaying after a crash, a retry of a commit whose
//! answer was lost) either sees the advanced index and applies nothing, or conflicts and is
//! retried by Firestore: no slot is ever applied twice.
//!
//! **Batching.** Entries are grouped up to [`MAX_DOCS_PER_TRANSACTION`] documents per
//! transaction, so the meta document is written once per group, not once per command. Reads of
//! balances go straight to the account documents.
//!
//! **Failures.** Every request has a timeout; transactions are retried (bounded) on ABORTED and
//! UNAVAILABLE; what still fails is [`StoreError::Unavailable`], which the node retries later
//! and which opens a circuit that turns `/readyz` red until a probe succeeds.
//!
//! **Snapshot install** is not one transaction (a snapshot can exceed any transaction): the meta
//! document is first marked `installing` (the store then reports applied index 0, so a node that
//! crashes midway installs the snapshot again), the old documents are deleted, the snapshot's are
//! written in groups, and the meta document last.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use firestore::{
    FirestoreDb, FirestoreDbOptions, FirestoreQueryCursor, FirestoreWritePrecondition,
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::{Snapshot, Store, StoreError, StoreOptions, Summary};
use crate::bank::{self, IdempotencyRecord, Ledger};
use crate::command::{AccountId, Entry, IdempotencyKey, Outcome};
use crate::money::Money;

/// Most documents (accounts, keys and the meta document) one apply transaction writes: entries
/// are grouped up to this (an entry is never split, so one huge entry goes alone).
pub const MAX_DOCS_PER_TRANSACTION: usize = 400;
const META_DOC: &str = "state";

/// Where the store lives and how long to wait for it.
#[derive(Clone, Debug)]
pub struct FirestoreConfig {
    /// Google Cloud project.
    pub project: String,
    /// Database id, `(default)` unless named.
    pub database: String,
    /// Collection of the account documents (the meta and key collections derive from it).
    pub collection: String,
    /// Longest wait for one Firestore request.
    pub request_timeout: Duration,
    /// Leader mode's one collection shared by every node (only the leader applies to it).
    pub shared: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct AccountDoc {
    id: String,
    balance_cents: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MetaDoc {
    applied_index: i64,
    accounts: i64,
    /// i128 does not fit a Firestore integer: kept as decimal text.
    total_cents: String,
    installing: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyDoc {
    key: String,
    index: i64,
    /// The [`IdempotencyRecord`] as JSON.
    record: String,
}

/// The state read from the meta document.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    applied: u64,
    accounts: u64,
    total: i128,
}

impl MetaDoc {
    fn parse(&self) -> Result<Meta, StoreError> {
        if self.installing {
            // A snapshot install did not finish: the state is incomplete, start over from it.
            return Ok(Meta::default());
        }
        Ok(Meta {
            applied: u64::try_from(self.applied_index).map_err(fatal)?,
            accounts: u64::try_from(self.accounts).map_err(fatal)?,
            total: if self.total_cents.is_empty() {
                0
            } else {
                self.total_cents.parse().map_err(fatal)?
            },
        })
    }

    fn from_meta(meta: Meta) -> MetaDoc {
        MetaDoc {
            applied_index: meta.applied as i64,
            accounts: meta.accounts as i64,
            total_cents: meta.total.to_string(),
            installing: false,
        }
    }
}

fn fatal(err: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(err.to_string())
}

/// Network trouble, timeouts, an overloaded or unreachable Firestore: retry later. Data that does
/// not decode is fatal (the store holds something this code did not write).
fn classify(err: firestore::errors::FirestoreError) -> StoreError {
    use firestore::errors::FirestoreError as E;
    match err {
        E::SerializeError(_) | E::DeserializeError(_) => StoreError::Fatal(err.to_string()),
        E::ErrorInTransaction(ref inner) => match inner.source.downcast_ref::<StoreError>() {
            Some(StoreError::Fatal(text)) => StoreError::Fatal(text.clone()),
            _ => StoreError::Unavailable(err.to_string()),
        },
        _ => StoreError::Unavailable(err.to_string()),
    }
}

/// How one apply attempt ended when it did not commit.
enum Attempt {
    /// Another writer committed first (the meta document changed): read again and retry.
    Conflict(String),
    /// Anything else.
    Failed(StoreError),
}

/// Attempts before an apply that keeps losing to other writers gives up (as unavailable).
const MAX_APPLY_ATTEMPTS: u32 = 8;

/// A failed write condition (the meta document changed or appeared) or an aborted commit.
fn is_conflict(err: &firestore::errors::FirestoreError) -> bool {
    use firestore::errors::FirestoreError as E;
    match err {
        E::DataConflictError(_) => true,
        E::DatabaseError(e) => matches!(e.public.code.as_str(), "FailedPrecondition" | "Aborted"),
        _ => false,
    }
}

fn key_doc_id(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A span for one Firestore call, only inside a sampled trace (so untraced traffic starts no
/// traces of its own).
fn op_span(op: &'static str) -> tracing::Span {
    if telemetry::trace::current_sampled().is_some() {
        tracing::info_span!(
            "firestore",
            otel.name = format!("firestore.{op}"),
            otel.kind = "client"
        )
    } else {
        tracing::Span::none()
    }
}

fn observe(op: &'static str, started: Instant) {
    metrics::histogram!(crate::metrics::STORE_OPERATION_DURATION, "backend" => "firestore", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// The Firestore store. Cheap to clone.
#[derive(Clone)]
pub struct FirestoreStore {
    db: FirestoreDb,
    accounts: Arc<str>,
    meta: Arc<str>,
    keys: Arc<str>,
    options: StoreOptions,
    shared: bool,
    /// Closed circuit: the last call succeeded. Open: it failed as unavailable.
    healthy: Arc<AtomicBool>,
    /// Milliseconds since `epoch` of the last successful call.
    last_ok_ms: Arc<AtomicU64>,
    /// Applied index at the last pruning of expired idempotency records.
    pruned_at: Arc<AtomicU64>,
    epoch: Instant,
}

impl FirestoreStore {
    /// Connects and reads the meta document once, so a missing project, bad credentials or an
    /// unreachable Firestore is a clear error at startup rather than at the first request.
    pub async fn connect(
        config: &FirestoreConfig,
        options: StoreOptions,
    ) -> Result<FirestoreStore, StoreError> {
        let where_ = match std::env::var("FIRESTORE_EMULATOR_HOST") {
            Ok(host) => format!("the Firestore emulator at {host}"),
            Err(_) => "Firestore".to_owned(),
        };
        let describe = |err: &dyn std::fmt::Display| {
            format!(
                "{where_} (project {:?}, database {:?}) cannot be used: {err}. Set \
                 FIRESTORE_EMULATOR_HOST for the emulator, or credentials the standard way \
                 (GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server)",
                config.project, config.database
            )
        };
        check_names(&config.project, &config.collection).map_err(StoreError::Fatal)?;
        let db_options = FirestoreDbOptions::new(config.project.clone())
            .with_database_id(config.database.clone())
            .with_max_retries(1)
            .with_request_timeout(config.request_timeout);
        let connecting = FirestoreDb::with_options(db_options);
        let db = match tokio::time::timeout(config.request_timeout * 2, connecting).await {
            Ok(Ok(db)) => db,
            Ok(Err(err)) => return Err(StoreError::Unavailable(describe(&err))),
            Err(_) => return Err(StoreError::Unavailable(describe(&"connecting timed out"))),
        };
        let store = FirestoreStore {
            db,
            accounts: config.collection.as_str().into(),
            meta: format!("{}-meta", config.collection).into(),
            keys: format!("{}-keys", config.collection).into(),
            options,
            shared: config.shared,
            healthy: Arc::new(AtomicBool::new(true)),
            last_ok_ms: Arc::new(AtomicU64::new(0)),
            pruned_at: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        match tokio::time::timeout(config.request_timeout * 2, store.read_meta(&store.db)).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(err)) => Err(StoreError::Unavailable(describe(&err))),
            Err(_) => Err(StoreError::Unavailable(describe(&"no answer in time"))),
        }
    }

    /// Records the result of a call in the circuit.
    fn track<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Ok(_) => {
                self.healthy.store(true, Ordering::Relaxed);
                self.last_ok_ms
                    .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            Err(StoreError::Unavailable(text)) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %text, "firestore unavailable: circuit open");
                }
                metrics::counter!(crate::metrics::STORE_ERRORS, "backend" => "firestore", "kind" => "unavailable")
                    .increment(1);
            }
            Err(_) => {
                metrics::counter!(crate::metrics::STORE_ERRORS, "backend" => "firestore", "kind" => "fatal")
                    .increment(1);
            }
        }
        result
    }

    async fn read_meta(&self, db: &FirestoreDb) -> Result<Meta, StoreError> {
        let started = Instant::now();
        let doc: Option<MetaDoc> = db
            .fluent()
            .select()
            .by_id_in(&self.meta)
            .obj()
            .one(META_DOC)
            .instrument(op_span("get"))
            .await
            .map_err(classify)?;
        observe("get", started);
        doc.unwrap_or_default().parse()
    }

    /// Applies one group of entries in one atomic commit, retrying (bounded, with backoff)
    /// when another writer committed first.
    async fn apply_group(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<Option<Vec<Outcome>>>, StoreError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let result = loop {
            match self.try_apply(entries).instrument(op_span("apply")).await {
                Err(Attempt::Conflict(text)) if attempt < MAX_APPLY_ATTEMPTS => {
                    attempt += 1;
                    metrics::counter!(crate::metrics::STORE_TRANSACTION_RETRIES, "backend" => "firestore")
                        .increment(1);
                    tracing::debug!(attempt, %text, "another writer committed first; retrying");
                    let backoff = Duration::from_millis(10u64 << attempt.min(6));
                    tokio::time::sleep(backoff).await;
                }
                Err(Attempt::Conflict(text)) => {
                    break Err(StoreError::Unavailable(format!(
                        "gave up after {attempt} conflicting commits: {text}"
                    )));
                }
                Err(Attempt::Failed(err)) => break Err(err),
                Ok(outcomes) => break Ok(outcomes),
            }
        };
        observe("transaction", started);
        result
    }

    /// One optimistic attempt: read the meta document (and its update time) and the documents
    /// the commands need, apply in memory, then commit every write at once on the condition that
    /// the meta document is unchanged. Every apply writes the meta document, so any commit in
    /// between fails the condition: commits are serialized without holding a single lock (a
    /// writer killed mid-apply leaves nothing behind, unlike a pessimistic transaction whose
    /// read locks stall the next writer until they expire).
    async fn try_apply(&self, entries: &[Entry]) -> Result<Vec<Option<Vec<Outcome>>>, Attempt> {
        let started = Instant::now();
        let doc = self
            .db
            .fluent()
            .select()
            .by_id_in(&self.meta)
            .one(META_DOC)
            .await
            .map_err(|e| Attempt::Failed(classify(e)))?;
        observe("get", started);
        let (meta, precondition) = match &doc {
            None => (Meta::default(), FirestoreWritePrecondition::Exists(false)),
            Some(doc) => {
                let parsed: MetaDoc =
                    FirestoreDb::deserialize_doc_to(doc).map_err(|e| Attempt::Failed(fatal(e)))?;
                let updated = doc
                    .update_time
                    .ok_or_else(|| Attempt::Failed(fatal("meta document without update time")))?;
                let updated = firestore::timestamp_utils::from_timestamp(updated)
                    .map_err(|e| Attempt::Failed(fatal(e)))?;
                (
                    parsed.parse().map_err(Attempt::Failed)?,
                    FirestoreWritePrecondition::UpdateTime(updated),
                )
            }
        };
        let pending: Vec<&Entry> = entries.iter().filter(|e| e.index > meta.applied).collect();
        if let Some(first) = pending.first()
            && first.index != meta.applied + 1
        {
            return Err(Attempt::Failed(StoreError::OutOfOrder {
                expected: meta.applied + 1,
                got: first.index,
            }));
        }
        if pending.is_empty() {
            return Ok(entries.iter().map(|_| None).collect());
        }
        let mut ids: Vec<AccountId> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        for command in pending.iter().flat_map(|e| &e.commands) {
            ids.extend(command.op.accounts());
            if let Some(key) = &command.idempotency_key {
                keys.push(key.as_str().to_owned());
            }
        }
        ids.sort_unstable();
        ids.dedup();
        keys.sort_unstable();
        keys.dedup();
        let mut ledger = self
            .fetch_ledger(&self.db, &ids, &keys)
            .await
            .map_err(Attempt::Failed)?;
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut total = meta.total;
        let mut last = meta.applied;
        for entry in entries {
            if entry.index <= meta.applied {
                outcomes.push(None);
                continue;
            }
            if entry.index != last + 1 {
                return Err(Attempt::Failed(StoreError::OutOfOrder {
                    expected: last + 1,
                    got: entry.index,
                }));
            }
            let mut results = Vec::with_capacity(entry.commands.len());
            for command in &entry.commands {
                let applied = bank::apply(
                    &mut ledger,
                    entry.index,
                    command,
                    self.options.idempotency_retention,
                )
                .map_err(Attempt::Failed)?;
                total += applied.total_delta;
                results.push(applied.outcome);
            }
            outcomes.push(Some(results));
            last = entry.index;
        }
        let started = Instant::now();
        let failed = |e| Attempt::Failed(classify(e));
        let mut transaction = self.db.begin_transaction().await.map_err(failed)?;
        for id in &ledger.dirty {
            let balance = ledger.accounts[id].expect("a written account exists");
            self.queue_account(&mut transaction, *id, balance)
                .map_err(failed)?;
        }
        for (key, record) in &ledger.new_keys {
            self.queue_key(&mut transaction, key, record)
                .map_err(Attempt::Failed)?;
        }
        let new_meta = Meta {
            applied: last,
            accounts: meta.accounts + ledger.created,
            total,
        };
        self.db
            .fluent()
            .update()
            .in_col(&self.meta)
            .precondition(precondition)
            .document_id(META_DOC)
            .object(&MetaDoc::from_meta(new_meta))
            .add_to_transaction(&mut transaction)
            .map_err(failed)?;
        match transaction.commit().await {
            Ok(_) => {}
            Err(err) if is_conflict(&err) => return Err(Attempt::Conflict(err.to_string())),
            Err(err) => return Err(failed(err)),
        }
        observe("commit", started);
        let commands: usize = pending.iter().map(|e| e.commands.len()).sum();
        metrics::histogram!(crate::metrics::STORE_COMMIT_BATCH_SIZE, "backend" => "firestore")
            .record(commands as f64);
        Ok(outcomes)
    }

    /// Reads the accounts and idempotency records a group of commands needs, in the
    /// transaction, into an in-memory ledger.
    async fn fetch_ledger(
        &self,
        db: &FirestoreDb,
        ids: &[AccountId],
        keys: &[String],
    ) -> Result<MemLedger, StoreError> {
        let mut ledger = MemLedger::default();
        if !ids.is_empty() {
            let started = Instant::now();
            let docs: Vec<(String, Option<AccountDoc>)> = db
                .fluent()
                .select()
                .by_id_in(&self.accounts)
                .obj()
                .batch(ids.iter().map(|id| id.to_string()))
                .instrument(op_span("batch_get"))
                .await
                .map_err(classify)?
                .collect()
                .await;
            observe("batch_get", started);
            for (doc_id, doc) in docs {
                let id: AccountId = doc_id
                    .parse()
                    .map_err(|_| fatal("bad account document id"))?;
                ledger
                    .accounts
                    .insert(id, doc.map(|d| Money::from_cents(d.balance_cents)));
            }
            for id in ids {
                ledger.accounts.entry(*id).or_insert(None);
            }
        }
        if !keys.is_empty() {
            let started = Instant::now();
            let docs: Vec<(String, Option<KeyDoc>)> = db
                .fluent()
                .select()
                .by_id_in(&self.keys)
                .obj()
                .batch(keys.iter().map(|k| key_doc_id(k)))
                .instrument(op_span("batch_get"))
                .await
                .map_err(classify)?
                .collect()
                .await;
            observe("batch_get", started);
            for (_, doc) in docs {
                let Some(doc) = doc else { continue };
                // Even an expired record: `bank::apply` judges expiry by the entry's index.
                let record = serde_json::from_str(&doc.record).map_err(fatal)?;
                ledger.keys.insert(doc.key.clone(), record);
            }
        }
        Ok(ledger)
    }

    /// The record of a key document if it is still retained at `applied` (records older than the
    /// retention are gone for the state machine even before their documents are deleted).
    fn visible(&self, doc: &KeyDoc, applied: u64) -> Result<Option<IdempotencyRecord>, StoreError> {
        let index = u64::try_from(doc.index).map_err(fatal)?;
        if applied >= index.saturating_add(self.options.idempotency_retention) {
            return Ok(None);
        }
        serde_json::from_str(&doc.record).map(Some).map_err(fatal)
    }

    /// Queues the write of one account document.
    fn queue_account(
        &self,
        transaction: &mut firestore::FirestoreTransaction<'_>,
        id: AccountId,
        balance: Money,
    ) -> Result<(), firestore::errors::FirestoreError> {
        let doc = AccountDoc {
            id: id.to_string(),
            balance_cents: balance.cents(),
        };
        self.db
            .fluent()
            .update()
            .in_col(&self.accounts)
            .document_id(id.to_string())
            .object(&doc)
            .add_to_transaction(transaction)
            .map(|_| ())
    }

    /// Queues the write of one idempotency record's document.
    fn queue_key(
        &self,
        transaction: &mut firestore::FirestoreTransaction<'_>,
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<(), StoreError> {
        let doc = KeyDoc {
            key: key.to_owned(),
            index: record.index as i64,
            record: serde_json::to_string(record).map_err(fatal)?,
        };
        self.db
            .fluent()
            .update()
            .in_col(&self.keys)
            .document_id(key_doc_id(key))
            .object(&doc)
            .add_to_transaction(transaction)
            .map(|_| ())
            .map_err(classify)
    }

    /// Deletes key documents the retention has expired (they are already invisible): up to one
    /// page per call, so the work per apply stays bounded.
    async fn prune_keys(&self, applied: u64) -> Result<(), StoreError> {
        let Some(cutoff) = applied.checked_sub(self.options.idempotency_retention) else {
            return Ok(());
        };
        let started = Instant::now();
        let expired: Vec<KeyDoc> = self
            .db
            .fluent()
            .select()
            .from(self.keys.as_ref())
            .filter(|q| q.for_all([q.field("index").less_than_or_equal(cutoff as i64)]))
            .limit(MAX_DOCS_PER_TRANSACTION as u32)
            .obj()
            .query()
            .await
            .map_err(classify)?;
        observe("query", started);
        if expired.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = expired.iter().map(|d| key_doc_id(&d.key)).collect();
        self.delete_docs(&self.keys, &ids).await
    }

    async fn delete_docs(&self, collection: &str, ids: &[String]) -> Result<(), StoreError> {
        for chunk in ids.chunks(MAX_DOCS_PER_TRANSACTION) {
            let started = Instant::now();
            let mut transaction = self.db.begin_transaction().await.map_err(classify)?;
            for id in chunk {
                self.db
                    .fluent()
                    .delete()
                    .from(collection)
                    .document_id(id)
                    .add_to_transaction(&mut transaction)
                    .map_err(classify)?;
            }
            transaction.commit().await.map_err(classify)?;
            observe("commit", started);
        }
        Ok(())
    }

    /// Every document id of a collection.
    async fn list_ids(&self, collection: &str) -> Result<Vec<String>, StoreError> {
        let started = Instant::now();
        let stream = self
            .db
            .fluent()
            .list()
            .from(collection)
            .page_size(500)
            .stream_all_with_errors()
            .await
            .map_err(classify)?;
        let docs: Vec<_> = stream.collect().await;
        let mut ids = Vec::with_capacity(docs.len());
        for doc in docs {
            let doc = doc.map_err(classify)?;
            let id = doc.name.rsplit('/').next().unwrap_or_default().to_owned();
            ids.push(id);
        }
        observe("list", started);
        Ok(ids)
    }

    async fn list_objects<T>(&self, collection: &str) -> Result<Vec<T>, StoreError>
    where
        T: for<'de> Deserialize<'de> + Send + 'static,
    {
        let started = Instant::now();
        let stream = self
            .db
            .fluent()
            .list()
            .from(collection)
            .page_size(500)
            .obj::<T>()
            .stream_all_with_errors()
            .await
            .map_err(classify)?;
        let items: Vec<_> = stream.collect().await;
        observe("list", started);
        items.into_iter().map(|i| i.map_err(classify)).collect()
    }

    async fn write_meta(&self, doc: &MetaDoc) -> Result<(), StoreError> {
        let started = Instant::now();
        let _: MetaDoc = self
            .db
            .fluent()
            .update()
            .in_col(&self.meta)
            .document_id(META_DOC)
            .object(doc)
            .execute()
            .await
            .map_err(classify)?;
        observe("write", started);
        Ok(())
    }

    async fn snapshot_once(&self) -> Result<Option<Snapshot>, StoreError> {
        let before = self.read_meta(&self.db).await?;
        let accounts: Vec<AccountDoc> = self.list_objects(&self.accounts).await?;
        let keys: Vec<KeyDoc> = self.list_objects(&self.keys).await?;
        let after = self.read_meta(&self.db).await?;
        if before.applied != after.applied {
            return Ok(None);
        }
        let mut snapshot = Snapshot {
            applied_index: after.applied,
            accounts: Vec::with_capacity(accounts.len()),
            keys: Vec::with_capacity(keys.len()),
        };
        for doc in accounts {
            let id: AccountId = doc.id.parse().map_err(|_| fatal("bad account id"))?;
            snapshot
                .accounts
                .push((id, Money::from_cents(doc.balance_cents)));
        }
        snapshot.accounts.sort_by_key(|(id, _)| *id);
        for doc in keys {
            if let Some(record) = self.visible(&doc, after.applied)? {
                let key = IdempotencyKey::parse(&doc.key).ok_or_else(|| fatal("bad stored key"))?;
                snapshot.keys.push((key, record));
            }
        }
        Ok(Some(snapshot))
    }

    async fn install(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.write_meta(&MetaDoc {
            installing: true,
            ..MetaDoc::default()
        })
        .await?;
        let old_accounts = self.list_ids(&self.accounts).await?;
        self.delete_docs(&self.accounts, &old_accounts).await?;
        let old_keys = self.list_ids(&self.keys).await?;
        self.delete_docs(&self.keys, &old_keys).await?;
        for chunk in snapshot.accounts.chunks(MAX_DOCS_PER_TRANSACTION) {
            let started = Instant::now();
            let mut transaction = self.db.begin_transaction().await.map_err(classify)?;
            for (id, balance) in chunk {
                self.queue_account(&mut transaction, *id, *balance)
                    .map_err(classify)?;
            }
            transaction.commit().await.map_err(classify)?;
            observe("commit", started);
        }
        for chunk in snapshot.keys.chunks(MAX_DOCS_PER_TRANSACTION) {
            let started = Instant::now();
            let mut transaction = self.db.begin_transaction().await.map_err(classify)?;
            for (key, record) in chunk {
                self.queue_key(&mut transaction, key.as_str(), record)?;
            }
            transaction.commit().await.map_err(classify)?;
            observe("commit", started);
        }
        let total = snapshot
            .accounts
            .iter()
            .map(|(_, b)| i128::from(b.cents()))
            .sum();
        self.write_meta(&MetaDoc::from_meta(Meta {
            applied: snapshot.applied_index,
            accounts: snapshot.accounts.len() as u64,
            total,
        }))
        .await
    }
}

/// Checks names before they reach Firestore.
fn check_names(project: &str, collection: &str) -> Result<(), String> {
    if project.trim().is_empty() {
        return Err(
            "no Firestore project: set --firestore-project or GOOGLE_CLOUD_PROJECT".to_owned(),
        );
    }
    let valid = !collection.is_empty()
        && collection.len() <= 100
        && collection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "--firestore-collection-prefix must be 1 to 100 letters, digits, '-' or '_', got {collection:?}"
        ));
    }
    Ok(())
}

/// The documents one transaction read, as the state machine's [`Ledger`].
#[derive(Default)]
struct MemLedger {
    accounts: HashMap<AccountId, Option<Money>>,
    dirty: HashSet<AccountId>,
    keys: HashMap<String, IdempotencyRecord>,
    new_keys: Vec<(String, IdempotencyRecord)>,
    created: u64,
}

impl Ledger for MemLedger {
    type Error = StoreError;

    fn balance(&mut self, id: AccountId) -> Result<Option<Money>, StoreError> {
        match self.accounts.get(&id) {
            Some(balance) => Ok(*balance),
            None => Err(fatal(format!(
                "account {id} was not fetched before applying"
            ))),
        }
    }

    fn set_balance(
        &mut self,
        id: AccountId,
        balance: Money,
        created: bool,
    ) -> Result<(), StoreError> {
        self.accounts.insert(id, Some(balance));
        self.dirty.insert(id);
        self.created += u64::from(created);
        Ok(())
    }

    fn idempotency(
        &mut self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self.keys.get(key.as_str()).cloned())
    }

    fn remember(
        &mut self,
        key: &IdempotencyKey,
        record: IdempotencyRecord,
    ) -> Result<(), StoreError> {
        self.keys.insert(key.as_str().to_owned(), record.clone());
        self.new_keys.retain(|(k, _)| k != key.as_str());
        self.new_keys.push((key.as_str().to_owned(), record));
        Ok(())
    }
}

/// Groups entries so one transaction writes at most [`MAX_DOCS_PER_TRANSACTION`] documents.
fn groups(entries: &[Entry]) -> Vec<Vec<Entry>> {
    let mut groups = Vec::new();
    let mut current: Vec<Entry> = Vec::new();
    let mut docs = 1; // the meta document
    for entry in entries {
        let cost: usize = entry
            .commands
            .iter()
            .map(|c| c.op.accounts().count() + usize::from(c.idempotency_key.is_some()))
            .sum();
        if !current.is_empty() && docs + cost > MAX_DOCS_PER_TRANSACTION {
            groups.push(std::mem::take(&mut current));
            docs = 1;
        }
        docs += cost;
        current.push(entry.clone());
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[async_trait]
impl Store for FirestoreStore {
    fn backend(&self) -> &'static str {
        "firestore"
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Option<Vec<Outcome>>>, StoreError> {
        let started = Instant::now();
        let mut outcomes = Vec::with_capacity(entries.len());
        for group in groups(entries) {
            let result = self.apply_group(&group).await;
            outcomes.extend(self.track(result)?);
        }
        if let Some(last) = entries.last() {
            // Expired records are invisible already; deleting them is housekeeping that may
            // fail without harm.
            // At most once per 64 applied entries, whatever the batch sizes.
            let pruned = self.pruned_at.load(Ordering::Relaxed);
            if last.index >= pruned.saturating_add(64) {
                self.pruned_at.store(last.index, Ordering::Relaxed);
                if let Err(err) = self.prune_keys(last.index).await {
                    tracing::debug!(%err, "pruning expired idempotency records failed; retried later");
                }
            }
        }
        observe("apply", started);
        Ok(outcomes)
    }

    async fn summary(&self) -> Result<Summary, StoreError> {
        let meta = self.read_meta(&self.db).await;
        let meta = self.track(meta)?;
        Ok(Summary {
            applied_index: meta.applied,
            accounts: meta.accounts,
            total_cents: meta.total,
        })
    }

    async fn balance(&self, id: AccountId) -> Result<Option<Money>, StoreError> {
        let started = Instant::now();
        let doc: Result<Option<AccountDoc>, _> = self
            .db
            .fluent()
            .select()
            .by_id_in(&self.accounts)
            .obj()
            .one(id.to_string())
            .instrument(op_span("get"))
            .await
            .map_err(classify);
        observe("get", started);
        let doc = self.track(doc)?;
        Ok(doc.map(|d| Money::from_cents(d.balance_cents)))
    }

    async fn accounts(
        &self,
        after: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, Money)>, StoreError> {
        let started = Instant::now();
        let mut query = self
            .db
            .fluent()
            .select()
            .from(self.accounts.as_ref())
            .order(|o| o.fields([o.field("id").asc()]))
            .limit(limit.min(10_000) as u32);
        if let Some(after) = after {
            query = query.start_at(FirestoreQueryCursor::AfterValue(vec![
                after.to_string().into(),
            ]));
        }
        let docs: Result<Vec<AccountDoc>, _> = query.obj().query().await.map_err(classify);
        observe("query", started);
        let docs = self.track(docs)?;
        docs.into_iter()
            .map(|d| {
                let id: AccountId = d.id.parse().map_err(|_| fatal("bad account id"))?;
                Ok((id, Money::from_cents(d.balance_cents)))
            })
            .collect()
    }

    async fn idempotency(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let started = Instant::now();
        let read = async {
            let doc: Option<KeyDoc> = self
                .db
                .fluent()
                .select()
                .by_id_in(&self.keys)
                .obj()
                .one(key_doc_id(key.as_str()))
                .await
                .map_err(classify)?;
            let meta = self.read_meta(&self.db).await?;
            match doc {
                Some(doc) => self.visible(&doc, meta.applied),
                None => Ok(None),
            }
        };
        let result = read.await;
        observe("get", started);
        self.track(result)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // Optimistic: a snapshot whose applied index moved while it was read is read again.
        for _ in 0..5 {
            let result = self.snapshot_once().await;
            if let Some(snapshot) = self.track(result)? {
                return Ok(snapshot);
            }
        }
        Err(StoreError::Unavailable(
            "the store kept changing while a snapshot was read".to_owned(),
        ))
    }

    async fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let result = self.install(snapshot).await;
        self.track(result)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // While calls keep succeeding, readiness costs no request; after a failure (or 5 s of
        // silence) it probes the meta document, which closes the circuit again when it works.
        let now = self.epoch.elapsed().as_millis() as u64;
        let last_ok = self.last_ok_ms.load(Ordering::Relaxed);
        if self.healthy.load(Ordering::Relaxed)
            && now.saturating_sub(last_ok) < 5_000
            && last_ok > 0
        {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(2), self.summary()).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(StoreError::Unavailable(
                "firestore did not answer the readiness probe within 2 s".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Operation};
    use crate::store::conformance::{self, Harness};
    use crate::store::firestore_emulator;

    fn config(collection: &str) -> FirestoreConfig {
        FirestoreConfig {
            project: "paxos-bank-test".to_owned(),
            database: "(default)".to_owned(),
            collection: collection.to_owned(),
            request_timeout: Duration::from_secs(10),
            shared: false,
        }
    }

    struct FirestoreHarness {
        collection: String,
    }

    impl Harness for FirestoreHarness {
        type Store = FirestoreStore;

        async fn fresh(&mut self, options: StoreOptions) -> FirestoreStore {
            // A new collection per store: the emulator keeps every earlier one.
            self.collection = format!("conformance-{}", uuid::Uuid::new_v4().simple());
            FirestoreStore::connect(&config(&self.collection), options)
                .await
                .unwrap()
        }

        async fn reopen(&mut self, store: FirestoreStore, options: StoreOptions) -> FirestoreStore {
            drop(store);
            FirestoreStore::connect(&config(&self.collection), options)
                .await
                .unwrap()
        }
    }

    /// The same suite as the embedded store, against the real Firestore emulator.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn firestore_store_passes_the_conformance_suite() {
        if firestore_emulator::for_tests().is_none() {
            return;
        }
        conformance::run_all(FirestoreHarness {
            collection: String::new(),
        })
        .await;
    }

    /// Expired idempotency records are deleted, not only hidden: the key collection stays
    /// bounded by the retention (plus one pruning period), whatever the batch sizes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_idempotency_records_are_deleted() {
        if firestore_emulator::for_tests().is_none() {
            return;
        }
        let options = StoreOptions {
            idempotency_retention: 10,
            ..StoreOptions::default()
        };
        let collection = format!("prune-{}", uuid::Uuid::new_v4().simple());
        let store = FirestoreStore::connect(&config(&collection), options)
            .await
            .unwrap();
        let a = AccountId::random();
        let command = |op, key: Option<String>| Command {
            op,
            idempotency_key: key.and_then(|k| IdempotencyKey::parse(&k)),
            request_id: None,
        };
        store
            .apply(&[Entry {
                index: 1,
                commands: vec![command(Operation::OpenAccount { account_id: a }, None)],
            }])
            .await
            .unwrap();
        let deposits: Vec<Entry> = (2..=200u64)
            .map(|index| Entry {
                index,
                commands: vec![command(
                    Operation::Deposit {
                        account_id: a,
                        amount: Money::from_cents(1),
                    },
                    Some(format!("key-{index}")),
                )],
            })
            .collect();
        // Batches of 7: the applied index rarely lands on a round number.
        for batch in deposits.chunks(7) {
            store.apply(batch).await.unwrap();
        }
        let left = store.list_ids(&store.keys).await.unwrap();
        assert!(
            left.len() <= 10 + 64,
            "{} key documents left of 199 (retention 10, pruned every 64 entries)",
            left.len()
        );
        assert_eq!(
            store.balance(a).await.unwrap(),
            Some(Money::from_cents(199))
        );
    }

    /// A writer that lost the race (a deposed leader, a replay after a crash) applies nothing:
    /// the transaction sees the advanced applied index in the meta document.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_of_one_collection_apply_each_entry_once() {
        if firestore_emulator::for_tests().is_none() {
            return;
        }
        let collection = format!("two-writers-{}", uuid::Uuid::new_v4().simple());
        let first = FirestoreStore::connect(&config(&collection), StoreOptions::default())
            .await
            .unwrap();
        let second = FirestoreStore::connect(&config(&collection), StoreOptions::default())
            .await
            .unwrap();
        let a = AccountId::random();
        let open = Entry {
            index: 1,
            commands: vec![Command {
                op: Operation::OpenAccount { account_id: a },
                idempotency_key: None,
                request_id: None,
            }],
        };
        let dep = |index| Entry {
            index,
            commands: vec![Command {
                op: Operation::Deposit {
                    account_id: a,
                    amount: Money::from_cents(100),
                },
                idempotency_key: None,
                request_id: None,
            }],
        };
        let entries = vec![open, dep(2), dep(3)];
        let (x, y) = tokio::join!(first.apply(&entries), second.apply(&entries));
        let (x, y) = (x.unwrap(), y.unwrap());
        for i in 0..3 {
            assert!(
                x[i].is_some() != y[i].is_some(),
                "entry {} applied by exactly one writer: {:?} / {:?}",
                i + 1,
                x[i],
                y[i]
            );
        }
        assert_eq!(
            first.balance(a).await.unwrap(),
            Some(Money::from_cents(200))
        );
        let summary = second.summary().await.unwrap();
        assert_eq!(summary.applied_index, 3);
        assert_eq!(summary.total_cents, 200);
        // A replay of everything (a restarted replica) changes nothing.
        let replay = first.apply(&entries).await.unwrap();
        assert!(replay.iter().all(Option::is_none));
        assert_eq!(
            first.balance(a).await.unwrap(),
            Some(Money::from_cents(200))
        );
    }

    fn deposit(index: u64, accounts: usize, keyed: bool) -> Entry {
        Entry {
            index,
            commands: (0..accounts)
                .map(|i| Command {
                    op: Operation::Deposit {
                        account_id: AccountId::random(),
                        amount: Money::from_cents(1),
                    },
                    idempotency_key: keyed
                        .then(|| IdempotencyKey::parse(&format!("k-{index}-{i}")).unwrap()),
                    request_id: None,
                })
                .collect(),
        }
    }

    #[test]
    fn groups_stay_under_the_document_limit_and_keep_order() {
        let entries: Vec<Entry> = (1..=10).map(|i| deposit(i, 100, true)).collect();
        let grouped = groups(&entries);
        // 200 documents per entry: one entry per group plus the meta document.
        assert_eq!(grouped.len(), 10);
        let flat: Vec<u64> = grouped.iter().flatten().map(|e| e.index).collect();
        assert_eq!(flat, (1..=10).collect::<Vec<_>>());
        let small: Vec<Entry> = (1..=10).map(|i| deposit(i, 10, false)).collect();
        let grouped = groups(&small);
        assert_eq!(grouped.len(), 1, "100 documents fit one transaction");
        let huge = vec![deposit(1, 1_000, false), deposit(2, 1, false)];
        let grouped = groups(&huge);
        assert_eq!(
            grouped.len(),
            2,
            "an entry over the limit goes alone, never split"
        );
    }

    #[test]
    fn key_document_ids_are_hex_so_any_key_is_a_valid_id() {
        assert_eq!(key_doc_id("a/b"), "612f62");
        assert_eq!(key_doc_id(".."), "2e2e");
    }

    #[test]
    fn names_are_checked_before_connecting() {
        assert!(
            check_names("", "accounts")
                .unwrap_err()
                .contains("GOOGLE_CLOUD_PROJECT")
        );
        assert!(check_names("p", "a/b").is_err());
        assert!(check_names("p", "accounts-0").is_ok());
    }
}
