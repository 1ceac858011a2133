//! Membership of the stateless roles (batchers, proxy leaders, unbatchers): who is in service now.
//!
//! The configuration file fixes the proposers, acceptor groups and replicas; stateless nodes can join
//! and leave a running cluster. A joining node announces itself to every proposer ([`Msg::Join`])
//! until a view lists it. The leader owns the [`View`]: it adds joiners, moves a node that asks to
//! leave ([`Msg::Leaving`]) to `leaving` (no new work goes to it) and forgets it once it reports
//! [`Msg::Left`]. It publishes the view to every node that routes work to stateless nodes: proposers,
//! replicas (which pick unbatchers), batchers (which pass it on to their clients), and the stateless
//! nodes themselves (which learn from it that they joined, or that no new work will come).
//!
//! A node told to leave ([`Msg::Leave`], from an operator or the autoscaler) drains: it keeps serving
//! whatever still reaches it, and reports [`Msg::Left`] only once the view no longer routes work to
//! it, it holds nothing in flight, and nothing has arrived for a quiet period. Then it may stop.
//!
//! Must never: drop the last node in service of a role (a request to leave waits, and is repeated);
//! let an older view replace a newer one (views are ordered by the publishing leader's ballot, then
//! a sequence number); report `Left` while holding work.

use super::ballot::Ballot;
use super::config::{ClusterConfig, RoleKind, Tunables};
use super::messages::Msg;
use super::{NodeId, Out, Time};
use rkyv::{Archive, Deserialize, Serialize};

/// How often a stateless node announces itself or asks to leave, and half its drain's quiet period:
/// the leader's view republishing period.
pub fn membership_period_us(tunables: &Tunables) -> Time {
    tunables.heartbeat_interval_us * HEARTBEATS_PER_VIEW as Time
}

/// The leader republishes its view every this many heartbeats (and on every change), so that a lost
/// view is repaired.
pub const HEARTBEATS_PER_VIEW: u32 = 5;

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The stateless nodes in service, as a leader published them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The ballot of the leader that published it; a later leader's view replaces an earlier one's.
    pub ballot: Ballot,
    /// Bumped by the leader on every change.
    pub seq: u64,
    /// Batchers that take client requests.
    pub batchers: Vec<NodeId>,
    /// Proxy leaders that get new slots.
    pub proxy_leaders: Vec<NodeId>,
    /// Unbatchers that get reply batches.
    pub unbatchers: Vec<NodeId>,
    /// Draining, with their roles: no new work is routed to them, but they still hear heartbeats
    /// and views.
    pub leaving: Vec<(NodeId, RoleKind)>,
    /// Where nodes that joined at runtime listen ("host:port"), for the runtime to dial.
    pub addresses: Vec<(NodeId, String)>,
}

impl View {
    /// The configured stateless nodes, before any leader published a view.
    pub fn from_config(config: &ClusterConfig) -> View {
        View {
            ballot: Ballot::ZERO,
            seq: 0,
            batchers: config.batchers.clone(),
            proxy_leaders: config.proxy_leaders.clone(),
            unbatchers: config.unbatchers.clone(),
            leaving: Vec::new(),
            addresses: Vec::new(),
        }
    }

    /// Whether this view should replace `current`.
    pub fn is_newer_than(&self, current: &View) -> bool {
        (self.ballot, self.seq) > (current.ballot, current.seq)
    }

    /// The nodes in service of a stateless role (empty for the others).
    pub fn in_service(&self, role: RoleKind) -> &[NodeId] {
        match role {
            RoleKind::Batcher => &self.batchers,
            RoleKind::ProxyLeader => &self.proxy_leaders,
            RoleKind::Unbatcher => &self.unbatchers,
            _ => &[],
        }
    }

    fn in_service_mut(&mut self, role: RoleKind) -> Option<&mut Vec<NodeId>> {
        match role {
            RoleKind::Batcher => Some(&mut self.batchers),
            RoleKind::ProxyLeader => Some(&mut self.proxy_leaders),
            RoleKind::Unbatcher => Some(&mut self.unbatchers),
            _ => None,
        }
    }

    /// Whether work may be routed to `id`.
    pub fn serves(&self, id: NodeId) -> bool {
        self.batchers.contains(&id) || self.proxy_leaders.contains(&id) || self.unbatchers.contains(&id)
    }

