//! The first frame on every connection: who the peer says it is. [`Handshake::check`] decides whether
//! to keep talking to it. It must never trust the peer's strings further than this check, and never
//! print them unescaped or unbounded (they go into logs).

use super::PROTOCOL_VERSION;
use crate::protocol::{NodeId, RoleKind};
use rkyv::{Archive, Deserialize, Serialize};
use std::fmt;

/// What a node says about itself when it opens a connection. (Proof of the cluster secret comes later.)
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
}

impl Handshake {
    /// The handshake this node sends: its cluster, id and role at [`PROTOCOL_VERSION`].
    pub fn new(cluster_id: impl Into<String>, node_id: NodeId, role: RoleKind) -> Self {
        Handshake {
            cluster_id: cluster_id.into(),
            node_id,
            role: role.name().to_string(),
            protocol_version: u32::from(PROTOCOL_VERSION),
        }
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
        h.protocol_version = 2;
        h.role = "nonsense".into();
        let err = h.check("y").unwrap_err();
        assert_eq!(err, HandshakeError::WrongVersion { peer: 7, ours: 1, theirs: 2 });
        assert_eq!(err.to_string(), "peer 7 speaks protocol version 2, this node 1");
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
}
