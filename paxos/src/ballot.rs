//! Ballots and log positions.

use serde::{Deserialize, Serialize};

/// A replica's number, `0..N`.
pub type NodeId = u32;

/// A global log position. The first slot is 1; 0 means "none".
pub type Slot = u64;

/// A ballot: totally ordered by round, then node. Unique per node because the node id is part
/// of it; a replica never reuses a round after a restart because it persists every ballot it
/// promises (its own included) before using it, and picks new rounds above its promises.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Compared first.
    pub round: u64,
    /// Breaks ties: two nodes never share a ballot.
    pub node: NodeId,
}

impl Ballot {
    /// A ballot.
    pub const fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        assert!(Ballot::new(1, 0) > Ballot::new(0, 2));
        assert!(Ballot::new(1, 2) > Ballot::new(1, 1));
        assert_eq!(Ballot::default(), Ballot::new(0, 0));
    }
}
