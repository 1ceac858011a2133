//! Unbatcher: splits a replica's reply batch and sends each reply to its client. Stateless.
//!
//! Must never: hold replies back or reorder replies of one client.

use super::messages::{client_node, Msg};
use super::{NodeId, Out, Role, RoleKind, Time};

/// One unbatcher.
#[derive(Debug, Clone, Default)]
pub struct Unbatcher;

impl Role for Unbatcher {
    fn handle_message(&mut self, _now: Time, _from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::ReplyBatch { replies } => {
                for reply in replies {
                    out.send(client_node(reply.client_id), Msg::ClientReply(reply));
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
    use crate::protocol::messages::{client_id, ClientReply};
    use bytes::Bytes;

    #[test]
    fn each_reply_goes_to_its_client() {
        let reply = |node, seq| ClientReply { client_id: client_id(node, 3), seq, result: Bytes::new() };
        let mut out = Out::new(false);
        Unbatcher.handle_message(
            0,
            5,
            Msg::ReplyBatch { replies: vec![reply(100, 1), reply(101, 1), reply(100, 2)] },
            &mut out,
        );
        let sent: Vec<_> = out.msgs.iter().map(|(to, _)| *to).collect();
        assert_eq!(sent, vec![100, 101, 100]);
    }
}
