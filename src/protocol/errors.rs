//! Kafka error codes used by the broker, by their protocol names.
//!
//! Kafka outcomes are values in responses, never Rust errors that close a connection.

/// The request succeeded.
pub const NONE: i16 = 0;
/// Unexpected server-side failure.
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
/// The requested offset is outside the log.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// A record batch failed its CRC or is malformed.
pub const CORRUPT_MESSAGE: i16 = 2;
/// The topic or partition does not exist on this broker.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// No leader right now.
pub const LEADER_NOT_AVAILABLE: i16 = 5;
/// This broker does not lead the partition.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// The request timed out.
pub const REQUEST_TIMED_OUT: i16 = 7;
/// A record batch is larger than max.message.bytes.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// The committed offset's metadata made the commit too large.
pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
/// The coordinator is loading.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// The coordinator is not available.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// This broker is not the coordinator.
pub const NOT_COORDINATOR: i16 = 16;
/// The batch is larger than the broker accepts.
pub const RECORD_LIST_TOO_LARGE: i16 = 18;
/// The topic name is not valid.
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
/// Below min.insync.replicas.
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
/// acks is not -1, 0 or 1.
pub const INVALID_REQUIRED_ACKS: i16 = 21;
/// The group generation is not current.
pub const ILLEGAL_GENERATION: i16 = 22;
/// Inconsistent protocol type or protocols in a group.
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// The group id is invalid.
pub const INVALID_GROUP_ID: i16 = 24;
/// The member id is not known to the group.
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// The session timeout is outside the broker's bounds.
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
/// The group is rebalancing.
pub const REBALANCE_IN_PROGRESS: i16 = 27;
/// The committed offset metadata is too large.
pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
/// A record timestamp is outside the accepted range.
pub const INVALID_TIMESTAMP: i16 = 32;
/// The API version is not supported.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// The topic already exists.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// The partition count is invalid.
pub const INVALID_PARTITIONS: i16 = 37;
/// The replication factor is invalid.
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
/// The replica assignment is invalid.
pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
/// A configuration key or value is invalid.
pub const INVALID_CONFIG: i16 = 40;
/// The request is invalid.
pub const INVALID_REQUEST: i16 = 42;
/// The message format is not supported.
pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
/// The producer's sequence number is out of order.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// The batch is a duplicate of one already written.
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
/// The producer's epoch is older than the current one.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// The log directory failed (for example after a failed fsync).
pub const KAFKA_STORAGE_ERROR: i16 = 56;
/// The group is not empty.
pub const NON_EMPTY_GROUP: i16 = 68;
/// The group does not exist.
pub const GROUP_ID_NOT_FOUND: i16 = 69;
/// The fetch session id is not known.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// The leader epoch in the request is older than the broker's.
pub const FENCED_LEADER_EPOCH: i16 = 74;
/// The leader epoch in the request is newer than the broker's.
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
/// The member id is required to join.
pub const MEMBER_ID_REQUIRED: i16 = 79;
/// The record is invalid.
pub const INVALID_RECORD: i16 = 87;
/// The producer id is not known.
pub const UNKNOWN_PRODUCER_ID: i16 = 59;
/// The topic id is not known.
pub const UNKNOWN_TOPIC_ID: i16 = 100;
