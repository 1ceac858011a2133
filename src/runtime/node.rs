//! Hosting one role on one executor: the runtime's half of the sans-IO contract. It keeps time,
//! calls `handle_message` / `handle_timeout` exactly as the simulator does, and routes what the role
//! sends to per-peer queues that connection tasks write out. It makes no protocol decision.
//!
//! A durable node also runs a persistence task: the records its role queues (`Out::persist`) are
//! appended to its write-ahead log, and the messages that wait for them (`Out::after_persist`) are
//! routed only once one `fdatasync` covers them. Whatever arrives while a sync is in flight is
//! covered by the next one (group commit). A replica's snapshots (`Out::snapshots`) are written
//! beside the log, one at a time, and the role is told when each is durable
//! (`Role::snapshot_saved`): written in the log's order, a snapshot of hundreds of megabytes held
//! every record after it, and so every report, for seconds.
//!
//! Must never: hold a `RefCell` borrow across an `.await`; block the executor; send a message of
//! `after_persist` before the sync that covers the records queued before it.

use super::conn;
use super::limits::{Admission, Limits};
use super::metrics::NodeMetrics;
use crate::protocol::durable::Record;
use crate::protocol::{Msg, NodeId, Out, Role, RoleKind, Slot, Time};
use crate::secret::ClusterSecret;
use crate::storage::wal::{PendingSync, Wal};
use crate::wire::FrameWriter;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes queued for one peer before further messages to it are dropped (the protocol retries what
/// is lost; an unbounded queue to a dead peer would not be bounded). Not an overload valve: load
/// is shed at the edge (batchers, gateways), so a live peer's queue stays far below it; at the
/// bound, what is dropped is what a dead or stuck peer would not have taken anyway.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// ...and once a connection to it was lost or could not be made, until one is up again (a peer
/// being dialled for the first time has the full bound). What waits for a dead peer goes
/// stale: a restarted node would first have to take in (an acceptor: log) whatever its previous
/// life missed, a burst no pace bounds; and each dead peer would hold its sender's memory. The
/// protocol re-sends or teaches what is lost, as it does for any message lost in a crash.
pub const MAX_QUEUED_BYTES_WHILE_DOWN: usize = 4 << 20;

/// The send side of one peer: frames waiting for the connection task, and its wake-up.
pub struct Peer {
    /// Frames queued during this turn; the connection task takes them all at once.
    pub writer: RefCell<FrameWriter>,
    /// The last connection to the peer was lost, or the last dial failed, and none is up.
    down: Cell<bool>,
    wake: LocalSender<()>,
}

impl Peer {
    /// A peer queue and the receiver its connection task waits on.
    pub fn new() -> (Rc<Peer>, LocalReceiver<()>) {
        // Capacity 1: a pending wake-up already means "there is something to write".
        let (wake, wake_rx) = local_channel::new_bounded(1);
        let peer = Peer { writer: RefCell::new(FrameWriter::default()), down: Cell::new(false), wake };
        (Rc::new(peer), wake_rx)
    }

    /// Bytes that may wait for this peer: fewer while it is down.
    fn queue_limit(&self) -> usize {
        if self.down.get() {
            MAX_QUEUED_BYTES_WHILE_DOWN
        } else {
            MAX_QUEUED_BYTES
        }
    }

    /// A connection to the peer is up.
    pub fn mark_up(&self) {
        self.down.set(false);
    }

    /// The connection to the peer was lost, or could not be made: what waits beyond the bound
    /// while down is dropped (it would go to a peer that may not come back, or not as it was).
    /// Returns the bytes dropped.
    pub fn mark_down(&self) -> usize {
        self.down.set(true);
        let mut writer = self.writer.borrow_mut();
        if writer.len_bytes() <= MAX_QUEUED_BYTES_WHILE_DOWN {
            return 0;
        }
        let dropped = writer.len_bytes();
        drop(writer.take_segments());
        dropped
    }

    fn notify(&self) {
        let _ = self.wake.try_send(());
    }
}

/// Settings every node of a process shares.
#[derive(Clone)]
pub struct NodeSettings {
    /// Nodes of other clusters are refused at the handshake.
    pub cluster_id: Rc<str>,
    /// Where every configured node listens, and nodes that joined at runtime as views and joins
    /// reveal them (a configured address is never replaced).
    pub addresses: Rc<RefCell<BTreeMap<NodeId, SocketAddr>>>,
    /// Set when a node that is alone in its process drains and leaves: the process then exits.
    pub stop_when_left: Option<Arc<AtomicBool>>,
    /// Frames one connection handles before yielding to the others.
    pub read_budget: usize,
    /// What a peer must prove knowledge of.
    pub secret: ClusterSecret,
    /// Ask every peer to authenticate every frame (`--authenticate-frames`).
    pub authenticate_frames: bool,
    /// Caps on what peers and strangers may take from a node.
    pub limits: Limits,
}

/// One node: a role, its clock, its peers.
pub struct Host {
    /// This node's id.
    pub id: NodeId,
    /// This node's role.
    pub kind: RoleKind,
    /// Shared settings.
    pub settings: NodeSettings,
    /// Metric handles, resolved once.
    pub metrics: NodeMetrics,
    /// What its connections hold of its caps.
    pub admission: RefCell<Admission>,
    role: RefCell<Box<dyn Role>>,
    out: RefCell<Out>,
    epoch: Instant,
    peers: RefCell<BTreeMap<NodeId, Rc<Peer>>>,
    timer_target: Cell<Option<Time>>,
    timer_wake: LocalSender<()>,
    /// Durable nodes: what waits for the next sync, and the persistence task's wake-up.
    persistence: Option<(RefCell<Unsynced>, LocalSender<()>)>,
    /// Replicas: the state digest last computed while idle, and the watermark it is of.
    last_digest: Cell<Option<(Slot, u64)>>,
}

/// Records not yet handed to the log, and the messages that wait for them.
#[derive(Default)]
struct Unsynced {
    records: Vec<Record>,
    held: Vec<(NodeId, Msg)>,
    snapshots: Vec<(Slot, bytes::Bytes)>,
}

impl Host {
    /// Hosts `role` and starts its timer task on the current executor; with a `disk`, also the
    /// persistence task that appends its records to the log there.
    pub fn start(
        id: NodeId,
        role: Box<dyn Role>,
        settings: NodeSettings,
        epoch: Instant,
        disk: Option<super::launch::NodeDisk>,
    ) -> Rc<Host> {
        let kind = role.kind();
        let (timer_wake, timer_rx) = local_channel::new_bounded(1);
        let (persist_wake, persist_rx) = local_channel::new_bounded(1);
        let admission = RefCell::new(Admission::new(settings.limits.clone()));
        let host = Rc::new(Host {
            id,
            kind,
            settings,
            metrics: NodeMetrics::new(kind, id, disk.is_some()),
            admission,
            role: RefCell::new(role),
            // Events feed the metrics; digests (which walk the whole state) are for checkers only.
            out: RefCell::new(Out::counting()),
            epoch,
            peers: RefCell::new(BTreeMap::new()),
            timer_target: Cell::new(None),
            timer_wake,
            persistence: disk.is_some().then(|| (RefCell::new(Unsynced::default()), persist_wake)),
            last_digest: Cell::new(None),
        });
        glommio::spawn_local(timer_loop(host.clone(), timer_rx)).detach();
        if let Some(disk) = disk {
            glommio::spawn_local(persist_loop(host.clone(), disk, persist_rx)).detach();
        }
        glommio::spawn_local(status_loop(host.clone())).detach();
        host
    }

    /// Microseconds since the process's epoch: the `now` every role call gets.
    pub fn now(&self) -> Time {
        self.epoch.elapsed().as_micros() as Time
    }

    /// Hands one message to the role and routes what it sends.
    pub fn deliver(self: &Rc<Self>, from: NodeId, msg: Msg) {
        if let Msg::StatusRequest = msg {
            // An operator's question about this node, not the protocol's: answered here.
            let mut status = self.role.borrow().status();
            status.digest = self.last_digest.get();
            self.route(from, &Msg::Status(status));
            return;
        }
        let now = self.now();
        let commands = msg.commands();
        if commands > 0 {
            self.metrics.commands_in.increment(commands);
        }
        if matches!(msg, Msg::Join { .. } | Msg::Membership(_)) {
            self.learn_addresses(from, &msg);
        }
        let mut out = self.out.borrow_mut();
        self.role.borrow_mut().handle_message(now, from, msg, &mut out);
        self.flush(&mut out);
    }

    /// Lets a front end act for the role (the gateway's RESP connections submitting requests): `f`
    /// gets the clock and the role's output, which is routed as the role's own is.
    pub fn act(self: &Rc<Self>, f: impl FnOnce(Time, &mut Out)) {
        let now = self.now();
        let mut out = self.out.borrow_mut();
        f(now, &mut out);
        self.flush(&mut out);
    }

    /// Records where nodes that joined at runtime listen, and dials them at once: a node without a
    /// listen address (a client pool) can only get replies from an unbatcher over its own connection.
    fn learn_addresses(self: &Rc<Self>, from: NodeId, msg: &Msg) {
        let found: Vec<(NodeId, &str)> = match msg {
            Msg::Join { addr, .. } => vec![(from, addr.as_str())],
            Msg::Membership(view) => view.addresses().collect(),
            _ => return,
        };
        let mut learned = Vec::new();
        let mut book = self.settings.addresses.borrow_mut();
        for (id, addr) in found {
            if id == self.id || book.contains_key(&id) {
                continue;
            }
            match addr.parse::<SocketAddr>() {
                Ok(parsed) => {
                    tracing::info!(node = self.id, peer = id, %parsed, "learned the address of a node that joined");
                    book.insert(id, parsed);
                    learned.push(id);
                }
                Err(_) => {
                    tracing::warn!(
                        node = self.id,
                        peer = id,
                        addr,
                        "ignoring an address that is not ip:port"
                    );
                    self.metrics.bad_frame("bad address in a join or view");
                }
            }
        }
        drop(book);
        for id in learned {
            self.connect(id);
        }
    }

    /// The snapshot the role queued at `slot` is durable.
    fn on_snapshot_saved(self: &Rc<Self>, slot: Slot) {
        let now = self.now();
        let mut out = self.out.borrow_mut();
        self.role.borrow_mut().snapshot_saved(now, slot, &mut out);
        self.flush(&mut out);
    }

    fn on_timeout(self: &Rc<Self>) {
        let now = self.now();
        let mut out = self.out.borrow_mut();
        self.role.borrow_mut().handle_timeout(now, &mut out);
        self.flush(&mut out);
    }

    fn flush(self: &Rc<Self>, out: &mut Out) {
        for (to, msg) in out.msgs.drain(..) {
            self.route(to, &msg);
        }
        match &self.persistence {
            Some((unsynced, wake))
                if !out.persist.is_empty() || !out.after_persist.is_empty() || !out.snapshots.is_empty() =>
            {
                let mut unsynced = unsynced.borrow_mut();
                unsynced.records.append(&mut out.persist);
                unsynced.held.append(&mut out.after_persist);
                unsynced.snapshots.append(&mut out.snapshots);
                let _ = wake.try_send(());
            }
            Some(_) => {}
            // In memory: nothing is kept, so nothing is waited for (roles built `InMemory` queue
            // nothing here anyway).
            None => {
                out.persist.clear();
                out.snapshots.clear();
                for (to, msg) in out.after_persist.drain(..) {
                    self.route(to, &msg);
                }
            }
        }
        for event in out.events.drain(..) {
            self.metrics.event(&event);
            if matches!(event, crate::protocol::Event::Left) {
                self.on_left();
            }
        }
        // Wake the timer task only if the role now wants to be called earlier than it sleeps.
        if let Some(at) = self.role.borrow().poll_timeout() {
            if self.timer_target.get().is_none_or(|current| at < current) {
                let _ = self.timer_wake.try_send(());
            }
        }
    }

    /// The role drained and reported `Left`. A node alone in its process stops the process once its
    /// last messages (the `Left` reports) had a moment to go out.
    fn on_left(self: &Rc<Self>) {
        let Some(stop) = self.settings.stop_when_left.clone() else {
            tracing::info!(node = self.id, "drained and left; the process keeps serving its other nodes");
            return;
        };
        tracing::info!(node = self.id, "drained and left; stopping");
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(300)).await;
            stop.store(true, Ordering::Relaxed);
        })
        .detach();
    }

    /// The send queue of `to`, dialling it first if there is none yet and its address is known.
    pub fn connect(self: &Rc<Self>, to: NodeId) -> Option<Rc<Peer>> {
        if let Some(peer) = self.peers.borrow().get(&to) {
            return Some(peer.clone());
        }
        let addr = *self.settings.addresses.borrow().get(&to)?;
        let (peer, wake_rx) = Peer::new();
        self.peers.borrow_mut().insert(to, peer.clone());
        glommio::spawn_local(conn::dial_loop(self.clone(), to, addr, peer.clone(), wake_rx)).detach();
        Some(peer)
    }

    /// Queues `msg` for `to`, dialling `to` first if this is the first message to it.
    fn route(self: &Rc<Self>, to: NodeId, msg: &Msg) {
        let Some(peer) = self.connect(to) else {
            self.metrics.unroutable.increment(1);
            return;
        };
        let mut writer = peer.writer.borrow_mut();
        let limit = peer.queue_limit();
        if writer.len_bytes() > limit {
            self.metrics.unroutable.increment(1);
            // Silent drops make an outage hard to explain afterwards: say so, at most once a second.
            if let Some(suppressed) = self.admission.borrow_mut().may_log("send queue full") {
                tracing::warn!(
                    node = self.id,
                    peer = to,
                    suppressed,
                    "dropped a {} for node {to}: {limit} bytes already wait for it (it is not \
                     reading, or its connection is down)",
                    msg.name()
                );
            }
            return;
        }
        if let Err(e) = writer.push_msg(msg) {
            // Cannot happen for messages the roles build (bounded sizes); count it, never panic,
            // and say it at most once a second (a retried message fails each time).
            self.metrics.unroutable.increment(1);
            drop(writer);
            if let Some(suppressed) = self.admission.borrow_mut().may_log("cannot encode") {
                tracing::error!(node = self.id, peer = to, suppressed, "cannot encode {}: {e}", msg.name());
            }
            return;
        }
        drop(writer);
        self.metrics.frames_out.increment(1);
        peer.notify();
    }

    /// Routes messages for `id` over an accepted connection (a peer with no listen address, such as
    /// a client). Returns false if `id` already has a route.
    pub fn adopt_peer(&self, id: NodeId, peer: Rc<Peer>) -> bool {
        let mut peers = self.peers.borrow_mut();
        if peers.contains_key(&id) {
            return false;
        }
        peers.insert(id, peer);
        true
    }

    /// Forgets a route adopted by [`Host::adopt_peer`] when its connection closes.
    pub fn forget_peer(&self, id: NodeId, peer: &Rc<Peer>) {
        let mut peers = self.peers.borrow_mut();
        if peers.get(&id).is_some_and(|p| Rc::ptr_eq(p, peer)) {
            peers.remove(&id);
        }
    }
}

