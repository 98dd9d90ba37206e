//! Tests of the partition log: round trips, rolling, reads, timestamp lookups, retention,
//! clean and unclean reopen (MemDisk crashes with torn tails, flipped bits), StdDisk, and a
//! property test over random operation sequences.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;
use crate::protocol::batch::{build_batch, build_batch_with_timestamps, validate_produce, RecordSpec, ValidateOptions};
use crate::runtime::{MemDisk, StdDisk};

fn vopts() -> ValidateOptions {
    ValidateOptions {
        max_message_bytes: 1 << 24,
        require_keys: false,
        now_ms: 0,
        log_append_time: false,
        timestamp_before_max_ms: i64::MAX,
        timestamp_after_max_ms: i64::MAX,
    }
}

/// A batch of `n` records with `value_len`-byte values, all at timestamp `ts`.
fn batch(n: usize, value_len: usize, ts: i64, seed: u8) -> Vec<u8> {
    let value: Vec<u8> = (0..value_len).map(|i| (i as u8).wrapping_add(seed)).collect();
    let recs: Vec<RecordSpec> = (0..n).map(|_| (Some(&b"key"[..]), Some(&value[..]), vec![])).collect();
    build_batch(&recs, ts, 0)
}

/// Validates and appends `b`; returns the info and the bytes as stored.
fn append(log: &mut Log, mut b: Vec<u8>, now_ms: i64) -> (AppendInfo, Vec<u8>) {
    let headers = validate_produce(&b, &vopts()).unwrap();
    let info = log.append(&mut b, &headers, 3, now_ms, false).unwrap();
    (info, b)
}

/// Reads everything from the log start offset to the end, as a list of stored batches.
fn read_all(log: &Log) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let r = log.read(offset, 1 << 16, i64::MAX, true).unwrap();
        assert!(!r.records.is_empty(), "no progress at {offset}");
        let mut pos = 0;
        while pos < r.records.len() {
            let h = BatchHeader::parse(&r.records[pos..]).unwrap();
            assert!(crc_ok(&r.records[pos..]));
            out.push(r.records[pos..pos + h.total_len()].to_vec());
            offset = h.last_offset() + 1;
            pos += h.total_len();
        }
    }
    out
}

fn flush(log: &mut Log) {
    if let Some((files, offset)) = log.unflushed() {
        for f in files {
            f.sync_data().unwrap();
        }
        log.mark_flushed(offset);
    }
}

fn small_config() -> LogConfig {
    LogConfig { segment_bytes: 4096, index_interval_bytes: 300, ..LogConfig::default() }
}

fn mem_log(config: LogConfig) -> (MemDisk, Log, PathBuf) {
    let disk = MemDisk::new();
    let dir = PathBuf::from("/data/topic-0");
    let log = Log::open(Arc::new(disk.clone()), dir.clone(), config, 0).unwrap();
    (disk, log, dir)
}

fn segment_count(disk: &dyn Disk, dir: &Path) -> usize {
    disk.list(dir).unwrap().iter().filter(|n| n.ends_with(".log")).count()
}

fn base_of(b: &[u8]) -> i64 {
    BatchHeader::parse(b).unwrap().base_offset
}

#[test]
fn append_read_round_trip_with_dense_offsets() {
    // Proves appended batches read back byte-identical, with dense offsets and the leader epoch stamped.
    let (_disk, mut log, _) = mem_log(LogConfig::default());
    let mut stored = Vec::new();
    for i in 0..20 {
        let (info, b) = append(&mut log, batch(1 + i % 4, 100, 1000 + i as i64, i as u8), 5);
        let expected_base =
            stored.iter().map(|b: &Vec<u8>| BatchHeader::parse(b).unwrap().records_count as i64).sum::<i64>();
        assert_eq!(info.base_offset, expected_base);
        assert_eq!(info.last_offset, expected_base + (i % 4) as i64);
        assert_eq!(info.log_append_time_ms, -1);
        stored.push(b);
    }
    assert_eq!(read_all(&log), stored);
    assert_eq!(BatchHeader::parse(&stored[7]).unwrap().partition_leader_epoch, 3);
    assert_eq!(log.log_end_offset(), 50);
    assert_eq!(log.read(50, 1000, i64::MAX, true).unwrap().records.len(), 0);
    assert!(matches!(log.read(51, 1000, i64::MAX, true), Err(LogError::OffsetOutOfRange { .. })));
}

