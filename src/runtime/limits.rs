//! What one node lets strangers and peers take from it: connections (in all, per remote address, still
//! handshaking), bytes buffered per connection, time to finish a handshake or a frame, and frames per
//! second from addresses that have not authenticated. Physalia's lesson: the configuration store must
//! stay up exactly when everything around it misbehaves, so one bad peer never takes a node down.
//!
//! [`Admission`] is a node's bookkeeping of what is in use; a connection holds a [`Ticket`] that gives
//! its share back when the connection ends. Refusals are counted by reason and logged at most once a
//! second per reason, so a flood cannot fill the log either.

use crate::protocol::NodeId;
use crate::wire::handshake::RecentNonces;
use crate::wire::MAX_FRAME_BYTES;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A node's caps. Named in the cluster file's `[limits]` table; the defaults fit a c5.xlarge serving a
/// cluster of tens of nodes and thousands of RESP clients. (A gateway's cap on RESP clients in all is
/// its `--max-connections`.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Peer connections one node keeps open at once (both directions); beyond, new ones are closed.
    pub max_connections: usize,
    /// Peer connections from one remote address (IP) at once.
    pub max_connections_per_address: usize,
    /// Connections still in their handshake at once: what strangers can hold without the secret.
    pub max_handshakes: usize,
    /// A connection that has not proved the secret after this long is closed.
    pub handshake_timeout_ms: u64,
    /// A frame begun must be whole within this long (slowloris: a peer trickling bytes).
    pub frame_timeout_ms: u64,
    /// Frames per second (and burst) a remote address may send before its peers authenticate
    /// (each handshaking connection sends two); beyond, its new connections are closed at once.
    pub unauthenticated_frames_per_sec: u32,
    /// The most one peer connection buffers: its largest frame. Bounds a peer's memory at this node.
    pub max_connection_buffer_bytes: usize,
    /// RESP clients from one address at once.
    pub resp_max_clients_per_address: usize,
    /// A RESP request begun must be whole within this long (slowloris).
    pub resp_request_timeout_ms: u64,
}

/// How much a handshaking connection may buffer: a handshake is a few hundred bytes.
pub const HANDSHAKE_BUFFER_BYTES: usize = 16 << 10;
/// Handshake nonces a node remembers to name replays.
const RECENT_NONCES: usize = 65_536;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 1024,
            max_handshakes: 256,
            handshake_timeout_ms: 5_000,
            frame_timeout_ms: 10_000,
            unauthenticated_frames_per_sec: 2_000,
            max_connection_buffer_bytes: MAX_FRAME_BYTES,
            resp_max_clients_per_address: 10_000,
            resp_request_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    /// Refuses caps that would stop a node from working at all.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_address", self.max_connections_per_address as u64),
            ("max_handshakes", self.max_handshakes as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("unauthenticated_frames_per_sec", u64::from(self.unauthenticated_frames_per_sec)),
            ("resp_max_clients_per_address", self.resp_max_clients_per_address as u64),
            ("resp_request_timeout_ms", self.resp_request_timeout_ms),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("[limits] {name} must be at least 1"));
        }
        let times = [
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("frame_timeout_ms", self.frame_timeout_ms),
            ("resp_request_timeout_ms", self.resp_request_timeout_ms),
        ];
        let max_ms = crate::protocol::config::MAX_TIME_SETTING_US / 1_000;
        if let Some((name, _)) = times.iter().find(|(_, v)| *v > max_ms) {
            return Err(format!("[limits] {name} must be at most {max_ms} (a day)"));
        }
        if self.max_connection_buffer_bytes < HANDSHAKE_BUFFER_BYTES {
            return Err(format!(
                "[limits] max_connection_buffer_bytes must be at least {HANDSHAKE_BUFFER_BYTES}"
            ));
        }
        Ok(())
    }

    /// [`Limits::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Limits::frame_timeout_ms`] as a duration.
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms)
    }

    /// [`Limits::resp_request_timeout_ms`] as a duration.
    pub fn resp_request_timeout(&self) -> Duration {
        Duration::from_millis(self.resp_request_timeout_ms)
    }
}

/// Why a connection was closed before it could do anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`Limits::max_connections`] reached.
    Connections,
    /// [`Limits::max_connections_per_address`] reached.
    PerAddress,
    /// [`Limits::max_handshakes`] reached.
    Handshakes,
    /// The address spent its [`Limits::unauthenticated_frames_per_sec`].
    FrameBudget,
    /// Another live connection already speaks for the node id this one claims.
    DuplicateNode,
}

