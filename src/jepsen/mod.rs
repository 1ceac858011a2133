//! `autopaxos jepsen`: a Jepsen-style fault harness, in the project. It starts a multi-process
//! cluster on loopback (one process per node, durable, and two RESP gateways), runs concurrent
//! clients that read, write and compare-and-set (`SET ... IFEQ`) a few keys over RESP, injects
//! faults, records every invocation and completion (a timeout or a lost connection is recorded as
//! indeterminate: it may or may not have happened), and checks the history for linearizability key
//! by key with the simulator's Wing-Gong-Lowe checker.
//!
//! Nemeses: `kill` (SIGKILL any node or gateway, restart it on its data directory a moment later),
//! `pause` (SIGSTOP, then SIGCONT), `partition` (cut links between processes: one node isolated,
//! the processes split in two, or split in two but for a "bridge" node linked to both halves; every
//! connection between processes passes through a proxy of the
//! harness, one per directed link, see [`proxy`]); with several nemeses, faults are sometimes mixed.
//! After the last fault everything is healed and the clients go on for a recovery period, in which
//! the cluster must serve again.
//!
//! Keys are used for a few seconds each and then replaced by fresh ones, so each key's history stays
//! small enough to check exactly even with indeterminate operations in it.

pub mod proxy;
pub mod register;

use crate::protocol::{ClusterConfig, NodeId};
use crate::resp::{encode_request, parse_reply, Reply};
use crate::sim::linearizability::{Operation, Verdict};
use proxy::Proxies;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use register::{Recorded, RegisterOp, RegisterRet};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Nemesis {
    /// SIGKILL a process, restart it later.
    Kill,
    /// SIGSTOP a process, SIGCONT it later.
    Pause,
    /// Cut links between processes, heal them later.
    Partition,
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct JepsenOptions {
    /// The `autopaxos` binary every node runs.
    pub binary: PathBuf,
    /// How long faults are injected.
    pub duration: Duration,
    /// After healing, how long the clients go on (the cluster must serve again within it).
    pub recovery: Duration,
    /// Which faults.
    pub nemeses: Vec<Nemesis>,
    /// Concurrent clients.
    pub clients: u32,
    /// Keys in use at once.
    pub keys: u32,
    /// How long a set of keys is used before fresh ones replace it.
    pub key_period: Duration,
    /// A request unanswered this long is indeterminate (and its connection is dropped).
    pub op_timeout: Duration,
    /// Seeds the choice of faults, targets and operations.
    pub seed: u64,
    /// Keep the run's directory (logs, data, cluster files) here instead of removing it.
    pub keep: Option<PathBuf>,
    /// Search steps the checker may take per key before it calls a key inconclusive.
    pub check_budget: u64,
}

/// One fault event, as printed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultEvent {
    /// Seconds since the clients started.
    pub at_s: f64,
    /// What happened.
    pub what: String,
}

/// What a run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JepsenReport {
    /// Seconds of faults, then of recovery.
    pub duration_s: f64,
    /// Recovery period, seconds.
    pub recovery_s: f64,
    /// Clients.
    pub clients: u32,
    /// The nemeses used.
    pub nemeses: Vec<Nemesis>,
    /// The run's seed.
    pub seed: u64,
    /// Every fault injected and healed, in order.
    pub faults: Vec<FaultEvent>,
    /// Operations with a definite reply.
    pub ok: u64,
    /// Operations that definitely did not happen (refused, or never sent: no gateway reachable).
    pub failed: u64,
    /// Writes and compare-and-sets without a reply (may or may not have happened).
    pub indeterminate: u64,
    /// Operations completed with a reply, per second of the run.
    pub ok_per_second: Vec<u64>,
    /// Keys checked.
    pub keys_checked: usize,
    /// The most operations one key had.
    pub max_ops_per_key: usize,
    /// `linearizable`, `not linearizable: ...`, `inconclusive: ...` or `unavailable after healing`.
    pub verdict: String,
    /// Whether the run passed (linearizable and serving after healing).
    pub passed: bool,
}

