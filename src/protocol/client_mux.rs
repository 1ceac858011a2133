//! ClientMux: one node hosting many protocol [`Client`]s. It routes each reply to its client (by the
//! low 16 bits of the client id), tells every client of a `NotLeader` hint or a `Membership` view,
//! keeps the clients' retry deadlines in one queue so that finding the due ones costs nothing per
//! idle client, and sends the requests its clients queued during one call as one `ClientRequests`
//! message per destination, so a batcher handles one frame per turn of this node, not one per command.
//! The runtime's load generator (`runtime::load::ClientPool`) and the simulator's client nodes both
//! host their clients in it, so the simulator checks the code that runs.
//!
//! It decides nothing about what to send: a host hands it each next operation (`submit`, or the
//! `next` callbacks, which a completion or a start-up calls). Must never: do I/O or read a clock
//! (time comes in as `now`); allocate or clone per reply on the hot path; let a client's retry
//! deadline go untracked (its request would never be resent).

use super::client::{BusyOutcome, Client, SubmitError};
use super::config::{ClusterConfig, Tunables};
use super::messages::{chunk_by_bytes, client_id, client_node, Command, Msg, MAX_AGGREGATE_BYTES};
use super::{NodeId, Out, Role, RoleKind, Time};
use bytes::Bytes;
use std::collections::VecDeque;

/// Clients one mux may host: a client's index is the low 16 bits of its id.
pub const MAX_CLIENTS: u32 = 1 << 16;
/// Selects a client's index from its id.
const INDEX_MASK: u64 = (MAX_CLIENTS as u64) - 1;
/// Stale deadlines the queue may hold beyond one per client before it is compacted.
const STALE_SLACK: usize = 64;

/// One request that completed: which client, which request, and the state machine's result (moved
/// out of the reply, never copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The client's index in the mux.
    pub client: usize,
    /// The client's id.
    pub client_id: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// The encoded result.
    pub result: Bytes,
}

/// A retry deadline of one client. Only the entry with the client's current generation, at the
/// client's current deadline, is live; others are left behind when a client completes or re-arms,
/// and dropped when they reach the front (or at compaction).
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Time,
    client: u32,
    generation: u32,
}

/// Many closed-loop clients on one node, behind one face.
#[derive(Debug, Clone)]
pub struct ClientMux {
    clients: Vec<Client>,
    /// Per client, the generation of its one live entry in `deadlines`.
    generations: Vec<u32>,
    /// Retry deadlines, earliest first. Every client has the same retry timeout and `now` never goes
    /// back, so a new deadline nearly always goes at the back.
    deadlines: VecDeque<Deadline>,
    /// Completions recorded by [`Role::handle_message`], for hosts that drive the mux as a role.
    completed: Vec<Completion>,
    /// Requests resent after their retry timeout, since the mux was built.
    retries: u64,
    /// `Busy` refusals its clients received, since the mux was built.
    busy: u64,
    /// Requests refused for good (clients that give up on `Busy`), as (client index, the backoff
    /// it should wait before its next request), for the host to answer; bounded by the clients
    /// (one request outstanding each) until drained.
    refused: Vec<(usize, Time)>,
}

impl ClientMux {
    /// `count` clients with ids `client_id(node, incarnation << 16 | i)`; client `i` first sends to
    /// batcher `i` (mod the batchers), which spreads them. A fresh `incarnation` per run keeps a
    /// restarted node from reusing the (client id, sequence number) pairs of an earlier run, which the
    /// replicas' client tables remember.
    pub fn new(
        node: NodeId,
        incarnation: u16,
        count: u32,
        config: &ClusterConfig,
        tunables: &Tunables,
    ) -> Self {
        Self::build(node, incarnation, count, config, tunables, false)
    }

    /// As [`ClientMux::new`], with clients that give up on a definitive `Busy` (see
    /// [`Client::give_up_on_busy`]): their refusals wait in [`ClientMux::drain_refused`].
    pub fn giving_up_on_busy(
        node: NodeId,
        incarnation: u16,
        count: u32,
        config: &ClusterConfig,
        tunables: &Tunables,
    ) -> Self {
        Self::build(node, incarnation, count, config, tunables, true)
    }

