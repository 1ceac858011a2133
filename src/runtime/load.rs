//! The load generator: a KV (or opaque, for `noop`) workload for the clients of one [`ClientMux`]
//! (each with one request outstanding), latency recorded in an HDR histogram, and the verify mode's
//! read-back. It is a role like any other, so the runtime hosts it the same way.
//!
//! Closed loop by default: each client sends its next request when the last completes. Open loop
//! with `Workload::rate_per_sec`: requests arrive on a schedule (evenly spaced, checked every
//! [`OPEN_LOOP_TICK_US`]) whatever the replies do; each arrival goes to an idle client (one request
//! in flight per client, as ever), and an arrival that finds every client busy is not sent but
//! counted as refused at the client (`LoadControl::refused_at_client`). An arrival the cluster
//! refuses with `Busy` is refused too (`refused_busy`; the clients give up on it, as a gateway's
//! sessions do), not retried: retries would raise the offered load above the schedule; and the
//! refused client backs off (jittered, doubling while refused) before it takes another arrival,
//! so that arrivals meanwhile are refused here, at no cost to the cluster. And while refusals are
//! recent (`BUSY_MEMORY_US`), the node keeps no more requests in flight than it had at the last
//! one, as the gateway does. Latency is that of
//! accepted requests: from the arrival's send to its reply.
//!
//! Must never: make a protocol decision (routing, retries, leader hints and merging requests are the
//! mux's and its clients'); allocate or copy per command beyond building the operation itself.

use crate::protocol::client_mux::{self, ClientMux, Completion};
use crate::protocol::gateway::BUSY_MEMORY_US;
use crate::protocol::state_machine::kv::{KvOp, KvResult};
use crate::protocol::state_machine::StateMachineKind;
use crate::protocol::{ClusterConfig, Msg, NodeId, Out, Role, RoleKind, Time, Tunables};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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
    /// Open loop: requests per second this pool issues on a schedule (0: closed loop).
    pub rate_per_sec: u64,
}

impl Workload {
    /// Refuses a workload whose every command the cluster would refuse: a value over the store's
    /// limit fails each write, and a load report would then count failures as throughput.
    pub fn validate(&self) -> Result<(), String> {
        use crate::protocol::state_machine::kv::MAX_VALUE_BYTES;
        if self.value_size > MAX_VALUE_BYTES {
            return Err(format!(
                "--value-size {}: values are at most {MAX_VALUE_BYTES} bytes (the key-value store's limit, \
                 which the load keeps to with either state machine)",
                self.value_size
            ));
        }
        Ok(())
    }
}

/// An open-loop pool issues the arrivals due this often.
pub const OPEN_LOOP_TICK_US: Time = 1_000;

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
    /// `Busy` refusals the clients received (each is waited out and retried).
    pub busy: AtomicU64,
    /// Open loop: arrivals while measuring.
    pub offered_measured: AtomicU64,
    /// Open loop: arrivals while measuring that found every client busy (not sent).
    pub refused_at_client: AtomicU64,
    /// Open loop: arrivals while measuring refused by the cluster with `Busy` (never executed).
    pub refused_busy: AtomicU64,
    /// Verify mode: writes acknowledged (each is read back once the load stops).
    pub acknowledged: AtomicU64,
    /// Verify mode: acknowledged writes read back with the value written.
    pub verified: AtomicU64,
    /// Verify mode: acknowledged writes read back missing or with another value.
    pub lost: AtomicU64,
    /// Verify mode: clients that have read back all their acknowledged writes.
    pub verify_done: AtomicU64,
    /// With `client --timeline-ms`: completions and latencies per window of time.
    pub timeline: Option<std::sync::Mutex<Timeline>>,
}

/// Completions and their latencies per window of `window_us` (by the process's clock), while
/// measuring: what a throughput-over-time plot needs.
#[derive(Debug)]
pub struct Timeline {
    window_us: Time,
    windows: std::collections::BTreeMap<u64, Histogram<u64>>,
}

impl Timeline {
    /// An empty timeline of `window_us` windows.
    pub fn new(window_us: Time) -> Self {
        Timeline { window_us: window_us.max(1), windows: Default::default() }
    }

    /// A completion at `now` that took `latency_us`.
    pub fn record(&mut self, now: Time, latency_us: u64) {
        let window = self.windows.entry(now / self.window_us).or_insert_with(new_histogram);
        let _ = window.record(latency_us);
    }

