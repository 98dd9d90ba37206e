//! The leader's replication state for one partition: follower progress, the ISR (with at most
//! one change in flight to the controller, Kafka's AlterPartition flow), the high watermark and
//! the acks=all decision.
//!
//! Invariants (checked by `assert!`/`debug_assert!` and by the model test):
//! - The leader is always in the ISR; the ISR is a subset of the replicas.
//! - `high_watermark <= durable_log_end_offset <= log_end_offset`, and the high watermark never
//!   decreases while this state lives (one leader epoch).
//! - `high_watermark <= durable LEO` reported by every member of the *maximal* ISR (the committed
//!   ISR united with a pending proposal), so a change the controller has not confirmed never lets
//!   the high watermark outrun a replica the controller may still consider in sync.
//! - A follower's progress is recorded only from a fetch whose position was validated against
//!   the leader's epoch cache (no diverging epoch), and is unknown (-1) after election until then.
//!
//! See the module documentation of `replication` for why durable offsets are what count.

use std::collections::BTreeMap;

use super::{EpochEndOffset, LeaderEpochCache, ReplicationError, REPLICAS_MAX};
use crate::protocol::errors;

/// Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND error code (not yet in `protocol::errors`).
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;

/// Value of an offset the leader has not learned yet.
const UNKNOWN_OFFSET: i64 = -1;

/// What the controller says when this broker becomes leader, plus the local log's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInit {
    /// This broker's id.
    pub leader_id: i32,
    /// The new leader epoch.
    pub leader_epoch: i32,
    /// The partition epoch of the assignment (bumped by the controller on every ISR change).
    pub partition_epoch: i32,
    /// All replicas, in assignment order.
    pub replicas: Vec<i32>,
    /// The in-sync replicas as the controller committed them (must include `leader_id`).
    pub isr: Vec<i32>,
    /// The local log end offset.
    pub log_end_offset: i64,
    /// The local durable log end offset (`Log::recovery_point`).
    pub durable_log_end_offset: i64,
    /// The high watermark this replica knew as a follower (or from a checkpoint); clamped to the
    /// durable log end offset.
    pub high_watermark: i64,
    /// Now.
    pub now_ms: i64,
}

/// What the leader knows about one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// The follower's log end offset (its last validated fetch offset), or -1 if unknown.
    pub log_end_offset: i64,
    /// The follower's durable log end offset, or -1 if unknown.
    pub durable_log_end_offset: i64,
    /// The last time the follower was caught up (Kafka's `lastCaughtUpTimeMs`).
    pub last_caught_up_ms: i64,
    /// The time of its last fetch.
    pub last_fetch_ms: i64,
    /// The leader's log end offset at its last fetch (Kafka's `lastFetchLeaderLogEndOffset`).
    pub last_fetch_leader_log_end_offset: i64,
}

/// One partition of a follower's Fetch request (a Fetch with `replica_id >= 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerFetch {
    /// The fetching replica (the request's `replica_id` / `replica_state.replica_id`).
    pub replica_id: i32,
    /// Where it fetches from: its log end offset.
    pub fetch_offset: i64,
    /// Everything below this is fsynced on the follower. Equal to `fetch_offset` in the
    /// sync-before-fetch mode; must not exceed it (larger values are clamped).
    pub durable_log_end_offset: i64,
    /// The epoch of the last batch in its log (Fetch v12+), `None` when it has no data or
    /// did not say.
    pub last_fetched_epoch: Option<i32>,
    /// The leader epoch the follower believes current, `None` for -1 (no check).
    pub current_leader_epoch: Option<i32>,
}

/// Why a follower's fetch is refused (Kafka outcomes, answered in the partition's error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRejection {
    /// The replica is not a follower of this partition: NOT_LEADER_OR_FOLLOWER.
    NotLeaderOrFollower,
    /// The follower's `current_leader_epoch` is older than ours: FENCED_LEADER_EPOCH.
    FencedLeaderEpoch,
    /// The follower's `current_leader_epoch` is newer than ours: UNKNOWN_LEADER_EPOCH.
    UnknownLeaderEpoch,
    /// The fetch offset is beyond our log end offset (and no epoch was given to diagnose
    /// divergence): OFFSET_OUT_OF_RANGE.
    OffsetOutOfRange,
}

