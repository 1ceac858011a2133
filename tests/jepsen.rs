//! The Jepsen-style harness, short: a minute of every nemesis (kill, pause, partition, mixed)
//! against a cluster of processes with two gateways, clients over RESP, and the history checked for
//! linearizability. The long run is bench/jepsen.sh.

mod common;

use common::Proc;
use std::time::Duration;

#[test]
fn a_minute_of_kills_pauses_and_partitions_leaves_a_linearizable_history() {
    let _serial = common::serialize();
    let dir = common::TempDir::new("jepsen");
    let args: Vec<String> =
        ["jepsen", "--duration", "50s", "--recovery", "5s", "--json"].map(String::from).to_vec();
    let mut run = Proc::spawn(&dir.0, "jepsen", &args);
    let status = run.wait(Duration::from_secs(180));
    let out = run.stdout_text();
    eprintln!("{out}");
    assert!(status.success(), "the harness failed:\n{out}\n{}", common::tail(&run.stderr, 40));
    let report: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("a JSON report");
    assert_eq!(report["verdict"], "linearizable");
    let faults: Vec<&str> =
        report["faults"].as_array().unwrap().iter().map(|f| f["what"].as_str().unwrap()).collect();
    for kind in ["kill ", "restart ", "pause ", "resume ", "partition ", "heal "] {
        assert!(faults.iter().any(|f| f.starts_with(kind)), "no '{kind}' fault in {faults:?}");
    }
    assert!(report["ok"].as_u64().unwrap() > 1000, "too few operations to mean anything: {}", report["ok"]);
    assert!(report["keys_checked"].as_u64().unwrap() >= 10);
}

/// Processes whose command line mentions `needle` (from /proc).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn a_harness_stopped_by_sigterm_takes_its_node_processes_with_it() {
    let _serial = common::serialize();
    let dir = common::TempDir::new("jepsen-sigterm");
    let keep = dir.0.join("run");
    // Relative to the harness's working directory, as a user types it (the nodes get it absolute).
    let args: Vec<String> = ["jepsen", "--duration", "60s", "--keep", "run"].map(String::from).to_vec();
    let mut run = Proc::spawn(&dir.0, "jepsen", &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !run.stderr_text().contains("cluster serving") {
        assert!(run.is_running(), "the harness exited early:\n{}", common::tail(&run.stderr, 30));
        assert!(std::time::Instant::now() < deadline, "the cluster did not serve within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let needle = keep.to_str().unwrap().to_string();
    // The nodes' cluster files are in the run's directory; the harness names the directory too.
    let nodes = processes_mentioning(&needle).iter().filter(|c| c.contains("--config")).count();
    assert!(nodes >= 10, "expected the harness's node processes, found {nodes}");
    let _ = std::process::Command::new("kill").args(["-TERM", &run.child.id().to_string()]).status();
    let status = run.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", common::tail(&run.stderr, 10));
    // Killed, then reaped by init: give the reaping a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = processes_mentioning(&needle);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_mentioning(&needle);
    }
    assert!(left.is_empty(), "node processes outlived the harness: {left:#?}");
    assert!(run.stderr_text().contains(&format!("killed {nodes} node process(es)")), "{}", run.stderr_text());
}
