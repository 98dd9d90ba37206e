//! The cluster metadata model: the records of the controller's Raft log, their binary encoding,
//! and [`MetadataImage`], the state obtained by applying committed records in log order.
//!
//! Invariants:
//! - Decoding never panics on hostile bytes: every length is checked against the bytes that are
//!   left and against a named limit before anything is allocated, and trailing bytes are errors.
//! - [`MetadataImage::apply`] is a deterministic compare-and-set: a record that does not fit the
//!   current image (a stale partition epoch, an unknown topic, a duplicate name) is rejected
//!   with [`ApplyError`] and leaves the image untouched. Every replica applies the same log in the
//!   same order, so every replica accepts and rejects the same records. This is what makes a
//!   duplicated or raced proposal harmless.
//! - After every successful apply the image satisfies, for every partition: the ISR is non-empty,
//!   has no duplicates and is a subset of the replicas; the leader is -1 or in the ISR; a leader
//!   change bumps `leader_epoch`; every change bumps `partition_epoch` by exactly one. These are
//!   asserted (a violation is a programmer error).
//! - Only ordered maps (`BTreeMap`) are used, so iteration order (and so every decision derived
//!   from the image) is the same on every replica.

use std::collections::BTreeMap;

use uuid::Uuid;

/// Version byte at the start of every encoded [`MetadataRecord`].
pub const RECORD_VERSION: u8 = 1;
/// Version byte at the start of every encoded [`MetadataImage`] (a snapshot).
pub const IMAGE_VERSION: u8 = 1;
/// Largest encoded record accepted by the decoder and by `propose`.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Largest encoded image (snapshot) accepted by the decoder.
pub const IMAGE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Longest string (topic name, host, rack, config key or value) in a record.
pub const STRING_BYTES_MAX: usize = 32 * 1024;
/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: usize = 100_000;
/// Most replicas one partition may have.
pub const REPLICAS_PER_PARTITION_MAX: usize = 64;
/// Most config entries in one record.
pub const CONFIGS_PER_RECORD_MAX: usize = 4096;
/// Most brokers an image may hold.
pub const BROKERS_MAX: usize = 100_000;
/// Most topics an image may hold.
pub const TOPICS_MAX: usize = 1_000_000;
/// "No leader" in Kafka's vocabulary.
pub const NO_LEADER: i32 = -1;

/// One entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRecord {
    /// A broker (re)registered. A new registration starts fenced; a heartbeat unfences it.
    RegisterBroker {
        /// The broker's `node.id`.
        broker_id: i32,
        /// Differs on every process start, so a stale process cannot heartbeat for a new one.
        incarnation: u64,
        /// Advertised host of the broker listener.
        host: String,
        /// Advertised port of the broker listener.
        port: u16,
        /// `broker.rack`, if set.
        rack: Option<String>,
    },
    /// The broker stopped heartbeating (or shut down): it may not lead or join an ISR.
    FenceBroker {
        /// The broker fenced.
        broker_id: i32,
    },
    /// The broker is heartbeating and caught up: it may lead and join ISRs again.
    UnfenceBroker {
        /// The broker unfenced.
        broker_id: i32,
    },
    /// A topic was created. Each partition starts with leader = first replica, ISR = replicas,
    /// both epochs 0.
    CreateTopic {
        /// Topic name (unique).
        name: String,
        /// Topic id (unique).
        topic_id: Uuid,
        /// Topic-level config overrides.
        configs: BTreeMap<String, String>,
        /// Replica list of each partition, indexed by partition number.
        partitions: Vec<Vec<i32>>,
    },
    /// Leader and/or ISR of one partition changed.
    PartitionChange {
        /// The topic.
        topic_id: Uuid,
        /// The partition number.
        partition: i32,
        /// The new leader, or [`NO_LEADER`].
        leader: i32,
        /// The new ISR.
        isr: Vec<i32>,
        /// The new leader epoch: the current one, or the current one + 1 (required when the
        /// leader changes).
        leader_epoch: i32,
        /// The new partition epoch: exactly the current one + 1.
        partition_epoch: i32,
    },
    /// Partitions were added to a topic (CreatePartitions): `partitions[i]` is the replica
    /// list of partition `current count + i`; each starts like a created topic's partition.
    CreatePartitions {
        /// The topic.
        topic_id: Uuid,
        /// Replica lists of the new partitions, in partition order.
        partitions: Vec<Vec<i32>>,
    },
    /// A topic was deleted.
    DeleteTopic {
        /// The topic.
        topic_id: Uuid,
    },
    /// A topic's config overrides were replaced.
    TopicConfig {
        /// The topic.
        topic_id: Uuid,
        /// The complete new set of overrides.
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `next` were handed out; the next block starts at `next`.
    AllocateProducerIds {
        /// The next unallocated producer id (strictly increasing).
        next: i64,
    },
}

