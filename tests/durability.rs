//! Durable acceptors and replicas, on a real cluster on loopback: nodes SIGKILLed under a verifying
//! client and restarted on the same data dir (`<cluster dir>/autopaxos-data/node-<id>`), a torn log
//! tail, a corrupted record in the middle of a log, and a second process on a data dir in use.
//!
//! Every test ends the same way: the verifying client exits successfully with no acknowledged write
//! lost (and some read back), and both replicas settle on the same executed watermark and state
//! digest. Figures are printed (`cargo test --release --test durability -- --nocapture`).

mod common;

use common::{
    counter, finish_client, progress_lines, replica_status, replicas_agree, spawn_verifying_client, tail,
    wait_progress, Cluster, Progress,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn rates(progress: &[Progress]) -> String {
    progress.iter().map(|p| format!("{:.0}", p.rate)).collect::<Vec<_>>().join(", ")
}

/// The f=1 cluster of `Cluster::start`, with the data dir given in the cluster file (`[settings]
/// data_dir`) as an ABSOLUTE path to where the default would put it (`<cluster dir>/autopaxos-data`),
/// so these tests exercise the cluster file's setting. The default itself, `./autopaxos-data`
/// (relative to the node's working directory), has a test of its own, the last one: at commit
/// 11f39f2 durable nodes on a relative data dir died at their first sync (EBADF from glommio).
fn start_cluster(tag: &str) -> Cluster {
    Cluster::start_with(tag, |dir| format!("data_dir = \"{}\"\n", dir.join("autopaxos-data").display()))
}

/// The line of node `id`'s current stderr that reports what it recovered from its data dir.
fn recovery_line(cluster: &mut Cluster, id: u32) -> String {
    let text = cluster.proc_mut(id).stderr_text();
    text.lines()
        .find(|l| l.contains("recovered ") && l.contains(" records from "))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| format!("<no recovery line in node {id}'s stderr:\n{}>", text))
}

/// How many records the recovery line says were recovered.
fn recovered_records(line: &str) -> Option<u64> {
    let after = line.split("recovered ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// Waits until node `id`'s current process has its metrics up; then until it reports the recovery.
fn wait_restarted(cluster: &mut Cluster, id: u32) -> String {
    cluster.wait_metrics(id, Duration::from_secs(20));
    let line = recovery_line(cluster, id);
    assert!(recovered_records(&line).is_some(), "node {id} did not report a recovery: {line}");
    line
}

/// Node `id`'s log segments (`wal-<seq>.log`), oldest first.
fn wal_segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    segments
}

/// One record found by walking a log's headers: where it starts and ends (8-aligned) and its body.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    body_len: usize,
    kind: u8,
}

const HEADER_LEN: usize = 16;

/// Walks a log's records by their headers (`[checksum u64][len u32][kind u8][3 pad]`, then the body,
/// then zeros up to 8-alignment) from offset 0 until a zero header or the end of the bytes. Checks
/// no checksum: this is the test's own reading of the format, independent of the product's.
fn record_spans(bytes: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut off = 0;
    while off + HEADER_LEN <= bytes.len() {
        let header = &bytes[off..off + HEADER_LEN];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let body_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let end = (off + HEADER_LEN + body_len).div_ceil(8) * 8;
        spans.push(Span { start: off, end, body_len, kind: header[12] });
        if end > bytes.len() {
            break;
        }
        off = end;
    }
    spans
}

fn kinds(spans: &[Span]) -> String {
    let mut counts = [0usize; 6];
    for s in spans {
        counts[(s.kind as usize).min(5)] += 1;
    }
    format!(
        "promise {} accept {} trim {} executed {} snapshot {}",
        counts[1], counts[2], counts[3], counts[4], counts[5]
    )
}

