//! Chaos on Kubernetes, against a fake API server that records every request
//! (`testkit::FakeApiServer`: kube's real client over a mock), with stub paxos processes on
//! 127.0.0.2-4 as the pods' paxos containers (they say who leads).
//!
//! What it checks, request by request (which is also the RBAC chaos needs: list, delete and
//! patch pods, create pods/eviction, list, create and delete NetworkPolicies): a dry run (the
//! default on Kubernetes) only reads; kill and shutdown delete the pod, with a grace period of 0
//! and the pod's own; an eviction is a `policy/v1` Eviction, and a refusal by a
//! PodDisruptionBudget is reported, never forced; a partition is one NetworkPolicy and a label
//! on the cut-off pods, both gone when it heals; what a killed chaos left is healed by the
//! next; faults that need a node's processes or links are refused without a call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chaos::kubernetes::{KubernetesChaos, KubernetesTarget, Refused};
use chaos::{Backend, Cli, Command};
use clap::Parser as _;
use testkit::{Call, FakeApiServer, STUB_IPS, StubPaxos};
use tokio_util::sync::CancellationToken;

const LIST_PODS: &str =
    "GET /api/v1/namespaces/bank/pods?&labelSelector=app.kubernetes.io%2Fname%3Dbank";
const LIST_LABELLED: &str =
    "GET /api/v1/namespaces/bank/pods?&labelSelector=chaos.paxos-bank%2Fpartitioned";
const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/bank/networkpolicies";
const LIST_POLICIES: &str = "GET /apis/networking.k8s.io/v1/namespaces/bank/networkpolicies?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dpaxos-bank-chaos";

/// The cluster the fake API server holds.
#[derive(Default)]
struct State {
    /// Pods with the partition label.
    labelled: Vec<String>,
    /// NetworkPolicies by name.
    policies: Vec<String>,
    /// Evictions are refused (a PodDisruptionBudget allows no disruption).
    refuse_evictions: AtomicBool,
}

/// `pods` bank pods; pod `young` (if any) started its containers just now, the others two hours
/// ago. Pods 0-2 have the stub paxos processes' addresses.
fn pod_list(pods: u32, young: Option<u32>, state: &State) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let items: Vec<_> = (0..pods)
        .map(|id| {
            let name = format!("bank-{id}");
            let ip = STUB_IPS
                .get(id as usize)
                .map_or(format!("127.0.0.{}", 2 + id), |ip| (*ip).to_owned());
            let started = if Some(id) == young { now } else { now - 7200 };
            let started = k8s_openapi::jiff::Timestamp::from_second(started as i64).unwrap();
            let mut labels = serde_json::json!({"app.kubernetes.io/name": "bank", "statefulset.kubernetes.io/pod-name": name});
            if state.labelled.contains(&name) {
                labels["chaos.paxos-bank/partitioned"] = "true".into();
            }
            let containers = ["node", "paxos"].map(|c| {
                serde_json::json!({
                    "name": c, "ready": true, "restartCount": 0, "image": "bank", "imageID": "",
                    "state": {"running": {"startedAt": started.to_string()}},
                })
            });
            serde_json::json!({
                "metadata": {"name": name, "namespace": "bank", "uid": format!("uid-{id}"), "labels": labels},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": containers,
                },
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn list(kind: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

fn policy(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "bank", "labels": {"app.kubernetes.io/managed-by": "paxos-bank-chaos"}},
        "spec": {"podSelector": {}},
    })
}

/// The fake API server over `pods` bank pods, and its state.
fn fake(pods: u32, young: Option<u32>) -> (kube::Client, FakeApiServer, Arc<Mutex<State>>) {
    let state = Arc::new(Mutex::new(State::default()));
    let shared = state.clone();
    let (client, api) = FakeApiServer::start("bank", move |call| {
        let mut state = shared.lock().unwrap();
        let path = call.path().to_owned();
        let pod = path.strip_prefix("/api/v1/namespaces/bank/pods/");
        match (call.method.as_str(), path.as_str(), pod) {
            ("GET", "/api/v1/namespaces/bank/pods", _) => {
                if call.uri.contains("partitioned") {
                    // A list by the partition label: the labelled pods only.
                    let mut all = pod_list(pods, young, &state);
                    let items = all["items"].as_array_mut().unwrap();
                    items.retain(|p| {
                        !p["metadata"]["labels"]["chaos.paxos-bank/partitioned"].is_null()
                    });
                    (200, all)
                } else {
                    (200, pod_list(pods, young, &state))
                }
            }
            ("DELETE", _, Some(name)) => (
                200,
                serde_json::json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}}),
            ),
            ("POST", _, Some(evict)) if evict.ends_with("/eviction") => {
                if state.refuse_evictions.load(Ordering::SeqCst) {
                    (
                        429,
                        testkit::status(
                            429,
                            "TooManyRequests",
                            "Cannot evict pod as it would violate the pod's disruption budget.",
                        ),
                    )
                } else {
                    (
                        201,
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
                    )
                }
            }
            ("PATCH", _, Some(name)) => {
                let value = &call.body.as_ref().unwrap()["metadata"]["labels"]["chaos.paxos-bank/partitioned"];
                state.labelled.retain(|n| n != name);
                if !value.is_null() {
                    state.labelled.push(name.to_owned());
                }
                (
                    200,
                    serde_json::json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name}}),
                )
            }
            ("GET", POLICIES, _) => (
                200,
                list(
                    "NetworkPolicyList",
                    state.policies.iter().map(|n| policy(n)).collect(),
                ),
            ),
            ("POST", POLICIES, _) => {
                let name = call.body.as_ref().unwrap()["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                if state.policies.contains(&name) {
                    return (409, testkit::status(409, "AlreadyExists", "already exists"));
                }
                state.policies.push(name.clone());
                (201, call.body.clone().unwrap())
            }
            ("DELETE", p, _) if p.starts_with(POLICIES) => {
                let name = p.rsplit('/').next().unwrap().to_owned();
                if !state.policies.contains(&name) {
                    return (404, testkit::status(404, "NotFound", "not found"));
                }
                state.policies.retain(|n| *n != name);
                (200, policy(&name))
            }
            _ => (404, testkit::status(404, "NotFound", "not found")),
        }
    });
    (client, api, state)
}

