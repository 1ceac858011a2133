//! The autoscaler's sizing engine: pure, sans-IO and deterministic. Each interval the loop hands it,
//! per scaled role, the measured load and the current node count, and the time (a `Duration` since
//! the autoscaler started, never read from a clock here); it answers one [`Decision`] per role, each
//! with a human-readable reason.
//!
//! The model, per role, with `capacity` = the role's measured commands per second on one core (from
//! `tuning/capacities.toml`; one node is one core) and `usable = capacity × (1 − headroom)`:
//! - target = ⌈load / usable⌉, clamped to [min, max] nodes;
//! - utilisation = load / (nodes × capacity); the *scale-out threshold* is `1 − headroom` (a target above
//!   the current count is the same as utilisation above it), the *scale-in threshold* is
//!   `(1 − headroom) × (1 − band)`;
//! - scale out to the target once the target has been above the current count for `scale_out_after`
//!   consecutive intervals;
//! - scale in once the target has been below the current count for `scale_in_after` consecutive
//!   intervals (longer), and only by as many nodes (at most `max_scale_in_step`) as keep the *peak* load
//!   of those intervals under the scale-in threshold on the nodes that remain;
//! - after any action on a role, nothing more for that role until `cooldown` has passed; the streaks
//!   start again after an action (they measured the old count).
//!
//! Acceptors are sized the same way by groups ([`Policy::with_acceptor_groups`]): the load is the
//! Phase2a messages per second of every group together, one group carries what one acceptor can
//! (its measured `msgs_per_sec_per_core`), and the count is the groups of the configuration in force.
//!
//! Why it does not flap: if the load stays within `[c(1 − a), c(1 + a)]` with `(1 + a)/(1 − a) ≤
//! 1/(1 − band)`, then after a scale out the peak can never fall under the scale-in threshold on one node
//! fewer, and after a scale in the load can never rise above the scale-out threshold; the unit tests
//! check this over random sequences.

use crate::bench::capacities::Capacities;
use crate::bench::plan::PlanError;
use crate::protocol::RoleKind;
use crate::runtime::local::thousands;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// The roles the autoscaler sizes: the stateless ones, which join and leave at runtime.
pub const SCALED_ROLES: [RoleKind; 3] = [RoleKind::Batcher, RoleKind::ProxyLeader, RoleKind::Unbatcher];

/// Relative slack when rounding node counts up (as `plan` does): 7,000 / 7,000 must be 1 node, not 2.
const ROUNDING_SLACK: f64 = 1e-9;

/// How the policy behaves. Every field has a flag of `autopaxos autoscale`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// Fraction of each node's measured capacity kept spare, in [0, 1).
    pub headroom: f64,
    /// How far below the scale-out threshold the scale-in threshold sits, as a fraction of it, in [0, 1).
    pub band: f64,
    /// Consecutive intervals the target must exceed the current count before scaling out (at least 1).
    pub scale_out_after: u32,
    /// Consecutive intervals the target must be below the current count before scaling in (at least 1,
    /// and at least `scale_out_after`: leaving is slower than joining).
    pub scale_in_after: u32,
    /// Quiet time per role after any action.
    pub cooldown: Duration,
    /// Fewest nodes per role.
    pub min_nodes: u32,
    /// Most nodes per role.
    pub max_nodes: u32,
    /// Most nodes one scale-in removes.
    pub max_scale_in_step: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            headroom: 0.3,
            band: 0.2,
            scale_out_after: 2,
            scale_in_after: 6,
            cooldown: Duration::from_secs(60),
            min_nodes: 1,
            max_nodes: 64,
            max_scale_in_step: 1,
        }
    }
}

/// A configuration or capacities file the policy cannot work with; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A setting is out of range.
    #[error("{0}")]
    Setting(String),
    /// The capacities lack a role or have a bad value (the message names the file and field).
    #[error(transparent)]
    Capacities(#[from] PlanError),
}

