//! The Firestore (emulator) ceiling on this machine, measured through the real store:
//! - `raw`: one transaction per document update (begin + commit), sequential and 8 tasks;
//! - `apply`: one `Store::apply` of one deposit per call (meta read, batch get, begin, commit
//!   with the meta precondition), sequential, and with 64 deposits per call.
//!
//! `FIRESTORE_EMULATOR_HOST=127.0.0.1:8686 cargo run --release -p node --example firestore_ceiling -- 5`
//! (the argument: seconds per measurement).

use std::time::{Duration, Instant};

use node::command::{AccountId, Command, Entry, Operation};
use node::money::Money;
use node::store::{FirestoreConfig, FirestoreStore, Store, StoreOptions};

#[derive(serde::Serialize, serde::Deserialize)]
struct Doc {
    n: i64,
}

async fn raw(db: &firestore::FirestoreDb, collection: &str, seconds: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        let mut tx = db.begin_transaction().await.expect("begin");
        db.fluent()
            .update()
            .in_col(collection)
            .document_id(format!("d{}", n % 100))
            .object(&Doc { n: n as i64 })
            .add_to_transaction(&mut tx)
            .expect("queue");
        tx.commit().await.expect("commit");
        n += 1;
    }
    n
}

fn deposit(index: u64, account: AccountId, commands: usize) -> Entry {
    Entry {
        index,
        commands: (0..commands)
            .map(|_| Command {
                op: Operation::Deposit {
                    account_id: account,
                    amount: Money::from_cents(1),
                },
                idempotency_key: None,
                request_id: None,
            })
            .collect(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    anyhow::ensure!(
        std::env::var("FIRESTORE_EMULATOR_HOST").is_ok(),
        "set FIRESTORE_EMULATOR_HOST (gcloud emulators firestore start --host-port=127.0.0.1:8686)"
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let db = firestore::FirestoreDb::with_options(firestore::FirestoreDbOptions::new(
        "paxos-bank-ceiling".to_owned(),
    ))
    .await?;
    let n = raw(&db, &format!("raw-{run}"), seconds).await;
    println!(
        "raw transactions, sequential: {:.0}/s",
        n as f64 / seconds as f64
    );
    let mut tasks = Vec::new();
    for t in 0..8 {
        let db = db.clone();
        let collection = format!("raw-{run}-{t}");
        tasks.push(tokio::spawn(
            async move { raw(&db, &collection, seconds).await },
        ));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await?;
    }
    println!(
        "raw transactions, 8 tasks on disjoint documents: {:.0}/s",
        total as f64 / seconds as f64
    );

    for per_call in [1usize, 64] {
        let config = FirestoreConfig {
            project: "paxos-bank-ceiling".to_owned(),
            database: "(default)".to_owned(),
            collection: format!("apply-{run}-{per_call}"),
            request_timeout: Duration::from_secs(10),
            shared: false,
        };
        let store = FirestoreStore::connect(&config, StoreOptions::default()).await?;
        let account = AccountId::random();
        store
            .apply(&[Entry {
                index: 1,
                commands: vec![Command {
                    op: Operation::OpenAccount {
                        account_id: account,
                    },
                    idempotency_key: None,
                    request_id: None,
                }],
            }])
            .await?;
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut index = 1;
        while Instant::now() < end {
            index += 1;
            store.apply(&[deposit(index, account, per_call)]).await?;
        }
        let calls = index - 1;
        println!(
            "Store::apply, {per_call} deposit(s) per call: {:.0} calls/s = {:.0} commands/s",
            calls as f64 / seconds as f64,
            (calls as usize * per_call) as f64 / seconds as f64
        );
    }
    Ok(())
}
