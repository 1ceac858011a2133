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
