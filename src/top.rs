//! `autopaxos top`: a live view of a cluster made from its nodes' `/metrics`, with no Prometheus or
//! Grafana to start. Per role and per node: commands/s, frames/s, a latency's p50 and p99, a
//! replica's lag, the leader, the node's state.
//!
//! Two halves. [`Top::frame`] and [`Frame::render`] are pure: they turn two consecutive scrapes into
//! rows and rows into text, take every time they need from the scrapes, and never touch a socket or
//! a clock (so the tests feed them synthetic expositions). [`run`] is the driver: it scrapes every
//! target at once on std threads each interval and prints the frame; it holds no logic of its own.
//!
//! Rates and latencies are differences between two scrapes, never values since a process started:
//! the first frame shows `-` for them, and so does a counter that went down (the process restarted).

use crate::autoscale::scrape::{self, Sample};
use crate::protocol::{NodeId, RoleKind};
use crate::runtime::local::thousands;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Commands carried by the messages a node received.
pub const COMMANDS_IN: &str = "autopaxos_commands_in_total";
/// Frames a node received.
pub const FRAMES_IN: &str = "autopaxos_frames_in_total";
/// Clients' and gateways' command latency (histogram).
pub const COMMAND_LATENCY: &str = "autopaxos_command_latency_seconds";
/// Time through a role, by `stage` (histogram).
pub const STAGE_SECONDS: &str = "autopaxos_stage_seconds";
/// Time one sync of the write-ahead log took (histogram).
pub const FSYNC_SECONDS: &str = "autopaxos_fsync_seconds";
/// 1 on the proposer that leads.
pub const LEADER: &str = "autopaxos_leader";
/// 1 for the node's current `state` label.
pub const NODE_STATE: &str = "autopaxos_node_state";
/// Replicas: every slot below this is executed.
pub const EXECUTED_WATERMARK: &str = "autopaxos_executed_watermark";

/// The order roles are shown in: the path a command takes.
const ROLE_ORDER: [&str; 8] =
    ["client", "gateway", "batcher", "proposer", "proxy-leader", "acceptor", "replica", "unbatcher"];

/// The longest a scrape may take, whatever the interval: a node that slow is shown as down.
const SCRAPE_TIMEOUT_MAX: Duration = Duration::from_secs(5);
/// The shortest: below it a loaded loopback node may miss a scrape for no fault of its own.
const SCRAPE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// How often the driver checks for Ctrl-C while it waits for the next frame.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What one target answered.
#[derive(Debug, Clone)]
pub struct TargetScrape {
    /// The `/metrics` endpoint.
    pub addr: SocketAddr,
    /// When the scrape started, on the driver's monotonic clock (rates divide by differences of it).
    pub at: Duration,
    /// The samples, or why there are none.
    pub result: Result<Vec<Sample>, String>,
}

/// Every target's answer at one tick.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Wall-clock time of the tick (the header shows it).
    pub wall: SystemTime,
    /// One entry per distinct target.
    pub targets: Vec<TargetScrape>,
}

/// A node the cluster file names: it is shown even when no target serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Its id.
    pub node: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// Its `metrics_address`, if the file names one.
    pub metrics_address: Option<SocketAddr>,
}

/// Which node a row is: the `role` and `node` labels of its samples.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NodeKey {
    role_rank: usize,
    role: String,
    node_num: u64,
    node: String,
}

impl NodeKey {
    fn new(role: &str, node: &str) -> Self {
        NodeKey {
            role_rank: role_rank(role),
            role: role.to_string(),
            // Numeric ids sort as numbers; others after them, by name.
            node_num: node.parse().unwrap_or(u64::MAX),
            node: node.to_string(),
        }
    }
}

fn role_rank(role: &str) -> usize {
    ROLE_ORDER.iter().position(|r| *r == role).unwrap_or(ROLE_ORDER.len())
}

/// One node's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Its `role` label.
    pub role: String,
    /// Its `node` label.
    pub node: String,
    /// `up`, `joining`, `leaving`, `learning` (its `autopaxos_node_state`; `up` if it exports none),
    /// or `down` when no reachable target serves it.
    pub state: String,
    /// A proposer whose `autopaxos_leader` is 1.
    pub leader: bool,
    /// Commands per second in the messages it received.
    pub commands_per_sec: Option<f64>,
    /// Frames per second it received.
    pub frames_per_sec: Option<f64>,
    /// What the latency columns measure: `command`, a stage (`batching`, `queued`, `phase2`,
    /// `ordering`) or `fsync`.
    pub latency_of: Option<String>,
    /// Median of that latency over the interval, in seconds.
    pub p50_seconds: Option<f64>,
    /// 99th percentile of it over the interval, in seconds.
    pub p99_seconds: Option<f64>,
    /// Replicas: slots behind the highest executed watermark among the replicas.
    pub lag_slots: Option<u64>,
    /// Where its metrics were scraped (or would be).
    pub target: Option<SocketAddr>,
    /// Why it is down.
    pub error: Option<String>,
}

impl Row {
    /// Node `key` in `state`, scraped at `target`, with nothing measured yet.
    fn new(key: &NodeKey, state: String, target: Option<SocketAddr>) -> Row {
        Row {
            role: key.role.clone(),
            node: key.node.clone(),
            state,
            leader: false,
            commands_per_sec: None,
            frames_per_sec: None,
            latency_of: None,
            p50_seconds: None,
            p99_seconds: None,
            lag_slots: None,
            target,
            error: None,
        }
    }
}

/// A role's sums.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleTotal {
    /// The role.
    pub role: String,
    /// Nodes shown.
    pub nodes: usize,
    /// Of which not down.
    pub up: usize,
    /// Sum of the nodes' commands/s (`None` if none has a rate).
    pub commands_per_sec: Option<f64>,
    /// Sum of the nodes' frames/s.
    pub frames_per_sec: Option<f64>,
}

