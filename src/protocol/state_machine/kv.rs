//! A partitioned key-value store with Physalia-style single-partition transactions.
//!
//! Keys are (partition, item); a transaction names one partition, so it can never
//! span partitions. Versions count per partition (each partition is its own cell, as
//! in Physalia), so a partition's history is explained by that partition alone: the
//! simulator checks linearizability partition by partition. This runs on every replica, so `execute`/`apply` must stay a
//! pure function of (state, op): never panic on any input, never let a result depend on the maps'
//! iteration order, never use clocks, randomness or floats, and leave state untouched on any error.

use std::collections::hash_map::HashMap;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rkyv::{Archive, Deserialize, Serialize};
use smallvec::SmallVec;
use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3Default};

use super::hash_key::KeyedHasher;
use super::{HashKey, StateMachine};
use crate::protocol::messages::{decode, encode, Encoder};

/// Maximum length of a partition key and of an item key, each.
pub const MAX_KEY_BYTES: usize = 1024;
/// Maximum length of a value (in a `Put` or a `ValueEquals` condition).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Maximum number of conditions plus writes in one transaction.
pub const MAX_TXN_OPS: usize = 64;
/// Maximum number of ops in one [`KvOp::Batch`].
pub const MAX_BATCH_OPS: usize = 4096;
/// Bytes of values one command may return. A batch's results travel in one reply (within the
/// wire's meta limit) and the replicas keep it as the session's last reply: a read that would take
/// the results past it fails with [`KvError::ReplyTooLarge`], and so does every op after it in the
/// batch, so that nothing after a refused read (the delete of a `GETDEL`, a later command of the
/// same pipeline) takes effect out of order.
pub const MAX_RESULT_BYTES: usize = 8 << 20;
/// What a read may add to a batch's results at most, over its value: a gateway counts its
/// pipelines' worst case by it, so that only one request alone can meet the limit.
pub const MAX_READ_RESULT_BYTES: usize = MAX_VALUE_BYTES + 64;
/// The longest decimal integer an increment accepts (`-9223372036854775808`).
const MAX_INT_DIGITS: usize = 20;

/// One operation on the store.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Reads an item: `Value` or `NotFound`.
    Get {
        /// Partition key.
        partition: Bytes,
        /// Item key within the partition.
        item: Bytes,
    },
    /// Stores a value: `Written`.
    Put {
        /// Partition key.
        partition: Bytes,
        /// Item key within the partition.
        item: Bytes,
        /// New value.
        value: Bytes,
    },
    /// Removes an item: `Deleted`.
    Delete {
        /// Partition key.
        partition: Bytes,
        /// Item key within the partition.
        item: Bytes,
    },
    /// Adds `delta` to a value that is a decimal i64 as Redis writes one (absent counts as 0):
    /// `Incremented`, and the new value is stored in decimal.
    Increment {
        /// Partition key.
        partition: Bytes,
        /// Item key within the partition.
        item: Bytes,
        /// Signed amount to add.
        delta: i64,
    },
    /// If every condition holds, applies all writes atomically (`Committed`); else nothing.
    Txn {
        /// The single partition every condition and write refers to.
        partition: Bytes,
        /// Checked against the state before the transaction, in order.
        conditions: Vec<Condition>,
        /// Applied in order on success; later writes to an item see earlier ones.
        writes: Vec<Write>,
    },
    /// Runs ops in order as one command (a gateway's pipeline, or a command that reads and writes,
    /// like `GETDEL`): they share one log entry, so no other command runs between them, but each
    /// has its own result and none is undone when a later one fails. `Batched`. Each element is an
    /// encoded op that is not itself a batch.
    Batch {
        /// The encoded ops, in order.
        ops: Vec<Bytes>,
    },
}

/// A transaction guard on one item of the transaction's partition.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The item exists.
    Exists {
        /// Item key.
        item: Bytes,
    },
    /// The item does not exist.
    Absent {
        /// Item key.
        item: Bytes,
    },
    /// The item's version equals `version`; an absent item has version 0 (never assigned).
    VersionEquals {
        /// Item key.
        item: Bytes,
        /// Expected version.
        version: u64,
    },
    /// The item exists and its value equals `value`.
    ValueEquals {
        /// Item key.
        item: Bytes,
        /// Expected value.
        value: Bytes,
    },
}

/// A transaction write to one item of the transaction's partition.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Stores a value.
    Put {
        /// Item key.
        item: Bytes,
        /// New value.
        value: Bytes,
    },
    /// Removes the item (no effect if absent).
    Delete {
        /// Item key.
        item: Bytes,
    },
    /// Adds to an i64 value, as [`KvOp::Increment`].
    Increment {
        /// Item key.
        item: Bytes,
        /// Signed amount to add.
        delta: i64,
    },
}

/// The outcome of one [`KvOp`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum KvResult {
    /// `Get` hit.
    Value {
        /// Stored value.
        value: Bytes,
        /// Version of the write that stored it.
        version: u64,
    },
    /// `Get` miss.
    NotFound,
    /// `Put` applied.
    Written {
        /// Version assigned to the write.
        version: u64,
    },
    /// `Increment` applied.
    Incremented {
        /// The new value.
        value: i64,
        /// Version assigned to the write.
        version: u64,
    },
    /// `Delete` done; a delete of an absent item writes nothing.
    Deleted {
        /// Whether the item existed (and so was removed).
        existed: bool,
    },
    /// `Txn` applied.
    Committed {
        /// Version shared by all of its writes; a txn with no writes (a check) writes
        /// nothing and answers the partition's current version (0 if it has none).
        version: u64,
    },
    /// `Batch` ran: each op's encoded result, in order.
    Batched {
        /// One encoded [`KvResult`] per op.
        results: Vec<Bytes>,
    },
    /// `Txn` not applied because a condition did not hold.
    ConditionFailed {
        /// Index of the first failing condition.
        index: u32,
    },
    /// The op was rejected; nothing was written.
    Error(KvError),
}

/// Why an op was rejected. Every error leaves the store unchanged.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The op bytes did not decode.
    #[error("malformed operation")]
    Malformed,
    /// A partition or item key exceeds [`MAX_KEY_BYTES`].
    #[error("key longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLarge,
    /// A value exceeds [`MAX_VALUE_BYTES`].
    #[error("value longer than {MAX_VALUE_BYTES} bytes")]
    ValueTooLarge,
    /// A transaction has more than [`MAX_TXN_OPS`] conditions plus writes.
    #[error("transaction has more than {MAX_TXN_OPS} conditions plus writes")]
    TooManyOps,
    /// An increment hit a value that is not a decimal i64.
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// An increment (or the version counter) would overflow.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// A batch holds another batch, or more than [`MAX_BATCH_OPS`] ops.
    #[error("a batch holds a batch or more than {MAX_BATCH_OPS} ops")]
    BadBatch,
    /// The batch's results would exceed [`MAX_RESULT_BYTES`]: this op and the rest of the batch
    /// were not run.
    #[error("reply larger than {MAX_RESULT_BYTES} bytes: the command was not run")]
    ReplyTooLarge,
}

impl KvOp {
    /// The partition this op touches (histories are checked per partition); `None` for a batch,
    /// whose ops may touch many.
    pub fn partition(&self) -> Option<&[u8]> {
        match self {
            Self::Get { partition, .. }
            | Self::Put { partition, .. }
            | Self::Delete { partition, .. }
            | Self::Increment { partition, .. }
            | Self::Txn { partition, .. } => Some(partition),
            Self::Batch { .. } => None,
        }
    }

    /// Encodes the op for the log.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Decodes (and validates) op bytes of any alignment.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        decode(bytes).map_err(|_| KvError::Malformed)
    }
}

