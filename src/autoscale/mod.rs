//! `autopaxos autoscale`: sizes each stateless role (batchers, proxy leaders, unbatchers) from live
//! metrics, and, given the cluster file, the acceptor groups, and replaces dead proposers, acceptors
//! and replicas ([`stateful`]). Every `--interval` it finds the nodes (from `--nodes-from FILE`
//! and/or the [`Fleet`]), scrapes each node's `/metrics` ([`scrape`]), turns counters into a load,
//! asks the [`policy`] what to do, logs every decision with its reason, and acts through the
//! [`Fleet`]: launch, or drain then terminate. `--dry-run` wraps the fleet in [`DryRun`], which records what would happen (so later
//! decisions see the count the earlier ones asked for) without acting.
//!
//! The load of a stateless role is the cluster's command rate: every command goes through exactly one
//! batcher, one proxy leader and one unbatcher, and every replica applies every command, so the rate of
//! `autopaxos_commands_applied_total` at the most advanced replica is what those roles carry in all. (The
//! frames counters do not count commands: clients and unbatchers send many commands per frame.)
//! Gateways carry only what RESP clients send: their load is the sum of their own command counters,
//! and they are sized once the cluster has a gateway and the capacities have `[roles.gateway]`.

pub mod healing;
pub mod policy;
pub mod scrape;
pub mod stateful;

#[cfg(feature = "cloud")]
pub mod ec2_fleet;

use crate::bench::plan::load_capacities;
use crate::duration::parse_nonzero_duration;
use crate::protocol::{NodeId, RoleKind};
use crate::runtime::config::ClusterFile;
use crate::secret::ClusterSecret;
use clap::Args;
use healing::HealConfig;
use policy::{Action, Decision, Observation, Policy, PolicyConfig, SCALED_ROLES};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The counter the load is derived from (see the module documentation).
pub const LOAD_COUNTER: &str = "autopaxos_commands_applied_total";
/// What a gateway counts: the RESP commands it parsed.
pub const GATEWAY_COUNTER: &str = "autopaxos_gateway_commands_total";

/// A fleet operation that failed; the message says what and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

/// One node the fleet knows of (an EC2 instance, or a dry run's imagined one).
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The fleet's id (an EC2 instance id).
    pub id: String,
    /// The role it plays.
    pub role: RoleKind,
    /// Its cluster address (where peers and a drain connect), if known.
    pub address: Option<SocketAddr>,
    /// Where its `/metrics` is served, if known.
    pub metrics_address: Option<SocketAddr>,
    /// Launched by the autoscaler (only those are ever terminated by it).
    pub managed: bool,
    /// Nodes it runs (one per core; an instance of `cloud up` may run several, a launched one runs one).
    pub nodes: u32,
    /// Their ids, where known.
    pub node_ids: Vec<NodeId>,
}

/// What draining a node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drained {
    /// Nothing listens at its cluster address (or it has none): nothing can be in flight there.
    NotServing,
    /// It serves and did not drain, so it must not be terminated.
    Serving,
    /// It was asked to leave, drained (nothing in flight) and reported that it left.
    Left,
    /// A dry run: nothing was contacted.
    DryRun,
}

/// Where the autoscaler acts: launching and terminating nodes of a role.
pub trait Fleet {
    /// The cluster's nodes known to the fleet (every role), running or starting.
    fn instances(&mut self) -> Result<Vec<Instance>, FleetError>;
    /// Starts `count` nodes of `role`, each joining the running cluster; returns them.
    fn launch(&mut self, role: RoleKind, count: u32) -> Result<Vec<Instance>, FleetError>;
    /// Makes sure nothing is in flight at `node` of cluster `cluster_id` before it is terminated
    /// (see [`drain_node`]).
    fn drain(
        &mut self,
        cluster: (&str, Option<&ClusterSecret>),
        node: &Instance,
        timeout: Duration,
    ) -> Result<Drained, FleetError> {
        drain_node(cluster, node.address, timeout)
    }
    /// Stops the nodes `ids`.
    fn terminate(&mut self, ids: &[String]) -> Result<(), FleetError>;
    /// The cluster file its nodes make (EC2: from their tags), for a cluster with no `--config`;
    /// `None` if the fleet cannot tell.
    fn cluster_file(&mut self) -> Option<Result<ClusterFile, FleetError>> {
        None
    }
}

/// The drain step before a node is terminated. It connects to the node's cluster address:
/// "connection refused" means nothing listens there, so the node is not serving and nothing can be in
/// flight at it ([`Drained::NotServing`]); a node with no known address has never been reachable by
/// its peers and counts the same. A node that answers is asked to leave (`Msg::Leave`, as
/// `autopaxos leave` does): it stops taking new work, finishes what it holds and reports `Left`
/// ([`Drained::Left`]). Any failure (it does not drain within `timeout`, an unreachable host) is an
/// error: whether work is in flight is unknown, so the node is kept.
pub fn drain_node(
    (cluster_id, secret): (&str, Option<&ClusterSecret>),
    address: Option<SocketAddr>,
    timeout: Duration,
) -> Result<Drained, FleetError> {
    let Some(addr) = address else {
        tracing::info!("drain: no cluster address known: not serving, nothing in flight");
        return Ok(Drained::NotServing);
    };
    match TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(2))) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(%addr, "drain: connection refused: not serving, nothing in flight");
            Ok(Drained::NotServing)
        }
        Err(e) => Err(FleetError(format!("drain: cannot tell whether {addr} serves: {e}"))),
        Ok(probe) => {
            drop(probe);
            // An id no cluster node uses: the node answers `Left` over this connection.
            let admin_id = 4_100_000_000 + std::process::id() % 100_000_000;
            let secret = secret.ok_or_else(|| {
                FleetError(format!(
                    "drain: {addr} serves, and without the cluster secret (--secret-file) it cannot be asked to leave"
                ))
            })?;
            crate::runtime::admin::request_leave(cluster_id, secret, addr, admin_id, timeout)
                .map_err(|e| FleetError(format!("drain: {e}")))?;
            tracing::info!(%addr, "drain: the node drained and left");
            Ok(Drained::Left)
        }
    }
}

/// A dry run over an optional real fleet: lists the real fleet's nodes (if any) plus the ones it
/// pretended to launch, minus the ones it pretended to terminate; launches, drains and terminations
/// only change that record, so the next decisions see the count the earlier ones asked for.
pub struct DryRun {
    inner: Option<Box<dyn Fleet>>,
    imagined: Vec<Instance>,
    gone: BTreeSet<String>,
    next: u64,
}

