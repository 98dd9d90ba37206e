//! The data path: Produce, Fetch, ListOffsets, OffsetForLeaderEpoch, DeleteRecords and
//! InitProducerId.
//!
//! Produce validates each batch (CRC, sizes, counts, timestamps) before it touches the log,
//! assigns offsets by patching batch headers in place, and serves Fetch from stored batches
//! without re-encoding records.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{Broker, Partition, Reply, RequestContext, Role, SequenceCheck};
use crate::limits;
use crate::log::LogError;
use crate::protocol::batch::{self, ValidateOptions};
use crate::protocol::errors;
use crate::replication::FollowerFetch;
use crate::runtime;

/// The leader epoch of every partition on a single node.
pub const SINGLE_NODE_LEADER_EPOCH: i32 = 0;

/// One pass over a fetch request, with the side effects the caller must publish.
struct FetchPass {
    resp: FetchResponse,
    bytes: usize,
    errored: bool,
    hw_moved: Vec<(Arc<Partition>, i64)>,
    isr_proposals: Vec<(Arc<Partition>, Vec<i32>)>,
}

/// What an acknowledged produce waits for.
#[derive(Clone, Copy)]
pub(super) enum AckWait {
    /// Single node: the local fsync covering offsets below this.
    Fsync(i64),
    /// Cluster leader: the high watermark reaching `upto` (every ISR member fsynced it).
    /// The leader epoch of the append is kept: a leader that lost and regained leadership in
    /// the meantime may have truncated the record and refilled its offsets with others, so a
    /// high watermark of a later epoch proves nothing about it.
    HighWatermark { upto: i64, min_insync_replicas: i32, leader_epoch: i32 },
}

impl AckWait {
    /// The leader epoch an acks=all wait is bound to (cluster leaders only).
    pub(super) fn leader_epoch(&self) -> Option<i32> {
        match self {
            AckWait::HighWatermark { leader_epoch, .. } => Some(*leader_epoch),
            AckWait::Fsync(_) => None,
        }
    }
}

struct ProducePart {
    index: i32,
    records: Option<Bytes>,
}

pub(super) struct PartitionOutcome {
    index: i32,
    pub(super) error_code: i16,
    error_message: Option<String>,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
    /// Wait for this before answering.
    pub(super) wait_durable: Option<(Arc<Partition>, AckWait)>,
}

impl PartitionOutcome {
    fn error(index: i32, code: i16, msg: impl Into<String>) -> Self {
        PartitionOutcome {
            index,
            error_code: code,
            error_message: Some(msg.into()),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            wait_durable: None,
        }
    }
}

fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::OffsetOutOfRange { .. } => errors::OFFSET_OUT_OF_RANGE,
        _ => errors::KAFKA_STORAGE_ERROR,
    }
}

