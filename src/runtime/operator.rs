//! The operator's commands against a running cluster: `status` asks every node how it stands (in
//! parallel, each with a short timeout, so a dead node shows as unreachable rather than stalling
//! the rest), and `reconfigure` asks the leader for a change of acceptor configuration and waits
//! until it is in force.

use super::admin::{converse, ConverseError};
use super::config::ClusterFile;
use crate::protocol::configuration::{validate_change, Configuration, InForce};
use crate::protocol::messages::{NodeState, NodeStatus};
use crate::protocol::{Ballot, Msg, NodeId, RoleKind, Slot};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An id no cluster node uses: the operator's connection is a client of the node it asks.
pub fn admin_id() -> NodeId {
    4_000_000_000 + std::process::id() % 100_000_000
}

/// One node as `status` found it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// Its id.
    pub id: NodeId,
    /// Its role, as the cluster file (or the proposer that saw it join) says.
    pub role: RoleKind,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its answer, or why there was none.
    pub status: Result<NodeStatus, String>,
}

/// The whole cluster as `status` found it.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// The cluster's id.
    pub cluster_id: String,
    /// Every node asked, by id.
    pub nodes: Vec<NodeReport>,
}

impl ClusterStatus {
    /// The newest acceptor configuration any proposer or replica knows.
    pub fn configuration(&self) -> Option<&InForce> {
        self.answers().filter_map(|(_, s)| s.configuration.as_ref()).max_by_key(|c| c.config.epoch)
    }

    /// The proposer that leads, with its ballot (the highest, should two think they lead).
    pub fn leader(&self) -> Option<(NodeId, Ballot)> {
        self.answers()
            .filter(|(_, s)| s.leading)
            .filter_map(|(id, s)| s.ballot.map(|b| (id, b)))
            .max_by_key(|&(_, b)| b)
    }

    /// Whether node `id` of `role` is a proposer, acceptor or replica that a change took out of
    /// the configuration (not one that joined and was never put in).
    pub fn removed(&self, id: NodeId, role: RoleKind) -> bool {
        let stateful = matches!(role, RoleKind::Acceptor | RoleKind::Replica | RoleKind::Proposer);
        let out = self.configuration().is_some_and(|c| !c.config.members().any(|(n, _)| n == id));
        stateful && out && self.answers().any(|(_, s)| s.removed.contains(&id))
    }

    /// The furthest watermark a replica reports, or a proposer heard one report: a replica that
    /// restarted far behind, with no peer up, lags the slots it executed before, not itself.
    fn furthest_executed(&self) -> Option<Slot> {
        let reports = |s: &&NodeStatus| matches!(s.role, RoleKind::Replica | RoleKind::Proposer);
        self.answers().map(|(_, s)| s).filter(reports).filter_map(|s| s.executed).max()
    }

