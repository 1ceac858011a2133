//! The autoscaler's stateful side (with `--config`, or a fleet that can describe the cluster): every
//! interval it asks the cluster how it stands (`autopaxos status`'s gather, plus the nodes the fleet
//! knows), then
//! - heals: the [`Healer`] picks dead proposers, acceptors and replicas; for each it launches one node
//!   of the role that joins the running cluster, waits until it answers, asks the leader for the
//!   change that puts it in and the dead node out (read-modify-write on the configuration in force,
//!   [`reconfigure_by`]), and terminates the dead node's instance once none of its nodes is in the
//!   configuration (a new replica is then taught by its peers: issue 10);
//! - sizes the acceptor groups with the [`Policy`], on the Phase2a messages per second the
//!   acceptors accept: a scale out launches 2f+1 acceptors per group, waits until each answers and
//!   reconfigures the groups in; a scale in reconfigures groups out (those the autoscaler launched
//!   first), waits until their acceptors leave by themselves (they do once the log is trimmed past
//!   every slot they owned) and then terminates their instances.
//!
//! One change of groups at a time, and none while a replacement is under way (changes are chosen
//! one after another anyway, and a group being healed must not also be removed).

use super::healing::{HealAction, HealConfig, Healer, Health, Member, Replacement};
use super::policy::{Action, Observation, Policy};
use super::{error_metric, Counters, Fleet, Instance, Record};
use crate::protocol::configuration::Configuration;
use crate::protocol::{NodeId, RoleKind};
use crate::runtime::config::ClusterFile;
use crate::runtime::operator::{gather_with, reconfigure_by, ClusterStatus, Reconfigured};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

/// The counter acceptor load is measured by: Phase2a messages an acceptor accepted.
pub const ACCEPTED_COUNTER: &str = "autopaxos_phase2_accepted_total";

/// How long one change of configuration may take before the interval gives up on it (it is asked
/// again next interval, within the replacement's or group change's own timeout).
const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(20);

/// One step of healing or of a change of acceptor groups, as printed with `--json` and logged.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The interval (0-based).
    pub interval: u64,
    /// When (since the autoscaler started), in seconds.
    pub at_secs: f64,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// The role concerned.
    pub role: &'static str,
    /// What was done: `{"kind": ...}` with kind one of `replace` (decided, and launched),
    /// `replaced` (the change is in force), `abandon`, `terminate`, `add-groups` (launched),
    /// `groups-added`, `remove-groups`, `groups-removed`.
    pub action: StepKind,
    /// The node concerned (the dead one, for a replacement).
    pub node: Option<NodeId>,
    /// The node that replaces it.
    pub replacement: Option<NodeId>,
    /// Acceptor groups concerned (indexes in the configuration before the change).
    pub groups: Vec<usize>,
    /// Fleet instances launched or terminated.
    pub instances: Vec<String>,
    /// Why, in words, with the numbers.
    pub reason: String,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// The kind of a [`Step`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepKind {
    /// See [`Step::action`].
    pub kind: &'static str,
}

/// A change of configuration as a function of the configuration in force.
pub type Change<'a> = &'a dyn Fn(&Configuration) -> Result<Configuration, String>;

/// The running cluster as the stateful side sees it: how it stands, and changes of configuration.
/// [`LiveCluster`] asks the real one; the unit tests use one in memory.
pub trait ClusterOps {
    /// How every node stands: the file's, those the proposers saw join, and `more`.
    fn status(&mut self, more: &[(NodeId, RoleKind, SocketAddr)]) -> ClusterStatus;
    /// Asks the leader for `change` applied to the configuration in force, and waits until it is
    /// in force (or fails).
    fn reconfigure(&mut self, change: Change) -> Result<Reconfigured, String>;
}

/// The cluster of a cluster file, asked over the network (`autopaxos status`'s gather, and
/// `autopaxos reconfigure`'s change).
pub struct LiveCluster(pub ClusterFile);

impl ClusterOps for LiveCluster {
    fn status(&mut self, more: &[(NodeId, RoleKind, SocketAddr)]) -> ClusterStatus {
        gather_with(&self.0, more, Duration::from_secs(1))
    }

    fn reconfigure(&mut self, change: Change) -> Result<Reconfigured, String> {
        reconfigure_by(&self.0, change, RECONFIGURE_TIMEOUT)
    }
}

/// A change of acceptor groups under way.
#[derive(Debug, Clone)]
enum GroupChange {
    /// Acceptors launched for new groups, not yet reconfigured in.
    Adding { launched: Vec<Instance>, started: Duration },
    /// Groups reconfigured out; their acceptors have not all left yet.
    Removing { members: Vec<NodeId>, started: Duration, warned: bool },
}

