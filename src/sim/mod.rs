//! The deterministic simulator: drives the very same role structs as the runtime, over a virtual
//! network with virtual time and one seeded generator, so that a seed replays a whole cluster run
//! exactly (TigerBeetle's VOPR is the model). Faults: per-link delay, loss, duplication and
//! reordering; partitions, one-way included; crashes and restarts. A crash loses a node's memory,
//! whatever its role; acceptors and replicas have a simulated disk (`disk`) that keeps only what a
//! sync covered (plus, maybe, a torn prefix of what was written after), and a restart rebuilds the
//! role from that disk alone, through the same birthplace as the runtime (`protocol::birth`). Disk
//! faults: crashes between write and sync, torn tail writes, and a rare corrupted record that the
//! restarting node must detect (it then stays down, as a real node refuses to start).
//! Checkers watch every event (`checker`), the client history is checked for linearizability at the
//! end (`linearizability`), and after the faults stop every request must complete in bounded time.
//!
//! Must never: read the clock or OS randomness; iterate a randomly seeded hash map.

pub mod checker;
pub mod disk;
pub mod linearizability;
pub mod network;
pub mod workload;

use crate::protocol::birth::{self, RoleSpec};
use crate::protocol::client::Client;
use crate::protocol::client_mux::ClientMux;
use crate::protocol::configuration::Configuration;
use crate::protocol::durable::{keeps_state, Record, Recovered, Storage};
use crate::protocol::messages::client_id;
use crate::protocol::state_machine::kv::{KvOp, KvResult, KvStore};
use crate::protocol::state_machine::{HashKey, StateMachineKind};
use crate::protocol::{ClusterConfig, Event, Msg, NodeId, Out, Role, RoleKind, Time, Tunables};
use checker::Checker;
use disk::SimDisk;
use linearizability::{check_partitioned, Operation, Verdict};
use network::{Fault, FaultLevel, LinkModel, Partitions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::io::Write;
use workload::{KvModel, Workload};

/// The shape of one simulated run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// How hostile the network and the nodes are.
    pub faults: FaultLevel,
    /// Closed-loop clients.
    pub clients: usize,
    /// Faults happen during this first part of the run.
    pub fault_phase_us: Time,
    /// Each client's mean pause between requests during the fault phase.
    pub think_time_us: Time,
    /// Requests each client makes once the faults have stopped.
    pub requests_after_healing: usize,
    /// After the faults stop, every request must complete within this much virtual time.
    pub liveness_bound_us: Time,
    /// Steps the linearizability search may take per partition before it says "inconclusive".
    pub linearizability_budget: u64,
    /// Faults to inject instead of random ones (for scenario tests); each must be undone before the
    /// fault phase ends. Node ids are those of [`ClusterConfig::f1`].
    pub scripted_faults: Option<Vec<(Time, Fault)>>,
    /// The cluster's shape instead of one drawn from the seed: (acceptor groups, proxy leaders,
    /// batchers, unbatchers).
    pub shape: Option<(usize, usize, usize, usize)>,
    /// Membership churn during the fault phase: stateless nodes join the running cluster, and others
    /// are told to leave (drain, report `Left`, then stop for good). Every leave must complete.
    pub churn: bool,
    /// Failures tolerated; `None`: drawn from the seed (1, 2 or 3; always 1 with scripted faults,
    /// whose node ids are those of [`ClusterConfig::f1`]).
    pub f: Option<usize>,
    /// Frequent changes of acceptor configuration (heavy faults make a few anyway): groups added
    /// and removed, acceptors replaced, by an operator who waits for each to be chosen.
    pub reconfig: bool,
    /// Clients also send `Batch` ops (a RESP gateway's pipelines; see [`Workload::new`]).
    pub batches: bool,
}

impl SimOptions {
    /// The standard run for a fault level.
    pub fn new(faults: FaultLevel) -> Self {
        SimOptions {
            faults,
            clients: 4,
            fault_phase_us: 2_000_000,
            think_time_us: 40_000,
            requests_after_healing: 3,
            liveness_bound_us: 5_000_000,
            linearizability_budget: 20_000_000,
            scripted_faults: None,
            shape: None,
            churn: false,
            f: None,
            reconfig: false,
            batches: false,
        }
    }
}

/// What one seed's run found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The seed that replays this run.
    pub seed: u64,
    /// Every safety or liveness violation; empty means the run passed.
    pub violations: Vec<String>,
    /// The linearizability search ran out of budget (neither a pass nor a violation).
    pub inconclusive: bool,
    /// Client requests completed.
    pub completed: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Times a proposer became leader.
    pub elections: u64,
    /// Client requests refused with `Busy` for good (overload shed at a batcher).
    pub refused: usize,
    /// Slots known chosen.
    pub chosen_slots: usize,
    /// Virtual time at the end of the run.
    pub end_us: Time,
    /// Stateless nodes that joined the running cluster.
    pub joined: usize,
    /// Stateless nodes that drained and left.
    pub left: usize,
    /// Messages that reached a node after it had left (sent before the sender learned; lost, as
    /// they would be on a stopped machine, and recovered by the protocol's resends).
    pub after_left: u64,
    /// Failures tolerated in this run.
    pub f: usize,
    /// The faults this run injected, and what teaching did about them.
    pub faults: FaultCounts,
}

/// What the faults of a run (or of many) came to: the disk's, and teaching's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Node crashes.
    pub crashes: u64,
    /// Crashes that left a partly written record at the end of a log.
    pub torn_writes: u64,
    /// Writes issued and lost in a crash before any sync covered them.
    pub lost_writes: u64,
    /// Snapshot files a crash cut short (the node restarted from the one before).
    pub lost_snapshots: u64,
    /// Corrupted records that a restarting node detected (it then refused to start).
    pub corrupt_detected: u64,
    /// Replicas restarted with an empty disk (a replacement machine, a wiped disk).
    pub wiped: u64,
    /// Snapshots that replicas were taught and installed.
    pub installed: u64,
    /// Replicas that crashed right after sending a snapshot chunk, mid-transfer.
    pub teachers_crashed: u64,
    /// Snapshot chunks that a byte flip damaged on their way.
    pub chunks_corrupted: u64,
    /// Slots replicas read from their acceptor group (no peer replica could teach them).
    pub slot_reads: u64,
    /// Changes of configuration the operator asked for and the log chose.
    pub reconfigs: u64,
    /// ...of which changed the replicas (added, removed or replaced one).
    pub replica_changes: u64,
    /// ...of which changed the proposers (added or replaced one)...
    pub proposer_changes: u64,
    /// ...of which replaced the leader.
    pub leaders_replaced: u64,
    /// Nodes crashed while a change that adds or removes them was under way.
    pub reconfig_crashes: u64,
    /// Processes paused (stopped, then run again with what waited for them).
    pub pauses: u64,
    /// Syncs slowed by a slow disk (tens of milliseconds, longer than a resend timeout).
    pub slow_syncs: u64,
    /// Links cut both ways while both ends reached everyone else (two proposers, often).
    pub link_cuts: u64,
    /// Snapshot files whose writing failed (a full disk for a while) and was retried until it
    /// succeeded, seconds later.
    pub snapshots_retried: u64,
}

impl FaultCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.crashes += other.crashes;
        self.torn_writes += other.torn_writes;
        self.lost_writes += other.lost_writes;
        self.lost_snapshots += other.lost_snapshots;
        self.corrupt_detected += other.corrupt_detected;
        self.wiped += other.wiped;
        self.installed += other.installed;
        self.teachers_crashed += other.teachers_crashed;
        self.chunks_corrupted += other.chunks_corrupted;
        self.slot_reads += other.slot_reads;
        self.reconfigs += other.reconfigs;
        self.replica_changes += other.replica_changes;
        self.proposer_changes += other.proposer_changes;
        self.leaders_replaced += other.leaders_replaced;
        self.reconfig_crashes += other.reconfig_crashes;
        self.pauses += other.pauses;
        self.slow_syncs += other.slow_syncs;
        self.link_cuts += other.link_cuts;
        self.snapshots_retried += other.snapshots_retried;
    }
}

