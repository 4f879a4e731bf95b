//! The load test end to end: a short goose run against a real cluster passes its invariant
//! check; `--compare` writes its reports; and a replica corrupted on purpose (one balance
//! overwritten in its store, bypassing the log) is caught by `loadtest check`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use loadtest::compare::Cluster;
use paxos::Mode;
use testbed::cluster::Process;

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A 3-node cluster of the testbed's cluster API, its processes played by the loadtest binary.
fn cluster(mode: Mode) -> Cluster {
    Cluster::start_with(Path::new(LOADTEST), mode, 3, "").expect("a ready testbed")
}

/// A goose run against `cluster` writing its ledger into `out_dir`, with `args` added.
fn run_on(cluster: &Cluster, out_dir: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec![
        "--host",
        &cluster.url,
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--quiet",
    ];
    all.extend_from_slice(args);
    loadtest(&all)
}

fn loadtest(args: &[&str]) -> (bool, String) {
    let out = Command::new(LOADTEST)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_short_goose_run_on_a_cluster_passes_its_invariant_check() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = cluster(Mode::Leader);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let (ok, text) = run_on(
        &cluster,
        &out_dir,
        &[
            "--workload",
            "mixed",
            "--accounts",
            "20",
            "--users",
            "8",
            "--run-time",
            "4",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("invariant check: OK"), "{text}");
    assert!(
        text.contains("3 replicas compared"),
        "every node's replica was compared: {text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("Mixed workload:"))
        .unwrap_or_else(|| panic!("no summary line: {text}"));
    let operations: u64 = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(operations > 50, "the run did work: {summary}");
    assert!(out_dir.join("ledger.json").exists());
}

#[test]
fn the_bank_workload_keeps_the_total_fixed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = cluster(Mode::Leaderless);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let (ok, text) = run_on(
        &cluster,
        &out_dir,
        &[
            "--workload",
            "bank",
            "--accounts",
            "5",
            "--users",
            "8",
            "--run-time",
            "4",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("invariant check: OK"), "{text}");
}

#[test]
fn a_corrupted_replica_is_caught_by_the_checker() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = cluster(Mode::Leader);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let (ok, text) = run_on(
        &cluster,
        &out_dir,
        &["--accounts", "5", "--users", "4", "--run-time", "2"],
    );
    assert!(ok, "the honest run passes: {text}");
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("ledger.json")).unwrap()).unwrap();
    let account = ledger["accounts"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();

    // The test-only hook: overwrite one balance in node 2's store, bypassing the log.
    let handle = cluster.handle();
    handle.stop(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while handle.pid(2, Process::Node).is_some() || handle.pid(2, Process::Paxos).is_some() {
        assert!(std::time::Instant::now() < deadline, "node 2 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bank = cluster.data_dir().join("node-2/bank");
    {
        let store = node::store::EmbeddedStore::open_in_dir(&bank, Default::default()).unwrap();
        let id: node::command::AccountId = account.parse().unwrap();
        store
            .corrupt_balance_for_tests(id, node::money::Money::from_cents(123_456_789))
            .unwrap();
    }
    handle.start(2);
    let ledger_path = out_dir.join("ledger.json");
    let (ok, text) = loadtest(&[
        "check",
        "--host",
        &cluster.url,
        "--ledger",
        ledger_path.to_str().unwrap(),
    ]);
    assert!(!ok, "the checker must fail on a corrupted replica: {text}");
    assert!(
        text.contains("VIOLATION") && text.contains(&account) && text.contains("replica"),
        "the evidence names the replica and the account: {text}"
    );
}

#[test]
fn compare_runs_both_modes_and_writes_the_reports() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let (ok, text) = loadtest(&[
        "--compare",
        "--repeats",
        "1",
        "--accounts",
        "10",
        "--users",
        "4",
        "--run-time",
        "3",
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{text}");
    let table = std::fs::read_to_string(out_dir.join("compare.md")).unwrap();
    assert!(
        table.contains("| leader | 1 |") && table.contains("| leaderless | 1 |"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("compare.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    for run in json.as_array().unwrap() {
        assert!(run["summary"]["ops_per_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["violations"].as_array().unwrap().is_empty(), "{run}");
    }
    let html = std::fs::read_to_string(out_dir.join("compare.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("leaderless mode"));
}
