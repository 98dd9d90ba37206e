//! The async shell around the group coordinator core: decodes nothing itself (the dispatcher
//! in `broker/mod.rs` does), converts Kafka request structs into [`crate::group`] inputs,
//! turns pending JoinGroup/SyncGroup operations into [`Reply::Wait`] futures, syncs committed
//! offsets before answering OffsetCommit, and runs the timer that drives session and
//! rebalance timeouts ([`run_group_timer`]).
//!
//! Invariants:
//! - One mutex (`Groups::inner`) guards the core, the waiters and the offset store; it is never
//!   held across an await. Lock order: `Broker::topics` (via `Broker::topic`) may be taken while
//!   holding it, never the reverse.
//! - Every [`OpId`] the core hands out gets a waiter before the core's completions are drained,
//!   so no completion is lost; completions whose requester went away are dropped.
//! - OffsetCommit answers only after the commit records are fsynced (a failed fsync poisons
//!   the store and later commits fail with COORDINATOR_NOT_AVAILABLE). Committed offsets are
//!   visible to OffsetFetch as soon as they are appended, slightly before they are durable.
//! - Group membership is in memory only; committed offsets survive restarts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::{Broker, BrokerError, Reply, RequestContext};
use crate::config::BrokerConfig;
use crate::group::{
    CommittedOffset, Completion, CoordinatorConfig, GroupCoordinator, GroupState, JoinOutcome, JoinRequest, JoinResult,
    OffsetStore, OpId, SyncOutcome, SyncRequest, SyncResult, GROUP_OFFSETS_MAX, OFFSET_METADATA_MAX_BYTES,
    TIMER_IDLE_POLL_MS,
};
use crate::protocol::errors;
use crate::runtime::{self, Disk};

/// OffsetFetch results: (topic, [(partition, offset, leader epoch, metadata)]).
type FetchedTopics = Vec<(String, Vec<(i32, i64, i32, String)>)>;

/// Directory (under the data directory) holding the committed-offsets file.
pub const OFFSETS_DIR: &str = "__consumer_offsets";

/// Group coordination state owned by the broker.
pub struct Groups {
    inner: Mutex<Inner>,
    /// Cluster mode: offsets partitions this broker leads and has loaded.
    /// (With the leader epoch of the load.)
    pub(super) loaded_offsets_partitions: Mutex<std::collections::BTreeMap<i32, i32>>,
    /// Cluster mode: a request to create the offsets topic is in flight.
    pub(super) creating_offsets_topic: std::sync::atomic::AtomicBool,
}

struct Inner {
    core: GroupCoordinator,
    waiters: HashMap<OpId, oneshot::Sender<Completion>>,
    offsets: OffsetStore,
}

impl Inner {
    /// Registers a waiter for `op`, then delivers every completion the core has produced.
    fn wait_for(&mut self, op: OpId) -> oneshot::Receiver<Completion> {
        let (tx, rx) = oneshot::channel();
        let old = self.waiters.insert(op, tx);
        assert!(old.is_none(), "op {op} registered twice");
        self.deliver();
        rx
    }

    fn deliver(&mut self) {
        for (op, c) in self.core.take_completions() {
            if let Some(tx) = self.waiters.remove(&op) {
                // The requester may have disconnected; that is fine.
                let _ = tx.send(c);
            }
        }
    }
}

impl Groups {
    /// Opens the offset store under `data_dir` and creates an empty coordinator.
    pub fn open(config: &BrokerConfig, disk: Arc<dyn Disk>, data_dir: &Path) -> Result<Groups, BrokerError> {
        let dir = data_dir.join(OFFSETS_DIR);
        let offsets = OffsetStore::open(disk, &dir)
            .map_err(|e| BrokerError::Corrupt { path: dir.display().to_string(), reason: e.to_string() })?;
        let (min, max) = config.group_session_timeout_bounds_ms();
        let core_config = CoordinatorConfig {
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms(),
            session_timeout_min_ms: min,
            session_timeout_max_ms: max.max(min),
        };
        let core = GroupCoordinator::new(core_config, crate::runtime::random_u64());
        Ok(Groups {
            inner: Mutex::new(Inner { core, waiters: HashMap::new(), offsets }),
            loaded_offsets_partitions: Mutex::new(Default::default()),
            creating_offsets_topic: Default::default(),
        })
    }

    /// Cluster mode: applies records read from an offsets partition to the in-memory view.
    pub(super) fn apply_offsets_records(
        &self,
        records: &[(String, super::offsets_topic::OffsetsRecord)],
    ) -> Result<(), crate::group::OffsetStoreError> {
        use super::offsets_topic::OffsetsRecord;
        let mut g = self.inner.lock().unwrap();
        for (group, rec) in records {
            match rec {
                OffsetsRecord::Commit { topic, partition, value } => {
                    g.offsets.commit(group, &[(topic.clone(), *partition, value.clone())])?
                }
                OffsetsRecord::DeleteGroup => {
                    g.offsets.delete_group(group)?;
                }
                OffsetsRecord::Barrier => {}
            }
        }
        Ok(())
    }

    /// Cluster mode: applies committed records to the view if offsets partition `p` is still
    /// loaded in `epoch` (the epoch they were appended in); returns whether it was. Takes the
    /// group lock before the loaded-partitions lock, as `coordinator_gate` callers do.
    pub(super) fn apply_offsets_records_if_loaded(
        &self,
        p: i32,
        epoch: i32,
        records: &[(String, super::offsets_topic::OffsetsRecord)],
    ) -> Result<bool, crate::group::OffsetStoreError> {
        use super::offsets_topic::OffsetsRecord;
        let mut g = self.inner.lock().unwrap();
        if self.loaded_offsets_partitions.lock().unwrap().get(&p) != Some(&epoch) {
            return Ok(false);
        }
        for (group, rec) in records {
            match rec {
                OffsetsRecord::Commit { topic, partition, value } => {
                    g.offsets.commit(group, &[(topic.clone(), *partition, value.clone())])?
                }
                OffsetsRecord::DeleteGroup => {
                    g.offsets.delete_group(group)?;
                }
                OffsetsRecord::Barrier => {}
            }
        }
        Ok(true)
    }

