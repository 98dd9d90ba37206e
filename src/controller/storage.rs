//! The controller's Raft log and snapshot on the storage seam: a raft-rs [`Storage`] whose
//! contents are written through [`Disk`] before raft-rs is told they are persisted.
//!
//! Layout under the controller directory:
//! - `snapshot`: one frame holding the snapshot metadata (index, term, voters) and the encoded
//!   [`MetadataImage`](super::metadata::MetadataImage). Replaced atomically: written to
//!   `snapshot.tmp`, synced, renamed, directory synced.
//! - `raft.log`: an append-only write-ahead log of frames, each either a batch of entries or a
//!   hard state. An entry at index `i` replaces every entry at `i` or later (Raft's conflict
//!   rule), so replaying the frames in order rebuilds the log. After a snapshot the log is
//!   rewritten (`raft.log.tmp`, sync, rename) to hold only the entries after it.
//!
//! Frame format: `len: u32 | crc32c(payload): u32 | payload`, big-endian.
//!
//! Invariants:
//! - Nothing is reported persisted until `sync` returned Ok; a failed write or sync is returned to
//!   the caller, which poisons the quorum (never retried, as the `Disk` contract demands).
//! - Recovery keeps every frame up to the first torn or corrupt one. Data that was synced is
//!   never behind a torn frame (the file is append-only), so a crash at any point loses only
//!   unsynced frames.
//! - `open` trusts nothing it read until it is durable: it rewrites the log it recovered into a
//!   fresh file (`raft.log.tmp`, sync, rename, directory sync) before raft-rs sees any of it.
//!   What `open` reads may include writes that never reached the disk: after a failed fsync the
//!   page cache still shows the dropped writes (Linux, and `SimDisk`), both to a quorum reopened
//!   in the same process and to a process restarted without a reboot. Without the rewrite such
//!   a node would acknowledge those entries to the leader, keep appending and syncing behind the
//!   hole they leave on disk, and after a power loss come back without entries it had
//!   acknowledged (raft-rs then panics: "to_commit out of range"). With it, the state handed to
//!   raft-rs is exactly what was just synced, and entries that were read but never acknowledged
//!   may be kept (holding unacknowledged entries is always allowed in Raft).
//! - The entries after the snapshot chain to it: if the log holds an entry at the snapshot's
//!   index with another term (a crash after a leader's snapshot was installed but before the
//!   log was rewritten), the entries after it are dropped at recovery.
//! - In memory, `entries` is contiguous and starts right after `snapshot.metadata.index`, or is
//!   empty; `hard_state.commit` is between the snapshot index and the last index.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::runtime::{Disk, File};

/// Largest frame the recovery scan accepts; a longer length field is treated as a torn tail.
pub const FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of a frame header (length + CRC).
const FRAME_HEADER_BYTES: usize = 8;
/// Most voters a snapshot may list.
pub const VOTERS_MAX: usize = 64;

const WAL_FILE: &str = "raft.log";
const WAL_TMP_FILE: &str = "raft.log.tmp";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;

/// Why the on-disk state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    /// Reading, writing or syncing failed.
    #[error("controller storage i/o: {0}")]
    Io(#[from] io::Error),
    /// The snapshot file is unreadable (it is replaced atomically, so this is media corruption).
    #[error("corrupt controller snapshot: {0}")]
    CorruptSnapshot(String),
}

/// A raft-rs [`Storage`] backed by the `Disk` seam. See the module docs for the layout.
pub struct DiskStorage {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    wal: Arc<dyn File>,
    wal_len: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot; `data` is the encoded image at `metadata.index`.
    snapshot: Snapshot,
    entries: Vec<Entry>,
    /// During replay only: the term of the last entry seen at the snapshot index, if the log
    /// holds one after everything replacing it.
    snapshot_term_in_log: Option<u64>,
}

