//! The `autopaxos` binary as a user runs it.

use std::process::Command;

fn autopaxos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autopaxos")).args(args).output().expect("the binary runs")
}

#[test]
fn sim_prints_a_summary_line_and_exits_zero_when_all_seeds_pass() {
    let out = autopaxos(&["sim", "--seeds", "30", "--start", "1000", "--faults", "light"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().last(), Some("30 seeds, 0 violations"));
}

#[test]
fn sim_replays_one_seed_with_its_trace() {
    let out = autopaxos(&["sim", "--seed", "3", "--trace"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("Phase2a") && stdout.contains("leads with ballot"), "the trace shows the run");
    assert_eq!(stdout.lines().last(), Some("1 seeds, 0 violations"));
    let again = autopaxos(&["sim", "--seed", "3", "--trace"]);
    assert_eq!(out.stdout, again.stdout, "a replay is exact");
}

#[test]
fn bad_arguments_get_a_clear_error_and_exit_status_2() {
    for args in [&["sim", "--faults", "apocalyptic"][..], &["sim", "--seeds", "many"], &["sim", "--trace"]] {
        let out = autopaxos(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error:"), "{args:?}");
    }
}
