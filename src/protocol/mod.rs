//! Kafka wire protocol: framing, request headers, the ApiVersions table, record batches.
//!
//! Message schemas and their encoding come from the `kafka-protocol` crate (generated from
//! Kafka's own JSON schemas); this module adds what that crate leaves to the broker: checking a
//! frame before trusting it, deciding which API versions we serve, and encoding a response with
//! the right header version.
//!
//! Architecture invariant: this module performs no I/O and never panics on hostile bytes.

pub mod batch;
pub mod decompress;
pub mod errors;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

/// One API we serve: the versions we accept, and the minimum we advertise (which can be lower,
/// see [`SUPPORTED_APIS`]).
#[derive(Debug, Clone, Copy)]
pub struct ApiSupport {
    /// The API.
    pub key: ApiKey,
    /// Lowest version advertised in ApiVersions.
    pub advertised_min: i16,
    /// Lowest version actually accepted.
    pub min: i16,
    /// Highest version accepted and advertised.
    pub max: i16,
}

const fn api(key: ApiKey, min: i16, max: i16) -> ApiSupport {
    ApiSupport { key, advertised_min: min, min, max }
}

/// Every API the broker answers, with versions. Produce advertises a minimum of 0 although only
/// v3+ (record batch v2) is accepted: librdkafka disables compression when Produce's advertised
/// minimum is above 0 (KAFKA-18659).
pub const SUPPORTED_APIS: &[ApiSupport] = &[
    ApiSupport { key: ApiKey::Produce, advertised_min: 0, min: 3, max: 11 },
    api(ApiKey::Fetch, 4, 16),
    api(ApiKey::ListOffsets, 1, 8),
    api(ApiKey::Metadata, 0, 12),
    api(ApiKey::OffsetCommit, 2, 9),
    api(ApiKey::OffsetFetch, 1, 9),
    api(ApiKey::FindCoordinator, 0, 6),
    api(ApiKey::JoinGroup, 0, 9),
    api(ApiKey::Heartbeat, 0, 4),
    api(ApiKey::LeaveGroup, 0, 5),
    api(ApiKey::SyncGroup, 0, 5),
    api(ApiKey::DescribeGroups, 0, 5),
    api(ApiKey::ListGroups, 0, 5),
    api(ApiKey::ApiVersions, 0, 4),
    api(ApiKey::CreateTopics, 2, 7),
    api(ApiKey::DeleteTopics, 1, 6),
    api(ApiKey::DeleteRecords, 0, 2),
    api(ApiKey::InitProducerId, 0, 5),
    api(ApiKey::OffsetForLeaderEpoch, 2, 4),
    api(ApiKey::DescribeConfigs, 1, 4),
    api(ApiKey::AlterConfigs, 0, 2),
    api(ApiKey::IncrementalAlterConfigs, 0, 1),
    api(ApiKey::CreatePartitions, 0, 3),
    api(ApiKey::DeleteGroups, 0, 2),
    api(ApiKey::DescribeCluster, 0, 1),
    api(ApiKey::DescribeQuorum, 0, 2),
    api(ApiKey::AddPartitionsToTxn, 0, 5),
    api(ApiKey::AddOffsetsToTxn, 0, 4),
    api(ApiKey::EndTxn, 0, 5),
    api(ApiKey::TxnOffsetCommit, 0, 5),
];

/// The support entry for an API key, if we serve it at all.
pub fn support_for(key: i16) -> Option<&'static ApiSupport> {
    SUPPORTED_APIS.iter().find(|a| a.key as i16 == key)
}

/// Whether `enabled` lists `key` (the broker may switch off APIs whose cores are not present).
pub fn version_supported(key: i16, version: i16) -> bool {
    support_for(key).is_some_and(|a| version >= a.min && version <= a.max)
}

/// What went wrong while reading a request header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The frame is shorter than the fixed part of a header.
    #[error("request frame of {0} bytes is too short for a header")]
    TooShort(usize),
    /// The API key is not one we know of.
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    /// The header could not be decoded.
    #[error("malformed request header: {0}")]
    Malformed(String),
}

/// The fixed first eight bytes of every request header, readable for any API and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPrefix {
    /// The API key.
    pub api_key: i16,
    /// The API version.
    pub api_version: i16,
    /// The correlation id to echo in the response.
    pub correlation_id: i32,
}

