//! Fuzzers for the parsers that read bytes from strangers: the frame decoder ([`FrameReader`], what
//! every node runs on what its peers send) and the RESP parsers ([`resp::parse_request`], what a
//! gateway runs on what clients send; [`resp::parse_reply`], what our RESP clients run on replies).
//!
//! Each fuzzer starts from a corpus of small seed inputs (`tests/data/fuzz/frame/`,
//! `tests/data/fuzz/resp/`: valid inputs of every kind and edge cases), replayed whole on every run,
//! and mutates them: bit flips, byte changes, truncation, insertions, removals, a length field
//! replaced by a huge, negative or off-by-one value, two inputs back to back, delivery split at
//! random points. Properties: no panic; memory within the declared limits; every input ends in
//! parsed items followed by an error, by bytes waiting for more, or by nothing; how the bytes are
//! split never changes the outcome; what parses re-encodes to itself. An input that once broke a
//! property stays in the corpus (`regress-*`).
//!
//! The short pass runs with the unit tests. `AUTOPAXOS_FUZZ_CASES=N` runs N cases per fuzzer.

use crate::protocol::messages::Msg;
use crate::protocol::{Ballot, RoleKind, Value};
use crate::resp::{self, Limits, Reply};
use crate::runtime::gateway::READ_CHUNK as GATEWAY_READ_CHUNK;
use crate::wire::frame::tests::{hello, samples};
use crate::wire::handshake::{Proof, PROOF_BYTES};
use crate::wire::{
    Frame, FrameReader, FrameWriter, Handshake, WireError, FRAME_ALIGN, HEADER_LEN, MAX_FRAME_BYTES,
    MAX_META_BYTES, MAX_PAYLOAD_BYTES, READ_CHUNK,
};
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use std::path::{Path, PathBuf};

/// Cases per fuzzer in the unit-test pass: the whole module stays within a few seconds.
const DEFAULT_CASES: u32 = 2_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("AUTOPAXOS_FUZZ_CASES").ok().and_then(|v| v.parse().ok());
    ProptestConfig { cases: cases.unwrap_or(DEFAULT_CASES), ..ProptestConfig::default() }
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz").join(kind)
}

/// The corpus of `kind`, sorted by name.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| {
            let name = p.file_name().expect("a file").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("readable corpus file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds the seed corpus", dir.display());
    files
}

fn corpus_bytes(kind: &str) -> Vec<Vec<u8>> {
    corpus(kind).into_iter().map(|(_, b)| b).collect()
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    /// A length field rewritten: a frame header's meta or payload length, or the digits after a
    /// RESP `*` or `$`.
    Length(Index, LengthValue),
    /// Another input appended.
    Concat(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
enum LengthValue {
    Raw(u32),
    Text(&'static str),
}

/// Lengths at and around every limit, huge, negative and malformed.
fn length_value() -> impl Strategy<Value = LengthValue> {
    let frame = [
        0,
        1,
        FRAME_ALIGN as u32,
        MAX_META_BYTES as u32,
        MAX_META_BYTES as u32 + 1,
        MAX_PAYLOAD_BYTES as u32,
        MAX_PAYLOAD_BYTES as u32 + 1,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX,
    ];
    let text = [
        "0",
        "1",
        "-1",
        "-2",
        "65536",
        "65537",
        "1048576",
        "1048577",
        "9223372036854775807",
        "-9223372036854775808",
        "99999999999999999999",
        "+1",
        "",
        " 1",
        "00000000000000000000000000000000001",
    ];
    prop_oneof![
        select(frame.to_vec()).prop_map(LengthValue::Raw),
        any::<u32>().prop_map(LengthValue::Raw),
        (0u32..64).prop_map(LengthValue::Raw),
        select(text.to_vec()).prop_map(LengthValue::Text),
    ]
}

fn mutation(others: Vec<Vec<u8>>) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        3 => (any::<Index>(), length_value()).prop_map(|(i, v)| Mutation::Length(i, v)),
        1 => select(others).prop_map(Mutation::Concat),
    ]
}

/// Where length fields live in each format.
#[derive(Clone, Copy)]
enum Format {
    Frame,
    Resp,
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation, format: Format) {
    let len = bytes.len();
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, n) if len > 0 => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Length(i, v) => set_length(bytes, i, *v, format),
        Mutation::Concat(other) => bytes.extend_from_slice(other),
        _ => {}
    }
}

