//! Replicated state machines driven by the chosen Paxos log.
//!
//! Every replica runs the same machine over the same log, so all code here must
//! be a pure function of (state, op): never do I/O, read a clock, use randomness
//! or floats, never let a result depend on a hash map's iteration order (the KV
//! store's maps are keyed by a secret, [`HashKey`]), never use `unsafe`, and never
//! panic on any input.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};

pub mod hash_key;
pub mod kv;
pub mod noop;

pub use hash_key::HashKey;
pub use kv::KvStore;
pub use noop::NoopStateMachine;

/// A deterministic replicated state machine.
pub trait StateMachine: Send {
    /// Applies one encoded operation and appends its encoded result to `result`, which may already hold
    /// other results (a replica encodes a whole batch's results into one buffer, one allocation).
    /// Never panics; deterministic.
    fn apply_into(&mut self, op: &[u8], result: &mut BytesMut);
    /// Applies one encoded operation and returns the encoded result.
    fn apply(&mut self, op: &[u8]) -> Bytes {
        let mut result = BytesMut::new();
        self.apply_into(op, &mut result);
        result.freeze()
    }
    /// Digest of the whole state: equal states have equal digests. It may walk the whole state; it is
    /// for checkers and reports, never the hot path (keeping it up to date per write cost ~5%).
    fn digest(&self) -> u64;
    /// Canonical byte image of the whole state: equal states give byte-identical snapshots.
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.snapshot_len());
        self.snapshot_into(&mut out);
        out
    }
    /// Appends [`StateMachine::snapshot`]'s image to `out`. Callers reserve
    /// [`StateMachine::snapshot_len`] first: a state of a GB is then one allocation and one pass,
    /// not a growing buffer copied over and over.
    fn snapshot_into(&self, out: &mut Vec<u8>);
    /// The exact length of [`StateMachine::snapshot`]'s image, without building it.
    fn snapshot_len(&self) -> usize;
    /// The state as it is now, to write out as [`StateMachine::snapshot`]'s image in slices while
    /// the live state moves on. The default builds the whole image here; a big state should
    /// copy only what makes the later slices independent of it (cheap, shared values).
    fn freeze(&mut self) -> Box<dyn FrozenState> {
        Box::new(Built { image: self.snapshot(), written: false })
    }
    /// Replaces the whole state with the one `snapshot` (from [`StateMachine::snapshot`]) describes.
    /// Bytes that are not such an image are an error (the state is then unspecified), never a panic.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
    /// About how many bytes the state holds (a snapshot weighs about this plus framing); cheap.
    fn approx_bytes(&self) -> u64;
}

/// A state frozen by [`StateMachine::freeze`]: its snapshot image, written out a slice at a time.
pub trait FrozenState: Send {
    /// The image's exact length.
    fn image_len(&self) -> usize;
    /// Appends the next part of the image to `out`: about `budget` bytes (more when one unit, an
    /// item say, is larger). True once the whole image is written.
    fn write_next(&mut self, out: &mut Vec<u8>, budget: usize) -> bool;
}

/// [`StateMachine::freeze`]'s default: the image, built at once.
struct Built {
    image: Vec<u8>,
    written: bool,
}

impl FrozenState for Built {
    fn image_len(&self) -> usize {
        self.image.len()
    }

    fn write_next(&mut self, out: &mut Vec<u8>, _budget: usize) -> bool {
        if !self.written {
            out.extend_from_slice(&self.image);
            self.written = true;
        }
        true
    }
}

/// A snapshot that cannot be restored: truncated or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot is not a valid state image: {0}")]
pub struct SnapshotError(pub &'static str);

/// Reads little-endian fields off a snapshot, refusing to run past its end.
pub(crate) struct SnapshotReader<'a> {
    bytes: &'a [u8],
}

impl<'a> SnapshotReader<'a> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        SnapshotReader { bytes }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.bytes.len() {
            return Err(SnapshotError("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next little-endian u64.
    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A length-prefixed field.
    pub(crate) fn field(&mut self) -> Result<&'a [u8], SnapshotError> {
        let len = self.u64()?;
        self.take(usize::try_from(len).map_err(|_| SnapshotError("length out of range"))?)
    }

    /// Bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Which state machine a replica runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateMachineKind {
    /// The partitioned key-value store ([`KvStore`]).
    Kv,
    /// A machine that ignores its ops and only counts them ([`NoopStateMachine`]).
    Noop,
}

/// Error returned when parsing an unknown [`StateMachineKind`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state machine kind {0:?} (expected \"kv\" or \"noop\")")]
pub struct UnknownStateMachineKind(pub String);

impl FromStr for StateMachineKind {
    type Err = UnknownStateMachineKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kv" => Ok(Self::Kv),
            "noop" => Ok(Self::Noop),
            other => Err(UnknownStateMachineKind(other.to_owned())),
        }
    }
}

impl fmt::Display for StateMachineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kv => "kv",
            Self::Noop => "noop",
        })
    }
}

/// Creates a fresh (empty) state machine of the given kind; a KV store keys its maps with `key`.
pub fn new_state_machine(kind: StateMachineKind, key: HashKey) -> Box<dyn StateMachine> {
    match kind {
        StateMachineKind::Kv => Box::new(KvStore::with_key(key)),
        StateMachineKind::Noop => Box::new(NoopStateMachine::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parses_and_displays() {
        for kind in [StateMachineKind::Kv, StateMachineKind::Noop] {
            assert_eq!(kind.to_string().parse::<StateMachineKind>(), Ok(kind));
        }
        assert!("paxos".parse::<StateMachineKind>().is_err());
    }

    #[test]
    fn factory_builds_empty_machines() {
        let kv = new_state_machine(StateMachineKind::Kv, HashKey::from_bytes([3; 16]));
        assert_eq!(kv.digest(), KvStore::new().digest());
        let noop = new_state_machine(StateMachineKind::Noop, HashKey::from_bytes([3; 16]));
        assert_eq!(noop.snapshot(), 0u64.to_le_bytes().to_vec());
    }
}