/// Where a node lived: its instance and every node that instance runs.
#[derive(Debug, Clone)]
struct Home {
    instance: String,
    nodes: Vec<NodeId>,
    managed: bool,
}

/// What the loop hands the stateful side each interval.
pub struct Tick<'a> {
    /// The interval.
    pub interval: u64,
    /// Since the autoscaler started.
    pub now: Duration,
    /// Dry run: decide and log, change nothing.
    pub dry_run: bool,
    /// The fleet's instances this interval.
    pub instances: &'a [Instance],
    /// This interval's acceptor counters ([`ACCEPTED_COUNTER`] per node id).
    pub accepted: Counters,
    /// Where to act.
    pub fleet: &'a mut dyn Fleet,
    /// Sizes the groups (a policy made `with_acceptor_groups`), if group sizing is on.
    pub policy: Option<&'a mut Policy>,
}

/// The stateful side's memory between intervals.
pub struct Stateful {
    cluster: Box<dyn ClusterOps>,
    healer: Option<Healer>,
    change: Option<GroupChange>,
    /// Every node's instance, from every listing so far: a node whose instance is no longer listed
    /// has lost it.
    homes: BTreeMap<NodeId, Home>,
    prev_accepted: Counters,
    /// Failures tolerated: a new group has 2f+1 acceptors.
    f: usize,
    /// How long a new group's acceptors may take to answer before they are terminated.
    change_timeout: Duration,
    /// The replacements last exported as metrics: node -> (role, try).
    exported: BTreeMap<NodeId, (&'static str, u32)>,
}

impl Stateful {
    /// Manages the stateful roles of the cluster of `file`; heals with `heal` (`None`: no healing).
    pub fn new(file: ClusterFile, heal: Option<HealConfig>) -> Stateful {
        let f = file.config.f;
        Stateful::with_cluster(Box::new(LiveCluster(file)), f, heal)
    }

    /// Manages the stateful roles of `cluster`, which tolerates `f` failures.
    pub fn with_cluster(cluster: Box<dyn ClusterOps>, f: usize, heal: Option<HealConfig>) -> Stateful {
        let change_timeout = heal.as_ref().map_or(Duration::from_secs(300), |h| h.replacement_timeout);
        Stateful {
            cluster,
            healer: heal.map(Healer::new),
            change: None,
            homes: BTreeMap::new(),
            prev_accepted: Counters::new(),
            f,
            change_timeout,
            exported: BTreeMap::new(),
        }
    }

    /// The replacements under way (for metrics and `status`).
    pub fn replacements(&self) -> Vec<Replacement> {
        self.healer.iter().flat_map(|h| h.in_progress().cloned()).collect()
    }

    /// One interval: ask the cluster, heal, size the groups. Returns the steps taken and the
    /// groups' sizing decision, if one was made.
    pub fn step(&mut self, tick: Tick) -> (Vec<Step>, Option<Record>) {
        let Tick { interval, now, dry_run, instances, accepted, fleet, policy } = tick;
        let prev = std::mem::replace(&mut self.prev_accepted, accepted);
        for i in instances {
            for &n in &i.node_ids {
                let home = Home { instance: i.id.clone(), nodes: i.node_ids.clone(), managed: i.managed };
                self.homes.insert(n, home);
            }
        }
        let more: Vec<(NodeId, RoleKind, SocketAddr)> = instances
            .iter()
            .filter(|i| i.node_ids.len() == 1)
            .filter_map(|i| i.address.map(|a| (i.node_ids[0], i.role, a)))
            .collect();
        let status = self.cluster.status(&more);
        let Some(config) = status.configuration().map(|c| c.config.clone()) else {
            error_metric("status");
            tracing::warn!("no proposer or replica answered: the configuration in force is unknown; waiting");
            return (Vec::new(), None);
        };
        metrics::gauge!("autopaxos_autoscaler_acceptor_groups").set(config.acceptor_groups.len() as f64);
        let mut ctx = Ctx { interval, now, dry_run, steps: Vec::new(), fleet };
        let live: BTreeSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        let members = self.members(&config, &status, &live);
        if let Some(healer) = &mut self.healer {
            for action in healer.observe(now, &members) {
                match action {
                    HealAction::Replace { old, role, group, reason, .. } => {
                        start_replacement(healer, &mut ctx, old, role, group, reason)
                    }
                    HealAction::Abandon { replacement, reason } => abandon(&mut ctx, &replacement, reason),
                }
            }
        }
        self.advance_replacements(&mut ctx, &status, &config);
        let busy = self.healer.as_ref().is_some_and(|h| h.in_progress().next().is_some());
        let mut record = None;
        if let Some(change) = self.change.take() {
            self.change = self.advance_group_change(&mut ctx, change, &status);
        } else if let (Some(policy), false) = (policy, busy) {
            record = self.size_groups(&mut ctx, policy, &config, &prev);
        }
        self.export_replacements();
        (ctx.steps, record)
    }