impl JepsenReport {
    /// The human summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let nemeses: Vec<String> = self.nemeses.iter().map(|n| format!("{n:?}").to_lowercase()).collect();
        let _ = writeln!(
            s,
            "jepsen: {:.0}s of faults ({}) + {:.0}s of recovery, {} clients, seed {}",
            self.duration_s - self.recovery_s,
            nemeses.join(", "),
            self.recovery_s,
            self.clients,
            self.seed
        );
        let _ = writeln!(s, "faults:");
        for f in &self.faults {
            let _ = writeln!(s, "  {:>7.2}s  {}", f.at_s, f.what);
        }
        let _ = writeln!(
            s,
            "operations: {} ok, {} failed, {} indeterminate",
            self.ok, self.failed, self.indeterminate
        );
        let per_second: Vec<String> = self.ok_per_second.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "ok per second: {}", per_second.join(" "));
        let _ = writeln!(
            s,
            "keys checked: {} (at most {} operations on one)",
            self.keys_checked, self.max_ops_per_key
        );
        let _ = writeln!(s, "verdict: {}", self.verdict);
        s
    }
}

/// util-linux's `setsid`, if it is on the PATH: each node runs in a session of its own, as it would
/// on a machine of its own. In one session the nodes share one scheduling autogroup
/// (`kernel.sched_autogroup_enabled`), and a core they keep busy can leave the kernel worker that
/// completes their direct writes unscheduled for a second or more, stalling every durable node's
/// votes at once (README, "Direct writes need a kernel worker"). `setsid` execs in place (a spawned
/// child leads no process group), so signals to the child's pid reach the node.
fn setsid() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).map(|dir| dir.join("setsid")).find(|p| p.is_file())
        })
        .clone()
}

/// The processes of the cluster: ids 1-13 as `ClusterConfig::f1(1, 2, 2, 2)` numbers them (two of
/// each stateless role, so that one fault on a proxy leader, batcher or unbatcher is one the
/// cluster can ride out, as the replicated roles can), and two gateways.
const GATEWAYS: [NodeId; 2] = [21, 22];

struct Process {
    what: String,
    args: Vec<String>,
    log: PathBuf,
    /// Where the node serves /metrics (the same port across restarts); gateways serve none.
    metrics: Option<SocketAddr>,
    child: Option<Child>,
}

impl Process {
    fn spawn(&mut self, binary: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = match setsid() {
            Some(setsid) => {
                let mut c = Command::new(setsid);
                c.arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        CHILDREN.lock().expect("not poisoned").insert(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            send_signal(signal, child.id());
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            CHILDREN.lock().expect("not poisoned").remove(&child.id());
        }
    }
}

/// `kill SIGNAL PID` (the crate has no `unsafe` for a libc call); errors ignored: the process may be
/// gone already.
fn send_signal(signal: &str, pid: u32) {
    let _ = Command::new("kill").args([signal, &pid.to_string()]).status();
}

/// Every node process the harness runs now: stopped by [`stop_children_on_signal`] if the harness
/// itself is told to stop, so that none outlives it.
static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// On SIGINT, SIGTERM or SIGHUP: SIGKILL every node process (after SIGCONT, for paused ones),
/// remove the run's scratch directory unless it is kept, say so, and exit with status 130. Without
/// it, a harness killed mid-run left its dozen node processes serving on loopback.
fn stop_children_on_signal(scratch: Option<PathBuf>) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot watch for signals: {e}"))?;
    std::thread::spawn(move || {
        let Some(signal) = signals.forever().next() else { return };
        let pids: Vec<u32> = CHILDREN.lock().map(|c| c.iter().copied().collect()).unwrap_or_default();
        for &pid in &pids {
            send_signal("-CONT", pid);
            send_signal("-KILL", pid);
        }
        if let Some(dir) = &scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        eprintln!("[jepsen] stopped by signal {signal}: killed {} node process(es)", pids.len());
        std::process::exit(130);
    });
    Ok(())
}

struct Cluster {
    dir: PathBuf,
    binary: PathBuf,
    processes: BTreeMap<NodeId, Process>,
    proxies: Proxies,
    gateways: Vec<SocketAddr>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.processes.values_mut() {
            p.signal("-CONT");
            p.kill();
        }
    }
}

