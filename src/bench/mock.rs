//! The mocks `bench` puts around a role, and the echo that replaces the role for the wire ceiling.
//!
//! All mocks of a run live on one executor and share one [`World`]: the source keeps a bounded
//! number of messages in flight into the role (so the figure measures the role, not a queue), stamps
//! each with its send time, and whichever mock receives the role's output records the time through
//! the role and credits the window. Mocks do the least work that keeps the role's protocol honest
//! (acceptor mocks answer, replica mocks report watermarks); their own cost is measured and reported.

use crate::protocol::configuration::ConfigHistory;
use crate::protocol::messages::{
    client_id, encode_batch, with_archived, ClientReply, Command, CommandBatch, Msg, Phase1bReply, Value,
};
use crate::protocol::state_machine::kv::KvOp;
use crate::protocol::{Ballot, ClusterConfig, NodeId, Out, Role, RoleKind, Time};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Send times are kept in a ring indexed by message number: larger than any window.
const RING: usize = 1 << 16;
/// The source refills its window this often when the role's output reaches another mock.
const POLL_US: Time = 100;
/// The client node whose replies the unbatcher bench carries.
pub const CLIENT_NODE: NodeId = 1000;
/// The ballot mocks propose with.
const BALLOT: Ballot = Ballot { round: 1, proposer: 1 };

/// State shared by every mock of one run.
pub struct World {
    /// The role under test.
    pub role: RoleKind,
    /// Commands per batch.
    pub batch_size: usize,
    /// Messages in flight into the role at most.
    pub window: u64,
    /// Messages sent into the role.
    pub sent: u64,
    /// Messages that came out of the role (observed by a mock).
    pub done: u64,
    /// Commands in those messages.
    pub cmds_done: u64,
    /// Wire bytes sent into the role.
    pub bytes_sent: u64,
    /// Time through the role, recorded while `measuring`.
    pub latencies: Histogram<u64>,
    sent_at: Vec<Time>,
    /// Highest slot the proposer bench's proxy mock saw (for the replica mock's watermark).
    proposed_high: Option<u64>,
    /// The configurations the replica mock reports with its watermark: the cluster file's.
    configs: ConfigHistory,
    /// Set by the runner for the measurement window.
    pub measuring: Arc<AtomicBool>,
    /// One encoded KV put of the run's value size.
    op: Bytes,
    /// A batch of `batch_size` such puts.
    batch: Bytes,
    /// Frame bytes of one input message (measured by encoding one).
    input_frame_bytes: u64,
}

impl World {
    /// A world for benchmarking `role`.
    pub fn new(
        role: RoleKind,
        batch_size: usize,
        value_size: usize,
        window: u64,
        measuring: Arc<AtomicBool>,
        configs: ConfigHistory,
    ) -> Self {
        let op = KvOp::Put {
            partition: Bytes::from_static(b"bench"),
            item: Bytes::from_static(b"item0000"),
            value: Bytes::from(vec![7u8; value_size]),
        }
        .encode();
        let batch = encode_batch(
            (0..batch_size as u64)
                .map(|i| Command { client_id: client_id(CLIENT_NODE, i as u32), seq: 1, op: op.clone() })
                .collect(),
        );
        let mut world = World {
            role,
            batch_size,
            window,
            sent: 0,
            done: 0,
            cmds_done: 0,
            bytes_sent: 0,
            latencies: crate::runtime::load::new_histogram(),
            sent_at: vec![0; RING],
            proposed_high: None,
            configs,
            measuring,
            op,
            batch,
            input_frame_bytes: 0,
        };
        let sample = world.input(0, 0);
        world.input_frame_bytes =
            crate::wire::encode_frame(&sample).map_or(0, |segs| segs.iter().map(|s| s.len() as u64).sum());
        world
    }