#[test]
fn log_append_time_is_stamped() {
    // Proves LogAppendTime appends stamp now_ms into the stored batch and report it.
    let (_disk, mut log, _) = mem_log(LogConfig::default());
    let mut b = batch(3, 10, 1, 0);
    let headers = validate_produce(&b, &vopts()).unwrap();
    let info = log.append(&mut b, &headers, 0, 777, true).unwrap();
    assert_eq!(info.log_append_time_ms, 777);
    let r = log.read(0, 1 << 20, i64::MAX, true).unwrap();
    assert!(crc_ok(&r.records));
    assert_eq!(record_timestamps_and_offsets(&r.records).unwrap(), vec![(0, 777), (1, 777), (2, 777)]);
}

#[test]
fn rolls_by_size_and_reads_cross_segments() {
    // Proves the log rolls when the active segment would exceed segment_bytes and reads continue across segments.
    let (disk, mut log, dir) = mem_log(small_config());
    let mut stored = Vec::new();
    for i in 0..40 {
        stored.push(append(&mut log, batch(2, 200, 0, i), 0).1);
    }
    assert!(segment_count(&disk, &dir) >= 4);
    assert_eq!(read_all(&log), stored);
    for s in log.segments.values() {
        assert!(s.size <= 4096);
    }
    // A read starting at every offset returns the batch containing it first.
    for off in 0..log.log_end_offset() {
        let r = log.read(off, 1 << 20, i64::MAX, false).unwrap();
        let h = BatchHeader::parse(&r.records).unwrap();
        assert!(h.base_offset <= off && off <= h.last_offset());
    }
}