impl Broker {
    pub(super) fn produce(self: &Arc<Self>, req: ProduceRequest, ctx: RequestContext) -> Reply {
        let acks = req.acks;
        let now = runtime::now_ms();
        let mut topics_out: Vec<(StrBytes, Vec<PartitionOutcome>)> = Vec::new();
        let mut appended_any = false;
        let transactional_id = req.transactional_id.as_ref().map(|t| t.0.to_string()).filter(|t| !t.is_empty());
        let timeout_ms = req.timeout_ms.clamp(1, 300_000) as u64;
        // Take the records out and drop everything else in the request first: the last
        // reference to the frame's buffer then lets `append` patch offsets without a copy.
        let work: Vec<(String, Vec<ProducePart>)> = req
            .topic_data
            .into_iter()
            .map(|td| {
                (
                    td.name.0.to_string(),
                    td.partition_data
                        .into_iter()
                        .map(|pd| ProducePart { index: pd.index, records: pd.records })
                        .collect(),
                )
            })
            .collect();
        for (name, partitions) in work {
            let topic = self.topic(&name);
            let name = StrBytes::from_string(name);
            let mut outs = Vec::new();
            for pd in partitions {
                let out = match (&topic, acks) {
                    (_, a) if !matches!(a, -1..=1) => PartitionOutcome::error(
                        pd.index,
                        errors::INVALID_REQUIRED_ACKS,
                        format!("acks={a} is not -1, 0 or 1"),
                    ),
                    (None, _) => PartitionOutcome::error(pd.index, errors::UNKNOWN_TOPIC_OR_PARTITION, "unknown topic"),
                    (Some(t), _) => match t.partitions.get(&pd.index) {
                        None => {
                            PartitionOutcome::error(pd.index, errors::UNKNOWN_TOPIC_OR_PARTITION, "unknown partition")
                        }
                        Some(p) => {
                            let out = self.append(
                                t,
                                p,
                                pd.records.unwrap_or_default(),
                                acks,
                                now,
                                transactional_id.as_deref(),
                            );
                            appended_any |= out.error_code == errors::NONE;
                            let mut out = PartitionOutcome { index: pd.index, ..out };
                            if out.error_code == errors::NONE && acks == 0 {
                                out.wait_durable = None;
                            }
                            out
                        }
                    },
                };
                outs.push(out);
            }
            topics_out.push((name, outs));
        }
        if appended_any {
            self.appended.send_modify(|v| *v += 1);
            if self.cluster.is_some() {
                self.flush_wanted.notify_one();
            }
        }
        if acks == 0 {
            return Reply::Nothing;
        }
        let waits: Vec<(Arc<Partition>, AckWait)> =
            topics_out.iter().flat_map(|(_, o)| o.iter().filter_map(|p| p.wait_durable.clone())).collect();
        if waits.is_empty() {
            return Reply::Ready(ctx.encode(&build_produce_response(topics_out)));
        }
        self.flush_wanted.notify_one();
        Reply::Wait(Box::pin(async move {
            let mut failed: Vec<(String, i32, i16)> = Vec::new();
            for (p, wait) in waits {
                let ok = tokio::time::timeout(Duration::from_millis(timeout_ms), wait_for_ack(&p, wait))
                    .await
                    .unwrap_or(errors::REQUEST_TIMED_OUT);
                if ok != errors::NONE {
                    failed.push((p.topic.clone(), p.index, ok));
                }
            }
            for (t, outs) in topics_out.iter_mut() {
                for o in outs.iter_mut() {
                    if let Some((_, code)) =
                        failed.iter().find(|(ft, fi, _)| ft == t.as_str() && *fi == o.index).map(|f| (f, f.2))
                    {
                        o.error_code = code;
                        o.error_message = Some(match code {
                            errors::REQUEST_TIMED_OUT => "timed out waiting for the in-sync replicas to fsync".into(),
                            errors::KAFKA_STORAGE_ERROR => {
                                "log directory failed (fsync error); the record may not be durable".into()
                            }
                            errors::NOT_LEADER_OR_FOLLOWER => "leadership moved before the record was committed".into(),
                            _ => "not enough in-sync replicas".into(),
                        });
                        o.base_offset = -1;
                    }
                }
            }
            ctx.encode(&build_produce_response(topics_out))
        }))
    }

