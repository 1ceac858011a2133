//! Proposer: f+1 of them, one leads. The leader assigns each batch a slot and hands it to a proxy
//! leader; it is two messages per batch whatever f is. Followers watch the leader's heartbeats and
//! run for leader when they stop: Phase 1 on every acceptor group from the lowest slot not known to be
//! chosen, re-propose the highest-ballot value found per slot, fill holes with no-ops, and only then
//! take new batches. A proposer's memory is lost in a crash; everything it needs is re-learned.
//!
//! Why a proposer needs no disk: safety rests on the acceptors' durable promises and votes alone,
//! and a new leader re-learns from them in Phase 1 everything that may have been chosen. The one
//! thing a restart could break is "one ballot, one Phase 1": a proposer that comes back without
//! memory runs again with a ballot of its previous life, and if acceptors took its Phase1a for a
//! retransmission of the old one, its new life could propose a second value in a slot at the same
//! ballot. Each Phase 1 carries a nonce drawn from the incarnation's seed, which the driver draws
//! fresh at every start (`birth::RoleSpec::seed`), so acceptors refuse the new life's Phase 1 and it
//! moves to a higher ballot.
//!
//! Must never: propose two values for one slot at one ballot; take new batches before Phase 1 is done;
//! keep leading after seeing a higher ballot; drop a batch without forwarding, refusing or counting it.

use super::config::{ClusterConfig, Tunables};
use super::membership::{is_stateless, View, HEARTBEATS_PER_VIEW};
use super::messages::{encode_batch, Msg, Phase1bReply, Value};
use super::timers::Timers;
use super::{Ballot, Event, NodeId, Out, Role, RoleKind, Slot, Time};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Batches a leader holds while its in-flight window is full; beyond it they are dropped and counted
/// (their clients retry).
pub const MAX_WAITING_BATCHES: usize = 10_000;

#[repr(usize)]
#[derive(Clone, Copy)]
enum Timer {
    /// Follower or candidate: no word from a leader; run (again).
    Election,
    /// Leader: tell the others I lead; trim acceptors.
    Heartbeat,
    /// Candidate: resend unanswered Phase1a. Leader: re-propose slots not executed in time.
    Resend,
}

#[derive(Debug)]
struct Phase1 {
    /// Drawn fresh for this Phase 1; only Phase1b echoing it count, so a stale or duplicated answer
    /// to an earlier incarnation of this proposer (same ballot, lost memory) never does.
    nonce: u64,
    /// Lowest slot not known to be chosen when the election started.
    start: Slot,
    /// Per acceptor group, the acceptors that promised.
    promised: Vec<BTreeSet<NodeId>>,
    /// The highest trim point reported: everything below is executed by every replica.
    max_trimmed: Slot,
    /// Per slot, the highest-ballot value reported.
    found: BTreeMap<Slot, (Ballot, Value)>,
}

#[derive(Debug)]
struct InFlight {
    value: Value,
    proposed_at: Time,
}

#[derive(Debug)]
struct Leadership {
    next_slot: Slot,
    in_flight: BTreeMap<Slot, InFlight>,
    /// Batches (with the node to refuse or forward them for) waiting for room in the window.
    waiting: VecDeque<(NodeId, Bytes)>,
    next_proxy: usize,
    trimmed_sent: Slot,
}

#[derive(Debug)]
enum State {
    Follower,
    Candidate(Phase1),
    Leader(Leadership),
}

/// One proposer.
pub struct Proposer {
    id: NodeId,
    config: ClusterConfig,
    tunables: Tunables,
    rng: ChaCha8Rng,
    /// The highest ballot seen, own or another's.
    ballot: Ballot,
    state: State,
    leader_hint: Option<NodeId>,
    /// What each replica last said it executed, and when it last said so.
    replica_watermarks: BTreeMap<NodeId, Slot>,
    replica_heard_at: BTreeMap<NodeId, Time>,
    /// The stateless nodes and where each stands. Every proposer applies the joins and departures it
    /// hears and merges the views it gets; the leader publishes its view.
    view: View,
    /// The proxy leaders in service in `view`, by id (never empty: the last one cannot leave).
    proxy_leaders: Vec<NodeId>,
    /// Heartbeats since the leader last published its view.
    heartbeats_since_view: u32,
    timers: Timers<3>,
}

