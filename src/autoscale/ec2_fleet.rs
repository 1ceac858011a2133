//! [`Fleet`] over EC2 (feature `cloud`), through the blocking [`Ec2`] handle of `crate::cloud::ec2`.
//!
//! - Nodes: the cluster's instances (tag `autopaxos:cluster`), pending or running and not failing
//!   their status checks (an impaired machine counts as gone), each with its role
//!   (`autopaxos:role`). An instance's cluster address is its `autopaxos:address` tag, else
//!   `<private ip>:--node-port`; its metrics address is its `autopaxos:metrics-address` tag, else
//!   `<private ip>:--node-metrics-port`. Only instances tagged `autopaxos:managed-by = autoscaler` are
//!   ever terminated.
//! - Launch: RunInstances from `--ami`, one node per instance with a fresh node id (above every id
//!   the cluster's `autopaxos:nodes` tags use), tagged with the cluster, role, node id and
//!   `autopaxos:managed-by = autoscaler` (plus the address tags with `--advertise-address`), and
//!   user-data in `autopaxos boot`'s format (`crate::boot::UserData`, peers found by tags).
//! - Terminate: TerminateInstances.

use super::{Fleet, FleetError, Instance};
use crate::autoscale::AutoscaleArgs;
use crate::boot::UserData;
use crate::cloud::cluster::cluster_file_text;
use crate::cloud::ec2::{self, Ec2, Ec2Options, LaunchSpec, OnShutdown, TAG_CLUSTER, TAG_NODES, TAG_ROLE};
use crate::protocol::{NodeId, RoleKind};
use crate::runtime::config::ClusterFile;
use std::net::SocketAddr;
use std::time::Duration;

/// Tag marking instances the autoscaler launched (value [`MANAGED_BY_VALUE`]).
pub const TAG_MANAGED_BY: &str = "autopaxos:managed-by";
/// The value of [`TAG_MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "autoscaler";
/// Tag holding a node's cluster address when it is not `<private ip>:<node port>`.
pub const TAG_ADDRESS: &str = "autopaxos:address";
/// Tag holding a node's metrics address when it is not `<private ip>:<metrics port>`.
pub const TAG_METRICS_ADDRESS: &str = "autopaxos:metrics-address";

/// The settings of launched nodes.
#[derive(Debug, Clone)]
pub struct LaunchSettings {
    /// The cluster id.
    pub cluster: String,
    /// The baked image.
    pub ami: String,
    /// Instance type.
    pub instance_type: String,
    /// Failures tolerated (for tag discovery at boot).
    pub f: usize,
    /// Cluster port of a node.
    pub node_port: u16,
    /// Metrics port of a node.
    pub metrics_port: u16,
    /// Address tags put on launched instances instead of their private IP (emulators, tests); with
    /// port 0, each launched node gets its own free ports on that host for its cluster and metrics
    /// addresses (an emulator's instances all run on this machine).
    pub advertise: Option<SocketAddr>,
    /// The cluster file's text, for a cluster that was not started by `cloud up` (its nodes have no
    /// tags to be discovered by): launched nodes find their peers in it.
    pub cluster_file: Option<String>,
    /// Region, passed on in the user-data.
    pub region: Option<String>,
    /// Endpoint, passed on in the user-data.
    pub endpoint_url: Option<String>,
    /// The cluster secret, given to launched nodes in their user-data (never in a tag).
    pub secret: Option<crate::boot::SecretText>,
}

/// Where a launched node is reached, when that is not its private IP: its cluster and metrics
/// addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised {
    /// Its cluster address.
    pub address: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
}

