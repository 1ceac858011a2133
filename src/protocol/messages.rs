//! Every message of the protocol, as rkyv types so that the same values go on the wire.
//!
//! A batch of client commands is encoded once, by the batcher (or by the leader for a lone command),
//! and travels `proposer → proxy leader → acceptors → replicas` as the same [`Bytes`]: nobody between
//! the batcher and the replica decodes or re-encodes it. Cloning a `Bytes` shares the buffer.

use super::configuration::{ConfigHistory, Configuration, InForce};
use super::membership::View;
use super::{Ballot, NodeId, RoleKind, Slot};
use bytes::Bytes;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::de::Pool;
use rkyv::rancor::{Error as RkyvError, Strategy};
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// One client command: who sent it, its sequence number (for exactly-once), and the encoded operation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client's id; replies are routed to the client node with this id.
    pub client_id: u64,
    /// Increases by one per new request of that client; a retry keeps its number.
    pub seq: u64,
    /// The state machine operation, encoded by the client.
    pub op: Bytes,
}

/// A client id names the node that receives the client's replies (high 32 bits) and the client
/// within that node (low 32 bits), so one node can host many closed-loop clients.
pub fn client_id(node: NodeId, index: u32) -> u64 {
    (u64::from(node) << 32) | u64::from(index)
}

/// The node that receives replies for `client_id`.
pub fn client_node(client_id: u64) -> NodeId {
    (client_id >> 32) as NodeId
}

/// The commands of one batch; encoded once into a [`Value::Batch`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CommandBatch {
    /// The commands in the order the replica must execute them.
    pub commands: Vec<Command>,
}

/// What a slot holds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Fills a hole found by a new leader; executes nothing.
    Noop,
    /// An encoded [`CommandBatch`].
    Batch(Bytes),
    /// A change of configuration: an encoded [`Configuration`], in force `α` slots after the
    /// slot that chooses it (see [`super::configuration`]).
    Reconfig(Bytes),
}

impl Value {
    /// Commands the value holds (see [`batch_len`]).
    pub fn commands(&self) -> u64 {
        match self {
            Value::Batch(b) => batch_len(b),
            Value::Noop | Value::Reconfig(_) => 0,
        }
    }

    /// Bytes the value holds (0 for a no-op).
    pub fn byte_len(&self) -> usize {
        match self {
            Value::Noop => 0,
            Value::Batch(b) | Value::Reconfig(b) => b.len(),
        }
    }

    /// A stable digest of the value, for checkers and traces.
    pub fn digest(&self) -> u64 {
        match self {
            Value::Noop => 0,
            Value::Batch(b) => super::digest(b),
            // Distinct from a batch of the same bytes ("reconf" in ASCII).
            Value::Reconfig(b) => super::digest(b) ^ 0x7265_636f_6e66,
        }
    }
}

/// One reply to one command.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClientReply {
    /// The client that sent the command.
    pub client_id: u64,
    /// The command's sequence number.
    pub seq: u64,
    /// The state machine's encoded result.
    pub result: Bytes,
}

/// One slot's accepted state, as reported in Phase 1b.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEntry {
    /// The slot.
    pub slot: Slot,
    /// The ballot at which the value was accepted.
    pub ballot: Ballot,
    /// The accepted value.
    pub value: Value,
}

/// An acceptor's answer to a Phase1a: a promise, and what it accepted. Reports are paged by bytes
/// (a long untrimmed log would not fit one frame); the promise counts once the last page is in.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Phase1bReply {
    /// The ballot promised.
    pub ballot: Ballot,
    /// Echoes the Phase1a's nonce.
    pub nonce: u64,
    /// Slots below this are forgotten: chosen and executed by every replica.
    pub trimmed_below: Slot,
    /// Accepted values of this page, in slot order.
    pub accepted: Vec<AcceptedEntry>,
    /// `Some(s)`: more accepted values from slot `s` on; ask again from there. `None`: complete.
    pub more_from: Option<Slot>,
}

