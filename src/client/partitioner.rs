//! Kafka's default partitioner for keyed records, bit for bit.
//!
//! Invariant: a key maps to the same partition here as in the Java client
//! (`BuiltInPartitioner.partitionForKey`): `toPositive(murmur2(key)) % num_partitions`, where
//! `toPositive` clears the sign bit rather than taking an absolute value.

/// Kafka's `Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`, little-endian blocks.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    // Java's switch falls through from case 3 to case 1; the multiply happens once.
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (so `i32::MIN` maps to 0, not overflow).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for a record with this key.
pub fn partition_for_key(key: &[u8], num_partitions: i32) -> i32 {
    assert!(num_partitions > 0, "a topic has at least one partition");
    to_positive(murmur2(key)) % num_partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test() {
        // Proves our hash equals Kafka's on the cases from Kafka's UtilsTest.testMurmur2.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), *want, "murmur2({:?})", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn to_positive_clears_sign_bit() {
        // Proves toPositive is a mask, not abs(): i32::MIN maps to 0, -1 to i32::MAX.
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn partition_for_key_is_masked_hash_modulo_partitions() {
        // Proves the partition choice for known keys: "21" hashes to -973932308, whose masked
        // value is 1173551340, and 1173551340 % 10 = 0, % 3 = 0, % 7 = 1.
        assert_eq!(to_positive(-973932308), 1173551340);
        assert_eq!(partition_for_key(b"21", 10), 0);
        assert_eq!(partition_for_key(b"21", 3), 1173551340 % 3);
        assert_eq!(partition_for_key(b"21", 7), 1173551340 % 7);
        // "foobar": -790332482 & 0x7fffffff = 1357151166.
        assert_eq!(partition_for_key(b"foobar", 4), 1357151166 % 4);
        for p in 1..50 {
            let got = partition_for_key(b"some-key", p);
            assert!((0..p).contains(&got));
        }
    }
}
