//! Segmented partition logs over the storage seam (Kafka's on-disk layout).
//!
//! A partition directory holds segments `{base_offset:020}.log` with sparse `.index` and
//! `.timeindex` files, plus three small files of our own: `recovery-point-checkpoint`,
//! `log-start-offset-checkpoint` (each an i64 and its CRC32C) and the `clean-shutdown`
//! marker written by [`Log::close`].
//!
//! Architecture invariants:
//! - Storage is reached only through `Arc<dyn Disk>` / `Arc<dyn File>`; time only through
//!   `now_ms` parameters. Nothing here spawns, sleeps or reads a clock.
//! - Offsets are dense: the log holds every offset in `[segment 0 base, log_end_offset)`, in
//!   batches stored exactly as appended, and `log_start_offset <= log_end_offset`.
//! - Everything below `recovery_point` has been made durable (a flusher synced it and called
//!   [`Log::mark_flushed`]). After a crash, open keeps all of it and recovers segments from the
//!   one containing the recovery point: the log is cut at the first partial or corrupt batch,
//!   so no corrupt batch is ever served.
//! - After a failed fsync the caller calls [`Log::poison`]; the log then refuses writes.
//! - Append does one `write_at` for all of its batches (index entries are buffered); read does
//!   one `read_at` for the bytes it returns (plus header reads to locate them).

mod index;
mod segment;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::protocol::batch::{assign_offsets, crc_ok, record_timestamps_and_offsets, BatchHeader, BATCH_HEADER_LEN};
use crate::runtime::{Disk, File};
use segment::{parse_segment_name, BatchMeta, Segment};

/// Name of the recovery point checkpoint file in a partition directory.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-checkpoint";
/// Name of the log start offset checkpoint file in a partition directory.
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset-checkpoint";
/// Name of the marker written by a clean [`Log::close`].
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// Per-partition log settings (Kafka topic configs of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would exceed this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a non-empty active segment this long after its first append.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 is unlimited.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: bytes between offset index entries.
    pub index_interval_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
        }
    }
}

/// Errors of the partition log.
#[derive(Debug, Error)]
pub enum LogError {
    /// The storage seam reported an error.
    #[error("log I/O error: {0}")]
    Io(#[from] io::Error),
    /// The requested offset is outside `[log_start_offset, log_end_offset]`.
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// The log's first offset.
        log_start_offset: i64,
        /// One past the log's last offset.
        log_end_offset: i64,
    },
    /// Stored bytes are not a valid batch (e.g. media corruption since the log was opened).
    #[error("corrupt segment {path:?} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad batch.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// A write or fsync failed earlier; the log refuses writes until reopened.
    #[error("log is poisoned by an earlier storage failure")]
    Poisoned,
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// The caller passed batches inconsistent with their headers or with the log end offset.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// The LogAppendTime stamped on the batches, or -1 with CreateTime.
    pub log_append_time_ms: i64,
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadInfo {
    /// Whole batches, byte for byte as stored; empty when nothing is readable.
    pub records: Bytes,
    /// The log's first offset at the time of the read.
    pub log_start_offset: i64,
    /// The log end offset at the time of the read.
    pub log_end_offset: i64,
}

/// A partition's segmented log. See the module documentation for the invariants.
pub struct Log {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    config: LogConfig,
    /// Segments by base offset; the last one is the active segment. Never empty.
    segments: BTreeMap<i64, Segment>,
    log_start_offset: i64,
    recovery_point: i64,
    recovery_point_file: Arc<dyn File>,
    log_start_offset_file: Arc<dyn File>,
    poisoned: bool,
    closed: bool,
    /// The latest `now_ms` seen, used where no time is passed in (follower appends).
    clock_ms: i64,
}

fn read_checkpoint(file: &dyn File) -> io::Result<Option<i64>> {
    let mut buf = [0u8; 12];
    if file.len()? < 12 {
        return Ok(None);
    }
    file.read_exact_at(&mut buf, 0)?;
    let crc = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&buf[..8]) != crc {
        return Ok(None);
    }
    Ok(Some(i64::from_be_bytes(buf[..8].try_into().expect("8 bytes"))))
}