/// Where a node stands, as `autopaxos status` shows it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Up,
    /// Announcing itself to a running cluster, not yet in service.
    Joining,
    /// Draining, or removed by a change of configuration.
    Leaving,
    /// A replica being taught a snapshot.
    Learning,
}

/// One node's answer to `StatusRequest`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its role.
    pub role: RoleKind,
    /// Where it stands.
    pub state: NodeState,
    /// Proposers: the highest ballot seen, and whether this one leads with it.
    pub ballot: Option<Ballot>,
    /// Proposers: whether this one leads.
    pub leading: bool,
    /// Replicas: every slot below it is executed. Proposers: the highest watermark reported.
    pub executed: Option<Slot>,
    /// Replicas: the digest of the state, computed when the replica was last idle, with the
    /// watermark it was computed at.
    pub digest: Option<(Slot, u64)>,
    /// Proposers and replicas: the newest acceptor configuration known, and the slot it owns
    /// slots from.
    pub configuration: Option<InForce>,
    /// Proposers and replicas: the nodes that joined at runtime (id, role, address), as their view
    /// says, so that `status` can ask them too.
    pub joined: Vec<(NodeId, RoleKind, String)>,
    /// Proposers and replicas: the nodes that changes of configuration removed, as their history
    /// says (so that `status` tells a removed node from one that is down).
    pub removed: Vec<NodeId>,
}

impl NodeStatus {
    /// What any role can say of itself: its kind, up.
    pub fn basic(role: RoleKind) -> Self {
        NodeStatus {
            role,
            state: NodeState::Up,
            ballot: None,
            leading: false,
            executed: None,
            digest: None,
            configuration: None,
            joined: Vec::new(),
            removed: Vec::new(),
        }
    }
}

/// Messages that gather many items (reply batches, a node's client requests) are split so that
/// each stays well under the wire's frame limits.
pub const MAX_AGGREGATE_BYTES: usize = 256 * 1024;

