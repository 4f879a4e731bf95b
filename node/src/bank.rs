//! The bank's state machine: how one command changes the ledger. Total and deterministic.
//!
//! Backends provide a [`Ledger`] view over one open transaction; [`apply`] holds the only copy of
//! the business rules, so every backend (and every replica) applies commands identically.

use serde::{Deserialize, Serialize};

use crate::command::{AccountId, Command, IdempotencyKey, Operation, Outcome, Rejection};
use crate::money::Money;

/// What the state machine remembers about an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The request the key was first used with ([`Operation::fingerprint`]).
    pub request: Operation,
    /// What that request produced.
    pub outcome: Outcome,
    /// Log index it was applied at (drives retention).
    pub index: u64,
}

/// Reads and writes of one transaction of a store. Errors are storage failures (fatal for the
/// replica), never business outcomes.
pub trait Ledger {
    /// Storage failure type.
    type Error;
    /// The balance of an account, or `None` if it does not exist.
    fn balance(&mut self, id: AccountId) -> Result<Option<Money>, Self::Error>;
    /// Sets the balance of an account, creating it when `created` is true.
    fn set_balance(
        &mut self,
        id: AccountId,
        balance: Money,
        created: bool,
    ) -> Result<(), Self::Error>;
    /// The record stored for an idempotency key.
    fn idempotency(
        &mut self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, Self::Error>;
    /// Stores the record for an idempotency key.
    fn remember(
        &mut self,
        key: &IdempotencyKey,
        record: IdempotencyRecord,
    ) -> Result<(), Self::Error>;
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The command's outcome (a replay's is the first outcome).
    pub outcome: Outcome,
    /// Change of the sum of all balances, in cents (0 for a replay, which changes nothing).
    pub total_delta: i128,
}

/// Applies `command` at log position `index`. A command whose idempotency key was applied at
/// `record.index` with `index < record.index + retention` is a replay: it returns the first
/// outcome and changes nothing (or `IdempotencyKeyReused` if the request differs). Outside that
/// window the key is forgotten and the command applies anew, recording the key again.
///
/// Expiry is a pure function of the two log indexes, never of when a backend prunes its
/// records: replicas cut the log into batches differently, and a rule that depended on the cuts
/// would deduplicate a retry on one replica and apply it on another.
pub fn apply<L: Ledger>(
    ledger: &mut L,
    index: u64,
    command: &Command,
    retention: u64,
) -> Result<Applied, L::Error> {
    if let Some(key) = &command.idempotency_key
        && let Some(record) = ledger.idempotency(key)?
        && index < record.index.saturating_add(retention)
    {
        let outcome = if record.request == command.op.fingerprint() {
            record.outcome
        } else {
            Outcome::Rejected {
                reason: Rejection::IdempotencyKeyReused,
            }
        };
        return Ok(Applied {
            outcome,
            total_delta: 0,
        });
    }
    let outcome = apply_operation(ledger, &command.op)?;
    if let Some(key) = &command.idempotency_key {
        let record = IdempotencyRecord {
            request: command.op.fingerprint(),
            outcome: outcome.clone(),
            index,
        };
        ledger.remember(key, record)?;
    }
    let total_delta = total_delta(&command.op, &outcome);
    Ok(Applied {
        outcome,
        total_delta,
    })
}

fn rejected(reason: Rejection) -> Outcome {
    Outcome::Rejected { reason }
}

