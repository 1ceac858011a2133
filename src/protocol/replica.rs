//! Replica: executes chosen batches strictly in slot order on the state machine, exactly once per
//! (client id, sequence number), and sends each slot's replies to an unbatcher. Reports its executed
//! watermark to proposers (who trim and re-propose) and to other replicas (who teach a lagging one).
//!
//! Durable state: every executed slot's value is queued as a [`Record::Executed`], and every
//! `replica_snapshot_interval_slots` slots (the replicas spread over the interval, not all at the
//! same slot) the whole state (state machine and client table) as a snapshot
//! ([`Out::save_snapshot`]: written in the background, nothing waits for it). A
//! snapshot's image is built from the state frozen at its slot ([`StateMachine::freeze`]: a copy
//! of the maps that shares large values), `snapshot_slice_bytes` per turn, executing between turns, so a big state never stops the replica for long (an image
//! up to `snapshot_at_once_bytes` is written whole in the turn of its freeze: cheaper than the
//! copies the live store makes of partitions that a sliced image has not reached yet). The
//! watermark report waits for those records (`Out::send_after_persist`), so no one trims what this
//! replica could not rebuild after a crash: a restart loads the snapshot and replays the executed
//! values after it ([`Replica::recover`]), then catches up from its peers. Its own log is trimmed
//! only below a snapshot the driver reported durable ([`Role::snapshot_saved`]), and one snapshot
//! is saved at a time (a slow disk never holds two images in memory); a taught snapshot not yet
//! durable keeps the reports at the watermark before it (the disk could not give the new one
//! back).
//!
//! Teaching (Physalia's three modes, outside the consensus protocol):
//! - **Log segment:** a replica stuck behind a peer sends it `CatchUp`; the peer answers with the
//!   chosen values it still keeps (up to `teach_retention_slots` and `teach_retention_bytes` of
//!   them), when they weigh at most `teach_log_max_percent_of_state` percent of its state. A
//!   learner asks for at most what `teach_max_slots_per_sec` allows since its last ask (0: no cap).
//! - **Bulk snapshot:** otherwise (the slots are gone, or the state is smaller) the peer builds an
//!   image of its state at its watermark once (in slices, as above, executing meanwhile), offers
//!   it (`SnapshotOffer`: slot, length, digest), and the learner pulls it in `teach_chunk_bytes`
//!   chunks with at most `teach_window_chunks` asked for at a time (and no faster than
//!   `teach_max_bytes_per_sec`, if set), so the teacher sends nothing it was not asked for. The
//!   learner checks the digest, installs the state in one step (and on disk as a snapshot), and
//!   carries on by log segment from there. The teacher is whichever peer is ahead (they take
//!   turns, not only the furthest); a learner whose teacher goes quiet mid-transfer asks another,
//!   and resumes where it was if that one offers the same image (replicas at the same slot build
//!   the same bytes), else starts the new one.
//! - **Per-slot recovery:** a replica stuck on a slot that no peer replica is ahead of (a `Chosen`
//!   lost to every replica) reads the slot from its acceptor group (`ReadSlot`), and executes a
//!   value only once f+1 acceptors report it at one ballot: a value is chosen exactly when a quorum
//!   accepted it at one ballot. It never takes a value on one acceptor's word and never invents one.
//!
//! Configurations: a replica executes a change of acceptor configuration (`Value::Reconfig`) like
//! any slot, into its [`ConfigHistory`], which is part of its state (digest, snapshots) and goes
//! with every watermark report: the proposers route slots by what replicas executed. The history
//! forgets, after every slot, the configurations that own no slot at or above the watermark, so
//! replicas at one slot hold the same history.
//!
//! Must never: execute a slot before every lower slot; apply a command twice; let a malformed batch
//! stop execution (every replica reads the same bytes, so treating it as empty is deterministic);
//! report a watermark its disk could not give back; install a state whose digest is not the one
//! offered.

use super::config::{ClusterConfig, Tunables};
use super::configuration::{Change, ConfigHistory, Configuration};
use super::durable::{Record, Recovered, Storage};
use super::membership::{membership_period_us, report_left, NodeMembership, View};
use super::messages::{
    chunk_by_bytes, with_archived, AcceptedEntry, ClientReply, CommandBatch, Msg, Value, MAX_AGGREGATE_BYTES,
};
use super::state_machine::{FrozenState, SnapshotError, SnapshotReader, StateMachine};
use super::timers::Timers;
use super::{Event, NodeId, Out, Role, RoleKind, Slot, Stage, Time, SUSPECT_FOR_US};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Chosen slots a replica buffers above its watermark; beyond it, they are dropped and re-learned.
/// Not an overload valve: the leader's window bounds the slots chosen above the watermarks.
pub const MAX_CHOSEN_BUFFER: usize = 200_000;
const _: () = assert!(super::config::MAX_IN_FLIGHT_SLOTS <= MAX_CHOSEN_BUFFER);
/// Bytes of values a replica buffers above its watermark. A replica that keeps up holds about a
/// window's worth; one that is learning receives the live stream it cannot execute yet, and held
/// every slot of it (a learner 45,000 slots behind had 1.3 GB resident, a third of its CPU
/// clearing fresh pages). What it cannot hold it learns again by log segment.
pub const MAX_CHOSEN_BUFFER_BYTES: u64 = 64 << 20;
/// Room reserved per command in a batch's results buffer: a write's result fits.
const TYPICAL_RESULT_BYTES: usize = 16;
/// Slots one catch-up answer carries at most.
pub const MAX_CATCHUP_SLOTS: u64 = 1_000;
/// Report periods without progress, with a peer ahead, after which a replica says it is stalled.
pub const STALLED_AFTER_REPORTS: u32 = 100;
/// Report periods without a new chunk after which a learner asks another teacher.
const TEACHER_QUIET_REPORTS: u32 = 20;
/// A teacher drops the image it serialised once no learner fetched from it for this long.
const TEACH_IMAGE_IDLE_US: Time = 10_000_000;
/// Slots a replica reads from the acceptors at once when no peer can teach it.
const SLOTS_READ_AT_ONCE: u64 = 16;
/// A snapshot offered larger than this is refused (a learner must hold it in memory).
const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

/// A client's last executed command and the reply to it.
struct ClientEntry {
    seq: u64,
    reply: Bytes,
    /// The slot whose replies last carried its reply: the one it was executed in, then that of
    /// its latest retry (`None` if it came with a snapshot). A retry says that reply went astray
    /// (see `reply_routes`).
    slot: Option<Slot>,
}

/// Recent slots whose unbatcher a replica remembers, to suspect it when a client retries one of
/// their commands: a few client retry timeouts' worth of slots at any load this machine carries.
const REPLY_ROUTES_KEPT: usize = 1 << 14;

/// Whether an unbatcher takes the reply batches sent to it. One that says nothing for
/// `client_retry_timeout_us` after a batch went to it is stalled (paused, cut off, dead): positive
/// evidence, unlike a client's retry, which a reply merely slow on a busy unbatcher also causes
/// (and then every unbatcher ends up suspected). A stalled one is tried again after
/// `SUSPECT_FOR_US`, twice as long after each stall in a row, up to 32 times as long.
#[derive(Default)]
struct Uptake {
    /// The first batch sent to it since it last said `RepliesTaken`.
    unanswered_since: Option<Time>,
    /// Stalled until then (and tried again after).
    stalled_until: Option<Time>,
    /// Stalls in a row, without a `RepliesTaken` between.
    stalls: u32,
}

impl Uptake {
    /// Finds the unbatcher stalled if a batch went unanswered for `stall_after`, or tries it
    /// again once its stall has lasted its time.
    fn check(&mut self, now: Time, stall_after: Time) {
        match (self.stalled_until, self.unanswered_since) {
            (Some(until), _) if now >= until => {
                (self.stalled_until, self.unanswered_since) = (None, None);
            }
            (None, Some(since)) if now >= since.saturating_add(stall_after) => {
                self.stalled_until = Some(now + (SUSPECT_FOR_US << self.stalls.min(5)));
                self.stalls += 1;
            }
            _ => {}
        }
    }
}

#[repr(usize)]
enum Timer {
    Report,
    /// Write the next slice of the image being built.
    Image,
}

/// This replica's state at `slot`, frozen and written out as a durable image a slice per turn
/// (`snapshot_slice_bytes`), so that execution goes on meanwhile.
struct ImageBuild {
    slot: Slot,
    frozen: Box<dyn FrozenState>,
    /// The image so far: the state machine's length, then its image.
    bytes: Vec<u8>,
    /// The configuration history and client table at `slot`, appended once the state machine's
    /// image is written.
    client_table: Vec<u8>,
    /// The digest of `bytes` so far, a slice at a time (one pass over a GB is a long turn too).
    digest: xxhash_rust::xxh3::Xxh3Default,
    /// Kept on disk as this replica's snapshot once built.
    persist: bool,
    /// Peers to offer it to once built.
    learners: BTreeSet<NodeId>,
}

/// Teacher side: this replica's state at `slot`, serialised once for the learners that fetch it.
struct TeachImage {
    slot: Slot,
    bytes: Bytes,
    digest: u64,
    last_fetch: Time,
}

impl TeachImage {
    fn offer(&self) -> Msg {
        Msg::SnapshotOffer { slot: self.slot, len: self.bytes.len() as u64, digest: self.digest }
    }
}

/// Learner side: a snapshot being fetched.
struct Learning {
    teacher: NodeId,
    slot: Slot,
    len: u64,
    digest: u64,
    /// The image so far, contiguous from offset 0.
    bytes: Vec<u8>,
    /// Chunks that arrived ahead of `bytes`, by offset (at most a window's worth).
    ahead: BTreeMap<u64, Bytes>,
    /// A fetch was sent for every chunk that starts below this.
    asked_to: u64,
    /// Report periods in a row with no new byte.
    quiet_reports: u32,
    /// When the transfer began (paces `teach_max_bytes_per_sec`).
    started_at: Time,
}

/// Removed replicas still running that a replica listens to, at most.
const MAX_REMOVED_PEERS: usize = 64;

/// One replica.
pub struct Replica {
    id: NodeId,
    config: ClusterConfig,
    /// The newest configuration known: its history's, or a newer one that a peer's report or a
    /// view carried (a replica that a change adds learns its peers from it before it is taught).
    newest: Configuration,
    /// The proposers of the configuration before `newest`: a leader that the newest removed
    /// still hears reports, so that it learns when to hand over.
    previous_proposers: Vec<NodeId>,
    /// Replicas that a change removed and that still run: they may still teach (the state they
    /// hold is a prefix of everyone's), until they leave.
    removed_peers: BTreeSet<NodeId>,
    /// A replica started with `--join`: it announces itself until a view lists it.
    membership: Option<NodeMembership>,
    /// Told to leave after a change removed it: it answers nothing any more.
    left: bool,
    /// The acceptor configurations in force from the watermark on, as the log chose them.
    history: ConfigHistory,
    report_interval_us: Time,
    state_machine: Box<dyn StateMachine>,
    /// Every slot below this is executed.
    executed: Slot,
    /// Chosen values above the watermark, waiting for the slots below them, each with when it
    /// arrived here: its `Stage::Ordering` time runs from it to its execution.
    chosen: ChosenBuffer,
    /// Executed values, kept until every replica has executed them, to teach a lagging peer.
    log: BTreeMap<Slot, Value>,
    /// Per client: its last executed sequence number and the reply to it. A hash map: it is probed
    /// once per command; the checkers' digest and snapshot sort it.
    client_table: FxHashMap<u64, ClientEntry>,
    /// What other replicas last said they executed.
    peer_watermarks: BTreeMap<NodeId, Slot>,
    /// When each peer replica last reported: a silent one is taken for down, and its slots'
    /// replies are sent by the others.
    peer_heard_at: BTreeMap<NodeId, Time>,
    /// The time of the call being handled.
    now: Time,
    /// The stateless nodes, as views from the proposers say.
    view: View,
    /// The unbatchers in service in `view`, by id: replies go to them.
    unbatchers: Vec<NodeId>,
    /// The unbatcher each recent slot's replies went to (or would have, from a replica that did
    /// not answer it), oldest first, at most [`REPLY_ROUTES_KEPT`].
    reply_routes: VecDeque<(Slot, NodeId)>,
    /// Unbatchers passed by until the time given: a client retried a command whose reply went
    /// through one, so it may be gone (paused, cut off). See `SUSPECT_FOR_US`.
    suspected_unbatchers: BTreeMap<NodeId, Time>,
    /// Whether each unbatcher takes the batches sent to it (`RepliesTaken`): one that stops is
    /// passed by before any that is merely suspected.
    unbatcher_uptake: BTreeMap<NodeId, Uptake>,
    executed_at_last_report: Slot,
    timers: Timers<2>,
    /// The image being built, if any (one at a time).
    building: Option<ImageBuild>,
    /// Durable (records queued, the watermark report held for them) or in memory (benchmarks).
    storage: Storage,
    /// A snapshot is taken every this many slots (durable only).
    snapshot_interval: Slot,
    /// The slot of the newest snapshot queued (the next is due an interval after it).
    snapshot_slot: Slot,
    /// The slot of the newest snapshot known durable: a restart replays from here, so the log is
    /// trimmed below it and never below one still being written.
    saved_snapshot_slot: Slot,
    /// A taught snapshot installed and not yet durable: the slot it was taken at, and the
    /// watermark this replica's disk can give back meanwhile (the one before the install), which is
    /// all its reports may say.
    unsaved_install: Option<(Slot, Slot)>,
    /// Records of slots below this were declared unneeded (`Record::Trim`).
    persisted_trim: Slot,
    /// Report periods in a row without progress while a peer was ahead.
    stuck_reports: u32,
    /// When this replica last asked a peer for a log segment (paces its asks: `segment_pace`).
    asked_segment_at: Time,
    /// The live rate's last measuring point: when, and the furthest watermark of a peer then.
    live_mark: Option<(Time, Slot)>,
    /// Slots per second the furthest peer executed over the last second measured.
    live_slots_per_sec: u64,
    /// Teaching settings (see the module doc).
    tunables: Tunables,
    /// Bytes of the values in `log`.
    log_bytes: u64,
    /// The image this replica teaches from, while learners fetch it.
    teaching: Option<TeachImage>,
    /// The snapshot this replica is learning, if any.
    learning: Option<Learning>,
    /// Per-slot recovery: the acceptors' answers so far, by slot.
    slot_reads: BTreeMap<Slot, BTreeMap<NodeId, Option<(super::Ballot, Value)>>>,
    /// Peers asked in turn to teach (any peer ahead, not only the furthest).
    next_teacher: usize,
}

