//! Exactly-once transactions for a single node that coordinates every transactional id.
//!
//! - [`coordinator`] is the transaction coordinator: a deterministic, sans-IO state machine per
//!   transactional id (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
//!   EndTxn, timeouts). Every input carries `now_ms`; outputs are Kafka error codes, records
//!   to persist ([`TxnCoordinator::take_records`]) and [`MarkerWork`] (control batches to write
//!   and group offsets to apply) that the shell in `broker/txn.rs` performs and then
//!   acknowledges with [`TxnCoordinator::complete`].
//! - [`store`] persists coordinator state in an append-only, CRC32C-checked file written only
//!   through the [`crate::runtime::Disk`] seam, so a restart knows producer ids, epochs and the
//!   transactions it must finish (prepared) or abort (ongoing).
//! - [`partition`] is the per-partition view the produce and fetch paths need: ongoing
//!   transactions (for the last stable offset) and the aborted-transaction index (for
//!   read_committed fetches).
//! - [`marker`] builds, parses and appends control batches (COMMIT/ABORT markers).
//!
//! Architecture invariants:
//! - Nothing in this module awaits, spawns, sleeps or reads the clock.
//! - Storage is reached only through the `Disk` seam ([`store`]) or a partition's `Log`
//!   ([`marker::append_control_batch`], [`PartitionTxnState::rebuild`]).
//! - A transaction's outcome is durable (a PrepareCommit/PrepareAbort record is synced)
//!   before any of its markers is written, so every partition of one transaction gets the
//!   same marker, even across crashes.
//! - Every limit is a named constant below.

pub mod coordinator;
pub mod marker;
pub mod partition;
pub mod store;

pub use coordinator::{
    EndOutcome, GroupOffsets, InitOutcome, MarkerWork, TxnConfig, TxnCoordinator, TxnMetadata, TxnState,
    TxnTopicPartition,
};
pub use marker::{append_control_batch, control_batch, parse_control_batch, ControlMarker};
pub use partition::{AbortedTxn, PartitionTxnState};
pub use store::{Replayed, StoreRecord, TxnStore, TxnStoreError};

/// Kafka's INVALID_TXN_STATE (48): the request is not valid in the transaction's state.
pub const INVALID_TXN_STATE: i16 = 48;
/// Kafka's INVALID_PRODUCER_ID_MAPPING (49): the producer id is not the transactional id's.
pub const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
/// Kafka's INVALID_TRANSACTION_TIMEOUT (50): the timeout is above the broker's maximum.
pub const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
/// Kafka's CONCURRENT_TRANSACTIONS (51): the previous transaction is still completing; retry.
pub const CONCURRENT_TRANSACTIONS: i16 = 51;
/// Kafka's OPERATION_NOT_ATTEMPTED (55): another partition of the request failed.
pub const OPERATION_NOT_ATTEMPTED: i16 = 55;
/// Kafka's PRODUCER_FENCED (90, KIP-588): a newer producer with the same transactional id
/// exists. Older request versions get INVALID_PRODUCER_EPOCH (47) instead; see
/// [`fenced_code_for_version`].
pub const PRODUCER_FENCED: i16 = 90;

