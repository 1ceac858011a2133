//! `autopaxos plan`: how many nodes and instances of each role a target load needs, from the per-role
//! capacities `tune` measured. [`plan`] is a pure function of the capacities and the request (no I/O,
//! no clock) so the sizing arithmetic is unit-tested; the CLI only parses, loads the file with
//! [`load_capacities`], calls it and prints [`Plan::render`] or the JSON.
//!
//! The model, per role, with `usable = cmds_per_sec_per_core × (1 − headroom)` (one node is one core):
//! - batcher, proxy leader, unbatcher scale out: nodes = max(1, ⌈target / usable⌉);
//! - acceptors scale out by groups: G = max(1, ⌈target / usable⌉) groups of 2f+1, because every
//!   acceptor of a slot's group votes on that slot, so a group carries what one acceptor can;
//! - the proposer (one leader orders every batch) and the replica (every replica executes every
//!   command) do not scale out: f+1 nodes whatever the load, and if one node cannot carry the target
//!   no cluster can, so the plan says the target is unreachable and what the most is;
//! - gateways (the RESP front door) scale out like batchers, when the capacities have a
//!   `[roles.gateway]` (from `autopaxos bench gateway`); without one they are not sized, and a note
//!   says so (clients of the native protocol need none).

use super::capacities::Capacities;
use crate::protocol::RoleKind;
use crate::runtime::local::thousands;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The roles a plan sizes, in the order a batch travels through them: the roles `bench` measures.
pub const PLAN_ROLES: [RoleKind; 6] = super::BENCH_ROLES;

/// EC2 instance types a plan can pack nodes onto, with their vCPUs (one node per vCPU).
pub const INSTANCE_TYPES: [(&str, u64); 8] = [
    ("c5.large", 2),
    ("c5.xlarge", 4),
    ("c5.2xlarge", 8),
    ("c5.4xlarge", 16),
    ("c5.9xlarge", 36),
    ("c5.12xlarge", 48),
    ("c5.18xlarge", 72),
    ("c5.24xlarge", 96),
];

/// Relative slack when rounding node counts up: `1 − headroom` is inexact in binary, and a plan must
/// not add a node because 1,000,000 / 200,000 came out as 5.000000000001.
const ROUNDING_SLACK: f64 = 1e-9;

/// A request the plan cannot be made for, or a capacities file it cannot use. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The headroom is outside [0, 1) (at 1 no capacity would be usable).
    #[error("--headroom must be at least 0 and below 1 (got {0})")]
    Headroom(f64),
    /// A target of zero commands per second needs no plan.
    #[error("--target-cmds must be at least 1 command per second")]
    ZeroTarget,
    /// `f` must be at least 1 for the cluster to tolerate any failure.
    #[error("--f must be at least 1 (got {0})")]
    FTooSmall(usize),
    /// The instance type is not in [`INSTANCE_TYPES`].
    #[error("unknown instance type '{given}'; known types: {known}")]
    UnknownInstanceType {
        /// What was asked for.
        given: String,
        /// The known types, comma-separated.
        known: String,
    },
    /// The capacities have no entry for a role the plan needs.
    #[error(
        "{file}: no capacity for role '{role}' (expected a [roles.{role}] table; roles present: {present}); \
         re-measure with `autopaxos tune all`"
    )]
    MissingRole {
        /// The role's name (`RoleKind::name`).
        role: &'static str,
        /// Where the capacities came from.
        file: String,
        /// The role names the file does have, comma-separated.
        present: String,
    },
    /// A role's capacity is zero, negative or not a number.
    #[error("{file}: roles.{role}.cmds_per_sec_per_core must be a positive number (got {value})")]
    BadCapacity {
        /// The role's name.
        role: &'static str,
        /// Where the capacities came from.
        file: String,
        /// The value found.
        value: f64,
    },
    /// The capacities file could not be read.
    #[error("cannot read capacities file {file}: {source} (write one with `autopaxos tune all`)")]
    Read {
        /// The path given.
        file: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The capacities file is not valid TOML or lacks a field; toml's message names the line and field.
    #[error("capacities file {file} is malformed: {message}")]
    Malformed {
        /// The path given.
        file: String,
        /// The parser's message (line, column, the field).
        message: String,
    },
}

