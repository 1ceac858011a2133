//! `autopaxos cloud up|status|down` and tag discovery.
//!
//! A cluster on EC2 is the set of instances tagged `autopaxos:cluster = <id>`. Each instance runs the
//! nodes of one role (`autopaxos:role`), one per vCPU, listed in `autopaxos:nodes` (`7,8`; acceptors
//! `3/0,4/1`, id/group). `cloud up` sizes the cluster from `cloud.toml` (by `plan`, or per role),
//! launches one instance per node list with the role in its user-data (`discovery = "tags"`), and
//! `autopaxos boot` on each instance builds the cluster file from DescribeInstances ([`discover`]):
//! node k of an instance listens on `<private ip>:<base_port + k>`.
//!
//! ```toml
//! cluster = "demo"            # cluster id: the autopaxos:cluster tag
//! ami = "ami-0123456789"      # from `autopaxos ami bake`
//! region = "us-east-1"        # optional (else --region / AWS_REGION)
//! f = 1                       # optional, default 1
//! batch_size = 100            # optional
//! key_name = "me"             # optional; subnet_id, security_group_ids too
//! [plan]                      # optional: size by `autopaxos plan`
//! target_cmds = 1000000
//! capacities = "tuning/capacities.toml"
//! headroom = 0.3
//! instance_type = "c5.xlarge"
//! [roles.batcher]             # optional, per role: overrides the plan (or the f-minimum)
//! instance_type = "c5.large"
//! nodes = 4
//! instances = 2
//! ```