#[test]
fn rolls_by_time() {
    // Proves segment_ms rolls on append and through maybe_roll, and never rolls an empty segment.
    let config = LogConfig { segment_ms: 100, ..LogConfig::default() };
    let (disk, mut log, dir) = mem_log(config);
    log.maybe_roll(1_000).unwrap();
    assert_eq!(segment_count(&disk, &dir), 1);
    append(&mut log, batch(1, 10, 0, 0), 1_000);
    append(&mut log, batch(1, 10, 0, 0), 1_050);
    assert_eq!(segment_count(&disk, &dir), 1);
    append(&mut log, batch(1, 10, 0, 0), 1_100);
    assert_eq!(segment_count(&disk, &dir), 2);
    log.maybe_roll(1_150).unwrap();
    assert_eq!(segment_count(&disk, &dir), 2);
    log.maybe_roll(1_200).unwrap();
    assert_eq!(segment_count(&disk, &dir), 3);
    log.maybe_roll(5_000).unwrap();
    assert_eq!(segment_count(&disk, &dir), 3);
    assert_eq!(log.read(3, 100, i64::MAX, true).unwrap().records.len(), 0);
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn max_bytes_min_one_batch_and_max_offset() {
    // Proves reads stop at max_bytes on batch boundaries, return one oversized batch only with min_one_batch, and stop at max_offset.
    let (_disk, mut log, _) = mem_log(LogConfig::default());
    let b = append(&mut log, batch(2, 500, 0, 0), 0).1;
    let len = b.len();
    for _ in 0..9 {
        append(&mut log, batch(2, 500, 0, 0), 0);
    }
    let r = log.read(0, len * 3 + 10, i64::MAX, false).unwrap();
    assert_eq!(r.records.len(), len * 3);
    let r = log.read(3, len - 1, i64::MAX, false).unwrap();
    assert!(r.records.is_empty());
    let r = log.read(3, 1, i64::MAX, true).unwrap();
    assert_eq!(r.records.len(), len);
    assert_eq!(base_of(&r.records), 2);
    // High watermark 6: batches based at 0, 2, 4 only.
    let r = log.read(0, 1 << 20, 6, true).unwrap();
    assert_eq!(r.records.len(), len * 3);
    let r = log.read(6, 1 << 20, 6, true).unwrap();
    assert!(r.records.is_empty());
    // A high watermark inside a batch still returns that batch (its base is below it).
    let r = log.read(0, 1 << 20, 5, true).unwrap();
    assert_eq!(r.records.len(), len * 3);
    assert_eq!((r.log_start_offset, r.log_end_offset), (0, 20));
}

#[test]
fn offset_for_timestamp_is_record_level() {
    // Proves offset_for_timestamp finds the first record (not batch) with timestamp >= target, across segments.
    let (_disk, mut log, _) =
        mem_log(LogConfig { segment_bytes: 1000, index_interval_bytes: 200, ..LogConfig::default() });
    let recs: Vec<RecordSpec> = (0..4).map(|_| (Some(&b"k"[..]), Some(&b"v"[..]), vec![])).collect();
    for i in 0..30i64 {
        let t = 1000 * i;
        // Timestamps inside a batch are out of order on purpose.
        let ts = [t + 10, t + 5, t + 30, t + 20];
        append(&mut log, build_batch_with_timestamps(&recs, &ts, (i % 3) as u8), 0);
    }
    assert!(log.segments.len() > 2);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 10)));
    assert_eq!(log.offset_for_timestamp(5_011).unwrap(), Some((5 * 4 + 2, 5_030)));
    assert_eq!(log.offset_for_timestamp(5_010).unwrap(), Some((5 * 4, 5_010)));
    assert_eq!(log.offset_for_timestamp(17_021).unwrap(), Some((17 * 4 + 2, 17_030)));
    assert_eq!(log.offset_for_timestamp(17_031).unwrap(), Some((18 * 4, 18_010)));
    assert_eq!(log.offset_for_timestamp(29_031).unwrap(), None);
    assert_eq!(log.max_timestamp(), Some((29_030, 29 * 4 + 2)));
}

