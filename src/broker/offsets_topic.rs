//! Committed offsets in cluster mode, replicated through the internal topic
//! `__consumer_offsets` as Kafka does.
//!
//! - The topic is created on the first FindCoordinator for a group, with
//!   `offsets.topic.num.partitions` partitions and `offsets.topic.replication.factor` replicas.
//!   As in Kafka, creation fails (and FindCoordinator answers COORDINATOR_NOT_AVAILABLE) until
//!   that many brokers are unfenced; the factor is never lowered to fit. (An earlier cap at the
//!   brokers this node knew of let a restarted node whose metadata had not caught up create the
//!   topic with one replica, below min.insync.replicas, so no commit could ever succeed:
//!   `cluster-overlap` seed 1869.)
//! - A group belongs to partition `murmur2(group) mod partitions`; the leader of that partition
//!   is the group's coordinator. Every other broker answers NOT_COORDINATOR.
//! - An OffsetCommit (or a group deletion) is appended to that partition as one record batch
//!   and answered only once the batch is committed (acks=all: the high watermark covers it, so
//!   every in-sync replica has fsynced it). Only then does the coordinator's in-memory view
//!   change.
//! - When a broker becomes leader of an offsets partition it loads it: it reads the whole log
//!   (its own log is the authority for a leader) into the in-memory view and answers
//!   COORDINATOR_LOAD_IN_PROGRESS until done. When it stops leading, it forgets those groups.
//!
//! - An OffsetFetch is answered only after a barrier record (no change) has been committed to
//!   the group's partition in the epoch of the view: a former leader partitioned away, which
//!   still believes it coordinates the group, cannot commit it and so never serves offsets
//!   that its successor has since overwritten (the 3-node simulation found exactly that).
//!
//! So a committed offset survives the loss of its coordinator exactly as an acks=all record
//! survives the loss of its leader. Group membership (members, generation) is not persisted:
//! after a coordinator move the members rejoin, as they would after Kafka's coordinator
//! unloads a group.
//!
//! Retention: without log compaction the topic keeps records for `offsets.retention.minutes`
//! (default 7 days, Kafka's expiry for the offsets of an empty group). Unlike Kafka, a group
//! that is still active but has not committed for that long loses its offsets too.
//!
//! Record format (ours, not Kafka's schema): key = group id; value = `1, topic (str16),
//! partition i32, offset i64, leader_epoch i32, metadata (i32 length, -1 = null), commit_ms
//! i64` for a commit, `2` for a group deletion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Broker, Role};
use crate::cluster::rpc::ControllerRequest;
use crate::controller::metadata::NO_LEADER;
use crate::group::CommittedOffset;
use crate::protocol::errors;
use crate::record_file::{put_str16, Reader};
use crate::runtime;

/// The internal topic's name.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How long a commit waits for the offsets partition's in-sync replicas.
pub const OFFSET_COMMIT_TIMEOUT_MS: u64 = 5_000;
/// Bytes read per step while loading an offsets partition.
const LOAD_READ_BYTES: usize = 1024 * 1024;
const KIND_COMMIT: u8 = 1;
const KIND_DELETE_GROUP: u8 = 2;
const KIND_BARRIER: u8 = 3;

/// One decoded record of the offsets topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A committed offset.
    Commit { topic: String, partition: i32, value: CommittedOffset },
    /// The group and all its offsets were deleted.
    DeleteGroup,
    /// No change: committed before an OffsetFetch is answered, so only a coordinator that can
    /// still commit to the partition (not one partitioned away that has not yet learnt of its
    /// successor) answers from its view.
    Barrier,
}

/// Encodes one record value.
pub fn encode_value(rec: &OffsetsRecord) -> Vec<u8> {
    let mut b = Vec::new();
    match rec {
        OffsetsRecord::Commit { topic, partition, value } => {
            b.push(KIND_COMMIT);
            put_str16(&mut b, topic);
            b.extend_from_slice(&partition.to_be_bytes());
            b.extend_from_slice(&value.offset.to_be_bytes());
            b.extend_from_slice(&value.leader_epoch.to_be_bytes());
            match &value.metadata {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(m) => {
                    b.extend_from_slice(&(m.len() as i32).to_be_bytes());
                    b.extend_from_slice(m.as_bytes());
                }
            }
            b.extend_from_slice(&value.commit_ms.to_be_bytes());
        }
        OffsetsRecord::DeleteGroup => b.push(KIND_DELETE_GROUP),
        OffsetsRecord::Barrier => b.push(KIND_BARRIER),
    }
    b
}