/// The form of `sim`'s summary line: `crashes …, torn writes …, …, slots read from acceptors …`.
impl std::fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "crashes {}, torn writes {}, lost unsynced writes {}, snapshots cut short {}, corrupt records detected {}, disks wiped {}, \
             snapshots taught {}, teachers crashed mid-transfer {}, chunks corrupted {}, slots read from acceptors {}, \
             configurations changed {} (replicas {}, proposers {}, leaders replaced {}), nodes crashed mid-change {}, pauses {}, slow syncs {}, links cut {}, snapshots retried {}",
            self.crashes,
            self.torn_writes,
            self.lost_writes,
            self.lost_snapshots,
            self.corrupt_detected,
            self.wiped,
            self.installed,
            self.teachers_crashed,
            self.chunks_corrupted,
            self.slot_reads,
            self.reconfigs,
            self.replica_changes,
            self.proposer_changes,
            self.leaders_replaced,
            self.reconfig_crashes,
            self.pauses,
            self.slow_syncs,
            self.link_cuts,
            self.snapshots_retried
        )
    }
}

enum Member {
    Client(Box<ClientMux>),
    Node(Box<dyn Role>),
}

impl Member {
    fn role(&mut self) -> &mut dyn Role {
        match self {
            Member::Client(c) => c.as_mut(),
            Member::Node(o) => o.as_mut(),
        }
    }

    fn role_ref(&self) -> &dyn Role {
        match self {
            Member::Client(c) => c.as_ref(),
            Member::Node(o) => o.as_ref(),
        }
    }
}

struct SimNode {
    kind: RoleKind,
    member: Member,
    up: bool,
    restarts: u64,
    /// Joined the running cluster (not in the configuration): rebuilt as a joiner after a crash.
    joined: bool,
    /// Drained and left: stopped for good.
    left: bool,
    /// Acceptors and replicas: the disk the role is rebuilt from after a crash.
    disk: Option<SimDisk>,
    /// Messages waiting for the next sync (`Out::after_persist`), and the votes the checker counts
    /// only once they are durable.
    held: Vec<(NodeId, Msg)>,
    held_events: Vec<Event>,
    /// The sync in flight: how many writes, held messages and held events it covers.
    sync: Option<(usize, usize, usize)>,
    /// A snapshot file is being written (they are written one at a time, in order).
    saving_snapshot: bool,
    /// Bumped by every crash, so that a sync that was in flight then completes into nothing.
    incarnation: u64,
    /// Refused to start on a corrupted log: down for good.
    dead: bool,
    /// Its disk holds a corrupted record (it will refuse to start).
    corrupted: bool,
    /// A crash is due as soon as the node next writes (a crash between write and sync).
    crash_on_write: bool,
    /// Stopped (not crashed): deliveries and completed syncs wait in `waiting` until it resumes.
    paused: bool,
    waiting: Vec<Pending>,
}

impl SimNode {
    fn new(kind: RoleKind, member: Member, joined: bool) -> Self {
        let disk = keeps_state(kind).then(SimDisk::default);
        SimNode {
            kind,
            member,
            up: true,
            restarts: 0,
            joined,
            left: false,
            disk,
            held: Vec::new(),
            held_events: Vec::new(),
            sync: None,
            saving_snapshot: false,
            incarnation: 0,
            dead: false,
            corrupted: false,
            crash_on_write: false,
            paused: false,
            waiting: Vec::new(),
        }
    }
}