/// Default for Kafka's `transaction.max.timeout.ms`: the largest transaction timeout a
/// producer may ask for (15 minutes).
pub const TRANSACTION_MAX_TIMEOUT_MS_DEFAULT: i32 = 900_000;
/// Default for Kafka's `transactional.id.expiration.ms`: an idle transactional id (no
/// transaction in progress) is forgotten after this long (7 days).
pub const TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT: i64 = 7 * 24 * 3600 * 1000;
/// Transactional ids the coordinator tracks; InitProducerId for a new one beyond this fails
/// with COORDINATOR_NOT_AVAILABLE. Also bounds the ongoing transactions of one partition
/// (every transactional batch is checked against the coordinator).
pub const TRANSACTIONAL_IDS_MAX: usize = 100_000;
/// Longest transactional id accepted.
pub const TRANSACTIONAL_ID_MAX_LEN: usize = 1024;
/// Partitions one transaction may span; AddPartitionsToTxn beyond it fails with INVALID_REQUEST.
pub const TXN_PARTITIONS_MAX: usize = 10_000;
/// Consumer groups one transaction may commit offsets for (AddOffsetsToTxn).
pub const TXN_GROUPS_MAX: usize = 100;
/// Offsets one transaction may hold pending (TxnOffsetCommit) until EndTxn.
pub const TXN_PENDING_OFFSETS_MAX: usize = 2_000;
/// Producer ids reserved per persisted block: a restart skips the rest of the block, so ids
/// are never handed out twice.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;
/// First producer id of transactional producers. The broker's idempotent-producer allocator
/// derives ids from the clock (`(ms & 0xFF_FFFF_FFFF) << 10` < 2^50), so the two ranges are
/// disjoint.
pub const TXN_PRODUCER_ID_BASE: i64 = 1 << 52;
/// Largest encoded record in the transaction state file; a longer length prefix is a torn or
/// corrupt tail.
pub const TXN_RECORD_MAX_BYTES: usize = 16 * 1024 * 1024;
/// When the state file grows past this (and is mostly superseded records) it is rewritten
/// with only live state.
pub const TXN_FILE_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes read per step when rebuilding a partition's transaction index from its log.
pub const REBUILD_READ_BYTES: usize = 1024 * 1024;
/// Interval at which the shell's timer polls the coordinator when no deadline is nearer.
pub const TXN_TIMER_IDLE_POLL_MS: i64 = 100;
/// How long the shell waits for a marker to be fsynced before giving up on completing a
/// transaction for now (it stays prepared; a restart or the next attempt finishes it).
pub const MARKER_SYNC_TIMEOUT_MS: u64 = 30_000;

/// Bytes of one persisted partition entry at most: topic (u16 length + name) and index.
const PARTITION_ENTRY_MAX_BYTES: usize = 2 + crate::limits::TOPIC_NAME_MAX_LEN + 4;
/// Bytes of one persisted pending offset at most (group and topic names, partition, offset,
/// leader epoch, metadata, commit time).
const OFFSET_ENTRY_MAX_BYTES: usize = 2
    + crate::group::GROUP_ID_MAX_LEN
    + 4
    + PARTITION_ENTRY_MAX_BYTES
    + 8
    + 4
    + 4
    + crate::group::OFFSET_METADATA_MAX_BYTES
    + 8;
/// Upper bound of one encoded transaction snapshot.
const TXN_SNAPSHOT_MAX_BYTES: usize = 64
    + TRANSACTIONAL_ID_MAX_LEN
    + TXN_PARTITIONS_MAX * PARTITION_ENTRY_MAX_BYTES
    + TXN_GROUPS_MAX * (2 + crate::group::GROUP_ID_MAX_LEN)
    + TXN_PENDING_OFFSETS_MAX * OFFSET_ENTRY_MAX_BYTES;

const _: () = assert!(TXN_SNAPSHOT_MAX_BYTES <= TXN_RECORD_MAX_BYTES);
const _: () = assert!(TXN_RECORD_MAX_BYTES < u32::MAX as usize);
const _: () = assert!(TXN_FILE_COMPACT_BYTES > TXN_RECORD_MAX_BYTES as u64);
const _: () = assert!(TRANSACTIONAL_IDS_MAX as i64 * 2 < PRODUCER_ID_BLOCK_SIZE * 1_000_000_000);

/// Kafka (KIP-588) answers PRODUCER_FENCED only to request versions that know it; older ones
/// get INVALID_PRODUCER_EPOCH. `first_version` is the first version that knows it:
/// InitProducerId 4, AddPartitionsToTxn 2, AddOffsetsToTxn 2, EndTxn 2, TxnOffsetCommit 3.
pub fn fenced_code_for_version(code: i16, version: i16, first_version: i16) -> i16 {
    if code == PRODUCER_FENCED && version < first_version {
        crate::protocol::errors::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}