/// What to plan for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// Commands per second the cluster must sustain.
    pub target_cmds: u64,
    /// Fraction of each node's measured capacity kept spare, in [0, 1).
    pub headroom: f64,
    /// The EC2 instance type nodes are packed onto (see [`INSTANCE_TYPES`]).
    pub instance_type: String,
    /// Failures tolerated.
    pub f: usize,
    /// Where the capacities came from; only used to name the file in errors and in the output.
    pub capacities_file: String,
}

/// One role's share of the plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolePlan {
    /// The role's name (`RoleKind::name`).
    pub role: String,
    /// Nodes (one core each), after the fault-tolerance minimum.
    pub nodes: u64,
    /// Instances for those nodes; roles do not share an instance.
    pub instances: u64,
    /// Usable commands per second of one node: measured per core × (1 − headroom).
    pub cmds_per_sec_per_node: f64,
    /// Target over the capacity of the nodes that share the load (all of them for roles that scale
    /// out, one per acceptor group, one for the proposer and the replica); above 1 the role cannot
    /// carry the target.
    pub utilisation: f64,
    /// The fewest nodes fault tolerance allows, whatever the load.
    pub minimum_nodes: u64,
    /// Whether adding nodes adds capacity (false for the proposer and the replica).
    pub scales_out: bool,
}

/// A sized cluster. `--json` prints it as one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// Commands per second asked for.
    pub target_cmds: u64,
    /// Fraction of measured capacity kept spare.
    pub headroom: f64,
    /// The instance type nodes are packed onto.
    pub instance_type: String,
    /// vCPUs (so nodes) per instance.
    pub vcpus_per_instance: u64,
    /// Failures tolerated.
    pub f: usize,
    /// Each role, in the order a batch travels through them.
    pub roles: Vec<RolePlan>,
    /// Acceptor groups of 2f+1.
    pub acceptor_groups: u64,
    /// The role with the highest utilisation, or, if the target is unreachable, the role that limits it.
    pub bottleneck: String,
    /// Whether any cluster can carry the target (the proposer and the replica cannot scale out).
    pub reachable: bool,
    /// The most any cluster can carry: the lowest usable capacity of the roles that do not scale out.
    pub max_cmds_per_sec: f64,
    /// Instances over all roles.
    pub total_instances: u64,
    /// Where the capacities came from.
    pub capacities_file: String,
    /// Caveats the numbers depend on (e.g. roles measured at different batch sizes).
    pub notes: Vec<String>,
}

/// How one role's load spreads, which decides its node count and its minimum.
enum Scaling {
    /// Each node carries its share: batchers, proxy leaders, unbatchers.
    Out,
    /// Each group of 2f+1 carries its share; every member sees all of its group's slots.
    Groups,
    /// Every node sees every command (replicas) or one node does all the work (the leader).
    Fixed,
}

fn scaling(role: RoleKind) -> Scaling {
    match role {
        RoleKind::Acceptor => Scaling::Groups,
        RoleKind::Proposer | RoleKind::Replica => Scaling::Fixed,
        _ => Scaling::Out,
    }
}

/// The vCPUs of `instance_type`, or an error listing the known types.
pub fn vcpus(instance_type: &str) -> Result<u64, PlanError> {
    INSTANCE_TYPES.iter().find(|(name, _)| *name == instance_type).map(|&(_, v)| v).ok_or_else(|| {
        PlanError::UnknownInstanceType {
            given: instance_type.to_string(),
            known: INSTANCE_TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }
    })
}