/// Stub paxos processes (`leader` leading), the fake API server over `pods` pods (`young`
/// started just now), and chaos's backend on them.
async fn setup(
    leader: u32,
    pods: u32,
    young: Option<u32>,
) -> (StubPaxos, Backend, FakeApiServer, Arc<Mutex<State>>) {
    let paxos = StubPaxos::start(leader).await;
    let (client, api, state) = fake(pods, young);
    let backend = backend(client, paxos.port);
    (paxos, backend, api, state)
}

fn backend(client: kube::Client, paxos_port: u16) -> Backend {
    Backend::Kubernetes(KubernetesChaos::new(
        client,
        reqwest::Client::new(),
        "token".into(),
        KubernetesTarget {
            namespace: "bank".into(),
            pod_selector: "app.kubernetes.io/name=bank".into(),
            public_port: 8080,
            paxos_port,
        },
    ))
}

/// `chaos inject <line> --kubernetes` through `backend`.
async fn inject(backend: &Backend, line: &str) -> anyhow::Result<Vec<String>> {
    chaos::inject_with(inject_args(line), backend, CancellationToken::new()).await
}

fn inject_args(line: &str) -> chaos::InjectArgs {
    let words = ["chaos", "inject"]
        .into_iter()
        .chain(line.split_whitespace())
        .chain(["--kubernetes"]);
    match Cli::parse_from(words).command {
        Command::Inject(args) => args,
        other => panic!("{other:?}"),
    }
}

fn mutating(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.method != "GET")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_dry_run_is_the_default_on_kubernetes_and_only_reads() {
    let (_paxos, backend, api, _) = setup(1, 3, None).await;
    let said = inject(&backend, "kill --target leader").await.unwrap();
    assert_eq!(
        said,
        [
            "dry run: would kill pod bank-1 (node 1) (a dry run is the default on Kubernetes: --no-dry-run to inject)"
        ]
    );
    assert_eq!(
        api.lines(),
        [LIST_PODS],
        "one list of the pods, nothing else"
    );
}

