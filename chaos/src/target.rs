//! Which node a fault hits: the leader, a random follower, a random node, or a named one; never
//! one younger than the minimum age (a node just restarted is still catching up: hitting it
//! again measures nothing new).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use paxos::Mode;
use rand::Rng;

use crate::cluster::{ClusterView, NodeView, process_age};

/// A target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The current leader (leader mode).
    Leader,
    /// A random node that is not the leader (leader mode); any node in leaderless mode.
    Follower,
    /// Any node.
    Random,
    /// Node `id`.
    Node(u32),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        match text {
            "leader" => Ok(Target::Leader),
            "follower" => Ok(Target::Follower),
            "random" => Ok(Target::Random),
            // A node id, or a StatefulSet pod's name (`bank-2` is node 2).
            id => (id.parse().ok())
                .or_else(|| crate::kubernetes::ordinal(id))
                .map(Target::Node)
                .ok_or_else(|| {
                    format!(
                        "a target is leader, follower, random, a node id or a pod name \
                         (bank-2), not {text:?}"
                    )
                }),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => f.write_str("leader"),
            Target::Follower => f.write_str("follower"),
            Target::Random => f.write_str("random"),
            Target::Node(id) => write!(f, "{id}"),
        }
    }
}

/// Why no node could be chosen.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoTarget {
    /// Leader mode without a known leader, or leaderless mode.
    #[error("no leader is known (leaderless mode, or an election is running)")]
    NoLeader,
    /// No node is named so.
    #[error("no node {0} in the cluster")]
    NoSuchNode(u32),
    /// Every candidate is younger than the minimum age.
    #[error("every candidate node restarted less than {0:?} ago")]
    TooYoung(Duration),
    /// Nothing to choose from.
    #[error("no candidate node")]
    NoCandidate,
}

/// The youngest of a node's running processes' ages (a node whose process is not running has
/// age zero).
pub fn node_age(node: &NodeView) -> Duration {
    if let Some(pod) = &node.pod {
        return pod.age;
    }
    [node.node_pid, node.paxos_pid]
        .into_iter()
        .map(|pid| (pid != 0).then(|| process_age(pid)).flatten())
        .map(Option::unwrap_or_default)
        .min()
        .unwrap_or_default()
}

impl Target {
    /// The nodes this target may hit in `view`, before the age rule.
    pub fn candidates(self, view: &ClusterView) -> Result<Vec<u32>, NoTarget> {
        let ids = view.nodes.iter().map(|n| n.id);
        let leader = (view.mode == Mode::Leader).then_some(view.leader).flatten();
        let candidates: Vec<u32> = match self {
            Target::Leader => vec![leader.ok_or(NoTarget::NoLeader)?],
            Target::Follower => ids.filter(|&id| Some(id) != leader).collect(),
            Target::Random => ids.collect(),
            Target::Node(id) => {
                if !view.nodes.iter().any(|n| n.id == id) {
                    return Err(NoTarget::NoSuchNode(id));
                }
                vec![id]
            }
        };
        if candidates.is_empty() {
            return Err(NoTarget::NoCandidate);
        }
        Ok(candidates)
    }

    /// Chooses a node: a candidate whose processes have all run at least `min_age` (`age`
    /// says how long; [`node_age`] in a real cluster), uniformly with `rng`.
    pub fn choose(
        self,
        view: &ClusterView,
        min_age: Duration,
        age: impl Fn(&NodeView) -> Duration,
        rng: &mut impl Rng,
    ) -> Result<u32, NoTarget> {
        let old_enough: Vec<u32> = (self.candidates(view)?.into_iter())
            .filter(|id| {
                (view.nodes.iter())
                    .find(|n| n.id == *id)
                    .is_some_and(|node| age(node) >= min_age)
            })
            .collect();
        if old_enough.is_empty() {
            return Err(NoTarget::TooYoung(min_age));
        }
        Ok(old_enough[rng.random_range(0..old_enough.len())])
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    fn view(mode: Mode, leader: Option<u32>) -> ClusterView {
        let node = |id: u32| NodeView {
            id,
            role: "follower".into(),
            ready: true,
            internal_url: String::new(),
            paxos_url: String::new(),
            node_pid: 100 + id,
            paxos_pid: 200 + id,
            netns: None,
            ip: String::new(),
            proxy_url: None,
            pod: None,
        };
        ClusterView {
            mode,
            leader,
            data_dir: String::new(),
            token_file: None,
            nodes: (0..3).map(node).collect(),
        }
    }

    #[test]
    fn targets_parse_and_print_back() {
        for text in ["leader", "follower", "random", "2"] {
            assert_eq!(text.parse::<Target>().unwrap().to_string(), text);
        }
        assert_eq!(
            "bank-2".parse::<Target>(),
            Ok(Target::Node(2)),
            "a pod name"
        );
        let err = "boss".parse::<Target>().unwrap_err();
        assert!(
            err.contains("leader, follower, random, a node id or a pod name"),
            "{err}"
        );
    }

    #[test]
    fn each_target_picks_from_the_right_nodes() {
        let leader = view(Mode::Leader, Some(1));
        assert_eq!(Target::Leader.candidates(&leader), Ok(vec![1]));
        assert_eq!(Target::Follower.candidates(&leader), Ok(vec![0, 2]));
        assert_eq!(Target::Random.candidates(&leader), Ok(vec![0, 1, 2]));
        assert_eq!(Target::Node(2).candidates(&leader), Ok(vec![2]));
        assert_eq!(
            Target::Node(7).candidates(&leader),
            Err(NoTarget::NoSuchNode(7))
        );
        let electing = view(Mode::Leader, None);
        assert_eq!(
            Target::Leader.candidates(&electing),
            Err(NoTarget::NoLeader)
        );
        let leaderless = view(Mode::Leaderless, None);
        assert_eq!(
            Target::Leader.candidates(&leaderless),
            Err(NoTarget::NoLeader)
        );
        assert_eq!(Target::Follower.candidates(&leaderless), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn nodes_younger_than_the_minimum_age_are_spared() {
        let cluster = view(Mode::Leader, Some(1));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let age = |node: &NodeView| Duration::from_secs(if node.id == 0 { 5 } else { 60 });
        for _ in 0..50 {
            let id = (Target::Follower)
                .choose(&cluster, Duration::from_secs(30), age, &mut rng)
                .unwrap();
            assert_eq!(id, 2, "node 0 restarted 5 s ago");
        }
        assert_eq!(
            Target::Node(0).choose(&cluster, Duration::from_secs(30), age, &mut rng),
            Err(NoTarget::TooYoung(Duration::from_secs(30)))
        );
        let picked: std::collections::BTreeSet<u32> = (0..100)
            .map(|_| {
                (Target::Random)
                    .choose(&cluster, Duration::ZERO, age, &mut rng)
                    .unwrap()
            })
            .collect();
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }
}
