//! Request routing: decoded requests in, encoded responses (or futures of them) out.
//!
//! The broker owns the topic table and each partition's [`Log`]; it performs storage I/O only
//! through the [`Disk`] seam and never touches sockets. Work that must wait (acks=all for the
//! group-commit fsync, fetch long polls) is returned as a [`Reply::Wait`] future that the
//! connection shell awaits in request order.
//!
//! Invariants:
//! - Appends to a partition happen in request order per connection (they are done
//!   synchronously in [`Broker::handle`], before the next request is read).
//! - A record acknowledged with acks=all has been fsynced: the reply waits until the flusher has
//!   synced the partition past the record's offset, or fails with KAFKA_STORAGE_ERROR.
//! - Lock order: `topics` before a partition's `state`; neither is held across an await.

mod admin;
mod cluster_admin;
mod data;
mod group;
mod offsets_topic;
mod producer_state;
mod replica;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
mod txn;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::{BrokerConfig, TopicConfig};
use crate::log::{Log, LogConfig, LogError};
use crate::protocol::{self, errors};
use crate::replication::{FollowerState, LeaderEpochCache, LeaderState};
use crate::runtime::{self, watch, Disk};

pub use data::SINGLE_NODE_LEADER_EPOCH;
pub use group::run_group_timer;
pub use producer_state::{ProducerState, SequenceCheck};
pub use replica::ClusterState;
pub use txn::run_txn_timer;

