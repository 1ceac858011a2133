//! Linearizability checker for client histories recorded by the deterministic simulator.
//!
//! The simulator records, per client, when each operation was invoked and when (if ever) its
//! reply arrived. This module decides whether that history can be explained by some sequential
//! execution of a model (a [`SequentialSpec`]) that respects real-time order: the
//! Wing & Gong search ("Testing and verifying concurrent objects", JPDC 1993) with Lowe's
//! memoization of already-explored (linearized-set, model-state) configurations
//! ("Testing for linearizability", Concurrency and Computation 2017), in the "entry list"
//! formulation popularised by Porcupine and Knossos.
//!
//! What it must never do:
//! - report `Linearizable` for a history that is not (the only exception is a 64-bit collision of
//!   `state_hash` values in the memo cache, which can wrongly prune a branch; see [`check`]);
//! - recurse: the search is an explicit stack, so histories of thousands of operations cannot
//!   overflow the thread stack;
//! - depend on anything but its inputs: no randomness, clocks or thread-dependent hashing, so a
//!   simulator seed always reproduces the same verdict;
//! - silently accept a malformed history (a reply stamped before its invocation panics instead,
//!   because it means the recorder is broken, and searching it would give a meaningless verdict).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A sequential specification: the model the history must be explainable by.
pub trait SequentialSpec: Clone {
    /// An operation a client can invoke.
    type Op: std::fmt::Debug;
    /// What an operation returns to the client.
    type Ret: std::fmt::Debug + PartialEq;
    /// Applies `op` to the model and returns what a correct system answers.
    fn step(&mut self, op: &Self::Op) -> Self::Ret;
    /// Hash of the model state for memoization. Equal states MUST give equal hashes.
    fn state_hash(&self) -> u64;
}

/// One operation of a client history.
///
/// Stamps are a global total order of events (strictly increasing, unique per event). Operation
/// `a` happens before `b` iff `a` returned and its return stamp is `< b.invoked_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<Op, Ret> {
    /// The client that issued the operation (informational; the checker does not rely on it).
    pub client: u64,
    /// The operation itself.
    pub op: Op,
    /// Stamp of the invocation event.
    pub invoked_at: u64,
    /// Stamp and value of the reply; `None` = pending (no reply seen): it may take effect at any
    /// point after invocation, or never, and its return value is unconstrained.
    pub returned: Option<(u64, Ret)>,
}

/// An operation that was a candidate to be linearized right after the longest prefix found, with
/// what the model would have answered there (`Debug`-formatted, so [`Verdict`] is not generic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Index of the operation in the checked history.
    pub index: usize,
    /// What the model returns if the operation is applied right after the longest prefix.
    pub model_would_return: String,
    /// What the client observed; `None` if the operation is pending.
    pub observed: Option<String>,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some sequential execution of the model explains every completed operation.
    Linearizable,
    /// No linearization exists. The fields describe where the search got furthest.
    NotLinearizable {
        /// The longest linearizable prefix found, as op indices in linearization order.
        longest_prefix: Vec<usize>,
        /// The ops that could have come next after that prefix; none led to a full
        /// linearization (either the model disagrees with the observed reply, or every
        /// continuation failed later).
        blocked: Vec<Blocked>,
    },
    /// The search hit `max_explored` steps before reaching an answer.
    Inconclusive {
        /// Number of search steps performed.
        explored: u64,
    },
}

/// FxHash-style hasher: fast and, unlike `RandomState`, identical in every run.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

/// Memo keys are the linearized-op bitset with the model's state hash appended as a last word,
/// so a lookup can borrow the working key as `&[u64]` and only new entries allocate.
type Memo = HashSet<Box<[u64]>, BuildHasherDefault<FxHasher>>;

const HEAD: usize = 0;

/// The doubly linked list of call/return entries in stamp order, with index links.
/// Node 0 is the head sentinel, the last node is the tail sentinel.
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Operation index of each node (unused for sentinels).
    op: Vec<usize>,
    /// For a call node, the node of its return entry; `usize::MAX` for return nodes/sentinels.
    ret_node: Vec<usize>,
}

