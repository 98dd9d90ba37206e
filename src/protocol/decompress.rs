//! Bounded decompression of record-batch payloads (gzip, snappy in Kafka's xerial framing or
//! raw, lz4 frame, zstd).
//!
//! Invariant: never allocates more than `limit` bytes of output, whatever the input claims, so
//! a tiny hostile batch cannot make validation allocate gigabytes ("zip bomb").

use std::io::Read;

/// Why a payload could not be decompressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecompressError {
    /// The compressed data is malformed.
    #[error("{codec} data is malformed: {reason}")]
    Malformed {
        /// Codec name.
        codec: &'static str,
        /// What failed.
        reason: String,
    },
    /// The output would exceed the limit.
    #[error("decompressed {codec} batch exceeds {limit} bytes")]
    TooLarge {
        /// Codec name.
        codec: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The codec id is not one Kafka defines.
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
}

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

fn read_bounded(codec: &'static str, r: impl Read, limit: usize) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let n = r
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Malformed { codec, reason: e.to_string() })?;
    if n > limit {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    Ok(out)
}

fn snappy_block(out: &mut Vec<u8>, block: &[u8], limit: usize) -> Result<(), DecompressError> {
    let codec = "snappy";
    let len =
        snap::raw::decompress_len(block).map_err(|e| DecompressError::Malformed { codec, reason: e.to_string() })?;
    if out.len().saturating_add(len) > limit {
        return Err(DecompressError::TooLarge { codec, limit });
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| DecompressError::Malformed { codec, reason: e.to_string() })?;
    Ok(())
}

/// Decompresses `input` compressed with Kafka codec `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd),
/// refusing to produce more than `limit` bytes.
pub fn decompress(codec: u8, input: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    match codec {
        1 => read_bounded("gzip", flate2::read::GzDecoder::new(input), limit),
        2 => {
            let mut out = Vec::new();
            if input.len() >= XERIAL_HEADER_LEN && &input[..8] == XERIAL_MAGIC {
                let mut rest = &input[XERIAL_HEADER_LEN..];
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(DecompressError::Malformed {
                            codec: "snappy",
                            reason: "truncated block length".into(),
                        });
                    }
                    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    rest = &rest[4..];
                    if n > rest.len() {
                        return Err(DecompressError::Malformed { codec: "snappy", reason: "truncated block".into() });
                    }
                    snappy_block(&mut out, &rest[..n], limit)?;
                    rest = &rest[n..];
                }
            } else {
                snappy_block(&mut out, input, limit)?;
            }
            Ok(out)
        }
        3 => {
            let d = lz4::Decoder::new(input)
                .map_err(|e| DecompressError::Malformed { codec: "lz4", reason: e.to_string() })?;
            read_bounded("lz4", d, limit)
        }
        4 => {
            let d = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| DecompressError::Malformed { codec: "zstd", reason: e.to_string() })?;
            read_bounded("zstd", d, limit)
        }
        c => Err(DecompressError::UnknownCodec(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    fn compress(codec: u8, data: &[u8]) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        let src = bytes::Bytes::copy_from_slice(data);
        let f = |b: &mut bytes::BytesMut| {
            b.extend_from_slice(&src);
            Ok(())
        };
        match codec {
            1 => Gzip::compress(&mut out, f).unwrap(),
            2 => Snappy::compress(&mut out, f).unwrap(),
            3 => Lz4::compress(&mut out, f).unwrap(),
            _ => Zstd::compress(&mut out, f).unwrap(),
        }
        out.to_vec()
    }

    // Proves every codec round-trips data compressed the way Kafka clients do.
    #[test]
    fn round_trips_every_codec() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in 1..=4 {
            assert_eq!(decompress(codec, &compress(codec, &data), 1 << 20).unwrap(), data, "codec {codec}");
        }
    }

    // Proves a highly compressible payload ("zip bomb") is refused at the limit, not expanded.
    #[test]
    fn bombs_are_refused_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        for codec in 1..=4 {
            let c = compress(codec, &zeros);
            assert!(c.len() < 1 << 20);
            assert!(matches!(decompress(codec, &c, 1 << 20), Err(DecompressError::TooLarge { .. })), "codec {codec}");
        }
    }

    // Proves garbage never panics and is reported as malformed.
    #[test]
    fn garbage_is_malformed() {
        for codec in 1..=4 {
            assert!(decompress(codec, b"\x00\x01garbage\xff\xff\xff\xff", 1 << 20).is_err());
        }
        assert_eq!(decompress(9, b"", 1), Err(DecompressError::UnknownCodec(9)));
    }
}
