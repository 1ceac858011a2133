//! Replica: executes chosen batches strictly in slot order on the state machine, exactly once per
//! (client id, sequence number), and sends each slot's replies to an unbatcher. Reports its executed
//! watermark to proposers (who trim and re-propose) and to other replicas (who teach a lagging one).
//!
//! Durable state: every executed slot's value is queued as a [`Record::Executed`], and every
//! `replica_snapshot_interval_slots` slots the whole state (state machine and client table) as a
//! [`Record::Snapshot`]. The watermark report waits for those records (`Out::send_after_persist`), so
//! no one trims what this replica could not rebuild after a crash: a restart loads the snapshot and
//! replays the executed values after it ([`Replica::recover`]), then catches up from its peers.
//!
//! Must never: execute a slot before every lower slot; apply a command twice; let a malformed batch
//! stop execution (every replica reads the same bytes, so treating it as empty is deterministic);
//! report a watermark its disk could not give back.

use super::config::{ClusterConfig, Tunables};
use super::durable::{Record, Recovered, Storage};
use super::membership::View;
use super::messages::{
    chunk_by_bytes, with_archived, ClientReply, CommandBatch, Msg, Value, MAX_AGGREGATE_BYTES,
};
use super::state_machine::{SnapshotError, SnapshotReader, StateMachine};
use super::timers::Timers;
use super::{Event, NodeId, Out, Role, RoleKind, Slot, Time};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

/// Chosen slots a replica buffers above its watermark; beyond it, they are dropped and re-learned.
pub const MAX_CHOSEN_BUFFER: usize = 200_000;
/// Room reserved per command in a batch's results buffer: a write's result fits.
const TYPICAL_RESULT_BYTES: usize = 16;
/// Slots one catch-up answer carries at most.
pub const MAX_CATCHUP_SLOTS: u64 = 1_000;
/// Report periods without progress, with a peer ahead, after which a replica says it is stalled.
pub const STALLED_AFTER_REPORTS: u32 = 100;

/// A client's last executed command and the reply to it.
struct ClientEntry {
    seq: u64,
    reply: Bytes,
}

#[repr(usize)]
enum Timer {
    Report,
}

/// One replica.
pub struct Replica {
    id: NodeId,
    index: usize,
    config: ClusterConfig,
    report_interval_us: Time,
    state_machine: Box<dyn StateMachine>,
    /// Every slot below this is executed.
    executed: Slot,
    /// Chosen values above the watermark, waiting for the slots below them.
    chosen: BTreeMap<Slot, Value>,
    /// Executed values, kept until every replica has executed them, to teach a lagging peer.
    log: BTreeMap<Slot, Value>,
    /// Per client: its last executed sequence number and the reply to it. A hash map: it is probed
    /// once per command; the checkers' digest and snapshot sort it.
    client_table: FxHashMap<u64, ClientEntry>,
    /// What other replicas last said they executed.
    peer_watermarks: BTreeMap<NodeId, Slot>,
    /// The stateless nodes, as views from the proposers say.
    view: View,
    /// The unbatchers in service in `view`, by id: replies go to them.
    unbatchers: Vec<NodeId>,
    executed_at_last_report: Slot,
    timers: Timers<1>,
    /// Durable (records queued, the watermark report held for them) or in memory (benchmarks).
    storage: Storage,
    /// A snapshot is taken every this many slots (durable only).
    snapshot_interval: Slot,
    /// The slot of the newest snapshot queued: a restart replays from here.
    snapshot_slot: Slot,
    /// Records of slots below this were declared unneeded (`Record::Trim`).
    persisted_trim: Slot,
    /// Report periods in a row without progress while a peer was ahead.
    stuck_reports: u32,
}

