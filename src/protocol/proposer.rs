//! Proposer: f+1 of them, one leads. The leader assigns each batch a slot and hands it to a proxy
//! leader; it is two messages per batch whatever f is. Followers watch the leader's heartbeats and
//! run for leader when they stop: Phase 1 on every acceptor group from the lowest slot not known to be
//! chosen, re-propose the highest-ballot value found per slot, fill holes with no-ops, and only then
//! take new batches. A proposer's memory is lost in a crash; everything it needs is re-learned.
//!
//! Must never: propose two values for one slot at one ballot; take new batches before Phase 1 is done;
//! keep leading after seeing a higher ballot; drop a batch without forwarding, refusing or counting it.

use super::config::{ClusterConfig, Tunables};
use super::messages::{encode_batch, AcceptedEntry, Msg, Value};
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
    /// What each replica last said it executed.
    replica_watermarks: BTreeMap<NodeId, Slot>,
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
            config,
            tunables,
            rng: ChaCha8Rng::seed_from_u64(seed),
            ballot: Ballot::ZERO,
            state: State::Follower,
            leader_hint: None,
            replica_watermarks: BTreeMap::new(),
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

    /// Slots below this are executed by every replica; 0 until every replica has reported.
    fn min_executed(&self) -> Slot {
        if self.replica_watermarks.len() < self.config.replicas.len() {
            return 0;
        }
        self.replica_watermarks.values().copied().min().unwrap_or(0)
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

    #[allow(clippy::too_many_arguments)] // the fields of one Phase1b, passed as they came
    fn on_phase1b(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        nonce: u64,
        trimmed_below: Slot,
        accepted: Vec<AcceptedEntry>,
        out: &mut Out,
    ) {
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
        phase1.promised[group].insert(from);
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
        let proxies = &self.config.proxy_leaders;
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
        let others = self.config.proposers.iter().filter(|&&p| p != self.id);
        for &node in others.chain(&self.config.batchers) {
            out.send(node, Msg::Heartbeat { ballot: self.ballot });
        }
    }

    fn on_heartbeat_timer(&mut self, now: Time, out: &mut Out) {
        self.send_heartbeats(out);
        let below = self.min_executed();
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

    fn arm_resend(&mut self, now: Time) {
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
                self.arm_resend(now);
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
                assert!(p.found.keys().all(|&s| s >= p.start));
            }
            State::Leader(l) => {
                assert_eq!(self.ballot.proposer, self.id, "a leader leads with its own ballot");
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
            Msg::ClientRequest(command) => {
                if self.is_leader() {
                    self.on_batch(now, from, true, 0, encode_batch(vec![command]), out);
                } else {
                    out.send(from, Msg::NotLeader { leader_hint: self.leader_hint });
                }
            }
            Msg::Heartbeat { ballot } => self.on_heartbeat(now, from, ballot, out),
            Msg::Phase1b { ballot, nonce, trimmed_below, accepted } => {
                self.on_phase1b(now, from, ballot, nonce, trimmed_below, accepted, out)
            }
            Msg::Nack { promised } | Msg::Preempted { promised } => self.observe_ballot(now, promised, out),
            Msg::Executed { watermark } => self.on_executed(now, from, watermark, out),
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
