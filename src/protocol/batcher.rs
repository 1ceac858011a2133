//! Batcher: gathers client commands into batches (by size or a flush interval) and sends each batch to
//! the leader it knows of. Refused batches are resent to the hinted leader a bounded number of times.
//!
//! Overload is shed here, at the edge. The leader says when it is full (`LeaderLoad`: its window has
//! no room and batches queue behind it); the batcher then holds the batches it makes instead of
//! sending them, up to `Tunables::batcher_max_held_batches`, and sends them when the leader says it
//! has room again. With the leader full and that many batches held, a new request is answered at
//! once with `Busy`: it is never batched, so it was never proposed and never will be, and the
//! client may send the same command again. A command once admitted is never refused: a batch the
//! leader hands back (`BatchBusy`, its own queue at its bound) is held again, even past the bound.
//!
//! What is held or parked waits for a word from the leader, which may never come: the leader may
//! have crashed, or be a proposer that restarted without memory or never heard this batcher join
//! (a stateless node does not remind it), and so never sends it heartbeats. So that the batcher
//! neither holds those commands nor sheds new ones for ever, having heard no leader for an
//! election timeout it forgets that the leader was full and sends what it holds and parked again:
//! a full leader hands it back, a proposer that does not lead refuses it with a hint.
//!
//! Must never: decode or reorder commands once batched; refuse a command it admitted; answer `Busy`
//! for a command it batched.

use super::config::{ClusterConfig, Tunables};
use super::membership::{earliest, membership_period_us, NodeMembership, View};
use super::messages::{client_node, encode_batch, Command, Msg, MAX_AGGREGATE_BYTES};
use super::timers::Timers;
use super::{Ballot, Event, NodeId, Out, Role, RoleKind, Stage, Time};
use bytes::Bytes;
use std::collections::{BTreeSet, VecDeque};

/// How many times one batch is sent before the batcher parks it until a leader is known.
pub const MAX_BATCH_ATTEMPTS: u8 = 4;
/// Client nodes a batcher remembers, to pass views on to.
pub const MAX_CLIENT_NODES: usize = 10_000;
/// Batches parked while no leader is known (an election is running); beyond it they are dropped,
/// counted, and left to the clients' own retries.
pub const MAX_PARKED_BATCHES: usize = 64;

#[repr(usize)]
enum Timer {
    Flush,
    /// Held or parked batches and no word from a leader since: see the module doc.
    Recheck,
}

/// One batcher.
#[derive(Debug, Clone)]
pub struct Batcher {
    id: NodeId,
    batch_size: usize,
    flush_interval_us: Time,
    pending: Vec<Command>,
    /// Bytes of operations in `pending`: a batch also leaves once it is this big, so that it fits
    /// a frame, and an acceptor's Phase1b page, whatever the values' size.
    pending_bytes: usize,
    /// When the first command of `pending` arrived: the batch's `Stage::Batching` time runs from it.
    pending_since: Time,
    /// The leader as last announced by a heartbeat or a refusal, with the ballot that announced it.
    leader_hint: Option<NodeId>,
    leader_ballot: Ballot,
    /// Used round-robin when no leader is known.
    next_proposer: usize,
    /// Batches every proposer refused (no leader yet), resent when a heartbeat names the leader.
    parked: Vec<Bytes>,
    /// Whether the leader last said it is full (reset when another leader is heard of).
    leader_full: bool,
    /// Batches held while the leader is full, oldest first; sent when it has room again. Each with
    /// when its first command arrived (its `Stage::Batching` ends when it leaves), or `None` for a
    /// batch the leader handed back: it was timed when it first left.
    held: VecDeque<(Bytes, Option<Time>)>,
    /// At this many held batches (and the leader full), new requests are refused with `Busy`.
    max_held: usize,
    /// When a leader last spoke to this batcher (a heartbeat or its load, at the ballot it knows).
    heard_leader_at: Time,
    /// Without a word from a leader for this long, held and parked batches are sent again.
    recheck_after_us: Time,
    /// Client nodes that sent requests here: they hear the views this batcher gets.
    client_nodes: BTreeSet<NodeId>,
    membership: NodeMembership,
    timers: Timers<2>,
}

