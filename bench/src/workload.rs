//! The clients. Each of `clients` tasks runs a closed loop (one request at a time, the next as
//! soon as the answer is in) for warm-up + duration; operations that end inside the measured
//! window count, and the systems' processes' CPU is read at the window's two ends.
//!
//! Transfers move 0.01 to 1.00 between two distinct random accounts of `--accounts`, each opened
//! with 1,000.00: the total never changes, and it is checked after the run. On etcd an account
//! is a key holding its cents; a transfer reads both keys (a linearizable read transaction) and
//! writes both only if neither changed since (a transaction comparing their mod revisions),
//! again from the read when another client got there first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use crate::Cli;
use crate::report::{self, Run, Sample, System};
use crate::systems::{Etcd, Process, Testbed, cpu_seconds, own_cpu_seconds};

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Transfers between accounts (both systems).
    Transfers,
    /// 40% transfers, 25% deposits, 15% withdrawals, 20% balance checks (the bank).
    Mixed,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Transfers => "transfers",
            Workload::Mixed => "mixed",
        })
    }
}

/// Cents every account starts with.
pub const OPENING_CENTS: i64 = 100_000;

/// Longest wait for one answer (a slower answer is an error).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer a bank client reads (the bank's to these requests are under 1 KiB; a larger
/// one is an error).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A transfer or mixed-workload step between `from` and `to` (distinct) of `amount` cents.
fn pick(rng: &mut rand::rngs::StdRng, accounts: usize) -> (usize, usize, i64) {
    let from = rng.random_range(0..accounts);
    let mut to = rng.random_range(0..accounts - 1);
    if to >= from {
        to += 1;
    }
    (from, to, rng.random_range(1..=100))
}

