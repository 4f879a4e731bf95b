//! The one way to call the bank's public API from Rust: open, deposit, withdraw, move, check,
//! with exact [`Money`] (never a float on the way in or out), idempotency keys, the read's
//! consistency, and typed errors that carry the API's stable `code`. The testbed, the load test
//! and the end-to-end tests use it.
//!
//! ```no_run
//! # async fn example() -> Result<(), node::client::BankError> {
//! use node::client::{BankClient, Consistency, IdempotencyKey};
//! use node::money::Money;
//!
//! let bank = BankClient::new("http://127.0.0.1:8080")?;
//! let alice = bank.open_account(&IdempotencyKey::random()).await?;
//! let bob = bank.open_account(&IdempotencyKey::random()).await?;
//! let amount = Money::parse_amount("12.50").expect("a valid amount");
//! // A retry with the same key applies the deposit once and answers the first result.
//! let key = IdempotencyKey::random();
//! assert_eq!(bank.deposit(alice, amount, &key).await?, amount);
//! assert_eq!(bank.deposit(alice, amount, &key).await?, amount);
//! let (left, arrived) = bank
//!     .move_money(alice, bob, Money::from_cents(250), &IdempotencyKey::random())
//!     .await?;
//! assert_eq!((left.to_string(), arrived.to_string()), ("10".into(), "2.5".into()));
//! match bank.withdraw(bob, Money::from_cents(1_000), &IdempotencyKey::random()).await {
//!     Err(err) if err.code() == Some("insufficient_funds") => {}
//!     other => panic!("expected insufficient_funds, got {other:?}"),
//! }
//! assert_eq!(bank.balance(bob, Consistency::Linearizable).await?, Money::from_cents(250));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::command::AccountId;
pub use crate::command::IdempotencyKey;
use crate::money::Money;

/// How fresh a balance must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the default).
    #[default]
    Linearizable,
    /// This node's replica as it is now: possibly stale, never forwarded, always available.
    Local,
}

/// How a call failed.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The bank answered with an error: `code` is the API's stable code (`insufficient_funds`,
    /// `account_not_found`, `outcome_unknown`, ...).
    #[error("{status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's stable error code.
        code: String,
        /// The human text.
        message: String,
    },
    /// No answer (no connection, a timeout, a cut connection). For a write its outcome is
    /// unknown: retry with the same idempotency key to learn it.
    #[error("no answer from {url}: {reason}")]
    NoAnswer {
        /// The URL called.
        url: String,
        /// Why.
        reason: String,
    },
    /// An answer that is not the API's (a proxy's page, a truncated body, a float balance).
    #[error("an answer from {url} the client does not understand: {detail}")]
    Malformed {
        /// The URL called.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

impl BankError {
    /// The API's error code, if the bank answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BankError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the bank answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            BankError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True if the same call may succeed later: the bank was unavailable or overloaded (503),
    /// or did not answer. Retry writes with the same idempotency key.
    pub fn is_retryable(&self) -> bool {
        match self {
            BankError::Api { status, .. } => *status == 503,
            BankError::NoAnswer { .. } => true,
            BankError::Malformed { .. } => false,
        }
    }
}

/// A client of one bank node (or of the testbed's front door). Cheap to clone.
#[derive(Clone, Debug)]
pub struct BankClient {
    http: reqwest::Client,
    base: Arc<str>,
}

/// The longest one call waits by default: above the node's own request timeout (10 s), so the
/// node's `outcome_unknown` arrives before the client gives up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    code: String,
}

#[derive(Deserialize)]
struct Opened {
    account_id: AccountId,
}

#[derive(Deserialize)]
struct Changed<'a> {
    #[serde(borrow)]
    balance: &'a RawValue,
}

#[derive(Deserialize)]
struct Moved<'a> {
    #[serde(borrow)]
    source_balance: &'a RawValue,
    #[serde(borrow)]
    destination_balance: &'a RawValue,
}