fn apply_operation<L: Ledger>(ledger: &mut L, op: &Operation) -> Result<Outcome, L::Error> {
    Ok(match *op {
        Operation::OpenAccount { account_id } => {
            if ledger.balance(account_id)?.is_some() {
                rejected(Rejection::AccountExists)
            } else {
                ledger.set_balance(account_id, Money::ZERO, true)?;
                Outcome::Opened { account_id }
            }
        }
        Operation::Deposit { account_id, amount } => match ledger.balance(account_id)? {
            None => rejected(Rejection::AccountNotFound),
            Some(balance) => match balance.checked_add_balance(amount) {
                None => rejected(Rejection::BalanceLimit),
                Some(balance) => {
                    ledger.set_balance(account_id, balance, false)?;
                    Outcome::Deposited {
                        account_id,
                        balance,
                    }
                }
            },
        },
        Operation::Withdraw { account_id, amount } => match ledger.balance(account_id)? {
            None => rejected(Rejection::AccountNotFound),
            Some(balance) => match balance.checked_sub_balance(amount) {
                None => rejected(Rejection::InsufficientFunds),
                Some(balance) => {
                    ledger.set_balance(account_id, balance, false)?;
                    Outcome::Withdrawn {
                        account_id,
                        balance,
                    }
                }
            },
        },
        Operation::Barrier => Outcome::Barrier,
        Operation::Move {
            source,
            destination,
            amount,
        } => {
            // Checked here as well as at validation: a transfer to itself must never run the
            // debit-then-credit below on one account, which would create money.
            if source == destination {
                return Ok(rejected(Rejection::SameAccount));
            }
            let (Some(from), Some(to)) = (ledger.balance(source)?, ledger.balance(destination)?)
            else {
                return Ok(rejected(Rejection::AccountsNotFound));
            };
            let Some(source_balance) = from.checked_sub_balance(amount) else {
                return Ok(rejected(Rejection::InsufficientFunds));
            };
            let Some(destination_balance) = to.checked_add_balance(amount) else {
                return Ok(rejected(Rejection::BalanceLimit));
            };
            // Conservation: what leaves one account arrives in the other.
            assert_eq!(
                i128::from(from.cents()) + i128::from(to.cents()),
                i128::from(source_balance.cents()) + i128::from(destination_balance.cents()),
                "move must conserve money"
            );
            ledger.set_balance(source, source_balance, false)?;
            ledger.set_balance(destination, destination_balance, false)?;
            Outcome::Moved {
                source,
                destination,
                source_balance,
                destination_balance,
            }
        }
    })
}

/// How much an outcome changed the sum of all balances, in cents.
fn total_delta(op: &Operation, outcome: &Outcome) -> i128 {
    match (op, outcome) {
        (Operation::Deposit { amount, .. }, Outcome::Deposited { .. }) => {
            i128::from(amount.cents())
        }
        (Operation::Withdraw { amount, .. }, Outcome::Withdrawn { .. }) => {
            -i128::from(amount.cents())
        }
        _ => 0,
    }
}

/// A [`Ledger`] in memory: the reference model for tests and the staging area of backends that
/// read everything a batch touches first and write it back at the end.
#[derive(Clone, Debug, Default)]
pub struct MemoryLedger {
    /// Balances by account.
    pub accounts: std::collections::BTreeMap<AccountId, Money>,
    /// Idempotency records by key.
    pub keys: std::collections::HashMap<IdempotencyKey, IdempotencyRecord>,
}

impl Ledger for MemoryLedger {
    type Error = std::convert::Infallible;

    fn balance(&mut self, id: AccountId) -> Result<Option<Money>, Self::Error> {
        Ok(self.accounts.get(&id).copied())
    }

    fn set_balance(
        &mut self,
        id: AccountId,
        balance: Money,
        _created: bool,
    ) -> Result<(), Self::Error> {
        self.accounts.insert(id, balance);
        Ok(())
    }

    fn idempotency(
        &mut self,
        key: &IdempotencyKey,
    ) -> Result<Option<IdempotencyRecord>, Self::Error> {
        Ok(self.keys.get(key).cloned())
    }

