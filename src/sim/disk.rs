//! A simulated disk for one stateful node: what it keeps is exactly what a real one keeps, nothing
//! more. Writes are durable only once a sync covering them completes; a crash loses every unsynced
//! write, except a random prefix of them that happened to reach the platter, whose last record may
//! be cut short (a torn write). Snapshots go to files of their own, written in the background and
//! in order, each durable (renamed) as a whole or not at all, whatever the log's syncs do: a crash
//! keeps a random prefix of those still being written. Records below a durable trim may be gone
//! after a crash, as the runtime deletes the segments that hold only such records (in the
//! background, after the trim's sync): most crashes find every one of them gone, which is more than
//! a real disk loses and so the harder case. A rare fault flips a byte of a record in the middle of the log,
//! which the node must detect when it restarts. The bytes are the real log format
//! (`storage::record`), read back by the same scan the runtime uses, so a restart in the simulator
//! recovers exactly what a restarted process would.
//!
//! Must never: let a record survive a crash that was neither synced nor written before it; hand a
//! restarting node anything but what the scan of these bytes gives back.

use crate::protocol::durable::{Record, Recovered};
use crate::protocol::Slot;
use crate::storage::record::{self, Corrupt};
use crate::storage::snapshot::{decode_snapshot, encode_snapshot};
use bytes::Bytes;
use rand::Rng;

/// The checksum seed of this disk's log, as if it were segment 0 (the simulator does not model
/// segment files, only the byte format and what a crash keeps of it).
const SEED: u64 = record::seed_of_segment(0);

/// What a crash did to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashDamage {
    /// The last write that reached the disk was cut short.
    pub torn: bool,
    /// Writes that never reached the disk.
    pub lost: usize,
    /// A record in the middle of the log had a byte flipped.
    pub corrupted: bool,
    /// Snapshot files whose writing the crash cut short (their older one stays).
    pub lost_snapshots: usize,
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
    /// Snapshot files being written, oldest first, with their slots.
    saving: std::collections::VecDeque<(Slot, Vec<u8>)>,
    /// Framed log records issued and not yet known durable, oldest first.
    unsynced: Vec<Vec<u8>>,
}

impl SimDisk {
    /// Issues the writes of `records`, in order.
    pub fn write(&mut self, records: &[Record]) {
        for r in records {
            let mut bytes = Vec::new();
            record::encode(r, SEED, &mut bytes);
            self.unsynced.push(bytes);
        }
    }

    /// Starts writing a snapshot file, after those being written.
    pub fn save_snapshot(&mut self, slot: Slot, state: &[u8]) {
        self.saving.push_back((slot, encode_snapshot(slot, state)));
    }

    /// Snapshot files being written.
    pub fn snapshots_saving(&self) -> usize {
        self.saving.len()
    }

    /// The oldest snapshot being written is durable under its name: its slot.
    pub fn snapshot_saved(&mut self) -> Option<Slot> {
        let (slot, file) = self.saving.pop_front()?;
        self.snapshot = Some(file);
        Some(slot)
    }

    /// Writes issued and not yet synced.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// A sync that started when `count` writes were unsynced has completed: those are durable.
    pub fn synced(&mut self, count: usize) {
        let done: Vec<Vec<u8>> = self.unsynced.drain(..count.min(self.unsynced.len())).collect();
        for write in done {
            self.land(write);
        }
    }

    fn land(&mut self, bytes: Vec<u8>) {
        self.log.extend_from_slice(&bytes);
        self.record_ends.push(self.log.len());
    }

    /// The machine stops: a random prefix of the unsynced writes reached the disk (the last of them
    /// possibly torn), the rest are lost, and so for the snapshots being written (whole or not at
    /// all). With `corrupt`, one byte of a record that is not the last is flipped, if there is such
    /// a record.
    pub fn crash(&mut self, rng: &mut impl Rng, corrupt: bool) -> CrashDamage {
        let mut damage = CrashDamage::default();
        let saved = if self.saving.is_empty() { 0 } else { rng.gen_range(0..=self.saving.len()) };
        for _ in 0..saved {
            self.snapshot_saved();
        }
        damage.lost_snapshots = self.saving.len();
        self.saving.clear();
        let pending = std::mem::take(&mut self.unsynced);
        let reached = rng.gen_range(0..=pending.len());
        damage.lost = pending.len() - reached;
        for (i, write) in pending.into_iter().take(reached).enumerate() {
            match write {
                // The last write to reach the disk may be only partly there.
                bytes if i + 1 == reached && rng.gen_bool(0.5) => {
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
        if rng.gen_bool(0.75) {
            self.drop_trimmed();
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

    /// Drops every record of a slot below the log's highest trim point (promises and trims stay:
    /// the runtime writes them again at the head of every segment), leaving a torn tail as it was.
    fn drop_trimmed(&mut self) {
        let Ok(scan) = record::scan(&Bytes::from(self.log.clone()), SEED) else { return };
        let trimmed = scan.records.iter().filter_map(|r| match r {
            Record::Trim { below } => Some(*below),
            _ => None,
        });
        let Some(below) = trimmed.max() else { return };
        let torn_tail = self.log[scan.valid_len..].to_vec();
        self.log.clear();
        self.record_ends.clear();
        for r in scan.records.iter().filter(|r| r.slot().is_none_or(|slot| slot >= below)) {
            record::encode(r, SEED, &mut self.log);
            self.record_ends.push(self.log.len());
        }
        self.log.extend_from_slice(&torn_tail);
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
    use std::collections::BTreeSet;

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
    fn a_crash_keeps_snapshots_being_written_whole_or_not_at_all_and_in_order() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..100 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut disk = SimDisk::default();
            disk.save_snapshot(10, b"ten");
            assert_eq!(disk.snapshot_saved(), Some(10));
            disk.save_snapshot(20, b"twenty");
            disk.save_snapshot(30, b"thirty");
            let damage = disk.crash(&mut rng, false);
            let (slot, state) = disk.recover().unwrap().snapshot.expect("the saved one stays");
            let expected: &[u8] = match slot {
                10 => b"ten",
                20 => b"twenty",
                _ => b"thirty",
            };
            assert_eq!(&state[..], expected, "seed {seed}: a whole file");
            assert_eq!(damage.lost_snapshots as u64, (30 - slot) / 10, "seed {seed}: the ones after it");
            assert_eq!(disk.snapshots_saving(), 0);
            outcomes.insert(slot);
        }
        assert_eq!(outcomes, BTreeSet::from([10, 20, 30]), "each prefix happens");
    }

    #[test]
    fn records_below_a_durable_trim_may_be_gone_after_a_crash_and_promises_and_trims_stay() {
        let promise = Record::Promise { ballot: Ballot { round: 1, proposer: 1 }, nonce: Some(3) };
        let mut gone = 0;
        for seed in 0..40 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut disk = SimDisk::default();
            disk.write(&[promise.clone(), accept(0), accept(5), Record::Trim { below: 4 }, accept(6)]);
            disk.synced(5);
            disk.crash(&mut rng, false);
            let records = disk.recover().unwrap().records;
            let kept = [promise.clone(), accept(5), Record::Trim { below: 4 }, accept(6)];
            if records.len() == 4 {
                assert_eq!(records, kept, "seed {seed}");
                gone += 1;
            } else {
                assert_eq!(records.len(), 5, "seed {seed}: {records:?}");
            }
        }
        assert!(gone > 20 && gone < 40, "most crashes drop them, not all: {gone} of 40");
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
