//! `autopaxos bench` and the standalone mocks, briefly, for every role: the output must be well
//! formed and show real traffic. No test asserts a speed (these machines are shared and noisy);
//! the figures live in bench/ and tuning/.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn autopaxos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autopaxos"))
}

/// Benchmarks compete for the same two cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_role_benchmarks_to_a_well_formed_report_with_real_throughput() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for role in ["batcher", "proposer", "proxy-leader", "acceptor", "replica", "unbatcher"] {
        let out = autopaxos()
            .args(["bench", role, "--duration", "500ms", "--batch-size", "10", "--json"])
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{role}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let last = stdout.lines().last().unwrap_or_default();
        let report: serde_json::Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{role}: last line is not JSON ({e}): {stdout}"));
        for field in [
            "role",
            "msgs_per_sec",
            "cmds_per_sec",
            "bytes_per_sec",
            "p50_us",
            "p99_us",
            "wire_ceiling_msgs_per_sec",
            "ratio_to_ceiling",
            "batch_size",
            "read_budget",
            "mock_saturated",
        ] {
            assert!(report.get(field).is_some(), "{role}: {field} missing from {report}");
        }
        assert_eq!(report["role"], role);
        assert_eq!(report["batch_size"], 10);
        for positive in
            ["msgs_per_sec", "cmds_per_sec", "bytes_per_sec", "wire_ceiling_msgs_per_sec", "ratio_to_ceiling"]
        {
            assert!(
                report[positive].as_f64().unwrap_or(0.0) > 0.0,
                "{role}: {positive} is not positive: {report}"
            );
        }
        eprintln!("{role}: {last}");
    }
}

#[test]
fn a_role_sandwiched_between_standalone_mocks_carries_traffic_in_any_launch_order() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("autopaxos-mocks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The example cluster on free ports (bind port 0, read it, let it go).
    let mut file = autopaxos::runtime::config::EXAMPLE.to_string();
    for n in 1..=10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        file = file.replace(&format!("127.0.0.1:{}", 7000 + n), &format!("127.0.0.1:{port}"));
    }
    let config = dir.join("cluster.toml");
    std::fs::write(&config, file).unwrap();
    // The example names `cluster.secret` beside it.
    let secret = dir.join("cluster.secret");
    if !secret.exists() {
        assert!(autopaxos().args(["config", "--new-secret"]).arg(&secret).status().unwrap().success());
    }
    let config = config.to_str().unwrap();
    let spawn = |args: &[&str]| {
        autopaxos().args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the binary runs")
    };
    // Downstream first, the role last: launch order must not matter.
    let downstream = spawn(&["mock-downstream", "proxy-leader", "--config", config, "--duration", "2s"]);
    let upstream =
        spawn(&["mock-upstream", "proxy-leader", "--config", config, "--duration", "2s", "--rate", "2000"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut role = autopaxos()
        .args(["proxy-leader", "--config", config, "--node", "6", "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let down = downstream.wait_with_output().unwrap();
    let up = upstream.wait_with_output().unwrap();
    let _ = role.kill();
    let _ = role.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(Instant::now() < deadline);
    let counted = |out: &std::process::Output| -> u64 {
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default().to_string();
        last.rsplit_once('(').and_then(|(_, n)| n.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    };
    let (sent, arrived) = (counted(&up), counted(&down));
    eprintln!("sent {sent} Propose into the proxy leader, {arrived} Chosen came out");
    assert!(sent > 0 && arrived > 0, "sent {sent}, arrived {arrived}");
}
