//! The RESP front door's sockets (issue 13): accepts Redis-protocol connections on `--resp-addr`
//! and runs each as a session of the node's [`Gateway`]. Parsing is `crate::resp`'s, the commands
//! `crate::commands`'; this file moves bytes and keeps each connection within its bounds.
//!
//! Per connection, a reader parses requests and queues them (planned), and a driver answers them in
//! order: requests the gateway answers itself at once, the others by submitting every queued one
//! as one `KvOp::Batch` (one log command, in order, exactly once under retries) and rendering the
//! batch's results when it completes. While a batch is in flight the next requests queue behind it,
//! so a pipelining client fills the next batch. A connection holds at most
//! [`MAX_QUEUED_REQUESTS`] requests or [`MAX_QUEUED_BYTES`] bytes of them; past that the reader
//! stops reading until the driver has answered some. A writer sends the rendered replies as the
//! client takes them while the driver goes on, so a client that writes a whole pipeline before it
//! reads does not deadlock; a connection whose client does not read stops running requests once
//! its unsent replies pass [`MAX_UNSENT_BYTES`] (or its free share, while all the connections
//! together hold [`MAX_UNSENT_BYTES_PER_GATEWAY`]), and then TCP slows the client.
//!
//! Overload: when the cluster refuses a connection's batch with `Busy` (sent once, so never
//! executed), or the gateway refuses it at once (its sessions in flight at their bound while the
//! cluster refuses, see `protocol::gateway`), each request of the batch is answered
//! [`BUSY_REPLY`] (`-BUSY ...`, as Redis answers when it cannot serve now): the application may
//! send it again.
//!
//! Must never: answer out of order; submit a request twice (a retry is the same request); let a
//! connection's buffers grow past its bounds.

use super::limits::Partial;
use super::node::Host;
use crate::commands::{self, Connection, Context, Password, Plan, Render};
use crate::protocol::client::SubmitError;
use crate::protocol::gateway::{Answer, Gateway, Session};
use crate::protocol::state_machine::kv::{KvOp, KvResult, MAX_READ_RESULT_BYTES, MAX_RESULT_BYTES};
use crate::protocol::{Msg, NodeId, Out, Role, RoleKind, Time};
use crate::resp::{self, Limits, Reply};
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Requests one connection may have queued (parsed, not yet answered).
pub const MAX_QUEUED_REQUESTS: usize = 4096;
/// Bytes of requests one connection may have queued.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;
/// The largest single request (an `MSET` of many large values, say): a request still incomplete
/// past this is a protocol error, so a client cannot make the gateway buffer without bound.
pub use crate::resp::MAX_REQUEST_BYTES;
/// The most connections one gateway node may serve (half the sessions one node can host).
pub const MAX_CONNECTIONS: u32 = crate::protocol::client_mux::MAX_CLIENTS / 2;
/// Connections one gateway serves at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Bytes of ops in one batch; one request alone may exceed it.
const MAX_GROUP_BYTES: usize = 256 << 10;
/// Ops in one batch. Bounds its results too (a read returns up to a 64 KiB value), which travel in
/// one reply and which the replicas keep as the session's last reply, for exactly-once.
const MAX_GROUP_OPS: usize = 128;
/// Bytes read from a socket at once.
pub(crate) const READ_CHUNK: usize = 64 << 10;
/// Replies a connection may have rendered and not yet sent while it goes on reading and running
/// requests: a client library that writes a whole pipeline before it reads a reply (redis-py's
/// `pipeline.execute()`) must not deadlock against the bound on queued requests. Past it the
/// connection runs nothing more until its client reads.
pub const MAX_UNSENT_BYTES: usize = 32 << 20;
/// What a connection may always have unsent, whatever the others hold.
const FREE_UNSENT_BYTES: usize = 1 << 20;
/// Unsent replies of all the connections of one gateway: past it, a connection with more than its
/// free share unsent runs nothing more until its client reads (so clients that never read hold a
/// bounded amount of memory all together, not `MAX_UNSENT_BYTES` each).
pub const MAX_UNSENT_BYTES_PER_GATEWAY: usize = 256 << 20;

