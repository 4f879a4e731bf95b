//! The Kubernetes manifests of `k8s/`, checked offline (no API server can run here):
//!
//! - `kubectl kustomize` renders every overlay; `kubernetes-validate --strict` accepts every
//!   object of a built-in kind for Kubernetes 1.33;
//! - every object parses into its typed `k8s-openapi` struct and serialises back to the same
//!   JSON (an unknown or misspelt field is lost on the way, and fails);
//! - consistency with the code: every container runs a binary the Dockerfile builds, with a
//!   command line (its arguments, and its environment turned into flags) that the binary's own
//!   parser accepts; every variable set is one the binary reads; probes use real paths on the
//!   ports the processes listen on; Service selectors match the pods and their target ports
//!   exist; the PodDisruptionBudget keeps a majority; the peer lists have one URL per replica;
//! - the RBAC rules are exactly the calls the prober and chaos make (driven against a fake API
//!   server that records them, as in their own tests);
//! - the Dockerfile: multi-stage, pinned bases, a numeric non-root USER, no secrets, every
//!   binary the manifests run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory as _;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const OVERLAYS: [&str; 6] = [
    "overlays/leader",
    "overlays/leaderless",
    "overlays/gke-firestore",
    "bootstrap/leader",
    "bootstrap/leaderless",
    "bootstrap/gke-firestore",
];

fn tool_or_skip(tool: &str, install: &str) -> bool {
    if Command::new(tool).arg("--help").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {tool} is missing: .ci/run must install it ({install})"
    );
    eprintln!("\n*** SKIPPED: {tool} not found ({install}) ***\n");
    false
}

/// `kubectl kustomize k8s/<overlay>`: its objects, as JSON.
fn render(overlay: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("k8s").join(overlay))
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .collect()
}

fn rendered() -> Option<BTreeMap<&'static str, Vec<Value>>> {
    if !tool_or_skip("kubectl", "the Kubernetes CLI") {
        return None;
    }
    Some(OVERLAYS.iter().map(|o| (*o, render(o))).collect())
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_overlay_renders_and_passes_strict_schema_validation() {
    let Some(all) = rendered() else { return };
    if !tool_or_skip("kubernetes-validate", "pip install kubernetes-validate") {
        return;
    }
    for (overlay, objects) in &all {
        let kinds: BTreeSet<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for kind in [
            "Namespace",
            "ConfigMap",
            "StatefulSet",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "Deployment",
            "ServiceAccount",
            "Role",
            "RoleBinding",
        ] {
            assert!(kinds.contains(kind), "{overlay} renders no {kind}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rendered.yaml");
        let docs: Vec<String> = objects
            .iter()
            // The Prometheus Operator's kinds have no schema in kubernetes-validate.
            .filter(|o| o["apiVersion"] != "monitoring.coreos.com/v1")
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        std::fs::write(&file, docs.join("\n---\n")).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", "1.33"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict {overlay}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Parses `value` as `T` and back: what does not survive is a field `T` does not have.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Value {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("{}: {err}", value["metadata"]["name"]));
    serde_json::to_value(typed).unwrap()
}

/// Drops nulls, and `apiVersion` and `kind` below the top (kustomize writes them on a
/// StatefulSet's volumeClaimTemplates, the typed struct always does: neither is a field of ours).
fn normalize(value: &Value) -> Value {
    fn walk(value: &Value, top: bool) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| top || (k.as_str() != "apiVersion" && k.as_str() != "kind"))
                    .map(|(k, v)| (k.clone(), walk(v, false)))
                    .filter(|(_, v)| !v.is_null())
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| walk(v, false)).collect()),
            other => other.clone(),
        }
    }
    walk(value, true)
}

#[test]
fn every_object_round_trips_through_its_typed_struct() {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let Some(all) = rendered() else { return };
    for (overlay, objects) in &all {
        for object in objects {
            let back = match object["kind"].as_str().unwrap() {
                "Namespace" => round_trip::<Namespace>(object),
                "ConfigMap" => round_trip::<ConfigMap>(object),
                "Service" => round_trip::<Service>(object),
                "ServiceAccount" => round_trip::<ServiceAccount>(object),
                "StatefulSet" => round_trip::<StatefulSet>(object),
                "Deployment" => round_trip::<Deployment>(object),
                "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(object),
                "NetworkPolicy" => round_trip::<NetworkPolicy>(object),
                "Role" => round_trip::<Role>(object),
                "RoleBinding" => round_trip::<RoleBinding>(object),
                "PodMonitor" => continue,
                kind => panic!("{overlay}: a {kind} this test does not know"),
            };
            assert_eq!(
                normalize(&back),
                normalize(object),
                "{overlay}: {} {} has a field its type does not",
                object["kind"],
                object["metadata"]["name"]
            );
        }
    }
}

