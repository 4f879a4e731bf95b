//! The open-model load: requests sent at a constant arrival rate, each at its scheduled time,
//! whether or not earlier ones have returned. A closed-model load (goose: N users, each waiting
//! for its answer before the next request) slows down with the service it measures and so hides
//! an outage's cost (coordinated omission); this one records every request that was due, its
//! latency measured from when it was due, and its outcome.
//!
//! Bounded: at most `max_in_flight` requests wait at once; one due while that many wait is
//! recorded as `overload` without being sent (the client would have had to queue it), and every
//! request has a timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};

use crate::ledger::{Answer, Ledger};

/// One request, as `requests.csv` has it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// When it was due, from the start of the load.
    pub at: Duration,
    /// `deposit`, `move` or `balance`.
    pub op: &'static str,
    /// From when it was due to its answer (or to its timeout).
    pub latency: Duration,
    /// `ok` for an acknowledged request; otherwise a short reason: `status_<code>`,
    /// `timeout`, `connection`, `overload`.
    pub outcome: String,
    /// The node that answered (the front door's `x-bank-node`), when one did.
    pub node: Option<u32>,
}

/// What the load sends.
#[derive(Clone, Debug)]
pub struct OpenLoad {
    /// The bank's entry point.
    pub base: String,
    /// Accounts it deposits into, moves between and reads (at least 2).
    pub accounts: Vec<String>,
    /// Requests per second.
    pub rate: u32,
    /// For how long.
    pub duration: Duration,
    /// Each request's timeout.
    pub timeout: Duration,
    /// The most requests waiting at once.
    pub max_in_flight: usize,
    /// Seed of the operation mix.
    pub seed: u64,
    /// Idempotency keys are `<key_prefix>-<i>`: distinct per load (a warm-up and the measured
    /// load of one run must not share keys, or the second would replay the first's answers).
    pub key_prefix: String,
    /// Where writes are recorded for the invariant check: acknowledged, refused or unknown.
    pub ledger: Option<Arc<Mutex<Ledger>>>,
    /// Running counts, for a progress display.
    pub tally: Arc<Tally>,
}

/// Requests so far, updated as they end.
#[derive(Debug, Default)]
pub struct Tally {
    /// Acknowledged.
    pub ok: std::sync::atomic::AtomicU64,
    /// Every other outcome.
    pub failed: std::sync::atomic::AtomicU64,
}

impl Tally {
    fn count(&self, ok: bool) {
        let which = if ok { &self.ok } else { &self.failed };
        which.fetch_add(1, Ordering::Relaxed);
    }
}

/// The header the front door names the answering node in.
pub use crate::frontdoor::NODE_HEADER;