    pub(super) fn append(
        &self,
        topic: &super::Topic,
        p: &Arc<Partition>,
        records: Bytes,
        acks: i16,
        now: i64,
        transactional_id: Option<&str>,
    ) -> PartitionOutcome {
        let tc = &topic.config;
        let opts = ValidateOptions {
            max_message_bytes: tc.max_message_bytes(),
            require_keys: tc.compacted(),
            now_ms: now,
            log_append_time: tc.log_append_time(),
            timestamp_before_max_ms: tc.timestamp_before_max_ms(),
            timestamp_after_max_ms: tc.timestamp_after_max_ms(),
        };
        let headers = match batch::validate_produce(&records, &opts) {
            Ok(h) => h,
            Err(e) => return PartitionOutcome::error(p.index, e.code, e.message),
        };
        if p.poisoned.load(Ordering::Acquire) {
            return PartitionOutcome::error(
                p.index,
                errors::KAFKA_STORAGE_ERROR,
                "partition log failed an fsync; restart the broker",
            );
        }
        let mut st = p.state.lock().unwrap();
        let Some(leader_epoch) = st.leading_epoch() else {
            return PartitionOutcome::error(
                p.index,
                errors::NOT_LEADER_OR_FOLLOWER,
                "this broker does not lead the partition",
            );
        };
        if let (Role::Leader(l), -1) = (&st.role, acks) {
            if let Some(code) = l.acks_all_admit(tc.min_insync_replicas()).error_code() {
                return PartitionOutcome::error(
                    p.index,
                    code,
                    format!(
                        "in-sync replicas {:?} are fewer than min.insync.replicas={}",
                        l.isr(),
                        tc.min_insync_replicas()
                    ),
                );
            }
        }
        if let Err((code, msg)) = self.txn_check_produce(&p.topic, p.index, transactional_id, &headers) {
            return PartitionOutcome::error(p.index, code, msg);
        }
        // Idempotence: one producer id per request in practice; check every batch first.
        let idem = headers.first().filter(|h| h.producer_id >= 0).map(|h| {
            (
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.base_sequence.wrapping_add(headers.iter().map(|x| x.records_count).sum::<i32>() - 1),
            )
        });
        if let Some((pid, epoch, first, last)) = idem {
            match st.producers.check(pid, epoch, first, last) {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate(base) => {
                    return PartitionOutcome {
                        index: p.index,
                        error_code: errors::NONE,
                        error_message: None,
                        base_offset: base,
                        log_append_time_ms: -1,
                        log_start_offset: st.log.log_start_offset(),
                        wait_durable: if acks == -1 {
                            let leo = st.log.log_end_offset();
                            st.sync_wanted_upto = st.sync_wanted_upto.max(leo);
                            let min_isr = tc.min_insync_replicas();
                            Some((p.clone(), ack_wait_for(&st.role, leo, min_isr)))
                        } else {
                            None
                        },
                    };
                }
                SequenceCheck::Reject(code) => {
                    return PartitionOutcome::error(
                        p.index,
                        code,
                        format!("sequence {first} from producer {pid} epoch {epoch} refused"),
                    );
                }
            }
        }
        let mut buf = match records.try_into_mut() {
            Ok(unique) => unique,
            Err(shared) => bytes::BytesMut::from(&shared[..]),
        };
        let info = match st.log.append(&mut buf, &headers, leader_epoch, now, opts.log_append_time) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "append failed");
                return PartitionOutcome::error(p.index, log_error_code(&e), e.to_string());
            }
        };
        if let Some((pid, epoch, first, last)) = idem {
            st.producers.record(pid, epoch, first, last, info.base_offset);
        }
        super::txn::txn_on_append(&mut st, &headers, info.base_offset);
        let leo = st.log.log_end_offset();
        if let Role::Leader(l) = &mut st.role {
            l.on_leader_append(leo);
        }
        let count = info.last_offset - info.base_offset + 1;
        st.unflushed_records += count;
        if st.first_unflushed_ms < 0 {
            st.first_unflushed_ms = now;
        }
        p.dirty.store(true, Ordering::Release);
        // A cluster leader's high watermark waits for its own fsync too, so ask the flusher
        // for one after every append (group commit keeps it cheap) even when this reply does
        // not wait for it: otherwise acks=1 records would stay invisible to consumers until
        // the next timed flush.
        if matches!(st.role, Role::Leader(_)) {
            st.sync_wanted_upto = st.sync_wanted_upto.max(info.last_offset + 1);
        }
        let must_sync = acks == -1 || st.unflushed_records >= tc.flush_messages();
        if must_sync {
            st.sync_wanted_upto = st.sync_wanted_upto.max(info.last_offset + 1);
        }
        PartitionOutcome {
            index: p.index,
            error_code: errors::NONE,
            error_message: None,
            base_offset: info.base_offset,
            log_append_time_ms: info.log_append_time_ms,
            log_start_offset: st.log.log_start_offset(),
            wait_durable: must_sync
                .then(|| (p.clone(), ack_wait_for(&st.role, info.last_offset + 1, tc.min_insync_replicas()))),
        }
    }

    /// Publishes high-watermark moves and sends ISR expansions found by a fetch pass.
    fn after_fetch_pass(self: &Arc<Self>, pass: &mut FetchPass) {
        let moved = !pass.hw_moved.is_empty();
        for (p, hw) in pass.hw_moved.drain(..) {
            p.publish_hw(hw);
        }
        if moved {
            self.appended.send_modify(|v| *v += 1);
        }
        for (p, isr) in pass.isr_proposals.drain(..) {
            self.propose_isr(p, isr);
        }
    }

    pub(super) fn fetch(self: &Arc<Self>, req: FetchRequest, ctx: RequestContext) -> Reply {
        let max_wait_ms = (req.max_wait_ms as i64).clamp(0, limits::FETCH_MAX_WAIT_MS_MAX);
        let min_bytes = req.min_bytes.max(0) as usize;
        let mut rx = self.appended.subscribe();
        let mut pass = self.fetch_once(&req, ctx.version);
        self.after_fetch_pass(&mut pass);
        let FetchPass { resp, bytes, errored, .. } = pass;
        if bytes >= min_bytes.max(1) || max_wait_ms == 0 || errored || self.is_shutting_down() {
            let permit = self.hold_fetch_memory(bytes);
            return Reply::Held(ctx.encode(&resp), permit);
        }
        let broker = self.clone();
        Reply::Wait(Box::pin(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(max_wait_ms as u64);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let changed = tokio::time::timeout(left, rx.changed()).await;
                let mut pass = broker.fetch_once(&req, ctx.version);
                broker.after_fetch_pass(&mut pass);
                let FetchPass { resp, bytes, errored, .. } = pass;
                if bytes >= min_bytes.max(1) || errored || !matches!(changed, Ok(Ok(()))) || broker.is_shutting_down() {
                    // The frame is written as soon as this future returns (a waiting reply is
                    // always at the head of its connection's queue), so the permit is held for
                    // the encode and dropped just before the write.
                    let _permit = broker.hold_fetch_memory(bytes);
                    return ctx.encode(&resp);
                }
            }
        }))
    }

    /// Accounts `bytes` of fetched records against `FETCH_PENDING_BYTES_MAX` until the returned
    /// permit is dropped (after the response is written).
    fn hold_fetch_memory(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024) as u32;
        self.fetch_memory.clone().try_acquire_many_owned(kib).ok()
    }

    /// Bytes of fetch responses that may be built now without exceeding the pending-fetch
    /// memory limit.
    fn fetch_memory_available(&self) -> usize {
        self.fetch_memory.available_permits().saturating_mul(1024)
    }

    /// One pass over the requested partitions. Returns the response, the record bytes in it,
    /// and whether any partition carries an error (which answers immediately, as in Kafka).
    fn fetch_once(&self, req: &FetchRequest, version: i16) -> FetchPass {
        let replica_id = if version >= 15 { req.replica_state.replica_id.0 } else { req.replica_id.0 };
        let now = runtime::now_ms();
        let mut hw_moved = Vec::new();
        let mut isr_proposals = Vec::new();
        let response_max = if version >= 3 { req.max_bytes.max(0) as usize } else { limits::FETCH_RESPONSE_MAX_BYTES };
        let response_max = response_max.min(limits::FETCH_RESPONSE_MAX_BYTES).min(self.fetch_memory_available());
        let read_committed = req.isolation_level == 1;
        let mut total = 0usize;
        let mut errored = false;
        let mut resp = FetchResponse::default();
        for ft in &req.topics {
            let topic = if version >= 13 { self.topic_by_id(ft.topic_id) } else { self.topic(ft.topic.as_str()) };
            let mut tr = fetch_response::FetchableTopicResponse::default();
            tr.topic = ft.topic.clone();
            tr.topic_id = ft.topic_id;
            for fp in &ft.partitions {
                let mut pd = fetch_response::PartitionData::default();
                pd.partition_index = fp.partition;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                pd.preferred_read_replica = kafka_protocol::messages::BrokerId(-1);
                pd.aborted_transactions = if read_committed { Some(Vec::new()) } else { None };
                pd.records = Some(Bytes::new());
                let partition = topic.as_ref().and_then(|t| t.partitions.get(&fp.partition));
                match partition {
                    None => {
                        pd.error_code = if version >= 13 && topic.is_none() {
                            errors::UNKNOWN_TOPIC_ID
                        } else {
                            errors::UNKNOWN_TOPIC_OR_PARTITION
                        };
                        errored = true;
                    }
                    Some(p) => {
                        let mut st = p.state.lock().unwrap();
                        pd.log_start_offset = st.log.log_start_offset();
                        let leo = st.log.log_end_offset();
                        let budget = (fp.partition_max_bytes.max(0) as usize).min(response_max.saturating_sub(total));
                        let min_one = total == 0 && response_max > 0;
                        // Consumers read up to the high watermark; followers up to the log end.
                        let upto = if replica_id >= 0 {
                            let state = &mut *st;
                            let (Role::Leader(l), Some(epochs)) = (&mut state.role, &state.epochs) else {
                                pd.error_code = errors::NOT_LEADER_OR_FOLLOWER;
                                errored = true;
                                tr.partitions.push(pd);
                                continue;
                            };
                            let hw_before = l.high_watermark();
                            let fetch = FollowerFetch {
                                replica_id,
                                fetch_offset: fp.fetch_offset,
                                // Followers fsync before fetching again (sync-before-fetch mode),
                                // so their fetch offset is durable on their side.
                                durable_log_end_offset: fp.fetch_offset,
                                last_fetched_epoch: (version >= 12 && fp.last_fetched_epoch >= 0)
                                    .then_some(fp.last_fetched_epoch),
                                current_leader_epoch: (fp.current_leader_epoch >= 0).then_some(fp.current_leader_epoch),
                            };
                            match l.on_follower_fetch(&fetch, epochs, leo, now) {
                                Err(rejection) => {
                                    pd.error_code = rejection.error_code();
                                    errored = true;
                                    tr.partitions.push(pd);
                                    continue;
                                }
                                Ok(effect) => {
                                    if effect.hw_advanced || l.high_watermark() > hw_before {
                                        hw_moved.push((p.clone(), l.high_watermark()));
                                    }
                                    if let Some(isr) = effect.isr_expand {
                                        isr_proposals.push((p.clone(), isr));
                                    }
                                    if let Some(d) = effect.diverging_epoch {
                                        pd.diverging_epoch.epoch = d.epoch;
                                        pd.diverging_epoch.end_offset = d.end_offset;
                                        pd.high_watermark = l.high_watermark();
                                        errored = true;
                                        tr.partitions.push(pd);
                                        continue;
                                    }
                                }
                            }
                            pd.high_watermark = st.high_watermark();
                            leo
                        } else {
                            let Some(epoch) = st.leading_epoch() else {
                                pd.error_code = errors::NOT_LEADER_OR_FOLLOWER;
                                errored = true;
                                tr.partitions.push(pd);
                                continue;
                            };
                            if let Some(code) = epoch_error(fp.current_leader_epoch, epoch) {
                                pd.error_code = code;
                                errored = true;
                                tr.partitions.push(pd);
                                continue;
                            }
                            pd.high_watermark = st.high_watermark();
                            pd.high_watermark
                        };
                        let (lso, upto) = if replica_id >= 0 {
                            (pd.high_watermark, upto)
                        } else {
                            let (lso, read_upto, aborted) =
                                super::txn::txn_fetch_view(&st, fp.fetch_offset, pd.high_watermark, read_committed);
                            if read_committed {
                                pd.aborted_transactions = aborted;
                            }
                            (lso, read_upto)
                        };
                        pd.last_stable_offset = lso;
                        match st.log.read(fp.fetch_offset, budget, upto, min_one) {
                            Ok(r) => {
                                total += r.records.len();
                                pd.records = Some(r.records);
                            }
                            Err(e) => {
                                pd.error_code = log_error_code(&e);
                                errored = true;
                            }
                        }
                    }
                }
                tr.partitions.push(pd);
            }
            resp.responses.push(tr);
        }
        FetchPass { resp, bytes: total, errored, hw_moved, isr_proposals }
    }

    pub(super) fn list_offsets(self: &Arc<Self>, req: ListOffsetsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = ListOffsetsResponse::default();
        for t in req.topics {
            let topic = self.topic(t.name.as_str());
            let mut tr = list_offsets_response::ListOffsetsTopicResponse::default();
            tr.name = t.name.clone();
            for lp in t.partitions {
                let mut pr = list_offsets_response::ListOffsetsPartitionResponse::default();
                pr.partition_index = lp.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                pr.leader_epoch = -1;
                let p = topic.as_ref().and_then(|t| t.partitions.get(&lp.partition_index));
                match p {
                    None => pr.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let st = p.state.lock().unwrap();
                        let Some(epoch) = st.leading_epoch() else {
                            pr.error_code = errors::NOT_LEADER_OR_FOLLOWER;
                            tr.partitions.push(pr);
                            continue;
                        };
                        if let Some(code) = epoch_error(lp.current_leader_epoch, epoch) {
                            pr.error_code = code;
                            tr.partitions.push(pr);
                            continue;
                        }
                        if ctx.version >= 4 {
                            pr.leader_epoch = epoch;
                        }
                        match lp.timestamp {
                            -1 => {
                                pr.offset = super::txn::txn_latest_offset(&st, st.high_watermark(), req.isolation_level)
                            }
                            -2 | -4 => pr.offset = st.log.log_start_offset(),
                            -3 => {
                                if let Some((ts, off)) = st.log.max_timestamp() {
                                    pr.timestamp = ts;
                                    pr.offset = off;
                                }
                            }
                            ts if ts >= 0 => match st.log.offset_for_timestamp(ts) {
                                Ok(Some((off, t))) => {
                                    pr.offset = off;
                                    pr.timestamp = t;
                                }
                                Ok(None) => {}
                                Err(e) => pr.error_code = log_error_code(&e),
                            },
                            _ => pr.error_code = errors::INVALID_REQUEST,
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        ctx.encode(&resp)
    }

    pub(super) fn offset_for_leader_epoch(
        self: &Arc<Self>,
        req: OffsetForLeaderEpochRequest,
        ctx: &RequestContext,
    ) -> Bytes {
        let mut resp = OffsetForLeaderEpochResponse::default();
        for t in req.topics {
            let topic = self.topic(t.topic.as_str());
            let mut tr = offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            for lp in t.partitions {
                let mut e = offset_for_leader_epoch_response::EpochEndOffset::default();
                e.partition = lp.partition;
                e.leader_epoch = -1;
                e.end_offset = -1;
                let p = topic.as_ref().and_then(|t| t.partitions.get(&lp.partition));
                match p {
                    None => e.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let st = p.state.lock().unwrap();
                        let leo = st.log.log_end_offset();
                        match (st.leading_epoch(), &st.epochs) {
                            (None, _) => e.error_code = errors::NOT_LEADER_OR_FOLLOWER,
                            (Some(current), _) if epoch_error(lp.current_leader_epoch, current).is_some() => {
                                e.error_code = epoch_error(lp.current_leader_epoch, current).unwrap_or(0)
                            }
                            (Some(_), Some(cache)) => {
                                let end = cache.end_offset_for(lp.leader_epoch, leo);
                                e.leader_epoch = end.epoch;
                                e.end_offset = end.end_offset;
                            }
                            (Some(_), None) => {
                                // Every record on a single node was written in epoch 0.
                                if lp.leader_epoch >= SINGLE_NODE_LEADER_EPOCH {
                                    e.leader_epoch = SINGLE_NODE_LEADER_EPOCH;
                                    e.end_offset = leo;
                                }
                            }
                        }
                    }
                }
                tr.partitions.push(e);
            }
            resp.topics.push(tr);
        }
        ctx.encode(&resp)
    }

    pub(super) fn delete_records(self: &Arc<Self>, req: DeleteRecordsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = DeleteRecordsResponse::default();
        for t in req.topics {
            let topic = self.topic(t.name.as_str());
            let mut tr = delete_records_response::DeleteRecordsTopicResult::default();
            tr.name = t.name.clone();
            for dp in t.partitions {
                let mut pr = delete_records_response::DeleteRecordsPartitionResult::default();
                pr.partition_index = dp.partition_index;
                pr.low_watermark = -1;
                let p = topic.as_ref().and_then(|t| t.partitions.get(&dp.partition_index));
                match p {
                    None => pr.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let mut st = p.state.lock().unwrap();
                        let target = if dp.offset == -1 { st.log.log_end_offset() } else { dp.offset };
                        if target < 0 || target > st.log.log_end_offset() {
                            pr.error_code = errors::OFFSET_OUT_OF_RANGE;
                        } else {
                            match st.log.delete_records_before(target) {
                                Ok(lw) => pr.low_watermark = lw,
                                Err(e) => pr.error_code = log_error_code(&e),
                            }
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        ctx.encode(&resp)
    }

    pub(super) fn init_producer_id(self: &Arc<Self>, req: InitProducerIdRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = InitProducerIdResponse::default();
        if req.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
            resp.error_code = errors::UNSUPPORTED_VERSION;
            resp.producer_id = kafka_protocol::messages::ProducerId(-1);
            resp.producer_epoch = -1;
        } else {
            resp.producer_id =
                kafka_protocol::messages::ProducerId(self.next_producer_id.fetch_add(1, Ordering::SeqCst));
            resp.producer_epoch = 0;
        }
        ctx.encode(&resp)
    }
}

fn ack_wait_for(role: &Role, upto: i64, min_insync_replicas: i32) -> AckWait {
    match role {
        Role::Leader(l) => AckWait::HighWatermark { upto, min_insync_replicas, leader_epoch: l.leader_epoch() },
        _ => AckWait::Fsync(upto),
    }
}

/// Waits for what an acknowledgement needs; returns the Kafka error code to answer.
pub(super) async fn wait_for_ack(p: &Arc<Partition>, wait: AckWait) -> i16 {
    match wait {
        AckWait::Fsync(upto) => {
            let mut rx = p.durable.subscribe();
            loop {
                if p.poisoned.load(Ordering::Acquire) || p.deleted.load(Ordering::Acquire) {
                    return errors::KAFKA_STORAGE_ERROR;
                }
                if *rx.borrow_and_update() >= upto {
                    return errors::NONE;
                }
                if rx.changed().await.is_err() {
                    return errors::KAFKA_STORAGE_ERROR;
                }
            }
        }
        AckWait::HighWatermark { upto, min_insync_replicas, leader_epoch } => {
            let mut rx = p.hw.subscribe();
            loop {
                rx.borrow_and_update();
                if p.poisoned.load(Ordering::Acquire) || p.deleted.load(Ordering::Acquire) {
                    return errors::KAFKA_STORAGE_ERROR;
                }
                {
                    let st = p.state.lock().unwrap();
                    match &st.role {
                        Role::Leader(l) if l.leader_epoch() != leader_epoch => return errors::NOT_LEADER_OR_FOLLOWER,
                        Role::Leader(l) => {
                            if let Some(code) = l.acks_all_ready(upto, min_insync_replicas).error_code() {
                                return code;
                            }
                        }
                        _ => return errors::NOT_LEADER_OR_FOLLOWER,
                    }
                }
                if rx.changed().await.is_err() {
                    return errors::NOT_LEADER_OR_FOLLOWER;
                }
            }
        }
    }
}

/// KIP-320 leader-epoch fencing: a client naming a newer epoch than ours gets
/// UNKNOWN_LEADER_EPOCH (we are behind), an older one FENCED_LEADER_EPOCH; -1 skips the check.
fn epoch_error(requested: i32, current: i32) -> Option<i16> {
    if requested < 0 || requested == current {
        None
    } else if requested > current {
        Some(errors::UNKNOWN_LEADER_EPOCH)
    } else {
        Some(errors::FENCED_LEADER_EPOCH)
    }
}

fn build_produce_response(topics: Vec<(StrBytes, Vec<PartitionOutcome>)>) -> ProduceResponse {
    let mut resp = ProduceResponse::default();
    for (name, outs) in topics {
        let mut tr = produce_response::TopicProduceResponse::default();
        tr.name = kafka_protocol::messages::TopicName(name);
        for o in outs {
            let mut pr = produce_response::PartitionProduceResponse::default();
            pr.index = o.index;
            pr.error_code = o.error_code;
            pr.base_offset = o.base_offset;
            pr.log_append_time_ms = o.log_append_time_ms;
            pr.log_start_offset = o.log_start_offset;
            pr.error_message = o.error_message.map(StrBytes::from_string);
            tr.partition_responses.push(pr);
        }
        resp.responses.push(tr);
    }
    resp
}
