//! The first two frames on every connection: who the peer says it is ([`Handshake`]), then its proof
//! that it knows the cluster secret ([`Proof`]).
//!
//! A mutual challenge-response. Both sides send a `Handshake` at once, each with a fresh random nonce;
//! each then sends a proof: a keyed BLAKE3 MAC, under a key derived from the cluster secret, of its
//! side of the connection (dialer or acceptor) and both handshakes whole (cluster id, node id, role,
//! version, nonce, options). So a proof binds who the sender claims to be, and it is good for one
//! connection only: a recorded handshake replayed to a node meets a nonce it has never seen and its proof
//! no longer matches; the side in the MAC keeps a node's own proof from being reflected back at it. A
//! node also refuses a nonce it has seen recently ([`RecentNonces`]), so a replay is named as such.
//!
//! [`Handshake::check`] decides whether to keep talking to the peer at all, before any proof. It must
//! never trust the peer's strings further than this check, and never print them unescaped or unbounded
//! (they go into logs).

use super::PROTOCOL_VERSION;
use crate::protocol::{NodeId, RoleKind};
use crate::secret::ClusterSecret;
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::fmt;

/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof.
pub const PROOF_BYTES: usize = 32;

/// What a node says about itself when it opens a connection; its [`Proof`] follows.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The cluster the node belongs to; nodes of different clusters must never exchange messages.
    pub cluster_id: String,
    /// The node's id in the cluster configuration.
    pub node_id: NodeId,
    /// The node's role, as [`RoleKind::name`]: a string, so that an unknown role is a clear error.
    pub role: String,
    /// The protocol version the node speaks.
    pub protocol_version: u32,
    /// Fresh random bytes for this connection: the challenge the peer's proof must cover.
    pub nonce: [u8; NONCE_BYTES],
    /// The node wants every later frame on this connection to carry a MAC (either side asking is
    /// enough).
    pub authenticate_frames: bool,
}

/// Which end of the connection a node is: the proofs of the two ends are MACs of different inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// It opened the connection.
    Dialer,
    /// It accepted the connection.
    Acceptor,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Dialer => Side::Acceptor,
            Side::Acceptor => Side::Dialer,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Side::Dialer => b"dialer",
            Side::Acceptor => b"acceptor",
        }
    }
}

/// A node's proof that it knows the cluster secret, for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof(pub [u8; PROOF_BYTES]);

/// The keys that authenticate every frame of one connection (`--authenticate-frames`): one per
/// direction, so a frame cannot be reflected back to its sender.
#[derive(Clone, PartialEq, Eq)]
pub struct FrameKeys {
    /// MACs the frames this node sends.
    pub send: [u8; 32],
    /// Checks the frames it receives.
    pub receive: [u8; 32],
}

impl fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKeys(<redacted>)")
    }
}

/// Why a peer's handshake is refused. Each message names the peer and both sides' values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer belongs to another cluster.
    #[error("peer {peer} belongs to cluster '{}', this node to '{}'", Shown(.got), Shown(.expected))]
    WrongCluster {
        /// The peer's node id.
        peer: NodeId,
        /// This node's cluster.
        expected: String,
        /// The peer's cluster.
        got: String,
    },
    /// The peer speaks another protocol version.
    #[error("peer {peer} speaks protocol version {theirs}, this node {ours}")]
    WrongVersion {
        /// The peer's node id.
        peer: NodeId,
        /// [`PROTOCOL_VERSION`].
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The peer names a role this node does not know.
    #[error("peer {peer} claims unknown role '{}'", Shown(.role))]
    UnknownRole {
        /// The peer's node id.
        peer: NodeId,
        /// The role name it sent.
        role: String,
    },
    /// The peer's proof does not match: it does not know the cluster secret (or holds another one),
    /// or it replays a handshake recorded on another connection.
    #[error(
        "peer {peer} does not prove the cluster secret: wrong or missing secret, or a replayed handshake"
    )]
    BadProof {
        /// The node id it claims.
        peer: NodeId,
    },
    /// The peer's nonce was seen before: a replayed (or reflected) handshake.
    #[error("peer {peer} replays a handshake (its nonce was seen before)")]
    Replayed {
        /// The node id it claims.
        peer: NodeId,
    },
}