#[test]
fn an_acceptor_killed_under_load_and_restarted_on_its_data_dir_rejoins_and_nothing_is_lost() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("acceptor-restart");
    let client = spawn_verifying_client(&mut cluster, "client", 5);
    wait_progress(&mut cluster, client, 0, Duration::from_secs(30));

    let accepted_before = counter(&cluster, 4, "autopaxos_phase2_accepted_total");
    cluster.kill_node(4);
    let killed_at = progress_lines(&cluster.extra[client].stderr_text()).len();
    let segments = wal_segments(&cluster.data_dir(4));
    let on_disk: u64 = segments.iter().map(|p| fs::metadata(p).map_or(0, |m| m.len())).sum();
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    cluster.restart_node(4);
    let recovery = wait_restarted(&mut cluster, 4);
    let up_in = restarted.elapsed();
    assert!(cluster.extra[client].is_running(), "the client ended before acceptor 4 was back");
    let records = recovered_records(&recovery).unwrap_or(0);
    assert!(records > 0, "acceptor 4 recovered nothing from its data dir: {recovery}");

    let verified = finish_client(&mut cluster, client);
    let accepted_after = counter(&cluster, 4, "autopaxos_phase2_accepted_total");
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    eprintln!(
        "acceptor restart: acceptor 4 accepted {accepted_before} before its SIGKILL (after progress \
         line {killed_at}); {} segment(s), {on_disk} bytes on disk; restarted after 1 s, metrics up in \
         {up_in:.1?}; recovery: {recovery}; accepted {accepted_after} in its new life; client: {} intact, \
         {} lost, rates [{}]; replicas settled in {:.1?} on watermark {} digest {:#x}; test took {:.1?}",
        segments.len(),
        verified.intact,
        verified.lost,
        rates(&verified.progress),
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(
        accepted_after > 0.0,
        "the restarted acceptor 4 accepted nothing in its new life (it does not serve):\n{}",
        tail(&cluster.proc_mut(4).stderr, 30)
    );
}

