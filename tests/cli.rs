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
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("30 seeds, 0 violations (crashes "), "{last}");
    assert!(last.contains("torn writes") && last.contains("corrupt records detected"), "{last}");
}

#[test]
fn sim_replays_one_seed_with_its_trace() {
    let out = autopaxos(&["sim", "--seed", "3", "--trace"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("Phase2a") && stdout.contains("leads with ballot"), "the trace shows the run");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("1 seeds, 0 violations (f="), "{last}");
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

#[test]
fn local_refuses_a_load_it_could_not_measure_before_it_starts_a_node() {
    for (args, says) in [
        (&["local", "--value-size", "65537"][..], "values are at most 65536 bytes"),
        (&["local", "--value-size", "99999999999"], "values are at most 65536 bytes"),
        (&["local", "--clients", "0"], "at least one client"),
        (&["local", "--duration", "0s"], "give more than 0s"),
    ] {
        let out = autopaxos(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("f=1 cluster"), "{args:?} started a cluster: {stderr}");
    }
}

fn last_json_line(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"))
}

#[test]
fn local_serves_a_cluster_under_load_and_reports_json_as_its_last_line() {
    let out = autopaxos(&["local", "--duration", "1s", "--clients", "64", "--batch-size", "10", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = last_json_line(&out);
    for field in ["cmds_per_sec", "p50_us", "p99_us", "batch_size", "clients", "duration_s"] {
        assert!(report.get(field).is_some(), "{field} missing from {report}");
    }
    assert!(report["cmds_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["batch_size"], 10);
    assert_eq!(report["clients"], 64);
}

#[test]
fn executors_land_on_the_cores_the_process_may_use_not_every_online_core() {
    if Command::new("taskset").arg("--version").output().is_err() {
        eprintln!("taskset not installed; skipping");
        return;
    }
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            env!("CARGO_BIN_EXE_autopaxos"),
            "local",
            "--duration",
            "1s",
            "--clients",
            "16",
            "--json",
        ])
        .output()
        .expect("taskset runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(last_json_line(&out)["cores"], serde_json::json!([1]));
}

#[test]
fn config_example_prints_a_cluster_file_that_loads() {
    let out = autopaxos(&["config", "--example"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let file = autopaxos::runtime::config::ClusterFile::parse(&text, "example").expect("the example loads");
    assert_eq!(file.addresses.len(), 10);
}

#[test]
fn a_role_refuses_a_node_of_another_role_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("autopaxos-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.toml");
    std::fs::write(&path, autopaxos::runtime::config::EXAMPLE).unwrap();
    let out = autopaxos(&["acceptor", "--config", path.to_str().unwrap(), "--node", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster.secret") && stderr.contains("No such file"), "{stderr}");
    let _ = std::fs::remove_file(dir.join("cluster.secret"));
    assert!(autopaxos(&["config", "--new-secret", dir.join("cluster.secret").to_str().unwrap()])
        .status
        .success());
    let out = autopaxos(&["acceptor", "--config", path.to_str().unwrap(), "--node", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node 1 is a proposer"), "{stderr}");
    // Every replica runs the cluster file's state machine: a flag may only repeat it.
    let replica = |machine: &str| {
        let args = ["replica", "--config", path.to_str().unwrap(), "--node", "7", "--state-machine", machine];
        autopaxos(&[&args[..], &["--in-memory", "--cores", "0"]].concat())
    };
    let out = replica("noop");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--state-machine noop, but the cluster file says state_machine = \"kv\""),
        "{stderr}"
    );
    // Stateful nodes leave by reconfiguration: `leave` says so at once instead of waiting it out.
    let out = autopaxos(&["leave", "--config", path.to_str().unwrap(), "--node", "3"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node 3 is an acceptor: acceptors, replicas and proposers leave by a change"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn prometheus_targets_come_from_the_metrics_addresses_and_a_file_without_any_is_refused() {
    let dir = std::env::temp_dir().join(format!("autopaxos-cli-targets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = autopaxos::runtime::config::EXAMPLE;
    // Two nodes of one process share an address: one target for both, roles and ids joined.
    let shared =
        example.replace("metrics_address = \"127.0.0.1:16004\"", "metrics_address = \"127.0.0.1:16003\"");
    std::fs::write(dir.join("shared.toml"), shared).unwrap();
    let out = dir.join("targets.json");
    let shared = dir.join("shared.toml");
    let args =
        ["config", "--config", shared.to_str().unwrap(), "--prometheus-targets", out.to_str().unwrap()];
    let ran = autopaxos(&args);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let groups = json.as_array().unwrap();
    assert_eq!(groups.len(), 9, "{json}");
    let acceptors = groups.iter().find(|g| g["targets"][0] == "127.0.0.1:16003").unwrap();
    assert_eq!(acceptors["labels"]["node"], "3,4", "{json}");
    assert_eq!(acceptors["labels"]["role"], "acceptor", "{json}");
    // No node names one: a clear error, and no file written.
    let bare: String =
        example.lines().filter(|l| !l.starts_with("metrics_address")).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.join("bare.toml"), &bare).unwrap();
    let none = dir.join("none.json");
    let bare = dir.join("bare.toml");
    let args = ["config", "--config", bare.to_str().unwrap(), "--prometheus-targets", none.to_str().unwrap()];
    let ran = autopaxos(&args);
    assert_eq!(ran.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ran.stderr).contains("no node names a metrics_address"));
    assert!(!none.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
