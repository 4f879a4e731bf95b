//! An experiment's plan, in TOML:
//!
//! ```toml
//! name = "leader-kills"
//! description = "The leader killed every minute"
//! duration = "10m"        # per mode
//! warmup = "10s"
//! rate = 100              # requests per second, open model
//! nodes = 3
//! store = "embedded"
//! seed = 1
//! modes = ["leader", "leaderless"]
//!
//! [[faults]]
//! fault = "kill"          # kill, shutdown, pause, partition, loss, delay
//! target = "leader"       # leader, follower, random, or a node id
//! every = "60s"
//! first_after = "30s"     # default: `every`
//! duration = "10s"        # faults that hold: pause, partition, loss, delay
//! process = "both"        # node, paxos or both (kill, shutdown, pause)
//! partition = "isolate"   # isolate, one_way, split or bridge (partition)
//! loss_percent = 30       # loss: 1 to 100
//! delay_ms = 200          # delay: each way, 1 to 60000
//! ```
//!
//! In leaderless mode no node leads: `leader` means node 0 there and `follower` any other node,
//! so both modes get the same fault at a fixed place.
//!
//! Unknown keys are errors (a misspelt key must not silently change an experiment).

use std::time::Duration;

use anyhow::Context as _;
use chaos::target::Target;
use serde::Deserialize;

/// A plan as written.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    name: String,
    #[serde(default)]
    description: String,
    duration: String,
    #[serde(default = "default_warmup")]
    warmup: String,
    #[serde(default = "default_rate")]
    rate: u32,
    #[serde(default = "default_nodes")]
    nodes: u32,
    #[serde(default = "default_store")]
    store: String,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_modes")]
    modes: Vec<paxos::Mode>,
    #[serde(default)]
    faults: Vec<FaultFile>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    fault: chaos::fault::Fault,
    #[serde(default = "default_target")]
    target: String,
    every: String,
    first_after: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    process: chaos::fault::Processes,
    #[serde(default)]
    partition: Option<chaos::fault::Partition>,
    #[serde(default)]
    loss_percent: Option<u8>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

fn default_warmup() -> String {
    "10s".into()
}
fn default_rate() -> u32 {
    100
}
fn default_nodes() -> u32 {
    3
}
fn default_store() -> String {
    "embedded".into()
}
fn default_seed() -> u64 {
    1
}
fn default_modes() -> Vec<paxos::Mode> {
    vec![paxos::Mode::Leader, paxos::Mode::Leaderless]
}
fn default_target() -> String {
    "leader".into()
}

/// The most requests one mode of a plan may send (each is kept as a sample for the report).
pub const MAX_REQUESTS: u64 = 10_000_000;

/// A validated plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Its name (the results folder's prefix).
    pub name: String,
    /// What it asks.
    pub description: String,
    /// How long the load runs, per mode.
    pub duration: Duration,
    /// Load before the measurement starts (not reported).
    pub warmup: Duration,
    /// Requests per second, sent on schedule.
    pub rate: u32,
    /// Nodes per cluster.
    pub nodes: u32,
    /// `embedded` or `firestore`.
    pub store: node::store::StoreKind,
    /// Seed of the fault schedule and the load's choices.
    pub seed: u64,
    /// The modes it runs, each on a fresh cluster.
    pub modes: Vec<paxos::Mode>,
    /// The faults, each on its own schedule.
    pub faults: Vec<FaultPlan>,
}

/// One fault's schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// What.
    pub fault: chaos::fault::Fault,
    /// At whom.
    pub target: chaos::target::Target,
    /// How often.
    pub every: Duration,
    /// The first one, after the warm-up.
    pub first_after: Duration,
    /// How long it holds (pause, partition, loss, delay).
    pub duration: Option<Duration>,
    /// Which processes, which links, how much loss or delay.
    pub shape: chaos::fault::Shape,
}

fn duration(field: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("{field} = {text:?} is not a duration (`30s`, `10m`)"))
}

