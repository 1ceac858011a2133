//! `bench recovery`: how long a stateful node takes from process start to serving when its disk
//! holds a lot: an acceptor with a large write-ahead log, a replica with a large snapshot.
//!
//! The data is written here, in the formats the storage layer reads (`storage::record::encode`
//! segments cut as the write-ahead log cuts them, a real replica's durable snapshot image under
//! `storage::snapshot`'s header); then the real binary is started as a user starts it
//! (`autopaxos acceptor --config <file> --node 3 --data-dir <dir> --metrics-addr ...`) from a
//! cluster file of `config --example`'s shape on free loopback ports, and timed:
//!
//! - **listening**: spawn until its port accepts a TCP connection (polled every 1 ms). The port is
//!   bound after the data directory was read back (`DataDir::recover`) but before the role is built
//!   from it, so this alone would miss the replica's snapshot restore.
//! - **serving**: spawn until the node sends its handshake on that connection, which it does only
//!   once its role is built (acceptor state loaded, snapshot restored) and its accept loop runs.
//! - the node's own `recovered N records ... in X` log line (the `DataDir::recover` part).
//!
//! Each node is measured twice: **cold** (the files evicted from the page cache first, with
//! `dd iflag=nocache count=0`, which uses `posix_fadvise(DONTNEED)`; under a VM the host may still
//! cache the disk) and **warm** (right after, the files now cached). The process is killed after
//! each start. Must never: leave a node process running, or touch node directories it did not make.

