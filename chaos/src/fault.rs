//! The faults and how they are injected and healed.
//!
//! - `kill`: SIGKILL of the node's `node` and/or `paxos` process (the testbed's supervisor
//!   restarts them, as Kubernetes would restart a container);
//! - `shutdown`: `POST /shutdown` to them with the cluster token: what the original system's
//!   chaos did, a graceful stop;
//! - `pause`: SIGSTOP, then SIGCONT after the fault's duration: a frozen process, not a dead one
//!   (a stuck disk, a long GC pause, a VM migration);
//! - `partition`: a real network partition of a `testbed up --netns` cluster: nftables rules in
//!   the receiving nodes' namespaces drop what the other side sends (shapes in [`Partition`]);
//! - `loss`: the same rules drop a share of the packets only (`numgen random`);
//! - `evict`: Kubernetes only ([`crate::kubernetes`]);
//! - `delay`: the link proxies of a `testbed up --proxies` cluster hold back every chunk on the
//!   target's links (both directions) for a while (no `tc netem` in this kernel).
//!
//! Chaos signals a PID only if `/proc` shows a bank process there, and it writes every pause and
//! every namespace it cut to `<data-dir>/chaos-active.json` before it acts, so that whatever stops
//! chaos (even kill -9) the next chaos run against the cluster heals them first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterView, NodeView, is_bank_process, proc_stat};

/// A fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL.
    Kill,
    /// `POST /shutdown`.
    Shutdown,
    /// SIGSTOP for the fault's duration, then SIGCONT.
    Pause,
    /// Links cut for the fault's duration (`--netns` clusters).
    Partition,
    /// A share of the packets on the target's links dropped for the fault's duration.
    Loss,
    /// The target's links slowed down for the fault's duration (`--proxies` clusters).
    Delay,
    /// An eviction through the Kubernetes API (refused while a PodDisruptionBudget allows no
    /// disruption).
    Evict,
}

impl Fault {
    /// Every fault, for series at zero.
    pub const ALL: [Fault; 7] = [
        Fault::Kill,
        Fault::Shutdown,
        Fault::Pause,
        Fault::Partition,
        Fault::Loss,
        Fault::Delay,
        Fault::Evict,
    ];

    /// Its name, the `fault` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Shutdown => "shutdown",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Loss => "loss",
            Fault::Delay => "delay",
            Fault::Evict => "evict",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Fault {
    /// True for faults that last until healed (they need a duration).
    pub fn holds(self) -> bool {
        matches!(
            self,
            Fault::Pause | Fault::Partition | Fault::Loss | Fault::Delay
        )
    }
}

/// The shape of a partition around the target node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// The target hears no other node and no other node hears it.
    #[default]
    Isolate,
    /// The target hears no other node; they still hear it.
    OneWay,
    /// A minority (the target and the nodes after it, fewer than half) and the majority.
    Split,
    /// The other nodes in two halves that cannot hear each other; the target hears and is heard
    /// by both (it is the bridge).
    Bridge,
}

impl Partition {
    /// Which node hears nothing from which: `(receiver, sender)` pairs, for a cluster of `ids`
    /// around `target`.
    pub fn cuts(self, ids: &[u32], target: u32) -> Vec<(u32, u32)> {
        let others: Vec<u32> = ids.iter().copied().filter(|&id| id != target).collect();
        let both = |a: &[u32], b: &[u32]| -> Vec<(u32, u32)> {
            let mut cuts = Vec::new();
            for &x in a {
                for &y in b {
                    cuts.push((x, y));
                    cuts.push((y, x));
                }
            }
            cuts
        };
        match self {
            Partition::Isolate => both(&[target], &others),
            Partition::OneWay => others.iter().map(|&o| (target, o)).collect(),
            Partition::Split => {
                let n = ids.len();
                let start = ids.iter().position(|&id| id == target).unwrap_or(0);
                let size = n.saturating_sub(1).div_euclid(2).max(1);
                let minority: Vec<u32> = (0..size).map(|k| ids[(start + k) % n]).collect();
                let majority: Vec<u32> = ids
                    .iter()
                    .copied()
                    .filter(|id| !minority.contains(id))
                    .collect();
                both(&minority, &majority)
            }
            Partition::Bridge => {
                let half = others.len() / 2;
                both(&others[..half], &others[half..])
            }
        }
    }
}

