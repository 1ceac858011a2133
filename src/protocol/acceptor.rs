//! Acceptor: one voter of an acceptor group. Holds the promised ballot and, per slot it was asked about, the
//! highest-ballot value it accepted. All of that is durable: every change is queued as a [`Record`]
//! and every Phase1b and Phase2b waits for the records before it (`Out::send_after_persist`), so a
//! vote never leaves before it is on disk. A restart rebuilds the acceptor from its records alone
//! ([`Acceptor::recover`]).
//!
//! An acceptor votes per slot and keeps no configuration: which group owns a slot is the leader's
//! business (it routes each slot by the configuration in force at it, see `configuration`), and a
//! vote counts toward a quorum only where the leader, a replica reading a slot, or the checker
//! finds the acceptor in that slot's group. An acceptor could not check it anyway: it may not yet
//! have heard of a change that moved the slot to its group.
//!
//! A working leader is not deposed by a proposer that merely stopped hearing it (paused, or cut
//! off from the leader alone, its ballot climbing with every election it runs there): for an
//! election timeout after it accepts a new slot at its promised ballot, the acceptor answers no
//! Phase 1 of another proposer (Raft's "leader stickiness"). Only new slots renew that lease, so
//! a leader that only re-proposes a stuck window loses it; a leader that hands over lifts it at
//! once (`Abdicate`). Refusing a Phase 1 is always safe; it only delays an election, by one
//! election timeout at most after the leader's last new slot. The lease is volatile: a
//! restarted acceptor holds none.
//!
//! Must never: accept or promise below its promise; promise one ballot to two different Phase 1 runs
//! (a proposer that lost its memory in a crash comes back with the same ballot: sim seed 9511);
//! send a vote before the record that backs it.

use super::config::{ClusterConfig, Tunables};
use super::durable::{Record, Recovered, Storage};
use super::membership::{membership_period_us, report_left, NodeMembership};
use super::messages::{AcceptedEntry, Msg, Phase1bReply, Value};
use super::{Ballot, Event, NodeId, Out, Role, RoleKind, Slot, Time};
use std::collections::BTreeMap;

/// One acceptor.
#[derive(Debug, Clone)]
pub struct Acceptor {
    id: NodeId,
    /// The replicas, the only nodes that read single slots.
    replicas: Vec<NodeId>,
    promised: Ballot,
    /// The nonce of the Phase 1 that `promised` was promised to; `None` if a Phase2a raised it.
    promised_nonce: Option<u64>,
    /// Per slot: the ballot and value last accepted.
    accepted: BTreeMap<Slot, (Ballot, Value)>,
    /// Every slot below this is chosen and executed by all replicas; its entry is gone.
    trimmed_below: Slot,
    /// Bytes of accepted values per Phase1b page.
    page_bytes: usize,
    /// The highest ballot ever accepted: the invariant "nothing accepted above the promise" checks
    /// this in O(1) after every message instead of walking the whole log.
    max_accepted: Ballot,
    /// Durable (records queued, votes held for them) or in memory (benchmarks only).
    storage: Storage,
    /// Announcing itself (an acceptor new to the cluster, until a view lists it), and told to
    /// leave by the leader once no configuration names it.
    membership: NodeMembership,
    /// Told to leave: it has reported `Left` and votes no more.
    left: bool,
    /// The leader (by its ballot) that last had a new slot accepted here, and until when its
    /// lease runs: see the module doc.
    lease: Option<(Ballot, Time)>,
    /// How long a new slot renews the lease: the proposers' election timeout.
    lease_us: Time,
}

impl Acceptor {
    /// A fresh acceptor with nothing on disk: one of `config`'s groups, or one that a change of
    /// configuration will bring in.
    pub fn new(id: NodeId, config: ClusterConfig, tunables: &Tunables) -> Self {
        let period = membership_period_us(tunables);
        Acceptor {
            id,
            membership: NodeMembership::new(id, RoleKind::Acceptor, &config, period),
            left: false,
            replicas: config.replicas,
            promised: Ballot::ZERO,
            promised_nonce: None,
            accepted: BTreeMap::new(),
            trimmed_below: 0,
            page_bytes: tunables.phase1b_page_bytes,
            max_accepted: Ballot::ZERO,
            storage: Storage::Durable,
            lease: None,
            lease_us: tunables.election_timeout_us,
        }
    }

