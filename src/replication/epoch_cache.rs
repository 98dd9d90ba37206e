//! The leader epoch cache: the `(epoch, start_offset)` list Kafka keeps per partition in
//! `leader-epoch-checkpoint`, and the OffsetForLeaderEpoch lookup built on it (KIP-101, KIP-279).
//!
//! Invariants:
//! - Entries are strictly increasing in both `epoch` and `start_offset` (Kafka's rule: an epoch
//!   that never got a record is replaced by the next epoch starting at the same offset).
//! - Every change is written to disk before it is visible in memory: the new file is written to
//!   a temporary name, synced, renamed over the checkpoint and the directory synced. If any of
//!   that fails the cache is poisoned (memory keeps the last durable state) and refuses changes.
//! - The cache must never be *behind* the durable log: callers assign an epoch before appending
//!   batches of that epoch, truncate the cache only after truncating the log, and after a crash
//!   call [`LeaderEpochCache::truncate_from_end`] with the recovered log end offset (the cache
//!   may be ahead of the log, never behind it).
//! - Storage is reached only through the [`Disk`] seam; nothing here reads a clock.
//!
//! File format (text, like Kafka's, plus a CRC so a torn or flipped file is detected): line 1
//! the version `0`, line 2 the entry count, then one `epoch start_offset` line per entry, then
//! a last line with the CRC32C (decimal) of every byte before it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    EpochEndOffset, ReplicationError, LEADER_EPOCH_CACHE_ENTRIES_MAX, LEADER_EPOCH_CHECKPOINT_FILE,
    LEADER_EPOCH_CHECKPOINT_MAX_BYTES, UNDEFINED_EPOCH,
};
use crate::runtime::Disk;

/// Version written on the first line of the checkpoint file.
const CHECKPOINT_VERSION: u32 = 0;
/// Suffix of the temporary file a new checkpoint is written to before the rename.
const CHECKPOINT_TMP_SUFFIX: &str = ".tmp";

/// One leader epoch and the first offset written in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// The first offset the leader of `epoch` wrote (the log end offset when it was elected).
    pub start_offset: i64,
}

/// What [`LeaderEpochCache::assign`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// The entry was added (possibly replacing later or equal-offset entries, as Kafka does).
    Added,
    /// The epoch is already the latest with a start offset at or below the one given: no-op.
    Unchanged,
    /// The epoch is older than the latest epoch: ignored (a caller bug or a stale batch; log it).
    IgnoredStale,
}

/// A checkpoint that could not be read and was replaced by an empty cache. The caller should
/// rebuild the cache from the log's batch headers (`assign(partition_leader_epoch,
/// base_offset)` per batch, in order) before this replica follows or leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointCorruption {
    /// Why the file was rejected.
    pub reason: String,
}

/// The per-partition leader epoch cache. See the module documentation for the invariants.
pub struct LeaderEpochCache {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Keyed by epoch; start offsets increase with the key.
    entries: BTreeMap<i32, i64>,
    poisoned: bool,
}

