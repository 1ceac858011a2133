//! Which acceptor groups own which slots, and how that changes through the log.
//!
//! A [`Configuration`] names the acceptor groups; slot `s` of a configuration with `G` groups
//! belongs to group `s mod G`. The cluster file gives epoch 0, in force from slot 0. A change is a
//! value in the log ([`Value::Reconfig`](super::messages::Value::Reconfig), a [`Change`]): chosen
//! at slot `i`, it is in force from the slot `e` it names, `i < e ≤ i + α`, where α is the
//! leader's in-flight window (`Tunables::max_in_flight_slots`). This is Lampson's approach, as
//! Physalia uses it, with the leader choosing how far ahead within α: `e` just past the slots it
//! expects to propose while the change is chosen (about twice what it has in flight), not always
//! the whole window. With a fixed `i + α`, a change chosen under light load waited for α slots,
//! or the leader filled them with α no-ops at once, a burst that cost a loaded cluster half its
//! throughput for 100 ms (`bench/reconfiguration.py`); now it fills a few.
//!
//! Why it is safe: a leader proposes no slot at or above a change's `e` until the change is
//! executed and reported by a replica (`Proposer::room`), so no slot is ever routed by a change
//! that might not be chosen. Every slot below `e` that an earlier leader could have proposed is
//! below `i`: the leader that proposes the change at `i` has finished Phase 1 and proposes it
//! after every slot that Phase 1 found, and a leader that takes over finds the change (if it may
//! have been chosen) in its own Phase 1, with its `e`, before it proposes anything.
//!
//! The new groups have promised nothing to the leader that proposed the change (its Phase 1 came
//! before them), so a deposed leader with a lower ballot that learns of the change from the
//! replicas could get its proposals accepted there (sim seed 13199 with --reconfig: two values
//! chosen in one slot). A change therefore carries its proposer's ballot, and a proposer that
//! learns of a change proposed at a higher ballot than its own takes that ballot (a leader steps
//! down) before it routes anything by it. Any other leader that may route by the change either is
//! its proposer, or covered the new groups in its own Phase 1 (it found the change, or knew it).
//!
//! Who keeps a history: replicas (they execute changes; the history is part of their state,
//! their snapshots and their watermark reports), proposers (they merge what replicas report, and
//! route each slot by the configuration in force at it), and the simulator's checker (which builds
//! its own from what replicas executed). Proxy leaders are told each slot's group with the
//! proposal; acceptors vote per slot and need none.
//!
//! Why not Matchmaker Paxos: it needs a separate set of matchmakers, and a leader that changes
//! configuration runs Phase 1 on the new one at once. The window needs no new role and reuses the
//! replicas' reports; its cost is a short pause: the leader proposes nothing at or above `e` until
//! the change is chosen and reported, and fills the slots up to `e` with no-ops when load does
//! not.
//!
//! Must never: apply a change out of epoch order, or one that breaks the rules (`validate_change`)
//! — every replica and checker skips such a value the same way; route a slot by a configuration
//! that is not the one in force at it; forget a configuration that still owns a slot at or above
//! the trim point.

use super::config::{ClusterConfig, ConfigError, RoleKind};
use super::messages::{decode, encode};
use super::{Ballot, NodeId, Slot};
use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::BTreeSet;

/// The stateful roles of one epoch: acceptor groups, replicas and proposers. Stateless roles join
/// and leave through views instead (`membership`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// Counts changes: the cluster file's is 0, each change one more.
    pub epoch: u64,
    /// `G` groups of 2f+1 acceptors; slot `s` belongs to group `s mod G`.
    pub acceptor_groups: Vec<Vec<NodeId>>,
    /// At least f+1: they execute the slots this configuration owns.
    pub replicas: Vec<NodeId>,
    /// At least f+1: they may lead once this configuration is the newest.
    pub proposers: Vec<NodeId>,
}

