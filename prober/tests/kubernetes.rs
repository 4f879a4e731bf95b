//! The prober on Kubernetes, against a fake API server: `kube::Client` over a `tower-test` mock
//! service that answers the real Kubernetes HTTP API and records every request, and stub paxos
//! processes on 127.0.0.2-4 (three "pod IPs" sharing one port, as pods do).
//!
//! What it checks: the nodes come from the pods the label selector lists (ids from StatefulSet
//! ordinals), the leader from asking their paxos processes, the load balancer's target from the
//! Service's selector; a retarget is exactly one JSON merge patch of the Service's
//! `statefulset.kubernetes.io/pod-name` selector; and the whole recovery (gray failure of the
//! leader: elect a healthy pod, wait for it to lead, patch the Service) makes exactly the calls
//! the RBAC rules of the manifests grant: list pods, get and patch one Service.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paxos::Mode;
use prober::control::{Control, KubernetesControl, KubernetesTarget};
use prober::probe::{Failure, Outcome};
use prober::recovery::Recovery;
use testkit::{Call, FakeApiServer, StubPaxos};

/// The fake API server, and the Service's selector as patched.
struct Fake {
    api: FakeApiServer,
    pod_in_selector: Arc<Mutex<String>>,
}

const PODS: [(&str, &str); 4] = [
    ("bank-0", "127.0.0.2"),
    ("bank-1", "127.0.0.3"),
    ("bank-2", "127.0.0.4"),
    // Not a StatefulSet pod (no ordinal): skipped.
    ("bank-canary", "127.0.0.5"),
];

