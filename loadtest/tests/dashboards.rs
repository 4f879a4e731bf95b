//! The dashboards (`dashboards/*.json`) and the Prometheus rules (`dashboards/rules/*.yml`)
//! against the code that exports the metrics:
//!
//! - every PromQL expression parses (`promql-parser`, Grafana's variables substituted) and names
//!   only metrics some process exports (the metric catalogues of every crate, which
//!   `testbed/tests/cluster.rs` checks against the running binaries) or a rule records;
//! - counters appear only inside `rate()`, `irate()` or `increase()`, over `$__rate_interval`
//!   (or `$__range`) in dashboards;
//! - the dashboards pass the checks grafana/dashboard-linter makes (a datasource variable used by
//!   every panel and target, a unit on every panel, unique ids, a valid JSON model);
//! - every alert has a summary and a runbook section; promtool checks and tests the rules;
//! - live: a real Prometheus (`testbed up --prometheus`) scraping a cluster with the prober, chaos
//!   killing the leader and the load test running answers every dashboard query and every
//!   recording rule with data.
//!
//! It lives in the load test's crate because the loadtest binary plays every process of a cluster
//! (`up`, `node`, `paxos`, `prober`, `chaos`) and the load, and this crate sees every catalogue.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use promql_parser::parser::{self, Expr};
use serde_json::Value;
use telemetry::catalog::{Kind, Metric};

const LOADTEST: &str = env!("CARGO_BIN_EXE_loadtest");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What Grafana's variables become for parsing: two ranges no query would write by hand, so a
/// range can be traced back to `$__rate_interval` or `$__range`.
const RATE_INTERVAL: &str = "61s";
const RANGE: &str = "7m";

fn substitute(expr: &str, rate_interval: &str, range: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", range)
        .replace("$__interval", rate_interval)
        .replace("$node", ".*")
        .replace("$mode", ".*")
}

/// One PromQL expression and where it comes from.
#[derive(Clone, Debug)]
struct Query {
    /// `overview.json: Rate (A)`, `slo.yml: slo:sli_error:ratio_rate5m`, ...
    source: String,
    /// As written (with Grafana's variables).
    expr: String,
    /// From a dashboard (Grafana variables allowed, ranges checked).
    dashboard: bool,
}

fn dashboards() -> Vec<(String, Value)> {
    let mut boards: Vec<(String, Value)> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{name} is not JSON: {err}"));
            (name, value)
        })
        .collect();
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        boards.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "experiments.json",
            "overview.json",
            "paxos.json",
            "storage.json"
        ]
    );
    boards
}

fn panels(board: &Value) -> impl Iterator<Item = &Value> {
    board["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
}

/// Every query of every dashboard: panel targets, annotations, and the templating queries
/// (`label_values(selector, label)`: its selector).
fn dashboard_queries() -> Vec<Query> {
    let mut queries = Vec::new();
    for (name, board) in dashboards() {
        for panel in panels(&board) {
            for target in panel["targets"].as_array().unwrap() {
                queries.push(Query {
                    source: format!(
                        "{name}: {} ({})",
                        panel["title"].as_str().unwrap(),
                        target["refId"].as_str().unwrap()
                    ),
                    expr: target["expr"].as_str().unwrap().to_owned(),
                    dashboard: true,
                });
            }
        }
        for annotation in board["annotations"]["list"].as_array().unwrap() {
            if let Some(expr) = annotation["expr"].as_str() {
                queries.push(Query {
                    source: format!("{name}: annotation {}", annotation["name"]),
                    expr: expr.to_owned(),
                    dashboard: true,
                });
            }
        }
        for variable in board["templating"]["list"].as_array().unwrap() {
            if let Some(query) = variable["query"]["query"].as_str() {
                let inner = query
                    .strip_prefix("label_values(")
                    .and_then(|rest| rest.rsplit_once(','))
                    .map(|(selector, _)| selector.to_owned())
                    .unwrap_or_else(|| panic!("{name}: variable query {query}"));
                queries.push(Query {
                    source: format!("{name}: variable {}", variable["name"]),
                    expr: inner,
                    dashboard: true,
                });
            }
        }
    }
    queries
}

/// The rule files (not their tests).
fn rule_files() -> Vec<(String, Value)> {
    let dir = root().join("dashboards").join("rules");
    let mut files: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "yml")
                && !path.to_string_lossy().ends_with("_test.yml")
        })
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let value: Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|err| panic!("{name} is not YAML: {err}"));
            (name, value)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["bank.yml", "slo.yml"]
    );
    files
}