    /// Exports the replacements under way: `autopaxos_autoscaler_replacing{role, node}` is the try
    /// number while node `node` is being replaced, 0 after (what `autopaxos status --autoscaler` shows).
    fn export_replacements(&mut self) {
        let Some(h) = &self.healer else { return };
        metrics::gauge!("autopaxos_autoscaler_replacements_in_progress").set(h.in_progress().count() as f64);
        metrics::gauge!("autopaxos_autoscaler_unreachable_members").set(h.unreachable() as f64);
        let now: BTreeMap<NodeId, (&'static str, u32)> =
            h.in_progress().map(|r| (r.old, (r.role, r.attempt))).collect();
        for (&node, &(role, _)) in self.exported.iter().filter(|(n, _)| !now.contains_key(n)) {
            metrics::gauge!("autopaxos_autoscaler_replacing", "role" => role, "node" => node.to_string())
                .set(0.0);
        }
        for (&node, &(role, attempt)) in &now {
            metrics::gauge!("autopaxos_autoscaler_replacing", "role" => role, "node" => node.to_string())
                .set(f64::from(attempt));
        }
        self.exported = now;
    }

    /// The configuration's members with what was seen of each.
    fn members(&self, config: &Configuration, status: &ClusterStatus, live: &BTreeSet<&str>) -> Vec<Member> {
        let health = |id: NodeId| {
            let answered = status.nodes.iter().any(|n| n.id == id && n.status.is_ok());
            let gone = self.homes.get(&id).is_some_and(|h| !live.contains(h.instance.as_str()));
            match (answered, gone) {
                (true, _) => Health::Answering,
                (false, true) => Health::InstanceGone,
                (false, false) => Health::Unreachable,
            }
        };
        let mut members = Vec::new();
        for (g, group) in config.acceptor_groups.iter().enumerate() {
            for &id in group {
                members.push(Member { id, role: RoleKind::Acceptor, group: Some(g), health: health(id) });
            }
        }
        for (ids, role) in [(&config.replicas, RoleKind::Replica), (&config.proposers, RoleKind::Proposer)] {
            for &id in ids {
                members.push(Member { id, role, group: None, health: health(id) });
            }
        }
        members
    }

    /// Reconfigures in every launched replacement that answers; terminates what is left of the
    /// dead node's instance once the change is in force.
    fn advance_replacements(&mut self, ctx: &mut Ctx, status: &ClusterStatus, config: &Configuration) {
        let Some(healer) = &self.healer else { return };
        let ready: Vec<Replacement> = healer
            .in_progress()
            .filter(|r| {
                r.new_node.is_some_and(|n| status.nodes.iter().any(|s| s.id == n && s.status.is_ok()))
            })
            .cloned()
            .collect();
        for r in ready {
            let new = r.new_node.expect("filtered");
            let result = self.cluster.reconfigure(&|current| swap(current, r.old, new));
            let took = ctx.now.saturating_sub(r.started);
            match result {
                Ok(done) => {
                    if let Some(h) = &mut self.healer {
                        h.replaced(r.old);
                    }
                    metrics::counter!("autopaxos_autoscaler_replacements_total", "role" => r.role, "outcome" => "done")
                        .increment(1);
                    metrics::gauge!("autopaxos_autoscaler_last_replacement_seconds", "role" => r.role)
                        .set(took.as_secs_f64());
                    let reason = format!(
                        "{} {} replaced by {new}: epoch {} in force from slot {}, {:.1}s after the replacement \
                         was decided",
                        r.role,
                        r.old,
                        done.epoch,
                        done.from_slot,
                        took.as_secs_f64()
                    );
                    let d = Draft::new(r.role, "replaced").node(r.old).replacement(Some(new)).groups(r.group);
                    ctx.step(d, reason, None);
                    let after = swap(config, r.old, new).unwrap_or_else(|_| config.clone());
                    self.terminate_home(ctx, r.role, r.old, &ids(&after));
                }
                Err(e) => {
                    tracing::info!(role = r.role, old = r.old, new, "the change is not in force yet: {e}");
                }
            }
        }
    }

    /// Terminates the instance node `old` lived on unless one of its nodes is in `members`.
    fn terminate_home(&mut self, ctx: &mut Ctx, role: &'static str, old: NodeId, members: &[NodeId]) {
        let Some(home) = self.homes.get(&old).cloned() else {
            tracing::info!(node = old, "no instance is known for node {old}: nothing to terminate");
            return;
        };
        if let Some(other) = home.nodes.iter().find(|n| members.contains(n)) {
            tracing::info!(node = old, instance = %home.instance, "kept: it also runs node {other}, still a member");
            return;
        }
        let reason =
            format!("node {old} is out of the configuration: terminating its instance {}", home.instance);
        let error = if ctx.dry_run {
            None
        } else {
            ctx.fleet.terminate(std::slice::from_ref(&home.instance)).err().map(|e| {
                error_metric("terminate");
                e.0
            })
        };
        if error.is_none() {
            for n in &home.nodes {
                self.homes.remove(n);
            }
        }
        ctx.step(Draft::new(role, "terminate").node(old).instances(vec![home.instance]), reason, error);
    }

    /// The groups' sizing decision, and a change of groups if it asks for one.
    fn size_groups(
        &mut self,
        ctx: &mut Ctx,
        policy: &mut Policy,
        config: &Configuration,
        prev: &Counters,
    ) -> Option<Record> {
        let load = group_load(&config.acceptor_groups, prev, &self.prev_accepted);
        let observation =
            Observation { role: RoleKind::Acceptor, load, nodes: config.acceptor_groups.len() as u32 };
        let decision = policy.decide(ctx.now, &[observation]).pop()?;
        let mut record = Record {
            interval: ctx.interval,
            dry_run: ctx.dry_run,
            decision: decision.clone(),
            launched: Vec::new(),
            terminated: Vec::new(),
            error: None,
        };
        match decision.action {
            Action::Hold => {}
            Action::ScaleOut { add } => {
                let count = add * (2 * self.f as u32 + 1);
                if ctx.dry_run {
                    return Some(record);
                }
                match ctx.fleet.launch(RoleKind::Acceptor, count) {
                    Ok(launched) => {
                        record.launched = launched.iter().map(|i| i.id.clone()).collect();
                        let nodes: Vec<NodeId> = launched.iter().flat_map(|i| i.node_ids.clone()).collect();
                        let reason = format!(
                            "launched acceptors {nodes:?} for {add} new group(s); they join, then a change \
                             brings them in"
                        );
                        let d = Draft::new("acceptor", "add-groups").instances(record.launched.clone());
                        ctx.step(d, reason, None);
                        self.change = Some(GroupChange::Adding { launched, started: ctx.now });
                    }
                    Err(e) => {
                        error_metric("launch");
                        record.error = Some(e.0);
                    }
                }
            }
            Action::ScaleIn { remove } => {
                let groups = self.groups_to_remove(config, remove as usize);
                let members: Vec<NodeId> =
                    groups.iter().flat_map(|&g| config.acceptor_groups[g].iter().copied()).collect();
                if ctx.dry_run {
                    return Some(record);
                }
                let result = self.cluster.reconfigure(&|current| without_groups(current, &members));
                match result {
                    Ok(done) => {
                        let reason = format!(
                            "groups {groups:?} ({members:?}) out: epoch {} in force from slot {}; their acceptors \
                             leave once the log is trimmed past their slots, then their instances are terminated",
                            done.epoch, done.from_slot
                        );
                        ctx.step(Draft::new("acceptor", "remove-groups").groups(groups), reason, None);
                        self.change =
                            Some(GroupChange::Removing { members, started: ctx.now, warned: false });
                    }
                    Err(e) => {
                        error_metric("reconfigure");
                        record.error = Some(e);
                    }
                }
            }
        }
        Some(record)
    }

    /// The `count` groups a scale in removes: those whose acceptors the autoscaler launched, newest
    /// first, then the last ones.
    fn groups_to_remove(&self, config: &Configuration, count: usize) -> Vec<usize> {
        let managed = |g: &Vec<NodeId>| g.iter().all(|n| self.homes.get(n).is_some_and(|h| h.managed));
        let mut order: Vec<usize> = (0..config.acceptor_groups.len()).collect();
        order.sort_by_key(|&g| {
            let group = &config.acceptor_groups[g];
            (std::cmp::Reverse(managed(group)), std::cmp::Reverse(group.iter().max().copied()))
        });
        let mut chosen: Vec<usize> = order.into_iter().take(count).collect();
        chosen.sort_unstable();
        chosen
    }

    /// Moves a change of groups on; returns it while it is still under way.
    fn advance_group_change(
        &mut self,
        ctx: &mut Ctx,
        change: GroupChange,
        status: &ClusterStatus,
    ) -> Option<GroupChange> {
        let answers = |id: NodeId| status.nodes.iter().any(|n| n.id == id && n.status.is_ok());
        match change {
            GroupChange::Adding { launched, started } => {
                let nodes: Vec<NodeId> = launched.iter().flat_map(|i| i.node_ids.clone()).collect();
                let ids: Vec<String> = launched.iter().map(|i| i.id.clone()).collect();
                if ctx.now.saturating_sub(started) >= self.change_timeout {
                    let reason = format!(
                        "acceptors {nodes:?} did not all answer within {}: terminating them",
                        humantime::format_duration(self.change_timeout)
                    );
                    let error = ctx.fleet.terminate(&ids).err().map(|e| e.0);
                    ctx.step(Draft::new("acceptor", "abandon").instances(ids), reason, error);
                    return None;
                }
                if !nodes.iter().all(|&n| answers(n)) {
                    return Some(GroupChange::Adding { launched, started });
                }
                let size = 2 * self.f + 1;
                let new_groups: Vec<Vec<NodeId>> = nodes.chunks(size).map(<[NodeId]>::to_vec).collect();
                let result = self.cluster.reconfigure(&|current| {
                    let mut next = current.clone();
                    next.acceptor_groups.extend(new_groups.iter().cloned());
                    Ok(next)
                });
                match result {
                    Ok(done) => {
                        let reason = format!(
                            "groups {new_groups:?} in: epoch {} in force from slot {}, {:.1}s after the scale \
                             out was decided",
                            done.epoch,
                            done.from_slot,
                            ctx.now.saturating_sub(started).as_secs_f64()
                        );
                        ctx.step(Draft::new("acceptor", "groups-added").instances(ids), reason, None);
                        None
                    }
                    Err(e) => {
                        tracing::info!("new groups {new_groups:?} not in force yet: {e}");
                        Some(GroupChange::Adding { launched, started })
                    }
                }
            }
            GroupChange::Removing { members, started, mut warned } => {
                let serving: Vec<NodeId> = members.iter().copied().filter(|&n| answers(n)).collect();
                if !serving.is_empty() {
                    let waited = ctx.now.saturating_sub(started);
                    if waited >= self.change_timeout && !warned {
                        warned = true;
                        tracing::warn!(
                            "removed acceptors {serving:?} still serve after {:.0?}: is the log being trimmed \
                             (every replica up)? waiting; they are never terminated while they serve",
                            waited
                        );
                    }
                    return Some(GroupChange::Removing { members, started, warned });
                }
                let reason = format!(
                    "removed acceptors {members:?} left after {:.1}s",
                    ctx.now.saturating_sub(started).as_secs_f64()
                );
                ctx.step(Draft::new("acceptor", "groups-removed"), reason, None);
                let still = status.configuration().map(|c| ids(&c.config)).unwrap_or_default();
                for &m in &members {
                    if self.homes.get(&m).is_some_and(|h| h.managed) {
                        self.terminate_home(ctx, "acceptor", m, &still);
                    }
                }
                None
            }
        }
    }
}

/// What a step needs to act and report.
struct Ctx<'a> {
    interval: u64,
    now: Duration,
    dry_run: bool,
    steps: Vec<Step>,
    fleet: &'a mut dyn Fleet,
}

/// A step's subject, before its reason and outcome are known.
struct Draft {
    role: &'static str,
    kind: &'static str,
    node: Option<NodeId>,
    replacement: Option<NodeId>,
    groups: Vec<usize>,
    instances: Vec<String>,
}

impl Draft {
    fn new(role: &'static str, kind: &'static str) -> Draft {
        Draft { role, kind, node: None, replacement: None, groups: Vec::new(), instances: Vec::new() }
    }
    fn node(self, node: NodeId) -> Draft {
        Draft { node: Some(node), ..self }
    }
    fn replacement(self, replacement: Option<NodeId>) -> Draft {
        Draft { replacement, ..self }
    }
    fn groups(self, groups: impl IntoIterator<Item = usize>) -> Draft {
        Draft { groups: groups.into_iter().collect(), ..self }
    }
    fn instances(self, instances: Vec<String>) -> Draft {
        Draft { instances, ..self }
    }
}

impl Ctx<'_> {
    /// Logs a step and keeps it for `--json`.
    fn step(&mut self, d: Draft, reason: String, error: Option<String>) {
        let dry = if self.dry_run { " (dry run)" } else { "" };
        let (role, kind) = (d.role, d.kind);
        match &error {
            None => tracing::info!(role, action = kind, "{reason}{dry}"),
            Some(e) => tracing::error!(role, action = kind, "{reason}{dry}: {e}"),
        }
        metrics::counter!("autopaxos_autoscaler_steps_total", "role" => role, "action" => kind).increment(1);
        self.steps.push(Step {
            interval: self.interval,
            at_secs: self.now.as_secs_f64(),
            dry_run: self.dry_run,
            role,
            action: StepKind { kind },
            node: d.node,
            replacement: d.replacement,
            groups: d.groups,
            instances: d.instances,
            reason,
            error,
        });
    }
}