    /// Cluster mode: forgets the committed offsets of every group `pred` selects (this broker
    /// stopped coordinating them); returns how many groups were dropped.
    pub(super) fn forget_groups(&self, pred: impl Fn(&str) -> bool) -> usize {
        let mut g = self.inner.lock().unwrap();
        let drop: Vec<String> = g.offsets.groups().filter(|id| pred(id)).map(str::to_string).collect();
        for id in &drop {
            if let Err(e) = g.offsets.delete_group(id) {
                tracing::error!(group = %id, error = %e, "forgetting group offsets failed");
            }
        }
        drop.len()
    }

    /// Applies timeouts at `now_ms` and answers whatever completed; returns the next deadline.
    pub fn tick(&self, now_ms: i64) -> Option<i64> {
        let mut g = self.inner.lock().unwrap();
        g.core.poll(now_ms);
        g.deliver();
        g.core.next_deadline()
    }

    /// Applies offsets a transaction committed (EndTxn with commit) durably: append, then
    /// fsync (a failure poisons the store). Called off the async workers.
    pub(super) fn commit_txn_offsets(
        &self,
        group: &str,
        commits: &[(String, i32, CommittedOffset)],
    ) -> Result<(), crate::group::OffsetStoreError> {
        self.inner.lock().unwrap().offsets.commit(group, commits)
    }

    /// TxnOffsetCommit v3+ (KIP-447) membership check, the same as OffsetCommit's.
    pub(super) fn validate_txn_offset_commit(
        &self,
        group: &str,
        member_id: &str,
        generation_id: i32,
        now_ms: i64,
    ) -> i16 {
        self.inner.lock().unwrap().core.validate_commit(group, member_id, generation_id, now_ms)
    }

    /// Drops every waiter (their requests answer COORDINATOR_NOT_AVAILABLE); used at shutdown.
    pub fn fail_pending(&self) {
        self.inner.lock().unwrap().waiters.clear();
    }
}

/// Drives the coordinator's timeouts until the broker shuts down: sleeps until the next
/// deadline (at most [`TIMER_IDLE_POLL_MS`]) and polls. On exit, pending joins and syncs are
/// answered with COORDINATOR_NOT_AVAILABLE.
pub async fn run_group_timer(broker: Arc<Broker>) {
    while !broker.is_shutting_down() {
        broker.reconcile_offsets_partitions();
        let now = runtime::now_ms();
        let next = broker.groups.tick(now);
        let wait_ms = next.map_or(TIMER_IDLE_POLL_MS, |d| (d - now).clamp(1, TIMER_IDLE_POLL_MS));
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms as u64)).await;
    }
    broker.groups.fail_pending();
}

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn join_response(r: JoinResult, version: i16) -> JoinGroupResponse {
    let mut resp = JoinGroupResponse::default();
    resp.error_code = r.error_code;
    resp.generation_id = r.generation_id;
    if version >= 7 {
        resp.protocol_type = r.protocol_type.map(sb);
        resp.protocol_name = r.protocol_name.map(sb);
    } else {
        resp.protocol_name = Some(sb(r.protocol_name.unwrap_or_default()));
    }
    resp.leader = sb(r.leader);
    resp.member_id = sb(r.member_id);
    resp.members = r
        .members
        .into_iter()
        .map(|m| {
            let mut jm = join_group_response::JoinGroupResponseMember::default();
            jm.member_id = sb(m.member_id);
            if version >= 5 {
                jm.group_instance_id = m.group_instance_id.map(sb);
            }
            jm.metadata = m.metadata;
            jm
        })
        .collect();
    resp
}

fn sync_response(r: SyncResult, version: i16) -> SyncGroupResponse {
    let mut resp = SyncGroupResponse::default();
    resp.error_code = r.error_code;
    if version >= 5 {
        resp.protocol_type = r.protocol_type.map(sb);
        resp.protocol_name = r.protocol_name.map(sb);
    }
    resp.assignment = r.assignment;
    resp
}

impl Broker {
    /// The broker that coordinates group `key`: this node on a single node; in cluster mode
    /// the leader of the group's `__consumer_offsets` partition (see `offsets_topic.rs`),
    /// creating that topic on first use. An error code while there is none.
    pub(super) fn coordinator_for(self: &Arc<Self>, key: &str) -> Result<(i32, String, u16), i16> {
        let listener = self.config().advertised_listener();
        let me = (self.config().node_id(), listener.host, listener.port);
        let Some(img) = self.image() else { return Ok(me) };
        let Some((_, leader, _)) = self.offsets_partition_of(key) else {
            self.ensure_offsets_topic();
            return Err(errors::COORDINATOR_NOT_AVAILABLE);
        };
        match img.brokers.get(&leader) {
            Some(b) if !b.fenced => Ok((b.broker_id, b.host.clone(), b.port)),
            _ => Err(errors::COORDINATOR_NOT_AVAILABLE),
        }
    }

