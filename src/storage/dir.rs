//! The data directory at start-up: lock it for this process, read back what the last run made
//! durable, cut off a torn tail, and refuse to start on anything worse.
//!
//! Runs with plain `std::fs` BEFORE the executor starts, so every failure reaches the operator as one
//! clean message (a [`StorageError`]) and an exit. It must never guess past damage: a corrupt record
//! in the middle of the log, or a corrupt snapshot, stops the node (a node that forgot a vote can
//! break agreement; a node that refuses to start cannot).
//!
//! Files: `LOCK` (held with `flock` for the life of the [`DataDir`]), `wal-<16-digit sequence>.log`
//! (log segments, replayed in sequence order), `snapshot-<20-digit slot>.snap` (the newest is
//! loaded), `*.tmp` (a snapshot, or a new segment being filled with zeros, whose write did not
//! finish: deleted), and `*.free` (a condemned segment whose blocks were being freed: deleted).

use super::record::{cut_by_end_of_file, scan, segment_seed, Corrupt};
use super::snapshot::decode_snapshot;
use crate::protocol::durable::{Record, Recovered};
use crate::protocol::Slot;
use bytes::Bytes;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the data directory cannot be used. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another live process holds the directory's lock.
    #[error("data dir {dir} is in use by another process (lock file {lock}{holder})")]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// ", held by pid N" when the holder wrote its pid, else empty.
        holder: String,
    },
    /// A file is damaged somewhere a crash cannot explain; the node must not start on it.
    #[error("{file}: corrupt{}: {reason}; refusing to start (restore this node's data dir or replace the node by reconfiguration; a replica may also start on an empty data dir and be taught by its peers, an acceptor must not: it would forget its votes)", at_offset(.offset))]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first damaged record in it; none when the file as a whole is
        /// unusable (a snapshot).
        offset: Option<u64>,
        /// What was wrong there.
        reason: String,
    },
    /// An I/O call failed on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

impl StorageError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: impl Into<std::io::Error>) -> StorageError {
        StorageError::Io { path: path.into(), source: source.into() }
    }

    fn corrupt(file: &Path, c: Corrupt) -> StorageError {
        StorageError::Corrupt { file: file.to_path_buf(), offset: Some(c.offset as u64), reason: c.reason }
    }
}

/// " at byte offset N", or nothing when the whole file is at fault.
fn at_offset(offset: &Option<u64>) -> String {
    offset.map_or(String::new(), |o| format!(" at byte offset {o}"))
}

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// The file name of log segment `sequence`.
pub fn segment_name(sequence: u64) -> String {
    format!("wal-{sequence:016}.log")
}

/// The file name of the snapshot taken at `slot`.
pub fn snapshot_name(slot: Slot) -> String {
    format!("snapshot-{slot:020}.snap")
}

/// The sequence number of a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (digits.len() == 16 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// The slot of a snapshot file name, if it is one (not a `.tmp`).
pub fn parse_snapshot_name(name: &str) -> Option<Slot> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// What storage needs to know of a log segment left by an earlier run, to delete it once a trim
/// point passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its sequence number (its name is [`segment_name`]).
    pub sequence: u64,
    /// The highest slot of its records ([`Record::slot`]); `None` if it holds none.
    pub max_slot: Option<Slot>,
}