impl PolicyConfig {
    /// Checks every setting; the error names the flag.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |s: String| Err(PolicyError::Setting(s));
        if !(0.0..1.0).contains(&self.headroom) {
            return bad(format!("--headroom must be at least 0 and below 1 (got {})", self.headroom));
        }
        if !(0.0..1.0).contains(&self.band) {
            return bad(format!("--band must be at least 0 and below 1 (got {})", self.band));
        }
        if self.scale_out_after == 0 || self.scale_in_after == 0 {
            return bad("--scale-out-after and --scale-in-after must be at least 1 interval".into());
        }
        if self.scale_in_after < self.scale_out_after {
            return bad(format!(
                "--scale-in-after ({}) must be at least --scale-out-after ({}): leaving is slower than joining",
                self.scale_in_after, self.scale_out_after
            ));
        }
        if self.max_nodes == 0 || self.min_nodes > self.max_nodes {
            return bad(format!(
                "--min-nodes ({}) must not exceed --max-nodes ({}), and --max-nodes must be at least 1",
                self.min_nodes, self.max_nodes
            ));
        }
        if self.max_scale_in_step == 0 {
            return bad("--max-scale-in-step must be at least 1".into());
        }
        Ok(())
    }

    /// Utilisation (of measured capacity) above which a role scales out: `1 − headroom`.
    pub fn scale_out_threshold(&self) -> f64 {
        1.0 - self.headroom
    }

    /// Utilisation the remaining nodes must stay under, at the peak load, for a scale in.
    pub fn scale_in_threshold(&self) -> f64 {
        self.scale_out_threshold() * (1.0 - self.band)
    }
}

/// What was measured for one role in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The role.
    pub role: RoleKind,
    /// Commands per second through the role (all its nodes together); `None` when it could not be
    /// measured this interval (no reachable node, first scrape, a counter reset).
    pub load: Option<f64>,
    /// Nodes the role has now (running or starting).
    pub nodes: u32,
}

/// What to do with a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    /// Nothing this interval.
    Hold,
    /// Start this many nodes.
    ScaleOut {
        /// Nodes to add.
        add: u32,
    },
    /// Drain and stop this many nodes.
    ScaleIn {
        /// Nodes to remove.
        remove: u32,
    },
}

/// One role's decision for one interval, with everything that led to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The role's name (`RoleKind::name`).
    pub role: &'static str,
    /// When (since the autoscaler started), in seconds.
    pub at_secs: f64,
    /// What to do.
    pub action: Action,
    /// Nodes now.
    pub nodes: u32,
    /// Nodes after the action.
    pub to: u32,
    /// The load it was decided on (commands per second), if measured.
    pub load: Option<f64>,
    /// Measured load one node (one group, for acceptors) carries.
    pub capacity_per_node: f64,
    /// load / (nodes × capacity), if measured.
    pub utilisation: Option<f64>,
    /// ⌈load / usable⌉ within [min, max], if measured.
    pub target: Option<u32>,
    /// Why, in words, with the numbers.
    pub reason: String,
}

impl Decision {
    /// Whether the decision changes anything.
    pub fn acts(&self) -> bool {
        self.action != Action::Hold
    }
}

/// Per-role memory between intervals.
#[derive(Debug, Clone, Default)]
struct RoleState {
    /// Consecutive intervals with the target above the count.
    above: u32,
    /// The loads of the consecutive intervals with the target below the count (the last
    /// `scale_in_after` of them).
    below: VecDeque<f64>,
    /// When the last action was decided.
    last_action: Option<Duration>,
}

/// How one scaled role is sized: what one unit (a node, or a group of acceptors) carries, in which
/// unit of load, and the bounds on its count.
#[derive(Debug, Clone, PartialEq)]
struct Scale {
    /// Measured load one unit carries at 100%.
    capacity: f64,
    /// The load's unit, as the reasons print it (`cmds/s`, `Phase2a/s`).
    load_unit: &'static str,
    /// What is counted (`node`, `group`).
    counted: &'static str,
    min: u32,
    max: u32,
}

/// The decision engine. Feed it one [`Policy::decide`] call per interval.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    /// Per scaled role: measured capacity per node (or group), unit and bounds.
    scale: BTreeMap<RoleKind, Scale>,
    state: BTreeMap<RoleKind, RoleState>,
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn rate(x: f64) -> String {
    thousands(x.round().max(0.0) as u64)
}

