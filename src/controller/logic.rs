//! The active controller's decisions: functions over the committed [`MetadataImage`] that return
//! the records to propose. Nothing here performs I/O, reads a clock or touches Raft; time comes
//! in as `now_ms` and ids from a seeded generator.
//!
//! Invariants (each has a test in `tests.rs`):
//! - A leader is only ever chosen from the ISR, never a fenced (or ineligible) broker, unless the
//!   topic sets `unclean.leader.election.enable=true`; with no eligible ISR member the partition
//!   gets leader -1 and keeps its ISR (never an empty ISR).
//! - An ISR never grows to include a fenced broker.
//! - Every `PartitionChange` carries `partition_epoch + 1` and, when the leader changes,
//!   `leader_epoch + 1`, computed from the image given. Because `MetadataImage::apply` treats
//!   those epochs as a compare-and-set, records computed from a stale image (or proposed twice)
//!   are rejected at apply time instead of corrupting the state.
//! - The only volatile state is the broker session table and the placement cursor; a newly
//!   elected active controller starts them fresh (every broker gets a full session timeout).

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::metadata::{
    MetadataImage, MetadataRecord, PartitionImage, NO_LEADER, PARTITIONS_PER_TOPIC_MAX, REPLICAS_PER_PARTITION_MAX,
};
use crate::protocol::errors;

/// Longest legal topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The topic config that allows electing a leader outside the ISR.
pub const UNCLEAN_LEADER_ELECTION_CONFIG: &str = "unclean.leader.election.enable";
/// Kafka error code: this broker is not the active controller.
pub const NOT_CONTROLLER: i16 = 41;
/// Kafka error code: the broker's registration (incarnation) is not the current one.
pub const STALE_BROKER_EPOCH: i16 = 77;
/// Kafka error code: the partition epoch in an AlterPartition is not the current one.
pub const INVALID_UPDATE_VERSION: i16 = 95;
/// Kafka error code: the broker is not registered.
pub const BROKER_ID_NOT_REGISTERED: i16 = 102;
/// Kafka error code: a proposed ISR member is fenced or not a replica.
pub const INELIGIBLE_REPLICA: i16 = 107;

/// Why a controller request was refused; each maps to a Kafka error code for the response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogicError {
    /// The broker id is not registered.
    #[error("broker {0} is not registered")]
    BrokerNotRegistered(i32),
    /// The request carries an incarnation other than the registered one.
    #[error("broker {broker_id} incarnation {got} is not the registered {current}")]
    StaleBrokerEpoch {
        /// The broker.
        broker_id: i32,
        /// In the request.
        got: u64,
        /// In the image.
        current: u64,
    },
    /// The topic id does not exist.
    #[error("unknown topic id {0}")]
    UnknownTopicId(Uuid),
    /// The partition does not exist.
    #[error("unknown partition {0}")]
    UnknownPartition(i32),
    /// No topic has this name.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// The topic name exists already.
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    /// The topic name is empty, too long, `.`/`..` or has characters outside `[a-zA-Z0-9._-]`.
    #[error("invalid topic name {0:?}")]
    InvalidTopicName(String),
    /// The partition count is outside `1..=PARTITIONS_PER_TOPIC_MAX`.
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    /// The replication factor is below 1 or above the number of unfenced brokers.
    #[error("replication factor {requested} with {available} unfenced brokers")]
    InvalidReplicationFactor {
        /// Requested.
        requested: i32,
        /// Unfenced brokers.
        available: usize,
    },
    /// AlterPartition from a leader epoch older than the current one.
    #[error("fenced leader epoch {got}, current {current}")]
    FencedLeaderEpoch {
        /// In the request.
        got: i32,
        /// In the image.
        current: i32,
    },
    /// AlterPartition from a leader epoch newer than the controller knows (it is behind).
    #[error("leader epoch {got} is ahead of {current}")]
    LeaderEpochAhead {
        /// In the request.
        got: i32,
        /// In the image.
        current: i32,
    },
    /// AlterPartition from a broker that is not the partition's leader.
    #[error("broker {from} is not the leader {leader}")]
    NotLeader {
        /// The requesting broker.
        from: i32,
        /// The current leader.
        leader: i32,
    },
    /// AlterPartition with a partition epoch other than the current one.
    #[error("partition epoch {got}, current {current}")]
    InvalidUpdateVersion {
        /// In the request.
        got: i32,
        /// In the image.
        current: i32,
    },
    /// The proposed ISR is malformed: empty, duplicates, or without the leader.
    #[error("invalid isr: {0}")]
    InvalidIsr(String),
    /// The proposed ISR adds a fenced broker or a non-replica.
    #[error("ineligible replica {0} in isr")]
    IneligibleReplica(i32),
}

