//! `ControllerQuorum`: one controller's replica of the metadata log, a raft-rs `RawNode` over
//! [`DiskStorage`], shaped like raft-rs itself (`tick` / `step` / `propose` / `ready`).
//!
//! The core performs no networking, spawns nothing, reads no clock and sleeps never. Logical time
//! arrives as [`ControllerQuorum::tick`]; randomness comes from the `seed` given to `open`;
//! storage goes through `Arc<dyn Disk>` synchronously inside [`ControllerQuorum::ready`] (so the
//! shell calls `ready` from a blocking context).
//!
//! Invariants:
//! - Messages are handed out only after everything they depend on (entries, votes, hard state)
//!   was written and `sync_data` returned Ok. A failed write or sync poisons the quorum: every
//!   later call returns [`ControllerError::Poisoned`] and the shell must reopen from disk.
//! - Committed records are applied to the image in log order, exactly once per process
//!   lifetime; `open` replays the snapshot plus committed entries, so after `open` the image is
//!   the locally known committed state.
//! - Election timeouts are drawn from a seeded generator, never from the OS: after every call
//!   into raft-rs that may have reset the timer (a change of term, role or known leader) the
//!   randomized timeout is overwritten from our RNG. With the same seeds and the same inputs
//!   every node makes the same decisions, in tests and under madsim alike.
//! - The voter set is fixed at first open and checked on every reopen (no membership changes).

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{Config, RawNode, StateRole};

use super::metadata::{ApplyError, MetadataImage, MetadataRecord, RECORD_BYTES_MAX};
use super::storage::{DiskStorage, StorageOpenError, VOTERS_MAX};
use crate::runtime::Disk;

/// Ticks without hearing from a leader before a follower campaigns (randomized per election
/// in `[ELECTION_TICKS, 2 * ELECTION_TICKS)`).
pub const ELECTION_TICKS: usize = 10;
/// Ticks between leader heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// The tick interval the shell should use: 50 ms gives a 0.5-1 s election timeout, which
/// leaves room in a 2 s failover budget for broker fencing and leader election.
pub const RECOMMENDED_TICK_INTERVAL_MS: u64 = 50;
/// Largest append message raft-rs builds (bytes of entries).
pub const MESSAGE_ENTRIES_BYTES_MAX: u64 = 1024 * 1024;
/// Append messages in flight to one follower.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;
/// Bytes of proposed-but-uncommitted entries the leader accepts before dropping proposals.
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Applied entries after which the image is snapshotted and the log compacted.
pub const SNAPSHOT_INTERVAL_ENTRIES: u64 = 1024;
/// Largest encoded peer message `decode_message` accepts (a snapshot rides in one message).
pub const MESSAGE_BYTES_MAX: usize = super::metadata::IMAGE_BYTES_MAX + 1024 * 1024;
/// Raft ready rounds processed by one `ready()` call (each round persists, then applies).
pub const READY_ROUNDS_MAX: usize = 16;

const _: () = assert!(HEARTBEAT_TICKS < ELECTION_TICKS, "heartbeats must come faster than elections");
const _: () = assert!(RECORD_BYTES_MAX as u64 <= MESSAGE_ENTRIES_BYTES_MAX, "a record must fit one message");

