//! End to end on the real Cloud Firestore emulator: `testbed up --store firestore` in both modes
//! survives a `kill -9` with every acknowledged operation applied exactly once, and a Firestore
//! that stops answering makes requests fail cleanly (503) until it is back, with nothing lost.
//! The emulator is started by the tests (gcloud must be installed; under CI=true it must be).

mod common;

use std::time::{Duration, Instant};

use common::*;
use node::store::firestore_emulator;

/// Leader mode runs the real `testbed up` (its printed Firestore line is checked), leaderless
/// mode the cluster API.
fn firestore_testbed(mode: &str, host: &str) -> Testbed {
    let (extra, env) = (
        ["--store", "firestore"],
        [("FIRESTORE_EMULATOR_HOST", host)],
    );
    if mode == "leader" {
        Testbed::up_binary(mode, &extra, &env)
    } else {
        Testbed::up_with_env(mode, &extra, &env)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_leader_mode_survives_kill_9_of_the_leader_exactly_once() {
    let Some(host) = firestore_emulator::for_tests() else {
        return;
    };
    let tb = firestore_testbed("leader", host);
    assert!(
        tb.printed
            .iter()
            .any(|l| l.contains("firestore: the emulator at")),
        "{:?}",
        tb.printed
    );
    kill_during_load(tb, "leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_leaderless_mode_survives_kill_9_of_a_node_exactly_once() {
    let Some(host) = firestore_emulator::for_tests() else {
        return;
    };
    kill_during_load(firestore_testbed("leaderless", host), "leaderless").await;
}

async fn readyz_status(client: &reqwest::Client, base: &str) -> Option<u16> {
    client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// The emulator is stopped (SIGSTOP: it keeps its data and answers nothing) in the middle of a
/// run: writes and reads answer 503, `/readyz` turns red; once it continues, the same write
/// retried with its key succeeds, applied once, and the totals are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_outage_gives_503_then_recovers_without_loss() {
    if firestore_emulator::for_tests().is_none() {
        return;
    }
    // An emulator of this test's own, so pausing it disturbs no other test.
    let dir = tempfile::tempdir().unwrap();
    let emulator = firestore_emulator::Emulator::start(
        &dir.path().join("emulator.log"),
        Duration::from_secs(90),
    )
    .expect("starting an emulator for the outage test");
    let tb = firestore_testbed("leader", &emulator.host);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let account = open_account(&client, &tb.url).await;
    assert_eq!(deposit(&client, &tb.url, &account, "10").await.status, 200);
    let nodes = tb.node_urls().await;

    emulator.pause();
    let key = uuid_key();
    let body = serde_json::json!({"account_id": account, "amount": "5.25"});
    let started = Instant::now();
    let during = client
        .post(format!("{}/deposit_money", tb.url))
        .header("Idempotency-Key", &key)
        .json(&body)
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(
        during.status(),
        503,
        "a write during the outage fails cleanly"
    );
    assert!(
        during.headers().contains_key("retry-after"),
        "503 tells the client when to retry"
    );
    eprintln!(
        "write during the outage answered 503 after {:?}",
        started.elapsed()
    );
    let read = client
        .get(format!("{}/check_account?account_id={account}", tb.url))
        .send()
        .await
        .expect("an answer");
    assert_eq!(read.status(), 503, "a read during the outage fails cleanly");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut red = 0;
        for node in &nodes {
            if readyz_status(&client, node).await != Some(200) {
                red += 1;
            }
        }
        if red == nodes.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed green during the outage"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    emulator.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = send_retrying(
        &client,
        reqwest::Method::POST,
        &format!("{}/deposit_money", tb.url),
        Some(body.clone()),
        Some(&key),
        deadline,
    )
    .await
    .expect("the retried write succeeds once Firestore is back");
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.cents("balance"), 1525, "applied exactly once");
    assert_eq!(deposit(&client, &tb.url, &account, "1").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = balance(&client, &tb.url, &account, false).await;
        if answer.status == 200 {
            assert_eq!(
                answer.cents("balance"),
                1625,
                "totals right after the outage"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads never recovered: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        while readyz_status(&client, node).await != Some(200) {
            assert!(Instant::now() < deadline, "{node} never became ready again");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// A Firestore that cannot be reached stops the node at start with a message that says what is
/// wrong and how to fix it (exit code 1, no panic), well before any client could be misled.
#[test]
fn an_unreachable_firestore_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args([
            "node",
            "--store",
            "firestore",
            "--firestore-project",
            "paxos-bank-test",
            "--firestore-timeout-ms",
            "1000",
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("FIRESTORE_EMULATOR_HOST", format!("127.0.0.1:{port}"))
        .env("BANK_CLUSTER_TOKEN", "t")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!("the Firestore emulator at 127.0.0.1:{port}"))
            && stderr.contains("cannot be used")
            && stderr.contains("FIRESTORE_EMULATOR_HOST"),
        "the message names the emulator and the fix: {stderr}"
    );
}
