//! autopaxos: Compartmentalized MultiPaxos that scales by role.
//!
//! - [`protocol`]: the sans-IO core — every role as a plain struct, the messages, the state machines.
//! - [`sim`]: the deterministic simulator that drives the same structs under faults and checks them.
//! - [`top`]: `autopaxos top`, a live terminal view of a cluster made from its nodes' `/metrics`.

#![forbid(unsafe_code)]

pub mod autoscale;
pub mod bench;
pub mod boot;
#[cfg(feature = "cloud")]
pub mod cloud;
pub mod commands;
pub mod duration;
#[cfg(test)]
mod fuzz;
pub mod jepsen;
pub mod protocol;
pub mod resp;
pub mod runtime;
pub mod secret;
pub mod sim;
pub mod storage;
pub mod top;
pub mod wire;
