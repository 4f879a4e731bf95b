//! End to end: real `node` and `paxos` processes on 127.0.0.1, started through the cluster API
//! (`testbed::cluster`; the `--prometheus` test runs the real `testbed up`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

async fn serves_the_whole_api(mode: &str) {
    let tb = Testbed::up(mode, &[]);
    let client = &tb.client;
    let mut entry_points = vec![tb.url.clone()];
    entry_points.extend(tb.node_urls().await);
    for (i, base) in entry_points.iter().enumerate() {
        let a = open_account(client, base).await;
        let b = open_account(client, base).await;
        let answer = deposit(client, base, &a, "10.50").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body["result"], "Money added successfully.");
        let deadline = Instant::now() + Duration::from_secs(20);
        let withdraw = json!({"account_id": a, "amount": 0.5});
        let answer = send_retrying(
            client,
            reqwest::Method::POST,
            &format!("{base}/withdraw_money"),
            Some(withdraw),
            Some(&uuid_key()),
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(
            (answer.status, &answer.body["balance"]),
            (200, &json!(10)),
            "{answer:?}"
        );
        let mv = json!({"source": {"account_id": a}, "destination": {"account_id": b}, "amount": "2.25"});
        let answer = send_retrying(
            client,
            reqwest::Method::POST,
            &format!("{base}/move_money"),
            Some(mv),
            Some(&uuid_key()),
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body["result"], "Money moved successfully.");
        // Read through another entry point: linearizable by default.
        let other = &entry_points[(i + 1) % entry_points.len()];
        assert_eq!(
            balance(client, other, &a, false).await.body,
            json!({"balance": 7.75})
        );
        assert_eq!(
            balance(client, other, &b, false).await.body,
            json!({"balance": 2.25})
        );
        // Business errors come back through forwarding unchanged.
        let too_much = json!({"account_id": b, "amount": 100});
        let answer = send_retrying(
            client,
            reqwest::Method::POST,
            &format!("{base}/withdraw_money"),
            Some(too_much),
            None,
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(
            (answer.status, &answer.body["code"]),
            (409, &json!("insufficient_funds"))
        );
        let ghost = uuid::Uuid::new_v4();
        let answer = balance(client, base, &ghost.to_string(), false).await;
        assert_eq!(
            (answer.status, &answer.body["result"]),
            (404, &json!("Account not found."))
        );
    }
    let page = client
        .get(format!("{}/", tb.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<span id=\"account-count\">8</span>"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_mode_serves_the_api_through_any_node_and_the_front_door() {
    serves_the_whole_api("leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_mode_serves_the_api_through_any_node_and_the_front_door() {
    serves_the_whole_api("leaderless").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_mode_survives_kill_9_of_the_leader_without_losing_or_duplicating_writes() {
    kill_during_load(Testbed::up("leader", &[]), "leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_mode_survives_kill_9_of_a_node_without_losing_or_duplicating_writes() {
    kill_during_load(Testbed::up("leaderless", &[]), "leaderless").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_wiped_nodes_catch_up_by_snapshot_and_serve() {
    let tb = Testbed::up("leader", &["--compact-every", "20"]);
    let client = &tb.client;
    let account = open_account(client, &tb.url).await;
    let leader = tb.wait_leader(None, Duration::from_secs(5)).await;
    let lagging = (leader + 1) % 3;
    tb.admin(lagging, "stop").await;
    for _ in 0..60 {
        assert_eq!(deposit(client, &tb.url, &account, "1").await.status, 200);
    }
    tb.admin(lagging, "start").await;
    let balances =
        converged_balances(&tb, std::slice::from_ref(&account), Duration::from_secs(30)).await;
    assert_eq!(balances, vec![6_000]);
    // It serves again, including writes through it.
    let lagging_url = &tb.node_urls().await[lagging as usize];
    assert_eq!(
        deposit(client, lagging_url, &account, "1").await.status,
        200
    );
    assert_eq!(
        balance(client, lagging_url, &account, false).await.body,
        json!({"balance": 61})
    );
    // Every replica compacted: its snapshot is one file beside its acceptor database.
    for node in 0..3 {
        let folder = tb
            .dir
            .path()
            .join(format!("data/node-{node}/paxos/paxos.snapshots"));
        let files: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            files.len() == 1 && files[0].ends_with(".snapshot"),
            "node {node}: {files:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_majority_fails_fast_with_503_and_recovers() {
    let tb = Testbed::up("leader", &["--no-restart"]);
    let client = &tb.client;
    let account = open_account(client, &tb.url).await;
    let leader = tb.wait_leader(None, Duration::from_secs(5)).await;
    let others: Vec<u64> = (0..3).filter(|n| *n != leader).collect();
    for n in &others {
        tb.admin(*n, "stop").await;
    }
    let started = Instant::now();
    let response = client
        .post(format!("{}/deposit_money", tb.url))
        .timeout(Duration::from_secs(30))
        .json(&json!({"account_id": account, "amount": 1}))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        response.status().as_u16(),
        503,
        "a write without a majority must fail"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["code"].is_string() && body["error"].is_string(),
        "{body}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "it must not hang: {waited:?}"
    );
    for n in &others {
        tb.admin(*n, "start").await;
    }
    let answer = deposit(client, &tb.url, &account, "1").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    eprintln!("majority loss: 503 after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_amount_never_reaches_the_log() {
    let tb = Testbed::up("leader", &[]);
    let client = &tb.client;
    let account = open_account(client, &tb.url).await;
    let decided = |cluster: Value| async move {
        let mut max = 0;
        for node in cluster["nodes"].as_array().unwrap() {
            let status: Value = reqwest::Client::new()
                .get(format!("{}/status", node["paxos_url"].as_str().unwrap()))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            max = max.max(status["frontier"].as_u64().unwrap());
        }
        max
    };
    let before = decided(tb.cluster().await).await;
    for bad in [json!(12.345), json!(-1), json!("NaN"), json!(0)] {
        let response = client
            .post(format!("{}/deposit_money", tb.url))
            .json(&json!({"account_id": account, "amount": bad}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422);
    }
    assert_eq!(
        decided(tb.cluster().await).await,
        before,
        "a refused request must not use a slot"
    );
    assert_eq!(deposit(client, &tb.url, &account, "2").await.status, 200);
    assert_eq!(
        balance(client, &tb.url, &account, false).await.body,
        json!({"balance": 2})
    );
}

/// Scrapes every process after some traffic: the metric names of the observability contract
/// are there with sane values, and `promtool check metrics` accepts the text (under CI=true it
/// must be installed; elsewhere its absence is reported loudly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_exports_the_contract_metrics_as_valid_prometheus_text() {
    let tb = Testbed::up("leader", &[]);
    let client = &tb.client;
    let account = open_account(client, &tb.url).await;
    for _ in 0..5 {
        assert_eq!(deposit(client, &tb.url, &account, "1").await.status, 200);
    }
    assert_eq!(balance(client, &tb.url, &account, false).await.status, 200);
    let cluster = tb.cluster().await;
    let leader = cluster["leader"].as_u64().unwrap() as usize;
    // The sum over every series of `name` (labelled series exist at zero from the start).
    let value = |text: &str, name: &str| -> f64 {
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!values.is_empty(), "metric {name} missing");
        values.iter().sum()
    };
    let mut texts = Vec::new();
    for (i, node) in cluster["nodes"].as_array().unwrap().iter().enumerate() {
        let paxos = scrape(&format!("{}/metrics", node["paxos_url"].as_str().unwrap())).await;
        assert!(
            value(&paxos, "paxos_decided_index") >= 6.0,
            "decided index advances on every replica"
        );
        assert_eq!(value(&paxos, "paxos_leader_id"), leader as f64);
        for name in [
            "paxos_ballot_round",
            "paxos_messages_total",
            "paxos_persist_duration_seconds_count",
            "build_info",
            "process_resident_memory_bytes",
        ] {
            value(&paxos, name);
        }
        if i == leader {
            assert!(value(&paxos, "paxos_commit_latency_seconds_count") >= 6.0);
            assert!(value(&paxos, "paxos_batch_size_count") >= 1.0);
            assert!(
                value(&paxos, "paxos_proposals_total{via=\"stream\"}") >= 1.0,
                "the node proposes on its stream"
            );
            assert_eq!(value(&paxos, "paxos_is_leader"), 1.0);
            assert!(
                value(&paxos, "paxos_elections_won_total")
                    + value(&paxos, "paxos_slots_proposed_total")
                    >= 6.0
            );
        }
        let bank = scrape(&format!(
            "{}/metrics",
            node["internal_url"].as_str().unwrap()
        ))
        .await;
        assert!(value(&bank, "bank_applied_index") >= 6.0);
        assert!(value(&bank, "store_operation_duration_seconds_count") >= 1.0);
        if i == leader {
            value(&bank, "http_requests_total");
            value(&bank, "http_request_duration_seconds_count");
        }
        texts.push(paxos);
        texts.push(bank);
    }
    let door = scrape(&format!("{}/_testbed/metrics", tb.url)).await;
    assert!(value(&door, "http_requests_total") >= 1.0);
    texts.push(door);

    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but promtool is missing: .ci/run must apt-get install prometheus"
        );
        eprintln!(
            "\n*** SKIPPED promtool check: promtool not found (apt-get install prometheus) ***\n"
        );
        return;
    }
    for text in texts {
        use std::io::Write as _;
        let mut check = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool rejected the metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `testbed up --prometheus` starts a real Prometheus whose generated configuration scrapes every
/// process with the cluster token: all seven targets report up, and a query sees the leader's
/// decided index. Needs `prometheus` (`apt-get install prometheus`): under CI=true it must be
/// installed, elsewhere its absence is reported loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_prometheus_scrapes_every_process() {
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but prometheus is missing: .ci/run must apt-get install prometheus"
        );
        eprintln!(
            "\n*** SKIPPED testbed --prometheus: prometheus not found (apt-get install prometheus) ***\n"
        );
        return;
    }
    let tb = Testbed::up_binary("leader", &["--prometheus", "--prometheus-port", "0"], &[]);
    let prometheus = tb
        .printed
        .iter()
        .find_map(|line| line.strip_prefix("prometheus: "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("testbed printed the prometheus URL")
        .trim_end_matches('/')
        .to_owned();
    let config = tb.dir.path().join("data").join("prometheus.yml");
    let check = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool comes with prometheus");
    assert!(
        check.status.success(),
        "promtool rejected the generated config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        !text.contains(TOKEN),
        "the token is never written into the config"
    );
    // It loads the rules of dashboards/rules/ (written to <data-dir>/rules/).
    let rules: Value = tb
        .client
        .get(format!("{prometheus}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups: Vec<&str> = (rules["data"]["groups"].as_array().unwrap().iter())
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for group in [
        "sloth-slo-sli-recordings-bank-availability",
        "sloth-slo-alerts-bank-latency",
        "bank",
    ] {
        assert!(groups.contains(&group), "{group} not loaded: {groups:?}");
    }
    // Some traffic so the paxos decided index is above zero.
    let account = open_account(&tb.client, &tb.url).await;
    assert_eq!(
        deposit(&tb.client, &tb.url, &account, "1").await.status,
        200
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Value::Null;
    loop {
        let targets: Result<Value, _> = async {
            tb.client
                .get(format!("{prometheus}/api/v1/targets"))
                .send()
                .await?
                .json()
                .await
        }
        .await;
        if let Ok(targets) = targets {
            let active = targets["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = active.iter().filter(|t| t["health"] == "up").count();
            if active.len() == 7 && up == 7 {
                break;
            }
            last = targets;
        }
        assert!(
            Instant::now() < deadline,
            "not every target is up within 60 s: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = tb
            .client
            .get(format!(
                "{prometheus}/api/v1/query?query=max%28paxos_decided_index%7Bjob%3D%22paxos%22%7D%29"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let decided = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if decided >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw the decided index advance: {answer:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the prober will do, through the typed clients and the cluster API: an election started
/// at a follower (`PaxosClient::elect`) makes it the leader, the front door follows it, the bank
/// serves through it; `ClusterHandle::kill` is a crash the supervisor restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_at_a_follower_moves_the_leader_and_the_front_door_follows() {
    use node::client::{Consistency, IdempotencyKey};
    use testbed::cluster::Process;
    let tb = Testbed::up("leader", &[]);
    let handle = tb.handle();
    let old = handle
        .leader()
        .expect("a ready leader-mode cluster has a leader");
    let follower = (old + 1) % 3;
    let status = handle.paxos(follower).status().await.unwrap();
    assert_eq!(status.mode, paxos::Mode::Leader);
    assert!(
        !status.status.is_leader && status.status.leader == Some(old),
        "{status:?}"
    );
    let elected = handle.paxos(follower).elect().await.unwrap();
    assert!(
        elected.status.ballot > status.status.ballot,
        "the election runs at a higher ballot: {elected:?}"
    );
    let new = handle
        .wait_leader(Some(old), Duration::from_secs(10))
        .await
        .expect("a new leader");
    assert_eq!(new, follower, "the replica that started the election leads");
    // The nodes learn the new leader within their 50 ms status poll: until then a request may be
    // answered 503 `no_leader`, which a client retries (with the same key).
    let bank = handle.bank();
    let key = IdempotencyKey::random();
    let account = retried(|| bank.open_account(&key)).await;
    let amount = node::money::Money::from_cents(1_05);
    let key = IdempotencyKey::random();
    retried(|| bank.deposit(account, amount, &key)).await;
    assert_eq!(
        bank.balance(account, Consistency::Linearizable)
            .await
            .unwrap(),
        amount
    );
    assert_eq!(
        handle.info().target,
        Some(new),
        "the front door follows the leader"
    );

    let pid = handle.pid(old, Process::Paxos).expect("running");
    assert!(handle.kill(old, Process::Paxos));
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.pid(old, Process::Paxos).is_none_or(|p| p == pid) {
        assert!(
            Instant::now() < deadline,
            "the killed process was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(handle.info().nodes[old as usize].paxos_restarts, 1);

    // An operator's restart of one process: a new PID, not counted as a crash.
    let before = handle.pid(follower, Process::Node).expect("running");
    let after = handle
        .restart(follower, Process::Node)
        .await
        .expect("restarted");
    assert_ne!(before, after);
    assert_eq!(handle.info().nodes[follower as usize].node_restarts, 0);
    assert!(handle.wait_ready(Duration::from_secs(30)).await);
}

/// Calls `call` until it succeeds, retrying what the client says is retryable, for at most 10 s.
async fn retried<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, node::client::BankError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
}