impl Batcher {
    /// A batcher that knows no leader yet.
    pub fn new(id: NodeId, config: ClusterConfig, tunables: &Tunables) -> Self {
        Batcher {
            membership: NodeMembership::new(id, RoleKind::Batcher, &config, membership_period_us(tunables)),
            client_nodes: BTreeSet::new(),
            id,
            batch_size: tunables.batch_size,
            flush_interval_us: tunables.flush_interval_us,
            pending: Vec::with_capacity(tunables.batch_size),
            pending_bytes: 0,
            pending_since: 0,
            leader_hint: None,
            leader_ballot: Ballot::ZERO,
            next_proposer: 0,
            parked: Vec::new(),
            leader_full: false,
            held: VecDeque::new(),
            max_held: tunables.batcher_max_held_batches,
            heard_leader_at: 0,
            recheck_after_us: tunables.election_timeout_us,
            timers: Timers::default(),
        }
    }

    /// A batcher that is not in the configuration: it joins the running cluster, announcing that it
    /// listens at `addr`.
    pub fn joining(mut self, addr: String, now: Time) -> Self {
        self.membership.join(addr, now);
        self
    }

    /// This node's side of membership.
    pub fn membership(&self) -> &NodeMembership {
        &self.membership
    }

    /// The leader this batcher sends to, if it knows one.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    fn target(&self) -> NodeId {
        let proposers = self.membership.proposers();
        self.leader_hint.unwrap_or(proposers[self.next_proposer % proposers.len()])
    }

    fn flush(&mut self, now: Time, out: &mut Out) {
        self.timers.cancel(Timer::Flush as usize);
        if self.pending.is_empty() {
            return;
        }
        let commands = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch_size));
        self.pending_bytes = 0;
        let batch = encode_batch(commands);
        if self.leader_full || !self.held.is_empty() {
            // Behind what is held, in order; some of it leaves now if the leader has room.
            self.held.push_back((batch, Some(self.pending_since)));
            self.release_held(now, out);
        } else {
            batched(now, self.pending_since, out);
            out.send(
                self.target(),
                Msg::ClientBatch { origin: self.id, forwarded: false, attempt: 0, batch },
            );
        }
    }

    /// Whether a new request is refused: the leader is full (or none leads: batches are parked)
    /// and this batcher holds its bound of batches.
    pub fn is_shedding(&self) -> bool {
        (self.leader_full || !self.parked.is_empty()) && self.held.len() + self.parked.len() >= self.max_held
    }

    /// Batches held while the leader is full.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Sends what was held, oldest first, once the leader has room. All of it: the leader takes
    /// what its queue holds and hands the rest back (held again until it has room once more), so
    /// every time it has room the batcher moves forward; releasing less per word of the leader
    /// would pace the batcher by the leader's heartbeat.
    fn release_held(&mut self, now: Time, out: &mut Out) {
        if self.leader_full {
            return;
        }
        let target = self.target();
        for (batch, since) in self.held.drain(..) {
            if let Some(since) = since {
                batched(now, since, out);
            }
            out.send(target, Msg::ClientBatch { origin: self.id, forwarded: false, attempt: 0, batch });
        }
    }

    /// The leader's word on its load. A newer leader's (or the same leader's) counts.
    fn on_leader_load(&mut self, now: Time, ballot: Ballot, full: bool, out: &mut Out) {
        if ballot < self.leader_ballot {
            return;
        }
        self.heard_leader_at = now;
        self.leader_ballot = ballot;
        self.leader_hint = Some(ballot.proposer);
        self.leader_full = full;
        self.release_held(now, out);
    }

    /// The leader's queue was at its bound: this batch was not proposed. Hold it (first: it is the
    /// oldest) until the leader has room.
    fn on_batch_busy(&mut self, batch: Bytes) {
        self.leader_full = true;
        self.held.push_front((batch, None));
    }

    fn on_request(&mut self, now: Time, command: Command, out: &mut Out) {
        if self.pending.is_empty() {
            self.pending_since = now;
        }
        self.pending_bytes += command.op.len() + 32;
        self.pending.push(command);
        if self.pending.len() >= self.batch_size || self.pending_bytes >= MAX_AGGREGATE_BYTES {
            self.flush(now, out);
        } else if !self.timers.is_set(Timer::Flush as usize) {
            self.timers.set(Timer::Flush as usize, now + self.flush_interval_us);
        }
    }

    fn on_refused(&mut self, leader_hint: Option<NodeId>, attempt: u8, batch: Bytes, out: &mut Out) {
        match leader_hint {
            Some(leader) => self.leader_hint = Some(leader),
            None => {
                self.leader_hint = None;
                self.next_proposer += 1;
            }
        }
        let attempt = attempt.saturating_add(1);
        if attempt >= MAX_BATCH_ATTEMPTS {
            // No proposer leads yet (an election is running): wait for a heartbeat rather than
            // leave every client in the batch to its retry timer.
            if self.parked.len() < MAX_PARKED_BATCHES {
                self.parked.push(batch);
            } else {
                out.dropped("batcher: batch refused too many times and parking is full");
            }
            return;
        }
        out.send(self.target(), Msg::ClientBatch { origin: self.id, forwarded: false, attempt, batch });
    }

    fn on_heartbeat(&mut self, now: Time, ballot: Ballot, out: &mut Out) {
        if ballot > self.leader_ballot {
            // Another leader: its load is unknown until it says; its own bound protects it.
            self.leader_full = false;
        }
        if ballot >= self.leader_ballot {
            self.heard_leader_at = now;
            self.leader_ballot = ballot;
            self.leader_hint = Some(ballot.proposer);
            for batch in self.parked.drain(..) {
                out.send(
                    ballot.proposer,
                    Msg::ClientBatch { origin: self.id, forwarded: false, attempt: 0, batch },
                );
            }
            self.release_held(now, out);
        }
    }

    /// Keeps the recheck timer set while anything is held or parked, and only then.
    fn arm_recheck(&mut self, now: Time) {
        let waiting = !self.held.is_empty() || !self.parked.is_empty();
        match (waiting, self.timers.is_set(Timer::Recheck as usize)) {
            (true, false) => self.timers.set(Timer::Recheck as usize, now + self.recheck_after_us),
            (false, true) => self.timers.cancel(Timer::Recheck as usize),
            _ => {}
        }
    }

    /// The recheck timer expired. A leader that spoke meanwhile keeps its word (it says it is full,
    /// or releases what is held when it is not); otherwise nothing may ever release what is held or
    /// parked, so it is all sent again, oldest first, to the leader hinted (see the module doc).
    fn on_recheck(&mut self, now: Time, out: &mut Out) {
        if now < self.heard_leader_at + self.recheck_after_us {
            self.timers.set(Timer::Recheck as usize, self.heard_leader_at + self.recheck_after_us);
            return;
        }
        self.leader_full = false;
        let target = self.target();
        for batch in self.parked.drain(..) {
            out.send(target, Msg::ClientBatch { origin: self.id, forwarded: false, attempt: 0, batch });
        }
        self.release_held(now, out);
    }

    /// Passes a view from a proposer on to the client nodes this batcher serves, so that they learn
    /// which batchers are in service (the leader republishes it, which also repairs a lost one).
    fn on_view(&mut self, from: NodeId, view: View, out: &mut Out) {
        if !self.membership.accepts_view_from(from, &view) {
            return;
        }
        self.membership.on_view(&view);
        for &node in &self.client_nodes {
            out.send(node, Msg::Membership(self.membership.view().clone()));
        }
    }

    fn check_invariants(&self) {
        assert!(self.pending.len() < self.batch_size, "a full batch is sent at once");
        assert!(self.client_nodes.len() <= MAX_CLIENT_NODES);
        assert_eq!(self.pending.is_empty(), !self.timers.is_set(Timer::Flush as usize));
        assert!(self.parked.len() <= MAX_PARKED_BATCHES);
        assert!(
            self.held.is_empty() && self.parked.is_empty() || self.timers.is_set(Timer::Recheck as usize),
            "what is held or parked is rechecked"
        );
    }
}

