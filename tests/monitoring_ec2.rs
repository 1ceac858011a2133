//! `monitoring/prometheus.yml`'s EC2 job finds a real cluster: `autopaxos cloud up` launches one into
//! moto's EC2 server (on a free loopback port), the test adds an instance tagged as the autoscaler tags
//! the nodes it launches (with a metrics address), a bake builder (no cluster tag) and a terminated
//! cluster instance, and a real Prometheus running the repository's job (pointed at moto, nothing else
//! changed in the job) must list exactly the cluster's running instances as targets, each with its
//! cluster, role, node and instance labels and its metrics address.
//!
//! Discovery and labels only: nothing serves `/metrics` at moto's made-up private IPs, and the scrape
//! interval is raised so that Prometheus does not even try them during the test. Needs moto and
//! prometheus (scripts/setup.sh installs both); every child process is killed when the test ends.

#![cfg(feature = "cloud")]

mod common;

use autopaxos::autoscale::ec2_fleet::{self, Advertised, LaunchSettings, TAG_METRICS_ADDRESS};
use autopaxos::cloud::bake::TAG_BAKE;
use autopaxos::cloud::ec2::{Ec2, Ec2Options, LaunchSpec, OnShutdown, TAG_NODES, TAG_ROLE};
use autopaxos::protocol::RoleKind;
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An AMI moto knows (from its bundled list), so AMI validation accepts it.
const KNOWN_AMI: &str = "ami-1e749f67";
/// The cluster `cloud up` launches.
const CLUSTER: &str = "mon";
/// The port the EC2 job scrapes on an instance's private IP (`port:` of its `ec2_sd_configs`).
const METRICS_PORT: u16 = 16000;
/// How long Prometheus may take to list the targets once it is ready.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(40);

/// What a target of the EC2 job must look like: its role, nodes and scrape address.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    role: String,
    node: String,
    address: String,
}

/// A launch of one instance with `tags`, as `cloud up` and the autoscaler make them.
fn one_instance(tags: Vec<(String, String)>) -> LaunchSpec {
    LaunchSpec {
        ami: KNOWN_AMI.into(),
        instance_type: "c5.large".into(),
        count: 1,
        tags,
        user_data: String::new(),
        on_shutdown: OnShutdown::Terminate,
        key_name: None,
        subnet_id: None,
        security_group_ids: Vec::new(),
    }
}

/// The repository's prometheus.yml with its EC2 job pointed at `endpoint` (fake credentials, a 1s
/// refresh), the file job removed, the rules by absolute path, and a scrape interval long enough that
/// no scrape of a made-up private IP starts during the test. Panics if the file's shape changed.
fn test_config(endpoint: &str) -> String {
    let monitoring = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let original = fs::read_to_string(monitoring.join("prometheus.yml")).unwrap();
    let (without_file_job, _) = original.split_once("  - job_name: autopaxos-file").expect("the file job");
    let mut edited = String::new();
    for line in without_file_job.lines() {
        edited.push_str(line);
        edited.push('\n');
        // The keys of the `ec2_sd_configs` entry, beside its `region`.
        if let Some(region) = line.trim_start().strip_prefix("- region: ") {
            assert!(region.starts_with("us-east-1"), "moto's region: {line}");
            let indent = " ".repeat(line.len() - line.trim_start().len() + 2);
            for key in [format!("endpoint: {endpoint}"), "access_key: test".into(), "secret_key: test".into()]
            {
                edited.push_str(&format!("{indent}{key}\n"));
            }
        }
    }
    let rules = monitoring.join("rules");
    for (from, to) in [
        ("refresh_interval: 30s", "refresh_interval: 1s".to_string()),
        ("scrape_interval: 5s", "scrape_interval: 10m".to_string()),
        ("- rules/*.rules.yml", format!("- {}/*.rules.yml", rules.display())),
    ] {
        assert!(edited.contains(from), "prometheus.yml has `{from}`");
        edited = edited.replacen(from, &to, 1);
    }
    assert_eq!(edited.matches("endpoint: ").count(), 1, "one EC2 config: {edited}");
    assert!(!edited.contains("autopaxos-file"), "{edited}");
    edited
}

