//! The cluster file (TOML): the cluster's id and f, every node's id, role and address, and protocol
//! settings. Loaded and validated once at start-up; a bad file is refused with the field named.

use super::limits::Limits;
use crate::protocol::state_machine::StateMachineKind;
use crate::protocol::{ClusterConfig, NodeId, RoleKind, Tunables};
use crate::secret::ClusterSecret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A cluster file that cannot be used. Each variant names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The TOML is malformed or a field has the wrong type (toml names line and field).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A node's role is not one of the known roles.
    #[error("node {id}: unknown role '{role}' (expected one of: proposer, acceptor, proxy-leader, replica, batcher, unbatcher)")]
    UnknownRole { id: NodeId, role: String },
    /// An acceptor without its `group`, or another role with one.
    #[error("node {id}: {why}")]
    Group { id: NodeId, why: &'static str },
    /// Acceptor groups must be numbered 0..G without gaps.
    #[error("acceptor groups must be numbered 0..{count} without gaps; group {missing} is empty")]
    GroupGap { count: usize, missing: usize },
    /// Two nodes share an address.
    #[error("node {0} is listed more than once")]
    DuplicateId(NodeId),
    /// Two nodes share an address.
    #[error("nodes {a} and {b} both use address {address}")]
    DuplicateAddress { a: NodeId, b: NodeId, address: SocketAddr },
    /// The cluster secret cannot be used.
    #[error("{0}")]
    Secret(#[from] crate::secret::SecretError),
    /// The membership or a setting breaks a protocol rule.
    #[error("{0}")]
    Invalid(#[from] crate::protocol::ConfigError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    id: String,
    f: usize,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    authenticate_frames: bool,
    state_machine: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: NodeId,
    role: String,
    address: SocketAddr,
    group: Option<usize>,
    metrics_address: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    batch_size: Option<usize>,
    flush_interval_us: Option<u64>,
    heartbeat_interval_us: Option<u64>,
    election_timeout_us: Option<u64>,
    max_in_flight_slots: Option<usize>,
    leader_full_waiting_batches: Option<usize>,
    max_waiting_batches: Option<usize>,
    batcher_max_held_batches: Option<usize>,
    client_busy_backoff_us: Option<u64>,
    resend_timeout_us: Option<u64>,
    client_retry_timeout_us: Option<u64>,
    replica_report_interval_us: Option<u64>,
    phase1b_page_bytes: Option<usize>,
    replica_snapshot_interval_slots: Option<u64>,
    snapshot_slice_bytes: Option<u64>,
    snapshot_slice_pause_us: Option<u64>,
    snapshot_at_once_bytes: Option<u64>,
    teach_retention_slots: Option<u64>,
    teach_retention_bytes: Option<u64>,
    teach_log_max_percent_of_state: Option<u64>,
    teach_chunk_bytes: Option<u64>,
    teach_window_chunks: Option<u64>,
    teach_max_slots_per_sec: Option<u64>,
    teach_pace_percent_of_live: Option<u64>,
    teach_min_slots_per_sec: Option<u64>,
    teach_max_bytes_per_sec: Option<u64>,
    replica_down_after_us: Option<u64>,
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster: FileCluster,
    #[serde(default)]
    settings: FileSettings,
    #[serde(default)]
    limits: Limits,
    #[serde(rename = "node")]
    nodes: Vec<FileNode>,
}

/// A loaded, validated cluster file.
#[derive(Debug, Clone)]
pub struct ClusterFile {
    /// Names the cluster; nodes of another cluster are refused at the handshake.
    pub cluster_id: String,
    /// Who plays which role.
    pub config: ClusterConfig,
    /// Protocol settings (file values over defaults).
    pub tunables: Tunables,
    /// Where each node listens.
    pub addresses: BTreeMap<NodeId, SocketAddr>,
    /// `metrics_address` of the nodes that name one: where their process serves `/metrics` (the
    /// default of its `--metrics-addr`; `top` and the Prometheus targets file read it). Nodes of one
    /// process share it.
    pub metrics_addresses: BTreeMap<NodeId, SocketAddr>,
    /// `[settings] data_dir`: where acceptors and replicas keep their state (`<data_dir>/node-<id>`);
    /// `None`: `./autopaxos-data`.
    pub data_dir: Option<PathBuf>,
    /// `[cluster] secret_file`: the cluster secret (relative to the cluster file's directory once
    /// loaded; `--secret-file` replaces it).
    pub secret_file: Option<PathBuf>,
    /// The secret `secret_file` holds, loaded (and its mode checked) with the file.
    pub secret: Option<ClusterSecret>,
    /// `[cluster] authenticate_frames`: every node asks its peers to MAC every frame.
    pub authenticate_frames: bool,
    /// `[limits]`: what peers and clients may take from a node.
    pub limits: Limits,
    /// `[cluster] state_machine`: what every replica runs (and clients send), kv unless set.
    pub state_machine: StateMachineKind,
}

/// What a process needs to be heard by the cluster and to protect itself.
#[derive(Debug, Clone)]
pub struct Security {
    /// The cluster secret's keys.
    pub secret: ClusterSecret,
    /// Ask every peer to MAC every frame.
    pub authenticate_frames: bool,
    /// The caps.
    pub limits: Limits,
}

impl Security {
    /// A process that is the whole cluster (`local`, `bench`): a fresh secret no one else knows.
    pub fn private() -> Security {
        Security { secret: ClusterSecret::random(), authenticate_frames: false, limits: Limits::default() }
    }
}

impl ClusterFile {
    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigFileError::Read { path: path.display().to_string(), source })?;
        let file = Self::parse(&text, &path.display().to_string())?;
        match file.secret_file.clone() {
            Some(secret) if secret.is_relative() => {
                file.with_secret_file(&path.parent().unwrap_or(Path::new(".")).join(secret))
            }
            Some(secret) => file.with_secret_file(&secret),
            None => Ok(file),
        }
    }

    /// Uses the secret in `path` (`--secret-file`, or the file's own), read now.
    pub fn with_secret_file(mut self, path: &Path) -> Result<Self, ConfigFileError> {
        self.secret = Some(ClusterSecret::load(path)?);
        self.secret_file = Some(path.to_path_buf());
        Ok(self)
    }

    /// The cluster secret, or what to do without one.
    pub fn secret(&self) -> Result<&ClusterSecret, String> {
        self.secret.as_ref().ok_or_else(|| {
            format!(
                "cluster '{}' names no secret: add `secret_file = \"cluster.secret\"` under [cluster] and \
                 create it with `autopaxos config --new-secret cluster.secret` (or pass --secret-file)",
                self.cluster_id
            )
        })
    }

    /// The secret, the frame option and the caps, for a process that joins this cluster.
    pub fn security(&self) -> Result<Security, String> {
        Ok(Security {
            secret: self.secret()?.clone(),
            authenticate_frames: self.authenticate_frames,
            limits: self.limits.clone(),
        })
    }

    /// Parses and validates cluster-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigFileError> {
        let file: File = toml::from_str(text)
            .map_err(|e| ConfigFileError::Parse { path: origin.to_string(), message: e.to_string() })?;
        let mut config = ClusterConfig {
            f: file.cluster.f,
            proposers: vec![],
            acceptor_groups: vec![],
            proxy_leaders: vec![],
            replicas: vec![],
            batchers: vec![],
            unbatchers: vec![],
        };
        let mut addresses = BTreeMap::new();
        let mut metrics_addresses = BTreeMap::new();
        let mut by_address: BTreeMap<SocketAddr, NodeId> = BTreeMap::new();
        let bad = |message: String| ConfigFileError::Parse { path: origin.to_string(), message };
        if file.cluster.id.trim().is_empty() {
            return Err(bad(
                "[cluster] id is empty: name the cluster (nodes refuse other clusters by it)".into()
            ));
        }
        let mut nodes = file.nodes;
        nodes.sort_by_key(|n| n.id);
        for node in nodes {
            if node.address.port() == 0 || node.address.ip().is_unspecified() {
                return Err(bad(format!(
                    "node {}: address {} is not one its peers can dial (name the host's address and a \
                     port; a node listens on the port of its address)",
                    node.id, node.address
                )));
            }
            // Clients and gateways are not in the cluster file: they reach it from outside.
            let role = RoleKind::from_name(&node.role)
                .filter(|r| !matches!(r, RoleKind::Client | RoleKind::Gateway));
            let Some(role) = role else {
                return Err(ConfigFileError::UnknownRole { id: node.id, role: node.role });
            };
            match (role, node.group) {
                (RoleKind::Acceptor, None) => {
                    return Err(ConfigFileError::Group { id: node.id, why: "an acceptor needs `group = N`" })
                }
                (RoleKind::Acceptor, Some(g)) => {
                    if config.acceptor_groups.len() <= g {
                        config.acceptor_groups.resize(g + 1, Vec::new());
                    }
                    config.acceptor_groups[g].push(node.id);
                }
                (_, Some(_)) => {
                    return Err(ConfigFileError::Group { id: node.id, why: "only acceptors have a group" })
                }
                (RoleKind::Proposer, None) => config.proposers.push(node.id),
                (RoleKind::ProxyLeader, None) => config.proxy_leaders.push(node.id),
                (RoleKind::Replica, None) => config.replicas.push(node.id),
                (RoleKind::Batcher, None) => config.batchers.push(node.id),
                (RoleKind::Unbatcher, None) => config.unbatchers.push(node.id),
                (RoleKind::Client | RoleKind::Gateway, None) => unreachable!("filtered above"),
            }
            if addresses.contains_key(&node.id) {
                return Err(ConfigFileError::DuplicateId(node.id));
            }
            if let Some(&other) = by_address.get(&node.address) {
                return Err(ConfigFileError::DuplicateAddress {
                    a: other,
                    b: node.id,
                    address: node.address,
                });
            }
            by_address.insert(node.address, node.id);
            addresses.insert(node.id, node.address);
            if let Some(metrics) = node.metrics_address {
                metrics_addresses.insert(node.id, metrics);
            }
        }
        if let Some(missing) = config.acceptor_groups.iter().position(Vec::is_empty) {
            return Err(ConfigFileError::GroupGap { count: config.acceptor_groups.len(), missing });
        }
        config.validate()?;
        let s = file.settings;
        let data_dir = s.data_dir.clone();
        let d = Tunables::default();
        let tunables = Tunables {
            batch_size: s.batch_size.unwrap_or(d.batch_size),
            flush_interval_us: s.flush_interval_us.unwrap_or(d.flush_interval_us),
            heartbeat_interval_us: s.heartbeat_interval_us.unwrap_or(d.heartbeat_interval_us),
            election_timeout_us: s.election_timeout_us.unwrap_or(d.election_timeout_us),
            max_in_flight_slots: s.max_in_flight_slots.unwrap_or(d.max_in_flight_slots),
            leader_full_waiting_batches: s
                .leader_full_waiting_batches
                .unwrap_or(d.leader_full_waiting_batches),
            max_waiting_batches: s.max_waiting_batches.unwrap_or(d.max_waiting_batches),
            batcher_max_held_batches: s.batcher_max_held_batches.unwrap_or(d.batcher_max_held_batches),
            client_busy_backoff_us: s.client_busy_backoff_us.unwrap_or(d.client_busy_backoff_us),
            resend_timeout_us: s.resend_timeout_us.unwrap_or(d.resend_timeout_us),
            client_retry_timeout_us: s.client_retry_timeout_us.unwrap_or(d.client_retry_timeout_us),
            replica_report_interval_us: s.replica_report_interval_us.unwrap_or(d.replica_report_interval_us),
            phase1b_page_bytes: s.phase1b_page_bytes.unwrap_or(d.phase1b_page_bytes),
            replica_snapshot_interval_slots: s
                .replica_snapshot_interval_slots
                .unwrap_or(d.replica_snapshot_interval_slots),
            snapshot_slice_bytes: s.snapshot_slice_bytes.unwrap_or(d.snapshot_slice_bytes),
            snapshot_slice_pause_us: s.snapshot_slice_pause_us.unwrap_or(d.snapshot_slice_pause_us),
            snapshot_at_once_bytes: s.snapshot_at_once_bytes.unwrap_or(d.snapshot_at_once_bytes),
            teach_retention_slots: s.teach_retention_slots.unwrap_or(d.teach_retention_slots),
            teach_retention_bytes: s.teach_retention_bytes.unwrap_or(d.teach_retention_bytes),
            teach_log_max_percent_of_state: s
                .teach_log_max_percent_of_state
                .unwrap_or(d.teach_log_max_percent_of_state),
            teach_chunk_bytes: s.teach_chunk_bytes.unwrap_or(d.teach_chunk_bytes),
            teach_window_chunks: s.teach_window_chunks.unwrap_or(d.teach_window_chunks),
            teach_max_slots_per_sec: s.teach_max_slots_per_sec.unwrap_or(d.teach_max_slots_per_sec),
            teach_pace_percent_of_live: s.teach_pace_percent_of_live.unwrap_or(d.teach_pace_percent_of_live),
            teach_min_slots_per_sec: s.teach_min_slots_per_sec.unwrap_or(d.teach_min_slots_per_sec),
            teach_max_bytes_per_sec: s.teach_max_bytes_per_sec.unwrap_or(d.teach_max_bytes_per_sec),
            replica_down_after_us: s.replica_down_after_us.unwrap_or(d.replica_down_after_us),
        };
        tunables.validate()?;
        let state_machine = match &file.cluster.state_machine {
            None => StateMachineKind::Kv,
            Some(name) => {
                name.parse().map_err(|e: crate::protocol::state_machine::UnknownStateMachineKind| {
                    bad(format!("[cluster] state_machine: {e}"))
                })?
            }
        };
        file.limits.validate().map_err(bad)?;
        Ok(ClusterFile {
            cluster_id: file.cluster.id,
            config,
            tunables,
            addresses,
            metrics_addresses,
            data_dir,
            secret_file: file.cluster.secret_file,
            secret: None,
            authenticate_frames: file.cluster.authenticate_frames,
            limits: file.limits,
            state_machine,
        })
    }

    /// The state machine a node runs: the cluster file's, which `--state-machine` (`asked`) may
    /// only repeat: replicas that ran different machines would answer differently, and their
    /// digests could not even be compared.
    pub fn state_machine_for(&self, asked: Option<StateMachineKind>) -> Result<StateMachineKind, String> {
        match asked {
            Some(asked) if asked != self.state_machine => Err(format!(
                "--state-machine {asked}, but the cluster file says state_machine = \"{}\" (the default if \
                 it names none): every node of a cluster runs the same state machine; set it in the \
                 file's [cluster] section",
                self.state_machine
            )),
            _ => Ok(self.state_machine),
        }
    }

    /// The role of a configured node.
    pub fn role_of(&self, id: NodeId) -> Option<RoleKind> {
        self.config.all_nodes().find(|&(n, _)| n == id).map(|(_, k)| k)
    }
}

