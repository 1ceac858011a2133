//! Membership from the outside: start a stateless node that joins a running cluster, and ask a node
//! to drain and leave (what an operator, or the autoscaler before it terminates a machine, does).

use super::config::ClusterFile;
use super::launch::{node_launch, StorageChoice};
use super::local::cluster_spec;
use super::{metrics, start, ProcessPlan};
use crate::protocol::membership::is_stateless;
use crate::protocol::birth::RoleSpec;
use crate::protocol::state_machine::StateMachineKind;
use crate::protocol::{Msg, NodeId, RoleKind, Tunables};
use crate::wire::{Frame, FrameReader, FrameWriter, Handshake};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stateless node to start outside the cluster file, joining the running cluster.
pub struct JoinOptions {
    /// The cluster file: its proposers are announced to, its other nodes dialled.
    pub file: ClusterFile,
    /// Batcher, proxy leader or unbatcher.
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
}

/// `file` without node `id`: a joining node may be listed by tag discovery, which sees every instance.
pub fn without_node(mut file: ClusterFile, id: NodeId) -> ClusterFile {
    let config = &mut file.config;
    for list in [&mut config.batchers, &mut config.proxy_leaders, &mut config.unbatchers] {
        list.retain(|&n| n != id);
    }
    file.addresses.remove(&id);
    file
}

/// The spec of a stateless node joining the running cluster of `file`, reachable at `advertise`.
pub fn joining_spec(
    id: NodeId,
    kind: RoleKind,
    file: &ClusterFile,
    tunables: &Tunables,
    advertise: SocketAddr,
) -> RoleSpec {
    RoleSpec {
        joining: Some(advertise.to_string()),
        ..cluster_spec(id, kind, &file.config, tunables, StateMachineKind::Kv)
    }
}

/// Runs one stateless node that joins the running cluster of `opts.file`, until it is told to
/// leave and has drained (then the process exits).
pub fn serve_joining(opts: JoinOptions) -> Result<(), String> {
    let JoinOptions { file, kind, id, listen, advertise, tunables, read_budget, core, metrics_addr } = opts;
    if file.addresses.contains_key(&id) {
        return Err(format!("node {id} is in the cluster file: start it without --join"));
    }
    if !is_stateless(kind) {
        // The protocol brings acceptors in through a change of configuration, but a running
        // cluster cannot yet reach a new acceptor's address, nor would it keep its votes on disk.
        return Err(format!(
            "{} --join: only batchers, proxy leaders and unbatchers can join a running cluster yet",
            kind.name()
        ));
    }
    let advertise = advertise.unwrap_or(listen);
    if advertise.ip().is_unspecified() || advertise.port() == 0 {
        return Err(format!(
            "the others cannot reach {advertise}: give --advertise with this machine's address and the port"
        ));
    }
    let spec = joining_spec(id, kind, &file, &tunables, advertise);
    let launch = node_launch(spec, Some(listen), &StorageChoice::InMemory, file.config.proposers.clone())?;
    if let Err(e) = metrics::install_exporter(metrics_addr) {
        tracing::warn!("{e}; continuing without metrics");
    }
    let plan = ProcessPlan {
        cluster_id: file.cluster_id.clone(),
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

/// Asks the node at `addr` to drain and leave, and waits until it reports that it has (nothing in
/// flight any more). `admin_id` must be unused by the cluster. A node that refuses the connection is
/// not serving: reported as an error, for the caller to judge.
pub fn request_leave(
    cluster_id: &str,
    addr: SocketAddr,
    admin_id: NodeId,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("cannot reach the node at {addr}: {e}"))?;
    let mut writer = FrameWriter::new();
    let hello = Handshake::new(cluster_id, admin_id, RoleKind::Client);
    writer.push_handshake(&hello).map_err(|e| e.to_string())?;
    writer.push_msg(&Msg::Leave).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    writer.drain_into(&mut bytes);
    stream.write_all(&bytes).map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut reader = FrameReader::new();
    let mut handshaken = false;
    loop {
        while let Some(frame) = reader.next_frame().map_err(|e| format!("bad frame from {addr}: {e}"))? {
            match frame {
                Frame::Handshake(theirs) => {
                    theirs.check(cluster_id).map_err(|e| format!("{addr}: {e}"))?;
                    handshaken = true;
                }
                Frame::Msg(Msg::Left) if handshaken => return Ok(()),
                Frame::Msg(_) => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the node at {addr} had not drained after {}",
                humantime::format_duration(timeout)
            ));
        }
        stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match stream.read(reader.read_buf()) {
            Ok(0) => {
                return Err(format!("the node at {addr} closed the connection before it reported leaving"))
            }
            Ok(n) => reader.advance(n),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("reading from {addr}: {e}")),
        }
    }
}