/// A target that did not answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetError {
    /// The endpoint.
    pub addr: SocketAddr,
    /// What went wrong.
    pub error: String,
}

/// One refresh of the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    /// The cluster file's id.
    pub cluster: Option<String>,
    /// Wall-clock time, RFC 3339 (UTC).
    pub time: String,
    /// Targets that answered.
    pub targets_reachable: usize,
    /// Targets scraped.
    pub targets: usize,
    /// The ones that did not answer.
    pub target_errors: Vec<TargetError>,
    /// Nodes whose `autopaxos_leader` is 1 (one, unless a leader change is under way).
    pub leaders: Vec<String>,
    /// Every node, by role then id.
    pub nodes: Vec<Row>,
    /// Per role, in the order shown.
    pub roles: Vec<RoleTotal>,
}

/// The view's memory: the previous scrape (rates are differences) and every node seen so far (a
/// node that vanishes is shown as down, not dropped).
pub struct Top {
    cluster: Option<String>,
    expected: Vec<Expected>,
    prev: Option<Scrape>,
    seen: BTreeMap<NodeKey, SocketAddr>,
}

/// A node's samples at one scrape.
struct NodeSamples<'a> {
    at: Duration,
    addr: SocketAddr,
    samples: Vec<&'a Sample>,
}

/// Groups every answered target's samples by their `role` and `node` labels (samples without both,
/// such as an autoscaler's, belong to no row). A node served by two targets is taken from the first.
fn by_node(scrape: &Scrape) -> BTreeMap<NodeKey, NodeSamples<'_>> {
    let mut nodes: BTreeMap<NodeKey, NodeSamples<'_>> = BTreeMap::new();
    for target in &scrape.targets {
        let Ok(samples) = &target.result else { continue };
        let mut here: BTreeMap<NodeKey, Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            if let (Some(role), Some(node)) = (s.label("role"), s.label("node")) {
                here.entry(NodeKey::new(role, node)).or_default().push(s);
            }
        }
        for (key, samples) in here {
            nodes.entry(key).or_insert(NodeSamples { at: target.at, addr: target.addr, samples });
        }
    }
    nodes
}

/// Sum of a node's samples named `name`.
fn total(samples: &[&Sample], name: &str) -> Option<f64> {
    samples.iter().filter(|s| s.name == name).fold(None, |acc, s| Some(acc.unwrap_or(0.0) + s.value))
}

/// Per second between two readings of a counter; `None` without both, with no time between them,
/// or when the counter went down (its process restarted).
fn rate(prev: Option<f64>, cur: Option<f64>, seconds: f64) -> Option<f64> {
    let (prev, cur) = (prev?, cur?);
    (cur >= prev && seconds > 0.0).then(|| (cur - prev) / seconds)
}

/// A classic histogram's cumulative buckets: `(le, count)`, `le` ascending, `+Inf` last.
pub type Buckets = Vec<(f64, f64)>;

/// The series of histogram `family` among a node's samples: its `_bucket` samples grouped by every
/// label but `le`, `role` and `node`; each with a name (its `stage` label, else `default`).
fn histograms(samples: &[&Sample], family: &str, default: &str) -> Vec<(String, Buckets)> {
    let bucket = format!("{family}_bucket");
    let mut series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket) {
        let Some(le) = s.label("le").and_then(parse_le) else { continue };
        let key: Vec<(String, String)> =
            s.labels.iter().filter(|(k, _)| !matches!(k.as_str(), "le" | "role" | "node")).cloned().collect();
        series.entry(key).or_default().push((le, s.value));
    }
    series
        .into_iter()
        .map(|(key, mut buckets)| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let name = key.iter().find(|(k, _)| k == "stage").map_or(default.to_string(), |(_, v)| v.clone());
            (name, buckets)
        })
        .collect()
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// The observations between two readings of a histogram: bucket by bucket differences. `None` when
/// the buckets differ or any count went down (the process restarted).
pub fn bucket_delta(prev: &Buckets, cur: &Buckets) -> Option<Buckets> {
    if prev.len() != cur.len() {
        return None;
    }
    prev.iter()
        .zip(cur)
        .map(|(&(le_p, p), &(le_c, c))| (le_p == le_c && c >= p).then_some((le_c, c - p)))
        .collect()
}

/// The `q` quantile of cumulative buckets, as Prometheus's `histogram_quantile` computes it: find
/// the bucket holding rank `q * count` and interpolate linearly inside it (the first bucket starts at
/// 0); a rank in the `+Inf` bucket answers the highest finite bound. `None` with no observations or
/// no `+Inf` bucket.
pub fn quantile(q: f64, buckets: &Buckets) -> Option<f64> {
    let &(last_le, count) = buckets.last()?;
    if last_le != f64::INFINITY || count <= 0.0 || buckets.len() < 2 {
        return None;
    }
    // Prometheus forces counts to be monotonic (a scrape is not atomic across buckets).
    let mut monotonic = Vec::with_capacity(buckets.len());
    let mut highest = 0.0f64;
    for &(le, c) in buckets {
        highest = highest.max(c);
        monotonic.push((le, highest));
    }
    let rank = q.clamp(0.0, 1.0) * count;
    let b = monotonic.iter().position(|&(_, c)| c >= rank).unwrap_or(monotonic.len() - 1);
    if b == monotonic.len() - 1 {
        return Some(monotonic[b - 1].0);
    }
    let (upper, count_here) = monotonic[b];
    if b == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, count_below) = if b == 0 { (0.0, 0.0) } else { monotonic[b - 1] };
    if count_here == count_below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - count_below) / (count_here - count_below))
}

/// The latency columns of one node: which histogram, its p50 and p99 over the interval.
struct Latency {
    of: String,
    p50: Option<f64>,
    p99: Option<f64>,
}

