//! Committed consumer-group offsets: an in-memory map backed by an append-only file.
//!
//! File format (`offsets.log` in the store's directory): a sequence of records, each
//! `[u32 payload length][u32 CRC32C of payload][payload]`, big-endian. A payload is either a
//! commit (`1, group, topic, partition i32, offset i64, leader_epoch i32, metadata, commit_ms
//! i64`) or a group deletion (`2, group`); strings are `u16 length + UTF-8`, the nullable
//! metadata is `i32 length (-1 = null) + UTF-8`.
//!
//! Invariants:
//! - Storage is reached only through the [`Disk`] seam.
//! - The in-memory map equals the replay of the file's records in order.
//! - Recovery stops at the first record that is short, oversized, fails its CRC or does not
//!   parse, and truncates the file there (a torn tail from a crash); everything before it was
//!   written whole.
//! - A commit is durable once [`OffsetStore::sync`] (or the handle returned by
//!   [`OffsetStore::append_commits`]) has synced after the append. A failed write or sync
//!   poisons the store: it refuses every later write until restart (never retry an fsync).
//! - Compaction writes the live offsets to a temporary file, syncs it, renames it over the log
//!   and syncs the directory, so a crash leaves either the old or the new file, both complete.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::runtime::{Disk, File};

use super::{GROUP_ID_MAX_LEN, OFFSETS_FILE_COMPACT_BYTES, OFFSET_METADATA_MAX_BYTES, OFFSET_RECORD_MAX_BYTES};
use crate::record_file::{put_frame, put_str16, split_frame, Reader};

const LOG_FILE: &str = "offsets.log";
const TMP_FILE: &str = "offsets.log.compact";
const KIND_COMMIT: u8 = 1;
const KIND_DELETE_GROUP: u8 = 2;

/// Operating errors of the offset store.
#[derive(Debug, thiserror::Error)]
pub enum OffsetStoreError {
    /// Storage failed; the store is now poisoned.
    #[error("offset store I/O error at {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// An earlier write or sync failed, so the store refuses writes until restart.
    #[error("offset store is poisoned by an earlier storage failure")]
    Poisoned,
}

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group will consume.
    pub offset: i64,
    /// The leader epoch of the record before `offset`, or -1.
    pub leader_epoch: i32,
    /// Client-supplied metadata (at most [`OFFSET_METADATA_MAX_BYTES`]).
    pub metadata: Option<String>,
    /// When the commit was accepted (ms).
    pub commit_ms: i64,
}

/// Offsets by group, then by (topic, partition).
type OffsetMap = BTreeMap<String, BTreeMap<(String, i32), CommittedOffset>>;

/// The committed-offset store.
pub struct OffsetStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Arc<dyn File>,
    /// Bytes of valid records in the file (the next append position).
    file_len: u64,
    offsets: OffsetMap,
    poisoned: bool,
    compact_bytes: u64,
}

enum Record {
    Commit { group: String, topic: String, partition: i32, value: CommittedOffset },
    DeleteGroup { group: String },
}

impl OffsetStore {
    /// Opens (creating if needed) the store in `dir`, replaying its file and truncating a torn
    /// tail. Compacts when the file is past [`OFFSETS_FILE_COMPACT_BYTES`].
    pub fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<OffsetStore, OffsetStoreError> {
        Self::open_with_compact_bytes(disk, dir, OFFSETS_FILE_COMPACT_BYTES)
    }

