//! Following the leader before anything fails. When a leader hands its lead over (a rolling
//! restart, a Kubernetes pod replaced), the cluster has a new leader at once, but the load
//! balancer still points at the old one, which is about to stop: on the testbed the front door
//! follows by itself; on Kubernetes nothing moves the Service but the prober. So in leader mode,
//! when two node rounds in a row (a view can be stale) name a leader other than the load
//! balancer's target, and the leader's node answered its probe, the prober points the load
//! balancer at it, without waiting for the entry probe to fail.

use paxos::Mode;

use crate::control::ClusterView;
use crate::probe::Outcome;

/// Decides when to follow the leader.
#[derive(Debug, Default)]
pub struct Follower {
    /// The leader the previous round named, where it was not the target.
    pending: Option<u32>,
}

impl Follower {
    /// One node round: the view and each node's probe. `Some(leader)`: point the load balancer
    /// there now.
    pub fn observe(&mut self, view: &ClusterView, outcomes: &[(u32, Outcome)]) -> Option<u32> {
        let elsewhere = match (view.mode, view.leader, view.target) {
            (Mode::Leader, Some(leader), Some(target)) if leader != target => Some(leader),
            _ => None,
        };
        let healthy = |id: u32| {
            outcomes
                .iter()
                .any(|(node, outcome)| *node == id && outcome.failure.is_none())
        };
        let leader = elsewhere.filter(|&leader| healthy(leader));
        let previous = std::mem::replace(&mut self.pending, leader);
        match (previous, leader) {
            (Some(before), Some(now)) if before == now => {
                self.pending = None;
                Some(now)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::NodeView;
    use crate::probe::Failure;

    fn view(mode: Mode, leader: Option<u32>, target: Option<u32>) -> ClusterView {
        ClusterView {
            mode,
            leader,
            target,
            nodes: (0..3)
                .map(|id| NodeView {
                    id,
                    public_url: String::new(),
                    paxos_url: String::new(),
                })
                .collect(),
        }
    }

    fn outcomes(failed: Option<u32>) -> Vec<(u32, Outcome)> {
        (0..3)
            .map(|id| {
                let failure = (Some(id) == failed).then_some(Failure::Timeout);
                let outcome = Outcome {
                    latency: Duration::from_millis(1),
                    failure,
                    detail: None,
                };
                (id, outcome)
            })
            .collect()
    }

    #[test]
    fn two_rounds_naming_a_healthy_leader_elsewhere_follow_it() {
        let mut follower = Follower::default();
        let moved = view(Mode::Leader, Some(2), Some(0));
        assert_eq!(follower.observe(&moved, &outcomes(None)), None, "one round");
        assert_eq!(follower.observe(&moved, &outcomes(None)), Some(2));
        // Followed: it starts counting again.
        assert_eq!(follower.observe(&moved, &outcomes(None)), None);
    }

    #[test]
    fn nothing_to_follow_when_the_target_leads_the_leader_is_sick_or_in_leaderless_mode() {
        let mut follower = Follower::default();
        for _ in 0..3 {
            let same = view(Mode::Leader, Some(1), Some(1));
            assert_eq!(follower.observe(&same, &outcomes(None)), None);
            let sick = view(Mode::Leader, Some(2), Some(0));
            assert_eq!(follower.observe(&sick, &outcomes(Some(2))), None);
            let leaderless = view(Mode::Leaderless, None, None);
            assert_eq!(follower.observe(&leaderless, &outcomes(None)), None);
            let unknown = view(Mode::Leader, None, Some(0));
            assert_eq!(follower.observe(&unknown, &outcomes(None)), None);
        }
        // A leader that changes between rounds is not followed until it holds.
        let mut follower = Follower::default();
        assert_eq!(
            follower.observe(&view(Mode::Leader, Some(1), Some(0)), &outcomes(None)),
            None
        );
        assert_eq!(
            follower.observe(&view(Mode::Leader, Some(2), Some(0)), &outcomes(None)),
            None
        );
        assert_eq!(
            follower.observe(&view(Mode::Leader, Some(2), Some(0)), &outcomes(None)),
            Some(2)
        );
    }
}