/// The histograms a role's latency column reads, in order of preference, each with the name shown
/// when its series have no `stage` label.
fn latency_families(role: &str) -> &'static [(&'static str, &'static str)] {
    match role {
        "client" | "gateway" => &[(COMMAND_LATENCY, "command")],
        "acceptor" => &[(FSYNC_SECONDS, "fsync")],
        "batcher" | "proposer" | "proxy-leader" => &[(STAGE_SECONDS, "stage")],
        "replica" => &[(STAGE_SECONDS, "stage"), (FSYNC_SECONDS, "fsync")],
        // It times nothing of its own (its sync histogram, if exported, is always empty).
        "unbatcher" => &[],
        // Anything else (a mock, a newer role): whatever it has.
        _ => &[(COMMAND_LATENCY, "command"), (STAGE_SECONDS, "stage"), (FSYNC_SECONDS, "fsync")],
    }
}

/// The first histogram (by [`latency_families`]) with observations in the interval; if none has
/// any, the first that exists, with no quantiles. Exporters that render histograms as summaries
/// (`quantile` labels, no buckets) are read as they are when they observed anything in the interval:
/// their quantiles cover their own window, not this interval.
fn latency(role: &str, prev: Option<&[&Sample]>, cur: &[&Sample]) -> Option<Latency> {
    let mut idle = None;
    for &(family, default) in latency_families(role) {
        for (of, buckets) in histograms(cur, family, default) {
            let delta = prev.and_then(|prev| {
                let before = histograms(prev, family, default).into_iter().find(|(o, _)| *o == of)?.1;
                bucket_delta(&before, &buckets)
            });
            match delta {
                Some(d) if d.last().is_some_and(|&(_, n)| n > 0.0) => {
                    return Some(Latency { of, p50: quantile(0.5, &d), p99: quantile(0.99, &d) });
                }
                _ => {
                    idle.get_or_insert(Latency { of, p50: None, p99: None });
                }
            }
        }
        // A summary: only if it saw observations in this interval (an idle node's quantiles are 0).
        let count = format!("{family}_count");
        let observed =
            rate(prev.and_then(|p| total(p, &count)), total(cur, &count), 1.0).is_some_and(|n| n > 0.0);
        let summary = |q: &str| {
            cur.iter().find(|s| s.name == family && s.label("quantile") == Some(q)).map(|s| s.value)
        };
        if let (Some(p50), Some(p99)) = (summary("0.5"), summary("0.99")) {
            if observed {
                return Some(Latency { of: default.to_string(), p50: Some(p50), p99: Some(p99) });
            }
            idle.get_or_insert(Latency { of: default.to_string(), p50: None, p99: None });
        }
    }
    idle
}

/// The `state` label of the node's `autopaxos_node_state` sample that is 1.
fn state(samples: &[&Sample]) -> Option<String> {
    samples
        .iter()
        .find(|s| s.name == NODE_STATE && s.value == 1.0)
        .and_then(|s| s.label("state"))
        .map(str::to_string)
}

impl Top {
    /// A view of the nodes the cluster file names (`expected`, shown even when down) and of any
    /// other node a target serves.
    pub fn new(cluster: Option<String>, expected: Vec<Expected>) -> Self {
        Top { cluster, expected, prev: None, seen: BTreeMap::new() }
    }

    /// The expected nodes of a cluster file.
    pub fn expected_of(file: &crate::runtime::config::ClusterFile) -> Vec<Expected> {
        file.config
            .all_nodes()
            .map(|(node, role)| Expected {
                node,
                role,
                metrics_address: file.metrics_addresses.get(&node).copied(),
            })
            .collect()
    }

    /// The frame of `scrape`, against the previous one; remembers `scrape` for the next.
    pub fn frame(&mut self, scrape: Scrape) -> Frame {
        let frame = self.compute(&scrape);
        self.prev = Some(scrape);
        frame
    }

    fn compute(&mut self, scrape: &Scrape) -> Frame {
        let cur = by_node(scrape);
        let prev = self.prev.as_ref().map(by_node).unwrap_or_default();
        for (key, n) in &cur {
            self.seen.insert(key.clone(), n.addr);
        }
        let errors: BTreeMap<SocketAddr, &str> = scrape
            .targets
            .iter()
            .filter_map(|t| t.result.as_ref().err().map(|e| (t.addr, e.as_str())))
            .collect();

        let mut rows: BTreeMap<NodeKey, Row> = BTreeMap::new();
        for (key, n) in &cur {
            let before = prev.get(key);
            let seconds = before.map_or(0.0, |b| n.at.saturating_sub(b.at).as_secs_f64());
            let counter_rate =
                |name| rate(before.and_then(|b| total(&b.samples, name)), total(&n.samples, name), seconds);
            let latency = latency(&key.role, before.map(|b| b.samples.as_slice()), &n.samples);
            let state = state(&n.samples).unwrap_or_else(|| "up".into());
            let row = Row {
                leader: total(&n.samples, LEADER) == Some(1.0),
                commands_per_sec: counter_rate(COMMANDS_IN),
                frames_per_sec: counter_rate(FRAMES_IN),
                latency_of: latency.as_ref().map(|l| l.of.clone()),
                p50_seconds: latency.as_ref().and_then(|l| l.p50),
                p99_seconds: latency.as_ref().and_then(|l| l.p99),
                ..Row::new(key, state, Some(n.addr))
            };
            rows.insert(key.clone(), row);
        }

        // Nodes the file names or a target served before, served by no target now.
        let mut missing: BTreeMap<NodeKey, Option<SocketAddr>> = BTreeMap::new();
        for e in &self.expected {
            missing.insert(NodeKey::new(e.role.name(), &e.node.to_string()), e.metrics_address);
        }
        for (key, addr) in &self.seen {
            missing.entry(key.clone()).or_insert(Some(*addr));
        }
        for (key, addr) in missing {
            if rows.contains_key(&key) {
                continue;
            }
            let error = match addr {
                None => "no metrics_address in the cluster file".to_string(),
                Some(a) => match errors.get(&a) {
                    Some(e) => e.to_string(),
                    None => format!("not served at {a}"),
                },
            };
            let row = Row { error: Some(error), ..Row::new(&key, "down".into(), addr) };
            rows.insert(key, row);
        }

        // Lag: behind the highest watermark any replica reports.
        let watermarks: BTreeMap<&NodeKey, f64> = cur
            .iter()
            .filter(|(k, _)| k.role == "replica")
            .filter_map(|(k, n)| Some((k, total(&n.samples, EXECUTED_WATERMARK)?)))
            .collect();
        let highest =
            watermarks.values().copied().fold(None, |m: Option<f64>, w| Some(m.map_or(w, |m| m.max(w))));
        for (key, w) in &watermarks {
            if let (Some(row), Some(h)) = (rows.get_mut(*key), highest) {
                row.lag_slots = Some((h - w).max(0.0) as u64);
            }
        }

        let nodes: Vec<Row> = rows.into_values().collect();
        let leaders = nodes.iter().filter(|r| r.leader).map(|r| r.node.clone()).collect();
        Frame {
            cluster: self.cluster.clone(),
            time: humantime::format_rfc3339_seconds(scrape.wall).to_string(),
            targets_reachable: scrape.targets.len() - errors.len(),
            targets: scrape.targets.len(),
            target_errors: errors
                .iter()
                .map(|(a, e)| TargetError { addr: *a, error: e.to_string() })
                .collect(),
            leaders,
            roles: totals(&nodes),
            nodes,
        }
    }
}

