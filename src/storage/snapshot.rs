//! The byte format of a snapshot file (`snapshot-<slot>.snap`): a replica's whole state at a slot,
//! checksummed so a damaged snapshot is refused, never loaded.
//!
//! PURE: no I/O here (the writer is in `wal.rs`, the reader in `dir.rs`, the simulator may use both
//! functions on byte vectors). It must never copy the state bytes on the read path.
//!
//! ```text
//! offset 0  magic     8 bytes  "APXSNAP1"
//! offset 8  slot      u64      every slot below it is covered
//! offset 16 len       u64      length of the state bytes
//! offset 24 checksum  u64      xxh3-64 of slot, len and the state bytes
//! offset 32 state     len bytes
//! ```

use super::record::Corrupt;
use crate::protocol::Slot;
use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3;

/// The first eight bytes of every snapshot file (format version 1).
pub const MAGIC: &[u8; 8] = b"APXSNAP1";
/// Bytes before the state.
pub const HEADER_LEN: usize = 32;

fn checksum(slot_and_len: &[u8], state: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(slot_and_len);
    h.update(state);
    h.digest()
}

/// The header of a snapshot of `state` at `slot` (the state bytes follow it). A writer streaming a
/// big state uses this rather than copying the state into [`encode_snapshot`]'s vector.
pub fn snapshot_header(slot: Slot, state: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&slot.to_le_bytes());
    h[16..24].copy_from_slice(&(state.len() as u64).to_le_bytes());
    let sum = checksum(&h[8..24], state);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A snapshot file's bytes: header, then `state`.
pub fn encode_snapshot(slot: Slot, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + state.len());
    out.extend_from_slice(&snapshot_header(slot, state));
    out.extend_from_slice(state);
    out
}

/// Reads a snapshot file's bytes back: the slot and the state (a slice of `bytes`). Anything but an
/// exact, intact snapshot (bad magic, wrong length, checksum mismatch) is `Corrupt` (offset 0: the
/// file as a whole is unusable; the data directory reports it with no offset).
pub fn decode_snapshot(bytes: &Bytes) -> Result<(Slot, Bytes), Corrupt> {
    let bad = |reason: &str| Corrupt { offset: 0, reason: reason.to_string() };
    if bytes.len() < HEADER_LEN {
        return Err(bad("shorter than a snapshot header"));
    }
    if &bytes[..8] != MAGIC {
        return Err(bad("bad snapshot magic"));
    }
    let slot = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let sum = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    if len != (bytes.len() - HEADER_LEN) as u64 {
        return Err(bad("snapshot length does not match the file size"));
    }
    let state = bytes.slice(HEADER_LEN..);
    if checksum(&bytes[8..24], &state) != sum {
        return Err(bad("snapshot checksum mismatch"));
    }
    Ok((slot, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_any_damage_is_refused() {
        let state: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let file = encode_snapshot(42, &state);
        let (slot, back) = decode_snapshot(&Bytes::from(file.clone())).unwrap();
        assert_eq!((slot, &back[..]), (42, &state[..]));
        for at in [0, 9, 17, 25, 40, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x10;
            assert!(decode_snapshot(&Bytes::from(bad)).is_err(), "flip at {at} accepted");
        }
        assert!(decode_snapshot(&Bytes::from(file[..file.len() - 1].to_vec())).is_err());
        assert!(decode_snapshot(&Bytes::from(encode_snapshot(0, &[]))).is_ok());
    }
}
