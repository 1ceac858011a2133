//! `autopaxos bench gateway`: the RESP gateway's own capacity. The real gateway node runs on its
//! core; on the other core, RESP clients pipeline `SET`s into it (each connection keeps `pipeline`
//! requests outstanding) and a mock batcher answers every request the gateway sends as the cluster
//! would (one `Written` per op of each batch), so nothing but the gateway limits the figure. It
//! reports commands per second and, from the CPU time of the gateway's executor, commands per
//! second per core: what `plan` divides a target load by.

use super::run::thread_cpu_seconds;
use crate::protocol::messages::{client_node, ClientReply, Msg};
use crate::protocol::state_machine::kv::{KvOp, KvResult};
use crate::protocol::{ClusterConfig, NodeId, Out, Role, RoleKind, Time, Tunables};
use crate::resp::{encode_request, parse_reply, Reply};
use crate::runtime::gateway::{gateway_launch, GatewaySettings};
use crate::runtime::{start, NodeLaunch};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct GatewayBenchOptions {
    /// How long to measure, after a warm-up.
    pub duration: Duration,
    /// RESP connections.
    pub connections: usize,
    /// Requests each connection keeps outstanding.
    pub pipeline: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// The gateway's core and the clients' and mock's core.
    pub cores: (usize, usize),
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayBenchReport {
    /// RESP commands answered per second.
    pub cmds_per_sec: f64,
    /// Fraction of one core the gateway's executor used.
    pub gateway_busy: f64,
    /// `cmds_per_sec / gateway_busy`: what one fully used core would carry.
    pub cmds_per_sec_per_core: f64,
    /// Connections and pipeline depth.
    pub connections: usize,
    /// Requests outstanding per connection.
    pub pipeline: usize,
    /// Bytes per value.
    pub value_size: usize,
}

/// The cluster as the gateway sees it, in one node: it answers each request at once with a result
/// per op of its batch, as a replica would after executing it.
struct MockCluster;

impl Role for MockCluster {
    fn handle_message(&mut self, _now: Time, _from: NodeId, msg: Msg, out: &mut Out) {
        let Msg::ClientRequests(commands) = msg else { return };
        let written = KvResult::Written { version: 1 }.encode();
        for c in commands {
            let results = match KvOp::decode(&c.op) {
                Ok(KvOp::Batch { ops }) => vec![written.clone(); ops.len()],
                _ => vec![written.clone()],
            };
            let result = KvResult::Batched { results }.encode();
            let reply = ClientReply { client_id: c.client_id, seq: c.seq, result };
            out.send(client_node(c.client_id), Msg::ClientReplies(vec![reply]));
        }
    }
    fn handle_timeout(&mut self, _now: Time, _out: &mut Out) {}
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn kind(&self) -> RoleKind {
        RoleKind::Batcher
    }
}

/// A node that takes what it is sent and does nothing (the proposers and the unbatcher the gateway
/// dials at start).
struct Quiet(RoleKind);

impl Role for Quiet {
    fn handle_message(&mut self, _: Time, _: NodeId, _: Msg, _: &mut Out) {}
    fn handle_timeout(&mut self, _: Time, _: &mut Out) {}
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn kind(&self) -> RoleKind {
        self.0
    }
}

/// One connection's closed loop: `pipeline` SETs out, as many replies in, again.
fn client(addr: SocketAddr, pipeline: usize, value: Vec<u8>, done: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let Ok(mut s) = TcpStream::connect(addr) else { return };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut burst = Vec::new();
    for i in 0..pipeline {
        burst.extend(encode_request(&[b"SET", format!("bench-{i}").as_bytes(), &value]));
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&burst).is_err() {
            return;
        }
        let mut got = 0;
        while got < pipeline {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let mut at = 0;
            while let Ok(Some((reply, used))) = parse_reply(&buf[at..]) {
                if !matches!(reply, Reply::Simple(_)) {
                    tracing::warn!("bench gateway: unexpected reply {reply:?}");
                }
                at += used;
                got += 1;
            }
            buf.drain(..at);
        }
        done.fetch_add(got as u64, Ordering::Relaxed);
    }
}

/// Runs the gateway between RESP clients and a mock cluster and measures it.
pub fn run(opts: &GatewayBenchOptions) -> Result<GatewayBenchReport, String> {
    if opts.connections == 0 || opts.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    let config = ClusterConfig::f1(1, 1, 1, 1);
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid");
    let gateway_id: NodeId = 900;
    let settings = GatewaySettings {
        max_connections: opts.connections as u32 + 16,
        ..GatewaySettings::new("bench".into(), &Default::default())
    };
    let gateway = gateway_launch(gateway_id, config.clone(), Tunables::default(), loopback, settings, None);
    let mut mocks = Vec::new();
    for (id, kind) in config.all_nodes() {
        mocks.push(NodeLaunch {
            id,
            listen: Some(loopback),
            dial_at_start: Vec::new(),
            disk: None,
            resp: None,
            build: Box::new(move |_| {
                Ok(if kind == RoleKind::Batcher { Box::new(MockCluster) } else { Box::new(Quiet(kind)) })
            }),
        });
    }
    let (gateway_core, other_core) = opts.cores;
    let stop = Arc::new(AtomicBool::new(false));
    let plan = super::run::bench_plan(gateway, mocks, opts.cores, 100, stop.clone());
    let running = start(plan, Instant::now())?;
    let addr = *running.resp_addresses.get(&gateway_id).ok_or("the gateway did not bind")?;
    let done = Arc::new(AtomicU64::new(0));
    let clients_stop = Arc::new(AtomicBool::new(false));
    let value = vec![b'v'; opts.value_size];
    let threads: Vec<_> = (0..opts.connections)
        .map(|_| {
            let (done, stop, value, pipeline) =
                (done.clone(), clients_stop.clone(), value.clone(), opts.pipeline);
            std::thread::spawn(move || {
                let _ = core_affinity::set_for_current(core_affinity::CoreId { id: other_core });
                client(addr, pipeline, value, done, stop)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let name = format!("autopaxos-core{gateway_core}");
    let (done0, cpu0, t0) = (done.load(Ordering::Relaxed), thread_cpu_seconds(&name), Instant::now());
    std::thread::sleep(opts.duration);
    let (done1, cpu1, seconds) =
        (done.load(Ordering::Relaxed), thread_cpu_seconds(&name), t0.elapsed().as_secs_f64());
    clients_stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    stop.store(true, Ordering::Relaxed);
    running.join();
    let cmds_per_sec = (done1 - done0) as f64 / seconds;
    if cmds_per_sec == 0.0 {
        return Err("no command came through the gateway".into());
    }
    // Sharing one core, the busy figure covers the mocks too: an underestimate of the capacity.
    let gateway_busy = ((cpu1 - cpu0) / seconds).clamp(1e-3, 1.0);
    Ok(GatewayBenchReport {
        cmds_per_sec,
        gateway_busy,
        cmds_per_sec_per_core: cmds_per_sec / gateway_busy,
        connections: opts.connections,
        pipeline: opts.pipeline,
        value_size: opts.value_size,
    })
}