impl DiskStorage {
    /// Opens (or creates, with `voters` and `empty_image` as the initial snapshot at index 0)
    /// the storage under `dir`, recovering from a torn log tail.
    pub fn open(
        disk: Arc<dyn Disk>,
        dir: &Path,
        voters: &[u64],
        empty_image: Vec<u8>,
    ) -> Result<Self, StorageOpenError> {
        disk.create_dir_all(dir)?;
        for tmp in [WAL_TMP_FILE, SNAPSHOT_TMP_FILE] {
            if disk.exists(&dir.join(tmp)) {
                disk.remove_file(&dir.join(tmp))?;
            }
        }
        let snapshot = if disk.exists(&dir.join(SNAPSHOT_FILE)) {
            read_snapshot(disk.as_ref(), &dir.join(SNAPSHOT_FILE))?
        } else {
            let mut snap = Snapshot::default();
            snap.mut_metadata().mut_conf_state().voters = voters.to_vec();
            snap.data = empty_image.into();
            write_snapshot(disk.as_ref(), dir, &snap)?;
            snap
        };
        // A missing log is an empty one; the rewrite below creates it.
        let wal = disk.open(&dir.join(WAL_FILE), true)?;
        let mut storage = DiskStorage {
            disk,
            dir: dir.to_path_buf(),
            wal,
            wal_len: 0,
            hard_state: HardState::default(),
            conf_state: snapshot.get_metadata().get_conf_state().clone(),
            snapshot,
            entries: Vec::new(),
            snapshot_term_in_log: None,
        };
        storage.replay_wal()?;
        // Trust nothing that was read until it is durable: see the module docs.
        storage.rewrite_wal()?;
        Ok(storage)
    }

    /// Rebuilds entries and hard state from the log, cutting it at the first bad frame.
    fn replay_wal(&mut self) -> io::Result<()> {
        let file_len = self.wal.len()?;
        let mut offset = 0u64;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        while offset + FRAME_HEADER_BYTES as u64 <= file_len {
            self.wal.read_exact_at(&mut header, offset)?;
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let end = offset + (FRAME_HEADER_BYTES + len) as u64;
            if len > FRAME_BYTES_MAX || end > file_len {
                break;
            }
            let mut payload = vec![0u8; len];
            self.wal.read_exact_at(&mut payload, offset + FRAME_HEADER_BYTES as u64)?;
            if crc32c::crc32c(&payload) != crc || !self.replay_frame(&payload) {
                break;
            }
            offset = end;
        }
        // A torn or corrupt tail past `offset` is dropped by the rewrite that `open` does next.
        self.wal_len = offset;
        let snap_index = self.snapshot.get_metadata().index;
        if self.snapshot_term_in_log.is_some_and(|t| t != self.snapshot.get_metadata().term) {
            // The log's entry at the snapshot index is from another term: the entries after it
            // belong to a history the snapshot replaced (a crash between installing a leader's
            // snapshot and rewriting the log). They do not chain to the snapshot; drop them.
            self.entries.clear();
        }
        let commit = self.hard_state.commit.max(snap_index).min(self.last_index_inner());
        self.hard_state.commit = commit;
        self.hard_state.term = self.hard_state.term.max(self.snapshot.get_metadata().term);
        Ok(())
    }

    /// Applies one checksummed frame; false if its contents do not make sense (treated as a
    /// corrupt tail).
    fn replay_frame(&mut self, payload: &[u8]) -> bool {
        match payload.first() {
            Some(&KIND_ENTRIES) => match decode_entries(&payload[1..]) {
                Some(entries) => self.replay_entries(entries),
                None => false,
            },
            Some(&KIND_HARD_STATE) if payload.len() == 1 + 24 => {
                let word = |i: usize| u64::from_be_bytes(payload[1 + 8 * i..9 + 8 * i].try_into().unwrap_or([0; 8]));
                let hs = HardState { term: word(0), vote: word(1), commit: word(2), ..Default::default() };
                self.hard_state = hs;
                true
            }
            _ => false,
        }
    }

    fn replay_entries(&mut self, entries: Vec<Entry>) -> bool {
        let snap_index = self.snapshot.get_metadata().index;
        for e in entries {
            if e.index <= snap_index {
                // Covered by the snapshot, but it still replaces every later entry (the
                // conflict rule), and the one at the snapshot index tells whether the entries
                // after it chain to the snapshot.
                self.entries.clear();
                self.snapshot_term_in_log = (e.index == snap_index).then_some(e.term);
                continue;
            }
            if e.index > self.last_index_inner() + 1 {
                return false;
            }
            self.truncate_from(e.index);
            self.entries.push(e);
        }
        true
    }

