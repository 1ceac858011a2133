//! The `autopaxos` command line: parse, then hand off. No protocol logic lives here.

use autopaxos::duration::parse_duration;
use autopaxos::protocol::state_machine::StateMachineKind;
use autopaxos::protocol::{NodeId, RoleKind, Tunables};
use autopaxos::runtime::config::{ClusterFile, EXAMPLE};
use autopaxos::runtime::launch::StorageChoice;
use autopaxos::runtime::load::{LoadControl, Timeline, Workload};
use autopaxos::runtime::local::{client_pool, run_local, thousands, LocalOptions};
use autopaxos::runtime::{
    allowed_cores, default_cores, metrics, parse_cores, start, NodeLaunch, ProcessPlan,
};
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
    /// The cluster secret, instead of the cluster file's `secret_file` (for every command that reads
    /// a cluster file).
    #[arg(long, global = true, env = "AUTOPAXOS_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// `--secret-file`, once parsed.
static SECRET_FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Loads a cluster file and its secret (`--secret-file` over the file's `secret_file`).
fn load_file(path: &std::path::Path) -> Result<ClusterFile, String> {
    let file = ClusterFile::load(path).map_err(|e| e.to_string())?;
    match SECRET_FILE.get().and_then(Option::as_deref) {
        Some(secret) => file.with_secret_file(secret).map_err(|e| e.to_string()),
        None => Ok(file),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole f=1 cluster and closed-loop clients in this process over loopback TCP, then print
    /// throughput and latency.
    Local(LocalArgs),
    /// Drive an external cluster (from a cluster file) with closed-loop clients.
    Client(ClientArgs),
    /// Jepsen-style fault test: start a cluster of processes on loopback with two RESP gateways, run
    /// clients that read, write and compare-and-set while killing, pausing and partitioning nodes,
    /// then check the history for linearizability. Exit status 1 if it is not (or the cluster does
    /// not serve again once healed).
    Jepsen(JepsenArgs),
    /// Serve the Redis protocol (RESP2) for a cluster (from a cluster file): a stateless front door
    /// that redis-cli, redis-benchmark and Redis client libraries talk to.
    Gateway(GatewayArgs),
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
    /// Measure one role (or all) over a grid of batch sizes and read budgets, and recommend a setting.
    ///
    /// Runs the per-role benchmark once per point, the role on one core and its mocks on the others,
    /// and writes <out>/<role>.csv (every figure of every point) and <out>/<role>.svg (throughput by
    /// batch size, one line per read budget). The recommendation is the smallest batch size within 5%
    /// of the best throughput (smaller batches wait less to fill), ties to the lower p99. `tune all`
    /// also writes <out>/capacities.toml, which `plan` reads.
    Tune(TuneArgs),
    /// Measure one role's maximum throughput: the real role on its own core, built-in mocks that
    /// speak its protocol on both sides on another core, and the wire ceiling in the same run.
    Bench(BenchArgs),
    /// Run the mocks that feed a role (its upstream) on their own, open-loop at --rate, against a
    /// role started elsewhere from the same cluster file (`config --example`'s shape).
    MockUpstream(MockArgs),
    /// Run the mocks that receive a role's output (its downstream) on their own and report what
    /// arrives each second.
    MockDownstream(MockArgs),
    /// Size a cluster for a target load from measured per-role capacities.
    ///
    /// Prints, per role, the nodes (one per core) and instances (one node per vCPU; roles are not
    /// mixed on an instance) that the target needs, each role's utilisation, which role is the
    /// bottleneck, and the fault-tolerance minimums that apply whatever the load (f+1 proposers,
    /// groups of 2f+1 acceptors, f+1 replicas, one of each other role). Batchers, proxy leaders,
    /// unbatchers and acceptor groups scale out; the proposer and the replica do not, so a target
    /// above one of them is reported as unreachable, with the maximum. Exit status 1 on bad input.
    Plan(PlanArgs),
    /// Size the stateless roles (batchers, proxy leaders, unbatchers) from live /metrics: scale out
    /// and in with headroom, hysteresis and a cooldown, logging every decision with its reason. With
    /// the cluster file (--config, or by tags for a `cloud up` cluster) also size the acceptor groups
    /// and replace dead proposers, acceptors and replicas through changes of configuration.
    Autoscale(Box<autopaxos::autoscale::AutoscaleArgs>),
    /// Ask a batcher, proxy leader or unbatcher to drain and leave the cluster; waits until it has.
    ///
    /// The node stops taking new work, finishes what it holds, reports that it left, and exits. The
    /// last node of a role in service cannot leave until another joins. Exit status 1 on timeout.
    Leave(LeaveArgs),
    /// Show the cluster: the configuration in force, the leader and its ballot, and every
    /// node's role, address, state (up, joining, leaving, learning, unreachable), executed
    /// watermark, lag and state digest (replicas). Exit status 1 if a node is unreachable.
    Status(StatusArgs),
    /// A live view of a running cluster, without Prometheus: scrapes every node's /metrics each
    /// interval and shows, per role and per node, commands/s and frames/s received, a latency's p50
    /// and p99 over the interval (clients and gateways: command; batchers, proposers, proxy leaders,
    /// replicas: their stage; acceptors: fsync), each replica's lag behind the highest watermark, the
    /// leader, and the state (up, joining, leaving, learning, or down when no target serves it).
    ///
    /// Targets: every `metrics_address` of --config's nodes and each --target (one scrape per
    /// distinct address). For a local cluster: `autopaxos local --metrics-addr 127.0.0.1:16000 &`
    /// then `autopaxos top --target 127.0.0.1:16000`. Rates need two scrapes: the first frame shows
    /// `-`. Ctrl-C exits.
    Top(TopArgs),
    /// Change the stateful roles of a running cluster to those of another cluster file: add or
    /// remove acceptor groups, replace acceptors, add, remove or replace replicas and proposers
    /// (the leader included).
    ///
    /// The change goes through the log: chosen in slot i, it is in force from a slot the leader
    /// names, at most α further (α: the leader's window, `max_in_flight_slots`); slots below keep
    /// the old configuration. Start each new node first with `<role> --config <the cluster file>
    /// --node <id> --join --listen <addr>`; nodes removed leave by themselves once every slot
    /// their configurations owned is trimmed (a leader removed hands over first). f, proxy
    /// leaders, batchers and unbatchers must be the same in both files; at least f+1 replicas and
    /// f+1 proposers stay. Prints the slot the change took effect at and how long it took; exit
    /// status 1 on refusal or timeout.
    Reconfigure(ReconfigureArgs),
    /// Start the role this machine was launched for, from its user-data (IMDSv2) or --user-data FILE.
    Boot(autopaxos::boot::BootArgs),
    /// Bake an AMI that boots any role (needs the `cloud` feature).
    #[cfg(feature = "cloud")]
    Ami(autopaxos::cloud::bake::AmiArgs),
    /// Bake an AMI that boots any role (needs the `cloud` feature).
    #[cfg(not(feature = "cloud"))]
    Ami(autopaxos::boot::NotBuilt),
    /// Launch, list and terminate a cluster on EC2 (needs the `cloud` feature).
    #[cfg(feature = "cloud")]
    Cloud(autopaxos::cloud::cluster::CloudArgs),
    /// Launch, list and terminate a cluster on EC2 (needs the `cloud` feature).
    #[cfg(not(feature = "cloud"))]
    Cloud(autopaxos::boot::NotBuilt),
}

/// A core list as one argument (`0-3,6`); a newtype so clap takes it as one value, not many.
#[derive(Clone, Debug)]
struct Cores(Vec<usize>);

fn parse_core_list(s: &str) -> Result<Cores, String> {
    parse_cores(s).map(Cores)
}

/// Settings shared by every command that runs nodes.
#[derive(Args, Clone)]
struct NodeFlags {
    /// Commands per batch at batchers (default: the cluster file's `batch_size`, else 100).
    #[arg(long, env = "BATCH_SIZE")]
    batch_size: Option<usize>,
    /// The leader's window: slots proposed and not yet executed, at most (default: the cluster
    /// file's `max_in_flight_slots`, else 1000). Past it batches queue, then batchers hold them,
    /// then new requests are refused with Busy.
    #[arg(long)]
    max_in_flight_slots: Option<usize>,
    /// Frames one connection handles before yielding to the others (the original's
    /// MAX_READS_PER_SOCKET_PER_POLL).
    #[arg(long, env = "MAX_READS_PER_SOCKET_PER_POLL", default_value_t = 100)]
    read_budget: usize,
    /// Cores to run on, e.g. 0-3,6 (default: every core this process may use; a process with fewer
    /// nodes than cores starts at the core its first node's id picks, id mod cores, so processes
    /// started one per node spread over the machine).
    #[arg(long, value_parser = parse_core_list)]
    cores: Option<Cores>,
    /// Replicated state machine: kv (Physalia-style key-value store) or noop (ordering only)
    /// (default: the cluster file's `state_machine`, else kv; with a cluster file, it may only
    /// repeat the file's).
    #[arg(long)]
    state_machine: Option<StateMachineKind>,
    /// Where acceptors and replicas keep their state: each node in DIR/node-<id>, created if
    /// missing (default: the cluster file's data_dir, else ./autopaxos-data; for `local`, a
    /// temporary directory removed at exit).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep acceptors' and replicas' state in memory only, as benchmarks may: NOT crash-safe (a
    /// restarted acceptor forgets its votes).
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Ask every peer to MAC every frame after the handshake (for networks that are not trusted;
    /// costs CPU). Either end asking is enough; the cluster file's `authenticate_frames` does the
    /// same for every node.
    #[arg(long)]
    authenticate_frames: bool,
}

/// How clients load the cluster; shared by `local` and `client`.
#[derive(Args)]
struct LoadFlags {
    /// How long to measure, after a warm-up of 1 s [default: 10s; with `local --resp-addr`: until
    /// interrupted].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Closed-loop clients (each keeps one request outstanding); fewer leave the cluster idle
    /// between batches, so throughput is then bound by latency.
    #[arg(long, default_value_t = 2048)]
    clients: u32,
    /// Bytes per value (at most 65536, the key-value store's limit).
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Open loop: issue this many requests per second in all, on a schedule, whatever the replies
    /// do; each goes to an idle client (of --clients), and one that finds every client busy is
    /// counted as refused at the client. Without it, closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Print one JSON object as the last line of output.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics here while running (off by default).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

/// How long `local` and `client` measure unless told.
const DEFAULT_LOAD_DURATION: Duration = Duration::from_secs(10);

#[derive(Args)]
struct LocalArgs {
    /// Serve the Redis protocol (RESP2) here, from a gateway in front of the local cluster, for as
    /// long as the run lasts (until Ctrl-C without --duration), instead of running the built-in
    /// load: `redis-cli -p 6380` then talks to the replicated store.
    #[arg(long)]
    resp_addr: Option<SocketAddr>,
    /// With --resp-addr: clients must first give the password in FILE (`AUTH <password>`); the file
    /// must be readable by its owner only.
    #[arg(long, value_name = "FILE", requires = "resp_addr")]
    requirepass_file: Option<PathBuf>,
    /// With --metrics-addr: write a Prometheus targets file (JSON, for `file_sd_configs`; see
    /// monitoring/prometheus.yml) naming it, labelled cluster="local".
    #[arg(long, value_name = "FILE", requires = "metrics_addr")]
    prometheus_targets: Option<PathBuf>,
    /// Show the live view of `autopaxos top` (commands/s, latency, lag, leader per node) while the
    /// load runs, refreshed every second; /metrics is then served (on a free loopback port unless
    /// --metrics-addr says where).
    #[arg(long, conflicts_with = "resp_addr")]
    top: bool,
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
    /// any is missing or different, or if the reads stop being answered (kv only). The read-back
    /// takes as long as it needs while reads are answered.
    #[arg(long)]
    verify: bool,
    /// With --verify: give up reading back after this long without a read answered (the cluster
    /// is down), and exit with status 1 saying how many writes were not read back.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    read_back_timeout: Duration,
    /// Also report throughput and p50/p99 latency per window of this many milliseconds (in the
    /// --json object, as `timeline`, each window with its start in Unix milliseconds).
    #[arg(long)]
    timeline_ms: Option<u64>,
    #[command(flatten)]
    load: LoadFlags,
    #[command(flatten)]
    flags: NodeFlags,
}

#[derive(Args)]
struct JepsenArgs {
    /// How long faults are injected.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// After healing every fault, how long the clients go on; the cluster must serve again in it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    recovery: Duration,
    /// Faults to inject (mixed when more than one).
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,partition")]
    nemesis: Vec<autopaxos::jepsen::Nemesis>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Keys in use at once (each replaced by a fresh one every --key-period).
    #[arg(long, default_value_t = 4)]
    keys: u32,
    /// How long a set of keys is used.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    key_period: Duration,
    /// A request unanswered this long is indeterminate.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// Seeds the faults and the operations (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the run's directory (cluster files, logs, data, and metrics-timeline.txt: every node's
    /// counters, once a second) here.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Print one JSON object (the report) as the last line of output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GatewayArgs {
    /// The cluster file.
    #[arg(long)]
    config: PathBuf,
    /// This gateway's node id (replies are routed to it); must not be a cluster node's id.
    #[arg(long, default_value_t = 6000)]
    node: NodeId,
    /// Where to serve RESP (port 0 picks a free port, printed as `resp <addr>` on stdout).
    #[arg(long, default_value = "127.0.0.1:6380")]
    resp_addr: SocketAddr,
    /// Connections served at once; more are refused with Redis's "max number of clients reached".
    #[arg(long, default_value_t = autopaxos::runtime::gateway::DEFAULT_MAX_CONNECTIONS)]
    max_connections: u32,
    /// Clients must first give the password in FILE (`AUTH <password>`, Redis's `requirepass`); the
    /// file must be readable by its owner only.
    #[arg(long, value_name = "FILE")]
    requirepass_file: Option<PathBuf>,
    /// Serve Prometheus metrics here (off by default).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Join the running cluster as a member of its views: `status` then shows this gateway, and
    /// `autopaxos leave` drains it (no new connection; it stops once nothing is in flight). Without
    /// it the gateway is a plain client node of the cluster.
    #[arg(long, requires = "listen")]
    join: bool,
    /// With --join: where this gateway listens for the cluster's messages (not RESP).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// With --join: where the others reach it, if not at --listen.
    #[arg(long, requires = "join")]
    advertise: Option<SocketAddr>,
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
    /// Serve Prometheus metrics here [default: the node's `metrics_address` in the cluster file,
    /// else 0.0.0.0:16000].
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Join the running cluster: the node is not in the cluster file; it announces itself to the
    /// proposers and serves until told to leave. A batcher, proxy leader or unbatcher serves at
    /// once and leaves by `autopaxos leave`. An acceptor, replica or proposer serves once
    /// `autopaxos reconfigure` names it (a new replica is taught the state by its peers), and
    /// leaves once a change removed it and every slot its configurations owned is trimmed. An
    /// acceptor or replica keeps its state in --data-dir.
    #[arg(long, requires = "listen")]
    join: bool,
    /// With --join: where this node listens.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// With --join: where the others reach this node, if not at --listen (e.g. when listening on
    /// 0.0.0.0).
    #[arg(long, requires = "join")]
    advertise: Option<SocketAddr>,
    #[command(flatten)]
    flags: NodeFlags,
}

#[derive(Args)]
struct LeaveArgs {
    /// The cluster file (its cluster id; the node's address if it is configured there).
    #[arg(long)]
    config: PathBuf,
    /// The node to drain.
    #[arg(long)]
    node: NodeId,
    /// Its address, for a node that joined at runtime (not in the file).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// How long to wait for it to drain.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct StatusArgs {
    /// The cluster file.
    #[arg(long)]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// How long to wait for each node's answer.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// Also show the autoscaler whose metrics are served here (its --metrics-addr): sizes, acceptor
    /// groups, replacements under way and done.
    #[arg(long)]
    autoscaler: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct TopArgs {
    /// The cluster file: its nodes' metrics_address are scraped, and nodes no target serves are
    /// shown as down.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A /metrics endpoint to scrape as well (a role's or `local`'s --metrics-addr, a gateway, an
    /// autoscaler, a mock); repeatable.
    #[arg(long = "target", value_name = "ADDR", value_parser = parse_target)]
    targets: Vec<SocketAddr>,
    /// Time between frames (each scrape may take half of it); at least 100ms.
    #[arg(long, default_value = "1s", value_parser = parse_top_interval)]
    interval: Duration,
    /// Stop after this many frames.
    #[arg(long)]
    count: Option<u64>,
    /// Print frames one after another with no escape codes (the default when stdout is not a
    /// terminal).
    #[arg(long)]
    plain: bool,
    /// Print one JSON object per frame, one per line (per node rows, per role totals).
    #[arg(long, conflicts_with = "plain")]
    json: bool,
}

/// `host:port`, also written `http://host:port/metrics`.
fn parse_target(s: &str) -> Result<SocketAddr, String> {
    let bare = s.trim_start_matches("http://").trim_end_matches("/metrics");
    std::net::ToSocketAddrs::to_socket_addrs(bare)
        .map_err(|e| format!("'{s}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

#[derive(Args)]
struct ReconfigureArgs {
    /// The cluster file the cluster runs from.
    #[arg(long)]
    config: PathBuf,
    /// A cluster file with the new acceptor groups, replicas and proposers (new nodes' addresses
    /// included).
    #[arg(long)]
    to: PathBuf,
    /// How long to wait for the change to be in force.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("what").required(true))]
struct ConfigArgs {
    /// Print a commented example cluster file (it names `cluster.secret`: create it with
    /// --new-secret).
    #[arg(long, group = "what")]
    example: bool,
    /// Write a new random cluster secret to FILE, readable by its owner only (mode 0600); never
    /// replaces an existing file. Copy it to every machine of the cluster as securely.
    #[arg(long, value_name = "FILE", group = "what")]
    new_secret: Option<PathBuf>,
    /// Write a Prometheus targets file (JSON, for `file_sd_configs`; see monitoring/prometheus.yml)
    /// listing the `metrics_address` of every node of the --config cluster file, labelled with
    /// the cluster, role and node.
    #[arg(long, value_name = "FILE", group = "what", requires = "config")]
    prometheus_targets: Option<PathBuf>,
    /// The cluster file, for --prometheus-targets.
    #[arg(long)]
    config: Option<PathBuf>,
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
    /// Membership churn: stateless nodes join the running cluster and others drain and leave,
    /// during the faults; every leave must complete.
    #[arg(long)]
    churn: bool,
    /// Frequent changes of configuration during the faults (3 to 6 per seed; heavy faults alone
    /// make 0 to 2): acceptor groups added and removed, acceptors replaced, replicas added,
    /// removed and replaced, proposers added and replaced (the leader half the time).
    #[arg(long)]
    reconfig: bool,
    /// Clients also send batches of ops on one partition in one command, as the RESP gateway
    /// sends a pipeline.
    #[arg(long)]
    batches: bool,
    /// Worker threads (default: the cores this process may use).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct TuneArgs {
    /// The role to measure (batcher, proposer, proxy-leader, acceptor, replica, unbatcher), or all.
    #[arg(value_parser = autopaxos::bench::tune::parse_target)]
    role: autopaxos::bench::tune::Target,
    /// Batch sizes to try, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = autopaxos::bench::tune::parse_positive,
        default_value = "1,10,40,100,400"
    )]
    batch_size: Vec<usize>,
    /// Read budgets to try (frames one connection handles before yielding), comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = autopaxos::bench::tune::parse_positive,
        default_value = "1,10,100,1000"
    )]
    read_budget: Vec<usize>,
    /// How long each point measures, after the benchmark's warm-up.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    duration: Duration,
    /// Bytes per command value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Folder for <role>.csv, <role>.svg and, with all, capacities.toml (created if missing).
    #[arg(long, default_value = "tuning")]
    out: PathBuf,
}

#[derive(Args)]
struct PlanArgs {
    /// Commands per second the cluster must sustain.
    #[arg(long)]
    target_cmds: u64,
    /// Per-role capacities, as written by `autopaxos tune all`.
    #[arg(long, default_value = "tuning/capacities.toml")]
    capacities: PathBuf,
    /// Fraction of each node's measured capacity kept spare, at least 0 and below 1.
    #[arg(long, default_value_t = 0.3)]
    headroom: f64,
    /// EC2 instance type to pack nodes onto (c5.large to c5.24xlarge); one node per vCPU.
    #[arg(long, default_value = "c5.xlarge")]
    instance_type: String,
    /// Failures tolerated.
    #[arg(long, default_value_t = 1)]
    f: usize,
    /// Print one JSON object as the last line of output.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    SECRET_FILE.set(cli.secret_file.clone()).expect("set once");
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
        Command::Bench(args) => bench(args),
        Command::MockUpstream(args) => mock_side(args, true),
        Command::MockDownstream(args) => mock_side(args, false),
        Command::Config(args) => config(args),
        Command::Local(args) => local(args),
        Command::Client(args) => client(args),
        Command::Gateway(args) => gateway(args),
        Command::Jepsen(args) => jepsen(args),
        Command::Proposer(a) => role(RoleKind::Proposer, a),
        Command::Acceptor(a) => role(RoleKind::Acceptor, a),
        Command::ProxyLeader(a) => role(RoleKind::ProxyLeader, a),
        Command::Replica(a) => role(RoleKind::Replica, a),
        Command::Batcher(a) => role(RoleKind::Batcher, a),
        Command::Unbatcher(a) => role(RoleKind::Unbatcher, a),
        Command::Tune(args) => tune(args),
        Command::Plan(args) => plan(args),
        Command::Autoscale(mut args) => {
            args.secret_file = cli.secret_file.clone();
            autopaxos::autoscale::run(*args)
        }
        Command::Boot(args) => autopaxos::boot::run(args),
        Command::Leave(args) => leave(args),
        Command::Status(args) => status(args),
        Command::Top(args) => top(args),
        Command::Reconfigure(args) => reconfigure(args),
        #[cfg(feature = "cloud")]
        Command::Ami(args) => autopaxos::cloud::bake::run(args),
        #[cfg(not(feature = "cloud"))]
        Command::Ami(args) => args.refuse("ami"),
        #[cfg(feature = "cloud")]
        Command::Cloud(args) => autopaxos::cloud::cluster::run(args),
        #[cfg(not(feature = "cloud"))]
        Command::Cloud(args) => args.refuse("cloud"),
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
    let t = Tunables {
        batch_size: flags.batch_size.unwrap_or(base.batch_size),
        max_in_flight_slots: flags.max_in_flight_slots.unwrap_or(base.max_in_flight_slots),
        ..base
    };
    t.validate().map_err(|e| e.to_string())?;
    if flags.read_budget == 0 {
        return Err("--read-budget must be at least 1".into());
    }
    Ok(t)
}

/// A cluster file read for its nodes and addresses only: watching a cluster (`top`, Prometheus
/// targets) needs no secret, and the machine that watches should not hold one.
fn load_file_without_secret(
    path: &std::path::Path,
) -> Result<autopaxos::runtime::config::ClusterFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    autopaxos::runtime::config::ClusterFile::parse(&text, &path.display().to_string())
        .map_err(|e| e.to_string())
}

fn config(args: ConfigArgs) -> Result<(), String> {
    if let Some(path) = args.new_secret {
        return autopaxos::secret::ClusterSecret::generate(&path)
            .map(|()| eprintln!("wrote a new cluster secret to {} (mode 0600)", path.display()))
            .map_err(|e| e.to_string());
    }
    if let (Some(out), Some(cluster)) = (args.prometheus_targets, args.config) {
        let file = load_file_without_secret(&cluster)?;
        let (targets, unnamed) = metrics::prometheus_targets(&file);
        if targets.as_array().is_some_and(Vec::is_empty) {
            return Err(format!(
                "{}: no node names a metrics_address (add `metrics_address = \"ip:port\"` to each [[node]])",
                cluster.display()
            ));
        }
        if !unnamed.is_empty() {
            eprintln!("nodes {unnamed:?} name no metrics_address: they are not in the targets file");
        }
        metrics::write_targets(&out, &targets)?;
        eprintln!(
            "wrote {} targets of cluster '{}' to {}",
            targets.as_array().map_or(0, Vec::len),
            file.cluster_id,
            out.display()
        );
        return Ok(());
    }
    print!("{EXAMPLE}");
    Ok(())
}

fn local(args: LocalArgs) -> Result<(), String> {
    let load = &args.load;
    // `--top` needs /metrics too: on a port of its own choosing unless told where.
    let metrics_addr = load.metrics_addr.or(args.top.then(|| SocketAddr::from(([127, 0, 0, 1], 0))));
    let mut served = None;
    if let Some(addr) = metrics_addr {
        let bound = metrics::install_exporter(addr)?;
        if let Some(path) = &args.prometheus_targets {
            metrics::write_targets(path, &metrics::single_target(bound, "local"))?;
        }
        served = Some(bound);
    }
    let opts = LocalOptions {
        duration: load.duration.unwrap_or(DEFAULT_LOAD_DURATION),
        warmup: Duration::from_secs(1),
        tunables: tunables(&args.node, Tunables::default())?,
        clients: load.clients,
        workload: Workload {
            value_size: load.value_size,
            state_machine: args.node.state_machine.unwrap_or(StateMachineKind::Kv),
            verify: false,
            rate_per_sec: load.rate.unwrap_or(0),
        },
        read_budget: args.node.read_budget,
        cores: args.node.cores.clone().map(|c| c.0).unwrap_or_default(),
        // The progress lines would break the live view's redraw in place.
        progress: !args.top,
        storage: match (args.node.in_memory, args.node.data_dir.clone()) {
            (true, _) => Some(StorageChoice::InMemory),
            (false, Some(dir)) => Some(StorageChoice::Under(dir)),
            (false, None) => None,
        },
        resp_password: args
            .requirepass_file
            .as_deref()
            .map(autopaxos::runtime::gateway::load_password)
            .transpose()?,
        authenticate_frames: args.node.authenticate_frames,
    };
    if let Some(resp) = args.resp_addr {
        return autopaxos::runtime::local::serve_local(opts, resp, load.duration);
    }
    opts.validate()?;
    eprintln!(
        "autopaxos local: f=1 cluster (2 proposers, 3 acceptors, 1 batcher, 1 proxy leader, 2 replicas, 1 unbatcher) \
         + {} clients on cores {:?}, loopback TCP; warm-up 1s, measuring {:?}",
        opts.clients,
        if opts.cores.is_empty() { allowed_cores() } else { opts.cores.clone() },
        opts.duration
    );
    let view = match (args.top, served) {
        (true, Some(target)) => {
            let output = autopaxos::top::Output::for_stdout(false);
            let out = Box::new(std::io::stdout());
            Some(autopaxos::top::Alongside::start(target, Duration::from_secs(1), output, out)?)
        }
        _ => None,
    };
    let report = run_local(opts);
    if let Some(view) = view {
        view.finish()?;
    }
    let report = report?;
    println!("{}", report.summary());
    if load.json {
        println!("{}", serde_json::to_string(&report).expect("serializable"));
    }
    Ok(())
}

fn jepsen(args: JepsenArgs) -> Result<(), String> {
    let binary = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let report = autopaxos::jepsen::run(autopaxos::jepsen::JepsenOptions {
        binary,
        duration: args.duration,
        recovery: args.recovery,
        nemeses: args.nemesis,
        clients: args.clients,
        keys: args.keys,
        key_period: args.key_period,
        op_timeout: args.op_timeout,
        seed: args.seed.unwrap_or_else(rand::random),
        keep: args.keep,
        check_budget: 20_000_000,
    })?;
    print!("{}", report.render());
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("serializable"));
    }
    if report.passed {
        Ok(())
    } else {
        Err(format!("jepsen: {}", report.verdict))
    }
}

fn gateway(args: GatewayArgs) -> Result<(), String> {
    let mut file = load_file(&args.config)?;
    if file.state_machine != StateMachineKind::Kv {
        return Err(format!(
            "the cluster runs the {} state machine (its file's state_machine); the gateway serves only kv",
            file.state_machine
        ));
    }
    file.authenticate_frames |= args.flags.authenticate_frames;
    if let Some(addr) = args.metrics_addr {
        metrics::install_exporter(addr)?;
    }
    let tunables = tunables(&args.flags, file.tunables.clone())?;
    let core = args.flags.cores.clone().map_or_else(|| default_cores(&[args.node]), |c| c.0)[0];
    // Whether the nodes keep their state on disk is their own flag, which a gateway cannot see.
    let settings = autopaxos::runtime::gateway::GatewaySettings {
        max_connections: args.max_connections,
        password: args
            .requirepass_file
            .as_deref()
            .map(autopaxos::runtime::gateway::load_password)
            .transpose()?,
        ..autopaxos::runtime::gateway::GatewaySettings::new(file.cluster_id.clone(), &file.limits)
    };
    if args.listen.is_some() && !args.join {
        return Err("--listen is only for --join".into());
    }
    let joining = args.listen.map(|listen| autopaxos::runtime::gateway::Joining {
        listen,
        advertise: args.advertise.unwrap_or(listen),
    });
    autopaxos::runtime::gateway::serve_gateway(
        &file,
        args.node,
        args.resp_addr,
        tunables,
        settings,
        joining,
        core,
        args.flags.read_budget,
    )
}

/// Waits while every client reads back what it was acknowledged, saying how far it is every few
/// seconds; gives up after `stall` without a read answered.
fn read_back(control: &LoadControl, clients: u32, stall: Duration) {
    let read = || control.verified.load(Ordering::Relaxed) + control.lost.load(Ordering::Relaxed);
    let (mut last_read, mut progress_at, mut said_at) = (read(), Instant::now(), Instant::now());
    while control.verify_done.load(Ordering::Relaxed) < u64::from(clients) {
        std::thread::sleep(Duration::from_millis(50));
        let now_read = read();
        if now_read > last_read {
            (last_read, progress_at) = (now_read, Instant::now());
        } else if progress_at.elapsed() >= stall {
            eprintln!("reading back: no read answered for {stall:?}; giving up");
            return;
        }
        if said_at.elapsed() >= Duration::from_secs(5) {
            said_at = Instant::now();
            let acknowledged = control.acknowledged.load(Ordering::Relaxed);
            eprintln!(
                "reading back: {} of {} acknowledged writes",
                thousands(now_read),
                thousands(acknowledged)
            );
        }
    }
}

fn client(args: ClientArgs) -> Result<(), String> {
    let load = &args.load;
    let mut file = load_file(&args.config)?;
    file.authenticate_frames |= args.flags.authenticate_frames;
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
    if args.timeline_ms == Some(0) {
        return Err("--timeline-ms must be at least 1".into());
    }
    let timeline = args.timeline_ms.map(|ms| std::sync::Mutex::new(Timeline::new(ms.saturating_mul(1_000))));
    let control = Arc::new(LoadControl { timeline, ..LoadControl::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let cores = args.flags.cores.clone().map_or_else(|| default_cores(&[args.node]), |c| c.0);
    let state_machine = file.state_machine_for(args.flags.state_machine)?;
    if args.verify && state_machine != StateMachineKind::Kv {
        return Err("--verify needs the kv state machine".into());
    }
    if args.verify && load.rate.is_some() {
        return Err("--verify runs closed loop: leave out --rate".into());
    }
    let workload = Workload {
        value_size: load.value_size,
        state_machine,
        verify: args.verify,
        rate_per_sec: load.rate.unwrap_or(0),
    };
    workload.validate()?;
    let pool = client_pool(args.node, load.clients, file.config.clone(), tunables, workload, control.clone());
    let plan = ProcessPlan {
        cluster_id: file.cluster_id.clone(),
        security: file.security()?,
        cores: vec![(cores[0], vec![pool])],
        addresses: file.addresses.clone(),
        read_budget: args.flags.read_budget,
        stop: stop.clone(),
        spin_before_park: Duration::ZERO,
    };
    let (epoch, epoch_unix) = (Instant::now(), std::time::SystemTime::now());
    let running = start(plan, epoch)?;
    std::thread::sleep(Duration::from_secs(1));
    control.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut last = (t0, 0u64);
    let duration = load.duration.unwrap_or(DEFAULT_LOAD_DURATION);
    while t0.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1).min(duration.saturating_sub(t0.elapsed())));
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
        read_back(&control, load.clients, args.read_back_timeout);
    }
    stop.store(true, Ordering::Relaxed);
    let h = running.join();
    let verify_failed = if args.verify {
        let (verified, lost) =
            (control.verified.load(Ordering::Relaxed), control.lost.load(Ordering::Relaxed));
        let finished = control.verify_done.load(Ordering::Relaxed);
        println!("verify: {verified} acknowledged writes read back intact, {lost} lost ({finished}/{} clients finished reading back)", load.clients);
        let unread = control.acknowledged.load(Ordering::Relaxed).saturating_sub(verified + lost);
        match (lost, finished < u64::from(load.clients)) {
            (0, false) => None,
            (0, true) => Some(format!(
                "verification incomplete: {unread} acknowledged writes not read back (no read was answered \
                 for {:?}; of those read back none was lost)",
                args.read_back_timeout
            )),
            (lost, _) => Some(format!("verification failed: {lost} acknowledged writes lost")),
        }
    } else {
        None
    };
    let rate = completed as f64 / window;
    println!(
        "{} cmds/s ({completed} commands in {window:.1}s, {} clients); latency p50 {} us p99 {} us max {} us; {} busy replies",
        thousands(rate as u64),
        load.clients,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        control.busy.load(Ordering::Relaxed)
    );
    if load.json {
        let mut json = serde_json::json!({
            "cmds_per_sec": rate, "completed": completed, "p50_us": h.value_at_quantile(0.5),
            "p99_us": h.value_at_quantile(0.99), "max_us": h.max(), "clients": load.clients,
            "duration_s": window, "retries": control.retries.load(Ordering::Relaxed),
            "busy": control.busy.load(Ordering::Relaxed),
            "offered": control.offered_measured.load(Ordering::Relaxed),
            "refused_at_client": control.refused_at_client.load(Ordering::Relaxed),
        });
        if let (Some(timeline), Some(ms)) = (&control.timeline, args.timeline_ms) {
            let epoch_ms =
                epoch_unix.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let windows: Vec<serde_json::Value> = timeline
                .lock()
                .expect("not poisoned")
                .windows()
                .into_iter()
                .map(|(start_us, n, p50, p99)| {
                    serde_json::json!({
                        "unix_ms": epoch_ms + start_us / 1_000,
                        "cmds_per_sec": n as f64 * 1_000.0 / ms as f64,
                        "p50_us": p50, "p99_us": p99,
                    })
                })
                .collect();
            json["timeline"] = windows.into();
        }
        println!("{json}");
    }
    if completed == 0 {
        if let Some((node, peer)) = autopaxos::runtime::conn::refused_as_taken() {
            return Err(format!(
                "no command completed: node {peer} closed every connection right after it opened, as \
                 nodes do with a second process claiming a node id: is another client running as node \
                 {node}? (give each client its own --node)"
            ));
        }
        return Err("no command completed: is the cluster up?".into());
    }
    if let Some(failure) = verify_failed {
        return Err(failure);
    }
    Ok(())
}

fn role(kind: RoleKind, args: RoleArgs) -> Result<(), String> {
    if let Some(id) =
        args.node.iter().enumerate().find_map(|(i, id)| args.node[..i].contains(id).then_some(id))
    {
        return Err(format!("--node names node {id} twice: one node id runs in one place"));
    }
    let mut file = load_file(&args.config)?;
    file.authenticate_frames |= args.flags.authenticate_frames;
    let metrics_addr = args.metrics_addr.unwrap_or_else(|| role_metrics_addr(&file, &args.node));
    let tunables = tunables(&args.flags, file.tunables.clone())?;
    if args.join {
        let [id] = args.node[..] else {
            return Err(format!("--join starts one node; got {} ids", args.node.len()));
        };
        let core = args.flags.cores.map_or_else(|| default_cores(&[id]), |c| c.0)[0];
        let storage =
            StorageChoice::from_flags(args.flags.in_memory, args.flags.data_dir, file.data_dir.clone());
        return autopaxos::runtime::admin::serve_joining(autopaxos::runtime::admin::JoinOptions {
            file,
            kind,
            id,
            listen: args.listen.expect("clap requires --listen with --join"),
            advertise: args.advertise,
            tunables,
            read_budget: args.flags.read_budget,
            core,
            metrics_addr,
            storage,
        });
    }
    if args.listen.is_some() {
        return Err(
            "--listen is only for --join: a configured node listens at its address in the file".into()
        );
    }
    let storage = StorageChoice::from_flags(args.flags.in_memory, args.flags.data_dir, file.data_dir.clone());
    let state_machine = file.state_machine_for(args.flags.state_machine)?;
    autopaxos::boot::run_nodes(autopaxos::boot::ServeOptions {
        file,
        origin: args.config.display().to_string(),
        kind,
        nodes: args.node,
        tunables,
        read_budget: args.flags.read_budget,
        cores: args.flags.cores.map(|c| c.0).unwrap_or_default(),
        state_machine,
        metrics_addr,
        storage,
    })
}

/// Where a process running `nodes` serves its metrics unless told: the first of them that names a
/// `metrics_address` in the cluster file (the others are served there too: one exporter per
/// process), else the default port on every interface.
fn role_metrics_addr(file: &autopaxos::runtime::config::ClusterFile, nodes: &[NodeId]) -> SocketAddr {
    let named: Vec<(NodeId, SocketAddr)> =
        nodes.iter().filter_map(|id| file.metrics_addresses.get(id).map(|a| (*id, *a))).collect();
    let Some(&(first, addr)) = named.first() else { return SocketAddr::from(([0, 0, 0, 0], 16000)) };
    for (id, other) in &named[1..] {
        if *other != addr {
            tracing::warn!(
                "node {id} names metrics_address {other}, but this process serves the metrics of all \
                 its nodes at node {first}'s, {addr}: `top` and Prometheus find node {id} there"
            );
        }
    }
    addr
}

fn status(args: StatusArgs) -> Result<(), String> {
    let file = load_file(&args.config)?;
    let status = autopaxos::runtime::operator::gather(&file, args.timeout);
    let scaler = args.autoscaler.map(|addr| autopaxos::autoscale::AutoscalerView::fetch(addr, args.timeout));
    if args.json {
        let mut json = status.to_json();
        match &scaler {
            Some(Ok(view)) => json["autoscaler"] = serde_json::to_value(view).map_err(|e| e.to_string())?,
            Some(Err(e)) => json["autoscaler"] = serde_json::json!({ "error": e }),
            None => {}
        }
        println!("{}", serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?);
    } else {
        print!("{}", status.render());
        match &scaler {
            Some(Ok(view)) => print!("{}", view.render()),
            Some(Err(e)) => println!("autoscaler: {e}"),
            None => {}
        }
    }
    if let Some(Err(e)) = scaler {
        return Err(e);
    }
    // A node that a change took out of the configuration and that is gone is not a fault.
    let unreachable: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.status.is_err() && !status.removed(n.id, n.role))
        .map(|n| n.id.to_string())
        .collect();
    if unreachable.is_empty() {
        return Ok(());
    }
    // Every node refusing this tool's secret is one fault of the tool's, not of the cluster's.
    let secret_refused = status
        .nodes
        .iter()
        .filter_map(|n| n.status.as_ref().err())
        .filter(|why| why.contains("cluster secret"))
        .count();
    let hint = if secret_refused == unreachable.len() {
        " (every one refused the cluster secret this tool proved: is it the cluster's? see secret_file and --secret-file)"
    } else {
        ""
    };
    Err(format!("unreachable: node {}{hint}", unreachable.join(", ")))
}

