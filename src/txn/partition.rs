//! One partition's view of transactions: which producers have a transaction open here (and
//! from which offset), the last stable offset, and the index of aborted transactions that a
//! read_committed Fetch returns so consumers can drop aborted records.
//!
//! The broker keeps one [`PartitionTxnState`] in each partition's state, under the same lock as
//! the log, and updates it after every append ([`PartitionTxnState::on_append`]) and marker
//! ([`PartitionTxnState::on_marker`]).
//!
//! Invariants:
//! - `ongoing` holds, for each producer with a transactional batch after its last marker, the
//!   offset of its first such batch; the last stable offset is the smallest of them (or the
//!   high watermark), so no record of an undecided transaction is below it.
//! - `aborted` is sorted by `last_offset` (the abort marker's offset) because markers are
//!   appended in offset order; entries are only dropped below the log start offset.
//! - Memory: `ongoing` is bounded by the coordinator's transactional ids (every transactional
//!   batch passes the coordinator's guard); `aborted` grows with aborted transactions until
//!   retention removes their segments ([`PartitionTxnState::retain_from`]). Kafka keeps the
//!   same index on disk (`.txnindex`); we rebuild it from the log on open instead.
//! - Pure except [`PartitionTxnState::rebuild`], which reads only through the partition's `Log`.

use std::collections::BTreeMap;

use crate::log::{Log, LogError};
use crate::protocol::batch::BatchHeader;

use super::marker::parse_control_batch;
use super::REBUILD_READ_BYTES;

/// One aborted transaction in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Offset of its first record in the transaction.
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ongoing {
    first_offset: i64,
    producer_epoch: i16,
}

/// Transaction bookkeeping of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionTxnState {
    ongoing: BTreeMap<i64, Ongoing>,
    aborted: Vec<AbortedTxn>,
}

impl PartitionTxnState {
    /// Records an appended batch (or run of batches) of `producer_id` spanning
    /// `first_offset..=last_offset`. Only transactional batches matter; the first one after a
    /// marker opens the producer's transaction here.
    pub fn on_append(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        first_offset: i64,
        last_offset: i64,
        is_transactional: bool,
    ) {
        assert!(first_offset <= last_offset, "append {first_offset}..={last_offset}");
        if !is_transactional || producer_id < 0 {
            return;
        }
        let e = self.ongoing.entry(producer_id).or_insert(Ongoing { first_offset, producer_epoch });
        e.producer_epoch = e.producer_epoch.max(producer_epoch);
    }

    /// Records a marker for `producer_id` at `marker_offset`. Closes its open transaction here,
    /// if any, and indexes it when aborted. Returns the closed transaction's first offset. A
    /// marker with no open transaction (a partition added but never written, or a marker
    /// rewritten after a restart) changes nothing.
    pub fn on_marker(&mut self, producer_id: i64, commit: bool, marker_offset: i64) -> Option<i64> {
        let o = self.ongoing.remove(&producer_id)?;
        assert!(o.first_offset < marker_offset, "marker at {marker_offset} before its data at {}", o.first_offset);
        if !commit {
            debug_assert!(self.aborted.last().is_none_or(|a| a.last_offset < marker_offset));
            self.aborted.push(AbortedTxn { producer_id, first_offset: o.first_offset, last_offset: marker_offset });
        }
        Some(o.first_offset)
    }

