//! Unbatcher: splits a replica's reply batch and sends each reply to its client. Stateless.
//! Replies for clients hosted by one node travel together, in one message to that node.
//!
//! Must never: hold replies back or reorder replies of one client.

use super::messages::{chunk_by_bytes, client_node, ClientReply, Msg, MAX_AGGREGATE_BYTES};
use super::{NodeId, Out, Role, RoleKind, Time};

/// One unbatcher.
#[derive(Debug, Clone, Default)]
pub struct Unbatcher;

impl Role for Unbatcher {
    fn handle_message(&mut self, _now: Time, _from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::ReplyBatch { replies } => {
                let mut by_node: Vec<(NodeId, Vec<ClientReply>)> = Vec::new();
                for reply in replies {
                    let node = client_node(reply.client_id);
                    match by_node.iter_mut().find(|(n, _)| *n == node) {
                        Some((_, group)) => group.push(reply),
                        None => by_node.push((node, vec![reply])),
                    }
                }
                for (node, replies) in by_node {
                    for replies in chunk_by_bytes(replies, |r| r.result.len() + 32, MAX_AGGREGATE_BYTES) {
                        out.send(node, Msg::ClientReplies(replies));
                    }
                }
            }
            _ => out.dropped("unbatcher: unexpected message"),
        }
    }

    fn handle_timeout(&mut self, _now: Time, _out: &mut Out) {}

    fn poll_timeout(&self) -> Option<Time> {
        None
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Unbatcher
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::client_id;
    use bytes::Bytes;

    #[test]
    fn each_reply_goes_to_its_client_node_once_per_node_in_order() {
        let reply = |node, seq| ClientReply { client_id: client_id(node, 3), seq, result: Bytes::new() };
        let mut out = Out::new(false);
        Unbatcher.handle_message(
            0,
            5,
            Msg::ReplyBatch { replies: vec![reply(100, 1), reply(101, 1), reply(100, 2)] },
            &mut out,
        );
        let sent: Vec<(NodeId, Vec<u64>)> = out
            .msgs
            .iter()
            .map(|(to, m)| match m {
                Msg::ClientReplies(rs) => (*to, rs.iter().map(|r| r.seq).collect()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, vec![(100, vec![1, 2]), (101, vec![1])]);
    }
}