fn amount(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The outcome of one operation.
enum Outcome {
    /// Done (including a refusal the bank's rules call for, such as insufficient funds).
    Done,
    /// A deposit (+) or withdrawal (-) of these cents was acknowledged.
    Changed(i64),
    /// No answer, or an answer that is not the bank's: what happened.
    Error(String),
}

/// A client's pace: one request every 1/rate seconds (a request that takes longer delays the
/// next, never piles up), or none.
struct Pace {
    every: Option<Duration>,
    next: Instant,
}

impl Pace {
    fn new(rate: Option<f64>) -> Pace {
        Pace {
            every: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Instant::now(),
        }
    }

    async fn wait(&mut self) {
        if let Some(every) = self.every {
            tokio::time::sleep_until(self.next.into()).await;
            self.next = Instant::now().max(self.next) + every;
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientEnd {
    samples: Vec<Sample>,
    /// Cents deposited minus cents withdrawn, acknowledged.
    changed: i64,
    /// The first failures, described.
    errors: Vec<String>,
}

/// Failures described per run (the rest are counted).
const ERROR_EXAMPLES: usize = 5;

impl ClientEnd {
    fn failed(&mut self, what: String) {
        if self.errors.len() < ERROR_EXAMPLES {
            self.errors.push(what);
        }
    }
}

/// What the host did during a measured window besides the system's processes.
struct Host {
    /// Share of the host's CPU time stolen by the hypervisor.
    steal: Option<f64>,
    /// Cores the load generator (this process) used.
    client_cores: Option<f64>,
    /// The disk's sync time just before the run.
    disk_sync_ms: Option<f64>,
}

impl Host {
    fn record(self, run: &mut Run) {
        run.host_steal = self.steal;
        run.client_cores = self.client_cores;
        run.disk_sync_ms = self.disk_sync_ms;
    }
}

/// Every client's samples in the window (the rest merged), the CPU of `processes` over the
/// window, and what the host did meanwhile.
async fn drive<F, Fut>(
    cli: &Cli,
    clients: u32,
    processes: &[Process],
    client: F,
) -> (ClientEnd, Vec<(String, f64)>, Host)
where
    F: Fn(u32, Instant, Instant) -> Fut,
    Fut: std::future::Future<Output = ClientEnd> + Send + 'static,
{
    let disk_sync_ms = tokio::task::spawn_blocking(|| report::disk_sync_ms(&std::env::temp_dir()))
        .await
        .ok()
        .and_then(Result::ok);
    let start = Instant::now();
    let window_start = start + cli.warmup;
    let window_end = window_start + cli.duration;
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(i, start, window_end)))
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    let before: Vec<Option<f64>> = processes.iter().map(|p| cpu_seconds(p.pid)).collect();
    let (host_before, client_before) = (report::host_ticks(), own_cpu_seconds());
    tokio::time::sleep_until(window_end.into()).await;
    let after: Vec<Option<f64>> = processes.iter().map(|p| cpu_seconds(p.pid)).collect();
    let (host_after, client_after) = (report::host_ticks(), own_cpu_seconds());
    let host = Host {
        steal: host_before
            .zip(host_after)
            .and_then(|(b, a)| report::steal_share(b, a)),
        client_cores: client_before
            .zip(client_after)
            .map(|(b, a)| (a - b) / cli.duration.as_secs_f64()),
        disk_sync_ms,
    };
    let cpu = processes
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(p, (b, a))| {
            let used = match (b, a) {
                (Some(b), Some(a)) => a - b,
                _ => f64::NAN,
            };
            (p.role.clone(), used)
        })
        .collect();
    let mut all = ClientEnd::default();
    for task in tasks {
        if let Ok(mut end) = task.await {
            all.samples.append(&mut end.samples);
            all.changed += end.changed;
            for what in end.errors {
                all.failed(what);
            }
        }
    }
    let from = window_start.duration_since(start);
    let to = window_end.duration_since(start);
    all.samples.retain(|s| s.end >= from && s.end <= to);
    (all, cpu, host)
}

/// Longest time a setup POST is retried while the bank answers that nothing was applied (a
/// leader being elected just after the testbed came up).
const SETUP_RETRY_FOR: Duration = Duration::from_secs(10);

/// The status and JSON body of a POST, or what went wrong. A 503 whose code says nothing was
/// applied (`no_leader`, `unavailable`, `overloaded`) is retried every 100 ms for up to
/// [`SETUP_RETRY_FOR`]; `outcome_unknown` is not (the command may have been applied).
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value), String> {
    let deadline = Instant::now() + SETUP_RETRY_FOR;
    loop {
        let response = client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status().as_u16();
        let answer = json_answer(response)
            .await
            .map_err(|e| format!("POST {url}: {status}, {e}"))?;
        let nothing_applied = status == 503
            && matches!(
                answer["code"].as_str(),
                Some("no_leader" | "unavailable" | "overloaded")
            );
        if !nothing_applied || Instant::now() >= deadline {
            return Ok((status, answer));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An answer's body, read up to [`MAX_ANSWER_BYTES`] (the clients' and the setup's alike).
async fn limited_body<B>(body: B) -> Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    Ok(http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await?
        .to_bytes())
}

/// The JSON of a setup or audit answer, read up to [`MAX_ANSWER_BYTES`] like the clients'.
async fn json_answer(response: reqwest::Response) -> Result<serde_json::Value, String> {
    let body = hyper::Response::<reqwest::Body>::from(response).into_body();
    let bytes = limited_body(body).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Opens `n` accounts with 1,000.00 each; their ids.
async fn open_accounts(url: &str, n: u32) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let url = url.to_owned();
    let opened = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (client, url, permit) = (client.clone(), url.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit.acquire().await;
            let (status, body) = post(&client, &format!("{url}/open_account"), json!({}))
                .await
                .map_err(anyhow::Error::msg)
                .context("opening an account")?;
            anyhow::ensure!(status == 200, "open_account answered {status}: {body}");
            let id = body["account_id"]
                .as_str()
                .context("no account_id")?
                .to_owned();
            let (status, body) = post(
                &client,
                &format!("{url}/deposit_money"),
                json!({"account_id": id, "amount": amount(OPENING_CENTS)}),
            )
            .await
            .map_err(anyhow::Error::msg)
            .context("depositing the opening balance")?;
            anyhow::ensure!(status == 200, "deposit_money answered {status}: {body}");
            Ok(id)
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??);
    }
    Ok(ids)
}

/// The bank's total over `ids`, in cents.
async fn bank_total(url: &str, ids: &[String]) -> anyhow::Result<i64> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let mut total = 0;
    for id in ids {
        let response = client
            .get(format!("{url}/check_account"))
            .query(&[("account_id", id)])
            .send()
            .await?
            .error_for_status()?;
        let body = json_answer(response).await.map_err(anyhow::Error::msg)?;
        total += testbed::ledger::cents(&body["balance"]).context("a balance")?;
    }
    Ok(total)
}