fn totals(nodes: &[Row]) -> Vec<RoleTotal> {
    let mut roles: Vec<RoleTotal> = Vec::new();
    let add = |sum: Option<f64>, x: Option<f64>| match (sum, x) {
        (s, None) => s,
        (s, Some(x)) => Some(s.unwrap_or(0.0) + x),
    };
    for row in nodes {
        // Rows come sorted by role, so a role's rows are together.
        if roles.last().is_none_or(|t| t.role != row.role) {
            roles.push(RoleTotal {
                role: row.role.clone(),
                nodes: 0,
                up: 0,
                commands_per_sec: None,
                frames_per_sec: None,
            });
        }
        let t = roles.last_mut().expect("pushed above");
        t.nodes += 1;
        t.up += usize::from(row.state != "down");
        t.commands_per_sec = add(t.commands_per_sec, row.commands_per_sec);
        t.frames_per_sec = add(t.frames_per_sec, row.frames_per_sec);
    }
    roles
}

/// A duration in seconds as a person reads it: `850 µs`, `1.25 ms`, `2.40 s`.
pub fn human_seconds(s: f64) -> String {
    let three = |v: f64, unit: &str| {
        if v < 10.0 {
            format!("{v:.2} {unit}")
        } else if v < 100.0 {
            format!("{v:.1} {unit}")
        } else {
            format!("{v:.0} {unit}")
        }
    };
    if !s.is_finite() {
        "-".into()
    } else if s < 1e-3 {
        three(s * 1e6, "µs")
    } else if s < 1.0 {
        three(s * 1e3, "ms")
    } else {
        three(s, "s")
    }
}