    /// Drops in-memory entries at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        if let Some(first) = self.entries.first().map(|e| e.index) {
            if index >= first {
                self.entries.truncate((index - first) as usize);
            } else {
                self.entries.clear();
            }
        }
    }

    fn first_index_inner(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index_inner(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    fn append_frame(&mut self, payload: &[u8]) -> io::Result<()> {
        assert!(payload.len() <= FRAME_BYTES_MAX, "controller log frame of {} bytes", payload.len());
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
        frame.extend_from_slice(payload);
        self.wal.write_at(&frame, self.wal_len)?;
        self.wal_len += frame.len() as u64;
        Ok(())
    }

    /// Appends entries (replacing any conflicting suffix) to the log file and to memory. Not
    /// durable until [`DiskStorage::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let Some(first) = entries.first() else { return Ok(()) };
        assert!(first.index >= self.first_index_inner(), "append below the snapshot: {}", first.index);
        assert!(first.index <= self.last_index_inner() + 1, "append leaves a gap at {}", first.index);
        self.append_frame(&encode_entries(entries))?;
        self.truncate_from(first.index);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Records a new hard state in the log file and in memory. Not durable until `sync`.
    pub fn set_hard_state(&mut self, hs: &HardState) -> io::Result<()> {
        let mut payload = Vec::with_capacity(25);
        payload.push(KIND_HARD_STATE);
        for word in [hs.term, hs.vote, hs.commit] {
            payload.extend_from_slice(&word.to_be_bytes());
        }
        self.append_frame(&payload)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Makes every frame written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.wal.sync_data()
    }

    /// The hard state as last recorded.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest snapshot (its `data` is an encoded image).
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Entries in `[low, high)` that are still in memory; `low` must be past the snapshot.
    pub fn entries_range(&self, low: u64, high: u64) -> &[Entry] {
        let first = self.first_index_inner();
        assert!(low >= first && high <= self.last_index_inner() + 1 && low <= high, "range {low}..{high}");
        &self.entries[(low - first) as usize..(high - first) as usize]
    }

    /// Installs a snapshot received from the leader: durable snapshot file, then a rewritten
    /// log holding only the hard state (every entry is at or before the snapshot, or conflicts).
    pub fn install_snapshot(&mut self, snap: Snapshot) -> io::Result<()> {
        let meta = snap.get_metadata().clone();
        write_snapshot(self.disk.as_ref(), &self.dir, &snap)?;
        self.snapshot = snap;
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.rewrite_wal()
    }

    /// Takes a snapshot of the applied image at `index` (which must be applied and in the log),
    /// drops the entries up to it and rewrites the log without them.
    pub fn compact(&mut self, index: u64, image: Vec<u8>) -> io::Result<()> {
        let term = self.term(index).map_err(|e| io::Error::other(format!("compact at {index}: {e}")))?;
        let mut snap = Snapshot::default();
        let meta: &mut SnapshotMetadata = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        snap.data = image.into();
        write_snapshot(self.disk.as_ref(), &self.dir, &snap)?;
        let first = self.first_index_inner();
        self.entries.drain(..(index + 1 - first) as usize);
        self.snapshot = snap;
        self.rewrite_wal()
    }

    /// Replaces the log file with one holding the current hard state and entries.
    fn rewrite_wal(&mut self) -> io::Result<()> {
        let tmp_path = self.dir.join(WAL_TMP_FILE);
        let tmp = self.disk.open(&tmp_path, true)?;
        tmp.set_len(0)?;
        self.wal = tmp;
        self.wal_len = 0;
        let hs = self.hard_state.clone();
        self.set_hard_state(&hs)?;
        if !self.entries.is_empty() {
            self.append_frame(&encode_entries(&self.entries))?;
        }
        self.wal.sync_data()?;
        self.disk.rename(&tmp_path, &self.dir.join(WAL_FILE))?;
        self.disk.sync_dir(&self.dir)?;
        self.wal = self.disk.open(&self.dir.join(WAL_FILE), false)?;
        Ok(())
    }
}

fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut payload = vec![KIND_ENTRIES];
    payload.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        let bytes = e.write_to_bytes().expect("protobuf encoding of an entry cannot fail");
        payload.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        payload.extend_from_slice(&bytes);
    }
    payload
}

fn decode_entries(mut buf: &[u8]) -> Option<Vec<Entry>> {
    let count = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    buf = &buf[4..];
    if count.saturating_mul(4) > buf.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        let bytes = buf.get(4..4usize.checked_add(len)?)?;
        out.push(Entry::parse_from_bytes(bytes).ok()?);
        buf = &buf[4 + len..];
    }
    if !buf.is_empty() {
        return None;
    }
    // Entries in one frame are consecutive.
    if out.windows(2).any(|w| w[1].index != w[0].index + 1) {
        return None;
    }
    Some(out)
}