/// Decodes one record value; `None` for anything malformed (skipped when loading).
pub fn decode_value(v: &[u8]) -> Option<OffsetsRecord> {
    let mut r = Reader::new(v, crate::group::OFFSET_RECORD_MAX_BYTES);
    match r.u8()? {
        KIND_COMMIT => {
            let topic = r.str16()?;
            let partition = r.i32()?;
            let offset = r.i64()?;
            let leader_epoch = r.i32()?;
            let len = r.i32()?;
            let metadata = if len < 0 { None } else { Some(r.string(len as usize)?) };
            let commit_ms = r.i64()?;
            r.is_empty().then_some(OffsetsRecord::Commit {
                topic,
                partition,
                value: CommittedOffset { offset, leader_epoch, metadata, commit_ms },
            })
        }
        KIND_DELETE_GROUP => r.is_empty().then_some(OffsetsRecord::DeleteGroup),
        KIND_BARRIER => r.is_empty().then_some(OffsetsRecord::Barrier),
        _ => None,
    }
}

/// The offsets partition of `group` among `partitions`.
pub fn partition_for(group: &str, partitions: usize) -> i32 {
    ((crate::client::murmur2(group.as_bytes()) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

impl Broker {
    /// In cluster mode: the offsets partition of `group`, its leader (or [`NO_LEADER`]) and
    /// leader epoch, or `None` while the offsets topic does not exist.
    pub(super) fn offsets_partition_of(&self, group: &str) -> Option<(i32, i32, i32)> {
        let img = self.image()?;
        let t = img.topic_by_name(OFFSETS_TOPIC)?;
        let p = partition_for(group, t.partitions.len());
        let (leader, epoch) = t.partitions.get(&p).map_or((NO_LEADER, -1), |pi| (pi.leader, pi.leader_epoch));
        Some((p, leader, epoch))
    }

    /// Asks the controller to create the offsets topic (once at a time; errors are retried
    /// by the next FindCoordinator).
    pub(super) fn ensure_offsets_topic(self: &Arc<Self>) {
        if self.groups.creating_offsets_topic.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let b = self.clone();
        tokio::spawn(async move {
            let rf = b.config().int_value("offsets.topic.replication.factor").clamp(1, i16::MAX as i64) as i16;
            let req = ControllerRequest::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                partitions: b.config().int_value("offsets.topic.num.partitions") as i32,
                replication_factor: rf,
                // No log compaction yet: keep commits for offsets.retention.minutes (Kafka's
                // expiry of an empty group's offsets); see the module docs.
                configs: vec![
                    ("cleanup.policy".into(), "delete".into()),
                    (
                        "retention.ms".into(),
                        (b.config().int_value("offsets.retention.minutes").saturating_mul(60_000)).to_string(),
                    ),
                ],
                validate_only: false,
            };
            let (code, msg) = b.forward_admin(req, |i| i.topic_by_name(OFFSETS_TOPIC).is_some()).await;
            match code {
                errors::NONE => tracing::info!(replication_factor = rf, "offsets topic created"),
                errors::TOPIC_ALREADY_EXISTS => tracing::debug!("offsets topic exists"),
                _ => tracing::warn!(code, msg, "creating the offsets topic failed; will retry"),
            }
            b.groups.creating_offsets_topic.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Whether this broker may serve `group` now: NONE on a standalone node or when it leads
    /// the group's offsets partition and has loaded it in the current leader epoch; otherwise
    /// NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS.
    pub(super) fn coordinator_gate(&self, group: &str) -> i16 {
        if self.cluster.is_none() {
            return errors::NONE;
        }
        let Some((p, leader, epoch)) = self.offsets_partition_of(group) else { return errors::NOT_COORDINATOR };
        if leader != self.config().node_id() {
            return errors::NOT_COORDINATOR;
        }
        if self.groups.loaded_offsets_partitions.lock().unwrap().get(&p) == Some(&epoch) {
            errors::NONE
        } else {
            errors::COORDINATOR_LOAD_IN_PROGRESS
        }
    }

    /// Loads offsets partitions this broker now leads and forgets those it no longer leads.
    /// Called by the group timer (every [`TIMER_IDLE_POLL_MS`](crate::group::TIMER_IDLE_POLL_MS)
    /// at most).
    pub(super) fn reconcile_offsets_partitions(&self) {
        if self.cluster.is_none() {
            return;
        }
        // Partition -> leader epoch of every offsets partition this broker leads now. A view
        // loaded in another epoch is stale (the partition may have been led elsewhere in
        // between, even if this broker leads it again), so it is dropped and reloaded.
        let led: BTreeMap<i32, i32> = self
            .topic(OFFSETS_TOPIC)
            .map(|t| {
                t.partitions
                    .iter()
                    .filter_map(|(&i, p)| match &p.state.lock().unwrap().role {
                        Role::Leader(l) => Some((i, l.leader_epoch())),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let loaded = self.groups.loaded_offsets_partitions.lock().unwrap().clone();
        let partitions = self.image().and_then(|i| i.topic_by_name(OFFSETS_TOPIC).map(|t| t.partitions.len()));
        for (&p, e) in &loaded {
            if led.get(&p) == Some(e) {
                continue;
            }
            self.groups.loaded_offsets_partitions.lock().unwrap().remove(&p);
            let n = partitions.unwrap_or(0);
            let dropped = self.groups.forget_groups(|g| n == 0 || partition_for(g, n) == p);
            tracing::debug!(partition = p, groups = dropped, "no longer coordinating an offsets partition");
        }
        for (&p, &e) in &led {
            if loaded.get(&p) == Some(&e) {
                continue;
            }
            match self.load_offsets_partition(p, e) {
                Ok(n) => {
                    self.groups.loaded_offsets_partitions.lock().unwrap().insert(p, e);
                    if n > 0 {
                        tracing::info!(partition = p, records = n, "loaded an offsets partition");
                    } else {
                        tracing::debug!(partition = p, "loaded an empty offsets partition");
                    }
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "loading an offsets partition failed; will retry"),
            }
        }
    }

    /// Reads offsets partition `p`, led here in `epoch`, from this broker's log into the
    /// in-memory view.
    fn load_offsets_partition(&self, p: i32, epoch: i32) -> Result<usize, String> {
        let part = self
            .topic(OFFSETS_TOPIC)
            .and_then(|t| t.partitions.get(&p).cloned())
            .ok_or_else(|| "no local replica".to_string())?;
        let mut records: Vec<(String, OffsetsRecord)> = Vec::new();
        {
            let st = part.state.lock().unwrap();
            if !matches!(&st.role, Role::Leader(l) if l.leader_epoch() == epoch) {
                return Err("no longer the leader in that epoch".into());
            }
            let mut bad = None;
            st.log
                .scan_batches(LOAD_READ_BYTES, |h, batch| {
                    if h.is_control() || bad.is_some() {
                        return;
                    }
                    match crate::client::records::decode_batches(Bytes::copy_from_slice(batch), 0) {
                        Ok(d) => {
                            for r in d.records {
                                let (Some(k), Some(v)) = (r.key, r.value) else { continue };
                                let Ok(group) = String::from_utf8(k.to_vec()) else { continue };
                                if let Some(rec) = decode_value(&v) {
                                    records.push((group, rec));
                                }
                            }
                        }
                        Err(e) => bad = Some(e.to_string()),
                    }
                })
                .map_err(|e| e.to_string())?;
            if let Some(e) = bad {
                return Err(e);
            }
        }
        let n = records.len();
        self.groups.apply_offsets_records(&records).map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Appends `records` (all for `group`) to the group's offsets partition, waits until they
    /// are committed and applies them to the in-memory view if it is still the one loaded in
    /// the leader epoch of the append. Returns the error code for the group's requests: NONE, or
    /// NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE as Kafka maps append failures.
    pub(super) async fn replicate_offsets_records(self: &Arc<Self>, group: &str, records: &[OffsetsRecord]) -> i16 {
        let Some((p, _, _)) = self.offsets_partition_of(group) else { return errors::NOT_COORDINATOR };
        let Some(topic) = self.topic(OFFSETS_TOPIC) else { return errors::NOT_COORDINATOR };
        let Some(part) = topic.partitions.get(&p).cloned() else { return errors::NOT_COORDINATOR };
        let values: Vec<Vec<u8>> = records.iter().map(encode_value).collect();
        let specs: Vec<crate::protocol::batch::RecordSpec<'_>> =
            values.iter().map(|v| (Some(group.as_bytes()), Some(&v[..]), Vec::new())).collect();
        let now = runtime::now_ms();
        let batch = Bytes::from(crate::protocol::batch::build_batch(&specs, now, 0));
        let out = self.append(&topic, &part, batch, -1, now, None);
        if out.error_code != errors::NONE {
            return map_append_error(out.error_code);
        }
        self.appended.send_modify(|v| *v += 1);
        self.flush_wanted.notify_one();
        let Some((_, wait)) = out.wait_durable else { return errors::NOT_COORDINATOR };
        let Some(epoch) = wait.leader_epoch() else { return errors::NOT_COORDINATOR };
        let code = tokio::time::timeout(
            Duration::from_millis(OFFSET_COMMIT_TIMEOUT_MS),
            super::data::wait_for_ack(&part, wait),
        )
        .await
        .unwrap_or(errors::REQUEST_TIMED_OUT);
        if code != errors::NONE {
            return map_append_error(code);
        }
        let owned: Vec<(String, OffsetsRecord)> = records.iter().map(|r| (group.to_string(), r.clone())).collect();
        match self.groups.apply_offsets_records_if_loaded(p, epoch, &owned) {
            Ok(true) => errors::NONE,
            // Leadership moved on after the commit: the new coordinator has it in its log.
            Ok(false) => errors::NOT_COORDINATOR,
            Err(e) => {
                tracing::error!(group, error = %e, "updating the offsets view failed");
                errors::COORDINATOR_NOT_AVAILABLE
            }
        }
    }
}

/// Kafka's mapping of an offsets-topic append error to a group error.
fn map_append_error(code: i16) -> i16 {
    match code {
        errors::NONE => errors::NONE,
        errors::NOT_LEADER_OR_FOLLOWER | errors::KAFKA_STORAGE_ERROR => errors::NOT_COORDINATOR,
        errors::MESSAGE_TOO_LARGE | errors::RECORD_LIST_TOO_LARGE => errors::INVALID_COMMIT_OFFSET_SIZE,
        _ => errors::COORDINATOR_NOT_AVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves record values round-trip and malformed ones are refused, not misread.
    #[test]
    fn values_round_trip() {
        let recs = [
            OffsetsRecord::Commit {
                topic: "t".into(),
                partition: 3,
                value: CommittedOffset { offset: 42, leader_epoch: 7, metadata: Some("m".into()), commit_ms: 9 },
            },
            OffsetsRecord::Commit {
                topic: "other".into(),
                partition: 0,
                value: CommittedOffset { offset: -1, leader_epoch: -1, metadata: None, commit_ms: 0 },
            },
            OffsetsRecord::DeleteGroup,
            OffsetsRecord::Barrier,
        ];
        for r in &recs {
            let v = encode_value(r);
            assert_eq!(decode_value(&v).as_ref(), Some(r));
            assert_eq!(decode_value(&v[..v.len() - 1]), None);
            let mut longer = v.clone();
            longer.push(0);
            assert_eq!(decode_value(&longer), None);
        }
        assert_eq!(decode_value(&[9]), None);
        assert!((0..1000).all(|i| (0..50).contains(&partition_for(&format!("g{i}"), 50))));
    }
}
