//! Client: the library side of a closed-loop client. One request outstanding at a time; a request
//! unanswered for `client_retry_timeout_us` is resent, with the same sequence number, to the next
//! batcher (or, without batchers, to the leader it was last told of). What to send is the caller's choice.
//!
//! Overload: a batcher refuses a request it cannot queue with `Busy`. The client waits (a backoff
//! that doubles per refusal in a row, with jitter from its own seeded generator, so the simulator
//! replays it) and sends the same request again, same sequence number, to the next batcher:
//! exactly-once holds whatever became of other copies. A client built with
//! [`Client::give_up_on_busy`] (a gateway's session) instead hands back a refusal of a request it
//! sent only once ([`BusyOutcome::Refused`], [`Event::Refused`]): over a network that does not
//! duplicate messages (TCP) no other copy exists and the refused one was never batched, so that
//! command never executes, and its caller can say so (`-BUSY`). A refusal of a request sent more
//! than once says nothing of the other copies: it is waited out and retried like any.
//!
//! Must never: reuse a sequence number for a different operation; report a request complete twice;
//! report a refusal for a request that some copy of may still execute.

use super::config::{ClusterConfig, Tunables};
use super::membership::View;
use super::messages::{ClientReply, Command, Msg};
use super::timers::Timers;
use super::{Event, NodeId, Out, Role, RoleKind, Time};
use bytes::Bytes;

#[repr(usize)]
enum Timer {
    Retry,
}

#[derive(Debug, Clone)]
struct Outstanding {
    command: Command,
    attempts: u32,
}

/// A refusal with `Busy` is waited out at most this many doublings of the base backoff.
pub const MAX_BUSY_DOUBLINGS: u32 = 8;

/// What a `Busy` did to the outstanding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyOutcome {
    /// Not about the outstanding request (late, or a duplicate): nothing.
    Stale,
    /// The request is sent again after `backoff_us`.
    Retrying { backoff_us: Time },
    /// A client that gives up on `Busy`: request `seq` is refused for good (never executed). A
    /// host that can wait should keep this client idle for `backoff_us` (refusals in a row double
    /// it, jittered): a load generator does, an application behind a gateway decides for itself.
    Refused { seq: u64, backoff_us: Time },
}

/// Why a request could not be submitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A closed-loop client has one request outstanding at a time.
    #[error("request {0} is still outstanding")]
    Busy(u64),
    /// The host refuses new requests at once: the cluster is overloaded (see the gateway).
    #[error("the cluster is overloaded")]
    Overloaded,
}

/// One client.
#[derive(Debug, Clone)]
pub struct Client {
    client_id: u64,
    config: ClusterConfig,
    retry_timeout_us: Time,
    next_seq: u64,
    outstanding: Option<Outstanding>,
    /// Rotates on every retry so that a dead batcher (or proposer) is left behind.
    next_target: usize,
    leader_hint: Option<NodeId>,
    /// The stateless nodes, as the views batchers passed on say.
    view: View,
    /// The batchers in service in `view`, by id.
    batchers: Vec<NodeId>,
    /// The backoff after a first `Busy`, doubled per refusal in a row.
    busy_backoff_us: Time,
    /// Refusals in a row (reset by a completion).
    busy_streak: u32,
    /// State of the jitter generator (splitmix64), seeded from the client id: deterministic.
    jitter: u64,
    /// Whether a definitive refusal is handed back rather than retried.
    give_up_on_busy: bool,
    /// Whether the retry timer is a `Busy` backoff (its expiry is not a timeout).
    backing_off: bool,
    timers: Timers<1>,
}

impl Client {
    /// A client with id `client_id` (see [`super::messages::client_id`]: it names the node that
    /// receives the replies); `first_target` spreads clients over batchers.
    pub fn new(client_id: u64, config: ClusterConfig, tunables: &Tunables, first_target: usize) -> Self {
        Client {
            client_id,
            config: config.clone(),
            retry_timeout_us: tunables.client_retry_timeout_us,
            next_seq: 1,
            outstanding: None,
            next_target: first_target,
            leader_hint: None,
            view: View::from_config(&config),
            batchers: config.batchers.clone(),
            busy_backoff_us: tunables.client_busy_backoff_us,
            busy_streak: 0,
            jitter: client_id ^ 0x9e37_79b9_7f4a_7c15,
            give_up_on_busy: false,
            backing_off: false,
            timers: Timers::default(),
        }
    }

