//! A testbed cluster of real processes for end-to-end tests, and a retrying bank client.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use plumbing::DieWithParent as _;
use testbed::cli::UpArgs;
use testbed::cluster::{ClusterHandle, ClusterSpec, ClusterThread};

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub const TOKEN: &str = "e2e-test-token-5f1c";

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Testbed {
    _serial: std::sync::MutexGuard<'static, ()>,
    runner: Runner,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// What `testbed up` printed up to the moment it was ready (the binary runner only).
    pub printed: Vec<String>,
}

enum Runner {
    /// The cluster API, in this process (on a thread of its own).
    Api(ClusterThread),
    /// The real `testbed up` binary.
    Binary(std::process::Child),
}

impl Testbed {
    /// A 3-node cluster in `mode` with `testbed up`'s `extra` arguments, through the cluster
    /// API; returns once it is ready.
    pub fn up(mode: &str, extra: &[&str]) -> Testbed {
        Testbed::up_with_env(mode, extra, &[])
    }

    /// [`Testbed::up`] with extra environment variables for every process.
    pub fn up_with_env(mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Testbed {
        Testbed::up_in(mode, extra, env, None)
    }

    /// [`Testbed::up_with_env`] with the cluster's data in `data_dir` (default: a temp dir).
    pub fn up_in(
        mode: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        data_dir: Option<&std::path::Path>,
    ) -> Testbed {
        let serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let mut args = up_args(mode, extra);
        args.data_dir = Some(data_dir.map_or_else(|| dir.path().join("data"), |d| d.to_owned()));
        let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_testbed"));
        let mut spec = ClusterSpec::from_up_args(&args, exe, Some(TOKEN.to_owned())).unwrap();
        spec.env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
        spec.env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let cluster = ClusterThread::start(spec, Duration::from_secs(90)).expect("a ready cluster");
        Testbed {
            _serial: serial,
            url: cluster.handle().front_door().to_owned(),
            runner: Runner::Api(cluster),
            dir,
            client: client(),
            printed: Vec::new(),
        }
    }

    /// The real `testbed up` binary with `extra` arguments and `env`; returns once its
    /// `cluster.json` says `"ready": true`, with what it printed until then.
    pub fn up_binary(mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Testbed {
        let serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("testbed.out");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
            .die_with_parent()
            .args([
                "up",
                "--port",
                "0",
                "--nodes",
                "3",
                "--mode",
                mode,
                "--data-dir",
            ])
            .arg(&data)
            .args(with_or_without_prober(extra))
            .env("BANK_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting testbed");
        let deadline = Instant::now() + Duration::from_secs(120);
        let info = loop {
            let info = std::fs::read(data.join("cluster.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
            if let Some(info) = info.filter(|i| i["ready"] == json!(true)) {
                break info;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "testbed up exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "testbed up was not ready in 120 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let printed = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        Testbed {
            _serial: serial,
            url: info["front_door"].as_str().unwrap().to_owned(),
            runner: Runner::Binary(child),
            dir,
            client: client(),
            printed,
        }
    }

    /// Typed access to the cluster (the cluster API runner only).
    pub fn handle(&self) -> &ClusterHandle {
        match &self.runner {
            Runner::Api(cluster) => cluster.handle(),
            Runner::Binary(_) => panic!("a `testbed up` process has no in-process handle"),
        }
    }

    pub async fn cluster(&self) -> Value {
        self.client
            .get(format!("{}/_testbed/cluster", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn node_urls(&self) -> Vec<String> {
        let cluster = self.cluster().await;
        cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["public_url"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn admin(&self, node: u64, action: &str) {
        let response = self
            .client
            .post(format!("{}/_testbed/nodes/{node}/{action}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{action} node {node}: {}",
            response.status()
        );
    }

    /// kill -9 both processes of a node (the testbed restarts them unless --no-restart).
    pub async fn kill_9(&self, node: u64) {
        let cluster = self.cluster().await;
        let entry = &cluster["nodes"][node as usize];
        for key in ["node_pid", "paxos_pid"] {
            let pid = entry[key].as_u64().unwrap();
            if pid > 0 {
                // SAFETY: a signal to a process of our own test cluster.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }

    /// Waits until the testbed reports a leader other than `not` (leader mode).
    pub async fn wait_leader(&self, not: Option<u64>, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        loop {
            let cluster = self.cluster().await;
            if let Some(leader) = cluster["leader"].as_u64()
                && Some(leader) != not
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no new leader within {limit:?}: {cluster}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let Runner::Binary(child) = &mut self.runner else {
            // The cluster thread stops its cluster when dropped.
            return;
        };
        // SIGTERM: the testbed stops its children; the kernel kills them too if it dies.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One cluster at a time: seven processes each on a 2-core machine, and a test's timing should
/// not depend on how many other clusters the harness runs beside it.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `testbed up --nodes 3 --mode <mode> --port 0 <extra>`, parsed as the binary parses it;
/// without the prober unless `extra` says `--with-prober`.
fn up_args(mode: &str, extra: &[&str]) -> UpArgs {
    use clap::Parser as _;
    let args = [
        "testbed", "up", "--nodes", "3", "--port", "0", "--mode", mode,
    ];
    let extra = with_or_without_prober(extra);
    let cli = testbed::cli::Cli::try_parse_from(args.iter().chain(&extra)).unwrap();
    let testbed::cli::Command::Up(up) = cli.command else {
        panic!("up");
    };
    up
}

/// Tests run their clusters without the prober (its probes write to the log) unless they ask
/// for it with the test-only word `--with-prober`.
fn with_or_without_prober<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let with = extra.contains(&"--with-prober");
    let mut args: Vec<&str> = extra
        .iter()
        .copied()
        .filter(|a| *a != "--with-prober")
        .collect();
    if !with {
        args.push("--no-prober");
    }
    args
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// `GET url` with the cluster token: a process's `/metrics` text.
pub async fn scrape(url: &str) -> String {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.text().await.unwrap()
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The body's text, for reading money exactly.
    pub text: String,
}

impl Answer {
    /// The money in `field`, in cents, read from the answer's exact text (never a float).
    pub fn cents(&self, field: &str) -> i64 {
        cents_in(self.text.as_bytes(), field)
    }
}

/// Sends a request; on 503 or a connection error retries with the same idempotency key until
/// `deadline`. `None`: never answered (outcome unknown).
pub async fn send_retrying(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    key: Option<&str>,
    deadline: Instant,
) -> Option<Answer> {
    loop {
        let mut request = client.request(method.clone(), url);
        if let Some(body) = &body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        match request.send().await {
            Ok(response) if response.status().as_u16() != 503 => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                return Some(Answer { status, body, text });
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn open_account(client: &reqwest::Client, base: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let key = uuid_key();
    let answer = send_retrying(
        client,
        reqwest::Method::POST,
        &format!("{base}/open_account"),
        None,
        Some(&key),
        deadline,
    )
    .await
    .expect("open_account answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body["account_id"].as_str().unwrap().to_owned()
}

pub async fn deposit(client: &reqwest::Client, base: &str, account: &str, amount: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    let key = uuid_key();
    let body = json!({"account_id": account, "amount": amount});
    send_retrying(
        client,
        reqwest::Method::POST,
        &format!("{base}/deposit_money"),
        Some(body),
        Some(&key),
        deadline,
    )
    .await
    .expect("deposit answered")
}

pub async fn balance(client: &reqwest::Client, base: &str, account: &str, local: bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    let consistency = if local { "&consistency=local" } else { "" };
    let url = format!("{base}/check_account?account_id={account}{consistency}");
    send_retrying(client, reqwest::Method::GET, &url, None, None, deadline)
        .await
        .expect("check answered")
}

pub fn uuid_key() -> String {
    format!("k-{}", uuid::Uuid::new_v4().simple())
}

/// The money in `field` of a JSON body, in cents, parsed from its exact text.
pub fn cents_in(body: &[u8], field: &str) -> i64 {
    let fields: std::collections::HashMap<String, &serde_json::value::RawValue> =
        serde_json::from_slice(body).unwrap_or_else(|err| panic!("{err}: {body:?}"));
    let raw = fields
        .get(field)
        .unwrap_or_else(|| panic!("no {field} in {body:?}"));
    node::money::Money::parse_balance(raw.get())
        .unwrap()
        .cents()
}

/// Polls every node's local replica until all of them report the same balances for `accounts`.
pub async fn converged_balances(tb: &Testbed, accounts: &[String], limit: Duration) -> Vec<i64> {
    let deadline = Instant::now() + limit;
    let urls = tb.node_urls().await;
    loop {
        let mut views = Vec::new();
        for url in &urls {
            let mut view = Vec::new();
            let bank = node::client::BankClient::with_http(tb.client.clone(), url);
            for account in accounts {
                let id = account.parse().expect("an account id");
                let local = bank.balance(id, node::client::Consistency::Local).await;
                view.push(local.ok().map(|balance| balance.cents()));
            }
            views.push(view);
        }
        if views.iter().all(|v| v.iter().all(Option::is_some))
            && views.windows(2).all(|w| w[0] == w[1])
        {
            return views[0].iter().map(|v| v.unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge within {limit:?}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Deposit { account: usize, cents: i64 },
    Move { from: usize, to: usize, cents: i64 },
}

pub struct Record {
    op: Op,
    key: String,
    answer: Option<Answer>,
}

const ACCOUNTS: usize = 6;
const START_CENTS: i64 = 100_000;

/// Eight writers deposit and move money with idempotency keys while a node is killed with
/// `kill -9` (the leader in leader mode, node 1 in leaderless mode); afterwards every replica
/// holds exactly what the acknowledged operations imply, and retries return their first answers.
pub async fn kill_during_load(tb: Testbed, mode: &str) {
    let mode = mode.to_owned();
    let victim = std::sync::OnceLock::new();
    let faults = async {
        let killed = if mode == "leader" {
            tb.wait_leader(None, Duration::from_secs(5)).await
        } else {
            1
        };
        victim.set(killed).unwrap();
        tb.kill_9(killed).await;
        if mode == "leader" {
            // A leader again (possibly the victim itself, restarted by the testbed, re-elected).
            tokio::time::sleep(Duration::from_millis(200)).await;
            tb.wait_leader(None, Duration::from_secs(10)).await;
        }
    };
    check_under_load(&tb, faults, 2).await;
    if mode == "leader" {
        // The election is in the logs with its cause, as plain text (the log files are what
        // an operator greps after an unexpected one): a survivor's names the silent leader and
        // for how long; or the restarted victim, back before the survivors' timeout, took the
        // lead back.
        let victim = *victim.get().unwrap();
        let log_of = |n: u64| {
            let path = tb.dir.path().join(format!("data/node-{n}/paxos.log"));
            std::fs::read_to_string(&path).unwrap_or_default()
        };
        let logs: Vec<(u64, String)> = (0..3).map(|n| (n, log_of(n))).collect();
        let elections: Vec<(u64, &str)> = logs
            .iter()
            .flat_map(|(n, log)| log.lines().map(move |line| (*n, line)))
            .filter(|(_, line)| line.contains("starting an election"))
            .collect();
        assert!(
            elections.iter().any(|(n, line)| {
                (*n != victim
                    && line.contains("no heartbeat from the lane's holder")
                    && line.contains(&format!("holder={victim}"))
                    && line.contains("silent_ms="))
                    || (*n == victim && line.contains("take back the lead"))
            }),
            "the election is logged with its cause: {logs:?}"
        );
        assert!(
            elections.iter().all(|(_, line)| !line.contains('\x1b')),
            "plain text in a log file: {elections:?}"
        );
    }
}

/// Runs `faults` while eight writers deposit and move money with idempotency keys, one more
/// deposits a cent at a time into a counter account, and a reader reads the counter through
/// every node in turn. Then checks what the bank promises: every replica holds exactly what the
/// acknowledged operations imply (no lost or doubled write, no negative balance, replicas
/// identical), a retry of an acknowledged write returns its first answer and applies nothing,
/// and no linearizable read of the counter showed less than the deposits acknowledged before
/// the read began. `min_restarts`: processes the testbed must have restarted by then.
pub async fn check_under_load(
    tb: &Testbed,
    faults: impl std::future::Future<Output = ()>,
    min_restarts: u64,
) {
    let client = tb.client.clone();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let id = open_account(&client, &tb.url).await;
        assert_eq!(deposit(&client, &tb.url, &id, "1000").await.status, 200);
        accounts.push(id);
    }
    let accounts = Arc::new(accounts);
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (client, url, accounts, records, stop) = (
            client.clone(),
            tb.url.clone(),
            accounts.clone(),
            records.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let r = (w * 7919 + n * 104_729) as usize;
                let op = if n.is_multiple_of(2) {
                    Op::Deposit { account: r % ACCOUNTS, cents: (r % 500) as i64 + 1 }
                } else {
                    let from = r % ACCOUNTS;
                    Op::Move { from, to: (from + 1 + r % (ACCOUNTS - 1)) % ACCOUNTS, cents: (r % 300) as i64 + 1 }
                };
                let (path, body) = match &op {
                    Op::Deposit { account, cents } => ("deposit_money", json!({"account_id": accounts[*account], "amount": format!("{}.{:02}", cents / 100, cents % 100)})),
                    Op::Move { from, to, cents } => ("move_money", json!({"source": {"account_id": accounts[*from]}, "destination": {"account_id": accounts[*to]}, "amount": format!("{}.{:02}", cents / 100, cents % 100)})),
                };
                let key = format!("w{w}-{n}-{}", uuid_key());
                let deadline = Instant::now() + Duration::from_secs(15);
                let answer = send_retrying(&client, reqwest::Method::POST, &format!("{url}/{path}"), Some(body), Some(&key), deadline).await;
                records.lock().unwrap().push(Record { op, key, answer });
            }
        }));
    }
    let counter = open_account(&client, &tb.url).await;
    let (reads, counter_deposits, reads_so_far) = linearizable_counter(tb, &counter, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    faults.await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A slow store on a busy machine (the Firestore emulator) may need longer for enough reads
    // to mean anything: the load goes on until there are, for at most 30 s more.
    let enough = Instant::now() + Duration::from_secs(30);
    while reads_so_far.load(std::sync::atomic::Ordering::SeqCst) <= MIN_COUNTER_READS
        && Instant::now() < enough
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    let (reads, stale) = reads.await.unwrap();
    let counter_acknowledged = counter_deposits.await.unwrap();
    let records = Arc::try_unwrap(records).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "{} operations; counter: {counter_acknowledged} deposits acknowledged, {reads} linearizable reads through every node",
        records.len()
    );
    assert_eq!(
        stale,
        Vec::<String>::new(),
        "linearizable reads that missed acknowledged deposits"
    );
    assert!(
        reads > MIN_COUNTER_READS,
        "too few counter reads to mean anything: {reads}"
    );

    // What the acknowledged operations imply.
    let mut expected = vec![START_CENTS; ACCOUNTS];
    let mut unknown_deposits = 0;
    for record in &records {
        match (&record.op, &record.answer) {
            (Op::Deposit { account, cents }, Some(a)) if a.status == 200 => {
                expected[*account] += cents
            }
            (Op::Move { from, to, cents }, Some(a)) if a.status == 200 => {
                expected[*from] -= cents;
                expected[*to] += cents;
            }
            (_, Some(a)) => assert_eq!(a.status, 409, "unexpected answer {a:?}"),
            (_, None) => unknown_deposits += 1,
        }
    }
    assert_eq!(
        unknown_deposits, 0,
        "every operation got an answer within its retry deadline"
    );
    let acknowledged = records
        .iter()
        .filter(|r| r.answer.as_ref().is_some_and(|a| a.status == 200))
        .count();
    assert!(
        acknowledged > 50,
        "too little traffic to mean anything: {acknowledged}"
    );

    // Every replica (the killed one restarted and caught up) holds exactly that.
    let balances = converged_balances(tb, &accounts, Duration::from_secs(30)).await;
    assert_eq!(
        balances, expected,
        "replicas differ from what the acknowledged operations imply"
    );
    assert!(balances.iter().all(|b| *b >= 0));
    // Exactly once: a retry of an acknowledged write returns its first answer, applies nothing.
    for record in records
        .iter()
        .filter(|r| r.answer.as_ref().is_some_and(|a| a.status == 200))
        .take(40)
    {
        let (path, body) = match &record.op {
            Op::Deposit { account, cents } => (
                "deposit_money",
                json!({"account_id": accounts[*account], "amount": format!("{}.{:02}", cents / 100, cents % 100)}),
            ),
            Op::Move { from, to, cents } => (
                "move_money",
                json!({"source": {"account_id": accounts[*from]}, "destination": {"account_id": accounts[*to]}, "amount": format!("{}.{:02}", cents / 100, cents % 100)}),
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = send_retrying(
            &client,
            reqwest::Method::POST,
            &format!("{}/{path}", tb.url),
            Some(body),
            Some(&record.key),
            deadline,
        )
        .await;
        assert_eq!(
            again.as_ref(),
            record.answer.as_ref(),
            "retry of {} changed its answer",
            record.key
        );
    }
    assert_eq!(
        converged_balances(tb, &accounts, Duration::from_secs(10)).await,
        expected
    );
    let cluster = tb.cluster().await;
    let restarts: u64 = cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_restarts"].as_u64().unwrap() + n["paxos_restarts"].as_u64().unwrap())
        .sum();
    assert!(
        restarts >= min_restarts,
        "the testbed restarted the killed processes: {cluster}"
    );
    // The counter holds every acknowledged deposit once.
    let counter =
        converged_balances(tb, std::slice::from_ref(&counter), Duration::from_secs(30)).await;
    assert_eq!(counter, [counter_acknowledged as i64]);
}

/// Counter reads a load must have made for its linearizability check to mean anything.
const MIN_COUNTER_READS: u64 = 10;

/// The reader (its reads and the stale ones), the writer (deposits acknowledged), and the reads so
/// far of [`linearizable_counter`].
type CounterLoad = (
    tokio::task::JoinHandle<(u64, Vec<String>)>,
    tokio::task::JoinHandle<u64>,
    Arc<std::sync::atomic::AtomicU64>,
);

/// A writer that deposits 0.01 at a time into `counter` through the front door (retrying each
/// with its key until answered), and a reader that reads `counter` linearizably through every
/// node in turn, until `stop`: a read that began after `n` deposits were acknowledged must show
/// at least `n` cents. Returns the reader (reads made and the stale ones), the writer (deposits
/// acknowledged) and the reads so far (while it runs).
fn linearizable_counter(
    tb: &Testbed,
    counter: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> CounterLoad {
    use std::sync::atomic::{AtomicU64, Ordering};
    let acknowledged = Arc::new(AtomicU64::new(0));
    let reads_so_far = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, url, counter, stop, acknowledged) = (
            tb.client.clone(),
            tb.url.clone(),
            counter.to_owned(),
            stop.clone(),
            acknowledged.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let key = uuid_key();
                let body = json!({"account_id": counter, "amount": "0.01"});
                let deadline = Instant::now() + Duration::from_secs(30);
                let answer = send_retrying(
                    &client,
                    reqwest::Method::POST,
                    &format!("{url}/deposit_money"),
                    Some(body),
                    Some(&key),
                    deadline,
                )
                .await;
                let answer = answer.expect("a counter deposit got no answer within 30 s");
                assert_eq!(answer.status, 200, "{answer:?}");
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            acknowledged.load(Ordering::SeqCst)
        })
    };
    let reader = {
        let (client, front, counter) = (tb.client.clone(), tb.url.clone(), counter.to_owned());
        let reads_so_far = reads_so_far.clone();
        tokio::spawn(async move {
            let (mut reads, mut stale) = (0u64, Vec::new());
            let mut turn = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let urls: Vec<String> =
                    match client.get(format!("{front}/_testbed/cluster")).send().await {
                        Ok(reply) => match reply.json::<Value>().await {
                            Ok(cluster) => cluster["nodes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|n| n["public_url"].as_str().map(str::to_owned))
                                .collect(),
                            Err(_) => Vec::new(),
                        },
                        Err(_) => Vec::new(),
                    };
                if urls.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                turn += 1;
                let url = &urls[turn % urls.len()];
                let before = acknowledged.load(Ordering::SeqCst);
                let read = client
                    .get(format!("{url}/check_account?account_id={counter}"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                // A node that is down, paused or without a leader does not answer 200: no read.
                if let Ok(reply) = read
                    && reply.status().as_u16() == 200
                {
                    let text = reply.text().await.unwrap_or_default();
                    let cents = cents_in(text.as_bytes(), "balance");
                    reads += 1;
                    reads_so_far.store(reads, Ordering::SeqCst);
                    if cents < before as i64 {
                        stale.push(format!(
                            "{url}: read {cents} cents after {before} acknowledged deposits"
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (reads, stale)
        })
    };
    (reader, writer, reads_so_far)
}
