//! `autopaxos boot`: start whatever role this machine was launched for, from its user-data.
//!
//! An instance launched from the baked AMI runs `autopaxos boot` under systemd. Boot reads the user-data
//! (a small TOML document, [`UserData`]) from the instance metadata service (IMDSv2: a PUT for a
//! session token, then a GET of `/latest/user-data` with it), or locally from `--user-data FILE`, and
//! starts that role's node(s) on all cores with [`run_nodes`] — the same code path as
//! `autopaxos <role> --config FILE --node IDS`. Peers come from a cluster file carried in the user-data
//! (`discovery = "file"`) or from EC2 tags (`discovery = "tags"`, needs the `cloud` feature).
//!
//! ```toml
//! cluster = "demo"                 # cluster id (must match the cluster file's)
//! role = "batcher"                 # proposer, acceptor, proxy-leader, replica, batcher, unbatcher
//! nodes = [7]                      # node ids this machine runs, one per core
//! metrics_addr = "0.0.0.0:16000"   # optional (default shown)
//! read_budget = 100                # optional
//! state_machine = "kv"             # optional: kv or noop
//! batch_size = 100                 # optional: overrides the cluster's setting
//! discovery = "file"               # "file" (default): cluster_file below; "tags": DescribeInstances
//! cluster_file = """
//! [cluster]
//! id = "demo"
//! ...
//! """
//! # discovery = "tags" only:
//! f = 1
//! expected_instances = 9           # wait until this many instances of the cluster are up
//! region = "us-east-1"             # optional (else the instance's AWS environment)
//! discovery_timeout = "5m"         # optional
//! base_port = 7000                 # optional: node k on an instance listens on base_port + k
//! ```

use crate::duration::parse_duration;
use crate::protocol::state_machine::StateMachineKind;
use crate::protocol::{NodeId, RoleKind, Tunables};
use crate::runtime::config::ClusterFile;
use crate::runtime::launch::{node_launch, StorageChoice};
use crate::runtime::local::cluster_spec;
use crate::runtime::{allowed_cores, default_cores, metrics, start, NodeLaunch, ProcessPlan, Running};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The instance metadata service's address (IMDSv2).
pub const IMDS_ADDR: &str = "169.254.169.254:80";

/// What to run: a validated set of nodes of one role, from a cluster file.
pub struct ServeOptions {
    /// The cluster (membership, addresses, settings).
    pub file: ClusterFile,
    /// Where the cluster file came from, to name it in errors.
    pub origin: String,
    /// The role every node in `nodes` must have.
    pub kind: RoleKind,
    /// The nodes to run, one per core (round-robin over `cores`).
    pub nodes: Vec<NodeId>,
    /// Protocol settings.
    pub tunables: Tunables,
    /// Frames one connection handles before yielding.
    pub read_budget: usize,
    /// Cores to run on; empty: every core this process may use, from one picked by the first
    /// node's id (see `runtime::default_cores`).
    pub cores: Vec<usize>,
    /// The replica's state machine.
    pub state_machine: StateMachineKind,
    /// Where to serve Prometheus metrics.
    pub metrics_addr: SocketAddr,
    /// Where acceptors and replicas keep their state.
    pub storage: StorageChoice,
}

