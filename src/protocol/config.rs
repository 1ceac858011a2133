//! Who is in the cluster and how the protocol is tuned. Validated once, when loaded: a bad
//! configuration is refused with the field named, never discovered later as a panic on the hot path.

use super::{NodeId, Time};

/// The kinds of node. `Client` is a node too: it has an id, sends and receives.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(compare(PartialEq), derive(Debug))]
pub enum RoleKind {
    /// Issues commands and waits for their replies.
    Client,
    /// Gathers commands into batches for the leader.
    Batcher,
    /// Elects a leader; the leader orders batches into slots.
    Proposer,
    /// Runs Phase 2 for one slot on behalf of the leader.
    ProxyLeader,
    /// Votes in one acceptor group.
    Acceptor,
    /// Executes the chosen log on the state machine.
    Replica,
    /// Splits reply batches and sends each reply to its client.
    Unbatcher,
    /// Serves the Redis protocol to applications: a client node whose clients are its connections.
    /// Not in cluster files; it joins (or runs as a plain client node).
    Gateway,
}

impl RoleKind {
    /// Every role; `every_role_is_listed_once` fails to compile when a role is added without it.
    pub const ALL: [RoleKind; 8] = [
        RoleKind::Client,
        RoleKind::Batcher,
        RoleKind::Proposer,
        RoleKind::ProxyLeader,
        RoleKind::Acceptor,
        RoleKind::Replica,
        RoleKind::Unbatcher,
        RoleKind::Gateway,
    ];

    /// The role named `name` (as [`RoleKind::name`] spells it).
    pub fn from_name(name: &str) -> Option<RoleKind> {
        RoleKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The role's name as used on the command line and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            RoleKind::Client => "client",
            RoleKind::Batcher => "batcher",
            RoleKind::Proposer => "proposer",
            RoleKind::ProxyLeader => "proxy-leader",
            RoleKind::Acceptor => "acceptor",
            RoleKind::Replica => "replica",
            RoleKind::Unbatcher => "unbatcher",
            RoleKind::Gateway => "gateway",
        }
    }
}

/// A configuration the protocol cannot run with. Each variant names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `f` must be at least 1 for the cluster to tolerate any failure.
    #[error("f must be at least 1 (got {0})")]
    FTooSmall(usize),
    /// A role has fewer nodes than fault tolerance requires.
    #[error("{role}: need at least {need} for f={f}, got {got}")]
    TooFewNodes { role: &'static str, need: usize, got: usize, f: usize },
    /// Acceptor group `group` does not have exactly 2f+1 members.
    #[error("acceptor group {group}: need exactly {need} acceptors (2f+1), got {got}")]
    GroupSize { group: usize, need: usize, got: usize },
    /// The same node id appears twice.
    #[error("node id {0} is used more than once")]
    DuplicateId(NodeId),
    /// A tunable is out of its range.
    #[error("{field}: {why}")]
    Tunable { field: &'static str, why: &'static str },
}

/// The membership of a cluster: which node plays which role. Ids are unique across roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Failures tolerated: f+1 proposers, 2f+1 acceptors per group, f+1 replicas.
    pub f: usize,
    /// The proposers; one of them leads at a time.
    pub proposers: Vec<NodeId>,
    /// `G` acceptor groups of 2f+1: the configuration of epoch 0 (changes go through the log, see
    /// `configuration`).
    pub acceptor_groups: Vec<Vec<NodeId>>,
    /// Stateless Phase 2 workers.
    pub proxy_leaders: Vec<NodeId>,
    /// Executors of the log.
    pub replicas: Vec<NodeId>,
    /// Batchers; empty means clients send straight to the leader.
    pub batchers: Vec<NodeId>,
    /// Reply splitters; at least one.
    pub unbatchers: Vec<NodeId>,
}

