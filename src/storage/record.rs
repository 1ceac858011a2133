//! The byte format of the write-ahead log: how a [`Record`] is framed on disk, and how a log's bytes
//! are read back, telling a torn tail (a crash mid-write: cut it off) from corruption in the middle
//! (refuse to start).
//!
//! PURE: this file does no I/O, reads no clock and allocates no file; it works on `&[u8]` and
//! [`Bytes`], so the deterministic simulator can model a disk as a byte vector with it. It must never
//! copy a value's batch bytes on the read path (they come back as slices of the input).
//!
//! # Layout (little-endian, written by hand)
//!
//! ```text
//! offset 0  checksum  u64   xxh3-64 of bytes 8..16+len (rest of header, then body), seeded by
//!                           the segment's sequence number (see "Reused segments")
//! offset 8  len       u32   body length in bytes
//! offset 12 kind      u8    1 Promise, 2 Accept, 3 Trim, 4 Executed (0 never: a zero
//!                           header is the clean end of the log)
//! offset 13 pad       [u8; 3] zero
//! offset 16 body      len bytes (per kind, below)
//!           pad       zero bytes up to the next multiple of 8 (every record starts 8-aligned)
//! ```
//!
//! Bodies: Promise `round u64, proposer u32, has_nonce u8, pad 3, nonce u64` (24 bytes); Accept
//! `slot u64, round u64, proposer u32, value tag u8, pad 3, batch bytes`; Trim `below u64`; Executed
//! `slot u64, value tag u8, pad 7, batch bytes`. (Kind 5 is reserved: it named snapshots, which
//! were never written to a log but to files of their own, `snapshot.rs`.) Value tag 0 is `Noop`
//! (no bytes follow), 1 is `Batch` (the rest of the body, as it is). Batch bytes therefore start
//! 8-aligned in the file too.
//!
//! # Reused segments
//!
//! The log reuses the files of segments it no longer needs (see `wal.rs`) rather than write a new
//! one full of zeros, so the bytes after a segment's last record may be an older segment's intact
//! records. The seed tells them apart: a record counts only if its checksum verifies with the
//! seed of the segment it is read from ([`seed_of_segment`], from its sequence number), and an
//! older segment's records carry their own. Segments written before seeds existed verify with
//! [`UNSEEDED`] ([`segment_seed`] tells which).

use crate::protocol::durable::Record;
use crate::protocol::messages::Value;
use crate::protocol::Ballot;
use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes of a record header; records start at multiples of [`ALIGN`].
pub const HEADER_LEN: usize = 16;
/// Every record starts at a multiple of this.
pub const ALIGN: usize = 8;
/// The largest body a record may carry (the length field is a u32).
pub const BODY_MAX: usize = u32::MAX as usize;

const _: () = assert!(HEADER_LEN.is_multiple_of(ALIGN));

const KIND_PROMISE: u8 = 1;
const KIND_ACCEPT: u8 = 2;
const KIND_TRIM: u8 = 3;
const KIND_EXECUTED: u8 = 4;

const VALUE_NOOP: u8 = 0;
const VALUE_BATCH: u8 = 1;
const VALUE_RECONFIG: u8 = 2;

/// The log's bytes are damaged somewhere other than a torn tail: a restart must refuse rather than
/// silently forget votes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt at byte offset {offset}: {reason}")]
pub struct Corrupt {
    /// Byte offset (within the scanned bytes) of the first damaged record.
    pub offset: usize,
    /// What was wrong there.
    pub reason: String,
}

/// What [`scan`] found in a log's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every intact record, in order.
    pub records: Vec<Record>,
    /// The end offset (padding included) of each record in `records`: `ends[i]` is where record
    /// `i + 1` starts. Tests use it to cut a log in the middle of a record.
    pub ends: Vec<usize>,
    /// Bytes from the start that hold intact records: a repair truncates the file to this length.
    pub valid_len: usize,
    /// Bytes after `valid_len` up to the last non-zero one when the log ends in a damaged record (a
    /// torn write, which a repair drops; in a reused segment, the older contents after it too);
    /// zero when the log ends cleanly at a zero header, whatever follows it (padding, a prefilled
    /// segment's unused end, or a reused segment's older records).
    pub torn_bytes: usize,
}

/// The framed size of a record whose body is `body_len` bytes, padding included.
pub fn framed_len(body_len: usize) -> usize {
    align_up(HEADER_LEN + body_len)
}

fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The body length `encode` will write for `record` (lets a writer size its buffer up front).
pub fn body_len(record: &Record) -> usize {
    match record {
        Record::Promise { .. } => 24,
        Record::Accept { value, .. } => 24 + value_len(value),
        Record::Trim { .. } => 8,
        Record::Executed { value, .. } => 16 + value_len(value),
    }
}

fn value_len(value: &Value) -> usize {
    match value {
        Value::Noop => 0,
        Value::Batch(b) | Value::Reconfig(b) => b.len(),
    }
}

fn value_tag(value: &Value) -> u8 {
    match value {
        Value::Noop => VALUE_NOOP,
        Value::Batch(_) => VALUE_BATCH,
        Value::Reconfig(_) => VALUE_RECONFIG,
    }
}

fn value_bytes(value: &Value) -> &[u8] {
    match value {
        Value::Noop => &[],
        Value::Batch(b) | Value::Reconfig(b) => b,
    }
}

/// Appends one framed record to `out` (which may already hold records; it must be 8-aligned in
/// length, as it is when it holds only records). Panics if the body exceeds [`BODY_MAX`]: a batch
/// that large is a bug upstream (batches are bounded far below it).
pub fn encode(record: &Record, seed: u64, out: &mut Vec<u8>) {
    assert!(out.len().is_multiple_of(ALIGN), "records must start 8-aligned (out.len() = {})", out.len());
    let body_len = body_len(record);
    assert!(body_len <= BODY_MAX, "record body of {body_len} bytes exceeds the u32 length field");
    let start = out.len();
    out.reserve(framed_len(body_len));
    out.extend_from_slice(&[0u8; 8]); // checksum, filled in below
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    let kind = match record {
        Record::Promise { .. } => KIND_PROMISE,
        Record::Accept { .. } => KIND_ACCEPT,
        Record::Trim { .. } => KIND_TRIM,
        Record::Executed { .. } => KIND_EXECUTED,
    };
    out.extend_from_slice(&[kind, 0, 0, 0]);
    match record {
        Record::Promise { ballot, nonce } => {
            put_ballot(out, ballot);
            out.extend_from_slice(&[nonce.is_some() as u8, 0, 0, 0]);
            out.extend_from_slice(&nonce.unwrap_or(0).to_le_bytes());
        }
        Record::Accept { slot, ballot, value } => {
            out.extend_from_slice(&slot.to_le_bytes());
            put_ballot(out, ballot);
            out.extend_from_slice(&[value_tag(value), 0, 0, 0]);
            out.extend_from_slice(value_bytes(value));
        }
        Record::Trim { below } => out.extend_from_slice(&below.to_le_bytes()),
        Record::Executed { slot, value } => {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&[value_tag(value), 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(value_bytes(value));
        }
    }
    debug_assert_eq!(out.len(), start + HEADER_LEN + body_len);
    let sum = xxh3_64_with_seed(&out[start + 8..], seed);
    out[start..start + 8].copy_from_slice(&sum.to_le_bytes());
    out.resize(start + framed_len(body_len), 0);
}

fn put_ballot(out: &mut Vec<u8>, ballot: &Ballot) {
    out.extend_from_slice(&ballot.round.to_le_bytes());
    out.extend_from_slice(&ballot.proposer.to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Why the bytes at an offset are not a record, or the record and its framed end.
enum Probe {
    /// A zero header, or fewer bytes than a header: where a clean log ends.
    End,
    /// Something that is not an intact record.
    Bad(&'static str),
    /// An intact record ending (padding included) at the given offset.
    Ok(Record, usize),
}

/// Decodes the record at `off` (8-aligned) if it is intact under `seed`.
fn probe(bytes: &Bytes, off: usize, seed: u64) -> Probe {
    let b = &bytes[..];
    if b.len() - off < HEADER_LEN {
        return if b[off..].iter().all(|&x| x == 0) { Probe::End } else { Probe::Bad("short header") };
    }
    let header = &b[off..off + HEADER_LEN];
    if header.iter().all(|&x| x == 0) {
        return Probe::End;
    }
    let len = u32_at(header, 8) as usize;
    let kind = header[12];
    if !(KIND_PROMISE..=KIND_EXECUTED).contains(&kind) || header[13..16] != [0, 0, 0] {
        return Probe::Bad("bad record header");
    }
    let body_start = off + HEADER_LEN;
    if len > b.len() - body_start {
        return Probe::Bad("record length runs past the end");
    }
    if xxh3_64_with_seed(&b[off + 8..body_start + len], seed) != u64_at(header, 0) {
        return Probe::Bad("checksum mismatch");
    }
    let end = (off + framed_len(len)).min(b.len());
    match decode_body(bytes, kind, body_start, len) {
        Some(record) => Probe::Ok(record, end),
        // A checksummed body that does not parse was written by a different format: not a tear.
        None => Probe::Bad("record body does not match its kind"),
    }
}

fn decode_value(bytes: &Bytes, tag: u8, from: usize, to: usize) -> Option<Value> {
    match tag {
        VALUE_NOOP if from == to => Some(Value::Noop),
        VALUE_BATCH => Some(Value::Batch(bytes.slice(from..to))),
        VALUE_RECONFIG => Some(Value::Reconfig(bytes.slice(from..to))),
        _ => None,
    }
}

fn decode_body(bytes: &Bytes, kind: u8, at: usize, len: usize) -> Option<Record> {
    let b = &bytes[at..at + len];
    let end = at + len;
    let ballot = |o: usize| Ballot { round: u64_at(b, o), proposer: u32_at(b, o + 8) };
    Some(match kind {
        KIND_PROMISE if len == 24 => {
            let nonce = match b[12] {
                0 => None,
                1 => Some(u64_at(b, 16)),
                _ => return None,
            };
            Record::Promise { ballot: ballot(0), nonce }
        }
        KIND_ACCEPT if len >= 24 => Record::Accept {
            slot: u64_at(b, 0),
            ballot: ballot(8),
            value: decode_value(bytes, b[20], at + 24, end)?,
        },
        KIND_TRIM if len == 8 => Record::Trim { below: u64_at(b, 0) },
        KIND_EXECUTED if len >= 16 => {
            Record::Executed { slot: u64_at(b, 0), value: decode_value(bytes, b[8], at + 16, end)? }
        }
        _ => return None,
    })
}

/// The seed of logs written before seeds existed (xxh3's default).
pub const UNSEEDED: u64 = 0;

/// The checksum seed of the records of segment `sequence`: never [`UNSEEDED`], so that no segment
/// this version writes (segment 0 included) can be taken for an older version's.
pub const fn seed_of_segment(sequence: u64) -> u64 {
    (1 << 63) | sequence
}

/// The checksum seed to read segment `sequence`'s `bytes` with: [`seed_of_segment`], unless its
/// first record is intact only [`UNSEEDED`] (a segment written before seeds existed).
pub fn segment_seed(bytes: &Bytes, sequence: u64) -> u64 {
    let seed = seed_of_segment(sequence);
    match (probe(bytes, 0, seed), probe(bytes, 0, UNSEEDED)) {
        (Probe::Ok(..), _) => seed,
        (_, Probe::Ok(..)) => UNSEEDED,
        _ => seed,
    }
}

/// Reads every record of a log's bytes (checksums seeded with `seed`) in order. Batch values and
/// snapshot bytes are slices of `bytes` (no copy).
///
/// The first offset that does not hold an intact record ends the log. If an intact record can still
/// be found at any later 8-aligned offset, the damage is in the middle: `Err(Corrupt)` naming the
/// offset. Otherwise it is the end: a clean one at a zero header (the writer ends every sync with
/// one: what follows is padding, zeros never written, or a reused segment's older records), a torn
/// tail at a damaged record (`torn_bytes` says how much a repair drops).
pub fn scan(bytes: &Bytes, seed: u64) -> Result<Scan, Corrupt> {
    let mut scan = Scan::default();
    let mut off = 0;
    let reason = loop {
        if off >= bytes.len() {
            scan.valid_len = bytes.len();
            return Ok(scan);
        }
        match probe(bytes, off, seed) {
            Probe::Ok(record, end) => {
                scan.records.push(record);
                scan.ends.push(end);
                off = end;
            }
            Probe::End => break None,
            Probe::Bad(reason) => break Some(reason),
        }
    };
    scan.valid_len = off;
    // A log that simply ends (segments are prefilled with zeros, so most end that way).
    if all_zero(&bytes[off..]) {
        return Ok(scan);
    }
    // Is anything intact after the damage? Then the damage is not a tail.
    let mut later = off + ALIGN;
    while later < bytes.len() {
        if let Probe::Ok(..) = probe(bytes, later, seed) {
            return Err(Corrupt {
                offset: off,
                reason: format!(
                    "{} (an intact record follows at offset {later})",
                    reason.unwrap_or("zero bytes")
                ),
            });
        }
        later += ALIGN;
    }
    // A zero header is where the writer's last sync ended the log: nothing after it is ours.
    if reason.is_some() {
        // Up to the last non-zero byte: the zeros a prefilled segment ends with were never written.
        scan.torn_bytes = bytes[off..].iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    }
    Ok(scan)
}

/// Whether the damaged record at `at` (a scan's `valid_len`) is cut by the end of the file: its
/// header, or the body its header claims, runs past the last byte. In a prefilled segment a crash
/// leaves a torn record followed by the segment's zeros, never by the end of the file.
pub fn cut_by_end_of_file(bytes: &[u8], at: usize) -> bool {
    if bytes.len().saturating_sub(at) < HEADER_LEN {
        return at < bytes.len();
    }
    let len = u32_at(&bytes[at..at + HEADER_LEN], 8) as usize;
    at + HEADER_LEN + len > bytes.len()
}

/// Whether every byte is zero; fast on the megabytes of zeros that end a prefilled segment.
pub fn all_zero(bytes: &[u8]) -> bool {
    // An OR over fixed-size chunks compiles to vector instructions; a byte-wise `all` does not.
    bytes.chunks(4096).all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The checksum seed of the logs these tests write.
    const SEED: u64 = seed_of_segment(9);

    fn sample() -> Vec<Record> {
        vec![
            Record::Promise { ballot: Ballot { round: 3, proposer: 1 }, nonce: Some(77) },
            Record::Promise { ballot: Ballot { round: 4, proposer: 2 }, nonce: None },
            Record::Accept {
                slot: 9,
                ballot: Ballot { round: 4, proposer: 2 },
                value: Value::Batch(Bytes::from_static(b"hello")),
            },
            Record::Accept { slot: 10, ballot: Ballot { round: 4, proposer: 2 }, value: Value::Noop },
            Record::Trim { below: 5 },
            Record::Executed { slot: 9, value: Value::Batch(Bytes::from(vec![7u8; 300])) },
            Record::Executed { slot: 10, value: Value::Noop },
        ]
    }

    fn log_of(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            encode(r, SEED, &mut out);
        }
        out
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Noop),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Value::Batch(Bytes::from(v))),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Value::Reconfig(Bytes::from(v))),
        ]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        let ballot = (any::<u64>(), any::<u32>()).prop_map(|(round, proposer)| Ballot { round, proposer });
        prop_oneof![
            (ballot.clone(), any::<Option<u64>>())
                .prop_map(|(ballot, nonce)| Record::Promise { ballot, nonce }),
            (any::<u64>(), ballot, arb_value()).prop_map(|(slot, ballot, value)| Record::Accept {
                slot,
                ballot,
                value
            }),
            any::<u64>().prop_map(|below| Record::Trim { below }),
            (any::<u64>(), arb_value()).prop_map(|(slot, value)| Record::Executed { slot, value }),
        ]
    }

    #[test]
    fn records_round_trip_and_batches_are_slices_of_the_input() {
        let records = sample();
        let bytes = Bytes::from(log_of(&records));
        let scan = scan(&bytes, SEED).unwrap();
        assert_eq!(scan.records, records);
        assert_eq!(scan.valid_len, bytes.len());
        assert_eq!(scan.torn_bytes, 0);
        assert!(scan.ends.iter().all(|e| e % ALIGN == 0));
        let Record::Accept { value: Value::Batch(b), .. } = &scan.records[2] else { panic!() };
        let inside = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        assert!(inside.contains(&(b.as_ptr() as usize)), "batch was copied");
    }

    #[test]
    fn zero_padding_after_the_log_is_a_clean_end() {
        let mut log = log_of(&sample());
        let n = log.len();
        log.resize(n + 4096, 0);
        let scan = scan(&Bytes::from(log), SEED).unwrap();
        assert_eq!(scan.records, sample());
        assert_eq!((scan.valid_len, scan.torn_bytes), (n, 0));
    }

    #[test]
    fn a_zeroed_record_in_the_middle_is_corruption() {
        let mut log = log_of(&sample());
        let ends = scan(&Bytes::from(log.clone()), SEED).unwrap().ends;
        log[ends[1]..ends[2]].fill(0);
        let err = scan(&Bytes::from(log), SEED).unwrap_err();
        assert_eq!(err.offset, ends[1]);
    }

    #[test]
    fn garbage_after_the_last_record_is_a_torn_tail() {
        let mut log = log_of(&sample());
        let n = log.len();
        log.extend_from_slice(&[0xAB; 100]);
        let scan = scan(&Bytes::from(log), SEED).unwrap();
        assert_eq!(scan.records, sample());
        assert_eq!((scan.valid_len, scan.torn_bytes), (n, 100));
    }

    #[test]
    fn a_reused_segments_older_records_after_a_clean_end_are_neither_read_nor_torn() {
        let mut log = log_of(&sample());
        let n = log.len();
        log.extend_from_slice(&[0; HEADER_LEN]);
        let mut older = Vec::new();
        for r in sample().iter().rev() {
            encode(r, 3, &mut older);
        }
        log.extend_from_slice(&older);
        let scan = scan(&Bytes::from(log), SEED).unwrap();
        assert_eq!(scan.records, sample());
        assert_eq!((scan.valid_len, scan.torn_bytes), (n, 0));
    }

    #[test]
    fn records_checksummed_with_another_seed_are_not_intact() {
        let mut older = Vec::new();
        for r in &sample() {
            encode(r, 3, &mut older);
        }
        let scan = scan(&Bytes::from(older.clone()), SEED).unwrap();
        assert!(scan.records.is_empty());
        let last_non_zero = older.iter().rposition(|&b| b != 0).unwrap() + 1;
        assert_eq!((scan.valid_len, scan.torn_bytes), (0, last_non_zero));
    }

    #[test]
    fn a_segments_seed_comes_from_its_sequence_unless_it_was_written_unseeded() {
        let log = |seed: u64| {
            let mut out = Vec::new();
            for r in &sample() {
                encode(r, seed, &mut out);
            }
            Bytes::from(out)
        };
        assert_eq!(segment_seed(&log(seed_of_segment(4)), 4), seed_of_segment(4));
        let unseeded = log(UNSEEDED);
        assert_eq!(segment_seed(&unseeded, 4), UNSEEDED);
        assert_eq!(scan(&unseeded, UNSEEDED).unwrap().records, sample());
        // Segment 0's file reused as segment 4 is not taken for an unseeded log (whose records
        // would all read back).
        let reused = log(seed_of_segment(0));
        assert_eq!(segment_seed(&reused, 4), seed_of_segment(4));
        assert!(scan(&reused, seed_of_segment(4)).unwrap().records.is_empty());
        assert_eq!(segment_seed(&Bytes::from(vec![0u8; 4096]), 4), seed_of_segment(4));
        assert_eq!(segment_seed(&Bytes::from(vec![0xAB; 4096]), 4), seed_of_segment(4));
    }

    proptest! {
        #[test]
        fn any_record_list_round_trips(records in proptest::collection::vec(arb_record(), 0..20)) {
            let scan = scan(&Bytes::from(log_of(&records)), SEED).unwrap();
            prop_assert_eq!(scan.records, records);
            prop_assert_eq!(scan.torn_bytes, 0);
        }

        #[test]
        fn any_prefix_is_a_clean_or_torn_tail_never_corruption(
            records in proptest::collection::vec(arb_record(), 1..12),
            cut in any::<prop::sample::Index>(),
        ) {
            let log = log_of(&records);
            let cut = cut.index(log.len() + 1);
            let scan = scan(&Bytes::from(log[..cut].to_vec()), SEED).unwrap();
            // Exactly the records that end by the cut survive.
            // (A record whose zero padding is cut off is still whole.)
            let full = super::scan(&Bytes::from(log.clone()), SEED).unwrap();
            let starts = std::iter::once(0).chain(full.ends.iter().copied());
            let whole = starts
                .zip(&records)
                .filter(|(start, r)| start + HEADER_LEN + body_len(r) <= cut)
                .count();
            prop_assert_eq!(&scan.records[..], &records[..whole]);
            prop_assert_eq!(scan.valid_len + scan.torn_bytes <= cut, true);
        }

        #[test]
        fn a_flipped_byte_in_a_non_last_record_is_corruption_at_that_record(
            records in proptest::collection::vec(arb_record(), 2..12),
            which in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut log = log_of(&records);
            let ends = super::scan(&Bytes::from(log.clone()), SEED).unwrap().ends;
            let i = which.index(records.len() - 1);
            let start = if i == 0 { 0 } else { ends[i - 1] };
            // Flip a byte of the header or body, not of the zero padding (which no one reads).
            let framed = HEADER_LEN + body_len(&records[i]);
            let pos = start + at.index(framed);
            log[pos] ^= 1 << bit;
            let err = super::scan(&Bytes::from(log), SEED).unwrap_err();
            prop_assert_eq!(err.offset, start);
        }
    }
}
