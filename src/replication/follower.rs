//! The follower's replication state for one partition: truncation by leader epoch when it starts
//! following a leader (KIP-101, KIP-279) or when a Fetch answer carries a diverging epoch
//! (KIP-320, Fetch v12+), the fetch position, and the follower's high watermark.
//!
//! Invariants:
//! - Truncation is computed only from leader epochs: the divergence point is the minimum of the
//!   leader's and the follower's end offset for the largest common epoch. An undefined answer
//!   never falls back to the high watermark (Kafka does); the follower asks again instead.
//! - The epoch cache is truncated only after the log ([`FollowerState::truncated`]), so it is
//!   never behind the log.
//! - `high_watermark = min(leader's high watermark, local log end offset)`, never decreasing
//!   while following one leader epoch except by a (never expected) truncation below it.
//! - `durable_log_end_offset <= fetch_offset` (the local log end offset).

use super::{EpochEndOffset, LeaderEpochCache, ReplicationError, UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET};

/// Where a follower is in its protocol with the current leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerPhase {
    /// The local log has not been validated against the leader's yet: send
    /// OffsetForLeaderEpoch, or fetch with `last_fetched_epoch` and handle `diverging_epoch`.
    Truncating,
    /// The local log is a prefix of the leader's; fetch and append.
    Fetching,
}

/// What to do with an OffsetForLeaderEpoch answer or a Fetch `diverging_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Truncate the log to `offset` (nothing to do at or beyond the log end offset); the log is
    /// then a prefix of the leader's.
    Complete {
        /// The truncation offset.
        offset: i64,
    },
    /// The leader answered with an epoch this replica does not have: truncate to `offset` (where
    /// the largest older local epoch ends) and ask again with the new latest local epoch.
    Partial {
        /// The truncation offset.
        offset: i64,
    },
    /// The leader could not say where the epoch ends: do not truncate, ask again later.
    Retry,
}

impl Truncation {
    /// The offset to truncate to, if any.
    pub fn offset(self) -> Option<i64> {
        match self {
            Truncation::Complete { offset } | Truncation::Partial { offset } => Some(offset),
            Truncation::Retry => None,
        }
    }
}

/// The fields of a follower's Fetch for this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRequestFields {
    /// `fetch_offset`: the local log end offset.
    pub fetch_offset: i64,
    /// The durable log end offset to report (see the KIP-966 notes in `replication`).
    pub durable_log_end_offset: i64,
    /// `last_fetched_epoch` (Fetch v12+): the epoch of the last local batch, -1 if none.
    pub last_fetched_epoch: i32,
    /// `current_leader_epoch`.
    pub current_leader_epoch: i32,
}

/// Where to truncate given the leader's answer `leader` for the epoch we asked about (our latest
/// epoch, or our `last_fetched_epoch` in the Fetch path), exactly Kafka's
/// `getOffsetTruncationState` except that an undefined answer means [`Truncation::Retry`] rather
/// than truncating to the high watermark.
pub fn truncation_offset(local: &LeaderEpochCache, local_log_end_offset: i64, leader: EpochEndOffset) -> Truncation {
    if leader.end_offset == UNDEFINED_EPOCH_OFFSET || leader.end_offset < 0 {
        return Truncation::Retry;
    }
    if leader.epoch == UNDEFINED_EPOCH {
        return Truncation::Complete { offset: leader.end_offset.min(local_log_end_offset) };
    }
    let ours = local.end_offset_for(leader.epoch, local_log_end_offset);
    if ours.end_offset == UNDEFINED_EPOCH_OFFSET {
        // We do not know the leader's epoch nor any older one; the leader answered with an
        // epoch <= the one we asked about, so its end offset bounds what we share.
        return Truncation::Complete { offset: leader.end_offset.min(local_log_end_offset) };
    }
    if ours.epoch != leader.epoch {
        return Truncation::Partial { offset: ours.end_offset.min(local_log_end_offset) };
    }
    Truncation::Complete { offset: ours.end_offset.min(leader.end_offset).min(local_log_end_offset) }
}

