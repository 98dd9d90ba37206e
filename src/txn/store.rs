//! Transaction coordinator state: an append-only, CRC32C-checked file on the `Disk` seam.
//!
//! File format (`txn-state.log` in the store's directory): records
//! `[u32 payload length][u32 CRC32C of payload][payload]`, big-endian, as `group/offsets.rs`.
//! A payload is one of:
//! - `1` a transaction snapshot: `txn_id str16, producer_id i64, producer_epoch i16,
//!   last_producer_epoch i16, timeout_ms i32, state u8, txn_start_ms i64, u32 n × (topic
//!   str16, partition i32), u32 n × group str16, u32 n × (group str16, u32 m × (topic str16,
//!   partition i32, offset i64, leader_epoch i32, metadata i32-length-or--1 + UTF-8, commit_ms
//!   i64))`; it replaces everything known about the id;
//! - `2` removal of an expired transactional id: `txn_id str16`;
//! - `3` a producer id block: `end i64` (ids below it may have been handed out);
//! - `4` the coordinator epoch: `epoch i32`.
//!
//! Invariants:
//! - Storage is reached only through the [`Disk`] seam.
//! - [`Replayed`] equals the replay of the file's records in order.
//! - Recovery stops at the first short, oversized, CRC-failing or unparsable record and
//!   truncates the file there (a torn tail); everything before it was written whole.
//! - A record is durable once [`TxnStore::sync`] (or a sync of the handle [`TxnStore::append`]
//!   returns) succeeded after it was appended. A failed write or sync poisons the store: it
//!   refuses every later write until restart (never retry an fsync).
//! - Compaction writes the live state to a temporary file, syncs it, renames it over the log
//!   and syncs the directory: a crash leaves the old or the new file, both complete.
//! - Decoding never panics and never sizes an allocation from a count read from the file.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::group::{CommittedOffset, GROUP_ID_MAX_LEN};
use crate::runtime::{Disk, File};

use super::coordinator::{TxnMetadata, TxnState};
use super::{TRANSACTIONAL_ID_MAX_LEN, TXN_FILE_COMPACT_BYTES, TXN_RECORD_MAX_BYTES};
use crate::record_file::{put_frame, put_str16, split_frame, Reader};

const LOG_FILE: &str = "txn-state.log";
const TMP_FILE: &str = "txn-state.log.compact";
const KIND_TXN: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_PRODUCER_ID_BLOCK: u8 = 3;
const KIND_COORDINATOR_EPOCH: u8 = 4;

/// Operating errors of the transaction state store.
#[derive(Debug, thiserror::Error)]
pub enum TxnStoreError {
    /// Storage failed; the store is now poisoned.
    #[error("transaction state I/O error at {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// An earlier write or sync failed, so the store refuses writes until restart.
    #[error("transaction state store is poisoned by an earlier storage failure")]
    Poisoned,
}

/// One persisted change of coordinator state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRecord {
    /// Everything about one transactional id (replaces what was known).
    Txn(TxnMetadata),
    /// The transactional id expired.
    Remove(String),
    /// Producer ids below this may have been handed out.
    ProducerIdBlock(i64),
    /// The coordinator epoch in force from here on.
    CoordinatorEpoch(i32),
}

/// State rebuilt by replaying the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Transactions by transactional id.
    pub txns: BTreeMap<String, TxnMetadata>,
    /// End of the last producer id block (0 if none).
    pub producer_id_block_end: i64,
    /// The last coordinator epoch (0 if none).
    pub coordinator_epoch: i32,
}

impl Replayed {
    /// Applies one record.
    pub fn apply(&mut self, rec: StoreRecord) {
        match rec {
            StoreRecord::Txn(m) => {
                self.txns.insert(m.transactional_id.clone(), m);
            }
            StoreRecord::Remove(id) => {
                self.txns.remove(&id);
            }
            StoreRecord::ProducerIdBlock(end) => self.producer_id_block_end = self.producer_id_block_end.max(end),
            StoreRecord::CoordinatorEpoch(e) => self.coordinator_epoch = self.coordinator_epoch.max(e),
        }
    }
}

