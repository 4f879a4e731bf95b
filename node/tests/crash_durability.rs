//! kill -9 in the middle of a stream of acknowledged deposits loses none of them.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::NodeProcess;
use serde_json::{Value, json};

const ACCOUNTS: usize = 8;
const WRITERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_deposit_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::spawn(dir.path());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let body: Value = client
            .post(format!("{}/open_account", node.public_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        accounts.push(body["account_id"].as_str().unwrap().to_owned());
    }

    // Each writer deposits 0.01 again and again with a fresh key, remembering what was acked.
    let acked: Arc<Mutex<HashMap<String, (usize, Value)>>> = Arc::default();
    let attempted = Arc::new(Mutex::new(vec![0u64; ACCOUNTS]));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, url, accounts) = (client.clone(), node.public_url.clone(), accounts.clone());
        let (acked, attempted, stop) = (acked.clone(), attempted.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let slot = (w + n) % ACCOUNTS;
                let key = format!("w{w}-{n}");
                n += 1;
                attempted.lock().unwrap()[slot] += 1;
                let sent = client
                    .post(format!("{url}/deposit_money"))
                    .header("idempotency-key", &key)
                    .json(&json!({"account_id": accounts[slot], "amount": 0.01}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        let body: Value = response.json().await.unwrap();
                        acked.lock().unwrap().insert(key, (slot, body));
                    }
                    // The node is gone: every later request fails the same way.
                    _ => break,
                }
            }
        }));
    }
    // Let a stream of acknowledged deposits build up, then kill the node mid-stream.
    for _ in 0..200 {
        if acked.lock().unwrap().len() >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    node.kill_9();
    stop.cancel();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = Arc::try_unwrap(acked).unwrap().into_inner().unwrap();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acked.len() >= 100,
        "too few acknowledged deposits to mean anything: {}",
        acked.len()
    );

    let node = NodeProcess::spawn(dir.path());
    let mut acked_per_account = [0u64; ACCOUNTS];
    for (slot, _) in acked.values() {
        acked_per_account[*slot] += 1;
    }
    for (slot, account) in accounts.iter().enumerate() {
        let bank = node::client::BankClient::new(&node.public_url).unwrap();
        let id: node::command::AccountId = account.parse().unwrap();
        let balance = bank
            .balance(id, node::client::Consistency::Linearizable)
            .await;
        let cents = balance.unwrap().cents() as u64;
        assert!(
            cents >= acked_per_account[slot] && cents <= attempted[slot],
            "account {slot}: balance {cents} cents, acknowledged {}, attempted {}",
            acked_per_account[slot],
            attempted[slot]
        );
    }
    // Every acknowledged deposit is in the restarted state exactly as it was answered: the
    // retry returns the stored first response (and applies nothing again).
    for (key, (slot, first)) in &acked {
        let retry: Value = client
            .post(format!("{}/deposit_money", node.public_url))
            .header("idempotency-key", key)
            .json(&json!({"account_id": accounts[*slot], "amount": 0.01}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            &retry, first,
            "acknowledged deposit {key} was lost or changed by the crash"
        );
    }
    eprintln!(
        "{} acknowledged deposits before kill -9, all found after restart",
        acked.len()
    );
}
