//! Durable bank state behind one trait, so the embedded database and Firestore are
//! interchangeable and pass the same `conformance` suite (its tests).
//!
//! A store holds the state machine's state: balances, idempotency records and the index of the
//! last applied log entry, which is written in the same transaction as the balances it produced.
//! Applying is the only way to change a store.

#[cfg(test)]
pub mod conformance;
pub mod embedded;
pub mod firestore;
pub mod firestore_emulator;

use async_trait::async_trait;

use crate::bank::IdempotencyRecord;
use crate::command::{AccountId, Entry, IdempotencyKey, Outcome};
use crate::money::Money;

pub use embedded::EmbeddedStore;
pub use firestore::{FirestoreConfig, FirestoreStore};

/// Which store a node keeps its state in: the one type every binary, flag, file and label names
/// a store with (`embedded` and `firestore` on the command line, in JSON and in metric labels).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A redb file in the node's data directory.
    Embedded,
    /// Google Firestore (or its emulator).
    Firestore,
}

impl StoreKind {
    /// `embedded` or `firestore`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Firestore => "firestore",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A storage failure. Business outcomes are never errors (see [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now (a remote database down); retrying may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Entries were offered out of order: the store expected `expected` next.
    #[error("entry {got} offered but the store expects entry {expected} next")]
    OutOfOrder {
        /// The next index the store can apply.
        expected: u64,
        /// The first index offered.
        got: u64,
    },
    /// The store is damaged or its I/O failed; the replica must stop rather than go on.
    #[error("store failure: {0}")]
    Fatal(String),
}

impl StoreError {
    /// Whether the caller may retry the same call later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Totals kept in the same transactions as the balances, so they are always consistent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Index of the last applied log entry (0: none).
    pub applied_index: u64,
    /// Number of accounts.
    pub accounts: u64,
    /// Sum of all balances, in cents.
    pub total_cents: i128,
}

/// Settings that are part of the replicated state machine: every replica must use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// An idempotency record is kept until this many further log entries have been applied.
    pub idempotency_retention: u64,
    /// Sync every commit before it returns. Standalone nodes must (the store is the only copy);
    /// cluster nodes need not: the Paxos log, synced by a majority, is the commit point, and a
    /// node that loses unsynced applies re-applies them from the log after a restart. Unsynced
    /// commits are still made durable at least every 200 ms.
    pub sync_commits: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            idempotency_retention: 1_000_000,
            sync_commits: true,
        }
    }
}

/// Durable bank state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name, a metric label (`embedded`, `firestore`).
    fn backend(&self) -> &'static str;

    /// Whether every node of the cluster uses this same store (leader mode on Firestore: one
    /// collection that only the leader applies to; the others follow its applied index).
    fn is_shared(&self) -> bool {
        false
    }

    /// Whether the store can serve now (`/readyz`). By default: a summary can be read.
    async fn ready(&self) -> Result<(), StoreError> {
        self.summary().await.map(|_| ())
    }

    /// Applies consecutive entries in one atomic, durable transaction together with the new
    /// applied index. Entries at or below the applied index were applied before (perhaps by
    /// another writer) and yield `None`; the others yield the outcome of each of their commands.
    /// A gap is an error ([`StoreError::OutOfOrder`]) and applies nothing.
    async fn apply(&self, entries: &[Entry]) -> Result<Vec<Option<Vec<Outcome>>>, StoreError>;

    /// Counts and totals, read in one consistent snapshot.
    async fn summary(&self) -> Result<Summary, StoreError>;

    /// The balance of one account, `None` if it does not exist.
    async fn balance(&self, id: AccountId) -> Result<Option<Money>, StoreError>;

    /// Up to `limit` accounts in id order, starting after `after`.
    async fn accounts(
        &self,
        after: Option<AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, Money)>, StoreError>;

    /// The record of an idempotency key, if it was applied and is still retained.
    async fn idempotency(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// The whole state at its applied index: what a Paxos log is compacted into and what a
    /// wiped replica installs.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Replaces the whole state by a snapshot (atomically).
    async fn install_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

/// A store's whole state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Applied index the state corresponds to.
    pub applied_index: u64,
    /// Every account and balance.
    pub accounts: Vec<(AccountId, Money)>,
    /// Every retained idempotency record.
    pub keys: Vec<(IdempotencyKey, IdempotencyRecord)>,
}

impl Snapshot {
    /// Compact bytes (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot always serializes")
    }

    /// From [`Snapshot::encode`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Fatal(format!("bad snapshot: {e}")))
    }
}
