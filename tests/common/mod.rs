//! Helpers for tests that run a real cluster: one `autopaxos` process per node on loopback, a cluster
//! file with free ports in a temp dir, a tiny `/metrics` scraper, and guards that kill every child
//! (SIGKILL, then wait) when a test ends, panicking or not.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whole-cluster tests start ~11 processes on a 2-core machine: they must not overlap.
static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

/// Takes the cluster lock; a test that panicked while holding it does not block the others.
pub fn serialize() -> MutexGuard<'static, ()> {
    CLUSTER_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub const BIN: &str = env!("CARGO_BIN_EXE_autopaxos");

/// Writes a new cluster secret at `path` as a user would: `autopaxos config --new-secret`.
pub fn new_secret(path: &Path) {
    let out =
        Command::new(BIN).args(["config", "--new-secret"]).arg(path).output().expect("run autopaxos config");
    assert!(out.status.success(), "config --new-secret: {}", String::from_utf8_lossy(&out.stderr));
}

/// Ports that are free now: all bound at once (so they differ), then released for the nodes.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

/// A unique, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let unique = format!(
        "autopaxos-it-{tag}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let dir = std::env::temp_dir().join(unique);
    fs::create_dir_all(&dir).expect("create the temp dir");
    dir
}

/// A directory removed (with its contents) when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(temp_dir(tag))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The last `lines` lines of a file (or why it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A child process that is SIGKILLed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `BIN args...` in `dir` (where a node's default data dir, `./autopaxos-data`, lands),
    /// with stdout and stderr going to `<dir>/<name>.{out,err}`.
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("NO_COLOR", "1") // plain log files (tracing-subscriber colours even when not a tty)
            // A process SIGKILLed on drop never removes its scratch directory (`local` keeps
            // ~650 MB of logs there): inside the test's own directory, it goes with the test.
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("create the stdout file"))
            .stderr(fs::File::create(&stderr).expect("create the stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} for {name}: {e}"));
        Proc { name: name.to_string(), child, stdout, stderr, status: None }
    }

    /// SIGKILL (Rust's `Child::kill` on Unix) and reap; harmless if it already exited.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Waits at most `limit` for the process to exit; kills it and panics if it does not.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_running() {
                return self.status.expect("exited");
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not exit within {limit:?}; stderr tail:\n{}",
                    self.name,
                    tail(&self.stderr, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One configured node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u32,
    /// As on the command line and in the cluster file: `proposer`, `proxy-leader`, ...
    pub role: &'static str,
    pub group: Option<usize>,
    pub port: u16,
    pub metrics_port: u16,
}

impl NodeSpec {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.metrics_port))
    }
}

/// The f=1 shape of `autopaxos config --example`: proposers 1-2, acceptors 3-5 (group 0), proxy
/// leader 6, replicas 7-8, batcher 9, unbatcher 10.
pub const F1_ROLES: [(u32, &str, Option<usize>); 10] = [
    (1, "proposer", None),
    (2, "proposer", None),
    (3, "acceptor", Some(0)),
    (4, "acceptor", Some(0)),
    (5, "acceptor", Some(0)),
    (6, "proxy-leader", None),
    (7, "replica", None),
    (8, "replica", None),
    (9, "batcher", None),
    (10, "unbatcher", None),
];

/// A cluster of one process per node, in its own temp dir. Dropping it kills every process it
/// started (nodes and clients), prints their log tails if the test is panicking, and removes the dir.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub cluster_id: String,
    pub nodes: Vec<NodeSpec>,
    /// Node processes by node id (None: not started or removed).
    procs: Vec<(u32, Proc)>,
    /// Other processes (clients): killed and reported like the nodes.
    pub extra: Vec<Proc>,
}

