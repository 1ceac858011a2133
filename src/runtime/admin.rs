//! Membership from the outside: start a stateless node that joins a running cluster, and ask a node
//! to drain and leave (what an operator, or the autoscaler before it terminates a machine, does).

use super::config::ClusterFile;
use super::launch::{node_launch, StorageChoice};
use super::local::cluster_spec;
use super::{metrics, start, ProcessPlan};
use crate::protocol::birth::RoleSpec;
use crate::protocol::membership::can_join;
use crate::protocol::state_machine::{HashKey, StateMachineKind};
use crate::protocol::{Msg, NodeId, RoleKind, Tunables};
use crate::secret::ClusterSecret;
use crate::wire::handshake::{frame_keys, prove, verify, Side};
use crate::wire::{Frame, FrameReader, FrameSealer, FrameWriter, Handshake, WireError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node to start outside the cluster file, joining the running cluster: a stateless one, or an
/// acceptor, replica or proposer that a change of configuration will bring in.
pub struct JoinOptions {
    /// The cluster file: its proposers are announced to, its other nodes dialled.
    pub file: ClusterFile,
    /// Any role but a client.
    pub kind: RoleKind,
    /// This node's id: unused by the file and by any node that ever joined.
    pub id: NodeId,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where the others reach it ("ip:port"); defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    /// Protocol settings.
    pub tunables: Tunables,
    /// Frames per connection before yielding.
    pub read_budget: usize,
    /// The core it runs on.
    pub core: usize,
    /// Prometheus endpoint.
    pub metrics_addr: SocketAddr,
    /// Where an acceptor or replica keeps its state (other roles keep nothing).
    pub storage: StorageChoice,
}

/// `file` without stateless node `id`: a joining node may be listed by tag discovery, which sees
/// every instance. (Tag discovery leaves out the stateful nodes the autoscaler launched: they are in
/// the configuration through the log, not in the file.)
pub fn without_node(mut file: ClusterFile, id: NodeId) -> ClusterFile {
    let config = &mut file.config;
    for list in [&mut config.batchers, &mut config.proxy_leaders, &mut config.unbatchers] {
        list.retain(|&n| n != id);
    }
    if file.role_of(id).is_none() {
        file.addresses.remove(&id);
    }
    file
}

/// The spec of a stateless node joining the running cluster of `file`, reachable at `advertise`.
pub fn joining_spec(
    id: NodeId,
    kind: RoleKind,
    file: &ClusterFile,
    tunables: &Tunables,
    advertise: SocketAddr,
    hash_key: HashKey,
) -> RoleSpec {
    RoleSpec {
        joining: Some(advertise.to_string()),
        ..cluster_spec(id, kind, &file.config, tunables, StateMachineKind::Kv, hash_key)
    }
}

/// Runs one node that joins the running cluster of `opts.file`, until it is told to leave and has
/// drained (then the process exits).
pub fn serve_joining(opts: JoinOptions) -> Result<(), String> {
    let JoinOptions { file, kind, id, listen, advertise, tunables, read_budget, core, metrics_addr, storage } =
        opts;
    if file.addresses.contains_key(&id) {
        return Err(format!("node {id} is in the cluster file: start it without --join"));
    }
    if !can_join(kind) {
        return Err(format!("{} --join: only cluster roles join a running cluster", kind.name()));
    }
    let advertise = advertise.unwrap_or(listen);
    check_advertised(advertise)?;
    let security = file.security()?;
    let spec = joining_spec(id, kind, &file, &tunables, advertise, security.secret.kv_hash_key());
    let launch = node_launch(spec, Some(listen), &storage, file.config.proposers.clone())?;
    if let Err(e) = metrics::install_exporter(metrics_addr) {
        tracing::warn!("{e}; continuing without metrics");
    }
    let plan = ProcessPlan {
        cluster_id: file.cluster_id.clone(),
        security,
        cores: vec![(core, vec![launch])],
        addresses: file.addresses.clone(),
        read_budget,
        stop: Arc::new(AtomicBool::new(false)),
        spin_before_park: Duration::ZERO,
    };
    let running = start(plan, Instant::now())?;
    tracing::info!(node = id, role = kind.name(), %listen, %advertise, "joining the cluster");
    running.join();
    tracing::info!(node = id, "left the cluster");
    Ok(())
}

/// Refuses an address a joining node cannot be reached at (unspecified, or port 0).
pub fn check_advertised(advertise: SocketAddr) -> Result<(), String> {
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(format!(
            "the others cannot reach {advertise}: give --advertise with this machine's address and the port"
        ));
    }
    Ok(())
}

