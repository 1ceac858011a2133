//! `autopaxos cloud emulate`: stands in for EC2 booting instances, on this machine, when the EC2 API
//! is an emulator (moto's server mode). Every pending or running instance of the cluster whose
//! user-data starts a joining node at a loopback address (what the autoscaler launches with
//! `--advertise-address 127.0.0.1:0`) is run here as `autopaxos boot --user-data FILE`, in a directory
//! of its own (its data dir and logs); when the instance is terminated or stopped, its process is
//! killed, as the machine would be. Nothing of this talks to AWS: only to the emulator's endpoint.
//!
//! It is how the autoscaler's launch, heal and scale paths are tried end to end without EC2 (the
//! tests and `bench/healing.py` use it); process start stands in for an instance's boot. The
//! instances share this machine's cores: each runs on one, spread by node id.

use super::ec2::Ec2;
use super::AwsFlags;
use crate::boot::UserData;
use crate::duration::parse_nonzero_duration;
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `autopaxos cloud emulate`.
#[derive(Args, Debug)]
pub struct EmulateArgs {
    /// The cluster whose instances to run (the `autopaxos:cluster` tag).
    #[arg(long)]
    pub cluster: String,
    /// Where each instance gets a directory (its working and data directory, and its logs).
    #[arg(long, default_value = "autopaxos-emulated")]
    pub dir: PathBuf,
    /// How often to look for instances started or gone.
    #[arg(long, default_value = "200ms", value_parser = parse_nonzero_duration)]
    pub interval: Duration,
    /// Stop (and kill every process started) after this long (default: run until killed).
    #[arg(long, value_parser = parse_nonzero_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub aws: AwsFlags,
}

/// An instance being run here.
struct Running {
    child: Child,
    what: String,
}

/// Runs the cluster's launched instances as local processes until `--duration` passes (or forever).
pub fn run(args: EmulateArgs) -> Result<(), String> {
    let ec2 = Ec2::connect(&args.aws.options(None)).map_err(|e| e.to_string())?;
    if args.aws.endpoint_url.is_none() && std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        return Err("cloud emulate runs instances on this machine and is for an EC2 emulator: give \
                    --endpoint-url (e.g. moto's http://127.0.0.1:5000)"
            .into());
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let started = Instant::now();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    println!("emulating the instances of cluster {} in {}", args.cluster, args.dir.display());
    loop {
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        match ec2.cluster_instances(&args.cluster) {
            Err(e) => tracing::warn!("listing the cluster's instances: {e}"),
            Ok(list) => {
                let live: BTreeSet<&str> = list
                    .iter()
                    .filter(|i| i.state == "pending" || i.state == "running")
                    .map(|i| i.id.as_str())
                    .collect();
                // Terminated or stopped: the machine is gone, and its process with it.
                let gone: Vec<String> =
                    running.keys().filter(|id| !live.contains(id.as_str())).cloned().collect();
                for id in gone {
                    let mut r = running.remove(&id).expect("listed");
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    println!("{id}: gone; killed {}", r.what);
                }
                for id in live {
                    if running.contains_key(id) || skipped.contains(id) {
                        continue;
                    }
                    match start(&ec2, &exe, &args, id) {
                        Ok(Some(r)) => {
                            println!("{id}: started {} (pid {})", r.what, r.child.id());
                            running.insert(id.to_string(), r);
                        }
                        Ok(None) => {
                            skipped.insert(id.to_string());
                        }
                        Err(e) => {
                            tracing::warn!("{id}: {e}; not run here");
                            skipped.insert(id.to_string());
                        }
                    }
                }
                // A process that exits by itself (a node that left) stays listed until the instance goes.
                for (id, r) in &mut running {
                    if let Ok(Some(status)) = r.child.try_wait() {
                        if !r.what.ends_with(" (exited)") {
                            println!("{id}: {} exited ({status})", r.what);
                            r.what.push_str(" (exited)");
                        }
                    }
                }
            }
        }
        std::thread::sleep(args.interval);
    }
    for (id, mut r) in running {
        let _ = r.child.kill();
        let _ = r.child.wait();
        println!("{id}: stopped {}", r.what);
    }
    Ok(())
}

/// Starts instance `id` if its user-data is a joining node at a loopback address; `None` if it is
/// not one this machine can run (it is then never looked at again).
fn start(ec2: &Ec2, exe: &std::path::Path, args: &EmulateArgs, id: &str) -> Result<Option<Running>, String> {
    let text = ec2.user_data(id).map_err(|e| format!("its user-data: {e}"))?;
    let ud = UserData::parse(&text, id).map_err(|e| e.to_string())?;
    let Some(address) = ud.advertise.filter(|a| a.ip().is_loopback()) else {
        tracing::info!("{id}: not a joining node at a loopback address: not run here");
        return Ok(None);
    };
    let dir = args.dir.join(id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join("user-data.toml");
    std::fs::write(&file, &text).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let log = |name: &str| {
        std::fs::File::create(dir.join(name))
            .map_err(|e| format!("cannot create {name} in {}: {e}", dir.display()))
    };
    // Each "instance" on one core, spread over this machine's by node id, not all on the first.
    // (They share the machine with the rest of the cluster, so where one lands moves the cluster's
    // throughput; on EC2 each is a machine of its own. See bench/README.md, healing.)
    let cores = crate::runtime::allowed_cores();
    let node = ud.nodes.first().copied().unwrap_or_default() as usize;
    let core = cores[node % cores.len().max(1)];
    let mut command = Command::new(exe);
    command
        .arg("boot")
        .arg("--user-data")
        .arg(&file)
        .arg("--cores")
        .arg(core.to_string())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log("stdout.log")?)
        .stderr(log("stderr.log")?);
    // The "instance" dies with the emulator, however it stops (killed included).
    command.arg("--exit-with-parent");
    let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let what = format!("{} {node} at {address} on core {core}", ud.role);
    Ok(Some(Running { child, what }))
}
