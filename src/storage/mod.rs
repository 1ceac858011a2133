//! The disk layer: turns the [`Record`](crate::protocol::durable::Record)s roles queue into durable
//! bytes, and a data directory back into [`Recovered`](crate::protocol::durable::Recovered) state.
//!
//! - [`record`], [`snapshot`]: pure byte formats (no I/O), shared with the simulator.
//! - [`dir`]: the data directory at start-up (std::fs, before the executor runs): lock, recover,
//!   repair a torn tail, refuse corruption.
//! - [`wal`]: the append path on glommio direct I/O, with group commit left to the caller.
//! - [`measure`]: a quick disk benchmark (`autopaxos bench disk`).
//!
//! Nothing here decides what a record means; that lives with the roles.

pub mod dir;
pub mod measure;
pub mod record;
pub mod snapshot;
pub mod wal;

pub use dir::{DataDir, RecoveryReport, SegmentInfo, StorageError};
pub use measure::{measure_disk, DiskReport};
pub use record::{encode, scan, Corrupt, Scan};
pub use snapshot::{decode_snapshot, encode_snapshot};
pub use wal::{Wal, WalOptions, WalStats};
