//! From a node's spec to a running node: the runtime's side of the one birthplace
//! (`protocol::birth`). For a stateful node it opens and locks the data directory and recovers what
//! the disk kept *before* any executor starts, so a locked or damaged directory is one clear error
//! and an exit; the role is then built from that state on its executor, where its write-ahead log
//! continues. Roles from a cluster file, `local`, `boot`, joining nodes and `bench` all come here.
//!
//! Must never: start a stateful node on a data dir another process holds; start one on a log it
//! could not read back whole.

use super::{incarnation_seed, NodeLaunch};
use crate::protocol::birth::{self, RoleSpec};
use crate::protocol::durable::{keeps_state, Record, Recovered, Storage};
use crate::protocol::NodeId;
use crate::storage::dir::{DataDir, RecoveryReport, StorageError};
use crate::storage::wal::{Wal, WalOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where stateful nodes keep their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageChoice {
    /// Nowhere: a crash loses every vote. For benchmarks; each node logs a warning.
    InMemory,
    /// In `<base>/node-<id>`, one directory per node.
    Under(PathBuf),
}

impl StorageChoice {
    /// `--in-memory` wins; then `--data-dir`; then the cluster file's `data_dir`; then
    /// `./autopaxos-data`.
    pub fn from_flags(in_memory: bool, data_dir: Option<PathBuf>, file_data_dir: Option<PathBuf>) -> Self {
        if in_memory {
            return StorageChoice::InMemory;
        }
        StorageChoice::Under(data_dir.or(file_data_dir).unwrap_or_else(|| PathBuf::from("./autopaxos-data")))
    }
}

/// The data directory of node `id` under `base`.
pub fn node_dir(base: &Path, id: NodeId) -> PathBuf {
    base.join(format!("node-{id}"))
}

/// A stateful node's data directory, locked, with what recovery found; moved to the node's executor.
pub struct NodeDisk {
    dir: DataDir,
    report: RecoveryReport,
}

impl NodeDisk {
    /// Opens the write-ahead log where recovery left it (a new segment after the recovered ones).
    pub async fn open_wal(&self) -> Result<Wal, StorageError> {
        let report = &self.report;
        Wal::open(
            self.dir.path(),
            report.next_sequence,
            report.old_segments.clone(),
            &report.sticky,
            WalOptions::default(),
        )
        .await
    }
}

/// A directory of this process's own under the system's temporary directory, removed when dropped
/// (however the run ends): where `local` and `bench` keep durable state by default.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh path `<tmp>/<prefix>-<pid>-<random>` (created by whoever writes into it). What a
    /// run that was killed (so never dropped its own) left under the same prefix is removed first:
    /// a durable `local` keeps ~650 MB there, and a few killed runs would fill a disk.
    pub fn new(prefix: &str) -> Self {
        let tmp = std::env::temp_dir();
        remove_left_by_dead_processes(&tmp, prefix);
        let name = format!("{prefix}-{}-{:x}", std::process::id(), incarnation_seed());
        ScratchDir(tmp.join(name))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes `<tmp>/<prefix>-<pid>-<hex>` directories whose process no longer runs. Only names of
/// exactly that shape are touched, and only where `/proc` can say the process is gone.
fn remove_left_by_dead_processes(tmp: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| scratch_owner(n, prefix)) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => tracing::info!(
                path = %entry.path().display(),
                pid,
                "removed a scratch directory that a run which is gone left behind"
            ),
            Err(e) => tracing::debug!(path = %entry.path().display(), "cannot remove: {e}"),
        }
    }
}

/// The process id in a scratch directory's name `<prefix>-<pid>-<hex>`, if it has that shape.
fn scratch_owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, random) = rest.split_once('-')?;
    let hex = !random.is_empty() && random.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
        pid.parse().ok()
    } else {
        None
    }
}

/// Syncs of acceptor logs in this process, and the records they made durable: `local` reports the
/// group commit's rate and size from them.
pub static ACCEPTOR_SYNCS: SyncCounter = SyncCounter::new();

/// A process-wide count of syncs and the records they covered.
pub struct SyncCounter {
    syncs: AtomicU64,
    records: AtomicU64,
}

impl SyncCounter {
    const fn new() -> Self {
        SyncCounter { syncs: AtomicU64::new(0), records: AtomicU64::new(0) }
    }

    /// Counts one sync that covered `records` records.
    pub fn add(&self, records: usize) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records as u64, Ordering::Relaxed);
    }

    /// (syncs, records) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.syncs.load(Ordering::Relaxed), self.records.load(Ordering::Relaxed))
    }
}

/// A node that cannot write its log must not go on voting: it stops the process, loudly.
pub fn fatal_storage_error(node: NodeId, error: &StorageError) -> ! {
    tracing::error!(node, "cannot persist: {error}; stopping rather than vote without a durable log");
    eprintln!("autopaxos: node {node}: cannot persist: {error}");
    std::process::exit(74) // EX_IOERR
}

