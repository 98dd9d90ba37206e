//! Transaction markers: control batches that end a producer's transaction in one partition.
//!
//! A marker is a record batch v2 with attributes `transactional | control` (0x30), the
//! producer's id and epoch, base sequence -1, and exactly one uncompressed record whose key is
//! `version i16 (0), type i16 (0 = ABORT, 1 = COMMIT)` and whose value is `version i16 (0),
//! coordinator_epoch i32` — Kafka's `EndTransactionMarker`.
//!
//! Invariants:
//! - Pure except [`append_control_batch`], which writes only through the partition's `Log`.
//! - Built batches pass `protocol::batch` header parsing and CRC checks; they are appended with
//!   `Log::append` directly, bypassing `validate_produce` (which refuses control batches from
//!   clients, as it must).
//! - Parsing hostile bytes never panics.

use crate::log::{AppendInfo, Log, LogError};
use crate::protocol::batch::{crc_ok, BatchHeader, BATCH_HEADER_LEN, LOG_OVERHEAD, MAGIC_V2};

/// Batch attributes of a marker: transactional (bit 4) and control (bit 5), no compression.
const MARKER_ATTRIBUTES: i16 = 0x10 | 0x20;
/// Control record type of an ABORT marker.
const CONTROL_TYPE_ABORT: i16 = 0;
/// Control record type of a COMMIT marker.
const CONTROL_TYPE_COMMIT: i16 = 1;
/// Where the CRC-covered region starts (the attributes field).
const CRC_COVERED_FROM: usize = 21;
/// Where the CRC itself sits.
const CRC_POS: usize = 17;

/// A parsed marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMarker {
    /// The producer whose transaction ended.
    pub producer_id: i64,
    /// Its epoch.
    pub producer_epoch: i16,
    /// COMMIT (true) or ABORT (false).
    pub commit: bool,
    /// The coordinator epoch in the marker's value.
    pub coordinator_epoch: i32,
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    let mut u = ((v << 1) ^ (v >> 31)) as u32;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