/// A batch whose first command arrived at `since` leaves for the leader at `now`: its
/// `Stage::Batching` time, once per batch (never again when it is resent or handed back).
fn batched(now: Time, since: Time, out: &mut Out) {
    out.event(|| Event::Stage { stage: Stage::Batching, micros: now.saturating_sub(since) });
}

impl Role for Batcher {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::ClientRequests(commands) => {
                self.membership.on_work(now);
                if let Some(first) = commands.first() {
                    if self.client_nodes.len() < MAX_CLIENT_NODES {
                        self.client_nodes.insert(client_node(first.client_id));
                    }
                }
                let mut refused = Vec::new();
                for command in commands {
                    if self.is_shedding() {
                        refused.push((command.client_id, command.seq));
                    } else {
                        self.on_request(now, command, out);
                    }
                }
                if !refused.is_empty() {
                    out.event(|| Event::Shed { commands: refused.len() as u64 });
                    out.send(from, Msg::Busy(refused));
                }
            }
            Msg::LeaderLoad { ballot, full } => self.on_leader_load(now, ballot, full, out),
            Msg::BatchBusy { batch } => self.on_batch_busy(batch),
            Msg::BatchRefused { leader_hint, attempt, batch } => {
                self.on_refused(leader_hint, attempt, batch, out)
            }
            Msg::Heartbeat { ballot } => self.on_heartbeat(now, ballot, out),
            Msg::Membership(view) => self.on_view(from, view, out),
            Msg::Leave => self.membership.on_leave(now, from, out),
            _ => out.dropped("batcher: unexpected message"),
        }
        self.arm_recheck(now);
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        let (mut flush, mut recheck) = (false, false);
        for timer in self.timers.take_expired(now) {
            flush |= timer == Timer::Flush as usize;
            recheck |= timer == Timer::Recheck as usize;
        }
        if flush {
            self.flush(now, out);
        }
        if recheck {
            self.on_recheck(now, out);
        }
        self.arm_recheck(now);
        let idle = self.pending.is_empty() && self.parked.is_empty() && self.held.is_empty();
        self.membership.on_timeout(now, idle, out);
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        earliest(self.timers.next(), self.membership.poll_timeout())
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Batcher
    }

    fn status(&self) -> crate::protocol::messages::NodeStatus {
        self.membership.status(RoleKind::Batcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(seq: u64) -> Msg {
        Msg::ClientRequests(vec![Command { client_id: 100, seq, op: Bytes::new() }])
    }

    fn batcher(batch_size: usize) -> Batcher {
        let tunables = Tunables { batch_size, ..Tunables::default() };
        Batcher::new(9, ClusterConfig::f1(1, 1, 1, 1), &tunables)
    }

    #[test]
    fn a_full_batch_leaves_at_once() {
        let mut b = batcher(3);
        let mut out = Out::new(false);
        for seq in 1..=3 {
            b.handle_message(0, 100, cmd(seq), &mut out);
        }
        assert_eq!(out.msgs.len(), 1);
        assert!(matches!(out.msgs[0], (1, Msg::ClientBatch { origin: 9, attempt: 0, .. })));
        assert_eq!(b.poll_timeout(), None);
    }

    #[test]
    fn a_batch_also_leaves_once_its_bytes_reach_the_limit() {
        let mut b = batcher(1000);
        let mut out = Out::new(false);
        let big = Bytes::from(vec![7u8; MAX_AGGREGATE_BYTES / 3]);
        for seq in 1..=3 {
            let msg = Msg::ClientRequests(vec![Command { client_id: 100, seq, op: big.clone() }]);
            b.handle_message(0, 100, msg, &mut out);
        }
        assert_eq!(out.msgs.len(), 1, "three thirds of the limit make a batch");
    }

    #[test]
    fn a_partial_batch_leaves_at_the_flush_interval() {
        let mut b = batcher(10);
        let mut out = Out::new(false);
        b.handle_message(5, 100, cmd(1), &mut out);
        assert!(out.msgs.is_empty());
        let at = b.poll_timeout().unwrap();
        assert_eq!(at, 5 + Tunables::default().flush_interval_us);
        b.handle_timeout(at, &mut out);
        assert_eq!(out.msgs.len(), 1);
    }

    #[test]
    fn heartbeats_and_refusals_steer_batches_to_the_leader() {
        let mut b = batcher(1);
        let mut out = Out::new(false);
        b.handle_message(0, 2, Msg::Heartbeat { ballot: Ballot { round: 1, proposer: 2 } }, &mut out);
        b.handle_message(0, 100, cmd(1), &mut out);
        assert_eq!(out.msgs[0].0, 2);
        let refusal = Msg::BatchRefused { leader_hint: Some(1), attempt: 0, batch: Bytes::new() };
        b.handle_message(0, 2, refusal, &mut out);
        assert!(matches!(out.msgs[1], (1, Msg::ClientBatch { attempt: 1, .. })));
        // A stale heartbeat does not override what a newer ballot said.
        b.handle_message(0, 1, Msg::Heartbeat { ballot: Ballot { round: 0, proposer: 1 } }, &mut out);
        assert_eq!(b.leader_hint(), Some(1));
    }

    #[test]
    fn a_batch_refused_by_every_proposer_waits_for_a_leader_instead_of_bouncing() {
        let mut b = batcher(1);
        let mut out = Out::new(true);
        let batch = Bytes::from_static(b"parked");
        let refusal =
            Msg::BatchRefused { leader_hint: None, attempt: MAX_BATCH_ATTEMPTS - 1, batch: batch.clone() };
        b.handle_message(0, 2, refusal, &mut out);
        assert!(out.msgs.is_empty(), "not bounced again while no one leads");
        b.handle_message(0, 2, Msg::Heartbeat { ballot: Ballot { round: 1, proposer: 2 } }, &mut out);
        assert_eq!(out.msgs, vec![(2, Msg::ClientBatch { origin: 9, forwarded: false, attempt: 0, batch })]);
    }

    fn requests(seqs: &[u64]) -> Msg {
        Msg::ClientRequests(
            seqs.iter().map(|&seq| Command { client_id: 100, seq, op: Bytes::new() }).collect(),
        )
    }

    fn load(full: bool) -> Msg {
        Msg::LeaderLoad { ballot: Ballot { round: 1, proposer: 2 }, full }
    }

    /// A batcher of batches of one that holds at most one batch while the leader (2) is full.
    fn holding_one() -> Batcher {
        let tunables = Tunables { batch_size: 1, batcher_max_held_batches: 1, ..Tunables::default() };
        let mut b = Batcher::new(9, ClusterConfig::f1(1, 1, 1, 1), &tunables);
        b.handle_message(
            0,
            2,
            Msg::Heartbeat { ballot: Ballot { round: 1, proposer: 2 } },
            &mut Out::new(false),
        );
        b
    }

    #[test]
    fn at_its_bound_with_the_leader_full_a_new_request_is_refused_at_once_and_below_it_admitted() {
        let mut b = holding_one();
        let mut out = Out::new(true);
        b.handle_message(0, 2, load(true), &mut out);
        b.handle_message(0, 100, requests(&[1, 2, 3]), &mut out);
        // 1 is admitted and held (the leader is full); then the bound is reached: 2 and 3 are refused,
        // in one message to the node that sent them, at once.
        assert_eq!(out.msgs, vec![(100, Msg::Busy(vec![(100, 2), (100, 3)]))]);
        assert_eq!(out.events, vec![Event::Shed { commands: 2 }]);
        assert_eq!((b.held(), b.is_shedding()), (1, true));
        // The leader has room: what was held goes, and new requests are admitted again.
        let mut out = Out::new(true);
        b.handle_message(1, 2, load(false), &mut out);
        b.handle_message(1, 100, requests(&[4]), &mut out);
        let sent: Vec<_> = out
            .msgs
            .iter()
            .map(|(to, m)| match m {
                Msg::ClientBatch { batch, .. } => {
                    let commands =
                        crate::protocol::messages::decode::<crate::protocol::messages::CommandBatch>(batch)
                            .unwrap()
                            .commands;
                    (*to, commands.iter().map(|c| c.seq).collect::<Vec<_>>())
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, vec![(2, vec![1]), (2, vec![4])], "admitted commands, in order, never refused");
        assert!(!b.is_shedding());
    }

    #[test]
    fn below_its_bound_a_batcher_holds_rather_than_refuses() {
        let tunables = Tunables { batch_size: 1, batcher_max_held_batches: 3, ..Tunables::default() };
        let mut b = Batcher::new(9, ClusterConfig::f1(1, 1, 1, 1), &tunables);
        let mut out = Out::new(true);
        b.handle_message(0, 2, load(true), &mut out);
        b.handle_message(0, 100, requests(&[1, 2, 3]), &mut out);
        assert!(out.msgs.is_empty(), "all three held: no batch to the full leader, no refusal");
        assert_eq!(b.held(), 3);
    }

    #[test]
    fn a_batch_the_leader_hands_back_is_held_again_even_past_the_bound_and_its_commands_never_refused() {
        let mut b = holding_one();
        let mut out = Out::new(true);
        b.handle_message(0, 100, requests(&[1]), &mut out);
        let Some((2, Msg::ClientBatch { batch, .. })) = out.msgs.pop() else { panic!("sent to the leader") };
        b.handle_message(0, 100, requests(&[2]), &mut out);
        let Some((2, Msg::ClientBatch { batch: second, .. })) = out.msgs.pop() else { panic!("sent") };
        // The leader's queue was at its bound for both: they come back, and are held, oldest first.
        b.handle_message(1, 2, Msg::BatchBusy { batch: second.clone() }, &mut out);
        b.handle_message(1, 2, Msg::BatchBusy { batch: batch.clone() }, &mut out);
        assert_eq!(b.held(), 2, "past the bound of one: admitted commands are kept");
        assert!(out.msgs.is_empty(), "no Busy for an admitted command");
        // Room again: sent back, oldest first.
        b.handle_message(2, 2, load(false), &mut out);
        let resent: Vec<_> = out.msgs.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(
            resent,
            vec![
                Msg::ClientBatch { origin: 9, forwarded: false, attempt: 0, batch },
                Msg::ClientBatch { origin: 9, forwarded: false, attempt: 0, batch: second },
            ]
        );
    }

    #[test]
    fn a_batcher_no_leader_speaks_to_sends_what_it_holds_again_after_an_election_timeout() {
        let mut b = holding_one();
        let timeout = Tunables::default().election_timeout_us;
        let mut out = Out::new(false);
        b.handle_message(0, 2, load(true), &mut out);
        b.handle_message(0, 100, requests(&[1]), &mut out);
        assert!(out.msgs.is_empty() && b.is_shedding());
        // The leader still speaks, and says it is full: the batch stays held.
        b.handle_message(timeout / 2, 2, load(true), &mut out);
        b.handle_timeout(timeout, &mut out);
        assert!(out.msgs.is_empty() && b.is_shedding());
        assert_eq!(b.poll_timeout(), Some(timeout / 2 + timeout));
        // Then no word for an election timeout (it crashed, or a leader that never heard of this
        // batcher took over): the batch goes again, and new requests are admitted.
        b.handle_timeout(timeout / 2 + timeout, &mut out);
        assert!(matches!(out.msgs[..], [(2, Msg::ClientBatch { attempt: 0, .. })]), "{:?}", out.msgs);
        assert!(!b.is_shedding());
        assert_eq!(b.poll_timeout(), b.membership().poll_timeout(), "nothing left to recheck");
    }

    #[test]
    fn a_batch_parked_during_an_election_is_sent_again_though_no_heartbeat_comes() {
        let tunables = Tunables { batch_size: 1, batcher_max_held_batches: 1, ..Tunables::default() };
        let timeout = tunables.election_timeout_us;
        let mut b = Batcher::new(9, ClusterConfig::f1(1, 1, 1, 1), &tunables);
        let mut out = Out::new(false);
        b.handle_message(0, 100, requests(&[1]), &mut out);
        let Some((_, Msg::ClientBatch { batch, .. })) = out.msgs.pop() else { panic!("sent") };
        let refused = Msg::BatchRefused { leader_hint: None, attempt: MAX_BATCH_ATTEMPTS - 1, batch };
        b.handle_message(1, 1, refused, &mut out);
        assert!(out.msgs.is_empty() && b.is_shedding(), "parked, at the bound");
        b.handle_timeout(1 + timeout, &mut out);
        assert!(matches!(out.msgs[..], [(_, Msg::ClientBatch { attempt: 0, .. })]), "{:?}", out.msgs);
        assert!(!b.is_shedding());
    }

    #[test]
    fn a_new_leader_starts_with_room() {
        let mut b = holding_one();
        let mut out = Out::new(false);
        b.handle_message(0, 2, load(true), &mut out);
        b.handle_message(0, 100, requests(&[1]), &mut out);
        assert!(out.msgs.is_empty());
        b.handle_message(1, 1, Msg::Heartbeat { ballot: Ballot { round: 2, proposer: 1 } }, &mut out);
        assert!(matches!(out.msgs[..], [(1, Msg::ClientBatch { .. })]), "{:?}", out.msgs);
        assert!(!b.is_shedding());
    }

    fn stages(out: &Out) -> Vec<(Stage, u64)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Stage { stage, micros } => Some((*stage, *micros)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_batch_is_timed_from_its_first_command_to_its_flush_by_timer_or_by_size() {
        let tunables = Tunables { batch_size: 3, flush_interval_us: 1000, ..Tunables::default() };
        let mut b = Batcher::new(9, ClusterConfig::f1(1, 1, 1, 1), &tunables);
        let mut out = Out::new(true);
        b.handle_message(100, 100, cmd(1), &mut out);
        b.handle_message(400, 100, cmd(2), &mut out);
        b.handle_timeout(1100, &mut out);
        assert_eq!(out.msgs.len(), 1);
        assert_eq!(
            stages(&out),
            vec![(Stage::Batching, 1000)],
            "one event per batch, from its first command"
        );
        let mut out = Out::new(true);
        b.handle_message(2000, 100, requests(&[3, 4]), &mut out);
        b.handle_message(2250, 100, cmd(5), &mut out);
        assert_eq!(stages(&out), vec![(Stage::Batching, 250)], "full at the third command");
    }

    #[test]
    fn a_held_batch_is_timed_when_released_and_not_again_when_handed_back() {
        let mut b = holding_one();
        let mut out = Out::new(true);
        b.handle_message(0, 2, load(true), &mut out);
        b.handle_message(100, 100, requests(&[1]), &mut out);
        assert!(stages(&out).is_empty(), "held: not left yet");
        b.handle_message(600, 2, load(false), &mut out);
        let Some((2, Msg::ClientBatch { batch, .. })) = out.msgs.pop() else { panic!("released") };
        assert_eq!(stages(&out), vec![(Stage::Batching, 500)]);
        let mut out = Out::new(true);
        b.handle_message(700, 2, Msg::BatchBusy { batch }, &mut out);
        b.handle_message(800, 2, load(false), &mut out);
        assert_eq!(out.msgs.len(), 1, "sent again");
        assert!(stages(&out).is_empty(), "a batch is timed once");
    }

    #[test]
    fn parking_is_bounded() {
        let mut b = batcher(1);
        let mut out = Out::new(true);
        for _ in 0..=MAX_PARKED_BATCHES {
            let refusal =
                Msg::BatchRefused { leader_hint: None, attempt: MAX_BATCH_ATTEMPTS - 1, batch: Bytes::new() };
            b.handle_message(0, 2, refusal, &mut out);
        }
        assert_eq!(out.events.len(), 1, "the one over the bound is dropped and counted");
    }
}