use super::ec2::{CloudError, Ec2, Instance, LaunchSpec, OnShutdown, TAG_CLUSTER, TAG_NODES, TAG_ROLE};
use super::AwsFlags;
use crate::bench::plan::{load_capacities, plan, vcpus, PlanRequest, PLAN_ROLES};
use crate::boot::{SecretText, UserData};
use crate::protocol::{NodeId, RoleKind};
use crate::runtime::config::ClusterFile;
use clap::{ArgGroup, Args, Subcommand};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `cloud.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Cluster id.
    pub cluster: String,
    /// The AMI every instance boots.
    pub ami: String,
    /// AWS region.
    pub region: Option<String>,
    /// Failures tolerated.
    #[serde(default = "one")]
    pub f: usize,
    /// Overrides the cluster's batch size.
    pub batch_size: Option<usize>,
    /// Node k of an instance listens on `base_port + k`.
    #[serde(default = "base_port")]
    pub base_port: u16,
    /// SSH key pair.
    pub key_name: Option<String>,
    /// Subnet.
    pub subnet_id: Option<String>,
    /// Security groups (ids); they must let the nodes reach each other on the node ports and 16000.
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    /// Size by `autopaxos plan`.
    pub plan: Option<PlanSection>,
    /// Per-role settings, by role name.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSection>,
    /// The cluster secret (relative to cloud.toml): `up` gives it to every instance in its
    /// user-data, never in a tag, and prints it nowhere.
    pub secret_file: Option<PathBuf>,
}

fn one() -> usize {
    1
}
fn base_port() -> u16 {
    7000
}

/// `[plan]` of cloud.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    /// Commands per second to sustain.
    pub target_cmds: u64,
    /// Capacities file (default `tuning/capacities.toml`).
    pub capacities: Option<PathBuf>,
    /// Spare fraction (default 0.3).
    pub headroom: Option<f64>,
    /// Instance type for every role (default `c5.xlarge`).
    pub instance_type: Option<String>,
}

/// `[roles.<role>]` of cloud.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// Instance type.
    pub instance_type: Option<String>,
    /// Nodes (one per vCPU).
    pub nodes: Option<u64>,
    /// Instances the nodes are spread over.
    pub instances: Option<u64>,
}

/// One instance to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLayout {
    /// Its role.
    pub role: RoleKind,
    /// Its instance type.
    pub instance_type: String,
    /// Its nodes: id and, for acceptors, group.
    pub nodes: Vec<(NodeId, Option<usize>)>,
}

impl InstanceLayout {
    /// The `autopaxos:nodes` tag value.
    pub fn nodes_tag(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, g)| g.map_or_else(|| id.to_string(), |g| format!("{id}/{g}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl CloudConfig {
    /// Reads and checks cloud.toml.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        if let (Some(secret), Some(dir)) = (&mut config.secret_file, path.parent()) {
            if secret.is_relative() {
                *secret = dir.join(&*secret);
            }
        }
        Ok(config)
    }

    /// The secret `secret_file` holds, as user-data carries it.
    pub fn secret(&self) -> Result<SecretText, String> {
        let path = self.secret_file.as_ref().ok_or_else(|| {
            format!(
                "cloud config of cluster '{}' names no secret_file: create one with `autopaxos config \
                 --new-secret cluster.secret` and add `secret_file = \"cluster.secret\"`",
                self.cluster
            )
        })?;
        let bytes = crate::secret::read_secret(path).map_err(|e| e.to_string())?;
        String::from_utf8(bytes)
            .map(SecretText)
            .map_err(|_| format!("the cluster secret {} is not text: user-data carries text", path.display()))
    }

    /// Parses and checks cloud.toml text; errors name `origin` and the field.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let c: CloudConfig =
            toml::from_str(text).map_err(|e| format!("{origin}: {}", e.to_string().trim()))?;
        let bad = |field: &str, why: &str| Err(format!("{origin}: field `{field}`: {why}"));
        if c.cluster.is_empty() || c.cluster.contains(',') {
            return bad("cluster", "must be a non-empty id without commas");
        }
        if !c.ami.starts_with("ami-") {
            return bad(
                "ami",
                &format!("'{}' is not an AMI id (ami-...); bake one with `autopaxos ami bake`", c.ami),
            );
        }
        if c.f == 0 {
            return bad("f", "must be at least 1");
        }
        if c.batch_size == Some(0) {
            return bad("batch_size", "must be at least 1");
        }
        for name in c.roles.keys() {
            if !PLAN_ROLES.iter().any(|r| r.name() == name) {
                return bad(
                    &format!("roles.{name}"),
                    "unknown role (expected proposer, acceptor, proxy-leader, replica, batcher, unbatcher)",
                );
            }
        }
        Ok(c)
    }

    /// The instances to launch, role by role; node ids from 1 in role order. Errors name the field.
    pub fn layout(&self, origin: &str) -> Result<Vec<InstanceLayout>, String> {
        let f = self.f as u64;
        let planned = match &self.plan {
            None => None,
            Some(p) => {
                let caps_path =
                    p.capacities.clone().unwrap_or_else(|| PathBuf::from("tuning/capacities.toml"));
                let caps =
                    load_capacities(&caps_path).map_err(|e| format!("{origin}: plan.capacities: {e}"))?;
                let req = PlanRequest {
                    target_cmds: p.target_cmds,
                    headroom: p.headroom.unwrap_or(0.3),
                    instance_type: p.instance_type.clone().unwrap_or_else(|| "c5.xlarge".into()),
                    f: self.f,
                    capacities_file: caps_path.display().to_string(),
                };
                let pl = plan(&caps, &req).map_err(|e| format!("{origin}: plan: {e}"))?;
                if !pl.reachable {
                    return Err(format!(
                        "{origin}: plan.target_cmds: {} cmds/s is more than any cluster carries (at most {:.0}, \
                         limited by the {})",
                        p.target_cmds, pl.max_cmds_per_sec, pl.bottleneck
                    ));
                }
                Some(pl)
            }
        };
        let mut out = Vec::new();
        let mut next_id: NodeId = 1;
        for role in PLAN_ROLES {
            let name = role.name();
            let section = self.roles.get(name).cloned().unwrap_or_default();
            let field = |k: &str| format!("roles.{name}.{k}");
            let minimum = match role {
                RoleKind::Proposer | RoleKind::Replica => f + 1,
                RoleKind::Acceptor => 2 * f + 1,
                _ => 1,
            };
            let from_plan = planned.as_ref().and_then(|p| p.roles.iter().find(|r| r.role == name));
            let instance_type = section
                .instance_type
                .clone()
                .or_else(|| planned.as_ref().map(|p| p.instance_type.clone()))
                .unwrap_or_else(|| "c5.large".into());
            let per =
                vcpus(&instance_type).map_err(|e| format!("{origin}: {}: {e}", field("instance_type")))?;
            let nodes = section.nodes.or(from_plan.map(|r| r.nodes)).unwrap_or(minimum);
            if nodes < minimum {
                return Err(format!(
                    "{origin}: {}: {nodes} is below the minimum of {minimum} for f={f}",
                    field("nodes")
                ));
            }
            if role == RoleKind::Acceptor && nodes % (2 * f + 1) != 0 {
                return Err(format!(
                    "{origin}: {}: {nodes} acceptors do not make whole groups of 2f+1 = {}",
                    field("nodes"),
                    2 * f + 1
                ));
            }
            let default_instances = if section.nodes.is_none() && from_plan.is_none() {
                nodes // the f-minimum: one node per instance, so one failure costs one node
            } else {
                from_plan.filter(|_| section.nodes.is_none()).map_or(nodes.div_ceil(per), |r| r.instances)
            };
            let instances = section.instances.unwrap_or(default_instances);
            if instances == 0 || instances > nodes {
                return Err(format!(
                    "{origin}: {}: must be between 1 and the {nodes} nodes",
                    field("instances")
                ));
            }
            if nodes.div_ceil(instances) > per {
                return Err(format!(
                    "{origin}: {}: {nodes} nodes on {instances} {instance_type} instances is more than one node per \
                     vCPU ({per})",
                    field("instances")
                ));
            }
            let mut layouts: Vec<InstanceLayout> = (0..instances)
                .map(|_| InstanceLayout { role, instance_type: instance_type.clone(), nodes: Vec::new() })
                .collect();
            for i in 0..nodes {
                let group = (role == RoleKind::Acceptor).then(|| (i / (2 * f + 1)) as usize);
                // Round-robin, so the members of an acceptor group land on different instances.
                layouts[(i % instances) as usize].nodes.push((next_id, group));
                next_id += 1;
            }
            out.extend(layouts);
        }
        Ok(out)
    }
}

