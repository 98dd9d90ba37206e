//! The client's operating errors.
//!
//! Kafka outcomes that reach a caller (a produce refused with `NOT_LEADER_OR_FOLLOWER`, a fetch
//! answered with `OFFSET_OUT_OF_RANGE`) become [`ClientError::Kafka`] with a readable name, so a
//! CLI can print them and a test can match on the numeric code.

use kafka_protocol::error::ResponseError;

/// Kafka error codes the client itself reacts to (see Kafka's `Errors.java`).
pub mod codes {
    /// The server does not host this topic-partition (or the topic does not exist).
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// No leader is elected for the partition right now.
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    /// The broker we sent to is not the partition's leader.
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    /// The requested API version is not supported by the broker.
    pub const UNSUPPORTED_VERSION: i16 = 35;
    /// CreateTopics for a name that already exists.
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    /// The fetch offset is outside the partition's log.
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    /// The request's leader epoch is older than the broker's (KIP-320).
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    /// The request's leader epoch is newer than the broker's: it has not caught up (KIP-320).
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
}

/// Everything that can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection could be opened to the address (or to any bootstrap address).
    #[error("could not connect to {addr}: {error}")]
    Connect {
        /// The address we dialled.
        addr: String,
        /// What the operating system said (in the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// Reading or writing an established connection failed; the connection is closed.
    #[error("i/o error on connection to {addr}: {error}")]
    Io {
        /// The broker's address.
        addr: String,
        /// What the operating system said (in the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// The broker did not answer within the request timeout; the connection is closed because
    /// a late answer would otherwise be taken for the next request's.
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout {
        /// The broker's address.
        addr: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The broker sent bytes we could not decode, or we could not encode a request.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker answered with a Kafka error code.
    #[error("Kafka error {code} {message}")]
    Kafka {
        /// Kafka's numeric error code.
        code: i16,
        /// The code's name (`NOT_LEADER_OR_FOLLOWER`), plus the broker's message if it sent one.
        message: String,
    },
    /// The broker supports no version of the API that this client can speak.
    #[error("broker does not support API key {api_key} in any version this client speaks")]
    UnsupportedApi {
        /// The Kafka API key.
        api_key: i16,
    },
    /// The caller asked for something impossible (no such partition, bad address, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// A Kafka error from a response's code and optional message. `code` must be non-zero.
    pub fn kafka(code: i16, server_message: Option<&str>) -> ClientError {
        assert!(code != 0, "error code 0 is success");
        let name = kafka_error_name(code);
        let message = match server_message {
            Some(m) if !m.is_empty() => format!("{name}: {m}"),
            _ => name,
        };
        ClientError::Kafka { code, message }
    }

    /// The Kafka error code, if this is a Kafka error.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the partition's leader may have moved or the connection died: the caller
    /// should refresh metadata and try once more.
    pub fn is_routing_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { code, .. } => matches!(
                *code,
                codes::NOT_LEADER_OR_FOLLOWER
                    | codes::UNKNOWN_TOPIC_OR_PARTITION
                    | codes::LEADER_NOT_AVAILABLE
                    | codes::FENCED_LEADER_EPOCH
                    | codes::UNKNOWN_LEADER_EPOCH
            ),
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }
}

/// The readable name of a Kafka error code, in Kafka's spelling (`NOT_LEADER_OR_FOLLOWER`).
pub fn kafka_error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => camel_to_upper_snake(&format!("{e}")),
    }
}

/// `NotLeaderOrFollower` -> `NOT_LEADER_OR_FOLLOWER`.
fn camel_to_upper_snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_use_kafka_spelling() {
        // Proves common codes print the names operators know from Kafka's own tools.
        assert_eq!(kafka_error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(kafka_error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(kafka_error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(kafka_error_name(1), "OFFSET_OUT_OF_RANGE");
        assert_eq!(kafka_error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(kafka_error_name(0), "NONE");
    }

    #[test]
    fn kafka_error_carries_code_and_server_message() {
        // Proves the broker's message is kept next to the name.
        let e = ClientError::kafka(36, Some("Topic 'x' already exists."));
        assert_eq!(e.kafka_code(), Some(36));
        assert_eq!(e.to_string(), "Kafka error 36 TOPIC_ALREADY_EXISTS: Topic 'x' already exists.");
        assert!(ClientError::kafka(6, None).is_routing_retriable());
        assert!(!ClientError::kafka(36, None).is_routing_retriable());
    }
}
