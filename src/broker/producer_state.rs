//! Idempotent-producer bookkeeping for one partition: the last sequence numbers each producer
//! id wrote, so a retried batch is recognised as a duplicate and a gap is refused.
//!
//! Invariant: for every producer id, `batches` holds at most [`RETAINED_BATCHES`] entries in
//! append order, and sequences within them are contiguous. Pure logic apart from [`ProducerState::rebuild`], which reads the log.

use std::collections::{BTreeMap, VecDeque};

use crate::log::{Log, LogError};
use crate::protocol::batch::BatchHeader;

/// Batches remembered per producer: Kafka keeps 5, matching max.in.flight for idempotence.
pub const RETAINED_BATCHES: usize = 5;
/// Producer ids remembered per partition before the least recently used is forgotten.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchRecord {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchRecord>,
    last_use: u64,
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// Already written at this base offset: answer success without appending.
    Duplicate(i64),
    /// Refuse with this Kafka error code.
    Reject(i16),
}

/// Per-partition producer state.
#[derive(Debug, Default)]
pub struct ProducerState {
    producers: BTreeMap<i64, ProducerEntry>,
    clock: u64,
}

impl ProducerState {
    /// Checks a batch from `producer_id`/`epoch` with sequences `first_seq..=last_seq`.
    pub fn check(&self, producer_id: i64, epoch: i16, first_seq: i32, last_seq: i32) -> SequenceCheck {
        use crate::protocol::errors::*;
        let Some(p) = self.producers.get(&producer_id) else {
            // Unknown producer (new, or state lost across a restart): accept any starting point.
            return SequenceCheck::Append;
        };
        if epoch < p.epoch {
            return SequenceCheck::Reject(INVALID_PRODUCER_EPOCH);
        }
        if epoch > p.epoch {
            return if first_seq == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER)
            };
        }
        if let Some(b) = p.batches.iter().find(|b| b.first_seq == first_seq && b.last_seq == last_seq) {
            return SequenceCheck::Duplicate(b.base_offset);
        }
        match p.batches.back() {
            Some(last) if first_seq == next_seq(last.last_seq) => SequenceCheck::Append,
            None => SequenceCheck::Append,
            Some(_) => SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER),
        }
    }

    /// Records an appended batch.
    pub fn record(&mut self, producer_id: i64, epoch: i16, first_seq: i32, last_seq: i32, base_offset: i64) {
        self.clock += 1;
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX {
            if let Some((&oldest, _)) = self.producers.iter().min_by_key(|(_, e)| e.last_use) {
                self.producers.remove(&oldest);
            }
        }
        let e = self.producers.entry(producer_id).or_default();
        if epoch != e.epoch {
            e.batches.clear();
            e.epoch = epoch;
        }
        e.last_use = self.clock;
        e.batches.push_back(BatchRecord { first_seq, last_seq, base_offset });
        while e.batches.len() > RETAINED_BATCHES {
            e.batches.pop_front();
        }
    }

    /// Tracks one batch read back from the log or appended by a follower: an idempotent or
    /// transactional data batch is recorded exactly as the leader recorded it when it appended
    /// the batch (one batch per partition per produce request, as Kafka requires from v3), so a
    /// replica that becomes leader recognises a producer's retry of a batch the old leader
    /// wrote but never acknowledged.
    pub fn observe_batch(&mut self, h: &BatchHeader) {
        if h.is_control() || h.producer_id < 0 || h.base_sequence < 0 || h.last_offset_delta < 0 {
            return;
        }
        let last_seq = h.base_sequence.wrapping_add(h.last_offset_delta);
        self.record(h.producer_id, h.producer_epoch, h.base_sequence, last_seq, h.base_offset);
    }

    /// Rebuilds the state from every batch of `log` (one sequential read; see
    /// [`Log::scan_batches`]).
    pub fn rebuild(log: &Log) -> Result<ProducerState, LogError> {
        let mut s = ProducerState::default();
        log.scan_batches(crate::txn::REBUILD_READ_BYTES, |h, _| s.observe_batch(h))?;
        Ok(s)
    }

    /// Forgets everything (after truncation or deletion).
    pub fn clear(&mut self) {
        self.producers.clear();
    }
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::errors::*;

    // Proves a retried batch is a duplicate, a gap is refused, and a fenced epoch is refused.
    #[test]
    fn duplicates_gaps_and_epochs() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(7, 0, 0, 9), SequenceCheck::Append);
        s.record(7, 0, 0, 9, 100);
        assert_eq!(s.check(7, 0, 0, 9), SequenceCheck::Duplicate(100));
        assert_eq!(s.check(7, 0, 11, 12), SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(s.check(7, 0, 10, 12), SequenceCheck::Append);
        s.record(7, 1, 0, 0, 200);
        assert_eq!(s.check(7, 0, 13, 13), SequenceCheck::Reject(INVALID_PRODUCER_EPOCH));
    }

    // Proves a state rebuilt from the log (as at open, or on a replica that appended the
    // leader's batches) answers a producer's retry as the appending leader did: a duplicate
    // at its original offset, the next sequence accepted, a gap refused.
    #[test]
    fn rebuilt_from_log_recognises_retries() {
        use crate::log::{Log, LogConfig};
        use crate::protocol::batch::build_batch;
        use crate::runtime::MemDisk;
        use std::sync::Arc;
        let config = LogConfig {
            segment_bytes: 400,
            segment_ms: i64::MAX,
            retention_ms: -1,
            retention_bytes: -1,
            index_interval_bytes: 64,
        };
        let disk = Arc::new(MemDisk::new());
        let mut log = Log::open(disk.clone(), "/data/p-0".into(), config.clone(), 0).unwrap();
        let batch = |pid: i64, seq: i32, n: usize| {
            let recs: Vec<_> = (0..n).map(|_| (None, Some(&b"v"[..]), vec![])).collect();
            let mut b = build_batch(&recs, 0, 0);
            b[43..51].copy_from_slice(&pid.to_be_bytes());
            b[51..53].copy_from_slice(&3i16.to_be_bytes());
            b[53..57].copy_from_slice(&seq.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let mut live = ProducerState::default();
        let mut appended = Vec::new();
        for i in 0..12 {
            for pid in [7i64, 9] {
                let mut b = batch(pid, i * 2, 2);
                let h = BatchHeader::parse(&b).unwrap();
                assert_eq!(live.check(pid, 3, i * 2, i * 2 + 1), SequenceCheck::Append);
                let info = log.append(&mut b, &[h], 0, 0, false).unwrap();
                live.record(pid, 3, i * 2, i * 2 + 1, info.base_offset);
                appended.push((pid, i * 2, info.base_offset));
            }
        }
        // A batch without a producer id is not tracked.
        let mut plain = build_batch(&[(None, Some(&b"x"[..]), vec![])], 0, 0);
        let h = BatchHeader::parse(&plain).unwrap();
        log.append(&mut plain, &[h], 0, 0, false).unwrap();
        log.close().unwrap();
        let log = Log::open(disk, "/data/p-0".into(), config, 0).unwrap();
        let rebuilt = ProducerState::rebuild(&log).unwrap();
        for &(pid, seq, base) in appended.iter().rev().take(2 * RETAINED_BATCHES) {
            assert_eq!(rebuilt.check(pid, 3, seq, seq + 1), SequenceCheck::Duplicate(base));
            assert_eq!(rebuilt.check(pid, 3, seq, seq + 1), live.check(pid, 3, seq, seq + 1));
        }
        assert_eq!(rebuilt.check(7, 3, 24, 25), SequenceCheck::Append);
        assert_eq!(rebuilt.check(7, 3, 26, 27), SequenceCheck::Reject(OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(rebuilt.check(9, 2, 24, 24), SequenceCheck::Reject(INVALID_PRODUCER_EPOCH));
    }
}