fn parse_top_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s}: between 100ms and 1h"));
    }
    Ok(d)
}

fn top(args: TopArgs) -> Result<(), String> {
    use autopaxos::top::{Output, Top, TopOptions};
    let file = args.config.as_deref().map(load_file_without_secret).transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once, should a frame be stuck (the first sets `stop`).
        signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let output = if args.json { Output::Json } else { Output::for_stdout(args.plain) };
    let opts = TopOptions {
        cluster: file.as_ref().map(|f| f.cluster_id.clone()),
        expected: file.as_ref().map(Top::expected_of).unwrap_or_default(),
        targets: args.targets,
        interval: args.interval,
        count: args.count,
        output,
        stop,
    };
    autopaxos::top::run(opts, &mut std::io::stdout().lock())
}

fn reconfigure(args: ReconfigureArgs) -> Result<(), String> {
    let file = load_file(&args.config)?;
    let to = load_file(&args.to)?;
    let same = |a: &autopaxos::protocol::ClusterConfig, b: &autopaxos::protocol::ClusterConfig| {
        (a.f, &a.proxy_leaders, &a.batchers, &a.unbatchers)
            == (b.f, &b.proxy_leaders, &b.batchers, &b.unbatchers)
    };
    if to.cluster_id != file.cluster_id {
        return Err(format!("{}: another cluster ({})", args.to.display(), to.cluster_id));
    }
    if !same(&file.config, &to.config) {
        return Err(format!(
            "{}: only acceptor groups, replicas and proposers change by reconfiguration (f, proxy \
             leaders, batchers and unbatchers must be as in {}; stateless nodes join and leave)",
            args.to.display(),
            args.config.display()
        ));
    }
    let target = autopaxos::protocol::configuration::Configuration::from_cluster(&to.config);
    let done = autopaxos::runtime::operator::reconfigure(&file, target, args.timeout)?;
    println!(
        "epoch {} in force from slot {}, {:.1} ms after it was asked for ({:.1} ms after the leader took it)",
        done.epoch,
        done.from_slot,
        done.took.as_secs_f64() * 1e3,
        done.at_leader.as_secs_f64() * 1e3
    );
    Ok(())
}

