//! The closed-loop load generator: one node hosting many protocol [`Client`]s (each with one request
//! outstanding), a KV (or opaque, for `noop`) workload, and latency recorded in an HDR histogram.
//! It is a role like any other, so the runtime hosts it the same way; it makes no protocol decision
//! (retries and leader hints are the protocol `Client`'s).

use crate::protocol::client::Client;
use crate::protocol::messages::{chunk_by_bytes, client_id, MAX_AGGREGATE_BYTES};
use crate::protocol::state_machine::kv::{KvOp, KvResult};
use crate::protocol::state_machine::StateMachineKind;
use crate::protocol::{ClusterConfig, Command, Event, Msg, NodeId, Out, Role, RoleKind, Time, Tunables};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How often the pool looks for clients whose retry timer is due.
const TICK_US: Time = 10_000;
/// Distinct keys the workload writes to.
const KEYS: u64 = 100_000;
/// Partitions the keys are spread over.
const PARTITIONS: u64 = 256;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Bytes per value.
    pub value_size: usize,
    /// Which state machine the cluster runs (decides the operation encoding).
    pub state_machine: StateMachineKind,
    /// Write distinct keys, remember every acknowledged write, and once stopped read each one back
    /// and compare (kv only). Proves that no acknowledged write was lost.
    pub verify: bool,
}

/// Counters shared by every pool of a process (across cores), read by the progress line.
#[derive(Debug, Default)]
pub struct LoadControl {
    /// Set to stop issuing new requests.
    pub stop: AtomicBool,
    /// Set while latencies and completions count toward the report.
    pub measuring: AtomicBool,
    /// Requests completed since start.
    pub completed: AtomicU64,
    /// Requests completed while measuring.
    pub completed_measured: AtomicU64,
    /// Requests resent after a timeout.
    pub retries: AtomicU64,
    /// Verify mode: acknowledged writes read back with the value written.
    pub verified: AtomicU64,
    /// Verify mode: acknowledged writes read back missing or with another value.
    pub lost: AtomicU64,
    /// Verify mode: clients that have read back all their acknowledged writes.
    pub verify_done: AtomicU64,
}

/// A new empty latency histogram (microseconds, 1 µs to 100 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Clients one pool may host: the low 16 bits of a client id's index.
pub const MAX_CLIENTS_PER_POOL: u32 = 1 << 16;

/// Many closed-loop clients on one node.
pub struct ClientPool {
    clients: Vec<Client>,
    sent_at: Vec<Time>,
    started: bool,
    next_tick: Time,
    workload: Workload,
    values: Bytes,
    rng: ChaCha8Rng,
    control: Arc<LoadControl>,
    latencies: Rc<RefCell<Histogram<u64>>>,
    /// Verify mode, per client: acknowledged writes (seq), the op in flight, and read-back progress.
    verify: Vec<VerifyState>,
}

#[derive(Debug, Default)]
struct VerifyState {
    next_seq: u64,
    acked: Vec<u64>,
    in_flight: Option<Pending>,
    read_back: usize,
    done: bool,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Write(u64),
    Read(u64),
}

fn verify_key(client_id: u64, seq: u64) -> (Bytes, Bytes, Bytes) {
    (
        Bytes::from(format!("verify-{client_id}")),
        Bytes::copy_from_slice(&seq.to_le_bytes()),
        Bytes::from(format!("c{client_id}s{seq}")),
    )
}