/// Why bytes did not decode into a record or an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended in the middle of a field.
    #[error("truncated input")]
    Truncated,
    /// The version byte is not one this code understands.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The record tag is unknown.
    #[error("unknown record tag {0}")]
    UnknownTag(u8),
    /// A length or count exceeds a named limit or the bytes left.
    #[error("{what} too large: {len}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// The length or count found.
        len: usize,
    },
    /// A string is not UTF-8.
    #[error("invalid utf-8 string")]
    InvalidUtf8,
    /// A field has a value outside its domain (an option flag other than 0/1, for example).
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A decoded image violates an image invariant.
    #[error("inconsistent image: {0}")]
    Inconsistent(String),
}

/// Why a record was not applied to an image. The image is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The record names a broker that is not registered.
    #[error("unknown broker {0}")]
    UnknownBroker(i32),
    /// The record names a topic id that does not exist.
    #[error("unknown topic id {0}")]
    UnknownTopic(Uuid),
    /// The record names a partition the topic does not have.
    #[error("unknown partition {0}")]
    UnknownPartition(i32),
    /// A topic with this name already exists.
    #[error("topic name {0} already exists")]
    TopicNameExists(String),
    /// A topic with this id already exists.
    #[error("topic id {0} already exists")]
    TopicIdExists(Uuid),
    /// A replica list or ISR is malformed (empty, duplicates, unknown brokers, not a subset).
    #[error("invalid replica set: {0}")]
    InvalidReplicas(String),
    /// The partition epoch is not exactly the current one + 1.
    #[error("stale partition epoch {got}, current {current}")]
    StalePartitionEpoch {
        /// In the record.
        got: i32,
        /// In the image.
        current: i32,
    },
    /// The leader epoch is neither the current one nor the next (or a leader change kept it).
    #[error("invalid leader epoch {got}, current {current}")]
    InvalidLeaderEpoch {
        /// In the record.
        got: i32,
        /// In the image.
        current: i32,
    },
    /// The leader is neither -1 nor in the ISR.
    #[error("leader {0} not in isr")]
    LeaderNotInIsr(i32),
    /// The next producer id does not advance.
    #[error("producer id block {got} does not advance past {current}")]
    ProducerIdNotAdvancing {
        /// In the record.
        got: i64,
        /// In the image.
        current: i64,
    },
    /// A field is outside its domain (too many partitions, a negative id, ...).
    #[error("invalid record: {0}")]
    Invalid(String),
}

/// A registered broker as the image sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRegistration {
    /// The broker's id.
    pub broker_id: i32,
    /// The incarnation of its latest registration.
    pub incarnation: u64,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
    /// Rack, if any.
    pub rack: Option<String>,
    /// A fenced broker may not lead a partition or join an ISR.
    pub fenced: bool,
}

/// One partition's assignment and leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionImage {
    /// Assigned replicas; the first is the preferred leader.
    pub replicas: Vec<i32>,
    /// Current leader, or [`NO_LEADER`].
    pub leader: i32,
    /// In-sync replicas (never empty).
    pub isr: Vec<i32>,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change of this partition.
    pub partition_epoch: i32,
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicImage {
    /// Topic name.
    pub name: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
    /// Partitions by number (dense from 0).
    pub partitions: BTreeMap<i32, PartitionImage>,
}

/// The cluster metadata obtained by applying committed records in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataImage {
    /// Registered brokers by id.
    pub brokers: BTreeMap<i32, BrokerRegistration>,
    /// Topics by id.
    pub topics: BTreeMap<Uuid, TopicImage>,
    /// Topic ids by name.
    pub topic_ids: BTreeMap<String, Uuid>,
    /// The next producer id to hand out.
    pub next_producer_id: i64,
}

