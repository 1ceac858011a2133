//! Teaching on a real cluster on loopback, under load: a replica whose data dir is deleted learns
//! by snapshot, a replica paused for 8 s catches up by log segment, and a replica that starts from
//! nothing after the cluster executed millions of commands learns and serves. Each ends with no
//! acknowledged write lost and both replicas on the same watermark and state digest. Figures are
//! printed (`cargo test --release --test teaching -- --nocapture`).

mod common;

use common::{
    counter, finish_client, progress_lines, replica_status, replicas_agree, spawn_verifying_client,
    wait_progress, Cluster,
};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

const INSTALLED: &str = "autopaxos_snapshots_installed_total";

/// A cluster whose replicas keep few slots to teach (so a replica that was away learns by snapshot).
fn start_cluster(tag: &str, settings: &'static str) -> Cluster {
    Cluster::start_with(tag, move |dir| {
        format!("data_dir = \"{}\"\n{settings}", dir.join("autopaxos-data").display())
    })
}

fn signal(cluster: &mut Cluster, id: u32, sig: &str) {
    let pid = cluster.proc_mut(id).child.id().to_string();
    let ok = Command::new("kill").args([sig, &pid]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} (node {id})");
}

#[test]
fn a_replica_whose_data_dir_is_deleted_learns_by_snapshot_then_serves_and_nothing_is_lost() {
    let _serial = common::serialize();
    let began = Instant::now();
    // 200 slots kept to teach: the wiped replica starts far below what its peer keeps.
    let mut cluster = start_cluster("teach-wiped", "teach_retention_slots = 200\n");
    let client = spawn_verifying_client(&mut cluster, "client", 8);
    wait_progress(&mut cluster, client, 2, Duration::from_secs(30));

    cluster.kill_node(7);
    let dir = cluster.data_dir(7);
    fs::remove_dir_all(&dir).expect("delete replica 7's data dir");
    std::thread::sleep(Duration::from_secs(2));
    let peer = replica_status(&cluster, 8).map_or(0.0, |s| s.0);
    cluster.restart_node(7);
    cluster.wait_metrics(7, Duration::from_secs(20));
    let restarted = Instant::now();
    let learned = loop {
        let installed = counter(&cluster, 7, INSTALLED);
        if installed >= 1.0 {
            break restarted.elapsed();
        }
        assert!(restarted.elapsed() < Duration::from_secs(30), "replica 7 was taught no snapshot in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let verified = finish_client(&mut cluster, client);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    eprintln!(
        "wiped replica: replica 8 at watermark {peer} when 7 restarted with an empty data dir; 7 installed \
         a snapshot {learned:.2?} after serving metrics; client: {} intact, {} lost; replicas settled in \
         {:.1?} on watermark {} digest {:#x}; test took {:.1?}",
        verified.intact,
        verified.lost,
        agreement.settled_in,
        agreement.watermark,
        agreement.digest,
        began.elapsed()
    );
    assert!(agreement.watermark as f64 > peer, "the cluster went on executing after the restart");
    // The taught state is on its disk: a snapshot file in the new data dir.
    let snapshots = fs::read_dir(&dir)
        .expect("replica 7's data dir again")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".snap"))
        .count();
    assert!(snapshots >= 1, "no snapshot file in {}", dir.display());
}

