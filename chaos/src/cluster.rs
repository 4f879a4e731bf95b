//! The cluster chaos acts on, as the testbed's front door describes it (`GET /_testbed/cluster`:
//! the nodes, their roles and readiness, the PIDs of their processes, the data folder) or the
//! Kubernetes API lists it ([`crate::kubernetes`]), and what
//! Linux says about a process (`/proc/<pid>`): its state, its age, its command line.

use std::time::Duration;

use paxos::Mode;
use serde::Deserialize;

/// The cluster, as chaos reads it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    /// Leader or leaderless.
    pub mode: Mode,
    /// The leader (leader mode), when one is known.
    pub leader: Option<u32>,
    /// Where the cluster keeps its data (chaos keeps its record of active faults there).
    pub data_dir: String,
    /// The cluster token's file, when the testbed generated it.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Every node.
    pub nodes: Vec<NodeView>,
}

/// One node.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct NodeView {
    /// Its id.
    pub id: u32,
    /// `leader`, `follower`, `replica`, `candidate` or `down`.
    pub role: String,
    /// Answered `/readyz` at the front door's last check.
    pub ready: bool,
    /// Internal URL of its `node` process (`POST /shutdown`).
    pub internal_url: String,
    /// URL of its `paxos` process (`POST /shutdown`).
    pub paxos_url: String,
    /// PID of its `node` process (0: not running).
    pub node_pid: u32,
    /// PID of its `paxos` process (0: not running).
    pub paxos_pid: u32,
    /// Its network namespace (`testbed up --netns`): where partitions cut its links.
    #[serde(default)]
    pub netns: Option<String>,
    /// Its address.
    #[serde(default)]
    pub ip: String,
    /// Its link proxy's admin URL (`testbed up --proxies`): where delays are set.
    #[serde(default)]
    pub proxy_url: Option<String>,
    /// Its pod, on Kubernetes.
    #[serde(skip)]
    pub pod: Option<PodRef>,
}

/// A node's pod, on Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Its name (`bank-2`).
    pub name: String,
    /// Its uid: a pod the StatefulSet made anew has the same name and another uid.
    pub uid: String,
    /// How long its youngest container has run (zero if one is not running).
    pub age: std::time::Duration,
}

/// The testbed's front door, read-only.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    http: reqwest::Client,
    front_door: String,
}

impl LocalCluster {
    /// The cluster behind the front door at `front_door`.
    pub fn new(http: reqwest::Client, front_door: &str) -> LocalCluster {
        LocalCluster {
            http,
            front_door: front_door.trim_end_matches('/').to_owned(),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.front_door
    }

    /// The nodes, the mode and the leader now.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let url = format!("{}/_testbed/cluster", self.front_door);
        let response = (self.http.get(&url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|err| anyhow::anyhow!("GET {url}: {err}"))?
            .error_for_status()?;
        Ok(response.json().await?)
    }
}

/// What `/proc/<pid>/stat` says of a live process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `T` (stopped), `Z`, ...
    pub state: char,
    /// When it started, in clock ticks after boot (with the PID, what identifies it: a PID
    /// can be reused, a PID and a start time cannot).
    pub start_ticks: u64,
    /// CPU used so far, user and system, in clock ticks (fields 14 and 15 of stat(5)).
    pub cpu_ticks: u64,
}

/// The state and start time of process `pid`, `None` if there is none.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        // Field 22 of stat(5); the first field after the name is field 3.
        start_ticks: fields.get(19)?.parse().ok()?,
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU seconds (user + system) process `pid` has used so far, `None` if there is none.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = proc_stat(pid)?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| stat.cpu_ticks as f64 / ticks as f64)
}

/// How long process `pid` has run, `None` if there is none.
pub fn process_age(pid: u32) -> Option<Duration> {
    let stat = proc_stat(pid)?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    let started = stat.start_ticks as f64 / ticks as f64;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

/// True if process `pid` runs a bank process: its command line has an argument `node` or
/// `paxos` (the testbed's `testbed node ...`, or the binaries themselves). Chaos signals nothing
/// else, whatever PID a stale view names.
pub fn is_bank_process(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline.split(|&b| b == 0).take(2).any(|arg| {
        let name = arg.rsplit(|&b| b == b'/').next().unwrap_or(arg);
        name == b"node" || name == b"paxos"
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn cpu_seconds_grow_with_work_and_are_none_for_no_process() {
        let me = std::process::id();
        let before = super::cpu_seconds(me).expect("this process");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = super::cpu_seconds(me).expect("this process");
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert_eq!(super::cpu_seconds(u32::MAX), None);
    }

    use super::*;

    #[test]
    fn this_process_has_a_state_an_age_and_is_no_bank_process() {
        let me = std::process::id();
        let stat = proc_stat(me).unwrap();
        assert!(matches!(stat.state, 'R' | 'S'), "{stat:?}");
        assert!(process_age(me).unwrap() < Duration::from_secs(24 * 3600));
        assert!(!is_bank_process(me));
        assert_eq!(proc_stat(u32::MAX), None);
    }
}