/// Starts the nodes of `opts` and returns once every node listens; the second value says where the
/// metrics are (or that there are none).
pub fn start_nodes(opts: ServeOptions) -> Result<(Running, String), String> {
    let kind = opts.kind;
    let security = opts.file.security()?;
    let cores = if opts.cores.is_empty() { default_cores(&opts.nodes) } else { opts.cores.clone() };
    let mut per_core: Vec<(usize, Vec<NodeLaunch>)> = cores.iter().map(|&c| (c, Vec::new())).collect();
    for (i, &id) in opts.nodes.iter().enumerate() {
        match opts.file.role_of(id) {
            Some(k) if k == kind => {}
            Some(other) => {
                return Err(format!(
                    "node {id} is a {} in {}, not a {}",
                    other.name(),
                    opts.origin,
                    kind.name()
                ))
            }
            None => return Err(format!("node {id} is not in {}", opts.origin)),
        }
        let addr = opts.file.addresses[&id];
        let key = security.secret.kv_hash_key();
        let spec = cluster_spec(id, kind, &opts.file.config, &opts.tunables, opts.state_machine, key);
        let launch = node_launch(spec, Some(addr), &opts.storage, Vec::new())?;
        per_core[i % cores.len()].1.push(launch);
        tracing::info!(node = id, role = kind.name(), %addr, core = cores[i % cores.len()], "starting");
    }
    per_core.retain(|(_, launches)| !launches.is_empty());
    let metrics_note = match metrics::install_exporter(opts.metrics_addr) {
        Ok(bound) => format!("metrics on http://{bound}/metrics"),
        Err(e) => {
            tracing::warn!("{e}; continuing without metrics");
            "no metrics".to_string()
        }
    };
    let plan = ProcessPlan {
        cluster_id: opts.file.cluster_id.clone(),
        security,
        cores: per_core,
        addresses: opts.file.addresses.clone(),
        read_budget: opts.read_budget,
        stop: Arc::new(AtomicBool::new(false)),
        spin_before_park: Duration::ZERO,
    };
    let running = start(plan, Instant::now())?;
    Ok((running, metrics_note))
}

/// Runs the nodes of `opts` until the process is stopped (`autopaxos <role>` and `autopaxos boot`).
pub fn run_nodes(opts: ServeOptions) -> Result<(), String> {
    let (running, metrics_note) = start_nodes(opts)?;
    tracing::info!("serving; {metrics_note}");
    running.join();
    Ok(())
}

/// Where peers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// The cluster file in the user-data.
    #[default]
    File,
    /// DescribeInstances on the `autopaxos:cluster` tag (needs the `cloud` feature).
    Tags,
}

/// A node's user-data (TOML). See the module documentation for an example.
///
/// The one definition of the format: boot parses it ([`UserData::parse`]) and whoever launches
/// instances (`cloud up`, the autoscaler's EC2 fleet) builds one and writes it with
/// [`UserData::to_toml`], so writer and reader cannot drift apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    /// Cluster id.
    pub cluster: String,
    /// Role name.
    pub role: String,
    /// Node ids this machine runs.
    pub nodes: Vec<NodeId>,
    /// Prometheus metrics address.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: SocketAddr,
    /// Frames per connection before yielding.
    #[serde(default = "default_read_budget")]
    pub read_budget: usize,
    /// `kv` or `noop`.
    #[serde(default = "default_state_machine")]
    pub state_machine: String,
    /// Overrides the cluster's batch size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Where peers come from.
    #[serde(default)]
    pub discovery: Discovery,
    /// The cluster file's text (`discovery = "file"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_file: Option<String>,
    /// Failures tolerated (`discovery = "tags"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f: Option<usize>,
    /// Instances to wait for (`discovery = "tags"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_instances: Option<usize>,
    /// AWS region (`discovery = "tags"`; else the AWS environment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// EC2 endpoint (`discovery = "tags"`; else the AWS environment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// How long to wait for the expected instances, e.g. `5m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_timeout: Option<String>,
    /// Node k of an instance listens on `base_port + k` (`discovery = "tags"`).
    #[serde(default = "default_base_port")]
    pub base_port: u16,
    /// The node joins the running cluster rather than being one of its configured nodes: how the
    /// autoscaler adds nodes. A stateless one serves at once; an acceptor, replica or proposer waits
    /// until a change of configuration brings it in.
    #[serde(default)]
    pub join: bool,
    /// With `join`: where the others reach it; default: this instance's private address (from the
    /// metadata service) and `base_port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// A gateway's RESP address (role `gateway`, which always joins); default `0.0.0.0:6380`, or a
    /// free loopback port when the gateway advertises a loopback address (an emulator's instances).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp_addr: Option<SocketAddr>,
    /// The cluster secret itself (the text of its file): how a launched machine learns it. Never in
    /// a tag; the AMI holds none. (Anyone who can read the instance's user-data, on the machine or
    /// through `DescribeInstanceAttribute`, can read it: restrict both.) Without it, the cluster
    /// file's `secret_file` must name a file on the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretText>,
}