impl LogicError {
    /// The Kafka error code to put in the response.
    pub fn error_code(&self) -> i16 {
        match self {
            LogicError::BrokerNotRegistered(_) => BROKER_ID_NOT_REGISTERED,
            LogicError::StaleBrokerEpoch { .. } => STALE_BROKER_EPOCH,
            LogicError::UnknownTopicId(_) => errors::UNKNOWN_TOPIC_ID,
            LogicError::UnknownPartition(_) => errors::UNKNOWN_TOPIC_OR_PARTITION,
            LogicError::UnknownTopic(_) => errors::UNKNOWN_TOPIC_OR_PARTITION,
            LogicError::TopicAlreadyExists(_) => errors::TOPIC_ALREADY_EXISTS,
            LogicError::InvalidTopicName(_) => errors::INVALID_TOPIC_EXCEPTION,
            LogicError::InvalidPartitions(_) => errors::INVALID_PARTITIONS,
            LogicError::InvalidReplicationFactor { .. } => errors::INVALID_REPLICATION_FACTOR,
            LogicError::FencedLeaderEpoch { .. } => errors::FENCED_LEADER_EPOCH,
            LogicError::LeaderEpochAhead { .. } => errors::NOT_LEADER_OR_FOLLOWER,
            LogicError::NotLeader { .. } => errors::INVALID_REQUEST,
            LogicError::InvalidUpdateVersion { .. } => INVALID_UPDATE_VERSION,
            LogicError::InvalidIsr(_) => errors::INVALID_REQUEST,
            LogicError::IneligibleReplica(_) => INELIGIBLE_REPLICA,
        }
    }
}

/// A broker's session as the active controller sees it (volatile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerSession {
    /// The incarnation that heartbeats.
    pub incarnation: u64,
    /// When it last heartbeated (or when the session was created).
    pub last_heartbeat_ms: i64,
}

/// A broker's registration request (Kafka's BrokerRegistration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterBrokerRequest {
    /// The broker's `node.id`.
    pub broker_id: i32,
    /// Unique per process start.
    pub incarnation: u64,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
    /// `broker.rack`, if set.
    pub rack: Option<String>,
}

/// The active controller's volatile state and decision functions. Create one when this node
/// becomes leader (`ControllerQuorum::is_leader`) and drop it when leadership is lost.
#[derive(Debug, Clone)]
pub struct ActiveController {
    sessions: BTreeMap<i32, BrokerSession>,
    placement_cursor: usize,
    rng: u64,
    /// Cluster-wide `unclean.leader.election.enable` (a topic config overrides it).
    pub unclean_leader_election_default: bool,
}

impl ActiveController {
    /// A fresh active controller; `seed` feeds topic id generation.
    pub fn new(seed: u64) -> Self {
        ActiveController {
            sessions: BTreeMap::new(),
            placement_cursor: 0,
            rng: seed,
            unclean_leader_election_default: false,
        }
    }

    /// The session table (for metrics and tests).
    pub fn sessions(&self) -> &BTreeMap<i32, BrokerSession> {
        &self.sessions
    }

    /// A broker (re)registers. A new incarnation of a registered broker means it restarted: it
    /// starts fenced (as every registration does) and its leaderships and ISR memberships are
    /// moved away at once, as if its session had expired. A retried registration returns nothing.
    pub fn register_broker(
        &mut self,
        image: &MetadataImage,
        req: &RegisterBrokerRequest,
        now_ms: i64,
    ) -> Vec<MetadataRecord> {
        let broker_id = req.broker_id;
        let session = BrokerSession { incarnation: req.incarnation, last_heartbeat_ms: now_ms };
        self.sessions.insert(broker_id, session);
        if let Some(b) = image.brokers.get(&broker_id) {
            if b.incarnation == req.incarnation && b.host == req.host && b.port == req.port && b.rack == req.rack {
                return Vec::new();
            }
        }
        // Leaderships move away *before* the new incarnation is registered: a restarted broker
        // takes roles only from an image that registers its current incarnation (see
        // `Broker::apply_image`), so no image it acts on can still name it leader at an epoch
        // its previous incarnation led (whose unsynced tail the restart may have lost while
        // followers kept it).
        let mut records = Vec::new();
        if image.brokers.contains_key(&broker_id) {
            let gone = BTreeSet::from([broker_id]);
            records.extend(self.move_away_from(image, &gone));
        }
        records.push(MetadataRecord::RegisterBroker {
            broker_id,
            incarnation: req.incarnation,
            host: req.host.clone(),
            port: req.port,
            rack: req.rack.clone(),
        });
        records
    }