impl LaunchSettings {
    /// The addresses of the next launched node, if `advertise` says (see there).
    pub fn advertised(&self) -> Result<Option<Advertised>, FleetError> {
        let Some(a) = self.advertise else { return Ok(None) };
        if a.port() != 0 {
            return Ok(Some(Advertised { address: a, metrics: a }));
        }
        let free = || {
            std::net::TcpListener::bind(SocketAddr::new(a.ip(), 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| FleetError(format!("no free port on {} for a launched node: {e}", a.ip())))
        };
        Ok(Some(Advertised { address: free()?, metrics: free()? }))
    }
}

/// The user-data of a launched node: role, its node id, and its peers from the cluster file if the
/// settings carry one, else by tags once `expected_instances` of the cluster's instances are up.
pub fn user_data(
    s: &LaunchSettings,
    role: RoleKind,
    node: NodeId,
    expected_instances: usize,
    advertised: Option<Advertised>,
) -> String {
    let mut ud = UserData::by_tags(&s.cluster, role, vec![node], s.f, expected_instances);
    if let Some(text) = &s.cluster_file {
        ud.discovery = crate::boot::Discovery::File;
        ud.cluster_file = Some(text.clone());
        (ud.f, ud.expected_instances) = (None, None);
    }
    ud.metrics_addr = match advertised {
        Some(a) if a.metrics != a.address => a.metrics,
        _ => SocketAddr::from(([0, 0, 0, 0], s.metrics_port)),
    };
    ud.region = s.region.clone();
    ud.endpoint_url = s.endpoint_url.clone();
    ud.secret = s.secret.clone();
    ud.base_port = s.node_port;
    // A launched node is never one of the configured nodes: it joins the running cluster.
    ud.join = true;
    ud.advertise = advertised.map(|a| a.address);
    ud.to_toml()
}

/// The tags of a launched node.
pub fn tags(
    s: &LaunchSettings,
    role: RoleKind,
    node: NodeId,
    advertised: Option<Advertised>,
) -> Vec<(String, String)> {
    let mut t = vec![
        (TAG_CLUSTER.to_string(), s.cluster.clone()),
        (TAG_ROLE.to_string(), role.name().to_string()),
        (TAG_NODES.to_string(), node.to_string()),
        (TAG_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
    ];
    if let Some(a) = advertised {
        t.push((TAG_ADDRESS.to_string(), a.address.to_string()));
        t.push((TAG_METRICS_ADDRESS.to_string(), a.metrics.to_string()));
    }
    t
}

/// The node ids an instance's `autopaxos:nodes` tag names (`7` or `3/0,4/0`).
fn node_ids(i: &ec2::Instance) -> Vec<NodeId> {
    let tag = i.tags.get(TAG_NODES).map_or("", String::as_str);
    tag.split(',').filter_map(|e| e.split('/').next()?.trim().parse().ok()).collect()
}

/// The highest node id an instance's `autopaxos:nodes` tag names.
fn max_node_id(i: &ec2::Instance) -> Option<NodeId> {
    node_ids(i).into_iter().max()
}

/// How many nodes an instance runs: the entries of its `autopaxos:nodes` tag, at least 1.
fn node_count(i: &ec2::Instance) -> u32 {
    let n = i.tags.get(TAG_NODES).map_or(0, |t| t.split(',').filter(|e| !e.trim().is_empty()).count());
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

/// A fleet of EC2 instances.
pub struct Ec2Fleet {
    ec2: Ec2,
    settings: LaunchSettings,
    /// Node ids at or below this are taken (by the cluster's instances or `--nodes-from`).
    highest_id: NodeId,
}

impl Ec2Fleet {
    /// Connects to EC2 as the flags say (region, endpoint, the AWS environment).
    /// `cluster_file` is the text of `--config`, if given.
    pub fn connect(
        args: &AutoscaleArgs,
        static_ids: &[NodeId],
        cluster_file: Option<&str>,
    ) -> Result<Ec2Fleet, String> {
        let opts = Ec2Options {
            region: args.region.clone(),
            endpoint_url: args.endpoint_url.clone(),
            call_timeout: Duration::from_secs(20),
        };
        let ec2 = Ec2::connect(&opts).map_err(|e| format!("autoscale: {e}"))?;
        let settings = LaunchSettings {
            cluster: args.cluster.clone(),
            ami: args.ami.clone().ok_or("--ami is required to launch instances")?,
            instance_type: args.instance_type.clone(),
            f: args.f,
            node_port: args.node_port,
            metrics_port: args.node_metrics_port,
            advertise: args.advertise_address,
            region: args.region.clone().or_else(|| Some(ec2.region().to_string())),
            endpoint_url: args.endpoint_url.clone(),
            cluster_file: cluster_file.map(str::to_string),
            secret: match &args.secret_file {
                Some(path) => Some(crate::boot::SecretText(
                    String::from_utf8(crate::secret::read_secret(path).map_err(|e| e.to_string())?)
                        .map_err(|_| format!("the cluster secret {} is not text", path.display()))?,
                )),
                None => None,
            },
        };
        let highest_id = static_ids.iter().copied().max().unwrap_or(0);
        Ok(Ec2Fleet { ec2, settings, highest_id })
    }

    fn describe(&self) -> Result<Vec<ec2::Instance>, FleetError> {
        let all =
            self.ec2.cluster_instances(&self.settings.cluster).map_err(|e| FleetError(e.to_string()))?;
        Ok(all.into_iter().filter(|i| i.state == "pending" || i.state == "running").collect())
    }

    /// The instances of the cluster that serve or start: pending or running, and not failing their
    /// status checks (an impaired machine counts as gone: its nodes are replaced).
    fn serving(&self) -> Result<Vec<ec2::Instance>, FleetError> {
        let live = self.describe()?;
        let running: Vec<String> =
            live.iter().filter(|i| i.state == "running").map(|i| i.id.clone()).collect();
        let impaired = match self.ec2.impaired(&running) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("status checks of the cluster's instances: {e}; counting them as healthy");
                Vec::new()
            }
        };
        for id in &impaired {
            tracing::warn!(instance = %id, "fails its EC2 status checks: counted as gone");
        }
        Ok(live.into_iter().filter(|i| !impaired.contains(&i.id)).collect())
    }
}

fn tag_addr(i: &ec2::Instance, tag: &str, port: u16) -> Option<SocketAddr> {
    match i.tags.get(tag) {
        Some(a) => a.parse().ok(),
        None => i.private_ip.as_ref().and_then(|ip| format!("{ip}:{port}").parse().ok()),
    }
}

impl Fleet for Ec2Fleet {
    fn instances(&mut self) -> Result<Vec<Instance>, FleetError> {
        let mut found: Vec<(Option<NodeId>, Instance)> = self
            .serving()?
            .into_iter()
            .filter_map(|i| {
                let role = RoleKind::from_name(i.role()).filter(|r| *r != RoleKind::Client)?;
                let node = Instance {
                    id: i.id.clone(),
                    role,
                    address: tag_addr(&i, TAG_ADDRESS, self.settings.node_port),
                    metrics_address: tag_addr(&i, TAG_METRICS_ADDRESS, self.settings.metrics_port),
                    managed: i.tags.get(TAG_MANAGED_BY).is_some_and(|v| v == MANAGED_BY_VALUE),
                    nodes: node_count(&i),
                    node_ids: node_ids(&i),
                };
                Some((max_node_id(&i), node))
            })
            .collect();
        // Oldest (lowest node id) first, so that a scale in takes the newest.
        found.sort_by_key(|(id, _)| *id);
        Ok(found.into_iter().map(|(_, i)| i).collect())
    }