impl ClusterConfig {
    /// Checks the fault-tolerance minimums and id uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = self.f;
        if f < 1 {
            return Err(ConfigError::FTooSmall(f));
        }
        let minimums = [
            ("proposers", self.proposers.len(), f + 1),
            ("acceptor_groups", self.acceptor_groups.len(), 1),
            ("proxy_leaders", self.proxy_leaders.len(), 1),
            ("replicas", self.replicas.len(), f + 1),
            ("unbatchers", self.unbatchers.len(), 1),
        ];
        for (role, got, need) in minimums {
            if got < need {
                return Err(ConfigError::TooFewNodes { role, need, got, f });
            }
        }
        for (group, members) in self.acceptor_groups.iter().enumerate() {
            if members.len() != 2 * f + 1 {
                return Err(ConfigError::GroupSize { group, need: 2 * f + 1, got: members.len() });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in self.all_nodes().map(|(id, _)| id) {
            if !seen.insert(id) {
                return Err(ConfigError::DuplicateId(id));
            }
        }
        Ok(())
    }

    /// Every configured node with its role (clients are not part of the configuration).
    pub fn all_nodes(&self) -> impl Iterator<Item = (NodeId, RoleKind)> + '_ {
        fn tag(ids: &[NodeId], kind: RoleKind) -> impl Iterator<Item = (NodeId, RoleKind)> + '_ {
            ids.iter().map(move |&id| (id, kind))
        }
        tag(&self.proposers, RoleKind::Proposer)
            .chain(self.acceptor_groups.iter().flat_map(|g| tag(g, RoleKind::Acceptor)))
            .chain(tag(&self.proxy_leaders, RoleKind::ProxyLeader))
            .chain(tag(&self.replicas, RoleKind::Replica))
            .chain(tag(&self.batchers, RoleKind::Batcher))
            .chain(tag(&self.unbatchers, RoleKind::Unbatcher))
    }

    /// A quorum: f+1 of a group's 2f+1 acceptors.
    pub fn quorum(&self) -> usize {
        self.f + 1
    }

    /// Every acceptor of every group.
    pub fn all_acceptors(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.acceptor_groups.iter().flatten().copied()
    }

    /// A small f=1 cluster with ids 1.. : 2 proposers, `groups` groups of 3 acceptors, the given
    /// numbers of proxy leaders, batchers and unbatchers, 2 replicas. Used by tests, the simulator
    /// and `autopaxos local`.
    pub fn f1(groups: usize, proxy_leaders: usize, batchers: usize, unbatchers: usize) -> Self {
        Self::with_f(1, groups, proxy_leaders, batchers, unbatchers)
    }

    /// As [`ClusterConfig::f1`] for any `f`: f+1 proposers, `groups` groups of 2f+1 acceptors, f+1
    /// replicas, ids from 1 in that order, then proxy leaders, batchers and unbatchers.
    pub fn with_f(f: usize, groups: usize, proxy_leaders: usize, batchers: usize, unbatchers: usize) -> Self {
        let mut next = 1;
        let mut take = |n: usize| -> Vec<NodeId> {
            let ids = (next..next + n as NodeId).collect();
            next += n as NodeId;
            ids
        };
        ClusterConfig {
            f,
            proposers: take(f + 1),
            acceptor_groups: (0..groups).map(|_| take(2 * f + 1)).collect(),
            proxy_leaders: take(proxy_leaders),
            replicas: take(f + 1),
            batchers: take(batchers),
            unbatchers: take(unbatchers),
        }
    }
}