impl Proposer {
    /// A follower that has heard from no one. `seed` drives its election jitter. The first configured
    /// proposer runs early so a fresh cluster elects quickly; the others wait a full timeout.
    pub fn new(id: NodeId, config: ClusterConfig, tunables: Tunables, seed: u64, now: Time) -> Self {
        assert!(config.proposers.contains(&id), "node {id} is not a proposer");
        let first = config.proposers[0] == id;
        let mut p = Proposer {
            id,
            config: config.clone(),
            tunables,
            rng: ChaCha8Rng::seed_from_u64(seed),
            ballot: Ballot::ZERO,
            state: State::Follower,
            leader_hint: None,
            replica_watermarks: BTreeMap::new(),
            replica_heard_at: BTreeMap::new(),
            view: View::from_config(&config),
            proxy_leaders: config.proxy_leaders.clone(),
            heartbeats_since_view: 0,
            timers: Timers::default(),
        };
        if first {
            p.timers.set(Timer::Election as usize, now + p.tunables.heartbeat_interval_us);
        } else {
            p.reset_election_timer(now);
        }
        p
    }

    /// Whether this proposer is the leader (Phase 1 done, not deposed as far as it knows).
    pub fn is_leader(&self) -> bool {
        matches!(self.state, State::Leader(_))
    }

    /// The highest ballot this proposer has seen.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// Slots proposed and not yet known executed (leader only).
    pub fn in_flight(&self) -> usize {
        match &self.state {
            State::Leader(l) => l.in_flight.len(),
            _ => 0,
        }
    }

    fn reset_election_timer(&mut self, now: Time) {
        let base = self.tunables.election_timeout_us;
        let jitter = self.rng.gen_range(0..=base);
        self.timers.set(Timer::Election as usize, now + base + jitter);
    }

    /// Slots below this are executed by some replica, hence chosen.
    fn max_executed(&self) -> Slot {
        self.replica_watermarks.values().copied().max().unwrap_or(0)
    }

    /// Acceptors may forget the slots below this. Every replica that is up (reported within
    /// `replica_down_after_us`) has executed them, so a silent replica does not hold the logs back
    /// for ever; and however far a replica lags, the acceptors keep at most `teach_retention_slots`
    /// behind the furthest one. A replica below the point learns from a peer replica (by log
    /// segment or snapshot), never from the acceptors. Safe at any point up to `max_executed`:
    /// those slots are chosen, and a new leader starts above them.
    fn trim_point(&self, now: Time) -> Slot {
        let furthest = self.max_executed();
        let down_after = self.tunables.replica_down_after_us;
        let slowest_up = self
            .replica_watermarks
            .iter()
            .filter(|(r, _)| self.replica_heard_at.get(r).is_some_and(|&at| now <= at + down_after))
            .map(|(_, &w)| w)
            .min()
            .unwrap_or(0);
        slowest_up.max(furthest.saturating_sub(self.tunables.teach_retention_slots)).min(furthest)
    }

    // ---- elections ----

    fn start_phase1(&mut self, now: Time, out: &mut Out) {
        self.ballot = Ballot::next_after(self.ballot, self.id);
        self.leader_hint = None;
        let start = self.max_executed();
        let nonce = self.rng.gen();
        self.state = State::Candidate(Phase1 {
            nonce,
            start,
            promised: vec![BTreeSet::new(); self.config.acceptor_groups.len()],
            max_trimmed: 0,
            found: BTreeMap::new(),
        });
        for acceptor in self.config.all_acceptors() {
            out.send(acceptor, Msg::Phase1a { ballot: self.ballot, nonce, from_slot: start });
        }
        self.timers.cancel(Timer::Heartbeat as usize);
        self.timers.set(Timer::Resend as usize, now + self.tunables.resend_timeout_us);
        self.reset_election_timer(now);
    }