    fn launch(&mut self, role: RoleKind, count: u32) -> Result<Vec<Instance>, FleetError> {
        let existing = self.describe()?;
        let highest = existing.iter().filter_map(max_node_id).max().unwrap_or(0).max(self.highest_id);
        let expected = existing.len() + count as usize;
        let mut launched: Vec<Instance> = Vec::new();
        // One RunInstances per node: each carries its own node id in its tags and user-data.
        for k in 1..=count {
            let node = highest + k;
            let advertised = self.settings.advertised()?;
            let spec = LaunchSpec {
                ami: self.settings.ami.clone(),
                instance_type: self.settings.instance_type.clone(),
                count: 1,
                tags: tags(&self.settings, role, node, advertised),
                user_data: user_data(&self.settings, role, node, expected, advertised),
                on_shutdown: OnShutdown::Terminate,
                key_name: None,
                subnet_id: None,
                security_group_ids: Vec::new(),
            };
            match self.ec2.run_instances(&spec) {
                Ok(ids) => launched.extend(ids.into_iter().map(|id| Instance {
                    id,
                    role,
                    address: advertised.map(|a| a.address),
                    metrics_address: advertised.map(|a| a.metrics),
                    managed: true,
                    nodes: 1,
                    node_ids: vec![node],
                })),
                Err(e) => {
                    let ids: Vec<&str> = launched.iter().map(|i| i.id.as_str()).collect();
                    return Err(FleetError(format!(
                        "{e} (launched {} of {count} before: {})",
                        ids.len(),
                        ids.join(", ")
                    )));
                }
            }
            self.highest_id = node;
        }
        Ok(launched)
    }

    fn terminate(&mut self, ids: &[String]) -> Result<(), FleetError> {
        self.ec2.terminate(ids).map_err(|e| FleetError(e.to_string()))
    }