    fn build(
        node: NodeId,
        incarnation: u16,
        count: u32,
        config: &ClusterConfig,
        tunables: &Tunables,
        give_up: bool,
    ) -> Self {
        assert!(count <= MAX_CLIENTS, "at most {MAX_CLIENTS} clients per node");
        let prefix = u32::from(incarnation) << 16;
        let clients = (0..count)
            .map(|i| {
                let c = Client::new(client_id(node, prefix | i), config.clone(), tunables, i as usize);
                if give_up {
                    c.give_up_on_busy()
                } else {
                    c
                }
            })
            .collect();
        Self::from_clients(clients)
    }

    /// Hosts clients built by the caller. Client `i`'s id must carry `i` in its low 16 bits (that is
    /// how replies find it), and all must be of one node.
    pub fn from_clients(clients: Vec<Client>) -> Self {
        assert!(clients.len() <= MAX_CLIENTS as usize, "at most {MAX_CLIENTS} clients per node");
        for (i, c) in clients.iter().enumerate() {
            assert_eq!((c.client_id() & INDEX_MASK) as usize, i, "client {i}'s id must end in its index");
            assert_eq!(client_node(c.client_id()), client_node(clients[0].client_id()), "one node's clients");
            assert!(!c.is_busy(), "clients start idle");
        }
        ClientMux {
            generations: vec![0; clients.len()],
            clients,
            deadlines: VecDeque::new(),
            completed: Vec::new(),
            retries: 0,
            busy: 0,
            refused: Vec::new(),
        }
    }

    /// How many clients the mux hosts.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the mux hosts no client.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Client `index`.
    pub fn client(&self, index: usize) -> &Client {
        &self.clients[index]
    }

    /// Requests resent after their retry timeout, since the mux was built.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// `Busy` refusals its clients received, since the mux was built.
    pub fn busy(&self) -> u64 {
        self.busy
    }