impl KvResult {
    /// Encodes the result for the client.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Decodes (and validates) result bytes of any alignment.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        decode(bytes).map_err(|_| KvError::Malformed)
    }
}

impl Condition {
    /// The item this condition inspects.
    pub fn item(&self) -> &Bytes {
        match self {
            Self::Exists { item }
            | Self::Absent { item }
            | Self::VersionEquals { item, .. }
            | Self::ValueEquals { item, .. } => item,
        }
    }

    fn holds(&self, entry: Option<&Entry>) -> bool {
        match self {
            Self::Exists { .. } => entry.is_some(),
            Self::Absent { .. } => entry.is_none(),
            Self::VersionEquals { version, .. } => entry.map_or(0, |e| e.version) == *version,
            Self::ValueEquals { value, .. } => entry.is_some_and(|e| e.value[..] == value[..]),
        }
    }
}

impl Write {
    /// The item this write changes.
    pub fn item(&self) -> &Bytes {
        match self {
            Self::Put { item, .. } | Self::Delete { item } | Self::Increment { item, .. } => item,
        }
    }
}

/// Keys and values as stored: up to 24 bytes inline, so that a lookup compares bytes in the bucket
/// instead of following a pointer into a cache miss, and a small write allocates nothing.
type Small = SmallVec<[u8; 24]>;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Stored,
    version: u64,
}

/// A stored value: up to 24 bytes inline (a small write allocates nothing), longer ones shared, so
/// that freezing the store for a snapshot ([`KvStore::freeze`]) copies a pointer, not the value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stored {
    Inline(Small),
    Shared(Bytes),
}

impl Stored {
    fn from_slice(value: &[u8]) -> Self {
        if value.len() <= 24 {
            Stored::Inline(Small::from_slice(value))
        } else {
            Stored::Shared(Bytes::copy_from_slice(value))
        }
    }
}

impl std::ops::Deref for Stored {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Stored::Inline(v) => v,
            Stored::Shared(v) => v,
        }
    }
}

/// Reused buffers: aligned ones to read each op (and each op of a batch) in place, the results'
/// encoder, and a batch's results as they are encoded.
#[derive(Debug, Default)]
struct Buffers {
    op: rkyv::util::AlignedVec<16>,
    inner: rkyv::util::AlignedVec<16>,
    encoder: Encoder,
    results: BytesMut,
}

/// The store's [`Buffers`]. Not state: equal for every store, empty when cloned. Taken out while an
/// op runs (so the store can be borrowed beside them): an empty `Option` is free to leave behind,
/// where fresh buffers would allocate an arena per op.
#[derive(Debug, Default)]
struct Scratch(Option<Buffers>);

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch::default()
    }
}

/// A partition as the store holds it: its own, or shared with a frozen copy ([`KvStore::freeze`])
/// until its next write, which takes it back (copying it only if the frozen copy still holds it).
/// Owned is the common case, and writes to it cost no atomic operation.
#[derive(Clone, Debug)]
enum Held<S> {
    Owned(Partition<S>),
    Shared(Arc<Partition<S>>),
}

impl<S: Clone> Held<S> {
    #[inline]
    fn make_mut(&mut self) -> &mut Partition<S> {
        if let Held::Shared(shared) = self {
            // An empty partition allocates nothing: a placeholder for the moment of the swap.
            let placeholder = Held::Owned(Partition::empty(shared.items.hasher().clone()));
            if let Held::Shared(shared) = std::mem::replace(self, placeholder) {
                *self = Held::Owned(Arc::unwrap_or_clone(shared));
            }
        }
        match self {
            Held::Owned(part) => part,
            Held::Shared(_) => unreachable!("taken back above"),
        }
    }

    fn share(&mut self) -> Arc<Partition<S>> {
        if let Held::Owned(part) = self {
            let empty = Partition::empty(part.items.hasher().clone());
            *self = Held::Shared(Arc::new(std::mem::replace(part, empty)));
        }
        match self {
            Held::Shared(shared) => shared.clone(),
            Held::Owned(_) => unreachable!("shared above"),
        }
    }
}

impl<S> std::ops::Deref for Held<S> {
    type Target = Partition<S>;
    #[inline]
    fn deref(&self) -> &Partition<S> {
        match self {
            Held::Owned(part) => part,
            Held::Shared(shared) => shared,
        }
    }
}

impl<S: BuildHasher> PartialEq for Held<S> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<S: BuildHasher> Eq for Held<S> {}

/// One partition: its items and its version counter.
#[derive(Clone, Debug)]
struct Partition<S> {
    /// Version of the partition's latest write; the next write takes `counter + 1`.
    /// Kept after the last item is deleted, so versions never repeat (no ABA).
    counter: u64,
    items: HashMap<Small, Entry, S>,
}

impl<S> Partition<S> {
    /// A partition never written; allocates nothing.
    fn empty(hasher: S) -> Self {
        Partition { counter: 0, items: HashMap::with_hasher(hasher) }
    }
}

// By hand: a derive would ask the hasher for `PartialEq`, which says nothing about the contents.
impl<S: BuildHasher> PartialEq for Partition<S> {
    fn eq(&self, other: &Self) -> bool {
        self.counter == other.counter && self.items == other.items
    }
}

impl<S: BuildHasher> Eq for Partition<S> {}

/// The key-value store. Hash maps: one probe per lookup, where an ordered map's comparisons each
/// chased a key pointer into a cache miss (28% of a replica's time at 100k keys). They hash under
/// a secret key ([`HashKey`], SipHash-1-3, see `hash_key.rs`) so that clients cannot choose keys
/// that collide. Nothing depends on their iteration order: the snapshot sorts, and the digest
/// combines entries order-independently. Nested maps allow lookups by `&[u8]` without allocating
/// a key.
///
/// `S` is the maps' hasher: always [`KeyedHasher`] but in `bench hashflood`, which measures the
/// fixed FxHash the store used before against it.
#[derive(Clone, Debug)]
pub struct KvStore<S = KeyedHasher> {
    data: HashMap<Small, Held<S>, S>,
    /// Buffers reused by every op (not part of the state).
    scratch: Scratch,

    len: usize,
    /// Bytes of keys and values held: what a snapshot will about weigh.
    bytes: u64,
}

impl<S: BuildHasher> PartialEq for KvStore<S> {
    fn eq(&self, other: &Self) -> bool {
        // The buffers are not state, and the key does not change what the store holds.
        self.data == other.data && self.len == other.len && self.bytes == other.bytes
    }
}

impl<S: BuildHasher> Eq for KvStore<S> {}

impl KvStore {
    /// An empty store whose maps hash under `key`.
    pub fn with_key(key: HashKey) -> Self {
        Self::with_hasher(KeyedHasher::new(key))
    }

    /// An empty store for tests: its key is no secret.
    // No `Default`: outside tests a store must be built from the cluster's key.
    #[cfg(test)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::with_key(HashKey::from_bytes(*b"kv tests' key..."))
    }
}

impl<S: BuildHasher + Clone> KvStore<S> {
    /// An empty store whose maps hash with `hasher` (a replica's are keyed: [`KvStore::with_key`]).
    pub(crate) fn with_hasher(hasher: S) -> Self {
        KvStore { data: HashMap::with_hasher(hasher), scratch: Scratch::default(), len: 0, bytes: 0 }
    }

    /// Number of stored items across all partitions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store holds no items.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value and version stored at (partition, item), if any.
    pub fn get(&self, partition: &[u8], item: &[u8]) -> Option<(&[u8], u64)> {
        self.entry(partition, item).map(|e| (&e.value[..], e.version))
    }

