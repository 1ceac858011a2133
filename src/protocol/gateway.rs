//! Gateway: the cluster side of the RESP front door (issue 13). A client node whose protocol
//! clients are *sessions*: each connection an application opens holds one session, with its own
//! client id, for as long as it lives, so every command it sends carries (client id, sequence
//! number) and the replicas' client tables make a retried command apply once. A session has one
//! request outstanding at a time; a connection's pipelined commands travel together as one
//! `KvOp::Batch`, so they stay in order and cost the log one command.
//!
//! The RESP half (parsing, commands, sockets) lives in `crate::commands` and the runtime; this
//! struct only hands sessions out and takes them back. A session whose connection closed while its
//! request was in flight is not reused until that request completes (its retries go on), so a new
//! connection never receives an old connection's reply.
//!
//! A gateway may join the running cluster as the stateless roles do (`joining`): it is then in the
//! views, `status` shows it, and `autopaxos leave` drains it: it takes no new connection, and once
//! no request of its sessions is in flight it reports `Left` and stops.
//!
//! Overload: a session's request refused with `Busy` (sent once, so never executed) is handed back
//! as [`Answer::Busy`] (the connection answers `-BUSY`), not retried: the application decides. And
//! while the cluster refuses (a `Busy` within [`BUSY_MEMORY_US`]), the gateway refuses a new request
//! at once, without sending it, once [`MAX_IN_FLIGHT_SESSIONS`] of its sessions wait on the cluster:
//! that is its queue for the leader, and it is at its bound.
//!
//! Must never: give one session to two connections; report a completion for a session that no
//! connection holds (it is swallowed, and the session freed); answer `Busy` for a request that
//! some copy of may still execute.

use super::client::SubmitError;
use super::client_mux::ClientMux;
use super::config::{ClusterConfig, Tunables};
use super::membership::{earliest, membership_period_us, NodeMembership};
use super::{Msg, NodeId, Out, Role, RoleKind, Time};
use bytes::Bytes;

/// A session's index (the low 16 bits of its client id).
pub type Session = usize;

/// Sessions with a request in flight at once, at most, while the cluster refuses requests: past
/// it a new request is refused at once (`-BUSY`) rather than sent to be refused.
pub const MAX_IN_FLIGHT_SESSIONS: usize = 256;
/// A `Busy` counts as "the cluster refuses" for this long.
pub const BUSY_MEMORY_US: Time = 100_000;

/// What a session's request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The state machine's result.
    Done(Bytes),
    /// Refused: the cluster is overloaded; the request was never executed.
    Busy,
}

/// The sessions of one gateway node.
#[derive(Debug)]
pub struct Gateway {
    mux: ClientMux,
    /// Its side of membership, if it joined the cluster.
    membership: Option<NodeMembership>,
    /// Per session: whether a connection holds it.
    held: Vec<bool>,
    /// Sessions no connection holds and with nothing in flight, the most recently freed last.
    free: Vec<Session>,
    /// Completions for held sessions since the last [`Gateway::take_completions`].
    completions: Vec<(Session, Answer)>,
    /// Sessions with a request in flight.
    in_flight: usize,
    /// When a request was last refused with `Busy`.
    last_busy_at: Option<Time>,
    /// Requests refused with `Busy` (by the cluster, or here at once), since the gateway started.
    busy: u64,
}

impl Gateway {
    /// `sessions` sessions (at most [`super::client_mux::MAX_CLIENTS`]); see [`ClientMux::new`] for
    /// `incarnation`.
    pub fn new(
        node: NodeId,
        incarnation: u16,
        sessions: u32,
        config: &ClusterConfig,
        tunables: &Tunables,
    ) -> Self {
        let mux = ClientMux::giving_up_on_busy(node, incarnation, sessions, config, tunables);
        Gateway {
            mux,
            membership: None,
            held: vec![false; sessions as usize],
            // Popped from the back: session 0 first.
            free: (0..sessions as usize).rev().collect(),
            completions: Vec::new(),
            in_flight: 0,
            last_busy_at: None,
            busy: 0,
        }
    }