/// `n` free ports, held (bound) until the caller drops the listeners: nothing else the harness
/// binds meanwhile (its proxies) can take one of them.
fn reserve_addresses(n: usize) -> Result<(Vec<SocketAddr>, Vec<TcpListener>), String> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find free ports: {e}"))?;
    let addrs =
        listeners.iter().map(|l| l.local_addr().map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    Ok((addrs, listeners))
}

impl Cluster {
    fn start(dir: &Path, binary: &Path) -> Result<Cluster, String> {
        let config = ClusterConfig::f1(1, 2, 2, 2);
        let nodes: Vec<(NodeId, &'static str)> =
            config.all_nodes().map(|(id, kind)| (id, kind.name())).collect();
        let (node_addrs, held) = reserve_addresses(2 * nodes.len() + GATEWAYS.len())?;
        let listen: BTreeMap<NodeId, SocketAddr> =
            nodes.iter().map(|n| n.0).zip(node_addrs.iter().copied()).collect();
        let gateway_addrs = node_addrs[nodes.len()..nodes.len() + GATEWAYS.len()].to_vec();
        let metrics_addrs: BTreeMap<NodeId, SocketAddr> = nodes
            .iter()
            .map(|n| n.0)
            .zip(node_addrs[nodes.len() + GATEWAYS.len()..].iter().copied())
            .collect();
        let everyone: Vec<NodeId> = nodes.iter().map(|n| n.0).chain(GATEWAYS).collect();
        let links: Vec<(NodeId, NodeId)> = everyone
            .iter()
            .flat_map(|&from| nodes.iter().map(move |&(to, _)| (from, to)))
            .filter(|(from, to)| from != to)
            .collect();
        let proxies =
            Proxies::start(&links, &listen).map_err(|e| format!("cannot start the proxies: {e}"))?;
        let data = dir.join("data");
        let secret = dir.join("cluster.secret");
        crate::secret::ClusterSecret::generate(&secret).map_err(|e| e.to_string())?;
        let mut processes = BTreeMap::new();
        for &me in &everyone {
            // Each process has its own cluster file: itself at its real address, every other node
            // at the proxy of the link to it.
            let mut file = format!(
                "[cluster]\nid = \"jepsen\"\nf = 1\nsecret_file = \"{}\"\n\n[settings]\ndata_dir = \"{}\"\n",
                secret.display(),
                data.display()
            );
            for &(id, role) in &nodes {
                let addr = if id == me { listen[&id] } else { proxies.addr(me, id) };
                let group = if role == "acceptor" { "group = 0\n" } else { "" };
                let _ =
                    write!(file, "\n[[node]]\nid = {id}\nrole = \"{role}\"\n{group}address = \"{addr}\"\n");
            }
            let path = dir.join(format!("cluster-{me}.toml"));
            std::fs::write(&path, file).map_err(|e| format!("{}: {e}", path.display()))?;
            let core = (me % 2).to_string();
            let config_arg = path.display().to_string();
            let metrics = metrics_addrs.get(&me).copied();
            let metrics_arg = metrics.map(|a| a.to_string()).unwrap_or_default();
            let (what, args) = match nodes.iter().find(|n| n.0 == me) {
                Some(&(_, role)) => (
                    format!("node {me} ({role})"),
                    vec![
                        role,
                        "--config",
                        &config_arg,
                        "--node",
                        &me.to_string(),
                        "--metrics-addr",
                        &metrics_arg,
                        "--cores",
                        &core,
                    ]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                ),
                None => {
                    let index = GATEWAYS.iter().position(|g| *g == me).expect("a gateway");
                    (
                        format!("gateway {me}"),
                        vec![
                            "gateway".to_string(),
                            "--config".into(),
                            config_arg.clone(),
                            "--node".into(),
                            me.to_string(),
                            "--resp-addr".into(),
                            gateway_addrs[index].to_string(),
                            "--cores".into(),
                            core,
                        ],
                    )
                }
            };
            let log = dir.join(format!("{}.log", what.replace([' ', '(', ')'], "_")));
            processes.insert(me, Process { what, args, log, metrics, child: None });
        }
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            processes,
            proxies,
            gateways: gateway_addrs,
        };
        // The proxies are bound: the nodes and gateways may take their ports now.
        drop(held);
        for p in cluster.processes.values_mut() {
            p.spawn(binary)?;
        }
        Ok(cluster)
    }

