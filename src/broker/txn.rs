//! The shell around the transaction coordinator core ([`crate::txn`]): request handlers for
//! InitProducerId (transactional), AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and
//! TxnOffsetCommit; the marker writer; the timer that aborts timed-out transactions; recovery
//! at open; and the hooks the produce, fetch and list-offsets paths call.
//!
//! Invariants:
//! - Lock order: a partition's `state` before `Txns::inner` (the produce guard runs with the
//!   partition locked). Nothing here takes a partition lock, the topic table or the group lock
//!   while holding `Txns::inner`, and no lock is held across an await.
//! - Records the core queues are appended under `Txns::inner` and synced before the response
//!   that depends on them is written (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn,
//!   EndTxn). A failed append or sync poisons the store: every later transactional request
//!   answers COORDINATOR_NOT_AVAILABLE until restart.
//! - Markers are written only after the Prepare record is durable, the transaction is marked
//!   complete only after every marker (and, on commit, every group offset) is durable; so after
//!   any crash recovery either finishes the decided outcome or aborts — never both.
//! - A transactional batch is appended only if the coordinator says its partition is in the
//!   producer's ongoing transaction at that moment (checked under the partition lock, which the
//!   marker writer also takes), so no batch lands after its transaction's marker.
//! - Recovery at open aborts every transaction the coordinator finds ongoing (fencing its
//!   producer), finishes prepared ones, then aborts any transaction still open in a partition
//!   log that no coordinator state covers (its AddPartitionsToTxn record was lost).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;

use super::producer_state::ProducerState;
use super::{Broker, BrokerError, Partition, PartitionState, Reply, RequestContext, Role};
use crate::group::{CommittedOffset, OFFSET_METADATA_MAX_BYTES};
use crate::log::Log;
use crate::protocol::batch::BatchHeader;
use crate::protocol::errors;
use crate::runtime::{self, Disk, File};
use crate::txn::{
    append_control_batch, fenced_code_for_version, ControlMarker, EndOutcome, InitOutcome, MarkerWork,
    PartitionTxnState, TxnConfig, TxnCoordinator, TxnStore, MARKER_SYNC_TIMEOUT_MS, OPERATION_NOT_ATTEMPTED,
    TXN_TIMER_IDLE_POLL_MS,
};

/// Directory (under the data directory) holding the transaction state file.
pub const TXN_STATE_DIR: &str = "__transaction_state";

/// Transaction coordination state owned by the broker.
pub struct Txns {
    inner: Mutex<TxnInner>,
}

struct TxnInner {
    core: TxnCoordinator,
    store: TxnStore,
    /// Work produced by recovery at open, performed by [`Broker::recover_transactions`].
    recovery: Vec<MarkerWork>,
    /// Prepared transactions whose markers could not all be written; the timer retries them.
    retry: Vec<MarkerWork>,
}

/// Records appended and what it takes to make them durable.
enum Persisted {
    /// Nothing was queued (or compaction already synced it).
    Nothing,
    /// Sync this file.
    Sync(Arc<dyn File>),
    /// The store failed (now or earlier): the records are not durable.
    Failed,
}

impl TxnInner {
    /// Appends whatever the core queued.
    fn persist(&mut self) -> Persisted {
        let records = self.core.take_records();
        if records.is_empty() {
            return Persisted::Nothing;
        }
        let file = match self.store.append(&records) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "transaction state append failed");
                return Persisted::Failed;
            }
        };
        if self.store.wants_compaction() {
            match self.store.compact(&self.core.snapshot_records()) {
                Ok(true) => return Persisted::Nothing,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "transaction state compaction failed");
                    return Persisted::Failed;
                }
            }
        }
        Persisted::Sync(file)
    }
}

impl Txns {
    /// Opens the transaction state store under `data_dir` and recovers the coordinator at
    /// `now_ms`. The recovery work is performed by [`Broker::recover_transactions`] once the
    /// partitions are open.
    pub fn open(disk: Arc<dyn Disk>, data_dir: &Path, now_ms: i64) -> Result<Txns, BrokerError> {
        let dir = data_dir.join(TXN_STATE_DIR);
        let (store, replayed) = TxnStore::open(disk, &dir)
            .map_err(|e| BrokerError::Corrupt { path: dir.display().to_string(), reason: e.to_string() })?;
        let (core, recovery) = TxnCoordinator::recover(TxnConfig::default(), replayed, now_ms);
        Ok(Txns { inner: Mutex::new(TxnInner { core, store, recovery, retry: Vec::new() }) })
    }
}

/// Rebuilds a partition's transaction index from its log (call in `open_partition`).
/// Rebuilds a partition's transaction and producer-sequence state from its log in one scan.
pub(super) fn rebuild_partition_state(
    log: &Log,
    dir: &Path,
) -> Result<(PartitionTxnState, ProducerState), BrokerError> {
    let mut txn = PartitionTxnState::default();
    let mut producers = ProducerState::default();
    log.scan_batches(crate::txn::REBUILD_READ_BYTES, |h, batch| {
        txn.observe_batch(h, batch);
        producers.observe_batch(h);
    })
    .map_err(|source| BrokerError::Log { dir: dir.display().to_string(), source })?;
    Ok((txn, producers))
}

/// Produce hook: records the transactional batches just appended at `base_offset` (call with
/// the partition locked, right after a successful `Log::append`).
pub(super) fn txn_on_append(st: &mut PartitionState, headers: &[BatchHeader], base_offset: i64) {
    let mut offset = base_offset;
    for h in headers {
        let last = offset + h.last_offset_delta as i64;
        st.txn.on_append(h.producer_id, h.producer_epoch, offset, last, h.is_transactional());
        offset = last + 1;
    }
}

/// Fetch hook: `(last_stable_offset, read_upto, aborted_transactions)` for a fetch from
/// `fetch_offset`. `read_upto` is the bound to pass to `Log::read` (the LSO for
/// read_committed, else the high watermark); `aborted_transactions` is `Some` only for
/// read_committed and lists the aborted transactions overlapping `[fetch_offset, LSO)`.
pub(super) fn txn_fetch_view(
    st: &PartitionState,
    fetch_offset: i64,
    high_watermark: i64,
    read_committed: bool,
) -> (i64, i64, Option<Vec<fetch_response::AbortedTransaction>>) {
    let lso = st.txn.last_stable_offset(high_watermark);
    if !read_committed {
        return (lso, high_watermark, None);
    }
    let aborted = st
        .txn
        .aborted_in_range(fetch_offset, lso)
        .into_iter()
        .map(|(pid, first)| {
            let mut a = fetch_response::AbortedTransaction::default();
            a.producer_id = ProducerId(pid);
            a.first_offset = first;
            a
        })
        .collect();
    (lso, lso, Some(aborted))
}

/// ListOffsets hook: the "latest" offset (-1) for `isolation_level` (1 = read_committed gets
/// the last stable offset, else the high watermark).
pub(super) fn txn_latest_offset(st: &PartitionState, high_watermark: i64, isolation_level: i8) -> i64 {
    if isolation_level == 1 {
        st.txn.last_stable_offset(high_watermark)
    } else {
        high_watermark
    }
}

