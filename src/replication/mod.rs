//! Per-partition replication cores: the leader epoch cache, the leader's view of its followers
//! (ISR, high watermark, acks=all), and the follower's truncation and high watermark.
//!
//! # Architecture invariants
//! - **Sans-IO and deterministic.** Nothing here spawns, awaits, sleeps, reads a clock or opens a
//!   socket: time is a `now_ms` parameter. The only storage is the leader epoch checkpoint,
//!   reached through `Arc<dyn Disk>` ([`epoch_cache`]). The broker shell does the networking
//!   (Fetch, OffsetForLeaderEpoch, AlterPartition) and the log I/O, and feeds results back.
//! - **Durable offsets count.** The high watermark is the minimum *durable* (fsynced) log end
//!   offset over the leader's maximal ISR; ISR membership is judged on durable offsets too.
//! - **Truncation is by leader epoch, never by high watermark alone** (KIP-101, KIP-279, KIP-320).
//!
//! # How the shell drives it
//! Leader (this broker leads the partition at `leader_epoch`):
//! 1. Becoming leader: [`LeaderState::new`] (it assigns `leader_epoch` at the log end offset in
//!    the epoch cache before any batch of the new epoch is appended).
//! 2. Produce: for acks=all call [`LeaderState::acks_all_admit`] first (NOT_ENOUGH_REPLICAS is
//!    answered up front), append with `partition_leader_epoch = leader_epoch`, then
//!    [`LeaderState::on_leader_append`]. Park the request on `required_offset = last_offset + 1`
//!    and re-check [`LeaderState::acks_all_ready`] whenever the high watermark advanced.
//! 3. Flusher: after `sync_data` + `Log::mark_flushed(o)`, call
//!    [`LeaderState::on_leader_flushed`]`(o)`.
//! 4. A follower's Fetch (replica id >= 0): [`LeaderState::on_follower_fetch`] *before* reading;
//!    on `Err` answer the error; if `diverging_epoch` is set answer it with no records; else read
//!    from `fetch_offset` and answer with [`LeaderState::high_watermark`]. If `isr_expand` is set,
//!    send AlterPartition with that ISR.
//! 5. A periodic tick (Kafka: every `replica.lag.time.max.ms / 2`):
//!    [`LeaderState::maybe_shrink_isr`]; send AlterPartition with the proposal if any.
//! 6. The controller's answer (or a metadata record changing the ISR at the same leader epoch):
//!    [`LeaderState::apply_isr`]; on a rejected proposal [`LeaderState::abort_pending_isr`].
//! 7. OffsetForLeaderEpoch from a follower or consumer: [`LeaderEpochCache::end_offset_for`].
//!
//! Follower (this broker follows the partition at `leader_epoch`):
//! 1. Becoming follower: [`FollowerState::new`]; it starts in [`FollowerPhase::Truncating`] when
//!    the local log is non-empty.
//! 2. Either send OffsetForLeaderEpoch([`FollowerState::offset_for_leader_epoch_request`]), or
//!    just fetch (Fetch v12+ with `last_fetched_epoch`): both answers go through
//!    [`FollowerState::on_epoch_end_offset`], which returns a [`Truncation`]. Truncate the log
//!    to its offset, then call [`FollowerState::truncated`] (which truncates the epoch cache
//!    after the log, never before).
//! 3. Fetch with [`FollowerState::fetch_request`]; for each returned batch whose
//!    `partition_leader_epoch` is newer than the cache's latest, `assign(epoch, base_offset)`
//!    *before* appending it; append with `Log::append_as_follower`; then
//!    [`FollowerState::on_fetch_response`].
//! 4. Durability: after a sync covering offset `o`, [`FollowerState::on_flushed`]`(o)`; the next
//!    fetch reports it (see below).
//!
//! # Doing better than Kafka on the last replica standing (KIP-966)
//! **The hole.** Kafka acknowledges acks=all when every ISR member has the record *in memory*
//! (page cache): it does not fsync. If the whole ISR loses power, or the ISR has shrunk to one
//! member that crashes and restarts without its unflushed tail, that member is still in the ISR,
//! is elected leader, and the other replicas (which *do* hold the acknowledged records) truncate
//! to its shorter log: acknowledged records are gone. KIP-966 patches this with Eligible Leader
//! Replicas plus "unclean shutdown" detection that removes a broker that lost its tail from the
//! ELR/ISR, which leaves the partition unavailable when that broker was the last one.
//!
//! **Our rule.** A replica's *durable* log end offset (the offset its log fsynced up to) is what
//! counts:
//! - `high_watermark = min(durable LEO of every member of the maximal ISR, leader included)`;
//! - a follower joins the ISR only when its durable LEO >= high watermark and >= the start of
//!   the current leader epoch (so its log matches the leader's up to there);
//! - acks=all is acknowledged only when `high_watermark > offset`, and consumers are never served
//!   beyond the high watermark.
//!
//! Followers tell the leader their durable LEO in [`FollowerFetch::durable_log_end_offset`].
//! The wire has no such field, so the shell picks one of two documented modes:
//! *sync-before-fetch* (the follower fsyncs what it appended before sending its next Fetch, so
//! `durable_log_end_offset == fetch_offset` and the Fetch needs no new field; one fsync per fetch
//! round, which group-commits everything fetched), or *pipelined* (a Runnel-to-Runnel tagged field
//! on the fetch partition carries the durable offset and the follower keeps fetching while it
//! syncs). Both are sound; the core only requires `durable_log_end_offset <= fetch_offset`.
//!
//! **The argument** (by induction over leader epochs). Let `hw` be any high watermark a leader
//! published (so acknowledged records lie below it), and `o < hw`.
//! 1. When the leader set `hw`, every member of its maximal ISR (the committed ISR plus any
//!    pending addition; during a pending shrink, the old larger ISR) had reported a durable LEO
//!    of at least `hw`, after its log was validated against the leader's by epoch (a follower's
//!    progress is only recorded from a fetch with no diverging epoch, and is reset when a leader
//!    is elected). So each of them holds `o`, identical to the leader's, on durable storage. The
//!    controller's ISR is always a subset of the leader's maximal ISR, because the leader
//!    proposes one change at a time and keeps counting the larger set until it is confirmed.
//! 2. A crash loses only what was not fsynced: offsets at or above that replica's durable LEO,
//!    which is at least `hw`.
//! 3. A replica joins the ISR only with a durable LEO of at least both the current high
//!    watermark and the start of the current leader epoch. The epoch starts at the log end
//!    offset of a leader elected from the ISR, which by induction holds `[0, hw)` for every
//!    earlier `hw`; the joiner's log below that point was validated against the leader's. So it
//!    also holds `o` durably, whether `hw` was published in this epoch or an earlier one.
//! 4. A follower truncates only at the divergence point computed by epoch: the minimum of the
//!    leader's and its own end offset for their largest common epoch. The leader was elected
//!    from the ISR, so it holds `[0, hw)` identically to every ISR member, so every ISR member's
//!    divergence point is at or above `hw`: no ISR member ever truncates below `hw`.
//! 5. Therefore any ISR member, including a sole survivor that crashed and lost its unflushed
//!    tail, holds every acknowledged record, and may safely be elected and make the others
//!    truncate: they lose only records that were never acknowledged. No ELR and no
//!    unclean-shutdown bookkeeping is needed; the partition stays available with one survivor.
//!
//! `model_tests` checks exactly these claims under random crashes, ISR changes and elections,
//! and fails if any one rule above is dropped (HW on in-memory LEO, HW ignoring a pending ISR
//! change, expansion without the epoch-start or durable condition, no divergence check).
//!
//! The cost is that acks=all waits for an fsync on every ISR member (Runnel already fsyncs the
//! leader before acks=all) and consumers see records only after that. The argument assumes that
//! fsynced data survives (no media corruption: a corrupt synced batch cut by log recovery breaks
//! (2), and is a disk failure to handle by taking the replica out of service) and that the epoch
//! cache is never behind the durable log (see [`epoch_cache`]). Election must pick only from the
//! controller's ISR (`unclean.leader.election.enable=false`).