    /// The cluster file `autopaxos boot` would discover by tags: every node at its private IP.
    fn cluster_file(&mut self) -> Option<Result<ClusterFile, FleetError>> {
        let s = &self.settings;
        let made = self.describe().and_then(|found| {
            let text = cluster_file_text(&s.cluster, s.f, None, s.node_port, &found).map_err(FleetError)?;
            let origin = format!("the instances tagged {TAG_CLUSTER}={}", s.cluster);
            ClusterFile::parse(&text, &origin).map_err(|e| FleetError(e.to_string()))
        });
        Some(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LaunchSettings {
        LaunchSettings {
            cluster: "demo".into(),
            ami: "ami-1".into(),
            instance_type: "c5.large".into(),
            f: 1,
            node_port: 7000,
            metrics_port: 16000,
            advertise: Some("127.0.0.1:9".parse().unwrap()),
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into()),
            cluster_file: None,
            secret: None,
        }
    }

    #[test]
    fn user_data_is_what_boot_reads() {
        let advertised = settings().advertised().unwrap();
        let text = user_data(&settings(), RoleKind::ProxyLeader, 42, 11, advertised);
        let ud = crate::boot::UserData::parse(&text, "test").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(ud.role_kind(), RoleKind::ProxyLeader);
        assert_eq!(ud.nodes, vec![42]);
        assert_eq!(ud.cluster, "demo");
        assert_eq!(ud.expected_instances, Some(11));
        assert_eq!(ud.base_port, 7000);
        assert!(ud.join);
        assert_eq!(ud.advertise, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(ud.metrics_addr, SocketAddr::from(([0, 0, 0, 0], 16000)));
        assert_eq!(ud.endpoint_url.as_deref(), Some("http://127.0.0.1:5000"));
    }

    #[test]
    fn a_stateful_node_for_a_file_cluster_gets_the_file_and_its_own_loopback_ports() {
        let file = crate::runtime::config::EXAMPLE;
        let id = crate::runtime::config::ClusterFile::parse(file, "example").unwrap().cluster_id;
        let s = LaunchSettings {
            cluster: id,
            advertise: Some("127.0.0.1:0".parse().unwrap()),
            cluster_file: Some(file.into()),
            ..settings()
        };
        let (a, b) = (s.advertised().unwrap().unwrap(), s.advertised().unwrap().unwrap());
        assert!(a.address.port() != 0 && a.metrics.port() != 0 && a.address != a.metrics, "{a:?}");
        assert_ne!(a, b, "each launched node has its own ports");
        let text = user_data(&s, RoleKind::Replica, 42, 11, Some(a));
        let ud = crate::boot::UserData::parse(&text, "test").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(ud.discovery, crate::boot::Discovery::File);
        assert_eq!(ud.cluster_file.as_deref(), Some(file));
        assert!(ud.join && ud.role_kind() == RoleKind::Replica);
        assert_eq!((ud.advertise, ud.metrics_addr), (Some(a.address), a.metrics));
        let t = tags(&s, RoleKind::Replica, 42, Some(a));
        assert!(t.contains(&(TAG_METRICS_ADDRESS.to_string(), a.metrics.to_string())), "{t:?}");
    }

    #[test]
    fn addresses_come_from_tags_else_the_private_ip_and_node_ids_from_the_nodes_tag() {
        let mut i = ec2::Instance {
            id: "i-1".into(),
            state: "running".into(),
            instance_type: "c5.large".into(),
            private_ip: Some("10.0.0.5".into()),
            tags: [(TAG_NODES.to_string(), "3/0,4/0".to_string())].into(),
        };
        assert_eq!(max_node_id(&i), Some(4));
        assert_eq!(node_count(&i), 2);
        assert_eq!(tag_addr(&i, TAG_ADDRESS, 7000), Some("10.0.0.5:7000".parse().unwrap()));
        i.tags.insert(TAG_ADDRESS.into(), "127.0.0.1:9".into());
        assert_eq!(tag_addr(&i, TAG_ADDRESS, 7000), Some("127.0.0.1:9".parse().unwrap()));
        i.private_ip = None;
        assert_eq!(tag_addr(&i, TAG_METRICS_ADDRESS, 16000), None);
        i.tags.insert(TAG_NODES.into(), "builder".into());
        assert_eq!(max_node_id(&i), None);
        i.tags.remove(TAG_NODES);
        assert_eq!(node_count(&i), 1);
    }

    #[test]
    fn tags_name_cluster_role_node_manager_and_address() {
        let t = tags(&settings(), RoleKind::Batcher, 42, settings().advertised().unwrap());
        let get = |k: &str| t.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get(TAG_CLUSTER), Some("demo"));
        assert_eq!(get(TAG_ROLE), Some("batcher"));
        assert_eq!(get(TAG_NODES), Some("42"));
        assert_eq!(get(TAG_MANAGED_BY), Some("autoscaler"));
        assert_eq!(get(TAG_ADDRESS), Some("127.0.0.1:9"));
    }
}