#[tokio::test]
async fn kill_deletes_the_leader_pod_at_once_and_shutdown_with_its_grace_period() {
    let (_paxos, backend, api, _) = setup(1, 3, None).await;
    let said = inject(&backend, "kill --target leader --no-dry-run")
        .await
        .unwrap();
    assert_eq!(said, ["injected: kill pod bank-1 (node 1)"]);
    assert_eq!(
        api.lines(),
        [
            LIST_PODS,
            // First, what a chaos that is gone may have left: nothing here.
            LIST_LABELLED,
            LIST_POLICIES,
            "DELETE /api/v1/namespaces/bank/pods/bank-1",
        ]
    );
    let delete = api.calls().pop().unwrap();
    assert_eq!(
        delete.body.unwrap()["gracePeriodSeconds"],
        0,
        "SIGKILL, no grace"
    );
    api.clear();
    inject(&backend, "shutdown --target bank-2 --no-dry-run")
        .await
        .unwrap();
    let delete = mutating(&api.calls()).pop().unwrap();
    assert_eq!(delete.line(), "DELETE /api/v1/namespaces/bank/pods/bank-2");
    assert!(
        delete
            .body
            .is_none_or(|b| b.get("gracePeriodSeconds").is_none()),
        "the pod's own grace period: SIGTERM first"
    );
}

#[tokio::test]
async fn an_eviction_honours_the_disruption_budget() {
    let (_paxos, backend, api, state) = setup(1, 3, None).await;
    state
        .lock()
        .unwrap()
        .refuse_evictions
        .store(true, Ordering::SeqCst);
    let err = inject(&backend, "evict --target 2 --no-dry-run")
        .await
        .unwrap_err();
    let refused = err.downcast_ref::<Refused>().expect("a refusal");
    assert_eq!(refused.pod, "bank-2");
    assert!(refused.message.contains("disruption budget"), "{err:#}");
    let evictions = mutating(&api.calls());
    assert_eq!(evictions.len(), 1, "refused: not forced with a delete");
    let eviction = &evictions[0];
    assert_eq!(
        eviction.line(),
        "POST /api/v1/namespaces/bank/pods/bank-2/eviction"
    );
    assert_eq!(
        eviction.body.clone().unwrap(),
        serde_json::json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "bank-2", "namespace": "bank"}})
    );
    state
        .lock()
        .unwrap()
        .refuse_evictions
        .store(false, Ordering::SeqCst);
    let said = inject(&backend, "evict --target 2 --no-dry-run")
        .await
        .unwrap();
    assert_eq!(said, ["injected: evict pod bank-2 (node 2)"]);
}

#[tokio::test]
async fn a_partition_is_a_network_policy_and_a_label_both_gone_when_it_heals() {
    let (_paxos, backend, api, state) = setup(1, 3, None).await;
    let said = inject(
        &backend,
        "partition --target leader --duration 50ms --no-dry-run",
    )
    .await
    .unwrap();
    assert_eq!(
        said,
        [
            "injected: partition pod bank-1 (node 1) (Isolate)",
            "healed: partition pod bank-1 (node 1)"
        ]
    );
    let calls = mutating(&api.calls());
    let lines: Vec<String> = calls.iter().map(Call::line).collect();
    assert_eq!(
        lines,
        [
            format!("POST {POLICIES}"),
            "PATCH /api/v1/namespaces/bank/pods/bank-1".into(),
            "PATCH /api/v1/namespaces/bank/pods/bank-1".into(),
            format!("DELETE {POLICIES}/chaos-partition"),
        ],
        "the policy before the label (a labelled pod no policy selects hears everyone); healed in reverse"
    );
    assert_eq!(
        calls[0].body.clone().unwrap(),
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "chaos-partition", "namespace": "bank", "labels": {"app.kubernetes.io/managed-by": "paxos-bank-chaos"}},
            "spec": {
                "podSelector": {"matchLabels": {"chaos.paxos-bank/partitioned": "true"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"protocol": "TCP", "port": 8080}]},
                    {"from": [{"podSelector": {"matchLabels": {"chaos.paxos-bank/partitioned": "true"}}}]},
                ],
            },
        })
    );
    assert_eq!(
        calls[1].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        calls[1].body.clone().unwrap(),
        serde_json::json!({"metadata": {"labels": {"chaos.paxos-bank/partitioned": "true"}}})
    );
    assert_eq!(
        calls[2].body.clone().unwrap(),
        serde_json::json!({"metadata": {"labels": {"chaos.paxos-bank/partitioned": null}}})
    );
    let state = state.lock().unwrap();
    assert!(state.labelled.is_empty() && state.policies.is_empty());
}

