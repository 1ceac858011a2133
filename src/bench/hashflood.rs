//! `autopaxos bench hashflood`: what a client that floods the KV store with colliding keys costs a
//! replica, under the fixed FxHash the store used before and under its keyed maps, and what the keyed
//! maps cost on ordinary keys.
//!
//! The flood: rustc-hash 2's `hash_bytes` of a 16-byte key is `multiply_mix(SEED1 ^ first 8 bytes,
//! SEED2 ^ last 8 bytes) ^ 16`, and `multiply_mix(0, y)` is 0, so every key that starts with SEED1's
//! bytes hashes alike whatever its last 8 bytes. Each such `SET` (a key without a `{hash tag}` is its
//! own partition) walks the one probe sequence all the others sit on. Every figure here comes from
//! the real apply path: encoded `Put`s through `StateMachine::apply`, as a replica runs them.
//!
//! The FxHash store exists here only, for the comparison; replicas are built with keyed maps.

use super::capacities::Machine;
use super::tune::this_machine;
use crate::protocol::state_machine::kv::{KvOp, KvStore};
use crate::protocol::state_machine::{HashKey, StateMachine};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use std::hash::BuildHasher;
use std::time::Instant;

/// rustc-hash 2.1's first seed word: a key whose first 8 bytes are these zeroes its hash's left input.
const FX_SEED1: u64 = 0x243f_6a88_85a3_08d3;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct HashfloodOptions {
    /// Puts per case.
    pub keys: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Times each case runs (each on a fresh store); the report keeps the median.
    pub rounds: usize,
}

/// One case: a set of keys applied to a fresh store with one hasher.
#[derive(Debug, Clone, Serialize)]
pub struct HashfloodCase {
    /// `crafted` (all colliding under FxHash) or `random`.
    pub keys: &'static str,
    /// `fxhash` (the old fixed hash) or `siphash13-keyed` (the store's maps now).
    pub hasher: &'static str,
    /// Median over the rounds of the time to apply every put, seconds.
    pub apply_s: f64,
    /// Puts applied per second (from `apply_s`).
    pub ops_per_sec: f64,
    /// The fastest round, seconds: the cost with the least interference from other work on the
    /// machine.
    pub best_s: f64,
    /// Every round's time, seconds.
    pub rounds_s: Vec<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HashfloodReport {
    /// Puts per case.
    pub keys: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Crafted-keys FxHash, crafted-keys keyed, random-keys FxHash, random-keys keyed.
    pub cases: Vec<HashfloodCase>,
    /// The machine it ran on.
    pub machine: Machine,
}

/// `n` distinct 16-byte keys that all have one FxHash: SEED1's bytes, then 8 ASCII digits (no
/// braces, so the gateway makes each its own partition, as any client could send them).
pub fn crafted_keys(n: usize) -> Vec<Bytes> {
    assert!(n <= 100_000_000, "8 digits name at most 10^8 keys");
    (0..n)
        .map(|i| {
            let mut key = FX_SEED1.to_le_bytes().to_vec();
            key.extend_from_slice(format!("{i:08}").as_bytes());
            Bytes::from(key)
        })
        .collect()
}

/// `n` distinct random 16-byte keys, without braces.
fn random_keys(n: usize) -> Vec<Bytes> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x4a54);
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let key: [u8; 16] = std::array::from_fn(|_| rng.gen_range(b'0'..=b'z'));
        if !key.contains(&b'{') && seen.insert(key) {
            keys.push(Bytes::copy_from_slice(&key));
        }
    }
    keys
}

/// The hash a store's FxHash map gives `key` (as a partition key, hashed as a byte slice).
pub fn fx_hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The maps' hasher of one case.
#[derive(Clone, Copy)]
enum Hasher {
    /// The fixed FxHash the store used before.
    Fx,
    /// The store's maps now.
    Keyed(HashKey),
}

impl Hasher {
    fn name(self) -> &'static str {
        match self {
            Hasher::Fx => "fxhash",
            Hasher::Keyed(_) => "siphash13-keyed",
        }
    }

    /// A fresh store, boxed as a replica holds its machine.
    fn store(self) -> Box<dyn StateMachine> {
        match self {
            Hasher::Fx => Box::new(KvStore::with_hasher(FxBuildHasher)),
            Hasher::Keyed(key) => Box::new(KvStore::with_key(key)),
        }
    }
}