    fn ids(&self) -> Vec<NodeId> {
        self.processes.keys().copied().collect()
    }
}

/// A connection to a gateway that sends one request at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::new() })
    }

    /// Sends `args` and waits for the reply; an error means the request may or may not have happened.
    fn call(&mut self, args: &[&[u8]], deadline: Instant) -> std::io::Result<Reply> {
        self.stream.write_all(&encode_request(args))?;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What all clients share.
struct Shared {
    gateways: Vec<SocketAddr>,
    stamps: AtomicU64,
    stop: AtomicBool,
    started: Instant,
    history: Mutex<Vec<(Recorded, f64)>>,
    failed: AtomicU64,
    opts: JepsenOptions,
}

impl Shared {
    fn stamp(&self) -> u64 {
        self.stamps.fetch_add(1, Ordering::SeqCst)
    }
}

fn value_bytes(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn key_name(key: u64) -> Vec<u8> {
    format!("jepsen-{key}").into_bytes()
}

/// One client: a closed loop of random operations on the keys of the moment.
fn client(shared: Arc<Shared>, index: u32) {
    let opts = &shared.opts;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ (u64::from(index) + 1).wrapping_mul(0x9e37_79b9));
    let mut conn: Option<Conn> = None;
    let mut attempt = index as usize;
    let mut written = 0u64;
    let mut seen: HashMap<u64, u64> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            let addr = shared.gateways[attempt % shared.gateways.len()];
            attempt += 1;
            match Conn::open(addr, opts.op_timeout) {
                Ok(c) => conn = Some(c),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
            continue;
        };
        let epoch = shared.started.elapsed().as_millis() as u64 / opts.key_period.as_millis().max(1) as u64;
        let key = epoch * u64::from(opts.keys) + rng.gen_range(0..u64::from(opts.keys));
        written += 1;
        let fresh = (u64::from(index) + 1) << 32 | written;
        let op = match rng.gen_range(0..10) {
            0..=3 => RegisterOp::Read { key },
            4..=6 => RegisterOp::Write { key, value: fresh },
            _ => RegisterOp::Cas { key, from: seen.get(&key).copied().unwrap_or(fresh - 1), to: fresh },
        };
        let name = key_name(key);
        let (a, b) = match op {
            RegisterOp::Write { value, .. } => (value_bytes(value), Vec::new()),
            RegisterOp::Cas { from, to, .. } => (value_bytes(to), value_bytes(from)),
            RegisterOp::Read { .. } => (Vec::new(), Vec::new()),
        };
        let args: Vec<&[u8]> = match op {
            RegisterOp::Read { .. } => vec![b"GET", &name],
            RegisterOp::Write { .. } => vec![b"SET", &name, &a],
            RegisterOp::Cas { .. } => vec![b"SET", &name, &a, b"IFEQ", &b],
        };
        let invoked_at = shared.stamp();
        let reply = c.call(&args, Instant::now() + opts.op_timeout);
        let returned_at = shared.stamp();
        let at = shared.started.elapsed().as_secs_f64();
        let ret = match (&op, &reply) {
            (RegisterOp::Read { .. }, Ok(Reply::Bulk(v))) => {
                std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).map(|v| RegisterRet::Value(Some(v)))
            }
            (RegisterOp::Read { .. }, Ok(Reply::Nil)) => Some(RegisterRet::Value(None)),
            (RegisterOp::Write { .. }, Ok(Reply::Simple(ok))) if ok == "OK" => Some(RegisterRet::Ok),
            (RegisterOp::Cas { .. }, Ok(Reply::Simple(ok))) if ok == "OK" => Some(RegisterRet::Cas(true)),
            (RegisterOp::Cas { .. }, Ok(Reply::Nil)) => Some(RegisterRet::Cas(false)),
            _ => None,
        };
        match (ret, reply) {
            (Some(ret), _) => {
                match (op, ret) {
                    (_, RegisterRet::Value(Some(v))) => {
                        seen.insert(key, v);
                    }
                    (RegisterOp::Write { value, .. }, _) => {
                        seen.insert(key, value);
                    }
                    (RegisterOp::Cas { to, .. }, RegisterRet::Cas(true)) => {
                        seen.insert(key, to);
                    }
                    _ => {}
                }
                let done = Operation {
                    client: u64::from(index),
                    op,
                    invoked_at,
                    returned: Some((returned_at, ret)),
                };
                shared.history.lock().expect("not poisoned").push((done, at));
            }
            (None, Ok(Reply::Error(e))) => {
                // Refused by the gateway: it did not happen.
                tracing::debug!(client = index, "refused: {e}");
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            (None, other) => {
                // No answer (or one that makes no sense): a read is dropped (it changed nothing);
                // a write may have happened, at any time from now on.
                if let Ok(reply) = other {
                    tracing::warn!(client = index, "unexpected reply {reply:?} to {op:?}");
                }
                if !matches!(op, RegisterOp::Read { .. }) {
                    let pending = Operation { client: u64::from(index), op, invoked_at, returned: None };
                    shared.history.lock().expect("not poisoned").push((pending, at));
                } else {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                conn = None; // a new connection: a new session, as a restarted client would use
            }
        }
    }
}

/// With `--keep`: once a second until the clients stop, every node's counters and gauges (not its
/// histograms) from its /metrics, one line each, `seconds-since-start node-name metric value`, so a
/// stall found afterwards can be traced to the node and the message kind that stopped. A node that
/// is down or paused is skipped that second.
fn record_timeline(shared: &Shared, targets: &[(String, SocketAddr)], path: &Path) {
    let Ok(mut file) = std::fs::File::create(path) else {
        tracing::warn!("cannot create {}: no metrics timeline", path.display());
        return;
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let second = Instant::now();
        let at = shared.started.elapsed().as_secs_f64();
        let mut lines = String::new();
        for (what, addr) in targets {
            let Ok(body) = crate::autoscale::scrape::fetch(*addr, Duration::from_millis(300)) else {
                continue;
            };
            let name = what.replace([' ', '(', ')'], "_");
            for line in body.lines().filter(|l| l.starts_with("autopaxos_") && !l.contains("_seconds")) {
                let _ = writeln!(lines, "{at:.1} {name} {line}");
            }
        }
        if file.write_all(lines.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(second.elapsed()));
    }
}

/// How a fault is undone: given the cluster and the fault log.
type Undo = Box<dyn FnOnce(&mut Cluster, &mut dyn FnMut(String))>;

/// Injects faults until `until`, logging each; heals what it did before returning.
fn nemesis(
    cluster: &mut Cluster,
    opts: &JepsenOptions,
    started: Instant,
    until: Instant,
    faults: &mut Vec<FaultEvent>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut log = |what: String| {
        let at_s = started.elapsed().as_secs_f64();
        eprintln!("[jepsen] {at_s:>7.2}s {what}");
        faults.push(FaultEvent { at_s, what });
    };
    let ids = cluster.ids();
    let nodes: Vec<NodeId> = ids.iter().copied().filter(|id| !GATEWAYS.contains(id)).collect();
    let mut round = 0;
    loop {
        let calm = Duration::from_millis(rng.gen_range(1500..3000));
        if Instant::now() + calm + Duration::from_secs(1) >= until {
            break;
        }
        std::thread::sleep(calm);
        // Each nemesis once first, in turn, so that even a short run has every kind; then at random.
        let mixed = round >= opts.nemeses.len() && opts.nemeses.len() > 1 && rng.gen_bool(0.3);
        let first = match opts.nemeses.get(round) {
            Some(&n) => n,
            None => opts.nemeses[rng.gen_range(0..opts.nemeses.len())],
        };
        round += 1;
        let mut chosen = vec![first];
        if mixed {
            let other: Vec<Nemesis> = opts.nemeses.iter().copied().filter(|n| *n != chosen[0]).collect();
            chosen.push(other[rng.gen_range(0..other.len())]);
        }
        let mut undo: Vec<Undo> = Vec::new();
        for nemesis in chosen {
            match nemesis {
                Nemesis::Kill => {
                    let id = ids[rng.gen_range(0..ids.len())];
                    let p = cluster.processes.get_mut(&id).expect("known");
                    p.kill();
                    log(format!("kill {}", p.what));
                    undo.push(Box::new(move |c: &mut Cluster, log: &mut dyn FnMut(String)| {
                        let binary = c.binary.clone();
                        let p = c.processes.get_mut(&id).expect("known");
                        match p.spawn(&binary) {
                            Ok(()) => log(format!("restart {}", p.what)),
                            Err(e) => log(format!("restart {} FAILED: {e}", p.what)),
                        }
                    }));
                }
                Nemesis::Pause => {
                    let id = ids[rng.gen_range(0..ids.len())];
                    let p = &cluster.processes[&id];
                    if p.child.is_none() {
                        continue; // killed by the other fault of this mix
                    }
                    p.signal("-STOP");
                    log(format!("pause {}", p.what));
                    undo.push(Box::new(move |c: &mut Cluster, log: &mut dyn FnMut(String)| {
                        let p = &c.processes[&id];
                        p.signal("-CONT");
                        log(format!("resume {}", p.what));
                    }));
                }
                Nemesis::Partition => {
                    // One node cut off from everyone; the processes split in two; or split in two
                    // with one node (the bridge) still linked to both halves, a partition that is
                    // not transitive (Jepsen's "bridge"): the two sides' nodes cannot hear each
                    // other, though both reach the bridge.
                    let shape = rng.gen_range(0..10);
                    let side: Vec<NodeId> = if shape < 4 {
                        vec![nodes[rng.gen_range(0..nodes.len())]]
                    } else {
                        ids.iter().copied().filter(|_| rng.gen_bool(0.5)).collect()
                    };
                    let bridge = (shape >= 7).then(|| nodes[rng.gen_range(0..nodes.len())]);
                    let cut: Vec<(NodeId, NodeId)> = ids
                        .iter()
                        .flat_map(|&a| ids.iter().map(move |&b| (a, b)))
                        .filter(|(a, b)| side.contains(a) != side.contains(b))
                        .filter(|(a, b)| bridge != Some(*a) && bridge != Some(*b))
                        .collect();
                    for &(a, b) in &cut {
                        cluster.proxies.set_cut(a, b, true);
                    }
                    match bridge {
                        Some(bridge) => {
                            log(format!("partition {side:?} from the rest, but for bridge {bridge}"))
                        }
                        None => log(format!("partition {side:?} from the rest")),
                    }
                    undo.push(Box::new(move |c: &mut Cluster, log: &mut dyn FnMut(String)| {
                        for &(a, b) in &cut {
                            c.proxies.set_cut(a, b, false);
                        }
                        log(format!("heal the partition of {side:?}"));
                    }));
                }
            }
        }
        let hold = Duration::from_millis(rng.gen_range(1000..4000));
        std::thread::sleep(hold.min(until.saturating_duration_since(Instant::now())));
        for step in undo.into_iter().rev() {
            step(cluster, &mut log);
        }
    }
    // Whatever state the faults left, everything is healed now.
    cluster.proxies.heal_all();
    for p in cluster.processes.values() {
        p.signal("-CONT");
    }
}

/// Waits until a write goes through some gateway.
fn wait_until_serving(cluster: &Cluster, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for &addr in &cluster.gateways {
            if let Ok(mut c) = Conn::open(addr, Duration::from_secs(1)) {
                if let Ok(Reply::Simple(_)) =
                    c.call(&[b"SET", b"jepsen-warmup", b"1"], Instant::now() + Duration::from_secs(2))
                {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("the cluster did not serve a write within {limit:?}; logs in {}", cluster.dir.display()))
}

/// Runs the harness and checks what it recorded.
pub fn run(opts: JepsenOptions) -> Result<JepsenReport, String> {
    if opts.nemeses.is_empty() || opts.clients == 0 || opts.keys == 0 {
        return Err("a run needs at least one nemesis, one client and one key".into());
    }
    let scratch = crate::runtime::launch::ScratchDir::new("autopaxos-jepsen");
    let dir = opts.keep.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Absolute: the cluster files in it name the secret by a path the nodes resolve from there
    // (a relative `--keep` left every node unable to read it).
    let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    stop_children_on_signal(opts.keep.is_none().then(|| dir.clone()))?;
    let mut cluster = Cluster::start(&dir, &opts.binary)?;
    if let Err(e) = wait_until_serving(&cluster, Duration::from_secs(60)) {
        // Keep what shows why: the processes' logs.
        drop(cluster);
        std::mem::forget(scratch);
        return Err(e);
    }
    eprintln!("[jepsen] cluster serving; {} clients, faults for {:?}", opts.clients, opts.duration);

    let shared = Arc::new(Shared {
        gateways: cluster.gateways.clone(),
        stamps: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        started: Instant::now(),
        history: Mutex::new(Vec::new()),
        failed: AtomicU64::new(0),
        opts: opts.clone(),
    });
    let threads: Vec<_> = (0..opts.clients)
        .map(|i| {
            let shared = shared.clone();
            std::thread::spawn(move || client(shared, i))
        })
        .collect();
    let timeline = opts.keep.as_ref().map(|_| {
        let targets: Vec<(String, SocketAddr)> =
            cluster.processes.values().filter_map(|p| Some((p.what.clone(), p.metrics?))).collect();
        let (shared, path) = (shared.clone(), dir.join("metrics-timeline.txt"));
        std::thread::spawn(move || record_timeline(&shared, &targets, &path))
    });
    let mut faults = Vec::new();
    nemesis(&mut cluster, &opts, shared.started, shared.started + opts.duration, &mut faults);
    let healed_at = shared.started.elapsed().as_secs_f64();
    std::thread::sleep(opts.recovery);
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads.into_iter().chain(timeline) {
        let _ = t.join();
    }
    let total = shared.started.elapsed().as_secs_f64();
    drop(cluster);

    let recorded = std::mem::take(&mut *shared.history.lock().expect("not poisoned"));
    let mut ok_per_second = vec![0u64; total.ceil() as usize];
    let (mut ok, mut indeterminate, mut served_after_healing) = (0, 0, 0);
    let mut per_key: BTreeMap<u64, usize> = BTreeMap::new();
    for (op, at) in &recorded {
        *per_key.entry(op.op.key()).or_default() += 1;
        if op.returned.is_some() {
            ok += 1;
            if let Some(slot) = ok_per_second.get_mut(*at as usize) {
                *slot += 1;
            }
            if *at > healed_at + opts.recovery.as_secs_f64() / 2.0 {
                served_after_healing += 1;
            }
        } else {
            indeterminate += 1;
        }
    }
    let history: Vec<Recorded> = recorded.into_iter().map(|(op, _)| op).collect();
    let verdict = register::check(history, opts.check_budget);
    let (verdict, passed) = match verdict {
        Verdict::Linearizable if served_after_healing == 0 => (
            "unavailable after healing (no operation completed in the second half of the recovery)"
                .to_string(),
            false,
        ),
        Verdict::Linearizable => ("linearizable".to_string(), true),
        Verdict::NotLinearizable { longest_prefix, blocked } => (
            format!(
                "NOT linearizable: after {} operations, none of {} could come next: {:?}",
                longest_prefix.len(),
                blocked.len(),
                blocked.iter().take(4).collect::<Vec<_>>()
            ),
            false,
        ),
        Verdict::Inconclusive { explored } => (format!("inconclusive after {explored} search steps"), false),
    };
    Ok(JepsenReport {
        duration_s: total,
        recovery_s: opts.recovery.as_secs_f64(),
        clients: opts.clients,
        nemeses: opts.nemeses.clone(),
        seed: opts.seed,
        faults,
        ok,
        failed: shared.failed.load(Ordering::Relaxed),
        indeterminate,
        ok_per_second,
        keys_checked: per_key.len(),
        max_ops_per_key: per_key.values().copied().max().unwrap_or(0),
        verdict,
        passed,
    })
}
