//! Kafka record batch v2 (magic 2): header parsing, produce validation, offset assignment,
//! record-level timestamp scans, and a batch builder for clients, tests and the simulator.
//!
//! Layout of a batch (big-endian): baseOffset i64, batchLength i32 (bytes after this field),
//! partitionLeaderEpoch i32, magic i8, crc u32 (CRC32C from attributes to the end), attributes
//! i16, lastOffsetDelta i32, baseTimestamp i64, maxTimestamp i64, producerId i64, producerEpoch
//! i16, baseSequence i32, recordsCount i32, then the records (possibly compressed).
//!
//! Invariants:
//! - Pure: no I/O, no clock (time comes in as `now_ms`).
//! - Decoding hostile bytes never panics and never allocates more than the input (and, for
//!   compressed batches, the decompressed output) justifies: record counts from the wire are
//!   never used to size allocations.
//! - baseOffset and partitionLeaderEpoch are outside the CRC, so [`assign_offsets`] patches them
//!   without recomputing it; anything under the CRC that changes forces a recomputation.

use std::borrow::Cow;

#[cfg(test)]
use bytes::Bytes;
use bytes::{BufMut, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use thiserror::Error;

/// Bytes of the fixed batch header, up to and including recordsCount.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes before (and not counted by) batchLength: baseOffset and batchLength themselves.
pub const LOG_OVERHEAD: usize = 12;
/// The only record batch format we store.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_POS: usize = 0;
const LENGTH_POS: usize = 8;
const LEADER_EPOCH_POS: usize = 12;
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const ATTRIBUTES_POS: usize = 21;
const LAST_OFFSET_DELTA_POS: usize = 23;
const BASE_TIMESTAMP_POS: usize = 27;
const MAX_TIMESTAMP_POS: usize = 35;
const PRODUCER_ID_POS: usize = 43;
const PRODUCER_EPOCH_POS: usize = 51;
const BASE_SEQUENCE_POS: usize = 53;
const RECORDS_COUNT_POS: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Kafka error code: the message failed its CRC or is otherwise malformed.
pub const CORRUPT_MESSAGE: i16 = 2;
/// Kafka error code: a batch is larger than `max.message.bytes`.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// Kafka error code: a record timestamp is outside the accepted window.
pub const INVALID_TIMESTAMP: i16 = 32;
/// Kafka error code: the message format (magic) is not supported.
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
/// Kafka error code: a record is invalid (bad offsets, missing key on a compacted topic, ...).
pub const INVALID_RECORD: i16 = 87;

/// Errors decoding a stored or received batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the fixed header or the declared batch length.
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the header says are needed.
        needed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// batchLength is smaller than the fixed header or negative.
    #[error("invalid batch length {0}")]
    BadLength(i32),
    /// magic is not 2.
    #[error("unsupported magic {0}")]
    BadMagic(i8),
    /// The CRC32C does not match the contents.
    #[error("batch CRC mismatch")]
    BadCrc,
    /// The compression codec id is not one of 0..=4.
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    /// The compressed records could not be decompressed.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// A record inside the batch is malformed.
    #[error("malformed record: {0}")]
    MalformedRecord(&'static str),
}

/// The fixed 61-byte header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(b: &[u8], pos: usize) -> i64 {
    i64::from_be_bytes(b[pos..pos + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes(b[pos..pos + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes(b[pos..pos + 2].try_into().expect("2 bytes"))
}

impl BatchHeader {
    /// Parses the fixed header from the start of `buf`. Only the header must be present; the
    /// caller checks `buf.len() >= total_len()` when it needs the whole batch. Fails on a
    /// short buffer, a batchLength below the header size, or a magic other than 2.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::Truncated { needed: BATCH_HEADER_LEN, available: buf.len() });
        }
        let batch_length = be_i32(buf, LENGTH_POS);
        if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::BadLength(batch_length));
        }
        let magic = buf[MAGIC_POS] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET_POS),
            batch_length,
            partition_leader_epoch: be_i32(buf, LEADER_EPOCH_POS),
            magic,
            crc: be_i32(buf, CRC_POS) as u32,
            attributes: be_i16(buf, ATTRIBUTES_POS),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_POS),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_POS),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_POS),
            producer_id: be_i64(buf, PRODUCER_ID_POS),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH_POS),
            base_sequence: be_i32(buf, BASE_SEQUENCE_POS),
            records_count: be_i32(buf, RECORDS_COUNT_POS),
        })
    }

    /// Bytes of the whole batch including baseOffset and batchLength.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the batch's last record (saturating on hostile deltas).
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(self.last_offset_delta as i64)
    }

    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch is a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Whether timestamps are LogAppendTime (every record's timestamp is maxTimestamp).
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
}

