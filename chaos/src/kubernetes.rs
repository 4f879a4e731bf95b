//! Chaos on Kubernetes, through the API server (`kube`), like chaoskube and Chaos Mesh:
//!
//! - `kill`: the pod deleted with a grace period of 0 (its containers get SIGKILL; the
//!   StatefulSet controller makes a new pod of the same name);
//! - `shutdown`: the pod deleted with its own grace period (SIGTERM, a graceful stop);
//! - `evict`: an Eviction of the pod (`policy/v1`, what `kubectl drain` sends): the API server
//!   refuses it with 429 while a PodDisruptionBudget allows no disruption, and chaos then reports
//!   the refusal ([`Refused`]) instead of forcing its way;
//! - `partition` (`isolate`, or `split` for a minority of several pods): the pods of the cut-off
//!   side get the label [`PARTITION_LABEL`], and one NetworkPolicy, [`POLICY_NAME`], selects
//!   them and admits only each other and the public port. Kubernetes NetworkPolicies only ever
//!   admit, so this works with the bank's own policy (`deploy/kubernetes`), which admits peer
//!   traffic only from bank pods *without* the label, and selects only those: the majority stops
//!   hearing the labelled pods, and they stop hearing the majority.
//!
//! Pause, loss, delay and the one-way and bridge shapes need a node's processes or its links
//! (the testbed's `--netns` and `--proxies`): asked on Kubernetes, they are refused with a clear
//! error, not approximated. The pods' ids are their StatefulSet ordinals (`bank-2` is node 2);
//! the leader is found by asking their paxos processes, as the prober does.
//!
//! What a partition changed lives in the API server, not in a file: healing (and a new run's
//! cleanup after a kill -9) deletes the policies chaos manages (label
//! `app.kubernetes.io/managed-by=paxos-bank-chaos`) and removes the label from every pod.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::cluster::{ClusterView, NodeView, PodRef};
use crate::fault::{Fault, Injected, Partition, Shape};

/// The label chaos puts on the pods a partition cuts off.
pub const PARTITION_LABEL: &str = "chaos.paxos-bank/partitioned";

/// The one NetworkPolicy a partition creates.
pub const POLICY_NAME: &str = "chaos-partition";

/// The label on everything chaos creates in the cluster.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "paxos-bank-chaos");

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the bank runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesTarget {
    /// The namespace of the bank pods.
    pub namespace: String,
    /// Their label selector.
    pub pod_selector: String,
    /// The port of each pod's `node` container (public API): a partition leaves it open.
    pub public_port: u16,
    /// The port of each pod's `paxos` container.
    pub paxos_port: u16,
}

/// The API server refused a disruption (an eviction while a PodDisruptionBudget allows none).
#[derive(Debug, thiserror::Error)]
#[error("the API server refused to evict pod {pod}: {message}")]
pub struct Refused {
    /// The pod.
    pub pod: String,
    /// What the API server said.
    pub message: String,
}

/// Chaos's hold on a Kubernetes cluster.
#[derive(Clone)]
pub struct KubernetesChaos {
    client: kube::Client,
    http: reqwest::Client,
    token: String,
    target: KubernetesTarget,
}

/// Seconds between two Kubernetes timestamps, as a duration (zero if `later` is earlier).
fn between(
    earlier: &k8s_openapi::jiff::Timestamp,
    later: &k8s_openapi::jiff::Timestamp,
) -> Duration {
    let seconds = later
        .as_millisecond()
        .saturating_sub(earlier.as_millisecond());
    Duration::from_millis(u64::try_from(seconds).unwrap_or(0))
}

