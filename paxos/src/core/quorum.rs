//! Counting votes: who voted for something, and whether they are a majority.

use crate::ballot::NodeId;

/// The number of votes that decides something among `nodes` replicas: a strict majority, so any
/// two quorums share a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Quorum {
    majority: usize,
}

impl Quorum {
    /// The quorum of a cluster of `nodes` replicas.
    pub(crate) fn of(nodes: u32) -> Quorum {
        Quorum {
            majority: nodes as usize / 2 + 1,
        }
    }

    /// How many votes a majority is.
    pub(crate) fn majority(self) -> usize {
        self.majority
    }

    /// True when `votes` distinct replicas are a majority.
    pub(crate) fn is_reached_by(self, votes: usize) -> bool {
        votes >= self.majority
    }
}

/// A set of replicas (at most 64, the configuration's limit) that voted for one thing; a replica
/// that votes twice counts once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Votes(u64);

impl Votes {
    /// The vote of `node` alone.
    pub(crate) fn of(node: NodeId) -> Votes {
        let mut votes = Votes::default();
        votes.insert(node);
        votes
    }

    /// Adds `node`'s vote.
    pub(crate) fn insert(&mut self, node: NodeId) {
        debug_assert!(node < 64, "replica {node} out of range");
        self.0 |= 1 << node;
    }

    /// Takes back `node`'s vote (votes of an earlier life of a replica do not count).
    pub(crate) fn remove(&mut self, node: NodeId) {
        self.0 &= !(1 << node);
    }

    /// True if `node` voted.
    pub(crate) fn contains(self, node: NodeId) -> bool {
        self.0 & (1 << node) != 0
    }

    /// How many replicas voted.
    pub(crate) fn count(self) -> usize {
        self.0.count_ones() as usize
    }

    /// True when these votes are a majority of `quorum`.
    pub(crate) fn reach(self, quorum: Quorum) -> bool {
        quorum.is_reached_by(self.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_is_more_than_half() {
        for (nodes, majority) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4), (64, 33)] {
            let quorum = Quorum::of(nodes);
            assert_eq!(quorum.majority(), majority, "{nodes} nodes");
            assert!(quorum.is_reached_by(majority));
            assert!(!quorum.is_reached_by(majority - 1));
        }
    }

    #[test]
    fn a_replica_that_votes_twice_counts_once() {
        let quorum = Quorum::of(3);
        let mut votes = Votes::of(0);
        votes.insert(0);
        assert_eq!(votes.count(), 1);
        assert!(!votes.reach(quorum));
        votes.insert(2);
        assert!(votes.reach(quorum));
        votes.insert(63);
        assert_eq!(votes.count(), 3);
        assert!(votes.contains(63) && !votes.contains(1));
        votes.remove(2);
        votes.remove(1);
        assert_eq!(votes.count(), 2);
        assert!(!votes.contains(2));
    }
}
