//! The one place where a role is born and reborn. The runtime (roles from a cluster file, `local`,
//! `boot`, joining nodes), `bench` and the simulator all build roles here, from a [`RoleSpec`] and
//! what the node's disk recovered, so a restarted node in the simulator is built exactly as a
//! restarted process is.
//!
//! Must never: build a stateful role from anything but its recovered records; reuse a seed across
//! incarnations (the caller draws a fresh one per process start).

use super::acceptor::Acceptor;
use super::batcher::Batcher;
use super::config::{ClusterConfig, Tunables};
use super::durable::{Recovered, Storage};
use super::membership::is_stateless;
use super::proposer::Proposer;
use super::proxy_leader::ProxyLeader;
use super::replica::Replica;
use super::state_machine::{new_state_machine, HashKey, StateMachineKind};
use super::unbatcher::Unbatcher;
use super::{NodeId, Role, RoleKind, Time};

/// Everything that decides what a node is, apart from its disk.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// The node's id.
    pub id: NodeId,
    /// Its role.
    pub kind: RoleKind,
    /// The cluster it belongs to.
    pub config: ClusterConfig,
    /// Protocol settings.
    pub tunables: Tunables,
    /// What a replica executes.
    pub state_machine: StateMachineKind,
    /// The secret key of a replica's KV maps, the same on every replica of the cluster (derived
    /// from the cluster secret in the runtime, from the run's seed in the simulator).
    pub hash_key: HashKey,
    /// `Some(addr)`: a node that is not in `config` and joins the running cluster, announcing
    /// that the others reach it at `addr` (a stateless node serves at once; an acceptor, replica
    /// or proposer once a change of configuration names it).
    pub joining: Option<String>,
    /// This incarnation's seed: drawn fresh at every start (the OS's entropy in the runtime, the
    /// run's seed stream in the simulator). A proposer draws its Phase 1 nonces from it, so a
    /// proposer restarted without memory never repeats a nonce of its previous life.
    pub seed: u64,
    /// Whether acceptors and replicas keep their state on disk.
    pub storage: Storage,
}

