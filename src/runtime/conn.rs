//! Connections: dial with backoff (launch order never matters), accept within the node's caps,
//! handshake both ways (each side proves the cluster secret, `wire::handshake`), then a reader that
//! handles at most `read_budget` frames before yielding to the other connections, and a writer that
//! sends everything queued during a turn in one write.
//!
//! A bad frame or handshake closes that one connection with a logged reason and a counter; the node
//! keeps serving everyone else. Must never: panic on network input; block the executor; buffer more
//! than a few KiB for a peer that has not proved the secret; wait forever for a frame begun.

use super::limits::{Claim, Partial, Refusal, Ticket, HANDSHAKE_BUFFER_BYTES};
use super::node::{Host, Peer};
use crate::protocol::NodeId;
use crate::wire::handshake::{frame_keys, prove, verify, Side};
use crate::wire::{Frame, FrameReader, FrameSealer, FrameWriter, Handshake, HandshakeError, WireError};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// First and last delay between attempts to reach a peer that is down.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// Dialled connections the peer closed within [`CLOSED_AT_ONCE`] of their opening, in a row, after
/// which the node says so: a peer that refuses this node's id as already connected (another process
/// running as this node) closes every connection right after the handshake, and otherwise only the
/// peer's log says why (a second gateway with a taken id hung its clients without a word).
const CLOSED_AT_ONCE_IN_A_ROW: u32 = 5;
const CLOSED_AT_ONCE: Duration = Duration::from_secs(1);

/// A node of this process saw a peer close [`CLOSED_AT_ONCE_IN_A_ROW`] connections right after they
/// opened: what a process that reports it served nothing can add to its error.
static CLOSED_AT_ONCE_SEEN: std::sync::Mutex<Option<(NodeId, NodeId)>> = std::sync::Mutex::new(None);

/// The (node, peer) of this process that last saw every connection closed right after it opened,
/// if any: another process is probably running as that node.
pub fn refused_as_taken() -> Option<(NodeId, NodeId)> {
    *CLOSED_AT_ONCE_SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("peer closed the connection")]
    Eof,
    #[error("peer closed the connection in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("refused handshake: {0}")]
    Refused(#[from] HandshakeError),
    #[error("bad handshake: {0}")]
    Handshake(String),
    #[error("no handshake and proof within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("a frame begun {0:?} ago is still not whole (slowloris?)")]
    FrameTimeout(Duration),
    #[error("node {0} is already connected from elsewhere; a second connection claiming it is refused")]
    DuplicateNode(NodeId),
}

impl Closed {
    /// What to count this close as: a bad frame, a refused handshake, or nothing (ordinary closes).
    fn reason(&self) -> Option<(Count, &'static str)> {
        match self {
            Closed::Eof | Closed::Io(_) => None,
            Closed::Wire(e) => Some((Count::BadFrame, wire_label(e))),
            Closed::Truncated(_) => Some((Count::BadFrame, "truncated")),
            Closed::FrameTimeout(_) => Some((Count::BadFrame, "frame_timeout")),
            Closed::Refused(e) => Some((Count::Handshake, e.label())),
            Closed::Handshake(_) => Some((Count::Handshake, "malformed")),
            Closed::HandshakeTimeout(_) => Some((Count::Handshake, "timeout")),
            Closed::DuplicateNode(_) => Some((Count::Refused, Refusal::DuplicateNode.label())),
        }
    }
}

/// Which counter a close goes to.
enum Count {
    BadFrame,
    Handshake,
    Refused,
}

/// A short, fixed label per kind of bad frame (a metrics label must not carry free text).
fn wire_label(e: &WireError) -> &'static str {
    match e {
        WireError::BadMagic(_) => "bad_magic",
        WireError::UnsupportedVersion(_) => "unsupported_version",
        WireError::MetaTooLarge { .. }
        | WireError::PayloadTooLarge { .. }
        | WireError::FrameTooLarge { .. } => "too_large",
        WireError::InvalidMeta(_) => "invalid_meta",
        WireError::MissingTag | WireError::BadTag => "bad_tag",
        _ => "invalid_frame",
    }
}

/// A close between frames is ordinary; one in the middle of a frame is a bad frame.
fn closed_at_eof(reader: &FrameReader) -> Closed {
    match reader.buffered() {
        0 => Closed::Eof,
        n => Closed::Truncated(n),
    }
}