/// The environment variables a binary reads (its clap arguments' `env`), by variable.
fn env_flags(command: &clap::Command) -> BTreeMap<String, String> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect()
}

/// The binary a container runs, and its parser.
fn parser(command: &str) -> (clap::Command, &'static str) {
    match command {
        "/usr/local/bin/node" => (node::config::Config::command(), "node"),
        "/usr/local/bin/paxos" => (paxos::runtime::Cli::command(), "paxos"),
        "/usr/local/bin/prober" => (prober::Config::command(), "prober"),
        "/usr/local/bin/chaos" => (chaos::Cli::command(), "chaos"),
        other => panic!("a container runs {other}: not a binary of the image"),
    }
}

/// Every container of `pod` (a pod template spec), with its environment resolved: literal
/// values, the ConfigMaps of `objects` (envFrom), `fieldRef`s (the pod index becomes 0).
fn containers<'a>(pod: &'a Value, objects: &[Value]) -> Vec<(&'a Value, BTreeMap<String, String>)> {
    pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|container| {
            let mut env = BTreeMap::new();
            for from in container["envFrom"].as_array().into_iter().flatten() {
                let name = from["configMapRef"]["name"].as_str().unwrap();
                let map = find(objects, "ConfigMap", name);
                for (k, v) in map["data"].as_object().unwrap() {
                    env.insert(k.clone(), v.as_str().unwrap().to_owned());
                }
            }
            for var in container["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().unwrap().to_owned();
                let value = if let Some(value) = var["value"].as_str() {
                    value.to_owned()
                } else if var["valueFrom"]["fieldRef"]["fieldPath"]
                    == "metadata.labels['apps.kubernetes.io/pod-index']"
                {
                    "0".to_owned()
                } else {
                    panic!("{name}: a value from {}", var["valueFrom"]);
                };
                env.insert(name, value);
            }
            (container, env)
        })
        .collect()
}

/// Variables a container may set that no flag reads: the Google client's own.
const FOREIGN_ENV: [&str; 2] = ["GOOGLE_APPLICATION_CREDENTIALS", "RUST_LOG"];

fn pod_templates(objects: &[Value]) -> Vec<(&Value, &Value)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "StatefulSet" || o["kind"] == "Deployment")
        .map(|o| (o, &o["spec"]["template"]))
        .collect()
}