/// Splits `items` into runs of at most `max` bytes (as `size` counts them), in order; an item larger
/// than `max` travels alone.
pub fn chunk_by_bytes<T>(items: Vec<T>, size: impl Fn(&T) -> usize, max: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !current.is_empty() && bytes + n > max {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += n;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Every message of the protocol. The comment on each says who sends it to whom.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// client → batcher (or → proposer when there are no batchers). A node hosting many clients
    /// sends the requests its clients made in one turn together.
    ClientRequests(Vec<Command>),
    /// unbatcher → client node: the replies of one slot for the clients that node hosts.
    ClientReplies(Vec<ClientReply>),
    /// proposer → client: the request went to a non-leader; try `leader_hint`.
    NotLeader { leader_hint: Option<NodeId> },
    /// batcher → proposer; a non-leader forwards it once (`forwarded`) or refuses it to `origin`.
    ClientBatch { origin: NodeId, forwarded: bool, attempt: u8, batch: Bytes },
    /// proposer → batcher: not the leader, and could not forward; resend to `leader_hint`.
    BatchRefused { leader_hint: Option<NodeId>, attempt: u8, batch: Bytes },
    /// leader → proposers and batchers: I lead with `ballot`.
    Heartbeat { ballot: Ballot },
    /// proposer → acceptors: promise `ballot`; report what you accepted from `from_slot` on.
    /// `nonce` is drawn fresh for each Phase 1, so that an acceptor can tell a retransmission from a
    /// restarted proposer that comes back with the same ballot.
    Phase1a { ballot: Ballot, nonce: u64, from_slot: Slot },
    /// acceptor → proposer: promised `ballot`; `trimmed_below` slots are forgotten (chosen and executed).
    Phase1b(Phase1bReply),
    /// acceptor → proposer or proxy leader: refused, I promised `promised`.
    Nack { promised: Ballot },
    /// leader → proxy leader: get `value` chosen in `slot` at `ballot` by `group`, the acceptors
    /// that own the slot in the configuration in force at it.
    Propose { ballot: Ballot, slot: Slot, value: Value, group: Vec<NodeId> },
    /// proxy leader → acceptors of the slot's group.
    Phase2a { ballot: Ballot, slot: Slot, value: Value },
    /// acceptor → proxy leader: accepted `slot` at `ballot`.
    Phase2b { ballot: Ballot, slot: Slot },
    /// proxy leader → proposer: an acceptor had promised `promised`, above the proposal's ballot.
    Preempted { promised: Ballot },
    /// proxy leader → replicas (and replica → replica when teaching): `value` is chosen in `slot`.
    Chosen { slot: Slot, value: Value },
    /// replica → proposers and other replicas: every slot below `watermark` is executed here, and
    /// `configs` are the configurations in force from there on, as the log chose them.
    Executed { watermark: Slot, configs: ConfigHistory },
    /// replica → replica: please send me the chosen values from `from_slot` on, at most
    /// `max_slots` of them (a learner paces itself by asking for fewer).
    CatchUp { from_slot: Slot, max_slots: u64 },
    /// replica → replica, answering a `CatchUp` that a snapshot serves better (the slots are no
    /// longer kept, or weigh more than the state): my state at `slot`, `len` bytes with digest
    /// `digest`, is ready to fetch.
    SnapshotOffer { slot: Slot, len: u64, digest: u64 },
    /// replica → replica: send the chunk of your snapshot at `slot` that starts at `offset`.
    SnapshotFetch { slot: Slot, offset: u64 },
    /// replica → replica: bytes of the snapshot at `slot` from `offset` on.
    SnapshotChunk { slot: Slot, offset: u64, bytes: Bytes },
    /// replica → acceptors of the slot's group: what did you accept in `slot`? For a slot no peer
    /// replica can teach.
    ReadSlot { slot: Slot },
    /// acceptor → replica, once durable: what it accepted in `slot` (`None`: nothing, or `trimmed`).
    SlotRead { slot: Slot, accepted: Option<AcceptedEntry>, trimmed: bool },
    /// leader → acceptors: every replica executed everything below `below`; forget it.
    Trim { below: Slot },
    /// replica → unbatcher: replies to send on to their clients.
    ReplyBatch { replies: Vec<ClientReply> },
    /// stateless node not in the configuration → proposers: put me in service as `role`; I listen
    /// at `addr`. Repeated until a view lists the node.
    Join { role: RoleKind, addr: String },
    /// operator or autoscaler → stateless node: drain, then report `Left`. leader → a node that
    /// no kept configuration names any more: leave now.
    Leave,
    /// draining node → proposers: take me out of service. Repeated until a view does.
    Leaving,
    /// drained node → proposers and whoever asked it to leave: nothing is in flight here any more.
    Left,
    /// leader → proposers, replicas and stateless nodes; batcher → its client nodes: the stateless
    /// nodes in service.
    Membership(View),
    /// leader removed by a change → the first proposer of the new configuration: run for leader
    /// now (every slot the old leader led is executed).
    LeadNow,
    /// operator → proposers: make `Configuration` the next one (the leader proposes it; the others
    /// answer `NotLeader`).
    Reconfigure(Configuration),
    /// leader → operator: epoch `epoch` is in force from `from_slot` on, `leader_us` after the
    /// leader took the request (what the change itself took, without the operator's round trips).
    Reconfigured { epoch: u64, from_slot: Slot, leader_us: u64 },
    /// leader → operator: the change to epoch `epoch` is refused, and why.
    ReconfigureRefused { epoch: u64, reason: String },
    /// operator → any node: how are you? (answered by the node's host, not its role's protocol)
    StatusRequest,
    /// node → operator: the answer.
    Status(NodeStatus),
    /// batcher → client node: these requests (client id, sequence number) were refused at once
    /// because the cluster is overloaded. The copy refused was never batched and never will be:
    /// the client may send the same command again (after backing off).
    Busy(Vec<(u64, u64)>),
    /// leader → batchers: whether its window is full and batches queue behind it (`full`), sent
    /// when that changes and with every heartbeat (which repairs a lost one).
    LeaderLoad { ballot: Ballot, full: bool },
    /// leader → batcher: my queue of waiting batches is at its bound; this batch was not
    /// proposed (nor kept). Hold it and send it again once I am no longer full.
    BatchBusy { batch: Bytes },
    /// leader handing over → acceptors: the leader of `ballot` leads no more; stop refusing other
    /// proposers' Phase 1 on its account (see the acceptor's lease).
    Abdicate { ballot: Ballot },
    /// unbatcher → replica: your reply batches reach me (sent soon after one arrives, at most once
    /// a `replica_report_interval_us`). A replica routes around an unbatcher that stops saying so.
    RepliesTaken,
}

impl Msg {
    /// Commands the message carries (requests, a batch, a slot's value, replies), for the
    /// `commands_in` metric; 0 for control messages.
    pub fn commands(&self) -> u64 {
        match self {
            Msg::ClientRequests(requests) => requests.len() as u64,
            Msg::ClientReplies(replies) | Msg::ReplyBatch { replies } => replies.len() as u64,
            Msg::ClientBatch { batch, .. } => batch_len(batch),
            Msg::Propose { value, .. } | Msg::Phase2a { value, .. } | Msg::Chosen { value, .. } => {
                value.commands()
            }
            _ => 0,
        }
    }

    /// A short name for traces and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::ClientRequests(_) => "ClientRequests",
            Msg::ClientReplies(_) => "ClientReplies",
            Msg::NotLeader { .. } => "NotLeader",
            Msg::ClientBatch { .. } => "ClientBatch",
            Msg::BatchRefused { .. } => "BatchRefused",
            Msg::Heartbeat { .. } => "Heartbeat",
            Msg::Phase1a { .. } => "Phase1a",
            Msg::Phase1b(_) => "Phase1b",
            Msg::Nack { .. } => "Nack",
            Msg::Propose { .. } => "Propose",
            Msg::Phase2a { .. } => "Phase2a",
            Msg::Phase2b { .. } => "Phase2b",
            Msg::Preempted { .. } => "Preempted",
            Msg::Chosen { .. } => "Chosen",
            Msg::Executed { .. } => "Executed",
            Msg::CatchUp { .. } => "CatchUp",
            Msg::SnapshotOffer { .. } => "SnapshotOffer",
            Msg::SnapshotFetch { .. } => "SnapshotFetch",
            Msg::SnapshotChunk { .. } => "SnapshotChunk",
            Msg::ReadSlot { .. } => "ReadSlot",
            Msg::SlotRead { .. } => "SlotRead",
            Msg::Trim { .. } => "Trim",
            Msg::ReplyBatch { .. } => "ReplyBatch",
            Msg::RepliesTaken => "RepliesTaken",
            Msg::Join { .. } => "Join",
            Msg::Leave => "Leave",
            Msg::LeadNow => "LeadNow",
            Msg::Abdicate { .. } => "Abdicate",
            Msg::Leaving => "Leaving",
            Msg::Left => "Left",
            Msg::Membership(_) => "Membership",
            Msg::Reconfigure(_) => "Reconfigure",
            Msg::Reconfigured { .. } => "Reconfigured",
            Msg::ReconfigureRefused { .. } => "ReconfigureRefused",
            Msg::StatusRequest => "StatusRequest",
            Msg::Status(_) => "Status",
            Msg::Busy(_) => "Busy",
            Msg::LeaderLoad { .. } => "LeaderLoad",
            Msg::BatchBusy { .. } => "BatchBusy",
        }
    }
}