    pub(super) fn find_coordinator(self: &Arc<Self>, req: FindCoordinatorRequest, ctx: &RequestContext) -> Bytes {
        let standalone = self.cluster.is_none();
        let answer = |key_type: i8| -> (i16, Option<&'static str>) {
            match key_type {
                0 => (errors::NONE, None),
                // The transaction coordinator's state and markers are local to one node.
                1 if standalone => (errors::NONE, None),
                1 => (errors::COORDINATOR_NOT_AVAILABLE, Some("transactions are served only in standalone mode")),
                _ => (errors::INVALID_REQUEST, Some("unknown key type")),
            }
        };
        let mut resp = FindCoordinatorResponse::default();
        if ctx.version >= 4 {
            resp.coordinators = req
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    let (mut code, msg) = answer(req.key_type);
                    let mut c = find_coordinator_response::Coordinator::default();
                    c.key = key.clone();
                    c.error_message = msg.map(sb);
                    let found = if code == errors::NONE { self.coordinator_for(key.as_str()) } else { Err(code) };
                    if let Err(e) = found {
                        code = e;
                    }
                    c.error_code = code;
                    if let Ok((node_id, host, port)) = found {
                        c.node_id = node_id.into();
                        c.host = sb(host);
                        c.port = port as i32;
                    } else {
                        c.node_id = (-1).into();
                        c.port = -1;
                    }
                    c
                })
                .collect();
        } else {
            let (code, msg) = answer(req.key_type);
            let found = if code == errors::NONE { self.coordinator_for(req.key.as_str()) } else { Err(code) };
            resp.error_code = *found.as_ref().err().unwrap_or(&errors::NONE);
            if ctx.version >= 1 {
                resp.error_message = msg.map(sb);
            }
            if let Ok((node_id, host, port)) = found {
                resp.node_id = node_id.into();
                resp.host = sb(host);
                resp.port = port as i32;
            } else {
                resp.node_id = (-1).into();
                resp.port = -1;
            }
        }
        ctx.encode(&resp)
    }

    /// JoinGroup: answered now (errors, MEMBER_ID_REQUIRED, a retried join) or when the
    /// rebalance completes.
    pub(super) fn join_group(self: &Arc<Self>, req: JoinGroupRequest, ctx: RequestContext) -> Reply {
        let v = ctx.version;
        let jr = JoinRequest {
            group_id: req.group_id.0.to_string(),
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.map(|s| s.to_string()),
            client_id: ctx.client_id.clone(),
            client_host: String::new(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: if v >= 1 { req.rebalance_timeout_ms } else { req.session_timeout_ms },
            protocol_type: req.protocol_type.to_string(),
            protocols: req.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
            require_known_member_id: v >= 4,
        };
        let member_id = jr.member_id.clone();
        let gate = self.coordinator_gate(&jr.group_id);
        if gate != errors::NONE {
            let r = JoinResult { error_code: gate, generation_id: -1, member_id, ..Default::default() };
            return Reply::Ready(ctx.encode(&join_response(r, v)));
        }
        let mut g = self.groups.inner.lock().unwrap();
        match g.core.join(jr, runtime::now_ms()) {
            JoinOutcome::Done(r) => {
                g.deliver();
                Reply::Ready(ctx.encode(&join_response(r, v)))
            }
            JoinOutcome::Pending(op) => {
                let rx = g.wait_for(op);
                drop(g);
                Reply::Wait(Box::pin(async move {
                    let r = match rx.await {
                        Ok(Completion::Join(r)) => r,
                        Ok(Completion::Sync(_)) => unreachable!("join op completed as a sync"),
                        Err(_) => JoinResult {
                            error_code: errors::COORDINATOR_NOT_AVAILABLE,
                            generation_id: -1,
                            member_id,
                            ..Default::default()
                        },
                    };
                    ctx.encode(&join_response(r, ctx.version))
                }))
            }
        }
    }

    /// SyncGroup: the leader's request completes everyone's; followers wait for it.
    pub(super) fn sync_group(self: &Arc<Self>, req: SyncGroupRequest, ctx: RequestContext) -> Reply {
        let v = ctx.version;
        let sr = SyncRequest {
            group_id: req.group_id.0.to_string(),
            generation_id: req.generation_id,
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.map(|s| s.to_string()),
            protocol_type: req.protocol_type.map(|s| s.to_string()),
            protocol_name: req.protocol_name.map(|s| s.to_string()),
            assignments: req.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect(),
        };
        let gate = self.coordinator_gate(&sr.group_id);
        if gate != errors::NONE {
            return Reply::Ready(ctx.encode(&sync_response(SyncResult { error_code: gate, ..Default::default() }, v)));
        }
        let mut g = self.groups.inner.lock().unwrap();
        match g.core.sync(sr, runtime::now_ms()) {
            SyncOutcome::Done(r) => {
                g.deliver();
                Reply::Ready(ctx.encode(&sync_response(r, v)))
            }
            SyncOutcome::Pending(op) => {
                let rx = g.wait_for(op);
                drop(g);
                Reply::Wait(Box::pin(async move {
                    let r = match rx.await {
                        Ok(Completion::Sync(r)) => r,
                        Ok(Completion::Join(_)) => unreachable!("sync op completed as a join"),
                        Err(_) => SyncResult { error_code: errors::COORDINATOR_NOT_AVAILABLE, ..Default::default() },
                    };
                    ctx.encode(&sync_response(r, ctx.version))
                }))
            }
        }
    }

    /// Heartbeat.
    pub(super) fn heartbeat(self: &Arc<Self>, req: HeartbeatRequest, ctx: &RequestContext) -> Bytes {
        let gate = self.coordinator_gate(&req.group_id.0);
        let code = if gate != errors::NONE {
            gate
        } else {
            self.groups.inner.lock().unwrap().core.heartbeat(
                &req.group_id.0,
                &req.member_id,
                req.generation_id,
                runtime::now_ms(),
            )
        };
        let mut resp = HeartbeatResponse::default();
        resp.error_code = code;
        ctx.encode(&resp)
    }

    /// LeaveGroup (v3+: a batch of members).
    pub(super) fn leave_group(self: &Arc<Self>, req: LeaveGroupRequest, ctx: &RequestContext) -> Bytes {
        let leaving: Vec<(String, Option<String>)> = if ctx.version >= 3 {
            req.members
                .iter()
                .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|s| s.to_string())))
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let gate = self.coordinator_gate(&req.group_id.0);
        if gate != errors::NONE {
            let mut resp = LeaveGroupResponse::default();
            resp.error_code = gate;
            return ctx.encode(&resp);
        }
        let codes = {
            let mut g = self.groups.inner.lock().unwrap();
            let codes = g.core.leave(&req.group_id.0, &leaving, runtime::now_ms());
            g.deliver();
            codes
        };
        let mut resp = LeaveGroupResponse::default();
        if ctx.version >= 3 {
            resp.members = leaving
                .into_iter()
                .zip(codes)
                .map(|((member_id, iid), code)| {
                    let mut m = leave_group_response::MemberResponse::default();
                    m.member_id = sb(member_id);
                    m.group_instance_id = iid.map(sb);
                    m.error_code = code;
                    m
                })
                .collect();
        } else {
            resp.error_code = codes.first().copied().unwrap_or(errors::NONE);
        }
        ctx.encode(&resp)
    }

    /// OffsetCommit: validates membership, appends the commits, answers after the fsync.
    pub(super) fn offset_commit(self: &Arc<Self>, req: OffsetCommitRequest, ctx: RequestContext) -> Reply {
        let group_id = req.group_id.0.to_string();
        let now = runtime::now_ms();
        let gate = self.coordinator_gate(&group_id);
        let mut g = self.groups.inner.lock().unwrap();
        let membership = if gate != errors::NONE {
            gate
        } else {
            g.core.validate_commit(&group_id, &req.member_id, req.generation_id_or_member_epoch, now)
        };
        let poisoned = g.offsets.is_poisoned();
        let mut held = g.offsets.group_offset_count(&group_id);
        // (topic index, partition index, code); NONE entries are in `commits`, in order.
        let mut results: Vec<(StrBytes, Vec<(i32, i16)>)> = Vec::new();
        let mut commits = Vec::new();
        for t in &req.topics {
            let topic = self.topic(&t.name.0);
            let mut parts = Vec::new();
            for p in &t.partitions {
                let exists =
                    topic.as_ref().is_some_and(|tp| p.partition_index >= 0 && p.partition_index < tp.partition_count);
                let is_new = g.offsets.fetch(&group_id, &t.name.0, p.partition_index).is_none();
                let code = if membership != errors::NONE {
                    membership
                } else if !exists {
                    errors::UNKNOWN_TOPIC_OR_PARTITION
                } else if p.committed_metadata.as_ref().is_some_and(|m| m.len() > OFFSET_METADATA_MAX_BYTES) {
                    errors::OFFSET_METADATA_TOO_LARGE
                } else if poisoned || (is_new && held >= GROUP_OFFSETS_MAX) {
                    errors::COORDINATOR_NOT_AVAILABLE
                } else {
                    held += is_new as usize;
                    let leader_epoch = if ctx.version >= 6 { p.committed_leader_epoch } else { -1 };
                    let value = CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_ms: now,
                    };
                    commits.push((t.name.0.to_string(), p.partition_index, value));
                    errors::NONE
                };
                parts.push((p.partition_index, code));
            }
            results.push((t.name.0.clone(), parts));
        }
        if self.cluster.is_some() && !commits.is_empty() {
            // Cluster mode: replicate through __consumer_offsets, then update the view.
            drop(g);
            let broker = self.clone();
            return Reply::Wait(Box::pin(async move {
                let records: Vec<super::offsets_topic::OffsetsRecord> = commits
                    .iter()
                    .map(|(topic, partition, value)| super::offsets_topic::OffsetsRecord::Commit {
                        topic: topic.clone(),
                        partition: *partition,
                        value: value.clone(),
                    })
                    .collect();
                // Appended, committed and applied to the view (if still this epoch's).
                let code = broker.replicate_offsets_records(&group_id, &records).await;
                let mut results = results;
                if code != errors::NONE {
                    fail_accepted_with(&mut results, code);
                }
                encode_commit_response(results, &ctx)
            }));
        }
        let file = if commits.is_empty() {
            None
        } else {
            match g.offsets.append_commits(&group_id, &commits) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::error!(group = %group_id, error = %e, "offset commit failed");
                    fail_accepted(&mut results);
                    None
                }
            }
        };
        drop(g);
        let encode = encode_commit_response;
        let Some(file) = file else { return Reply::Ready(encode(results, &ctx)) };
        let broker = self.clone();
        Reply::Wait(Box::pin(async move {
            let synced = runtime::blocking(move || file.sync_data()).await;
            let mut results = results;
            if let Err(e) = synced {
                tracing::error!(group = %group_id, error = %e,
                    "offsets fsync failed; refusing further commits until restart (never retry a failed fsync)");
                broker.groups.inner.lock().unwrap().offsets.poison();
                fail_accepted(&mut results);
            }
            encode(results, &ctx)
        }))
    }

    /// OffsetFetch in cluster mode: a barrier is committed for each group this broker
    /// coordinates (see `offsets_topic.rs`), then the view answers; a group whose barrier
    /// fails gets that error.
    pub(super) fn offset_fetch_cluster(self: &Arc<Self>, req: OffsetFetchRequest, ctx: RequestContext) -> Reply {
        let b = self.clone();
        Reply::Wait(Box::pin(async move {
            let groups: Vec<String> = if ctx.version >= 8 {
                req.groups.iter().map(|g| g.group_id.to_string()).collect()
            } else {
                vec![req.group_id.to_string()]
            };
            let mut failed = BTreeMap::new();
            for group in groups {
                if b.coordinator_gate(&group) != errors::NONE {
                    continue;
                }
                let code = b.replicate_offsets_records(&group, &[super::offsets_topic::OffsetsRecord::Barrier]).await;
                if code != errors::NONE {
                    failed.insert(group, code);
                }
            }
            b.offset_fetch_with(req, &ctx, &failed)
        }))
    }

    /// OffsetFetch (v8+: several groups).
    pub(super) fn offset_fetch(self: &Arc<Self>, req: OffsetFetchRequest, ctx: &RequestContext) -> Bytes {
        self.offset_fetch_with(req, ctx, &BTreeMap::new())
    }

    /// OffsetFetch, with `failed` groups answered with their error code.
    fn offset_fetch_with(
        self: &Arc<Self>,
        req: OffsetFetchRequest,
        ctx: &RequestContext,
        failed: &BTreeMap<String, i16>,
    ) -> Bytes {
        let gate = |group: &str| failed.get(group).copied().unwrap_or_else(|| self.coordinator_gate(group));
        let g = self.groups.inner.lock().unwrap();
        let lookup = |group: &str, topics: Option<Vec<(String, Vec<i32>)>>| -> FetchedTopics {
            let value = |t: &str, p: i32| match g.offsets.fetch(group, t, p) {
                Some(o) => (p, o.offset, o.leader_epoch, o.metadata.clone().unwrap_or_default()),
                None => (p, -1, -1, String::new()),
            };
            match topics {
                Some(ts) => ts
                    .into_iter()
                    .map(|(t, ps)| {
                        let v = ps.iter().map(|&p| value(&t, p)).collect();
                        (t, v)
                    })
                    .collect(),
                None => {
                    let mut out: FetchedTopics = Vec::new();
                    for (t, p, _) in g.offsets.group_offsets(group) {
                        if out.last().is_none_or(|(lt, _)| lt != t) {
                            out.push((t.to_string(), Vec::new()));
                        }
                        out.last_mut().expect("pushed").1.push(value(t, p));
                    }
                    out
                }
            }
        };
        let mut resp = OffsetFetchResponse::default();
        if ctx.version >= 8 {
            resp.groups = req
                .groups
                .iter()
                .map(|rg| {
                    let topics = rg
                        .topics
                        .as_ref()
                        .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
                    let mut og = offset_fetch_response::OffsetFetchResponseGroup::default();
                    og.group_id = rg.group_id.clone();
                    og.error_code = gate(&rg.group_id.0);
                    if og.error_code != errors::NONE {
                        return og;
                    }
                    og.topics = lookup(&rg.group_id.0, topics)
                        .into_iter()
                        .map(|(name, parts)| {
                            let mut t = offset_fetch_response::OffsetFetchResponseTopics::default();
                            t.name = sb(name).into();
                            t.partitions = parts
                                .into_iter()
                                .map(|(pi, off, epoch, meta)| {
                                    let mut p = offset_fetch_response::OffsetFetchResponsePartitions::default();
                                    p.partition_index = pi;
                                    p.committed_offset = off;
                                    p.committed_leader_epoch = epoch;
                                    p.metadata = Some(sb(meta));
                                    p
                                })
                                .collect();
                            t
                        })
                        .collect();
                    og
                })
                .collect();
        } else if gate(&req.group_id.0) != errors::NONE {
            resp.error_code = gate(&req.group_id.0);
        } else {
            let topics = req
                .topics
                .as_ref()
                .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
            resp.topics = lookup(&req.group_id.0, topics)
                .into_iter()
                .map(|(name, parts)| {
                    let mut t = offset_fetch_response::OffsetFetchResponseTopic::default();
                    t.name = sb(name).into();
                    t.partitions = parts
                        .into_iter()
                        .map(|(pi, off, epoch, meta)| {
                            let mut p = offset_fetch_response::OffsetFetchResponsePartition::default();
                            p.partition_index = pi;
                            p.committed_offset = off;
                            if ctx.version >= 5 {
                                p.committed_leader_epoch = epoch;
                            }
                            p.metadata = Some(sb(meta));
                            p
                        })
                        .collect();
                    t
                })
                .collect();
        }
        drop(g);
        ctx.encode(&resp)
    }

    /// ListGroups: groups with members and groups that only hold offsets.
    pub(super) fn list_groups(self: &Arc<Self>, req: ListGroupsRequest, ctx: &RequestContext) -> Bytes {
        let g = self.groups.inner.lock().unwrap();
        let mut all: std::collections::BTreeMap<String, (String, GroupState)> =
            g.offsets.groups().map(|id| (id.to_string(), (String::new(), GroupState::Empty))).collect();
        for (id, protocol_type, state) in g.core.list() {
            all.insert(id, (protocol_type, state));
        }
        drop(g);
        // Cluster mode: only the groups this broker coordinates (clients ask every broker).
        all.retain(|id, _| self.coordinator_gate(id) == errors::NONE);
        let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
        let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
        let mut resp = ListGroupsResponse::default();
        resp.groups = all
            .into_iter()
            .filter(|(_, (_, st))| states.is_empty() || states.contains(&st.name().to_lowercase()))
            .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
            .map(|(id, (protocol_type, st))| {
                let mut lg = list_groups_response::ListedGroup::default();
                lg.group_id = sb(id).into();
                lg.protocol_type = sb(protocol_type);
                if ctx.version >= 4 {
                    lg.group_state = sb(st.name());
                }
                if ctx.version >= 5 {
                    lg.group_type = sb("classic");
                }
                lg
            })
            .collect();
        ctx.encode(&resp)
    }

    /// DescribeGroups. Unknown groups are described as Dead (Kafka's answer), offset-only
    /// groups as Empty.
    pub(super) fn describe_groups(self: &Arc<Self>, req: DescribeGroupsRequest, ctx: &RequestContext) -> Bytes {
        let g = self.groups.inner.lock().unwrap();
        let mut resp = DescribeGroupsResponse::default();
        resp.groups = req
            .groups
            .iter()
            .map(|id| {
                let mut d = describe_groups_response::DescribedGroup::default();
                d.group_id = id.clone();
                d.error_code = self.coordinator_gate(&id.0);
                if d.error_code != errors::NONE {
                    return d;
                }
                match g.core.describe(&id.0) {
                    Some(desc) => {
                        d.group_state = sb(desc.state.name());
                        d.protocol_type = sb(desc.protocol_type);
                        d.protocol_data = sb(desc.protocol_name);
                        d.members = desc
                            .members
                            .into_iter()
                            .map(|m| {
                                let mut dm = describe_groups_response::DescribedGroupMember::default();
                                dm.member_id = sb(m.member_id);
                                if ctx.version >= 4 {
                                    dm.group_instance_id = m.group_instance_id.map(sb);
                                }
                                dm.client_id = sb(m.client_id);
                                dm.client_host = sb(m.client_host);
                                dm.member_metadata = m.metadata;
                                dm.member_assignment = m.assignment;
                                dm
                            })
                            .collect();
                    }
                    None if g.offsets.has_group(&id.0) => d.group_state = sb("Empty"),
                    None => d.group_state = sb("Dead"),
                }
                d
            })
            .collect();
        drop(g);
        ctx.encode(&resp)
    }

    /// DeleteGroups: removes empty groups and their committed offsets (in cluster mode after
    /// a deletion record is committed to the group's offsets partition).
    pub(super) fn delete_groups(self: &Arc<Self>, req: DeleteGroupsRequest, ctx: RequestContext) -> Reply {
        let b = self.clone();
        let work = move || async move {
            let mut results = Vec::new();
            for id in &req.groups_names {
                let mut code = b.coordinator_gate(&id.0);
                if code == errors::NONE {
                    let known = b.groups.inner.lock().unwrap().core.delete_group(&id.0);
                    code = match known {
                        Err(code) => code,
                        Ok(known) => {
                            let had_offsets = b.groups.inner.lock().unwrap().offsets.has_group(&id.0);
                            if b.cluster.is_some() && (known || had_offsets) {
                                // Committed to __consumer_offsets and applied to the view.
                                b.replicate_offsets_records(&id.0, &[super::offsets_topic::OffsetsRecord::DeleteGroup])
                                    .await
                            } else {
                                match b.groups.inner.lock().unwrap().offsets.delete_group(&id.0) {
                                    Ok(had) if known || had => errors::NONE,
                                    Ok(_) => errors::GROUP_ID_NOT_FOUND,
                                    Err(e) => {
                                        tracing::error!(group = %id.0.as_str(), error = %e, "deleting group offsets failed");
                                        errors::COORDINATOR_NOT_AVAILABLE
                                    }
                                }
                            }
                        }
                    };
                }
                let mut r = delete_groups_response::DeletableGroupResult::default();
                r.group_id = id.clone();
                r.error_code = code;
                results.push(r);
            }
            let mut resp = DeleteGroupsResponse::default();
            resp.results = results;
            ctx.encode(&resp)
        };
        Reply::Wait(Box::pin(work()))
    }
}

