//! Sparse per-segment indexes: the offset index (`.index`: relative offset u32, file position
//! u32) and the time index (`.timeindex`: timestamp i64, relative offset u32), big-endian.
//!
//! Invariants:
//! - The in-memory `Vec` is the truth while the log is open; the file is a cache of a prefix of
//!   it (entries are written in small groups, and all of them on roll and close). A file that
//!   is missing, torn or inconsistent is detected by [`Index::load`] and rebuilt by a scan.
//! - Offset index entries have strictly increasing relative offsets and positions; each names
//!   the base offset and start position of a batch.
//! - Time index entries have strictly increasing timestamps and non-decreasing relative
//!   offsets; entry `(t, o)` means no record in a batch at or before the batch based at `o`
//!   has a timestamp above `t`.

use std::io;
use std::sync::Arc;

use crate::runtime::File;

/// Entries buffered in memory before they are written to the index file.
pub(crate) const INDEX_WRITE_BATCH_ENTRIES: usize = 64;

/// One fixed-size index entry.
pub(crate) trait Entry: Copy {
    /// Encoded size in bytes.
    const LEN: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(b: &[u8]) -> Self;
    /// Whether `next` may follow `self` in a valid index.
    fn may_precede(&self, next: &Self) -> bool;
    /// Whether the entry is plausible for a segment of `size` bytes spanning `span` offsets.
    fn fits(&self, size: u64, span: u64) -> bool;
}

/// Offset index entry: the batch based at `base + rel` starts at byte `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub rel: u32,
    pub pos: u32,
}

impl Entry for OffsetEntry {
    const LEN: usize = 8;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rel.to_be_bytes());
        out.extend_from_slice(&self.pos.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        OffsetEntry {
            rel: u32::from_be_bytes(b[0..4].try_into().expect("4 bytes")),
            pos: u32::from_be_bytes(b[4..8].try_into().expect("4 bytes")),
        }
    }
    fn may_precede(&self, next: &Self) -> bool {
        next.rel > self.rel && next.pos > self.pos
    }
    fn fits(&self, size: u64, span: u64) -> bool {
        (self.pos as u64) < size && (self.rel as u64) < span
    }
}

/// Time index entry: the largest timestamp up to the batch based at `base + rel` is `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub ts: i64,
    pub rel: u32,
}

impl Entry for TimeEntry {
    const LEN: usize = 12;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.rel.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        TimeEntry {
            ts: i64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
            rel: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        }
    }
    fn may_precede(&self, next: &Self) -> bool {
        next.ts > self.ts && next.rel >= self.rel
    }
    fn fits(&self, _size: u64, span: u64) -> bool {
        (self.rel as u64) < span
    }
}

/// An index held in memory and mirrored (lazily) to its file.
pub(crate) struct Index<E: Entry> {
    pub file: Arc<dyn File>,
    pub entries: Vec<E>,
    /// How many leading entries are already in the file.
    written: usize,
}

impl<E: Entry> Index<E> {
    /// An empty index over `file` (whose contents are ignored and will be overwritten).
    pub fn empty(file: Arc<dyn File>) -> Self {
        Index { file, entries: Vec::new(), written: 0 }
    }

    /// Loads the file's entries; `None` if the file is torn or inconsistent with a segment of
    /// `size` bytes spanning `span` offsets (the caller then rebuilds it by scanning).
    pub fn load(file: Arc<dyn File>, size: u64, span: u64) -> io::Result<Option<Self>> {
        let len = file.len()?;
        if len % E::LEN as u64 != 0 || len > size.saturating_mul(2) + 4096 {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0)?;
        let mut entries: Vec<E> = Vec::with_capacity(buf.len() / E::LEN);
        for chunk in buf.chunks_exact(E::LEN) {
            let e = E::decode(chunk);
            if !e.fits(size, span) || entries.last().is_some_and(|p| !p.may_precede(&e)) {
                return Ok(None);
            }
            entries.push(e);
        }
        let written = entries.len();
        Ok(Some(Index { file, entries, written }))
    }

    pub fn last(&self) -> Option<&E> {
        self.entries.last()
    }

    pub fn push(&mut self, e: E) {
        debug_assert!(self.entries.last().is_none_or(|p| p.may_precede(&e)));
        self.entries.push(e);
    }

    /// Writes entries not yet in the file: always when `force`, else once enough piled up.
    pub fn write_pending(&mut self, force: bool) -> io::Result<()> {
        let pending = self.entries.len() - self.written;
        if pending == 0 || (!force && pending < INDEX_WRITE_BATCH_ENTRIES) {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(pending * E::LEN);
        for e in &self.entries[self.written..] {
            e.encode(&mut buf);
        }
        self.file.write_at(&buf, (self.written * E::LEN) as u64)?;
        self.written = self.entries.len();
        Ok(())
    }

    /// Forgets every entry and empties the file (before a rebuild).
    pub fn reset(&mut self) -> io::Result<()> {
        self.entries.clear();
        self.written = 0;
        self.file.set_len(0)
    }
}

impl Index<OffsetEntry> {
    /// The entry with the largest relative offset `<= rel`, or the segment start.
    pub fn lookup(&self, rel: u32) -> OffsetEntry {
        let i = self.entries.partition_point(|e| e.rel <= rel);
        if i == 0 {
            OffsetEntry { rel: 0, pos: 0 }
        } else {
            self.entries[i - 1]
        }
    }
}

impl Index<TimeEntry> {
    /// The relative offset from which a scan for the first timestamp `>= ts` may start: that
    /// of the last entry whose timestamp is strictly below `ts`, or the segment start.
    pub fn scan_start(&self, ts: i64) -> u32 {
        let i = self.entries.partition_point(|e| e.ts < ts);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].rel
        }
    }
}
