//! The wire codec: how a [`Msg`](crate::protocol::Msg) or a [`Handshake`] becomes frames on a TCP
//! stream and back, validated before use.
//!
//! **Sans-IO, like `src/protocol/`:** no sockets, no async, no clock. The runtime reads bytes into a
//! [`FrameReader`] and writes the segments of a [`FrameWriter`]; the simulator needs neither.
//! **Never panics on input:** every malformed byte sequence from a peer is a [`WireError`], for which the
//! caller closes that one connection with a logged reason. **Never copies a batch:** a batch travels as the
//! same reference-counted bytes from the receive buffer to every destination it is forwarded to.
//!
//! A frame, every length a multiple of [`FRAME_ALIGN`] so that, in a buffer of back-to-back frames whose
//! start is aligned, every meta is aligned for rkyv to read in place:
//!
//! ```text
//! offset 0   magic u16 LE = 0x5041 ("AP" on the wire) | version u8 | kind u8 (1 handshake, 2 msg,
//!            3 proof)
//!        4   flags u32 LE: bit 0 = a MAC tag follows the frame (`--authenticate-frames`); others 0
//!        8   meta_len u32 LE      (≤ MAX_META_BYTES)
//!       12   payload_len u32 LE   (≤ MAX_PAYLOAD_BYTES)
//!       16   meta: rkyv archive of a Handshake, or of a Msg with its large payload taken out
//!            zero padding to a multiple of 16
//!            payload: the raw bytes of that large payload (a batch), or nothing
//!            zero padding to a multiple of 16
//!            tag: 16 bytes, only with flag bit 0: keyed BLAKE3 (the connection's key for this
//!            direction) of the frame's bytes above and a frame counter (u64 LE)
//! ```

pub mod frame;
pub mod handshake;

pub use frame::{encode_frame, put_payload, take_payload, Frame, FrameReader, FrameSealer, FrameWriter};
pub use handshake::{Handshake, HandshakeError, Proof};

use crate::protocol::messages::ArchivedMsg;
use handshake::ArchivedHandshake;

/// Frame lengths and offsets are multiples of this; it must cover rkyv's alignment of every meta type.
pub const FRAME_ALIGN: usize = 16;
/// The fixed frame header: magic, version, kind, flags, meta_len, payload_len.
pub const HEADER_LEN: usize = 16;
/// The first two bytes of every frame, `b"AP"` read as a little-endian `u16`.
pub const MAGIC: u16 = 0x5041;
/// The version of the frame format and of the protocol; a peer speaking another one is refused.
/// Raised whenever the archived layout of a message changes (3: `NodeStatus.removed`), so that a
/// node of an older build is told so at the handshake instead of sending frames that do not decode.
pub const PROTOCOL_VERSION: u8 = 3;
/// The largest meta accepted or sent. Most metas are small (a batch travels as the payload), but a
/// client's command (a gateway's request: up to 8 MiB) and its reply (up to 8 MiB of values,
/// `kv::MAX_RESULT_BYTES`) travel in one; this bounds what a peer can make us buffer and validate
/// before anything is known about the frame.
pub const MAX_META_BYTES: usize = 16 << 20;
/// The largest payload (one batch) accepted or sent.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;
/// The largest possible frame: both limits are aligned, so it has no padding.
pub const MAX_FRAME_BYTES: usize = HEADER_LEN + MAX_META_BYTES + MAX_PAYLOAD_BYTES;
/// Bytes of the MAC tag after an authenticated frame: a multiple of the alignment, so frames after it
/// stay aligned.
pub const TAG_BYTES: usize = 16;
/// The least spare room [`FrameReader::read_buf`] offers, so one read syscall can take many frames.
pub const READ_CHUNK: usize = 64 << 10;
/// Payloads up to this size are copied next to their header instead of becoming their own segment:
/// below it a memcpy is cheaper than an iovec entry, and it keeps a writev of many tiny frames under IOV_MAX.
pub const INLINE_PAYLOAD_MAX: usize = 512;

const _: () = assert!(FRAME_ALIGN.is_power_of_two());
const _: () = assert!(HEADER_LEN.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(FRAME_ALIGN >= std::mem::align_of::<ArchivedMsg>());
const _: () = assert!(FRAME_ALIGN >= std::mem::align_of::<ArchivedHandshake>());
const _: () =
    assert!(MAX_META_BYTES.is_multiple_of(FRAME_ALIGN) && MAX_PAYLOAD_BYTES.is_multiple_of(FRAME_ALIGN));
// Lengths travel as u32, and header arithmetic on them must not overflow a 32-bit usize.
const _: () = assert!(MAX_FRAME_BYTES <= u32::MAX as usize && usize::BITS >= 32);
const _: () = assert!(TAG_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(READ_CHUNK >= HEADER_LEN && INLINE_PAYLOAD_MAX < MAX_PAYLOAD_BYTES);

/// Why bytes from a peer (or a message to send) are not a valid frame. Each one ends that connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with [`MAGIC`]: the peer is not autopaxos, or the stream lost sync.
    #[error("bad magic 0x{0:04x} (expected 0x5041 \"AP\"): not an autopaxos stream or lost sync")]
    BadMagic(u16),
    /// The peer speaks another frame/protocol version.
    #[error("unsupported version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The header's kind byte names no known frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Reserved flag bits are set; a newer peer may mean something by them that we cannot honour.
    #[error("unknown flags 0x{0:08x}")]
    UnknownFlags(u32),
    /// The meta is over the limit.
    #[error("meta of {len} bytes exceeds the limit of {max}")]
    MetaTooLarge {
        /// The meta's length.
        len: usize,
        /// [`MAX_META_BYTES`].
        max: usize,
    },
    /// The payload is over the limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// [`MAX_PAYLOAD_BYTES`].
        max: usize,
    },
    /// The meta failed rkyv validation (bytecheck) or deserialization.
    #[error("invalid meta: {0}")]
    InvalidMeta(String),
    /// A payload came with (or was put into) a frame or message that has no payload slot.
    #[error("{kind} carries no payload, but one was given")]
    UnexpectedPayload {
        /// The message name, or "Handshake".
        kind: &'static str,
    },
    /// The meta carries its batch inline instead of in the payload: not how any sender encodes it.
    #[error("{kind} carries its batch inside the meta; it belongs in the payload")]
    InlinePayload {
        /// The message name.
        kind: &'static str,
    },
    /// The frame is larger than this connection buffers (a connection still handshaking buffers
    /// little).
    #[error("frame of {len} bytes exceeds this connection's limit of {max}")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The connection's limit.
        max: usize,
    },
    /// A proof frame whose meta is not exactly one proof.
    #[error("a proof frame of {0} bytes (expected {PROOF_BYTES})", PROOF_BYTES = handshake::PROOF_BYTES)]
    BadProofFrame(usize),
    /// The connection authenticates its frames and this one carries no tag.
    #[error("a frame without the MAC tag this connection requires")]
    MissingTag,
    /// The frame's MAC tag does not match: altered, replayed, reordered or forged.
    #[error("a frame whose MAC tag does not match (altered, replayed or forged)")]
    BadTag,
    /// Serializing an outgoing meta failed (cannot happen for in-memory values short of a 2 GiB archive).
    #[error("cannot encode meta: {0}")]
    Unencodable(String),
}

impl From<crate::protocol::messages::DecodeError> for WireError {
    fn from(e: crate::protocol::messages::DecodeError) -> Self {
        WireError::InvalidMeta(e.0)
    }
}
