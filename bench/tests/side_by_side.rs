//! The side-by-side benchmark end to end, briefly: a testbed and an etcd cluster each take
//! transfers from 1 and 4 clients, every total is conserved, and each bank figure comes with its
//! ratio to etcd's. Needs etcd (`apt-get install etcd-server`): without it, outside CI, the etcd
//! half is skipped with a loud message; under `CI=true` it must run.

use std::process::Command;

fn etcd_available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn bank_and_etcd_run_the_same_transfers_and_conserve_their_totals() {
    let with_etcd = etcd_available();
    if !with_etcd {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcd is missing under CI=true: apt-get install etcd-server"
        );
        eprintln!(
            "SKIPPED: the etcd half of the side-by-side benchmark (apt-get install etcd-server)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let markdown = dir.path().join("runs.md");
    let mut command = Command::new(env!("CARGO_BIN_EXE_bench"));
    command
        .args(["--duration", "2s", "--warmup", "1s", "--clients", "1,4"])
        .args(["--modes", "leader", "--workloads", "transfers,mixed"])
        .args([
            "--accounts",
            "20",
            "--mixed-accounts",
            "20",
            "--paced-rate",
            "20",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown);
    if !with_etcd {
        command.arg("--no-etcd");
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let runs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let shapes: Vec<(String, String, u64, Option<f64>)> = runs
        .iter()
        .map(|r| {
            (
                r["system"].to_string(),
                r["workload"].as_str().unwrap().to_owned(),
                r["clients"].as_u64().unwrap(),
                r["rate"].as_f64(),
            )
        })
        .collect();
    let bank = r#"{"bank":"leader"}"#.to_owned();
    let etcd = r#""etcd""#.to_owned();
    let transfers = "transfers".to_owned();
    let mut expected = vec![
        (bank.clone(), transfers.clone(), 1, None),
        (bank.clone(), transfers.clone(), 4, None),
        (bank.clone(), "mixed".to_owned(), 1, None),
        (bank.clone(), "mixed".to_owned(), 4, None),
        // One client pacing itself to 20 transfers/s.
        (bank, transfers.clone(), 1, Some(20.0)),
    ];
    if with_etcd {
        expected.push((etcd.clone(), transfers.clone(), 1, None));
        expected.push((etcd.clone(), transfers.clone(), 4, None));
        expected.push((etcd, transfers, 1, Some(20.0)));
    }
    assert_eq!(shapes, expected, "{stderr}");
    for run in &runs {
        assert!(
            run["ops_per_s"].as_f64().unwrap() > 0.0,
            "no operations: {run}"
        );
        assert!(run["p50_ms"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["cpu_ms_per_op"].as_f64().unwrap() > 0.0, "{run}");
        // Every process of the system was measured.
        let processes = run["processes"].as_array().unwrap().len();
        assert_eq!(
            processes,
            if run["system"] == "etcd" { 3 } else { 7 },
            "{run}"
        );
        // A bank run's total is checked exactly when no request failed (a failed write's fate
        // is unknown: an election under a loaded CI machine can fail a few); an etcd transfer
        // is both writes or neither, so its total always holds.
        let errors = run["errors"].as_u64().unwrap();
        assert!(
            errors * 10 <= run["ops"].as_u64().unwrap(),
            "mostly failures: {run}"
        );
        if errors == 0 || run["system"] == "etcd" {
            assert_eq!(run["conserved"], true, "{run}");
        } else {
            assert!(
                !run["error_examples"].as_array().unwrap().is_empty(),
                "{run}"
            );
        }
    }
    let table = std::fs::read_to_string(&markdown).unwrap();
    for row in table
        .lines()
        .filter(|l| l.starts_with("| transfers |") && l.contains("paxos bank"))
        .take(2)
    {
        let ratios = row.matches("x |").count();
        if with_etcd {
            assert_eq!(
                ratios, 4,
                "ops/s, p50, p99 and CPU/op each with a ratio: {row}"
            );
        } else {
            assert_eq!(ratios, 0, "{row}");
        }
    }
}

/// `--rounds`: every round runs on fresh systems, even rounds in the reverse order, and the
/// tables end with the medians of the ratios taken within each round (here leaderless mode's
/// throughput over leader mode's). Each run records the host's steal, the clients' CPU and the
/// disk's sync time.
#[test]
fn rounds_alternate_their_order_and_end_with_medians() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let markdown = dir.path().join("runs.md");
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--rounds", "2", "--no-etcd", "--paced-rate", "0"])
        .args(["--duration", "1s", "--warmup", "0s", "--clients", "2"])
        .args(["--modes", "leader,leaderless", "--workloads", "transfers"])
        .args(["--accounts", "10"])
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    let runs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let order: Vec<(u64, String)> = runs
        .iter()
        .map(|r| {
            (
                r["round"].as_u64().unwrap(),
                r["system"]["bank"].to_string(),
            )
        })
        .collect();
    let (leader, leaderless) = (r#""leader""#.to_owned(), r#""leaderless""#.to_owned());
    assert_eq!(
        order,
        vec![
            (1, leader.clone()),
            (1, leaderless.clone()),
            (2, leaderless),
            (2, leader)
        ],
        "{stderr}"
    );
    for run in &runs {
        let steal = run["host_steal"].as_f64().expect("Linux says its steal");
        assert!((0.0..=1.0).contains(&steal), "{run}");
        assert!(run["client_cores"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["disk_sync_ms"].as_f64().unwrap() > 0.0, "{run}");
    }
    let table = std::fs::read_to_string(&markdown).unwrap();
    assert!(table.contains("### Round 2 of 2"), "{table}");
    let medians = table
        .split("### Medians over 2 rounds")
        .nth(1)
        .expect(&table);
    let leaderless_row = medians
        .lines()
        .find(|l| l.contains("| paxos bank (leaderless) |"))
        .expect(medians);
    assert!(
        leaderless_row.trim_end().ends_with("x |"),
        "leaderless over leader: {leaderless_row}"
    );
}