/// A compact one-line description for traces: names, slots and ballots, digests instead of payloads.
impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name();
        match self {
            Msg::ClientRequests(cs) => match cs.as_slice() {
                [c] => write!(f, "{name} c{:x}#{}", c.client_id, c.seq),
                _ => write!(f, "{name} n={}", cs.len()),
            },
            Msg::ClientReplies(rs) => match rs.as_slice() {
                [r] => write!(f, "{name} c{:x}#{}", r.client_id, r.seq),
                _ => write!(f, "{name} n={}", rs.len()),
            },
            Msg::NotLeader { leader_hint } => write!(f, "{name} hint={leader_hint:?}"),
            Msg::ClientBatch { origin, forwarded, attempt, batch } => write!(
                f,
                "{name} origin={origin} fwd={forwarded} attempt={attempt} batch={:016x}",
                super::digest(batch)
            ),
            Msg::BatchRefused { leader_hint, attempt, .. } => {
                write!(f, "{name} hint={leader_hint:?} attempt={attempt}")
            }
            Msg::Heartbeat { ballot } => write!(f, "{name} b={ballot}"),
            Msg::Phase1a { ballot, nonce, from_slot } => {
                write!(f, "{name} b={ballot} nonce={nonce:x} from={from_slot}")
            }
            Msg::Phase1b(r) => {
                let (b, nonce, trimmed, n) = (r.ballot, r.nonce, r.trimmed_below, r.accepted.len());
                write!(f, "{name} b={b} nonce={nonce:x} trimmed<{trimmed} entries={n} more={:?}", r.more_from)
            }
            Msg::Nack { promised } => write!(f, "{name} promised={promised}"),
            Msg::Propose { ballot, slot, value, .. } | Msg::Phase2a { ballot, slot, value } => {
                write!(f, "{name} b={ballot} s={slot} v={:016x}", value.digest())
            }
            Msg::Phase2b { ballot, slot } => write!(f, "{name} b={ballot} s={slot}"),
            Msg::Preempted { promised } => write!(f, "{name} promised={promised}"),
            Msg::Chosen { slot, value } => write!(f, "{name} s={slot} v={:016x}", value.digest()),
            Msg::Executed { watermark, configs } => {
                write!(f, "{name} w={watermark} epoch={}", configs.latest().config.epoch)
            }
            Msg::CatchUp { from_slot, max_slots } => write!(f, "{name} from={from_slot} max={max_slots}"),
            Msg::SnapshotOffer { slot, len, digest } => {
                write!(f, "{name} s={slot} len={len} digest={digest:016x}")
            }
            Msg::SnapshotFetch { slot, offset } => write!(f, "{name} s={slot} at={offset}"),
            Msg::SnapshotChunk { slot, offset, bytes } => {
                write!(f, "{name} s={slot} at={offset} len={}", bytes.len())
            }
            Msg::ReadSlot { slot } => write!(f, "{name} s={slot}"),
            Msg::SlotRead { slot, accepted, trimmed } => match accepted {
                Some(e) => write!(f, "{name} s={slot} b={} v={:016x}", e.ballot, e.value.digest()),
                None => write!(f, "{name} s={slot} none trimmed={trimmed}"),
            },
            Msg::Trim { below } => write!(f, "{name} below={below}"),
            Msg::ReplyBatch { replies } => write!(f, "{name} n={}", replies.len()),
            Msg::Join { role, addr } => write!(f, "{name} {} at {addr}", role.name()),
            Msg::Leave | Msg::Leaving | Msg::Left | Msg::LeadNow | Msg::RepliesTaken => write!(f, "{name}"),
            Msg::Membership(v) => write!(f, "{name} {v}"),
            Msg::Reconfigure(c) => write!(f, "{name} epoch={} groups={:?}", c.epoch, c.acceptor_groups),
            Msg::Reconfigured { epoch, from_slot, leader_us } => {
                write!(f, "{name} epoch={epoch} from={from_slot} after={leader_us}us")
            }
            Msg::ReconfigureRefused { epoch, reason } => write!(f, "{name} epoch={epoch}: {reason}"),
            Msg::StatusRequest => write!(f, "{name}"),
            Msg::Status(s) => write!(f, "{name} {} {:?}", s.role.name(), s.state),
            Msg::Busy(refused) => match refused.as_slice() {
                [(client_id, seq)] => write!(f, "{name} c{client_id:x}#{seq}"),
                _ => write!(f, "{name} n={}", refused.len()),
            },
            Msg::LeaderLoad { ballot, full } => write!(f, "{name} b={ballot} full={full}"),
            Msg::Abdicate { ballot } => write!(f, "{name} b={ballot}"),
            Msg::BatchBusy { batch } => write!(f, "{name} batch={:016x}", super::digest(batch)),
        }
    }
}