impl FetchRejection {
    /// The Kafka error code to answer.
    pub fn error_code(self) -> i16 {
        match self {
            FetchRejection::NotLeaderOrFollower => errors::NOT_LEADER_OR_FOLLOWER,
            FetchRejection::FencedLeaderEpoch => errors::FENCED_LEADER_EPOCH,
            FetchRejection::UnknownLeaderEpoch => errors::UNKNOWN_LEADER_EPOCH,
            FetchRejection::OffsetOutOfRange => errors::OFFSET_OUT_OF_RANGE,
        }
    }
}

/// What a follower's fetch changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchEffect {
    /// The follower's log diverges from ours: answer `diverging_epoch` with this and no records.
    /// Nothing else was recorded.
    pub diverging_epoch: Option<EpochEndOffset>,
    /// The high watermark advanced: complete waiting acks=all produces and fetches.
    pub hw_advanced: bool,
    /// Send AlterPartition proposing this ISR (the follower caught up).
    pub isr_expand: Option<Vec<i32>>,
}

/// The state of a parked acks=all produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCheck {
    /// The high watermark passed the records and the ISR is large enough: answer success.
    Done,
    /// Keep waiting; check again when the high watermark advances or the ISR changes. From
    /// [`LeaderState::acks_all_admit`] it means "admitted: append, then wait".
    Wait,
    /// `|ISR| < min.insync.replicas` before the append: answer NOT_ENOUGH_REPLICAS, do not append.
    NotEnoughReplicas,
    /// The records are committed but the ISR shrank below `min.insync.replicas` meanwhile:
    /// answer NOT_ENOUGH_REPLICAS_AFTER_APPEND, as Kafka does.
    NotEnoughReplicasAfterAppend,
}

impl AckCheck {
    /// The Kafka error code to answer, for the final outcomes (`None` while waiting).
    pub fn error_code(self) -> Option<i16> {
        match self {
            AckCheck::Done => Some(errors::NONE),
            AckCheck::Wait => None,
            AckCheck::NotEnoughReplicas => Some(errors::NOT_ENOUGH_REPLICAS),
            AckCheck::NotEnoughReplicasAfterAppend => Some(NOT_ENOUGH_REPLICAS_AFTER_APPEND),
        }
    }
}

/// The leader's view of one partition for one leader epoch. See the module documentation.
#[derive(Debug, Clone)]
pub struct LeaderState {
    leader_id: i32,
    leader_epoch: i32,
    partition_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    /// The ISR proposed to the controller and not yet confirmed or rejected.
    pending_isr: Option<Vec<i32>>,
    followers: BTreeMap<i32, ReplicaProgress>,
    log_end_offset: i64,
    durable_log_end_offset: i64,
    /// The first offset of this leader epoch (where the epoch cache says it starts).
    epoch_start_offset: i64,
    high_watermark: i64,
}

impl LeaderState {
    /// Becomes leader: validates the assignment, records `leader_epoch` as starting at the log end
    /// offset in the epoch cache (durably, before any batch of the epoch can be appended), and
    /// resets every follower's progress to unknown, as Kafka does (ISR members get a full
    /// `replica.lag.time.max.ms` from now to fetch).
    pub fn new(init: LeaderInit, epochs: &mut LeaderEpochCache) -> Result<LeaderState, ReplicationError> {
        validate_assignment(init.leader_id, &init.replicas, &init.isr)?;
        assert!(
            0 <= init.durable_log_end_offset && init.durable_log_end_offset <= init.log_end_offset,
            "durable log end offset {} outside [0, {}]",
            init.durable_log_end_offset,
            init.log_end_offset
        );
        if epochs.assign(init.leader_epoch, init.log_end_offset)? == super::Assigned::IgnoredStale {
            return Err(ReplicationError::InvalidAssignment(format!(
                "leader epoch {} is older than the cached epoch {:?}",
                init.leader_epoch,
                epochs.latest_epoch()
            )));
        }
        let epoch_start_offset = epochs.latest_entry().expect("just assigned").start_offset;
        let followers = init
            .replicas
            .iter()
            .filter(|&&r| r != init.leader_id)
            .map(|&r| {
                let in_sync = init.isr.contains(&r);
                let progress = ReplicaProgress {
                    log_end_offset: UNKNOWN_OFFSET,
                    durable_log_end_offset: UNKNOWN_OFFSET,
                    last_caught_up_ms: if in_sync { init.now_ms } else { 0 },
                    last_fetch_ms: init.now_ms,
                    last_fetch_leader_log_end_offset: init.log_end_offset,
                };
                (r, progress)
            })
            .collect();
        let mut state = LeaderState {
            leader_id: init.leader_id,
            leader_epoch: init.leader_epoch,
            partition_epoch: init.partition_epoch,
            replicas: init.replicas,
            isr: init.isr,
            pending_isr: None,
            followers,
            log_end_offset: init.log_end_offset,
            durable_log_end_offset: init.durable_log_end_offset,
            epoch_start_offset,
            high_watermark: init.high_watermark.clamp(0, init.durable_log_end_offset),
        };
        state.recompute_high_watermark();
        Ok(state)
    }

