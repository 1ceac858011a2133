//! The glommio shell around the protocol core: one executor per core, pinned; nodes on an executor
//! share nothing with other cores on the hot path; connections, read budgets, timers, metrics.
//! The runtime moves bytes and keeps time. Every protocol decision is the role's (`src/protocol/`).

pub mod admin;
pub mod config;
pub mod conn;
pub mod exposition;
pub mod gateway;
pub mod histogram;
pub mod launch;
pub mod limits;
pub mod load;
pub mod local;
pub mod metrics;
pub mod node;
pub mod operator;

use crate::protocol::{NodeId, Role, Time};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use node::{Host, NodeSettings};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// What a node's builder gets from the executor it runs on.
pub struct ExecutorContext {
    /// The node's clock reading at start-up.
    pub now: Time,
    /// This executor's client latency histogram (shared by its client pools).
    pub latencies: Rc<RefCell<Histogram<u64>>>,
    /// A gateway's builder leaves here what its RESP connections share with its role.
    pub gateway_front: RefCell<Option<Rc<gateway::Front>>>,
}

/// Builds a node's role on its executor (roles are not `Send`-bound; they are made where they live).
/// An error (a snapshot that cannot be restored, say) stops the process with that message.
pub type BuildRole = Box<dyn FnOnce(&ExecutorContext) -> Result<Box<dyn Role>, String> + Send>;

/// One node to run.
pub struct NodeLaunch {
    /// Its id.
    pub id: NodeId,
    /// Where it listens; port 0 picks a free port. `None`: it only dials (a client pool).
    pub listen: Option<SocketAddr>,
    /// How to build its role.
    pub build: BuildRole,
    /// Peers to connect to at once. A node without a listen address must reach first every peer
    /// that will message it (a client: the unbatchers and proposers), which then answer over it.
    pub dial_at_start: Vec<NodeId>,
    /// A durable node's data directory (locked and recovered); `None` for stateless and in-memory
    /// nodes.
    pub disk: Option<launch::NodeDisk>,
    /// A gateway's RESP address (port 0 picks a free port).
    pub resp: Option<SocketAddr>,
}

/// Everything one process runs.
pub struct ProcessPlan {
    /// Nodes of other clusters are refused.
    pub cluster_id: String,
    /// The secret its nodes prove, the frame option, the caps.
    pub security: config::Security,
    /// The nodes of each core, by core id.
    pub cores: Vec<(usize, Vec<NodeLaunch>)>,
    /// Addresses of nodes in other processes (and of ours, if fixed).
    pub addresses: BTreeMap<NodeId, SocketAddr>,
    /// Frames per connection before yielding.
    pub read_budget: usize,
    /// Set to make every executor return.
    pub stop: Arc<AtomicBool>,
    /// How long an idle executor polls before it sleeps in the kernel. Spinning cuts wake-up latency
    /// when the process owns its cores (`local`); with many processes sharing few cores it only
    /// steals their time, so roles started on their own default to none.
    pub spin_before_park: Duration,
}

/// A started process: its executors and the address of every node.
pub struct Running {
    handles: Vec<glommio::ExecutorJoinHandle<Histogram<u64>>>,
    /// Where each node listens (ports chosen at bind time included).
    pub addresses: BTreeMap<NodeId, SocketAddr>,
    /// Where each gateway serves RESP.
    pub resp_addresses: BTreeMap<NodeId, SocketAddr>,
}

impl Running {
    /// Waits for every executor to return (after `stop` is set) and merges their latency histograms.
    pub fn join(self) -> Histogram<u64> {
        let mut merged = load::new_histogram();
        for handle in self.handles {
            match handle.join() {
                Ok(h) => merged.add(h).expect("histograms share bounds"),
                Err(e) => tracing::error!("an executor failed: {e}"),
            }
        }
        merged
    }
}

/// A seed no earlier start of this process drew: from the OS's entropy. Every incarnation of a node
/// gets one (`birth::RoleSpec::seed`), so a proposer restarted without memory draws Phase 1 nonces
/// of its own, never those of its previous life.
pub fn incarnation_seed() -> u64 {
    rand::random()
}

/// Blocks until `limit` has passed (`None`: forever) or the process gets SIGINT or SIGTERM, and says
/// how long it waited. Servers started from the command line stop cleanly through it (their scratch
/// directories are removed, their logs say why they stopped).
pub fn run_until_interrupted(limit: Option<Duration>) -> Result<Duration, String> {
    run_until(limit, &Arc::new(AtomicBool::new(false)))
}