    /// Every window from the first to the last with a completion (empty ones included), as (its
    /// start in µs by the process's clock, completions, p50 µs, p99 µs).
    pub fn windows(&self) -> Vec<(Time, u64, u64, u64)> {
        let (Some(&first), Some(&last)) = (self.windows.keys().next(), self.windows.keys().next_back())
        else {
            return Vec::new();
        };
        (first..=last)
            .map(|w| match self.windows.get(&w) {
                Some(h) => (w * self.window_us, h.len(), h.value_at_quantile(0.5), h.value_at_quantile(0.99)),
                None => (w * self.window_us, 0, 0, 0),
            })
            .collect()
    }
}

/// A new empty latency histogram (microseconds, 1 µs to 100 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Clients one pool may host: the low 16 bits of a client id's index.
pub const MAX_CLIENTS_PER_POOL: u32 = client_mux::MAX_CLIENTS;

/// Many closed-loop clients on one node: the protocol side (routing, retries, one message per
/// batcher) is the [`ClientMux`]'s; the pool decides only what each client sends next and measures.
pub struct ClientPool {
    mux: ClientMux,
    load: Load,
}

/// The load-generation half of the pool, apart from the mux so that the mux's completion callback
/// can borrow it while the mux is borrowed too.
struct Load {
    sent_at: Vec<Time>,
    started: bool,
    workload: Workload,
    values: Bytes,
    rng: ChaCha8Rng,
    control: Arc<LoadControl>,
    latencies: Rc<RefCell<Histogram<u64>>>,
    /// `autopaxos_command_latency_seconds` of this client node (warm-up included).
    exported: super::histogram::LatencyHistogram,
    /// Verify mode, per client: acknowledged writes (seq), the op in flight, and read-back progress.
    verify: Vec<VerifyState>,
    /// Open loop: idle clients, when the schedule began, arrivals issued since, the next tick.
    idle: Vec<usize>,
    /// Open loop: when the cluster last refused a request, and how many requests this node had in
    /// flight then (at most): while refusals are recent, arrivals past it are refused here.
    busy_at: Option<Time>,
    in_flight_cap: usize,
    /// Open loop: clients refused with `Busy`, backing off until the time given, earliest first.
    cooling: std::collections::BinaryHeap<std::cmp::Reverse<(Time, usize)>>,
    open_since: Time,
    arrivals: u64,
    next_tick: Time,
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
    /// `count` clients with ids `client_id(node, incarnation << 16 | i)`, starting on the first
    /// timeout. A fresh `incarnation` per run keeps a restarted pool from reusing the (client id,
    /// sequence number) pairs of an earlier run, which the replicas' client tables remember.
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
        // Open loop: a refused arrival is refused (counted), not retried: the schedule goes on.
        let mux = if workload.rate_per_sec > 0 {
            ClientMux::giving_up_on_busy(node, incarnation, count, &config, tunables)
        } else {
            ClientMux::new(node, incarnation, count, &config, tunables)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(node));
        // One buffer of random bytes; each value is a slice of it (no allocation per request).
        let values: Vec<u8> = (0..workload.value_size + 4096).map(|_| rng.gen()).collect();
        let load = Load {
            sent_at: vec![0; count as usize],
            started: false,
            workload,
            values: Bytes::from(values),
            rng,
            control,
            latencies,
            exported: super::histogram::LatencyHistogram::new(
                "autopaxos_command_latency_seconds",
                &[("role", RoleKind::Client.name()), ("node", &node.to_string())],
            ),
            verify: (0..count).map(|_| VerifyState::default()).collect(),
            idle: (0..count as usize).rev().collect(),
            cooling: Default::default(),
            busy_at: None,
            in_flight_cap: usize::MAX,
            open_since: 0,
            arrivals: 0,
            next_tick: 0,
        };
        assert!(!(workload.verify && workload.rate_per_sec > 0), "verify runs closed loop");
        ClientPool { mux, load }
    }
}

impl Load {
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

    /// What client `index` sends next, if anything.
    fn next_request(&mut self, index: usize, client_id: u64, now: Time) -> Option<Bytes> {
        let op = if self.workload.verify {
            self.next_verified(index, client_id)?
        } else if self.control.stop.load(Ordering::Relaxed) {
            return None;
        } else {
            self.next_op()
        };
        self.sent_at[index] = now;
        Some(op)
    }