/// A commented example: an f=1 cluster on loopback, one node per role (`autopaxos config --example`).
pub const EXAMPLE: &str = r#"# autopaxos cluster file. Start each node with
#   autopaxos <role> --config cluster.toml --node <id>
# in any order; nodes that are not up yet are retried with backoff.

[cluster]
id = "demo"        # nodes refuse connections from other clusters
f = 1              # failures tolerated: f+1 proposers, 2f+1 acceptors per group, f+1 replicas
secret_file = "cluster.secret"  # every node proves it knows this secret (relative to this file);
                                # create it with `autopaxos config --new-secret cluster.secret`
# authenticate_frames = false   # MAC every frame too, for networks you do not trust (costs CPU)
# state_machine = "kv"          # what the replicas run: kv (the key-value store) or noop (ordering only)

[settings]         # all optional; these are the defaults
batch_size = 100                 # commands per batch (env fallback BATCH_SIZE, flag --batch-size)
flush_interval_us = 1000         # a partial batch leaves after this long
heartbeat_interval_us = 20000    # leader heartbeat period
election_timeout_us = 150000     # followers run after this long (plus up to as much jitter)
max_in_flight_slots = 1000       # leader's window of unexecuted slots (backpressure)
leader_full_waiting_batches = 64 # window full and this many batches waiting: the leader says it is full
max_waiting_batches = 1024       # batches waiting at the leader, at most (beyond: handed back unproposed)
batcher_max_held_batches = 16    # batches a batcher holds while the leader is full; then new requests get Busy
client_busy_backoff_us = 1000    # a client refused with Busy waits this long (doubling, jittered)
resend_timeout_us = 50000        # re-propose / resend Phase2a after this long
client_retry_timeout_us = 200000 # clients resend an unanswered request after this long
replica_report_interval_us = 10000
phase1b_page_bytes = 262144       # an acceptor reports its log to a new leader in pages this big
replica_snapshot_interval_slots = 20000  # a replica snapshots its state this often (bounds replay)
snapshot_slice_bytes = 1048576   # ...writing its image this much per turn, executing in between
snapshot_slice_pause_us = 0      # ...and pausing this long between slices
snapshot_at_once_bytes = 8388608 # ...but a smaller image is written whole when frozen (0: never)
teach_retention_slots = 100000   # executed slots kept to teach a lagging replica by log segment
teach_retention_bytes = 536870912  # ...and bytes of them (replicas); beyond, it learns by snapshot
teach_log_max_percent_of_state = 50  # ship a log segment up to this % of the state, else a snapshot
teach_chunk_bytes = 262144       # snapshot transfer: bytes per chunk
teach_window_chunks = 4          # snapshot transfer: chunks in flight per learner
teach_max_slots_per_sec = 0      # learning by log segment at most this fast (0: no fixed cap)
teach_pace_percent_of_live = 150 # ...and at most this % of the rate the peers execute at (0: no pace)
teach_min_slots_per_sec = 2000   # ...but at least this fast (an idle cluster has no rate)
teach_max_bytes_per_sec = 0      # ...and by snapshot at most this many bytes/s (0: unpaced)
replica_down_after_us = 500000   # a silent replica is down: its slots answered by others, trim passes it
# data_dir = "./autopaxos-data"  # acceptors and replicas keep their state in <data_dir>/node-<id>