/// The follower's state for one partition and one leader epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerState {
    leader_id: i32,
    leader_epoch: i32,
    phase: FollowerPhase,
    fetch_offset: i64,
    durable_log_end_offset: i64,
    high_watermark: i64,
}

impl FollowerState {
    /// Starts following `leader_id` at `leader_epoch`. The log must be validated first
    /// ([`FollowerPhase::Truncating`]) unless it is empty. Fails if the log holds records but the
    /// epoch cache is empty (a corrupt checkpoint not yet rebuilt from the batch headers):
    /// without epochs the divergence point cannot be found, and truncating blindly could drop
    /// acknowledged records from an ISR member.
    pub fn new(
        leader_id: i32,
        leader_epoch: i32,
        epochs: &LeaderEpochCache,
        log_start_offset: i64,
        log_end_offset: i64,
        durable_log_end_offset: i64,
        high_watermark: i64,
    ) -> Result<FollowerState, ReplicationError> {
        assert!(
            0 <= log_start_offset && log_start_offset <= log_end_offset,
            "log offsets {log_start_offset}..{log_end_offset}"
        );
        let has_records = log_end_offset > log_start_offset;
        if has_records && epochs.latest_epoch().is_none() {
            return Err(ReplicationError::EpochCacheMissing { log_end_offset });
        }
        let phase = if epochs.latest_epoch().is_some() && log_end_offset > 0 {
            FollowerPhase::Truncating
        } else {
            FollowerPhase::Fetching
        };
        Ok(FollowerState {
            leader_id,
            leader_epoch,
            phase,
            fetch_offset: log_end_offset,
            durable_log_end_offset: durable_log_end_offset.clamp(0, log_end_offset),
            high_watermark: high_watermark.clamp(0, log_end_offset),
        })
    }

