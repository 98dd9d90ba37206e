//! Record batches: building v2 batches for produce and decoding what a fetch returns.
//!
//! Invariants: a produced batch is one v2 batch with offsets 0..n and base sequence -1 (not
//! idempotent); decoding never panics on broker bytes, stops at a partial trailing batch (a
//! fetch may cut the last batch at `max_bytes`), and never returns a record below the offset
//! the caller asked for (a batch may start before it).

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::error::ClientError;

/// Bytes before a batch's length field is complete: base offset (8) + batch length (4).
const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// Offset of the magic byte inside a batch.
const BATCH_MAGIC_OFFSET: usize = 16;
/// Smallest valid v2 batch (the header alone is 61 bytes).
const BATCH_V2_HEADER_BYTES: usize = 61;

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceRecord {
    /// The record's key; keyed records are partitioned by the key's murmur2 hash.
    pub key: Option<Bytes>,
    /// The record's value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Record headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Create time in milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// One record read by a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The record's offset in its partition.
    pub offset: i64,
    /// Create or log-append time in milliseconds, as the batch says.
    pub timestamp_ms: i64,
    /// The record's key.
    pub key: Option<Bytes>,
    /// The record's value.
    pub value: Option<Bytes>,
    /// Record headers, in order (a header value may be null).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Encodes `records` as one v2 record batch (magic 2), compressed as asked.
pub fn encode_batch(records: &[ProduceRecord], compression: Compression) -> Result<Bytes, ClientError> {
    if records.is_empty() {
        return Err(ClientError::InvalidArgument("a record batch needs at least one record".into()));
    }
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder derives the base sequence as first.sequence - first.offset, and
            // requires offset - sequence to be equal on all records: this yields -1.
            sequence: (i as i32).wrapping_sub(1),
            timestamp: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.iter().map(|(k, v)| (StrBytes::from_string(k.clone()), Some(v.clone()))).collect(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression };
    RecordBatchEncoder::encode(&mut buf, &records, &options)
        .map_err(|e| ClientError::Protocol(format!("encoding record batch: {e}")))?;
    Ok(buf.freeze())
}

/// What [`decode_batches`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecodedBatches {
    /// Records at or above the requested offset, control records left out.
    pub records: Vec<ConsumedRecord>,
    /// The offset after the last complete batch, if there was one: where the next fetch
    /// should start even when that batch held only control records or records below
    /// the requested offset.
    pub next_offset: Option<i64>,
}

/// Decodes the record batches of one fetched partition, skipping control records and records
/// below `min_offset`, and stopping quietly at a partial trailing batch.
pub fn decode_batches(mut records: Bytes, min_offset: i64) -> Result<DecodedBatches, ClientError> {
    let mut out = Vec::new();
    let mut next_offset = None;
    while records.len() >= BATCH_LENGTH_PREFIX_BYTES {
        let batch_len = (&records[8..12]).get_i32();
        if batch_len < 0 {
            return Err(ClientError::Protocol(format!("record batch with negative length {batch_len}")));
        }
        let total = BATCH_LENGTH_PREFIX_BYTES + batch_len as usize;
        if records.len() < total {
            break; // A partial trailing batch, cut by the broker's size limit.
        }
        let mut batch = records.split_to(total);
        if total < BATCH_V2_HEADER_BYTES {
            return Err(ClientError::Protocol(format!("record batch of {total} bytes is shorter than a v2 header")));
        }
        let magic = batch[BATCH_MAGIC_OFFSET];
        if magic != 2 {
            return Err(ClientError::Protocol(format!("record batch magic {magic} is not supported (only v2)")));
        }
        let base_offset = (&batch[0..8]).get_i64();
        let last_offset_delta = (&batch[23..27]).get_i32();
        next_offset = Some(base_offset.saturating_add(last_offset_delta as i64 + 1));
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| ClientError::Protocol(format!("decoding record batch: {e}")))?;
        for r in set.records {
            if r.control || r.offset < min_offset {
                continue;
            }
            out.push(ConsumedRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|(k, v)| (k.as_str().to_string(), v)).collect(),
            });
        }
    }
    Ok(DecodedBatches { records: out, next_offset })
}

