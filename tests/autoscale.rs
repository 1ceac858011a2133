//! `autopaxos autoscale` against a real local cluster (one process per node on loopback) whose load
//! rises and falls, driven by `autopaxos client` at 1, then 1024, then 1 client(s). The capacities
//! file given to the autoscaler says each stateless role carries 10,000 cmds/s per core, so the one
//! client's few hundred cmds/s need one node of each and 1024 clients need more than the cap of 4.
//!
//! - dry run: the decisions (one JSON object per role per interval) show a scale out under the high
//!   load, scale ins after it, back to one node, and never a scale out after a scale in (no flapping);
//! - `cloud` feature: the same against moto's EC2 server on loopback: the instances are really launched
//!   (tags, user-data) and later terminated. Launched instances carry a loopback address tag on a closed
//!   port, so the drain and the scrapes only ever touch 127.0.0.1 (never moto's 10.x addresses).

mod common;

use common::{Cluster, Proc};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every role at 10,000 cmds/s per core (usable 7,000 at 30% headroom).
fn write_capacities(dir: &Path) -> PathBuf {
    common::write_capacities(dir, 10_000.0, 100.0)
}

/// The autoscaler's flags for a quick run: 500 ms intervals, 1 s cooldown, at most 4 nodes per role.
fn autoscaler_args(cluster: &Cluster, nodes: &Path, caps: &Path, metrics_port: u16) -> Vec<String> {
    [
        "autoscale",
        "--cluster",
        &cluster.cluster_id,
        "--nodes-from",
        &nodes.display().to_string(),
        "--capacities",
        &caps.display().to_string(),
        "--interval",
        "500ms",
        "--scale-out-after",
        "2",
        "--scale-in-after",
        "4",
        "--cooldown",
        "1s",
        "--max-nodes",
        "4",
        "--max-intervals",
        "120",
        "--json",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        // The stateless roles only (tests/healing.rs covers the stateful ones): no cluster file to
        // make from the fleet's tags at start, so the autoscaler's clock starts with the test's.
        "--no-healing",
        "--no-group-sizing",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The JSON decision lines printed so far.
fn records(proc: &Proc) -> Vec<Value> {
    proc.stdout_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The acting decisions of `role`, in order.
fn actions<'a>(records: &'a [Value], role: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["role"] == role && r["action"]["kind"] != "hold").collect()
}

fn kind(r: &Value) -> &str {
    r["action"]["kind"].as_str().unwrap_or("?")
}

/// Waits until every scaled role has scaled out, then back in to one node (or `limit` passes).
fn wait_back_to_one(proc: &mut Proc, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let recs = records(proc);
        let done = ["batcher", "proxy-leader", "unbatcher"].iter().all(|role| {
            let acts = actions(&recs, role);
            acts.iter().any(|r| kind(r) == "scale-out") && acts.last().is_some_and(|r| r["to"] == 1)
        });
        if done || Instant::now() >= deadline || !proc.is_running() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Drives the cluster: 1 client, then 1024, then 1 (each its own process and client node id).
/// Returns the time the high phase started.
fn drive_load(cluster: &mut Cluster) -> Instant {
    let phases: [(&str, &str, &str); 3] = [("1", "2s", "5000"), ("1024", "4s", "5001"), ("1", "2s", "5002")];
    let mut high_start = Instant::now();
    for (i, (clients, duration, node)) in phases.iter().enumerate() {
        if i == 1 {
            high_start = Instant::now();
        }
        let args = ["--clients", clients, "--duration", duration, "--node", node, "--cores", "1"];
        let (ok, _, stderr) = cluster.run_client(&format!("client-{i}"), &args, Duration::from_secs(60));
        assert!(ok, "client phase {i} ({clients} clients) failed:\n{stderr}");
    }
    high_start
}

/// The checks both tests make on the decisions of each role.
fn check_rise_and_fall(recs: &[Value], started: Instant, high_start: Instant, context: &str) {
    let high_offset = high_start.duration_since(started).as_secs_f64();
    for role in ["batcher", "proxy-leader", "unbatcher"] {
        let acts = actions(recs, role);
        let summary: Vec<String> = acts
            .iter()
            .map(|r| {
                format!(
                    "{}@{:.1}s {}->{} (load {:.0} cmds/s)",
                    kind(r),
                    r["at_secs"].as_f64().unwrap_or(-1.0),
                    r["nodes"],
                    r["to"],
                    r["load"].as_f64().unwrap_or(-1.0)
                )
            })
            .collect();
        eprintln!("{role}: {}", summary.join(", "));
        assert!(!acts.is_empty(), "{role}: no action at all\n{context}");
        let first = acts[0];
        assert_eq!(kind(first), "scale-out", "{role}: the first action scales out: {summary:?}\n{context}");
        assert!(first["to"].as_u64().unwrap_or(0) >= 2, "{role}: {first}");
        assert!(
            first["at_secs"].as_f64().unwrap_or(0.0) >= high_offset - 0.5,
            "{role}: scaled out before the high load (at {}, high load from {high_offset:.1}s): {first}",
            first["at_secs"]
        );
        let reason = first["reason"].as_str().unwrap_or("");
        eprintln!("{role}: scale-out reason: {reason}");
        assert!(reason.contains("cmds/s") && reason.contains("scale out 1 ->"), "{role}: reason: {reason}");
        assert!(first["utilisation"].as_f64().unwrap_or(0.0) > 0.7, "{role}: {first}");
        // No flapping: every later action scales in, and the count only goes down after the peak.
        assert!(
            acts[1..].iter().all(|r| kind(r) == "scale-in"),
            "{role}: an action other than scale-in after the scale out: {summary:?}\n{context}"
        );
        assert!(acts.len() >= 2, "{role}: never scaled in: {summary:?}\n{context}");
        assert_eq!(acts.last().map(|r| r["to"].as_u64()), Some(Some(1)), "{role}: {summary:?}");
        // The one client before the high load never moved anything.
        let quiet =
            recs.iter().filter(|r| r["role"] == role && r["at_secs"].as_f64().unwrap_or(0.0) < high_offset);
        for r in quiet {
            assert_eq!(kind(r), "hold", "{role}: acted under one client's load: {r}");
        }
    }
}

#[test]
fn dry_run_scales_out_under_load_and_back_in_without_flapping() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("autoscale");
    let caps = write_capacities(&cluster.dir);
    let nodes = common::write_nodes_file(&cluster);

    // The scraper reads a real node's exposition: the replica's applied-commands counter is there.
    let replica = cluster.node(7).metrics_addr();
    let text =
        autopaxos::autoscale::scrape::fetch(replica, Duration::from_secs(2)).expect("scrape replica 7");
    let samples = autopaxos::autoscale::scrape::parse(&text).expect("a real exposition parses");
    assert!(
        autopaxos::autoscale::scrape::sum(
            &samples,
            autopaxos::autoscale::LOAD_COUNTER,
            &[("role", "replica"), ("node", "7")]
        )
        .is_some(),
        "no {} for replica 7 in:\n{text}",
        autopaxos::autoscale::LOAD_COUNTER
    );

    let metrics_port = common::free_ports(1)[0];
    let mut args = autoscaler_args(&cluster, &nodes, &caps, metrics_port);
    args.push("--dry-run".into());
    let started = Instant::now();
    let mut scaler = Proc::spawn(&cluster.dir, "autoscaler", &args);
    let high_start = drive_load(&mut cluster);
    wait_back_to_one(&mut scaler, Duration::from_secs(20));
    let own = common::scrape(format!("127.0.0.1:{metrics_port}").parse().unwrap()).unwrap_or_default();
    scaler.kill();
    let recs = records(&scaler);
    let context = format!("autoscaler stderr:\n{}", common::tail(&scaler.stderr, 40));
    assert!(recs.iter().all(|r| r["dry_run"] == true), "{context}");
    check_rise_and_fall(&recs, started, high_start, &context);
    // Its own metrics: decisions by role and action, and the node counts.
    assert!(
        common::has_metric(
            &own,
            "autopaxos_autoscaler_decisions_total",
            &[("role", "batcher"), ("action", "scale-out")]
        ),
        "autoscaler metrics:\n{own}"
    );
    assert!(common::has_metric(&own, "autopaxos_autoscaler_nodes", &[("role", "unbatcher")]), "{own}");
}

#[test]
fn without_a_fleet_it_must_be_a_dry_run_and_without_cloud_it_says_how_to_get_one() {
    let dir = common::TempDir::new("autoscale-cli");
    let caps = write_capacities(&dir.0);
    let nodes = dir.0.join("nodes.toml");
    fs::write(&nodes, "[[node]]\nid = 9\nrole = \"batcher\"\naddress = \"127.0.0.1:1\"\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["autoscale", "--cluster", "c", "--capacities", caps.to_str().unwrap()];
        args.extend_from_slice(extra);
        std::process::Command::new(common::BIN).args(&args).output().expect("run autopaxos")
    };
    let out = run(&["--nodes-from", nodes.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--dry-run"), "{err}");
    let out = run(&[
        "--nodes-from",
        nodes.to_str().unwrap(),
        "--dry-run",
        "--max-intervals",
        "2",
        "--interval",
        "100ms",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--headroom", "1.5", "--nodes-from", nodes.to_str().unwrap(), "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--headroom"), "{err}");
    if !cfg!(feature = "cloud") {
        let out = run(&["--ami", "ami-1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--features cloud"), "{err}");
    }
}

#[test]
fn gateways_are_scaled_on_the_resp_load_they_report() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("autoscale-gateway");
    // A gateway that joined, serving RESP; its metrics are what the autoscaler reads.
    let ports = common::free_ports(2);
    let (listen, metrics) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));
    let (_, resp) = cluster.start_joined_gateway(6000, &listen, Some(&metrics));
    let resp_port = resp.port();
    let nodes = common::write_nodes_file(&cluster);
    let mut text = fs::read_to_string(&nodes).unwrap();
    text.push_str(&format!(
        "\n[[node]]\nid = 6000\nrole = \"gateway\"\naddress = \"{listen}\"\nmetrics_address = \"{metrics}\"\n"
    ));
    fs::write(&nodes, text).unwrap();
    // Gateways at 1,000 cmds/s per core (usable 700): redis-benchmark's load needs several.
    let caps = write_capacities(&cluster.dir);
    let mut caps_text = fs::read_to_string(&caps).unwrap();
    caps_text.push_str(
        "\n[roles.gateway]\ncmds_per_sec_per_core = 1000.0\nmsgs_per_sec_per_core = 1000.0\nbatch_size = 1\nread_budget = 1\n",
    );
    fs::write(&caps, caps_text).unwrap();
    let mut args = autoscaler_args(&cluster, &nodes, &caps, common::free_ports(1)[0]);
    args.push("--dry-run".into());
    let mut scaler = Proc::spawn(&cluster.dir, "autoscaler", &args);
    let load = std::process::Command::new("timeout")
        .args([
            "8",
            "redis-benchmark",
            "-p",
            &resp_port.to_string(),
            "-t",
            "set",
            "-n",
            "10000000",
            "-c",
            "20",
            "-q",
        ])
        .output()
        .expect("redis-benchmark (redis-tools, installed by scripts/setup.sh)");
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let recs = records(&scaler);
        let acts = actions(&recs, "gateway");
        if acts.iter().any(|r| kind(r) == "scale-out") || Instant::now() >= deadline {
            break recs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    scaler.kill();
    let context = format!(
        "redis-benchmark: {}\nautoscaler stderr:\n{}",
        String::from_utf8_lossy(&load.stdout).lines().last().unwrap_or_default(),
        common::tail(&scaler.stderr, 20)
    );
    let gateway_records: Vec<&Value> = out.iter().filter(|r| r["role"] == "gateway").collect();
    assert!(!gateway_records.is_empty(), "no decision about gateways\n{context}");
    let out_at = actions(&out, "gateway").into_iter().find(|r| kind(r) == "scale-out");
    let scaled =
        out_at.unwrap_or_else(|| panic!("gateways never scaled out: {gateway_records:?}\n{context}"));
    assert!(scaled["load"].as_f64().unwrap_or(0.0) > 700.0, "{scaled}");
    assert!(scaled["to"].as_u64().unwrap_or(0) > 1, "{scaled}");
    eprintln!("gateways scaled out: {scaled}");
}

#[cfg(feature = "cloud")]
mod cloud {
    use super::*;
    use autopaxos::cloud::ec2::{Ec2, Ec2Options, TAG_CLUSTER, TAG_NODES, TAG_ROLE};

    /// An AMI in moto's bundled list.
    const AMI: &str = "ami-1e749f67";

    #[test]
    fn against_moto_it_launches_tagged_instances_under_load_and_terminates_them_after() {
        let _serial = common::serialize();
        common::fake_aws_env();
        let moto = common::Moto::start(&[]);
        let mut cluster = Cluster::start("autoscale-ec2");
        let caps = write_capacities(&cluster.dir);
        let nodes = common::write_nodes_file(&cluster);
        // A closed loopback port: launched "nodes" are never serving, so a drain finds nothing in flight.
        let closed = format!("127.0.0.1:{}", common::free_ports(1)[0]);
        let metrics_port = common::free_ports(1)[0];
        let mut args = autoscaler_args(&cluster, &nodes, &caps, metrics_port);
        args.extend(
            [
                "--ami",
                AMI,
                "--endpoint-url",
                &moto.url,
                "--region",
                "us-east-1",
                "--advertise-address",
                &closed,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let started = Instant::now();
        // The cluster secret, which launched nodes get in their user-data.
        let secret_file = cluster.dir.join("cluster.secret");
        args.extend(["--secret-file".to_string(), secret_file.display().to_string()]);
        let secret = std::fs::read_to_string(&secret_file).expect("the secret").trim().to_string();
        let mut scaler = Proc::spawn(&cluster.dir, "autoscaler", &args);
        let high_start = drive_load(&mut cluster);

        // While the load is high or just after: the launched instances are in the emulator.
        let ec2 = Ec2::connect(&Ec2Options {
            region: Some("us-east-1".into()),
            endpoint_url: Some(moto.url.clone()),
            call_timeout: Duration::from_secs(10),
        })
        .expect("connect to moto");
        wait_back_to_one(&mut scaler, Duration::from_secs(25));
        scaler.kill();
        let recs = records(&scaler);
        let context = format!("autoscaler stderr:\n{}", common::tail(&scaler.stderr, 40));
        assert!(recs.iter().all(|r| r["dry_run"] == false), "{context}");
        check_rise_and_fall(&recs, started, high_start, &context);

        let launched: Vec<String> = recs
            .iter()
            .flat_map(|r| r["launched"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let terminated: Vec<String> = recs
            .iter()
            .flat_map(|r| r["terminated"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        assert!(launched.len() >= 3, "one instance at least per role: {launched:?}\n{context}");
        let all = ec2.instances(&launched).expect("describe the launched instances");
        assert_eq!(all.len(), launched.len(), "every launched id is in the emulator");
        for i in &all {
            let role = i.tags.get(TAG_ROLE).map(String::as_str).unwrap_or("");
            assert!(["batcher", "proxy-leader", "unbatcher"].contains(&role), "{i:?}");
            assert_eq!(i.tags.get(TAG_CLUSTER), Some(&cluster.cluster_id), "{i:?}");
            assert_eq!(i.tags.get("autopaxos:managed-by").map(String::as_str), Some("autoscaler"), "{i:?}");
            assert_eq!(i.tags.get("autopaxos:address"), Some(&closed), "{i:?}");
            let node: u32 = i.tags.get(TAG_NODES).and_then(|n| n.parse().ok()).unwrap_or(0);
            assert!(node > 10, "a fresh node id above the cluster's: {i:?}");
            let text = ec2.user_data(&i.id).expect("DescribeInstanceAttribute userData");
            let ud = autopaxos::boot::UserData::parse(&text, &i.id).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(ud.role, role, "{text}");
            assert_eq!(ud.cluster, cluster.cluster_id, "{text}");
            assert_eq!(ud.nodes, vec![node], "{text}");
            assert_eq!(
                ud.secret.as_ref().map(|s| s.0.as_str()),
                Some(secret.as_str()),
                "the secret in the user-data"
            );
            assert!(i.tags.values().all(|v| !v.contains(&secret)), "the secret in a tag: {i:?}");
        }
        assert!(!scaler.stderr_text().contains(&secret), "the autoscaler printed the secret");
        // Scaled back to one node per role, which is a --nodes-from node: every launched one is gone.
        let mut left: Vec<String> = launched.iter().filter(|id| !terminated.contains(id)).cloned().collect();
        left.sort();
        assert!(left.is_empty(), "launched but not terminated: {left:?}\n{context}");
        for i in &all {
            let now = ec2.instances(std::slice::from_ref(&i.id)).expect("describe").remove(0);
            assert!(
                now.state == "terminated" || now.state == "shutting-down",
                "{} is {} after the scale in",
                now.id,
                now.state
            );
        }
        eprintln!("moto: {} instances launched and terminated; {} decisions", launched.len(), recs.len());
    }
}