impl Replica {
    /// A replica with an empty log: one of `config.replicas`, or one that joins (see
    /// [`Replica::joining`]).
    pub fn new(
        id: NodeId,
        config: ClusterConfig,
        tunables: &Tunables,
        state_machine: Box<dyn StateMachine>,
        now: Time,
    ) -> Self {
        let mut timers = Timers::default();
        timers.set(Timer::Report as usize, now + tunables.replica_report_interval_us);
        let view = View::from_config(&config);
        let unbatchers = config.unbatchers.clone();
        Replica {
            id,
            newest: Configuration::from_cluster(&config),
            previous_proposers: Vec::new(),
            removed_peers: BTreeSet::new(),
            membership: None,
            left: false,
            history: ConfigHistory::new(&config, tunables.max_in_flight_slots as u64),
            config,
            report_interval_us: tunables.replica_report_interval_us,
            state_machine,
            executed: 0,
            chosen: ChosenBuffer::default(),
            log: BTreeMap::new(),
            client_table: FxHashMap::default(),
            peer_watermarks: BTreeMap::new(),
            peer_heard_at: BTreeMap::new(),
            now,
            view,
            unbatchers,
            reply_routes: VecDeque::new(),
            suspected_unbatchers: BTreeMap::new(),
            unbatcher_uptake: BTreeMap::new(),
            executed_at_last_report: 0,
            timers,
            storage: Storage::Durable,
            snapshot_interval: tunables.replica_snapshot_interval_slots,
            snapshot_slot: 0,
            saved_snapshot_slot: 0,
            unsaved_install: None,
            persisted_trim: 0,
            stuck_reports: 0,
            asked_segment_at: 0,
            live_mark: None,
            live_slots_per_sec: 0,
            tunables: tunables.clone(),
            log_bytes: 0,
            teaching: None,
            building: None,
            learning: None,
            slot_reads: BTreeMap::new(),
            next_teacher: 0,
        }
    }

    /// Makes this a replica that no configuration names yet: from `now` on it announces to the
    /// proposers that it listens at `addr`; once a change names it, its peers report to it and it
    /// is taught (by snapshot: its log is empty).
    pub fn joining(mut self, addr: String, now: Time) -> Self {
        let period = membership_period_us(&self.tunables);
        let mut membership = NodeMembership::new(self.id, RoleKind::Replica, &self.config, period);
        membership.join(addr, now);
        self.membership = Some(membership);
        self
    }

    /// Takes `config` as the newest known if it is newer.
    fn learn_newest(&mut self, config: &Configuration) {
        if config.epoch > self.newest.epoch {
            let previous = std::mem::replace(&mut self.newest, config.clone());
            self.previous_proposers = previous.proposers;
            self.view.learn_configuration(config);
        }
    }

