//! Idempotent-producer bookkeeping for one partition: the last sequence numbers each producer
//! id wrote, so a retried batch is recognised as a duplicate and a gap is refused.
//!
//! Invariant: for every producer id, `batches` holds at most [`RETAINED_BATCHES`] entries in
//! append order, and sequences within them are contiguous. Pure logic, no I/O.

use std::collections::{BTreeMap, VecDeque};

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
}