fn pod_list() -> serde_json::Value {
    let items: Vec<_> = PODS
        .iter()
        .map(|(name, ip)| {
            serde_json::json!({
                "metadata": {
                    "name": name,
                    "namespace": "bank",
                    "labels": {"app.kubernetes.io/name": "bank", "statefulset.kubernetes.io/pod-name": name},
                },
                "status": {"phase": "Running", "podIP": ip},
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

fn service(pod: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bank", "namespace": "bank"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app.kubernetes.io/name": "bank", "statefulset.kubernetes.io/pod-name": pod},
            "ports": [{"port": 80, "targetPort": 8080}],
        },
    })
}

/// A fake API server with the bank's pods and its Service (selecting bank-0 at first).
fn fake_api_server() -> (kube::Client, Fake) {
    let pod_in_selector = Arc::new(Mutex::new("bank-0".to_owned()));
    let selected = pod_in_selector.clone();
    let (client, api) = FakeApiServer::start("bank", move |call| {
        match (call.method.as_str(), call.path()) {
            ("GET", "/api/v1/namespaces/bank/pods") => (200, pod_list()),
            ("GET", "/api/v1/namespaces/bank/services/bank") => {
                (200, service(&selected.lock().unwrap()))
            }
            ("PATCH", "/api/v1/namespaces/bank/services/bank") => {
                let pod = call.body.as_ref().unwrap()["spec"]["selector"]
                    ["statefulset.kubernetes.io/pod-name"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                *selected.lock().unwrap() = pod.clone();
                (200, service(&pod))
            }
            _ => (404, testkit::status(404, "NotFound", "not found")),
        }
    });
    (
        client,
        Fake {
            api,
            pod_in_selector,
        },
    )
}

fn control(client: kube::Client, paxos_port: u16) -> Control {
    control_with(client, 8080, paxos_port)
}

fn control_with(client: kube::Client, public_port: u16, paxos_port: u16) -> Control {
    Control::Kubernetes(KubernetesControl::new(
        client,
        reqwest::Client::new(),
        "token".into(),
        KubernetesTarget {
            namespace: "bank".into(),
            service: "bank".into(),
            pod_selector: "app.kubernetes.io/name=bank".into(),
            public_port,
            paxos_port,
        },
    ))
}

fn ok() -> Outcome {
    Outcome {
        latency: Duration::from_millis(1),
        failure: None,
        detail: None,
    }
}

fn failed() -> Outcome {
    Outcome {
        latency: Duration::from_millis(500),
        failure: Some(Failure::Timeout),
        detail: Some("no answer within 500ms".into()),
    }
}

const LIST_PODS: &str =
    "/api/v1/namespaces/bank/pods?&labelSelector=app.kubernetes.io%2Fname%3Dbank";
const THE_SERVICE: &str = "/api/v1/namespaces/bank/services/bank";

fn get_call(uri: &str) -> Call {
    Call {
        method: "GET".into(),
        uri: uri.into(),
        content_type: None,
        body: None,
    }
}

fn patch_to(pod: &str) -> Call {
    Call {
        method: "PATCH".into(),
        uri: THE_SERVICE.into(),
        content_type: Some("application/merge-patch+json".into()),
        body: Some(
            serde_json::json!({"spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod}}}),
        ),
    }
}

#[tokio::test]
async fn the_view_comes_from_the_pods_their_paxos_processes_and_the_service() {
    let paxos = StubPaxos::start(1).await;
    let (client, fake) = fake_api_server();
    let control = control(client, paxos.port);
    let view = control.view().await.unwrap();
    assert_eq!(view.mode, Mode::Leader);
    assert_eq!(view.leader, Some(1), "the paxos processes say node 1 leads");
    assert_eq!(view.target, Some(0), "the Service selects bank-0");
    let urls: Vec<_> = view
        .nodes
        .iter()
        .map(|n| (n.id, n.public_url.as_str()))
        .collect();
    assert_eq!(
        urls,
        [
            (0, "http://127.0.0.2:8080"),
            (1, "http://127.0.0.3:8080"),
            (2, "http://127.0.0.4:8080")
        ]
    );
    assert_eq!(
        view.nodes[2].paxos_url,
        format!("http://127.0.0.4:{}", paxos.port)
    );
    // A second view within the listing's lifetime asks the paxos processes, not the API server.
    paxos.leader.store(2, Ordering::SeqCst);
    assert_eq!(control.view().await.unwrap().leader, Some(2));
    assert_eq!(
        fake.api.calls(),
        [get_call(LIST_PODS), get_call(THE_SERVICE)]
    );
}

#[tokio::test]
async fn a_retarget_is_one_merge_patch_of_the_services_pod_name_selector() {
    let paxos = StubPaxos::start(1).await;
    let (client, fake) = fake_api_server();
    let control = control(client, paxos.port);
    control.retarget(2).await.unwrap();
    assert_eq!(
        fake.api.calls(),
        [
            get_call(LIST_PODS),
            get_call(THE_SERVICE),
            patch_to("bank-2")
        ]
    );
    assert_eq!(*fake.pod_in_selector.lock().unwrap(), "bank-2");
    assert_eq!(control.view().await.unwrap().target, Some(2));
    let err = control.retarget(9).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("no bank pod is node 9"),
        "{err:#}"
    );
}

/// Records the message of every event inside a `prober.outage` span, with the thread it was
/// emitted on (each `#[tokio::test]` runs on a thread of its own).
#[derive(Clone, Default)]
struct OutageEvents(Arc<Mutex<Vec<(std::thread::ThreadId, String)>>>);

/// The events of `prober.outage` spans this test's thread emitted. One global subscriber for
/// the whole binary: per-thread subscribers race on tracing's global callsite cache when tests
/// run in parallel (an event seen first where no subscriber listens is disabled everywhere).
fn outage_events() -> impl Fn() -> Vec<String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    static EVENTS: std::sync::OnceLock<OutageEvents> = std::sync::OnceLock::new();
    let events = EVENTS.get_or_init(|| {
        let events = OutageEvents::default();
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(events.clone()),
        )
        .expect("the only global subscriber");
        events
    });
    let me = std::thread::current().id();
    move || {
        (events.0.lock().unwrap().iter())
            .filter(|(thread, _)| *thread == me)
            .map(|(_, message)| message.clone())
            .collect()
    }
}

impl<S> tracing_subscriber::Layer<S> for OutageEvents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let in_outage = (ctx.event_scope(event).into_iter().flatten())
            .any(|span| span.name() == "prober.outage");
        if !in_outage {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        (self.0.lock().unwrap()).push((std::thread::current().id(), message.0));
    }
}

/// Gray failure on Kubernetes: the leader pod's node container hangs while its paxos container
/// leads. After two failed probes the prober elects a healthy pod and patches the Service to it.
/// Every step is an event of the outage's span (what OTLP exports as span events).
#[tokio::test]
async fn a_gray_failure_of_the_leader_pod_elects_a_healthy_pod_and_patches_the_service() {
    let events = outage_events();
    let paxos = StubPaxos::start(0).await;
    let (client, fake) = fake_api_server();
    let control = control(client, paxos.port);
    let mut recovery = Recovery::new(2, Duration::from_secs(10), true);
    let view = control.view().await.unwrap();
    assert_eq!((view.leader, view.target), (Some(0), Some(0)));
    let nodes = [(0, failed()), (1, ok()), (2, ok())];
    assert_eq!(
        recovery
            .after_probe(&failed(), Some(&view), &nodes, &control)
            .await,
        None
    );
    assert!(
        paxos.elections.lock().unwrap().is_empty(),
        "one failure: wait"
    );
    assert_eq!(
        recovery
            .after_probe(&failed(), Some(&view), &nodes, &control)
            .await,
        None
    );
    assert_eq!(
        *paxos.elections.lock().unwrap(),
        [1],
        "the first healthy pod"
    );
    let view = control.view().await.unwrap();
    assert_eq!((view.leader, view.target), (Some(1), Some(1)));
    let record = (recovery
        .after_probe(&ok(), Some(&view), &nodes, &control)
        .await)
        .expect("the outage ends");
    assert_eq!(record.action, Some("retargeted"));
    assert_eq!(record.elected_by, "prober");
    assert_eq!(record.new_leader, Some(1));
    assert_eq!(record.leader_before, Some(0));
    assert_eq!(record.failed_probes, 2);
    for step in [
        record.election_started,
        record.leader_known,
        record.retargeted,
        record.first_success,
    ] {
        assert!(
            step.is_some_and(|at| at >= record.first_failure),
            "{record:?}"
        );
    }
    assert_eq!(
        fake.api.calls(),
        [
            get_call(LIST_PODS),
            get_call(THE_SERVICE),
            patch_to("bank-1")
        ],
        "list pods, get and patch the one Service: nothing else"
    );
    let events = events();
    let steps = [
        "a probe of the entry point failed",
        "election started",
        "new leader",
        "retargeted the load balancer",
        "probes pass again",
    ];
    assert_eq!(events.len(), steps.len(), "{events:?}");
    for (event, step) in events.iter().zip(steps) {
        assert!(event.starts_with(step), "{events:?}");
    }
}

