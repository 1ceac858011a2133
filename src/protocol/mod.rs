//! The sans-IO protocol core of autopaxos: every role of Compartmentalized MultiPaxos as a plain struct.
//!
//! **This module performs no I/O.** No async, no sockets, no clock, no OS randomness, no iteration over a
//! randomly seeded hash map. Time comes in as an argument (`now`, virtual or real microseconds), randomness
//! from a seeded generator handed to a role when it is built, and every output goes into a caller-owned
//! [`Out`] that the driver drains. The runtime (real sockets) and the simulator (virtual network) are the
//! two drivers; both call the very same structs, so a bug the simulator finds is a bug of the real system.
//! `tests/no_io_in_protocol.rs` keeps this rule true. Hash maps, where used, have a fixed seed
//! (`FxHashMap`) or, where clients choose the keys (the KV store), a secret key given at birth
//! (`HashKey`); nothing depends on their iteration order.
//!
//! Every role has the same face ([`Role`]): `handle_message(now, from, msg, out)`,
//! `handle_timeout(now, out)` and `poll_timeout()`. Roles assert their invariants after every handler
//! with `assert!`: a broken invariant is a bug and must stop the node loudly.

pub mod acceptor;
pub mod ballot;
pub mod batcher;
pub mod birth;
pub mod client;
pub mod client_mux;
pub mod config;
pub mod configuration;
pub mod durable;
pub mod gateway;
pub mod membership;
pub mod messages;
pub mod proposer;
pub mod proxy_leader;
pub mod replica;
pub mod state_machine;
pub mod timers;
pub mod unbatcher;

pub use ballot::Ballot;
pub use config::{ClusterConfig, ConfigError, RoleKind, Tunables};
pub use messages::{Command, Msg, Value};

/// Microseconds since an arbitrary origin chosen by the driver (virtual in the simulator).
pub type Time = u64;
/// Identifies one node (one role on one core) in a cluster. Clients are nodes too.
pub type NodeId = u32;
/// A position in the replicated log.
pub type Slot = u64;

/// How long a stateless node that seems gone (a proposal through a proxy leader unanswered for a
/// resend timeout, a client retrying a command whose reply went through an unbatcher) is passed
/// by when there is another to use. Seeming gone is only a hint: a wrong one moves some work to
/// the others for this long, and when every one is suspected, all are used.
pub const SUSPECT_FOR_US: Time = 1_000_000;

/// The face every role shows its driver.
pub trait Role {
    /// Handles one message from `from`. Stale or unexpected input is dropped (and counted), never a panic.
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out);
    /// Called when `now` has reached the time last returned by [`Role::poll_timeout`]. Spurious calls are no-ops.
    fn handle_timeout(&mut self, now: Time, out: &mut Out);
    /// The earliest time at which the role wants [`Role::handle_timeout`] to be called.
    fn poll_timeout(&self) -> Option<Time>;
    /// Which role this is.
    fn kind(&self) -> RoleKind;
    /// The snapshot this role queued at `slot` ([`Out::save_snapshot`]) is durable, and so is
    /// every one queued before it. Called by the driver, never for a snapshot a crash lost.
    fn snapshot_saved(&mut self, _now: Time, _slot: Slot, _out: &mut Out) {}
    /// The replica, if this role is one: drivers read its watermark and state for metrics and checks.
    fn as_replica(&self) -> Option<&replica::Replica> {
        None
    }
    /// What `autopaxos status` shows of this node (the host adds what it knows, such as a
    /// replica's last state digest).
    fn status(&self) -> messages::NodeStatus {
        messages::NodeStatus::basic(self.kind())
    }
}

/// Something a role reports that is not a message: what the simulator's checkers observe and the
/// runtime turns into metrics. Recorded only when [`Out::record_events`] is set, so the hot path of a
/// production node pays nothing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An acceptor accepted a value (with its digest, if digests are recorded) in `slot` at `ballot`.
    Accepted { slot: Slot, ballot: Ballot, value_digest: Option<u64> },
    /// A replica executed `slot`; with digests recorded, the value's digest and the digest of its
    /// whole state (state machine and client table) after it.
    Executed { slot: Slot, value_digest: Option<u64>, state_digest: Option<u64> },
    /// A replica applied a command to its state machine (not answered from the client table).
    Applied { client_id: u64, seq: u64, slot: Slot },
    /// A client received the first reply to its request `seq` (the result goes to the client's host,
    /// not here: copying it per command would cost the hot path).
    Completed { client_id: u64, seq: u64 },
    /// A proposer finished Phase 1 and leads with `ballot`.
    BecameLeader { ballot: Ballot },
    /// A draining stateless node reported `Left`: it holds nothing in flight and may stop.
    Left,
    /// A replica has made no progress for a while although a peer is ahead of it (its teachers do
    /// not answer, or cannot). Repeated while stuck.
    Stalled { executed: Slot, peer_executed: Slot },
    /// A replica installed a snapshot a peer taught it: every slot below `slot` is executed, and its
    /// whole state has `state_digest` (with digests recorded).
    Installed { slot: Slot, state_digest: Option<u64> },
    /// A replica executed a change of configuration in `slot` (applied or skipped: checkers
    /// decide for themselves which).
    ReconfigExecuted { slot: Slot, change: configuration::Change },
    /// A batcher (or a leader without batchers) refused this many requests at once with `Busy`.
    Shed { commands: u64 },
    /// A client that gives up on `Busy` (a gateway's session) was refused for request `seq`,
    /// which it had sent only once: over a network that does not duplicate, that command was never
    /// proposed and never will be. Checkers hold it to that.
    Refused { client_id: u64, seq: u64 },
    /// Input that was dropped on purpose: stale, unexpected, or over a limit. The string says why.
    Dropped { reason: &'static str },
    /// Work spent `micros` in `stage` of this role (a batch filling, a slot waiting for its votes):
    /// the runtime's latency histograms. One per batch or slot, never per command.
    Stage { stage: Stage, micros: u64 },
}