    /// [`OffsetStore::open`] with a custom compaction threshold (tests use small ones).
    pub fn open_with_compact_bytes(
        disk: Arc<dyn Disk>,
        dir: &Path,
        compact_bytes: u64,
    ) -> Result<OffsetStore, OffsetStoreError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| OffsetStoreError::Io { path, source }
        };
        disk.create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = dir.join(TMP_FILE);
        if disk.exists(&tmp) {
            // A compaction that did not reach its rename: the old log is still complete.
            disk.remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let path = dir.join(LOG_FILE);
        let file = disk.open(&path, true).map_err(io_err(&path))?;
        let len = file.len().map_err(io_err(&path))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0).map_err(io_err(&path))?;
        let mut offsets = OffsetMap::new();
        let mut pos = 0usize;
        let mut records = 0u64;
        while let Some((rec, used)) = decode_record(&buf[pos..]) {
            apply(&mut offsets, rec);
            pos += used;
            records += 1;
        }
        if pos as u64 != len {
            tracing::warn!(path = %path.display(), valid_bytes = pos, file_bytes = len,
                "offsets file has a torn or corrupt tail; truncating it");
            file.set_len(pos as u64).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        tracing::info!(groups = offsets.len(), records, "loaded committed offsets");
        let mut store = OffsetStore {
            disk,
            dir: dir.to_path_buf(),
            file,
            file_len: pos as u64,
            offsets,
            poisoned: false,
            compact_bytes,
        };
        store.maybe_compact()?;
        Ok(store)
    }

    /// The committed offset of one partition for a group.
    pub fn fetch(&self, group: &str, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.offsets.get(group)?.get(&(topic.to_string(), partition))
    }

    /// Every committed offset of a group, in (topic, partition) order.
    pub fn group_offsets(&self, group: &str) -> impl Iterator<Item = (&str, i32, &CommittedOffset)> {
        self.offsets.get(group).into_iter().flat_map(|m| m.iter().map(|((t, p), v)| (t.as_str(), *p, v)))
    }

    /// How many partitions of `group` have a committed offset.
    pub fn group_offset_count(&self, group: &str) -> usize {
        self.offsets.get(group).map_or(0, BTreeMap::len)
    }

    /// Whether the group has any committed offset.
    pub fn has_group(&self, group: &str) -> bool {
        self.offsets.contains_key(group)
    }

    /// Ids of groups with committed offsets.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.offsets.keys().map(String::as_str)
    }

    /// Whether an earlier failure poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Marks the store failed (the shell calls this when an asynchronous sync fails).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Appends commits for `group` and applies them in memory. They are durable only after the
    /// returned file handle is synced (callers may sync off the async workers). Metadata must
    /// already be within [`OFFSET_METADATA_MAX_BYTES`] (the caller answers
    /// OFFSET_METADATA_TOO_LARGE).
    pub fn append_commits(
        &mut self,
        group: &str,
        commits: &[(String, i32, CommittedOffset)],
    ) -> Result<Arc<dyn File>, OffsetStoreError> {
        let mut buf = Vec::new();
        for (topic, partition, value) in commits {
            assert!(value.metadata.as_ref().map_or(0, String::len) <= OFFSET_METADATA_MAX_BYTES);
            encode_record(
                &mut buf,
                &Record::Commit {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: value.clone(),
                },
            );
        }
        self.append(&buf)?;
        for (topic, partition, value) in commits {
            let rec = Record::Commit {
                group: group.to_string(),
                topic: topic.clone(),
                partition: *partition,
                value: value.clone(),
            };
            apply(&mut self.offsets, rec);
        }
        self.maybe_compact()?;
        Ok(self.file.clone())
    }

    /// Appends commits and syncs them before returning.
    pub fn commit(&mut self, group: &str, commits: &[(String, i32, CommittedOffset)]) -> Result<(), OffsetStoreError> {
        self.append_commits(group, commits)?;
        self.sync()
    }

    /// Removes every offset of `group`, durably. Returns whether it had any.
    pub fn delete_group(&mut self, group: &str) -> Result<bool, OffsetStoreError> {
        if !self.offsets.contains_key(group) {
            return Ok(false);
        }
        let mut buf = Vec::new();
        encode_record(&mut buf, &Record::DeleteGroup { group: group.to_string() });
        self.append(&buf)?;
        apply(&mut self.offsets, Record::DeleteGroup { group: group.to_string() });
        self.sync()?;
        Ok(true)
    }

    /// Syncs the file; a failure poisons the store.
    pub fn sync(&mut self) -> Result<(), OffsetStoreError> {
        if self.poisoned {
            return Err(OffsetStoreError::Poisoned);
        }
        let r = self.file.sync_data();
        self.check(r, LOG_FILE)
    }

    fn append(&mut self, buf: &[u8]) -> Result<(), OffsetStoreError> {
        if self.poisoned {
            return Err(OffsetStoreError::Poisoned);
        }
        let r = self.file.write_at(buf, self.file_len);
        self.check(r, LOG_FILE)?;
        self.file_len += buf.len() as u64;
        Ok(())
    }

    fn check(&mut self, r: io::Result<()>, name: &str) -> Result<(), OffsetStoreError> {
        r.map_err(|source| {
            self.poisoned = true;
            tracing::error!(error = %source, "offset store write failed; refusing further commits until restart");
            OffsetStoreError::Io { path: self.dir.join(name).display().to_string(), source }
        })
    }

    /// Rewrites the file with only live offsets when it has grown past the threshold and at
    /// least half of it is superseded.
    fn maybe_compact(&mut self) -> Result<(), OffsetStoreError> {
        if self.file_len <= self.compact_bytes {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (group, parts) in &self.offsets {
            for ((topic, partition), value) in parts {
                let rec = Record::Commit {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: value.clone(),
                };
                encode_record(&mut buf, &rec);
            }
        }
        if buf.len() as u64 * 2 > self.file_len {
            // Mostly live data: compaction would not pay; wait for more growth.
            self.compact_bytes = self.compact_bytes.max(buf.len() as u64 * 2);
            return Ok(());
        }
        if self.poisoned {
            return Err(OffsetStoreError::Poisoned);
        }
        let tmp = self.dir.join(TMP_FILE);
        let dst = self.dir.join(LOG_FILE);
        let r = (|| {
            let f = self.disk.open(&tmp, true)?;
            f.set_len(0)?;
            f.write_at(&buf, 0)?;
            f.sync_data()?;
            self.disk.rename(&tmp, &dst)?;
            self.disk.sync_dir(&self.dir)?;
            Ok(f)
        })();
        let f = match r {
            Ok(f) => f,
            Err(e) => return self.check(Err(e), TMP_FILE),
        };
        tracing::info!(old_bytes = self.file_len, new_bytes = buf.len(), "compacted the offsets file");
        self.file = f;
        self.file_len = buf.len() as u64;
        Ok(())
    }

    /// Bytes in the offsets file (for tests and metrics).
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }
}