/// Syncs a durable node keeps in flight at once before it waits for the oldest.
const SYNCS_IN_FLIGHT: usize = 4;
/// A sync at least this long is logged (at most once a second).
const SLOW_SYNC: Duration = Duration::from_millis(500);

/// One sync in flight and what waits for it.
struct InFlight {
    sync: PendingSync,
    held: Vec<(NodeId, Msg)>,
    records: usize,
    started: Instant,
    /// Already logged as stalled (once per sync).
    stall_logged: bool,
}

/// Appends what the role queued to the log, starts a sync, and routes the messages that waited for
/// it once it completes. Syncs pipeline (up to [`SYNCS_IN_FLIGHT`]): records that arrive while a
/// sync is in flight start their own at once instead of waiting for it to finish, so a vote waits
/// for one sync, not one and a half on average. Messages leave in the order their syncs started.
async fn persist_loop(host: Rc<Host>, disk: super::launch::NodeDisk, wake: LocalReceiver<()>) {
    let Some((unsynced, _)) = &host.persistence else { unreachable!("started only for durable nodes") };
    let mut wal = match disk.open_wal().await {
        Ok(wal) => wal,
        Err(e) => super::launch::fatal_storage_error(host.id, &e),
    };
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut unsynced_records = 0;
    let mut saving: Option<glommio::task::JoinHandle<()>> = None;
    loop {
        // The oldest sync completing comes first: under load new work is almost always ready.
        let work = match in_flight.front_mut() {
            Some(oldest) => {
                let synced = async { Err(oldest.sync.wait().await) };
                futures_lite::future::or(synced, async { Ok(wake.recv().await) }).await
            }
            None => Ok(wake.recv().await),
        };
        match work {
            Err(result) => {
                let done = in_flight.pop_front().expect("the oldest sync");
                if let Err(e) = result {
                    super::launch::fatal_storage_error(host.id, &e);
                }
                release(&host, &mut wal, done).await;
                continue;
            }
            Ok(None) => return,
            Ok(Some(())) => {}
        }
        if let Some(oldest) =
            in_flight.front_mut().filter(|o| !o.stall_logged && o.started.elapsed() >= SLOW_SYNC)
        {
            // A stalled sync is reported before it completes: when the node's next records arrive.
            oldest.stall_logged = true;
            tracing::warn!(
                node = host.id,
                syncs_in_flight = in_flight.len(),
                "a sync has not completed for {:.1}s; votes and reports wait for it",
                oldest.started.elapsed().as_secs_f64()
            );
        }
        let Unsynced { records, mut held, snapshots } = std::mem::take(&mut *unsynced.borrow_mut());
        for (slot, state) in snapshots {
            saving = Some(save_snapshot(host.clone(), wal.dir().to_path_buf(), slot, state, saving.take()));
        }
        if !records.is_empty() {
            let began = Instant::now();
            if let Err(e) = wal.append(&records).await {
                super::launch::fatal_storage_error(host.id, &e);
            }
            // An append waits for the disk only when its writes back up (or a segment is being
            // prepared): a slow one is the same story as a slow sync.
            let took = began.elapsed();
            if took >= SLOW_SYNC {
                // Rate-limited like slow syncs: a slow disk slows every append.
                if let Some(suppressed) = host.admission.borrow_mut().may_log("slow append") {
                    tracing::warn!(
                        node = host.id,
                        records = records.len(),
                        suppressed,
                        "appending to the log took {:.1}s; votes and reports wait for it",
                        took.as_secs_f64()
                    );
                }
            }
            unsynced_records += records.len();
        }
        if held.is_empty() {
            // Nothing waits (a replica's executed values wait for its next watermark report, so
            // they share one sync per report): keep appending.
            continue;
        }
        if unsynced_records == 0 {
            // Everything these wait for is durable, or in a sync already under way.
            match in_flight.back_mut() {
                Some(newest) => newest.held.append(&mut held),
                None => held.into_iter().for_each(|(to, msg)| host.route(to, &msg)),
            }
            continue;
        }
        if in_flight.len() >= SYNCS_IN_FLIGHT {
            let mut oldest = in_flight.pop_front().expect("syncs in flight");
            if let Err(e) = oldest.sync.wait().await {
                super::launch::fatal_storage_error(host.id, &e);
            }
            release(&host, &mut wal, oldest).await;
        }
        let started = Instant::now();
        match wal.start_sync().await {
            Ok(sync) => in_flight.push_back(InFlight {
                sync,
                held,
                records: unsynced_records,
                started,
                stall_logged: false,
            }),
            Err(e) => super::launch::fatal_storage_error(host.id, &e),
        }
        unsynced_records = 0;
    }
}

