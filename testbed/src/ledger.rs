//! The load test's own record of what it did, and the bank invariant check built on it.
//!
//! Every write carries an idempotency key. Its final answer decides what it implies: a 200 is
//! applied (exactly once), a business refusal (404, 409, 422) is not applied, and anything else
//! (a timeout, 503 after every retry) is **unknown**: applied once or not at all. So each
//! account's balance must lie in `[expected - unknown debits, expected + unknown credits]`, and is
//! exact when nothing is unknown. The check reads every account back and also verifies: no
//! negative balance, every acknowledged `open_account` exists, the total matches, retrying
//! acknowledged writes with their keys returns the first answer and changes nothing, and every
//! replica (read with `consistency=local`) holds the same state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Most acknowledged writes kept for the replay part of the check.
const MAX_REPLAYS_KEPT: usize = 2_000;

/// How an account's balance may have moved.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Balance in cents implied by the acknowledged operations.
    pub expected_cents: i64,
    /// Unknown-outcome operations that would add this much if applied.
    pub unknown_credit_cents: i64,
    /// Unknown-outcome operations that would take this much if applied.
    pub unknown_debit_cents: i64,
}

/// An acknowledged write, replayed by the check with the same key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Acknowledged {
    /// Request path.
    pub path: String,
    /// Request body.
    pub body: Value,
    /// Idempotency key.
    pub key: String,
    /// The answer's body.
    pub answer: Value,
}

/// Everything the load test knows about the state it produced.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Every account the test created (pool and acknowledged opens), with what it implies.
    pub accounts: BTreeMap<String, AccountRecord>,
    /// `open_account` calls whose outcome is unknown (an account may exist that we never saw).
    pub unknown_opens: u64,
    /// A sample of acknowledged writes.
    pub acknowledged: Vec<Acknowledged>,
    /// Writes answered 200.
    pub ok: u64,
    /// Writes refused for business reasons (insufficient funds, ...).
    pub refused: u64,
    /// Writes whose outcome is unknown.
    pub unknown: u64,
    /// When set, the sum of the pool's balances can never change (transfers only).
    pub fixed_total_cents: Option<i64>,
}

/// The final answer to one write.
#[derive(Clone, Debug)]
pub enum Answer {
    /// HTTP status and JSON body.
    Status(u16, Value),
    /// No answer (every attempt failed or timed out).
    None,
}

impl Ledger {
    /// Records the final answer to a write: `credits`/`debits` are what it would do if applied.
    pub fn record(
        &mut self,
        path: &str,
        body: &Value,
        key: &str,
        answer: &Answer,
        changes: &[(String, i64)],
    ) {
        match answer {
            Answer::Status(200, reply) => {
                self.ok += 1;
                for (account, cents) in changes {
                    self.accounts
                        .entry(account.clone())
                        .or_default()
                        .expected_cents += cents;
                }
                if self.acknowledged.len() < MAX_REPLAYS_KEPT {
                    self.acknowledged.push(Acknowledged {
                        path: path.to_owned(),
                        body: body.clone(),
                        key: key.to_owned(),
                        answer: reply.clone(),
                    });
                }
            }
            Answer::Status(404 | 409 | 422, _) => self.refused += 1,
            _ => {
                self.unknown += 1;
                for (account, cents) in changes {
                    let record = self.accounts.entry(account.clone()).or_default();
                    if *cents > 0 {
                        record.unknown_credit_cents += cents;
                    } else {
                        record.unknown_debit_cents -= cents;
                    }
                }
            }
        }
    }
}

/// Exact cents of a JSON number printed by the bank (at most two decimals).
pub fn cents(value: &Value) -> Option<i64> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return None,
    };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 2 || whole.is_empty() {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    let value = whole.checked_mul(100)?.checked_add(frac)?;
    Some(if negative { -value } else { value })
}

/// Formats cents as the API's amount text (`12.05`).
pub fn amount(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// What the check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Accounts read back.
    pub accounts: usize,
    /// Replayed writes.
    pub replayed: usize,
    /// Nodes compared.
    pub replicas: usize,
    /// Every broken rule, with its evidence.
    pub violations: Vec<String>,
}