/// A rate with thousands separators; one decimal below 10 so a trickle does not read as 0.
pub fn human_rate(r: f64) -> String {
    if r < 10.0 && r.fract() != 0.0 {
        format!("{r:.1}")
    } else {
        thousands(r.round() as u64)
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

impl Frame {
    /// The frame as a table, one line per node and a total line per role.
    pub fn render(&self) -> String {
        // Labels and errors come from the targets: no control character of theirs reaches the
        // terminal (an escape sequence would redraw it).
        self.render_raw().chars().map(|c| if c.is_control() && c != '\n' { '?' } else { c }).collect()
    }

    fn render_raw(&self) -> String {
        let mut out = String::new();
        let mut head = String::from("autopaxos top");
        if let Some(c) = &self.cluster {
            let _ = write!(head, " · cluster {c}");
        }
        let _ = write!(
            head,
            " · {} · targets {}/{} reachable · ",
            self.time, self.targets_reachable, self.targets
        );
        match self.leaders.as_slice() {
            [] => head.push_str("no leader"),
            [one] => {
                let _ = write!(head, "leader: proposer {one}");
            }
            many => {
                let _ = write!(head, "leaders: {} (changing)", many.join(", "));
            }
        }
        out.push_str(&head);
        out.push('\n');
        for e in &self.target_errors {
            let _ = writeln!(out, "  unreachable {}: {}", e.addr, e.error);
        }
        let line = |out: &mut String, cols: [&str; 11]| {
            let [role, node, state, leader, cmds, frames, of, p50, p99, lag, last] = cols;
            let text = format!(
                "{role:<12} {node:>5}  {state:<8} {leader:<6} {cmds:>11} {frames:>10}  {of:<8} {p50:>9} {p99:>9} {lag:>8}  {last}"
            );
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(
            &mut out,
            [
                "ROLE",
                "NODE",
                "STATE",
                "LEADER",
                "COMMANDS/S",
                "FRAMES/S",
                "LATENCY",
                "P50",
                "P99",
                "LAG",
                "TARGET",
            ],
        );
        for total in &self.roles {
            for r in self.nodes.iter().filter(|r| r.role == total.role) {
                let last = match (&r.error, r.target) {
                    (Some(e), _) => e.clone(),
                    (None, Some(t)) => t.to_string(),
                    (None, None) => String::new(),
                };
                line(
                    &mut out,
                    [
                        &r.role,
                        &r.node,
                        &r.state,
                        if r.leader { "leader" } else { "" },
                        &or_dash(r.commands_per_sec.map(human_rate)),
                        &or_dash(r.frames_per_sec.map(human_rate)),
                        r.latency_of.as_deref().unwrap_or("-"),
                        &or_dash(r.p50_seconds.map(human_seconds)),
                        &or_dash(r.p99_seconds.map(human_seconds)),
                        &if r.role == "replica" {
                            or_dash(r.lag_slots.map(thousands))
                        } else {
                            String::new()
                        },
                        &last,
                    ],
                );
            }
            let nodes = if total.nodes == 1 { "node" } else { "nodes" };
            line(
                &mut out,
                [
                    &total.role,
                    "total",
                    &format!("{}/{} up", total.up, total.nodes),
                    "",
                    &or_dash(total.commands_per_sec.map(human_rate)),
                    &or_dash(total.frames_per_sec.map(human_rate)),
                    "",
                    "",
                    "",
                    "",
                    &format!("({} {nodes})", total.nodes),
                ],
            );
        }
        out
    }
}

/// How frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Redrawn in place on a terminal (ANSI home and clear).
    Terminal,
    /// One after another, no escape codes (pipes, files, scripts).
    Plain,
    /// One JSON object per frame, one per line.
    Json,
}

impl Output {
    /// How to write frames to this process's stdout: `Plain` when asked or when stdout is not a
    /// terminal, else `Terminal`.
    pub fn for_stdout(plain: bool) -> Output {
        if plain || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            Output::Plain
        } else {
            Output::Terminal
        }
    }
}

/// What [`run`] needs.
pub struct TopOptions {
    /// The cluster file's id, for the header.
    pub cluster: Option<String>,
    /// Nodes the cluster file names.
    pub expected: Vec<Expected>,
    /// `/metrics` endpoints besides those the expected nodes name.
    pub targets: Vec<SocketAddr>,
    /// Time between frames.
    pub interval: Duration,
    /// Stop after this many frames.
    pub count: Option<u64>,
    /// How to write frames.
    pub output: Output,
    /// Set (by Ctrl-C, or by whoever runs the view alongside a load) to stop after the current frame.
    pub stop: Arc<AtomicBool>,
}

/// Every distinct target: the file's metrics addresses, then the `--target`s.
pub fn targets_of(opts: &TopOptions) -> Vec<SocketAddr> {
    let mut seen = BTreeSet::new();
    opts.expected
        .iter()
        .filter_map(|e| e.metrics_address)
        .chain(opts.targets.iter().copied())
        .filter(|a| seen.insert(*a))
        .collect()
}

/// Scrapes every target at once, each on its own thread, each bounded by `timeout`.
pub fn scrape_all(targets: &[SocketAddr], timeout: Duration, epoch: Instant) -> Scrape {
    let wall = SystemTime::now();
    let targets = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|&addr| {
                s.spawn(move || {
                    let at = epoch.elapsed();
                    let result = scrape::fetch(addr, timeout)
                        .map_err(|e| e.to_string())
                        .and_then(|text| scrape::parse(&text).map_err(|e| format!("{addr}: {e}")));
                    TargetScrape { addr, at, result }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a scrape thread does not panic")).collect()
    });
    Scrape { wall, targets }
}

/// Scrapes and prints a frame every interval until `count` frames or `stop`.
pub fn run(opts: TopOptions, out: &mut dyn Write) -> Result<(), String> {
    let targets = targets_of(&opts);
    if targets.is_empty() {
        return Err(
            "nothing to scrape: give --target ADDR, or a cluster file whose nodes name a metrics_address"
                .into(),
        );
    }
    let timeout = (opts.interval / 2).clamp(SCRAPE_TIMEOUT_MIN, SCRAPE_TIMEOUT_MAX);
    let mut top = Top::new(opts.cluster.clone(), opts.expected.clone());
    let epoch = Instant::now();
    let mut frames = 0u64;
    let mut next = epoch;
    while !opts.stop.load(Ordering::Relaxed) {
        let frame = top.frame(scrape_all(&targets, timeout, epoch));
        let text = match opts.output {
            Output::Json => serde_json::to_string(&frame).map_err(|e| e.to_string())? + "\n",
            Output::Plain => frame.render() + "\n",
            // The screen cleared once; then home, each line cleared to its end, and everything below:
            // no flicker, no scrolling.
            Output::Terminal => format!(
                "{}\x1b[H{}\x1b[J",
                if frames == 0 { "\x1b[2J" } else { "" },
                frame.render().replace('\n', "\x1b[K\n")
            ),
        };
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // `top | head`: the reader has had enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("cannot write the frame: {e}")),
        }
        frames += 1;
        if opts.count.is_some_and(|n| frames >= n) {
            break;
        }
        // On schedule; after a stall (a blocked terminal, slow scrapes), from now: never a burst.
        next = (next + opts.interval).max(Instant::now());
        while !opts.stop.load(Ordering::Relaxed) {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(STOP_POLL));
        }
    }
    Ok(())
}

/// A view running on its own thread beside something else in the same process (`local --top`: the
/// load runs, the view scrapes the process's own exporter). [`Alongside::finish`] stops it.
pub struct Alongside {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Alongside {
    /// Starts a view of the `/metrics` served at `target`, writing frames to `out`.
    pub fn start(
        target: SocketAddr,
        interval: Duration,
        output: Output,
        mut out: Box<dyn Write + Send>,
    ) -> Result<Alongside, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let opts = TopOptions {
            cluster: None,
            expected: Vec::new(),
            targets: vec![target],
            interval,
            count: None,
            output,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("top".into())
            .spawn(move || run(opts, &mut out))
            .map_err(|e| format!("cannot start the top thread: {e}"))?;
        Ok(Alongside { stop, thread })
    }

    /// Stops the view after the frame it is on; its error, if it failed.
    pub fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| "the top thread panicked".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn target(port: u16, at_ms: u64, text: &str) -> TargetScrape {
        TargetScrape {
            addr: addr(port),
            at: Duration::from_millis(at_ms),
            result: Ok(scrape::parse(text).unwrap()),
        }
    }

