//! The `autopaxos` command line: parse, then hand off. No protocol logic lives here.

use autopaxos::protocol::state_machine::StateMachineKind;
use autopaxos::protocol::{NodeId, RoleKind, Tunables};
use autopaxos::runtime::config::{ClusterFile, EXAMPLE};
use autopaxos::runtime::load::{LoadControl, Workload};
use autopaxos::runtime::local::{client_pool, cluster_node, run_local, thousands, LocalOptions};
use autopaxos::runtime::{allowed_cores, metrics, parse_cores, start, NodeLaunch, ProcessPlan};
use autopaxos::sim::network::FaultLevel;
use autopaxos::sim::{run_seed, run_seeds, SimOptions};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// glibc's malloc spent ~23% of a saturated local cluster's CPU (allocation-heavy decode and
/// encode paths across threads); mimalloc is a drop-in with thread-local free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Compartmentalized MultiPaxos that scales by role.
///
/// One binary hosts every role. Start a whole cluster on this machine with `autopaxos local`, or
/// each role from a cluster file (`autopaxos config --example` prints one).
#[derive(Parser)]
#[command(name = "autopaxos", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole f=1 cluster and closed-loop clients in this process over loopback TCP, then print
    /// throughput and latency.
    Local(LocalArgs),
    /// Drive an external cluster (from a cluster file) with closed-loop clients.
    Client(ClientArgs),
    /// Run proposer node(s) from a cluster file.
    Proposer(RoleArgs),
    /// Run acceptor node(s) from a cluster file.
    Acceptor(RoleArgs),
    /// Run proxy-leader node(s) from a cluster file.
    ProxyLeader(RoleArgs),
    /// Run replica node(s) from a cluster file.
    Replica(RoleArgs),
    /// Run batcher node(s) from a cluster file.
    Batcher(RoleArgs),
    /// Run unbatcher node(s) from a cluster file.
    Unbatcher(RoleArgs),
    /// Cluster files.
    Config(ConfigArgs),
    /// Run the deterministic simulator over many seeds (or replay one) and check safety and liveness.
    ///
    /// Each seed builds a small cluster (2 proposers, 1-2 acceptor groups of 3, proxy leaders,
    /// batchers, 2 replicas, unbatchers, 4 clients running a contended KV workload), injects the chosen
    /// faults, then heals them and requires every request to complete. Checkers: one value per slot,
    /// replicas execute in order and agree on state, exactly-once, acknowledged writes are durable,
    /// and the client history is linearizable. Exit status 1 if any seed fails.
    Sim(SimArgs),
}

/// A core list as one argument (`0-3,6`); a newtype so clap takes it as one value, not many.
#[derive(Clone, Debug)]
struct Cores(Vec<usize>);

fn parse_core_list(s: &str) -> Result<Cores, String> {
    parse_cores(s).map(Cores)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration like 10s or 500ms: {e}"))
}

/// Settings shared by every command that runs nodes.
#[derive(Args, Clone)]
struct NodeFlags {
    /// Commands per batch at batchers (default: the cluster file's `batch_size`, else 100).
    #[arg(long, env = "BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Frames one connection handles before yielding to the others (the original's
    /// MAX_READS_PER_SOCKET_PER_POLL).
    #[arg(long, env = "MAX_READS_PER_SOCKET_PER_POLL", default_value_t = 100)]
    read_budget: usize,
    /// Cores to run on, e.g. 0-3,6 (default: every core this process may use).
    #[arg(long, value_parser = parse_core_list)]
    cores: Option<Cores>,
    /// Replicated state machine: kv (Physalia-style key-value store) or noop (ordering only).
    #[arg(long, default_value = "kv")]
    state_machine: StateMachineKind,
}

