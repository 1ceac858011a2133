//! Membership of the stateless roles (batchers, proxy leaders, unbatchers): who is in service now.
//!
//! The configuration file fixes the proposers, acceptor groups and replicas; stateless nodes can join
//! and leave a running cluster. A joining node announces itself to every proposer ([`Msg::Join`])
//! until a view lists it, then reminds them now and then until it is told to leave. Proposers put
//! joiners in service and mark a node left once it reports [`Msg::Left`]; the leader alone moves a
//! node that asks to leave ([`Msg::Leaving`]) to leaving (no new work goes to it), one request at a
//! time, so that the last node of a role stays. The leader publishes its [`View`] to every node
//! that routes work to stateless nodes: proposers, replicas (which pick unbatchers), batchers
//! (which pass it on to their clients), and the stateless nodes themselves (which learn from it
//! that they joined, or that no new work will come).
//!
//! Acceptors new to the cluster announce themselves the same way, so that views carry their
//! addresses before a change of configuration names them; they are not routed to as stateless
//! nodes are, and they leave when the leader tells them that no configuration it keeps names
//! them any more (`View::retire_acceptor`).
//!
//! A node told to leave ([`Msg::Leave`], from an operator or the autoscaler) drains: it keeps serving
//! whatever still reaches it, and reports [`Msg::Left`] only once the view no longer routes work to
//! it, it holds nothing in flight, and nothing has arrived for a quiet period. Then it may stop.
//!
//! Must never: drop the last node in service of a role (a request to leave waits, and is repeated);
//! lose a node's departure to a stale view (views merge: each node's standing only moves forward);
//! report `Left` while holding work.

use super::config::{ClusterConfig, RoleKind, Tunables};
use super::configuration::Configuration;
use super::messages::{Msg, NodeState, NodeStatus};
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

/// Where a stateless node stands. Only ever moves forward (in service, leaving, left), so that views
/// merge: whatever order views arrive in, every node ends with the furthest state each node reached.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Work is routed to it.
    InService,
    /// Draining: no new work is routed to it, but it still hears heartbeats and views.
    Leaving,
    /// Drained and gone. Kept as a tombstone so that a stale view cannot bring it back.
    Left,
}

/// One stateless node in a view.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id; never reused by another machine.
    pub id: NodeId,
    /// Its role: batcher, proxy leader or unbatcher.
    pub role: RoleKind,
    /// Where it stands.
    pub standing: Standing,
    /// Where it listens ("host:port") if it joined at runtime; empty for a configured node.
    pub addr: String,
}

/// The stateless nodes and where each stands. Views merge (per node, the furthest standing), so
/// any node can publish what it knows and no update is lost to a stale view, for instance that of a
/// leader which restarted without memory (its view is the configuration's): the nodes that know
/// more answer with their view, and the leader merges it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Sorted by id.
    members: Vec<Member>,
    /// The newest configuration of the stateful roles its publisher knew (`None`: the cluster
    /// file's): nodes that keep no history learn from it who the proposers and replicas are now.
    configuration: Option<Configuration>,
}

/// A node that joined at runtime and is listed reminds the proposers of its address every this many
/// membership periods (a stateless one until it is told to leave): a leader that restarted without
/// memory publishes views only to the nodes it knows, so a joined node it forgot would otherwise
/// never hear that it is no longer listed, and would sit idle.
pub const REMINDER_PERIODS: Time = 10;

/// Left nodes remembered; beyond it the oldest (lowest id) tombstones are dropped.
pub const MAX_TOMBSTONES: usize = 10_000;

impl View {
    /// The configured stateless nodes, all in service.
    pub fn from_config(config: &ClusterConfig) -> View {
        let mut view = View { members: Vec::new(), configuration: None };
        for (id, role) in config.all_nodes() {
            if is_stateless(role) {
                view.members.push(Member { id, role, standing: Standing::InService, addr: String::new() });
            }
        }
        view.members.sort_by_key(|m| m.id);
        view
    }

    /// Every node the view knows of, tombstones included, by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The nodes not gone that the view has an address for, as a status reports them (so that
    /// `status` can ask nodes that joined after the cluster file was written).
    pub fn known_nodes(&self) -> Vec<(NodeId, RoleKind, String)> {
        let known = |m: &&Member| m.standing != Standing::Left && !m.addr.is_empty();
        self.members.iter().filter(known).map(|m| (m.id, m.role, m.addr.clone())).collect()
    }

    fn find(&self, id: NodeId) -> Option<&Member> {
        self.members.binary_search_by_key(&id, |m| m.id).ok().map(|i| &self.members[i])
    }

