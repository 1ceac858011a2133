//! Healing: which proposers, acceptors and replicas of the configuration in force to replace, and
//! when to give up on a replacement. Pure, sans-IO and deterministic like [`super::policy`]: the loop
//! hands it what it observed (each member answering, unreachable, or its instance gone) and the time;
//! it answers what to start and what to abandon, each with its reason. The loop carries the steps
//! out (launch, wait until the new node serves, reconfigure it in and the dead one out, terminate the
//! dead instance) and reports back with [`Healer::launched`] and [`Healer::replaced`].
//!
//! Rules:
//! - a member is dead once its instance is gone, or once it has been unreachable for
//!   `replace_after` without a break (one answer restarts the count);
//! - one replacement at a time per acceptor group, and per role for replicas and proposers; so at
//!   most one node of a group is being replaced, and never more than f;
//! - a member being replaced is not looked at again: if it comes back meanwhile, the replacement
//!   still completes (the change removes it), and it is never counted as both dead and alive;
//! - a replacement not in force within `replacement_timeout` is abandoned (the loop terminates what
//!   it launched) and retried after a backoff that doubles up to `retry_backoff_max`;
//! - a replacement whose dead node left the configuration by other means is abandoned at once.

use crate::protocol::{NodeId, RoleKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How healing behaves. Every field has a flag of `autopaxos autoscale`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealConfig {
    /// Unreachable this long without a break: dead.
    pub replace_after: Duration,
    /// A replacement not in force within this is abandoned.
    pub replacement_timeout: Duration,
    /// Wait before the first retry after an abandoned replacement; doubles with each failure.
    pub retry_backoff: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
}

impl Default for HealConfig {
    fn default() -> Self {
        HealConfig {
            replace_after: Duration::from_secs(30),
            replacement_timeout: Duration::from_secs(300),
            retry_backoff: Duration::from_secs(30),
            retry_backoff_max: Duration::from_secs(600),
        }
    }
}

/// How a member of the configuration in force looked this interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// It answered a status request.
    Answering,
    /// It did not answer.
    Unreachable,
    /// The instance it ran on is terminated, stopped or failing its checks.
    InstanceGone,
}

/// One stateful node of the configuration in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Acceptor, replica or proposer.
    pub role: RoleKind,
    /// Its acceptor group (index in the configuration), for acceptors.
    pub group: Option<usize>,
    /// What was seen.
    pub health: Health,
}

/// A replacement under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replacement {
    /// The dead node.
    pub old: NodeId,
    /// Its role's name.
    pub role: &'static str,
    /// Its group, for an acceptor.
    pub group: Option<usize>,
    /// When it was decided (since the autoscaler started).
    #[serde(skip)]
    pub started: Duration,
    /// 1 for the first try.
    pub attempt: u32,
    /// The node launched to replace it, once launched.
    pub new_node: Option<NodeId>,
    /// The fleet's id of the instance launched, once launched.
    pub instance: Option<String>,
}

/// What the loop is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealAction {
    /// Launch one node of `role` to replace `old` (then report it with [`Healer::launched`]).
    Replace {
        /// The dead node.
        old: NodeId,
        /// Its role.
        role: RoleKind,
        /// Its group, for an acceptor.
        group: Option<usize>,
        /// Which try this is.
        attempt: u32,
        /// Why, in words.
        reason: String,
    },
    /// Give up on this replacement: terminate what was launched for it.
    Abandon {
        /// The replacement given up.
        replacement: Replacement,
        /// Why, in words.
        reason: String,
    },
}

/// Where a member being watched stands between intervals.
#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    /// Unreachable without a break since.
    unreachable_since: Option<Duration>,
    /// Failed replacements so far.
    failures: u32,
    /// No new replacement before.
    retry_at: Option<Duration>,
}

/// The healing engine. Feed it one [`Healer::observe`] call per interval.
#[derive(Debug, Clone)]
pub struct Healer {
    config: HealConfig,
    watch: BTreeMap<NodeId, Watch>,
    in_progress: BTreeMap<NodeId, Replacement>,
}

/// What at most one replacement at a time is allowed per: an acceptor group, or a role.
fn lane(role: RoleKind, group: Option<usize>) -> (RoleKind, Option<usize>) {
    (role, if role == RoleKind::Acceptor { group } else { None })
}

impl Healer {
    /// A healer with `config`.
    pub fn new(config: HealConfig) -> Healer {
        Healer { config, watch: BTreeMap::new(), in_progress: BTreeMap::new() }
    }

