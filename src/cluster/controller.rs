//! The controller node's network shell: it owns a [`ControllerQuorum`] and an
//! [`ActiveController`], ticks the quorum, moves Raft messages between controllers, and answers
//! brokers' heartbeats, metadata fetches, ISR changes and admin requests.
//!
//! Invariants:
//! - The quorum is only touched under `inner`'s lock, never across an await; every call that
//!   may produce work is followed by [`ControllerNode::drive`], which persists (inside the core),
//!   sends messages and publishes the new applied index.
//! - Only the Raft leader answers broker requests that change metadata; others answer
//!   `NotController` with the leader they know. Any controller serves its committed image.
//! - Peer queues are bounded ([`PEER_QUEUE_MAX`]); Raft tolerates the messages dropped when a
//!   peer is slow or down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::rpc::{ControllerRequest, ControllerResponse, VoterState};
use super::transport::{read_frame, write_frame};
use crate::config::{validate_topic_config, BrokerConfig};
use crate::controller::{
    decode_message, encode_message, ActiveController, ControllerError, ControllerQuorum, MetadataImage, MetadataRecord,
    RegisterBrokerRequest,
};
use crate::protocol::errors;
use crate::runtime::{self, watch, Disk};

/// Raft messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_MAX: usize = 1024;
/// Longest a broker's metadata fetch waits for a change.
pub const METADATA_WAIT_MS_MAX: u32 = 5_000;
/// How long an admin request waits for its records to commit.
pub const ADMIN_COMMIT_TIMEOUT_MS: u64 = 10_000;
/// Least time a newly elected controller waits for heartbeats from brokers it has not heard
/// from before fencing them; see [`new_controller_grace_ms`].
pub const NEW_CONTROLLER_GRACE_MS: i64 = 450;

/// How long a newly elected controller gives brokers it has not heard from: one heartbeat
/// request timeout plus two intervals (a broker whose heartbeat is stuck on the old controller,
/// partitioned away without closing the connection, gives up on it and reaches us), at least
/// [`NEW_CONTROLLER_GRACE_MS`], at most the session timeout. The broker of the controller we
/// replaced is not given this grace (see the election code).
pub fn new_controller_grace_ms(config: &crate::config::BrokerConfig) -> i64 {
    let interval = config.int_value("broker.heartbeat.interval.ms");
    let grace = crate::cluster::agent::heartbeat_request_timeout_ms(config) + 2 * interval;
    grace.max(NEW_CONTROLLER_GRACE_MS).min(config.int_value("broker.session.timeout.ms"))
}
/// How often the leader checks broker sessions.
pub const SESSION_CHECK_INTERVAL_MS: i64 = 50;
/// How long the periodic session check waits before proposing the same changes again when
/// nothing has been applied since (a proposal lost with a leadership change is retried then).
pub const SESSION_CHECK_REPROPOSE_MS: i64 = 1_000;

struct Inner {
    quorum: ControllerQuorum,
    /// The last active controller this node knew of (to detect who it replaced).
    known_leader: Option<u64>,
    /// Set when the quorum failed (storage): the next tick reopens it from disk.
    failed: bool,
    last_preferred_election_ms: i64,
    active: Option<ActiveController>,
    image_cache: Option<(u64, Bytes)>,
    last_session_check_ms: i64,
    /// The periodic session check's last proposals, the applied index they were computed from
    /// and when: the same changes are not proposed again while nothing was applied meanwhile,
    /// for [`SESSION_CHECK_REPROPOSE_MS`] (a quorum that cannot commit otherwise collects a copy
    /// per check, each rejected as stale once one commits).
    last_session_proposal: Option<(Vec<MetadataRecord>, u64, i64)>,
    seed: u64,
}

/// A running controller.
pub struct ControllerNode {
    config: Arc<BrokerConfig>,
    disk: Arc<dyn Disk>,
    dir: std::path::PathBuf,
    inner: Mutex<Inner>,
    applied: watch::Sender<u64>,
    peers: BTreeMap<u64, mpsc::Sender<Bytes>>,
    /// What this node last heard from each peer voter, for DescribeQuorum (only meaningful
    /// while this node leads: followers' append responses carry their matched offset).
    voter_progress: Mutex<BTreeMap<u64, VoterState>>,
}