    /// Requests refused for good since the last drain, as (client index, the backoff it should
    /// wait before its next request): only clients that give up on `Busy` have them (a gateway's
    /// sessions, an open-loop load's).
    pub fn drain_refused(&mut self) -> std::vec::Drain<'_, (usize, Time)> {
        self.refused.drain(..)
    }

    /// Client `index` sends a new request carrying `op`; returns its sequence number.
    pub fn submit(&mut self, index: usize, now: Time, op: Bytes, out: &mut Out) -> Result<u64, SubmitError> {
        let seq = self.call(index, |c| c.submit(now, op, out))?;
        self.after_call();
        Ok(seq)
    }

    /// Asks `next(index, client_id)` for the next operation of every idle client and sends those it
    /// gives (one message per destination). `None` leaves that client idle.
    pub fn submit_each(
        &mut self,
        now: Time,
        out: &mut Out,
        mut next: impl FnMut(usize, u64) -> Option<Bytes>,
    ) {
        let first_new = out.msgs.len();
        for index in 0..self.clients.len() {
            if self.clients[index].is_busy() {
                continue;
            }
            if let Some(op) = next(index, self.clients[index].client_id()) {
                self.call(index, |c| c.submit(now, op, out)).expect("the client was idle");
            }
        }
        merge_requests(out, first_new);
        self.after_call();
    }

    /// Each `(index, op)` sends a new request for that (idle) client; they leave as one message per
    /// destination. An open-loop host calls it with the arrivals due.
    pub fn submit_many(
        &mut self,
        now: Time,
        out: &mut Out,
        requests: impl IntoIterator<Item = (usize, Bytes)>,
    ) {
        let first_new = out.msgs.len();
        for (index, op) in requests {
            self.call(index, |c| c.submit(now, op, out)).expect("only idle clients are given work");
        }
        merge_requests(out, first_new);
        self.after_call();
    }

    /// Handles one message for the node: replies go to their clients, and each completion is handed
    /// to `next`, whose answer (if any) that client sends next, in this same call; hints and views
    /// go to every client. What the clients send leaves as one message per destination.
    pub fn handle_message_with(
        &mut self,
        now: Time,
        _from: NodeId,
        msg: Msg,
        out: &mut Out,
        mut next: impl FnMut(Completion) -> Option<Bytes>,
    ) {
        let first_new = out.msgs.len();
        match msg {
            Msg::ClientReplies(replies) => {
                for reply in replies {
                    let index = (reply.client_id & INDEX_MASK) as usize;
                    if index >= self.clients.len() {
                        out.dropped("client mux: reply for an unknown client");
                        continue;
                    }
                    let (client_id, seq) = (reply.client_id, reply.seq);
                    self.call(index, |c| {
                        let result = c.handle_reply(reply, out)?;
                        let op = next(Completion { client: index, client_id, seq, result })?;
                        c.submit(now, op, out).expect("a client that just completed is idle");
                        Some(())
                    });
                }
            }
            // A refusal names no client: every client hears the hint.
            Msg::NotLeader { leader_hint } => {
                for index in 0..self.clients.len() {
                    self.call(index, |c| c.on_not_leader(now, leader_hint, out));
                }
            }
            // Overload: each refused client backs off (or, giving up, is reported to the host).
            Msg::Busy(refused) => {
                for (client_id, seq) in refused {
                    let index = (client_id & INDEX_MASK) as usize;
                    if index >= self.clients.len() || self.clients[index].client_id() != client_id {
                        out.dropped("client mux: busy for an unknown client");
                        continue;
                    }
                    self.busy += 1;
                    if let BusyOutcome::Refused { backoff_us, .. } =
                        self.call(index, |c| c.on_busy(now, seq, out))
                    {
                        self.refused.push((index, backoff_us));
                    }
                }
            }
            // Which batchers are in service: every client sends to them from now on.
            Msg::Membership(view) => {
                for c in &mut self.clients {
                    c.on_view(&view);
                }
            }
            _ => out.dropped("client mux: unexpected message"),
        }
        merge_requests(out, first_new);
        self.after_call();
    }

    /// The completions [`Role::handle_message`] recorded since the last drain, in order.
    pub fn drain_completed(&mut self) -> std::vec::Drain<'_, Completion> {
        self.completed.drain(..)
    }

    /// Runs `f` on client `index` and tracks the retry deadline it leaves (if it changed).
    fn call<R>(&mut self, index: usize, f: impl FnOnce(&mut Client) -> R) -> R {
        let client = &mut self.clients[index];
        let before = client.poll_timeout();
        let r = f(client);
        let after = client.poll_timeout();
        if after != before {
            self.generations[index] = self.generations[index].wrapping_add(1);
            if let Some(at) = after {
                self.push_deadline(Deadline {
                    at,
                    client: index as u32,
                    generation: self.generations[index],
                });
            }
        }
        r
    }

    fn push_deadline(&mut self, d: Deadline) {
        let pos = match self.deadlines.back() {
            Some(last) if last.at > d.at => self.deadlines.partition_point(|x| x.at <= d.at),
            _ => self.deadlines.len(),
        };
        self.deadlines.insert(pos, d);
    }

    fn is_live(&self, d: &Deadline) -> bool {
        let i = d.client as usize;
        self.generations[i] == d.generation && self.clients[i].poll_timeout() == Some(d.at)
    }

    /// Drops stale deadlines at the front, so that [`Role::poll_timeout`] is exact, and compacts the
    /// queue when stale entries pile up behind a live one (bounded memory).
    fn after_call(&mut self) {
        while self.deadlines.front().is_some_and(|d| !self.is_live(d)) {
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.clients.len() + STALE_SLACK {
            let mut queue = std::mem::take(&mut self.deadlines);
            queue.retain(|d| self.is_live(d));
            self.deadlines = queue;
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        assert!(self.deadlines.len() <= 2 * self.clients.len() + STALE_SLACK);
        if let Some(d) = self.deadlines.front() {
            assert!(self.is_live(d), "the front deadline is a client's current one");
        }
    }
}

impl Role for ClientMux {
    /// [`ClientMux::handle_message_with`] with no follow-up request; completions wait in
    /// [`ClientMux::drain_completed`].
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        let mut completed = std::mem::take(&mut self.completed);
        self.handle_message_with(now, from, msg, out, |c| {
            completed.push(c);
            None
        });
        self.completed = completed;
    }

    /// Resends the requests whose retry deadline has come, each to its client's next target.
    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        let first_new = out.msgs.len();
        // Bounded by the entries present now: a resend's new deadline lies later, at the back.
        for _ in 0..self.deadlines.len() {
            let Some(&d) = self.deadlines.front() else { break };
            if d.at > now {
                break;
            }
            self.deadlines.pop_front();
            if !self.is_live(&d) {
                continue;
            }
            let backoff = self.clients[d.client as usize].is_backing_off();
            self.call(d.client as usize, |c| c.handle_timeout(now, out));
            // The end of a `Busy` backoff is not a timeout.
            self.retries += u64::from(!backoff);
        }
        merge_requests(out, first_new);
        self.after_call();
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.deadlines.front().map(|d| d.at)
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Client
    }
}