    /// The `n`th message the source sends into the role.
    fn input(&self, n: u64, source: NodeId) -> Msg {
        match self.role {
            RoleKind::Batcher => Msg::ClientRequests(vec![Command {
                client_id: client_id(CLIENT_NODE, (n % 1024) as u32),
                seq: n,
                op: self.op.clone(),
            }]),
            RoleKind::Proposer => {
                Msg::ClientBatch { origin: source, forwarded: false, attempt: 0, batch: self.batch.clone() }
            }
            RoleKind::ProxyLeader => Msg::Propose {
                ballot: BALLOT,
                slot: n,
                value: Value::Batch(self.batch.clone()),
                group: self.configs.group_of(n).to_vec(),
            },
            RoleKind::Acceptor => {
                Msg::Phase2a { ballot: BALLOT, slot: n, value: Value::Batch(self.batch.clone()) }
            }
            // Every slot carries the same clients with the next sequence number, so the replica
            // applies every command (a repeated number would be answered from its client table).
            RoleKind::Replica => Msg::Chosen {
                slot: n,
                value: Value::Batch(encode_batch(
                    (0..self.batch_size as u32)
                        .map(|i| Command {
                            client_id: client_id(CLIENT_NODE, i),
                            seq: n + 1,
                            op: self.op.clone(),
                        })
                        .collect(),
                )),
            },
            RoleKind::Unbatcher => Msg::ReplyBatch {
                replies: (0..self.batch_size as u32)
                    .map(|i| ClientReply {
                        client_id: client_id(CLIENT_NODE, i),
                        seq: n,
                        result: Bytes::from_static(b"ok"),
                    })
                    .collect(),
            },
            RoleKind::Client | RoleKind::Gateway => {
                unreachable!("clients and gateways are not benchmarked here")
            }
        }
    }

    fn record(&mut self, n: u64, now: Time, cmds: u64) {
        self.done += 1;
        self.cmds_done += cmds;
        if self.measuring.load(Ordering::Relaxed) {
            let _ = self.latencies.record(now.saturating_sub(self.sent_at[n as usize % RING]).max(1));
        }
    }
}

/// What a mock node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Sends the role its input, keeping the window full.
    Source,
    /// An acceptor that promises and accepts everything (for the proposer and proxy-leader benches).
    Acceptor,
    /// Receives the role's output and records it.
    Observer,
    /// A replica that reports the proposer bench's watermark every poll (100 us), so the leader's
    /// window of in-flight slots keeps moving and the figure measures the leader, not the reports.
    Watermark,
    /// Accepts whatever comes and does nothing.
    Sink,
}

/// One mock node.
pub struct MockNode {
    id: NodeId,
    part: Part,
    target: NodeId,
    world: Arc<Mutex<World>>,
    next_tick: Option<Time>,
    /// The proposer bench's source waits for the leader's first heartbeat.
    leader_known: bool,
    /// The acceptor bench trims the acceptor's log as it goes.
    trimmed: u64,
    /// Standalone (`mock-upstream`): no observer shares this process to credit the window, so the
    /// source sends open-loop at this many messages per second instead.
    rate: Option<u64>,
    rate_started: Option<Time>,
}

impl MockNode {
    /// A mock playing `part` as node `id`; `target` is the node under test.
    pub fn new(id: NodeId, part: Part, target: NodeId, world: Arc<Mutex<World>>) -> Self {
        let next_tick = matches!(part, Part::Source | Part::Watermark).then_some(0);
        MockNode {
            id,
            part,
            target,
            world,
            next_tick,
            leader_known: false,
            trimmed: 0,
            rate: None,
            rate_started: None,
        }
    }

    /// A standalone source that sends `per_second` messages open-loop (see [`MockNode::rate`]).
    pub fn open_loop(mut self, per_second: u64) -> Self {
        self.rate = Some(per_second.max(1));
        self
    }