impl HandshakeError {
    /// A short, fixed label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::WrongCluster { .. } => "wrong_cluster",
            HandshakeError::WrongVersion { .. } => "wrong_version",
            HandshakeError::UnknownRole { .. } => "unknown_role",
            HandshakeError::BadProof { .. } => "bad_proof",
            HandshakeError::Replayed { .. } => "replayed",
        }
    }
}

impl Handshake {
    /// The handshake this node sends: its cluster, id and role at [`PROTOCOL_VERSION`], with a fresh
    /// nonce from the OS's entropy (through the thread's CSPRNG).
    pub fn new(cluster_id: impl Into<String>, node_id: NodeId, role: RoleKind) -> Self {
        Handshake {
            cluster_id: cluster_id.into(),
            node_id,
            role: role.name().to_string(),
            protocol_version: u32::from(PROTOCOL_VERSION),
            nonce: rand::random(),
            authenticate_frames: false,
        }
    }

    /// Asks (or not) that every later frame of the connection carry a MAC.
    pub fn authenticating_frames(mut self, on: bool) -> Self {
        self.authenticate_frames = on;
        self
    }

    /// Feeds every field to `mac`, each length-prefixed, so no two handshakes feed the same bytes.
    fn transcribe(&self, mac: &mut blake3::Hasher) {
        let field = |mac: &mut blake3::Hasher, bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_le_bytes());
            mac.update(bytes);
        };
        field(mac, self.cluster_id.as_bytes());
        field(mac, &self.node_id.to_le_bytes());
        field(mac, self.role.as_bytes());
        field(mac, &self.protocol_version.to_le_bytes());
        field(mac, &self.nonce);
        field(mac, &[u8::from(self.authenticate_frames)]);
    }

    /// Accepts the peer if it speaks our version, belongs to `expected_cluster` and names a known role;
    /// returns that role. The version is checked first: under another version the rest may mean
    /// something else.
    pub fn check(&self, expected_cluster: &str) -> Result<RoleKind, HandshakeError> {
        let peer = self.node_id;
        let ours = u32::from(PROTOCOL_VERSION);
        if self.protocol_version != ours {
            return Err(HandshakeError::WrongVersion { peer, ours, theirs: self.protocol_version });
        }
        if self.cluster_id != expected_cluster {
            let (expected, got) = (expected_cluster.to_string(), self.cluster_id.clone());
            return Err(HandshakeError::WrongCluster { peer, expected, got });
        }
        RoleKind::from_name(&self.role)
            .ok_or_else(|| HandshakeError::UnknownRole { peer, role: self.role.clone() })
    }
}

/// The keyed MAC of `purpose`, the side, and both handshakes (the dialer's first).
fn mac(
    secret: &ClusterSecret,
    purpose: &[u8],
    side: Side,
    dialer: &Handshake,
    acceptor: &Handshake,
) -> [u8; 32] {
    let mut mac = blake3::Hasher::new_keyed(secret.handshake_key());
    mac.update(purpose);
    mac.update(side.label());
    dialer.transcribe(&mut mac);
    acceptor.transcribe(&mut mac);
    *mac.finalize().as_bytes()
}

/// Orders (ours, theirs) as (dialer, acceptor).
fn ends<'a>(side: Side, ours: &'a Handshake, theirs: &'a Handshake) -> (&'a Handshake, &'a Handshake) {
    match side {
        Side::Dialer => (ours, theirs),
        Side::Acceptor => (theirs, ours),
    }
}

/// This node's proof, as `side` of the connection where it sent `ours` and received `theirs`.
pub fn prove(secret: &ClusterSecret, side: Side, ours: &Handshake, theirs: &Handshake) -> Proof {
    let (dialer, acceptor) = ends(side, ours, theirs);
    Proof(mac(secret, b"proof", side, dialer, acceptor))
}