fn encode_commit_response(results: Vec<(StrBytes, Vec<(i32, i16)>)>, ctx: &RequestContext) -> Bytes {
    let mut resp = OffsetCommitResponse::default();
    resp.topics = results
        .into_iter()
        .map(|(name, parts)| {
            let mut t = offset_commit_response::OffsetCommitResponseTopic::default();
            t.name = name.into();
            t.partitions = parts
                .into_iter()
                .map(|(partition_index, error_code)| {
                    let mut p = offset_commit_response::OffsetCommitResponsePartition::default();
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

/// Turns every accepted partition of an OffsetCommit answer into COORDINATOR_NOT_AVAILABLE
/// (the commit could not be made durable).
fn fail_accepted(results: &mut [(StrBytes, Vec<(i32, i16)>)]) {
    fail_accepted_with(results, errors::COORDINATOR_NOT_AVAILABLE);
}

/// Turns every accepted partition of an OffsetCommit answer into `error`.
fn fail_accepted_with(results: &mut [(StrBytes, Vec<(i32, i16)>)], error: i16) {
    for (_, parts) in results.iter_mut() {
        for (_, code) in parts.iter_mut() {
            if *code == errors::NONE {
                *code = error;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemDisk;
    use bytes::Buf;
    use kafka_protocol::protocol::Decodable;

    use super::super::testkit::{call, frame, open_broker};

    fn join_request(member_id: &str) -> JoinGroupRequest {
        let mut p = join_group_request::JoinGroupRequestProtocol::default();
        p.name = sb("range");
        p.metadata = Bytes::from_static(b"subscription");
        let mut r = JoinGroupRequest::default();
        r.group_id = sb("g").into();
        r.session_timeout_ms = 10_000;
        r.rebalance_timeout_ms = 10_000;
        r.member_id = sb(member_id);
        r.protocol_type = sb("consumer");
        r.protocols = vec![p];
        r
    }

    async fn create_topic(b: &Arc<Broker>, name: &str, partitions: i32) {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = sb(name).into();
        t.num_partitions = partitions;
        t.replication_factor = 1;
        let mut r = CreateTopicsRequest::default();
        r.topics = vec![t];
        r.timeout_ms = 1000;
        let _: CreateTopicsResponse = call(b, ApiKey::CreateTopics, 4, &r).await;
    }

    fn commit_request(member: &str, generation: i32, parts: &[(&str, i32, i64, &str)]) -> OffsetCommitRequest {
        let mut r = OffsetCommitRequest::default();
        r.group_id = sb("g").into();
        r.member_id = sb(member);
        r.generation_id_or_member_epoch = generation;
        r.topics = parts
            .iter()
            .map(|(t, p, o, m)| {
                let mut part = offset_commit_request::OffsetCommitRequestPartition::default();
                part.partition_index = *p;
                part.committed_offset = *o;
                part.committed_leader_epoch = 4;
                part.committed_metadata = Some(sb(*m));
                let mut topic = offset_commit_request::OffsetCommitRequestTopic::default();
                topic.name = sb(*t).into();
                topic.partitions = vec![part];
                topic
            })
            .collect();
        r
    }

    async fn fetch_v8(b: &Arc<Broker>, topic: &str, partition: i32) -> (i64, i32, String) {
        let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
        t.name = sb(topic).into();
        t.partition_indexes = vec![partition];
        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = sb("g").into();
        g.topics = Some(vec![t]);
        let mut r = OffsetFetchRequest::default();
        r.groups = vec![g];
        let resp: OffsetFetchResponse = call(b, ApiKey::OffsetFetch, 8, &r).await;
        let p = &resp.groups[0].topics[0].partitions[0];
        assert_eq!(p.error_code, errors::NONE);
        (p.committed_offset, p.committed_leader_epoch, p.metadata.as_deref().unwrap_or("").to_string())
    }

    #[tokio::test]
    async fn consumer_flow_through_the_shell_and_offsets_survive_restart() {
        // Proves a full classic-consumer session through Broker::handle (find coordinator,
        // KIP-394 join, sync, heartbeat, commit with per-partition errors, fetch, list,
        // describe, leave, delete) and that committed offsets survive a crash and reopen.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        create_topic(&b, "t", 2).await;

        let mut fc = FindCoordinatorRequest::default();
        fc.key = sb("g");
        let r: FindCoordinatorResponse = call(&b, ApiKey::FindCoordinator, 3, &fc).await;
        assert_eq!((r.error_code, r.node_id.0, r.host.as_str(), r.port), (errors::NONE, 7, "127.0.0.1", 9092));
        let mut fc = FindCoordinatorRequest::default();
        fc.key_type = 1;
        fc.coordinator_keys = vec![sb("txn")];
        let r: FindCoordinatorResponse = call(&b, ApiKey::FindCoordinator, 4, &fc).await;
        assert_eq!((r.coordinators[0].error_code, r.coordinators[0].node_id.0), (errors::NONE, 7));

        let r: JoinGroupResponse = call(&b, ApiKey::JoinGroup, 5, &join_request("")).await;
        assert_eq!(r.error_code, errors::MEMBER_ID_REQUIRED);
        let member = r.member_id.to_string();
        let r: JoinGroupResponse = call(&b, ApiKey::JoinGroup, 5, &join_request(&member)).await;
        assert_eq!((r.error_code, r.generation_id, r.leader.as_str()), (errors::NONE, 1, member.as_str()));
        assert_eq!(r.members.len(), 1);

        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
        a.member_id = sb(member.clone());
        a.assignment = Bytes::from_static(b"t:0,1");
        let mut s = SyncGroupRequest::default();
        s.group_id = sb("g").into();
        s.generation_id = 1;
        s.member_id = sb(member.clone());
        s.assignments = vec![a];
        let r: SyncGroupResponse = call(&b, ApiKey::SyncGroup, 3, &s).await;
        assert_eq!((r.error_code, r.assignment.as_ref()), (errors::NONE, &b"t:0,1"[..]));

        let mut hb = HeartbeatRequest::default();
        hb.group_id = sb("g").into();
        hb.generation_id = 1;
        hb.member_id = sb(member.clone());
        let r: HeartbeatResponse = call(&b, ApiKey::Heartbeat, 4, &hb).await;
        assert_eq!(r.error_code, errors::NONE);
        hb.generation_id = 0;
        let r: HeartbeatResponse = call(&b, ApiKey::Heartbeat, 4, &hb).await;
        assert_eq!(r.error_code, errors::ILLEGAL_GENERATION);

        let big = "x".repeat(OFFSET_METADATA_MAX_BYTES + 1);
        let req = commit_request(&member, 1, &[("t", 0, 42, "m"), ("nope", 0, 1, ""), ("t", 1, 5, &big)]);
        let r: OffsetCommitResponse = call(&b, ApiKey::OffsetCommit, 8, &req).await;
        let codes: Vec<i16> = r.topics.iter().map(|t| t.partitions[0].error_code).collect();
        assert_eq!(codes, vec![errors::NONE, errors::UNKNOWN_TOPIC_OR_PARTITION, errors::OFFSET_METADATA_TOO_LARGE]);
        let r: OffsetCommitResponse =
            call(&b, ApiKey::OffsetCommit, 8, &commit_request(&member, 0, &[("t", 0, 1, "")])).await;
        assert_eq!(r.topics[0].partitions[0].error_code, errors::ILLEGAL_GENERATION);

        assert_eq!(fetch_v8(&b, "t", 0).await, (42, 4, "m".to_string()));
        assert_eq!(fetch_v8(&b, "t", 1).await, (-1, -1, String::new()));
        let mut f = OffsetFetchRequest::default();
        f.group_id = sb("g").into();
        f.topics = None;
        let r: OffsetFetchResponse = call(&b, ApiKey::OffsetFetch, 3, &f).await;
        assert_eq!(r.topics.len(), 1);
        assert_eq!(r.topics[0].partitions[0].committed_offset, 42);

        let r: ListGroupsResponse = call(&b, ApiKey::ListGroups, 4, &ListGroupsRequest::default()).await;
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].group_state.as_str(), "Stable");
        let mut d = DescribeGroupsRequest::default();
        d.groups = vec![sb("g").into(), sb("other").into()];
        let r: DescribeGroupsResponse = call(&b, ApiKey::DescribeGroups, 5, &d).await;
        assert_eq!(r.groups[0].members.len(), 1);
        assert_eq!(r.groups[0].protocol_data.as_str(), "range");
        assert_eq!(r.groups[1].group_state.as_str(), "Dead");

        let mut del = DeleteGroupsRequest::default();
        del.groups_names = vec![sb("g").into(), sb("missing").into()];
        let r: DeleteGroupsResponse = call(&b, ApiKey::DeleteGroups, 2, &del).await;
        assert_eq!(r.results[0].error_code, errors::NON_EMPTY_GROUP);
        assert_eq!(r.results[1].error_code, errors::GROUP_ID_NOT_FOUND);

        let mut m = leave_group_request::MemberIdentity::default();
        m.member_id = sb(member.clone());
        let mut l = LeaveGroupRequest::default();
        l.group_id = sb("g").into();
        l.members = vec![m];
        let r: LeaveGroupResponse = call(&b, ApiKey::LeaveGroup, 4, &l).await;
        assert_eq!(r.members[0].error_code, errors::NONE);

        // A simple consumer (generation -1) may commit now that the group has no members.
        let r: OffsetCommitResponse =
            call(&b, ApiKey::OffsetCommit, 2, &commit_request("", -1, &[("t", 1, 77, "s")])).await;
        assert_eq!(r.topics[0].partitions[0].error_code, errors::NONE);

        drop(b);
        disk.crash(|_, _| 0);
        let b = open_broker(&disk);
        create_topic(&b, "t", 2).await;
        assert_eq!(fetch_v8(&b, "t", 0).await, (42, 4, "m".to_string()));
        // Committed with v2, which carries no leader epoch.
        assert_eq!(fetch_v8(&b, "t", 1).await, (77, -1, "s".to_string()));
        let r: DeleteGroupsResponse = call(&b, ApiKey::DeleteGroups, 2, &del).await;
        assert_eq!(r.results[0].error_code, errors::NONE);
        assert_eq!(fetch_v8(&b, "t", 0).await, (-1, -1, String::new()));
    }

    #[tokio::test]
    async fn every_served_version_encodes() {
        // Proves each group API answers every version we advertise with a frame that decodes
        // (no field set that the version lacks), including the pending JoinGroup path.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        for v in 0..=6 {
            let mut fc = FindCoordinatorRequest::default();
            if v >= 4 {
                fc.coordinator_keys = vec![sb("g")];
            } else {
                fc.key = sb("g");
            }
            let _: FindCoordinatorResponse = call(&b, ApiKey::FindCoordinator, v, &fc).await;
        }
        for v in 0..=9i16 {
            let mut j = join_request("");
            j.group_id = sb(format!("g{v}")).into();
            let r: JoinGroupResponse = call(&b, ApiKey::JoinGroup, v, &j).await;
            let r = if r.error_code == errors::MEMBER_ID_REQUIRED {
                j.member_id = r.member_id.clone();
                call::<_, JoinGroupResponse>(&b, ApiKey::JoinGroup, v, &j).await
            } else {
                r
            };
            assert_eq!(r.error_code, errors::NONE, "JoinGroup v{v}");
            let gen = r.generation_id;
            let member = r.member_id.clone();
            for sv in 0..=5 {
                let mut s = SyncGroupRequest::default();
                s.group_id = j.group_id.clone();
                s.generation_id = gen;
                s.member_id = member.clone();
                let r: SyncGroupResponse = call(&b, ApiKey::SyncGroup, sv, &s).await;
                assert_eq!(r.error_code, errors::NONE, "SyncGroup v{sv}");
            }
            for hv in 0..=4 {
                let mut h = HeartbeatRequest::default();
                h.group_id = j.group_id.clone();
                h.generation_id = gen;
                h.member_id = member.clone();
                let r: HeartbeatResponse = call(&b, ApiKey::Heartbeat, hv, &h).await;
                assert_eq!(r.error_code, errors::NONE);
            }
        }
        for v in 0..=5 {
            let _: ListGroupsResponse = call(&b, ApiKey::ListGroups, v, &ListGroupsRequest::default()).await;
            let mut d = DescribeGroupsRequest::default();
            d.groups = vec![sb("g9").into()];
            let r: DescribeGroupsResponse = call(&b, ApiKey::DescribeGroups, v, &d).await;
            assert_eq!(r.groups[0].group_state.as_str(), "Stable");
            let mut l = LeaveGroupRequest::default();
            l.group_id = sb("nobody").into();
            if v >= 3 {
                let mut m = leave_group_request::MemberIdentity::default();
                m.member_id = sb("x");
                l.members = vec![m];
            } else {
                l.member_id = sb("x");
            }
            let _: LeaveGroupResponse = call(&b, ApiKey::LeaveGroup, v, &l).await;
        }
        for v in 2..=9 {
            let _: OffsetCommitResponse =
                call(&b, ApiKey::OffsetCommit, v, &commit_request("", -1, &[("t", 0, 1, "")])).await;
        }
        for v in 1..=9 {
            let mut f = OffsetFetchRequest::default();
            if v >= 8 {
                let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
                g.group_id = sb("g").into();
                f.groups = vec![g];
            } else {
                f.group_id = sb("g").into();
                f.topics = Some(Vec::new());
            }
            let _: OffsetFetchResponse = call(&b, ApiKey::OffsetFetch, v, &f).await;
        }
        for v in 0..=2 {
            let mut d = DeleteGroupsRequest::default();
            d.groups_names = vec![sb("zz").into()];
            let _: DeleteGroupsResponse = call(&b, ApiKey::DeleteGroups, v, &d).await;
        }
    }

    #[tokio::test]
    async fn follower_waits_for_leader_sync_and_timer_drives_deadlines() {
        // Proves a follower's SyncGroup future resolves only after the leader's, a join
        // future resolves when the rebalance completes, and `Groups::tick` reports deadlines.
        let disk = MemDisk::new();
        let b = open_broker(&disk);
        let r: JoinGroupResponse = call(&b, ApiKey::JoinGroup, 3, &join_request("")).await;
        let leader = r.member_id.to_string();
        // Second member (v3: no KIP-394 round trip) forces a rebalance; its join waits.
        let Reply::Wait(second) = b.handle(frame(ApiKey::JoinGroup, 3, &join_request(""))) else {
            panic!("join should wait")
        };
        let Reply::Wait(leader_join) = b.handle(frame(ApiKey::JoinGroup, 3, &join_request(&leader))) else { panic!() };
        let mut lj = leader_join.await;
        lj.advance(4);
        let _ = ResponseHeader::decode(&mut lj, 0).unwrap();
        let lj = JoinGroupResponse::decode(&mut lj, 3).unwrap();
        assert_eq!(lj.members.len(), 2);
        let mut fj = second.await;
        fj.advance(4);
        let _ = ResponseHeader::decode(&mut fj, 0).unwrap();
        let fj = JoinGroupResponse::decode(&mut fj, 3).unwrap();
        let follower = fj.member_id.to_string();
        let mut s = SyncGroupRequest::default();
        s.group_id = sb("g").into();
        s.generation_id = lj.generation_id;
        s.member_id = sb(follower.clone());
        let Reply::Wait(follower_sync) = b.handle(frame(ApiKey::SyncGroup, 3, &s)) else { panic!() };
        let mut a = sync_group_request::SyncGroupRequestAssignment::default();
        a.member_id = sb(follower);
        a.assignment = Bytes::from_static(b"F");
        s.member_id = sb(leader);
        s.assignments = vec![a];
        let _: SyncGroupResponse = call(&b, ApiKey::SyncGroup, 3, &s).await;
        let mut fs = follower_sync.await;
        fs.advance(4);
        let _ = ResponseHeader::decode(&mut fs, 0).unwrap();
        assert_eq!(SyncGroupResponse::decode(&mut fs, 3).unwrap().assignment.as_ref(), b"F");
        let now = runtime::now_ms();
        let next = b.groups.tick(now).expect("session deadlines");
        assert!(next > now && next <= now + 10_000);
    }
}