impl Default for MetadataImage {
    fn default() -> Self {
        Self::new()
    }
}

impl MetadataImage {
    /// The empty image (the state before the first record).
    pub fn new() -> Self {
        MetadataImage {
            brokers: BTreeMap::new(),
            topics: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
            next_producer_id: 0,
        }
    }

    /// The topic named `name`, if any.
    pub fn topic_by_name(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    /// One partition, if it exists.
    pub fn partition(&self, topic_id: &Uuid, partition: i32) -> Option<&PartitionImage> {
        self.topics.get(topic_id).and_then(|t| t.partitions.get(&partition))
    }

    /// Whether `broker_id` is registered and not fenced.
    pub fn is_unfenced(&self, broker_id: i32) -> bool {
        self.brokers.get(&broker_id).is_some_and(|b| !b.fenced)
    }

    /// Applies one committed record. On error the image is unchanged; see the module invariants.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), ApplyError> {
        match record {
            MetadataRecord::RegisterBroker { broker_id, incarnation, host, port, rack } => {
                if *broker_id < 0 {
                    return Err(ApplyError::Invalid(format!("negative broker id {broker_id}")));
                }
                if !self.brokers.contains_key(broker_id) && self.brokers.len() >= BROKERS_MAX {
                    return Err(ApplyError::Invalid("too many brokers".into()));
                }
                let reg = BrokerRegistration {
                    broker_id: *broker_id,
                    incarnation: *incarnation,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    fenced: true,
                };
                let restarted = self.brokers.get(broker_id).is_some_and(|b| b.incarnation != *incarnation);
                self.brokers.insert(*broker_id, reg);
                if restarted {
                    self.drop_leaderships_of(*broker_id);
                }
            }
            MetadataRecord::FenceBroker { broker_id } => {
                let b = self.brokers.get_mut(broker_id).ok_or(ApplyError::UnknownBroker(*broker_id))?;
                b.fenced = true;
            }
            MetadataRecord::UnfenceBroker { broker_id } => {
                let b = self.brokers.get_mut(broker_id).ok_or(ApplyError::UnknownBroker(*broker_id))?;
                b.fenced = false;
            }
            MetadataRecord::CreateTopic { name, topic_id, configs, partitions } => {
                self.apply_create_topic(name, *topic_id, configs, partitions)?;
            }
            MetadataRecord::PartitionChange { topic_id, partition, leader, isr, leader_epoch, partition_epoch } => {
                self.apply_partition_change(topic_id, *partition, *leader, isr, *leader_epoch, *partition_epoch)?;
            }
            MetadataRecord::CreatePartitions { topic_id, partitions } => {
                self.apply_create_partitions(topic_id, partitions)?;
            }
            MetadataRecord::DeleteTopic { topic_id } => {
                let t = self.topics.remove(topic_id).ok_or(ApplyError::UnknownTopic(*topic_id))?;
                self.topic_ids.remove(&t.name);
            }
            MetadataRecord::TopicConfig { topic_id, configs } => {
                let t = self.topics.get_mut(topic_id).ok_or(ApplyError::UnknownTopic(*topic_id))?;
                t.configs = configs.clone();
            }
            MetadataRecord::AllocateProducerIds { next } => {
                if *next <= self.next_producer_id {
                    return Err(ApplyError::ProducerIdNotAdvancing { got: *next, current: self.next_producer_id });
                }
                self.next_producer_id = *next;
            }
        }
        self.assert_invariants();
        Ok(())
    }

