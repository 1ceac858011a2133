//! Prometheus metrics: counters and gauges through the `metrics` facade (rendered by
//! `metrics-exporter-prometheus`), latency histograms of our own ([`super::histogram`]: no
//! allocation, no lock, no atomic read-modify-write when recording), both served on `/metrics` by
//! [`super::exposition`]. Each node resolves its handles once ([`NodeMetrics::new`]), so the hot path
//! never looks a name up in a registry. Labels: `role`, `node`.
//!
//! [`CATALOGUE`] names every metric the binary exports, with its kind and help text: the HELP lines
//! come from it, and tests check that the dashboard, the rules and `top` name only metrics in it.

use super::histogram::LatencyHistogram;
use crate::protocol::{Event, NodeId, RoleKind, Stage};
use metrics::{counter, gauge, Counter, Gauge};
use std::net::SocketAddr;

/// One node's metric handles.
pub struct NodeMetrics {
    role: &'static str,
    node: String,
    /// Frames received.
    pub frames_in: Counter,
    /// Frames sent.
    pub frames_out: Counter,
    /// Bytes received.
    pub bytes_in: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
    /// Connections opened (either direction).
    pub connections: Counter,
    /// Connections open now.
    pub connections_open: Gauge,
    /// Peers dialled again after a failed or lost connection.
    pub reconnects: Counter,
    /// Messages that could not be routed (no address, queue full).
    pub unroutable: Counter,
    /// Commands carried by the messages received (requests, batches, slots' values, replies).
    pub commands_in: Counter,
    /// Proposers: 1 while this one leads.
    pub leader: Gauge,
    /// 1 for the node's state, 0 for the others, in [`NodeMetrics::STATES`] order.
    states: [Gauge; 4],
    /// The stage this role times, if it times one.
    stage: Option<(Stage, LatencyHistogram)>,
    elections: Counter,
    slots_executed: Counter,
    commands_applied: Counter,
    commands_completed: Counter,
    commands_shed: Counter,
    requests_refused: Counter,
    accepted: Counter,
    fsyncs: Counter,
    /// Durable nodes only.
    fsync_seconds: Option<LatencyHistogram>,
    records_persisted: Counter,
    /// Replicas: attempts to write a snapshot file that failed (each is tried again).
    pub snapshot_failures: Counter,
    /// Replicas: every slot below this is executed.
    pub executed_watermark: Gauge,
    /// Replicas: the low 53 bits of the state digest, refreshed once the watermark stands still.
    pub state_digest: Gauge,
    /// Replicas: the executed watermark `state_digest` was taken at.
    pub state_digest_watermark: Gauge,
}

impl NodeMetrics {
    /// Registers (or finds) every handle of node `id` playing `role`; a `durable` node's too.
    pub fn new(role: RoleKind, id: NodeId, durable: bool) -> Self {
        let role = role.name();
        let node = id.to_string();
        let c = |name: &'static str| counter!(name, "role" => role, "node" => node.clone());
        let labels = [("role", role), ("node", node.as_str())];
        let state_gauge = |state: &'static str| gauge!("autopaxos_node_state", "role" => role, "node" => node.clone(), "state" => state);
        let states = Self::STATES.map(state_gauge);
        states[0].set(1.0);
        let stage = Stage::ALL.into_iter().find(|s| s.role().name() == role).map(|stage| {
            let labels = [("role", role), ("node", node.as_str()), ("stage", stage.name())];
            (stage, LatencyHistogram::new("autopaxos_stage_seconds", &labels))
        });
        NodeMetrics {
            commands_in: c("autopaxos_commands_in_total"),
            leader: gauge!("autopaxos_leader", "role" => role, "node" => node.clone()),
            states,
            stage,
            frames_in: c("autopaxos_frames_in_total"),
            frames_out: c("autopaxos_frames_out_total"),
            bytes_in: c("autopaxos_bytes_in_total"),
            bytes_out: c("autopaxos_bytes_out_total"),
            connections: c("autopaxos_connections_total"),
            connections_open: gauge!("autopaxos_connections_open", "role" => role, "node" => node.clone()),
            reconnects: c("autopaxos_reconnects_total"),
            unroutable: c("autopaxos_unroutable_messages_total"),
            elections: c("autopaxos_elections_won_total"),
            slots_executed: c("autopaxos_slots_executed_total"),
            commands_applied: c("autopaxos_commands_applied_total"),
            commands_completed: c("autopaxos_commands_completed_total"),
            commands_shed: c("autopaxos_commands_shed_total"),
            requests_refused: c("autopaxos_busy_refusals_total"),
            accepted: c("autopaxos_phase2_accepted_total"),
            fsyncs: c("autopaxos_fsyncs_total"),
            fsync_seconds: durable.then(|| LatencyHistogram::new("autopaxos_fsync_seconds", &labels)),
            records_persisted: c("autopaxos_records_persisted_total"),
            snapshot_failures: c("autopaxos_snapshot_failures_total"),
            executed_watermark: gauge!("autopaxos_executed_watermark", "role" => role, "node" => node.clone()),
            state_digest: gauge!("autopaxos_state_digest", "role" => role, "node" => node.clone()),
            state_digest_watermark: gauge!("autopaxos_state_digest_watermark", "role" => role, "node" => node.clone()),
            role,
            node,
        }
    }

