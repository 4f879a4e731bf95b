//! What the prober knows of the cluster and does to it: the nodes and the leader, an election at
//! a chosen replica (its paxos process's `POST /elect`, with the cluster token), and the load
//! balancer's target. Two backends:
//!
//! - [`TestbedControl`]: the testbed's front door (`GET /_testbed/cluster`,
//!   `POST /_testbed/target`);
//! - [`KubernetesControl`]: the bank pods (listed by label through the Kubernetes API; the
//!   leader found by asking their paxos processes) and the external Service, whose selector is
//!   patched to the leader pod's `statefulset.kubernetes.io/pod-name` label.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use paxos::Mode;
use paxos::client::PaxosClient;
use serde::Deserialize;

/// One node as the prober sees it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct NodeView {
    /// Its id.
    pub id: u32,
    /// Its public URL (the direct probe goes there).
    pub public_url: String,
    /// Its paxos process (elections go there).
    pub paxos_url: String,
}

/// The cluster: its mode, its leader and its nodes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    /// Leader or leaderless.
    pub mode: Mode,
    /// The leader, when one is known (leader mode).
    pub leader: Option<u32>,
    /// The node the load balancer sends traffic to (leader mode), when known.
    #[serde(default)]
    pub target: Option<u32>,
    /// Every node.
    pub nodes: Vec<NodeView>,
}

/// How long one control-plane call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The control plane the prober acts through.
#[derive(Clone)]
pub enum Control {
    /// The testbed's front door.
    Testbed(TestbedControl),
    /// A Kubernetes cluster.
    Kubernetes(KubernetesControl),
}

impl Control {
    /// The nodes, the mode and the leader.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        match self {
            Control::Testbed(control) => control.view().await,
            Control::Kubernetes(control) => control.view().await,
        }
    }

    /// Asks `node`'s paxos process to start an election now.
    pub async fn elect(&self, node: &NodeView) -> anyhow::Result<()> {
        let (http, token) = match self {
            Control::Testbed(c) => (&c.http, &c.token),
            Control::Kubernetes(c) => (&c.http, &c.token),
        };
        let paxos = PaxosClient::with_http(http.clone(), &node.paxos_url, token.as_str());
        tokio::time::timeout(CALL_TIMEOUT, paxos.elect())
            .await
            .context("no answer")??;
        Ok(())
    }

    /// Points the load balancer at node `node`.
    pub async fn retarget(&self, node: u32) -> anyhow::Result<()> {
        match self {
            Control::Testbed(control) => control.retarget(node).await,
            Control::Kubernetes(control) => control.retarget(node).await,
        }
    }
}

/// The testbed's control plane.
#[derive(Clone, Debug)]
pub struct TestbedControl {
    http: reqwest::Client,
    front_door: String,
    token: String,
}

impl TestbedControl {
    /// Control through the front door at `front_door`, with the cluster token.
    pub fn new(http: reqwest::Client, front_door: &str, token: String) -> TestbedControl {
        TestbedControl {
            http,
            front_door: front_door.trim_end_matches('/').to_owned(),
            token,
        }
    }

    async fn view(&self) -> anyhow::Result<ClusterView> {
        let response = self
            .http
            .get(format!("{}/_testbed/cluster", self.front_door))
            .timeout(CALL_TIMEOUT)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Points the front door at `node` (it keeps following the leader by itself afterwards).
    async fn retarget(&self, node: u32) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_testbed/target", self.front_door))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "node": node, "auto": true }))
            .timeout(CALL_TIMEOUT)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// The label the StatefulSet controller puts on each of its pods, with the pod's name: the one
/// label that selects exactly one bank pod.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

/// Where the bank runs on Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesTarget {
    /// The namespace of the pods and the Service.
    pub namespace: String,
    /// The external Service whose selector follows the leader.
    pub service: String,
    /// The label selector of the bank pods (`app.kubernetes.io/name=bank`).
    pub pod_selector: String,
    /// The port of each pod's `node` container (public API).
    pub public_port: u16,
    /// The port of each pod's `paxos` container.
    pub paxos_port: u16,
}

/// How long a listing of the pods and the Service is used before the API server is asked
/// again (the leader is asked of the paxos processes on every view: it changes faster, and
/// asking it does not load the API server).
pub const LISTING_TTL: Duration = Duration::from_secs(5);

/// The Kubernetes control plane: pods by label, the leader from their paxos processes, the
/// external Service's selector.
#[derive(Clone)]
pub struct KubernetesControl {
    client: kube::Client,
    http: reqwest::Client,
    token: String,
    target: KubernetesTarget,
    listing: Arc<Mutex<Option<Listing>>>,
}

/// What the API server said, and when.
#[derive(Clone, Debug)]
struct Listing {
    at: std::time::Instant,
    nodes: Vec<NodeView>,
    /// Node id to pod name.
    pods: BTreeMap<u32, String>,
    /// The node the Service selects, if it selects one pod.
    service_target: Option<u32>,
}

impl KubernetesControl {
    /// Control through `client` (in a pod: `kube::Client::try_default()`, the pod's service
    /// account).
    pub fn new(
        client: kube::Client,
        http: reqwest::Client,
        token: String,
        target: KubernetesTarget,
    ) -> KubernetesControl {
        KubernetesControl {
            client,
            http,
            token,
            target,
            listing: Arc::default(),
        }
    }

