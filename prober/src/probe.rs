//! One probe, as a client sees the bank: a deposit of 0.01 (with an idempotency key) into the
//! prober's own account through the entry point, then a linearizable read that must show it. A
//! probe passes only if the write was acknowledged and the read sees it; a deposit into a missing
//! account is a failure (the original prober counted it as healthy), and the account is opened
//! again on the next probe.

use std::time::{Duration, Instant};

use node::client::{BankClient, BankError, Consistency, IdempotencyKey};
use node::command::AccountId;
use node::money::Money;

/// Why a probe failed: the `reason` label of `probe_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No answer within the probe's timeout.
    Timeout,
    /// No connection, or the connection broke (a slow answer is a timeout: the probe's own
    /// deadline is far below the client's).
    Connection,
    /// An error status (503 unavailable, outcome unknown, ...).
    HttpStatus,
    /// The account is gone (a wiped cluster): opened again on the next probe.
    AccountMissing,
    /// The read did not show the acknowledged deposit.
    WrongBalance,
    /// An answer that is not the bank's.
    Malformed,
}

impl Failure {
    /// Every reason, for series created at zero.
    pub const ALL: [Failure; 6] = [
        Failure::Timeout,
        Failure::Connection,
        Failure::HttpStatus,
        Failure::AccountMissing,
        Failure::WrongBalance,
        Failure::Malformed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Connection => "connection",
            Failure::HttpStatus => "http_status",
            Failure::AccountMissing => "account_missing",
            Failure::WrongBalance => "wrong_balance",
            Failure::Malformed => "malformed",
        }
    }

    fn of(err: &BankError) -> Failure {
        match err {
            BankError::Api { code, .. } if code == "account_not_found" => Failure::AccountMissing,
            BankError::Api { .. } => Failure::HttpStatus,
            BankError::NoAnswer { .. } => Failure::Connection,
            BankError::Malformed { .. } => Failure::Malformed,
        }
    }
}

/// What one probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// How long it took.
    pub latency: Duration,
    /// `None`: it passed.
    pub failure: Option<Failure>,
    /// The error's text, when it failed.
    pub detail: Option<String>,
}

/// The probe of the entry point: it owns the prober's account.
#[derive(Debug)]
pub struct EntryProbe {
    bank: BankClient,
    timeout: Duration,
    account: Option<AccountId>,
}

/// The amount every probe deposits.
pub const PROBE_AMOUNT: Money = Money::from_cents(1);

impl EntryProbe {
    /// Probes of `bank`, each bounded by `timeout`.
    pub fn new(bank: BankClient, timeout: Duration) -> EntryProbe {
        EntryProbe {
            bank,
            timeout,
            account: None,
        }
    }

    /// The prober's account, once opened.
    pub fn account(&self) -> Option<AccountId> {
        self.account
    }

    /// One probe: open the account if needed, deposit, read back.
    pub async fn probe(&mut self) -> Outcome {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.deposit_and_read()).await;
        let latency = started.elapsed();
        let (failure, detail) = match result {
            Ok(Ok(())) => (None, None),
            Ok(Err((failure, detail))) => (Some(failure), Some(detail)),
            Err(_) => (
                Some(Failure::Timeout),
                Some(format!("no answer within {:?}", self.timeout)),
            ),
        };
        if failure == Some(Failure::AccountMissing) {
            self.account = None;
        }
        Outcome {
            latency,
            failure,
            detail,
        }
    }

    async fn deposit_and_read(&mut self) -> Result<(), (Failure, String)> {
        let fail = |err: BankError| (Failure::of(&err), err.to_string());
        let account = match self.account {
            Some(account) => account,
            None => {
                let account = (self.bank)
                    .open_account(&IdempotencyKey::random())
                    .await
                    .map_err(fail)?;
                tracing::info!(account = %account.0, "the prober opened its account");
                self.account = Some(account);
                account
            }
        };
        let after = (self.bank)
            .deposit(account, PROBE_AMOUNT, &IdempotencyKey::random())
            .await
            .map_err(fail)?;
        let read = (self.bank)
            .balance(account, Consistency::Linearizable)
            .await
            .map_err(fail)?;
        // An earlier probe whose answer was lost may be applied later and add to it: the read
        // must show at least what this deposit was acknowledged with.
        if read < after {
            return Err((
                Failure::WrongBalance,
                format!(
                    "deposit acknowledged a balance of {after}, the read after it shows {read}"
                ),
            ));
        }
        Ok(())
    }
}

/// The direct probe of one node: its public `/readyz`, within `timeout`. What recovery and the
/// front door's health use: it sees a hung node process even while its paxos process is fine.
pub async fn probe_node(bank: &BankClient, timeout: Duration) -> Outcome {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, bank.ready()).await;
    let latency = started.elapsed();
    let (failure, detail) = match result {
        Ok(Ok(true)) => (None, None),
        Ok(Ok(false)) => (Some(Failure::HttpStatus), Some("not ready".to_owned())),
        Ok(Err(err)) => (Some(Failure::of(&err)), Some(err.to_string())),
        Err(_) => (
            Some(Failure::Timeout),
            Some(format!("no answer within {timeout:?}")),
        ),
    };
    Outcome {
        latency,
        failure,
        detail,
    }
}