/// Launches the replacement of `old` (or, in a dry run, only says it would).
fn start_replacement(
    healer: &mut Healer,
    ctx: &mut Ctx,
    old: NodeId,
    role: RoleKind,
    group: Option<usize>,
    reason: String,
) {
    let name = role.name();
    metrics::counter!("autopaxos_autoscaler_replacements_total", "role" => name, "outcome" => "started")
        .increment(1);
    if ctx.dry_run {
        // Nothing is launched, so nothing will be in force: start over, as if it were done.
        healer.replaced(old);
        ctx.step(Draft::new(name, "replace").node(old).groups(group), reason, None);
        return;
    }
    match ctx.fleet.launch(role, 1) {
        Ok(launched) => {
            let (instance, node) = match launched.first() {
                Some(i) => (i.id.clone(), i.node_ids.first().copied()),
                None => (String::new(), None),
            };
            match node {
                Some(node) => healer.launched(old, node, instance.clone()),
                None => tracing::warn!(old, "the fleet launched {instance} without saying its node id"),
            }
            let ids = launched.into_iter().map(|i| i.id).collect();
            let reason = format!("{reason}: launched node {}", node.map_or("?".into(), |n| n.to_string()));
            ctx.step(
                Draft::new(name, "replace").node(old).replacement(node).groups(group).instances(ids),
                reason,
                None,
            );
        }
        Err(e) => {
            error_metric("launch");
            metrics::counter!("autopaxos_autoscaler_replacements_total", "role" => name, "outcome" => "launch-failed")
                .increment(1);
            healer.launch_failed(ctx.now, old);
            ctx.step(Draft::new(name, "replace").node(old).groups(group), reason, Some(e.0));
        }
    }
}