    fn remember(
        &mut self,
        key: &IdempotencyKey,
        record: IdempotencyRecord,
    ) -> Result<(), Self::Error> {
        self.keys.insert(key.clone(), record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outcome of applying with a retention wider than any test's log.
    fn apply(
        l: &mut MemoryLedger,
        index: u64,
        command: &Command,
    ) -> Result<Outcome, std::convert::Infallible> {
        super::apply(l, index, command, 1_000).map(|applied| applied.outcome)
    }

    /// A replay changes no balance, so it changes no total either (it did count the deposit
    /// again before: the total was derived from the replayed outcome).
    #[test]
    fn a_replay_changes_the_total_by_nothing() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        let deposit = keyed(
            Operation::Deposit {
                account_id: a,
                amount: c(700),
            },
            "k",
        );
        assert_eq!(
            super::apply(&mut l, 2, &deposit, 10).unwrap().total_delta,
            700
        );
        let replay = super::apply(&mut l, 3, &deposit, 10).unwrap();
        assert_eq!(replay.total_delta, 0);
        assert_eq!(l.accounts[&a], c(700));
    }

    /// A key applied at index i deduplicates entries i + 1 .. i + retention - 1 and no others,
    /// whatever a backend has pruned.
    #[test]
    fn keys_expire_by_log_index_alone() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        let deposit = keyed(
            Operation::Deposit {
                account_id: a,
                amount: c(10),
            },
            "k",
        );
        super::apply(&mut l, 2, &deposit, 3).unwrap();
        assert_eq!(super::apply(&mut l, 4, &deposit, 3).unwrap().total_delta, 0);
        assert_eq!(l.accounts[&a], c(10), "index 4 < 2 + 3: a replay");
        let again = super::apply(&mut l, 5, &deposit, 3).unwrap();
        assert_eq!(
            again.total_delta, 10,
            "index 5 = 2 + 3: expired, applies anew"
        );
        assert_eq!(l.accounts[&a], c(20));
        assert_eq!(l.keys[&IdempotencyKey::parse("k").unwrap()].index, 5);
        assert_eq!(super::apply(&mut l, 6, &deposit, 3).unwrap().total_delta, 0);
    }

    fn cmd(op: Operation) -> Command {
        Command {
            op,
            idempotency_key: None,
            request_id: None,
        }
    }

    fn keyed(op: Operation, key: &str) -> Command {
        Command {
            op,
            idempotency_key: IdempotencyKey::parse(key),
            request_id: None,
        }
    }

    fn open(ledger: &mut MemoryLedger) -> AccountId {
        let id = AccountId::random();
        let out = apply(ledger, 0, &cmd(Operation::OpenAccount { account_id: id })).unwrap();
        assert_eq!(out, Outcome::Opened { account_id: id });
        id
    }

    fn c(cents: i64) -> Money {
        Money::from_cents(cents)
    }

