//! The typed bank client (`node::client`) against a real `node` process: every call of its
//! documentation example, exact money both ways, idempotent retries, and typed errors that
//! carry the API's code.

mod common;

use common::NodeProcess;
use node::client::{BankClient, BankError, Consistency, IdempotencyKey};
use node::money::Money;

#[tokio::test]
async fn the_client_makes_every_call_with_exact_money_and_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::spawn(dir.path());
    let bank = BankClient::new(&node.public_url).unwrap();
    assert!(bank.ready().await.unwrap());

    let alice = bank.open_account(&IdempotencyKey::random()).await.unwrap();
    let bob = bank.open_account(&IdempotencyKey::random()).await.unwrap();
    assert_ne!(alice, bob);
    // The same key opens the same account once.
    let key = IdempotencyKey::random();
    let first = bank.open_account(&key).await.unwrap();
    assert_eq!(bank.open_account(&key).await.unwrap(), first);

    // 0.1 + 0.2 is exactly 0.3 (floats would say 0.30000000000000004).
    let tenth = Money::parse_amount("0.1").unwrap();
    bank.deposit(alice, tenth, &IdempotencyKey::random())
        .await
        .unwrap();
    let after = bank
        .deposit(
            alice,
            Money::parse_amount("0.2").unwrap(),
            &IdempotencyKey::random(),
        )
        .await
        .unwrap();
    assert_eq!(after, Money::parse_amount("0.3").unwrap());

    // A retried deposit with the same key is applied once and answers the first result.
    let key = IdempotencyKey::random();
    let amount = Money::parse_amount("12.50").unwrap();
    let once = bank.deposit(alice, amount, &key).await.unwrap();
    assert_eq!(bank.deposit(alice, amount, &key).await.unwrap(), once);
    assert_eq!(once, Money::from_cents(1280));

    let (left, arrived) = bank
        .move_money(
            alice,
            bob,
            Money::from_cents(250),
            &IdempotencyKey::random(),
        )
        .await
        .unwrap();
    assert_eq!((left.cents(), arrived.cents()), (1030, 250));
    let left = bank
        .withdraw(alice, Money::from_cents(30), &IdempotencyKey::random())
        .await
        .unwrap();
    assert_eq!(left, Money::from_cents(1000));
    for consistency in [Consistency::Linearizable, Consistency::Local] {
        assert_eq!(bank.balance(bob, consistency).await.unwrap().cents(), 250);
    }

    // Refusals carry the API's code and status, and are not retryable.
    let err = bank
        .withdraw(bob, Money::from_cents(1_000), &IdempotencyKey::random())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("insufficient_funds"), "{err}");
    assert_eq!(err.status(), Some(409));
    assert!(!err.is_retryable());
    let err = bank
        .move_money(bob, bob, Money::from_cents(1), &IdempotencyKey::random())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("same_account"), "{err}");
    let stranger = node::command::AccountId::random();
    let err = bank
        .balance(stranger, Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("account_not_found"), "{err}");
    assert!(
        IdempotencyKey::parse("bad key with spaces").is_none(),
        "the client cannot even send a key the server would refuse"
    );

    // Nobody listening: no answer, retryable.
    let gone = BankClient::new("http://127.0.0.1:9").unwrap();
    let err = gone
        .balance(alice, Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(matches!(err, BankError::NoAnswer { .. }), "{err}");
    assert!(err.is_retryable());
}
