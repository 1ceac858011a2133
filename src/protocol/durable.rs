//! What a stateful role keeps on disk, as the role sees it: the records it asks its driver to make
//! durable, the order rule that ties its messages to them, and what a restarted role is rebuilt from.
//!
//! A role never writes: it appends [`Record`]s to [`Out::persist`](super::Out) and puts every message
//! that depends on them (an acceptor's Phase1b and Phase2b, a replica's `Executed` report) in
//! [`Out::after_persist`](super::Out) instead of [`Out::msgs`](super::Out). A driver must make every
//! record queued so far durable (written *and* synced) before it sends any message queued in
//! `after_persist` up to then; it may cover many calls' records with one sync (group commit). This is
//! raft-rs's "persisted messages" rule, and it is the only way a vote leaves an acceptor.
//!
//! A replica's snapshot (its whole state at a slot) is not a record: it goes to
//! [`Out::save_snapshot`](super::Out), is written to a file of its own in the background (write,
//! sync, rename: a restart loads the newest complete one), and nothing waits for it; the driver
//! says when it is durable ([`Role::snapshot_saved`](super::Role)). Writing hundreds of megabytes
//! in the log's order held every vote and report behind it for seconds.
//!
//! The byte format of records lives in `src/storage/record.rs`; the meaning of each record (how a
//! role folds its records back into state) lives with the role (`Acceptor::recover`,
//! `Replica::recover`).

use super::messages::{Msg, Value};
use super::{Ballot, NodeId, Out, RoleKind, Slot};

/// Whether a role keeps state that must survive it (and so has a disk): acceptors and replicas.
pub fn keeps_state(kind: RoleKind) -> bool {
    matches!(kind, RoleKind::Acceptor | RoleKind::Replica)
}

/// One write a stateful role asks for. Records are applied in the order they were queued; a later
/// record of the same slot overrides an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Acceptor: promised `ballot` to the Phase 1 that drew `nonce` (`None`: the promise was raised
    /// by a Phase2a at a higher ballot, which no Phase 1 retransmission can match).
    Promise { ballot: Ballot, nonce: Option<u64> },
    /// Acceptor: accepted `value` in `slot` at `ballot` (which also raises the promise to `ballot`).
    Accept { slot: Slot, ballot: Ballot, value: Value },
    /// Acceptor and replica: records of slots below `below` are no longer needed (an acceptor's trim
    /// point; a replica's oldest slot still kept, covered by its snapshot). Storage may drop them.
    Trim { below: Slot },
    /// Replica: `value` was executed in `slot`. Replayed on the snapshot at start; kept to teach
    /// lagging peers.
    Executed { slot: Slot, value: Value },
}

impl Record {
    /// The slot this record holds a value of, if any: storage tracks each segment's highest one to
    /// know when the segment is wholly below a trim point.
    pub fn slot(&self) -> Option<Slot> {
        match self {
            Record::Accept { slot, .. } | Record::Executed { slot, .. } => Some(*slot),
            _ => None,
        }
    }
}

/// Whether a stateful role keeps its state on disk. `InMemory` is for benchmarks only: the role
/// queues no records and sends everything at once, and a crash loses its votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Records are queued and messages wait for them to be durable.
    #[default]
    Durable,
    /// Nothing is persisted; not crash-safe.
    InMemory,
}

impl Storage {
    /// Sends `msg`, which depends on this role's durable state: after the records queued before
    /// it are durable, or at once in memory.
    pub fn send(self, out: &mut Out, to: NodeId, msg: Msg) {
        match self {
            Storage::Durable => out.send_after_persist(to, msg),
            Storage::InMemory => out.send(to, msg),
        }
    }
}

/// What a stateful role's disk held when its process started, in the order it was written.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The newest complete snapshot (replicas): the slot it was taken at and its bytes.
    pub snapshot: Option<(Slot, bytes::Bytes)>,
    /// Every intact record of the log, oldest first (a torn tail already cut off).
    pub records: Vec<Record>,
}

impl Recovered {
    /// Nothing on disk: a node's first start.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.records.is_empty()
    }
}