    fn apply_create_topic(
        &mut self,
        name: &str,
        topic_id: Uuid,
        configs: &BTreeMap<String, String>,
        partitions: &[Vec<i32>],
    ) -> Result<(), ApplyError> {
        if self.topic_ids.contains_key(name) {
            return Err(ApplyError::TopicNameExists(name.to_string()));
        }
        if self.topics.contains_key(&topic_id) {
            return Err(ApplyError::TopicIdExists(topic_id));
        }
        if name.is_empty() || topic_id.is_nil() {
            return Err(ApplyError::Invalid("empty topic name or nil topic id".into()));
        }
        if partitions.is_empty() || partitions.len() > PARTITIONS_PER_TOPIC_MAX || self.topics.len() >= TOPICS_MAX {
            return Err(ApplyError::Invalid(format!("{} partitions", partitions.len())));
        }
        let mut images = BTreeMap::new();
        for (p, replicas) in partitions.iter().enumerate() {
            check_replica_set(replicas, "replicas")?;
            if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(ApplyError::UnknownBroker(*unknown));
            }
            let part = PartitionImage {
                replicas: replicas.clone(),
                leader: replicas[0],
                isr: replicas.clone(),
                leader_epoch: 0,
                partition_epoch: 0,
            };
            images.insert(p as i32, part);
        }
        let topic = TopicImage { name: name.to_string(), topic_id, configs: configs.clone(), partitions: images };
        self.topic_ids.insert(name.to_string(), topic_id);
        self.topics.insert(topic_id, topic);
        Ok(())
    }

    fn apply_create_partitions(&mut self, topic_id: &Uuid, partitions: &[Vec<i32>]) -> Result<(), ApplyError> {
        let t = self.topics.get(topic_id).ok_or(ApplyError::UnknownTopic(*topic_id))?;
        let first = t.partitions.len();
        if partitions.is_empty() || first + partitions.len() > PARTITIONS_PER_TOPIC_MAX {
            return Err(ApplyError::Invalid(format!("adding {} partitions to {first}", partitions.len())));
        }
        for replicas in partitions {
            check_replica_set(replicas, "replicas")?;
            if let Some(unknown) = replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(ApplyError::UnknownBroker(*unknown));
            }
        }
        let t = self.topics.get_mut(topic_id).expect("checked above");
        for (i, replicas) in partitions.iter().enumerate() {
            let part = PartitionImage {
                replicas: replicas.clone(),
                leader: replicas[0],
                isr: replicas.clone(),
                leader_epoch: 0,
                partition_epoch: 0,
            };
            t.partitions.insert((first + i) as i32, part);
        }
        Ok(())
    }

    fn apply_partition_change(
        &mut self,
        topic_id: &Uuid,
        partition: i32,
        leader: i32,
        isr: &[i32],
        leader_epoch: i32,
        partition_epoch: i32,
    ) -> Result<(), ApplyError> {
        let topic = self.topics.get_mut(topic_id).ok_or(ApplyError::UnknownTopic(*topic_id))?;
        let p = topic.partitions.get_mut(&partition).ok_or(ApplyError::UnknownPartition(partition))?;
        if Some(partition_epoch) != p.partition_epoch.checked_add(1) {
            return Err(ApplyError::StalePartitionEpoch { got: partition_epoch, current: p.partition_epoch });
        }
        let epoch_ok = if leader != p.leader {
            Some(leader_epoch) == p.leader_epoch.checked_add(1)
        } else {
            leader_epoch == p.leader_epoch || Some(leader_epoch) == p.leader_epoch.checked_add(1)
        };
        if !epoch_ok {
            return Err(ApplyError::InvalidLeaderEpoch { got: leader_epoch, current: p.leader_epoch });
        }
        check_replica_set(isr, "isr")?;
        if let Some(outside) = isr.iter().find(|r| !p.replicas.contains(r)) {
            return Err(ApplyError::InvalidReplicas(format!("isr member {outside} is not a replica")));
        }
        if leader != NO_LEADER && !isr.contains(&leader) {
            return Err(ApplyError::LeaderNotInIsr(leader));
        }
        p.leader = leader;
        p.isr = isr.to_vec();
        p.leader_epoch = leader_epoch;
        p.partition_epoch = partition_epoch;
        Ok(())
    }

    /// A new incarnation of `broker_id` registered: every partition it still leads becomes
    /// leaderless in a new leader epoch. The controller moves leaderships away *before*
    /// proposing the registration, but it computes those changes from its applied image, and
    /// one can be rejected as stale when another change of the partition committed first,
    /// while the registration itself applies; then the restarted broker, which may have lost
    /// the unsynced tail its previous incarnation exposed to followers, would lead again in
    /// the *same* epoch, and followers holding the lost records could not detect the divergence
    /// (cluster-disk seed 338: an acknowledged record lost). Enforcing it here, where every
    /// node applies the same committed records, makes the rule hold however proposals race.
    fn drop_leaderships_of(&mut self, broker_id: i32) {
        for t in self.topics.values_mut() {
            for p in t.partitions.values_mut() {
                if p.leader == broker_id {
                    p.leader = NO_LEADER;
                    p.leader_epoch = p.leader_epoch.saturating_add(1);
                    p.partition_epoch = p.partition_epoch.saturating_add(1);
                }
            }
        }
    }

    /// Checks every image invariant, returning the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.topics.len() != self.topic_ids.len() {
            return Err("topic maps differ in size".into());
        }
        for (name, id) in &self.topic_ids {
            match self.topics.get(id) {
                Some(t) if &t.name == name && &t.topic_id == id => {}
                _ => return Err(format!("topic {name} maps to a missing or different topic")),
            }
        }
        for (id, b) in &self.brokers {
            if *id != b.broker_id {
                return Err(format!("broker key {id} != id {}", b.broker_id));
            }
        }
        for t in self.topics.values() {
            for (n, p) in &t.partitions {
                let bad = |why: &str| Err(format!("{}-{n}: {why}", t.name));
                if check_replica_set(&p.replicas, "replicas").is_err() {
                    return bad("bad replicas");
                }
                if check_replica_set(&p.isr, "isr").is_err() {
                    return bad("bad isr");
                }
                if !p.isr.iter().all(|r| p.replicas.contains(r)) {
                    return bad("isr not a subset of replicas");
                }
                if p.leader != NO_LEADER && !p.isr.contains(&p.leader) {
                    return bad("leader not in isr");
                }
                if p.leader_epoch < 0 || p.partition_epoch < 0 {
                    return bad("negative epoch");
                }
            }
            if t.partitions.keys().enumerate().any(|(i, n)| i as i32 != *n) {
                return Err(format!("{}: partition numbers not dense", t.name));
            }
        }
        Ok(())
    }

    fn assert_invariants(&self) {
        if let Err(e) = self.check_invariants() {
            panic!("metadata image invariant violated: {e}");
        }
    }

    /// Encodes the whole image (a snapshot payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(IMAGE_VERSION);
        w.u32(self.brokers.len() as u32);
        for b in self.brokers.values() {
            w.i32(b.broker_id);
            w.u64(b.incarnation);
            w.str(&b.host);
            w.u16(b.port);
            w.opt_str(b.rack.as_deref());
            w.u8(b.fenced as u8);
        }
        w.u32(self.topics.len() as u32);
        for t in self.topics.values() {
            w.str(&t.name);
            w.uuid(&t.topic_id);
            w.configs(&t.configs);
            w.u32(t.partitions.len() as u32);
            for p in t.partitions.values() {
                w.i32s(&p.replicas);
                w.i32(p.leader);
                w.i32s(&p.isr);
                w.i32(p.leader_epoch);
                w.i32(p.partition_epoch);
            }
        }
        w.i64(self.next_producer_id);
        w.buf
    }

    /// Decodes an image written by [`MetadataImage::encode`]; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > IMAGE_BYTES_MAX {
            return Err(CodecError::TooLarge { what: "image", len: bytes.len() });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != IMAGE_VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        let mut img = MetadataImage::new();
        let brokers = r.count("brokers", BROKERS_MAX, 4)?;
        for _ in 0..brokers {
            let broker_id = r.i32()?;
            let reg = BrokerRegistration {
                broker_id,
                incarnation: r.u64()?,
                host: r.str()?,
                port: r.u16()?,
                rack: r.opt_str()?,
                fenced: r.bool()?,
            };
            img.brokers.insert(broker_id, reg);
        }
        let topics = r.count("topics", TOPICS_MAX, 4)?;
        for _ in 0..topics {
            let name = r.str()?;
            let topic_id = r.uuid()?;
            let configs = r.configs()?;
            let n = r.count("partitions", PARTITIONS_PER_TOPIC_MAX, 4)?;
            let mut partitions = BTreeMap::new();
            for i in 0..n {
                let p = PartitionImage {
                    replicas: r.i32s("replicas", REPLICAS_PER_PARTITION_MAX)?,
                    leader: r.i32()?,
                    isr: r.i32s("isr", REPLICAS_PER_PARTITION_MAX)?,
                    leader_epoch: r.i32()?,
                    partition_epoch: r.i32()?,
                };
                partitions.insert(i as i32, p);
            }
            img.topic_ids.insert(name.clone(), topic_id);
            img.topics.insert(topic_id, TopicImage { name, topic_id, configs, partitions });
        }
        img.next_producer_id = r.i64()?;
        r.finish()?;
        img.check_invariants().map_err(CodecError::Inconsistent)?;
        Ok(img)
    }
}