impl Configuration {
    /// The cluster file's stateful roles, epoch 0.
    pub fn from_cluster(cluster: &ClusterConfig) -> Self {
        Configuration {
            epoch: 0,
            acceptor_groups: cluster.acceptor_groups.clone(),
            replicas: cluster.replicas.clone(),
            proposers: cluster.proposers.clone(),
        }
    }

    /// Every node it names, with its role.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, RoleKind)> + '_ {
        let acceptors = self.acceptors().map(|id| (id, RoleKind::Acceptor));
        let replicas = self.replicas.iter().map(|&id| (id, RoleKind::Replica));
        acceptors.chain(replicas).chain(self.proposers.iter().map(|&id| (id, RoleKind::Proposer)))
    }

    /// The group that owns `slot` in this configuration.
    pub fn group_of(&self, slot: Slot) -> &[NodeId] {
        &self.acceptor_groups[(slot % self.acceptor_groups.len() as u64) as usize]
    }

    /// Every acceptor of every group.
    pub fn acceptors(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.acceptor_groups.iter().flatten().copied()
    }
}

/// A change of configuration as the log carries it: the configuration, the first slot it owns,
/// and the ballot of the leader that proposed it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The next configuration.
    pub config: Configuration,
    /// The first slot it owns: above the slot that chooses it, at most α above.
    pub from_slot: Slot,
    /// The ballot of the leader that proposed it (kept when a later leader proposes it again).
    pub ballot: Ballot,
}

impl Change {
    /// The bytes of the change, as the log carries them.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// A change read back from the log; `None` for bytes that are not one (every replica reads
    /// the same bytes, so every replica skips them alike).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        decode::<Change>(bytes).ok()
    }
}

/// Why a change of configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconfigError {
    /// Changes are applied one epoch at a time.
    #[error("the new configuration must have epoch {expected} (the one in force has {current}), got {got}")]
    Epoch { current: u64, expected: u64, got: u64 },
    /// The change changes nothing.
    #[error(
        "the new configuration has the same acceptor groups, replicas and proposers as the one in force"
    )]
    NoChange,
    /// The groups break a rule of the cluster file (group size, unique ids).
    #[error("{0}")]
    Invalid(ConfigError),
    /// An id that the cluster gives another role, or a node that was removed.
    #[error("node {0} is another role's, or a node that was removed (a new node needs a new id)")]
    TakenId(NodeId),
    /// A new node that has not announced itself: the cluster could not reach it.
    #[error("{role} {id} has not joined: start it with --join first")]
    NotJoined { id: NodeId, role: &'static str },
}

/// Checks `new` as the successor of `current` for a cluster that tolerates `f` failures: the next
/// epoch, at least one group, every group exactly 2f+1 acceptors, at least f+1 replicas and f+1
/// proposers, no id twice, and a real change.
pub fn validate_change(current: &Configuration, new: &Configuration, f: usize) -> Result<(), ReconfigError> {
    let expected = current.epoch + 1;
    if new.epoch != expected {
        return Err(ReconfigError::Epoch { current: current.epoch, expected, got: new.epoch });
    }
    if new.acceptor_groups.is_empty() {
        return Err(ReconfigError::Invalid(ConfigError::TooFewNodes {
            role: "acceptor_groups",
            need: 1,
            got: 0,
            f,
        }));
    }
    for (group, members) in new.acceptor_groups.iter().enumerate() {
        if members.len() != 2 * f + 1 {
            return Err(ReconfigError::Invalid(ConfigError::GroupSize {
                group,
                need: 2 * f + 1,
                got: members.len(),
            }));
        }
    }
    for (role, got) in [("replicas", new.replicas.len()), ("proposers", new.proposers.len())] {
        if got < f + 1 {
            return Err(ReconfigError::Invalid(ConfigError::TooFewNodes { role, need: f + 1, got, f }));
        }
    }
    let mut seen = BTreeSet::new();
    if let Some((twice, _)) = new.members().find(|&(id, _)| !seen.insert(id)) {
        return Err(ReconfigError::Invalid(ConfigError::DuplicateId(twice)));
    }
    let roles = |c: &Configuration| (c.acceptor_groups.clone(), c.replicas.clone(), c.proposers.clone());
    if roles(new) == roles(current) {
        return Err(ReconfigError::NoChange);
    }
    Ok(())
}