    /// The leader being followed.
    pub fn leader_id(&self) -> i32 {
        self.leader_id
    }
    /// The leader epoch being followed.
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }
    /// Truncating or fetching.
    pub fn phase(&self) -> FollowerPhase {
        self.phase
    }
    /// The next offset to fetch (the local log end offset).
    pub fn fetch_offset(&self) -> i64 {
        self.fetch_offset
    }
    /// The local durable log end offset as last reported.
    pub fn durable_log_end_offset(&self) -> i64 {
        self.durable_log_end_offset
    }
    /// The follower's high watermark: `min(leader's high watermark, local log end offset)`.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    /// The epoch to send in OffsetForLeaderEpoch (`leader_epoch` field) while truncating: the
    /// latest local epoch. `None` when there is nothing to validate.
    pub fn offset_for_leader_epoch_request(&self, epochs: &LeaderEpochCache) -> Option<i32> {
        match self.phase {
            FollowerPhase::Truncating => epochs.latest_epoch(),
            FollowerPhase::Fetching => None,
        }
    }

    /// The Fetch fields for this partition. Usable in both phases: while truncating, the
    /// leader's `diverging_epoch` check does the validation (Fetch v12+).
    pub fn fetch_request(&self, epochs: &LeaderEpochCache) -> FetchRequestFields {
        FetchRequestFields {
            fetch_offset: self.fetch_offset,
            durable_log_end_offset: self.durable_log_end_offset,
            last_fetched_epoch: epochs.latest_epoch().unwrap_or(UNDEFINED_EPOCH),
            current_leader_epoch: self.leader_epoch,
        }
    }

    /// The leader answered OffsetForLeaderEpoch, or a Fetch response carried `diverging_epoch`:
    /// where to truncate. Truncate the log, then call [`FollowerState::truncated`].
    pub fn on_epoch_end_offset(&self, epochs: &LeaderEpochCache, leader: EpochEndOffset) -> Truncation {
        truncation_offset(epochs, self.fetch_offset, leader)
    }

    /// The log was truncated as `truncation` said and now ends at `log_end_offset`: truncates
    /// the epoch cache to match (durably) and, for a complete truncation, starts fetching.
    pub fn truncated(
        &mut self,
        epochs: &mut LeaderEpochCache,
        truncation: Truncation,
        log_end_offset: i64,
    ) -> Result<(), ReplicationError> {
        let Some(offset) = truncation.offset() else { return Ok(()) };
        assert!(log_end_offset <= self.fetch_offset.max(offset), "truncation grew the log");
        epochs.truncate_from_end(log_end_offset)?;
        if log_end_offset < self.high_watermark {
            tracing::error!(
                log_end_offset,
                high_watermark = self.high_watermark,
                "follower truncated below its high watermark"
            );
        }
        self.fetch_offset = log_end_offset;
        self.durable_log_end_offset = self.durable_log_end_offset.min(log_end_offset);
        self.high_watermark = self.high_watermark.min(log_end_offset);
        if matches!(truncation, Truncation::Complete { .. }) {
            self.phase = FollowerPhase::Fetching;
        }
        Ok(())
    }

    /// A Fetch response without `diverging_epoch` arrived and its records were appended (the
    /// log now ends at `log_end_offset`): the log is validated, the fetch position moves, and the
    /// high watermark becomes `min(leader_high_watermark, log_end_offset)` if that is higher.
    /// Returns the new high watermark.
    pub fn on_fetch_response(&mut self, leader_high_watermark: i64, log_end_offset: i64) -> i64 {
        assert!(log_end_offset >= self.fetch_offset, "append moved the log end offset back");
        self.phase = FollowerPhase::Fetching;
        self.fetch_offset = log_end_offset;
        self.high_watermark = self.high_watermark.max(leader_high_watermark.min(log_end_offset));
        self.high_watermark
    }

    /// The local log is durable below `durable_log_end_offset`: the next fetch reports it.
    pub fn on_flushed(&mut self, durable_log_end_offset: i64) {
        let d = durable_log_end_offset.min(self.fetch_offset);
        self.durable_log_end_offset = self.durable_log_end_offset.max(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Disk, MemDisk};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn cache_with(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let disk = MemDisk::new();
        disk.create_dir_all(&PathBuf::from("/f")).unwrap();
        let mut c = LeaderEpochCache::open(Arc::new(disk), PathBuf::from("/f")).unwrap().0;
        for &(e, s) in entries {
            c.assign(e, s).unwrap();
        }
        c
    }

    fn eo(epoch: i32, end_offset: i64) -> EpochEndOffset {
        EpochEndOffset { epoch, end_offset }
    }

    // Proves KIP-101's first scenario: the follower has epoch 1 records up to 10 but only 0..8
    // became the leader's (the old leader lost 8..10 and a new epoch 2 started at 8): truncate
    // to min(leader end 8, our end 10) = 8, not to the high watermark.
    #[test]
    fn kip101_truncates_to_leader_epoch_end() {
        let follower = cache_with(&[(1, 0)]);
        let leader = cache_with(&[(1, 0), (2, 8)]);
        let answer = leader.end_offset_for(1, 12);
        assert_eq!(answer, eo(1, 8));
        assert_eq!(truncation_offset(&follower, 10, answer), Truncation::Complete { offset: 8 });
        // A follower that is a strict prefix does not truncate.
        assert_eq!(truncation_offset(&follower, 6, answer), Truncation::Complete { offset: 6 });
    }

    // Proves KIP-279's scenario: the follower's latest epoch (3) is unknown to the leader, which
    // answers with its floor epoch 2; the follower lacks epoch 2 too, so it truncates to where its
    // own epoch 1 ends and asks again, then completes at the leader's end of epoch 1.
    #[test]
    fn kip279_multi_round_truncation() {
        let mut follower = cache_with(&[(1, 0), (3, 10)]);
        let leader = cache_with(&[(1, 0), (2, 8), (4, 15)]);
        let first = leader.end_offset_for(3, 30);
        assert_eq!(first, eo(2, 15));
        let t = truncation_offset(&follower, 20, first);
        assert_eq!(t, Truncation::Partial { offset: 10 });
        follower.truncate_from_end(10).unwrap();
        let second = leader.end_offset_for(follower.latest_epoch().unwrap(), 30);
        assert_eq!(second, eo(1, 8));
        assert_eq!(truncation_offset(&follower, 10, second), Truncation::Complete { offset: 8 });
    }

    // Proves the follower never falls back to the high watermark: an undefined answer means
    // retry, and the request epoch below the leader's first epoch truncates to that first start.
    #[test]
    fn undefined_answer_retries_and_old_epoch_uses_first_start() {
        let follower = cache_with(&[(1, 0)]);
        assert_eq!(truncation_offset(&follower, 10, EpochEndOffset::UNDEFINED), Truncation::Retry);
        let leader = cache_with(&[(3, 5)]);
        let answer = leader.end_offset_for(1, 9);
        assert_eq!(answer, eo(1, 5));
        assert_eq!(truncation_offset(&follower, 10, answer), Truncation::Complete { offset: 5 });
    }

    // Proves the FollowerState flow: truncating phase, truncation of the cache after the log,
    // then fetching with the follower HW = min(leader HW, LEO), never decreasing.
    #[test]
    fn follower_state_flow() {
        let mut epochs = cache_with(&[(1, 0), (2, 10)]);
        let mut f = FollowerState::new(7, 3, &epochs, 0, 14, 12, 9).unwrap();
        assert_eq!(f.phase(), FollowerPhase::Truncating);
        assert_eq!(f.offset_for_leader_epoch_request(&epochs), Some(2));
        let req = f.fetch_request(&epochs);
        assert_eq!(
            (req.fetch_offset, req.durable_log_end_offset, req.last_fetched_epoch, req.current_leader_epoch),
            (14, 12, 2, 3)
        );
        // The leader's epoch 2 ended at 11 (diverging_epoch in a Fetch answer).
        let t = f.on_epoch_end_offset(&epochs, eo(2, 11));
        assert_eq!(t, Truncation::Complete { offset: 11 });
        f.truncated(&mut epochs, t, 11).unwrap();
        assert_eq!((f.phase(), f.fetch_offset(), f.durable_log_end_offset()), (FollowerPhase::Fetching, 11, 11));
        assert_eq!(f.on_fetch_response(20, 15), 15);
        assert_eq!(f.on_fetch_response(18, 25), 18, "min(leader HW, LEO)");
        assert_eq!(f.on_fetch_response(12, 25), 18, "never decreases");
        f.on_flushed(40);
        assert_eq!(f.durable_log_end_offset(), 25, "clamped to the log end offset");
        // Epochs newer than the truncation offset are gone from the cache.
        epochs.assign(3, 25).unwrap();
        f.truncated(&mut epochs, Truncation::Complete { offset: 20 }, 20).unwrap();
        assert_eq!(epochs.latest_epoch(), Some(2));
    }

    // Proves an empty log needs no truncation, and a non-empty log without epochs is refused.
    #[test]
    fn empty_log_fetches_and_missing_epochs_refused() {
        let empty = cache_with(&[]);
        let f = FollowerState::new(1, 1, &empty, 0, 0, 0, 0).unwrap();
        assert_eq!(f.phase(), FollowerPhase::Fetching);
        assert_eq!(f.fetch_request(&empty).last_fetched_epoch, UNDEFINED_EPOCH);
        assert!(matches!(
            FollowerState::new(1, 1, &empty, 0, 5, 5, 0),
            Err(ReplicationError::EpochCacheMissing { log_end_offset: 5 })
        ));
        assert!(FollowerState::new(1, 1, &empty, 5, 5, 5, 0).is_ok(), "all records deleted: nothing to validate");
    }
}