    fn scrape(targets: Vec<TargetScrape>) -> Scrape {
        Scrape { wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000), targets }
    }

    /// A classic histogram of node `node` with these cumulative counts at le 0.001, 0.01, 0.1, +Inf.
    fn histogram(family: &str, role: &str, node: u32, extra: &str, counts: [u64; 4]) -> String {
        let les = ["0.001", "0.01", "0.1", "+Inf"];
        let mut s = String::new();
        for (le, c) in les.iter().zip(counts) {
            let _ = writeln!(s, "{family}_bucket{{role=\"{role}\",node=\"{node}\",{extra}le=\"{le}\"}} {c}");
        }
        let _ = writeln!(s, "{family}_count{{role=\"{role}\",node=\"{node}\",{extra}}} {}", counts[3]);
        let _ = writeln!(s, "{family}_sum{{role=\"{role}\",node=\"{node}\",{extra}}} 1.5");
        s
    }

    fn counters(role: &str, node: u32, commands: u64, frames: u64) -> String {
        format!(
            "# TYPE {COMMANDS_IN} counter\n{COMMANDS_IN}{{role=\"{role}\",node=\"{node}\"}} {commands}\n\
             {FRAMES_IN}{{role=\"{role}\",node=\"{node}\"}} {frames}\n\
             {NODE_STATE}{{role=\"{role}\",node=\"{node}\",state=\"up\"}} 1\n\
             {NODE_STATE}{{role=\"{role}\",node=\"{node}\",state=\"leaving\"}} 0\n"
        )
    }