impl Replica {
    /// A replica with an empty log; `id` must be one of `config.replicas`.
    pub fn new(
        id: NodeId,
        config: ClusterConfig,
        tunables: &Tunables,
        state_machine: Box<dyn StateMachine>,
        now: Time,
    ) -> Self {
        let index = config
            .replicas
            .iter()
            .position(|&r| r == id)
            .unwrap_or_else(|| panic!("node {id} is not a replica"));
        let mut timers = Timers::default();
        timers.set(Timer::Report as usize, now + tunables.replica_report_interval_us);
        let view = View::from_config(&config);
        let unbatchers = config.unbatchers.clone();
        Replica {
            id,
            index,
            config,
            report_interval_us: tunables.replica_report_interval_us,
            state_machine,
            executed: 0,
            chosen: BTreeMap::new(),
            log: BTreeMap::new(),
            client_table: FxHashMap::default(),
            peer_watermarks: BTreeMap::new(),
            view,
            unbatchers,
            executed_at_last_report: 0,
            timers,
            storage: Storage::Durable,
            snapshot_interval: tunables.replica_snapshot_interval_slots,
            snapshot_slot: 0,
            persisted_trim: 0,
            stuck_reports: 0,
        }
    }

    /// The replica its disk describes: the snapshot's state, then every executed value after it
    /// replayed in order (replies are not sent again: a client still waiting retries and is
    /// answered from the client table). Values below the snapshot are kept to teach lagging peers.
    pub fn recover(
        id: NodeId,
        config: ClusterConfig,
        tunables: &Tunables,
        state_machine: Box<dyn StateMachine>,
        storage: Storage,
        recovered: Recovered,
        now: Time,
    ) -> Result<Self, SnapshotError> {
        let mut r = Replica::new(id, config, tunables, state_machine, now);
        if let Some((slot, bytes)) = &recovered.snapshot {
            r.restore(bytes)?;
            r.executed = *slot;
            r.snapshot_slot = *slot;
            r.executed_at_last_report = *slot;
        }
        // Replayed in memory: these records are on disk already, and their replies were sent.
        r.storage = Storage::InMemory;
        let mut discard = Out::new(false);
        for record in recovered.records {
            match record {
                Record::Executed { slot, value } if slot < r.executed => {
                    if r.config.replicas.len() > 1 {
                        r.log.insert(slot, value);
                    }
                }
                Record::Executed { slot, value } => r.on_chosen(slot, value, &mut discard),
                Record::Trim { below } => {
                    r.persisted_trim = r.persisted_trim.max(below);
                    r.log = r.log.split_off(&below);
                }
                other => panic!(
                    "replica {id}: an acceptor's record in its log ({other:?}): another node's data dir?"
                ),
            }
            discard.msgs.clear();
            discard.events.clear();
        }
        r.storage = storage;
        r.check_invariants();
        Ok(r)
    }

    /// The durable image of the whole state: the state machine's snapshot, length first, then the
    /// client table (as [`Replica::snapshot`] lays it out). What a [`Record::Snapshot`] carries and
    /// [`Replica::recover`] restores; public so that `bench recovery` can write a real snapshot file.
    pub fn durable_snapshot(&self) -> Vec<u8> {
        let state_machine = self.state_machine.snapshot();
        let mut bytes = Vec::with_capacity(8 + state_machine.len() + 32 * self.client_table.len());
        bytes.extend_from_slice(&(state_machine.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&state_machine);
        self.encode_client_table(&mut bytes);
        bytes
    }

    /// Replaces the state machine and client table with those of a durable snapshot.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut reader = SnapshotReader::new(bytes);
        self.state_machine.restore(reader.field()?)?;
        self.client_table.clear();
        while !reader.rest().is_empty() {
            let client = reader.u64()?;
            let seq = reader.u64()?;
            let reply = Bytes::copy_from_slice(reader.field()?);
            if self.client_table.insert(client, ClientEntry { seq, reply }).is_some() {
                return Err(SnapshotError("a client twice in the client table"));
            }
        }
        Ok(())
    }

    /// Queues a snapshot when one is due, and the trim point of the records it makes unneeded.
    fn maybe_snapshot(&mut self, out: &mut Out) {
        if self.storage != Storage::Durable || self.executed < self.snapshot_slot + self.snapshot_interval {
            return;
        }
        let slot = self.executed;
        out.persist(Record::Snapshot { slot, bytes: Bytes::from(self.durable_snapshot()) });
        self.snapshot_slot = slot;
        self.persist_trim(out);
    }