/// The balance of `account` in cents read with the typed client (exact: never through a float),
/// `None` if the bank says it does not exist; retried until `deadline`.
async fn read_balance(
    client: &reqwest::Client,
    base: &str,
    account: &str,
    local: bool,
    deadline: Instant,
) -> Result<Option<i64>, String> {
    let id: node::command::AccountId = account
        .parse()
        .map_err(|_| format!("{account} is not an account id"))?;
    let bank = node::client::BankClient::with_http(client.clone(), base);
    let consistency = if local {
        node::client::Consistency::Local
    } else {
        node::client::Consistency::Linearizable
    };
    loop {
        match bank.balance(id, consistency).await {
            Ok(balance) => return Ok(Some(balance.cents())),
            Err(err) if err.code() == Some("account_not_found") => return Ok(None),
            Err(err @ node::client::BankError::Malformed { .. }) => return Err(err.to_string()),
            Err(err) if Instant::now() > deadline => return Err(err.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Sends a keyed write until it gets an answer that is not 503 (or the deadline passes).
pub async fn send_write(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
    key: &str,
    deadline: Instant,
) -> Answer {
    loop {
        let sent = client
            .post(format!("{base}{path}"))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if status != 503 {
                let body = response.json().await.unwrap_or(Value::Null);
                return Answer::Status(status, body);
            }
        }
        if Instant::now() > deadline {
            return Answer::None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the bank against the ledger through `base` (linearizable reads) and, when given, every
/// node's own replica (`consistency=local`).
pub async fn check(ledger: &Ledger, base: &str, nodes: &[String], replays: usize) -> Report {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("an HTTP client");
    let mut report = Report::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut actual = BTreeMap::new();
    for (account, record) in &ledger.accounts {
        report.accounts += 1;
        match read_balance(&client, base, account, false, deadline).await {
            Err(err) => report
                .violations
                .push(format!("cannot read {account}: {err}")),
            Ok(None) => report.violations.push(format!(
                "account {account} was opened (acknowledged) but does not exist"
            )),
            Ok(Some(balance)) => {
                let low = record.expected_cents - record.unknown_debit_cents;
                let high = record.expected_cents + record.unknown_credit_cents;
                if balance < 0 {
                    report.violations.push(format!(
                        "account {account} has a negative balance {balance} cents"
                    ));
                }
                if balance < low || balance > high {
                    report.violations.push(format!(
                        "account {account}: balance {} but the acknowledged operations imply {} \
                         (possible range with unknown outcomes {}..={})",
                        amount(balance),
                        amount(record.expected_cents),
                        amount(low),
                        amount(high)
                    ));
                }
                actual.insert(account.clone(), balance);
            }
        }
    }
    if let Some(total) = ledger.fixed_total_cents {
        let sum: i64 = actual.values().sum();
        if actual.len() == ledger.accounts.len() && sum != total {
            report.violations.push(format!(
                "total money changed: {} now, {} at the start (transfers only)",
                amount(sum),
                amount(total)
            ));
        }
    }
    // Exactly once: a retry with the same key returns the first answer and applies nothing.
    for write in ledger.acknowledged.iter().take(replays) {
        let again = send_write(
            &client,
            base,
            &write.path,
            &write.body,
            &write.key,
            Instant::now() + Duration::from_secs(15),
        )
        .await;
        report.replayed += 1;
        match again {
            Answer::Status(200, body) if body == write.answer => {}
            other => report.violations.push(format!(
                "retry of {} {} with key {} answered {other:?}, first answer was {}",
                write.path, write.body, write.key, write.answer
            )),
        }
    }
    if report.replayed > 0 {
        for (account, before) in &actual {
            if let Ok(Some(now)) = read_balance(&client, base, account, false, deadline).await
                && now != *before
            {
                report.violations.push(format!(
                    "account {account} changed from {} to {} after replaying acknowledged writes",
                    amount(*before),
                    amount(now)
                ));
            }
        }
    }
    // Replicas: every node's own copy converges to the same state.
    for node in nodes {
        report.replicas += 1;
        let converge = Instant::now() + Duration::from_secs(30);
        loop {
            let mut differs = Vec::new();
            for (account, balance) in &actual {
                let local = read_balance(&client, node, account, true, converge).await;
                if local != Ok(Some(*balance)) {
                    differs.push(format!("{account}: {local:?} vs {}", amount(*balance)));
                }
            }
            if differs.is_empty() {
                break;
            }
            if Instant::now() > converge {
                report.violations.push(format!(
                    "replica {node} differs on {} accounts after 30 s, e.g. {}",
                    differs.len(),
                    differs[0]
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    report
}

/// The public URLs of a testbed's nodes, if `base` is a testbed front door.
pub async fn testbed_nodes(base: &str) -> Vec<String> {
    let Ok(response) = reqwest::get(format!("{base}/_testbed/cluster")).await else {
        return Vec::new();
    };
    let Ok(cluster) = response.json::<crate::frontdoor::ClusterInfo>().await else {
        return Vec::new();
    };
    cluster.nodes.into_iter().map(|n| n.public_url).collect()
}

/// A JSON summary of a report.
pub fn report_json(report: &Report) -> Value {
    json!({
        "accounts": report.accounts,
        "replayed": report.replayed,
        "replicas": report.replicas,
        "violations": report.violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_are_exact() {
        assert_eq!(cents(&json!(12.5)), Some(1250));
        assert_eq!(cents(&json!(0.07)), Some(7));
        assert_eq!(cents(&json!(100)), Some(10_000));
        assert_eq!(cents(&json!("-3.1")), Some(-310));
        assert_eq!(cents(&json!(1.234)), None);
        assert_eq!(amount(1205), "12.05");
    }

    #[test]
    fn unknown_outcomes_widen_the_range_and_acknowledged_ones_move_it() {
        let mut ledger = Ledger::default();
        let a = "a".to_owned();
        let b = "b".to_owned();
        let body = json!({});
        ledger.record(
            "/move_money",
            &body,
            "k1",
            &Answer::Status(200, json!({})),
            &[(a.clone(), -100), (b.clone(), 100)],
        );
        ledger.record(
            "/move_money",
            &body,
            "k2",
            &Answer::None,
            &[(a.clone(), -50), (b.clone(), 50)],
        );
        ledger.record(
            "/withdraw_money",
            &body,
            "k3",
            &Answer::Status(409, json!({})),
            &[(a.clone(), -7)],
        );
        assert_eq!(ledger.accounts[&a].expected_cents, -100);
        assert_eq!(ledger.accounts[&a].unknown_debit_cents, 50);
        assert_eq!(ledger.accounts[&b].unknown_credit_cents, 50);
        assert_eq!((ledger.ok, ledger.unknown, ledger.refused), (1, 1, 1));
        assert_eq!(ledger.acknowledged.len(), 1);
    }
}
