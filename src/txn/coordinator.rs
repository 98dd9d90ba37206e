//! The transaction coordinator core: one state machine per transactional id.
//!
//! States follow Kafka's `TransactionState`: Empty → Ongoing (first AddPartitionsToTxn or
//! AddOffsetsToTxn) → PrepareCommit | PrepareAbort (EndTxn, a timeout, a fencing
//! InitProducerId, or a restart) → CompleteCommit | CompleteAbort (the shell wrote every marker
//! and acknowledged with [`TxnCoordinator::complete`]) → Ongoing again on the next
//! AddPartitionsToTxn, or Empty after an InitProducerId that bumps the epoch.
//!
//! Inputs are decoded requests plus `now_ms`; outputs are Kafka error codes, [`StoreRecord`]s
//! to persist (drained with [`TxnCoordinator::take_records`]) and [`MarkerWork`]. The core
//! never reads a clock, sleeps, spawns or touches storage.
//!
//! Invariants:
//! - Each transactional id owns exactly one producer id at a time; `by_producer` is the exact
//!   inverse of `txns`' producer ids.
//! - A producer id is never handed out twice: ids come from persisted blocks
//!   ([`StoreRecord::ProducerIdBlock`]) and a restart starts after the last block.
//! - Epochs only grow for a producer id; a request with any other epoch than the current one
//!   is fenced (PRODUCER_FENCED). A timeout or restart abort bumps the epoch first, so the old
//!   producer cannot continue the aborted transaction into a new one.
//! - `partitions`, `groups` and `pending_offsets` are empty unless the state is Ongoing,
//!   PrepareCommit or PrepareAbort; `txn_start_ms >= 0` exactly when they may be non-empty.
//! - Work is emitted only on entering PrepareCommit/PrepareAbort, with the records that make
//!   that state durable queued before it; the shell must sync them before writing markers.
//! - While a transaction is in a Prepare state every request for it but the matching EndTxn
//!   retry gets CONCURRENT_TRANSACTIONS, so at most one piece of work per id is in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::group::CommittedOffset;
use crate::protocol::errors;

use super::store::{Replayed, StoreRecord};
use super::{
    CONCURRENT_TRANSACTIONS, INVALID_PRODUCER_ID_MAPPING, INVALID_TRANSACTION_TIMEOUT, INVALID_TXN_STATE,
    PRODUCER_FENCED, PRODUCER_ID_BLOCK_SIZE, TRANSACTIONAL_IDS_MAX, TRANSACTIONAL_ID_MAX_LEN, TXN_GROUPS_MAX,
    TXN_PARTITIONS_MAX, TXN_PENDING_OFFSETS_MAX, TXN_PRODUCER_ID_BASE,
};

/// A topic partition: (topic name, partition index).
pub type TxnTopicPartition = (String, i32);

/// Offsets to commit for one group: (group id, [(topic, partition, offset)]).
pub type GroupOffsets = (String, Vec<(String, i32, CommittedOffset)>);

/// Kafka's transaction states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction in progress since the producer (re)initialised.
    Empty,
    /// Partitions or groups have been added; EndTxn not yet received.
    Ongoing,
    /// The commit decision is made; markers are being written.
    PrepareCommit,
    /// The abort decision is made; markers are being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name for the state (DescribeTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    /// The persisted code.
    pub fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    /// The state for a persisted code.
    pub fn from_code(c: u8) -> Option<TxnState> {
        Some(match c {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// Everything the coordinator knows about one transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id it owns.
    pub producer_id: i64,
    /// The current epoch.
    pub producer_epoch: i16,
    /// The epoch before the last bump, or -1 (lets a retried KIP-360 InitProducerId succeed).
    pub last_producer_epoch: i16,
    /// `transaction.timeout.ms` from the producer's InitProducerId.
    pub timeout_ms: i32,
    /// Where the transaction is.
    pub state: TxnState,
    /// Partitions in the current transaction.
    pub partitions: BTreeSet<TxnTopicPartition>,
    /// Consumer groups in the current transaction (AddOffsetsToTxn).
    pub groups: BTreeSet<String>,
    /// Offsets committed in the transaction (TxnOffsetCommit), by group, applied on commit.
    pub pending_offsets: BTreeMap<String, BTreeMap<TxnTopicPartition, CommittedOffset>>,
    /// When the current transaction began, or -1.
    pub txn_start_ms: i64,
    /// Last change (drives `transactional.id.expiration.ms`); not persisted.
    pub last_update_ms: i64,
}

impl TxnMetadata {
    fn pending_offset_count(&self) -> usize {
        self.pending_offsets.values().map(BTreeMap::len).sum()
    }

    fn clear_transaction(&mut self) {
        self.partitions.clear();
        self.groups.clear();
        self.pending_offsets.clear();
        self.txn_start_ms = -1;
    }
}

/// Settings of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnConfig {
    /// Kafka's `transaction.max.timeout.ms`.
    pub transaction_max_timeout_ms: i32,
    /// Kafka's `transactional.id.expiration.ms`.
    pub transactional_id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            transaction_max_timeout_ms: super::TRANSACTION_MAX_TIMEOUT_MS_DEFAULT,
            transactional_id_expiration_ms: super::TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT,
        }
    }
}

