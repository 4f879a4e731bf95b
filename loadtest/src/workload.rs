//! The goose scenarios: the original's test (deposit 1 into one account), the mixed workload,
//! and a Jepsen-style bank (transfers between a fixed pool, plus reads).
//!
//! Every write carries a fresh idempotency key; a 503 is retried with the same key (the retries
//! are goose requests too, so goose's own figures show them), up to [`RETRY_FOR`]. The final
//! answer goes into the run's [`Ledger`], and the client-side latency of the whole operation
//! (retries included) into the run's samples, from which the comparison table is computed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::prelude::*;
use serde_json::{Value, json};

use crate::ledger::{Answer, Ledger, amount, cents};

/// How long one operation keeps retrying 503s with its key before its outcome is unknown.
pub const RETRY_FOR: Duration = Duration::from_secs(10);
/// Most latency samples kept per run (beyond it, samples are dropped: runs are bounded anyway).
const MAX_SAMPLES: usize = 5_000_000;

/// Which traffic to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Workload {
    /// The original system's JMeter test: deposit 1 into one account, over and over.
    Original,
    /// Weighted: open_account 1, deposit 4, withdraw 4, move_money 4, check_account 4.
    Mixed,
    /// Jepsen's bank: a fixed total spread over the pool, transfers only (3) plus reads (1).
    Bank,
}

/// One run's shared state: the account pool, the ledger and the latency samples.
pub struct Run {
    /// Accounts created before the load started.
    pub pool: Vec<String>,
    /// What the operations imply.
    pub ledger: Mutex<Ledger>,
    /// (milliseconds since start, operation latency in microseconds, served without error).
    pub samples: Mutex<Vec<(u32, u32, bool)>>,
    /// When the load started.
    pub started: Instant,
    /// Optional counters for Prometheus, labelled with this mode.
    pub mode: String,
}

static CURRENT: Mutex<Option<Arc<Run>>> = Mutex::new(None);

/// Makes `run` the state the scenarios use.
pub fn set_current(run: Arc<Run>) {
    *CURRENT.lock().expect("run lock") = Some(run);
}

fn current() -> Arc<Run> {
    CURRENT
        .lock()
        .expect("run lock")
        .clone()
        .expect("a run is set before the load starts")
}

fn pick(pool: &[String]) -> (usize, &str) {
    let i = rand_index(pool.len());
    (i, &pool[i])
}