fn rules() -> Vec<(String, Value)> {
    let mut rules = Vec::new();
    for (name, file) in rule_files() {
        for group in file["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                rules.push((name.clone(), rule.clone()));
            }
        }
    }
    rules
}

fn rule_queries() -> Vec<Query> {
    rules()
        .into_iter()
        .map(|(file, rule)| {
            let what = rule["record"].as_str().or(rule["alert"].as_str()).unwrap();
            Query {
                source: format!("{file}: {what}"),
                expr: rule["expr"].as_str().unwrap().to_owned(),
                dashboard: false,
            }
        })
        .collect()
}

/// The series some process exports or a rule records, with their kind (a histogram's
/// `_bucket`, `_count` and `_sum` are counters).
fn catalog() -> BTreeMap<String, Kind> {
    let tables: [&[Metric]; 6] = [
        node::metrics::METRICS,
        paxos::metrics::METRICS,
        prober::metrics::METRICS,
        chaos::metrics::METRICS,
        loadtest::metrics::METRICS,
        &testbed::frontdoor::METRICS,
    ];
    let mut names = BTreeMap::new();
    for metric in tables.into_iter().flatten() {
        match metric.kind {
            Kind::Histogram => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{}{suffix}", metric.name), Kind::Counter);
                }
            }
            kind => {
                names.insert(metric.name.to_owned(), kind);
            }
        }
    }
    for name in telemetry::catalog::EVERY_PROCESS {
        let kind = if name.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        names.insert(name.to_owned(), kind);
    }
    // Prometheus's own series of every target.
    names.insert("up".to_owned(), Kind::Gauge);
    for (_, rule) in rules() {
        if let Some(record) = rule["record"].as_str() {
            names.insert(record.to_owned(), Kind::Gauge);
        }
    }
    names
}

/// A problem found in one expression.
fn walk(expr: &Expr, inside: Option<&str>, dashboard: bool, found: &mut Walk) {
    let counter = |name: &Option<String>, found: &Walk| {
        name.as_ref()
            .is_some_and(|n| found.catalog.get(n) == Some(&Kind::Counter))
    };
    match expr {
        Expr::Aggregate(e) => {
            walk(&e.expr, None, dashboard, found);
            if let Some(param) = &e.param {
                walk(param, None, dashboard, found);
            }
        }
        Expr::Unary(e) => walk(&e.expr, None, dashboard, found),
        Expr::Binary(e) => {
            walk(&e.lhs, None, dashboard, found);
            walk(&e.rhs, None, dashboard, found);
        }
        Expr::Paren(e) => walk(&e.expr, None, dashboard, found),
        Expr::Subquery(e) => walk(&e.expr, None, dashboard, found),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        Expr::VectorSelector(vs) => {
            found.names.extend(vs.name.clone());
            if counter(&vs.name, found) {
                found
                    .problems
                    .push(format!("counter {:?} outside rate()/increase()", vs.name));
            }
        }
        Expr::MatrixSelector(ms) => {
            found.names.extend(ms.vs.name.clone());
            let over_time = matches!(inside, Some("rate" | "irate" | "increase"));
            if counter(&ms.vs.name, found) && !over_time {
                found.problems.push(format!(
                    "counter {:?} in {inside:?}, not rate()/irate()/increase()",
                    ms.vs.name
                ));
            }
            let range = humantime_range(ms.range);
            if dashboard && over_time && range != RATE_INTERVAL && range != RANGE {
                found.problems.push(format!(
                    "{inside:?} of {:?} over a fixed [{range}], not $__rate_interval or $__range",
                    ms.vs.name
                ));
            }
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                walk(arg, Some(call.func.name), dashboard, found);
            }
        }
    }
}

fn humantime_range(range: Duration) -> String {
    if range.as_secs().is_multiple_of(60) {
        format!("{}m", range.as_secs() / 60)
    } else {
        format!("{}s", range.as_secs())
    }
}