fn count(n: u32, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

impl Policy {
    /// A policy for the scaled roles, with their capacities from `caps` (`file` names it in errors).
    pub fn new(config: PolicyConfig, caps: &Capacities, file: &str) -> Result<Policy, PolicyError> {
        config.validate()?;
        let mut capacity = BTreeMap::new();
        // Gateways are sized too when their capacity was measured (`bench gateway`).
        let gateway = caps.roles.contains_key(RoleKind::Gateway.name()).then_some(RoleKind::Gateway);
        for role in SCALED_ROLES.into_iter().chain(gateway) {
            let name = role.name();
            let cap = caps.role(role, file)?;
            let value = cap.cmds_per_sec_per_core;
            if !(value.is_finite() && value > 0.0) {
                return Err(PlanError::BadCapacity { role: name, file: file.to_string(), value }.into());
            }
            let scale = Scale {
                capacity: value,
                load_unit: "cmds/s",
                counted: "node",
                min: config.min_nodes,
                max: config.max_nodes,
            };
            capacity.insert(role, scale);
        }
        Ok(Policy { config, scale: capacity, state: BTreeMap::new() })
    }

    /// Also sizes the acceptor groups, between `min` and `max` groups: the load is the Phase2a
    /// messages per second all groups receive together, and one group carries what one acceptor
    /// can (`msgs_per_sec_per_core` of the acceptor in `caps`), since every member of a slot's
    /// group votes on it.
    pub fn with_acceptor_groups(
        mut self,
        caps: &Capacities,
        file: &str,
        min: u32,
        max: u32,
    ) -> Result<Policy, PolicyError> {
        let cap = caps.role(RoleKind::Acceptor, file)?;
        let value = cap.msgs_per_sec_per_core;
        if !(value.is_finite() && value > 0.0) {
            return Err(PolicyError::Setting(format!(
                "{file}: roles.acceptor.msgs_per_sec_per_core must be a positive number (got {value})"
            )));
        }
        if min == 0 || min > max {
            return Err(PolicyError::Setting(format!(
                "--min-groups ({min}) must be at least 1 and not exceed --max-groups ({max})"
            )));
        }
        let scale = Scale { capacity: value, load_unit: "Phase2a/s", counted: "group", min, max };
        self.scale.insert(RoleKind::Acceptor, scale);
        Ok(self)
    }

    /// The configuration in force.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// A role's measured capacity per node (or per group, for acceptors), if it is a scaled role.
    pub fn capacity(&self, role: RoleKind) -> Option<f64> {
        self.scale.get(&role).map(|s| s.capacity)
    }

    /// Decides, for each observed scaled role (others are ignored), what to do at `now`.
    pub fn decide(&mut self, now: Duration, observations: &[Observation]) -> Vec<Decision> {
        observations.iter().filter_map(|o| self.decide_role(now, o)).collect()
    }

    fn decide_role(&mut self, now: Duration, o: &Observation) -> Option<Decision> {
        let Scale { capacity, load_unit: unit, counted, min, max } = self.scale.get(&o.role)?.clone();
        let nodes = |n: u32| count(n, counted);
        let c = &self.config;
        let usable = capacity * (1.0 - c.headroom);
        let (out_t, in_t) = (c.scale_out_threshold(), c.scale_in_threshold());
        let state = self.state.entry(o.role).or_default();
        let name = o.role.name();
        let n = o.nodes;
        let cooling_left =
            state.last_action.map(|t| (t + c.cooldown).saturating_sub(now)).unwrap_or_default();
        let mut decision = Decision {
            role: name,
            at_secs: now.as_secs_f64(),
            action: Action::Hold,
            nodes: n,
            to: n,
            load: o.load,
            capacity_per_node: capacity,
            utilisation: None,
            target: None,
            reason: String::new(),
        };
        let Some(load) = o.load.filter(|l| l.is_finite() && *l >= 0.0) else {
            state.above = 0;
            state.below.clear();
            decision.load = None;
            decision.reason = format!("{name}: load not measured this interval; holding at {}", nodes(n));
            return Some(decision);
        };
        let util = if n == 0 { f64::INFINITY } else { load / (f64::from(n) * capacity) };
        let raw_target =
            ((load / usable * (1.0 - ROUNDING_SLACK)).ceil() as u64).min(u64::from(u32::MAX)) as u32;
        let target = raw_target.clamp(min, max);
        decision.utilisation = util.is_finite().then_some(util);
        decision.target = Some(target);
        let measured = format!(
            "{name}: load {} {unit} on {} of {} {unit} measured capacity each = {} utilisation \
             (scale out above {}, scale in below {}); target {} (usable {} {unit} per {counted} at {} headroom{})",
            rate(load),
            nodes(n),
            rate(capacity),
            if util.is_finite() { pct(util) } else { "unbounded".into() },
            pct(out_t),
            pct(in_t),
            nodes(target),
            rate(usable),
            pct(c.headroom),
            if raw_target == target {
                String::new()
            } else {
                format!("; the load needs {raw_target}, held within {}..={}", min, max)
            },
        );
        let cooling = !cooling_left.is_zero();
        let cooldown_note =
            || format!("cooling down for {:.1}s more after the last action", cooling_left.as_secs_f64());

        // Outside the bounds: act at once (after the cooldown), whatever the streaks.
        if n < min || n > max {
            state.above = 0;
            state.below.clear();
            let (action, to) = if n < min {
                (Action::ScaleOut { add: min - n }, min)
            } else {
                (Action::ScaleIn { remove: n - max }, max)
            };
            if cooling {
                decision.reason = format!("{measured}; outside the bounds but {}", cooldown_note());
            } else {
                decision.reason =
                    format!("{measured}; {} is outside {}..={}: {n} -> {to}", nodes(n), min, max);
                decision.action = action;
                decision.to = to;
                state.last_action = Some(now);
            }
            return Some(decision);
        }

        if target > n {
            state.above += 1;
            state.below.clear();
        } else if target < n {
            state.above = 0;
            state.below.push_back(load);
            while state.below.len() > c.scale_in_after as usize {
                state.below.pop_front();
            }
        } else {
            state.above = 0;
            state.below.clear();
            decision.reason = format!("{measured}; at target");
            return Some(decision);
        }

        if target > n {
            if state.above < c.scale_out_after {
                decision.reason = format!(
                    "{measured}; above the current count for {} of {} intervals needed to scale out",
                    state.above, c.scale_out_after
                );
            } else if cooling {
                decision.reason = format!("{measured}; would scale out but {}", cooldown_note());
            } else {
                decision.reason = format!(
                    "{measured}; above the current count for {} intervals: scale out {n} -> {target}",
                    state.above
                );
                decision.action = Action::ScaleOut { add: target - n };
                decision.to = target;
                state.above = 0;
                state.last_action = Some(now);
            }
            return Some(decision);
        }

        // target < n
        if state.below.len() < c.scale_in_after as usize {
            decision.reason = format!(
                "{measured}; below the current count for {} of {} intervals needed to scale in",
                state.below.len(),
                c.scale_in_after
            );
            return Some(decision);
        }
        let peak = state.below.iter().copied().fold(0.0, f64::max);
        let most = c.max_scale_in_step.min(n - min);
        // The most nodes that can go with the peak staying under the scale-in threshold on the rest.
        let remove = (1..=most).rev().find(|k| peak < in_t * f64::from(n - k) * capacity).unwrap_or(0);
        if remove == 0 {
            let after = if n > 1 { pct(peak / (f64::from(n - 1) * capacity)) } else { "unbounded".into() };
            decision.reason = format!(
                "{measured}; the peak of the last {} intervals, {} {unit}, would be {after} of {} fewer, \
                 not below the scale-in threshold {}: holding",
                c.scale_in_after,
                rate(peak),
                nodes(n.saturating_sub(1)),
                pct(in_t)
            );
        } else if cooling {
            decision.reason = format!("{measured}; would scale in but {}", cooldown_note());
        } else {
            let to = n - remove;
            decision.reason = format!(
                "{measured}; below the current count for {} intervals, and their peak {} {unit} is {} of {}: \
                 scale in {n} -> {to}",
                c.scale_in_after,
                rate(peak),
                pct(peak / (f64::from(to) * capacity)),
                nodes(to),
            );
            decision.action = Action::ScaleIn { remove };
            decision.to = to;
            state.below.clear();
            state.last_action = Some(now);
        }
        Some(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::capacities::{Machine, RoleCapacity};
    use proptest::prelude::*;

    /// Every scaled role at 10,000 cmds/s per core (usable 7,000 at the default headroom).
    fn caps() -> Capacities {
        let roles = ["batcher", "proxy-leader", "unbatcher", "proposer", "replica", "acceptor"]
            .iter()
            .map(|r| {
                let cap = RoleCapacity {
                    cmds_per_sec_per_core: 10_000.0,
                    msgs_per_sec_per_core: 100.0,
                    batch_size: 100,
                    read_budget: 100,
                };
                (r.to_string(), cap)
            })
            .collect();
        let machine =
            Machine { cores: 2, cpu: "t".into(), kernel: "t".into(), measured: "2026-11-21".into() };
        Capacities { machine, roles }
    }

    fn config() -> PolicyConfig {
        PolicyConfig {
            scale_out_after: 2,
            scale_in_after: 4,
            cooldown: Duration::from_secs(3),
            max_nodes: 10,
            ..PolicyConfig::default()
        }
    }

    /// Runs `loads` (one per 1 s interval) against a batcher fleet that follows every decision; returns
    /// (the node counts after each interval, the decisions that acted).
    fn drive(config: PolicyConfig, start: u32, loads: &[f64]) -> (Vec<u32>, Vec<Decision>) {
        let mut p = Policy::new(config, &caps(), "test").unwrap();
        let mut n = start;
        let mut counts = Vec::new();
        let mut acted = Vec::new();
        for (i, &load) in loads.iter().enumerate() {
            let obs = Observation { role: RoleKind::Batcher, load: Some(load), nodes: n };
            let d = p.decide(Duration::from_secs(i as u64), &[obs]).remove(0);
            assert_eq!(d.role, "batcher");
            assert!(!d.reason.is_empty());
            n = d.to;
            if d.acts() {
                acted.push(d);
            }
            counts.push(n);
        }
        (counts, acted)
    }

    #[test]
    fn scales_out_to_the_target_after_k_intervals_and_says_why() {
        // 30,000 cmds/s over usable 7,000 per node: ⌈4.29⌉ = 5 nodes; needs 2 intervals above.
        let (counts, acted) = drive(config(), 1, &[30_000.0, 30_000.0, 30_000.0]);
        assert_eq!(counts, vec![1, 5, 5]);
        assert_eq!(acted.len(), 1);
        let d = &acted[0];
        assert_eq!(d.action, Action::ScaleOut { add: 4 });
        assert_eq!(d.target, Some(5));
        assert!((d.utilisation.unwrap() - 3.0).abs() < 1e-9);
        for needle in ["30,000 cmds/s", "10,000", "300%", "scale out above 70%", "scale out 1 -> 5"] {
            assert!(d.reason.contains(needle), "{needle:?} not in {}", d.reason);
        }
    }

    #[test]
    fn one_spike_does_not_scale_out() {
        let (counts, acted) = drive(config(), 1, &[500.0, 30_000.0, 500.0, 30_000.0, 500.0]);
        assert!(acted.is_empty(), "{acted:?}");
        assert_eq!(counts, vec![1; 5]);
    }

    #[test]
    fn scales_in_one_node_at_a_time_after_m_intervals_and_the_cooldown() {
        // 5 nodes, load drops to 1,000: target 1. Scale in after 4 intervals below, one node per step,
        // each step waits for the cooldown (3 s) and a fresh streak of 4 intervals.
        let (counts, acted) = drive(config(), 5, &[1_000.0; 20]);
        assert_eq!(&counts[..4], &[5, 5, 5, 4]);
        assert!(acted.iter().all(|d| d.action == Action::ScaleIn { remove: 1 }), "{acted:?}");
        assert_eq!(*counts.last().unwrap(), 1);
        assert_eq!(acted.len(), 4);
        assert!(acted[0].reason.contains("scale in 5 -> 4"), "{}", acted[0].reason);
    }

    #[test]
    fn a_larger_step_removes_as_many_as_the_peak_allows() {
        // Peak 9,000 over the window: under the scale-in threshold (56%) only on 2 nodes or more
        // (9,000 / 20,000 = 45%; on 1 node 90%). From 6 with a step of up to 10: down to 2.
        let c = PolicyConfig { max_scale_in_step: 10, ..config() };
        let (counts, acted) = drive(c, 6, &[9_000.0, 1_000.0, 1_000.0, 1_000.0]);
        assert_eq!(counts, vec![6, 6, 6, 2]);
        assert_eq!(acted[0].action, Action::ScaleIn { remove: 4 });
    }

    #[test]
    fn no_scale_in_when_the_peak_would_overload_the_rest() {
        // 2 nodes, load 6,500 (target 1: 6,500 ≤ 7,000) but 6,500 on one node is 65% ≥ 56%: hold.
        let (counts, acted) = drive(config(), 2, &[6_500.0; 12]);
        assert!(acted.is_empty(), "{acted:?}");
        assert_eq!(counts, vec![2; 12]);
    }

    #[test]
    fn cooldown_blocks_a_second_action() {
        // Scale out at t=1 to 5; load jumps again at once: the next scale out waits for t ≥ 4.
        let (counts, acted) =
            drive(config(), 1, &[30_000.0, 30_000.0, 60_000.0, 60_000.0, 60_000.0, 60_000.0]);
        assert_eq!(counts, vec![1, 5, 5, 5, 9, 9]);
        assert_eq!(acted.len(), 2);
    }

    #[test]
    fn acceptor_groups_are_sized_by_phase2a_within_their_own_bounds() {
        let at = Duration::from_secs;
        // One acceptor carries 100 Phase2a/s (usable 70): 250 Phase2a/s needs ⌈3.6⌉ = 4 groups,
        // held at --max-groups 3; the stateless roles keep their own bounds.
        let mut p = Policy::new(config(), &caps(), "test")
            .unwrap()
            .with_acceptor_groups(&caps(), "test", 1, 3)
            .unwrap();
        let obs = [Observation { role: RoleKind::Acceptor, load: Some(250.0), nodes: 1 }];
        assert!(!p.decide(at(0), &obs)[0].acts());
        let d = p.decide(at(1), &obs).remove(0);
        assert_eq!((d.role, d.action, d.to), ("acceptor", Action::ScaleOut { add: 2 }, 3), "{}", d.reason);
        for needle in ["250 Phase2a/s", "1 group of 100 Phase2a/s", "target 3 groups", "the load needs 4"] {
            assert!(d.reason.contains(needle), "{needle:?} not in: {}", d.reason);
        }
        // Under a light load it goes back down by one group at a time, never below --min-groups.
        let mut groups = 3;
        for i in 10..40 {
            let light = [Observation { role: RoleKind::Acceptor, load: Some(10.0), nodes: groups }];
            groups = p.decide(at(i), &light)[0].to;
        }
        assert_eq!(groups, 1);
        let bad = Policy::new(config(), &caps(), "test").unwrap().with_acceptor_groups(&caps(), "t", 2, 1);
        assert!(bad.unwrap_err().to_string().contains("--min-groups"));
        let mut c = caps();
        c.roles.get_mut("acceptor").unwrap().msgs_per_sec_per_core = f64::NAN;
        let bad = Policy::new(config(), &c, "test").unwrap().with_acceptor_groups(&c, "caps.toml", 1, 2);
        assert!(bad.unwrap_err().to_string().contains("roles.acceptor.msgs_per_sec_per_core"));
    }

    #[test]
    fn bounds_are_repaired_and_targets_clamped() {
        let c = PolicyConfig { min_nodes: 2, max_nodes: 3, ..config() };
        let (counts, _) = drive(c.clone(), 0, &[0.0]);
        assert_eq!(counts, vec![2]);
        let (counts, _) = drive(c.clone(), 5, &[0.0]);
        assert_eq!(counts, vec![3]);
        let (counts, acted) = drive(c, 2, &[1e9, 1e9]);
        assert_eq!(counts, vec![2, 3]);
        assert_eq!(acted[0].target, Some(3));
        assert!(acted[0].reason.contains("the load needs 142858, held within 2..=3"), "{}", acted[0].reason);
    }

    #[test]
    fn unmeasured_load_holds_and_restarts_the_streaks() {
        let mut p = Policy::new(config(), &caps(), "test").unwrap();
        let at = |s| Duration::from_secs(s);
        let high = Observation { role: RoleKind::Unbatcher, load: Some(30_000.0), nodes: 1 };
        let none = Observation { load: None, ..high };
        assert!(!p.decide(at(0), &[high])[0].acts());
        let d = p.decide(at(1), &[none]).remove(0);
        assert!(!d.acts() && d.reason.contains("not measured"), "{}", d.reason);
        assert!(!p.decide(at(2), &[high])[0].acts(), "the streak restarted");
        assert!(p.decide(at(3), &[high])[0].acts());
    }

    #[test]
    fn roles_are_independent_and_others_ignored() {
        let mut p = Policy::new(config(), &caps(), "test").unwrap();
        let obs = [
            Observation { role: RoleKind::Batcher, load: Some(30_000.0), nodes: 1 },
            Observation { role: RoleKind::ProxyLeader, load: Some(100.0), nodes: 1 },
            Observation { role: RoleKind::Replica, load: Some(30_000.0), nodes: 2 },
        ];
        p.decide(Duration::ZERO, &obs);
        let d = p.decide(Duration::from_secs(1), &obs);
        assert_eq!(d.len(), 2);
        assert!(d[0].acts() && !d[1].acts());
    }

    #[test]
    fn bad_settings_and_capacities_are_refused_with_the_flag_or_field() {
        let err = |c: PolicyConfig| Policy::new(c, &caps(), "test").unwrap_err().to_string();
        assert!(err(PolicyConfig { headroom: 1.0, ..config() }).contains("--headroom"));
        assert!(err(PolicyConfig { band: -0.1, ..config() }).contains("--band"));
        assert!(err(PolicyConfig { scale_in_after: 1, ..config() }).contains("--scale-in-after"));
        assert!(err(PolicyConfig { min_nodes: 4, max_nodes: 3, ..config() }).contains("--min-nodes"));
        let mut c = caps();
        c.roles.remove("unbatcher");
        let e = Policy::new(config(), &c, "caps.toml").unwrap_err().to_string();
        assert!(e.contains("unbatcher") && e.contains("caps.toml"), "{e}");
        let mut c = caps();
        c.roles.get_mut("batcher").unwrap().cmds_per_sec_per_core = 0.0;
        let e = Policy::new(config(), &c, "caps.toml").unwrap_err().to_string();
        assert!(e.contains("roles.batcher.cmds_per_sec_per_core"), "{e}");
    }

    /// A rise, a plateau and a fall: out once, in step by step, and never back and forth.
    #[test]
    fn rise_and_fall_is_monotone_in_each_phase() {
        let mut loads = vec![500.0; 5];
        loads.extend([40_000.0; 10]);
        loads.extend([500.0; 40]);
        let (counts, acted) = drive(config(), 1, &loads);
        assert_eq!(acted[0].action, Action::ScaleOut { add: 5 });
        assert!(acted[1..].iter().all(|d| matches!(d.action, Action::ScaleIn { .. })), "{acted:?}");
        assert_eq!(reversals(&acted), 1);
        assert_eq!(*counts.last().unwrap(), 1);
        assert_eq!(counts.iter().max(), Some(&6));
    }

    /// Whether the decisions ever change direction (out then in, or in then out).
    fn reversals(acted: &[Decision]) -> usize {
        let dirs: Vec<bool> = acted.iter().map(|d| matches!(d.action, Action::ScaleOut { .. })).collect();
        dirs.windows(2).filter(|w| w[0] != w[1]).count()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Noisy load oscillating around the boundary between `k` and `k + 1` nodes (k × usable), with
        /// noise within what the band absorbs ((1 + a)/(1 − a) ≤ 1/(1 − band)): at most one action, so
        /// no flapping, whatever the sequence and the starting count.
        #[test]
        fn noise_around_a_threshold_does_not_flap(
            k in 1u32..6,
            start_offset in 0u32..2,
            noise in proptest::collection::vec(-1.0f64..1.0, 50..200),
            amplitude in 0.0f64..0.11,
            step in 1u32..4,
        ) {
            let c = PolicyConfig { max_scale_in_step: step, ..config() };
            let centre = f64::from(k) * 7_000.0;
            let loads: Vec<f64> = noise.iter().map(|x| centre * (1.0 + amplitude * x)).collect();
            let (counts, acted) = drive(c, k + start_offset, &loads);
            prop_assert!(acted.len() <= 1, "{} actions: {:?} counts {:?}", acted.len(), acted, counts);
            prop_assert!(counts.iter().all(|&n| n == k || n == k + 1), "{counts:?}");
        }

        /// A swing of up to ±50% around the boundary that alternates every interval never acts at all:
        /// neither streak survives the next interval.
        #[test]
        fn alternating_load_does_not_flap(
            k in 1u32..6,
            swing in 0.0f64..0.5,
            len in 20usize..120,
        ) {
            let centre = f64::from(k) * 7_000.0;
            let loads: Vec<f64> =
                (0..len).map(|i| centre * if i % 2 == 0 { 1.0 + swing } else { 1.0 - swing }).collect();
            let (_, acted) = drive(config(), k, &loads);
            prop_assert!(acted.is_empty(), "{acted:?}");
        }
    }
}