/// A secret in user-data: shown redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `file` with the secret that `ud` carries, or else the one its `secret_file` names on this machine.
fn with_secret(file: ClusterFile, ud: &UserData) -> Result<ClusterFile, String> {
    match (&ud.secret, file.secret_file.clone()) {
        (Some(text), _) => Ok(ClusterFile {
            secret: Some(crate::secret::ClusterSecret::from_bytes(text.0.as_bytes())),
            ..file
        }),
        (None, Some(path)) => file.with_secret_file(&path).map_err(|e| e.to_string()),
        (None, None) => Err(format!(
            "user-data: no `secret` and the cluster file names no secret_file: the nodes of cluster '{}' \
             would not hear this one",
            ud.cluster
        )),
    }
}

fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 16000))
}
fn default_read_budget() -> usize {
    100
}
fn default_state_machine() -> String {
    "kv".into()
}
fn default_base_port() -> u16 {
    7000
}

/// Why boot could not start. Each names the field or the step at fault.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The user-data is not valid TOML or has a wrong, missing or unknown field (toml names it).
    #[error("user-data ({origin}): {message}")]
    Parse {
        /// Where the user-data came from.
        origin: String,
        /// toml's message.
        message: String,
    },
    /// A field has a value boot cannot use.
    #[error("user-data ({origin}): field `{field}`: {why}")]
    Field {
        /// Where the user-data came from.
        origin: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The metadata service could not be asked.
    #[error("instance metadata service at {addr}: {why}")]
    Imds {
        /// Its address.
        addr: String,
        /// What failed.
        why: String,
    },
    /// Anything else (cluster file, discovery, start-up).
    #[error("{0}")]
    Other(String),
}

impl UserData {
    /// The user-data of an instance that runs `nodes` of `role` and finds its peers by tags once
    /// `expected_instances` of the cluster's instances are up; every optional field at its default
    /// (the caller sets region, endpoint, ports, `join` … on the value).
    pub fn by_tags(
        cluster: &str,
        role: RoleKind,
        nodes: Vec<NodeId>,
        f: usize,
        expected_instances: usize,
    ) -> Self {
        UserData {
            cluster: cluster.to_string(),
            role: role.name().to_string(),
            nodes,
            metrics_addr: default_metrics_addr(),
            read_budget: default_read_budget(),
            state_machine: default_state_machine(),
            batch_size: None,
            discovery: Discovery::Tags,
            cluster_file: None,
            f: Some(f),
            expected_instances: Some(expected_instances),
            region: None,
            endpoint_url: None,
            discovery_timeout: None,
            base_port: default_base_port(),
            join: false,
            advertise: None,
            resp_addr: None,
            secret: None,
        }
    }