/// One configuration and the slots it owns: from `from_slot` up to the next one's.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    /// The configuration.
    pub config: Configuration,
    /// The first slot it owns.
    pub from_slot: Slot,
    /// The slot of the change that chose it (`None` for the cluster file's).
    pub chosen_at: Option<Slot>,
    /// The ballot of the leader that proposed the change (zero for the cluster file's).
    pub ballot: Ballot,
}

/// The configurations in force at or above some slot, oldest first, epochs consecutive.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ConfigHistory {
    /// Failures tolerated (fixed by the cluster file): groups have 2f+1 acceptors.
    f: u32,
    /// A change chosen at slot `i` is in force from `i + alpha`.
    alpha: u64,
    /// Never empty; `from_slot` and `epoch` strictly increase.
    entries: Vec<InForce>,
    /// Every node a change removed, with its role, sorted (at most `MAX_REMOVED`, the lowest ids
    /// dropped first). Kept with the history, so that any proposer learns from the replicas whom
    /// to tell to leave, however many changes it missed.
    removed: Vec<(NodeId, RoleKind)>,
}

/// Removed nodes a history remembers.
pub const MAX_REMOVED: usize = 10_000;

/// A history that contradicts a replica's: a change this proposer took for chosen (found in Phase 1)
/// was not, or another was. The proposer gives up leading and takes the replica's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contradicted;

impl ConfigHistory {
    /// The cluster file's configuration, in force from slot 0; changes take effect `alpha` slots
    /// after the slot that chose them.
    pub fn new(cluster: &ClusterConfig, alpha: u64) -> Self {
        assert!(alpha >= 1, "alpha is the leader's window, at least 1");
        let first = InForce {
            config: Configuration::from_cluster(cluster),
            from_slot: 0,
            chosen_at: None,
            ballot: Ballot::ZERO,
        };
        ConfigHistory { f: cluster.f as u32, alpha, entries: vec![first], removed: Vec::new() }
    }

    /// The slots between a change's slot and the first slot it owns.
    pub fn alpha(&self) -> u64 {
        self.alpha
    }

    /// Acceptors a quorum needs: f+1 of a group's 2f+1.
    pub fn quorum(&self) -> usize {
        self.f as usize + 1
    }

    /// Failures tolerated.
    pub fn f(&self) -> usize {
        self.f as usize
    }

    /// The newest configuration known (in force now, or from a slot not yet reached).
    pub fn latest(&self) -> &InForce {
        self.entries.last().expect("a history is never empty")
    }

    /// Every node a change removed, with its role.
    pub fn removed(&self) -> &[(NodeId, RoleKind)] {
        &self.removed
    }

    fn note_removed(&mut self, gone: impl IntoIterator<Item = (NodeId, RoleKind)>) {
        self.removed.extend(gone);
        self.removed.sort_unstable();
        self.removed.dedup();
        let excess = self.removed.len().saturating_sub(MAX_REMOVED);
        self.removed.drain(..excess);
    }

    /// Every configuration kept, oldest first.
    pub fn entries(&self) -> &[InForce] {
        &self.entries
    }

    fn index_at(&self, slot: Slot) -> usize {
        self.entries.partition_point(|e| e.from_slot <= slot).saturating_sub(1)
    }

    /// Whether the history knows the configuration in force at `slot`: it forgets those of slots
    /// below the trim point (or below the watermark of the replica it was learned from).
    pub fn covers(&self, slot: Slot) -> bool {
        self.entries[0].from_slot <= slot
    }

    /// The configuration in force at `slot` (the oldest kept, for a slot it does not cover: such
    /// slots are never routed, see [`ConfigHistory::covers`]).
    pub fn config_at(&self, slot: Slot) -> &Configuration {
        &self.entries[self.index_at(slot)].config
    }