/// First and last wait before a snapshot file whose writing failed (a full disk) is tried again.
const SNAPSHOT_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Writes the snapshot at `slot` once the one before it (`before`) is written, then tells the role.
/// A replica queues one at a time, so at most two images are held here (one an install's).
fn save_snapshot(
    host: Rc<Host>,
    dir: std::path::PathBuf,
    slot: Slot,
    state: bytes::Bytes,
    before: Option<glommio::task::JoinHandle<()>>,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local(async move {
        if let Some(before) = before {
            before.await;
        }
        let began = Instant::now();
        let mut retry = SNAPSHOT_RETRY.0;
        loop {
            match crate::storage::wal::write_snapshot(&dir, slot, &state).await {
                Ok(bytes) => {
                    tracing::info!(
                        node = host.id,
                        slot,
                        bytes,
                        "snapshot saved in {:.2}s",
                        began.elapsed().as_secs_f64()
                    );
                    break;
                }
                Err(e) => {
                    // The log is whole without it: the replica goes on, and trims nothing until
                    // this snapshot is saved. A full disk stops the node when its log cannot be
                    // written, not here: this file is tried again until space is freed.
                    host.metrics.snapshot_failures.increment(1);
                    tracing::error!(
                        node = host.id,
                        slot,
                        "could not save a snapshot: {e}; the replica goes on from its log, which it \
                         trims no further until the snapshot is saved; trying again in {retry:?}"
                    );
                    glommio::timer::sleep(retry).await;
                    retry = (retry * 2).min(SNAPSHOT_RETRY.1);
                }
            }
        }
        drop(state);
        host.on_snapshot_saved(slot);
    })
    .detach()
}