fn leave(args: LeaveArgs) -> Result<(), String> {
    let file = load_file(&args.config)?;
    if let Some(role @ (RoleKind::Acceptor | RoleKind::Replica | RoleKind::Proposer)) =
        file.role_of(args.node)
    {
        return Err(format!(
            "node {} is {} {}: acceptors, replicas and proposers leave by a change of configuration \
             (`autopaxos reconfigure --to` a file without it), not by `leave`",
            args.node,
            if role == RoleKind::Acceptor { "an" } else { "a" },
            role.name()
        ));
    }
    let addr = match (args.addr, file.addresses.get(&args.node)) {
        (Some(addr), _) => addr,
        (None, Some(&addr)) => addr,
        (None, None) => {
            return Err(format!("node {} is not in {}: give its --addr", args.node, args.config.display()))
        }
    };
    // An id no cluster node uses: the admin connection is a client of the node for its answer.
    let admin_id = 4_000_000_000 + std::process::id() % 100_000_000;
    let started = Instant::now();
    autopaxos::runtime::admin::request_leave(&file.cluster_id, file.secret()?, addr, admin_id, args.timeout)?;
    println!("node {} at {addr} drained and left in {:.2?}", args.node, started.elapsed());
    Ok(())
}

fn tune(args: TuneArgs) -> Result<(), String> {
    use autopaxos::bench::tune::{run, Grid, Progress, TuneOptions};
    let opts = TuneOptions {
        target: args.role,
        grid: Grid::new(args.batch_size, args.read_budget)?,
        duration: args.duration,
        value_size: args.value_size,
        out: args.out,
    };
    let mut progress = Progress::stderr(opts.points());
    run(&opts, autopaxos::bench::run_bench, &mut progress, &mut std::io::stdout()).map(|_| ())
}

