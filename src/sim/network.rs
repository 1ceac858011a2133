//! The simulated network and its faults: per-link delay, loss, duplication and reordering, partitions
//! (one-way or both ways) that start and heal, and crashes and restarts of nodes. Everything is drawn
//! from the run's seeded generator, so a seed replays exactly.

use crate::protocol::{NodeId, Time};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

/// How hostile a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultLevel {
    /// Delays only: no loss, no crashes, no partitions.
    None,
    /// A little loss and duplication, one crash and one partition.
    Light,
    /// Heavy loss, duplication and reordering; repeated crashes (leaders included), partitions
    /// and pauses.
    Heavy,
}

/// How one message fares on a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Usual one-way delay range, microseconds.
    pub delay_us: (Time, Time),
    /// Probability a message is slow, which reorders it behind later ones.
    pub slow: f64,
    /// Upper bound of a slow message's extra delay, microseconds.
    pub slow_extra_us: Time,
}

impl LinkModel {
    /// A healthy network: delays and mild reordering, nothing lost.
    pub const HEALTHY: LinkModel =
        LinkModel { loss: 0.0, duplicate: 0.0, delay_us: (50, 1_000), slow: 0.02, slow_extra_us: 5_000 };

    /// The link model of a fault level while faults are on.
    pub fn for_level(level: FaultLevel) -> LinkModel {
        match level {
            FaultLevel::None => LinkModel::HEALTHY,
            FaultLevel::Light => LinkModel { loss: 0.01, duplicate: 0.01, ..LinkModel::HEALTHY },
            FaultLevel::Heavy => LinkModel {
                loss: 0.05,
                duplicate: 0.03,
                delay_us: (50, 2_000),
                slow: 0.10,
                slow_extra_us: 30_000,
            },
        }
    }

    /// The delivery delays of one send: none if lost, two if duplicated.
    pub fn deliveries(&self, rng: &mut ChaCha8Rng) -> Vec<Time> {
        if rng.gen_bool(self.loss) {
            return Vec::new();
        }
        let copies = if rng.gen_bool(self.duplicate) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let mut delay = rng.gen_range(self.delay_us.0..=self.delay_us.1);
                if rng.gen_bool(self.slow) {
                    delay += rng.gen_range(0..=self.slow_extra_us);
                }
                delay
            })
            .collect()
    }
}

/// A scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node stops; messages to it are lost. Volatile roles lose their memory.
    Crash(NodeId),
    /// The node comes back.
    Restart(NodeId),
    /// Messages from the first node to the second are lost until healed (one direction).
    Block(NodeId, NodeId),
    /// Undoes a `Block`.
    Unblock(NodeId, NodeId),
    /// The process stops running (SIGSTOP, a VM stall): what is sent to it waits in its socket
    /// buffers, its timers fall due unanswered, and it sends nothing.
    Pause(NodeId),
    /// It runs again, finding everything that waited at once.
    Resume(NodeId),
}

/// Partitions in force: directed pairs whose messages are lost.
#[derive(Debug, Default, Clone)]
pub struct Partitions {
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl Partitions {
    /// Whether messages from `from` to `to` are lost.
    pub fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        !self.blocked.is_empty() && self.blocked.contains(&(from, to))
    }

    /// Applies a `Block` or `Unblock`; other faults are not partitions and are ignored.
    pub fn apply(&mut self, fault: &Fault) {
        match *fault {
            Fault::Block(a, b) => {
                self.blocked.insert((a, b));
            }
            Fault::Unblock(a, b) => {
                self.blocked.remove(&(a, b));
            }
            _ => {}
        }
    }

    /// Heals everything.
    pub fn clear(&mut self) {
        self.blocked.clear();
    }
}