/// The address a `local --resp-addr` or `gateway` process prints as `resp <addr>`, once it has.
pub fn wait_resp_addr(proc: &mut Proc, limit: Duration) -> SocketAddr {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(addr) =
            proc.stdout_text().lines().find_map(|l| l.strip_prefix("resp ")?.trim().parse().ok())
        {
            return addr;
        }
        assert!(
            proc.is_running() && Instant::now() < deadline,
            "{}: no RESP address; stderr:\n{}",
            proc.name,
            proc.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Starts gateway `id` joining this cluster (`gateway --join`), listening for it at `listen`,
    /// serving RESP on a free loopback port and metrics at `metrics` if given, on core 1. Returns its
    /// index in `extra` and its RESP address.
    pub fn start_joined_gateway(
        &mut self,
        id: u32,
        listen: &str,
        metrics: Option<&str>,
    ) -> (usize, SocketAddr) {
        let (config, id) = (self.config.display().to_string(), id.to_string());
        let mut args: Vec<String> = [
            "gateway",
            "--config",
            &config,
            "--node",
            &id,
            "--resp-addr",
            "127.0.0.1:0",
            "--join",
            "--listen",
            listen,
            "--cores",
            "1",
        ]
        .map(String::from)
        .to_vec();
        if let Some(m) = metrics {
            args.extend(["--metrics-addr".to_string(), m.to_string()]);
        }
        let index = self.extra.len();
        self.extra.push(Proc::spawn(&self.dir, &format!("gateway{id}"), &args));
        let addr = wait_resp_addr(&mut self.extra[index], Duration::from_secs(20));
        (index, addr)
    }

    /// Writes the cluster file for the f=1 example shape with free ports; starts nothing.
    pub fn configure(tag: &str) -> Cluster {
        Cluster::configure_with(tag, |_| String::new())
    }

    /// `configure`, with `settings(cluster dir)` (TOML lines) added under `[settings]`.
    pub fn configure_with(tag: &str, settings: impl Fn(&Path) -> String) -> Cluster {
        let dir = temp_dir(tag);
        let ports = free_ports(2 * F1_ROLES.len());
        let nodes: Vec<NodeSpec> = F1_ROLES
            .iter()
            .enumerate()
            .map(|(i, &(id, role, group))| NodeSpec {
                id,
                role,
                group,
                port: ports[2 * i],
                metrics_port: ports[2 * i + 1],
            })
            .collect();
        let cluster_id = format!("it-{tag}");
        new_secret(&dir.join("cluster.secret"));
        let mut toml = format!(
            "# written by tests/common/mod.rs\n[cluster]\nid = \"{cluster_id}\"\nf = 1\nsecret_file = \"cluster.secret\"\n\n[settings]\n{}",
            settings(&dir)
        );
        for node in &nodes {
            toml.push_str(&format!("\n[[node]]\nid = {}\nrole = \"{}\"\n", node.id, node.role));
            if let Some(g) = node.group {
                toml.push_str(&format!("group = {g}\n"));
            }
            toml.push_str(&format!("address = \"{}\"\n", node.addr()));
        }
        let config = dir.join("cluster.toml");
        fs::write(&config, toml).expect("write the cluster file");
        Cluster { dir, config, cluster_id, nodes, procs: Vec::new(), extra: Vec::new() }
    }

    /// The command line of node `id` of `role` that is not in the cluster file and joins the
    /// running cluster (`<role> --join`), listening at `addr`, metrics at `metrics`, on one core.
    pub fn join_args(&self, role: &str, id: u32, addr: SocketAddr, metrics: SocketAddr) -> Vec<String> {
        let (config, id, addr, metrics) =
            (self.config.display().to_string(), id.to_string(), addr.to_string(), metrics.to_string());
        [role, "--config", &config, "--node", &id, "--join", "--listen", &addr, "--metrics-addr", &metrics]
            .into_iter()
            .chain(["--cores", "1"])
            .map(String::from)
            .collect()
    }

    pub fn secret(&self) -> autopaxos::secret::ClusterSecret {
        autopaxos::secret::ClusterSecret::load(&self.dir.join("cluster.secret")).expect("the cluster secret")
    }

    /// The spec of configured node `id`.
    pub fn node(&self, id: u32) -> &NodeSpec {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Starts node `id` as its own process, on core 0 or 1 alternately (fewer if the machine has fewer).
    pub fn start_node(&mut self, id: u32) {
        let node = self.node(id).clone();
        let args = self.node_args(id, node.metrics_addr());
        let proc = Proc::spawn(&self.dir, &format!("node{id}-{}", node.role), &args);
        self.procs.push((id, proc));
    }

    /// Starts the given nodes and waits until each one's metrics endpoint answers.
    pub fn start_nodes(&mut self, ids: &[u32]) {
        for &id in ids {
            self.start_node(id);
        }
        for &id in ids {
            self.wait_metrics(id, Duration::from_secs(15));
        }
    }

    /// Starts the whole cluster: everything but the proposers first, then proposer 1, which wins the
    /// first election, then proposer 2. Returns once every node's metrics endpoint answers and
    /// proposer 1 leads.
    pub fn start(tag: &str) -> Cluster {
        Cluster::start_with(tag, |_| String::new())
    }

    /// `start`, with `settings(cluster dir)` (TOML lines) added under `[settings]` of the cluster file.
    pub fn start_with(tag: &str, settings: impl Fn(&Path) -> String) -> Cluster {
        let mut cluster = Cluster::configure_with(tag, settings);
        cluster.start_nodes(&[3, 4, 5, 6, 7, 8, 9, 10]);
        // Proposer 1 alone first, until it leads: on a busy machine proposer 2, started right after
        // it, sometimes won the first election, and tests that say "proposer 1 leads" need it to.
        cluster.start_nodes(&[1]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while cluster.elections_won(1) < 1.0 {
            assert!(Instant::now() < deadline, "proposer 1 did not win an election within 15 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.start_nodes(&[2]);
        cluster
    }

    /// `autopaxos_elections_won_total` of proposer `id`.
    pub fn elections_won(&self, id: u32) -> f64 {
        let node = id.to_string();
        self.metric(id, "autopaxos_elections_won_total", &[("role", "proposer"), ("node", &node)])
    }

    pub fn proc_mut(&mut self, id: u32) -> &mut Proc {
        &mut self
            .procs
            .iter_mut()
            .find(|(n, _)| *n == id)
            .unwrap_or_else(|| panic!("node {id} not started"))
            .1
    }

    /// SIGKILLs node `id` (its process stays in the list, for its logs).
    pub fn kill_node(&mut self, id: u32) {
        self.proc_mut(id).kill();
    }

    /// Waits until node `id`'s `/metrics` answers 200; panics with its log tail if it does not in time
    /// or if its process exits.
    pub fn wait_metrics(&mut self, id: u32, limit: Duration) {
        let addr = self.node(id).metrics_addr();
        let deadline = Instant::now() + limit;
        loop {
            if scrape(addr).is_ok() {
                return;
            }
            let proc = self.proc_mut(id);
            if !proc.is_running() {
                panic!("node {id} exited while starting; stderr:\n{}", tail(&proc.stderr, 30));
            }
            if Instant::now() >= deadline {
                panic!("node {id}'s metrics at {addr} did not answer within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes node `id`'s `/metrics`.
    pub fn metrics(&self, id: u32) -> String {
        let addr = self.node(id).metrics_addr();
        scrape(addr).unwrap_or_else(|e| panic!("scrape node {id} at {addr}: {e}"))
    }

    /// The sum of `name`'s samples on node `id` whose labels include `labels` (0 if none).
    pub fn metric(&self, id: u32, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(id), name, labels)
    }

    /// Polls node `id`'s metric until `ok(value)`; returns the value, or panics after `limit`.
    pub fn wait_for_metric(
        &self,
        id: u32,
        name: &str,
        labels: &[(&str, &str)],
        limit: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.metric(id, name, labels);
            if ok(value) {
                return value;
            }
            if Instant::now() >= deadline {
                panic!("node {id}: {name}{labels:?} is still {value} after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `autopaxos client --config <file> <args...>` as a process of this cluster.
    pub fn spawn_client(&mut self, name: &str, args: &[&str]) -> usize {
        let mut all = vec!["client".to_string(), "--config".into(), self.config.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        self.extra.push(Proc::spawn(&self.dir, name, &all));
        self.extra.len() - 1
    }

    /// Where node `id` keeps its state: the default data dir (`./autopaxos-data`) under the cluster dir,
    /// which is the nodes' working directory.
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.dir.join("autopaxos-data").join(format!("node-{id}"))
    }

    /// The command line `start_node` uses for node `id`, with metrics served at `metrics_addr`.
    pub fn node_args(&self, id: u32, metrics_addr: SocketAddr) -> Vec<String> {
        let node = self.node(id);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
        let core = (id as usize + 1) % cores;
        vec![
            node.role.into(),
            "--config".into(),
            self.config.display().to_string(),
            "--node".into(),
            id.to_string(),
            "--cores".into(),
            core.to_string(),
            "--metrics-addr".into(),
            metrics_addr.to_string(),
        ]
    }

    /// Starts node `id` again (same command line, same working directory, so the same data dir)
    /// after its process was killed. The old process moves to `extra` (its logs are still reported
    /// if the test panics); the new one logs to `node<id>-<role>-run<n>.{out,err}` and becomes the
    /// node's process for `proc_mut`, `kill_node` and `wait_metrics`. Does not wait for it.
    pub fn restart_node(&mut self, id: u32) {
        let at =
            self.procs.iter().position(|(n, _)| *n == id).unwrap_or_else(|| panic!("node {id} not started"));
        let (_, mut old) = self.procs.remove(at);
        assert!(!old.is_running(), "restart_node({id}): the old process is still running");
        self.extra.push(old);
        let role = self.node(id).role;
        let prefix = format!("node{id}-{role}");
        let runs = self.extra.iter().filter(|p| p.name.starts_with(&prefix)).count();
        let args = self.node_args(id, self.node(id).metrics_addr());
        let proc = Proc::spawn(&self.dir, &format!("{prefix}-run{}", runs + 1), &args);
        self.procs.push((id, proc));
    }

    /// Starts another process for node `id` (same command line and working directory) serving its
    /// metrics at `metrics_addr`; it is kept in `extra` (killed and reported like a client).
    /// Returns its index there.
    pub fn spawn_node_copy(&mut self, id: u32, name: &str, metrics_addr: SocketAddr) -> usize {
        let args = self.node_args(id, metrics_addr);
        self.extra.push(Proc::spawn(&self.dir, name, &args));
        self.extra.len() - 1
    }

    /// Runs a client to completion (bounded by `limit`); returns (success, stdout, stderr).
    pub fn run_client(&mut self, name: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
        let index = self.spawn_client(name, args);
        let proc = &mut self.extra[index];
        let status = proc.wait(limit);
        (status.success(), proc.stdout_text(), proc.stderr_text())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, proc) in &mut self.procs {
            proc.kill();
        }
        for proc in &mut self.extra {
            proc.kill();
        }
        if std::thread::panicking() {
            for proc in self.procs.iter().map(|(_, p)| p).chain(&self.extra) {
                eprintln!("----- {} stdout (tail) -----\n{}", proc.name, tail(&proc.stdout, 10));
                eprintln!("----- {} stderr (tail) -----\n{}", proc.name, tail(&proc.stderr, 25));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `GET /metrics` over a plain TCP stream (HTTP/1.1, `Connection: close`); the body on a 200.
pub fn scrape(addr: SocketAddr) -> io::Result<String> {
    http_get(addr, "/metrics")
}

pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let _ = stream.shutdown(Shutdown::Both);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no end of headers in {} bytes", raw.len())))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        return Err(io::Error::other(format!("HTTP status: {status}")));
    }
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        dechunk(body)
    } else {
        Ok(body.to_string())
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> io::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) =
            body.split_once("\r\n").ok_or_else(|| io::Error::other("truncated chunked body"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| io::Error::other(format!("bad chunk size '{size_line}': {e}")))?;
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size {
            return Err(io::Error::other("truncated chunk"));
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
}

/// One sample of the text exposition: name, labels (in order), value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Parses one line of the text exposition; None for comments, blanks, nonsense.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        // label="value",... with \" \\ \n escapes in values.
        let mut chars = inner.char_indices().peekable();
        let mut end = None;
        loop {
            while chars.peek().is_some_and(|&(_, c)| c == ',' || c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some(&(i, '}')) => {
                    end = Some(i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.push((key.trim().to_string(), value));
        }
        rest = &inner[end? + 1..];
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// The sum of every sample of `name` whose labels include all of `want` (0 if there is none).
pub fn metric_sum(exposition: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter_map(parse_sample)
        .filter(|(n, labels, _)| {
            n == name && want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, value)| value)
        .sum::<f64>()
        + 0.0 // an empty f64 sum is -0.0
}

/// Whether the exposition has at least one sample of `name` with labels including `want`.
pub fn has_metric(exposition: &str, name: &str, want: &[(&str, &str)]) -> bool {
    exposition.lines().filter_map(parse_sample).any(|(n, labels, _)| {
        n == name && want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    })
}

/// `client --verify`'s counts from its stdout: (writes read back intact, writes lost).
pub fn verify_counts(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("verify:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let intact = words.get(1)?.parse().ok()?;
    let lost_at = words.iter().position(|w| *w == "lost")?;
    let lost = words.get(lost_at.checked_sub(1)?)?.parse().ok()?;
    Some((intact, lost))
}

/// The cluster's nodes with their metrics addresses, for `autoscale --nodes-from`.
pub fn write_nodes_file(cluster: &Cluster) -> PathBuf {
    let mut text = format!("[cluster]\nid = \"{}\"\nf = 1\n", cluster.cluster_id);
    for n in &cluster.nodes {
        text.push_str(&format!(
            "\n[[node]]\nid = {}\nrole = \"{}\"\naddress = \"{}\"\nmetrics_address = \"{}\"\n",
            n.id,
            n.role,
            n.addr(),
            n.metrics_addr()
        ));
        if let Some(g) = n.group {
            text.push_str(&format!("group = {g}\n"));
        }
    }
    let path = cluster.dir.join("nodes.toml");
    fs::write(&path, text).expect("write nodes file");
    path
}

/// A capacities file for the autoscaler: every role at `cmds` commands/s and `msgs` messages/s per core.
pub fn write_capacities(dir: &Path, cmds: f64, msgs: f64) -> PathBuf {
    let mut text =
        String::from("[machine]\ncores = 2\ncpu = \"test\"\nkernel = \"test\"\nmeasured = \"2026-11-21\"\n");
    for role in ["acceptor", "batcher", "proposer", "proxy-leader", "replica", "unbatcher"] {
        text.push_str(&format!(
            "\n[roles.{role}]\ncmds_per_sec_per_core = {cmds:?}\nmsgs_per_sec_per_core = {msgs:?}\n\
             batch_size = 100\nread_budget = 100\n"
        ));
    }
    let path = dir.join("capacities.toml");
    fs::write(&path, text).expect("write capacities");
    path
}

/// Fake credentials and region for the AWS SDK in this process and its children, no instance
/// metadata, no profile or endpoint from the environment (tests talk to moto only).
pub fn fake_aws_env() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/autopaxos-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/autopaxos-test"),
    ] {
        std::env::set_var(k, v);
    }
    for k in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"] {
        std::env::remove_var(k);
    }
}

/// moto's EC2 server (`python3 -m moto.server`, installed by `scripts/setup.sh`) on a free loopback
/// port, with `env` set for the server; killed when dropped, also when a test panics.
pub struct Moto {
    child: std::process::Child,
    /// Its endpoint URL.
    pub url: String,
}

impl Moto {
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let port = free_ports(1)[0];
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (run scripts/setup.sh to install moto[server])");
        let moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {addr} within 30s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One per-second progress line of `autopaxos client` (stderr): `   3.0s       12,345 cmds/s   ...`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Seconds since measuring started, at the end of the interval.
    pub at: f64,
    /// Commands completed per second over the interval.
    pub rate: f64,
    /// Commands completed since measuring started.
    pub done: u64,
}

/// Every progress line in a client's stderr, in order.
pub fn progress_lines(stderr: &str) -> Vec<Progress> {
    stderr
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 3 || words[2] != "cmds/s" {
                return None;
            }
            let at = words[0].strip_suffix('s')?.parse().ok()?;
            let rate = words[1].replace(',', "").parse().ok()?;
            let done = words.get(3).and_then(|w| w.replace(',', "").parse().ok()).unwrap_or(0);
            Some(Progress { at, rate, done })
        })
        .collect()
}

// ---- verifying loads and replica agreement (durability and teaching tests) ----

/// A verifying client of `seconds` measured seconds (after its 1 s warm-up), 32 closed-loop clients.
pub fn spawn_verifying_client(cluster: &mut Cluster, name: &str, seconds: u32) -> usize {
    let duration = format!("{seconds}s");
    cluster.spawn_client(
        name,
        &["--duration", &duration, "--clients", "32", "--verify", "--node", "5000", "--cores", "1"],
    )
}

/// Waits until the client has printed at least `lines` progress lines of which the ones after the
/// first `after` include one with a rate above zero; panics (with the client's stderr) if it exits
/// first or `limit` passes. Returns the progress so far.
pub fn wait_progress(cluster: &mut Cluster, client: usize, after: usize, limit: Duration) -> Vec<Progress> {
    let deadline = Instant::now() + limit;
    loop {
        let proc = &mut cluster.extra[client];
        let progress = progress_lines(&proc.stderr_text());
        if progress.iter().skip(after).any(|p| p.rate > 0.0) {
            return progress;
        }
        assert!(
            proc.is_running(),
            "the client exited before a progress line with commands after line {after}:\n{}",
            tail(&proc.stderr, 40)
        );
        assert!(
            Instant::now() < deadline,
            "no progress line with commands after line {after} within {limit:?}:\n{}",
            tail(&proc.stderr, 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client's result: writes read back intact and lost, and its per-second progress.
pub struct Verified {
    pub intact: u64,
    pub lost: u64,
    pub progress: Vec<Progress>,
}

/// Waits (bounded) for the verifying client to finish; asserts it succeeded, lost nothing and read
/// something back.
pub fn finish_client(cluster: &mut Cluster, client: usize) -> Verified {
    let proc = &mut cluster.extra[client];
    let status = proc.wait(Duration::from_secs(90));
    let (stdout, stderr) = (proc.stdout_text(), proc.stderr_text());
    let context = format!("client stdout:\n{stdout}\nclient stderr (tail):\n{}", tail(&proc.stderr, 40));
    assert!(status.success(), "the verifying client failed ({status}):\n{context}");
    let (intact, lost) = verify_counts(&stdout).unwrap_or_else(|| panic!("no verify: line\n{context}"));
    assert_eq!(lost, 0, "acknowledged writes were lost:\n{context}");
    assert!(intact > 0, "nothing was read back:\n{context}");
    Verified { intact, lost, progress: progress_lines(&stderr) }
}

pub const REPLICAS: [u32; 2] = [7, 8];

/// (executed watermark, state digest) of replica `id`, or why its metrics cannot be read.
pub fn replica_status(cluster: &Cluster, id: u32) -> Result<(f64, f64), String> {
    let node = id.to_string();
    let labels = [("role", "replica"), ("node", node.as_str())];
    let text = scrape(cluster.node(id).metrics_addr()).map_err(|e| format!("scrape replica {id}: {e}"))?;
    Ok((
        metric_sum(&text, "autopaxos_executed_watermark", &labels),
        metric_sum(&text, "autopaxos_state_digest", &labels),
    ))
}

/// What both replicas settled on, and how long that took.
pub struct Agreement {
    pub watermark: u64,
    pub digest: u64,
    pub settled_in: Duration,
}

/// Polls both replicas until they report the same non-zero executed watermark and the same non-zero
/// state digest, unchanged for a full second (the digest is refreshed ~250 ms after the watermark
/// stops, so a second of stillness means both digests are of that watermark). Panics after `limit`
/// with what each replica last said and the tails of their logs.
pub fn replicas_agree(cluster: &mut Cluster, limit: Duration) -> Agreement {
    let started = Instant::now();
    let deadline = started + limit;
    let mut stable: Option<(Instant, [f64; 4])> = None;
    let mut history: Vec<String> = Vec::new();
    loop {
        let seen = match (replica_status(cluster, REPLICAS[0]), replica_status(cluster, REPLICAS[1])) {
            (Ok(a), Ok(b)) => {
                let now = [a.0, a.1, b.0, b.1];
                let agree = a.0 == b.0 && a.0 > 0.0 && a.1 == b.1 && a.1 != 0.0;
                if agree {
                    match stable {
                        Some((since, values)) if values == now => {
                            if since.elapsed() >= Duration::from_secs(1) {
                                return Agreement {
                                    watermark: a.0 as u64,
                                    digest: a.1 as u64,
                                    settled_in: started.elapsed(),
                                };
                            }
                        }
                        _ => stable = Some((Instant::now(), now)),
                    }
                } else {
                    stable = None;
                }
                format!(
                    "replica 7: watermark {} digest {}; replica 8: watermark {} digest {}",
                    a.0, a.1 as u64, b.0, b.1 as u64
                )
            }
            (a, b) => {
                stable = None;
                format!("replica 7: {a:?}; replica 8: {b:?}")
            }
        };
        if history.last() != Some(&seen) {
            history.push(seen);
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = REPLICAS
                .iter()
                .map(|&id| {
                    let proc = cluster.proc_mut(id);
                    format!("--- replica {id} stderr (tail) ---\n{}", tail(&proc.stderr, 30))
                })
                .collect();
            let shown = &history[history.len().saturating_sub(20)..];
            panic!(
                "the replicas did not settle on the same watermark and digest within {limit:?}; \
                 what they said (last {} changes):\n{}\n{}",
                shown.len(),
                shown.join("\n"),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter of node `id`'s current process (0 if its metrics cannot be read).
pub fn counter(cluster: &Cluster, id: u32, name: &str) -> f64 {
    let node = id.to_string();
    scrape(cluster.node(id).metrics_addr()).map_or(0.0, |text| metric_sum(&text, name, &[("node", &node)]))
}

// ---- the operator's commands (reconfiguration and healing tests) ----

/// Runs `autopaxos <args>` to completion; returns (success, stdout, stderr).
pub fn run(cluster: &Cluster, name: &str, args: &[String]) -> (bool, String, String) {
    let mut proc = Proc::spawn(&cluster.dir, name, args);
    let status = proc.wait(Duration::from_secs(90));
    (status.success(), proc.stdout_text(), proc.stderr_text())
}

pub fn status_json(cluster: &Cluster) -> serde_json::Value {
    let args = ["status", "--config", &cluster.config.display().to_string(), "--json"].map(String::from);
    let (_, out, err) = run(cluster, "status", &args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}):\n{out}\n{err}"))
}

pub fn epoch(status: &serde_json::Value) -> u64 {
    status["configuration"]["epoch"].as_u64().expect("a configuration in the status")
}

/// Waits until the status shows configuration `epoch` and every replica it names at one
/// watermark (above 0) with one state digest taken at that watermark.
pub fn assert_replicas_agree(cluster: &Cluster, epoch_wanted: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let end = status_json(cluster);
        assert_eq!(epoch(&end), epoch_wanted, "{end:#}");
        let named: Vec<u64> =
            end["configuration"]["replicas"].as_array().unwrap().iter().filter_map(|r| r.as_u64()).collect();
        let replicas: Vec<&serde_json::Value> = (end["nodes"].as_array().unwrap().iter())
            .filter(|n| n["role"] == "replica" && n["node"].as_u64().is_some_and(|id| named.contains(&id)))
            .collect();
        // A digest counts only if taken at the replica's watermark now (one taken earlier, say at
        // slot 0 when every state is empty, would agree whatever happened since).
        let digests: Vec<(Option<u64>, Option<&str>)> = replicas
            .iter()
            .map(|r| {
                (
                    r["digest_at"].as_u64().filter(|&at| Some(at) == r["executed"].as_u64()),
                    r["digest"].as_str(),
                )
            })
            .collect();
        let current = digests.iter().all(|d| d.0.is_some_and(|at| at > 0));
        if digests.len() == named.len() && current && digests.iter().all(|d| *d == digests[0]) {
            eprintln!("replicas {named:?} agree: {digests:?}");
            return end;
        }
        assert!(Instant::now() < deadline, "replicas' digests differ or are missing: {end:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Fails the test, saying how to get it, when a tool the tests need is not installed.
pub fn require_on_path(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    assert!(found, "{tool} not found on PATH: run scripts/setup.sh");
}

/// A Prometheus server (Debian's, which scripts/setup.sh installs) on loopback, running a test's
/// configuration with its data and log in a test's directory; killed and reaped when dropped.
pub struct Prometheus {
    child: Child,
    /// Its HTTP API.
    pub web: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on `config` (its text, written to `dir`) with `extra` flags, and waits at
    /// most `limit` until it says it is ready; panics with its log if it does not.
    pub fn start(dir: &Path, config: &str, extra: &[&str], limit: Duration) -> Prometheus {
        require_on_path("prometheus");
        let path = dir.join("prometheus.yml");
        fs::write(&path, config).expect("write prometheus.yml");
        let web = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
        let log = dir.join("prometheus.log");
        let out = fs::File::create(&log).expect("create the prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={web}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("share the log"))
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus { child, web, log };
        let deadline = Instant::now() + limit;
        while http_get(web, "/-/ready").is_err() {
            if Instant::now() > deadline || prometheus.child.try_wait().unwrap().is_some() {
                prometheus.fail("Prometheus did not become ready");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// `GET path` on its HTTP API, parsed.
    pub fn api(&self, path: &str) -> Result<serde_json::Value, String> {
        let body = http_get(self.web, path).map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Stops it and fails the test with `why` and the end of its log.
    pub fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("{why}\n--- prometheus log ---\n{}", tail(&self.log, 30))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
