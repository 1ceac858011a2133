//! Per-role benchmarks: the real role node on its own core(s), built-in mocks that speak its
//! protocol on both sides on the other cores, and, in the same run, the wire ceiling (the mocks
//! moving the same frames with no role logic between). `tune` sweeps settings with it and `plan`
//! sizes a cluster from the capacities it measured.

pub mod capacities;
pub mod gateway;
pub mod hashflood;
pub mod mock;
pub mod plan;
pub mod recovery;
pub mod run;
pub mod tune;

pub use run::run_bench;

use crate::protocol::RoleKind;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The roles `bench` measures.
pub const BENCH_ROLES: [RoleKind; 6] = [
    RoleKind::Batcher,
    RoleKind::Proposer,
    RoleKind::ProxyLeader,
    RoleKind::Acceptor,
    RoleKind::Replica,
    RoleKind::Unbatcher,
];

/// One benchmark run's settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The role under test.
    pub role: RoleKind,
    /// How long to measure (after a short warm-up).
    pub duration: Duration,
    /// Commands per batch (what batches the role sees, or makes).
    pub batch_size: usize,
    /// Frames per connection before yielding.
    pub read_budget: usize,
    /// Bytes per command value.
    pub value_size: usize,
    /// Cores for the role under test (default: the first allowed core).
    pub cores_under_test: Vec<usize>,
    /// Cores for the mocks (default: the other allowed cores, or the same one if there is only one).
    pub mock_cores: Vec<usize>,
    /// The replicated state machine a replica under test runs (kv unless told otherwise).
    pub state_machine: crate::protocol::state_machine::StateMachineKind,
    /// An acceptor or replica under test keeps its state in memory instead of on disk (in a
    /// scratch directory removed after the run).
    pub in_memory: bool,
    /// Every connection MACs every frame (`--authenticate-frames`), the ceiling's too.
    pub authenticate_frames: bool,
}

/// What one benchmark run measured. `--json` prints it as one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    /// The role under test (`RoleKind::name`).
    pub role: String,
    /// Messages through the role per second (the unit the role handles: a batch, a request, a reply batch).
    pub msgs_per_sec: f64,
    /// Commands through the role per second.
    pub cmds_per_sec: f64,
    /// Bytes the role received per second.
    pub bytes_per_sec: f64,
    /// Time through the role (mock send to mock receive), microseconds.
    pub p50_us: u64,
    /// 99th percentile of the same.
    pub p99_us: u64,
    /// The same mocks, the same frames, no role between.
    pub wire_ceiling_msgs_per_sec: f64,
    /// `msgs_per_sec / wire_ceiling_msgs_per_sec`.
    pub ratio_to_ceiling: f64,
    /// Commands per batch.
    pub batch_size: usize,
    /// Frames per connection before yielding.
    pub read_budget: usize,
    /// Whether a mock was the bottleneck (then the figure is a lower bound on the role's capacity).
    pub mock_saturated: bool,
    /// Fraction of its core's time the role's executor was busy.
    pub role_busy: f64,
    /// Fraction of their cores' time the mocks' executors were busy.
    pub mock_busy: f64,
    /// Seconds measured.
    pub duration_s: f64,
}