fn set_length(bytes: &mut Vec<u8>, i: &Index, v: LengthValue, format: Format) {
    match format {
        Format::Frame => {
            // Frames start 16-aligned; their lengths are the header's words at 8 and 12.
            let header = i.index(bytes.len() / FRAME_ALIGN + 1) * FRAME_ALIGN;
            let at = header + if i.index(2) == 0 { 8 } else { 12 };
            let word = match v {
                LengthValue::Raw(w) => w,
                LengthValue::Text(t) => t.parse::<i64>().map_or(u32::MAX, |n| n as u32),
            };
            if at + 4 <= bytes.len() {
                bytes[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
        }
        Format::Resp => {
            // The digits after a `*` or `$` at or after a random point.
            let Some(tag) =
                (i.index(bytes.len() + 1)..bytes.len()).find(|&k| matches!(bytes[k], b'*' | b'$'))
            else {
                return;
            };
            let end = (tag + 1..bytes.len()).find(|&k| bytes[k] == b'\r').unwrap_or(bytes.len());
            let text = match v {
                LengthValue::Raw(w) => (w as i32).to_string(),
                LengthValue::Text(t) => t.to_string(),
            };
            bytes.splice(tag + 1..end, text.into_bytes());
        }
    }
}

/// Splits `len` bytes at `cuts` into the ends of successive deliveries.
fn ends(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(len)).collect();
    ends.sort_unstable();
    ends.push(len);
    ends
}

// ---------------------------------------------------------------------------------------------
// The frame decoder
// ---------------------------------------------------------------------------------------------

/// How a stream ended once every byte was delivered.
#[derive(Debug, Clone, PartialEq)]
enum End<E> {
    /// Every byte was taken.
    Clean,
    /// These many bytes wait for the rest of an item.
    Waiting(usize),
    /// The stream is bad; the connection closes.
    Error(E),
}

#[derive(Debug, Clone, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    end: End<WireError>,
}

/// Runs `bytes` through a [`FrameReader`] as a connection does: each delivery read into
/// `read_buf` (over several reads if it is larger than the room offered), then frames drained.
fn decode_frames(bytes: &[u8], cuts: &[usize]) -> Decoded {
    let mut r = FrameReader::new();
    let mut frames = Vec::new();
    let mut at = 0;
    for end in ends(bytes.len(), cuts) {
        while at < end {
            let room = r.read_buf().len();
            // What the reader holds and offers never passes the largest frame plus one read.
            assert!(room > 0, "read_buf offers room");
            assert!(
                r.buffered() + room <= MAX_FRAME_BYTES + READ_CHUNK,
                "{} buffered + {room} offered",
                r.buffered()
            );
            let n = room.min(end - at);
            r.read_buf()[..n].copy_from_slice(&bytes[at..at + n]);
            r.advance(n);
            at += n;
            loop {
                match r.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => {
                        assert_eq!(r.next_frame(), Err(e.clone()), "an error stays");
                        return Decoded { frames, end: End::Error(e) };
                    }
                }
            }
        }
    }
    let end = if r.buffered() == 0 { End::Clean } else { End::Waiting(r.buffered()) };
    Decoded { frames, end }
}

fn encode_frames(frames: &[Frame]) -> Vec<u8> {
    let mut w = FrameWriter::new();
    for f in frames {
        match f {
            Frame::Handshake(h) => w.push_handshake(h),
            Frame::Msg(m) => w.push_msg(m),
            Frame::Proof(p) => w.push_proof(p),
        }
        .expect("within the limits");
    }
    w.take_segments().concat()
}