#[test]
fn a_quorum_of_acceptors_killed_at_once_then_the_leader_leaves_the_new_leader_reading_their_logs_and_nothing_is_lost(
) {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("acceptor-quorum");
    assert_eq!(cluster.elections_won(1), 1.0, "proposer 1 runs first, so it leads");
    let client = spawn_verifying_client(&mut cluster, "client", 9);
    wait_progress(&mut cluster, client, 0, Duration::from_secs(30));

    cluster.kill_node(3);
    cluster.kill_node(4);
    let lines_at_kill = progress_lines(&cluster.extra[client].stderr_text()).len();
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart_node(3);
    cluster.restart_node(4);
    let recovery3 = wait_restarted(&mut cluster, 3);
    let recovery4 = wait_restarted(&mut cluster, 4);
    for (id, line) in [(3, &recovery3), (4, &recovery4)] {
        assert!(recovered_records(line).unwrap_or(0) > 0, "acceptor {id} recovered nothing: {line}");
    }
    // Commands flow again (through the restarted acceptors: 5 alone is no quorum) ...
    let lines_at_restart = progress_lines(&cluster.extra[client].stderr_text()).len();
    let resumed = wait_progress(&mut cluster, client, lines_at_restart, Duration::from_secs(30));
    // ... then the leader goes: proposer 2 runs Phase 1, and any quorum it hears from holds at least
    // one of the restarted acceptors 3 and 4.
    assert_eq!(cluster.elections_won(2), 0.0, "proposer 1 still leads when it is killed");
    assert!(
        cluster.extra[client].is_running(),
        "the client ended before the leader could be killed under load: lengthen its run"
    );
    cluster.kill_node(1);
    let leader_killed_at = resumed.len();

    let verified = finish_client(&mut cluster, client);
    let won2 = cluster.elections_won(2);
    let accepted3 = counter(&cluster, 3, "autopaxos_phase2_accepted_total");
    let accepted4 = counter(&cluster, 4, "autopaxos_phase2_accepted_total");
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    eprintln!(
        "acceptor quorum restart: acceptors 3 and 4 SIGKILLed after progress line {lines_at_kill}, \
         restarted 1 s later; recovery 3: {recovery3}; recovery 4: {recovery4}; throughput back by line \
         {}; leader (proposer 1) SIGKILLed after line {leader_killed_at}; proposer 2 elections won: \
         {won2}; accepted in their new lives: acceptor 3 {accepted3}, acceptor 4 {accepted4}; client: {} \
         intact, {} lost, rates [{}]; replicas settled in {:.1?} on watermark {} digest {:#x}; test took \
         {:.1?}",
        resumed.len(),
        verified.intact,
        verified.lost,
        rates(&verified.progress),
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(won2 >= 1.0, "proposer 2 never took over");
    assert!(
        verified.progress.last().is_some_and(|p| p.rate > 0.0),
        "throughput did not recover by the client's last second: [{}]",
        rates(&verified.progress)
    );
}

#[test]
fn a_replica_killed_under_load_and_restarted_catches_up_with_its_peer() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("replica-restart");
    let client = spawn_verifying_client(&mut cluster, "client", 5);
    wait_progress(&mut cluster, client, 0, Duration::from_secs(30));

    let (watermark_at_kill, _) = replica_status(&cluster, 7).expect("replica 7 answers before its kill");
    cluster.kill_node(7);
    let dir = cluster.data_dir(7);
    let files: Vec<String> = fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    std::thread::sleep(Duration::from_secs(1));
    let peer_at_restart = replica_status(&cluster, 8).map_or(0.0, |s| s.0);
    cluster.restart_node(7);
    let recovery = wait_restarted(&mut cluster, 7);
    let first_watermark = replica_status(&cluster, 7).map_or(-1.0, |s| s.0);
    assert!(cluster.extra[client].is_running(), "the client ended before replica 7 was back");

    let verified = finish_client(&mut cluster, client);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    let stalled = counter(&cluster, 7, "autopaxos_replica_stalled_total");
    let mut files = files;
    files.sort();
    eprintln!(
        "replica restart: replica 7 SIGKILLed at watermark {watermark_at_kill} with {files:?} in its \
         data dir; replica 8 was at {peer_at_restart} when 7 restarted; recovery: {recovery}; first \
         watermark 7 exported after the restart: {first_watermark}; stalled periods: {stalled}; client: \
         {} intact, {} lost, rates [{}]; replicas settled in {:.1?} on watermark {} digest {:#x}; test \
         took {:.1?}",
        verified.intact,
        verified.lost,
        rates(&verified.progress),
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(
        agreement.watermark as f64 > watermark_at_kill,
        "the restarted replica is at the watermark it died at: nothing executed after the kill?"
    );
}

#[test]
fn the_leader_killed_and_restarted_before_its_follower_times_out_loses_nothing() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("leader-bounce");
    assert_eq!(cluster.elections_won(1), 1.0, "proposer 1 runs first, so it leads");
    let client = spawn_verifying_client(&mut cluster, "client", 5);
    wait_progress(&mut cluster, client, 1, Duration::from_secs(30));

    let killed = Instant::now();
    cluster.kill_node(1);
    cluster.restart_node(1);
    let gap = killed.elapsed();
    // The follower's election timeout is 150-300 ms: a restart slower than that tests failover instead.
    assert!(gap < Duration::from_millis(150), "the kill and restart took {gap:?}, not within ~50 ms");
    cluster.wait_metrics(1, Duration::from_secs(20));
    let up_in = killed.elapsed();

    let verified = finish_client(&mut cluster, client);
    let won1 = cluster.elections_won(1);
    let won2 = cluster.elections_won(2);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    eprintln!(
        "leader bounce: proposer 1 SIGKILLed and restarted within {gap:?} (metrics up {up_in:.1?} after \
         the kill); elections won since: proposer 1 (new life) {won1}, proposer 2 {won2}; client: {} \
         intact, {} lost, rates [{}]; replicas settled in {:.1?} on watermark {} digest {:#x}; test took \
         {:.1?}",
        verified.intact,
        verified.lost,
        rates(&verified.progress),
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(won1 + won2 >= 1.0, "no proposer led after the bounce");
    assert!(
        verified.progress.last().is_some_and(|p| p.rate > 0.0),
        "throughput did not recover by the client's last second: [{}]",
        rates(&verified.progress)
    );
}

#[test]
fn an_acceptor_whose_log_ends_in_a_torn_record_cuts_it_off_with_a_warning_and_serves() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("torn-tail");
    let client = spawn_verifying_client(&mut cluster, "client", 4);
    wait_progress(&mut cluster, client, 0, Duration::from_secs(30));
    cluster.kill_node(4);

    // The segment being written: the newest one with records (the log prepares the next, all zeros).
    let segments = wal_segments(&cluster.data_dir(4));
    let newest = segments
        .iter()
        .rev()
        .find(|p| fs::read(p).is_ok_and(|b| b.iter().any(|&x| x != 0)))
        .unwrap_or_else(|| panic!("no written wal-*.log in {}", cluster.data_dir(4).display()));
    let bytes = fs::read(newest).expect("read the newest segment");
    let spans = record_spans(&bytes);
    let last = *spans.last().unwrap_or_else(|| panic!("no record in {}", newest.display()));
    // Into the middle of the last record's body (or of its header, if it has no body).
    let cut = if last.body_len >= 2 { last.start + HEADER_LEN + last.body_len / 2 } else { last.start + 10 };
    let cut = cut.min(bytes.len() - 1);
    // A write torn at `cut`: the record's first part on disk, the segment's zeros after it. The
    // recovery reports the torn bytes up to the last non-zero one.
    let torn = bytes[..cut].iter().rposition(|&x| x != 0).map_or(0, |i| i + 1) - last.start;
    let mut damaged = bytes.clone();
    damaged[cut..].fill(0);
    fs::write(newest, &damaged).expect("tear the newest segment");
    // Recovery reads every segment whole (zeros included: they could hide an intact record).
    let on_disk: u64 =
        wal_segments(&cluster.data_dir(4)).iter().map(|p| fs::metadata(p).map_or(0, |m| m.len())).sum();
    let name = newest.file_name().and_then(|n| n.to_str()).expect("a name").to_string();

    cluster.restart_node(4);
    let recovery = wait_restarted(&mut cluster, 4);
    let stderr = cluster.proc_mut(4).stderr_text();
    let warning = stderr
        .lines()
        .find(|l| l.contains("torn"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("acceptor 4 did not log that it cut off a torn tail:\n{stderr}"));
    assert!(cluster.extra[client].is_running(), "the client ended before acceptor 4 was back");

    let verified = finish_client(&mut cluster, client);
    let accepted_after = counter(&cluster, 4, "autopaxos_phase2_accepted_total");
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    eprintln!(
        "torn tail: {name} of acceptor 4 held {} records ({}) in {} data bytes of a {}-byte file; cut \
         at byte {cut}, {torn} bytes into the last record ({}..{}); the restart logged: {warning}; \
         recovery: {recovery}; accepted {accepted_after} in its \
         new life; client: {} intact, {} lost, rates [{}]; replicas settled in {:.1?} on watermark {} \
         digest {:#x}; test took {:.1?}",
        spans.len(),
        kinds(&spans),
        last.end,
        bytes.len(),
        last.start,
        last.end,
        verified.intact,
        verified.lost,
        rates(&verified.progress),
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(warning.contains(&format!("bytes={torn}")), "the warning does not say {torn} bytes: {warning}");
    // (The file itself cannot be checked: once the new life's trims are durable, the recovered
    // segment is deleted, often within a second.)
    assert!(
        recovery.contains(&format!("({on_disk} bytes)")) && recovery.contains(&format!("dropped: {torn} bytes")),
        "the recovery did not scan the {on_disk} bytes of its segments and drop the {torn} torn ones: {recovery}"
    );
    assert_eq!(
        recovered_records(&recovery),
        Some(spans.len() as u64 - 1),
        "every record before the torn one is recovered: {recovery}"
    );
    assert!(
        accepted_after > 0.0,
        "the restarted acceptor 4 accepted nothing in its new life (it does not serve):\n{}",
        tail(&cluster.proc_mut(4).stderr, 30)
    );
}

#[test]
fn an_acceptor_whose_log_is_corrupted_in_the_middle_refuses_to_start_naming_file_and_offset() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("corrupt-middle");
    let client = spawn_verifying_client(&mut cluster, "client", 4);
    wait_progress(&mut cluster, client, 1, Duration::from_secs(30));
    cluster.kill_node(4);

    let segments = wal_segments(&cluster.data_dir(4));
    let (segment, spans) = segments
        .iter()
        .rev()
        .map(|p| (p.clone(), record_spans(&fs::read(p).expect("read a segment"))))
        .find(|(_, spans)| spans.len() >= 2)
        .unwrap_or_else(|| panic!("no segment with two records in {}", cluster.data_dir(4).display()));
    // A byte of the first record's checksum: an intact record follows, so this is no torn tail.
    let at = spans[0].start + 3;
    let mut bytes = fs::read(&segment).expect("read the segment");
    bytes[at] ^= 0x5a;
    fs::write(&segment, &bytes).expect("write the corrupted segment");
    let name = segment.file_name().and_then(|n| n.to_str()).expect("a name").to_string();

    cluster.restart_node(4);
    let started = Instant::now();
    let status = cluster.proc_mut(4).wait(Duration::from_secs(15));
    let exited_in = started.elapsed();
    let stderr = cluster.proc_mut(4).stderr_text();
    let error = stderr
        .lines()
        .find(|l| l.contains(&name))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| panic!("acceptor 4's error does not name {name}:\n{stderr}"));
    let untouched = fs::read(&segment).is_ok_and(|now| now == bytes);

    let verified = finish_client(&mut cluster, client);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    eprintln!(
        "corrupt middle: flipped byte {at} (in the header of the first of {} records, {}) of {name}; \
         the restarted acceptor 4 exited in {exited_in:.1?} with {status}: {error}; segment left as it \
         was: {untouched}; client (acceptors 3 and 5 only): {} intact, {} lost, rates [{}]; replicas \
         settled in {:.1?} on watermark {} digest {:#x}; test took {:.1?}",
        spans.len(),
        kinds(&spans),
        verified.intact,
        verified.lost,
        rates(&verified.progress),
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(!status.success(), "acceptor 4 started on a corrupted log: {status}\n{stderr}");
    assert!(exited_in < Duration::from_secs(5), "acceptor 4 took {exited_in:?} to refuse");
    assert!(error.contains("offset"), "the error does not say the offset: {error}");
    assert!(
        error.contains(&format!("offset {}", spans[0].start)),
        "the error does not name offset {} (the damaged record): {error}",
        spans[0].start
    );
    assert!(untouched, "the refused start changed the corrupted segment");
}

#[test]
fn a_second_process_on_an_acceptors_data_dir_is_refused_and_the_first_keeps_serving() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("dir-in-use");
    let other_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_ports(1)[0]));
    let second = cluster.spawn_node_copy(3, "node3-acceptor-second", other_metrics);
    let started = Instant::now();
    let status = cluster.extra[second].wait(Duration::from_secs(15));
    let exited_in = started.elapsed();
    let stderr = cluster.extra[second].stderr_text();
    let lock = cluster.data_dir(3).join("LOCK");
    let lock_kept = lock.exists();
    let first_running = cluster.proc_mut(3).is_running();

    let client = spawn_verifying_client(&mut cluster, "client", 3);
    let verified = finish_client(&mut cluster, client);
    let accepted3 = counter(&cluster, 3, "autopaxos_phase2_accepted_total");
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    let said = stderr.lines().find(|l| l.contains("in use")).unwrap_or(stderr.trim()).trim().to_string();
    eprintln!(
        "data dir in use: the second acceptor 3 exited in {exited_in:.1?} with {status}: {said}; LOCK \
         still there: {lock_kept}; first acceptor 3 running: {first_running}, accepted {accepted3}; \
         client: {} intact, {} lost; replicas settled in {:.1?} on watermark {} digest {:#x}; test took \
         {:.1?}",
        verified.intact,
        verified.lost,
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(!status.success(), "a second process ran on acceptor 3's data dir: {status}\n{stderr}");
    assert!(stderr.contains("is in use by another process"), "the second process did not say why:\n{stderr}");
    assert!(first_running, "the first acceptor 3 died");
    assert!(lock_kept, "the refused process removed the first one's LOCK file");
    assert!(accepted3 > 0.0, "the first acceptor 3 accepted nothing after the refusal");
}