    /// A client that hands a definitive `Busy` back (see [`BusyOutcome::Refused`]) instead of
    /// retrying: its caller answers its own client (a gateway's RESP connection gets `-BUSY`).
    pub fn give_up_on_busy(mut self) -> Self {
        self.give_up_on_busy = true;
        self
    }

    /// The next jitter draw (splitmix64).
    fn next_jitter(&mut self) -> u64 {
        self.jitter = self.jitter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The wait before the next send after the `streak`-th refusal in a row: the base doubled per
    /// refusal (bounded), half of it fixed and half drawn at random, so that clients refused
    /// together do not come back together.
    fn busy_backoff(&mut self) -> Time {
        let doublings = self.busy_streak.saturating_sub(1).min(MAX_BUSY_DOUBLINGS);
        let full = self.busy_backoff_us << doublings;
        let half = full / 2;
        half + self.next_jitter() % (full - half + 1)
    }

    /// A batcher refused request `seq` with `Busy`. See the module doc for what follows.
    pub fn on_busy(&mut self, now: Time, seq: u64, out: &mut Out) -> BusyOutcome {
        let outcome = match &mut self.outstanding {
            Some(o) if o.command.seq == seq => {
                if self.give_up_on_busy && o.attempts == 1 {
                    let client_id = self.client_id;
                    out.event(|| Event::Refused { client_id, seq });
                    self.outstanding = None;
                    self.timers.cancel(Timer::Retry as usize);
                    self.busy_streak += 1;
                    BusyOutcome::Refused { seq, backoff_us: self.busy_backoff() }
                } else {
                    self.busy_streak += 1;
                    let backoff_us = self.busy_backoff();
                    self.backing_off = true;
                    self.timers.set(Timer::Retry as usize, now + backoff_us);
                    BusyOutcome::Retrying { backoff_us }
                }
            }
            _ => {
                out.dropped("client: busy for no outstanding request");
                BusyOutcome::Stale
            }
        };
        self.check_invariants();
        outcome
    }

    /// Whether the client waits out a `Busy` (rather than a reply).
    pub fn is_backing_off(&self) -> bool {
        self.backing_off
    }

    /// Whether a request is waiting for its reply.
    pub fn is_busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The leader this client was last told of.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader_hint
    }

