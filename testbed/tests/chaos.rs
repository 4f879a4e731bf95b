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
    // SIGKILL is delivered asynchronously: the processes are gone within moments.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(dead(before.0) && dead(before.1)) {
        assert!(
            Instant::now() < deadline,
            "both processes of the leader are gone"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let cli = <chaos::Cli as clap::Parser>::parse_from(["chaos", "heal", "--cluster", &tb.url]);
    let chaos::Command::Heal(args) = cli.command else {
        panic!("heal");
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
    let test =
        format!("{mode}_mode_keeps_every_promise_through_a_minute_of_chaos (network faults)");
    let netns = netns_available(&test);
    let tb = Testbed::up(mode, if netns { &["--netns"] } else { &[] });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let soak = soak();
    let token = token_file(&tb);
    let fault_list = match netns {
        true => "kill,pause,shutdown,partition,loss",
        false => "kill,pause,shutdown",
    };
    let args = run_args(&[
        "--cluster",
        &tb.url,
        "--faults",
        fault_list,
        "--cycle",
        "--every",
        "3500ms",
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
        "--partition",
        "isolate",
        "--loss-percent",
        "30",
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
            .filter(|f| f["fault"] == kind && f["error"].is_null() && !f["target"].is_null())
            .count()
    };
    let counts: Vec<(&str, usize)> = (fault_list.split(','))
        .map(|fault| (fault, injected(fault)))
        .collect();
    eprintln!("{mode}: chaos injected {counts:?}");
    assert!(
        counts.iter().all(|(_, n)| *n >= 1),
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

/// Network namespaces need root (CAP_NET_ADMIN), iproute2 and nftables. Under `CI=true` they
/// must be there; elsewhere a test without them says so loudly and passes.
fn netns_available(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, iproute2 and nftables under CI=true (apt-get install iproute2 nftables)"
    );
    eprintln!(
        "SKIPPED {test}: needs root, iproute2 and nftables (apt-get install iproute2 nftables)"
    );
    false
}

/// True if a TCP connection from inside `namespace` to `address` is established within 2 s.
fn connects_from(namespace: &str, address: &str) -> bool {
    let (host, port) = address.rsplit_once(':').unwrap();
    std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "timeout", "2", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
        .output()
        .unwrap()
        .status
        .success()
}

/// True if chaos's nftables table is in `namespace`.
fn has_chaos_table(namespace: &str) -> bool {
    let nft = std::process::Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&nft.stdout).contains(chaos::fault::NFT_TABLE)
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// An isolated leader: its links are cut for real (a connection from its namespace to a peer
/// times out), the majority elects another leader and writes are acknowledged again, and once
/// healed the old leader catches up. The time from the partition to the first acknowledged write
/// is printed (the issue's figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_by_the_majority_and_catches_up_after() {
    if !netns_available("an_isolated_leader_is_replaced_by_the_majority_and_catches_up_after") {
        return;
    }
    let tb = Testbed::up("leader", &["--netns"]);
    let account = open_account(&tb.client, &tb.url).await;
    let leader = tb.wait_leader(None, Duration::from_secs(5)).await;
    let cluster = tb.cluster().await;
    let node = |id: u64| cluster["nodes"][id as usize].clone();
    let namespace = node(leader)["netns"].as_str().unwrap().to_owned();
    let peer = (leader + 1) % 3;
    let peer_paxos = node(peer)["paxos_url"].as_str().unwrap().to_owned();
    assert!(
        connects_from(&namespace, host_port(&peer_paxos)),
        "linked before"
    );
    let target = leader.to_string();
    let partition = tokio::spawn(chaos::inject(
        inject_args(&[
            "partition",
            "--cluster",
            &tb.url,
            "--target",
            &target,
            "--duration",
            "8s",
        ]),
        Default::default(),
    ));
    // The moment the rules are in place in every namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(0..3).all(|id| has_chaos_table(node(id)["netns"].as_str().unwrap())) {
        assert!(
            Instant::now() < deadline,
            "the partition's rules never appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cut = Instant::now();
    // The isolated leader steps down (it hears no majority), well before the partition heals.
    let isolated = tb.handle().paxos(leader as u32);
    let stepped_down = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(status) = isolated.status().await
                && !status.status.is_leader
            {
                return Some(cut.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    });
    // The first write acknowledged after the partition: one deposit, retried with its key in
    // short attempts (so a request stuck at the isolated leader does not hide the new one).
    let key = uuid_key();
    let first_write = loop {
        let reply = (tb.client.post(format!("{}/deposit_money", tb.url)))
            .header("idempotency-key", &key)
            .json(&serde_json::json!({"account_id": account, "amount": "0.01"}))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        if reply.is_ok_and(|r| r.status() == 200) {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(7),
            "no write acknowledged within 7 s"
        );
    };
    let stepped_down = stepped_down
        .await
        .unwrap()
        .expect("the isolated leader steps down");
    let new = tb.wait_leader(Some(leader), Duration::from_secs(5)).await;
    eprintln!(
        "isolated leader {leader}: stepped down {stepped_down:?} after the partition; node {new} leads; first write acknowledged {first_write:?} after the partition"
    );
    for _ in 0..19 {
        serves_within(&tb, &account, Duration::from_secs(5)).await;
    }
    let said = partition.await.unwrap().unwrap();
    assert!(
        said.last().unwrap().starts_with("healed: partition"),
        "{said:?}"
    );
    assert!(connects_from(&namespace, host_port(&peer_paxos)), "healed");
    let nft = std::process::Command::new("ip")
        .args(["netns", "exec", &namespace, "nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nft.stdout).contains("pbchaos"),
        "the rules are gone"
    );
    // The old leader catches up: every replica converges on the same balance.
    let balances =
        converged_balances(&tb, std::slice::from_ref(&account), Duration::from_secs(20)).await;
    assert_eq!(balances, [20], "20 deposits of 0.01, each once");
}

/// 30% loss on a follower's links: the cluster keeps acknowledging writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_on_a_follower_slows_nothing_to_a_stop() {
    if !netns_available("loss_on_a_follower_slows_nothing_to_a_stop") {
        return;
    }
    let tb = Testbed::up("leaderless", &["--netns"]);
    let account = open_account(&tb.client, &tb.url).await;
    let loss = tokio::spawn(chaos::inject(
        inject_args(&[
            "loss",
            "--cluster",
            &tb.url,
            "--target",
            "2",
            "--loss-percent",
            "30",
            "--duration",
            "4s",
        ]),
        Default::default(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        serves_within(&tb, &account, Duration::from_secs(10)).await;
    }
    let said = loss.await.unwrap().unwrap();
    assert!(
        said[0].starts_with("injected: loss node 2 (30% of packets)"),
        "{said:?}"
    );
    let balances =
        converged_balances(&tb, std::slice::from_ref(&account), Duration::from_secs(20)).await;
    assert_eq!(balances, [20]);
}

/// `ip netns list` names of this machine.
fn namespaces() -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A `testbed up --netns` killed with kill -9 leaves its namespaces and bridge behind; the next
/// testbed's start removes them (and only them: a live instance's stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_testbed_left_in_the_network_is_removed_at_the_next_start() {
    if !netns_available("what_a_killed_testbed_left_in_the_network_is_removed_at_the_next_start") {
        return;
    }
    let live = Testbed::up("leader", &["--netns"]);
    let live_namespace = live.cluster().await["nodes"][0]["netns"]
        .as_str()
        .unwrap()
        .to_owned();
    // The doomed instance: the real binary, killed with kill -9 once ready.
    let data = live.dir.path().join("doomed");
    let mut doomed = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["up", "--netns", "--no-prober", "--port", "0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let info: Value = loop {
        let info = (std::fs::read(data.join("cluster.json")).ok())
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        if let Some(info) = info.filter(|i| i["ready"] == true) {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "the doomed testbed never got ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let doomed_namespaces: Vec<String> = (info["nodes"].as_array().unwrap().iter())
        .map(|n| n["netns"].as_str().unwrap().to_owned())
        .collect();
    let bridge = format!("{}-br", doomed_namespaces[0].rsplit_once('-').unwrap().0);
    let before = namespaces();
    assert!(
        doomed_namespaces.iter().all(|n| before.contains(n)),
        "{before:?}"
    );
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kill = namespaces();
    assert!(
        doomed_namespaces.iter().all(|n| after_kill.contains(n)),
        "kill -9 left them behind: {after_kill:?}"
    );
    let cleaned = testbed::netns::clean_leftovers();
    assert_eq!(cleaned.len(), 1, "{cleaned:?}");
    let after = namespaces();
    assert!(
        doomed_namespaces.iter().all(|n| !after.contains(n)),
        "{after:?}"
    );
    assert!(
        after.contains(&live_namespace),
        "a live instance's namespaces stay"
    );
    let link = std::process::Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(!link.status.success(), "the bridge {bridge} is gone");
    drop(live);
}

/// The link delays every proxy of the cluster reports, as (from, to, delay_ms).
async fn link_delays(tb: &Testbed) -> Vec<(u64, u64, u64)> {
    let cluster = tb.cluster().await;
    let mut delays = Vec::new();
    for node in cluster["nodes"].as_array().unwrap() {
        let url = node["proxy_url"]
            .as_str()
            .expect("--proxies gives every node a proxy");
        let links = get_json(&format!("{url}/links")).await;
        for link in links.as_array().unwrap() {
            let to = link["to"].as_u64().unwrap();
            delays.push((
                node["id"].as_u64().unwrap(),
                to,
                link["delay_ms"].as_u64().unwrap(),
            ));
        }
    }
    delays.sort();
    delays
}

/// `testbed up --proxies` puts a link proxy between every pair of paxos processes. A delay of
/// a second on the leader's links, both ways, is longer than any election timeout: the
/// followers stop hearing it in time and elect one of themselves (their link is not slowed), the
/// old leader hears no majority in time and steps down, and writes go on being acknowledged.
/// Healed, every link is back to no delay and the old leader catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_on_the_leaders_links_gets_it_replaced_and_heals() {
    let tb = Testbed::up("leader", &["--proxies"]);
    let account = open_account(&tb.client, &tb.url).await;
    serves_within(&tb, &account, Duration::from_secs(5)).await;
    let leader = tb.wait_leader(None, Duration::from_secs(5)).await;
    assert!(link_delays(&tb).await.iter().all(|(_, _, d)| *d == 0));
    let token = token_file(&tb);
    let target = leader.to_string();
    let delay = tokio::spawn(chaos::inject(
        inject_args(&[
            "delay",
            "--cluster",
            &tb.url,
            "--target",
            &target,
            "--delay-ms",
            "1000",
            "--duration",
            "6s",
            "--cluster-token-file",
            &token,
        ]),
        Default::default(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delays = link_delays(&tb).await;
    for (from, to, ms) in &delays {
        let touches_leader = *from == leader || *to == leader;
        assert_eq!(*ms, if touches_leader { 1000 } else { 0 }, "{delays:?}");
    }
    let new = tb.wait_leader(Some(leader), Duration::from_secs(5)).await;
    for _ in 0..5 {
        serves_within(&tb, &account, Duration::from_secs(10)).await;
    }
    eprintln!("delayed leader {leader}: node {new} leads");
    let said = delay.await.unwrap().unwrap();
    assert!(
        said[0].starts_with(&format!("injected: delay node {leader} (1000 ms each way)")),
        "{said:?}"
    );
    assert!(
        link_delays(&tb).await.iter().all(|(_, _, d)| *d == 0),
        "healed"
    );
    let balances =
        converged_balances(&tb, std::slice::from_ref(&account), Duration::from_secs(20)).await;
    assert_eq!(balances, [6]);
}