/// The transaction state store.
pub struct TxnStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Arc<dyn File>,
    file_len: u64,
    poisoned: bool,
    compact_bytes: u64,
}

impl TxnStore {
    /// Opens (creating if needed) the store in `dir`, replays it and truncates a torn tail.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path) -> Result<(TxnStore, Replayed), TxnStoreError> {
        Self::open_with_compact_bytes(disk, dir, TXN_FILE_COMPACT_BYTES)
    }

    /// [`TxnStore::open`] with a custom compaction threshold (tests use small ones).
    pub fn open_with_compact_bytes(
        disk: Arc<dyn Disk>,
        dir: &Path,
        compact_bytes: u64,
    ) -> Result<(TxnStore, Replayed), TxnStoreError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| TxnStoreError::Io { path, source }
        };
        disk.create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = dir.join(TMP_FILE);
        if disk.exists(&tmp) {
            disk.remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let path = dir.join(LOG_FILE);
        let file = disk.open(&path, true).map_err(io_err(&path))?;
        let len = file.len().map_err(io_err(&path))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0).map_err(io_err(&path))?;
        let mut replayed = Replayed::default();
        let mut pos = 0usize;
        while let Some((rec, used)) = decode_record(&buf[pos..]) {
            replayed.apply(rec);
            pos += used;
        }
        if pos as u64 != len {
            tracing::warn!(path = %path.display(), valid_bytes = pos, file_bytes = len,
                "transaction state file has a torn or corrupt tail; truncating it");
            file.set_len(pos as u64).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        tracing::info!(transactional_ids = replayed.txns.len(), "loaded transaction state");
        let store =
            TxnStore { disk, dir: dir.to_path_buf(), file, file_len: pos as u64, poisoned: false, compact_bytes };
        Ok((store, replayed))
    }

    /// Whether an earlier failure poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Marks the store failed (the shell calls this when an asynchronous sync fails).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Appends `records`. They are durable only after the returned handle is synced.
    pub fn append(&mut self, records: &[StoreRecord]) -> Result<Arc<dyn File>, TxnStoreError> {
        if self.poisoned {
            return Err(TxnStoreError::Poisoned);
        }
        let mut buf = Vec::new();
        for r in records {
            encode_record(&mut buf, r);
        }
        let r = self.file.write_at(&buf, self.file_len);
        self.check(r, LOG_FILE)?;
        self.file_len += buf.len() as u64;
        Ok(self.file.clone())
    }

    /// Syncs the file; a failure poisons the store.
    pub fn sync(&mut self) -> Result<(), TxnStoreError> {
        if self.poisoned {
            return Err(TxnStoreError::Poisoned);
        }
        let r = self.file.sync_data();
        self.check(r, LOG_FILE)
    }

    /// The file handle (to sync off the caller's thread).
    pub fn file(&self) -> Arc<dyn File> {
        self.file.clone()
    }

    /// Whether the file has grown past the compaction threshold.
    pub fn wants_compaction(&self) -> bool {
        self.file_len > self.compact_bytes
    }

    /// Rewrites the file as `live` (the coordinator's [`super::TxnCoordinator::snapshot_records`])
    /// if that is at most half its size; otherwise raises the threshold and waits for growth.
    /// Returns whether it rewrote the file (the new file is synced: everything is durable).
    pub fn compact(&mut self, live: &[StoreRecord]) -> Result<bool, TxnStoreError> {
        let mut buf = Vec::new();
        for r in live {
            encode_record(&mut buf, r);
        }
        if buf.len() as u64 * 2 > self.file_len {
            self.compact_bytes = self.compact_bytes.max(buf.len() as u64 * 2);
            return Ok(false);
        }
        if self.poisoned {
            return Err(TxnStoreError::Poisoned);
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
            Err(e) => return self.check(Err(e), TMP_FILE).map(|()| false),
        };
        tracing::info!(old_bytes = self.file_len, new_bytes = buf.len(), "compacted the transaction state file");
        self.file = f;
        self.file_len = buf.len() as u64;
        Ok(true)
    }

    /// Bytes in the file (for tests and metrics).
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }

    fn check(&mut self, r: io::Result<()>, name: &str) -> Result<(), TxnStoreError> {
        r.map_err(|source| {
            self.poisoned = true;
            tracing::error!(error = %source, "transaction state write failed; refusing further changes until restart");
            TxnStoreError::Io { path: self.dir.join(name).display().to_string(), source }
        })
    }
}

