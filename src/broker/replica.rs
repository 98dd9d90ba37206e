//! Cluster mode inside the broker: applying the controller's metadata image to local
//! partitions (creating, deleting, becoming leader or follower), ISR change proposals, and
//! forwarding admin requests to the controller.
//!
//! Invariants:
//! - Roles change only here, under the partition's lock, and only to match the newest image:
//!   a replica leads exactly when the image names it leader, at the image's leader epoch.
//! - A role change wakes every waiter on the partition (acks=all, long polls) so none waits for
//!   a leadership it no longer has.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use uuid::Uuid;

use super::{Broker, Partition, Role, Topic};
use crate::cluster::rpc::{ControllerRequest, ControllerResponse};
use crate::cluster::transport::ControllerClient;
use crate::controller::{MetadataImage, PartitionImage};
use crate::protocol::errors;
use crate::replication::{FollowerState, LeaderEpochCache, LeaderInit, LeaderState};
use crate::runtime::{self, watch};

/// How long a forwarded admin request keeps retrying while no controller is reachable.
pub const FORWARD_RETRY_MS: u64 = 10_000;

/// Cluster-mode state of a broker.
pub struct ClusterState {
    /// The newest metadata image applied.
    pub image: RwLock<Arc<MetadataImage>>,
    /// Its log index.
    pub applied_index: std::sync::atomic::AtomicU64,
    /// Bumped whenever a new image is applied.
    pub image_changed: watch::Sender<u64>,
    /// Changes on every process start.
    pub incarnation: u64,
    /// Client for controller requests made from request handlers.
    pub controller: tokio::sync::Mutex<ControllerClient>,
    /// When this broker first saw each currently fenced broker fenced (ms); see
    /// [`FENCED_BROKER_LISTED_MS`](crate::limits::FENCED_BROKER_LISTED_MS).
    pub fenced_since: Mutex<BTreeMap<i32, i64>>,
}

impl Broker {
    /// The cluster state, in cluster mode.
    pub fn cluster(&self) -> Option<&ClusterState> {
        self.cluster.as_ref()
    }

    /// The newest metadata image (cluster mode).
    pub fn image(&self) -> Option<Arc<MetadataImage>> {
        self.cluster.as_ref().map(|c| c.image.read().unwrap().clone())
    }