use super::capacities::Machine;
use super::tune::this_machine;
use crate::protocol::config::{ClusterConfig, Tunables};
use crate::protocol::durable::Record;
use crate::protocol::messages::{client_id, encode_batch, Command, Msg, Value};
use crate::protocol::replica::Replica;
use crate::protocol::state_machine::kv::KvOp;
use crate::protocol::state_machine::{new_state_machine, HashKey, StateMachineKind};
use crate::protocol::{Ballot, NodeId, Out, Role, Slot};
use crate::runtime::launch::{node_dir, ScratchDir};
use crate::storage::dir::{segment_name, snapshot_name};
use crate::storage::record::{encode, seed_of_segment};
use crate::storage::snapshot::snapshot_header;
use crate::storage::wal::WalOptions;
use crate::wire::{Frame, FrameReader};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The acceptor the benchmark starts (group 0 of `config --example`'s cluster).
pub const ACCEPTOR_NODE: NodeId = 3;
/// The replica the benchmark starts.
pub const REPLICA_NODE: NodeId = 7;
/// Direct I/O block: the write-ahead log pads a closed segment with zeros to a multiple of it.
const BLOCK: usize = 4096;
/// Commands per batch in the acceptor's log (the default batch size).
const ACCEPTOR_BATCH_COMMANDS: usize = 100;
/// Value bytes of each command in the acceptor's log (`local`'s default value size).
const ACCEPTOR_VALUE_BYTES: usize = 16;
/// Distinct batches the acceptor's log cycles through (the acceptor never decodes them).
const ACCEPTOR_BATCH_POOL: usize = 64;
/// Puts per chosen batch fed to the replica.
const REPLICA_BATCH_COMMANDS: usize = 100;
/// Value bytes of each key in the replica's store.
const REPLICA_VALUE_BYTES: usize = 1024;
/// Partitions the replica's keys are spread over.
const REPLICA_PARTITIONS: u64 = 1024;
/// Clients issuing the replica's puts (its client table holds one entry each).
const CLIENTS: u64 = 1000;
/// How long a node may take to serve before the benchmark gives up on it.
const SERVE_TIMEOUT: Duration = Duration::from_secs(1800);

/// What `bench recovery` measures and where.
#[derive(Debug, Clone)]
pub struct RecoveryBenchOptions {
    /// Target size of the acceptor's log and of the replica's snapshot state, in bytes (e.g. 1 GiB).
    pub bytes: u64,
    /// Where to write the node directories (`node-3`, `node-7`, each removed after its
    /// measurement); `None`: a scratch directory under the system's temporary directory, removed
    /// after the run.
    pub dir: Option<PathBuf>,
    /// The `autopaxos` executable to start (`std::env::current_exe()` from the CLI).
    pub binary: PathBuf,
}

/// Physical memory of this machine, bytes (`/proc/meminfo`; 0 if it cannot be read): the replica's
/// state is built in memory, so the report says how much there was.
fn memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One start of a node on its data, timed from spawning the process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartTiming {
    /// Whether the node's files were evicted from the page cache before the start.
    pub cold: bool,
    /// Spawn until the listen port accepted a TCP connection (data dir read back, role not yet built).
    pub listening_ms: f64,
    /// Spawn until the node sent its handshake on that connection: the role is built and serving.
    pub serving_ms: f64,
    /// The duration in the node's `recovered ...` log line (reading and checking the data dir).
    pub logged_recovery_ms: Option<f64>,
    /// The record count in that line.
    pub logged_records: Option<u64>,
    /// That line as the node logged it.
    pub log_line: Option<String>,
    /// Connections reset or closed before the node's handshake, dialled again (0 normally).
    pub redials: u32,
    /// The node process's peak resident memory once serving (`VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// One stateful node's figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecovery {
    /// `acceptor` or `replica`.
    pub role: String,
    /// Its node id in the cluster file.
    pub node: NodeId,
    /// Bytes of the files generated in its directory.
    pub bytes_on_disk: u64,
    /// Files generated (log segments, or the snapshot).
    pub files: usize,
    /// Acceptor: records in its log (one Promise per segment, the rest Accepts).
    pub records: Option<u64>,
    /// Acceptor: the Accept records (one slot each) among them.
    pub accepted_slots: Option<u64>,
    /// Replica: bytes of its durable snapshot image (state machine and client table).
    pub state_bytes: Option<u64>,
    /// Replica: keys in its key-value store.
    pub keys: Option<u64>,
    /// Replica: the slot its snapshot was taken at.
    pub snapshot_slot: Option<Slot>,
    /// Seconds spent generating the files (building the state, encoding, writing, syncing).
    pub generate_s: f64,
    /// Replica: seconds to build its durable image in memory at once (what `bench recovery`
    /// writes, and what a replica did in one turn before images were built in slices).
    pub image_build_s: Option<f64>,
    /// Replica: the longest turn of building the same image as a replica does, frozen then in
    /// slices of the default `snapshot_slice_bytes`: the longest it stops executing for it.
    pub image_longest_turn_ms: Option<f64>,
    /// Replica: the sliced build's turns...
    pub image_turns: Option<u64>,
    /// ...and their time in all.
    pub image_sliced_s: Option<f64>,
    /// The command that started the node (paths as on this run).
    pub command: String,
    /// Cold start (page cache evicted), if eviction worked, then warm start.
    pub starts: Vec<StartTiming>,
}

/// What `bench recovery` measured. `--json` prints it as one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryBenchReport {
    /// The machine (as `tune` records it).
    pub machine: Machine,
    /// Its physical memory, bytes.
    pub memory_bytes: u64,
    /// The target size asked for, bytes.
    pub target_bytes: u64,
    /// The acceptor with a log of about `target_bytes`.
    pub acceptor: NodeRecovery,
    /// The replica with a snapshot of about `target_bytes`.
    pub replica: NodeRecovery,
}

