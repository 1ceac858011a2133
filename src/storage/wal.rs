//! The append path: records go into log segments with glommio direct I/O (`O_DIRECT` writes through
//! io_uring, `fdatasync` through io_uring); snapshots go into files of their own
//! ([`write_snapshot`], which the runtime runs beside the log, never in its way).
//!
//! The caller does group commit: any number of [`Wal::append`]s, then one sync, then it releases
//! the messages that waited for those records. A sync can be split in two so that syncs pipeline:
//! [`Wal::start_sync`] writes out and starts the fdatasync, [`PendingSync::wait`] waits for it while
//! the caller appends more and starts the next, [`Wal::finish_sync`] retires it in order. Nothing
//! appended is durable before the sync started after it has completed `Ok`. This file must never
//! report a sync it has not completed, and never write into a segment left by an earlier process
//! (every start begins a new segment after the recovered ones, so a file's padded or torn end is
//! never appended to).
//!
//! # Why not `DmaStreamWriter`
//!
//! glommio's `DmaStreamWriter::sync` pads the partial last buffer and writes the WHOLE buffer
//! (128 KiB by default) at its aligned position, then rewrites it on the next flush; the padding is
//! whatever the DMA buffer held (pool memory is neither zeroed nor fresh: it can hold an older
//! buffer's records). Stale records in that padding could look like intact records after a torn
//! tail and turn a harmless crash into "corruption in the middle". So this file drives `DmaFile`
//! itself: one DMA buffer holds the unwritten tail starting at a block boundary; a full buffer is
//! written behind (up to `write_behind` at once); `sync` writes only the blocks that hold data, the
//! last one padded with ZEROS (which [`scan`](super::record::scan) reads as the clean end), then
//! fdatasyncs. The partial last block is kept and rewritten, longer, by the next write: the rewrite
//! puts the same bytes over the synced prefix, so a torn rewrite cannot damage synced records on a
//! disk that writes sectors atomically.
//!
//! # Disk bound
//!
//! A segment is closed (written, synced) once it exceeds `segment_bytes` (the first ones a process
//! begins are smaller: `first_segment_bytes`, doubling); the next one begins with
//! the sticky records (the last `Promise` and `Trim`) so no older segment is needed for them. After
//! a `Trim { below }` is durable, every closed segment whose highest slot is below `below` (or that
//! holds no slot at all) is deleted. The disk holds the live records (slots at or above the trim
//! point), rounded out to whole segments: about two segments beyond the live records in steady
//! state (the current one and the one the trim point is in), plus the prepared next one, plus up
//! to [`MAX_SPARE_SEGMENTS`] kept for reuse, plus the newest snapshot. Every segment file is its
//! limit plus one buffer long from its creation (filled with zeros, see below).
//!
//! # Reused segments
//!
//! A full-size segment this process closed and a durable trim condemned is not deleted but kept
//! as a spare (up to [`MAX_SPARE_SEGMENTS`]), and the next segment is prepared by renaming a spare
//! rather than writing a new file of zeros: half the bytes written, and none of the zeros' load on
//! the disk that every vote's sync waited behind (`bench/README.md`, 2026-12-07). Its old records
//! stay in it until overwritten; they cannot be read as the new segment's because every record's
//! checksum is seeded by the sequence number of the segment it was written in (`record.rs`), and
//! every sync ends what it writes with a zero header, so a scan of the new segment ends where its
//! own records end. Only segments this process wrote are reused: a recovered one may predate seeds.
//!
//! # Off the vote's path
//!
//! Deleting a segment can take tens of milliseconds (a 64 MiB file on a file system mounted with
//! `discard` frees its extents synchronously), and creating one costs an open and a directory sync.
//! Neither may hold votes back: deletions run as a background task once the trim that condemned
//! them is durable (an error surfaces at the next [`Wal::finish_sync`]), each renamed `*.free` and
//! freed a step at a time so that other logs on the device are not held behind its discards
//! ([`FREE_STEP_BYTES`]), and the next segment is created while the current one fills, already
//! full of synced zeros so that the log's writes are overwrites (see `create_segment`). A segment
//! of zeros holds nothing, so recovery treats a torn segment followed only by all-zero ones as the
//! last (see `DataDir::recover`).
//!
//! # Memory
//!
//! DMA buffers come from glommio's per-executor `io_memory` pool (registered with io_uring for
//! fixed-buffer writes); when the pool is exhausted glommio falls back to an ordinary aligned heap
//! allocation (plain writes, no failure). A Wal uses `(write_behind + 1) * buffer_bytes` (1.25 MiB
//! by default); [`write_snapshot`] 1 MiB while it runs.

use super::dir::{parse_snapshot_name, segment_name, snapshot_name, SegmentInfo, StorageError};
use super::record::{encode, seed_of_segment, HEADER_LEN};
use super::snapshot::snapshot_header;
use crate::protocol::durable::Record;
use crate::protocol::Slot;
use glommio::io::{Directory, DmaBuffer, DmaFile, OpenOptions};
use glommio::task::JoinHandle;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Direct I/O alignment we write at: offsets and lengths are multiples of it (4 KiB covers every
/// device glommio reports; 512-byte devices accept it too).
pub(crate) const BLOCK: usize = 4096;
/// Size of the chunks a snapshot is written in.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Size of the zero writes that prefill a new segment.
const PREFILL_CHUNK: usize = 1 << 20;
/// A segment prepared ahead is filled with zeros at twice the rate the last one filled with
/// records, and at least this fast (a default segment in a second). Unpaced, the durable nodes of
/// a cluster, which rotate together (they log the same slots), wrote their 64 MiB of zeros each at
/// once, and every log's sync waited behind them: the load fell to about a third for 100-200 ms at
/// every rotation (every ~2.4 s at 316k cmds/s).
const MIN_PREFILL_BYTES_PER_SEC: u64 = 64 << 20;
/// A deleted segment's blocks are freed this many at a time, at most [`FREE_BYTES_PER_SEC`], before
/// it is unlinked: on a file system mounted with `discard`, an unlink frees (and discards) the
/// whole file at once, and the device serves no other log meanwhile (six 64 MiB files unlinked
/// at once held `local` at 0.45 of its load for 300 ms; freed at this pace, at 0.8-0.9 for 700 ms).
/// A segment is renamed `*.free` (durably) before its first block is freed: a segment with holes
/// must never be read as a log segment (recovery would refuse it as damaged).
const FREE_STEP_BYTES: u64 = 16 << 20;
/// The pace of that freeing: a 64 MiB segment in an eighth of a second.
const FREE_BYTES_PER_SEC: u64 = 512 << 20;
/// Condemned segments kept to be reused as the next segment (beyond these, they are deleted). An
/// acceptor's trim point follows the replicas, so about one segment is condemned per segment
/// filled; a replica's moves at each snapshot, condemning a snapshot interval's worth at once
/// (20,000 slots of 100 commands: about 2.5 segments). With two spares, every third segment of a
/// replica was a new file of zeros, and the extra condemned ones were deleted (discarded) instead.
pub const MAX_SPARE_SEGMENTS: usize = 4;

/// Tunables of the write-ahead log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one begun once it holds more than this many bytes.
    pub segment_bytes: u64,
    /// The size of the first segment a process begins (at most `segment_bytes`); each next one is
    /// twice the one before, up to `segment_bytes`. A start then writes a few MiB of zeros at once
    /// rather than a whole segment's (64 MiB: a dip in every other node's syncs on a shared disk).
    pub first_segment_bytes: u64,
    /// Bytes of one write buffer (a multiple of 4 KiB); a full buffer is written at once.
    pub buffer_bytes: usize,
    /// Full buffers in flight before `append` waits for the oldest.
    pub write_behind: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            first_segment_bytes: 4 << 20,
            buffer_bytes: 256 << 10,
            write_behind: 4,
        }
    }
}

/// Counters the runtime exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// fdatasyncs completed (log segments and snapshots).
    pub syncs: u64,
    /// Records appended (snapshots included, sticky re-writes not).
    pub records: u64,
    /// Bytes written to the log and to snapshot files (framing included, block padding not).
    pub bytes: u64,
    /// Segments deleted after a trim.
    pub segments_deleted: u64,
    /// Segments prepared by reusing a condemned one's file instead of writing zeros.
    pub segments_reused: u64,
}