    fn answers(&self) -> impl Iterator<Item = (NodeId, &NodeStatus)> + '_ {
        self.nodes.iter().filter_map(|n| n.status.as_ref().ok().map(|s| (n.id, s)))
    }

    /// A node's state as the table shows it.
    fn state(&self, node: &NodeReport) -> &'static str {
        match &node.status {
            Err(_) if self.removed(node.id, node.role) => "removed",
            Err(_) => "unreachable",
            Ok(s) => match s.state {
                NodeState::Up => "up",
                NodeState::Joining => "joining",
                NodeState::Leaving => "leaving",
                NodeState::Learning => "learning",
            },
        }
    }

    /// How far a replica is behind the furthest watermark known.
    fn lag(&self, status: &NodeStatus) -> Option<Slot> {
        let executed = status.executed.filter(|_| status.role == RoleKind::Replica)?;
        Some(self.furthest_executed()?.saturating_sub(executed))
    }

    /// The report as text: the configuration in force, the leader, then one line per node.
    pub fn render(&self) -> String {
        let mut out = format!("cluster {}\n", self.cluster_id);
        match self.configuration() {
            Some(c) => {
                let groups: Vec<String> = c
                    .config
                    .acceptor_groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| format!("group {i} {g:?}"))
                    .collect();
                out += &format!(
                    "configuration: epoch {} (from slot {}): {}; replicas {:?}; proposers {:?}\n",
                    c.config.epoch,
                    c.from_slot,
                    groups.join(", "),
                    c.config.replicas,
                    c.config.proposers
                );
            }
            None => out += "configuration: unknown (no proposer or replica answered)\n",
        }
        match self.leader() {
            Some((id, ballot)) => out += &format!("leader: node {id}, ballot {ballot}\n"),
            None => out += "leader: none\n",
        }
        out += &format!(
            "{:>6}  {:<12}  {:<21}  {:<11}  {:>10}  {:>6}  digest\n",
            "node", "role", "address", "state", "executed", "lag"
        );
        for n in &self.nodes {
            let (executed, lag, digest) = match &n.status {
                Ok(s) => (
                    s.executed.map_or("-".into(), |e| e.to_string()),
                    self.lag(s).map_or("-".into(), |l| l.to_string()),
                    s.digest.map_or("-".into(), |(at, d)| format!("{d:016x} @{at}")),
                ),
                Err(_) => ("-".into(), "-".into(), "-".into()),
            };
            let leads = matches!(&n.status, Ok(s) if s.leading);
            let state = format!("{}{}", self.state(n), if leads { " leader" } else { "" });
            out += &format!(
                "{:>6}  {:<12}  {:<21}  {:<11}  {:>10}  {:>6}  {digest}\n",
                n.id,
                n.role.name(),
                n.addr,
                state,
                executed,
                lag
            );
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::json!({
                    "node": n.id,
                    "role": n.role.name(),
                    "address": n.addr.to_string(),
                    "state": self.state(n),
                });
                match &n.status {
                    Ok(s) => {
                        v["leading"] = s.leading.into();
                        if let Some(b) = s.ballot {
                            v["ballot"] = b.to_string().into();
                        }
                        if let Some(e) = s.executed {
                            v["executed"] = e.into();
                        }
                        if let Some(l) = self.lag(s) {
                            v["lag"] = l.into();
                        }
                        if let Some((at, d)) = s.digest {
                            v["digest"] = format!("{d:016x}").into();
                            v["digest_at"] = at.into();
                        }
                        if let Some(c) = &s.configuration {
                            v["epoch"] = c.config.epoch.into();
                        }
                    }
                    Err(why) => v["error"] = why.clone().into(),
                }
                v
            })
            .collect();
        serde_json::json!({
            "cluster": self.cluster_id,
            "configuration": self.configuration().map(|c| serde_json::json!({
                "epoch": c.config.epoch,
                "from_slot": c.from_slot,
                "acceptor_groups": c.config.acceptor_groups,
                "replicas": c.config.replicas,
                "proposers": c.config.proposers,
            })),
            "leader": self.leader().map(|(id, b)| serde_json::json!({"node": id, "ballot": b.to_string()})),
            "nodes": nodes,
        })
    }
}

/// Asks one node how it stands.
pub fn node_status(file: &ClusterFile, addr: SocketAddr, timeout: Duration) -> Result<NodeStatus, String> {
    let answer = |m| match m {
        Msg::Status(s) => Some(s),
        _ => None,
    };
    converse(&file.cluster_id, file.secret()?, addr, admin_id(), &Msg::StatusRequest, timeout, answer)
        .map_err(|e| e.to_string())
}

/// Asks every node of the file, then every node the proposers saw join, how it stands.
pub fn gather(file: &ClusterFile, timeout: Duration) -> ClusterStatus {
    gather_with(file, &[], timeout)
}