/// One client's HTTP/1.1 connection to the front door, in the style of `wrk`: a request is a
/// method, a path and a body written on a connection the client owns, and hyper's connection
/// state machine runs in the client's own task (no pool, no hand-off to a connection task and
/// back). The load generator shares the machine's cores with the cluster it measures, so every
/// cycle it spends is one the cluster does not get: with reqwest it took 0.37 of the two cores
/// at 64 clients. A connection that fails is dropped and the next request opens another.
struct BankConnection {
    /// `host:port` of the front door.
    authority: String,
    /// The `Host` header of every request.
    host: hyper::header::HeaderValue,
    open: Option<Open>,
}

/// An open connection: the handle that sends requests and the connection's state machine.
struct Open {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    driver: std::pin::Pin<
        Box<
            hyper::client::conn::http1::Connection<
                hyper_util::rt::TokioIo<tokio::net::TcpStream>,
                http_body_util::Full<bytes::Bytes>,
            >,
        >,
    >,
}

/// What a [`BankConnection`] sends.
struct Exchange<'a> {
    method: hyper::Method,
    /// Path and query.
    path: &'a str,
    /// A JSON body (POST).
    body: Option<Vec<u8>>,
}

impl BankConnection {
    /// A connection to the bank at `base` (`http://host:port`), opened by the first request.
    fn new(base: &str) -> Result<BankConnection, String> {
        let uri: hyper::Uri = base.parse().map_err(|e| format!("{base}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{base}: only http:// is supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{base}: no host"))?
            .as_str()
            .to_owned();
        let host =
            hyper::header::HeaderValue::from_str(&authority).map_err(|e| format!("{base}: {e}"))?;
        Ok(BankConnection {
            authority,
            host,
            open: None,
        })
    }