/// A sync completed: count it, route the messages that waited for it, then let the log delete what
/// a now-durable trim condemned.
async fn release(host: &Rc<Host>, wal: &mut Wal, done: InFlight) {
    let took = done.started.elapsed();
    host.metrics.persisted(done.records, took);
    if took >= SLOW_SYNC {
        // Votes and reports wait for syncs: a sync that stalls stalls the node, and only its log
        // can say so afterwards.
        if let Some(suppressed) = host.admission.borrow_mut().may_log("slow sync") {
            tracing::warn!(
                node = host.id,
                records = done.records,
                waiting_messages = done.held.len(),
                suppressed,
                "a sync took {:.1}s; what waited for it could not leave before",
                took.as_secs_f64()
            );
        }
    }
    if host.kind == RoleKind::Acceptor {
        super::launch::ACCEPTOR_SYNCS.add(done.records);
    }
    for (to, msg) in done.held {
        host.route(to, &msg);
    }
    if let Err(e) = wal.finish_sync(done.sync).await {
        super::launch::fatal_storage_error(host.id, &e);
    }
}

/// Exports the node's state and, for a proposer, whether it leads; for a replica its executed
/// watermark, and the digest of its state once the watermark has stood still for a period (a
/// digest walks the whole state: never while it is moving), so that an operator or a test can
/// compare replicas.
async fn status_loop(host: Rc<Host>) {
    let mut digested_at = None;
    let mut last = None;
    let mut was_leading = false;
    loop {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        let role = host.role.borrow();
        let status = role.status();
        host.metrics.set_state(status.state);
        if host.kind == RoleKind::Proposer {
            host.metrics.leader.set(if status.leading { 1.0 } else { 0.0 });
            if was_leading && !status.leading {
                tracing::info!(node = host.id, "no longer leads");
            }
            was_leading = status.leading;
        }
        let Some(replica) = role.as_replica() else { continue };
        let watermark = replica.executed_watermark();
        host.metrics.executed_watermark.set(watermark as f64);
        if last == Some(watermark) && digested_at != Some(watermark) {
            // 53 bits: exact in a Prometheus sample (a float).
            let digest = replica.state_digest();
            host.metrics.state_digest.set((digest & ((1 << 53) - 1)) as f64);
            host.metrics.state_digest_watermark.set(watermark as f64);
            host.last_digest.set(Some((watermark, digest)));
            digested_at = Some(watermark);
        }
        last = Some(watermark);
    }
}

