//! The classic consumer-group coordinator (JoinGroup/SyncGroup/Heartbeat/LeaveGroup) and the
//! committed-offset store, for a single node that coordinates every group.
//!
//! - [`coordinator`] is a deterministic, sans-IO state machine: every input carries `now_ms`,
//!   it never reads a clock, sleeps, spawns or touches storage. Requests that must wait
//!   (JoinGroup during a rebalance, SyncGroup until the leader's assignment) become pending
//!   operations identified by an [`OpId`]; the shell collects their completions with
//!   [`GroupCoordinator::take_completions`] and drives timeouts with [`GroupCoordinator::poll`].
//! - [`offsets`] keeps committed offsets in memory and in an append-only, CRC32C-checked file
//!   written only through the [`crate::runtime::Disk`] seam.
//!
//! Architecture invariants:
//! - Nothing in this module awaits, spawns or reads the clock (the async shell lives in
//!   `broker/group.rs`).
//! - Every limit (groups, members, pending operations, metadata sizes, file sizes) is a named
//!   constant below.

pub mod coordinator;
pub mod offsets;

pub use coordinator::{
    Completion, CoordinatorConfig, GroupCoordinator, GroupDescription, GroupState, JoinOutcome, JoinRequest,
    JoinResult, MemberDescription, OpId, SyncOutcome, SyncRequest, SyncResult,
};
pub use offsets::{CommittedOffset, OffsetStore, OffsetStoreError};

/// Groups with live membership the coordinator tracks at once; JoinGroup for a new group
/// beyond this fails with COORDINATOR_NOT_AVAILABLE.
pub const GROUPS_MAX: usize = 10_000;
/// Members (joined or awaiting their KIP-394 rejoin) in one group; beyond this JoinGroup fails
/// with GROUP_MAX_SIZE_REACHED (Kafka's `group.max.size`, which defaults to unbounded).
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// JoinGroup and SyncGroup requests waiting for a rebalance step, over all groups.
pub const PENDING_OPS_MAX: usize = 100_000;
/// Protocols one member may offer in JoinGroup.
pub const MEMBER_PROTOCOLS_MAX: usize = 64;
/// Bytes of one protocol's metadata or one member's assignment.
pub const MEMBER_METADATA_MAX_BYTES: usize = 1024 * 1024;
/// Longest group id, member id or group instance id accepted.
pub const GROUP_ID_MAX_LEN: usize = 1024;
/// Largest committed-offset metadata string (Kafka's `offset.metadata.max.bytes`); larger
/// commits fail with OFFSET_METADATA_TOO_LARGE.
pub const OFFSET_METADATA_MAX_BYTES: usize = 4096;
/// Partitions with a committed offset one group may hold; commits for further partitions fail
/// with COORDINATOR_NOT_AVAILABLE (updates of partitions already held always succeed).
pub const GROUP_OFFSETS_MAX: usize = 100_000;
/// Largest encoded record in the offsets file; a longer length prefix is treated as a torn or
/// corrupt tail.
pub const OFFSET_RECORD_MAX_BYTES: usize = 3 * GROUP_ID_MAX_LEN + OFFSET_METADATA_MAX_BYTES + 64;
/// When the offsets file grows past this many bytes (and is mostly superseded records) it is
/// rewritten with only the live offsets.
pub const OFFSETS_FILE_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
/// Interval at which the shell's timer polls the coordinator when no deadline is nearer.
pub const TIMER_IDLE_POLL_MS: i64 = 100;

/// Kafka's GROUP_MAX_SIZE_REACHED (81): not in `protocol::errors` yet.
pub const GROUP_MAX_SIZE_REACHED: i16 = 81;

const _: () = assert!(OFFSET_RECORD_MAX_BYTES < u32::MAX as usize);
const _: () = assert!(OFFSETS_FILE_COMPACT_BYTES > OFFSET_RECORD_MAX_BYTES as u64);
const _: () = assert!(GROUP_MEMBERS_MAX <= PENDING_OPS_MAX);