/// Operating errors of the controller quorum.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// This node is not the active controller; `leader` is the one it knows of, if any.
    #[error("not the active controller (leader: {leader:?})")]
    NotLeader {
        /// The known leader's node id.
        leader: Option<u64>,
    },
    /// The proposal was dropped (leadership transfer in progress or too much uncommitted data);
    /// retry later.
    #[error("proposal dropped")]
    ProposalDropped,
    /// The encoded record is larger than [`RECORD_BYTES_MAX`].
    #[error("record of {0} bytes is too large")]
    RecordTooLarge(usize),
    /// `open` was given a bad node id or voter list.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The voters on disk differ from the ones given to `open`.
    #[error("voters on disk {on_disk:?} differ from configured {configured:?}")]
    VotersMismatch {
        /// Stored in the snapshot.
        on_disk: Vec<u64>,
        /// Given to `open`.
        configured: Vec<u64>,
    },
    /// A peer message could not be decoded, was not addressed to us, or came from a non-voter.
    #[error("bad peer message: {0}")]
    BadMessage(String),
    /// Storage failed; the quorum is now poisoned.
    #[error("controller storage i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The snapshot on disk or from the leader does not decode.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
    /// A committed entry does not decode as a record (a bug or corruption on the leader).
    #[error("undecodable committed entry at index {0}")]
    CorruptEntry(u64),
    /// An earlier `ready()` failed (storage, a corrupt snapshot or entry) and poisoned this
    /// quorum; reopen it from disk.
    #[error("controller quorum poisoned by an earlier failure")]
    Poisoned,
    /// raft-rs refused the operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

impl From<StorageOpenError> for ControllerError {
    fn from(e: StorageOpenError) -> Self {
        match e {
            StorageOpenError::Io(e) => ControllerError::Io(e),
            StorageOpenError::CorruptSnapshot(s) => ControllerError::CorruptSnapshot(s),
        }
    }
}

/// A committed record that the image rejected (a stale or raced proposal); the image is
/// unchanged and every replica rejected it the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Log index of the entry.
    pub index: u64,
    /// The record.
    pub record: MetadataRecord,
    /// Why it did not apply.
    pub error: ApplyError,
}

/// The work one `ready()` call produced, already persisted and applied.
#[derive(Debug, Default)]
pub struct ControllerReady {
    /// Peer messages to send, as (destination node id, `encode_message` bytes). They may be sent
    /// in any order, dropped or duplicated; Raft tolerates all of that.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Records newly committed and applied to the image, in log order.
    pub committed: Vec<MetadataRecord>,
    /// Committed records the image rejected, in log order.
    pub rejected: Vec<RejectedRecord>,
    /// A snapshot from the leader replaced the image wholesale: re-read [`ControllerQuorum::image`]
    /// instead of relying on `committed` alone.
    pub snapshot_installed: bool,
    /// The known leader changed during this call (see [`ControllerQuorum::leader_id`]).
    pub leader_changed: bool,
}

/// A small deterministic generator (SplitMix64) for election timeouts.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One controller's replica of the metadata quorum. See the module docs.
pub struct ControllerQuorum {
    node: RawNode<DiskStorage>,
    image: MetadataImage,
    rng: SplitMix64,
    /// (term, role, leader) after the last call into raft-rs; a change means the election timer
    /// may have been reset and is re-randomized from `rng`.
    timer_key: (u64, StateRole, u64),
    applied: u64,
    voters: Vec<u64>,
    poisoned: bool,
    last_leader: u64,
}

impl ControllerQuorum {
    /// Opens node `node_id` of the quorum `voters`, with its log and snapshot under `dir` on
    /// `disk` (created on first open), and election timeouts drawn from `seed`. Every voter must
    /// be opened with the same voter list; it is stored at first open and checked afterwards.
    pub fn open(
        node_id: u64,
        voters: Vec<u64>,
        disk: Arc<dyn Disk>,
        dir: &Path,
        seed: u64,
    ) -> Result<Self, ControllerError> {
        let mut voters = voters;
        voters.sort_unstable();
        voters.dedup();
        if node_id == 0 || voters.contains(&0) || !voters.contains(&node_id) || voters.len() > VOTERS_MAX {
            return Err(ControllerError::InvalidConfig(format!("node {node_id} with voters {voters:?}")));
        }
        let storage = DiskStorage::open(disk, dir, &voters, MetadataImage::new().encode())?;
        let mut on_disk = storage.snapshot_ref().get_metadata().get_conf_state().voters.clone();
        on_disk.sort_unstable();
        if on_disk != voters {
            return Err(ControllerError::VotersMismatch { on_disk, configured: voters });
        }
        let (image, applied) = replay(&storage)?;
        let config = Config {
            id: node_id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: MESSAGE_ENTRIES_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config, storage, &logger)?;
        let mut quorum = ControllerQuorum {
            node,
            image,
            rng: SplitMix64(seed ^ node_id.wrapping_mul(0xA076_1D64_78BD_642F)),
            timer_key: (u64::MAX, StateRole::Follower, u64::MAX),
            applied,
            voters,
            poisoned: false,
            last_leader: raft::INVALID_ID,
        };
        quorum.rerandomize_election_timer();
        Ok(quorum)
    }

