//! Frames: [`FrameWriter`] turns messages into segments for one vectored write, [`FrameReader`] turns
//! received bytes back into validated messages (layout in the [module docs](super)).
//!
//! Must never: panic on any received bytes, buffer a frame body whose header already exceeds a limit,
//! or copy a batch (above [`INLINE_PAYLOAD_MAX`]) on either side: a written payload is the caller's
//! `Bytes` handle, a read payload is a view into the receive buffer.

use super::handshake::PROOF_BYTES;
use super::{
    Handshake, Proof, WireError, FRAME_ALIGN, HEADER_LEN, INLINE_PAYLOAD_MAX, MAGIC, MAX_FRAME_BYTES,
    MAX_META_BYTES, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, READ_CHUNK, TAG_BYTES,
};
use crate::protocol::messages::decode;
use crate::protocol::{Msg, Value};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use rkyv::api::high::to_bytes_in;
use rkyv::rancor::Error as RkyvError;
use rkyv::ser::{Positional, Writer};

const KIND_HANDSHAKE: u8 = 1;
const KIND_MSG: u8 = 2;
const KIND_PROOF: u8 = 3;
/// Flag bit: a MAC tag follows the frame.
const FLAG_TAGGED: u32 = 1;

/// One validated frame from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The peer's introduction; check it with [`Handshake::check`].
    Handshake(Handshake),
    /// The peer's proof that it knows the cluster secret (`handshake::verify`).
    Proof(Proof),
    /// A protocol message, its batch (if any) a view into the receive buffer.
    Msg(Msg),
}

/// `len` rounded up to [`FRAME_ALIGN`]; callers pass lengths already bounded by the limits.
fn padded(len: usize) -> usize {
    (len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// The variant's large payload, for `&Msg` and `&mut Msg` alike. No wildcard on purpose: a new variant
/// does not compile until someone decides whether it has a payload.
macro_rules! payload_of {
    ($msg:expr) => {
        match $msg {
            Msg::ClientBatch { batch, .. }
            | Msg::BatchRefused { batch, .. }
            | Msg::SnapshotChunk { bytes: batch, .. } => Some(batch),
            Msg::Propose { value: Value::Batch(b) | Value::Reconfig(b), .. }
            | Msg::Phase2a { value: Value::Batch(b) | Value::Reconfig(b), .. }
            | Msg::Chosen { value: Value::Batch(b) | Value::Reconfig(b), .. } => Some(b),
            Msg::Propose { value: Value::Noop, .. }
            | Msg::Phase2a { value: Value::Noop, .. }
            | Msg::Chosen { value: Value::Noop, .. }
            | Msg::ClientRequests(_)
            | Msg::ClientReplies(_)
            | Msg::NotLeader { .. }
            | Msg::Heartbeat { .. }
            | Msg::Phase1a { .. }
            | Msg::Phase1b(_)
            | Msg::Nack { .. }
            | Msg::Phase2b { .. }
            | Msg::Preempted { .. }
            | Msg::Executed { .. }
            | Msg::Reconfigure(_)
            | Msg::Reconfigured { .. }
            | Msg::ReconfigureRefused { .. }
            | Msg::StatusRequest
            | Msg::Status(_)
            | Msg::CatchUp { .. }
            | Msg::SnapshotOffer { .. }
            | Msg::SnapshotFetch { .. }
            | Msg::ReadSlot { .. }
            | Msg::SlotRead { .. }
            | Msg::Trim { .. }
            | Msg::ReplyBatch { .. }
            | Msg::RepliesTaken
            | Msg::Join { .. }
            | Msg::Leave
            | Msg::LeadNow
            | Msg::Abdicate { .. }
            | Msg::Leaving
            | Msg::Left
            | Msg::Membership(_)
            | Msg::Busy(_)
            | Msg::LeaderLoad { .. }
            | Msg::BatchBusy { .. } => None,
        }
    };
}

/// Splits `msg` into its meta (the message with an empty payload field) and its payload, if the variant
/// has one. Cheap: the variants with a payload are a few scalars and a `Bytes` handle.
pub fn take_payload(msg: &Msg) -> (Msg, Option<Bytes>) {
    let mut meta = msg.clone();
    let payload = payload_of!(&mut meta).map(std::mem::take);
    (meta, payload)
}

/// Puts `payload` back into the payload field of `msg`; an error if the variant has none.
pub fn put_payload(msg: &mut Msg, payload: Bytes) -> Result<(), WireError> {
    let kind = msg.name();
    let slot = payload_of!(msg).ok_or(WireError::UnexpectedPayload { kind })?;
    *slot = payload;
    Ok(())
}

/// The fixed header, lengths already checked against the limits.
struct Header {
    kind: u8,
    tagged: bool,
    meta_len: usize,
    payload_len: usize,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        h[2] = PROTOCOL_VERSION;
        h[3] = self.kind;
        let flags = if self.tagged { FLAG_TAGGED } else { 0 };
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        // The casts are lossless: the limits fit u32 (asserted in mod.rs).
        h[8..12].copy_from_slice(&(self.meta_len as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(self.payload_len as u32).to_le_bytes());
        h
    }

    /// Validates everything the header alone can tell, so a bad frame is refused before its body arrives.
    /// `tagged`: whether the connection authenticates its frames.
    fn parse(h: [u8; HEADER_LEN], tagged: bool) -> Result<Header, WireError> {
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let magic = u16::from_le_bytes([h[0], h[1]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if h[2] != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(h[2]));
        }
        let kind = h[3];
        if !matches!(kind, KIND_HANDSHAKE | KIND_MSG | KIND_PROOF) {
            return Err(WireError::UnknownKind(kind));
        }
        match (word(4), tagged) {
            (0, false) | (FLAG_TAGGED, true) => {}
            (0, true) => return Err(WireError::MissingTag),
            (flags, _) => return Err(WireError::UnknownFlags(flags)),
        }
        let (meta_len, payload_len) = (word(8) as usize, word(12) as usize);
        if meta_len > MAX_META_BYTES {
            return Err(WireError::MetaTooLarge { len: meta_len, max: MAX_META_BYTES });
        }
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(WireError::PayloadTooLarge { len: payload_len, max: MAX_PAYLOAD_BYTES });
        }
        if kind == KIND_HANDSHAKE && payload_len > 0 {
            return Err(WireError::UnexpectedPayload { kind: "Handshake" });
        }
        if kind == KIND_PROOF && (meta_len != PROOF_BYTES || payload_len > 0) {
            return Err(WireError::BadProofFrame(meta_len + payload_len));
        }
        Ok(Header { kind, tagged, meta_len, payload_len })
    }

    fn payload_at(&self) -> usize {
        HEADER_LEN + padded(self.meta_len)
    }

    /// The frame's length without its tag.
    fn frame_len(&self) -> usize {
        self.payload_at() + padded(self.payload_len)
    }

    /// The frame's length on the wire, with its tag if it has one.
    fn wire_len(&self) -> usize {
        self.frame_len() + if self.tagged { TAG_BYTES } else { 0 }
    }
}

/// The tag of the `counter`-th frame sent under `key` (16 bytes of a keyed BLAKE3). The counter goes
/// after the frame (whose header fixes its length): the frame then starts on BLAKE3's chunk boundary,
/// which hashed a 9 KB frame 2.6 times as fast as with the counter first.
fn tag(key: &[u8; 32], counter: u64, frame: &[u8]) -> blake3::Hash {
    let mut mac = blake3::Hasher::new_keyed(key);
    mac.update(frame);
    mac.update(&counter.to_le_bytes());
    mac.finalize()
}

/// The send side of an authenticated connection: copies frames, flagged and tagged, into the bytes to
/// send. Counts frames, so a frame replayed, dropped or reordered on the way fails the receiver's check.
#[derive(Debug)]
pub struct FrameSealer {
    key: [u8; 32],
    counter: u64,
}

impl FrameSealer {
    /// Seals frames with `key` (the connection's send key), counting from zero.
    pub fn new(key: [u8; 32]) -> Self {
        FrameSealer { key, counter: 0 }
    }

    /// Appends the whole untagged frames in `frames` (as a [`FrameWriter`] wrote them) to `out`, each
    /// flagged and followed by its tag.
    pub fn seal(&mut self, frames: &[u8], out: &mut Vec<u8>) {
        let mut at = 0;
        while at < frames.len() {
            let mut head = [0u8; HEADER_LEN];
            head.copy_from_slice(&frames[at..at + HEADER_LEN]);
            let header = Header::parse(head, false).expect("a frame this node wrote");
            let len = header.frame_len();
            let start = out.len();
            out.extend_from_slice(&Header { tagged: true, ..header }.encode());
            out.extend_from_slice(&frames[at + HEADER_LEN..at + len]);
            let tag = tag(&self.key, self.counter, &out[start..]);
            out.extend_from_slice(&tag.as_bytes()[..TAG_BYTES]);
            self.counter += 1;
            at += len;
        }
    }
}

/// Lets rkyv serialize straight into the writer's chunk. Positions are relative to the meta's start,
/// because that is what rkyv aligns against, and where the reader will find the archive.
struct MetaWriter<'a> {
    buf: &'a mut BytesMut,
    base: usize,
}