fn put_u32(p: &mut Vec<u8>, n: usize) {
    p.extend_from_slice(&(u32::try_from(n).expect("count fits u32")).to_be_bytes());
}

fn encode_record(buf: &mut Vec<u8>, rec: &StoreRecord) {
    let mut p = Vec::new();
    match rec {
        StoreRecord::Txn(m) => {
            p.push(KIND_TXN);
            put_str16(&mut p, &m.transactional_id);
            p.extend_from_slice(&m.producer_id.to_be_bytes());
            p.extend_from_slice(&m.producer_epoch.to_be_bytes());
            p.extend_from_slice(&m.last_producer_epoch.to_be_bytes());
            p.extend_from_slice(&m.timeout_ms.to_be_bytes());
            p.push(m.state.code());
            p.extend_from_slice(&m.txn_start_ms.to_be_bytes());
            put_u32(&mut p, m.partitions.len());
            for (t, i) in &m.partitions {
                put_str16(&mut p, t);
                p.extend_from_slice(&i.to_be_bytes());
            }
            put_u32(&mut p, m.groups.len());
            for g in &m.groups {
                put_str16(&mut p, g);
            }
            put_u32(&mut p, m.pending_offsets.len());
            for (g, offs) in &m.pending_offsets {
                put_str16(&mut p, g);
                put_u32(&mut p, offs.len());
                for ((t, i), o) in offs {
                    put_str16(&mut p, t);
                    p.extend_from_slice(&i.to_be_bytes());
                    p.extend_from_slice(&o.offset.to_be_bytes());
                    p.extend_from_slice(&o.leader_epoch.to_be_bytes());
                    match &o.metadata {
                        None => p.extend_from_slice(&(-1i32).to_be_bytes()),
                        Some(s) => {
                            p.extend_from_slice(&(s.len() as i32).to_be_bytes());
                            p.extend_from_slice(s.as_bytes());
                        }
                    }
                    p.extend_from_slice(&o.commit_ms.to_be_bytes());
                }
            }
        }
        StoreRecord::Remove(id) => {
            p.push(KIND_REMOVE);
            put_str16(&mut p, id);
        }
        StoreRecord::ProducerIdBlock(end) => {
            p.push(KIND_PRODUCER_ID_BLOCK);
            p.extend_from_slice(&end.to_be_bytes());
        }
        StoreRecord::CoordinatorEpoch(e) => {
            p.push(KIND_COORDINATOR_EPOCH);
            p.extend_from_slice(&e.to_be_bytes());
        }
    }
    put_frame(buf, &p, TXN_RECORD_MAX_BYTES, "transaction");
}