fn plan(args: PlanArgs) -> Result<(), String> {
    use autopaxos::bench::plan::{load_capacities, PlanRequest};
    let caps = load_capacities(&args.capacities).map_err(|e| e.to_string())?;
    let request = PlanRequest {
        target_cmds: args.target_cmds,
        headroom: args.headroom,
        instance_type: args.instance_type,
        f: args.f,
        capacities_file: args.capacities.display().to_string(),
    };
    let plan = autopaxos::bench::plan::plan(&caps, &request).map_err(|e| e.to_string())?;
    println!("{}", plan.render());
    if args.json {
        println!("{}", serde_json::to_string(&plan).expect("serializable"));
    }
    Ok(())
}

fn parse_bench_role(s: &str) -> Result<RoleKind, String> {
    match parse_bench_target(s)? {
        BenchTarget::Role(role) => Ok(role),
        BenchTarget::Disk | BenchTarget::Recovery | BenchTarget::Gateway | BenchTarget::Hashflood => {
            Err(format!("the mocks surround a cluster role, not '{s}'"))
        }
    }
}

/// What `bench` measures: a role, the disk under the data directory, or how long stateful nodes
/// take to recover a large log or snapshot.
#[derive(Clone, Copy, Debug)]
enum BenchTarget {
    Role(RoleKind),
    Disk,
    Recovery,
    Gateway,
    Hashflood,
}