fn write_checkpoint(file: &dyn File, value: i64, sync: bool) -> io::Result<()> {
    let mut buf = [0u8; 12];
    buf[..8].copy_from_slice(&value.to_be_bytes());
    let crc = crc32c::crc32c(&buf[..8]);
    buf[8..].copy_from_slice(&crc.to_be_bytes());
    file.write_at(&buf, 0)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

impl Log {
    /// Opens (creating if needed) the log in `dir`. After a clean shutdown the segments and
    /// index files are trusted; otherwise every segment from the one containing the recovery
    /// point is scanned and cut at the first partial or corrupt batch, later segments are
    /// deleted, and indexes are rebuilt.
    pub fn open(disk: Arc<dyn Disk>, dir: PathBuf, config: LogConfig, now_ms: i64) -> Result<Log, LogError> {
        disk.create_dir_all(&dir)?;
        let names = disk.list(&dir)?;
        let mut bases = Vec::new();
        for name in &names {
            match parse_segment_name(name) {
                Some((base, "log")) => bases.push(base),
                Some((base, _)) if !names.contains(&format!("{base:020}.log")) => {
                    disk.remove_file(&dir.join(name))?; // orphan index of a deleted segment
                }
                _ => {}
            }
        }
        bases.sort_unstable();
        let recovery_point_file = disk.open(&dir.join(RECOVERY_POINT_FILE), true)?;
        let log_start_offset_file = disk.open(&dir.join(LOG_START_OFFSET_FILE), true)?;
        let checkpointed_recovery_point = read_checkpoint(&*recovery_point_file)?.unwrap_or(0);
        let checkpointed_log_start = read_checkpoint(&*log_start_offset_file)?;
        let clean_path = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = disk.exists(&clean_path);
        if clean {
            disk.remove_file(&clean_path)?;
            disk.sync_dir(&dir)?;
        }
        let mut segments = BTreeMap::new();
        let mut expected_next: Option<i64> = None;
        for (i, &base) in bases.iter().enumerate() {
            if expected_next.is_some_and(|e| e != base) {
                // A gap after a truncated segment: this and later segments are garbage.
                for &b in &bases[i..] {
                    tracing::warn!(dir = %dir.display(), base_offset = b, "deleting segment after recovered tail");
                    Segment::delete_files(&*disk, &dir, b)?;
                }
                break;
            }
            let next_base = bases.get(i + 1).copied();
            let mut seg = Segment::open(&*disk, &dir, base, now_ms, false)?;
            let trusted = clean || next_base.is_some_and(|nb| nb <= checkpointed_recovery_point);
            if trusted {
                seg.load(next_base, config.index_interval_bytes)?;
            } else {
                seg.recover(config.index_interval_bytes)?;
            }
            expected_next = Some(seg.next_offset);
            segments.insert(base, seg);
        }
        let mut log = Log {
            disk,
            dir,
            config,
            segments,
            log_start_offset: 0,
            recovery_point: 0,
            recovery_point_file,
            log_start_offset_file,
            poisoned: false,
            closed: false,
            clock_ms: now_ms,
        };
        let first_base = log.segments.keys().next().copied();
        let log_start = checkpointed_log_start.unwrap_or(0).max(first_base.unwrap_or(0));
        if first_base.is_none() || log_start > log.log_end_offset() {
            // Empty directory, or DeleteRecords moved the start past what survived a crash:
            // start afresh at the log start offset, which never goes backwards.
            log.replace_all_segments(log_start)?;
        }
        log.log_start_offset = log_start;
        // Everything kept was either already durable or just scanned and synced.
        log.recovery_point = log.log_end_offset();
        write_checkpoint(&*log.recovery_point_file, log.recovery_point, true)?;
        write_checkpoint(&*log.log_start_offset_file, log.log_start_offset, true)?;
        log.disk.sync_dir(&log.dir)?;
        Ok(log)
    }

    /// Deletes every segment and starts an empty one at `offset`.
    /// Replaces every segment with one empty segment at `offset`. The new segment exists before
    /// any old one is dropped, so the log always has an active segment: a failure (a full disk
    /// refusing the new segment, say) leaves either the old log untouched or, part way through,
    /// a poisoned log; it never leaves no segment at all (which used to panic the next reader,
    /// seen with a planted bug in the simulation, and reachable with ENOSPC).
    fn replace_all_segments(&mut self, offset: i64) -> Result<(), LogError> {
        let old: Vec<i64> = self.segments.keys().copied().filter(|b| *b != offset).collect();
        let interval = self.config.index_interval_bytes;
        if !self.segments.contains_key(&offset) {
            // Nothing has changed if this fails.
            let seg = Segment::create(&*self.disk, &self.dir, offset, self.clock_ms)?;
            seg.sync()?;
            self.segments.insert(offset, seg);
        }
        // From here on a failure leaves a mix of old and new: poison the log (serve nothing more).
        let result = (|| {
            let seg = self.segments.get_mut(&offset).expect("inserted above");
            if seg.next_offset > offset {
                seg.log.set_len(0)?;
                seg.recover(interval)?;
                seg.sync()?;
            }
            for b in old {
                self.segments.remove(&b);
                Segment::delete_files(&*self.disk, &self.dir, b)?;
            }
            self.disk.sync_dir(&self.dir)?;
            Ok(())
        })();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if self.closed {
            Err(LogError::Closed)
        } else if self.poisoned {
            Err(LogError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Replaces the log's settings (after a topic config change); they apply from the next
    /// append, roll or retention round.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// The first offset a consumer may read.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// One past the last offset in the log.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// Bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Everything below this offset is durable.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    /// Marks the log unusable for writes after a failed fsync (sled/fjall style: never retry
    /// and pretend).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Whether [`Log::poison`] was called.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Rolls to a new active segment starting at the log end offset.
    fn roll(&mut self, now_ms: i64) -> Result<(), LogError> {
        let leo = self.log_end_offset();
        let active = self.active_mut();
        active.push_time_entry();
        active.write_indexes(true)?;
        let seg = Segment::create(&*self.disk, &self.dir, leo, now_ms)?;
        self.segments.insert(leo, seg);
        // Make the new files' directory entries durable before anything in them can be.
        self.disk.sync_dir(&self.dir)?;
        Ok(())
    }

    /// Rolls first if appending `bytes` ending at `last_offset` would overflow the active
    /// segment (size, u32 positions/offsets) or it is older than `segment_ms`.
    fn roll_if_needed(&mut self, bytes: u64, last_offset: i64, now_ms: i64) -> Result<(), LogError> {
        let a = self.active();
        if a.size == 0 {
            return Ok(());
        }
        let too_big = a.size + bytes > self.config.segment_bytes;
        let too_old = now_ms.saturating_sub(a.created_ms) >= self.config.segment_ms;
        if too_big || too_old || !a.can_hold(last_offset, bytes) {
            self.roll(now_ms)?;
        }
        Ok(())
    }

    /// Time-based roll of a non-empty active segment older than `segment_ms`.
    pub fn maybe_roll(&mut self, now_ms: i64) -> Result<(), LogError> {
        self.check_writable()?;
        self.clock_ms = self.clock_ms.max(now_ms);
        let a = self.active();
        if a.size > 0 && now_ms.saturating_sub(a.created_ms) >= self.config.segment_ms {
            self.roll(now_ms)?;
        }
        Ok(())
    }

    /// Appends validated produce batches (see `validate_produce`), assigning offsets from the
    /// log end offset and stamping `partition_leader_epoch` (and LogAppendTime if asked).
    pub fn append(
        &mut self,
        batches: &mut [u8],
        headers: &[BatchHeader],
        partition_leader_epoch: i32,
        now_ms: i64,
        log_append_time: bool,
    ) -> Result<AppendInfo, LogError> {
        self.check_writable()?;
        let total: usize = headers.iter().map(|h| h.total_len()).sum();
        if headers.is_empty() || total != batches.len() || headers.iter().any(|h| h.last_offset_delta < 0) {
            return Err(LogError::InvalidAppend("headers do not describe the batches".into()));
        }
        self.clock_ms = self.clock_ms.max(now_ms);
        let base_offset = self.log_end_offset();
        let record_count: i64 = headers.iter().map(|h| h.last_offset_delta as i64 + 1).sum();
        let last_offset = base_offset + record_count - 1;
        self.roll_if_needed(total as u64, last_offset, now_ms)?;
        let lat = log_append_time.then_some(now_ms);
        let mut metas = Vec::with_capacity(headers.len());
        let mut cursor = 0usize;
        let mut offset = base_offset;
        for h in headers {
            let len = h.total_len();
            assign_offsets(&mut batches[cursor..cursor + len], offset, partition_leader_epoch, lat);
            let last = offset + h.last_offset_delta as i64;
            metas.push(BatchMeta {
                base_offset: offset,
                last_offset: last,
                max_timestamp: lat.unwrap_or(h.max_timestamp),
                len: len as u64,
            });
            cursor += len;
            offset = last + 1;
        }
        self.write_batches(batches, &metas, now_ms)?;
        Ok(AppendInfo { base_offset, last_offset, log_append_time_ms: lat.unwrap_or(-1) })
    }

    /// One write for all batches, then index bookkeeping. Any failure poisons the log: the
    /// file's contents past `size` are unknown.
    fn write_batches(&mut self, batches: &[u8], metas: &[BatchMeta], now_ms: i64) -> Result<(), LogError> {
        let interval = self.config.index_interval_bytes;
        let active = self.active_mut();
        if active.size == 0 {
            active.created_ms = now_ms;
        }
        let mut pos = active.size;
        let result = active.log.write_at(batches, pos).and_then(|()| {
            for m in metas {
                active.track_batch(pos, *m, interval);
                pos += m.len;
            }
            active.write_indexes(false)
        });
        if let Err(e) = result {
            self.poisoned = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Appends batches that already carry offsets (replication): they must be whole, valid
    /// (CRC32C) and dense from the log end offset.
    pub fn append_as_follower(&mut self, batches: &[u8]) -> Result<AppendInfo, LogError> {
        self.check_writable()?;
        let base_offset = self.log_end_offset();
        let mut metas = Vec::new();
        let mut pos = 0usize;
        let mut next = base_offset;
        while pos < batches.len() {
            let rest = &batches[pos..];
            let h = BatchHeader::parse(rest).map_err(|e| LogError::InvalidAppend(e.to_string()))?;
            if h.total_len() > rest.len() || !crc_ok(rest) || h.last_offset_delta < 0 {
                return Err(LogError::InvalidAppend(format!("bad batch at byte {pos}")));
            }
            if h.base_offset != next {
                return Err(LogError::InvalidAppend(format!(
                    "batch base offset {} but expected {next}",
                    h.base_offset
                )));
            }
            metas.push(BatchMeta {
                base_offset: h.base_offset,
                last_offset: h.last_offset(),
                max_timestamp: h.max_timestamp,
                len: h.total_len() as u64,
            });
            next = h.last_offset() + 1;
            pos += h.total_len();
        }
        if metas.is_empty() {
            return Err(LogError::InvalidAppend("no batches".into()));
        }
        let now_ms = self.clock_ms;
        self.roll_if_needed(batches.len() as u64, next - 1, now_ms)?;
        self.write_batches(batches, &metas, now_ms)?;
        Ok(AppendInfo { base_offset, last_offset: next - 1, log_append_time_ms: -1 })
    }

    fn out_of_range(&self, offset: i64) -> LogError {
        LogError::OffsetOutOfRange {
            offset,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset(),
        }
    }

    /// Reads whole batches from the one segment holding `fetch_offset`: starting with the
    /// batch containing it, up to `max_bytes` (but the whole first batch if `min_one_batch`),
    /// never a batch whose base offset is `>= max_offset`.
    pub fn read(
        &self,
        fetch_offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one_batch: bool,
    ) -> Result<ReadInfo, LogError> {
        let leo = self.log_end_offset();
        if fetch_offset < self.log_start_offset || fetch_offset > leo {
            return Err(self.out_of_range(fetch_offset));
        }
        let mut info = ReadInfo { records: Bytes::new(), log_start_offset: self.log_start_offset, log_end_offset: leo };
        let floor = self.segments.range(..=fetch_offset).next_back().map(|(b, _)| *b).unwrap_or(i64::MIN);
        for seg in self.segments.range(floor..).map(|(_, s)| s) {
            let Some((pos, first)) = seg.find_batch(fetch_offset)? else { continue };
            if first.base_offset >= max_offset {
                return Ok(info);
            }
            let first_len = first.total_len();
            if first_len > max_bytes {
                if min_one_batch {
                    info.records = Bytes::from(seg.read_bytes(pos, first_len)?);
                }
                return Ok(info);
            }
            // Bound the read by the high watermark so we never read bytes we would drop.
            let mut limit = seg.size;
            if max_offset < seg.next_offset {
                if let Some((p, h)) = seg.find_batch(max_offset)? {
                    limit = if h.base_offset < max_offset { p + h.total_len() as u64 } else { p };
                }
            }
            let want = (limit - pos).min(max_bytes as u64) as usize;
            let mut buf = seg.read_bytes(pos, want)?;
            buf.truncate(whole_batches_len(&buf, max_offset));
            info.records = Bytes::from(buf);
            return Ok(info);
        }
        Ok(info)
    }

    /// Calls `f` with the header and bytes of every batch from the log start offset to the log
    /// end, reading `chunk_bytes` at a time (one sequential read of the whole log). Used at
    /// open and after a truncation to rebuild per-partition state that the batch headers
    /// determine (producer sequences, transactions).
    pub fn scan_batches(
        &self,
        chunk_bytes: usize,
        mut f: impl FnMut(&crate::protocol::batch::BatchHeader, &[u8]),
    ) -> Result<(), LogError> {
        let end = self.log_end_offset();
        let mut next = self.log_start_offset();
        while next < end {
            let chunk = self.read(next, chunk_bytes, end, true)?;
            let bytes = &chunk.records[..];
            if bytes.is_empty() {
                break;
            }
            let mut pos = 0usize;
            let before = next;
            while pos < bytes.len() {
                let Ok(h) = crate::protocol::batch::BatchHeader::parse(&bytes[pos..]) else { break };
                if pos + h.total_len() > bytes.len() {
                    break;
                }
                f(&h, &bytes[pos..pos + h.total_len()]);
                next = next.max(h.last_offset() + 1);
                pos += h.total_len();
            }
            if next == before {
                // A read that yields no whole batch cannot make progress; the log was
                // recovered, so this is a bug elsewhere.
                return Err(LogError::InvalidAppend(format!("cannot read a whole batch at offset {next}")));
            }
        }
        Ok(())
    }

    /// `(offset, timestamp)` of the first record at or after the log start offset whose
    /// timestamp is `>= ts`, found via segment max timestamps, the time index, the offset
    /// index and finally the records of the one matching batch.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, LogError> {
        for seg in self.segments.values() {
            if seg.max_timestamp.is_none_or(|(max, _)| max < ts) || seg.next_offset <= self.log_start_offset {
                continue;
            }
            let start_rel = seg.time_index.scan_start(ts);
            let mut pos = seg.offset_index.lookup(start_rel).pos as u64;
            while pos < seg.size {
                let h = seg.read_header(pos)?;
                if h.max_timestamp >= ts && h.last_offset() >= self.log_start_offset {
                    let batch = seg.read_bytes(pos, h.total_len())?;
                    let records = record_timestamps_and_offsets(&batch).map_err(|e| LogError::Corrupt {
                        path: seg.path.clone(),
                        position: pos,
                        reason: e.to_string(),
                    })?;
                    if let Some(hit) = records.into_iter().find(|&(o, t)| o >= self.log_start_offset && t >= ts) {
                        return Ok(Some(hit));
                    }
                }
                pos += h.total_len() as u64;
            }
        }
        Ok(None)
    }

    /// `(timestamp, offset)` of the record with the largest timestamp (earliest offset among
    /// ties), for ListOffsets MAX_TIMESTAMP. Falls back to the batch's base offset if the
    /// batch cannot be decoded.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let mut best: Option<(i64, i64, &Segment)> = None;
        for seg in self.segments.values() {
            if let Some((t, o)) = seg.max_timestamp {
                if best.is_none_or(|(bt, _, _)| t > bt) {
                    best = Some((t, o, seg));
                }
            }
        }
        let (ts, batch_offset, seg) = best?;
        let record = || -> Result<Option<i64>, LogError> {
            let Some((pos, h)) = seg.find_batch(batch_offset)? else { return Ok(None) };
            let batch = seg.read_bytes(pos, h.total_len())?;
            let records = record_timestamps_and_offsets(&batch).map_err(|e| LogError::InvalidAppend(e.to_string()))?;
            Ok(records.into_iter().find(|&(_, t)| t == ts).map(|(o, _)| o))
        };
        Some((ts, record().ok().flatten().unwrap_or(batch_offset)))
    }

    /// Drops every batch at or after the one containing `offset` (replication truncation),
    /// durably. The log end offset becomes that batch's base offset (== `offset` when, as in
    /// replication, `offset` is a batch boundary).
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), LogError> {
        self.check_writable()?;
        if offset >= self.log_end_offset() {
            return Ok(());
        }
        let first_base = *self.segments.keys().next().expect("non-empty");
        if offset < self.log_start_offset || offset <= first_base {
            self.replace_all_segments(offset.max(0))?;
            self.log_start_offset = offset.max(0);
        } else {
            let doomed: Vec<i64> = self.segments.range(offset..).map(|(b, _)| *b).collect();
            for b in doomed {
                self.segments.remove(&b);
                Segment::delete_files(&*self.disk, &self.dir, b)?;
            }
            let interval = self.config.index_interval_bytes;
            let clock = self.clock_ms;
            let active = self.active_mut();
            if let Some((pos, _)) = active.find_batch(offset)? {
                active.log.set_len(pos)?;
                active.recover(interval)?;
            }
            active.created_ms = clock;
            self.disk.sync_dir(&self.dir)?;
            self.log_start_offset = self.log_start_offset.min(self.log_end_offset());
        }
        self.recovery_point = self.recovery_point.min(self.log_end_offset());
        write_checkpoint(&*self.recovery_point_file, self.recovery_point, true)?;
        write_checkpoint(&*self.log_start_offset_file, self.log_start_offset, true)?;
        Ok(())
    }

    /// Advances the log start offset to `offset` (DeleteRecords), durably, and deletes the
    /// non-active segments wholly below it. Returns the new log start offset.
    pub fn delete_records_before(&mut self, offset: i64) -> Result<i64, LogError> {
        self.check_writable()?;
        if offset > self.log_end_offset() || offset < 0 {
            return Err(self.out_of_range(offset));
        }
        if offset > self.log_start_offset {
            self.log_start_offset = offset;
            write_checkpoint(&*self.log_start_offset_file, offset, true)?;
            self.delete_oldest_segments(|_, _| false)?;
        }
        Ok(self.log_start_offset)
    }

    /// Deletes non-active segments from the oldest while they lie wholly below the log start
    /// offset or `extra(segment, bytes_remaining)` says so; returns how many were deleted.
    fn delete_oldest_segments(&mut self, mut extra: impl FnMut(&Segment, u64) -> bool) -> Result<usize, LogError> {
        let mut deleted = 0;
        let mut total = self.size_bytes();
        while self.segments.len() > 1 {
            let (&base, seg) = self.segments.iter().next().expect("non-empty");
            if !(seg.next_offset <= self.log_start_offset || extra(seg, total)) {
                break;
            }
            total -= seg.size;
            self.segments.remove(&base);
            Segment::delete_files(&*self.disk, &self.dir, base)?;
            deleted += 1;
        }
        let first_base = *self.segments.keys().next().expect("non-empty");
        if first_base > self.log_start_offset {
            self.log_start_offset = first_base;
            write_checkpoint(&*self.log_start_offset_file, first_base, true)?;
        }
        Ok(deleted)
    }

    /// Deletes whole non-active segments whose newest record is older than `retention_ms`,
    /// then oldest segments while the log stays at least `retention_bytes` without them, and
    /// any wholly below the log start offset. Returns the number of segments deleted.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        self.check_writable()?;
        self.clock_ms = self.clock_ms.max(now_ms);
        let retention_ms = self.config.retention_ms;
        let retention_bytes = self.config.retention_bytes;
        self.delete_oldest_segments(|seg, total| {
            let expired =
                retention_ms >= 0 && seg.max_timestamp.is_some_and(|(t, _)| now_ms.saturating_sub(t) > retention_ms);
            let oversize = retention_bytes >= 0 && total - seg.size >= retention_bytes as u64;
            expired || oversize
        })
    }

    /// Files with writes not yet known durable and the log end offset they cover. A flusher
    /// syncs them without holding the log's lock, then calls [`Log::mark_flushed`].
    pub fn unflushed(&self) -> Option<(Vec<Arc<dyn File>>, i64)> {
        let leo = self.log_end_offset();
        if leo <= self.recovery_point {
            return None;
        }
        let mut files = Vec::new();
        for seg in self.segments.values().filter(|s| s.next_offset > self.recovery_point) {
            files.extend(seg.files());
        }
        files.push(self.recovery_point_file.clone());
        Some((files, leo))
    }

    /// Records that everything below `offset` is durable, and checkpoints it (unsynced: a
    /// lost or torn checkpoint only makes the next unclean open scan more).
    pub fn mark_flushed(&mut self, offset: i64) {
        let offset = offset.min(self.log_end_offset());
        if offset > self.recovery_point {
            self.recovery_point = offset;
            if let Err(e) = write_checkpoint(&*self.recovery_point_file, offset, false) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "recovery point checkpoint write failed");
            }
        }
    }

    /// Syncs everything, writes indexes and checkpoints, and leaves a clean-shutdown marker so
    /// the next open skips recovery. A poisoned log is closed without the marker.
    pub fn close(&mut self) -> Result<(), LogError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let active = self.active_mut();
        active.push_time_entry();
        active.write_indexes(true)?;
        let rp = self.recovery_point;
        for seg in self.segments.values().filter(|s| s.next_offset > rp) {
            seg.sync()?;
        }
        self.active().sync()?;
        self.recovery_point = self.log_end_offset();
        write_checkpoint(&*self.recovery_point_file, self.recovery_point, true)?;
        write_checkpoint(&*self.log_start_offset_file, self.log_start_offset, true)?;
        let marker = self.disk.open(&self.dir.join(CLEAN_SHUTDOWN_FILE), true)?;
        marker.sync_data()?;
        self.disk.sync_dir(&self.dir)?;
        Ok(())
    }
}

/// Length of the longest prefix of `buf` made of whole batches with base offset below
/// `max_offset`.
fn whole_batches_len(buf: &[u8], max_offset: i64) -> usize {
    let mut pos = 0usize;
    while buf.len() - pos >= BATCH_HEADER_LEN {
        let Ok(h) = BatchHeader::parse(&buf[pos..]) else { break };
        if h.total_len() > buf.len() - pos || h.base_offset >= max_offset {
            break;
        }
        pos += h.total_len();
    }
    pos
}

/// Deletes a partition's log directory and everything in it.
pub fn delete_log(disk: &dyn Disk, dir: &Path) -> Result<(), LogError> {
    if disk.exists(dir) {
        disk.remove_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            disk.sync_dir(parent)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