/// Errors that stop the broker from starting or from persisting metadata.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Storage failed.
    #[error("storage error at {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A partition log could not be opened.
    #[error("cannot open log {dir}: {source}")]
    Log {
        /// The partition directory.
        dir: String,
        /// Why.
        source: LogError,
    },
    /// A metadata file is malformed.
    #[error("corrupt metadata file {path}: {reason}")]
    Corrupt {
        /// Where.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// What the connection shell should do with a request.
pub enum Reply {
    /// Write this response frame now.
    Ready(Bytes),
    /// Await this, then write the frame it yields.
    Wait(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    /// Write this frame now; the permit accounts its memory until it is written.
    Held(Bytes, Option<tokio::sync::OwnedSemaphorePermit>),
    /// Write nothing (acks=0 produce).
    Nothing,
    /// Close the connection (the request cannot be answered in its own format).
    Close(String),
}

/// Mutable state of one partition.
pub struct PartitionState {
    /// The log.
    pub log: Log,
    /// Idempotent producer sequences.
    pub producers: ProducerState,
    /// Records appended since the last fsync.
    pub unflushed_records: i64,
    /// When the oldest unflushed record was appended (ms), or -1.
    pub first_unflushed_ms: i64,
    /// Some reply waits for everything below this offset to be fsynced.
    pub sync_wanted_upto: i64,
    /// This replica's role (always `Standalone` on a single node).
    pub role: Role,
    /// The leader epoch cache (cluster mode only).
    pub epochs: Option<LeaderEpochCache>,
    /// Open and aborted transactions in this partition (last stable offset, aborted index).
    pub txn: crate::txn::PartitionTxnState,
}

/// A partition replica's role.
pub enum Role {
    /// Single-node mode: the only replica, leader at epoch 0, high watermark = log end offset.
    Standalone,
    /// Leader in cluster mode.
    Leader(Box<LeaderState>),
    /// Follower in cluster mode.
    Follower(Box<FollowerState>),
    /// Cluster mode, no leader elected (or not yet known).
    Offline,
}

impl PartitionState {
    /// The offset below which records are committed and visible to consumers.
    pub fn high_watermark(&self) -> i64 {
        match &self.role {
            Role::Standalone => self.log.log_end_offset(),
            Role::Leader(l) => l.high_watermark().min(self.log.log_end_offset()),
            Role::Follower(f) => f.high_watermark(),
            Role::Offline => 0,
        }
    }

    /// The leader epoch when this replica leads, else `None`.
    pub fn leading_epoch(&self) -> Option<i32> {
        match &self.role {
            Role::Standalone => Some(data::SINGLE_NODE_LEADER_EPOCH),
            Role::Leader(l) => Some(l.leader_epoch()),
            _ => None,
        }
    }
}

/// One partition.
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub index: i32,
    /// Log directory.
    pub dir: PathBuf,
    /// Log and producer state.
    pub state: Mutex<PartitionState>,
    /// The offset below which everything is fsynced.
    durable: watch::Sender<i64>,
    /// The high watermark, published whenever it moves (cluster mode acks=all waits on it).
    hw: watch::Sender<i64>,
    /// Set after a failed fsync: the log is no longer trusted.
    poisoned: AtomicBool,
    /// Set when the partition has unflushed appends.
    dirty: AtomicBool,
    /// Set when the topic is deleted (pending waiters fail).
    deleted: AtomicBool,
}

impl Partition {
    /// Publishes a new high watermark to waiting acks=all produces.
    pub fn publish_hw(&self, hw: i64) {
        // The value is only a wake-up signal (waiters re-check the partition state under its
        // lock), so notify on any change: a high watermark computed under an older role may
        // land after `reconcile_role` reset the signal, and waiters must still wake.
        self.hw.send_if_modified(|v| {
            if hw != *v {
                *v = hw;
                true
            } else {
                false
            }
        });
    }
}

/// One topic.
pub struct Topic {
    /// Name.
    pub name: String,
    /// Topic id (KIP-516).
    pub id: Uuid,
    /// Effective configuration.
    pub config: TopicConfig,
    /// Number of partitions the topic has (cluster-wide).
    pub partition_count: i32,
    /// The partitions with a replica on this broker, by index (all of them on a single node).
    pub partitions: BTreeMap<i32, Arc<Partition>>,
}

/// The single-node broker.
pub struct Broker {
    config: Arc<BrokerConfig>,
    disk: Arc<dyn Disk>,
    data_dir: PathBuf,
    cluster_id: String,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation, deletion and metadata-file writes.
    admin_lock: Mutex<()>,
    appended: watch::Sender<u64>,
    flush_wanted: Notify,
    next_producer_id: AtomicI64,
    shutting_down: AtomicBool,
    groups: group::Groups,
    /// The transaction coordinator (standalone mode).
    txns: txn::Txns,
    /// Cluster-mode state (`None` on a standalone node).
    cluster: Option<ClusterState>,
    /// Memory held by fetch responses not yet written, in KiB permits.
    fetch_memory: Arc<tokio::sync::Semaphore>,
}

/// One line of the topics file: name, id, partition count, config overrides.
type TopicEntry = (String, Uuid, i32, BTreeMap<String, String>);

const TOPICS_FILE: &str = "runnel-topics.meta";
const META_FILE: &str = "meta.properties";

fn io_err(path: &Path, source: std::io::Error) -> BrokerError {
    BrokerError::Io { path: path.display().to_string(), source }
}

/// Converts a topic's effective configuration into the log layer's settings.
pub fn log_config(t: &TopicConfig) -> LogConfig {
    let int = |k: &str| t.values.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    LogConfig {
        segment_bytes: int("segment.bytes") as u64,
        segment_ms: int("segment.ms"),
        retention_ms: int("retention.ms"),
        retention_bytes: int("retention.bytes"),
        index_interval_bytes: int("index.interval.bytes") as u64,
    }
}

impl Broker {
    /// Opens (or initialises) the data directory, recovers every partition log and returns a
    /// broker ready to serve.
    pub fn open(config: Arc<BrokerConfig>, disk: Arc<dyn Disk>) -> Result<Arc<Broker>, BrokerError> {
        let data_dir = PathBuf::from(config.log_dir());
        disk.create_dir_all(&data_dir).map_err(|e| io_err(&data_dir, e))?;
        let cluster_id = Self::load_or_create_meta(&*disk, &data_dir, &config)?;
        let now = runtime::now_ms();
        let broker = Broker {
            config: config.clone(),
            disk: disk.clone(),
            data_dir: data_dir.clone(),
            cluster_id,
            topics: RwLock::new(BTreeMap::new()),
            admin_lock: Mutex::new(()),
            appended: watch::channel(0).0,
            flush_wanted: Notify::new(),
            // Producer ids: node id in the top bits, so brokers of a cluster never collide;
            // start time below, so a restarted broker does not reuse its old ids.
            // (bit 61 set keeps them clear of the transaction coordinator's blocks from 2^52).
            next_producer_id: AtomicI64::new(
                (1 << 61) | ((config.node_id() as i64 & 0x3FF) << 50) | ((now & 0xFF_FFFF_FFFF) << 10),
            ),
            shutting_down: AtomicBool::new(false),
            // In cluster mode committed offsets live in the replicated `__consumer_offsets`
            // topic; the offset store is only the coordinator's in-memory view of it.
            groups: if config.is_cluster_mode() {
                group::Groups::open(&config, Arc::new(runtime::MemDisk::new()), &data_dir)?
            } else {
                group::Groups::open(&config, disk.clone(), &data_dir)?
            },
            txns: txn::Txns::open(disk.clone(), &data_dir, now)?,
            cluster: config.is_cluster_mode().then(|| ClusterState {
                image: RwLock::new(Arc::new(crate::controller::MetadataImage::new())),
                applied_index: std::sync::atomic::AtomicU64::new(0),
                image_changed: watch::channel(0).0,
                incarnation: runtime::random_u64() | 1,
                controller: tokio::sync::Mutex::new(crate::cluster::transport::ControllerClient::new(
                    config.controller_quorum_voters(),
                    std::time::Duration::from_millis(3000),
                )),
                fenced_since: Mutex::new(BTreeMap::new()),
            }),
            fetch_memory: Arc::new(tokio::sync::Semaphore::new(crate::limits::FETCH_PENDING_BYTES_MAX / 1024)),
        };
        // In cluster mode the topic table comes from the controller's metadata image.
        let entries = if broker.cluster.is_some() { Vec::new() } else { broker.read_topics_file()? };
        let mut topics = BTreeMap::new();
        for (name, id, n, overrides) in entries {
            let tc = config.topic_config(&overrides);
            let mut partitions = BTreeMap::new();
            for i in 0..n {
                partitions.insert(i, broker.open_partition(&name, i, &tc, now)?);
            }
            tracing::info!(topic = %name, partitions = n, "loaded topic");
            topics.insert(name.clone(), Arc::new(Topic { name, id, config: tc, partition_count: n, partitions }));
        }
        *broker.topics.write().unwrap() = topics;
        broker.recover_transactions()?;
        Ok(Arc::new(broker))
    }

    fn load_or_create_meta(disk: &dyn Disk, dir: &Path, config: &BrokerConfig) -> Result<String, BrokerError> {
        let path = dir.join(META_FILE);
        if disk.exists(&path) {
            let text = read_all(disk, &path)?;
            let pairs = crate::config::parse_properties(&text, &path.display().to_string())
                .map_err(|e| BrokerError::Corrupt { path: path.display().to_string(), reason: e.to_string() })?;
            let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
            let stored = get("cluster.id").ok_or_else(|| BrokerError::Corrupt {
                path: path.display().to_string(),
                reason: "no cluster.id".into(),
            })?;
            if let Some(want) = config.cluster_id() {
                if want != stored {
                    return Err(BrokerError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!("data belongs to cluster {stored}, config says {want}"),
                    });
                }
            }
            if let Some(n) = get("node.id") {
                if n != config.node_id().to_string() {
                    return Err(BrokerError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!("data belongs to node.id {n}, config says {}", config.node_id()),
                    });
                }
            }
            return Ok(stored);
        }
        let id = config.cluster_id().map(str::to_string).unwrap_or_else(|| {
            if config.is_cluster_mode() {
                // Every node of a cluster derives the same id from the voter list.
                let voters = config.get("controller.quorum.voters");
                let a = crc32c::crc32c(voters.as_bytes()) as u128;
                let b = crc32c::crc32c_append(0x5a5a_5a5a, voters.as_bytes()) as u128;
                base64_url(&((a << 96) | (b << 64) | (a << 32) | b).to_be_bytes())
            } else {
                base64_url(Uuid::from_u128(runtime::random_u128()).as_bytes())
            }
        });
        let text = format!("version=1\ncluster.id={id}\nnode.id={}\n", config.node_id());
        write_atomic(disk, dir, META_FILE, text.as_bytes())?;
        Ok(id)
    }

    fn read_topics_file(&self) -> Result<Vec<TopicEntry>, BrokerError> {
        let path = self.data_dir.join(TOPICS_FILE);
        if !self.disk.exists(&path) {
            return Ok(Vec::new());
        }
        let text = read_all(&*self.disk, &path)?;
        let corrupt = |reason: String| BrokerError::Corrupt { path: path.display().to_string(), reason };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split('\t');
            let (Some(name), Some(id), Some(n)) = (f.next(), f.next(), f.next()) else {
                return Err(corrupt(format!("line {} has too few fields", i + 1)));
            };
            let id = Uuid::parse_str(id).map_err(|e| corrupt(format!("line {}: {e}", i + 1)))?;
            let n: i32 = n.parse().map_err(|_| corrupt(format!("line {}: bad partition count", i + 1)))?;
            let mut overrides = BTreeMap::new();
            for kv in f {
                let (k, v) = kv.split_once('=').ok_or_else(|| corrupt(format!("line {}: bad config {kv:?}", i + 1)))?;
                overrides.insert(k.to_string(), v.to_string());
            }
            out.push((name.to_string(), id, n, overrides));
        }
        Ok(out)
    }

    /// Rewrites the topics file from `topics` (caller holds `admin_lock`).
    fn write_topics_file(&self, topics: &BTreeMap<String, Arc<Topic>>) -> Result<(), BrokerError> {
        let mut text = String::from("# runnel topics: name, id, partitions, config overrides\n");
        for t in topics.values() {
            text.push_str(&format!("{}\t{}\t{}", t.name, t.id, t.partition_count));
            for (k, v) in &t.config.overrides {
                text.push_str(&format!("\t{k}={v}"));
            }
            text.push('\n');
        }
        write_atomic(&*self.disk, &self.data_dir, TOPICS_FILE, text.as_bytes())
    }

    fn open_partition(
        &self,
        topic: &str,
        index: i32,
        tc: &TopicConfig,
        now: i64,
    ) -> Result<Arc<Partition>, BrokerError> {
        let dir = self.data_dir.join(format!("{topic}-{index}"));
        let log = Log::open(self.disk.clone(), dir.clone(), log_config(tc), now)
            .map_err(|source| BrokerError::Log { dir: dir.display().to_string(), source })?;
        let leo = log.log_end_offset();
        let (txn, producers) = txn::rebuild_partition_state(&log, &dir)?;
        Ok(Arc::new(Partition {
            topic: topic.to_string(),
            index,
            dir,
            state: Mutex::new(PartitionState {
                log,
                producers,
                unflushed_records: 0,
                first_unflushed_ms: -1,
                sync_wanted_upto: 0,
                // In cluster mode a replica has no role (and claims no high watermark: its log
                // may hold records that were never replicated) until the metadata image says
                // whether it leads or follows.
                role: if self.cluster.is_some() { Role::Offline } else { Role::Standalone },
                epochs: None,
                txn,
            }),
            durable: watch::channel(leo).0,
            hw: watch::channel(leo).0,
            poisoned: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        }))
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The cluster id stored in the data directory.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap().get(name).cloned()
    }

    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics.read().unwrap().values().find(|t| t.id == id).cloned()
    }

    /// Every topic, in name order.
    pub fn all_topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap().values().cloned().collect()
    }

    /// A partition by topic and index.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        self.topic(topic).and_then(|t| t.partitions.get(&index).cloned())
    }

    /// Handles one request frame (header + body, without the size prefix).
    pub fn handle(self: &Arc<Self>, mut frame: Bytes) -> Reply {
        let prefix = match protocol::peek_header_prefix(&frame) {
            Ok(p) => p,
            Err(e) => return Reply::Close(e.to_string()),
        };
        let Some(support) = protocol::support_for(prefix.api_key) else {
            return Reply::Close(format!("unsupported API key {}", prefix.api_key));
        };
        let v = prefix.api_version;
        if v < support.min || v > support.max {
            if support.key == ApiKey::ApiVersions {
                return Reply::Ready(protocol::api_versions_unsupported_v0(prefix.correlation_id));
            }
            return Reply::Close(format!("unsupported version {v} of {:?}", support.key));
        }
        let header = match protocol::decode_request_header(&mut frame) {
            Ok(h) => h,
            Err(e) => return Reply::Close(e.to_string()),
        };
        let cid = header.correlation_id;
        let ctx = RequestContext {
            correlation_id: cid,
            version: v,
            client_id: header.client_id.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            api_key: prefix.api_key,
        };
        match support.key {
            ApiKey::ApiVersions => self.sync::<ApiVersionsRequest>(&ctx, frame, |b, r, c| b.api_versions(r, c)),
            ApiKey::Metadata if self.cluster.is_some() => match protocol::decode_body::<MetadataRequest>(&mut frame, v)
            {
                Ok(r) => self.metadata_cluster(r, ctx),
                Err(e) => Reply::Close(format!("malformed Metadata v{v}: {e}")),
            },
            ApiKey::Metadata => self.sync::<MetadataRequest>(&ctx, frame, |b, r, c| b.metadata(r, c)),
            ApiKey::CreateTopics if self.cluster.is_some() => {
                match protocol::decode_body::<CreateTopicsRequest>(&mut frame, v) {
                    Ok(r) => self.create_topics_cluster(r, ctx),
                    Err(e) => Reply::Close(format!("malformed CreateTopics v{v}: {e}")),
                }
            }
            ApiKey::CreatePartitions if self.cluster.is_some() => {
                match protocol::decode_body::<CreatePartitionsRequest>(&mut frame, v) {
                    Ok(r) => self.create_partitions_cluster(r, ctx),
                    Err(e) => Reply::Close(format!("malformed CreatePartitions v{v}: {e}")),
                }
            }
            ApiKey::DeleteTopics if self.cluster.is_some() => {
                match protocol::decode_body::<DeleteTopicsRequest>(&mut frame, v) {
                    Ok(r) => self.delete_topics_cluster(r, ctx),
                    Err(e) => Reply::Close(format!("malformed DeleteTopics v{v}: {e}")),
                }
            }
            ApiKey::DescribeCluster if self.cluster.is_some() => Reply::Ready(self.describe_cluster_cluster(&ctx)),
            ApiKey::DescribeQuorum => match protocol::decode_body::<DescribeQuorumRequest>(&mut frame, v) {
                Ok(r) => self.describe_quorum(r, ctx),
                Err(e) => Reply::Close(format!("malformed DescribeQuorum v{v}: {e}")),
            },
            ApiKey::IncrementalAlterConfigs if self.cluster.is_some() => {
                match protocol::decode_body::<IncrementalAlterConfigsRequest>(&mut frame, v) {
                    Ok(r) => {
                        let updates = r
                            .resources
                            .iter()
                            .map(|res| {
                                (res.resource_type, res.resource_name.to_string(), self.incremental_overrides(res))
                            })
                            .collect();
                        self.alter_topic_configs_cluster(updates, r.validate_only, true, ctx)
                    }
                    Err(e) => Reply::Close(format!("malformed IncrementalAlterConfigs v{v}: {e}")),
                }
            }
            ApiKey::AlterConfigs if self.cluster.is_some() => {
                match protocol::decode_body::<AlterConfigsRequest>(&mut frame, v) {
                    Ok(r) => {
                        let updates = r
                            .resources
                            .iter()
                            .map(|res| {
                                let want: Result<BTreeMap<String, String>, String> = res
                                    .configs
                                    .iter()
                                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                                    .map(|(k, v)| crate::config::validate_topic_config(&k, &v).map(|_| (k, v)))
                                    .collect();
                                (res.resource_type, res.resource_name.to_string(), want)
                            })
                            .collect();
                        self.alter_topic_configs_cluster(updates, r.validate_only, false, ctx)
                    }
                    Err(e) => Reply::Close(format!("malformed AlterConfigs v{v}: {e}")),
                }
            }
            ApiKey::Produce => match protocol::decode_body::<ProduceRequest>(&mut frame, v) {
                Ok(r) => {
                    // Drop the frame so each partition's records own their bytes uniquely and
                    // can be patched in place (offsets) without a copy.
                    drop(frame);
                    self.produce(r, ctx)
                }
                Err(e) => Reply::Close(format!("malformed Produce v{v}: {e}")),
            },
            ApiKey::Fetch => match protocol::decode_body::<FetchRequest>(&mut frame, v) {
                Ok(r) => self.fetch(r, ctx),
                Err(e) => Reply::Close(format!("malformed Fetch v{v}: {e}")),
            },
            ApiKey::ListOffsets => self.sync::<ListOffsetsRequest>(&ctx, frame, |b, r, c| b.list_offsets(r, c)),
            ApiKey::OffsetForLeaderEpoch => {
                self.sync::<OffsetForLeaderEpochRequest>(&ctx, frame, |b, r, c| b.offset_for_leader_epoch(r, c))
            }
            ApiKey::CreateTopics => self.sync::<CreateTopicsRequest>(&ctx, frame, |b, r, c| b.create_topics(r, c)),
            ApiKey::DeleteTopics => self.sync::<DeleteTopicsRequest>(&ctx, frame, |b, r, c| b.delete_topics(r, c)),
            ApiKey::CreatePartitions => {
                self.sync::<CreatePartitionsRequest>(&ctx, frame, |b, r, c| b.create_partitions(r, c))
            }
            ApiKey::DescribeConfigs => {
                self.sync::<DescribeConfigsRequest>(&ctx, frame, |b, r, c| b.describe_configs(r, c))
            }
            ApiKey::AlterConfigs => self.sync::<AlterConfigsRequest>(&ctx, frame, |b, r, c| b.alter_configs(r, c)),
            ApiKey::IncrementalAlterConfigs => {
                self.sync::<IncrementalAlterConfigsRequest>(&ctx, frame, |b, r, c| b.incremental_alter_configs(r, c))
            }
            ApiKey::DescribeCluster => {
                self.sync::<DescribeClusterRequest>(&ctx, frame, |b, r, c| b.describe_cluster(r, c))
            }
            ApiKey::DeleteRecords => self.sync::<DeleteRecordsRequest>(&ctx, frame, |b, r, c| b.delete_records(r, c)),
            ApiKey::InitProducerId => match protocol::decode_body::<InitProducerIdRequest>(&mut frame, v) {
                Ok(r) => self.init_producer_id_any(r, ctx),
                Err(e) => Reply::Close(format!("malformed InitProducerId v{v}: {e}")),
            },
            ApiKey::AddPartitionsToTxn => match protocol::decode_body::<AddPartitionsToTxnRequest>(&mut frame, v) {
                Ok(r) => self.add_partitions_to_txn(r, ctx),
                Err(e) => Reply::Close(format!("malformed AddPartitionsToTxn v{v}: {e}")),
            },
            ApiKey::AddOffsetsToTxn => match protocol::decode_body::<AddOffsetsToTxnRequest>(&mut frame, v) {
                Ok(r) => self.add_offsets_to_txn(r, ctx),
                Err(e) => Reply::Close(format!("malformed AddOffsetsToTxn v{v}: {e}")),
            },
            ApiKey::EndTxn => match protocol::decode_body::<EndTxnRequest>(&mut frame, v) {
                Ok(r) => self.end_txn(r, ctx),
                Err(e) => Reply::Close(format!("malformed EndTxn v{v}: {e}")),
            },
            ApiKey::TxnOffsetCommit => {
                self.sync::<TxnOffsetCommitRequest>(&ctx, frame, |b, r, c| b.txn_offset_commit(r, c))
            }
            ApiKey::FindCoordinator => {
                self.sync::<FindCoordinatorRequest>(&ctx, frame, |b, r, c| b.find_coordinator(r, c))
            }
            ApiKey::JoinGroup => match protocol::decode_body::<JoinGroupRequest>(&mut frame, v) {
                Ok(r) => self.join_group(r, ctx),
                Err(e) => Reply::Close(format!("malformed JoinGroup v{v}: {e}")),
            },
            ApiKey::SyncGroup => match protocol::decode_body::<SyncGroupRequest>(&mut frame, v) {
                Ok(r) => self.sync_group(r, ctx),
                Err(e) => Reply::Close(format!("malformed SyncGroup v{v}: {e}")),
            },
            ApiKey::Heartbeat => self.sync::<HeartbeatRequest>(&ctx, frame, |b, r, c| b.heartbeat(r, c)),
            ApiKey::LeaveGroup => self.sync::<LeaveGroupRequest>(&ctx, frame, |b, r, c| b.leave_group(r, c)),
            ApiKey::OffsetCommit => match protocol::decode_body::<OffsetCommitRequest>(&mut frame, v) {
                Ok(r) => self.offset_commit(r, ctx),
                Err(e) => Reply::Close(format!("malformed OffsetCommit v{v}: {e}")),
            },
            ApiKey::OffsetFetch if self.cluster.is_some() => {
                match protocol::decode_body::<OffsetFetchRequest>(&mut frame, v) {
                    Ok(r) => self.offset_fetch_cluster(r, ctx),
                    Err(e) => Reply::Close(format!("malformed OffsetFetch v{v}: {e}")),
                }
            }
            ApiKey::OffsetFetch => self.sync::<OffsetFetchRequest>(&ctx, frame, |b, r, c| b.offset_fetch(r, c)),
            ApiKey::ListGroups => self.sync::<ListGroupsRequest>(&ctx, frame, |b, r, c| b.list_groups(r, c)),
            ApiKey::DescribeGroups => {
                self.sync::<DescribeGroupsRequest>(&ctx, frame, |b, r, c| b.describe_groups(r, c))
            }
            ApiKey::DeleteGroups => match protocol::decode_body::<DeleteGroupsRequest>(&mut frame, v) {
                Ok(r) => self.delete_groups(r, ctx),
                Err(e) => Reply::Close(format!("malformed DeleteGroups v{v}: {e}")),
            },
            other => Reply::Close(format!("API {other:?} is not served by this broker yet")),
        }
    }

    fn sync<R: Decodable>(
        self: &Arc<Self>,
        ctx: &RequestContext,
        mut body: Bytes,
        f: impl FnOnce(&Arc<Self>, R, &RequestContext) -> Bytes,
    ) -> Reply {
        match protocol::decode_body::<R>(&mut body, ctx.version) {
            Ok(r) => Reply::Ready(f(self, r, ctx)),
            Err(e) => Reply::Close(format!("malformed request v{}: {e}", ctx.version)),
        }
    }

    fn api_versions(self: &Arc<Self>, _req: ApiVersionsRequest, ctx: &RequestContext) -> Bytes {
        let mut resp = ApiVersionsResponse::default();
        resp.error_code = errors::NONE;
        resp.api_keys = protocol::SUPPORTED_APIS
            .iter()
            .map(|a| {
                api_versions_response::ApiVersion::default()
                    .with_api_key(a.key as i16)
                    .with_min_version(a.advertised_min)
                    .with_max_version(a.max)
            })
            .collect();
        ctx.encode(&resp)
    }

    /// Wakes long-polling fetches after data arrived other than through Produce.
    pub fn notify_appended(&self) {
        self.appended.send_modify(|v| *v += 1);
    }

    /// Marks the broker as stopping: long polls return early.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.appended.send_modify(|v| *v += 1);
        self.flush_wanted.notify_one();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Waits until some append asks for a flush, or `max_wait_ms` passes.
    pub async fn wait_for_flush_request(&self, max_wait_ms: u64) {
        let _ = tokio::time::timeout(std::time::Duration::from_millis(max_wait_ms), self.flush_wanted.notified()).await;
    }

    /// One group-commit round: fsyncs every dirty partition whose policy calls for it now
    /// (`force`: all of them), then releases waiting acks. Returns partitions synced.
    pub async fn flush_round(self: &Arc<Self>, force: bool) -> usize {
        let now = runtime::now_ms();
        let mut work = Vec::new();
        for t in self.all_topics() {
            let flush_ms = t.config.flush_ms();
            let flush_messages = t.config.flush_messages();
            for p in t.partitions.values() {
                if !p.dirty.load(Ordering::Acquire) || p.poisoned.load(Ordering::Acquire) {
                    continue;
                }
                let st = p.state.lock().unwrap();
                // Judged against the log's own recovery point, which a truncation lowers, not the
                // `durable` signal, which only grows: a replica that truncated (a follower dropping
                // a diverging suffix, then elected) saw every new acks=all append as already
                // durable and fsynced it only on the 1 s timer, so each acks=all produce waited a
                // whole flush interval and timed out (cluster-overlap seed 2788: LIVENESS).
                let waiting = st.sync_wanted_upto > st.log.recovery_point();
                let due = force
                    || waiting
                    || st.unflushed_records >= flush_messages
                    || (st.first_unflushed_ms >= 0 && now - st.first_unflushed_ms >= flush_ms);
                if !due {
                    continue;
                }
                if let Some((files, upto)) = st.log.unflushed() {
                    work.push((p.clone(), files, upto));
                }
            }
        }
        if work.is_empty() {
            return 0;
        }
        let n = work.len();
        let results = runtime::blocking(move || {
            work.into_iter()
                .map(|(p, files, upto)| {
                    let r = files.iter().try_for_each(|f| f.sync_data());
                    (p, upto, r)
                })
                .collect::<Vec<_>>()
        })
        .await;
        for (p, upto, r) in results {
            match r {
                Ok(()) => {
                    let mut st = p.state.lock().unwrap();
                    st.log.mark_flushed(upto);
                    if st.log.log_end_offset() <= upto {
                        st.unflushed_records = 0;
                        st.first_unflushed_ms = -1;
                        p.dirty.store(false, Ordering::Release);
                    }
                    let hw_moved = match &mut st.role {
                        Role::Leader(l) => l.on_leader_flushed(upto),
                        Role::Follower(f) => {
                            f.on_flushed(upto);
                            false
                        }
                        _ => false,
                    };
                    let hw = st.high_watermark();
                    drop(st);
                    p.durable.send_modify(|d| *d = (*d).max(upto));
                    if hw_moved {
                        p.publish_hw(hw);
                        self.appended.send_modify(|v| *v += 1);
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e,
                        "fsync failed; the partition refuses writes until restart (never retry a failed fsync)");
                    p.state.lock().unwrap().log.poison();
                    p.poisoned.store(true, Ordering::Release);
                    p.durable.send_modify(|_| {});
                }
            }
        }
        n
    }

    /// Retention and time-based segment rolls for every partition.
    pub fn retention_round(&self) {
        let now = runtime::now_ms();
        for t in self.all_topics() {
            for p in t.partitions.values() {
                let mut st = p.state.lock().unwrap();
                if let Err(e) = st.log.maybe_roll(now) {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "segment roll failed");
                }
                match st.log.enforce_retention(now) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(topic = %p.topic, partition = p.index, segments = n,
                        log_start_offset = st.log.log_start_offset(), "retention deleted segments"),
                    Err(e) => tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed"),
                }
            }
        }
    }

    /// Closes every log cleanly (syncs and writes the clean-shutdown markers).
    pub fn close(&self) {
        for t in self.all_topics() {
            for p in t.partitions.values() {
                let mut st = p.state.lock().unwrap();
                if let Err(e) = st.log.close() {
                    tracing::error!(topic = %p.topic, partition = p.index, error = %e, "clean close failed");
                }
            }
        }
    }
}