/// Keeps a connection to `peer_id` at `addr` up for as long as the node lives, writing what is
/// queued in `peer`.
pub async fn dial_loop(
    host: Rc<Host>,
    peer_id: NodeId,
    addr: SocketAddr,
    peer: Rc<Peer>,
    wake: LocalReceiver<()>,
) {
    let mut backoff = BACKOFF.0;
    let mut attempts = 0u64;
    let mut closed_at_once = 0u32;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                if attempts > 0 {
                    host.metrics.reconnects.increment(1);
                }
                let ticket = host.admission.borrow_mut().admit(None, false).expect("dialled: only counted");
                peer.mark_up();
                let opened = Instant::now();
                let result = serve(&host, stream, ticket, Some(peer_id), Some((&peer, &wake))).await;
                log_close(&host, &format!("to node {peer_id} at {addr}"), &result);
                peer_down(&host, &peer, peer_id, || format!("connection to node {peer_id} lost"));
                let by_peer = matches!(result, Err(Closed::Eof | Closed::Io(_)));
                closed_at_once =
                    if by_peer && opened.elapsed() < CLOSED_AT_ONCE { closed_at_once + 1 } else { 0 };
                if closed_at_once == 0 {
                    // A connection that lived: the next one is tried at once. One closed at once
                    // backs off as a failed connect does, not a reconnect every few milliseconds.
                    backoff = BACKOFF.0;
                }
                if closed_at_once >= CLOSED_AT_ONCE_IN_A_ROW {
                    *CLOSED_AT_ONCE_SEEN.lock().unwrap_or_else(|e| e.into_inner()) = Some((host.id, peer_id));
                    if let Some(suppressed) = host.admission.borrow_mut().may_log("closed at once") {
                        tracing::warn!(
                            node = host.id,
                            peer = peer_id,
                            suppressed,
                            "node {peer_id} closed the last {closed_at_once} connections right after they opened: \
                             it may refuse this node's id as taken (is another process running as node {}?)",
                            host.id
                        );
                    }
                }
            }
            Err(e) => {
                closed_at_once = 0;
                tracing::debug!(node = host.id, peer = peer_id, %addr, "connect failed: {e}");
                peer_down(&host, &peer, peer_id, || format!("cannot connect to node {peer_id} ({e})"));
            }
        }
        attempts += 1;
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// No connection to `peer_id` is up (`why` says how): what waits for it beyond the bound while
/// down is dropped, counted and said.
fn peer_down(host: &Host, peer: &Peer, peer_id: NodeId, why: impl FnOnce() -> String) {
    let dropped = peer.mark_down();
    if dropped > 0 {
        host.metrics.unroutable.increment(1);
        tracing::info!(
            node = host.id,
            peer = peer_id,
            "{}: dropped the {dropped} bytes that waited for it",
            why()
        );
    }
}

/// Accepts connections for `host` forever; each one within the node's caps is served on its own
/// task, the others are closed at once.
pub async fn accept_loop(host: Rc<Host>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let from = stream.peer_addr().ok();
                let admitted =
                    host.admission.borrow_mut().admit(Some(from.map_or([0u8; 4].into(), |a| a.ip())), true);
                let ticket = match admitted {
                    Ok(ticket) => ticket,
                    Err(refusal) => {
                        refuse(&host, refusal, from);
                        drop(stream);
                        continue;
                    }
                };
                let host = host.clone();
                glommio::spawn_local(async move {
                    let from = from.map(|a| a.to_string()).unwrap_or_default();
                    let result = serve(&host, stream, ticket, None, None).await;
                    log_close(&host, &format!("from {from}"), &result);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(node = host.id, "accept failed: {e}");
                glommio::timer::sleep(BACKOFF.0).await;
            }
        }
    }
}

/// Counts and (at most once a second per cap) logs a connection closed at once.
pub fn refuse(host: &Host, refusal: Refusal, from: Option<SocketAddr>) {
    host.metrics.refused(refusal.label());
    // Never hold the admission's borrow into the body (it borrows again).
    let may_log = host.admission.borrow_mut().may_log(refusal.label());
    if let Some(suppressed) = may_log {
        let limits = host.admission.borrow().limits().clone();
        tracing::warn!(
            node = host.id,
            from = ?from,
            suppressed,
            "refused a connection: {} reached (limits: {} connections, {} per address, {} handshaking, \
             {} unauthenticated frames/s per address)",
            refusal.label(),
            limits.max_connections,
            limits.max_connections_per_address,
            limits.max_handshakes,
            limits.unauthenticated_frames_per_sec,
        );
    }
}

fn log_close(host: &Host, which: &str, result: &Result<(), Closed>) {
    let Err(closed) = result else { return };
    let Some((count, reason)) = closed.reason() else {
        tracing::debug!(node = host.id, "connection {which} ended: {closed}");
        return;
    };
    match count {
        Count::BadFrame => host.metrics.bad_frame(reason),
        Count::Handshake => host.metrics.handshake_refused(reason),
        Count::Refused => host.metrics.refused(reason),
    }
    let may_log = host.admission.borrow_mut().may_log(reason);
    if let Some(suppressed) = may_log {
        tracing::warn!(node = host.id, suppressed, "closed connection {which}: {closed}");
    }
}

