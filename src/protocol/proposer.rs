//! Proposer: f+1 of them, one leads. The leader assigns each batch a slot and hands it to a proxy
//! leader; it is two messages per batch whatever f is. Followers watch the leader's heartbeats, and
//! the replicas' reports of slots executed, and run for leader when both stop (a follower cut off
//! from the leader alone still sees the log advance, and leaves a working leader be; a candidate
//! that hears a leader again, or sees the log advance, stands down whatever its ballot, and the
//! acceptors would not answer it meanwhile anyway: see `acceptor`'s lease): Phase 1 on
//! every acceptor group from the lowest slot not known to be chosen, re-propose the highest-ballot
//! value found per slot, fill holes with no-ops, and only then take new batches. A proposer's
//! memory is lost in a crash; everything it needs is re-learned.
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
//! Configurations (see `configuration`): a proposer keeps the history of acceptor configurations
//! that the replicas report with their watermarks, and routes every slot to the group of the
//! configuration in force at it. A candidate's Phase 1 covers every configuration in force at a
//! slot at or above its start: the known ones, then those of changes it finds, in slot order, until
//! no new one appears; a found value counts only from the group that owns its slot. A leader
//! changes the configuration when an operator asks (`Reconfigure`): one change at a time, validated
//! against the newest, in force a little ahead of its slot; it proposes nothing at or beyond that
//! first slot until a replica reports the change executed (`room`), then fills the gap with no-ops
//! when load does not.
//!
//! Proposers change too: a configuration names them. A proposer that no configuration names yet
//! (`--join`) announces its address and never runs for leader; once a change names it, replicas
//! report to it and it may. A leader that a change removes keeps leading until every slot below
//! the change's first slot is executed, then steps down and tells the first proposer of the new
//! configuration to run at once (`LeadNow`), so that load waits one Phase 1, not an election
//! timeout. The leader tells every node that no kept configuration names any more to leave.
//!
//! Must never: propose two values for one slot at one ballot; take new batches before Phase 1 is done;
//! keep leading after seeing a higher ballot; drop a batch without forwarding, refusing or counting it;
//! route a slot by a change that may not be chosen; lead before Phase 1 covered every configuration
//! that owns a slot it may propose.

use super::config::{ClusterConfig, Tunables};
use super::configuration::{validate_change, Change, ConfigHistory, Configuration, ReconfigError};
use super::membership::{
    can_join, is_stateless, membership_period_us, report_left, NodeMembership, Standing, View,
    HEARTBEATS_PER_VIEW,
};
use super::messages::{encode_batch, Msg, NodeState, NodeStatus, Phase1bReply, Value};
use super::timers::Timers;
use super::{Ballot, Event, NodeId, Out, Role, RoleKind, Slot, Stage, Time, SUSPECT_FOR_US};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A change of configuration is in force this many slots (plus twice the slots in flight) after
/// the slot that chooses it, at most α.
const CHANGE_LEAD_SLOTS: u64 = 16;

/// Removed nodes a leader keeps telling to leave at once, at most.
const MAX_RETIRING: usize = 64;

/// Client nodes sending to proposers directly that a proposer remembers, at most.
const MAX_DIRECT_CLIENTS: usize = 1024;

/// A node that joined is counted on to replace one that leaves while it reminded the proposers
/// within this many reminder periods (it reminds them every period).
const LIVE_REMINDER_PERIODS: Time = 3;

/// An election timeout doubles at most this many times (see `Proposer::failed_elections`).
const MAX_ELECTION_BACKOFF: u32 = 3;

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
    /// Acceptors asked to promise.
    asked: BTreeSet<NodeId>,
    /// Acceptors that promised and reported everything they accepted.
    promised: BTreeSet<NodeId>,
    /// Acceptors part way through a paged report: the slot their next page starts at.
    next_page: BTreeMap<NodeId, Slot>,
    /// The highest trim point reported: everything below is executed by every replica.
    max_trimmed: Slot,
    /// Per slot at or above `start`, what each acceptor reported. Which reports count depends on
    /// the configuration in force at the slot, which changes found below it may decide.
    reports: BTreeMap<Slot, Vec<(NodeId, Ballot, Value)>>,
}

/// The next proxy leader in turn that is neither `avoid` (the last attempt's, for a re-proposal)
/// nor `suspected`; failing that, the next that is not `avoid`; failing that (there is one), the
/// next. Advances `next` past the one taken.
fn pick_proxy(
    proxies: &[NodeId],
    next: &mut usize,
    avoid: Option<NodeId>,
    suspected: impl Fn(NodeId) -> bool,
) -> NodeId {
    let n = proxies.len();
    let at = |i: usize| proxies[next.wrapping_add(i) % n];
    let offset = (0..n)
        .find(|&i| Some(at(i)) != avoid && !suspected(at(i)))
        .or_else(|| (0..n).find(|&i| Some(at(i)) != avoid))
        .unwrap_or(0);
    let proxy = at(offset);
    *next = next.wrapping_add(offset + 1);
    proxy
}

/// What Phase 1's reports say so far.
struct Phase1Outcome {
    /// The known history, plus the changes found (to be re-proposed, hence chosen if we lead).
    history: ConfigHistory,
    /// Per slot, the value to re-propose: the highest-ballot one its group reported.
    found: BTreeMap<Slot, Value>,
    /// Whether a quorum of every group of every configuration that owns a slot at or above the
    /// start has promised.
    complete: bool,
}

/// A change of configuration the leader was asked for.
#[derive(Debug)]
struct PendingReconfig {
    config: Configuration,
    /// Who to tell once it is in force.
    requester: NodeId,
    /// Once proposed: the slot it was proposed in, and the first slot it owns.
    proposed: Option<(Slot, Slot)>,
    /// When this leader took the request (a retry keeps the first one's time).
    asked_at: Time,
}

#[derive(Debug)]
struct InFlight {
    value: Value,
    /// When it is proposed again if still not executed.
    due_at: Time,
    /// The proxy leader it went through last: a re-proposal goes through another one, in case
    /// that one is gone.
    proxy: NodeId,
    /// Re-proposals so far: each waits twice as long as the one before (up to
    /// [`MAX_RESEND_BACKOFF_SHIFT`] doublings).
    resends: u32,
}

/// A slot's re-proposals back off: 1, 2, 4, 8, then 16 resend timeouts apart (50 ms to 800 ms by
/// default). Every re-proposal of a window costs every acceptor of it a record and a vote; when
/// acceptors cannot answer (a slow or stalled disk, an overloaded core) re-proposing the whole
/// window every timeout only adds to the load that holds them back.
const MAX_RESEND_BACKOFF_SHIFT: u32 = 4;

#[derive(Debug)]
struct Leadership {
    next_slot: Slot,
    in_flight: BTreeMap<Slot, InFlight>,
    /// Batches (with the node to refuse or forward them for) waiting for room in the window, at
    /// most `Tunables::max_waiting_batches`; at the bound a new one goes back to its batcher
    /// unproposed (`BatchBusy`). Each with when it arrived: its `Stage::Queued` time runs from it.
    waiting: VecDeque<(NodeId, Bytes, Time)>,
    /// Whether batchers were last told that this leader is full (`LeaderLoad`).
    reported_full: bool,
    next_proxy: usize,
    /// Proxy leaders through which a proposal went unanswered for a resend timeout, with until
    /// when new proposals pass them by (see [`pick_proxy`]).
    suspected_proxies: BTreeMap<NodeId, Time>,
    trimmed_sent: Slot,
    /// A change of configuration under way, if any (one at a time).
    reconfig: Option<PendingReconfig>,
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
    /// The acceptor configurations in force from the trim point on, as replicas report them (and,
    /// while leading, as Phase 1 found them).
    history: ConfigHistory,
    tunables: Tunables,
    rng: ChaCha8Rng,
    /// The highest ballot seen, own or another's.
    ballot: Ballot,
    state: State,
    leader_hint: Option<NodeId>,
    /// What each replica last said it executed, and when it last said so.
    replica_watermarks: BTreeMap<NodeId, Slot>,
    replica_heard_at: BTreeMap<NodeId, Time>,
    /// The highest watermark any replica reported since this proposer started, a member of the
    /// newest configuration or not: `replica_watermarks` drops a replica that a change removed,
    /// but its report may already have cut `history` to its watermark (a replica keeps only the
    /// configurations from its watermark on), so Phase 1 never starts below this.
    reported_executed: Slot,
    /// The stateless nodes and where each stands. Every proposer applies the joins and departures it
    /// hears and merges the views it gets; the leader publishes its view.
    view: View,
    /// The proxy leaders in service in `view`, by id (never empty: the last one cannot leave).
    proxy_leaders: Vec<NodeId>,
    /// Heartbeats since the leader last published its view.
    heartbeats_since_view: u32,
    /// Removed nodes told to leave that have not yet said they did.
    retired: BTreeSet<NodeId>,
    /// When each node that joined last announced or reminded this proposer of itself (every
    /// second while it serves): one silent for longer is not counted on to replace a node that
    /// leaves.
    reminded_at: BTreeMap<NodeId, Time>,
    /// A proposer started with `--join`: it announces itself until a view lists it.
    membership: Option<NodeMembership>,
    /// Told to leave after a change removed it: it answers nothing any more.
    left: bool,
    /// Whether a replica has reported since this proposer started: until then it does not know
    /// the configurations (a proposer restarted without memory, which a change removed, would
    /// otherwise run with the cluster file's).
    heard_from_replica: bool,
    /// The newest configuration whose removed nodes this proposer marked leaving in its view.
    marked_epoch: u64,
    /// Client nodes that send to proposers directly (no batcher between): they hear views too,
    /// so that they learn the proposers a change brings in.
    direct_clients: BTreeSet<NodeId>,
    /// Elections of ours that ended without a leader (preempted, or timed out) since we last heard
    /// one: each doubles the election timeout (up to `MAX_ELECTION_BACKOFF` times), so that two
    /// candidates whose Phase 1 reads a long log do not preempt each other for ever.
    failed_elections: u32,
    timers: Timers<3>,
}

impl Proposer {
    /// A follower that has heard from no one. `seed` drives its election jitter. The first configured
    /// proposer runs early so a fresh cluster elects quickly; the others wait a full timeout.
    pub fn new(id: NodeId, config: ClusterConfig, tunables: Tunables, seed: u64, now: Time) -> Self {
        let first = config.proposers[0] == id;
        let history = ConfigHistory::new(&config, tunables.max_in_flight_slots as u64);
        let mut p = Proposer {
            id,
            config: config.clone(),
            history,
            membership: None,
            left: false,
            heard_from_replica: false,
            marked_epoch: 0,
            direct_clients: BTreeSet::new(),
            tunables,
            rng: ChaCha8Rng::seed_from_u64(seed),
            ballot: Ballot::ZERO,
            state: State::Follower,
            leader_hint: None,
            replica_watermarks: BTreeMap::new(),
            reported_executed: 0,
            replica_heard_at: BTreeMap::new(),
            view: View::from_config(&config),
            proxy_leaders: config.proxy_leaders.clone(),
            heartbeats_since_view: 0,
            failed_elections: 0,
            retired: BTreeSet::new(),
            reminded_at: BTreeMap::new(),
            timers: Timers::default(),
        };
        if first {
            p.timers.set(Timer::Election as usize, now + p.tunables.heartbeat_interval_us);
        } else {
            p.reset_election_timer(now);
        }
        p
    }