    /// Advances logical time by one tick (call every [`RECOMMENDED_TICK_INTERVAL_MS`]).
    pub fn tick(&mut self) {
        if self.poisoned {
            return;
        }
        self.node.tick();
        self.rerandomize_election_timer();
    }

    /// Feeds one message from a peer. Messages for another node, from a non-voter, or of a
    /// local-only type are refused.
    pub fn step(&mut self, msg: Message) -> Result<(), ControllerError> {
        self.check_poisoned()?;
        if msg.to != self.node.raft.id {
            return Err(ControllerError::BadMessage(format!("addressed to {}", msg.to)));
        }
        if !self.voters.contains(&msg.from) || msg.from == msg.to {
            return Err(ControllerError::BadMessage(format!("from non-voter {}", msg.from)));
        }
        let result = self.node.step(msg);
        self.rerandomize_election_timer();
        result.map_err(|e| match e {
            raft::Error::StepLocalMsg | raft::Error::StepPeerNotFound => ControllerError::BadMessage(e.to_string()),
            e => ControllerError::Raft(e),
        })
    }

    /// Proposes a record. Ok means it was appended to the leader's log, not that it committed:
    /// it commits (and may still be rejected by the image) when it comes out of `ready()`.
    pub fn propose(&mut self, record: &MetadataRecord) -> Result<(), ControllerError> {
        self.check_poisoned()?;
        if !self.is_leader() {
            return Err(ControllerError::NotLeader { leader: self.leader_id() });
        }
        let data = record.encode();
        if data.len() > RECORD_BYTES_MAX {
            return Err(ControllerError::RecordTooLarge(data.len()));
        }
        let result = self.node.propose(Vec::new(), data);
        self.rerandomize_election_timer();
        result.map_err(|e| match e {
            raft::Error::ProposalDropped => ControllerError::ProposalDropped,
            e => ControllerError::Raft(e),
        })
    }

    /// Persists (synchronously, through the `Disk` seam), applies and hands out everything raft-rs
    /// has ready. Call after every `tick`, `step` or `propose` batch, from a blocking context.
    pub fn ready(&mut self) -> Result<ControllerReady, ControllerError> {
        self.check_poisoned()?;
        let leader_before = self.last_leader;
        let mut out = ControllerReady::default();
        for _ in 0..READY_ROUNDS_MAX {
            if !self.node.has_ready() {
                break;
            }
            if let Err(e) = self.ready_round(&mut out) {
                // A Ready that was taken but not advanced leaves raft-rs mid-step: poison on any
                // failure, and let the shell reopen from disk.
                self.poisoned = true;
                return Err(e);
            }
        }
        self.rerandomize_election_timer();
        self.last_leader = self.node.raft.leader_id;
        out.leader_changed = self.last_leader != leader_before;
        Ok(out)
    }

