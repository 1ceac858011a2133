//! `autopaxos top` against real processes: a local cluster under load (every role appears, the
//! replicas execute commands, one proposer leads), and a cluster file whose metrics address nobody
//! serves (its nodes show as down and top still stops after --count frames).

mod common;

use common::{free_ports, Proc, TempDir, BIN};
use std::process::Command;
use std::time::{Duration, Instant};

/// Roles `autopaxos local` runs (its clients included).
const LOCAL_ROLES: [&str; 7] =
    ["client", "batcher", "proposer", "proxy-leader", "acceptor", "replica", "unbatcher"];

/// Runs `autopaxos top args...` to its end, within `limit`; (success, stdout, stderr).
fn top(dir: &std::path::Path, name: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut proc = Proc::spawn(dir, name, &args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let status = proc.wait(limit);
    (status.success(), proc.stdout_text(), proc.stderr_text())
}

/// Waits until something answers HTTP at `addr` (local's exporter is up), at most `limit`.
fn wait_served(addr: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while autopaxos::autoscale::scrape::fetch(addr.parse().unwrap(), Duration::from_millis(500)).is_err() {
        assert!(Instant::now() < deadline, "nothing served /metrics at {addr} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Frames of `--plain` output: each starts with its header line.
fn plain_frames(stdout: &str) -> Vec<String> {
    let mut frames: Vec<String> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("autopaxos top") {
            frames.push(String::new());
        }
        if let Some(f) = frames.last_mut() {
            f.push_str(line);
            f.push('\n');
        }
    }
    frames
}

#[test]
fn top_shows_every_role_of_a_loaded_local_cluster_its_replicas_executing_and_one_leader() {
    let _serial = common::serialize();
    let dir = TempDir::new("top-local");
    let metrics = format!("127.0.0.1:{}", free_ports(1)[0]);
    // Durable (acceptors sync, so their latency column has values), in the test's own directory:
    // killing `local` at the end leaves nothing behind once the directory is removed.
    let data = dir.0.join("data");
    let mut local = Proc::spawn(
        &dir.0,
        "local",
        &[
            "local",
            "--duration",
            "12s",
            "--metrics-addr",
            &metrics,
            "--clients",
            "64",
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(String::from),
    );
    wait_served(&metrics, Duration::from_secs(20));
    // The warm-up second: commands are flowing before top's first scrape.
    std::thread::sleep(Duration::from_secs(2));

    let (ok, stdout, stderr) = top(
        &dir.0,
        "top-plain",
        &["top", "--target", &metrics, "--count", "3", "--plain"],
        Duration::from_secs(20),
    );
    assert!(ok, "top failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains('\x1b'), "--plain prints no escape codes:\n{stdout}");
    let frames = plain_frames(&stdout);
    assert_eq!(frames.len(), 3, "--count 3 prints 3 frames:\n{stdout}");
    let last = &frames[2];
    println!("{last}");
    assert!(last.contains("targets 1/1 reachable"), "{last}");
    for role in LOCAL_ROLES {
        assert!(last.lines().any(|l| l.starts_with(role)), "role {role} missing:\n{last}");
    }
    assert!(last.lines().next().unwrap().contains("leader: proposer "), "one leader named:\n{last}");
    let leaders = last.lines().filter(|l| l.starts_with("proposer") && l.contains(" leader ")).count();
    assert_eq!(leaders, 1, "exactly one proposer marked leader:\n{last}");

    let (ok, stdout, stderr) = top(
        &dir.0,
        "top-json",
        &["top", "--target", &metrics, "--count", "3", "--json"],
        Duration::from_secs(20),
    );
    assert!(ok, "top --json failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let frames: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(frames.len(), 3, "{stdout}");
    let last = &frames[2];
    let nodes = last["nodes"].as_array().expect("nodes");
    for role in LOCAL_ROLES {
        assert!(nodes.iter().any(|n| n["role"] == role), "role {role} missing: {last}");
    }
    let replicas: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["role"] == "replica").collect();
    assert_eq!(replicas.len(), 2, "{last}");
    for r in &replicas {
        let rate = r["commands_per_sec"].as_f64().unwrap_or_else(|| panic!("replica without a rate: {r}"));
        assert!(rate > 0.0, "a replica of a loaded cluster receives commands: {r}");
        assert!(r["lag_slots"].is_u64(), "a replica has a lag: {r}");
        assert_eq!(r["state"], "up", "{r}");
    }
    let acceptors_synced = nodes
        .iter()
        .filter(|n| n["role"] == "acceptor" && n["latency_of"] == "fsync")
        .any(|n| n["p99_seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert!(acceptors_synced, "durable acceptors sync under load, and their fsync p99 shows: {last}");
    let leaders: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "{last}");
    assert_eq!(leaders[0]["role"], "proposer");
    assert_eq!(last["leaders"].as_array().map(Vec::len), Some(1));
    assert!(frames[0]["nodes"][0]["commands_per_sec"].is_null(), "the first frame has no rates");

    local.kill();
}

#[test]
fn a_configured_node_nobody_serves_shows_as_down_and_top_stops_after_count_frames() {
    let dir = TempDir::new("top-down");
    // Port 1: privileged, so no test's cluster can be bound there, and nothing else listens on it. A port
    // from `free_ports` is released at once and was once handed to a cluster running alongside.
    let unserved = "127.0.0.1:1";
    let out = Command::new(BIN).args(["config", "--example"]).output().expect("run autopaxos config");
    let example = String::from_utf8(out.stdout).expect("utf-8");
    // Every node names the same metrics address, where nothing listens; no secret is needed to look.
    let file: String = example
        .lines()
        .filter(|l| !l.starts_with("secret_file"))
        .map(|l| match l.strip_prefix("metrics_address = ") {
            Some(_) => format!("metrics_address = \"{unserved}\"\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let config = dir.0.join("cluster.toml");
    std::fs::write(&config, file).unwrap();

    let started = Instant::now();
    let (ok, stdout, stderr) = top(
        &dir.0,
        "top",
        &["top", "--config", config.to_str().unwrap(), "--count", "2", "--interval", "300ms"],
        Duration::from_secs(20),
    );
    assert!(ok, "top exits 0 with every node down:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "2 frames at 300 ms took {:?}", started.elapsed());
    let frames = plain_frames(&stdout);
    assert_eq!(frames.len(), 2, "not a terminal: plain frames, --count 2 of them:\n{stdout}");
    let last = &frames[1];
    assert!(last.contains("cluster demo"), "{last}");
    assert!(last.contains("targets 0/1 reachable"), "one distinct address, scraped once:\n{last}");
    assert!(last.contains("no leader"), "{last}");
    let down: Vec<&str> = last.lines().filter(|l| l.contains(" down ")).collect();
    assert_eq!(down.len(), 10, "all 10 nodes of the example are down:\n{last}");
    assert!(down.iter().all(|l| l.contains("refused")), "each names the scrape's error:\n{last}");
}

#[test]
fn local_with_top_draws_the_live_view_while_the_load_runs_then_prints_its_summary() {
    let _serial = common::serialize();
    let dir = TempDir::new("top-alongside");
    let data = dir.0.join("data");
    let args =
        ["local", "--duration", "3s", "--clients", "64", "--top", "--data-dir", data.to_str().unwrap()];
    let (ok, stdout, stderr) = top(&dir.0, "local-top", &args, Duration::from_secs(60));
    assert!(ok, "local --top failed: {stderr}");
    let frames = plain_frames(&stdout);
    assert!(frames.len() >= 2, "expected a frame a second: {stdout}");
    let last = frames.last().unwrap();
    assert!(last.contains("leader: proposer"), "{last}");
    for role in LOCAL_ROLES {
        assert!(last.lines().any(|l| l.starts_with(role)), "{role} missing: {last}");
    }
    // The summary comes after the view, as the last lines.
    let tail: Vec<&str> = stdout.lines().rev().take(3).collect();
    assert!(tail.iter().any(|l| l.contains("cmds/s")), "{stdout}");
}
