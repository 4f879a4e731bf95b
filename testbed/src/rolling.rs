//! A rolling restart: every node restarted one at a time, the everyday maintenance of a
//! replicated service (a new binary, a new flag), without failing a request.
//!
//! For each node, followers first and the leader last (one hand-off in all):
//! 1. a leader hands its lead to the follower that has decided the most (`POST /elect` there,
//!    what the paxos process also does by itself on SIGTERM) and the front door follows;
//! 2. the front door stops sending it new requests (`draining`) and waits for the ones in flight;
//! 3. SIGTERM to its paxos and node processes (a graceful stop: the node drains), which the
//!    supervisor starts again at once;
//! 4. it is ready again and its paxos process has decided at least what the others had when it
//!    stopped (caught up); then the front door may send it requests again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use paxos::client::PaxosClient;

use crate::frontdoor::FrontDoor;

/// What happened to one node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// The node.
    pub id: u32,
    /// It led when its turn came (and handed its lead to `handed_to`).
    pub handed_to: Option<u32>,
    /// Milliseconds its requests in flight took to finish once it was draining.
    pub drained_ms: u64,
    /// Milliseconds from the SIGTERM to ready and caught up again.
    pub back_ms: u64,
}

/// The longest each step waits.
const STEP_LIMIT: Duration = Duration::from_secs(60);

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < STEP_LIMIT {
        if done().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{what}: not within {STEP_LIMIT:?}")
}

/// The decided index of the paxos processes of `ids` that answer, by node id
/// (`paxos::client::survey`: all asked at once, 500 ms each).
async fn decided(door: &FrontDoor, ids: &[u32]) -> std::collections::BTreeMap<u32, u64> {
    let urls: Vec<String> = (ids.iter())
        .map(|&id| door.nodes[id as usize].paxos_url.clone())
        .collect();
    paxos::client::survey(&door.client, &door.token, &urls, Duration::from_millis(500))
        .await
        .into_iter()
        .map(|reply| (reply.status.id, reply.status.decided))
        .collect()
}

fn leader(door: &FrontDoor) -> Option<u32> {
    let leader = door.leader.load(Ordering::SeqCst);
    (leader != usize::MAX).then_some(leader as u32)
}

/// Restarts every node of `door`'s cluster in turn; `progress` hears a line per step.
pub async fn rolling_restart(
    door: &FrontDoor,
    mut progress: impl FnMut(String),
) -> anyhow::Result<Vec<NodeReport>> {
    let n = door.nodes.len() as u32;
    let mut order: Vec<u32> = (0..n).filter(|&id| Some(id) != leader(door)).collect();
    order.extend(leader(door));
    progress(format!(
        "rolling restart of {n} nodes, in this order: {order:?}"
    ));
    let mut reports = Vec::new();
    for id in order {
        let node = &door.nodes[id as usize];
        let mut handed_to = None;
        if door.mode == paxos::Mode::Leader && leader(door) == Some(id) {
            let others: Vec<u32> = (0..n).filter(|&other| other != id).collect();
            let all = decided(door, &others).await;
            let successor = (others.into_iter())
                .filter(|&other| door.nodes[other as usize].ready.load(Ordering::SeqCst))
                .max_by_key(|other| all.get(other).copied())
                .context("no ready follower to hand the lead to")?;
            let paxos = PaxosClient::with_http(
                door.client.clone(),
                &door.nodes[successor as usize].paxos_url,
                door.token.as_str(),
            );
            paxos
                .elect()
                .await
                .context("asking the successor to lead")?;
            let took = until(
                "the successor leads and the front door follows",
                || async move {
                    leader(door) == Some(successor)
                        && door.target.load(Ordering::SeqCst) == successor as usize
                },
            )
            .await?;
            progress(format!(
                "node {id}: handed the lead to node {successor} ({} ms)",
                took.as_millis()
            ));
            handed_to = Some(successor);
        }
        node.draining.store(true, Ordering::SeqCst);
        let drained = until("its requests in flight finish", || async move {
            node.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        let drained = match drained {
            Ok(drained) => drained,
            Err(err) => {
                node.draining.store(false, Ordering::SeqCst);
                return Err(err);
            }
        };
        let others: Vec<u32> = (0..n).filter(|&other| other != id).collect();
        let target = decided(door, &others)
            .await
            .into_values()
            .max()
            .unwrap_or(0);
        let old = (node.paxos.pid(), node.node.pid());
        let stopped = Instant::now();
        node.paxos.terminate_and_restart();
        node.node.terminate_and_restart();
        progress(format!(
            "node {id}: drained ({} ms), stopped (SIGTERM)",
            drained.as_millis()
        ));
        let back = until("it is back, ready and caught up", || async move {
            let new = (node.paxos.pid(), node.node.pid());
            let restarted = new.0.is_some() && new.1.is_some() && new.0 != old.0 && new.1 != old.1;
            restarted
                && node.ready.load(Ordering::SeqCst)
                && decided(door, &[id])
                    .await
                    .get(&id)
                    .is_some_and(|&d| d >= target)
        })
        .await;
        node.draining.store(false, Ordering::SeqCst);
        back?;
        let back_ms = stopped.elapsed().as_millis() as u64;
        progress(format!(
            "node {id}: back, ready and caught up to slot {target} ({back_ms} ms)"
        ));
        reports.push(NodeReport {
            id,
            handed_to,
            drained_ms: drained.as_millis() as u64,
            back_ms,
        });
    }
    progress("rolling restart done".to_owned());
    Ok(reports)
}

/// `testbed restart --rolling`: asks the front door for a rolling restart and prints its
/// progress as it comes.
pub async fn restart_command(args: crate::cli::RestartArgs) -> anyhow::Result<()> {
    let front = args.cluster.trim_end_matches('/');
    let http = reqwest::Client::new();
    let token = match plumbing::token_from_env().filter(|t| !t.trim().is_empty()) {
        Some(token) => token,
        None => {
            let file = match args.cluster_token_file {
                Some(file) => file,
                None => {
                    let info: crate::frontdoor::ClusterInfo = (http
                        .get(format!("{front}/_testbed/cluster")))
                    .send()
                    .await
                    .with_context(|| format!("asking {front} for the cluster"))?
                    .error_for_status()?
                    .json()
                    .await?;
                    info.token_file
                        .context(
                            "the cluster's token came from its environment: set BANK_CLUSTER_TOKEN",
                        )?
                        .into()
                }
            };
            plumbing::read_cluster_token(None, Some(&file))?
        }
    };
    let mut response = (http.post(format!("{front}/_testbed/rolling-restart")))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("POST {front}/_testbed/rolling-restart"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{}: {}",
        response.status(),
        response.text().await.unwrap_or_default().trim()
    );
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await? {
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(report) = line.strip_prefix("ok ") {
                let reports: Vec<NodeReport> = serde_json::from_str(report)?;
                println!("done: {} nodes restarted", reports.len());
                return Ok(());
            }
            if let Some(err) = line.strip_prefix("error: ") {
                anyhow::bail!("the rolling restart stopped: {err}");
            }
            println!("{line}");
        }
    }
    anyhow::bail!("the front door stopped answering before the restart finished")
}