/// The cluster elected a leader by itself (the old leader pod was deleted): nothing moves the
/// Service on Kubernetes, so once probes fail the prober patches it to the leader, without an
/// election.
#[tokio::test]
async fn a_leader_elected_by_the_cluster_gets_the_service_without_an_election() {
    let paxos = StubPaxos::start(2).await;
    let (client, fake) = fake_api_server();
    let control = control(client, paxos.port);
    let mut recovery = Recovery::new(2, Duration::from_secs(10), true);
    let view = control.view().await.unwrap();
    assert_eq!((view.leader, view.target), (Some(2), Some(0)));
    let nodes = [(0, failed()), (1, ok()), (2, ok())];
    for _ in 0..2 {
        recovery
            .after_probe(&failed(), Some(&view), &nodes, &control)
            .await;
    }
    assert!(paxos.elections.lock().unwrap().is_empty());
    let record = (recovery
        .after_probe(&ok(), Some(&view), &nodes, &control)
        .await)
        .unwrap();
    assert_eq!(
        (record.action, record.elected_by, record.new_leader),
        (Some("retargeted"), "cluster", Some(2))
    );
    assert_eq!(fake.api.calls().last(), Some(&patch_to("bank-2")));
}

#[test]
fn node_ids_are_statefulset_ordinals() {
    assert_eq!(KubernetesControl::ordinal("bank-0"), Some(0));
    assert_eq!(KubernetesControl::ordinal("paxos-bank-12"), Some(12));
    assert_eq!(KubernetesControl::ordinal("bank-canary"), None);
    assert_eq!(KubernetesControl::ordinal("bank"), None);
}

/// Stub `node` processes of the three pods on one port: `GET /readyz` answers 200.
async fn stub_ready_nodes() -> u16 {
    'port: for _ in 0..20 {
        let first = tokio::net::TcpListener::bind((testkit::STUB_IPS[0], 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for ip in &testkit::STUB_IPS[1..] {
            match tokio::net::TcpListener::bind((*ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'port,
            }
        }
        for listener in listeners {
            let app =
                axum::Router::new().route("/readyz", axum::routing::get(|| async { "ready" }));
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        return port;
    }
    panic!("no port free on 127.0.0.2-4");
}

/// The whole prober on Kubernetes, following a leader that moved (a hand-off: the old leader's
/// pod is about to stop): the Service selects bank-0, the paxos processes say bank-2 leads and
/// every pod's node answers. Within a few node rounds the prober patches the Service to bank-2,
/// though the entry point never failed a probe in a way recovery acts on (recovery would need
/// 1,000 failures here): the following alone moved it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prober_moves_the_service_to_a_leader_that_moved_before_anything_fails() {
    use clap::Parser as _;
    let paxos = StubPaxos::start(2).await;
    let public_port = stub_ready_nodes().await;
    let (client, fake) = fake_api_server();
    let control = control_with(client, public_port, paxos.port);
    let config = prober::Config::parse_from([
        "prober",
        // Nothing answers there: the entry probe fails, and recovery waits for 1,000 failures.
        "--target=http://127.0.0.1:9",
        "--kubernetes",
        "--node-interval-ms=100",
        "--interval-ms=1000",
        "--failures-before-recovery=1000",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let prober = tokio::spawn(prober::run_with(
        config,
        control,
        reqwest::Client::new(),
        listener,
        shutdown.clone(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while *fake.pod_in_selector.lock().unwrap() != "bank-2" {
        assert!(
            std::time::Instant::now() < deadline,
            "the Service still selects {}: {:?}",
            fake.pod_in_selector.lock().unwrap(),
            fake.api.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        paxos.elections.lock().unwrap().is_empty(),
        "no election: the cluster had its leader"
    );
    shutdown.cancel();
    prober.await.unwrap().unwrap();
}