    fn fill_window(&mut self, now: Time, out: &mut Out) {
        let role = self.world.lock().expect("not poisoned").role;
        if role == RoleKind::Proposer && !self.leader_known {
            return;
        }
        let mut w = self.world.lock().expect("not poisoned");
        // Open loop: what the rate allows by now, whatever came back.
        let allowed = match self.rate {
            Some(rate) => {
                let started = *self.rate_started.get_or_insert(now);
                (now - started) * rate / 1_000_000 + 1
            }
            None => u64::MAX,
        };
        while w.sent < allowed && (self.rate.is_some() || w.sent - w.done.min(w.sent) < w.window) {
            let n = w.sent;
            let msg = w.input(n, self.id);
            w.sent_at[n as usize % RING] = now;
            w.sent += 1;
            w.bytes_sent += w.input_frame_bytes;
            out.send(self.target, msg);
        }
        // Keep the acceptor's log bounded: every slot well below the window is answered.
        if role == RoleKind::Acceptor && w.done > self.trimmed + 4096 {
            self.trimmed = w.done.saturating_sub(w.window);
            out.send(self.target, Msg::Trim { below: self.trimmed });
        }
    }
}

fn first_seq(batch: &[u8]) -> (u64, u64) {
    with_archived::<CommandBatch, _>(batch, |b| {
        (b.commands.first().map_or(0, |c| c.seq.to_native()), b.commands.len() as u64)
    })
    .unwrap_or((0, 0))
}