impl ClientPool {
    /// `count` clients with ids `client_id(node, incarnation << 16 | i)`, starting on the first tick.
    /// A fresh `incarnation` per run keeps a restarted pool from reusing the (client id, sequence
    /// number) pairs of an earlier run, which the replicas' client tables remember.
    #[allow(clippy::too_many_arguments)] // the pool's whole configuration, passed once at start
    pub fn new(
        node: NodeId,
        incarnation: u16,
        count: u32,
        config: ClusterConfig,
        tunables: &Tunables,
        workload: Workload,
        control: Arc<LoadControl>,
        latencies: Rc<RefCell<Histogram<u64>>>,
    ) -> Self {
        assert!(count <= MAX_CLIENTS_PER_POOL, "at most {MAX_CLIENTS_PER_POOL} clients per pool");
        let prefix = u32::from(incarnation) << 16;
        let clients = (0..count)
            .map(|i| Client::new(client_id(node, prefix | i), config.clone(), tunables, i as usize))
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(node));
        // One buffer of random bytes; each value is a slice of it (no allocation per request).
        let values: Vec<u8> = (0..workload.value_size + 4096).map(|_| rng.gen()).collect();
        ClientPool {
            clients,
            sent_at: vec![0; count as usize],
            started: false,
            next_tick: 0,
            workload,
            values: Bytes::from(values),
            rng,
            control,
            latencies,
            verify: (0..count).map(|_| VerifyState::default()).collect(),
        }
    }

    fn next_op(&mut self) -> Bytes {
        let offset = self.rng.gen_range(0..4096);
        let value = self.values.slice(offset..offset + self.workload.value_size);
        match self.workload.state_machine {
            StateMachineKind::Noop => value,
            StateMachineKind::Kv => {
                let key = self.rng.gen_range(0..KEYS);
                let partition = Bytes::from(format!("p{}", key % PARTITIONS));
                KvOp::Put { partition, item: Bytes::copy_from_slice(&key.to_le_bytes()), value }.encode()
            }
        }
    }

    fn submit(&mut self, index: usize, now: Time, out: &mut Out) {
        if self.workload.verify {
            return self.submit_verified(index, now, out);
        }
        if self.control.stop.load(Ordering::Relaxed) {
            return;
        }
        let op = self.next_op();
        self.sent_at[index] = now;
        self.clients[index].submit(now, op, out).expect("a client is resubmitted only once idle");
    }

    /// Verify mode: a distinct write while running; once stopped, read back each acknowledged write.
    fn submit_verified(&mut self, index: usize, now: Time, out: &mut Out) {
        let client_id = self.clients[index].client_id();
        let state = &mut self.verify[index];
        let op = if !self.control.stop.load(Ordering::Relaxed) {
            state.next_seq += 1;
            let seq = state.next_seq;
            let (partition, item, value) = verify_key(client_id, seq);
            state.in_flight = Some(Pending::Write(seq));
            KvOp::Put { partition, item, value }
        } else if let Some(&seq) = state.acked.get(state.read_back) {
            let (partition, item, _) = verify_key(client_id, seq);
            state.in_flight = Some(Pending::Read(seq));
            KvOp::Get { partition, item }
        } else {
            if !state.done {
                state.done = true;
                self.control.verify_done.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        self.sent_at[index] = now;
        self.clients[index].submit(now, op.encode(), out).expect("a client is resubmitted only once idle");
    }

    fn check_verified(&mut self, index: usize, result: &[u8]) {
        let client_id = self.clients[index].client_id();
        let state = &mut self.verify[index];
        let result = KvResult::decode(result);
        match state.in_flight.take() {
            Some(Pending::Write(seq)) => {
                if matches!(result, Ok(KvResult::Written { .. })) {
                    state.acked.push(seq);
                }
            }
            Some(Pending::Read(seq)) => {
                state.read_back += 1;
                let (_, _, expected) = verify_key(client_id, seq);
                match result {
                    Ok(KvResult::Value { value, .. }) if value == expected => {
                        self.control.verified.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        tracing::error!(client_id, seq, "acknowledged write lost: read back {other:?}");
                        self.control.lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => {}
        }
    }

    fn tick(&mut self, now: Time, out: &mut Out) {
        self.next_tick = now + TICK_US;
        if !self.started {
            self.started = true;
            for index in 0..self.clients.len() {
                self.submit(index, now, out);
            }
            return;
        }
        for index in 0..self.clients.len() {
            if self.clients[index].poll_timeout().is_some_and(|at| at <= now) {
                self.control.retries.fetch_add(1, Ordering::Relaxed);
                self.clients[index].handle_timeout(now, out);
            }
        }
    }

    /// Handles the completions a client call just recorded, and starts each client's next request.
    fn after_client_call(&mut self, index: usize, events_before: usize, now: Time, out: &mut Out) {
        // Only verify mode reads the result: elsewhere, cloning it per command would cost a
        // reference-count promotion on the hot path for nothing.
        let Some(at) = out.events[events_before..].iter().position(|e| matches!(e, Event::Completed { .. }))
        else {
            return;
        };
        if self.workload.verify {
            if let Event::Completed { result, .. } = &out.events[events_before + at] {
                let result = result.clone();
                self.check_verified(index, &result);
            }
        }
        self.control.completed.fetch_add(1, Ordering::Relaxed);
        if self.control.measuring.load(Ordering::Relaxed) {
            self.control.completed_measured.fetch_add(1, Ordering::Relaxed);
            let latency = now.saturating_sub(self.sent_at[index]).max(1);
            let _ = self.latencies.borrow_mut().record(latency);
        }
        self.submit(index, now, out);
    }
}

impl Role for ClientPool {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        let first_new = out.msgs.len();
        match msg {
            Msg::ClientReplies(replies) => {
                for reply in replies {
                    let index = (reply.client_id & 0xffff) as usize;
                    if index >= self.clients.len() {
                        out.dropped("client pool: reply for an unknown client");
                        continue;
                    }
                    let before = out.events.len();
                    self.clients[index].handle_reply(reply, out);
                    self.after_client_call(index, before, now, out);
                }
            }
            // A refusal names no client: every client hears the hint.
            Msg::NotLeader { .. } => {
                for client in &mut self.clients {
                    client.handle_message(now, from, msg.clone(), out);
                }
            }
            // Which batchers are in service: every client sends to them from now on.
            Msg::Membership(view) => {
                for client in &mut self.clients {
                    client.on_view(&view);
                }
            }
            _ => out.dropped("client pool: unexpected message"),
        }
        merge_requests(out, first_new);
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if now < self.next_tick {
            return;
        }
        let first_new = out.msgs.len();
        self.tick(now, out);
        merge_requests(out, first_new);
    }

    fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_tick)
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Client
    }
}

/// The requests the pool's clients queued since `first_new` leave as one message per destination,
/// so a batcher handles one frame per turn of this node instead of one per command.
fn merge_requests(out: &mut Out, first_new: usize) {
    let mut merged: Vec<(NodeId, Vec<Command>)> = Vec::new();
    let mut others = Vec::new();
    for (to, msg) in out.msgs.drain(first_new..) {
        match msg {
            Msg::ClientRequests(commands) => match merged.iter_mut().find(|(n, _)| *n == to) {
                Some((_, all)) => all.extend(commands),
                None => merged.push((to, commands)),
            },
            other => others.push((to, other)),
        }
    }
    out.msgs.extend(others);
    for (to, commands) in merged {
        for commands in chunk_by_bytes(commands, |c| c.op.len() + 32, MAX_AGGREGATE_BYTES) {
            out.msgs.push((to, Msg::ClientRequests(commands)));
        }
    }
}
