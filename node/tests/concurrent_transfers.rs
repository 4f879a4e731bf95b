//! Property: any set of transfers run concurrently conserves the total, never drives a balance
//! negative, and leaves each account exactly where its acknowledged transfers put it.

mod common;

use axum::http::StatusCode;
use common::{TestNode, json_post};
use proptest::prelude::*;
use serde_json::json;
use tower::ServiceExt as _;

const ACCOUNTS: usize = 5;
const START_CENTS: i64 = 1_000;

async fn run(transfers: Vec<(usize, usize, i64)>) {
    let node = TestNode::start().await;
    let mut ids = Vec::new();
    for _ in 0..ACCOUNTS {
        let id = node.open().await;
        node.deposit(&id, json!(START_CENTS as f64 / 100.0)).await;
        ids.push(id);
    }
    let tasks: Vec<_> = transfers
        .iter()
        .map(|&(from, to, amount)| {
            let router = node.public.clone();
            let body = json!({
                "source": {"account_id": ids[from]},
                "destination": {"account_id": ids[to]},
                "amount": format!("{}.{:02}", amount / 100, amount % 100),
            })
            .to_string();
            tokio::spawn(async move {
                let response = router
                    .oneshot(json_post("/move_money", &body, None))
                    .await
                    .unwrap();
                response.status()
            })
        })
        .collect();
    let mut expected = [START_CENTS; ACCOUNTS];
    for (task, &(from, to, amount)) in tasks.into_iter().zip(&transfers) {
        match task.await.unwrap() {
            StatusCode::OK => {
                expected[from] -= amount;
                expected[to] += amount;
            }
            StatusCode::CONFLICT => {}
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(from, to, "only same-account moves are 422")
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let mut total = 0;
    for (i, id) in ids.iter().enumerate() {
        let balance = node.balance_money(id).await.cents();
        assert!(balance >= 0, "negative balance {balance}");
        assert_eq!(
            balance, expected[i],
            "account {i} differs from its acknowledged transfers"
        );
        total += balance;
    }
    assert_eq!(
        total,
        START_CENTS * ACCOUNTS as i64,
        "money was created or destroyed"
    );
    assert_eq!(node.store_summary().await.total_cents, i128::from(total));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn concurrent_transfers_conserve_the_total(
        transfers in proptest::collection::vec((0..ACCOUNTS, 0..ACCOUNTS, 1..1_500i64), 1..120)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(transfers));
    }
}