    async fn connect(&self) -> Result<Open, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let (sender, driver) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        Ok(Open {
            sender,
            driver: Box::pin(driver),
        })
    }

    /// The status and whole body of the answer to `exchange`, within [`REQUEST_TIMEOUT`], or
    /// what went wrong (and the connection is then dropped).
    async fn send(&mut self, exchange: Exchange<'_>) -> Result<(u16, bytes::Bytes), String> {
        let (method, path) = (exchange.method.clone(), exchange.path);
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.send_on_connection(exchange))
            .await
            .unwrap_or_else(|_| Err(format!("no answer in {REQUEST_TIMEOUT:?}")));
        if outcome.is_err() {
            self.open = None;
        }
        outcome.map_err(|e| format!("{method} {path}: {e}"))
    }

    async fn send_on_connection(
        &mut self,
        exchange: Exchange<'_>,
    ) -> Result<(u16, bytes::Bytes), String> {
        if self.open.as_ref().is_none_or(|o| o.sender.is_closed()) {
            self.open = Some(self.connect().await?);
        }
        let mut request = hyper::Request::new(http_body_util::Full::new(
            exchange.body.map(bytes::Bytes::from).unwrap_or_default(),
        ));
        *request.method_mut() = exchange.method;
        *request.uri_mut() = exchange.path.parse().map_err(|e| format!("{e}"))?;
        let post = request.method() == hyper::Method::POST;
        let headers = request.headers_mut();
        headers.insert(hyper::header::HOST, self.host.clone());
        if post {
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
        }
        let Some(Open { sender, driver }) = self.open.as_mut() else {
            return Err("not connected".to_owned());
        };
        let work = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let bytes = limited_body(body).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts.status.as_u16(), bytes))
        };
        let (outcome, ended) = {
            let mut work = std::pin::pin!(work);
            tokio::select! {
                biased;
                outcome = &mut work => (outcome, false),
                // The connection ended (the server closed it, or an error): an answer it read
                // before is still delivered, a request it did not send fails.
                _ = driver.as_mut() => (work.await, true),
            }
        };
        if ended {
            self.open = None;
        }
        outcome.map_err(|e| e.to_string())
    }

    /// The status of a POST of `body` (as JSON) to `path` when it is one of `expected`;
    /// otherwise an error naming the status and the answer's text, or what went wrong. No JSON
    /// tree is built and no answer parsed that is not an error.
    async fn post(
        &mut self,
        path: &str,
        body: &impl serde::Serialize,
        expected: &[u16],
    ) -> Result<u16, String> {
        let body = serde_json::to_vec(body).map_err(|e| format!("POST {path}: {e}"))?;
        let (status, answer) = self
            .send(Exchange {
                method: hyper::Method::POST,
                path,
                body: Some(body),
            })
            .await?;
        if expected.contains(&status) {
            Ok(status)
        } else {
            Err(format!(
                "POST {path}: {status} {}",
                String::from_utf8_lossy(&answer)
            ))
        }
    }
}

/// `{"account_id": ...}`.
#[derive(serde::Serialize)]
struct AccountRef<'a> {
    account_id: &'a str,
}

/// The body of `POST /move_money`.
#[derive(serde::Serialize)]
struct MoveBody<'a> {
    source: AccountRef<'a>,
    destination: AccountRef<'a>,
    amount: &'a str,
}

/// The body of `POST /deposit_money` and `POST /withdraw_money`.
#[derive(serde::Serialize)]
struct AmountBody<'a> {
    account_id: &'a str,
    amount: &'a str,
}

/// One operation of the bank's workload; mixed steps drawn from `roll` (0..100).
async fn bank_step(
    bank: &mut BankConnection,
    ids: &[String],
    workload: Workload,
    rng: &mut rand::rngs::StdRng,
) -> Outcome {
    let (from, to, cents) = pick(rng, ids.len());
    let roll = match workload {
        Workload::Transfers => 0,
        Workload::Mixed => rng.random_range(0..100),
    };
    let money = amount(cents);
    let amount = money.as_str();
    let (from, to) = (ids[from].as_str(), ids[to].as_str());
    match roll {
        // 409: insufficient funds, an answer the bank's rules call for.
        0..40 => {
            let body = MoveBody {
                source: AccountRef { account_id: from },
                destination: AccountRef { account_id: to },
                amount,
            };
            match bank.post("/move_money", &body, &[200, 409]).await {
                Ok(_) => Outcome::Done,
                Err(e) => Outcome::Error(e),
            }
        }
        40..65 => {
            let body = AmountBody {
                account_id: from,
                amount,
            };
            match bank.post("/deposit_money", &body, &[200]).await {
                Ok(_) => Outcome::Changed(cents),
                Err(e) => Outcome::Error(e),
            }
        }
        65..80 => {
            let body = AmountBody {
                account_id: from,
                amount,
            };
            match bank.post("/withdraw_money", &body, &[200, 409]).await {
                Ok(200) => Outcome::Changed(-cents),
                Ok(_) => Outcome::Done,
                Err(e) => Outcome::Error(e),
            }
        }
        _ => {
            // Account ids are UUIDs: nothing in them needs escaping in a query.
            let path = format!("/check_account?account_id={from}");
            let answer = bank
                .send(Exchange {
                    method: hyper::Method::GET,
                    path: &path,
                    body: None,
                })
                .await;
            match answer {
                Ok((200, _)) => Outcome::Done,
                Ok((status, answer)) => Outcome::Error(format!(
                    "GET {path}: {status} {}",
                    String::from_utf8_lossy(&answer)
                )),
                Err(e) => Outcome::Error(e),
            }
        }
    }
}

