//! What the prober knows of the cluster and does to it, through the testbed's front door: the
//! nodes and the leader (`GET /_testbed/cluster`), an election at a chosen replica (its paxos
//! process's `POST /elect`, with the cluster token) and the load balancer's target
//! (`POST /_testbed/target`). On Kubernetes the same three come from the pods and the Service.

use std::time::Duration;

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

/// The cluster as `/_testbed/cluster` describes it (the fields the prober reads).
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterView {
    /// Leader or leaderless.
    pub mode: Mode,
    /// The leader, when one is known (leader mode).
    pub leader: Option<u32>,
    /// Every node.
    pub nodes: Vec<NodeView>,
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

    /// The nodes, the mode and the leader.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let response = self
            .http
            .get(format!("{}/_testbed/cluster", self.front_door))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Asks node `node`'s paxos process to start an election now.
    pub async fn elect(&self, node: &NodeView) -> anyhow::Result<()> {
        let paxos = PaxosClient::with_http(self.http.clone(), &node.paxos_url, self.token.as_str());
        tokio::time::timeout(Duration::from_secs(2), paxos.elect()).await??;
        Ok(())
    }

    /// Points the front door at `node` (it keeps following the leader by itself afterwards).
    pub async fn retarget(&self, node: u32) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_testbed/target", self.front_door))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "node": node, "auto": true }))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