/// The requests queued since `first_new` leave as one message per destination (chunked to the
/// aggregate size limit); other messages keep their order ahead of them.
fn merge_requests(out: &mut Out, first_new: usize) {
    if out.msgs.len() - first_new <= 1 {
        return; // nothing to merge: the common case of one completion and its next request
    }
    let mut merged: Vec<(NodeId, Vec<Command>)> = Vec::new();
    let mut others = Vec::new();
    for (to, msg) in out.msgs.drain(first_new..) {
        match msg {
            Msg::ClientRequests(commands) => match merged.iter_mut().find(|(n, _)| *n == to) {
                Some((_, all)) => all.extend(commands),
                None => merged.push((to, commands)),
            },
            other => others.push((to, other)),
        }
    }
    out.msgs.extend(others);
    for (to, commands) in merged {
        for commands in chunk_by_bytes(commands, |c| c.op.len() + 32, MAX_AGGREGATE_BYTES) {
            out.msgs.push((to, Msg::ClientRequests(commands)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::ClientReply;
    use crate::protocol::Event;

    const NODE: NodeId = 100;

    fn mux(count: u32, batchers: usize) -> (ClientMux, ClusterConfig) {
        let config = ClusterConfig::f1(1, 1, batchers, 1);
        (ClientMux::new(NODE, 0, count, &config, &Tunables::default()), config)
    }

    /// A mux whose every client has sent one request at time 0, and an empty output buffer.
    fn all_busy(count: u32, batchers: usize) -> (ClientMux, ClusterConfig, Out) {
        let (mut m, config) = mux(count, batchers);
        let mut out = Out::new(true);
        m.submit_each(0, &mut out, |_, _| Some(Bytes::new()));
        out.msgs.clear();
        (m, config, out)
    }

    fn requests(out: &Out) -> Vec<(NodeId, Vec<(u64, u64)>)> {
        out.msgs
            .iter()
            .map(|(to, m)| match m {
                Msg::ClientRequests(cmds) => (*to, cmds.iter().map(|c| (c.client_id, c.seq)).collect()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn reply(client: u32, seq: u64, result: &'static [u8]) -> ClientReply {
        ClientReply { client_id: client_id(NODE, client), seq, result: Bytes::from_static(result) }
    }

    #[test]
    fn a_start_sends_one_message_per_batcher() {
        let (mut m, config) = mux(4, 2);
        let mut out = Out::new(true);
        m.submit_each(0, &mut out, |i, _| (i != 3).then(Bytes::new));
        let sent = requests(&out);
        let (b0, b1) = (config.batchers[0], config.batchers[1]);
        let id = |i| client_id(NODE, i);
        assert_eq!(sent, vec![(b0, vec![(id(0), 1), (id(2), 1)]), (b1, vec![(id(1), 1)])]);
        assert!(!m.client(3).is_busy());
    }

    #[test]
    fn replies_reach_their_client_and_the_next_requests_leave_together() {
        let (mut m, config, mut out) = all_busy(3, 1);
        let replies =
            vec![reply(2, 1, b"two"), reply(0, 1, b"zero"), reply(0, 1, b"again"), reply(7, 1, b"?")];
        let mut done = Vec::new();
        m.handle_message_with(5, 50, Msg::ClientReplies(replies), &mut out, |c| {
            done.push((c.client, c.seq, c.result));
            (c.client == 2).then(|| Bytes::from_static(b"next"))
        });
        assert_eq!(done, vec![(2, 1, Bytes::from_static(b"two")), (0, 1, Bytes::from_static(b"zero"))]);
        assert_eq!(requests(&out), vec![(config.batchers[0], vec![(client_id(NODE, 2), 2)])]);
        let completed = out.events.iter().filter(|e| matches!(e, Event::Completed { .. })).count();
        let dropped = out.events.iter().filter(|e| matches!(e, Event::Dropped { .. })).count();
        assert_eq!((completed, dropped), (2, 2), "a duplicate and an unknown client are dropped");
        assert!(m.client(1).is_busy() && m.client(2).is_busy() && !m.client(0).is_busy());
    }

    #[test]
    fn only_due_requests_are_resent_and_poll_timeout_is_the_earliest_live_deadline() {
        let (mut m, _) = mux(2, 2);
        let retry = Tunables::default().client_retry_timeout_us;
        let mut out = Out::new(true);
        m.submit(0, 0, Bytes::new(), &mut out).unwrap();
        m.submit(1, 10, Bytes::new(), &mut out).unwrap();
        assert_eq!(m.poll_timeout(), Some(retry));
        // Client 0 completes: its deadline is stale and no longer wakes the node.
        m.handle_message_with(20, 50, Msg::ClientReplies(vec![reply(0, 1, b"")]), &mut out, |_| None);
        assert_eq!(m.poll_timeout(), Some(10 + retry));
        out.msgs.clear();
        m.handle_timeout(retry, &mut out);
        assert!(out.msgs.is_empty(), "a spurious timeout is a no-op");
        m.handle_timeout(10 + retry, &mut out);
        assert_eq!(
            requests(&out).iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
            vec![vec![(client_id(NODE, 1), 1)]]
        );
        assert_eq!(m.retries(), 1);
        assert_eq!(m.poll_timeout(), Some(10 + 2 * retry));
    }

    #[test]
    fn without_batchers_a_not_leader_hint_redirects_every_client_in_one_message() {
        let (mut m, _, mut out) = all_busy(3, 0);
        m.handle_message(1, 1, Msg::NotLeader { leader_hint: Some(2) }, &mut out);
        let sent = requests(&out);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 2);
        assert_eq!(sent[0].1.len(), 3);
        assert_eq!(m.poll_timeout(), Some(1 + Tunables::default().client_retry_timeout_us));
    }

    #[test]
    fn completions_of_the_role_face_wait_to_be_drained() {
        let (mut m, _) = mux(1, 1);
        let mut out = Out::new(false);
        m.submit(0, 0, Bytes::new(), &mut out).unwrap();
        m.handle_message(1, 50, Msg::ClientReplies(vec![reply(0, 1, b"r")]), &mut out);
        let done: Vec<_> = m.drain_completed().map(|c| (c.client_id, c.seq, c.result)).collect();
        assert_eq!(
            done,
            vec![(client_id(NODE, 0), 1, Bytes::from_static(b"r"))],
            "reported without events too"
        );
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn stale_deadlines_stay_bounded() {
        let (mut m, _) = mux(2, 1);
        let mut out = Out::new(false);
        m.submit(1, 0, Bytes::new(), &mut out).unwrap(); // stays outstanding: the queue's front
        for seq in 1..1_000u64 {
            m.submit(0, seq, Bytes::new(), &mut out).unwrap();
            m.handle_message_with(seq, 50, Msg::ClientReplies(vec![reply(0, seq, b"")]), &mut out, |_| None);
        }
        assert!(m.deadlines.len() <= 2 * m.len() + STALE_SLACK);
        assert_eq!(m.poll_timeout(), m.client(1).poll_timeout());
    }
}