    fn row<'a>(f: &'a Frame, role: &str, node: &str) -> &'a Row {
        f.nodes
            .iter()
            .find(|r| r.role == role && r.node == node)
            .unwrap_or_else(|| panic!("no {role} {node}"))
    }

    #[test]
    fn rates_are_differences_over_the_time_between_scrapes_and_dash_on_the_first_frame() {
        let mut top = Top::new(None, vec![]);
        let first = top.frame(scrape(vec![target(1, 0, &counters("replica", 7, 1000, 50))]));
        let r = row(&first, "replica", "7");
        assert_eq!((r.commands_per_sec, r.frames_per_sec, r.state.as_str()), (None, None, "up"));
        assert!(first.render().contains(" -"), "{}", first.render());
        let second = top.frame(scrape(vec![target(1, 2000, &counters("replica", 7, 5000, 250))]));
        let r = row(&second, "replica", "7");
        assert_eq!(r.commands_per_sec, Some(2000.0));
        assert_eq!(r.frames_per_sec, Some(100.0));
        assert_eq!(second.roles[0].commands_per_sec, Some(2000.0));
        assert!(second.render().contains("2,000"), "{}", second.render());
    }

    #[test]
    fn a_counter_that_went_down_shows_a_dash_not_a_negative_rate() {
        let mut top = Top::new(None, vec![]);
        top.frame(scrape(vec![target(1, 0, &counters("batcher", 9, 9000, 900))]));
        let f = top.frame(scrape(vec![target(1, 1000, &counters("batcher", 9, 10, 1))]));
        assert_eq!(row(&f, "batcher", "9").commands_per_sec, None);
        assert_eq!(row(&f, "batcher", "9").frames_per_sec, None);
        assert!(!f.render().contains("-8,"), "{}", f.render());
        // ...and the next interval is measured from the restart.
        let f = top.frame(scrape(vec![target(1, 2000, &counters("batcher", 9, 510, 1))]));
        assert_eq!(row(&f, "batcher", "9").commands_per_sec, Some(500.0));
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket_as_histogram_quantile_does() {
        // 100 observations: 50 under 1 ms, 40 in (1, 10] ms, 10 in (10, 100] ms.
        let b = vec![(0.001, 50.0), (0.01, 90.0), (0.1, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(0.001));
        let p25 = quantile(0.25, &b).unwrap();
        assert!((p25 - 0.0005).abs() < 1e-12, "{p25}");
        let p70 = quantile(0.7, &b).unwrap();
        assert!((p70 - 0.0055).abs() < 1e-12, "{p70}");
        let p99 = quantile(0.99, &b).unwrap();
        assert!((p99 - 0.091).abs() < 1e-12, "{p99}");
        // Past the last finite bound: that bound.
        let over = vec![(0.001, 0.0), (0.01, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.99, &over), Some(0.01));
        assert_eq!(quantile(0.5, &vec![(0.001, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &vec![(0.001, 3.0)]), None, "no +Inf bucket");
    }

    #[test]
    fn latency_comes_from_bucket_deltas_between_the_two_scrapes() {
        let mut top = Top::new(None, vec![]);
        let stage = "stage=\"phase2\",";
        top.frame(scrape(vec![target(
            1,
            0,
            &histogram(STAGE_SECONDS, "proxy-leader", 6, stage, [1000, 1000, 1000, 1000]),
        )]));
        // Since then: 10 observations, all in (10, 100] ms. Cumulatively the median is under 1 ms; over
        // the interval it is 55 ms.
        let f = top.frame(scrape(vec![target(
            1,
            1000,
            &histogram(STAGE_SECONDS, "proxy-leader", 6, stage, [1000, 1000, 1010, 1010]),
        )]));
        let r = row(&f, "proxy-leader", "6");
        assert_eq!(r.latency_of.as_deref(), Some("phase2"));
        assert!((r.p50_seconds.unwrap() - 0.055).abs() < 1e-9, "{r:?}");
        assert!((r.p99_seconds.unwrap() - 0.0991).abs() < 1e-9, "{r:?}");
        assert!(f.render().contains("phase2     55.0 ms"), "{}", f.render());
        // No observations in the next interval: the column names the stage, the values are dashes.
        let f = top.frame(scrape(vec![target(
            1,
            2000,
            &histogram(STAGE_SECONDS, "proxy-leader", 6, stage, [1000, 1000, 1010, 1010]),
        )]));
        let r = row(&f, "proxy-leader", "6");
        assert_eq!((r.latency_of.as_deref(), r.p50_seconds), (Some("phase2"), None));
    }

    #[test]
    fn each_role_reads_its_own_histogram() {
        let text = [
            histogram(COMMAND_LATENCY, "client", 20, "", [0, 0, 0, 0]),
            histogram(FSYNC_SECONDS, "acceptor", 3, "", [0, 0, 0, 0]),
            histogram(STAGE_SECONDS, "batcher", 9, "stage=\"batching\",", [0, 0, 0, 0]),
            // A replica times ordering and syncs its log: the stage wins.
            histogram(STAGE_SECONDS, "replica", 7, "stage=\"ordering\",", [0, 0, 0, 0]),
            histogram(FSYNC_SECONDS, "replica", 7, "", [0, 0, 0, 0]),
            histogram(FSYNC_SECONDS, "unbatcher", 10, "", [0, 0, 0, 0]),
        ]
        .concat();
        let later = [
            histogram(COMMAND_LATENCY, "client", 20, "", [0, 4, 4, 4]),
            histogram(FSYNC_SECONDS, "acceptor", 3, "", [2, 2, 2, 2]),
            histogram(STAGE_SECONDS, "batcher", 9, "stage=\"batching\",", [0, 0, 8, 8]),
            histogram(STAGE_SECONDS, "replica", 7, "stage=\"ordering\",", [1, 1, 1, 1]),
            histogram(FSYNC_SECONDS, "replica", 7, "", [1, 1, 1, 1]),
            histogram(FSYNC_SECONDS, "unbatcher", 10, "", [0, 0, 0, 0]),
        ]
        .concat();
        let mut top = Top::new(None, vec![]);
        top.frame(scrape(vec![target(1, 0, &text)]));
        let f = top.frame(scrape(vec![target(1, 1000, &later)]));
        let of = |role, node| row(&f, role, node).latency_of.clone().unwrap_or_else(|| "-".into());
        assert_eq!(of("client", "20"), "command");
        assert_eq!(of("acceptor", "3"), "fsync");
        assert_eq!(of("batcher", "9"), "batching");
        assert_eq!(of("replica", "7"), "ordering");
        assert_eq!(
            of("unbatcher", "10"),
            "-",
            "an unbatcher times nothing: its empty fsync histogram is not shown"
        );
        assert!((row(&f, "acceptor", "3").p50_seconds.unwrap() - 0.0005).abs() < 1e-12);
    }

    #[test]
    fn an_exporter_that_renders_summaries_is_read_only_when_it_observed_something() {
        let summary = |count: u64, p50: f64| {
            format!(
                "{FSYNC_SECONDS}{{role=\"acceptor\",node=\"3\",quantile=\"0.5\"}} {p50}\n\
                 {FSYNC_SECONDS}{{role=\"acceptor\",node=\"3\",quantile=\"0.99\"}} {}\n\
                 {FSYNC_SECONDS}_count{{role=\"acceptor\",node=\"3\"}} {count}\n",
                p50 * 2.0
            )
        };
        let mut top = Top::new(None, vec![]);
        let f = top.frame(scrape(vec![target(1, 0, &summary(0, 0.0))]));
        assert_eq!(row(&f, "acceptor", "3").p50_seconds, None, "nothing observed: a dash, not 0 µs");
        let f = top.frame(scrape(vec![target(1, 1000, &summary(40, 0.002))]));
        let r = row(&f, "acceptor", "3");
        assert_eq!(
            (r.latency_of.as_deref(), r.p50_seconds, r.p99_seconds),
            (Some("fsync"), Some(0.002), Some(0.004))
        );
        let f = top.frame(scrape(vec![target(1, 2000, &summary(40, 0.002))]));
        assert_eq!(row(&f, "acceptor", "3").p50_seconds, None, "idle since the last scrape");
    }

    #[test]
    fn replicas_lag_behind_the_highest_watermark() {
        let text = format!(
            "{EXECUTED_WATERMARK}{{role=\"replica\",node=\"7\"}} 1200\n\
             {EXECUTED_WATERMARK}{{role=\"replica\",node=\"8\"}} 1000\n\
             {COMMANDS_IN}{{role=\"proposer\",node=\"1\"}} 5\n"
        );
        let f = Top::new(None, vec![]).frame(scrape(vec![target(1, 0, &text)]));
        assert_eq!(row(&f, "replica", "7").lag_slots, Some(0));
        assert_eq!(row(&f, "replica", "8").lag_slots, Some(200));
        assert_eq!(row(&f, "proposer", "1").lag_slots, None);
        let text = f.render();
        let line = text.lines().find(|l| l.starts_with("replica") && l.contains(" 8 ")).unwrap();
        assert!(line.contains(" 200 "), "{text}");
    }

    #[test]
    fn the_leader_is_marked_and_named_in_the_header() {
        let text = format!(
            "{LEADER}{{role=\"proposer\",node=\"1\"}} 0\n{LEADER}{{role=\"proposer\",node=\"2\"}} 1\n"
        );
        let f = Top::new(Some("demo".into()), vec![]).frame(scrape(vec![target(1, 0, &text)]));
        assert_eq!(f.leaders, vec!["2".to_string()]);
        assert!(row(&f, "proposer", "2").leader && !row(&f, "proposer", "1").leader);
        let text = f.render();
        assert!(text.lines().next().unwrap().contains("cluster demo"), "{text}");
        assert!(text.lines().next().unwrap().contains("leader: proposer 2"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("proposer") && l.contains(" 2 ") && l.contains("leader")));
        let none = format!("{LEADER}{{role=\"proposer\",node=\"1\"}} 0\n");
        let f = Top::new(None, vec![]).frame(scrape(vec![target(1, 0, &none)]));
        assert!(f.leaders.is_empty());
        assert!(f.render().lines().next().unwrap().contains("no leader"));
    }

    #[test]
    fn configured_nodes_no_target_serves_show_as_down_with_the_reason() {
        let expected = vec![
            Expected { node: 1, role: RoleKind::Proposer, metrics_address: Some(addr(1)) },
            Expected { node: 3, role: RoleKind::Acceptor, metrics_address: Some(addr(2)) },
            Expected { node: 7, role: RoleKind::Replica, metrics_address: None },
            Expected { node: 8, role: RoleKind::Replica, metrics_address: Some(addr(1)) },
        ];
        let mut top = Top::new(Some("demo".into()), expected);
        let failed =
            TargetScrape { addr: addr(2), at: Duration::ZERO, result: Err("connection refused".into()) };
        let f = top.frame(scrape(vec![target(1, 0, &counters("proposer", 1, 0, 0)), failed]));
        assert_eq!((f.targets_reachable, f.targets), (1, 2));
        assert_eq!(row(&f, "proposer", "1").state, "up");
        let acceptor = row(&f, "acceptor", "3");
        assert_eq!(
            (acceptor.state.as_str(), acceptor.error.as_deref()),
            ("down", Some("connection refused"))
        );
        assert_eq!(row(&f, "replica", "7").error.as_deref(), Some("no metrics_address in the cluster file"));
        assert_eq!(row(&f, "replica", "8").error.as_deref(), Some("not served at 127.0.0.1:1"));
        let replicas = f.roles.iter().find(|t| t.role == "replica").unwrap();
        assert_eq!((replicas.nodes, replicas.up), (2, 0));
        let text = f.render();
        assert!(text.contains("targets 1/2 reachable"), "{text}");
        assert!(text.contains("unreachable 127.0.0.1:2: connection refused"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.starts_with("acceptor") && l.contains("down") && l.contains("refused")));
        // Roles in the order a command flows.
        let order: Vec<&str> = f.roles.iter().map(|t| t.role.as_str()).collect();
        assert_eq!(order, ["proposer", "acceptor", "replica"]);
    }

    #[test]
    fn a_node_that_vanishes_stays_as_down() {
        let mut top = Top::new(None, vec![]);
        top.frame(scrape(vec![target(5, 0, &counters("batcher", 9, 1, 1))]));
        let gone =
            TargetScrape { addr: addr(5), at: Duration::from_secs(1), result: Err("timed out".into()) };
        let f = top.frame(scrape(vec![gone]));
        let r = row(&f, "batcher", "9");
        assert_eq!(
            (r.state.as_str(), r.error.as_deref(), r.target),
            ("down", Some("timed out"), Some(addr(5)))
        );
    }

    #[test]
    fn states_other_than_up_are_shown() {
        let text = format!(
            "{NODE_STATE}{{role=\"replica\",node=\"8\",state=\"up\"}} 0\n\
             {NODE_STATE}{{role=\"replica\",node=\"8\",state=\"learning\"}} 1\n"
        );
        let f = Top::new(None, vec![]).frame(scrape(vec![target(1, 0, &text)]));
        assert_eq!(row(&f, "replica", "8").state, "learning");
    }

    #[test]
    fn json_frames_carry_every_row() {
        let mut top = Top::new(None, vec![]);
        top.frame(scrape(vec![target(1, 0, &counters("replica", 7, 0, 0))]));
        let f = top.frame(scrape(vec![target(1, 500, &counters("replica", 7, 100, 0))]));
        let v: serde_json::Value = serde_json::to_value(&f).unwrap();
        assert_eq!(v["nodes"][0]["role"], "replica");
        assert_eq!(v["nodes"][0]["commands_per_sec"], 200.0);
        assert_eq!(v["nodes"][0]["p50_seconds"], serde_json::Value::Null);
        assert_eq!(v["roles"][0]["nodes"], 1);
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn durations_and_rates_read_easily() {
        assert_eq!(human_seconds(0.000_025), "25.0 µs");
        assert_eq!(human_seconds(0.000_850), "850 µs");
        assert_eq!(human_seconds(0.001_25), "1.25 ms");
        assert_eq!(human_seconds(0.055), "55.0 ms");
        assert_eq!(human_seconds(2.4), "2.40 s");
        assert_eq!(human_rate(1_234_567.4), "1,234,567");
        assert_eq!(human_rate(0.5), "0.5");
        assert_eq!(human_rate(0.0), "0");
    }

    /// Serves `body` as /metrics to every connection until the test ends.
    fn serve(body: String) -> SocketAddr {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 1024];
                let mut raw = Vec::new();
                while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(conn, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            }
        });
        addr
    }

    /// A `Write` the test reads back after the view's thread wrote into it.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_view_alongside_scrapes_every_interval_until_finished() {
        let addr = serve(counters("batcher", 9, 10, 10));
        let out = Shared::default();
        let view =
            Alongside::start(addr, Duration::from_millis(100), Output::Plain, Box::new(out.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(450));
        let stopping = Instant::now();
        view.finish().unwrap();
        assert!(stopping.elapsed() < Duration::from_secs(1), "finish stops it within a poll");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let frames = text.matches("autopaxos top").count();
        assert!((3..=7).contains(&frames), "about one frame per 100 ms: {frames}\n{text}");
        assert!(text.contains("batcher          9  up"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn targets_are_scraped_once_each() {
        let opts = TopOptions {
            cluster: None,
            expected: vec![
                Expected { node: 1, role: RoleKind::Proposer, metrics_address: Some(addr(1)) },
                Expected { node: 2, role: RoleKind::Proposer, metrics_address: Some(addr(1)) },
                Expected { node: 3, role: RoleKind::Acceptor, metrics_address: None },
            ],
            targets: vec![addr(2), addr(1)],
            interval: Duration::from_secs(1),
            count: None,
            output: Output::Plain,
            stop: Arc::default(),
        };
        assert_eq!(targets_of(&opts), vec![addr(1), addr(2)]);
    }
}