fn rand_index(n: usize) -> usize {
    // Quality does not matter here; uuid's v4 randomness is already a dependency.
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

fn random_cents(max: i64) -> i64 {
    1 + (uuid::Uuid::new_v4().as_u128() % max as u128) as i64
}

/// The scenarios of a workload.
pub fn scenarios(workload: Workload) -> Result<Vec<Scenario>, GooseError> {
    Ok(match workload {
        Workload::Original => vec![
            scenario!("Original")
                .register_transaction(transaction!(deposit_one_into_first).set_name("deposit_one")),
        ],
        Workload::Mixed => vec![
            scenario!("Mixed")
                .register_transaction(
                    transaction!(open_account)
                        .set_name("open_account")
                        .set_weight(1)?,
                )
                .register_transaction(transaction!(deposit).set_name("deposit").set_weight(4)?)
                .register_transaction(transaction!(withdraw).set_name("withdraw").set_weight(4)?)
                .register_transaction(
                    transaction!(move_money)
                        .set_name("move_money")
                        .set_weight(4)?,
                )
                .register_transaction(
                    transaction!(check_account)
                        .set_name("check_account")
                        .set_weight(4)?,
                ),
        ],
        Workload::Bank => vec![
            scenario!("Bank")
                .register_transaction(
                    transaction!(move_money)
                        .set_name("move_money")
                        .set_weight(3)?,
                )
                .register_transaction(
                    transaction!(check_account)
                        .set_name("check_account")
                        .set_weight(1)?,
                ),
        ],
    })
}

/// Sends one keyed write through goose, retrying 503 with the same key; records the outcome.
async fn write(
    user: &mut GooseUser,
    name: &'static str,
    path: &str,
    body: Value,
    changes: Vec<(String, i64)>,
) -> TransactionResult {
    let run = current();
    let key = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let answer = loop {
        let builder = user
            .get_request_builder(&GooseMethod::Post, path)?
            .header("Idempotency-Key", &key)
            .json(&body);
        let request = GooseRequest::builder()
            .set_request_builder(builder)
            .name(name)
            .build();
        let mut goose = user.request(request).await?;
        match goose.response {
            Ok(response) => {
                let status = response.status().as_u16();
                let reply: Value = response.json().await.unwrap_or(Value::Null);
                if status == 503 && started.elapsed() < RETRY_FOR {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                if matches!(status, 404 | 409 | 422) {
                    // A business answer, not a failure of the service.
                    let _ = user.set_success(&mut goose.request);
                }
                break if status == 503 {
                    Answer::None
                } else {
                    Answer::Status(status, reply)
                };
            }
            Err(_) if started.elapsed() < RETRY_FOR => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => break Answer::None,
        }
    };
    // An answer from the service (even a refusal) is a served operation; no answer or a 5xx is
    // an error.
    let served = matches!(answer, Answer::Status(status, _) if status < 500);
    if path == "/open_account"
        && let Answer::Status(200, reply) = &answer
        && let Some(id) = reply["account_id"].as_str()
    {
        run.ledger
            .lock()
            .expect("ledger lock")
            .accounts
            .entry(id.to_owned())
            .or_default();
    }
    {
        let mut ledger = run.ledger.lock().expect("ledger lock");
        if path == "/open_account" && matches!(answer, Answer::None) {
            ledger.unknown_opens += 1;
        }
        ledger.record(path, &body, &key, &answer, &changes);
    }
    sample(&run, name, started, served);
    Ok(())
}

fn sample(run: &Run, op: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "served" } else { "error" };
    metrics::counter!(crate::metrics::OPERATIONS, "mode" => run.mode.clone(), "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(crate::metrics::OPERATION_DURATION, "mode" => run.mode.clone(), "op" => op)
        .record(started.elapsed().as_secs_f64());
    let mut samples = run.samples.lock().expect("samples lock");
    if samples.len() < MAX_SAMPLES {
        samples.push((
            run.started.elapsed().as_millis() as u32,
            started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
            ok,
        ));
    }
}

async fn deposit_one_into_first(user: &mut GooseUser) -> TransactionResult {
    let run = current();
    let account = run.pool[0].clone();
    let body = json!({"account_id": account, "amount": 1});
    write(
        user,
        "deposit",
        "/deposit_money",
        body,
        vec![(account, 100)],
    )
    .await
}

async fn open_account(user: &mut GooseUser) -> TransactionResult {
    write(
        user,
        "open_account",
        "/open_account",
        Value::Null,
        Vec::new(),
    )
    .await
}

/// A deposit (`sign` 1) or a withdrawal (`sign` -1) of a random amount on a random pool account.
async fn single_account(
    user: &mut GooseUser,
    name: &'static str,
    path: &str,
    sign: i64,
) -> TransactionResult {
    let run = current();
    let (_, account) = pick(&run.pool);
    let account = account.to_owned();
    let cents = random_cents(2_000);
    let body = json!({"account_id": account, "amount": amount(cents)});
    write(user, name, path, body, vec![(account, sign * cents)]).await
}

async fn deposit(user: &mut GooseUser) -> TransactionResult {
    single_account(user, "deposit", "/deposit_money", 1).await
}

async fn withdraw(user: &mut GooseUser) -> TransactionResult {
    single_account(user, "withdraw", "/withdraw_money", -1).await
}

async fn move_money(user: &mut GooseUser) -> TransactionResult {
    let run = current();
    let (i, source) = pick(&run.pool);
    let j = (i + 1 + rand_index(run.pool.len() - 1)) % run.pool.len();
    let (source, destination) = (source.to_owned(), run.pool[j].clone());
    let cents = random_cents(1_000);
    let body = json!({
        "source": {"account_id": source},
        "destination": {"account_id": destination},
        "amount": amount(cents),
    });
    let changes = vec![(source, -cents), (destination, cents)];
    write(user, "move_money", "/move_money", body, changes).await
}

async fn check_account(user: &mut GooseUser) -> TransactionResult {
    let run = current();
    let (_, account) = pick(&run.pool);
    let path = format!("/check_account?account_id={account}");
    let started = Instant::now();
    let mut ok = false;
    while started.elapsed() < RETRY_FOR {
        let goose = user.get_named(&path, "check_account").await?;
        match goose.response {
            Ok(response) if response.status().as_u16() == 200 => {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                ok = cents(&body["balance"]).is_some();
                break;
            }
            Ok(response) if response.status().as_u16() != 503 => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    sample(&run, "check_account", started, ok);
    Ok(())
}