    /// The replacements under way, by dead node.
    pub fn in_progress(&self) -> impl Iterator<Item = &Replacement> {
        self.in_progress.values()
    }

    /// Members unreachable (or with their instance gone) at the last observation, not yet replaced.
    pub fn unreachable(&self) -> usize {
        let watched = self.watch.iter().filter(|(id, _)| !self.in_progress.contains_key(id));
        watched.filter(|(_, w)| w.unreachable_since.is_some()).count()
    }

    /// Looks at the members of the configuration in force at `now`; returns what to start and what
    /// to abandon.
    pub fn observe(&mut self, now: Duration, members: &[Member]) -> Vec<HealAction> {
        let mut actions = Vec::new();
        let cfg = self.config.clone();
        // Replacements that took too long, or whose dead node is no longer a member.
        let stale: Vec<(NodeId, String)> = self
            .in_progress
            .values()
            .filter_map(|r| {
                if !members.iter().any(|m| m.id == r.old) {
                    Some((r.old, format!("node {} is no longer in the configuration in force", r.old)))
                } else if now.saturating_sub(r.started) >= cfg.replacement_timeout {
                    Some((
                        r.old,
                        format!(
                            "the replacement of {} {} (try {}) was not in force within {}",
                            r.role,
                            r.old,
                            r.attempt,
                            humantime::format_duration(cfg.replacement_timeout)
                        ),
                    ))
                } else {
                    None
                }
            })
            .collect();
        for (old, why) in stale {
            let replacement = self.in_progress.remove(&old).expect("listed above");
            let still_member = members.iter().any(|m| m.id == old);
            let reason = if still_member {
                let backoff = self.back_off(now, old);
                format!(
                    "{why}: terminating what was launched, retrying in {}",
                    humantime::format_duration(backoff)
                )
            } else {
                self.watch.remove(&old);
                format!("{why}: terminating what was launched")
            };
            actions.push(HealAction::Abandon { replacement, reason });
        }
        // Forget members that left the configuration.
        self.watch.retain(|id, _| members.iter().any(|m| m.id == *id));
        for m in members {
            if self.in_progress.contains_key(&m.id) {
                continue;
            }
            let w = self.watch.entry(m.id).or_default();
            let dead_for = match m.health {
                Health::Answering => {
                    w.unreachable_since = None;
                    continue;
                }
                Health::Unreachable | Health::InstanceGone => {
                    now.saturating_sub(*w.unreachable_since.get_or_insert(now))
                }
            };
            let why = match m.health {
                Health::InstanceGone => format!("its instance is gone (unreachable for {})", secs(dead_for)),
                _ if dead_for >= cfg.replace_after => format!(
                    "unreachable for {} (replace after {})",
                    secs(dead_for),
                    humantime::format_duration(cfg.replace_after)
                ),
                _ => continue,
            };
            if let Some(at) = w.retry_at.filter(|&at| at > now) {
                tracing::debug!(node = m.id, "dead, but the next try is in {}", secs(at - now));
                continue;
            }
            let busy = self.in_progress.values().find(|r| {
                let role = RoleKind::from_name(r.role).expect("a role name");
                lane(role, r.group) == lane(m.role, m.group)
            });
            if let Some(other) = busy {
                tracing::debug!(
                    node = m.id,
                    "dead, but {} {} is being replaced in its lane",
                    other.role,
                    other.old
                );
                continue;
            }
            let attempt = w.failures + 1;
            let place = match m.group {
                Some(g) if m.role == RoleKind::Acceptor => format!(" of group {g}"),
                _ => String::new(),
            };
            let reason = format!(
                "{} {}{place}: {why}: replacing it (try {attempt}): launch a new {0}, let it join, reconfigure it in and {1} out",
                m.role.name(),
                m.id
            );
            self.in_progress.insert(
                m.id,
                Replacement {
                    old: m.id,
                    role: m.role.name(),
                    group: m.group,
                    started: now,
                    attempt,
                    new_node: None,
                    instance: None,
                },
            );
            actions.push(HealAction::Replace { old: m.id, role: m.role, group: m.group, attempt, reason });
        }
        actions
    }

    /// The loop launched `new_node` on `instance` to replace `old`.
    pub fn launched(&mut self, old: NodeId, new_node: NodeId, instance: String) {
        if let Some(r) = self.in_progress.get_mut(&old) {
            r.new_node = Some(new_node);
            r.instance = Some(instance);
        }
    }