/// Writes `snap` to `dir/snapshot` atomically and durably.
fn write_snapshot(disk: &dyn Disk, dir: &Path, snap: &Snapshot) -> io::Result<()> {
    let meta = snap.get_metadata();
    let voters = &meta.get_conf_state().voters;
    assert!(voters.len() <= VOTERS_MAX, "{} voters", voters.len());
    let mut payload = vec![KIND_SNAPSHOT];
    payload.extend_from_slice(&meta.index.to_be_bytes());
    payload.extend_from_slice(&meta.term.to_be_bytes());
    payload.extend_from_slice(&(voters.len() as u32).to_be_bytes());
    for v in voters {
        payload.extend_from_slice(&v.to_be_bytes());
    }
    payload.extend_from_slice(&snap.data);
    assert!(payload.len() <= FRAME_BYTES_MAX, "snapshot of {} bytes", payload.len());
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    let tmp_path = dir.join(SNAPSHOT_TMP_FILE);
    let tmp = disk.open(&tmp_path, true)?;
    tmp.set_len(0)?;
    tmp.write_at(&frame, 0)?;
    tmp.sync_data()?;
    disk.rename(&tmp_path, &dir.join(SNAPSHOT_FILE))?;
    disk.sync_dir(dir)
}

/// Reads and verifies `path`, written by [`write_snapshot`].
fn read_snapshot(disk: &dyn Disk, path: &Path) -> Result<Snapshot, StorageOpenError> {
    let corrupt = |why: &str| StorageOpenError::CorruptSnapshot(why.to_string());
    let file = disk.open(path, false)?;
    let len = file.len()? as usize;
    if !(FRAME_HEADER_BYTES..=FRAME_HEADER_BYTES + FRAME_BYTES_MAX).contains(&len) {
        return Err(corrupt("bad file length"));
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    let payload_len = u32::from_be_bytes(buf[0..4].try_into().unwrap_or([0; 4])) as usize;
    let crc = u32::from_be_bytes(buf[4..8].try_into().unwrap_or([0; 4]));
    let payload = &buf[FRAME_HEADER_BYTES..];
    if payload_len != payload.len() || crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum or length mismatch"));
    }
    if payload.len() < 1 + 8 + 8 + 4 || payload[0] != KIND_SNAPSHOT {
        return Err(corrupt("bad header"));
    }
    let word = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().unwrap_or([0; 8]));
    let voters_len = u32::from_be_bytes(payload[17..21].try_into().unwrap_or([0; 4])) as usize;
    let data_at = 21 + voters_len * 8;
    if voters_len > VOTERS_MAX || data_at > payload.len() {
        return Err(corrupt("bad voters"));
    }
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = word(1);
    meta.term = word(9);
    meta.mut_conf_state().voters = (0..voters_len).map(|i| word(21 + 8 * i)).collect();
    snap.data = payload[data_at..].to_vec().into();
    Ok(snap)
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_inner() {
            return Err(store_err(StorageError::Compacted));
        }
        assert!(high <= self.last_index_inner() + 1, "entries up to {high} past {}", self.last_index_inner());
        let mut out = self.entries_range(low, high).to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first_index_inner() {
            return Err(store_err(StorageError::Compacted));
        }
        if idx > self.last_index_inner() {
            return Err(store_err(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first_index_inner()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            return Err(store_err(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::runtime::MemDisk;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8].into(), ..Default::default() }
    }

    /// A log with entries 1..=5 of term 1, synced, then a snapshot at index 3 with `snap_term`
    /// written as `install_snapshot` writes it, "crashing" before the log is rewritten.
    fn reopen_after_snapshot_without_rewrite(snap_term: u64) -> DiskStorage {
        let disk: Arc<dyn Disk> = Arc::new(MemDisk::new());
        let dir = Path::new("/c");
        let mut st = DiskStorage::open(disk.clone(), dir, &[1], Vec::new()).unwrap();
        st.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        st.sync().unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 3;
        snap.mut_metadata().term = snap_term;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        write_snapshot(disk.as_ref(), dir, &snap).unwrap();
        drop(st);
        DiskStorage::open(disk, dir, &[1], Vec::new()).unwrap()
    }

    #[test]
    fn entries_that_do_not_chain_to_the_snapshot_are_dropped() {
        // Proves recovery keeps the entries after a snapshot only when the log's entry at the
        // snapshot index has the snapshot's term: a leader's snapshot from another history
        // replaces them (they would otherwise follow it without matching it).
        let st = reopen_after_snapshot_without_rewrite(2);
        assert_eq!(st.last_index_inner(), 3, "entries 4 and 5 belong to the replaced history");
        assert_eq!(st.term(3).unwrap(), 2);
        let st = reopen_after_snapshot_without_rewrite(1);
        assert_eq!(st.last_index_inner(), 5, "entries after a matching snapshot are kept");
        assert_eq!(st.entries_range(4, 6).iter().map(|e| e.term).collect::<Vec<_>>(), vec![1, 1]);
    }
}