type WriteTask = JoinHandle<glommio::Result<usize, ()>>;
/// The creation of a segment in the background.
type SegmentTask = JoinHandle<Result<Rc<DmaFile>, StorageError>>;

/// An fdatasync in flight, from [`Wal::start_sync`].
pub struct PendingSync {
    /// `None` once [`wait`](Self::wait) has seen it complete.
    task: Option<JoinHandle<glommio::Result<(), ()>>>,
    path: PathBuf,
    /// Segments condemned by trims appended before this sync: deleted once it completes.
    condemned: Vec<u64>,
}

impl PendingSync {
    /// Waits until the fdatasync completes: `Ok` means every record appended before
    /// [`Wal::start_sync`] is durable. Needs no access to the [`Wal`], so a caller can wait for it
    /// while appending more; then hand it to [`Wal::finish_sync`].
    pub async fn wait(&mut self) -> Result<(), StorageError> {
        let Some(task) = self.task.as_mut() else { return Ok(()) };
        let result = match task.await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(StorageError::io(&self.path, e)),
            None => Err(StorageError::io(&self.path, std::io::Error::other("sync task was cancelled"))),
        };
        self.task = None;
        result
    }
}

/// One process's write-ahead log in a data directory. Lives on one glommio executor.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// The segment being written.
    file: Rc<DmaFile>,
    sequence: u64,
    /// Holds the file's bytes from `buf_start` (block-aligned) on; `buf_len` of them are data.
    buf: DmaBuffer,
    buf_start: u64,
    buf_len: usize,
    /// Full-buffer writes issued and not yet awaited, with their expected lengths.
    in_flight: VecDeque<(WriteTask, usize)>,
    /// The last full-buffer write ended the data at a buffer boundary and no sync has written a
    /// zero header after it yet.
    unterminated: bool,
    /// Highest slot in the current segment.
    max_slot: Option<Slot>,
    /// Closed segments still on disk, oldest first.
    closed: Vec<SegmentInfo>,
    /// Segments to delete (or keep as spares) once the trim that condemned them is durable.
    condemned: Vec<u64>,
    /// The first segment this process created: it wrote every segment from here on (with seeded
    /// checksums and its own files), so only these are reused.
    first_own: u64,
    /// Condemned segments (trim durable) whose files wait to become a next segment.
    spares: Vec<u64>,
    /// The last Promise and Trim appended (or recovered).
    promise: Option<Record>,
    trim: Option<Slot>,
    scratch: Vec<u8>,
    stats: WalStats,
    /// The next segment, being created (empty) while this one fills, and the flag that tells its
    /// creation it is needed now (its zeros are then written unpaced).
    next: Option<(SegmentTask, Rc<std::cell::Cell<bool>>)>,
    /// When the current segment began: how fast it fills paces the next one's zeros.
    segment_began: std::time::Instant,
    /// The newest background deletion (each waits for the one before it).
    deleting: Option<JoinHandle<()>>,
    /// Segments the background deletions removed.
    deleted: Rc<std::cell::Cell<u64>>,
    /// The first error of a background deletion, reported by the next `finish_sync`.
    deletion_error: Rc<std::cell::RefCell<Option<StorageError>>>,
}

fn io(path: &Path) -> impl FnOnce(glommio::GlommioError<()>) -> StorageError + '_ {
    move |e| StorageError::io(path, e)
}

impl Wal {
    /// Starts a new segment `next_sequence` in `dir` (after the recovered ones, whose
    /// [`SegmentInfo`] come from the recovery report), begins it with the `sticky` records (the
    /// last recovered `Promise` and `Trim`), syncs it and the directory, and deletes old segments
    /// the recovered trim point already covers. Runs on the executor.
    pub async fn open(
        dir: impl AsRef<Path>,
        next_sequence: u64,
        old_segments: Vec<SegmentInfo>,
        sticky: &[Record],
        options: WalOptions,
    ) -> Result<Wal, StorageError> {
        assert!(options.buffer_bytes >= BLOCK && options.buffer_bytes.is_multiple_of(BLOCK), "{options:?}");
        assert!(options.write_behind >= 1, "{options:?}");
        assert!(old_segments.iter().all(|s| s.sequence < next_sequence), "new segment must be newest");
        let dir = dir.as_ref().to_path_buf();
        let file = create_segment(&dir, next_sequence, prefill_bytes(&options, 0), None).await?;
        let buf = zeroed(&file, options.buffer_bytes);
        let mut wal = Wal {
            dir,
            options,
            file,
            sequence: next_sequence,
            buf,
            buf_start: 0,
            buf_len: 0,
            in_flight: VecDeque::new(),
            unterminated: false,
            max_slot: None,
            closed: old_segments,
            condemned: Vec::new(),
            first_own: next_sequence,
            spares: Vec::new(),
            promise: None,
            trim: None,
            scratch: Vec::new(),
            stats: WalStats::default(),
            next: None,
            segment_began: std::time::Instant::now(),
            deleting: None,
            deleted: Rc::default(),
            deletion_error: Rc::default(),
        };
        wal.prepare_next(MIN_PREFILL_BYTES_PER_SEC);
        for r in sticky {
            match r {
                Record::Promise { .. } => wal.promise = Some(r.clone()),
                Record::Trim { below } => wal.trim = Some(*below),
                other => panic!("not a sticky record: {other:?}"),
            }
        }
        wal.write_sticky().await?;
        if let Some(below) = wal.trim {
            wal.condemn_below(below);
        }
        wal.sync().await?;
        Ok(wal)
    }

    /// Starts preparing the segment after the current one in the background: a spare renamed, or
    /// else a new file whose zeros are written at `bytes_per_sec` unless it is needed sooner.
    fn prepare_next(&mut self, bytes_per_sec: u64) {
        let sequence = self.sequence + 1;
        let (dir, prefill) = (self.dir.clone(), self.prefill(sequence));
        let hurry = Rc::new(std::cell::Cell::new(false));
        // Spares are full-size segments: one becomes the next only once segments are full-size.
        let spare = if self.own_and_full_size(sequence) { self.spares.pop() } else { None };
        let task = match spare {
            Some(spare) => {
                self.stats.segments_reused += 1;
                glommio::spawn_local(async move { reuse_segment(&dir, spare, sequence).await })
            }
            None => {
                let pace = Pace { bytes_per_sec, hurry: hurry.clone() };
                glommio::spawn_local(async move { create_segment(&dir, sequence, prefill, Some(pace)).await })
            }
        };
        self.next = Some((task.detach(), hurry));
    }

    fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.sequence))
    }

    /// Bytes of zeros segment `sequence` (one this process begins) is created with.
    fn prefill(&self, sequence: u64) -> u64 {
        prefill_bytes(&self.options, sequence - self.first_own)
    }

    /// Whether segment `sequence` is one this process began, at the full size: the only kind
    /// kept as a spare and reused.
    fn own_and_full_size(&self, sequence: u64) -> bool {
        sequence >= self.first_own
            && segment_limit(&self.options, sequence - self.first_own) == self.options.segment_bytes
    }

    /// The counters so far.
    pub fn stats(&self) -> WalStats {
        WalStats { segments_deleted: self.deleted.get(), ..self.stats }
    }

    /// The sequence number of the segment being written.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The directory the log (and the node's snapshots) live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closed segments still on disk (tests and metrics).
    pub fn closed_segments(&self) -> &[SegmentInfo] {
        &self.closed
    }

    /// Appends `records` in order. Not durable until [`sync`](Self::sync). May close the segment
    /// and start the next when it grows past `segment_bytes`.
    pub async fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        for r in records {
            self.stats.records += 1;
            match r {
                Record::Promise { .. } => self.promise = Some(r.clone()),
                Record::Trim { below } => {
                    self.trim = Some(*below);
                    self.condemn_below(*below);
                }
                Record::Accept { .. } | Record::Executed { .. } => {}
            }
            self.max_slot = self.max_slot.max(r.slot());
            self.push_record(r).await?;
        }
        if self.segment_len() > segment_limit(&self.options, self.sequence - self.first_own) {
            self.rotate().await?;
        }
        Ok(())
    }

    fn segment_len(&self) -> u64 {
        self.buf_start + self.buf_len as u64
    }

    async fn push_record(&mut self, r: &Record) -> Result<(), StorageError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        encode(r, seed_of_segment(self.sequence), &mut scratch);
        self.stats.bytes += scratch.len() as u64;
        let res = self.push_bytes(&scratch).await;
        self.scratch = scratch;
        res
    }

    async fn push_bytes(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        while !data.is_empty() {
            let n = (self.buf.len() - self.buf_len).min(data.len());
            self.buf.as_bytes_mut()[self.buf_len..self.buf_len + n].copy_from_slice(&data[..n]);
            self.buf_len += n;
            data = &data[n..];
            if self.buf_len == self.buf.len() {
                self.write_full_buffer().await?;
            }
        }
        Ok(())
    }

    /// Issues the write of a full buffer without waiting for it (unless `write_behind` are
    /// already in flight), and starts a fresh one after it.
    async fn write_full_buffer(&mut self) -> Result<(), StorageError> {
        while self.in_flight.len() >= self.options.write_behind {
            self.await_oldest_write().await?;
        }
        let full = std::mem::replace(&mut self.buf, zeroed(&self.file, self.options.buffer_bytes));
        let len = full.len();
        let (file, pos) = (self.file.clone(), self.buf_start);
        let task = glommio::spawn_local(async move { file.write_at(full, pos).await }).detach();
        self.in_flight.push_back((task, len));
        self.buf_start += len as u64;
        self.buf_len = 0;
        // The log now ends at a buffer boundary, with no zero header after it yet.
        self.unterminated = true;
        Ok(())
    }

    async fn await_oldest_write(&mut self) -> Result<(), StorageError> {
        let Some((task, len)) = self.in_flight.pop_front() else { return Ok(()) };
        let path = self.path();
        match task.await {
            Some(Ok(n)) if n == len => Ok(()),
            Some(Ok(n)) => Err(StorageError::io(&path, short_write(n, len))),
            Some(Err(e)) => Err(StorageError::io(&path, e)),
            None => Err(StorageError::io(&path, std::io::Error::other("write task was cancelled"))),
        }
    }

    /// Makes everything appended so far durable: [`start_sync`](Self::start_sync) then
    /// [`finish_sync`](Self::finish_sync).
    ///
    /// After any error from `append` or a sync the Wal must not be used again: a failed fdatasync
    /// may have dropped dirty pages, so the only safe course is to stop the node and let recovery
    /// read what is really on disk.
    pub async fn sync(&mut self) -> Result<(), StorageError> {
        let pending = self.start_sync().await?;
        self.finish_sync(pending).await
    }

    /// Writes out everything appended so far (waits for the writes in flight, writes the partial
    /// last buffer zero-padded to a block, with room for a zero header after the last record: the
    /// log's clean end, whatever a reused file holds after it) and starts an fdatasync of the
    /// segment without waiting for it. The records appended so far are durable once
    /// [`PendingSync::wait`] returns `Ok`.
    ///
    /// Syncs pipeline: more records may be appended, and another sync started, while this one is in
    /// flight. That is safe because every write is complete before the next write or fdatasync is
    /// issued, so a later fdatasync covers everything an earlier one does, and no two writes of the
    /// same block are ever in flight together.
    pub async fn start_sync(&mut self) -> Result<PendingSync, StorageError> {
        while !self.in_flight.is_empty() {
            self.await_oldest_write().await?;
        }
        let path = self.path();
        if self.buf_len > 0 || self.unterminated {
            // Write the blocks holding data and the zero header after it, from a copy: write_at
            // consumes its buffer, and the partial last block stays in ours to be completed and
            // rewritten later. (Past our buffer, the header's block is the next buffer's: zeros.)
            let blocks = (self.buf_len + HEADER_LEN).div_ceil(BLOCK) * BLOCK;
            let ours = blocks.min(self.buf.len());
            let mut out = self.file.alloc_dma_buffer(blocks);
            out.as_bytes_mut()[..ours].copy_from_slice(&self.buf.as_bytes()[..ours]);
            out.as_bytes_mut()[ours..].fill(0);
            write_whole(&self.file, out, self.buf_start, &path).await?;
            self.unterminated = false;
            // Keep only the partial last block, at the start of the buffer.
            let whole = self.buf_len / BLOCK * BLOCK;
            if whole > 0 {
                let tail = self.buf_len - whole;
                let b = self.buf.as_bytes_mut();
                b.copy_within(whole..self.buf_len, 0);
                b[tail..self.buf_len].fill(0);
                self.buf_start += whole as u64;
                self.buf_len = tail;
            }
        }
        let file = self.file.clone();
        let task = glommio::spawn_local(async move { file.fdatasync().await }).detach();
        Ok(PendingSync { task: Some(task), path, condemned: std::mem::take(&mut self.condemned) })
    }

    /// Counts a sync that [`PendingSync::wait`] reported durable, then starts deleting, in the
    /// background, the segments that a trim appended before it condemned (that trim is durable
    /// now). Call in the order the syncs were started.
    pub async fn finish_sync(&mut self, mut pending: PendingSync) -> Result<(), StorageError> {
        pending.wait().await?;
        self.stats.syncs += 1;
        if let Some(e) = self.deletion_error.borrow_mut().take() {
            return Err(e);
        }
        let mut dead = std::mem::take(&mut pending.condemned);
        // Our own segments become spares, newest first kept (the others were condemned earlier).
        dead.sort_unstable();
        while self.spares.len() < MAX_SPARE_SEGMENTS {
            match dead.iter().rposition(|&seq| self.own_and_full_size(seq)) {
                Some(i) => self.spares.push(dead.remove(i)),
                None => break,
            }
        }
        self.delete_segments(dead);
        Ok(())
    }

    /// Waits until every deletion started so far is done (tests, and closing).
    pub async fn deletions_done(&mut self) -> Result<(), StorageError> {
        if let Some(task) = self.deleting.take() {
            task.await;
        }
        match self.deletion_error.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Marks for deletion every closed segment wholly below `below`.
    fn condemn_below(&mut self, below: Slot) {
        let condemned = &mut self.condemned;
        self.closed.retain(|s| {
            let dead = s.max_slot.is_none_or(|m| m < below);
            if dead {
                condemned.push(s.sequence);
            }
            !dead
        });
    }

    /// Deletes `sequences` in a background task, after the deletions started before.
    fn delete_segments(&mut self, sequences: Vec<u64>) {
        if sequences.is_empty() {
            return;
        }
        let (dir, before) = (self.dir.clone(), self.deleting.take());
        let (deleted, error) = (self.deleted.clone(), self.deletion_error.clone());
        let task = async move {
            if let Some(before) = before {
                before.await;
            }
            for seq in sequences {
                match free_then_remove(&dir, &segment_name(seq)).await {
                    Ok(true) => deleted.set(deleted.get() + 1),
                    // Already gone (an earlier attempt): the goal is met.
                    Ok(false) => {}
                    Err(e) => {
                        error.borrow_mut().get_or_insert(e);
                        return;
                    }
                }
            }
            // No directory sync: a deleted segment that reappears after a crash only replays
            // records that later sticky records and trims override.
        };
        self.deleting = Some(glommio::spawn_local(task).detach());
    }

    /// Closes the current segment (synced whole) and begins the next with the sticky records.
    async fn rotate(&mut self) -> Result<(), StorageError> {
        self.sync().await?;
        // Twice the rate this segment filled at: the next one is ready well before it is needed.
        let filled_in = self.segment_began.elapsed().as_secs_f64().max(1e-3);
        let pace = ((2.0 * self.segment_len() as f64 / filled_in) as u64).max(MIN_PREFILL_BYTES_PER_SEC);
        let file = match self.next.take() {
            Some((task, hurry)) => {
                hurry.set(true);
                task.await.unwrap_or_else(|| Err(cancelled(&self.dir, "segment creation")))?
            }
            None => {
                create_segment(&self.dir, self.sequence + 1, self.prefill(self.sequence + 1), None).await?
            }
        };
        self.segment_began = std::time::Instant::now();
        self.buf = zeroed(&file, self.options.buffer_bytes);
        let old = std::mem::replace(&mut self.file, file);
        self.buf_start = 0;
        self.buf_len = 0;
        let info = SegmentInfo { sequence: self.sequence, max_slot: self.max_slot.take() };
        self.sequence += 1;
        self.prepare_next(pace);
        if let Ok(f) = Rc::try_unwrap(old) {
            let path = self.dir.join(segment_name(info.sequence));
            f.close().await.map_err(io(&path))?;
        }
        self.closed.push(info);
        // A segment with no slots is dead as soon as a later one carries the sticky records.
        self.write_sticky().await?;
        if let Some(below) = self.trim {
            self.condemn_below(below);
        }
        Ok(())
    }

    async fn write_sticky(&mut self) -> Result<(), StorageError> {
        if let Some(p) = self.promise.clone() {
            self.push_record(&p).await?;
        }
        if let Some(below) = self.trim {
            self.push_record(&Record::Trim { below }).await?;
        }
        Ok(())
    }

    /// Syncs everything, lets deletions finish, removes the spares and the prepared (empty) next
    /// segment, and closes the current one.
    pub async fn close(mut self) -> Result<(), StorageError> {
        self.sync().await?;
        let spares = std::mem::take(&mut self.spares);
        self.delete_segments(spares);
        self.deletions_done().await?;
        let prepared = match self.next.take() {
            // Its zeros go out unpaced: a close would otherwise wait up to a second for them.
            Some((task, hurry)) => {
                hurry.set(true);
                task.await
            }
            None => None,
        };
        if let Some(Ok(next)) = prepared {
            let p = self.dir.join(segment_name(self.sequence + 1));
            if let Ok(f) = Rc::try_unwrap(next) {
                f.close().await.map_err(io(&p))?;
            }
            glommio::io::remove(&p).await.map_err(io(&p))?;
        }
        let path = self.path();
        if let Ok(f) = Rc::try_unwrap(self.file) {
            f.close().await.map_err(io(&path))?;
        }
        Ok(())
    }
}

