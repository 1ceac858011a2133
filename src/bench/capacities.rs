//! `tuning/capacities.toml`: each role's measured maximum per core at its recommended setting, and the
//! machine it was measured on. Written by `tune all`, read by `plan`.

use super::plan::PlanError;
use crate::protocol::RoleKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The machine the capacities were measured on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// Cores of the machine.
    pub cores: usize,
    /// CPU model (from /proc/cpuinfo).
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// When (UTC, RFC 3339 date).
    pub measured: String,
}

/// One role's measured capacity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleCapacity {
    /// Commands per second one core of this role sustains at the recommended setting.
    pub cmds_per_sec_per_core: f64,
    /// Messages per second at the same setting.
    pub msgs_per_sec_per_core: f64,
    /// The recommended batch size.
    pub batch_size: usize,
    /// The recommended read budget.
    pub read_budget: usize,
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capacities {
    /// Where they were measured.
    pub machine: Machine,
    /// Per role name (`RoleKind::name`).
    pub roles: BTreeMap<String, RoleCapacity>,
}

impl Capacities {
    /// The entry of `role`, or an error naming `file` and the roles it does have.
    pub fn role(&self, role: RoleKind, file: &str) -> Result<&RoleCapacity, PlanError> {
        let name = role.name();
        self.roles.get(name).ok_or_else(|| PlanError::MissingRole {
            role: name,
            file: file.to_string(),
            present: self.roles.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}
