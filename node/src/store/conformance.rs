//! The `Store` conformance suite: one set of checks that every backend must pass.
//!
//! A backend's test module implements [`Harness`] (how to make a fresh store and how to reopen
//! one, as after a restart) and calls [`run_all`]. Each check panics with a message naming the
//! rule that broke.

use std::collections::BTreeMap;
use std::future::Future;

use super::{Snapshot, Store, StoreError, StoreOptions};
use crate::command::{AccountId, Command, Entry, IdempotencyKey, Operation, Outcome, Rejection};
use crate::money::Money;

/// How the suite makes stores of one backend.
pub trait Harness {
    /// The backend under test.
    type Store: Store;
    /// A store with no state, replacing whatever the harness made before.
    fn fresh(&mut self, options: StoreOptions) -> impl Future<Output = Self::Store>;
    /// The same durable state opened anew (the old handle is dropped first), as after a restart.
    fn reopen(
        &mut self,
        store: Self::Store,
        options: StoreOptions,
    ) -> impl Future<Output = Self::Store>;
}

/// Runs every check of the suite.
pub async fn run_all<H: Harness>(mut harness: H) {
    empty_store(&mut harness).await;
    applies_in_order_and_tracks_totals(&mut harness).await;
    reapplied_entries_change_nothing(&mut harness).await;
    gaps_are_refused(&mut harness).await;
    a_rejected_entry_does_not_poison_its_batch(&mut harness).await;
    idempotency_records_are_kept_then_pruned(&mut harness).await;
    pages_accounts_in_id_order(&mut harness).await;
    state_survives_reopen(&mut harness).await;
    multi_command_entries_apply_in_order(&mut harness).await;
    keys_of_one_entry_are_all_pruned(&mut harness).await;
    snapshots_round_trip_into_another_store(&mut harness).await;
}

async fn multi_command_entries_apply_in_order<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let a = AccountId::random();
    let command = |op| Command {
        op,
        idempotency_key: None,
        request_id: None,
    };
    let entry = Entry {
        index: 1,
        commands: vec![
            command(Operation::OpenAccount { account_id: a }),
            command(Operation::Deposit {
                account_id: a,
                amount: c(10),
            }),
            command(Operation::Withdraw {
                account_id: a,
                amount: c(11),
            }),
            command(Operation::Withdraw {
                account_id: a,
                amount: c(4),
            }),
        ],
    };
    let noop = Entry {
        index: 2,
        commands: vec![],
    };
    let outcomes = store.apply(&[entry, noop]).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            Some(vec![
                Outcome::Opened { account_id: a },
                Outcome::Deposited {
                    account_id: a,
                    balance: c(10)
                },
                Outcome::Rejected {
                    reason: Rejection::InsufficientFunds
                },
                Outcome::Withdrawn {
                    account_id: a,
                    balance: c(6)
                },
            ]),
            Some(vec![]),
        ],
        "commands of one entry apply in order; an empty entry (a no-op) still advances the index"
    );
    assert_eq!(store.summary().await.unwrap().applied_index, 2);
}