/// Reads the fixed header prefix without consuming anything.
pub fn peek_header_prefix(frame: &[u8]) -> Result<HeaderPrefix, HeaderError> {
    if frame.len() < 8 {
        return Err(HeaderError::TooShort(frame.len()));
    }
    let mut b = &frame[..8];
    Ok(HeaderPrefix { api_key: b.get_i16(), api_version: b.get_i16(), correlation_id: b.get_i32() })
}

/// Decodes the full request header (its version depends on the API and version), leaving
/// `frame` positioned at the request body.
pub fn decode_request_header(frame: &mut Bytes) -> Result<RequestHeader, HeaderError> {
    let prefix = peek_header_prefix(frame)?;
    let key = ApiKey::try_from(prefix.api_key).map_err(|_| HeaderError::UnknownApi(prefix.api_key))?;
    let header_version = key.request_header_version(prefix.api_version);
    guarded(|| RequestHeader::decode(frame, header_version)).map_err(HeaderError::Malformed)
}

/// Decodes a request body of type `T`, converting any decoder failure (or panic inside the
/// generated decoder, which would be a bug there) into an error string.
pub fn decode_body<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, String> {
    guarded(|| T::decode(body, version))
}

fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("decoder panicked".to_string()),
    }
}

/// Encodes a whole response frame: the 4-byte size, the response header of the right version,
/// and the body.
pub fn encode_response<T: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &T,
) -> Result<Bytes, String> {
    let header_version = T::header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header
        .compute_size(header_version)
        .and_then(|h| body.compute_size(version).map(|b| h + b))
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// The ApiVersions response body (error code, then API list) in version 0 form, used to answer
/// an ApiVersions request of a version we do not serve so the client can negotiate down.
pub fn api_versions_unsupported_v0(correlation_id: i32) -> Bytes {
    let mut buf = BytesMut::new();
    let entries: Vec<_> = SUPPORTED_APIS.iter().filter(|a| a.key == ApiKey::ApiVersions).collect();
    let size = 4 + 2 + 4 + entries.len() * 6;
    buf.put_i32(size as i32);
    buf.put_i32(correlation_id);
    buf.put_i16(errors::UNSUPPORTED_VERSION);
    buf.put_i32(entries.len() as i32);
    for a in entries {
        buf.put_i16(a.key as i16);
        buf.put_i16(a.advertised_min);
        buf.put_i16(a.max);
    }
    buf.freeze()
}

/// Converts a string to the protocol's string type.
pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Checks a topic name the way Kafka does: 1 to 249 characters from `[a-zA-Z0-9._-]`, and not
/// `.` or `..`. Returns a message saying what is wrong.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be '{name}'"));
    }
    if name.len() > crate::limits::TOPIC_NAME_MAX_LEN {
        return Err(format!(
            "topic name is {} characters long; the limit is {}",
            name.len(),
            crate::limits::TOPIC_NAME_MAX_LEN
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("topic name contains '{c}'; only ASCII letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Proves the v0 fallback answer parses as Kafka's ApiVersions v0 response.
    #[test]
    fn unsupported_api_versions_answer_is_a_valid_v0_body() {
        let mut frame = api_versions_unsupported_v0(11);
        let len = frame.get_i32() as usize;
        assert_eq!(len, frame.len());
        assert_eq!(frame.get_i32(), 11);
        let body = kafka_protocol::messages::ApiVersionsResponse::decode(&mut frame, 0).unwrap();
        assert_eq!(body.error_code, errors::UNSUPPORTED_VERSION);
        assert_eq!(body.api_keys[0].api_key, ApiKey::ApiVersions as i16);
    }

    // Proves topic-name validation follows Kafka's rules.
    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("bad topic name!").is_err());
        assert!(validate_topic_name(&"x".repeat(300)).is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("").is_err());
    }

    // Proves every served API is within the versions kafka-protocol can encode.
    #[test]
    fn served_versions_are_encodable() {
        for a in SUPPORTED_APIS {
            let r = a.key.valid_versions();
            assert!(a.min >= r.min && a.max <= r.max, "{:?} {}..{} outside {}", a.key, a.min, a.max, r);
            assert!(a.advertised_min <= a.min);
        }
    }

    proptest! {
        // Proves header decoding never panics on arbitrary bytes.
        #[test]
        fn header_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = Bytes::from(bytes);
            let _ = decode_request_header(&mut b);
        }
    }
}
