//! The EC2 control plane against a real EC2 API emulator: moto's server mode, started by each test on
//! a free loopback port (installed by scripts/setup.sh). Nothing here talks to AWS, to the instance
//! metadata service or to the emulated instances' private addresses: only to 127.0.0.1.

#![cfg(feature = "cloud")]

mod common;

use autopaxos::boot::UserData;
use autopaxos::cloud::ec2::{Ec2, Ec2Options, TAG_CLUSTER, TAG_NODES, TAG_ROLE};
use common::{free_ports, Moto};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_autopaxos");
/// An AMI moto knows (from its bundled list), so AMI validation accepts it.
const KNOWN_AMI: &str = "ami-1e749f67";

/// Fake credentials and region for the SDK in this process and in the children; no instance metadata.
fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in env_pairs() {
            std::env::set_var(k, v);
        }
        for k in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"] {
            std::env::remove_var(k);
        }
    });
}

fn env_pairs() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// moto with AMI validation on, for this process's fake AWS environment.
fn start_moto() -> Moto {
    aws_env();
    Moto::start(&[("MOTO_ENABLE_AMI_VALIDATION", "true")])
}

/// An EC2 handle on `moto`.
fn ec2(moto: &Moto) -> Ec2 {
    Ec2::connect(&Ec2Options {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.url.clone()),
        call_timeout: Duration::from_secs(10),
    })
    .expect("connect to moto")
}

