//! Safety checkers that watch every event of a simulated run:
//! - agreement: at most one value is chosen per slot (a value is chosen when f+1 acceptors of the
//!   slot's group accepted it at one ballot — computed from the acceptors' own reports, not trusted
//!   from the proxy leaders). The slot's group is the one of the configuration in force at the
//!   slot, which the checker works out for itself from the changes replicas execute (a change
//!   chosen at slot i owns the slots from the one it names, which must be above i and at most α
//!   above). Votes from acceptors of any other group do not count;
//! - the final configuration: every replica ends with the one the log says;
//! - replicas execute every slot in order, only chosen values, and agree on the state after each slot
//!   (so their logs are prefixes of one another and digests agree at equal watermarks);
//! - a replica that installs a snapshot taught by a peer has the state some replica had after the
//!   slot before it, and goes on from there;
//! - exactly once: no replica applies a command twice;
//! - (at the end) every acknowledged command is in the log.
//!
//! Linearizability of the client history is checked at the end by `linearizability`.

use crate::protocol::configuration::{validate_change, Change, Configuration};
use crate::protocol::{Ballot, Event, NodeId, Slot};
use std::collections::{BTreeMap, BTreeSet};

/// Accumulates violations; empty means every check held so far.
#[derive(Debug, Default)]
pub struct Checker {
    f: usize,
    quorum: usize,
    /// A change chosen at slot i is in force from i + alpha.
    alpha: u64,
    /// Every configuration the log chose, with the first slot it owns, oldest first.
    configs: Vec<(Slot, Configuration)>,
    /// Slots whose change of configuration was seen executed.
    reconfig_slots: BTreeSet<Slot>,
    /// (slot, ballot) → the value accepted at that ballot, and by whom.
    votes: BTreeMap<(Slot, Ballot), (u64, BTreeSet<NodeId>)>,
    /// slot → the chosen value's digest.
    chosen: BTreeMap<Slot, u64>,
    /// slot → (value digest, state digest after it) as first executed by any replica.
    executed: BTreeMap<Slot, (u64, u64)>,
    /// replica → the next slot it must execute.
    next_to_execute: BTreeMap<NodeId, Slot>,
    /// replica → the highest executed watermark it reported (others trim below it, so its disk
    /// must give it back).
    reported: BTreeMap<NodeId, Slot>,
    /// replica → commands it applied, with the slot each was applied in.
    applied: BTreeMap<NodeId, BTreeMap<(u64, u64), Slot>>,
    /// Commands some replica applied in a slot, ever (a replica that learns a snapshot never applies
    /// the commands it holds, and one whose disk is wiped forgets what it applied).
    applied_anywhere: BTreeSet<(u64, u64)>,
    /// Requests a client was refused with `Busy` for good: none may ever be applied.
    refused: BTreeSet<(u64, u64)>,
    /// Requests the network duplicated: a refusal of one copy says nothing of the other.
    duplicated: BTreeSet<(u64, u64)>,
    /// What went wrong, in order.
    pub violations: Vec<String>,
}

impl Checker {
    /// A checker for a cluster that tolerates `f` failures, starting with `first`, whose changes
    /// of configuration are in force at most `alpha` slots after the slot that chose them.
    pub fn new(f: usize, first: Configuration, alpha: u64) -> Self {
        Checker { f, quorum: f + 1, alpha, configs: vec![(0, first)], ..Checker::default() }
    }

    /// The configuration in force at `slot`, as the log says.
    fn config_at(&self, slot: Slot) -> &Configuration {
        let i = self.configs.partition_point(|(from, _)| *from <= slot).saturating_sub(1);
        &self.configs[i].1
    }

    /// Nodes that a configuration the log chose named and the newest one does not: removed.
    pub fn removed_nodes(&self) -> BTreeSet<NodeId> {
        let latest: BTreeSet<NodeId> = self.latest_config().members().map(|(id, _)| id).collect();
        (self.configs.iter().flat_map(|(_, c)| c.members().map(|(id, _)| id)))
            .filter(|id| !latest.contains(id))
            .collect()
    }

    /// The newest configuration the log chose.
    pub fn latest_config(&self) -> &Configuration {
        &self.configs.last().expect("never empty").1
    }