/// What a recovery found and did, for the log and for the write-ahead log that continues after it.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Log segments read.
    pub segments: usize,
    /// Intact records recovered from them.
    pub records: usize,
    /// Bytes of log read.
    pub bytes_scanned: u64,
    /// Bytes of a torn tail cut off the last segment (in a reused segment file, the older
    /// segment's bytes after it count too).
    pub torn_bytes_dropped: u64,
    /// The slot of the snapshot loaded, if any.
    pub snapshot_slot: Option<u64>,
    /// How long recovery took.
    pub elapsed: Duration,
    /// The sequence number the next segment must take (one past the newest found, or 0).
    pub next_sequence: u64,
    /// Every segment found, oldest first: the write-ahead log deletes them once trimmed past.
    pub old_segments: Vec<SegmentInfo>,
    /// The last `Promise` and `Trim` recovered: the next segment starts with them, so deleting old
    /// segments never loses either.
    pub sticky: Vec<Record>,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recovered {} records from {} segments ({} bytes) in {:.1?}; snapshot {}; torn tail dropped: {} bytes",
            self.records,
            self.segments,
            self.bytes_scanned,
            self.elapsed,
            self.snapshot_slot.map_or("none".to_string(), |s| format!("at slot {s}")),
            self.torn_bytes_dropped,
        )
    }
}

/// A node's data directory, locked for this process while the value lives.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    // Holds the flock; closing it (drop, exit, SIGKILL) releases it. Opened by std with O_CLOEXEC,
    // so an exec'd child does not inherit it. (A fork without exec would share it; we never fork.)
    _lock: File,
}

