//! Every queue, buffer, in-flight count and size limit in one place.
//!
//! Values that users may change are broker config keys with these as defaults; the rest are
//! fixed. Relations between limits are checked at compile time at the bottom of this file.

/// Default for `socket.request.max.bytes`: the largest request frame accepted (Kafka: 100 MiB).
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 100 * 1024 * 1024;
/// Default for `max.connections`: simultaneous client connections per listener.
pub const MAX_CONNECTIONS_DEFAULT: usize = 1000;
/// Requests read from one connection whose responses have not yet been written. Kafka
/// processes one at a time; we pipeline up to this many and still answer in order.
pub const CONNECTION_IN_FLIGHT_MAX: usize = 16;
/// Default for `message.max.bytes`: the largest record batch accepted (Kafka's default).
pub const MESSAGE_MAX_BYTES_DEFAULT: usize = 1_048_588;
/// Upper bound on bytes held by all long-polling fetches' responses at once.
pub const FETCH_PENDING_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Upper bound on one fetch response, whatever the client asks for.
pub const FETCH_RESPONSE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Longest long-poll wait honoured for a fetch, whatever the client asks for.
pub const FETCH_MAX_WAIT_MS_MAX: i64 = 30_000;
/// Largest decompressed size of one record batch's records accepted on produce; a batch that
/// expands beyond it is refused (CORRUPT_MESSAGE) instead of being expanded in memory.
pub const DECOMPRESSED_BATCH_MAX_BYTES: usize = 128 * 1024 * 1024;
/// Topic name length limit (Kafka's).
pub const TOPIC_NAME_MAX_LEN: usize = 249;
/// Partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;
/// Bytes of a request header (client id included) we are prepared to parse.
pub const REQUEST_HEADER_MAX_BYTES: usize = 64 * 1024;

const _: () = assert!(MESSAGE_MAX_BYTES_DEFAULT < SOCKET_REQUEST_MAX_BYTES_DEFAULT);
const _: () = assert!(FETCH_RESPONSE_MAX_BYTES <= FETCH_PENDING_BYTES_MAX);

/// How long a fenced broker stays in the Metadata and DescribeCluster broker lists after this
/// broker learned of the fencing. Its leaderships have already moved; listing it a little
/// longer keeps librdkafka from decommissioning it in the same response that names the new
/// leader (that path parks the partition until the client's next 1 s topic scan, which
/// doubled produce unavailability after a leader kill).
pub const FENCED_BROKER_LISTED_MS: i64 = 10_000;

/// How long a partition leader waits before asking the controller again for an ISR change
/// whose outcome it does not know (a timeout, a lost controller, or an answer saying the
/// controller's metadata is ahead of this broker's); the change stays pending meanwhile.
pub const ISR_PROPOSAL_RETRY_MS: u64 = 500;
