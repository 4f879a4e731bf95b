//! The read half of the invariant check: a counter that only grows, read through every node
//! while it grows and while faults hit. One task deposits 1 cent at a time into the counter
//! account through the entry point and counts the deposits acknowledged; another reads the
//! counter through each node in turn (a linearizable read: the default consistency) and checks
//! that it never shows less than what had been acknowledged **before the read began**. A node
//! that answers an older balance served a stale read: what a replica that lost its lease, or a
//! recovering one that confirmed a read it should not have, would do.
//!
//! Reads that fail are not violations (an unavailable node is the availability report's
//! business); they are counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::ledger::{Answer, Ledger, cents, send_write};

/// What the counter check found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CounterReport {
    /// Deposits acknowledged.
    pub acknowledged: i64,
    /// Reads that answered a balance, per node URL.
    pub reads: BTreeMap<String, u64>,
    /// Reads that failed (no answer, or an error status), per node URL.
    pub failed_reads: BTreeMap<String, u64>,
    /// Stale reads.
    pub stale_reads: u64,
    /// The first [`MAX_VIOLATIONS`] stale reads, described.
    pub violations: Vec<String>,
}

/// The most stale reads described (all are counted).
pub const MAX_VIOLATIONS: usize = 100;

/// The counter check's settings.
#[derive(Clone, Debug)]
pub struct Counter {
    /// Where deposits go (the entry point).
    pub base: String,
    /// The nodes reads go to, in turn (their public URLs).
    pub nodes: Vec<String>,
    /// The counter's account.
    pub account: String,
    /// Pause between two reads.
    pub read_every: Duration,
    /// Pause between two deposits.
    pub write_every: Duration,
    /// Idempotency keys are `<key_prefix>-<i>`.
    pub key_prefix: String,
}

impl Counter {
    /// Writes and reads until `stop`; every deposit is recorded in `ledger`.
    pub async fn run(
        &self,
        http: &reqwest::Client,
        ledger: Arc<std::sync::Mutex<Ledger>>,
        stop: CancellationToken,
    ) -> CounterReport {
        let acknowledged = Arc::new(AtomicI64::new(0));
        let writer = {
            let (http, acknowledged, stop) = (http.clone(), acknowledged.clone(), stop.clone());
            let (base, account, every, prefix) = (
                self.base.clone(),
                self.account.clone(),
                self.write_every,
                self.key_prefix.clone(),
            );
            async move {
                let body = serde_json::json!({"account_id": account, "amount": "0.01"});
                let mut i = 0u64;
                while !stop.is_cancelled() {
                    let key = format!("{prefix}-{i}");
                    i += 1;
                    // One attempt per key, 2 s at most: a deposit that gets no answer is
                    // unknown, and the next one goes out with a new key.
                    let answer =
                        send_write(&http, &base, "/deposit_money", &body, &key, Instant::now())
                            .await;
                    if matches!(answer, Answer::Status(200, _)) {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                    (ledger.lock().expect("ledger lock")).record(
                        "/deposit_money",
                        &body,
                        &key,
                        &answer,
                        &[(account.clone(), 1)],
                    );
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(every) => {}
                    }
                }
            }
        };
        let reader = async {
            let mut report = CounterReport::default();
            let mut turn = 0usize;
            while !stop.is_cancelled() && !self.nodes.is_empty() {
                let node = &self.nodes[turn % self.nodes.len()];
                turn += 1;
                let before = acknowledged.load(Ordering::SeqCst);
                let read = http
                    .get(format!("{node}/check_account"))
                    .query(&[("account_id", self.account.as_str())])
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                let balance = match read {
                    Ok(response) if response.status().is_success() => response
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| cents(&v["balance"])),
                    _ => None,
                };
                match balance {
                    Some(balance) => {
                        *report.reads.entry(node.clone()).or_default() += 1;
                        if balance < before {
                            report.stale_reads += 1;
                        }
                        if balance < before && report.violations.len() < MAX_VIOLATIONS {
                            report.violations.push(format!(
                                "stale read: {node} answered {balance} cents for the counter, \
                                 but {before} deposits of 1 cent were acknowledged before the \
                                 read began"
                            ));
                        }
                    }
                    None => *report.failed_reads.entry(node.clone()).or_default() += 1,
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(self.read_every) => {}
                }
            }
            report
        };
        let ((), mut report) = tokio::join!(writer, reader);
        report.acknowledged = acknowledged.load(Ordering::SeqCst);
        report
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A bank whose counter is kept in memory: reads through `/<node>/check_account` answer
    /// the current balance, except through `/stale/check_account`, which keeps answering the
    /// balance of its first read (a replica that stopped applying).
    async fn bank() -> String {
        let balance = Arc::new(AtomicI64::new(0));
        let frozen = Arc::new(std::sync::Mutex::new(None::<i64>));
        let (b1, b2, f2) = (balance.clone(), balance.clone(), frozen.clone());
        let app = axum::Router::new()
            .route(
                "/deposit_money",
                axum::routing::post(move || {
                    let balance = b1.clone();
                    async move {
                        balance.fetch_add(1, Ordering::SeqCst);
                        axum::Json(serde_json::json!({"ok": true}))
                    }
                }),
            )
            .route(
                "/{node}/check_account",
                axum::routing::get(
                    move |axum::extract::Path(node): axum::extract::Path<String>| {
                        let (balance, frozen) = (b2.clone(), f2.clone());
                        async move {
                            let now = balance.load(Ordering::SeqCst);
                            let shown = if node == "stale" {
                                *frozen.lock().unwrap().get_or_insert(now)
                            } else {
                                now
                            };
                            let text = format!("{}.{:02}", shown / 100, shown % 100);
                            axum::Json(serde_json::json!({ "balance": text }))
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    async fn run(nodes: &[&str]) -> (CounterReport, Ledger) {
        let base = bank().await;
        let counter = Counter {
            base: base.clone(),
            nodes: nodes.iter().map(|n| format!("{base}/{n}")).collect(),
            account: "c".into(),
            read_every: Duration::from_millis(5),
            write_every: Duration::from_millis(5),
            key_prefix: "k".into(),
        };
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            stopper.cancel();
        });
        let report = counter
            .run(&reqwest::Client::new(), ledger.clone(), stop)
            .await;
        let ledger = ledger.lock().unwrap().clone();
        (report, ledger)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_through_every_node_pass_on_a_correct_bank() {
        let (report, ledger) = run(&["a", "b"]).await;
        assert!(report.violations.is_empty(), "{report:?}");
        assert!(report.acknowledged >= 10, "{report:?}");
        assert!(report.reads.values().all(|&n| n >= 5), "{report:?}");
        assert_eq!(ledger.ok, report.acknowledged as u64);
        assert_eq!(ledger.accounts["c"].expected_cents, report.acknowledged);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_serves_an_old_balance_is_caught() {
        let (report, _) = run(&["a", "stale"]).await;
        assert!(
            !report.violations.is_empty() && report.violations.iter().all(|v| v.contains("/stale")),
            "{report:?}"
        );
        assert!(report.stale_reads >= report.violations.len() as u64);
        assert!(report.violations.len() <= MAX_VIOLATIONS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_reads_are_counted_not_violations() {
        let (report, _) = run(&["missing-route/x"]).await;
        assert!(report.violations.is_empty(), "{report:?}");
        assert!(report.failed_reads.values().sum::<u64>() >= 5, "{report:?}");
    }
}