/// The user-data of one instance of a cluster that finds its peers by tags.
pub fn user_data_for(
    config: &CloudConfig,
    layout: &InstanceLayout,
    expected_instances: usize,
    region: &str,
    endpoint_url: Option<&str>,
    secret: &SecretText,
) -> String {
    let nodes = layout.nodes.iter().map(|(id, _)| *id).collect();
    let mut ud = UserData::by_tags(&config.cluster, layout.role, nodes, config.f, expected_instances);
    ud.secret = Some(secret.clone());
    ud.region = Some(region.to_string());
    ud.endpoint_url = endpoint_url.map(str::to_string);
    ud.batch_size = config.batch_size;
    ud.base_port = config.base_port;
    ud.to_toml()
}

/// The cluster file (TOML text) the tagged instances of a cluster make: every instance's nodes at
/// `<private ip>:<base_port + k>`. Instances without a role or nodes tag (a bake's builder) are skipped.
pub fn cluster_file_text(
    cluster: &str,
    f: usize,
    batch_size: Option<usize>,
    base_port: u16,
    instances: &[Instance],
) -> Result<String, String> {
    let mut s = format!("[cluster]\nid = {}\nf = {f}\n", toml::Value::String(cluster.into()));
    if let Some(b) = batch_size {
        s.push_str(&format!("\n[settings]\nbatch_size = {b}\n"));
    }
    for i in instances {
        let Some(nodes) = i.tags.get(TAG_NODES) else { continue };
        let role = i.role();
        // An acceptor, replica or proposer the autoscaler launched joined through a change of
        // configuration: it is not one of the file's configured nodes.
        let managed = i.tags.contains_key(crate::autoscale::ec2_fleet::TAG_MANAGED_BY);
        if managed && RoleKind::from_name(role).is_some_and(|r| !crate::protocol::membership::is_stateless(r))
        {
            continue;
        }
        let ip = i.private_ip.as_deref().ok_or_else(|| format!("instance {} has no private IP yet", i.id))?;
        for (k, entry) in nodes.split(',').filter(|e| !e.is_empty()).enumerate() {
            let (id, group) = match entry.split_once('/') {
                Some((id, g)) => (id, Some(g)),
                None => (entry, None),
            };
            let id: NodeId =
                id.trim().parse().map_err(|_| format!("instance {}: bad {TAG_NODES} tag '{nodes}'", i.id))?;
            let port = u16::try_from(usize::from(base_port) + k)
                .map_err(|_| format!("instance {}: node port above 65535", i.id))?;
            s.push_str(&format!(
                "\n[[node]]\nid = {id}\nrole = {}\naddress = \"{ip}:{port}\"\n",
                toml::Value::String(role.into())
            ));
            if let Some(g) = group {
                let g: usize = g
                    .trim()
                    .parse()
                    .map_err(|_| format!("instance {}: bad {TAG_NODES} tag '{nodes}'", i.id))?;
                s.push_str(&format!("group = {g}\n"));
            }
        }
    }
    Ok(s)
}

