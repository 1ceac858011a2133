//! `autopaxos local`: a whole f=1 cluster (2 proposers, one group of 3 acceptors, 1 batcher, 1 proxy
//! leader, 2 replicas, 1 unbatcher) and closed-loop clients in one process, spread over the cores it
//! may use, still talking over loopback TCP so that what is measured is what is deployed.

use super::gateway::{gateway_launch, GatewaySettings};
use super::launch::{node_launch, ScratchDir, StorageChoice};
use super::load::{ClientPool, LoadControl, Workload};
use super::{allowed_cores, start, NodeLaunch, ProcessPlan};
use crate::protocol::birth::RoleSpec;
use crate::protocol::durable::Storage;
use crate::protocol::state_machine::{HashKey, StateMachineKind};
use crate::protocol::{ClusterConfig, NodeId, RoleKind, Tunables};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of one `local` run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// How long to measure (after the warm-up).
    pub duration: Duration,
    /// Excluded from the figures: election and connection set-up.
    pub warmup: Duration,
    /// Protocol settings (batch size among them).
    pub tunables: Tunables,
    /// Closed-loop clients in all.
    pub clients: u32,
    /// What the clients send.
    pub workload: Workload,
    /// Frames per connection before yielding.
    pub read_budget: usize,
    /// Cores to use (default: those this process may use).
    pub cores: Vec<usize>,
    /// Print a live progress line on stderr.
    pub progress: bool,
    /// Where acceptors and replicas keep their state; `None`: a temporary directory removed at the
    /// end of the run.
    pub storage: Option<StorageChoice>,
    /// With a RESP gateway: the password its clients must give (`AUTH`).
    pub resp_password: Option<crate::commands::Password>,
    /// Every node MACs every frame (`--authenticate-frames`).
    pub authenticate_frames: bool,
}

/// Node id of the gateway `local --resp-addr` runs.
pub const LOCAL_GATEWAY_NODE: NodeId = 900;

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalReport {
    /// Commands completed per second of the measurement window.
    pub cmds_per_sec: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest request.
    pub max_us: u64,
    /// Commands completed in the window.
    pub completed: u64,
    /// Requests resent after a timeout while measuring (clients that started before the first
    /// leader was elected resend once in the warm-up; those are not counted).
    pub retries: u64,
    /// Open loop: requests offered per second (0: closed loop).
    pub offered_per_sec: f64,
    /// `Busy` refusals the clients received per second of the window (each waited out, retried).
    pub busy_per_sec: f64,
    /// Open loop: arrivals per second that found every client busy (not sent).
    pub refused_at_client_per_sec: f64,
    /// Open loop: arrivals per second the cluster refused with `Busy`.
    pub refused_busy_per_sec: f64,
    /// The process's resident memory (VmRSS, KiB), sampled once a second from the warm-up's end.
    pub rss_kib: Vec<u64>,
    /// Commands per batch.
    pub batch_size: usize,
    /// Closed-loop clients.
    pub clients: u32,
    /// Bytes per value.
    pub value_size: usize,
    /// `kv` or `noop`.
    pub state_machine: String,
    /// Frames per connection before yielding.
    pub read_budget: usize,
    /// Measurement window, seconds.
    pub duration_s: f64,
    /// Cores used.
    pub cores: Vec<usize>,
    /// Whether acceptors and replicas kept their state on disk.
    pub durable: bool,
    /// Syncs of the acceptors' logs per second, per acceptor (durable runs).
    pub acceptor_fsyncs_per_sec: f64,
    /// Records made durable per acceptor sync (the group commit's size).
    pub acceptor_records_per_fsync: f64,
}

/// Node ids of client pools: one per core, after the cluster's ids.
const CLIENT_NODE_BASE: NodeId = 1000;

/// The spec of configured node `id` (its seed is drawn when it is launched); a replica keys its
/// store's maps with `hash_key` (the cluster secret's).
pub fn cluster_spec(
    id: NodeId,
    kind: RoleKind,
    config: &ClusterConfig,
    tunables: &Tunables,
    state_machine: StateMachineKind,
    hash_key: HashKey,
) -> RoleSpec {
    RoleSpec {
        id,
        kind,
        config: config.clone(),
        tunables: tunables.clone(),
        state_machine,
        hash_key,
        joining: None,
        seed: 0,
        storage: Storage::Durable,
    }
}