impl Plan {
    /// Parses and checks a plan; errors name the key and the value.
    pub fn parse(text: &str) -> anyhow::Result<Plan> {
        let file: PlanFile = toml::from_str(text).context("reading the plan")?;
        anyhow::ensure!(
            !file.name.is_empty()
                && file
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "name = {:?}: letters, digits, - and _ only (it names the results folder)",
            file.name
        );
        let plan_duration = duration("duration", &file.duration)?;
        let warmup = duration("warmup", &file.warmup)?;
        let store = match file.store.as_str() {
            "embedded" => node::store::StoreKind::Embedded,
            "firestore" => node::store::StoreKind::Firestore,
            other => anyhow::bail!("store = {other:?}: embedded or firestore"),
        };
        let mut faults = Vec::new();
        for (i, fault) in file.faults.iter().enumerate() {
            let at = |key: &str| format!("faults[{i}].{key}");
            let every = duration(&at("every"), &fault.every)?;
            anyhow::ensure!(
                every >= Duration::from_secs(1),
                "{} = {:?}: at least 1s",
                at("every"),
                fault.every
            );
            let first_after = match &fault.first_after {
                Some(text) => duration(&at("first_after"), text)?,
                None => every,
            };
            let held = match &fault.duration {
                Some(text) => Some(duration(&at("duration"), text)?),
                None => None,
            };
            anyhow::ensure!(
                !fault.fault.holds() || held.is_some(),
                "{}: a {} needs a duration",
                at("duration"),
                fault.fault
            );
            anyhow::ensure!(
                held.is_none_or(|d| d < every),
                "{}: it must end before the next one ({:?})",
                at("duration"),
                fault.every
            );
            let target = fault.target.parse().map_err(|err: String| {
                anyhow::anyhow!("{} = {:?}: {err}", at("target"), fault.target)
            })?;
            let loss_percent = fault.loss_percent.unwrap_or(30);
            anyhow::ensure!(
                (1..=100).contains(&loss_percent),
                "{} = {loss_percent}: 1 to 100",
                at("loss_percent")
            );
            let delay_ms = fault.delay_ms.unwrap_or(200);
            anyhow::ensure!(
                (1..=60_000).contains(&delay_ms),
                "{} = {delay_ms}: 1 to 60000",
                at("delay_ms")
            );
            faults.push(FaultPlan {
                fault: fault.fault,
                target,
                every,
                first_after,
                duration: held,
                shape: chaos::fault::Shape {
                    processes: fault.process,
                    partition: fault.partition.unwrap_or_default(),
                    loss_percent,
                    delay_ms,
                },
            });
        }
        let plan = Plan {
            name: file.name,
            description: file.description,
            duration: plan_duration,
            warmup,
            rate: file.rate,
            nodes: file.nodes,
            store,
            seed: file.seed,
            modes: file.modes,
            faults,
        };
        plan.check()?;
        Ok(plan)
    }