    #[test]
    fn deposit_withdraw_and_insufficient_funds() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        let out = apply(
            &mut l,
            1,
            &cmd(Operation::Deposit {
                account_id: a,
                amount: c(500),
            }),
        )
        .unwrap();
        assert_eq!(
            out,
            Outcome::Deposited {
                account_id: a,
                balance: c(500)
            }
        );
        let out = apply(
            &mut l,
            2,
            &cmd(Operation::Withdraw {
                account_id: a,
                amount: c(501),
            }),
        )
        .unwrap();
        assert_eq!(out, rejected(Rejection::InsufficientFunds));
        let out = apply(
            &mut l,
            3,
            &cmd(Operation::Withdraw {
                account_id: a,
                amount: c(500),
            }),
        )
        .unwrap();
        assert_eq!(
            out,
            Outcome::Withdrawn {
                account_id: a,
                balance: c(0)
            }
        );
    }

    #[test]
    fn unknown_accounts_are_rejected_without_creating_them() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        let ghost = AccountId::random();
        let out = apply(
            &mut l,
            1,
            &cmd(Operation::Deposit {
                account_id: ghost,
                amount: c(1),
            }),
        )
        .unwrap();
        assert_eq!(out, rejected(Rejection::AccountNotFound));
        let out = apply(
            &mut l,
            2,
            &cmd(Operation::Move {
                source: a,
                destination: ghost,
                amount: c(1),
            }),
        )
        .unwrap();
        assert_eq!(out, rejected(Rejection::AccountsNotFound));
        assert_eq!(l.accounts.len(), 1);
    }

    #[test]
    fn move_to_the_same_account_creates_no_money() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        apply(
            &mut l,
            1,
            &cmd(Operation::Deposit {
                account_id: a,
                amount: c(100),
            }),
        )
        .unwrap();
        let out = apply(
            &mut l,
            2,
            &cmd(Operation::Move {
                source: a,
                destination: a,
                amount: c(100),
            }),
        )
        .unwrap();
        assert_eq!(out, rejected(Rejection::SameAccount));
        assert_eq!(l.accounts[&a], c(100));
    }

    #[test]
    fn move_conserves_money_and_respects_the_balance_limit() {
        let mut l = MemoryLedger::default();
        let (a, b) = (open(&mut l), open(&mut l));
        apply(
            &mut l,
            1,
            &cmd(Operation::Deposit {
                account_id: a,
                amount: c(300),
            }),
        )
        .unwrap();
        let out = apply(
            &mut l,
            2,
            &cmd(Operation::Move {
                source: a,
                destination: b,
                amount: c(120),
            }),
        )
        .unwrap();
        assert_eq!(
            out,
            Outcome::Moved {
                source: a,
                destination: b,
                source_balance: c(180),
                destination_balance: c(120)
            }
        );
        l.accounts.insert(b, Money::MAX_BALANCE);
        let out = apply(
            &mut l,
            3,
            &cmd(Operation::Move {
                source: a,
                destination: b,
                amount: c(1),
            }),
        )
        .unwrap();
        assert_eq!(out, rejected(Rejection::BalanceLimit));
        assert_eq!(l.accounts[&a], c(180));
    }

    #[test]
    fn idempotency_key_returns_the_first_outcome_and_applies_once() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        let deposit = keyed(
            Operation::Deposit {
                account_id: a,
                amount: c(700),
            },
            "k-1",
        );
        let first = apply(&mut l, 1, &deposit).unwrap();
        let again = apply(&mut l, 2, &deposit).unwrap();
        assert_eq!(first, again);
        assert_eq!(l.accounts[&a], c(700));
        let other = keyed(
            Operation::Deposit {
                account_id: a,
                amount: c(1),
            },
            "k-1",
        );
        assert_eq!(
            apply(&mut l, 3, &other).unwrap(),
            rejected(Rejection::IdempotencyKeyReused)
        );
        assert_eq!(l.accounts[&a], c(700));
    }

    #[test]
    fn retried_open_account_returns_the_first_account() {
        let mut l = MemoryLedger::default();
        let first = keyed(
            Operation::OpenAccount {
                account_id: AccountId::random(),
            },
            "open-1",
        );
        let retry = keyed(
            Operation::OpenAccount {
                account_id: AccountId::random(),
            },
            "open-1",
        );
        let out1 = apply(&mut l, 1, &first).unwrap();
        let out2 = apply(&mut l, 2, &retry).unwrap();
        assert_eq!(out1, out2);
        assert_eq!(l.accounts.len(), 1);
    }

    #[test]
    fn rejected_outcomes_are_remembered_too() {
        let mut l = MemoryLedger::default();
        let a = open(&mut l);
        let w = keyed(
            Operation::Withdraw {
                account_id: a,
                amount: c(5),
            },
            "w",
        );
        assert_eq!(
            apply(&mut l, 1, &w).unwrap(),
            rejected(Rejection::InsufficientFunds)
        );
        apply(
            &mut l,
            2,
            &cmd(Operation::Deposit {
                account_id: a,
                amount: c(10),
            }),
        )
        .unwrap();
        // The retry answers what the first attempt answered; it does not withdraw now.
        assert_eq!(
            apply(&mut l, 3, &w).unwrap(),
            rejected(Rejection::InsufficientFunds)
        );
        assert_eq!(l.accounts[&a], c(10));
    }
}