/// Writes `snapshot-<slot>.snap` in `dir` atomically: `.tmp`, fdatasync, rename, directory fsync;
/// then deletes older snapshots. Returns the bytes written. One at a time per directory, in slot
/// order (the newest complete one is what a restart loads). On failure (a full disk, say) the
/// partial `.tmp` is removed, so that what it took is free again.
pub async fn write_snapshot(dir: &Path, slot: Slot, state: &[u8]) -> Result<u64, StorageError> {
    let tmp = dir.join(format!("{}.tmp", snapshot_name(slot)));
    let written = write_snapshot_file(dir, slot, state, &tmp).await;
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

async fn write_snapshot_file(dir: &Path, slot: Slot, state: &[u8], tmp: &Path) -> Result<u64, StorageError> {
    let name = snapshot_name(slot);
    let fin = dir.join(&name);
    let file = create_tmp(tmp).await?;
    let header = snapshot_header(slot, state);
    let total = header.len() + state.len();
    let mut pos = 0usize;
    // Stream header+state in block-aligned chunks, one write in flight (the log's writes go between
    // them); the last chunk is zero-padded and the file truncated to its exact length afterwards
    // (decode_snapshot checks the length).
    while pos < total {
        let n = SNAPSHOT_CHUNK.min(total - pos);
        let padded = n.div_ceil(BLOCK) * BLOCK;
        let mut buf = zeroed(&file, padded);
        // The chunk's part of the header, then its part of the state (a byte-by-byte copy held
        // the executor for milliseconds per snapshot).
        let b = buf.as_bytes_mut();
        let header_left = &header[pos.min(header.len())..];
        let from_header = header_left.len().min(n);
        b[..from_header].copy_from_slice(&header_left[..from_header]);
        let state_at = (pos + from_header).saturating_sub(header.len());
        b[from_header..n].copy_from_slice(&state[state_at..state_at + n - from_header]);
        write_whole(&file, buf, pos as u64, tmp).await?;
        pos += n;
    }
    file.truncate(total as u64).await.map_err(io(tmp))?;
    file.fdatasync().await.map_err(io(tmp))?;
    file.close().await.map_err(io(tmp))?;
    glommio::io::rename(&tmp, &fin).await.map_err(io(&fin))?;
    sync_dir(dir).await?;
    // Older snapshots are superseded only now that the new one is durable under its name.
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))?;
    for entry in entries.flatten() {
        let n = entry.file_name();
        if n.to_str().and_then(parse_snapshot_name).is_some_and(|s| s < slot) {
            let p = entry.path();
            glommio::io::remove(&p).await.map_err(io(&p))?;
        }
    }
    Ok(total as u64)
}

/// The size past which the `nth` segment a process began is closed: `first_segment_bytes`,
/// doubling, up to `segment_bytes`.
fn segment_limit(options: &WalOptions, nth: u64) -> u64 {
    let first = options.first_segment_bytes.clamp(BLOCK as u64, options.segment_bytes.max(BLOCK as u64));
    first.checked_shl(nth.min(32) as u32).unwrap_or(u64::MAX).min(options.segment_bytes)
}

/// Bytes of zeros the `nth` segment a process began is filled with: room for its limit and the
/// append that crosses it (a bigger one still works: its writes extend the file, as every write
/// once did).
fn prefill_bytes(options: &WalOptions, nth: u64) -> u64 {
    segment_limit(options, nth).div_ceil(BLOCK as u64) * BLOCK as u64 + options.buffer_bytes as u64
}

/// Creates segment `sequence` in `dir` holding `prefill` bytes of zeros (durable), and makes its
/// name durable.
///
/// Why zeros: a direct write that extends a file (or fills a hole) allocates blocks and grows the
/// inode, so on ext4 io_uring must hand it to a kernel worker, and each fdatasync after it writes
/// the inode and allocation metadata as well as flushing: about four device requests per sync. Into
/// blocks already written and synced, a write is a plain overwrite, issued straight from the
/// executor, and fdatasync is a single flush (`bench/README.md`, 2026-12-06: +20% durable `local`).
/// Zeros read as the log's clean end, so a prefilled segment scans like a short one.
///
/// The file is filled under a `.tmp` name and renamed only once its zeros are durable: after a
/// crash, a segment name never points at blocks the file system allocated but did not write (which
/// could hold an older segment's intact records). Recovery deletes a leftover `.tmp`.
///
/// With a `pace`, the zeros are written no faster than it allows (see `MIN_PREFILL_BYTES_PER_SEC`)
/// until its `hurry` is set.
async fn create_segment(
    dir: &Path,
    sequence: u64,
    prefill: u64,
    pace: Option<Pace>,
) -> Result<Rc<DmaFile>, StorageError> {
    let path = dir.join(segment_name(sequence));
    let tmp = dir.join(format!("{}.tmp", segment_name(sequence)));
    let file = create_tmp(&tmp).await?;
    let began = std::time::Instant::now();
    let mut pos = 0;
    while pos < prefill {
        let n = (prefill - pos).min(PREFILL_CHUNK as u64) as usize;
        write_whole(&file, zeroed(&file, n), pos, &tmp).await?;
        pos += n as u64;
        if let Some(pace) = &pace {
            pace.wait_for(began, pos).await;
        }
    }
    file.fdatasync().await.map_err(io(&tmp))?;
    glommio::io::rename(&tmp, &path).await.map_err(io(&path))?;
    // Without this a synced record could sit in a file whose name a crash forgets.
    sync_dir(dir).await?;
    Ok(Rc::new(file))
}

/// How fast a segment prepared ahead may be filled, and the flag that lifts the limit.
struct Pace {
    bytes_per_sec: u64,
    hurry: Rc<std::cell::Cell<bool>>,
}

impl Pace {
    /// Waits until `written` bytes since `began` are within the pace, or until hurried (looking
    /// every 2 ms, so a segment needed now waits at most that long for its pace to lift).
    async fn wait_for(&self, began: std::time::Instant, written: u64) {
        let due = began + std::time::Duration::from_secs_f64(written as f64 / self.bytes_per_sec as f64);
        while !self.hurry.get() {
            let now = std::time::Instant::now();
            if now >= due {
                return;
            }
            glommio::timer::sleep((due - now).min(std::time::Duration::from_millis(2))).await;
        }
    }
}

/// Renames segment file `name` of `dir` to `*.free` (and syncs the directory), frees its blocks
/// [`FREE_STEP_BYTES`] at a time at [`FREE_BYTES_PER_SEC`], then unlinks it. A file system that
/// cannot punch holes has the file unlinked whole. A `*.free` file a crash leaves is deleted at the
/// next start (`DataDir::recover`). `Ok(false)`: there was no such file (an earlier attempt
/// deleted it).
async fn free_then_remove(dir: &Path, name: &str) -> Result<bool, StorageError> {
    let began = std::time::Instant::now();
    let (path, freeing) = (dir.join(name), dir.join(format!("{name}.free")));
    match glommio::io::rename(&path, &freeing).await.map_err(std::io::Error::from) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageError::io(&path, e)),
    }
    sync_dir(dir).await?;
    free_gradually(&freeing, began).await.map_err(|e| StorageError::io(&freeing, e))?;
    glommio::io::remove(&freeing).await.map_err(io(&freeing))?;
    Ok(true)
}