    /// Every stateless node that should hear the view: in service or draining.
    pub fn stateless_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        let draining = self.leaving.iter().map(|&(id, _)| id);
        self.batchers.iter().chain(&self.proxy_leaders).chain(&self.unbatchers).copied().chain(draining)
    }

    /// Batchers in service or draining: both need to know the leader.
    pub fn batchers_to_inform(&self) -> impl Iterator<Item = NodeId> + '_ {
        let draining = self.leaving.iter().filter(|(_, role)| *role == RoleKind::Batcher).map(|&(id, _)| id);
        self.batchers.iter().copied().chain(draining)
    }

    /// Adds `id` to `role`'s nodes in service. Returns whether anything changed.
    pub fn join(&mut self, id: NodeId, role: RoleKind, addr: String) -> bool {
        let Some(list) = self.in_service_mut(role) else { return false };
        let mut changed = false;
        if !list.contains(&id) {
            list.push(id);
            changed = true;
        }
        if let Some(at) = self.leaving.iter().position(|&(n, _)| n == id) {
            self.leaving.remove(at);
            changed = true;
        }
        match self.addresses.iter_mut().find(|(n, _)| *n == id) {
            Some((_, known)) if *known == addr => {}
            Some((_, known)) => {
                *known = addr;
                changed = true;
            }
            None => {
                self.addresses.push((id, addr));
                changed = true;
            }
        }
        changed
    }

    /// Moves `id` out of service into `leaving`, unless it is the last node of its role in service.
    /// Returns whether anything changed.
    pub fn start_leaving(&mut self, id: NodeId) -> bool {
        for role in [RoleKind::Batcher, RoleKind::ProxyLeader, RoleKind::Unbatcher] {
            let list = self.in_service_mut(role).expect("a stateless role");
            if let Some(at) = list.iter().position(|&n| n == id) {
                if list.len() == 1 {
                    return false;
                }
                list.remove(at);
                self.leaving.push((id, role));
                return true;
            }
        }
        false
    }

    /// Forgets `id` once it has drained. Returns whether anything changed.
    pub fn forget(&mut self, id: NodeId) -> bool {
        let before = self.leaving.len() + self.addresses.len();
        self.leaving.retain(|&(n, _)| n != id);
        if !self.serves(id) {
            self.addresses.retain(|(n, _)| *n != id);
        }
        before != self.leaving.len() + self.addresses.len()
    }
}

#[derive(Debug, Clone)]
struct Draining {
    /// Who asked: told `Left` when done.
    requested_by: NodeId,
    /// When work last arrived.
    last_work_at: Time,
}

/// A stateless node's side of membership: joining, adopting views, draining and leaving.
#[derive(Debug, Clone)]
pub struct NodeMembership {
    id: NodeId,
    role: RoleKind,
    proposers: Vec<NodeId>,
    view: View,
    /// Where a node that joined at runtime listens; `None` for a configured node.
    join_addr: Option<String>,
    /// Announcing itself: joined at runtime and not (or no longer) in the latest view.
    announcing: bool,
    draining: Option<Draining>,
    left: bool,
    period_us: Time,
    next_at: Option<Time>,
}

impl NodeMembership {
    /// A node of `role`. With `join_addr`, it is not in the configuration and joins a running
    /// cluster; without, it is a configured node. `period_us` paces announcements and the drain's
    /// quiet period (two periods).
    pub fn new(
        id: NodeId,
        role: RoleKind,
        config: &ClusterConfig,
        join_addr: Option<String>,
        period_us: Time,
        now: Time,
    ) -> Self {
        let joining = join_addr.is_some();
        NodeMembership {
            id,
            role,
            proposers: config.proposers.clone(),
            view: View::from_config(config),
            join_addr,
            announcing: joining,
            draining: None,
            left: false,
            period_us,
            next_at: joining.then_some(now),
        }
    }

    /// The latest view this node adopted.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether this node has drained and reported `Left`: the runtime may stop it.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Whether this node was told to leave.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Adopts `view` if it is newer. Returns whether it was adopted.
    pub fn on_view(&mut self, view: View) -> bool {
        if !view.is_newer_than(&self.view) {
            return false;
        }
        // A node that joined at runtime announces itself again should a new leader's view miss it.
        if self.join_addr.is_some() && self.draining.is_none() {
            self.announcing = !view.serves(self.id);
            if self.announcing && self.next_at.is_none() {
                self.next_at = Some(0);
            }
        }
        self.view = view;
        true
    }

    /// Work arrived (a request, a proposal, replies): a draining node's quiet period starts again.
    pub fn on_work(&mut self, now: Time) {
        if let Some(d) = &mut self.draining {
            d.last_work_at = now;
        }
    }

    /// `from` asks this node to leave: from now on it asks the proposers to take it out of service.
    pub fn on_leave(&mut self, now: Time, from: NodeId, out: &mut Out) {
        if self.left {
            out.send(from, Msg::Left);
            return;
        }
        self.announcing = false;
        self.draining = Some(Draining { requested_by: from, last_work_at: now });
        self.ask_to_leave(out);
        self.next_at = Some(now + self.period_us);
    }

    fn ask_to_leave(&self, out: &mut Out) {
        for &p in &self.proposers {
            out.send(p, Msg::Leaving);
        }
    }

