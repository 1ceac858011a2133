//! What the simulated clients ask for: a mix of reads, writes, deletes, increments and contended
//! conditional transactions over a small key set (so that clients collide), and the KV model that
//! the linearizability checker explains their history with.

use super::linearizability::SequentialSpec;
use crate::protocol::state_machine::kv::{Condition, KvOp, KvResult, KvStore, Write};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

const PARTITIONS: [&str; 2] = ["p0", "p1"];
const ITEMS: [&str; 3] = ["a", "b", "c"];
/// Only incremented (and read), so that increments meet integers.
const COUNTER: &str = "n";

/// One client's generator. It remembers versions it has seen so its conditional writes are the
/// compare-and-set kind real users write, and they race with other clients'.
#[derive(Debug)]
pub struct Workload {
    client: u64,
    rng: ChaCha8Rng,
    seen_versions: BTreeMap<(&'static str, &'static str), u64>,
    /// Also send `Batch` ops, as the RESP gateway does with a pipeline.
    batches: bool,
}

impl Workload {
    /// A generator for `client`, drawing from `rng`; with `batches`, one request in five is a
    /// `Batch` of two to four ops on one partition (a gateway's pipeline, or `GETDEL`, `SET ... GET`).
    /// Without, it draws exactly as it always did, so recorded seeds replay unchanged.
    pub fn new(client: u64, rng: ChaCha8Rng, batches: bool) -> Self {
        Workload { client, rng, seen_versions: BTreeMap::new(), batches }
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.gen_range(0..from.len())]
    }

    /// The operation for request `seq`. Written values are unique per (client, seq), which keeps
    /// histories unambiguous for the checker.
    pub fn next_op(&mut self, seq: u64) -> KvOp {
        let partition = self.pick(&PARTITIONS);
        if self.batches && self.rng.gen_bool(0.2) {
            let n = self.rng.gen_range(2..=4);
            let ops = (0..n).map(|i| self.op_in(partition, format!("c{}s{seq}.{i}", self.client)).encode());
            return KvOp::Batch { ops: ops.collect() };
        }
        self.op_in(partition, format!("c{}s{}", self.client, seq))
    }

    /// One op on `partition`, writing `value` if it writes.
    fn op_in(&mut self, partition: &'static str, value: String) -> KvOp {
        let item = self.pick(&ITEMS);
        match self.rng.gen_range(0..100) {
            0..=24 => KvOp::Get { partition: partition.into(), item: item.into() },
            25..=39 => KvOp::Put { partition: partition.into(), item: item.into(), value: value.into() },
            40..=47 => KvOp::Delete { partition: partition.into(), item: item.into() },
            48..=57 => KvOp::Increment {
                partition: partition.into(),
                item: COUNTER.into(),
                delta: self.rng.gen_range(1..=5),
            },
            58..=61 => KvOp::Get { partition: partition.into(), item: COUNTER.into() },
            _ => self.conditional_write(partition, item, value),
        }
    }

    fn conditional_write(&mut self, partition: &'static str, item: &'static str, value: String) -> KvOp {
        let condition = match self.rng.gen_range(0..4) {
            0 => Condition::Exists { item: item.into() },
            1 => Condition::Absent { item: item.into() },
            _ => {
                let version = self.seen_versions.get(&(partition, item)).copied().unwrap_or(1);
                Condition::VersionEquals { item: item.into(), version }
            }
        };
        let mut writes = vec![Write::Put { item: item.into(), value: value.clone().into() }];
        if self.rng.gen_bool(0.5) {
            let other = self.pick(&ITEMS);
            writes.push(if self.rng.gen_bool(0.5) {
                Write::Put { item: other.into(), value: format!("{value}+").into() }
            } else {
                Write::Delete { item: other.into() }
            });
        }
        KvOp::Txn { partition: partition.into(), conditions: vec![condition], writes }
    }

    /// Learns from a result: versions read become the expectations of later conditional writes.
    pub fn observe(&mut self, op: &KvOp, result: &KvResult) {
        if let (KvOp::Batch { ops }, KvResult::Batched { results }) = (op, result) {
            for (op, result) in ops.iter().zip(results) {
                if let (Ok(op), Ok(result)) = (KvOp::decode(op), KvResult::decode(result)) {
                    self.observe(&op, &result);
                }
            }
            return;
        }
        if let (KvOp::Get { partition, item }, KvResult::Value { version, .. }) = (op, result) {
            let key = PARTITIONS.iter().find(|p| p.as_bytes() == &partition[..]);
            let item_key = ITEMS.iter().find(|i| i.as_bytes() == &item[..]);
            if let (Some(p), Some(i)) = (key, item_key) {
                self.seen_versions.insert((p, i), *version);
            }
        }
    }
}

/// The KV store as a sequential specification: the very state machine the replicas run.
#[derive(Clone)]
pub struct KvModel(pub KvStore);

impl SequentialSpec for KvModel {
    type Op = KvOp;
    type Ret = KvResult;

    fn step(&mut self, op: &KvOp) -> KvResult {
        self.0.execute(op)
    }

    fn state_hash(&self) -> u64 {
        use crate::protocol::state_machine::StateMachine;
        self.0.digest()
    }
}