/// The frame properties for one input.
fn check_frames(bytes: &[u8], cuts: &[usize]) -> Result<Decoded, TestCaseError> {
    let whole = decode_frames(bytes, &[]);
    let split = decode_frames(bytes, cuts);
    prop_assert_eq!(&split, &whole, "how the bytes are split changes nothing");
    if let End::Waiting(n) = whole.end {
        prop_assert!(n <= bytes.len());
    }
    // What decodes re-encodes to frames that decode to it again.
    for f in &whole.frames {
        let again = decode_frames(&encode_frames(std::slice::from_ref(f)), &[]);
        prop_assert_eq!(again, Decoded { frames: vec![f.clone()], end: End::Clean });
    }
    Ok(whole)
}

/// A few frames built with the real encoders: a sample of every kind, and some with random fields.
fn valid_frames() -> impl Strategy<Value = Vec<Frame>> {
    let samples: Vec<Frame> = [Frame::Handshake(hello()), Frame::Proof(Proof([9; PROOF_BYTES]))]
        .into_iter()
        .chain(samples().into_iter().map(Frame::Msg))
        .collect();
    let ballot = (any::<u64>(), any::<u32>()).prop_map(|(round, proposer)| Ballot { round, proposer });
    let random = prop_oneof![
        (any::<u32>(), any::<bool>(), any::<u8>(), vec(any::<u8>(), 0..2_000)).prop_map(
            |(origin, forwarded, attempt, b)| Msg::ClientBatch {
                origin,
                forwarded,
                attempt,
                batch: Bytes::from(b)
            }
        ),
        (ballot.clone(), any::<u64>(), vec(any::<u8>(), 0..700)).prop_map(|(ballot, slot, b)| Msg::Phase2a {
            ballot,
            slot,
            value: if b.is_empty() { Value::Noop } else { Value::Batch(Bytes::from(b)) },
        }),
        (ballot, any::<u64>(), any::<u64>()).prop_map(|(ballot, nonce, from_slot)| Msg::Phase1a {
            ballot,
            nonce,
            from_slot
        }),
    ]
    .prop_map(Frame::Msg);
    let handshake =
        (".{0,40}", any::<u32>(), select(vec![RoleKind::Acceptor, RoleKind::Replica, RoleKind::Gateway]))
            .prop_map(|(cluster, id, role)| Frame::Handshake(Handshake::new(cluster, id, role)));
    vec(prop_oneof![3 => select(samples), 2 => random, 1 => handshake], 1..8)
}

fn frame_input() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let seeds = corpus_bytes("frame");
    let start = prop_oneof![
        4 => select(seeds.clone()),
        1 => vec(any::<u8>(), 0..300),
        2 => valid_frames().prop_map(|f| encode_frames(&f)),
    ];
    (start, vec(mutation(seeds), 0..4), vec(0usize..12_000, 0..12)).prop_map(|(mut bytes, muts, cuts)| {
        for m in &muts {
            mutate(&mut bytes, m, Format::Frame);
        }
        (bytes, cuts)
    })
}

// ---------------------------------------------------------------------------------------------
// RESP
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Parsed<T> {
    items: Vec<T>,
    end: End<String>,
}

/// Limits small enough for the fuzzer to cross each, and the gateway's own.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        Just(Limits::default()),
        Just(Limits { max_bulk: 16, max_args: 4, max_inline: 40, max_request: 96 }),
    ]
}