/// Checks the peer's proof (the peer is the other side). Compared in constant time.
pub fn verify(
    secret: &ClusterSecret,
    side: Side,
    ours: &Handshake,
    theirs: &Handshake,
    proof: &Proof,
) -> Result<(), HandshakeError> {
    let (dialer, acceptor) = ends(side, ours, theirs);
    let expected = blake3::Hash::from(mac(secret, b"proof", side.peer(), dialer, acceptor));
    if expected == blake3::Hash::from(proof.0) {
        Ok(())
    } else {
        Err(HandshakeError::BadProof { peer: theirs.node_id })
    }
}

/// The frame keys of this node, `side` of the connection (used when either end asked for them).
pub fn frame_keys(secret: &ClusterSecret, side: Side, ours: &Handshake, theirs: &Handshake) -> FrameKeys {
    let (dialer, acceptor) = ends(side, ours, theirs);
    FrameKeys {
        send: mac(secret, b"frames", side, dialer, acceptor),
        receive: mac(secret, b"frames", side.peer(), dialer, acceptor),
    }
}

/// The nonces a node received lately, to name a replayed handshake as such (the proof check refuses
/// it anyway). Bounded: the oldest is forgotten first.
#[derive(Debug)]
pub struct RecentNonces {
    seen: HashSet<[u8; NONCE_BYTES]>,
    order: VecDeque<[u8; NONCE_BYTES]>,
    capacity: usize,
}