    /// The other replicas now: they report to each other and teach each other.
    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.newest.replicas.iter().copied().filter(move |&r| r != self.id)
    }

    /// Whether `from` is a replica of a configuration this replica keeps or knows to be newest,
    /// or one that a change removed and that still runs.
    fn is_replica(&self, from: NodeId) -> bool {
        from != self.id
            && (self.history.names_replica(from)
                || self.newest.replicas.contains(&from)
                || self.removed_peers.contains(&from))
    }

    /// The replica its disk describes: the snapshot's state, then every executed value after it
    /// replayed in order (replies are not sent again: a client still waiting retries and is
    /// answered from the client table). Values below the snapshot are kept to teach lagging peers.
    pub fn recover(
        id: NodeId,
        config: ClusterConfig,
        tunables: &Tunables,
        state_machine: Box<dyn StateMachine>,
        storage: Storage,
        recovered: Recovered,
        now: Time,
    ) -> Result<Self, SnapshotError> {
        let mut r = Replica::new(id, config, tunables, state_machine, now);
        if let Some((slot, bytes)) = &recovered.snapshot {
            r.restore(bytes)?;
            r.executed = *slot;
            r.snapshot_slot = *slot;
            r.saved_snapshot_slot = *slot;
            r.executed_at_last_report = *slot;
        }
        // Replayed in memory: these records are on disk already, and their replies were sent.
        r.storage = Storage::InMemory;
        let mut discard = Out::new(false);
        for record in recovered.records {
            match record {
                Record::Executed { slot, value } if slot < r.executed => r.keep_to_teach(slot, value),
                Record::Executed { slot, value } => r.on_chosen(slot, value, &mut discard),
                Record::Trim { below } => {
                    r.persisted_trim = r.persisted_trim.max(below);
                    r.forget_log_below(below);
                }
                other => panic!(
                    "replica {id}: an acceptor's record in its log ({other:?}): another node's data dir?"
                ),
            }
            discard.msgs.clear();
            discard.events.clear();
        }
        r.storage = storage;
        r.check_invariants();
        Ok(r)
    }

    /// The durable image of the whole state: the state machine's snapshot, length first, then the
    /// client table (as [`Replica::snapshot`] lays it out). What [`Out::save_snapshot`] keeps and
    /// [`Replica::recover`] restores; public so that `bench recovery` can write a real snapshot file.
    pub fn durable_snapshot(&self) -> Vec<u8> {
        let tail = self.image_tail();
        let mut bytes = image_buffer(self.state_machine.snapshot_len(), tail.len());
        self.state_machine.snapshot_into(&mut bytes);
        bytes.extend_from_slice(&tail);
        bytes
    }

    /// What an image holds after the state machine's: the configuration history (length first),
    /// then the client table.
    fn image_tail(&self) -> Vec<u8> {
        let clients = self.clients_in_order();
        let history = self.history.to_bytes();
        let mut tail = Vec::with_capacity(8 + history.len() + client_table_len(&clients));
        tail.extend_from_slice(&(history.len() as u64).to_le_bytes());
        tail.extend_from_slice(&history);
        encode_client_table(&clients, &mut tail);
        tail
    }

    /// The state machine frozen as a snapshot builds it (`bench recovery` times its slices).
    pub fn freeze_state_machine(&mut self) -> Box<dyn FrozenState> {
        self.state_machine.freeze()
    }

    /// Replaces the state machine and client table with those of a durable snapshot. The client
    /// table is parsed first, so damaged bytes leave it as it was.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut reader = SnapshotReader::new(bytes);
        let state_machine = reader.field()?;
        let history = ConfigHistory::from_bytes(reader.field()?)
            .ok_or(SnapshotError("the configuration history does not read back"))?;
        let mut table = FxHashMap::default();
        while !reader.rest().is_empty() {
            let client = reader.u64()?;
            let seq = reader.u64()?;
            let reply = Bytes::copy_from_slice(reader.field()?);
            if table.insert(client, ClientEntry { seq, reply, slot: None }).is_some() {
                return Err(SnapshotError("a client twice in the client table"));
            }
        }
        self.state_machine.restore(state_machine)?;
        self.client_table = table;
        let newest = history.latest().config.clone();
        self.history = history;
        self.learn_newest(&newest);
        Ok(())
    }

    /// Queues a snapshot when one is due and the last one is durable (its trim follows once this
    /// one is: [`Role::snapshot_saved`]).
    fn maybe_snapshot(&mut self, out: &mut Out) {
        if self.storage != Storage::Durable
            || self.executed < self.next_snapshot_slot()
            || self.snapshot_slot > self.saved_snapshot_slot
        {
            return;
        }
        let starts = self.building.is_none();
        self.build_image(true, None);
        let at_once = self.tunables.snapshot_at_once_bytes as usize;
        if starts && self.building.as_ref().is_some_and(|b| b.frozen.image_len() <= at_once) {
            // Whole, before any command runs: the live store copies no partition for it (sliced,
            // the copies held the executor for about 30 ms at 100k keys).
            self.write_image(self.now, out, usize::MAX);
        }
    }

    /// The watermark at which the next snapshot is due: the first slot after the newest snapshot
    /// that is `k * interval + phase`, where the phase spreads the replicas of the newest
    /// configuration over the interval by their rank. Building an image holds a replica's core for
    /// tens of milliseconds (a 6 MB state: 10-35 ms); replicas that took theirs at the same slot
    /// held every reply at once (a 100 ms window at 0.4 of the load in `local`).
    fn next_snapshot_slot(&self) -> Slot {
        let interval = self.snapshot_interval.max(1);
        let replicas = &self.newest.replicas;
        let rank = replicas.iter().position(|&r| r == self.id).unwrap_or(0) as u64;
        let phase = rank.saturating_mul(interval) / replicas.len().max(1) as u64;
        match self.snapshot_slot.checked_sub(phase) {
            None => phase,
            Some(since) => {
                (since / interval).saturating_add(1).saturating_mul(interval).saturating_add(phase)
            }
        }
    }

    /// Freezes the state at the watermark and starts writing its image (or, when one is being
    /// built, adds to what happens once it is done: kept on disk, offered to `learner`).
    fn build_image(&mut self, persist: bool, learner: Option<(NodeId, Slot)>) {
        if let Some(b) = self.building.as_mut() {
            b.persist |= persist;
            // A learner already at or past the image's slot asks again after it.
            if let Some((peer, _)) = learner.filter(|&(_, from_slot)| b.slot > from_slot) {
                b.learners.insert(peer);
            }
            return;
        }
        let frozen = self.state_machine.freeze();
        let client_table = self.image_tail();
        let bytes = image_buffer(frozen.image_len(), client_table.len());
        let mut digest = xxhash_rust::xxh3::Xxh3Default::new();
        digest.update(&bytes);
        self.building = Some(ImageBuild {
            slot: self.executed,
            frozen,
            bytes,
            client_table,
            digest,
            persist,
            learners: learner.map(|(peer, _)| peer).into_iter().collect(),
        });
        self.timers.set(Timer::Image as usize, self.next_slice_at(self.now));
    }

    /// The next turn, not this one (messages are handled between slices), after any pause.
    fn next_slice_at(&self, now: Time) -> Time {
        now.saturating_add(1).saturating_add(self.tunables.snapshot_slice_pause_us)
    }

    /// The image timer: the next slice of the image being built.
    fn on_image_timer(&mut self, now: Time, out: &mut Out) {
        self.write_image(now, out, self.tunables.snapshot_slice_bytes as usize);
    }

    /// Writes up to `budget` more bytes of the image; once it is whole, keeps it on disk and
    /// offers it.
    fn write_image(&mut self, now: Time, out: &mut Out, budget: usize) {
        let Some(b) = self.building.as_mut() else { return };
        let written = b.bytes.len();
        let done = b.frozen.write_next(&mut b.bytes, budget);
        b.digest.update(&b.bytes[written..]);
        if !done {
            self.timers.set(Timer::Image as usize, self.next_slice_at(now));
            return;
        }
        let mut b = self.building.take().expect("checked above");
        b.bytes.extend_from_slice(&b.client_table);
        b.digest.update(&b.client_table);
        let (slot, bytes, digest) = (b.slot, Bytes::from(b.bytes), b.digest.digest());
        if b.persist && self.storage == Storage::Durable && slot > self.snapshot_slot {
            out.save_snapshot(slot, bytes.clone());
            self.snapshot_slot = slot;
        }
        if !b.learners.is_empty() {
            debug_assert_eq!(digest, super::digest(&bytes), "the digest of the image, a slice at a time");
            let image = TeachImage { slot, digest, bytes, last_fetch: now };
            for learner in b.learners {
                out.send(learner, image.offer());
            }
            self.teaching = Some(image);
        }
    }

    /// Records below both the durable snapshot and the oldest slot kept to teach peers are unneeded.
    fn persist_trim(&mut self, out: &mut Out) {
        let teach_from = self.log.keys().next().copied().unwrap_or(self.executed);
        let below = self.saved_snapshot_slot.min(teach_from);
        if self.storage == Storage::Durable && below > self.persisted_trim {
            self.persisted_trim = below;
            out.persist(Record::Trim { below });
        }
    }

    /// Every slot below this is executed.
    pub fn executed_watermark(&self) -> Slot {
        self.executed
    }

    /// Keeps an executed value to teach lagging peers, within the retention budget: beyond it the
    /// oldest go (a peer that needs them learns by snapshot). A lone replica keeps nothing.
    fn keep_to_teach(&mut self, slot: Slot, value: Value) {
        if self.peers().next().is_none() {
            return;
        }
        self.log_bytes += value.byte_len() as u64;
        self.log.insert(slot, value);
        while self.log.len() as u64 > self.tunables.teach_retention_slots
            || self.log_bytes > self.tunables.teach_retention_bytes
        {
            let Some((_, oldest)) = self.log.pop_first() else { break };
            self.log_bytes -= oldest.byte_len() as u64;
        }
    }

    fn forget_log_below(&mut self, below: Slot) {
        let kept = self.log.split_off(&below);
        let forgotten = std::mem::replace(&mut self.log, kept);
        self.log_bytes -= forgotten.values().map(|v| v.byte_len() as u64).sum::<u64>();
    }

    /// About how many bytes a snapshot of this replica's state weighs.
    fn approx_state_bytes(&self) -> u64 {
        self.state_machine.approx_bytes() + 24 * self.client_table.len() as u64
    }

    /// Digest of the state machine and the client table. Walks the client table: for checkers.
    pub fn state_digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(16 + 24 * self.client_table.len());
        bytes.extend_from_slice(&self.state_machine.digest().to_le_bytes());
        bytes.extend_from_slice(&self.history.digest().to_le_bytes());
        for (client, entry) in self.clients_in_order() {
            bytes.extend_from_slice(&client.to_le_bytes());
            bytes.extend_from_slice(&entry.seq.to_le_bytes());
            bytes.extend_from_slice(&super::digest(&entry.reply).to_le_bytes());
        }
        super::digest(&bytes)
    }

    fn clients_in_order(&self) -> Vec<(u64, &ClientEntry)> {
        let mut clients: Vec<_> = self.client_table.iter().map(|(&id, entry)| (id, entry)).collect();
        clients.sort_unstable_by_key(|&(id, _)| id);
        clients
    }

    /// Canonical bytes of the whole replicated state: state machine, then configuration history
    /// and client table in id order.
    pub fn snapshot(&self) -> Vec<u8> {
        let tail = self.image_tail();
        let mut bytes = Vec::with_capacity(self.state_machine.snapshot_len() + tail.len());
        self.state_machine.snapshot_into(&mut bytes);
        bytes.extend_from_slice(&tail);
        bytes
    }

    /// The acceptor configurations in force from the watermark on.
    pub fn configs(&self) -> &ConfigHistory {
        &self.history
    }

    fn on_chosen(&mut self, slot: Slot, value: Value, out: &mut Out) {
        if slot < self.executed {
            return; // Already executed: a duplicate or a resend.
        }
        if let Some(existing) = self.chosen.get(slot) {
            if *existing != value {
                out.dropped("replica: a different value announced for a chosen slot");
            }
            return;
        }
        match self.chosen.insert(slot, value, self.now) {
            Buffered::Kept { evicted: 0 } => {}
            Buffered::Kept { evicted } => (0..evicted)
                .for_each(|_| out.dropped("replica: chosen buffer full, the highest slot given up")),
            Buffered::Dropped => {
                out.dropped("replica: chosen buffer full");
                return;
            }
        }
        self.execute_ready(out);
    }

    fn execute_ready(&mut self, out: &mut Out) {
        while let Some((value, arrived)) = self.chosen.remove(self.executed) {
            let slot = self.executed;
            let replies = match &value {
                Value::Noop => Vec::new(),
                Value::Batch(bytes) => {
                    let (replies, retried) = self.execute_batch(slot, bytes, out);
                    self.suspect_routes_of(&retried);
                    replies
                }
                Value::Reconfig(bytes) => {
                    self.execute_reconfig(slot, bytes, out);
                    Vec::new()
                }
            };
            if !replies.is_empty() {
                // Routed by a replica that does not answer the slot too: whichever answers a retry
                // of one of its commands knows which unbatcher to suspect.
                let unbatcher = self.route_replies(slot);
                if self.is_designated_replier(slot) {
                    let uptake = self.unbatcher_uptake.entry(unbatcher).or_default();
                    uptake.unanswered_since.get_or_insert(self.now);
                    for replies in chunk_by_bytes(replies, |r| r.result.len() + 32, MAX_AGGREGATE_BYTES) {
                        out.send(unbatcher, Msg::ReplyBatch { replies });
                    }
                }
            }
            if self.storage == Storage::Durable {
                out.persist(Record::Executed { slot, value: value.clone() });
            }
            self.executed += 1;
            self.history.forget_below(self.executed);
            // Digests only for checkers: a state digest walks the whole state.
            let value_digest = out.digest(|| value.digest());
            let state_digest = out.digest(|| self.state_digest());
            out.event(|| Event::Executed { slot, value_digest, state_digest });
            // Slots a snapshot install skipped are never here: only values that arrived are timed.
            let micros = self.now.saturating_sub(arrived);
            out.event(|| Event::Stage { stage: Stage::Ordering, micros });
            self.keep_to_teach(slot, value);
        }
        self.maybe_snapshot(out);
    }

    /// One replica per slot answers the clients, so reply traffic does not grow with f...
    /// ...unless that replica is down (silent for `replica_down_after_us`) or far behind (more than
    /// the leader's window below this slot: it is learning): then every other replica answers its
    /// slots too, so a dead or lagging replica does not leave half the clients to time out. A client
    /// takes the first reply to a request and ignores the rest.
    ///
    /// A replica catching up answers no slot that a peer executed more than a window ago: that
    /// peer answered it if this one looked down or behind, and otherwise its clients have long
    /// since retried (`client_retry_timeout_us`; a retry is answered from the client table).
    /// Sending those replies anyway doubled the unbatchers' and clients' work while it caught up.
    fn is_designated_replier(&self, slot: Slot) -> bool {
        let window = self.tunables.max_in_flight_slots as u64;
        if self.peer_watermarks.values().any(|&w| w > slot.saturating_add(window)) {
            return false;
        }
        // The replicas of the configuration in force at the slot take turns.
        let replicas = &self.history.config_at(slot).replicas;
        let peer = replicas[(slot % replicas.len() as u64) as usize];
        if peer == self.id {
            return true;
        }
        let heard_at = self.peer_heard_at.get(&peer).copied().unwrap_or(0);
        let behind = self.peer_watermarks.get(&peer).copied().unwrap_or(0) + window < slot;
        behind || self.now > heard_at + self.tunables.replica_down_after_us
    }

    /// A change of configuration: the next one if it is the next epoch and keeps the rules,
    /// otherwise skipped (every replica decides alike, from the same bytes and history).
    fn execute_reconfig(&mut self, slot: Slot, bytes: &Bytes, out: &mut Out) {
        let Some(change) = Change::decode(bytes) else {
            out.dropped("replica: a change of configuration that does not decode, skipped");
            return;
        };
        out.event(|| Event::ReconfigExecuted { slot, change: change.clone() });
        if !self.history.on_chosen(slot, &change) {
            out.dropped("replica: a change of configuration out of turn or against the rules, skipped");
            return;
        }
        self.learn_newest(&change.config);
        // Report at once rather than at the next period: the leader proposes nothing at or beyond
        // the change's first slot until a replica reports it executed.
        self.timers.set(Timer::Report as usize, self.now);
    }

    /// The unbatcher for `slot`'s replies: the slots take turns over the best unbatchers, a turn
    /// per slot of each replica's (consecutive slots are answered by different replicas). Best are
    /// those neither stalled nor suspected; failing that, those not stalled; failing that, all.
    /// Remembered for a while, see `reply_routes`.
    fn route_replies(&mut self, slot: Slot) -> NodeId {
        let now = self.now;
        self.suspected_unbatchers.retain(|_, &mut until| now < until);
        let stall_after = self.tunables.client_retry_timeout_us;
        for uptake in self.unbatcher_uptake.values_mut() {
            uptake.check(now, stall_after);
        }
        let turn = (slot / self.history.config_at(slot).replicas.len() as u64) as usize;
        let (suspected, uptake) = (&self.suspected_unbatchers, &self.unbatcher_uptake);
        let rank = |u: &NodeId| {
            let stalled = uptake.get(u).is_some_and(|up| up.stalled_until.is_some());
            2 * stalled as u8 + suspected.contains_key(u) as u8
        };
        let best = self.unbatchers.iter().map(rank).min().expect("a replica always has an unbatcher");
        let count = self.unbatchers.iter().filter(|u| rank(u) == best).count();
        let unbatcher =
            *self.unbatchers.iter().filter(|u| rank(u) == best).nth(turn % count).expect("counted");
        if self.reply_routes.len() == REPLY_ROUTES_KEPT {
            self.reply_routes.pop_front();
        }
        self.reply_routes.push_back((slot, unbatcher));
        unbatcher
    }

    /// An unbatcher says its batches arrive.
    fn on_replies_taken(&mut self, from: NodeId) {
        if let Some(uptake) = self.unbatcher_uptake.get_mut(&from) {
            *uptake = Uptake::default();
        }
    }

    /// Clients retried commands executed in `slots`: the replies to them went astray, so the
    /// unbatchers they went through are passed by for a while.
    fn suspect_routes_of(&mut self, slots: &[Slot]) {
        for slot in slots {
            let at = self.reply_routes.partition_point(|&(s, _)| s < *slot);
            if let Some(&(s, unbatcher)) = self.reply_routes.get(at) {
                if s == *slot {
                    self.suspected_unbatchers.insert(unbatcher, self.now + SUSPECT_FOR_US);
                }
            }
        }
    }

    /// Executes a batch: the replies, and the slots of the commands in it that were retries of
    /// ones already executed (their first replies went astray).
    fn execute_batch(&mut self, slot: Slot, bytes: &Bytes, out: &mut Out) -> (Vec<ClientReply>, Vec<Slot>) {
        let state_machine = &mut self.state_machine;
        let table = &mut self.client_table;
        // The batch's results are written into one buffer, and each split off as its own `Bytes`:
        // the reply and the client table share it, with no allocation per command.
        let mut results = BytesMut::new();
        let mut retried = Vec::new();
        let executed = with_archived::<CommandBatch, _>(bytes, |batch| {
            let mut replies = Vec::with_capacity(batch.commands.len());
            results.reserve(batch.commands.len() * TYPICAL_RESULT_BYTES);
            for command in batch.commands.iter() {
                let (client_id, seq) = (command.client_id.to_native(), command.seq.to_native());
                // One probe of the table per command: the entry is read and, if need be, replaced.
                let result = match table.entry(client_id) {
                    // A retry of the last command: answer from the table, do not apply again.
                    Entry::Occupied(mut last) if last.get().seq == seq => {
                        // Its last reply went astray; this one goes with `slot`'s.
                        retried.extend(last.get_mut().slot.replace(slot));
                        last.get().reply.clone()
                    }
                    // Older than the last: the client has moved on and waits for nothing (or a
                    // restarted client reuses an id: counted, so that it shows).
                    Entry::Occupied(last) if last.get().seq > seq => {
                        out.dropped("replica: a command older than its client's last");
                        continue;
                    }
                    entry => {
                        state_machine.apply_into(command.op.as_slice(), &mut results);
                        let reply = results.split().freeze();
                        entry.insert_entry(ClientEntry { seq, reply: reply.clone(), slot: Some(slot) });
                        out.event(|| Event::Applied { client_id, seq, slot });
                        reply
                    }
                };
                replies.push(ClientReply { client_id, seq, result });
            }
            replies
        });
        let replies = executed.unwrap_or_else(|_| {
            out.dropped("replica: malformed batch executed as empty");
            Vec::new()
        });
        (replies, retried)
    }

    fn on_executed(&mut self, from: NodeId, watermark: Slot, configs: &ConfigHistory, out: &mut Out) {
        // A peer that a change named, which this replica has not executed yet (or, new, has not
        // been taught): its report says so.
        if configs.latest().config.replicas.contains(&from) {
            self.learn_newest(&configs.latest().config);
        } else if configs.removed().contains(&(from, RoleKind::Replica))
            && self.removed_peers.len() < MAX_REMOVED_PEERS
        {
            // Removed, but it may hold what no other replica does (the others' disks wiped, say).
            self.removed_peers.insert(from);
        }
        if !self.is_replica(from) {
            return;
        }
        self.peer_heard_at.insert(from, self.now);
        // The latest report, not the highest: a peer restarted on a wiped disk is back at 0, and
        // must count as behind (so this replica answers its slots' clients while it learns). A
        // report overtaken by an older one only makes it look behind for one period.
        self.peer_watermarks.insert(from, watermark);
        // Keep the log only for slots some replica may still ask for.
        let peers: Vec<NodeId> = self.peers().collect();
        if peers.iter().all(|p| self.peer_watermarks.contains_key(p)) {
            let lowest = peers.iter().map(|p| self.peer_watermarks[p]).min().unwrap_or(0).min(self.executed);
            self.forget_log_below(lowest);
            self.persist_trim(out);
        }
    }

    /// A peer is behind: teach it by log segment when that is cheap, else offer a snapshot.
    fn on_catch_up(&mut self, now: Time, from: NodeId, from_slot: Slot, max_slots: u64, out: &mut Out) {
        if from_slot >= self.executed {
            return; // not behind this replica
        }
        let keeps = self.log.keys().next().is_some_and(|&first| first <= from_slot);
        if keeps && self.segment_is_cheaper(from_slot) {
            let end = from_slot.saturating_add(max_slots.min(MAX_CATCHUP_SLOTS));
            for (&slot, value) in self.log.range(from_slot..end) {
                out.send(from, Msg::Chosen { slot, value: value.clone() });
            }
            return;
        }
        match self.teaching.as_mut() {
            // Built once, then served in slices (`Bytes::slice` copies nothing).
            Some(image) if image.slot > from_slot => {
                image.last_fetch = now;
                out.send(from, image.offer());
            }
            // Offered once built, without stopping execution meanwhile.
            _ => self.build_image(false, Some((from, from_slot))),
        }
    }

    /// Whether the values from `from_slot` to the watermark weigh at most the configured share of
    /// the state (stops counting as soon as they do not).
    fn segment_is_cheaper(&self, from_slot: Slot) -> bool {
        let budget = self.approx_state_bytes() * self.tunables.teach_log_max_percent_of_state / 100;
        let mut bytes = 0u64;
        for value in self.log.range(from_slot..).map(|(_, v)| v) {
            bytes += value.byte_len() as u64;
            if bytes > budget {
                return false;
            }
        }
        true
    }

    fn on_snapshot_fetch(&mut self, now: Time, from: NodeId, slot: Slot, offset: u64, out: &mut Out) {
        let Some(image) = self.teaching.as_mut().filter(|i| i.slot == slot) else {
            out.dropped("replica: a fetch of a snapshot this replica no longer holds");
            return;
        };
        let len = image.bytes.len() as u64;
        if offset >= len {
            out.dropped("replica: a fetch beyond the end of the snapshot");
            return;
        }
        image.last_fetch = now;
        let end = offset.saturating_add(self.tunables.teach_chunk_bytes).min(len);
        let bytes = image.bytes.slice(offset as usize..end as usize);
        out.send(from, Msg::SnapshotChunk { slot, offset, bytes });
    }

    fn on_snapshot_offer(&mut self, from: NodeId, slot: Slot, len: u64, digest: u64, out: &mut Out) {
        if slot <= self.executed {
            return; // already past it
        }
        if len > MAX_SNAPSHOT_BYTES {
            out.dropped("replica: a snapshot offered larger than a learner may hold");
            return;
        }
        if let Some(l) = self.learning.as_mut() {
            if (l.slot, l.len, l.digest) == (slot, len, digest) {
                // The same image (replicas at the same slot serialise the same bytes): if its
                // teacher went quiet, resume from this one where the transfer was.
                if l.teacher != from && l.quiet_reports > 0 {
                    l.teacher = from;
                    l.quiet_reports = 0;
                    l.asked_to = l.bytes.len() as u64;
                    l.ahead.clear();
                    self.fetch_window(out);
                }
                return;
            }
            if l.quiet_reports == 0 {
                return; // a transfer of another image is moving
            }
        }
        let learning = Learning {
            teacher: from,
            slot,
            len,
            digest,
            bytes: Vec::with_capacity(len as usize), // at most MAX_SNAPSHOT_BYTES, checked above
            ahead: BTreeMap::new(),
            asked_to: 0,
            quiet_reports: 0,
            started_at: self.now,
        };
        self.learning = Some(learning);
        self.fetch_window(out);
    }

    /// Asks for chunks until a window's worth is outstanding beyond what arrived in order.
    fn fetch_window(&mut self, out: &mut Out) {
        let (chunk, window) = (self.tunables.teach_chunk_bytes, self.tunables.teach_window_chunks);
        let Some(l) = self.learning.as_mut() else { return };
        let mut limit = (l.bytes.len() as u64).saturating_add(chunk * window).min(l.len);
        if let rate @ 1.. = self.tunables.teach_max_bytes_per_sec {
            // A window at once, then no faster than the rate since the transfer began.
            let allowed = rate.saturating_mul(self.now.saturating_sub(l.started_at)) / 1_000_000;
            limit = limit.min(allowed.saturating_add(chunk * window));
        }
        while l.asked_to < limit {
            out.send(l.teacher, Msg::SnapshotFetch { slot: l.slot, offset: l.asked_to });
            l.asked_to += chunk;
        }
    }

    fn on_snapshot_chunk(&mut self, from: NodeId, slot: Slot, offset: u64, bytes: Bytes, out: &mut Out) {
        let window_bytes = self.tunables.teach_chunk_bytes * self.tunables.teach_window_chunks;
        let Some(l) = self.learning.as_mut().filter(|l| (l.teacher, l.slot) == (from, slot)) else {
            out.dropped("replica: a snapshot chunk of no transfer under way");
            return;
        };
        let have = l.bytes.len() as u64;
        let end = offset.saturating_add(bytes.len() as u64);
        if bytes.is_empty() || end > l.len || offset < have || offset > have + window_bytes {
            out.dropped("replica: a snapshot chunk out of place (duplicate, stale or beyond the window)");
            return;
        }
        l.ahead.insert(offset, bytes);
        while let Some(next) = l.ahead.remove(&(l.bytes.len() as u64)) {
            l.bytes.extend_from_slice(&next);
            l.quiet_reports = 0;
        }
        // Chunks that overlap what arrived in order (another teacher's chunk size) are of no use.
        let have = l.bytes.len() as u64;
        l.ahead.retain(|&at, _| at > have);
        if have < l.len {
            self.fetch_window(out);
            return;
        }
        let l = self.learning.take().expect("checked above");
        if super::digest(&l.bytes) != l.digest {
            out.dropped("replica: a taught snapshot failed its digest check; asking again");
            return;
        }
        self.install(l.slot, Bytes::from(l.bytes), out);
    }

    /// Replaces this replica's state with a taught snapshot at `slot` (all of it, in this call),
    /// and keeps it on disk as its newest snapshot; its reports say the new watermark only once
    /// that snapshot is durable.
    fn install(&mut self, slot: Slot, bytes: Bytes, out: &mut Out) {
        if slot <= self.executed {
            return;
        }
        if self.restore(&bytes).is_err() {
            // The digest matched, so the teacher produced bytes we cannot read: a bug, not noise.
            out.dropped("replica: a taught snapshot with the right digest did not restore");
            return;
        }
        let rebuildable = self.unsaved_install.map_or(self.executed, |(_, before)| before);
        self.executed = slot;
        // An image being built is of the state just replaced.
        self.building = None;
        self.timers.cancel(Timer::Image as usize);
        self.chosen.forget_below(slot);
        self.forget_log_below(slot);
        self.slot_reads = self.slot_reads.split_off(&slot);
        if self.storage == Storage::Durable {
            out.save_snapshot(slot, bytes);
            self.snapshot_slot = slot;
            self.unsaved_install = Some((slot, rebuildable));
        }
        let state_digest = out.digest(|| self.state_digest());
        out.event(|| Event::Installed { slot, state_digest });
        self.execute_ready(out);
    }

    /// Reads the next missing slots from their acceptor groups: no peer replica can teach them.
    fn read_from_acceptors(&mut self, out: &mut Out) {
        let end = self.chosen.lowest().unwrap_or(self.executed + 1);
        for slot in self.executed..end.min(self.executed + SLOTS_READ_AT_ONCE) {
            self.slot_reads.entry(slot).or_default();
            for &acceptor in self.history.group_of(slot) {
                out.send(acceptor, Msg::ReadSlot { slot });
            }
        }
    }

    /// An acceptor's answer to a slot read: once f+1 of the group report one ballot, that ballot's
    /// value is the chosen one.
    fn on_slot_read(&mut self, from: NodeId, slot: Slot, accepted: Option<AcceptedEntry>, out: &mut Out) {
        if !self.history.group_of(slot).contains(&from) || accepted.as_ref().is_some_and(|e| e.slot != slot) {
            out.dropped("replica: a slot read from an acceptor not of the slot's group");
            return;
        }
        let Some(answers) = self.slot_reads.get_mut(&slot) else {
            return; // not asked, or learned since
        };
        answers.insert(from, accepted.map(|e| (e.ballot, e.value)));
        let quorum = self.history.quorum();
        let mut by_ballot: BTreeMap<super::Ballot, (usize, &Value)> = BTreeMap::new();
        for (ballot, value) in answers.values().flatten() {
            by_ballot.entry(*ballot).or_insert((0, value)).0 += 1;
        }
        let chosen = by_ballot.into_values().find(|(n, _)| *n >= quorum).map(|(_, v)| v.clone());
        if let Some(value) = chosen {
            self.slot_reads.remove(&slot);
            self.on_chosen(slot, value, out);
        }
    }

    fn on_report_timer(&mut self, now: Time, out: &mut Out) {
        // Held until every executed value below the watermark is durable: proposers and acceptors
        // trim below it, so it must be a position this replica can rebuild after a crash.
        let watermark = self.unsaved_install.map_or(self.executed, |(_, rebuildable)| rebuildable);
        // The cluster file's proposers too: one that a change removed and that restarted without
        // memory learns from the report that it may not lead.
        let proposers: BTreeSet<NodeId> = (self.newest.proposers.iter())
            .chain(&self.previous_proposers)
            .chain(&self.config.proposers)
            .copied()
            .collect();
        let targets: Vec<NodeId> = proposers.into_iter().chain(self.peers()).collect();
        for to in targets {
            self.storage.send(out, to, Msg::Executed { watermark, configs: self.history.clone() });
        }
        self.teaching = self.teaching.take().filter(|i| now < i.last_fetch + TEACH_IMAGE_IDLE_US);
        self.measure_live_rate(now);
        if self.learning.is_some() {
            self.on_learning_report(out);
        } else if self.executed == self.executed_at_last_report {
            self.on_stuck_report(out);
        } else {
            self.stuck_reports = 0;
        }
        self.executed_at_last_report = self.executed;
        self.timers.set(Timer::Report as usize, now + self.report_interval_us);
    }

    /// Stuck since the last report. A peer ahead teaches us (peers take turns, so a dead or slow
    /// one is not asked for ever); with none ahead, but later slots chosen, a slot was lost to every
    /// replica: read it from the acceptors.
    fn on_stuck_report(&mut self, out: &mut Out) {
        let ahead: Vec<(NodeId, Slot)> =
            self.peer_watermarks.iter().filter(|(_, &w)| w > self.executed).map(|(&p, &w)| (p, w)).collect();
        if ahead.is_empty() {
            if !self.chosen.is_empty() {
                self.read_from_acceptors(out);
            }
            return;
        }
        self.next_teacher = self.next_teacher.wrapping_add(1);
        let (peer, _) = ahead[self.next_teacher % ahead.len()];
        let max_slots = match self.segment_pace() {
            None => MAX_CATCHUP_SLOTS,
            // What the pace allows since the last ask (asks come only when the last segment is
            // applied, so the rate stays under the pace); a long quiet spell lends at most a second.
            Some(rate) => (rate.saturating_mul((self.now - self.asked_segment_at).min(1_000_000))
                / 1_000_000)
                .clamp(1, MAX_CATCHUP_SLOTS),
        };
        self.asked_segment_at = self.now;
        out.send(peer, Msg::CatchUp { from_slot: self.executed, max_slots });
        self.stuck_reports += 1;
        if self.stuck_reports.is_multiple_of(STALLED_AFTER_REPORTS) {
            let executed = self.executed;
            let peer_executed = ahead.iter().map(|&(_, w)| w).max().unwrap_or(executed);
            out.event(|| Event::Stalled { executed, peer_executed });
        }
    }

    /// Slots per second this replica may learn by log segment: at most `teach_max_slots_per_sec`
    /// (when set), and at most `teach_pace_percent_of_live` percent of the rate its peers execute
    /// at, but no less than `teach_min_slots_per_sec` (when that pace is on). `None`: unpaced.
    /// Catching up costs a replica about as much per slot as executing, so where nodes share
    /// cores the pace bounds what a learner takes from the live load, and still gains on it.
    fn segment_pace(&self) -> Option<u64> {
        let t = &self.tunables;
        let fixed = (t.teach_max_slots_per_sec > 0).then_some(t.teach_max_slots_per_sec);
        let live = (t.teach_pace_percent_of_live > 0).then(|| {
            (self.live_slots_per_sec.saturating_mul(t.teach_pace_percent_of_live) / 100)
                .max(t.teach_min_slots_per_sec)
        });
        fixed.into_iter().chain(live).min()
    }

    /// Measures, about once a second, how fast the furthest peer executes: the live rate that
    /// paces learning (`segment_pace`). A peer that restarted from nothing counts as no progress.
    fn measure_live_rate(&mut self, now: Time) {
        if self.peer_watermarks.is_empty() {
            // Not before a peer has reported: from this replica's own position (a restart's, far
            // behind) to the peers' the first second measured the gap, and learning went unpaced.
            return;
        }
        let furthest = self.peer_watermarks.values().copied().max().unwrap_or(0).max(self.executed);
        match self.live_mark {
            Some((at, _)) if now < at + 1_000_000 => {}
            Some((at, from)) => {
                self.live_slots_per_sec =
                    furthest.saturating_sub(from).saturating_mul(1_000_000) / (now - at);
                self.live_mark = Some((now, furthest));
            }
            None => self.live_mark = Some((now, furthest)),
        }
    }

    /// A transfer is under way: ask again for what has not come (lost chunks), and after a long
    /// silence give the teacher up and ask another peer.
    fn on_learning_report(&mut self, out: &mut Out) {
        let Some(l) = self.learning.as_mut() else { return };
        if l.bytes.len() as u64 >= l.asked_to && l.asked_to < l.len {
            // Everything asked for came, and more is due: paced (`teach_max_bytes_per_sec`),
            // not stalled. Ask for what the rate allows now.
            l.quiet_reports = 0;
            self.fetch_window(out);
            return;
        }
        l.quiet_reports += 1;
        if l.quiet_reports % TEACHER_QUIET_REPORTS == 0 {
            // Ask a peer (the next in turn) to teach: the same image resumes where it was, another
            // replaces it.
            self.on_stuck_report(out);
            return;
        }
        if l.quiet_reports >= 3 {
            // Chunks were lost: ask for the window again from the first missing byte.
            l.asked_to = l.bytes.len() as u64;
            l.ahead.clear();
            self.fetch_window(out);
        }
    }

    /// The leader tells a replica that no kept configuration names any more to leave: it
    /// reports `Left` (the runtime then stops it), unless the newest configuration it knows
    /// still names it.
    fn on_leave(&mut self, from: NodeId, out: &mut Out) {
        if !self.config.proposers.contains(&from) && !self.newest.proposers.contains(&from) {
            out.dropped("replica: asked to leave by a node that is not a proposer");
            return;
        }
        if self.newest.replicas.contains(&self.id) {
            out.dropped("replica: asked to leave while the newest configuration it knows names it");
            return;
        }
        self.left = true;
        report_left(out, self.id, from, self.newest.proposers.iter().chain(&self.config.proposers).copied());
        out.event(|| Event::Left);
    }

    fn check_invariants(&self) {
        assert!(
            self.chosen.lowest().is_none_or(|s| s > self.executed),
            "replica {}: slot {} is chosen and executable but not executed",
            self.id,
            self.executed
        );
        assert!(self.log.keys().next_back().is_none_or(|&s| s < self.executed));
        assert!(self.log.len() as u64 <= self.tunables.teach_retention_slots.max(1));
        assert!(self.chosen.slots.len() <= MAX_CHOSEN_BUFFER);
        assert!(self.chosen.bytes <= MAX_CHOSEN_BUFFER_BYTES || self.chosen.slots.len() == 1);
        assert!(self.timers.is_set(Timer::Report as usize));
    }
}