async fn free_gradually(path: &Path, began: std::time::Instant) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).dma_open(path).await?;
    let len = file.file_size().await?;
    let mut freed = 0;
    while freed < len {
        let n = FREE_STEP_BYTES.min(len - freed);
        if file.deallocate(freed, n).await.is_err() {
            break;
        }
        freed += n;
        let due = std::time::Duration::from_secs_f64(freed as f64 / FREE_BYTES_PER_SEC as f64);
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            glommio::timer::sleep(wait).await;
        }
    }
    file.close().await?;
    Ok(())
}

/// Makes spare segment `spare` (condemned by a durable trim) segment `sequence`: its first block
/// zeroed, renamed, the new name made durable, opened. Its other old records stay until
/// overwritten; they verify under `spare`'s checksum seed, not `sequence`'s, so no scan of it reads
/// them (see "Reused segments" above).
///
/// Its first block is zeroed (durably, under a `.tmp` name that recovery deletes) before it takes
/// the new name: the new segment then reads as empty until its first records are written. Without
/// it, a process killed after preparing the segment left a file of records that verify under no
/// seed between its real segments; the restart began a newer segment, and every start after the
/// next kill refused the log as damaged in the middle (found by an independent fault run).
async fn reuse_segment(dir: &Path, spare: u64, sequence: u64) -> Result<Rc<DmaFile>, StorageError> {
    let path = dir.join(segment_name(sequence));
    let tmp = dir.join(format!("{}.tmp", segment_name(sequence)));
    glommio::io::rename(dir.join(segment_name(spare)), &tmp).await.map_err(io(&tmp))?;
    let file = OpenOptions::new().read(true).write(true).dma_open(&tmp).await.map_err(io(&tmp))?;
    write_whole(&file, zeroed(&file, BLOCK), 0, &tmp).await?;
    file.fdatasync().await.map_err(io(&tmp))?;
    glommio::io::rename(&tmp, &path).await.map_err(io(&path))?;
    sync_dir(dir).await?;
    Ok(Rc::new(file))
}

/// Creates (or empties) `tmp` for direct I/O: a file that is renamed into place once written.
async fn create_tmp(tmp: &Path) -> Result<DmaFile, StorageError> {
    OpenOptions::new()
        // Readable too: glommio probes the device's iopoll support with a read on first open
        // (write-only, the probe fails with EBADF and logs an error).
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(tmp)
        .await
        .map_err(io(tmp))
}

/// Writes all of `buf` at `pos` of `file` (named `path` in errors); a short write is an error.
async fn write_whole(file: &DmaFile, buf: DmaBuffer, pos: u64, path: &Path) -> Result<(), StorageError> {
    let want = buf.len();
    let written = file.write_at(buf, pos).await.map_err(io(path))?;
    if written != want {
        return Err(StorageError::io(path, short_write(written, want)));
    }
    Ok(())
}

fn cancelled(path: &Path, what: &str) -> StorageError {
    StorageError::io(path, std::io::Error::other(format!("{what} was cancelled")))
}

fn zeroed(file: &DmaFile, len: usize) -> DmaBuffer {
    let mut b = file.alloc_dma_buffer(len);
    // Pool memory holds whatever an earlier buffer left; padding must read as the clean end.
    b.as_bytes_mut().fill(0);
    b
}

fn short_write(n: usize, want: usize) -> std::io::Error {
    // O_DIRECT writes come back short when the file system has no room for the rest.
    std::io::Error::other(format!("short write: {n} of {want} bytes (is the disk full?)"))
}