/// How long the timer task sleeps after handling a timeout: long enough that its sleep is still
/// pending when first polled, so the executor polls io_uring before the next timeout runs.
const REACTOR_TURN: Duration = Duration::from_micros(20);

async fn timer_loop(host: Rc<Host>, wake: LocalReceiver<()>) {
    loop {
        let target = host.role.borrow().poll_timeout();
        host.timer_target.set(target);
        match target {
            None => {
                if wake.recv().await.is_none() {
                    return;
                }
            }
            Some(at) => {
                let now = host.now();
                if at > now {
                    let nap = glommio::timer::sleep(Duration::from_micros(at - now));
                    futures_lite::future::or(nap, async {
                        let _ = wake.recv().await;
                    })
                    .await;
                }
                if host.now() >= at {
                    host.on_timeout();
                    // A role may set its next timer for the next turn (a replica writing a big
                    // image a slice at a time): let the connections and the disk have that turn
                    // first. Not `yield_now`: a task that stays runnable keeps glommio from polling
                    // io_uring until its 100 ms preempt timer, so every read, write and sync of
                    // the node waited up to 100 ms at a time while an image was built.
                    glommio::timer::sleep(REACTOR_TURN).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn fill(peer: &Peer, bytes: usize) {
        let msg = Msg::Chosen {
            slot: 0,
            value: crate::protocol::messages::Value::Batch(Bytes::from(vec![7u8; 64 << 10])),
        };
        while peer.writer.borrow().len_bytes() < bytes {
            peer.writer.borrow_mut().push_msg(&msg).unwrap();
        }
    }

    #[test]
    fn a_peer_that_is_down_holds_a_small_queue_and_a_lost_connection_drops_the_excess() {
        let (peer, _wake) = Peer::new();
        assert_eq!(peer.queue_limit(), MAX_QUEUED_BYTES, "dialled for the first time");
        assert_eq!(peer.mark_down(), 0, "a failed dial with little waiting drops nothing");
        assert_eq!(peer.queue_limit(), MAX_QUEUED_BYTES_WHILE_DOWN);
        peer.mark_up();
        assert_eq!(peer.queue_limit(), MAX_QUEUED_BYTES);
        // A slow reader's backlog, then the connection is lost: the backlog goes.
        fill(&peer, 2 * MAX_QUEUED_BYTES_WHILE_DOWN);
        let queued = peer.writer.borrow().len_bytes();
        assert_eq!(peer.mark_down(), queued);
        assert_eq!(peer.writer.borrow().len_bytes(), 0);
        assert_eq!(peer.queue_limit(), MAX_QUEUED_BYTES_WHILE_DOWN);
        // Within the bound while down, what waits is kept for the next connection.
        fill(&peer, 1 << 20);
        peer.mark_up();
        let kept = peer.writer.borrow().len_bytes();
        assert!(kept >= 1 << 20);
        assert_eq!(peer.mark_down(), 0);
        assert_eq!(peer.writer.borrow().len_bytes(), kept);
    }
}