#[test]
fn retention_by_time_and_size_advances_log_start() {
    // Proves retention deletes whole old segments (never the active one) and advances log_start_offset.
    let config = LogConfig { retention_ms: 10_000, ..small_config() };
    let (disk, mut log, dir) = mem_log(config.clone());
    for i in 0..40i64 {
        append(&mut log, batch(2, 200, i * 1000, 0), i * 1000);
    }
    let segs = segment_count(&disk, &dir);
    let deleted = log.enforce_retention(45_000).unwrap();
    assert!(deleted > 0 && deleted < segs);
    assert!(log.log_start_offset() > 0);
    assert_eq!(log.log_start_offset(), *log.segments.keys().next().unwrap());
    assert_eq!(segment_count(&disk, &dir), segs - deleted);
    // Everything still present is newer than now - retention (except possibly inside the first segment).
    assert!(matches!(log.read(0, 100, i64::MAX, true), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(read_all(&log).len() as i64, (log.log_end_offset() - log.log_start_offset()) / 2);
    // Nothing expires far in the future except non-active segments.
    log.enforce_retention(1 << 40).unwrap();
    assert_eq!(log.segments.len(), 1);

    // Size-based.
    let config = LogConfig { retention_bytes: 5000, ..small_config() };
    let (_disk, mut log, _) = mem_log(config);
    for _ in 0..40 {
        append(&mut log, batch(2, 200, 0, 0), 0);
    }
    let before = log.size_bytes();
    log.enforce_retention(0).unwrap();
    assert!(log.size_bytes() >= 5000 && log.size_bytes() < before);
    assert!(log.log_start_offset() > 0);
}

#[test]
fn delete_records_before_is_persisted() {
    // Proves DeleteRecords advances log_start_offset, refuses beyond the end, and survives unclean reopen.
    let (disk, mut log, dir) = mem_log(small_config());
    for _ in 0..30 {
        append(&mut log, batch(2, 200, 0, 0), 0);
    }
    assert_eq!(log.delete_records_before(21).unwrap(), 21);
    assert_eq!(log.delete_records_before(5).unwrap(), 21);
    assert!(log.delete_records_before(61).is_err());
    let r = log.read(21, 1 << 20, i64::MAX, true).unwrap();
    let h = BatchHeader::parse(&r.records).unwrap();
    assert!(h.base_offset <= 21 && h.last_offset() >= 21);
    flush(&mut log);
    drop(log);
    let log = Log::open(Arc::new(disk.clone()), dir.clone(), small_config(), 0).unwrap();
    assert_eq!(log.log_start_offset(), 21);
    assert_eq!(log.log_end_offset(), 60);
}

#[test]
fn clean_reopen_restores_state_without_scanning() {
    // Proves close + open restores the same state, and trusts the files (a flipped bit is not noticed, so no scan ran).
    let (disk, mut log, dir) = mem_log(small_config());
    for i in 0..40i64 {
        append(&mut log, batch(2, 200, i, 0), 0);
    }
    let stored = read_all(&log);
    let (leo, lso, maxts) = (log.log_end_offset(), log.log_start_offset(), log.max_timestamp());
    let t = log.offset_for_timestamp(20).unwrap();
    log.close().unwrap();
    assert!(matches!(log.append(&mut [], &[], 0, 0, false), Err(LogError::Closed)));
    // Corrupt a record value in the middle of the first segment: a scan would truncate there.
    disk.flip_bit(&dir.join("00000000000000000000.log"), 1000, 3);
    let mut log = Log::open(Arc::new(disk.clone()), dir.clone(), small_config(), 0).unwrap();
    assert!(!disk.exists(&dir.join(CLEAN_SHUTDOWN_FILE)));
    assert_eq!((log.log_end_offset(), log.log_start_offset(), log.max_timestamp()), (leo, lso, maxts));
    assert_eq!(log.offset_for_timestamp(20).unwrap(), t);
    assert_eq!(read_all_unchecked(&log).len(), stored.len());
    let (info, _) = append(&mut log, batch(1, 10, 0, 0), 0);
    assert_eq!(info.base_offset, leo);
}

/// Like read_all but without CRC checks (for the deliberately corrupted clean-reopen test).
fn read_all_unchecked(log: &Log) -> Vec<Vec<u8>> {
    let r = log.read(log.log_start_offset(), usize::MAX, i64::MAX, true).unwrap();
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    let mut buf = r.records.to_vec();
    loop {
        let mut pos = 0;
        while pos < buf.len() {
            let h = BatchHeader::parse(&buf[pos..]).unwrap();
            out.push(buf[pos..pos + h.total_len()].to_vec());
            offset = h.last_offset() + 1;
            pos += h.total_len();
        }
        if offset >= log.log_end_offset() {
            return out;
        }
        buf = log.read(offset, usize::MAX, i64::MAX, true).unwrap().records.to_vec();
    }
}

#[test]
fn crash_keeps_flushed_prefix_and_serves_no_corrupt_batch() {
    // Proves after crashes with random torn tails every offset below the last mark_flushed survives identically and the log is a clean prefix.
    for seed in 0..60u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (disk, mut log, dir) = mem_log(small_config());
        let mut stored: Vec<Vec<u8>> = Vec::new();
        for round in 0..4 {
            for _ in 0..rng.random_range(1..30) {
                let n = rng.random_range(1..5);
                let len = rng.random_range(0..400);
                stored.push(append(&mut log, batch(n, len, round, rng.random()), 0).1);
                if rng.random_bool(0.2) {
                    flush(&mut log);
                }
            }
            let flushed = log.recovery_point();
            let mut crash_rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + round as u64);
            disk.crash(|_, n| if crash_rng.random_bool(0.5) { crash_rng.random_range(0..=n) } else { 0 });
            drop(log);
            log = Log::open(Arc::new(disk.clone()), dir.clone(), small_config(), 0).unwrap();
            assert!(log.log_end_offset() >= flushed, "seed {seed}: lost flushed data");
            let got = read_all(&log);
            assert!(got.len() <= stored.len());
            assert_eq!(got[..], stored[..got.len()], "seed {seed}: not a prefix");
            stored.truncate(got.len());
            let leo = stored.last().map(|b| BatchHeader::parse(b).unwrap().last_offset() + 1).unwrap_or(0);
            assert_eq!(log.log_end_offset(), leo);
        }
    }
}