pub mod epoch_cache;
pub mod follower;
pub mod leader;

#[cfg(test)]
mod model_tests;

use std::path::PathBuf;

pub use epoch_cache::{Assigned, CheckpointCorruption, EpochEntry, LeaderEpochCache};
pub use follower::{truncation_offset, FetchRequestFields, FollowerPhase, FollowerState, Truncation};
pub use leader::{AckCheck, FetchEffect, FetchRejection, FollowerFetch, LeaderInit, LeaderState, ReplicaProgress};

/// Kafka's "no epoch" value (`UNDEFINED_EPOCH`).
pub const UNDEFINED_EPOCH: i32 = -1;
/// Kafka's "no offset" value in OffsetForLeaderEpoch answers (`UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;
/// Name of the leader epoch checkpoint file in a partition directory (Kafka's name).
pub const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
/// Largest leader epoch checkpoint file we read; larger files are treated as corrupt.
pub const LEADER_EPOCH_CHECKPOINT_MAX_BYTES: u64 = 4 << 20;
/// Most entries a leader epoch cache holds (each leader election of a partition adds one; old
/// ones go with retention). 100k elections without retention is a bug worth stopping on.
pub const LEADER_EPOCH_CACHE_ENTRIES_MAX: usize = 100_000;
/// Most replicas of one partition we accept from the controller.
pub const REPLICAS_MAX: usize = 255;