struct Walk {
    catalog: BTreeMap<String, Kind>,
    names: BTreeSet<String>,
    problems: Vec<String>,
}

fn all_queries() -> Vec<Query> {
    let mut queries = dashboard_queries();
    queries.extend(rule_queries());
    queries
}

#[test]
fn every_query_parses_names_exported_metrics_and_rates_its_counters() {
    let catalog = catalog();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let queries = all_queries();
    assert!(queries.len() > 80, "{} queries", queries.len());
    for query in &queries {
        let text = substitute(&query.expr, RATE_INTERVAL, RANGE);
        let expr = match parser::parse(&text) {
            Ok(expr) => expr,
            Err(err) => {
                problems.push(format!("{}: does not parse: {err}\n  {text}", query.source));
                continue;
            }
        };
        let mut found = Walk {
            catalog: catalog.clone(),
            names: BTreeSet::new(),
            problems: Vec::new(),
        };
        walk(&expr, None, query.dashboard, &mut found);
        for name in &found.names {
            if !catalog.contains_key(name) {
                problems.push(format!("{}: no process exports {name}", query.source));
            }
        }
        for problem in found.problems {
            problems.push(format!("{}: {problem}", query.source));
        }
        used.extend(found.names);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The panels the issue names are there: a sample of what must be drawn.
    for name in [
        "paxos_commit_latency_seconds_bucket",
        "paxos_phase1_rounds_total",
        "paxos_phase2_messages_total",
        "paxos_elections_started_total",
        "paxos_leader_changes_total",
        "paxos_ballot_round",
        "paxos_decided_index",
        "bank_applied_index",
        "paxos_batch_size_bucket",
        "paxos_peer_rpc_duration_seconds_bucket",
        "paxos_messages_dropped_total",
        "paxos_persist_duration_seconds_bucket",
        "bank_snapshot_bytes",
        "bank_compaction_duration_seconds_bucket",
        "store_operation_duration_seconds_bucket",
        "store_commit_batch_size_bucket",
        "store_transaction_retries_total",
        "store_errors_total",
        "loadtest_operations_total",
        "chaos_fault_active",
        "prober_recoveries_total",
        "probe_total",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(name), "no dashboard or rule draws {name}");
    }
}

/// A counter read raw, or rated over a fixed window in a dashboard, is caught.
#[test]
fn the_counter_check_catches_what_it_is_for() {
    let catalog = catalog();
    for (bad, why) in [
        ("http_requests_total", "outside rate()"),
        ("sum(http_requests_total)", "outside rate()"),
        ("delta(http_requests_total[5m])", "not rate()"),
        ("rate(http_requests_total[5m])", "fixed [5m]"),
        ("no_such_metric", ""),
    ] {
        let mut found = Walk {
            catalog: catalog.clone(),
            names: BTreeSet::new(),
            problems: Vec::new(),
        };
        walk(&parser::parse(bad).unwrap(), None, true, &mut found);
        if why.is_empty() {
            assert!(!catalog.contains_key("no_such_metric"));
        } else {
            assert!(
                found.problems.iter().any(|p| p.contains(why)),
                "{bad}: {:?}",
                found.problems
            );
        }
    }
    let mut found = Walk {
        catalog,
        names: BTreeSet::new(),
        problems: Vec::new(),
    };
    let good = substitute(
        "sum(rate(http_requests_total[$__rate_interval])) / sum(increase(probe_total[$__range]))",
        RATE_INTERVAL,
        RANGE,
    );
    walk(&parser::parse(&good).unwrap(), None, true, &mut found);
    assert!(found.problems.is_empty(), "{:?}", found.problems);
}