/// Runs the binary with the fake AWS environment.
fn cli(args: &[&str]) -> Output {
    aws_env();
    Command::new(BIN).args(args).env("RUST_LOG", "info").output().expect("run autopaxos")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The cluster secret the boot tests' user-data carries.
const SECRET: &str = "0123456789abcdef0123456789abcdef-a-test-secret";

fn temp_file(name: &str, contents: &str) -> PathBuf {
    // Under the target directory, which cargo keeps for tests' files: nothing is left in /tmp.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("autopaxos-cloud-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn bake_launches_a_stop_on_shutdown_builder_images_it_and_terminates_it() {
    let moto = start_moto();
    let ec2 = ec2(&moto);
    let url = "http://127.0.0.1:9/autopaxos-x86_64";
    let mut bake = Command::new(BIN)
        .args(["ami", "bake", "--base-ami", KNOWN_AMI, "--binary-url", url, "--instance-type", "c5.xlarge"])
        .args(["--region", "us-east-1", "--endpoint-url", &moto.url, "--timeout", "40s", "--poll", "200ms"])
        .args(["--name", "autopaxos-test-image"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Find the builder, check what it was given, and power it off as its user-data's `poweroff` would.
    let deadline = Instant::now() + Duration::from_secs(30);
    let builder = loop {
        let found = ec2.instances_tagged(TAG_ROLE, "builder").unwrap();
        if let Some(b) = found.into_iter().next() {
            break b;
        }
        assert!(Instant::now() < deadline, "no builder instance appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(builder.instance_type, "c5.xlarge");
    assert_eq!(builder.tags.get("autopaxos:bake").map(String::as_str), Some("autopaxos-test-image"));
    assert_eq!(ec2.shutdown_behavior(&builder.id).unwrap(), "stop");
    let script = ec2.user_data(&builder.id).unwrap();
    assert!(script.starts_with("#!/bin/sh"), "{script}");
    assert!(script.contains(url), "{script}");
    assert!(script.contains("ExecStart=/usr/local/bin/autopaxos boot"), "{script}");
    assert!(script.contains("/etc/sysctl.d/99-autopaxos.conf"), "{script}");
    assert!(script.trim_end().ends_with("poweroff"), "{script}");
    // Still waiting for the builder to stop: no image yet.
    std::thread::sleep(Duration::from_millis(500));
    assert!(bake.try_wait().unwrap().is_none(), "bake finished before the builder stopped");
    ec2.stop(std::slice::from_ref(&builder.id)).unwrap();
    let out = bake.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "bake failed: {stderr}");
    let ami = stdout.trim();
    assert!(ami.starts_with("ami-"), "stdout: {stdout}");
    let images = ec2.images(&[ami.to_string()]).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].state, "available");
    assert_eq!(images[0].name, "autopaxos-test-image");
    let after = ec2.instances(std::slice::from_ref(&builder.id)).unwrap();
    assert_eq!(after[0].state, "terminated", "builder left running");
    // The baked image is a valid AMI for the next launch (AMI validation is on).
    let ids = ec2
        .run_instances(&autopaxos::cloud::ec2::LaunchSpec {
            ami: ami.to_string(),
            instance_type: "c5.large".into(),
            count: 1,
            tags: vec![],
            user_data: String::new(),
            on_shutdown: autopaxos::cloud::ec2::OnShutdown::Terminate,
            key_name: None,
            subnet_id: None,
            security_group_ids: vec![],
        })
        .unwrap();
    ec2.terminate(&ids).unwrap();
}

#[test]
fn bake_from_an_unknown_ami_fails_clearly() {
    let moto = start_moto();
    let t = Instant::now();
    let out = cli(&[
        "ami",
        "bake",
        "--base-ami",
        "ami-00000000deadbeef",
        "--binary-url",
        "http://127.0.0.1:9/x",
        "--endpoint-url",
        &moto.url,
        "--timeout",
        "10s",
    ]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("RunInstances") && stderr.contains("ami-00000000deadbeef"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[test]
fn cloud_up_status_down_by_tags_with_per_node_user_data() {
    let moto = start_moto();
    let ec2 = ec2(&moto);
    let config = temp_file(
        "cloud.toml",
        &format!(
            "cluster = \"t1\"\nami = \"{KNOWN_AMI}\"\nregion = \"us-east-1\"\nbatch_size = 40\n\
             secret_file = \"t1.secret\"\n\
             [roles.batcher]\nnodes = 4\ninstances = 2\ninstance_type = \"c5.large\"\n"
        ),
    );
    let secret_path = config.with_file_name("t1.secret");
    let _ = std::fs::remove_file(&secret_path);
    assert!(cli(&["config", "--new-secret", secret_path.to_str().unwrap()]).status.success());
    let secret = std::fs::read_to_string(&secret_path).unwrap().trim().to_string();
    let config = config.to_str().unwrap();
    let out = cli(&["cloud", "up", "--config", config, "--endpoint-url", &moto.url]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "up failed: {stderr}");
    assert!(stdout.contains("launched 11 instances"), "{stdout}");
    assert!(!stdout.contains(&secret) && !stderr.contains(&secret), "the secret is never printed");

    // Tags and user-data of every instance.
    let list = ec2.cluster_instances("t1").unwrap();
    assert_eq!(list.len(), 11);
    let mut node_ids = Vec::new();
    for i in &list {
        assert_eq!(i.tags.get(TAG_CLUSTER).map(String::as_str), Some("t1"));
        let ud = UserData::parse(&ec2.user_data(&i.id).unwrap(), &i.id).unwrap();
        assert_eq!(ud.cluster, "t1");
        assert_eq!(
            ud.secret.as_ref().map(|s| s.0.as_str()),
            Some(secret.as_str()),
            "the secret is in the user-data"
        );
        assert!(i.tags.values().all(|v| !v.contains(&secret)), "and in no tag");
        assert_eq!(ud.role, i.role());
        assert_eq!(ud.expected_instances, Some(11));
        assert_eq!(ud.batch_size, Some(40));
        assert_eq!(ud.endpoint_url.as_deref(), Some(moto.url.as_str()));
        let tagged: Vec<u32> =
            i.tags[TAG_NODES].split(',').map(|n| n.split('/').next().unwrap().parse().unwrap()).collect();
        assert_eq!(ud.nodes, tagged, "{}", i.id);
        node_ids.extend(tagged);
    }
    node_ids.sort_unstable();
    assert_eq!(node_ids, (1..=13).collect::<Vec<u32>>());
    let batchers: Vec<_> = list.iter().filter(|i| i.role() == "batcher").collect();
    assert_eq!(batchers.len(), 2);
    assert!(batchers
        .iter()
        .all(|b| b.tags[TAG_NODES].split(',').count() == 2 && b.instance_type == "c5.large"));

    // Tag discovery, as `autopaxos boot` on one of them does it: the whole cluster from DescribeInstances.
    let ud = UserData::parse(&ec2.user_data(&batchers[0].id).unwrap(), "ud").unwrap();
    let file = autopaxos::cloud::cluster::discover(&ud).unwrap();
    assert_eq!(file.cluster_id, "t1");
    assert_eq!(file.addresses.len(), 13);
    assert_eq!(file.tunables.batch_size, 40);
    assert_eq!(file.config.batchers.len(), 4);

    let out = cli(&["cloud", "status", "--config", config, "--endpoint-url", &moto.url]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "status failed: {stderr}");
    assert!(stdout.contains("cluster t1: 11 instances"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("i-")).count(), 11, "{stdout}");
    assert!(stdout.contains("proxy-leader") && stdout.contains("running"), "{stdout}");

    // A second `up` refuses to double the cluster.
    let out = cli(&["cloud", "up", "--config", config, "--endpoint-url", &moto.url]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("already has 11 instances"), "{}", text(&out).1);

    let out =
        cli(&["cloud", "down", "--cluster", "t1", "--region", "us-east-1", "--endpoint-url", &moto.url]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "down failed: {stderr}");
    assert!(stdout.contains("terminated 11 instances"), "{stdout}");
    assert!(ec2.cluster_instances("t1").unwrap().is_empty());
    let out = cli(&["cloud", "status", "--config", config, "--endpoint-url", &moto.url]);
    assert!(text(&out).0.contains("cluster t1: 0 instances"), "{}", text(&out).0);
}

#[test]
fn malformed_cloud_toml_names_the_field() {
    let bad = temp_file("bad.toml", &format!("cluster = \"t\"\nami = \"{KNOWN_AMI}\"\ninstance_count = 3\n"));
    let out =
        cli(&["cloud", "up", "--config", bad.to_str().unwrap(), "--endpoint-url", "http://127.0.0.1:9"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("instance_count") && stderr.contains("bad.toml"), "{stderr}");
    let bad = temp_file(
        "bad2.toml",
        &format!("cluster = \"t\"\nami = \"{KNOWN_AMI}\"\n[roles.acceptor]\nnodes = 4\n"),
    );
    let out = cli(&["cloud", "up", "--config", bad.to_str().unwrap(), "--dry-run"]);
    assert!(text(&out).1.contains("roles.acceptor.nodes"), "{}", text(&out).1);
}

#[test]
fn unreachable_endpoint_and_missing_credentials_fail_fast_and_clearly() {
    let closed = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let t = Instant::now();
    let out = cli(&["cloud", "status", "--cluster", "t", "--region", "us-east-1", "--endpoint-url", &closed]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the EC2 endpoint") && stderr.contains(&closed), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());

    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["cloud", "status", "--cluster", "t", "--region", "us-east-1", "--endpoint-url", &closed])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/autopaxos-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/autopaxos-test")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("no AWS credentials"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(15), "took {:?}", t.elapsed());
}

/// `autopaxos boot --user-data FILE` starts the node and it serves; prints process start to serving.
#[test]
fn boot_from_a_user_data_file_serves_quickly() {
    let ports = free_ports(12);
    let (port, metrics) = (ports[0], ports[1]);
    let mut cluster = format!(
        "[cluster]\nid = \"b1\"\nf = 1\n[[node]]\nid = 9\nrole = \"batcher\"\naddress = \"127.0.0.1:{port}\"\n"
    );
    let others = [
        (1, "proposer", ""),
        (2, "proposer", ""),
        (3, "acceptor", "group = 0\n"),
        (4, "acceptor", "group = 0\n"),
        (5, "acceptor", "group = 0\n"),
        (6, "proxy-leader", ""),
        (7, "replica", ""),
        (8, "replica", ""),
        (10, "unbatcher", ""),
    ];
    for ((id, role, extra), p) in others.into_iter().zip(&ports[2..]) {
        cluster.push_str(&format!(
            "[[node]]\nid = {id}\nrole = \"{role}\"\naddress = \"127.0.0.1:{p}\"\n{extra}"
        ));
    }
    let ud = temp_file(
        "user-data.toml",
        &format!(
            "cluster = \"b1\"\nrole = \"batcher\"\nnodes = [9]\nmetrics_addr = \"127.0.0.1:{metrics}\"\n\
             secret = \"{SECRET}\"\ncluster_file = '''\n{cluster}'''\n"
        ),
    );
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let t0 = Instant::now();
    let mut child = Kill(
        Command::new(BIN)
            .args(["boot", "--user-data", ud.to_str().unwrap(), "--cores", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "boot exited early");
        assert!(t0.elapsed() < Duration::from_secs(20), "boot did not serve within 20s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let serving = t0.elapsed();
    println!("boot --user-data: process start to node port accepting: {:.1} ms", serving.as_secs_f64() * 1e3);

    // A malformed user-data file: a clear error naming the field, and exit.
    let bad =
        temp_file("bad-user-data.toml", "cluster = \"b1\"\nrole = \"batcher\"\nnodes = [9]\nport = 1\n");
    let out = Command::new(BIN).args(["boot", "--user-data", bad.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal IMDSv2 on loopback: answers PUT /latest/api/token with a token, then GET /latest/user-data
/// carrying that token with `user_data`; anything else gets 401. Serves two connections.
fn fake_imds(user_data: String) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            let req = String::from_utf8(req).unwrap();
            let reply = if req.starts_with("PUT /latest/api/token ") {
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ntoken".to_string()
            } else if req.starts_with("GET /latest/user-data ")
                && req.contains("X-aws-ec2-metadata-token: token\r\n")
            {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{user_data}", user_data.len())
            } else {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
            };
            s.write_all(reply.as_bytes()).unwrap();
            seen.push(req.lines().next().unwrap_or_default().to_string());
        }
        seen
    });
    (addr, h)
}

/// `autopaxos boot` with no --user-data asks the metadata service (here a loopback stand-in, never
/// 169.254.169.254) with an IMDSv2 token and starts the role it names.
#[test]
fn boot_reads_its_user_data_from_imds_v2_and_serves() {
    let ports = free_ports(11);
    let port = ports[0];
    let mut cluster = format!(
        "[cluster]\nid = \"b2\"\nf = 1\n[[node]]\nid = 6\nrole = \"proxy-leader\"\naddress = \"127.0.0.1:{port}\"\n"
    );
    for ((id, role, extra), p) in [
        (1, "proposer", ""),
        (2, "proposer", ""),
        (3, "acceptor", "group = 0\n"),
        (4, "acceptor", "group = 0\n"),
        (5, "acceptor", "group = 0\n"),
        (7, "replica", ""),
        (8, "replica", ""),
        (9, "batcher", ""),
        (10, "unbatcher", ""),
    ]
    .into_iter()
    .zip(&ports[1..10])
    {
        cluster.push_str(&format!(
            "[[node]]\nid = {id}\nrole = \"{role}\"\naddress = \"127.0.0.1:{}\"\n{extra}",
            p
        ));
    }
    let ud = format!(
        "cluster = \"b2\"\nrole = \"proxy-leader\"\nnodes = [6]\nmetrics_addr = \"127.0.0.1:{}\"\n\
         secret = \"{SECRET}\"\ncluster_file = '''\n{cluster}'''\n",
        ports[10]
    );
    let (imds, server) = fake_imds(ud);
    let mut child = Command::new(BIN)
        .args(["boot", "--imds-addr", &imds.to_string(), "--imds-timeout", "2s", "--cores", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    let served = loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            break true;
        }
        if child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(served, "boot from IMDS did not serve: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.join().unwrap(), ["PUT /latest/api/token HTTP/1.1", "GET /latest/user-data HTTP/1.1"]);
}