    /// The last stable offset: the first offset of the oldest open transaction, capped by the
    /// high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.ongoing.values().map(|o| o.first_offset).min().map_or(high_watermark, |f| f.min(high_watermark))
    }

    /// Aborted transactions that overlap `from..to` (`to` exclusive): `last_offset >= from`
    /// and `first_offset < to`, as `(producer_id, first_offset)` in marker order — what a
    /// read_committed Fetch from `from` up to `to` must return.
    pub fn aborted_in_range(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..].iter().filter(|a| a.first_offset < to).map(|a| (a.producer_id, a.first_offset)).collect()
    }

    /// Producers with an open transaction here: `(producer_id, producer_epoch, first_offset)`.
    pub fn ongoing(&self) -> impl Iterator<Item = (i64, i16, i64)> + '_ {
        self.ongoing.iter().map(|(p, o)| (*p, o.producer_epoch, o.first_offset))
    }

    /// Aborted transactions indexed (for tests and metrics).
    pub fn aborted_count(&self) -> usize {
        self.aborted.len()
    }

    /// Forgets aborted transactions wholly below `log_start_offset` (after retention or
    /// DeleteRecords): no fetch can reach them.
    pub fn retain_from(&mut self, log_start_offset: i64) {
        let cut = self.aborted.partition_point(|a| a.last_offset < log_start_offset);
        self.aborted.drain(..cut);
    }

    /// Rebuilds the state by reading every batch header of `log` from its start offset: open
    /// transactions from transactional data batches, closed ones from markers. Costs one
    /// sequential read of the whole log at open (Kafka avoids it with `.txnindex` files and
    /// producer snapshots; that is future work). A transaction whose data begins before the
    /// log start offset (retention cut into it) is tracked from the first batch that remains.
    pub fn rebuild(log: &Log) -> Result<PartitionTxnState, LogError> {
        let mut s = PartitionTxnState::default();
        log.scan_batches(REBUILD_READ_BYTES, |h, batch| s.observe_batch(h, batch))?;
        Ok(s)
    }

    /// Tracks one batch read back from the log (see [`PartitionTxnState::rebuild`]).
    pub fn observe_batch(&mut self, h: &BatchHeader, batch: &[u8]) {
        if h.is_control() {
            if let Some(m) = parse_control_batch(batch) {
                self.on_marker(m.producer_id, m.commit, h.base_offset);
            }
        } else if h.last_offset() >= h.base_offset {
            self.on_append(h.producer_id, h.producer_epoch, h.base_offset, h.last_offset(), h.is_transactional());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lso_follows_the_oldest_open_transaction() {
        // Proves the LSO is the first offset of the oldest open transaction, capped by the high
        // watermark, and advances as markers close transactions.
        let mut s = PartitionTxnState::default();
        assert_eq!(s.last_stable_offset(10), 10);
        s.on_append(1, 0, 0, 1, false); // plain batch: ignored
        s.on_append(7, 0, 2, 3, true);
        s.on_append(8, 0, 4, 4, true);
        s.on_append(7, 0, 5, 6, true); // later batch of the same transaction
        assert_eq!(s.last_stable_offset(7), 2);
        assert_eq!(s.last_stable_offset(1), 1);
        assert_eq!(s.on_marker(7, true, 7), Some(2));
        assert_eq!(s.last_stable_offset(8), 4);
        assert_eq!(s.on_marker(8, false, 8), Some(4));
        assert_eq!(s.last_stable_offset(9), 9);
        assert_eq!(s.on_marker(8, false, 9), None, "a repeated marker changes nothing");
        assert_eq!(s.aborted_count(), 1);
    }

    #[test]
    fn aborted_index_answers_overlapping_ranges() {
        // Proves aborted_in_range returns exactly the aborted transactions overlapping the range,
        // never committed ones, and retain_from drops those below the log start.
        let mut s = PartitionTxnState::default();
        s.on_append(1, 0, 0, 4, true);
        s.on_append(2, 0, 5, 5, true);
        s.on_marker(1, false, 6); // aborted 0..=6
        s.on_append(3, 0, 7, 8, true);
        s.on_marker(2, true, 9); // committed
        s.on_marker(3, false, 10); // aborted 7..=10
        assert_eq!(s.aborted_in_range(0, 100), vec![(1, 0), (3, 7)]);
        assert_eq!(s.aborted_in_range(6, 7), vec![(1, 0)]);
        assert_eq!(s.aborted_in_range(7, 8), vec![(3, 7)]);
        assert_eq!(s.aborted_in_range(0, 7), vec![(1, 0)]);
        assert_eq!(s.aborted_in_range(11, 20), vec![]);
        assert_eq!(s.aborted_in_range(3, 5), vec![(1, 0)]);
        s.retain_from(7);
        assert_eq!(s.aborted_in_range(0, 100), vec![(3, 7)]);
    }

    #[test]
    fn rebuild_from_log_matches_live_tracking() {
        // Proves a state rebuilt by scanning the log equals the one maintained while appending.
        use crate::protocol::batch::build_batch;
        use crate::runtime::MemDisk;
        use std::sync::Arc;
        let config = crate::log::LogConfig {
            segment_bytes: 300,
            segment_ms: i64::MAX,
            retention_ms: -1,
            retention_bytes: -1,
            index_interval_bytes: 64,
        };
        let disk = Arc::new(MemDisk::new());
        let mut log = Log::open(disk.clone(), "/data/t-0".into(), config.clone(), 0).unwrap();
        let mut live = PartitionTxnState::default();
        let txn_batch = |pid: i64| {
            let mut b = build_batch(&[(None, Some(&b"v"[..]), vec![]), (None, Some(&b"w"[..]), vec![])], 0, 0);
            b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
            b[43..51].copy_from_slice(&pid.to_be_bytes());
            b[51..53].copy_from_slice(&0i16.to_be_bytes());
            b[53..57].copy_from_slice(&0i32.to_be_bytes());
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        for round in 0..20i64 {
            for pid in [100 + round % 3, 200] {
                let mut b = txn_batch(pid);
                let h = BatchHeader::parse(&b).unwrap();
                let info = log.append(&mut b, &[h], 0, 0, false).unwrap();
                live.on_append(pid, 0, info.base_offset, info.last_offset, true);
            }
            if round % 2 == 1 {
                let pid = 100 + round % 3;
                let m = super::super::ControlMarker {
                    producer_id: pid,
                    producer_epoch: 0,
                    commit: round % 4 == 1,
                    coordinator_epoch: 1,
                };
                let info = super::super::append_control_batch(&mut log, m, 0, 0, false).unwrap();
                live.on_marker(pid, m.commit, info.base_offset);
            }
        }
        let rebuilt = PartitionTxnState::rebuild(&log).unwrap();
        assert_eq!(rebuilt, live);
        assert!(live.aborted_count() > 0);
        assert!(live.ongoing().count() > 0);
        log.close().unwrap();
        let log = Log::open(disk, "/data/t-0".into(), config, 0).unwrap();
        assert_eq!(PartitionTxnState::rebuild(&log).unwrap(), live);
    }
}