    fn on_phase1b(&mut self, now: Time, from: NodeId, reply: Phase1bReply, out: &mut Out) {
        let Phase1bReply { ballot, nonce, trimmed_below, accepted, more_from } = reply;
        let State::Candidate(phase1) = &mut self.state else {
            return;
        };
        if ballot != self.ballot || nonce != phase1.nonce {
            return; // An answer to an earlier election of ours.
        }
        let Some(group) = self.config.acceptor_groups.iter().position(|g| g.contains(&from)) else {
            out.dropped("proposer: phase1b from a node that is not an acceptor");
            return;
        };
        phase1.max_trimmed = phase1.max_trimmed.max(trimmed_below);
        for entry in accepted {
            if entry.slot < phase1.start || self.config.group_of(entry.slot) != group {
                continue;
            }
            match phase1.found.get(&entry.slot) {
                Some((b, _)) if *b >= entry.ballot => {}
                _ => {
                    phase1.found.insert(entry.slot, (entry.ballot, entry.value));
                }
            }
        }
        // A paged report: ask for the rest (the same ballot and nonce is answered as a
        // retransmission); the promise counts once the report is complete.
        if let Some(next) = more_from {
            out.send(from, Msg::Phase1a { ballot, nonce, from_slot: next });
            return;
        }
        phase1.promised[group].insert(from);
        let quorum = self.config.quorum();
        if phase1.promised.iter().all(|p| p.len() >= quorum) {
            self.become_leader(now, out);
        }
    }

    fn become_leader(&mut self, now: Time, out: &mut Out) {
        let State::Candidate(phase1) = std::mem::replace(&mut self.state, State::Follower) else {
            unreachable!("only a candidate becomes leader")
        };
        let start = phase1.start.max(phase1.max_trimmed);
        let end = phase1.found.keys().next_back().map_or(start, |&s| (s + 1).max(start));
        self.state = State::Leader(Leadership {
            next_slot: end,
            in_flight: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_proxy: 0,
            trimmed_sent: 0,
        });
        self.leader_hint = Some(self.id);
        // Publish the view at once: nodes that know more answer with theirs, which we merge.
        self.publish_view(out);
        let mut found = phase1.found;
        // Re-propose what may have been chosen, and fill every hole with a no-op, before any new batch.
        for slot in start..end {
            let value = found.remove(&slot).map_or(Value::Noop, |(_, v)| v);
            self.propose(now, slot, value, out);
        }
        self.timers.cancel(Timer::Election as usize);
        self.send_heartbeats(out);
        self.timers.set(Timer::Heartbeat as usize, now + self.tunables.heartbeat_interval_us);
        self.arm_resend(now);
        let ballot = self.ballot;
        out.event(|| Event::BecameLeader { ballot });
    }

    /// Adopts a higher ballot seen anywhere; a leader or candidate steps down.
    fn observe_ballot(&mut self, now: Time, ballot: Ballot, out: &mut Out) {
        if ballot <= self.ballot {
            return;
        }
        self.ballot = ballot;
        self.leader_hint = Some(ballot.proposer);
        if let State::Leader(leadership) = std::mem::replace(&mut self.state, State::Follower) {
            // Batches still waiting go to the new leader rather than being lost.
            for (origin, batch) in leadership.waiting {
                out.send(ballot.proposer, Msg::ClientBatch { origin, forwarded: true, attempt: 0, batch });
            }
        }
        self.state = State::Follower;
        self.timers.cancel(Timer::Heartbeat as usize);
        self.timers.cancel(Timer::Resend as usize);
        self.reset_election_timer(now);
    }

    fn on_heartbeat(&mut self, now: Time, from: NodeId, ballot: Ballot, out: &mut Out) {
        if ballot < self.ballot {
            if self.is_leader() {
                out.send(from, Msg::Heartbeat { ballot: self.ballot }); // depose the stale leader at once
            }
            return;
        }
        self.observe_ballot(now, ballot, out);
        if ballot.proposer != self.id {
            self.leader_hint = Some(ballot.proposer);
            self.reset_election_timer(now);
        }
    }

    // ---- the leader's work ----