/// Runs one connection: handshakes, then reads and writes until either side fails. `expect` is the
/// peer a dialled connection must reach; `outbound` is the queue it writes.
async fn serve(
    host: &Rc<Host>,
    stream: TcpStream,
    mut ticket: Ticket,
    expect: Option<NodeId>,
    outbound: Option<(&Rc<Peer>, &LocalReceiver<()>)>,
) -> Result<(), Closed> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(node = host.id, "cannot set TCP_NODELAY: {e}");
    }
    host.metrics.connections.increment(1);
    host.metrics.connections_open.increment(1.0);
    let result = serve_inner(host, stream, &mut ticket, expect, outbound).await;
    host.metrics.connections_open.decrement(1.0);
    host.admission.borrow_mut().release(ticket);
    result
}

/// What the handshake established.
struct Established {
    peer_id: NodeId,
    reader: FrameReader,
    sealer: Option<FrameSealer>,
}

/// Both handshakes and both proofs, in one exchange: hello out, hello in, proof out, proof in.
async fn handshake(
    host: &Rc<Host>,
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    wr: &mut (impl futures_lite::AsyncWrite + Unpin),
    side: Side,
    expect: Option<NodeId>,
) -> Result<Established, Closed> {
    let settings = &host.settings;
    let ours = Handshake::new(settings.cluster_id.to_string(), host.id, host.kind)
        .authenticating_frames(settings.authenticate_frames);
    send_one(wr, |w| w.push_handshake(&ours)).await?;
    let mut reader = FrameReader::new();
    reader.limit_frames_to(HANDSHAKE_BUFFER_BYTES);
    let theirs = match read_one(rd, &mut reader).await? {
        Frame::Handshake(h) => h,
        _ => return Err(Closed::Handshake("the first frame is not a handshake".into())),
    };
    theirs.check(&settings.cluster_id)?;
    if let Some(expected) = expect {
        if theirs.node_id != expected {
            return Err(Closed::Handshake(format!(
                "expected node {expected}, reached node {}",
                theirs.node_id
            )));
        }
    }
    host.admission.borrow_mut().nonces.admit(&ours, &theirs)?;
    send_one(wr, |w| w.push_proof(&prove(&settings.secret, side, &ours, &theirs))).await?;
    match read_one(rd, &mut reader).await? {
        Frame::Proof(proof) => verify(&settings.secret, side, &ours, &theirs, &proof)?,
        _ => return Err(Closed::Handshake("the second frame is not a proof".into())),
    }
    let mut sealer = None;
    if ours.authenticate_frames || theirs.authenticate_frames {
        let keys = frame_keys(&settings.secret, side, &ours, &theirs);
        reader.authenticate(keys.receive);
        sealer = Some(FrameSealer::new(keys.send));
    }
    reader.limit_frames_to(settings.limits.max_connection_buffer_bytes);
    Ok(Established { peer_id: theirs.node_id, reader, sealer })
}

/// Writes one frame at once (the handshake's frames are never sealed).
async fn send_one(
    wr: &mut (impl futures_lite::AsyncWrite + Unpin),
    push: impl FnOnce(&mut FrameWriter) -> Result<(), WireError>,
) -> Result<(), Closed> {
    let mut writer = FrameWriter::new();
    push(&mut writer)?;
    let mut bytes = Vec::new();
    writer.drain_into(&mut bytes);
    wr.write_all(&bytes).await?;
    Ok(())
}

/// Reads until one frame is whole.
async fn read_one(
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    reader: &mut FrameReader,
) -> Result<Frame, Closed> {
    loop {
        if let Some(frame) = reader.next_frame()? {
            return Ok(frame);
        }
        let n = rd.read(reader.read_buf()).await?;
        if n == 0 {
            return Err(closed_at_eof(reader));
        }
        reader.advance(n);
    }
}