impl DryRun {
    /// A dry run over `inner` (or over nothing).
    pub fn new(inner: Option<Box<dyn Fleet>>) -> DryRun {
        DryRun { inner, imagined: Vec::new(), gone: BTreeSet::new(), next: 1 }
    }
}

impl Fleet for DryRun {
    fn instances(&mut self) -> Result<Vec<Instance>, FleetError> {
        let mut all = match &mut self.inner {
            Some(f) => f.instances()?,
            None => Vec::new(),
        };
        all.retain(|i| !self.gone.contains(&i.id));
        all.extend(self.imagined.iter().cloned());
        Ok(all)
    }

    fn launch(&mut self, role: RoleKind, count: u32) -> Result<Vec<Instance>, FleetError> {
        let mut launched = Vec::new();
        for _ in 0..count {
            let id = format!("dry-run-{}-{}", role.name(), self.next);
            self.next += 1;
            launched.push(Instance {
                id,
                role,
                address: None,
                metrics_address: None,
                managed: true,
                nodes: 1,
                node_ids: Vec::new(),
            });
        }
        self.imagined.extend(launched.iter().cloned());
        Ok(launched)
    }

    fn drain(
        &mut self,
        _cluster: (&str, Option<&ClusterSecret>),
        _node: &Instance,
        _timeout: Duration,
    ) -> Result<Drained, FleetError> {
        Ok(Drained::DryRun)
    }

    fn terminate(&mut self, ids: &[String]) -> Result<(), FleetError> {
        self.imagined.retain(|i| !ids.contains(&i.id));
        self.gone.extend(ids.iter().cloned());
        Ok(())
    }

    fn cluster_file(&mut self) -> Option<Result<ClusterFile, FleetError>> {
        self.inner.as_mut()?.cluster_file()
    }
}

/// One node of a `--nodes-from` file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StaticNode {
    /// Its node id.
    pub id: NodeId,
    /// Its role's name.
    pub role: String,
    /// Its cluster address.
    pub address: SocketAddr,
    /// Where its `/metrics` is served; nodes without one are counted but not scraped.
    pub metrics_address: Option<SocketAddr>,
}

#[derive(Deserialize)]
struct NodesFileCluster {
    id: String,
}

#[derive(Deserialize)]
struct NodesFile {
    cluster: Option<NodesFileCluster>,
    #[serde(rename = "node", default)]
    nodes: Vec<StaticNode>,
}

/// Reads a `--nodes-from` file: the cluster file's shape (`[cluster]` and `[[node]]` tables; other
/// fields and tables are ignored) with a `metrics_address` per node. Checks the roles, and the
/// cluster id against `cluster` if the file names one.
pub fn load_nodes(path: &Path, cluster: &str) -> Result<Vec<StaticNode>, String> {
    let file = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read --nodes-from {file}: {e}"))?;
    let parsed: NodesFile = toml::from_str(&text).map_err(|e| format!("--nodes-from {file}: {e}"))?;
    if let Some(c) = parsed.cluster.filter(|c| c.id != cluster) {
        return Err(format!("--nodes-from {file} describes cluster '{}', not --cluster '{cluster}'", c.id));
    }
    for n in &parsed.nodes {
        if RoleKind::from_name(&n.role).is_none_or(|r| r == RoleKind::Client) {
            return Err(format!("--nodes-from {file}: node {}: unknown role '{}'", n.id, n.role));
        }
    }
    if parsed.nodes.is_empty() {
        return Err(format!("--nodes-from {file}: no [[node]] tables"));
    }
    Ok(parsed.nodes)
}