    /// Records below both the snapshot and the oldest slot kept to teach peers are unneeded.
    fn persist_trim(&mut self, out: &mut Out) {
        let teach_from = self.log.keys().next().copied().unwrap_or(self.executed);
        let below = self.snapshot_slot.min(teach_from);
        if self.storage == Storage::Durable && below > self.persisted_trim {
            self.persisted_trim = below;
            out.persist(Record::Trim { below });
        }
    }

    /// Every slot below this is executed.
    pub fn executed_watermark(&self) -> Slot {
        self.executed
    }

    /// Digest of the state machine and the client table. Walks the client table: for checkers.
    pub fn state_digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(8 + 24 * self.client_table.len());
        bytes.extend_from_slice(&self.state_machine.digest().to_le_bytes());
        for (client, entry) in self.clients_in_order() {
            bytes.extend_from_slice(&client.to_le_bytes());
            bytes.extend_from_slice(&entry.seq.to_le_bytes());
            bytes.extend_from_slice(&super::digest(&entry.reply).to_le_bytes());
        }
        super::digest(&bytes)
    }

    fn clients_in_order(&self) -> Vec<(u64, &ClientEntry)> {
        let mut clients: Vec<_> = self.client_table.iter().map(|(&id, entry)| (id, entry)).collect();
        clients.sort_unstable_by_key(|&(id, _)| id);
        clients
    }

    /// Canonical bytes of the whole replicated state: state machine, then client table in id order.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut bytes = self.state_machine.snapshot();
        self.encode_client_table(&mut bytes);
        bytes
    }

    fn encode_client_table(&self, bytes: &mut Vec<u8>) {
        for (client, entry) in self.clients_in_order() {
            let reply = &entry.reply;
            bytes.extend_from_slice(&client.to_le_bytes());
            bytes.extend_from_slice(&entry.seq.to_le_bytes());
            bytes.extend_from_slice(&(reply.len() as u64).to_le_bytes());
            bytes.extend_from_slice(reply);
        }
    }

    fn on_chosen(&mut self, slot: Slot, value: Value, out: &mut Out) {
        if slot < self.executed {
            return; // Already executed: a duplicate or a resend.
        }
        if let Some(existing) = self.chosen.get(&slot) {
            if *existing != value {
                out.dropped("replica: a different value announced for a chosen slot");
            }
            return;
        }
        if self.chosen.len() >= MAX_CHOSEN_BUFFER {
            out.dropped("replica: chosen buffer full");
            return;
        }
        self.chosen.insert(slot, value);
        self.execute_ready(out);
    }

    fn execute_ready(&mut self, out: &mut Out) {
        while let Some(value) = self.chosen.remove(&self.executed) {
            let slot = self.executed;
            let replies = match &value {
                Value::Noop => Vec::new(),
                Value::Batch(bytes) => self.execute_batch(slot, bytes, out),
            };
            if !replies.is_empty() && self.is_designated_replier(slot) {
                let unbatchers = &self.unbatchers;
                let unbatcher =
                    unbatchers[(slot / self.config.replicas.len() as u64) as usize % unbatchers.len()];
                for replies in chunk_by_bytes(replies, |r| r.result.len() + 32, MAX_AGGREGATE_BYTES) {
                    out.send(unbatcher, Msg::ReplyBatch { replies });
                }
            }
            if self.storage == Storage::Durable {
                out.persist(Record::Executed { slot, value: value.clone() });
            }
            self.executed += 1;
            // Digests only for checkers: a state digest walks the whole state.
            let value_digest = out.digest(|| value.digest());
            let state_digest = out.digest(|| self.state_digest());
            out.event(|| Event::Executed { slot, value_digest, state_digest });
            // Kept to teach a lagging peer; a lone replica has no peer to teach.
            if self.config.replicas.len() > 1 {
                self.log.insert(slot, value);
            }
        }
        self.maybe_snapshot(out);
    }

    /// One replica per slot answers the clients, so reply traffic does not grow with f.
    fn is_designated_replier(&self, slot: Slot) -> bool {
        slot % self.config.replicas.len() as u64 == self.index as u64
    }

    fn execute_batch(&mut self, slot: Slot, bytes: &Bytes, out: &mut Out) -> Vec<ClientReply> {
        let state_machine = &mut self.state_machine;
        let table = &mut self.client_table;
        // The batch's results are written into one buffer, and each split off as its own `Bytes`:
        // the reply and the client table share it, with no allocation per command.
        let mut results = BytesMut::new();
        let executed = with_archived::<CommandBatch, _>(bytes, |batch| {
            let mut replies = Vec::with_capacity(batch.commands.len());
            results.reserve(batch.commands.len() * TYPICAL_RESULT_BYTES);
            for command in batch.commands.iter() {
                let (client_id, seq) = (command.client_id.to_native(), command.seq.to_native());
                // One probe of the table per command: the entry is read and, if need be, replaced.
                let result = match table.entry(client_id) {
                    // A retry of the last command: answer from the table, do not apply again.
                    Entry::Occupied(last) if last.get().seq == seq => last.get().reply.clone(),
                    // Older than the last: the client has moved on and waits for nothing (or a
                    // restarted client reuses an id: counted, so that it shows).
                    Entry::Occupied(last) if last.get().seq > seq => {
                        out.dropped("replica: a command older than its client's last");
                        continue;
                    }
                    entry => {
                        state_machine.apply_into(command.op.as_slice(), &mut results);
                        let reply = results.split().freeze();
                        entry.insert_entry(ClientEntry { seq, reply: reply.clone() });
                        out.event(|| Event::Applied { client_id, seq, slot });
                        reply
                    }
                };
                replies.push(ClientReply { client_id, seq, result });
            }
            replies
        });
        executed.unwrap_or_else(|_| {
            out.dropped("replica: malformed batch executed as empty");
            Vec::new()
        })
    }

    fn on_executed(&mut self, from: NodeId, watermark: Slot, out: &mut Out) {
        if !self.config.replicas.contains(&from) || from == self.id {
            return;
        }
        let known = self.peer_watermarks.entry(from).or_insert(0);
        *known = (*known).max(watermark);
        // Keep the log only for slots some replica may still ask for.
        if self.peer_watermarks.len() + 1 == self.config.replicas.len() {
            let lowest = self.peer_watermarks.values().copied().min().unwrap_or(0).min(self.executed);
            self.log = self.log.split_off(&lowest);
            self.persist_trim(out);
        }
    }

    fn on_catch_up(&mut self, from: NodeId, from_slot: Slot, out: &mut Out) {
        if from_slot < self.executed && self.log.keys().next().is_none_or(|&first| first > from_slot) {
            out.dropped("replica: asked to teach slots it no longer keeps (the learner needs a snapshot)");
            return;
        }
        let end = from_slot.saturating_add(MAX_CATCHUP_SLOTS);
        for (&slot, value) in self.log.range(from_slot..end) {
            out.send(from, Msg::Chosen { slot, value: value.clone() });
        }
    }

    fn on_report_timer(&mut self, now: Time, out: &mut Out) {
        // Held until every executed value below the watermark is durable: proposers and acceptors
        // trim below it, so it must be a position this replica can rebuild after a crash.
        let watermark = self.executed;
        let peers = self.config.replicas.iter().filter(|&&r| r != self.id);
        for &to in self.config.proposers.iter().chain(peers) {
            self.storage.send(out, to, Msg::Executed { watermark });
        }
        // Stuck behind a peer since the last report: a Chosen was lost on its way here. Ask the
        // peer that is furthest ahead to teach us.
        if self.executed == self.executed_at_last_report {
            let ahead =
                self.peer_watermarks.iter().filter(|(_, &w)| w > self.executed).max_by_key(|(_, &w)| w);
            if let Some((&peer, &peer_executed)) = ahead {
                out.send(peer, Msg::CatchUp { from_slot: self.executed });
                self.stuck_reports += 1;
                if self.stuck_reports.is_multiple_of(STALLED_AFTER_REPORTS) {
                    let executed = self.executed;
                    out.event(|| Event::Stalled { executed, peer_executed });
                }
            }
        } else {
            self.stuck_reports = 0;
        }
        self.executed_at_last_report = self.executed;
        self.timers.set(Timer::Report as usize, now + self.report_interval_us);
    }

    fn check_invariants(&self) {
        assert!(
            self.chosen.keys().next().is_none_or(|&s| s > self.executed),
            "replica {}: slot {} is chosen and executable but not executed",
            self.id,
            self.executed
        );
        assert!(self.log.keys().next_back().is_none_or(|&s| s < self.executed));
        assert!(self.chosen.len() <= MAX_CHOSEN_BUFFER);
        assert!(self.timers.is_set(Timer::Report as usize));
    }
}