/// A replica trims its log only below a snapshot it has on disk: a log trimmed above the newest
/// snapshot file (or with none) means a snapshot was deleted or lost. The replica then starts from
/// that snapshot (or empty) with a gap before its log, and executes nothing until a peer teaches
/// it: say so, rather than serve silently at a low watermark.
fn warn_if_snapshot_missing(id: NodeId, dir: &std::path::Path, recovered: &Recovered) {
    let trimmed = recovered.records.iter().filter_map(|r| match r {
        Record::Trim { below } => Some(*below),
        _ => None,
    });
    let snapshot = recovered.snapshot.as_ref().map(|(slot, _)| *slot);
    if let Some(below) = trimmed.max().filter(|&below| below > snapshot.unwrap_or(0)) {
        tracing::warn!(
            node = id,
            dir = %dir.display(),
            "replica's log was trimmed below slot {below} but its newest snapshot is {}: a snapshot \
             file is missing. It starts there, with a gap before its log, and executes nothing until a \
             peer replica teaches it (a peer must be up); if this is the only copy, restore the data dir",
            snapshot.map_or("none".to_string(), |s| format!("at slot {s}"))
        );
    }
}

/// The launch of the node `spec` describes, listening at `listen`. A stateful node's directory is
/// opened, locked and recovered now (on this thread); its seed is drawn fresh for this incarnation.
pub fn node_launch(
    mut spec: RoleSpec,
    listen: Option<SocketAddr>,
    storage: &StorageChoice,
    dial_at_start: Vec<NodeId>,
) -> Result<NodeLaunch, String> {
    let id = spec.id;
    // Refuse what cannot be built here, with the reason, before touching a disk.
    birth::check(&spec).map_err(|e| e.to_string())?;
    spec.seed = incarnation_seed();
    let (recovered, disk) = match storage {
        _ if !keeps_state(spec.kind) => (Recovered::default(), None),
        StorageChoice::InMemory => {
            tracing::warn!(
                node = id,
                role = spec.kind.name(),
                "--in-memory: this node keeps its state in memory only; it is NOT crash-safe"
            );
            spec.storage = Storage::InMemory;
            (Recovered::default(), None)
        }
        StorageChoice::Under(base) => {
            spec.storage = Storage::Durable;
            let path = node_dir(base, id);
            let dir = DataDir::open(&path).map_err(|e| format!("node {id}: {e}"))?;
            let (recovered, report) = dir.recover().map_err(|e| format!("node {id}: {e}"))?;
            if report.torn_bytes_dropped > 0 {
                tracing::warn!(
                    node = id,
                    bytes = report.torn_bytes_dropped,
                    "the log ended in a torn write (a crash mid-write); cut it off"
                );
            }
            tracing::info!(node = id, dir = %dir.path().display(), "{report}");
            if recovered.is_empty()
                && spec.kind == crate::protocol::RoleKind::Acceptor
                && spec.joining.is_none()
            {
                // A first start looks exactly like a lost disk from here; only the operator knows.
                tracing::warn!(
                    node = id,
                    dir = %dir.path().display(),
                    "acceptor starting with an empty data dir: right for a new cluster's first start; \
                     if this node voted before (its disk was lost or wiped, or it was started from \
                     another working directory than its data dir's), stop it: an acceptor that forgot \
                     its votes can let a chosen value be overwritten. Restore its data dir, or replace \
                     it with a new node by `autopaxos reconfigure`"
                );
            }
            if spec.kind == crate::protocol::RoleKind::Replica {
                warn_if_snapshot_missing(id, dir.path(), &recovered);
            }
            (recovered, Some(NodeDisk { dir, report }))
        }
    };
    Ok(NodeLaunch {
        id,
        listen,
        build: Box::new(move |ctx| birth::build(spec, recovered, ctx.now).map_err(|e| e.to_string())),
        dial_at_start,
        disk,
        resp: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_left_by_a_process_that_is_gone_is_removed_and_nothing_else() {
        let tmp = std::env::temp_dir().join(format!("autopaxos-scratch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        // A pid above the kernel's largest can never be running.
        let max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
        let gone = max + 1;
        let me = std::process::id();
        let names = [
            format!("autopaxos-x-{gone}-ab12"),
            format!("autopaxos-x-{me}-cd34"),
            format!("autopaxos-x-test-{gone}-ab12"),
            format!("autopaxos-xy-{gone}-ab12"),
            format!("autopaxos-x-{gone}-not-hex"),
        ];
        for name in &names {
            std::fs::create_dir_all(tmp.join(name).join("node-3")).unwrap();
        }
        remove_left_by_dead_processes(&tmp, "autopaxos-x");
        let left: Vec<bool> = names.iter().map(|n| tmp.join(n).exists()).collect();
        assert_eq!(left, [false, true, true, true, true], "{names:?}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