/// Settings of a gateway node.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Sessions (and so connections) at most; connections beyond are refused with Redis's error.
    pub max_connections: u32,
    /// The request limits of the codec.
    pub limits: Limits,
    /// What `INFO` reports.
    pub cluster_id: String,
    /// Whether the cluster behind keeps its state on disk (`INFO`, `CONFIG GET appendonly`), if
    /// known.
    pub durable: Option<bool>,
    /// The password clients must give first (`AUTH`), if any.
    pub password: Option<Password>,
    /// Connections from one address at once.
    pub max_connections_per_address: usize,
    /// A request begun must be whole within this long (slowloris); an idle connection may stay.
    pub request_timeout: Duration,
}

impl GatewaySettings {
    /// Settings with the defaults of `limits` for a cluster `cluster_id`.
    pub fn new(cluster_id: String, limits: &super::limits::Limits) -> Self {
        GatewaySettings {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            limits: Limits::default(),
            cluster_id,
            durable: None,
            password: None,
            max_connections_per_address: limits.resp_max_clients_per_address,
            request_timeout: limits.resp_request_timeout(),
        }
    }
}

/// Reads a gateway's password file (`--requirepass-file`), refusing one that group or others can
/// read, as the cluster secret's.
pub fn load_password(path: &std::path::Path) -> Result<Password, String> {
    let text = crate::secret::read_private_file(path, "password file").map_err(|e| e.to_string())?;
    if text.is_empty() {
        return Err(format!("the password file {} is empty", path.display()));
    }
    Ok(Password::new(&text))
}

/// Where a gateway that joins the cluster listens for it, and the address it announces.
#[derive(Debug, Clone)]
pub struct Joining {
    /// Where it listens for the cluster's messages.
    pub listen: std::net::SocketAddr,
    /// Where the others reach it (`listen` unless behind a NAT or listening on 0.0.0.0).
    pub advertise: std::net::SocketAddr,
}

/// The launch of a gateway node `id`: a client node of the cluster described by `config`, serving
/// RESP at `resp`; with `joining`, a member of the cluster's views as well.
pub fn gateway_launch(
    id: NodeId,
    config: crate::protocol::ClusterConfig,
    tunables: crate::protocol::Tunables,
    resp: std::net::SocketAddr,
    settings: GatewaySettings,
    joining: Option<Joining>,
) -> super::NodeLaunch {
    let incarnation = super::incarnation_seed() as u16;
    // Replies come from unbatchers and leader hints from proposers: reach them first, so they can
    // answer over these connections (the gateway has no cluster address of its own).
    let dial_at_start = config.unbatchers.iter().chain(&config.proposers).copied().collect();
    super::NodeLaunch {
        id,
        listen: joining.as_ref().map(|j| j.listen),
        dial_at_start,
        disk: None,
        resp: Some(resp),
        build: Box::new(move |ctx| {
            if settings.max_connections == 0 || settings.max_connections > MAX_CONNECTIONS {
                return Err(format!("--max-connections must be between 1 and {MAX_CONNECTIONS}"));
            }
            // Twice as many sessions as connections: a session whose connection closed with a request
            // in flight stays taken until that request completes.
            let sessions = 2 * settings.max_connections;
            let mut gateway = Gateway::new(id, incarnation, sessions, &config, &tunables);
            if let Some(j) = joining {
                gateway = gateway.joining(id, &config, &tunables, j.advertise.to_string(), ctx.now);
            }
            let front = Front::new(id, gateway, settings);
            *ctx.gateway_front.borrow_mut() = Some(front.clone());
            Ok(Box::new(GatewayRole(front)))
        }),
    }
}