    fn propose(&mut self, now: Time, slot: Slot, value: Value, out: &mut Out) {
        let State::Leader(l) = &mut self.state else { unreachable!("only a leader proposes") };
        let proxies = &self.proxy_leaders;
        let proxy = proxies[l.next_proxy % proxies.len()];
        l.next_proxy = l.next_proxy.wrapping_add(1);
        out.send(proxy, Msg::Propose { ballot: self.ballot, slot, value: value.clone() });
        l.in_flight.insert(slot, InFlight { value, proposed_at: now });
    }

    fn on_batch(
        &mut self,
        now: Time,
        origin: NodeId,
        forwarded: bool,
        attempt: u8,
        batch: Bytes,
        out: &mut Out,
    ) {
        match &mut self.state {
            State::Leader(l) => {
                if l.in_flight.len() < self.tunables.max_in_flight_slots && l.waiting.is_empty() {
                    let slot = self.take_next_slot();
                    self.propose(now, slot, Value::Batch(batch), out);
                    self.arm_resend(now);
                } else if l.waiting.len() < MAX_WAITING_BATCHES {
                    l.waiting.push_back((origin, batch));
                } else {
                    out.dropped("proposer: waiting queue full");
                }
            }
            _ => match self.leader_hint {
                Some(leader) if !forwarded && leader != self.id => {
                    out.send(leader, Msg::ClientBatch { origin, forwarded: true, attempt, batch });
                }
                hint => out.send(origin, Msg::BatchRefused { leader_hint: hint, attempt, batch }),
            },
        }
    }

    fn on_executed(&mut self, now: Time, from: NodeId, watermark: Slot, out: &mut Out) {
        if !self.config.replicas.contains(&from) {
            out.dropped("proposer: watermark from a node that is not a replica");
            return;
        }
        let known = self.replica_watermarks.entry(from).or_insert(0);
        *known = (*known).max(watermark);
        self.replica_heard_at.insert(from, now);
        let executed = self.max_executed();
        let State::Leader(l) = &mut self.state else {
            return;
        };
        l.in_flight = l.in_flight.split_off(&executed);
        // Room in the window: admit waiting batches in arrival order.
        let room = self.tunables.max_in_flight_slots.saturating_sub(l.in_flight.len());
        let admitted: Vec<Bytes> =
            (0..room).map_while(|_| l.waiting.pop_front().map(|(_, batch)| batch)).collect();
        for batch in admitted {
            let slot = self.take_next_slot();
            self.propose(now, slot, Value::Batch(batch), out);
        }
        self.arm_resend(now);
    }

    fn take_next_slot(&mut self) -> Slot {
        let State::Leader(l) = &mut self.state else { unreachable!("only a leader assigns slots") };
        l.next_slot += 1;
        l.next_slot - 1
    }

    fn send_heartbeats(&self, out: &mut Out) {
        let others = self.config.proposers.iter().filter(|&&p| p != self.id).copied();
        for node in others.chain(self.view.batchers_to_inform()) {
            out.send(node, Msg::Heartbeat { ballot: self.ballot });
        }
    }

    // ---- membership of the stateless roles ----

    /// Applies a change to the view; the leader publishes a changed view at once.
    fn change_view(&mut self, out: &mut Out, change: impl FnOnce(&mut View) -> bool) {
        if !change(&mut self.view) {
            return;
        }
        let proxies: Vec<NodeId> = self.view.in_service(RoleKind::ProxyLeader).collect();
        if !proxies.is_empty() {
            self.proxy_leaders = proxies;
        }
        if self.is_leader() {
            self.publish_view(out);
        }
    }

    /// Sends the view to everyone who routes work to stateless nodes, and to those nodes.
    fn publish_view(&mut self, out: &mut Out) {
        self.heartbeats_since_view = 0;
        let others = self.config.proposers.iter().filter(|&&p| p != self.id).copied();
        let targets: BTreeSet<NodeId> =
            others.chain(self.config.replicas.iter().copied()).chain(self.view.stateless_nodes()).collect();
        for node in targets {
            out.send(node, Msg::Membership(self.view.clone()));
        }
    }