impl KubernetesChaos {
    /// Chaos through `client` (in a pod: `kube::Client::try_default()`, its service account);
    /// `token` is the cluster token the paxos processes ask of `/status`.
    pub fn new(
        client: kube::Client,
        http: reqwest::Client,
        token: String,
        target: KubernetesTarget,
    ) -> KubernetesChaos {
        KubernetesChaos {
            client,
            http,
            token,
            target,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.target.namespace)
    }

    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.target.namespace)
    }

    /// The bank pods (by the label selector) and the leader (asked of their paxos processes).
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let params = ListParams::default().labels(&self.target.pod_selector);
        let list = tokio::time::timeout(CALL_TIMEOUT, self.pods().list(&params))
            .await
            .context("listing the bank pods: no answer")?
            .context("listing the bank pods")?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut nodes = Vec::new();
        for pod in list.items {
            let (Some(name), Some(uid)) = (pod.metadata.name.clone(), pod.metadata.uid.clone())
            else {
                continue;
            };
            let Some(id) = ordinal(&name) else {
                tracing::debug!(pod = name, "not a StatefulSet pod: skipped");
                continue;
            };
            let status = pod.status.unwrap_or_default();
            let ready = (status.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True");
            // The youngest running container: a restarted container is still catching up.
            let started: Vec<_> = (status.container_statuses.iter().flatten())
                .map(|c| {
                    (c.state.as_ref())
                        .and_then(|s| s.running.as_ref())
                        .and_then(|r| r.started_at.as_ref())
                })
                .collect();
            let age = if started.is_empty() || started.iter().any(Option::is_none) {
                Duration::ZERO
            } else {
                (started.iter().flatten())
                    .map(|t| between(&t.0, &now))
                    .min()
                    .unwrap_or_default()
            };
            let ip = status.pod_ip.unwrap_or_default();
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            nodes.push(NodeView {
                id,
                role: "down".into(),
                ready,
                internal_url: format!("http://{host}:{}", self.target.public_port),
                paxos_url: format!("http://{host}:{}", self.target.paxos_port),
                node_pid: 0,
                paxos_pid: 0,
                netns: None,
                ip,
                proxy_url: None,
                pod: Some(PodRef { name, uid, age }),
            });
        }
        nodes.sort_by_key(|n| n.id);
        let urls: Vec<String> = (nodes.iter())
            .filter(|n| !n.ip.is_empty())
            .map(|n| n.paxos_url.clone())
            .collect();
        let replies =
            paxos::client::survey(&self.http, &self.token, &urls, Duration::from_millis(500)).await;
        let leader = paxos::client::leader_of(&replies);
        for reply in &replies {
            if let Some(node) = nodes.iter_mut().find(|n| n.id == reply.status.id) {
                node.role = if Some(node.id) == leader {
                    "leader".into()
                } else if reply.mode == paxos::Mode::Leaderless {
                    "replica".into()
                } else {
                    "follower".into()
                };
            }
        }
        let mode = (replies.first().map(|r| r.mode))
            .context("no bank pod's paxos process answered (is --k8s-paxos-port right?)")?;
        Ok(ClusterView {
            mode,
            leader,
            data_dir: String::new(),
            token_file: None,
            nodes,
        })
    }

    /// Injects `fault` at node `target`.
    pub async fn inject(
        &self,
        fault: Fault,
        view: &ClusterView,
        target: u32,
        shape: Shape,
    ) -> anyhow::Result<Injected> {
        let node = (view.nodes.iter().find(|n| n.id == target))
            .with_context(|| format!("no node {target}"))?;
        let pod = node.pod.as_ref().context("not a Kubernetes pod")?;
        let mut injected = Injected {
            pod_uid: Some(pod.uid.clone()),
            ..Injected::default()
        };
        match fault {
            Fault::Kill | Fault::Shutdown => {
                let params = if fault == Fault::Kill {
                    DeleteParams::default().grace_period(0)
                } else {
                    DeleteParams::default()
                };
                tokio::time::timeout(CALL_TIMEOUT, self.pods().delete(&pod.name, &params))
                    .await
                    .context("deleting the pod: no answer")?
                    .with_context(|| format!("deleting pod {}", pod.name))?;
            }
            Fault::Evict => {
                let eviction = serde_json::json!({
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": { "name": pod.name, "namespace": self.target.namespace },
                });
                let answer = tokio::time::timeout(
                    CALL_TIMEOUT,
                    self.pods().create_subresource::<_, serde_json::Value>(
                        "eviction",
                        &pod.name,
                        &PostParams::default(),
                        &eviction,
                    ),
                )
                .await
                .context("evicting the pod: no answer")?;
                match answer {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 429 => {
                        return Err(Refused {
                            pod: pod.name.clone(),
                            message: status.message.clone(),
                        }
                        .into());
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("evicting pod {}", pod.name));
                    }
                }
            }
            Fault::Partition => {
                let cut_off = self.cut_off(view, target, shape.partition)?;
                // The policy first: a pod labelled before it exists would hear everyone (no
                // policy selects it) for a moment.
                let policy = self.policy();
                let created = tokio::time::timeout(
                    CALL_TIMEOUT,
                    self.policies().create(&PostParams::default(), &policy),
                )
                .await
                .context("creating the NetworkPolicy: no answer")?;
                match created {
                    Ok(_) => {}
                    // Left by a run that was killed: the same policy, reused.
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(err) => return Err(err).context("creating the NetworkPolicy"),
                }
                injected.policy = Some(POLICY_NAME.into());
                for name in cut_off {
                    self.label(&name, true).await?;
                    injected.labelled.push(name);
                }
            }
            Fault::Pause | Fault::Loss | Fault::Delay => anyhow::bail!(
                "{fault} is not a Kubernetes fault: it needs the node's processes or links \
                 (testbed up --netns or --proxies); on Kubernetes chaos kills, shuts down, \
                 evicts and partitions pods"
            ),
        }
        Ok(injected)
    }

    /// The pods a partition of shape `partition` around `target` cuts off from the others.
    fn cut_off(
        &self,
        view: &ClusterView,
        target: u32,
        partition: Partition,
    ) -> anyhow::Result<Vec<String>> {
        let ids: Vec<u32> = view.nodes.iter().map(|n| n.id).collect();
        let minority: Vec<u32> = match partition {
            Partition::Isolate => vec![target],
            Partition::Split => {
                // The target's side: every node the target still hears.
                let lost: Vec<u32> = (partition.cuts(&ids, target).into_iter())
                    .filter(|&(receiver, _)| receiver == target)
                    .map(|(_, sender)| sender)
                    .collect();
                ids.iter()
                    .copied()
                    .filter(|id| !lost.contains(id))
                    .collect()
            }
            Partition::OneWay | Partition::Bridge => anyhow::bail!(
                "a {partition:?} partition needs per-link rules (testbed up --netns); \
                 on Kubernetes chaos isolates a pod or splits off a minority"
            ),
        };
        minority
            .into_iter()
            .map(|id| {
                (view.nodes.iter().find(|n| n.id == id))
                    .and_then(|n| n.pod.as_ref())
                    .map(|p| p.name.clone())
                    .with_context(|| format!("no pod for node {id}"))
            })
            .collect()
    }

    /// The partition's NetworkPolicy: it selects the labelled pods and admits only each other
    /// (all ports) and anyone on the public port (clients, the prober, Prometheus).
    pub fn policy(&self) -> NetworkPolicy {
        let labelled = serde_json::json!({ "matchLabels": { PARTITION_LABEL: "true" } });
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": POLICY_NAME,
                "namespace": self.target.namespace,
                "labels": { MANAGED_BY.0: MANAGED_BY.1 },
            },
            "spec": {
                "podSelector": labelled,
                "policyTypes": ["Ingress"],
                "ingress": [
                    { "ports": [{ "protocol": "TCP", "port": self.target.public_port }] },
                    { "from": [{ "podSelector": labelled }] },
                ],
            },
        }))
        .expect("a valid NetworkPolicy")
    }

    /// Puts [`PARTITION_LABEL`] on pod `name` (`on`), or takes it off: a JSON merge patch of
    /// one label.
    async fn label(&self, name: &str, on: bool) -> anyhow::Result<()> {
        let value = if on {
            serde_json::json!("true")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({ "metadata": { "labels": { PARTITION_LABEL: value } } });
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            (self.pods()).patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .with_context(|| format!("labelling pod {name}: no answer"))?;
        match answer {
            Ok(_) => Ok(()),
            // The pod is gone (deleted meanwhile): its successor has no label.
            Err(kube::Error::Api(status)) if status.code == 404 && !on => Ok(()),
            Err(err) => Err(err).with_context(|| format!("labelling pod {name}")),
        }
    }

    /// Heals what [`inject`](Self::inject) did: the labels off, then the policy deleted.
    pub async fn heal(&self, injected: &Injected) -> anyhow::Result<()> {
        for name in &injected.labelled {
            self.label(name, false).await?;
        }
        if let Some(policy) = &injected.policy {
            self.delete_policy(policy).await?;
        }
        Ok(())
    }

    async fn delete_policy(&self, name: &str) -> anyhow::Result<()> {
        let answer = tokio::time::timeout(
            CALL_TIMEOUT,
            self.policies().delete(name, &DeleteParams::default()),
        )
        .await
        .context("deleting the NetworkPolicy: no answer")?;
        match answer {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(err).with_context(|| format!("deleting NetworkPolicy {name}")),
        }
    }

    /// Heals what an earlier run left (it was killed mid-partition): every pod with the label
    /// loses it, every policy chaos manages is deleted. Returns how many things it healed.
    pub async fn heal_leftovers(&self) -> anyhow::Result<usize> {
        let mut healed = 0;
        let labelled = ListParams::default().labels(PARTITION_LABEL);
        let pods = tokio::time::timeout(CALL_TIMEOUT, self.pods().list(&labelled))
            .await
            .context("listing labelled pods: no answer")?
            .context("listing labelled pods")?;
        for pod in pods.items {
            if let Some(name) = pod.metadata.name {
                self.label(&name, false).await?;
                healed += 1;
            }
        }
        let managed = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let policies = tokio::time::timeout(CALL_TIMEOUT, self.policies().list(&managed))
            .await
            .context("listing chaos's NetworkPolicies: no answer")?
            .context("listing chaos's NetworkPolicies")?;
        for policy in policies.items {
            if let Some(name) = policy.metadata.name {
                self.delete_policy(&name).await?;
                healed += 1;
            }
        }
        Ok(healed)
    }
}

/// The node id of a StatefulSet pod: its ordinal (`bank-2` is node 2).
pub fn ordinal(pod_name: &str) -> Option<u32> {
    pod_name.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_name_nodes() {
        assert_eq!(ordinal("bank-0"), Some(0));
        assert_eq!(ordinal("paxos-bank-12"), Some(12));
        assert_eq!(ordinal("bank-canary"), None);
        assert_eq!(ordinal("bank"), None);
    }
}