/// `autopaxos gateway`: one gateway node of the cluster in `file`, serving RESP at `resp` until
/// SIGINT or SIGTERM.
#[allow(clippy::too_many_arguments)] // the gateway's whole configuration, passed once at start
pub fn serve_gateway(
    file: &super::config::ClusterFile,
    id: NodeId,
    resp: std::net::SocketAddr,
    tunables: crate::protocol::Tunables,
    settings: GatewaySettings,
    joining: Option<Joining>,
    core: usize,
    read_budget: usize,
) -> Result<(), String> {
    if file.role_of(id).is_some() {
        return Err(format!("--node {id} is a cluster node's id; pick another for the gateway"));
    }
    if let Some(j) = &joining {
        super::admin::check_advertised(j.advertise)?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joined = joining.is_some();
    let launch = gateway_launch(id, file.config.clone(), tunables, resp, settings, joining);
    let plan = super::ProcessPlan {
        cluster_id: file.cluster_id.clone(),
        security: file.security()?,
        cores: vec![(core, vec![launch])],
        addresses: file.addresses.clone(),
        read_budget,
        stop: stop.clone(),
        spin_before_park: std::time::Duration::ZERO,
    };
    let running = super::start(plan, std::time::Instant::now())?;
    let bound = running.resp_addresses.get(&id).copied().unwrap_or(resp);
    tracing::info!(node = id, joined, "gateway serving RESP on {bound}");
    println!("resp {bound}");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // A joined gateway that was told to leave stops the process itself (once drained).
    let served = super::run_until(None, &stop)?;
    tracing::info!(node = id, "gateway stopping after {:.1}s", served.as_secs_f64());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    running.join();
    Ok(())
}

/// The gateway's metrics (labels `role="gateway"` and its node), resolved once.
struct GatewayMetrics {
    commands: metrics::Counter,
    connections: metrics::Gauge,
    refused: metrics::Counter,
    protocol_errors: metrics::Counter,
    request_timeouts: metrics::Counter,
    auth_failures: metrics::Counter,
    busy: metrics::Counter,
    /// `autopaxos_command_latency_seconds`: from a request parsed to its reply rendered (handed to
    /// the connection's writer).
    latency: super::histogram::LatencyHistogram,
}

impl GatewayMetrics {
    fn new(node: NodeId) -> Self {
        let labels = [("role", "gateway".to_string()), ("node", node.to_string())];
        GatewayMetrics {
            commands: metrics::counter!("autopaxos_gateway_commands_total", &labels),
            connections: metrics::gauge!("autopaxos_gateway_connections", &labels),
            refused: metrics::counter!("autopaxos_gateway_refused_connections_total", &labels),
            protocol_errors: metrics::counter!("autopaxos_gateway_protocol_errors_total", &labels),
            request_timeouts: metrics::counter!("autopaxos_gateway_request_timeouts_total", &labels),
            auth_failures: metrics::counter!("autopaxos_gateway_auth_failures_total", &labels),
            busy: metrics::counter!("autopaxos_gateway_busy_replies_total", &labels),
            latency: super::histogram::LatencyHistogram::new(
                "autopaxos_command_latency_seconds",
                &[("role", "gateway"), ("node", &node.to_string())],
            ),
        }
    }
}

/// What the role and the connections of one gateway node share.
pub struct Front {
    node: NodeId,
    metrics: GatewayMetrics,
    gateway: RefCell<Gateway>,
    /// Per session: where its connection waits for its batch's result.
    waiting: RefCell<Vec<Option<LocalSender<Answer>>>>,
    settings: GatewaySettings,
    next_connection: Cell<u64>,
    open: Cell<usize>,
    per_address: RefCell<HashMap<IpAddr, usize>>,
    /// When a refusal was last logged, and how many since (one line a second at most).
    refusals_logged: Cell<(Option<Instant>, u64)>,
    /// Bytes of replies rendered and not yet written, over every connection.
    unsent: Cell<usize>,
}

impl Front {
    /// The shared half of a gateway node with `settings.max_connections` sessions.
    pub fn new(node: NodeId, gateway: Gateway, settings: GatewaySettings) -> Rc<Front> {
        let sessions = 2 * settings.max_connections as usize;
        Rc::new(Front {
            node,
            metrics: GatewayMetrics::new(node),
            gateway: RefCell::new(gateway),
            waiting: RefCell::new((0..sessions).map(|_| None).collect()),
            settings,
            next_connection: Cell::new(1),
            open: Cell::new(0),
            per_address: RefCell::new(HashMap::new()),
            refusals_logged: Cell::new((None, 0)),
            unsent: Cell::new(0),
        })
    }

    /// Logs a refused connection, at most once a second.
    fn log_refusal(&self, ip: IpAddr, why: &str) {
        let (last, suppressed) = self.refusals_logged.get();
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            self.refusals_logged.set((last, suppressed + 1));
            return;
        }
        self.refusals_logged.set((Some(Instant::now()), 0));
        tracing::warn!(node = self.node, %ip, suppressed, "refused a RESP connection: {why}");
    }

    /// Whether a connection with `unsent` bytes of replies not yet written may run more requests.
    fn room_to_reply(&self, unsent: usize) -> bool {
        unsent < FREE_UNSENT_BYTES
            || (unsent < MAX_UNSENT_BYTES && self.unsent.get() < MAX_UNSENT_BYTES_PER_GATEWAY)
    }

    fn context(&self) -> Context {
        Context {
            cluster_id: self.settings.cluster_id.clone(),
            node: self.node,
            leader: self.gateway.borrow().leader_hint(),
            durable: self.settings.durable,
            connections: self.open.get(),
        }
    }
}