impl RecentNonces {
    /// Remembers up to `capacity` nonces.
    pub fn new(capacity: usize) -> Self {
        RecentNonces { seen: HashSet::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records the peer's nonce; an error if it was seen before or is this node's own (a reflection).
    pub fn admit(&mut self, ours: &Handshake, theirs: &Handshake) -> Result<(), HandshakeError> {
        if theirs.nonce == ours.nonce || !self.seen.insert(theirs.nonce) {
            return Err(HandshakeError::Replayed { peer: theirs.node_id });
        }
        self.order.push_back(theirs.nonce);
        if self.order.len() > self.capacity {
            let oldest = self.order.pop_front().expect("over capacity");
            self.seen.remove(&oldest);
        }
        Ok(())
    }
}

/// A peer-supplied string as it may appear in a log line: escaped, and cut after 64 characters.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 64;
        for c in self.0.chars().take(MAX_CHARS) {
            write!(f, "{}", c.escape_debug())?;
        }
        if self.0.chars().nth(MAX_CHARS).is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_of_this_cluster_and_version_is_accepted_with_its_role() {
        for role in RoleKind::ALL {
            assert_eq!(Handshake::new("prod", 3, role).check("prod"), Ok(role));
        }
    }

    #[test]
    fn a_peer_of_another_cluster_is_refused_naming_both() {
        let err = Handshake::new("x", 7, RoleKind::Acceptor).check("y").unwrap_err();
        assert_eq!(err, HandshakeError::WrongCluster { peer: 7, expected: "y".into(), got: "x".into() });
        assert_eq!(err.to_string(), "peer 7 belongs to cluster 'x', this node to 'y'");
    }

    #[test]
    fn a_peer_of_another_version_is_refused_before_anything_else() {
        let mut h = Handshake::new("x", 7, RoleKind::Replica);
        let (ours, theirs) = (u32::from(PROTOCOL_VERSION), u32::from(PROTOCOL_VERSION) + 1);
        h.protocol_version = theirs;
        h.role = "nonsense".into();
        let err = h.check("y").unwrap_err();
        assert_eq!(err, HandshakeError::WrongVersion { peer: 7, ours, theirs });
        assert_eq!(err.to_string(), format!("peer 7 speaks protocol version {theirs}, this node {ours}"));
    }

    #[test]
    fn an_unknown_role_is_refused_and_shown_escaped_and_bounded() {
        let mut h = Handshake::new("x", 9, RoleKind::Client);
        h.role = "lead\ner".into();
        let err = h.check("x").unwrap_err();
        assert_eq!(err.to_string(), "peer 9 claims unknown role 'lead\\ner'");
        h.role = "r".repeat(1000);
        let shown = h.check("x").unwrap_err().to_string();
        assert!(shown.len() < 120 && shown.ends_with("…'"), "{shown}");
    }

    fn pair() -> (ClusterSecret, Handshake, Handshake) {
        let secret = ClusterSecret::from_bytes(b"a test secret of at least thirty-two bytes");
        (secret, Handshake::new("prod", 1, RoleKind::Proposer), Handshake::new("prod", 3, RoleKind::Acceptor))
    }

    #[test]
    fn both_ends_prove_the_secret_to_each_other() {
        let (secret, dialer, acceptor) = pair();
        let from_dialer = prove(&secret, Side::Dialer, &dialer, &acceptor);
        let from_acceptor = prove(&secret, Side::Acceptor, &acceptor, &dialer);
        assert_eq!(verify(&secret, Side::Acceptor, &acceptor, &dialer, &from_dialer), Ok(()));
        assert_eq!(verify(&secret, Side::Dialer, &dialer, &acceptor, &from_acceptor), Ok(()));
        assert_ne!(from_dialer, from_acceptor, "the sides' proofs differ");
        let keys = frame_keys(&secret, Side::Dialer, &dialer, &acceptor);
        let theirs = frame_keys(&secret, Side::Acceptor, &acceptor, &dialer);
        assert_eq!((keys.send, keys.receive), (theirs.receive, theirs.send));
        assert_ne!(keys.send, keys.receive);
    }

    #[test]
    fn another_secret_a_replay_a_reflection_or_a_changed_field_fails_the_proof() {
        let (secret, dialer, acceptor) = pair();
        let proof = prove(&secret, Side::Dialer, &dialer, &acceptor);
        let bad = |secret: &ClusterSecret, ours: &Handshake, theirs: &Handshake, proof: &Proof| {
            verify(secret, Side::Acceptor, ours, theirs, proof)
                == Err(HandshakeError::BadProof { peer: theirs.node_id })
        };
        let other = ClusterSecret::from_bytes(b"another secret of at least thirty-two bytes");
        assert!(bad(&other, &acceptor, &dialer, &proof), "another secret");
        let fresh = Handshake::new("prod", 3, RoleKind::Acceptor);
        assert!(bad(&secret, &fresh, &dialer, &proof), "replayed to a new connection (new nonce)");
        let as_other_node = Handshake { node_id: 2, ..dialer.clone() };
        assert!(bad(&secret, &acceptor, &as_other_node, &proof), "the proof binds the node id");
        let as_other_role = Handshake { role: "replica".into(), ..dialer.clone() };
        assert!(bad(&secret, &acceptor, &as_other_role, &proof), "the proof binds the role");
        let reflected = prove(&secret, Side::Acceptor, &acceptor, &dialer);
        assert!(bad(&secret, &acceptor, &dialer, &reflected), "an acceptor's proof is no dialer's");
        assert!(bad(&secret, &acceptor, &dialer, &Proof([0; PROOF_BYTES])), "no secret at all");
    }

    #[test]
    fn a_nonce_seen_before_or_our_own_is_a_replay_and_old_nonces_are_forgotten() {
        let (_, ours, theirs) = pair();
        let mut recent = RecentNonces::new(2);
        assert_eq!(recent.admit(&ours, &theirs), Ok(()));
        assert_eq!(recent.admit(&ours, &theirs), Err(HandshakeError::Replayed { peer: 3 }));
        let reflection = Handshake { nonce: ours.nonce, ..theirs.clone() };
        assert_eq!(recent.admit(&ours, &reflection), Err(HandshakeError::Replayed { peer: 3 }));
        for _ in 0..2 {
            recent.admit(&ours, &Handshake::new("prod", 3, RoleKind::Acceptor)).unwrap();
        }
        assert_eq!(recent.admit(&ours, &theirs), Ok(()), "forgotten beyond capacity");
    }
}
