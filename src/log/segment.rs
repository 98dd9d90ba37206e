//! One log segment: a `.log` file of concatenated v2 batches plus its `.index` and
//! `.timeindex`, named by the 20-digit zero-padded base offset.
//!
//! Invariants:
//! - Bytes `[0, size)` of the `.log` file are whole batches with dense offsets starting at
//!   `base_offset`; `next_offset` is one past the last of them (`base_offset` when empty).
//! - Every relative offset and file position fits in a `u32` (the log rolls before either
//!   would overflow).
//! - `max_timestamp` is the largest batch maxTimestamp in the segment together with the base
//!   offset of the first batch that carries it.
//! - [`Segment::recover`] leaves only batches whose lengths, magic, offsets and CRC32C check
//!   out, truncating the file at the first that does not, and rebuilds both indexes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::log::index::{Entry, Index, OffsetEntry, TimeEntry};
use crate::log::LogError;
use crate::protocol::batch::{crc_ok, BatchHeader, BATCH_HEADER_LEN};
use crate::runtime::{Disk, File};

/// Bytes read at a time while scanning a segment during recovery.
const RECOVERY_READ_BYTES: usize = 1 << 20;

/// File name of a segment file: `{base_offset:020}.{ext}`.
pub(crate) fn segment_file(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

/// Parses `00000000000000000042.log` into `(42, "log")`; `None` for anything else.
pub(crate) fn parse_segment_name(name: &str) -> Option<(i64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !matches!(ext, "log" | "index" | "timeindex") {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// The fields of a batch a segment tracks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchMeta {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub len: u64,
}

pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub log: Arc<dyn File>,
    pub offset_index: Index<OffsetEntry>,
    pub time_index: Index<TimeEntry>,
    pub size: u64,
    pub next_offset: i64,
    /// `(largest timestamp, base offset of the first batch carrying it)`.
    pub max_timestamp: Option<(i64, i64)>,
    pub bytes_since_index: u64,
    /// When the first batch was appended (or the log opened), for time-based rolling.
    pub created_ms: i64,
}

impl Segment {
    /// Creates (or empties) the three files of a new segment at `base_offset`.
    pub fn create(disk: &dyn Disk, dir: &Path, base_offset: i64, now_ms: i64) -> io::Result<Segment> {
        let seg = Self::open(disk, dir, base_offset, now_ms, true)?;
        seg.log.set_len(0)?;
        seg.offset_index.file.set_len(0)?;
        seg.time_index.file.set_len(0)?;
        Ok(Segment { size: 0, ..seg })
    }

    /// Opens an existing segment's files with empty in-memory indexes; the caller then calls
    /// [`Segment::load`] or [`Segment::recover`].
    pub fn open(disk: &dyn Disk, dir: &Path, base_offset: i64, now_ms: i64, create: bool) -> io::Result<Segment> {
        let path = segment_file(dir, base_offset, "log");
        let log = disk.open(&path, create)?;
        let offset_index = Index::empty(disk.open(&segment_file(dir, base_offset, "index"), true)?);
        let time_index = Index::empty(disk.open(&segment_file(dir, base_offset, "timeindex"), true)?);
        let size = log.len()?;
        Ok(Segment {
            base_offset,
            path,
            log,
            offset_index,
            time_index,
            size,
            next_offset: base_offset,
            max_timestamp: None,
            bytes_since_index: 0,
            created_ms: now_ms,
        })
    }

    /// Removes a segment's files (the `.log` first, so a crash leaves only orphan indexes,
    /// which open deletes).
    pub fn delete_files(disk: &dyn Disk, dir: &Path, base_offset: i64) -> io::Result<()> {
        for ext in ["log", "index", "timeindex"] {
            let p = segment_file(dir, base_offset, ext);
            if disk.exists(&p) {
                disk.remove_file(&p)?;
            }
        }
        Ok(())
    }

    pub fn files(&self) -> [Arc<dyn File>; 3] {
        [self.log.clone(), self.offset_index.file.clone(), self.time_index.file.clone()]
    }

    fn rel(&self, offset: i64) -> u32 {
        debug_assert!(offset >= self.base_offset && offset - self.base_offset <= u32::MAX as i64);
        (offset - self.base_offset) as u32
    }

    /// Whether a batch ending at `last_offset` and `bytes` long still fits the u32 relative
    /// offsets and positions of this segment.
    pub fn can_hold(&self, last_offset: i64, bytes: u64) -> bool {
        last_offset - self.base_offset <= u32::MAX as i64 && self.size + bytes <= u32::MAX as u64
    }

    /// Records a batch just written at `pos` (== `size`): offsets, indexes, max timestamp.
    pub fn track_batch(&mut self, pos: u64, b: BatchMeta, index_interval_bytes: u64) {
        debug_assert_eq!(pos, self.size);
        debug_assert_eq!(b.base_offset, self.next_offset);
        if self.max_timestamp.is_none_or(|(t, _)| b.max_timestamp > t) {
            self.max_timestamp = Some((b.max_timestamp, b.base_offset));
        }
        if self.bytes_since_index >= index_interval_bytes {
            let entry = OffsetEntry { rel: self.rel(b.base_offset), pos: pos as u32 };
            if self.offset_index.last().is_none_or(|l| l.may_precede(&entry)) {
                self.offset_index.push(entry);
            }
            self.push_time_entry();
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += b.len;
        self.size += b.len;
        self.next_offset = b.last_offset + 1;
    }

    /// Adds a time index entry for the current max timestamp if it is new.
    pub fn push_time_entry(&mut self) {
        if let Some((ts, off)) = self.max_timestamp {
            if self.time_index.last().is_none_or(|l| ts > l.ts) {
                let rel = self.rel(off);
                self.time_index.push(TimeEntry { ts, rel });
            }
        }
    }

    /// Writes buffered index entries to the files (all of them when `force`).
    pub fn write_indexes(&mut self, force: bool) -> io::Result<()> {
        self.offset_index.write_pending(force)?;
        self.time_index.write_pending(force)
    }

    pub fn sync(&self) -> io::Result<()> {
        for f in self.files() {
            f.sync_data()?;
        }
        Ok(())
    }

    fn corrupt(&self, position: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt { path: self.path.clone(), position, reason: reason.into() }
    }

    /// Reads and checks the header of the batch at `pos` (which must lie inside `size`).
    pub fn read_header(&self, pos: u64) -> Result<BatchHeader, LogError> {
        if pos + BATCH_HEADER_LEN as u64 > self.size {
            return Err(self.corrupt(pos, "batch header beyond segment end"));
        }
        let mut buf = [0u8; BATCH_HEADER_LEN];
        self.log.read_exact_at(&mut buf, pos)?;
        let h = BatchHeader::parse(&buf).map_err(|e| self.corrupt(pos, e.to_string()))?;
        if pos + h.total_len() as u64 > self.size || h.last_offset_delta < 0 {
            return Err(self.corrupt(pos, "batch length or offsets inconsistent"));
        }
        Ok(h)
    }

    /// Reads `len` bytes at `pos`.
    pub fn read_bytes(&self, pos: u64, len: usize) -> Result<Vec<u8>, LogError> {
        let mut buf = vec![0u8; len];
        self.log.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// Position and header of the first batch whose last offset is `>= offset`, found from
    /// the offset index then a header scan; `None` if the segment holds no such batch.
    pub fn find_batch(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>, LogError> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let rel = (offset.max(self.base_offset) - self.base_offset).min(u32::MAX as i64) as u32;
        let mut pos = self.offset_index.lookup(rel).pos as u64;
        while pos < self.size {
            let h = self.read_header(pos)?;
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_len() as u64;
        }
        Ok(None)
    }

    /// Fast open after a clean shutdown: loads the index files (falling back to a full
    /// [`Segment::recover`] if they are inconsistent) and, for the last segment, scans the
    /// tail after the last index entry to find `next_offset` and the max timestamp.
    /// `next_base` is the following segment's base offset. Returns whether recovery truncated.
    pub fn load(&mut self, next_base: Option<i64>, index_interval_bytes: u64) -> Result<bool, LogError> {
        let span = match next_base {
            Some(nb) => (nb - self.base_offset).max(0) as u64,
            None => u32::MAX as u64 + 1,
        };
        let oi = Index::<OffsetEntry>::load(self.offset_index.file.clone(), self.size, span)?;
        let ti = Index::<TimeEntry>::load(self.time_index.file.clone(), self.size, span)?;
        let (Some(oi), Some(ti)) = (oi, ti) else {
            return Ok(self.recover(index_interval_bytes)?);
        };
        self.offset_index = oi;
        self.time_index = ti;
        if let Some(t) = self.time_index.last() {
            self.max_timestamp = Some((t.ts, self.base_offset + t.rel as i64));
        }
        match next_base {
            Some(nb) => {
                if self.size > 0 && self.time_index.last().is_none() {
                    return Ok(self.recover(index_interval_bytes)?);
                }
                self.next_offset = if self.size == 0 { self.base_offset } else { nb };
                Ok(false)
            }
            None => {
                let start = self.offset_index.last().copied().unwrap_or(OffsetEntry { rel: 0, pos: 0 });
                let mut pos = start.pos as u64;
                self.next_offset = self.base_offset + start.rel as i64;
                while pos < self.size {
                    let h = match self.read_header(pos) {
                        Ok(h) if h.base_offset == self.next_offset => h,
                        _ => return Ok(self.recover(index_interval_bytes)?),
                    };
                    if self.max_timestamp.is_none_or(|(t, _)| h.max_timestamp > t) {
                        self.max_timestamp = Some((h.max_timestamp, h.base_offset));
                    }
                    pos += h.total_len() as u64;
                    self.next_offset = h.last_offset() + 1;
                }
                self.bytes_since_index = self.size - start.pos as u64;
                Ok(false)
            }
        }
    }

    /// Scans the whole segment, keeping the longest valid prefix of batches (lengths, magic,
    /// dense offsets from `base_offset`, CRC32C), truncating the file after it, rebuilding
    /// both indexes and syncing. Returns whether anything was truncated.
    pub fn recover(&mut self, index_interval_bytes: u64) -> io::Result<bool> {
        self.offset_index.reset()?;
        self.time_index.reset()?;
        self.max_timestamp = None;
        self.bytes_since_index = 0;
        self.next_offset = self.base_offset;
        self.size = 0;
        let file_len = self.log.len()?;
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        let mut pos = 0u64;
        while pos < file_len {
            let Some(h) = self.check_batch_at(pos, file_len, &mut window, &mut window_start)? else {
                break;
            };
            let meta = BatchMeta {
                base_offset: h.base_offset,
                last_offset: h.last_offset(),
                max_timestamp: h.max_timestamp,
                len: h.total_len() as u64,
            };
            self.track_batch(pos, meta, index_interval_bytes);
            pos += meta.len;
        }
        let truncated = pos < file_len;
        if truncated {
            tracing::warn!(path = %self.path.display(), position = pos, file_len, "truncating corrupt or partial segment tail");
            self.log.set_len(pos)?;
        }
        self.push_time_entry();
        self.write_indexes(true)?;
        self.sync()?;
        Ok(truncated)
    }

    /// The header of the batch at `pos` if the whole batch is present and valid, reading
    /// through a window of the file to avoid one read per batch.
    fn check_batch_at(
        &self,
        pos: u64,
        file_len: u64,
        window: &mut Vec<u8>,
        window_start: &mut u64,
    ) -> io::Result<Option<BatchHeader>> {
        if file_len - pos < BATCH_HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut header = [0u8; BATCH_HEADER_LEN];
        self.fill(pos, BATCH_HEADER_LEN, file_len, window, window_start)?;
        let off = (pos - *window_start) as usize;
        header.copy_from_slice(&window[off..off + BATCH_HEADER_LEN]);
        let Ok(h) = BatchHeader::parse(&header) else { return Ok(None) };
        let total = h.total_len() as u64;
        if total > file_len - pos
            || h.base_offset != self.next_offset
            || h.last_offset_delta < 0
            || !self.can_hold(h.last_offset(), total)
        {
            return Ok(None);
        }
        self.fill(pos, total as usize, file_len, window, window_start)?;
        let off = (pos - *window_start) as usize;
        if !crc_ok(&window[off..off + total as usize]) {
            return Ok(None);
        }
        Ok(Some(h))
    }

    /// Makes `window` cover `[pos, pos + len)` (which lies inside the file).
    fn fill(
        &self,
        pos: u64,
        len: usize,
        file_len: u64,
        window: &mut Vec<u8>,
        window_start: &mut u64,
    ) -> io::Result<()> {
        let end = *window_start + window.len() as u64;
        if pos >= *window_start && pos + len as u64 <= end {
            return Ok(());
        }
        let want = (len.max(RECOVERY_READ_BYTES) as u64).min(file_len - pos) as usize;
        window.resize(want, 0);
        self.log.read_exact_at(window, pos)?;
        *window_start = pos;
        Ok(())
    }
}