    /// The node id of a StatefulSet pod: its ordinal (`bank-2` is node 2).
    pub fn ordinal(pod_name: &str) -> Option<u32> {
        pod_name.rsplit_once('-')?.1.parse().ok()
    }

    async fn view(&self) -> anyhow::Result<ClusterView> {
        let listing = self.listing(false).await?;
        let (mode, leader) = self.ask_for_leader(&listing.nodes).await;
        Ok(ClusterView {
            mode: mode.context("no bank pod's paxos process answered")?,
            leader,
            target: listing.service_target,
            nodes: listing.nodes,
        })
    }

    /// The pods and the Service's target: the cached listing unless it is older than
    /// [`LISTING_TTL`] or `fresh` is asked for.
    async fn listing(&self, fresh: bool) -> anyhow::Result<Listing> {
        if let Some(listing) = self.listing.lock().expect("listing lock").as_ref()
            && !fresh
            && listing.at.elapsed() < LISTING_TTL
        {
            return Ok(listing.clone());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.target.namespace);
        let params = ListParams::default().labels(&self.target.pod_selector);
        let list = tokio::time::timeout(CALL_TIMEOUT, pods.list(&params))
            .await
            .context("listing the bank pods: no answer")?
            .context("listing the bank pods")?;
        let mut nodes = Vec::new();
        let mut names = BTreeMap::new();
        for pod in list.items {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let Some(id) = Self::ordinal(&name) else {
                tracing::debug!(pod = name, "not a StatefulSet pod: skipped");
                continue;
            };
            let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            };
            nodes.push(NodeView {
                id,
                public_url: format!("http://{host}:{}", self.target.public_port),
                paxos_url: format!("http://{host}:{}", self.target.paxos_port),
            });
            names.insert(id, name);
        }
        nodes.sort_by_key(|n| n.id);
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.target.namespace);
        let service = tokio::time::timeout(CALL_TIMEOUT, services.get(&self.target.service))
            .await
            .context("reading the Service: no answer")?
            .with_context(|| format!("reading Service {}", self.target.service))?;
        let selected = (service.spec.as_ref())
            .and_then(|spec| spec.selector.as_ref())
            .and_then(|selector| selector.get(POD_NAME_LABEL));
        let service_target = selected.and_then(|pod| Self::ordinal(pod));
        let listing = Listing {
            at: std::time::Instant::now(),
            nodes,
            pods: names,
            service_target,
        };
        *self.listing.lock().expect("listing lock") = Some(listing.clone());
        Ok(listing)
    }

    /// Asks every node's paxos process for its status: the mode, and the leader (a node that
    /// says it leads; if several do, a stale one has not heard of the newer ballot yet: the
    /// one with the highest ballot).
    async fn ask_for_leader(&self, nodes: &[NodeView]) -> (Option<Mode>, Option<u32>) {
        let urls: Vec<String> = nodes.iter().map(|n| n.paxos_url.clone()).collect();
        let replies =
            paxos::client::survey(&self.http, &self.token, &urls, Duration::from_millis(500)).await;
        let mode = replies.first().map(|r| r.mode);
        (mode, paxos::client::leader_of(&replies))
    }

    /// Patches the external Service's selector to the pod of node `node`: a JSON merge patch
    /// of one label, which leaves the Service's other selector labels as they are.
    async fn retarget(&self, node: u32) -> anyhow::Result<()> {
        let mut listing = self.listing(false).await?;
        if !listing.pods.contains_key(&node) {
            listing = self.listing(true).await?;
        }
        let pod =
            (listing.pods.get(&node)).with_context(|| format!("no bank pod is node {node}"))?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.target.namespace);
        let patch = serde_json::json!({ "spec": { "selector": { POD_NAME_LABEL: pod } } });
        let params = PatchParams::default();
        tokio::time::timeout(
            CALL_TIMEOUT,
            services.patch(&self.target.service, &params, &Patch::Merge(&patch)),
        )
        .await
        .context("patching the Service: no answer")?
        .with_context(|| format!("patching Service {}", self.target.service))?;
        if let Some(listing) = self.listing.lock().expect("listing lock").as_mut() {
            listing.service_target = Some(node);
        }
        Ok(())
    }
}