/// [`gather`], also asking `more` nodes (known from elsewhere, such as the autoscaler's fleet) that
/// neither the file nor the proposers name.
pub fn gather_with(
    file: &ClusterFile,
    more: &[(NodeId, RoleKind, SocketAddr)],
    timeout: Duration,
) -> ClusterStatus {
    let configured: Vec<(NodeId, RoleKind, SocketAddr)> = file
        .config
        .all_nodes()
        .filter_map(|(id, role)| file.addresses.get(&id).map(|&addr| (id, role, addr)))
        .collect();
    let mut nodes = ask_all(file, &configured, timeout);
    let mut joined: Vec<(NodeId, RoleKind, SocketAddr)> = Vec::new();
    for n in &nodes {
        for (id, role, addr) in n.status.iter().flat_map(|s| s.joined.iter()) {
            let known = nodes.iter().any(|k| k.id == *id) || joined.iter().any(|j| j.0 == *id);
            if let (false, Ok(addr)) = (known, addr.parse::<SocketAddr>()) {
                joined.push((*id, *role, addr));
            }
        }
    }
    for &(id, role, addr) in more {
        if !nodes.iter().any(|k| k.id == id) && !joined.iter().any(|j| j.0 == id) {
            joined.push((id, role, addr));
        }
    }
    nodes.extend(ask_all(file, &joined, timeout));
    nodes.sort_by_key(|n| n.id);
    ClusterStatus { cluster_id: file.cluster_id.clone(), nodes }
}

fn ask_all(
    file: &ClusterFile,
    nodes: &[(NodeId, RoleKind, SocketAddr)],
    timeout: Duration,
) -> Vec<NodeReport> {
    std::thread::scope(|scope| {
        let asks: Vec<_> = nodes
            .iter()
            .map(|&(id, role, addr)| {
                let ask = scope.spawn(move || node_status(file, addr, timeout));
                (id, role, addr, ask)
            })
            .collect();
        asks.into_iter()
            .map(|(id, role, addr, ask)| {
                let status = ask.join().unwrap_or_else(|_| Err("the query panicked".into()));
                NodeReport { id, role, addr, status }
            })
            .collect()
    })
}

/// A proposer's answer to a change of configuration.
enum Answer {
    /// In force from this slot, this long after the leader took the request.
    InForce(Slot, Duration),
    /// Refused, and why.
    Refused(String),
    /// Not the leader; maybe it knows who is.
    NotLeader(Option<NodeId>),
}

/// What a change of configuration came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconfigured {
    /// The epoch now in force.
    pub epoch: u64,
    /// The first slot it owns.
    pub from_slot: Slot,
    /// From asking to in force.
    pub took: Duration,
    /// From the leader taking the request to in force (the change itself, without the status
    /// round that reads the configuration first, or connecting to the leader).
    pub at_leader: Duration,
}

/// Makes the acceptor groups, replicas and proposers those of `to` (its epoch is ignored): reads
/// the configuration in force, checks the change against it (saying which rule a bad one breaks),
/// asks the leader to propose it (following `NotLeader` hints), and waits until the leader says it
/// is in force. New nodes must have joined (`--join`) first.
pub fn reconfigure(file: &ClusterFile, to: Configuration, timeout: Duration) -> Result<Reconfigured, String> {
    reconfigure_by(file, &|_| Ok(to.clone()), timeout)
}

