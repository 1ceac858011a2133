//! A state machine that ignores op contents and only counts applied ops.
//!
//! Used to measure the protocol without state-machine cost. Its state (the
//! count) still lets replicas cross-check that they applied the same number of
//! ops. It must never panic, look at op bytes, or depend on anything but the count.

use super::StateMachine;

/// Counts applied ops; every op returns an empty result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoopStateMachine {
    applied: u64,
}

impl NoopStateMachine {
    /// Creates a machine that has applied nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of ops applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }
}

impl StateMachine for NoopStateMachine {
    fn apply_into(&mut self, _op: &[u8], _result: &mut bytes::BytesMut) {
        // Wrapping keeps `apply` panic-free even in debug builds; 2^64 ops won't happen.
        self.applied = self.applied.wrapping_add(1);
    }

    fn digest(&self) -> u64 {
        self.applied
    }

    fn snapshot_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.applied.to_le_bytes());
    }

    fn snapshot_len(&self) -> usize {
        8
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), super::SnapshotError> {
        let bytes: [u8; 8] = snapshot.try_into().map_err(|_| super::SnapshotError("noop: not 8 bytes"))?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }

    fn approx_bytes(&self) -> u64 {
        8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ops_and_returns_empty() {
        let mut sm = NoopStateMachine::new();
        assert!(sm.apply(b"anything").is_empty());
        assert!(sm.apply(&[]).is_empty());
        assert_eq!(sm.applied(), 2);
        assert_eq!(sm.digest(), 2);
        assert_eq!(sm.snapshot(), 2u64.to_le_bytes().to_vec());
    }
}
