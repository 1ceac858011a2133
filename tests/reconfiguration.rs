//! Changing the stateful roles of a running cluster on loopback, with real processes, as an
//! operator does it: new nodes start with `--join`, `autopaxos reconfigure` adds a group of
//! acceptors, replaces an acceptor and removes a group, replaces a replica and replaces the
//! leading proposer, each under a verifying load; the nodes removed leave by themselves,
//! `autopaxos status` shows each step, and no acknowledged write is lost.

mod common;

use common::{assert_replicas_agree, epoch, run, status_json, Cluster, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The stateful roles of a cluster file: acceptor groups, replicas, proposers.
struct Roles<'a> {
    groups: &'a [&'a [u32]],
    replicas: &'a [u32],
    proposers: &'a [u32],
}

/// The example cluster's own replicas and proposers.
const FILE_REPLICAS: &[u32] = &[7, 8];
const FILE_PROPOSERS: &[u32] = &[1, 2];

/// Writes a copy of the cluster file with `roles`; `joined` gives the addresses of nodes that
/// are not in the original file.
fn cluster_file_with(cluster: &Cluster, name: &str, roles: Roles, joined: &[(u32, SocketAddr)]) -> PathBuf {
    let mut toml = format!(
        "[cluster]\nid = \"{}\"\nf = 1\nsecret_file = \"{}\"\n",
        cluster.cluster_id,
        cluster.dir.join("cluster.secret").display()
    );
    let addr = |id: u32| match joined.iter().find(|(j, _)| *j == id) {
        Some((_, addr)) => *addr,
        None => cluster.node(id).addr(),
    };
    let stateless = cluster.nodes.iter().filter(|n| !matches!(n.role, "acceptor" | "replica" | "proposer"));
    for node in stateless {
        toml += &format!(
            "\n[[node]]\nid = {}\nrole = \"{}\"\naddress = \"{}\"\n",
            node.id,
            node.role,
            node.addr()
        );
    }
    for (role, ids) in [("replica", roles.replicas), ("proposer", roles.proposers)] {
        for &id in ids {
            toml += &format!("\n[[node]]\nid = {id}\nrole = \"{role}\"\naddress = \"{}\"\n", addr(id));
        }
    }
    for (g, members) in roles.groups.iter().enumerate() {
        for &id in members.iter() {
            toml += &format!(
                "\n[[node]]\nid = {id}\nrole = \"acceptor\"\ngroup = {g}\naddress = \"{}\"\n",
                addr(id)
            );
        }
    }
    let path = cluster.dir.join(name);
    std::fs::write(&path, toml).expect("write a cluster file");
    path
}

/// Starts node `id` of `role` outside the cluster file (`<role> --join`), listening on a free
/// port; returns its address.
fn join(cluster: &mut Cluster, role: &str, id: u32) -> SocketAddr {
    let ports = common::free_ports(2);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let metrics = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let args = cluster.join_args(role, id, addr, metrics);
    cluster.extra.push(Proc::spawn(&cluster.dir, &format!("join{id}-{role}"), &args));
    addr
}

fn reconfigure(cluster: &Cluster, to: &Path) -> (bool, String) {
    let args =
        ["reconfigure", "--config", &cluster.config.display().to_string(), "--to", &to.display().to_string()]
            .map(String::from);
    let name = format!("reconfigure-{}", to.file_stem().unwrap().to_string_lossy());
    let (ok, out, err) = run(cluster, &name, &args);
    (ok, format!("{out}{err}"))
}