#[test]
fn flipped_bit_in_tail_is_truncated() {
    // Proves unclean recovery cuts the log at a batch whose CRC no longer matches.
    let (disk, mut log, dir) = mem_log(LogConfig::default());
    let mut stored = Vec::new();
    for i in 0..10 {
        stored.push(append(&mut log, batch(2, 100, 0, i), 0).1);
    }
    flush(&mut log);
    drop(log);
    let pos_of_8: usize = stored[..8].iter().map(|b| b.len()).sum();
    disk.flip_bit(&dir.join("00000000000000000000.log"), pos_of_8 + 70, 1);
    // Unclean reopen with a recovery point beyond the damage: open only trusts whole non-active segments.
    let log = Log::open(Arc::new(disk.clone()), dir.clone(), LogConfig::default(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 16);
    assert_eq!(read_all(&log), stored[..8].to_vec());
}

#[test]
fn robust_to_garbage_names_empty_dir_and_zero_length_segments() {
    // Proves open ignores foreign files, removes orphan indexes, and handles zero-length segments.
    let disk = MemDisk::new();
    let dir = PathBuf::from("/d/t-1");
    disk.create_dir_all(&dir).unwrap();
    for name in ["garbage.log", "123.log", "00000000000000000000.tmp", "00000000000000000077.index", "notes"] {
        disk.open(&dir.join(name), true).unwrap().write_at(b"xx", 0).unwrap();
    }
    disk.open(&dir.join("00000000000000000000.log"), true).unwrap();
    disk.open(&dir.join("00000000000000000050.log"), true).unwrap();
    let mut log = Log::open(Arc::new(disk.clone()), dir.clone(), LogConfig::default(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
    assert!(!disk.exists(&dir.join("00000000000000000077.index")));
    assert!(!disk.exists(&dir.join("00000000000000000050.log")));
    assert!(disk.exists(&dir.join("notes")));
    append(&mut log, batch(1, 1, 0, 0), 0);
    assert_eq!(read_all(&log).len(), 1);

    let (_d, log, _) = mem_log(LogConfig::default());
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.size_bytes()), (0, 0, 0));
    assert!(log.unflushed().is_none());
    assert_eq!(log.max_timestamp(), None);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
}

#[test]
fn truncate_to_drops_suffix_durably() {
    // Proves truncate_to removes everything from the given batch boundary on, across segments, and it stays removed after a crash.
    let (disk, mut log, dir) = mem_log(small_config());
    let mut stored = Vec::new();
    for i in 0..40 {
        stored.push(append(&mut log, batch(2, 200, 0, i), 0).1);
    }
    flush(&mut log);
    log.truncate_to(30).unwrap();
    assert_eq!(log.log_end_offset(), 30);
    assert_eq!(log.recovery_point(), 30);
    let (info, b) = append(&mut log, batch(1, 5, 0, 9), 0);
    assert_eq!(info.base_offset, 30);
    disk.crash(|_, _| 0);
    drop(log);
    let log = Log::open(Arc::new(disk.clone()), dir.clone(), small_config(), 0).unwrap();
    let got = read_all(&log);
    assert_eq!(got[..15], stored[..15]);
    assert!(got.len() == 15 || (got.len() == 16 && got[15] == b));

    let (_disk, mut log, _) = mem_log(small_config());
    for i in 0..10 {
        append(&mut log, batch(2, 200, 0, i), 0);
    }
    log.truncate_to(0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 0));
}

