//! `testbed experiment` end to end: a 30-second plan with one leader kill, in both modes, on
//! fresh clusters; then the report is checked against the raw logs it came from (availability,
//! outage per fault and failed requests recomputed from `requests.csv` and `faults.csv`), and
//! opened in headless Chromium (every plot an `<svg>` with its marks, no console message).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const PLAN: &str = r#"
name = "ci-kill"
description = "One leader kill, 30 s per mode"
duration = "30s"
warmup = "5s"
rate = 100
nodes = 3
seed = 7

[[faults]]
fault = "kill"
target = "leader"
every = "60s"
first_after = "12s"
"#;

fn testbed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
}

/// `requests.csv` rows of `mode`: (due time s, latency ms, outcome).
fn requests(dir: &Path, mode: &str) -> Vec<(f64, f64, String)> {
    let text = std::fs::read_to_string(dir.join("requests.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("time_s,mode,op,latency_ms,outcome,node"));
    lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f[1] == mode)
        .map(|f| {
            assert_eq!(f.len(), 6, "{f:?}");
            assert!(["deposit", "move", "balance"].contains(&f[2]), "{f:?}");
            if f[4] == "ok" {
                assert!(
                    f[5].parse::<u32>().is_ok(),
                    "an answer names its node: {f:?}"
                );
            }
            (
                f[0].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].to_owned(),
            )
        })
        .collect()
}

/// `faults.csv` rows of `mode`: (time s, outcome, node).
fn faults(dir: &Path, mode: &str) -> Vec<(f64, String, String)> {
    let text = std::fs::read_to_string(dir.join("faults.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("time_s,mode,fault,target,node,healed_s,outcome,detail")
    );
    lines
        .map(|line| line.splitn(8, ',').collect::<Vec<_>>())
        .filter(|f| f[1] == mode)
        .map(|f| (f[0].parse().unwrap(), f[6].to_owned(), f[4].to_owned()))
        .collect()
}

#[test]
fn a_short_plan_runs_both_modes_and_its_report_matches_its_raw_logs() {
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("ci-kill.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = work.path().join("results");
    let run = testbed()
        .arg("experiment")
        .arg(&plan)
        .arg("--out")
        .arg(&out)
        .arg("--no-progress")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("report.html"), "{stdout}");
    for mode in ["leader", "leaderless"] {
        assert!(
            stderr.contains(&format!("{mode} mode: fault 1/1 at")),
            "{stderr}"
        );
    }

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["plan"], "ci-kill");
    assert_eq!(report["seed"], 7);
    let modes = report["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 2);
    for summary in modes {
        let mode = summary["mode"].as_str().unwrap();
        let rows = requests(&out, mode);
        // Open model: every due request is in the log, 100/s for 30 s.
        assert_eq!(rows.len(), 3_000, "{mode}");
        assert_eq!(summary["requests"], 3_000, "{mode}");
        let ok = rows.iter().filter(|r| r.2 == "ok").count();
        assert_eq!(summary["ok"], ok as u64, "{mode}");
        let availability = summary["availability"].as_f64().unwrap();
        assert!(
            (availability - ok as f64 / rows.len() as f64).abs() < 1e-9,
            "{mode}: {availability} vs {ok}/{}",
            rows.len()
        );
        assert!(availability > 0.5, "{mode}: {availability}");

        // The kill, and the outage recomputed from the requests.
        let injected = faults(&out, mode);
        assert_eq!(injected.len(), 1, "{mode}: {injected:?}");
        let (at, outcome, node) = &injected[0];
        assert_eq!(outcome, "injected", "{mode}");
        assert!(node.parse::<u32>().is_ok(), "{mode}: {node}");
        if mode == "leaderless" {
            assert_eq!(node, "0", "leaderless: `leader` is node 0");
        }
        assert!((12.0..14.0).contains(at), "{mode}: injected at {at}");
        let fault = &summary["faults"][0];
        // Times are written to the microsecond: a request due within one of the kill may
        // fall on either side of it, so the report's outage lies between the outage counting
        // such a request and the one not counting it (equal unless there is one).
        let outage_from = |sent_after: f64| {
            let first_ok = (rows.iter())
                .filter(|r| r.0 >= sent_after && r.2 == "ok")
                .map(|r| r.0 + r.1 / 1e3)
                .fold(f64::INFINITY, f64::min);
            (first_ok - at) * 1e3
        };
        let (shortest, longest) = (outage_from(at - 1e-6), outage_from(at + 1e-6));
        let outage_ms = fault["outage_ms"].as_f64().unwrap();
        assert!(
            shortest - 0.01 <= outage_ms && outage_ms <= longest + 0.01,
            "{mode}: outage {outage_ms} ms in the report, {shortest}..{longest} from the logs"
        );
        // Failures belong to the fault before they ended (the only fault here).
        let failed = (rows.iter())
            .filter(|r| r.2 != "ok" && r.0 + r.1 / 1e3 >= *at)
            .count() as u64;
        let reported = fault["failed"].as_u64().unwrap();
        // `time_s` and `latency_ms` are rounded to the microsecond in the CSV: a failure
        // ending within one of the fault may fall on either side.
        assert!(
            reported.abs_diff(failed) <= 1,
            "{mode}: {reported} vs {failed}"
        );
        // Availability per window, recomputed for the window of the fault.
        let window = (at / 10.0).floor() * 10.0;
        let in_window: Vec<_> = (rows.iter())
            .filter(|r| r.0 >= window && r.0 < window + 10.0)
            .collect();
        let recomputed =
            in_window.iter().filter(|r| r.2 == "ok").count() as f64 / in_window.len() as f64;
        let reported = (summary["windows"].as_array().unwrap().iter())
            .find(|w| w[0].as_f64() == Some(window))
            .and_then(|w| w[1].as_f64())
            .unwrap();
        assert!((reported - recomputed).abs() < 1e-9, "{mode}");

        // The bank survived: ledger, replicas, replays and reads through every node.
        assert_eq!(summary["invariant"], "pass", "{mode}: {summary}");
        assert_eq!(summary["checked"][2], 3, "{mode}: three replicas compared");
        assert!(summary["counter_reads"].as_u64().unwrap() > 30, "{mode}");
        assert!(summary["prober_availability"].as_f64().is_some(), "{mode}");
    }

    // The prober's log, relative to the load.
    let probes = std::fs::read_to_string(out.join("probes.csv")).unwrap();
    let mut per_mode = BTreeMap::new();
    for line in probes.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let at: f64 = f[0].parse().unwrap();
        assert!((0.0..=30.0).contains(&at), "{line}");
        if f[2] == "entry" {
            *per_mode.entry(f[1].to_owned()).or_insert(0) += 1;
        }
    }
    for mode in ["leader", "leaderless"] {
        assert!(
            per_mode.get(mode).copied().unwrap_or(0) >= 20,
            "{per_mode:?}"
        );
    }

    // The report, in a browser: every plot drawn, nothing on the console.
    for file in [
        "report.md",
        "throughput.svg",
        "latency.svg",
        "availability.svg",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("| leader | 3000 |"), "{markdown}");
    let Some(browser) = testkit::browser::chromium_or_skip(
        "a_short_plan_runs_both_modes_and_its_report_matches_its_raw_logs (the browser part)",
    ) else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let rendered = testkit::browser::render(
        &browser,
        profile.path(),
        &[],
        &format!("file://{}", out.join("report.html").display()),
    );
    let dom = &rendered.dom;
    assert!(dom.contains("Experiment <code>ci-kill</code>"), "{dom}");
    let svgs: Vec<&str> = dom.split("<svg").skip(1).collect();
    assert_eq!(svgs.len(), 5, "five plots");
    for svg in &svgs {
        let svg = svg.split("</svg>").next().unwrap();
        assert!(!svg.contains("chart not drawn"), "{svg}");
        assert!(
            svg.contains("<polyline") || svg.matches("<rect").count() > 3,
            "a plot with marks: {svg}"
        );
    }
    assert!(
        rendered.console.is_empty(),
        "console: {:?}",
        rendered.console
    );
}