    /// Merges `other` in: nodes it knows and this view does not, and any further standing. Returns
    /// whether this view changed. Members whose role cannot join are ignored.
    pub fn merge(&mut self, other: &View) -> bool {
        let mut changed = other.configuration.as_ref().is_some_and(|c| self.learn_configuration(c));
        for theirs in &other.members {
            if !can_join(theirs.role) {
                continue;
            }
            match self.members.binary_search_by_key(&theirs.id, |m| m.id) {
                Ok(i) => {
                    let mine = &mut self.members[i];
                    if theirs.standing > mine.standing {
                        mine.standing = theirs.standing;
                        changed = true;
                    }
                    if mine.addr.is_empty() && !theirs.addr.is_empty() {
                        mine.addr = theirs.addr.clone();
                        changed = true;
                    }
                }
                Err(i) => {
                    self.members.insert(i, theirs.clone());
                    changed = true;
                }
            }
        }
        if changed {
            self.bound_tombstones();
        }
        changed
    }

    /// Whether this view already holds everything `other` says (merging it would change nothing).
    pub fn covers(&self, other: &View) -> bool {
        let epoch = |v: &View| v.configuration.as_ref().map_or(0, |c| c.epoch);
        epoch(self) >= epoch(other)
            && other.members.iter().filter(|m| can_join(m.role)).all(|theirs| {
                self.find(theirs.id).is_some_and(|mine| {
                    mine.standing >= theirs.standing && (theirs.addr.is_empty() || !mine.addr.is_empty())
                })
            })
    }

    fn bound_tombstones(&mut self) {
        let tombstones = self.members.iter().filter(|m| m.standing == Standing::Left).count();
        let mut excess = tombstones.saturating_sub(MAX_TOMBSTONES);
        self.members.retain(|m| {
            let drop = excess > 0 && m.standing == Standing::Left;
            excess -= usize::from(drop);
            !drop
        });
    }

    /// Takes `config` if it is newer than the one this view carries. Returns whether it was.
    pub fn learn_configuration(&mut self, config: &Configuration) -> bool {
        if self.configuration.as_ref().is_some_and(|mine| mine.epoch >= config.epoch) {
            return false;
        }
        self.configuration = Some(config.clone());
        true
    }

    /// The newest configuration this view carries, if newer than the cluster file's.
    pub fn configuration(&self) -> Option<&Configuration> {
        self.configuration.as_ref()
    }

    /// The proposers now: the newest configuration's, or the cluster file's.
    pub fn proposers<'a>(&'a self, file: &'a ClusterConfig) -> &'a [NodeId] {
        self.configuration.as_ref().map_or(&file.proposers, |c| &c.proposers)
    }

    /// The replicas now: the newest configuration's, or the cluster file's.
    pub fn replicas<'a>(&'a self, file: &'a ClusterConfig) -> &'a [NodeId] {
        self.configuration.as_ref().map_or(&file.replicas, |c| &c.replicas)
    }

    /// Whether `from` may publish `incoming` to a node that knows `self`: a proposer of the
    /// cluster file, of the newest configuration this view knows, or of the one `incoming` carries
    /// (a proposer added by a change this node has not heard of yet). Peers are not authenticated
    /// yet; this keeps stray traffic out, not an attacker.
    pub fn accepts_view_from(&self, from: NodeId, incoming: &View, file: &ClusterConfig) -> bool {
        file.proposers.contains(&from)
            || self.proposers(file).contains(&from)
            || incoming.configuration.as_ref().is_some_and(|c| c.proposers.contains(&from))
    }