    /// A gateway that joins the running cluster, announcing that it listens at `addr` (for the
    /// cluster's messages, not RESP).
    pub fn joining(
        mut self,
        id: NodeId,
        config: &ClusterConfig,
        tunables: &Tunables,
        addr: String,
        now: Time,
    ) -> Self {
        let mut membership =
            NodeMembership::new(id, RoleKind::Gateway, config, membership_period_us(tunables));
        membership.join(addr, now);
        self.membership = Some(membership);
        self
    }

    /// Whether it was told to leave: it then takes no new connection.
    pub fn is_draining(&self) -> bool {
        self.membership.as_ref().is_some_and(|m| m.is_draining() || m.has_left())
    }

    /// A session for a new connection; `None` when every session is held or busy, or the gateway
    /// is leaving.
    pub fn open(&mut self) -> Option<Session> {
        if self.is_draining() {
            return None;
        }
        let session = self.free.pop()?;
        self.held[session] = true;
        Some(session)
    }

    /// The connection holding `session` closed. A request still in flight goes on (it may already be
    /// chosen) and the session is freed when it completes.
    pub fn close(&mut self, session: Session) {
        if !std::mem::replace(&mut self.held[session], false) {
            return;
        }
        if !self.mux.client(session).is_busy() {
            self.free.push(session);
        }
        self.completions.retain(|(s, _)| *s != session);
    }

    /// Sends `op` for `session`; its result comes back through [`Gateway::take_completions`].
    pub fn submit(
        &mut self,
        session: Session,
        now: Time,
        op: Bytes,
        out: &mut Out,
    ) -> Result<u64, SubmitError> {
        debug_assert!(self.held[session], "only a held session submits");
        if self.is_shedding(now) {
            self.busy += 1;
            return Err(SubmitError::Overloaded);
        }
        let seq = self.mux.submit(session, now, op, out)?;
        self.in_flight += 1;
        Ok(seq)
    }

    /// Whether a new request is refused at once: the cluster refuses, and this gateway's queue for
    /// it (its sessions in flight) is at its bound.
    pub fn is_shedding(&self, now: Time) -> bool {
        self.in_flight >= MAX_IN_FLIGHT_SESSIONS
            && self.last_busy_at.is_some_and(|at| now.saturating_sub(at) < BUSY_MEMORY_US)
    }

    /// Requests refused with `Busy`, since the gateway started.
    pub fn busy(&self) -> u64 {
        self.busy
    }

    /// The answers that arrived for held sessions, in order.
    pub fn take_completions(&mut self) -> std::vec::Drain<'_, (Session, Answer)> {
        self.completions.drain(..)
    }

    /// A session's request ended (answered or refused): hand it to its connection, or free the
    /// session if that went.
    fn finish(&mut self, session: Session, answer: Answer) {
        self.in_flight -= 1;
        if self.held[session] {
            self.completions.push((session, answer));
        } else {
            // Its connection went while it was in flight: now nobody waits for it.
            self.free.push(session);
        }
    }

    /// The leader some session was last told of.
    pub fn leader_hint(&self) -> Option<NodeId> {
        (0..self.mux.len()).find_map(|i| self.mux.client(i).leader_hint())
    }

    /// Sessions held by connections now.
    pub fn sessions_held(&self) -> usize {
        self.held.iter().filter(|h| **h).count()
    }

    /// Requests resent after their retry timeout, since the gateway started.
    pub fn retries(&self) -> u64 {
        self.mux.retries()
    }
}