/// One run of `workload` on the testbed with `clients` clients.
pub async fn run_bank(
    cli: &Cli,
    testbed: &Testbed,
    system: System,
    workload: Workload,
    clients: u32,
    rate: Option<f64>,
) -> anyhow::Result<Run> {
    let accounts = match workload {
        Workload::Transfers => cli.accounts,
        Workload::Mixed => cli.mixed_accounts,
    };
    let ids = Arc::new(open_accounts(&testbed.url, accounts).await?);
    let opening = bank_total(&testbed.url, &ids).await?;
    let url: Arc<str> = testbed.url.as_str().into();
    let seed = cli.seed;
    let (all, cpu, host) = drive(cli, clients, &testbed.processes, |i, start, end| {
        let (ids, url) = (ids.clone(), url.clone());
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(i) << 32));
            let mut mine = ClientEnd::default();
            let mut bank = match BankConnection::new(&url) {
                Ok(bank) => bank,
                Err(e) => {
                    mine.failed(format!("the bank's address: {e}"));
                    return mine;
                }
            };
            let mut pace = Pace::new(rate);
            while Instant::now() < end {
                pace.wait().await;
                let began = Instant::now();
                let outcome = bank_step(&mut bank, &ids, workload, &mut rng).await;
                let mut sample = Sample::new(start, began, false);
                match outcome {
                    Outcome::Done => {}
                    Outcome::Changed(c) => mine.changed += c,
                    Outcome::Error(what) => {
                        sample.error = true;
                        mine.failed(what);
                    }
                }
                mine.samples.push(sample);
                if sample.error {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            mine
        }
    })
    .await;
    let closing = bank_total(&testbed.url, &ids).await?;
    // An error leaves a write's fate unknown: the total is then not checked exactly.
    let conserved = all
        .errors
        .is_empty()
        .then_some(closing == opening + all.changed);
    let mut run = report::summarize(
        system,
        workload,
        clients,
        rate,
        cli.duration,
        &all.samples,
        cpu,
    );
    host.record(&mut run);
    run.conserved = conserved;
    run.error_examples = all.errors;
    run.total_cents = Some(closing);
    run.leader = testbed.leader().await;
    Ok(run)
}

fn key(i: usize) -> String {
    format!("bench/account/{i:06}")
}

/// One transfer on etcd: read both keys, then write both if neither changed; retried from the
/// read on a conflict. The conflicts it met, or an error.
async fn etcd_transfer(
    kv: &mut etcd_client::KvClient,
    from: usize,
    to: usize,
    cents: i64,
) -> Result<u64, etcd_client::Error> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
    let (a, b) = (key(from), key(to));
    let mut conflicts = 0;
    loop {
        let read = kv
            .txn(Txn::new().and_then([TxnOp::get(a.clone(), None), TxnOp::get(b.clone(), None)]))
            .await?;
        let mut found = read.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                let cents: i64 = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (cents, kv.mod_revision())
            }),
            _ => None,
        });
        let (Some((balance_a, revision_a)), Some((balance_b, revision_b))) =
            (found.next().flatten(), found.next().flatten())
        else {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "{a} or {b} is missing"
            )));
        };
        if balance_a < cents {
            return Ok(conflicts);
        }
        let write = kv
            .txn(
                Txn::new()
                    .when([
                        Compare::mod_revision(a.clone(), CompareOp::Equal, revision_a),
                        Compare::mod_revision(b.clone(), CompareOp::Equal, revision_b),
                    ])
                    .and_then([
                        TxnOp::put(a.clone(), (balance_a - cents).to_string(), None),
                        TxnOp::put(b.clone(), (balance_b + cents).to_string(), None),
                    ]),
            )
            .await?;
        if write.succeeded() {
            return Ok(conflicts);
        }
        conflicts += 1;
    }
}

