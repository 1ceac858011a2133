//! Unbatcher: splits a replica's reply batch and sends each reply to its client. Stateless.
//! Replies for clients hosted by one node travel together, in one message to that node.
//!
//! Must never: hold replies back or reorder replies of one client.

use super::config::{ClusterConfig, Tunables};
use super::membership::{membership_period_us, NodeMembership};
use super::messages::{chunk_by_bytes, client_node, ClientReply, Msg, MAX_AGGREGATE_BYTES};
use super::{NodeId, Out, Role, RoleKind, Time};

/// One unbatcher. Its only state is its membership: it passes replies on as they come.
pub struct Unbatcher {
    membership: NodeMembership,
}

impl Unbatcher {
    /// A configured unbatcher.
    pub fn new(id: NodeId, config: &ClusterConfig, tunables: &Tunables) -> Self {
        let period = membership_period_us(tunables);
        let membership = NodeMembership::new(id, RoleKind::Unbatcher, config, period);
        Unbatcher { membership }
    }

    /// An unbatcher that is not in the configuration: it joins the running cluster, announcing that
    /// it listens at `addr`.
    pub fn joining(mut self, addr: String, now: Time) -> Self {
        self.membership.join(addr, now);
        self
    }

    /// This node's side of membership.
    pub fn membership(&self) -> &NodeMembership {
        &self.membership
    }
}

impl Role for Unbatcher {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            Msg::Membership(view) if self.membership.accepts_view_from(from, &view) => {
                self.membership.on_view(&view);
            }
            Msg::Leave => self.membership.on_leave(now, from, out),
            Msg::ReplyBatch { replies } => {
                self.membership.on_work(now);
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

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        // Replies leave as they come: nothing is ever held in flight here.
        self.membership.on_timeout(now, true, out);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.membership.poll_timeout()
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Unbatcher
    }

    fn status(&self) -> crate::protocol::messages::NodeStatus {
        self.membership.status(RoleKind::Unbatcher)
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
        let config = ClusterConfig::f1(1, 1, 1, 1);
        Unbatcher::new(config.unbatchers[0], &config, &Tunables::default()).handle_message(
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