/// Protocol settings. Durations are microseconds and say so in their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    /// A batcher sends a batch once it holds this many commands.
    pub batch_size: usize,
    /// ...or once its oldest command has waited this long.
    pub flush_interval_us: Time,
    /// The leader's heartbeat period.
    pub heartbeat_interval_us: Time,
    /// A follower that hears no heartbeat for this long (plus up to the same again of jitter) runs for leader.
    pub election_timeout_us: Time,
    /// Slots the leader may have proposed but not yet seen executed; beyond it, batches wait (backpressure).
    pub max_in_flight_slots: usize,
    /// The leader reports itself full (to batchers, `LeaderLoad`) once its window is full and this
    /// many batches wait behind it (enough queued to refill the window as slots execute), and no
    /// longer once half of them left.
    pub leader_full_waiting_batches: usize,
    /// Batches the leader holds waiting for room in its window, at most. At the bound it hands a
    /// new batch back to its batcher unproposed (`BatchBusy`), which holds it: nothing admitted is
    /// dropped. Batchers stop sending at `leader_full_waiting_batches`, so this is rarely reached.
    pub max_waiting_batches: usize,
    /// Batches a batcher holds while the leader is full, at most. At the bound (and the leader
    /// full) a new request is refused at once with `Busy`: never batched, so the client may retry
    /// it. Batches the leader hands back are held even past the bound (they hold admitted commands).
    pub batcher_max_held_batches: usize,
    /// A client refused with `Busy` waits this long before it sends again, doubled per refusal in a
    /// row (up to 256 times), with jitter: a random half of it.
    pub client_busy_backoff_us: Time,
    /// The leader re-proposes a slot not executed after this long; a proxy leader resends Phase2a after it.
    pub resend_timeout_us: Time,
    /// A client resends an unanswered request (to the next batcher) after this long.
    pub client_retry_timeout_us: Time,
    /// Replicas report their executed watermark this often.
    pub replica_report_interval_us: Time,
    /// An acceptor's Phase1b carries at most about this many bytes of accepted values per page.
    pub phase1b_page_bytes: usize,
    /// A durable replica snapshots its whole state every this many executed slots; the executed
    /// values since the last snapshot are its log (replayed at restart, so this bounds replay time).
    pub replica_snapshot_interval_slots: u64,
    /// A replica writes the image of a snapshot (periodic, or to teach) this many bytes per turn,
    /// executing between turns: a big state's image never stops execution for long.
    pub snapshot_slice_bytes: u64,
    /// ...and waits this long between slices (0: only for what is queued). A pause spreads a
    /// big image's cost over time; building takes longer.
    pub snapshot_slice_pause_us: Time,
    /// A periodic snapshot whose state machine image is at most this long is written whole in the
    /// turn of its freeze (about 3 ms per MiB), so the live store copies no partition for it;
    /// sliced, the commands between slices copy nearly every partition (random keys touch them all
    /// within a few batches), which cost more than writing the image at once. 0: always sliced.
    pub snapshot_at_once_bytes: u64,
    /// Executed slots a replica keeps to teach a lagging peer by log segment, and the leader lets
    /// acceptors keep, at most; beyond it they trim even if a replica is behind (it then learns by
    /// snapshot).
    pub teach_retention_slots: u64,
    /// ...and at most this many bytes of values (replicas).
    pub teach_retention_bytes: u64,
    /// A teacher ships the missing log segment when its values weigh at most this percentage of
    /// the state; otherwise a snapshot of the state.
    pub teach_log_max_percent_of_state: u64,
    /// Bytes of one snapshot chunk.
    pub teach_chunk_bytes: u64,
    /// Snapshot chunks a learner has asked for and not yet received, at most (flow control).
    pub teach_window_chunks: u64,
    /// A learner asks for log segments at most this many slots per second; 0: as fast as it
    /// applies them. Catching up costs a replica about as much CPU per slot as executing; where
    /// nodes share cores, a cap keeps it from starving the live load (and makes it slower).
    pub teach_max_slots_per_sec: u64,
    /// A learner asks for log segments at most this percentage of the rate its peers execute
    /// at (measured over the last second), so that catching up costs the live load a bounded
    /// share: at 150 it gains half the live rate on its peers. 0: no such pace. Above 100 or 0.
    pub teach_pace_percent_of_live: u64,
    /// ...but never slower than this many slots per second (an idle cluster has no live rate).
    pub teach_min_slots_per_sec: u64,
    /// ...and snapshot chunks at most this many bytes per second (after a first window); 0: no
    /// cap. The same trade for a snapshot: the learner's install and the teacher's sends.
    pub teach_max_bytes_per_sec: u64,
    /// A replica that has not reported its watermark for this long is taken for down: the leader's
    /// trim point follows the replicas that are up, and the other replicas answer its slots'
    /// clients.
    pub replica_down_after_us: Time,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            batch_size: 100,
            flush_interval_us: 1_000,
            heartbeat_interval_us: 20_000,
            election_timeout_us: 150_000,
            max_in_flight_slots: 1_000,
            leader_full_waiting_batches: 64,
            max_waiting_batches: 1_024,
            batcher_max_held_batches: 16,
            client_busy_backoff_us: 1_000,
            resend_timeout_us: 50_000,
            client_retry_timeout_us: 200_000,
            replica_report_interval_us: 10_000,
            phase1b_page_bytes: 256 * 1024,
            replica_snapshot_interval_slots: 20_000,
            snapshot_slice_bytes: 1 << 20,
            snapshot_slice_pause_us: 0,
            snapshot_at_once_bytes: 8 << 20,
            // About 500 MB of batches of 100 small commands: fits a c5.xlarge (8 GiB) with room.
            teach_retention_slots: 100_000,
            teach_retention_bytes: 512 << 20,
            teach_log_max_percent_of_state: 50,
            teach_chunk_bytes: 256 << 10,
            teach_window_chunks: 4,
            teach_max_slots_per_sec: 0,
            teach_pace_percent_of_live: 150,
            teach_min_slots_per_sec: 2_000,
            teach_max_bytes_per_sec: 0,
            replica_down_after_us: 500_000,
        }
    }
}

