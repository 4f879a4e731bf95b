//! `testbed restart --rolling` under load: every node restarted in turn (the leader after handing
//! its lead over), and no request fails.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TOKEN, Testbed, check_under_load, deposit, open_account};

/// Leader mode, 3 nodes, the binary. While the writers of `check_under_load` run (they retry a
/// 503 with the same key, as the load test does), a stricter client deposits without any retry:
/// it must see no error at all. Afterwards every process runs with a new PID, the bank's promises
/// hold (`check_under_load`), and the leader handed its lead over rather than waiting for an
/// election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let tb = Testbed::up_binary("leader", &[], &[]);
    let pids = |cluster: &serde_json::Value| -> Vec<(u64, u64)> {
        (cluster["nodes"].as_array().unwrap().iter())
            .map(|n| {
                (
                    n["node_pid"].as_u64().unwrap(),
                    n["paxos_pid"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let before = pids(&tb.cluster().await);
    let leader_before = tb.wait_leader(None, Duration::from_secs(10)).await;
    let strict_failures = Arc::new(AtomicU64::new(0));
    let strict_sent = Arc::new(AtomicU64::new(0));
    let output = {
        let (url, failures, sent) = (tb.url.clone(), strict_failures.clone(), strict_sent.clone());
        let client = tb.client.clone();
        async move {
            let account = open_account(&client, &url).await;
            let stop = Arc::new(AtomicBool::new(false));
            // Four of them, so that requests are in flight at every step of the restart.
            let strict: Vec<_> = (0..4)
                .map(|_| {
                    let (stop, url, account) = (stop.clone(), url.clone(), account.clone());
                    let (client, sent, failures) = (client.clone(), sent.clone(), failures.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::SeqCst) {
                            sent.fetch_add(1, Ordering::SeqCst);
                            let answer = deposit(&client, &url, &account, "0.01").await;
                            if answer.status != 200 {
                                failures.fetch_add(1, Ordering::SeqCst);
                                eprintln!("strict client: {} {}", answer.status, answer.text);
                            }
                        }
                    })
                })
                .collect();
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
                .args(["restart", "--rolling", "--cluster", &url])
                .env("BANK_CLUSTER_TOKEN", TOKEN)
                .output()
                .await
                .unwrap();
            stop.store(true, Ordering::SeqCst);
            for task in strict {
                task.await.unwrap();
            }
            output
        }
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let faults = async move {
        let _ = done_tx.send(output.await);
    };
    check_under_load(&tb, faults, 0).await;
    let output = done_rx.await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "testbed restart --rolling failed");
    for id in 0..3 {
        assert!(
            text.contains(&format!("node {id}: back, ready and caught up")),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!("node {leader_before}: handed the lead to node")),
        "the leader handed its lead over: {text}"
    );
    assert!(text.contains("done: 3 nodes restarted"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let leader_line = lines
        .iter()
        .position(|l| l.starts_with(&format!("node {leader_before}: handed")))
        .unwrap();
    let backs = lines.iter().filter(|l| l.contains(": back,")).count();
    let backs_before_leader = lines[..leader_line]
        .iter()
        .filter(|l| l.contains(": back,"))
        .count();
    assert_eq!(
        (backs, backs_before_leader),
        (3, 2),
        "followers first: {text}"
    );
    let after = pids(&tb.cluster().await);
    for (id, (old, new)) in before.iter().zip(&after).enumerate() {
        assert!(
            old.0 != new.0 && old.1 != new.1 && new.0 != 0 && new.1 != 0,
            "node {id} runs new processes: {old:?} then {new:?}"
        );
    }
    let sent = strict_sent.load(Ordering::SeqCst);
    assert!(sent >= 12, "the strict clients sent {sent} requests");
    assert_eq!(
        strict_failures.load(Ordering::SeqCst),
        0,
        "requests that failed during the rolling restart (of {sent})"
    );
}

/// The paxos process hands its lead over by itself when it is asked to stop (SIGTERM, as
/// Kubernetes stops a pod): another node leads, and the old process says it handed over before
/// it exits (the hand-off is also counted in `paxos_leadership_handoffs_total`, which goes with
/// the old process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_asked_to_stop_hands_its_lead_to_a_follower() {
    let tb = Testbed::up_with_env(
        "leader",
        &["--no-restart"],
        &[("RUST_LOG", "info,paxos=info")],
    );
    let handle = tb.handle();
    let leader = tb.wait_leader(None, Duration::from_secs(10)).await as u32;
    let pid = handle
        .pid(leader, testbed::cluster::Process::Paxos)
        .unwrap();
    // SAFETY: a signal to a child of this test's cluster.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let mut successor = None;
    while started.elapsed() < Duration::from_secs(5) {
        for id in (0..3).filter(|&id| id != leader) {
            if let Ok(status) = handle.paxos(id).status().await
                && status.status.is_leader
            {
                successor = Some((id, started.elapsed()));
            }
        }
        if successor.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (successor, took) = successor.expect("a follower leads after the leader's SIGTERM");
    eprintln!(
        "node {successor} leads {} ms after node {leader}'s SIGTERM",
        took.as_millis()
    );
    // The old process exits once it has handed over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle
        .pid(leader, testbed::cluster::Process::Paxos)
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the old leader exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(
        tb.dir
            .path()
            .join("data")
            .join(format!("node-{leader}"))
            .join("paxos.log"),
    )
    .unwrap_or_default();
    assert!(
        log.contains("handed the lead to a follower"),
        "the old leader says it handed over: {log}"
    );
}
