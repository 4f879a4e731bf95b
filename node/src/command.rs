//! Banking commands (what goes into the log) and their outcomes (what applying them produced).
//!
//! A command is validated before it is proposed, and everything a replica needs to apply it is
//! inside it (the id of a new account is chosen by the proposer, not by the replica), so applying
//! a command is deterministic: every replica computes the same outcome from the same state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;

/// An account's id: a UUID chosen by the node that proposed the `open_account` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub Uuid);

impl AccountId {
    /// A fresh random (v4) id.
    pub fn random() -> AccountId {
        AccountId(Uuid::new_v4())
    }

    /// The id as a 128-bit integer (the embedded store's key).
    pub fn as_u128(self) -> u128 {
        self.0.as_u128()
    }

    /// The id from a 128-bit integer.
    pub fn from_u128(value: u128) -> AccountId {
        AccountId(Uuid::from_u128(value))
    }
}

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for AccountId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(AccountId)
    }
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// A client-chosen key that makes a write apply at most once (`Idempotency-Key` header).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A fresh random key (`k-` and 32 hex digits).
    pub fn random() -> IdempotencyKey {
        IdempotencyKey(format!("k-{}", Uuid::new_v4().simple()))
    }

    /// A key of 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII characters.
    pub fn parse(text: &str) -> Option<IdempotencyKey> {
        let ok = !text.is_empty()
            && text.len() <= MAX_IDEMPOTENCY_KEY_BYTES
            && text.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| IdempotencyKey(text.to_owned()))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The banking operation itself, without the idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    /// Create `account_id` with a zero balance.
    OpenAccount {
        /// Chosen by the proposer.
        account_id: AccountId,
    },
    /// Add `amount` to an account.
    Deposit {
        /// Target account.
        account_id: AccountId,
        /// Positive amount.
        amount: Money,
    },
    /// Take `amount` from an account if it holds enough.
    Withdraw {
        /// Source account.
        account_id: AccountId,
        /// Positive amount.
        amount: Money,
    },
    /// Changes nothing: a read barrier through the log (leaderless linearizable reads).
    Barrier,
    /// Move `amount` between two different accounts, atomically.
    Move {
        /// Debited account.
        source: AccountId,
        /// Credited account.
        destination: AccountId,
        /// Positive amount.
        amount: Money,
    },
}

impl Operation {
    /// The operation's name, a low-cardinality metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::OpenAccount { .. } => "open_account",
            Operation::Deposit { .. } => "deposit",
            Operation::Withdraw { .. } => "withdraw",
            Operation::Move { .. } => "move",
            Operation::Barrier => "barrier",
        }
    }

    /// The accounts the operation reads or writes (what a remote store fetches before applying).
    pub fn accounts(&self) -> impl Iterator<Item = AccountId> {
        let (first, second) = match *self {
            Operation::OpenAccount { account_id }
            | Operation::Deposit { account_id, .. }
            | Operation::Withdraw { account_id, .. } => (Some(account_id), None),
            Operation::Move {
                source,
                destination,
                ..
            } => (Some(source), Some(destination)),
            Operation::Barrier => (None, None),
        };
        first.into_iter().chain(second)
    }

    /// What identifies "the same request" for an idempotency key: the operation with the
    /// proposer-chosen parts left out (a retried `open_account` carries a new candidate id).
    pub fn fingerprint(&self) -> Operation {
        match self {
            Operation::OpenAccount { .. } => Operation::OpenAccount {
                account_id: AccountId(Uuid::nil()),
            },
            other => other.clone(),
        }
    }
}

/// One log entry's payload: an operation and the optional idempotency key it was sent with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// What to do.
    pub op: Operation,
    /// Makes the command apply at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    /// Set by the proposing node to find its waiting client when the command is applied; no
    /// effect on the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
}

/// The commands decided at one log position, applied in order. Indexes start at 1; 0 means
/// "nothing applied yet". A position may hold no command (a Paxos no-op).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Log position.
    pub index: u64,
    /// The commands decided at that position.
    pub commands: Vec<Command>,
}

/// What applying a command produced. Every replica computes the same outcome for the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The account was created.
    Opened {
        /// The new account.
        account_id: AccountId,
    },
    /// The deposit was applied.
    Deposited {
        /// The account.
        account_id: AccountId,
        /// Its balance after the deposit.
        balance: Money,
    },
    /// The withdrawal was applied.
    Withdrawn {
        /// The account.
        account_id: AccountId,
        /// Its balance after the withdrawal.
        balance: Money,
    },
    /// The transfer was applied.
    Moved {
        /// Debited account.
        source: AccountId,
        /// Credited account.
        destination: AccountId,
        /// Source balance afterwards.
        source_balance: Money,
        /// Destination balance afterwards.
        destination_balance: Money,
    },
    /// A barrier passed (nothing changed).
    Barrier,
    /// Nothing changed, for a business reason.
    Rejected {
        /// Why.
        reason: Rejection,
    },
}

/// Business reasons a valid command changes nothing. Results of applying, not errors of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The account of a deposit or withdrawal does not exist.
    AccountNotFound,
    /// One or both accounts of a transfer do not exist.
    AccountsNotFound,
    /// The balance is smaller than the amount.
    InsufficientFunds,
    /// The credited balance would pass [`Money::MAX_BALANCE`].
    BalanceLimit,
    /// A transfer from an account to itself (refused before proposing too; here for totality).
    SameAccount,
    /// The id of a new account is already taken (a UUID collision).
    AccountExists,
    /// The idempotency key was first used for a different request.
    IdempotencyKeyReused,
}