/// Upper bound on `batch_size`: larger batches would exceed a sensible frame size.
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Upper bound on `max_in_flight_slots`.
pub const MAX_IN_FLIGHT_SLOTS: usize = 100_000;
/// Upper bound on `max_waiting_batches` (and so on the batches a leader holds outside its window).
pub const MAX_WAITING_BATCHES: usize = 100_000;
/// Upper bound on `batcher_max_held_batches`.
pub const MAX_HELD_BATCHES: usize = 10_000;

impl Tunables {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, why| Err(ConfigError::Tunable { field, why });
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return bad("batch_size", "must be between 1 and 10000");
        }
        if self.max_in_flight_slots == 0 || self.max_in_flight_slots > MAX_IN_FLIGHT_SLOTS {
            return bad("max_in_flight_slots", "must be between 1 and 100000");
        }
        if self.max_waiting_batches == 0 || self.max_waiting_batches > MAX_WAITING_BATCHES {
            return bad("max_waiting_batches", "must be between 1 and 100000");
        }
        if self.leader_full_waiting_batches >= self.max_waiting_batches {
            return bad("leader_full_waiting_batches", "must be below max_waiting_batches");
        }
        if self.batcher_max_held_batches > MAX_HELD_BATCHES {
            return bad("batcher_max_held_batches", "must be at most 10000");
        }
        if self.phase1b_page_bytes == 0 || self.phase1b_page_bytes > 512 * 1024 {
            return bad("phase1b_page_bytes", "must be between 1 and 524288 (a page must fit a frame)");
        }
        if self.replica_snapshot_interval_slots == 0 {
            return bad("replica_snapshot_interval_slots", "must be positive");
        }
        if self.heartbeat_interval_us == 0 {
            return bad("heartbeat_interval_us", "must be positive");
        }
        if self.election_timeout_us < 2 * self.heartbeat_interval_us {
            return bad("election_timeout_us", "must be at least twice heartbeat_interval_us");
        }
        if self.teach_chunk_bytes == 0 || self.teach_chunk_bytes > 1 << 20 {
            return bad("teach_chunk_bytes", "must be between 1 and 1048576 (a chunk must fit a frame)");
        }
        if matches!(self.teach_pace_percent_of_live, 1..=100) {
            return bad(
                "teach_pace_percent_of_live",
                "must be 0 (no pace) or above 100 (a learner must gain on its peers)",
            );
        }
        for (field, v) in [
            ("teach_min_slots_per_sec", self.teach_min_slots_per_sec),
            ("teach_retention_slots", self.teach_retention_slots),
            ("teach_retention_bytes", self.teach_retention_bytes),
            ("teach_window_chunks", self.teach_window_chunks),
            ("snapshot_slice_bytes", self.snapshot_slice_bytes),
            ("replica_down_after_us", self.replica_down_after_us),
            ("flush_interval_us", self.flush_interval_us),
            ("resend_timeout_us", self.resend_timeout_us),
            ("client_retry_timeout_us", self.client_retry_timeout_us),
            ("client_busy_backoff_us", self.client_busy_backoff_us),
            ("replica_report_interval_us", self.replica_report_interval_us),
        ] {
            if v == 0 {
                return bad(field, "must be positive");
            }
        }
        // Times are added to the clock: a "forever" near u64::MAX wrapped and acted as zero (a
        // resend storm from resend_timeout_us = 18446744073709551615).
        for (field, v) in [
            ("flush_interval_us", self.flush_interval_us),
            ("heartbeat_interval_us", self.heartbeat_interval_us),
            ("election_timeout_us", self.election_timeout_us),
            ("client_busy_backoff_us", self.client_busy_backoff_us),
            ("resend_timeout_us", self.resend_timeout_us),
            ("client_retry_timeout_us", self.client_retry_timeout_us),
            ("replica_report_interval_us", self.replica_report_interval_us),
            ("snapshot_slice_pause_us", self.snapshot_slice_pause_us),
            ("replica_down_after_us", self.replica_down_after_us),
        ] {
            if v > MAX_TIME_SETTING_US {
                return bad(field, "must be at most 86400000000 (a day)");
            }
        }
        Ok(())
    }
}