    /// The acceptor group that owns `slot`.
    pub fn group_of(&self, slot: Slot) -> &[NodeId] {
        self.config_at(slot).group_of(slot)
    }

    /// The configurations in force at some slot at or above `slot`, oldest first.
    pub fn from(&self, slot: Slot) -> &[InForce] {
        &self.entries[self.index_at(slot)..]
    }

    /// Every acceptor of a configuration in force at some slot at or above `slot`.
    pub fn acceptors_from(&self, slot: Slot) -> BTreeSet<NodeId> {
        self.from(slot).iter().flat_map(|e| e.config.acceptors()).collect()
    }

    /// Every node of every role named by a configuration in force at some slot at or above `slot`.
    pub fn members_from(&self, slot: Slot) -> BTreeSet<NodeId> {
        self.from(slot).iter().flat_map(|e| e.config.members().map(|(id, _)| id)).collect()
    }

    /// Whether any configuration kept names `id` as a replica.
    pub fn names_replica(&self, id: NodeId) -> bool {
        self.entries.iter().any(|e| e.config.replicas.contains(&id))
    }

    /// Applies the change chosen at `slot`, if it is the next epoch, keeps the rules, and names a
    /// first slot above `slot`, at most `alpha` above, and above the newest configuration's.
    /// Returns whether it applied. Replicas call this for every change they execute, in slot
    /// order; a change that does not apply is skipped by all alike.
    pub fn on_chosen(&mut self, slot: Slot, change: &Change) -> bool {
        let Change { config, from_slot, ballot } = change;
        let latest = self.latest();
        let in_reach = *from_slot > slot && *from_slot <= slot.saturating_add(self.alpha);
        if validate_change(&latest.config, config, self.f()).is_err()
            || !in_reach
            || *from_slot <= latest.from_slot
        {
            return false;
        }
        let now_named: BTreeSet<NodeId> = config.members().map(|(id, _)| id).collect();
        let gone: Vec<(NodeId, RoleKind)> =
            latest.config.members().filter(|(id, _)| !now_named.contains(id)).collect();
        self.entries.push(InForce {
            config: config.clone(),
            from_slot: *from_slot,
            chosen_at: Some(slot),
            ballot: *ballot,
        });
        self.note_removed(gone);
        true
    }

    /// Forgets configurations that own no slot at or above `slot`.
    pub fn forget_below(&mut self, slot: Slot) {
        let keep_from = self.index_at(slot);
        if keep_from > 0 {
            self.entries.drain(..keep_from);
        }
    }

    /// Takes what a replica with every slot below `watermark` executed reports. Its history is
    /// the truth for changes chosen below `watermark`; where ours says otherwise (changes taken for
    /// chosen from a Phase 1 that were not), ours gives way and `Contradicted` says so. Returns
    /// whether anything was learned.
    pub fn merge(&mut self, theirs: &ConfigHistory, watermark: Slot) -> Result<bool, Contradicted> {
        if theirs.f != self.f || theirs.alpha != self.alpha {
            return Ok(false); // another cluster file's: not ours to take
        }
        let mut contradicted = false;
        // Ours beyond what they know, chosen below their watermark: they would know it.
        let their_latest = theirs.latest().config.epoch;
        if self
            .entries
            .iter()
            .any(|e| e.config.epoch > their_latest && e.chosen_at.is_some_and(|s| s < watermark))
        {
            contradicted = true;
        }
        // Epochs both know must agree.
        for mine in &self.entries {
            if let Some(other) = theirs.entries.iter().find(|e| e.config.epoch == mine.config.epoch) {
                if other != mine {
                    contradicted = true;
                }
            }
        }
        if contradicted {
            self.entries.clone_from(&theirs.entries);
            self.removed.clone_from(&theirs.removed);
            return Err(Contradicted);
        }
        if theirs.removed.len() > self.removed.len() || theirs.removed.last() != self.removed.last() {
            self.note_removed(theirs.removed.iter().copied());
        }
        let our_latest = self.latest().config.epoch;
        let newer: Vec<&InForce> = theirs.entries.iter().filter(|e| e.config.epoch > our_latest).collect();
        match newer.first() {
            None => Ok(false),
            // A gap (ours is older than anything they keep): theirs covers every slot we route.
            Some(first) if first.config.epoch > our_latest + 1 => {
                self.entries.clone_from(&theirs.entries);
                Ok(true)
            }
            Some(_) => {
                self.entries.extend(newer.into_iter().cloned());
                Ok(true)
            }
        }
    }

