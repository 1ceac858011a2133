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
    // An operator's tool with another secret is told what is wrong, not only that the node closed.
    let asked = autopaxos::runtime::admin::converse(
        &id,
        &ClusterSecret::random(),
        acceptor,
        7_780,
        &Msg::StatusRequest,
        Duration::from_secs(3),
        Some,
    );
    let said = asked.map(|_| ()).unwrap_err().to_string();
    assert!(said.contains("does not prove the cluster secret: wrong or missing secret"), "{said}");

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

/// Bytes that look like nothing: xorshift, seeded.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A frame header with the magic, this version and the given kind and lengths.
fn header(kind: u8, meta_len: u32, payload_len: u32) -> Vec<u8> {
    let mut h = vec![b'A', b'P', autopaxos::wire::PROTOCOL_VERSION, kind, 0, 0, 0, 0];
    h.extend_from_slice(&meta_len.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h
}

/// Opens a connection, writes `bytes`, and reports whether the node closed it within `limit`.
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8], limit: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else { return true };
    let _ = stream.write_all(bytes);
    let mut d = Dialer { stream, reader: FrameReader::new(), sent: Vec::new() };
    d.closed_within(limit)
}

/// Sends `bytes` one at a time, `gap` apart, until the node closes the connection; returns how long
/// it took (or `None` if it never did within `limit`).
fn trickle(
    addr: SocketAddr,
    prefix: &[u8],
    bytes: &[u8],
    gap: Duration,
    limit: Duration,
) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let _ = stream.write_all(prefix);
    stream.set_read_timeout(Some(gap)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    for &b in bytes.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if stream.write_all(&[b]).is_err() {
            return Some(started.elapsed());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Median of the progress rates in `lines`.
fn median_rate(lines: &[Progress]) -> f64 {
    let mut rates: Vec<f64> = lines.iter().map(|p| p.rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}

#[test]
fn hostile_input_on_every_port_takes_no_node_down_and_loses_nothing_acknowledged() {
    let _serial = serialize();
    // Small caps and short timeouts, so the flood and the trickles meet them within the test.
    let mut cluster = Cluster::start_with("hostile", |_| {
        "\n[limits]\nmax_connections = 96\nmax_connections_per_address = 96\nmax_handshakes = 24\n\
         handshake_timeout_ms = 1000\nframe_timeout_ms = 1000\nresp_request_timeout_ms = 1000\n\
         resp_max_clients_per_address = 64\n"
            .to_string()
    });
    let listen = format!("127.0.0.1:{}", free_ports(1)[0]);
    let (gateway, resp) = cluster.start_joined_gateway(6_000, &listen, None);
    let client = spawn_verifying_client(&mut cluster, "load", 16);
    // A baseline of four seconds first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress_lines(&cluster.extra[client].stderr_text()).len() < 5 {
        assert!(Instant::now() < deadline && cluster.extra[client].is_running(), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let attack_from = progress_lines(&cluster.extra[client].stderr_text()).len();
    let (id, secret) = (cluster.cluster_id.clone(), cluster.secret());
    let peers: Vec<(u32, SocketAddr)> = cluster.nodes.iter().map(|n| (n.id, n.addr())).collect();

    std::thread::scope(|s| {
        // Garbage, huge length prefixes and truncated frames at every node's port, and at the RESP port.
        for (k, &(node, addr)) in peers.iter().enumerate() {
            s.spawn(move || {
                for round in 0..20u64 {
                    let garbage = noise(round * 31 + k as u64, 4096);
                    assert!(
                        send_and_expect_close(addr, &garbage, Duration::from_secs(3)),
                        "node {node}: garbage"
                    );
                    for huge in
                        [header(1, u32::MAX - 15, 0), header(2, 64, u32::MAX - 15), header(3, 1 << 20, 0)]
                    {
                        assert!(
                            send_and_expect_close(addr, &huge, Duration::from_secs(3)),
                            "node {node}: huge"
                        );
                    }
                    let mut w = FrameWriter::new();
                    w.push_handshake(&Handshake::new("hostile", 9_999, RoleKind::Client)).unwrap();
                    let mut hello = Vec::new();
                    w.drain_into(&mut hello);
                    if let Ok(mut t) = TcpStream::connect(addr) {
                        let _ = t.write_all(&hello[..hello.len() / 2]);
                    }
                }
            });
        }
        s.spawn(move || {
            for round in 0..20u64 {
                let _ = send_and_expect_close(resp, &noise(round, 4096), Duration::from_millis(300));
                let huge = b"*1\r\n$999999999999\r\n";
                assert!(
                    send_and_expect_close(resp, huge, Duration::from_secs(3)),
                    "RESP: a huge bulk length"
                );
            }
        });
        // Slowloris: a handshake trickled, a frame trickled after a proper handshake, a RESP request
        // trickled; each must be cut off by its timeout (1 s here).
        let (acceptor, replica) = (peers[2].1, peers[6].1);
        s.spawn(move || {
            let took = trickle(
                acceptor,
                &[],
                &header(1, 400, 0),
                Duration::from_millis(200),
                Duration::from_secs(8),
            );
            assert!(took.is_some_and(|t| t < Duration::from_secs(4)), "a trickled handshake: {took:?}");
        });
        let (id2, secret2) = (id.clone(), secret.clone());
        s.spawn(move || {
            let (heard, d) = Dialer::handshake(replica, &id2, 9_001, RoleKind::Client, &secret2);
            assert!(heard);
            let stream = d.stream;
            let started = Instant::now();
            let mut stream = stream;
            stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut closed = false;
            let mut buf = [0u8; 4096];
            for &b in header(2, 1024, 0).iter().chain(&[0u8; 1024]) {
                if started.elapsed() > Duration::from_secs(8) {
                    break;
                }
                if stream.write_all(&[b]).is_err() || matches!(stream.read(&mut buf), Ok(0)) {
                    closed = true;
                    break;
                }
            }
            assert!(
                closed && started.elapsed() < Duration::from_secs(4),
                "a trickled frame after the handshake"
            );
        });
        s.spawn(move || {
            let took =
                trickle(resp, b"*1\r\n$100000\r\n", b"a", Duration::from_millis(200), Duration::from_secs(8));
            assert!(took.is_some_and(|t| t < Duration::from_secs(4)), "a trickled RESP request: {took:?}");
        });
        // A flood of connections above the caps, held for two seconds, at an acceptor and the gateway.
        s.spawn(move || {
            let held: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(acceptor).ok()).collect();
            let resp_held: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(resp).ok()).collect();
            std::thread::sleep(Duration::from_secs(2));
            drop((held, resp_held));
        });
    });
    let attack_to = progress_lines(&cluster.extra[client].stderr_text()).len();

    // Every cap was met and counted.
    let flood = cluster.metric(3, "autopaxos_connections_refused_total", &[]);
    assert!(flood > 0.0, "the flood met no cap at acceptor 3");
    assert!(cluster.metric(7, "autopaxos_bad_frames_total", &[("reason", "frame_timeout")]) >= 1.0);
    assert!(cluster.metric(3, REFUSED_HANDSHAKES, &[("reason", "timeout")]) >= 1.0);
    // (Some of the huge headers at acceptor 3 met the flood's caps first.)
    assert!(cluster.metric(4, "autopaxos_bad_frames_total", &[("reason", "too_large")]) >= 40.0);

    // Every node and the gateway survived and serve: the load completes, nothing acknowledged is lost.
    let verified = finish_client(&mut cluster, client);
    for (node, _) in &peers {
        assert!(cluster.proc_mut(*node).is_running(), "node {node} died");
    }
    assert!(cluster.extra[gateway].is_running(), "the gateway died");
    let mut ping = TcpStream::connect(resp).expect("the gateway still accepts");
    ping.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ping.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n").unwrap();
    let mut reply = [0u8; 5];
    ping.read_exact(&mut reply).expect("a reply");
    assert_eq!(&reply, b"+OK\r\n");

    // Throughput under attack, against the baseline before it (median per-second rates).
    let base = median_rate(&verified.progress[1..attack_from.min(verified.progress.len())]);
    let during = median_rate(&verified.progress[attack_from..attack_to.min(verified.progress.len())]);
    eprintln!(
        "throughput: {base:.0} cmds/s before, {during:.0} cmds/s under attack ({:.2}); {flood} connections \
         refused at acceptor 3; {} writes verified",
        during / base,
        verified.intact
    );
    assert!(during >= 0.8 * base, "under attack the load kept {:.2} of its throughput", during / base);
}

#[test]
fn with_authenticated_frames_the_cluster_serves_status_answers_and_an_unsealed_frame_is_refused() {
    let _serial = serialize();
    let mut cluster = Cluster::configure("sealed");
    let text = std::fs::read_to_string(&cluster.config).unwrap();
    let text = text.replacen(
        "secret_file = \"cluster.secret\"\n",
        "secret_file = \"cluster.secret\"\nauthenticate_frames = true\n",
        1,
    );
    std::fs::write(&cluster.config, text).unwrap();
    cluster.start_nodes(&[3, 4, 5, 6, 7, 8, 9, 10, 1, 2]);
    let client = spawn_verifying_client(&mut cluster, "load", 4);
    wait_progress(&mut cluster, client, 0, Duration::from_secs(30));

    // The operator's tool seals its request and checks the answer's tags.
    let status = status_json(&cluster);
    assert!(status["nodes"].as_array().is_some_and(|n| n.len() >= 10), "{status}");

    // A peer that proves the secret but sends a frame without a tag is cut off and counted.
    let before = cluster.metric(3, "autopaxos_bad_frames_total", &[("reason", "bad_tag")]);
    let (heard, mut d) = Dialer::handshake(
        cluster.node(3).addr(),
        &cluster.cluster_id,
        7_781,
        RoleKind::Client,
        &cluster.secret(),
    );
    assert!(!heard && d.closed_within(Duration::from_secs(3)), "an unsealed frame must not be heard");
    counted(&cluster, 3, "autopaxos_bad_frames_total", "bad_tag", before);

    let verified = finish_client(&mut cluster, client);
    eprintln!("sealed frames: {} writes verified", verified.intact);
}