    /// The values of the `state` label of `autopaxos_node_state`.
    pub const STATES: [&'static str; 4] = ["up", "joining", "leaving", "learning"];

    /// Exports the node's state (one of [`NodeMetrics::STATES`]).
    pub fn set_state(&self, state: crate::protocol::messages::NodeState) {
        use crate::protocol::messages::NodeState;
        let now = match state {
            NodeState::Up => 0,
            NodeState::Joining => 1,
            NodeState::Leaving => 2,
            NodeState::Learning => 3,
        };
        for (i, gauge) in self.states.iter().enumerate() {
            gauge.set(if i == now { 1.0 } else { 0.0 });
        }
    }

    /// Counts a bad frame or handshake that closed a connection, by reason.
    pub fn bad_frame(&self, reason: &'static str) {
        counter!("autopaxos_bad_frames_total", "role" => self.role, "node" => self.node.clone(), "reason" => reason)
            .increment(1);
    }

    /// Counts a connection closed at once because a cap was reached, by cap.
    pub fn refused(&self, reason: &'static str) {
        counter!("autopaxos_connections_refused_total", "role" => self.role, "node" => self.node.clone(), "reason" => reason)
            .increment(1);
    }

    /// Counts a peer whose handshake was refused (wrong cluster or secret, replay, timeout...), by reason.
    pub fn handshake_refused(&self, reason: &'static str) {
        counter!("autopaxos_handshakes_refused_total", "role" => self.role, "node" => self.node.clone(), "reason" => reason)
            .increment(1);
    }

    /// Counts one sync of the log that made `records` records durable and took `took`.
    pub fn persisted(&self, records: usize, took: std::time::Duration) {
        self.fsyncs.increment(1);
        if let Some(histogram) = &self.fsync_seconds {
            histogram.record(took);
        }
        self.records_persisted.increment(records as u64);
    }

    /// Turns a role's event into counters.
    pub fn event(&self, event: &crate::protocol::Event) {
        match event {
            Event::Accepted { .. } => self.accepted.increment(1),
            Event::Executed { .. } => self.slots_executed.increment(1),
            Event::Applied { .. } => self.commands_applied.increment(1),
            Event::Completed { .. } => self.commands_completed.increment(1),
            Event::BecameLeader { ballot } => {
                // Rare, and the first thing an operator asks after an outage: who led, from when.
                tracing::info!(node = %self.node, round = ballot.round, "became leader");
                self.elections.increment(1)
            }
            Event::Shed { commands } => self.commands_shed.increment(*commands),
            Event::Refused { .. } => self.requests_refused.increment(1),
            Event::Left => tracing::info!(role = self.role, node = %self.node, "drained and left"),
            Event::Stalled { executed, peer_executed } => {
                tracing::warn!(
                    node = %self.node,
                    executed,
                    peer_executed,
                    "this replica is behind a peer and not catching up: its teachers do not answer \
                     (see autopaxos_replica_stalled_total)"
                );
                counter!("autopaxos_replica_stalled_total", "role" => self.role, "node" => self.node.clone())
                    .increment(1);
            }
            Event::Installed { slot, .. } => {
                tracing::info!(node = %self.node, slot, "installed a snapshot a peer taught; carrying on from it");
                counter!("autopaxos_snapshots_installed_total", "role" => self.role, "node" => self.node.clone())
                    .increment(1);
            }
            Event::ReconfigExecuted { slot, change } => {
                tracing::info!(
                    node = %self.node,
                    slot,
                    epoch = change.config.epoch,
                    groups = ?change.config.acceptor_groups,
                    from_slot = change.from_slot,
                    "executed a change of acceptor configuration"
                );
            }
            Event::Stage { stage, micros } => {
                if let Some((mine, histogram)) = &self.stage {
                    if mine == stage {
                        histogram.record_micros(*micros);
                    }
                }
            }
            Event::Dropped { reason } => {
                let (role, node) = (self.role, self.node.clone());
                counter!("autopaxos_dropped_messages_total", "role" => role, "node" => node, "reason" => *reason)
                    .increment(1)
            }
        }
    }
}

/// A metric's type, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Classic buckets: `_bucket{le=...}`, `_sum`, `_count`.
    Histogram,
}