/// Terminates what was launched for an abandoned replacement.
fn abandon(ctx: &mut Ctx, r: &Replacement, reason: String) {
    metrics::counter!("autopaxos_autoscaler_replacements_total", "role" => r.role, "outcome" => "abandoned")
        .increment(1);
    let ids: Vec<String> = r.instance.iter().cloned().collect();
    let error = if ids.is_empty() || ctx.dry_run {
        None
    } else {
        ctx.fleet.terminate(&ids).err().map(|e| {
            error_metric("terminate");
            e.0
        })
    };
    let d = Draft::new(r.role, "abandon").node(r.old).replacement(r.new_node).groups(r.group).instances(ids);
    ctx.step(d, reason, error);
}

/// Every node of `config`.
fn ids(config: &Configuration) -> Vec<NodeId> {
    config.members().map(|(n, _)| n).collect()
}

/// `config` with `new` in the place of `old` (in its group, or among the replicas or proposers).
pub fn swap(config: &Configuration, old: NodeId, new: NodeId) -> Result<Configuration, String> {
    let mut next = config.clone();
    let lists = next.acceptor_groups.iter_mut().chain([&mut next.replicas, &mut next.proposers]);
    let place = lists.flat_map(|list| list.iter_mut()).find(|n| **n == old);
    if let Some(place) = place {
        *place = new;
        return Ok(next);
    }
    Err(format!("node {old} is no longer in the configuration in force (epoch {})", config.epoch))
}