    /// When [`NodeMembership::on_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.next_at
    }

    /// Periodic work: announce while joining; while draining, repeat the request to leave until the
    /// view takes this node out of service, then report `Left` once `idle` (the role holds nothing
    /// in flight) and nothing arrived for two periods.
    pub fn on_timeout(&mut self, now: Time, idle: bool, out: &mut Out) {
        if self.next_at.is_none_or(|at| now < at) {
            return;
        }
        self.next_at = None;
        if let Some(addr) = self.join_addr.as_ref().filter(|_| self.announcing) {
            for &p in &self.proposers {
                out.send(p, Msg::Join { role: self.role, addr: addr.clone() });
            }
            self.next_at = Some(now + self.period_us);
            return;
        }
        let Some(d) = &self.draining else { return };
        if self.left {
            return;
        }
        if self.view.serves(self.id) {
            self.ask_to_leave(out);
        } else if idle && now >= d.last_work_at + 2 * self.period_us {
            let requested_by = d.requested_by;
            for &p in &self.proposers {
                out.send(p, Msg::Left);
            }
            if !self.proposers.contains(&requested_by) {
                out.send(requested_by, Msg::Left);
            }
            self.left = true;
            out.event(|| super::Event::Left);
            return;
        }
        self.next_at = Some(now + self.period_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig::f1(1, 2, 2, 2)
    }

    #[test]
    fn the_last_node_of_a_role_in_service_cannot_leave() {
        let mut view = View::from_config(&config());
        let proxies = view.proxy_leaders.clone();
        assert!(view.start_leaving(proxies[0]));
        assert!(!view.start_leaving(proxies[1]), "the last proxy leader stays");
        assert_eq!(view.proxy_leaders, vec![proxies[1]]);
        assert_eq!(view.leaving, vec![(proxies[0], RoleKind::ProxyLeader)]);
        assert!(view.forget(proxies[0]));
        assert!(view.leaving.is_empty());
    }

    #[test]
    fn a_join_is_idempotent_and_records_the_address() {
        let mut view = View::from_config(&config());
        assert!(view.join(77, RoleKind::Unbatcher, "127.0.0.1:9".into()));
        assert!(!view.join(77, RoleKind::Unbatcher, "127.0.0.1:9".into()));
        assert!(view.unbatchers.contains(&77));
        assert_eq!(view.addresses, vec![(77, "127.0.0.1:9".to_string())]);
        assert!(!view.join(78, RoleKind::Replica, "x".into()), "stateful roles do not join");
    }

    #[test]
    fn views_order_by_ballot_then_sequence() {
        let old = View::from_config(&config());
        let mut newer = old.clone();
        newer.seq = 1;
        assert!(newer.is_newer_than(&old));
        let mut later_leader = old.clone();
        later_leader.ballot = Ballot { round: 2, proposer: 1 };
        assert!(later_leader.is_newer_than(&newer));
        assert!(!old.is_newer_than(&newer));
    }

    #[test]
    fn a_joining_node_announces_until_a_view_lists_it() {
        let c = config();
        let mut m = NodeMembership::new(50, RoleKind::Batcher, &c, Some("127.0.0.1:5".into()), 1_000, 0);
        let mut out = Out::new(false);
        m.on_timeout(0, true, &mut out);
        assert_eq!(out.msgs.len(), c.proposers.len());
        assert!(matches!(out.msgs[0].1, Msg::Join { role: RoleKind::Batcher, .. }));
        let mut view = View::from_config(&c);
        view.seq = 1;
        view.join(50, RoleKind::Batcher, "127.0.0.1:5".into());
        assert!(m.on_view(view));
        let mut out = Out::new(false);
        m.on_timeout(1_000, true, &mut out);
        assert!(out.msgs.is_empty(), "joined: no more announcements");
    }

    #[test]
    fn a_draining_node_reports_left_only_when_out_of_service_idle_and_quiet() {
        let c = config();
        let me = c.proxy_leaders[0];
        let mut m = NodeMembership::new(me, RoleKind::ProxyLeader, &c, None, 1_000, 0);
        let mut out = Out::new(true);
        m.on_leave(0, 9_999, &mut out);
        assert_eq!(out.msgs.iter().filter(|(_, msg)| *msg == Msg::Leaving).count(), c.proposers.len());
        // Still in service: it asks again.
        let mut out = Out::new(true);
        m.on_timeout(1_000, true, &mut out);
        assert!(out.msgs.iter().all(|(_, msg)| *msg == Msg::Leaving));
        let mut view = View::from_config(&c);
        view.seq = 1;
        assert!(view.start_leaving(me));
        m.on_view(view);
        let mut out = Out::new(true);
        m.on_timeout(2_000, false, &mut out);
        assert!(out.msgs.is_empty() && !m.has_left(), "work in flight: not yet");
        m.on_work(2_500);
        let mut out = Out::new(true);
        m.on_timeout(3_000, true, &mut out);
        assert!(!m.has_left(), "work arrived less than two periods ago");
        let mut out = Out::new(true);
        m.on_timeout(4_500, true, &mut out);
        assert!(m.has_left());
        assert!(out.msgs.contains(&(9_999, Msg::Left)));
        assert!(out.events.contains(&crate::protocol::Event::Left));
    }
}