/// How clients load the cluster; shared by `local` and `client`.
#[derive(Args)]
struct LoadFlags {
    /// How long to measure, after a warm-up of 1 s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Closed-loop clients (each keeps one request outstanding); fewer leave the cluster idle
    /// between batches, so throughput is then bound by latency.
    #[arg(long, default_value_t = 2048)]
    clients: u32,
    /// Bytes per value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Print one JSON object as the last line of output.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics here while running (off by default).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Args)]
struct LocalArgs {
    #[command(flatten)]
    load: LoadFlags,
    #[command(flatten)]
    node: NodeFlags,
}

#[derive(Args)]
struct ClientArgs {
    /// The cluster file.
    #[arg(long)]
    config: PathBuf,
    /// This client node's id (replies are routed to it); must not be a cluster node's id.
    #[arg(long, default_value_t = 5000)]
    node: NodeId,
    /// Write distinct keys, then read every acknowledged write back and compare; exit status 1 if
    /// any is missing or different (kv only).
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    load: LoadFlags,
    #[command(flatten)]
    flags: NodeFlags,
}

#[derive(Args)]
struct RoleArgs {
    /// The cluster file (see `autopaxos config --example`).
    #[arg(long)]
    config: PathBuf,
    /// The node(s) to run, by id; several ids (e.g. 3,4,5) run one node per core.
    #[arg(long, value_delimiter = ',', required = true)]
    node: Vec<NodeId>,
    /// Serve Prometheus metrics here.
    #[arg(long, default_value = "0.0.0.0:16000")]
    metrics_addr: SocketAddr,
    #[command(flatten)]
    flags: NodeFlags,
}

#[derive(Args)]
struct ConfigArgs {
    /// Print a commented example cluster file.
    #[arg(long, required = true)]
    example: bool,
}

#[derive(Args)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0, conflicts_with = "seed")]
    start: u64,
    /// Replay exactly this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: print every event of the run (deliveries, timers, faults, elections).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// How hostile the network and nodes are.
    #[arg(long, value_enum, default_value_t = FaultLevel::Heavy)]
    faults: FaultLevel,
    /// Worker threads (default: the cores this process may use).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Sim(args) => return sim(args),
        Command::Config(_) => {
            print!("{EXAMPLE}");
            Ok(())
        }
        Command::Local(args) => local(args),
        Command::Client(args) => client(args),
        Command::Proposer(a) => role(RoleKind::Proposer, a),
        Command::Acceptor(a) => role(RoleKind::Acceptor, a),
        Command::ProxyLeader(a) => role(RoleKind::ProxyLeader, a),
        Command::Replica(a) => role(RoleKind::Replica, a),
        Command::Batcher(a) => role(RoleKind::Batcher, a),
        Command::Unbatcher(a) => role(RoleKind::Unbatcher, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tunables(flags: &NodeFlags, base: Tunables) -> Result<Tunables, String> {
    let t = Tunables { batch_size: flags.batch_size.unwrap_or(base.batch_size), ..base };
    t.validate().map_err(|e| e.to_string())?;
    if flags.read_budget == 0 {
        return Err("--read-budget must be at least 1".into());
    }
    Ok(t)
}

fn local(args: LocalArgs) -> Result<(), String> {
    let load = &args.load;
    if let Some(addr) = load.metrics_addr {
        metrics::install_exporter(addr)?;
    }
    let opts = LocalOptions {
        duration: load.duration,
        warmup: Duration::from_secs(1),
        tunables: tunables(&args.node, Tunables::default())?,
        clients: load.clients,
        workload: Workload {
            value_size: load.value_size,
            state_machine: args.node.state_machine,
            verify: false,
        },
        read_budget: args.node.read_budget,
        cores: args.node.cores.clone().map(|c| c.0).unwrap_or_default(),
        progress: true,
    };
    eprintln!(
        "autopaxos local: f=1 cluster (2 proposers, 3 acceptors, 1 batcher, 1 proxy leader, 2 replicas, 1 unbatcher) \
         + {} clients on cores {:?}, loopback TCP; warm-up 1s, measuring {:?}",
        opts.clients,
        if opts.cores.is_empty() { allowed_cores() } else { opts.cores.clone() },
        opts.duration
    );
    let report = run_local(opts)?;
    println!("{}", report.summary());
    if load.json {
        println!("{}", serde_json::to_string(&report).expect("serializable"));
    }
    Ok(())
}

fn client(args: ClientArgs) -> Result<(), String> {
    let load = &args.load;
    let file = ClusterFile::load(&args.config).map_err(|e| e.to_string())?;
    if load.clients == 0 || load.clients > autopaxos::runtime::load::MAX_CLIENTS_PER_POOL {
        return Err(format!(
            "--clients must be between 1 and {}",
            autopaxos::runtime::load::MAX_CLIENTS_PER_POOL
        ));
    }
    if file.role_of(args.node).is_some() {
        return Err(format!("--node {} is a cluster node's id; pick another for the client", args.node));
    }
    if let Some(addr) = load.metrics_addr {
        metrics::install_exporter(addr)?;
    }
    let tunables = tunables(&args.flags, file.tunables.clone())?;
    let control = Arc::new(LoadControl::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cores = args.flags.cores.clone().map_or_else(allowed_cores, |c| c.0);
    if args.verify && args.flags.state_machine != StateMachineKind::Kv {
        return Err("--verify needs the kv state machine".into());
    }
    let workload = Workload {
        value_size: load.value_size,
        state_machine: args.flags.state_machine,
        verify: args.verify,
    };
    let pool = client_pool(args.node, load.clients, file.config.clone(), tunables, workload, control.clone());
    let plan = ProcessPlan {
        cluster_id: file.cluster_id.clone(),
        cores: vec![(cores[0], vec![pool])],
        addresses: file.addresses.clone(),
        read_budget: args.flags.read_budget,
        stop: stop.clone(),
        spin_before_park: Duration::ZERO,
    };
    let running = start(plan, Instant::now())?;
    std::thread::sleep(Duration::from_secs(1));
    control.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut last = (t0, 0u64);
    while t0.elapsed() < load.duration {
        std::thread::sleep(Duration::from_secs(1).min(load.duration.saturating_sub(t0.elapsed())));
        let done = control.completed_measured.load(Ordering::Relaxed);
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "{:>6.1}s {:>12} cmds/s {:>10} done",
            t0.elapsed().as_secs_f64(),
            thousands(rate as u64),
            done
        );
        last = (Instant::now(), done);
    }
    control.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed().as_secs_f64();
    let completed = control.completed_measured.load(Ordering::Relaxed);
    control.stop.store(true, Ordering::Relaxed);
    if args.verify {
        // Every client reads back what it was acknowledged; bounded, in case the cluster is down.
        let deadline = Instant::now() + Duration::from_secs(60);
        while control.verify_done.load(Ordering::Relaxed) < u64::from(load.clients)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let h = running.join();
    let verify_failed = if args.verify {
        let (verified, lost) =
            (control.verified.load(Ordering::Relaxed), control.lost.load(Ordering::Relaxed));
        let finished = control.verify_done.load(Ordering::Relaxed);
        println!("verify: {verified} acknowledged writes read back intact, {lost} lost ({finished}/{} clients finished reading back)", load.clients);
        lost > 0 || finished < u64::from(load.clients)
    } else {
        false
    };
    let rate = completed as f64 / window;
    println!(
        "{} cmds/s ({completed} commands in {window:.1}s, {} clients); latency p50 {} us p99 {} us max {} us",
        thousands(rate as u64),
        load.clients,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    if load.json {
        let json = serde_json::json!({
            "cmds_per_sec": rate, "completed": completed, "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99), "max_us": h.max(), "clients": load.clients,
            "duration_s": window, "retries": control.retries.load(Ordering::Relaxed),
        });
        println!("{json}");
    }
    if completed == 0 {
        return Err("no command completed: is the cluster up?".into());
    }
    if verify_failed {
        return Err("verification failed: an acknowledged write was lost or could not be read back".into());
    }
    Ok(())
}

fn role(kind: RoleKind, args: RoleArgs) -> Result<(), String> {
    let file = ClusterFile::load(&args.config).map_err(|e| e.to_string())?;
    let tunables = tunables(&args.flags, file.tunables.clone())?;
    let cores = args.flags.cores.clone().map_or_else(allowed_cores, |c| c.0);
    let mut per_core: Vec<(usize, Vec<NodeLaunch>)> = cores.iter().map(|&c| (c, Vec::new())).collect();
    for (i, &id) in args.node.iter().enumerate() {
        match file.role_of(id) {
            Some(k) if k == kind => {}
            Some(other) => {
                return Err(format!(
                    "node {id} is a {} in {}, not a {}",
                    other.name(),
                    args.config.display(),
                    kind.name()
                ))
            }
            None => return Err(format!("node {id} is not in {}", args.config.display())),
        }
        let addr = file.addresses[&id];
        let launch =
            cluster_node(id, kind, addr, file.config.clone(), tunables.clone(), args.flags.state_machine);
        per_core[i % cores.len()].1.push(launch);
        tracing::info!(node = id, role = kind.name(), %addr, core = cores[i % cores.len()], "starting");
    }
    per_core.retain(|(_, launches)| !launches.is_empty());
    let metrics_note = match metrics::install_exporter(args.metrics_addr) {
        Ok(()) => format!("metrics on http://{}/metrics", args.metrics_addr),
        Err(e) => {
            tracing::warn!("{e}; continuing without metrics");
            "no metrics".to_string()
        }
    };
    let plan = ProcessPlan {
        cluster_id: file.cluster_id.clone(),
        cores: per_core,
        addresses: file.addresses.clone(),
        read_budget: args.flags.read_budget,
        stop: Arc::new(AtomicBool::new(false)),
        spin_before_park: Duration::ZERO,
    };
    let running = start(plan, Instant::now())?;
    tracing::info!("serving; {metrics_note}");
    running.join();
    Ok(())
}

fn sim(args: SimArgs) -> ExitCode {
    let opts = SimOptions::new(args.faults);
    if let Some(seed) = args.seed {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let outcome = if args.trace {
            run_seed(seed, &opts, Some(&mut lock as &mut dyn Write))
        } else {
            run_seed(seed, &opts, None)
        };
        for v in &outcome.violations {
            println!("seed {seed}: {v}");
        }
        println!(
            "seed {seed}: {} requests completed, {} slots chosen, {} elections, {} messages, {:.3}s virtual{}",
            outcome.completed,
            outcome.chosen_slots,
            outcome.elections,
            outcome.delivered,
            outcome.end_us as f64 / 1e6,
            if outcome.inconclusive { ", linearizability inconclusive" } else { "" }
        );
        println!("1 seeds, {} violations", usize::from(!outcome.violations.is_empty()));
        return if outcome.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let on_failure = |o: &autopaxos::sim::Outcome| {
        println!("seed {}: {}", o.seed, o.violations.join("; "));
    };
    let summary = run_seeds(args.start, args.seeds, &opts, threads, &on_failure);
    eprintln!(
        "{:?} faults, seeds {}..{}: {} requests completed, {} elections, {} inconclusive linearizability checks, {:.1}s wall",
        args.faults,
        args.start,
        args.start + args.seeds,
        summary.completed,
        summary.elections,
        summary.inconclusive,
        started.elapsed().as_secs_f64()
    );
    println!("{} seeds, {} violations", summary.seeds, summary.failures.len());
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