async fn snapshots_round_trip_into_another_store<H: Harness>(h: &mut H) {
    let source = h.fresh(StoreOptions::default()).await;
    let (a, b) = (AccountId::random(), AccountId::random());
    source
        .apply(&[
            open(1, a),
            open(2, b),
            keyed(
                3,
                Operation::Deposit {
                    account_id: a,
                    amount: c(500),
                },
                "snap-key",
            ),
            entry(
                4,
                Operation::Move {
                    source: a,
                    destination: b,
                    amount: c(200),
                },
            ),
        ])
        .await
        .unwrap();
    let snapshot = Snapshot::decode(&source.snapshot().await.unwrap().encode()).unwrap();
    assert_eq!(snapshot.applied_index, 4);
    drop(source);
    let target = h.fresh(StoreOptions::default()).await;
    target.apply(&[open(1, AccountId::random())]).await.unwrap();
    target.install_snapshot(&snapshot).await.unwrap();
    assert_eq!(target.balance(a).await.unwrap(), Some(c(300)));
    assert_eq!(target.balance(b).await.unwrap(), Some(c(200)));
    let summary = target.summary().await.unwrap();
    assert_eq!(
        (summary.applied_index, summary.accounts, summary.total_cents),
        (4, 2, 500)
    );
    assert!(
        target
            .idempotency(&IdempotencyKey::parse("snap-key").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    // The installed state goes on from the snapshot's index.
    let next = target
        .apply(&[entry(
            5,
            Operation::Deposit {
                account_id: b,
                amount: c(1),
            },
        )])
        .await
        .unwrap();
    assert_eq!(
        next,
        vec![Some(vec![Outcome::Deposited {
            account_id: b,
            balance: c(201)
        }])]
    );
}

fn c(cents: i64) -> Money {
    Money::from_cents(cents)
}

fn entry(index: u64, op: Operation) -> Entry {
    Entry {
        index,
        commands: vec![Command {
            op,
            idempotency_key: None,
            request_id: None,
        }],
    }
}

fn keyed(index: u64, op: Operation, key: &str) -> Entry {
    Entry {
        index,
        commands: vec![Command {
            op,
            idempotency_key: IdempotencyKey::parse(key),
            request_id: None,
        }],
    }
}

/// One outcome per single-command entry.
fn single(outcomes: Vec<Option<Vec<Outcome>>>) -> Vec<Option<Outcome>> {
    outcomes
        .into_iter()
        .map(|o| {
            o.map(|mut v| {
                assert_eq!(v.len(), 1, "one outcome per command");
                v.remove(0)
            })
        })
        .collect()
}

fn open(index: u64, id: AccountId) -> Entry {
    entry(index, Operation::OpenAccount { account_id: id })
}

async fn empty_store<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let summary = store.summary().await.unwrap();
    assert_eq!(
        summary.applied_index, 0,
        "a fresh store has applied nothing"
    );
    assert_eq!(summary.accounts, 0);
    assert_eq!(summary.total_cents, 0);
    assert_eq!(store.balance(AccountId::random()).await.unwrap(), None);
    assert!(store.accounts(None, 10).await.unwrap().is_empty());
    assert!(
        store.apply(&[]).await.unwrap().is_empty(),
        "an empty batch is a no-op"
    );
}

async fn applies_in_order_and_tracks_totals<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let (a, b) = (AccountId::random(), AccountId::random());
    let outcomes = single(
        store
            .apply(&[
                open(1, a),
                open(2, b),
                entry(
                    3,
                    Operation::Deposit {
                        account_id: a,
                        amount: c(1_000),
                    },
                ),
                entry(
                    4,
                    Operation::Move {
                        source: a,
                        destination: b,
                        amount: c(250),
                    },
                ),
                entry(
                    5,
                    Operation::Withdraw {
                        account_id: b,
                        amount: c(50),
                    },
                ),
            ])
            .await
            .unwrap(),
    );
    assert_eq!(
        outcomes,
        vec![
            Some(Outcome::Opened { account_id: a }),
            Some(Outcome::Opened { account_id: b }),
            Some(Outcome::Deposited {
                account_id: a,
                balance: c(1_000)
            }),
            Some(Outcome::Moved {
                source: a,
                destination: b,
                source_balance: c(750),
                destination_balance: c(250),
            }),
            Some(Outcome::Withdrawn {
                account_id: b,
                balance: c(200)
            }),
        ]
    );
    assert_eq!(store.balance(a).await.unwrap(), Some(c(750)));
    assert_eq!(store.balance(b).await.unwrap(), Some(c(200)));
    let summary = store.summary().await.unwrap();
    assert_eq!(
        summary.applied_index, 5,
        "the applied index moves with the batch"
    );
    assert_eq!(summary.accounts, 2);
    assert_eq!(summary.total_cents, 950, "total = deposits - withdrawals");
}