    /// Executes a typed op: the sequential model of the store (`apply` = decode,
    /// execute, encode). Deterministic; on any error nothing is written.
    pub fn execute(&mut self, op: &KvOp) -> KvResult {
        match self.try_execute(op) {
            Ok(result) => result,
            Err(e) => KvResult::Error(e),
        }
    }

    fn try_execute(&mut self, op: &KvOp) -> Result<KvResult, KvError> {
        validate(op)?;
        Ok(match op {
            KvOp::Get { partition, item } => match self.entry(partition, item) {
                Some(e) => KvResult::Value { value: Bytes::copy_from_slice(&e.value), version: e.version },
                None => KvResult::NotFound,
            },
            KvOp::Put { partition, item, value } => {
                let version = self.commit(partition, [(item, Some(value))])?;
                KvResult::Written { version }
            }
            KvOp::Delete { partition, item } => {
                // Deleting nothing changes nothing, so it must not consume a version.
                let existed = self.entry(partition, item).is_some();
                if existed {
                    self.commit(partition, [(item, None::<&[u8]>)])?;
                }
                KvResult::Deleted { existed }
            }
            KvOp::Increment { partition, item, delta } => {
                let value = add(self.entry(partition, item).map(|e| &e.value[..]), *delta)?;
                let version = self.commit(partition, [(item.clone(), Some(int_bytes(value)))])?;
                KvResult::Incremented { value, version }
            }
            KvOp::Txn { partition, conditions, writes } => {
                let part = self.data.get(&partition[..]);
                let lookup = |item: &Bytes| part.and_then(|m| m.items.get(&item[..]));
                if let Some(index) = conditions.iter().position(|c| !c.holds(lookup(c.item()))) {
                    // `validate` bounds the count by MAX_TXN_OPS, so this cannot truncate.
                    return Ok(KvResult::ConditionFailed { index: index as u32 });
                }
                if writes.is_empty() {
                    // A check alone writes nothing: it answers the version its conditions held at,
                    // and never creates a partition (reads must not grow the store).
                    return Ok(KvResult::Committed { version: part.map_or(0, |m| m.counter) });
                }
                // Stage every write first so a failing increment leaves the store untouched.
                let mut staged: BTreeMap<Bytes, Option<Bytes>> = BTreeMap::new();
                for w in writes {
                    let new = match w {
                        Write::Put { value, .. } => Some(value.clone()),
                        Write::Delete { .. } => None,
                        Write::Increment { item, delta } => {
                            let current = match staged.get(item) {
                                Some(s) => s.as_deref(),
                                None => lookup(item).map(|e| &e.value[..]),
                            };
                            Some(int_bytes(add(current, *delta)?))
                        }
                    };
                    staged.insert(w.item().clone(), new);
                }
                // A txn that writes takes a fresh version, shared by all of its writes.
                KvResult::Committed { version: self.commit(partition, staged)? }
            }
            KvOp::Batch { .. } => {
                // The typed path (the simulator's model, tests) runs a batch as the log does.
                let mut scratch = self.scratch.0.take().unwrap_or_default();
                let result = self.run_top(&op.encode(), &mut scratch);
                self.scratch.0 = Some(scratch);
                result
            }
        })
    }

    fn entry(&self, partition: &[u8], item: &[u8]) -> Option<&Entry> {
        self.data.get(partition)?.items.get(item)
    }

    /// Applies writes (None = delete) under one fresh version and returns it.
    fn commit(
        &mut self,
        partition: &[u8],
        writes: impl IntoIterator<Item = (impl AsRef<[u8]>, Option<impl AsRef<[u8]>>)>,
    ) -> Result<u64, KvError> {
        // Look the partition up by reference, one hash of its key (SipHash is not free): only a
        // new partition needs an owned key, and a second hash to place it.
        let held = match self.data.get_mut(partition) {
            Some(held) => held,
            None => {
                let empty = Partition::empty(self.data.hasher().clone());
                self.bytes += partition.len() as u64;
                self.data.entry(Small::from_slice(partition)).or_insert(Held::Owned(empty))
            }
        };
        let part = held.make_mut();
        let version = part.counter.checked_add(1).ok_or(KvError::Overflow)?;
        for (item, value) in writes {
            match value {
                Some(value) => {
                    let entry = Entry { value: Stored::from_slice(value.as_ref()), version };
                    self.bytes += value.as_ref().len() as u64;
                    match part.items.insert(Small::from_slice(item.as_ref()), entry) {
                        Some(old) => self.bytes -= old.value.len() as u64,
                        None => {
                            self.len += 1;
                            self.bytes += item.as_ref().len() as u64;
                        }
                    }
                }
                None => {
                    if let Some(old) = part.items.remove(item.as_ref()) {
                        self.len -= 1;
                        self.bytes -= (item.as_ref().len() + old.value.len()) as u64;
                    }
                }
            }
        }
        part.counter = version;
        Ok(version)
    }

    fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8], &Entry)> {
        self.data.iter().flat_map(|(p, m)| m.items.iter().map(move |(i, e)| (&p[..], &i[..], e)))
    }
}

impl<S: BuildHasher + Clone> KvStore<S> {
    /// The hot path: a put read straight from its archive (validated, no copy of keys or values into
    /// fresh buffers), with the same limits and results as [`KvStore::execute`].
    fn put_archived(&mut self, partition: &[u8], item: &[u8], value: &[u8]) -> KvResult {
        if partition.len() > MAX_KEY_BYTES || item.len() > MAX_KEY_BYTES {
            return KvResult::Error(KvError::KeyTooLarge);
        }
        if value.len() > MAX_VALUE_BYTES {
            return KvResult::Error(KvError::ValueTooLarge);
        }
        match self.commit(partition, [(item, Some(value))]) {
            Ok(version) => KvResult::Written { version },
            Err(e) => KvResult::Error(e),
        }
    }
}

impl<S: BuildHasher + Clone> KvStore<S> {
    /// A top-level op: a batch runs its ops here, read in place from its archive.
    fn run_top(&mut self, op: &[u8], scratch: &mut Buffers) -> KvResult {
        // Ops sit at any alignment inside a batch: copy into a reused aligned buffer (no allocation)
        // and read puts and batches in place; everything else takes the typed path.
        let Buffers { op: aligned, inner, encoder, results } = scratch;
        aligned.clear();
        aligned.extend_from_slice(op);
        match rkyv::access::<ArchivedKvOp, rkyv::rancor::Error>(aligned) {
            Ok(ArchivedKvOp::Batch { ops }) => {
                if ops.len() > MAX_BATCH_OPS {
                    return KvResult::Error(KvError::BadBatch);
                }
                let (mut bytes, mut refused) = (0, false);
                let results = ops
                    .iter()
                    .map(|op| {
                        let result = match refused {
                            true => KvResult::Error(KvError::ReplyTooLarge),
                            false => {
                                self.run_inner(op.as_slice(), inner, MAX_RESULT_BYTES.saturating_sub(bytes))
                            }
                        };
                        refused = matches!(result, KvResult::Error(KvError::ReplyTooLarge));
                        encoder.append(&result, results);
                        bytes += results.len();
                        results.split().freeze()
                    })
                    .collect();
                KvResult::Batched { results }
            }
            Ok(_) => self.run_inner(op, inner, MAX_RESULT_BYTES),
            Err(_) => KvResult::Error(KvError::Malformed),
        }
    }