impl Entries {
    fn is_call(&self, node: usize) -> bool {
        self.ret_node[node] != usize::MAX
    }
    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }
    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }
    /// Removes an op (call and return entry) once it is linearized.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret_node[call]);
    }
    /// Undoes `lift`, in reverse order so the dancing-links restore is exact.
    fn unlift(&mut self, call: usize) {
        self.relink(self.ret_node[call]);
        self.relink(call);
    }
}

/// Checks whether `history` is linearizable with respect to the model starting at `initial`.
///
/// The search explores at most `max_explored` steps (one step = examining one list entry:
/// trying an op or backtracking) and returns [`Verdict::Inconclusive`] when it runs out.
/// Memoization trusts [`SequentialSpec::state_hash`]: two different states with colliding
/// hashes and the same linearized set may wrongly prune a branch.
///
/// # Panics
/// If an operation's reply is stamped before its invocation (a broken recorder).
pub fn check<S: SequentialSpec>(
    initial: &S,
    history: &[Operation<S::Op, S::Ret>],
    max_explored: u64,
) -> Verdict {
    let n = history.len();
    // Events sorted by (stamp, kind, op). Calls sort before returns with equal stamps (so equal
    // stamps mean "concurrent", matching the strict `<` of happens-before). Pending ops return
    // "at infinity" after every real event: they may be linearized anywhere after invocation.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in history.iter().enumerate() {
        events.push((o.invoked_at, 0, i));
        match &o.returned {
            Some((at, _)) => {
                assert!(
                    *at >= o.invoked_at,
                    "op {i} returned at {at} before its invocation at {}",
                    o.invoked_at
                );
                events.push((*at, 1, i));
            }
            None => events.push((u64::MAX, 2, i)),
        }
    }
    events.sort_unstable();
    let tail = events.len() + 1;
    let mut list = Entries {
        next: (1..=tail).chain([tail]).collect(),
        prev: (0..=tail).map(|x| x.saturating_sub(1)).collect(),
        op: vec![usize::MAX; tail + 1],
        ret_node: vec![usize::MAX; tail + 1],
    };
    let mut call_node = vec![0; n];
    for (pos, &(_, kind, i)) in events.iter().enumerate() {
        let node = pos + 1;
        list.op[node] = i;
        if kind == 0 {
            call_node[i] = node;
        } else {
            list.ret_node[call_node[i]] = node;
        }
    }

    let words = n.div_ceil(64);
    let mut key = vec![0u64; words + 1];
    let mut memo = Memo::default();
    let mut stack: Vec<(usize, S)> = Vec::new();
    let mut state = initial.clone();
    // Success = every *completed* op linearized; pending ops left over are the "never took
    // effect" case (or, equivalently, take effect after everything else).
    let mut remaining = history.iter().filter(|o| o.returned.is_some()).count();
    let mut best: Vec<usize> = Vec::new();
    let mut explored = 0u64;
    let mut cur = list.next[HEAD];
    loop {
        if remaining == 0 {
            return Verdict::Linearizable;
        }
        if explored >= max_explored {
            return Verdict::Inconclusive { explored };
        }
        explored += 1;
        if list.is_call(cur) {
            let i = list.op[cur];
            let mut next_state = state.clone();
            let got = next_state.step(&history[i].op);
            let fits = match &history[i].returned {
                Some((_, observed)) => *observed == got,
                None => true,
            };
            if fits {
                key[i / 64] |= 1 << (i % 64);
                key[words] = next_state.state_hash();
                // Lowe: a (linearized set, state) already explored cannot succeed now either.
                if !memo.contains(&key[..]) {
                    memo.insert(key.clone().into_boxed_slice());
                    stack.push((cur, std::mem::replace(&mut state, next_state)));
                    list.lift(cur);
                    remaining -= usize::from(history[i].returned.is_some());
                    cur = list.next[HEAD];
                    continue;
                }
                key[i / 64] &= !(1 << (i % 64));
            }
            cur = list.next[cur];
        } else {
            // A return entry: its op is not linearized and every op that could precede it has
            // been tried, so this prefix is a dead end. (Also covers the tail sentinel, which is
            // unreachable while a completed op remains because its return entry comes first.)
            if stack.len() > best.len() {
                // Recorded at backtrack time, not on every push, so success costs no copying.
                best = stack.iter().map(|(c, _)| list.op[*c]).collect();
            }
            let Some((call, prev_state)) = stack.pop() else {
                let blocked = blocked_after(initial, history, &best);
                return Verdict::NotLinearizable { longest_prefix: best, blocked };
            };
            let i = list.op[call];
            key[i / 64] &= !(1 << (i % 64));
            state = prev_state;
            list.unlift(call);
            remaining += usize::from(history[i].returned.is_some());
            cur = list.next[call];
        }
    }
}