    /// The acceptor its disk describes: `recovered`'s records applied in order, exactly as they were
    /// applied when queued. With `Storage::InMemory` nothing was kept and nothing will be.
    pub fn recover(
        id: NodeId,
        config: ClusterConfig,
        tunables: &Tunables,
        storage: Storage,
        recovered: Recovered,
    ) -> Self {
        let mut acceptor = Acceptor::new(id, config, tunables);
        acceptor.storage = storage;
        for record in recovered.records {
            match record {
                Record::Promise { ballot, nonce } => {
                    acceptor.promised = ballot;
                    acceptor.promised_nonce = nonce;
                }
                Record::Accept { slot, ballot, value } => {
                    acceptor.accept(slot, ballot, value);
                }
                Record::Trim { below } => acceptor.trim(below),
                Record::Executed { .. } => {
                    panic!("acceptor {id}: a replica's record in its log: is the data dir another node's?")
                }
            }
        }
        acceptor.check_invariants();
        acceptor
    }

    /// An acceptor new to the cluster (a change of configuration will name it): from `now` on it
    /// announces to the proposers that it listens at `addr`, until a view lists it.
    pub fn joining(mut self, addr: String, now: Time) -> Self {
        self.membership.join(addr, now);
        self
    }

    /// The leader says no configuration names this acceptor and every slot it held is trimmed:
    /// it reports `Left` (the runtime then stops it).
    fn on_leave(&mut self, from: NodeId, out: &mut Out) {
        if !self.membership.is_proposer(from) {
            out.dropped("acceptor: only the leader removes an acceptor, by a change of configuration");
            return;
        }
        if !self.left {
            self.left = true;
            out.event(|| Event::Left);
        }
        report_left(out, self.id, from, self.membership.proposers().iter().copied());
    }

    /// Queues `record` if this acceptor is durable.
    fn persist(&self, out: &mut Out, record: impl FnOnce() -> Record) {
        if self.storage == Storage::Durable {
            out.persist(record());
        }
    }

    /// Raises the promise to `ballot` if it is higher (a Phase2a's ballot promises too), and records
    /// the value. The same code runs live and in recovery, so both give the same state. Returns
    /// whether the slot is new at this ballot (not a re-proposal, not below the trim point).
    fn accept(&mut self, slot: Slot, ballot: Ballot, value: Value) -> bool {
        if ballot > self.promised {
            self.promised = ballot;
            self.promised_nonce = None;
        }
        if slot < self.trimmed_below {
            return false;
        }
        self.max_accepted = self.max_accepted.max(ballot);
        self.accepted.insert(slot, (ballot, value)).is_none_or(|(before, _)| before != ballot)
    }