/// Markers to write and offsets to apply to finish one transaction. The shell writes a
/// control batch (`commit` decides COMMIT or ABORT) with this producer id/epoch and
/// coordinator epoch to every partition, applies `offsets` to the group store if `commit`,
/// makes all of it durable and then calls [`TxnCoordinator::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerWork {
    /// The transactional id.
    pub transactional_id: String,
    /// Producer id written in the markers.
    pub producer_id: i64,
    /// Producer epoch written in the markers.
    pub producer_epoch: i16,
    /// COMMIT (true) or ABORT (false).
    pub commit: bool,
    /// The coordinator epoch written in the markers' values.
    pub coordinator_epoch: i32,
    /// Partitions that get a marker.
    pub partitions: Vec<TxnTopicPartition>,
    /// Offsets to commit, by group (empty when aborting).
    pub offsets: Vec<GroupOffsets>,
}

/// What InitProducerId with a transactional id produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// Answer with this producer id and epoch (after syncing the queued records).
    Ready {
        /// The producer id.
        producer_id: i64,
        /// The epoch.
        producer_epoch: i16,
    },
    /// A transaction was ongoing: it is now being aborted with a bumped epoch. Perform the
    /// work, then retry the InitProducerId (Kafka answers CONCURRENT_TRANSACTIONS instead and
    /// lets the client retry).
    AbortFirst(MarkerWork),
    /// Answer with this error code.
    Error(i16),
}

/// What EndTxn produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Answer with this code now (errors, or a retry of an already completed EndTxn).
    Done(i16),
    /// The decision is queued for persistence; perform the work, then answer.
    Markers(MarkerWork),
}

/// The transaction coordinator.
#[derive(Debug)]
pub struct TxnCoordinator {
    config: TxnConfig,
    txns: BTreeMap<String, TxnMetadata>,
    by_producer: HashMap<i64, String>,
    next_producer_id: i64,
    producer_id_block_end: i64,
    coordinator_epoch: i32,
    records: Vec<StoreRecord>,
}

impl TxnCoordinator {
    /// A coordinator with no state (a fresh data directory).
    pub fn new(config: TxnConfig) -> TxnCoordinator {
        let (core, work) = Self::recover(config, Replayed::default(), 0);
        assert!(work.is_empty());
        core
    }

    /// Rebuilds the coordinator from replayed records after a restart at `now_ms`. The
    /// coordinator epoch is bumped (and queued for persistence), producer ids continue after
    /// the last persisted block, prepared transactions are completed and ongoing ones are
    /// aborted with a bumped epoch: the returned work must be performed before serving.
    pub fn recover(config: TxnConfig, replayed: Replayed, now_ms: i64) -> (TxnCoordinator, Vec<MarkerWork>) {
        let next = replayed.producer_id_block_end.max(TXN_PRODUCER_ID_BASE);
        let mut core = TxnCoordinator {
            config,
            txns: BTreeMap::new(),
            by_producer: HashMap::new(),
            next_producer_id: next,
            producer_id_block_end: next,
            coordinator_epoch: replayed.coordinator_epoch.saturating_add(1),
            records: Vec::new(),
        };
        core.records.push(StoreRecord::CoordinatorEpoch(core.coordinator_epoch));
        let mut work = Vec::new();
        for (id, mut m) in replayed.txns {
            m.last_update_ms = now_ms;
            core.by_producer.insert(m.producer_id, id.clone());
            core.txns.insert(id.clone(), m);
            let m = core.txns.get_mut(&id).expect("inserted");
            match m.state {
                TxnState::Ongoing => {
                    // The producer may have lost acknowledged-but-unsynced state with us; fence it
                    // so it cannot carry this transaction on into the next one.
                    bump_epoch_for_abort(m);
                    m.state = TxnState::PrepareAbort;
                    core.records.push(StoreRecord::Txn(m.clone()));
                    work.push(core.work_for(&id));
                }
                TxnState::PrepareCommit | TxnState::PrepareAbort => work.push(core.work_for(&id)),
                _ => {}
            }
        }
        (core, work)
    }

    /// The coordinator epoch written into markers.
    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// Records to persist, in order, since the last call. The shell appends them to the
    /// [`super::TxnStore`] and syncs before acting on the outcome that produced them.
    pub fn take_records(&mut self) -> Vec<StoreRecord> {
        std::mem::take(&mut self.records)
    }

    /// The live state as records (compaction writes these instead of the history).
    pub fn snapshot_records(&self) -> Vec<StoreRecord> {
        let mut out = vec![
            StoreRecord::CoordinatorEpoch(self.coordinator_epoch),
            StoreRecord::ProducerIdBlock(self.producer_id_block_end),
        ];
        out.extend(self.txns.values().cloned().map(StoreRecord::Txn));
        out
    }

