//! Proxy leader: runs Phase 2 for the leader. Sends Phase2a for a slot to that slot's acceptor group
//! (the leader names it with the proposal: the group of the configuration in force at the slot),
//! collects a majority of it (f+1 of 2f+1) at the proposal's ballot, then tells every replica the
//! slot is chosen.
//! Holds only in-flight slots; losing them in a crash costs liveness (the leader re-proposes), never safety.
//!
//! Must never: announce a slot chosen without a quorum at one ballot; grow without bound.

use super::config::{ClusterConfig, Tunables};
use super::membership::{earliest, membership_period_us, NodeMembership};
use super::messages::{Msg, Value};
use super::timers::Timers;
use super::{Ballot, Event, NodeId, Out, Role, RoleKind, Slot, Stage, Time};
use std::collections::BTreeMap;

/// Slots a proxy leader drives at once; beyond it, new proposals are dropped (the leader re-proposes).
/// Not an overload valve: the leader's window (at most `MAX_IN_FLIGHT_SLOTS`) bounds the slots in
/// flight, so a leader that keeps its window never reaches it.
pub const MAX_PROXY_IN_FLIGHT: usize = 100_000;
const _: () = assert!(super::config::MAX_IN_FLIGHT_SLOTS <= MAX_PROXY_IN_FLIGHT);
/// Phase2a resends before a proxy leader gives a slot up to the leader's own re-proposal.
pub const MAX_PHASE2A_RESENDS: u32 = 3;

#[derive(Debug, Clone)]
struct InFlight {
    ballot: Ballot,
    value: Value,
    proposer: NodeId,
    /// The acceptors that own the slot.
    group: Vec<NodeId>,
    /// Acceptors of `group` that answered Phase2b at `ballot`.
    acks: Vec<NodeId>,
    sent_at: Time,
    /// When the slot's first Phase2a left (`sent_at` moves on each resend): its `Stage::Phase2`
    /// time runs from it, resends included.
    first_sent_at: Time,
    resends: u32,
}

#[repr(usize)]
enum Timer {
    Resend,
}

/// One proxy leader.
pub struct ProxyLeader {
    config: ClusterConfig,
    resend_timeout_us: Time,
    in_flight: BTreeMap<Slot, InFlight>,
    membership: NodeMembership,
    timers: Timers<1>,
}

impl ProxyLeader {
    /// A proxy leader with nothing in flight.
    pub fn new(id: NodeId, config: ClusterConfig, tunables: &Tunables) -> Self {
        let period = membership_period_us(tunables);
        ProxyLeader {
            membership: NodeMembership::new(id, RoleKind::ProxyLeader, &config, period),
            config,
            resend_timeout_us: tunables.resend_timeout_us,
            in_flight: BTreeMap::new(),
            timers: Timers::default(),
        }
    }

    /// A proxy leader that is not in the configuration: it joins the running cluster, announcing
    /// that it listens at `addr`.
    pub fn joining(mut self, addr: String, now: Time) -> Self {
        self.membership.join(addr, now);
        self
    }

    /// This node's side of membership.
    pub fn membership(&self) -> &NodeMembership {
        &self.membership
    }