[limits]           # all optional; these are the defaults (per node)
max_connections = 4096               # peer connections open at once
max_connections_per_address = 1024   # ...from one IP
max_handshakes = 256                 # ...still proving the secret
handshake_timeout_ms = 5000          # a peer must prove the secret within this
frame_timeout_ms = 10000             # a frame begun must be whole within this (slowloris)
unauthenticated_frames_per_sec = 2000  # per IP, before its connections authenticate
max_connection_buffer_bytes = 68157456 # the largest frame a peer may send (64 MiB batch + meta)
resp_max_clients_per_address = 10000 # gateways: RESP clients from one IP (all: --max-connections)
resp_request_timeout_ms = 10000      # ...a RESP request begun must be whole within this

[[node]]
id = 1
role = "proposer"
address = "127.0.0.1:7001"
metrics_address = "127.0.0.1:16001"  # its /metrics (--metrics-addr); `top` reads it

[[node]]
id = 2
role = "proposer"
address = "127.0.0.1:7002"
metrics_address = "127.0.0.1:16002"

[[node]]
id = 3
role = "acceptor"
group = 0          # slot s belongs to group s mod (number of groups)
address = "127.0.0.1:7003"
metrics_address = "127.0.0.1:16003"

[[node]]
id = 4
role = "acceptor"
group = 0
address = "127.0.0.1:7004"
metrics_address = "127.0.0.1:16004"

