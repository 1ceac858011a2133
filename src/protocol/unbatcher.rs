//! Unbatcher: splits a replica's reply batch and sends each reply to its client. Stateless.
//! Replies for clients hosted by one node travel together, in one message to that node.
//!
//! Must never: hold replies back or reorder replies of one client.

use super::config::{ClusterConfig, Tunables};
use super::membership::{membership_period_us, NodeMembership};
use super::messages::{chunk_by_bytes, client_node, ClientReply, Msg, MAX_AGGREGATE_BYTES};
use super::{NodeId, Out, Role, RoleKind, Time};
use std::collections::BTreeMap;

/// One unbatcher. It passes replies on as they come; its state is its membership and when it last
/// told each replica that its replies arrive.
pub struct Unbatcher {
    membership: NodeMembership,
    /// Per replica: when it was last sent `RepliesTaken`, and whether a batch came since.
    acks: BTreeMap<NodeId, Ack>,
    ack_period: Time,
}

struct Ack {
    sent_at: Time,
    owed: bool,
}

impl Unbatcher {
    /// A configured unbatcher.
    pub fn new(id: NodeId, config: &ClusterConfig, tunables: &Tunables) -> Self {
        let period = membership_period_us(tunables);
        let membership = NodeMembership::new(id, RoleKind::Unbatcher, config, period);
        Unbatcher {
            membership,
            acks: BTreeMap::new(),
            ack_period: tunables.replica_report_interval_us.max(1),
        }
    }

    /// Tells `replica` its batches arrive: at once if it was last told a period ago, otherwise
    /// when that period ends (so a replica that sends steadily hears about once a period).
    fn ack(&mut self, now: Time, replica: NodeId, out: &mut Out) {
        match self.acks.get_mut(&replica) {
            Some(ack) if now < ack.sent_at + self.ack_period => ack.owed = true,
            _ => {
                self.acks.insert(replica, Ack { sent_at: now, owed: false });
                out.send(replica, Msg::RepliesTaken);
            }
        }
    }

    /// When the next owed `RepliesTaken` is due.
    fn next_ack(&self) -> Option<Time> {
        self.acks.values().filter(|a| a.owed).map(|a| a.sent_at + self.ack_period).min()
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
                self.ack(now, from, out);
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
        let period = self.ack_period;
        for (&replica, ack) in self.acks.iter_mut().filter(|(_, a)| a.owed && now >= a.sent_at + period) {
            *ack = Ack { sent_at: now, owed: false };
            out.send(replica, Msg::RepliesTaken);
        }
        // Forget replicas not heard from in a while (one removed by a change is never heard again).
        self.acks.retain(|_, a| a.owed || now < a.sent_at + 1_000 * period);
    }

    fn poll_timeout(&self) -> Option<Time> {
        [self.membership.poll_timeout(), self.next_ack()].into_iter().flatten().min()
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
            .filter(|(_, m)| !matches!(m, Msg::RepliesTaken))
            .map(|(to, m)| match m {
                Msg::ClientReplies(rs) => (*to, rs.iter().map(|r| r.seq).collect()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, vec![(100, vec![1, 2]), (101, vec![1])]);
    }

    #[test]
    fn a_replica_hears_its_batches_arrive_at_once_then_about_once_a_period() {
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let tunables = Tunables::default();
        let period = tunables.replica_report_interval_us;
        let mut u = Unbatcher::new(config.unbatchers[0], &config, &tunables);
        let reply = ClientReply { client_id: client_id(100, 3), seq: 1, result: Bytes::new() };
        let batch_from = |u: &mut Unbatcher, now: Time, replica: NodeId| -> usize {
            let mut out = Out::new(false);
            u.handle_message(now, replica, Msg::ReplyBatch { replies: vec![reply.clone()] }, &mut out);
            out.msgs.iter().filter(|(to, m)| *to == replica && matches!(m, Msg::RepliesTaken)).count()
        };
        assert_eq!(batch_from(&mut u, 0, 7), 1, "the first batch is taken at once");
        assert_eq!(batch_from(&mut u, 0, 8), 1, "each replica hears for itself");
        assert_eq!(batch_from(&mut u, 1, 7), 0, "within the period, owed");
        assert!(u.poll_timeout().is_some_and(|t| t <= period), "the owed one is timed");
        let mut out = Out::new(false);
        u.handle_timeout(period, &mut out);
        assert_eq!(out.msgs.iter().filter(|(to, m)| *to == 7 && matches!(m, Msg::RepliesTaken)).count(), 1);
        assert!(!out.msgs.iter().any(|(to, _)| *to == 8), "nothing was owed to 8");
        assert_eq!(batch_from(&mut u, 2 * period, 7), 1, "a period after the last, at once again");
    }
}