/// Errors starting a controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerNodeError {
    /// The quorum could not open its log.
    #[error("controller quorum: {0}")]
    Quorum(#[from] ControllerError),
    /// The controller listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ControllerNode {
    /// Opens the quorum under `<log.dir>/__cluster_metadata`, binds the controller listener and
    /// starts the tick, peer and accept tasks.
    pub async fn start(
        config: Arc<BrokerConfig>,
        disk: Arc<dyn Disk>,
    ) -> Result<Arc<ControllerNode>, ControllerNodeError> {
        let voters = config.controller_quorum_voters();
        let me = config.node_id() as u64;
        let dir = std::path::PathBuf::from(config.log_dir()).join("__cluster_metadata");
        let seed = runtime::random_u64() ^ me;
        let quorum =
            ControllerQuorum::open(me, voters.iter().map(|v| v.id as u64).collect(), disk.clone(), &dir, seed)?;
        let applied = watch::channel(quorum.applied_index()).0;
        let listener_cfg = config.controller_listener().expect("checked at config load");
        let addr = format!("{}:{}", listener_cfg.host, listener_cfg.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ControllerNodeError::Bind { addr: addr.clone(), source })?;
        let mut peers = BTreeMap::new();
        let mut peer_tasks = Vec::new();
        for v in voters.iter().filter(|v| v.id as u64 != me) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            peers.insert(v.id as u64, tx);
            peer_tasks.push((format!("{}:{}", v.host, v.port), rx));
        }
        let node = Arc::new(ControllerNode {
            config: config.clone(),
            disk,
            dir,
            inner: Mutex::new(Inner {
                quorum,
                known_leader: None,
                failed: false,
                last_preferred_election_ms: 0,
                active: None,
                image_cache: None,
                last_session_check_ms: 0,
                last_session_proposal: None,
                seed,
            }),
            applied,
            peers,
            voter_progress: Mutex::new(BTreeMap::new()),
        });
        for (addr, rx) in peer_tasks {
            tokio::spawn(peer_sender(addr, rx));
        }
        let n = node.clone();
        tokio::spawn(async move { n.tick_loop().await });
        let n = node.clone();
        tokio::spawn(async move { n.accept_loop(listener).await });
        tracing::info!(node_id = me, %addr, "controller started");
        Ok(node)
    }

    /// Processes the quorum's ready work: sends messages, publishes the applied index, and
    /// creates or drops the active-controller state on leadership changes.
    fn drive(&self, inner: &mut Inner) {
        for _ in 0..crate::controller::quorum::READY_ROUNDS_MAX {
            if inner.failed {
                return;
            }
            let ready = match inner.quorum.ready() {
                Ok(r) => r,
                Err(e) => {
                    // Never carry on after a storage failure: the next tick reopens the quorum
                    // from what is durable on disk.
                    tracing::error!(error = %e, "controller quorum failed; reopening it from disk");
                    inner.failed = true;
                    inner.active = None;
                    return;
                }
            };
            let idle = ready.messages.is_empty() && ready.committed.is_empty() && !ready.snapshot_installed;
            for (to, bytes) in ready.messages {
                if let Some(tx) = self.peers.get(&to) {
                    let _ = tx.try_send(Bytes::from(bytes));
                }
            }
            for r in &ready.rejected {
                tracing::debug!(index = r.index, error = %r.error, "committed record rejected by the image");
            }
            if inner.quorum.is_leader() {
                if inner.active.is_none() {
                    tracing::info!(
                        node_id = inner.quorum.node_id(),
                        term = inner.quorum.term(),
                        "became active controller"
                    );
                    let mut a = ActiveController::new(inner.seed ^ inner.quorum.term());
                    a.unclean_leader_election_default = self.config.bool_value("unclean.leader.election.enable");
                    // A new active controller has no heartbeat history. Rather than granting every
                    // broker a whole session timeout (which would delay fencing a broker that died
                    // with the old controller), back-date their sessions so that live brokers,
                    // which heartbeat every few hundred ms, have `new_controller_grace_ms` to reach us.
                    let now = runtime::now_ms();
                    let timeout = self.config.int_value("broker.session.timeout.ms");
                    let grace = new_controller_grace_ms(&self.config);
                    let seen = now - timeout + grace.min(timeout);
                    let image = inner.quorum.image();
                    // The controller we replaced stopped answering Raft for a whole election
                    // timeout; in combined mode its broker is most likely dead too, so expire
                    // its session at once (a live one heartbeats again and is unfenced).
                    let replaced = inner.known_leader.filter(|l| *l != inner.quorum.node_id()).map(|l| l as i32);
                    for b in image.brokers.values().filter(|b| !b.fenced) {
                        let at = if Some(b.broker_id) == replaced { now - timeout - 1 } else { seen };
                        let _ = a.on_heartbeat(image, b.broker_id, b.incarnation, at);
                    }
                    if let Some(r) = replaced {
                        tracing::info!(broker_id = r, "expiring the session of the replaced controller's broker");
                    }
                    inner.active = Some(a);
                    inner.last_session_check_ms = now;
                    inner.last_session_proposal = None;
                    inner.last_preferred_election_ms = now;
                }
            } else {
                inner.active = None;
            }
            if let Some(l) = inner.quorum.leader_id().filter(|l| *l != 0) {
                inner.known_leader = Some(l);
            }
            let applied = inner.quorum.applied_index();
            if applied != *self.applied.borrow() {
                self.applied.send_replace(applied);
            }
            if idle {
                break;
            }
        }
    }

    async fn tick_loop(self: Arc<Self>) {
        let tick = Duration::from_millis(self.config.int_value("controller.quorum.tick.ms") as u64);
        let session_timeout = self.config.int_value("broker.session.timeout.ms");
        loop {
            tokio::time::sleep(tick).await;
            let mut inner = self.inner.lock().unwrap();
            if inner.failed {
                let voters = self.config.controller_quorum_voters().iter().map(|v| v.id as u64).collect();
                let me = self.config.node_id() as u64;
                match ControllerQuorum::open(me, voters, self.disk.clone(), &self.dir, inner.seed.wrapping_add(1)) {
                    Ok(q) => {
                        inner.quorum = q;
                        inner.failed = false;
                        tracing::info!("controller quorum reopened from disk");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reopening the controller quorum failed; retrying");
                        continue;
                    }
                }
            }
            inner.quorum.tick();
            self.drive(&mut inner);
            let now = runtime::now_ms();
            let rebalance_ms = self.config.int_value("leader.imbalance.check.interval.seconds").saturating_mul(1000);
            if inner.quorum.is_leader()
                && self.config.bool_value("auto.leader.rebalance.enable")
                && now - inner.last_preferred_election_ms >= rebalance_ms
            {
                inner.last_preferred_election_ms = now;
                let Inner { quorum, active, .. } = &mut *inner;
                if let Some(a) = active.as_ref() {
                    for r in a.preferred_leader_election(quorum.image()) {
                        tracing::info!(record = ?r, "controller: preferred leader election");
                        let _ = quorum.propose(&r);
                    }
                }
                self.drive(&mut inner);
            }
            if inner.quorum.is_leader() && now - inner.last_session_check_ms >= SESSION_CHECK_INTERVAL_MS {
                inner.last_session_check_ms = now;
                let Inner { quorum, active, last_session_proposal, .. } = &mut *inner;
                if let Some(a) = active.as_mut() {
                    let records = a.check_sessions(quorum.image(), now, session_timeout);
                    let applied = quorum.applied_index();
                    let repeat = last_session_proposal.as_ref().is_some_and(|(r, at_index, at_ms)| {
                        *r == records && *at_index == applied && now - at_ms < SESSION_CHECK_REPROPOSE_MS
                    });
                    if !records.is_empty() && !repeat {
                        for r in &records {
                            tracing::info!(record = ?r, "controller: session check");
                            if let Err(e) = quorum.propose(r) {
                                tracing::warn!(error = %e, "could not propose fencing record");
                            }
                        }
                        *last_session_proposal = Some((records, applied, now));
                    }
                }
                self.drive(&mut inner);
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let n = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = n.serve(stream).await {
                            tracing::debug!(error = %e, "controller connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "controller accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream) -> Result<(), super::transport::TransportError> {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut heartbeating: Option<(i32, u64)> = None;
        let result = self.serve_frames(&mut rd, &mut wr, &mut heartbeating).await;
        if let Some((broker_id, incarnation)) = heartbeating {
            self.on_broker_disconnect(broker_id, incarnation);
        }
        result
    }

    /// A broker's heartbeat connection to the active controller closed. A live broker keeps
    /// that connection open, so this usually means its process died (the kernel closes the
    /// sockets of a killed process at once): expire its session now so the next session check
    /// fences it, instead of waiting out `broker.session.timeout.ms`. A live broker that merely
    /// reconnected heartbeats again within milliseconds and is unfenced.
    fn on_broker_disconnect(&self, broker_id: i32, incarnation: u64) {
        let mut guard = self.inner.lock().unwrap();
        let inner = &mut *guard;
        let Inner { quorum, active, .. } = inner;
        let Some(active) = active.as_mut() else { return };
        let image = quorum.image();
        if image.brokers.get(&broker_id).is_some_and(|b| b.incarnation == incarnation && !b.fenced) {
            let timeout = self.config.int_value("broker.session.timeout.ms");
            let now = runtime::now_ms();
            let _ = active.on_heartbeat(image, broker_id, incarnation, now - timeout - 1);
            tracing::info!(broker_id, "broker's controller connection closed; expiring its session");
            // Fence now rather than at the next session check: clients are already looking
            // for the new leaders.
            let records = active.check_sessions(image, now, timeout);
            for r in &records {
                if let Err(e) = quorum.propose(r) {
                    tracing::warn!(error = %e, "could not propose fencing record");
                }
            }
            self.drive(inner);
        }
    }

    async fn serve_frames(
        &self,
        rd: &mut tokio::io::ReadHalf<TcpStream>,
        wr: &mut tokio::io::WriteHalf<TcpStream>,
        heartbeating: &mut Option<(i32, u64)>,
    ) -> Result<(), super::transport::TransportError> {
        while let Some(body) = read_frame(rd).await? {
            let (cid, req) = ControllerRequest::decode(body)?;
            if let ControllerRequest::Heartbeat { broker_id, incarnation, want_shutdown: false, .. } = &req {
                *heartbeating = Some((*broker_id, *incarnation));
            }
            if let ControllerRequest::Raft { message } = req {
                match decode_message(&message) {
                    Ok(msg) => {
                        let mut inner = self.inner.lock().unwrap();
                        self.note_voter_message(&inner, &msg);
                        if let Err(e) = inner.quorum.step(msg) {
                            tracing::debug!(error = %e, "raft step refused a message");
                        }
                        self.drive(&mut inner);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable raft message"),
                }
                continue;
            }
            let resp = self.handle(req).await;
            if matches!(resp, ControllerResponse::NotController { .. }) {
                *heartbeating = None;
            }
            write_frame(wr, &resp.encode(cid)).await?;
        }
        Ok(())
    }

    /// Records what a Raft message says about its sender's progress (for DescribeQuorum).
    fn note_voter_message(&self, inner: &Inner, msg: &raft::eraftpb::Message) {
        let now = runtime::now_ms();
        let mut progress = self.voter_progress.lock().unwrap();
        let v = progress.entry(msg.from).or_insert(VoterState {
            replica_id: msg.from as i32,
            log_end_offset: -1,
            last_fetch_timestamp: -1,
            last_caught_up_timestamp: -1,
        });
        v.last_fetch_timestamp = now;
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgAppendResponse && !msg.reject {
            v.log_end_offset = v.log_end_offset.max(msg.index as i64);
        }
        if v.log_end_offset >= inner.quorum.applied_index() as i64 {
            v.last_caught_up_timestamp = now;
        }
    }

    /// DescribeQuorum: the leader, its term, its applied offset and what it knows of each voter.
    fn describe_quorum(&self) -> ControllerResponse {
        let inner = self.inner.lock().unwrap();
        if inner.active.is_none() {
            return Self::not_controller(&inner);
        }
        let me = inner.quorum.node_id();
        let high_watermark = inner.quorum.applied_index() as i64;
        let now = runtime::now_ms();
        let progress = self.voter_progress.lock().unwrap();
        let voters = inner
            .quorum
            .voters()
            .iter()
            .map(|&id| match progress.get(&id) {
                _ if id == me => VoterState {
                    replica_id: id as i32,
                    log_end_offset: high_watermark,
                    last_fetch_timestamp: now,
                    last_caught_up_timestamp: now,
                },
                Some(v) => v.clone(),
                None => VoterState {
                    replica_id: id as i32,
                    log_end_offset: -1,
                    last_fetch_timestamp: -1,
                    last_caught_up_timestamp: -1,
                },
            })
            .collect();
        ControllerResponse::Quorum {
            leader_id: me as i32,
            leader_epoch: inner.quorum.term().min(i32::MAX as u64) as i32,
            high_watermark,
            voters,
        }
    }

    fn not_controller(inner: &Inner) -> ControllerResponse {
        ControllerResponse::NotController { leader_hint: inner.quorum.leader_id().map(|l| l as i32).unwrap_or(-1) }
    }

    /// Proposes `records` on the leader; returns the response to send on failure.
    fn propose_all(&self, inner: &mut Inner, records: &[MetadataRecord]) -> Result<(), ControllerResponse> {
        for r in records {
            if let Err(e) = inner.quorum.propose(r) {
                return Err(match e {
                    ControllerError::NotLeader { .. } => Self::not_controller(inner),
                    other => done(errors::REQUEST_TIMED_OUT, other.to_string()),
                });
            }
        }
        self.drive(inner);
        Ok(())
    }

    /// Waits until `pred` holds on the committed image, or the admin timeout passes.
    async fn wait_for(&self, pred: impl Fn(&MetadataImage) -> bool) -> bool {
        let mut rx = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ADMIN_COMMIT_TIMEOUT_MS);
        loop {
            if pred(self.inner.lock().unwrap().quorum.image()) {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                return false;
            }
        }
    }

    async fn handle(&self, req: ControllerRequest) -> ControllerResponse {
        let now = runtime::now_ms();
        match req {
            ControllerRequest::Raft { .. } => unreachable!("handled in serve"),
            ControllerRequest::DescribeQuorum => self.describe_quorum(),
            ControllerRequest::FetchMetadata { from_index, max_wait_ms } => {
                // Only the active controller serves metadata: a controller that just restarted
                // replays an old committed prefix, and a broker must never act on a stale image
                // (it could believe it still leads a partition).
                {
                    let inner = self.inner.lock().unwrap();
                    if inner.active.is_none() {
                        return Self::not_controller(&inner);
                    }
                }
                let mut rx = self.applied.subscribe();
                let wait = Duration::from_millis(max_wait_ms.min(METADATA_WAIT_MS_MAX) as u64);
                if *rx.borrow_and_update() <= from_index {
                    let _ = tokio::time::timeout(wait, rx.changed()).await;
                }
                let mut inner = self.inner.lock().unwrap();
                let applied = inner.quorum.applied_index();
                if applied <= from_index {
                    return ControllerResponse::Metadata { applied_index: applied, image: None };
                }
                let image = match &inner.image_cache {
                    Some((i, b)) if *i == applied => b.clone(),
                    _ => {
                        let b = Bytes::from(inner.quorum.image().encode());
                        inner.image_cache = Some((applied, b.clone()));
                        b
                    }
                };
                ControllerResponse::Metadata { applied_index: applied, image: Some(image) }
            }
            ControllerRequest::Heartbeat { broker_id, incarnation, host, port, want_shutdown, metadata_index: _ } => {
                let records = {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    let Some(active) = inner.active.as_mut() else { return Self::not_controller(inner) };
                    let image = inner.quorum.image();
                    let registered = image.brokers.get(&broker_id);
                    let mut records = match registered {
                        Some(b) if b.incarnation == incarnation && b.host == host && b.port == port => {
                            match active.on_heartbeat(image, broker_id, incarnation, now) {
                                Ok(r) => r,
                                Err(e) => return done(e.error_code(), e.to_string()),
                            }
                        }
                        _ => active.register_broker(
                            image,
                            &RegisterBrokerRequest { broker_id, incarnation, host: host.clone(), port, rack: None },
                            now,
                        ),
                    };
                    if want_shutdown && image.brokers.get(&broker_id).is_some_and(|b| !b.fenced) {
                        match active.controlled_shutdown(image, broker_id) {
                            Ok(r) => records.extend(r),
                            Err(e) => return done(e.error_code(), e.to_string()),
                        }
                    }
                    if let Err(resp) = self.propose_all(inner, &records) {
                        return resp;
                    }
                    records
                };
                let _ = records;
                let inner = self.inner.lock().unwrap();
                let image = inner.quorum.image();
                let fenced = image.brokers.get(&broker_id).is_none_or(|b| b.fenced);
                let leads_any = image.topics.values().any(|t| t.partitions.values().any(|p| p.leader == broker_id));
                ControllerResponse::Heartbeat { fenced, shutdown_ok: want_shutdown && !leads_any }
            }
            ControllerRequest::AlterPartition {
                broker_id,
                topic_id,
                partition,
                leader_epoch,
                partition_epoch,
                new_isr,
            } => {
                {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    let Some(active) = inner.active.as_ref() else { return Self::not_controller(inner) };
                    let records = match active.alter_partition(
                        inner.quorum.image(),
                        topic_id,
                        partition,
                        broker_id,
                        leader_epoch,
                        partition_epoch,
                        &new_isr,
                    ) {
                        Ok(r) => r,
                        Err(e) => return done(e.error_code(), e.to_string()),
                    };
                    if let Err(resp) = self.propose_all(inner, &records) {
                        return resp;
                    }
                }
                let committed = self
                    .wait_for(|img| {
                        img.partition(&topic_id, partition).is_none_or(|p| p.partition_epoch > partition_epoch)
                    })
                    .await;
                if committed {
                    done(errors::NONE, String::new())
                } else {
                    done(errors::REQUEST_TIMED_OUT, "ISR change not committed in time".into())
                }
            }
            ControllerRequest::CreateTopic { name, partitions, replication_factor, configs, validate_only } => {
                for (k, v) in &configs {
                    if let Err(m) = validate_topic_config(k, v) {
                        return done(errors::INVALID_CONFIG, m);
                    }
                }
                let partitions = if partitions == -1 { self.config.num_partitions() } else { partitions };
                let rf = if replication_factor == -1 {
                    self.config.default_replication_factor()
                } else {
                    replication_factor
                };
                {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    let Inner { quorum, active, .. } = inner;
                    let Some(active) = active.as_mut() else { return Self::not_controller(inner) };
                    let records = match active.create_topic(
                        quorum.image(),
                        &name,
                        partitions,
                        rf as i32,
                        configs.into_iter().collect(),
                    ) {
                        Ok(r) => r,
                        Err(e) => return done(e.error_code(), e.to_string()),
                    };
                    if validate_only {
                        return done(errors::NONE, String::new());
                    }
                    if let Err(resp) = self.propose_all(inner, &records) {
                        return resp;
                    }
                }
                if self.wait_for(|img| img.topic_by_name(&name).is_some()).await {
                    done(errors::NONE, String::new())
                } else {
                    done(errors::REQUEST_TIMED_OUT, "topic creation not committed in time".into())
                }
            }
            ControllerRequest::DeleteTopic { name } => {
                {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    if inner.active.is_none() {
                        return Self::not_controller(inner);
                    }
                    let Some(t) = inner.quorum.image().topic_by_name(&name) else {
                        return done(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("topic '{name}' does not exist"));
                    };
                    let rec = MetadataRecord::DeleteTopic { topic_id: t.topic_id };
                    if let Err(resp) = self.propose_all(inner, &[rec]) {
                        return resp;
                    }
                }
                if self.wait_for(|img| img.topic_by_name(&name).is_none()).await {
                    done(errors::NONE, String::new())
                } else {
                    done(errors::REQUEST_TIMED_OUT, "topic deletion not committed in time".into())
                }
            }
            ControllerRequest::AlterTopicConfig { name, configs, validate_only } => {
                for (k, v) in &configs {
                    if let Err(m) = validate_topic_config(k, v) {
                        return done(errors::INVALID_CONFIG, m);
                    }
                }
                let want: BTreeMap<String, String> = configs.into_iter().collect();
                {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    if inner.active.is_none() {
                        return Self::not_controller(inner);
                    }
                    let Some(t) = inner.quorum.image().topic_by_name(&name) else {
                        return done(errors::UNKNOWN_TOPIC_OR_PARTITION, format!("topic '{name}' does not exist"));
                    };
                    if validate_only {
                        return done(errors::NONE, String::new());
                    }
                    let rec = MetadataRecord::TopicConfig { topic_id: t.topic_id, configs: want.clone() };
                    if let Err(resp) = self.propose_all(inner, &[rec]) {
                        return resp;
                    }
                }
                if self.wait_for(|img| img.topic_by_name(&name).is_none_or(|t| t.configs == want)).await {
                    done(errors::NONE, String::new())
                } else {
                    done(errors::REQUEST_TIMED_OUT, "config change not committed in time".into())
                }
            }
            ControllerRequest::CreatePartitions { name, count, validate_only } => {
                {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    let Inner { quorum, active, .. } = inner;
                    let Some(active) = active.as_mut() else { return Self::not_controller(inner) };
                    let records = match active.create_partitions(quorum.image(), &name, count) {
                        Ok(r) => r,
                        Err(e) => return done(e.error_code(), e.to_string()),
                    };
                    if validate_only {
                        return done(errors::NONE, String::new());
                    }
                    if let Err(resp) = self.propose_all(inner, &records) {
                        return resp;
                    }
                }
                let grown = |img: &MetadataImage| {
                    img.topic_by_name(&name).is_some_and(|t| t.partitions.len() >= count as usize)
                };
                if self.wait_for(grown).await {
                    done(errors::NONE, String::new())
                } else {
                    done(errors::REQUEST_TIMED_OUT, "partition creation not committed in time".into())
                }
            }
            ControllerRequest::AllocateProducerIds { broker_id: _, count } => {
                let (first, next) = {
                    let mut guard = self.inner.lock().unwrap();
                    let inner = &mut *guard;
                    if inner.active.is_none() {
                        return Self::not_controller(inner);
                    }
                    let first = inner.quorum.image().next_producer_id;
                    let next = first + count.max(1) as i64;
                    if let Err(resp) = self.propose_all(inner, &[MetadataRecord::AllocateProducerIds { next }]) {
                        return resp;
                    }
                    (first, next)
                };
                if self.wait_for(|img| img.next_producer_id >= next).await {
                    ControllerResponse::ProducerIds { first, count: (next - first) as i32 }
                } else {
                    done(errors::REQUEST_TIMED_OUT, "producer id block not committed in time".into())
                }
            }
        }
    }
}

fn done(error_code: i16, message: String) -> ControllerResponse {
    ControllerResponse::Done { error_code, message }
}

/// Sends queued Raft messages to one peer, reconnecting as needed. Messages that cannot be
/// sent are dropped (Raft retransmits).
async fn peer_sender(addr: String, mut rx: mpsc::Receiver<Bytes>) {
    let mut conn: Option<TcpStream> = None;
    while let Some(msg) = rx.recv().await {
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                _ => continue,
            }
        }
        let frame = ControllerRequest::Raft { message: msg }.encode(0);
        if let Some(s) = conn.as_mut() {
            if write_frame(s, &frame).await.is_err() {
                conn = None;
            }
        }
    }
}

/// Encodes a raft message for the wire (re-exported for tests).
pub fn raft_frame(msg: &raft::eraftpb::Message) -> Bytes {
    ControllerRequest::Raft { message: Bytes::from(encode_message(msg)) }.encode(0)
}