async fn serve_inner(
    host: &Rc<Host>,
    stream: TcpStream,
    ticket: &mut Ticket,
    expect: Option<NodeId>,
    outbound: Option<(&Rc<Peer>, &LocalReceiver<()>)>,
) -> Result<(), Closed> {
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let side = if expect.is_some() { Side::Dialer } else { Side::Acceptor };
    let limits = host.settings.limits.clone();
    let established = futures_lite::future::or(handshake(host, &mut rd, &mut wr, side, expect), async {
        glommio::timer::sleep(limits.handshake_timeout()).await;
        Err(Closed::HandshakeTimeout(limits.handshake_timeout()))
    })
    .await?;
    host.admission.borrow_mut().authenticated(ticket);
    let Established { peer_id, reader, sealer } = established;
    // An accepted connection speaks for its node alone: a second live one claiming the same id is
    // refused (a silent one, such as a dead machine's half-open connection, is replaced).
    let claim = match side {
        Side::Acceptor => Some(
            host.admission
                .borrow_mut()
                .claim(peer_id, limits.handshake_timeout())
                .map_err(|_| Closed::DuplicateNode(peer_id))?,
        ),
        Side::Dialer => None,
    };

    // An accepted connection from a peer we cannot dial (no address: a client) carries our
    // messages to it as well.
    let adopted = match outbound {
        Some(_) => None,
        None if !host.settings.addresses.borrow().contains_key(&peer_id) => {
            let (peer, wake) = Peer::new();
            host.adopt_peer(peer_id, peer.clone()).then_some((peer, wake))
        }
        None => None,
    };
    let reading = read_frames(host, peer_id, &mut rd, reader, claim.as_deref(), limits.frame_timeout());
    let result = match (&outbound, &adopted) {
        (Some((peer, wake)), _) => {
            futures_lite::future::or(reading, write_loop(host, &mut wr, peer, wake, sealer)).await
        }
        (None, Some((peer, wake))) => {
            futures_lite::future::or(reading, write_loop(host, &mut wr, peer, wake, sealer)).await
        }
        (None, None) => reading.await,
    };
    if let Some((peer, _)) = &adopted {
        host.forget_peer(peer_id, peer);
    }
    if let Some(claim) = &claim {
        host.admission.borrow_mut().unclaim(peer_id, claim);
    }
    result
}

async fn read_frames(
    host: &Rc<Host>,
    peer_id: NodeId,
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    reader: FrameReader,
    claim: Option<&Claim>,
    frame_timeout: Duration,
) -> Result<(), Closed> {
    // A frame begun must be whole within `frame_timeout` (slowloris).
    let partial = Partial::default();
    let watchdog = async {
        partial.expired(frame_timeout).await;
        Err(Closed::FrameTimeout(frame_timeout))
    };
    futures_lite::future::or(read_loop(host, peer_id, rd, reader, claim, &partial), watchdog).await
}

async fn read_loop(
    host: &Rc<Host>,
    peer_id: NodeId,
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    mut reader: FrameReader,
    claim: Option<&Claim>,
    partial: &Partial,
) -> Result<(), Closed> {
    let budget = host.settings.read_budget.max(1);
    let mut handled = 0;
    loop {
        while let Some(frame) = reader.next_frame()? {
            partial.none();
            match frame {
                Frame::Msg(msg) => {
                    host.metrics.frames_in.increment(1);
                    host.deliver(peer_id, msg);
                }
                Frame::Handshake(_) | Frame::Proof(_) => {
                    return Err(Closed::Handshake("a second handshake".into()))
                }
            }
            handled += 1;
            if handled >= budget {
                // The read budget: let the other connections of this core have their turn.
                handled = 0;
                glommio::executor().yield_now().await;
            }
        }
        if reader.buffered() > 0 {
            partial.begun();
        }
        let n = rd.read(reader.read_buf()).await?;
        if n == 0 {
            return Err(closed_at_eof(&reader));
        }
        if let Some(claim) = claim {
            claim.touch();
        }
        host.metrics.bytes_in.increment(n as u64);
        reader.advance(n);
    }
}

async fn write_loop(
    host: &Rc<Host>,
    wr: &mut (impl futures_lite::AsyncWrite + Unpin),
    peer: &Rc<Peer>,
    wake: &LocalReceiver<()>,
    mut sealer: Option<FrameSealer>,
) -> Result<(), Closed> {
    // glommio 0.9's sockets have no vectored write: the turn's frames are gathered into this one
    // buffer (reused, so its allocation is kept) and leave in one write.
    let mut scratch = Vec::new();
    let mut sealed = Vec::new();
    loop {
        // Frames queued while disconnected (or during this turn) go out together.
        scratch.clear();
        let bytes = peer.writer.borrow_mut().drain_into(&mut scratch);
        if bytes > 0 {
            let out = match &mut sealer {
                None => &scratch,
                Some(sealer) => {
                    sealed.clear();
                    sealer.seal(&scratch, &mut sealed);
                    &sealed
                }
            };
            wr.write_all(out).await?;
            host.metrics.bytes_out.increment(out.len() as u64);
            continue;
        }
        if wake.recv().await.is_none() {
            return Ok(());
        }
    }
}