/// Every slot below this is executed in the replica a restart would rebuild from `disk`: its
/// snapshot's slot, then the executed values after it without a gap (none if the disk is damaged).
fn durable_watermark(disk: &SimDisk) -> Option<crate::protocol::Slot> {
    let recovered = disk.clone().recover().ok()?;
    let mut watermark = recovered.snapshot.map_or(0, |(slot, _)| slot);
    let executed: BTreeSet<crate::protocol::Slot> = (recovered.records.iter())
        .filter_map(|r| match r {
            Record::Executed { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect();
    while executed.contains(&watermark) {
        watermark += 1;
    }
    Some(watermark)
}

struct ClientDriver {
    workload: Workload,
    issued: u64,
    /// Requests still to make after healing.
    after_healing: usize,
    /// Index into the history of the outstanding request.
    outstanding: Option<usize>,
}

enum Pending {
    Deliver {
        from: NodeId,
        to: NodeId,
        msg: Msg,
    },
    Fault(Fault),
    ClientWake(NodeId),
    EndFaults,
    /// A new stateless node of this role starts and joins.
    Join(RoleKind),
    /// The operator asks this node to leave (again, until it reports `Left`).
    Leave(NodeId),
    /// The operator starts the next change of configuration, or repeats the one under way.
    Reconfigure,
    /// A sync of `node`'s disk completes (if the node has not crashed since it began).
    Synced {
        node: NodeId,
        incarnation: u64,
    },
    /// The oldest snapshot file `node` is writing is durable (if it has not crashed since).
    SnapshotSaved {
        node: NodeId,
        incarnation: u64,
    },
}

struct Scheduled {
    at: Time,
    seq: u64,
    what: Pending,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated cluster run.
pub struct Simulator<'t> {
    seed: u64,
    opts: SimOptions,
    cluster: ClusterConfig,
    tunables: Tunables,
    rng: ChaCha8Rng,
    now: Time,
    next_seq: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: BTreeMap<NodeId, ClientDriver>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    link: LinkModel,
    partitions: Partitions,
    faults_on: bool,
    checker: Checker,
    history: Vec<Operation<KvOp, KvResult>>,
    /// History entries refused with `Busy` for good: left out of the linearizability check.
    refused_ops: BTreeSet<usize>,
    /// (client, seq) of each history entry.
    history_ids: Vec<(u64, u64)>,
    stamp: u64,
    /// Events processed, bounded by `MAX_STEPS`.
    steps: u64,
    trace: Option<&'t mut dyn Write>,
    outcome: Outcome,
    /// Nodes the operator asked to leave.
    leaves_asked: std::collections::BTreeSet<NodeId>,
    /// Disk timing and faults, from a stream of their own.
    disk_rng: ChaCha8Rng,
    /// Chance that a crash of an acceptor also corrupts a record of its log (0 for most seeds).
    corruption_rate: f64,
    /// Teaching faults, from their own stream: wiped replica disks, teachers crashing mid-transfer.
    teach_rng: ChaCha8Rng,
    /// Whether a resumed node's overdue timers or its waiting messages go first.
    pause_order_rng: ChaCha8Rng,
    /// How long each snapshot file takes to write.
    snapshot_rng: ChaCha8Rng,
    /// In some heavy seeds the disk is full now and then while faults are on: writing a snapshot
    /// file fails and the driver tries again until it succeeds, so it is durable seconds later
    /// (its own stream, so older seeds keep their draws).
    full_disk_rng: Option<ChaCha8Rng>,
    /// In some heavy seeds the disks are slow while faults are on: each sync takes tens of
    /// milliseconds more (a throttled or overloaded volume), longer than a resend timeout.
    slow_disk_rng: Option<ChaCha8Rng>,
    /// Chance that a restarting replica finds its disk empty (0 for most seeds).
    wipe_rate: f64,
    /// Heavy faults, not scripted: teaching's faults are on.
    teach_faults_on: bool,
    /// Changes of configuration: their own stream, the ones still to make, the one under way.
    reconfig_rng: ChaCha8Rng,
    reconfigs_left: u32,
    reconfig_target: Option<Configuration>,
    /// Acceptors brought in by changes so far.
    new_nodes: NodeId,
    /// What the change under way changes.
    reconfig_kind: ChangeKind,
}

/// Derives an independent seed for one purpose from the run's seed (splitmix64).
fn derive_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The run's KV hash key: every replica's, a function of the seed so that a seed replays exactly.
fn hash_key(seed: u64) -> HashKey {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&derive_seed(seed, 0x4a54_0001).to_le_bytes());
    bytes[8..].copy_from_slice(&derive_seed(seed, 0x4a54_0002).to_le_bytes());
    HashKey::from_bytes(bytes)
}

const CLIENT_ID_BASE: NodeId = 1000;
/// Ids of nodes that join the running cluster.
const JOINED_ID_BASE: NodeId = 500;
/// What a change of configuration changes, for the summary's counts.
#[derive(Debug, Clone, Copy)]
enum ChangeKind {
    Acceptors,
    Replicas,
    /// `leader`: the proposer replaced was leading when the change was asked for.
    Proposers {
        leader: bool,
    },
}

/// The operator (or autoscaler) that asks nodes to leave.
const OPERATOR: NodeId = 900;
/// Ids of acceptors, replicas and proposers that changes of configuration bring in.
const NEW_NODE_ID_BASE: NodeId = 600;
/// How often the operator repeats a change of configuration that is not yet chosen.
const RECONFIG_RETRY_US: Time = 300_000;
/// How often the operator repeats a request to leave that has not completed.
const LEAVE_RETRY_US: Time = 300_000;
/// A run takes a few thousand events; this many means something re-arms itself without end.
const MAX_STEPS: u64 = 5_000_000;

impl<'t> Simulator<'t> {
    /// Builds the run of `seed`: the cluster's shape and tunables are drawn from the seed too, so that
    /// seeds cover batching or none, one or two acceptor groups, narrow or wide in-flight windows.
    pub fn new(seed: u64, opts: SimOptions, trace: Option<&'t mut dyn Write>) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Drawn even when a shape is given, so that the rest of the run draws the same numbers.
        let drawn = (
            rng.gen_range(1..=2),
            rng.gen_range(1..=2),
            [0, 1, 2][rng.gen_range(0..3)],
            rng.gen_range(1..=2),
        );
        let (groups, proxies, batchers, unbatchers) = opts.shape.unwrap_or(drawn);
        // Drawn from their own streams, so that adding them did not change what the draws above mean.
        let mut shape = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xf));
        let drawn_f = [1, 1, 2, 3][shape.gen_range(0..4)];
        let f = if opts.scripted_faults.is_some() { 1 } else { opts.f.unwrap_or(drawn_f) };
        let mut disk_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xd15c));
        // A stream of its own, so that older seeds keep their draws.
        let mut slow_disk_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x5105));
        let slow_disks =
            opts.faults == FaultLevel::Heavy && opts.scripted_faults.is_none() && slow_disk_rng.gen_bool(0.2);
        let slow_disk_rng = slow_disks.then_some(slow_disk_rng);
        let mut full_disk_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xf011));
        let full_disks = opts.faults == FaultLevel::Heavy
            && opts.scripted_faults.is_none()
            && full_disk_rng.gen_bool(0.25);
        let full_disk_rng = full_disks.then_some(full_disk_rng);
        let corruption_rate = if disk_rng.gen_bool(0.3) { 0.2 } else { 0.0 };
        let snapshot_interval = [3, 16, 20_000][disk_rng.gen_range(0..3)];
        let cluster = ClusterConfig::with_f(f, groups, proxies, batchers, unbatchers);
        cluster.validate().expect("the simulator builds valid clusters");
        // Drawn from its own stream so that adding it did not change what older seeds mean: tiny
        // pages make every election page through the acceptors' logs.
        let mut pages = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x9a9e));
        // Teaching, from its own stream: small retention budgets and chunks make replicas that were
        // down or wiped learn by snapshot, in many chunks, within a short run.
        let mut teach_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x7eac));
        let wipe_rate = if teach_rng.gen_bool(0.3) { 0.5 } else { 0.0 };
        let teach_retention_slots = [4, 30, 100_000][teach_rng.gen_range(0..3)];
        let teach_chunk_bytes = [64, 1024, 256 << 10][teach_rng.gen_range(0..3)];
        let teach_window_chunks = [1, 4][teach_rng.gen_range(0..2)];
        let replica_down_after_us = [300_000, 2_000_000][teach_rng.gen_range(0..2)];
        // Pacing and image slicing (a stream of its own again, so older seeds keep their draws).
        let mut pace_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x9ace));
        let teach_max_slots_per_sec = [0, 0, 100, 2_000][pace_rng.gen_range(0..4)];
        // Images of a few bytes per turn, turns apart: snapshots are built while replicas execute
        // (the simulator's turns take no time, the runtime's do).
        let snapshot_slice_bytes = [16, 1 << 20][pace_rng.gen_range(0..2)];
        let snapshot_slice_pause_us = [0, 300][pace_rng.gen_range(0..2)];
        let teach_max_bytes_per_sec = [0, 0, 20_000, 1 << 20][pace_rng.gen_range(0..4)];
        // Learning paced by the live rate (its own stream: older seeds keep their draws), with
        // floors from a crawl to no pace in a short run.
        let mut live_pace_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x11fe));
        let teach_pace_percent_of_live = [0, 101, 150][live_pace_rng.gen_range(0..3)];
        let teach_min_slots_per_sec = [20, 2_000][live_pace_rng.gen_range(0..2)];
        // Periodic images written whole when frozen, or sliced like the others (a stream of its
        // own: older seeds keep their draws).
        let snapshot_at_once_bytes =
            [0, 8 << 20][ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xa70c)).gen_range(0..2)];
        // Changes of configuration (their own stream): a few under heavy faults, many with
        // `--reconfig`.
        let mut reconfig_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xc0f1));
        let heavy = opts.faults == FaultLevel::Heavy && opts.scripted_faults.is_none();
        let reconfigs_left = match (opts.reconfig, heavy) {
            (true, _) => reconfig_rng.gen_range(3..=6),
            (false, true) => [0, 0, 1, 2][reconfig_rng.gen_range(0..4)],
            (false, false) => 0,
        };
        // Overload (a stream of its own, so older seeds keep their draws): tight bounds in most
        // runs, so that leaders report full, batchers hold and shed, and clients back off.
        let mut busy_rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xb05e));
        let leader_full_waiting_batches = [0, 1, 16][busy_rng.gen_range(0..3)];
        let max_waiting_batches = leader_full_waiting_batches + [1, 2, 1_000][busy_rng.gen_range(0..3)];
        let batcher_max_held_batches = [0, 1, 8][busy_rng.gen_range(0..3)];
        let tunables = Tunables {
            leader_full_waiting_batches,
            max_waiting_batches,
            batcher_max_held_batches,
            teach_retention_slots,
            teach_chunk_bytes,
            teach_window_chunks,
            replica_down_after_us,
            teach_max_slots_per_sec,
            snapshot_slice_bytes,
            snapshot_slice_pause_us,
            snapshot_at_once_bytes,
            teach_max_bytes_per_sec,
            teach_pace_percent_of_live,
            teach_min_slots_per_sec,
            batch_size: rng.gen_range(1..=4),
            max_in_flight_slots: [2, 8, 1_000][rng.gen_range(0..3)],
            phase1b_page_bytes: if pages.gen_bool(0.5) {
                200
            } else {
                Tunables::default().phase1b_page_bytes
            },
            replica_snapshot_interval_slots: snapshot_interval,
            ..Tunables::default()
        };
        let mut sim = Simulator {
            seed,
            cluster,
            tunables,
            rng,
            now: 0,
            next_seq: 0,
            nodes: BTreeMap::new(),
            clients: BTreeMap::new(),
            queue: BinaryHeap::new(),
            link: LinkModel::for_level(opts.faults),
            partitions: Partitions::default(),
            faults_on: true,
            checker: Checker::default(),
            history: Vec::new(),
            history_ids: Vec::new(),
            refused_ops: BTreeSet::new(),
            stamp: 0,
            steps: 0,
            trace,
            outcome: Outcome { seed, f, ..Outcome::default() },
            leaves_asked: Default::default(),
            disk_rng,
            corruption_rate,
            teach_rng,
            pause_order_rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x9a05f)),
            snapshot_rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x5a4e)),
            slow_disk_rng,
            full_disk_rng,
            wipe_rate,
            teach_faults_on: opts.faults == FaultLevel::Heavy && opts.scripted_faults.is_none(),
            reconfig_rng,
            reconfigs_left,
            reconfig_target: None,
            new_nodes: 0,
            reconfig_kind: ChangeKind::Acceptors,
            opts,
        };
        sim.checker = Checker::new(
            sim.cluster.f,
            Configuration::from_cluster(&sim.cluster),
            sim.tunables.max_in_flight_slots as u64,
        );
        let ids: Vec<(NodeId, RoleKind)> = sim.cluster.all_nodes().collect();
        for (id, kind) in ids {
            let member = sim.build(id, kind, 0, false, Recovered::default());
            sim.nodes.insert(id, SimNode::new(kind, member, false));
        }
        for i in 0..sim.opts.clients {
            let id = CLIENT_ID_BASE + i as NodeId;
            // One client per node, hosted the way the runtime hosts its clients.
            let client = Client::new(client_id(id, 0), sim.cluster.clone(), &sim.tunables, i);
            // Every other client gives up on a refusal, as a gateway's session does (the others
            // back off and retry): both kinds run here.
            let client = if i % 2 == 1 { client.give_up_on_busy() } else { client };
            let member = Member::Client(Box::new(ClientMux::from_clients(vec![client])));
            sim.nodes.insert(id, SimNode::new(RoleKind::Client, member, false));
            let rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, u64::from(id)));
            let workload = Workload::new(u64::from(id), rng, sim.opts.batches);
            let after_healing = sim.opts.requests_after_healing;
            sim.clients.insert(id, ClientDriver { workload, issued: 0, after_healing, outstanding: None });
        }
        sim
    }

    /// Builds node `id` as the runtime would: through the birthplace, with a seed of its own for
    /// this incarnation, from what its disk recovered.
    fn build(&self, id: NodeId, kind: RoleKind, restarts: u64, joined: bool, recovered: Recovered) -> Member {
        let spec = RoleSpec {
            id,
            kind,
            config: self.cluster.clone(),
            tunables: self.tunables.clone(),
            state_machine: StateMachineKind::Kv,
            hash_key: hash_key(self.seed),
            joining: joined.then(|| format!("sim:{id}")),
            seed: derive_seed(self.seed, (u64::from(id) << 32) | restarts),
            storage: Storage::Durable,
        };
        Member::Node(birth::build(spec, recovered, self.now).unwrap_or_else(|e| panic!("node {id}: {e}")))
    }

    fn schedule(&mut self, at: Time, what: Pending) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.next_seq, what }));
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(out) = self.trace.as_mut() {
            let _ = writeln!(out, "{:>10}us {}", self.now, line());
        }
    }

    /// Runs the seed to the end and reports what the checkers found.
    pub fn run(mut self) -> Outcome {
        let crashable: Vec<NodeId> = self.cluster.all_nodes().map(|(id, _)| id).collect();
        let faults = match self.opts.scripted_faults.take() {
            Some(scripted) => scripted,
            None => {
                let phase = self.opts.fault_phase_us;
                let mut faults =
                    network::schedule(self.opts.faults, &mut self.rng, &crashable, &crashable, phase);
                if self.opts.faults == FaultLevel::Heavy {
                    let mut pause_rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, 0x9a05e));
                    faults.extend(network::schedule_pauses(&mut pause_rng, &crashable, phase));
                    let mut cut_rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, 0x1c07));
                    let proposers = &self.cluster.proposers;
                    let cuts = network::schedule_link_cuts(&mut cut_rng, proposers, &crashable, phase);
                    // Four faults per cut: block and unblock, each way.
                    self.outcome.faults.link_cuts += cuts.len() as u64 / 4;
                    faults.extend(cuts);
                }
                faults
            }
        };
        for (at, fault) in faults {
            self.schedule(at, Pending::Fault(fault));
        }
        if self.opts.churn {
            self.schedule_churn();
        }
        if self.reconfigs_left > 0 {
            let at = self.reconfig_rng.gen_range(0..self.opts.fault_phase_us / 2);
            self.schedule(at, Pending::Reconfigure);
        }
        self.schedule(self.opts.fault_phase_us, Pending::EndFaults);
        let clients: Vec<NodeId> = self.clients.keys().copied().collect();
        for id in clients {
            let at = self.rng.gen_range(0..self.opts.think_time_us);
            self.schedule(at, Pending::ClientWake(id));
        }
        let deadline = self.opts.fault_phase_us + self.opts.liveness_bound_us;
        while let Some(at) = self.next_due() {
            let done = self.all_clients_done()
                && self.all_leaves_done()
                && self.reconfig_target.is_none()
                && self.all_removed_left();
            if at > deadline || (!self.faults_on && done) {
                break;
            }
            self.step(at);
        }
        self.check_liveness();
        self.converge(deadline + 2_000_000);
        self.finish()
    }

    /// The time of the next message, fault or timer.
    fn next_due(&self) -> Option<Time> {
        let next_scheduled = self.queue.peek().map(|s| s.0.at);
        let next_timer = self.next_timer().map(|(_, at)| at);
        match (next_scheduled, next_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_timer(&self) -> Option<(NodeId, Time)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && !n.paused)
            .filter_map(|(&id, n)| n.member.role_ref().poll_timeout().map(|at| (id, at)))
            .min_by_key(|&(id, at)| (at, id))
    }

    fn step(&mut self, at: Time) {
        self.steps += 1;
        assert!(
            self.steps <= MAX_STEPS,
            "livelock: {MAX_STEPS} events without the run ending (virtual time {}us)",
            self.now
        );
        self.now = self.now.max(at);
        let timer = self.next_timer().filter(|&(_, t)| t <= at);
        let message_first = self.queue.peek().is_some_and(|s| timer.is_none_or(|(_, t)| s.0.at < t));
        if !message_first {
            let (id, _) = timer.expect("a timer is due");
            self.trace(|| format!("timer {id}"));
            let mut out = Out::new(true);
            let node = self.nodes.get_mut(&id).expect("timer of a known node");
            node.member.role().handle_timeout(self.now, &mut out);
            self.dispatch(id, out);
            return;
        }
        let Reverse(scheduled) = self.queue.pop().expect("peeked");
        match scheduled.what {
            Pending::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Pending::Fault(fault) if self.faults_on => self.apply_fault(fault),
            Pending::Fault(_) => {}
            Pending::ClientWake(id) => self.client_next(id),
            Pending::EndFaults => self.end_faults(),
            Pending::Join(kind) => self.join(kind),
            Pending::Leave(id) => self.ask_to_leave(id),
            Pending::Reconfigure => self.reconfigure(),
            Pending::Synced { node, incarnation } if self.is_paused(node) => {
                self.wait_for_resume(node, Pending::Synced { node, incarnation })
            }
            Pending::Synced { node, incarnation } => self.synced(node, incarnation),
            Pending::SnapshotSaved { node, incarnation } if self.is_paused(node) => {
                self.wait_for_resume(node, Pending::SnapshotSaved { node, incarnation })
            }
            Pending::SnapshotSaved { node, incarnation } => self.snapshot_saved(node, incarnation),
        }
    }

    fn is_paused(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.paused)
    }

    /// Something for a paused node (a message in its socket buffer, a sync the kernel finished):
    /// it sees it when it runs again.
    fn wait_for_resume(&mut self, id: NodeId, what: Pending) {
        self.nodes.get_mut(&id).expect("a paused node exists").waiting.push(what);
    }

    fn pause(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if !node.up || node.paused {
            return;
        }
        node.paused = true;
        self.outcome.faults.pauses += 1;
        self.trace(|| format!("{id} pauses"));
    }

    /// The node runs again: what waited is handled in arrival order, and the timers that fell due
    /// meanwhile fire either before it (a process whose timer task runs first) or after it.
    fn resume(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if !node.paused {
            return;
        }
        node.paused = false;
        let waiting = std::mem::take(&mut node.waiting);
        let timers_first = self.pause_order_rng.gen_bool(0.5);
        self.trace(|| format!("{id} resumes with {} waiting; timers first: {timers_first}", waiting.len()));
        for what in waiting {
            if timers_first {
                // Scheduled now, after the overdue timers (a timer due before `now` goes first).
                self.schedule(self.now, what);
            } else {
                match what {
                    Pending::Deliver { from, to, msg } => self.deliver(from, to, msg),
                    Pending::Synced { node, incarnation } => self.synced(node, incarnation),
                    Pending::SnapshotSaved { node, incarnation } => self.snapshot_saved(node, incarnation),
                    _ => unreachable!("only deliveries, syncs and saves wait for a paused node"),
                }
            }
        }
    }

    /// Draws, from its own stream (older seeds keep their meaning), two nodes that join and two that
    /// are told to leave during the fault phase. At least one node of each stateless role is never
    /// asked to leave: the last one in service could not.
    fn schedule_churn(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(self.seed, 0xc4u64 << 8));
        let phase = self.opts.fault_phase_us;
        let roles = [RoleKind::Batcher, RoleKind::ProxyLeader, RoleKind::Unbatcher];
        for _ in 0..2 {
            let kind = roles[rng.gen_range(0..roles.len())];
            self.schedule(rng.gen_range(0..phase / 2), Pending::Join(kind));
        }
        let mut candidates: Vec<NodeId> = Vec::new();
        for kind in roles {
            let nodes: Vec<NodeId> =
                self.nodes.iter().filter(|(_, n)| n.kind == kind).map(|(&id, _)| id).collect();
            candidates.extend(nodes.iter().skip(1));
        }
        for _ in 0..2 {
            if candidates.is_empty() {
                break;
            }
            let id = candidates.swap_remove(rng.gen_range(0..candidates.len()));
            self.schedule(rng.gen_range(0..phase), Pending::Leave(id));
        }
    }

    /// The operator's side of changing the configuration: one change at a time, drawn from the
    /// log's newest configuration (add a group, remove one, replace an acceptor; add, remove or
    /// replace a replica; add or replace a proposer, often the leader), sent to every proposer and
    /// repeated until the log chose it. Sometimes a node it adds or removes crashes meanwhile.
    fn reconfigure(&mut self) {
        if let Some(target) = &self.reconfig_target {
            if self.checker.latest_config().epoch >= target.epoch {
                self.trace(|| "the change of configuration is chosen".into());
                self.reconfig_target = None;
                self.outcome.faults.reconfigs += 1;
                match self.reconfig_kind {
                    ChangeKind::Replicas => self.outcome.faults.replica_changes += 1,
                    ChangeKind::Proposers { leader } => {
                        self.outcome.faults.proposer_changes += 1;
                        self.outcome.faults.leaders_replaced += u64::from(leader);
                    }
                    ChangeKind::Acceptors => {}
                }
                if self.reconfigs_left > 0 && self.faults_on {
                    let pause = self.reconfig_rng.gen_range(0..self.opts.fault_phase_us / 4);
                    self.schedule(self.now + pause, Pending::Reconfigure);
                }
                return;
            }
            let target = target.clone();
            self.ask_for_change(target);
            return;
        }
        if self.reconfigs_left == 0 || !self.faults_on {
            return;
        }
        self.reconfigs_left -= 1;
        let latest = self.checker.latest_config().clone();
        let f = self.cluster.f;
        let mut groups = latest.acceptor_groups.clone();
        let mut replicas = latest.replicas.clone();
        let mut proposers = latest.proposers.clone();
        let kinds: Vec<u8> = [
            (0, groups.len() < 3),
            (1, groups.len() > 1),
            (2, true),
            (3, true),
            (4, replicas.len() < f + 2),
            (5, replicas.len() > f + 1),
            (6, true),
            (7, proposers.len() < f + 2),
        ]
        .into_iter()
        .filter_map(|(k, allowed)| allowed.then_some(k))
        .collect();
        let kind = kinds[self.reconfig_rng.gen_range(0..kinds.len())];
        self.reconfig_kind = match kind {
            0..=2 => ChangeKind::Acceptors,
            3..=5 => ChangeKind::Replicas,
            _ => ChangeKind::Proposers { leader: false },
        };
        let mut touched: Vec<NodeId> = Vec::new();
        match kind {
            0 => {
                let group: Vec<NodeId> = (0..2 * f + 1).map(|_| self.new_node(RoleKind::Acceptor)).collect();
                touched.extend(&group);
                groups.push(group);
            }
            1 => {
                let gone = groups.remove(self.reconfig_rng.gen_range(0..groups.len()));
                touched.extend(gone);
            }
            2 => {
                let g = self.reconfig_rng.gen_range(0..groups.len());
                let m = self.reconfig_rng.gen_range(0..groups[g].len());
                let new = self.new_node(RoleKind::Acceptor);
                touched.push(std::mem::replace(&mut groups[g][m], new));
                touched.push(new);
            }
            3 => {
                let m = self.reconfig_rng.gen_range(0..replicas.len());
                let new = self.new_node(RoleKind::Replica);
                touched.push(std::mem::replace(&mut replicas[m], new));
                touched.push(new);
            }
            4 => {
                let new = self.new_node(RoleKind::Replica);
                replicas.push(new);
                touched.push(new);
            }
            5 => touched.push(replicas.remove(self.reconfig_rng.gen_range(0..replicas.len()))),
            6 => {
                // Half the time the leader itself: it must hand over.
                let leading = |n: &SimNode| n.up && n.member.role_ref().status().leading;
                let leader = proposers.iter().position(|p| self.nodes.get(p).is_some_and(leading));
                let m = match leader {
                    Some(m) if self.reconfig_rng.gen_bool(0.5) => m,
                    _ => self.reconfig_rng.gen_range(0..proposers.len()),
                };
                self.reconfig_kind = ChangeKind::Proposers { leader: leader == Some(m) };
                let new = self.new_node(RoleKind::Proposer);
                touched.push(std::mem::replace(&mut proposers[m], new));
                touched.push(new);
            }
            _ => {
                let new = self.new_node(RoleKind::Proposer);
                proposers.push(new);
                touched.push(new);
            }
        }
        let target = Configuration { epoch: latest.epoch + 1, acceptor_groups: groups, replicas, proposers };
        self.trace(|| format!("operator changes the configuration to {target:?}"));
        if self.faults_on && self.reconfig_rng.gen_bool(0.3) {
            let victim = touched[self.reconfig_rng.gen_range(0..touched.len())];
            let back = self.now + self.reconfig_rng.gen_range(20_000..400_000);
            self.outcome.faults.reconfig_crashes += 1;
            let crash_at = self.now + self.reconfig_rng.gen_range(0..100_000);
            self.schedule(crash_at, Pending::Fault(Fault::Crash(victim)));
            self.schedule(back, Pending::Fault(Fault::Restart(victim)));
        }
        self.reconfig_target = Some(target.clone());
        self.ask_for_change(target);
    }

    /// Sends the change to every proposer (the leader makes it; the others say who leads), and
    /// looks again later.
    fn ask_for_change(&mut self, target: Configuration) {
        let mut proposers: std::collections::BTreeSet<NodeId> =
            self.cluster.proposers.iter().copied().collect();
        proposers.extend(&self.checker.latest_config().proposers);
        for p in proposers {
            self.send(OPERATOR, p, Msg::Reconfigure(target.clone()));
        }
        self.schedule(self.now + RECONFIG_RETRY_US, Pending::Reconfigure);
    }

    /// Starts a node of a stateful role that a change of configuration will bring in.
    fn new_node(&mut self, kind: RoleKind) -> NodeId {
        let id = NEW_NODE_ID_BASE + self.new_nodes;
        self.new_nodes += 1;
        self.trace(|| format!("{id} starts as a {} and joins, for a change of configuration", kind.name()));
        let member = self.build(id, kind, 0, true, Recovered::default());
        self.nodes.insert(id, SimNode::new(kind, member, true));
        id
    }

    fn join(&mut self, kind: RoleKind) {
        let id = JOINED_ID_BASE + self.outcome.joined as NodeId;
        self.outcome.joined += 1;
        self.trace(|| format!("{id} starts as a {} and joins", kind.name()));
        let member = self.build(id, kind, 0, true, Recovered::default());
        self.nodes.insert(id, SimNode::new(kind, member, true));
    }

    fn ask_to_leave(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get(&id) else { return };
        if node.left {
            return;
        }
        self.trace(|| format!("operator asks {id} to leave"));
        self.send(OPERATOR, id, Msg::Leave);
        self.leaves_asked.insert(id);
        // Repeated until the node reports `Left`, as the autoscaler does: a crash loses the request.
        self.schedule(self.now + LEAVE_RETRY_US, Pending::Leave(id));
    }

    /// A drained node stops for good: its machine is terminated.
    fn on_left(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if !node.left {
                node.left = true;
                node.up = false;
                self.outcome.left += 1;
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        if to == OPERATOR {
            // The operator only asks; the simulator watches `Left` events and the log.
            self.trace(|| format!("{from} -> operator {msg}"));
            return;
        }
        if self.nodes.get(&to).is_some_and(|n| n.left) {
            self.outcome.after_left += 1;
        }
        if !self.nodes.get(&to).is_some_and(|n| n.up) {
            self.trace(|| format!("lost {from} -> {to} {msg} (receiver down)"));
            return;
        }
        if self.is_paused(to) {
            return self.wait_for_resume(to, Pending::Deliver { from, to, msg });
        }
        self.outcome.delivered += 1;
        self.trace(|| format!("{from} -> {to} {msg}"));
        let mut out = Out::new(true);
        let node = self.nodes.get_mut(&to).expect("checked above");
        node.member.role().handle_message(self.now, from, msg, &mut out);
        self.dispatch(to, out);
    }

    fn send(&mut self, from: NodeId, to: NodeId, mut msg: Msg) {
        if let Msg::Executed { watermark, .. } = msg {
            if self.nodes.get(&from).is_some_and(|n| n.kind == RoleKind::Replica) {
                self.checker.replica_reported(from, watermark);
            }
        }
        if self.partitions.blocks(from, to) {
            return;
        }
        match &mut msg {
            Msg::ReadSlot { .. } => self.outcome.faults.slot_reads += 1,
            // A damaged chunk (a byte of it flipped): only the learner's digest check can tell.
            Msg::SnapshotChunk { bytes, .. } if self.teach_faults() && self.teach_rng.gen_bool(0.05) => {
                let mut damaged = bytes.to_vec();
                let at = self.teach_rng.gen_range(0..damaged.len());
                damaged[at] ^= 1 << self.teach_rng.gen_range(0..8);
                *bytes = bytes::Bytes::from(damaged);
                self.outcome.faults.chunks_corrupted += 1;
            }
            _ => {}
        }
        let delays = self.link.deliveries(&mut self.rng);
        if let (true, Msg::ClientRequests(commands)) = (delays.len() > 1, &msg) {
            // A duplicate may be admitted where the original was refused: the refusal then proves
            // nothing (TCP, which the runtime uses, never duplicates).
            for c in commands {
                self.checker.duplicated(c.client_id, c.seq);
            }
        }
        if let Some((&last, rest)) = delays.split_last() {
            for &delay in rest {
                let copy = msg.clone();
                self.schedule(self.now + delay, Pending::Deliver { from, to, msg: copy });
            }
            self.schedule(self.now + last, Pending::Deliver { from, to, msg });
        }
    }

    fn dispatch(&mut self, from: NodeId, out: Out) {
        let Out { msgs, persist, after_persist, snapshots, events, .. } = out;
        let chunk_sent = msgs.iter().any(|(_, m)| matches!(m, Msg::SnapshotChunk { .. }));
        for (to, msg) in msgs {
            self.send(from, to, msg);
        }
        if chunk_sent && self.teach_faults() && self.teach_rng.gen_bool(0.1) {
            // A teacher dies mid-transfer; its machine comes back a little later.
            self.outcome.faults.teachers_crashed += 1;
            self.trace(|| format!("{from} crashes right after sending a snapshot chunk"));
            self.crash(from);
            let back = self.now + self.teach_rng.gen_range(50_000..500_000);
            self.schedule(back, Pending::Fault(Fault::Restart(from)));
            return;
        }
        let node = self.nodes.get_mut(&from).expect("only nodes dispatch");
        let mut now_events = Vec::new();
        match node.disk.as_mut() {
            Some(disk) => {
                disk.write(&persist);
                for (slot, state) in &snapshots {
                    disk.save_snapshot(*slot, state);
                }
                let crash_now = node.crash_on_write && !persist.is_empty();
                node.held.extend(after_persist);
                // A vote counts once it is durable, when its Phase2b may leave.
                for event in events {
                    match event {
                        Event::Accepted { .. } => node.held_events.push(event),
                        other => now_events.push(other),
                    }
                }
                if crash_now {
                    self.observe(from, now_events);
                    self.trace(|| format!("{from} crashes right after writing"));
                    return self.crash(from);
                }
                self.start_sync(from);
                self.start_snapshot_save(from);
            }
            None => {
                assert!(
                    persist.is_empty() && snapshots.is_empty(),
                    "node {from} has no disk but asked to persist"
                );
                for (to, msg) in after_persist {
                    self.send(from, to, msg);
                }
                now_events = events;
            }
        }
        self.observe(from, now_events);
    }

    /// Starts a sync of `id`'s disk if anything waits for one and none is in flight: it covers what
    /// was written and held until now (group commit), and completes after the disk's latency.
    fn start_sync(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(disk) = node.disk.as_ref() else { return };
        let waiting = (disk.unsynced(), node.held.len(), node.held_events.len());
        if node.sync.is_some() || waiting == (0, 0, 0) {
            return;
        }
        node.sync = Some(waiting);
        let incarnation = node.incarnation;
        let mut latency = self.disk_rng.gen_range(100..3_000);
        if let (true, Some(slow)) = (self.faults_on, self.slow_disk_rng.as_mut()) {
            latency += slow.gen_range(10_000..150_000);
            self.outcome.faults.slow_syncs += 1;
        }
        self.schedule(self.now + latency, Pending::Synced { node: id, incarnation });
    }

    /// Starts writing `id`'s oldest waiting snapshot file if none is being written: it is durable
    /// a while later (a whole file: longer than most syncs), whatever the log's syncs do meanwhile.
    fn start_snapshot_save(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let waiting = node.disk.as_ref().is_some_and(|d| d.snapshots_saving() > 0);
        if !node.up || node.saving_snapshot || !waiting {
            return;
        }
        node.saving_snapshot = true;
        let incarnation = node.incarnation;
        let mut took = self.snapshot_rng.gen_range(1_000..100_000);
        if let (true, Some(full)) = (self.faults_on, self.full_disk_rng.as_mut()) {
            if full.gen_bool(0.3) {
                // The disk is full: the write fails, and is tried again until space is freed.
                took += full.gen_range(500_000..2_000_000);
                self.outcome.faults.snapshots_retried += 1;
            }
        }
        self.schedule(self.now + took, Pending::SnapshotSaved { node: id, incarnation });
    }

    fn snapshot_saved(&mut self, id: NodeId, incarnation: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.up || node.incarnation != incarnation {
            return; // it crashed while the file was being written
        }
        node.saving_snapshot = false;
        let Some(slot) = node.disk.as_mut().and_then(SimDisk::snapshot_saved) else { return };
        let mut out = Out::new(true);
        node.member.role().snapshot_saved(self.now, slot, &mut out);
        self.trace(|| format!("{id} saved its snapshot at slot {slot}"));
        self.dispatch(id, out);
        self.start_snapshot_save(id);
    }

    fn synced(&mut self, id: NodeId, incarnation: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.up || node.incarnation != incarnation {
            return; // it crashed while the sync was in flight
        }
        let (writes, held, events) = node.sync.take().expect("a sync was in flight");
        node.disk.as_mut().expect("durable node").synced(writes);
        let released: Vec<(NodeId, Msg)> = node.held.drain(..held).collect();
        let votes: Vec<Event> = node.held_events.drain(..events).collect();
        self.trace(|| format!("{id} synced {writes} writes; releases {} messages", released.len()));
        for (to, msg) in released {
            self.send(id, to, msg);
        }
        self.observe(id, votes);
        self.start_sync(id);
    }

    fn observe(&mut self, from: NodeId, events: Vec<Event>) {
        for event in events {
            self.checker.observe(from, &event);
            match event {
                Event::Left => self.on_left(from),
                Event::Installed { slot, .. } => {
                    self.outcome.faults.installed += 1;
                    self.trace(|| format!("{from} installs a taught snapshot at slot {slot}"));
                }
                Event::BecameLeader { ballot } => {
                    self.outcome.elections += 1;
                    self.trace(|| format!("{from} leads with ballot {ballot}"));
                }
                _ => {}
            }
        }
        self.take_completions(from);
    }

    /// Hands what a client node's mux completed to that client's driver.
    fn take_completions(&mut self, id: NodeId) {
        let Some(SimNode { member: Member::Client(mux), .. }) = self.nodes.get_mut(&id) else { return };
        let done: Vec<_> = mux.drain_completed().collect();
        let refused: Vec<_> = mux.drain_refused().collect();
        for c in done {
            self.on_completed(id, c.seq, c.result);
        }
        for _ in refused {
            self.on_refused(id);
        }
    }

    /// A client that gives up on `Busy` was refused: its request never happened, so it leaves the
    /// history (were it applied all the same, the checker's refusal check and linearizability
    /// would both see it).
    fn on_refused(&mut self, client: NodeId) {
        let driver = self.clients.get_mut(&client).expect("refusals come from clients");
        let index = driver.outstanding.take().expect("a refusal answers the outstanding request");
        self.refused_ops.insert(index);
        let pause = if self.faults_on { self.rng.gen_range(0..2 * self.opts.think_time_us) } else { 0 };
        self.schedule(self.now + pause, Pending::ClientWake(client));
    }

    fn on_completed(&mut self, client: NodeId, seq: u64, result: bytes::Bytes) {
        let driver = self.clients.get_mut(&client).expect("completions come from clients");
        let index = driver.outstanding.take().expect("a completion answers the outstanding request");
        let result = KvResult::decode(&result).unwrap_or_else(|e| {
            self.checker
                .violations
                .push(format!("client {client} got an undecodable reply to #{seq}: {e:?}"));
            KvResult::Error(e)
        });
        driver.workload.observe(&self.history[index].op, &result);
        self.stamp += 1;
        self.history[index].returned = Some((self.stamp, result));
        self.outcome.completed += 1;
        let pause = if self.faults_on { self.rng.gen_range(0..2 * self.opts.think_time_us) } else { 0 };
        self.schedule(self.now + pause, Pending::ClientWake(client));
    }

    fn client_next(&mut self, id: NodeId) {
        let driver = self.clients.get_mut(&id).expect("wake-ups are for clients");
        if driver.outstanding.is_some() {
            return;
        }
        if !self.faults_on {
            if driver.after_healing == 0 {
                return;
            }
            driver.after_healing -= 1;
        }
        driver.issued += 1;
        let op = driver.workload.next_op(driver.issued);
        driver.outstanding = Some(self.history.len());
        self.stamp += 1;
        self.history.push(Operation {
            client: client_id(id, 0),
            op: op.clone(),
            invoked_at: self.stamp,
            returned: None,
        });
        let Member::Client(mux) = &mut self.nodes.get_mut(&id).expect("client node").member else {
            unreachable!("client ids hold clients")
        };
        let mut out = Out::new(true);
        let seq = mux.submit(0, self.now, op.encode(), &mut out).expect("the driver waits for completion");
        self.history_ids.push((client_id(id, 0), seq));
        self.dispatch(id, out);
    }

    fn apply_fault(&mut self, fault: Fault) {
        self.trace(|| format!("fault {fault:?}"));
        match fault {
            // Half the crashes of a durable node that has nothing unsynced wait for its next write,
            // so that crashes between write and sync are common, as they would be under load.
            Fault::Crash(id) if self.arm_crash_on_write(id) => {}
            Fault::Crash(id) => self.crash(id),
            Fault::Restart(id) => self.restart(id),
            Fault::Block(..) | Fault::Unblock(..) => self.partitions.apply(&fault),
            Fault::Pause(id) => self.pause(id),
            Fault::Resume(id) => self.resume(id),
        }
    }

    /// The node's machine stops: its memory is gone, and its disk keeps what a real one would.
    fn crash(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get(&id) else { return };
        if !node.up {
            return;
        }
        // At most f acceptors of a group stay down for good, so that a quorum can always come back.
        let corrupt = node.kind == RoleKind::Acceptor
            && self.disk_rng.gen_bool(self.corruption_rate)
            && self.dead_in_group(id) < self.cluster.f;
        let node = self.nodes.get_mut(&id).expect("checked above");
        node.up = false;
        node.crash_on_write = false;
        node.incarnation += 1;
        node.sync = None;
        node.saving_snapshot = false;
        node.held.clear();
        node.held_events.clear();
        // A paused process killed: what waited in its buffers dies with it.
        node.paused = false;
        node.waiting.clear();
        self.outcome.faults.crashes += 1;
        if let Some(disk) = node.disk.as_mut() {
            let damage = disk.crash(&mut self.disk_rng, corrupt);
            self.outcome.faults.torn_writes += u64::from(damage.torn);
            self.outcome.faults.lost_writes += damage.lost as u64;
            self.outcome.faults.lost_snapshots += damage.lost_snapshots as u64;
            node.corrupted |= damage.corrupted;
            let what = format!("{damage:?}");
            self.trace(|| format!("{id} crashes; its disk: {what}"));
        }
    }

    /// Teaching's own faults (wiped disks, damaged chunks, teachers crashing mid-transfer) join
    /// heavy faults while they last; scripted scenarios get only the faults they script.
    fn teach_faults(&self) -> bool {
        self.faults_on && self.teach_faults_on
    }

    /// Whether wiping replica `id`'s disk loses nothing: another replica that is up holds on its
    /// disk at least what that disk holds. (Wiping every copy of the state is data loss, not a fault the
    /// protocol can mask.)
    fn can_wipe(&self, id: NodeId) -> bool {
        let Some(Ok(recovered)) = self.nodes.get(&id).and_then(|n| n.disk.clone()).map(|mut d| d.recover())
        else {
            return false;
        };
        let on_disk = match recovered.snapshot {
            Some((slot, _)) => slot,
            None => 0,
        }
        .max(
            recovered
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Executed { slot, .. } => Some(slot + 1),
                    _ => None,
                })
                .max()
                .unwrap_or(0),
        );
        // Only a replica that no change under way removes counts: a removed one leaves.
        let staying = |r: &NodeId| {
            self.checker.latest_config().replicas.contains(r)
                && self.reconfig_target.as_ref().is_none_or(|t| t.replicas.contains(r))
        };
        // Held on another replica's disk, not merely in its memory: a crash of that replica right
        // after the wipe must not lose what only this disk had (a second fault, beyond f).
        self.nodes.iter().any(|(&other, n)| {
            other != id
                && staying(&other)
                && n.up
                && n.disk.as_ref().and_then(durable_watermark).is_some_and(|w| w >= on_disk)
        })
    }

    fn arm_crash_on_write(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else { return false };
        let idle_disk = node.disk.as_ref().is_some_and(|d| d.unsynced() == 0);
        if node.up && idle_disk && self.disk_rng.gen_bool(0.5) {
            node.crash_on_write = true;
            return true;
        }
        false
    }

    /// The most acceptors whose disk holds a corrupted record (they refuse to start) in any group
    /// of any configuration that `id` is a member of (the one under way included).
    fn dead_in_group(&self, id: NodeId) -> usize {
        let target = self.reconfig_target.iter().flat_map(|c| c.acceptor_groups.iter());
        self.checker
            .all_groups()
            .chain(target)
            .filter(|g| g.contains(&id))
            .map(|g| g.iter().filter(|a| self.nodes.get(a).is_some_and(|n| n.corrupted)).count())
            .max()
            .unwrap_or(0)
    }

    /// The node's machine comes back: its role is rebuilt from its disk alone (stateless roles from
    /// nothing), or, if the disk is corrupt, it refuses to start and stays down.
    fn restart(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.up {
            node.crash_on_write = false; // its crash never came: the window has passed
            return;
        }
        if node.left || node.dead {
            return; // gone for good (left the cluster, or refused to start)
        }
        let (kind, restarts, joined) = (node.kind, node.restarts + 1, node.joined);
        let wiped = kind == RoleKind::Replica
            && self.teach_faults()
            && self.teach_rng.gen_bool(self.wipe_rate)
            && self.can_wipe(id);
        if wiped {
            let node = self.nodes.get_mut(&id).expect("checked above");
            node.disk = Some(SimDisk::default());
            self.outcome.faults.wiped += 1;
            self.trace(|| format!("{id} restarts on a wiped disk"));
        }
        let node = self.nodes.get_mut(&id).expect("checked above");
        let recovered = match node.disk.as_mut().map(SimDisk::recover) {
            None => Recovered::default(),
            Some(Ok(recovered)) => recovered,
            Some(Err(corrupt)) => {
                node.dead = true;
                self.outcome.faults.corrupt_detected += 1;
                self.trace(|| format!("{id} refuses to start: its log is {corrupt}"));
                return;
            }
        };
        if kind == RoleKind::Acceptor {
            // A vote whose record reached the disk before the crash (in a torn prefix, say) is a
            // vote even though its event was lost with the unsynced rest: the acceptor acts on it.
            for record in &recovered.records {
                if let Record::Accept { slot, ballot, value } = record {
                    let event =
                        Event::Accepted { slot: *slot, ballot: *ballot, value_digest: Some(value.digest()) };
                    self.checker.observe(id, &event);
                }
            }
        }
        let member = self.build(id, kind, restarts, joined, recovered);
        let node = self.nodes.get_mut(&id).expect("checked above");
        node.member = member;
        node.up = true;
        node.restarts = restarts;
        if let Some(replica) = node.member.role_ref().as_replica() {
            let executed = replica.executed_watermark();
            self.checker.replica_restarted(id, executed, wiped);
            self.trace(|| format!("{id} restarts from its disk at slot {executed}"));
        }
    }

    fn end_faults(&mut self) {
        self.trace(|| "faults end: healing partitions, restarting nodes, healthy links".into());
        self.faults_on = false;
        for node in self.nodes.values_mut() {
            node.crash_on_write = false;
        }
        self.link = LinkModel::HEALTHY;
        self.partitions.clear();
        let paused: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| n.paused).map(|(&id, _)| id).collect();
        for id in paused {
            self.resume(id);
        }
        let down: Vec<NodeId> = self.nodes.iter().filter(|(_, n)| !n.up).map(|(&id, _)| id).collect();
        for id in down {
            self.restart(id);
        }
        let idle: Vec<NodeId> =
            self.clients.iter().filter(|(_, d)| d.outstanding.is_none()).map(|(&id, _)| id).collect();
        for id in idle {
            self.client_next(id);
        }
    }

    fn all_leaves_done(&self) -> bool {
        self.leaves_asked.iter().all(|id| self.nodes.get(id).is_some_and(|n| n.left))
    }

    /// Whether every node that a change of configuration removed (and that can run) has left.
    fn all_removed_left(&self) -> bool {
        self.checker.removed_nodes().iter().all(|id| self.nodes.get(id).is_none_or(|n| n.dead || n.left))
    }

    fn all_clients_done(&self) -> bool {
        self.clients.values().all(|d| d.outstanding.is_none() && d.after_healing == 0)
    }

    fn check_liveness(&mut self) {
        if self.faults_on {
            self.checker.violation("the run ended before the faults did".into());
            return;
        }
        for &id in &self.leaves_asked {
            if !self.nodes.get(&id).is_some_and(|n| n.left) {
                self.checker.violation(format!(
                    "liveness: node {id} was asked to leave and had not drained {}us after the faults stopped",
                    self.opts.liveness_bound_us
                ));
            }
        }
        for id in self.checker.removed_nodes() {
            if self.nodes.get(&id).is_some_and(|n| !n.dead && !n.left) {
                self.checker.violation(format!(
                    "liveness: node {id}, removed by a change of configuration, had not left {}us after the faults stopped",
                    self.opts.liveness_bound_us
                ));
            }
        }
        if let Some(target) = &self.reconfig_target {
            self.checker.violation(format!(
                "liveness: the change to epoch {} was not chosen {}us after the faults stopped",
                target.epoch, self.opts.liveness_bound_us
            ));
        }
        for (id, driver) in &self.clients {
            if let Some(index) = driver.outstanding {
                let (_, seq) = self.history_ids[index];
                self.checker.violation(format!(
                    "liveness: client {id} request #{seq} incomplete {}us after the faults stopped",
                    self.opts.liveness_bound_us
                ));
            } else if driver.after_healing > 0 {
                self.checker.violation(format!(
                    "liveness: client {id} still had {} requests to make when time ran out",
                    driver.after_healing
                ));
            }
        }
    }

    /// The replicas that the final configuration names and that can run (removed ones leave, and
    /// need not keep up).
    fn final_replicas(&self) -> impl Iterator<Item = (NodeId, &SimNode)> + '_ {
        let named = &self.checker.latest_config().replicas;
        self.nodes
            .iter()
            .filter(move |(id, n)| !n.dead && !n.left && named.contains(id))
            .map(|(&id, n)| (id, n))
    }

    fn replica_watermarks(&self) -> Vec<(NodeId, u64)> {
        self.final_replicas()
            .filter_map(|(id, n)| n.member.role_ref().as_replica().map(|r| (id, r.executed_watermark())))
            .collect()
    }

    /// Lets the healed cluster run until every replica has executed the same log, then compares
    /// their whole states byte for byte.
    fn converge(&mut self, until: Time) {
        let target = self.replica_watermarks().iter().map(|&(_, w)| w).max().unwrap_or(0);
        while self.replica_watermarks().iter().any(|&(_, w)| w < target) {
            match self.next_due() {
                Some(at) if at <= until => self.step(at),
                _ => break,
            }
        }
        let marks = self.replica_watermarks();
        if marks.iter().any(|&(_, w)| w < target) {
            self.checker
                .violations
                .push(format!("convergence: replicas stuck at {marks:?}, target {target}"));
            return;
        }
        let snapshots: Vec<(NodeId, Vec<u8>)> = self
            .final_replicas()
            .filter_map(|(id, n)| match n.member.role_ref().as_replica() {
                Some(r) if r.executed_watermark() == target => Some((id, r.snapshot())),
                _ => None,
            })
            .collect();
        if let Some((first, bytes)) = snapshots.first() {
            for (id, other) in &snapshots[1..] {
                if other != bytes {
                    self.checker.violation(format!(
                        "divergence: replicas {first} and {id} executed {target} slots but their states differ"
                    ));
                }
            }
        }
    }

    fn finish(mut self) -> Outcome {
        let replica_configs: Vec<(NodeId, Configuration)> = self
            .final_replicas()
            .filter_map(|(id, n)| {
                n.member.role_ref().as_replica().map(|r| (id, r.configs().latest().config.clone()))
            })
            .collect();
        self.checker.check_at_end(&replica_configs);
        self.outcome.refused = self.checker.refused();
        for (op, &(client, seq)) in self.history.iter().zip(&self.history_ids) {
            if op.returned.is_some() && !self.checker.was_applied(client, seq) {
                self.checker
                    .violations
                    .push(format!("durability: acknowledged command c{client}#{seq} is in no replica's log"));
            }
        }
        // A refused request never happened; one whose message the network duplicated may have
        // (another copy was admitted): it stays, unanswered, which may or may not take effect.
        let never_happened = |i: &usize| {
            let (client, seq) = self.history_ids[*i];
            self.refused_ops.contains(i) && !self.checker.was_duplicated(client, seq)
        };
        let history: Vec<_> = std::mem::take(&mut self.history)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !never_happened(i))
            .map(|(_, op)| op)
            .collect();
        match check_partitioned(
            &KvModel(KvStore::with_key(hash_key(self.seed))),
            history,
            history_partition,
            self.opts.linearizability_budget,
        ) {
            Verdict::Linearizable => {}
            Verdict::Inconclusive { .. } => self.outcome.inconclusive = true,
            Verdict::NotLinearizable { longest_prefix, blocked } => self.checker.violation(format!(
                "linearizability: history not linearizable after {} ops; could not place next: {blocked:?}",
                longest_prefix.len()
            )),
        }
        self.outcome.chosen_slots = self.checker.chosen_slots();
        self.outcome.violations = std::mem::take(&mut self.checker.violations);
        self.outcome.end_us = self.now;
        self.outcome
    }
}