impl Role for Replica {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Out) {
        self.now = now;
        if self.left {
            if matches!(msg, Msg::Leave) {
                out.send(from, Msg::Left);
            }
            return;
        }
        match msg {
            Msg::Chosen { slot, value } => self.on_chosen(slot, value, out),
            Msg::Executed { watermark, configs } => self.on_executed(from, watermark, &configs, out),
            Msg::Membership(view)
                if self.is_replica(from) || self.view.accepts_view_from(from, &view, &self.config) =>
            {
                if let Some(m) = self.membership.as_mut() {
                    m.on_view(&view);
                }
                if let Some(config) = view.configuration() {
                    self.learn_newest(config);
                }
                if self.view.merge(&view) {
                    // Two unbatchers leaving at once through different proposers can leave none in
                    // service: keep sending to the last ones known until one joins.
                    let unbatchers: Vec<NodeId> = self.view.in_service(RoleKind::Unbatcher).collect();
                    if !unbatchers.is_empty() {
                        self.unbatcher_uptake.retain(|u, _| unbatchers.contains(u));
                        self.unbatchers = unbatchers;
                    }
                }
                if !view.covers(&self.view) {
                    // A leader that restarted without memory publishes the configuration's view:
                    // teach it what we know, so that nodes that left stay gone.
                    out.send(from, Msg::Membership(self.view.clone()));
                }
            }
            Msg::CatchUp { from_slot, max_slots } if self.is_replica(from) => {
                self.on_catch_up(now, from, from_slot, max_slots, out)
            }
            Msg::SnapshotFetch { slot, offset } if self.is_replica(from) => {
                self.on_snapshot_fetch(now, from, slot, offset, out)
            }
            Msg::SnapshotOffer { slot, len, digest } if self.is_replica(from) => {
                self.on_snapshot_offer(from, slot, len, digest, out)
            }
            Msg::SnapshotChunk { slot, offset, bytes } if self.is_replica(from) => {
                self.on_snapshot_chunk(from, slot, offset, bytes, out)
            }
            Msg::SlotRead { slot, accepted, .. } => self.on_slot_read(from, slot, accepted, out),
            Msg::RepliesTaken => self.on_replies_taken(from),
            Msg::Leave => self.on_leave(from, out),
            // A node joining from a cluster file whose proposers may all be gone: tell it who
            // the proposers are now (the view carries the newest configuration).
            Msg::Join { .. } => out.send(from, Msg::Membership(self.view.clone())),
            _ => out.dropped("replica: unexpected message"),
        }
        self.check_invariants();
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Out) {
        self.now = now;
        if self.left {
            return;
        }
        if let Some(m) = self.membership.as_mut() {
            m.on_timeout(now, true, out);
        }
        let mut expired = [false; 2];
        for timer in self.timers.take_expired(now) {
            expired[timer] = true;
        }
        if expired[Timer::Report as usize] {
            self.on_report_timer(now, out);
        }
        if expired[Timer::Image as usize] {
            self.on_image_timer(now, out);
        }
        self.check_invariants();
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.left {
            return None;
        }
        super::membership::earliest(
            self.timers.next(),
            self.membership.as_ref().and_then(|m| m.poll_timeout()),
        )
    }

    fn kind(&self) -> RoleKind {
        RoleKind::Replica
    }

    fn snapshot_saved(&mut self, now: Time, slot: Slot, out: &mut Out) {
        self.now = now;
        self.saved_snapshot_slot = self.saved_snapshot_slot.max(slot);
        if self.unsaved_install.is_some_and(|(at, _)| slot >= at) {
            self.unsaved_install = None;
        }
        if !self.left {
            self.persist_trim(out);
            // One that came due while this one was written.
            self.maybe_snapshot(out);
        }
        self.check_invariants();
    }

    fn as_replica(&self) -> Option<&Replica> {
        Some(self)
    }

    fn status(&self) -> super::messages::NodeStatus {
        let state = match (&self.learning, &self.membership) {
            _ if self.left => super::messages::NodeState::Leaving,
            // Removed by a change (executed, or named by a peer's report if it was one of the
            // cluster file's), and still running until it is told to leave.
            (None, None) if !self.newest.replicas.contains(&self.id) => super::messages::NodeState::Leaving,
            _ if self.history.removed().contains(&(self.id, RoleKind::Replica)) => {
                super::messages::NodeState::Leaving
            }
            (Some(_), _) => super::messages::NodeState::Learning,
            (None, Some(m)) if !self.newest.replicas.contains(&self.id) => m.status(RoleKind::Replica).state,
            _ => super::messages::NodeState::Up,
        };
        super::messages::NodeStatus {
            state,
            executed: Some(self.executed),
            configuration: Some(self.history.latest().clone()),
            joined: self.view.known_nodes(),
            removed: self.history.removed().iter().map(|&(id, _)| id).collect(),
            ..super::messages::NodeStatus::basic(RoleKind::Replica)
        }
    }
}

/// Chosen values above a replica's watermark, bounded in slots and bytes.
#[derive(Default)]
struct ChosenBuffer {
    slots: BTreeMap<Slot, (Value, Time)>,
    bytes: u64,
}

