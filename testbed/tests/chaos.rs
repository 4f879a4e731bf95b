//! Chaos against real clusters: each fault's effect on the processes it targets (kill, pause,
//! shutdown), dry-run, the heal of what a killed chaos left paused, the schedule that
//! `testbed up --chaos` runs with its kill switch, and in each mode a minute of faults under
//! load after which every promise of the bank holds (`check_under_load`).

mod common;

use std::time::{Duration, Instant};

use chaos::cluster::proc_stat;
use clap::Parser as _;
use common::*;
use serde_json::Value;

fn inject_args(line: &[&str]) -> chaos::InjectArgs {
    let argv = ["chaos", "inject"].iter().chain(line);
    match chaos::Cli::parse_from(argv).command {
        chaos::Command::Inject(args) => args,
        other => panic!("{other:?}"),
    }
}

fn run_args(line: &[&str]) -> chaos::RunArgs {
    let argv = ["chaos", "run"].iter().chain(line);
    match chaos::Cli::parse_from(argv).command {
        chaos::Command::Run(args) => args,
        other => panic!("{other:?}"),
    }
}

/// (node PID, paxos PID) of node `id`.
async fn pids(tb: &Testbed, id: u64) -> (u32, u32) {
    let cluster = tb.cluster().await;
    let node = &cluster["nodes"][id as usize];
    (
        node["node_pid"].as_u64().unwrap() as u32,
        node["paxos_pid"].as_u64().unwrap() as u32,
    )
}

/// The cluster token in a file, for `--cluster-token-file` (`shutdown` needs it).
fn token_file(tb: &Testbed) -> String {
    let path = tb.dir.path().join("token");
    std::fs::write(&path, TOKEN).unwrap();
    path.display().to_string()
}

/// True if `pid` is gone or a zombie (killed, not yet reaped).
fn dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|stat| stat.state == 'Z')
}

fn stopped(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.state == 'T')
}