#[test]
fn truncate_below_log_start_starts_a_fresh_segment_there() {
    // Proves truncating to an offset below the log start (not a segment base) replaces every
    // segment with one empty segment at that offset: the log stays usable and appends continue
    // from there, and a reopen agrees.
    let (disk, mut log, dir) = mem_log(small_config());
    for i in 0..20 {
        append(&mut log, batch(2, 200, 0, i), 0);
    }
    flush(&mut log);
    log.delete_records_before(20).unwrap();
    log.truncate_to(7).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 7));
    assert_eq!(segment_count(&disk, &dir), 1);
    let (info, _) = append(&mut log, batch(1, 5, 0, 9), 0);
    assert_eq!(info.base_offset, 7);
    flush(&mut log);
    drop(log);
    let log = Log::open(Arc::new(disk.clone()), dir.clone(), small_config(), 0).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (7, 8));
}

#[test]
fn poisoned_log_refuses_writes() {
    // Proves a poisoned log refuses appends and close leaves no clean-shutdown marker.
    let (disk, mut log, dir) = mem_log(LogConfig::default());
    append(&mut log, batch(1, 1, 0, 0), 0);
    log.poison();
    assert!(log.is_poisoned());
    let mut b = batch(1, 1, 0, 0);
    let h = validate_produce(&b, &vopts()).unwrap();
    assert!(matches!(log.append(&mut b, &h, 0, 0, false), Err(LogError::Poisoned)));
    assert_eq!(log.read(0, 100, i64::MAX, true).unwrap().records.len(), 71.max(b.len()));
    assert!(log.close().is_err());
    assert!(!disk.exists(&dir.join(CLEAN_SHUTDOWN_FILE)));
}

#[test]
fn follower_append_requires_dense_valid_batches() {
    // Proves append_as_follower stores leader bytes verbatim and refuses gaps and corrupt batches.
    let (_d, mut leader, _) = mem_log(small_config());
    for i in 0..10 {
        append(&mut leader, batch(3, 100, 0, i), 0);
    }
    let (_d2, mut follower, _) = mem_log(small_config());
    let mut offset = 0;
    while offset < leader.log_end_offset() {
        let r = leader.read(offset, 700, i64::MAX, true).unwrap();
        let info = follower.append_as_follower(&r.records).unwrap();
        assert_eq!(info.base_offset, offset);
        offset = info.last_offset + 1;
    }
    assert_eq!(read_all(&follower), read_all(&leader));
    let r = leader.read(3, 700, i64::MAX, true).unwrap();
    assert!(follower.append_as_follower(&r.records).is_err());
    let mut b = batch(1, 1, 0, 0);
    assign_offsets(&mut b, 30, 0, None);
    let n = b.len();
    b[n - 1] ^= 1;
    assert!(follower.append_as_follower(&b).is_err());
}

fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(name).tempdir().unwrap()
}

#[test]
fn std_disk_round_trip_and_clean_reopen() {
    // Proves the log works on the real filesystem: round trip, roll, close, reopen.
    let tmp = temp_dir("runnel-log");
    let dir = tmp.path().join("t-0");
    let disk: Arc<dyn Disk> = Arc::new(StdDisk);
    let mut log = Log::open(disk.clone(), dir.clone(), small_config(), 0).unwrap();
    let mut stored = Vec::new();
    for i in 0..30 {
        stored.push(append(&mut log, batch(2, 300, i, i as u8), 0).1);
    }
    assert_eq!(read_all(&log), stored);
    log.close().unwrap();
    let log = Log::open(disk.clone(), dir.clone(), small_config(), 0).unwrap();
    assert_eq!(read_all(&log), stored);
    delete_log(&*disk, &dir).unwrap();
    assert!(!dir.exists());
}