    /// A heartbeat from `broker_id`. Refreshes its session; if the broker is fenced, unfences it
    /// and gives it the leaderships of leaderless partitions whose ISR it is in.
    pub fn on_heartbeat(
        &mut self,
        image: &MetadataImage,
        broker_id: i32,
        incarnation: u64,
        now_ms: i64,
    ) -> Result<Vec<MetadataRecord>, LogicError> {
        let b = image.brokers.get(&broker_id).ok_or(LogicError::BrokerNotRegistered(broker_id))?;
        if b.incarnation != incarnation {
            return Err(LogicError::StaleBrokerEpoch { broker_id, got: incarnation, current: b.incarnation });
        }
        self.sessions.insert(broker_id, BrokerSession { incarnation, last_heartbeat_ms: now_ms });
        if !b.fenced {
            return Ok(Vec::new());
        }
        let mut records = vec![MetadataRecord::UnfenceBroker { broker_id }];
        records.extend(self.elect_on_unfence(image, broker_id));
        Ok(records)
    }

    /// Fences every unfenced broker whose last heartbeat is more than `session_timeout_ms` old
    /// and moves its leaderships to other ISR members. A broker this controller has not heard
    /// from yet gets a session starting now.
    ///
    /// Also repairs what an earlier round left undone: changes are computed from the applied
    /// image, so one can be rejected as stale (another change of the partition committed
    /// first) while the fence beside it applied. Every round therefore also moves leaderships
    /// and ISR memberships away from brokers that are already fenced, and gives leaderless
    /// partitions a leader from their ISR when one is unfenced. Both are no-ops once applied.
    pub fn check_sessions(
        &mut self,
        image: &MetadataImage,
        now_ms: i64,
        session_timeout_ms: i64,
    ) -> Vec<MetadataRecord> {
        let mut expired = BTreeSet::new();
        for (id, b) in &image.brokers {
            let session = self
                .sessions
                .entry(*id)
                .or_insert(BrokerSession { incarnation: b.incarnation, last_heartbeat_ms: now_ms });
            if !b.fenced && now_ms.saturating_sub(session.last_heartbeat_ms) > session_timeout_ms {
                expired.insert(*id);
            }
        }
        let mut records: Vec<_> = expired.iter().map(|id| MetadataRecord::FenceBroker { broker_id: *id }).collect();
        let mut gone = expired;
        gone.extend(image.brokers.values().filter(|b| b.fenced).map(|b| b.broker_id));
        records.extend(self.move_away_from(image, &gone));
        let changed: BTreeSet<(Uuid, i32)> = records
            .iter()
            .filter_map(|r| match r {
                MetadataRecord::PartitionChange { topic_id, partition, .. } => Some((*topic_id, *partition)),
                _ => None,
            })
            .collect();
        records.extend(elect_leaderless(image, |r| !gone.contains(&r) && image.is_unfenced(r), &changed));
        records
    }