fn listen_port(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn containers_run_real_binaries_with_flags_and_variables_they_accept() {
    let Some(all) = rendered() else { return };
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for (overlay, objects) in &all {
        for (workload, template) in pod_templates(objects) {
            let name = workload["metadata"]["name"].as_str().unwrap();
            for (container, env) in containers(&template["spec"], objects) {
                let command = container["command"][0].as_str().unwrap();
                let (parser, binary) = parser(command);
                assert!(
                    dockerfile.contains(&format!("target/release/{binary}")),
                    "the Dockerfile does not build {binary}"
                );
                let flags = env_flags(&parser);
                let mut argv = vec![binary.to_owned()];
                argv.extend(
                    (container["args"].as_array().into_iter().flatten())
                        .map(|a| a.as_str().unwrap().to_owned()),
                );
                // chaos reads its variables after the subcommand: `chaos run --flag`.
                let subcommand = (binary == "chaos").then(|| argv.get(1).cloned()).flatten();
                let sub_flags = subcommand
                    .as_ref()
                    .map(|sub| env_flags(parser.find_subcommand(sub).expect("a chaos subcommand")));
                for (var, value) in &env {
                    let flag = sub_flags
                        .as_ref()
                        .and_then(|f| f.get(var))
                        .or_else(|| flags.get(var));
                    match flag {
                        Some(flag) => argv.push(format!("--{flag}={value}")),
                        None => assert!(
                            FOREIGN_ENV.contains(&var.as_str()),
                            "{overlay}: {name}/{}: {binary} reads no {var}",
                            container["name"]
                        ),
                    }
                }
                let parsed = parser.clone().try_get_matches_from(&argv);
                assert!(
                    parsed.is_ok(),
                    "{overlay}: {name}/{}: {binary} rejects {argv:?}: {}",
                    container["name"],
                    parsed.unwrap_err()
                );
                // Probes: real paths, on a port the process listens on.
                let ports: BTreeMap<&str, u64> = (container["ports"].as_array().into_iter())
                    .flatten()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap(),
                            p["containerPort"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                let listens: BTreeSet<u64> = env
                    .iter()
                    .filter(|(k, _)| k.ends_with("LISTEN"))
                    .map(|(_, v)| listen_port(v))
                    .chain(
                        argv.iter()
                            .filter_map(|a| a.strip_prefix("--listen="))
                            .map(listen_port),
                    )
                    .collect();
                for port in ports.values() {
                    assert!(
                        listens.contains(port),
                        "{overlay}: {name}/{}: port {port} is not one {binary} listens on ({listens:?})",
                        container["name"]
                    );
                }
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let probe = &container[probe];
                    if probe.is_null() {
                        continue;
                    }
                    let (port, path) = if let Some(http) = probe.get("httpGet") {
                        (&http["port"], http["path"].as_str())
                    } else {
                        (&probe["tcpSocket"]["port"], None)
                    };
                    let port = port.as_str().unwrap();
                    assert!(
                        ports.contains_key(port),
                        "{name}: probe on unknown port {port}"
                    );
                    if let Some(path) = path {
                        assert!(
                            ["/healthz", "/readyz"].contains(&path),
                            "{name}: probe path {path}"
                        );
                    }
                }
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
                assert!(
                    container["resources"]["requests"].is_object()
                        && container["resources"]["limits"]["memory"].is_string(),
                    "{name}: requests and a memory limit"
                );
            }
            let pod_security = &template["spec"]["securityContext"];
            assert_eq!(pod_security["runAsNonRoot"], true, "{name}");
            assert!(pod_security["runAsUser"].as_u64().is_some_and(|u| u > 0));
        }
    }
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| &labels[k] == v)
}