/// Applies `ops` to a fresh store, timed; returns the seconds and the final digest.
fn timed(hasher: Hasher, ops: &[Bytes]) -> (f64, u64) {
    let mut machine = hasher.store();
    let start = Instant::now();
    for op in ops {
        std::hint::black_box(machine.apply(op));
    }
    let seconds = start.elapsed().as_secs_f64();
    (seconds, machine.digest())
}

/// Runs the four cases and prints a line for each on stderr as it ends.
pub fn run(opts: &HashfloodOptions) -> HashfloodReport {
    assert!(opts.keys > 0 && opts.rounds > 0, "at least one key and one round");
    let crafted = crafted_keys(opts.keys);
    // The figure must measure a flood: every crafted key collides under the old hash.
    let first = fx_hash(&crafted[0]);
    assert!(crafted.iter().all(|k| fx_hash(k) == first), "the crafted keys do not all collide under FxHash");
    let random = random_keys(opts.keys);
    // A fresh secret, as a cluster's would be: the attacker does not know it.
    let key = HashKey::from_bytes(rand::random());
    let value = Bytes::from(vec![b'v'; opts.value_size]);
    let mut cases = Vec::new();
    for (name, keys) in [("crafted", &crafted), ("random", &random)] {
        // What the gateway makes of `SET key value` for a key without a hash tag.
        let ops: Vec<Bytes> = keys
            .iter()
            .map(|k| KvOp::Put { partition: k.clone(), item: Bytes::new(), value: value.clone() }.encode())
            .collect();
        let mut digests = Vec::new();
        for hasher in [Hasher::Fx, Hasher::Keyed(key)] {
            let mut rounds_s = Vec::new();
            for _ in 0..opts.rounds {
                let (seconds, digest) = timed(hasher, &ops);
                rounds_s.push(seconds);
                digests.push(digest);
            }
            let mut sorted = rounds_s.clone();
            sorted.sort_by(f64::total_cmp);
            let (apply_s, best_s) = (sorted[sorted.len() / 2], sorted[0]);
            let ops_per_sec = opts.keys as f64 / apply_s;
            eprintln!("{name} keys, {}: {apply_s:.4} s, {ops_per_sec:.0} puts/s", hasher.name());
            let hasher = hasher.name();
            cases.push(HashfloodCase { keys: name, hasher, apply_s, ops_per_sec, best_s, rounds_s });
        }
        // Both stores did the same work: the same state.
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "the two hashers' stores disagree");
    }
    HashfloodReport { keys: opts.keys, value_size: opts.value_size, cases, machine: this_machine() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::state_machine::hash_key::KeyedHasher;

    #[test]
    fn crafted_keys_collide_under_fxhash_but_not_under_the_keyed_hash() {
        let keys = crafted_keys(2_000);
        let distinct = |hashes: Vec<u64>| hashes.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(keys.iter().all(|k| k.len() == 16));
        assert_eq!(keys.iter().collect::<std::collections::HashSet<_>>().len(), keys.len());
        assert_eq!(distinct(keys.iter().map(|k| fx_hash(k)).collect()), 1);
        let keyed = KeyedHasher::new(HashKey::from_bytes([0x5a; 16]));
        assert_eq!(distinct(keys.iter().map(|k| keyed.hash_one(&k[..])).collect()), keys.len());
    }

    #[test]
    fn a_small_flood_runs_every_case_on_the_same_state() {
        let report = run(&HashfloodOptions { keys: 300, value_size: 16, rounds: 1 });
        let names: Vec<_> = report.cases.iter().map(|c| (c.keys, c.hasher)).collect();
        assert_eq!(
            names,
            [
                ("crafted", "fxhash"),
                ("crafted", "siphash13-keyed"),
                ("random", "fxhash"),
                ("random", "siphash13-keyed")
            ]
        );
        assert!(report.cases.iter().all(|c| c.rounds_s.len() == 1 && c.ops_per_sec > 0.0));
    }
}