/// Runs `bytes` through [`resp::parse_request`] as the gateway does: each delivery (at most one read
/// chunk at a time) appended to the connection's buffer, then whole requests parsed off its front.
fn parse_requests(bytes: &[u8], cuts: &[usize], limits: &Limits) -> Parsed<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut items = Vec::new();
    let mut at = 0;
    for end in ends(bytes.len(), cuts) {
        while at < end {
            let n = GATEWAY_READ_CHUNK.min(end - at);
            buf.extend_from_slice(&bytes[at..at + n]);
            at += n;
            // The buffer never holds more than the request cap plus one read.
            assert!(buf.len() <= limits.max_request + GATEWAY_READ_CHUNK, "{} buffered", buf.len());
            let mut start = 0;
            loop {
                match resp::parse_request(&buf[start..], limits) {
                    Ok(Some(r)) => {
                        assert!(r.consumed > 0 && r.consumed <= buf.len() - start, "consumed {}", r.consumed);
                        // Within the limits (an inline line's argument count is bounded by its length).
                        assert!(r.args.iter().all(|a| a.len() <= limits.max_bulk));
                        assert!(buf[start] != b'*' || r.args.len() <= limits.max_args);
                        start += r.consumed;
                        if !r.args.is_empty() {
                            items.push(r.args);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Parsed { items, end: End::Error(e.0) },
                }
            }
            buf.drain(..start);
        }
    }
    Parsed { items, end: if buf.is_empty() { End::Clean } else { End::Waiting(buf.len()) } }
}

/// Runs `bytes` through [`resp::parse_reply`] as our RESP clients do.
fn parse_replies(bytes: &[u8], cuts: &[usize]) -> Parsed<Reply> {
    let mut buf = Vec::new();
    let mut items = Vec::new();
    for w in std::iter::once(0).chain(ends(bytes.len(), cuts)).collect::<Vec<_>>().windows(2) {
        buf.extend_from_slice(&bytes[w[0]..w[1]]);
        loop {
            match resp::parse_reply(&buf) {
                Ok(Some((reply, used))) => {
                    assert!(used > 0 && used <= buf.len(), "used {used}");
                    items.push(reply);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(e) => return Parsed { items, end: End::Error(e.0) },
            }
        }
    }
    Parsed { items, end: if buf.is_empty() { End::Clean } else { End::Waiting(buf.len()) } }
}

fn check_requests(
    bytes: &[u8],
    cuts: &[usize],
    limits: &Limits,
) -> Result<Parsed<Vec<Vec<u8>>>, TestCaseError> {
    let whole = parse_requests(bytes, &[], limits);
    prop_assert_eq!(&parse_requests(bytes, cuts, limits), &whole, "how the bytes are split changes nothing");
    // What parses re-encodes (as a client library would send it) to itself.
    for args in &whole.items {
        let parts: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let again = parse_requests(&resp::encode_request(&parts), &[], &Limits::default());
        prop_assert_eq!(again, Parsed { items: vec![args.clone()], end: End::Clean });
    }
    Ok(whole)
}

fn check_replies(bytes: &[u8], cuts: &[usize]) -> Result<Parsed<Reply>, TestCaseError> {
    let whole = parse_replies(bytes, &[]);
    prop_assert_eq!(&parse_replies(bytes, cuts), &whole, "how the bytes are split changes nothing");
    Ok(whole)
}

fn arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..24), "[a-z]{1,8}".prop_map(String::into_bytes)]
}

fn reply() -> impl Strategy<Value = Reply> {
    let leaf = prop_oneof![
        "[ -~]{0,20}".prop_map(Reply::Simple),
        "[ -~]{0,20}".prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Integer),
        vec(any::<u8>(), 0..30).prop_map(Reply::Bulk),
        Just(Reply::Nil),
        Just(Reply::NilArray),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| vec(inner, 0..5).prop_map(Reply::Array))
}

