//! Issue 14, peers and hostile input: only processes that prove the cluster secret are heard; a
//! stranger, a replayed handshake, a second claim of a live node's id, garbage, huge length prefixes,
//! truncated and trickled frames and a flood of connections are refused and counted while a
//! verifying load goes on, and nothing acknowledged is lost.

mod common;

use autopaxos::protocol::{Msg, RoleKind};
use autopaxos::secret::ClusterSecret;
use autopaxos::wire::handshake::{prove, Side};
use autopaxos::wire::{Frame, FrameReader, FrameWriter, Handshake};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The frames a dialer sends: its handshake, then (if given a secret) its proof over the node's.
struct Dialer {
    stream: TcpStream,
    reader: FrameReader,
    sent: Vec<u8>,
}

impl Dialer {
    fn connect(addr: SocketAddr) -> Dialer {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Dialer { stream, reader: FrameReader::new(), sent: Vec::new() }
    }

    fn send(&mut self, push: impl FnOnce(&mut FrameWriter)) {
        let mut w = FrameWriter::new();
        push(&mut w);
        let mut bytes = Vec::new();
        w.drain_into(&mut bytes);
        self.sent.extend_from_slice(&bytes);
        let _ = self.stream.write_all(&bytes);
    }

    /// The next frame, or `None` once the node closed the connection.
    fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Ok(Some(f)) = self.reader.next_frame() {
                return Some(f);
            }
            match self.stream.read(self.reader.read_buf()) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.reader.advance(n),
            }
        }
    }

    /// Handshakes as node `id` of `role` proving `secret`; returns whether the node kept the
    /// connection open afterwards (it answers a status request over it only if it did).
    fn handshake(
        addr: SocketAddr,
        cluster: &str,
        id: u32,
        role: RoleKind,
        secret: &ClusterSecret,
    ) -> (bool, Dialer) {
        let mut d = Dialer::connect(addr);
        let ours = Handshake::new(cluster, id, role);
        d.send(|w| w.push_handshake(&ours).unwrap());
        let Some(Frame::Handshake(theirs)) = d.frame() else { return (false, d) };
        d.send(|w| w.push_proof(&prove(secret, Side::Dialer, &ours, &theirs)).unwrap());
        if !matches!(d.frame(), Some(Frame::Proof(_))) {
            return (false, d);
        }
        d.send(|w| w.push_msg(&Msg::StatusRequest).unwrap());
        let heard = matches!(d.frame(), Some(Frame::Msg(Msg::Status(_))));
        (heard, d)
    }

    /// Whether the node closes the connection within `limit` (reading and discarding meanwhile).
    fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn refused_handshakes(cluster: &Cluster, id: u32, reason: &str) -> f64 {
    cluster.metric(id, "autopaxos_handshakes_refused_total", &[("reason", reason)])
}

/// Waits (bounded) until node `id` has counted one more refusal than `before` (the count follows the
/// close by a moment).
fn counted(cluster: &Cluster, id: u32, name: &str, reason: &str, before: f64) {
    cluster.wait_for_metric(id, name, &[("reason", reason)], Duration::from_secs(5), |v| v >= before + 1.0);
}

const REFUSED_HANDSHAKES: &str = "autopaxos_handshakes_refused_total";

#[test]
fn strangers_replays_and_a_second_claim_of_a_node_id_are_refused_counted_and_the_cluster_serves_on() {
    let _serial = serialize();
    let mut cluster = Cluster::start("trust");
    let client = spawn_verifying_client(&mut cluster, "load", 6);
    wait_progress(&mut cluster, client, 0, Duration::from_secs(20));
    let (acceptor, other) = (cluster.node(3).addr(), cluster.node(4).addr());
    let id = cluster.cluster_id.clone();
    let secret = cluster.secret();

    // The right secret is heard (an operator's tool, say).
    let (heard, _) = Dialer::handshake(acceptor, &id, 7_777, RoleKind::Client, &secret);
    assert!(heard, "a peer that proves the secret is heard");

    // Another secret: refused and counted.
    let before = refused_handshakes(&cluster, 3, "bad_proof");
    let (heard, mut d) = Dialer::handshake(acceptor, &id, 7_778, RoleKind::Client, &ClusterSecret::random());
    assert!(!heard && d.closed_within(Duration::from_secs(3)), "a wrong secret must not be heard");
    counted(&cluster, 3, REFUSED_HANDSHAKES, "bad_proof", before);

    // No secret at all: a message straight after the handshake, as a node of old would send.
    let before = refused_handshakes(&cluster, 3, "malformed");
    let mut d = Dialer::connect(acceptor);
    d.send(|w| {
        w.push_handshake(&Handshake::new(id.as_str(), 7_779, RoleKind::Client)).unwrap();
        w.push_msg(&Msg::StatusRequest).unwrap();
    });
    let mut answered = false;
    while let Some(f) = d.frame() {
        answered |= matches!(f, Frame::Msg(_));
    }
    assert!(!answered, "no status answer without a proof");
    counted(&cluster, 3, REFUSED_HANDSHAKES, "malformed", before);

    // A recorded handshake replayed: to the same node (its nonce seen) and to another one (whose
    // fresh nonce the recorded proof does not cover).
    let (heard, recorded) = Dialer::handshake(acceptor, &id, 7_780, RoleKind::Client, &secret);
    assert!(heard);
    let handshake_bytes = {
        // The handshake and proof frames: everything sent before the status request.
        let mut r = FrameReader::new();
        r.read_buf()[..recorded.sent.len()].copy_from_slice(&recorded.sent);
        r.advance(recorded.sent.len());
        r.next_frame().unwrap();
        r.next_frame().unwrap();
        recorded.sent[..recorded.sent.len() - r.buffered()].to_vec()
    };
    drop(recorded);
    for (node, addr, reason) in [(3, acceptor, "replayed"), (4, other, "bad_proof")] {
        let before = refused_handshakes(&cluster, node, reason);
        let mut replay = Dialer::connect(addr);
        let _ = replay.stream.write_all(&handshake_bytes);
        replay.send(|w| w.push_msg(&Msg::StatusRequest).unwrap());
        let mut answered = false;
        while let Some(f) = replay.frame() {
            answered |= matches!(f, Frame::Msg(Msg::Status(_)));
        }
        assert!(!answered, "a replayed handshake to node {node} must not be heard");
        counted(&cluster, node, REFUSED_HANDSHAKES, reason, before);
    }

    // A second claim of a live node's id (proxy leader 6, which sends Phase2a to acceptor 3 all the
    // time), even with the secret: refused and counted.
    let before = cluster.metric(3, "autopaxos_connections_refused_total", &[("reason", "duplicate_node_id")]);
    let (heard, mut d) = Dialer::handshake(acceptor, &id, 6, RoleKind::ProxyLeader, &secret);
    assert!(!heard && d.closed_within(Duration::from_secs(3)), "a second claim of node 6 must be refused");
    counted(&cluster, 3, "autopaxos_connections_refused_total", "duplicate_node_id", before);

    // The cluster served on: the load completes and every acknowledged write reads back.
    let verified = finish_client(&mut cluster, client);
    eprintln!("verified {} writes, none lost", verified.intact);
}