/// The stages of a command's way through the roles that the roles time themselves (see
/// [`Event::Stage`]); fsync time and the client's end-to-end latency are timed by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Batcher: from a batch's first command to the batch leaving for the leader.
    Batching,
    /// Leader: from a batch's arrival to its proposal in a slot (waiting for room in the window).
    Queued,
    /// Proxy leader: from a slot's first Phase2a to a quorum of its votes (acceptors' network
    /// round trip and fsync).
    Phase2,
    /// Replica: from a slot's value arriving to its execution (waiting for the slots before it).
    Ordering,
}

impl Stage {
    /// Every stage, in the order a command meets them.
    pub const ALL: [Stage; 4] = [Stage::Batching, Stage::Queued, Stage::Phase2, Stage::Ordering];

    /// The `stage` label of `autopaxos_stage_seconds`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Batching => "batching",
            Stage::Queued => "queued",
            Stage::Phase2 => "phase2",
            Stage::Ordering => "ordering",
        }
    }

    /// The role that times this stage.
    pub fn role(self) -> RoleKind {
        match self {
            Stage::Batching => RoleKind::Batcher,
            Stage::Queued => RoleKind::Proposer,
            Stage::Phase2 => RoleKind::ProxyLeader,
            Stage::Ordering => RoleKind::Replica,
        }
    }
}

/// What a role produced during one call: messages to send now, writes to make durable, messages that
/// wait for those writes, and (optionally) events.
///
/// The order rule (see [`durable`]): a driver sends a message of `after_persist` only once every
/// record queued in `persist` up to then is durable. Roles put every message that depends on their
/// durable state there (Phase1b, Phase2b, a replica's executed watermark), so no driver can send a
/// vote early by forgetting a sync: it would have to reach into `after_persist` to do so.
#[derive(Debug, Default)]
pub struct Out {
    /// Messages that may go now, in order, as `(destination, message)`.
    pub msgs: Vec<(NodeId, Msg)>,
    /// Writes to make durable (written and synced), in order.
    pub persist: Vec<durable::Record>,
    /// Messages that may go only once every record of `persist` queued before them is durable.
    pub after_persist: Vec<(NodeId, Msg)>,
    /// Snapshots to keep on disk (a replica's whole state at a slot), in order: written in the
    /// background, each completely (synced, renamed) before the next; no message waits for them.
    /// The driver reports each one durable with [`Role::snapshot_saved`]: a role that depends on one
    /// (a trim of its log, a watermark only it can rebuild) waits for that call.
    pub snapshots: Vec<(Slot, bytes::Bytes)>,
    /// Events, filled only when `record_events` is true.
    pub events: Vec<Event>,
    /// Whether roles should record [`Event`]s.
    pub record_events: bool,
    /// Whether events carry digests. A state digest walks the whole state, so only checkers ask.
    pub record_digests: bool,
}

impl Out {
    /// An empty output buffer; `record` turns on event recording with digests (simulator, tests).
    pub fn new(record: bool) -> Self {
        Out { record_events: record, record_digests: record, ..Out::default() }
    }

    /// An output buffer that records events without digests: enough to count them (the runtime).
    pub fn counting() -> Self {
        Out { record_events: true, record_digests: false, ..Out::default() }
    }

    /// `compute()` if digests are recorded.
    pub fn digest(&self, compute: impl FnOnce() -> u64) -> Option<u64> {
        self.record_digests.then(compute)
    }

    /// Queues `msg` for `to`.
    pub fn send(&mut self, to: NodeId, msg: Msg) {
        self.msgs.push((to, msg));
    }

    /// Queues a write to make durable before any message queued after it with [`Out::send_after_persist`].
    pub fn persist(&mut self, record: durable::Record) {
        self.persist.push(record);
    }

    /// Queues a snapshot of the whole state at `slot` to be written in the background (see
    /// [`Out::snapshots`]).
    pub fn save_snapshot(&mut self, slot: Slot, bytes: bytes::Bytes) {
        self.snapshots.push((slot, bytes));
    }

    /// Queues `msg` for `to`, to leave once every record queued so far is durable.
    pub fn send_after_persist(&mut self, to: NodeId, msg: Msg) {
        self.after_persist.push((to, msg));
    }

    /// Records an event if recording is on. Takes a closure so that building the event costs nothing otherwise.
    pub fn event(&mut self, make: impl FnOnce() -> Event) {
        if self.record_events {
            self.events.push(make());
        }
    }

    /// Records that input was dropped on purpose.
    pub fn dropped(&mut self, reason: &'static str) {
        self.event(|| Event::Dropped { reason });
    }
}

/// A stable 64-bit digest of bytes (xxh3), used for values and state. Stable across runs and machines.
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}