/// What grafana/dashboard-linter checks: a `datasource` variable every panel and target uses,
/// a unit on every panel, unique panel ids (and dashboard uids), `mode` and `node` variables,
/// a JSON model Grafana provisions (uid, title, schemaVersion, panels inside the 24-column grid).
#[test]
fn the_dashboards_pass_the_linters_rules() {
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, board) in dashboards() {
        let mut say = |what: String| problems.push(format!("{name}: {what}"));
        let uid = board["uid"].as_str().unwrap_or_default();
        if uid.is_empty() || !uids.insert(uid.to_owned()) {
            say(format!("uid {uid:?} missing or not unique"));
        }
        if board["title"].as_str().is_none_or(str::is_empty) {
            say("no title".into());
        }
        if board["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            say("schemaVersion below 36".into());
        }
        let variables = board["templating"]["list"].as_array().unwrap();
        let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
        match variable("datasource") {
            Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
            _ => say("no `datasource` variable of type datasource (prometheus)".into()),
        }
        for name in ["mode", "node"] {
            match variable(name) {
                Some(v) if v["type"] == "query" && v["datasource"]["uid"] == "${datasource}" => {}
                _ => say(format!("no `{name}` query variable on ${{datasource}}")),
            }
        }
        let mut ids = BTreeSet::new();
        for panel in board["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            let id = panel["id"].as_u64();
            if id.is_none_or(|id| !ids.insert(id)) {
                say(format!("panel {title:?}: id {id:?} missing or not unique"));
            }
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
            if !matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24)
                || grid["h"].as_u64().is_none()
                || grid["y"].as_u64().is_none()
            {
                say(format!("panel {title:?}: gridPos {grid}"));
            }
            if panel["type"] == "row" {
                continue;
            }
            if title.is_empty() || panel["description"].as_str().is_none_or(str::is_empty) {
                say(format!("panel {id:?}: a title and a description"));
            }
            if panel["datasource"]["uid"] != "${datasource}" {
                say(format!(
                    "panel {title:?}: datasource is not ${{datasource}}"
                ));
            }
            if panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .is_none_or(str::is_empty)
            {
                say(format!("panel {title:?}: no unit"));
            }
            let targets = panel["targets"].as_array().unwrap();
            if targets.is_empty() {
                say(format!("panel {title:?}: no query"));
            }
            let mut refs = BTreeSet::new();
            for target in targets {
                if target["datasource"]["uid"] != "${datasource}" {
                    say(format!("panel {title:?}: a target's datasource"));
                }
                if !refs.insert(target["refId"].as_str().unwrap_or_default().to_owned()) {
                    say(format!("panel {title:?}: refId not unique"));
                }
            }
        }
        for annotation in board["annotations"]["list"].as_array().unwrap() {
            if annotation["builtIn"] != 1 && annotation["datasource"]["uid"] != "${datasource}" {
                say(format!("annotation {}: datasource", annotation["name"]));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_dashboards_are_what_the_generator_writes() {
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/dashboards"))
        .arg("--check")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "dashboards/*.json differ from scripts/dashboards: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every alert says what it is and where its runbook is, and the runbook has that section.
#[test]
fn every_alert_has_a_summary_and_a_runbook_section() {
    let runbooks = std::fs::read_to_string(root().join("docs/runbooks.md")).unwrap();
    let mut alerts = 0;
    for (file, rule) in rules() {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        let annotations = &rule["annotations"];
        assert!(
            annotations["summary"]
                .as_str()
                .is_some_and(|s| s.len() > 20),
            "{file}: {alert} has no summary"
        );
        assert!(
            ["page", "ticket"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{file}: {alert}: severity page or ticket"
        );
        assert_eq!(
            annotations["runbook_url"].as_str(),
            Some(format!("docs/runbooks.md#{}", alert.to_lowercase()).as_str()),
            "{file}: {alert}"
        );
        assert!(
            runbooks.contains(&format!("\n## {alert}\n")),
            "docs/runbooks.md has no section ## {alert}"
        );
    }
    assert_eq!(alerts, 10, "4 SLO alerts and 6 others");
}

fn tool_or_skip(tool: &str, why: &str) -> bool {
    if std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {tool} is missing: .ci/run must apt-get install prometheus"
    );
    eprintln!("\n*** SKIPPED {why}: {tool} not found (apt-get install prometheus) ***\n");
    false
}

/// `promtool check rules` and `promtool test rules`: for each alert a series that must fire it
/// and one that must not (slo_test.yml, bank_test.yml).
#[test]
fn promtool_checks_and_tests_the_rules() {
    if !tool_or_skip("promtool", "promtool check/test rules") {
        return;
    }
    let dir = root().join("dashboards").join("rules");
    for (verb, files) in [
        ("check", ["slo.yml", "bank.yml"]),
        ("test", ["slo_test.yml", "bank_test.yml"]),
    ] {
        let out = std::process::Command::new("promtool")
            .args([verb, "rules"])
            .args(files)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {verb} rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The series an expression reads.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut found = Walk {
        catalog: BTreeMap::new(),
        names: BTreeSet::new(),
        problems: Vec::new(),
    };
    walk(&parser::parse(expr).unwrap(), None, false, &mut found);
    found.names
}

/// An alert reading a recording of another group may see it one evaluation late in Prometheus
/// (groups run independently), and promtool then evaluates the groups in Go's random map order
/// unless the test names one: bank_test.yml failed 3 runs in 30 so (a lag alert's `$value` one
/// step old). So a recording and the alerts that read it share a group, recordings first, or
/// the alert's file is Sloth's layout and its test fixes `group_eval_order` with the recording
/// groups first.
#[test]
fn alerts_see_the_recordings_they_read_of_the_same_evaluation() {
    let tests_dir = root().join("dashboards").join("rules");
    for (file, rules_file) in rule_files() {
        // Where every recording is: (group index, rule index).
        let groups = rules_file["groups"].as_array().unwrap();
        let mut recorded: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for (g, group) in groups.iter().enumerate() {
            for (r, rule) in group["rules"].as_array().unwrap().iter().enumerate() {
                if let Some(name) = rule["record"].as_str() {
                    recorded.entry(name.to_owned()).or_default().push((g, r));
                }
            }
        }
        let test_name = file.replace(".yml", "_test.yml");
        let test: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(tests_dir.join(&test_name)).unwrap())
                .unwrap();
        let order: Vec<&str> = test["group_eval_order"]
            .as_array()
            .map(|o| o.iter().map(|g| g.as_str().unwrap()).collect())
            .unwrap_or_default();
        let names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
        let mut problems = Vec::new();
        if !order.is_empty() {
            let mut sorted_order = order.clone();
            sorted_order.sort();
            let mut sorted_names = names.clone();
            sorted_names.sort();
            if sorted_order != sorted_names {
                problems.push(format!(
                    "{test_name}: group_eval_order {order:?} is not the groups {names:?}"
                ));
            }
        }
        let position = |g: usize| order.iter().position(|name| *name == names[g]);
        for (g, group) in groups.iter().enumerate() {
            for (r, rule) in group["rules"].as_array().unwrap().iter().enumerate() {
                let Some(alert) = rule["alert"].as_str() else {
                    continue;
                };
                for name in names_in(rule["expr"].as_str().unwrap()) {
                    for &(rg, rr) in recorded.get(&name).into_iter().flatten() {
                        let before = if rg == g {
                            rr < r
                        } else {
                            matches!((position(rg), position(g)), (Some(a), Some(b)) if a < b)
                        };
                        if !before {
                            problems.push(format!(
                                "{file}: {alert} reads {name} of group {:?}, not evaluated \
                                 before it (same group, earlier; or group_eval_order in \
                                 {test_name})",
                                names[rg]
                            ));
                        }
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

/// Queries that may be empty in the live run, and why.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "Transaction retries (Firestore)",
        "Firestore only: the live cluster runs on the embedded store",
    ),
    (
        "Probes by target and outcome (B)",
        "failures only (`> 0`): empty while every probe passes",
    ),
];

async fn instant(http: &reqwest::Client, prometheus: &str, query: &str) -> Value {
    let url =
        reqwest::Url::parse_with_params(&format!("{prometheus}/api/v1/query"), &[("query", query)])
            .unwrap();
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn over(http: &reqwest::Client, prometheus: &str, query: &str, since: f64) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let url = reqwest::Url::parse_with_params(
        &format!("{prometheus}/api/v1/query_range"),
        &[
            ("query", query),
            ("start", &format!("{since:.3}")),
            ("end", &format!("{now:.3}")),
            ("step", "5"),
        ],
    )
    .unwrap();
    http.get(url).send().await.unwrap().json().await.unwrap()
}

fn has_data(answer: &Value) -> bool {
    answer["status"] == "success"
        && answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
}

/// The live check: `testbed up --prometheus` (its Prometheus loads the rules), the prober, chaos
/// killing the leader every ~20 s, and the load test (its `--metrics-listen` listed in
/// `<data-dir>/targets/`). Once a kill has been scraped, every dashboard query and every
/// recording rule returns data, but for the queries named in [`MAY_BE_EMPTY`] (the Firestore-only
/// panel, and a failures-only query). A renamed metric fails here.
#[test]
fn every_query_and_recording_rule_returns_data_from_a_live_cluster() {
    use clap::Parser as _;
    if !tool_or_skip("prometheus", "the live dashboards check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = testbed::cli::Cli::try_parse_from([
        "testbed",
        "up",
        "--mode",
        "leader",
        "--nodes",
        "3",
        "--port",
        "0",
        "--prometheus",
        "--prometheus-port",
        "0",
        "--chaos",
        "kill",
        "--chaos-every",
        "20s",
        "--chaos-target",
        "leader",
        "--chaos-min-age",
        "5s",
        "--chaos-seed",
        "7",
        "--chaos-port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .unwrap();
    let testbed::cli::Command::Up(up) = up.command else {
        panic!("up");
    };
    let mut spec =
        testbed::cluster::ClusterSpec::from_up_args(&up, PathBuf::from(LOADTEST), None).unwrap();
    spec.env.push(("RUST_LOG".to_owned(), "warn".to_owned()));
    let cluster = testbed::cluster::ClusterThread::start(spec, Duration::from_secs(120)).unwrap();
    let prometheus = cluster.prometheus_url.clone().expect("--prometheus");
    let front = cluster.handle().front_door().to_owned();
    // The load test, its metrics listed for Prometheus through file_sd.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        data.join("targets").join("loadtest.json"),
        format!(r#"[{{"targets": ["127.0.0.1:{port}"], "labels": {{"job": "loadtest", "node": "loadtest"}}}}]"#),
    )
    .unwrap();
    let mut load = std::process::Command::new(LOADTEST)
        .args([
            "--host",
            &front,
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--workload", "mixed", "--accounts", "20", "--users", "4"])
        .args(["--run-time", "120", "--quiet", "--out-dir"])
        .arg(dir.path().join("out"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        // Wait for a kill to be scraped, and for the load test's series.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let kills = instant(&http, &prometheus, "sum(chaos_faults_total)").await;
            let killed = kills["data"]["result"][0]["value"][1]
                .as_str()
                .is_some_and(|v| v.parse::<f64>().unwrap_or(0.0) >= 1.0);
            let loaded = has_data(
                &instant(
                    &http,
                    &prometheus,
                    "sum(rate(loadtest_operations_total[1m])) > 0",
                )
                .await,
            );
            if killed && loaded {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no kill or no load scraped within 90 s: kills {kills}"
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // Rates over a minute have 12 scrapes; let the rules evaluate on them.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut empty = Vec::new();
        let mut asked = 0;
        for query in dashboard_queries() {
            let text = substitute(&query.expr, "1m", "5m");
            asked += 1;
            // An annotation marks events: it must have found the kill somewhere in the run.
            let answer = if query.source.contains(": annotation ") {
                over(&http, &prometheus, &text, started).await
            } else {
                instant(&http, &prometheus, &text).await
            };
            if !has_data(&answer)
                && !MAY_BE_EMPTY
                    .iter()
                    .any(|(what, _)| query.source.contains(what))
            {
                empty.push(format!("{}: {text}", query.source));
            }
        }
        for (file, rule) in rules() {
            if let Some(record) = rule["record"].as_str() {
                asked += 1;
                if !has_data(&instant(&http, &prometheus, record).await) {
                    empty.push(format!("{file}: recording rule {record}"));
                }
            }
        }
        let firing = instant(&http, &prometheus, "ALERTS").await;
        eprintln!(
            "asked {asked} queries; alerts now: {}",
            firing["data"]["result"]
        );
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!("no data for:\n{}", empty.join("\n")))
        }
    });
    let _ = load.kill();
    let _ = load.wait();
    drop(cluster);
    if let Err(err) = result {
        panic!("{err}");
    }
}