    /// This broker's id.
    pub fn leader_id(&self) -> i32 {
        self.leader_id
    }
    /// The leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }
    /// The partition epoch of the last ISR the controller confirmed.
    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }
    /// All replicas.
    pub fn replicas(&self) -> &[i32] {
        &self.replicas
    }
    /// The ISR as the controller last confirmed it (what Metadata and min.insync.replicas use).
    pub fn isr(&self) -> &[i32] {
        &self.isr
    }
    /// The ISR proposed to the controller and not yet answered.
    pub fn pending_isr(&self) -> Option<&[i32]> {
        self.pending_isr.as_deref()
    }
    /// The committed ISR united with a pending proposal: whom the high watermark waits for.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut out = self.isr.clone();
        for &r in self.pending_isr.iter().flatten() {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
    /// The high watermark: consumers read below it; acks=all completes when it passes a batch.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    /// The leader's log end offset as last reported.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }
    /// The leader's durable log end offset as last reported.
    pub fn durable_log_end_offset(&self) -> i64 {
        self.durable_log_end_offset
    }
    /// The first offset of the current leader epoch.
    pub fn epoch_start_offset(&self) -> i64 {
        self.epoch_start_offset
    }
    /// What the leader knows about `replica_id` (a follower), if it is one.
    pub fn progress(&self, replica_id: i32) -> Option<ReplicaProgress> {
        self.followers.get(&replica_id).copied()
    }

    /// The leader appended: its log end offset is now `log_end_offset` (never smaller).
    pub fn on_leader_append(&mut self, log_end_offset: i64) {
        assert!(
            log_end_offset >= self.log_end_offset,
            "leader log end offset went back from {} to {log_end_offset}",
            self.log_end_offset
        );
        self.log_end_offset = log_end_offset;
    }

    /// The leader's log is durable below `durable_log_end_offset` (after `sync_data` and
    /// `Log::mark_flushed`). Returns whether the high watermark advanced.
    pub fn on_leader_flushed(&mut self, durable_log_end_offset: i64) -> bool {
        let durable = durable_log_end_offset.min(self.log_end_offset);
        if durable > self.durable_log_end_offset {
            self.durable_log_end_offset = durable;
        }
        self.recompute_high_watermark()
    }

    /// A follower fetched. Validates it (epochs, divergence, range); records its progress with
    /// Kafka's last-caught-up rule, judged on its *durable* log end offset: it is caught up now
    /// if that reaches our log end offset, or was caught up as of its previous fetch if it
    /// reaches our log end offset at that fetch. Then advances the high watermark and proposes
    /// adding the follower to the ISR when its durable log end offset reaches both the high
    /// watermark and the start of this leader epoch (and no other ISR change is in flight).
    pub fn on_follower_fetch(
        &mut self,
        fetch: &FollowerFetch,
        epochs: &LeaderEpochCache,
        leader_log_end_offset: i64,
        now_ms: i64,
    ) -> Result<FetchEffect, FetchRejection> {
        if fetch.replica_id == self.leader_id || !self.followers.contains_key(&fetch.replica_id) {
            return Err(FetchRejection::NotLeaderOrFollower);
        }
        match fetch.current_leader_epoch {
            Some(e) if e >= 0 && e < self.leader_epoch => return Err(FetchRejection::FencedLeaderEpoch),
            Some(e) if e > self.leader_epoch => return Err(FetchRejection::UnknownLeaderEpoch),
            _ => {}
        }
        // Lenient (max) rather than asserting: a shell may read the log end offset a moment
        // before an append it reports separately.
        self.log_end_offset = self.log_end_offset.max(leader_log_end_offset);
        let leo = self.log_end_offset;
        if let Some(last_epoch) = fetch.last_fetched_epoch.filter(|&e| e >= 0) {
            // Kafka's check (Partition.readRecords): the follower's last epoch must exist here
            // and reach at least its fetch offset, or it holds records we do not.
            let ours = epochs.end_offset_for(last_epoch, leo);
            if ours.epoch < last_epoch || ours.end_offset < fetch.fetch_offset {
                return Ok(FetchEffect { diverging_epoch: Some(ours), ..FetchEffect::default() });
            }
        }
        if fetch.fetch_offset < 0 || fetch.fetch_offset > leo {
            return Err(FetchRejection::OffsetOutOfRange);
        }
        let durable = fetch.durable_log_end_offset.clamp(0, fetch.fetch_offset);
        let p = self.followers.get_mut(&fetch.replica_id).expect("checked above");
        if durable >= leo {
            p.last_caught_up_ms = p.last_caught_up_ms.max(now_ms);
        } else if durable >= p.last_fetch_leader_log_end_offset {
            p.last_caught_up_ms = p.last_caught_up_ms.max(p.last_fetch_ms);
        }
        p.last_fetch_leader_log_end_offset = leo;
        p.last_fetch_ms = now_ms;
        p.log_end_offset = fetch.fetch_offset;
        p.durable_log_end_offset = durable;

        let hw_advanced = self.recompute_high_watermark();
        let isr_expand = self.maybe_expand_isr(fetch.replica_id);
        Ok(FetchEffect { diverging_epoch: None, hw_advanced, isr_expand })
    }

    /// Proposes removing the ISR followers that have not been caught up within
    /// `replica_lag_time_max_ms` (and are not exactly at our log end offset). Returns the
    /// proposed ISR to send with AlterPartition, or `None` if nothing changes or another change
    /// is in flight. Until [`LeaderState::apply_isr`] confirms it, the high watermark still
    /// waits for the followers being removed.
    pub fn maybe_shrink_isr(&mut self, now_ms: i64, replica_lag_time_max_ms: i64) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() {
            return None;
        }
        let leo = self.log_end_offset;
        let out_of_sync = |r: &i32| {
            self.followers.get(r).is_some_and(|p| {
                p.durable_log_end_offset != leo && now_ms.saturating_sub(p.last_caught_up_ms) > replica_lag_time_max_ms
            })
        };
        if !self.isr.iter().any(out_of_sync) {
            return None;
        }
        let proposed: Vec<i32> = self.isr.iter().copied().filter(|r| !out_of_sync(r)).collect();
        debug_assert!(proposed.contains(&self.leader_id));
        self.pending_isr = Some(proposed.clone());
        Some(proposed)
    }

    /// The controller committed `isr` at `partition_epoch` (the answer to our AlterPartition, or
    /// a metadata change at the same leader epoch). Stale partition epochs are ignored. Clears
    /// any pending proposal. Returns whether the high watermark advanced (a shrink can let it).
    pub fn apply_isr(&mut self, isr: Vec<i32>, partition_epoch: i32) -> Result<bool, ReplicationError> {
        if partition_epoch < self.partition_epoch {
            return Ok(false);
        }
        validate_assignment(self.leader_id, &self.replicas, &isr)?;
        self.isr = isr;
        self.partition_epoch = partition_epoch;
        self.pending_isr = None;
        Ok(self.recompute_high_watermark())
    }

    /// The controller rejected our proposal (or it timed out): forget it so a new one can be
    /// made. The ISR stays as last committed.
    pub fn abort_pending_isr(&mut self) {
        self.pending_isr = None;
    }

    /// Before appending an acks=all produce: [`AckCheck::NotEnoughReplicas`] when the committed
    /// ISR is smaller than `min_insync_replicas` (refuse without appending), else
    /// [`AckCheck::Wait`] (append, then wait).
    pub fn acks_all_admit(&self, min_insync_replicas: i32) -> AckCheck {
        if (self.isr.len() as i64) < i64::from(min_insync_replicas) {
            AckCheck::NotEnoughReplicas
        } else {
            AckCheck::Wait
        }
    }

    /// After appending an acks=all produce whose last offset is `required_offset - 1`: done when
    /// the high watermark reached `required_offset` (every member of the maximal ISR fsynced
    /// it), with Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank below
    /// `min_insync_replicas` meanwhile.
    pub fn acks_all_ready(&self, required_offset: i64, min_insync_replicas: i32) -> AckCheck {
        if self.high_watermark < required_offset {
            AckCheck::Wait
        } else if (self.isr.len() as i64) < i64::from(min_insync_replicas) {
            AckCheck::NotEnoughReplicasAfterAppend
        } else {
            AckCheck::Done
        }
    }

    fn maybe_expand_isr(&mut self, replica_id: i32) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() || self.isr.contains(&replica_id) {
            return None;
        }
        let p = self.followers.get(&replica_id)?;
        let durable = p.durable_log_end_offset;
        if durable < self.high_watermark || durable < self.epoch_start_offset {
            return None;
        }
        let mut proposed = self.isr.clone();
        proposed.push(replica_id);
        self.pending_isr = Some(proposed.clone());
        Some(proposed)
    }

    /// Sets the high watermark to the minimum durable log end offset over the maximal ISR if that
    /// is higher. Returns whether it advanced.
    fn recompute_high_watermark(&mut self) -> bool {
        let mut candidate = self.durable_log_end_offset;
        for r in self.maximal_isr() {
            if r != self.leader_id {
                let durable = self.followers.get(&r).map_or(UNKNOWN_OFFSET, |p| p.durable_log_end_offset);
                candidate = candidate.min(durable);
            }
        }
        debug_assert!(self.high_watermark <= self.durable_log_end_offset);
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            true
        } else {
            false
        }
    }
}