/// What became of a value offered to a full [`ChosenBuffer`].
enum Buffered {
    /// Kept, after giving up this many higher slots to make room.
    Kept { evicted: usize },
    /// Not kept: every slot buffered is lower.
    Dropped,
}

impl ChosenBuffer {
    /// Keeps `value` for `slot` (not yet buffered). When full, the highest slots make room for a
    /// lower one: the slots just above the watermark are the ones execution waits for, so a buffer
    /// full of a live stream far ahead must never refuse them (it would wait for ever).
    fn insert(&mut self, slot: Slot, value: Value, now: Time) -> Buffered {
        let len = value.byte_len() as u64;
        let mut evicted = 0;
        while self.slots.len() >= MAX_CHOSEN_BUFFER || self.bytes + len > MAX_CHOSEN_BUFFER_BYTES {
            match self.slots.last_key_value() {
                Some((&highest, _)) if highest > slot => {
                    self.remove(highest);
                    evicted += 1;
                }
                // Empty, or all lower: a value bigger than the whole budget is still taken alone.
                None => break,
                Some(_) => return Buffered::Dropped,
            }
        }
        self.bytes += len;
        self.slots.insert(slot, (value, now));
        Buffered::Kept { evicted }
    }

    fn get(&self, slot: Slot) -> Option<&Value> {
        self.slots.get(&slot).map(|(value, _)| value)
    }

    fn remove(&mut self, slot: Slot) -> Option<(Value, Time)> {
        let removed = self.slots.remove(&slot)?;
        self.bytes -= removed.0.byte_len() as u64;
        Some(removed)
    }

    fn lowest(&self) -> Option<Slot> {
        self.slots.keys().next().copied()
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn forget_below(&mut self, slot: Slot) {
        let kept = self.slots.split_off(&slot);
        let forgotten = std::mem::replace(&mut self.slots, kept);
        self.bytes -= forgotten.values().map(|(v, _)| v.byte_len() as u64).sum::<u64>();
    }
}

/// A durable image's buffer, of its whole size, holding its first field: the state machine's
/// image length. The state machine's image follows, then the client table.
fn image_buffer(state_machine_len: usize, client_table_len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + state_machine_len + client_table_len);
    bytes.extend_from_slice(&(state_machine_len as u64).to_le_bytes());
    bytes
}

/// Bytes the client table takes in a snapshot: id, sequence number and length-prefixed reply.
fn client_table_len(clients: &[(u64, &ClientEntry)]) -> usize {
    clients.iter().map(|(_, entry)| 24 + entry.reply.len()).sum()
}