async fn reapplied_entries_change_nothing<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let a = AccountId::random();
    let deposit = entry(
        2,
        Operation::Deposit {
            account_id: a,
            amount: c(10),
        },
    );
    store.apply(&[open(1, a), deposit.clone()]).await.unwrap();
    // A log entry delivered twice (a retried batch, a deposed writer) is applied once.
    let again = single(store.apply(std::slice::from_ref(&deposit)).await.unwrap());
    assert_eq!(
        again,
        vec![None],
        "an already applied entry yields no outcome"
    );
    assert_eq!(store.balance(a).await.unwrap(), Some(c(10)));
    // A batch overlapping the applied prefix applies only its new part.
    let overlap = single(
        store
            .apply(&[
                deposit,
                entry(
                    3,
                    Operation::Deposit {
                        account_id: a,
                        amount: c(5),
                    },
                ),
            ])
            .await
            .unwrap(),
    );
    assert_eq!(
        overlap,
        vec![
            None,
            Some(Outcome::Deposited {
                account_id: a,
                balance: c(15)
            })
        ]
    );
    assert_eq!(store.summary().await.unwrap().applied_index, 3);
}

async fn gaps_are_refused<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let a = AccountId::random();
    store.apply(&[open(1, a)]).await.unwrap();
    let err = store
        .apply(&[entry(
            3,
            Operation::Deposit {
                account_id: a,
                amount: c(1),
            },
        )])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                expected: 2,
                got: 3
            }
        ),
        "a gap must be refused, got {err:?}"
    );
    let err = store
        .apply(&[
            entry(
                2,
                Operation::Deposit {
                    account_id: a,
                    amount: c(1),
                },
            ),
            entry(
                4,
                Operation::Deposit {
                    account_id: a,
                    amount: c(1),
                },
            ),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                expected: 3,
                got: 4
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.balance(a).await.unwrap(),
        Some(c(0)),
        "a refused batch applies nothing"
    );
    assert_eq!(store.summary().await.unwrap().applied_index, 1);
}

async fn a_rejected_entry_does_not_poison_its_batch<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let (a, ghost) = (AccountId::random(), AccountId::random());
    let outcomes = single(
        store
            .apply(&[
                open(1, a),
                entry(
                    2,
                    Operation::Withdraw {
                        account_id: a,
                        amount: c(1),
                    },
                ),
                entry(
                    3,
                    Operation::Deposit {
                        account_id: ghost,
                        amount: c(1),
                    },
                ),
                entry(
                    4,
                    Operation::Move {
                        source: a,
                        destination: a,
                        amount: c(1),
                    },
                ),
                entry(
                    5,
                    Operation::Deposit {
                        account_id: a,
                        amount: c(9),
                    },
                ),
            ])
            .await
            .unwrap(),
    );
    let rejected = |reason| Some(Outcome::Rejected { reason });
    assert_eq!(outcomes[1], rejected(Rejection::InsufficientFunds));
    assert_eq!(outcomes[2], rejected(Rejection::AccountNotFound));
    assert_eq!(outcomes[3], rejected(Rejection::SameAccount));
    assert_eq!(
        outcomes[4],
        Some(Outcome::Deposited {
            account_id: a,
            balance: c(9)
        })
    );
    assert_eq!(store.summary().await.unwrap().applied_index, 5);
    assert_eq!(store.balance(ghost).await.unwrap(), None);
}

async fn keys_of_one_entry_are_all_pruned<H: Harness>(h: &mut H) {
    let options = StoreOptions {
        idempotency_retention: 1,
        ..StoreOptions::default()
    };
    let store = h.fresh(options).await;
    let a = AccountId::random();
    let keyed_command = |amount, key: &str| Command {
        op: Operation::Deposit {
            account_id: a,
            amount: c(amount),
        },
        idempotency_key: IdempotencyKey::parse(key),
        request_id: None,
    };
    let entry = Entry {
        index: 2,
        commands: vec![keyed_command(1, "first"), keyed_command(2, "second")],
    };
    store.apply(&[open(1, a), entry]).await.unwrap();
    for key in ["first", "second"] {
        let key = IdempotencyKey::parse(key).unwrap();
        assert!(
            store.idempotency(&key).await.unwrap().is_some(),
            "both keys recorded"
        );
    }
    store
        .apply(&[Entry {
            index: 3,
            commands: vec![],
        }])
        .await
        .unwrap();
    for key in ["first", "second"] {
        let key = IdempotencyKey::parse(key).unwrap();
        assert!(
            store.idempotency(&key).await.unwrap().is_none(),
            "every key of the entry pruned"
        );
    }
}