/// Waits (at most `limit`) until node `id` runs processes other than `old` and is ready.
async fn wait_restarted(tb: &Testbed, id: u64, old: (u32, u32), limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let cluster = tb.cluster().await;
        let node = &cluster["nodes"][id as usize];
        let now = (
            node["node_pid"].as_u64().unwrap() as u32,
            node["paxos_pid"].as_u64().unwrap() as u32,
        );
        if now.0 != old.0 && now.1 != old.1 && now.0 != 0 && now.1 != 0 && node["ready"] == true {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} not back within {limit:?}: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deposit through the front door is acknowledged within `limit`.
async fn serves_within(tb: &Testbed, account: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let answer = send_retrying(
        &tb.client,
        reqwest::Method::POST,
        &format!("{}/deposit_money", tb.url),
        Some(serde_json::json!({"account_id": account, "amount": "0.01"})),
        Some(&uuid_key()),
        started + limit,
    )
    .await;
    assert_eq!(
        answer.map(|a| a.status),
        Some(200),
        "no write within {limit:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_the_leader_kills_both_its_processes_and_the_cluster_serves_again() {
    let tb = Testbed::up("leader", &[]);
    let account = open_account(&tb.client, &tb.url).await;
    let leader = tb.wait_leader(None, Duration::from_secs(5)).await;
    let before = pids(&tb, leader).await;
    let said = chaos::inject(
        inject_args(&["kill", "--cluster", &tb.url, "--target", "leader"]),
        Default::default(),
    )
    .await
    .unwrap();
    assert!(
        said[0].starts_with(&format!("injected: kill node {leader}")),
        "{said:?}"
    );
    assert!(
        dead(before.0) && dead(before.1),
        "both processes of the leader are gone"
    );
    let took = serves_within(&tb, &account, Duration::from_secs(15)).await;
    eprintln!("kill of the leader: a write was acknowledged {took:?} later");
    wait_restarted(&tb, leader, before, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_of_a_follower_stops_its_processes_for_the_duration_and_the_majority_serves() {
    let tb = Testbed::up("leader", &[]);
    let account = open_account(&tb.client, &tb.url).await;
    let leader = tb.wait_leader(None, Duration::from_secs(5)).await;
    let follower = (leader + 1) % 3;
    let target = follower.to_string();
    let before = pids(&tb, follower).await;
    let pause = tokio::spawn(chaos::inject(
        inject_args(&[
            "pause",
            "--cluster",
            &tb.url,
            "--target",
            &target,
            "--duration",
            "3s",
        ]),
        Default::default(),
    ));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(stopped(before.0) && stopped(before.1)) {
        assert!(
            Instant::now() < deadline,
            "the follower's processes were not stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The majority serves while the follower is frozen.
    for _ in 0..5 {
        serves_within(&tb, &account, Duration::from_secs(5)).await;
    }
    assert!(stopped(before.0) && stopped(before.1), "still paused");
    let said = pause.await.unwrap().unwrap();
    assert!(
        said.last().unwrap().starts_with("healed: pause node"),
        "{said:?}"
    );
    assert!(!stopped(before.0) && !stopped(before.1), "continued");
    assert_eq!(
        pids(&tb, follower).await,
        before,
        "the same processes: paused, not killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_asks_the_processes_to_stop_and_the_testbed_restarts_them() {
    let tb = Testbed::up("leaderless", &[]);
    let before = pids(&tb, 2).await;
    let token = token_file(&tb);
    let said = chaos::inject(
        inject_args(&[
            "shutdown",
            "--cluster",
            &tb.url,
            "--target",
            "2",
            "--cluster-token-file",
            &token,
        ]),
        Default::default(),
    )
    .await
    .unwrap();
    assert!(said[0].starts_with("injected: shutdown node 2"), "{said:?}");
    wait_restarted(&tb, 2, before, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_injects_nothing() {
    let tb = Testbed::up("leader", &[]);
    let before: Vec<_> = [pids(&tb, 0).await, pids(&tb, 1).await, pids(&tb, 2).await].into();
    for fault in ["kill", "shutdown"] {
        let said = chaos::inject(
            inject_args(&[
                fault,
                "--cluster",
                &tb.url,
                "--target",
                "random",
                "--dry-run",
            ]),
            Default::default(),
        )
        .await
        .unwrap();
        assert!(
            said[0].starts_with(&format!("dry run: would {fault} node")),
            "{said:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<_> = [pids(&tb, 0).await, pids(&tb, 1).await, pids(&tb, 2).await].into();
    assert_eq!(before, after);
    for (node, paxos) in after {
        assert!(!dead(node) && !dead(paxos) && !stopped(node) && !stopped(paxos));
    }
}

/// kill -9 of a chaos process that holds a pause: the processes stay stopped (nothing can
/// continue them but a signal), and the next chaos run, or `chaos heal`, continues them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_chaos_left_paused_is_continued_by_the_next_run() {
    let tb = Testbed::up("leader", &[]);
    let before = pids(&tb, 1).await;
    let mut chaos = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args([
            "chaos",
            "inject",
            "pause",
            "--cluster",
            &tb.url,
            "--target",
            "1",
        ])
        .args(["--process", "node", "--duration", "10m"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopped(before.0) {
        assert!(
            Instant::now() < deadline,
            "node 1's node process was not stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stopped(before.1), "--process node leaves paxos running");
    chaos.kill().unwrap();
    chaos.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stopped(before.0), "nobody continued it");
    let args = chaos::HealArgs {
        cluster: tb.url.clone(),
    };
    assert_eq!(chaos::heal(args.clone()).await.unwrap(), 1);
    assert!(!stopped(before.0), "continued");
    assert_eq!(chaos::heal(args).await.unwrap(), 0, "and forgotten");
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// `testbed up --chaos`: chaos runs beside the cluster, listed in `/_testbed/cluster` and the
/// Prometheus configuration; it injects on its schedule, its metrics count each fault, and its
/// kill switch stops it within one tick and lets it go again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testbed_up_runs_chaos_on_a_schedule_with_a_kill_switch() {
    let tb = Testbed::up(
        "leader",
        &[
            "--chaos",
            "kill",
            "--chaos-every",
            "1s",
            "--chaos-min-age",
            "0s",
            "--chaos-seed",
            "7",
        ],
    );
    let info = tb.handle().info();
    let chaos = info.chaos.expect("chaos is listed");
    assert!(chaos.pid > 0, "{chaos:?}");
    let yaml = std::fs::read_to_string(tb.dir.path().join("data/prometheus.yml")).unwrap();
    assert!(yaml.contains("job_name: chaos"), "{yaml}");
    let status = format!("{}/status", chaos.url);
    let injected = |s: &Value| s["injected"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = get_json(&status).await;
        if injected(&s) >= 2 {
            assert_eq!(s["seed"], 7);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no two faults within 30 s: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", chaos.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: f64 = (metrics.lines())
        .filter(|l| l.starts_with("chaos_faults_total{") && l.contains("fault=\"kill\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 2.0, "{metrics}");
    // The kill switch: nothing more is injected while it is engaged.
    let client = reqwest::Client::new();
    let switch = format!("{}/kill-switch", chaos.url);
    let unauthorized = client.post(&switch).send().await.unwrap().status();
    assert_eq!(unauthorized, 401);
    let engaged: Value = (client
        .post(&switch)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap())
    .json()
    .await
    .unwrap();
    assert_eq!(engaged["kill_switch"]["engaged"], true);
    // A fault already in flight may still be recorded as it ends; count from a second later.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let held = injected(&get_json(&status).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        injected(&get_json(&status).await),
        held,
        "injected while engaged"
    );
    let released = client
        .delete(&switch)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(released.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while injected(&get_json(&status).await) == held {
        assert!(
            Instant::now() < deadline,
            "nothing injected after the release"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `chaos run` in dry-run injects nothing on its schedule; a kill switch file stops even the
/// dry run's decisions until it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_schedule_injects_nothing_and_the_kill_switch_file_holds_it() {
    let tb = Testbed::up("leaderless", &[]);
    let before: Vec<_> = [pids(&tb, 0).await, pids(&tb, 1).await, pids(&tb, 2).await].into();
    let switch = tb.dir.path().join("stop-chaos");
    std::fs::write(&switch, "").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let args = run_args(&[
        "--cluster",
        &tb.url,
        "--faults",
        "kill,pause,shutdown",
        "--every",
        "300ms",
        "--min-age",
        "0s",
        "--dry-run",
        "--seed",
        "3",
        "--kill-switch-file",
        switch.to_str().unwrap(),
        "--for",
        "6s",
    ]);
    let run = tokio::spawn(chaos::run(args, listener, Default::default()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = get_json(&format!("{url}/status")).await;
    assert_eq!(held["kill_switch"]["file"], true, "{held:#}");
    assert_eq!(held["faults"].as_array().unwrap().len(), 0, "{held:#}");
    std::fs::remove_file(&switch).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = get_json(&format!("{url}/status")).await;
    let decisions = status["faults"].as_array().unwrap();
    assert!(decisions.len() >= 3, "{status:#}");
    assert!(
        decisions
            .iter()
            .all(|d| d["dry_run"] == true && d["pids"].as_array().unwrap().is_empty())
    );
    assert_eq!(status["injected"], 0);
    run.await.unwrap().unwrap();
    let after: Vec<_> = [pids(&tb, 0).await, pids(&tb, 1).await, pids(&tb, 2).await].into();
    assert_eq!(before, after, "a dry run touched a process");
}

/// How long the faults-under-load runs last (CI: a minute per mode; longer soaks set it).
fn soak() -> String {
    std::env::var("CHAOS_SOAK").unwrap_or_else(|_| "60s".to_owned())
}

async fn chaos_under_load(mode: &str) {
    let tb = Testbed::up(mode, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let soak = soak();
    let token = token_file(&tb);
    let args = run_args(&[
        "--cluster",
        &tb.url,
        "--faults",
        "kill,pause,shutdown",
        "--every",
        "4s",
        "--jitter",
        "0.3",
        "--duration",
        "2s",
        "--min-age",
        "3s",
        "--seed",
        "11",
        "--for",
        &soak,
        "--cluster-token-file",
        &token,
    ]);
    let status = std::sync::Mutex::new(Value::Null);
    let faults = async {
        let last = chaos::run(args, listener, Default::default())
            .await
            .unwrap();
        *status.lock().unwrap() = last;
    };
    check_under_load(&tb, faults, 1).await;
    let status = status.into_inner().unwrap();
    let decisions = status["faults"].as_array().unwrap();
    let injected = |kind: &str| {
        (decisions.iter())
            .filter(|f| f["fault"] == kind && f["error"].is_null())
            .filter(|f| !f["pids"].as_array().unwrap().is_empty())
            .count()
    };
    let counts = [injected("kill"), injected("pause"), injected("shutdown")];
    eprintln!("{mode}: chaos injected {counts:?} (kill, pause, shutdown)");
    assert!(
        counts.iter().all(|&n| n >= 1),
        "every fault was injected: {status:#}"
    );
    let failed: Vec<_> = (decisions.iter())
        .filter(|f| !f["error"].is_null() && !f["target"].is_null())
        .collect();
    assert!(failed.is_empty(), "injections that failed: {failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_mode_keeps_every_promise_through_a_minute_of_chaos() {
    chaos_under_load("leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderless_mode_keeps_every_promise_through_a_minute_of_chaos() {
    chaos_under_load("leaderless").await;
}
