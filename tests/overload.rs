//! Overload (issue 14) on a real cluster: every node its own process, queues bounded tight in the
//! cluster file, far more closed-loop clients than those queues hold. The batcher must refuse the
//! excess at once with `Busy` (never batched), the clients back off and retry the same command,
//! nothing acknowledged may be lost, and the cluster must serve normally once the load is gone.

mod common;

use common::{metric_sum, Cluster};
use std::time::Duration;

/// `...; N busy replies` at the end of the client's summary line → N.
fn busy_replies(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.ends_with("busy replies"))?;
    line.rsplit("; ").next()?.split_whitespace().next()?.parse().ok()
}

#[test]
fn far_above_capacity_the_batcher_sheds_with_busy_loses_nothing_acknowledged_and_serves_normally_after() {
    let _serial = common::serialize();
    // A window of 20 slots of 10 commands, 2 batches waiting make the leader full, 1 held batch
    // makes the batcher refuse: about 300 commands in the cluster's queues, against 600 clients.
    // (Few enough that what is admitted is served within the clients' retry timeout: otherwise
    // retried duplicates, not refusals, would be what this test sees.)
    let mut cluster = Cluster::start_with("overload", |_| {
        "batch_size = 10\nmax_in_flight_slots = 20\nleader_full_waiting_batches = 2\n\
         max_waiting_batches = 8\nbatcher_max_held_batches = 1\n"
            .to_string()
    });
    let batcher = cluster.nodes.iter().find(|n| n.role == "batcher").expect("a batcher").id;

    let (ok, stdout, stderr) = cluster.run_client(
        "overload",
        &["--duration", "2s", "--clients", "600", "--verify", "--node", "5000", "--cores", "1"],
        Duration::from_secs(60),
    );
    let context = format!("stdout:\n{stdout}\nstderr (tail):\n{}", tail_lines(&stderr, 30));
    assert!(ok, "the overloaded client failed:\n{context}");
    let (intact, lost) =
        common::verify_counts(&stdout).unwrap_or_else(|| panic!("no verify line:\n{context}"));
    assert_eq!(lost, 0, "an acknowledged write was lost under overload:\n{context}");
    assert!(intact > 0, "nothing acknowledged under overload:\n{context}");
    let busy = busy_replies(&stdout).unwrap_or_else(|| panic!("no busy count:\n{context}"));
    assert!(busy > 0, "600 clients against ~300 queued commands: some must be refused:\n{context}");
    let shed = metric_sum(&cluster.metrics(batcher), "autopaxos_commands_shed_total", &[]);
    assert!(shed > 0.0, "the batcher counts what it shed");
    let handed_back = metric_sum(
        &cluster.metrics(1),
        "autopaxos_dropped_messages_total",
        &[("reason", "proposer: waiting queue full, batch handed back")],
    );
    println!("overload: {intact} writes read back intact, {busy} busy replies, {shed} shed at the batcher, {handed_back} batches handed back by the leader");

    // The load is gone: a few clients are served normally, and are not refused.
    let (ok, stdout, stderr) = cluster.run_client(
        "after",
        &["--duration", "1s", "--clients", "4", "--verify", "--node", "5001", "--cores", "1"],
        Duration::from_secs(30),
    );
    let context = format!("stdout:\n{stdout}\nstderr (tail):\n{}", tail_lines(&stderr, 30));
    assert!(ok, "the client after the overload failed:\n{context}");
    let (intact, lost) =
        common::verify_counts(&stdout).unwrap_or_else(|| panic!("no verify line:\n{context}"));
    assert!(intact > 0 && lost == 0, "not served normally after the overload:\n{context}");
    assert_eq!(busy_replies(&stdout), Some(0), "4 clients fit the queues: none refused:\n{context}");
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