/// Tag discovery for `autopaxos boot` (`discovery = "tags"`): waits until `expected_instances` of the
/// cluster are pending or running with a private IP, then builds the cluster file from their tags.
pub fn discover(ud: &UserData) -> Result<ClusterFile, String> {
    let opts = super::ec2::Ec2Options {
        region: ud.region.clone(),
        endpoint_url: ud.endpoint_url.clone(),
        ..Default::default()
    };
    let ec2 = Ec2::connect(&opts).map_err(|e| format!("tag discovery: {e}"))?;
    let expected = ud.expected_instances.unwrap_or(1);
    let timeout = ud.discovery_timeout();
    let start = Instant::now();
    loop {
        let found: Vec<Instance> = ec2
            .cluster_instances(&ud.cluster)
            .map_err(|e| format!("tag discovery: {e}"))?
            .into_iter()
            .filter(|i| {
                i.tags.contains_key(TAG_NODES)
                    && i.private_ip.is_some()
                    && (i.state == "running" || i.state == "pending")
            })
            .collect();
        if found.len() >= expected {
            let text =
                cluster_file_text(&ud.cluster, ud.f.unwrap_or(1), ud.batch_size, ud.base_port, &found)?;
            tracing::info!(
                instances = found.len(),
                "tag discovery: cluster found after {:.1?}",
                start.elapsed()
            );
            return ClusterFile::parse(&text, &format!("the instances tagged {TAG_CLUSTER}={}", ud.cluster))
                .map_err(|e| e.to_string());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "tag discovery: {} of {expected} instances of cluster '{}' up after {timeout:?}",
                found.len(),
                ud.cluster
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `autopaxos cloud ...`.
#[derive(Args, Debug)]
pub struct CloudArgs {
    #[command(subcommand)]
    command: CloudCommand,
}

#[derive(Subcommand, Debug)]
enum CloudCommand {
    /// Launch a cluster sized by cloud.toml (by `plan`, or per role), tagged and with each instance's
    /// role in its user-data. Refuses if the cluster already has instances.
    Up(UpArgs),
    /// List the cluster's instances (by the autopaxos:cluster tag): id, role, state, type, private IP.
    Status(TargetArgs),
    /// Terminate every instance tagged with the cluster.
    Down(TargetArgs),
    /// Stand in for EC2 booting instances, on this machine, against an EC2 emulator (moto): run
    /// each launched instance whose user-data joins at a loopback address as `autopaxos boot`, and
    /// kill it when the instance is terminated or stopped. For trying the autoscaler without EC2.
    Emulate(super::emulate::EmulateArgs),
}

/// `autopaxos cloud up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// The cluster description (see `autopaxos::cloud::cluster` docs or ami/README.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Print the layout and the user-data, launch nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub aws: AwsFlags,
}

/// Which cluster `status` and `down` act on.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["config", "cluster"])))]
pub struct TargetArgs {
    /// The cluster's cloud.toml (its id and region).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The cluster id.
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub aws: AwsFlags,
}

impl TargetArgs {
    fn resolve(&self) -> Result<(String, Option<String>), String> {
        match (&self.config, &self.cluster) {
            (Some(p), _) => {
                let c = CloudConfig::load(p)?;
                Ok((c.cluster, c.region))
            }
            (None, Some(id)) => Ok((id.clone(), None)),
            (None, None) => Err("give --config or --cluster".into()),
        }
    }
}

/// Runs `autopaxos cloud ...`.
pub fn run(args: CloudArgs) -> Result<(), String> {
    match args.command {
        CloudCommand::Up(a) => up(&a).map(|_| ()),
        CloudCommand::Emulate(a) => super::emulate::run(a),
        CloudCommand::Status(a) => {
            let (cluster, region) = a.resolve()?;
            let ec2 = Ec2::connect(&a.aws.options(region.as_deref())).map_err(|e| e.to_string())?;
            let list = ec2.cluster_instances(&cluster).map_err(|e| e.to_string())?;
            print!("{}", render_status(&cluster, &list));
            Ok(())
        }
        CloudCommand::Down(a) => {
            let (cluster, region) = a.resolve()?;
            let ec2 = Ec2::connect(&a.aws.options(region.as_deref())).map_err(|e| e.to_string())?;
            let ids = down(&ec2, &cluster).map_err(|e| e.to_string())?;
            println!("cluster {cluster}: terminated {} instances {}", ids.len(), ids.join(" "));
            Ok(())
        }
    }
}

/// The status table.
pub fn render_status(cluster: &str, list: &[Instance]) -> String {
    let mut s = format!("cluster {cluster}: {} instances\n", list.len());
    s.push_str(&format!(
        "{:<20} {:<13} {:<14} {:<12} {:<16} nodes\n",
        "id", "role", "state", "type", "private-ip"
    ));
    for i in list {
        s.push_str(&format!(
            "{:<20} {:<13} {:<14} {:<12} {:<16} {}\n",
            i.id,
            i.role(),
            i.state,
            i.instance_type,
            i.private_ip.as_deref().unwrap_or("-"),
            i.tags.get(TAG_NODES).map_or("-", String::as_str)
        ));
    }
    s
}

/// Terminates every instance of `cluster` that is not already going; returns their ids.
pub fn down(ec2: &Ec2, cluster: &str) -> Result<Vec<String>, CloudError> {
    let ids: Vec<String> = ec2.cluster_instances(cluster)?.into_iter().map(|i| i.id).collect();
    ec2.terminate(&ids)?;
    Ok(ids)
}

/// `cloud up`: launches the cluster; returns the new instance ids.
pub fn up(args: &UpArgs) -> Result<Vec<String>, String> {
    let origin = args.config.display().to_string();
    let config = CloudConfig::load(&args.config)?;
    let layout = config.layout(&origin)?;
    let region_hint = args.aws.region.clone().or_else(|| config.region.clone());
    if args.dry_run {
        for (k, l) in layout.iter().enumerate() {
            println!("{k:>3} {} {} nodes {}", l.role.name(), l.instance_type, l.nodes_tag());
        }
        println!(
            "{} instances; user-data of the first:\n{}",
            layout.len(),
            user_data_for(
                &config,
                &layout[0],
                layout.len(),
                region_hint.as_deref().unwrap_or("<region>"),
                None,
                // Never printed: a placeholder where it goes.
                &SecretText("<the cluster secret>".into()),
            )
        );
        return Ok(Vec::new());
    }
    let secret = config.secret()?;
    let ec2 = Ec2::connect(&args.aws.options(config.region.as_deref())).map_err(|e| e.to_string())?;
    let existing = ec2.cluster_instances(&config.cluster).map_err(|e| e.to_string())?;
    if !existing.is_empty() {
        return Err(format!(
            "cluster {} already has {} instances (see `autopaxos cloud status --cluster {0}`); take it down first",
            config.cluster,
            existing.len()
        ));
    }
    let start = Instant::now();
    let mut launched = Vec::new();
    for (k, l) in layout.iter().enumerate() {
        let spec = LaunchSpec {
            ami: config.ami.clone(),
            instance_type: l.instance_type.clone(),
            count: 1,
            tags: vec![
                (TAG_CLUSTER.into(), config.cluster.clone()),
                (TAG_ROLE.into(), l.role.name().into()),
                (TAG_NODES.into(), l.nodes_tag()),
                ("Name".into(), format!("{}-{}-{k}", config.cluster, l.role.name())),
            ],
            user_data: user_data_for(
                &config,
                l,
                layout.len(),
                ec2.region(),
                args.aws.endpoint_url.as_deref(),
                &secret,
            ),
            on_shutdown: OnShutdown::Terminate,
            key_name: config.key_name.clone(),
            subnet_id: config.subnet_id.clone(),
            security_group_ids: config.security_group_ids.clone(),
        };
        match ec2.run_instances(&spec) {
            Ok(ids) => {
                tracing::info!(role = l.role.name(), nodes = %l.nodes_tag(), id = %ids[0], "launched");
                launched.extend(ids);
            }
            Err(e) => {
                tracing::error!(
                    "launch failed: {e}; terminating the {} instances launched so far",
                    launched.len()
                );
                if let Err(t) = ec2.terminate(&launched) {
                    tracing::error!("terminating them failed too: {t}; run `autopaxos cloud down`");
                }
                return Err(e.to_string());
            }
        }
    }
    println!(
        "cluster {}: launched {} instances in {:.1}s: {}",
        config.cluster,
        launched.len(),
        start.elapsed().as_secs_f64(),
        launched.join(" ")
    );
    Ok(launched)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "cluster = \"demo\"\nami = \"ami-1e749f67\"\n";

    #[test]
    fn minimal_cloud_toml_gives_the_f_minimum_one_node_per_instance() {
        let c = CloudConfig::parse(MIN, "t").unwrap();
        let l = c.layout("t").unwrap();
        let count = |r: RoleKind| l.iter().filter(|x| x.role == r).count();
        assert_eq!(count(RoleKind::Proposer), 2);
        assert_eq!(count(RoleKind::Acceptor), 3);
        assert_eq!(count(RoleKind::Replica), 2);
        assert_eq!(count(RoleKind::Batcher), 1);
        assert_eq!(l.len(), 10);
        let ids: Vec<NodeId> = l.iter().flat_map(|x| x.nodes.iter().map(|n| n.0)).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn cloud_toml_errors_name_the_field() {
        let cases = [
            (format!("{MIN}colour = 1\n"), "colour"),
            ("ami = \"ami-1\"\n".to_string(), "cluster"),
            (MIN.replace("ami-1e749f67", "centos"), "`ami`"),
            (format!("{MIN}f = 0\n"), "`f`"),
            (format!("{MIN}[roles.chef]\nnodes = 1\n"), "roles.chef"),
            (format!("{MIN}[roles.batcher]\nnodes = 2\ncolour = 1\n"), "colour"),
            (format!("{MIN}[plan]\ntarget_cmd = 5\n"), "target_cmd"),
        ];
        for (text, field) in cases {
            let e = CloudConfig::parse(&text, "cloud.toml").unwrap_err();
            assert!(e.contains(field) && e.contains("cloud.toml"), "{field}: {e}");
        }
        let layout_err = |extra: &str| {
            CloudConfig::parse(&format!("{MIN}{extra}"), "cloud.toml")
                .unwrap()
                .layout("cloud.toml")
                .unwrap_err()
        };
        assert!(layout_err("[roles.acceptor]\nnodes = 4\n").contains("roles.acceptor.nodes"));
        assert!(layout_err("[roles.proposer]\nnodes = 1\n").contains("roles.proposer.nodes"));
        assert!(layout_err("[roles.batcher]\nnodes = 9\ninstances = 1\n").contains("roles.batcher.instances"));
        assert!(layout_err("[roles.batcher]\ninstance_type = \"m9.huge\"\n")
            .contains("roles.batcher.instance_type"));
    }

    #[test]
    fn plan_sizes_the_cluster_and_acceptor_groups_spread() {
        let caps = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/capacities.toml");
        let text = format!(
            "{MIN}[plan]\ntarget_cmds = 1000000\ncapacities = \"{caps}\"\ninstance_type = \"c5.large\"\n\
             [roles.acceptor]\nnodes = 6\ninstances = 3\n"
        );
        let c = CloudConfig::parse(&text, "t").unwrap();
        let l = c.layout("t").unwrap();
        let acceptors: Vec<_> = l.iter().filter(|x| x.role == RoleKind::Acceptor).collect();
        assert_eq!(acceptors.len(), 3);
        for a in &acceptors {
            // Two nodes per instance, of different groups.
            assert_eq!(a.nodes.len(), 2);
            assert_ne!(a.nodes[0].1, a.nodes[1].1);
        }
        let nodes = |r: RoleKind| l.iter().filter(|x| x.role == r).map(|x| x.nodes.len()).sum::<usize>();
        assert_eq!(nodes(RoleKind::Proposer), 2);
        assert_eq!(nodes(RoleKind::Replica), 2);
        assert!(l.iter().all(|x| x.instance_type == "c5.large"));
    }

    #[test]
    fn tags_make_a_valid_cluster_file() {
        let c = CloudConfig::parse(MIN, "t").unwrap();
        let l = c.layout("t").unwrap();
        let instances: Vec<Instance> = l
            .iter()
            .enumerate()
            .map(|(k, x)| Instance {
                id: format!("i-{k}"),
                state: "running".into(),
                instance_type: x.instance_type.clone(),
                private_ip: Some(format!("10.0.0.{}", k + 1)),
                tags: [
                    (TAG_ROLE.to_string(), x.role.name().to_string()),
                    (TAG_NODES.to_string(), x.nodes_tag()),
                    (TAG_CLUSTER.to_string(), "demo".to_string()),
                ]
                .into_iter()
                .collect(),
            })
            .collect();
        let text = cluster_file_text("demo", 1, Some(40), 7000, &instances).unwrap();
        let file = ClusterFile::parse(&text, "tags").unwrap();
        assert_eq!(file.cluster_id, "demo");
        assert_eq!(file.tunables.batch_size, 40);
        assert_eq!(file.role_of(l[0].nodes[0].0), Some(l[0].role));
        assert_eq!(file.config.acceptor_groups.len(), 1);
        assert_eq!(file.addresses[&1].to_string(), "10.0.0.1:7000");
        let secret = SecretText("s".repeat(40));
        let ud = user_data_for(&c, &l[4], l.len(), "us-east-1", None, &secret);
        let parsed = UserData::parse(&ud, "ud").unwrap();
        assert_eq!(parsed.secret, Some(secret), "the secret travels in the user-data");
        assert_eq!(parsed.nodes, vec![5]);
        assert_eq!(parsed.expected_instances, Some(10));
    }
}