/// CRC32C over `batch[21..total_len]`, the region the header's crc covers.
fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_POS..])
}

/// Whether `batch` starts with a complete v2 batch whose CRC32C matches.
pub fn crc_ok(batch: &[u8]) -> bool {
    match BatchHeader::parse(batch) {
        Ok(h) if h.total_len() <= batch.len() => compute_crc(&batch[..h.total_len()]) == h.crc,
        _ => false,
    }
}

/// Cursor over record bytes that never reads out of bounds.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, BatchError> {
        let b = *self.buf.get(self.pos).ok_or(BatchError::MalformedRecord("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Unsigned LEB128 of at most `max_bytes` bytes.
    fn uvarint(&mut self, max_bytes: u32) -> Result<u64, BatchError> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.u8()?;
            value |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BatchError::MalformedRecord("varint too long"))
    }

    /// Zigzag varint (i32, at most 5 bytes).
    fn varint(&mut self) -> Result<i32, BatchError> {
        let v = self.uvarint(5)?;
        if v > u32::MAX as u64 {
            return Err(BatchError::MalformedRecord("varint overflow"));
        }
        let v = v as u32;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    /// Zigzag varlong (i64, at most 10 bytes).
    fn varlong(&mut self) -> Result<i64, BatchError> {
        let v = self.uvarint(10)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        if n > self.remaining() {
            return Err(BatchError::MalformedRecord("field longer than record"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A varint-length-prefixed byte string; -1 is null.
    fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        let len = self.varint()?;
        match len {
            -1 => Ok(None),
            l if l < -1 => Err(BatchError::MalformedRecord("negative length")),
            l => Ok(Some(self.bytes(l as usize)?)),
        }
    }
}

/// The fields of one record that validation and lookups need.
struct RecordView<'a> {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&'a [u8]>,
}

/// Parses one record body (after its length prefix), requiring it to be consumed exactly.
fn parse_record(body: &[u8]) -> Result<RecordView<'_>, BatchError> {
    let mut r = Reader { buf: body, pos: 0 };
    let _attributes = r.u8()?;
    let timestamp_delta = r.varlong()?;
    let offset_delta = r.varint()?;
    let key = r.nullable_bytes()?;
    let _value = r.nullable_bytes()?;
    let header_count = r.varint()?;
    if header_count < 0 {
        return Err(BatchError::MalformedRecord("negative header count"));
    }
    for _ in 0..header_count {
        // Each header needs at least two bytes, so a hostile count fails fast on truncation.
        match r.nullable_bytes()? {
            Some(_) => {}
            None => return Err(BatchError::MalformedRecord("null header key")),
        }
        let _ = r.nullable_bytes()?;
    }
    if r.remaining() != 0 {
        return Err(BatchError::MalformedRecord("record length does not match contents"));
    }
    Ok(RecordView { timestamp_delta, offset_delta, key })
}

/// Calls `f` for each record in the (uncompressed) record section; returns the record count.
fn for_each_record<'a>(
    records: &'a [u8],
    mut f: impl FnMut(usize, RecordView<'a>) -> Result<(), BatchError>,
) -> Result<usize, BatchError> {
    let mut r = Reader { buf: records, pos: 0 };
    let mut n = 0usize;
    while r.remaining() > 0 {
        let len = r.varint()?;
        if len < 0 {
            return Err(BatchError::MalformedRecord("negative record length"));
        }
        let body = r.bytes(len as usize)?;
        f(n, parse_record(body)?)?;
        n += 1;
    }
    Ok(n)
}

/// The record section of a complete batch, decompressed if needed.
fn records_section<'a>(batch: &'a [u8], h: &BatchHeader) -> Result<Cow<'a, [u8]>, BatchError> {
    let raw = &batch[BATCH_HEADER_LEN..h.total_len()];
    match h.compression() {
        0 => Ok(Cow::Borrowed(raw)),
        c => super::decompress::decompress(c, raw, crate::limits::DECOMPRESSED_BATCH_MAX_BYTES)
            .map(Cow::Owned)
            .map_err(|e| match e {
                super::decompress::DecompressError::UnknownCodec(c) => BatchError::UnknownCompression(c),
                other => BatchError::Decompress(other.to_string()),
            }),
    }
}