#[test]
fn acceptor_groups_are_added_replaced_and_removed_under_load_without_losing_a_write() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("reconfig");
    let joined: Vec<(u32, SocketAddr)> =
        [11, 12, 13, 14].into_iter().map(|id| (id, join(&mut cluster, "acceptor", id))).collect();
    // Before any change: epoch 0, the file's group, a leader, every configured node up.
    let before = status_json(&cluster);
    assert_eq!(epoch(&before), 0, "{before:#}");
    assert!(before["leader"]["node"].as_u64().is_some(), "{before:#}");

    // The three changes take about 6 s from here (2 s of load first, then each change and 1 s of load
    // after it); the client runs a few seconds beyond them, and no longer (it reads back every write).
    let client = cluster.spawn_client(
        "client",
        &["--duration", "8s", "--clients", "32", "--verify", "--node", "5000", "--cores", "1"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let steps: [(&str, &[&[u32]]); 3] = [
        ("add-group", &[&[3, 4, 5], &[11, 12, 13]]),
        ("replace-acceptor", &[&[14, 4, 5], &[11, 12, 13]]),
        ("remove-group", &[&[11, 12, 13]]),
    ];
    for (i, (name, groups)) in steps.into_iter().enumerate() {
        let roles = Roles { groups, replicas: FILE_REPLICAS, proposers: FILE_PROPOSERS };
        let to = cluster_file_with(&cluster, &format!("{name}.toml"), roles, &joined);
        let started = Instant::now();
        let (ok, said) = reconfigure(&cluster, &to);
        assert!(ok, "{name} failed: {said}");
        assert!(said.contains(&format!("epoch {} in force from slot", i + 1)), "{name}: {said}");
        eprintln!("{name}: {} ({:.2?})", said.trim(), started.elapsed());
        std::thread::sleep(Duration::from_secs(1));
    }
    // A change that breaks a rule is refused, with the rule.
    let roles = Roles { groups: &[&[11, 12]], replicas: FILE_REPLICAS, proposers: FILE_PROPOSERS };
    let bad = cluster_file_with(&cluster, "bad.toml", roles, &joined);
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

    common::finish_client(&mut cluster, client);

    // The acceptors no configuration names any more leave by themselves once the log is trimmed
    // past their slots, and their processes exit.
    for id in [3, 4, 5] {
        let status = cluster.proc_mut(id).wait(Duration::from_secs(30));
        assert!(status.success(), "removed acceptor {id} did not leave: {status}");
    }
    // The end: epoch 3, and both replicas at one watermark with one state digest.
    assert_replicas_agree(&cluster, 3);
}

#[test]
fn a_replica_and_the_leading_proposer_are_replaced_under_load_without_losing_a_write() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("replace");
    let joined = [(21, join(&mut cluster, "replica", 21)), (22, join(&mut cluster, "proposer", 22))];
    // Both changes and the removed nodes' leaving take about 3 s from here (2 s of load first); the
    // client runs a few seconds beyond them, and no longer (it reads back every write).
    let client = cluster.spawn_client(
        "client",
        &["--duration", "6s", "--clients", "32", "--verify", "--node", "5000", "--cores", "1"],
    );
    let load_started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let group: &[&[u32]] = &[&[3, 4, 5]];

    // Replica 8 is replaced by replica 21, which starts empty and is taught the state.
    let roles = Roles { groups: group, replicas: &[7, 21], proposers: FILE_PROPOSERS };
    let to = cluster_file_with(&cluster, "replace-replica.toml", roles, &joined);
    let (ok, said) = reconfigure(&cluster, &to);
    assert!(ok && said.contains("epoch 1 in force from slot"), "replacing replica 8 failed: {said}");
    eprintln!("replace-replica: {}", said.trim());
    let status = cluster.proc_mut(8).wait(Duration::from_secs(30));
    assert!(status.success(), "removed replica 8 did not leave: {status}");
    eprintln!("replica 8 left {:.2?} after the load started", load_started.elapsed());

    // The leading proposer is replaced by proposer 22: it hands over, and leaves.
    let leader = status_json(&cluster)["leader"]["node"].as_u64().expect("a leader") as u32;
    let other = FILE_PROPOSERS.iter().copied().find(|&p| p != leader).expect("two proposers");
    let roles = Roles { groups: group, replicas: &[7, 21], proposers: &[other, 22] };
    let to = cluster_file_with(&cluster, "replace-leader.toml", roles, &joined);
    let started = Instant::now();
    let (ok, said) = reconfigure(&cluster, &to);
    assert!(ok && said.contains("epoch 2 in force from slot"), "replacing leader {leader} failed: {said}");
    eprintln!("replace-leader {leader}: {} ({:.2?})", said.trim(), started.elapsed());
    let status = cluster.proc_mut(leader).wait(Duration::from_secs(30));
    assert!(status.success(), "removed leader {leader} did not leave: {status}");
    eprintln!("leader {leader} left {:.2?} after the load started", load_started.elapsed());

    common::finish_client(&mut cluster, client);
    let end = assert_replicas_agree(&cluster, 2);
    let new_leader = end["leader"]["node"].as_u64().expect("a leader after the change") as u32;
    assert!([other, 22].contains(&new_leader), "leader {new_leader} is not a proposer of epoch 2: {end:#}");
    assert_eq!(end["configuration"]["proposers"], serde_json::json!([other, 22]), "{end:#}");
}
