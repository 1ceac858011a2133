//! The secret key of the KV store's hash maps, and the keyed hasher it drives.
//!
//! Clients choose the store's keys. Under a fixed, public hash (FxHash, which the store used before)
//! a client can compute keys that all hash alike and turn every insert into a walk along one probe
//! sequence: N such puts cost O(N²) on every replica at once (`autopaxos bench hashflood` measures
//! it). With a secret key the hash of a key is unknown to clients, so they cannot aim at a bucket.
//!
//! The hash is SipHash-1-3 (the `siphasher` crate): a keyed PRF designed against exactly this
//! attack, the one std's own maps use, with a fixed and documented output, so every replica keyed
//! alike hashes alike. Faster keyed hashes claim less: foldhash does not claim to resist an attacker
//! who can see timings, and ahash's resistance is argued, not proven, and may change between its
//! versions. What SipHash costs was measured (bench/README.md, `hashflood`): about 40 ns per put of
//! a fresh key in the apply path alone (ahash and foldhash saved about 25 of those), and nothing
//! beyond the noise on `bench replica`. Not worth a weaker hash.
//!
//! Nothing in the state depends on the maps' iteration order (the digest combines entries with XOR,
//! the snapshot sorts), so replicas would agree even under different keys; the cluster still gives
//! every replica the same key, part of what a replica is built from like its state machine kind.
//! This file never derives a key.

use std::fmt;
use std::hash::BuildHasher;

use siphasher::sip::SipHasher13;

/// A secret 128-bit key for the KV store's hash maps, the same on every replica of a cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashKey([u8; 16]);

impl HashKey {
    /// No secret: the all-zero key, for tests and benchmarks of a store alone. A client that knows
    /// the key can flood the maps again: a cluster's replicas use the cluster secret's.
    pub const UNKEYED: HashKey = HashKey([0; 16]);

    /// The key `bytes` make.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        HashKey(bytes)
    }

    /// The two SipHash key words.
    fn words(&self) -> (u64, u64) {
        let (k0, k1) = self.0.split_at(8);
        (
            u64::from_le_bytes(k0.try_into().expect("8 bytes")),
            u64::from_le_bytes(k1.try_into().expect("8 bytes")),
        )
    }
}

/// Redacted: a key must not reach a log through a `{:?}` of what holds it.
impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// Builds SipHash-1-3 hashers under a [`HashKey`]. It has no `Default` on purpose: a map that
/// hashes with it can only be built from a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyedHasher {
    k0: u64,
    k1: u64,
}

impl KeyedHasher {
    /// Hashers under `key`.
    pub fn new(key: HashKey) -> Self {
        let (k0, k1) = key.words();
        KeyedHasher { k0, k1 }
    }
}

impl fmt::Debug for KeyedHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHasher(..)")
    }
}

impl BuildHasher for KeyedHasher {
    type Hasher = SipHasher13;

    #[inline]
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_decides_the_hash_and_is_never_printed() {
        let a = KeyedHasher::new(HashKey::from_bytes([1; 16]));
        let b = KeyedHasher::new(HashKey::from_bytes([2; 16]));
        // The same key hashes alike in every hasher built from it (every replica).
        assert_eq!(a.hash_one(b"key"), KeyedHasher::new(HashKey::from_bytes([1; 16])).hash_one(b"key"));
        assert_ne!(a.hash_one(b"key"), b.hash_one(b"key"));
        assert_eq!(format!("{:?} {a:?}", HashKey::from_bytes([9; 16])), "HashKey(..) KeyedHasher(..)");
    }

    #[test]
    fn it_is_siphash_1_3_under_the_key_words() {
        // A key's bytes are the SipHash key as two little-endian words: a key derived elsewhere
        // (from the cluster secret) means what its bytes say.
        let mut bytes = [0u8; 16];
        bytes[0] = 1;
        bytes[8] = 2;
        let ours = KeyedHasher::new(HashKey::from_bytes(bytes)).hash_one(b"abc");
        let mut sip = SipHasher13::new_with_keys(1, 2);
        std::hash::Hash::hash(b"abc", &mut sip);
        assert_eq!(ours, std::hash::Hasher::finish(&sip));
    }
}