    /// Checks the plan's bounds (again after a command line changed it).
    pub fn check(&self) -> anyhow::Result<()> {
        let text = |d: Duration| humantime::format_duration(d).to_string();
        anyhow::ensure!(
            self.duration >= Duration::from_secs(5)
                && self.duration <= Duration::from_secs(24 * 3600),
            "duration = {:?}: 5s to 24h",
            text(self.duration)
        );
        anyhow::ensure!(
            self.warmup <= Duration::from_secs(600),
            "warmup = {:?}: at most 10m",
            text(self.warmup)
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.rate),
            "rate = {}: 1 to 10000 requests per second",
            self.rate
        );
        anyhow::ensure!(
            (1..=7).contains(&self.nodes),
            "nodes = {}: 1 to 7",
            self.nodes
        );
        // Every request is a sample kept until the report: bound them (10 million is about 1 GB).
        let requests = u64::from(self.rate) * self.duration.as_secs();
        anyhow::ensure!(
            requests <= MAX_REQUESTS,
            "rate = {} for duration = {:?} is {requests} requests per mode: at most {MAX_REQUESTS}",
            self.rate,
            text(self.duration)
        );
        anyhow::ensure!(!self.modes.is_empty(), "modes = []: name at least one mode");
        for (i, fault) in self.faults.iter().enumerate() {
            if let Target::Node(id) = fault.target {
                anyhow::ensure!(
                    id < self.nodes,
                    "faults[{i}].target = {id}: the cluster has nodes 0 to {}",
                    self.nodes - 1
                );
            }
        }
        Ok(())
    }

    /// Reads and parses the plan at `path`.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Plan> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Plan::parse(&text).with_context(|| format!("plan {}", path.display()))
    }

    /// When each fault is due, from the start of the measured load, in order: `(at, index)`.
    pub fn schedule(&self) -> Vec<(Duration, usize)> {
        let mut due = Vec::new();
        for (index, fault) in self.faults.iter().enumerate() {
            let mut at = fault.first_after;
            while at < self.duration {
                due.push((at, index));
                at += fault.every;
            }
        }
        due.sort();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ready_plan_parses_and_runs_both_modes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let plan = Plan::read(&path).unwrap_or_else(|err| panic!("{err:#}"));
            assert_eq!(
                plan.modes,
                [paxos::Mode::Leader, paxos::Mode::Leaderless],
                "{}",
                path.display()
            );
            assert!(
                !plan.faults.is_empty() && !plan.schedule().is_empty(),
                "{}",
                plan.name
            );
            names.push(plan.name);
        }
        names.sort();
        assert_eq!(
            names,
            ["gray-failures", "leader-kills", "mixed", "partitions"]
        );
    }

    #[test]
    fn a_plan_reads_its_defaults_and_its_schedule() {
        let plan = Plan::parse(
            r#"
            name = "t"
            duration = "3m"
            [[faults]]
            fault = "kill"
            every = "60s"
            [[faults]]
            fault = "pause"
            target = "2"
            every = "90s"
            first_after = "10s"
            duration = "5s"
            process = "node"
            "#,
        )
        .unwrap();
        assert_eq!((plan.rate, plan.nodes, plan.seed), (100, 3, 1));
        assert_eq!(plan.warmup, Duration::from_secs(10));
        assert_eq!(plan.faults[1].target, chaos::target::Target::Node(2));
        let secs: Vec<(u64, usize)> = plan
            .schedule()
            .iter()
            .map(|(d, i)| (d.as_secs(), *i))
            .collect();
        assert_eq!(secs, [(10, 1), (60, 0), (100, 1), (120, 0)]);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            (
                "name = \"t\"\nduration = \"3m\"\nrat = 5",
                "unknown field `rat`",
            ),
            (
                "name = \"t\"\nduration = \"soon\"",
                "duration = \"soon\" is not a duration",
            ),
            ("name = \"t/..\"\nduration = \"1m\"", "letters, digits"),
            ("name = \"t\"\nduration = \"1m\"\nrate = 0", "rate = 0"),
            (
                "name = \"t\"\nduration = \"24h\"\nrate = 10000",
                "864000000 requests per mode: at most 10000000",
            ),
            (
                "name = \"t\"\nduration = \"1m\"\nstore = \"sqlite\"",
                "store = \"sqlite\"",
            ),
            (
                "name = \"t\"\nduration = \"1m\"\n[[faults]]\nfault = \"pause\"\nevery = \"10s\"",
                "faults[0].duration: a pause needs a duration",
            ),
            (
                "name = \"t\"\nduration = \"1m\"\n[[faults]]\nfault = \"kill\"\nevery = \"10s\"\ntarget = \"boss\"",
                "faults[0].target = \"boss\"",
            ),
            (
                "name = \"t\"\nduration = \"1m\"\n[[faults]]\nfault = \"kill\"\nevery = \"10s\"\ntarget = \"3\"",
                "faults[0].target = 3: the cluster has nodes 0 to 2",
            ),
            (
                "name = \"t\"\nduration = \"1m\"\n[[faults]]\nfault = \"loss\"\nevery = \"10s\"\nduration = \"5s\"\nloss_percent = 0",
                "faults[0].loss_percent = 0: 1 to 100",
            ),
            (
                "name = \"t\"\nduration = \"1m\"\n[[faults]]\nfault = \"loss\"\nevery = \"10s\"\nduration = \"20s\"",
                "must end before the next one",
            ),
        ] {
            let err = format!("{:#}", Plan::parse(text).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