    /// Creates a topic: replicas spread round-robin over the unfenced brokers (sorted by id),
    /// starting at a cursor that rotates from topic to topic so leaders spread too.
    pub fn create_topic(
        &mut self,
        image: &MetadataImage,
        name: &str,
        partitions: i32,
        replication_factor: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Vec<MetadataRecord>, LogicError> {
        validate_topic_name(name)?;
        if image.topic_ids.contains_key(name) {
            return Err(LogicError::TopicAlreadyExists(name.to_string()));
        }
        if partitions < 1 || partitions as usize > PARTITIONS_PER_TOPIC_MAX {
            return Err(LogicError::InvalidPartitions(partitions));
        }
        let brokers: Vec<i32> = image.brokers.values().filter(|b| !b.fenced).map(|b| b.broker_id).collect();
        let rf = replication_factor;
        if rf < 1 || rf as usize > brokers.len() || rf as usize > REPLICAS_PER_PARTITION_MAX {
            return Err(LogicError::InvalidReplicationFactor { requested: rf, available: brokers.len() });
        }
        let start = self.placement_cursor % brokers.len();
        self.placement_cursor = self.placement_cursor.wrapping_add(1);
        let assignment = (0..partitions as usize)
            .map(|p| (0..rf as usize).map(|r| brokers[(start + p + r) % brokers.len()]).collect())
            .collect();
        let topic_id = self.new_topic_id(image);
        Ok(vec![MetadataRecord::CreateTopic { name: name.to_string(), topic_id, configs, partitions: assignment }])
    }

    /// Grows topic `name` to `count` partitions (CreatePartitions): the new partitions get the
    /// replication factor of partition 0, placed round-robin over the unfenced brokers like a
    /// new topic's.
    pub fn create_partitions(
        &mut self,
        image: &MetadataImage,
        name: &str,
        count: i32,
    ) -> Result<Vec<MetadataRecord>, LogicError> {
        let topic = image.topic_by_name(name).ok_or_else(|| LogicError::UnknownTopic(name.to_string()))?;
        let have = topic.partitions.len();
        if count < 1 || (count as usize) <= have || count as usize > PARTITIONS_PER_TOPIC_MAX {
            return Err(LogicError::InvalidPartitions(count));
        }
        let rf = topic.partitions.get(&0).map_or(1, |p| p.replicas.len());
        let brokers: Vec<i32> = image.brokers.values().filter(|b| !b.fenced).map(|b| b.broker_id).collect();
        if rf > brokers.len() {
            return Err(LogicError::InvalidReplicationFactor { requested: rf as i32, available: brokers.len() });
        }
        let start = self.placement_cursor % brokers.len();
        self.placement_cursor = self.placement_cursor.wrapping_add(1);
        let partitions = (have..count as usize)
            .map(|p| (0..rf).map(|r| brokers[(start + p + r) % brokers.len()]).collect())
            .collect();
        Ok(vec![MetadataRecord::CreatePartitions { topic_id: topic.topic_id, partitions }])
    }

    /// Validates an AlterPartition from a partition leader the way Kafka does and returns the ISR
    /// change. `leader_epoch` and `partition_epoch` are what the leader believes is current.
    #[allow(clippy::too_many_arguments)]
    pub fn alter_partition(
        &self,
        image: &MetadataImage,
        topic_id: Uuid,
        partition: i32,
        from_leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        new_isr: &[i32],
    ) -> Result<Vec<MetadataRecord>, LogicError> {
        let topic = image.topics.get(&topic_id).ok_or(LogicError::UnknownTopicId(topic_id))?;
        let p = topic.partitions.get(&partition).ok_or(LogicError::UnknownPartition(partition))?;
        if leader_epoch > p.leader_epoch {
            return Err(LogicError::LeaderEpochAhead { got: leader_epoch, current: p.leader_epoch });
        }
        if leader_epoch < p.leader_epoch {
            return Err(LogicError::FencedLeaderEpoch { got: leader_epoch, current: p.leader_epoch });
        }
        if from_leader != p.leader {
            return Err(LogicError::NotLeader { from: from_leader, leader: p.leader });
        }
        if partition_epoch != p.partition_epoch {
            return Err(LogicError::InvalidUpdateVersion { got: partition_epoch, current: p.partition_epoch });
        }
        if new_isr.is_empty() || !new_isr.contains(&p.leader) {
            return Err(LogicError::InvalidIsr(format!("{new_isr:?} must contain the leader {}", p.leader)));
        }
        for (i, r) in new_isr.iter().enumerate() {
            if new_isr[..i].contains(r) {
                return Err(LogicError::InvalidIsr(format!("{new_isr:?} has duplicates")));
            }
            if !p.replicas.contains(r) || (!p.isr.contains(r) && !image.is_unfenced(*r)) {
                return Err(LogicError::IneligibleReplica(*r));
            }
        }
        Ok(vec![MetadataRecord::PartitionChange {
            topic_id,
            partition,
            leader: p.leader,
            isr: new_isr.to_vec(),
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch + 1,
        }])
    }

    /// Controlled shutdown of `broker_id`: its leaderships move to other eligible ISR members,
    /// it leaves every ISR it is in (unless it is the last member), and it is fenced so that
    /// nothing moves back to it. The broker may exit once these records committed.
    pub fn controlled_shutdown(
        &mut self,
        image: &MetadataImage,
        broker_id: i32,
    ) -> Result<Vec<MetadataRecord>, LogicError> {
        if !image.brokers.contains_key(&broker_id) {
            return Err(LogicError::BrokerNotRegistered(broker_id));
        }
        let leaving = BTreeSet::from([broker_id]);
        let mut records = self.move_away_from(image, &leaving);
        records.push(MetadataRecord::FenceBroker { broker_id });
        self.sessions.remove(&broker_id);
        Ok(records)
    }

    /// Moves leadership back to each partition's preferred (first) replica where it is in the
    /// ISR, unfenced and not already the leader.
    pub fn preferred_leader_election(&self, image: &MetadataImage) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for t in image.topics.values() {
            for (n, p) in &t.partitions {
                let preferred = p.replicas[0];
                if p.leader != preferred && p.isr.contains(&preferred) && image.is_unfenced(preferred) {
                    records.push(change(t.topic_id, *n, p, preferred, p.isr.clone()));
                }
            }
        }
        records
    }