    /// The nodes of `role` in service, by id.
    pub fn in_service(&self, role: RoleKind) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(move |m| m.role == role && m.standing == Standing::InService).map(|m| m.id)
    }

    /// Whether work may be routed to `id`.
    pub fn serves(&self, id: NodeId) -> bool {
        self.find(id).is_some_and(|m| m.standing == Standing::InService)
    }

    /// Every stateless node that should hear the view: in service or draining.
    pub fn stateless_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|m| m.standing != Standing::Left).map(|m| m.id)
    }

    /// Batchers in service or draining: both need to know the leader.
    pub fn batchers_to_inform(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|m| m.role == RoleKind::Batcher && m.standing != Standing::Left)
            .map(|m| m.id)
    }

    /// Addresses of nodes that joined at runtime and have not left.
    pub fn addresses(&self) -> impl Iterator<Item = (NodeId, &str)> + '_ {
        self.members
            .iter()
            .filter(|m| m.standing != Standing::Left && !m.addr.is_empty())
            .map(|m| (m.id, m.addr.as_str()))
    }

    /// Puts `id` in service as `role`, listening at `addr`. A node that left stays gone (a new
    /// machine gets a new id). Returns whether anything changed.
    pub fn join(&mut self, id: NodeId, role: RoleKind, addr: String) -> bool {
        if !can_join(role) {
            return false;
        }
        let joiner = View {
            members: vec![Member { id, role, standing: Standing::InService, addr }],
            configuration: None,
        };
        self.merge(&joiner)
    }

    /// Moves `id` out of service, unless it is the last node in service of a role the cluster needs
    /// that is `live` (it stays, and its request is repeated until another node joins; the cluster
    /// needs no gateway, which may always leave). Returns whether anything changed.
    pub fn start_leaving(&mut self, id: NodeId, live: impl Fn(NodeId) -> bool) -> bool {
        let Some(me) = self.find(id).filter(|m| m.standing == Standing::InService) else { return false };
        if me.role != RoleKind::Gateway && !self.in_service(me.role).any(|n| n != id && live(n)) {
            return false;
        }
        let i = self.members.binary_search_by_key(&id, |m| m.id).expect("found above");
        self.members[i].standing = Standing::Leaving;
        true
    }

    /// Marks `id`, a node of a stateful `role`, as leaving: a change of configuration removed it
    /// (a configured node is listed too). It is told to leave once no configuration kept names
    /// it, and becomes a tombstone once it says it has ([`View::forget`]). Returns whether
    /// anything changed.
    pub fn mark_removed(&mut self, id: NodeId, role: RoleKind) -> bool {
        let gone = Member { id, role, standing: Standing::Leaving, addr: String::new() };
        self.merge(&View { members: vec![gone], configuration: None })
    }

    /// Acceptors, replicas and proposers that a change removed and that have not said they left.
    pub fn removed_stateful(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().filter(|m| !is_stateless(m.role) && m.standing == Standing::Leaving).map(|m| m.id)
    }

    /// Marks `id` as left once it has drained. Returns whether anything changed.
    pub fn forget(&mut self, id: NodeId) -> bool {
        match self.members.binary_search_by_key(&id, |m| m.id) {
            Ok(i) if self.members[i].standing == Standing::Leaving => {
                self.members[i].standing = Standing::Left;
                self.bound_tombstones();
                true
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for m in &self.members {
            let mark = match m.standing {
                Standing::InService => "",
                Standing::Leaving => "~",
                Standing::Left => "-",
            };
            let role = match m.role {
                RoleKind::Batcher => "b",
                RoleKind::ProxyLeader => "p",
                RoleKind::Acceptor => "a",
                RoleKind::Replica => "r",
                RoleKind::Proposer => "P",
                _ => "u",
            };
            write!(f, "{}{mark}{role}{}", if first { "" } else { " " }, m.id)?;
            first = false;
        }
        Ok(())
    }
}

/// A node that a change of configuration removed reports `Left` to whoever asked it to leave and
/// to every proposer in `proposers` (once each, never to itself), so that no later leader tells it
/// again.
pub fn report_left(
    out: &mut Out,
    me: NodeId,
    requested_by: NodeId,
    proposers: impl IntoIterator<Item = NodeId>,
) {
    let told: std::collections::BTreeSet<NodeId> =
        proposers.into_iter().chain([requested_by]).filter(|&p| p != me).collect();
    for to in told {
        out.send(to, Msg::Left);
    }
}

/// Whether nodes of `role` can join and leave a running cluster.
pub fn is_stateless(role: RoleKind) -> bool {
    matches!(role, RoleKind::Batcher | RoleKind::ProxyLeader | RoleKind::Unbatcher | RoleKind::Gateway)
}

/// Whether nodes of `role` announce themselves to a running cluster: the stateless roles, and
/// the stateful ones (acceptors, replicas, proposers) that a change of configuration will bring
/// in: views carry their addresses; they serve only once a configuration names them, and leave
/// when the leader tells them that no configuration it keeps names them any more.
pub fn can_join(role: RoleKind) -> bool {
    is_stateless(role) || matches!(role, RoleKind::Acceptor | RoleKind::Replica | RoleKind::Proposer)
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
    /// The cluster file's proposers and replicas: the contacts a joining node starts from.
    proposers: Vec<NodeId>,
    replicas: Vec<NodeId>,
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
    /// A configured node of `role`. `period_us` paces announcements and the drain's quiet period
    /// (two periods).
    pub fn new(id: NodeId, role: RoleKind, config: &ClusterConfig, period_us: Time) -> Self {
        NodeMembership {
            id,
            role,
            proposers: config.proposers.clone(),
            replicas: config.replicas.clone(),
            view: View::from_config(config),
            join_addr: None,
            announcing: false,
            draining: None,
            left: false,
            period_us,
            next_at: None,
        }
    }

    /// Makes this a node that is not in the configuration: from `now` on it announces to the
    /// proposers that it listens at `addr`, until a view lists it.
    pub fn join(&mut self, addr: String, now: Time) {
        self.join_addr = Some(addr);
        self.announcing = true;
        self.next_at = Some(now);
    }

    /// What this node knows of the stateless nodes (every view it got, merged).
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

    /// What `autopaxos status` shows of a node of `role` that stands where this one does.
    pub fn status(&self, role: RoleKind) -> NodeStatus {
        let state = match () {
            _ if self.draining.is_some() || self.left => NodeState::Leaving,
            _ if self.announcing => NodeState::Joining,
            _ => NodeState::Up,
        };
        NodeStatus { state, ..NodeStatus::basic(role) }
    }

    /// Merges `view` into this node's. Returns whether anything changed.
    pub fn on_view(&mut self, view: &View) -> bool {
        let changed = self.view.merge(view);
        // A node that joined at runtime announces itself until its view says it serves (a view
        // from a leader that never heard of it does not).
        if self.join_addr.is_some() && self.draining.is_none() {
            self.announcing = !self.view.serves(self.id) || !view.serves(self.id);
            if self.announcing && self.next_at.is_none() {
                self.next_at = Some(0);
            }
        }
        changed
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

    /// The proposers now: the newest configuration's that a view carried, or the cluster file's.
    pub fn proposers(&self) -> &[NodeId] {
        self.view.configuration().map_or(&self.proposers, |c| &c.proposers)
    }

    /// Whether `from` is a proposer: of the cluster file, or of the newest configuration known.
    pub fn is_proposer(&self, from: NodeId) -> bool {
        self.proposers.contains(&from) || self.proposers().contains(&from)
    }

    /// Whether `from` may publish `incoming` to this node (see [`View::accepts_view_from`]); a
    /// replica of the cluster file may too (it answers a joining node's announcement with the
    /// view it has, which names the proposers now).
    pub fn accepts_view_from(&self, from: NodeId, incoming: &View) -> bool {
        self.is_proposer(from)
            || self.replicas.contains(&from)
            || incoming.configuration().is_some_and(|c| c.proposers.contains(&from))
    }

    fn ask_to_leave(&self, out: &mut Out) {
        for &p in self.proposers() {
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
        let reminds = self.draining.is_none() || !is_stateless(self.role);
        if let Some(addr) = self.join_addr.as_ref().filter(|_| self.announcing || reminds) {
            for &p in self.proposers() {
                out.send(p, Msg::Join { role: self.role, addr: addr.clone() });
            }
            if self.announcing && self.view.configuration().is_none() {
                // The cluster file's proposers may all have been replaced since it was written:
                // its replicas answer with a view that names the proposers now.
                for &r in &self.replicas {
                    out.send(r, Msg::Join { role: self.role, addr: addr.clone() });
                }
            }
            // A node that joined keeps reminding the proposers, less often, as long as it serves:
            // a leader that restarted without memory, and never had a view that lists it, learns
            // of it in time to route to it.
            let periods = if self.announcing { 1 } else { REMINDER_PERIODS };
            self.next_at = Some(now + periods * self.period_us);
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
            for &p in self.proposers() {
                out.send(p, Msg::Left);
            }
            if !self.proposers().contains(&requested_by) {
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
        let proxies: Vec<NodeId> = view.in_service(RoleKind::ProxyLeader).collect();
        assert!(view.start_leaving(proxies[0], |_| true));
        assert!(!view.start_leaving(proxies[1], |_| true), "the last proxy leader stays");
        assert_eq!(view.in_service(RoleKind::ProxyLeader).collect::<Vec<_>>(), vec![proxies[1]]);
        assert!(view.forget(proxies[0]));
        assert!(!view.serves(proxies[0]) && !view.stateless_nodes().any(|n| n == proxies[0]));
    }

    #[test]
    fn a_join_is_idempotent_records_the_address_and_a_left_node_stays_gone() {
        let mut view = View::from_config(&config());
        assert!(view.join(77, RoleKind::Unbatcher, "127.0.0.1:9".into()));
        assert!(!view.join(77, RoleKind::Unbatcher, "127.0.0.1:9".into()));
        assert!(view.in_service(RoleKind::Unbatcher).any(|n| n == 77));
        assert_eq!(view.addresses().collect::<Vec<_>>(), vec![(77, "127.0.0.1:9")]);
        assert!(!view.join(78, RoleKind::Client, "x".into()), "clients do not join");
        assert!(view.start_leaving(77, |_| true) && view.forget(77));
        assert!(!view.join(77, RoleKind::Unbatcher, "127.0.0.1:9".into()), "left for good");
        assert!(!view.serves(77));
        // The cluster needs no gateway: the only one may leave.
        assert!(view.join(90, RoleKind::Gateway, "127.0.0.1:10".into()));
        assert!(view.start_leaving(90, |_| true));
    }

    #[test]
    fn views_merge_to_the_furthest_standing_whatever_the_order() {
        let base = View::from_config(&config());
        let proxy = base.in_service(RoleKind::ProxyLeader).next().unwrap();
        let mut joined = base.clone();
        joined.join(77, RoleKind::Batcher, "127.0.0.1:9".into());
        let mut left = base.clone();
        left.start_leaving(proxy, |_| true);
        left.forget(proxy);
        // A restarted leader knows only the configuration; merging either way gives the same view.
        let (mut a, mut b) = (base.clone(), left.clone());
        assert!(a.merge(&joined) && a.merge(&left));
        assert!(b.merge(&joined) && !b.merge(&base));
        assert_eq!(a, b);
        assert!(!a.serves(proxy) && a.serves(77));
        assert!(a.covers(&base) && a.covers(&left) && !base.covers(&a));
    }

    #[test]
    fn a_joining_node_announces_until_a_view_lists_it() {
        let c = config();
        let mut m = NodeMembership::new(50, RoleKind::Batcher, &c, 1_000);
        m.join("127.0.0.1:5".into(), 0);
        let mut out = Out::new(false);
        m.on_timeout(0, true, &mut out);
        // To the proposers, and to the replicas (which answer with a view naming the proposers
        // now, in case the file's were replaced).
        let to: Vec<NodeId> = out.msgs.iter().map(|(to, _)| *to).collect();
        assert_eq!(to, c.proposers.iter().chain(&c.replicas).copied().collect::<Vec<_>>());
        assert!(out.msgs.iter().all(|(_, m)| matches!(m, Msg::Join { role: RoleKind::Batcher, .. })));
        let mut view = View::from_config(&c);
        view.join(50, RoleKind::Batcher, "127.0.0.1:5".into());
        assert!(m.on_view(&view));
        assert_eq!(m.status(RoleKind::Batcher).state, NodeState::Up);
        // Listed: it no longer announces every period, but reminds the proposers (only them) every
        // REMINDER_PERIODS, so that a leader restarted without memory learns of it again.
        let joins_to = |m: &mut NodeMembership, now| {
            let mut out = Out::new(false);
            m.on_timeout(now, true, &mut out);
            let joins =
                out.msgs.iter().filter(|(_, m)| matches!(m, Msg::Join { role: RoleKind::Batcher, .. }));
            joins.map(|(to, _)| *to).collect::<Vec<NodeId>>()
        };
        assert_eq!(joins_to(&mut m, 1_000), c.proposers);
        assert!(joins_to(&mut m, 2_000).is_empty() && joins_to(&mut m, 10_000).is_empty());
        assert_eq!(joins_to(&mut m, 11_000), c.proposers);
        // Told to leave: no reminder brings it back into service.
        m.on_leave(11_500, 9_999, &mut Out::new(false));
        for now in (12_000..40_000).step_by(1_000) {
            assert!(joins_to(&mut m, now).is_empty(), "a draining node reminded at {now}");
        }
    }

    #[test]
    fn a_draining_node_reports_left_only_when_out_of_service_idle_and_quiet() {
        let c = config();
        let me = c.proxy_leaders[0];
        let mut m = NodeMembership::new(me, RoleKind::ProxyLeader, &c, 1_000);
        let mut out = Out::new(true);
        m.on_leave(0, 9_999, &mut out);
        assert_eq!(out.msgs.iter().filter(|(_, msg)| *msg == Msg::Leaving).count(), c.proposers.len());
        // Still in service: it asks again.
        let mut out = Out::new(true);
        m.on_timeout(1_000, true, &mut out);
        assert!(out.msgs.iter().all(|(_, msg)| *msg == Msg::Leaving));
        let mut view = View::from_config(&c);
        assert!(view.start_leaving(me, |_| true));
        m.on_view(&view);
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