impl Role for Gateway {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        if let Some(membership) = &mut self.membership {
            match &msg {
                Msg::Membership(view) if membership.accepts_view_from(from, view) => {
                    membership.on_view(view);
                }
                Msg::Leave => {
                    membership.on_leave(now, from, out);
                    return;
                }
                Msg::ClientReplies(_) => membership.on_work(now),
                _ => {}
            }
        }
        if matches!(msg, Msg::Busy(_)) {
            self.last_busy_at = Some(now);
        }
        self.mux.handle_message(now, from, msg, out);
        let done: Vec<_> = self.mux.drain_completed().map(|c| (c.client, c.result)).collect();
        for (session, result) in done {
            self.finish(session, Answer::Done(result));
        }
        let refused: Vec<_> = self.mux.drain_refused().collect();
        for (session, _backoff) in refused {
            self.busy += 1;
            self.finish(session, Answer::Busy);
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        self.mux.handle_timeout(now, out);
        if let Some(membership) = &mut self.membership {
            // Idle: no request of any session in flight (a draining gateway leaves only then). The
            // scan over every session is only worth it once draining, when idleness matters.
            let idle = membership.is_draining() && (0..self.mux.len()).all(|i| !self.mux.client(i).is_busy());
            membership.on_timeout(now, idle, out);
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        earliest(self.mux.poll_timeout(), self.membership.as_ref().and_then(NodeMembership::poll_timeout))
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Gateway
    }

    fn status(&self) -> super::messages::NodeStatus {
        match &self.membership {
            Some(membership) => membership.status(RoleKind::Gateway),
            None => super::messages::NodeStatus::basic(RoleKind::Gateway),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{ClientReply, Msg};

    fn gateway(sessions: u32) -> Gateway {
        Gateway::new(50, 0, sessions, &ClusterConfig::f1(1, 1, 1, 1), &Tunables::default())
    }

    fn reply(g: &mut Gateway, session: Session, seq: u64, result: &'static [u8], out: &mut Out) {
        let client_id = g.mux.client(session).client_id();
        let replies = vec![ClientReply { client_id, seq, result: Bytes::from_static(result) }];
        g.handle_message(10, 7, Msg::ClientReplies(replies), out);
    }

    #[test]
    fn a_refused_request_is_answered_busy_and_past_its_bound_the_gateway_refuses_at_once() {
        let mut out = Out::new(true);
        let mut g = gateway(MAX_IN_FLIGHT_SESSIONS as u32 + 2);
        let sessions: Vec<Session> = (0..MAX_IN_FLIGHT_SESSIONS + 1).map(|_| g.open().unwrap()).collect();
        for &s in &sessions[..MAX_IN_FLIGHT_SESSIONS] {
            g.submit(s, 0, Bytes::from_static(b"op"), &mut out).unwrap();
        }
        // Below the bound, or while the cluster has not refused anything, requests go.
        assert!(!g.is_shedding(0));
        let first = sessions[0];
        let refused = Msg::Busy(vec![(g.mux.client(first).client_id(), 1)]);
        g.handle_message(5, 9, refused, &mut out);
        assert_eq!(g.take_completions().collect::<Vec<_>>(), vec![(first, Answer::Busy)]);
        assert_eq!(g.busy(), 1);
        // The refused session sends again (a new request): the gateway is at its bound once more,
        // and the cluster refuses: the next request is refused here, at once, unsent.
        g.submit(first, 6, Bytes::from_static(b"op"), &mut out).unwrap();
        out.msgs.clear();
        let last = sessions[MAX_IN_FLIGHT_SESSIONS];
        assert_eq!(g.submit(last, 7, Bytes::from_static(b"op"), &mut out), Err(SubmitError::Overloaded));
        assert!(out.msgs.is_empty());
        // Once the cluster has said nothing for a while, it is tried again.
        assert!(g.submit(last, 7 + BUSY_MEMORY_US, Bytes::from_static(b"op"), &mut out).is_ok());
    }

    #[test]
    fn a_session_closed_in_flight_is_reused_only_after_its_reply() {
        let mut out = Out::default();
        let mut g = gateway(2);
        let (a, b) = (g.open().unwrap(), g.open().unwrap());
        assert_eq!(g.open(), None, "two sessions, both held");
        let seq = g.submit(a, 0, Bytes::from_static(b"op"), &mut out).unwrap();
        g.close(a);
        assert_eq!(g.open(), None, "a is still in flight");
        reply(&mut g, a, seq, b"late", &mut out);
        assert_eq!(g.take_completions().count(), 0, "nobody waits for a's reply");
        assert_eq!(g.open(), Some(a));
        // A held session's reply is handed over once.
        let seq = g.submit(b, 0, Bytes::from_static(b"op"), &mut out).unwrap();
        reply(&mut g, b, seq, b"ok", &mut out);
        reply(&mut g, b, seq, b"ok", &mut out);
        assert_eq!(
            g.take_completions().collect::<Vec<_>>(),
            vec![(b, Answer::Done(Bytes::from_static(b"ok")))]
        );
        g.close(b);
        assert_eq!(g.open(), Some(b), "idle at close: free at once");
        assert_eq!(g.sessions_held(), 2);
    }
}