/// [`reconfigure`] to what `change` makes of the configuration in force, read just before the
/// change is asked for (so that a change computed from a stale reading cannot undo another).
pub fn reconfigure_by(
    file: &ClusterFile,
    change: &dyn Fn(&Configuration) -> Result<Configuration, String>,
    timeout: Duration,
) -> Result<Reconfigured, String> {
    let started = Instant::now();
    let status = gather(file, Duration::from_secs(2));
    let current = status
        .configuration()
        .ok_or("no proposer or replica answered: cannot tell the configuration in force")?
        .config
        .clone();
    let target = Configuration { epoch: current.epoch + 1, ..change(&current)? };
    let roles = |c: &Configuration| (c.acceptor_groups.clone(), c.replicas.clone(), c.proposers.clone());
    if roles(&current) == roles(&target) {
        return Err(format!(
            "epoch {}: those acceptor groups, replicas and proposers are already in force (reconfigure \
             changes who is a member, never a member's address: to move a node, replace it by a new one)",
            current.epoch
        ));
    }
    validate_change(&current, &target, file.config.f).map_err(|e| format!("refused: {e}"))?;
    added_nodes_answer(&status, &current, &target)?;
    // The proposers in force (some may have joined since the cluster file was written), where
    // the status found them.
    let proposers: Vec<NodeId> = current.proposers.clone();
    let address = |id: NodeId| {
        status.nodes.iter().find(|n| n.id == id).map(|n| n.addr).or_else(|| file.addresses.get(&id).copied())
    };
    let mut next = status.leader().map(|(id, _)| id).unwrap_or(proposers[0]);
    let mut last_error = String::from("no proposer answered");
    while started.elapsed() < timeout {
        let Some(addr) = address(next) else {
            return Err(format!("proposer {next}: no address in the cluster file or the status"));
        };
        let wait = timeout.saturating_sub(started.elapsed()).min(Duration::from_secs(10));
        let answer = |m| match m {
            Msg::Reconfigured { epoch, from_slot, leader_us } if epoch == target.epoch => {
                Some(Answer::InForce(from_slot, Duration::from_micros(leader_us)))
            }
            Msg::ReconfigureRefused { reason, .. } => Some(Answer::Refused(reason)),
            Msg::NotLeader { leader_hint } => Some(Answer::NotLeader(leader_hint)),
            _ => None,
        };
        match converse(
            &file.cluster_id,
            file.secret()?,
            addr,
            admin_id(),
            &Msg::Reconfigure(target.clone()),
            wait,
            answer,
        ) {
            Ok(Answer::InForce(from_slot, at_leader)) => {
                return Ok(Reconfigured {
                    epoch: target.epoch,
                    from_slot,
                    took: started.elapsed(),
                    at_leader,
                })
            }
            Ok(Answer::Refused(reason)) => return Err(format!("refused by proposer {next}: {reason}")),
            Ok(Answer::NotLeader(hint)) => {
                last_error = format!("proposer {next} does not lead");
                next = match hint {
                    Some(leader) if leader != next => leader,
                    _ => {
                        std::thread::sleep(Duration::from_millis(200));
                        let i = proposers.iter().position(|&p| p == next).unwrap_or(0);
                        proposers[(i + 1) % proposers.len()]
                    }
                };
            }
            Err(ConverseError::TimedOut) => last_error = format!("proposer {next} did not answer in time"),
            Err(e) => {
                last_error = format!("proposer {next}: {e}");
                let i = proposers.iter().position(|&p| p == next).unwrap_or(0);
                next = proposers[(i + 1) % proposers.len()];
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Err(format!(
        "the change to epoch {} was not in force after {} ({last_error}); if the leader took it, it \
         may still come into force: run `status` before asking again",
        target.epoch,
        humantime::format_duration(timeout)
    ))
}

/// Refuses a change that puts in a node the status round did not hear from: a new acceptor group
/// more than f of whose members are down would stop the log at its first slot, and a change to take
/// it out again would need that very slot.
fn added_nodes_answer(
    status: &ClusterStatus,
    current: &Configuration,
    target: &Configuration,
) -> Result<(), String> {
    let added = target.members().filter(|&(id, _)| !current.members().any(|(m, _)| m == id));
    for (id, role) in added {
        match status.nodes.iter().find(|n| n.id == id).map(|n| &n.status) {
            Some(Ok(_)) => {}
            Some(Err(why)) => {
                return Err(format!(
                    "refused: {} {id}, which this change puts in, does not answer ({why}): start it \
                     (with --join) and run reconfigure again",
                    role.name()
                ))
            }
            None => {
                return Err(format!(
                    "refused: {} {id}, which this change puts in, is unknown to the cluster: start it \
                     with --join first",
                    role.name()
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch `epoch` with one acceptor group, replicas 7 and 8, proposers 1 and 2.
    fn configuration(epoch: u64, group: Vec<NodeId>) -> Configuration {
        Configuration { epoch, acceptor_groups: vec![group], replicas: vec![7, 8], proposers: vec![1, 2] }
    }

    fn cluster(nodes: Vec<NodeReport>) -> ClusterStatus {
        ClusterStatus { cluster_id: "c".into(), nodes }
    }

    fn unreachable(report: NodeReport) -> NodeReport {
        NodeReport { status: Err("connection refused".into()), ..report }
    }

    fn report(id: NodeId, role: RoleKind, executed: Option<Slot>) -> NodeReport {
        let status = NodeStatus { executed, ..NodeStatus::basic(role) };
        NodeReport { id, role, addr: "127.0.0.1:1".parse().unwrap(), status: Ok(status) }
    }

    #[test]
    fn a_replica_alone_and_far_behind_lags_what_the_proposers_heard_executed() {
        let mut status = cluster(vec![
            report(1, RoleKind::Proposer, Some(40_540)),
            report(7, RoleKind::Replica, Some(0)),
            unreachable(report(8, RoleKind::Replica, None)),
        ]);
        let lag = |s: &ClusterStatus, i: usize| s.lag(s.nodes[i].status.as_ref().unwrap());
        assert_eq!(lag(&status, 1), Some(40_540));
        assert!(status.render().lines().any(|l| l.contains("replica") && l.contains(" 40540 ")));
        assert_eq!(lag(&status, 0), None, "a proposer has no lag of its own");
        // With the other replica back and caught up, the lag is the distance between them.
        status.nodes[2] = report(8, RoleKind::Replica, Some(41_000));
        assert_eq!(lag(&status, 1), Some(41_000));
        assert_eq!(lag(&status, 2), Some(0));
    }

    #[test]
    fn a_change_that_puts_in_a_node_that_does_not_answer_is_refused() {
        let current = configuration(3, vec![3, 4, 5]);
        let target = Configuration {
            epoch: 4,
            acceptor_groups: vec![vec![3, 4, 5], vec![44, 45, 46]],
            ..current.clone()
        };
        let acceptor = |id| report(id, RoleKind::Acceptor, None);
        let mut status = cluster(vec![acceptor(44), unreachable(acceptor(45)), acceptor(46)]);
        let refused = added_nodes_answer(&status, &current, &target).unwrap_err();
        assert!(
            refused.contains("acceptor 45, which this change puts in, does not answer (connection refused)")
        );
        status.nodes.remove(1);
        let refused = added_nodes_answer(&status, &current, &target).unwrap_err();
        assert!(refused.contains("acceptor 45, which this change puts in, is unknown"), "{refused}");
        status.nodes.push(acceptor(45));
        assert_eq!(added_nodes_answer(&status, &current, &target), Ok(()));
        // Nodes that stay need not answer: a change may be what replaces a dead one.
        let replace = Configuration { epoch: 4, replicas: vec![7, 9], ..current.clone() };
        let status = cluster(vec![report(9, RoleKind::Replica, Some(0))]);
        assert_eq!(added_nodes_answer(&status, &current, &replace), Ok(()));
    }

    #[test]
    fn a_node_is_shown_removed_only_if_a_change_took_it_out() {
        let config = configuration(2, vec![31, 4, 5]);
        let mut replica = report(7, RoleKind::Replica, Some(10));
        if let Ok(s) = &mut replica.status {
            s.configuration =
                Some(InForce { config, from_slot: 9, chosen_at: Some(3), ballot: Ballot::ZERO });
            s.removed = vec![3];
        }
        let down = |id| unreachable(report(id, RoleKind::Acceptor, None));
        let status = cluster(vec![replica, down(3), down(44), down(31)]);
        assert_eq!(status.state(&status.nodes[1]), "removed", "a change took 3 out");
        assert_eq!(status.state(&status.nodes[2]), "unreachable", "44 joined and was never put in");
        assert_eq!(status.state(&status.nodes[3]), "unreachable", "31 is a member");
    }
}