/// As [`run_until_interrupted`], and also returns once `stop` is set (by a node that left).
pub fn run_until(limit: Option<Duration>, stop: &AtomicBool) -> Result<Duration, String> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, interrupted.clone())
            .map_err(|e| format!("cannot catch signals: {e}"))?;
    }
    let started = Instant::now();
    while !interrupted.load(Ordering::Relaxed)
        && !stop.load(Ordering::Relaxed)
        && limit.is_none_or(|d| started.elapsed() < d)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(started.elapsed())
}

/// The cores this process may run on: its affinity mask (so `taskset -c 1 autopaxos ...` lands on
/// core 1), not every online core.
pub fn allowed_cores() -> Vec<usize> {
    let mut cores: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    cores.sort_unstable();
    if cores.is_empty() {
        cores.push(0);
    }
    cores
}

/// The cores a process running `nodes` (by id) uses when not told: the cores it may run on, the
/// first of them picked by its first node's id when it runs fewer nodes than it has cores. So
/// processes started one per node (`autopaxos acceptor --node 3`, `--node 4`, ...) spread over
/// the machine instead of all taking its first core.
pub fn default_cores(nodes: &[NodeId]) -> Vec<usize> {
    let mut cores = allowed_cores();
    if let Some(&first) = nodes.first() {
        if nodes.len() < cores.len() {
            let by_id = first as usize % cores.len();
            cores.rotate_left(by_id);
        }
    }
    cores
}

/// Parses a core list such as `0-3,6`.
pub fn parse_cores(list: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid core list '{list}': '{part}' is not a core or a range like 0-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cores.is_empty() {
        return Err(format!("invalid core list '{list}': no cores"));
    }
    cores.sort_unstable();
    cores.dedup();
    Ok(cores)
}

/// Binds a listener at `addr`, refusing an address another process listens on. glommio binds with
/// `SO_REUSEPORT`, so two processes started as the same node (or a gateway started twice on one
/// port) would both listen and split the connections between them: two memories answering as one
/// acceptor or proposer. A connection attempt finds such a listener first (a bind probe cannot
/// tell it from the closing connections a killed predecessor leaves on the port).
///
/// A predecessor killed a moment ago still answers for a while: its pending io_uring accept holds
/// the listening socket until the kernel tears its ring down, after the process is gone. So a
/// listener that answers is probed again until `LISTENER_GRACE` has passed; only one that still
/// answers then is taken for a live process.
fn bind_exclusive(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if addr.port() != 0 {
        let mut probe = addr;
        if probe.ip().is_unspecified() {
            probe.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let started = Instant::now();
        while someone_listens(probe) {
            if started.elapsed() >= LISTENER_GRACE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process listens there (is this node already running?)",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if started.elapsed() >= Duration::from_millis(20) {
            tracing::info!(
                %addr,
                "waited {:.0?} for the listener a previous process left here to close",
                started.elapsed()
            );
        }
    }
    Ok(TcpListener::bind(addr)?)
}

/// How long a listener that answers at a node's address may take to go away before the node
/// refuses to start there (see `bind_exclusive`).
const LISTENER_GRACE: Duration = Duration::from_secs(3);

/// Whether a connection to `addr` is accepted. A connection to itself (the kernel may pick `addr`
/// as the source port of the attempt, a simultaneous open) is no listener.
fn someone_listens(addr: SocketAddr) -> bool {
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(stream) => stream.local_addr().ok() != Some(addr),
        Err(_) => false,
    }
}

