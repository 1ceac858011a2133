//! Replicated state machines driven by the chosen Paxos log.
//!
//! Every replica runs the same machine over the same log, so all code here must
//! be a pure function of (state, op): never do I/O, read a clock, use randomness,
//! seeded hashing or floats, never use `unsafe`, and never panic on any input.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::de::Pool;
use rkyv::rancor::{Error, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

pub mod kv;
pub mod noop;

pub use kv::KvStore;
pub use noop::NoopStateMachine;

/// A deterministic replicated state machine.
pub trait StateMachine: Send {
    /// Applies one encoded operation and returns the encoded result. Never panics; deterministic.
    fn apply(&mut self, op: &[u8]) -> Bytes;
    /// Digest of the whole state, maintained incrementally (O(1) to read). Equal states have equal digests.
    fn digest(&self) -> u64;
    /// Canonical byte image of the whole state: equal states give byte-identical snapshots.
    fn snapshot(&self) -> Vec<u8>;
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

/// Creates a fresh (empty) state machine of the given kind.
pub fn new_state_machine(kind: StateMachineKind) -> Box<dyn StateMachine> {
    match kind {
        StateMachineKind::Kv => Box::new(KvStore::new()),
        StateMachineKind::Noop => Box::new(NoopStateMachine::new()),
    }
}

/// Buffer alignment handed to rkyv. Our archived types need at most 8 (u64/i64);
/// 16 matches `AlignedVec`'s default so any future field type is covered too.
const DECODE_ALIGN: usize = 16;

/// Validates and deserializes an rkyv archive from bytes of arbitrary alignment.
///
/// Network buffers are sliced at arbitrary offsets, and rkyv rejects (rather than
/// tolerates) misaligned archives, so we copy into an aligned buffer only when needed.
pub(crate) fn decode_aligned<T>(bytes: &[u8]) -> Result<T, Error>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, Error>> + Deserialize<T, Strategy<Pool, Error>>,
{
    if bytes.as_ptr() as usize % DECODE_ALIGN == 0 {
        return rkyv::from_bytes::<T, Error>(bytes);
    }
    let mut aligned = AlignedVec::<DECODE_ALIGN>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, Error>(&aligned)
}

/// Serializes `value` with rkyv.
///
/// Serializing plain owned data into memory cannot fail in practice; should it
/// ever, we return empty bytes (which decode as malformed) instead of panicking,
/// because this runs inside `apply`.
pub(crate) fn encode_rkyv<T>(value: &T) -> Bytes
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, Error>>,
{
    rkyv::to_bytes::<Error>(value).map(|v| Bytes::from(v.into_vec())).unwrap_or_default()
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
        let kv = new_state_machine(StateMachineKind::Kv);
        assert_eq!(kv.digest(), KvStore::new().digest());
        let noop = new_state_machine(StateMachineKind::Noop);
        assert_eq!(noop.snapshot(), 0u64.to_le_bytes().to_vec());
    }

    #[test]
    fn decode_aligned_accepts_misaligned_input() {
        let encoded = encode_rkyv(&(7u64, 9i64));
        for offset in 0..DECODE_ALIGN {
            let mut buf = AlignedVec::<DECODE_ALIGN>::new();
            buf.resize(offset, 0);
            buf.extend_from_slice(&encoded);
            let got = decode_aligned::<(u64, i64)>(&buf[offset..]).map_err(|e| e.to_string());
            assert_eq!(got, Ok((7, 9)));
        }
    }
}