    /// One raft-rs Ready: persist snapshot, entries and hard state, sync, then release messages
    /// and apply committed entries, then the LightReady the same way.
    fn ready_round(&mut self, out: &mut ControllerReady) -> Result<(), ControllerError> {
        let mut rd = self.node.ready();
        let mut messages = rd.take_messages();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let image =
                MetadataImage::decode(&snap.data).map_err(|e| ControllerError::CorruptSnapshot(e.to_string()))?;
            self.node.mut_store().install_snapshot(snap.clone())?;
            self.image = image;
            self.applied = snap.get_metadata().index;
            out.snapshot_installed = true;
        }
        let committed = rd.take_committed_entries();
        self.node.mut_store().append(rd.entries())?;
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs)?;
        }
        // Sync before any message leaves or raft-rs counts these entries as persisted.
        self.node.store().sync()?;
        messages.extend(rd.take_persisted_messages());
        self.apply_entries(committed, out)?;
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.node.store().hard_state().clone();
            hs.commit = commit;
            // Not synced here: a lost commit index is relearned from the leader.
            self.node.mut_store().set_hard_state(&hs)?;
        }
        messages.extend(light.take_messages());
        self.apply_entries(light.take_committed_entries(), out)?;
        self.node.advance_apply();
        for m in messages {
            let bytes = encode_message(&m);
            out.messages.push((m.to, bytes));
        }
        self.maybe_compact()?;
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut ControllerReady) -> Result<(), ControllerError> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.applied = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue; // the leader's empty entry at the start of its term
            }
            let record = MetadataRecord::decode(&e.data).map_err(|_| ControllerError::CorruptEntry(e.index))?;
            match self.image.apply(&record) {
                Ok(()) => out.committed.push(record),
                Err(error) => out.rejected.push(RejectedRecord { index: e.index, record, error }),
            }
        }
        Ok(())
    }

    /// Snapshots the image and compacts the log every [`SNAPSHOT_INTERVAL_ENTRIES`].
    fn maybe_compact(&mut self) -> Result<(), ControllerError> {
        let snap_index = self.node.store().snapshot_ref().get_metadata().index;
        if self.applied >= snap_index + SNAPSHOT_INTERVAL_ENTRIES {
            let image = self.image.encode();
            self.node.mut_store().compact(self.applied, image)?;
        }
        Ok(())
    }

    /// Whether this node is the active controller.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The leader this node knows of, if any.
    pub fn leader_id(&self) -> Option<u64> {
        match self.node.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(id),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node.raft.id
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Index of the last entry applied to the image.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The committed metadata as this node knows it.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// The voters of the quorum (sorted).
    pub fn voters(&self) -> &[u64] {
        &self.voters
    }

    fn check_poisoned(&self) -> Result<(), ControllerError> {
        if self.poisoned {
            Err(ControllerError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Overwrites raft-rs's election timeout (drawn from `thread_rng`) with one from our seeded
    /// RNG whenever the timer may have been reset. raft-rs resets it only when it becomes
    /// follower, candidate or leader, each of which changes the term, the role or the leader.
    fn rerandomize_election_timer(&mut self) {
        let raft = &self.node.raft;
        let key = (raft.term, raft.state, raft.leader_id);
        if key != self.timer_key {
            self.timer_key = key;
            let timeout = ELECTION_TICKS + (self.rng.next_u64() % ELECTION_TICKS as u64) as usize;
            self.node.raft.set_randomized_election_timeout(timeout);
        }
    }
}

/// Rebuilds the image from the snapshot plus the committed entries in the log.
fn replay(storage: &DiskStorage) -> Result<(MetadataImage, u64), ControllerError> {
    let snap = storage.snapshot_ref();
    let mut image = MetadataImage::decode(&snap.data).map_err(|e| ControllerError::CorruptSnapshot(e.to_string()))?;
    let first = snap.get_metadata().index + 1;
    let commit = storage.hard_state().commit;
    for e in storage.entries_range(first, commit + 1) {
        if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
            let record = MetadataRecord::decode(&e.data).map_err(|_| ControllerError::CorruptEntry(e.index))?;
            let _ = image.apply(&record); // rejections replay identically
        }
    }
    Ok((image, commit))
}

/// Encodes a peer message for the wire.
pub fn encode_message(msg: &Message) -> Vec<u8> {
    msg.write_to_bytes().expect("protobuf encoding of a raft message cannot fail")
}

/// Decodes a peer message from the wire; never panics.
pub fn decode_message(bytes: &[u8]) -> Result<Message, ControllerError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(ControllerError::BadMessage(format!("{} bytes", bytes.len())));
    }
    Message::parse_from_bytes(bytes).map_err(|e| ControllerError::BadMessage(e.to_string()))
}