/// Parses the header of a complete batch at the start of `batch` and checks its CRC.
fn parse_complete(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if h.total_len() > batch.len() {
        return Err(BatchError::Truncated { needed: h.total_len(), available: batch.len() });
    }
    if compute_crc(&batch[..h.total_len()]) != h.crc {
        return Err(BatchError::BadCrc);
    }
    Ok(h)
}

/// Settings that decide whether a produce payload is acceptable.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Largest accepted batch in bytes (`max.message.bytes`), header included.
    pub max_message_bytes: usize,
    /// The topic is compacted, so every record needs a key.
    pub require_keys: bool,
    /// The broker's current time.
    pub now_ms: i64,
    /// The topic uses LogAppendTime: client timestamps are overwritten, so not checked.
    pub log_append_time: bool,
    /// `message.timestamp.before.max.ms`; `i64::MAX` disables the check.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`; `i64::MAX` disables the check.
    pub timestamp_after_max_ms: i64,
}

/// Why a produce payload was refused, as a Kafka error code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("error {code}: {message}")]
pub struct ValidationError {
    /// Kafka error code (e.g. [`CORRUPT_MESSAGE`]).
    pub code: i16,
    /// Explanation for the response's error message.
    pub message: String,
}

fn verr(code: i16, message: impl Into<String>) -> ValidationError {
    ValidationError { code, message: message.into() }
}

/// Validates a produce payload: one or more complete v2 batches and nothing else. Returns
/// the header of each batch in order (the log uses them to assign offsets).
pub fn validate_produce(records: &[u8], opts: &ValidateOptions) -> Result<Vec<BatchHeader>, ValidationError> {
    if records.is_empty() {
        return Err(verr(CORRUPT_MESSAGE, "produce payload holds no record batch"));
    }
    let mut headers = Vec::new();
    let mut pos = 0usize;
    while pos < records.len() {
        let rest = &records[pos..];
        let h = validate_one(rest, opts)?;
        pos += h.total_len();
        headers.push(h);
    }
    Ok(headers)
}