/// One metric the binary exports.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its `# HELP` text.
    pub help: &'static str,
}

const fn m(name: &'static str, kind: MetricKind, help: &'static str) -> MetricInfo {
    MetricInfo { name, kind, help }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric the binary exports. Per node (labels `role`, `node`) unless said otherwise.
pub const CATALOGUE: &[MetricInfo] = &[
    m("autopaxos_commands_in_total", C, "Commands carried by the messages the node received (client requests, batches, slots' values, replies)."),
    m("autopaxos_frames_in_total", C, "Frames received by the node."),
    m("autopaxos_frames_out_total", C, "Frames sent by the node."),
    m("autopaxos_bytes_in_total", C, "Bytes received by the node."),
    m("autopaxos_bytes_out_total", C, "Bytes sent by the node."),
    m("autopaxos_connections_total", C, "Connections opened, either direction."),
    m("autopaxos_connections_open", G, "Connections open now."),
    m("autopaxos_reconnects_total", C, "Peers dialled again after a failure."),
    m("autopaxos_unroutable_messages_total", C, "Messages with no route to their peer."),
    m("autopaxos_bad_frames_total", C, "Connections closed for a bad frame or handshake, by reason."),
    m("autopaxos_connections_refused_total", C, "Connections closed at once because a cap was reached, by cap."),
    m("autopaxos_handshakes_refused_total", C, "Peers whose handshake was refused (wrong cluster or secret, replay, timeout...), by reason."),
    m("autopaxos_dropped_messages_total", C, "Messages a role dropped on purpose, by reason."),
    m("autopaxos_node_state", G, "1 for the node's state (label state: up, joining, leaving, learning), 0 for the others."),
    m("autopaxos_leader", G, "Proposer: 1 while this proposer leads, else 0."),
    m("autopaxos_elections_won_total", C, "Times this proposer became leader."),
    m("autopaxos_slots_executed_total", C, "Log slots executed by this replica."),
    m("autopaxos_commands_applied_total", C, "Commands applied to the state machine."),
    m("autopaxos_commands_completed_total", C, "Client commands completed."),
    m("autopaxos_commands_shed_total", C, "Requests a batcher (or a leader without batchers) refused at once with Busy: the cluster was full."),
    m("autopaxos_busy_refusals_total", C, "Requests of this client node refused with Busy for good (sent once, never executed; sent again anew)."),
    m("autopaxos_phase2_accepted_total", C, "Phase 2 proposals this acceptor accepted."),
    m("autopaxos_fsyncs_total", C, "Syncs of this node's write-ahead log."),
    m("autopaxos_records_persisted_total", C, "Records made durable in this node's write-ahead log (per sync: the group commit's size)."),
    m("autopaxos_replica_stalled_total", C, "Replica: periods of about a second it spent behind a peer without catching up."),
    m("autopaxos_snapshot_failures_total", C, "Replica: attempts to write a snapshot file that failed (a full disk, say); each is tried again until it succeeds, and the log is not trimmed meanwhile."),
    m("autopaxos_snapshots_installed_total", C, "Replica: snapshots of a peer's state it was taught and installed."),
    m("autopaxos_executed_watermark", G, "Replica: every slot below this is executed."),
    m("autopaxos_state_digest", G, "Replica: low 53 bits of the digest of its state, updated once the watermark stands still."),
    m("autopaxos_state_digest_watermark", G, "Replica: the executed watermark its autopaxos_state_digest was taken at (replicas must agree at equal ones)."),
    m("autopaxos_command_latency_seconds", H, "Client nodes and gateways: from a command's request to its reply."),
    m("autopaxos_stage_seconds", H, "Time in a stage of a role (label stage): batching (batcher: first command to batch sent), queued (leader: batch arrival to proposal), phase2 (proxy leader: first Phase2a to a quorum of votes), ordering (replica: value arrival to execution)."),
    m("autopaxos_fsync_seconds", H, "Time one sync of the write-ahead log took (writes of what it covers, then fdatasync)."),
    m("autopaxos_gateway_commands_total", C, "RESP commands a gateway parsed."),
    m("autopaxos_gateway_connections", G, "RESP connections a gateway serves now."),
    m("autopaxos_gateway_refused_connections_total", C, "RESP connections refused (at --max-connections, or while leaving)."),
    m("autopaxos_gateway_protocol_errors_total", C, "RESP connections closed after a framing error."),
    m("autopaxos_gateway_request_timeouts_total", C, "RESP connections closed because a request begun was not whole in time."),
    m("autopaxos_gateway_auth_failures_total", C, "RESP AUTH attempts with a wrong password."),
    m("autopaxos_gateway_busy_replies_total", C, "RESP requests answered -BUSY: the cluster was full; never executed."),
    // The autoscaler's own (label `role`: the role sized; no `node`).
    m("autopaxos_autoscaler_decisions_total", C, "Autoscaler: decisions, by role and action."),
    m("autopaxos_autoscaler_nodes", G, "Autoscaler: nodes per role after the last decision (for acceptors: groups)."),
    m("autopaxos_autoscaler_target_nodes", G, "Autoscaler: nodes per role the load asks for."),
    m("autopaxos_autoscaler_max_nodes", G, "Autoscaler: the most nodes it may run per role (--max-nodes; for acceptors --max-groups)."),
    m("autopaxos_autoscaler_load_cmds_per_second", G, "Autoscaler: commands per second through each role (for acceptors: Phase2a per second over every group)."),
    m("autopaxos_autoscaler_utilisation_ratio", G, "Autoscaler: load over the role's measured capacity."),
    m("autopaxos_autoscaler_errors_total", C, "Autoscaler: failed scrapes and fleet operations, by kind."),
    m("autopaxos_autoscaler_intervals_total", C, "Autoscaler: intervals run."),
    m("autopaxos_autoscaler_acceptor_groups", G, "Autoscaler: acceptor groups in force."),
    m("autopaxos_autoscaler_replacements_in_progress", G, "Autoscaler: dead proposers, acceptors and replicas being replaced."),
    m("autopaxos_autoscaler_unreachable_members", G, "Autoscaler: members of the configuration in force that did not answer, not (yet) being replaced."),
    m("autopaxos_autoscaler_replacing", G, "Autoscaler: the try number while a node is being replaced, then 0."),
    m("autopaxos_autoscaler_replacements_total", C, "Autoscaler: replacements, by role and outcome (started, done, abandoned, launch-failed)."),
    m("autopaxos_autoscaler_last_replacement_seconds", G, "Autoscaler: from deciding the last replacement of a role to the change being in force."),
    m("autopaxos_autoscaler_steps_total", C, "Autoscaler: steps of healing and of changes of acceptor groups, by role and kind."),
];

/// The catalogue's entry for `name`.
pub fn info(name: &str) -> Option<&'static MetricInfo> {
    CATALOGUE.iter().find(|m| m.name == name)
}