/// Which of a node's two processes a fault hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Processes {
    /// The `node` process (the bank): its `paxos` process keeps going (a gray failure).
    Node,
    /// The `paxos` process.
    Paxos,
    /// Both: the whole pod.
    #[default]
    Both,
}

impl Processes {
    fn pids(self, node: &NodeView) -> Vec<u32> {
        let pids = match self {
            Processes::Node => vec![node.node_pid],
            Processes::Paxos => vec![node.paxos_pid],
            Processes::Both => vec![node.node_pid, node.paxos_pid],
        };
        pids.into_iter().filter(|&pid| pid > 1).collect()
    }

    fn urls(self, node: &NodeView) -> Vec<&str> {
        match self {
            Processes::Node => vec![node.internal_url.as_str()],
            Processes::Paxos => vec![node.paxos_url.as_str()],
            Processes::Both => vec![node.internal_url.as_str(), node.paxos_url.as_str()],
        }
    }
}

/// One process, by PID and start time: a paused one (enough to continue it, and only it,
/// later), or the chaos process that holds a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// Its PID.
    pub pid: u32,
    /// Its start time (clock ticks after boot): the PID's identity.
    pub start_ticks: u64,
}

/// What a fault left to heal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injected {
    /// Processes paused (a pause).
    pub paused: Vec<Paused>,
    /// Namespaces holding chaos's nftables table (a partition or loss).
    #[serde(default)]
    pub cut: Vec<String>,
    /// Links slowed down (a delay): the sender's proxy and the receiver.
    #[serde(default)]
    pub delayed: Vec<DelayedLink>,
    /// The NetworkPolicy a Kubernetes partition created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The pods a Kubernetes partition labelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labelled: Vec<String>,
    /// PIDs the fault hit.
    #[serde(skip)]
    pub pids: Vec<u32>,
    /// The uid of the pod the fault hit (Kubernetes): its successor has another.
    #[serde(skip)]
    pub pod_uid: Option<String>,
}

/// One link a delay slowed down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayedLink {
    /// The sending node's link proxy (admin URL).
    pub proxy_url: String,
    /// The receiving node.
    pub to: u32,
}

/// How a fault is shaped beyond its kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Which processes (kill, shutdown, pause).
    pub processes: Processes,
    /// Which links (partition).
    pub partition: Partition,
    /// Percent of packets dropped (loss), 1 to 100.
    pub loss_percent: u8,
    /// Milliseconds each chunk is held on a delayed link, each way (delay).
    pub delay_ms: u64,
}

/// The nftables table chaos owns in a namespace.
pub const NFT_TABLE: &str = "pbchaos";

fn nft_in(namespace: &str, script: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut command = std::process::Command::new("ip");
    command.args(["netns", "exec", namespace, "nft"]).args(args);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|err| {
        anyhow::anyhow!("ip netns exec {namespace} nft: {err} (apt-get install iproute2 nftables)")
    })?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin.write_all(script.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "nft {} in {namespace}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The nftables script that drops what `senders` send into the namespace (all of it, or
/// `percent` of it at random).
pub fn drop_script(senders: &[String], percent: Option<u8>) -> String {
    let matcher = match percent {
        Some(p) if p < 100 => format!("numgen random mod 100 < {p} "),
        _ => String::new(),
    };
    format!(
        "table inet {NFT_TABLE} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    ip saddr {{ {} }} {matcher}drop\n  }}\n}}\n",
        senders.join(", ")
    )
}

fn remove_table(namespace: &str) -> anyhow::Result<()> {
    match nft_in(namespace, None, &["delete", "table", "inet", NFT_TABLE]) {
        // Already gone (healed, or the namespace went with its cluster): nothing to do.
        Err(err)
            if format!("{err}").contains("No such file")
                || format!("{err}").contains("Cannot open network namespace") =>
        {
            Ok(())
        }
        other => other,
    }
}

fn signal(pid: u32, signal: i32) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_bank_process(pid),
        "PID {pid} is not a bank process (the cluster's view is stale?): not signalled"
    );
    // SAFETY: kill(2) has no memory-safety preconditions; the PID was checked just above.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    anyhow::ensure!(
        rc == 0,
        "signal {signal} to PID {pid}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Injects faults into one cluster.