    fn on_join(&mut self, from: NodeId, role: RoleKind, addr: String, out: &mut Out) {
        let configured_stateful = self.config.all_nodes().any(|(id, kind)| id == from && !is_stateless(kind));
        if configured_stateful || !is_stateless(role) {
            out.dropped("proposer: a join by a node that cannot join");
            return;
        }
        if self.view.serves(from) && self.is_leader() {
            // A repeat (our view was lost on its way): answer it.
            out.send(from, Msg::Membership(self.view.clone()));
        }
        self.change_view(out, |v| v.join(from, role, addr));
    }

    /// A view from another proposer (the leader's) or a replica (answering a stale one of ours).
    fn on_view(&mut self, from: NodeId, view: View, out: &mut Out) {
        if !self.config.proposers.contains(&from) && !self.config.replicas.contains(&from) {
            out.dropped("proposer: a view from a node that publishes none");
            return;
        }
        self.change_view(out, |v| v.merge(&view));
        if self.config.proposers.contains(&from) && !view.covers(&self.view) {
            // Its sender (a leader that restarted without memory, say) knows less: teach it.
            out.send(from, Msg::Membership(self.view.clone()));
        }
    }

    fn on_heartbeat_timer(&mut self, now: Time, out: &mut Out) {
        self.send_heartbeats(out);
        self.heartbeats_since_view += 1;
        if self.is_leader() && self.heartbeats_since_view >= HEARTBEATS_PER_VIEW {
            self.publish_view(out);
        }
        let below = self.trim_point(now);
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if below > l.trimmed_sent {
            l.trimmed_sent = below;
            for acceptor in self.config.all_acceptors() {
                out.send(acceptor, Msg::Trim { below });
            }
        }
        self.timers.set(Timer::Heartbeat as usize, now + self.tunables.heartbeat_interval_us);
    }

    /// Keeps the resend timer armed while slots are in flight, in O(1): a proposal made now is
    /// younger than any already in flight, so an armed timer is never late for it. Only when the
    /// window was empty does a new deadline start; the timer's handler rescans (once per period).
    fn arm_resend(&mut self, now: Time) {
        let State::Leader(l) = &self.state else {
            return;
        };
        if l.in_flight.is_empty() {
            self.timers.cancel(Timer::Resend as usize);
        } else if !self.timers.is_set(Timer::Resend as usize) {
            self.timers.set(Timer::Resend as usize, now + self.tunables.resend_timeout_us);
        }
    }

    /// Re-arms the resend timer at the oldest in-flight proposal's deadline (walks the window).
    fn rearm_resend_at_oldest(&mut self, now: Time) {
        let State::Leader(l) = &self.state else {
            return;
        };
        match l.in_flight.values().map(|f| f.proposed_at).min() {
            Some(oldest) => self
                .timers
                .set(Timer::Resend as usize, (oldest + self.tunables.resend_timeout_us).max(now + 1)),
            None => self.timers.cancel(Timer::Resend as usize),
        }
    }

    fn on_resend_timer(&mut self, now: Time, out: &mut Out) {
        match &mut self.state {
            State::Candidate(phase1) => {
                let (ballot, nonce, start) = (self.ballot, phase1.nonce, phase1.start);
                for (group, members) in self.config.acceptor_groups.iter().enumerate() {
                    for &a in members.iter().filter(|a| !phase1.promised[group].contains(a)) {
                        out.send(a, Msg::Phase1a { ballot, nonce, from_slot: start });
                    }
                }
                self.timers.set(Timer::Resend as usize, now + self.tunables.resend_timeout_us);
            }
            State::Leader(l) => {
                let timeout = self.tunables.resend_timeout_us;
                let due: Vec<(Slot, Value)> = l
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.proposed_at + timeout <= now)
                    .map(|(&s, f)| (s, f.value.clone()))
                    .collect();
                for (slot, value) in due {
                    self.propose(now, slot, value, out);
                }
                self.rearm_resend_at_oldest(now);
            }
            State::Follower => {}
        }
    }

    fn check_invariants(&self) {
        match &self.state {
            State::Follower => assert!(self.timers.is_set(Timer::Election as usize)),
            State::Candidate(p) => {
                assert_eq!(self.ballot.proposer, self.id, "a candidate runs with its own ballot");
                assert!(self.timers.is_set(Timer::Election as usize));
                assert!(
                    p.found.keys().next().is_none_or(|&s| s >= p.start),
                    "found slots start at the phase 1 start"
                );
            }
            State::Leader(l) => {
                assert_eq!(self.ballot.proposer, self.id, "a leader leads with its own ballot");
                assert!(!self.proxy_leaders.is_empty(), "a leader always has a proxy leader");
                assert!(self.timers.is_set(Timer::Heartbeat as usize));
                assert!(!self.timers.is_set(Timer::Election as usize));
                assert!(l.in_flight.keys().next_back().is_none_or(|&s| s < l.next_slot));
                assert!(l.waiting.len() <= MAX_WAITING_BATCHES);
                assert_eq!(l.in_flight.is_empty(), !self.timers.is_set(Timer::Resend as usize));
            }
        }
    }
}