#[test]
fn prometheus_finds_every_running_instance_of_a_cloud_up_cluster_by_its_tags_with_its_labels() {
    let started = Instant::now();
    common::fake_aws_env();
    let dir = common::TempDir::new("monitoring-ec2"); // declared first: removed after the processes die
    let moto = common::Moto::start(&[("MOTO_ENABLE_AMI_VALIDATION", "true")]);

    // The cluster as an operator launches it: the real binary, so the tags are the real ones.
    let config = dir.0.join("cloud.toml");
    fs::write(
        &config,
        format!(
            "cluster = \"{CLUSTER}\"\nami = \"{KNOWN_AMI}\"\nregion = \"us-east-1\"\nsecret_file = \
             \"mon.secret\"\n[roles.batcher]\nnodes = 4\ninstances = 2\ninstance_type = \"c5.large\"\n"
        ),
    )
    .unwrap();
    common::new_secret(&dir.0.join("mon.secret"));
    let up = Command::new(common::BIN)
        .args(["cloud", "up", "--config", config.to_str().unwrap(), "--endpoint-url", &moto.url])
        .output()
        .expect("run autopaxos cloud up");
    assert!(up.status.success(), "cloud up: {}", String::from_utf8_lossy(&up.stderr));

    let ec2 = Ec2::connect(&Ec2Options {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.url.clone()),
        call_timeout: Duration::from_secs(10),
    })
    .expect("connect to moto");
    // A node the autoscaler launched with an advertised metrics address: tagged by its own function.
    let settings = LaunchSettings {
        cluster: CLUSTER.into(),
        ami: KNOWN_AMI.into(),
        instance_type: "c5.large".into(),
        f: 1,
        node_port: 15000,
        metrics_port: METRICS_PORT,
        advertise: None,
        cluster_file: None,
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.url.clone()),
        secret: None,
    };
    let advertised = Advertised {
        address: SocketAddr::from(([127, 0, 0, 1], 17001)),
        metrics: SocketAddr::from(([127, 0, 0, 1], 17002)),
    };
    let scaled_tags = ec2_fleet::tags(&settings, RoleKind::Replica, 40, Some(advertised));
    assert!(scaled_tags.iter().any(|(k, _)| k == TAG_METRICS_ADDRESS), "{scaled_tags:?}");
    let scaled = ec2.run_instances(&one_instance(scaled_tags)).unwrap().remove(0);
    // Not a cluster member: a bake's builder (role tag, no cluster tag).
    let builder = ec2
        .run_instances(&one_instance(vec![
            (TAG_ROLE.into(), "builder".into()),
            (TAG_BAKE.into(), "mon-image".into()),
        ]))
        .unwrap()
        .remove(0);
    // A cluster node the autoscaler launched and then terminated.
    let gone_tags = ec2_fleet::tags(&settings, RoleKind::Replica, 41, None);
    let gone = ec2.run_instances(&one_instance(gone_tags)).unwrap().remove(0);
    ec2.terminate(std::slice::from_ref(&gone)).unwrap();
    let gone_state = ec2.instances(std::slice::from_ref(&gone)).unwrap();
    assert!(gone_state.iter().all(|i| i.state != "running"), "{gone_state:?}");

    // What the job must find: every running instance of the cluster, from EC2's own answer.
    let members = ec2.cluster_instances(CLUSTER).unwrap();
    let mut expected = BTreeMap::new();
    for i in &members {
        assert_eq!(i.state, "running", "{i:?}");
        let address = match i.tags.get(TAG_METRICS_ADDRESS) {
            Some(a) => a.clone(),
            None => format!("{}:{METRICS_PORT}", i.private_ip.as_deref().expect("a private IP")),
        };
        let node = i.tags[TAG_NODES].clone();
        expected.insert(i.id.clone(), Expected { role: i.role().to_string(), node, address });
    }
    assert!(expected.contains_key(&scaled) && !expected.contains_key(&gone), "{members:?}");
    assert!(members.len() > 5, "cloud up launched the cluster and the test added one: {members:?}");
    assert_eq!(expected[&scaled].address, "127.0.0.1:17002");
    assert!(expected.values().any(|e| e.role == "batcher" && e.node.contains(',')), "{expected:?}");

    let mut prometheus = common::Prometheus::start(
        &dir.0,
        &test_config(&moto.url),
        &["--log.level=debug"],
        Duration::from_secs(20),
    );

    // The job's active targets, once there are as many as running cluster instances.
    let deadline = Instant::now() + DISCOVERY_LIMIT;
    let targets = loop {
        let last = prometheus.api("/api/v1/targets?state=active");
        if let Ok(answer) = &last {
            let targets: Vec<serde_json::Value> = answer["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["scrapePool"] == "autopaxos-ec2")
                .cloned()
                .collect();
            if targets.len() >= expected.len() {
                break targets;
            }
        }
        if Instant::now() > deadline {
            let why = format!("{} EC2 targets never appeared; last answer: {last:?}", expected.len());
            prometheus.fail(&format!("{why} after {:?}", started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(250));
    };

    let mut found = BTreeMap::new();
    for t in &targets {
        let labels = &t["labels"];
        let id = labels["instance"].as_str().unwrap_or_default().to_string();
        assert!(id.starts_with("i-"), "the instance label is the instance id: {t}");
        assert_eq!(labels["job"], "autopaxos-ec2", "{t}");
        assert_eq!(labels["cluster"], CLUSTER, "{t}");
        let address = t["discoveredLabels"]["__address__"].as_str().unwrap_or_default();
        let scrape_url = t["scrapeUrl"].as_str().unwrap_or_default();
        let got = Expected {
            role: labels["role"].as_str().unwrap_or_default().to_string(),
            node: labels["node"].as_str().unwrap_or_default().to_string(),
            address: scrape_url
                .strip_prefix("http://")
                .and_then(|u| u.strip_suffix("/metrics"))
                .unwrap_or(scrape_url)
                .to_string(),
        };
        if !expected.contains_key(&id) {
            prometheus.fail(&format!("a target that is no running instance of the cluster: {t}"));
        }
        assert_eq!(got, expected[&id], "target of {id}: {t}");
        if id != scaled {
            assert_eq!(address, got.address, "the default address, private IP and port 16000: {t}");
        }
        assert!(found.insert(id, got).is_none(), "one target per instance: {targets:?}");
    }
    assert_eq!(found.len(), expected.len(), "{targets:#?}");
    assert!(!found.contains_key(&builder), "an instance without the cluster tag is not a target");
    assert!(!found.contains_key(&gone), "a terminated instance is not a target");
    let roles: std::collections::BTreeSet<&str> = found.values().map(|e| e.role.as_str()).collect();
    for role in ["batcher", "proposer", "proxy-leader", "acceptor", "replica"] {
        assert!(roles.contains(role), "a {role} target among {roles:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(90), "took {:?}", started.elapsed());
}