    /// Leaderless partitions whose ISR holds `unfenced` (about to be unfenced) or another
    /// unfenced broker get a leader from the ISR, in replica order.
    pub fn elect_on_unfence(&self, image: &MetadataImage, unfenced: i32) -> Vec<MetadataRecord> {
        elect_leaderless(image, |b| b == unfenced || image.is_unfenced(b), &BTreeSet::new())
    }

    /// Partition changes that take `gone` out of leadership and out of ISRs: each partition led
    /// by a gone broker gets the first eligible ISR member (replica order) as leader, or -1; a
    /// gone broker leaves the ISR unless that would empty it.
    fn move_away_from(&self, image: &MetadataImage, gone: &BTreeSet<i32>) -> Vec<MetadataRecord> {
        let eligible = |b: i32| !gone.contains(&b) && image.is_unfenced(b);
        let mut records = Vec::new();
        if gone.is_empty() {
            return records;
        }
        for t in image.topics.values() {
            let unclean = t
                .configs
                .get(UNCLEAN_LEADER_ELECTION_CONFIG)
                .map_or(self.unclean_leader_election_default, |v| v.eq_ignore_ascii_case("true"));
            for (n, p) in &t.partitions {
                let mut isr: Vec<i32> = p.isr.iter().copied().filter(|r| !gone.contains(r)).collect();
                if isr.is_empty() {
                    isr = p.isr.clone();
                }
                let mut leader = if p.leader != NO_LEADER && eligible(p.leader) {
                    p.leader
                } else {
                    p.replicas.iter().copied().find(|r| isr.contains(r) && eligible(*r)).unwrap_or(NO_LEADER)
                };
                if leader == NO_LEADER && unclean {
                    if let Some(r) = p.replicas.iter().copied().find(|r| eligible(*r)) {
                        leader = r;
                        isr = vec![r];
                    }
                }
                if leader != p.leader || isr != p.isr {
                    records.push(change(t.topic_id, *n, p, leader, isr));
                }
            }
        }
        records
    }

    /// A fresh random (version 4) topic id not already in use.
    fn new_topic_id(&mut self, image: &MetadataImage) -> Uuid {
        loop {
            let hi = splitmix(&mut self.rng) as u128;
            let lo = splitmix(&mut self.rng) as u128;
            let id = uuid::Builder::from_random_bytes(((hi << 64) | lo).to_be_bytes()).into_uuid();
            if !image.topics.contains_key(&id) {
                return id;
            }
        }
    }
}

/// Leaderless partitions (other than those in `skip`) get their first `eligible` ISR member, in
/// replica order, as leader.
fn elect_leaderless(
    image: &MetadataImage,
    eligible: impl Fn(i32) -> bool,
    skip: &BTreeSet<(Uuid, i32)>,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for t in image.topics.values() {
        for (n, p) in &t.partitions {
            if p.leader != NO_LEADER || skip.contains(&(t.topic_id, *n)) {
                continue;
            }
            if let Some(leader) = p.replicas.iter().copied().find(|r| p.isr.contains(r) && eligible(*r)) {
                records.push(change(t.topic_id, *n, p, leader, p.isr.clone()));
            }
        }
    }
    records
}

/// A `PartitionChange` from `p` to (`leader`, `isr`), bumping the epochs as required.
fn change(topic_id: Uuid, partition: i32, p: &PartitionImage, leader: i32, isr: Vec<i32>) -> MetadataRecord {
    let leader_epoch = if leader != p.leader { p.leader_epoch + 1 } else { p.leader_epoch };
    MetadataRecord::PartitionChange {
        topic_id,
        partition,
        leader,
        isr,
        leader_epoch,
        partition_epoch: p.partition_epoch + 1,
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Kafka's topic name rules: 1..=249 bytes of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), LogicError> {
    let legal = name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-');
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX || !legal || name == "." || name == ".." {
        return Err(LogicError::InvalidTopicName(name.to_string()));
    }
    Ok(())
}