    /// Every acceptor group of every configuration the log chose.
    pub fn all_groups(&self) -> impl Iterator<Item = &Vec<NodeId>> + '_ {
        self.configs.iter().flat_map(|(_, c)| c.acceptor_groups.iter())
    }

    /// The values chosen in `slot`: accepted at one ballot by a quorum of the group that owns the
    /// slot in the configuration in force at it.
    fn chosen_in(&self, slot: Slot) -> BTreeSet<u64> {
        let config = self.config_at(slot);
        let group = config.group_of(slot);
        self.votes
            .range((slot, Ballot::ZERO)..)
            .take_while(|((s, _), _)| *s == slot)
            .filter(|(_, (_, voters))| voters.iter().filter(|a| group.contains(a)).count() >= self.quorum)
            .map(|(_, (digest, _))| *digest)
            .collect()
    }

    /// Watches one event of `node`.
    pub fn observe(&mut self, node: NodeId, event: &Event) {
        match *event {
            Event::Accepted { value_digest: None, .. }
            | Event::Executed { value_digest: None, .. }
            | Event::Executed { state_digest: None, .. }
            | Event::Installed { state_digest: None, .. } => {
                self.violation("checker: an event without digests (record_digests is off)".into())
            }
            Event::Accepted { slot, ballot, value_digest: Some(value_digest) } => {
                self.on_accepted(node, slot, ballot, value_digest)
            }
            Event::Executed { slot, value_digest: Some(value_digest), state_digest: Some(state_digest) } => {
                self.on_executed(node, slot, value_digest, state_digest)
            }
            Event::Installed { slot, state_digest: Some(state_digest) } => {
                self.on_installed(node, slot, state_digest)
            }
            Event::ReconfigExecuted { slot, ref change } => self.on_reconfig_executed(slot, change),
            Event::Refused { client_id, seq } => {
                self.refused.insert((client_id, seq));
            }
            Event::Applied { client_id, seq, slot } => {
                self.applied_anywhere.insert((client_id, seq));
                if self.applied.entry(node).or_default().insert((client_id, seq), slot).is_some() {
                    self.violation(format!(
                        "exactly-once: replica {node} applied command c{client_id}#{seq} a second time (slot {slot})"
                    ));
                }
            }
            _ => {}
        }
    }

    fn on_accepted(&mut self, acceptor: NodeId, slot: Slot, ballot: Ballot, digest: u64) {
        let (value, voters) = self.votes.entry((slot, ballot)).or_insert((digest, BTreeSet::new()));
        if *value != digest {
            let first = *value;
            self.violation(format!(
                "agreement: two values accepted in slot {slot} at ballot {ballot} ({first:016x}, {digest:016x})"
            ));
            return;
        }
        voters.insert(acceptor);
        if !self.chosen_in(slot).contains(&digest) {
            return;
        }
        match self.chosen.get(&slot) {
            None => {
                self.chosen.insert(slot, digest);
            }
            Some(&earlier) if earlier != digest => self.violation(format!(
                "agreement: slot {slot} chose {earlier:016x} and then {digest:016x} (at ballot {ballot})"
            )),
            Some(_) => {}
        }
    }

    /// A replica executed a change of configuration in `slot`: the next epoch, if it keeps the
    /// rules and names a first slot above `slot` (at most alpha above, and above the newest
    /// configuration's), owns the slots from there on. Changes are first executed in slot order
    /// (by the replica furthest ahead), so each is seen after every change below it.
    fn on_reconfig_executed(&mut self, slot: Slot, change: &Change) {
        if !self.reconfig_slots.insert(slot) {
            return;
        }
        let (latest_from, latest) = self.configs.last().expect("never empty");
        let from = change.from_slot;
        let in_reach = from > slot && from <= slot + self.alpha && from > *latest_from;
        if in_reach && validate_change(latest, &change.config, self.f).is_ok() {
            self.configs.push((from, change.config.clone()));
        }
    }

    /// At the end: no slot chose two values, counted in the configuration in force at it now
    /// that every change is known, and every replica's configuration is the log's.
    pub fn check_at_end(&mut self, replica_configs: &[(NodeId, Configuration)]) {
        let executed_refused: Vec<_> = self
            .refused
            .intersection(&self.applied_anywhere)
            .filter(|r| !self.duplicated.contains(r))
            .copied()
            .collect();
        for (client_id, seq) in executed_refused {
            self.violation(format!("overload: command c{client_id}#{seq} was refused with Busy and applied"));
        }
        let slots: BTreeSet<Slot> = self.votes.keys().map(|&(s, _)| s).collect();
        for slot in slots {
            let chosen = self.chosen_in(slot);
            if chosen.len() > 1 {
                self.violation(format!("agreement: slot {slot} chose {} values: {chosen:x?}", chosen.len()));
            }
        }
        let latest = self.latest_config().clone();
        for (replica, config) in replica_configs {
            if *config != latest {
                self.violation(format!(
                    "configuration: replica {replica} ends with epoch {} {:?}, the log says epoch {} {:?}",
                    config.epoch, config.acceptor_groups, latest.epoch, latest.acceptor_groups
                ));
            }
        }
    }

    fn on_executed(&mut self, replica: NodeId, slot: Slot, value: u64, state: u64) {
        let expected = self.next_to_execute.insert(replica, slot + 1).unwrap_or(0);
        if slot != expected {
            self.violation(format!(
                "order: replica {replica} executed slot {slot} while slot {expected} was next"
            ));
        }
        let chosen = self.chosen_in(slot);
        if chosen.is_empty() {
            self.violation(format!(
                "agreement: replica {replica} executed slot {slot}, which no quorum of its group chose"
            ));
        } else if !chosen.contains(&value) {
            self.violation(format!(
                "agreement: replica {replica} executed {value:016x} in slot {slot}, but {chosen:x?} was chosen"
            ));
        }
        match self.executed.get(&slot) {
            None => {
                self.executed.insert(slot, (value, state));
            }
            Some(&(v, s)) if (v, s) != (value, state) => self.violation(format!(
                "divergence: after slot {slot} replica {replica} has state {state:016x}, another replica {s:016x}"
            )),
            Some(_) => {}
        }
    }

    /// A replica installed a peer's snapshot covering every slot below `slot`: its state must be the
    /// one replicas had after slot `slot - 1`, and it executes `slot` next.
    fn on_installed(&mut self, replica: NodeId, slot: Slot, state: u64) {
        let expected = self.next_to_execute.get(&replica).copied().unwrap_or(0);
        if slot <= expected {
            self.violation(format!(
                "order: replica {replica} installed a snapshot at slot {slot}, not above its next slot {expected}"
            ));
        }
        self.next_to_execute.insert(replica, slot);
        match slot.checked_sub(1).and_then(|last| self.executed.get(&last)) {
            None => self.violation(format!(
                "teaching: replica {replica} installed a state at slot {slot} that no replica executed"
            )),
            Some(&(_, s)) if s != state => self.violation(format!(
                "teaching: replica {replica} installed state {state:016x} at slot {slot}; replicas had {s:016x} there"
            )),
            Some(_) => {}
        }
    }

    /// Records a violation once: later votes or replicas repeating the same finding add nothing.
    pub fn violation(&mut self, what: String) {
        if !self.violations.contains(&what) {
            self.violations.push(what);
        }
    }

    /// The network duplicated request (client, seq).
    pub fn duplicated(&mut self, client_id: u64, seq: u64) {
        self.duplicated.insert((client_id, seq));
    }

    /// Whether the network duplicated request (client, seq).
    pub fn was_duplicated(&self, client_id: u64, seq: u64) -> bool {
        self.duplicated.contains(&(client_id, seq))
    }

    /// Requests refused with `Busy` for good, so far.
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    /// Whether some replica applied (client, seq).
    pub fn was_applied(&self, client_id: u64, seq: u64) -> bool {
        self.applied_anywhere.contains(&(client_id, seq))
    }

    /// Replica `replica` reported every slot below `watermark` executed: proposers and acceptors
    /// trim below it, on the word that its disk would give it back after a crash.
    pub fn replica_reported(&mut self, replica: NodeId, watermark: Slot) {
        let highest = self.reported.entry(replica).or_default();
        *highest = (*highest).max(watermark);
    }

    /// A replica restarted from its disk with every slot below `executed` executed: what it did
    /// above that was lost with its memory and will be done again (in the same order, to the same
    /// state, which the checks above verify). Never below a watermark it reported, unless its disk
    /// was `wiped` (a new machine: its word went with the old disk).
    pub fn replica_restarted(&mut self, replica: NodeId, executed: Slot, wiped: bool) {
        let reported = self.reported.get(&replica).copied().unwrap_or(0);
        if wiped {
            self.reported.remove(&replica);
        } else if executed < reported {
            self.violation(format!(
                "durability: replica {replica} restarted from its disk at slot {executed}, below the watermark {reported} it reported"
            ));
        }
        self.next_to_execute.insert(replica, executed);
        if let Some(applied) = self.applied.get_mut(&replica) {
            applied.retain(|_, &mut slot| slot < executed);
        }
    }

    /// The number of slots known chosen.
    pub fn chosen_slots(&self) -> usize {
        self.chosen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> Configuration {
        Configuration {
            epoch: 0,
            acceptor_groups: vec![vec![3, 4, 5]],
            replicas: vec![7, 8],
            proposers: vec![1, 2],
        }
    }

    const B1: Ballot = Ballot { round: 1, proposer: 1 };
    const B2: Ballot = Ballot { round: 2, proposer: 2 };

    fn accepted(c: &mut Checker, acceptor: NodeId, slot: Slot, ballot: Ballot, d: u64) {
        c.observe(acceptor, &Event::Accepted { slot, ballot, value_digest: Some(d) });
    }

    #[test]
    fn two_values_chosen_in_one_slot_is_caught() {
        let mut c = Checker::new(1, first(), 10);
        accepted(&mut c, 3, 0, B1, 0xa);
        accepted(&mut c, 4, 0, B1, 0xa);
        assert!(c.violations.is_empty());
        accepted(&mut c, 4, 0, B2, 0xb);
        accepted(&mut c, 5, 0, B2, 0xb);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    }

    #[test]
    fn the_same_value_chosen_again_at_a_higher_ballot_is_fine() {
        let mut c = Checker::new(1, first(), 10);
        for (a, b) in [(3, B1), (4, B1), (4, B2), (5, B2)] {
            accepted(&mut c, a, 0, b, 0xa);
        }
        assert!(c.violations.is_empty());
    }

    #[test]
    fn out_of_order_unchosen_or_divergent_execution_is_caught() {
        let mut c = Checker::new(1, first(), 10);
        for slot in 0..2 {
            accepted(&mut c, 3, slot, B1, slot);
            accepted(&mut c, 4, slot, B1, slot);
        }
        c.observe(7, &Event::Executed { slot: 0, value_digest: Some(0), state_digest: Some(10) });
        c.observe(8, &Event::Executed { slot: 1, value_digest: Some(1), state_digest: Some(11) });
        assert!(c.violations[0].starts_with("order"));
        c.observe(7, &Event::Executed { slot: 1, value_digest: Some(1), state_digest: Some(99) });
        assert!(c.violations[1].starts_with("divergence"));
        c.observe(7, &Event::Executed { slot: 2, value_digest: Some(5), state_digest: Some(0) });
        assert!(c.violations[2].contains("no quorum of its group chose"));
    }

    #[test]
    fn votes_count_only_in_the_group_of_the_configuration_in_force_at_the_slot() {
        let mut c = Checker::new(1, first(), 10);
        let config = Configuration { epoch: 1, acceptor_groups: vec![vec![20, 21, 22]], ..first() };
        c.observe(
            7,
            &Event::ReconfigExecuted {
                slot: 0,
                change: Change { config, from_slot: 10, ballot: Ballot::ZERO },
            },
        );
        // Slot 5 is below 0 + alpha: still the old group's. Votes of the new one do not choose it.
        accepted(&mut c, 20, 5, B1, 0xa);
        accepted(&mut c, 21, 5, B1, 0xa);
        assert_eq!(c.chosen_slots(), 0);
        accepted(&mut c, 3, 5, B1, 0xa);
        accepted(&mut c, 4, 5, B1, 0xa);
        assert_eq!(c.chosen_slots(), 1);
        // Slot 10 is the new group's.
        accepted(&mut c, 3, 10, B1, 0xb);
        accepted(&mut c, 4, 10, B1, 0xb);
        assert_eq!(c.chosen_slots(), 1);
        accepted(&mut c, 20, 10, B2, 0xc);
        accepted(&mut c, 22, 10, B2, 0xc);
        assert_eq!(c.chosen_slots(), 2);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        let stale = first();
        c.check_at_end(&[(7, stale)]);
        assert!(c.violations[0].starts_with("configuration"), "{:?}", c.violations);
    }

    #[test]
    fn a_command_applied_twice_is_caught() {
        let mut c = Checker::new(1, first(), 10);
        c.observe(7, &Event::Applied { client_id: 100, seq: 1, slot: 0 });
        c.observe(8, &Event::Applied { client_id: 100, seq: 1, slot: 0 });
        assert!(c.violations.is_empty(), "once per replica is right");
        c.observe(7, &Event::Applied { client_id: 100, seq: 1, slot: 3 });
        assert!(c.violations[0].starts_with("exactly-once"));
        assert!(c.was_applied(100, 1) && !c.was_applied(100, 2));
    }
}