    /// The TOML text boot reads back with [`UserData::parse`] (fields left `None` are omitted).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("user-data is plain values and always serializes")
    }

    /// Parses and checks user-data text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, BootError> {
        let ud: UserData = toml::from_str(text).map_err(|e| BootError::Parse {
            origin: origin.into(),
            message: e.to_string().trim().to_string(),
        })?;
        let field = |field, why: String| BootError::Field { origin: origin.into(), field, why };
        if ud.cluster.is_empty() {
            return Err(field("cluster", "must not be empty".into()));
        }
        match RoleKind::from_name(&ud.role) {
            Some(RoleKind::Gateway) if !ud.join => {
                return Err(field("join", "a gateway joins the running cluster: set join = true".into()))
            }
            Some(RoleKind::Client) | None => {
                return Err(field(
                    "role",
                    format!(
                        "unknown role '{}' (expected one of: proposer, acceptor, proxy-leader, replica, batcher, \
                         unbatcher)",
                        ud.role
                    ),
                ))
            }
            Some(_) => {}
        }
        if ud.nodes.is_empty() {
            return Err(field("nodes", "must list at least one node id".into()));
        }
        if ud.read_budget == 0 {
            return Err(field("read_budget", "must be at least 1".into()));
        }
        if ud.join {
            if ud.nodes.len() != 1 {
                return Err(field("nodes", format!("join starts one node; got {}", ud.nodes.len())));
            }
        } else if ud.advertise.is_some() {
            return Err(field("advertise", "only with join = true".into()));
        }
        if ud.batch_size == Some(0) {
            return Err(field("batch_size", "must be at least 1".into()));
        }
        if let Some(secret) = &ud.secret {
            let len = secret.0.trim().len();
            if len < crate::secret::MIN_SECRET_BYTES {
                let min = crate::secret::MIN_SECRET_BYTES;
                return Err(field("secret", format!("{len} bytes, fewer than {min}")));
            }
        }
        ud.state_machine.parse::<StateMachineKind>().map_err(|e| field("state_machine", e.to_string()))?;
        if let Some(t) = &ud.discovery_timeout {
            parse_duration(t).map_err(|e| field("discovery_timeout", e.to_string()))?;
        }
        match ud.discovery {
            Discovery::File => {
                let Some(text) = &ud.cluster_file else {
                    return Err(field("cluster_file", "required with discovery = \"file\"".into()));
                };
                let file = ClusterFile::parse(text, "cluster_file")
                    .map_err(|e| field("cluster_file", e.to_string()))?;
                if file.cluster_id != ud.cluster {
                    return Err(field(
                        "cluster",
                        format!("'{}' but the cluster file names cluster '{}'", ud.cluster, file.cluster_id),
                    ));
                }
            }
            Discovery::Tags => {
                if ud.f.is_none() {
                    return Err(field("f", "required with discovery = \"tags\"".into()));
                }
                match ud.expected_instances {
                    None => {
                        return Err(field("expected_instances", "required with discovery = \"tags\"".into()))
                    }
                    Some(0) => return Err(field("expected_instances", "must be at least 1".into())),
                    Some(_) => {}
                }
            }
        }
        Ok(ud)
    }

    /// The role (checked by [`UserData::parse`]).
    pub fn role_kind(&self) -> RoleKind {
        RoleKind::from_name(&self.role).expect("checked at parse")
    }

    /// The state machine (checked by [`UserData::parse`]).
    pub fn state_machine_kind(&self) -> StateMachineKind {
        self.state_machine.parse().expect("checked at parse")
    }

    /// How long tag discovery waits for the expected instances (default 5 minutes).
    pub fn discovery_timeout(&self) -> Duration {
        self.discovery_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(300))
    }
}

/// A tiny IMDSv2 client: HTTP/1.1 over a std `TcpStream` with short timeouts.
#[derive(Debug, Clone)]
pub struct Imds {
    /// The service's address (normally [`IMDS_ADDR`]).
    pub addr: SocketAddr,
    /// Bound on connecting and on each read or write.
    pub timeout: Duration,
}

impl Imds {
    /// Fetches the user-data: PUT `/latest/api/token`, then GET `/latest/user-data` with the token.
    pub fn user_data(&self) -> Result<String, BootError> {
        self.get("/latest/user-data", "this instance has no user-data (launch it with autopaxos user-data)")
    }

    /// This instance's private IPv4 address.
    pub fn local_ipv4(&self) -> Result<std::net::IpAddr, BootError> {
        let text = self.get("/latest/meta-data/local-ipv4", "this instance has no private IPv4 address")?;
        text.trim().parse().map_err(|_| BootError::Imds {
            addr: self.addr.to_string(),
            why: format!("local-ipv4 '{}' is not an address", text.trim()),
        })
    }

    /// GET `path` with a fresh session token (IMDSv2).
    fn get(&self, path: &str, when_missing: &str) -> Result<String, BootError> {
        let err = |why: String| BootError::Imds { addr: self.addr.to_string(), why };
        let (status, token) = self
            .request("PUT", "/latest/api/token", &[("X-aws-ec2-metadata-token-ttl-seconds", "60")])
            .map_err(|e| err(format!("PUT /latest/api/token: {e}")))?;
        if status != 200 {
            return Err(err(format!("PUT /latest/api/token answered HTTP {status}")));
        }
        let token = String::from_utf8(token).map_err(|_| err("the token is not UTF-8".into()))?;
        let (status, body) = self
            .request("GET", path, &[("X-aws-ec2-metadata-token", token.trim())])
            .map_err(|e| err(format!("GET {path}: {e}")))?;
        match status {
            200 => String::from_utf8(body).map_err(|_| err(format!("{path} is not UTF-8"))),
            404 => Err(err(when_missing.into())),
            s => Err(err(format!("GET {path} answered HTTP {s}"))),
        }
    }