async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = Directory::open(dir).await.map_err(io(dir))?;
    d.sync().await.map_err(io(dir))?;
    d.close().await.map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::Value;
    use crate::protocol::Ballot;
    use crate::storage::dir::DataDir;
    use crate::storage::record::scan;
    use bytes::Bytes;
    use glommio::LocalExecutorBuilder;

    /// A scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let p = std::env::temp_dir().join(format!("autopaxos-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `f` on a fresh executor configured like the runtime's (1 MiB io_memory).
    fn on_executor<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + 'static,
    {
        LocalExecutorBuilder::default().io_memory(1 << 20).spawn(f).unwrap().join().unwrap()
    }

    const B: Ballot = Ballot { round: 2, proposer: 1 };

    fn accept(slot: Slot, len: usize) -> Record {
        Record::Accept { slot, ballot: B, value: Value::Batch(Bytes::from(vec![slot as u8; len])) }
    }

    /// One process's run: recover, open a Wal after it, append each group and sync it.
    fn run_once(dir: &Path, groups: Vec<Vec<Record>>, options: WalOptions) -> (Vec<Record>, WalStats) {
        let data = DataDir::open(dir).unwrap();
        let (recovered, report) = data.recover().unwrap();
        let path = dir.to_path_buf();
        let stats = on_executor(move || async move {
            let mut wal =
                Wal::open(&path, report.next_sequence, report.old_segments, &report.sticky, options)
                    .await
                    .unwrap();
            for g in groups {
                wal.append(&g).await.unwrap();
                wal.sync().await.unwrap();
            }
            wal.deletions_done().await.unwrap();
            let stats = wal.stats();
            wal.close().await.unwrap();
            stats
        });
        (recovered.records, stats)
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn appended_and_synced_records_come_back_after_a_reopen() {
        let t = TempDir::new("roundtrip");
        let promise = Record::Promise { ballot: B, nonce: Some(5) };
        let first = vec![promise.clone(), accept(0, 100), accept(1, 5000), Record::Trim { below: 0 }];
        let (before, stats) = run_once(&t.0, vec![first.clone(), vec![accept(2, 10)]], WalOptions::default());
        assert!(before.is_empty());
        assert_eq!(stats.records, 5);
        assert!(stats.syncs >= 2);
        let (after, _) = run_once(&t.0, vec![vec![accept(3, 1)]], WalOptions::default());
        let mut want = first.clone();
        want.push(accept(2, 10));
        assert_eq!(after, want);
        // The third start sees the second run's sticky copies and its append too.
        let (third, _) = run_once(&t.0, vec![], WalOptions::default());
        let mut want2 = want.clone();
        want2.extend([promise, Record::Trim { below: 0 }, accept(3, 1)]);
        assert_eq!(third, want2);
    }

    /// The checksum seed of a segment's records, from the sequence number in its file name.
    fn seed_of(segment: &Path) -> u64 {
        let name = segment.file_name().unwrap().to_str().unwrap();
        seed_of_segment(crate::storage::dir::parse_segment_name(name).unwrap())
    }

    /// One run that wrote three records: the records, the segment holding them, its bytes and
    /// where each record ends.
    fn three_records(dir: &Path) -> (Vec<Record>, PathBuf, Vec<u8>, Vec<usize>) {
        let recs = vec![accept(0, 10), accept(1, 300), accept(2, 300)];
        run_once(dir, vec![recs.clone()], WalOptions::default());
        let seg = segments(dir).pop().unwrap();
        let bytes = std::fs::read(&seg).unwrap();
        let ends = scan(&Bytes::from(bytes.clone()), seed_of(&seg)).unwrap().ends;
        (recs, seg, bytes, ends)
    }

    #[test]
    fn a_tail_torn_mid_record_is_cut_off_and_reported() {
        let t = TempDir::new("torn");
        let (recs, seg, mut bytes, ends) = three_records(&t.0);
        // A crash mid-write: the third record's first 100 bytes, then the segment's zeros.
        bytes[ends[1] + 100..].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let data = DataDir::open(&t.0).unwrap();
        let (recovered, report) = data.recover().unwrap();
        assert_eq!(recovered.records, recs[..2]);
        assert_eq!(report.torn_bytes_dropped, 100);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), ends[1] as u64);
        assert!(report.to_string().contains("torn tail dropped: 100 bytes"), "{report}");
    }

    #[test]
    fn a_segment_cut_short_mid_record_is_refused_not_read_as_a_torn_tail() {
        let t = TempDir::new("cut-short");
        let (_, seg, bytes, ends) = three_records(&t.0);
        // Truncated by hand (or a copy that stopped) inside the third record: no write of the log
        // ends there, and every record after the cut is gone.
        let cut = ends[1] + 100;
        std::fs::write(&seg, &bytes[..cut]).unwrap();
        let err = DataDir::open(&t.0).unwrap().recover().unwrap_err();
        assert!(
            matches!(&err, StorageError::Corrupt { file, offset, .. } if *file == seg && *offset == Some(ends[1] as u64)),
            "{err}"
        );
        assert!(err.to_string().contains("cut short"), "{err}");
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), cut as u64, "the evidence is left as it was");
        // A header cut by the end of the file is the same damage.
        std::fs::write(&seg, &bytes[..ends[1] + 5]).unwrap();
        assert!(DataDir::open(&t.0).unwrap().recover().is_err());
    }

    #[test]
    fn a_torn_segment_followed_only_by_the_prepared_all_zero_one_is_the_last() {
        let t = TempDir::new("torn-prepared");
        let (recs, seg, bytes, ends) = three_records(&t.0);
        let (_, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert!(bytes.len() as u64 >= prefill_bytes(&WalOptions::default(), 0), "segments are prefilled");
        // The third record half written, the segment's zeros after it.
        let mut torn = bytes.clone();
        torn[ends[1] + 100..].fill(0);
        std::fs::write(&seg, &torn).unwrap();
        // What a crash leaves: the next segment created, all zeros, while this one was being written.
        let prepared = t.0.join(segment_name(report.next_sequence));
        std::fs::write(&prepared, vec![0u8; 1 << 20]).unwrap();
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert_eq!(recovered.records, recs[..2]);
        let torn_len = torn.iter().rposition(|&x| x != 0).unwrap() + 1 - ends[1];
        assert!((1..=100).contains(&torn_len), "{torn_len}");
        assert_eq!(report.torn_bytes_dropped, torn_len as u64);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), ends[1] as u64);
        // A torn segment with a written one after it is damage, not a tail.
        std::fs::write(&seg, &torn).unwrap();
        let mut written = Vec::new();
        encode(&recs[0], seed_of(&prepared), &mut written);
        written.resize(1 << 20, 0);
        std::fs::write(&prepared, &written).unwrap();
        let err = DataDir::open(&t.0).unwrap().recover().unwrap_err();
        assert!(matches!(&err, StorageError::Corrupt { file, .. } if *file == seg), "{err}");
    }

    #[test]
    fn a_flipped_byte_in_a_middle_record_refuses_naming_file_and_offset() {
        let t = TempDir::new("corrupt");
        let (_, seg, mut bytes, ends) = three_records(&t.0);
        bytes[ends[0] + 40] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        let err = DataDir::open(&t.0).unwrap().recover().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, StorageError::Corrupt { file, offset, .. } if *file == seg && *offset == Some(ends[0] as u64)),
            "{msg}"
        );
        assert!(msg.contains(&seg.display().to_string()) && msg.contains("refusing to start"), "{msg}");
    }

    #[test]
    fn rotation_and_trims_keep_the_disk_bounded_and_keep_promise_and_trim() {
        let t = TempDir::new("rotate");
        let options = small_segments();
        let promise = Record::Promise { ballot: B, nonce: None };
        let mut groups = vec![vec![promise.clone()]];
        for slot in 0..400u64 {
            let mut g = vec![accept(slot, 200)];
            if slot % 20 == 19 {
                g.push(Record::Trim { below: slot - 10 });
            }
            groups.push(g);
        }
        let (_, stats) = run_once(&t.0, groups, options.clone());
        // Condemned segments became the next ones, rather than new files of zeros.
        assert!(stats.segments_reused >= 8, "{stats:?}");
        let segs = segments(&t.0);
        for p in &segs {
            // Filled with zeros at creation (or reused), so the log only ever overwrote.
            assert_eq!(
                std::fs::metadata(p).unwrap().len(),
                prefill_bytes(&options, u64::MAX),
                "{}",
                p.display()
            );
        }
        let on_disk: u64 = segs.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        // Live records (about 30 slots * ~240 bytes) plus about two segments.
        assert!(on_disk <= 3 * prefill_bytes(&options, u64::MAX), "{on_disk} bytes in {segs:?}");
        let data = DataDir::open(&t.0).unwrap();
        let (recovered, _) = data.recover().unwrap();
        assert!(recovered.records.contains(&promise), "the promise was lost with a deleted segment");
        assert!(recovered.records.contains(&Record::Trim { below: 389 }));
        for slot in 389..400 {
            assert!(recovered.records.contains(&accept(slot, 200)), "live slot {slot} lost");
        }
        assert_slots_only_rise(&recovered.records);
    }

    /// Options whose segments fill after a few records (8 KiB, 4 KiB buffers).
    fn small_segments() -> WalOptions {
        WalOptions { segment_bytes: 8 << 10, buffer_bytes: 4 << 10, write_behind: 2, ..WalOptions::default() }
    }

    /// What a crash leaves of `wal`: once the background work under way (the next segment's
    /// preparation, deletions) has had time to finish, nothing more: no close.
    async fn crash(wal: Wal) {
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        std::mem::forget(wal);
    }

    /// No record of an older segment was read back from a reused file: the slots accepted only rise.
    fn assert_slots_only_rise(records: &[Record]) {
        let slots: Vec<Slot> =
            records.iter().filter(|r| matches!(r, Record::Accept { .. })).filter_map(Record::slot).collect();
        assert!(slots.windows(2).all(|w| w[0] < w[1]), "an older segment's record came back: {slots:?}");
    }

    #[test]
    fn a_sync_ends_the_log_with_a_zero_header_even_on_a_block_boundary_over_old_bytes() {
        let t = TempDir::new("terminator");
        let options = WalOptions {
            segment_bytes: 1 << 20,
            buffer_bytes: 4 << 10,
            write_behind: 2,
            ..WalOptions::default()
        };
        let path = t.0.clone();
        let data = DataDir::open(&t.0).unwrap();
        // A record of exactly one buffer: the append writes it whole, the sync has no data left.
        let record = accept(0, BLOCK - HEADER_LEN - 24);
        assert_eq!(crate::storage::record::framed_len(crate::storage::record::body_len(&record)), BLOCK);
        let expected = record.clone();
        on_executor(move || async move {
            let mut wal = Wal::open(&path, 0, vec![], &[], options).await.unwrap();
            // Bytes no zero header separates from the log, as in a reused segment.
            let file = path.join(segment_name(0));
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 4 * BLOCK], 0).unwrap();
            f.sync_all().unwrap();
            wal.append(&[record]).await.unwrap();
            wal.sync().await.unwrap();
            crash(wal).await;
        });
        drop(data);
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert_eq!(recovered.records, vec![expected]);
        assert_eq!(report.torn_bytes_dropped, 0, "a cleanly synced log read as torn: {report}");
    }

    #[test]
    fn a_torn_segment_before_segment_0s_file_reused_and_not_yet_written_is_the_last() {
        let t = TempDir::new("reuse-zero");
        let segment = |seq: u64, records: &[Record]| {
            let mut bytes = Vec::new();
            for r in records {
                encode(r, seed_of_segment(seq), &mut bytes);
            }
            bytes.resize(64 << 10, 0);
            bytes
        };
        // Segment 0's file, prepared as segment 2 (renamed) when the process died.
        std::fs::write(t.0.join(segment_name(2)), segment(0, &[accept(0, 100), accept(1, 100)])).unwrap();
        // Segment 1, the one being written, its last write torn.
        let mut current = segment(1, &[accept(2, 100), accept(3, 100)]);
        let end = scan(&Bytes::from(current.clone()), seed_of_segment(1)).unwrap().valid_len;
        current[end..end + 50].fill(0xAB);
        std::fs::write(t.0.join(segment_name(1)), current).unwrap();
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert_eq!(recovered.records, vec![accept(2, 100), accept(3, 100)]);
        assert_eq!(report.torn_bytes_dropped, 50);
    }

    #[test]
    fn a_crash_among_reused_segments_keeps_every_synced_record_and_reads_no_older_one() {
        let t = TempDir::new("reuse-crash");
        let options = small_segments();
        let path = t.0.clone();
        let data = DataDir::open(&t.0).unwrap();
        let stats = on_executor(move || async move {
            let mut wal = Wal::open(&path, 0, vec![], &[], options).await.unwrap();
            for slot in 0..200u64 {
                wal.append(&[accept(slot, 200)]).await.unwrap();
                if slot % 20 == 19 {
                    wal.append(&[Record::Trim { below: slot - 10 }]).await.unwrap();
                }
                wal.sync().await.unwrap();
            }
            let stats = wal.stats();
            crash(wal).await;
            stats
        });
        drop(data);
        assert!(stats.segments_reused >= 3, "{stats:?}");
        // The newest file is the prepared next segment: a reused one, full of an older one's records.
        let segs = segments(&t.0);
        let (prepared, current) = (&segs[segs.len() - 1], &segs[segs.len() - 2]);
        let bytes = Bytes::from(std::fs::read(prepared).unwrap());
        assert!(!bytes.iter().all(|&b| b == 0), "the prepared segment is not a reused one");
        assert!(scan(&bytes, seed_of(prepared)).unwrap().records.is_empty());
        // The crash also tore a write after the current segment's last synced record.
        let mut cur = std::fs::read(current).unwrap();
        let valid = scan(&Bytes::from(cur.clone()), seed_of(current)).unwrap().valid_len;
        cur[valid..valid + 100].fill(0xAB);
        std::fs::write(current, &cur).unwrap();
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert!(report.torn_bytes_dropped > 0, "{report}");
        for slot in 189..200 {
            assert!(recovered.records.contains(&accept(slot, 200)), "synced slot {slot} lost");
        }
        assert_slots_only_rise(&recovered.records);
    }

    #[test]
    fn a_start_after_a_crash_with_a_reused_segment_prepared_survives_a_second_crash_at_once() {
        let t = TempDir::new("reuse-crash-twice");
        let path = t.0.clone();
        on_executor(move || async move {
            let mut wal = Wal::open(&path, 0, vec![], &[], small_segments()).await.unwrap();
            for slot in 0..200u64 {
                wal.append(&[accept(slot, 200)]).await.unwrap();
                if slot % 20 == 19 {
                    wal.append(&[Record::Trim { below: slot - 10 }]).await.unwrap();
                }
                wal.sync().await.unwrap();
            }
            assert!(wal.stats().segments_reused >= 3);
            crash(wal).await;
        });
        // The next life begins its segments after the prepared (reused) one, writes, and is killed
        // before it has deleted that one.
        let data = DataDir::open(&t.0).unwrap();
        let (_, report) = data.recover().unwrap();
        let path = t.0.clone();
        on_executor(move || async move {
            let (next, old, sticky) = (report.next_sequence, report.old_segments, report.sticky);
            let mut wal = Wal::open(&path, next, old, &sticky, small_segments()).await.unwrap();
            wal.append(&[accept(200, 200)]).await.unwrap();
            wal.sync().await.unwrap();
            std::mem::forget(wal);
        });
        drop(data);
        let (recovered, _) = DataDir::open(&t.0).unwrap().recover().expect("the third start reads the log");
        for slot in 189..=200 {
            assert!(recovered.records.contains(&accept(slot, 200)), "synced slot {slot} lost");
        }
        assert_slots_only_rise(&recovered.records);
    }

    #[test]
    fn a_condemned_segment_whose_freeing_a_crash_cut_short_is_not_read_and_is_deleted_at_the_next_start() {
        let t = TempDir::new("freeing-crash");
        let promise = Record::Promise { ballot: B, nonce: None };
        let (path, p) = (t.0.clone(), promise.clone());
        on_executor(move || async move {
            let mut wal = Wal::open(&path, 0, vec![], &[], small_segments()).await.unwrap();
            wal.append(&[p]).await.unwrap();
            for slot in 0..60u64 {
                wal.append(&[accept(slot, 200)]).await.unwrap();
                wal.sync().await.unwrap();
            }
            wal.append(&[Record::Trim { below: 50 }]).await.unwrap();
            wal.sync().await.unwrap();
            // The crash comes before the condemned segments are freed: they stay.
            std::mem::forget(wal);
        });
        let segs = segments(&t.0);
        let oldest = segs[0].clone();
        let before = DataDir::open(&t.0).unwrap().recover().unwrap().0.records;
        assert!(before.contains(&accept(0, 200)), "segment 0 is still whole");
        // Its freeing began (renamed, then its first block freed) and was cut short.
        let punched = oldest.with_extension("log.free");
        std::fs::rename(&oldest, &punched).unwrap();
        let p = punched.clone();
        on_executor(move || async move {
            let file = OpenOptions::new().write(true).dma_open(&p).await.unwrap();
            file.deallocate(0, BLOCK as u64).await.unwrap();
            file.close().await.unwrap();
        });
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert_eq!(report.torn_bytes_dropped, 0, "{report}");
        assert!(!recovered.records.contains(&accept(0, 200)), "a segment being freed is not read");
        assert!(
            recovered.records.contains(&promise) && recovered.records.contains(&Record::Trim { below: 50 })
        );
        for slot in 50..60 {
            assert!(recovered.records.contains(&accept(slot, 200)), "live slot {slot} lost");
        }
        assert!(!punched.exists(), "recovery deletes a segment left half freed");
    }

    #[test]
    fn pipelined_syncs_each_cover_what_was_appended_before_them_and_deletion_waits_for_the_trim() {
        let t = TempDir::new("pipelined");
        let options = small_segments();
        let path = t.0.clone();
        let data = DataDir::open(&t.0).unwrap();
        let (_, report) = data.recover().unwrap();
        let seen = on_executor(move || async move {
            let read_segment = |seq: u64| {
                let bytes = std::fs::read(path.join(segment_name(seq))).unwrap();
                scan(&Bytes::from(bytes), seed_of_segment(seq)).unwrap().records
            };
            let mut wal = Wal::open(&path, report.next_sequence, vec![], &[], options).await.unwrap();
            // Fill past one segment so the first is closed; a trim then condemns it.
            for slot in 0..40 {
                wal.append(&[accept(slot, 200)]).await.unwrap();
            }
            let first = wal.closed_segments()[0].sequence;
            wal.append(&[Record::Trim { below: 100 }]).await.unwrap();
            // Sync A is in flight while records are appended and sync B started: each write lands
            // after the previous one completed, so B's rewrite of the shared partial block keeps A's
            // records and adds its own.
            let mut a = wal.start_sync().await.unwrap();
            wal.append(&[accept(100, 10)]).await.unwrap();
            let mut b = wal.start_sync().await.unwrap();
            wal.append(&[accept(101, 10)]).await.unwrap();
            a.wait().await.unwrap();
            b.wait().await.unwrap();
            let current = read_segment(wal.sequence());
            // The condemned segment goes (or becomes a spare, to be reused) only when the sync that
            // carried the trim is finished.
            let before_finish = path.join(segment_name(first)).exists() && !wal.spares.contains(&first);
            wal.finish_sync(a).await.unwrap();
            wal.deletions_done().await.unwrap();
            let after_finish = path.join(segment_name(first)).exists() && !wal.spares.contains(&first);
            wal.finish_sync(b).await.unwrap();
            wal.close().await.unwrap();
            (current, before_finish, after_finish)
        });
        let (current, before_finish, after_finish) = seen;
        drop(data);
        assert!(current.contains(&Record::Trim { below: 100 }), "{current:?}");
        assert!(current.contains(&accept(100, 10)), "B's record was written: {current:?}");
        assert!(!current.contains(&accept(101, 10)), "appended after B started, so not written yet");
        assert!(before_finish, "a segment was deleted before the trim's sync was finished");
        assert!(!after_finish, "the condemned segment outlived the sync that made its trim durable");
        let (recovered, _) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert!(recovered.records.ends_with(&[accept(100, 10), accept(101, 10)]), "{:?}", recovered.records);
    }

    #[test]
    fn a_record_bigger_than_the_buffer_spans_buffers_and_the_zero_padding_is_a_clean_end() {
        let t = TempDir::new("big");
        let options = WalOptions { buffer_bytes: 8 << 10, ..WalOptions::default() };
        let recs = vec![accept(0, 3), accept(1, 50_000), accept(2, 7)];
        run_once(&t.0, vec![recs[..2].to_vec(), recs[2..].to_vec()], options);
        let seg = segments(&t.0).pop().unwrap();
        assert_eq!(std::fs::metadata(&seg).unwrap().len() % BLOCK as u64, 0, "block padding expected");
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert_eq!(recovered.records, recs);
        assert_eq!(report.torn_bytes_dropped, 0);
    }

    #[test]
    fn the_first_segments_of_a_start_double_up_to_the_full_size_and_only_full_ones_are_reused() {
        let t = TempDir::new("ramp");
        let options = WalOptions {
            segment_bytes: 64 << 10,
            first_segment_bytes: 8 << 10,
            buffer_bytes: 4 << 10,
            write_behind: 2,
        };
        let mut groups = Vec::new();
        for slot in 0..2_000u64 {
            let mut g = vec![accept(slot, 200)];
            if slot % 100 == 99 {
                g.push(Record::Trim { below: slot - 50 });
            }
            groups.push(g);
        }
        let path = t.0.clone();
        let data = DataDir::open(&t.0).unwrap();
        let (sizes, reused) = on_executor(move || async move {
            let mut wal = Wal::open(&path, 0, vec![], &[], options).await.unwrap();
            let mut sizes = vec![(0, std::fs::metadata(path.join(segment_name(0))).unwrap().len())];
            for g in groups {
                wal.append(&g).await.unwrap();
                wal.sync().await.unwrap();
                let seq = wal.sequence();
                if sizes.last().is_none_or(|&(s, _)| s != seq) {
                    sizes.push((seq, std::fs::metadata(path.join(segment_name(seq))).unwrap().len()));
                }
            }
            let reused = wal.stats().segments_reused;
            wal.close().await.unwrap();
            (sizes, reused)
        });
        drop(data);
        let kib: Vec<u64> = sizes.iter().map(|&(_, len)| (len - 4096) >> 10).collect();
        assert_eq!(kib[..5], [8, 16, 32, 64, 64], "{sizes:?}");
        // Reused spares included: only full-size segments become spares.
        assert!(kib[4..].iter().all(|&k| k == 64), "{kib:?}");
        assert!(reused > 0, "no segment was reused");
    }

    #[test]
    fn a_second_data_dir_on_the_same_path_is_refused() {
        let t = TempDir::new("lock");
        let first = DataDir::open(&t.0).unwrap();
        let err = DataDir::open(&t.0).unwrap_err();
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("in use by another process") && msg.contains("LOCK"), "{msg}");
        drop(first);
        DataDir::open(&t.0).unwrap();
    }

    #[test]
    fn a_lock_released_a_moment_later_is_waited_for() {
        // A supervisor restarting a node the moment it was killed finds the lock still held.
        let t = TempDir::new("lock-late");
        let first = DataDir::open(&t.0).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(first);
        });
        DataDir::open(&t.0).expect("the lock was released within the grace");
        release.join().unwrap();
    }

    #[test]
    fn a_leftover_snapshot_or_segment_tmp_is_ignored_and_removed() {
        let t = TempDir::new("tmp");
        let tmp = t.0.join(format!("{}.tmp", snapshot_name(7)));
        std::fs::write(&tmp, b"half a snapshot").unwrap();
        // A segment whose zero fill a crash interrupted, over blocks that held an older segment's
        // intact records: never replayed.
        let segment_tmp = t.0.join(format!("{}.tmp", segment_name(3)));
        let mut stale = Vec::new();
        encode(&accept(5, 100), seed_of_segment(3), &mut stale);
        std::fs::write(&segment_tmp, &stale).unwrap();
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert!(recovered.is_empty() && report.snapshot_slot.is_none());
        assert_eq!((report.segments, report.next_sequence), (0, 0));
        assert!(!tmp.exists() && !segment_tmp.exists());
    }

    #[test]
    fn a_big_snapshot_round_trips_and_replaces_the_older_one() {
        let t = TempDir::new("snapshot");
        let state: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        let (dir, big) = (t.0.clone(), state.clone());
        let written = on_executor(move || async move {
            write_snapshot(&dir, 5, b"small").await.unwrap();
            write_snapshot(&dir, 9, &big).await.unwrap()
        });
        assert_eq!(written, 32 + 3_000_001);
        assert!(!t.0.join(snapshot_name(5)).exists(), "older snapshot kept");
        run_once(
            &t.0,
            vec![vec![accept(6, 10), Record::Trim { below: 9 }, accept(9, 10)]],
            WalOptions::default(),
        );
        let (recovered, report) = DataDir::open(&t.0).unwrap().recover().unwrap();
        let (slot, bytes) = recovered.snapshot.unwrap();
        assert_eq!((slot, report.snapshot_slot), (9, Some(9)));
        assert!(bytes[..] == state[..]);
        assert_eq!(recovered.records.last(), Some(&accept(9, 10)));
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_leaves_no_partial_file_and_can_be_tried_again() {
        let t = TempDir::new("snapshot-fails");
        // Its name is taken by a directory that is not empty: the rename fails after the whole
        // file was written, as late as a failure can come.
        let blocker = t.0.join(snapshot_name(9));
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let dir = t.0.clone();
        let state = vec![7u8; 100_000];
        let failed = on_executor(move || async move { write_snapshot(&dir, 9, &state).await.is_err() });
        assert!(failed);
        let left: Vec<_> = std::fs::read_dir(&t.0).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![blocker.file_name().unwrap().to_owned()], "no .tmp left behind");
        std::fs::remove_dir_all(&blocker).unwrap();
        let dir = t.0.clone();
        on_executor(move || async move { write_snapshot(&dir, 9, &[7u8; 100]).await.unwrap() });
        let (recovered, _) = DataDir::open(&t.0).unwrap().recover().unwrap();
        assert_eq!(recovered.snapshot.map(|(slot, state)| (slot, state.len())), Some((9, 100)));
    }

    #[test]
    fn a_damaged_snapshot_is_refused_as_a_whole_file_with_the_reason() {
        let t = TempDir::new("bad-snapshot");
        let dir = t.0.clone();
        on_executor(move || async move { write_snapshot(&dir, 9, b"some state").await.unwrap() });
        let path = t.0.join(snapshot_name(9));
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = DataDir::open(&t.0).unwrap().recover().unwrap_err();
        assert!(matches!(&err, StorageError::Corrupt { file, offset: None, .. } if *file == path), "{err}");
        let said = err.to_string();
        assert!(said.contains("corrupt: snapshot checksum mismatch; refusing to start"), "{said}");
        assert!(!said.contains("offset"), "{said}");
    }

    #[test]
    fn the_disk_measure_returns_sane_numbers() {
        let t = TempDir::new("measure");
        let p = t.0.clone();
        let r = on_executor(move || async move {
            crate::storage::measure::measure_disk_for(&p, std::time::Duration::from_millis(100))
                .await
                .unwrap()
        });
        assert!(r.fdatasync_4k_per_sec > 0.0 && r.sync_4k_mean_us > 0.0 && r.sync_write_1m_mb_per_sec > 0.0);
        assert_eq!(std::fs::read_dir(&t.0).unwrap().count(), 0, "scratch file left behind");
    }

    #[test]
    fn a_prepared_segment_fills_at_its_pace_until_it_is_needed_then_at_once() {
        let t = TempDir::new("pace");
        let dir = t.0.clone();
        let (paced, hurried) = on_executor(move || async move {
            // 4 MiB at 32 MiB/s: an eighth of a second at least.
            let hurry = Rc::new(std::cell::Cell::new(false));
            let began = std::time::Instant::now();
            let pace = Pace { bytes_per_sec: 32 << 20, hurry: hurry.clone() };
            create_segment(&dir, 1, 4 << 20, Some(pace)).await.unwrap();
            let paced = began.elapsed();
            // Needed while it fills: the rest goes unpaced (1 KiB/s would take months).
            let hurry = Rc::new(std::cell::Cell::new(false));
            let pace = Pace { bytes_per_sec: 1024, hurry: hurry.clone() };
            let second = dir.clone();
            let task =
                glommio::spawn_local(async move { create_segment(&second, 2, 4 << 20, Some(pace)).await })
                    .detach();
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            hurry.set(true);
            task.await.unwrap().unwrap();
            (paced, began.elapsed() - paced)
        });
        assert!(paced >= std::time::Duration::from_millis(120), "4 MiB at 32 MiB/s took only {paced:?}");
        assert!(hurried < std::time::Duration::from_secs(30), "hurried, it still took {hurried:?}");
        for sequence in [1, 2] {
            let bytes = std::fs::read(t.0.join(segment_name(sequence))).unwrap();
            assert!(bytes.len() == 4 << 20 && bytes.iter().all(|&b| b == 0), "segment {sequence}");
        }
    }
}