fn apply(offsets: &mut OffsetMap, rec: Record) {
    match rec {
        Record::Commit { group, topic, partition, value } => {
            offsets.entry(group).or_default().insert((topic, partition), value);
        }
        Record::DeleteGroup { group } => {
            offsets.remove(&group);
        }
    }
}

fn encode_record(buf: &mut Vec<u8>, rec: &Record) {
    let mut p = Vec::new();
    match rec {
        Record::Commit { group, topic, partition, value } => {
            p.push(KIND_COMMIT);
            put_str16(&mut p, group);
            put_str16(&mut p, topic);
            p.extend_from_slice(&partition.to_be_bytes());
            p.extend_from_slice(&value.offset.to_be_bytes());
            p.extend_from_slice(&value.leader_epoch.to_be_bytes());
            match &value.metadata {
                None => p.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(m) => {
                    p.extend_from_slice(&(m.len() as i32).to_be_bytes());
                    p.extend_from_slice(m.as_bytes());
                }
            }
            p.extend_from_slice(&value.commit_ms.to_be_bytes());
        }
        Record::DeleteGroup { group } => {
            p.push(KIND_DELETE_GROUP);
            put_str16(&mut p, group);
        }
    }
    put_frame(buf, &p, OFFSET_RECORD_MAX_BYTES, "offset");
}

