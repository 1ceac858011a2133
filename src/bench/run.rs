//! Running one benchmark: the role (or its echo, for the wire ceiling) on the core under test, every
//! other node of a small cluster as a mock on the mock core, a warm-up, a measured window, and CPU
//! time per executor thread from /proc so the report says how busy each side was.

use super::mock::{Echo, MockNode, Part, World, CLIENT_NODE};
use super::{BenchOptions, BenchReport};
use crate::protocol::configuration::ConfigHistory;
use crate::protocol::{ClusterConfig, NodeId, RoleKind, Tunables};
use crate::runtime::launch::{node_launch, ScratchDir, StorageChoice};
use crate::runtime::local::cluster_spec;
use crate::runtime::{allowed_cores, start, NodeLaunch, ProcessPlan};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Excluded from the figures: connection set-up, the proposer's election, first allocations.
const WARMUP: Duration = Duration::from_millis(500);
/// A mock executor busier than this may have limited the role: the figure is then a lower bound.
const SATURATED: f64 = 0.9;
/// Messages in flight into the role (the batcher counts commands instead).
const WINDOW_MSGS: u64 = 1024;

/// The node id the role under test plays in the bench cluster (the cluster of `ClusterConfig::f1(1, 1, 1, 1)`).
pub fn target_id(role: RoleKind) -> NodeId {
    match role {
        RoleKind::Proposer => 1,
        RoleKind::Acceptor => 3,
        RoleKind::ProxyLeader => 6,
        RoleKind::Replica => 7,
        RoleKind::Batcher => 9,
        RoleKind::Unbatcher => 10,
        RoleKind::Client | RoleKind::Gateway => unreachable!("clients and gateways are not benchmarked here"),
    }
}

/// What each other node does when `role` is under test.
pub fn part_of(role: RoleKind, id: NodeId) -> Part {
    match (role, id) {
        (RoleKind::Batcher, 1) => Part::Source,
        (RoleKind::Proposer, 9) => Part::Source,
        (RoleKind::Proposer, 3..=5) => Part::Acceptor,
        (RoleKind::Proposer, 6) => Part::Observer,
        (RoleKind::Proposer, 7) => Part::Watermark,
        (RoleKind::ProxyLeader, 1) => Part::Source,
        (RoleKind::ProxyLeader, 3..=5) => Part::Acceptor,
        (RoleKind::ProxyLeader, 7) => Part::Observer,
        (RoleKind::Acceptor, 6) => Part::Source,
        (RoleKind::Replica, 6) => Part::Source,
        (RoleKind::Replica, 10) => Part::Observer,
        (RoleKind::Unbatcher, 7) => Part::Source,
        (RoleKind::Unbatcher, CLIENT_NODE) => Part::Observer,
        _ => Part::Sink,
    }
}

fn bench_config(role: RoleKind) -> ClusterConfig {
    let mut config = ClusterConfig::f1(1, 1, 1, 1);
    if role == RoleKind::Replica {
        // One replica answers every slot (with two, each answers every other slot).
        config.replicas.truncate(1);
    }
    config
}

/// CPU seconds (user + system) of this process's threads named `name`, from /proc.
pub fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised command: state is field 3; utime and stime are 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        ticks += fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / 100.0 // USER_HZ is 100 for every /proc interface
}

fn executor_name(core: usize) -> String {
    format!("autopaxos-core{core}")
}

/// A bench process: `subject` on its core and the mocks on theirs (together if it is the same core),
/// with no spinning before parking, so that CPU time means work.
pub fn bench_plan(
    subject: NodeLaunch,
    mut mocks: Vec<NodeLaunch>,
    (subject_core, mock_core): (usize, usize),
    read_budget: usize,
    authenticate_frames: bool,
    stop: Arc<AtomicBool>,
) -> ProcessPlan {
    let cores = if subject_core == mock_core {
        mocks.push(subject);
        vec![(subject_core, mocks)]
    } else {
        vec![(subject_core, vec![subject]), (mock_core, mocks)]
    };
    ProcessPlan {
        cluster_id: "bench".into(),
        security: crate::runtime::config::Security {
            authenticate_frames,
            ..crate::runtime::config::Security::private()
        },
        cores,
        addresses: Default::default(),
        read_budget,
        stop,
        spin_before_park: Duration::ZERO,
    }
}

/// One pass: the role itself, or its echo (the ceiling).
struct Pass {
    msgs_per_sec: f64,
    cmds_per_sec: f64,
    bytes_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    role_busy: f64,
    mock_busy: f64,
    seconds: f64,
}