/// Why encoded bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid encoding: {0}")]
pub struct DecodeError(pub String);

/// The alignment archives are read at. Our archived types need at most 8 (u64); 16 is
/// `AlignedVec`'s default, so a future field type is covered too.
const ARCHIVE_ALIGN: usize = 16;

/// Runs `f` on the validated archive in `bytes`. rkyv rejects misaligned archives, and bytes sliced
/// out of a larger buffer may be misaligned: those are copied into an aligned buffer first; aligned
/// ones are read in place.
pub fn with_archived<T, R>(bytes: &[u8], f: impl FnOnce(&T::Archived) -> R) -> Result<R, DecodeError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>>,
{
    let read = |aligned: &[u8]| {
        rkyv::access::<T::Archived, RkyvError>(aligned).map(f).map_err(|e| DecodeError(e.to_string()))
    };
    if (bytes.as_ptr() as usize).is_multiple_of(ARCHIVE_ALIGN) {
        return read(bytes);
    }
    let mut aligned = AlignedVec::<ARCHIVE_ALIGN>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    read(&aligned)
}

/// Validates and deserializes a `T` from bytes of any alignment.
pub fn decode<T>(bytes: &[u8]) -> Result<T, DecodeError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>> + Deserialize<T, Strategy<Pool, RkyvError>>,
{
    with_archived::<T, _>(bytes, |archived| rkyv::deserialize::<T, RkyvError>(archived))?
        .map_err(|e| DecodeError(e.to_string()))
}