/// Decodes the record at the start of `buf`, returning it and its encoded length, or `None`
/// if `buf` does not begin with a whole, valid record. Never panics on hostile bytes.
fn decode_record(buf: &[u8]) -> Option<(Record, usize)> {
    let (p, frame_len) = split_frame(buf, OFFSET_RECORD_MAX_BYTES)?;
    let mut r = Reader::new(p, GROUP_ID_MAX_LEN.max(crate::limits::TOPIC_NAME_MAX_LEN));
    let rec = match r.u8()? {
        KIND_COMMIT => {
            let group = r.str16()?;
            let topic = r.str16()?;
            let partition = r.i32()?;
            let offset = r.i64()?;
            let leader_epoch = r.i32()?;
            let mlen = r.i32()?;
            let metadata = if mlen < 0 { None } else { Some(r.string(mlen as usize)?) };
            let commit_ms = r.i64()?;
            Record::Commit {
                group,
                topic,
                partition,
                value: CommittedOffset { offset, leader_epoch, metadata, commit_ms },
            }
        }
        KIND_DELETE_GROUP => Record::DeleteGroup { group: r.str16()? },
        _ => return None,
    };
    if !r.is_empty() {
        return None;
    }
    Some((rec, frame_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemDisk;

    fn dir() -> PathBuf {
        PathBuf::from("/data/__consumer_offsets")
    }

    fn off(offset: i64) -> CommittedOffset {
        CommittedOffset { offset, leader_epoch: 3, metadata: Some(format!("m{offset}")), commit_ms: 1000 + offset }
    }

    fn commit_one(s: &mut OffsetStore, group: &str, topic: &str, p: i32, o: i64) {
        s.commit(group, &[(topic.to_string(), p, off(o))]).unwrap();
    }

    #[test]
    fn commit_then_fetch() {
        // Proves a commit is visible to fetch, later commits overwrite, and absent ones are None.
        let disk = Arc::new(MemDisk::new());
        let mut s = OffsetStore::open(disk, &dir()).unwrap();
        commit_one(&mut s, "g", "t", 0, 5);
        commit_one(&mut s, "g", "t", 0, 7);
        commit_one(&mut s, "g", "t", 1, 9);
        assert_eq!(s.fetch("g", "t", 0), Some(&off(7)));
        assert_eq!(s.fetch("g", "t", 1), Some(&off(9)));
        assert_eq!(s.fetch("g", "t", 2), None);
        assert_eq!(s.fetch("h", "t", 0), None);
        assert_eq!(s.group_offset_count("g"), 2);
        assert_eq!(s.groups().collect::<Vec<_>>(), vec!["g"]);
    }

    #[test]
    fn reopen_after_crash_keeps_synced_commits() {
        // Proves synced commits (and deletions, and null metadata) survive a crash and reopen.
        let disk = MemDisk::new();
        let mut s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        commit_one(&mut s, "g", "t", 0, 5);
        commit_one(&mut s, "g2", "t", 3, 11);
        let nometa = CommittedOffset { offset: 1, leader_epoch: -1, metadata: None, commit_ms: 0 };
        s.commit("g3", &[("u".into(), 0, nometa.clone())]).unwrap();
        assert!(s.delete_group("g2").unwrap());
        drop(s);
        disk.crash(|_, _| 0);
        let s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        assert_eq!(s.fetch("g", "t", 0), Some(&off(5)));
        assert_eq!(s.fetch("g2", "t", 3), None);
        assert_eq!(s.fetch("g3", "u", 0), Some(&nometa));
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut() {
        // Proves recovery keeps every synced commit, never invents one, and truncates a torn
        // tail so later appends are readable, whatever prefix of the unsynced bytes survives.
        for keep in 0..200 {
            let disk = MemDisk::new();
            let mut s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
            commit_one(&mut s, "g", "t", 0, 1);
            s.append_commits("g", &[("t".into(), 0, off(2)), ("t".into(), 1, off(3))]).unwrap();
            drop(s);
            disk.crash(|_, n| keep.min(n));
            let mut s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
            let p0 = s.fetch("g", "t", 0).unwrap().offset;
            assert!(p0 == 1 || p0 == 2, "keep={keep}: p0={p0}");
            if let Some(p1) = s.fetch("g", "t", 1) {
                assert_eq!(p1, &off(3));
                assert_eq!(p0, 2);
            }
            commit_one(&mut s, "g", "t", 5, 50);
            drop(s);
            disk.crash(|_, _| 0);
            let s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
            assert_eq!(s.fetch("g", "t", 5), Some(&off(50)), "keep={keep}");
        }
    }

    #[test]
    fn corrupt_record_stops_replay() {
        // Proves a flipped bit fails the CRC: replay keeps the records before it and drops the rest.
        let disk = MemDisk::new();
        let mut s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        commit_one(&mut s, "g", "t", 0, 1);
        let first_len = s.file_bytes() as usize;
        commit_one(&mut s, "g", "t", 1, 2);
        drop(s);
        disk.flip_bit(&dir().join(LOG_FILE), first_len + 12, 3);
        let s = OffsetStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        assert_eq!(s.fetch("g", "t", 0), Some(&off(1)));
        assert_eq!(s.fetch("g", "t", 1), None);
        assert_eq!(s.file_bytes() as usize, first_len);
    }

    #[test]
    fn compaction_shrinks_file_and_preserves_offsets() {
        // Proves compaction rewrites the file with only live offsets and they survive a crash.
        let disk = MemDisk::new();
        let mut s = OffsetStore::open_with_compact_bytes(Arc::new(disk.clone()), &dir(), 4096).unwrap();
        for i in 0..500 {
            commit_one(&mut s, "g", "t", (i % 4) as i32, i);
        }
        assert!(s.file_bytes() <= 4096 + 200, "file not compacted: {}", s.file_bytes());
        for p in 0..4 {
            assert_eq!(s.fetch("g", "t", p).unwrap().offset, 496 + p as i64);
        }
        drop(s);
        disk.crash(|_, _| 0);
        let s = OffsetStore::open_with_compact_bytes(Arc::new(disk.clone()), &dir(), 4096).unwrap();
        for p in 0..4 {
            assert_eq!(s.fetch("g", "t", p).unwrap().offset, 496 + p as i64);
        }
        assert!(!disk.exists(&dir().join(TMP_FILE)));
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        // Proves the record decoder rejects arbitrary bytes without panicking.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for n in 0..2000usize {
            let mut buf = Vec::with_capacity(n % 97);
            for _ in 0..(n % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = decode_record(&buf);
        }
    }
}