impl DataDir {
    /// Opens (creating if missing) the data directory at `path` and takes its lock. A second
    /// process on the same directory gets [`StorageError::Locked`].
    pub fn open(path: impl AsRef<Path>) -> Result<DataDir, StorageError> {
        /// How long a held lock may take to be released before the directory is called in use.
        const LOCK_GRACE: Duration = Duration::from_secs(3);
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| StorageError::io(&path, e))?;
        // Absolute from here on: glommio opens a relative directory path relative to no directory
        // (EBADF), and logs and errors name the place unambiguously.
        let path = std::fs::canonicalize(&path).map_err(|e| StorageError::io(&path, e))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StorageError::io(&lock_path, e))?;
        // A predecessor killed a moment ago (a supervisor restarting at once) holds the lock until
        // its exit completes: wait a little for it before calling the directory in use.
        let started = Instant::now();
        let mut attempt = lock.try_lock();
        while matches!(attempt, Err(TryLockError::WouldBlock)) && started.elapsed() < LOCK_GRACE {
            std::thread::sleep(Duration::from_millis(20));
            attempt = lock.try_lock();
        }
        match attempt {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .map_or(String::new(), |pid| format!(", held by pid {pid}"));
                return Err(StorageError::Locked { dir: path, lock: lock_path, holder });
            }
            Err(TryLockError::Error(e)) => return Err(StorageError::io(&lock_path, e)),
        }
        // The pid is only a hint for the operator; the flock is what excludes.
        let _ = lock.set_len(0).and_then(|()| writeln!(lock, "{}", std::process::id()));
        Ok(DataDir { path, _lock: lock })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads back everything the last runs made durable: the newest snapshot and every intact log
    /// record, oldest first. Cuts a torn tail off the last segment (and reports it); refuses with
    /// [`StorageError::Corrupt`] on damage anywhere else. Deletes leftover `*.tmp` and `*.free` files.
    pub fn recover(&self) -> Result<(Recovered, RecoveryReport), StorageError> {
        let started = Instant::now();
        let mut segments = Vec::new();
        let mut snapshots = Vec::new();
        let entries = std::fs::read_dir(&self.path).map_err(|e| StorageError::io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&self.path, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = parse_segment_name(name) {
                segments.push(seq);
            } else if let Some(slot) = parse_snapshot_name(name) {
                snapshots.push(slot);
            } else if name.ends_with(".tmp") || name.ends_with(".free") {
                // A snapshot or a new segment whose write, sync or rename did not finish (never
                // complete, never used), or a condemned segment whose freeing did not.
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| StorageError::io(&p, e))?;
            }
        }
        segments.sort_unstable();
        snapshots.sort_unstable();

        let mut recovered = Recovered::default();
        let mut report = RecoveryReport::default();
        if let Some(&slot) = snapshots.last() {
            let p = self.path.join(snapshot_name(slot));
            let bytes = Bytes::from(std::fs::read(&p).map_err(|e| StorageError::io(&p, e))?);
            let (at, state) = decode_snapshot(&bytes).map_err(|c| StorageError::Corrupt {
                file: p.clone(),
                offset: None,
                reason: c.reason,
            })?;
            if at != slot {
                return Err(StorageError::Corrupt {
                    file: p,
                    offset: Some(8),
                    reason: format!("snapshot says slot {at} but its name says {slot}"),
                });
            }
            recovered.snapshot = Some((slot, state));
            report.snapshot_slot = Some(slot);
        }

        let mut promise = None;
        let mut trim = None;
        let mut files = Vec::with_capacity(segments.len());
        for &seq in &segments {
            let p = self.path.join(segment_name(seq));
            files.push(Bytes::from(std::fs::read(&p).map_err(|e| StorageError::io(&p, e))?));
        }
        let scans = segments
            .iter()
            .zip(&files)
            .map(|(&seq, bytes)| {
                let p = self.path.join(segment_name(seq));
                scan(bytes, segment_seed(bytes, seq)).map_err(|c| StorageError::corrupt(&p, c))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The log prepares the next segment (all zeros, or a reused file with an older segment's
        // records, which do not verify under this one's seed) while it fills the current one: the
        // segment being written when the process died is the last one holding a record.
        let written = scans.iter().rposition(|s| !s.records.is_empty()).map_or(0, |i| i + 1);
        for (i, ((&seq, bytes), scan)) in segments.iter().zip(files).zip(scans).enumerate() {
            let p = self.path.join(segment_name(seq));
            if scan.torn_bytes > 0 && i < written {
                if i + 1 < written {
                    // Only the segment being written when the process died can have a torn tail:
                    // a closed segment was synced whole before the next one was written.
                    return Err(StorageError::Corrupt {
                        file: p,
                        offset: Some(scan.valid_len as u64),
                        reason: format!(
                            "{} damaged bytes at the end of a segment that is not the last",
                            scan.torn_bytes
                        ),
                    });
                }
                if cut_by_end_of_file(&bytes, scan.valid_len)
                    && !bytes.len().is_multiple_of(super::wal::BLOCK)
                {
                    // The log writes whole 4 KiB blocks into files prefilled to a multiple of them:
                    // a record cut by an end of file no write of ours ends at is a file cut short
                    // (truncated, or a copy or restore that stopped), and what it held is lost.
                    return Err(StorageError::Corrupt {
                        file: p,
                        offset: Some(scan.valid_len as u64),
                        reason: format!(
                            "the segment ends mid-record at {} bytes, where no write of the log ends: \
                             the file was cut short (truncated, or an incomplete copy), not torn by a crash",
                            bytes.len()
                        ),
                    });
                }
                let f = OpenOptions::new().write(true).open(&p).map_err(|e| StorageError::io(&p, e))?;
                f.set_len(scan.valid_len as u64).map_err(|e| StorageError::io(&p, e))?;
                f.sync_all().map_err(|e| StorageError::io(&p, e))?;
                report.torn_bytes_dropped = scan.torn_bytes as u64;
            }
            report.bytes_scanned += bytes.len() as u64;
            let max_slot = scan.records.iter().filter_map(Record::slot).max();
            for r in &scan.records {
                match r {
                    Record::Promise { .. } => promise = Some(r.clone()),
                    Record::Trim { .. } => trim = Some(r.clone()),
                    _ => {}
                }
            }
            recovered.records.extend(scan.records);
            report.old_segments.push(SegmentInfo { sequence: seq, max_slot });
        }
        report.segments = segments.len();
        report.records = recovered.records.len();
        report.next_sequence = segments.last().map_or(0, |s| s + 1);
        report.sticky = promise.into_iter().chain(trim).collect();
        report.elapsed = started.elapsed();
        Ok((recovered, report))
    }
}
