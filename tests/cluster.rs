//! A real cluster on loopback: every node its own `autopaxos` process, started from a cluster file,
//! driven by `autopaxos client`, observed through `/metrics`. One cluster test runs at a time (they
//! start ~11 processes on 2 cores), each ends by killing every process it started.

mod common;

use autopaxos::protocol::RoleKind;
use autopaxos::wire::{FrameWriter, Handshake};
use common::{metric_sum, progress_lines, Cluster, Progress};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `verify: N acknowledged writes read back intact, M lost (...)` → (N, M).
#[test]
fn the_leader_is_killed_under_load_and_the_cluster_carries_on_without_losing_an_acknowledged_write() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("failover");
    assert_eq!(cluster.elections_won(1), 1.0, "proposer 1 runs first, so it leads");
    assert_eq!(cluster.elections_won(2), 0.0, "proposer 2 follows");

    let client = cluster.spawn_client(
        "client",
        &["--duration", "6s", "--clients", "32", "--verify", "--node", "5000", "--cores", "1"],
    );
    // Kill the leader right after the client's third progress line: 3 s of measured load (after
    // its 1 s warm-up) before, 3 s after, and a precise split of the per-second rates into the two.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let proc = &mut cluster.extra[client];
        if progress_lines(&proc.stderr_text()).len() >= 3 {
            break;
        }
        assert!(proc.is_running(), "the client exited early:\n{}", proc.stderr_text());
        assert!(Instant::now() < deadline, "no third progress line within 30 s:\n{}", proc.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cluster.elections_won(2), 0.0, "proposer 1 still leads when it is killed");
    cluster.kill_node(1);
    let killed_at = progress_lines(&cluster.extra[client].stderr_text()).last().map_or(0.0, |p| p.at);

    let proc = &mut cluster.extra[client];
    let status = proc.wait(Duration::from_secs(90));
    let (stdout, stderr) = (proc.stdout_text(), proc.stderr_text());
    let context = format!("client stdout:\n{stdout}\nclient stderr:\n{}", common::tail(&proc.stderr, 40));
    assert!(status.success(), "the client failed ({status}):\n{context}");
    let (intact, lost) =
        common::verify_counts(&stdout).unwrap_or_else(|| panic!("no verify: line\n{context}"));
    assert_eq!(lost, 0, "an acknowledged write was lost:\n{context}");
    assert!(intact > 0, "nothing was read back:\n{context}");
    assert!(cluster.elections_won(2) >= 1.0, "proposer 2 took over");

    // The throughput gap: printed, not asserted (timing on a shared 2-core machine is noisy).
    let progress = progress_lines(&stderr);
    let (before, after): (Vec<Progress>, Vec<Progress>) =
        progress.iter().partition(|p| p.at <= killed_at + 1e-6);
    assert!(!before.is_empty() && !after.is_empty(), "rates before and after the kill:\n{context}");
    let mean_before = before.iter().map(|p| p.rate).sum::<f64>() / before.len() as f64;
    let lowest_after = after.iter().map(|p| p.rate).fold(f64::INFINITY, f64::min);
    let gap_seconds = after.iter().filter(|p| p.rate < mean_before / 2.0).count();
    let last = after.last().expect("not empty").rate;
    let rates: Vec<String> = progress.iter().map(|p| format!("{:.0}", p.rate)).collect();
    eprintln!(
        "leader failover: killed proposer 1 at {killed_at:.1}s; before: mean {mean_before:.0} cmds/s; \
         after: lowest {lowest_after:.0} cmds/s, {gap_seconds} s below half the pre-kill mean, \
         last second {last:.0} cmds/s; {intact} acknowledged writes read back intact, {lost} lost; \
         per-second rates [{}]",
        rates.join(", ")
    );
    assert!(last > 0.0, "throughput recovered by the last second:\n{context}");

    // A verifying client whose reads stop being answered (both replicas killed during its load)
    // says so and fails, rather than waiting for ever or calling the unread writes lost.
    let client = cluster.spawn_client(
        "unanswered",
        &["--duration", "2s", "--clients", "8", "--verify", "--read-back-timeout", "2s", "--node", "5001"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress_lines(&cluster.extra[client].stderr_text()).is_empty() {
        assert!(Instant::now() < deadline, "no progress line:\n{}", cluster.extra[client].stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill_node(7);
    cluster.kill_node(8);
    let proc = &mut cluster.extra[client];
    let status = proc.wait(Duration::from_secs(30));
    let (stdout, stderr) = (proc.stdout_text(), proc.stderr_text());
    assert_eq!(status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("verification incomplete") && stderr.contains("not read back"), "{stderr}");
    assert_eq!(common::verify_counts(&stdout).map(|(_, lost)| lost), Some(0), "{stdout}");
}

/// The 16-byte frame header: magic "AP", version 1, kind, flags 0, meta_len, payload_len (all LE).
fn header(kind: u8, meta_len: u32, payload_len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&0x5041u16.to_le_bytes());
    h.push(autopaxos::wire::PROTOCOL_VERSION);
    h.push(kind);
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&meta_len.to_le_bytes());
    h.extend_from_slice(&payload_len.to_le_bytes());
    h
}

/// What a hostile or confused peer sends; each must end only its own connection.
fn bad_inputs() -> Vec<(&'static str, Vec<u8>, bool)> {
    // Deterministic junk that does not start with the magic.
    let garbage: Vec<u8> = (0..64u32).map(|i| (i * 37 + 11) as u8).collect();
    assert_ne!(&garbage[..2], b"AP");
    let mut truncated = header(2, 256, 0);
    truncated.extend_from_slice(&[0xab; 10]);
    let oversized = header(2, 0xFFFF_FFF0, 0);
    let mut writer = FrameWriter::new();
    writer
        .push_handshake(&Handshake::new("not-this-cluster", 4242, RoleKind::Batcher))
        .expect("a handshake encodes");
    let foreign: Vec<u8> = writer.take_segments().concat();
    // (name, bytes, then shut our write side down)
    vec![
        ("garbage", garbage, false),
        ("truncated frame", truncated, true),
        ("oversized meta_len", oversized, false),
        ("other cluster's handshake", foreign, false),
    ]
}

fn connect(addr: SocketAddr, deadline: Instant) -> TcpStream {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => return stream,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// Reads until the peer closes (Ok(bytes read)) or `deadline` passes (Err). A reset counts as closed.
fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> Result<usize, String> {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("still open after reading {total} bytes"));
        }
        stream.set_read_timeout(Some(left)).expect("set a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("still open after reading {total} bytes"))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(total), // reset: closed
        }
    }
}