/// `autopaxos autoscale`.
#[derive(Args, Debug, Clone)]
pub struct AutoscaleArgs {
    /// The cluster to size (the `autopaxos:cluster` tag of its instances).
    #[arg(long)]
    pub cluster: String,
    /// Per-role capacities, as written by `autopaxos tune all`.
    #[arg(long, default_value = "tuning/capacities.toml")]
    pub capacities: PathBuf,
    /// How often to scrape and decide.
    #[arg(long, default_value = "5s", value_parser = parse_nonzero_duration)]
    pub interval: Duration,
    /// Log (and with --json print) every decision, but launch, drain and terminate nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a node being removed may take to drain (finish its in-flight work) before the
    /// autoscaler gives up on removing it this time.
    #[arg(long, default_value = "60s", value_parser = parse_nonzero_duration)]
    pub drain_timeout: Duration,
    /// Fraction of each node's measured capacity kept spare, at least 0 and below 1.
    #[arg(long, default_value_t = 0.3)]
    pub headroom: f64,
    /// How far below the scale-out threshold (1 - headroom) the utilisation after a scale in must stay,
    /// as a fraction of that threshold, at least 0 and below 1.
    #[arg(long, default_value_t = 0.2)]
    pub band: f64,
    /// Consecutive intervals a role's target must exceed its node count before it scales out.
    #[arg(long, default_value_t = 2)]
    pub scale_out_after: u32,
    /// Consecutive intervals a role's target must be below its node count before it scales in.
    #[arg(long, default_value_t = 6)]
    pub scale_in_after: u32,
    /// Quiet time per role after any action.
    #[arg(long, default_value = "60s", value_parser = parse_nonzero_duration)]
    pub cooldown: Duration,
    /// Fewest nodes per scaled role.
    #[arg(long, default_value_t = 1)]
    pub min_nodes: u32,
    /// Most nodes per scaled role.
    #[arg(long, default_value_t = 64)]
    pub max_nodes: u32,
    /// Most nodes one scale in removes.
    #[arg(long, default_value_t = 1)]
    pub max_scale_in_step: u32,
    /// The cluster secret (`autopaxos --secret-file`, else the --config file's `secret_file`): needed
    /// to drain nodes and change the configuration, and carried to launched nodes in their
    /// user-data (never in a tag).
    #[arg(skip)]
    pub secret_file: Option<PathBuf>,
    /// Nodes to watch besides the fleet's: a cluster file's `[[node]]` tables, each with a
    /// `metrics_address`. Without --ami this is the only source of nodes (local clusters, tests).
    #[arg(long)]
    pub nodes_from: Option<PathBuf>,
    /// Serve the autoscaler's own Prometheus metrics here.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Stop after this many intervals (default: run until killed).
    #[arg(long)]
    pub max_intervals: Option<u64>,
    /// Print every decision as one JSON object per line on stdout.
    #[arg(long)]
    pub json: bool,
    /// How long one scrape may take (connect, and each read).
    #[arg(long, default_value = "1s", value_parser = parse_nonzero_duration)]
    pub scrape_timeout: Duration,
    /// EC2 API endpoint (default: the AWS environment, e.g. AWS_ENDPOINT_URL).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// AWS region (default: the AWS environment).
    #[arg(long)]
    pub region: Option<String>,
    /// The baked AMI new nodes start from; with it, the autoscaler acts on EC2 (a `cloud` build).
    #[arg(long)]
    pub ami: Option<String>,
    /// Failures the cluster tolerates (written into launched nodes' user-data for tag discovery).
    #[arg(long, default_value_t = 1)]
    pub f: usize,
    /// Instance type of launched nodes.
    #[arg(long, default_value = "c5.large")]
    pub instance_type: String,
    /// Cluster port nodes listen on (a drain connects to private-ip:port when no
    /// `autopaxos:address` tag says otherwise).
    #[arg(long, default_value_t = 7000)]
    pub node_port: u16,
    /// Port nodes serve /metrics on (scraped at private-ip:port when no `autopaxos:metrics-address`
    /// tag says otherwise).
    #[arg(long, default_value_t = 16000)]
    pub node_metrics_port: u16,
    /// Tag every launched instance with this `autopaxos:address` and `autopaxos:metrics-address` instead
    /// of its private IP (for emulators and tests, whose instances have no reachable IP). With port 0,
    /// each launched node gets free ports of its own on that host (all "instances" run on this machine,
    /// as under `autopaxos cloud emulate`).
    #[arg(long)]
    pub advertise_address: Option<SocketAddr>,
    /// The cluster file. With it the autoscaler also manages the stateful roles: it sizes the acceptor
    /// groups and replaces dead proposers, acceptors and replicas, through changes of configuration;
    /// the nodes it launches find their peers in this file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A proposer, acceptor or replica unreachable this long without a break is replaced (keep it well
    /// above a leader election).
    #[arg(long, default_value = "30s", value_parser = parse_nonzero_duration)]
    pub replace_after: Duration,
    /// A replacement (or a new group) not in force this long after it was decided is abandoned: what
    /// was launched for it is terminated, and a replacement is retried after a backoff.
    #[arg(long, default_value = "5m", value_parser = parse_nonzero_duration)]
    pub replacement_timeout: Duration,
    /// Wait before retrying an abandoned replacement; doubles with each failure, up to 10 minutes.
    #[arg(long, default_value = "30s", value_parser = parse_nonzero_duration)]
    pub retry_backoff: Duration,
    /// Fewest acceptor groups.
    #[arg(long, default_value_t = 1)]
    pub min_groups: u32,
    /// Most acceptor groups.
    #[arg(long, default_value_t = 16)]
    pub max_groups: u32,
    /// With --config: do not replace dead stateful nodes.
    #[arg(long)]
    pub no_healing: bool,
    /// With --config: do not size the acceptor groups.
    #[arg(long)]
    pub no_group_sizing: bool,
}

impl AutoscaleArgs {
    /// The healing settings the flags give.
    pub fn heal_config(&self) -> HealConfig {
        HealConfig {
            replace_after: self.replace_after,
            replacement_timeout: self.replacement_timeout,
            retry_backoff: self.retry_backoff,
            retry_backoff_max: Duration::from_secs(600).max(self.retry_backoff),
        }
    }

    /// The policy settings the flags give.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            headroom: self.headroom,
            band: self.band,
            scale_out_after: self.scale_out_after,
            scale_in_after: self.scale_in_after,
            cooldown: self.cooldown,
            min_nodes: self.min_nodes,
            max_nodes: self.max_nodes,
            max_scale_in_step: self.max_scale_in_step,
        }
    }
}

/// One line of `--json` output: a decision and what was done about it.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// The interval (0-based).
    pub interval: u64,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// Ids launched for it.
    pub launched: Vec<String>,
    /// Ids terminated for it.
    pub terminated: Vec<String>,
    /// What went wrong acting on it, if anything.
    pub error: Option<String>,
}

/// One line of `--json` output: a sizing decision, or a step of healing or of a change of groups.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Line {
    /// A sizing decision (one per scaled role per interval).
    Decision(Record),
    /// A step of the stateful side.
    Step(stateful::Step),
}

/// Counter samples from one scrape round: per node id, (when scraped, value).
pub type Counters = BTreeMap<String, (Instant, f64)>;

/// Each node's counter rate between two scrape rounds, for the nodes in both (a node seen once is
/// new; one whose counter went down restarted: skipped this round).
fn rates<'a>(prev: &'a Counters, cur: &'a Counters) -> impl Iterator<Item = f64> + 'a {
    cur.iter().filter_map(|(node, &(t1, v1))| {
        let &(t0, v0) = prev.get(node)?;
        let dt = t1.saturating_duration_since(t0).as_secs_f64();
        (dt > 0.0 && v1 >= v0).then(|| (v1 - v0) / dt)
    })
}

/// The rate of commands through nodes that share the load (gateways): the sum of their rates.
/// `None` if no node was seen twice.
pub fn summed_load(prev: &Counters, cur: &Counters) -> Option<f64> {
    rates(prev, cur).fold(None, |total, r| Some(total.unwrap_or(0.0) + r))
}

/// The command rate from two scrape rounds: the highest per-replica rate among replicas present in both
/// (a replica that restarted, whose counter went down, is skipped). `None` if no replica qualifies.
pub fn load_from(prev: &Counters, cur: &Counters) -> Option<f64> {
    rates(prev, cur).reduce(f64::max)
}

/// What the loop needs besides the fleet.
struct Autoscaler {
    args: AutoscaleArgs,
    policy: Policy,
    fleet: Box<dyn Fleet>,
    statics: Vec<StaticNode>,
    prev: Counters,
    /// The gateways' command counters at the last scrape.
    prev_gateways: Counters,
    /// The acceptor groups and healing, with `--config`.
    stateful: Option<stateful::Stateful>,
    /// The cluster secret (`--secret-file`, or the cluster file's): drains and changes of
    /// configuration prove it to the nodes.
    secret: Option<ClusterSecret>,
}