impl Role for Proposer {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::ClientBatch { origin, forwarded, attempt, batch } => {
                self.on_batch(now, origin, forwarded, attempt, batch, out)
            }
            Msg::ClientRequests(commands) => {
                if self.is_leader() {
                    self.on_batch(now, from, true, 0, encode_batch(commands), out);
                } else {
                    out.send(from, Msg::NotLeader { leader_hint: self.leader_hint });
                }
            }
            Msg::Heartbeat { ballot } => self.on_heartbeat(now, from, ballot, out),
            Msg::Phase1b(reply) => self.on_phase1b(now, from, reply, out),
            Msg::Nack { promised } | Msg::Preempted { promised } => self.observe_ballot(now, promised, out),
            Msg::Executed { watermark } => self.on_executed(now, from, watermark, out),
            Msg::Join { role, addr } => self.on_join(from, role, addr, out),
            // Only the leader admits departures, one at a time, so two nodes leaving at once cannot
            // take the last one of a role out of service; the node repeats its request until a view
            // from the leader says it is leaving.
            Msg::Leaving if self.is_leader() => self.change_view(out, |v| v.start_leaving(from)),
            Msg::Leaving => {}
            Msg::Left => self.change_view(out, |v| v.forget(from)),
            Msg::Membership(view) => self.on_view(from, view, out),
            _ => out.dropped("proposer: unexpected message"),
        }
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        let expired: Vec<usize> = self.timers.take_expired(now).collect();
        for timer in expired {
            match timer {
                t if t == Timer::Election as usize => self.start_phase1(now, out),
                t if t == Timer::Heartbeat as usize => self.on_heartbeat_timer(now, out),
                t if t == Timer::Resend as usize => self.on_resend_timer(now, out),
                _ => unreachable!("three timers"),
            }
        }
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Proposer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::AcceptedEntry;

    // Proposers 1, 2; acceptor groups [3, 4, 5] (even slots) and [6, 7, 8] (odd slots); proxy leader 9;
    // replicas 10, 11; batcher 12; unbatcher 13.
    fn config() -> ClusterConfig {
        ClusterConfig::f1(2, 1, 1, 1)
    }

    fn b(round: u64, proposer: NodeId) -> Ballot {
        Ballot { round, proposer }
    }

    fn batch(tag: &'static [u8]) -> Bytes {
        Bytes::from_static(tag)
    }

    /// Proposer 1 with its first election started; returns it with the Phase 1 nonce.
    fn candidate(tunables: Tunables) -> (Proposer, u64) {
        let mut p = Proposer::new(1, config(), tunables, 7, 0);
        let mut out = Out::new(false);
        p.handle_timeout(p.poll_timeout().unwrap(), &mut out);
        assert_eq!(out.msgs.len(), 6, "Phase1a to every acceptor of every group");
        let Msg::Phase1a { nonce, .. } = out.msgs[0].1 else { panic!("{:?}", out.msgs[0]) };
        (p, nonce)
    }

    fn promise(p: &mut Proposer, acceptor: NodeId, nonce: u64, accepted: Vec<AcceptedEntry>) -> Out {
        let mut out = Out::new(true);
        let msg = Msg::Phase1b(Phase1bReply {
            ballot: p.ballot(),
            nonce,
            trimmed_below: 0,
            accepted,
            more_from: None,
        });
        p.handle_message(0, acceptor, msg, &mut out);
        out
    }

    fn proposals(out: &Out) -> Vec<(Slot, Value)> {
        out.msgs
            .iter()
            .filter_map(|(_, m)| match m {
                Msg::Propose { slot, value, .. } => Some((*slot, value.clone())),
                _ => None,
            })
            .collect()
    }

    fn leader(tunables: Tunables) -> Proposer {
        let (mut p, nonce) = candidate(tunables);
        for a in [3, 4, 6, 7] {
            promise(&mut p, a, nonce, vec![]);
        }
        assert!(p.is_leader());
        p
    }

    #[test]
    fn leads_only_after_a_quorum_of_every_group_and_reproposes_the_highest_ballot_value() {
        let (mut p, nonce) = candidate(Tunables::default());
        let entry = |slot, ballot, tag| AcceptedEntry { slot, ballot, value: Value::Batch(batch(tag)) };
        promise(&mut p, 3, nonce, vec![entry(0, b(1, 2), b"old"), entry(4, b(1, 2), b"four")]);
        promise(&mut p, 4, nonce, vec![entry(0, b(2, 2), b"new")]);
        assert!(!p.is_leader(), "group 2 has not answered");
        promise(&mut p, 6, nonce, vec![]);
        let out = promise(&mut p, 7, nonce, vec![]);
        assert!(p.is_leader());
        // Slot 0: the higher ballot's value; slots 1..=3: holes filled with no-ops; slot 4 re-proposed.
        assert_eq!(
            proposals(&out),
            vec![
                (0, Value::Batch(batch(b"new"))),
                (1, Value::Noop),
                (2, Value::Noop),
                (3, Value::Noop),
                (4, Value::Batch(batch(b"four")))
            ]
        );
        assert!(out.events.contains(&Event::BecameLeader { ballot: p.ballot() }));
        // The next new batch goes after everything found.
        let mut out = Out::new(false);
        p.handle_message(
            0,
            12,
            Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: batch(b"x") },
            &mut out,
        );
        assert_eq!(proposals(&out), vec![(5, Value::Batch(batch(b"x")))]);
    }

    #[test]
    fn a_phase1b_with_another_nonce_does_not_count() {
        let (mut p, nonce) = candidate(Tunables::default());
        for a in [3, 4, 6, 7] {
            promise(&mut p, a, nonce ^ 1, vec![]);
        }
        assert!(!p.is_leader(), "stale answers to an earlier incarnation are ignored");
    }

    #[test]
    fn a_candidate_takes_no_new_batch_and_refuses_it_to_the_batcher() {
        let (mut p, _) = candidate(Tunables::default());
        let mut out = Out::new(false);
        let msg = Msg::ClientBatch { origin: 12, forwarded: false, attempt: 1, batch: batch(b"x") };
        p.handle_message(0, 12, msg, &mut out);
        assert_eq!(
            out.msgs,
            vec![(12, Msg::BatchRefused { leader_hint: None, attempt: 1, batch: batch(b"x") })]
        );
    }

    #[test]
    fn a_follower_forwards_a_batch_to_the_leader_once_and_refuses_a_forwarded_one() {
        let mut p = Proposer::new(2, config(), Tunables::default(), 7, 0);
        let mut out = Out::new(false);
        p.handle_message(0, 1, Msg::Heartbeat { ballot: b(1, 1) }, &mut out);
        p.handle_message(
            0,
            12,
            Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: batch(b"x") },
            &mut out,
        );
        assert_eq!(
            out.msgs,
            vec![(1, Msg::ClientBatch { origin: 12, forwarded: true, attempt: 0, batch: batch(b"x") })]
        );
        let mut out = Out::new(false);
        p.handle_message(
            0,
            1,
            Msg::ClientBatch { origin: 12, forwarded: true, attempt: 0, batch: batch(b"y") },
            &mut out,
        );
        assert_eq!(
            out.msgs,
            vec![(12, Msg::BatchRefused { leader_hint: Some(1), attempt: 0, batch: batch(b"y") })]
        );
    }

    #[test]
    fn a_full_window_holds_batches_until_replicas_report_progress() {
        let mut p = leader(Tunables { max_in_flight_slots: 2, ..Tunables::default() });
        let mut out = Out::new(false);
        for tag in [&b"a"[..], b"b", b"c"] {
            let msg =
                Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: Bytes::from_static(tag) };
            p.handle_message(0, 12, msg, &mut out);
        }
        assert_eq!(proposals(&out).len(), 2, "the third batch waits");
        assert_eq!(p.in_flight(), 2);
        let mut out = Out::new(false);
        p.handle_message(1, 10, Msg::Executed { watermark: 1 }, &mut out);
        assert_eq!(proposals(&out), vec![(2, Value::Batch(batch(b"c")))]);
    }

    /// The trim point the leader sends acceptors at its next heartbeat after `now`, if any.
    fn trim_sent(p: &mut Proposer, now: Time) -> Option<Slot> {
        let at = p.poll_timeout().unwrap().max(now);
        let mut out = Out::new(false);
        p.handle_timeout(at, &mut out);
        out.msgs.iter().find_map(|(_, m)| match m {
            Msg::Trim { below } => Some(*below),
            _ => None,
        })
    }

    #[test]
    fn the_trim_point_follows_the_replicas_that_are_up_and_never_lags_beyond_the_budget() {
        let tunables = Tunables { teach_retention_slots: 1_000, ..Tunables::default() };
        let down_after = tunables.replica_down_after_us;
        let (r1, r2) = (config().replicas[0], config().replicas[1]);
        let mut p = leader(tunables);
        p.handle_message(10, r1, Msg::Executed { watermark: 50 }, &mut Out::new(false));
        p.handle_message(10, r2, Msg::Executed { watermark: 20 }, &mut Out::new(false));
        assert_eq!(trim_sent(&mut p, 20), Some(20), "the slowest replica that is up");
        // r2 goes silent; r1 carries on: r2 no longer holds the acceptors' logs back.
        let later = 10 + down_after + 1;
        p.handle_message(later, r1, Msg::Executed { watermark: 60 }, &mut Out::new(false));
        assert_eq!(trim_sent(&mut p, later), Some(60));
        // r2 is back but far behind: the acceptors keep at most the budget behind the furthest.
        p.handle_message(later, r2, Msg::Executed { watermark: 30 }, &mut Out::new(false));
        p.handle_message(later, r1, Msg::Executed { watermark: 5_000 }, &mut Out::new(false));
        assert_eq!(trim_sent(&mut p, later), Some(4_000));
    }

    #[test]
    fn a_deposed_leader_steps_down_and_hands_waiting_batches_to_the_new_leader() {
        let mut p = leader(Tunables { max_in_flight_slots: 1, ..Tunables::default() });
        let mut out = Out::new(false);
        for tag in [&b"a"[..], b"b"] {
            let msg =
                Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: Bytes::from_static(tag) };
            p.handle_message(0, 12, msg, &mut out);
        }
        let mut out = Out::new(false);
        p.handle_message(1, 9, Msg::Preempted { promised: b(5, 2) }, &mut out);
        assert!(!p.is_leader());
        assert_eq!(
            out.msgs,
            vec![(2, Msg::ClientBatch { origin: 12, forwarded: true, attempt: 0, batch: batch(b"b") })]
        );
        assert_eq!(p.ballot(), b(5, 2));
    }

    #[test]
    fn a_leader_re_proposes_a_slot_that_was_not_executed_in_time() {
        let mut p = leader(Tunables::default());
        let mut out = Out::new(false);
        p.handle_message(
            0,
            12,
            Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: batch(b"a") },
            &mut out,
        );
        let resend_at = Tunables::default().resend_timeout_us;
        let mut out = Out::new(false);
        while p.poll_timeout().is_some_and(|t| t <= resend_at) {
            p.handle_timeout(p.poll_timeout().unwrap(), &mut out);
        }
        assert_eq!(proposals(&out), vec![(0, Value::Batch(batch(b"a")))], "the same value, the same slot");
    }
}