    /// Sends a new request carrying `op`; returns its sequence number.
    pub fn submit(&mut self, now: Time, op: Bytes, out: &mut Out) -> Result<u64, SubmitError> {
        if let Some(o) = &self.outstanding {
            return Err(SubmitError::Busy(o.command.seq));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let command = Command { client_id: self.client_id, seq, op };
        self.outstanding = Some(Outstanding { command, attempts: 0 });
        self.send_outstanding(now, out);
        Ok(seq)
    }

    /// Merges a view of the stateless nodes: requests go to the batchers in service.
    pub fn on_view(&mut self, view: &View) {
        if self.view.merge(view) {
            self.batchers = self.view.in_service(RoleKind::Batcher).collect();
        }
    }

    fn target(&self) -> NodeId {
        let batchers = &self.batchers;
        if !batchers.is_empty() {
            return batchers[self.next_target % batchers.len()];
        }
        let proposers = self.view.proposers(&self.config);
        self.leader_hint.unwrap_or(proposers[self.next_target % proposers.len()])
    }

    fn send_outstanding(&mut self, now: Time, out: &mut Out) {
        let target = self.target();
        let Some(o) = &mut self.outstanding else {
            return;
        };
        o.attempts += 1;
        self.backing_off = false;
        out.send(target, Msg::ClientRequests(vec![o.command.clone()]));
        self.timers.set(Timer::Retry as usize, now + self.retry_timeout_us);
    }

    /// Takes one reply addressed to this client (a node hosting many clients hands each its own);
    /// returns the result if it completed the outstanding request. The result is handed over, not
    /// copied: the `Completed` event only names the request.
    pub fn handle_reply(&mut self, reply: ClientReply, out: &mut Out) -> Option<Bytes> {
        let completed = if reply.client_id != self.client_id {
            out.dropped("client: reply for another client");
            None
        } else {
            match &self.outstanding {
                Some(o) if o.command.seq == reply.seq => {
                    self.outstanding = None;
                    self.busy_streak = 0;
                    self.backing_off = false;
                    self.timers.cancel(Timer::Retry as usize);
                    let (client_id, seq) = (self.client_id, reply.seq);
                    out.event(|| Event::Completed { client_id, seq });
                    Some(reply.result)
                }
                _ => {
                    out.dropped("client: reply to no outstanding request (a duplicate)");
                    None
                }
            }
        };
        self.check_invariants();
        completed
    }

    /// A proposer refused a request because it does not lead: remember its hint, and without
    /// batchers resend the outstanding request to the hinted leader at once.
    pub fn on_not_leader(&mut self, now: Time, leader_hint: Option<NodeId>, out: &mut Out) {
        self.leader_hint = leader_hint;
        if leader_hint.is_some() && self.batchers.is_empty() {
            self.send_outstanding(now, out);
        }
        self.check_invariants();
    }

    fn check_invariants(&self) {
        assert_eq!(self.outstanding.is_some(), self.timers.is_set(Timer::Retry as usize));
        if let Some(o) = &self.outstanding {
            assert!(o.command.seq < self.next_seq);
        }
    }
}

impl Role for Client {
    fn handle_message(&mut self, now: Time, _from: NodeId, msg: Msg, out: &mut Out) {
        match msg {
            // The result is dropped here: a host that wants it calls `handle_reply` (see `ClientMux`).
            Msg::ClientReplies(replies) => {
                for reply in replies {
                    self.handle_reply(reply, out);
                }
            }
            Msg::Membership(view) => self.on_view(&view),
            Msg::NotLeader { leader_hint } => self.on_not_leader(now, leader_hint, out),
            Msg::Busy(refused) => {
                for (client_id, seq) in refused {
                    if client_id == self.client_id {
                        self.on_busy(now, seq, out);
                    }
                }
            }
            _ => out.dropped("client: unexpected message"),
        }
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        if self.timers.take_expired(now).count() > 0 {
            self.next_target += 1;
            if self.batchers.is_empty() {
                self.leader_hint = None; // the hinted leader did not answer either
            }
            self.send_outstanding(now, out);
        }
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::client_id;

    fn client(batchers: usize) -> Client {
        Client::new(client_id(100, 0), ClusterConfig::f1(1, 1, batchers, 1), &Tunables::default(), 0)
    }

    #[test]
    fn a_retry_keeps_its_sequence_number_and_moves_to_the_next_batcher() {
        let mut c = client(2);
        let mut out = Out::new(true);
        let seq = c.submit(0, Bytes::from_static(b"op"), &mut out).unwrap();
        assert_eq!(c.submit(0, Bytes::new(), &mut out), Err(SubmitError::Busy(seq)));
        let at = c.poll_timeout().unwrap();
        c.handle_timeout(at, &mut out);
        let sent: Vec<_> = out
            .msgs
            .iter()
            .map(|(to, m)| match m {
                Msg::ClientRequests(cmds) => (*to, cmds[0].seq),
                other => panic!("{other:?}"),
            })
            .collect();
        let batchers = &c.config.batchers;
        assert_eq!(sent, vec![(batchers[0], seq), (batchers[1], seq)]);
    }

    #[test]
    fn the_first_reply_completes_the_request_and_duplicates_are_ignored() {
        let mut c = client(1);
        let mut out = Out::new(true);
        let seq = c.submit(0, Bytes::new(), &mut out).unwrap();
        let reply = Msg::ClientReplies(vec![ClientReply {
            client_id: client_id(100, 0),
            seq,
            result: Bytes::from_static(b"r"),
        }]);
        c.handle_message(1, 50, reply.clone(), &mut out);
        c.handle_message(2, 50, reply, &mut out);
        let completed = out.events.iter().filter(|e| matches!(e, Event::Completed { .. })).count();
        assert_eq!(completed, 1);
        assert!(!c.is_busy());
        assert_eq!(c.poll_timeout(), None);
    }

    fn busy(c: &Client, seq: u64) -> Msg {
        Msg::Busy(vec![(c.client_id(), seq)])
    }

    #[test]
    fn busy_backs_off_with_jitter_doubling_per_refusal_then_resends_the_same_request() {
        let base = Tunables::default().client_busy_backoff_us;
        let mut c = client(2);
        let mut out = Out::new(true);
        let seq = c.submit(0, Bytes::from_static(b"op"), &mut out).unwrap();
        let mut now = 0;
        let mut waits = Vec::new();
        for refusal in 1..=3u32 {
            assert!(matches!(c.on_busy(now, seq, &mut out), BusyOutcome::Retrying { .. }));
            let at = c.poll_timeout().unwrap();
            let wait = at - now;
            let full = base << (refusal - 1);
            assert!(full / 2 <= wait && wait <= full, "refusal {refusal}: waits {wait} of {full}");
            assert!(c.is_backing_off());
            out.msgs.clear();
            c.handle_timeout(at, &mut out);
            assert!(matches!(&out.msgs[..], [(_, Msg::ClientRequests(cmds))] if cmds[0].seq == seq));
            waits.push(wait);
            now = at;
        }
        // The same client id draws the same waits (the simulator replays them); another draws others.
        let draws = |id| {
            let mut c = Client::new(id, ClusterConfig::f1(1, 1, 1, 1), &Tunables::default(), 0);
            let mut out = Out::new(false);
            let seq = c.submit(0, Bytes::new(), &mut out).unwrap();
            (0..8)
                .map(|_| {
                    c.on_busy(0, seq, &mut out);
                    c.poll_timeout().unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(client_id(100, 0)), draws(client_id(100, 0)));
        assert_ne!(draws(client_id(100, 0)), draws(client_id(100, 1)));
        // Waits are bounded, and a completion ends the streak.
        let long = draws(client_id(100, 2));
        assert!(long.iter().all(|&w| w <= base << MAX_BUSY_DOUBLINGS));
        let reply = ClientReply { client_id: c.client_id(), seq, result: Bytes::new() };
        c.handle_message(now, 50, Msg::ClientReplies(vec![reply]), &mut out);
        let next = c.submit(now, Bytes::new(), &mut out).unwrap();
        c.on_busy(now, next, &mut out);
        assert!(c.poll_timeout().unwrap() - now <= base, "the streak starts again");
    }

    #[test]
    fn a_client_that_gives_up_is_refused_only_when_no_other_copy_was_sent() {
        let mut c = client(2).give_up_on_busy();
        let mut out = Out::new(true);
        let seq = c.submit(0, Bytes::new(), &mut out).unwrap();
        let at = c.poll_timeout().unwrap();
        c.handle_timeout(at, &mut out); // a second copy, to the other batcher
        c.handle_message(at, 12, busy(&c, seq), &mut out);
        assert!(c.is_busy(), "the first copy may still execute: not refused");
        assert!(!out.events.iter().any(|e| matches!(e, Event::Refused { .. })));
        // A request sent once and refused: refused for good.
        let reply = ClientReply { client_id: c.client_id(), seq, result: Bytes::new() };
        c.handle_message(at, 50, Msg::ClientReplies(vec![reply]), &mut out);
        let seq = c.submit(at, Bytes::new(), &mut out).unwrap();
        assert!(matches!(c.on_busy(at, seq, &mut out), BusyOutcome::Refused { seq: s, .. } if s == seq));
        assert!(!c.is_busy() && c.poll_timeout().is_none());
        assert!(out.events.contains(&Event::Refused { client_id: c.client_id(), seq }));
        assert_eq!(c.on_busy(at, seq, &mut out), BusyOutcome::Stale, "a late duplicate changes nothing");
    }

    #[test]
    fn without_batchers_a_not_leader_hint_redirects_the_request() {
        let mut c = client(0);
        let mut out = Out::new(false);
        c.submit(0, Bytes::new(), &mut out).unwrap();
        assert_eq!(out.msgs[0].0, c.config.proposers[0]);
        c.handle_message(1, 1, Msg::NotLeader { leader_hint: Some(2) }, &mut out);
        assert_eq!(out.msgs[1].0, 2);
        assert_eq!(c.leader_hint(), Some(2));
    }
}