/// What `autopaxos status --autoscaler` shows of an autoscaler, read from its `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AutoscalerView {
    /// Nodes per scaled role after the last decision (acceptors: groups).
    pub nodes: BTreeMap<String, f64>,
    /// Nodes per scaled role the load asks for.
    pub targets: BTreeMap<String, f64>,
    /// Acceptor groups in force, if it manages them.
    pub acceptor_groups: Option<f64>,
    /// Members that did not answer and are not being replaced yet.
    pub unreachable_members: Option<f64>,
    /// (role, node, try) of each replacement under way.
    pub replacing: Vec<(String, String, f64)>,
    /// Replacements by "role outcome".
    pub replacements: BTreeMap<String, f64>,
    /// Seconds the last replacement of each role took.
    pub last_replacement_seconds: BTreeMap<String, f64>,
    /// Intervals run.
    pub intervals: f64,
    /// Failed scrapes and fleet operations.
    pub errors: f64,
}

impl AutoscalerView {
    /// Reads the autoscaler whose metrics are served at `addr`.
    pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<AutoscalerView, String> {
        let text = scrape::fetch(addr, timeout).map_err(|e| format!("the autoscaler at {addr}: {e}"))?;
        let samples = scrape::parse(&text).map_err(|e| format!("the autoscaler at {addr}: {e}"))?;
        let mut v = AutoscalerView::default();
        for s in &samples {
            let role = s.label("role").unwrap_or("").to_string();
            match s.name.as_str() {
                "autopaxos_autoscaler_nodes" => {
                    v.nodes.insert(role, s.value);
                }
                // NaN: not measured in the last interval.
                "autopaxos_autoscaler_target_nodes" if s.value.is_finite() => {
                    v.targets.insert(role, s.value);
                }
                "autopaxos_autoscaler_acceptor_groups" => v.acceptor_groups = Some(s.value),
                "autopaxos_autoscaler_unreachable_members" => v.unreachable_members = Some(s.value),
                "autopaxos_autoscaler_replacing" if s.value > 0.0 => {
                    v.replacing.push((role, s.label("node").unwrap_or("?").to_string(), s.value))
                }
                "autopaxos_autoscaler_replacements_total" => {
                    let outcome = s.label("outcome").unwrap_or("?");
                    *v.replacements.entry(format!("{role} {outcome}")).or_default() += s.value;
                }
                "autopaxos_autoscaler_last_replacement_seconds" => {
                    v.last_replacement_seconds.insert(role, s.value);
                }
                "autopaxos_autoscaler_intervals_total" => v.intervals = s.value,
                "autopaxos_autoscaler_errors_total" => v.errors += s.value,
                _ => {}
            }
        }
        if v.intervals == 0.0 && v.nodes.is_empty() {
            return Err(format!("{addr} serves no autopaxos_autoscaler_* metrics: is it an autoscaler?"));
        }
        Ok(v)
    }

    /// A few lines for `status`.
    pub fn render(&self) -> String {
        let mut out = format!("autoscaler: {} intervals, {} errors\n", self.intervals, self.errors);
        let sizes: Vec<String> = self
            .nodes
            .iter()
            .map(|(role, n)| {
                let what = if role == "acceptor" { "acceptor groups" } else { role.as_str() };
                match self.targets.get(role) {
                    Some(t) => format!("{what} {n} (target {t})"),
                    None => format!("{what} {n}"),
                }
            })
            .collect();
        out += &format!("  sizes: {}\n", if sizes.is_empty() { "-".into() } else { sizes.join(", ") });
        if let Some(g) = self.acceptor_groups {
            out += &format!("  acceptor groups in force: {g}\n");
        }
        if let Some(u) = self.unreachable_members {
            out += &format!("  members not answering (not yet being replaced): {u}\n");
        }
        for (role, node, attempt) in &self.replacing {
            out += &format!("  replacing {role} {node} (try {attempt})\n");
        }
        if !self.replacements.is_empty() {
            let counts: Vec<String> = self.replacements.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out += &format!("  replacements: {}\n", counts.join(", "));
        }
        for (role, secs) in &self.last_replacement_seconds {
            out += &format!("  last {role} replacement in force {secs:.1}s after it was decided\n");
        }
        out
    }
}

pub(crate) fn error_metric(kind: &'static str) {
    metrics::counter!("autopaxos_autoscaler_errors_total", "kind" => kind).increment(1);
}

