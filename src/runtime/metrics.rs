//! Prometheus metrics: the `metrics` facade everywhere, `metrics-exporter-prometheus` serving
//! `/metrics`. Each node resolves its handles once ([`NodeMetrics::new`]), so the hot path increments
//! atomics and never looks a name up in the registry. Labels: `role`, `node`.

use crate::protocol::{Event, NodeId, RoleKind};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use std::net::SocketAddr;

/// One node's metric handles.
#[derive(Clone)]
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
    elections: Counter,
    slots_executed: Counter,
    commands_applied: Counter,
    commands_completed: Counter,
    commands_shed: Counter,
    requests_refused: Counter,
    accepted: Counter,
    fsyncs: Counter,
    fsync_seconds: Histogram,
    records_persisted: Counter,
    /// Replicas: every slot below this is executed.
    pub executed_watermark: Gauge,
    /// Replicas: the low 53 bits of the state digest, refreshed once the watermark stands still.
    pub state_digest: Gauge,
}

impl NodeMetrics {
    /// Registers (or finds) every handle of node `id` playing `role`.
    pub fn new(role: RoleKind, id: NodeId) -> Self {
        let role = role.name();
        let node = id.to_string();
        let c = |name: &'static str| counter!(name, "role" => role, "node" => node.clone());
        NodeMetrics {
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
            fsync_seconds: histogram!("autopaxos_fsync_seconds", "role" => role, "node" => node.clone()),
            records_persisted: c("autopaxos_records_persisted_total"),
            executed_watermark: gauge!("autopaxos_executed_watermark", "role" => role, "node" => node.clone()),
            state_digest: gauge!("autopaxos_state_digest", "role" => role, "node" => node.clone()),
            role,
            node,
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
        self.fsync_seconds.record(took.as_secs_f64());
        self.records_persisted.increment(records as u64);
    }

    /// Turns a role's event into counters.
    pub fn event(&self, event: &crate::protocol::Event) {
        match event {
            Event::Accepted { .. } => self.accepted.increment(1),
            Event::Executed { .. } => self.slots_executed.increment(1),
            Event::Applied { .. } => self.commands_applied.increment(1),
            Event::Completed { .. } => self.commands_completed.increment(1),
            Event::BecameLeader { .. } => self.elections.increment(1),
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
            Event::Stage { .. } => {}
            Event::Dropped { reason } => {
                let (role, node) = (self.role, self.node.clone());
                counter!("autopaxos_dropped_messages_total", "role" => role, "node" => node, "reason" => *reason)
                    .increment(1)
            }
        }
    }
}

/// Describes every metric once, so the exposition carries HELP lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!("autopaxos_frames_in_total", Unit::Count, "Frames received by the node.");
    describe_counter!("autopaxos_gateway_commands_total", Unit::Count, "RESP commands a gateway parsed.");
    describe_counter!(
        "autopaxos_commands_shed_total",
        Unit::Count,
        "Requests a batcher (or a leader without batchers) refused at once with Busy: the cluster was full."
    );
    describe_counter!(
        "autopaxos_busy_refusals_total",
        Unit::Count,
        "Requests of this client node refused with Busy for good (sent once, never executed; sent again anew)."
    );
    describe_gauge!("autopaxos_gateway_connections", Unit::Count, "RESP connections a gateway serves now.");
    describe_counter!(
        "autopaxos_gateway_refused_connections_total",
        Unit::Count,
        "RESP connections refused (at --max-connections, or while leaving)."
    );
    describe_counter!(
        "autopaxos_gateway_protocol_errors_total",
        Unit::Count,
        "RESP connections closed after a framing error."
    );
    describe_counter!("autopaxos_frames_out_total", Unit::Count, "Frames sent by the node.");
    describe_counter!("autopaxos_bytes_in_total", Unit::Bytes, "Bytes received by the node.");
    describe_counter!("autopaxos_bytes_out_total", Unit::Bytes, "Bytes sent by the node.");
    describe_counter!("autopaxos_connections_total", Unit::Count, "Connections opened, either direction.");
    describe_gauge!("autopaxos_connections_open", Unit::Count, "Connections open now.");
    describe_counter!("autopaxos_reconnects_total", Unit::Count, "Peers dialled again after a failure.");
    describe_counter!(
        "autopaxos_unroutable_messages_total",
        Unit::Count,
        "Messages with no route to their peer."
    );
    describe_counter!(
        "autopaxos_bad_frames_total",
        Unit::Count,
        "Connections closed for a bad frame or handshake."
    );
    describe_counter!("autopaxos_dropped_messages_total", Unit::Count, "Messages a role dropped on purpose.");
    describe_counter!("autopaxos_elections_won_total", Unit::Count, "Times this proposer became leader.");
    describe_counter!("autopaxos_slots_executed_total", Unit::Count, "Log slots executed by this replica.");
    describe_counter!(
        "autopaxos_commands_applied_total",
        Unit::Count,
        "Commands applied to the state machine."
    );
    describe_counter!("autopaxos_commands_completed_total", Unit::Count, "Client commands completed.");
    describe_counter!("autopaxos_fsyncs_total", Unit::Count, "Syncs of this node's write-ahead log.");
    metrics::describe_histogram!(
        "autopaxos_fsync_seconds",
        Unit::Seconds,
        "Time one sync of the write-ahead log took (writes of what it covers, then fdatasync)."
    );
    describe_counter!(
        "autopaxos_records_persisted_total",
        Unit::Count,
        "Records made durable in this node's write-ahead log (per sync: the group commit's size)."
    );
    describe_counter!(
        "autopaxos_replica_stalled_total",
        Unit::Count,
        "Replica: periods of about a second it spent behind a peer without catching up."
    );
    describe_counter!(
        "autopaxos_snapshots_installed_total",
        Unit::Count,
        "Replica: snapshots of a peer's state it was taught and installed."
    );
    describe_gauge!(
        "autopaxos_executed_watermark",
        Unit::Count,
        "Replica: every slot below this is executed."
    );
    describe_gauge!(
        "autopaxos_state_digest",
        Unit::Count,
        "Replica: low 53 bits of the digest of its state, updated once the watermark stands still."
    );
    describe_counter!(
        "autopaxos_phase2_accepted_total",
        Unit::Count,
        "Phase 2 proposals this acceptor accepted."
    );
}

/// Starts the Prometheus exporter on `addr` (its own thread and small runtime, away from the
/// executors). Call once per process, before nodes create their handles.
pub fn install_exporter(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe();
    Ok(())
}