/// The gateway as its host sees it: the [`Gateway`] role, handing each completion to the connection
/// that waits for it.
pub struct GatewayRole(pub Rc<Front>);

impl Role for GatewayRole {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        let mut gateway = self.0.gateway.borrow_mut();
        gateway.handle_message(now, from, msg, out);
        let waiting = self.0.waiting.borrow();
        for (session, result) in gateway.take_completions() {
            if let Some(tx) = &waiting[session] {
                let _ = tx.try_send(result);
            }
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        self.0.gateway.borrow_mut().handle_timeout(now, out);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.0.gateway.borrow().poll_timeout()
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Gateway
    }

    fn status(&self) -> crate::protocol::messages::NodeStatus {
        self.0.gateway.borrow().status()
    }
}

/// Accepts RESP connections for the gateway node `host` forever.
pub async fn accept_loop(host: Rc<Host>, front: Rc<Front>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (host, front) = (host.clone(), front.clone());
                glommio::spawn_local(async move {
                    let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    if let Err(e) = serve(&host, &front, stream).await {
                        tracing::debug!(node = host.id, "RESP connection from {from} ended: {e}");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(node = host.id, "RESP accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// One queued request.
enum Pending {
    /// Answered by the gateway.
    Reply(Reply),
    /// Answered, then the connection closes (`QUIT`, a protocol error).
    Close(Reply),
    /// Needs the log: its encoded ops, the most bytes their results can take, and how to render
    /// them.
    Cluster { ops: Vec<Bytes>, worst_result: usize, render: Render },
}

/// A connection's queue, shared by its reader and its driver.
#[derive(Default)]
struct Queue {
    /// Each request, its bytes, and when it was read.
    requests: VecDeque<(Pending, usize, Instant)>,
    bytes: usize,
    /// Requests at the front whose batch is in flight; 0: none is.
    in_flight: usize,
    /// The reader has stopped (end of stream, an error, or a request that closes).
    reader_done: bool,
}

/// Replies rendered and not yet written: the driver appends them, the writer sends them.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// What `bytes` holds plus what the writer is sending.
    unsent: usize,
}

impl Queue {
    fn full(&self) -> bool {
        self.requests.len() >= MAX_QUEUED_REQUESTS || self.bytes >= MAX_QUEUED_BYTES
    }

    /// The request at the front; its latency (read to now) goes to `latency`.
    fn pop(&mut self, now: Instant, latency: &super::histogram::LatencyHistogram) -> Option<Pending> {
        let (pending, bytes, arrived) = self.requests.pop_front()?;
        self.bytes -= bytes;
        latency.record(now.saturating_duration_since(arrived));
        Some(pending)
    }
}

async fn serve(host: &Rc<Host>, front: &Rc<Front>, stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let ip = stream.peer_addr().map_or(IpAddr::from([0u8; 4]), |a| a.ip());
    let from_ip = front.per_address.borrow().get(&ip).copied().unwrap_or(0);
    let session = if front.open.get() >= front.settings.max_connections as usize {
        Err("max number of clients reached")
    } else if from_ip >= front.settings.max_connections_per_address {
        Err("max number of clients from this address reached")
    } else {
        front.gateway.borrow_mut().open().ok_or("max number of clients reached")
    };
    let session = match session {
        Ok(session) => session,
        Err(why) => {
            front.metrics.refused.increment(1);
            let why = if front.gateway.borrow().is_draining() {
                "this gateway is leaving the cluster: connect to another"
            } else {
                front.log_refusal(ip, why);
                why
            };
            let mut stream = stream;
            stream.write_all(format!("-ERR {why}\r\n").as_bytes()).await?;
            return Ok(());
        }
    };
    *front.per_address.borrow_mut().entry(ip).or_default() += 1;
    let (result_tx, result_rx) = local_channel::new_bounded(1);
    front.waiting.borrow_mut()[session] = Some(result_tx);
    front.open.set(front.open.get() + 1);
    let id = front.next_connection.get();
    front.next_connection.set(id + 1);
    front.metrics.connections.increment(1.0);

    let queue = RefCell::new(Queue::default());
    let (wake_tx, wake_rx) = local_channel::new_bounded(1);
    let (room_tx, room_rx) = local_channel::new_bounded(1);
    let outbox = RefCell::new(Outbox::default());
    let (ready_tx, ready_rx) = local_channel::new_bounded(1);
    let (drained_tx, drained_rx) = local_channel::new_bounded(1);
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let conn = Connection::new(id, front.settings.password.clone());
    let reading = read_requests(front, &mut rd, &queue, conn, &wake_tx, &room_rx);
    let replies = Replies { outbox: &outbox, ready: &ready_tx, drained: &drained_rx };
    let driving = drive(host, front, session, replies, &queue, &wake_rx, &room_tx, &result_rx);
    let writing = write_replies(front, &mut wr, &outbox, &ready_rx, &drained_tx);
    let result = futures_lite::future::or(reading, futures_lite::future::or(driving, writing)).await;

    front.unsent.set(front.unsent.get() - outbox.borrow().unsent);
    front.waiting.borrow_mut()[session] = None;
    front.gateway.borrow_mut().close(session);
    front.open.set(front.open.get() - 1);
    let mut per_address = front.per_address.borrow_mut();
    if let Some(n) = per_address.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_address.remove(&ip);
        }
    }
    drop(per_address);
    front.metrics.connections.decrement(1.0);
    result
}

/// Parses requests as they arrive and queues them, planned; stops reading while the queue is full.
/// Never returns on its own once the stream ends: the driver finishes what is queued.
async fn read_requests(
    front: &Front,
    rd: &mut (impl futures_lite::AsyncRead + Unpin),
    queue: &RefCell<Queue>,
    mut conn: Connection,
    wake: &LocalSender<()>,
    room: &LocalReceiver<()>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0;
    let before_auth = front.settings.limits.before_auth();
    // A request begun must be whole within the timeout (slowloris); an idle connection may wait.
    let partial = Partial::default();
    let timeout = front.settings.request_timeout;
    let watchdog = async {
        partial.expired(timeout).await;
        front.metrics.request_timeouts.increment(1);
        tracing::debug!(
            node = front.node,
            "closing a RESP connection: a request begun is not whole in {timeout:?}"
        );
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "a request begun is not whole in time"))
    };
    let reading = async {
        loop {
            // Parse everything that has arrived (one clock reading per read, not per request).
            let arrived = Instant::now();
            let mut parsed = 0u64;
            let closing = loop {
                // A client that has not given the password yet gets Redis's tight limits.
                let authenticated = conn.may_run_commands();
                let limits = if authenticated { &front.settings.limits } else { &before_auth };
                let request = match resp::parse_request(&buf[start..], limits) {
                    Ok(Some(request)) => request,
                    // Past `limits.max_request` the parser refuses instead, so `buf` stays bounded.
                    Ok(None) => break None,
                    Err(e) if authenticated => break Some(Reply::err(e)),
                    Err(e) => break Some(Reply::err(format!("{e} (before AUTH)"))),
                };
                start += request.consumed;
                partial.none();
                if request.args.is_empty() {
                    continue;
                }
                parsed += 1;
                let pending = match commands::plan(&request.args, &mut conn, &|| front.context()) {
                    Plan::Reply(Reply::Error(e)) if e.starts_with("WRONGPASS") => {
                        front.metrics.auth_failures.increment(1);
                        Pending::Reply(Reply::Error(e))
                    }
                    Plan::Reply(reply) => Pending::Reply(reply),
                    Plan::Close(reply) => {
                        queue.borrow_mut().requests.push_back((Pending::Close(reply), 0, arrived));
                        break None;
                    }
                    Plan::Cluster(ops, render) => Pending::Cluster {
                        worst_result: ops.iter().map(worst_result).sum(),
                        ops: ops.iter().map(KvOp::encode).collect(),
                        render,
                    },
                };
                let mut q = queue.borrow_mut();
                q.requests.push_back((pending, request.consumed, arrived));
                q.bytes += request.consumed;
            };
            front.metrics.commands.increment(parsed);
            buf.drain(..start);
            start = 0;
            if let Some(reply) = closing {
                // After a framing error where the next request starts is unknown: answer, then close.
                front.metrics.protocol_errors.increment(1);
                queue.borrow_mut().requests.push_back((Pending::Close(reply), 0, arrived));
            }
            if matches!(queue.borrow().requests.back(), Some((Pending::Close(_), _, _))) {
                break Ok(());
            }
            let _ = wake.try_send(());
            if queue.borrow().full() {
                // While the gateway does not read, the client is not late.
                partial.none();
            }
            while queue.borrow().full() {
                if room.recv().await.is_none() {
                    break;
                }
            }
            let len = buf.len();
            if len > 0 {
                partial.begun();
            }
            buf.resize(len + READ_CHUNK, 0);
            match rd.read(&mut buf[len..]).await {
                Ok(0) => {
                    buf.truncate(len);
                    break Ok(());
                }
                Ok(n) => buf.truncate(len + n),
                Err(e) => break Err(e),
            }
        }
    };
    let ended = futures_lite::future::or(reading, watchdog).await;
    queue.borrow_mut().reader_done = true;
    let _ = wake.try_send(());
    ended?;
    // The driver answers what is queued and then ends the connection.
    futures_lite::future::pending().await
}