fn resp_input() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let seeds = corpus_bytes("resp");
    let requests = vec(vec(arg(), 1..5), 1..4).prop_map(|rs| {
        rs.iter()
            .flat_map(|r| resp::encode_request(&r.iter().map(Vec::as_slice).collect::<Vec<_>>()))
            .collect()
    });
    let start = prop_oneof![
        4 => select(seeds.clone()),
        1 => vec(any::<u8>(), 0..200),
        2 => requests,
        1 => vec(reply(), 1..4).prop_map(|rs| rs.iter().flat_map(Reply::to_bytes).collect()),
    ];
    (start, vec(mutation(seeds), 0..4), vec(0usize..400, 0..10)).prop_map(|(mut bytes, muts, cuts)| {
        for m in &muts {
            mutate(&mut bytes, m, Format::Resp);
        }
        (bytes, cuts)
    })
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Cut points every `step` bytes.
fn every(step: usize, len: usize) -> Vec<usize> {
    (step..len).step_by(step).collect()
}

#[test]
fn the_frame_corpus_replays_clean() {
    for (name, bytes) in corpus("frame") {
        for step in [1, 7, 16, 1000] {
            let d = check_frames(&bytes, &every(step, bytes.len())).unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.starts_with("valid-") {
                assert!(!d.frames.is_empty() && d.end == End::Clean, "{name}: {:?}", d.end);
            }
        }
    }
}