fn parse_bench_target(s: &str) -> Result<BenchTarget, String> {
    match s {
        "disk" => return Ok(BenchTarget::Disk),
        "recovery" => return Ok(BenchTarget::Recovery),
        "gateway" => return Ok(BenchTarget::Gateway),
        "hashflood" => return Ok(BenchTarget::Hashflood),
        _ => {}
    }
    RoleKind::from_name(s)
        .filter(|r| autopaxos::bench::BENCH_ROLES.contains(r))
        .map(BenchTarget::Role)
        .ok_or_else(|| format!("'{s}' is not something bench measures (batcher, proposer, proxy-leader, acceptor, replica, unbatcher, gateway, disk, recovery, hashflood)"))
}

/// `bench disk`: synced small writes per second and synced large-write bandwidth in `--data-dir`.
fn bench_disk(args: &BenchArgs) -> Result<(), String> {
    let dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("bench disk: 4 KiB and 1 MiB direct writes, each followed by fdatasync, in {}", dir.display());
    let report = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { autopaxos::storage::measure::measure_disk(&dir).await })
        .map_err(|e| format!("cannot start an executor: {e}"))?
        .join()
        .map_err(|e| format!("the executor failed: {e}"))?
        .map_err(|e| e.to_string())?;
    println!("{report}");
    if args.json {
        let json = serde_json::json!({
            "fdatasync_4k_per_sec": report.fdatasync_4k_per_sec,
            "sync_4k_mean_us": report.sync_4k_mean_us,
            "sync_write_1m_mb_per_sec": report.sync_write_1m_mb_per_sec,
        });
        println!("{json}");
    }
    Ok(())
}