/// Decodes the record at the start of `buf` and its encoded length, or `None` if `buf` does
/// not begin with a whole, valid record. Never panics on hostile bytes.
fn decode_record(buf: &[u8]) -> Option<(StoreRecord, usize)> {
    let (p, frame_len) = split_frame(buf, TXN_RECORD_MAX_BYTES)?;
    let mut r = Reader::new(p, GROUP_ID_MAX_LEN.max(TRANSACTIONAL_ID_MAX_LEN).max(crate::limits::TOPIC_NAME_MAX_LEN));
    let rec = match r.u8()? {
        KIND_TXN => StoreRecord::Txn(decode_txn(&mut r)?),
        KIND_REMOVE => StoreRecord::Remove(r.str16()?),
        KIND_PRODUCER_ID_BLOCK => StoreRecord::ProducerIdBlock(r.i64()?),
        KIND_COORDINATOR_EPOCH => StoreRecord::CoordinatorEpoch(r.i32()?),
        _ => return None,
    };
    if !r.is_empty() {
        return None;
    }
    Some((rec, frame_len))
}

fn decode_txn(r: &mut Reader<'_>) -> Option<TxnMetadata> {
    let transactional_id = r.str16()?;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let last_producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = TxnState::from_code(r.u8()?)?;
    let txn_start_ms = r.i64()?;
    let mut partitions = BTreeSet::new();
    for _ in 0..r.u32()? {
        let t = r.str16()?;
        partitions.insert((t, r.i32()?));
    }
    let mut groups = BTreeSet::new();
    for _ in 0..r.u32()? {
        groups.insert(r.str16()?);
    }
    let mut pending_offsets = BTreeMap::new();
    for _ in 0..r.u32()? {
        let g = r.str16()?;
        let mut offs = BTreeMap::new();
        for _ in 0..r.u32()? {
            let t = r.str16()?;
            let i = r.i32()?;
            let offset = r.i64()?;
            let leader_epoch = r.i32()?;
            let mlen = r.i32()?;
            let metadata = if mlen < 0 { None } else { Some(r.string(mlen as usize)?) };
            let commit_ms = r.i64()?;
            offs.insert((t, i), CommittedOffset { offset, leader_epoch, metadata, commit_ms });
        }
        pending_offsets.insert(g, offs);
    }
    Some(TxnMetadata {
        transactional_id,
        producer_id,
        producer_epoch,
        last_producer_epoch,
        timeout_ms,
        state,
        partitions,
        groups,
        pending_offsets,
        txn_start_ms,
        last_update_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemDisk;

    fn dir() -> PathBuf {
        PathBuf::from("/data/__transaction_state")
    }

    fn meta(id: &str, epoch: i16, state: TxnState) -> TxnMetadata {
        let mut pending = BTreeMap::new();
        let mut offs = BTreeMap::new();
        offs.insert(
            ("t".to_string(), 2),
            CommittedOffset { offset: 42, leader_epoch: 3, metadata: Some("m".into()), commit_ms: 9 },
        );
        offs.insert(
            ("u".to_string(), 0),
            CommittedOffset { offset: 1, leader_epoch: -1, metadata: None, commit_ms: 0 },
        );
        pending.insert("g".to_string(), offs);
        TxnMetadata {
            transactional_id: id.to_string(),
            producer_id: 1 << 52,
            producer_epoch: epoch,
            last_producer_epoch: epoch - 1,
            timeout_ms: 60_000,
            state,
            partitions: [("t".to_string(), 0), ("t".to_string(), 1)].into_iter().collect(),
            groups: ["g".to_string()].into_iter().collect(),
            pending_offsets: pending,
            txn_start_ms: 77,
            last_update_ms: 0,
        }
    }

    #[test]
    fn records_round_trip_and_survive_crash() {
        // Proves every record kind round-trips through the file and synced records survive a
        // crash that drops unsynced bytes.
        let disk = MemDisk::new();
        let (mut s, r) = TxnStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        assert_eq!(r, Replayed::default());
        let recs = vec![
            StoreRecord::CoordinatorEpoch(3),
            StoreRecord::ProducerIdBlock(5000),
            StoreRecord::Txn(meta("a", 1, TxnState::PrepareCommit)),
            StoreRecord::Txn(meta("b", 2, TxnState::Ongoing)),
            StoreRecord::Remove("b".into()),
        ];
        s.append(&recs).unwrap();
        s.sync().unwrap();
        s.append(&[StoreRecord::Txn(meta("c", 1, TxnState::Empty))]).unwrap();
        drop(s);
        disk.crash(|_, _| 0);
        let (_, r) = TxnStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        assert_eq!(r.coordinator_epoch, 3);
        assert_eq!(r.producer_id_block_end, 5000);
        assert_eq!(r.txns.len(), 1);
        assert_eq!(r.txns["a"], meta("a", 1, TxnState::PrepareCommit));
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut() {
        // Proves recovery keeps every synced record, never invents one, and truncates a torn
        // tail so later appends replay, whatever prefix of the unsynced bytes survives.
        let mut unsynced = 0;
        for keep in 0..400 {
            let disk = MemDisk::new();
            let (mut s, _) = TxnStore::open(Arc::new(disk.clone()), &dir()).unwrap();
            s.append(&[StoreRecord::Txn(meta("a", 1, TxnState::Ongoing))]).unwrap();
            s.sync().unwrap();
            let before = s.file_bytes();
            s.append(&[StoreRecord::Txn(meta("a", 2, TxnState::PrepareAbort)), StoreRecord::ProducerIdBlock(9)])
                .unwrap();
            unsynced = s.file_bytes() - before;
            drop(s);
            disk.crash(|_, n| keep.min(n));
            let (mut s, r) = TxnStore::open(Arc::new(disk.clone()), &dir()).unwrap();
            let e = r.txns["a"].producer_epoch;
            assert!(e == 1 || e == 2, "keep={keep}");
            if r.producer_id_block_end == 9 {
                assert_eq!(e, 2);
            }
            s.append(&[StoreRecord::CoordinatorEpoch(8)]).unwrap();
            s.sync().unwrap();
            drop(s);
            disk.crash(|_, _| 0);
            let (_, r) = TxnStore::open(Arc::new(disk.clone()), &dir()).unwrap();
            assert_eq!(r.coordinator_epoch, 8, "keep={keep}");
        }
        assert!(unsynced < 400);
    }

    #[test]
    fn compaction_keeps_live_state() {
        // Proves compaction rewrites the file with only the live records, which replay the same.
        let disk = MemDisk::new();
        let (mut s, _) = TxnStore::open_with_compact_bytes(Arc::new(disk.clone()), &dir(), 2048).unwrap();
        for e in 0..100 {
            s.append(&[StoreRecord::Txn(meta("a", e, TxnState::Ongoing))]).unwrap();
        }
        assert!(s.wants_compaction());
        let live = vec![
            StoreRecord::CoordinatorEpoch(2),
            StoreRecord::ProducerIdBlock(10),
            StoreRecord::Txn(meta("a", 99, TxnState::Ongoing)),
        ];
        assert!(s.compact(&live).unwrap());
        assert!(s.file_bytes() < 2048);
        drop(s);
        disk.crash(|_, _| 0);
        let (_, r) = TxnStore::open(Arc::new(disk.clone()), &dir()).unwrap();
        assert_eq!(r.txns["a"].producer_epoch, 99);
        assert_eq!(r.producer_id_block_end, 10);
        assert!(!disk.exists(&dir().join(TMP_FILE)));
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        // Proves the record decoder rejects arbitrary bytes, including valid-CRC garbage,
        // without panicking.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for n in 0..3000usize {
            let mut p = Vec::with_capacity(n % 131);
            for _ in 0..(n % 131) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push(x as u8);
            }
            if let Some(b) = p.first_mut() {
                *b = (*b % 5) + 1;
            }
            let _ = decode_record(&p);
            let mut framed = Vec::new();
            framed.extend_from_slice(&(p.len() as u32).to_be_bytes());
            framed.extend_from_slice(&crc32c::crc32c(&p).to_be_bytes());
            framed.extend_from_slice(&p);
            let _ = decode_record(&framed);
        }
    }
}