/// Waits until `p` is durable past `upto`; false on a failed fsync or after
/// [`MARKER_SYNC_TIMEOUT_MS`]. A deleted partition needs no marker: true.
async fn wait_durable(p: Arc<Partition>, upto: i64) -> bool {
    let mut rx = p.durable.subscribe();
    tokio::time::timeout(Duration::from_millis(MARKER_SYNC_TIMEOUT_MS), async {
        loop {
            if p.deleted.load(Ordering::Acquire) {
                return true;
            }
            if p.poisoned.load(Ordering::Acquire) {
                return false;
            }
            if *rx.borrow_and_update() >= upto {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Fsyncs `p` now, on this thread (recovery at open only), as one round of the flusher.
fn sync_partition_now(p: &Partition) -> Result<(), BrokerError> {
    let mut st = p.state.lock().unwrap();
    let Some((files, upto)) = st.log.unflushed() else { return Ok(()) };
    if let Err(e) = files.iter().try_for_each(|f| f.sync_data()) {
        st.log.poison();
        p.poisoned.store(true, Ordering::Release);
        return Err(BrokerError::Io { path: p.dir.display().to_string(), source: e });
    }
    st.log.mark_flushed(upto);
    if st.log.log_end_offset() <= upto {
        st.unflushed_records = 0;
        st.first_unflushed_ms = -1;
        p.dirty.store(false, Ordering::Release);
    }
    drop(st);
    p.durable.send_modify(|d| *d = (*d).max(upto));
    Ok(())
}

impl Broker {
    // ----- hooks -----

    /// Produce guard (call with the partition's state locked, after `validate_produce` and
    /// before the idempotence check). Refuses: transactional batches without a transactional
    /// id and plain batches with one (INVALID_RECORD); batches of a producer id the coordinator
    /// does not map to this transactional id (INVALID_PRODUCER_ID_MAPPING); a stale epoch
    /// (INVALID_PRODUCER_EPOCH); a partition not in the producer's ongoing transaction — the
    /// late-AddPartitions / late-produce anomaly — (INVALID_TXN_STATE).
    pub(super) fn txn_check_produce(
        &self,
        topic: &str,
        partition: i32,
        transactional_id: Option<&str>,
        headers: &[BatchHeader],
    ) -> Result<(), (i16, String)> {
        let transactional = headers.iter().filter(|h| h.is_transactional()).count();
        let id = match transactional_id {
            None if transactional == 0 => return Ok(()),
            None => return Err((errors::INVALID_RECORD, "transactional batches need a transactional id".into())),
            Some(_) if transactional != headers.len() => {
                return Err((
                    errors::INVALID_RECORD,
                    "a transactional produce carries only transactional batches".into(),
                ))
            }
            Some(id) => id,
        };
        let tp = (topic.to_string(), partition);
        let g = self.txns.inner.lock().unwrap();
        let mut checked: Option<(i64, i16)> = None;
        for h in headers {
            if checked == Some((h.producer_id, h.producer_epoch)) {
                continue;
            }
            g.core.check_transactional_produce(id, h.producer_id, h.producer_epoch, &tp).map_err(|code| {
                let why = match code {
                    errors::INVALID_PRODUCER_EPOCH => "producer epoch is fenced or unknown",
                    crate::txn::INVALID_TXN_STATE => "partition is not in the producer's ongoing transaction",
                    _ => "producer id does not belong to this transactional id",
                };
                (code, format!("transactional produce refused: {why}"))
            })?;
            checked = Some((h.producer_id, h.producer_epoch));
        }
        Ok(())
    }

    // ----- shared machinery -----

    /// Makes `persisted` durable; on failure poisons the store and returns false.
    async fn sync_txn_state(self: &Arc<Self>, persisted: Persisted) -> bool {
        match persisted {
            Persisted::Nothing => true,
            Persisted::Failed => false,
            Persisted::Sync(f) => match runtime::blocking(move || f.sync_data()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e,
                        "transaction state fsync failed; refusing transactional requests until restart (never retry a failed fsync)");
                    self.txns.inner.lock().unwrap().store.poison();
                    false
                }
            },
        }
    }

    /// Appends `work`'s marker to each of its partitions that still exists. Returns the
    /// durability each append needs and whether every append succeeded.
    fn write_markers(&self, work: &MarkerWork) -> (Vec<(Arc<Partition>, i64)>, bool) {
        let now = runtime::now_ms();
        let marker = ControlMarker {
            producer_id: work.producer_id,
            producer_epoch: work.producer_epoch,
            commit: work.commit,
            coordinator_epoch: work.coordinator_epoch,
        };
        let mut waits = Vec::new();
        let mut ok = true;
        for (topic, index) in &work.partitions {
            let Some(t) = self.topic(topic) else { continue };
            let Some(p) = t.partitions.get(index) else { continue };
            if p.poisoned.load(Ordering::Acquire) {
                ok = false;
                continue;
            }
            let mut st = p.state.lock().unwrap();
            let Some(leader_epoch) = st.leading_epoch() else {
                // Not the leader (cluster mode): the marker cannot be written here now.
                ok = false;
                continue;
            };
            match append_control_batch(&mut st.log, marker, leader_epoch, now, t.config.log_append_time()) {
                Ok(info) => {
                    st.txn.on_marker(work.producer_id, work.commit, info.base_offset);
                    let leo = st.log.log_end_offset();
                    if let Role::Leader(l) = &mut st.role {
                        l.on_leader_append(leo);
                    }
                    st.unflushed_records += 1;
                    if st.first_unflushed_ms < 0 {
                        st.first_unflushed_ms = now;
                    }
                    st.sync_wanted_upto = st.sync_wanted_upto.max(info.last_offset + 1);
                    p.dirty.store(true, Ordering::Release);
                    waits.push((p.clone(), info.last_offset + 1));
                }
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "writing a transaction marker failed");
                    ok = false;
                }
            }
        }
        if !waits.is_empty() {
            self.appended.send_modify(|v| *v += 1);
            self.flush_wanted.notify_one();
        }
        (waits, ok)
    }

    /// Finishes a prepared transaction: makes its Prepare record durable (`persisted`), writes
    /// the markers, applies offsets (on commit), waits for durability, then records Complete.
    /// Returns the EndTxn answer. If any step fails, or the future is dropped (the client
    /// disconnected), the work is queued for the timer to retry: the transaction stays
    /// prepared (clients see CONCURRENT_TRANSACTIONS) until it is finished.
    async fn finish(self: &Arc<Self>, mut pending: PendingWork, persisted: Persisted) -> i16 {
        let work = pending.work.clone().expect("finish takes unfinished work");
        if !self.sync_txn_state(persisted).await {
            return errors::COORDINATOR_NOT_AVAILABLE;
        }
        let (waits, mut ok) = self.write_markers(&work);
        if ok && work.commit {
            for (group, commits) in &work.offsets {
                let (b, group, commits) = (self.clone(), group.clone(), commits.clone());
                if let Err(e) = runtime::blocking(move || b.groups.commit_txn_offsets(&group, &commits)).await {
                    tracing::error!(error = %e, "applying transactional offsets failed");
                    ok = false;
                }
            }
        }
        for (p, upto) in waits {
            ok &= wait_durable(p, upto).await;
        }
        if !ok {
            tracing::warn!(transactional_id = %work.transactional_id, "transaction markers not durable yet; will retry");
            return errors::COORDINATOR_NOT_AVAILABLE;
        }
        pending.work = None;
        let persisted = {
            let mut g = self.txns.inner.lock().unwrap();
            g.core.complete(&work, runtime::now_ms());
            g.persist()
        };
        // The outcome is already decided and applied; a lost Complete record only makes a
        // restart rewrite the same markers.
        let _ = self.sync_txn_state(persisted).await;
        errors::NONE
    }

    /// One timer step at `now_ms`: aborts timed-out transactions, retries stuck ones, expires
    /// idle transactional ids. Returns the next deadline.
    pub(super) async fn txn_tick(self: &Arc<Self>, now_ms: i64) -> Option<i64> {
        let (work, persisted) = {
            let mut g = self.txns.inner.lock().unwrap();
            if g.store.is_poisoned() {
                return None;
            }
            let mut work = g.core.poll(now_ms);
            let retried = g.retry.len();
            work.append(&mut g.retry);
            let persisted = match g.persist() {
                // A retried Prepare record may have been appended by a request whose sync never
                // ran: sync the file before writing its markers.
                Persisted::Nothing if retried > 0 => Persisted::Sync(g.store.file()),
                p => p,
            };
            (work, persisted)
        };
        if !work.is_empty() {
            tracing::info!(count = work.len(), "finishing timed-out or stuck transactions");
        }
        let mut persisted = Some(persisted);
        for w in work {
            self.finish(PendingWork::new(self, w), persisted.take().unwrap_or(Persisted::Nothing)).await;
        }
        if let Some(p) = persisted {
            self.sync_txn_state(p).await;
        }
        self.txns.inner.lock().unwrap().core.next_deadline()
    }

    /// Recovery at open (after every partition is open): finishes what the coordinator
    /// recovered (prepared → their outcome, ongoing → abort) and aborts transactions left open
    /// in partition logs that no coordinator state covers. Runs synchronously (fsyncs inline).
    pub(super) fn recover_transactions(&self) -> Result<(), BrokerError> {
        let store_err = |e: crate::txn::TxnStoreError| BrokerError::Corrupt {
            path: TXN_STATE_DIR.to_string(),
            reason: e.to_string(),
        };
        let (work, coordinator_epoch) = {
            let mut g = self.txns.inner.lock().unwrap();
            let records = g.core.take_records();
            g.store.append(&records).map_err(store_err)?;
            g.store.sync().map_err(store_err)?;
            (std::mem::take(&mut g.recovery), g.core.coordinator_epoch())
        };
        let now = runtime::now_ms();
        // Producers whose decided outcome could not be written: never abort their data below.
        let mut unfinished: Vec<i64> = Vec::new();
        for w in &work {
            tracing::info!(transactional_id = %w.transactional_id, commit = w.commit, "finishing a transaction after restart");
            let (waits, ok) = self.write_markers(w);
            for (p, _) in &waits {
                sync_partition_now(p)?;
            }
            if !ok {
                // Left prepared; the timer retries it.
                unfinished.push(w.producer_id);
                self.txns.inner.lock().unwrap().retry.push(w.clone());
                continue;
            }
            if w.commit {
                for (group, commits) in &w.offsets {
                    self.groups.commit_txn_offsets(group, commits).map_err(|e| BrokerError::Corrupt {
                        path: super::group::OFFSETS_DIR.to_string(),
                        reason: e.to_string(),
                    })?;
                }
            }
            self.txns.inner.lock().unwrap().core.complete(w, now);
        }
        // Dangling transactions: open in a log, unknown to (or already ended by) the coordinator.
        for t in self.all_topics() {
            for p in t.partitions.values() {
                let open: Vec<(i64, i16, i64)> =
                    p.state.lock().unwrap().txn.ongoing().filter(|(pid, _, _)| !unfinished.contains(pid)).collect();
                if open.is_empty() {
                    continue;
                }
                for (pid, epoch, first) in open {
                    tracing::warn!(topic = %p.topic, partition = p.index, producer_id = pid, first_offset = first,
                        "aborting a transaction left open in the log");
                    let w = MarkerWork {
                        transactional_id: String::new(),
                        producer_id: pid,
                        producer_epoch: epoch,
                        commit: false,
                        coordinator_epoch,
                        partitions: vec![(p.topic.clone(), p.index)],
                        offsets: Vec::new(),
                    };
                    let _ = self.write_markers(&w);
                }
                sync_partition_now(p)?;
            }
        }
        let mut g = self.txns.inner.lock().unwrap();
        let records = g.core.take_records();
        g.store.append(&records).map_err(store_err)?;
        g.store.sync().map_err(store_err)
    }

    // ----- request handlers -----

    /// InitProducerId: with a transactional id, the coordinator (answers after the new
    /// producer id/epoch is durable, first aborting an ongoing transaction); without, the
    /// idempotent allocator in `data.rs`.
    pub(super) fn init_producer_id_any(self: &Arc<Self>, req: InitProducerIdRequest, ctx: RequestContext) -> Reply {
        let Some(txn_id) = req.transactional_id.as_ref().map(|t| t.0.to_string()).filter(|t| !t.is_empty()) else {
            return Reply::Ready(self.init_producer_id(req, &ctx));
        };
        let expected = (ctx.version >= 3 && req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
        let timeout_ms = req.transaction_timeout_ms;
        let encode = |code: i16, pid: i64, epoch: i16, ctx: &RequestContext| {
            let mut resp = InitProducerIdResponse::default();
            resp.error_code = fenced_code_for_version(code, ctx.version, 4);
            resp.producer_id = ProducerId(if code == errors::NONE { pid } else { -1 });
            resp.producer_epoch = if code == errors::NONE { epoch } else { -1 };
            ctx.encode(&resp)
        };
        let (outcome, persisted) = {
            let mut g = self.txns.inner.lock().unwrap();
            if g.store.is_poisoned() {
                drop(g);
                return Reply::Ready(encode(errors::COORDINATOR_NOT_AVAILABLE, -1, -1, &ctx));
            }
            let o = g.core.init_producer_id(&txn_id, timeout_ms, expected, runtime::now_ms());
            (o, g.persist())
        };
        if let (InitOutcome::Error(code), Persisted::Nothing) = (&outcome, &persisted) {
            return Reply::Ready(encode(*code, -1, -1, &ctx));
        }
        let b = self.clone();
        // Created now, so the abort is finished by the timer even if this reply is never polled.
        let abort = match outcome {
            InitOutcome::AbortFirst(work) => Ok(PendingWork::new(self, work)),
            o => Err(o),
        };
        Reply::Wait(Box::pin(async move {
            let outcome = match abort {
                Ok(pending) => {
                    let work = pending.work.as_ref().expect("unfinished");
                    let (pid, epoch) = (work.producer_id, work.producer_epoch);
                    if b.finish(pending, persisted).await != errors::NONE {
                        return encode(crate::txn::CONCURRENT_TRANSACTIONS, -1, -1, &ctx);
                    }
                    // The client's expected epoch was checked before the abort bumped it.
                    let expected = expected.map(|_| (pid, epoch));
                    let (o, persisted) = {
                        let mut g = b.txns.inner.lock().unwrap();
                        let o = g.core.init_producer_id(&txn_id, timeout_ms, expected, runtime::now_ms());
                        (o, g.persist())
                    };
                    if !b.sync_txn_state(persisted).await {
                        return encode(errors::COORDINATOR_NOT_AVAILABLE, -1, -1, &ctx);
                    }
                    o
                }
                Err(o) => {
                    if !b.sync_txn_state(persisted).await {
                        return encode(errors::COORDINATOR_NOT_AVAILABLE, -1, -1, &ctx);
                    }
                    o
                }
            };
            match outcome {
                InitOutcome::Ready { producer_id, producer_epoch } => {
                    encode(errors::NONE, producer_id, producer_epoch, &ctx)
                }
                InitOutcome::Error(code) => encode(code, -1, -1, &ctx),
                InitOutcome::AbortFirst(_) => encode(crate::txn::CONCURRENT_TRANSACTIONS, -1, -1, &ctx),
            }
        }))
    }

    /// AddPartitionsToTxn (v0-3: one transaction; v4+: a batch, with `verify_only`).
    /// Answers after the added partitions are durable.
    pub(super) fn add_partitions_to_txn(
        self: &Arc<Self>,
        req: AddPartitionsToTxnRequest,
        ctx: RequestContext,
    ) -> Reply {
        let v = ctx.version;
        type Topics = Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic>;
        let txns: Vec<(TransactionalId, i64, i16, bool, Topics)> = if v >= 4 {
            req.transactions
                .into_iter()
                .map(|t| (t.transactional_id, t.producer_id.0, t.producer_epoch, t.verify_only, t.topics))
                .collect()
        } else {
            vec![(
                req.v3_and_below_transactional_id,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                false,
                req.v3_and_below_topics,
            )]
        };
        // Existence first, without the coordinator lock (lock order).
        let exists: Vec<Vec<Vec<bool>>> = txns
            .iter()
            .map(|(_, _, _, _, topics)| {
                topics
                    .iter()
                    .map(|t| t.partitions.iter().map(|&p| self.partition(t.name.0.as_str(), p).is_some()).collect())
                    .collect()
            })
            .collect();
        let now = runtime::now_ms();
        // Per transaction: (id, per topic: (name, per partition: (index, code))).
        type Results = Vec<(TransactionalId, Vec<(TopicName, Vec<(i32, i16)>)>)>;
        let mut results: Results = Vec::new();
        let persisted = {
            let mut g = self.txns.inner.lock().unwrap();
            for ((id, pid, epoch, verify_only, topics), exists) in txns.into_iter().zip(exists) {
                let all_exist = exists.iter().all(|t| t.iter().all(|e| *e));
                let list: Vec<(String, i32)> =
                    topics.iter().flat_map(|t| t.partitions.iter().map(|&p| (t.name.0.to_string(), p))).collect();
                let whole = if !all_exist {
                    None
                } else if g.store.is_poisoned() {
                    Some(errors::COORDINATOR_NOT_AVAILABLE)
                } else if verify_only {
                    None
                } else {
                    Some(g.core.add_partitions(&id.0, pid, epoch, &list, now))
                };
                let per_topic = topics
                    .into_iter()
                    .zip(exists)
                    .map(|(t, ex)| {
                        let codes = t
                            .partitions
                            .iter()
                            .zip(ex)
                            .map(|(&p, e)| {
                                let code = match whole {
                                    Some(c) => c,
                                    None if !all_exist && !e => errors::UNKNOWN_TOPIC_OR_PARTITION,
                                    None if !all_exist => OPERATION_NOT_ATTEMPTED,
                                    None => g.core.verify_partition(&id.0, pid, epoch, &(t.name.0.to_string(), p)),
                                };
                                (p, fenced_code_for_version(code, v, 2))
                            })
                            .collect();
                        (t.name, codes)
                    })
                    .collect();
                results.push((id, per_topic));
            }
            g.persist()
        };
        let encode = move |results: Results, ctx: &RequestContext| {
            let topic_results = |topics: Vec<(TopicName, Vec<(i32, i16)>)>| {
                topics
                    .into_iter()
                    .map(|(name, parts)| {
                        let mut tr = add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default();
                        tr.name = name;
                        tr.results_by_partition = parts
                            .into_iter()
                            .map(|(p, code)| {
                                let mut pr =
                                    add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default();
                                pr.partition_index = p;
                                pr.partition_error_code = code;
                                pr
                            })
                            .collect();
                        tr
                    })
                    .collect::<Vec<_>>()
            };
            let mut resp = AddPartitionsToTxnResponse::default();
            if ctx.version >= 4 {
                resp.results_by_transaction = results
                    .into_iter()
                    .map(|(id, topics)| {
                        let mut r = add_partitions_to_txn_response::AddPartitionsToTxnResult::default();
                        r.transactional_id = id;
                        r.topic_results = topic_results(topics);
                        r
                    })
                    .collect();
            } else {
                resp.results_by_topic_v3_and_below =
                    results.into_iter().next().map(|(_, topics)| topic_results(topics)).unwrap_or_default();
            }
            ctx.encode(&resp)
        };
        if matches!(persisted, Persisted::Nothing) {
            return Reply::Ready(encode(results, &ctx));
        }
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let mut results = results;
            if !b.sync_txn_state(persisted).await {
                fail_accepted(results.iter_mut().flat_map(|(_, t)| t.iter_mut()).flat_map(|(_, p)| p.iter_mut()));
            }
            encode(results, &ctx)
        }))
    }

    /// AddOffsetsToTxn: adds a consumer group to the transaction; answers once durable.
    pub(super) fn add_offsets_to_txn(self: &Arc<Self>, req: AddOffsetsToTxnRequest, ctx: RequestContext) -> Reply {
        let encode = |code: i16, ctx: &RequestContext| {
            let mut resp = AddOffsetsToTxnResponse::default();
            resp.error_code = fenced_code_for_version(code, ctx.version, 2);
            ctx.encode(&resp)
        };
        let (code, persisted) = {
            let mut g = self.txns.inner.lock().unwrap();
            if g.store.is_poisoned() {
                (errors::COORDINATOR_NOT_AVAILABLE, Persisted::Nothing)
            } else {
                let code = g.core.add_offsets(
                    &req.transactional_id.0,
                    req.producer_id.0,
                    req.producer_epoch,
                    &req.group_id.0,
                    runtime::now_ms(),
                );
                (code, g.persist())
            }
        };
        if matches!(persisted, Persisted::Nothing) {
            return Reply::Ready(encode(code, &ctx));
        }
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let ok = b.sync_txn_state(persisted).await;
            encode(if ok { code } else { errors::COORDINATOR_NOT_AVAILABLE }, &ctx)
        }))
    }

    /// EndTxn: makes the decision durable, writes the markers, applies offsets on commit, and
    /// answers once the transaction is complete.
    pub(super) fn end_txn(self: &Arc<Self>, req: EndTxnRequest, ctx: RequestContext) -> Reply {
        let (pid, epoch) = (req.producer_id.0, req.producer_epoch);
        let encode = move |code: i16, ctx: &RequestContext| {
            let mut resp = EndTxnResponse::default();
            resp.error_code = fenced_code_for_version(code, ctx.version, 2);
            if ctx.version >= 5 {
                resp.producer_id = ProducerId(pid);
                resp.producer_epoch = epoch;
            }
            ctx.encode(&resp)
        };
        let (outcome, persisted) = {
            let mut g = self.txns.inner.lock().unwrap();
            if g.store.is_poisoned() {
                (EndOutcome::Done(errors::COORDINATOR_NOT_AVAILABLE), Persisted::Nothing)
            } else {
                let o = g.core.end_txn(&req.transactional_id.0, pid, epoch, req.committed, runtime::now_ms());
                (o, g.persist())
            }
        };
        match outcome {
            EndOutcome::Done(code) => Reply::Ready(encode(code, &ctx)),
            EndOutcome::Markers(work) => {
                let b = self.clone();
                // Created now, so the timer finishes the transaction even if this reply is dropped.
                let pending = PendingWork::new(self, work);
                Reply::Wait(Box::pin(async move {
                    let code = b.finish(pending, persisted).await;
                    encode(code, &ctx)
                }))
            }
        }
    }

    /// TxnOffsetCommit: validates membership (v3+, KIP-447), holds the offsets pending in the
    /// transaction; EndTxn applies them on commit.
    pub(super) fn txn_offset_commit(self: &Arc<Self>, req: TxnOffsetCommitRequest, ctx: &RequestContext) -> Bytes {
        let v = ctx.version;
        let now = runtime::now_ms();
        let group = req.group_id.0.to_string();
        // Old versions carry no membership; new clients that are not in a group send -1/"".
        let membership = if v >= 3 && !req.member_id.is_empty() && req.generation_id >= 0 {
            self.groups.validate_txn_offset_commit(&group, &req.member_id, req.generation_id, now)
        } else {
            errors::NONE
        };
        let mut results: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
        let mut accepted = Vec::new();
        for t in &req.topics {
            let mut parts = Vec::new();
            for p in &t.partitions {
                let code = if membership != errors::NONE {
                    membership
                } else if self.partition(t.name.0.as_str(), p.partition_index).is_none() {
                    errors::UNKNOWN_TOPIC_OR_PARTITION
                } else if p.committed_metadata.as_ref().is_some_and(|m| m.len() > OFFSET_METADATA_MAX_BYTES) {
                    errors::OFFSET_METADATA_TOO_LARGE
                } else {
                    accepted.push((
                        t.name.0.to_string(),
                        p.partition_index,
                        CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: if v >= 2 { p.committed_leader_epoch } else { -1 },
                            metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                            commit_ms: now,
                        },
                    ));
                    errors::NONE
                };
                parts.push((p.partition_index, code));
            }
            results.push((t.name.clone(), parts));
        }
        if !accepted.is_empty() {
            let code = {
                let mut g = self.txns.inner.lock().unwrap();
                if g.store.is_poisoned() {
                    errors::COORDINATOR_NOT_AVAILABLE
                } else {
                    g.core.txn_offset_commit(
                        &req.transactional_id.0,
                        &group,
                        req.producer_id.0,
                        req.producer_epoch,
                        accepted,
                        now,
                    )
                }
            };
            let code = fenced_code_for_version(code, v, 3);
            for (_, parts) in results.iter_mut() {
                for (_, c) in parts.iter_mut() {
                    if *c == errors::NONE {
                        *c = code;
                    }
                }
            }
        }
        let mut resp = TxnOffsetCommitResponse::default();
        resp.topics = results
            .into_iter()
            .map(|(name, parts)| {
                let mut t = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
                t.name = name;
                t.partitions = parts
                    .into_iter()
                    .map(|(partition_index, error_code)| {
                        let mut p = txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                        p.partition_index = partition_index;
                        p.error_code = error_code;
                        p
                    })
                    .collect();
                t
            })
            .collect();
        ctx.encode(&resp)
    }
}

