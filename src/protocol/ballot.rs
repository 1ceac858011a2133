//! Ballots: `(round, proposer id)`, ordered lexicographically, so two proposers never share a ballot
//! and ties are broken by id, not by chance.

use super::NodeId;
use rkyv::{Archive, Deserialize, Serialize};

/// A Paxos ballot. The derived order compares `round` first, then `proposer`.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
)]
#[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord))]
pub struct Ballot {
    /// Increases with every election.
    pub round: u64,
    /// The proposer that owns this ballot.
    pub proposer: NodeId,
}

impl Ballot {
    /// The lowest ballot; no proposer leads with it.
    pub const ZERO: Ballot = Ballot { round: 0, proposer: 0 };

    /// The smallest ballot owned by `proposer` that is greater than `seen`.
    pub fn next_after(seen: Ballot, proposer: NodeId) -> Ballot {
        Ballot { round: seen.round + 1, proposer }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.proposer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_proposer() {
        let a = Ballot { round: 1, proposer: 9 };
        let b = Ballot { round: 2, proposer: 0 };
        let c = Ballot { round: 2, proposer: 1 };
        assert!(a < b && b < c);
        assert!(Ballot::ZERO < a);
        assert_eq!(Ballot::next_after(c, 0), Ballot { round: 3, proposer: 0 });
        assert!(Ballot::next_after(c, 0) > c);
    }
}