/// Runs one seed, turning a panic (a failed invariant assertion) into a violation.
pub fn run_seed(seed: u64, opts: &SimOptions, trace: Option<&mut dyn Write>) -> Outcome {
    let opts = opts.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Simulator::new(seed, opts, trace).run())) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Outcome { seed, violations: vec![format!("panic: {why}")], ..Outcome::default() }
        }
    }
}

/// Totals over many seeds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds with at least one violation, with their outcomes, in seed order.
    pub failures: Vec<Outcome>,
    /// Seeds whose linearizability check was inconclusive.
    pub inconclusive: u64,
    /// Client requests completed over all seeds.
    pub completed: u64,
    /// Elections over all seeds.
    pub elections: u64,
    /// Requests refused with `Busy` for good, over all seeds.
    pub refused: u64,
    /// Stateless nodes that joined, over all seeds (with churn).
    pub joined: u64,
    /// Stateless nodes that drained and left, over all seeds (with churn).
    pub left: u64,
    /// Fault counts, over all seeds.
    pub faults: FaultCounts,
    /// Seeds run with f = 1, 2 and 3.
    pub seeds_by_f: [u64; 3],
}

/// Runs seeds `start..start+count` on `threads` threads; `on_failure` sees each failing outcome as it
/// is found.
pub fn run_seeds(
    start: u64,
    count: u64,
    opts: &SimOptions,
    threads: usize,
    on_failure: &(dyn Fn(&Outcome) + Sync),
) -> Summary {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    let next = AtomicU64::new(0);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let outcome = run_seed(start + i, opts, None);
                if !outcome.violations.is_empty() {
                    on_failure(&outcome);
                }
                let mut s = summary.lock().expect("no panics while holding the lock");
                s.seeds += 1;
                s.completed += outcome.completed as u64;
                s.elections += outcome.elections;
                s.refused += outcome.refused as u64;
                s.joined += outcome.joined as u64;
                s.left += outcome.left as u64;
                s.faults.add(&outcome.faults);
                if (1..=3).contains(&outcome.f) {
                    s.seeds_by_f[outcome.f - 1] += 1;
                }
                s.inconclusive += u64::from(outcome.inconclusive);
                if !outcome.violations.is_empty() {
                    s.failures.push(outcome);
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("threads joined");
    summary.failures.sort_by_key(|o| o.seed);
    summary
}

/// The partition an op of the history belongs to; a batch's is that of its ops (the workload keeps
/// a batch within one partition, so the history is still checked partition by partition).
fn history_partition(op: &KvOp) -> Vec<u8> {
    match op {
        KvOp::Batch { ops } => ops
            .first()
            .and_then(|first| KvOp::decode(first).ok())
            .and_then(|first| first.partition().map(<[u8]>::to_vec))
            .unwrap_or_default(),
        op => op.partition().unwrap_or_default().to_vec(),
    }
}