#[test]
fn services_disruption_budget_and_peers_agree_with_the_pods() {
    let Some(all) = rendered() else { return };
    for (overlay, objects) in &all {
        let bank = find(objects, "StatefulSet", "bank");
        let replicas = bank["spec"]["replicas"].as_u64().unwrap();
        let labels = &bank["spec"]["template"]["metadata"]["labels"];
        let container_ports: BTreeSet<&str> = (bank["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter())
        .flat_map(|c| c["ports"].as_array().unwrap())
        .map(|p| p["name"].as_str().unwrap())
        .collect();
        for service in objects.iter().filter(|o| o["kind"] == "Service") {
            let name = service["metadata"]["name"].as_str().unwrap();
            let mut selector = service["spec"]["selector"].clone();
            // The leader's pod-name label is on the pods the StatefulSet controller makes.
            let pod = selector
                .as_object_mut()
                .unwrap()
                .remove("statefulset.kubernetes.io/pod-name");
            assert!(selects(&selector, labels), "{overlay}: Service {name}");
            if let Some(pod) = pod {
                let pod = pod.as_str().unwrap();
                assert!(
                    (0..replicas).any(|i| pod == format!("bank-{i}")),
                    "{overlay}: Service {name} selects {pod}"
                );
                let mode = &find(objects, "ConfigMap", "bank-config")["data"]["BANK_MODE"];
                assert_eq!(
                    mode, "leader",
                    "{overlay}: only leader mode selects one pod"
                );
            }
            for port in service["spec"]["ports"].as_array().unwrap() {
                let target = port["targetPort"].as_str().unwrap();
                assert!(
                    container_ports.contains(target),
                    "{overlay}: Service {name} targets {target}"
                );
            }
        }
        let peers_service = find(objects, "Service", "bank-peers");
        assert_eq!(peers_service["spec"]["clusterIP"], "None");
        assert_eq!(peers_service["spec"]["publishNotReadyAddresses"], true);
        assert_eq!(bank["spec"]["serviceName"], "bank-peers");
        let budget = find(objects, "PodDisruptionBudget", "bank");
        assert!(selects(&budget["spec"]["selector"]["matchLabels"], labels));
        let unavailable = budget["spec"]["maxUnavailable"]
            .as_u64()
            .expect("an integer");
        assert!(
            replicas - unavailable > replicas / 2,
            "{overlay}: {unavailable} unavailable of {replicas} loses the majority"
        );
        for (map, var, port) in [
            ("bank-paxos-config", "PAXOS_PEERS", 9180),
            ("bank-node-config", "BANK_PEERS_PUBLIC", 8080),
        ] {
            let config = &find(objects, "ConfigMap", map)["data"];
            let urls: Vec<&str> = config[var].as_str().unwrap().split(',').collect();
            let expected: Vec<String> = (0..replicas)
                .map(|i| format!("http://bank-{i}.bank-peers:{port}"))
                .collect();
            assert_eq!(urls, expected, "{overlay}: {var} for {replicas} replicas");
        }
        let config = &find(objects, "ConfigMap", "bank-paxos-config")["data"];
        let state = config["PAXOS_INITIAL_CLUSTER_STATE"].as_str().unwrap();
        let bootstrap = overlay.starts_with("bootstrap/");
        assert_eq!(
            state,
            if bootstrap { "new" } else { "existing" },
            "{overlay}"
        );
        // Chaos stays a dry run unless a component says otherwise.
        let chaos = find(objects, "Deployment", "chaos");
        let args = chaos["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        assert!(args.iter().any(|a| a == "--kubernetes"));
        assert!(!args.iter().any(|a| a == "--no-dry-run"), "{overlay}");
    }
}

/// `(resource, verb, name)` of a request to the API server (`name` only where the verb is on
/// one object: get, patch, delete).
fn permission(call: &testkit::Call) -> (String, String, Option<String>) {
    let path: Vec<&str> = call.path().trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] or /apis/GROUP/V/namespaces/NS/...
    let rest = if path[0] == "api" {
        &path[4..]
    } else {
        &path[5..]
    };
    let group = if path[0] == "api" { "" } else { path[1] };
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_owned(),
    };
    let resource = if group.is_empty() {
        resource
    } else {
        format!("{group}:{resource}")
    };
    let name = rest.get(1).map(|n| (*n).to_owned());
    let verb = match (call.method.as_str(), &name, rest.get(2)) {
        ("GET", None, _) => "list",
        ("GET", Some(_), _) => "get",
        ("POST", _, Some(_)) | ("POST", None, _) => "create",
        ("PATCH", _, _) => "patch",
        ("DELETE", _, _) => "delete",
        (method, _, _) => panic!("{method} {}", call.uri),
    };
    let name = if matches!(verb, "get" | "patch" | "delete") && rest.get(2).is_none() {
        name
    } else {
        None
    };
    (resource, verb.to_owned(), name)
}

/// What a Role's rules grant, as `(resource, verb, name)`; `name` None where the rule names no
/// object.
fn grants(role: &Value) -> BTreeSet<(String, String, Option<String>)> {
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let group = rule["apiGroups"][0].as_str().unwrap();
        for resource in rule["resources"].as_array().unwrap() {
            let resource = resource.as_str().unwrap();
            let resource = if group.is_empty() {
                resource.to_owned()
            } else {
                format!("{group}:{resource}")
            };
            for verb in rule["verbs"].as_array().unwrap() {
                let names: Vec<Option<String>> = match rule["resourceNames"].as_array() {
                    Some(names) => names
                        .iter()
                        .map(|n| Some(n.as_str().unwrap().to_owned()))
                        .collect(),
                    None => vec![None],
                };
                for name in names {
                    grants.insert((resource.clone(), verb.as_str().unwrap().to_owned(), name));
                }
            }
        }
    }
    grants
}

/// Turns the calls' object names into what the Role grants: a rule without `resourceNames`
/// grants the verb on every object.
fn needed(
    calls: &[testkit::Call],
    granted: &BTreeSet<(String, String, Option<String>)>,
) -> BTreeSet<(String, String, Option<String>)> {
    calls
        .iter()
        .map(permission)
        .map(|(resource, verb, name)| {
            if granted.contains(&(resource.clone(), verb.clone(), name.clone())) {
                (resource, verb, name)
            } else {
                (resource, verb, None)
            }
        })
        .collect()
}