fn measure(opts: &BenchOptions, role_core: usize, mock_core: usize, echo: bool) -> Result<Pass, String> {
    let role = opts.role;
    let config = bench_config(role);
    let tunables = Tunables {
        batch_size: opts.batch_size,
        // The replica under test reports often, as the proposer bench's mock replica does (every
        // 100 us) so that the default window of in-flight slots is not what limits the leader. A
        // larger window only holds more batches out of cache (10,000 slots of 100 commands ran at
        // 0.41 of the ceiling, the default 1,000 at 0.75).
        replica_report_interval_us: 1_000,
        ..Tunables::default()
    };
    tunables.validate().map_err(|e| e.to_string())?;
    let measuring = Arc::new(AtomicBool::new(false));
    // The batcher's unit is one request (one command); every other role's is one batch.
    let window = if role == RoleKind::Batcher { 64 * opts.batch_size as u64 } else { WINDOW_MSGS };
    let configs = ConfigHistory::new(&config, tunables.max_in_flight_slots as u64);
    let world = Arc::new(Mutex::new(World::new(
        role,
        opts.batch_size,
        opts.value_size,
        window,
        measuring.clone(),
        configs,
    )));
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let target = target_id(role);
    let state_machine = opts.state_machine;

    let scratch = ScratchDir::new("autopaxos-bench");
    let subject = if echo {
        let (config, world) = (config.clone(), world.clone());
        NodeLaunch {
            id: target,
            listen: Some(loopback),
            dial_at_start: Vec::new(),
            disk: None,
            resp: None,
            build: Box::new(move |_| Ok(Box::new(Echo::new(role, config, world)))),
        }
    } else {
        let storage = if opts.in_memory {
            StorageChoice::InMemory
        } else {
            StorageChoice::Under(scratch.path().to_path_buf())
        };
        let key = crate::secret::ClusterSecret::random().kv_hash_key();
        let spec = cluster_spec(target, role, &config, &tunables, state_machine, key);
        node_launch(spec, Some(loopback), &storage, Vec::new())?
    };
    let mut mocks = Vec::new();
    let ids: Vec<NodeId> =
        config.all_nodes().map(|(id, _)| id).chain([CLIENT_NODE]).filter(|&id| id != target).collect();
    for id in ids {
        let world = world.clone();
        let part = part_of(role, id);
        mocks.push(NodeLaunch {
            id,
            listen: Some(loopback),
            dial_at_start: Vec::new(),
            disk: None,
            resp: None,
            build: Box::new(move |_| Ok(Box::new(MockNode::new(id, part, target, world)))),
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let plan = bench_plan(
        subject,
        mocks,
        (role_core, mock_core),
        opts.read_budget,
        opts.authenticate_frames,
        stop.clone(),
    );
    let running = start(plan, Instant::now())?;
    std::thread::sleep(WARMUP);
    let snapshot = |w: &World| (w.done, w.cmds_done, w.bytes_sent);
    let (role_name, mock_name) = (executor_name(role_core), executor_name(mock_core));
    let cpu = || (thread_cpu_seconds(&role_name), thread_cpu_seconds(&mock_name));
    let before = snapshot(&world.lock().expect("not poisoned"));
    let cpu_before = cpu();
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(opts.duration);
    measuring.store(false, Ordering::Relaxed);
    let seconds = t0.elapsed().as_secs_f64();
    let after = snapshot(&world.lock().expect("not poisoned"));
    let cpu_after = cpu();
    stop.store(true, Ordering::Relaxed);
    running.join();
    let w = world.lock().expect("not poisoned");
    let msgs = (after.0 - before.0) as f64;
    if msgs == 0.0 {
        return Err(format!(
            "{}{}: nothing came through in {seconds:.1}s",
            role.name(),
            if echo { " (ceiling)" } else { "" }
        ));
    }
    let busy = |b: f64, a: f64| ((a - b) / seconds).clamp(0.0, 1.0);
    Ok(Pass {
        msgs_per_sec: msgs / seconds,
        cmds_per_sec: (after.1 - before.1) as f64 / seconds,
        bytes_per_sec: (after.2 - before.2) as f64 / seconds,
        p50_us: w.latencies.value_at_quantile(0.5),
        p99_us: w.latencies.value_at_quantile(0.99),
        role_busy: busy(cpu_before.0, cpu_after.0),
        mock_busy: busy(cpu_before.1, cpu_after.1),
        seconds,
    })
}

/// Measures `opts.role`'s maximum throughput, and the wire ceiling in the same run.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, String> {
    if opts.role == RoleKind::Client {
        return Err("bench measures batcher, proposer, proxy-leader, acceptor, replica or unbatcher".into());
    }
    let allowed = allowed_cores();
    let role_core = opts.cores_under_test.first().copied().unwrap_or(allowed[0]);
    let mock_core = opts
        .mock_cores
        .first()
        .copied()
        .unwrap_or_else(|| allowed.iter().copied().find(|&c| c != role_core).unwrap_or(role_core));
    let role = measure(opts, role_core, mock_core, false)?;
    let ceiling = measure(opts, role_core, mock_core, true)?;
    Ok(BenchReport {
        role: opts.role.name().to_string(),
        msgs_per_sec: role.msgs_per_sec,
        cmds_per_sec: role.cmds_per_sec,
        bytes_per_sec: role.bytes_per_sec,
        p50_us: role.p50_us,
        p99_us: role.p99_us,
        wire_ceiling_msgs_per_sec: ceiling.msgs_per_sec,
        ratio_to_ceiling: role.msgs_per_sec / ceiling.msgs_per_sec,
        batch_size: opts.batch_size,
        read_budget: opts.read_budget,
        mock_saturated: role.mock_busy > SATURATED,
        role_busy: role.role_busy,
        mock_busy: role.mock_busy,
        duration_s: role.seconds,
    })
}