impl std::fmt::Display for RecoveryBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.machine;
        writeln!(
            f,
            "recovery: {} cores, {}, {:.1} GiB RAM, Linux {}",
            m.cores,
            m.cpu,
            self.memory_bytes as f64 / GIB,
            m.kernel
        )?;
        for node in [&self.acceptor, &self.replica] {
            let what = match (node.records, node.state_bytes) {
                (Some(r), _) => format!("{r} records in {} segments", node.files),
                (_, Some(s)) => format!(
                    "{:.2} GiB state, {} keys, snapshot at slot {}; its image built at once in {:.2} s, \
                     or in {} turns of at most {:.1} ms ({:.2} s in all)",
                    s as f64 / GIB,
                    node.keys.unwrap_or(0),
                    node.snapshot_slot.unwrap_or(0),
                    node.image_build_s.unwrap_or(0.0),
                    node.image_turns.unwrap_or(0),
                    node.image_longest_turn_ms.unwrap_or(0.0),
                    node.image_sliced_s.unwrap_or(0.0)
                ),
                _ => String::new(),
            };
            writeln!(
                f,
                "{} {}: {:.2} GiB on disk ({what}), generated in {:.1} s",
                node.role,
                node.node,
                node.bytes_on_disk as f64 / GIB,
                node.generate_s
            )?;
            for s in &node.starts {
                writeln!(
                    f,
                    "  {:<4}: listening {:>9.1} ms, serving {:>9.1} ms; node's own log: {}; peak RSS {}",
                    if s.cold { "cold" } else { "warm" },
                    s.listening_ms,
                    s.serving_ms,
                    s.logged_recovery_ms.map_or("-".to_string(), |ms| format!("read back in {ms:.1} ms")),
                    s.peak_rss_bytes.map_or("-".to_string(), |b| format!("{:.2} GiB", b as f64 / GIB)),
                )?;
            }
        }
        Ok(())
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Generates an acceptor log and a replica snapshot of about `opts.bytes` each, starts the real
/// binary on each (cold, then warm page cache), and reports how long each took to serve. Prints
/// progress to stderr and the summary to stdout. The two nodes are done one after the other, each
/// directory removed after its measurement, so the disk holds one of them at a time.
pub fn run_recovery_bench(opts: &RecoveryBenchOptions) -> Result<RecoveryBenchReport, String> {
    if opts.bytes == 0 {
        return Err("bench recovery: --bytes must be above zero".into());
    }
    let scratch;
    let base = match &opts.dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = ScratchDir::new("autopaxos-recovery");
            scratch.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    for id in [ACCEPTOR_NODE, REPLICA_NODE] {
        let dir = node_dir(&base, id);
        if dir.exists() {
            return Err(format!("{} exists already: bench recovery will not write into it", dir.display()));
        }
    }
    let config = base.join("recovery-cluster.toml");
    // The example cluster file names `cluster.secret` beside it.
    let secret = base.join("cluster.secret");
    if !secret.exists() {
        crate::secret::ClusterSecret::generate(&secret).map_err(|e| e.to_string())?;
    }
    write_cluster_file(&opts.binary, &config)?;

    let acceptor = {
        let dir = node_dir(&base, ACCEPTOR_NODE);
        eprintln!(
            "bench recovery: writing an acceptor log of {} in {}",
            show_bytes(opts.bytes),
            dir.display()
        );
        let started = Instant::now();
        let log = write_acceptor_log(&dir, opts.bytes);
        let generate_s = started.elapsed().as_secs_f64();
        let result = log.and_then(|log| {
            eprintln!(
                "bench recovery: {} records in {} segments ({}) in {generate_s:.1} s",
                log.records,
                log.segments,
                show_bytes(log.bytes_on_disk)
            );
            let (command, starts) = measure_starts(opts, "acceptor", ACCEPTOR_NODE, &config, &base)?;
            Ok(NodeRecovery {
                role: "acceptor".into(),
                node: ACCEPTOR_NODE,
                bytes_on_disk: log.bytes_on_disk,
                files: log.segments,
                records: Some(log.records),
                accepted_slots: Some(log.accepts),
                state_bytes: None,
                keys: None,
                snapshot_slot: None,
                generate_s,
                image_build_s: None,
                image_longest_turn_ms: None,
                image_turns: None,
                image_sliced_s: None,
                command,
                starts,
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
        result?
    };

    let replica = {
        let dir = node_dir(&base, REPLICA_NODE);
        eprintln!(
            "bench recovery: building a replica state of {} and writing its snapshot in {}",
            show_bytes(opts.bytes),
            dir.display()
        );
        let started = Instant::now();
        let snap = write_replica_snapshot(&dir, opts.bytes);
        let generate_s = started.elapsed().as_secs_f64();
        let result = snap.and_then(|snap| {
            eprintln!(
                "bench recovery: {} keys, {} of state, snapshot at slot {} in {generate_s:.1} s \
                 (its image built in memory in {:.2} s)",
                snap.keys,
                show_bytes(snap.state_bytes),
                snap.slot,
                snap.image_build_s
            );
            let (command, starts) = measure_starts(opts, "replica", REPLICA_NODE, &config, &base)?;
            Ok(NodeRecovery {
                role: "replica".into(),
                node: REPLICA_NODE,
                bytes_on_disk: snap.bytes_on_disk,
                files: 1,
                records: None,
                accepted_slots: None,
                state_bytes: Some(snap.state_bytes),
                keys: Some(snap.keys),
                snapshot_slot: Some(snap.slot),
                generate_s,
                image_build_s: Some(snap.image_build_s),
                image_longest_turn_ms: Some(snap.longest_turn_s * 1e3),
                image_turns: Some(snap.turns),
                image_sliced_s: Some(snap.sliced_s),
                command,
                starts,
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
        result?
    };
    if opts.dir.is_some() {
        let _ = std::fs::remove_file(&config);
    }

    let report = RecoveryBenchReport {
        machine: this_machine(),
        memory_bytes: memory_bytes(),
        target_bytes: opts.bytes,
        acceptor,
        replica,
    };
    print!("{report}");
    Ok(report)
}

fn show_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / GIB)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

/// Writes `config --example`'s cluster, as the binary prints it, with every node on a free
/// loopback port and a cluster id of its own (so that no other cluster on this machine talks to it).
fn write_cluster_file(binary: &Path, path: &Path) -> Result<(), String> {
    let out = Process::new(binary)
        .args(["config", "--example"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {} config --example: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!("{} config --example failed: {}", binary.display(), out.status));
    }
    let example = String::from_utf8(out.stdout).map_err(|e| format!("config --example: {e}"))?;
    let addresses = example.lines().filter(|l| l.trim_start().starts_with("address")).count();
    let mut ports = free_ports(addresses)?.into_iter();
    let mut text = String::new();
    for line in example.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("address") {
            let port = ports.next().expect("one port per address line");
            text.push_str(&format!("address = \"127.0.0.1:{port}\"\n"));
        } else if trimmed.starts_with("id = \"") {
            text.push_str(&format!("id = \"recovery-bench-{}\"\n", std::process::id()));
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    let file = crate::runtime::config::ClusterFile::parse(&text, &path.display().to_string())
        .map_err(|e| format!("the rewritten example cluster file does not load: {e}"))?;
    for (id, kind) in [(ACCEPTOR_NODE, "acceptor"), (REPLICA_NODE, "replica")] {
        if file.role_of(id).map(|k| k.name()) != Some(kind) {
            return Err(format!("config --example no longer has node {id} as a {kind}"));
        }
    }
    if file.config.acceptor_groups.first().is_none_or(|g| !g.contains(&ACCEPTOR_NODE)) {
        return Err(format!("config --example no longer has node {ACCEPTOR_NODE} in acceptor group 0"));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `n` distinct loopback ports free right now (all held at once while they are drawn).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}")))
        .collect()
}

/// What [`write_acceptor_log`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptorLog {
    /// Segment files.
    pub segments: usize,
    /// Records in them (Promises and Accepts).
    pub records: u64,
    /// Accept records (slots 0..accepts).
    pub accepts: u64,
    /// Bytes of the segment files.
    pub bytes_on_disk: u64,
}

/// Realistic batches, as a batcher encodes them: `ACCEPTOR_BATCH_COMMANDS` puts of
/// `ACCEPTOR_VALUE_BYTES`-byte values, from distinct clients.
fn acceptor_batches() -> Vec<Bytes> {
    (0..ACCEPTOR_BATCH_POOL as u64)
        .map(|b| {
            let commands = (0..ACCEPTOR_BATCH_COMMANDS as u64)
                .map(|i| {
                    let n = b * ACCEPTOR_BATCH_COMMANDS as u64 + i;
                    let op = KvOp::Put {
                        partition: Bytes::from(format!("p{:04}", n % REPLICA_PARTITIONS)),
                        item: Bytes::from(format!("k{n:010}")),
                        value: Bytes::from(filler(n, ACCEPTOR_VALUE_BYTES)),
                    }
                    .encode();
                    Command { client_id: client_id(100, (n % CLIENTS) as u32), seq: b + 1, op }
                })
                .collect();
            encode_batch(commands)
        })
        .collect()
}

/// Deterministic bytes that do not compress to nothing.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes an acceptor's log of about `target` bytes into `dir` (created; it must hold no log): one
/// `Promise`, then `Accept`s of slots 0, 1, 2, ... at that ballot, cut into segments as the
/// write-ahead log cuts them (closed once past 64 MiB, padded with zeros to a 4 KiB block, each new
/// one beginning with the promise again). No `Trim`: recovery keeps every value. Synced.
pub fn write_acceptor_log(dir: &Path, target: u64) -> Result<AcceptorLog, String> {
    // Segments as large as the write-ahead log cuts them.
    write_acceptor_log_in(dir, target, WalOptions::default().segment_bytes as usize)
}

fn write_acceptor_log_in(dir: &Path, target: u64, segment_bytes: usize) -> Result<AcceptorLog, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ballot = Ballot { round: 1, proposer: 1 };
    let promise = Record::Promise { ballot, nonce: Some(0x5EED) };
    let batches = acceptor_batches();
    let mut log = AcceptorLog { segments: 0, records: 0, accepts: 0, bytes_on_disk: 0 };
    let mut buf = Vec::with_capacity(segment_bytes + (1 << 20));
    let mut slot: Slot = 0;
    while log.bytes_on_disk < target {
        // Each segment's checksums are seeded by its sequence number, as the log seeds them.
        let sequence = log.segments as u64;
        let seed = seed_of_segment(sequence);
        buf.clear();
        encode(&promise, seed, &mut buf);
        log.records += 1;
        // Past the segment size and the target both end a segment, as the log closes one once past.
        while buf.len() <= segment_bytes && log.bytes_on_disk + (buf.len() as u64) < target {
            let value = Value::Batch(batches[slot as usize % batches.len()].clone());
            encode(&Record::Accept { slot, ballot, value }, seed, &mut buf);
            slot += 1;
            log.records += 1;
        }
        buf.resize(buf.len().div_ceil(BLOCK) * BLOCK, 0);
        let path = dir.join(segment_name(sequence));
        write_synced(&path, &[&buf])?;
        log.segments += 1;
        log.bytes_on_disk += buf.len() as u64;
    }
    log.accepts = slot;
    sync_dir(dir)?;
    Ok(log)
}

/// What [`write_replica_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSnapshot {
    /// The slot the snapshot was taken at (slots below it executed).
    pub slot: Slot,
    /// Bytes of the durable image (what `Replica::recover` restores).
    pub state_bytes: u64,
    /// Keys in the store.
    pub keys: u64,
    /// Bytes of the snapshot file.
    pub bytes_on_disk: u64,
    /// The state's digest (`Replica::state_digest`), to check a restore against.
    pub digest: u64,
    /// Seconds `Replica::durable_snapshot` took.
    pub image_build_s: f64,
    /// The sliced build's longest turn (the freeze, or a slice)...
    pub longest_turn_s: f64,
    /// ...its turns...
    pub turns: u64,
    /// ...and their time in all.
    pub sliced_s: f64,
}

/// Bytes one key adds to a KV snapshot: partition, item and value each length-framed, a version.
fn framed_entry(partition: usize, item: usize, value: usize) -> u64 {
    (8 + partition + 8 + item + 8 + value + 8) as u64
}

/// Builds a real replica's state of about `target` bytes (1 KiB puts over 1024 partitions, from
/// 1000 clients, fed to a `Replica` as chosen batches of 100), and writes its durable snapshot as
/// `snapshot-<slot>.snap` in `dir` (created), synced. Peak memory: about the store plus twice its
/// image (the state machine's snapshot and the durable image that copies it).
pub fn write_replica_snapshot(dir: &Path, target: u64) -> Result<ReplicaSnapshot, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One replica: it keeps no log for peers, so memory holds the state only. Snapshots are never
    // due while it is fed (one is taken below, once).
    let mut config = ClusterConfig::f1(1, 1, 1, 1);
    config.replicas = vec![REPLICA_NODE];
    let tunables = Tunables { replica_snapshot_interval_slots: u64::MAX / 4, ..Tunables::default() };
    let mut replica = Replica::new(
        REPLICA_NODE,
        config,
        &tunables,
        new_state_machine(StateMachineKind::Kv, HashKey::UNKEYED),
        0,
    );
    let pool = Bytes::from(filler(7, 64 << 10));
    let mut estimate = 0u64;
    let mut keys = 0u64;
    let mut slot: Slot = 0;
    while estimate < target {
        let mut commands = Vec::with_capacity(REPLICA_BATCH_COMMANDS);
        while commands.len() < REPLICA_BATCH_COMMANDS && estimate < target {
            let partition = Bytes::from(format!("p{:04}", keys % REPLICA_PARTITIONS));
            let item = Bytes::from(format!("k{keys:010}"));
            let at = (keys as usize * 61) % (pool.len() - REPLICA_VALUE_BYTES);
            estimate += framed_entry(partition.len(), item.len(), REPLICA_VALUE_BYTES);
            let op = KvOp::Put { partition, item, value: pool.slice(at..at + REPLICA_VALUE_BYTES) }.encode();
            let n = keys;
            commands.push(Command {
                client_id: client_id(100, (n % CLIENTS) as u32),
                seq: n / CLIENTS + 1,
                op,
            });
            keys += 1;
        }
        let mut out = Out::new(false);
        let value = Value::Batch(encode_batch(commands));
        replica.handle_message(0, 6, Msg::Chosen { slot, value }, &mut out);
        slot += 1;
        if replica.executed_watermark() != slot {
            return Err(format!("replica did not execute slot {} while building the state", slot - 1));
        }
    }
    let digest = replica.state_digest();
    let started = Instant::now();
    let state = replica.durable_snapshot();
    let image_build_s = started.elapsed().as_secs_f64();
    let slice = Tunables::default().snapshot_slice_bytes as usize;
    let (mut longest_turn_s, mut turns, mut sliced_s) = (0f64, 0u64, 0f64);
    let started = Instant::now();
    let mut frozen = replica.freeze_state_machine();
    let mut image = Vec::with_capacity(frozen.image_len());
    let mut turn = started.elapsed().as_secs_f64();
    loop {
        longest_turn_s = longest_turn_s.max(turn);
        sliced_s += turn;
        turns += 1;
        let started = Instant::now();
        let done = frozen.write_next(&mut image, slice);
        turn = started.elapsed().as_secs_f64();
        if done {
            longest_turn_s = longest_turn_s.max(turn);
            sliced_s += turn;
            turns += 1;
            break;
        }
    }
    if image[..] != state[8..8 + image.len()] {
        return Err("the sliced image differs from the one built at once".into());
    }
    drop((replica, image));
    let header = snapshot_header(slot, &state);
    let path = dir.join(snapshot_name(slot));
    write_synced(&path, &[&header, &state])?;
    sync_dir(dir)?;
    Ok(ReplicaSnapshot {
        slot,
        state_bytes: state.len() as u64,
        keys,
        bytes_on_disk: (header.len() + state.len()) as u64,
        digest,
        image_build_s,
        longest_turn_s,
        turns,
        sliced_s,
    })
}

fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    for part in parts {
        f.write_all(part).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Asks the kernel to drop the page cache of every file in `dir` (`dd iflag=nocache count=0`, i.e.
/// `posix_fadvise(POSIX_FADV_DONTNEED)` on the whole file; the files are synced, so their pages are
/// clean and go). Returns whether it worked for every file.
fn evict_page_cache(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().filter(|e| e.path().is_file()).all(|e| {
        Process::new("dd")
            .arg(format!("if={}", e.path().display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Starts the node twice (cold page cache, if eviction works, then warm) and times each start.
fn measure_starts(
    opts: &RecoveryBenchOptions,
    role: &str,
    node: NodeId,
    config: &Path,
    base: &Path,
) -> Result<(String, Vec<StartTiming>), String> {
    let dir = node_dir(base, node);
    let file = crate::runtime::config::ClusterFile::load(config).map_err(|e| e.to_string())?;
    let listen = *file.addresses.get(&node).ok_or_else(|| format!("node {node} has no address"))?;
    let mut starts = Vec::new();
    let mut command = String::new();
    for cold in [true, false] {
        if cold && !evict_page_cache(&dir) {
            eprintln!("bench recovery: cannot evict the page cache (dd iflag=nocache): warm starts only");
            continue;
        }
        let metrics = free_ports(1)?[0];
        let args: Vec<String> = vec![
            role.into(),
            "--config".into(),
            config.display().to_string(),
            "--node".into(),
            node.to_string(),
            "--data-dir".into(),
            base.display().to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics}"),
        ];
        command = format!("{} {}", opts.binary.display(), args.join(" "));
        eprintln!("bench recovery: {} start: {command}", if cold { "cold" } else { "warm" });
        let timing = time_start(&opts.binary, &args, listen, node, cold)?;
        eprintln!(
            "bench recovery:   listening after {:.1} ms, serving after {:.1} ms",
            timing.listening_ms, timing.serving_ms
        );
        starts.push(timing);
    }
    Ok((command, starts))
}

/// A node process that is killed (SIGKILL) and reaped when dropped, however the measurement ends.
struct Node {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                Some(format!("exited ({status}) before serving; its log:\n{}", self.log_tail()))
            }
            _ => None,
        }
    }

    fn log_tail(&self) -> String {
        let lines = self.stderr.lock().expect("not poisoned");
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn recovered_line(&self) -> Option<String> {
        let lines = self.stderr.lock().expect("not poisoned");
        lines.iter().find(|l| l.contains("recovered ") && l.contains(" records from ")).cloned()
    }

    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?;
        kb.parse::<u64>().ok().map(|kb| kb * 1024)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn time_start(
    binary: &Path,
    args: &[String],
    listen: SocketAddr,
    node: NodeId,
    cold: bool,
) -> Result<StartTiming, String> {
    // A killed node's listening socket can outlive its process for a moment (io_uring releases its
    // files after the process is reaped): wait until nothing answers on the port.
    let free_by = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(listen).is_ok() {
        if Instant::now() > free_by {
            return Err(format!("{listen} still accepts connections before node {node} starts"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let mut child = Process::new(binary)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().expect("piped");
    let lines = stderr.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            lines.lock().expect("not poisoned").push(line);
        }
    });
    let mut node_proc = Node { child, stderr, reader: Some(reader) };

    // Listening: the port accepts a connection (into its backlog, before the node accepts it).
    // Serving: the node accepted it and sent its handshake. A connection that is reset or closed
    // before the handshake is dialled again (counted in `redials`).
    let mut redials = 0u32;
    let (listening, serving) = 'dial: loop {
        let mut stream = loop {
            if let Ok(s) = TcpStream::connect(listen) {
                break s;
            }
            if let Some(why) = node_proc.exited() {
                return Err(format!("node {node} {why}"));
            }
            if started.elapsed() > SERVE_TIMEOUT {
                return Err(format!("node {node} did not listen within {SERVE_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // The connection that brings the handshake counts (an earlier one was reset: see `redials`).
        let connected = started.elapsed();
        stream.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        let mut frames = FrameReader::new();
        loop {
            match stream.read(frames.read_buf()) {
                Ok(0) => {
                    redials += 1;
                    continue 'dial;
                }
                Ok(n) => frames.advance(n),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => {
                    eprintln!(
                        "bench recovery:   connection {:?} -> {listen} failed after {:.1?} ({e}): dialling again",
                        stream.local_addr(),
                        started.elapsed()
                    );
                    redials += 1;
                    continue 'dial;
                }
            }
            match frames.next_frame() {
                Ok(Some(Frame::Handshake(h))) if h.node_id == node => {
                    break 'dial (connected, started.elapsed())
                }
                Ok(Some(other)) => {
                    return Err(format!("node {node} sent {other:?} instead of its handshake"))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("node {node} sent a bad frame: {e}")),
            }
            if let Some(why) = node_proc.exited() {
                return Err(format!("node {node} {why}"));
            }
            if started.elapsed() > SERVE_TIMEOUT {
                return Err(format!("node {node} did not serve within {SERVE_TIMEOUT:?}"));
            }
        }
    };
    let peak_rss_bytes = node_proc.peak_rss();
    // The recovery line is logged before the port is bound; give the pipe a moment to deliver it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut line = node_proc.recovered_line();
    while line.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        line = node_proc.recovered_line();
    }
    drop(node_proc);
    let (logged_records, logged_recovery_ms) = line.as_deref().map_or((None, None), parse_recovered_line);
    Ok(StartTiming {
        cold,
        listening_ms: listening.as_secs_f64() * 1e3,
        serving_ms: serving.as_secs_f64() * 1e3,
        redials,
        logged_recovery_ms,
        logged_records,
        log_line: line,
        peak_rss_bytes,
    })
}

/// The record count and duration (ms) of a `RecoveryReport` line: `recovered N records from M
/// segments (B bytes) in 1.2s; ...`.
fn parse_recovered_line(line: &str) -> (Option<u64>, Option<f64>) {
    let records = line
        .split_once("recovered ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let ms = line
        .split_once(" bytes) in ")
        .and_then(|(_, rest)| rest.split(';').next())
        .and_then(parse_debug_duration_ms);
    (records, ms)
}

/// Milliseconds of a `Duration`'s `Debug` text (`1.2s`, `345.6ms`, `12.3µs`, `80ns`).
fn parse_debug_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1e3,
        "ms" => 1.0,
        "µs" | "us" => 1e-3,
        "ns" => 1e-6,
        _ => return None,
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::durable::Storage;
    use crate::storage::dir::DataDir;

    fn scratch(name: &str) -> ScratchDir {
        let dir = ScratchDir::new(&format!("autopaxos-recovery-test-{name}"));
        std::fs::create_dir_all(dir.path()).unwrap();
        dir
    }

    #[test]
    fn an_acceptor_log_reads_back_whole_across_segments() {
        let base = scratch("acceptor");
        let dir = base.path().join("node-3");
        // 1 MiB segments: three full ones and a short last one.
        let target = (3 << 20) + (300 << 10);
        let log = write_acceptor_log_in(&dir, target, 1 << 20).unwrap();
        assert_eq!(log.segments, 4);
        assert!(log.bytes_on_disk >= target && log.bytes_on_disk < target + (64 << 10), "{log:?}");
        let (recovered, report) = DataDir::open(&dir).unwrap().recover().unwrap();
        assert_eq!(report.records as u64, log.records);
        assert_eq!(report.segments, log.segments);
        assert_eq!(report.torn_bytes_dropped, 0);
        assert_eq!(report.bytes_scanned, log.bytes_on_disk);
        let slots: Vec<Slot> = recovered.records.iter().filter_map(Record::slot).collect();
        assert_eq!(slots, (0..log.accepts).collect::<Vec<_>>());
        let promises = recovered.records.iter().filter(|r| matches!(r, Record::Promise { .. })).count();
        assert_eq!(promises, log.segments);
        let acceptor = crate::protocol::acceptor::Acceptor::recover(
            ACCEPTOR_NODE,
            ClusterConfig::f1(1, 1, 1, 1),
            &Tunables::default(),
            Storage::Durable,
            recovered,
        );
        drop(acceptor);
    }

    #[test]
    fn a_replica_snapshot_restores_the_state_it_was_taken_of() {
        let base = scratch("replica");
        let dir = base.path().join("node-7");
        let snap = write_replica_snapshot(&dir, 4 << 20).unwrap();
        assert!(snap.state_bytes >= 4 << 20 && snap.state_bytes < (4 << 20) + (1 << 20), "{snap:?}");
        let (recovered, report) = DataDir::open(&dir).unwrap().recover().unwrap();
        assert_eq!(report.snapshot_slot, Some(snap.slot));
        assert_eq!(report.records, 0);
        let (slot, state) = recovered.snapshot.clone().unwrap();
        assert_eq!((slot, state.len() as u64), (snap.slot, snap.state_bytes));
        let replica = Replica::recover(
            REPLICA_NODE,
            ClusterConfig::f1(1, 1, 1, 1),
            &Tunables::default(),
            new_state_machine(StateMachineKind::Kv, HashKey::UNKEYED),
            Storage::Durable,
            recovered,
            0,
        )
        .unwrap();
        assert_eq!(replica.executed_watermark(), snap.slot);
        assert_eq!(replica.state_digest(), snap.digest);
    }

    #[test]
    fn the_recovery_log_line_parses() {
        let line = "2025-01-01T00:00:00Z  INFO autopaxos::runtime::launch: recovered 130001 records from 17 segments (1073758208 bytes) in 1.2s; snapshot none; torn tail dropped: 0 bytes node=3";
        assert_eq!(parse_recovered_line(line), (Some(130001), Some(1200.0)));
        assert_eq!(parse_debug_duration_ms("345.5ms"), Some(345.5));
        assert_eq!(parse_debug_duration_ms("12.0µs"), Some(0.012));
    }
}
