//! What the fault harness checks: each key is a register that clients read, write and
//! compare-and-set over RESP (`GET`, `SET`, `SET ... IFEQ`). Values are unique per write (a client
//! number and a counter), so a read names the one write it saw. The history is checked per key with
//! the simulator's Wing-Gong-Lowe checker ([`crate::sim::linearizability`]).

use crate::sim::linearizability::{check_partitioned, Operation, SequentialSpec, Verdict};

/// One operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// `GET key`.
    Read {
        /// The key's index.
        key: u64,
    },
    /// `SET key value`.
    Write {
        /// The key's index.
        key: u64,
        /// The value written (unique in the run).
        value: u64,
    },
    /// `SET key to IFEQ from`.
    Cas {
        /// The key's index.
        key: u64,
        /// The value the key must hold.
        from: u64,
        /// The value it then takes.
        to: u64,
    },
}

impl RegisterOp {
    /// The key the operation is on.
    pub fn key(&self) -> u64 {
        match *self {
            RegisterOp::Read { key } | RegisterOp::Write { key, .. } | RegisterOp::Cas { key, .. } => key,
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterRet {
    /// A read's value (`None`: the key does not exist).
    Value(Option<u64>),
    /// A write's `OK`.
    Ok,
    /// A compare-and-set's outcome: `OK` (true) or nil (false).
    Cas(bool),
}

/// The sequential model of one key.
#[derive(Debug, Clone, Default)]
pub struct Register(pub Option<u64>);

impl SequentialSpec for Register {
    type Op = RegisterOp;
    type Ret = RegisterRet;

    fn step(&mut self, op: &RegisterOp) -> RegisterRet {
        match *op {
            RegisterOp::Read { .. } => RegisterRet::Value(self.0),
            RegisterOp::Write { value, .. } => {
                self.0 = Some(value);
                RegisterRet::Ok
            }
            RegisterOp::Cas { from, to, .. } => {
                // `SET ... IFEQ` never creates a key.
                let hit = self.0 == Some(from);
                if hit {
                    self.0 = Some(to);
                }
                RegisterRet::Cas(hit)
            }
        }
    }

    fn state_hash(&self) -> u64 {
        self.0.map_or(u64::MAX, |v| v.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// One recorded operation: invoked, and completed or not (`returned: None` is indeterminate: a
/// timeout or a lost connection, which may or may not have taken effect).
pub type Recorded = Operation<RegisterOp, RegisterRet>;

/// Checks a history key by key, each within `budget` search steps.
pub fn check(history: Vec<Recorded>, budget: u64) -> Verdict {
    check_partitioned(&Register::default(), history, RegisterOp::key, budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, op: RegisterOp, invoked_at: u64, ret: Option<(u64, RegisterRet)>) -> Recorded {
        Operation { client, op, invoked_at, returned: ret }
    }

    #[test]
    fn a_good_history_with_an_indeterminate_write_passes() {
        use RegisterOp::{Read, Write};
        use RegisterRet::*;
        let history = vec![
            op(1, Write { key: 0, value: 10 }, 1, Some((2, Ok))),
            // Timed out: it may have happened, later.
            op(2, Write { key: 0, value: 20 }, 3, None),
            op(1, Read { key: 0 }, 4, Some((5, Value(Some(10))))),
            op(3, RegisterOp::Cas { key: 0, from: 10, to: 30 }, 6, Some((7, Cas(true)))),
            op(1, Read { key: 0 }, 8, Some((9, Value(Some(20))))), // the indeterminate write, after the cas
            op(1, Read { key: 1 }, 10, Some((11, Value(None)))),
        ];
        assert_eq!(check(history, 1_000_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_a_lost_write_and_a_cas_on_nothing_are_caught() {
        use RegisterOp::{Read, Write};
        use RegisterRet::*;
        let stale = vec![
            op(1, Write { key: 0, value: 10 }, 1, Some((2, Ok))),
            op(2, Write { key: 0, value: 20 }, 3, Some((4, Ok))),
            op(1, Read { key: 0 }, 5, Some((6, Value(Some(10))))),
        ];
        assert!(matches!(check(stale, 1_000_000), Verdict::NotLinearizable { .. }));
        let lost = vec![
            op(1, Write { key: 0, value: 10 }, 1, Some((2, Ok))),
            op(1, Read { key: 0 }, 3, Some((4, Value(None)))),
        ];
        assert!(matches!(check(lost, 1_000_000), Verdict::NotLinearizable { .. }));
        let created = vec![op(1, RegisterOp::Cas { key: 0, from: 1, to: 2 }, 1, Some((2, Cas(true))))];
        assert!(matches!(check(created, 1_000_000), Verdict::NotLinearizable { .. }));
        // A write applied twice (after a retry) is visible as a value coming back.
        let twice = vec![
            op(1, Write { key: 0, value: 10 }, 1, Some((2, Ok))),
            op(2, Write { key: 0, value: 20 }, 3, Some((4, Ok))),
            op(2, Read { key: 0 }, 5, Some((6, Value(Some(20))))),
            op(2, Read { key: 0 }, 7, Some((8, Value(Some(10))))),
        ];
        assert!(matches!(check(twice, 1_000_000), Verdict::NotLinearizable { .. }));
    }
}