/// Sends a connection's rendered replies, in order, as its client takes them.
async fn write_replies(
    front: &Front,
    wr: &mut (impl futures_lite::AsyncWrite + Unpin),
    outbox: &RefCell<Outbox>,
    ready: &LocalReceiver<()>,
    drained: &LocalSender<()>,
) -> std::io::Result<()> {
    let mut sending = Vec::new();
    loop {
        std::mem::swap(&mut outbox.borrow_mut().bytes, &mut sending);
        if sending.is_empty() {
            if ready.recv().await.is_none() {
                return Ok(());
            }
            continue;
        }
        wr.write_all(&sending).await?;
        wr.flush().await?;
        let sent = sending.len();
        outbox.borrow_mut().unsent -= sent;
        front.unsent.set(front.unsent.get() - sent);
        sending.clear();
        if sending.capacity() > FREE_UNSENT_BYTES {
            sending = Vec::new(); // a burst's buffer is not kept for the connection's life
        }
        let _ = drained.try_send(());
    }
}

/// The driver's side of a connection's replies.
struct Replies<'a> {
    outbox: &'a RefCell<Outbox>,
    /// Tells the writer there is something to send.
    ready: &'a LocalSender<()>,
    /// The writer sent something.
    drained: &'a LocalReceiver<()>,
}

