//! Ballots and log positions.

use serde::{Deserialize, Serialize};

/// A replica's number, `0..N`.
pub type NodeId = u32;

/// A global log position. The first slot is 1; 0 means "none".
pub type Slot = u64;

/// A ballot: totally ordered by round, then node, then incarnation. Unique per node because the
/// node id is part of it; a replica never reuses a round after a restart because it persists
/// every ballot it promises (its own included) before using it, and picks new rounds above its
/// promises. A replica that lost its storage cannot know which rounds its earlier life used, so
/// its ballots carry its new incarnation: a ballot of the new life never equals one of the old.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Compared first.
    pub round: u64,
    /// Breaks ties: two nodes never share a ballot.
    pub node: NodeId,
    /// The proposer's incarnation (0 until it first loses its storage and rejoins): two lives of
    /// one node never share a ballot.
    pub incarnation: u64,
}

impl Ballot {
    /// A ballot.
    pub const fn new(round: u64, node: NodeId) -> Ballot {
        Ballot {
            round,
            node,
            incarnation: 0,
        }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.node)?;
        if self.incarnation > 0 {
            write!(f, "/{}", self.incarnation)?;
        }
        Ok(())
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
        let reborn = Ballot {
            incarnation: 1,
            ..Ballot::new(1, 1)
        };
        assert!(reborn > Ballot::new(1, 1) && reborn < Ballot::new(1, 2));
        assert_eq!(reborn.to_string(), "1.1/1");
    }
}