async fn idempotency_records_are_kept_then_pruned<H: Harness>(h: &mut H) {
    let options = StoreOptions {
        idempotency_retention: 3,
        ..StoreOptions::default()
    };
    let store = h.fresh(options).await;
    let a = AccountId::random();
    let op = Operation::Deposit {
        account_id: a,
        amount: c(100),
    };
    store
        .apply(&[open(1, a), keyed(2, op.clone(), "dep-1")])
        .await
        .unwrap();
    let key = IdempotencyKey::parse("dep-1").unwrap();
    let record = store.idempotency(&key).await.unwrap().expect("record kept");
    assert_eq!(record.index, 2);
    assert_eq!(record.request, op);
    assert_eq!(
        record.outcome,
        Outcome::Deposited {
            account_id: a,
            balance: c(100)
        }
    );
    // Replaying the key inside the retention window returns the first outcome.
    let out = single(store.apply(&[keyed(3, op.clone(), "dep-1")]).await.unwrap());
    assert_eq!(out, vec![Some(record.outcome.clone())]);
    assert_eq!(
        store.balance(a).await.unwrap(),
        Some(c(100)),
        "applied once"
    );
    store
        .apply(&[entry(
            4,
            Operation::Deposit {
                account_id: a,
                amount: c(1),
            },
        )])
        .await
        .unwrap();
    assert!(
        store.idempotency(&key).await.unwrap().is_some(),
        "kept for 3 entries"
    );
    store
        .apply(&[entry(
            5,
            Operation::Deposit {
                account_id: a,
                amount: c(1),
            },
        )])
        .await
        .unwrap();
    assert!(
        store.idempotency(&key).await.unwrap().is_none(),
        "pruned once retention entries have passed"
    );
}

async fn pages_accounts_in_id_order<H: Harness>(h: &mut H) {
    let store = h.fresh(StoreOptions::default()).await;
    let mut model = BTreeMap::new();
    let mut entries = Vec::new();
    for i in 0..25u64 {
        let id = AccountId::random();
        entries.push(open(2 * i + 1, id));
        entries.push(entry(
            2 * i + 2,
            Operation::Deposit {
                account_id: id,
                amount: c(i as i64 + 1),
            },
        ));
        model.insert(id, c(i as i64 + 1));
    }
    store.apply(&entries).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.accounts(after, 10).await.unwrap();
        assert!(page.len() <= 10, "a page never exceeds its limit");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|(id, _)| *id);
        seen.extend(page);
    }
    let expected: Vec<_> = model.into_iter().collect();
    assert_eq!(seen, expected, "pages list every account once, in id order");
}

async fn state_survives_reopen<H: Harness>(h: &mut H) {
    let options = StoreOptions::default();
    let store = h.fresh(options).await;
    let a = AccountId::random();
    store
        .apply(&[
            open(1, a),
            keyed(
                2,
                Operation::Deposit {
                    account_id: a,
                    amount: c(4_200),
                },
                "persist",
            ),
        ])
        .await
        .unwrap();
    let store = h.reopen(store, options).await;
    assert_eq!(store.balance(a).await.unwrap(), Some(c(4_200)));
    let summary = store.summary().await.unwrap();
    assert_eq!(
        (summary.applied_index, summary.accounts, summary.total_cents),
        (2, 1, 4_200)
    );
    let key = IdempotencyKey::parse("persist").unwrap();
    assert!(
        store.idempotency(&key).await.unwrap().is_some(),
        "keys are durable"
    );
}