impl Role for Replica {
    fn handle_message(&mut self, _now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::Chosen { slot, value } => self.on_chosen(slot, value, out),
            Msg::Executed { watermark } => self.on_executed(from, watermark, out),
            Msg::Membership(view) if self.config.proposers.contains(&from) => {
                if self.view.merge(&view) {
                    // Two unbatchers leaving at once through different proposers can leave none in
                    // service: keep sending to the last ones known until one joins.
                    let unbatchers: Vec<NodeId> = self.view.in_service(RoleKind::Unbatcher).collect();
                    if !unbatchers.is_empty() {
                        self.unbatchers = unbatchers;
                    }
                }
                if !view.covers(&self.view) {
                    // A leader that restarted without memory publishes the configuration's view:
                    // teach it what we know, so that nodes that left stay gone.
                    out.send(from, Msg::Membership(self.view.clone()));
                }
            }
            Msg::CatchUp { from_slot } if self.config.replicas.contains(&from) => {
                self.on_catch_up(from, from_slot, out)
            }
            _ => out.dropped("replica: unexpected message"),
        }
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if self.timers.take_expired(now).count() > 0 {
            self.on_report_timer(now, out);
        }
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Replica
    }

    fn as_replica(&self) -> Option<&Replica> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{encode_batch, Command};
    use crate::protocol::state_machine::kv::KvOp;
    use crate::protocol::state_machine::{new_state_machine, StateMachineKind};

    fn replica(id: NodeId) -> Replica {
        let config = ClusterConfig::f1(1, 1, 1, 1); // replicas 7, 8; unbatcher 10
        Replica::new(id, config, &Tunables::default(), new_state_machine(StateMachineKind::Kv), 0)
    }

    fn incr(client_id: u64, seq: u64) -> Command {
        let op = KvOp::Increment { partition: "p".into(), item: "x".into(), delta: 1 }.encode();
        Command { client_id, seq, op }
    }

    fn chosen(r: &mut Replica, slot: Slot, commands: Vec<Command>) -> Out {
        let mut out = Out::new(true);
        r.handle_message(0, 6, Msg::Chosen { slot, value: Value::Batch(encode_batch(commands)) }, &mut out);
        out
    }

    fn applied(out: &Out) -> Vec<(u64, u64)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Applied { client_id, seq, .. } => Some((*client_id, *seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn executes_strictly_in_slot_order() {
        let mut r = replica(7);
        let out = chosen(&mut r, 1, vec![incr(100, 1)]);
        assert!(applied(&out).is_empty(), "slot 1 waits for slot 0");
        assert_eq!(r.executed_watermark(), 0);
        let out = chosen(&mut r, 0, vec![incr(101, 1)]);
        assert_eq!(applied(&out), vec![(101, 1), (100, 1)]);
        assert_eq!(r.executed_watermark(), 2);
    }

    #[test]
    fn a_retried_command_is_answered_from_the_client_table_not_applied_twice() {
        let mut r = replica(7);
        let first = chosen(&mut r, 0, vec![incr(100, 1)]);
        let retry = chosen(&mut r, 1, vec![incr(100, 1)]);
        assert_eq!(applied(&first), vec![(100, 1)]);
        assert!(applied(&retry).is_empty());
        let replies = |out: &Out| -> Vec<Bytes> {
            out.msgs
                .iter()
                .filter_map(|(_, m)| match m {
                    Msg::ReplyBatch { replies } => Some(replies[0].result.clone()),
                    _ => None,
                })
                .collect()
        };
        // Slot 0 is replica 7's to answer, slot 1 replica 8's: check the table via a second replica.
        let mut other = replica(8);
        chosen(&mut other, 0, vec![incr(100, 1)]);
        let retry_at_other = chosen(&mut other, 1, vec![incr(100, 1)]);
        assert_eq!(replies(&first), replies(&retry_at_other), "the retry gets the original reply");
    }

    fn reply_results(out: &Out) -> Vec<(u64, u64, Bytes)> {
        out.msgs
            .iter()
            .filter_map(|(_, m)| match m {
                Msg::ReplyBatch { replies } => Some(replies.clone()),
                _ => None,
            })
            .flatten()
            .map(|r| (r.client_id, r.seq, r.result))
            .collect()
    }

    #[test]
    fn a_retry_in_the_same_batch_is_answered_with_the_first_reply() {
        let mut r = replica(7);
        let out = chosen(&mut r, 0, vec![incr(100, 1), incr(100, 1), incr(101, 1)]);
        assert_eq!(applied(&out), vec![(100, 1), (101, 1)]);
        let replies = reply_results(&out);
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0], replies[1], "the retry gets the original reply");
        // The table kept that reply for a retry in a later batch (slot 2 is replica 7's to answer).
        chosen(&mut r, 1, vec![]);
        let later = chosen(&mut r, 2, vec![incr(100, 1)]);
        assert!(applied(&later).is_empty());
        assert_eq!(reply_results(&later), vec![replies[0].clone()]);
    }

    #[test]
    fn two_commands_of_one_client_in_a_batch_both_apply_and_the_table_keeps_the_last() {
        let mut r = replica(7);
        let out = chosen(&mut r, 0, vec![incr(100, 1), incr(100, 2)]);
        assert_eq!(applied(&out), vec![(100, 1), (100, 2)]);
        let replies = reply_results(&out);
        assert_ne!(replies[0].2, replies[1].2, "each command has its own result");
        chosen(&mut r, 1, vec![]);
        let retry = chosen(&mut r, 2, vec![incr(100, 2)]);
        assert_eq!(reply_results(&retry), vec![replies[1].clone()]);
    }

    #[test]
    fn replies_go_to_unbatchers_in_service_and_never_to_none() {
        let config = ClusterConfig::f1(1, 1, 1, 2);
        let (u0, u1, proposer) = (config.unbatchers[0], config.unbatchers[1], config.proposers[0]);
        let mut r = Replica::new(
            config.replicas[0],
            config.clone(),
            &Tunables::default(),
            new_state_machine(StateMachineKind::Kv),
            0,
        );
        let leaving = |id| {
            let mut view = View::from_config(&config);
            assert!(view.start_leaving(id));
            view
        };
        r.handle_message(0, proposer, Msg::Membership(leaving(u0)), &mut Out::new(false));
        let out = chosen(&mut r, 0, vec![incr(100, 1)]);
        assert!(out.msgs.iter().all(|(to, m)| !matches!(m, Msg::ReplyBatch { .. }) || *to == u1));
        // Through another proposer the other one left too: none is in service, so keep the last.
        r.handle_message(0, proposer, Msg::Membership(leaving(u1)), &mut Out::new(false));
        chosen(&mut r, 1, vec![]);
        let out = chosen(&mut r, 2, vec![incr(100, 2)]);
        let to: Vec<NodeId> =
            out.msgs.iter().filter(|(_, m)| matches!(m, Msg::ReplyBatch { .. })).map(|(to, _)| *to).collect();
        assert_eq!(to, vec![u1]);
    }

    #[test]
    fn a_lone_replica_keeps_no_log_for_peers_it_does_not_have() {
        let mut config = ClusterConfig::f1(1, 1, 1, 1);
        config.replicas.truncate(1);
        let mut r = Replica::new(7, config, &Tunables::default(), new_state_machine(StateMachineKind::Kv), 0);
        for slot in 0..100 {
            chosen(&mut r, slot, vec![incr(100, slot + 1)]);
        }
        assert_eq!(r.executed_watermark(), 100);
        assert!(r.log.is_empty(), "{} executed slots kept with no peer to teach", r.log.len());
    }

    #[test]
    fn replicas_fed_the_same_log_have_identical_state() {
        let (mut a, mut b) = (replica(7), replica(8));
        for slot in 0..5 {
            let commands = vec![incr(100, slot + 1), incr(101, slot + 1)];
            chosen(&mut a, slot, commands.clone());
            chosen(&mut b, slot, commands);
        }
        assert_eq!(a.state_digest(), b.state_digest());
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn a_malformed_batch_is_executed_as_empty_on_every_replica() {
        let mut r = replica(7);
        let mut out = Out::new(true);
        let garbage = Value::Batch(Bytes::from_static(&[0xff; 40]));
        r.handle_message(0, 6, Msg::Chosen { slot: 0, value: garbage }, &mut out);
        assert_eq!(r.executed_watermark(), 1);
    }

    /// What a durable replica's disk would hold after `out`: the newest snapshot and every record.
    fn keep_on_disk(disk: &mut Recovered, out: &mut Out) {
        for record in out.persist.drain(..) {
            match record {
                Record::Snapshot { slot, bytes } => disk.snapshot = Some((slot, bytes)),
                other => disk.records.push(other),
            }
        }
    }

    #[test]
    fn a_restarted_replica_is_rebuilt_from_its_snapshot_and_the_values_after_it() {
        let tunables = Tunables { replica_snapshot_interval_slots: 16, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let new_sm = || new_state_machine(StateMachineKind::Kv);
        let mut r = Replica::new(7, config.clone(), &tunables, new_sm(), 0);
        let mut disk = Recovered::default();
        for slot in 0..40 {
            let mut out = chosen(&mut r, slot, vec![incr(100 + slot % 3, slot + 1)]);
            keep_on_disk(&mut disk, &mut out);
        }
        assert_eq!(disk.snapshot.as_ref().map(|(slot, _)| *slot), Some(32), "snapshots at 16 and 32");
        let restarted =
            Replica::recover(7, config.clone(), &tunables, new_sm(), Storage::Durable, disk.clone(), 0)
                .unwrap();
        assert_eq!(restarted.executed_watermark(), 40);
        assert_eq!(restarted.snapshot(), r.snapshot(), "same state machine and client table");
        // A snapshot that is not one is refused, not trusted.
        let mut damaged = disk;
        damaged.snapshot = Some((32, Bytes::from_static(&[1, 2, 3])));
        assert!(Replica::recover(7, config, &tunables, new_sm(), Storage::Durable, damaged, 0).is_err());
    }

    #[test]
    fn a_durable_replica_reports_its_watermark_only_after_its_records() {
        let mut r = replica(7);
        chosen(&mut r, 0, vec![incr(100, 1)]);
        let mut out = Out::new(false);
        let at = r.poll_timeout().unwrap();
        r.handle_timeout(at, &mut out);
        assert!(out.msgs.iter().all(|(_, m)| !matches!(m, Msg::Executed { .. })), "{:?}", out.msgs);
        assert!(out.after_persist.iter().any(|(_, m)| matches!(m, Msg::Executed { watermark: 1 })));
    }

    #[test]
    fn a_stuck_replica_asks_a_peer_that_is_ahead_to_teach_it() {
        let (mut behind, mut ahead) = (replica(7), replica(8));
        for slot in 0..3 {
            chosen(&mut ahead, slot, vec![incr(100, slot + 1)]);
        }
        let mut out = Out::new(false);
        behind.handle_message(0, 8, Msg::Executed { watermark: 3 }, &mut out);
        let at = behind.poll_timeout().unwrap();
        behind.handle_timeout(at, &mut out);
        let catch_up = out.msgs.iter().find(|(to, m)| *to == 8 && matches!(m, Msg::CatchUp { from_slot: 0 }));
        let (_, msg) = catch_up.expect("asks the peer that is ahead").clone();
        let mut taught = Out::new(false);
        ahead.handle_message(at, 7, msg, &mut taught);
        for (_, msg) in taught.msgs {
            behind.handle_message(at, 8, msg, &mut Out::new(false));
        }
        assert_eq!(behind.executed_watermark(), 3);
        assert_eq!(behind.snapshot(), ahead.snapshot());
    }
}