/// Reads and parses a capacities file, naming the file (and, through toml, the field) on failure.
/// Role entries are checked by [`plan`], which knows which roles it needs.
pub fn load_capacities(path: &Path) -> Result<Capacities, PlanError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| PlanError::Read { file: file.clone(), source })?;
    toml::from_str(&text)
        .map_err(|e| PlanError::Malformed { file, message: e.to_string().trim().to_string() })
}

/// ⌈target / usable⌉, at least 1, without adding a unit for floating-point noise.
fn units_for(target: u64, usable: f64) -> u64 {
    let ratio = target as f64 / usable;
    ((ratio * (1.0 - ROUNDING_SLACK)).ceil() as u64).max(1)
}

/// Sizes a cluster for `req` from `caps`. Pure: the same inputs give the same plan.
pub fn plan(caps: &Capacities, req: &PlanRequest) -> Result<Plan, PlanError> {
    if !(0.0..1.0).contains(&req.headroom) {
        return Err(PlanError::Headroom(req.headroom));
    }
    if req.target_cmds == 0 {
        return Err(PlanError::ZeroTarget);
    }
    if req.f == 0 {
        return Err(PlanError::FTooSmall(req.f));
    }
    let vcpus = vcpus(&req.instance_type)?;
    let f = req.f as u64;
    let target = req.target_cmds;
    let mut roles = Vec::with_capacity(PLAN_ROLES.len());
    let mut acceptor_groups = 1;
    // The ceiling no number of nodes lifts, and which role sets it.
    let mut ceiling: Option<(f64, RoleKind)> = None;
    // The gateway first: a command from a RESP client meets it before the batcher.
    let gateway = caps.roles.contains_key(RoleKind::Gateway.name()).then_some(RoleKind::Gateway);
    for role in gateway.into_iter().chain(PLAN_ROLES) {
        let name = role.name();
        let cap = caps.role(role, &req.capacities_file)?;
        let measured = cap.cmds_per_sec_per_core;
        if !(measured.is_finite() && measured > 0.0) {
            return Err(PlanError::BadCapacity {
                role: name,
                file: req.capacities_file.clone(),
                value: measured,
            });
        }
        let usable = measured * (1.0 - req.headroom);
        // `sharing`: how many nodes' capacity the load is spread over.
        let (nodes, sharing, minimum, scales_out) = match scaling(role) {
            Scaling::Out => {
                let n = units_for(target, usable);
                (n, n, 1, true)
            }
            Scaling::Groups => {
                acceptor_groups = units_for(target, usable);
                (acceptor_groups * (2 * f + 1), acceptor_groups, 2 * f + 1, true)
            }
            Scaling::Fixed => {
                if ceiling.is_none_or(|(c, _)| usable < c) {
                    ceiling = Some((usable, role));
                }
                (f + 1, 1, f + 1, false)
            }
        };
        // Fault tolerance holds whatever the load asked for; applied last so it can only add nodes.
        let nodes = nodes.max(minimum);
        roles.push(RolePlan {
            role: name.to_string(),
            nodes,
            instances: nodes.div_ceil(vcpus),
            cmds_per_sec_per_node: usable,
            utilisation: target as f64 / (sharing as f64 * usable),
            minimum_nodes: minimum,
            scales_out,
        });
    }
    let (max_cmds_per_sec, limiting) = ceiling.expect("PLAN_ROLES includes roles that do not scale out");
    // Same slack as the node counts: a target equal to the ceiling is reachable.
    let reachable = target as f64 <= max_cmds_per_sec * (1.0 + ROUNDING_SLACK);
    let bottleneck = if reachable {
        // The first role of the highest utilisation (in batch order, so ties are stable).
        let mut top = &roles[0];
        for r in &roles[1..] {
            if r.utilisation > top.utilisation {
                top = r;
            }
        }
        top.role.clone()
    } else {
        limiting.name().to_string()
    };
    let total_instances = roles.iter().map(|r| r.instances).sum();
    let mut notes = Vec::new();
    if gateway.is_none() {
        notes.push(format!(
            "gateways not sized: {} has no [roles.gateway] (measure one with `autopaxos bench gateway`)",
            req.capacities_file
        ));
    }
    let batch_sizes: std::collections::BTreeSet<usize> =
        PLAN_ROLES.iter().filter_map(|r| caps.roles.get(r.name())).map(|c| c.batch_size).collect();
    if batch_sizes.len() > 1 {
        notes.push(format!(
            "roles were measured at different batch sizes ({}); per-command capacities assume each role sees \
             batches of its own recommended size",
            batch_sizes.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    for r in &roles {
        // Packing by vCPU can put every node a role needs for fault tolerance on one instance.
        if r.minimum_nodes > 1 && r.instances < r.minimum_nodes {
            notes.push(format!(
                "{}: {} nodes packed on {} instance{} fail together; to survive {f} instance failure{}, spread \
                 them over at least {} instances",
                r.role,
                r.nodes,
                r.instances,
                plural(r.instances),
                plural(f),
                r.minimum_nodes.min(r.nodes),
            ));
        }
    }
    Ok(Plan {
        target_cmds: target,
        headroom: req.headroom,
        instance_type: req.instance_type.clone(),
        vcpus_per_instance: vcpus,
        f: req.f,
        roles,
        acceptor_groups,
        bottleneck,
        reachable,
        max_cmds_per_sec,
        total_instances,
        capacities_file: req.capacities_file.clone(),
        notes,
    })
}

impl Plan {
    /// The human-readable plan: a header, one row per role (the bottleneck marked), a total and a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let f = self.f;
        let _ = writeln!(
            out,
            "plan for {} cmds/s, f={f}, headroom {:.0}%, {} ({} vCPUs: one node per vCPU; roles are not mixed on an \
             instance)",
            thousands(self.target_cmds),
            self.headroom * 100.0,
            self.instance_type,
            self.vcpus_per_instance,
        );
        let _ = writeln!(out, "capacities from {}", self.capacities_file);
        let _ = writeln!(
            out,
            "\n  {:<14} {:>6} {:>9} {:>13} {:>11}  minimum",
            "role", "nodes", "instances", "usable/node", "utilisation"
        );
        for r in &self.roles {
            let minimum = match r.role.as_str() {
                "proposer" | "replica" => format!("{} (f+1)", r.minimum_nodes),
                "acceptor" => format!("{} (2f+1 per group)", r.minimum_nodes),
                _ => "1".to_string(),
            };
            let _ = writeln!(
                out,
                "{} {:<14} {:>6} {:>9} {:>13} {:>10.1}%  {}",
                if r.role == self.bottleneck { "*" } else { " " },
                r.role,
                r.nodes,
                r.instances,
                thousands(r.cmds_per_sec_per_node.round() as u64),
                r.utilisation * 100.0,
                minimum,
            );
        }
        let nodes: u64 = self.roles.iter().map(|r| r.nodes).sum();
        let _ = writeln!(out, "  {:<14} {:>6} {:>9}", "total", nodes, self.total_instances);
        let _ = writeln!(
            out,
            "\nacceptors: {} group{} of {} (2f+1); slot s goes to group s mod {}",
            self.acceptor_groups,
            plural(self.acceptor_groups),
            2 * f + 1,
            self.acceptor_groups,
        );
        let _ = writeln!(out, "(* bottleneck; utilisation is of usable capacity, measured × (1 − headroom))");
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let why = |role: &str| match role {
            "proposer" => "one leader orders every batch",
            "replica" => "every replica executes every command",
            _ => "",
        };
        let limiting = self
            .roles
            .iter()
            .filter(|r| !r.scales_out)
            .min_by(|a, b| a.cmds_per_sec_per_node.total_cmp(&b.cmds_per_sec_per_node))
            .map_or("", |r| r.role.as_str());
        if self.reachable {
            let util = self.roles.iter().find(|r| r.role == self.bottleneck).map_or(0.0, |r| r.utilisation);
            let _ = write!(
                out,
                "reachable: {} cmds/s on {} instances; bottleneck {} at {:.1}% of usable capacity; no cluster \
                 exceeds {} cmds/s ({}: {})",
                thousands(self.target_cmds),
                self.total_instances,
                self.bottleneck,
                util * 100.0,
                thousands(self.max_cmds_per_sec.round() as u64),
                limiting,
                why(limiting),
            );
        } else {
            // The other role that does not scale out may be over capacity too; name it, since
            // fixing only the bottleneck would not make the target reachable.
            let also: Vec<&str> = self
                .roles
                .iter()
                .filter(|r| !r.scales_out && r.role != self.bottleneck && r.utilisation > 1.0)
                .map(|r| r.role.as_str())
                .collect();
            let _ = write!(
                out,
                "NOT reachable: {} cmds/s is more than one {} can carry ({}){}; adding nodes does not help. The \
                 maximum is {} cmds/s at {:.0}% headroom",
                thousands(self.target_cmds),
                self.bottleneck,
                why(&self.bottleneck),
                if also.is_empty() {
                    String::new()
                } else {
                    format!(", and more than one {} can carry too", also.join(" or "))
                },
                thousands(self.max_cmds_per_sec.round() as u64),
                self.headroom * 100.0,
            );
        }
        out
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::capacities::{Machine, RoleCapacity};

    /// Capacities with `cmds_per_sec_per_core` per role, in `PLAN_ROLES` order.
    fn caps(per_core: [f64; 6]) -> Capacities {
        let roles = PLAN_ROLES
            .iter()
            .zip(per_core)
            .map(|(r, c)| {
                let cap = RoleCapacity {
                    cmds_per_sec_per_core: c,
                    msgs_per_sec_per_core: c / 100.0,
                    batch_size: 100,
                    read_budget: 100,
                };
                (r.name().to_string(), cap)
            })
            .collect();
        let machine =
            Machine { cores: 4, cpu: "test".into(), kernel: "test".into(), measured: "2026-01-01".into() };
        Capacities { machine, roles }
    }

    fn req(target: u64, headroom: f64, instance_type: &str, f: usize) -> PlanRequest {
        PlanRequest {
            target_cmds: target,
            headroom,
            instance_type: instance_type.into(),
            f,
            capacities_file: "hand-built".into(),
        }
    }

    fn role<'a>(p: &'a Plan, name: &str) -> &'a RolePlan {
        p.roles.iter().find(|r| r.role == name).expect("every role is planned")
    }

    /// (nodes, instances) per role, in `PLAN_ROLES` order.
    fn shape(p: &Plan) -> Vec<(u64, u64)> {
        p.roles.iter().map(|r| (r.nodes, r.instances)).collect()
    }

    #[test]
    fn known_answers_computed_by_hand() {
        // batcher 500k, proposer 2M, proxy-leader 300k, acceptor 400k, replica 1.5M, unbatcher 800k per core;
        // target 1M, headroom 0.2 (usable = 0.8 × measured), f=1, c5.xlarge (4 vCPUs):
        //   batcher      usable 400k   nodes ⌈1M/400k⌉ = ⌈2.5⌉ = 3       instances ⌈3/4⌉ = 1   util 1M/1.2M = 0.8333
        //   proposer     usable 1.6M   nodes f+1 = 2 (fixed)              instances 1           util 1M/1.6M = 0.625
        //   proxy-leader usable 240k   nodes ⌈1M/240k⌉ = ⌈4.17⌉ = 5      instances ⌈5/4⌉ = 2   util 1M/1.2M = 0.8333
        //   acceptor     usable 320k   G = ⌈1M/320k⌉ = ⌈3.125⌉ = 4 groups, nodes 4 × 3 = 12
        //                                                                  instances 3           util 1M/1.28M = 0.78125
        //   replica      usable 1.2M   nodes f+1 = 2 (fixed)              instances 1           util 1M/1.2M = 0.8333
        //   unbatcher    usable 640k   nodes ⌈1M/640k⌉ = ⌈1.5625⌉ = 2    instances 1           util 1M/1.28M = 0.78125
        // total instances 1+1+2+3+1+1 = 9. Batcher, proxy leader and replica tie at 0.8333; the batcher
        // comes first on the path. No cluster exceeds min(1.6M, 1.2M) = 1.2M (the replica).
        let c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        let p = plan(&c, &req(1_000_000, 0.2, "c5.xlarge", 1)).unwrap();
        assert_eq!(shape(&p), vec![(3, 1), (2, 1), (5, 2), (12, 3), (2, 1), (2, 1)]);
        assert_eq!(p.acceptor_groups, 4);
        assert_eq!(p.total_instances, 9);
        let utils: Vec<f64> = p.roles.iter().map(|r| r.utilisation).collect();
        for (got, want) in utils.iter().zip([1.0 / 1.2, 0.625, 1.0 / 1.2, 0.78125, 1.0 / 1.2, 0.78125]) {
            assert!((got - want).abs() < 1e-9, "{utils:?}");
        }
        assert!((role(&p, "acceptor").cmds_per_sec_per_node - 320e3).abs() < 1e-6);
        assert_eq!(p.bottleneck, "batcher");
        assert!(p.reachable);
        assert!((p.max_cmds_per_sec - 1.2e6).abs() < 1e-6);
        assert_eq!(role(&p, "proposer").minimum_nodes, 2);
        assert_eq!(role(&p, "acceptor").minimum_nodes, 3);
        assert!(!role(&p, "replica").scales_out && role(&p, "acceptor").scales_out);
        let text = p.render();
        assert!(text.contains("* batcher") && text.contains("reachable"), "{text}");
    }

    #[test]
    fn gateways_are_sized_when_measured_and_named_as_missing_when_not() {
        let mut c = caps([1e6, 1e6, 1e6, 1e6, 1e6, 1e6]);
        let p = plan(&c, &req(1_000_000, 0.0, "c5.large", 1)).unwrap();
        assert!(p.roles.iter().all(|r| r.role != "gateway"));
        assert!(p.notes.iter().any(|n| n.contains("gateways not sized")), "{:?}", p.notes);
        let gateway = RoleCapacity {
            cmds_per_sec_per_core: 300_000.0,
            msgs_per_sec_per_core: 300_000.0,
            batch_size: 40,
            read_budget: 100,
        };
        c.roles.insert("gateway".into(), gateway);
        let p = plan(&c, &req(1_000_000, 0.0, "c5.large", 1)).unwrap();
        assert_eq!(p.roles[0].role, "gateway", "first: a RESP command meets it first");
        assert_eq!((p.roles[0].nodes, p.roles[0].instances), (4, 2), "1M / 300k per core");
        assert!((p.roles[0].utilisation - 1e6 / 1.2e6).abs() < 1e-9);
        assert!(p.notes.iter().all(|n| !n.contains("gateways not sized")));
    }

    #[test]
    fn an_exact_multiple_does_not_round_up_to_an_extra_node() {
        // 250k × (1 − 0.2) is 200,000 up to rounding in 0.8; 1M / 200k must be exactly 5 batchers.
        let c = caps([250e3, 2e6, 250e3, 250e3, 2e6, 250e3]);
        let p = plan(&c, &req(1_000_000, 0.2, "c5.large", 1)).unwrap();
        assert_eq!(role(&p, "batcher").nodes, 5);
        assert_eq!(p.acceptor_groups, 5);
        assert_eq!(role(&p, "acceptor").nodes, 15);
    }

    #[test]
    fn a_tiny_target_gets_the_fault_tolerance_minimums() {
        // One command per second needs a fraction of one node of anything; f=2 still needs 3 proposers,
        // one group of 5 acceptors and 3 replicas, and one of each other role.
        let c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        let p = plan(&c, &req(1, 0.3, "c5.large", 2)).unwrap();
        assert_eq!(shape(&p), vec![(1, 1), (3, 2), (1, 1), (5, 3), (3, 2), (1, 1)]);
        let minimums: Vec<u64> = p.roles.iter().map(|r| r.minimum_nodes).collect();
        assert_eq!(minimums, vec![1, 3, 1, 5, 3, 1]);
        assert!(p.reachable);
    }

    #[test]
    fn a_target_beyond_one_replica_is_unreachable_and_the_replica_limits_it() {
        // Replica 1M per core, headroom 0.3: usable 700k < 1M, and replicas do not scale out.
        // The proposer (2M × 0.7 = 1.4M) could carry it, so the replica sets the maximum, 700k.
        let c = caps([500e3, 2e6, 300e3, 400e3, 1e6, 800e3]);
        let p = plan(&c, &req(1_000_000, 0.3, "c5.xlarge", 1)).unwrap();
        assert!(!p.reachable);
        assert_eq!(p.bottleneck, "replica");
        assert!((p.max_cmds_per_sec - 700e3).abs() < 1e-6);
        // The plan is still made for the target: the roles that scale out are sized for it.
        assert_eq!(role(&p, "replica").nodes, 2);
        assert!(role(&p, "replica").utilisation > 1.0);
        assert_eq!(role(&p, "batcher").nodes, 3); // ⌈1M / 350k⌉
        let text = p.render();
        assert!(text.contains("NOT reachable") && text.contains("700,000"), "{text}");
    }

    #[test]
    fn headroom_must_be_in_zero_to_one() {
        let c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        for bad in [-0.1, 1.0, 1.5, f64::NAN] {
            let err = plan(&c, &req(1000, bad, "c5.xlarge", 1)).unwrap_err();
            assert!(matches!(err, PlanError::Headroom(_)), "{bad}: {err}");
            assert!(err.to_string().contains("--headroom"), "{err}");
        }
        assert!(plan(&c, &req(1000, 0.0, "c5.xlarge", 1)).is_ok());
        assert!(plan(&c, &req(1000, 0.99, "c5.xlarge", 1)).is_ok());
    }

    #[test]
    fn an_unknown_instance_type_lists_the_known_ones() {
        let c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        let err = plan(&c, &req(1000, 0.3, "m5.large", 1)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("m5.large") && msg.contains("c5.large") && msg.contains("c5.24xlarge"), "{msg}");
    }

    #[test]
    fn a_missing_role_is_named_with_the_file() {
        let mut c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        c.roles.remove("proxy-leader");
        let err = plan(&c, &req(1000, 0.3, "c5.xlarge", 1)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("proxy-leader") && msg.contains("hand-built"), "{msg}");
    }

    #[test]
    fn zero_target_zero_f_and_nonpositive_capacities_are_refused() {
        let c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        assert!(matches!(plan(&c, &req(0, 0.3, "c5.xlarge", 1)), Err(PlanError::ZeroTarget)));
        assert!(matches!(plan(&c, &req(1, 0.3, "c5.xlarge", 0)), Err(PlanError::FTooSmall(0))));
        let zero = caps([500e3, 0.0, 300e3, 400e3, 1.5e6, 800e3]);
        let err = plan(&zero, &req(1, 0.3, "c5.xlarge", 1)).unwrap_err();
        assert!(err.to_string().contains("roles.proposer.cmds_per_sec_per_core"), "{err}");
    }

    #[test]
    fn colocated_fault_tolerant_nodes_get_a_note() {
        // c5.24xlarge holds 96 nodes: both proposers land on one instance.
        let c = caps([500e3, 2e6, 300e3, 400e3, 1.5e6, 800e3]);
        let p = plan(&c, &req(1000, 0.3, "c5.24xlarge", 1)).unwrap();
        assert!(
            p.notes.iter().any(|n| n.starts_with("proposer: 2 nodes packed on 1 instance")),
            "{:?}",
            p.notes
        );
    }
}