    /// Applies a new metadata image: opens partitions assigned here, deletes those no longer
    /// assigned, and makes each local replica lead or follow as the image says.
    pub fn apply_image(&self, image: MetadataImage, applied_index: u64) {
        let Some(cluster) = self.cluster.as_ref() else { return };
        let me = self.config.node_id();
        let now = runtime::now_ms();
        let _guard = self.admin_lock.lock().unwrap();
        let current = cluster.applied_index.load(Ordering::Acquire);
        if applied_index < current {
            tracing::warn!(applied_index, current, "ignoring an older metadata image");
            return;
        }
        {
            let mut since = cluster.fenced_since.lock().unwrap();
            since.retain(|id, _| image.brokers.get(id).is_some_and(|b| b.fenced));
            for b in image.brokers.values().filter(|b| b.fenced) {
                since.entry(b.broker_id).or_insert(now);
            }
        }
        // Lead only on an image that registers this process's incarnation. An image from before
        // our registration (a new active controller may serve one) can still name us leader at an
        // epoch our previous incarnation led; after a power loss our log may lack the tail of
        // that leadership that followers still hold, and appending at the same epoch would put
        // two records at one offset that no epoch check can tell apart. The controller moves
        // leaderships away before it registers a new incarnation, so every image that registers
        // us already names fresh epochs.
        let may_lead = image.brokers.get(&me).is_some_and(|b| b.incarnation == cluster.incarnation);
        let old = self.topics.read().unwrap().clone();
        let mut next: BTreeMap<String, Arc<Topic>> = BTreeMap::new();
        for t in image.topics.values() {
            let tc = self.config.topic_config(&t.configs);
            let prev = old.get(&t.name).filter(|p| p.id == t.topic_id);
            let mut parts = BTreeMap::new();
            for (&idx, pi) in &t.partitions {
                if !pi.replicas.contains(&me) {
                    continue;
                }
                let existing = prev.and_then(|p| p.partitions.get(&idx)).cloned();
                let part = match existing {
                    Some(p) => p,
                    None => match self.open_partition(&t.name, idx, &tc, now) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(topic = %t.name, partition = idx, error = %e, "cannot open replica");
                            continue;
                        }
                    },
                };
                if prev.is_some_and(|p| p.config != tc) {
                    part.state.lock().unwrap().log.set_config(super::log_config(&tc));
                }
                self.reconcile_role(&part, pi, may_lead, now);
                parts.insert(idx, part);
            }
            next.insert(
                t.name.clone(),
                Arc::new(Topic {
                    name: t.name.clone(),
                    id: t.topic_id,
                    config: tc,
                    partition_count: t.partitions.len() as i32,
                    partitions: parts,
                }),
            );
        }
        // Replicas that went away: the topic was deleted (or recreated) or moved off this broker.
        for t in old.values() {
            let kept = next.get(&t.name).filter(|n| n.id == t.id);
            for (idx, p) in &t.partitions {
                if kept.is_some_and(|n| n.partitions.contains_key(idx)) {
                    continue;
                }
                p.deleted.store(true, Ordering::Release);
                p.hw.send_modify(|_| {});
                p.durable.send_modify(|_| {});
                if let Err(e) = crate::log::delete_log(&*self.disk, &p.dir) {
                    tracing::warn!(dir = %p.dir.display(), error = %e, "could not remove a deleted replica");
                }
            }
        }
        *self.topics.write().unwrap() = next;
        *cluster.image.write().unwrap() = Arc::new(image);
        cluster.applied_index.store(applied_index, Ordering::Release);
        cluster.image_changed.send_replace(applied_index);
        self.appended.send_modify(|v| *v += 1);
    }

    /// Makes one local replica match the image: leader, follower or offline (offline instead of
    /// leader when `may_lead` is false).
    fn reconcile_role(&self, p: &Arc<Partition>, pi: &PartitionImage, may_lead: bool, now: i64) {
        let me = self.config.node_id();
        let mut st = p.state.lock().unwrap();
        if st.epochs.is_none() {
            match LeaderEpochCache::open(self.disk.clone(), p.dir.clone()) {
                Ok((mut cache, corrupt)) => {
                    if corrupt.is_some() {
                        tracing::warn!(dir = %p.dir.display(), "leader epoch checkpoint was corrupt; rebuilt empty");
                    }
                    let _ = cache.truncate_from_end(st.log.log_end_offset());
                    st.epochs = Some(cache);
                }
                Err(e) => {
                    tracing::error!(dir = %p.dir.display(), error = %e, "cannot open the leader epoch cache");
                    return;
                }
            }
        }
        let changed = match (&mut st.role, pi.leader) {
            (Role::Leader(l), leader) if leader == me && l.leader_epoch() == pi.leader_epoch => {
                // Same leadership: maybe the ISR changed (our AlterPartition, or a fencing).
                if l.partition_epoch() < pi.partition_epoch {
                    let moved = l.apply_isr(pi.isr.clone(), pi.partition_epoch).unwrap_or(false);
                    let hw = l.high_watermark();
                    if moved {
                        p.publish_hw(hw);
                    }
                }
                false
            }
            (Role::Follower(f), leader) if leader == f.leader_id() && f.leader_epoch() == pi.leader_epoch => false,
            (Role::Offline, leader) if leader == me && !may_lead => false,
            _ => true,
        };
        if !changed {
            return;
        }
        let leo = st.log.log_end_offset();
        let durable = st.log.recovery_point().min(leo);
        let hw = st.high_watermark().min(leo);
        let log_start = st.log.log_start_offset();
        let new_role = if pi.leader == me && !may_lead {
            tracing::info!(topic = %p.topic, partition = p.index, epoch = pi.leader_epoch,
                "not leading from an image that predates this incarnation's registration");
            Role::Offline
        } else if pi.leader == me {
            let init = LeaderInit {
                leader_id: me,
                leader_epoch: pi.leader_epoch,
                partition_epoch: pi.partition_epoch,
                replicas: pi.replicas.clone(),
                isr: pi.isr.clone(),
                log_end_offset: leo,
                durable_log_end_offset: durable,
                high_watermark: hw,
                now_ms: now,
            };
            match LeaderState::new(init, st.epochs.as_mut().expect("opened above")) {
                Ok(l) => {
                    tracing::info!(topic = %p.topic, partition = p.index, epoch = pi.leader_epoch, isr = ?pi.isr,
                        log_end_offset = leo, "became leader");
                    Role::Leader(Box::new(l))
                }
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot become leader");
                    Role::Offline
                }
            }
        } else if pi.leader >= 0 {
            match FollowerState::new(
                pi.leader,
                pi.leader_epoch,
                st.epochs.as_ref().expect("opened above"),
                log_start,
                leo,
                durable,
                hw,
            ) {
                Ok(f) => {
                    tracing::info!(topic = %p.topic, partition = p.index, leader = pi.leader, epoch = pi.leader_epoch,
                        "became follower");
                    Role::Follower(Box::new(f))
                }
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "cannot follow");
                    Role::Offline
                }
            }
        } else {
            Role::Offline
        };
        st.role = new_role;
        // Producer sequences stay: they were rebuilt from the log at open and kept up to date
        // by every append since, as leader and as follower (see `ProducerState::observe_batch`),
        // so a new leader recognises retries of batches its predecessor wrote.
        // Wake acks=all waiters and long polls so they re-check the new role, and restart the
        // published high watermark from this role's: a replica's high watermark is monotonic
        // within one leadership but not across them, and when `publish_hw` still notified only
        // on growth, a former leader that truncated as a follower and led again woke no acks=all
        // waiter until it passed the old leadership's value (cluster-disk seed 511: every probe
        // write timed out after healing). `publish_hw` now notifies on any change, so a value the
        // flusher computed under the old role and publishes after this reset wakes waiters too
        // (they re-check the role and leader epoch under the partition lock).
        let hw = st.high_watermark();
        p.hw.send_modify(|v| *v = hw);
        drop(st);
    }

    /// Sends an ISR change proposed by a leader to the controller, and applies the answer.
    pub(super) fn propose_isr(self: &Arc<Self>, p: Arc<Partition>, isr: Vec<i32>) {
        let Some(cluster) = self.cluster.as_ref() else { return };
        let topic_id = match self.topic(&p.topic) {
            Some(t) => t.id,
            None => return,
        };
        let (leader_epoch, partition_epoch) = match &p.state.lock().unwrap().role {
            Role::Leader(l) => (l.leader_epoch(), l.partition_epoch()),
            _ => return,
        };
        let _ = cluster;
        let b = self.clone();
        tokio::spawn(async move {
            let req = ControllerRequest::AlterPartition {
                broker_id: b.config.node_id(),
                topic_id,
                partition: p.index,
                leader_epoch,
                partition_epoch,
                new_isr: isr.clone(),
            };
            let resp = match b.cluster.as_ref() {
                Some(c) => c.controller.lock().await.call(&req).await,
                None => return,
            };
            // On success the new ISR arrives with the next metadata image (apply_isr there), and
            // only the image resolves a proposal whose fate is unknown: the high watermark keeps
            // waiting for a replica being added (the maximal ISR) until then.
            let code = match &resp {
                Ok(ControllerResponse::Done { error_code, .. }) => Some(*error_code),
                _ => None,
            };
            if code == Some(errors::NONE) {
                return;
            }
            tracing::debug!(topic = %p.topic, partition = p.index, ?isr, outcome = ?resp, "ISR change not accepted");
            // Still the proposal this answer is about? A late answer to an older proposal must not
            // cancel a newer one: that let the high watermark pass a replica whose addition then
            // committed, and that replica, behind and with a failed disk, was elected and the
            // records above its log were lost (cluster-overlap seed 779).
            let still_pending = |l: &LeaderState| {
                l.leader_epoch() == leader_epoch
                    && l.partition_epoch() == partition_epoch
                    && l.pending_isr() == Some(&isr[..])
            };
            let ambiguous = matches!(
                code,
                None | Some(errors::REQUEST_TIMED_OUT)
                    | Some(crate::controller::logic::NOT_CONTROLLER)
                    | Some(crate::controller::logic::INVALID_UPDATE_VERSION)
            );
            if !ambiguous {
                // Refused before it was proposed (ineligible replica, fenced epoch, ...).
                if let Role::Leader(l) = &mut p.state.lock().unwrap().role {
                    if still_pending(l) {
                        l.abort_pending_isr();
                    }
                }
                return;
            }
            // A timeout or a lost controller may still commit it, and a stale partition epoch
            // means the image has news this broker has not applied yet: keep it pending and ask
            // again later, until the image (apply_isr) settles it.
            tokio::time::sleep(std::time::Duration::from_millis(crate::limits::ISR_PROPOSAL_RETRY_MS)).await;
            let again = match &p.state.lock().unwrap().role {
                Role::Leader(l) => still_pending(l),
                _ => false,
            };
            if again {
                b.propose_isr(p.clone(), isr);
            }
        });
    }

    /// One round of ISR maintenance on every partition this broker leads.
    pub fn isr_maintenance(self: &Arc<Self>) {
        let lag = self.config.int_value("replica.lag.time.max.ms");
        let now = runtime::now_ms();
        for t in self.all_topics() {
            for p in t.partitions.values() {
                let proposal = match &mut p.state.lock().unwrap().role {
                    Role::Leader(l) => l.maybe_shrink_isr(now, lag),
                    _ => None,
                };
                if let Some(isr) = proposal {
                    tracing::info!(topic = %p.topic, partition = p.index, ?isr, "proposing ISR shrink");
                    self.propose_isr(p.clone(), isr);
                }
            }
        }
    }

    /// Forwards an admin request to the active controller and waits (bounded) until this
    /// broker's image reflects `done`. Returns the Kafka error code and message.
    pub(super) async fn forward_admin(
        self: &Arc<Self>,
        req: ControllerRequest,
        done: impl Fn(&MetadataImage) -> bool,
    ) -> (i16, String) {
        let Some(cluster) = self.cluster.as_ref() else {
            return (errors::INVALID_REQUEST, "not in cluster mode".into());
        };
        // Retry while no controller is reachable (an election in progress), within a bound.
        let give_up = tokio::time::Instant::now() + std::time::Duration::from_millis(FORWARD_RETRY_MS);
        let resp = loop {
            let r = cluster.controller.lock().await.call(&req).await;
            match r {
                Err(_) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        match resp {
            Ok(ControllerResponse::Done { error_code: errors::NONE, .. }) => {
                let mut rx = cluster.image_changed.subscribe();
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    if self.image().is_some_and(|i| done(&i)) {
                        return (errors::NONE, String::new());
                    }
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
                        return (errors::REQUEST_TIMED_OUT, "the change did not reach this broker in time".into());
                    }
                }
            }
            Ok(ControllerResponse::Done { error_code, message }) => (error_code, message),
            Ok(other) => (errors::UNKNOWN_SERVER_ERROR, format!("unexpected controller answer {other:?}")),
            Err(e) => (errors::REQUEST_TIMED_OUT, format!("controller unreachable: {e}")),
        }
    }

    /// The topic id of `name` in the newest image.
    pub fn image_topic_id(&self, name: &str) -> Option<Uuid> {
        self.image().and_then(|i| i.topic_ids.get(name).copied())
    }
}