    /// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::{Error, ErrorKind};
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr.ip());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "PUT" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.take(1 << 20).read_to_end(&mut raw)?;
        let bad = |why: &str| Error::new(ErrorKind::InvalidData, why.to_string());
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed status line"))?;
        let mut body = raw[split + 4..].to_vec();
        for line in lines {
            let Some((k, v)) = line.split_once(':') else { continue };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                let n: usize = v.parse().map_err(|_| bad("bad Content-Length"))?;
                if body.len() < n {
                    return Err(bad("body shorter than Content-Length"));
                }
                body.truncate(n);
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                return Err(bad("chunked responses are not supported"));
            }
        }
        Ok((status, body))
    }
}

/// `autopaxos boot`.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// Read the user-data from this file instead of the instance metadata service.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// The instance metadata service (IMDSv2) to ask when no --user-data is given.
    #[arg(long, default_value = IMDS_ADDR)]
    pub imds_addr: SocketAddr,
    /// Bound on each step of talking to the metadata service.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub imds_timeout: Duration,
    /// Cores to run on, e.g. 0-3 (default: every core this process may use).
    #[arg(long, value_parser = parse_core_list)]
    pub cores: Option<CoreList>,
    /// Exit as soon as the process that started this one exits (how `autopaxos cloud emulate`'s
    /// "instances" die with it, even when it is killed).
    #[arg(long)]
    pub exit_with_parent: bool,
}

/// A core list as one argument (`0-3,6`).
#[derive(Debug, Clone)]
pub struct CoreList(pub Vec<usize>);

fn parse_core_list(s: &str) -> Result<CoreList, String> {
    crate::runtime::parse_cores(s).map(CoreList)
}

/// Reads the user-data, finds the peers and runs this machine's nodes until stopped.
pub fn run(args: BootArgs) -> Result<(), String> {
    let t0 = Instant::now();
    if args.exit_with_parent {
        exit_with_parent();
    }
    let (text, origin) = match &args.user_data {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| format!("cannot read user-data {}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => {
            let imds = Imds { addr: args.imds_addr, timeout: args.imds_timeout };
            (imds.user_data().map_err(|e| e.to_string())?, format!("IMDS {}", args.imds_addr))
        }
    };
    let ud = UserData::parse(&text, &origin).map_err(|e| e.to_string())?;
    let (file, file_origin) = match ud.discovery {
        Discovery::File => (
            ClusterFile::parse(ud.cluster_file.as_deref().unwrap_or_default(), "cluster_file")
                .map_err(|e| e.to_string())?,
            format!("the cluster file in {origin}"),
        ),
        Discovery::Tags => {
            (discover_by_tags(&ud)?, format!("the instances tagged autopaxos:cluster={}", ud.cluster))
        }
    };
    let file = with_secret(file, &ud)?;
    let tunables =
        Tunables { batch_size: ud.batch_size.unwrap_or(file.tunables.batch_size), ..file.tunables.clone() };
    tunables.validate().map_err(|e| e.to_string())?;
    if ud.join {
        return boot_joining(&args, &ud, file, tunables);
    }
    let file_data_dir = file.data_dir.clone();
    let state_machine = file.state_machine_for(Some(ud.state_machine_kind()))?;
    let opts = ServeOptions {
        file,
        origin: file_origin,
        kind: ud.role_kind(),
        nodes: ud.nodes.clone(),
        tunables,
        read_budget: ud.read_budget,
        cores: args.cores.clone().map(|c| c.0).unwrap_or_default(),
        state_machine,
        metrics_addr: ud.metrics_addr,
        storage: StorageChoice::from_flags(false, None, file_data_dir),
    };
    let (running, metrics_note) = start_nodes(opts)?;
    tracing::info!(
        cluster = %ud.cluster,
        role = %ud.role,
        nodes = ?ud.nodes,
        "serving {:.1} ms after boot started; {metrics_note}",
        t0.elapsed().as_secs_f64() * 1e3
    );
    running.join();
    Ok(())
}