/// `config` without the groups that hold any of `members`.
fn without_groups(config: &Configuration, members: &[NodeId]) -> Result<Configuration, String> {
    let mut next = config.clone();
    next.acceptor_groups.retain(|g| !g.iter().any(|n| members.contains(n)));
    if next.acceptor_groups.len() == config.acceptor_groups.len() {
        return Err(format!("no group holds {members:?} any more (epoch {})", config.epoch));
    }
    Ok(next)
}

/// Phase2a messages per second over all `groups`: each group's is its fastest member's rate (every
/// member votes on every slot of its group; a slow or dead one counts less). `None` when no group
/// has a member measured in both rounds.
pub fn group_load(groups: &[Vec<NodeId>], prev: &Counters, cur: &Counters) -> Option<f64> {
    let mut total = None;
    for group in groups {
        let rates = group.iter().filter_map(|n| {
            let key = n.to_string();
            let (&(t0, v0), &(t1, v1)) = (prev.get(&key)?, cur.get(&key)?);
            let dt = t1.saturating_duration_since(t0).as_secs_f64();
            (dt > 0.0 && v1 >= v0).then(|| (v1 - v0) / dt)
        });
        if let Some(rate) = rates.fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r)))) {
            total = Some(total.unwrap_or(0.0) + rate);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::FleetError;
    use crate::protocol::configuration::InForce;
    use crate::protocol::messages::NodeStatus;
    use crate::protocol::Ballot;
    use crate::runtime::operator::NodeReport;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Instant;

    /// A cluster and its fleet in memory: the configuration in force, the nodes that do not answer,
    /// and the instances launched (whose nodes answer only if `launches_serve`).
    struct World {
        config: Configuration,
        down: BTreeSet<NodeId>,
        launched: Vec<Instance>,
        terminated: Vec<String>,
        launches_serve: bool,
        next_node: NodeId,
    }

    impl World {
        fn answers(&self, id: NodeId) -> bool {
            let launched = self.launched.iter().any(|i| i.node_ids.contains(&id));
            !self.down.contains(&id) && (!launched || self.launches_serve)
        }
    }

    struct FakeCluster(Rc<RefCell<World>>);
    struct FakeFleet(Rc<RefCell<World>>);

    impl ClusterOps for FakeCluster {
        fn status(&mut self, more: &[(NodeId, RoleKind, SocketAddr)]) -> ClusterStatus {
            let w = self.0.borrow();
            let in_force =
                InForce { config: w.config.clone(), from_slot: 0, chosen_at: None, ballot: Ballot::ZERO };
            let mut nodes: Vec<(NodeId, RoleKind)> = w.config.members().collect();
            nodes.extend(more.iter().map(|&(id, role, _)| (id, role)));
            let nodes = nodes
                .into_iter()
                .map(|(id, role)| {
                    let status = if w.answers(id) {
                        Ok(NodeStatus { configuration: Some(in_force.clone()), ..NodeStatus::basic(role) })
                    } else {
                        Err("connection refused".into())
                    };
                    NodeReport { id, role, addr: "127.0.0.1:1".parse().unwrap(), status }
                })
                .collect();
            ClusterStatus { cluster_id: "c".into(), nodes }
        }

        fn reconfigure(&mut self, change: Change) -> Result<Reconfigured, String> {
            let mut w = self.0.borrow_mut();
            let next = change(&w.config)?;
            let new = |id: NodeId| !w.config.members().any(|(n, _)| n == id);
            if let Some((id, _)) = next.members().find(|&(id, _)| new(id) && !w.answers(id)) {
                return Err(format!("node {id} has not joined"));
            }
            let epoch = w.config.epoch + 1;
            w.config = Configuration { epoch, ..next };
            Ok(Reconfigured {
                epoch,
                from_slot: 100 * epoch,
                took: Duration::ZERO,
                at_leader: Duration::ZERO,
            })
        }
    }

    impl Fleet for FakeFleet {
        fn instances(&mut self) -> Result<Vec<Instance>, FleetError> {
            let w = self.0.borrow();
            Ok(w.launched.iter().filter(|i| !w.terminated.contains(&i.id)).cloned().collect())
        }
        fn launch(&mut self, role: RoleKind, count: u32) -> Result<Vec<Instance>, FleetError> {
            let mut w = self.0.borrow_mut();
            let mut out = Vec::new();
            for _ in 0..count {
                let node = w.next_node;
                w.next_node += 1;
                out.push(Instance {
                    id: format!("i-{node}"),
                    role,
                    address: Some("127.0.0.1:1".parse().unwrap()),
                    metrics_address: None,
                    managed: true,
                    nodes: 1,
                    node_ids: vec![node],
                });
            }
            w.launched.extend(out.iter().cloned());
            Ok(out)
        }
        fn terminate(&mut self, ids: &[String]) -> Result<(), FleetError> {
            self.0.borrow_mut().terminated.extend(ids.iter().cloned());
            Ok(())
        }
    }

    fn world(down: &[NodeId]) -> Rc<RefCell<World>> {
        Rc::new(RefCell::new(World {
            config: config(),
            down: down.iter().copied().collect(),
            launched: Vec::new(),
            terminated: Vec::new(),
            launches_serve: true,
            next_node: 21,
        }))
    }

    fn heal() -> HealConfig {
        HealConfig {
            replace_after: Duration::from_secs(2),
            replacement_timeout: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(3),
            retry_backoff_max: Duration::from_secs(60),
        }
    }

    /// One interval at second `t`; returns its steps as (kind, node, replacement).
    fn tick(
        s: &mut Stateful,
        w: &Rc<RefCell<World>>,
        t: u64,
    ) -> Vec<(&'static str, Option<NodeId>, Option<NodeId>)> {
        let mut fleet = FakeFleet(w.clone());
        let instances = fleet.instances().unwrap();
        let tick = Tick {
            interval: t,
            now: Duration::from_secs(t),
            dry_run: false,
            instances: &instances,
            accepted: Counters::new(),
            fleet: &mut fleet,
            policy: None,
        };
        s.step(tick).0.into_iter().map(|st| (st.action.kind, st.node, st.replacement)).collect()
    }

    #[test]
    fn dead_nodes_are_replaced_through_the_fleet_one_per_group_at_a_time() {
        // Two acceptors of group 0 and one of group 1 dead: f = 1, so group 0 may lose only one
        // member to a replacement at a time.
        let w = world(&[3, 4, 12]);
        let mut s = Stateful::with_cluster(Box::new(FakeCluster(w.clone())), 1, Some(heal()));
        let mut all = Vec::new();
        for t in 0..12 {
            all.extend(tick(&mut s, &w, t));
            let per_group = |g| s.replacements().iter().filter(|r| r.group == Some(g)).count();
            assert!(per_group(0) <= 1 && per_group(1) <= 1, "at {t}: {:?}", s.replacements());
        }
        let launches: Vec<_> = all.iter().filter(|(k, ..)| *k == "replace").collect();
        assert_eq!(launches.len(), 3, "one launch per dead node: {all:?}");
        assert_eq!(w.borrow().config.acceptor_groups, vec![vec![21, 23, 5], vec![11, 22, 13]], "{all:?}");
        assert_eq!(w.borrow().config.epoch, 6);
        // The dead nodes were not on instances the fleet knows: nothing terminated.
        assert!(w.borrow().terminated.is_empty());
    }

    #[test]
    fn a_replacement_that_never_serves_is_terminated_and_retried_with_backoff() {
        let w = world(&[8]);
        w.borrow_mut().launches_serve = false;
        let mut s = Stateful::with_cluster(Box::new(FakeCluster(w.clone())), 1, Some(heal()));
        let mut all = Vec::new();
        for t in 0..=10 {
            all.extend(tick(&mut s, &w, t).into_iter().map(|st| (t, st)));
        }
        // Launched at 2, abandoned (and terminated) at 7, retried after 3 s at 10.
        let kinds: Vec<(u64, &str)> = all.iter().map(|(t, (k, ..))| (*t, *k)).collect();
        assert_eq!(kinds, vec![(2, "replace"), (7, "abandon"), (10, "replace")], "{all:?}");
        assert_eq!(w.borrow().terminated, vec!["i-21".to_string()]);
        // The second one serves: in, and 8 out.
        w.borrow_mut().launches_serve = true;
        assert_eq!(tick(&mut s, &w, 11), vec![("replaced", Some(8), Some(22))]);
        assert_eq!(w.borrow().config.replicas, vec![7, 22]);
    }

    #[test]
    fn a_flapping_node_is_replaced_once_and_an_answer_restarts_its_count() {
        let w = world(&[]);
        let mut s = Stateful::with_cluster(Box::new(FakeCluster(w.clone())), 1, Some(heal()));
        w.borrow_mut().launches_serve = false;
        let mut launches = 0;
        for t in 0..30 {
            // Down for two intervals, up for one: never 2 s without a break until t = 10, then down
            // for good from 10 to 20, then flapping again while its replacement is under way.
            let down = if (10..20).contains(&t) { true } else { t % 3 != 0 };
            let mut world = w.borrow_mut();
            if down {
                world.down.insert(4)
            } else {
                world.down.remove(&4)
            };
            world.launches_serve = t >= 14;
            drop(world);
            let steps = tick(&mut s, &w, t);
            launches += steps.iter().filter(|(k, ..)| *k == "replace").count();
            if t < 12 {
                assert!(steps.is_empty(), "at {t}: {steps:?}");
            }
        }
        assert_eq!(launches, 1);
        assert!(!w.borrow().config.members().any(|(n, _)| n == 4), "{:?}", w.borrow().config);
    }

    fn config() -> Configuration {
        Configuration {
            epoch: 3,
            acceptor_groups: vec![vec![3, 4, 5], vec![11, 12, 13]],
            replicas: vec![7, 8],
            proposers: vec![1, 2],
        }
    }

    #[test]
    fn swap_puts_the_new_node_in_the_dead_ones_place() {
        let c = config();
        assert_eq!(swap(&c, 12, 21).unwrap().acceptor_groups, vec![vec![3, 4, 5], vec![11, 21, 13]]);
        assert_eq!(swap(&c, 8, 21).unwrap().replicas, vec![7, 21]);
        assert_eq!(swap(&c, 1, 21).unwrap().proposers, vec![21, 2]);
        assert!(swap(&c, 99, 21).unwrap_err().contains("no longer in the configuration"));
        assert_eq!(without_groups(&c, &[11, 12, 13]).unwrap().acceptor_groups, vec![vec![3, 4, 5]]);
        assert!(without_groups(&c, &[99]).is_err());
    }

    #[test]
    fn group_load_sums_each_groups_fastest_member() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let prev: Counters =
            [("3".into(), (t0, 0.0)), ("4".into(), (t0, 0.0)), ("11".into(), (t0, 100.0))].into();
        let cur: Counters =
            [("3".into(), (t1, 400.0)), ("4".into(), (t1, 300.0)), ("11".into(), (t1, 300.0))].into();
        // Group 0: max(200, 150) = 200; group 1: 100.
        assert_eq!(group_load(&config().acceptor_groups, &prev, &cur), Some(300.0));
        assert_eq!(group_load(&config().acceptor_groups, &Counters::new(), &cur), None);
    }
}
