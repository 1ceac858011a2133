//! A quick disk benchmark for `autopaxos bench disk`: how many small synced writes per second the
//! data directory's device does (which bounds an acceptor's group commits), and how fast it takes
//! large synced writes (which bounds snapshots and big batches).
//!
//! Runs on a glommio executor with the same direct I/O the write-ahead log uses, for a bounded time
//! per phase, in a scratch file it removes afterwards. It must never touch the log or snapshots.

use super::dir::StorageError;
use glommio::io::{DmaFile, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// Results of [`measure_disk`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskReport {
    /// 4 KiB write + fdatasync pairs per second (appending, as a log does).
    pub fdatasync_4k_per_sec: f64,
    /// Mean time of one 4 KiB write + fdatasync, in microseconds.
    pub sync_4k_mean_us: f64,
    /// Throughput of 1 MiB write + fdatasync pairs, in MB/s (10^6 bytes).
    pub sync_write_1m_mb_per_sec: f64,
}

impl std::fmt::Display for DiskReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "4 KiB write+fdatasync: {:.0}/s (mean {:.0} us); 1 MiB write+fdatasync: {:.1} MB/s",
            self.fdatasync_4k_per_sec, self.sync_4k_mean_us, self.sync_write_1m_mb_per_sec
        )
    }
}

/// Measures the device under `dir` for about 2 s per phase (about 4 s in all).
pub async fn measure_disk(dir: &Path) -> Result<DiskReport, StorageError> {
    measure_disk_for(dir, Duration::from_secs(2)).await
}

/// [`measure_disk`] with a chosen time per phase (tests use a short one).
pub async fn measure_disk_for(dir: &Path, per_phase: Duration) -> Result<DiskReport, StorageError> {
    let path = dir.join(format!("bench-disk-{}.tmp", std::process::id()));
    let io = |e: glommio::GlommioError<()>| StorageError::io(&path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(io)?;
    let result = async {
        let (n4k, t4k) = run(&file, 4096, per_phase).await.map_err(io)?;
        let (n1m, t1m) = run(&file, 1 << 20, per_phase).await.map_err(io)?;
        Ok(DiskReport {
            fdatasync_4k_per_sec: n4k as f64 / t4k.as_secs_f64(),
            sync_4k_mean_us: t4k.as_secs_f64() * 1e6 / n4k as f64,
            sync_write_1m_mb_per_sec: (n1m * (1 << 20)) as f64 / 1e6 / t1m.as_secs_f64(),
        })
    }
    .await;
    let _ = file.close().await;
    let _ = std::fs::remove_file(&path);
    result
}

/// Appends `size`-byte writes, each followed by fdatasync, until `budget` has passed (at least one;
/// at most 1 GiB of file, so a fast device cannot fill a small disk). Returns (count, time taken).
async fn run(file: &DmaFile, size: usize, budget: Duration) -> glommio::Result<(u64, Duration), ()> {
    const FILE_MAX: u64 = 1 << 30;
    let start = Instant::now();
    let mut n = 0u64;
    let mut pos = 0u64;
    while n == 0 || start.elapsed() < budget {
        let mut buf = file.alloc_dma_buffer(size);
        buf.as_bytes_mut().fill(0x5A);
        file.write_at(buf, pos).await?;
        file.fdatasync().await?;
        n += 1;
        pos = if pos + size as u64 >= FILE_MAX { 0 } else { pos + size as u64 };
    }
    Ok((n, start.elapsed()))
}
