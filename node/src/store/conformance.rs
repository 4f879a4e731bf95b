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
    batching_never_changes_outcomes_or_state(&mut harness).await;
}

/// How many random logs [`batching_never_changes_outcomes_or_state`] tries per backend.
const BATCHING_CASES: u32 = 48;

/// One random log entry: what the generator can put in a slot.
#[derive(Clone, Debug)]
enum Gen {
    Noop,
    Deposit {
        account: usize,
        cents: i64,
        key: Option<usize>,
    },
    Withdraw {
        account: usize,
        cents: i64,
        key: Option<usize>,
    },
    Move {
        cents: i64,
        key: Option<usize>,
    },
}

fn gen_strategy() -> impl proptest::strategy::Strategy<Value = (Vec<Gen>, Vec<Vec<usize>>)> {
    use proptest::prelude::*;
    let key = proptest::option::of(0..3usize);
    let one = prop_oneof![
        2 => Just(Gen::Noop),
        3 => (0..2usize, 1..4i64, key.clone())
            .prop_map(|(account, cents, key)| Gen::Deposit { account, cents, key }),
        2 => (0..2usize, 1..6i64, key.clone())
            .prop_map(|(account, cents, key)| Gen::Withdraw { account, cents, key }),
        2 => (1..4i64, key).prop_map(|(cents, key)| Gen::Move { cents, key }),
    ];
    proptest::collection::vec(one, 1..14).prop_flat_map(|log| {
        let n = log.len() + 2; // two account openings first
        // Three ways to cut the log into batches: sizes that add up to n.
        let cuts = proptest::collection::vec(proptest::collection::vec(1..5usize, n..=n), 3)
            .prop_map(move |sizes| {
                sizes
                    .into_iter()
                    .map(|sizes| {
                        let mut left = n;
                        let mut out = Vec::new();
                        for size in sizes {
                            if left == 0 {
                                break;
                            }
                            let size = size.min(left);
                            out.push(size);
                            left -= size;
                        }
                        out
                    })
                    .collect::<Vec<_>>()
            });
        (Just(log), cuts)
    })
}

fn gen_entries(log: &[Gen], accounts: [AccountId; 2]) -> Vec<Entry> {
    let keys = ["k0", "k1", "k2"];
    let command = |op, key: Option<usize>| Command {
        op,
        idempotency_key: key.and_then(|k| IdempotencyKey::parse(keys[k])),
        request_id: None,
    };
    let mut entries = vec![open(1, accounts[0]), open(2, accounts[1])];
    for (i, g) in log.iter().enumerate() {
        let index = i as u64 + 3;
        let commands = match *g {
            Gen::Noop => vec![],
            Gen::Deposit {
                account,
                cents,
                key,
            } => vec![command(
                Operation::Deposit {
                    account_id: accounts[account],
                    amount: c(cents),
                },
                key,
            )],
            Gen::Withdraw {
                account,
                cents,
                key,
            } => vec![command(
                Operation::Withdraw {
                    account_id: accounts[account],
                    amount: c(cents),
                },
                key,
            )],
            Gen::Move { cents, key } => vec![command(
                Operation::Move {
                    source: accounts[0],
                    destination: accounts[1],
                    amount: c(cents),
                },
                key,
            )],
        };
        entries.push(Entry { index, commands });
    }
    entries
}

type Observed = (
    Vec<Option<Vec<Outcome>>>,
    Vec<Option<Money>>,
    (u64, u64, i128),
);

async fn apply_in_batches<H: Harness>(
    h: &mut H,
    options: StoreOptions,
    entries: &[Entry],
    sizes: &[usize],
    accounts: [AccountId; 2],
) -> Observed {
    let store = h.fresh(options).await;
    let mut outcomes = Vec::new();
    let mut at = 0;
    for size in sizes {
        let batch = &entries[at..at + size];
        outcomes.extend(store.apply(batch).await.unwrap());
        at += size;
    }
    assert_eq!(at, entries.len());
    let mut balances = Vec::new();
    for id in accounts {
        balances.push(store.balance(id).await.unwrap());
    }
    let s = store.summary().await.unwrap();
    let sum: i64 = balances.iter().flatten().map(|m| m.cents()).sum();
    assert_eq!(
        s.total_cents,
        i128::from(sum),
        "the tracked total is the sum of the balances"
    );
    (
        outcomes,
        balances,
        (s.applied_index, s.accounts, s.total_cents),
    )
}

/// Replicas cut the same log into batches differently (batch sizes come from timing), so every
/// outcome and the resulting state must not depend on the cuts: the same random logs (keys
/// reused across the retention edge) applied under random batchings to fresh stores give the
/// same outcomes, balances and totals (proptest generates the logs, deterministically seeded).
async fn batching_never_changes_outcomes_or_state<H: Harness>(h: &mut H) {
    use proptest::strategy::{Strategy, ValueTree};
    let options = StoreOptions {
        idempotency_retention: 2,
        ..StoreOptions::default()
    };
    let accounts = [AccountId::random(), AccountId::random()];
    // The review's case first: [open, open, keyed k0 deposit], [noop, noop], [keyed k0 deposit].
    let review_log = vec![
        Gen::Deposit {
            account: 0,
            cents: 10,
            key: Some(0),
        },
        Gen::Noop,
        Gen::Noop,
        Gen::Deposit {
            account: 0,
            cents: 10,
            key: Some(0),
        },
    ];
    let mut cases = vec![(review_log, vec![vec![3, 2, 1], vec![2, 1, 3]])];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..BATCHING_CASES {
        cases.push(gen_strategy().new_tree(&mut runner).unwrap().current());
    }
    for (log, cuts) in cases {
        let entries = gen_entries(&log, accounts);
        let whole = vec![entries.len()];
        let reference = apply_in_batches(h, options, &entries, &whole, accounts).await;
        for sizes in cuts {
            let observed = apply_in_batches(h, options, &entries, &sizes, accounts).await;
            assert_eq!(
                observed, reference,
                "batches {sizes:?} and one batch of the same log disagree\nlog: {log:?}"
            );
        }
    }
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