impl Refusal {
    /// A short, fixed label for counters.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::PerAddress => "max_connections_per_address",
            Refusal::Handshakes => "max_handshakes",
            Refusal::FrameBudget => "unauthenticated_frame_budget",
            Refusal::DuplicateNode => "duplicate_node_id",
        }
    }
}

/// One node id's live, authenticated inbound connection: when it last delivered anything.
#[derive(Debug)]
pub struct Claim {
    last_read: Cell<Instant>,
}

impl Claim {
    /// Notes that the connection delivered bytes.
    pub fn touch(&self) {
        self.last_read.set(Instant::now());
    }
}

/// A token bucket: `rate` per second, holding at most `rate`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A node's bookkeeping of connections.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    open: usize,
    handshaking: usize,
    per_address: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
    claims: HashMap<NodeId, Rc<Claim>>,
    /// Nonces received lately (replays are named as such).
    pub nonces: RecentNonces,
    logged: HashMap<&'static str, (Instant, u64)>,
}

impl Admission {
    /// Empty, under `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission {
            limits,
            open: 0,
            handshaking: 0,
            per_address: HashMap::new(),
            buckets: HashMap::new(),
            claims: HashMap::new(),
            nonces: RecentNonces::new(RECENT_NONCES),
            logged: HashMap::new(),
        }
    }

    /// The caps in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits a new connection from `ip` (`None`: one this node dialled, which only counts), or says
    /// why not. `handshaking`: the connection must still prove the secret.
    pub fn admit(&mut self, ip: Option<IpAddr>, handshaking: bool) -> Result<Ticket, Refusal> {
        if let Some(ip) = ip {
            if self.open >= self.limits.max_connections {
                return Err(Refusal::Connections);
            }
            if self.per_address.get(&ip).copied().unwrap_or(0) >= self.limits.max_connections_per_address {
                return Err(Refusal::PerAddress);
            }
            if handshaking {
                if self.handshaking >= self.limits.max_handshakes {
                    return Err(Refusal::Handshakes);
                }
                // A handshaking connection sends two frames before it is authenticated.
                if !self.spend(ip, 2.0) {
                    return Err(Refusal::FrameBudget);
                }
            }
            *self.per_address.entry(ip).or_default() += 1;
        }
        self.open += 1;
        self.handshaking += usize::from(handshaking);
        Ok(Ticket { ip, handshaking })
    }

    /// Takes `cost` from `ip`'s bucket; false if it holds less.
    fn spend(&mut self, ip: IpAddr, cost: f64) -> bool {
        let rate = f64::from(self.limits.unauthenticated_frames_per_sec);
        let now = Instant::now();
        if self.buckets.len() > 65_536 {
            // Addresses idle for a second are full again: forgetting them changes nothing.
            self.buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(1));
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket { tokens: rate, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens < cost {
            return false;
        }
        bucket.tokens -= cost;
        true
    }

    /// The connection of `ticket` proved the secret.
    pub fn authenticated(&mut self, ticket: &mut Ticket) {
        if std::mem::take(&mut ticket.handshaking) {
            self.handshaking -= 1;
        }
    }

    /// Gives back what `ticket` held.
    pub fn release(&mut self, mut ticket: Ticket) {
        self.authenticated(&mut ticket);
        self.open -= 1;
        if let Some(ip) = ticket.ip {
            if let Some(n) = self.per_address.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&ip);
                }
            }
        }
    }

    /// Records that an authenticated inbound connection speaks for `node`, unless another one that
    /// delivered something within `silence` already does (a dead machine's half-open connection
    /// falls silent, so a restarted node is not locked out by it).
    pub fn claim(&mut self, node: NodeId, silence: Duration) -> Result<Rc<Claim>, Refusal> {
        if let Some(held) = self.claims.get(&node) {
            if held.last_read.get().elapsed() < silence {
                return Err(Refusal::DuplicateNode);
            }
        }
        let claim = Rc::new(Claim { last_read: Cell::new(Instant::now()) });
        self.claims.insert(node, claim.clone());
        Ok(claim)
    }

    /// Forgets `claim` when its connection ends (unless a newer one replaced it).
    pub fn unclaim(&mut self, node: NodeId, claim: &Rc<Claim>) {
        if self.claims.get(&node).is_some_and(|c| Rc::ptr_eq(c, claim)) {
            self.claims.remove(&node);
        }
    }

    /// Whether a line about `reason` may be logged now (at most one a second per reason); with the
    /// number of lines suppressed since the last one.
    pub fn may_log(&mut self, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let (at, suppressed) = self.logged.entry(reason).or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(*at) >= Duration::from_secs(1) {
            *at = now;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// A connection's share of its node's caps; give it back with [`Admission::release`].
#[derive(Debug)]
pub struct Ticket {
    ip: Option<IpAddr>,
    handshaking: bool,
}

/// When the frame (or RESP request) a connection has partly received began. A watchdog
/// ([`Partial::expired`]) checks it a few times per timeout, so the reader arms no timer per read:
/// under load nearly every read ends mid-frame.
#[derive(Debug, Default)]
pub struct Partial(Cell<Option<Instant>>);

impl Partial {
    /// Nothing is partly received (a frame just completed, or nothing is buffered).
    pub fn none(&self) {
        self.0.set(None);
    }

    /// Something is partly received: its clock starts unless it already runs.
    pub fn begun(&self) {
        if self.0.get().is_none() {
            self.0.set(Some(Instant::now()));
        }
    }

    /// Returns once what is partly received is `timeout` old (checked every quarter of it).
    pub async fn expired(&self, timeout: Duration) {
        let check = (timeout / 4).max(Duration::from_millis(1));
        loop {
            glommio::timer::sleep(check).await;
            if self.0.get().is_some_and(|began| began.elapsed() >= timeout) {
                return;
            }
        }
    }
}

/// Shared admission state of one node.
pub type SharedAdmission = Rc<RefCell<Admission>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn small() -> Limits {
        Limits {
            max_connections: 4,
            max_connections_per_address: 2,
            max_handshakes: 3,
            unauthenticated_frames_per_sec: 100,
            ..Limits::default()
        }
    }

    #[test]
    fn caps_refuse_beyond_their_bound_and_give_back_on_release() {
        let mut a = Admission::new(small());
        let t1 = a.admit(ip(1), true).unwrap();
        let mut t2 = a.admit(ip(1), true).unwrap();
        assert_eq!(a.admit(ip(1), true).unwrap_err(), Refusal::PerAddress);
        let t3 = a.admit(ip(2), true).unwrap();
        assert_eq!(a.admit(ip(3), true).unwrap_err(), Refusal::Handshakes);
        a.authenticated(&mut t2);
        let t4 = a.admit(ip(3), true).unwrap();
        assert_eq!(a.admit(ip(4), false).unwrap_err(), Refusal::Connections);
        let dialled = a.admit(None, false);
        assert!(dialled.is_ok(), "a connection this node dialled only counts");
        for t in [t1, t2, t3, t4, dialled.unwrap()] {
            a.release(t);
        }
        assert_eq!((a.open, a.handshaking, a.per_address.len()), (0, 0, 0));
    }

    #[test]
    fn an_address_that_spends_its_unauthenticated_budget_is_refused_until_it_refills() {
        let mut a = Admission::new(Limits {
            max_connections: 1000,
            max_connections_per_address: 1000,
            max_handshakes: 1000,
            ..small()
        });
        let mut held = Vec::new();
        let refused = (0..100).find_map(|_| match a.admit(ip(1), true) {
            Ok(t) => {
                held.push(t);
                None
            }
            Err(e) => Some(e),
        });
        assert_eq!(refused, Some(Refusal::FrameBudget));
        assert_eq!(held.len(), 50, "two frames each out of a burst of 100");
        assert!(a.admit(ip(2), true).is_ok(), "another address has its own budget");
        std::thread::sleep(Duration::from_millis(50));
        assert!(a.admit(ip(1), true).is_ok(), "refilled at 100 frames/s");
    }

    #[test]
    fn a_second_live_claim_of_a_node_id_is_refused_a_silent_one_is_replaced() {
        let mut a = Admission::new(Limits::default());
        let first = a.claim(7, Duration::from_secs(5)).unwrap();
        assert_eq!(a.claim(7, Duration::from_secs(5)).unwrap_err(), Refusal::DuplicateNode);
        std::thread::sleep(Duration::from_millis(20));
        let second = a.claim(7, Duration::from_millis(10)).unwrap();
        a.unclaim(7, &first);
        assert_eq!(a.claim(7, Duration::from_secs(5)).unwrap_err(), Refusal::DuplicateNode);
        a.unclaim(7, &second);
        assert!(a.claim(7, Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn logging_is_limited_to_one_line_a_second_per_reason() {
        let mut a = Admission::new(Limits::default());
        assert_eq!(a.may_log("x"), Some(0));
        assert_eq!(a.may_log("x"), None);
        assert_eq!(a.may_log("y"), Some(0));
        assert_eq!(a.may_log("x"), None);
    }

    #[test]
    fn a_cap_of_zero_is_refused_by_name() {
        let err = Limits { max_handshakes: 0, ..Limits::default() }.validate().unwrap_err();
        assert!(err.contains("max_handshakes"), "{err}");
        assert!(Limits::default().validate().is_ok());
    }
}