impl Autoscaler {
    /// Scrapes every known metrics endpoint once; returns the replicas' load counters, the
    /// acceptors' Phase2a counters and the gateways' command counters.
    fn scrape(&mut self, instances: &[Instance]) -> (Counters, Counters, Counters) {
        let endpoints: BTreeSet<SocketAddr> = self
            .statics
            .iter()
            .filter_map(|n| n.metrics_address)
            .chain(instances.iter().filter_map(|i| i.metrics_address))
            .collect();
        let mut counters = Counters::new();
        let mut accepted = Counters::new();
        let mut gateways = Counters::new();
        for addr in endpoints {
            let text = match scrape::fetch(addr, self.args.scrape_timeout) {
                Ok(t) => t,
                Err(e) if e.is_refused() => {
                    tracing::debug!(%addr, "scrape: refused (not serving yet, or stopped)");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("scrape: {e}");
                    error_metric("scrape");
                    continue;
                }
            };
            let at = Instant::now();
            let samples = match scrape::parse(&text) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%addr, "scrape: not Prometheus text: {e}");
                    error_metric("scrape");
                    continue;
                }
            };
            for s in &samples {
                let into = match (s.name.as_str(), s.label("role")) {
                    (LOAD_COUNTER, Some("replica")) => &mut counters,
                    (stateful::ACCEPTED_COUNTER, Some("acceptor")) => &mut accepted,
                    (GATEWAY_COUNTER, Some("gateway")) => &mut gateways,
                    _ => continue,
                };
                if let Some(node) = s.label("node") {
                    into.insert(node.to_string(), (at, s.value));
                }
            }
        }
        (counters, accepted, gateways)
    }

    /// Carries out one acting decision; returns (launched, terminated, error).
    fn act(&mut self, d: &Decision, instances: &[Instance]) -> (Vec<String>, Vec<String>, Option<String>) {
        let role = RoleKind::from_name(d.role).expect("the policy names scaled roles");
        match d.action {
            Action::Hold => (Vec::new(), Vec::new(), None),
            Action::ScaleOut { add } => match self.fleet.launch(role, add) {
                Ok(launched) => {
                    let ids: Vec<String> = launched.into_iter().map(|i| i.id).collect();
                    tracing::info!(role = d.role, ?ids, "launched {add}");
                    (ids, Vec::new(), None)
                }
                Err(e) => {
                    error_metric("launch");
                    tracing::error!(role = d.role, "launch failed: {e}");
                    (Vec::new(), Vec::new(), Some(e.0))
                }
            },
            Action::ScaleIn { remove } => {
                // The newest managed nodes of the role go first; nodes the autoscaler did not launch
                // (the initial cluster, --nodes-from) never do.
                let candidates: Vec<&Instance> = instances
                    .iter()
                    .filter(|i| i.role == role && i.managed)
                    .rev()
                    .take(remove as usize)
                    .collect();
                let mut errors = Vec::new();
                if candidates.len() < remove as usize {
                    errors.push(format!(
                        "only {} autoscaler-launched {} node(s) to remove of {remove}",
                        candidates.len(),
                        d.role
                    ));
                }
                let mut ready = Vec::new();
                for node in candidates {
                    let cluster = (self.args.cluster.as_str(), self.secret.as_ref());
                    match self.fleet.drain(cluster, node, self.args.drain_timeout) {
                        Ok(Drained::Serving) => {
                            errors.push(format!("{} serves and did not drain: kept", node.id))
                        }
                        Ok(_) => ready.push(node.id.clone()),
                        Err(e) => errors.push(format!("{}: {e}", node.id)),
                    }
                }
                if !ready.is_empty() {
                    match self.fleet.terminate(&ready) {
                        Ok(()) => tracing::info!(role = d.role, ids = ?ready, "terminated"),
                        Err(e) => {
                            errors.push(format!("terminate: {e}"));
                            ready.clear();
                        }
                    }
                }
                if !errors.is_empty() {
                    error_metric("scale-in");
                    tracing::warn!(role = d.role, "scale in: {}", errors.join("; "));
                }
                (Vec::new(), ready, (!errors.is_empty()).then(|| errors.join("; ")))
            }
        }
    }

    /// One interval: discover, scrape, decide, act, report.
    fn step(&mut self, interval: u64, now: Duration) -> Vec<Line> {
        metrics::counter!("autopaxos_autoscaler_intervals_total").increment(1);
        let instances = match self.fleet.instances() {
            Ok(i) => i,
            Err(e) => {
                error_metric("instances");
                tracing::error!("listing the fleet failed: {e}; skipping this interval");
                return Vec::new();
            }
        };
        let (cur, accepted, gateways) = self.scrape(&instances);
        let load = load_from(&self.prev, &cur);
        let gateway_load = summed_load(&self.prev_gateways, &gateways);
        self.prev = cur;
        self.prev_gateways = gateways;
        let mut lines: Vec<Line> = self
            .decide_and_act(interval, now, &instances, load, gateway_load)
            .into_iter()
            .map(Line::Decision)
            .collect();
        if let Some(stateful) = &mut self.stateful {
            let sizing = (!self.args.no_group_sizing).then_some(&mut self.policy);
            let tick = stateful::Tick {
                interval,
                now,
                dry_run: self.args.dry_run,
                instances: &instances,
                accepted,
                fleet: self.fleet.as_mut(),
                policy: sizing,
            };
            let (steps, sizing) = stateful.step(tick);
            if let Some(record) = sizing {
                report_decision(&record.decision, self.args.max_groups, self.args.dry_run);
                lines.push(Line::Decision(record));
            }
            lines.extend(steps.into_iter().map(Line::Step));
        }
        lines
    }

    /// Decides on `load` with the node counts of `instances` and the static nodes, and acts.
    fn decide_and_act(
        &mut self,
        interval: u64,
        now: Duration,
        instances: &[Instance],
        load: Option<f64>,
        gateway_load: Option<f64>,
    ) -> Vec<Record> {
        let count = |role: RoleKind| {
            let fixed = self.statics.iter().filter(|n| n.role == role.name()).count();
            let fleet: u32 = instances.iter().filter(|i| i.role == role).map(|i| i.nodes).sum();
            fixed as u32 + fleet
        };
        let mut observations: Vec<Observation> =
            SCALED_ROLES.iter().map(|&role| Observation { role, load, nodes: count(role) }).collect();
        // Gateways, once the cluster has one (a cluster whose clients all speak the native protocol
        // needs none) and their capacity is known: their load is the RESP commands they parse.
        let gateways = count(RoleKind::Gateway);
        if gateways > 0 && self.policy.capacity(RoleKind::Gateway).is_some() {
            observations.push(Observation { role: RoleKind::Gateway, load: gateway_load, nodes: gateways });
        }
        let decisions = self.policy.decide(now, &observations);
        let mut records = Vec::new();
        for d in decisions {
            let (launched, terminated, error) = self.act(&d, instances);
            report_decision(&d, self.args.max_nodes, self.args.dry_run);
            records.push(Record {
                interval,
                dry_run: self.args.dry_run,
                decision: d,
                launched,
                terminated,
                error,
            });
        }
        records
    }
}

/// Counts, exports and logs a sizing decision; `max` is the most nodes (groups) the role may have.
fn report_decision(d: &Decision, max: u32, dry_run: bool) {
    let action = match d.action {
        Action::Hold => "hold",
        Action::ScaleOut { .. } => "scale-out",
        Action::ScaleIn { .. } => "scale-in",
    };
    metrics::counter!("autopaxos_autoscaler_decisions_total", "role" => d.role, "action" => action)
        .increment(1);
    metrics::gauge!("autopaxos_autoscaler_nodes", "role" => d.role).set(f64::from(d.to));
    metrics::gauge!("autopaxos_autoscaler_max_nodes", "role" => d.role).set(f64::from(max));
    // Unmeasured this interval: NaN, not the last figure (an alert on it must not fire on old news).
    let target = d.target.map_or(f64::NAN, f64::from);
    metrics::gauge!("autopaxos_autoscaler_target_nodes", "role" => d.role).set(target);
    if let Some(l) = d.load {
        metrics::gauge!("autopaxos_autoscaler_load_cmds_per_second", "role" => d.role).set(l);
    }
    if let Some(u) = d.utilisation {
        metrics::gauge!("autopaxos_autoscaler_utilisation_ratio", "role" => d.role).set(u);
    }
    let dry = if dry_run { " (dry run)" } else { "" };
    if d.acts() {
        tracing::info!(role = d.role, action, from = d.nodes, to = d.to, "{}{dry}", d.reason);
    } else {
        tracing::debug!(role = d.role, "{}", d.reason);
    }
}