#[tokio::test]
async fn a_split_labels_the_minority_together() {
    let (_paxos, backend, api, state) = setup(0, 5, None).await;
    let shutdown = CancellationToken::new();
    let hold = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            chaos::inject_with(
                inject_args("partition --partition split --target 3 --duration 60s --no-dry-run"),
                &backend,
                shutdown,
            )
            .await
        })
    };
    // Held: the minority {3, 4} is labelled (they hear each other through the policy's second
    // rule); then Ctrl-C heals it at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while state.lock().unwrap().labelled.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", api.lines());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state.lock().unwrap().labelled, ["bank-3", "bank-4"]);
    shutdown.cancel();
    let said = hold.await.unwrap().unwrap();
    assert_eq!(said[1], "interrupted: healing now");
    assert!(state.lock().unwrap().labelled.is_empty());
    assert!(state.lock().unwrap().policies.is_empty());
}

#[tokio::test]
async fn what_a_killed_chaos_left_is_healed_by_the_next() {
    let (_paxos, backend, api, state) = setup(1, 3, None).await;
    {
        let mut state = state.lock().unwrap();
        state.labelled.push("bank-2".into());
        state.policies.push("chaos-partition".into());
    }
    assert_eq!(backend.heal_leftovers().await.unwrap(), 2);
    assert_eq!(
        api.lines(),
        [
            LIST_LABELLED,
            "PATCH /api/v1/namespaces/bank/pods/bank-2",
            LIST_POLICIES,
            &format!("DELETE {POLICIES}/chaos-partition"),
        ]
    );
    assert_eq!(backend.heal_leftovers().await.unwrap(), 0, "nothing left");
}

#[tokio::test]
async fn faults_that_need_processes_or_links_are_refused_without_a_call() {
    let (_paxos, backend, api, _) = setup(1, 3, None).await;
    for (line, says) in [
        ("pause --duration 1s", "not a Kubernetes fault"),
        ("loss --duration 1s", "not a Kubernetes fault"),
        ("delay --duration 1s", "not a Kubernetes fault"),
        (
            "partition --partition one-way --duration 1s",
            "needs per-link rules",
        ),
        (
            "partition --partition bridge --duration 1s",
            "needs per-link rules",
        ),
    ] {
        let err = inject(&backend, &format!("{line} --target 0 --no-dry-run"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains(says), "{line}: {err:#}");
    }
    assert_eq!(mutating(&api.calls()), [], "nothing changed");
}

/// `chaos run` on Kubernetes: evictions a budget refuses are recorded as refused (and never
/// forced), and a pod that started just now is spared (--min-age).
#[tokio::test]
async fn a_run_records_refused_evictions_and_spares_young_pods() {
    let (_paxos, backend, api, state) = setup(1, 3, Some(0)).await;
    state
        .lock()
        .unwrap()
        .refuse_evictions
        .store(true, Ordering::SeqCst);
    let words = "chaos run --kubernetes --no-dry-run --faults evict --target random --every 100ms --jitter 0 --min-age 60s --for 1500ms --listen 127.0.0.1:0";
    let Command::Run(args) = Cli::parse_from(words.split_whitespace()).command else {
        panic!("run");
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let status = chaos::run_with(
        args,
        backend,
        Some("token".into()),
        listener,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(status["injected"], 0, "{status:#}");
    let faults = status["faults"].as_array().unwrap();
    assert!(faults.len() >= 5, "about one every 100 ms: {status:#}");
    for fault in faults {
        assert_eq!(fault["fault"], "evict");
        assert_ne!(fault["target"], 0, "bank-0 started just now: {status:#}");
        let error = fault["error"].as_str().unwrap();
        assert!(
            error.starts_with("the API server refused to evict pod bank-")
                && error.contains("disruption budget"),
            "{error}"
        );
    }
    let calls = mutating(&api.calls());
    assert!(
        calls.iter().all(|c| c.path().ends_with("/eviction")),
        "nothing but evictions: {:?}",
        api.lines()
    );
}