/// Why a role could not be built. Each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BirthError {
    /// A node of the cluster file cannot join: it is in the cluster already.
    #[error("node {id} is the cluster file's {role}: start it without --join (a new node needs a new id)")]
    ConfiguredJoiner { id: NodeId, role: &'static str },
    /// The node is not in the configuration as that role.
    #[error("node {id} is not a {role} of the cluster")]
    NotInConfig { id: NodeId, role: &'static str },
    /// Client nodes are built by the load generator or the simulator, gateways by their launcher
    /// (`runtime::gateway`), not here.
    #[error("a client or gateway is not a cluster role")]
    Client,
    /// The replica's snapshot could not be restored.
    #[error("node {id}: {why}")]
    BadSnapshot { id: NodeId, why: String },
}

/// Whether `spec` describes a role that can be built: a joiner must not be a stateful node of the
/// cluster file, any other node must be in it as its role. Drivers call it before they touch a
/// node's disk.
pub fn check(spec: &RoleSpec) -> Result<(), BirthError> {
    let (id, kind) = (spec.id, spec.kind);
    let configured = spec.config.all_nodes().find(|&(node, role)| node == id && !is_stateless(role));
    match &spec.joining {
        _ if matches!(kind, RoleKind::Client | RoleKind::Gateway) => Err(BirthError::Client),
        Some(_) if configured.is_some() => {
            let role = configured.map_or(kind, |(_, role)| role).name();
            Err(BirthError::ConfiguredJoiner { id, role })
        }
        Some(_) => Ok(()),
        None if spec.config.all_nodes().any(|node| node == (id, kind)) => Ok(()),
        None => Err(BirthError::NotInConfig { id, role: kind.name() }),
    }
}

/// Builds the role `spec` describes, as its disk left it (`recovered` is empty for stateless roles
/// and for a node's first start).
pub fn build(spec: RoleSpec, recovered: Recovered, now: Time) -> Result<Box<dyn Role>, BirthError> {
    check(&spec)?;
    let RoleSpec { id, kind, config, tunables, state_machine, hash_key, joining, seed, storage } = spec;
    if let Some(addr) = joining {
        return Ok(match kind {
            RoleKind::Batcher => Box::new(Batcher::new(id, config, &tunables).joining(addr, now)),
            RoleKind::ProxyLeader => Box::new(ProxyLeader::new(id, config, &tunables).joining(addr, now)),
            RoleKind::Unbatcher => Box::new(Unbatcher::new(id, &config, &tunables).joining(addr, now)),
            // It announces where it listens; it votes once a change of configuration names it.
            RoleKind::Acceptor => {
                Box::new(Acceptor::recover(id, config, &tunables, storage, recovered).joining(addr, now))
            }
            // It executes once a change names it, taught by its peers.
            RoleKind::Replica => {
                let machine = new_state_machine(state_machine, hash_key);
                let replica = Replica::recover(id, config, &tunables, machine, storage, recovered, now)
                    .map_err(|e| BirthError::BadSnapshot { id, why: e.to_string() })?;
                Box::new(replica.joining(addr, now))
            }
            // It may lead once a change names it.
            RoleKind::Proposer => Box::new(Proposer::new(id, config, tunables, seed, now).joining(addr, now)),
            RoleKind::Client | RoleKind::Gateway => unreachable!("check refuses clients and gateways"),
        });
    }
    Ok(match kind {
        RoleKind::Proposer => Box::new(Proposer::new(id, config, tunables, seed, now)),
        RoleKind::Acceptor => Box::new(Acceptor::recover(id, config, &tunables, storage, recovered)),
        RoleKind::Replica => {
            let machine = new_state_machine(state_machine, hash_key);
            let replica = Replica::recover(id, config, &tunables, machine, storage, recovered, now)
                .map_err(|e| BirthError::BadSnapshot { id, why: e.to_string() })?;
            Box::new(replica)
        }
        RoleKind::ProxyLeader => Box::new(ProxyLeader::new(id, config, &tunables)),
        RoleKind::Batcher => Box::new(Batcher::new(id, config, &tunables)),
        RoleKind::Unbatcher => Box::new(Unbatcher::new(id, &config, &tunables)),
        RoleKind::Client | RoleKind::Gateway => unreachable!("check refuses clients and gateways"),
    })
}

/// Whether a proposer restarted without memory, with seeds drawn by `seed` for each of its two
/// lives, gets its first Phase 1 of the second life refused rather than answered as a
/// retransmission of the first. Drivers test their own seeding with it.
pub fn restarted_proposer_is_refused(mut seed: impl FnMut() -> u64) -> bool {
    use super::messages::Msg;
    use super::Out;
    let config = ClusterConfig::f1(1, 1, 1, 1);
    let spec = |id, kind, seed| RoleSpec {
        id,
        kind,
        config: config.clone(),
        tunables: Tunables::default(),
        state_machine: StateMachineKind::Kv,
        hash_key: HashKey::UNKEYED,
        joining: None,
        seed,
        storage: Storage::Durable,
    };
    let first_phase1a = |proposer: &mut Box<dyn Role>| {
        let mut out = Out::new(false);
        // A proposer runs only once a replica has told it the configurations.
        let history =
            super::configuration::ConfigHistory::new(&config, Tunables::default().max_in_flight_slots as u64);
        proposer.handle_message(
            0,
            config.replicas[0],
            Msg::Executed { watermark: 0, configs: history },
            &mut out,
        );
        let at = proposer.poll_timeout().expect("a follower has an election timer");
        proposer.handle_timeout(at, &mut out);
        out.msgs.into_iter().map(|(_, m)| m).find(|m| matches!(m, Msg::Phase1a { .. })).expect("runs")
    };
    let mut acceptor = build(spec(3, RoleKind::Acceptor, 0), Recovered::default(), 0).expect("acceptor 3");
    let mut first = build(spec(1, RoleKind::Proposer, seed()), Recovered::default(), 0).expect("proposer 1");
    let mut out = Out::new(false);
    acceptor.handle_message(0, 1, first_phase1a(&mut first), &mut out);
    assert!(matches!(out.after_persist[..], [(1, Msg::Phase1b(_))]), "the first life is promised");
    // It crashes before anyone outbids it and comes back with the same ballot.
    let mut second = build(spec(1, RoleKind::Proposer, seed()), Recovered::default(), 0).expect("proposer 1");
    let mut out = Out::new(false);
    acceptor.handle_message(0, 1, first_phase1a(&mut second), &mut out);
    out.after_persist.is_empty() && matches!(out.msgs[..], [(1, Msg::Nack { .. })])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: NodeId, kind: RoleKind) -> RoleSpec {
        RoleSpec {
            id,
            kind,
            config: ClusterConfig::f1(1, 1, 1, 1),
            tunables: Tunables::default(),
            state_machine: StateMachineKind::Kv,
            hash_key: HashKey::from_bytes([5; 16]),
            joining: None,
            seed: 0,
            storage: Storage::Durable,
        }
    }

    #[test]
    fn a_proposer_seeded_as_before_every_restart_is_taken_for_a_retransmission() {
        // The check bites: the same seed in both lives repeats the nonce (the old runtime's bug).
        assert!(!restarted_proposer_is_refused(|| 1));
        let mut next = 0;
        assert!(restarted_proposer_is_refused(|| {
            next += 1;
            next
        }));
    }

    #[test]
    fn configured_nodes_cannot_join_new_ones_can_and_strangers_are_refused() {
        let mut joining = spec(7, RoleKind::Replica);
        joining.joining = Some("127.0.0.1:1".into());
        assert_eq!(
            build(joining, Recovered::default(), 0).err(),
            Some(BirthError::ConfiguredJoiner { id: 7, role: "replica" })
        );
        for kind in [RoleKind::Acceptor, RoleKind::Replica, RoleKind::Proposer] {
            let mut new_node = spec(99, kind);
            new_node.joining = Some("127.0.0.1:1".into());
            assert!(
                build(new_node, Recovered::default(), 0).is_ok(),
                "a change of configuration brings it in"
            );
        }
        let stranger = spec(99, RoleKind::Replica);
        assert!(matches!(build(stranger, Recovered::default(), 0), Err(BirthError::NotInConfig { .. })));
        let wrong_role = spec(3, RoleKind::Replica);
        assert!(matches!(build(wrong_role, Recovered::default(), 0), Err(BirthError::NotInConfig { .. })));
    }
}
