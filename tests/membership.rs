//! Membership on loopback with real processes: stateless nodes join a running cluster under load (one
//! of them booted from user-data, as the autoscaler launches nodes) and take work; others drain and
//! leave while the load runs, and no acknowledged write is lost.

mod common;

use common::{metric_sum, scrape, Cluster, Proc};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

struct Joiner {
    id: u32,
    role: &'static str,
    addr: SocketAddr,
    metrics: SocketAddr,
    proc: Proc,
}

/// Bytes the joined node has sent: commands flowing through it, whatever the cluster's throughput.
fn bytes_out(j: &Joiner) -> f64 {
    scrape(j.metrics).map_or(0.0, |text| metric_sum(&text, "autopaxos_bytes_out_total", &[]))
}

fn leave(cluster: &Cluster, node: u32, addr: Option<SocketAddr>) -> (bool, String) {
    // `autopaxos leave`, as an operator runs it.
    let mut args = vec![
        "leave".to_string(),
        "--config".into(),
        cluster.config.display().to_string(),
        "--node".into(),
        node.to_string(),
        "--timeout".into(),
        "30s".into(),
    ];
    if let Some(addr) = addr {
        args.extend(["--addr".to_string(), addr.to_string()]);
    }
    let mut proc = Proc::spawn(&cluster.dir, &format!("leave{node}"), &args);
    let status = proc.wait(Duration::from_secs(45));
    (status.success(), format!("{}{}", proc.stdout_text(), proc.stderr_text()))
}