    /// The launch for `old` failed: it is retried after the backoff, like an abandoned replacement.
    pub fn launch_failed(&mut self, now: Duration, old: NodeId) {
        if self.in_progress.remove(&old).is_some() {
            self.back_off(now, old);
        }
    }

    /// Counts a failed replacement of `old` and puts its next try off; returns for how long.
    fn back_off(&mut self, now: Duration, old: NodeId) -> Duration {
        let w = self.watch.entry(old).or_default();
        w.failures += 1;
        let doubled = self.config.retry_backoff.saturating_mul(1 << (w.failures - 1).min(16));
        let backoff = doubled.min(self.config.retry_backoff_max);
        w.retry_at = Some(now + backoff);
        backoff
    }

    /// The change that puts the replacement of `old` in and `old` out is in force: done.
    pub fn replaced(&mut self, old: NodeId) -> Option<Replacement> {
        self.watch.remove(&old);
        self.in_progress.remove(&old)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealConfig {
        HealConfig {
            replace_after: Duration::from_secs(10),
            replacement_timeout: Duration::from_secs(60),
            retry_backoff: Duration::from_secs(5),
            retry_backoff_max: Duration::from_secs(12),
        }
    }

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Groups [3,4,5] and [11,12,13], replicas 7 and 8, proposers 1 and 2, all answering but `down`
    /// (unreachable) and `gone` (instance gone).
    fn members(down: &[NodeId], gone: &[NodeId]) -> Vec<Member> {
        let mut all = Vec::new();
        for (g, ids) in [[3, 4, 5], [11, 12, 13]].iter().enumerate() {
            all.extend(ids.iter().map(|&id| (id, RoleKind::Acceptor, Some(g))));
        }
        all.extend([(7, RoleKind::Replica, None), (8, RoleKind::Replica, None)]);
        all.extend([(1, RoleKind::Proposer, None), (2, RoleKind::Proposer, None)]);
        all.into_iter()
            .map(|(id, role, group)| {
                let health = if gone.contains(&id) {
                    Health::InstanceGone
                } else if down.contains(&id) {
                    Health::Unreachable
                } else {
                    Health::Answering
                };
                Member { id, role, group, health }
            })
            .collect()
    }

    fn replaced(actions: &[HealAction]) -> Vec<NodeId> {
        actions
            .iter()
            .filter_map(|a| match a {
                HealAction::Replace { old, .. } => Some(*old),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn unreachable_long_enough_or_instance_gone_is_replaced_with_the_reason() {
        let mut h = Healer::new(config());
        assert!(h.observe(at(0), &members(&[8], &[])).is_empty());
        assert!(h.observe(at(9), &members(&[8], &[])).is_empty(), "not yet 10 s");
        let a = h.observe(at(10), &members(&[8], &[1]));
        assert_eq!(replaced(&a), vec![8, 1], "{a:?}");
        let HealAction::Replace { reason, role, .. } = &a[0] else { panic!() };
        assert_eq!(*role, RoleKind::Replica);
        assert!(reason.contains("replica 8") && reason.contains("unreachable for 10.0s"), "{reason}");
        let HealAction::Replace { reason, .. } = &a[1] else { panic!() };
        assert!(reason.contains("instance is gone"), "{reason}");
        // Under way: not decided again.
        assert!(h.observe(at(11), &members(&[8], &[1])).is_empty());
        assert_eq!(h.in_progress().count(), 2);
    }

    #[test]
    fn one_answer_restarts_the_count() {
        let mut h = Healer::new(config());
        h.observe(at(0), &members(&[8], &[]));
        h.observe(at(8), &members(&[], &[]));
        assert!(h.observe(at(12), &members(&[8], &[])).is_empty());
        assert!(h.observe(at(21), &members(&[8], &[])).is_empty());
        assert_eq!(replaced(&h.observe(at(22), &members(&[8], &[]))), vec![8]);
    }

    #[test]
    fn never_more_than_one_node_of_a_group_or_role_at_once_so_never_more_than_f() {
        let mut h = Healer::new(config());
        // Two acceptors of group 0, one of group 1, both replicas dead at once.
        let down = [3, 4, 12, 7, 8];
        h.observe(at(0), &members(&down, &[]));
        let a = h.observe(at(10), &members(&down, &[]));
        assert_eq!(replaced(&a), vec![3, 12, 7], "one per group and per role: {a:?}");
        // While they are under way, nothing else in those lanes.
        assert!(replaced(&h.observe(at(20), &members(&down, &[]))).is_empty());
        // Group 0's replacement is done: 3 is out of the configuration, 4 goes next.
        h.launched(3, 21, "i-1".into());
        assert_eq!(h.replaced(3).map(|r| r.new_node), Some(Some(21)));
        let without_3: Vec<Member> = members(&down, &[]).into_iter().filter(|m| m.id != 3).collect();
        assert_eq!(replaced(&h.observe(at(21), &without_3)), vec![4]);
        let per_group = |g| h.in_progress().filter(|r| r.role == "acceptor" && r.group == Some(g)).count();
        assert!(per_group(0) <= 1 && per_group(1) <= 1);
    }

    #[test]
    fn a_node_that_comes_back_while_being_replaced_is_not_counted_twice() {
        let mut h = Healer::new(config());
        h.observe(at(0), &members(&[4], &[]));
        assert_eq!(replaced(&h.observe(at(10), &members(&[4], &[]))), vec![4]);
        h.launched(4, 21, "i-1".into());
        // 4 answers again: the replacement goes on, nothing new is decided, and 4 is not watched.
        for t in 11..40 {
            let flapping = if t % 2 == 0 { members(&[], &[]) } else { members(&[4], &[]) };
            assert!(h.observe(at(t), &flapping).is_empty(), "at {t}");
        }
        assert_eq!(h.in_progress().map(|r| r.old).collect::<Vec<_>>(), vec![4]);
        assert_eq!(h.unreachable(), 0);
        assert!(h.replaced(4).is_some());
    }

    #[test]
    fn a_replacement_that_never_serves_is_abandoned_and_retried_with_backoff() {
        let mut h = Healer::new(config());
        h.observe(at(0), &members(&[8], &[]));
        assert_eq!(replaced(&h.observe(at(10), &members(&[8], &[]))), vec![8]);
        h.launched(8, 21, "i-1".into());
        assert!(h.observe(at(69), &members(&[8], &[])).is_empty());
        let a = h.observe(at(70), &members(&[8], &[]));
        let [HealAction::Abandon { replacement, reason }] = &a[..] else { panic!("{a:?}") };
        assert_eq!((replacement.old, replacement.instance.as_deref()), (8, Some("i-1")));
        assert!(reason.contains("not in force within 1m") && reason.contains("retrying in 5s"), "{reason}");
        // Backoff 5 s, then 10 s, then capped at 12 s.
        assert!(h.observe(at(74), &members(&[8], &[])).is_empty());
        let a = h.observe(at(75), &members(&[8], &[]));
        assert!(matches!(a[..], [HealAction::Replace { attempt: 2, .. }]), "{a:?}");
        let a = h.observe(at(135), &members(&[8], &[]));
        let [HealAction::Abandon { reason, .. }] = &a[..] else { panic!("{a:?}") };
        assert!(reason.contains("retrying in 10s"), "{reason}");
        assert!(h.observe(at(144), &members(&[8], &[])).is_empty());
        assert!(matches!(
            h.observe(at(145), &members(&[8], &[]))[..],
            [HealAction::Replace { attempt: 3, .. }]
        ));
        h.observe(at(205), &members(&[8], &[]));
        assert!(h.observe(at(216), &members(&[8], &[])).is_empty());
        assert!(matches!(
            h.observe(at(217), &members(&[8], &[]))[..],
            [HealAction::Replace { attempt: 4, .. }]
        ));
        // A failed launch backs off the same way.
        h.launch_failed(at(218), 8);
        assert!(h.observe(at(219), &members(&[8], &[])).is_empty());
        assert_eq!(h.in_progress().count(), 0);
    }

    #[test]
    fn a_replacement_whose_node_left_the_configuration_is_abandoned() {
        let mut h = Healer::new(config());
        h.observe(at(0), &members(&[8], &[]));
        h.observe(at(10), &members(&[8], &[]));
        h.launched(8, 21, "i-1".into());
        let without_8: Vec<Member> = members(&[], &[]).into_iter().filter(|m| m.id != 8).collect();
        let a = h.observe(at(11), &without_8);
        let [HealAction::Abandon { reason, .. }] = &a[..] else { panic!("{a:?}") };
        assert!(reason.contains("no longer in the configuration"), "{reason}");
        assert_eq!(h.in_progress().count(), 0);
    }
}