/// etcd's total over the accounts, in cents.
async fn etcd_total(kv: &mut etcd_client::KvClient, accounts: u32) -> anyhow::Result<i64> {
    let all = kv
        .get(
            "bench/account/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    anyhow::ensure!(
        all.kvs().len() == accounts as usize,
        "{} accounts in etcd, {accounts} expected",
        all.kvs().len()
    );
    all.kvs()
        .iter()
        .map(|kv| {
            std::str::from_utf8(kv.value())
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .context("a balance that is not a number")
        })
        .sum()
}

/// One run of transfers on etcd with `clients` clients (all on one gRPC connection to the
/// leader, as etcd's own client shares one).
pub async fn run_etcd(
    cli: &Cli,
    etcd: &Etcd,
    clients: u32,
    rate: Option<f64>,
) -> anyhow::Result<Run> {
    let leader = etcd.leader_endpoint().await?;
    let client = etcd_client::Client::connect([&leader], None).await?;
    let mut kv = client.kv_client();
    for i in 0..cli.accounts as usize {
        kv.put(key(i), OPENING_CENTS.to_string(), None).await?;
    }
    let opening = etcd_total(&mut kv, cli.accounts).await?;
    let accounts = cli.accounts as usize;
    let seed = cli.seed;
    let (all, cpu, host) = drive(cli, clients, &etcd.processes, |i, start, end| {
        let mut kv = kv.clone();
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (u64::from(i) << 32));
            let mut mine = ClientEnd::default();
            let mut pace = Pace::new(rate);
            while Instant::now() < end {
                pace.wait().await;
                let (from, to, cents) = pick(&mut rng, accounts);
                let began = Instant::now();
                let outcome =
                    tokio::time::timeout(REQUEST_TIMEOUT, etcd_transfer(&mut kv, from, to, cents))
                        .await;
                let mut sample = Sample::new(start, began, false);
                match outcome {
                    Ok(Ok(conflicts)) => {
                        sample.retries = u32::try_from(conflicts).unwrap_or(u32::MAX)
                    }
                    Ok(Err(e)) => {
                        sample.error = true;
                        mine.failed(format!("transfer: {e}"));
                    }
                    Err(_) => {
                        sample.error = true;
                        mine.failed("transfer: no answer in 10 s".to_owned());
                    }
                }
                mine.samples.push(sample);
                if sample.error {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            mine
        }
    })
    .await;
    let closing = etcd_total(&mut kv, cli.accounts).await?;
    let mut run = report::summarize(
        System::Etcd,
        Workload::Transfers,
        clients,
        rate,
        cli.duration,
        &all.samples,
        cpu,
    );
    host.record(&mut run);
    run.error_examples = all.errors;
    // A transfer is both writes or neither whatever the errors: the total must hold exactly.
    run.conserved = Some(closing == opening);
    run.total_cents = Some(closing);
    run.version = Some(etcd.version.clone());
    // The next run starts from fresh balances.
    kv.delete(
        "bench/account/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// How a test server treats each connection.
    #[derive(Clone, Copy)]
    enum Serve {
        /// Answers every request with this status and text, keeping the connection open.
        KeepAlive(u16, &'static str),
        /// Answers one request with 200 and `Connection: close`, then closes.
        CloseAfterOne,
        /// The first connection reads its request and hangs up without an answer; later ones
        /// are kept alive and answered 200.
        HangUpFirst,
        /// Answers 200 with a body of `MAX_ANSWER_BYTES + 1` bytes.
        Oversized,
        /// Answers its first two requests 503 `no_leader`, then 200 `{}`.
        NoLeaderTwice,
    }

    /// Reads one request (head and `Content-Length` body); false at the end of the stream.
    async fn read_request(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> bool {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buffer.len() >= end + 4 + length {
                    buffer.drain(..end + 4 + length);
                    return true;
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A server on a free port; its address and the connections it accepted.
    async fn server(serve: Serve) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut served = 0;
                    while read_request(&mut stream, &mut buffer).await {
                        served += 1;
                        let answer = match serve {
                            Serve::KeepAlive(status, text) => format!(
                                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}",
                                text.len()
                            ),
                            Serve::CloseAfterOne => {
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                                    .to_owned()
                            }
                            Serve::HangUpFirst if n == 0 => return,
                            Serve::HangUpFirst => {
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned()
                            }
                            Serve::NoLeaderTwice if served <= 2 => {
                                let body = r#"{"code":"no_leader","error":"no leader"}"#;
                                format!(
                                    "HTTP/1.1 503 X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                )
                            }
                            Serve::NoLeaderTwice => {
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_owned()
                            }
                            Serve::Oversized => {
                                let n = MAX_ANSWER_BYTES + 1;
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n{}", "x".repeat(n))
                            }
                        };
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if matches!(serve, Serve::CloseAfterOne) {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    fn deposit() -> AmountBody<'static> {
        AmountBody {
            account_id: "a",
            amount: "1.00",
        }
    }

    #[tokio::test]
    async fn a_kept_alive_connection_carries_every_request() {
        let (url, accepted) = server(Serve::KeepAlive(200, "{}")).await;
        let mut bank = BankConnection::new(&url).unwrap();
        for _ in 0..5 {
            assert_eq!(
                bank.post("/deposit_money", &deposit(), &[200]).await,
                Ok(200)
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_opened_again() {
        let (url, accepted) = server(Serve::CloseAfterOne).await;
        let mut bank = BankConnection::new(&url).unwrap();
        for _ in 0..3 {
            assert_eq!(
                bank.post("/deposit_money", &deposit(), &[200]).await,
                Ok(200)
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_lost_answer_is_an_error_and_the_next_request_reconnects() {
        let (url, accepted) = server(Serve::HangUpFirst).await;
        let mut bank = BankConnection::new(&url).unwrap();
        let lost = bank.post("/deposit_money", &deposit(), &[200]).await;
        assert!(
            lost.as_ref()
                .is_err_and(|e| e.starts_with("POST /deposit_money")),
            "{lost:?}"
        );
        assert_eq!(
            bank.post("/deposit_money", &deposit(), &[200]).await,
            Ok(200)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unexpected_status_is_an_error_with_the_answer() {
        let (url, _) = server(Serve::KeepAlive(500, "boom")).await;
        let mut bank = BankConnection::new(&url).unwrap();
        let refused = bank.post("/move_money", &deposit(), &[200, 409]).await;
        assert_eq!(refused, Err("POST /move_money: 500 boom".to_owned()));
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_an_error() {
        let (url, _) = server(Serve::Oversized).await;
        let mut bank = BankConnection::new(&url).unwrap();
        let answer = bank.post("/deposit_money", &deposit(), &[200]).await;
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("length limit")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_setup_answer_over_the_limit_is_an_error() {
        let (url, _) = server(Serve::Oversized).await;
        let client = reqwest::Client::new();
        let answer = post(&client, &format!("{url}/open_account"), json!({})).await;
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("length limit")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn setup_posts_wait_out_an_election() {
        let (url, _) = server(Serve::NoLeaderTwice).await;
        let client = reqwest::Client::new();
        let (status, _) = post(&client, &format!("{url}/open_account"), json!({}))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }

    #[test]
    fn only_plain_http_addresses_are_taken() {
        assert!(BankConnection::new("https://127.0.0.1:1").is_err());
        assert!(BankConnection::new("not a url").is_err());
        assert!(BankConnection::new("http://127.0.0.1:8080").is_ok());
    }
}
