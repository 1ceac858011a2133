//! Changing the acceptor groups of a running cluster on loopback, with real processes, as an
//! operator does it: new acceptors start with `--join`, `autopaxos reconfigure` adds a group,
//! replaces an acceptor and removes a group under a verifying load, the acceptors removed leave
//! by themselves, `autopaxos status` shows each step, and no acknowledged write is lost.

mod common;

use common::{Cluster, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes a copy of the cluster file whose acceptor groups are `groups`; `joined` gives the
/// addresses of acceptors that are not in the original file.
fn cluster_file_with(
    cluster: &Cluster,
    name: &str,
    groups: &[&[u32]],
    joined: &[(u32, SocketAddr)],
) -> PathBuf {
    let mut toml = format!("[cluster]\nid = \"{}\"\nf = 1\n", cluster.cluster_id);
    for node in cluster.nodes.iter().filter(|n| n.role != "acceptor") {
        toml += &format!(
            "\n[[node]]\nid = {}\nrole = \"{}\"\naddress = \"{}\"\n",
            node.id,
            node.role,
            node.addr()
        );
    }
    for (g, members) in groups.iter().enumerate() {
        for &id in members.iter() {
            let addr = match joined.iter().find(|(j, _)| *j == id) {
                Some((_, addr)) => *addr,
                None => cluster.node(id).addr(),
            };
            toml +=
                &format!("\n[[node]]\nid = {id}\nrole = \"acceptor\"\ngroup = {g}\naddress = \"{addr}\"\n");
        }
    }
    let path = cluster.dir.join(name);
    std::fs::write(&path, toml).expect("write a cluster file");
    path
}

/// Runs `autopaxos <args>` to completion; returns (success, stdout, stderr).
fn run(cluster: &Cluster, name: &str, args: &[String]) -> (bool, String, String) {
    let mut proc = Proc::spawn(&cluster.dir, name, args);
    let status = proc.wait(Duration::from_secs(90));
    (status.success(), proc.stdout_text(), proc.stderr_text())
}

fn reconfigure(cluster: &Cluster, to: &Path) -> (bool, String) {
    let args =
        ["reconfigure", "--config", &cluster.config.display().to_string(), "--to", &to.display().to_string()]
            .map(String::from);
    let name = format!("reconfigure-{}", to.file_stem().unwrap().to_string_lossy());
    let (ok, out, err) = run(cluster, &name, &args);
    (ok, format!("{out}{err}"))
}

fn status_json(cluster: &Cluster) -> serde_json::Value {
    let args = ["status", "--config", &cluster.config.display().to_string(), "--json"].map(String::from);
    let (_, out, err) = run(cluster, "status", &args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}):\n{out}\n{err}"))
}

fn epoch(status: &serde_json::Value) -> u64 {
    status["configuration"]["epoch"].as_u64().expect("a configuration in the status")
}

#[test]
fn acceptor_groups_are_added_replaced_and_removed_under_load_without_losing_a_write() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("reconfig");
    let ports = common::free_ports(8);
    let mut joined: Vec<(u32, SocketAddr)> = Vec::new();
    for (i, id) in [11, 12, 13, 14].into_iter().enumerate() {
        let addr = SocketAddr::from(([127, 0, 0, 1], ports[2 * i]));
        let metrics = SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1]));
        let args = [
            "acceptor",
            "--config",
            &cluster.config.display().to_string(),
            "--node",
            &id.to_string(),
            "--join",
            "--listen",
            &addr.to_string(),
            "--metrics-addr",
            &metrics.to_string(),
            "--cores",
            "1",
        ]
        .map(String::from);
        cluster.extra.push(Proc::spawn(&cluster.dir, &format!("join{id}-acceptor"), &args));
        joined.push((id, addr));
    }
    // Before any change: epoch 0, the file's group, a leader, every configured node up.
    let before = status_json(&cluster);
    assert_eq!(epoch(&before), 0, "{before:#}");
    assert!(before["leader"]["node"].as_u64().is_some(), "{before:#}");

    let client = cluster.spawn_client(
        "client",
        &["--duration", "12s", "--clients", "32", "--verify", "--node", "5000", "--cores", "1"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let steps: [(&str, &[&[u32]]); 3] = [
        ("add-group", &[&[3, 4, 5], &[11, 12, 13]]),
        ("replace-acceptor", &[&[14, 4, 5], &[11, 12, 13]]),
        ("remove-group", &[&[11, 12, 13]]),
    ];
    for (i, (name, groups)) in steps.into_iter().enumerate() {
        let to = cluster_file_with(&cluster, &format!("{name}.toml"), groups, &joined);
        let started = Instant::now();
        let (ok, said) = reconfigure(&cluster, &to);
        assert!(ok, "{name} failed: {said}");
        assert!(said.contains(&format!("epoch {} in force from slot", i + 1)), "{name}: {said}");
        eprintln!("{name}: {} ({:.2?})", said.trim(), started.elapsed());
        std::thread::sleep(Duration::from_secs(1));
    }
    // A change that breaks a rule is refused, with the rule.
    let bad = cluster_file_with(&cluster, "bad.toml", &[&[11, 12]], &joined);
    let refused = run(
        &cluster,
        "reconfigure-bad",
        &[
            "reconfigure",
            "--config",
            &cluster.config.display().to_string(),
            "--to",
            &bad.display().to_string(),
        ]
        .map(String::from),
    );
    assert!(!refused.0, "a group of two was accepted: {refused:?}");

    common::assert_verified(&mut cluster.extra[client]);

    // The acceptors no configuration names any more leave by themselves once the log is trimmed
    // past their slots, and their processes exit.
    for id in [3, 4, 5] {
        let status = cluster.proc_mut(id).wait(Duration::from_secs(30));
        assert!(status.success(), "removed acceptor {id} did not leave: {status}");
    }
    // The end: epoch 3, and both replicas at one watermark with one state digest.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let end = status_json(&cluster);
        assert_eq!(epoch(&end), 3, "{end:#}");
        let replicas: Vec<&serde_json::Value> =
            end["nodes"].as_array().unwrap().iter().filter(|n| n["role"] == "replica").collect();
        let digests: Vec<(Option<u64>, Option<&str>)> =
            replicas.iter().map(|r| (r["digest_at"].as_u64(), r["digest"].as_str())).collect();
        if digests.len() == 2 && digests[0].0.is_some() && digests[0] == digests[1] {
            eprintln!("replicas agree: {digests:?}");
            break;
        }
        assert!(Instant::now() < deadline, "replicas' digests differ or are missing: {end:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