impl std::fmt::Debug for LeaderEpochCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderEpochCache")
            .field("dir", &self.dir)
            .field("entries", &self.entries)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl LeaderEpochCache {
    /// Opens the cache persisted in `dir` (the partition directory, which must exist). A missing
    /// file is an empty cache; a corrupt one becomes an empty cache and is reported in the second
    /// element. After opening, call [`LeaderEpochCache::truncate_from_end`] with the log end
    /// offset the log recovered to.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
    ) -> Result<(LeaderEpochCache, Option<CheckpointCorruption>), ReplicationError> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let tmp = tmp_path(&path);
        if disk.exists(&tmp) {
            // A crash between writing the temporary file and the rename: the old file is intact.
            disk.remove_file(&tmp).map_err(|e| io_err("remove stale tmp", &tmp, e))?;
        }
        let mut cache = LeaderEpochCache { disk, dir, entries: BTreeMap::new(), poisoned: false };
        if !cache.disk.exists(&path) {
            return Ok((cache, None));
        }
        let bytes = read_all(&*cache.disk, &path)?;
        match parse_checkpoint(&bytes) {
            Ok(entries) => {
                cache.entries = entries.into_iter().map(|e| (e.epoch, e.start_offset)).collect();
                Ok((cache, None))
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "corrupt leader epoch checkpoint; starting empty");
                Ok((cache, Some(CheckpointCorruption { reason })))
            }
        }
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> Vec<EpochEntry> {
        self.entries.iter().map(|(&epoch, &start_offset)| EpochEntry { epoch, start_offset }).collect()
    }

    /// The latest epoch, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.keys().next_back().copied()
    }

    /// The latest entry, if any.
    pub fn latest_entry(&self) -> Option<EpochEntry> {
        self.entries.iter().next_back().map(|(&epoch, &start_offset)| EpochEntry { epoch, start_offset })
    }

    /// The oldest entry, if any.
    pub fn earliest_entry(&self) -> Option<EpochEntry> {
        self.entries.iter().next().map(|(&epoch, &start_offset)| EpochEntry { epoch, start_offset })
    }

    /// Whether a previous checkpoint write failed (the cache then refuses changes).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Records that `epoch` starts at `start_offset`, durably. Call it when becoming leader (with
    /// the log end offset) and, on a follower, before appending a batch whose
    /// `partition_leader_epoch` is newer than [`LeaderEpochCache::latest_epoch`]. Older epochs
    /// are ignored; the same epoch with a lower start offset, or a newer epoch starting at or
    /// below existing entries, replaces those entries (Kafka's `assign`).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<Assigned, ReplicationError> {
        assert!(epoch >= 0 && start_offset >= 0, "assign({epoch}, {start_offset}): negative epoch or offset");
        if let Some(latest) = self.latest_entry() {
            if epoch < latest.epoch {
                return Ok(Assigned::IgnoredStale);
            }
            if epoch == latest.epoch && start_offset >= latest.start_offset {
                return Ok(Assigned::Unchanged);
            }
        }
        let mut next = self.entries.clone();
        next.retain(|&e, &mut s| e < epoch && s < start_offset);
        next.insert(epoch, start_offset);
        if next.len() > LEADER_EPOCH_CACHE_ENTRIES_MAX {
            return Err(ReplicationError::TooManyEpochs { limit: LEADER_EPOCH_CACHE_ENTRIES_MAX });
        }
        self.commit(next)?;
        Ok(Assigned::Added)
    }

    /// Kafka's OffsetForLeaderEpoch answer for `requested_epoch`, given this replica's log end
    /// offset: the largest epoch `<= requested_epoch` and the start offset of the next higher
    /// epoch, or `log_end_offset` when the requested epoch is the latest. `(-1, -1)` when the
    /// requested epoch is undefined, newer than every known epoch, or the cache is empty. When
    /// the requested epoch is older than every known epoch the answer is `(requested_epoch,
    /// start offset of the first epoch)`, exactly as Kafka (KAFKA-7415): the follower then
    /// truncates to at most where the leader's known history begins.
    pub fn end_offset_for(&self, requested_epoch: i32, log_end_offset: i64) -> EpochEndOffset {
        if requested_epoch == UNDEFINED_EPOCH {
            return EpochEndOffset::UNDEFINED;
        }
        if self.latest_epoch() == Some(requested_epoch) {
            return EpochEndOffset { epoch: requested_epoch, end_offset: log_end_offset };
        }
        let Some((_, &higher_start)) = self.entries.range(requested_epoch.saturating_add(1)..).next() else {
            return EpochEndOffset::UNDEFINED;
        };
        match self.entries.range(..=requested_epoch).next_back() {
            None => EpochEndOffset { epoch: requested_epoch, end_offset: higher_start },
            Some((&floor_epoch, _)) => EpochEndOffset { epoch: floor_epoch, end_offset: higher_start },
        }
    }

    /// Drops every entry starting at or after `end_offset`, durably: call it after the log was
    /// truncated to `end_offset`, and after opening with the recovered log end offset.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<(), ReplicationError> {
        if end_offset < 0 || self.latest_entry().is_none_or(|e| e.start_offset < end_offset) {
            return Ok(());
        }
        let mut next = self.entries.clone();
        next.retain(|_, &mut s| s < end_offset);
        self.commit(next)
    }

    /// Forgets history below `start_offset` (the log start offset moved by retention or
    /// DeleteRecords), durably: entries wholly below it go, and the epoch covering it now starts
    /// at `start_offset` (Kafka's `truncateFromStart`).
    pub fn truncate_from_start(&mut self, start_offset: i64) -> Result<(), ReplicationError> {
        if start_offset < 0 || self.earliest_entry().is_none_or(|e| e.start_offset >= start_offset) {
            return Ok(());
        }
        let covering = self.entries.iter().filter(|(_, &s)| s <= start_offset).map(|(&e, _)| e).next_back();
        let mut next = self.entries.clone();
        next.retain(|_, &mut s| s > start_offset);
        if let Some(epoch) = covering {
            next.insert(epoch, start_offset);
        }
        self.commit(next)
    }

    /// Writes `next` durably, then makes it the in-memory state.
    fn commit(&mut self, next: BTreeMap<i32, i64>) -> Result<(), ReplicationError> {
        if self.poisoned {
            return Err(ReplicationError::Poisoned);
        }
        debug_assert!(is_monotonic(next.iter().map(|(&e, &s)| (e, s))), "non-monotonic epoch cache {next:?}");
        if let Err(e) = self.write(&next) {
            self.poisoned = true;
            return Err(e);
        }
        self.entries = next;
        Ok(())
    }

    fn write(&self, entries: &BTreeMap<i32, i64>) -> Result<(), ReplicationError> {
        let path = self.dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
        let tmp = tmp_path(&path);
        let bytes = encode_checkpoint(entries.iter().map(|(&epoch, &start_offset)| EpochEntry { epoch, start_offset }));
        let file = self.disk.open(&tmp, true).map_err(|e| io_err("open tmp", &tmp, e))?;
        file.set_len(0).map_err(|e| io_err("truncate tmp", &tmp, e))?;
        file.write_at(&bytes, 0).map_err(|e| io_err("write tmp", &tmp, e))?;
        file.sync_data().map_err(|e| io_err("sync tmp", &tmp, e))?;
        self.disk.rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
        self.disk.sync_dir(&self.dir).map_err(|e| io_err("sync dir", &self.dir, e))?;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("checkpoint file name").to_os_string();
    name.push(CHECKPOINT_TMP_SUFFIX);
    path.with_file_name(name)
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> ReplicationError {
    ReplicationError::Io { op, path: path.to_path_buf(), source }
}

fn is_monotonic(mut entries: impl Iterator<Item = (i32, i64)>) -> bool {
    let Some(mut prev) = entries.next() else { return true };
    for e in entries {
        if e.0 <= prev.0 || e.1 <= prev.1 {
            return false;
        }
        prev = e;
    }
    true
}

fn read_all(disk: &dyn Disk, path: &Path) -> Result<Vec<u8>, ReplicationError> {
    let file = disk.open(path, false).map_err(|e| io_err("open", path, e))?;
    let len = file.len().map_err(|e| io_err("len", path, e))?;
    // Checked before allocating: a corrupt length must not make us allocate gigabytes.
    let len = len.min(LEADER_EPOCH_CHECKPOINT_MAX_BYTES + 1) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0).map_err(|e| io_err("read", path, e))?;
    Ok(buf)
}