    /// Slots being driven now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn send_phase2a(&self, slot: Slot, entry: &InFlight, out: &mut Out) {
        for &acceptor in entry.group.iter().filter(|a| !entry.acks.contains(a)) {
            let value = entry.value.clone();
            out.send(acceptor, Msg::Phase2a { ballot: entry.ballot, slot, value });
        }
    }

    /// A proposal for `slot` (from its proposer, with its ballot, value and group): Phase 2 starts.
    fn on_propose(&mut self, now: Time, slot: Slot, mut entry: InFlight, out: &mut Out) {
        if entry.group.is_empty() || entry.group.len().is_multiple_of(2) {
            out.dropped("proxy leader: a proposal whose group is not 2f+1 acceptors");
            return;
        }
        if let Some(existing) = self.in_flight.get(&slot) {
            if existing.ballot > entry.ballot {
                out.dropped("proxy leader: proposal below a ballot already in flight");
                return;
            }
            if existing.ballot == entry.ballot {
                // The leader re-proposed the same slot: its Phase 2 began with the first Phase2a.
                entry.first_sent_at = existing.first_sent_at;
                if existing.value == entry.value && existing.group == entry.group {
                    // The votes already counted stand (one ballot proposes one value per slot):
                    // forgetting them would make a slot whose votes take longer than the leader's
                    // resend period never reach a quorum.
                    entry.acks = existing.acks.clone();
                }
            }
        } else if self.in_flight.len() >= MAX_PROXY_IN_FLIGHT {
            out.dropped("proxy leader: in-flight limit reached");
            return;
        }
        self.send_phase2a(slot, &entry, out);
        self.in_flight.insert(slot, entry);
        if !self.timers.is_set(Timer::Resend as usize) {
            self.timers.set(Timer::Resend as usize, now + self.resend_timeout_us);
        }
    }

    fn on_phase2b(&mut self, now: Time, from: NodeId, ballot: Ballot, slot: Slot, out: &mut Out) {
        let Some(entry) = self.in_flight.get_mut(&slot) else {
            return; // Already chosen, or given up: a late or duplicate vote.
        };
        if entry.ballot != ballot || !entry.group.contains(&from) {
            out.dropped("proxy leader: phase2b for another ballot or from outside the group");
            return;
        }
        if !entry.acks.contains(&from) {
            entry.acks.push(from);
        }
        let quorum = entry.group.len() / 2 + 1;
        if entry.acks.len() >= quorum {
            // A slot with a quorum is announced and forgotten at once (checked here, where acks
            // grow, rather than by walking every slot after each message).
            let entry = self.in_flight.remove(&slot).expect("present above");
            assert_eq!(entry.acks.len(), quorum, "slot {slot}: announced exactly at quorum");
            let micros = now.saturating_sub(entry.first_sent_at);
            out.event(|| Event::Stage { stage: Stage::Phase2, micros });
            // The replicas now (the newest configuration a view carried): a replica a change added
            // that this proxy leader has not heard of yet learns the slot from its peers.
            let replicas = self.membership.view().replicas(&self.config);
            let (last, rest) = replicas.split_last().expect("validated: replicas exist");
            for &replica in rest {
                out.send(replica, Msg::Chosen { slot, value: entry.value.clone() });
            }
            out.send(*last, Msg::Chosen { slot, value: entry.value });
        }
    }

    fn on_nack(&mut self, promised: Ballot, out: &mut Out) {
        // Every slot proposed below the new promise is now the new leader's business; tell each
        // deposed proposer once and stop driving its slots.
        let mut deposed: Vec<NodeId> = Vec::new();
        self.in_flight.retain(|_, e| {
            let keep = e.ballot >= promised;
            if !keep && !deposed.contains(&e.proposer) {
                deposed.push(e.proposer);
            }
            keep
        });
        for proposer in deposed {
            out.send(proposer, Msg::Preempted { promised });
        }
    }

    fn on_resend_timer(&mut self, now: Time, out: &mut Out) {
        let due: Vec<Slot> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.sent_at + self.resend_timeout_us <= now)
            .map(|(&s, _)| s)
            .collect();
        for slot in due {
            let entry = self.in_flight.get_mut(&slot).expect("collected above");
            if entry.resends >= MAX_PHASE2A_RESENDS {
                self.in_flight.remove(&slot);
                out.dropped("proxy leader: gave a slot up after resends");
                continue;
            }
            entry.resends += 1;
            entry.sent_at = now;
            let entry = entry.clone();
            self.send_phase2a(slot, &entry, out);
        }
        if let Some(oldest) = self.in_flight.values().map(|e| e.sent_at).min() {
            self.timers.set(Timer::Resend as usize, (oldest + self.resend_timeout_us).max(now + 1));
        }
    }

    fn check_invariants(&self) {
        assert!(self.in_flight.len() <= MAX_PROXY_IN_FLIGHT);
        assert!(self.in_flight.is_empty() || self.timers.is_set(Timer::Resend as usize));
    }
}

