//! The faults and how they are injected and healed.
//!
//! - `kill`: SIGKILL of the node's `node` and/or `paxos` process (the testbed's supervisor
//!   restarts them, as Kubernetes would restart a container);
//! - `shutdown`: `POST /shutdown` to them with the cluster token: what the original system's
//!   chaos did, a graceful stop;
//! - `pause`: SIGSTOP, then SIGCONT after the fault's duration: a frozen process, not a dead one
//!   (a stuck disk, a long GC pause, a VM migration).
//!
//! Chaos signals a PID only if `/proc` shows a bank process there, and it writes every pause it
//! holds to `<data-dir>/chaos-active.json` before the SIGSTOP, so that whatever stops chaos (even
//! kill -9) the next chaos run against the cluster continues the paused processes first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{NodeView, is_bank_process, proc_stat};

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
}

impl Fault {
    /// Every fault, for series at zero.
    pub const ALL: [Fault; 3] = [Fault::Kill, Fault::Shutdown, Fault::Pause];

    /// Its name, the `fault` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Shutdown => "shutdown",
            Fault::Pause => "pause",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

/// One paused process: enough to continue it, and only it, later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// Its PID.
    pub pid: u32,
    /// Its start time (clock ticks after boot): the PID's identity.
    pub start_ticks: u64,
}

/// What a fault left to heal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Processes paused (a pause).
    pub paused: Vec<Paused>,
    /// PIDs the fault hit.
    pub pids: Vec<u32>,
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
}

/// The file, in the cluster's data folder, that lists the processes chaos holds paused.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("chaos-active.json")
}

impl Injector {
    /// An injector; `token` is needed by `shutdown` only; `record` is where it lists the
    /// processes it holds paused ([`record_path`]).
    pub fn new(http: reqwest::Client, token: Option<String>, record: PathBuf) -> Injector {
        Injector {
            http,
            token,
            record,
        }
    }

    /// Injects `fault` into `processes` of `node`.
    pub async fn inject(
        &self,
        fault: Fault,
        node: &NodeView,
        processes: Processes,
    ) -> anyhow::Result<Injected> {
        let pids = processes.pids(node);
        match fault {
            Fault::Kill => {
                anyhow::ensure!(!pids.is_empty(), "node {} has no running process", node.id);
                for &pid in &pids {
                    signal(pid, libc::SIGKILL)?;
                }
                Ok(Injected {
                    paused: Vec::new(),
                    pids,
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
                // Recorded before the first SIGSTOP: whatever happens next, a later run heals it.
                self.remember(&paused)?;
                for entry in &paused {
                    signal(entry.pid, libc::SIGSTOP)?;
                }
                Ok(Injected { paused, pids })
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
                    paused: Vec::new(),
                    pids,
                })
            }
        }
    }

    /// Heals what `injected` left: continues the processes it paused (those still alive and
    /// still the same processes).
    pub fn heal(&self, injected: &Injected) -> anyhow::Result<()> {
        for entry in &injected.paused {
            if proc_stat(entry.pid).is_some_and(|s| s.start_ticks == entry.start_ticks) {
                signal(entry.pid, libc::SIGCONT)?;
            }
        }
        self.forget(&injected.paused)
    }

    /// Continues every process an earlier run recorded as paused and did not heal (it was
    /// killed, or the machine stopped it): run at every start. Returns how many it continued.
    pub fn heal_leftovers(&self) -> anyhow::Result<usize> {
        let leftovers = self.recorded()?;
        let mut healed = 0;
        for entry in &leftovers {
            if proc_stat(entry.pid).is_some_and(|s| s.start_ticks == entry.start_ticks)
                && signal(entry.pid, libc::SIGCONT).is_ok()
            {
                healed += 1;
            }
        }
        if !leftovers.is_empty() {
            tracing::warn!(
                healed,
                recorded = leftovers.len(),
                "continued processes an earlier chaos run left paused"
            );
        }
        self.forget(&leftovers)?;
        Ok(healed)
    }

    fn recorded(&self) -> anyhow::Result<Vec<Paused>> {
        match std::fs::read(&self.record) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(anyhow::anyhow!("reading {}: {err}", self.record.display())),
        }
    }

    fn write(&self, entries: &[Paused]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return match std::fs::remove_file(&self.record) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                _ => Ok(()),
            };
        }
        // Written whole and renamed: a crash leaves the old list or the new one.
        let temporary = self.record.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec(entries)?)?;
        std::fs::rename(&temporary, &self.record)?;
        Ok(())
    }

    fn remember(&self, paused: &[Paused]) -> anyhow::Result<()> {
        let mut entries = self.recorded()?;
        entries.extend(paused.iter().cloned());
        self.write(&entries)
    }

    fn forget(&self, healed: &[Paused]) -> anyhow::Result<()> {
        let mut entries = self.recorded()?;
        entries.retain(|entry| !healed.contains(entry));
        self.write(&entries)
    }
}