    /// Makes this a proposer that no configuration names yet: from `now` on it announces to the
    /// proposers that it listens at `addr`, and runs for leader only once a change names it.
    pub fn joining(mut self, addr: String, now: Time) -> Self {
        assert!(!self.config.proposers.contains(&self.id), "a configured proposer does not join");
        let period = membership_period_us(&self.tunables);
        let mut membership = NodeMembership::new(self.id, RoleKind::Proposer, &self.config, period);
        membership.join(addr, now);
        self.membership = Some(membership);
        self
    }

    /// The proposers of the newest configuration known: they may lead.
    fn proposers(&self) -> &[NodeId] {
        &self.history.latest().config.proposers
    }

    /// Whether the newest configuration known (from the replicas' reports, or a view that carried
    /// a newer one) names this proposer: only then may it run.
    fn named_proposer(&self) -> bool {
        newest_known(&self.history, &self.view).proposers.contains(&self.id)
    }

    /// The replicas of the newest configuration known: they report, and hear views.
    fn replicas(&self) -> &[NodeId] {
        &self.history.latest().config.replicas
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
        let base = self.tunables.election_timeout_us << self.failed_elections.min(MAX_ELECTION_BACKOFF);
        let jitter = self.rng.gen_range(0..=base);
        self.timers.set(Timer::Election as usize, now + base + jitter);
    }

    /// Slots below this are executed by some replica, hence chosen.
    fn max_executed(&self) -> Slot {
        self.replica_watermarks.values().copied().max().unwrap_or(0)
    }

    /// Where Phase 1 may start: every slot below is executed by some replica (a removed one
    /// too), hence chosen, and `history` covers every slot from here on. Only Phase 1 takes a
    /// removed replica's word: the leader's work (what it re-proposes, when it trims) follows the
    /// replicas of the newest configuration, which may still have to learn those slots.
    ///
    /// A replica keeps the configurations from its own watermark on, so a history whose oldest
    /// configuration owns slots from s says every slot below s was executed, even when the report
    /// that carried it names a lower watermark (a replica whose taught snapshot is not yet on disk
    /// reports the watermark its disk can give back): Phase 1 starts there at the lowest (sim seed
    /// 3918: the history from slot 46, a floor of 43, and no configuration for 43 to 45).
    fn phase1_floor(&self) -> Slot {
        let covered_from = self.history.entries().first().map_or(0, |e| e.from_slot);
        self.max_executed().max(self.reported_executed).max(covered_from)
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
        if !self.heard_from_replica {
            // It cannot tell which configurations are in force: look again soon.
            self.timers.set(Timer::Election as usize, now + self.tunables.heartbeat_interval_us);
            return;
        }
        if !self.named_proposer() {
            // Not (or no longer) a proposer of the newest configuration: it may not lead.
            if !matches!(self.state, State::Follower) {
                self.step_down(now, out);
            }
            return self.reset_election_timer(now);
        }
        if matches!(self.state, State::Candidate(_)) {
            self.failed_elections += 1;
        }
        self.ballot = Ballot::next_after(self.ballot, self.id);
        self.leader_hint = None;
        let start = self.phase1_floor();
        let nonce = self.rng.gen();
        self.state = State::Candidate(Phase1 {
            nonce,
            start,
            asked: BTreeSet::new(),
            promised: BTreeSet::new(),
            next_page: BTreeMap::new(),
            max_trimmed: 0,
            reports: BTreeMap::new(),
        });
        self.ask_for_promises(out);
        self.timers.cancel(Timer::Heartbeat as usize);
        self.timers.set(Timer::Resend as usize, now + self.tunables.resend_timeout_us);
        self.reset_election_timer(now);
    }

    /// Sends Phase1a to every acceptor of every configuration Phase 1 must cover that has not been
    /// asked yet (all of them, at first; then those of changes found or reported meanwhile).
    fn ask_for_promises(&mut self, out: &mut Out) {
        let State::Candidate(phase1) = &self.state else { return };
        let needed = self.phase1_outcome(phase1).history.acceptors_from(phase1.start);
        let (ballot, nonce, from_slot) = (self.ballot, phase1.nonce, phase1.start);
        let State::Candidate(phase1) = &mut self.state else { return };
        for acceptor in needed {
            if phase1.asked.insert(acceptor) {
                out.send(acceptor, Msg::Phase1a { ballot, nonce, from_slot });
            }
        }
    }

    /// Reads Phase 1's reports in slot order: each slot's value is the highest-ballot one reported
    /// by the group that owns it, in the configuration that the history (and the changes found
    /// below the slot) puts in force there.
    fn phase1_outcome(&self, phase1: &Phase1) -> Phase1Outcome {
        let mut history = self.history.clone();
        let mut found = BTreeMap::new();
        for (&slot, reports) in phase1.reports.range(phase1.start..) {
            let group = history.group_of(slot);
            let best = reports.iter().filter(|(a, _, _)| group.contains(a)).max_by_key(|(_, b, _)| *b);
            let Some((_, _, value)) = best else { continue };
            if let Value::Reconfig(bytes) = value {
                if let Some(change) = Change::decode(bytes) {
                    history.on_chosen(slot, &change);
                }
            }
            found.insert(slot, value.clone());
        }
        let quorum = history.quorum();
        let complete = history.from(phase1.start).iter().all(|e| {
            e.config
                .acceptor_groups
                .iter()
                .all(|g| g.iter().filter(|a| phase1.promised.contains(a)).count() >= quorum)
        });
        Phase1Outcome { history, found, complete }
    }

    fn on_phase1b(&mut self, now: Time, from: NodeId, reply: Phase1bReply, out: &mut Out) {
        let Phase1bReply { ballot, nonce, trimmed_below, accepted, more_from } = reply;
        let State::Candidate(phase1) = &mut self.state else {
            return;
        };
        if ballot != self.ballot || nonce != phase1.nonce {
            return; // An answer to an earlier election of ours.
        }
        if !phase1.asked.contains(&from) {
            out.dropped("proposer: phase1b from a node not asked");
            return;
        }
        phase1.max_trimmed = phase1.max_trimmed.max(trimmed_below);
        for entry in accepted.into_iter().filter(|e| e.slot >= phase1.start) {
            let reports = phase1.reports.entry(entry.slot).or_default();
            if !reports.iter().any(|(a, _, _)| *a == from) {
                reports.push((from, entry.ballot, entry.value));
            }
        }
        // A paged report: ask for the rest (the same ballot and nonce is answered as a
        // retransmission); the promise counts once the report is complete. A page that does not
        // move the report forward is a duplicate (a resend's answer): following it too would
        // page through the log twice.
        if let Some(next) = more_from {
            let resume = phase1.next_page.entry(from).or_insert(phase1.start);
            if next > *resume {
                *resume = next;
                out.send(from, Msg::Phase1a { ballot, nonce, from_slot: next });
                // Reports coming in: Phase 1 is not stuck, however long the log it reads.
                self.reset_election_timer(now);
            }
            return;
        }
        phase1.next_page.remove(&from);
        phase1.promised.insert(from);
        self.try_to_lead(now, out);
    }

    /// Leads if Phase 1 covers every configuration its reports and the replicas put in force;
    /// otherwise asks the acceptors of configurations it has just learned of.
    fn try_to_lead(&mut self, now: Time, out: &mut Out) {
        let floor = self.phase1_floor();
        let State::Candidate(phase1) = &mut self.state else { return };
        // Slots below the acceptors' trim point are chosen, but unless a replica reported them
        // (with its history) a change among them is unknown: wait for the report.
        if phase1.max_trimmed > floor {
            return;
        }
        // Every slot below the highest watermark reported since the election began is executed,
        // hence chosen: Phase 1 need not cover the configurations that owned only those (their
        // acceptors may be gone), and the history may no longer hold them (a replica far ahead
        // reports only the configurations from its watermark on: sim seed 8842 with --reconfig).
        if floor > phase1.start {
            phase1.start = floor;
            phase1.reports = phase1.reports.split_off(&phase1.start);
        }
        let State::Candidate(phase1) = &self.state else { return };
        if self.phase1_outcome(phase1).complete {
            self.become_leader(now, out);
        } else {
            self.ask_for_promises(out);
        }
    }