#[test]
fn bad_plans_and_flags_are_refused_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let missing = testbed()
        .args(["experiment", "/nonexistent/plan.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("reading /nonexistent/plan.toml"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let plan = work.path().join("p.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let too_many = testbed()
        .arg("experiment")
        .arg(&plan)
        .args(["--rate", "10000", "--duration", "24h"])
        .output()
        .unwrap();
    let says = String::from_utf8_lossy(&too_many.stderr);
    assert!(!too_many.status.success());
    assert!(
        says.contains("requests per mode: at most 10000000"),
        "{says}"
    );
    let full = work.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("x"), "").unwrap();
    let taken = testbed()
        .arg("experiment")
        .arg(&plan)
        .arg("--out")
        .arg(&full)
        .output()
        .unwrap();
    let says = String::from_utf8_lossy(&taken.stderr);
    assert!(!taken.status.success());
    assert!(says.contains("is not empty"), "{says}");
}

/// Ctrl-C (here SIGTERM) in the middle of a mode stops that mode's cluster, every process of it,
/// and ends the run with an error and no report.
#[test]
fn an_interrupted_experiment_leaves_no_process_behind() {
    use std::io::{BufRead as _, BufReader};
    let work = tempfile::tempdir().unwrap();
    let plan = work.path().join("p.toml");
    std::fs::write(
        &plan,
        PLAN.replace("duration = \"30s\"", "duration = \"5m\""),
    )
    .unwrap();
    let out = work.path().join("results");
    let mut child = testbed()
        .arg("experiment")
        .arg(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--no-progress", "--modes", "leader"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !said.contains("measuring") {
        assert!(std::time::Instant::now() < deadline, "{said}");
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{said}");
        said.push_str(&line);
    }
    let cluster: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("leader/cluster/cluster.json")).unwrap(),
    )
    .unwrap();
    let pids: Vec<i32> = (cluster["nodes"].as_array().unwrap().iter())
        .flat_map(|n| {
            [
                n["node_pid"].as_i64().unwrap(),
                n["paxos_pid"].as_i64().unwrap(),
            ]
        })
        .map(|p| p as i32)
        .collect();
    assert_eq!(pids.len(), 6, "{cluster}");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{said}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(!out.join("report.json").exists());
    for pid in pids {
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(
            !alive,
            "process {pid} of the interrupted cluster is still running"
        );
    }
}