#[test]
fn stateless_nodes_join_under_load_serve_and_leave_by_draining_without_losing_a_write() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("membership");
    let ports = common::free_ports(6);
    let mut joiners: Vec<Joiner> = Vec::new();
    for (i, (id, role)) in [(11, "unbatcher"), (12, "proxy-leader"), (13, "batcher")].into_iter().enumerate()
    {
        let addr = SocketAddr::from(([127, 0, 0, 1], ports[2 * i]));
        let metrics = SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1]));
        let args: Vec<String> = if role == "batcher" {
            // The batcher boots from user-data as an autoscaled instance would (`join = true`).
            let user_data = cluster.dir.join("user-data-13.toml");
            let file = std::fs::read_to_string(&cluster.config).expect("cluster file");
            let text = format!(
                "cluster = \"{}\"\nrole = \"batcher\"\nnodes = [{id}]\njoin = true\nadvertise = \"{addr}\"\n\
                 base_port = {}\nmetrics_addr = \"{metrics}\"\ncluster_file = '''\n{file}'''\n",
                cluster.cluster_id,
                addr.port()
            );
            std::fs::write(&user_data, text).expect("write user-data");
            ["boot", "--user-data", &user_data.display().to_string(), "--cores", "1"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            cluster.join_args(role, id, addr, metrics)
        };
        let proc = Proc::spawn(&cluster.dir, &format!("join{id}-{role}"), &args);
        joiners.push(Joiner { id, role, addr, metrics, proc });
    }

    let client = cluster.spawn_client(
        "client",
        &["--duration", "5s", "--clients", "32", "--verify", "--node", "5000", "--cores", "1"],
    );
    let load_started = Instant::now();
    // Every joined node takes work: it carries commands, about a hundred times the bytes an idle
    // joined node sends in ten seconds (192 measured). Bytes, not frames: on a slow disk fewer,
    // fuller batches carry the load.
    let deadline = Instant::now() + Duration::from_secs(30);
    for j in &mut joiners {
        loop {
            let sent = bytes_out(j);
            if sent > 16.0 * 1024.0 {
                eprintln!("joined {} {} has sent {sent} bytes", j.role, j.id);
                break;
            }
            assert!(j.proc.is_running(), "joined {} {} exited:\n{}", j.role, j.id, j.proc.stderr_text());
            assert!(Instant::now() < deadline, "joined {} {} took no work ({sent} bytes out)", j.role, j.id);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Under the same load, the configured batcher and the joined proxy leader drain and leave.
    let started = Instant::now();
    let (ok, said) = leave(&cluster, 9, None);
    assert!(ok, "batcher 9 did not leave: {said}");
    // The proxy leader is drained by the autoscaler's drain step, as before it terminates a machine.
    let proxy = joiners.iter().find(|j| j.id == 12).expect("joined");
    let drained = autopaxos::autoscale::drain_node(
        (&cluster.cluster_id, Some(&cluster.secret())),
        Some(proxy.addr),
        Duration::from_secs(30),
    );
    assert_eq!(drained.expect("proxy leader 12 drains"), autopaxos::autoscale::Drained::Left);
    eprintln!("batcher 9 and proxy leader 12 drained and left in {:.2?}", started.elapsed());
    // A node that left exits by itself.
    let status = joiners.iter_mut().find(|j| j.id == 12).expect("joined").proc.wait(Duration::from_secs(10));
    assert!(status.success(), "the proxy leader that left exited with {status}");
    let status = cluster.proc_mut(9).wait(Duration::from_secs(10));
    assert!(status.success(), "the batcher that left exited with {status}");
    eprintln!("joins and leaves done {:.2?} after the load started", load_started.elapsed());

    let proc = &mut cluster.extra[client];
    let status = proc.wait(Duration::from_secs(90));
    let stdout = proc.stdout_text();
    let context = format!("client stdout:\n{stdout}\nclient stderr:\n{}", common::tail(&proc.stderr, 40));
    assert!(status.success(), "the client failed ({status}):\n{context}");
    let (intact, lost) =
        common::verify_counts(&stdout).unwrap_or_else(|| panic!("no verify: line\n{context}"));
    assert_eq!(lost, 0, "an acknowledged write was lost:\n{context}");
    assert!(intact > 0, "nothing was read back:\n{context}");

    // The last proxy leader in service (6, now that 12 left) cannot leave: the request times out.
    let mut args: Vec<String> = ["leave", "--config", &cluster.config.display().to_string(), "--node", "6"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--timeout".to_string(), "2s".to_string()]);
    let mut refused = Proc::spawn(&cluster.dir, "leave6", &args);
    let status = refused.wait(Duration::from_secs(20));
    assert!(!status.success(), "the last proxy leader left:\n{}", refused.stdout_text());
    assert!(refused.stderr_text().contains("had not drained"), "{}", refused.stderr_text());
}

#[test]
fn a_joined_proxy_leader_takes_work_again_after_the_leader_restarts_without_memory() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("rejoin");
    assert_eq!(cluster.elections_won(1), 1.0, "proposer 1 runs first, so it leads");
    let ports = common::free_ports(2);
    let (addr, metrics) =
        (SocketAddr::from(([127, 0, 0, 1], ports[0])), SocketAddr::from(([127, 0, 0, 1], ports[1])));
    let args = cluster.join_args("proxy-leader", 12, addr, metrics);
    let mut joiner = Joiner {
        id: 12,
        role: "proxy-leader",
        addr,
        metrics,
        proc: Proc::spawn(&cluster.dir, "join12", &args),
    };
    let client = cluster
        .spawn_client("client", &["--duration", "12s", "--clients", "32", "--node", "5000", "--cores", "1"]);
    // Bytes a proxy leader sends in `window` while it carries commands (an idle one sends a few
    // hundred bytes in ten seconds).
    let carries = |j: &mut Joiner, window: Duration, limit: Duration| -> Option<f64> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            assert!(j.proc.is_running(), "joined {} {} exited:\n{}", j.role, j.id, j.proc.stderr_text());
            let before = bytes_out(j);
            std::thread::sleep(window);
            let sent = bytes_out(j) - before;
            if sent > 16.0 * 1024.0 {
                return Some(sent);
            }
        }
        None
    };
    let sent = carries(&mut joiner, Duration::from_millis(500), Duration::from_secs(30));
    assert!(sent.is_some(), "joined proxy leader 12 took no work");

    // The leader restarts with no memory of the views and leads again (its follower is gone, so
    // cannot take over with the views it kept). It never publishes a view to the node it forgot;
    // it learns of it again from the replicas (which answer its stale view with theirs) or from the
    // node's own reminder (`membership::REMINDER_PERIODS`), whichever comes first.
    cluster.kill_node(2);
    let killed = Instant::now();
    cluster.kill_node(1);
    cluster.restart_node(1);
    cluster.wait_metrics(1, Duration::from_secs(20));
    let back = carries(&mut joiner, Duration::from_millis(500), Duration::from_secs(8));
    let won = cluster.elections_won(1);
    eprintln!(
        "leader 1 restarted (elections won in its new life: {won}); proxy leader 12 carried {back:?} \
         bytes in 0.5 s, {:.1?} after the kill",
        killed.elapsed()
    );
    assert_eq!(won, 1.0, "proposer 1 did not lead again");
    assert!(back.is_some(), "joined proxy leader 12 took no work in the 8 s after the leader's restart");
    let proc = &mut cluster.extra[client];
    let status = proc.wait(Duration::from_secs(60));
    assert!(status.success(), "the client failed ({status}):\n{}", common::tail(&proc.stderr, 40));
}