impl Role for ProxyLeader {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::Propose { ballot, slot, value, group } => {
                self.membership.on_work(now);
                let entry = InFlight {
                    ballot,
                    value,
                    proposer: from,
                    group,
                    acks: Vec::new(),
                    sent_at: now,
                    first_sent_at: now,
                    resends: 0,
                };
                self.on_propose(now, slot, entry, out)
            }
            Msg::Membership(view) if self.membership.accepts_view_from(from, &view) => {
                self.membership.on_view(&view);
            }
            Msg::Leave => self.membership.on_leave(now, from, out),
            Msg::Phase2b { ballot, slot } => self.on_phase2b(now, from, ballot, slot, out),
            Msg::Nack { promised } => self.on_nack(promised, out),
            _ => out.dropped("proxy leader: unexpected message"),
        }
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        let expired: Vec<usize> = self.timers.take_expired(now).collect();
        for timer in expired {
            if timer == Timer::Resend as usize {
                self.on_resend_timer(now, out);
            }
        }
        let idle = self.in_flight.is_empty();
        self.membership.on_timeout(now, idle, out);
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        earliest(self.timers.next(), self.membership.poll_timeout())
    }

    fn kind(&self) -> RoleKind {
        RoleKind::ProxyLeader
    }

    fn status(&self) -> crate::protocol::messages::NodeStatus {
        self.membership.status(RoleKind::ProxyLeader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Ballot = Ballot { round: 1, proposer: 1 };

    fn setup() -> (ProxyLeader, ClusterConfig) {
        let config = ClusterConfig::f1(1, 1, 1, 1); // proposers 1,2; acceptors 3,4,5; proxy 6; replicas 7,8
        (ProxyLeader::new(config.proxy_leaders[0], config.clone(), &Tunables::default()), config)
    }

    fn call(p: &mut ProxyLeader, from: NodeId, msg: Msg) -> Vec<(NodeId, Msg)> {
        let mut out = Out::new(false);
        p.handle_message(0, from, msg, &mut out);
        out.msgs
    }

    #[test]
    fn phase2a_to_the_group_then_chosen_to_every_replica_after_f_plus_1_votes() {
        let (mut p, _) = setup();
        let sent =
            call(&mut p, 1, Msg::Propose { ballot: B, slot: 0, value: Value::Noop, group: vec![3, 4, 5] });
        assert_eq!(sent.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(call(&mut p, 3, Msg::Phase2b { ballot: B, slot: 0 }).is_empty());
        assert!(
            call(&mut p, 3, Msg::Phase2b { ballot: B, slot: 0 }).is_empty(),
            "a duplicate vote counts once"
        );
        let sent = call(&mut p, 5, Msg::Phase2b { ballot: B, slot: 0 });
        assert_eq!(
            sent,
            vec![
                (7, Msg::Chosen { slot: 0, value: Value::Noop }),
                (8, Msg::Chosen { slot: 0, value: Value::Noop })
            ]
        );
        assert_eq!(p.in_flight(), 0);
        assert!(call(&mut p, 4, Msg::Phase2b { ballot: B, slot: 0 }).is_empty(), "late votes are ignored");
    }

    #[test]
    fn a_slot_is_timed_from_its_first_phase2a_to_its_quorum_resends_included() {
        let (mut p, _) = setup();
        let t = Tunables::default().resend_timeout_us;
        let mut out = Out::new(true);
        let propose = Msg::Propose { ballot: B, slot: 0, value: Value::Noop, group: vec![3, 4, 5] };
        p.handle_message(100, 1, propose, &mut out);
        p.handle_message(150, 3, Msg::Phase2b { ballot: B, slot: 0 }, &mut out);
        p.handle_timeout(100 + t, &mut out);
        assert_eq!(out.msgs.len(), 3 + 2, "resent to the two that have not voted");
        p.handle_message(100 + t + 400, 4, Msg::Phase2b { ballot: B, slot: 0 }, &mut out);
        assert_eq!(out.events, vec![Event::Stage { stage: Stage::Phase2, micros: t + 400 }]);
        p.handle_message(100 + t + 500, 5, Msg::Phase2b { ballot: B, slot: 0 }, &mut out);
        assert_eq!(out.events.len(), 1, "one event per slot: a late vote adds none");
    }

    #[test]
    fn a_re_proposal_keeps_the_votes_already_counted() {
        let (mut p, _) = setup();
        let propose = || Msg::Propose { ballot: B, slot: 0, value: Value::Noop, group: vec![3, 4, 5] };
        call(&mut p, 1, propose());
        call(&mut p, 3, Msg::Phase2b { ballot: B, slot: 0 });
        let resent = call(&mut p, 1, propose());
        let to: Vec<_> = resent.iter().map(|(to, _)| *to).collect();
        assert_eq!(to, vec![4, 5], "asks only the acceptors that have not voted");
        let chosen = call(&mut p, 4, Msg::Phase2b { ballot: B, slot: 0 });
        assert!(chosen.iter().all(|(_, m)| matches!(m, Msg::Chosen { slot: 0, .. })));
        assert!(!chosen.is_empty(), "the vote before the re-proposal and the one after make a quorum");
    }

    #[test]
    fn votes_at_another_ballot_do_not_count() {
        let (mut p, _) = setup();
        call(&mut p, 1, Msg::Propose { ballot: B, slot: 0, value: Value::Noop, group: vec![3, 4, 5] });
        let other = Ballot { round: 0, proposer: 2 };
        call(&mut p, 3, Msg::Phase2b { ballot: other, slot: 0 });
        assert!(call(&mut p, 4, Msg::Phase2b { ballot: B, slot: 0 }).is_empty());
    }

    #[test]
    fn a_nack_is_reported_to_the_deposed_proposer() {
        let (mut p, _) = setup();
        call(&mut p, 1, Msg::Propose { ballot: B, slot: 0, value: Value::Noop, group: vec![3, 4, 5] });
        let higher = Ballot { round: 2, proposer: 2 };
        let sent = call(&mut p, 3, Msg::Nack { promised: higher });
        assert_eq!(sent, vec![(1, Msg::Preempted { promised: higher })]);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn unanswered_phase2a_is_resent_then_given_up() {
        let (mut p, _) = setup();
        let t = Tunables::default().resend_timeout_us;
        call(&mut p, 1, Msg::Propose { ballot: B, slot: 0, value: Value::Noop, group: vec![3, 4, 5] });
        call(&mut p, 3, Msg::Phase2b { ballot: B, slot: 0 });
        let mut now = 0;
        for _ in 0..MAX_PHASE2A_RESENDS {
            now = p.poll_timeout().unwrap();
            let mut out = Out::new(false);
            p.handle_timeout(now, &mut out);
            let to: Vec<_> = out.msgs.iter().map(|(to, _)| *to).collect();
            assert_eq!(to, vec![4, 5], "only acceptors that have not voted");
        }
        let mut out = Out::new(false);
        p.handle_timeout(now + t, &mut out);
        assert!(out.msgs.is_empty());
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.poll_timeout(), None);
    }
}