fn validate_one(rest: &[u8], opts: &ValidateOptions) -> Result<BatchHeader, ValidationError> {
    if rest.len() <= MAGIC_POS {
        return Err(verr(CORRUPT_MESSAGE, "trailing partial batch"));
    }
    let magic = rest[MAGIC_POS] as i8;
    if magic != MAGIC_V2 {
        let code = if magic == 0 || magic == 1 { UNSUPPORTED_FOR_MESSAGE_FORMAT } else { CORRUPT_MESSAGE };
        return Err(verr(code, format!("record batch magic {magic} is not supported; need 2")));
    }
    let h = BatchHeader::parse(rest).map_err(|e| verr(CORRUPT_MESSAGE, e.to_string()))?;
    if h.total_len() > rest.len() {
        return Err(verr(CORRUPT_MESSAGE, "batch length exceeds the payload"));
    }
    if h.total_len() > opts.max_message_bytes {
        return Err(verr(
            MESSAGE_TOO_LARGE,
            format!("batch of {} bytes exceeds max.message.bytes {}", h.total_len(), opts.max_message_bytes),
        ));
    }
    let batch = &rest[..h.total_len()];
    if compute_crc(batch) != h.crc {
        return Err(verr(CORRUPT_MESSAGE, "record batch CRC32C mismatch"));
    }
    if h.is_control() {
        return Err(verr(INVALID_RECORD, "clients may not produce control batches"));
    }
    if h.records_count < 1 {
        return Err(verr(INVALID_RECORD, "record batch holds no records"));
    }
    if h.last_offset_delta != h.records_count - 1 {
        return Err(verr(INVALID_RECORD, "lastOffsetDelta does not match recordsCount"));
    }
    let section = records_section(batch, &h).map_err(|e| match e {
        BatchError::UnknownCompression(_) | BatchError::Decompress(_) => verr(CORRUPT_MESSAGE, e.to_string()),
        other => verr(INVALID_RECORD, other.to_string()),
    })?;
    let check_ts = !opts.log_append_time;
    let lower = match opts.timestamp_before_max_ms {
        i64::MAX => i64::MIN,
        b => opts.now_ms.saturating_sub(b),
    };
    let upper = match opts.timestamp_after_max_ms {
        i64::MAX => i64::MAX,
        a => opts.now_ms.saturating_add(a),
    };
    let mut ts_error: Option<ValidationError> = None;
    let count = for_each_record(&section, |i, rec| {
        if i as i64 >= h.records_count as i64 {
            return Err(BatchError::MalformedRecord("more records than recordsCount"));
        }
        if rec.offset_delta as i64 != i as i64 {
            return Err(BatchError::MalformedRecord("offset deltas are not 0..n-1 in order"));
        }
        if opts.require_keys && rec.key.is_none() {
            return Err(BatchError::MalformedRecord("compacted topics need keys: record has a null key"));
        }
        if check_ts && ts_error.is_none() {
            let ts = h.base_timestamp.saturating_add(rec.timestamp_delta);
            if ts < lower || ts > upper {
                ts_error =
                    Some(verr(INVALID_TIMESTAMP, format!("record timestamp {ts} is outside [{lower}, {upper}]")));
            }
        }
        Ok(())
    })
    .map_err(|e| verr(INVALID_RECORD, e.to_string()))?;
    if count as i64 != h.records_count as i64 {
        return Err(verr(INVALID_RECORD, format!("recordsCount {} but {count} records present", h.records_count)));
    }
    if let Some(e) = ts_error {
        return Err(e);
    }
    Ok(h)
}

/// Stamps a validated batch with its offsets and leader epoch (outside the CRC, patched in
/// place). With `log_append_time_ms`, also marks the batch LogAppendTime, sets base and max
/// timestamps to it, and recomputes the CRC.
///
/// Precondition (programmer error otherwise): `batch` is exactly one complete v2 batch.
pub fn assign_offsets(
    batch: &mut [u8],
    base_offset: i64,
    partition_leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) {
    assert!(batch.len() >= BATCH_HEADER_LEN, "assign_offsets needs a whole batch");
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&partition_leader_epoch.to_be_bytes());
    if let Some(ts) = log_append_time_ms {
        let attrs = be_i16(batch, ATTRIBUTES_POS) | TIMESTAMP_TYPE_BIT;
        batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
        batch[BASE_TIMESTAMP_POS..BASE_TIMESTAMP_POS + 8].copy_from_slice(&ts.to_be_bytes());
        batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&ts.to_be_bytes());
        let crc = compute_crc(batch);
        batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// `(offset, timestamp)` of every record of one complete batch, in order, decompressing if
/// needed. With LogAppendTime every record carries the batch's maxTimestamp.
pub fn record_timestamps_and_offsets(batch: &[u8]) -> Result<Vec<(i64, i64)>, BatchError> {
    let h = parse_complete(batch)?;
    let section = records_section(batch, &h)?;
    let mut out = Vec::new();
    for_each_record(&section, |_, rec| {
        let ts = if h.timestamp_type_log_append() {
            h.max_timestamp
        } else {
            h.base_timestamp.saturating_add(rec.timestamp_delta)
        };
        out.push((h.base_offset.saturating_add(rec.offset_delta as i64), ts));
        Ok(())
    })?;
    Ok(out)
}