/// `bench recovery`: an acceptor with a `--bytes` log and a replica with a `--bytes` snapshot, each
/// timed from process start to serving.
fn bench_recovery(args: &BenchArgs) -> Result<(), String> {
    let binary = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let opts = autopaxos::bench::recovery::RecoveryBenchOptions {
        bytes: args.bytes,
        dir: args.data_dir.clone(),
        binary,
    };
    let report = autopaxos::bench::recovery::run_recovery_bench(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("serializable"));
    }
    Ok(())
}

/// A size such as `1GiB`, `512MiB`, `64KiB` or a plain number of bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &s[digits.len()..] {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("'{s}': unknown unit '{other}' (use B, KiB, MiB or GiB)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size like 1GiB or 512MiB"))?;
    n.checked_mul(unit)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("'{s}' is not a positive size that fits 64 bits"))
}

/// `bench gateway`: the RESP gateway between pipelining clients and a mock cluster.
fn bench_gateway(args: &BenchArgs) -> Result<(), String> {
    let cores = allowed_cores();
    let gateway_core = args.cores_under_test.as_ref().map_or(cores[0], |c| c.0[0]);
    let other = args.mock_cores.as_ref().map_or(*cores.get(1).unwrap_or(&cores[0]), |c| c.0[0]);
    let opts = autopaxos::bench::gateway::GatewayBenchOptions {
        duration: args.duration,
        connections: args.connections,
        pipeline: args.pipeline,
        value_size: args.value_size,
        cores: (gateway_core, other),
    };
    eprintln!(
        "bench gateway: {} connections x {} pipelined SETs of {} B on core {other}, the gateway on core {gateway_core}, for {:?}",
        opts.connections, opts.pipeline, opts.value_size, opts.duration
    );
    let r = autopaxos::bench::gateway::run(&opts)?;
    println!(
        "gateway: {} cmds/s using {:.0}% of its core: {} cmds/s per core",
        thousands(r.cmds_per_sec as u64),
        r.gateway_busy * 100.0,
        thousands(r.cmds_per_sec_per_core as u64)
    );
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// `bench hashflood`: puts of keys that all collide under the old fixed hash, and of random keys,
/// through the KV store's apply path with the old and the keyed maps.
fn bench_hashflood(args: &BenchArgs) -> Result<(), String> {
    if args.keys == 0 || args.rounds == 0 {
        return Err("--keys and --rounds must be at least 1".into());
    }
    let opts = autopaxos::bench::hashflood::HashfloodOptions {
        keys: args.keys,
        value_size: args.value_size,
        rounds: args.rounds,
    };
    eprintln!(
        "bench hashflood: {} puts of {} B values per case, median of {} rounds",
        opts.keys, opts.value_size, opts.rounds
    );
    let r = autopaxos::bench::hashflood::run(&opts);
    for c in &r.cases {
        println!(
            "{:>7} keys, {:<15}: {:>9.4} s  {:>12} puts/s  (best round {:.4} s, {:.0} ns/put)",
            c.keys,
            c.hasher,
            c.apply_s,
            thousands(c.ops_per_sec as u64),
            c.best_s,
            c.best_s * 1e9 / r.keys as f64
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<(), String> {
    let role = match args.role {
        BenchTarget::Hashflood => return bench_hashflood(&args),
        BenchTarget::Disk => return bench_disk(&args),
        BenchTarget::Recovery => return bench_recovery(&args),
        BenchTarget::Gateway => return bench_gateway(&args),
        BenchTarget::Role(role) => role,
    };
    if args.batch_size == 0 || args.read_budget == 0 {
        return Err("--batch-size and --read-budget must be at least 1".into());
    }
    let opts = autopaxos::bench::BenchOptions {
        role,
        duration: args.duration,
        batch_size: args.batch_size,
        read_budget: args.read_budget,
        value_size: args.value_size,
        cores_under_test: args.cores_under_test.map(|c| c.0).unwrap_or_default(),
        mock_cores: args.mock_cores.map(|c| c.0).unwrap_or_default(),
        state_machine: args.state_machine,
        in_memory: args.in_memory,
        authenticate_frames: args.authenticate_frames,
    };
    eprintln!(
        "bench {}: measuring the role for {:?}, then the wire ceiling for as long{}",
        role.name(),
        args.duration,
        match role {
            RoleKind::Acceptor | RoleKind::Replica if args.in_memory => " (in memory: not crash-safe)",
            RoleKind::Acceptor | RoleKind::Replica => " (durable: its log in a temporary directory)",
            _ => "",
        }
    );
    let r = autopaxos::bench::run_bench(&opts)?;
    println!(
        "{}: {} msgs/s ({} cmds/s, {:.1} MB/s in); time through the role p50 {} us, p99 {} us",
        r.role,
        thousands(r.msgs_per_sec as u64),
        thousands(r.cmds_per_sec as u64),
        r.bytes_per_sec / 1e6,
        r.p50_us,
        r.p99_us
    );
    println!(
        "wire ceiling (the same mocks and frames, no role between): {} msgs/s; the role reaches {:.2} of it",
        thousands(r.wire_ceiling_msgs_per_sec as u64),
        r.ratio_to_ceiling
    );
    println!(
        "busy: role core {:.0}%, mock core {:.0}%; batch size {}, read budget {}",
        r.role_busy * 100.0,
        r.mock_busy * 100.0,
        r.batch_size,
        r.read_budget
    );
    if r.mock_saturated {
        println!("warning: the mocks' core was saturated: the role may do more than this (the figure is a lower bound)");
    }
    if args.json {
        println!("{}", serde_json::to_string(&r).expect("serializable"));
    }
    Ok(())
}

#[derive(Args)]
struct MockArgs {
    /// The role the mocks surround: batcher, proposer, proxy-leader, acceptor, replica or unbatcher.
    #[arg(value_parser = parse_bench_role)]
    role: RoleKind,
    /// The cluster file (the shape of `autopaxos config --example`: nodes 1-10).
    #[arg(long)]
    config: PathBuf,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Upstream only: messages per second sent into the role, open-loop.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Commands per batch in what the upstream sends.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 100)]
    batch_size: usize,
    /// Bytes per command value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Cores to run on (default: the first core this process may use).
    #[arg(long, value_parser = parse_core_list)]
    cores: Option<Cores>,
}

/// Runs one side of a role's mocks as a process of its own (the original's `mock_component`).
fn mock_side(args: MockArgs, upstream: bool) -> Result<(), String> {
    use autopaxos::bench::mock::{MockNode, Part, World, CLIENT_NODE};
    use autopaxos::bench::run::{part_of, target_id};
    let file = load_file(&args.config)?;
    if file.config != autopaxos::protocol::ClusterConfig::f1(1, 1, 1, 1) {
        return Err(format!(
            "{}: the mocks need the cluster of `autopaxos config --example` (nodes 1-10)",
            args.config.display()
        ));
    }
    if args.batch_size == 0 || args.rate == 0 {
        return Err("--batch-size and --rate must be at least 1".into());
    }
    let role = args.role;
    let target = target_id(role);
    let measuring = Arc::new(AtomicBool::new(true));
    let world = Arc::new(std::sync::Mutex::new(World::new(
        role,
        args.batch_size,
        args.value_size,
        u64::MAX,
        measuring,
        autopaxos::protocol::configuration::ConfigHistory::new(
            &file.config,
            file.tunables.max_in_flight_slots as u64,
        ),
    )));
    let mut launches = Vec::new();
    let ids: Vec<NodeId> =
        file.config.all_nodes().map(|(id, _)| id).chain([CLIENT_NODE]).filter(|&id| id != target).collect();
    for id in ids {
        let part = part_of(role, id);
        let mine = matches!(part, Part::Source | Part::Acceptor | Part::Watermark) == upstream;
        if !mine {
            continue;
        }
        let world = world.clone();
        let rate = args.rate;
        let listen = file.addresses.get(&id).copied();
        launches.push(NodeLaunch {
            id,
            listen,
            // The client mock has no address: it reaches the role first so replies can come back.
            dial_at_start: if listen.is_none() { vec![target] } else { Vec::new() },
            disk: None,
            resp: None,
            build: Box::new(move |_| {
                let node = MockNode::new(id, part, target, world);
                Ok(Box::new(if part == Part::Source { node.open_loop(rate) } else { node }))
            }),
        });
    }
    let names: Vec<String> = launches.iter().map(|l| l.id.to_string()).collect();
    eprintln!(
        "mock-{} for {} (node {target}): mock nodes {}",
        if upstream { "upstream" } else { "downstream" },
        role.name(),
        names.join(", ")
    );
    let core = args.cores.map_or_else(|| allowed_cores()[0], |c| c.0[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let plan = ProcessPlan {
        cluster_id: file.cluster_id.clone(),
        security: file.security()?,
        cores: vec![(core, launches)],
        addresses: file.addresses.clone(),
        read_budget: 100,
        stop: stop.clone(),
        spin_before_park: Duration::ZERO,
    };
    let running = start(plan, Instant::now())?;
    let t0 = Instant::now();
    let mut last = 0u64;
    while t0.elapsed() < args.duration {
        std::thread::sleep(Duration::from_secs(1).min(args.duration.saturating_sub(t0.elapsed())));
        let w = world.lock().expect("not poisoned");
        let (count, what) =
            if upstream { (w.sent, "sent into the role") } else { (w.done, "came out of the role") };
        println!(
            "{:>6.1}s {:>12} msgs/s {what} ({} in all)",
            t0.elapsed().as_secs_f64(),
            thousands(count - last),
            count
        );
        last = count;
    }
    stop.store(true, Ordering::Relaxed);
    running.join();
    Ok(())
}

#[derive(Args)]
struct BenchArgs {
    /// The role to measure: batcher, proposer, proxy-leader, acceptor, replica, unbatcher or
    /// gateway (RESP clients pipelining SETs into it, a mock cluster behind); or
    /// `disk`, the device under --data-dir (fdatasync rate of 4 KiB writes, synced 1 MiB bandwidth);
    /// or `recovery`, an acceptor with a --bytes log and a replica with a --bytes snapshot, each
    /// timed from process start to serving; or `hashflood`, --keys puts of keys that collide under
    /// the KV store's old fixed hash (and of random keys) through its old and its keyed maps.
    #[arg(value_parser = parse_bench_target)]
    role: BenchTarget,
    /// How long to measure the role (and then the ceiling), after a 0.5 s warm-up each.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Commands per batch.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 100)]
    batch_size: usize,
    /// Frames one connection handles before yielding.
    #[arg(long, env = "MAX_READS_PER_SOCKET_PER_POLL", default_value_t = 100)]
    read_budget: usize,
    /// Bytes per command value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Core(s) for the role under test (default: the first core this process may use).
    #[arg(long, value_parser = parse_core_list)]
    cores_under_test: Option<Cores>,
    /// Core(s) for the mocks (default: the next core this process may use).
    #[arg(long, value_parser = parse_core_list)]
    mock_cores: Option<Cores>,
    /// Print one JSON object as the last line of output.
    #[arg(long)]
    json: bool,
    /// The replica's state machine: kv, or noop to measure ordering without execution.
    #[arg(long, default_value = "kv")]
    state_machine: StateMachineKind,
    /// An acceptor or replica under test keeps its state in memory (default: on disk, in a
    /// temporary directory removed after the run).
    #[arg(long)]
    in_memory: bool,
    /// `bench disk`: the directory whose device to measure (default: the current one).
    /// `bench recovery`: where to write the nodes' data (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `bench recovery`: the size of the acceptor's log and of the replica's state, e.g. 1GiB.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    bytes: u64,
    /// `bench gateway`: RESP connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// `bench gateway`: requests each connection keeps outstanding (redis-benchmark's -P).
    #[arg(long, default_value_t = 40)]
    pipeline: usize,
    /// Every connection MACs every frame (what `--authenticate-frames` costs a role: compare with a
    /// run without it).
    #[arg(long)]
    authenticate_frames: bool,
    /// `bench hashflood`: puts per case.
    #[arg(long, default_value_t = 30_000)]
    keys: usize,
    /// `bench hashflood`: runs of each case (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn sim(args: SimArgs) -> ExitCode {
    let opts = SimOptions {
        churn: args.churn,
        reconfig: args.reconfig,
        batches: args.batches,
        ..SimOptions::new(args.faults)
    };
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
            "seed {seed}: {} requests completed, {} refused busy, {} slots chosen, {} elections, {} messages, {:.3}s virtual{}",
            outcome.completed,
            outcome.refused,
            outcome.chosen_slots,
            outcome.elections,
            outcome.delivered,
            outcome.end_us as f64 / 1e6,
            if outcome.inconclusive { ", linearizability inconclusive" } else { "" }
        );
        if args.churn {
            println!(
                "seed {seed}: {} nodes joined, {} drained and left, {} messages reached a node after it left",
                outcome.joined, outcome.left, outcome.after_left
            );
        }
        println!(
            "1 seeds, {} violations (f={}; {})",
            usize::from(!outcome.violations.is_empty()),
            outcome.f,
            outcome.faults
        );
        return if outcome.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let on_failure = |o: &autopaxos::sim::Outcome| {
        println!("seed {}: {}", o.seed, o.violations.join("; "));
    };
    let summary = run_seeds(args.start, args.seeds, &opts, threads, &on_failure);
    eprintln!(
        "{:?} faults, seeds {}..{}: {} requests completed, {} refused busy, {} elections, {} inconclusive linearizability checks, {:.1}s wall",
        args.faults,
        args.start,
        args.start + args.seeds,
        summary.completed,
        summary.refused,
        summary.elections,
        summary.inconclusive,
        started.elapsed().as_secs_f64()
    );
    if args.churn {
        eprintln!("churn: {} nodes joined, {} drained and left", summary.joined, summary.left);
    }
    let [f1, f2, f3] = summary.seeds_by_f;
    eprintln!("seeds by f: f=1 {f1}, f=2 {f2}, f=3 {f3}");
    println!("{} seeds, {} violations ({})", summary.seeds, summary.failures.len(), summary.faults);
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