/// Serializes `value`. Serializing owned data into memory cannot fail in practice; should it ever,
/// the result is empty bytes, which decode as an error, because this runs inside `apply`, which
/// must never panic.
pub fn encode<T>(value: &T) -> Bytes
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RkyvError>>,
{
    rkyv::to_bytes::<RkyvError>(value).map(|v| Bytes::from(v.into_vec())).unwrap_or_default()
}

/// Serializes values one after another with a reused aligned buffer and arena: once warm, a value
/// costs no allocation and no thread-local lookup (a replica encodes one result per command).
#[derive(Default)]
pub struct Encoder {
    buf: AlignedVec,
    arena: Arena,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("buf_capacity", &self.buf.capacity()).finish_non_exhaustive()
    }
}

impl Encoder {
    /// Appends `value`'s archive to `out`. Appends nothing should serializing fail, which decodes as
    /// an error, like [`encode`].
    pub fn append<T>(&mut self, value: &T, out: &mut bytes::BytesMut)
    where
        T: for<'a, 'b> Serialize<HighSerializer<&'b mut AlignedVec, ArenaHandle<'a>, RkyvError>>,
    {
        self.buf.clear();
        let written = rkyv::api::high::to_bytes_in_with_alloc::<_, _, RkyvError>(
            value,
            &mut self.buf,
            self.arena.acquire(),
        );
        if written.is_ok() {
            out.extend_from_slice(&self.buf);
        }
    }
}

/// Encodes commands into the bytes of a [`Value::Batch`].
pub fn encode_batch(commands: Vec<Command>) -> Bytes {
    encode(&CommandBatch { commands })
}