#[test]
fn a_replica_paused_for_eight_seconds_catches_up_by_log_segment() {
    let _serial = common::serialize();
    let began = Instant::now();
    // A young cluster's state is smaller than 8 s of its log, so the default rule (a segment up to
    // half the state) would send a snapshot; this test is about the segment path.
    let mut cluster = start_cluster("teach-paused", "teach_log_max_percent_of_state = 100000\n");
    // Load from before the pause to a few seconds after it, and no longer: the verifying client then
    // reads back every write it made, which takes about as long again.
    let client = spawn_verifying_client(&mut cluster, "client", 14);
    wait_progress(&mut cluster, client, 1, Duration::from_secs(30));

    let (at_pause, _) = replica_status(&cluster, 7).expect("replica 7 answers before the pause");
    signal(&mut cluster, 7, "-STOP");
    std::thread::sleep(Duration::from_secs(8));
    let peer = replica_status(&cluster, 8).map_or(0.0, |s| s.0);
    signal(&mut cluster, 7, "-CONT");
    let resumed = Instant::now();
    let caught_up = loop {
        let mine = replica_status(&cluster, 7).map_or(0.0, |s| s.0);
        if mine >= peer {
            break resumed.elapsed();
        }
        assert!(resumed.elapsed() < Duration::from_secs(30), "replica 7 at {mine}, peer was at {peer}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let verified = finish_client(&mut cluster, client);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    let installed = counter(&cluster, 7, INSTALLED);
    let slots = peer - at_pause;
    eprintln!(
        "paused replica: 7 stopped at watermark {at_pause} for 8 s; the peer was at {peer} ({slots} slots \
         ahead) when 7 resumed; 7 caught up in {caught_up:.2?} ({:.0} slots/s); snapshots installed: \
         {installed}; client: {} intact, {} lost; replicas settled on watermark {}; test took {:.1?}",
        slots / caught_up.as_secs_f64(),
        verified.intact,
        verified.lost,
        agreement.watermark,
        began.elapsed()
    );
    assert!(slots > 0.0, "the cluster executed nothing while replica 7 was paused");
    assert_eq!(installed, 0.0, "replica 7 was taught by snapshot, not by log segment");
}

#[test]
fn a_replica_started_from_nothing_after_millions_of_commands_learns_and_serves() {
    let _serial = common::serialize();
    let began = Instant::now();
    let mut cluster = start_cluster("teach-new", "teach_retention_slots = 2000\n");
    // Replica 7 is a new machine: it is not there while the cluster runs up its log (12 s of 2048
    // clients: about 2.3 million commands on the development machine).
    cluster.kill_node(7);
    fs::remove_dir_all(cluster.data_dir(7)).ok();
    let load = cluster.spawn_client(
        "load",
        &["--duration", "12s", "--clients", "2048", "--batch-size", "100", "--node", "5000", "--cores", "1"],
    );
    let status = cluster.extra[load].wait(Duration::from_secs(60));
    assert!(status.success(), "the load failed: {}", cluster.extra[load].stderr_text());
    let commands: u64 = progress_lines(&cluster.extra[load].stderr_text()).last().map_or(0, |p| p.done);
    let peer = replica_status(&cluster, 8).map_or(0.0, |s| s.0);

    let client = spawn_verifying_client(&mut cluster, "client", 7);
    wait_progress(&mut cluster, client, 1, Duration::from_secs(30));
    cluster.restart_node(7);
    cluster.wait_metrics(7, Duration::from_secs(20));
    let started = Instant::now();
    let learned = loop {
        if replica_status(&cluster, 7).map_or(0.0, |s| s.0) >= peer {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "replica 7 did not reach {peer} in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let verified = finish_client(&mut cluster, client);
    let agreement = replicas_agree(&mut cluster, Duration::from_secs(30));
    let installed = counter(&cluster, 7, INSTALLED);
    eprintln!(
        "new replica: the cluster executed {commands} commands ({peer} slots) without replica 7; 7 \
         started from an empty data dir and reached that watermark {learned:.2?} after serving metrics \
         ({installed} snapshots installed); client: {} intact, {} lost; replicas settled on {}; test \
         took {:.1?}",
        verified.intact,
        verified.lost,
        agreement.watermark,
        began.elapsed()
    );
    assert!(installed >= 1.0, "a new replica far behind learns by snapshot");
    // About 2.3M in the 12 s on the development machine; a slow CI disk does far fewer.
    assert!(commands > 50_000, "the load executed only {commands} commands");
}