impl BankClient {
    /// A client of the bank at `base` (`http://host:port`) with its own connection pool.
    pub fn new(base: &str) -> Result<BankClient, BankError> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(plumbing::CLIENT_POOL_IDLE)
            .timeout(DEFAULT_TIMEOUT)
            .build()
            .map_err(|err| BankError::NoAnswer {
                url: base.to_owned(),
                reason: err.to_string(),
            })?;
        Ok(BankClient::with_http(http, base))
    }

    /// A client sharing an existing connection pool.
    pub fn with_http(http: reqwest::Client, base: &str) -> BankClient {
        BankClient {
            http,
            base: base.trim_end_matches('/').into(),
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /open_account`: a new account with a zero balance.
    pub async fn open_account(&self, key: &IdempotencyKey) -> Result<AccountId, BankError> {
        let url = format!("{}/open_account", self.base);
        let request = self.http.post(&url).header("idempotency-key", key.as_str());
        let body = self.call(request, &url).await?;
        let opened: Opened = parse_json(&url, &body)?;
        Ok(opened.account_id)
    }

    /// `POST /deposit_money`: the balance afterwards.
    pub async fn deposit(
        &self,
        account: AccountId,
        amount: Money,
        key: &IdempotencyKey,
    ) -> Result<Money, BankError> {
        self.change("deposit_money", account, amount, key).await
    }

    /// `POST /withdraw_money`: the balance afterwards.
    pub async fn withdraw(
        &self,
        account: AccountId,
        amount: Money,
        key: &IdempotencyKey,
    ) -> Result<Money, BankError> {
        self.change("withdraw_money", account, amount, key).await
    }

    /// `POST /move_money`: the source's and the destination's balances afterwards.
    pub async fn move_money(
        &self,
        source: AccountId,
        destination: AccountId,
        amount: Money,
        key: &IdempotencyKey,
    ) -> Result<(Money, Money), BankError> {
        let url = format!("{}/move_money", self.base);
        let body = format!(
            r#"{{"source":{{"account_id":"{}"}},"destination":{{"account_id":"{}"}},"amount":"{amount}"}}"#,
            source.0, destination.0
        );
        let body = self.call(self.write(&url, body, key), &url).await?;
        let moved: Moved = parse_json(&url, &body)?;
        Ok((
            parse_balance(&url, moved.source_balance)?,
            parse_balance(&url, moved.destination_balance)?,
        ))
    }

    /// `GET /check_account`: the balance.
    pub async fn balance(
        &self,
        account: AccountId,
        consistency: Consistency,
    ) -> Result<Money, BankError> {
        let consistency = match consistency {
            Consistency::Linearizable => "",
            Consistency::Local => "&consistency=local",
        };
        let url = format!(
            "{}/check_account?account_id={}{consistency}",
            self.base, account.0
        );
        let body = self.call(self.http.get(&url), &url).await?;
        let changed: Changed = parse_json(&url, &body)?;
        parse_balance(&url, changed.balance)
    }

    /// `GET /readyz`: true when the node serves (it has caught up, and in leader mode knows a
    /// leader).
    pub async fn ready(&self) -> Result<bool, BankError> {
        let url = format!("{}/readyz", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|err| no_answer(&url, &err))?;
        Ok(response.status().is_success())
    }

    async fn change(
        &self,
        route: &str,
        account: AccountId,
        amount: Money,
        key: &IdempotencyKey,
    ) -> Result<Money, BankError> {
        let url = format!("{}/{route}", self.base);
        let body = format!(r#"{{"account_id":"{}","amount":"{amount}"}}"#, account.0);
        let body = self.call(self.write(&url, body, key), &url).await?;
        let changed: Changed = parse_json(&url, &body)?;
        parse_balance(&url, changed.balance)
    }

    fn write(&self, url: &str, body: String, key: &IdempotencyKey) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", key.as_str())
            .body(body)
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<bytes::Bytes, BankError> {
        let response = request.send().await.map_err(|err| no_answer(url, &err))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| no_answer(url, &err))?;
        if status.is_success() {
            return Ok(body);
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => Err(BankError::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.error,
            }),
            Err(_) => Err(BankError::Malformed {
                url: url.to_owned(),
                detail: format!(
                    "status {status} with body {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            }),
        }
    }
}

fn no_answer(url: &str, err: &reqwest::Error) -> BankError {
    BankError::NoAnswer {
        url: url.to_owned(),
        reason: err.to_string(),
    }
}

fn parse_json<'a, T: Deserialize<'a>>(url: &str, body: &'a [u8]) -> Result<T, BankError> {
    serde_json::from_slice(body).map_err(|err| BankError::Malformed {
        url: url.to_owned(),
        detail: err.to_string(),
    })
}

/// A balance from the exact decimal text of the answer (never through a float).
fn parse_balance(url: &str, raw: &RawValue) -> Result<Money, BankError> {
    Money::parse_balance(raw.get()).map_err(|err| BankError::Malformed {
        url: url.to_owned(),
        detail: format!("balance {}: {err}", raw.get()),
    })
}