/// Draws the faults of a run: crashes of `crashable` nodes and partitions isolating any of `nodes`
/// (one way or both), all starting before `until`. Every fault is undone by `until` at the latest.
pub fn schedule(
    level: FaultLevel,
    rng: &mut ChaCha8Rng,
    crashable: &[NodeId],
    nodes: &[NodeId],
    until: Time,
) -> Vec<(Time, Fault)> {
    let (crashes, partitions) = match level {
        FaultLevel::None => (0, 0),
        FaultLevel::Light => (1, 1),
        FaultLevel::Heavy => (rng.gen_range(3..=8), rng.gen_range(3..=8)),
    };
    let mut faults = Vec::new();
    let span = |rng: &mut ChaCha8Rng| {
        let start = rng.gen_range(0..until * 3 / 4);
        let end = (start + rng.gen_range(20_000..=until / 3)).min(until);
        (start, end)
    };
    for _ in 0..crashes {
        let node = crashable[rng.gen_range(0..crashable.len())];
        let (start, end) = span(rng);
        faults.push((start, Fault::Crash(node)));
        faults.push((end, Fault::Restart(node)));
    }
    for _ in 0..partitions {
        let node = nodes[rng.gen_range(0..nodes.len())];
        let (start, end) = span(rng);
        // 0: cut off both ways; 1: can send, cannot hear; 2: can hear, cannot send.
        let direction = rng.gen_range(0..3);
        for &other in nodes.iter().filter(|&&o| o != node) {
            let mut cut = |a, b| {
                faults.push((start, Fault::Block(a, b)));
                faults.push((end, Fault::Unblock(a, b)));
            };
            if direction != 1 {
                cut(node, other);
            }
            if direction != 2 {
                cut(other, node);
            }
        }
    }
    faults
}

/// Draws the pauses of a heavy run (from a stream of their own, so that the other faults of a seed
/// stay what they were): a few, of any node, some longer than an election timeout.
pub fn schedule_pauses(rng: &mut ChaCha8Rng, nodes: &[NodeId], until: Time) -> Vec<(Time, Fault)> {
    let mut faults = Vec::new();
    for _ in 0..rng.gen_range(2..=6) {
        let node = nodes[rng.gen_range(0..nodes.len())];
        let start = rng.gen_range(0..until * 3 / 4);
        let end = (start + rng.gen_range(5_000..=until / 4)).min(until);
        faults.push((start, Fault::Pause(node)));
        faults.push((end, Fault::Resume(node)));
    }
    faults
}

/// Draws the link cuts of a heavy run (from a stream of their own): a few links cut both ways while
/// both ends still reach everyone else, a partition that is not transitive (Jepsen's "bridge").
/// Half of them cut two proposers apart, where it matters most: neither hears the other's
/// heartbeats, though both reach the acceptors.
pub fn schedule_link_cuts(
    rng: &mut ChaCha8Rng,
    proposers: &[NodeId],
    nodes: &[NodeId],
    until: Time,
) -> Vec<(Time, Fault)> {
    let mut faults = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let pool = if proposers.len() >= 2 && rng.gen_bool(0.5) { proposers } else { nodes };
        let a = pool[rng.gen_range(0..pool.len())];
        let b = pool[rng.gen_range(0..pool.len())];
        if a == b {
            continue;
        }
        let start = rng.gen_range(0..until * 3 / 4);
        let end = (start + rng.gen_range(20_000..=until / 3)).min(until);
        for (from, to) in [(a, b), (b, a)] {
            faults.push((start, Fault::Block(from, to)));
            faults.push((end, Fault::Unblock(from, to)));
        }
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn heavy_links_lose_duplicate_and_delay_within_bounds() {
        let model = LinkModel::for_level(FaultLevel::Heavy);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let outcomes: Vec<Vec<Time>> = (0..10_000).map(|_| model.deliveries(&mut rng)).collect();
        let lost = outcomes.iter().filter(|d| d.is_empty()).count();
        let doubled = outcomes.iter().filter(|d| d.len() == 2).count();
        assert!((300..700).contains(&lost), "about 5% lost, got {lost}");
        assert!((150..450).contains(&doubled), "about 3% duplicated, got {doubled}");
        let max = model.delay_us.1 + model.slow_extra_us;
        assert!(outcomes.iter().flatten().all(|&d| d >= model.delay_us.0 && d <= max));
    }

    #[test]
    fn every_fault_is_undone_before_the_end() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let faults = schedule(FaultLevel::Heavy, &mut rng, &[1, 2, 3], &[1, 2, 3, 4], 1_000_000);
        let mut partitions = Partitions::default();
        let mut down = BTreeSet::new();
        let mut sorted = faults.clone();
        sorted.sort_by_key(|(t, f)| (*t, matches!(f, Fault::Crash(_) | Fault::Block(..))));
        for (t, fault) in &sorted {
            assert!(*t <= 1_000_000);
            partitions.apply(fault);
            match fault {
                Fault::Crash(n) => {
                    down.insert(*n);
                }
                Fault::Restart(n) => {
                    down.remove(n);
                }
                _ => {}
            }
        }
        assert!(partitions.blocked.is_empty() && down.is_empty());
    }
}