/// Describes the ops that were candidates right after `prefix`: not yet linearized and invoked
/// no later than the earliest reply among the completed ops that remain.
fn blocked_after<S: SequentialSpec>(
    initial: &S,
    history: &[Operation<S::Op, S::Ret>],
    prefix: &[usize],
) -> Vec<Blocked> {
    let mut state = initial.clone();
    let mut done = vec![false; history.len()];
    for &i in prefix {
        state.step(&history[i].op);
        done[i] = true;
    }
    let first_reply = (0..history.len())
        .filter(|&i| !done[i])
        .filter_map(|i| history[i].returned.as_ref().map(|(at, _)| *at))
        .min()
        .unwrap_or(u64::MAX);
    (0..history.len())
        .filter(|&i| !done[i] && history[i].invoked_at <= first_reply)
        .map(|i| Blocked {
            index: i,
            model_would_return: format!("{:?}", state.clone().step(&history[i].op)),
            observed: history[i].returned.as_ref().map(|(_, r)| format!("{r:?}")),
        })
        .collect()
}

/// Checks a history object by object: linearizability is local (P-compositional), so the
/// history is linearizable iff each sub-history of ops with the same `key` is.
///
/// Parts are checked in key order, each from `initial` with its own `max_explored` budget.
/// Returns the first part's failure (indices refer to the original `history`); otherwise
/// `Inconclusive` (summing the explored steps of the inconclusive parts) if any part was;
/// otherwise `Linearizable`.
pub fn check_partitioned<S: SequentialSpec, K: Ord>(
    initial: &S,
    history: Vec<Operation<S::Op, S::Ret>>,
    key: impl Fn(&S::Op) -> K,
    max_explored: u64,
) -> Verdict {
    // Original indices and ops of each part; BTreeMap so parts are checked in a fixed order.
    let mut parts: BTreeMap<K, (Vec<usize>, Vec<_>)> = BTreeMap::new();
    for (i, o) in history.into_iter().enumerate() {
        let part = parts.entry(key(&o.op)).or_default();
        part.0.push(i);
        part.1.push(o);
    }
    let mut inconclusive: Option<u64> = None;
    for (original, ops) in parts.values() {
        match check(initial, ops, max_explored) {
            Verdict::Linearizable => {}
            Verdict::Inconclusive { explored } => {
                *inconclusive.get_or_insert(0) += explored;
            }
            Verdict::NotLinearizable { longest_prefix, blocked } => {
                return Verdict::NotLinearizable {
                    longest_prefix: longest_prefix.iter().map(|&i| original[i]).collect(),
                    blocked: blocked.into_iter().map(|b| Blocked { index: original[b.index], ..b }).collect(),
                };
            }
        }
    }
    match inconclusive {
        Some(explored) => Verdict::Inconclusive { explored },
        None => Verdict::Linearizable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::hash::{DefaultHasher, Hash};

    const BUDGET: u64 = 50_000_000;

    /// A register with read, write and compare-and-set.
    #[derive(Clone)]
    struct Reg(i64);
    #[derive(Debug, Clone, Copy)]
    enum RegOp {
        Read,
        Write(i64),
        Cas(i64, i64),
    }
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum RegRet {
        Val(i64),
        Ok,
        Cas(bool),
    }
    impl SequentialSpec for Reg {
        type Op = RegOp;
        type Ret = RegRet;
        fn step(&mut self, op: &RegOp) -> RegRet {
            match *op {
                RegOp::Read => RegRet::Val(self.0),
                RegOp::Write(v) => {
                    self.0 = v;
                    RegRet::Ok
                }
                RegOp::Cas(from, to) => {
                    let hit = self.0 == from;
                    if hit {
                        self.0 = to;
                    }
                    RegRet::Cas(hit)
                }
            }
        }
        fn state_hash(&self) -> u64 {
            self.0 as u64
        }
    }

    /// A FIFO queue; `Deq` on empty returns `None`, `Enq` returns `None`.
    #[derive(Clone)]
    struct Queue(VecDeque<i64>);
    #[derive(Debug)]
    enum QOp {
        Enq(i64),
        Deq,
    }
    impl SequentialSpec for Queue {
        type Op = QOp;
        type Ret = Option<i64>;
        fn step(&mut self, op: &QOp) -> Option<i64> {
            match op {
                QOp::Enq(v) => {
                    self.0.push_back(*v);
                    None
                }
                QOp::Deq => self.0.pop_front(),
            }
        }
        fn state_hash(&self) -> u64 {
            let mut h = DefaultHasher::new();
            self.0.hash(&mut h);
            h.finish()
        }
    }

    /// Registers keyed by a small integer, for `check_partitioned`.
    #[derive(Clone, Default)]
    struct Kv(BTreeMap<u8, Reg>);
    impl SequentialSpec for Kv {
        type Op = (u8, RegOp);
        type Ret = RegRet;
        fn step(&mut self, (k, op): &(u8, RegOp)) -> RegRet {
            self.0.entry(*k).or_insert(Reg(0)).step(op)
        }
        fn state_hash(&self) -> u64 {
            let mut h = DefaultHasher::new();
            self.0.iter().for_each(|(k, r)| (k, r.0).hash(&mut h));
            h.finish()
        }
    }

    fn done<O, R>(client: u64, op: O, at: u64, ret_at: u64, ret: R) -> Operation<O, R> {
        Operation { client, op, invoked_at: at, returned: Some((ret_at, ret)) }
    }
    fn pending<O, R>(client: u64, op: O, at: u64) -> Operation<O, R> {
        Operation { client, op, invoked_at: at, returned: None }
    }
    fn bad(v: &Verdict) -> bool {
        matches!(v, Verdict::NotLinearizable { .. })
    }
    fn reg(h: &[Operation<RegOp, RegRet>]) -> Verdict {
        check(&Reg(0), h, BUDGET)
    }
    use RegOp::{Cas, Read, Write};
    use RegRet::{Ok as Done, Val};

    #[test]
    fn known_good_register_histories() {
        assert_eq!(reg(&[]), Verdict::Linearizable);
        let sequential = [
            done(1, Write(1), 1, 2, Done),
            done(1, Read, 3, 4, Val(1)),
            done(2, Write(2), 5, 6, Done),
            done(2, Read, 7, 8, Val(2)),
        ];
        assert_eq!(reg(&sequential), Verdict::Linearizable);
        // Two overlapping writes; overlapping reads may see them in either order.
        for (a, b) in [(1, 2), (2, 1), (1, 1), (0, 2)] {
            let h = [
                done(1, Write(1), 1, 6, Done),
                done(2, Write(2), 2, 7, Done),
                done(3, Read, 3, 8, Val(a)),
                done(4, Read, 4, 9, Val(b)),
            ];
            assert_eq!(reg(&h), Verdict::Linearizable, "reads {a} {b}");
        }
        // A pending write whose effect is seen, and one never seen.
        let seen = [pending(1, Write(1), 1), done(2, Read, 2, 3, Val(1))];
        assert_eq!(reg(&seen), Verdict::Linearizable);
        let unseen = [pending(1, Write(1), 1), done(2, Read, 2, 3, Val(0))];
        assert_eq!(reg(&unseen), Verdict::Linearizable);
        // Exactly one of two racing CASes from the same value succeeds.
        let cas = [done(1, Cas(0, 1), 1, 4, RegRet::Cas(true)), done(2, Cas(0, 2), 2, 5, RegRet::Cas(false))];
        assert_eq!(reg(&cas), Verdict::Linearizable);
    }

    #[test]
    fn known_bad_register_histories() {
        let stale = [done(1, Write(1), 1, 2, Done), done(2, Read, 3, 4, Val(0))];
        match reg(&stale) {
            Verdict::NotLinearizable { longest_prefix, blocked } => {
                assert_eq!(longest_prefix, vec![0]);
                assert_eq!(blocked.len(), 1);
                assert_eq!(blocked[0].index, 1);
                assert_eq!(blocked[0].model_would_return, "Val(1)");
                assert_eq!(blocked[0].observed.as_deref(), Some("Val(0)"));
            }
            v => panic!("{v:?}"),
        }
        let never_written = [done(1, Write(1), 1, 4, Done), done(2, Read, 2, 3, Val(7))];
        assert!(matches!(reg(&never_written), Verdict::NotLinearizable { .. }));
        // r1 sees the new value, then r2 (invoked after r1 returned) sees the old one.
        let disagree =
            [done(1, Write(1), 1, 10, Done), done(2, Read, 2, 3, Val(1)), done(3, Read, 4, 5, Val(0))];
        assert!(bad(&reg(&disagree)));
        let cas_twice =
            [done(1, Cas(0, 1), 1, 4, RegRet::Cas(true)), done(2, Cas(0, 2), 2, 5, RegRet::Cas(true))];
        assert!(bad(&reg(&cas_twice)));
        // A pending write, once observed, cannot be un-observed.
        let flicker = [pending(1, Write(1), 1), done(2, Read, 2, 3, Val(1)), done(2, Read, 4, 5, Val(0))];
        assert!(bad(&reg(&flicker)));
    }

    /// Queue histories after Herlihy & Wing 1990, Fig. 1 (a)-(d): A and B each enqueue and dequeue.
    #[test]
    fn herlihy_wing_queue_figures() {
        use QOp::{Deq, Enq};
        let q = |h: &[Operation<QOp, Option<i64>>]| check(&Queue(VecDeque::new()), h, BUDGET);
        // (a) A's long E(x) overlaps B's E(y) and D(x); A then gets y. Acceptable.
        let a = [
            done(1, Enq(1), 1, 6, None),
            done(2, Enq(2), 2, 3, None),
            done(2, Deq, 4, 5, Some(1)),
            done(1, Deq, 7, 8, Some(2)),
        ];
        assert_eq!(q(&a), Verdict::Linearizable);
        // (b) E(x) completes before E(y) starts, yet y is dequeued first. Not acceptable.
        let b = [done(1, Enq(1), 1, 2, None), done(2, Enq(2), 3, 5, None), done(1, Deq, 4, 6, Some(2))];
        assert!(bad(&q(&b)));
        // (c) The enqueues overlap, so y-then-x is a valid order. Acceptable.
        let c = [
            done(1, Enq(1), 1, 3, None),
            done(2, Enq(2), 2, 4, None),
            done(1, Deq, 5, 7, Some(2)),
            done(2, Deq, 6, 8, Some(1)),
        ];
        assert_eq!(q(&c), Verdict::Linearizable);
        // (d) y is dequeued twice. Not acceptable.
        let d = [
            done(1, Enq(1), 1, 3, None),
            done(2, Enq(2), 2, 4, None),
            done(1, Deq, 5, 7, Some(2)),
            done(2, Deq, 6, 8, Some(2)),
        ];
        assert!(bad(&q(&d)));
    }

    #[test]
    fn budget_exhaustion_is_inconclusive() {
        let h = [done(1, Write(1), 1, 2, Done), done(2, Read, 3, 4, Val(1))];
        assert_eq!(check(&Reg(0), &h, 1), Verdict::Inconclusive { explored: 1 });
    }

    #[test]
    fn partitioned_reports_original_indices() {
        let h = vec![
            done(1, (0, Write(1)), 1, 2, Done),
            done(1, (1, Write(5)), 3, 4, Done),
            done(2, (0, Read), 5, 6, Val(1)),
            done(2, (1, Read), 7, 8, Val(0)), // stale on key 1
        ];
        let key = |op: &(u8, RegOp)| op.0;
        match check_partitioned(&Kv::default(), h.clone(), key, BUDGET) {
            Verdict::NotLinearizable { longest_prefix, blocked } => {
                assert_eq!(longest_prefix, vec![1]);
                assert_eq!(blocked.iter().map(|b| b.index).collect::<Vec<_>>(), vec![3]);
            }
            v => panic!("{v:?}"),
        }
        let mut fixed = h;
        fixed[3].returned = Some((8, Val(5)));
        assert_eq!(check_partitioned(&Kv::default(), fixed, key, BUDGET), Verdict::Linearizable);
    }

    /// SplitMix64: a tiny deterministic generator so tests need no extra dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    /// Runs `clients` clients against a real sequential register: each op is invoked, later
    /// applied at a random linearization point, later answered, with phases of different clients
    /// interleaved at random. With `leave_pending`, in-flight ops at the end get no reply (some
    /// applied, some not). The result is linearizable by construction.
    fn gen_history(
        seed: u64,
        ops: usize,
        clients: u64,
        values: u64,
        cas: bool,
        leave_pending: bool,
    ) -> Vec<Operation<RegOp, RegRet>> {
        let mut rng = Rng(seed);
        let mut model = Reg(0);
        let mut hist: Vec<Operation<RegOp, RegRet>> = Vec::new();
        // Per client: None = idle, Some((op, None)) = invoked, Some((op, Some(ret))) = applied.
        let mut phase: Vec<Option<(usize, Option<RegRet>)>> = vec![None; clients as usize];
        let mut stamp = 0;
        loop {
            let started = hist.len() == ops;
            if started && (leave_pending || phase.iter().all(Option::is_none)) {
                return hist;
            }
            let c = rng.below(clients) as usize;
            stamp += 1;
            phase[c] = match phase[c] {
                None if started => None,
                None => {
                    let v = rng.below(values) as i64;
                    let op = match rng.below(if cas { 3 } else { 2 }) {
                        0 => Read,
                        1 => Write(v),
                        _ => Cas(rng.below(values) as i64, v),
                    };
                    hist.push(pending(c as u64, op, stamp));
                    Some((hist.len() - 1, None))
                }
                Some((i, None)) => Some((i, Some(model.step(&hist[i].op)))),
                Some((i, Some(ret))) => {
                    hist[i].returned = Some((stamp, ret));
                    None
                }
            };
        }
    }

    /// Exhaustive reference: try every real-time-respecting order (tiny histories only).
    fn brute(state: &Reg, h: &[Operation<RegOp, RegRet>], used: &mut Vec<bool>) -> bool {
        if (0..h.len()).all(|i| used[i] || h[i].returned.is_none()) {
            return true;
        }
        for i in 0..h.len() {
            // `i` may go next only if no unused op happens before it.
            let blocked = (0..h.len())
                .any(|j| !used[j] && matches!(h[j].returned, Some((at, _)) if at < h[i].invoked_at));
            let mut next = state.clone();
            let got = next.step(&h[i].op);
            if used[i] || blocked || h[i].returned.as_ref().is_some_and(|(_, r)| *r != got) {
                continue;
            }
            used[i] = true;
            let ok = brute(&next, h, used);
            used[i] = false;
            if ok {
                return true;
            }
        }
        false
    }

    /// Arbitrary small histories (mostly not linearizable) from random stamps and replies.
    fn arbitrary_history(seed: u64, n: usize) -> Vec<Operation<RegOp, RegRet>> {
        let mut rng = Rng(seed);
        let mut stamps: Vec<u64> = (1..=2 * n as u64).collect();
        for i in (1..stamps.len()).rev() {
            stamps.swap(i, rng.below(i as u64 + 1) as usize);
        }
        (0..n)
            .map(|i| {
                let (a, b) = (stamps[2 * i].min(stamps[2 * i + 1]), stamps[2 * i].max(stamps[2 * i + 1]));
                let v = rng.below(3) as i64;
                let (op, ret) = match rng.below(3) {
                    0 => (Read, Val(rng.below(3) as i64)),
                    1 => (Write(v), Done),
                    _ => (Cas(rng.below(3) as i64, v), RegRet::Cas(rng.below(2) == 0)),
                };
                let returned = (rng.below(4) != 0).then_some((b, ret));
                Operation { client: i as u64, op, invoked_at: a, returned }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn generated_histories_are_linearizable(seed: u64, ops in 0usize..80, clients in 1u64..7, values in 1u64..5, cas: bool, leave_pending: bool) {
            let h = gen_history(seed, ops, clients, values, cas, leave_pending);
            prop_assert_eq!(check(&Reg(0), &h, BUDGET), Verdict::Linearizable);
        }

        /// The checker agrees with exhaustive search on arbitrary tiny histories.
        #[test]
        fn agrees_with_brute_force(seed: u64, n in 0usize..7) {
            let h = arbitrary_history(seed, n);
            let expected = brute(&Reg(0), &h, &mut vec![false; n]);
            prop_assert_eq!(check(&Reg(0), &h, BUDGET) == Verdict::Linearizable, expected);
        }

        /// In a sequential history the linearization is forced, so any changed read is wrong.
        #[test]
        fn corrupted_sequential_read_is_caught(seed: u64, ops in 1usize..80, values in 1u64..5, pick: usize, delta in 1i64..4) {
            let mut h = gen_history(seed, ops, 1, values, true, false);
            let reads: Vec<usize> = (0..h.len()).filter(|&i| matches!(h[i].op, Read)).collect();
            prop_assume!(!reads.is_empty());
            let i = reads[pick % reads.len()];
            if let Some((at, Val(v))) = h[i].returned {
                h[i].returned = Some((at, Val(v + delta)));
            }
            prop_assert!(bad(&check(&Reg(0), &h, BUDGET)));
        }

        /// With concurrency, a read of a value nobody ever wrote is still impossible.
        #[test]
        fn read_of_unwritten_value_is_caught(seed: u64, ops in 1usize..80, clients in 1u64..7, pick: usize) {
            let mut h = gen_history(seed, ops, clients, 4, true, false);
            let reads: Vec<usize> = (0..h.len()).filter(|&i| matches!(h[i].op, Read)).collect();
            prop_assume!(!reads.is_empty());
            let i = reads[pick % reads.len()];
            h[i].returned = h[i].returned.map(|(at, _)| (at, Val(99)));
            prop_assert!(bad(&check(&Reg(0), &h, BUDGET)));
        }
    }

    #[test]
    fn long_sequential_history_needs_no_recursion() {
        let h = gen_history(7, 5_000, 1, 3, true, false);
        assert_eq!(check(&Reg(0), &h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn performance_1000_ops_8_clients() {
        let h = gen_history(42, 1_000, 8, 5, false, true);
        let start = std::time::Instant::now();
        let verdict = check(&Reg(0), &h, BUDGET);
        println!("1000-op 8-client register history checked in {:?}", start.elapsed());
        assert_eq!(verdict, Verdict::Linearizable);
    }
}