    /// The bytes a replica's snapshot keeps of it.
    pub fn to_bytes(&self) -> Bytes {
        encode(self)
    }

    /// A history read back from a snapshot; `None` if the bytes are not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let history = decode::<ConfigHistory>(bytes).ok()?;
        let ordered = history
            .entries
            .windows(2)
            .all(|w| w[0].from_slot < w[1].from_slot && w[0].config.epoch + 1 == w[1].config.epoch);
        (!history.entries.is_empty() && history.alpha >= 1 && ordered).then_some(history)
    }

    /// A digest of the history, for the replicas' state digest.
    pub fn digest(&self) -> u64 {
        super::digest(&self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterConfig {
        ClusterConfig::f1(2, 1, 1, 1) // groups [3, 4, 5], [6, 7, 8]
    }

    fn next(h: &ConfigHistory, groups: Vec<Vec<NodeId>>) -> Configuration {
        Configuration {
            epoch: h.latest().config.epoch + 1,
            acceptor_groups: groups,
            ..h.latest().config.clone()
        }
    }

    /// `config`, chosen at `slot`, in force `ahead` slots later.
    fn change(config: Configuration, slot: Slot, ahead: u64) -> (Slot, Change) {
        (slot, Change { config, from_slot: slot + ahead, ballot: Ballot::ZERO })
    }

    fn apply(h: &mut ConfigHistory, (slot, change): (Slot, Change)) -> bool {
        h.on_chosen(slot, &change)
    }

    #[test]
    fn a_change_chosen_at_i_is_in_force_from_the_slot_it_names_and_slots_below_keep_the_old_groups() {
        let mut h = ConfigHistory::new(&cluster(), 10);
        assert_eq!(h.group_of(5), &[6, 7, 8]);
        let one_group = next(&h, vec![vec![20, 21, 22]]);
        assert!(!apply(&mut h, change(one_group.clone(), 100, 0)), "not above its own slot");
        assert!(!apply(&mut h, change(one_group.clone(), 100, 11)), "not beyond alpha");
        assert!(apply(&mut h, change(one_group, 100, 10)));
        assert_eq!(h.group_of(109), &[6, 7, 8], "slot i + alpha - 1 keeps the old configuration");
        assert_eq!(h.group_of(110), &[20, 21, 22]);
        assert_eq!(h.group_of(111), &[20, 21, 22]);
        assert_eq!(h.acceptors_from(109), BTreeSet::from([3, 4, 5, 6, 7, 8, 20, 21, 22]));
        assert_eq!(h.acceptors_from(110), BTreeSet::from([20, 21, 22]));
        h.forget_below(109);
        assert_eq!(h.entries().len(), 2, "the old configuration still owns slot 109");
        h.forget_below(110);
        assert_eq!(h.entries().len(), 1);
        assert_eq!(h.latest().config.epoch, 1);
    }

    #[test]
    fn a_change_keeps_f_plus_1_replicas_and_proposers_and_the_history_remembers_whom_it_removed() {
        let mut h = ConfigHistory::new(&cluster(), 10);
        let base = h.latest().config.clone(); // replicas 10, 11; proposers 1, 2
        let lone = Configuration { epoch: 1, replicas: vec![10], ..base.clone() };
        let err = validate_change(&base, &lone, 1).unwrap_err();
        assert!(err.to_string().contains("replicas: need at least 2"), "{err}");
        let lone = Configuration { epoch: 1, proposers: vec![2], ..base.clone() };
        assert!(validate_change(&base, &lone, 1)
            .unwrap_err()
            .to_string()
            .contains("proposers: need at least 2"));
        let clash = Configuration { epoch: 1, replicas: vec![10, 3], ..base.clone() };
        assert_eq!(
            validate_change(&base, &clash, 1),
            Err(ReconfigError::Invalid(ConfigError::DuplicateId(3)))
        );
        let replaced = Configuration { epoch: 1, replicas: vec![10, 30], proposers: vec![31, 2], ..base };
        assert!(apply(&mut h, change(replaced.clone(), 4, 5)));
        assert_eq!(h.removed(), &[(1, RoleKind::Proposer), (11, RoleKind::Replica)]);
        assert!(h.names_replica(11) && h.names_replica(30), "both configurations are kept");
        h.forget_below(9);
        assert!(!h.names_replica(11));
        assert_eq!(h.removed().len(), 2, "forgetting configurations keeps the list of removed nodes");
        let mut proposer = ConfigHistory::new(&cluster(), 10);
        assert_eq!(proposer.merge(&h, 9), Ok(true));
        assert_eq!(proposer.removed(), h.removed());
    }

    #[test]
    fn a_change_out_of_order_or_against_the_rules_is_skipped() {
        let mut h = ConfigHistory::new(&cluster(), 10);
        let skip_epoch = Configuration { epoch: 2, ..next(&h, vec![vec![20, 21, 22]]) };
        assert!(!apply(&mut h, change(skip_epoch.clone(), 1, 5)));
        let pair = change(next(&h, vec![vec![20, 21]]), 1, 5);
        assert!(!apply(&mut h, pair), "a group of 2 with f = 1");
        let twice = next(&h, vec![vec![20, 21, 22], vec![22, 23, 24]]);
        assert!(!apply(&mut h, change(twice, 1, 5)), "an id twice");
        let same = change(next(&h, cluster().acceptor_groups), 1, 5);
        assert!(!apply(&mut h, same), "no change");
        assert_eq!(h.entries().len(), 1);
        let err = validate_change(&h.latest().config, &skip_epoch, 1).unwrap_err();
        assert!(err.to_string().contains("epoch 1"), "{err}");
    }

    #[test]
    fn merging_takes_newer_changes_and_a_contradiction_gives_way_to_the_replica() {
        let base = ConfigHistory::new(&cluster(), 10);
        let mut replica = base.clone();
        apply(&mut replica, change(next(&base, vec![vec![20, 21, 22]]), 50, 10));
        let mut proposer = base.clone();
        assert_eq!(proposer.merge(&replica, 51), Ok(true));
        assert_eq!(proposer, replica);
        assert_eq!(proposer.merge(&replica, 52), Ok(false));
        // A proposer that took a change found in Phase 1 at slot 70 for chosen; a replica past 70
        // knows nothing of it: slot 70 chose something else.
        let mut tentative = replica.clone();
        apply(&mut tentative, change(next(&replica, vec![vec![30, 31, 32]]), 70, 10));
        assert_eq!(tentative.merge(&replica, 60), Ok(false), "not yet executed: no contradiction");
        assert_eq!(tentative.merge(&replica, 71), Err(Contradicted));
        assert_eq!(tentative, replica);
    }

    #[test]
    fn a_history_round_trips_and_bad_bytes_are_refused() {
        let mut h = ConfigHistory::new(&cluster(), 3);
        let one_group = change(next(&h, vec![vec![20, 21, 22]]), 7, 3);
        apply(&mut h, one_group);
        assert_eq!(ConfigHistory::from_bytes(&h.to_bytes()), Some(h.clone()));
        assert_eq!(ConfigHistory::from_bytes(b"nonsense"), None);
        let (_, c) = change(next(&h, vec![vec![1, 2, 3]]), 20, 2);
        assert_eq!(Change::decode(&c.encode()), Some(c));
        assert_eq!(Change::decode(b"x"), None);
    }
}
