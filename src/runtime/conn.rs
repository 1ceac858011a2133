//! Connections: dial with backoff (launch order never matters), accept, handshake both ways, then a
//! reader that handles at most `read_budget` frames before yielding to the other connections, and a
//! writer that sends everything queued during a turn in one write.
//!
//! A bad frame or handshake closes that one connection with a logged reason and a counter; the node
//! keeps serving everyone else. Must never: panic on network input; block the executor.

use super::node::{Host, Peer};
use crate::protocol::NodeId;
use crate::wire::{Frame, FrameReader, Handshake, WireError, PROTOCOL_VERSION};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::{TcpListener, TcpStream};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// First and last delay between attempts to reach a peer that is down.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// How long a peer has to send its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("bad handshake: {0}")]
    Handshake(String),
    #[error("no handshake within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
}

impl Closed {
    /// A short label for the bad-frames counter; `None` for ordinary closes.
    fn reason(&self) -> Option<&'static str> {
        match self {
            Closed::Eof | Closed::Io(_) => None,
            Closed::Wire(e) => Some(wire_label(e)),
            Closed::Truncated(_) => Some("truncated"),
            Closed::Handshake(_) => Some("handshake"),
            Closed::HandshakeTimeout => Some("handshake_timeout"),
        }
    }
}

/// A short, fixed label per kind of bad frame (a metrics label must not carry free text).
fn wire_label(e: &WireError) -> &'static str {
    match e {
        WireError::BadMagic(_) => "bad_magic",
        WireError::UnsupportedVersion(_) => "unsupported_version",
        WireError::MetaTooLarge { .. } | WireError::PayloadTooLarge { .. } => "too_large",
        WireError::InvalidMeta(_) => "invalid_meta",
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

fn our_handshake(host: &Host) -> Handshake {
    Handshake {
        cluster_id: host.settings.cluster_id.to_string(),
        node_id: host.id,
        role: host.kind.name().to_string(),
        protocol_version: PROTOCOL_VERSION as u32,
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
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                backoff = BACKOFF.0;
                if attempts > 0 {
                    host.metrics.reconnects.increment(1);
                }
                let result = serve(&host, stream, Some(peer_id), Some((&peer, &wake))).await;
                log_close(&host, &format!("to node {peer_id} at {addr}"), &result);
            }
            Err(e) => tracing::debug!(node = host.id, peer = peer_id, %addr, "connect failed: {e}"),
        }
        attempts += 1;
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// Accepts connections for `host` forever; each one is served on its own task.
pub async fn accept_loop(host: Rc<Host>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let host = host.clone();
                glommio::spawn_local(async move {
                    let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    let result = serve(&host, stream, None, None).await;
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

fn log_close(host: &Host, which: &str, result: &Result<(), Closed>) {
    if let Err(closed) = result {
        match closed.reason() {
            Some(reason) => {
                host.metrics.bad_frame(reason);
                tracing::warn!(node = host.id, "closed connection {which}: {closed}");
            }
            None => tracing::debug!(node = host.id, "connection {which} ended: {closed}"),
        }
    }
}

/// Runs one connection: handshakes, then reads and writes until either side fails. `expect` is the
/// peer a dialled connection must reach; `outbound` is the queue it writes.
async fn serve(
    host: &Rc<Host>,
    stream: TcpStream,
    expect: Option<NodeId>,
    outbound: Option<(&Rc<Peer>, &LocalReceiver<()>)>,
) -> Result<(), Closed> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(node = host.id, "cannot set TCP_NODELAY: {e}");
    }
    host.metrics.connections.increment(1);
    host.metrics.connections_open.increment(1.0);
    let result = serve_inner(host, stream, expect, outbound).await;
    host.metrics.connections_open.decrement(1.0);
    result
}

async fn serve_inner(
    host: &Rc<Host>,
    stream: TcpStream,
    expect: Option<NodeId>,
    outbound: Option<(&Rc<Peer>, &LocalReceiver<()>)>,
) -> Result<(), Closed> {
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let mut hello = crate::wire::FrameWriter::default();
    hello.push_handshake(&our_handshake(host))?;
    let mut greeting = Vec::new();
    hello.drain_into(&mut greeting);
    wr.write_all(&greeting).await?;

    let mut reader = FrameReader::default();
    let theirs = futures_lite::future::or(read_handshake(&mut rd, &mut reader), async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        Err(Closed::HandshakeTimeout)
    })
    .await?;
    theirs.check(&host.settings.cluster_id).map_err(|e| Closed::Handshake(e.to_string()))?;
    if let Some(expected) = expect {
        if theirs.node_id != expected {
            return Err(Closed::Handshake(format!(
                "expected node {expected}, reached node {}",
                theirs.node_id
            )));
        }
    }
    let peer_id = theirs.node_id;

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
    let reading = read_frames(host, peer_id, &mut rd, reader);
    let result = match (&outbound, &adopted) {
        (Some((peer, wake)), _) => {
            futures_lite::future::or(reading, write_loop(host, &mut wr, peer, wake)).await
        }
        (None, Some((peer, wake))) => {
            futures_lite::future::or(reading, write_loop(host, &mut wr, peer, wake)).await
        }
        (None, None) => reading.await,
    };
    if let Some((peer, _)) = &adopted {
        host.forget_peer(peer_id, peer);
    }
    result
}

async fn read_handshake(
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    reader: &mut FrameReader,
) -> Result<Handshake, Closed> {
    loop {
        match reader.next_frame()? {
            Some(Frame::Handshake(h)) => return Ok(h),
            Some(Frame::Msg(_)) => return Err(Closed::Handshake("a message before the handshake".into())),
            None => {}
        }
        let n = rd.read(reader.read_buf()).await?;
        if n == 0 {
            return Err(closed_at_eof(reader));
        }
        reader.advance(n);
    }
}

async fn read_frames(
    host: &Rc<Host>,
    peer_id: NodeId,
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    mut reader: FrameReader,
) -> Result<(), Closed> {
    let budget = host.settings.read_budget.max(1);
    let mut handled = 0;
    loop {
        while let Some(frame) = reader.next_frame()? {
            match frame {
                Frame::Msg(msg) => {
                    host.metrics.frames_in.increment(1);
                    host.deliver(peer_id, msg);
                }
                Frame::Handshake(_) => return Err(Closed::Handshake("a second handshake".into())),
            }
            handled += 1;
            if handled >= budget {
                // The read budget: let the other connections of this core have their turn.
                handled = 0;
                glommio::executor().yield_now().await;
            }
        }
        let n = rd.read(reader.read_buf()).await?;
        if n == 0 {
            return Err(closed_at_eof(&reader));
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
) -> Result<(), Closed> {
    // glommio 0.9's sockets have no vectored write: the turn's frames are gathered into this one
    // buffer (reused, so its allocation is kept) and leave in one write.
    let mut scratch = Vec::new();
    loop {
        // Frames queued while disconnected (or during this turn) go out together.
        scratch.clear();
        let bytes = peer.writer.borrow_mut().drain_into(&mut scratch);
        if bytes > 0 {
            wr.write_all(&scratch).await?;
            host.metrics.bytes_out.increment(bytes as u64);
            continue;
        }
        if wake.recv().await.is_none() {
            return Ok(());
        }
    }
}