impl OpenLoad {
    /// Sends `rate * duration` requests on schedule: 60% deposits (with an idempotency key), 20%
    /// moves, 20% balance reads. Returns one sample per request, in the order they were due.
    pub async fn run(&self, http: &reqwest::Client) -> Vec<Sample> {
        assert!(self.accounts.len() >= 2, "an open load needs two accounts");
        let total = (u64::from(self.rate) * self.duration.as_millis() as u64 / 1000) as usize;
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.rate));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let due = interval.mul_f64(i as f64);
            tokio::time::sleep_until((started + due).into()).await;
            let pick = rng.random_range(0..100u32);
            let a = rng.random_range(0..self.accounts.len());
            let b = (a + 1 + rng.random_range(0..self.accounts.len() - 1)) % self.accounts.len();
            let amount_cents = rng.random_range(1..500i64);
            let amount = crate::ledger::amount(amount_cents);
            let (op, method, path, body) = if pick < 60 {
                let body = serde_json::json!({"account_id": self.accounts[a], "amount": amount});
                (
                    "deposit",
                    reqwest::Method::POST,
                    "/deposit_money".to_owned(),
                    Some(body),
                )
            } else if pick < 80 {
                let body = serde_json::json!({
                    "source": {"account_id": self.accounts[a]},
                    "destination": {"account_id": self.accounts[b]},
                    "amount": amount,
                });
                (
                    "move",
                    reqwest::Method::POST,
                    "/move_money".to_owned(),
                    Some(body),
                )
            } else {
                let path = format!("/check_account?account_id={}", self.accounts[a]);
                ("balance", reqwest::Method::GET, path, None)
            };
            if in_flight.load(Ordering::SeqCst) >= self.max_in_flight {
                let sample = Sample {
                    at: due,
                    op,
                    latency: Duration::ZERO,
                    outcome: "overload".to_owned(),
                    node: None,
                };
                self.tally.count(false);
                tasks.push(tokio::spawn(async move { sample }));
                continue;
            }
            in_flight.fetch_add(1, Ordering::SeqCst);
            let mut request = http
                .request(method, format!("{}{path}", self.base))
                .timeout(self.timeout);
            let key = format!("{}-{i}", self.key_prefix);
            // What the write does if applied, for the ledger.
            let changes: Vec<(String, i64)> = match op {
                "deposit" => vec![(self.accounts[a].clone(), amount_cents)],
                "move" => vec![
                    (self.accounts[a].clone(), -amount_cents),
                    (self.accounts[b].clone(), amount_cents),
                ],
                _ => Vec::new(),
            };
            let write = body.clone().map(|body| (path.clone(), body));
            if let Some(body) = body {
                request = request.json(&body).header("idempotency-key", &key);
            }
            let in_flight = in_flight.clone();
            let ledger = self.ledger.clone();
            let tally = self.tally.clone();
            tasks.push(tokio::spawn(async move {
                let answer = request.send().await;
                let (outcome, node, status, reply) = match answer {
                    Ok(response) => {
                        let node = (response.headers().get(NODE_HEADER))
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        let status = response.status();
                        // The body is part of the answer: a latency ends when it is read.
                        let body = response.bytes().await;
                        let outcome = match &body {
                            Ok(_) if status.is_success() => "ok".to_owned(),
                            Ok(_) => format!("status_{}", status.as_u16()),
                            Err(_) => "connection".to_owned(),
                        };
                        let reply = body
                            .ok()
                            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                        (outcome, node, Some(status.as_u16()), reply)
                    }
                    Err(err) if err.is_timeout() => ("timeout".to_owned(), None, None, None),
                    Err(_) => ("connection".to_owned(), None, None, None),
                };
                in_flight.fetch_sub(1, Ordering::SeqCst);
                tally.count(outcome == "ok");
                if let (Some(ledger), Some((path, body))) = (ledger, write) {
                    // A status whose body did not arrive is no answer: the write may or may not
                    // have been applied.
                    let answer = match (status, reply) {
                        (Some(status), Some(reply)) => Answer::Status(status, reply),
                        _ => Answer::None,
                    };
                    (ledger.lock().expect("ledger lock"))
                        .record(&path, &body, &key, &answer, &changes);
                }
                Sample {
                    at: due,
                    op,
                    latency: started.elapsed().saturating_sub(due),
                    outcome,
                    node,
                }
            }));
        }
        let mut samples = Vec::with_capacity(tasks.len());
        for task in tasks {
            if let Ok(sample) = task.await {
                samples.push(sample);
            }
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A bank that answers every request after `delay`, naming itself node 7, and counts the
    /// most requests it held at once.
    async fn slow_bank(delay: Duration) -> (String, Arc<AtomicUsize>) {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let app = axum::Router::new().fallback(move || {
            let (now, most) = (n.clone(), m.clone());
            async move {
                let held = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(held, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                now.fetch_sub(1, Ordering::SeqCst);
                ([(NODE_HEADER, "7")], "{}")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, most)
    }

    fn ledger_of(load: &OpenLoad) -> Ledger {
        load.ledger.as_ref().unwrap().lock().unwrap().clone()
    }

    fn load(base: String, rate: u32, max_in_flight: usize, timeout: Duration) -> OpenLoad {
        OpenLoad {
            base,
            accounts: vec!["a".into(), "b".into(), "c".into()],
            rate,
            duration: Duration::from_secs(1),
            timeout,
            max_in_flight,
            seed: 3,
            key_prefix: "t".into(),
            ledger: Some(Arc::new(Mutex::new(Ledger::default()))),
            tally: Arc::default(),
        }
    }

    /// A closed-model client against a service that takes 300 ms sends 3 requests a second per
    /// user; the open model sends every one that is due: 50 in a second, most of them while
    /// earlier ones still wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_go_out_on_schedule_whatever_earlier_ones_do() {
        let (base, most) = slow_bank(Duration::from_millis(300)).await;
        let load = load(base, 50, 1_000, Duration::from_secs(5));
        let samples = load.run(&reqwest::Client::new()).await;
        assert_eq!(samples.len(), 50);
        assert_eq!(load.tally.ok.load(Ordering::SeqCst), 50);
        // Every write was answered 200: acknowledged in the ledger, nothing unknown.
        let writes = samples.iter().filter(|s| s.op != "balance").count() as u64;
        let ledger = load.ledger.unwrap();
        let ledger = ledger.lock().unwrap();
        assert_eq!((ledger.ok, ledger.unknown, ledger.refused), (writes, 0, 0));
        let moved: i64 = (ledger.accounts.values()).map(|a| a.expected_cents).sum();
        assert!(moved > 0, "deposits add money, moves keep it: {moved}");
        assert!(
            samples
                .iter()
                .all(|s| s.outcome == "ok" && s.node == Some(7))
        );
        assert!(
            most.load(Ordering::SeqCst) >= 10,
            "requests overlapped: at most {} at once",
            most.load(Ordering::SeqCst)
        );
        for (i, sample) in samples.iter().enumerate() {
            assert_eq!(sample.at, Duration::from_millis(20 * i as u64), "due times");
            assert!(sample.latency >= Duration::from_millis(300), "{sample:?}");
        }
        let ops: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.op).collect();
        assert_eq!(ops.len(), 3, "deposits, moves and reads: {ops:?}");
    }

    /// Requests beyond the in-flight bound are recorded as overload, not queued; a service that
    /// does not answer in time is a timeout; nothing listening is a connection failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overload_timeouts_and_refusals_are_outcomes() {
        let (base, _) = slow_bank(Duration::from_secs(2)).await;
        let samples_load = load(base, 20, 5, Duration::from_millis(500));
        let samples = samples_load.run(&reqwest::Client::new()).await;
        assert_eq!(samples.len(), 20);
        let count = |what: &str| samples.iter().filter(|s| s.outcome == what).count();
        assert!(
            count("timeout") >= 5 && count("overload") >= 1,
            "{samples:?}"
        );
        assert_eq!(count("timeout") + count("overload"), 20);
        // A timed-out write is unknown (it may have been applied); an overload was never sent.
        let ledger = ledger_of(&samples_load);
        let timed_out_writes = (samples.iter())
            .filter(|s| s.outcome == "timeout" && s.op != "balance")
            .count() as u64;
        assert_eq!((ledger.ok, ledger.unknown), (0, timed_out_writes));
        let refused = load("http://127.0.0.1:9".into(), 10, 100, Duration::from_secs(1))
            .run(&reqwest::Client::new())
            .await;
        assert!(
            refused.iter().all(|s| s.outcome == "connection"),
            "{refused:?}"
        );
    }
}