/// The longest time a `*_us` setting may name: a day.
pub const MAX_TIME_SETTING_US: Time = 86_400_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_listed_once_and_names_round_trip() {
        // Exhaustive on purpose: a new RoleKind stops this compiling until ALL has it too.
        let index = |r: RoleKind| match r {
            RoleKind::Client => 0,
            RoleKind::Batcher => 1,
            RoleKind::Proposer => 2,
            RoleKind::ProxyLeader => 3,
            RoleKind::Acceptor => 4,
            RoleKind::Replica => 5,
            RoleKind::Unbatcher => 6,
            RoleKind::Gateway => 7,
        };
        assert!(RoleKind::ALL.iter().enumerate().all(|(i, &r)| index(r) == i));
        assert!(RoleKind::ALL.iter().all(|&r| RoleKind::from_name(r.name()) == Some(r)));
        assert_eq!(RoleKind::from_name("leader"), None);
    }

    #[test]
    fn f1_cluster_is_valid_and_ids_are_unique() {
        let c = ClusterConfig::f1(2, 2, 1, 1);
        c.validate().unwrap();
        assert_eq!(c.all_nodes().count(), 2 + 6 + 2 + 2 + 1 + 1);
        Tunables::default().validate().unwrap();
    }

    #[test]
    fn bad_configurations_name_what_is_wrong() {
        let mut c = ClusterConfig::f1(1, 1, 1, 1);
        c.replicas.pop();
        assert_eq!(c.validate(), Err(ConfigError::TooFewNodes { role: "replicas", need: 2, got: 1, f: 1 }));
        let mut c = ClusterConfig::f1(1, 1, 1, 1);
        c.acceptor_groups[0].pop();
        assert!(matches!(c.validate(), Err(ConfigError::GroupSize { group: 0, .. })));
        let mut c = ClusterConfig::f1(1, 1, 1, 1);
        c.unbatchers[0] = c.proposers[0];
        assert_eq!(c.validate(), Err(ConfigError::DuplicateId(c.proposers[0])));
        let t = Tunables { batch_size: 0, ..Tunables::default() };
        assert!(t.validate().unwrap_err().to_string().starts_with("batch_size"));
        // A time too long to add to the clock is refused, not wrapped into a resend storm.
        let t = Tunables { resend_timeout_us: u64::MAX, ..Tunables::default() };
        assert!(
            t.validate().unwrap_err().to_string().starts_with("resend_timeout_us: must be at most"),
            "{t:?}"
        );
        assert!(Tunables { resend_timeout_us: MAX_TIME_SETTING_US, ..Tunables::default() }
            .validate()
            .is_ok());
    }
}
