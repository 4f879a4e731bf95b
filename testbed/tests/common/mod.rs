//! A testbed cluster of real processes for end-to-end tests, and a retrying bank client.
#![allow(dead_code)]

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const TOKEN: &str = "e2e-test-token-5f1c";

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Testbed {
    _serial: std::sync::MutexGuard<'static, ()>,
    child: std::process::Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    /// What `testbed up` printed up to its `ready` line.
    pub printed: Vec<String>,
}

impl Testbed {
    /// `testbed up` with `extra` arguments; returns once it printed `ready`.
    pub fn up(mode: &str, extra: &[&str]) -> Testbed {
        Testbed::up_with_env(mode, extra, &[])
    }

    /// [`Testbed::up`] with extra environment variables for every process.
    pub fn up_with_env(mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Testbed {
        // One cluster at a time: seven processes each on a 2-core machine, and a test's timing
        // should not depend on how many other clusters the harness runs beside it.
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"));
        // If this test process dies abruptly, the kernel stops its cluster too.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
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
            .arg(dir.path().join("data"))
            .args(extra)
            .env("BANK_CLUSTER_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting testbed");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut url = None;
        let mut printed = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            printed.push(line.clone());
            if let Some(rest) = line.strip_prefix("front door: ") {
                url = Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap()
                        .trim_end_matches('/')
                        .to_owned(),
                );
            }
            if line.starts_with("ready") {
                break;
            }
            assert!(
                !line.starts_with("not ready"),
                "testbed did not become ready"
            );
        }
        std::thread::spawn(move || for _ in lines {});
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Testbed {
            _serial: serial,
            child,
            url: url.expect("front door line"),
            dir,
            client,
            printed,
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
        // SIGTERM: the testbed stops its children; the kernel kills them too if it dies.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
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
                let body = response.json().await.unwrap_or(Value::Null);
                return Some(Answer { status, body });
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

pub fn cents(value: &Value) -> i64 {
    match value {
        Value::Number(n) => (n.as_f64().unwrap() * 100.0).round() as i64,
        other => panic!("not a number: {other}"),
    }
}

/// Polls every node's local replica until all of them report the same balances for `accounts`.
pub async fn converged_balances(tb: &Testbed, accounts: &[String], limit: Duration) -> Vec<i64> {
    let deadline = Instant::now() + limit;
    let urls = tb.node_urls().await;
    loop {
        let mut views = Vec::new();
        for url in &urls {
            let mut view = Vec::new();
            for account in accounts {
                let response = tb
                    .client
                    .get(format!(
                        "{url}/check_account?account_id={account}&consistency=local"
                    ))
                    .send()
                    .await;
                let value = match response {
                    Ok(r) if r.status().is_success() => {
                        r.json::<Value>().await.ok().map(|b| cents(&b["balance"]))
                    }
                    _ => None,
                };
                view.push(value);
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