    /// Verify mode: a distinct write while running; once stopped, read back each acknowledged write.
    fn next_verified(&mut self, index: usize, client_id: u64) -> Option<Bytes> {
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
            return None;
        };
        Some(op.encode())
    }

    fn check_verified(&mut self, index: usize, client_id: u64, result: &[u8]) {
        let state = &mut self.verify[index];
        let result = KvResult::decode(result);
        match state.in_flight.take() {
            Some(Pending::Write(seq)) => {
                if matches!(result, Ok(KvResult::Written { .. })) {
                    state.acked.push(seq);
                    self.control.acknowledged.fetch_add(1, Ordering::Relaxed);
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

    /// Counts and measures a completion, and says what that client sends next.
    fn on_completed(&mut self, done: Completion, now: Time) -> Option<Bytes> {
        if self.workload.verify {
            self.check_verified(done.client, done.client_id, &done.result);
        }
        self.control.completed.fetch_add(1, Ordering::Relaxed);
        self.exported.record_micros(now.saturating_sub(self.sent_at[done.client]));
        if self.control.measuring.load(Ordering::Relaxed) {
            self.control.completed_measured.fetch_add(1, Ordering::Relaxed);
            let latency = now.saturating_sub(self.sent_at[done.client]).max(1);
            let _ = self.latencies.borrow_mut().record(latency);
            if let Some(timeline) = &self.control.timeline {
                timeline.lock().expect("not poisoned").record(now, latency);
            }
        }
        if self.workload.rate_per_sec > 0 {
            self.idle.push(done.client);
            return None;
        }
        self.next_request(done.client, done.client_id, now)
    }

    /// Requests in flight (open loop): clients neither idle nor backing off.
    fn in_flight(&self) -> usize {
        self.sent_at.len() - self.idle.len() - self.cooling.len()
    }

    /// Open loop: the arrivals due by `now`, each for an idle client (as `(client, op)`); those
    /// that find none are counted and not sent.
    fn arrivals_due(&mut self, now: Time) -> Vec<(usize, Bytes)> {
        let due = u128::from(now - self.open_since) * u128::from(self.workload.rate_per_sec) / 1_000_000;
        let new = (due as u64).saturating_sub(self.arrivals);
        self.arrivals += new;
        self.next_tick = now + OPEN_LOOP_TICK_US;
        while let Some(&std::cmp::Reverse((at, index))) = self.cooling.peek() {
            if at > now {
                break;
            }
            self.cooling.pop();
            self.idle.push(index);
        }
        if self.control.stop.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let measuring = self.control.measuring.load(Ordering::Relaxed);
        if self.busy_at.is_some_and(|at| now.saturating_sub(at) >= BUSY_MEMORY_US) {
            self.busy_at = None;
            self.in_flight_cap = usize::MAX;
        }
        let mut sends = Vec::new();
        let room = self.in_flight_cap.saturating_sub(self.in_flight());
        for i in 0..new {
            let idle = if (i as usize) < room { self.idle.pop() } else { None };
            match idle {
                Some(index) => {
                    self.sent_at[index] = now;
                    sends.push((index, self.next_op()));
                }
                None if measuring => {
                    self.control.refused_at_client.fetch_add(1, Ordering::Relaxed);
                }
                None => {}
            }
        }
        if measuring {
            self.control.offered_measured.fetch_add(new, Ordering::Relaxed);
        }
        sends
    }
}

impl Role for ClientPool {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        let load = &mut self.load;
        let busy = self.mux.busy();
        self.mux.handle_message_with(now, from, msg, out, |done| load.on_completed(done, now));
        self.load.control.busy.fetch_add(self.mux.busy() - busy, Ordering::Relaxed);
        for (index, backoff_us) in self.mux.drain_refused() {
            // The client backs off (jittered, doubling while refused) before it takes an arrival.
            self.load.cooling.push(std::cmp::Reverse((now + backoff_us, index)));
            // And the node sends no more at once than the cluster just took.
            self.load.busy_at = Some(now);
            self.load.in_flight_cap = self.load.in_flight_cap.min(self.load.in_flight());
            if self.load.control.measuring.load(Ordering::Relaxed) {
                self.load.control.refused_busy.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        let open_loop = self.load.workload.rate_per_sec > 0;
        if !self.load.started {
            self.load.started = true;
            self.load.open_since = now;
            if !open_loop {
                let load = &mut self.load;
                self.mux.submit_each(now, out, |index, client_id| load.next_request(index, client_id, now));
                return;
            }
        }
        if open_loop && now >= self.load.next_tick {
            let sends = self.load.arrivals_due(now);
            self.mux.submit_many(now, out, sends);
        }
        let before = self.mux.retries();
        self.mux.handle_timeout(now, out);
        self.load.control.retries.fetch_add(self.mux.retries() - before, Ordering::Relaxed);
    }

    fn poll_timeout(&self) -> Option<Time> {
        if !self.load.started {
            return Some(0); // start at once
        }
        let tick = (self.load.workload.rate_per_sec > 0).then_some(self.load.next_tick);
        crate::protocol::membership::earliest(self.mux.poll_timeout(), tick)
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Client
    }
}