fn encode_client_table(clients: &[(u64, &ClientEntry)], bytes: &mut Vec<u8>) {
    for (client, entry) in clients {
        bytes.extend_from_slice(&client.to_le_bytes());
        bytes.extend_from_slice(&entry.seq.to_le_bytes());
        bytes.extend_from_slice(&(entry.reply.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&entry.reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's watermark report with the cluster file's configuration.
    fn executed(watermark: Slot) -> Msg {
        let configs = crate::protocol::configuration::ConfigHistory::new(
            &ClusterConfig::f1(1, 1, 1, 1),
            Tunables::default().max_in_flight_slots as u64,
        );
        Msg::Executed { watermark, configs }
    }
    use crate::protocol::configuration::Configuration;
    use crate::protocol::messages::{encode_batch, Command};
    use crate::protocol::state_machine::kv::KvOp;
    use crate::protocol::state_machine::{new_state_machine, HashKey, StateMachineKind};

    const TEST_KEY: HashKey = HashKey::from_bytes([7; 16]);

    fn replica(id: NodeId) -> Replica {
        let config = ClusterConfig::f1(1, 1, 1, 1); // replicas 7, 8; unbatcher 10
        Replica::new(id, config, &Tunables::default(), new_state_machine(StateMachineKind::Kv, TEST_KEY), 0)
    }

    fn incr(client_id: u64, seq: u64) -> Command {
        let op = KvOp::Increment { partition: "p".into(), item: "x".into(), delta: 1 }.encode();
        Command { client_id, seq, op }
    }

    fn chosen(r: &mut Replica, slot: Slot, commands: Vec<Command>) -> Out {
        let mut out = Out::new(true);
        r.handle_message(0, 6, Msg::Chosen { slot, value: Value::Batch(encode_batch(commands)) }, &mut out);
        out
    }

    /// Whether a write to its own key in `slot`, chosen at `now`, gets a reply from `r`.
    fn replies_at(r: &mut Replica, now: Time, slot: Slot) -> bool {
        let mut out = Out::new(false);
        let value = Value::Batch(encode_batch(vec![incr(100 + slot, 1)]));
        r.handle_message(now, 6, Msg::Chosen { slot, value }, &mut out);
        out.msgs.iter().any(|(_, m)| matches!(m, Msg::ReplyBatch { .. }))
    }

    fn applied(out: &Out) -> Vec<(u64, u64)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Applied { client_id, seq, .. } => Some((*client_id, *seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_replica_that_a_change_adds_learns_its_peers_from_their_reports_and_asks_to_be_taught() {
        let config = ClusterConfig::f1(1, 1, 1, 1); // proposers 1, 2; replicas 7, 8
        let tunables = Tunables::default();
        let mut history = ConfigHistory::new(&config, tunables.max_in_flight_slots as u64);
        let with_30 =
            Configuration { epoch: 1, replicas: vec![7, 30], ..Configuration::from_cluster(&config) };
        assert!(history
            .on_chosen(2, &Change { config: with_30, from_slot: 4, ballot: super::super::Ballot::ZERO }));
        let sm = || new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut new = Replica::new(30, config.clone(), &tunables, sm(), 0).joining("127.0.0.1:9".into(), 0);
        assert_eq!(new.status().state, super::super::messages::NodeState::Joining);
        // Replica 7's report names 30: 30 learns its peers from it (8, in the cluster file's
        // configuration it still keeps, counts until a snapshot brings it the newer history).
        let mut out = Out::new(false);
        new.handle_message(1, 7, Msg::Executed { watermark: 50, configs: history.clone() }, &mut out);
        assert!(new.is_replica(7) && new.is_replica(8) && new.peers().eq([7]));
        // Replica 8, which that change removed, says it is leaving once it hears of it.
        let mut removed = Replica::new(8, config.clone(), &tunables, sm(), 0);
        assert_eq!(removed.status().state, super::super::messages::NodeState::Up);
        removed.handle_message(
            1,
            7,
            Msg::Executed { watermark: 50, configs: history.clone() },
            &mut Out::new(false),
        );
        assert_eq!(removed.status().state, super::super::messages::NodeState::Leaving);
        // Its next report goes to the proposers and to replica 7, and, stuck at 0 with a peer
        // ahead, it asks that peer to teach it.
        let mut out = Out::new(false);
        new.handle_timeout(new.poll_timeout().unwrap().max(tunables.replica_report_interval_us), &mut out);
        // (Held until the disk has what the watermark says, like every report.)
        let to: BTreeSet<NodeId> = (out.after_persist.iter())
            .filter(|(_, m)| matches!(m, Msg::Executed { .. }))
            .map(|(to, _)| *to)
            .collect();
        assert_eq!(to, BTreeSet::from([1, 2, 7]));
        assert!(out.msgs.iter().any(|(to, m)| *to == 7 && matches!(m, Msg::CatchUp { from_slot: 0, .. })));
        // A node joining from a cluster file whose proposers are gone asks a replica, which
        // answers with its view: the newest configuration, with the proposers now.
        let mut old = replica(7);
        let mut out = Out::new(false);
        old.learn_newest(&history.latest().config);
        old.handle_message(
            2,
            55,
            Msg::Join { role: RoleKind::Batcher, addr: "127.0.0.1:1".into() },
            &mut out,
        );
        match &out.msgs[..] {
            [(55, Msg::Membership(view))] => assert_eq!(view.configuration().map(|c| c.epoch), Some(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn executes_strictly_in_slot_order() {
        let mut r = replica(7);
        let out = chosen(&mut r, 1, vec![incr(100, 1)]);
        assert!(applied(&out).is_empty(), "slot 1 waits for slot 0");
        assert_eq!(r.executed_watermark(), 0);
        let out = chosen(&mut r, 0, vec![incr(101, 1)]);
        assert_eq!(applied(&out), vec![(101, 1), (100, 1)]);
        assert_eq!(r.executed_watermark(), 2);
    }

    /// The `Stage::Ordering` times in `out`, in order.
    fn ordering(out: &Out) -> Vec<u64> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Stage { stage: Stage::Ordering, micros } => Some(*micros),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_slot_is_timed_from_its_value_arriving_to_its_execution() {
        let mut r = replica(7);
        let mut out = Out::new(true);
        let value = |client| Value::Batch(encode_batch(vec![incr(client, 1)]));
        r.handle_message(100, 6, Msg::Chosen { slot: 1, value: value(100) }, &mut out);
        r.handle_message(150, 6, Msg::Chosen { slot: 2, value: value(101) }, &mut out);
        assert!(ordering(&out).is_empty(), "waiting for slot 0");
        r.handle_message(400, 6, Msg::Chosen { slot: 0, value: value(102) }, &mut out);
        assert_eq!(ordering(&out), vec![0, 300, 250], "one per slot, from its own arrival");
    }

    #[test]
    fn slots_a_snapshot_install_skips_are_not_timed_and_the_ones_waiting_above_it_are() {
        let (mut behind, ahead) = snapshot_teacher_and_learner(0);
        let mut out = Out::new(true);
        let value = Value::Batch(encode_batch(vec![put(100, 41, "after", 10)]));
        behind.handle_message(100, 6, Msg::Chosen { slot: 40, value }, &mut out);
        behind.now = 500; // the time of the call that completes the transfer
        behind.install(40, Bytes::from(ahead.durable_snapshot()), &mut out);
        assert_eq!(behind.executed_watermark(), 41);
        assert_eq!(ordering(&out), vec![400], "slot 40 only: 0..40 came in the snapshot");
    }

    #[test]
    fn a_retried_command_is_answered_from_the_client_table_not_applied_twice() {
        let mut r = replica(7);
        let first = chosen(&mut r, 0, vec![incr(100, 1)]);
        let retry = chosen(&mut r, 1, vec![incr(100, 1)]);
        assert_eq!(applied(&first), vec![(100, 1)]);
        assert!(applied(&retry).is_empty());
        let replies = |out: &Out| -> Vec<Bytes> {
            out.msgs
                .iter()
                .filter_map(|(_, m)| match m {
                    Msg::ReplyBatch { replies } => Some(replies[0].result.clone()),
                    _ => None,
                })
                .collect()
        };
        // Slot 0 is replica 7's to answer, slot 1 replica 8's: check the table via a second replica.
        let mut other = replica(8);
        chosen(&mut other, 0, vec![incr(100, 1)]);
        let retry_at_other = chosen(&mut other, 1, vec![incr(100, 1)]);
        assert_eq!(replies(&first), replies(&retry_at_other), "the retry gets the original reply");
    }

    /// Where replica `r` sends the replies of `slot` (one it answers), chosen at `now`; the slot
    /// after it is chosen empty.
    fn reply_routes_at(r: &mut Replica, now: Time, slot: Slot, commands: Vec<Command>) -> Vec<NodeId> {
        let mut out = Out::new(false);
        r.handle_message(now, 6, Msg::Chosen { slot, value: Value::Batch(encode_batch(commands)) }, &mut out);
        let empty = Value::Batch(encode_batch(vec![]));
        r.handle_message(now, 6, Msg::Chosen { slot: slot + 1, value: empty }, &mut out);
        out.msgs.iter().filter(|(_, m)| matches!(m, Msg::ReplyBatch { .. })).map(|(to, _)| *to).collect()
    }

    #[test]
    fn a_retry_of_a_command_answered_through_an_unbatcher_moves_replies_off_it_for_a_while() {
        // Replicas 7, 8 (7 answers the even slots); unbatchers 10, 11, by turns of two slots.
        let config = ClusterConfig::f1(1, 1, 1, 2);
        let state_machine = new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut r = Replica::new(7, config, &Tunables::default(), state_machine, 0);
        let mut at = |now: Time, slot: Slot, commands: Vec<Command>| -> Vec<NodeId> {
            let to = reply_routes_at(&mut r, now, slot, commands);
            // The unbatchers take every batch (only the clients' retries say something is amiss).
            for &u in &to {
                r.handle_message(now, u, Msg::RepliesTaken, &mut Out::new(false));
            }
            to
        };
        assert_eq!(at(0, 0, vec![incr(100, 1)]), vec![10]);
        assert_eq!(at(0, 2, vec![incr(101, 1)]), vec![11]);
        // Client 100 retries: its reply went astray through unbatcher 10, so slot 4, whose turn
        // is 10's, goes through 11, and so do the slots after it...
        let retry_at = 200_000;
        assert_eq!(at(retry_at, 4, vec![incr(100, 1)]), vec![11]);
        assert_eq!(at(retry_at, 6, vec![incr(101, 2)]), vec![11]);
        assert_eq!(at(retry_at + SUSPECT_FOR_US - 1, 8, vec![incr(102, 1)]), vec![11]);
        // ...for a while: then the turns are as before.
        let later = retry_at + SUSPECT_FOR_US;
        assert_eq!(at(later, 10, vec![incr(103, 1)]), vec![11]);
        assert_eq!(at(later, 12, vec![incr(104, 1)]), vec![10]);
        // Client 100 again: its last reply went through 11 (slot 4), so 11 is passed by now.
        assert_eq!(at(later, 14, vec![incr(100, 1)]), vec![10]);
        assert_eq!(at(later, 16, vec![incr(105, 1)]), vec![10]);
        assert_eq!(at(later, 18, vec![incr(106, 1)]), vec![10]);
        // Client 104 retries (answered through 10, slot 12): with every unbatcher suspected, all
        // take their turns.
        assert_eq!(at(later, 20, vec![incr(104, 1)]), vec![10]);
        assert_eq!(at(later, 22, vec![incr(107, 1)]), vec![11]);
    }

    #[test]
    fn an_unbatcher_that_stops_taking_batches_is_passed_by_before_one_merely_suspected() {
        // Replicas 7, 8 (7 answers the even slots); unbatchers 10, 11, by turns of two slots.
        // Unbatcher 10 is paused: it never says `RepliesTaken`. 11 takes every batch.
        let config = ClusterConfig::f1(1, 1, 1, 2);
        let tunables = Tunables::default();
        let stall_after = tunables.client_retry_timeout_us;
        let state_machine = new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut r = Replica::new(7, config, &tunables, state_machine, 0);
        let at = |r: &mut Replica, now: Time, slot: Slot, commands: Vec<Command>| -> NodeId {
            let to = reply_routes_at(r, now, slot, commands);
            assert_eq!(to.len(), 1);
            if to[0] == 11 {
                r.handle_message(now, 11, Msg::RepliesTaken, &mut Out::new(false));
            }
            to[0]
        };
        assert_eq!(at(&mut r, 0, 0, vec![incr(100, 1)]), 10);
        assert_eq!(at(&mut r, 0, 2, vec![incr(101, 1)]), 11);
        assert_eq!(at(&mut r, stall_after - 1, 4, vec![incr(102, 1)]), 10, "not silent for long yet");
        assert_eq!(at(&mut r, stall_after - 1, 6, vec![incr(103, 1)]), 11);
        // Silent since its first batch: stalled. And client 101 retries (its reply, through 11,
        // was merely slow), so 11 is suspected too: 11 still takes every turn, not 10 half.
        assert_eq!(at(&mut r, stall_after, 8, vec![incr(104, 1)]), 11);
        assert_eq!(at(&mut r, stall_after, 10, vec![incr(101, 1)]), 11);
        for slot in [12, 14, 16] {
            assert_eq!(at(&mut r, stall_after, slot, vec![incr(200 + slot, 1)]), 11);
        }
        // After SUSPECT_FOR_US it is tried again; still silent, it is passed by twice as long.
        let retried = stall_after + SUSPECT_FOR_US;
        let turns: Vec<NodeId> = [18, 20].map(|s| at(&mut r, retried, s, vec![incr(200 + s, 1)])).to_vec();
        assert!(turns.contains(&10), "tried again: {turns:?}");
        let stalled_again = retried + stall_after;
        assert_eq!(at(&mut r, stalled_again, 22, vec![incr(222, 1)]), 11);
        let in_double = stalled_again + 2 * SUSPECT_FOR_US - 1;
        assert_eq!(at(&mut r, in_double, 24, vec![incr(224, 1)]), 11);
        assert_eq!(at(&mut r, in_double, 26, vec![incr(226, 1)]), 11, "the second stall lasts twice as long");
        // It resumes and takes what it was sent: back in its turns at once.
        r.handle_message(in_double, 10, Msg::RepliesTaken, &mut Out::new(false));
        let turns: Vec<NodeId> = [28, 30].map(|s| at(&mut r, in_double, s, vec![incr(200 + s, 1)])).to_vec();
        assert!(turns.contains(&10), "back in its turns: {turns:?}");
    }

    fn reply_results(out: &Out) -> Vec<(u64, u64, Bytes)> {
        out.msgs
            .iter()
            .filter_map(|(_, m)| match m {
                Msg::ReplyBatch { replies } => Some(replies.clone()),
                _ => None,
            })
            .flatten()
            .map(|r| (r.client_id, r.seq, r.result))
            .collect()
    }

    #[test]
    fn a_retry_in_the_same_batch_is_answered_with_the_first_reply() {
        let mut r = replica(7);
        let out = chosen(&mut r, 0, vec![incr(100, 1), incr(100, 1), incr(101, 1)]);
        assert_eq!(applied(&out), vec![(100, 1), (101, 1)]);
        let replies = reply_results(&out);
        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0], replies[1], "the retry gets the original reply");
        // The table kept that reply for a retry in a later batch (slot 2 is replica 7's to answer).
        chosen(&mut r, 1, vec![]);
        let later = chosen(&mut r, 2, vec![incr(100, 1)]);
        assert!(applied(&later).is_empty());
        assert_eq!(reply_results(&later), vec![replies[0].clone()]);
    }

    #[test]
    fn two_commands_of_one_client_in_a_batch_both_apply_and_the_table_keeps_the_last() {
        let mut r = replica(7);
        let out = chosen(&mut r, 0, vec![incr(100, 1), incr(100, 2)]);
        assert_eq!(applied(&out), vec![(100, 1), (100, 2)]);
        let replies = reply_results(&out);
        assert_ne!(replies[0].2, replies[1].2, "each command has its own result");
        chosen(&mut r, 1, vec![]);
        let retry = chosen(&mut r, 2, vec![incr(100, 2)]);
        assert_eq!(reply_results(&retry), vec![replies[1].clone()]);
    }

    #[test]
    fn replies_go_to_unbatchers_in_service_and_never_to_none() {
        let config = ClusterConfig::f1(1, 1, 1, 2);
        let (u0, u1, proposer) = (config.unbatchers[0], config.unbatchers[1], config.proposers[0]);
        let mut r = Replica::new(
            config.replicas[0],
            config.clone(),
            &Tunables::default(),
            new_state_machine(StateMachineKind::Kv, TEST_KEY),
            0,
        );
        let leaving = |id| {
            let mut view = View::from_config(&config);
            assert!(view.start_leaving(id, |_| true));
            view
        };
        r.handle_message(0, proposer, Msg::Membership(leaving(u0)), &mut Out::new(false));
        let out = chosen(&mut r, 0, vec![incr(100, 1)]);
        assert!(out.msgs.iter().all(|(to, m)| !matches!(m, Msg::ReplyBatch { .. }) || *to == u1));
        // Through another proposer the other one left too: none is in service, so keep the last.
        r.handle_message(0, proposer, Msg::Membership(leaving(u1)), &mut Out::new(false));
        chosen(&mut r, 1, vec![]);
        let out = chosen(&mut r, 2, vec![incr(100, 2)]);
        let to: Vec<NodeId> =
            out.msgs.iter().filter(|(_, m)| matches!(m, Msg::ReplyBatch { .. })).map(|(to, _)| *to).collect();
        assert_eq!(to, vec![u1]);
    }

    #[test]
    fn a_lone_replica_keeps_no_log_for_peers_it_does_not_have() {
        let mut config = ClusterConfig::f1(1, 1, 1, 1);
        config.replicas.truncate(1);
        let mut r = Replica::new(
            7,
            config,
            &Tunables::default(),
            new_state_machine(StateMachineKind::Kv, TEST_KEY),
            0,
        );
        for slot in 0..100 {
            chosen(&mut r, slot, vec![incr(100, slot + 1)]);
        }
        assert_eq!(r.executed_watermark(), 100);
        assert!(r.log.is_empty(), "{} executed slots kept with no peer to teach", r.log.len());
    }

    #[test]
    fn a_replica_answers_the_slots_of_a_peer_that_went_silent() {
        let mut r = replica(7);
        let down_after = Tunables::default().replica_down_after_us;
        r.handle_message(10, 8, executed(0), &mut Out::new(false));
        assert!(replies_at(&mut r, 0, 0), "slot 0 is replica 7's own");
        assert!(!replies_at(&mut r, 20, 1), "slot 1 is replica 8's, and 8 reported just now");
        chosen(&mut r, 2, vec![]);
        assert!(replies_at(&mut r, 10 + down_after + 1, 3), "8 has been silent too long: 7 answers for it");
        // 8 reports again, but from far behind (it is learning): 7 answers for it too.
        let now = 20 + down_after;
        r.handle_message(now, 8, executed(0), &mut Out::new(false));
        let window = Tunables::default().max_in_flight_slots as u64;
        let slot = window + 3; // replica 8's (odd), more than a window above 8's watermark
        for below in 4..slot {
            r.handle_message(now, 6, Msg::Chosen { slot: below, value: Value::Noop }, &mut Out::new(false));
        }
        assert!(replies_at(&mut r, now, slot), "8 is more than a window behind: 7 answers for it");
    }

    #[test]
    fn a_replica_answers_the_slots_of_a_peer_restarted_on_a_wiped_disk() {
        let mut r = replica(7);
        let slot = Tunables::default().max_in_flight_slots as u64 + 3; // replica 8's (odd)
        for below in 0..slot {
            r.handle_message(5, 6, Msg::Chosen { slot: below, value: Value::Noop }, &mut Out::new(false));
        }
        r.handle_message(5, 8, executed(slot), &mut Out::new(false));
        assert!(!replies_at(&mut r, 5, slot), "8 is up and level with 7: its slots are its own");
        r.handle_message(5, 6, Msg::Chosen { slot: slot + 1, value: Value::Noop }, &mut Out::new(false));
        // 8 comes back on an empty disk: a report of 0 after one of `slot`.
        r.handle_message(5, 8, executed(0), &mut Out::new(false));
        assert!(replies_at(&mut r, 5, slot + 2), "8 starts again from nothing: 7 answers for it");
    }

    #[test]
    fn a_replica_catching_up_does_not_answer_slots_a_peer_executed_a_window_ago() {
        let mut r = replica(7);
        let window = Tunables::default().max_in_flight_slots as u64;
        r.handle_message(5, 8, executed(2 * window + 10), &mut Out::new(false));
        assert!(!replies_at(&mut r, 5, 0), "slot 0 is 7's own, but 8 passed it more than a window ago");
        for below in 1..window + 10 {
            r.handle_message(5, 6, Msg::Chosen { slot: below, value: Value::Noop }, &mut Out::new(false));
        }
        assert!(replies_at(&mut r, 5, window + 10), "7's own slot, within a window of 8's watermark");
    }

    #[test]
    fn a_full_chosen_buffer_gives_up_its_highest_slots_for_the_ones_execution_waits_for() {
        // A learner receives the live stream far above its watermark: full of it, the buffer must
        // still take the slots that its teacher sends for the watermark.
        let mut r = replica(7);
        for slot in 1..=MAX_CHOSEN_BUFFER as u64 + 10 {
            r.handle_message(5, 6, Msg::Chosen { slot, value: Value::Noop }, &mut Out::new(false));
        }
        assert_eq!(r.chosen.slots.len(), MAX_CHOSEN_BUFFER);
        r.handle_message(5, 8, Msg::Chosen { slot: 0, value: Value::Noop }, &mut Out::new(false));
        assert_eq!(
            r.executed_watermark(),
            MAX_CHOSEN_BUFFER as u64,
            "slot 0 was taken: the run up to the highest kept executes"
        );

        // Bytes bound it too: a stream of 1 MiB values stops at the budget, and a slot below all of
        // them still gets in.
        let mut r = replica(7);
        let mib = || Value::Batch(Bytes::from(vec![0u8; 1 << 20]));
        let over = (MAX_CHOSEN_BUFFER_BYTES >> 20) + 5;
        for slot in 2..2 + over {
            r.handle_message(5, 6, Msg::Chosen { slot, value: mib() }, &mut Out::new(false));
        }
        assert_eq!(r.chosen.bytes, MAX_CHOSEN_BUFFER_BYTES);
        assert_eq!(r.chosen.lowest(), Some(2));
        r.handle_message(5, 8, Msg::Chosen { slot: 1, value: mib() }, &mut Out::new(false));
        assert_eq!(r.chosen.bytes, MAX_CHOSEN_BUFFER_BYTES, "the highest slot made room");
        assert_eq!(r.chosen.lowest(), Some(1));
    }

    #[test]
    fn replicas_fed_the_same_log_have_identical_state() {
        let (mut a, mut b) = (replica(7), replica(8));
        for slot in 0..5 {
            let commands = vec![incr(100, slot + 1), incr(101, slot + 1)];
            chosen(&mut a, slot, commands.clone());
            chosen(&mut b, slot, commands);
        }
        assert_eq!(a.state_digest(), b.state_digest());
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn a_malformed_batch_is_executed_as_empty_on_every_replica() {
        let mut r = replica(7);
        let mut out = Out::new(true);
        let garbage = Value::Batch(Bytes::from_static(&[0xff; 40]));
        r.handle_message(0, 6, Msg::Chosen { slot: 0, value: garbage }, &mut out);
        assert_eq!(r.executed_watermark(), 1);
    }

    /// Lets an image being built finish: its slices are turns of their own.
    fn settle(r: &mut Replica, out: &mut Out) {
        while r.building.is_some() {
            let at = r.poll_timeout().expect("an image being built has its timer set");
            r.handle_timeout(at, out);
        }
    }

    /// What a durable replica's disk would hold after `out`: every record and the newest snapshot,
    /// each snapshot reported durable at once (with the records that lets it queue).
    fn keep_on_disk(r: &mut Replica, disk: &mut Recovered, out: &mut Out) {
        while !out.persist.is_empty() || !out.snapshots.is_empty() {
            disk.records.append(&mut out.persist);
            for (slot, bytes) in std::mem::take(&mut out.snapshots) {
                disk.snapshot = Some((slot, bytes));
                r.snapshot_saved(0, slot, out);
            }
        }
    }

    #[test]
    fn a_snapshot_is_built_in_slices_while_execution_goes_on_and_is_the_state_at_its_slot() {
        let tunables = Tunables {
            replica_snapshot_interval_slots: 16,
            snapshot_slice_bytes: 16,
            snapshot_at_once_bytes: 0,
            ..Tunables::default()
        };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let new_sm = || new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut r = Replica::new(7, config.clone(), &tunables, new_sm(), 0);
        let batch = |slot: Slot| vec![put(100 + slot % 3, slot / 3 + 1, &format!("k{}", slot % 5), 40)];
        let (mut snapshots, mut slices) = (Vec::new(), 0);
        for slot in 0..80 {
            let mut out = chosen(&mut r, slot, batch(slot));
            if r.building.is_some() {
                let at = r.poll_timeout().expect("an image being built has its timer set");
                r.handle_timeout(at, &mut out); // one slice, then the next slot
                slices += 1;
            }
            for (slot, bytes) in std::mem::take(&mut out.snapshots) {
                snapshots.push((slot, bytes));
                r.snapshot_saved(0, slot, &mut out);
            }
        }
        let (slot, bytes) = snapshots.first().cloned().expect("a snapshot was built");
        assert_eq!(slot, 16);
        assert!(slices > 10, "{slices} slices: slots executed between them");
        let mut reference = Replica::new(7, config, &tunables, new_sm(), 0);
        for s in 0..slot {
            chosen(&mut reference, s, batch(s));
        }
        assert_eq!(&bytes[..], &reference.durable_snapshot()[..], "the state at slot 16, not later");
    }

    #[test]
    fn a_restarted_replica_is_rebuilt_from_its_snapshot_and_the_values_after_it() {
        let tunables = Tunables { replica_snapshot_interval_slots: 16, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let new_sm = || new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut r = Replica::new(7, config.clone(), &tunables, new_sm(), 0);
        let mut disk = Recovered::default();
        for slot in 0..40 {
            let mut out = chosen(&mut r, slot, vec![incr(100 + slot % 3, slot + 1)]);
            settle(&mut r, &mut out);
            keep_on_disk(&mut r, &mut disk, &mut out);
        }
        assert_eq!(disk.snapshot.as_ref().map(|(slot, _)| *slot), Some(32), "snapshots at 16 and 32");
        let restarted =
            Replica::recover(7, config.clone(), &tunables, new_sm(), Storage::Durable, disk.clone(), 0)
                .unwrap();
        assert_eq!(restarted.executed_watermark(), 40);
        assert_eq!(restarted.snapshot(), r.snapshot(), "same state machine and client table");
        // A snapshot that is not one is refused, not trusted.
        let mut damaged = disk;
        damaged.snapshot = Some((32, Bytes::from_static(&[1, 2, 3])));
        assert!(Replica::recover(7, config, &tunables, new_sm(), Storage::Durable, damaged, 0).is_err());
    }

    #[test]
    fn replicas_fed_the_same_log_take_their_snapshots_at_slots_spread_over_the_interval() {
        let tunables = Tunables { replica_snapshot_interval_slots: 16, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1); // replicas 7 and 8
        let new_sm = || new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let snapshot_slots = |id: NodeId, disk: Option<Recovered>| {
            let mut r = match disk {
                Some(disk) => {
                    Replica::recover(id, config.clone(), &tunables, new_sm(), Storage::Durable, disk, 0)
                        .unwrap()
                }
                None => Replica::new(id, config.clone(), &tunables, new_sm(), 0),
            };
            let mut slots = Vec::new();
            for slot in r.executed_watermark()..60 {
                let mut out = chosen(&mut r, slot, vec![incr(100 + slot % 3, slot + 1)]);
                settle(&mut r, &mut out);
                for (slot, _) in std::mem::take(&mut out.snapshots) {
                    slots.push(slot);
                    r.snapshot_saved(0, slot, &mut out);
                }
            }
            slots
        };
        assert_eq!(snapshot_slots(7, None), vec![16, 32, 48]);
        assert_eq!(snapshot_slots(8, None), vec![8, 24, 40, 56]);
        // A snapshot taken off its phase (say, one installed by a teacher) does not shift the
        // next ones: they stay on this replica's own slots.
        let disk = Recovered { snapshot: Some((19, Bytes::new())), ..Recovered::default() };
        let off_phase = Replica::new(8, config.clone(), &tunables, new_sm(), 0).durable_snapshot();
        let disk = Recovered { snapshot: Some((19, Bytes::from(off_phase))), ..disk };
        assert_eq!(snapshot_slots(8, Some(disk)), vec![24, 40, 56]);
    }

    #[test]
    fn a_change_of_configuration_is_executed_into_the_history_reported_and_kept_across_a_restart() {
        let tunables =
            Tunables { replica_snapshot_interval_slots: 4, max_in_flight_slots: 10, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1); // one group [3, 4, 5]
        let new_sm = || new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut r = Replica::new(7, config.clone(), &tunables, new_sm(), 0);
        let unchanged = Replica::new(8, config.clone(), &tunables, new_sm(), 0);
        let mut disk = Recovered::default();
        let base = Configuration::from_cluster(&config);
        let two_groups = Configuration {
            epoch: 1,
            acceptor_groups: vec![vec![3, 4, 5], vec![20, 21, 22]],
            ..base.clone()
        };
        let skipped = Configuration { epoch: 5, acceptor_groups: vec![vec![30, 31, 32]], ..base };
        let change = |config: &Configuration, from_slot| {
            Value::Reconfig(
                Change { config: config.clone(), from_slot, ballot: crate::protocol::Ballot::ZERO }.encode(),
            )
        };
        let values = [Value::Noop, change(&two_groups, 11), change(&skipped, 12)];
        for (slot, value) in values.into_iter().enumerate() {
            let mut out = Out::new(true);
            r.handle_message(0, 6, Msg::Chosen { slot: slot as Slot, value }, &mut out);
            settle(&mut r, &mut out);
            keep_on_disk(&mut r, &mut disk, &mut out);
        }
        assert_eq!(r.configs().latest().config, two_groups, "epoch 5 is not the next: skipped");
        assert_eq!((r.configs().latest().from_slot, r.configs().latest().chosen_at), (11, Some(1)));
        assert_eq!(r.configs().group_of(9), &[3, 4, 5], "one group before slot 11");
        assert_eq!(r.configs().group_of(10), &[3, 4, 5]);
        assert_eq!(r.configs().group_of(11), &[20, 21, 22], "two from slot 11: odd slots to the new one");
        assert_eq!(r.configs().group_of(12), &[3, 4, 5]);
        assert_ne!(r.state_digest(), unchanged.state_digest(), "the history is part of the state");
        // Reported with the watermark.
        let mut out = Out::new(false);
        r.handle_timeout(r.poll_timeout().unwrap(), &mut out);
        assert!(out
            .after_persist
            .iter()
            .any(|(_, m)| matches!(m, Msg::Executed { configs, .. } if configs == r.configs())));
        // From the log alone, then from a snapshot and the log after it.
        let replayed =
            Replica::recover(7, config.clone(), &tunables, new_sm(), Storage::Durable, disk.clone(), 0);
        assert_eq!(replayed.unwrap().configs(), r.configs());
        for slot in 3..8 {
            let mut out = chosen(&mut r, slot, vec![incr(100, slot)]);
            settle(&mut r, &mut out);
            keep_on_disk(&mut r, &mut disk, &mut out);
        }
        assert!(disk.snapshot.is_some());
        let restarted = Replica::recover(7, config, &tunables, new_sm(), Storage::Durable, disk, 0).unwrap();
        assert_eq!(restarted.configs(), r.configs());
        assert_eq!(restarted.snapshot(), r.snapshot());
    }

    #[test]
    fn a_durable_replica_reports_its_watermark_only_after_its_records() {
        let mut r = replica(7);
        chosen(&mut r, 0, vec![incr(100, 1)]);
        let mut out = Out::new(false);
        let at = r.poll_timeout().unwrap();
        r.handle_timeout(at, &mut out);
        assert!(out.msgs.iter().all(|(_, m)| !matches!(m, Msg::Executed { .. })), "{:?}", out.msgs);
        assert!(out.after_persist.iter().any(|(_, m)| matches!(m, Msg::Executed { watermark: 1, .. })));
    }

    /// Delivers messages between two replicas (ids 7 and 8) until none are left, as a lossless
    /// network would; `drop` may lose some. Returns the names of what was delivered, in order.
    fn exchange(
        a: &mut Replica,
        b: &mut Replica,
        first: Vec<(NodeId, NodeId, Msg)>,
        mut drop: impl FnMut(&Msg) -> bool,
    ) -> Vec<&'static str> {
        let mut queue: std::collections::VecDeque<(NodeId, NodeId, Msg)> = first.into();
        let mut seen = Vec::new();
        loop {
            while let Some((from, to, msg)) = queue.pop_front() {
                if drop(&msg) {
                    continue;
                }
                seen.push(msg.name());
                let mut out = Out::new(true);
                let target = if to == a.id { &mut *a } else { &mut *b };
                target.handle_message(0, from, msg, &mut out);
                route(to, out, &mut queue);
            }
            // Images being built: their slices are turns of their own (timers due at once).
            let Some(builder) = [&mut *a, &mut *b].into_iter().find(|r| r.building.is_some()) else { break };
            let mut out = Out::new(true);
            let at = builder.poll_timeout().expect("an image being built has its timer set");
            builder.handle_timeout(at, &mut out);
            route(builder.id, out, &mut queue);
        }
        seen
    }

    fn route(from: NodeId, out: Out, queue: &mut std::collections::VecDeque<(NodeId, NodeId, Msg)>) {
        for (to, m) in out.msgs.into_iter().chain(out.after_persist) {
            if to == 7 || to == 8 {
                queue.push_back((from, to, m));
            }
        }
    }

    fn put(client_id: u64, seq: u64, item: &str, value_len: usize) -> Command {
        let op = KvOp::Put {
            partition: "p".into(),
            item: Bytes::copy_from_slice(item.as_bytes()),
            value: vec![b'v'; value_len].into(),
        }
        .encode();
        Command { client_id, seq, op }
    }

    #[test]
    fn a_stuck_replica_asks_a_peer_that_is_ahead_to_teach_it() {
        let (mut behind, mut ahead) = (replica(7), replica(8));
        for slot in 0..3 {
            chosen(&mut ahead, slot, vec![incr(100, slot + 1)]);
        }
        let mut out = Out::new(false);
        behind.handle_message(0, 8, executed(3), &mut out);
        let at = behind.poll_timeout().unwrap();
        behind.handle_timeout(at, &mut out);
        let catch_up =
            out.msgs.iter().find(|(to, m)| *to == 8 && matches!(m, Msg::CatchUp { from_slot: 0, .. }));
        let (_, msg) = catch_up.expect("asks the peer that is ahead").clone();
        exchange(&mut behind, &mut ahead, vec![(7, 8, msg)], |_| false);
        assert_eq!(behind.executed_watermark(), 3);
        assert_eq!(behind.snapshot(), ahead.snapshot());
    }

    #[test]
    fn a_paced_learner_asks_for_what_its_rate_allows_and_the_teacher_sends_no_more() {
        let config = ClusterConfig::f1(1, 1, 1, 1);
        // A log far bigger than the state is still shipped as a log here.
        let tunables = Tunables {
            teach_max_slots_per_sec: 1_000,
            teach_log_max_percent_of_state: 1 << 20,
            ..Tunables::default()
        };
        let sm = || new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut behind = Replica::new(7, config.clone(), &tunables, sm(), 0);
        let mut ahead = Replica::new(8, config, &tunables, sm(), 0);
        for slot in 0..100 {
            chosen(&mut ahead, slot, vec![incr(100, slot + 1)]);
        }
        behind.handle_message(0, 8, executed(100), &mut Out::new(false));
        let mut asks = Vec::new();
        while behind.executed_watermark() < 100 {
            let mut out = Out::new(false);
            let at = behind.poll_timeout().unwrap();
            assert!(at < 1_000_000, "100 slots at 1,000 a second take about 0.1 s, not {at} us");
            behind.handle_timeout(at, &mut out);
            for (_, msg) in
                out.msgs.into_iter().filter(|(to, m)| *to == 8 && matches!(m, Msg::CatchUp { .. }))
            {
                let Msg::CatchUp { max_slots, .. } = msg else { unreachable!() };
                asks.push((at, max_slots));
                let before = behind.executed_watermark();
                let seen = exchange(&mut behind, &mut ahead, vec![(7, 8, msg)], |_| false);
                assert!(!seen.contains(&"SnapshotOffer"), "{seen:?}");
                assert_eq!(
                    behind.executed_watermark() - before,
                    max_slots.min(100 - before),
                    "no more than asked"
                );
            }
        }
        // Asked every other report (10 ms): 20 slots each at 1,000 slots/s, the first from time 0.
        assert!(asks.iter().skip(1).all(|&(_, n)| n == 20), "{asks:?}");
        assert_eq!(behind.snapshot(), ahead.snapshot());
    }

    /// Replica 7, paced at 150% of the live rate (floor 100/s) and taught nothing, until `until`:
    /// at each of its timeouts peer 8 reports `peer(now)` (if any); the catch-up asks it sent, with
    /// when.
    fn stuck_learner_asks(until: Time, peer: impl Fn(Time) -> Option<Slot>) -> Vec<(Time, u64)> {
        let tunables =
            Tunables { teach_pace_percent_of_live: 150, teach_min_slots_per_sec: 100, ..Tunables::default() };
        let sm = new_state_machine(StateMachineKind::Kv, TEST_KEY);
        let mut behind = Replica::new(7, ClusterConfig::f1(1, 1, 1, 1), &tunables, sm, 0);
        let (mut asks, mut now) = (Vec::new(), 0);
        while now < until {
            now = behind.poll_timeout().unwrap();
            if let Some(watermark) = peer(now) {
                behind.handle_message(now, 8, executed(watermark), &mut Out::new(false));
            }
            let mut out = Out::new(false);
            behind.handle_timeout(now, &mut out);
            asks.extend(out.msgs.into_iter().filter_map(|(_, m)| match m {
                Msg::CatchUp { max_slots, .. } => Some((now, max_slots)),
                _ => None,
            }));
        }
        asks
    }

    #[test]
    fn a_learner_asks_for_a_share_above_the_live_rate_and_for_the_floor_when_the_peers_idle() {
        // Peer 8 executes 1,000 slots a second for 2 s, then none for 2 s; 7 is taught nothing,
        // so it stays stuck and asks at every report (10 ms).
        let asks = stuck_learner_asks(4_000_000, |now| Some(10_000 + now.min(2_000_000) / 1_000));
        let most = |from, to| {
            let asked = asks.iter().filter(|(at, _)| (from..to).contains(at)).map(|&(_, n)| n);
            (asked.clone().min().unwrap(), asked.max().unwrap())
        };
        assert_eq!(most(100_000, 1_000_000), (1, 1), "no rate measured yet: the floor, 100/s: {asks:?}");
        assert_eq!(most(1_100_000, 2_000_000), (15, 15), "150% of 1,000/s, per 10 ms: {asks:?}");
        assert_eq!(most(3_100_000, 4_000_000), (1, 1), "the peers idle: the floor again: {asks:?}");
    }

    #[test]
    fn a_restarted_learner_paces_by_its_peers_rate_not_by_how_far_behind_it_starts() {
        // Back at 0 with peer 8 at 50,000 and executing 1,000 slots a second; 8's first report
        // comes after 7's first report period.
        let asks = stuck_learner_asks(2_000_000, |now| (now >= 50_000).then_some(50_000 + now / 1_000));
        let late: Vec<u64> = asks.iter().filter(|(at, _)| *at > 1_200_000).map(|&(_, n)| n).collect();
        assert!(!late.is_empty() && late.iter().all(|&n| n == 15), "150% of 1,000/s, per 10 ms: {asks:?}");
    }

    #[test]
    fn a_short_gap_in_a_big_state_is_taught_by_log_segment() {
        let (mut behind, mut ahead) = (replica(7), replica(8));
        // A big state (100 items of 1 KiB) both have, then 3 small slots only one has.
        for slot in 0..10 {
            let batch: Vec<Command> =
                (0..10).map(|i| put(100 + i, slot + 1, &format!("k{slot}-{i}"), 1024)).collect();
            chosen(&mut ahead, slot, batch.clone());
            chosen(&mut behind, slot, batch);
        }
        for slot in 10..13 {
            chosen(&mut ahead, slot, vec![incr(200, slot)]);
        }
        let seen = exchange(
            &mut behind,
            &mut ahead,
            vec![(7, 8, Msg::CatchUp { from_slot: 10, max_slots: MAX_CATCHUP_SLOTS })],
            |_| false,
        );
        assert!(seen.contains(&"Chosen") && !seen.contains(&"SnapshotOffer"), "{seen:?}");
        assert_eq!(behind.executed_watermark(), 13);
        assert_eq!(behind.snapshot(), ahead.snapshot());
    }

    /// Replica 8 ahead by 40 slots of 100-byte puts and keeping only 5 of them; replica 7 empty.
    /// Snapshots go in 512-byte chunks, two at a time, at most `bytes_per_sec` (0: no cap).
    fn snapshot_teacher_and_learner(bytes_per_sec: u64) -> (Replica, Replica) {
        let tunables = Tunables {
            teach_retention_slots: 5,
            teach_chunk_bytes: 512,
            teach_window_chunks: 2,
            teach_max_bytes_per_sec: bytes_per_sec,
            ..Tunables::default()
        };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let new = |id| {
            Replica::new(id, config.clone(), &tunables, new_state_machine(StateMachineKind::Kv, TEST_KEY), 0)
        };
        let (behind, mut ahead) = (new(7), new(8));
        for slot in 0..40 {
            chosen(&mut ahead, slot, vec![put(100, slot + 1, &format!("k{slot}"), 100)]);
        }
        (behind, ahead)
    }

    #[test]
    fn a_paced_learner_fetches_a_snapshot_no_faster_than_its_byte_rate() {
        // 512-byte chunks, two at a time, at most 51,200 bytes/s (100 chunks a second).
        let (mut behind, mut ahead) = snapshot_teacher_and_learner(51_200);
        behind.handle_message(0, 8, executed(40), &mut Out::new(false));
        let mut now = 0;
        while behind.executed_watermark() < 40 {
            now = behind.poll_timeout().unwrap();
            assert!(now < 10_000_000, "taught within 10 s");
            let mut out = Out::new(true);
            behind.handle_timeout(now, &mut out);
            let first: Vec<_> =
                out.msgs.into_iter().filter(|(to, _)| *to == 8).map(|(to, m)| (7, to, m)).collect();
            exchange(&mut behind, &mut ahead, first, |_| false);
        }
        let len = ahead.durable_snapshot().len() as u64;
        // The first window goes at once; the rest no faster than the rate.
        let least = (len - 2 * 512) * 1_000_000 / 51_200;
        assert!(now >= least, "{len} bytes in {now} us: faster than 51,200 bytes/s (at least {least} us)");
        assert!(now <= least + 500_000, "{len} bytes in {now} us: the pace, not the quiet-teacher timeouts");
        assert_eq!(behind.state_digest(), ahead.state_digest());
    }

    #[test]
    fn slots_the_teacher_no_longer_keeps_are_taught_by_a_snapshot_in_chunks_then_the_log_follows() {
        let (mut behind, mut ahead) = snapshot_teacher_and_learner(0);
        assert_eq!(ahead.log.len(), 5, "the retention budget bounds what a teacher keeps");
        let seen = exchange(
            &mut behind,
            &mut ahead,
            vec![(7, 8, Msg::CatchUp { from_slot: 0, max_slots: MAX_CATCHUP_SLOTS })],
            |_| false,
        );
        assert!(seen.contains(&"SnapshotOffer"), "{seen:?}");
        let chunks = seen.iter().filter(|&&m| m == "SnapshotChunk").count();
        assert!(chunks > 4, "the state went in many 512-byte chunks, not one message: {chunks}");
        assert_eq!(behind.executed_watermark(), 40);
        assert_eq!(behind.state_digest(), ahead.state_digest());
        // Durable: the installed state is kept as a snapshot, then a trim of what it replaces.
        // (checked on the next test's disk) The learner goes on by log from the snapshot's slot.
        for slot in 40..43 {
            chosen(&mut ahead, slot, vec![put(100, slot + 1, "more", 10)]);
        }
        exchange(
            &mut behind,
            &mut ahead,
            vec![(7, 8, Msg::CatchUp { from_slot: 40, max_slots: MAX_CATCHUP_SLOTS })],
            |_| false,
        );
        assert_eq!(behind.executed_watermark(), 43);
        assert_eq!(behind.snapshot(), ahead.snapshot());
    }

    #[test]
    fn lost_chunks_are_asked_again_and_a_quiet_teachers_transfer_resumes_from_another() {
        let tunables = Tunables { teach_chunk_bytes: 256, teach_window_chunks: 2, ..Tunables::default() };
        let config = ClusterConfig::with_f(2, 1, 1, 1, 1); // replicas 11, 12, 13
        let ids = config.replicas.clone();
        let new = |id| {
            Replica::new(id, config.clone(), &tunables, new_state_machine(StateMachineKind::Kv, TEST_KEY), 0)
        };
        let mut learner = new(ids[0]);
        let mut teachers: Vec<Replica> = vec![new(ids[1]), new(ids[2])];
        for t in &mut teachers {
            for slot in 0..20 {
                let batch = vec![put(100, slot + 1, &format!("k{slot}"), 100)];
                let mut out = Out::new(false);
                t.handle_message(
                    0,
                    6,
                    Msg::Chosen { slot, value: Value::Batch(encode_batch(batch)) },
                    &mut out,
                );
            }
        }
        for &t in &ids[1..] {
            learner.handle_message(0, t, executed(20), &mut Out::new(false));
        }
        // Report periods: the learner asks a teacher, which serves three chunks and then dies (the
        // chunks it sent still arrive). Both teachers are at slot 20, so their images are the same
        // bytes: the other resumes the transfer where it was.
        let mut now = 0;
        let mut dead: Option<NodeId> = None;
        let mut served: BTreeMap<NodeId, usize> = BTreeMap::new();
        for _ in 0..400 {
            now = learner.poll_timeout().unwrap();
            let mut out = Out::new(true);
            learner.handle_timeout(now, &mut out);
            let mut queue: std::collections::VecDeque<(NodeId, NodeId, Msg)> =
                out.msgs.into_iter().map(|(to, m)| (learner.id, to, m)).collect();
            while let Some((from, to, msg)) = queue.pop_front() {
                if Some(to) == dead {
                    continue;
                }
                let mut out = Out::new(true);
                if to == learner.id {
                    learner.handle_message(now, from, msg, &mut out);
                } else if let Some(t) = teachers.iter_mut().find(|t| t.id == to) {
                    let fetch = matches!(msg, Msg::SnapshotFetch { .. });
                    t.handle_message(now, from, msg, &mut out);
                    settle(t, &mut out);
                    if fetch {
                        let n = served.entry(to).or_default();
                        *n += 1;
                        if *n == 3 && dead.is_none() {
                            dead = Some(to);
                        }
                    }
                }
                queue.extend(out.msgs.into_iter().map(|(next, m)| (to, next, m)));
            }
            if learner.executed_watermark() == 20 {
                break;
            }
        }
        let dead = dead.expect("a teacher served three chunks and died");
        assert_eq!(learner.executed_watermark(), 20, "learned from the other teacher by {now}us");
        let survivor = teachers.iter().find(|t| t.id != dead).unwrap();
        assert_eq!(learner.state_digest(), survivor.state_digest());
        let image = survivor.durable_snapshot().len().div_ceil(256);
        let from_survivor = served.get(&survivor.id).copied().unwrap_or(0);
        assert!(
            from_survivor < image,
            "resumed, not restarted: {from_survivor} of {image} chunks from the survivor"
        );
    }

    #[test]
    fn a_snapshot_whose_digest_does_not_match_is_never_installed() {
        let (mut behind, mut ahead) = (replica(7), replica(8));
        for slot in 0..5 {
            chosen(&mut ahead, slot, vec![put(100, slot + 1, &format!("k{slot}"), 100)]);
        }
        let mut chunked = false;
        exchange(
            &mut behind,
            &mut ahead,
            vec![(7, 8, Msg::CatchUp { from_slot: 0, max_slots: MAX_CATCHUP_SLOTS })],
            |m| {
                if let Msg::SnapshotChunk { .. } = m {
                    chunked = true;
                }
                false
            },
        );
        assert!(chunked, "the state goes in chunks");
        // Again, with a value's byte changed in every chunk: nothing is installed.
        let mut fresh = replica(7);
        let mut queue = vec![(7, 8, Msg::CatchUp { from_slot: 0, max_slots: MAX_CATCHUP_SLOTS })];
        while let Some((from, to, msg)) = queue.pop() {
            let msg = match msg {
                Msg::SnapshotChunk { slot, offset, bytes } => {
                    // A byte of a value changes: the image still parses, only the digest tells.
                    let mut b = bytes.to_vec();
                    if let Some(at) = b.windows(8).position(|w| w == b"vvvvvvvv") {
                        b[at] = b'w';
                    }
                    Msg::SnapshotChunk { slot, offset, bytes: Bytes::from(b) }
                }
                m => m,
            };
            let mut out = Out::new(true);
            let target = if to == 7 { &mut fresh } else { &mut ahead };
            target.handle_message(0, from, msg, &mut out);
            queue.extend(out.msgs.into_iter().map(|(next, m)| (to, next, m)));
        }
        assert_eq!(fresh.executed_watermark(), 0, "a state with the wrong digest was installed");
        assert!(fresh.learning.is_none(), "the transfer is dropped, to be asked again");
    }

    #[test]
    fn a_slot_lost_to_every_replica_is_read_from_a_quorum_of_acceptors_never_from_one() {
        let mut r = replica(7);
        chosen(&mut r, 1, vec![incr(100, 2)]);
        // Stuck at slot 0 with slot 1 chosen and no peer ahead: it reads slot 0 from the acceptors.
        let mut out = Out::new(false);
        let at = r.poll_timeout().unwrap();
        r.handle_timeout(at, &mut out);
        let mut out = Out::new(false);
        r.handle_timeout(r.poll_timeout().unwrap(), &mut out);
        let reads: Vec<NodeId> = out
            .msgs
            .iter()
            .filter(|(_, m)| matches!(m, Msg::ReadSlot { slot: 0 }))
            .map(|(to, _)| *to)
            .collect();
        assert_eq!(reads, vec![3, 4, 5], "asks every acceptor of slot 0's group");
        let value = |n| Value::Batch(encode_batch(vec![incr(100, n)]));
        let entry = |ballot, v| Some(AcceptedEntry { slot: 0, ballot, value: v });
        let (b1, b2) = (
            crate::protocol::Ballot { round: 1, proposer: 1 },
            crate::protocol::Ballot { round: 2, proposer: 2 },
        );
        // One acceptor alone says b2 (a minority accept of a failed leader): not enough.
        r.handle_message(
            0,
            3,
            Msg::SlotRead { slot: 0, accepted: entry(b2, value(9)), trimmed: false },
            &mut Out::new(false),
        );
        r.handle_message(
            0,
            4,
            Msg::SlotRead { slot: 0, accepted: entry(b1, value(1)), trimmed: false },
            &mut Out::new(false),
        );
        assert_eq!(r.executed_watermark(), 0, "no ballot has a quorum yet");
        r.handle_message(
            0,
            5,
            Msg::SlotRead { slot: 0, accepted: entry(b1, value(1)), trimmed: false },
            &mut Out::new(false),
        );
        assert_eq!(r.executed_watermark(), 2, "b1 has f+1 = 2 acceptors: its value is the chosen one");
        // An acceptor of another group, or a stranger, is not heard.
        r.handle_message(
            0,
            99,
            Msg::SlotRead { slot: 2, accepted: None, trimmed: false },
            &mut Out::new(false),
        );
    }

    #[test]
    fn a_snapshot_being_saved_holds_its_trim_and_the_next_snapshot_until_it_is_durable() {
        let tunables =
            Tunables { replica_snapshot_interval_slots: 16, teach_retention_slots: 3, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let mut r = Replica::new(7, config, &tunables, new_state_machine(StateMachineKind::Kv, TEST_KEY), 0);
        let (mut snapshots, mut trims) = (Vec::new(), Vec::new());
        let drain = |out: &mut Out, snapshots: &mut Vec<Slot>, trims: &mut Vec<Slot>| {
            snapshots.extend(out.snapshots.drain(..).map(|(slot, _)| slot));
            trims.extend(out.persist.drain(..).filter_map(|rec| match rec {
                Record::Trim { below } => Some(below),
                _ => None,
            }));
        };
        for slot in 0..40 {
            let mut out = chosen(&mut r, slot, vec![incr(100, slot + 1)]);
            settle(&mut r, &mut out);
            drain(&mut out, &mut snapshots, &mut trims);
        }
        // The disk has not said the snapshot at 16 is durable: its log is all a restart would have.
        assert_eq!(snapshots, vec![16], "one snapshot at a time");
        assert!(trims.is_empty(), "trimmed below a snapshot not yet durable: {trims:?}");
        let mut out = Out::new(true);
        r.snapshot_saved(0, 16, &mut out);
        settle(&mut r, &mut out);
        drain(&mut out, &mut snapshots, &mut trims);
        assert_eq!(trims, vec![16], "the log below the durable snapshot goes");
        assert_eq!(snapshots, vec![16, 40], "the one that came due meanwhile is taken now");
    }

    /// Replica 8 (`ahead`) executes ten slots, then teaches replica 7 (`behind`) from its
    /// watermark by catch-up until they are quiet; `take` sees each of 7's outputs.
    fn teach_ten_slots(
        behind: &mut Replica,
        ahead: &mut Replica,
        mut take: impl FnMut(&mut Replica, &mut Out),
    ) {
        for slot in 0..10 {
            chosen(ahead, slot, vec![put(100, slot + 1, &format!("k{slot}"), 50)]);
        }
        let from_slot = behind.executed_watermark();
        let mut queue = vec![(7, 8, Msg::CatchUp { from_slot, max_slots: MAX_CATCHUP_SLOTS })];
        while let Some((from, to, msg)) = queue.pop() {
            let mut out = Out::new(true);
            if to == 7 {
                behind.handle_message(0, from, msg, &mut out);
                take(behind, &mut out);
            } else {
                ahead.handle_message(0, from, msg, &mut out);
                settle(ahead, &mut out);
            }
            queue.extend(out.msgs.into_iter().map(|(next, m)| (to, next, m)));
        }
    }

    #[test]
    fn a_taught_snapshot_not_yet_durable_keeps_the_reports_at_the_watermark_before_it() {
        let tunables = Tunables { teach_retention_slots: 3, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let new = |id| {
            Replica::new(id, config.clone(), &tunables, new_state_machine(StateMachineKind::Kv, TEST_KEY), 0)
        };
        let (mut behind, mut ahead) = (new(7), new(8));
        chosen(&mut behind, 0, vec![put(100, 1, "k0", 50)]);
        let mut saves = Vec::new();
        teach_ten_slots(&mut behind, &mut ahead, |_, out| saves.append(&mut out.snapshots));
        assert_eq!(behind.executed_watermark(), 10);
        assert_eq!(saves.iter().map(|(slot, _)| *slot).collect::<Vec<_>>(), vec![10]);
        let reported = |r: &mut Replica, now: Time| {
            let mut out = Out::new(true);
            r.handle_timeout(now, &mut out);
            let watermarks: BTreeSet<Slot> = (out.after_persist.iter())
                .filter_map(|(_, m)| match m {
                    Msg::Executed { watermark, .. } => Some(*watermark),
                    _ => None,
                })
                .collect();
            watermarks
        };
        // Its disk holds slot 0's value and nothing of the taught state yet.
        assert_eq!(reported(&mut behind, 1_000_000), BTreeSet::from([1]));
        behind.snapshot_saved(1_000_000, 10, &mut Out::new(true));
        assert_eq!(reported(&mut behind, 2_000_000), BTreeSet::from([10]));
    }

    #[test]
    fn a_taught_snapshot_is_kept_on_disk_and_a_restart_comes_back_at_its_slot() {
        let tunables = Tunables { teach_retention_slots: 3, ..Tunables::default() };
        let config = ClusterConfig::f1(1, 1, 1, 1);
        let new = |id| {
            Replica::new(id, config.clone(), &tunables, new_state_machine(StateMachineKind::Kv, TEST_KEY), 0)
        };
        let (mut behind, mut ahead) = (new(7), new(8));
        let mut disk = Recovered::default();
        teach_ten_slots(&mut behind, &mut ahead, |r, out| keep_on_disk(r, &mut disk, out));
        assert_eq!(behind.executed_watermark(), 10);
        assert_eq!(disk.snapshot.as_ref().map(|(slot, _)| *slot), Some(10));
        let restarted = Replica::recover(
            7,
            config.clone(),
            &tunables,
            new_state_machine(StateMachineKind::Kv, TEST_KEY),
            Storage::Durable,
            disk,
            0,
        )
        .unwrap();
        assert_eq!(restarted.executed_watermark(), 10);
        assert_eq!(restarted.snapshot(), ahead.snapshot());
    }
}