    fn trim(&mut self, below: Slot) {
        if below > self.trimmed_below {
            self.trimmed_below = below;
            self.accepted = self.accepted.split_off(&below);
        }
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// How many slots this acceptor currently remembers.
    pub fn accepted_len(&self) -> usize {
        self.accepted.len()
    }

    /// The proposer whose lease runs at `now`: its ballot is still the one promised.
    pub fn leaseholder(&self, now: Time) -> Option<NodeId> {
        self.lease.filter(|&(ballot, until)| ballot == self.promised && now < until).map(|(b, _)| b.proposer)
    }

    fn on_phase1a(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        nonce: u64,
        from_slot: Slot,
        out: &mut Out,
    ) {
        // A ballot is promised once. An equal ballot is answered again only for a retransmission of
        // the same Phase 1; a restarted proposer reusing its ballot is refused and moves above it.
        let retransmission = ballot == self.promised && self.promised_nonce == Some(nonce);
        if ballot <= self.promised && !retransmission {
            out.send(from, Msg::Nack { promised: self.promised });
            return;
        }
        // (A retransmission is of the promised ballot: its proposer holds any lease that runs.)
        if self.leaseholder(now).is_some_and(|leader| leader != ballot.proposer) {
            // No answer: the candidate resends, and wins once the leader stops choosing.
            out.dropped("acceptor: a leader is at work; Phase1a of another proposer not answered");
            return;
        }
        if !retransmission {
            self.promised = ballot;
            self.promised_nonce = Some(nonce);
            self.persist(out, || Record::Promise { ballot, nonce: Some(nonce) });
        }
        let start = from_slot.max(self.trimmed_below);
        // One page: at least one entry, then until the page size is reached.
        let mut accepted = Vec::new();
        let (mut bytes, mut more_from) = (0, None);
        for (&slot, (b, v)) in self.accepted.range(start..) {
            if !accepted.is_empty() && bytes >= self.page_bytes {
                more_from = Some(slot);
                break;
            }
            bytes += 64 + v.byte_len();
            accepted.push(AcceptedEntry { slot, ballot: *b, value: v.clone() });
        }
        let reply = Phase1bReply { ballot, nonce, trimmed_below: self.trimmed_below, accepted, more_from };
        // Even a retransmission waits: what it reports may not be durable yet.
        self.storage.send(out, from, Msg::Phase1b(reply));
    }

    fn on_phase2a(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        slot: Slot,
        value: Value,
        out: &mut Out,
    ) {
        if ballot < self.promised {
            out.send(from, Msg::Nack { promised: self.promised });
            return;
        }
        if ballot > self.promised {
            // Its own record, not only implied by the Accept: storage carries the last Promise
            // forward when it deletes old segments, and the Accept's segment may be deleted.
            self.persist(out, || Record::Promise { ballot, nonce: None });
        }
        if slot >= self.trimmed_below {
            let value_digest = out.digest(|| value.digest());
            out.event(|| Event::Accepted { slot, ballot, value_digest });
            self.persist(out, || Record::Accept { slot, ballot, value: value.clone() });
        }
        if self.accept(slot, ballot, value) {
            self.lease = Some((ballot, now + self.lease_us));
        }
        // Below the trim point the slot is chosen and executed everywhere; any proposal for it at a
        // ballot we may accept carries the chosen value, so acknowledging it is safe.
        self.storage.send(out, from, Msg::Phase2b { ballot, slot });
    }

    /// A replica that no peer can teach reads a slot from the acceptors of its group. The answer
    /// waits for the disk like a vote: the replica counts it toward a quorum, so it must be a vote
    /// that survives a crash.
    fn on_read_slot(&mut self, from: NodeId, slot: Slot, out: &mut Out) {
        let now_replica = self.membership.view().configuration().is_some_and(|c| c.replicas.contains(&from));
        if !self.replicas.contains(&from) && !now_replica {
            out.dropped("acceptor: a slot read from a node that is not a replica");
            return;
        }
        let accepted = self.accepted.get(&slot).map(|(ballot, value)| AcceptedEntry {
            slot,
            ballot: *ballot,
            value: value.clone(),
        });
        let trimmed = slot < self.trimmed_below;
        self.storage.send(out, from, Msg::SlotRead { slot, accepted, trimmed });
    }

    fn on_trim(&mut self, below: Slot, out: &mut Out) {
        if below > self.trimmed_below {
            self.persist(out, || Record::Trim { below });
            self.trim(below);
        }
    }

    fn check_invariants(&self) {
        assert!(
            self.max_accepted <= self.promised,
            "acceptor {}: accepted ballot {} above its promise {}",
            self.id,
            self.max_accepted,
            self.promised
        );
        assert!(
            self.accepted.keys().next().is_none_or(|&s| s >= self.trimmed_below),
            "acceptor {}: holds a slot below its trim point {}",
            self.id,
            self.trimmed_below
        );
    }
}

impl Role for Acceptor {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        if self.left && !matches!(msg, Msg::Leave) {
            out.dropped("acceptor: removed from the configuration; votes no more");
            return;
        }
        match msg {
            Msg::Membership(view) if self.membership.accepts_view_from(from, &view) => {
                self.membership.on_view(&view);
            }
            Msg::Leave => self.on_leave(from, out),
            Msg::Phase1a { ballot, nonce, from_slot } => {
                self.on_phase1a(now, from, ballot, nonce, from_slot, out)
            }
            Msg::Phase2a { ballot, slot, value } => self.on_phase2a(now, from, ballot, slot, value, out),
            Msg::Abdicate { ballot } => {
                if self.lease.is_some_and(|(leased, _)| leased == ballot) {
                    self.lease = None;
                }
            }
            Msg::Trim { below } => self.on_trim(below, out),
            Msg::ReadSlot { slot } => self.on_read_slot(from, slot, out),
            _ => out.dropped("acceptor: unexpected message"),
        }
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if !self.left {
            self.membership.on_timeout(now, true, out);
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.membership.poll_timeout().filter(|_| !self.left)
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Acceptor
    }