    /// One op that is not a batch (a batch inside a batch is refused); a read whose value is
    /// longer than `room` is refused with `ReplyTooLarge`.
    fn run_inner(&mut self, op: &[u8], aligned: &mut rkyv::util::AlignedVec<16>, room: usize) -> KvResult {
        aligned.clear();
        aligned.extend_from_slice(op);
        match rkyv::access::<ArchivedKvOp, rkyv::rancor::Error>(aligned) {
            Ok(ArchivedKvOp::Put { partition, item, value }) => {
                self.put_archived(partition.as_slice(), item.as_slice(), value.as_slice())
            }
            Ok(ArchivedKvOp::Get { partition, item })
                if self
                    .entry(partition.as_slice(), item.as_slice())
                    .is_some_and(|e| e.value.len() > room) =>
            {
                KvResult::Error(KvError::ReplyTooLarge)
            }
            Ok(ArchivedKvOp::Batch { .. }) => KvResult::Error(KvError::BadBatch),
            Ok(_) => match KvOp::decode(op) {
                Ok(op) => self.execute(&op),
                Err(e) => KvResult::Error(e),
            },
            Err(_) => KvResult::Error(KvError::Malformed),
        }
    }
}

impl<S: BuildHasher + Clone + Send + Sync + 'static> StateMachine for KvStore<S> {
    fn apply_into(&mut self, op: &[u8], out: &mut BytesMut) {
        let mut scratch = self.scratch.0.take().unwrap_or_default();
        let result = self.run_top(op, &mut scratch);
        scratch.encoder.append(&result, out);
        self.scratch.0 = Some(scratch);
    }

    fn digest(&self) -> u64 {
        // XOR: independent of the maps' iteration order.
        let entries = self.entries().fold(0, |acc, (p, i, e)| acc ^ entry_hash(p, i, e));
        self.data.iter().fold(entries, |acc, (p, part)| acc ^ counter_hash(p, part.counter))
    }

    fn snapshot_len(&self) -> usize {
        // A partition's header is its length-prefixed key, counter and item count; an item's frame
        // repeats the partition key beside its own key and value, each length-prefixed, then a
        // version (`frame_entry`). `bytes` holds each key and value once.
        let framing: usize = self.data.iter().map(|(p, part)| 24 + part.items.len() * (32 + p.len())).sum();
        8 + framing + self.bytes as usize
    }

    fn freeze(&mut self) -> Box<dyn super::FrozenState> {
        // The partitions, shared: the live store copies one only if it writes to it before the
        // image has it.
        let mut partitions: Vec<_> =
            self.data.iter_mut().map(|(p, part)| (p.clone(), part.share())).collect();
        partitions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Box::new(FrozenKv {
            len: self.snapshot_len(),
            count: Some(partitions.len()),
            partitions: partitions.into_iter(),
            partition: Small::new(),
            items: Vec::new(),
            item_at: 0,
        })
    }

    fn snapshot_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        // Sorted: the snapshot is canonical whatever order the maps hold their keys in.
        let mut partitions: Vec<_> = self.data.iter().collect();
        partitions.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (p, part) in partitions {
            frame_partition_header(p, part, out);
            let mut items: Vec<_> = part.items.iter().collect();
            items.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (i, e) in items {
                frame_entry(p, i, e, &mut |b| out.extend_from_slice(b));
            }
        }
        debug_assert_eq!(out.len() - start, self.snapshot_len(), "snapshot_len is the image's length");
    }

    fn approx_bytes(&self) -> u64 {
        self.bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), super::SnapshotError> {
        use super::SnapshotError as E;
        let mut r = super::SnapshotReader::new(snapshot);
        let hasher = self.data.hasher().clone();
        let mut data = HashMap::with_hasher(hasher.clone());
        let (mut len, mut bytes) = (0, 0u64);
        for _ in 0..r.u64()? {
            let partition = Small::from_slice(r.field()?);
            bytes += partition.len() as u64;
            let counter = r.u64()?;
            let mut items = HashMap::with_hasher(hasher.clone());
            for _ in 0..r.u64()? {
                if r.field()? != &partition[..] {
                    return Err(E("kv: an item framed under another partition"));
                }
                let item = Small::from_slice(r.field()?);
                let value = Stored::from_slice(r.field()?);
                let version = r.u64()?;
                bytes += (item.len() + value.len()) as u64;
                if items.insert(item, Entry { value, version }).is_some() {
                    return Err(E("kv: an item twice"));
                }
                len += 1;
            }
            if data.insert(partition, Held::Owned(Partition { counter, items })).is_some() {
                return Err(E("kv: a partition twice"));
            }
        }
        if !r.rest().is_empty() {
            return Err(E("kv: bytes after the last partition"));
        }
        self.data = data;
        self.len = len;
        self.bytes = bytes;
        Ok(())
    }
}

/// A store frozen for a snapshot: the same bytes as [`KvStore::snapshot`], written a partition's
/// items at a time (each partition's items sorted when it is reached).
struct FrozenKv<S> {
    len: usize,
    /// The partition count, until the image starts with it.
    count: Option<usize>,
    /// Sorted by key; each let go (so the live store need not copy it) once written.
    partitions: std::vec::IntoIter<(Small, Arc<Partition<S>>)>,
    /// The partition being written, and its items in order.
    partition: Small,
    items: Vec<(u64, Small, Entry)>,
    item_at: usize,
}