/// Parses a compression name as the CLI and Kafka configs spell it.
pub fn parse_compression(name: &str) -> Option<Compression> {
    match name {
        "none" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "snappy" => Some(Compression::Snappy),
        "lz4" => Some(Compression::Lz4),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<ProduceRecord> {
        (0..n)
            .map(|i| ProduceRecord {
                key: if i % 2 == 0 { Some(Bytes::from(format!("k{i}"))) } else { None },
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: vec![("h".to_string(), Bytes::from_static(b"x"))],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            })
            .collect()
    }

    /// Rewrites a batch's base offset, as a broker does on append.
    fn with_base_offset(batch: &Bytes, base: i64) -> Bytes {
        let mut b = BytesMut::from(&batch[..]);
        b[0..8].copy_from_slice(&base.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn batch_round_trips_with_every_compression() {
        // Proves encode and decode agree on keys, values, headers, timestamps and offsets.
        for c in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let recs = sample(5);
            let batch = with_base_offset(&encode_batch(&recs, c).unwrap(), 100);
            let got = decode_batches(batch, 0).unwrap().records;
            assert_eq!(got.len(), 5, "{c:?}");
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.offset, 100 + i as i64);
                assert_eq!(r.key, recs[i].key);
                assert_eq!(r.value, recs[i].value);
                assert_eq!(r.timestamp_ms, recs[i].timestamp_ms);
                assert_eq!(r.headers, vec![("h".to_string(), Some(Bytes::from_static(b"x")))]);
            }
        }
    }

    #[test]
    fn encoded_batch_is_one_non_idempotent_v2_batch() {
        // Proves the header fields a broker validates: magic 2, producer id -1, base sequence -1,
        // record count n, and a batch length that covers the whole buffer.
        let batch = encode_batch(&sample(3), Compression::None).unwrap();
        assert_eq!(batch[16], 2);
        let len = (&batch[8..12]).get_i32() as usize;
        assert_eq!(len + 12, batch.len());
        let producer_id = (&batch[43..51]).get_i64();
        let base_sequence = (&batch[53..57]).get_i32();
        let count = (&batch[57..61]).get_i32();
        assert_eq!((producer_id, base_sequence, count), (-1, -1, 3));
    }

    #[test]
    fn decode_skips_records_below_min_offset_and_partial_tail() {
        // Proves a fetch starting mid-batch drops earlier records, and a cut-off trailing batch
        // is ignored rather than an error.
        let first = with_base_offset(&encode_batch(&sample(4), Compression::None).unwrap(), 10);
        let second = with_base_offset(&encode_batch(&sample(4), Compression::None).unwrap(), 14);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&first);
        buf.extend_from_slice(&second[..second.len() - 7]);
        let decoded = decode_batches(buf.freeze(), 12).unwrap();
        assert_eq!(decoded.next_offset, Some(14));
        let got = decoded.records;
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![12, 13]);
        // Only the 12-byte prefix of a batch: nothing, no error.
        assert!(decode_batches(first.slice(0..12), 0).unwrap().records.is_empty());
        assert_eq!(decode_batches(Bytes::new(), 0).unwrap(), DecodedBatches::default());
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        // Proves hostile bytes give an error, never a panic.
        let mut bad = BytesMut::from(&encode_batch(&sample(2), Compression::None).unwrap()[..]);
        bad[16] = 7;
        assert!(decode_batches(bad.freeze(), 0).is_err());
        let mut neg = BytesMut::from(&[0u8; 20][..]);
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(decode_batches(neg.freeze(), 0).is_err());
        let mut short = BytesMut::from(&[0u8; 20][..]);
        short[8..12].copy_from_slice(&8i32.to_be_bytes());
        assert!(decode_batches(short.freeze(), 0).is_err());
        for cut in 0..40 {
            let mut b = BytesMut::from(&encode_batch(&sample(2), Compression::None).unwrap()[..]);
            let n = b.len();
            b[cut % n] ^= 0xff;
            let _ = decode_batches(b.freeze(), 0);
        }
    }
}