    fn status(&self) -> crate::protocol::messages::NodeStatus {
        let mut status = self.membership.status(RoleKind::Acceptor);
        if self.left {
            status.state = crate::protocol::messages::NodeState::Leaving;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(round: u64, proposer: NodeId) -> Ballot {
        Ballot { round, proposer }
    }

    fn acceptor() -> Acceptor {
        // Groups: [3,4,5] owns even slots, [6,7,8] odd ones.
        Acceptor::new(3, ClusterConfig::f1(2, 1, 1, 1), &Tunables::default())
    }

    fn call(a: &mut Acceptor, msg: Msg) -> Vec<(NodeId, Msg)> {
        call_at(a, 0, msg)
    }

    fn call_at(a: &mut Acceptor, now: Time, msg: Msg) -> Vec<(NodeId, Msg)> {
        let mut out = Out::new(true);
        a.handle_message(now, 1, msg, &mut out);
        assert!(out.msgs.is_empty() || out.after_persist.is_empty(), "a vote or a refusal, not both");
        out.msgs.into_iter().chain(out.after_persist).collect()
    }

    #[test]
    fn votes_wait_for_their_records_and_a_restart_rebuilds_the_same_acceptor() {
        let mut a = acceptor();
        let mut log = Vec::new();
        let mut call_logged = |a: &mut Acceptor, msg| {
            let mut out = Out::new(false);
            a.handle_message(0, 1, msg, &mut out);
            assert!(out.msgs.is_empty(), "votes never go out before their records: {:?}", out.msgs);
            log.extend(out.persist);
            out.after_persist
        };
        let votes = call_logged(&mut a, Msg::Phase1a { ballot: b(1, 1), nonce: 9, from_slot: 0 });
        assert!(matches!(votes[..], [(1, Msg::Phase1b(_))]));
        for slot in [0, 2, 4] {
            let value = Value::Batch(bytes::Bytes::from(vec![slot as u8; 3]));
            call_logged(&mut a, Msg::Phase2a { ballot: b(2, 1), slot, value });
        }
        call_logged(&mut a, Msg::Trim { below: 1 });
        let restarted = Acceptor::recover(
            3,
            ClusterConfig::f1(2, 1, 1, 1),
            &Tunables::default(),
            Storage::Durable,
            Recovered { snapshot: None, records: log },
        );
        assert_eq!((restarted.promised, restarted.promised_nonce), (a.promised, a.promised_nonce));
        assert_eq!(restarted.accepted, a.accepted);
        assert_eq!(restarted.trimmed_below, a.trimmed_below);
    }

    #[test]
    fn in_memory_acceptors_keep_nothing_and_vote_at_once() {
        let config = ClusterConfig::f1(2, 1, 1, 1);
        let mut a =
            Acceptor::recover(3, config, &Tunables::default(), Storage::InMemory, Recovered::default());
        let mut out = Out::new(false);
        a.handle_message(0, 1, Msg::Phase2a { ballot: b(1, 1), slot: 0, value: Value::Noop }, &mut out);
        assert!(out.persist.is_empty() && out.after_persist.is_empty());
        assert_eq!(out.msgs, vec![(1, Msg::Phase2b { ballot: b(1, 1), slot: 0 })]);
    }

    #[test]
    fn never_accepts_below_its_promise() {
        let mut a = acceptor();
        call(&mut a, Msg::Phase1a { ballot: b(2, 1), nonce: 1, from_slot: 0 });
        let reply = call(&mut a, Msg::Phase2a { ballot: b(1, 2), slot: 0, value: Value::Noop });
        assert_eq!(reply, vec![(1, Msg::Nack { promised: b(2, 1) })]);
        assert_eq!(a.accepted_len(), 0);
        let reply = call(&mut a, Msg::Phase2a { ballot: b(2, 1), slot: 0, value: Value::Noop });
        assert_eq!(reply, vec![(1, Msg::Phase2b { ballot: b(2, 1), slot: 0 })]);
    }

    #[test]
    fn phase1b_reports_accepted_values_from_the_requested_slot() {
        let mut a = acceptor();
        for slot in [0, 2, 4] {
            call(&mut a, Msg::Phase2a { ballot: b(1, 1), slot, value: Value::Noop });
        }
        // Past the lease of leader 1 (see the tests below).
        let after_lease = Tunables::default().election_timeout_us;
        let reply = call_at(&mut a, after_lease, Msg::Phase1a { ballot: b(2, 2), nonce: 1, from_slot: 2 });
        let Msg::Phase1b(Phase1bReply { accepted, .. }) = &reply[0].1 else { panic!("{reply:?}") };
        assert_eq!(accepted.iter().map(|e| e.slot).collect::<Vec<_>>(), vec![2, 4]);
        // A lower ballot's Phase1a is refused with the promise.
        let reply = call(&mut a, Msg::Phase1a { ballot: b(1, 9), nonce: 1, from_slot: 0 });
        assert_eq!(reply, vec![(1, Msg::Nack { promised: b(2, 2) })]);
    }

    #[test]
    fn a_leader_choosing_new_slots_keeps_other_proposers_phase1_unanswered_for_an_election_timeout() {
        let lease = Tunables::default().election_timeout_us;
        let mut a = acceptor();
        call_at(&mut a, 1_000, Msg::Phase2a { ballot: b(1, 1), slot: 0, value: Value::Noop });
        assert_eq!(a.leaseholder(1_000), Some(1));
        // A proposer that stopped hearing leader 1 runs with a higher ballot: not answered...
        assert_eq!(call_at(&mut a, 2_000, Msg::Phase1a { ballot: b(5, 2), nonce: 1, from_slot: 0 }), vec![]);
        assert_eq!(a.promised(), b(1, 1));
        // ...while each new slot renews the lease...
        call_at(&mut a, 100_000, Msg::Phase2a { ballot: b(1, 1), slot: 2, value: Value::Noop });
        assert_eq!(
            call_at(&mut a, 99_999 + lease, Msg::Phase1a { ballot: b(5, 2), nonce: 1, from_slot: 0 }),
            vec![]
        );
        // ...but the leader itself may always run again (a restart without memory, say).
        let own = call_at(&mut a, 100_001, Msg::Phase1a { ballot: b(2, 1), nonce: 3, from_slot: 0 });
        assert!(matches!(own[..], [(1, Msg::Phase1b(_))]), "{own:?}");
        // Its new ballot's first new slot leases again; an election timeout after it, the others
        // are answered.
        call_at(&mut a, 200_000, Msg::Phase2a { ballot: b(2, 1), slot: 4, value: Value::Noop });
        assert_eq!(
            call_at(&mut a, 199_999 + lease, Msg::Phase1a { ballot: b(5, 2), nonce: 1, from_slot: 0 }),
            vec![]
        );
        let late = call_at(&mut a, 200_000 + lease, Msg::Phase1a { ballot: b(5, 2), nonce: 1, from_slot: 0 });
        assert!(matches!(late[..], [(1, Msg::Phase1b(_))]), "{late:?}");
        assert_eq!(a.leaseholder(200_000 + lease), None);
    }

    #[test]
    fn a_leader_that_only_reproposes_or_abdicates_holds_no_lease() {
        let lease = Tunables::default().election_timeout_us;
        let mut a = acceptor();
        call_at(&mut a, 0, Msg::Phase2a { ballot: b(1, 1), slot: 0, value: Value::Noop });
        // A stuck window re-proposed: the same slot at the same ballot renews nothing.
        call_at(&mut a, lease - 1, Msg::Phase2a { ballot: b(1, 1), slot: 0, value: Value::Noop });
        assert_eq!(a.leaseholder(lease), None);
        // A leader handing over lifts its lease at once; another leader's word does not.
        call_at(&mut a, lease, Msg::Phase2a { ballot: b(1, 1), slot: 2, value: Value::Noop });
        call_at(&mut a, lease, Msg::Abdicate { ballot: b(1, 3) });
        assert_eq!(a.leaseholder(lease + 1), Some(1));
        call_at(&mut a, lease + 1, Msg::Abdicate { ballot: b(1, 1) });
        let reply = call_at(&mut a, lease + 2, Msg::Phase1a { ballot: b(2, 2), nonce: 1, from_slot: 0 });
        assert!(matches!(reply[..], [(1, Msg::Phase1b(_))]), "{reply:?}");
    }

    #[test]
    fn a_ballot_is_promised_to_one_phase1_only() {
        let mut a = acceptor();
        let first = call(&mut a, Msg::Phase1a { ballot: b(1, 1), nonce: 7, from_slot: 0 });
        assert!(matches!(first[0].1, Msg::Phase1b(Phase1bReply { nonce: 7, .. })));
        // The same Phase 1 retransmitted is answered again...
        let again = call(&mut a, Msg::Phase1a { ballot: b(1, 1), nonce: 7, from_slot: 0 });
        assert_eq!(again, first);
        // ...but a restarted proposer reusing the ballot with a new nonce is refused (sim seed 9511).
        let reused = call(&mut a, Msg::Phase1a { ballot: b(1, 1), nonce: 8, from_slot: 0 });
        assert_eq!(reused, vec![(1, Msg::Nack { promised: b(1, 1) })]);
    }

    #[test]
    fn trim_forgets_executed_slots_and_phase1b_says_so() {
        let mut a = acceptor();
        for slot in [0, 2, 4] {
            call(&mut a, Msg::Phase2a { ballot: b(1, 1), slot, value: Value::Noop });
        }
        call(&mut a, Msg::Trim { below: 3 });
        assert_eq!(a.accepted_len(), 1);
        let reply = call(&mut a, Msg::Phase1a { ballot: b(2, 1), nonce: 1, from_slot: 0 });
        let Msg::Phase1b(Phase1bReply { trimmed_below, accepted, .. }) = &reply[0].1 else { panic!() };
        assert_eq!((*trimmed_below, accepted.len()), (3, 1));
    }

    #[test]
    fn a_long_log_is_reported_in_pages_that_say_where_the_next_starts() {
        let tunables = Tunables { phase1b_page_bytes: 100, ..Tunables::default() };
        let mut a = Acceptor::new(3, ClusterConfig::f1(2, 1, 1, 1), &tunables);
        for slot in (0..10).map(|s| s * 2) {
            call(&mut a, Msg::Phase2a { ballot: b(1, 1), slot, value: Value::Noop });
        }
        let mut from_slot = 0;
        let mut pages = Vec::new();
        loop {
            let reply = call(&mut a, Msg::Phase1a { ballot: b(2, 1), nonce: 5, from_slot });
            let Msg::Phase1b(page) = &reply[0].1 else { panic!("{reply:?}") };
            pages.push(page.accepted.iter().map(|e| e.slot).collect::<Vec<_>>());
            match page.more_from {
                Some(next) => from_slot = next,
                None => break,
            }
        }
        assert_eq!(pages, vec![vec![0, 2], vec![4, 6], vec![8, 10], vec![12, 14], vec![16, 18]]);
    }
}