    fn become_leader(&mut self, now: Time, out: &mut Out) {
        let State::Candidate(phase1) = std::mem::replace(&mut self.state, State::Follower) else {
            unreachable!("only a candidate becomes leader")
        };
        let Phase1Outcome { history, mut found, complete } = self.phase1_outcome(&phase1);
        assert!(complete, "a leader's Phase 1 covers every configuration in force above its start");
        self.history = history;
        let start = phase1.start.max(phase1.max_trimmed);
        let end = found.keys().next_back().map_or(start, |&s| (s + 1).max(start));
        self.state = State::Leader(Leadership {
            next_slot: end,
            in_flight: BTreeMap::new(),
            waiting: VecDeque::new(),
            reported_full: false,
            next_proxy: 0,
            suspected_proxies: BTreeMap::new(),
            trimmed_sent: 0,
            reconfig: None,
        });
        self.leader_hint = Some(self.id);
        self.failed_elections = 0;
        // Publish the view at once: nodes that know more answer with theirs, which we merge.
        self.publish_view(out);
        // Re-propose what may have been chosen, and fill every hole with a no-op, before any new batch.
        for slot in start..end {
            let value = found.remove(&slot).unwrap_or(Value::Noop);
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
        self.step_down(now, out);
    }

    /// Stops leading or running: batches still waiting go to the leader hinted, if any.
    fn step_down(&mut self, now: Time, out: &mut Out) {
        if matches!(self.state, State::Candidate(_)) {
            self.failed_elections += 1;
        }
        if let State::Leader(leadership) = std::mem::replace(&mut self.state, State::Follower) {
            // Batches still waiting go to the new leader rather than being lost, or back to their
            // batchers (to retry) when no other leader is known.
            let leader = self.leader_hint.filter(|&l| l != self.id);
            for (origin, batch, _) in leadership.waiting {
                match leader {
                    Some(leader) => {
                        out.send(leader, Msg::ClientBatch { origin, forwarded: true, attempt: 0, batch })
                    }
                    None => out.send(origin, Msg::BatchRefused { leader_hint: None, attempt: 0, batch }),
                }
            }
        }
        self.timers.cancel(Timer::Heartbeat as usize);
        self.timers.cancel(Timer::Resend as usize);
        self.reset_election_timer(now);
    }

    fn on_heartbeat(&mut self, now: Time, from: NodeId, ballot: Ballot, out: &mut Out) {
        if ballot < self.ballot {
            if self.is_leader() {
                out.send(from, Msg::Heartbeat { ballot: self.ballot }); // depose the stale leader at once
            } else {
                // A proposer that stopped hearing the leader for a while (paused, or cut off) and
                // ran with a higher ballot hears it again: it stands down rather than depose a
                // working leader (whose acceptors would not answer it anyway, see `acceptor`). A
                // leader that is in fact deposed learns so from the acceptors' Nack.
                self.leave_a_working_leader_be(now, Some(ballot.proposer), out);
            }
            return;
        }
        self.observe_ballot(now, ballot, out);
        if ballot.proposer != self.id {
            self.leave_a_working_leader_be(now, Some(ballot.proposer), out);
        }
    }

    /// A leader (`leader`, if known) is at work: a candidate stops running, and the next election
    /// waits a whole timeout again.
    fn leave_a_working_leader_be(&mut self, now: Time, leader: Option<NodeId>, out: &mut Out) {
        if matches!(self.state, State::Candidate(_)) {
            self.step_down(now, out);
        }
        if leader.is_some() {
            self.leader_hint = leader;
        }
        self.failed_elections = 0;
        self.reset_election_timer(now);
    }

    // ---- the leader's work ----

    /// Hands `value` to a proxy leader for `slot`, naming the group that owns the slot.
    fn propose(&mut self, now: Time, slot: Slot, value: Value, out: &mut Out) {
        self.propose_attempt(now, slot, value, None, 0, out);
    }

    /// Proposes `slot` for the time after `resends` earlier attempts: through the next proxy leader
    /// in turn, or the one after it if that is `avoid` (the last attempt's), due again after the
    /// resend timeout doubled once per earlier attempt (at most [`MAX_RESEND_BACKOFF_SHIFT`] times).
    fn propose_attempt(
        &mut self,
        now: Time,
        slot: Slot,
        value: Value,
        avoid: Option<NodeId>,
        resends: u32,
        out: &mut Out,
    ) {
        let State::Leader(l) = &mut self.state else { unreachable!("only a leader proposes") };
        assert!(
            self.history.covers(slot),
            "proposer {}: slot {slot} is below every configuration it keeps ({:?})",
            self.id,
            self.history.entries().first().map(|e| e.from_slot)
        );
        let suspected = |p: NodeId| l.suspected_proxies.get(&p).is_some_and(|&until| now < until);
        let proxy = pick_proxy(&self.proxy_leaders, &mut l.next_proxy, avoid, suspected);
        let group = self.history.group_of(slot).to_vec();
        out.send(proxy, Msg::Propose { ballot: self.ballot, slot, value: value.clone(), group });
        let due_at = now + (self.tunables.resend_timeout_us << resends.min(MAX_RESEND_BACKOFF_SHIFT));
        l.in_flight.insert(slot, InFlight { value, due_at, proxy, resends });
    }

    /// New slots the leader may propose now: within its in-flight window, and below the first
    /// slot of every change not yet known chosen (its own, proposed; one that Phase 1 found and it
    /// re-proposes), so that no slot is routed by a change that might not be chosen. (Re-proposals
    /// of slots Phase 1 found are not new: a value found above a change's first slot, in its new
    /// groups, was proposed by a leader that knew the change chosen.)
    fn room(&self) -> usize {
        let State::Leader(l) = &self.state else { return 0 };
        let window = self.tunables.max_in_flight_slots.saturating_sub(l.in_flight.len());
        let executed = self.max_executed();
        let unconfirmed = self
            .history
            .entries()
            .iter()
            .filter(|e| e.chosen_at.is_some_and(|at| at >= executed))
            .map(|e| e.from_slot);
        let pending = l.reconfig.as_ref().and_then(|r| r.proposed).map(|(_, from_slot)| from_slot);
        // A leader that a change removes leads only the slots before it.
        let latest = self.history.latest();
        let removed = (!latest.config.proposers.contains(&self.id)).then_some(latest.from_slot);
        let limit = unconfirmed.chain(pending).chain(removed).min().unwrap_or(Slot::MAX);
        window.min(usize::try_from(limit.saturating_sub(l.next_slot)).unwrap_or(usize::MAX))
    }

    /// Proposes what waits, as far as there is room: no-ops up to a chosen change's first slot
    /// (so that it is in force without waiting for load), then a change asked for, then batches
    /// in arrival order.
    fn admit(&mut self, now: Time, out: &mut Out) {
        let in_force_from = self.history.latest().from_slot;
        while self.room() > 0 && self.next_slot() < in_force_from {
            let slot = self.take_next_slot();
            self.propose(now, slot, Value::Noop, out);
        }
        self.answer_reconfigured(now, out);
        let latest_epoch = self.history.latest().config.epoch;
        let room = self.room();
        let State::Leader(l) = &self.state else { return };
        // In force a little ahead: past the slots likely proposed while the change is chosen and
        // reported, so that load rarely waits for it and few no-ops fill the gap.
        let ahead = (2 * l.in_flight.len() as u64 + CHANGE_LEAD_SLOTS).min(self.history.alpha());
        let unproposed =
            l.reconfig.as_ref().filter(|r| r.proposed.is_none() && r.config.epoch > latest_epoch);
        if let Some(config) = unproposed.filter(|_| room > 0).map(|r| r.config.clone()) {
            let slot = self.take_next_slot();
            let change = Change { config, from_slot: slot + ahead.max(1), ballot: self.ballot };
            if let State::Leader(Leadership { reconfig: Some(r), .. }) = &mut self.state {
                r.proposed = Some((slot, change.from_slot));
            }
            self.propose(now, slot, Value::Reconfig(change.encode()), out);
        }
        let room = self.room();
        let State::Leader(l) = &mut self.state else { return };
        let admitted: Vec<(Bytes, Time)> =
            (0..room).map_while(|_| l.waiting.pop_front().map(|(_, batch, at)| (batch, at))).collect();
        for (batch, arrived) in admitted {
            queued(now, arrived, out);
            let slot = self.take_next_slot();
            self.propose(now, slot, Value::Batch(batch), out);
        }
        self.arm_resend(now);
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
        let room = self.room();
        match &mut self.state {
            State::Leader(l) => {
                if room > 0 && l.waiting.is_empty() {
                    // Proposed on arrival: queued for no time, still one sample per batch.
                    queued(now, now, out);
                    let slot = self.take_next_slot();
                    self.propose(now, slot, Value::Batch(batch), out);
                    self.arm_resend(now);
                } else if l.waiting.len() < self.tunables.max_waiting_batches {
                    l.waiting.push_back((origin, batch, now));
                } else {
                    // Never proposed and not kept: the batcher holds it and sends it again.
                    out.dropped("proposer: waiting queue full, batch handed back");
                    out.send(origin, Msg::BatchBusy { batch });
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

    fn on_executed(
        &mut self,
        now: Time,
        from: NodeId,
        watermark: Slot,
        configs: ConfigHistory,
        out: &mut Out,
    ) {
        // A replica of a configuration kept, or of the newest one it reports (added by a change
        // this proposer has not heard of yet).
        if !self.history.names_replica(from) && !configs.latest().config.replicas.contains(&from) {
            out.dropped("proposer: watermark from a node that is not a replica");
            return;
        }
        self.heard_from_replica = true;
        // Before the merge, which may take its history, kept from its watermark on (sim seed
        // 1217: a restarted proposer took removed replica 11's, from slot 28, then ran Phase 1
        // from slot 9, the newest configuration's replicas' watermark, and re-proposed slot 9).
        self.reported_executed = self.reported_executed.max(watermark);
        let merged = self.history.merge(&configs, watermark);
        if merged.is_err() && self.is_leader() {
            // A change found in Phase 1 and taken for chosen was not: someone else leads.
            out.dropped("proposer: a replica's configurations contradict the leader's");
            self.step_down(now, out);
            return;
        }
        if configs.latest().config.epoch > self.marked_epoch {
            self.on_new_configuration(&configs, out);
        }
        let executed_before = self.max_executed();
        let replicas = &self.history.latest().config.replicas;
        self.replica_watermarks.retain(|r, _| replicas.contains(r));
        self.replica_heard_at.retain(|r, _| replicas.contains(r));
        if self.replicas().contains(&from) {
            let known = self.replica_watermarks.entry(from).or_insert(0);
            *known = (*known).max(watermark);
            self.replica_heard_at.insert(from, now);
        }
        if !self.is_leader() && self.max_executed() > executed_before {
            // Slots are being chosen, so a leader is at work even if its heartbeats do not reach
            // this proposer (only the link between the two is cut): running now would depose a
            // working leader, which would depose this one back in turn, for ever (`jepsen` with
            // the proposers' link cut: a new leader every 200-300 ms). A dead or stuck leader
            // chooses nothing, and the election timer runs out as before.
            self.leave_a_working_leader_be(now, None, out);
        }
        // A change proposed at a higher ballot: its groups promised us nothing, and a leader with
        // that ballot exists. Take the ballot (a leader or candidate steps down) before routing by it.
        if let Some(higher) =
            self.history.entries().iter().map(|e| e.ballot).max().filter(|&b| b > self.ballot)
        {
            return self.observe_ballot(now, higher, out);
        }
        match self.state {
            State::Candidate(_) => return self.try_to_lead(now, out),
            // Configurations that own no slot a new Phase 1 could start from are forgotten (the
            // leader forgets them as it trims, once their acceptors heard of it).
            State::Follower => return self.history.forget_below(self.trim_point(now)),
            State::Leader(_) => {}
        }
        let executed = self.max_executed();
        let State::Leader(l) = &mut self.state else {
            return;
        };
        if executed > l.next_slot {
            // Slots this leader never proposed are chosen: a higher ballot leads (and the history
            // may no longer cover the slots this one would propose next).
            out.dropped("proposer: replicas executed slots this leader never proposed");
            return self.step_down(now, out);
        }
        let latest = self.history.latest();
        if !latest.config.proposers.contains(&self.id) && executed >= latest.from_slot {
            // A change removed this leader and every slot it led before it is executed: hand over.
            let successor = latest.config.proposers[0];
            return self.hand_over(now, successor, out);
        }
        l.in_flight = l.in_flight.split_off(&executed);
        // A change proposed in a slot now executed that did not become the newest configuration
        // (another value was chosen there): propose it again.
        let latest_epoch = self.history.latest().config.epoch;
        if let Some(r) = l.reconfig.as_mut() {
            if r.proposed.is_some_and(|(s, _)| s < executed) && r.config.epoch > latest_epoch {
                r.proposed = None;
            }
        }
        self.admit(now, out);
    }

    // ---- changes of configuration ----

    /// A replica executed a configuration newer than any this proposer marked removals for (so
    /// it was chosen): the nodes that changes removed (the replicas' history lists them all) are
    /// marked leaving in the view (views reach every proposer, so whichever leads tells them to
    /// leave once no kept configuration names them), and views carry the newest configuration to
    /// the nodes that keep no history.
    fn on_new_configuration(&mut self, reported: &ConfigHistory, out: &mut Out) {
        let newest = reported.latest().config.clone();
        self.marked_epoch = newest.epoch;
        for &(id, role) in reported.removed() {
            self.change_view(out, |v| v.mark_removed(id, role));
        }
        self.change_view(out, |v| v.learn_configuration(&newest));
    }

    /// A leader that a change removed steps down and tells `successor` (a proposer of the new
    /// configuration) to run at once.
    fn hand_over(&mut self, now: Time, successor: NodeId, out: &mut Out) {
        self.leader_hint = None;
        self.step_down(now, out);
        // The acceptors would otherwise keep the successor's Phase 1 unanswered for an election
        // timeout after this leader's last slot (their lease, see `acceptor`).
        for acceptor in self.history.acceptors_from(0) {
            out.send(acceptor, Msg::Abdicate { ballot: self.ballot });
        }
        out.send(successor, Msg::LeadNow);
    }

    /// Tells every node that a change removed, and that no kept configuration names any more,
    /// to leave; but only once every replica of the newest configuration has executed every slot
    /// below the history kept. The history may start above a replica's watermark (it was taken
    /// from a replica far ahead, which keeps only the configurations from its own watermark on),
    /// and a replica below it may still have to learn those slots from a removed replica or from
    /// a removed group's acceptors: sim seed 1217, where a leader whose history started at slot 28
    /// retired replica 11 and acceptors 3, 4, 5 while the other replicas stood at slots 9 and 0.
    fn retire_removed(&mut self, out: &mut Out) {
        let first = self.history.entries()[0].from_slot;
        let replicas = &self.history.latest().config.replicas;
        let caught_up = replicas.iter().all(|r| self.replica_watermarks.get(r).is_some_and(|&w| w >= first));
        if !caught_up {
            return;
        }
        let kept = self.history.members_from(0);
        let gone: Vec<NodeId> = (self.view.removed_stateful())
            .filter(|id| *id != self.id && !kept.contains(id) && !self.retired.contains(id))
            .collect();
        for id in gone {
            self.retire(id, out);
        }
    }

    fn on_reconfigure(&mut self, now: Time, from: NodeId, config: Configuration, out: &mut Out) {
        let State::Leader(l) = &mut self.state else {
            out.send(from, Msg::NotLeader { leader_hint: self.leader_hint });
            return;
        };
        let latest = self.history.latest();
        if !latest.config.proposers.contains(&self.id) {
            // Removed by the newest change: it hands over once that change is in force.
            let reason = format!(
                "the leader is removed by the change to epoch {}; retry once it has handed over",
                latest.config.epoch
            );
            out.send(from, Msg::ReconfigureRefused { epoch: config.epoch, reason });
            return;
        }
        if latest.config == config {
            // Chosen already (a retry, or another operator's): answer once it is in force.
            l.reconfig = Some(PendingReconfig { config, requester: from, proposed: None, asked_at: now });
            self.answer_reconfigured(now, out);
            return;
        }
        if let Some(pending) = l.reconfig.as_mut() {
            if pending.config == config {
                pending.requester = from; // a retry: the change is under way
            } else {
                let reason =
                    format!("the change to epoch {} is under way; retry after it", pending.config.epoch);
                out.send(from, Msg::ReconfigureRefused { epoch: config.epoch, reason });
            }
            return;
        }
        if config.epoch != latest.config.epoch + 1 {
            // Another change came first: this one was read against a configuration no longer newest.
            let reason = format!(
                "this change was read against epoch {}, but epoch {} is the newest now (another change \
                 came first): run reconfigure again",
                config.epoch.saturating_sub(1),
                latest.config.epoch
            );
            out.send(from, Msg::ReconfigureRefused { epoch: config.epoch, reason });
            return;
        }
        let configured = |id| self.config.all_nodes().find(|&(node, _)| node == id).map(|(_, role)| role);
        let viewed = |id| self.view.members().iter().find(|m| m.id == id);
        // A node new to the configuration (or to its role in it) must be one that joined as that
        // role, and not one that a change removed.
        let new_nodes: Vec<(NodeId, RoleKind)> = config
            .members()
            .filter(|(id, role)| !latest.config.members().any(|m| m == (*id, *role)))
            .collect();
        let taken = new_nodes.iter().copied().find(|&(id, role)| {
            configured(id).is_some_and(|r| r != role)
                || viewed(id).is_some_and(|m| m.role != role || m.standing != Standing::InService)
        });
        let unknown =
            new_nodes.iter().copied().find(|&(id, _)| configured(id).is_none() && viewed(id).is_none());
        let check = match (taken, unknown) {
            (Some((id, _)), _) => Err(ReconfigError::TakenId(id)),
            (None, Some((id, role))) => Err(ReconfigError::NotJoined { id, role: role.name() }),
            (None, None) => validate_change(&latest.config, &config, self.history.f()),
        };
        if let Err(why) = check {
            out.send(from, Msg::ReconfigureRefused { epoch: config.epoch, reason: why.to_string() });
            return;
        }
        l.reconfig = Some(PendingReconfig { config, requester: from, proposed: None, asked_at: now });
        self.admit(now, out);
    }

    /// Tells the operator once the change it asked for is the newest configuration and the
    /// leader proposes in it.
    fn answer_reconfigured(&mut self, now: Time, out: &mut Out) {
        let latest = self.history.latest();
        let (epoch, from_slot) = (latest.config.epoch, latest.from_slot);
        let State::Leader(l) = &mut self.state else { return };
        if l.next_slot < from_slot || l.reconfig.as_ref().is_none_or(|r| r.config.epoch != epoch) {
            return;
        }
        let done = l.reconfig.take().expect("checked above");
        let leader_us = now.saturating_sub(done.asked_at);
        out.send(done.requester, Msg::Reconfigured { epoch, from_slot, leader_us });
    }

    fn next_slot(&self) -> Slot {
        match &self.state {
            State::Leader(l) => l.next_slot,
            _ => 0,
        }
    }

    fn take_next_slot(&mut self) -> Slot {
        let State::Leader(l) = &mut self.state else { unreachable!("only a leader assigns slots") };
        l.next_slot += 1;
        l.next_slot - 1
    }

    fn send_heartbeats(&self, out: &mut Out) {
        let others = self.proposers().iter().filter(|&&p| p != self.id).copied();
        for node in others.chain(self.view.batchers_to_inform()) {
            out.send(node, Msg::Heartbeat { ballot: self.ballot });
        }
        // With every heartbeat too, so that a lost change of load is repaired within a period.
        let full = matches!(&self.state, State::Leader(l) if l.reported_full);
        for node in self.view.batchers_to_inform() {
            out.send(node, Msg::LeaderLoad { ballot: self.ballot, full });
        }
    }

    /// Whether the leader is full: its window has no room and batches queue behind it. Batchers
    /// then hold their batches, and refuse new requests once they hold their bound. Once full it
    /// stays so until half the queue drained (hysteresis): otherwise every executed slot would
    /// flip it twice, two messages per batcher each time, on the busiest node.
    fn is_full(&self) -> bool {
        let high = self.tunables.leader_full_waiting_batches;
        match &self.state {
            State::Leader(l) if l.reported_full => l.waiting.len() > high / 2,
            State::Leader(l) => self.room() == 0 && l.waiting.len() >= high,
            _ => false,
        }
    }

    /// Tells batchers at once when the leader becomes full or stops being full.
    fn report_load(&mut self, out: &mut Out) {
        let full = self.is_full();
        let State::Leader(l) = &mut self.state else { return };
        if l.reported_full == full {
            return;
        }
        l.reported_full = full;
        for node in self.view.batchers_to_inform() {
            out.send(node, Msg::LeaderLoad { ballot: self.ballot, full });
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

    /// Tells a removed node to leave (again at each view, until it says it has; its `Left` makes
    /// it a tombstone in the view).
    fn retire(&mut self, id: NodeId, out: &mut Out) {
        if self.retired.len() < MAX_RETIRING && self.retired.insert(id) {
            // The view first: it carries the configuration that removed the node, which a
            // removed proposer or replica checks before it leaves.
            out.send(id, Msg::Membership(self.view.clone()));
            out.send(id, Msg::Leave);
        }
    }

    /// Sends the view to everyone who routes work to stateless nodes, and to those nodes.
    fn publish_view(&mut self, out: &mut Out) {
        self.heartbeats_since_view = 0;
        for &gone in &self.retired {
            out.send(gone, Msg::Membership(self.view.clone()));
            out.send(gone, Msg::Leave);
        }
        // Acceptors too: they learn from it which proposers may remove them and which replicas
        // may read a slot.
        let latest = &self.history.latest().config;
        let others = latest.proposers.iter().filter(|&&p| p != self.id).copied();
        let targets: BTreeSet<NodeId> = others
            .chain(latest.replicas.iter().copied())
            .chain(latest.acceptors())
            .chain(self.view.stateless_nodes())
            .chain(self.direct_clients.iter().copied())
            .collect();
        for node in targets {
            out.send(node, Msg::Membership(self.view.clone()));
        }
    }

    /// The nodes of the view that may replace one that leaves: the cluster file's (assumed up), and
    /// those that joined and reminded this proposer lately (a joined node that died stays in
    /// service in the view, but falls silent).
    fn live_nodes(&self, now: Time) -> BTreeSet<NodeId> {
        let silence = LIVE_REMINDER_PERIODS
            * super::membership::REMINDER_PERIODS
            * membership_period_us(&self.tunables);
        let configured = |id| self.config.all_nodes().any(|(n, _)| n == id);
        let reminded = |id| self.reminded_at.get(&id).is_some_and(|&at| now.saturating_sub(at) <= silence);
        self.view.members().iter().map(|m| m.id).filter(|&id| configured(id) || reminded(id)).collect()
    }

    fn on_join(&mut self, from: NodeId, role: RoleKind, addr: String, out: &mut Out) {
        let configured = self.config.all_nodes().any(|(id, kind)| id == from && !is_stateless(kind));
        if configured || !can_join(role) {
            out.dropped("proposer: a join by a node that cannot join");
            return;
        }
        if self.view.serves(from) && self.is_leader() {
            // A repeat (our view was lost on its way): answer it.
            out.send(from, Msg::Membership(self.view.clone()));
        }
        self.change_view(out, |v| v.join(from, role, addr));
    }

    /// The leader tells a proposer that no configuration names any more to leave: it reports
    /// `Left` (the runtime then stops it).
    fn on_leave(&mut self, now: Time, from: NodeId, out: &mut Out) {
        let newest = newest_known(&self.history, &self.view);
        if !self.config.proposers.contains(&from) && !newest.proposers.contains(&from) {
            out.dropped("proposer: asked to leave by a node that is not a proposer");
            return;
        }
        if newest.proposers.contains(&self.id) {
            out.dropped("proposer: asked to leave while the newest configuration it knows names it");
            return;
        }
        report_left(out, self.id, from, newest.proposers.iter().chain(&self.config.proposers).copied());
        self.step_down(now, out);
        self.left = true;
        out.event(|| Event::Left);
    }

    /// A view from another proposer (the leader's) or a replica (answering a stale one of ours).
    fn on_view(&mut self, from: NodeId, view: View, out: &mut Out) {
        let from_replica = self.history.names_replica(from);
        if !from_replica && !self.view.accepts_view_from(from, &view, &self.config) {
            out.dropped("proposer: a view from a node that publishes none");
            return;
        }
        if let Some(m) = self.membership.as_mut() {
            m.on_view(&view);
        }
        self.change_view(out, |v| v.merge(&view));
        if !from_replica && !view.covers(&self.view) {
            // Its sender (a leader that restarted without memory, say) knows less: teach it.
            out.send(from, Msg::Membership(self.view.clone()));
        }
    }

    fn on_heartbeat_timer(&mut self, now: Time, out: &mut Out) {
        if self.is_leader() && !self.named_proposer() {
            // A view says a change removed this leader, but no replica reports to it any more (one
            // taught a snapshot past the configuration that named it, say): hand over now. Safe at
            // any time; the next leader's Phase 1 finds what this one left in flight.
            let successor = newest_known(&self.history, &self.view).proposers[0];
            return self.hand_over(now, successor, out);
        }
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
            // Every configuration that owned a slot above the last trim point hears it, so the
            // acceptors of one that is done with forget its slots too.
            let before = self.history.acceptors_from(l.trimmed_sent);
            for &acceptor in &before {
                out.send(acceptor, Msg::Trim { below });
            }
            l.trimmed_sent = below;
            self.history.forget_below(below);
        }
        if self.is_leader() {
            // Nodes that no configuration kept names any more hold nothing anyone needs.
            self.retire_removed(out);
        }
        self.timers.set(Timer::Heartbeat as usize, now + self.tunables.heartbeat_interval_us);
    }

    /// Keeps the resend timer armed while slots are in flight, in O(1): a proposal made now is due
    /// one resend timeout from now, so the timer moves to then if it was set later (for slots whose
    /// re-proposals have backed off) or not at all; the timer's handler rescans (once per firing).
    fn arm_resend(&mut self, now: Time) {
        let State::Leader(l) = &self.state else {
            return;
        };
        let due = now + self.tunables.resend_timeout_us;
        if l.in_flight.is_empty() {
            self.timers.cancel(Timer::Resend as usize);
        } else if self.timers.deadline(Timer::Resend as usize).is_none_or(|at| at > due) {
            self.timers.set(Timer::Resend as usize, due);
        }
    }

    /// Re-arms the resend timer at the earliest re-proposal due (walks the window).
    fn rearm_resend_at_earliest(&mut self, now: Time) {
        let State::Leader(l) = &self.state else {
            return;
        };
        match l.in_flight.values().map(|f| f.due_at).min() {
            Some(first) => self.timers.set(Timer::Resend as usize, first.max(now + 1)),
            None => self.timers.cancel(Timer::Resend as usize),
        }
    }

    fn on_resend_timer(&mut self, now: Time, out: &mut Out) {
        match &mut self.state {
            State::Candidate(phase1) => {
                let (ballot, nonce, start) = (self.ballot, phase1.nonce, phase1.start);
                for &a in phase1.asked.iter().filter(|a| !phase1.promised.contains(a)) {
                    let from_slot = phase1.next_page.get(&a).copied().unwrap_or(start);
                    out.send(a, Msg::Phase1a { ballot, nonce, from_slot });
                }
                self.timers.set(Timer::Resend as usize, now + self.tunables.resend_timeout_us);
            }
            State::Leader(l) => {
                let due: Vec<(Slot, Value, NodeId, u32)> = l
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.due_at <= now)
                    .map(|(&s, f)| (s, f.value.clone(), f.proxy, f.resends + 1))
                    .collect();
                // The first slot not executed went unanswered: its proxy leader may be gone
                // (paused, cut off), so new proposals pass it by for a while, and one dead proxy
                // leader does not hold up every window. (Only the first: replicas execute in
                // order, so the slots above it look unanswered too while they wait for it.)
                l.suspected_proxies.retain(|_, &mut until| now < until);
                if let Some(&(_, _, proxy, _)) =
                    due.first().filter(|d| l.in_flight.keys().next() == Some(&d.0))
                {
                    l.suspected_proxies.insert(proxy, now + SUSPECT_FOR_US);
                }
                for (slot, value, proxy, resends) in due {
                    self.propose_attempt(now, slot, value, Some(proxy), resends, out);
                }
                self.rearm_resend_at_earliest(now);
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
                    p.reports.keys().next().is_none_or(|&s| s >= p.start),
                    "reported slots start at the phase 1 start"
                );
                assert!(p.promised.is_subset(&p.asked));
            }
            State::Leader(l) => {
                assert_eq!(self.ballot.proposer, self.id, "a leader leads with its own ballot");
                assert!(!self.proxy_leaders.is_empty(), "a leader always has a proxy leader");
                assert!(self.timers.is_set(Timer::Heartbeat as usize));
                assert!(!self.timers.is_set(Timer::Election as usize));
                assert!(l.in_flight.keys().next_back().is_none_or(|&s| s < l.next_slot));
                assert!(l.waiting.len() <= self.tunables.max_waiting_batches);
                assert_eq!(l.in_flight.is_empty(), !self.timers.is_set(Timer::Resend as usize));
            }
        }
    }
}

/// The newest configuration a node knows: its history's, or a newer one a view carried.
fn newest_known<'a>(history: &'a ConfigHistory, view: &'a View) -> &'a Configuration {
    match view.configuration() {
        Some(c) if c.epoch > history.latest().config.epoch => c,
        _ => &history.latest().config,
    }
}

/// A client batch that arrived at `arrived` is proposed at `now`: its `Stage::Queued` time, once
/// per batch this leader proposes (a batch it forwards or hands back is not its to time).
fn queued(now: Time, arrived: Time, out: &mut Out) {
    out.event(|| Event::Stage { stage: Stage::Queued, micros: now.saturating_sub(arrived) });
}

impl Role for Proposer {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        if self.left {
            if matches!(msg, Msg::Leave) {
                out.send(from, Msg::Left);
            }
            return;
        }
        match msg {
            Msg::ClientBatch { origin, forwarded, attempt, batch } => {
                self.on_batch(now, origin, forwarded, attempt, batch, out)
            }
            Msg::ClientRequests(commands) => {
                if self.direct_clients.len() < MAX_DIRECT_CLIENTS {
                    self.direct_clients.insert(from);
                }
                if self.is_full() {
                    // Without batchers the leader is the edge: refuse at once, unbatched.
                    out.event(|| Event::Shed { commands: commands.len() as u64 });
                    out.send(from, Msg::Busy(commands.iter().map(|c| (c.client_id, c.seq)).collect()));
                } else if self.is_leader() {
                    self.on_batch(now, from, true, 0, encode_batch(commands), out);
                } else {
                    out.send(from, Msg::NotLeader { leader_hint: self.leader_hint });
                }
            }
            Msg::Heartbeat { ballot } => self.on_heartbeat(now, from, ballot, out),
            Msg::Phase1b(reply) => self.on_phase1b(now, from, reply, out),
            Msg::Nack { promised } | Msg::Preempted { promised } => self.observe_ballot(now, promised, out),
            Msg::Executed { watermark, configs } => self.on_executed(now, from, watermark, configs, out),
            Msg::Reconfigure(config) => self.on_reconfigure(now, from, config, out),
            Msg::Join { role, addr } => {
                self.reminded_at.insert(from, now);
                self.on_join(from, role, addr, out)
            }
            // Only the leader admits departures, one at a time, so two nodes leaving at once cannot
            // take the last one of a role out of service; the node repeats its request until a view
            // from the leader says it is leaving.
            Msg::Leaving if self.is_leader() => {
                let live = self.live_nodes(now);
                self.change_view(out, |v| v.start_leaving(from, |n| live.contains(&n)))
            }
            Msg::Leaving => {}
            Msg::Left => {
                // A removed node reports to every proposer, so that a later leader does not tell
                // it again.
                self.retired.remove(&from);
                self.change_view(out, |v| v.forget(from))
            }
            Msg::Membership(view) => self.on_view(from, view, out),
            Msg::Leave => self.on_leave(now, from, out),
            // The leader before us was removed by a change: run now rather than after a timeout.
            Msg::LeadNow if matches!(self.state, State::Follower) => self.start_phase1(now, out),
            Msg::LeadNow => {}
            _ => out.dropped("proposer: unexpected message"),
        }
        self.report_load(out);
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if self.left {
            return;
        }
        if let Some(m) = self.membership.as_mut() {
            m.on_timeout(now, true, out);
        }
        let expired: Vec<usize> = self.timers.take_expired(now).collect();
        for timer in expired {
            match timer {
                t if t == Timer::Election as usize => self.start_phase1(now, out),
                t if t == Timer::Heartbeat as usize => self.on_heartbeat_timer(now, out),
                t if t == Timer::Resend as usize => self.on_resend_timer(now, out),
                _ => unreachable!("three timers"),
            }
        }
        self.report_load(out);
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.left {
            return None;
        }
        super::membership::earliest(
            self.timers.next(),
            self.membership.as_ref().and_then(|m| m.poll_timeout()),
        )
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Proposer
    }

    fn status(&self) -> NodeStatus {
        let joined = self.view.known_nodes();
        let state = match &self.membership {
            _ if self.left => NodeState::Leaving,
            // Removed by a change, and still running until it is told to leave.
            _ if self.history.removed().contains(&(self.id, RoleKind::Proposer)) => NodeState::Leaving,
            Some(m) if !self.proposers().contains(&self.id) => m.status(RoleKind::Proposer).state,
            _ => NodeState::Up,
        };
        NodeStatus {
            state,
            ballot: Some(self.ballot),
            leading: self.is_leader(),
            executed: Some(self.max_executed()),
            configuration: Some(self.history.latest().clone()),
            joined,
            removed: self.history.removed().iter().map(|&(id, _)| id).collect(),
            ..NodeStatus::basic(RoleKind::Proposer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's watermark report with the cluster file's configuration.
    fn executed(watermark: Slot) -> Msg {
        let configs = crate::protocol::configuration::ConfigHistory::new(
            &config(),
            Tunables::default().max_in_flight_slots as u64,
        );
        Msg::Executed { watermark, configs }
    }
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
        candidate_in(config(), tunables)
    }

    fn candidate_in(config: ClusterConfig, tunables: Tunables) -> (Proposer, u64) {
        let mut p = Proposer::new(1, config, tunables, 7, 0);
        let mut out = Out::new(false);
        p.handle_message(0, 10, executed(0), &mut out);
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
    fn a_node_leaves_only_while_another_of_its_role_is_known_to_be_up() {
        let mut p = leader(Tunables::default());
        let configured = config().batchers[0];
        let join = Msg::Join { role: RoleKind::Batcher, addr: "127.0.0.1:7021".into() };
        p.handle_message(0, 21, join.clone(), &mut Out::new(false));
        assert!(p.view.serves(21));
        // Batcher 21 joined, then died: still in service in the view, but silent for 10 s. The
        // cluster file's batcher may not leave: nobody would batch.
        let later = 10_000_000;
        p.handle_message(later, configured, Msg::Leaving, &mut Out::new(false));
        assert!(p.view.serves(configured), "the last batcher known to be up stays");
        // Once 21 reminds the proposers of itself again, the other may go.
        p.handle_message(later, 21, join, &mut Out::new(false));
        p.handle_message(later + 1, configured, Msg::Leaving, &mut Out::new(false));
        assert!(!p.view.serves(configured));
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
        p.handle_message(1, 10, executed(1), &mut out);
        assert_eq!(proposals(&out), vec![(2, Value::Batch(batch(b"c")))]);
    }

    #[test]
    fn a_batch_is_timed_from_its_arrival_to_its_proposal_and_one_it_forwards_is_not() {
        let mut p = leader(Tunables { max_in_flight_slots: 1, ..Tunables::default() });
        let batch_msg =
            |tag| Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: batch(tag) };
        let queued = |out: &Out| -> Vec<u64> {
            out.events
                .iter()
                .filter_map(|e| match e {
                    Event::Stage { stage: Stage::Queued, micros } => Some(*micros),
                    _ => None,
                })
                .collect()
        };
        let mut out = Out::new(true);
        p.handle_message(100, 12, batch_msg(b"a"), &mut out);
        assert_eq!(queued(&out), vec![0], "proposed on arrival");
        let mut out = Out::new(true);
        p.handle_message(200, 12, batch_msg(b"b"), &mut out);
        assert!(queued(&out).is_empty(), "waits behind a full window");
        p.handle_message(700, 10, executed(1), &mut out);
        assert_eq!(proposals(&out), vec![(1, Value::Batch(batch(b"b")))]);
        assert_eq!(queued(&out), vec![500], "from its arrival at 200 to its proposal at 700");
        // A follower forwards a batch to the leader: not its to time.
        let mut follower = Proposer::new(2, config(), Tunables::default(), 7, 0);
        follower.handle_message(0, 1, Msg::Heartbeat { ballot: p.ballot() }, &mut Out::new(false));
        let mut out = Out::new(true);
        follower.handle_message(900, 12, batch_msg(b"c"), &mut out);
        assert!(matches!(out.msgs[..], [(1, Msg::ClientBatch { forwarded: true, .. })]), "{:?}", out.msgs);
        assert!(queued(&out).is_empty());
    }

    #[test]
    fn a_full_leader_tells_its_batchers_and_hands_back_what_its_queue_cannot_hold() {
        let tunables = Tunables {
            max_in_flight_slots: 1,
            leader_full_waiting_batches: 2,
            max_waiting_batches: 3,
            ..Tunables::default()
        };
        let mut p = leader(tunables);
        let batcher = config().batchers[0];
        let send = |p: &mut Proposer, now, msg| {
            let mut out = Out::new(false);
            p.handle_message(
                now,
                if matches!(msg, Msg::Executed { .. }) { 10 } else { batcher },
                msg,
                &mut out,
            );
            out.msgs.into_iter().filter(|(_, m)| !matches!(m, Msg::Propose { .. })).collect::<Vec<_>>()
        };
        let batch_msg =
            |tag| Msg::ClientBatch { origin: batcher, forwarded: false, attempt: 0, batch: batch(tag) };
        assert!(send(&mut p, 0, batch_msg(b"a")).is_empty(), "proposed: the window had room");
        assert!(send(&mut p, 0, batch_msg(b"b")).is_empty(), "waits: one behind a full window");
        let full = Msg::LeaderLoad { ballot: p.ballot, full: true };
        assert_eq!(send(&mut p, 0, batch_msg(b"c")), vec![(batcher, full)], "two wait: full, said at once");
        assert!(send(&mut p, 0, batch_msg(b"d")).is_empty(), "three wait: the queue's bound");
        assert_eq!(
            send(&mut p, 0, batch_msg(b"e")),
            vec![(batcher, Msg::BatchBusy { batch: batch(b"e") })],
            "past the bound: handed back, not proposed, not dropped"
        );
        // Slots execute: the queue drains; full until half of it left (no flapping).
        assert!(send(&mut p, 1, executed(1)).is_empty(), "b proposed, two still wait");
        let room = Msg::LeaderLoad { ballot: p.ballot, full: false };
        assert_eq!(send(&mut p, 2, executed(2)), vec![(batcher, room)]);
        assert_eq!(p.in_flight(), 1);
    }

    #[test]
    fn without_batchers_a_full_leader_refuses_client_requests_at_once() {
        let tunables = Tunables {
            max_in_flight_slots: 1,
            leader_full_waiting_batches: 1,
            max_waiting_batches: 2,
            ..Tunables::default()
        };
        let mut p = leader(tunables);
        let request = |seq| {
            Msg::ClientRequests(vec![crate::protocol::messages::Command {
                client_id: 7 << 32,
                seq,
                op: Bytes::new(),
            }])
        };
        let mut out = Out::new(false);
        p.handle_message(0, 7, request(1), &mut out);
        p.handle_message(0, 7, request(2), &mut out);
        let mut out = Out::new(true);
        p.handle_message(0, 7, request(3), &mut out);
        assert_eq!(out.msgs, vec![(7, Msg::Busy(vec![(7 << 32, 3)]))]);
        assert_eq!(out.events, vec![Event::Shed { commands: 1 }]);
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
        // A leader whose Phase 1 found slot 5,000: replicas execute only slots it proposed.
        let (mut p, nonce) = candidate(tunables);
        let far = AcceptedEntry { slot: 5_000, ballot: b(1, 2), value: Value::Noop };
        for (a, entries) in [(3, vec![far]), (4, vec![]), (6, vec![]), (7, vec![])] {
            promise(&mut p, a, nonce, entries);
        }
        assert!(p.is_leader());
        p.handle_message(10, r1, executed(50), &mut Out::new(false));
        p.handle_message(10, r2, executed(20), &mut Out::new(false));
        assert_eq!(trim_sent(&mut p, 20), Some(20), "the slowest replica that is up");
        // r2 goes silent; r1 carries on: r2 no longer holds the acceptors' logs back.
        let later = 10 + down_after + 1;
        p.handle_message(later, r1, executed(60), &mut Out::new(false));
        assert_eq!(trim_sent(&mut p, later), Some(60));
        // r2 is back but far behind: the acceptors keep at most the budget behind the furthest.
        p.handle_message(later, r2, executed(30), &mut Out::new(false));
        p.handle_message(later, r1, executed(5_000), &mut Out::new(false));
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

    /// A batch from batcher `origin`, as it first sends it.
    fn client_batch(origin: NodeId, tag: &'static [u8]) -> Msg {
        Msg::ClientBatch { origin, forwarded: false, attempt: 0, batch: batch(tag) }
    }

    /// A leader that has proposed batch "a" (from batcher 12) in slot 0 at time 0.
    fn leader_proposing_a() -> Proposer {
        let mut p = leader(Tunables::default());
        p.handle_message(0, 12, client_batch(12, b"a"), &mut Out::new(false));
        p
    }

    #[test]
    fn a_leader_re_proposes_a_slot_that_was_not_executed_in_time() {
        let mut p = leader_proposing_a();
        let resend_at = Tunables::default().resend_timeout_us;
        let mut out = Out::new(false);
        while p.poll_timeout().is_some_and(|t| t <= resend_at) {
            p.handle_timeout(p.poll_timeout().unwrap(), &mut out);
        }
        assert_eq!(proposals(&out), vec![(0, Value::Batch(batch(b"a")))], "the same value, the same slot");
    }

    #[test]
    fn re_proposals_of_a_slot_back_off_to_sixteen_timeouts_apart() {
        let mut p = leader_proposing_a();
        let t = Tunables::default().resend_timeout_us;
        let mut sent_at = vec![];
        while let Some(now) = p.poll_timeout().filter(|&now| now <= 60 * t) {
            let mut out = Out::new(false);
            p.handle_timeout(now, &mut out);
            if !proposals(&out).is_empty() {
                assert_eq!(proposals(&out), vec![(0, Value::Batch(batch(b"a")))]);
                sent_at.push(now);
            }
        }
        // Gaps of 1, 2, 4, 8 timeouts, then 16 for good.
        assert_eq!(sent_at, vec![t, 3 * t, 7 * t, 15 * t, 31 * t, 47 * t]);
    }

    #[test]
    fn a_new_slot_is_re_proposed_on_time_while_an_older_one_backs_off() {
        let mut p = leader_proposing_a();
        let t = Tunables::default().resend_timeout_us;
        // Slot 0 re-proposed at t, 3t, 7t, 15t, 31t: its next one is due at 47t.
        while let Some(now) = p.poll_timeout().filter(|&now| now <= 31 * t) {
            p.handle_timeout(now, &mut Out::new(false));
        }
        let mut out = Out::new(false);
        p.handle_message(32 * t, 12, client_batch(12, b"b"), &mut out);
        assert_eq!(proposals(&out), vec![(1, Value::Batch(batch(b"b")))]);
        let mut out = Out::new(false);
        while let Some(now) = p.poll_timeout().filter(|&now| now <= 33 * t) {
            p.handle_timeout(now, &mut out);
        }
        assert_eq!(proposals(&out), vec![(1, Value::Batch(batch(b"b")))], "slot 1 again at 33t, not at 47t");
    }

    /// Proposer 1 leading a cluster with two proxy leaders (9 and 10); batcher 13.
    fn leader_with_two_proxy_leaders() -> Proposer {
        let (mut p, nonce) = candidate_in(ClusterConfig::f1(2, 2, 1, 1), Tunables::default());
        for a in [3, 4, 6, 7] {
            promise(&mut p, a, nonce, vec![]);
        }
        assert!(p.is_leader());
        p
    }

    /// The proposals in `out` as (slot, proxy leader).
    fn proposed_via(out: &Out) -> Vec<(Slot, NodeId)> {
        out.msgs
            .iter()
            .filter_map(|(to, m)| match m {
                Msg::Propose { slot, .. } => Some((*slot, *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_re_proposal_goes_through_another_proxy_leader() {
        let mut p = leader_with_two_proxy_leaders();
        let mut out = Out::new(false);
        for tag in [b"a", b"b"] {
            p.handle_message(0, 13, client_batch(13, tag), &mut out);
        }
        let mut via: BTreeMap<Slot, Vec<NodeId>> = BTreeMap::new();
        let mut record = |out: &Out| {
            for (slot, to) in proposed_via(out) {
                via.entry(slot).or_default().push(to);
            }
        };
        record(&out);
        while let Some(now) =
            p.poll_timeout().filter(|&now| now <= 10 * Tunables::default().resend_timeout_us)
        {
            let mut out = Out::new(false);
            p.handle_timeout(now, &mut out);
            record(&out);
        }
        // Two slots re-proposed together, in turn, would each keep one proxy leader for good (a
        // gone one, for one of them): each attempt avoids the proxy leader of the one before.
        assert_eq!(via.len(), 2);
        for proxies in via.values() {
            assert_eq!(proxies.len(), 4, "the proposal and three re-proposals");
            assert!(proxies.windows(2).all(|w| w[0] != w[1]), "{via:?}");
        }
    }

    #[test]
    fn new_proposals_pass_by_a_proxy_leader_that_left_the_first_slot_not_executed_unanswered() {
        let mut p = leader_with_two_proxy_leaders();
        let propose = |p: &mut Proposer, now: Time, tag: &'static [u8]| {
            let mut out = Out::new(false);
            p.handle_message(now, 13, client_batch(13, tag), &mut out);
            proposed_via(&out)
        };
        // (As `candidate_in` has it: the history of `config()`, where 11 is a replica.)
        let executed = |p: &mut Proposer, now: Time, watermark: Slot| {
            p.handle_message(now, 11, executed(watermark), &mut Out::new(false));
        };
        let t0 = 1_000_000; // past the election's timers
        assert_eq!(propose(&mut p, t0, b"a"), vec![(0, 9)]);
        assert_eq!(propose(&mut p, t0, b"b"), vec![(1, 10)]);
        assert_eq!(propose(&mut p, t0, b"c"), vec![(2, 9)]);
        // Slot 0 executed; slot 1 (through 10) unanswered, and slot 2 (through 9) waits behind it.
        executed(&mut p, t0 + 1_000, 1);
        let resend = t0 + Tunables::default().resend_timeout_us;
        let mut again = Vec::new();
        while let Some(now) = p.poll_timeout().filter(|&now| now <= resend) {
            let mut out = Out::new(false);
            p.handle_timeout(now, &mut out);
            again.extend(proposed_via(&out));
        }
        assert_eq!(again, vec![(1, 9), (2, 10)], "each again through the other");
        executed(&mut p, resend + 1, 3);
        // 10 is passed by (not 9: slot 2 only waited), while there is another...
        let slots: Vec<_> = (0..4).flat_map(|_| propose(&mut p, resend + 2, b"d")).collect();
        assert_eq!(slots, vec![(3, 9), (4, 9), (5, 9), (6, 9)]);
        executed(&mut p, resend + 3, 7);
        // ...for a while.
        let later = resend + SUSPECT_FOR_US;
        let slots: Vec<_> = (0..2).flat_map(|_| propose(&mut p, later, b"e")).map(|(_, to)| to).collect();
        assert_eq!(slots.iter().collect::<BTreeSet<_>>(), BTreeSet::from([&9, &10]), "{slots:?}");
    }

    fn change(epoch: u64, groups: Vec<Vec<NodeId>>) -> Configuration {
        Configuration { epoch, acceptor_groups: groups, ..Configuration::from_cluster(&config()) }
    }

    /// The proposals in `out` as (slot, group).
    fn routed(out: &Out) -> Vec<(Slot, Vec<NodeId>)> {
        out.msgs
            .iter()
            .filter_map(|(_, m)| match m {
                Msg::Propose { slot, group, .. } => Some((*slot, group.clone())),
                _ => None,
            })
            .collect()
    }

    /// What a replica with every slot below `watermark` executed reports, `history` being its
    /// configurations.
    fn executed_with(watermark: Slot, history: &ConfigHistory) -> Msg {
        Msg::Executed { watermark, configs: history.clone() }
    }

    /// A candidate (window 4) and what acceptor 3 will report: a change to one group [20, 21, 22],
    /// accepted in slot 0 at an earlier ballot, in force from slot 4.
    fn candidate_finding_a_change() -> (Proposer, u64, Configuration, AcceptedEntry) {
        let (p, nonce) = candidate(Tunables { max_in_flight_slots: 4, ..Tunables::default() });
        let one_group = change(1, vec![vec![20, 21, 22]]);
        let value = Change { config: one_group.clone(), from_slot: 4, ballot: Ballot::ZERO }.encode();
        let found = AcceptedEntry { slot: 0, ballot: b(1, 2), value: Value::Reconfig(value) };
        (p, nonce, one_group, found)
    }

    #[test]
    fn a_change_found_in_phase1_extends_it_to_the_new_groups_and_each_slot_goes_to_the_group_in_force() {
        let (mut p, nonce, one_group, found) = candidate_finding_a_change();
        let out = promise(&mut p, 3, nonce, vec![found]);
        let asked: Vec<NodeId> = out.msgs.iter().map(|(to, _)| *to).collect();
        assert_eq!(asked, vec![20, 21, 22], "Phase 1 reaches the new configuration's acceptors at once");
        promise(&mut p, 4, nonce, vec![]);
        promise(&mut p, 6, nonce, vec![]);
        promise(&mut p, 7, nonce, vec![]);
        assert!(!p.is_leader(), "the change found in slot 0 puts new groups in force from slot 4");
        promise(&mut p, 20, nonce, vec![]);
        let out = promise(&mut p, 21, nonce, vec![]);
        assert!(p.is_leader());
        assert_eq!(
            proposals(&out),
            vec![(
                0,
                Value::Reconfig(
                    Change { config: one_group.clone(), from_slot: 4, ballot: Ballot::ZERO }.encode()
                )
            )],
            "the change is re-proposed"
        );
        // New batches: slots 1..=3 under the old groups; slot 4 waits until a replica reports
        // slot 0 executed (with its history): until then the change might not be chosen.
        let mut out = Out::new(false);
        for tag in [&b"a"[..], b"b", b"c", b"d"] {
            let msg =
                Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: Bytes::from_static(tag) };
            p.handle_message(0, 12, msg, &mut out);
        }
        assert_eq!(routed(&out), vec![(1, vec![6, 7, 8]), (2, vec![3, 4, 5]), (3, vec![6, 7, 8])]);
        let mut history = ConfigHistory::new(&config(), 4);
        history.on_chosen(0, &Change { config: one_group.clone(), from_slot: 4, ballot: Ballot::ZERO });
        let mut out = Out::new(false);
        p.handle_message(1, 10, executed_with(1, &history), &mut out);
        assert_eq!(routed(&out), vec![(4, vec![20, 21, 22])]);
        // A change of the leader's own is taken from the replicas, never assumed: slot 0 chose
        // something else, so the leader proposes it again.
        let mut p = leader(Tunables { max_in_flight_slots: 4, ..Tunables::default() });
        let mut out = Out::new(false);
        p.handle_message(0, 1_000, Msg::Reconfigure(change(1, vec![vec![3, 4, 5]])), &mut out);
        assert!(matches!(proposals(&out)[..], [(0, Value::Reconfig(_))]), "{:?}", out.msgs);
        let mut out = Out::new(false);
        p.handle_message(1, 10, executed_with(1, &ConfigHistory::new(&config(), 4)), &mut out);
        assert!(p.is_leader());
        assert!(matches!(proposals(&out)[..], [(1, Value::Reconfig(_))]), "proposed again: {:?}", out.msgs);
    }

    #[test]
    fn a_proposer_runs_only_once_a_replica_reported_and_only_while_the_newest_configuration_names_it() {
        let mut p = Proposer::new(1, config(), Tunables::default(), 7, 0);
        let mut out = Out::new(false);
        p.handle_timeout(p.poll_timeout().unwrap(), &mut out);
        assert!(out.msgs.is_empty(), "no report yet: it cannot tell which configurations are in force");
        // A replica reports a change that replaced proposer 1 by 20.
        let mut history = ConfigHistory::new(&config(), Tunables::default().max_in_flight_slots as u64);
        let without_1 = Configuration { proposers: vec![2, 20], ..change(1, config().acceptor_groups) };
        assert!(history.on_chosen(0, &Change { config: without_1, from_slot: 2, ballot: Ballot::ZERO }));
        p.handle_message(1, 10, executed_with(3, &history), &mut Out::new(false));
        for _ in 0..3 {
            let mut out = Out::new(false);
            p.handle_timeout(p.poll_timeout().unwrap(), &mut out);
            assert!(
                !out.msgs.iter().any(|(_, m)| matches!(m, Msg::Phase1a { .. })),
                "removed: it never runs"
            );
        }
        assert!(!p.is_leader());
        // The leader tells it to leave; it says it has, to every proposer, and answers nothing more.
        let mut out = Out::new(true);
        p.handle_message(2, 2, Msg::Leave, &mut out);
        assert!(out.events.contains(&Event::Left));
        let told: BTreeSet<NodeId> =
            out.msgs.iter().filter(|(_, m)| *m == Msg::Left).map(|(to, _)| *to).collect();
        assert_eq!(told, BTreeSet::from([2, 20]));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_proposer_that_took_a_removed_replicas_history_leads_from_its_watermark_and_keeps_it_until_the_others_catch_up(
    ) {
        // Sim seed 1217. A change chosen in slot 1 replaced replica 11 by 14 from slot 4. Replica
        // 11, which executed up to slot 6, keeps only the configurations from there on; replica
        // 10 has not executed the change yet.
        let tunables = Tunables { max_in_flight_slots: 4, ..Tunables::default() };
        let file = ConfigHistory::new(&config(), 4);
        let without_11 = Configuration { replicas: vec![10, 14], ..change(1, config().acceptor_groups) };
        let mut ahead = file.clone();
        assert!(ahead.on_chosen(1, &Change { config: without_11, from_slot: 4, ballot: Ballot::ZERO }));
        ahead.forget_below(6);
        // A proposer restarted without memory hears 11 first: it takes 11's history, from slot 4.
        let mut p = Proposer::new(1, config(), tunables, 7, 0);
        p.handle_message(0, 11, executed_with(6, &ahead), &mut Out::new(false));
        p.handle_message(0, 10, executed_with(1, &file), &mut Out::new(false));
        let mut out = Out::new(false);
        p.handle_timeout(p.poll_timeout().unwrap(), &mut out);
        let starts: BTreeSet<Slot> = (out.msgs.iter())
            .filter_map(|(_, m)| match m {
                Msg::Phase1a { from_slot, .. } => Some(*from_slot),
                _ => None,
            })
            .collect();
        assert_eq!(
            starts,
            BTreeSet::from([6]),
            "Phase 1 starts at 11's watermark, not at 10's: {:?}",
            out.msgs
        );
        let Some(Msg::Phase1a { nonce, .. }) = out.msgs.first().map(|(_, m)| m.clone()) else {
            panic!("{:?}", out.msgs)
        };
        for a in [3, 4, 6, 7] {
            promise(&mut p, a, nonce, vec![]);
        }
        assert!(p.is_leader(), "and leads from slot 6, which its history covers");
        // Replica 10 still has slots 1 to 5 to learn, perhaps from 11 only: 11 is not told to
        // leave until every replica of the newest configuration is past the history it keeps.
        let told_to_leave = |p: &mut Proposer, now: &mut Time| {
            let mut out = Out::new(false);
            for _ in 0..4 {
                *now = (*now).max(p.poll_timeout().unwrap());
                p.handle_timeout(*now, &mut out);
            }
            out.msgs.contains(&(11, Msg::Leave))
        };
        let mut now = 0;
        assert!(!told_to_leave(&mut p, &mut now));
        p.handle_message(now, 10, executed_with(6, &ahead), &mut Out::new(false));
        assert!(!told_to_leave(&mut p, &mut now), "replica 14 has not reported yet");
        p.handle_message(now, 14, executed_with(6, &ahead), &mut Out::new(false));
        assert!(told_to_leave(&mut p, &mut now));
    }

    #[test]
    fn a_candidate_that_hears_a_working_leader_stands_down_whatever_its_ballot() {
        // Proposer 1 ran while it did not hear leader 2 (paused, say): its ballot is above the leader's.
        let (mut p, _) = candidate(Tunables::default());
        p.handle_message(1, 2, Msg::Heartbeat { ballot: b(0, 2) }, &mut Out::new(false));
        assert!(matches!(p.state, State::Follower), "it leaves the working leader be");
        assert_eq!(p.leader_hint, Some(2));
        assert!(p.ballot() > b(0, 2), "it keeps its ballot: a later election goes above it");
        let election = p.poll_timeout().unwrap();
        assert!(
            election > Tunables::default().election_timeout_us,
            "the next election waits a whole timeout"
        );
        // A candidate cut off from the leader alone sees the log advance: the same.
        let (mut p, _) = candidate(Tunables::default());
        p.handle_message(1, 10, executed(5), &mut Out::new(false));
        assert!(matches!(p.state, State::Follower));
        // Without either, it runs again when its timer runs out, with a higher ballot.
        let (mut p, _) = candidate(Tunables::default());
        let before = p.ballot();
        for _ in 0..10 {
            p.handle_timeout(p.poll_timeout().unwrap(), &mut Out::new(false));
        }
        assert!(matches!(p.state, State::Candidate(_)) && p.ballot() > before);
    }

    #[test]
    fn a_leader_that_a_change_removes_leads_the_slots_before_it_then_hands_over() {
        let mut p = leader(Tunables { max_in_flight_slots: 8, ..Tunables::default() });
        let mut history = ConfigHistory::new(&config(), 8);
        let without_1 = Configuration { proposers: vec![2, 20], ..change(1, config().acceptor_groups) };
        assert!(history.on_chosen(0, &Change { config: without_1, from_slot: 3, ballot: Ballot::ZERO }));
        // The leader proposed slot 0, which chose the change (another leader's, say): it fills
        // slots 1 and 2 (the old configuration's) with no-ops, and proposes nothing from slot 3
        // on, where it is not a proposer.
        let batch_msg = Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: batch(b"0") };
        p.handle_message(1, 12, batch_msg, &mut Out::new(false));
        let mut out = Out::new(false);
        p.handle_message(1, 10, executed_with(1, &history), &mut out);
        assert_eq!(proposals(&out), vec![(1, Value::Noop), (2, Value::Noop)]);
        let mut out = Out::new(false);
        let batch_msg = Msg::ClientBatch { origin: 12, forwarded: false, attempt: 0, batch: batch(b"x") };
        p.handle_message(2, 12, batch_msg, &mut out);
        assert!(proposals(&out).is_empty(), "slot 3 belongs to the next configuration's leader");
        assert!(p.is_leader(), "slots 1 and 2 are not executed yet");
        // Every slot it led is executed: it hands over to the first proposer of the new
        // configuration, which runs at once.
        let mut out = Out::new(false);
        p.handle_message(3, 10, executed_with(3, &history), &mut out);
        assert!(!p.is_leader());
        assert!(out.msgs.contains(&(2, Msg::LeadNow)), "{:?}", out.msgs);
        // ...and tells the acceptors that it leads no more, so that they answer its successor now.
        for acceptor in [3, 4, 5, 6, 7, 8] {
            assert!(out.msgs.contains(&(acceptor, Msg::Abdicate { ballot: p.ballot() })), "{:?}", out.msgs);
        }
        let mut follower = Proposer::new(2, config(), Tunables::default(), 9, 0);
        follower.handle_message(0, 10, executed_with(3, &history), &mut Out::new(false));
        let mut out = Out::new(false);
        follower.handle_message(4, 1, Msg::LeadNow, &mut out);
        assert!(out.msgs.iter().any(|(_, m)| matches!(m, Msg::Phase1a { .. })), "{:?}", out.msgs);
    }

    #[test]
    fn a_leader_whose_history_a_replica_contradicts_steps_down() {
        let (mut p, nonce, _, found) = candidate_finding_a_change();
        for (a, entries) in
            [(3, vec![found]), (4, vec![]), (6, vec![]), (7, vec![]), (20, vec![]), (21, vec![])]
        {
            promise(&mut p, a, nonce, entries);
        }
        assert!(p.is_leader());
        let unchanged = ConfigHistory::new(&config(), 4);
        p.handle_message(1, 10, executed_with(1, &unchanged), &mut Out::new(false));
        assert!(!p.is_leader());
    }

    #[test]
    fn a_change_is_refused_with_the_rule_it_breaks_or_proposed_filled_up_to_and_answered() {
        let tunables = Tunables { max_in_flight_slots: 4, ..Tunables::default() };
        let mut follower = Proposer::new(2, config(), tunables.clone(), 7, 0);
        let ask = |p: &mut Proposer, c: Configuration| {
            let mut out = Out::new(false);
            p.handle_message(0, 1_000, Msg::Reconfigure(c), &mut out);
            out.msgs
        };
        assert_eq!(
            ask(&mut follower, change(1, vec![vec![3, 4, 5]])),
            vec![(1_000, Msg::NotLeader { leader_hint: None })]
        );
        let mut p = leader(tunables);
        let refusal = |msgs: Vec<(NodeId, Msg)>| match &msgs[..] {
            [(1_000, Msg::ReconfigureRefused { reason, .. })] => reason.clone(),
            other => panic!("{other:?}"),
        };
        assert!(refusal(ask(&mut p, change(2, vec![vec![3, 4, 5]]))).contains("epoch 0 is the newest now"));
        assert!(refusal(ask(&mut p, change(1, vec![vec![3, 4]]))).contains("need exactly 3"));
        assert!(refusal(ask(&mut p, change(1, vec![vec![3, 4, 9]]))).contains("node 9 is another role's"));
        assert!(refusal(ask(&mut p, change(1, vec![vec![3, 4, 20]]))).contains("acceptor 20 has not joined"));
        assert!(refusal(ask(&mut p, change(1, config().acceptor_groups))).contains("same acceptor groups"));
        let one_group = change(1, vec![vec![3, 4, 5]]);
        let out = ask(&mut p, one_group.clone());
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0].1, Msg::Propose { slot: 0, value: Value::Reconfig(_), .. }));
        assert!(refusal(ask(&mut p, change(1, vec![vec![6, 7, 8]]))).contains("under way"));
        // Chosen and executed in slot 0: in force from slot 4. The leader fills slots 1..=3 with
        // no-ops rather than wait for load, then answers.
        let mut history = ConfigHistory::new(&config(), 4);
        history.on_chosen(0, &Change { config: one_group.clone(), from_slot: 4, ballot: Ballot::ZERO });
        let mut out = Out::new(false);
        p.handle_message(4_200, 10, executed_with(1, &history), &mut out);
        assert_eq!(proposals(&out), vec![(1, Value::Noop), (2, Value::Noop), (3, Value::Noop)]);
        let in_force = Msg::Reconfigured { epoch: 1, from_slot: 4, leader_us: 4_200 };
        assert_eq!(out.msgs.last().unwrap(), &(1_000, in_force), "asked at 0, in force at 4,200 us");
        // Asked again (the answer was lost): answered again, at once.
        let again = Msg::Reconfigured { epoch: 1, from_slot: 4, leader_us: 0 };
        assert_eq!(ask(&mut p, one_group), vec![(1_000, again)]);
        // Another operator's change read against epoch 0, asked after this one came first: told so.
        let late = refusal(ask(&mut p, change(1, vec![vec![6, 7, 8]])));
        assert!(late.contains("read against epoch 0, but epoch 1 is the newest now"), "{late}");
    }

    #[test]
    fn a_page_that_arrives_twice_is_followed_once_and_a_failed_election_waits_longer() {
        // Sim seeds 37 and 189 (with changes then in force α slots on, filled with no-ops): a
        // candidate read a log of a thousand no-ops in tiny pages; each resend of Phase1a started
        // another pass over the pages, and two candidates preempted each other for ever.
        let tunables = Tunables { phase1b_page_bytes: 100, ..Tunables::default() };
        let (mut p, nonce) = candidate(tunables.clone());
        let page = |more_from| {
            Msg::Phase1b(Phase1bReply {
                ballot: b(1, 1),
                nonce,
                trimmed_below: 0,
                accepted: vec![],
                more_from,
            })
        };
        let mut asked = Vec::new();
        for _ in 0..2 {
            let mut out = Out::new(false);
            p.handle_message(0, 3, page(Some(5)), &mut out);
            asked.extend(out.msgs);
        }
        assert_eq!(asked, vec![(3, Msg::Phase1a { ballot: b(1, 1), nonce, from_slot: 5 })], "one pass");
        // The resend asks from where the report stands, not from the start.
        let mut out = Out::new(false);
        let at = p.poll_timeout().unwrap();
        p.handle_timeout(at, &mut out);
        assert!(
            out.msgs.contains(&(3, Msg::Phase1a { ballot: b(1, 1), nonce, from_slot: 5 })),
            "{:?}",
            out.msgs
        );
        // Preempted: the next election waits at least twice the timeout.
        p.handle_message(at, 9, Msg::Preempted { promised: b(2, 2) }, &mut Out::new(false));
        assert!(!p.is_leader());
        let next = p.poll_timeout().unwrap();
        assert!(next >= at + 2 * tunables.election_timeout_us, "{next} < {at} + 2 x timeout");
    }
}