fn validate_assignment(leader_id: i32, replicas: &[i32], isr: &[i32]) -> Result<(), ReplicationError> {
    let bad = |why: String| Err(ReplicationError::InvalidAssignment(why));
    if replicas.len() > REPLICAS_MAX {
        return bad(format!("{} replicas exceed {REPLICAS_MAX}", replicas.len()));
    }
    if !isr.contains(&leader_id) {
        return bad(format!("leader {leader_id} not in ISR {isr:?}"));
    }
    if let Some(r) = isr.iter().find(|r| !replicas.contains(r)) {
        return bad(format!("ISR member {r} not in replicas {replicas:?}"));
    }
    let has_dup = |v: &[i32]| v.iter().enumerate().any(|(i, r)| v[..i].contains(r));
    if has_dup(replicas) || has_dup(isr) {
        return bad(format!("duplicate ids in replicas {replicas:?} or ISR {isr:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Disk, MemDisk};
    use std::path::PathBuf;
    use std::sync::Arc;

    const LAG_MS: i64 = 10_000;

    fn cache() -> LeaderEpochCache {
        let disk = MemDisk::new();
        disk.create_dir_all(&PathBuf::from("/p")).unwrap();
        LeaderEpochCache::open(Arc::new(disk), PathBuf::from("/p")).unwrap().0
    }

    /// Leader 1 of replicas [1,2,3] at epoch 5, log end offset 10, all durable, HW 10.
    fn leader(isr: Vec<i32>) -> (LeaderState, LeaderEpochCache) {
        let mut c = cache();
        let init = LeaderInit {
            leader_id: 1,
            leader_epoch: 5,
            partition_epoch: 7,
            replicas: vec![1, 2, 3],
            isr,
            log_end_offset: 10,
            durable_log_end_offset: 10,
            high_watermark: 10,
            now_ms: 0,
        };
        let l = LeaderState::new(init, &mut c).unwrap();
        (l, c)
    }

    fn fetch(replica_id: i32, fetch_offset: i64, durable: i64) -> FollowerFetch {
        FollowerFetch {
            replica_id,
            fetch_offset,
            durable_log_end_offset: durable,
            last_fetched_epoch: Some(5),
            current_leader_epoch: Some(5),
        }
    }

    // Proves the high watermark is the minimum *durable* LEO over the ISR (leader included),
    // that an in-memory-only follower LEO does not count, and that it never moves back.
    #[test]
    fn high_watermark_is_min_durable_leo_over_isr() {
        let (mut l, c) = leader(vec![1, 2, 3]);
        l.on_leader_append(20);
        assert!(!l.on_leader_flushed(20), "followers unknown after election");
        assert!(!l.on_follower_fetch(&fetch(2, 20, 20), &c, 20, 1).unwrap().hw_advanced);
        let e = l.on_follower_fetch(&fetch(3, 20, 15), &c, 20, 1).unwrap();
        assert!(e.hw_advanced);
        assert_eq!(l.high_watermark(), 15, "follower 3 fsynced only to 15");
        l.on_follower_fetch(&fetch(3, 20, 20), &c, 20, 2).unwrap();
        assert_eq!(l.high_watermark(), 20);
        l.on_leader_append(30);
        l.on_follower_fetch(&fetch(2, 30, 30), &c, 30, 3).unwrap();
        l.on_follower_fetch(&fetch(3, 30, 30), &c, 30, 3).unwrap();
        assert_eq!(l.high_watermark(), 20, "leader itself has not fsynced 20..30");
        assert!(l.on_leader_flushed(30));
        assert_eq!(l.high_watermark(), 30);
        // A follower that crashed and restarted reports less; the HW does not go back.
        l.on_follower_fetch(&fetch(2, 25, 25), &c, 30, 4).unwrap();
        assert_eq!(l.high_watermark(), 30);
    }

    // Proves acks=all semantics: refused up front below min.insync.replicas, waits until the HW
    // passes the record, and reports NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR shrank meanwhile.
    #[test]
    fn acks_all_and_not_enough_replicas() {
        let (mut l, c) = leader(vec![1, 2]);
        assert_eq!(l.acks_all_admit(3), AckCheck::NotEnoughReplicas);
        assert_eq!(l.acks_all_admit(3).error_code(), Some(errors::NOT_ENOUGH_REPLICAS));
        assert_eq!(l.acks_all_admit(2), AckCheck::Wait);
        l.on_leader_append(11);
        l.on_leader_flushed(11);
        assert_eq!(l.acks_all_ready(11, 2), AckCheck::Wait, "follower 2 has not fsynced offset 10");
        l.on_follower_fetch(&fetch(2, 11, 10), &c, 11, 1).unwrap();
        assert_eq!(l.acks_all_ready(11, 2), AckCheck::Wait, "fetched but not durable");
        l.on_follower_fetch(&fetch(2, 11, 11), &c, 11, 2).unwrap();
        assert_eq!(l.acks_all_ready(11, 2), AckCheck::Done);
        l.apply_isr(vec![1], 8).unwrap();
        assert_eq!(l.acks_all_ready(11, 2), AckCheck::NotEnoughReplicasAfterAppend);
        assert_eq!(l.acks_all_admit(2), AckCheck::NotEnoughReplicas);
    }

    // Proves Kafka's lag rule and the AlterPartition flow for shrinking: a follower that keeps
    // fetching but never reaches the leader's LEO-at-previous-fetch is removed after the lag
    // time; the HW keeps waiting for it until the controller confirms; then it advances.
    #[test]
    fn isr_shrink_after_lag_time_and_pending_semantics() {
        let (mut l, c) = leader(vec![1, 2, 3]);
        l.on_leader_append(100);
        l.on_leader_flushed(100);
        l.on_follower_fetch(&fetch(2, 100, 100), &c, 100, 1_000).unwrap();
        // Follower 3 fetches often but stays behind the leader LEO of its previous fetch.
        for (i, t) in (2_000..=12_000).step_by(1_000).enumerate() {
            let off = 10 + i as i64;
            l.on_follower_fetch(&fetch(3, off, off), &c, 100, t).unwrap();
        }
        assert_eq!(l.maybe_shrink_isr(9_000, LAG_MS), None, "within the lag time of election");
        // Follower 2 is exactly at the leader LEO: never out of sync even without fetching.
        assert_eq!(l.maybe_shrink_isr(12_000, LAG_MS), Some(vec![1, 2]));
        assert_eq!(l.pending_isr(), Some(&[1, 2][..]));
        assert_eq!(l.maybe_shrink_isr(13_000, LAG_MS), None, "one change in flight");
        assert_eq!(l.high_watermark(), 20, "still waits for follower 3 while the shrink is pending");
        assert!(l.apply_isr(vec![1, 2], 8).unwrap());
        assert_eq!(l.high_watermark(), 100);
        assert!(!l.apply_isr(vec![1, 2, 3], 6).unwrap(), "stale partition epoch ignored");
        assert_eq!(l.isr(), &[1, 2]);
    }

    // Proves Kafka's last-caught-up rule: reaching the leader LEO of the previous fetch counts
    // as caught up at the previous fetch's time, so a follower that keeps up under steady
    // appends stays in the ISR.
    #[test]
    fn follower_keeping_up_under_appends_stays_in_sync() {
        let (mut l, c) = leader(vec![1, 2, 3]);
        let mut leo = 10;
        for t in (1_000..=50_000).step_by(500) {
            let prev = leo;
            leo += 5;
            l.on_leader_append(leo);
            // Each fetch brings the follower to the leader LEO of its previous fetch.
            l.on_follower_fetch(&fetch(2, prev, prev), &c, leo, t).unwrap();
            l.on_follower_fetch(&fetch(3, prev, prev), &c, leo, t).unwrap();
            assert_eq!(l.maybe_shrink_isr(t, LAG_MS), None, "shrunk at {t}");
        }
    }

    // Proves ISR expansion: a non-ISR follower is proposed once its durable LEO reaches both the
    // HW and the start of the leader epoch; during the pending expansion the HW waits for it.
    #[test]
    fn isr_expand_when_durable_reaches_hw_and_epoch_start() {
        let (mut l, c) = leader(vec![1, 2]);
        l.on_leader_append(30);
        l.on_leader_flushed(30);
        l.on_follower_fetch(&fetch(2, 30, 30), &c, 30, 1).unwrap();
        assert_eq!(l.high_watermark(), 30);
        let e = l.on_follower_fetch(&fetch(3, 25, 25), &c, 30, 2).unwrap();
        assert_eq!(e.isr_expand, None, "below the HW");
        let e = l.on_follower_fetch(&fetch(3, 30, 29), &c, 30, 3).unwrap();
        assert_eq!(e.isr_expand, None, "fetched but not durable to the HW");
        let e = l.on_follower_fetch(&fetch(3, 30, 30), &c, 30, 4).unwrap();
        assert_eq!(e.isr_expand, Some(vec![1, 2, 3]));
        assert_eq!(l.maximal_isr(), vec![1, 2, 3]);
        l.on_leader_append(40);
        l.on_leader_flushed(40);
        l.on_follower_fetch(&fetch(2, 40, 40), &c, 40, 5).unwrap();
        assert_eq!(l.high_watermark(), 30, "pending member 3 counts for the HW");
        l.apply_isr(vec![1, 2, 3], 8).unwrap();
        assert_eq!(l.isr(), &[1, 2, 3]);
    }

    // Proves a follower that has not fetched up to the leader epoch's start offset is not added
    // even when it reached the (older) high watermark.
    #[test]
    fn no_expand_below_epoch_start() {
        let mut c = cache();
        let init = LeaderInit {
            leader_id: 1,
            leader_epoch: 2,
            partition_epoch: 0,
            replicas: vec![1, 2, 3],
            isr: vec![1, 3],
            log_end_offset: 50,
            durable_log_end_offset: 50,
            high_watermark: 40,
            now_ms: 0,
        };
        let mut l = LeaderState::new(init, &mut c).unwrap();
        assert_eq!(l.high_watermark(), 40, "waits for follower 3");
        let mut f = fetch(2, 45, 45);
        f.last_fetched_epoch = None;
        f.current_leader_epoch = Some(2);
        assert_eq!(l.on_follower_fetch(&f, &c, 50, 1).unwrap().isr_expand, None, "45 < epoch start 50");
        f.fetch_offset = 50;
        f.durable_log_end_offset = 50;
        assert_eq!(l.on_follower_fetch(&f, &c, 50, 2).unwrap().isr_expand, Some(vec![1, 3, 2]));
    }

    // Proves fetch validation: fenced/unknown epochs, unknown replicas, out-of-range offsets, and
    // a diverging last fetched epoch (answered with our epoch end, progress not recorded).
    #[test]
    fn fetch_validation_and_diverging_epoch() {
        let mut c = cache();
        c.assign(3, 0).unwrap();
        let init = LeaderInit {
            leader_id: 1,
            leader_epoch: 5,
            partition_epoch: 1,
            replicas: vec![1, 2, 3],
            isr: vec![1, 2, 3],
            log_end_offset: 10,
            durable_log_end_offset: 10,
            high_watermark: 0,
            now_ms: 0,
        };
        let mut l = LeaderState::new(init, &mut c).unwrap();
        let mut f = fetch(2, 5, 5);
        f.current_leader_epoch = Some(4);
        assert_eq!(l.on_follower_fetch(&f, &c, 10, 1), Err(FetchRejection::FencedLeaderEpoch));
        f.current_leader_epoch = Some(6);
        assert_eq!(l.on_follower_fetch(&f, &c, 10, 1), Err(FetchRejection::UnknownLeaderEpoch));
        assert_eq!(l.on_follower_fetch(&fetch(9, 5, 5), &c, 10, 1), Err(FetchRejection::NotLeaderOrFollower));
        assert_eq!(l.on_follower_fetch(&fetch(1, 5, 5), &c, 10, 1), Err(FetchRejection::NotLeaderOrFollower));
        let mut f = fetch(2, 11, 11);
        f.last_fetched_epoch = None;
        assert_eq!(l.on_follower_fetch(&f, &c, 10, 1), Err(FetchRejection::OffsetOutOfRange));
        // Follower 2 has epoch 4 records up to 12; we never had epoch 4: epoch 3 ended at 10.
        let mut f = fetch(2, 12, 12);
        f.last_fetched_epoch = Some(4);
        let e = l.on_follower_fetch(&f, &c, 10, 1).unwrap();
        assert_eq!(e.diverging_epoch, Some(EpochEndOffset { epoch: 3, end_offset: 10 }));
        assert_eq!(l.progress(2).unwrap().log_end_offset, -1, "not recorded");
        // Epoch 3 up to 8 is a prefix of ours.
        let mut f = fetch(2, 8, 8);
        f.last_fetched_epoch = Some(3);
        assert_eq!(l.on_follower_fetch(&f, &c, 10, 1).unwrap().diverging_epoch, None);
        assert_eq!(l.progress(2).unwrap().durable_log_end_offset, 8);
    }

    // Proves assignments are validated and the epoch cache records the new epoch at the LEO.
    #[test]
    fn new_validates_and_assigns_epoch() {
        let mut c = cache();
        let mut init = LeaderInit {
            leader_id: 1,
            leader_epoch: 5,
            partition_epoch: 1,
            replicas: vec![1, 2],
            isr: vec![2],
            log_end_offset: 10,
            durable_log_end_offset: 8,
            high_watermark: 9,
            now_ms: 0,
        };
        assert!(LeaderState::new(init.clone(), &mut c).is_err(), "leader not in ISR");
        init.isr = vec![1, 3];
        assert!(LeaderState::new(init.clone(), &mut c).is_err(), "ISR outside replicas");
        init.isr = vec![1, 2];
        let l = LeaderState::new(init.clone(), &mut c).unwrap();
        assert_eq!(l.high_watermark(), 8, "clamped to the durable LEO");
        assert_eq!(c.end_offset_for(5, 10), EpochEndOffset { epoch: 5, end_offset: 10 });
        assert_eq!(l.epoch_start_offset(), 10);
        init.leader_epoch = 4;
        assert!(LeaderState::new(init, &mut c).is_err(), "stale epoch");
    }
}