#[test]
fn garbage_sent_to_any_node_closes_only_that_connection_and_the_node_keeps_serving() {
    let _serial = common::serialize();
    let mut cluster = Cluster::start("garbage");
    let ids: Vec<u32> = cluster.nodes.iter().map(|n| n.id).collect();
    let bad_frames = |cluster: &Cluster, id: u32, reason: Option<&str>| {
        let node = id.to_string();
        let mut labels = vec![("node", node.as_str())];
        labels.extend(reason.map(|r| ("reason", r)));
        metric_sum(&cluster.metrics(id), "autopaxos_bad_frames_total", &labels)
    };
    let before: Vec<f64> = ids.iter().map(|&id| bad_frames(&cluster, id, None)).collect();

    // All 40 connections at once, so a node that never closes costs 5 s in all, not 5 s each.
    let inputs = bad_inputs();
    let mut open = Vec::new();
    let connect_deadline = Instant::now() + Duration::from_secs(5);
    for node in &cluster.nodes {
        for (what, bytes, shut) in &inputs {
            let mut stream = connect(node.addr(), connect_deadline);
            stream.set_write_timeout(Some(Duration::from_secs(5))).expect("set a write timeout");
            // The node may already have hung up (it does not wait for all of it): not our failure.
            if let Err(e) = stream.write_all(bytes) {
                eprintln!("node {} ({what}): write: {e}", node.id);
            }
            if *shut {
                let _ = stream.shutdown(Shutdown::Write);
            }
            open.push((node.id, *what, stream));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut still_open = Vec::new();
    for (id, what, stream) in &mut open {
        // The node sends its own handshake first: read past it, to the close.
        if let Err(e) = read_until_closed(stream, deadline) {
            still_open.push(format!("node {id}, {what}: {e}"));
        }
    }
    assert!(still_open.is_empty(), "connections not closed within 5 s:\n{}", still_open.join("\n"));
    drop(open);

    // Three are bad frames: bad_magic (garbage), truncated (closed mid-frame), too_large (the
    // oversized header); the fourth a refused handshake (the foreign cluster).
    for (i, &id) in ids.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let grew = loop {
            let grew = bad_frames(&cluster, id, None) - before[i];
            if grew >= 3.0 || Instant::now() >= deadline {
                break grew;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let by_reason: Vec<String> = ["bad_magic", "truncated", "too_large", "invalid_meta", "invalid_frame"]
            .iter()
            .map(|r| format!("{r}={}", bad_frames(&cluster, id, Some(r))))
            .collect();
        eprintln!("node {id}: autopaxos_bad_frames_total +{grew} ({})", by_reason.join(" "));
        assert!(grew >= 3.0, "node {id}: bad_frames_total grew by {grew}, expected >= 3");
        for reason in ["bad_magic", "truncated", "too_large"] {
            assert!(bad_frames(&cluster, id, Some(reason)) >= 1.0, "node {id}: no {reason} counted");
        }
        let foreign = ("reason", "wrong_cluster");
        let refused = metric_sum(&cluster.metrics(id), "autopaxos_handshakes_refused_total", &[foreign]);
        assert!(refused >= 1.0, "node {id}: the foreign cluster's handshake was not counted as refused");
    }

    // Every node still accepts connections and greets with its handshake frame ...
    for node in &cluster.nodes {
        let mut stream = connect(node.addr(), Instant::now() + Duration::from_secs(5));
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
        let mut greeting = [0u8; 16];
        stream.read_exact(&mut greeting).unwrap_or_else(|e| panic!("node {}: no greeting: {e}", node.id));
        let version = autopaxos::wire::PROTOCOL_VERSION;
        assert_eq!((&greeting[..2], greeting[2], greeting[3]), (&b"AP"[..], version, 1), "node {}", node.id);
    }
    // ... and the cluster still serves, through every role.
    let (ok, stdout, stderr) = cluster.run_client(
        "client",
        &["--verify", "--duration", "2s", "--clients", "8", "--cores", "1"],
        Duration::from_secs(60),
    );
    assert!(ok, "the client failed after the garbage:\n{stdout}\n{stderr}");
    let (intact, lost) =
        common::verify_counts(&stdout).unwrap_or_else(|| panic!("no verify: line\n{stdout}"));
    assert!(lost == 0 && intact > 0, "{stdout}");

    // A second client claiming a node id that a running one holds is refused by every node: it
    // says why instead of asking whether the cluster is up.
    cluster.spawn_client(
        "first-5001",
        &["--node", "5001", "--duration", "8s", "--clients", "4", "--cores", "1"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, stdout, stderr) = cluster.run_client(
        "client",
        &["--node", "5001", "--duration", "3s", "--clients", "4", "--cores", "1"],
        Duration::from_secs(60),
    );
    assert!(!ok, "a second client as node 5001 served:\n{stdout}");
    assert!(stderr.contains("is another client running as node 5001?"), "{stderr}");
}

/// Runs `promtool check metrics` on `exposition`; returns (success, its output).
fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(exposition.as_bytes()).expect("feed promtool");
    drop(stdin);
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_metrics_exposition_passes_promtool() {
    common::require_on_path("promtool");
    let _serial = common::serialize();
    let mut cluster = Cluster::start("promtool");
    // Some load first, so that every kind of counter has samples.
    let (ok, stdout, stderr) = cluster.run_client(
        "client",
        &["--duration", "1s", "--clients", "8", "--cores", "1"],
        Duration::from_secs(60),
    );
    assert!(ok, "the client failed:\n{stdout}\n{stderr}");

    let mut failures = Vec::new();
    for node in &cluster.nodes {
        let exposition = cluster.metrics(node.id);
        assert!(exposition.contains("autopaxos_frames_in_total"), "node {}:\n{exposition}", node.id);
        let (ok, said) = promtool_check(&exposition);
        eprintln!(
            "promtool on node {} ({}): {}",
            node.id,
            node.role,
            if said.is_empty() { "(nothing)" } else { &said }
        );
        if !ok {
            failures.push(format!("node {}: {said}\n--- exposition ---\n{exposition}", node.id));
        }
    }
    assert!(failures.is_empty(), "promtool check metrics failed:\n{}", failures.join("\n"));
    drop(cluster);

    // `autopaxos local` serves the same metrics for a whole in-process cluster.
    let dir = common::TempDir::new("local-metrics"); // declared first: dropped after the process
    let port = common::free_ports(1)[0];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let args: Vec<String> =
        ["local", "--duration", "2s", "--clients", "16", "--metrics-addr", &addr.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut local = common::Proc::spawn(&dir.0, "local", &args);
    // Scrape during the measured window (1 s warm-up, then 2 s).
    let started = Instant::now();
    let mut exposition = None;
    while started.elapsed() < Duration::from_secs(15) && local.is_running() {
        if started.elapsed() >= Duration::from_millis(2000) {
            if let Ok(text) = common::scrape(addr) {
                exposition = Some(text);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exposition = exposition.unwrap_or_else(|| panic!("no metrics from local:\n{}", local.stderr_text()));
    let status = local.wait(Duration::from_secs(30));
    assert!(status.success(), "autopaxos local failed:\n{}", local.stderr_text());
    let (ok, said) = promtool_check(&exposition);
    eprintln!("promtool on autopaxos local: {}", if said.is_empty() { "(nothing)" } else { &said });
    assert!(ok, "promtool check metrics failed on local:\n{said}\n--- exposition ---\n{exposition}");
}