fn pod_list() -> Value {
    let items: Vec<Value> = testkit::STUB_IPS
        .iter()
        .enumerate()
        .map(|(id, ip)| {
            serde_json::json!({
                "metadata": {"name": format!("bank-{id}"), "namespace": "bank", "uid": format!("u{id}"),
                    "labels": {"app.kubernetes.io/name": "bank"}},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
            })
        })
        .collect();
    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// A permissive fake API server: lists the bank pods (and nothing labelled by chaos), returns
/// the Service, accepts every change.
fn fake() -> (kube::Client, testkit::FakeApiServer) {
    testkit::FakeApiServer::start("bank", |call| {
        let path = call.path();
        let body = match (call.method.as_str(), path) {
            ("GET", "/api/v1/namespaces/bank/pods") if call.uri.contains("partitioned") => {
                serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
            }
            ("GET", "/api/v1/namespaces/bank/pods") => pod_list(),
            ("GET", p) if p.ends_with("/networkpolicies") => {
                serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "metadata": {}, "items": []})
            }
            (_, p) if p.contains("/services/") => serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bank"},
                "spec": {"selector": {"app.kubernetes.io/name": "bank", "statefulset.kubernetes.io/pod-name": "bank-0"}},
            }),
            ("PATCH", p) if p.starts_with("/api/v1/namespaces/bank/pods/") => serde_json::json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": p.rsplit('/').next().unwrap()},
            }),
            (_, p) if p.ends_with("/eviction") => {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
            }
            _ => call.body.clone().unwrap_or_else(|| {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200})
            }),
        };
        (200, body)
    })
}

#[tokio::test]
async fn rbac_grants_exactly_what_the_prober_and_chaos_call() {
    let Some(all) = rendered() else { return };
    let objects = &all["overlays/leader"];
    let paxos = testkit::StubPaxos::start(1).await;
    // The prober: its view, then a retarget (what a recovery does).
    let (client, api) = fake();
    let control = prober::control::Control::Kubernetes(prober::control::KubernetesControl::new(
        client,
        reqwest::Client::new(),
        "token".into(),
        prober::control::KubernetesTarget {
            namespace: "bank".into(),
            service: "bank".into(),
            pod_selector: "app.kubernetes.io/name=bank".into(),
            public_port: 8080,
            paxos_port: paxos.port,
        },
    ));
    control.view().await.unwrap();
    control.retarget(2).await.unwrap();
    let role = grants(find(objects, "Role", "prober"));
    assert_eq!(
        needed(&api.calls(), &role),
        role,
        "prober: {:?}",
        api.lines()
    );
    // Chaos: every fault it has on Kubernetes, each healed, and the cleanup at start.
    let (client, api) = fake();
    let backend = chaos::Backend::Kubernetes(chaos::kubernetes::KubernetesChaos::new(
        client,
        reqwest::Client::new(),
        "token".into(),
        chaos::kubernetes::KubernetesTarget {
            namespace: "bank".into(),
            pod_selector: "app.kubernetes.io/name=bank".into(),
            public_port: 8080,
            paxos_port: paxos.port,
        },
    ));
    for fault in ["kill", "shutdown", "evict", "partition --duration 10ms"] {
        let line = format!("chaos inject {fault} --kubernetes --no-dry-run --target 2");
        let cli = <chaos::Cli as clap::Parser>::parse_from(line.split_whitespace());
        let chaos::Command::Inject(args) = cli.command else {
            panic!("inject");
        };
        chaos::inject_with(args, &backend, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    }
    let role = grants(find(objects, "Role", "chaos"));
    assert_eq!(
        needed(&api.calls(), &role),
        role,
        "chaos: {:?}",
        api.lines()
    );
    for service_account in ["prober", "chaos"] {
        let binding = find(objects, "RoleBinding", service_account);
        assert_eq!(binding["subjects"][0]["name"], service_account);
        assert_eq!(binding["roleRef"]["name"], service_account);
        let deployment = find(objects, "Deployment", service_account);
        assert_eq!(
            deployment["spec"]["template"]["spec"]["serviceAccountName"],
            service_account
        );
    }
}

#[test]
fn the_dockerfile_has_the_basics() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    for from in &froms {
        let image = from.split_whitespace().next().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty()
                && tag != "latest"
                && (tag.contains('.') || image.contains('@') || tag.contains("nonroot")),
            "a pinned base, not {image}"
        );
    }
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u > 0),
        "a numeric non-root USER, not {user}"
    );
    for secret in [
        "cluster-token",
        "metrics-token",
        "key.json",
        "ARG TOKEN",
        "ENV BANK_CLUSTER_TOKEN",
    ] {
        assert!(!text.contains(secret), "the Dockerfile mentions {secret}");
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "target/"),
        ".dockerignore keeps target/ out"
    );
    for binary in ["node", "paxos", "prober", "chaos"] {
        assert!(
            text.contains(&format!("-p {binary}")),
            "the image builds {binary}"
        );
    }
}