#[test]
fn the_resp_corpus_replays_clean() {
    for (name, bytes) in corpus("resp") {
        for step in [1, 3, 32, 1000] {
            let cuts = every(step, bytes.len());
            for limits in
                [Limits::default(), Limits { max_bulk: 16, max_args: 4, max_inline: 40, max_request: 96 }]
            {
                let p = check_requests(&bytes, &cuts, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
                if name.starts_with("valid-") && limits == Limits::default() {
                    assert!(!p.items.is_empty() && p.end == End::Clean, "{name}: {:?}", p.end);
                }
            }
            let p = check_replies(&bytes, &cuts).unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.starts_with("reply-") {
                assert!(!p.items.is_empty() && p.end == End::Clean, "{name}: {:?}", p.end);
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frames_mutated_from_the_corpus_never_break_the_reader((bytes, cuts) in frame_input()) {
        check_frames(&bytes, &cuts)?;
    }

    #[test]
    fn valid_frames_split_anywhere_decode_to_what_was_sent(
        frames in valid_frames(), cuts in vec(0usize..12_000, 0..12),
    ) {
        let bytes = encode_frames(&frames);
        prop_assert_eq!(check_frames(&bytes, &cuts)?, Decoded { frames, end: End::Clean });
    }

    #[test]
    fn resp_mutated_from_the_corpus_never_breaks_the_parsers(
        (bytes, cuts) in resp_input(), limits in limits(),
    ) {
        check_requests(&bytes, &cuts, &limits)?;
        check_replies(&bytes, &cuts)?;
    }

    #[test]
    fn valid_requests_and_replies_split_anywhere_parse_to_what_was_sent(
        requests in vec(vec(arg(), 1..5), 1..4), replies in vec(reply(), 1..4), cuts in vec(0usize..400, 0..10),
    ) {
        let wire: Vec<u8> = requests
            .iter()
            .flat_map(|r| resp::encode_request(&r.iter().map(Vec::as_slice).collect::<Vec<_>>()))
            .collect();
        prop_assert_eq!(check_requests(&wire, &cuts, &Limits::default())?, Parsed { items: requests, end: End::Clean });
        let wire: Vec<u8> = replies.iter().flat_map(Reply::to_bytes).collect();
        prop_assert_eq!(check_replies(&wire, &cuts)?, Parsed { items: replies, end: End::Clean });
    }
}

/// Writes the seed corpus (valid inputs of every kind and edge cases). Run by hand after a change of
/// the formats: `cargo test --release --lib fuzz::write_the_seed_corpus -- --ignored`. Regression
/// inputs (`regress-*`) are added by hand and never rewritten.
#[test]
#[ignore]
fn write_the_seed_corpus() {
    let write = |kind: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(kind);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("corpus file");
    };
    // Frames: one of every kind, all back to back, and edge cases around the header's limits.
    write("frame", "valid-handshake", &encode_frames(&[Frame::Handshake(hello())]));
    write("frame", "valid-proof", &encode_frames(&[Frame::Proof(Proof([9; PROOF_BYTES]))]));
    let mut all = vec![Frame::Handshake(hello())];
    for (i, m) in samples().into_iter().enumerate() {
        write("frame", &format!("valid-{i:02}-{}", m.name()), &encode_frames(&[Frame::Msg(m.clone())]));
        all.push(Frame::Msg(m));
    }
    let stream = encode_frames(&all);
    write("frame", "valid-stream-of-every-kind", &stream);
    let header = |kind: u8, meta: u32, payload: u32| {
        let mut h = vec![0x41, 0x50, 1, kind, 0, 0, 0, 0];
        h.extend_from_slice(&meta.to_le_bytes());
        h.extend_from_slice(&payload.to_le_bytes());
        h
    };
    write("frame", "edge-zero-lengths-msg", &header(2, 0, 0));
    write("frame", "edge-zero-lengths-handshake", &header(1, 0, 0));
    write(
        "frame",
        "edge-max-lengths-header-only",
        &header(2, MAX_META_BYTES as u32, MAX_PAYLOAD_BYTES as u32),
    );
    write("frame", "edge-meta-one-over", &header(2, MAX_META_BYTES as u32 + 1, 0));
    write("frame", "edge-payload-one-over", &header(2, 16, MAX_PAYLOAD_BYTES as u32 + 1));
    write("frame", "edge-lengths-all-ones", &header(2, u32::MAX, u32::MAX));
    write("frame", "edge-handshake-with-payload", &header(1, 16, 16));
    write("frame", "edge-truncated-header", &stream[..HEADER_LEN - 1]);
    write("frame", "edge-truncated-stream", &stream[..stream.len() / 2 + 3]);
    let mut bad = stream[..64].to_vec();
    bad[0] = b'X';
    write("frame", "edge-bad-magic", &bad);
    // RESP: requests as client libraries and people send them, replies as the gateway sends them.
    let req = |args: &[&str]| resp::encode_request(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>());
    write("resp", "valid-set", &req(&["SET", "key", "value"]));
    write(
        "resp",
        "valid-pipeline",
        &[req(&["GET", "a"]), req(&["INCR", "n"]), req(&["MSET", "a", "1", "b", ""])].concat(),
    );
    write("resp", "valid-inline", b"PING hello\r\nSET k \"a b\\n\\x41\" 'it\\'s'\r\n");
    write("resp", "edge-zero-args", b"*0\r\n");
    write("resp", "edge-negative-args", b"*-5\r\n");
    write("resp", "edge-null-bulk", b"*1\r\n$-1\r\n");
    write("resp", "edge-empty-bulk", b"*1\r\n$0\r\n\r\n");
    write("resp", "edge-max-bulk-header-only", b"*1\r\n$1048576\r\n");
    write("resp", "edge-bulk-one-over", b"*1\r\n$1048577\r\n");
    write("resp", "edge-args-one-over", b"*65537\r\n");
    write("resp", "edge-huge-length", b"*1\r\n$9223372036854775807\r\n");
    write("resp", "edge-truncated", &req(&["SET", "key", "value"])[..17]);
    write("resp", "edge-empty-lines", b"\r\n\n\r\n");
    write("resp", "edge-unbalanced-quotes", b"SET k \"open\r\n");
    let replies = [
        Reply::ok(),
        Reply::err("bad"),
        Reply::Integer(-7),
        Reply::Bulk(b"v\r\n".to_vec()),
        Reply::Nil,
        Reply::NilArray,
        Reply::Array(vec![Reply::Integer(1), Reply::Array(vec![Reply::Bulk(Vec::new())])]),
    ];
    write("resp", "reply-every-kind", &replies.iter().flat_map(Reply::to_bytes).collect::<Vec<_>>());
    write("resp", "edge-reply-negative-bulk", b"$-2\r\n");
}