/// One record for [`build_batch`]: key, value, headers.
pub type RecordSpec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Vec<(String, Vec<u8>)>);

/// Builds a valid batch (base offset 0, no producer id, leader epoch -1) in which every record
/// has timestamp `base_timestamp`. `compression` is 0..=4. For clients, tests and the sim.
pub fn build_batch(records: &[RecordSpec<'_>], base_timestamp: i64, compression: u8) -> Vec<u8> {
    let timestamps = vec![base_timestamp; records.len()];
    build_batch_with_timestamps(records, &timestamps, compression)
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}
fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}
fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn put_nullable(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// Like [`build_batch`] but with one timestamp per record (`timestamps.len() == records.len()`).
/// baseTimestamp is the first record's timestamp and maxTimestamp the largest.
pub fn build_batch_with_timestamps(records: &[RecordSpec<'_>], timestamps: &[i64], compression: u8) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch needs at least one record");
    assert_eq!(records.len(), timestamps.len());
    assert!(compression <= 4, "unknown compression {compression}");
    let base_ts = timestamps[0];
    let max_ts = *timestamps.iter().max().expect("non-empty");
    let mut raw = Vec::new();
    let mut body = Vec::new();
    for (i, ((key, value, headers), ts)) in records.iter().zip(timestamps).enumerate() {
        body.clear();
        body.push(0u8);
        put_varlong(&mut body, ts - base_ts);
        put_varint(&mut body, i as i32);
        put_nullable(&mut body, *key);
        put_nullable(&mut body, *value);
        put_varint(&mut body, headers.len() as i32);
        for (hk, hv) in headers {
            put_nullable(&mut body, Some(hk.as_bytes()));
            put_nullable(&mut body, Some(hv));
        }
        put_varint(&mut raw, body.len() as i32);
        raw.extend_from_slice(&body);
    }
    let section: Vec<u8> = if compression == 0 {
        raw
    } else {
        let mut out = BytesMut::new();
        let fill = |tmp: &mut BytesMut| {
            tmp.put_slice(&raw);
            Ok(())
        };
        match compression {
            1 => Gzip::compress(&mut out, fill),
            2 => Snappy::compress(&mut out, fill),
            3 => Lz4::compress(&mut out, fill),
            _ => Zstd::compress(&mut out, fill),
        }
        .expect("in-memory compression cannot fail");
        out.to_vec()
    };
    let n = records.len() as i32;
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + section.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((BATCH_HEADER_LEN - LOG_OVERHEAD + section.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(MAGIC_V2 as u8);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&(compression as i16).to_be_bytes());
    b.extend_from_slice(&(n - 1).to_be_bytes());
    b.extend_from_slice(&base_ts.to_be_bytes());
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&(-1i64).to_be_bytes());
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    debug_assert_eq!(b.len(), BATCH_HEADER_LEN);
    b.extend_from_slice(&section);
    let crc = compute_crc(&b);
    b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts() -> ValidateOptions {
        ValidateOptions {
            max_message_bytes: 1 << 20,
            require_keys: false,
            now_ms: 1_000_000,
            log_append_time: false,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
        }
    }

    fn sample(compression: u8) -> Vec<u8> {
        build_batch(
            &[
                (Some(b"k1"), Some(b"v1"), vec![("h".to_string(), b"x".to_vec())]),
                (None, Some(b"v2"), vec![]),
                (Some(b"k3"), None, vec![]),
            ],
            1_000_000,
            compression,
        )
    }

    #[test]
    fn build_then_validate_round_trips_for_every_codec() {
        // Proves build_batch output passes validation and decodes back, for all five codecs.
        for c in 0..=4u8 {
            let b = sample(c);
            assert!(crc_ok(&b));
            let hs = validate_produce(&b, &opts()).unwrap();
            assert_eq!(hs.len(), 1);
            assert_eq!(hs[0].records_count, 3);
            assert_eq!(hs[0].compression(), c);
            assert_eq!(hs[0].total_len(), b.len());
            let ro = record_timestamps_and_offsets(&b).unwrap();
            assert_eq!(ro, vec![(0, 1_000_000), (1, 1_000_000), (2, 1_000_000)]);
        }
    }

    #[test]
    fn matches_kafka_protocol_decoder() {
        // Proves our encoding is what kafka-protocol's decoder (an independent implementation) reads.
        for c in 0..=4u8 {
            let b = sample(c);
            let mut buf = Bytes::from(b);
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
            assert_eq!(set.records.len(), 3);
            assert_eq!(set.records[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(set.records[1].key, None);
            assert_eq!(set.records[2].value, None);
            assert_eq!(set.records[0].headers.len(), 1);
        }
    }

    #[test]
    fn several_batches_accepted_and_trailing_bytes_refused() {
        // Proves a payload of several batches validates and any trailing partial batch is CORRUPT_MESSAGE.
        let mut p = sample(0);
        p.extend_from_slice(&sample(1));
        assert_eq!(validate_produce(&p, &opts()).unwrap().len(), 2);
        for cut in [1usize, 10, 17, 60, 70] {
            let mut q = p.clone();
            q.extend_from_slice(&sample(0)[..cut]);
            assert_eq!(validate_produce(&q, &opts()).unwrap_err().code, CORRUPT_MESSAGE, "cut {cut}");
        }
        assert_eq!(validate_produce(&[], &opts()).unwrap_err().code, CORRUPT_MESSAGE);
    }

    #[test]
    fn refusals_carry_kafka_codes() {
        // Proves each refusal maps to the Kafka error code the brief names.
        let b = sample(0);
        let mut o = opts();
        o.max_message_bytes = b.len() - 1;
        assert_eq!(validate_produce(&b, &o).unwrap_err().code, MESSAGE_TOO_LARGE);

        let mut bad = b.clone();
        bad[16] = 1;
        assert_eq!(validate_produce(&bad, &opts()).unwrap_err().code, UNSUPPORTED_FOR_MESSAGE_FORMAT);
        bad[16] = 7;
        assert_eq!(validate_produce(&bad, &opts()).unwrap_err().code, CORRUPT_MESSAGE);

        let mut bad = b.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(validate_produce(&bad, &opts()).unwrap_err().code, CORRUPT_MESSAGE);

        let mut o = opts();
        o.require_keys = true;
        let e = validate_produce(&b, &o).unwrap_err();
        assert_eq!(e.code, INVALID_RECORD);
        assert!(e.message.contains("compacted topics need keys"));

        let mut o = opts();
        o.timestamp_before_max_ms = 10;
        o.now_ms = 2_000_000;
        assert_eq!(validate_produce(&b, &o).unwrap_err().code, INVALID_TIMESTAMP);
        o.log_append_time = true;
        assert!(validate_produce(&b, &o).is_ok());
        let mut o = opts();
        o.timestamp_after_max_ms = 10;
        o.now_ms = 0;
        assert_eq!(validate_produce(&b, &o).unwrap_err().code, INVALID_TIMESTAMP);

        // A control batch from a client.
        let mut ctl = b.clone();
        ctl[ATTRIBUTES_POS + 1] |= CONTROL_BIT as u8;
        let crc = compute_crc(&ctl);
        ctl[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(validate_produce(&ctl, &opts()).unwrap_err().code, INVALID_RECORD);

        // recordsCount disagreeing with the records (and lastOffsetDelta kept consistent).
        let mut cnt = b.clone();
        cnt[RECORDS_COUNT_POS..RECORDS_COUNT_POS + 4].copy_from_slice(&4i32.to_be_bytes());
        cnt[LAST_OFFSET_DELTA_POS..LAST_OFFSET_DELTA_POS + 4].copy_from_slice(&3i32.to_be_bytes());
        let crc = compute_crc(&cnt);
        cnt[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(validate_produce(&cnt, &opts()).unwrap_err().code, INVALID_RECORD);

        // Corrupt compressed data with a valid CRC.
        let mut z = sample(4);
        let n = z.len();
        z[BATCH_HEADER_LEN..n].fill(0xAB);
        let crc = compute_crc(&z);
        z[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(validate_produce(&z, &opts()).unwrap_err().code, CORRUPT_MESSAGE);
    }

    #[test]
    fn assign_offsets_patches_and_keeps_crc_valid() {
        // Proves assign_offsets sets offsets/epoch, and LogAppendTime rewrites timestamps with a valid CRC.
        let mut b = sample(0);
        assign_offsets(&mut b, 100, 7, None);
        assert!(crc_ok(&b));
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch, h.last_offset()), (100, 7, 102));
        assert!(!h.timestamp_type_log_append());

        assign_offsets(&mut b, 5, 8, Some(42));
        assert!(crc_ok(&b));
        let h = BatchHeader::parse(&b).unwrap();
        assert!(h.timestamp_type_log_append());
        assert_eq!((h.base_timestamp, h.max_timestamp), (42, 42));
        assert_eq!(record_timestamps_and_offsets(&b).unwrap(), vec![(5, 42), (6, 42), (7, 42)]);
    }

    #[test]
    fn per_record_timestamps_are_reported() {
        // Proves record_timestamps_and_offsets reports each record's own timestamp, compressed or not.
        for c in [0u8, 2] {
            let recs: Vec<RecordSpec> = (0..4).map(|_| (Some(&b"k"[..]), Some(&b"v"[..]), vec![])).collect();
            let b = build_batch_with_timestamps(&recs, &[50, 10, 70, 60], c);
            let h = BatchHeader::parse(&b).unwrap();
            assert_eq!((h.base_timestamp, h.max_timestamp), (50, 70));
            assert_eq!(record_timestamps_and_offsets(&b).unwrap(), vec![(0, 50), (1, 10), (2, 70), (3, 60)]);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            // Proves hostile bytes never panic validation, parsing or record scans.
            let _ = validate_produce(&bytes, &opts());
            let _ = BatchHeader::parse(&bytes);
            let _ = crc_ok(&bytes);
            let _ = record_timestamps_and_offsets(&bytes);
        }

        #[test]
        fn mutated_batches_are_rejected_or_consistent(
            codec in 0u8..=4,
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            fix_crc in any::<bool>(),
        ) {
            // Proves a single-byte mutation (CRC optionally re-fixed) is refused or yields a consistent batch.
            let mut b = sample(codec);
            let i = pos.index(b.len());
            b[i] = byte;
            if fix_crc && b.len() >= BATCH_HEADER_LEN {
                let crc = compute_crc(&b);
                b[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
            }
            if let Ok(hs) = validate_produce(&b, &opts()) {
                let total: usize = hs.iter().map(|h| h.total_len()).sum();
                prop_assert_eq!(total, b.len());
                for h in &hs {
                    prop_assert!(h.records_count >= 1);
                    prop_assert_eq!(h.last_offset_delta, h.records_count - 1);
                }
                let ro = record_timestamps_and_offsets(&b).unwrap();
                prop_assert_eq!(ro.len() as i32, hs[0].records_count);
            }
        }

        #[test]
        fn random_records_round_trip(
            recs in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))), 1..20),
            codec in 0u8..=4,
            ts in 0i64..1_000_000_000,
        ) {
            // Proves any set of records built by build_batch validates with the right count.
            let specs: Vec<RecordSpec> = recs.iter().map(|(k, v)| (k.as_deref(), v.as_deref(), vec![])).collect();
            let b = build_batch(&specs, ts, codec);
            let hs = validate_produce(&b, &opts()).unwrap();
            prop_assert_eq!(hs[0].records_count as usize, recs.len());
            prop_assert_eq!(record_timestamps_and_offsets(&b).unwrap().len(), recs.len());
        }
    }
}