#[derive(Clone, Debug)]
pub struct Injector {
    http: reqwest::Client,
    token: Option<String>,
    record: PathBuf,
    /// This process (PID and start time): whose entries in the record are whose.
    owner: Paused,
}

/// The file, in the cluster's data folder, that lists the processes chaos holds paused.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("chaos-active.json")
}

impl Injector {
    /// An injector; `token` is needed by `shutdown` only; `record` is where it lists the
    /// processes it holds paused ([`record_path`]).
    pub fn new(http: reqwest::Client, token: Option<String>, record: PathBuf) -> Injector {
        let pid = std::process::id();
        let start_ticks = proc_stat(pid).map_or(0, |s| s.start_ticks);
        Injector {
            http,
            token,
            record,
            owner: Paused { pid, start_ticks },
        }
    }

    /// Injects `fault` at node `target` of `view`, shaped by `shape`.
    pub async fn inject(
        &self,
        fault: Fault,
        view: &ClusterView,
        target: u32,
        shape: Shape,
    ) -> anyhow::Result<Injected> {
        let node = (view.nodes.iter().find(|n| n.id == target))
            .ok_or_else(|| anyhow::anyhow!("no node {target}"))?;
        let processes = shape.processes;
        let pids = processes.pids(node);
        match fault {
            Fault::Evict => anyhow::bail!(
                "evict is a Kubernetes fault (an eviction through the API, honouring \
                 PodDisruptionBudgets): on the testbed, shutdown stops a node gracefully"
            ),
            Fault::Delay => {
                let token = (self.token.as_deref())
                    .ok_or_else(|| anyhow::anyhow!("delay needs the cluster token"))?;
                let mut links = Vec::new();
                for (sender, receiver) in Partition::Isolate
                    .cuts(&view.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), target)
                {
                    let sender = (view.nodes.iter().find(|n| n.id == sender))
                        .ok_or_else(|| anyhow::anyhow!("no node {sender}"))?;
                    let proxy_url = sender.proxy_url.clone().ok_or_else(|| {
                        anyhow::anyhow!("delay needs a cluster started with --proxies (testbed up --proxies): node {} has no link proxy", sender.id)
                    })?;
                    links.push(DelayedLink {
                        proxy_url,
                        to: receiver,
                    });
                }
                let injected = Injected {
                    delayed: links,
                    ..Injected::default()
                };
                self.remember(&injected)?;
                for link in &injected.delayed {
                    if let Err(err) = set_delay(&self.http, token, link, shape.delay_ms).await {
                        let _ = self.heal(&injected).await;
                        return Err(err);
                    }
                }
                Ok(injected)
            }
            Fault::Partition | Fault::Loss => {
                let ids: Vec<u32> = view.nodes.iter().map(|n| n.id).collect();
                let cuts = match fault {
                    Fault::Partition => shape.partition.cuts(&ids, target),
                    _ => Partition::Isolate.cuts(&ids, target),
                };
                let percent = (fault == Fault::Loss).then_some(shape.loss_percent);
                let mut senders: std::collections::BTreeMap<String, Vec<String>> =
                    Default::default();
                for (receiver, sender) in cuts {
                    let find = |id: u32| view.nodes.iter().find(|n| n.id == id);
                    let (Some(receiver), Some(sender)) = (find(receiver), find(sender)) else {
                        continue;
                    };
                    let namespace = receiver.netns.clone().ok_or_else(|| {
                        anyhow::anyhow!("{fault} needs a cluster started with --netns (testbed up --netns): node {} has no network namespace", receiver.id)
                    })?;
                    senders
                        .entry(namespace)
                        .or_default()
                        .push(sender.ip.clone());
                }
                let injected = Injected {
                    cut: senders.keys().cloned().collect(),
                    ..Injected::default()
                };
                // Recorded before the first rule: whatever happens next, a later run heals it.
                self.remember(&injected)?;
                for (namespace, from) in &senders {
                    if let Err(err) =
                        nft_in(namespace, Some(&drop_script(from, percent)), &["-f", "-"])
                    {
                        let _ = self.heal(&injected).await;
                        return Err(err);
                    }
                }
                Ok(injected)
            }
            Fault::Kill => {
                anyhow::ensure!(!pids.is_empty(), "node {} has no running process", node.id);
                for &pid in &pids {
                    signal(pid, libc::SIGKILL)?;
                }
                Ok(Injected {
                    pids,
                    ..Injected::default()
                })
            }
            Fault::Pause => {
                anyhow::ensure!(!pids.is_empty(), "node {} has no running process", node.id);
                let mut paused = Vec::new();
                for &pid in &pids {
                    let stat =
                        proc_stat(pid).ok_or_else(|| anyhow::anyhow!("PID {pid} is gone"))?;
                    paused.push(Paused {
                        pid,
                        start_ticks: stat.start_ticks,
                    });
                }
                let injected = Injected {
                    paused,
                    pids,
                    ..Injected::default()
                };
                // Recorded before the first SIGSTOP: whatever happens next, a later run heals it.
                self.remember(&injected)?;
                for entry in &injected.paused {
                    signal(entry.pid, libc::SIGSTOP)?;
                }
                Ok(injected)
            }
            Fault::Shutdown => {
                let token = (self.token.as_deref())
                    .ok_or_else(|| anyhow::anyhow!("shutdown needs the cluster token"))?;
                for url in processes.urls(node) {
                    let url = format!("{url}/shutdown");
                    (self.http.post(&url))
                        .bearer_auth(token)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .map_err(|err| anyhow::anyhow!("POST {url}: {err}"))?
                        .error_for_status()?;
                }
                Ok(Injected {
                    pids,
                    ..Injected::default()
                })
            }
        }
    }

    /// Heals what `injected` left: continues the processes it paused (those still alive and
    /// still the same processes), removes the rules it added.
    pub async fn heal(&self, injected: &Injected) -> anyhow::Result<()> {
        self.heal_now(injected).await?;
        self.forget(injected)
    }

    /// Heals everything a chaos run that is gone recorded and did not heal (it was killed, or
    /// the machine stopped it): run at every start. What a live run holds (a `chaos run` and a
    /// one-shot `chaos inject` against one cluster) is its own to heal and is left alone.
    /// Returns how many processes, namespaces and links it healed.
    pub async fn heal_leftovers(&self) -> anyhow::Result<usize> {
        let record = {
            let _lock = self.lock()?;
            self.recorded()?
        };
        let mut leftovers = Injected::default();
        for entry in record.entries.iter().filter(|e| !e.owner_alive()) {
            leftovers
                .paused
                .extend(entry.injected.paused.iter().cloned());
            leftovers.cut.extend(entry.injected.cut.iter().cloned());
            leftovers
                .delayed
                .extend(entry.injected.delayed.iter().cloned());
        }
        let count = leftovers.paused.len() + leftovers.cut.len() + leftovers.delayed.len();
        if count > 0 {
            tracing::warn!(
                paused = leftovers.paused.len(),
                cut = leftovers.cut.len(),
                delayed = leftovers.delayed.len(),
                "healing what an earlier chaos run left"
            );
            self.heal_now(&leftovers).await?;
        }
        self.forget(&leftovers)?;
        Ok(count)
    }

    fn recorded(&self) -> anyhow::Result<Record> {
        let bytes = match std::fs::read(&self.record) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(err) => anyhow::bail!("reading {}: {err}", self.record.display()),
        };
        if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
            return Ok(record);
        }
        // Written by an older chaos (one list, no owner): a leftover of a run that is gone.
        let injected: Injected = serde_json::from_slice(&bytes)
            .map_err(|err| anyhow::anyhow!("reading {}: {err}", self.record.display()))?;
        Ok(Record {
            entries: vec![Entry {
                owner: None,
                injected,
            }],
        })
    }

    fn write(&self, mut record: Record) -> anyhow::Result<()> {
        record.entries.retain(|e| !e.injected.is_empty());
        if record.entries.is_empty() {
            return match std::fs::remove_file(&self.record) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                _ => Ok(()),
            };
        }
        // Written whole and renamed: a crash leaves the old list or the new one.
        let temporary = self
            .record
            .with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&temporary, serde_json::to_vec(&record)?)?;
        std::fs::rename(&temporary, &self.record)?;
        Ok(())
    }

    /// Holds an exclusive lock (flock) on `<record>.lock` while alive: two chaos processes
    /// against one cluster change the record in turn.
    fn lock(&self) -> anyhow::Result<std::fs::File> {
        use std::os::fd::AsRawFd as _;
        let path = self.record.with_extension("json.lock");
        let file = (std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true))
        .open(&path)
        .map_err(|err| anyhow::anyhow!("opening {}: {err}", path.display()))?;
        // SAFETY: flock(2) on a descriptor this function owns; released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        anyhow::ensure!(
            rc == 0,
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Ok(file)
    }

    fn remember(&self, injected: &Injected) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        let mut record = self.recorded()?;
        let index = match (record.entries.iter()).position(|e| e.owner == Some(self.owner)) {
            Some(index) => index,
            None => {
                record.entries.push(Entry {
                    owner: Some(self.owner),
                    injected: Injected::default(),
                });
                record.entries.len() - 1
            }
        };
        let mine = &mut record.entries[index].injected;
        mine.paused.extend(injected.paused.iter().cloned());
        mine.cut.extend(injected.cut.iter().cloned());
        mine.delayed.extend(injected.delayed.iter().cloned());
        self.write(record)
    }

    fn forget(&self, healed: &Injected) -> anyhow::Result<()> {
        let _lock = self.lock()?;
        let mut record = self.recorded()?;
        for entry in &mut record.entries {
            let active = &mut entry.injected;
            active.paused.retain(|entry| !healed.paused.contains(entry));
            active
                .cut
                .retain(|namespace| !healed.cut.contains(namespace));
            active.delayed.retain(|link| !healed.delayed.contains(link));
        }
        self.write(record)
    }
}