/// A key's first eight bytes as a big-endian number (zero-padded): ordering by it, then by the
/// whole key, is the keys' byte order, with most comparisons one of two integers.
fn sort_prefix(key: &[u8]) -> u64 {
    let mut prefix = [0u8; 8];
    let n = key.len().min(8);
    prefix[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(prefix)
}

impl<S: Clone + Send + Sync> super::FrozenState for FrozenKv<S> {
    fn image_len(&self) -> usize {
        self.len
    }

    fn write_next(&mut self, out: &mut Vec<u8>, budget: usize) -> bool {
        let target = out.len().saturating_add(budget.max(1));
        if let Some(count) = self.count.take() {
            out.extend_from_slice(&(count as u64).to_le_bytes());
        }
        loop {
            while let Some((_, item, entry)) = self.items.get(self.item_at) {
                if out.len() >= target {
                    return false;
                }
                frame_entry(&self.partition, item, entry, &mut |b| out.extend_from_slice(b));
                self.item_at += 1;
            }
            if self.partitions.as_slice().is_empty() {
                return true;
            }
            if out.len() >= target {
                return false;
            }
            let (p, part) = self.partitions.next().expect("checked above");
            frame_partition_header(&p, &part, out);
            self.partition = p;
            // The entries, copied into the buffer the last partition used (a small key or value
            // is inline: no allocation), and the partition let go at once.
            self.items.clear();
            self.items.extend(part.items.iter().map(|(k, e)| (sort_prefix(k), k.clone(), e.clone())));
            drop(part);
            self.items.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            self.item_at = 0;
        }
    }
}

/// Checks the named limits; the first violation wins, in field order.
fn validate(op: &KvOp) -> Result<(), KvError> {
    let key = |k: &[u8]| limit(k, MAX_KEY_BYTES, KvError::KeyTooLarge);
    let val = |v: &[u8]| limit(v, MAX_VALUE_BYTES, KvError::ValueTooLarge);
    if let Some(partition) = op.partition() {
        key(partition)?;
    }
    match op {
        // Each op is checked when it runs (and a nested batch refused then).
        KvOp::Batch { ops } => limit(ops, MAX_BATCH_OPS, KvError::BadBatch),
        KvOp::Get { item, .. } | KvOp::Delete { item, .. } | KvOp::Increment { item, .. } => key(item),
        KvOp::Put { item, value, .. } => key(item).and(val(value)),
        KvOp::Txn { conditions, writes, .. } => {
            if conditions.len().saturating_add(writes.len()) > MAX_TXN_OPS {
                return Err(KvError::TooManyOps);
            }
            for c in conditions {
                key(c.item())?;
                if let Condition::ValueEquals { value, .. } = c {
                    val(value)?;
                }
            }
            for w in writes {
                key(w.item())?;
                if let Write::Put { value, .. } = w {
                    val(value)?;
                }
            }
            Ok(())
        }
    }
}

fn limit<T>(items: &[T], max: usize, err: KvError) -> Result<(), KvError> {
    if items.len() > max {
        Err(err)
    } else {
        Ok(())
    }
}

/// Adds `delta` to an optional decimal i64 (absent = 0), checked.
fn add(current: Option<&[u8]>, delta: i64) -> Result<i64, KvError> {
    let base = match current {
        None => 0,
        Some(v) => parse_int(v).ok_or(KvError::NotAnInteger)?,
    };
    base.checked_add(delta).ok_or(KvError::Overflow)
}

/// A decimal i64 exactly as Redis reads one for `INCR`: an optional `-`, digits without a leading
/// zero (but `0` itself), no sign on zero, no space, in range.
pub fn parse_int(v: &[u8]) -> Option<i64> {
    let digits = v.strip_prefix(b"-").unwrap_or(v);
    let canonical = !digits.is_empty()
        && v.len() <= MAX_INT_DIGITS
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || v == b"0");
    if !canonical {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn int_bytes(n: i64) -> Bytes {
    Bytes::from(n.to_string())
}

/// Length-prefixed framing shared by the digest and the snapshot, so that
/// ("a", "bc") and ("ab", "c") can never produce the same bytes.
/// A partition's header in a snapshot: its key, length-prefixed, its counter and its item count.
fn frame_partition_header<S>(partition: &[u8], part: &Partition<S>, out: &mut Vec<u8>) {
    out.extend_from_slice(&(partition.len() as u64).to_le_bytes());
    out.extend_from_slice(partition);
    out.extend_from_slice(&part.counter.to_le_bytes());
    out.extend_from_slice(&(part.items.len() as u64).to_le_bytes());
}

fn frame_entry(partition: &[u8], item: &[u8], e: &Entry, out: &mut impl FnMut(&[u8])) {
    for field in [partition, item, &e.value[..]] {
        out(&(field.len() as u64).to_le_bytes());
        out(field);
    }
    out(&e.version.to_le_bytes());
}

fn entry_hash(partition: &[u8], item: &[u8], e: &Entry) -> u64 {
    let mut h = Xxh3Default::new();
    frame_entry(partition, item, e, &mut |b| h.update(b));
    h.digest()
}

/// A partition's counter is part of the state: stores that differ only in consumed
/// versions must differ. A counter of 0 (a partition never written) hashes to 0, so
/// a partition that does not exist and one never written are the same state.
fn counter_hash(partition: &[u8], counter: u64) -> u64 {
    if counter == 0 {
        return 0;
    }
    xxh3_64_with_seed(partition, counter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use Condition as C;
    use KvResult as R;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }
    fn put(p: &str, i: &str, v: &str) -> KvOp {
        KvOp::Put { partition: b(p), item: b(i), value: b(v) }
    }
    fn get(p: &str, i: &str) -> KvOp {
        KvOp::Get { partition: b(p), item: b(i) }
    }
    fn del(p: &str, i: &str) -> KvOp {
        KvOp::Delete { partition: b(p), item: b(i) }
    }
    fn incr(p: &str, i: &str, delta: i64) -> KvOp {
        KvOp::Increment { partition: b(p), item: b(i), delta }
    }
    fn txn(conditions: Vec<Condition>, writes: Vec<Write>) -> KvOp {
        KvOp::Txn { partition: b("p"), conditions, writes }
    }
    fn wput(i: &str, v: Bytes) -> Write {
        Write::Put { item: b(i), value: v }
    }
    fn wincr(i: &str, delta: i64) -> Write {
        Write::Increment { item: b(i), delta }
    }
    fn int(n: i64) -> Vec<u8> {
        n.to_string().into_bytes()
    }
    fn err(e: KvError) -> KvResult {
        R::Error(e)
    }
    fn recompute_digest(s: &KvStore) -> u64 {
        let entries = s.entries().fold(0, |acc, (p, i, e)| acc ^ entry_hash(p, i, e));
        s.data.iter().fold(entries, |acc, (p, part)| acc ^ counter_hash(p, part.counter))
    }
    /// Asserts `op` yields `expected` and leaves the store exactly as it was.
    fn assert_no_change(s: &mut KvStore, op: &KvOp, expected: KvResult) {
        let before = s.clone();
        assert_eq!(s.execute(op), expected);
        assert_eq!(*s, before);
        assert_eq!((s.digest(), s.snapshot()), (before.digest(), before.snapshot()));
    }
    fn item(s: &KvStore, i: &str) -> Option<(Vec<u8>, u64)> {
        s.get(b"p", i.as_bytes()).map(|(v, ver)| (v.to_vec(), ver))
    }

    #[test]
    fn put_get_overwrite() {
        let mut s = KvStore::new();
        assert_eq!(s.execute(&get("p", "a")), R::NotFound);
        assert_eq!(s.execute(&put("p", "a", "x")), R::Written { version: 1 });
        assert_eq!(s.execute(&get("p", "a")), R::Value { value: b("x"), version: 1 });
        assert_eq!(s.execute(&put("p", "a", "y")), R::Written { version: 2 });
        assert_eq!(item(&s, "a"), Some((b"y".to_vec(), 2)));
        assert_eq!(s.len(), 1);
        // The same item in another partition is a different key.
        assert_eq!(s.execute(&get("q", "a")), R::NotFound);
    }

    #[test]
    fn versions_count_per_partition_so_partitions_are_independent() {
        let mut s = KvStore::new();
        assert_eq!(s.execute(&put("p", "a", "x")), R::Written { version: 1 });
        assert_eq!(s.execute(&put("q", "a", "x")), R::Written { version: 1 });
        assert_eq!(s.execute(&put("p", "b", "x")), R::Written { version: 2 });
        // A partition emptied by deletes keeps counting: no version is handed out twice.
        s.execute(&del("q", "a"));
        assert_eq!(s.execute(&put("q", "a", "y")), R::Written { version: 3 });
        assert_eq!(s.digest(), recompute_digest(&s));
    }

    #[test]
    fn delete_consumes_version_only_if_existed() {
        let mut s = KvStore::new();
        assert_no_change(&mut s, &del("p", "a"), R::Deleted { existed: false });
        s.execute(&put("p", "a", "x"));
        assert_eq!(s.execute(&del("p", "a")), R::Deleted { existed: true });
        assert!(s.is_empty());
        assert_eq!(s.execute(&put("p", "a", "x")), R::Written { version: 3 });
    }

    #[test]
    fn increment_semantics_and_errors() {
        let mut s = KvStore::new();
        assert_eq!(s.execute(&incr("p", "n", 5)), R::Incremented { value: 5, version: 1 });
        assert_eq!(s.execute(&incr("p", "n", -7)), R::Incremented { value: -2, version: 2 });
        assert_eq!(item(&s, "n").map(|(v, _)| v), Some(int(-2)));
        s.execute(&put("p", "s", "short"));
        assert_no_change(&mut s, &incr("p", "s", 1), err(KvError::NotAnInteger));
        s.execute(&incr("p", "big", i64::MAX));
        assert_no_change(&mut s, &incr("p", "big", 1), err(KvError::Overflow));
    }

    #[test]
    fn a_batch_stops_at_the_read_that_would_take_its_results_past_the_limit() {
        let mut s = KvStore::new();
        let big = Bytes::from(vec![7u8; MAX_VALUE_BYTES]);
        s.execute(&KvOp::Put { partition: b("p"), item: b("big"), value: big.clone() });
        s.execute(&put("p", "small", "x"));
        // Reads of the big value up to the limit, then one more, then a delete and a small read.
        let fit = MAX_RESULT_BYTES / (MAX_VALUE_BYTES + 64);
        let mut ops = vec![get("p", "big"); fit + 1];
        ops.extend([del("p", "small"), get("p", "small")]);
        let batch = KvOp::Batch { ops: ops.iter().map(KvOp::encode).collect() };
        let R::Batched { results } = s.execute(&batch) else { panic!() };
        let results: Vec<_> = results.iter().map(|r| KvResult::decode(r).unwrap()).collect();
        assert!(results[..fit].iter().all(|r| matches!(r, R::Value { value, .. } if *value == big)));
        assert!(results[fit..].iter().all(|r| *r == err(KvError::ReplyTooLarge)), "{:?}", &results[fit..]);
        assert_eq!(
            item(&s, "small").map(|(v, _)| v),
            Some(b"x".to_vec()),
            "nothing after the refused read ran"
        );
        // The log's path gives the same bytes as the typed one.
        let (mut typed, mut logged) = (s.clone(), s.clone());
        assert_eq!(typed.execute(&batch).encode(), logged.apply(&batch.encode()));
    }

    #[test]
    fn integers_are_decimal_as_redis_reads_them() {
        for ok in ["0", "-1", "42", "9223372036854775807", "-9223372036854775808"] {
            assert_eq!(parse_int(ok.as_bytes()), Some(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["", "-", "-0", "01", "+1", " 1", "1 ", "1.5", "9223372036854775808", "abc", "00"] {
            assert_eq!(parse_int(bad.as_bytes()), None, "{bad:?}");
        }
        let mut s = KvStore::new();
        s.execute(&put("p", "n", "10"));
        assert_eq!(s.execute(&incr("p", "n", -11)), R::Incremented { value: -1, version: 2 });
        assert_eq!(item(&s, "n").map(|(v, _)| v), Some(b"-1".to_vec()));
        s.execute(&put("p", "z", "007"));
        assert_no_change(&mut s, &incr("p", "z", 1), err(KvError::NotAnInteger));
    }

    #[test]
    fn batch_runs_in_order_each_with_its_result() {
        let mut s = KvStore::new();
        let ops = [get("p", "a"), put("p", "a", "x"), incr("p", "a", 1), get("p", "a"), del("p", "a")];
        let batch = KvOp::Batch { ops: ops.iter().map(KvOp::encode).collect() };
        let results = match s.execute(&batch) {
            R::Batched { results } => {
                results.iter().map(|r| KvResult::decode(r).unwrap()).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        // The failed increment is the third op's result alone: the put before it stands.
        assert_eq!(
            results,
            vec![
                R::NotFound,
                R::Written { version: 1 },
                err(KvError::NotAnInteger),
                R::Value { value: b("x"), version: 1 },
                R::Deleted { existed: true },
            ]
        );
        // The log's path (archived, in place) gives the same bytes as the typed one.
        let (mut typed, mut logged) = (KvStore::new(), KvStore::new());
        assert_eq!(typed.execute(&batch).encode(), logged.apply(&batch.encode()));
        assert_eq!(typed, logged);
        // A batch in a batch is refused, alone; garbage inside is that op's error.
        let nested = KvOp::Batch { ops: vec![batch.encode(), b("junk"), put("p", "b", "y").encode()] };
        let R::Batched { results } = s.execute(&nested) else { panic!() };
        let results: Vec<_> = results.iter().map(|r| KvResult::decode(r).unwrap()).collect();
        assert_eq!(results, vec![err(KvError::BadBatch), err(KvError::Malformed), R::Written { version: 3 }]);
        let too_many = KvOp::Batch { ops: vec![get("p", "a").encode(); MAX_BATCH_OPS + 1] };
        assert_no_change(&mut s, &too_many, err(KvError::BadBatch));
    }

    #[test]
    fn txn_commits_atomically_with_one_version() {
        let mut s = KvStore::new();
        s.execute(&put("p", "a", "1"));
        let op = txn(
            vec![C::Exists { item: b("a") }, C::Absent { item: b("b") }],
            vec![
                wput("b", b("x")),
                wput("b", b("y")), // last write wins
                wincr("n", 2),
                wincr("n", 3), // increments compound
                Write::Delete { item: b("a") },
                Write::Delete { item: b("never") },
            ],
        );
        assert_eq!(s.execute(&op), R::Committed { version: 2 });
        assert_eq!(item(&s, "b"), Some((b"y".to_vec(), 2)));
        assert_eq!(item(&s, "n"), Some((int(5), 2)));
        assert_eq!((item(&s, "a"), s.len()), (None, 2));
        // An increment reads a put staged earlier in the same txn.
        let op = txn(vec![], vec![wput("b", int_bytes(9)), wincr("b", 1)]);
        assert_eq!(s.execute(&op), R::Committed { version: 3 });
        assert_eq!(item(&s, "b"), Some((int(10), 3)));
    }

    #[test]
    fn txn_later_condition_failure_writes_nothing() {
        let mut s = KvStore::new();
        s.execute(&put("p", "a", "1"));
        let conds = vec![
            C::Exists { item: b("a") },
            C::ValueEquals { item: b("a"), value: b("1") },
            C::ValueEquals { item: b("a"), value: b("2") },
            C::Absent { item: b("a") },
        ];
        let op = txn(conds, vec![wput("z", b("v"))]);
        assert_no_change(&mut s, &op, R::ConditionFailed { index: 2 });
        let absent = txn(vec![C::ValueEquals { item: b("q"), value: b("") }], vec![]);
        assert_no_change(&mut s, &absent, R::ConditionFailed { index: 0 });
        let exists = txn(vec![C::Exists { item: b("q") }], vec![]);
        assert_no_change(&mut s, &exists, R::ConditionFailed { index: 0 });
    }

    #[test]
    fn txn_failing_increment_leaves_state_and_counter() {
        let mut s = KvStore::new();
        s.execute(&put("p", "s", "not-int"));
        let op = txn(vec![], vec![wput("a", b("x")), wincr("s", 1)]);
        assert_no_change(&mut s, &op, err(KvError::NotAnInteger));
        let op = txn(vec![], vec![wincr("n", i64::MIN), wincr("n", -1)]);
        assert_no_change(&mut s, &op, err(KvError::Overflow));
        assert_eq!(s.execute(&put("p", "a", "x")), R::Written { version: 2 });
    }

    #[test]
    fn version_condition_sees_delete_and_reput() {
        let mut s = KvStore::new();
        let v_eq = |version| txn(vec![C::VersionEquals { item: b("a"), version }], vec![]);
        // absent = version 0; a check alone writes nothing and creates no partition
        assert_no_change(&mut s, &v_eq(0), R::Committed { version: 0 });
        s.execute(&put("p", "a", "x")); // version 1
        s.execute(&del("p", "a")); // version 2
        assert_no_change(&mut s, &v_eq(0), R::Committed { version: 2 });
        s.execute(&put("p", "a", "x")); // version 3: same value, new version, no ABA
        assert_no_change(&mut s, &v_eq(1), R::ConditionFailed { index: 0 });
        assert_no_change(&mut s, &v_eq(3), R::Committed { version: 3 });
    }

    #[test]
    fn limits_are_enforced_at_the_boundary() {
        let mut s = KvStore::new();
        let (long, ok) = ("k".repeat(MAX_KEY_BYTES + 1), "k".repeat(MAX_KEY_BYTES));
        let big = Bytes::from(vec![0; MAX_VALUE_BYTES + 1]);
        let key_err = err(KvError::KeyTooLarge);
        for op in [put(&long, "a", "v"), get("p", &long), del("p", &long), incr("p", &long, 1)] {
            assert_no_change(&mut s, &op, key_err.clone());
        }
        let op = txn(vec![], vec![Write::Delete { item: b(&long) }]);
        assert_no_change(&mut s, &op, key_err.clone());
        assert_no_change(&mut s, &txn(vec![C::Absent { item: b(&long) }], vec![]), key_err);
        let val_err = err(KvError::ValueTooLarge);
        let op = KvOp::Put { partition: b("p"), item: b("a"), value: big.clone() };
        assert_no_change(&mut s, &op, val_err.clone());
        assert_no_change(&mut s, &txn(vec![], vec![wput("a", big.clone())]), val_err.clone());
        let cond = C::ValueEquals { item: b("a"), value: big };
        assert_no_change(&mut s, &txn(vec![cond], vec![]), val_err);
        let n = MAX_TXN_OPS / 2;
        let many = |extra| txn(vec![C::Absent { item: b("x") }; n], vec![wincr("x", 1); n + extra]);
        assert_no_change(&mut s, &many(1), err(KvError::TooManyOps));
        assert_eq!(s.execute(&many(0)), R::Committed { version: 1 });
        let value = Bytes::from(vec![0; MAX_VALUE_BYTES]);
        let op = KvOp::Put { partition: b(&ok), item: b(&ok), value };
        // Another partition than the txn's: its own first version.
        assert_eq!(s.execute(&op), R::Written { version: 1 });
    }

    #[test]
    fn apply_decodes_executes_and_rejects_garbage() {
        let mut s = KvStore::new();
        let r = KvResult::decode(&s.apply(&put("p", "a", "x").encode()));
        assert_eq!(r, Ok(R::Written { version: 1 }));
        for garbage in [&b""[..], b"\x00", b"definitely not an rkyv archive"] {
            assert_no_change(&mut s, &get("p", "a"), R::Value { value: b("x"), version: 1 });
            let before = s.clone();
            assert_eq!(KvResult::decode(&s.apply(garbage)), Ok(err(KvError::Malformed)));
            assert_eq!(s, before);
        }
    }

    #[test]
    fn equal_histories_give_equal_digests_and_snapshots() {
        let ops = [put("p", "a", "1"), incr("q", "n", 3), del("p", "a"), put("p", "b", "2")];
        let (mut x, mut y) = (KvStore::new(), KvStore::new());
        for op in &ops {
            x.execute(op);
            y.apply(&op.encode());
        }
        assert_eq!((x.digest(), x.snapshot()), (y.digest(), y.snapshot()));
        assert_eq!(x.digest(), recompute_digest(&x));
        // Framing keeps (a, bc) and (ab, c) apart.
        let (mut u, mut v) = (KvStore::new(), KvStore::new());
        u.execute(&put("a", "bc", "v"));
        v.execute(&put("ab", "c", "v"));
        assert_ne!((u.digest(), u.snapshot()), (v.digest(), v.snapshot()));
        // The counter is part of the state: same entries, different history.
        u.execute(&del("a", "bc"));
        assert_ne!(u.digest(), KvStore::new().digest());
    }

    /// Puts enough keys that two hash keys give the maps different iteration orders.
    fn many_writes() -> Vec<KvOp> {
        let mut ops = Vec::new();
        for i in 0..300 {
            ops.push(put(&format!("p{}", i % 40), &format!("item-{i}"), &format!("v{i}")));
            if i % 7 == 0 {
                ops.push(incr(&format!("p{}", i % 40), "n", i));
            }
            if i % 11 == 0 {
                ops.push(del(&format!("p{}", i % 40), &format!("item-{}", i / 2)));
            }
        }
        ops
    }

    #[test]
    fn stores_under_one_key_agree_and_restore_each_other() {
        let key = HashKey::from_bytes(*b"one cluster key!");
        let (mut x, mut y) = (KvStore::with_key(key), KvStore::with_key(key));
        for op in many_writes() {
            assert_eq!(x.apply(&op.encode()), y.apply(&op.encode()));
        }
        assert_eq!((x.digest(), x.snapshot()), (y.digest(), y.snapshot()));
        let mut restored = KvStore::with_key(key);
        assert_eq!(restored.restore(&x.snapshot()), Ok(()));
        assert_eq!(restored, x);
        assert_eq!((restored.digest(), restored.snapshot()), (x.digest(), x.snapshot()));
        // It goes on taking writes as the original does.
        let next = put("p3", "after", "v");
        assert_eq!(restored.apply(&next.encode()), x.apply(&next.encode()));
        assert_eq!(restored.snapshot(), x.snapshot());
    }

    #[test]
    fn the_digest_and_snapshot_do_not_depend_on_the_hash_key() {
        let keys =
            [HashKey::UNKEYED, HashKey::from_bytes([1; 16]), HashKey::from_bytes(*b"another key.....")];
        let stores: Vec<KvStore> = keys
            .iter()
            .map(|&key| {
                let mut s = KvStore::with_key(key);
                for op in many_writes() {
                    s.apply(&op.encode());
                }
                s
            })
            .collect();
        // The test has teeth: the keys do change the maps' iteration order.
        let order = |s: &KvStore| s.data.keys().cloned().collect::<Vec<_>>();
        assert_ne!(order(&stores[0]), order(&stores[1]));
        assert_ne!(order(&stores[1]), order(&stores[2]));
        for s in &stores[1..] {
            assert_eq!(s, &stores[0]);
            assert_eq!((s.digest(), s.snapshot()), (stores[0].digest(), stores[0].snapshot()));
            assert_eq!(s.digest(), recompute_digest(s));
        }
        // A snapshot taken under one key restores under another.
        let mut other = KvStore::with_key(keys[2]);
        assert_eq!(other.restore(&stores[1].snapshot()), Ok(()));
        assert_eq!(other.snapshot(), stores[1].snapshot());
        // The digest's hashes are unkeyed and fixed: pinned, so a keyed hash cannot creep in.
        let e = Entry { value: Stored::from_slice(b"v"), version: 3 };
        assert_eq!(entry_hash(b"p", b"i", &e), xxhash_rust::xxh3::xxh3_64(&framed(b"p", b"i", &e)));
        assert_eq!(counter_hash(b"p", 9), xxh3_64_with_seed(b"p", 9));
    }

    fn framed(p: &[u8], i: &[u8], e: &Entry) -> Vec<u8> {
        let mut out = Vec::new();
        frame_entry(p, i, e, &mut |b| out.extend_from_slice(b));
        out
    }

    fn pick(keys: &'static [&'static str]) -> BoxedStrategy<Bytes> {
        proptest::sample::select(keys).prop_map(b).boxed()
    }
    fn any_bytes(max: usize) -> BoxedStrategy<Bytes> {
        vec(any::<u8>(), 0..max).prop_map(Bytes::from).boxed()
    }
    fn value() -> BoxedStrategy<Bytes> {
        let ints = prop_oneof![any::<i64>(), -3i64..3].prop_map(int_bytes);
        // Some longer than 24 bytes: stored shared, not inline.
        prop_oneof![any_bytes(10), ints, any_bytes(60)].boxed()
    }
    fn delta() -> BoxedStrategy<i64> {
        prop_oneof![4 => -5i64..5, 1 => any::<i64>()].boxed()
    }
    fn op(part: BoxedStrategy<Bytes>, item: BoxedStrategy<Bytes>) -> impl Strategy<Value = KvOp> {
        let i = || item.clone();
        let cond = prop_oneof![
            i().prop_map(|item| C::Exists { item }),
            i().prop_map(|item| C::Absent { item }),
            (i(), 0u64..12).prop_map(|(item, version)| C::VersionEquals { item, version }),
            (i(), value()).prop_map(|(item, value)| C::ValueEquals { item, value }),
        ];
        let write = prop_oneof![
            (i(), value()).prop_map(|(item, value)| Write::Put { item, value }),
            i().prop_map(|item| Write::Delete { item }),
            (i(), delta()).prop_map(|(item, delta)| Write::Increment { item, delta }),
        ];
        let txn = (vec(cond, 0..4), vec(write, 0..4));
        (part, i(), value(), delta(), 0..5u8, txn).prop_map(|(partition, item, value, delta, k, t)| match k {
            0 => KvOp::Get { partition, item },
            1 => KvOp::Put { partition, item, value },
            2 => KvOp::Delete { partition, item },
            3 => KvOp::Increment { partition, item, delta },
            _ => KvOp::Txn { partition, conditions: t.0, writes: t.1 },
        })
    }
    /// Items whose first eight bytes tie (the image sorts by them first), shorter than eight,
    /// ending in zero bytes, empty.
    const KEYS_SHARING_PREFIXES: [&str; 9] =
        ["", "a", "a\0", "abcdefgh", "abcdefgh\0", "abcdefgh1", "abcdefgh12", "abcdefgi", "abcdefg\u{ff}"];
    fn small_ops() -> impl Strategy<Value = Vec<KvOp>> {
        vec(op(pick(&["p0", "p1"]), pick(&["a", "b", "c"])), 0..60)
    }
    fn result() -> impl Strategy<Value = KvResult> {
        use KvError::*;
        let e = [
            Malformed,
            KeyTooLarge,
            ValueTooLarge,
            TooManyOps,
            NotAnInteger,
            Overflow,
            BadBatch,
            ReplyTooLarge,
        ];
        prop_oneof![
            (any_bytes(32), any::<u64>()).prop_map(|(value, version)| R::Value { value, version }),
            Just(R::NotFound),
            any::<u64>().prop_map(|version| R::Written { version }),
            (any::<i64>(), any::<u64>()).prop_map(|(value, version)| R::Incremented { value, version }),
            any::<bool>().prop_map(|existed| R::Deleted { existed }),
            any::<u64>().prop_map(|version| R::Committed { version }),
            any::<u32>().prop_map(|index| R::ConditionFailed { index }),
            proptest::sample::select(e.to_vec()).prop_map(R::Error),
            vec(any_bytes(16), 0..4).prop_map(|results| R::Batched { results }),
        ]
    }

    proptest! {
        #[test]
        fn apply_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..256)) {
            let mut s = KvStore::new();
            prop_assert!(KvResult::decode(&s.apply(&bytes)).is_ok());
        }

        #[test]
        fn apply_never_panics_on_corrupted_ops(
            op in op(any_bytes(6), any_bytes(6)),
            flips in vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
        ) {
            let mut bytes = op.encode().to_vec();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let mut s = KvStore::new();
            prop_assert!(KvResult::decode(&s.apply(&bytes)).is_ok());
            prop_assert_eq!(s.digest(), recompute_digest(&s));
        }

        #[test]
        fn replicas_converge(ops in small_ops()) {
            let (mut typed, mut encoded) = (KvStore::new(), KvStore::new());
            for op in &ops {
                let want = typed.execute(op);
                prop_assert_eq!(KvResult::decode(&encoded.apply(&op.encode())), Ok(want));
            }
            prop_assert_eq!(typed.snapshot(), encoded.snapshot());
            prop_assert_eq!(typed.digest(), encoded.digest());
        }

        #[test]
        fn incremental_digest_matches_recomputed(ops in small_ops()) {
            let mut s = KvStore::new();
            for op in &ops {
                s.execute(op);
                prop_assert_eq!(s.digest(), recompute_digest(&s));
                prop_assert_eq!(s.len(), s.entries().count());
                let held: usize = s.data.keys().map(|p| p.len()).sum::<usize>()
                    + s.entries().map(|(_, i, e)| i.len() + e.value.len()).sum::<usize>();
                prop_assert_eq!(s.approx_bytes(), held as u64);
            }
        }

        #[test]
        fn stores_under_different_keys_hold_the_same_state(ops in small_ops(), k in any::<[u8; 16]>()) {
            let (mut x, mut y) = (KvStore::new(), KvStore::with_key(HashKey::from_bytes(k)));
            for op in &ops {
                prop_assert_eq!(x.apply(&op.encode()), y.apply(&op.encode()));
            }
            prop_assert_eq!((x.digest(), x.snapshot()), (y.digest(), y.snapshot()));
        }

        #[test]
        fn a_restored_snapshot_is_the_same_store(ops in small_ops()) {
            let mut s = KvStore::new();
            for op in &ops {
                s.execute(op);
            }
            let mut restored = KvStore::new();
            prop_assert_eq!(restored.restore(&s.snapshot()), Ok(()));
            prop_assert_eq!(restored.snapshot(), s.snapshot());
            prop_assert_eq!(restored.digest(), s.digest());
            prop_assert_eq!(restored.len(), s.len());
            prop_assert_eq!(restored.approx_bytes(), s.approx_bytes());
        }

        #[test]
        fn a_frozen_store_writes_the_snapshot_of_when_it_froze_in_slices_of_any_size(
            before in small_ops(), after in small_ops(), budget in 1usize..200,
        ) {
            let mut s = KvStore::new();
            for op in &before {
                s.execute(op);
            }
            let expected = s.snapshot();
            let mut frozen = s.freeze();
            let mut after = after.iter();
            let mut image = Vec::new();
            let mut slices = 0;
            // The live store moves on between slices (a write takes back a partition the image
            // has not reached yet, or one it has); the image must not see it.
            while !frozen.write_next(&mut image, budget) {
                if let Some(op) = after.next() {
                    s.execute(op);
                }
                slices += 1;
                prop_assert!(slices <= expected.len(), "write_next makes progress");
            }
            prop_assert_eq!(frozen.image_len(), expected.len());
            prop_assert_eq!(image, expected);
        }

        #[test]
        fn a_frozen_store_orders_items_as_the_snapshot_does_whatever_their_length(
            ops in vec(op(pick(&["p0"]), pick(&KEYS_SHARING_PREFIXES)), 0..80),
        ) {
            let mut s = KvStore::new();
            for op in &ops {
                s.execute(op);
            }
            let mut image = Vec::new();
            prop_assert!(s.freeze().write_next(&mut image, usize::MAX));
            prop_assert_eq!(image, s.snapshot());
        }

        #[test]
        fn restore_never_panics_on_damaged_snapshots(ops in small_ops(), cut in any::<prop::sample::Index>()) {
            let mut s = KvStore::new();
            for op in &ops {
                s.execute(op);
            }
            let bytes = s.snapshot();
            let _ = KvStore::new().restore(&bytes[..cut.index(bytes.len() + 1)]);
        }

        #[test]
        fn op_round_trips(op in op(any_bytes(16), any_bytes(16))) {
            prop_assert_eq!(KvOp::decode(&op.encode()), Ok(op));
        }

        #[test]
        fn result_round_trips(r in result()) {
            prop_assert_eq!(KvResult::decode(&r.encode()), Ok(r));
        }
    }
}