/// Per-request facts the handlers need.
pub struct RequestContext {
    /// Echoed in the response header.
    pub correlation_id: i32,
    /// The request's API version.
    pub version: i16,
    /// The client's id.
    pub client_id: String,
    /// The API key.
    pub api_key: i16,
}

impl RequestContext {
    fn encode<T: Encodable + HeaderVersion>(&self, body: &T) -> Bytes {
        match protocol::encode_response(self.correlation_id, self.version, body) {
            Ok(b) => b,
            Err(e) => {
                // Encoding our own response can only fail on a bug (a field out of range for the
                // version); say so loudly and send an empty frame the client will reject.
                tracing::error!(api_key = self.api_key, version = self.version, error = %e, "failed to encode a response");
                Bytes::new()
            }
        }
    }
}

fn read_all(disk: &dyn Disk, path: &Path) -> Result<String, BrokerError> {
    let f = disk.open(path, false).map_err(|e| io_err(path, e))?;
    let len = f.len().map_err(|e| io_err(path, e))? as usize;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, 0).map_err(|e| io_err(path, e))?;
    String::from_utf8(buf)
        .map_err(|_| BrokerError::Corrupt { path: path.display().to_string(), reason: "not UTF-8".into() })
}

/// Writes `name` in `dir` atomically: temp file, fsync, rename, fsync the directory.
fn write_atomic(disk: &dyn Disk, dir: &Path, name: &str, data: &[u8]) -> Result<(), BrokerError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let f = disk.open(&tmp, true).map_err(|e| io_err(&tmp, e))?;
    f.set_len(0).map_err(|e| io_err(&tmp, e))?;
    f.write_at(data, 0).map_err(|e| io_err(&tmp, e))?;
    f.sync_data().map_err(|e| io_err(&tmp, e))?;
    disk.rename(&tmp, &dst).map_err(|e| io_err(&dst, e))?;
    disk.sync_dir(dir).map_err(|e| io_err(dir, e))
}

fn base64_url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(A[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}