#[test]
fn std_disk_unclean_reopen_recovers() {
    // Proves an unclean reopen on the real filesystem rebuilds indexes and truncates a torn tail.
    let tmp = temp_dir("runnel-log");
    let dir = tmp.path().join("t-0");
    let disk: Arc<dyn Disk> = Arc::new(StdDisk);
    let mut log = Log::open(disk.clone(), dir.clone(), small_config(), 0).unwrap();
    let mut stored = Vec::new();
    for i in 0..30 {
        stored.push(append(&mut log, batch(2, 300, i, i as u8), 0).1);
    }
    flush(&mut log);
    drop(log);
    // Tear the last batch and wipe an index.
    let last_seg = disk.list(&dir).unwrap().into_iter().rfind(|n| n.ends_with(".log")).unwrap();
    let f = disk.open(&dir.join(&last_seg), false).unwrap();
    f.set_len(f.len().unwrap() - 5).unwrap();
    let idx = disk.open(&dir.join(last_seg.replace(".log", ".index")), false).unwrap();
    idx.write_at(&[0xff; 7], 0).unwrap();
    let log = Log::open(disk.clone(), dir.clone(), small_config(), 0).unwrap();
    assert_eq!(read_all(&log), stored[..29].to_vec());
}

#[derive(Debug, Clone)]
enum Op {
    Append { batches: usize, records: usize, value_len: usize },
    Flush,
    Roll,
    Truncate(u8),
    ReopenClean,
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..3, 1usize..5, 0usize..600).prop_map(|(batches, records, value_len)| Op::Append { batches, records, value_len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Roll),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => Just(Op::ReopenClean),
        1 => any::<u64>().prop_map(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_operations_keep_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        // Proves appends, rolls, truncations and clean/unclean reopens keep offsets dense and reads exact.
        let config = LogConfig { segment_bytes: 3000, index_interval_bytes: 500, segment_ms: 10, ..LogConfig::default() };
        let (disk, mut log, dir) = mem_log(config.clone());
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut now = 0i64;
        for op in ops {
            now += 1;
            match op {
                Op::Append { batches, records, value_len } => {
                    let mut payload = Vec::new();
                    for i in 0..batches {
                        payload.extend(batch(records, value_len, now, i as u8));
                    }
                    let headers = validate_produce(&payload, &vopts()).unwrap();
                    let info = log.append(&mut payload, &headers, 1, now, false).unwrap();
                    prop_assert_eq!(info.base_offset, model.iter().map(|b| BatchHeader::parse(b).unwrap().records_count as i64).sum::<i64>());
                    let mut pos = 0;
                    for h in &headers {
                        model.push(payload[pos..pos + h.total_len()].to_vec());
                        pos += h.total_len();
                    }
                }
                Op::Flush => flush(&mut log),
                Op::Roll => log.maybe_roll(now + 100).unwrap(),
                Op::Truncate(x) => {
                    if !model.is_empty() {
                        let keep = x as usize % (model.len() + 1);
                        let at = if keep == model.len() { log.log_end_offset() } else { base_of(&model[keep]) };
                        log.truncate_to(at).unwrap();
                        model.truncate(keep);
                    }
                }
                Op::ReopenClean => {
                    log.close().unwrap();
                    log = Log::open(Arc::new(disk.clone()), dir.clone(), config.clone(), now).unwrap();
                }
                Op::Crash(seed) => {
                    let flushed = log.recovery_point();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    disk.crash(|_, n| rng.random_range(0..=n));
                    drop(log);
                    log = Log::open(Arc::new(disk.clone()), dir.clone(), config.clone(), now).unwrap();
                    prop_assert!(log.log_end_offset() >= flushed);
                    let got = read_all(&log);
                    prop_assert!(got.len() <= model.len());
                    prop_assert_eq!(&got[..], &model[..got.len()]);
                    model.truncate(got.len());
                }
            }
            prop_assert_eq!(log.log_start_offset(), 0);
            let expected_leo = model.last().map(|b| BatchHeader::parse(b).unwrap().last_offset() + 1).unwrap_or(0);
            prop_assert_eq!(log.log_end_offset(), expected_leo);
            prop_assert_eq!(&read_all(&log), &model);
        }
    }
}
