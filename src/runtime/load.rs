//! The closed-loop load generator: one node hosting many protocol [`Client`]s (each with one request
//! outstanding), a KV (or opaque, for `noop`) workload, and latency recorded in an HDR histogram.
//! It is a role like any other, so the runtime hosts it the same way; it makes no protocol decision
//! (retries and leader hints are the protocol `Client`'s).

use crate::protocol::client::Client;
use crate::protocol::messages::client_id;
use crate::protocol::state_machine::kv::KvOp;
use crate::protocol::state_machine::StateMachineKind;
use crate::protocol::{ClusterConfig, Event, Msg, NodeId, Out, Role, RoleKind, Time, Tunables};
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
}

/// A new empty latency histogram (microseconds, 1 µs to 100 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

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
}

impl ClientPool {
    /// `count` clients with ids `client_id(node, 0..count)`, starting on the first tick.
    pub fn new(
        node: NodeId,
        count: u32,
        config: ClusterConfig,
        tunables: &Tunables,
        workload: Workload,
        control: Arc<LoadControl>,
        latencies: Rc<RefCell<Histogram<u64>>>,
    ) -> Self {
        let clients = (0..count)
            .map(|i| Client::new(client_id(node, i), config.clone(), tunables, i as usize))
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
        if self.control.stop.load(Ordering::Relaxed) {
            return;
        }
        let op = self.next_op();
        self.sent_at[index] = now;
        self.clients[index].submit(now, op, out).expect("a client is resubmitted only once idle");
    }

    /// Handles the completions a client call just recorded, and starts each client's next request.
    fn after_client_call(&mut self, index: usize, events_before: usize, now: Time, out: &mut Out) {
        let completed = out.events[events_before..].iter().any(|e| matches!(e, Event::Completed { .. }));
        if !completed {
            return;
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
        match msg {
            Msg::ClientReply(ref reply) => {
                let index = (reply.client_id & 0xffff_ffff) as usize;
                if index >= self.clients.len() {
                    out.dropped("client pool: reply for an unknown client");
                    return;
                }
                let before = out.events.len();
                self.clients[index].handle_message(now, from, msg, out);
                self.after_client_call(index, before, now, out);
            }
            // A refusal names no client: every client hears the hint.
            Msg::NotLeader { .. } => {
                for client in &mut self.clients {
                    client.handle_message(now, from, msg.clone(), out);
                }
            }
            _ => out.dropped("client pool: unexpected message"),
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if now < self.next_tick {
            return;
        }
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

    fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_tick)
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Client
    }
}