/// `chaos-active.json`: what each chaos process holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    entries: Vec<Entry>,
}

/// What one chaos process holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    /// The chaos process (none: written by an older chaos).
    owner: Option<Paused>,
    #[serde(flatten)]
    injected: Injected,
}

impl Entry {
    fn owner_alive(&self) -> bool {
        self.owner
            .is_some_and(|o| proc_stat(o.pid).is_some_and(|s| s.start_ticks == o.start_ticks))
    }
}

impl Injected {
    fn is_empty(&self) -> bool {
        self.paused.is_empty() && self.cut.is_empty() && self.delayed.is_empty()
    }
}

impl Injector {
    /// Continues the paused processes that are still the same processes; removes chaos's
    /// table from every namespace cut; sets every delayed link back to no delay.
    async fn heal_now(&self, injected: &Injected) -> anyhow::Result<()> {
        for entry in &injected.paused {
            if proc_stat(entry.pid).is_some_and(|s| s.start_ticks == entry.start_ticks) {
                signal(entry.pid, libc::SIGCONT)?;
            }
        }
        for namespace in &injected.cut {
            remove_table(namespace)?;
        }
        if !injected.delayed.is_empty() {
            let token = (self.token.as_deref())
                .ok_or_else(|| anyhow::anyhow!("healing a delay needs the cluster token"))?;
            for link in &injected.delayed {
                match set_delay(&self.http, token, link, 0).await {
                    // The proxy is gone (its cluster stopped): nothing left to heal.
                    Err(err) if format!("{err:#}").contains("error sending request") => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }
}

/// Sets the delay of `link` on its proxy.
async fn set_delay(
    http: &reqwest::Client,
    token: &str,
    link: &DelayedLink,
    delay_ms: u64,
) -> anyhow::Result<()> {
    let url = format!("{}/links/{}", link.proxy_url, link.to);
    (http.put(&url))
        .bearer_auth(token)
        .json(&serde_json::json!({ "delay_ms": delay_ms }))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("PUT {url}: {err}"))?
        .error_for_status()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut cuts: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
        cuts.sort();
        cuts.dedup();
        cuts
    }

    #[test]
    fn partition_shapes_cut_the_right_links() {
        let three = [0, 1, 2];
        assert_eq!(
            sorted(Partition::Isolate.cuts(&three, 1)),
            [(0, 1), (1, 0), (1, 2), (2, 1)]
        );
        assert_eq!(sorted(Partition::OneWay.cuts(&three, 1)), [(1, 0), (1, 2)]);
        assert_eq!(
            sorted(Partition::Split.cuts(&three, 1)),
            sorted(Partition::Isolate.cuts(&three, 1)),
            "with 3 nodes the minority is the target alone"
        );
        assert_eq!(sorted(Partition::Bridge.cuts(&three, 1)), [(0, 2), (2, 0)]);
        let five = [0, 1, 2, 3, 4];
        let split = sorted(Partition::Split.cuts(&five, 3));
        // Minority {3, 4}, majority {0, 1, 2}: 2 x 3 pairs, both ways.
        assert_eq!(split.len(), 12, "{split:?}");
        assert!(split.contains(&(3, 0)) && split.contains(&(0, 4)) && !split.contains(&(3, 4)));
        let bridge = sorted(Partition::Bridge.cuts(&five, 2));
        // Halves {0, 1} and {3, 4}; node 2 hears everyone.
        assert_eq!(bridge.len(), 8, "{bridge:?}");
        assert!(bridge.iter().all(|&(a, b)| a != 2 && b != 2));
    }

    /// A one-shot `chaos inject` starts by healing leftovers: what a live `chaos run` holds is
    /// not a leftover; what a chaos that is gone held is (also in the older, ownerless format).
    #[tokio::test]
    async fn leftovers_are_what_dead_chaos_processes_held_not_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let record = record_path(dir.path());
        let injector = || Injector::new(reqwest::Client::new(), None, record.clone());
        // PIDs no process has: healing them signals nothing.
        let held = |pid: u32| Injected {
            paused: vec![Paused {
                pid,
                start_ticks: 1,
            }],
            ..Injected::default()
        };
        let live = injector();
        let mut dead = injector();
        dead.owner.start_ticks += 1;
        dead.remember(&held(u32::MAX - 1)).unwrap();
        live.remember(&held(u32::MAX - 2)).unwrap();
        assert_eq!(live.recorded().unwrap().entries.len(), 2);
        assert_eq!(injector().heal_leftovers().await.unwrap(), 1);
        let left = live.recorded().unwrap();
        assert_eq!(left.entries.len(), 1);
        assert_eq!(left.entries[0].owner, Some(live.owner));
        assert_eq!(left.entries[0].injected.paused, held(u32::MAX - 2).paused);
        // The live run heals its own fault: the record goes.
        live.heal(&held(u32::MAX - 2)).await.unwrap();
        assert!(!record.exists());
        // An older chaos's record (one list, no owner) is a leftover.
        std::fs::write(&record, serde_json::to_vec(&held(u32::MAX - 3)).unwrap()).unwrap();
        assert_eq!(injector().heal_leftovers().await.unwrap(), 1);
        assert!(!record.exists());
    }

    #[test]
    fn the_drop_script_names_the_senders_and_the_share() {
        let senders = ["10.213.0.11".to_owned(), "10.213.0.12".to_owned()];
        let all = drop_script(&senders, None);
        assert!(
            all.contains("ip saddr { 10.213.0.11, 10.213.0.12 } drop"),
            "{all}"
        );
        assert!(all.contains("hook input"), "{all}");
        let some = drop_script(&senders, Some(30));
        assert!(some.contains("numgen random mod 100 < 30 drop"), "{some}");
    }
}