/// Answers queued requests in order: those the gateway answers at once, and batches for the rest.
/// Renders replies for the writer and goes on while they wait for the client to take them, up to
/// [`Front::room_to_reply`].
#[allow(clippy::too_many_arguments)] // one connection's whole wiring, passed once
async fn drive(
    host: &Rc<Host>,
    front: &Front,
    session: Session,
    replies: Replies<'_>,
    queue: &RefCell<Queue>,
    wake: &LocalReceiver<()>,
    room: &LocalSender<()>,
    results: &LocalReceiver<Answer>,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    loop {
        let may_submit = front.room_to_reply(replies.outbox.borrow().unsent);
        let (closing, submit) = {
            let mut q = queue.borrow_mut();
            let closing = answer_ready(&mut q, &mut out, &front.metrics.latency);
            let submit = if closing || q.in_flight > 0 || !may_submit { None } else { next_batch(&mut q) };
            (closing, submit)
        };
        if let Some(op) = submit {
            let mut refused = None;
            host.act(|now, o| refused = front.gateway.borrow_mut().submit(session, now, op, o).err());
            if let Some(SubmitError::Overloaded) = refused {
                // The cluster refuses and this gateway's queue for it is full: refuse at once.
                front.metrics.busy.increment(1);
                complete(&mut queue.borrow_mut(), &Answer::Busy, &mut out, &front.metrics.latency);
            } else if let Some(e) = refused {
                // Cannot happen (one batch per session at a time), but never leave the client
                // waiting: its requests get an error each.
                tracing::error!(node = front.node, "gateway session {session}: {e}");
                complete(
                    &mut queue.borrow_mut(),
                    &Answer::Done(Bytes::new()),
                    &mut out,
                    &front.metrics.latency,
                );
            }
        }
        if !out.is_empty() {
            let mut outbox = replies.outbox.borrow_mut();
            outbox.unsent += out.len();
            front.unsent.set(front.unsent.get() + out.len());
            if outbox.bytes.is_empty() {
                std::mem::swap(&mut outbox.bytes, &mut out); // no copy while the client keeps up
            } else {
                outbox.bytes.extend_from_slice(&out);
                out.clear();
            }
            let _ = replies.ready.try_send(());
            let _ = room.try_send(());
        }
        // The borrow ends before the await: the reader, polled meanwhile, borrows the queue too.
        let finished = {
            let q = queue.borrow();
            q.reader_done && q.requests.is_empty()
        };
        if closing || finished {
            // Every reply rendered goes out before the connection ends.
            while replies.outbox.borrow().unsent > 0 {
                if replies.drained.recv().await.is_none() {
                    break;
                }
            }
            return Ok(());
        }
        if queue.borrow().in_flight > 0 {
            let done = futures_lite::future::or(async { results.recv().await.map(Some) }, async {
                wake.recv().await;
                None
            })
            .await;
            if let Some(answer) = done.flatten() {
                if answer == Answer::Busy {
                    front.metrics.busy.increment(1);
                }
                complete(&mut queue.borrow_mut(), &answer, &mut out, &front.metrics.latency);
            }
        } else if !may_submit {
            // Nothing runs until the client takes some replies (or more requests arrive).
            futures_lite::future::or(async { replies.drained.recv().await }, async { wake.recv().await })
                .await;
        } else if wake.recv().await.is_none() {
            return Ok(());
        }
    }
}

