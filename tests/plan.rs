//! `autopaxos plan` as a user runs it: sizing a cluster from the fixed capacities file in `tests/data/`
//! (answers worked out by hand below), and clear errors with exit status 1 on bad input.

use std::process::{Command, Output};

const FIXED: &str = "tests/data/capacities-fixed.toml";

/// Runs the binary from the package root, so the relative paths in the tests resolve.
fn autopaxos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autopaxos"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn last_json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"))
}

fn close(got: &serde_json::Value, want: f64) -> bool {
    got.as_f64().is_some_and(|g| (g - want).abs() <= 1e-6 * want.abs().max(1.0))
}

#[test]
fn plan_sizes_a_cluster_for_a_million_commands_from_the_fixed_capacities() {
    let out = autopaxos(&["plan", "--target-cmds", "1000000", "--capacities", FIXED, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = last_json_line(&out);
    // Defaults: headroom 0.3 (usable = 0.7 × measured), c5.xlarge (4 vCPUs), f=1.
    //   role          measured  usable   nodes                          instances  utilisation
    //   batcher       600k      420k     ⌈1M/420k = 2.38⌉ = 3           1          1M/1.26M = 0.7937
    //   proposer      2.4M      1.68M    f+1 = 2                        1          1M/1.68M = 0.5952
    //   proxy-leader  400k      280k     ⌈1M/280k = 3.57⌉ = 4           1          1M/1.12M = 0.8929
    //   acceptor      700k      490k     ⌈1M/490k = 2.04⌉ = 3 groups×3 = 9  3      1M/1.47M = 0.6803
    //   replica       1.8M      1.26M    f+1 = 2                        1          1M/1.26M = 0.7937
    //   unbatcher     900k      630k     ⌈1M/630k = 1.59⌉ = 2           1          1M/1.26M = 0.7937
    // Total 8 instances; bottleneck proxy-leader; max = min(proposer 1.68M, replica 1.26M) = 1.26M.
    assert_eq!(plan["target_cmds"], 1_000_000);
    assert!(close(&plan["headroom"], 0.3), "{plan}");
    assert_eq!(plan["instance_type"], "c5.xlarge");
    assert_eq!(plan["f"], 1);
    let want = [
        ("batcher", 3, 1, 420e3, 1.0 / 1.26, 1, true),
        ("proposer", 2, 1, 1.68e6, 1.0 / 1.68, 2, false),
        ("proxy-leader", 4, 1, 280e3, 1.0 / 1.12, 1, true),
        ("acceptor", 9, 3, 490e3, 1.0 / 1.47, 3, true),
        ("replica", 2, 1, 1.26e6, 1.0 / 1.26, 2, false),
        ("unbatcher", 2, 1, 630e3, 1.0 / 1.26, 1, true),
    ];
    let roles = plan["roles"].as_array().expect("roles is an array");
    assert_eq!(roles.len(), want.len(), "{plan}");
    for (r, (role, nodes, instances, per_node, util, minimum, scales_out)) in roles.iter().zip(want) {
        assert_eq!(r["role"], role, "{r}");
        assert_eq!(r["nodes"], nodes, "{r}");
        assert_eq!(r["instances"], instances, "{r}");
        assert!(close(&r["cmds_per_sec_per_node"], per_node), "{r}");
        assert!(close(&r["utilisation"], util), "{r}");
        assert_eq!(r["minimum_nodes"], minimum, "{r}");
        assert_eq!(r["scales_out"], scales_out, "{r}");
    }
    assert_eq!(plan["bottleneck"], "proxy-leader");
    assert_eq!(plan["reachable"], true);
    assert!(close(&plan["max_cmds_per_sec"], 1.26e6), "{plan}");
    assert_eq!(plan["total_instances"], 8);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("* proxy-leader"), "the table marks the bottleneck:\n{stdout}");
}

#[test]
fn a_target_beyond_the_replicas_is_reported_unreachable_with_the_maximum() {
    // 2M > usable replica 1.26M: the plan is still printed, exit status 0, the replica limits it.
    let out = autopaxos(&["plan", "--target-cmds", "2000000", "--capacities", FIXED, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = last_json_line(&out);
    assert_eq!(plan["reachable"], false);
    assert_eq!(plan["bottleneck"], "replica");
    assert!(close(&plan["max_cmds_per_sec"], 1.26e6), "{plan}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT reachable"));
}

#[test]
fn a_missing_capacities_file_is_a_clear_error_with_exit_status_1() {
    let out =
        autopaxos(&["plan", "--target-cmds", "1000000", "--capacities", "tests/data/no-such-file.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: cannot read capacities file tests/data/no-such-file.toml"),
        "the error names the file: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no plan is printed");
}

#[test]
fn bad_values_are_clear_errors_with_exit_status_1() {
    let cases: [(&[&str], &str); 4] = [
        (&["--headroom", "1"], "--headroom must be at least 0 and below 1"),
        (&["--instance-type", "m5.large"], "unknown instance type 'm5.large'; known types: c5.large"),
        (&["--target-cmds", "0"], "--target-cmds must be at least 1"),
        (&["--f", "0"], "--f must be at least 1"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["plan", "--capacities", FIXED];
        if !extra.contains(&"--target-cmds") {
            args.extend(["--target-cmds", "1000"]);
        }
        args.extend(extra);
        let out = autopaxos(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

#[test]
fn a_malformed_file_or_a_missing_role_names_the_file_and_the_field() {
    let dir = std::env::temp_dir().join(format!("autopaxos-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let fixed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/capacities-fixed.toml"))
            .expect("the fixed file");

    // A field dropped from one role: toml names it.
    let malformed = dir.join("malformed.toml");
    std::fs::write(&malformed, fixed.replacen("cmds_per_sec_per_core = 400000.0\n", "", 1)).expect("write");
    let out = autopaxos(&["plan", "--target-cmds", "1000", "--capacities", malformed.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("malformed.toml is malformed") && stderr.contains("cmds_per_sec_per_core"),
        "{stderr}"
    );

    // A role misspelt: the missing role and the file are named.
    let misspelt = dir.join("misspelt.toml");
    std::fs::write(&misspelt, fixed.replace("[roles.proxy-leader]", "[roles.proxy_leader]")).expect("write");
    let out = autopaxos(&["plan", "--target-cmds", "1000", "--capacities", misspelt.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("misspelt.toml: no capacity for role 'proxy-leader'")
            && stderr.contains("proxy_leader"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