/// Starts one pinned executor per core of `plan`. Returns once every node listens and knows every
/// other node's address; nodes then dial each other on their own.
pub fn start(plan: ProcessPlan, epoch: Instant) -> Result<Running, String> {
    let book = Arc::new(Mutex::new(plan.addresses));
    let resp_book = Arc::new(Mutex::new(BTreeMap::new()));
    let alone = plan.cores.iter().map(|(_, launches)| launches.len()).sum::<usize>() == 1;
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let barrier = Arc::new(Barrier::new(plan.cores.len() + 1));
    let mut handles = Vec::new();
    for (core, launches) in plan.cores {
        let (book, resp_book, errors, barrier, stop) =
            (book.clone(), resp_book.clone(), errors.clone(), barrier.clone(), plan.stop.clone());
        let (cluster_id, read_budget, security) =
            (plan.cluster_id.clone(), plan.read_budget, plan.security.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("autopaxos-core{core}"))
            // DMA buffers of the write-ahead log come from this pool (registered with io_uring): a
            // log needs about 1.5 MiB, a snapshot write 1 MiB. Beyond it glommio falls back to
            // ordinary aligned allocations. Kept well below the default memlock limit (8 MiB).
            .io_memory(3 << 20)
            .spin_before_park(plan.spin_before_park)
            .spawn(move || async move {
                // Phase 1: bind, publish addresses, build the roles. Phase 2 (after the barrier):
                // start the nodes.
                let latencies = Rc::new(RefCell::new(load::new_histogram()));
                let context = ExecutorContext {
                    now: epoch.elapsed().as_micros() as Time,
                    latencies: latencies.clone(),
                    gateway_front: RefCell::new(None),
                };
                let mut ready = Vec::new();
                for launch in launches {
                    let listener = launch.listen.and_then(|addr| match bind_exclusive(addr) {
                        Ok(l) => {
                            let bound = l.local_addr().unwrap_or(addr);
                            book.lock().expect("not poisoned").insert(launch.id, bound);
                            Some(l)
                        }
                        Err(e) => {
                            errors
                                .lock()
                                .expect("not poisoned")
                                .push(format!("node {}: cannot listen on {addr}: {e}", launch.id));
                            None
                        }
                    });
                    let resp = launch.resp.and_then(|addr| match bind_exclusive(addr) {
                        Ok(l) => {
                            let bound = l.local_addr().unwrap_or(addr);
                            resp_book.lock().expect("not poisoned").insert(launch.id, bound);
                            Some(l)
                        }
                        Err(e) => {
                            errors
                                .lock()
                                .expect("not poisoned")
                                .push(format!("node {}: cannot serve RESP on {addr}: {e}", launch.id));
                            None
                        }
                    });
                    match (launch.build)(&context) {
                        Ok(role) => {
                            let front = context.gateway_front.borrow_mut().take();
                            let resp = resp.zip(front);
                            ready.push((launch.id, role, launch.dial_at_start, launch.disk, listener, resp))
                        }
                        Err(e) => {
                            errors.lock().expect("not poisoned").push(format!("node {}: {e}", launch.id))
                        }
                    }
                }
                barrier.wait();
                barrier.wait();
                if stop.load(Ordering::Relaxed) {
                    return latencies.borrow().clone();
                }
                let settings = NodeSettings {
                    cluster_id: cluster_id.into(),
                    addresses: Rc::new(RefCell::new(book.lock().expect("not poisoned").clone())),
                    read_budget,
                    stop_when_left: alone.then(|| stop.clone()),
                    secret: security.secret,
                    authenticate_frames: security.authenticate_frames,
                    limits: security.limits,
                };
                for (id, role, dial_at_start, disk, listener, resp) in ready {
                    let host = Host::start(id, role, settings.clone(), epoch, disk);
                    for &peer in &dial_at_start {
                        host.connect(peer);
                    }
                    if let Some((resp, front)) = resp {
                        glommio::spawn_local(gateway::accept_loop(host.clone(), front, resp)).detach();
                    }
                    if let Some(listener) = listener {
                        glommio::spawn_local(conn::accept_loop(host, listener)).detach();
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                let merged = latencies.borrow().clone();
                merged
            })
            .map_err(|e| format!("cannot start an executor on core {core}: {e}"))?;
        handles.push(handle);
    }
    barrier.wait();
    let failed = std::mem::take(&mut *errors.lock().expect("not poisoned"));
    if !failed.is_empty() {
        plan.stop.store(true, Ordering::Relaxed);
    }
    barrier.wait();
    let running = Running {
        handles,
        addresses: book.lock().expect("not poisoned").clone(),
        resp_addresses: resp_book.lock().expect("not poisoned").clone(),
    };
    if !failed.is_empty() {
        running.join();
        return Err(failed.join("\n"));
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_of_one_node_each_spread_over_the_cores_by_node_id() {
        let allowed = allowed_cores();
        for id in 0..8u32 {
            let cores = default_cores(&[id]);
            let mut sorted = cores.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, allowed, "every allowed core, in another order");
            if allowed.len() > 1 {
                assert_eq!(cores[0], allowed[id as usize % allowed.len()], "node {id} starts by its id");
            }
        }
        let many: Vec<NodeId> = (0..allowed.len() as NodeId).map(|i| 3 + i).collect();
        assert_eq!(default_cores(&many), allowed, "a process with a node per core takes them in order");
    }

    #[test]
    fn a_proposer_restarted_by_the_runtime_is_not_taken_for_its_previous_life() {
        // Fails with the old seeding (the node id as the seed of every incarnation).
        assert!(crate::protocol::birth::restarted_proposer_is_refused(incarnation_seed));
    }

    #[test]
    fn core_lists_parse_ranges_and_refuse_nonsense() {
        assert_eq!(parse_cores("0-3,6"), Ok(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cores("1"), Ok(vec![1]));
        assert_eq!(parse_cores("2,1,2"), Ok(vec![1, 2]));
        for bad in ["", "a", "3-1", "1-x", ","] {
            assert!(parse_cores(bad).is_err(), "{bad}");
        }
    }
}