/// Drives transaction timeouts until the broker shuts down: sleeps until the next deadline (at
/// most [`TXN_TIMER_IDLE_POLL_MS`]) and ticks.
pub async fn run_txn_timer(broker: Arc<Broker>) {
    while !broker.is_shutting_down() {
        let now = runtime::now_ms();
        let next = broker.txn_tick(now).await;
        let wait_ms = next.map_or(TXN_TIMER_IDLE_POLL_MS, |d| (d - now).clamp(1, TXN_TIMER_IDLE_POLL_MS));
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
}

/// Marker work not yet finished. Dropping it unfinished (a failed step, or a reply future the
/// connection dropped) queues the work for the timer to retry, so a prepared transaction is
/// never forgotten.
struct PendingWork {
    broker: Arc<Broker>,
    work: Option<MarkerWork>,
}

impl PendingWork {
    fn new(broker: &Arc<Broker>, work: MarkerWork) -> PendingWork {
        PendingWork { broker: broker.clone(), work: Some(work) }
    }
}

impl Drop for PendingWork {
    fn drop(&mut self) {
        if let Some(w) = self.work.take() {
            self.broker.txns.inner.lock().unwrap().retry.push(w);
        }
    }
}

/// Turns every accepted code into COORDINATOR_NOT_AVAILABLE (the change is not durable).
fn fail_accepted<'a>(codes: impl Iterator<Item = &'a mut (i32, i16)>) {
    for (_, code) in codes {
        if *code == errors::NONE {
            *code = errors::COORDINATOR_NOT_AVAILABLE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::build_batch;
    use crate::runtime::MemDisk;
    use kafka_protocol::protocol::StrBytes;

    use super::super::testkit::{call, frame, open_broker};

    fn sb(s: &str) -> StrBytes {
        StrBytes::from_string(s.to_string())
    }

    fn spawn_flusher(b: &Arc<Broker>) -> tokio::task::JoinHandle<()> {
        let b = b.clone();
        tokio::spawn(async move {
            loop {
                b.wait_for_flush_request(5).await;
                b.flush_round(false).await;
            }
        })
    }

    async fn create_topic(b: &Arc<Broker>, name: &str, partitions: i32) {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = sb(name).into();
        t.num_partitions = partitions;
        t.replication_factor = 1;
        let mut r = CreateTopicsRequest::default();
        r.topics = vec![t];
        r.timeout_ms = 1000;
        let resp: CreateTopicsResponse = call(b, ApiKey::CreateTopics, 4, &r).await;
        assert_eq!(resp.topics[0].error_code, errors::NONE);
    }

    /// A transactional batch of `n` records from `pid`/`epoch` starting at sequence `seq`.
    fn txn_batch(pid: i64, epoch: i16, seq: i32, n: usize) -> Bytes {
        let vals: Vec<Vec<u8>> = (0..n).map(|i| format!("v{seq}-{i}").into_bytes()).collect();
        let specs: Vec<_> = vals.iter().map(|v| (None, Some(v.as_slice()), vec![])).collect();
        let mut b = build_batch(&specs, runtime::now_ms(), 0);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn plain_batch() -> Bytes {
        Bytes::from(build_batch(&[(None, Some(&b"plain"[..]), vec![])], runtime::now_ms(), 0))
    }

    async fn init(b: &Arc<Broker>, id: &str, timeout_ms: i32) -> (i64, i16) {
        let mut r = InitProducerIdRequest::default();
        r.transactional_id = Some(sb(id).into());
        r.transaction_timeout_ms = timeout_ms;
        let resp: InitProducerIdResponse = call(b, ApiKey::InitProducerId, 1, &r).await;
        assert_eq!(resp.error_code, errors::NONE);
        (resp.producer_id.0, resp.producer_epoch)
    }

    async fn add_partitions(b: &Arc<Broker>, id: &str, pid: i64, epoch: i16, parts: &[(&str, i32)]) -> Vec<i16> {
        let mut r = AddPartitionsToTxnRequest::default();
        r.v3_and_below_transactional_id = sb(id).into();
        r.v3_and_below_producer_id = ProducerId(pid);
        r.v3_and_below_producer_epoch = epoch;
        r.v3_and_below_topics = parts
            .iter()
            .map(|(t, p)| {
                let mut tt = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
                tt.name = sb(t).into();
                tt.partitions = vec![*p];
                tt
            })
            .collect();
        let resp: AddPartitionsToTxnResponse = call(b, ApiKey::AddPartitionsToTxn, 0, &r).await;
        resp.results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
            .collect()
    }

    async fn end_txn(b: &Arc<Broker>, id: &str, pid: i64, epoch: i16, commit: bool, version: i16) -> i16 {
        let mut r = EndTxnRequest::default();
        r.transactional_id = sb(id).into();
        r.producer_id = ProducerId(pid);
        r.producer_epoch = epoch;
        r.committed = commit;
        let resp: EndTxnResponse = call(b, ApiKey::EndTxn, version, &r).await;
        resp.error_code
    }

    async fn produce(b: &Arc<Broker>, txn_id: Option<&str>, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(records);
        let mut td = produce_request::TopicProduceData::default();
        td.name = sb(topic).into();
        td.partition_data = vec![pd];
        let mut r = ProduceRequest::default();
        r.transactional_id = txn_id.map(|t| sb(t).into());
        r.acks = -1;
        r.timeout_ms = 5000;
        r.topic_data = vec![td];
        let resp: ProduceResponse = call(b, ApiKey::Produce, 3, &r).await;
        let p = &resp.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }

    /// (high watermark, last stable offset, aborted (pid, first offset), record bytes).
    async fn fetch(
        b: &Arc<Broker>,
        topic: &str,
        partition: i32,
        read_committed: bool,
    ) -> (i64, i64, Vec<(i64, i64)>, Bytes) {
        let mut fp = fetch_request::FetchPartition::default();
        fp.partition = partition;
        fp.fetch_offset = 0;
        fp.partition_max_bytes = 1 << 20;
        let mut ft = fetch_request::FetchTopic::default();
        ft.topic = sb(topic).into();
        ft.partitions = vec![fp];
        let mut r = FetchRequest::default();
        r.max_wait_ms = 0;
        r.max_bytes = 8 << 20;
        r.isolation_level = read_committed as i8;
        r.topics = vec![ft];
        let resp: FetchResponse = call(b, ApiKey::Fetch, 11, &r).await;
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, errors::NONE);
        let aborted = p
            .aborted_transactions
            .as_ref()
            .map(|a| a.iter().map(|a| (a.producer_id.0, a.first_offset)).collect())
            .unwrap_or_default();
        (p.high_watermark, p.last_stable_offset, aborted, p.records.clone().unwrap_or_default())
    }

    /// Headers of every batch in `records`.
    fn batches(records: &[u8]) -> Vec<BatchHeader> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let h = BatchHeader::parse(&records[pos..]).unwrap();
            assert!(crate::protocol::batch::crc_ok(&records[pos..pos + h.total_len()]));
            pos += h.total_len();
            out.push(h);
        }
        out
    }

    async fn offset_fetch(b: &Arc<Broker>, group: &str, topic: &str, partition: i32) -> i64 {
        let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
        t.name = sb(topic).into();
        t.partition_indexes = vec![partition];
        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = sb(group).into();
        g.topics = Some(vec![t]);
        let mut r = OffsetFetchRequest::default();
        r.groups = vec![g];
        let resp: OffsetFetchResponse = call(b, ApiKey::OffsetFetch, 8, &r).await;
        resp.groups[0].topics[0].partitions[0].committed_offset
    }

    async fn add_offsets(b: &Arc<Broker>, id: &str, pid: i64, epoch: i16, group: &str) -> i16 {
        let mut r = AddOffsetsToTxnRequest::default();
        r.transactional_id = sb(id).into();
        r.producer_id = ProducerId(pid);
        r.producer_epoch = epoch;
        r.group_id = sb(group).into();
        let resp: AddOffsetsToTxnResponse = call(b, ApiKey::AddOffsetsToTxn, 0, &r).await;
        resp.error_code
    }

    async fn txn_commit_offset(b: &Arc<Broker>, id: &str, pid: i64, epoch: i16, group: &str, offset: i64) -> i16 {
        let mut p = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
        p.partition_index = 0;
        p.committed_offset = offset;
        let mut t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
        t.name = sb("t").into();
        t.partitions = vec![p];
        let mut r = TxnOffsetCommitRequest::default();
        r.transactional_id = sb(id).into();
        r.group_id = sb(group).into();
        r.producer_id = ProducerId(pid);
        r.producer_epoch = epoch;
        r.topics = vec![t];
        let resp: TxnOffsetCommitResponse = call(b, ApiKey::TxnOffsetCommit, 0, &r).await;
        resp.topics[0].partitions[0].error_code
    }

    #[tokio::test]
    async fn commit_and_abort_through_the_broker() {
        // Proves the librdkafka path (InitProducerId v1, AddPartitionsToTxn v0, EndTxn v1, Produce
        // v3): read_committed fetches stop at the LSO while a transaction is open, see committed
        // data after COMMIT markers, get aborted_transactions for aborted data, and ListOffsets
        // read_committed answers the LSO. FindCoordinator for transactions names this node.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 2).await;
        let mut fc = FindCoordinatorRequest::default();
        fc.key_type = 1;
        fc.key = sb("tx");
        let r: FindCoordinatorResponse = call(&b, ApiKey::FindCoordinator, 1, &fc).await;
        assert_eq!((r.error_code, r.node_id.0), (errors::NONE, 7));

        let (pid, ep) = init(&b, "tx", 60_000).await;
        assert_eq!(add_partitions(&b, "tx", pid, ep, &[("t", 0), ("t", 1)]).await, vec![0, 0]);
        assert_eq!(
            add_partitions(&b, "tx", pid, ep, &[("t", 0), ("nope", 0)]).await,
            vec![OPERATION_NOT_ATTEMPTED, errors::UNKNOWN_TOPIC_OR_PARTITION]
        );
        assert_eq!(produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 0, 2)).await, (errors::NONE, 0));
        assert_eq!(produce(&b, None, "t", 0, plain_batch()).await, (errors::NONE, 2));
        let (hw, lso, aborted, recs) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted.len(), recs.len()), (3, 0, 0, 0));
        let (_, lso, _, recs) = fetch(&b, "t", 0, false).await;
        assert_eq!(lso, 0);
        assert_eq!(batches(&recs).len(), 2);

        assert_eq!(end_txn(&b, "tx", pid, ep, true, 1).await, errors::NONE);
        let (hw, lso, aborted, recs) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso), (4, 4));
        assert!(aborted.is_empty());
        let hs = batches(&recs);
        assert_eq!(hs.len(), 3);
        assert!(hs[2].is_control() && hs[2].is_transactional());
        assert!(crate::txn::parse_control_batch(&recs[hs[0].total_len() + hs[1].total_len()..]).unwrap().commit);
        let (hw, lso, _, _) = fetch(&b, "t", 1, true).await;
        assert_eq!((hw, lso), (1, 1), "an added partition without data gets a marker too");
        assert_eq!(end_txn(&b, "tx", pid, ep, true, 1).await, errors::NONE, "EndTxn retry");

        // An aborted transaction is reported to read_committed fetches.
        assert_eq!(add_partitions(&b, "tx", pid, ep, &[("t", 0)]).await, vec![0]);
        assert_eq!(produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 2, 3)).await, (errors::NONE, 4));
        let mut lo = list_offsets_request::ListOffsetsPartition::default();
        lo.partition_index = 0;
        lo.timestamp = -1;
        let mut lt = list_offsets_request::ListOffsetsTopic::default();
        lt.name = sb("t").into();
        lt.partitions = vec![lo];
        let mut l = ListOffsetsRequest::default();
        l.isolation_level = 1;
        l.topics = vec![lt];
        let r: ListOffsetsResponse = call(&b, ApiKey::ListOffsets, 2, &l).await;
        assert_eq!(r.topics[0].partitions[0].offset, 4);
        assert_eq!(end_txn(&b, "tx", pid, ep, false, 1).await, errors::NONE);
        let (hw, lso, aborted, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted), (8, 8, vec![(pid, 4)]));
        let r: ListOffsetsResponse = call(&b, ApiKey::ListOffsets, 2, &l).await;
        assert_eq!(r.topics[0].partitions[0].offset, 8);
        flusher.abort();
    }

    #[tokio::test]
    async fn produce_guard_refuses_late_and_fenced_batches() {
        // Proves the server-side guard: a transactional batch is refused for a partition not in
        // the current transaction (before AddPartitionsToTxn, and after EndTxn — the late-produce
        // anomaly), for another transactional id, for a fenced epoch, and without a
        // transactional id; and fenced EndTxn maps to INVALID_PRODUCER_EPOCH before v2.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 1).await;
        let (pid, ep) = init(&b, "tx", 60_000).await;
        let (code, _) = produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 0, 1)).await;
        assert_eq!(code, crate::txn::INVALID_TXN_STATE);
        assert_eq!(add_partitions(&b, "tx", pid, ep, &[("t", 0)]).await, vec![0]);
        let (code, _) = produce(&b, Some("other"), "t", 0, txn_batch(pid, ep, 0, 1)).await;
        assert_eq!(code, crate::txn::INVALID_PRODUCER_ID_MAPPING);
        let (code, _) = produce(&b, None, "t", 0, txn_batch(pid, ep, 0, 1)).await;
        assert_eq!(code, errors::INVALID_RECORD);
        let (code, _) = produce(&b, Some("tx"), "t", 0, plain_batch()).await;
        assert_eq!(code, errors::INVALID_RECORD);
        assert_eq!(produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 0, 1)).await, (errors::NONE, 0));
        assert_eq!(end_txn(&b, "tx", pid, ep, true, 1).await, errors::NONE);
        let (code, _) = produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 1, 1)).await;
        assert_eq!(code, crate::txn::INVALID_TXN_STATE, "a produce after EndTxn must not open a new transaction");
        let (hw, lso, _, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso), (2, 2));

        let (pid2, ep2) = init(&b, "tx", 60_000).await;
        assert_eq!((pid2, ep2), (pid, ep + 1));
        assert_eq!(add_partitions(&b, "tx", pid, ep, &[("t", 0)]).await, vec![errors::INVALID_PRODUCER_EPOCH]);
        assert_eq!(add_partitions(&b, "tx", pid, ep2, &[("t", 0)]).await, vec![0]);
        let (code, _) = produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 2, 1)).await;
        assert_eq!(code, errors::INVALID_PRODUCER_EPOCH);
        assert_eq!(end_txn(&b, "tx", pid, ep, true, 1).await, errors::INVALID_PRODUCER_EPOCH);
        assert_eq!(end_txn(&b, "tx", pid, ep, true, 3).await, crate::txn::PRODUCER_FENCED);
        assert_eq!(end_txn(&b, "tx", pid, ep2, true, 3).await, errors::NONE);
        flusher.abort();
    }

    #[tokio::test]
    async fn txn_offsets_apply_only_on_commit() {
        // Proves TxnOffsetCommit offsets stay pending (invisible to OffsetFetch) until EndTxn
        // commits them, are dropped on abort, and need AddOffsetsToTxn first.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 1).await;
        let (pid, ep) = init(&b, "tx", 60_000).await;
        assert_eq!(txn_commit_offset(&b, "tx", pid, ep, "g", 42).await, crate::txn::INVALID_TXN_STATE);
        assert_eq!(add_offsets(&b, "tx", pid, ep, "g").await, errors::NONE);
        assert_eq!(txn_commit_offset(&b, "tx", pid, ep, "g", 42).await, errors::NONE);
        assert_eq!(offset_fetch(&b, "g", "t", 0).await, -1);
        assert_eq!(end_txn(&b, "tx", pid, ep, true, 0).await, errors::NONE);
        assert_eq!(offset_fetch(&b, "g", "t", 0).await, 42);

        assert_eq!(add_offsets(&b, "tx", pid, ep, "g").await, errors::NONE);
        assert_eq!(txn_commit_offset(&b, "tx", pid, ep, "g", 99).await, errors::NONE);
        assert_eq!(end_txn(&b, "tx", pid, ep, false, 0).await, errors::NONE);
        assert_eq!(offset_fetch(&b, "g", "t", 0).await, 42);
        assert_eq!(txn_commit_offset(&b, "tx", pid, ep + 1, "g", 1).await, errors::INVALID_PRODUCER_EPOCH);
        flusher.abort();

        // Committed transactional offsets survive a crash.
        drop(b);
        disk.crash(|_, _| 0);
        let b = open_broker(&disk);
        assert_eq!(offset_fetch(&b, "g", "t", 0).await, 42);
    }

    #[tokio::test]
    async fn restart_aborts_ongoing_and_fences_the_producer() {
        // Proves a crash with a transaction open leaves it aborted after restart (abort marker,
        // aborted index rebuilt from the log, LSO = HW), the old producer fenced, producer ids
        // and epochs remembered; and that a dangling transaction no coordinator state covers
        // (its state file lost) is aborted too.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 1).await;
        let (pid, ep) = init(&b, "tx", 60_000).await;
        assert_eq!(add_partitions(&b, "tx", pid, ep, &[("t", 0)]).await, vec![0]);
        assert_eq!(produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 0, 2)).await, (errors::NONE, 0));
        flusher.abort();
        drop(b);
        disk.crash(|_, _| 0);

        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        let (hw, lso, aborted, recs) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted), (3, 3, vec![(pid, 0)]));
        let hs = batches(&recs);
        assert!(hs.last().unwrap().is_control());
        assert_eq!(end_txn(&b, "tx", pid, ep, true, 1).await, errors::INVALID_PRODUCER_EPOCH);
        let (pid2, ep2) = init(&b, "tx", 60_000).await;
        assert_eq!((pid2, ep2), (pid, ep + 2), "restart abort bumped the epoch, re-init bumps again");
        // A second restart rebuilds the same aborted index from the log.
        flusher.abort();
        drop(b);
        disk.crash(|_, _| 0);
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        let (_, lso, aborted, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((lso, aborted), (3, vec![(pid, 0)]));

        // Dangling: data of an open transaction whose coordinator state is gone.
        assert_eq!(add_partitions(&b, "tx", pid, ep2, &[("t", 0)]).await, vec![0]);
        assert_eq!(produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep2, 0, 1)).await, (errors::NONE, 3));
        flusher.abort();
        drop(b);
        disk.crash(|_, _| 0);
        disk.remove_file(&Path::new("/data").join(TXN_STATE_DIR).join("txn-state.log")).unwrap();
        let b = open_broker(&disk);
        let (hw, lso, aborted, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted), (5, 5, vec![(pid, 0), (pid, 3)]));
    }

    #[tokio::test]
    async fn timeout_and_dropped_replies_still_finish_transactions() {
        // Proves the timer aborts a transaction past transaction.timeout.ms (fencing its
        // producer), and an EndTxn whose reply future is dropped unpolled is finished by the
        // timer rather than left prepared.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 1).await;
        let (pid, ep) = init(&b, "slow", 1000).await;
        assert_eq!(add_partitions(&b, "slow", pid, ep, &[("t", 0)]).await, vec![0]);
        assert_eq!(produce(&b, Some("slow"), "t", 0, txn_batch(pid, ep, 0, 1)).await, (errors::NONE, 0));
        let now = runtime::now_ms();
        let next = b.txn_tick(now).await.expect("a deadline");
        assert!(next <= now + 1000);
        b.txn_tick(now + 1001).await;
        let (hw, lso, aborted, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted), (2, 2, vec![(pid, 0)]));
        assert_eq!(end_txn(&b, "slow", pid, ep, true, 1).await, errors::INVALID_PRODUCER_EPOCH);

        let (pid, ep) = init(&b, "quick", 60_000).await;
        assert_eq!(add_partitions(&b, "quick", pid, ep, &[("t", 0)]).await, vec![0]);
        assert_eq!(produce(&b, Some("quick"), "t", 0, txn_batch(pid, ep, 0, 1)).await, (errors::NONE, 2));
        let mut r = EndTxnRequest::default();
        r.transactional_id = sb("quick").into();
        r.producer_id = ProducerId(pid);
        r.producer_epoch = ep;
        r.committed = true;
        let Reply::Wait(fut) = b.handle(frame(ApiKey::EndTxn, 1, &r)) else { panic!("EndTxn should wait") };
        drop(fut);
        assert_eq!(end_txn(&b, "quick", pid, ep, true, 1).await, crate::txn::CONCURRENT_TRANSACTIONS);
        b.txn_tick(runtime::now_ms()).await;
        assert_eq!(end_txn(&b, "quick", pid, ep, true, 1).await, errors::NONE);
        let (hw, lso, aborted, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted.len()), (4, 4, 1));
        flusher.abort();
    }

    #[tokio::test]
    async fn reinit_during_a_transaction_aborts_it_first() {
        // Proves InitProducerId for an id with an open transaction aborts that transaction (ABORT
        // marker, aborted index) and answers with an epoch that fences the old producer.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 1).await;
        let (pid, ep) = init(&b, "tx", 60_000).await;
        assert_eq!(add_partitions(&b, "tx", pid, ep, &[("t", 0)]).await, vec![0]);
        assert_eq!(produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 0, 1)).await, (errors::NONE, 0));
        let (pid2, ep2) = init(&b, "tx", 60_000).await;
        assert_eq!((pid2, ep2), (pid, ep + 2));
        let (hw, lso, aborted, _) = fetch(&b, "t", 0, true).await;
        assert_eq!((hw, lso, aborted), (2, 2, vec![(pid, 0)]));
        let (code, _) = produce(&b, Some("tx"), "t", 0, txn_batch(pid, ep, 1, 1)).await;
        assert_eq!(code, errors::INVALID_PRODUCER_EPOCH);
        flusher.abort();
    }

    #[tokio::test]
    async fn every_served_version_encodes() {
        // Proves each transaction API answers every version we serve with a frame that decodes
        // (v4+ AddPartitionsToTxn in its batched form, v5 EndTxn with producer fields).
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let flusher = spawn_flusher(&b);
        create_topic(&b, "t", 1).await;
        for v in 0..=5i16 {
            let id = format!("tx{v}");
            let mut r = InitProducerIdRequest::default();
            r.transactional_id = Some(sb(&id).into());
            r.transaction_timeout_ms = 60_000;
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
            let resp: InitProducerIdResponse = call(&b, ApiKey::InitProducerId, v, &r).await;
            assert_eq!(resp.error_code, errors::NONE, "InitProducerId v{v}");
            let (pid, ep) = (resp.producer_id.0, resp.producer_epoch);
            let mut tt = add_partitions_to_txn_request::AddPartitionsToTxnTopic::default();
            tt.name = sb("t").into();
            tt.partitions = vec![0];
            let mut a = AddPartitionsToTxnRequest::default();
            if v >= 4 {
                let mut tx = add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default();
                tx.transactional_id = sb(&id).into();
                tx.producer_id = ProducerId(pid);
                tx.producer_epoch = ep;
                tx.topics = vec![tt.clone()];
                let mut verify = tx.clone();
                verify.transactional_id = sb("tx0").into();
                verify.verify_only = true;
                a.transactions = vec![tx, verify];
            } else {
                a.v3_and_below_transactional_id = sb(&id).into();
                a.v3_and_below_producer_id = ProducerId(pid);
                a.v3_and_below_producer_epoch = ep;
                a.v3_and_below_topics = vec![tt];
            }
            let resp: AddPartitionsToTxnResponse = call(&b, ApiKey::AddPartitionsToTxn, v, &a).await;
            if v >= 4 {
                assert_eq!(resp.results_by_transaction.len(), 2);
                assert_eq!(
                    resp.results_by_transaction[0].topic_results[0].results_by_partition[0].partition_error_code,
                    0
                );
                // tx0's producer id is not this one: the verification fails.
                assert_ne!(
                    resp.results_by_transaction[1].topic_results[0].results_by_partition[0].partition_error_code,
                    0
                );
            } else {
                assert_eq!(resp.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0);
            }
            if v <= 4 {
                let mut o = AddOffsetsToTxnRequest::default();
                o.transactional_id = sb(&id).into();
                o.producer_id = ProducerId(pid);
                o.producer_epoch = ep;
                o.group_id = sb("g").into();
                let resp: AddOffsetsToTxnResponse = call(&b, ApiKey::AddOffsetsToTxn, v, &o).await;
                assert_eq!(resp.error_code, errors::NONE, "AddOffsetsToTxn v{v}");
            } else {
                assert_eq!(add_offsets(&b, &id, pid, ep, "g").await, errors::NONE);
            }
            let mut p = txn_offset_commit_request::TxnOffsetCommitRequestPartition::default();
            p.committed_offset = 5;
            p.committed_metadata = Some(sb("m"));
            let mut t = txn_offset_commit_request::TxnOffsetCommitRequestTopic::default();
            t.name = sb("t").into();
            t.partitions = vec![p];
            let mut c = TxnOffsetCommitRequest::default();
            c.transactional_id = sb(&id).into();
            c.group_id = sb("g").into();
            c.producer_id = ProducerId(pid);
            c.producer_epoch = ep;
            c.generation_id = -1;
            c.topics = vec![t];
            let resp: TxnOffsetCommitResponse = call(&b, ApiKey::TxnOffsetCommit, v, &c).await;
            assert_eq!(resp.topics[0].partitions[0].error_code, errors::NONE, "TxnOffsetCommit v{v}");
            let mut e = EndTxnRequest::default();
            e.transactional_id = sb(&id).into();
            e.producer_id = ProducerId(pid);
            e.producer_epoch = ep;
            e.committed = true;
            let resp: EndTxnResponse = call(&b, ApiKey::EndTxn, v, &e).await;
            assert_eq!(resp.error_code, errors::NONE, "EndTxn v{v}");
            if v >= 5 {
                assert_eq!((resp.producer_id.0, resp.producer_epoch), (pid, ep));
            }
        }
        assert_eq!(offset_fetch(&b, "g", "t", 0).await, 5);
        let resp: ApiVersionsResponse = call(&b, ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
        for (key, max) in [(24i16, 5i16), (25, 4), (26, 5), (28, 5), (22, 5)] {
            let a = resp.api_keys.iter().find(|a| a.api_key == key).unwrap();
            assert_eq!((a.min_version, a.max_version), (0, max), "api {key}");
        }
        flusher.abort();
    }
}