/// Watches the parent process from a thread; exits this process once it is gone (this process is
/// then re-parented, so its parent id changes).
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        if std::os::unix::process::parent_id() != parent {
            tracing::info!("the process that started this one ({parent}) is gone: exiting");
            std::process::exit(0);
        }
    });
}

/// Starts the one node of `ud` so that it joins the running cluster of `file`. Tag discovery
/// lists this instance too: its node is taken out of the file, since it is not a configured node.
fn boot_joining(args: &BootArgs, ud: &UserData, file: ClusterFile, tunables: Tunables) -> Result<(), String> {
    let [id] = ud.nodes[..] else {
        return Err(format!("user-data: nodes: join starts one node; got {}", ud.nodes.len()));
    };
    let listen = SocketAddr::from(([0, 0, 0, 0], ud.base_port));
    let advertise = match (ud.advertise, &args.user_data) {
        (Some(a), _) => a,
        (None, None) => {
            let imds = Imds { addr: args.imds_addr, timeout: args.imds_timeout };
            SocketAddr::new(imds.local_ipv4().map_err(|e| e.to_string())?, ud.base_port)
        }
        (None, Some(_)) => return Err("user-data: advertise: required with join outside EC2".into()),
    };
    // On loopback (an emulator's instances all run on one machine) nothing forwards: listen where
    // the others are told to connect.
    let listen = if advertise.ip().is_loopback() { advertise } else { listen };
    let cores = args.cores.clone().map(|c| c.0).unwrap_or_else(allowed_cores);
    if ud.role_kind() == RoleKind::Gateway {
        let resp = ud.resp_addr.unwrap_or_else(|| {
            let ip = if advertise.ip().is_loopback() { advertise.ip() } else { [0, 0, 0, 0].into() };
            SocketAddr::new(ip, if advertise.ip().is_loopback() { 0 } else { 6380 })
        });
        if let Err(e) = crate::runtime::metrics::install_exporter(ud.metrics_addr) {
            tracing::warn!("{e}; continuing without metrics");
        }
        let settings = crate::runtime::gateway::GatewaySettings::new(file.cluster_id.clone(), &file.limits);
        return crate::runtime::gateway::serve_gateway(
            &crate::runtime::admin::without_node(file, id),
            id,
            resp,
            tunables,
            settings,
            Some(crate::runtime::gateway::Joining { listen, advertise }),
            cores[0],
            ud.read_budget,
        );
    }
    let data_dir = file.data_dir.clone();
    crate::runtime::admin::serve_joining(crate::runtime::admin::JoinOptions {
        file: crate::runtime::admin::without_node(file, id),
        kind: ud.role_kind(),
        id,
        listen,
        advertise: Some(advertise),
        tunables,
        read_budget: ud.read_budget,
        core: cores[0],
        metrics_addr: ud.metrics_addr,
        storage: StorageChoice::from_flags(false, None, data_dir),
    })
}

#[cfg(feature = "cloud")]
fn discover_by_tags(ud: &UserData) -> Result<ClusterFile, String> {
    crate::cloud::cluster::discover(ud)
}

#[cfg(not(feature = "cloud"))]
fn discover_by_tags(_: &UserData) -> Result<ClusterFile, String> {
    Err("user-data: discovery = \"tags\" needs EC2 access; this binary was built without it (rebuild with \
         `cargo build --release --features cloud`) — or use discovery = \"file\""
        .into())
}