[[node]]
id = 5
role = "acceptor"
group = 0
address = "127.0.0.1:7005"
metrics_address = "127.0.0.1:16005"

[[node]]
id = 6
role = "proxy-leader"
address = "127.0.0.1:7006"
metrics_address = "127.0.0.1:16006"

[[node]]
id = 7
role = "replica"
address = "127.0.0.1:7007"
metrics_address = "127.0.0.1:16007"

[[node]]
id = 8
role = "replica"
address = "127.0.0.1:7008"
metrics_address = "127.0.0.1:16008"

[[node]]
id = 9
role = "batcher"
address = "127.0.0.1:7009"
metrics_address = "127.0.0.1:16009"

[[node]]
id = 10
role = "unbatcher"
address = "127.0.0.1:7010"
metrics_address = "127.0.0.1:16010"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_is_a_valid_f1_cluster() {
        let file = ClusterFile::parse(EXAMPLE, "example").unwrap();
        assert_eq!(file.cluster_id, "demo");
        assert_eq!(file.config, ClusterConfig::f1(1, 1, 1, 1));
        assert_eq!(file.tunables, Tunables::default());
        assert_eq!(file.addresses.len(), 10);
        assert_eq!(file.role_of(6), Some(RoleKind::ProxyLeader));
    }

    #[test]
    fn bad_files_name_the_field() {
        let bad = |from: &str, to: &str| {
            let text = EXAMPLE.replacen(from, to, 1);
            ClusterFile::parse(&text, "c.toml").unwrap_err().to_string()
        };
        assert!(bad("role = \"proposer\"", "role = \"leader\"").contains("unknown role 'leader'"));
        assert!(bad("group = 0          #", "#").contains("an acceptor needs `group = N`"));
        assert!(bad("127.0.0.1:7002", "127.0.0.1:7001").contains("both use address"));
        assert!(bad("id = 2", "id = 1").contains("node 1 is listed more than once"));
        assert!(bad("127.0.0.1:7002", "127.0.0.1:0").contains("not one its peers can dial"));
        assert!(bad("127.0.0.1:7002", "0.0.0.0:7002").contains("not one its peers can dial"));
        assert!(bad("id = \"demo\"", "id = \"\"").contains("[cluster] id is empty"));
        assert!(
            bad("f = 1 ", "f = 1\nstate_machine = \"kvs\"\n").contains("[cluster] state_machine: unknown")
        );
        let noop =
            ClusterFile::parse(&EXAMPLE.replacen("f = 1 ", "state_machine = \"noop\"\nf = 1 ", 1), "c.toml")
                .expect("a noop cluster");
        assert_eq!(noop.state_machine_for(None), Ok(StateMachineKind::Noop));
        assert_eq!(noop.state_machine_for(Some(StateMachineKind::Noop)), Ok(StateMachineKind::Noop));
        assert!(noop.state_machine_for(Some(StateMachineKind::Kv)).unwrap_err().contains("every node"));
        assert!(bad("batch_size = 100", "batch_size = 0").contains("batch_size"));
        assert!(bad("f = 1", "f = \"one\"").contains("c.toml"));
        assert!(bad("address = \"127.0.0.1:7008\"", "address = \"nowhere\"").contains("c.toml"));
        assert!(bad("[settings]", "[settings]\nbatch_sise = 3").contains("batch_sise"));
        let no_replica = EXAMPLE.replacen("role = \"replica\"", "role = \"batcher\"", 1);
        let err = ClusterFile::parse(&no_replica, "c.toml").unwrap_err().to_string();
        assert!(err.contains("replicas: need at least 2"), "{err}");
    }
}