/// The fleet the flags ask for, or why there is none.
fn make_fleet(
    args: &AutoscaleArgs,
    statics: &[StaticNode],
    cluster_file: Option<&str>,
) -> Result<Box<dyn Fleet>, String> {
    let real: Option<Box<dyn Fleet>> = match &args.ami {
        None if args.nodes_from.is_some() || args.config.is_some() => None,
        None => {
            return Err("--ami is required to act on EC2 (or give --nodes-from FILE or --config FILE with \
                        --dry-run to watch a local cluster)"
                .into())
        }
        Some(_ami) => {
            #[cfg(feature = "cloud")]
            {
                let ids: Vec<NodeId> = statics.iter().map(|n| n.id).collect();
                Some(Box::new(ec2_fleet::Ec2Fleet::connect(args, &ids, cluster_file)?))
            }
            #[cfg(not(feature = "cloud"))]
            {
                let _ = (statics, cluster_file);
                return Err("acting on EC2 (--ami) needs a build with the cloud feature: rebuild with \
                            `cargo build --release --features cloud`, or watch a local cluster with \
                            --nodes-from FILE --dry-run"
                    .into());
            }
        }
    };
    match (real, args.dry_run) {
        (real, true) => Ok(Box::new(DryRun::new(real))),
        (Some(real), false) => Ok(real),
        (None, false) => {
            Err("--nodes-from or --config without --ami has no fleet to act on: add --dry-run to log \
                 decisions only, or --ami (in a build with --features cloud) to launch EC2 instances"
                .into())
        }
    }
}