fn encode_checkpoint(entries: impl Iterator<Item = EpochEntry>) -> Vec<u8> {
    let entries: Vec<EpochEntry> = entries.collect();
    let mut body = format!("{CHECKPOINT_VERSION}\n{}\n", entries.len());
    for e in &entries {
        body.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
    }
    let crc = crc32c::crc32c(body.as_bytes());
    body.push_str(&format!("{crc}\n"));
    body.into_bytes()
}

/// Parses a checkpoint file, rejecting anything malformed (never panics on hostile bytes).
fn parse_checkpoint(bytes: &[u8]) -> Result<Vec<EpochEntry>, String> {
    if bytes.len() as u64 > LEADER_EPOCH_CHECKPOINT_MAX_BYTES {
        return Err(format!("larger than {LEADER_EPOCH_CHECKPOINT_MAX_BYTES} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let body_end = text.trim_end_matches('\n').rfind('\n').map(|i| i + 1).ok_or("no CRC line")?;
    let (body, crc_line) = text.split_at(body_end);
    let crc: u32 = crc_line.trim_end().parse().map_err(|_| "bad CRC line".to_string())?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return Err("CRC mismatch".into());
    }
    let mut lines = body.lines();
    let version: u32 = lines.next().and_then(|l| l.parse().ok()).ok_or("bad version line")?;
    if version != CHECKPOINT_VERSION {
        return Err(format!("unknown version {version}"));
    }
    let count: usize = lines.next().and_then(|l| l.parse().ok()).ok_or("bad count line")?;
    if count > LEADER_EPOCH_CACHE_ENTRIES_MAX {
        return Err(format!("{count} entries exceed {LEADER_EPOCH_CACHE_ENTRIES_MAX}"));
    }
    let mut entries = Vec::with_capacity(count);
    for line in lines.by_ref().take(count) {
        let mut parts = line.split(' ');
        let (Some(e), Some(s), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("bad entry line {line:?}"));
        };
        let epoch: i32 = e.parse().map_err(|_| format!("bad epoch {e:?}"))?;
        let start_offset: i64 = s.parse().map_err(|_| format!("bad offset {s:?}"))?;
        if epoch < 0 || start_offset < 0 {
            return Err(format!("negative entry {line:?}"));
        }
        entries.push(EpochEntry { epoch, start_offset });
    }
    if entries.len() != count || lines.next().is_some() {
        return Err(format!("expected {count} entries"));
    }
    if !is_monotonic(entries.iter().map(|e| (e.epoch, e.start_offset))) {
        return Err("entries not strictly increasing".into());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemDisk;

    fn new_cache() -> (MemDisk, LeaderEpochCache) {
        let disk = MemDisk::new();
        let dir = PathBuf::from("/p0");
        disk.create_dir_all(&dir).unwrap();
        let (cache, corrupt) = LeaderEpochCache::open(Arc::new(disk.clone()), dir).unwrap();
        assert!(corrupt.is_none());
        (disk, cache)
    }

    fn reopen(disk: &MemDisk) -> (LeaderEpochCache, Option<CheckpointCorruption>) {
        LeaderEpochCache::open(Arc::new(disk.clone()), PathBuf::from("/p0")).unwrap()
    }

    fn eo(epoch: i32, end_offset: i64) -> EpochEndOffset {
        EpochEndOffset { epoch, end_offset }
    }

    // Proves end_offset_for answers exactly as Kafka's LeaderEpochFileCache.endOffsetFor on the
    // KIP-101/KIP-279 style table: epochs 1@0, 2@10, 4@20 (epoch 3 had no leader writes), LEO 30.
    #[test]
    fn end_offset_for_matches_kafka_table() {
        let (_d, mut c) = new_cache();
        c.assign(1, 0).unwrap();
        c.assign(2, 10).unwrap();
        c.assign(4, 20).unwrap();
        let leo = 30;
        assert_eq!(c.end_offset_for(UNDEFINED_EPOCH, leo), EpochEndOffset::UNDEFINED);
        assert_eq!(c.end_offset_for(0, leo), eo(0, 0), "below the first epoch: (requested, first start)");
        assert_eq!(c.end_offset_for(1, leo), eo(1, 10));
        assert_eq!(c.end_offset_for(2, leo), eo(2, 20));
        assert_eq!(c.end_offset_for(3, leo), eo(2, 20), "unknown middle epoch: floor epoch, next start");
        assert_eq!(c.end_offset_for(4, leo), eo(4, 30), "latest epoch: the log end offset");
        assert_eq!(c.end_offset_for(5, leo), EpochEndOffset::UNDEFINED, "newer than every epoch");
        let (empty_disk, empty) = new_cache();
        drop(empty_disk);
        assert_eq!(empty.end_offset_for(0, 0), EpochEndOffset::UNDEFINED, "empty cache");
    }

    // Proves the KIP-279 scenario: after the first epoch is truncated from the start, a request
    // for it answers with (requested, new first start offset) rather than a stale offset.
    #[test]
    fn truncate_from_start_moves_covering_epoch() {
        let (_d, mut c) = new_cache();
        c.assign(1, 0).unwrap();
        c.assign(2, 10).unwrap();
        c.assign(3, 20).unwrap();
        c.truncate_from_start(15).unwrap();
        assert_eq!(
            c.entries(),
            vec![EpochEntry { epoch: 2, start_offset: 15 }, EpochEntry { epoch: 3, start_offset: 20 }]
        );
        assert_eq!(c.end_offset_for(1, 25), eo(1, 15));
        c.truncate_from_start(20).unwrap();
        assert_eq!(c.entries(), vec![EpochEntry { epoch: 3, start_offset: 20 }]);
        c.truncate_from_start(5).unwrap();
        assert_eq!(c.entries(), vec![EpochEntry { epoch: 3, start_offset: 20 }], "no-op below the first entry");
    }

    // Proves assign is monotonic: stale epochs are ignored, re-assigning the latest epoch at a
    // later offset is a no-op, and an empty epoch is replaced by the next one at the same offset.
    #[test]
    fn assign_is_monotonic_like_kafka() {
        let (_d, mut c) = new_cache();
        assert_eq!(c.assign(2, 5).unwrap(), Assigned::Added);
        assert_eq!(c.assign(2, 9).unwrap(), Assigned::Unchanged);
        assert_eq!(c.assign(1, 20).unwrap(), Assigned::IgnoredStale);
        assert_eq!(c.assign(3, 5).unwrap(), Assigned::Added, "epoch 2 wrote nothing");
        assert_eq!(c.entries(), vec![EpochEntry { epoch: 3, start_offset: 5 }]);
        assert_eq!(c.assign(3, 2).unwrap(), Assigned::Added, "same epoch, lower start: replaced");
        assert_eq!(c.entries(), vec![EpochEntry { epoch: 3, start_offset: 2 }]);
        assert_eq!(c.latest_epoch(), Some(3));
    }

    // Proves truncate_from_end drops exactly the entries starting at or after the offset.
    #[test]
    fn truncate_from_end_drops_later_epochs() {
        let (_d, mut c) = new_cache();
        c.assign(1, 0).unwrap();
        c.assign(2, 10).unwrap();
        c.assign(3, 20).unwrap();
        c.truncate_from_end(21).unwrap();
        assert_eq!(c.latest_epoch(), Some(3));
        c.truncate_from_end(10).unwrap();
        assert_eq!(c.entries(), vec![EpochEntry { epoch: 1, start_offset: 0 }]);
        c.truncate_from_end(0).unwrap();
        assert_eq!(c.latest_epoch(), None);
    }

    // Proves every change is durable: after a crash that drops all unsynced bytes, reopening
    // yields the same entries, and a leftover temporary file is ignored.
    #[test]
    fn survives_crash_and_reopen() {
        let (disk, mut c) = new_cache();
        c.assign(1, 0).unwrap();
        c.assign(4, 7).unwrap();
        c.truncate_from_start(3).unwrap();
        let tmp = PathBuf::from("/p0").join(format!("{LEADER_EPOCH_CHECKPOINT_FILE}{CHECKPOINT_TMP_SUFFIX}"));
        disk.open(&tmp, true).unwrap().write_at(b"garbage", 0).unwrap();
        disk.crash(|_, _| 0);
        let (again, corrupt) = reopen(&disk);
        assert!(corrupt.is_none());
        assert_eq!(again.entries(), c.entries());
        assert!(!disk.exists(&tmp));
    }

    // Proves a corrupt checkpoint (bit flip, truncation, garbage) opens as an empty cache and is
    // reported, and that the next change rewrites a valid file.
    #[test]
    fn corrupt_checkpoint_rebuilds_empty_and_reports() {
        let path = PathBuf::from("/p0").join(LEADER_EPOCH_CHECKPOINT_FILE);
        for damage in 0..3 {
            let (disk, mut c) = new_cache();
            c.assign(1, 0).unwrap();
            c.assign(2, 100).unwrap();
            let f = disk.open(&path, false).unwrap();
            match damage {
                0 => disk.flip_bit(&path, 4, 1),
                1 => f.set_len(f.len().unwrap() - 3).unwrap(),
                _ => f.write_at(&[0xff; 64], 0).unwrap(),
            }
            let (mut again, corrupt) = reopen(&disk);
            assert!(corrupt.is_some(), "damage {damage} not detected");
            assert_eq!(again.latest_epoch(), None);
            again.assign(5, 100).unwrap();
            let (third, corrupt) = reopen(&disk);
            assert!(corrupt.is_none());
            assert_eq!(third.entries(), vec![EpochEntry { epoch: 5, start_offset: 100 }]);
        }
    }

    /// A MemDisk whose renames fail once `fail` is set.
    struct FailingDisk {
        inner: MemDisk,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Disk for FailingDisk {
        fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn crate::runtime::File>> {
            self.inner.open(path, create)
        }
        fn create_dir_all(&self, path: &Path) -> io::Result<()> {
            self.inner.create_dir_all(path)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.inner.list(dir)
        }
        fn exists(&self, path: &Path) -> bool {
            self.inner.exists(path)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.inner.remove_file(path)
        }
        fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
            self.inner.remove_dir_all(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::other("injected rename failure"));
            }
            self.inner.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.inner.sync_dir(dir)
        }
    }

    // Proves a failed checkpoint write poisons the cache: memory keeps the last durable state,
    // every later change is refused, and reopening shows the last durable state.
    #[test]
    fn failed_write_poisons() {
        let mem = MemDisk::new();
        let disk = Arc::new(FailingDisk { inner: mem.clone(), fail: false.into() });
        disk.create_dir_all(Path::new("/p0")).unwrap();
        let (mut c, _) = LeaderEpochCache::open(disk.clone(), PathBuf::from("/p0")).unwrap();
        c.assign(1, 0).unwrap();
        disk.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(c.assign(2, 10), Err(ReplicationError::Io { .. })));
        assert!(c.is_poisoned());
        assert_eq!(c.latest_epoch(), Some(1), "memory keeps the durable state");
        disk.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(c.assign(2, 10), Err(ReplicationError::Poisoned)));
        assert!(matches!(c.truncate_from_end(0), Err(ReplicationError::Poisoned)));
        let (again, corrupt) = reopen(&mem);
        assert!(corrupt.is_none());
        assert_eq!(again.entries(), vec![EpochEntry { epoch: 1, start_offset: 0 }]);
    }

    // Proves the parser never panics and never accepts non-monotonic content, on random bytes
    // and on mutations of a valid file.
    #[test]
    fn parser_rejects_hostile_bytes() {
        use proptest::prelude::*;
        let valid = encode_checkpoint(
            [EpochEntry { epoch: 1, start_offset: 0 }, EpochEntry { epoch: 3, start_offset: 9 }].into_iter(),
        );
        assert_eq!(parse_checkpoint(&valid).unwrap().len(), 2);
        let unsorted = encode_checkpoint(
            [EpochEntry { epoch: 3, start_offset: 0 }, EpochEntry { epoch: 1, start_offset: 9 }].into_iter(),
        );
        assert!(parse_checkpoint(&unsorted).is_err());
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..200), pos in 0usize..64, byte in any::<u8>())| {
            let _ = parse_checkpoint(&bytes);
            let mut m = valid.clone();
            let i = pos % m.len();
            m[i] = byte;
            if let Ok(entries) = parse_checkpoint(&m) {
                prop_assert!(is_monotonic(entries.iter().map(|e| (e.epoch, e.start_offset))));
            }
        });
    }
}