/// Encodes the replies at the front that need nothing from the log; true if one closes.
fn answer_ready(q: &mut Queue, out: &mut Vec<u8>, latency: &super::histogram::LatencyHistogram) -> bool {
    if q.in_flight > 0 {
        return false;
    }
    let now = Instant::now();
    loop {
        match q.requests.front() {
            Some((Pending::Reply(_), _, _)) => {
                let Some(Pending::Reply(reply)) = q.pop(now, latency) else { unreachable!() };
                reply.encode(out);
            }
            Some((Pending::Close(_), _, _)) => {
                let Some(Pending::Close(reply)) = q.pop(now, latency) else { unreachable!() };
                reply.encode(out);
                return true;
            }
            _ => return false,
        }
    }
}

/// The batch of the queued requests from the front (up to the first that closes, and within the
/// batch bounds; the first request always goes), marked in flight.
fn next_batch(q: &mut Queue) -> Option<Bytes> {
    let mut ops = Vec::new();
    let (mut bytes, mut results, mut taken) = (0, 0, 0);
    for (pending, _, _) in &q.requests {
        match pending {
            Pending::Cluster { ops: these, worst_result, .. } => {
                let size: usize = these.iter().map(|op| op.len() + 16).sum();
                if taken > 0
                    && (bytes + size > MAX_GROUP_BYTES
                        || ops.len() + these.len() > MAX_GROUP_OPS
                        || results + worst_result > MAX_RESULT_BYTES)
                {
                    break;
                }
                bytes += size;
                results += worst_result;
                ops.extend(these.iter().cloned());
            }
            Pending::Reply(_) => {}
            Pending::Close(_) => break,
        }
        taken += 1;
    }
    if ops.is_empty() {
        return None;
    }
    q.in_flight = taken;
    Some(KvOp::Batch { ops }.encode())
}