/// The smallest archived [`Command`]: two u64 and an empty byte vector.
const MIN_ARCHIVED_COMMAND: usize = 24;

/// The number of commands in an encoded [`CommandBatch`], read from the archive's root without
/// validating the archive (roles that only pass a batch on never decode it; this is for metrics):
/// rkyv writes the root last, and the root's last field is the vector's length, a little-endian
/// u32. Bounded by what the bytes could hold, so garbage yields a bounded wrong figure, no harm.
pub fn batch_len(bytes: &[u8]) -> u64 {
    let Some(tail) = bytes.len().checked_sub(4).and_then(|at| bytes.get(at..)) else { return 0 };
    let len = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    u64::from(len).min((bytes.len() / MIN_ARCHIVED_COMMAND) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(client_id: u64, seq: u64, op: &'static [u8]) -> Command {
        Command { client_id, seq, op: Bytes::from_static(op) }
    }

    #[test]
    fn batch_len_reads_the_count_of_real_batches_and_bounds_garbage() {
        for n in [0usize, 1, 2, 3, 100, 1000] {
            let commands =
                (0..n as u64).map(|i| cmd(i, i, if i % 2 == 0 { b"put key value" } else { b"" })).collect();
            assert_eq!(batch_len(&encode_batch(commands)), n as u64, "{n} commands");
        }
        assert_eq!(batch_len(b""), 0);
        assert_eq!(batch_len(&[0xff; 48]), 2);
    }

    #[test]
    fn a_batch_round_trips_aligned_and_misaligned() {
        let bytes = encode_batch(vec![cmd(1, 1, b"put a"), cmd(2, 7, b"")]);
        let read = |b: &[u8]| {
            with_archived::<CommandBatch, _>(b, |a| {
                a.commands
                    .iter()
                    .map(|c| (c.client_id.to_native(), c.seq.to_native(), c.op.to_vec()))
                    .collect::<Vec<_>>()
            })
            .unwrap()
        };
        let expected = vec![(1, 1, b"put a".to_vec()), (2, 7, vec![])];
        assert_eq!(read(&bytes), expected);
        // The same archive one byte into a larger buffer: still readable, through the aligned copy.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(read(&shifted[1..]), expected);
    }

    #[test]
    fn decode_accepts_input_at_every_alignment() {
        let encoded = encode(&(7u64, 9i64));
        for offset in 0..ARCHIVE_ALIGN {
            let mut buf = AlignedVec::<ARCHIVE_ALIGN>::new();
            buf.resize(offset, 0);
            buf.extend_from_slice(&encoded);
            assert_eq!(decode::<(u64, i64)>(&buf[offset..]), Ok((7, 9)), "offset {offset}");
        }
    }

    #[test]
    fn chunks_keep_order_and_stay_under_the_limit() {
        let chunks = chunk_by_bytes(vec![3, 3, 3, 9, 1, 1], |&n| n, 6);
        assert_eq!(chunks, vec![vec![3, 3], vec![3], vec![9], vec![1, 1]]);
        assert!(chunk_by_bytes(Vec::<u8>::new(), |_| 1, 6).is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for garbage in [&b""[..], b"\x01", &[0xff; 64]] {
            assert!(with_archived::<CommandBatch, _>(garbage, |_| ()).is_err());
        }
    }

    #[test]
    fn messages_round_trip_through_rkyv() {
        let msg = Msg::Phase2a {
            ballot: Ballot { round: 3, proposer: 2 },
            slot: 42,
            value: Value::Batch(encode_batch(vec![cmd(1, 1, b"x")])),
        };
        let bytes = rkyv::to_bytes::<RkyvError>(&msg).unwrap();
        let back: Msg = rkyv::from_bytes::<Msg, RkyvError>(&bytes).unwrap();
        assert_eq!(back, msg);
        assert!(back.to_string().starts_with("Phase2a b=3.2 s=42"));
    }
}