/// An ISR or replica list must be non-empty, bounded, free of duplicates and of negative ids.
fn check_replica_set(set: &[i32], what: &str) -> Result<(), ApplyError> {
    if set.is_empty() || set.len() > REPLICAS_PER_PARTITION_MAX {
        return Err(ApplyError::InvalidReplicas(format!("{what} has {} members", set.len())));
    }
    for (i, r) in set.iter().enumerate() {
        if *r < 0 || set[..i].contains(r) {
            return Err(ApplyError::InvalidReplicas(format!("{what} {set:?} has a negative or duplicate id")));
        }
    }
    Ok(())
}

const TAG_REGISTER_BROKER: u8 = 1;
const TAG_FENCE_BROKER: u8 = 2;
const TAG_UNFENCE_BROKER: u8 = 3;
const TAG_CREATE_TOPIC: u8 = 4;
const TAG_PARTITION_CHANGE: u8 = 5;
const TAG_DELETE_TOPIC: u8 = 6;
const TAG_TOPIC_CONFIG: u8 = 7;
const TAG_ALLOCATE_PRODUCER_IDS: u8 = 8;
const TAG_CREATE_PARTITIONS: u8 = 9;

impl MetadataRecord {
    /// Encodes the record: version byte, tag byte, then the fields big-endian; strings and
    /// lists are prefixed by a u32 length.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(RECORD_VERSION);
        match self {
            MetadataRecord::RegisterBroker { broker_id, incarnation, host, port, rack } => {
                w.u8(TAG_REGISTER_BROKER);
                w.i32(*broker_id);
                w.u64(*incarnation);
                w.str(host);
                w.u16(*port);
                w.opt_str(rack.as_deref());
            }
            MetadataRecord::FenceBroker { broker_id } => {
                w.u8(TAG_FENCE_BROKER);
                w.i32(*broker_id);
            }
            MetadataRecord::UnfenceBroker { broker_id } => {
                w.u8(TAG_UNFENCE_BROKER);
                w.i32(*broker_id);
            }
            MetadataRecord::CreateTopic { name, topic_id, configs, partitions } => {
                w.u8(TAG_CREATE_TOPIC);
                w.str(name);
                w.uuid(topic_id);
                w.configs(configs);
                w.u32(partitions.len() as u32);
                for replicas in partitions {
                    w.i32s(replicas);
                }
            }
            MetadataRecord::PartitionChange { topic_id, partition, leader, isr, leader_epoch, partition_epoch } => {
                w.u8(TAG_PARTITION_CHANGE);
                w.uuid(topic_id);
                w.i32(*partition);
                w.i32(*leader);
                w.i32s(isr);
                w.i32(*leader_epoch);
                w.i32(*partition_epoch);
            }
            MetadataRecord::CreatePartitions { topic_id, partitions } => {
                w.u8(TAG_CREATE_PARTITIONS);
                w.uuid(topic_id);
                w.u32(partitions.len() as u32);
                for replicas in partitions {
                    w.i32s(replicas);
                }
            }
            MetadataRecord::DeleteTopic { topic_id } => {
                w.u8(TAG_DELETE_TOPIC);
                w.uuid(topic_id);
            }
            MetadataRecord::TopicConfig { topic_id, configs } => {
                w.u8(TAG_TOPIC_CONFIG);
                w.uuid(topic_id);
                w.configs(configs);
            }
            MetadataRecord::AllocateProducerIds { next } => {
                w.u8(TAG_ALLOCATE_PRODUCER_IDS);
                w.i64(*next);
            }
        }
        w.buf
    }

    /// Decodes one record; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(CodecError::TooLarge { what: "record", len: bytes.len() });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        let record = match r.u8()? {
            TAG_REGISTER_BROKER => MetadataRecord::RegisterBroker {
                broker_id: r.i32()?,
                incarnation: r.u64()?,
                host: r.str()?,
                port: r.u16()?,
                rack: r.opt_str()?,
            },
            TAG_FENCE_BROKER => MetadataRecord::FenceBroker { broker_id: r.i32()? },
            TAG_UNFENCE_BROKER => MetadataRecord::UnfenceBroker { broker_id: r.i32()? },
            TAG_CREATE_TOPIC => {
                let name = r.str()?;
                let topic_id = r.uuid()?;
                let configs = r.configs()?;
                let n = r.count("partitions", PARTITIONS_PER_TOPIC_MAX, 4)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(r.i32s("replicas", REPLICAS_PER_PARTITION_MAX)?);
                }
                MetadataRecord::CreateTopic { name, topic_id, configs, partitions }
            }
            TAG_PARTITION_CHANGE => MetadataRecord::PartitionChange {
                topic_id: r.uuid()?,
                partition: r.i32()?,
                leader: r.i32()?,
                isr: r.i32s("isr", REPLICAS_PER_PARTITION_MAX)?,
                leader_epoch: r.i32()?,
                partition_epoch: r.i32()?,
            },
            TAG_CREATE_PARTITIONS => {
                let topic_id = r.uuid()?;
                let n = r.count("partitions", PARTITIONS_PER_TOPIC_MAX, 4)?;
                let mut partitions = Vec::with_capacity(n);
                for _ in 0..n {
                    partitions.push(r.i32s("replicas", REPLICAS_PER_PARTITION_MAX)?);
                }
                MetadataRecord::CreatePartitions { topic_id, partitions }
            }
            TAG_DELETE_TOPIC => MetadataRecord::DeleteTopic { topic_id: r.uuid()? },
            TAG_TOPIC_CONFIG => MetadataRecord::TopicConfig { topic_id: r.uuid()?, configs: r.configs()? },
            TAG_ALLOCATE_PRODUCER_IDS => MetadataRecord::AllocateProducerIds { next: r.i64()? },
            tag => return Err(CodecError::UnknownTag(tag)),
        };
        r.finish()?;
        Ok(record)
    }
}