    /// One transactional id's state.
    pub fn describe(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    /// Every transactional id's state, in id order.
    pub fn list(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    /// The transactional id that owns `producer_id`.
    pub fn transactional_id_of(&self, producer_id: i64) -> Option<&str> {
        self.by_producer.get(&producer_id).map(String::as_str)
    }

    fn allocate_producer_id(&mut self) -> i64 {
        if self.next_producer_id >= self.producer_id_block_end {
            self.producer_id_block_end = self.next_producer_id + PRODUCER_ID_BLOCK_SIZE;
            self.records.push(StoreRecord::ProducerIdBlock(self.producer_id_block_end));
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        id
    }

    fn persist(&mut self, id: &str) {
        let m = self.txns.get(id).expect("persisting a known transactional id").clone();
        self.records.push(StoreRecord::Txn(m));
    }

    fn work_for(&self, id: &str) -> MarkerWork {
        let m = &self.txns[id];
        assert!(m.state.is_prepare(), "work for {id} in state {:?}", m.state);
        let commit = m.state == TxnState::PrepareCommit;
        MarkerWork {
            transactional_id: id.to_string(),
            producer_id: m.producer_id,
            producer_epoch: m.producer_epoch,
            commit,
            coordinator_epoch: self.coordinator_epoch,
            partitions: m.partitions.iter().cloned().collect(),
            offsets: if commit {
                m.pending_offsets
                    .iter()
                    .map(|(g, offs)| (g.clone(), offs.iter().map(|((t, p), o)| (t.clone(), *p, o.clone())).collect()))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// InitProducerId with a transactional id. `expected` is the KIP-360 (v3+) producer id and
    /// epoch the client already holds, if any.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
    ) -> InitOutcome {
        if transactional_id.is_empty() || transactional_id.len() > TRANSACTIONAL_ID_MAX_LEN {
            return InitOutcome::Error(errors::INVALID_REQUEST);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.transaction_max_timeout_ms {
            return InitOutcome::Error(INVALID_TRANSACTION_TIMEOUT);
        }
        let expected = expected.filter(|(pid, _)| *pid >= 0);
        if !self.txns.contains_key(transactional_id) {
            if self.txns.len() >= TRANSACTIONAL_IDS_MAX {
                return InitOutcome::Error(errors::COORDINATOR_NOT_AVAILABLE);
            }
            let producer_id = self.allocate_producer_id();
            let m = TxnMetadata {
                transactional_id: transactional_id.to_string(),
                producer_id,
                producer_epoch: 0,
                last_producer_epoch: -1,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                pending_offsets: BTreeMap::new(),
                txn_start_ms: -1,
                last_update_ms: now_ms,
            };
            self.by_producer.insert(producer_id, transactional_id.to_string());
            self.txns.insert(transactional_id.to_string(), m);
            self.persist(transactional_id);
            return InitOutcome::Ready { producer_id, producer_epoch: 0 };
        }
        let m = self.txns.get(transactional_id).expect("checked");
        if let Some((pid, epoch)) = expected {
            let current = pid == m.producer_id && epoch == m.producer_epoch;
            let retried = pid == m.producer_id
                && epoch == m.last_producer_epoch
                && matches!(m.state, TxnState::Empty)
                && m.last_producer_epoch >= 0;
            if retried {
                // A retry of the InitProducerId that made the current epoch: same answer.
                return InitOutcome::Ready { producer_id: m.producer_id, producer_epoch: m.producer_epoch };
            }
            if !current {
                return InitOutcome::Error(PRODUCER_FENCED);
            }
        }
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => InitOutcome::Error(CONCURRENT_TRANSACTIONS),
            TxnState::Ongoing => {
                let m = self.txns.get_mut(transactional_id).expect("checked");
                bump_epoch_for_abort(m);
                m.state = TxnState::PrepareAbort;
                m.last_update_ms = now_ms;
                self.persist(transactional_id);
                InitOutcome::AbortFirst(self.work_for(transactional_id))
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let exhausted = m.producer_epoch >= i16::MAX - 1;
                let old_pid = m.producer_id;
                let new_pid = if exhausted { Some(self.allocate_producer_id()) } else { None };
                let m = self.txns.get_mut(transactional_id).expect("checked");
                match new_pid {
                    Some(pid) => {
                        m.producer_id = pid;
                        m.producer_epoch = 0;
                        m.last_producer_epoch = -1;
                    }
                    None => {
                        m.last_producer_epoch = m.producer_epoch;
                        m.producer_epoch += 1;
                    }
                }
                m.timeout_ms = timeout_ms;
                m.state = TxnState::Empty;
                m.last_update_ms = now_ms;
                m.clear_transaction();
                let (producer_id, producer_epoch) = (m.producer_id, m.producer_epoch);
                if let Some(pid) = new_pid {
                    self.by_producer.remove(&old_pid);
                    self.by_producer.insert(pid, transactional_id.to_string());
                }
                self.persist(transactional_id);
                InitOutcome::Ready { producer_id, producer_epoch }
            }
        }
    }

    /// Checks that `producer_id`/`producer_epoch` are the transactional id's current ones.
    fn check_producer(&self, transactional_id: &str, producer_id: i64, producer_epoch: i16) -> Result<(), i16> {
        let Some(m) = self.txns.get(transactional_id) else { return Err(INVALID_PRODUCER_ID_MAPPING) };
        if m.producer_id != producer_id {
            return Err(INVALID_PRODUCER_ID_MAPPING);
        }
        if m.producer_epoch != producer_epoch {
            return Err(PRODUCER_FENCED);
        }
        Ok(())
    }

    /// Moves a transaction into Ongoing if it is not already, or says why it cannot take part
    /// in one now.
    fn begin_or_continue(&mut self, transactional_id: &str, now_ms: i64) -> Result<(), i16> {
        let m = self.txns.get_mut(transactional_id).expect("checked by check_producer");
        match m.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => Err(CONCURRENT_TRANSACTIONS),
            TxnState::Ongoing => Ok(()),
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                m.clear_transaction();
                m.state = TxnState::Ongoing;
                m.txn_start_ms = now_ms;
                Ok(())
            }
        }
    }

    /// AddPartitionsToTxn for one transaction: one code for all of `partitions`.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TxnTopicPartition],
        now_ms: i64,
    ) -> i16 {
        if let Err(code) = self.check_producer(transactional_id, producer_id, producer_epoch) {
            return code;
        }
        let m = &self.txns[transactional_id];
        if m.state == TxnState::Ongoing && partitions.iter().all(|tp| m.partitions.contains(tp)) {
            // A retry: nothing changes, nothing to persist.
            return errors::NONE;
        }
        let current = if m.state == TxnState::Ongoing { m.partitions.len() } else { 0 };
        let new = partitions.iter().collect::<BTreeSet<_>>().len();
        if current + new > TXN_PARTITIONS_MAX {
            return errors::INVALID_REQUEST;
        }
        if let Err(code) = self.begin_or_continue(transactional_id, now_ms) {
            return code;
        }
        let m = self.txns.get_mut(transactional_id).expect("checked");
        m.partitions.extend(partitions.iter().cloned());
        m.last_update_ms = now_ms;
        self.persist(transactional_id);
        errors::NONE
    }

    /// AddPartitionsToTxn v4+ with `verify_only` (KIP-890): whether `partition` is in the
    /// producer's ongoing transaction. Changes nothing.
    pub fn verify_partition(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partition: &TxnTopicPartition,
    ) -> i16 {
        if let Err(code) = self.check_producer(transactional_id, producer_id, producer_epoch) {
            return code;
        }
        let m = &self.txns[transactional_id];
        if m.state == TxnState::Ongoing && m.partitions.contains(partition) {
            errors::NONE
        } else {
            INVALID_TXN_STATE
        }
    }

    /// AddOffsetsToTxn: adds `group` to the transaction (Kafka adds the group's
    /// `__consumer_offsets` partition; here the group itself is remembered).
    pub fn add_offsets(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
        now_ms: i64,
    ) -> i16 {
        if let Err(code) = self.check_producer(transactional_id, producer_id, producer_epoch) {
            return code;
        }
        if group_id.is_empty() || group_id.len() > crate::group::GROUP_ID_MAX_LEN {
            return errors::INVALID_GROUP_ID;
        }
        let m = &self.txns[transactional_id];
        if m.state == TxnState::Ongoing && m.groups.contains(group_id) {
            return errors::NONE;
        }
        if m.state == TxnState::Ongoing && m.groups.len() >= TXN_GROUPS_MAX {
            return errors::INVALID_REQUEST;
        }
        if let Err(code) = self.begin_or_continue(transactional_id, now_ms) {
            return code;
        }
        let m = self.txns.get_mut(transactional_id).expect("checked");
        m.groups.insert(group_id.to_string());
        m.last_update_ms = now_ms;
        self.persist(transactional_id);
        errors::NONE
    }

    /// TxnOffsetCommit: holds `offsets` pending in the transaction until EndTxn (applied on
    /// commit, dropped on abort). One code for every offset. Nothing is persisted: an ongoing
    /// transaction is aborted on restart, and a prepared one carries its offsets in its record.
    pub fn txn_offset_commit(
        &mut self,
        transactional_id: &str,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        offsets: Vec<(String, i32, CommittedOffset)>,
        now_ms: i64,
    ) -> i16 {
        if let Err(code) = self.check_producer(transactional_id, producer_id, producer_epoch) {
            return code;
        }
        let m = self.txns.get_mut(transactional_id).expect("checked");
        if m.state.is_prepare() {
            return CONCURRENT_TRANSACTIONS;
        }
        if m.state != TxnState::Ongoing || !m.groups.contains(group_id) {
            // AddOffsetsToTxn must come first, or the offsets would belong to no transaction.
            return INVALID_TXN_STATE;
        }
        let held = m.pending_offset_count();
        let group = m.pending_offsets.get(group_id);
        let new = offsets.iter().filter(|(t, p, _)| group.is_none_or(|g| !g.contains_key(&(t.clone(), *p)))).count();
        if held + new > TXN_PENDING_OFFSETS_MAX {
            return errors::INVALID_REQUEST;
        }
        let g = m.pending_offsets.entry(group_id.to_string()).or_default();
        for (t, p, o) in offsets {
            g.insert((t, p), o);
        }
        m.last_update_ms = now_ms;
        errors::NONE
    }

    /// EndTxn.
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> EndOutcome {
        if let Err(code) = self.check_producer(transactional_id, producer_id, producer_epoch) {
            return EndOutcome::Done(code);
        }
        let m = self.txns.get_mut(transactional_id).expect("checked");
        let code = match (m.state, commit) {
            (TxnState::Ongoing, _) => {
                m.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
                m.last_update_ms = now_ms;
                self.persist(transactional_id);
                return EndOutcome::Markers(self.work_for(transactional_id));
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => CONCURRENT_TRANSACTIONS,
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => errors::NONE,
            _ => INVALID_TXN_STATE,
        };
        EndOutcome::Done(code)
    }

    /// Acknowledges `work`: every marker is written and durable and (for a commit) the offsets
    /// are applied. The transaction moves to CompleteCommit/CompleteAbort. Work that no longer
    /// matches the state (impossible while the Prepare-state invariant holds) is ignored.
    pub fn complete(&mut self, work: &MarkerWork, now_ms: i64) {
        let Some(m) = self.txns.get_mut(&work.transactional_id) else { return };
        let expected = if work.commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
        if m.state != expected || m.producer_id != work.producer_id || m.producer_epoch != work.producer_epoch {
            debug_assert!(false, "stale work for {}: state {:?}", work.transactional_id, m.state);
            return;
        }
        m.state = if work.commit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
        m.clear_transaction();
        m.last_update_ms = now_ms;
        self.persist(&work.transactional_id);
    }

    /// Produce-side guard (defence against late or reordered requests, KIP-890 part 1): may
    /// `producer_id`/`producer_epoch` write a transactional batch to `partition` now? Errors:
    /// INVALID_PRODUCER_ID_MAPPING (not our producer id, or not this transactional id's),
    /// INVALID_PRODUCER_EPOCH (fenced or unknown epoch), INVALID_TXN_STATE (the partition is
    /// not in the producer's ongoing transaction, e.g. a produce that arrives after EndTxn).
    pub fn check_transactional_produce(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partition: &TxnTopicPartition,
    ) -> Result<(), i16> {
        let Some(owner) = self.by_producer.get(&producer_id) else { return Err(INVALID_PRODUCER_ID_MAPPING) };
        if owner != transactional_id {
            return Err(INVALID_PRODUCER_ID_MAPPING);
        }
        let m = &self.txns[owner];
        if m.producer_epoch != producer_epoch {
            return Err(errors::INVALID_PRODUCER_EPOCH);
        }
        if m.state != TxnState::Ongoing || !m.partitions.contains(partition) {
            return Err(INVALID_TXN_STATE);
        }
        Ok(())
    }

    /// Timeouts at `now_ms`: every ongoing transaction older than its timeout is aborted with
    /// a bumped epoch (fencing its producer, as Kafka), and idle transactional ids past
    /// `transactional.id.expiration.ms` are forgotten. Returns the abort work.
    pub fn poll(&mut self, now_ms: i64) -> Vec<MarkerWork> {
        let expired: Vec<String> = self
            .txns
            .values()
            .filter(|m| m.state == TxnState::Ongoing && now_ms >= m.txn_start_ms.saturating_add(m.timeout_ms as i64))
            .map(|m| m.transactional_id.clone())
            .collect();
        let mut work = Vec::new();
        for id in expired {
            let m = self.txns.get_mut(&id).expect("listed");
            bump_epoch_for_abort(m);
            m.state = TxnState::PrepareAbort;
            m.last_update_ms = now_ms;
            self.persist(&id);
            work.push(self.work_for(&id));
        }
        let idle: Vec<String> = self
            .txns
            .values()
            .filter(|m| matches!(m.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort))
            .filter(|m| now_ms >= m.last_update_ms.saturating_add(self.config.transactional_id_expiration_ms))
            .map(|m| m.transactional_id.clone())
            .collect();
        for id in idle {
            let m = self.txns.remove(&id).expect("listed");
            self.by_producer.remove(&m.producer_id);
            self.records.push(StoreRecord::Remove(id));
        }
        work
    }

    /// The next time [`TxnCoordinator::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<i64> {
        self.txns
            .values()
            .map(|m| match m.state {
                TxnState::Ongoing => m.txn_start_ms.saturating_add(m.timeout_ms as i64),
                TxnState::PrepareCommit | TxnState::PrepareAbort => i64::MAX,
                _ => m.last_update_ms.saturating_add(self.config.transactional_id_expiration_ms),
            })
            .min()
            .filter(|d| *d != i64::MAX)
    }
}

/// Bumps the epoch before an abort the producer did not ask for, so its later requests with
/// the old epoch are fenced. Client-visible epochs stop at `i16::MAX - 1` (InitProducerId then
/// allocates a new producer id), so this bump always fits.
fn bump_epoch_for_abort(m: &mut TxnMetadata) {
    assert!(m.producer_epoch < i16::MAX, "epoch of {} exhausted", m.transactional_id);
    m.last_producer_epoch = m.producer_epoch;
    m.producer_epoch += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> TxnTopicPartition {
        (t.to_string(), p)
    }

    fn off(o: i64) -> CommittedOffset {
        CommittedOffset { offset: o, leader_epoch: -1, metadata: None, commit_ms: 0 }
    }

    fn init(c: &mut TxnCoordinator, id: &str) -> (i64, i16) {
        match c.init_producer_id(id, 60_000, None, 0) {
            InitOutcome::Ready { producer_id, producer_epoch } => (producer_id, producer_epoch),
            other => panic!("init: {other:?}"),
        }
    }

    #[test]
    fn commit_flow_emits_commit_markers_and_offsets() {
        // Proves Empty → Ongoing → PrepareCommit → CompleteCommit, with markers for every added
        // partition, the pending offsets of added groups, and an idempotent EndTxn retry.
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (pid, ep) = init(&mut c, "t1");
        assert!(pid >= TXN_PRODUCER_ID_BASE);
        assert_eq!(ep, 0);
        assert_eq!(c.add_partitions("t1", pid, ep, &[tp("a", 0), tp("b", 1)], 10), errors::NONE);
        assert_eq!(c.describe("t1").unwrap().state, TxnState::Ongoing);
        assert_eq!(c.add_partitions("t1", pid, ep, &[tp("a", 0)], 11), errors::NONE);
        assert_eq!(c.txn_offset_commit("t1", "g", pid, ep, vec![("a".into(), 0, off(5))], 12), INVALID_TXN_STATE);
        assert_eq!(c.add_offsets("t1", pid, ep, "g", 12), errors::NONE);
        assert_eq!(c.txn_offset_commit("t1", "g", pid, ep, vec![("a".into(), 0, off(5))], 13), errors::NONE);
        let EndOutcome::Markers(w) = c.end_txn("t1", pid, ep, true, 20) else { panic!() };
        assert!(w.commit);
        assert_eq!((w.producer_id, w.producer_epoch), (pid, ep));
        assert_eq!(w.partitions, vec![tp("a", 0), tp("b", 1)]);
        assert_eq!(w.offsets, vec![("g".to_string(), vec![("a".to_string(), 0, off(5))])]);
        assert_eq!(c.describe("t1").unwrap().state, TxnState::PrepareCommit);
        // While prepared: concurrent requests wait.
        assert_eq!(c.end_txn("t1", pid, ep, true, 21), EndOutcome::Done(CONCURRENT_TRANSACTIONS));
        assert_eq!(c.end_txn("t1", pid, ep, false, 21), EndOutcome::Done(INVALID_TXN_STATE));
        assert_eq!(c.add_partitions("t1", pid, ep, &[tp("c", 0)], 21), CONCURRENT_TRANSACTIONS);
        assert_eq!(c.init_producer_id("t1", 60_000, None, 21), InitOutcome::Error(CONCURRENT_TRANSACTIONS));
        c.complete(&w, 22);
        let m = c.describe("t1").unwrap();
        assert_eq!(m.state, TxnState::CompleteCommit);
        assert!(m.partitions.is_empty() && m.groups.is_empty() && m.pending_offsets.is_empty());
        assert_eq!(c.end_txn("t1", pid, ep, true, 23), EndOutcome::Done(errors::NONE));
        assert_eq!(c.end_txn("t1", pid, ep, false, 23), EndOutcome::Done(INVALID_TXN_STATE));
        // The next transaction starts with the next AddPartitionsToTxn.
        assert_eq!(c.add_partitions("t1", pid, ep, &[tp("c", 0)], 30), errors::NONE);
        assert_eq!(c.describe("t1").unwrap().partitions.len(), 1);
    }

    #[test]
    fn abort_flow_drops_offsets() {
        // Proves an aborted transaction emits ABORT markers and never applies its offsets.
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (pid, ep) = init(&mut c, "t");
        assert_eq!(c.add_offsets("t", pid, ep, "g", 0), errors::NONE);
        assert_eq!(c.txn_offset_commit("t", "g", pid, ep, vec![("a".into(), 0, off(9))], 0), errors::NONE);
        assert_eq!(c.add_partitions("t", pid, ep, &[tp("a", 0)], 0), errors::NONE);
        let EndOutcome::Markers(w) = c.end_txn("t", pid, ep, false, 1) else { panic!() };
        assert!(!w.commit);
        assert!(w.offsets.is_empty());
        c.complete(&w, 2);
        assert_eq!(c.describe("t").unwrap().state, TxnState::CompleteAbort);
        assert_eq!(c.end_txn("t", pid, ep, false, 3), EndOutcome::Done(errors::NONE));
        assert_eq!(c.end_txn("t", pid, ep, true, 3), EndOutcome::Done(INVALID_TXN_STATE));
    }

    #[test]
    fn reinit_fences_old_epoch_and_aborts_ongoing() {
        // Proves InitProducerId on an ongoing transaction aborts it with a bumped epoch, the
        // retry then bumps again, and the old epoch is fenced everywhere.
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (pid, e0) = init(&mut c, "t");
        assert_eq!(c.add_partitions("t", pid, e0, &[tp("a", 0)], 0), errors::NONE);
        let InitOutcome::AbortFirst(w) = c.init_producer_id("t", 60_000, None, 5) else { panic!() };
        assert!(!w.commit);
        assert_eq!((w.producer_id, w.producer_epoch), (pid, e0 + 1));
        assert_eq!(w.partitions, vec![tp("a", 0)]);
        // The zombie's requests are fenced.
        assert_eq!(c.end_txn("t", pid, e0, true, 6), EndOutcome::Done(PRODUCER_FENCED));
        c.complete(&w, 7);
        let (pid2, e2) = init(&mut c, "t");
        assert_eq!((pid2, e2), (pid, e0 + 2));
        assert_eq!(c.add_partitions("t", pid, e0, &[tp("a", 0)], 8), PRODUCER_FENCED);
        assert_eq!(c.add_offsets("t", pid, e0 + 1, "g", 8), PRODUCER_FENCED);
        assert_eq!(c.add_partitions("t", pid + 1, e2, &[tp("a", 0)], 8), INVALID_PRODUCER_ID_MAPPING);
        assert_eq!(c.add_partitions("nope", pid, e2, &[tp("a", 0)], 8), INVALID_PRODUCER_ID_MAPPING);
        assert_eq!(c.check_transactional_produce("t", pid, e0, &tp("a", 0)), Err(errors::INVALID_PRODUCER_EPOCH));
        // KIP-360: the current pid/epoch may re-init; a retry of that re-init gets the same answer;
        // anything else is fenced.
        assert_eq!(
            c.init_producer_id("t", 60_000, Some((pid, e2)), 9),
            InitOutcome::Ready { producer_id: pid, producer_epoch: e2 + 1 }
        );
        assert_eq!(
            c.init_producer_id("t", 60_000, Some((pid, e2)), 9),
            InitOutcome::Ready { producer_id: pid, producer_epoch: e2 + 1 }
        );
        assert_eq!(c.init_producer_id("t", 60_000, Some((pid, e0)), 9), InitOutcome::Error(PRODUCER_FENCED));
        assert_eq!(c.init_producer_id("t", 0, None, 9), InitOutcome::Error(INVALID_TRANSACTION_TIMEOUT));
        assert_eq!(c.init_producer_id("t", 900_001, None, 9), InitOutcome::Error(INVALID_TRANSACTION_TIMEOUT));
    }

    #[test]
    fn epoch_exhaustion_allocates_a_new_producer_id() {
        // Proves a transactional id whose epoch reaches i16::MAX - 1 gets a fresh producer id at
        // epoch 0 and the old id no longer maps to it.
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (pid, _) = init(&mut c, "t");
        c.txns.get_mut("t").unwrap().producer_epoch = i16::MAX - 1;
        let (pid2, e) = init(&mut c, "t");
        assert_ne!(pid, pid2);
        assert_eq!(e, 0);
        assert_eq!(c.transactional_id_of(pid), None);
        assert_eq!(c.transactional_id_of(pid2), Some("t"));
    }

    #[test]
    fn timeout_aborts_and_fences() {
        // Proves poll aborts exactly the transactions past their timeout, with a bumped epoch,
        // reports the deadline, and expires idle transactional ids.
        let config = TxnConfig { transaction_max_timeout_ms: 900_000, transactional_id_expiration_ms: 1_000_000 };
        let mut c = TxnCoordinator::new(config);
        let (p1, e1) = match c.init_producer_id("slow", 1000, None, 0) {
            InitOutcome::Ready { producer_id, producer_epoch } => (producer_id, producer_epoch),
            o => panic!("{o:?}"),
        };
        let (p2, e2) = match c.init_producer_id("fast", 5000, None, 0) {
            InitOutcome::Ready { producer_id, producer_epoch } => (producer_id, producer_epoch),
            o => panic!("{o:?}"),
        };
        assert_eq!(c.add_partitions("slow", p1, e1, &[tp("a", 0)], 100), errors::NONE);
        assert_eq!(c.add_partitions("fast", p2, e2, &[tp("a", 1)], 100), errors::NONE);
        assert_eq!(c.next_deadline(), Some(1100));
        assert!(c.poll(1099).is_empty());
        let w = c.poll(1100);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].transactional_id.as_str(), w[0].commit, w[0].producer_epoch), ("slow", false, e1 + 1));
        assert!(c.poll(1101).is_empty(), "a prepared transaction is not aborted twice");
        c.complete(&w[0], 1200);
        assert_eq!(c.end_txn("slow", p1, e1, true, 1300), EndOutcome::Done(PRODUCER_FENCED));
        let EndOutcome::Markers(fw) = c.end_txn("fast", p2, e2, true, 1300) else { panic!() };
        c.complete(&fw, 1300);
        c.take_records();
        // Idle ids expire after transactional.id.expiration.ms.
        assert_eq!(c.next_deadline(), Some(1_001_200));
        assert!(c.poll(1_001_250).is_empty());
        assert!(c.describe("slow").is_none());
        assert!(c.describe("fast").is_some());
        assert_eq!(c.take_records(), vec![StoreRecord::Remove("slow".into())]);
        assert_eq!(c.transactional_id_of(p1), None);
    }

    #[test]
    fn produce_guard_refuses_partitions_outside_the_transaction() {
        // Proves the late-AddPartitions anomaly guard: a transactional batch is accepted only for
        // a partition in the producer's ongoing transaction, with its current epoch and id.
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (pid, ep) = init(&mut c, "t");
        let a0 = tp("a", 0);
        assert_eq!(c.check_transactional_produce("t", pid, ep, &a0), Err(INVALID_TXN_STATE));
        assert_eq!(c.add_partitions("t", pid, ep, std::slice::from_ref(&a0), 0), errors::NONE);
        assert_eq!(c.check_transactional_produce("t", pid, ep, &a0), Ok(()));
        assert_eq!(c.check_transactional_produce("t", pid, ep, &tp("a", 1)), Err(INVALID_TXN_STATE));
        assert_eq!(c.check_transactional_produce("u", pid, ep, &a0), Err(INVALID_PRODUCER_ID_MAPPING));
        assert_eq!(c.check_transactional_produce("t", 7, ep, &a0), Err(INVALID_PRODUCER_ID_MAPPING));
        assert_eq!(c.check_transactional_produce("t", pid, ep + 1, &a0), Err(errors::INVALID_PRODUCER_EPOCH));
        let EndOutcome::Markers(w) = c.end_txn("t", pid, ep, true, 1) else { panic!() };
        // A produce that arrives after EndTxn (while or after markers are written) is refused,
        // so it cannot land in the next transaction.
        assert_eq!(c.check_transactional_produce("t", pid, ep, &a0), Err(INVALID_TXN_STATE));
        c.complete(&w, 2);
        assert_eq!(c.check_transactional_produce("t", pid, ep, &a0), Err(INVALID_TXN_STATE));
        assert_eq!(c.verify_partition("t", pid, ep, &a0), INVALID_TXN_STATE);
        assert_eq!(c.add_partitions("t", pid, ep, std::slice::from_ref(&a0), 3), errors::NONE);
        assert_eq!(c.verify_partition("t", pid, ep, &a0), errors::NONE);
    }

    #[test]
    fn recovery_aborts_ongoing_and_resumes_prepared() {
        // Proves a restart bumps the coordinator epoch, continues producer ids after the last
        // persisted block, aborts ongoing transactions with a bumped epoch and re-drives prepared
        // ones (with their offsets).
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (p1, e1) = init(&mut c, "ongoing");
        let (p2, e2) = init(&mut c, "prepared");
        let (p3, e3) = init(&mut c, "done");
        assert_eq!(c.add_partitions("ongoing", p1, e1, &[tp("a", 0)], 0), errors::NONE);
        assert_eq!(c.add_partitions("prepared", p2, e2, &[tp("a", 1)], 0), errors::NONE);
        assert_eq!(c.add_offsets("prepared", p2, e2, "g", 0), errors::NONE);
        assert_eq!(c.txn_offset_commit("prepared", "g", p2, e2, vec![("a".into(), 1, off(3))], 0), errors::NONE);
        let EndOutcome::Markers(w) = c.end_txn("prepared", p2, e2, true, 0) else { panic!() };
        let mut replayed = Replayed::default();
        for r in c.take_records() {
            replayed.apply(r);
        }
        assert_eq!(replayed.txns["done"].producer_id, p3);
        let (mut r, work) = TxnCoordinator::recover(TxnConfig::default(), replayed, 50);
        assert_eq!(r.coordinator_epoch(), c.coordinator_epoch() + 1);
        assert_eq!(work.len(), 2);
        let abort = work.iter().find(|w| w.transactional_id == "ongoing").unwrap();
        assert_eq!((abort.commit, abort.producer_epoch), (false, e1 + 1));
        let commit = work.iter().find(|w| w.transactional_id == "prepared").unwrap();
        assert_eq!(commit.offsets, w.offsets);
        assert_eq!(commit.partitions, w.partitions);
        for w in &work {
            r.complete(w, 60);
        }
        let (p4, _) = init(&mut r, "new");
        assert!(p4 > p3 && p4 >= TXN_PRODUCER_ID_BASE + PRODUCER_ID_BLOCK_SIZE, "p4={p4}");
        assert_eq!(r.end_txn("ongoing", p1, e1, true, 70), EndOutcome::Done(PRODUCER_FENCED));
        assert_eq!(
            r.init_producer_id("done", 1000, None, 70),
            InitOutcome::Ready { producer_id: p3, producer_epoch: e3 + 1 }
        );
    }

    #[test]
    fn limits_are_enforced() {
        // Proves the per-transaction partition limit is enforced without changing state.
        let mut c = TxnCoordinator::new(TxnConfig::default());
        let (pid, ep) = init(&mut c, "t");
        let many: Vec<_> = (0..=TXN_PARTITIONS_MAX as i32).map(|i| tp("a", i)).collect();
        assert_eq!(c.add_partitions("t", pid, ep, &many, 0), errors::INVALID_REQUEST);
        assert_eq!(c.describe("t").unwrap().state, TxnState::Empty);
        assert_eq!(c.init_producer_id("", 1000, None, 0), InitOutcome::Error(errors::INVALID_REQUEST));
    }
}