/// Runs the autoscaler until killed, or for `--max-intervals`.
pub fn run(mut args: AutoscaleArgs) -> Result<(), String> {
    let caps = load_capacities(&args.capacities).map_err(|e| e.to_string())?;
    let mut policy = Policy::new(args.policy_config(), &caps, &args.capacities.display().to_string())
        .map_err(|e| e.to_string())?;
    let statics = match &args.nodes_from {
        Some(p) => load_nodes(p, &args.cluster)?,
        None => Vec::new(),
    };
    let file = match &args.config {
        Some(path) => {
            let mut file = ClusterFile::load(path).map_err(|e| e.to_string())?;
            if let Some(secret) = &args.secret_file {
                file = file.with_secret_file(secret).map_err(|e| e.to_string())?;
            }
            if file.cluster_id != args.cluster {
                return Err(format!(
                    "--config {} describes cluster '{}', not --cluster '{}'",
                    path.display(),
                    file.cluster_id,
                    args.cluster
                ));
            }
            Some(file)
        }
        None => None,
    };
    let file_text = match &args.config {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?),
        None => None,
    };
    if args.secret_file.is_none() {
        args.secret_file = file.as_ref().and_then(|f| f.secret_file.clone());
    }
    let secret = match (&args.secret_file, &file) {
        (Some(path), _) => Some(ClusterSecret::load(path).map_err(|e| e.to_string())?),
        (None, Some(file)) => file.secret.clone(),
        (None, None) => None,
    };
    if secret.is_none() {
        tracing::warn!("no cluster secret (--secret-file): nodes that serve cannot be drained, nor the configuration changed");
    }
    let mut fleet = make_fleet(&args, &statics, file_text.as_deref())?;
    let stateful = if args.no_healing && args.no_group_sizing {
        None
    } else {
        let file = match file {
            Some(file) => Some(file),
            None => match fleet.cluster_file() {
                Some(Ok(file)) => Some(ClusterFile { secret: secret.clone(), ..file }),
                Some(Err(e)) => {
                    tracing::warn!(
                        "no cluster file can be made from the fleet's instances ({e}): the stateful roles are \
                         not managed (give --config)"
                    );
                    None
                }
                None => None,
            },
        };
        match file {
            Some(file) => {
                policy = policy
                    .with_acceptor_groups(
                        &caps,
                        &args.capacities.display().to_string(),
                        args.min_groups,
                        args.max_groups,
                    )
                    .map_err(|e| e.to_string())?;
                let heal = (!args.no_healing).then(|| args.heal_config());
                tracing::info!(
                    "stateful roles: acceptor groups {}..={}{}; healing {}",
                    args.min_groups,
                    args.max_groups,
                    if args.no_group_sizing { " (not sized: --no-group-sizing)" } else { "" },
                    match &heal {
                        Some(h) => format!(
                            "after {} unreachable, replacements abandoned after {}",
                            humantime::format_duration(h.replace_after),
                            humantime::format_duration(h.replacement_timeout)
                        ),
                        None => "off (--no-healing)".into(),
                    }
                );
                Some(stateful::Stateful::new(file, heal))
            }
            None => {
                tracing::info!("no --config: sizing the stateless roles only (acceptor groups and healing need the cluster file)");
                None
            }
        }
    };
    if let Some(addr) = args.metrics_addr {
        crate::runtime::metrics::install_exporter(addr)?;
    }
    tracing::info!(
        cluster = %args.cluster,
        interval = ?args.interval,
        dry_run = args.dry_run,
        static_nodes = statics.len(),
        "autoscaler: headroom {}, scale out after {} intervals, scale in after {}, cooldown {:?}, nodes {}..={}",
        args.headroom,
        args.scale_out_after,
        args.scale_in_after,
        args.cooldown,
        args.min_nodes,
        args.max_nodes,
    );
    let mut scaler = Autoscaler {
        args: args.clone(),
        policy,
        fleet,
        statics,
        prev: Counters::new(),
        prev_gateways: Counters::new(),
        stateful,
        secret,
    };
    let t0 = Instant::now();
    let mut next = t0;
    let mut interval = 0u64;
    loop {
        if args.max_intervals.is_some_and(|n| interval >= n) {
            return Ok(());
        }
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for record in scaler.step(interval, t0.elapsed()) {
            if args.json {
                println!("{}", serde_json::to_string(&record).expect("serializable"));
            }
        }
        interval += 1;
        next += args.interval;
        // A step that overran (slow scrapes or EC2 calls) skips the ticks it missed rather than running
        // them back to back, which would measure rates over a few milliseconds.
        let now = Instant::now();
        if next < now {
            tracing::warn!(
                "interval {} took {:.1?}, longer than --interval {:?}; skipping the missed ticks",
                interval - 1,
                now.duration_since(next - args.interval),
                args.interval
            );
            next = now + args.interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// A fleet in memory that records what was asked of it; `serving` ids answer a drain as serving.
    #[derive(Default)]
    struct FakeFleet {
        nodes: Vec<Instance>,
        serving: Vec<String>,
        terminated: Vec<String>,
        next: u32,
    }

    impl Fleet for FakeFleet {
        fn instances(&mut self) -> Result<Vec<Instance>, FleetError> {
            Ok(self.nodes.clone())
        }
        fn launch(&mut self, role: RoleKind, count: u32) -> Result<Vec<Instance>, FleetError> {
            let ids: Vec<String> = (0..count).map(|k| format!("i-{}", self.next + k)).collect();
            self.next += count;
            let launched: Vec<Instance> = ids.iter().map(|id| node(id, role, true)).collect();
            self.nodes.extend(launched.iter().cloned());
            Ok(launched)
        }
        fn drain(
            &mut self,
            _cluster: (&str, Option<&ClusterSecret>),
            n: &Instance,
            _timeout: Duration,
        ) -> Result<Drained, FleetError> {
            Ok(if self.serving.contains(&n.id) { Drained::Serving } else { Drained::NotServing })
        }
        fn terminate(&mut self, ids: &[String]) -> Result<(), FleetError> {
            self.nodes.retain(|n| !ids.contains(&n.id));
            self.terminated.extend(ids.iter().cloned());
            Ok(())
        }
    }

    fn node(id: &str, role: RoleKind, managed: bool) -> Instance {
        Instance {
            id: id.into(),
            role,
            address: None,
            metrics_address: None,
            managed,
            nodes: 1,
            node_ids: Vec::new(),
        }
    }

    fn scaler(fleet: FakeFleet) -> Autoscaler {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: AutoscaleArgs,
        }
        let args = Cli::parse_from([
            "autoscale",
            "--cluster",
            "c",
            "--scale-in-after",
            "2",
            "--cooldown",
            "1s",
            "--max-scale-in-step",
            "5",
        ])
        .args;
        let caps: crate::bench::capacities::Capacities = toml::from_str(
            "[machine]\ncores = 1\ncpu = \"t\"\nkernel = \"t\"\nmeasured = \"t\"\n\
             [roles.batcher]\ncmds_per_sec_per_core = 10000.0\nmsgs_per_sec_per_core = 1.0\nbatch_size = 1\nread_budget = 1\n\
             [roles.proxy-leader]\ncmds_per_sec_per_core = 10000.0\nmsgs_per_sec_per_core = 1.0\nbatch_size = 1\nread_budget = 1\n\
             [roles.unbatcher]\ncmds_per_sec_per_core = 10000.0\nmsgs_per_sec_per_core = 1.0\nbatch_size = 1\nread_budget = 1\n",
        )
        .unwrap();
        let policy = Policy::new(args.policy_config(), &caps, "test").unwrap();
        Autoscaler {
            args,
            policy,
            fleet: Box::new(fleet),
            statics: Vec::new(),
            prev: Counters::new(),
            prev_gateways: Counters::new(),
            stateful: None,
            secret: None,
        }
    }

    /// Runs `load` for `intervals` intervals of 1 s from `start`; returns the acting records.
    fn run_for(s: &mut Autoscaler, start: u64, intervals: u64, load: f64) -> Vec<Record> {
        let mut acted = Vec::new();
        for i in start..start + intervals {
            let instances = s.fleet.instances().unwrap();
            let recs = s.decide_and_act(i, Duration::from_secs(i), &instances, Some(load), None);
            acted.extend(recs.into_iter().filter(|r| r.decision.acts()));
        }
        acted
    }

    #[test]
    fn scale_in_takes_only_launched_nodes_newest_first_and_keeps_serving_ones() {
        // Two batchers the autoscaler did not launch, two it did (i-1 newer than i-0), one still serving.
        let mut fleet = FakeFleet { next: 2, serving: vec!["i-1".into()], ..FakeFleet::default() };
        fleet.nodes = vec![
            node("initial-a", RoleKind::Batcher, false),
            node("i-0", RoleKind::Batcher, true),
            node("initial-b", RoleKind::Batcher, false),
            node("i-1", RoleKind::Batcher, true),
            node("p", RoleKind::ProxyLeader, false),
            node("u", RoleKind::Unbatcher, false),
        ];
        let mut s = scaler(fleet);
        // 100 cmds/s: the batchers' target is 1 of 4; scale in by up to 5 (the step) but only i-0 and
        // i-1 may go, and i-1 serves: it is kept, i-0 is drained and terminated.
        let acted = run_for(&mut s, 0, 2, 100.0);
        assert_eq!(acted.len(), 1, "{acted:?}");
        let r = &acted[0];
        assert_eq!(r.decision.role, "batcher");
        assert_eq!(r.decision.action, Action::ScaleIn { remove: 3 });
        assert_eq!(r.terminated, vec!["i-0".to_string()]);
        let error = r.error.as_deref().unwrap_or("");
        assert!(error.contains("only 2 autoscaler-launched") && error.contains("i-1 serves"), "{error}");
        let left: Vec<String> = s.fleet.instances().unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(left, vec!["initial-a", "initial-b", "i-1", "p", "u"]);
    }

    #[test]
    fn scale_out_launches_through_the_fleet_and_the_count_follows() {
        let mut fleet = FakeFleet::default();
        for (id, role) in [("b", RoleKind::Batcher), ("p", RoleKind::ProxyLeader), ("u", RoleKind::Unbatcher)]
        {
            fleet.nodes.push(node(id, role, false));
        }
        let mut s = scaler(fleet);
        // 20,000 cmds/s over usable 7,000: 3 nodes of each role, after 2 intervals.
        let acted = run_for(&mut s, 0, 4, 20_000.0);
        assert_eq!(acted.len(), 3, "{acted:?}");
        assert!(acted.iter().all(|r| r.launched.len() == 2 && r.decision.to == 3 && r.error.is_none()));
        assert_eq!(s.fleet.instances().unwrap().len(), 9);
    }

    #[test]
    fn gateways_are_sized_on_their_own_load_once_there_is_one() {
        let mut fleet = FakeFleet::default();
        for (id, role) in [("b", RoleKind::Batcher), ("p", RoleKind::ProxyLeader), ("u", RoleKind::Unbatcher)]
        {
            fleet.nodes.push(node(id, role, false));
        }
        let mut s = scaler(fleet);
        let gateway = crate::bench::capacities::RoleCapacity {
            cmds_per_sec_per_core: 10_000.0,
            msgs_per_sec_per_core: 10_000.0,
            batch_size: 1,
            read_budget: 1,
        };
        let mut caps = crate::bench::capacities::Capacities {
            machine: crate::bench::capacities::Machine {
                cores: 1,
                cpu: "t".into(),
                kernel: "t".into(),
                measured: "t".into(),
            },
            roles: Default::default(),
        };
        for role in [RoleKind::Batcher, RoleKind::ProxyLeader, RoleKind::Unbatcher, RoleKind::Gateway] {
            caps.roles.insert(role.name().into(), gateway.clone());
        }
        s.policy = Policy::new(s.args.policy_config(), &caps, "test").unwrap();
        let decide = |s: &mut Autoscaler, i: u64| {
            let instances = s.fleet.instances().unwrap();
            s.decide_and_act(i, Duration::from_secs(i), &instances, Some(1_000.0), Some(20_000.0))
        };
        // No gateway yet: none is launched, whatever the gateway load says.
        assert!(decide(&mut s, 0).iter().all(|r| r.decision.role != "gateway"));
        s.fleet.launch(RoleKind::Gateway, 1).unwrap();
        let mut launched = Vec::new();
        for i in 1..5 {
            launched.extend(decide(&mut s, i).into_iter().filter(|r| r.decision.role == "gateway"));
        }
        // 20,000 cmds/s over usable 7,000 a gateway: 3 gateways; the other roles hold at 1,000.
        let out: Vec<_> = launched.iter().filter(|r| !r.launched.is_empty()).collect();
        assert_eq!(out.len(), 1, "{launched:?}");
        assert_eq!((out[0].launched.len(), out[0].decision.to), (2, 3));
        let gateways = s.fleet.instances().unwrap().iter().filter(|i| i.role == RoleKind::Gateway).count();
        assert_eq!(gateways, 3);
    }

    #[test]
    fn gateway_load_is_the_sum_over_gateways_seen_twice() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let prev: Counters = [("21".into(), (t0, 1000.0)), ("22".into(), (t0, 500.0))].into();
        let cur: Counters =
            [("21".into(), (t1, 2000.0)), ("22".into(), (t1, 700.0)), ("23".into(), (t1, 9.0))].into();
        assert_eq!(summed_load(&prev, &cur), Some(1200.0));
        let restarted: Counters = [("21".into(), (t1, 10.0))].into();
        assert_eq!(summed_load(&prev, &restarted), None);
    }

    #[test]
    fn an_instance_running_several_nodes_counts_them_all() {
        let mut fleet = FakeFleet::default();
        fleet.nodes.push(Instance { nodes: 4, ..node("b", RoleKind::Batcher, false) });
        let mut s = scaler(fleet);
        // 20,000 cmds/s needs 3 nodes; the one instance runs 4: no scale out (and nothing to scale in).
        let instances = s.fleet.instances().unwrap();
        s.decide_and_act(0, Duration::ZERO, &instances, Some(20_000.0), None);
        let recs = s.decide_and_act(1, Duration::from_secs(1), &instances, Some(20_000.0), None);
        let batcher = recs.iter().find(|r| r.decision.role == "batcher").unwrap();
        assert_eq!(batcher.decision.nodes, 4);
        assert!(!batcher.decision.acts(), "{:?}", batcher.decision);
    }

    #[test]
    fn load_is_the_fastest_replica_and_skips_resets_and_newcomers() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let prev: Counters = [("7".into(), (t0, 1000.0)), ("8".into(), (t0, 900.0))].into();
        let cur: Counters =
            [("7".into(), (t1, 3000.0)), ("8".into(), (t1, 3100.0)), ("9".into(), (t1, 1e9))].into();
        assert_eq!(load_from(&prev, &cur), Some(1100.0));
        let reset: Counters = [("7".into(), (t1, 5.0))].into();
        assert_eq!(load_from(&prev, &reset), None);
        assert_eq!(load_from(&Counters::new(), &cur), None);
    }

    #[test]
    fn a_dry_run_remembers_what_it_launched_and_terminated() {
        let mut f = DryRun::new(None);
        let ids: Vec<String> = f.launch(RoleKind::Batcher, 2).unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, vec!["dry-run-batcher-1", "dry-run-batcher-2"]);
        assert_eq!(f.instances().unwrap().len(), 2);
        let first = f.instances().unwrap().remove(0);
        assert_eq!(f.drain(("c", None), &first, Duration::from_secs(1)).unwrap(), Drained::DryRun);
        f.terminate(&ids[..1]).unwrap();
        let left = f.instances().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, "dry-run-batcher-2");
    }

    #[test]
    fn drain_treats_refused_as_not_serving_and_keeps_a_listener_that_does_not_drain() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        // Something listens but never reports leaving: an error, so the node is kept.
        assert!(drain_node(("c", Some(&ClusterSecret::random())), Some(open), Duration::from_millis(300))
            .is_err());
        drop(listener);
        assert_eq!(
            drain_node(("c", Some(&ClusterSecret::random())), Some(open), Duration::from_secs(1)).unwrap(),
            Drained::NotServing
        );
        assert_eq!(
            drain_node(("c", Some(&ClusterSecret::random())), None, Duration::from_secs(1)).unwrap(),
            Drained::NotServing
        );
    }

    #[test]
    fn nodes_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("autoscale-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes.toml");
        std::fs::write(
            &path,
            "[cluster]\nid = \"c1\"\nf = 1\n[[node]]\nid = 9\nrole = \"batcher\"\naddress = \"127.0.0.1:1\"\n\
             metrics_address = \"127.0.0.1:2\"\n[[node]]\nid = 3\nrole = \"acceptor\"\ngroup = 0\n\
             address = \"127.0.0.1:3\"\n",
        )
        .unwrap();
        let nodes = load_nodes(&path, "c1").unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].metrics_address, Some("127.0.0.1:2".parse().unwrap()));
        assert!(nodes[1].metrics_address.is_none());
        let e = load_nodes(&path, "other").unwrap_err();
        assert!(e.contains("'c1'") && e.contains("'other'"), "{e}");
        std::fs::write(&path, "[[node]]\nid = 9\nrole = \"chef\"\naddress = \"127.0.0.1:1\"\n").unwrap();
        assert!(load_nodes(&path, "c1").unwrap_err().contains("unknown role 'chef'"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