/// A number that differs between runs of this process (for client-id incarnations).
fn incarnation() -> u16 {
    super::incarnation_seed() as u16
}

/// Builds the launch of a client pool of `count` clients.
pub fn client_pool(
    id: NodeId,
    count: u32,
    config: ClusterConfig,
    tunables: Tunables,
    workload: Workload,
    control: Arc<LoadControl>,
) -> NodeLaunch {
    let incarnation = incarnation();
    // Replies come from unbatchers and leader hints from proposers: reach them first, so they can
    // answer over these connections (a client has no address of its own).
    let dial_at_start = config.unbatchers.iter().chain(&config.proposers).copied().collect();
    NodeLaunch {
        id,
        listen: None,
        dial_at_start,
        disk: None,
        resp: None,
        build: Box::new(move |ctx| {
            Ok(Box::new(ClientPool::new(
                id,
                incarnation,
                count,
                config,
                &tunables,
                workload,
                control,
                ctx.latencies.clone(),
            )))
        }),
    }
}

/// The nodes of the local cluster, spread over `cores`, with `opts.clients` clients (none if 0) and,
/// with `resp`, a gateway serving RESP there.
fn local_plan(
    opts: &LocalOptions,
    cores: &[usize],
    config: &ClusterConfig,
    storage: &StorageChoice,
    control: &Arc<LoadControl>,
    stop: &Arc<AtomicBool>,
    resp: Option<SocketAddr>,
) -> Result<ProcessPlan, String> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    // A secret no one else knows: the cluster is this process.
    let security = super::config::Security {
        authenticate_frames: opts.authenticate_frames,
        ..super::config::Security::private()
    };
    let mut per_core: Vec<(usize, Vec<NodeLaunch>)> = cores.iter().map(|&c| (c, Vec::new())).collect();
    for (i, (id, kind)) in config.all_nodes().enumerate() {
        let key = security.secret.kv_hash_key();
        let spec = cluster_spec(id, kind, config, &opts.tunables, opts.workload.state_machine, key);
        let launch = node_launch(spec, Some(loopback), storage, Vec::new())?;
        per_core[i % cores.len()].1.push(launch);
    }
    let per_pool = opts.clients.div_ceil(cores.len() as u32);
    if per_pool > super::load::MAX_CLIENTS_PER_POOL {
        return Err(format!(
            "--clients {} is more than {} per core on {} cores",
            opts.clients,
            super::load::MAX_CLIENTS_PER_POOL,
            cores.len()
        ));
    }
    let mut remaining = opts.clients;
    for (i, (_, launches)) in per_core.iter_mut().enumerate() {
        let count = per_pool.min(remaining);
        if count == 0 {
            break;
        }
        remaining -= count;
        let id = CLIENT_NODE_BASE + i as NodeId;
        launches.push(client_pool(
            id,
            count,
            config.clone(),
            opts.tunables.clone(),
            // Open loop: each pool issues its share of the rate.
            Workload {
                rate_per_sec: opts.workload.rate_per_sec * u64::from(count) / u64::from(opts.clients),
                ..opts.workload
            },
            control.clone(),
        ));
    }
    if let Some(resp) = resp {
        let settings = GatewaySettings {
            durable: Some(*storage != StorageChoice::InMemory),
            password: opts.resp_password.clone(),
            ..GatewaySettings::new("local".into(), &Default::default())
        };
        let gateway =
            gateway_launch(LOCAL_GATEWAY_NODE, config.clone(), opts.tunables.clone(), resp, settings, None);
        // With the cluster's first node (a proposer): the gateway's core then carries no client pool.
        per_core[0].1.push(gateway);
    }
    Ok(ProcessPlan {
        cluster_id: "local".into(),
        security,
        cores: per_core,
        addresses: Default::default(),
        read_budget: opts.read_budget,
        stop: stop.clone(),
        spin_before_park: Duration::from_micros(500),
    })
}