impl Role for MockNode {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        let batch_size = self.world.lock().expect("not poisoned").batch_size as u64;
        match (self.part, msg) {
            // The batcher bench's source is the proposer the batcher sends to.
            (Part::Source, Msg::ClientBatch { batch, .. }) => {
                let (seq, count) = first_seq(&batch);
                let mut w = self.world.lock().expect("not poisoned");
                w.record(seq, now, count);
                w.done += count.saturating_sub(1); // the batcher's unit is one request: credit every command
                drop(w);
                self.fill_window(now, out);
            }
            (Part::Source, Msg::Phase2b { slot, .. }) => {
                self.world.lock().expect("not poisoned").record(slot, now, batch_size);
                self.fill_window(now, out);
            }
            (Part::Source, Msg::Heartbeat { .. }) => {
                self.leader_known = true;
                self.fill_window(now, out);
            }
            (Part::Acceptor, Msg::Phase1a { ballot, nonce, .. }) => {
                let reply =
                    Phase1bReply { ballot, nonce, trimmed_below: 0, accepted: vec![], more_from: None };
                out.send(from, Msg::Phase1b(reply));
            }
            (Part::Acceptor, Msg::Phase2a { ballot, slot, .. }) => {
                out.send(from, Msg::Phase2b { ballot, slot })
            }
            (Part::Observer, Msg::Propose { slot, .. }) => {
                let mut w = self.world.lock().expect("not poisoned");
                let n = w.done;
                w.record(n, now, batch_size);
                w.proposed_high = Some(w.proposed_high.map_or(slot, |h| h.max(slot)));
            }
            (Part::Observer, Msg::Chosen { slot, .. }) => {
                self.world.lock().expect("not poisoned").record(slot, now, batch_size)
            }
            (Part::Observer, Msg::ReplyBatch { replies }) => {
                let slot = replies.first().map_or(0, |r| r.seq.saturating_sub(1));
                self.world.lock().expect("not poisoned").record(slot, now, replies.len() as u64);
            }
            (Part::Observer, Msg::ClientReplies(replies)) => {
                let n = replies.first().map_or(0, |r| r.seq);
                self.world.lock().expect("not poisoned").record(n, now, replies.len() as u64);
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if self.next_tick.is_none_or(|t| now < t) {
            return;
        }
        match self.part {
            Part::Source => self.fill_window(now, out),
            Part::Watermark => {
                // From the start (at 0): a proposer runs for leader only once a replica reported.
                let w = self.world.lock().expect("not poisoned");
                let watermark = w.proposed_high.map_or(0, |high| high + 1);
                out.send(self.target, Msg::Executed { watermark, configs: w.configs.clone() });
            }
            _ => {}
        }
        self.next_tick = Some(now + POLL_US);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.next_tick
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Client
    }
}

/// The wire ceiling's stand-in for the role: the same frames out for the same frames in, with no
/// protocol logic (no state beyond what routing the frames needs).
pub struct Echo {
    role: RoleKind,
    config: ClusterConfig,
    world: Arc<Mutex<World>>,
    next_slot: u64,
    pending_cmds: usize,
    /// Proxy-leader echo: votes per slot, by slot modulo the ring.
    votes: Vec<(u64, u8, Option<Value>)>,
    announced: bool,
}

impl Echo {
    /// An echo standing in for `role` in a cluster shaped by `config`.
    pub fn new(role: RoleKind, config: ClusterConfig, world: Arc<Mutex<World>>) -> Self {
        Echo {
            role,
            config,
            world,
            next_slot: 0,
            pending_cmds: 0,
            votes: vec![(u64::MAX, 0, None); RING],
            announced: false,
        }
    }
}

impl Role for Echo {
    fn handle_message(&mut self, _now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        match (self.role, msg) {
            (RoleKind::Batcher, Msg::ClientRequests(commands)) => {
                self.pending_cmds += commands.len();
                let w = self.world.lock().expect("not poisoned");
                while self.pending_cmds >= w.batch_size {
                    self.pending_cmds -= w.batch_size;
                    let batch = w.batch.clone();
                    out.send(
                        self.config.proposers[0],
                        Msg::ClientBatch { origin: 0, forwarded: false, attempt: 0, batch },
                    );
                }
            }
            (RoleKind::Proposer, Msg::ClientBatch { batch, .. }) => {
                let slot = self.next_slot;
                self.next_slot += 1;
                let group = self.config.acceptor_groups[0].clone();
                out.send(
                    self.config.proxy_leaders[0],
                    Msg::Propose { ballot: BALLOT, slot, value: Value::Batch(batch), group },
                );
            }
            (RoleKind::ProxyLeader, Msg::Propose { ballot, slot, value, group }) => {
                self.votes[slot as usize % RING] = (slot, 0, Some(value.clone()));
                for &a in &group {
                    out.send(a, Msg::Phase2a { ballot, slot, value: value.clone() });
                }
            }
            (RoleKind::ProxyLeader, Msg::Phase2b { slot, .. }) => {
                let entry = &mut self.votes[slot as usize % RING];
                if entry.0 == slot {
                    entry.1 += 1;
                    if entry.1 == 2 {
                        let value = entry.2.take().unwrap_or(Value::Noop);
                        for &r in &self.config.replicas {
                            out.send(r, Msg::Chosen { slot, value: value.clone() });
                        }
                    }
                }
            }
            (RoleKind::Acceptor, Msg::Phase2a { ballot, slot, .. }) => {
                out.send(from, Msg::Phase2b { ballot, slot })
            }
            (RoleKind::Replica, Msg::Chosen { slot, .. }) => {
                let w = self.world.lock().expect("not poisoned");
                let replies = (0..w.batch_size as u32)
                    .map(|i| ClientReply {
                        client_id: client_id(CLIENT_NODE, i),
                        seq: slot + 1,
                        result: Bytes::from_static(b"ok"),
                    })
                    .collect();
                out.send(self.config.unbatchers[0], Msg::ReplyBatch { replies });
            }
            (RoleKind::Unbatcher, Msg::ReplyBatch { replies }) => {
                out.send(CLIENT_NODE, Msg::ClientReplies(replies))
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _now: Time, out: &mut Out) {
        // The proposer bench's source waits for a leader's heartbeat.
        if !self.announced {
            self.announced = true;
            for &b in &self.config.batchers {
                out.send(b, Msg::Heartbeat { ballot: BALLOT });
            }
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        (!self.announced && self.role == RoleKind::Proposer).then_some(0)
    }

    fn kind(&self) -> RoleKind {
        self.role
    }
}