impl Positional for MetaWriter<'_> {
    fn pos(&self) -> usize {
        self.buf.len() - self.base
    }
}

impl<E> Writer<E> for MetaWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Outgoing frames of one connection during one executor turn, as segments for one vectored write:
/// small parts (headers, metas, padding, small payloads) share one contiguous chunk; each larger payload
/// is its own segment, the caller's `Bytes` itself, so a fan-out to N peers shares one buffer.
#[derive(Debug, Default)]
pub struct FrameWriter {
    /// Headers, metas, padding and small payloads, in stream order.
    chunk: BytesMut,
    /// Large payloads, each with the position in `chunk` it goes before, in stream order. Kept out of
    /// `chunk` (shared, not copied) and without splitting it, so that `chunk` is never frozen
    /// mid-turn and its allocation is reused from one flush to the next.
    payloads: Vec<(usize, Bytes)>,
    /// Bytes queued in all; always a multiple of `FRAME_ALIGN`.
    len: usize,
}

enum Meta<'a> {
    Handshake(&'a Handshake),
    Proof(&'a Proof),
    Msg(&'a Msg),
}

impl FrameWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `msg`. On error (a message over a limit) nothing is queued: sending it would only make the
    /// peer close the connection, and resending would do so again.
    pub fn push_msg(&mut self, msg: &Msg) -> Result<(), WireError> {
        match payload_of!(msg) {
            Some(p) if !p.is_empty() => {
                let (meta, payload) = take_payload(msg);
                self.push(Meta::Msg(&meta), payload.as_ref())
            }
            // No payload, or an empty one: the message is its own meta, serialized without a clone.
            _ => self.push(Meta::Msg(msg), None),
        }
    }

    /// Queues a handshake frame.
    pub fn push_handshake(&mut self, h: &Handshake) -> Result<(), WireError> {
        self.push(Meta::Handshake(h), None)
    }

    /// Queues a proof frame.
    pub fn push_proof(&mut self, proof: &Proof) -> Result<(), WireError> {
        self.push(Meta::Proof(proof), None)
    }

    fn push(&mut self, meta: Meta<'_>, payload: Option<&Bytes>) -> Result<(), WireError> {
        let payload_len = payload.map_or(0, Bytes::len);
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(WireError::PayloadTooLarge { len: payload_len, max: MAX_PAYLOAD_BYTES });
        }
        let start = self.chunk.len();
        self.chunk.put_bytes(0, HEADER_LEN); // filled in once the meta's length is known
        let base = self.chunk.len();
        let writer = MetaWriter { buf: &mut self.chunk, base };
        let (kind, encoded) = match meta {
            Meta::Handshake(h) => (KIND_HANDSHAKE, to_bytes_in::<_, RkyvError>(h, writer).map(drop)),
            Meta::Msg(m) => (KIND_MSG, to_bytes_in::<_, RkyvError>(m, writer).map(drop)),
            Meta::Proof(p) => {
                writer.buf.extend_from_slice(&p.0);
                (KIND_PROOF, Ok(()))
            }
        };
        let meta_len = self.chunk.len() - base;
        let refused = match encoded {
            Err(e) => Some(WireError::Unencodable(e.to_string())),
            Ok(()) if meta_len > MAX_META_BYTES => {
                Some(WireError::MetaTooLarge { len: meta_len, max: MAX_META_BYTES })
            }
            Ok(()) => None,
        };
        if let Some(e) = refused {
            self.chunk.truncate(start);
            return Err(e);
        }
        let header = Header { kind, tagged: false, meta_len, payload_len };
        self.chunk[start..base].copy_from_slice(&header.encode());
        self.chunk.put_bytes(0, padded(meta_len) - meta_len);
        if let Some(p) = payload.filter(|p| !p.is_empty()) {
            if p.len() <= INLINE_PAYLOAD_MAX {
                self.chunk.extend_from_slice(p);
            } else {
                self.payloads.push((self.chunk.len(), p.clone()));
            }
            self.chunk.put_bytes(0, padded(p.len()) - p.len());
        }
        self.len += header.frame_len();
        Ok(())
    }

    /// The queued bytes as segments in stream order, for one vectored write; leaves the writer empty.
    /// (A writev takes at most `IOV_MAX` segments: write longer lists in several calls.)
    pub fn take_segments(&mut self) -> Vec<Bytes> {
        let chunk = self.chunk.split().freeze();
        let mut segments = Vec::with_capacity(2 * self.payloads.len() + 1);
        let mut at = 0;
        for (pos, payload) in self.payloads.drain(..) {
            if pos > at {
                segments.push(chunk.slice(at..pos));
            }
            segments.push(payload);
            at = pos;
        }
        if at < chunk.len() {
            segments.push(chunk.slice(at..));
        }
        self.len = 0;
        segments
    }

    /// Appends the queued bytes, in stream order, to `out` and leaves the writer empty with its buffer
    /// kept for reuse. For a socket without vectored writes this is the cheap path: one copy into the
    /// caller's send buffer, and no allocation per flush (freezing the chunk would force one).
    pub fn drain_into(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        let mut at = 0;
        for (pos, payload) in self.payloads.drain(..) {
            out.extend_from_slice(&self.chunk[at..pos]);
            out.extend_from_slice(&payload);
            at = pos;
        }
        out.extend_from_slice(&self.chunk[at..]);
        self.chunk.clear();
        self.len = 0;
        out.len() - before
    }

    /// How many bytes are queued.
    pub fn len_bytes(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Encodes one message as the segments of its frame (for tests and one-off sends).
pub fn encode_frame(msg: &Msg) -> Result<Vec<Bytes>, WireError> {
    let mut w = FrameWriter::new();
    w.push_msg(msg)?;
    Ok(w.take_segments())
}

/// The receive side of one connection: the socket reads into [`FrameReader::read_buf`], commits with
/// [`FrameReader::advance`], and [`FrameReader::next_frame`] yields validated frames.
///
/// After an error nothing is consumed and every later call returns the same error: close the connection.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// `[0, filled)`: received, not yet consumed; `[filled, len)`: zeroed room handed out by `read_buf`.
    buf: BytesMut,
    filled: usize,
    /// The length of the frame at the front once its header is in, so `read_buf` can offer room for
    /// all of it at once instead of growing (and copying) the buffer chunk by chunk.
    need: usize,
    misaligned_metas: u64,
    /// The largest frame this connection accepts (`None`: [`MAX_FRAME_BYTES`]).
    max_frame: Option<usize>,
    /// An authenticated connection's receive key and the count of frames checked under it.
    tags: Option<([u8; 32], u64)>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts frames of at most `max` bytes from now on (a connection still handshaking accepts a
    /// few KiB, so a stranger cannot make it buffer a large frame).
    pub fn limit_frames_to(&mut self, max: usize) {
        self.max_frame = Some(max.min(MAX_FRAME_BYTES));
    }

    /// Requires every frame from now on to carry a tag under `key` (the connection's receive key).
    pub fn authenticate(&mut self, key: [u8; 32]) {
        self.tags = Some((key, 0));
    }

    /// Room to read into: at least [`READ_CHUNK`] bytes, and the rest of a large frame once its header
    /// is in. Zeroed, because safe code cannot hand out uninitialised memory.
    pub fn read_buf(&mut self) -> &mut [u8] {
        let want = self.filled + READ_CHUNK.max(self.need.saturating_sub(self.filled));
        if self.buf.len() < want {
            if self.buf.capacity() < want {
                // Growing moves the bytes: carry only the received ones, not stale spare room.
                self.buf.truncate(self.filled);
            }
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Commits `n` bytes that the socket wrote at the start of [`FrameReader::read_buf`].
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.buf.len() - self.filled, "advance({n}) beyond the room read_buf offered");
        self.filled += n;
    }

    /// Received bytes not yet returned as frames: non-zero when the peer closes mid-frame.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// How many metas were not 16-aligned in the receive buffer and had to be copied to be read.
    pub fn misaligned_metas(&self) -> u64 {
        self.misaligned_metas
    }

    /// The next whole frame, `Ok(None)` if the buffered bytes do not hold one yet, or why the stream is bad.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.filled < HEADER_LEN {
            return Ok(None);
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = Header::parse(head, self.tags.is_some())?;
        let total = header.wire_len();
        let max = self.max_frame.unwrap_or(MAX_FRAME_BYTES);
        if total > max {
            return Err(WireError::FrameTooLarge { len: total, max });
        }
        if self.filled < total {
            self.need = total;
            return Ok(None);
        }
        self.need = 0;
        if let Some((key, counter)) = &mut self.tags {
            let len = header.frame_len();
            let expected = tag(key, *counter, &self.buf[..len]);
            let mut got = [0u8; 32];
            got[..TAG_BYTES].copy_from_slice(&self.buf[len..total]);
            got[TAG_BYTES..].copy_from_slice(&expected.as_bytes()[TAG_BYTES..]);
            // Constant-time comparison (blake3::Hash's `==`), of the 16 bytes sent.
            if expected != blake3::Hash::from(got) {
                return Err(WireError::BadTag);
            }
            *counter += 1;
        }
        let meta = &self.buf[HEADER_LEN..HEADER_LEN + header.meta_len];
        if !(meta.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
            self.misaligned_metas += 1;
        }
        let frame = if header.kind == KIND_HANDSHAKE {
            Frame::Handshake(decode::<Handshake>(meta)?)
        } else if header.kind == KIND_PROOF {
            let mut proof = [0u8; PROOF_BYTES];
            proof.copy_from_slice(meta);
            Frame::Proof(Proof(proof))
        } else {
            let mut msg = decode::<Msg>(meta)?;
            let kind = msg.name();
            match payload_of!(&mut msg) {
                // One encoding per message: a batch travels in the payload, never inside the meta.
                Some(slot) if !slot.is_empty() => return Err(WireError::InlinePayload { kind }),
                None if header.payload_len > 0 => return Err(WireError::UnexpectedPayload { kind }),
                Some(slot) if header.payload_len > 0 => {
                    // Zero copy: the frame leaves the buffer as shared bytes; the payload is a view of them.
                    let at = header.payload_at();
                    *slot = self.buf.split_to(total).freeze().slice(at..at + header.payload_len);
                    self.filled -= total;
                    return Ok(Some(Frame::Msg(msg)));
                }
                _ => {}
            }
            Frame::Msg(msg)
        };
        self.buf.advance(total);
        self.filled -= total;
        Ok(Some(frame))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::membership::View;
    use crate::protocol::messages::{encode_batch, AcceptedEntry, ClientReply, Command};
    use crate::protocol::{Ballot, RoleKind};
    use proptest::prelude::*;

    const B: Ballot = Ballot { round: 3, proposer: 2 };

    /// Opaque batch bytes: the wire never looks inside a payload.
    fn batch(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>().into()
    }

    fn cmd(seq: u64) -> Command {
        Command { client_id: 9, seq, op: Bytes::from_static(b"put k v") }
    }

    /// At least one message of every variant; those with a payload with a large, a small, an empty and a
    /// no-op one.
    pub(crate) fn samples() -> Vec<Msg> {
        let big = batch(4096);
        let real = encode_batch(vec![cmd(1), cmd(2)]);
        let reply = ClientReply { client_id: 9, seq: 1, result: Bytes::from_static(b"ok") };
        let entry = AcceptedEntry { slot: 4, ballot: B, value: Value::Batch(batch(40)) };
        let cluster = crate::protocol::ClusterConfig::f1(1, 1, 1, 1);
        let mut history = crate::protocol::configuration::ConfigHistory::new(&cluster, 1_000);
        let reconfig = crate::protocol::configuration::Configuration {
            epoch: 1,
            acceptor_groups: vec![vec![20, 21, 22]],
            ..crate::protocol::configuration::Configuration::from_cluster(&cluster)
        };
        let change =
            crate::protocol::configuration::Change { config: reconfig.clone(), from_slot: 15, ballot: B };
        history.on_chosen(11, &change);
        vec![
            Msg::ClientRequests(vec![cmd(1), cmd(2)]),
            Msg::ClientReplies(vec![reply.clone()]),
            Msg::NotLeader { leader_hint: Some(2) },
            Msg::ClientBatch { origin: 5, forwarded: true, attempt: 1, batch: big.clone() },
            Msg::ClientBatch { origin: 5, forwarded: false, attempt: 0, batch: Bytes::new() },
            Msg::BatchRefused { leader_hint: None, attempt: 2, batch: batch(100) },
            Msg::Heartbeat { ballot: B },
            Msg::Phase1a { ballot: B, nonce: 77, from_slot: 3 },
            Msg::Phase1b(crate::protocol::messages::Phase1bReply {
                ballot: B,
                nonce: 77,
                trimmed_below: 2,
                accepted: vec![entry],
                more_from: Some(9),
            }),
            Msg::Nack { promised: B },
            Msg::Propose { ballot: B, slot: 8, value: Value::Batch(real), group: vec![3, 4, 5] },
            Msg::Propose { ballot: B, slot: 9, value: Value::Noop, group: vec![3, 4, 5] },
            Msg::Propose {
                ballot: B,
                slot: 11,
                value: Value::Reconfig(change.encode()),
                group: vec![3, 4, 5],
            },
            Msg::Phase2a { ballot: B, slot: 8, value: Value::Batch(big.clone()) },
            Msg::Phase2a { ballot: B, slot: 10, value: Value::Noop },
            Msg::Phase2b { ballot: B, slot: 8 },
            Msg::Preempted { promised: B },
            Msg::Chosen { slot: 8, value: Value::Batch(batch(INLINE_PAYLOAD_MAX + 1)) },
            Msg::Chosen { slot: 9, value: Value::Noop },
            Msg::Executed { watermark: 9, configs: history.clone() },
            Msg::Reconfigure(reconfig.clone()),
            Msg::Reconfigured { epoch: 1, from_slot: 1_011, leader_us: 31_500 },
            Msg::ReconfigureRefused { epoch: 1, reason: "no".into() },
            Msg::StatusRequest,
            Msg::Status(crate::protocol::messages::NodeStatus {
                configuration: Some(history.latest().clone()),
                joined: vec![(500, crate::protocol::RoleKind::Batcher, "127.0.0.1:9".into())],
                digest: Some((3, 4)),
                ..crate::protocol::messages::NodeStatus::basic(crate::protocol::RoleKind::Proposer)
            }),
            Msg::CatchUp { from_slot: 4, max_slots: 1_000 },
            Msg::SnapshotOffer { slot: 40, len: 1 << 20, digest: 0xfeed },
            Msg::SnapshotFetch { slot: 40, offset: 1 << 18 },
            Msg::SnapshotChunk { slot: 40, offset: 1 << 18, bytes: batch(INLINE_PAYLOAD_MAX + 7) },
            Msg::ReadSlot { slot: 12 },
            Msg::SlotRead {
                slot: 12,
                accepted: Some(crate::protocol::messages::AcceptedEntry {
                    slot: 12,
                    ballot: B,
                    value: Value::Batch(batch(30)),
                }),
                trimmed: false,
            },
            Msg::SlotRead { slot: 13, accepted: None, trimmed: true },
            Msg::Trim { below: 4 },
            Msg::ReplyBatch { replies: vec![reply.clone(), reply] },
            Msg::Join { role: RoleKind::ProxyLeader, addr: "127.0.0.1:7400".into() },
            Msg::Leave,
            Msg::LeadNow,
            Msg::Abdicate { ballot: B },
            Msg::Busy(vec![(9, 1), (9 << 32, 7)]),
            Msg::LeaderLoad { ballot: B, full: true },
            Msg::BatchBusy { batch: batch(64) },
            Msg::Leaving,
            Msg::Left,
            Msg::RepliesTaken,
            Msg::Membership({
                let mut view = View::from_config(&crate::protocol::ClusterConfig::f1(1, 1, 1, 1));
                view.join(40, RoleKind::Unbatcher, "10.0.0.9:7000".into());
                view.start_leaving(40, |_| true);
                view.join(41, RoleKind::Batcher, "[::1]:7001".into());
                view
            }),
        ]
    }

    pub(crate) fn hello() -> Handshake {
        Handshake { nonce: [7; 32], ..Handshake::new("prod", 7, RoleKind::Acceptor) }
    }

    /// The frames `samples()` and a handshake make, and the bytes of them back to back.
    fn stream() -> (Vec<Frame>, Vec<u8>) {
        let mut w = FrameWriter::new();
        w.push_handshake(&hello()).unwrap();
        let mut frames = vec![Frame::Handshake(hello())];
        for m in samples() {
            w.push_msg(&m).unwrap();
            frames.push(Frame::Msg(m));
        }
        let len = w.len_bytes();
        let bytes = w.take_segments().concat();
        assert_eq!((bytes.len(), len % FRAME_ALIGN, w.is_empty()), (len, 0, true));
        (frames, bytes)
    }

    /// Copies `bytes` into the reader as the socket would.
    fn feed(r: &mut FrameReader, bytes: &[u8]) {
        r.read_buf()[..bytes.len()].copy_from_slice(bytes);
        r.advance(bytes.len());
    }

    /// Feeds `bytes` in pieces cut at `cuts`, draining frames after each piece.
    fn read_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, WireError> {
        let mut r = FrameReader::new();
        let mut frames = Vec::new();
        let mut at = 0;
        for end in cuts.iter().copied().chain([bytes.len()]) {
            let end = end.clamp(at, bytes.len());
            feed(&mut r, &bytes[at..end]);
            at = end;
            while let Some(f) = r.next_frame()? {
                frames.push(f);
            }
        }
        assert_eq!(r.buffered(), 0, "a whole stream leaves nothing behind");
        Ok(frames)
    }

    /// A frame assembled by hand, to say what no honest writer would.
    fn raw(kind: u8, flags: u32, meta: &[u8], payload: &[u8]) -> Vec<u8> {
        let header = Header { kind, tagged: false, meta_len: meta.len(), payload_len: payload.len() };
        let mut out = header.encode().to_vec();
        out[4..8].copy_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(meta);
        out.resize(header.payload_at(), 0);
        out.extend_from_slice(payload);
        out.resize(header.frame_len(), 0);
        out
    }

    fn first_frame(bytes: &[u8]) -> Result<Option<Frame>, WireError> {
        let mut r = FrameReader::new();
        feed(&mut r, bytes);
        r.next_frame()
    }

    #[test]
    fn drain_into_gives_the_same_bytes_as_the_segments_and_keeps_its_buffer() {
        let (mut a, mut b) = (FrameWriter::new(), FrameWriter::new());
        for m in samples() {
            a.push_msg(&m).unwrap();
            b.push_msg(&m).unwrap();
        }
        let segments: Vec<u8> = a.take_segments().iter().flat_map(|s| s.iter().copied()).collect();
        let mut drained = Vec::new();
        assert_eq!(b.drain_into(&mut drained), segments.len());
        assert_eq!(drained, segments);
        assert!(b.is_empty() && b.chunk.capacity() > 0, "the chunk's allocation is kept for the next turn");
    }

    #[test]
    fn every_variant_round_trips_in_one_read() {
        let variant = |m: &Msg| match m {
            Msg::ClientRequests(_) => 0,
            Msg::ClientReplies(_) => 1,
            Msg::NotLeader { .. } => 2,
            Msg::ClientBatch { .. } => 3,
            Msg::BatchRefused { .. } => 4,
            Msg::Heartbeat { .. } => 5,
            Msg::Phase1a { .. } => 6,
            Msg::Phase1b(_) => 7,
            Msg::Nack { .. } => 8,
            Msg::Propose { .. } => 9,
            Msg::Phase2a { .. } => 10,
            Msg::Phase2b { .. } => 11,
            Msg::Preempted { .. } => 12,
            Msg::Chosen { .. } => 13,
            Msg::Executed { .. } => 14,
            Msg::CatchUp { .. } => 15,
            Msg::Trim { .. } => 16,
            Msg::ReplyBatch { .. } => 17,
            Msg::Join { .. } => 18,
            Msg::Leave => 19,
            Msg::Leaving => 20,
            Msg::Left => 21,
            Msg::Membership(_) => 22,
            Msg::SnapshotOffer { .. } => 23,
            Msg::SnapshotFetch { .. } => 24,
            Msg::SnapshotChunk { .. } => 25,
            Msg::ReadSlot { .. } => 26,
            Msg::SlotRead { .. } => 27,
            Msg::Reconfigure(_) => 28,
            Msg::Reconfigured { .. } => 29,
            Msg::ReconfigureRefused { .. } => 30,
            Msg::StatusRequest => 31,
            Msg::Status(_) => 32,
            Msg::LeadNow => 33,
            Msg::Busy(_) => 34,
            Msg::LeaderLoad { .. } => 35,
            Msg::BatchBusy { .. } => 36,
            Msg::Abdicate { .. } => 37,
            Msg::RepliesTaken => 38,
        };
        let covered: std::collections::BTreeSet<_> = samples().iter().map(variant).collect();
        assert_eq!(covered.len(), 39, "samples() covers every Msg variant");
        let (frames, bytes) = stream();
        assert_eq!(read_in_pieces(&bytes, &[]), Ok(frames));
    }

    #[test]
    fn byte_by_byte_gives_the_same_frames_and_none_until_each_is_whole() {
        let (frames, bytes) = stream();
        let cuts: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(read_in_pieces(&bytes, &cuts), Ok(frames));
    }

    #[test]
    fn a_truncated_frame_is_none_and_stays_buffered() {
        let bytes = encode_frame(&samples()[3]).unwrap().concat();
        let mut r = FrameReader::new();
        feed(&mut r, &bytes[..bytes.len() - 1]);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), bytes.len() - 1);
        feed(&mut r, &bytes[bytes.len() - 1..]);
        assert_eq!(r.next_frame(), Ok(Some(Frame::Msg(samples()[3].clone()))));
    }

    #[test]
    fn a_received_payload_is_a_view_of_the_receive_buffer() {
        let bytes = encode_frame(&samples()[3]).unwrap().concat();
        let mut r = FrameReader::new();
        let room = r.read_buf();
        let region = room.as_ptr_range();
        room[..bytes.len()].copy_from_slice(&bytes);
        r.advance(bytes.len());
        let Some(Frame::Msg(Msg::ClientBatch { batch, .. })) = r.next_frame().unwrap() else { panic!() };
        assert_eq!(batch, batch_of(&samples()[3]));
        assert!(region.contains(&batch.as_ptr()) && region.contains(&batch[batch.len() - 1..].as_ptr()));
    }

    fn batch_of(m: &Msg) -> Bytes {
        take_payload(m).1.unwrap()
    }

    #[test]
    fn a_fan_out_shares_one_payload_buffer() {
        let big = batch(4096);
        let msg = Msg::Phase2a { ballot: B, slot: 1, value: Value::Batch(big.clone()) };
        for _ in 0..3 {
            let mut w = FrameWriter::new();
            w.push_msg(&Msg::Heartbeat { ballot: B }).unwrap();
            w.push_msg(&msg).unwrap();
            w.push_msg(&Msg::Heartbeat { ballot: B }).unwrap();
            let segments = w.take_segments();
            assert_eq!(segments.len(), 3, "chunk, payload, chunk");
            assert_eq!((segments[1].as_ptr(), segments[1].len()), (big.as_ptr(), big.len()));
        }
    }

    #[test]
    fn a_received_batch_is_forwarded_as_the_same_bytes() {
        let propose =
            Msg::Propose { ballot: B, slot: 1, value: Value::Batch(batch(4096)), group: vec![3, 4, 5] };
        let mut r = FrameReader::new();
        feed(&mut r, &encode_frame(&propose).unwrap().concat());
        let Some(Frame::Msg(Msg::Propose { value, .. })) = r.next_frame().unwrap() else { panic!() };
        let Value::Batch(received) = value.clone() else { panic!() };
        let segments = encode_frame(&Msg::Phase2a { ballot: B, slot: 1, value }).unwrap();
        assert_eq!(segments[1].as_ptr(), received.as_ptr());
    }

    #[test]
    fn a_small_payload_is_copied_into_the_chunk() {
        let msg = Msg::ClientBatch { origin: 1, forwarded: false, attempt: 0, batch: batch(64) };
        assert_eq!(encode_frame(&msg).unwrap().len(), 1);
    }

    #[test]
    fn a_misaligned_receive_buffer_is_read_through_a_copy() {
        let (frames, bytes) = stream();
        let mut r = FrameReader::new();
        // Start the buffer one byte into its allocation, so that no meta is aligned.
        r.buf.put_u8(0);
        r.buf.advance(1);
        feed(&mut r, &bytes);
        let got: Vec<Frame> = std::iter::from_fn(|| r.next_frame().unwrap()).collect();
        assert_eq!(got, frames);
        assert_eq!(r.misaligned_metas(), frames.len() as u64);
    }

    #[test]
    fn take_and_put_payload_are_inverse_and_put_refuses_a_variant_without_a_slot() {
        for m in samples() {
            let (mut meta, payload) = take_payload(&m);
            if let Some(p) = payload {
                assert!(payload_of!(&meta).is_some_and(Bytes::is_empty));
                put_payload(&mut meta, p).unwrap();
            }
            assert_eq!(meta, m);
        }
        let mut noop = Msg::Chosen { slot: 1, value: Value::Noop };
        assert_eq!(put_payload(&mut noop, batch(1)), Err(WireError::UnexpectedPayload { kind: "Chosen" }));
    }

    #[test]
    fn the_writer_refuses_a_message_over_the_limits_and_queues_nothing() {
        let huge = ClientReply { client_id: 1, seq: 1, result: batch(MAX_META_BYTES) };
        let mut w = FrameWriter::new();
        let err = w.push_msg(&Msg::ReplyBatch { replies: vec![huge] }).unwrap_err();
        assert!(matches!(err, WireError::MetaTooLarge { max: MAX_META_BYTES, .. }), "{err}");
        let too_big = Bytes::from(vec![0; MAX_PAYLOAD_BYTES + 1]);
        let err = w.push_msg(&Msg::ClientBatch { origin: 1, forwarded: false, attempt: 0, batch: too_big });
        assert_eq!(
            err,
            Err(WireError::PayloadTooLarge { len: MAX_PAYLOAD_BYTES + 1, max: MAX_PAYLOAD_BYTES })
        );
        assert!(w.is_empty() && w.take_segments().is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused_as_soon_as_its_header_is_in() {
        let mut meta_huge = raw(KIND_MSG, 0, &[], &[]);
        meta_huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = FrameReader::new();
        feed(&mut r, &meta_huge[..HEADER_LEN - 1]);
        assert_eq!(r.next_frame(), Ok(None));
        feed(&mut r, &meta_huge[HEADER_LEN - 1..HEADER_LEN]);
        let err = WireError::MetaTooLarge { len: u32::MAX as usize, max: MAX_META_BYTES };
        assert_eq!(r.next_frame(), Err(err.clone()));
        assert_eq!(r.next_frame(), Err(err), "the error sticks");
        assert!(r.read_buf().len() < 2 * READ_CHUNK, "nothing was reserved for the body");

        let mut payload_huge = raw(KIND_MSG, 0, &[], &[]);
        payload_huge[12..16].copy_from_slice(&((MAX_PAYLOAD_BYTES + 16) as u32).to_le_bytes());
        let err = WireError::PayloadTooLarge { len: MAX_PAYLOAD_BYTES + 16, max: MAX_PAYLOAD_BYTES };
        assert_eq!(first_frame(&payload_huge[..HEADER_LEN]), Err(err));
    }

    #[test]
    fn a_bad_header_field_is_named() {
        let good = encode_frame(&Msg::Trim { below: 3 }).unwrap().concat();
        let with = |at: usize, byte: u8| {
            let mut b = good.clone();
            b[at] = byte;
            first_frame(&b)
        };
        assert_eq!(with(0, b'X'), Err(WireError::BadMagic(0x5058)));
        assert_eq!(with(2, 1), Err(WireError::UnsupportedVersion(1)));
        assert_eq!(with(3, 9), Err(WireError::UnknownKind(9)));
        assert_eq!(with(7, 0x80), Err(WireError::UnknownFlags(0x8000_0000)));
    }

    #[test]
    fn a_proof_round_trips_and_a_proof_frame_of_another_size_is_refused() {
        let mut w = FrameWriter::new();
        w.push_proof(&Proof([9; PROOF_BYTES])).unwrap();
        let bytes = w.take_segments().concat();
        assert_eq!(first_frame(&bytes), Ok(Some(Frame::Proof(Proof([9; PROOF_BYTES])))));
        assert_eq!(first_frame(&raw(KIND_PROOF, 0, &[1; 16], &[])), Err(WireError::BadProofFrame(16)));
    }

    /// `frames` sealed under `key`.
    fn sealed(key: [u8; 32], frames: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameSealer::new(key).seal(frames, &mut out);
        out
    }

    #[test]
    fn sealed_frames_read_back_with_the_key_in_any_chunking() {
        let (frames, bytes) = stream();
        let wire = sealed([5; 32], &bytes);
        assert_eq!(wire.len(), bytes.len() + frames.len() * TAG_BYTES);
        for cut in [1, 17, 999, wire.len() / 2] {
            let mut r = FrameReader::new();
            r.authenticate([5; 32]);
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                feed(&mut r, piece);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn an_altered_forged_replayed_or_untagged_frame_is_refused() {
        let (_, bytes) = stream();
        let wire = sealed([5; 32], &bytes);
        let read = |key: [u8; 32], wire: &[u8]| {
            let mut r = FrameReader::new();
            r.authenticate(key);
            feed(&mut r, wire);
            drain(&mut r)
        };
        assert_eq!(read([5; 32], &wire), Ok(()));
        assert_eq!(read([6; 32], &wire), Err(WireError::BadTag), "another key");
        for at in [3 * HEADER_LEN, wire.len() / 2, wire.len() - 1] {
            let mut altered = wire.clone();
            altered[at] ^= 1;
            assert!(read([5; 32], &altered).is_err(), "a flipped bit at {at}");
        }
        // The first frame sent twice: the second copy is checked as frame 1, and fails.
        let first_len = {
            let mut r = FrameReader::new();
            feed(&mut r, &bytes);
            let before = r.buffered();
            r.next_frame().unwrap();
            before - r.buffered() + TAG_BYTES
        };
        let mut replayed = wire[..first_len].to_vec();
        replayed.extend_from_slice(&wire[..first_len]);
        assert_eq!(read([5; 32], &replayed), Err(WireError::BadTag));
        assert_eq!(read([5; 32], &bytes), Err(WireError::MissingTag), "untagged");
        assert_eq!(
            first_frame(&wire),
            Err(WireError::UnknownFlags(1)),
            "tagged to a reader that expects none"
        );
    }

    #[test]
    fn a_reader_limited_for_the_handshake_refuses_a_large_frame_from_its_header() {
        let big = Msg::ClientBatch { origin: 5, forwarded: true, attempt: 1, batch: batch(64 << 10) };
        let bytes = encode_frame(&big).unwrap().concat();
        let mut r = FrameReader::new();
        r.limit_frames_to(16 << 10);
        feed(&mut r, &bytes[..HEADER_LEN]);
        assert!(matches!(r.next_frame(), Err(WireError::FrameTooLarge { max: 16384, .. })));
    }

    #[test]
    fn garbage_meta_is_invalid_meta() {
        for meta in [&[][..], &[0xff; 3], &[0xab; 64]] {
            for kind in [KIND_MSG, KIND_HANDSHAKE] {
                let err = first_frame(&raw(kind, 0, meta, &[])).unwrap_err();
                assert!(matches!(err, WireError::InvalidMeta(_)), "{err}");
            }
        }
    }

    #[test]
    fn a_payload_where_none_belongs_is_refused() {
        let meta = |m: &Msg| rkyv::to_bytes::<RkyvError>(m).unwrap();
        let heartbeat = meta(&Msg::Heartbeat { ballot: B });
        let err = first_frame(&raw(KIND_MSG, 0, &heartbeat, b"extra"));
        assert_eq!(err, Err(WireError::UnexpectedPayload { kind: "Heartbeat" }));
        let noop = meta(&Msg::Phase2a { ballot: B, slot: 1, value: Value::Noop });
        let err = first_frame(&raw(KIND_MSG, 0, &noop, b"extra"));
        assert_eq!(err, Err(WireError::UnexpectedPayload { kind: "Phase2a" }));
        let hello = rkyv::to_bytes::<RkyvError>(&hello()).unwrap();
        let err = first_frame(&raw(KIND_HANDSHAKE, 0, &hello, b"x")[..HEADER_LEN]);
        assert_eq!(err, Err(WireError::UnexpectedPayload { kind: "Handshake" }));
        let inline = meta(&Msg::Chosen { slot: 1, value: Value::Batch(batch(8)) });
        let err = first_frame(&raw(KIND_MSG, 0, &inline, &[]));
        assert_eq!(err, Err(WireError::InlinePayload { kind: "Chosen" }));
    }

    /// Drains `r` until it wants more bytes or reports an error; must not panic.
    fn drain(r: &mut FrameReader) -> Result<(), WireError> {
        while r.next_frame()?.is_some() {}
        Ok(())
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_frames(mut cuts in prop::collection::vec(0usize..11_000, 0..40)) {
            let (frames, bytes) = stream();
            cuts.sort_unstable();
            prop_assert_eq!(read_in_pieces(&bytes, &cuts), Ok(frames));
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut r = FrameReader::new();
            for c in &chunks {
                feed(&mut r, c);
                if drain(&mut r).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn a_valid_header_over_arbitrary_bytes_never_panics(
            kind in 1u8..=2,
            meta in prop::collection::vec(any::<u8>(), 0..200),
            payload in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut r = FrameReader::new();
            feed(&mut r, &raw(kind, 0, &meta, &payload));
            let _ = drain(&mut r);
        }

        #[test]
        fn a_corrupted_valid_frame_never_panics(at in 0usize..4_000, byte in any::<u8>()) {
            let (_, mut bytes) = stream();
            let at = at % bytes.len();
            bytes[at] = byte;
            let mut r = FrameReader::new();
            feed(&mut r, &bytes);
            let _ = drain(&mut r);
        }
    }
}