/// Arguments of a command this build does not have (`ami`, `cloud` without the `cloud` feature).
#[derive(Args, Debug)]
pub struct NotBuilt {
    /// Ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

impl NotBuilt {
    /// The error `autopaxos <command>` gives in a build without the `cloud` feature.
    pub fn refuse(&self, command: &str) -> Result<(), String> {
        Err(format!(
            "`autopaxos {command}` needs the EC2 client, which this binary was built without; rebuild with \
             `cargo build --release --features cloud`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const CLUSTER: &str = "[cluster]\nid = \"demo\"\nf = 1\n\n\
        [[node]]\nid = 1\nrole = \"proposer\"\naddress = \"127.0.0.1:7101\"\n\
        [[node]]\nid = 2\nrole = \"proposer\"\naddress = \"127.0.0.1:7102\"\n\
        [[node]]\nid = 3\nrole = \"acceptor\"\ngroup = 0\naddress = \"127.0.0.1:7103\"\n\
        [[node]]\nid = 4\nrole = \"acceptor\"\ngroup = 0\naddress = \"127.0.0.1:7104\"\n\
        [[node]]\nid = 5\nrole = \"acceptor\"\ngroup = 0\naddress = \"127.0.0.1:7105\"\n\
        [[node]]\nid = 6\nrole = \"proxy-leader\"\naddress = \"127.0.0.1:7106\"\n\
        [[node]]\nid = 7\nrole = \"replica\"\naddress = \"127.0.0.1:7107\"\n\
        [[node]]\nid = 8\nrole = \"replica\"\naddress = \"127.0.0.1:7108\"\n\
        [[node]]\nid = 9\nrole = \"batcher\"\naddress = \"127.0.0.1:7109\"\n\
        [[node]]\nid = 10\nrole = \"unbatcher\"\naddress = \"127.0.0.1:7110\"\n";

    fn with_file(extra: &str) -> String {
        format!(
            "cluster = \"demo\"\nrole = \"batcher\"\nnodes = [9]\n{extra}cluster_file = '''\n{CLUSTER}'''\n"
        )
    }

    #[test]
    fn user_data_with_a_cluster_file_parses() {
        let ud = UserData::parse(&with_file("batch_size = 40\n"), "t").unwrap();
        assert_eq!(ud.role_kind(), RoleKind::Batcher);
        assert_eq!(ud.nodes, vec![9]);
        assert_eq!(ud.batch_size, Some(40));
        assert_eq!(ud.metrics_addr, default_metrics_addr());
        assert_eq!(ud.discovery, Discovery::File);
    }

    #[test]
    fn user_data_written_by_to_toml_parses_back_to_the_same_values() {
        let mut ud = UserData::by_tags("demo", RoleKind::Acceptor, vec![3, 4], 1, 9);
        ud.region = Some("us-east-1".into());
        ud.batch_size = Some(40);
        ud.discovery_timeout = Some("90s".into());
        let text = ud.to_toml();
        assert!(!text.contains("cluster_file") && !text.contains("advertise"), "None is omitted:\n{text}");
        let back = UserData::parse(&text, "t").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back.to_toml(), text);
        assert_eq!(back.discovery, Discovery::Tags);
        assert_eq!(back.role_kind(), RoleKind::Acceptor);
        assert_eq!((back.f, back.expected_instances), (Some(1), Some(9)));
        assert_eq!(back.discovery_timeout(), Duration::from_secs(90));
    }

    #[test]
    fn joining_user_data_parses_for_every_role_and_starts_one_node() {
        let ud = UserData::parse(&with_file("join = true\nadvertise = \"10.1.2.3:7000\"\n"), "t").unwrap();
        assert!(ud.join);
        assert_eq!(ud.advertise, Some("10.1.2.3:7000".parse().unwrap()));
        let replica = UserData::parse(&with_file("join = true\n").replace("\"batcher\"", "\"replica\""), "t");
        assert_eq!(replica.unwrap().role_kind(), RoleKind::Replica);
        let e = UserData::parse(&with_file("join = true\n").replace("[9]", "[9, 11]"), "t");
        assert!(e.unwrap_err().to_string().contains("`nodes`"));
        let e = UserData::parse(&with_file("advertise = \"10.1.2.3:7000\"\n"), "t");
        assert!(e.unwrap_err().to_string().contains("`advertise`"));
    }

    #[test]
    fn a_gateway_boots_only_to_join() {
        let gateway =
            |extra: &str| with_file(extra).replacen("\"batcher\"", "\"gateway\"", 1).replace("[9]", "[6000]");
        let ud = UserData::parse(&gateway("join = true\nresp_addr = \"0.0.0.0:6379\"\n"), "t").unwrap();
        assert_eq!(
            (ud.role_kind(), ud.resp_addr),
            (RoleKind::Gateway, Some("0.0.0.0:6379".parse().unwrap()))
        );
        let e = UserData::parse(&gateway(""), "t").unwrap_err().to_string();
        assert!(e.contains("join") && e.contains("gateway"), "{e}");
    }

    #[test]
    fn a_joining_node_is_taken_out_of_a_discovered_cluster_file() {
        let ud = UserData::parse(&with_file(""), "t").unwrap();
        let file = ClusterFile::parse(ud.cluster_file.as_deref().unwrap(), "t").unwrap();
        let batcher = file.config.batchers[0];
        let without = crate::runtime::admin::without_node(file.clone(), batcher);
        assert!(!without.config.batchers.contains(&batcher));
        assert!(!without.addresses.contains_key(&batcher));
        assert_eq!(without.addresses.len(), file.addresses.len() - 1);
    }

    #[test]
    fn user_data_errors_name_the_field() {
        let cases: [(String, &str); 8] = [
            (with_file("colour = 1\n"), "colour"),
            ("role = \"batcher\"\nnodes = [1]\n".into(), "cluster"),
            (with_file("").replace("\"batcher\"", "\"chef\""), "`role`"),
            (with_file("").replace("[9]", "[]"), "`nodes`"),
            (with_file("read_budget = 0\n"), "`read_budget`"),
            (with_file("state_machine = \"sql\"\n"), "`state_machine`"),
            ("cluster = \"demo\"\nrole = \"batcher\"\nnodes = [9]\n".into(), "`cluster_file`"),
            (
                "cluster = \"demo\"\nrole = \"batcher\"\nnodes = [9]\ndiscovery = \"tags\"\nf = 1\n".into(),
                "`expected_instances`",
            ),
        ];
        for (text, field) in cases {
            let e = UserData::parse(&text, "ud.toml").unwrap_err().to_string();
            assert!(e.contains(field), "error for {field}: {e}");
            assert!(e.contains("ud.toml"), "{e}");
        }
        let e = UserData::parse(&with_file("").replacen("\"demo\"", "\"other\"", 1), "t").unwrap_err();
        assert!(e.to_string().contains("field `cluster`"), "{e}");
    }

    /// A one-connection-at-a-time HTTP server on loopback that answers like IMDSv2.
    fn fake_imds(user_data: Option<&'static str>) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&b[..n]);
                }
                let req = String::from_utf8(buf).unwrap();
                let reply = if req.starts_with("PUT /latest/api/token ") {
                    assert!(req.contains("X-aws-ec2-metadata-token-ttl-seconds: "), "{req}");
                    "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nTOKEN-123".to_string()
                } else if req.starts_with("GET /latest/user-data ")
                    && req.contains("X-aws-ec2-metadata-token: TOKEN-123")
                {
                    match user_data {
                        Some(u) => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{u}", u.len()),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
                    }
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".into()
                };
                s.write_all(reply.as_bytes()).unwrap();
                seen.push(req.lines().next().unwrap_or_default().to_string());
            }
            seen
        });
        (addr, h)
    }

    #[test]
    fn commands_not_built_say_how_to_get_them() {
        let e = NotBuilt { args: vec!["up".into()] }.refuse("cloud").unwrap_err();
        assert!(e.contains("`autopaxos cloud`") && e.contains("--features cloud"), "{e}");
    }

    #[test]
    fn imds_client_fetches_user_data_with_a_token() {
        let (addr, server) = fake_imds(Some("cluster = \"demo\"\n"));
        let imds = Imds { addr, timeout: Duration::from_secs(2) };
        assert_eq!(imds.user_data().unwrap(), "cluster = \"demo\"\n");
        let seen = server.join().unwrap();
        assert_eq!(seen, vec!["PUT /latest/api/token HTTP/1.1", "GET /latest/user-data HTTP/1.1"]);
    }

    #[test]
    fn imds_client_reports_missing_user_data_and_dead_service() {
        let (addr, server) = fake_imds(None);
        let e = Imds { addr, timeout: Duration::from_secs(2) }.user_data().unwrap_err().to_string();
        assert!(e.contains("no user-data"), "{e}");
        server.join().unwrap();
        // A closed loopback port: refused at once, not a hang.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let t = Instant::now();
        let e =
            Imds { addr: closed, timeout: Duration::from_millis(500) }.user_data().unwrap_err().to_string();
        assert!(e.contains("PUT /latest/api/token"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