/// `local --resp-addr`: serves RESP from a local cluster at `resp` until `duration` has passed
/// (`None`: until SIGINT or SIGTERM), then stops every node and removes its scratch directory.
pub fn serve_local(opts: LocalOptions, resp: SocketAddr, duration: Option<Duration>) -> Result<(), String> {
    opts.tunables.validate().map_err(|e| e.to_string())?;
    let cores = if opts.cores.is_empty() { allowed_cores() } else { opts.cores.clone() };
    let config = ClusterConfig::f1(1, 1, 1, 1);
    let control = Arc::new(LoadControl::default());
    let stop = Arc::new(AtomicBool::new(false));
    let scratch = ScratchDir::new("autopaxos-local");
    let storage = opts.storage.clone().unwrap_or_else(|| StorageChoice::Under(scratch.path().to_path_buf()));
    let local = LocalOptions { clients: 0, ..opts };
    let plan = local_plan(&local, &cores, &config, &storage, &control, &stop, Some(resp))?;
    let running = start(plan, Instant::now())?;
    let bound = running.resp_addresses.get(&LOCAL_GATEWAY_NODE).copied().unwrap_or(resp);
    let durability = if storage == StorageChoice::InMemory { "in memory" } else { "durable" };
    eprintln!(
        "autopaxos local: serving RESP on {bound} ({durability}); try: redis-cli -p {} SET greeting hello",
        bound.port()
    );
    println!("resp {bound}");
    let _ = std::io::stdout().flush();
    let served = super::run_until_interrupted(duration)?;
    eprintln!("autopaxos local: stopping after {:.1}s", served.as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    running.join();
    Ok(())
}

impl LocalOptions {
    /// Refuses settings a run under load cannot use, with the reason.
    pub fn validate(&self) -> Result<(), String> {
        self.tunables.validate().map_err(|e| e.to_string())?;
        self.workload.validate()?;
        if self.clients == 0 {
            return Err("--clients 0: a load needs at least one client (for a cluster without one, \
                        serve RESP with --resp-addr)"
                .into());
        }
        if self.duration.is_zero() {
            return Err("--duration: a load of no time measures nothing; give more than 0s".into());
        }
        Ok(())
    }
}

/// Runs the cluster under load and reports throughput and latency.
pub fn run_local(opts: LocalOptions) -> Result<LocalReport, String> {
    opts.validate()?;
    let cores = if opts.cores.is_empty() { allowed_cores() } else { opts.cores.clone() };
    let config = ClusterConfig::f1(1, 1, 1, 1);
    let control = Arc::new(LoadControl::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Durable by default, in a directory of this run's own that goes when the run does.
    let scratch = ScratchDir::new("autopaxos-local");
    let storage = opts.storage.clone().unwrap_or_else(|| StorageChoice::Under(scratch.path().to_path_buf()));
    let plan = local_plan(&opts, &cores, &config, &storage, &control, &stop, None)?;
    let epoch = Instant::now();
    let running = start(plan, epoch)?;

    std::thread::sleep(opts.warmup);
    let window_start = Instant::now();
    control.measuring.store(true, Ordering::Relaxed);
    let syncs_before = super::launch::ACCEPTOR_SYNCS.snapshot();
    let mut last = (Instant::now(), control.completed.load(Ordering::Relaxed));
    let busy_before = control.busy.load(Ordering::Relaxed);
    let retries_before = control.retries.load(Ordering::Relaxed);
    let mut rss_kib = vec![resident_kib()];
    let mut rss_at = Instant::now();
    while window_start.elapsed() < opts.duration {
        if rss_at.elapsed() >= Duration::from_secs(1) {
            rss_kib.push(resident_kib());
            rss_at += Duration::from_secs(1);
        }
        std::thread::sleep(
            Duration::from_millis(250).min(opts.duration.saturating_sub(window_start.elapsed())),
        );
        if opts.progress && last.0.elapsed() >= Duration::from_secs(1) {
            let done = control.completed.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            // On a terminal the line updates in place; in a log, one line per second.
            let start = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { "\r" } else { "\n" };
            eprint!(
                "{start}{:>5.1}s / {:.0}s  {:>12} cmds/s   {:>10} done",
                window_start.elapsed().as_secs_f64(),
                opts.duration.as_secs_f64(),
                thousands(rate as u64),
                thousands(done)
            );
            let _ = std::io::stderr().flush();
            last = (Instant::now(), done);
        }
    }
    control.measuring.store(false, Ordering::Relaxed);
    let retries = control.retries.load(Ordering::Relaxed) - retries_before;
    let syncs = super::launch::ACCEPTOR_SYNCS.snapshot();
    let acceptors = config.all_acceptors().count() as f64;
    let (sync_count, records) = (syncs.0 - syncs_before.0, syncs.1 - syncs_before.1);
    let acceptor_syncs = (
        sync_count as f64 / acceptors,
        if sync_count == 0 { 0.0 } else { records as f64 / sync_count as f64 },
    );
    let window = window_start.elapsed().as_secs_f64();
    let completed = control.completed_measured.load(Ordering::Relaxed);
    let busy = control.busy.load(Ordering::Relaxed) - busy_before;
    rss_kib.push(resident_kib());
    control.stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    if opts.progress {
        eprintln!();
    }
    let latencies = running.join();
    if completed == 0 {
        return Err("no command completed: the cluster did not serve (see the log above)".into());
    }
    Ok(LocalReport {
        cmds_per_sec: completed as f64 / window,
        p50_us: latencies.value_at_quantile(0.5),
        p90_us: latencies.value_at_quantile(0.9),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
        completed,
        retries,
        offered_per_sec: control.offered_measured.load(Ordering::Relaxed) as f64 / window,
        busy_per_sec: busy as f64 / window,
        refused_at_client_per_sec: control.refused_at_client.load(Ordering::Relaxed) as f64 / window,
        refused_busy_per_sec: control.refused_busy.load(Ordering::Relaxed) as f64 / window,
        rss_kib,
        batch_size: opts.tunables.batch_size,
        clients: opts.clients,
        value_size: opts.workload.value_size,
        state_machine: opts.workload.state_machine.to_string(),
        read_budget: opts.read_budget,
        duration_s: window,
        cores,
        durable: storage != StorageChoice::InMemory,
        acceptor_fsyncs_per_sec: acceptor_syncs.0 / window,
        acceptor_records_per_fsync: acceptor_syncs.1,
    })
}

/// This process's resident memory in KiB (VmRSS of /proc/self/status; 0 where there is none).
pub fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl LocalReport {
    /// The human summary.
    pub fn summary(&self) -> String {
        let storage = if self.durable {
            format!(
                "durable: {:.0} fsyncs/s per acceptor, {:.1} records per fsync",
                self.acceptor_fsyncs_per_sec, self.acceptor_records_per_fsync
            )
        } else {
            "in memory (not crash-safe)".to_string()
        };
        let overload = if self.offered_per_sec > 0.0 || self.busy_per_sec > 0.0 {
            format!(
                "\noverload offered {} cmds/s (open loop), {} busy replies/s ({} arrivals/s refused so), {} arrivals/s refused at the client (every client busy)\nmemory   VmRSS KiB each second: {:?}",
                thousands(self.offered_per_sec as u64),
                thousands(self.busy_per_sec as u64),
                thousands(self.refused_busy_per_sec as u64),
                thousands(self.refused_at_client_per_sec as u64),
                self.rss_kib
            )
        } else {
            String::new()
        };
        format!(
            "{} cmds/s  ({} commands in {:.1}s; batch size {}, {} clients, {}-byte values, {} state machine, cores {:?})\n\
             latency  p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us  ({} retries)\n\
             storage  {storage}{overload}",
            thousands(self.cmds_per_sec as u64),
            thousands(self.completed),
            self.duration_s,
            self.batch_size,
            self.clients,
            self.value_size,
            self.state_machine,
            self.cores,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.retries
        )
    }
}