/// Describes every metric of the catalogue to the facade, so the exposition carries HELP lines.
fn describe() {
    for m in CATALOGUE {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            // Rendered by `super::histogram`, which reads the help itself.
            MetricKind::Histogram => {}
        }
    }
}

/// A Prometheus `file_sd_configs` targets file (JSON) for the nodes of `file` that name a
/// `metrics_address`: one target per address (nodes of one process share it), labelled with the
/// cluster, its role(s) and node id(s). Also returns the nodes that name none (not in it).
pub fn prometheus_targets(file: &super::config::ClusterFile) -> (serde_json::Value, Vec<NodeId>) {
    let mut by_address: std::collections::BTreeMap<SocketAddr, Vec<(NodeId, &'static str)>> =
        Default::default();
    let mut unnamed = Vec::new();
    for (id, kind) in file.config.all_nodes() {
        match file.metrics_addresses.get(&id) {
            Some(addr) => by_address.entry(*addr).or_default().push((id, kind.name())),
            None => unnamed.push(id),
        }
    }
    let groups: Vec<serde_json::Value> = by_address
        .iter()
        .map(|(addr, nodes)| {
            let roles: std::collections::BTreeSet<&str> = nodes.iter().map(|(_, role)| *role).collect();
            let roles: Vec<&str> = roles.into_iter().collect();
            let ids: Vec<String> = nodes.iter().map(|(id, _)| id.to_string()).collect();
            serde_json::json!({
                "targets": [addr.to_string()],
                "labels": { "cluster": file.cluster_id, "role": roles.join(","), "node": ids.join(",") },
            })
        })
        .collect();
    unnamed.sort_unstable();
    (serde_json::Value::Array(groups), unnamed)
}

/// A targets file for one process serving `/metrics` at `addr` (`local`); its series carry their
/// own `role` and `node` labels.
pub fn single_target(addr: SocketAddr, cluster: &str) -> serde_json::Value {
    serde_json::json!([{ "targets": [addr.to_string()], "labels": { "cluster": cluster } }])
}

/// Writes a targets file whole (a temporary file renamed over it), so that Prometheus, which
/// watches it, never reads half of one.
pub fn write_targets(path: &std::path::Path, targets: &serde_json::Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(targets).expect("JSON") + "\n";
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write the targets file {}: {e}", path.display()))
}

/// Starts serving `/metrics` on `addr` (its own thread, away from the executors) and returns the
/// address bound (port 0 picks one). Call once per process, before nodes create their handles:
/// histograms made before it record nothing.
pub fn install_exporter(addr: SocketAddr) -> Result<SocketAddr, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    super::histogram::enable();
    super::exposition::serve(addr, move || {
        handle.run_upkeep();
        let mut text = handle.render();
        super::histogram::render(&mut text, |name| info(name).map_or("", |m| m.help));
        text
    })
    .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_names_each_metric_once_and_well() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a name twice in the catalogue");
        for m in CATALOGUE {
            assert!(m.name.starts_with("autopaxos_"), "{}", m.name);
            assert_eq!(m.kind == MetricKind::Counter, m.name.ends_with("_total"), "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
        }
    }

    /// Every metric name the sources use is in the catalogue (so the dashboard test, which checks
    /// against the catalogue, sees every metric there is).
    #[test]
    fn every_metric_the_sources_name_is_in_the_catalogue() {
        let mut missing = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("\"autopaxos_") {
                let name: String =
                    text[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let closed = text[i + 1 + name.len()..].starts_with('"');
                if closed && info(&name).is_none() && !name.ends_with('_') {
                    missing.push(format!("{}: {name}", path.display()));
                }
            }
        }
        assert!(missing.is_empty(), "not in the catalogue: {missing:#?}");
    }
}