/// Builds a COMMIT (`commit`) or ABORT marker batch for `producer_id`/`producer_epoch` at base
/// offset 0 (the log assigns the real one) with timestamp `timestamp`.
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(if commit { CONTROL_TYPE_COMMIT } else { CONTROL_TYPE_ABORT }).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut body = vec![0u8]; // record attributes
    put_varint(&mut body, 0); // timestamp delta (a varlong; 0 encodes the same)
    put_varint(&mut body, 0); // offset delta
    put_varint(&mut body, key.len() as i32);
    body.extend_from_slice(&key);
    put_varint(&mut body, value.len() as i32);
    body.extend_from_slice(&value);
    put_varint(&mut body, 0); // headers
    let mut record = Vec::new();
    put_varint(&mut record, body.len() as i32);
    record.extend_from_slice(&body);

    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + record.len());
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    b.extend_from_slice(&((BATCH_HEADER_LEN - LOG_OVERHEAD + record.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch (the log stamps it)
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&[0; 4]); // crc
    b.extend_from_slice(&MARKER_ATTRIBUTES.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&1i32.to_be_bytes()); // records count
    debug_assert_eq!(b.len(), BATCH_HEADER_LEN);
    b.extend_from_slice(&record);
    let crc = crc32c::crc32c(&b[CRC_COVERED_FROM..]);
    b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn uvarint(&mut self, max_bytes: u32) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..max_bytes {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    fn varint(&mut self) -> Option<i64> {
        let v = self.uvarint(10)?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

/// Parses a complete control batch at the start of `batch` (CRC checked). `None` if it is not
/// a valid, uncompressed control batch whose first record carries a known marker key.
pub fn parse_control_batch(batch: &[u8]) -> Option<ControlMarker> {
    let h = BatchHeader::parse(batch).ok()?;
    if !h.is_control() || h.compression() != 0 || h.total_len() > batch.len() || !crc_ok(batch) {
        return None;
    }
    let mut c = Cursor(&batch[BATCH_HEADER_LEN..h.total_len()]);
    let len = c.varint()?;
    let mut r = Cursor(c.bytes(usize::try_from(len).ok()?)?);
    let _attributes = r.u8()?;
    let _timestamp_delta = r.varint()?;
    let _offset_delta = r.varint()?;
    let key_len = r.varint()?;
    let key = r.bytes(usize::try_from(key_len).ok()?)?;
    if key.len() < 4 || i16::from_be_bytes([key[0], key[1]]) != 0 {
        return None;
    }
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return None,
    };
    let value_len = r.varint()?;
    let coordinator_epoch = match usize::try_from(value_len).ok().and_then(|n| r.bytes(n)) {
        Some(v) if v.len() >= 6 => i32::from_be_bytes([v[2], v[3], v[4], v[5]]),
        _ => -1,
    };
    Some(ControlMarker { producer_id: h.producer_id, producer_epoch: h.producer_epoch, commit, coordinator_epoch })
}

/// Appends a marker to `log` (the caller holds the partition's lock and afterwards updates its
/// [`super::PartitionTxnState`] with [`super::PartitionTxnState::on_marker`] at the returned
/// offset). Goes straight to `Log::append`: `validate_produce` refuses control batches.
pub fn append_control_batch(
    log: &mut Log,
    marker: ControlMarker,
    partition_leader_epoch: i32,
    now_ms: i64,
    log_append_time: bool,
) -> Result<AppendInfo, LogError> {
    let mut buf =
        control_batch(marker.producer_id, marker.producer_epoch, marker.commit, marker.coordinator_epoch, now_ms);
    let h = BatchHeader::parse(&buf).expect("a built control batch parses");
    log.append(&mut buf, &[h], partition_leader_epoch, now_ms, log_append_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::{validate_produce, ValidateOptions};

    #[test]
    fn control_batch_is_valid_and_round_trips() {
        // Proves a built marker passes header parsing and the CRC check, carries the control and
        // transactional bits and the producer, parses back, and is refused from clients.
        for commit in [true, false] {
            let b = control_batch(1 << 52, 7, commit, 3, 1_000);
            assert!(crc_ok(&b));
            let h = BatchHeader::parse(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (1 << 52, 7, -1));
            assert_eq!((h.records_count, h.last_offset_delta, h.total_len()), (1, 0, b.len()));
            assert_eq!((h.base_timestamp, h.max_timestamp), (1_000, 1_000));
            let m = parse_control_batch(&b).unwrap();
            assert_eq!(m, ControlMarker { producer_id: 1 << 52, producer_epoch: 7, commit, coordinator_epoch: 3 });
            let opts = ValidateOptions {
                max_message_bytes: 1 << 20,
                require_keys: false,
                now_ms: 1_000,
                log_append_time: false,
                timestamp_before_max_ms: i64::MAX,
                timestamp_after_max_ms: i64::MAX,
            };
            assert_eq!(validate_produce(&b, &opts).unwrap_err().code, crate::protocol::batch::INVALID_RECORD);
        }
    }

    #[test]
    fn kafka_protocol_decoder_reads_the_marker() {
        // Proves an independent decoder (kafka-protocol) sees a control batch with one record
        // whose key and value are Kafka's EndTransactionMarker encoding.
        let b = control_batch(42, 1, true, 9, 5);
        let mut buf = bytes::Bytes::from(b);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 1);
        let r = &set.records[0];
        assert!(r.control && r.transactional);
        assert_eq!((r.producer_id, r.producer_epoch), (42, 1));
        assert_eq!(r.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert_eq!(r.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 9][..]));
    }

    #[test]
    fn parse_rejects_non_markers_and_garbage() {
        // Proves ordinary batches, corrupted markers and random bytes are not taken for markers.
        let data = crate::protocol::batch::build_batch(&[(None, Some(&b"v"[..]), vec![])], 0, 0);
        assert_eq!(parse_control_batch(&data), None);
        let mut b = control_batch(1, 1, true, 1, 1);
        let n = b.len();
        b[n - 3] ^= 0xff;
        assert_eq!(parse_control_batch(&b), None);
        let mut x: u32 = 12345;
        for len in 0..300 {
            let mut g = control_batch(1, 1, false, 1, 1);
            g.truncate(len.min(g.len()));
            for byte in g.iter_mut().skip(BATCH_HEADER_LEN) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *byte = (x >> 16) as u8;
            }
            let _ = parse_control_batch(&g);
        }
    }

    #[test]
    fn append_assigns_offsets_and_stays_valid() {
        // Proves a marker appended through Log::append gets the next offset and is stored as a
        // valid batch a reader can parse back.
        use crate::runtime::MemDisk;
        use std::sync::Arc;
        let disk = Arc::new(MemDisk::new());
        let config = crate::log::LogConfig {
            segment_bytes: 1 << 20,
            segment_ms: i64::MAX,
            retention_ms: -1,
            retention_bytes: -1,
            index_interval_bytes: 4096,
        };
        let mut log = Log::open(disk, "/data/t-0".into(), config, 0).unwrap();
        let data = crate::protocol::batch::build_batch(&[(None, Some(&b"v"[..]), vec![])], 0, 0);
        let mut d = data.clone();
        let h = BatchHeader::parse(&d).unwrap();
        log.append(&mut d, &[h], 0, 0, false).unwrap();
        let m = ControlMarker { producer_id: 5, producer_epoch: 0, commit: false, coordinator_epoch: 2 };
        let info = append_control_batch(&mut log, m, 0, 10, false).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (1, 1));
        let read = log.read(1, 1 << 20, 2, true).unwrap();
        assert_eq!(parse_control_batch(&read.records), Some(m));
        assert_eq!(BatchHeader::parse(&read.records).unwrap().base_offset, 1);
    }
}