#[test]
fn acceptors_and_replicas_on_the_default_relative_data_dir_start_persist_and_serve() {
    let _serial = common::serialize();
    let began = Instant::now();
    // No data_dir anywhere: each node uses ./autopaxos-data, relative to its working directory.
    let mut cluster = Cluster::configure("relative-data-dir");
    let stateful = [3, 4, 5, 7, 8];
    for id in [3, 4, 5, 6, 7, 8, 9, 10] {
        cluster.start_node(id);
    }
    // Give each durable node time for its first syncs (it opens its log right after it starts).
    std::thread::sleep(Duration::from_millis(1500));
    let mut dead = Vec::new();
    for id in stateful {
        let proc = cluster.proc_mut(id);
        if !proc.is_running() {
            let text = proc.stderr_text();
            let why = (text.lines().find(|l| l.contains("cannot persist")))
                .or_else(|| text.lines().find(|l| l.contains("ERROR")))
                .unwrap_or("<no error line>")
                .trim()
                .to_string();
            dead.push(format!("node {id} exited: {why}"));
        }
    }
    assert!(
        dead.is_empty(),
        "durable nodes on the default data dir ./autopaxos-data died within 1.5 s of starting:\n{}\n\
         (the same nodes run with an absolute data dir; glommio 0.9's Directory::open opens the path \
         with openat(-1, ...), which fails with EBADF for a relative path)",
        dead.join("\n")
    );
    cluster.start_nodes(&[1, 2]);
    cluster.wait_metrics(3, Duration::from_secs(15));
    let client = spawn_verifying_client(&mut cluster, "client", 2);
    let verified = finish_client(&mut cluster, client);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    let files: Vec<String> = fs::read_dir(cluster.data_dir(3))
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    eprintln!(
        "relative data dir: acceptor 3's data dir holds {files:?}; client: {} intact, {} lost; replicas \
         settled in {:.1?} on watermark {} digest {:#x}; test took {:.1?}",
        verified.intact,
        verified.lost,
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(files.iter().any(|f| f.starts_with("wal-")), "no log segment under ./autopaxos-data/node-3");
}