// A request and a batch's results each travel in one message's meta, with room to spare.
const _: () = assert!(MAX_REQUEST_BYTES + (1 << 20) <= crate::wire::MAX_META_BYTES);
const _: () = assert!(MAX_RESULT_BYTES + (1 << 20) <= crate::wire::MAX_META_BYTES);

/// The most bytes an op's result can take in its batch's results (see `MAX_RESULT_BYTES`): only a
/// read returns a value.
fn worst_result(op: &KvOp) -> usize {
    match op {
        KvOp::Get { .. } => MAX_READ_RESULT_BYTES,
        _ => 64,
    }
}

/// What a RESP client gets for a request the cluster refused (Redis answers `-BUSY` too when it
/// cannot serve now); it was never executed, so sending it again is safe.
pub const BUSY_REPLY: &str = "BUSY the cluster is overloaded: the command was not executed; retry later";

/// The batch in flight completed (or was refused): renders its requests' replies, in order.
fn complete(q: &mut Queue, answer: &Answer, out: &mut Vec<u8>, latency: &super::histogram::LatencyHistogram) {
    let now = Instant::now();
    let result = match answer {
        Answer::Done(result) => result,
        Answer::Busy => {
            for _ in 0..std::mem::take(&mut q.in_flight) {
                let reply = match q.pop(now, latency) {
                    Some(Pending::Reply(reply)) => reply,
                    Some(Pending::Cluster { .. }) => Reply::Error(BUSY_REPLY.into()),
                    Some(Pending::Close(_)) | None => unreachable!("a batch stops before a close"),
                };
                reply.encode(out);
            }
            return;
        }
    };
    let results: Vec<KvResult> = match KvResult::decode(result) {
        Ok(KvResult::Batched { results }) => {
            results.iter().map(|r| KvResult::decode(r).unwrap_or_else(KvResult::Error)).collect()
        }
        other => {
            tracing::error!("a gateway batch came back as {other:?}");
            Vec::new()
        }
    };
    let mut next = results.into_iter();
    for _ in 0..std::mem::take(&mut q.in_flight) {
        let reply = match q.pop(now, latency) {
            Some(Pending::Reply(reply)) => reply,
            Some(Pending::Cluster { ops, render, .. }) => {
                let mine: Vec<KvResult> = next.by_ref().take(ops.len()).collect();
                if mine.len() == ops.len() {
                    commands::render(render, &mine)
                } else {
                    Reply::err("internal: the batch returned fewer results than it had ops")
                }
            }
            Some(Pending::Close(_)) | None => unreachable!("a batch stops before a close"),
        };
        reply.encode(out);
    }
}