/// Asks the node at `addr` to drain and leave, and waits until it reports that it has (nothing in
/// flight any more). `admin_id` must be unused by the cluster. A node that refuses the connection is
/// not serving: reported as an error, for the caller to judge.
pub fn request_leave(
    cluster_id: &str,
    secret: &ClusterSecret,
    addr: SocketAddr,
    admin_id: NodeId,
    timeout: Duration,
) -> Result<(), String> {
    converse(cluster_id, secret, addr, admin_id, &Msg::Leave, timeout, |m| {
        matches!(m, Msg::Left).then_some(())
    })
    .map_err(|e| match e {
        ConverseError::TimedOut => {
            format!("the node at {addr} had not drained after {}", humantime::format_duration(timeout))
        }
        ConverseError::Closed => {
            format!("the node at {addr} closed the connection before it reported leaving")
        }
        ConverseError::Other(e) => e,
    })
}

/// Why a conversation with a node ended without the answer looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConverseError {
    /// No answer in time.
    TimedOut,
    /// The node closed the connection.
    Closed,
    /// It could not be reached, or spoke nonsense (the message says which).
    Other(String),
}

impl std::fmt::Display for ConverseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConverseError::TimedOut => write!(f, "no answer in time"),
            ConverseError::Closed => write!(f, "closed the connection"),
            ConverseError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Connects to the node at `addr` as the operator `admin_id` (an id no cluster node uses), proves
/// the cluster secret, sends `msg`, and reads until `answer` picks a message out of what comes back,
/// or `timeout` passes.
pub fn converse<R>(
    cluster_id: &str,
    secret: &ClusterSecret,
    addr: SocketAddr,
    admin_id: NodeId,
    msg: &Msg,
    timeout: Duration,
    mut answer: impl FnMut(Msg) -> Option<R>,
) -> Result<R, ConverseError> {
    let other = ConverseError::Other;
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
        .map_err(|e| other(format!("cannot reach the node at {addr}: {e}")))?;
    // Without it, the proof waits for the ACK of the handshake (the node sends its own handshake
    // before it reads ours, so nothing carries that ACK): the peer's delayed ACK, 40 ms on Linux,
    // in most conversations (`status` of ten nodes on loopback took 50-60 ms, 8-11 ms with it).
    stream.set_nodelay(true).map_err(|e| other(format!("{addr}: cannot set TCP_NODELAY: {e}")))?;
    let send = |stream: &mut TcpStream, push: &dyn Fn(&mut FrameWriter) -> Result<(), WireError>| {
        let mut writer = FrameWriter::new();
        push(&mut writer).map_err(|e| other(e.to_string()))?;
        let mut bytes = Vec::new();
        writer.drain_into(&mut bytes);
        stream.write_all(&bytes).map_err(|e| other(format!("cannot send to {addr}: {e}")))
    };
    let ours = Handshake::new(cluster_id, admin_id, RoleKind::Client);
    send(&mut stream, &|w| w.push_handshake(&ours))?;
    let mut reader = FrameReader::new();
    let read_frame = |stream: &mut TcpStream, reader: &mut FrameReader| -> Result<Frame, ConverseError> {
        loop {
            if let Some(frame) =
                reader.next_frame().map_err(|e| other(format!("bad frame from {addr}: {e}")))?
            {
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConverseError::TimedOut);
            }
            stream.set_read_timeout(Some(left)).map_err(|e| other(e.to_string()))?;
            match stream.read(reader.read_buf()) {
                Ok(0) => return Err(ConverseError::Closed),
                Ok(n) => reader.advance(n),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(other(format!("reading from {addr}: {e}"))),
            }
        }
    };
    let theirs = match read_frame(&mut stream, &mut reader)? {
        Frame::Handshake(theirs) => theirs,
        _ => return Err(other(format!("{addr}: the first frame is not a handshake"))),
    };
    theirs.check(cluster_id).map_err(|e| other(format!("{addr}: {e}")))?;
    send(&mut stream, &|w| w.push_proof(&prove(secret, Side::Dialer, &ours, &theirs)))?;
    match read_frame(&mut stream, &mut reader)? {
        Frame::Proof(proof) => {
            verify(secret, Side::Dialer, &ours, &theirs, &proof).map_err(|e| other(format!("{addr}: {e}")))?
        }
        _ => return Err(other(format!("{addr}: the second frame is not a proof"))),
    }
    // A node that authenticates its frames gets our message sealed, and seals its answers.
    let mut sealer = None;
    if theirs.authenticate_frames {
        let keys = frame_keys(secret, Side::Dialer, &ours, &theirs);
        reader.authenticate(keys.receive);
        sealer = Some(FrameSealer::new(keys.send));
    }
    let mut writer = FrameWriter::new();
    writer.push_msg(msg).map_err(|e| other(e.to_string()))?;
    let mut plain = Vec::new();
    writer.drain_into(&mut plain);
    let bytes = match &mut sealer {
        Some(sealer) => {
            let mut sealed = Vec::new();
            sealer.seal(&plain, &mut sealed);
            sealed
        }
        None => plain,
    };
    stream.write_all(&bytes).map_err(|e| other(format!("cannot send to {addr}: {e}")))?;
    loop {
        match read_frame(&mut stream, &mut reader)? {
            Frame::Msg(m) => {
                if let Some(r) = answer(m) {
                    return Ok(r);
                }
            }
            _ => return Err(other(format!("{addr}: a second handshake"))),
        }
    }
}