// A checkpoint line is at most two numbers (11 + 20 digits), a space and a newline.
const _: () = assert!(LEADER_EPOCH_CACHE_ENTRIES_MAX as u64 * 33 + 64 <= LEADER_EPOCH_CHECKPOINT_MAX_BYTES);

/// An OffsetForLeaderEpoch answer (or a Fetch response's `diverging_epoch`): the largest epoch
/// `<=` the one asked about that the answering replica knows, and where that epoch ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffset {
    /// The epoch, or [`UNDEFINED_EPOCH`].
    pub epoch: i32,
    /// The first offset after that epoch, or [`UNDEFINED_EPOCH_OFFSET`].
    pub end_offset: i64,
}

impl EpochEndOffset {
    /// The `(-1, -1)` answer: the epoch is unknown.
    pub const UNDEFINED: EpochEndOffset = EpochEndOffset { epoch: UNDEFINED_EPOCH, end_offset: UNDEFINED_EPOCH_OFFSET };
}

/// Operating errors of the replication cores. Kafka outcomes (fenced epochs, out of range) are
/// values ([`FetchRejection`], [`AckCheck`]), not these.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// A storage operation on the leader epoch checkpoint failed; the cache is now poisoned.
    #[error("leader epoch checkpoint {op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A previous checkpoint write failed; the cache refuses changes until reopened.
    #[error("leader epoch cache is poisoned by an earlier write failure")]
    Poisoned,
    /// The cache would exceed [`LEADER_EPOCH_CACHE_ENTRIES_MAX`] entries.
    #[error("leader epoch cache would exceed {limit} entries")]
    TooManyEpochs {
        /// The limit.
        limit: usize,
    },
    /// The log holds records but the epoch cache is empty (a corrupt checkpoint not rebuilt from
    /// the batch headers): this replica cannot find its divergence point by epoch.
    #[error("log ends at {log_end_offset} but the leader epoch cache is empty")]
    EpochCacheMissing {
        /// The local log end offset.
        log_end_offset: i64,
    },
    /// The controller's assignment is inconsistent (leader not in the ISR, ISR not within the
    /// replicas, duplicates, too many replicas).
    #[error("invalid partition assignment: {0}")]
    InvalidAssignment(String),
}