/// Big-endian field writer.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn uuid(&mut self, id: &Uuid) {
        self.buf.extend_from_slice(id.as_bytes());
    }
    fn i32s(&mut self, v: &[i32]) {
        self.u32(v.len() as u32);
        for x in v {
            self.i32(*x);
        }
    }
    fn configs(&mut self, c: &BTreeMap<String, String>) {
        self.u32(c.len() as u32);
        for (k, v) in c {
            self.str(k);
            self.str(v);
        }
    }
}

/// Bounds-checked big-endian field reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::InvalidValue("bool")),
        }
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn uuid(&mut self) -> Result<Uuid, CodecError> {
        Ok(Uuid::from_bytes(self.array()?))
    }
    /// A u32 count, checked against `max` and against the bytes left (each item takes at least
    /// `min_item_bytes`), so a hostile count cannot make us allocate.
    fn count(&mut self, what: &'static str, max: usize, min_item_bytes: usize) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(CodecError::TooLarge { what, len: n });
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, CodecError> {
        let n = self.count("string", STRING_BYTES_MAX, 1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::InvalidUtf8)
    }
    fn opt_str(&mut self) -> Result<Option<String>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err(CodecError::InvalidValue("option flag")),
        }
    }
    fn i32s(&mut self, what: &'static str, max: usize) -> Result<Vec<i32>, CodecError> {
        let n = self.count(what, max, 4)?;
        (0..n).map(|_| self.i32()).collect()
    }
    fn configs(&mut self) -> Result<BTreeMap<String, String>, CodecError> {
        let n = self.count("configs", CONFIGS_PER_RECORD_MAX, 8)?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.str()?;
            let v = self.str()?;
            if m.insert(k, v).is_some() {
                return Err(CodecError::InvalidValue("duplicate config key"));
            }
        }
        Ok(m)
    }
    fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::TrailingBytes(n)),
        }
    }
}
