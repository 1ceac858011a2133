//! A simulated disk for one stateful node: what it keeps is exactly what a real one keeps, nothing
//! more. Writes are durable only once a sync covering them completes; a crash loses every unsynced
//! write, except a random prefix of them that happened to reach the platter, whose last record may
//! be cut short (a torn write). A rare fault flips a byte of a record in the middle of the log,
//! which the node must detect when it restarts. The bytes are the real log format
//! (`storage::record`), read back by the same scan the runtime uses, so a restart in the simulator
//! recovers exactly what a restarted process would.
//!
//! Must never: let a record survive a crash that was neither synced nor written before it; hand a
//! restarting node anything but what the scan of these bytes gives back.

use crate::protocol::durable::{Record, Recovered};
use crate::storage::record::{self, Corrupt};
use crate::storage::snapshot::{decode_snapshot, encode_snapshot};
use bytes::Bytes;
use rand::Rng;

/// The checksum seed of this disk's log, as if it were segment 0 (the simulator does not model
/// segment files, only the byte format and what a crash keeps of it).
const SEED: u64 = record::seed_of_segment(0);

/// One write, as the driver issued it.
#[derive(Debug, Clone)]
enum Write {
    /// One framed log record.
    Log(Vec<u8>),
    /// A whole snapshot file (written, synced and renamed before any later write, as the runtime does).
    Snapshot(Vec<u8>),
}

/// What a crash did to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashDamage {
    /// The last write that reached the disk was cut short.
    pub torn: bool,
    /// Writes that never reached the disk.
    pub lost: usize,
    /// A record in the middle of the log had a byte flipped.
    pub corrupted: bool,
}

/// One node's disk.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    /// The log's bytes on disk.
    log: Vec<u8>,
    /// Where each durable record ends (for the corruption fault: a record that is not the last).
    record_ends: Vec<usize>,
    /// The newest snapshot file on disk.
    snapshot: Option<Vec<u8>>,
    /// Issued and not yet known durable, oldest first.
    unsynced: Vec<Write>,
}

impl SimDisk {
    /// Issues the writes of `records`, in order.
    pub fn write(&mut self, records: &[Record]) {
        for r in records {
            match r {
                Record::Snapshot { slot, bytes } => {
                    self.unsynced.push(Write::Snapshot(encode_snapshot(*slot, bytes)))
                }
                other => {
                    let mut bytes = Vec::new();
                    record::encode(other, SEED, &mut bytes);
                    self.unsynced.push(Write::Log(bytes));
                }
            }
        }
    }

    /// Writes issued and not yet synced.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// A sync that started when `count` writes were unsynced has completed: those are durable.
    pub fn synced(&mut self, count: usize) {
        let done: Vec<Write> = self.unsynced.drain(..count.min(self.unsynced.len())).collect();
        for write in done {
            self.land(write);
        }
    }

    fn land(&mut self, write: Write) {
        match write {
            Write::Log(bytes) => {
                self.log.extend_from_slice(&bytes);
                self.record_ends.push(self.log.len());
            }
            Write::Snapshot(bytes) => self.snapshot = Some(bytes),
        }
    }

    /// The machine stops: a random prefix of the unsynced writes reached the disk (the last of them
    /// possibly torn), the rest are lost. With `corrupt`, one byte of a record that is not the last
    /// is flipped, if there is such a record.
    pub fn crash(&mut self, rng: &mut impl Rng, corrupt: bool) -> CrashDamage {
        let mut damage = CrashDamage::default();
        let pending = std::mem::take(&mut self.unsynced);
        let reached = rng.gen_range(0..=pending.len());
        damage.lost = pending.len() - reached;
        for (i, write) in pending.into_iter().take(reached).enumerate() {
            match write {
                // The last write to reach the disk may be only partly there.
                Write::Log(bytes) if i + 1 == reached && rng.gen_bool(0.5) => {
                    // Cut inside the header or body (a cut in the trailing padding loses nothing).
                    let body = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
                    let kept = rng.gen_range(1..record::HEADER_LEN + body);
                    self.log.extend_from_slice(&bytes[..kept]);
                    damage.torn = true;
                    damage.lost += 1;
                }
                write => self.land(write),
            }
        }
        if corrupt && self.record_ends.len() >= 2 {
            // Somewhere in the header of a record that is not the last: the checksum covers it.
            let victim = rng.gen_range(0..self.record_ends.len() - 1);
            let start = if victim == 0 { 0 } else { self.record_ends[victim - 1] };
            let at = start + rng.gen_range(0..record::HEADER_LEN);
            self.log[at] ^= 1 << rng.gen_range(0..8);
            damage.corrupted = true;
        }
        damage
    }

    /// What a restarting node reads back: the scan of the log (a torn tail cut off, as the runtime
    /// truncates it) and the newest snapshot; or the corruption the scan found.
    pub fn recover(&mut self) -> Result<Recovered, Corrupt> {
        let scan = record::scan(&Bytes::from(self.log.clone()), SEED)?;
        self.log.truncate(scan.valid_len);
        self.record_ends = scan.ends.clone();
        let snapshot = match &self.snapshot {
            Some(file) => Some(decode_snapshot(&Bytes::from(file.clone()))?),
            None => None,
        };
        Ok(Recovered { snapshot, records: scan.records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::Value;
    use crate::protocol::Ballot;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn accept(slot: u64) -> Record {
        Record::Accept {
            slot,
            ballot: Ballot { round: 1, proposer: 1 },
            value: Value::Batch(Bytes::from(vec![7; 20])),
        }
    }

    #[test]
    fn synced_records_survive_every_crash_and_unsynced_ones_may_not() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut disk = SimDisk::default();
            disk.write(&[accept(0), accept(1)]);
            disk.synced(2);
            disk.write(&[accept(2), accept(3)]);
            let damage = disk.crash(&mut rng, false);
            let records = disk.recover().expect("a crash alone never corrupts").records;
            assert!(records.len() >= 2, "seed {seed}: synced records lost");
            assert_eq!(records[..2], [accept(0), accept(1)]);
            assert_eq!(records.len(), 4 - damage.lost, "seed {seed}: {damage:?}");
        }
    }

    #[test]
    fn a_corrupted_middle_record_is_detected() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut disk = SimDisk::default();
        disk.write(&[accept(0), accept(1), accept(2)]);
        disk.synced(3);
        assert!(disk.crash(&mut rng, true).corrupted);
        assert!(disk.recover().is_err());
    }
}
